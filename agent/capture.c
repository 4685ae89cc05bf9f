/* capture.c - the agent thread and the capture state machine (capture.h). */
#include "capture.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <locale.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define TB_HAVE_SINGLE_THREADED 1
#endif
#endif
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "ctl.h"
#include "follow.h"
#include "host.h"
#include "log.h"
#include "profile.h"
#include "pytramp.h"
#include "ranges.h"
#include "runname.h"
#include "sampler.h"
#include "stall.h"
#include "stats.h"
#include "trace.h"
#include "util.h"

#define MAX_SOURCES 4
#define MAX_STEP_RECS 65536     /* in .bss: untouched (no memory) until used */
#ifdef TB_CPU_POLL_MS
#define POLL_MS TB_CPU_POLL_MS  /* source poll period while capturing */
#else
#define POLL_MS 20
#endif
/* a GPU source waiting for CUDA looks this often where no source polls
 * (each wake-up costs ~50 us of the agent's CPU on a VM) */
#define CUDA_WAIT_POLL_MS 50
#define TERM_FLUSH_MS 2000      /* SIGTERM / exit: bound on the final write */
#define FOLLOW_EXIT_MS 500      /* a following child's _exit: bound on its write (a trainer joins it) */
#define FOLLOW_MIN_BUFFER ((size_t)4 << 20)
enum { FOLLOW_DROP_NOT_BEGUN = 1, FOLLOW_DROP_STEPS }; /* why a follow capture is not written */
#define TRIGGER_STEPS_CAP_S 300 /* a steps trigger on a job that stops stepping: no boundary for this long */

/* CAP_AT_STEPS: a step window by number asked for at run time (the socket's
 * `start steps=A-B`, tbprof_capture_steps(), a trigger under
 * TBPROF_STEP_ROUNDUP), kept like an env window; ranks given the same one
 * capture the same steps */
enum cap_kind { CAP_ENV_STEPS = 1, CAP_STEPS, CAP_TIME, CAP_AT_STEPS };

struct cap {
    int kind;
    char trigger[160];
    int64_t first, last; /* step window; first = -1: from the next boundary */
    int64_t nsteps;      /* CAP_STEPS: how many */
    int64_t dur_ns;      /* CAP_TIME: length (0: until stopped) */
    int64_t begin;       /* mono ns: capturing began (trim start) */
    int64_t end;         /* mono ns: stop requested (trim end) */
    int64_t deadline;    /* mono ns: stop then (0: none) */
    int win;             /* env window index, or -1; -2: the env time window */
    int64_t cpu0;        /* agent thread CPU time at arm */
    int64_t start_wait;  /* ns the window's first boundary waited for the sources */
    int64_t late_ns;     /* > 0: the sources were still starting this long into the window */
    int64_t gpu_late_ns; /* > 0: GPU tracing began this long into the window, once CUDA loaded */
    char run[TB_CTL_RUN_MAX + 1]; /* run folder asked for over the socket ("": derived) */
    double time_from_s;  /* the env time window: seconds after start-up it began at */
    int64_t period;      /* a window by number asked to repeat (`start steps=... every=P`): 0 = once */
    int64_t reps;        /* ... windows still to come, this one included (0: no end) */
    int64_t nth;         /* a socket's time repeat: which one, from 1 (0: not one) */
    int follow;          /* a fork child's capture with its parent's (follow.h) */
    int follow_drop;     /* ... not to be written: FOLLOW_DROP_* */
    int64_t follow_begin; /* ... whose own began here (mono ns): the trim start */
    uint32_t follow_seq; /* ... the parent's capture it joined (follow.c's seq) */
    int named;           /* name[] holds its run folder (decided once it began) */
    int armed_pub;       /* this process's children were told of it (tb_follow_arm) */
    int begun_pub;       /* ... and of its window (tb_follow_begin) */
    char name[TB_FOLLOW_RUN_MAX + 1];
};

/* A window with fixed step numbers: it arms at the step before its first,
 * begins at its first, and waits there for the sources. */
static int fixed_window(const struct cap *c) { return c->kind == CAP_ENV_STEPS || c->kind == CAP_AT_STEPS; }

struct step_rec {
    int64_t t;
    int64_t step;
    pid_t tid;
};

struct src {
    const char *name;
    tb_source *s;
    int enabled;
    const char *off_reason; /* static */
    int started;            /* this capture */
    const char *why;        /* this capture's failure reason */
    int warned;             /* a failure to start warned about (once) */
    int said;               /* ... or said at info level (no CUDA then) */
    int waiting;            /* the GPU's: started once the process loads CUDA (start_late) */
};

static struct {
    pthread_mutex_t lock;
    /* state changes; on CLOCK_MONOTONIC from tb_agent_init (and in a fork
     * child): a wall-clock step (NTP, an admin's date) neither stretches nor
     * cuts its timed waits, one of which holds a training thread
     * (wait_for_sources) */
    pthread_cond_t cond;
    int inited, disabled, is_child;
    int begin_settling; /* a step window's first boundary waits for the sources (wait_for_sources) */
    tb_config cfg;
    int state;
    struct cap cur;
    int stop_req, sources_started, sources_starting;
    int win_idx;          /* next env window */
    int64_t win_rep;      /* of a repeating one (A-B/P): the next repeat, from 0 */
    struct cap pend;      /* a CAP_AT_STEPS window waiting for its steps (kind 0: none) */
    struct {              /* the time window (TBPROF_DURATION/DELAY/EVERY, or `start duration=S every=T`) */
        int64_t at;       /* mono ns: the next one starts (0: none) */
        int64_t base;     /* mono ns: the first one's start (every counts from it) */
        int64_t k;        /* which one starts at `at`, from 0 */
        double dur_s, every_s, from_s; /* from_s: the first's start, seconds after start-up (env) */
        int64_t count;    /* windows in all; 0: no end */
        int socket;       /* asked over the socket (stop ends it), not the environment */
        char run[TB_CTL_RUN_MAX + 1]; /* socket: the run name asked for ("": derived) */
    } tw;
    int thread_running;
    pid_t agent_tid;
    int wake_fd[2], listen_fd; /* wake_fd: wake-ups and signal bytes, one pipe */
    struct src src[MAX_SOURCES];
    int nsrc;
    /* this capture's start-up (start_sources), for a source started late:
     * what it was told, and the buffer bytes shared out (NVTX's aside) */
    tb_capture_info start_info;
    size_t share_rest;
    size_t nrec;
    uint64_t rec_dropped;
    unsigned ncaptures;   /* profiles written */
    char last_profile[2][PATH_MAX];
    int term_installed, term_pending, exiting, writing;
    /* TBPROF_RANKS leaves this process out: the environment's windows are
     * dropped, its signal ignored (said once) */
    int rank_out, rank_out_said;
    int exit_gave_up; /* tb_agent_exit waited its TERM_FLUSH_MS in vain: not again */
    tb_names names; /* job id, rank, host name: read once at init */
    /* TBPROF_SIGNAL's handler is looked at again (sig_check) at these
     * times: a runtime that sets its own after our constructor (the JVM's
     * SIGUSR2, node's SIGUSR1, PostgreSQL's) turns the trigger off */
    int64_t sig_check_at, sig_check_every; /* mono ns; 0: not installed, or taken */
} g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
    .wake_fd = {-1, -1},
    .listen_fd = -1,
};

static struct step_rec recs[MAX_STEP_RECS];

static _Atomic int64_t next_step;              /* the step the next tbprof_step() begins */
static _Atomic int64_t slow_from = INT64_MAX;  /* steps >= this take the slow path */
static atomic_int a_state;                     /* g.state, for lock-free readers */
static atomic_int a_stop_req;                  /* g.stop_req, likewise */
static atomic_int expect_nvtx;                 /* tbprof_expect_nvtx() */
static atomic_int last_idx = -1;               /* g.last_profile[last_idx] is current */
static volatile sig_atomic_t sig_fd_w = -1;    /* for signal handlers */
static atomic_int thread_up;                   /* the agent thread was started (g.thread_running, lock-free) */
static atomic_int a_writing;                   /* g.writing, for lock-free readers */
static atomic_int follow_leaving;              /* a following child's _exit: no capture more */
static int64_t steps_at_fork;                  /* next_step when this fork child began (it counts none: equal) */
/* Between our fork prepare and our child handler g.lock is held (copied
 * held into the child): a fork handler that runs before ours in the child
 * (registered earlier: a sanitizer's runtime, a library preloaded before
 * us) and starts a thread must not wait for it in the pthread_create hook. */
static atomic_int in_fork;
static atomic_int app_threaded;                /* the job started a thread of its own (pthread_create hook) */
static atomic_int threads_hooked;              /* tb_agent_set_threads_hooked */
static __thread int creating_own;              /* this thread is in pthread_create for the agent */
static __thread int is_agent_thread;           /* this thread runs agent_main */
static atomic_int step_owner;                  /* TB_STEP_*: the source that counts steps (0: none yet) */
static atomic_int step_conflict;               /* the first ignored source, until logged (-1: logged) */
static _Atomic uint64_t steps_ignored;         /* boundaries from the other sources */

const char *tb_state_name(int s)
{
    static const char *const n[] = {"idle", "armed", "capturing", "writing"};
    return s >= 0 && s < 4 ? n[s] : "?";
}

static void set_stop_req(int v)
{
    g.stop_req = v;
    atomic_store(&a_stop_req, v);
}

static void set_state(int s)
{
    g.state = s;
    atomic_store(&a_state, s);
    pthread_cond_broadcast(&g.cond);
}

/* The process is leaving (exit() began, or SIGTERM came during a capture):
 * no capture starts any more, from any trigger; CUDA may be tearing down.
 * Lock held. */
static int leaving_locked(void) { return g.exiting || g.term_pending; }


/* The CLOCK_MONOTONIC time `ns` from now (<= 0: now), for
 * pthread_cond_timedwait on g.cond. */
static struct timespec mono_in(int64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t t = (int64_t)ts.tv_nsec + (ns > 0 ? ns : 0);
    ts.tv_sec += t / 1000000000;
    ts.tv_nsec = t % 1000000000;
    return ts;
}

static void wake(void)
{
    int fd = __atomic_load_n(&g.wake_fd[1], __ATOMIC_RELAXED); /* fds_check may replace it */
    if (fd >= 0) {
        ssize_t w = write(fd, "w", 1); /* non-blocking: a full pipe is awake enough */
        (void)w;
    }
}

void tb_agent_wake(void) { wake(); }

void tb_agent_signal_byte(char c)
{
    int fd = sig_fd_w;
    if (fd >= 0) {
        ssize_t w = write(fd, &c, 1);
        (void)w;
    }
}

/* ---- sources ---------------------------------------------------------------- */

void tb_agent_add_source(const char *name, tb_source *s, int enabled, const char *off_reason)
{
    if (g.nsrc == MAX_SOURCES)
        return;
    struct src *x = &g.src[g.nsrc++];
    memset(x, 0, sizeof(*x));
    x->name = name;
    x->s = s;
    x->enabled = enabled && s != NULL;
    x->off_reason = off_reason ? off_reason : (s ? "off" : "not built");
}

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

enum { CUDA_DRIVER = 1, CUDA_RUNTIME = 2, CUDA_ANY = 3 };
static int cuda_loaded(int mask);

/* The GPU source's share of the buffer bytes left once NVTX's share is set
 * aside, where the CPU sampler runs too. */
static size_t gpu_share(size_t rest) { return rest / 4 * 3; }

/* Source x is off for this capture (x->why): said once per process at
 * `level`, *once the flag of that level; ended: said as the capture ends. */
static void say_off(struct src *x, int *once, tb_log_level level, int ended)
{
    if (*once)
        return;
    *once = 1;
    tb_log(level, "%s source off: %s (%s without it)", x->name, x->why, ended ? "the capture went" : "capturing");
}

/* Start source x; a failure is kept in x->why and warned about once (the
 * GPU source starts only in a process that has loaded CUDA: start_sources,
 * start_late). */
static void start_one(struct src *x, const tb_capture_info *info)
{
    const char *why = NULL;
    int rc = x->s->start(x->s->ctx, info, &why);
    if (rc < 0) {
        x->why = why ? why : strerror(-rc);
        say_off(x, &x->warned, TB_LOG_WARN, 0);
        return;
    }
    x->started = 1;
}

static void start_sources(void)
{
    /* NVTX ranges take a fixed 1/16 (1/4 with torch's op ranges: about one
     * per kernel, ~70 bytes against ~200 for a kernel record); GPU activity
     * needs most of the rest, the sample rings less */
    int nvtx_expected = g.cfg.torch_ops || atomic_load(&expect_nvtx);
    size_t total = (size_t)g.cfg.buffer_mb << 20;
    if (g.cur.follow) /* a data loader's workers, each with a few threads: an eighth, 4 MiB at least */
        total = total / 8 > FOLLOW_MIN_BUFFER ? total / 8 : total < FOLLOW_MIN_BUFFER ? total : FOLLOW_MIN_BUFFER;
    size_t nvtx_share = total / (nvtx_expected ? 4 : 16), rest = total;
    int n_on = 0;
    for (int i = 0; i < g.nsrc; i++) {
        if (!g.src[i].enabled)
            continue;
        if (!strcmp(g.src[i].name, "nvtx"))
            rest -= nvtx_share;
        else
            n_on++;
    }
    tb_clock_calibrate();
    g.start_info = (tb_capture_info){
        .begin_ns = tb_real_ns(),
        .cpu_hz = g.cfg.cpu_hz,
        .cpu_mode = g.cfg.cpu_mode,
        .nvtx_expected = nvtx_expected,
        .threads_hooked = atomic_load(&threads_hooked),
        .py_trampoline = g.cfg.py_trampoline,
    };
    g.share_rest = rest;
    unsigned held = tb_stdio_hold(); /* a job started with stderr closed keeps fd 2 free */
    /* where the GPU source (added before the CPU's) did not start (no CUDA
     * yet, another subscriber), its share goes to the CPU sampler's rings (a
     * JVM's or a PyTorch job's hundred threads); a late GPU start takes it
     * back (start_late) */
    int gpu = -1;
    for (int i = 0; i < g.nsrc; i++) {
        struct src *x = &g.src[i];
        if (!strcmp(x->name, "gpu"))
            gpu = i;
        x->started = 0;
        x->waiting = 0;
        x->why = NULL;
        if (!x->enabled)
            continue;
        tb_capture_info info = g.start_info;
        int gpu_off = gpu >= 0 && gpu < i && g.src[gpu].enabled && !g.src[gpu].started; /* its share handed on */
        if (!strcmp(x->name, "nvtx"))
            info.buffer_bytes = nvtx_share;
        else if (n_on - gpu_off > 1)
            info.buffer_bytes = !strcmp(x->name, "gpu") ? gpu_share(rest) : rest - gpu_share(rest);
        else
            info.buffer_bytes = rest;
        if (i == gpu && g.cur.follow) {
            x->why = g.is_child ? "a fork()ed child capturing with its parent: CUDA does not survive fork(), so "
                                  "its GPU work, if any, is the parent's"
                                : "a spawned worker capturing with its parent: GPU tracing stays with the parent";
            continue;
        }
        if (i == gpu && !cuda_loaded(CUDA_DRIVER)) {
            /* a launcher, a tool or a CPU-only program of the job (they
             * inherit TBPROF_*), or a job that has not come to CUDA yet (a
             * capture from start-up): no CUPTI, which would look for a
             * libcupti beside a CUDA not loaded yet, and may bring the
             * driver up itself. The agent thread starts it once the driver
             * is loaded (start_late), not at a runtime alone: PyTorch loads
             * its runtime at `import torch`, and a process that imports
             * torch without using the GPU (a launcher, a compile worker, a
             * parent that forks the GPU's users: CUDA does not survive a
             * fork) must not have the driver initialised under it. */
            x->waiting = 1;
            continue;
        }
        start_one(x, &info);
    }
    tb_stdio_release(held);
}

/* The started sources but x and NVTX (whose share is fixed) told to grow
 * within `bytes` from now on (tb_source.rebudget); the most one of them
 * kept (what it holds already, where that is more), 0 for none. */
static size_t rebudget_others(const struct src *x, size_t bytes)
{
    size_t most = 0;
    for (int i = 0; i < g.nsrc; i++) {
        struct src *y = &g.src[i];
        if (y != x && y->started && y->s->rebudget && strcmp(y->name, "nvtx")) {
            size_t kept = y->s->rebudget(y->s->ctx, bytes);
            most = kept > most ? kept : most;
        }
    }
    return most;
}

/* The GPU source waits for CUDA (start_sources) and the process has now
 * loaded it: start it, with its share of the buffer taken back from the
 * sources that got it meanwhile (what they hold already stays theirs).
 * Agent thread, lock NOT held; the capture is on. */
static void start_late(struct src *x)
{
    x->waiting = 0;
    /* its share as start_sources gives it (all where no other source but
     * NVTX is on, else 3/4), less what the others hold already */
    int others_on = 0;
    for (int i = 0; i < g.nsrc; i++)
        others_on |= &g.src[i] != x && g.src[i].enabled && strcmp(g.src[i].name, "nvtx");
    size_t want = others_on ? gpu_share(g.share_rest) : g.share_rest, others = g.share_rest - want;
    size_t kept = rebudget_others(x, others);
    if (kept > others) /* rings and samples they already hold */
        want = kept < g.share_rest ? g.share_rest - kept : 0;
    tb_capture_info info = g.start_info;
    info.begin_ns = tb_real_ns();
    info.buffer_bytes = want > ((size_t)1 << 20) ? want : (size_t)1 << 20;
    unsigned held = tb_stdio_hold();
    start_one(x, &info);
    tb_stdio_release(held);
    if (!x->started) { /* the others keep all of it, as where the GPU did not start at once */
        rebudget_others(x, g.share_rest);
        return;
    }
    /* how far into the window tracing was on (CUPTI's first load can take
     * seconds; a window still armed then has lost nothing) */
    int64_t t1 = tb_mono_ns();
    pthread_mutex_lock(&g.lock);
    int capturing = g.state == TB_STATE_CAPTURING;
    int64_t late = capturing && t1 > g.cur.begin ? t1 - g.cur.begin : 0;
    g.cur.gpu_late_ns = late;
    pthread_mutex_unlock(&g.lock);
    if (capturing)
        tb_info("gpu source on %.2f s into the capture, once the process loaded CUDA", late / 1e9);
    else
        tb_info("gpu source on before the window began, once the process loaded CUDA");
}

/* The GPU source still waiting for CUDA (start_sources), or NULL. Agent
 * thread. */
static struct src *gpu_waiting(void)
{
    for (int i = 0; i < g.nsrc; i++)
        if (g.src[i].waiting)
            return &g.src[i];
    return NULL;
}

/* The capture ends with the GPU source still waiting: no CUDA in this
 * process (a launcher, a CPU-only tool), said at info level, once. Agent
 * thread, lock not held. */
static void end_waiting(void)
{
    struct src *x = gpu_waiting();
    if (!x)
        return;
    x->waiting = 0;
    x->why = cuda_loaded(CUDA_DRIVER)    ? "this process loaded CUDA only as the capture ended"
             : cuda_loaded(CUDA_RUNTIME) ? "this process loaded a CUDA runtime but did not start the driver "
                                           "(libcuda) during the capture: it had not used the GPU yet"
                                         : "this process did not load CUDA (libcudart or libcuda) during the capture";
    say_off(x, &x->said, TB_LOG_INFO, 1);
}

/* exit() during a capture: a CUDA runtime tears its contexts down from an
 * atexit handler registered when it initialised, and ELF destructors (ours
 * calls tb_agent_exit) run only after every atexit handler. So when the
 * GPU source starts, which in nearly every job is after CUDA came up, an
 * atexit handler of ours goes in too: it runs before the runtime's and
 * flushes CUPTI while the contexts still exist. A source that started
 * as the driver loaded (a capture from start-up) registered before the
 * runtime's own, and when the runtime gets there is not known (it loads
 * the driver first; cuInit takes seconds on some machines): the hook goes in again
 * each second of the capture's first EXIT_HOOK_SPAN_S with the source on
 * (handlers run last in, first out; tb_agent_exit twice waits once). At
 * most EXIT_HOOKS_MAX per process, a few bytes each. Agent thread only. */
static void exit_hook(void) { tb_agent_exit(); }

#define EXIT_HOOK_SPAN_S 10
#define EXIT_HOOKS_MAX 256
static struct {
    int n;          /* registered in this process */
    int64_t gpu_at; /* mono ns the GPU source started, this capture (0: not on) */
    int64_t last;   /* the last registration, mono ns */
} hooks;

/* now: mono ns; started: the GPU source has just started (0: a turn of
 * the capture). */
static void exit_hook_install(int64_t now, int started)
{
    int gpu = 0;
    for (int i = 0; i < g.nsrc; i++)
        gpu |= g.src[i].started && !strcmp(g.src[i].name, "gpu");
    if (!gpu || hooks.n >= EXIT_HOOKS_MAX || atomic_load(&a_stop_req)) /* (not while exit() runs) */
        return;
    if (started)
        hooks.gpu_at = now;
    else if (!hooks.gpu_at || now - hooks.gpu_at > EXIT_HOOK_SPAN_S * 1000000000LL ||
             now - hooks.last < 1000000000LL)
        return;
    hooks.n++;
    hooks.last = now;
    if (atexit(exit_hook))
        tb_debug("atexit refused: a capture at exit is flushed from the destructor only");
}

/* The GPU source last: its stop waits for GPU work still running (up to
 * TBPROF_GPU_DRAIN_MS), and the CPU sampler, which would sample the job
 * all that time past the window's end (and keep CPython's trampoline on,
 * which costs every Python call), stops at once. */
static void stop_sources(void)
{
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < g.nsrc; i++)
            if (g.src[i].started && g.src[i].s->stop && (strcmp(g.src[i].name, "gpu") == 0) == pass)
                g.src[i].s->stop(g.src[i].s->ctx);
}

static int any_poll(void)
{
    for (int i = 0; i < g.nsrc; i++)
        if (g.src[i].started && g.src[i].s->poll)
            return 1;
    return 0;
}

static void poll_sources(void)
{
    for (int i = 0; i < g.nsrc; i++)
        if (g.src[i].started && g.src[i].s->poll)
            g.src[i].s->poll(g.src[i].s->ctx);
}

/* ---- SIGTERM while capturing ------------------------------------------------------
 * We never replace a handler the job installed: only when SIGTERM's disposition
 * is the default do we install ours, for the length of a capture. Ours writes
 * one byte to a pipe of its own, read by a small watchdog thread (started with
 * the handler, blocked in read() the rest of the time): it hands the byte on
 * to the agent thread, which flushes, restores the default and re-sends
 * SIGTERM, and it does that itself TERM_FLUSH_MS later whatever the agent
 * thread is doing (starting the sources, collecting, writing: it reads its
 * pipe only between those), so the job still dies of SIGTERM, and soon. */

static volatile sig_atomic_t term_fd_w = -1; /* the watchdog's pipe, for on_term */
static int term_fd_r = -1;

static void on_term(int sig)
{
    (void)sig;
    int e = errno;
    int fd = term_fd_w;
    if (fd >= 0) {
        ssize_t w = write(fd, "T", 1);
        (void)w;
    } else {
        /* no agent here (forked child): behave as the default would */
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
    }
    errno = e;
}

static void die_of_sigterm(void)
{
    tb_pytramp_dying(); /* CPython's atexit, which removes the map of ours, will not run */
    signal(SIGTERM, SIG_DFL);
    kill(getpid(), SIGTERM); /* process-directed: a job thread takes it */
    for (;;)
        pause();
}

static void *term_watchdog(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char b;
    for (;;) {
        ssize_t k = read(fd, &b, 1);
        if (k == 1)
            break;
        if (k < 0 && errno == EINTR)
            continue;
        /* the job closed the pipe (every fd it did not open, mid-run):
         * SIGTERM takes its default action again (on_term with no pipe),
         * rather than a byte written to whatever file got the number; the
         * next capture makes a new pipe. The numbers are the job's now:
         * not closed here. */
        __atomic_store_n(&term_fd_w, -1, __ATOMIC_RELAXED);
        return NULL;
    }
    /* the agent thread writes what it can (on_signal_byte) when it next
     * reads its pipe; the bound starts now */
    tb_agent_signal_byte('T');
    struct timespec ts = {TERM_FLUSH_MS / 1000, (TERM_FLUSH_MS % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    die_of_sigterm();
    return NULL;
}

/* pipe2(fd, flags), both ends above fd 2. 0 or -errno (fd[] -1). */
static int make_pipe(int fd[2], int flags)
{
    if (pipe2(fd, flags) < 0) {
        fd[0] = fd[1] = -1;
        return -errno;
    }
    fd[0] = tb_fd_above_stdio(fd[0]);
    int e = errno;
    fd[1] = tb_fd_above_stdio(fd[1]);
    if (fd[0] < 0 || fd[1] < 0) {
        if (fd[1] < 0)
            e = errno;
        for (int i = 0; i < 2; i++)
            if (fd[i] >= 0)
                close(fd[i]);
        fd[0] = fd[1] = -1;
        return -e;
    }
    return 0;
}

/* The agent's own fds' identities (util.h's tb_fd_id): compared by the
 * agent thread (fds_check) and in a fork child. */
static tb_fd_id wake_id[2], listen_id, term_id[2];

/* Agent thread, before it polls or serves: the fds that are ours no more
 * are let go (not closed: the numbers are the job's now); a wake-up pipe
 * the job took, or one that could not be made again, is made (anew).
 * Once the thread runs only it changes these numbers, so they are read
 * without g.lock and looked at outside it: a number the job reused may be
 * a file on NFS or FUSE, slow to fstat, and job threads take g.lock. */
static void fds_check(void)
{
    static int renew_failed;
    int listen = g.listen_fd, w[2] = {g.wake_fd[0], g.wake_fd[1]};
    int listen_lost = listen >= 0 && !tb_fd_id_is(listen, &listen_id);
    int ours[2] = {w[0] >= 0 && tb_fd_id_is(w[0], &wake_id[0]), w[1] >= 0 && tb_fd_id_is(w[1], &wake_id[1])};
    int wake_lost = w[0] >= 0 && (!ours[0] || !ours[1]);
    if (!listen_lost && !wake_lost && w[0] >= 0)
        return;
    int fd[2] = {-1, -1}, e = 0;
    if (wake_lost || w[0] < 0) {
        e = make_pipe(fd, O_CLOEXEC | O_NONBLOCK);
        if (e == 0) {
            tb_fd_id_take(fd[0], &wake_id[0]);
            tb_fd_id_take(fd[1], &wake_id[1]);
        }
    }
    pthread_mutex_lock(&g.lock);
    if (listen_lost)
        g.listen_fd = -1;
    if (wake_lost || w[0] < 0) {
        g.wake_fd[0] = fd[0];
        __atomic_store_n(&g.wake_fd[1], fd[1], __ATOMIC_RELAXED);
        sig_fd_w = fd[1];
    }
    pthread_mutex_unlock(&g.lock);
    for (int i = 0; i < 2 && wake_lost; i++) /* the end still ours, once no one is handed it */
        if (ours[i])
            close(w[i]);
    if (listen_lost)
        tb_warn("the job closed tbprof's control socket (fd %d): `tbprof trigger` and the socket's commands are "
                "off in this process",
                listen);
    if (wake_lost)
        tb_debug("the job closed tbprof's wake-up pipe: %s", e == 0 ? "made a new one" : "polling instead");
    if (e < 0 && !renew_failed) {
        renew_failed = 1;
        tb_warn("tbprof's wake-up pipe, closed by the job, cannot be made again (%s): the agent polls 10 times a "
                "second and TBPROF_SIGNAL triggers are lost until it can",
                strerror(-e));
    }
}

/* The watchdog and its pipe, once per process (again in a forked child).
 * 0 or -errno: without them no handler goes in. */
static int term_watchdog_start(void)
{
    if (__atomic_load_n(&term_fd_w, __ATOMIC_RELAXED) >= 0)
        return 0;
    int fd[2], rc = make_pipe(fd, O_CLOEXEC);
    if (rc < 0)
        return rc;
    /* the handler's end never blocks; the watchdog's does */
    fcntl(fd[1], F_SETFL, fcntl(fd[1], F_GETFL) | O_NONBLOCK);
    rc = tb_agent_spawn(term_watchdog, (void *)(intptr_t)fd[0]);
    if (rc < 0) {
        close(fd[0]);
        close(fd[1]);
        return rc;
    }
    tb_fd_id_take(fd[0], &term_id[0]);
    tb_fd_id_take(fd[1], &term_id[1]);
    term_fd_r = fd[0];
    __atomic_store_n(&term_fd_w, fd[1], __ATOMIC_RELAXED);
    return 0;
}

static void term_install(void)
{
    struct sigaction old;
    if (g.term_installed || sigaction(SIGTERM, NULL, &old) < 0)
        return;
    if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL)
        return;
    int rc = term_watchdog_start();
    if (rc < 0) {
        tb_debug("SIGTERM watchdog not started (%s): SIGTERM during a capture kills the job as it would "
                 "without tbprof",
                 strerror(-rc));
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) == 0)
        g.term_installed = 1;
}

static void term_uninstall(void)
{
    struct sigaction cur;
    if (!g.term_installed)
        return;
    g.term_installed = 0;
    if (sigaction(SIGTERM, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == on_term)
        signal(SIGTERM, SIG_DFL);
}

/* ---- run and host names (runname.h) --------------------------------------------- */

static const char *env_get(const char *name) { return getenv(name); }

static void make_run_name(const struct cap *c, int64_t begin_epoch_ns, char *out, size_t n)
{
    tb_run_req r = {.asked = c->run,
                    .first = c->first,
                    .last = c->last,
                    .fixed_window = fixed_window(c),
                    .env_window = c->kind == CAP_ENV_STEPS,
                    .repeating = c->period != 0 || c->nth != 0, /* a socket's every=: by steps, by time */
                    .nth = c->nth,
                    .env_time = c->kind == CAP_TIME && c->win == -2,
                    .time_from_s = c->time_from_s,
                    .begin_epoch_ns = begin_epoch_ns};
    tb_names_run(&g.names, &g.cfg, &r, g.ncaptures, out, n);
}

/* ---- building the profile ---------------------------------------------------------- */

static int cmp_rec(const void *a, const void *b)
{
    const struct step_rec *x = a, *y = b;
    if (x->tid != y->tid)
        return x->tid < y->tid ? -1 : 1;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return 0;
}

/* Step events: one per recorded boundary, to the thread's next boundary. */
static void add_steps(tb_space *sp, const struct cap *c, int64_t begin, int64_t end, size_t nrec)
{
    if (!nrec)
        return;
    qsort(recs, nrec, sizeof(recs[0]), cmp_rec);
    tb_plane *p = tb_host_plane(sp);
    if (!p)
        return;
    int64_t ev = tb_plane_event_meta_cat(p, TB_EV_STEP, TB_CAT_STEP);
    int64_t st_root = tb_plane_stat_meta(p, TB_ST_IS_ROOT);
    int64_t st_num = tb_plane_stat_meta(p, TB_ST_STEP_NUM);
    if (ev < 0 || st_root < 0 || st_num < 0)
        return;
    int steps_based = c->kind != CAP_TIME;
    for (size_t i = 0; i < nrec; i++) {
        const struct step_rec *r = &recs[i];
        int64_t stop = (i + 1 < nrec && recs[i + 1].tid == r->tid) ? recs[i + 1].t : end;
        if (steps_based ? (r->step < c->first || r->step > c->last) : (r->t < begin || r->t >= end))
            continue;
        if (stop > end)
            stop = end;
        tb_line *l = tb_host_line(sp, r->tid);
        if (!l || tb_line_add(l, ev, tb_mono_to_epoch(r->t), stop - r->t) < 0)
            continue;
        tb_line_stat_i64(l, st_root, 1);
        tb_line_stat_i64(l, st_num, r->step);
    }
}

/* The correlation ids of the host plane's calls (CUDA API calls), those
 * starting in [begin, end) into *in, the others into *out, each sorted.
 * 0, or -ENOMEM (then neither is used). */
typedef struct corr_ids {
    uint64_t *v;
    size_t n, cap;
} corr_ids;

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int corr_has(const corr_ids *c, uint64_t id)
{
    return c->n && bsearch(&id, c->v, c->n, sizeof(uint64_t), u64_cmp) != NULL;
}

static int host_calls(const tb_space *sp, int64_t begin, int64_t end, corr_ids *in, corr_ids *out)
{
    for (size_t pi = 0; pi < sp->nplanes; pi++) {
        const tb_plane *p = sp->planes[pi];
        uint32_t cm = strcmp(p->name, TB_HOST_PLANE) ? 0 : tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        for (size_t li = 0; cm && li < p->nlines; li++) {
            const tb_line *l = p->lines[li];
            for (size_t e = 0; e < l->nevents; e++) {
                const tb_stat *st = tb_event_stat(l, &l->events[e], cm);
                if (!st)
                    continue;
                int64_t t = l->events[e].start_ns;
                corr_ids *c = t >= begin && t < end ? in : out;
                if (TB_GROW(c->v, c->cap, c->n + 1) < 0)
                    return -ENOMEM;
                c->v[c->n++] = st->v.u;
            }
        }
    }
    if (in->n > 1)
        qsort(in->v, in->n, sizeof(uint64_t), u64_cmp);
    if (out->n > 1)
        qsort(out->v, out->n, sizeof(uint64_t), u64_cmp);
    return 0;
}

/* Keep only what happened inside the window: host events starting in
 * [begin, end); on other planes, the work of the calls kept (by
 * correlation id: a kernel launched in the window may run after it, and
 * CUPTI records until the agent thread turns it off, so the next step's
 * first launches, after the window's end, come too), and work without a
 * call in the profile when it starts at or after begin. */
static void trim(tb_space *sp, int64_t begin_ep, int64_t end_ep)
{
    corr_ids in = {0}, out = {0};
    int by_call = host_calls(sp, begin_ep, end_ep, &in, &out) == 0;
    for (size_t pi = 0; pi < sp->nplanes; pi++) {
        tb_plane *p = sp->planes[pi];
        int host = !strcmp(p->name, TB_HOST_PLANE);
        uint32_t cm = !host && by_call ? tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID) : 0;
        for (size_t li = 0; li < p->nlines; li++) {
            tb_line *l = p->lines[li];
            size_t k = 0;
            for (size_t e = 0; e < l->nevents; e++) {
                const tb_event *x = &l->events[e];
                int keep = x->start_ns >= begin_ep && (!host || x->start_ns < end_ep);
                const tb_stat *st = cm ? tb_event_stat(l, x, cm) : NULL;
                if (st && corr_has(&in, st->v.u))
                    keep = 1;
                else if (st && corr_has(&out, st->v.u))
                    keep = 0;
                if (keep)
                    l->events[k++] = *x;
            }
            l->nevents = k;
        }
    }
    free(in.v);
    free(out.v);
}

static void set_last_profile(const char *path)
{
    int i = atomic_load(&last_idx) == 0 ? 1 : 0;
    snprintf(g.last_profile[i], sizeof(g.last_profile[i]), "%s", path);
    atomic_store(&last_idx, i);
}

/* A pass over the built profile that failed (rc < 0): say what is missing. */
static void link_warn(tb_space *sp, int64_t rc, const char *what)
{
    if (rc >= 0)
        return;
    char w[200];
    snprintf(w, sizeof(w), "%s: %s", what, rc == -ENOSPC ? "the profile reached TBPROF_MAX_MB" : strerror((int)-rc));
    tb_space_add_warning(sp, w);
    tb_warn("%s", w);
}

/* Agent thread, lock NOT held, sources stopped, nothing to be written: the
 * started sources collect into a space thrown away, which frees what their
 * capture holds (the GPU source's buffer pool, the samples) until the next. */
static void discard_sources(void)
{
    tb_space *tmp = tb_space_new();
    for (int i = 0; tmp && i < g.nsrc; i++)
        if (g.src[i].started && g.src[i].s->collect)
            g.src[i].s->collect(g.src[i].s->ctx, tmp);
    tb_space_free(tmp);
}

/* Agent thread, lock NOT held, sources stopped: collect everything into a
 * new space (NULL when nothing is to be written). Uses recs[0..nrec). */
static tb_space *build_space(const struct cap *c, size_t nrec, uint64_t rec_dropped, int64_t overhead_ns)
{
    tb_space *sp = tb_space_new();
    if (!sp) {
        tb_warn("out of memory: profile not written");
        return NULL;
    }
    if (g.cfg.max_mb)
        tb_space_set_limit(sp, (size_t)g.cfg.max_mb << 20);
    tb_space_add_hostname(sp, tb_names_hostname(&g.names));
    tb_plane *hp = tb_host_plane(sp); /* first plane */
    int64_t begin = tb_mono_to_epoch(c->begin), end = tb_mono_to_epoch(c->end);
    if (hp) { /* sources read the window from here (tb_capture_window) */
        tb_plane_stat_i64(hp, TB_ST_CAPTURE_BEGIN_NS, begin);
        tb_plane_stat_i64(hp, TB_ST_CAPTURE_END_NS, end);
    }
    for (int i = 0; i < g.nsrc; i++) {
        struct src *x = &g.src[i];
        if (x->started && x->s->collect) {
            int rc = x->s->collect(x->s->ctx, sp);
            if (rc < 0) {
                char w[160];
                snprintf(w, sizeof(w), "%s source: collect failed: %s", x->name, strerror(-rc));
                tb_space_add_warning(sp, w);
                tb_warn("%s", w);
            }
        }
    }
    add_steps(sp, c, c->begin, c->end, nrec);
    trim(sp, begin, end);
    link_warn(sp, tb_space_link_ranges(sp), "GPU work not (all) named by its NVTX ranges");
    link_warn(sp, tb_space_link_steps(sp), "CUDA calls on other threads not (all) put in their steps");
    uint64_t ignored = atomic_load_explicit(&steps_ignored, memory_order_relaxed);
    if (hp) {
        tb_plane_stat_i64(hp, TB_ST_PID, (int64_t)getpid());
        if (g.names.rank_num >= 0)
            tb_plane_stat_i64(hp, TB_ST_RANK, g.names.rank_num);
        if (g.names.world_size >= 0)
            tb_plane_stat_i64(hp, TB_ST_WORLD_SIZE, g.names.world_size);
        tb_plane_stat_str(hp, TB_ST_TRIGGER, c->trigger);
        tb_plane_stat_u64(hp, TB_ST_DROPPED, tb_space_dropped(sp));
        tb_plane_stat_u64(hp, TB_ST_STEPS_DROPPED, rec_dropped);
        int owner = atomic_load(&step_owner);
        if (owner && !c->follow) /* (a worker's is the source its trainer chose before the fork) */
            tb_plane_stat_str(hp, TB_ST_STEP_SOURCE, tb_step_source_name(owner));
        if (ignored)
            tb_plane_stat_u64(hp, TB_ST_STEPS_IGNORED, ignored);
        tb_plane_stat_i64(hp, TB_ST_OVERHEAD_NS, overhead_ns);
        if (c->start_wait > 0)
            tb_plane_stat_i64(hp, TB_ST_START_WAIT_NS, c->start_wait);
        if (c->gpu_late_ns > 0)
            tb_plane_stat_i64(hp, TB_ST_GPU_LATE_NS, c->gpu_late_ns);
    }
    if (c->kind != CAP_TIME && c->deadline && c->end == c->deadline) {
        char w[200];
        snprintf(w, sizeof(w), "no step began for %d s: the capture stopped there, before the end of step %lld",
                 TRIGGER_STEPS_CAP_S, (long long)c->last);
        tb_space_add_warning(sp, w);
        tb_warn("%s", w);
    }
    if (c->late_ns > 0) {
        char w[240];
        snprintf(w, sizeof(w),
                 "the sources were still starting %.1f ms into the capture (longer than the step before it "
                 "and TBPROF_START_WAIT_MS=%lld): its first step is incomplete",
                 c->late_ns / 1e6, (long long)g.cfg.start_wait_ms);
        tb_space_add_warning(sp, w);
        tb_warn("%s", w);
    }
    for (int i = 0; i < g.nsrc; i++) {
        struct src *x = &g.src[i];
        const char *why = x->started ? NULL
                          : !x->enabled ? x->off_reason
                          : x->why    ? x->why
                                      : "not started before the capture ended";
        if (!why)
            continue;
        int gpu = !strcmp(x->name, "gpu"), nvtx = !strcmp(x->name, "nvtx");
        const char *stat = gpu ? TB_ST_GPU_OFF_REASON : nvtx ? TB_ST_NVTX_OFF_REASON : TB_ST_CPU_OFF_REASON;
        if (hp)
            tb_plane_stat_str(hp, stat, why);
        char w[360];
        snprintf(w, sizeof(w), "%s %s off: %s", x->name, gpu ? "tracing" : nvtx ? "ranges" : "sampling", why);
        tb_space_add_warning(sp, w);
    }
    if (ignored) {
        char w[256];
        snprintf(w, sizeof(w), "steps are counted from %s; %llu step boundaries from another source were ignored",
                 tb_step_source_name(atomic_load(&step_owner)), (unsigned long long)ignored);
        tb_space_add_warning(sp, w);
    }
    /* calls slow to return since the last profile (stall.h): warned about
     * as they happened; the profile keeps the list */
    char slow[512], says[700];
    if (tb_stall_take(slow, sizeof(slow))) {
        snprintf(says, sizeof(says), "calls that took %lld ms or more to return (TBPROF_STALL_WARN_MS): %s",
                 (long long)g.cfg.stall_warn_ms, slow);
        tb_space_add_warning(sp, says);
    }
    if (rec_dropped) {
        char w[96];
        snprintf(w, sizeof(w), "%llu step boundaries dropped (more than %d in one capture)",
                 (unsigned long long)rec_dropped, MAX_STEP_RECS);
        tb_space_add_warning(sp, w);
    }
    return sp;
}

/* Between the pieces of a profile being written (agent thread, lock not
 * held): answer the control socket, so `status` says "writing" and a
 * trigger is not kept waiting for the whole write (seconds for a large
 * trace.json.gz). A capture asked for now arms; its sources start after
 * the write, as for a step window that begins during one. Not while the
 * process leaves. */
static void serve_while_writing(void *ctx)
{
    tb_stall_touch(*(int *)ctx); /* a piece went out: the write is moving */
    fds_check();
    pthread_mutex_lock(&g.lock);
    int serve = !g.exiting && !g.term_pending && g.listen_fd >= 0;
    pthread_mutex_unlock(&g.lock);
    if (serve)
        tb_ctl_serve(g.listen_fd, tb_agent_control);
}

/* Agent thread, lock NOT held: the file I/O. Frees sp. */
static void write_space(tb_space *sp, const char *run, const char *trigger, int follow)
{
    char host[TB_CONFIG_STR + 300], path[PATH_MAX], what[TB_CONFIG_STR + 64];
    tb_names_host(&g.names, &g.cfg, (int)getpid(), host, sizeof(host));
    if (follow) /* beside its parent's file: a name of its own (a rank's workers share its RANK) */
        tb_names_child_host(host, sizeof(host), (int)getpid());
    /* a write that stops moving (a hung NFS mount, a full quota server) is
     * named: each piece written counts as progress (serve_while_writing).
     * Not at exit, where the wait for the write is bounded and said anyway
     * (and no watcher thread is started that late) */
    snprintf(what, sizeof(what), "the profile write under %s", g.cfg.logdir);
    int w = tb_agent_leaving() ? -1
                               : tb_stall_enter(what, "a slow or hung file system? the job runs on; a local "
                                                      "TBPROF_LOGDIR avoids it");
    tb_profile_opts o = {
        .logdir = g.cfg.logdir,
        .run = run,
        .host = host,
        .trace_json = g.cfg.trace_json,
        .no_marker = follow, /* the parent's marks the logdir (TensorBoard needs one) */
        .max_bytes = (size_t)g.cfg.max_mb << 20,
        .min_free = (uint64_t)g.cfg.min_free_mb << 20,
        .tick = serve_while_writing,
        .tick_ctx = &w,
    };
    int rc = tb_profile_write(sp, &o, path, sizeof(path));
    tb_stall_leave(w);
    if (rc < 0) {
        if (rc == -TB_ELOWSPACE)
            tb_warn("profile not written under %s: it would leave less than %lld MiB free there "
                    "(TBPROF_MIN_FREE_MB; 0 turns this floor off)",
                    g.cfg.logdir, (long long)g.cfg.min_free_mb);
        else
            tb_warn("profile not written under %s: %s", g.cfg.logdir, strerror(-rc));
    } else {
        tb_info("profile written: %s (%zu events, trigger: %s)", path, tb_space_event_count(sp), trigger);
        pthread_mutex_lock(&g.lock);
        g.ncaptures++;
        set_last_profile(path);
        pthread_mutex_unlock(&g.lock);
    }
    tb_space_free(sp);
}

/* ---- requests (lock held) ---------------------------------------------------------- */

/* The next env window (a repeating one's next repeat), in *w: 1, or 0 when
 * none is left. Lock held. */
static int env_window_next(tb_window *w)
{
    while (g.win_idx < g.cfg.nwindows && !g.rank_out) {
        if (tb_window_nth(&g.cfg.windows[g.win_idx], g.win_rep, w) == 0)
            return 1;
        g.win_idx++;
        g.win_rep = 0;
    }
    return 0;
}

/* The repeat of the env window in use that steps past n have not yet
 * passed: repeats whose last step is n or before are skipped in one go (a
 * job resumed at step 250000 with "100-104/1000" starts at 250100). Lock
 * held. */
static void env_window_skip(int64_t n)
{
    int64_t k = tb_window_index_from(&g.cfg.windows[g.win_idx], n);
    g.win_rep = k > g.win_rep ? k : g.win_rep + 1;
}

static void update_slow_from(void)
{
    int64_t v = INT64_MAX;
    tb_window w;
    if (g.disabled)
        v = INT64_MAX;
    else if (g.state != TB_STATE_IDLE)
        v = 0;
    else if (env_window_next(&w))
        v = w.first > 0 ? w.first - 1 : 0;
    if (!g.disabled && g.state == TB_STATE_IDLE && g.pend.kind) {
        int64_t p = g.pend.first > 0 ? g.pend.first - 1 : 0;
        v = p < v ? p : v;
    }
    atomic_store(&slow_from, v);
}

/* Begin a capture (state idle -> armed). Lock held. */
static void arm(const struct cap *c)
{
    g.cur = *c;
    g.cur.end = 0;
    g.cur.named = g.cur.armed_pub = g.cur.begun_pub = 0;
    set_stop_req(0);
    g.sources_started = 0;
    g.nrec = 0;
    g.rec_dropped = 0;
    set_state(TB_STATE_ARMED);
    update_slow_from();
}

static void begin_capturing(int64_t t)
{
    g.cur.begin = t;
    set_state(TB_STATE_CAPTURING);
    if (g.cur.armed_pub) /* the agent thread tells the children (machine), now */
        wake();
}

/* Step window c (steps c->first..c->last by number) at the boundary of
 * step n (at_boundary), or with step n under way (after a write): -1 when
 * it is over already (missed), 0 when it is not due yet, 1 when it is armed
 * now (c->first moved to the first step still to come when it had begun),
 * its capture begun at once at the boundary of its first step. Lock held,
 * state idle. */
static int window_due(struct cap *c, int64_t n, int64_t t, int at_boundary)
{
    if (at_boundary ? n > c->last : n >= c->last)
        return -1;
    if (n < c->first - 1)
        return 0;
    if (at_boundary ? n > c->first : n + 1 > c->first)
        c->first = at_boundary ? n : n + 1;
    arm(c);
    if (at_boundary && n == c->first)
        begin_capturing(t);
    return 1;
}

/* An env step window: arm at the boundary of step n (n = -1: none yet),
 * or from the agent thread after a write (at_boundary = 0: step n already
 * began). Lock held, state idle. Returns 1 when armed. */
static int env_window_check(int64_t n, int64_t t, int at_boundary)
{
    tb_window w;
    while (env_window_next(&w)) {
        struct cap c = {.kind = CAP_ENV_STEPS, .first = w.first, .last = w.last, .win = g.win_idx};
        int due = window_due(&c, n, t, at_boundary);
        if (due == 0)
            return 0;
        if (due > 0) {
            g.win_rep++;
            snprintf(g.cur.trigger, sizeof(g.cur.trigger), "TBPROF_STEPS %lld-%lld", (long long)g.cur.first,
                     (long long)g.cur.last);
            return 1;
        }
        tb_info("step window %lld-%lld missed (step %lld already running)", (long long)w.first, (long long)w.last,
                (long long)n);
        env_window_skip(at_boundary ? n : n + 1);
    }
    return 0;
}

/* g.pend as a window (config.h), for tb_window_nth / _index_from. Lock held. */
static tb_window pend_window(void)
{
    return (tb_window){.first = g.pend.first, .last = g.pend.last, .period = g.pend.period, .count = g.pend.reps};
}

/* g.pend's next repeat after `skip` more periods: 1, or 0 (and g.pend
 * dropped) when it was the last or the numbers would overflow. Lock held. */
static int pend_repeat(int64_t skip)
{
    tb_window w = pend_window(), nx;
    if (!g.pend.period || tb_window_nth(&w, skip, &nx) < 0) {
        g.pend.kind = 0;
        return 0;
    }
    g.pend.first = nx.first;
    g.pend.last = nx.last;
    if (g.pend.reps)
        g.pend.reps -= skip;
    return 1;
}

/* The window by number waiting for its steps (g.pend), checked as an env
 * window is. A repeating one (every=P) stays in g.pend as its next repeat
 * while this one is captured, and skips the repeats already behind the
 * process in one go. Lock held, state idle. Returns 1 when armed. */
static int pend_check(int64_t n, int64_t t, int at_boundary)
{
    while (g.pend.kind) {
        struct cap c = g.pend;
        int due = window_due(&c, n, t, at_boundary);
        if (due == 0)
            return 0;
        if (due < 0) {
            tb_info("step window %lld-%lld (%s) missed (step %lld already running)", (long long)g.pend.first,
                    (long long)g.pend.last, g.pend.trigger, (long long)n);
            if (g.pend.period) { /* to the first repeat the process has not passed */
                tb_window w = pend_window();
                pend_repeat(tb_window_index_from(&w, at_boundary ? n : n + 1));
            } else {
                g.pend.kind = 0;
            }
            continue;
        }
        if (g.cur.first != g.pend.first) {
            size_t l = strlen(g.cur.trigger);
            snprintf(g.cur.trigger + l, sizeof(g.cur.trigger) - l, " (from step %lld)", (long long)g.cur.first);
        }
        g.cur.deadline = tb_mono_ns() + (int64_t)TRIGGER_STEPS_CAP_S * 1000000000;
        pend_repeat(1); /* the next repeat waits in g.pend, or none does */
        return 1;
    }
    return 0;
}

static int request_time(int64_t dur_ns, const char *trigger, int win)
{
    if (g.disabled)
        return -EPERM;
    if (leaving_locked())
        return -ESHUTDOWN;
    if (g.state != TB_STATE_IDLE)
        return -EBUSY;
    struct cap c = {.kind = CAP_TIME, .first = -1, .last = -1, .dur_ns = dur_ns, .win = win};
    snprintf(c.trigger, sizeof(c.trigger), "%s", trigger);
    arm(&c);
    return 0;
}

/* Steps first..last by number (CAP_AT_STEPS), waiting in g.pend until step
 * first-1 (armed now when that step is under way). Lock held. 0, -EINVAL
 * (a bad range, or step `first` has begun), -EPERM, -EBUSY. */
static int request_window(int64_t first, int64_t last, const char *trigger, const char *run, int64_t period,
                          int64_t reps)
{
    int64_t cur = atomic_load(&next_step) - 1; /* the step running now (-1: none marked) */
    if (first < 0 || last < first || last - first >= 1000000 || first <= cur)
        return -EINVAL;
    if (g.disabled)
        return -EPERM;
    if (leaving_locked())
        return -ESHUTDOWN;
    if (g.state != TB_STATE_IDLE || g.pend.kind)
        return -EBUSY;
    struct cap c = {.kind = CAP_AT_STEPS, .first = first, .last = last, .win = -1, .period = period, .reps = reps};
    snprintf(c.trigger, sizeof(c.trigger), "%s", trigger);
    snprintf(c.run, sizeof(c.run), "%s", run ? run : "");
    g.pend = c;
    if (!pend_check(cur, 0, 0))
        update_slow_from();
    return 0;
}

/* N steps from the next boundary (0), or with TBPROF_STEP_ROUNDUP=R from
 * the next step number divisible by R, as a window waiting for its steps
 * (1; *first = its first step): ranks triggered moments apart (a signal
 * sent to each) capture the same steps. */
static int request_steps(int64_t nsteps, const char *trigger, const char *run, int64_t *first)
{
    if (g.disabled)
        return -EPERM;
    if (leaving_locked())
        return -ESHUTDOWN;
    if (g.state != TB_STATE_IDLE || g.pend.kind)
        return -EBUSY;
    if (g.cfg.step_roundup > 0) {
        int64_t cur = atomic_load(&next_step) - 1, r = g.cfg.step_roundup;
        int64_t a = cur < 0 ? 0 : (cur / r + 1) * r;
        char trig[sizeof(g.cur.trigger)];
        snprintf(trig, sizeof(trig), "%s (steps %lld-%lld: TBPROF_STEP_ROUNDUP=%lld)", trigger, (long long)a,
                 (long long)(a + nsteps - 1), (long long)r);
        *first = a;
        int rc = request_window(a, a + nsteps - 1, trig, run, 0, 0);
        return rc < 0 ? rc : 1;
    }
    struct cap c = {.kind = CAP_STEPS, .first = -1, .last = -1, .nsteps = nsteps, .win = -1,
                    .deadline = tb_mono_ns() + (int64_t)TRIGGER_STEPS_CAP_S * 1000000000};
    snprintf(c.trigger, sizeof(c.trigger), "%s", trigger);
    snprintf(c.run, sizeof(c.run), "%s", run ? run : "");
    arm(&c);
    return 0;
}

static int request_stop(int64_t t)
{
    if (g.state != TB_STATE_ARMED && g.state != TB_STATE_CAPTURING)
        return -ENOENT;
    if (!g.stop_req) {
        set_stop_req(1);
        g.cur.end = t;
    }
    return 0;
}

/* ---- steps (training threads) ---------------------------------------------------------- */

static int ensure_thread(void);

/* Called by the thread whose boundary began the window's first step (t),
 * with the sources not started: wait for them up to TBPROF_START_WAIT_MS
 * from t, then move the window's begin and that boundary to now. No I/O. */
static void wait_for_sources(int64_t n, int64_t t, size_t rec)
{
    struct timespec until = mono_in(g.cfg.start_wait_ms * 1000000 - (tb_mono_ns() - t));
    pthread_mutex_lock(&g.lock);
    while (!g.sources_started && g.state == TB_STATE_CAPTURING && !g.stop_req && g.cur.first == n)
        if (pthread_cond_timedwait(&g.cond, &g.lock, &until) == ETIMEDOUT)
            break;
    /* move the window only when no other thread marked a boundary meanwhile
     * (steps from several threads: theirs are in the window already) */
    if (g.state == TB_STATE_CAPTURING && g.cur.first == n && g.cur.begin == t && g.nrec == rec + 1 &&
        g.sources_started && recs[rec].step == n && recs[rec].t == t) {
        int64_t t2 = tb_mono_ns();
        g.cur.start_wait = t2 - t;
        g.cur.begin = t2;
        g.cur.late_ns = 0;
        recs[rec].t = t2;
    } /* else the agent measured how late the sources were when they came up */
    g.begin_settling = 0;
    pthread_mutex_unlock(&g.lock);
    wake(); /* (the run folder is decided now) */
}

static void step_slow(int64_t n)
{
    int64_t t = tb_mono_ns();
    pid_t tid = tb_gettid();
    int poke = 0;
    pthread_mutex_lock(&g.lock);
    if (g.disabled || !g.inited) {
        pthread_mutex_unlock(&g.lock);
        return;
    }
    if (g.state == TB_STATE_IDLE && !leaving_locked()) {
        if (pend_check(n, t, 1) || env_window_check(n, t, 1))
            poke = 1;
    }
    if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !g.stop_req && g.cur.follow) {
        /* a following child that counts steps (a rank a launcher forked):
         * its own windows are what capture it, not its parent's */
        g.cur.follow_drop = FOLLOW_DROP_STEPS;
        request_stop(t);
        poke = 1;
    }
    if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !g.stop_req) {
        if (g.nrec < MAX_STEP_RECS)
            recs[g.nrec++] = (struct step_rec){.t = t, .step = n, .tid = tid};
        else
            g.rec_dropped++;
        struct cap *c = &g.cur;
        /* a triggered steps capture's bound is on a job that stopped
         * stepping, not on slow steps: it counts from the last boundary */
        if (c->deadline && c->kind != CAP_TIME)
            c->deadline = t + (int64_t)TRIGGER_STEPS_CAP_S * 1000000000;
        if (c->kind == CAP_STEPS && g.state == TB_STATE_ARMED && g.sources_started) {
            c->first = n;
            c->last = n + c->nsteps - 1;
            snprintf(c->trigger + strlen(c->trigger), sizeof(c->trigger) - strlen(c->trigger), " (steps %lld-%lld)",
                     (long long)c->first, (long long)c->last);
            begin_capturing(t);
        } else if (fixed_window(c) && g.state == TB_STATE_ARMED && n >= c->first && n <= c->last) {
            begin_capturing(t);
        } else if (c->kind != CAP_TIME && c->first >= 0 && n > c->last) {
            request_stop(t);
            poke = 1;
        }
    }
    /* the window's first step begins with the sources still starting
     * (step first-1 was shorter than their start-up, e.g. CUPTI's first
     * load): this boundary waits for them, bounded, so the window holds
     * whole steps (what nsys does at cudaProfilerStart, and torch.profiler
     * at its warm-up step) */
    size_t wait_rec = SIZE_MAX;
    if (g.state == TB_STATE_CAPTURING && fixed_window(&g.cur) && n == g.cur.first && !g.sources_started &&
        !g.stop_req && g.nrec > 0 && recs[g.nrec - 1].step == n) {
        wait_rec = g.nrec - 1;
        g.begin_settling = 1; /* the run folder waits for the begin (machine) */
    }
    update_slow_from();
    int need_thread = (poke || wait_rec != SIZE_MAX) && !g.thread_running;
    pthread_mutex_unlock(&g.lock);
    if (need_thread)
        ensure_thread();
    else if (poke || wait_rec != SIZE_MAX)
        wake();
    if (wait_rec != SIZE_MAX)
        wait_for_sources(n, t, wait_rec);
}

const char *tb_step_source_name(int src)
{
    static const char *const n[TB_STEP_NSOURCES] = {
        [TB_STEP_API] = "tbprof_step()",
        [TB_STEP_PYTORCH] = "the PyTorch optimizer hook",
        [TB_STEP_CUDA_PROFILER] = "cudaProfilerStart/Stop",
        [TB_STEP_NVTX] = "NVTX ranges (TBPROF_NVTX_STEP)",
        [TB_STEP_JAX] = "jax.profiler.StepTraceAnnotation",
        [TB_STEP_TF] = "tf.profiler.experimental.Trace",
    };
    return src > 0 && src < TB_STEP_NSOURCES ? n[src] : "?";
}

/* A boundary from src, which does not own step counting (yet). Returns 1
 * when src now owns it, 0 when the boundary is to be ignored. Training
 * threads: no I/O here; the agent thread logs the conflict (machine()). */
static int claim_steps(int src)
{
    int owner = 0;
    if (atomic_compare_exchange_strong(&step_owner, &owner, src) || owner == src)
        return 1;
    atomic_fetch_add_explicit(&steps_ignored, 1, memory_order_relaxed);
    int expect = 0;
    if (atomic_compare_exchange_strong(&step_conflict, &expect, src))
        wake();
    return 0;
}

int64_t tb_agent_step(int src, int has_num, int64_t num)
{
    int64_t n;
    if (src <= 0 || src >= TB_STEP_NSOURCES)
        return -EINVAL;
    if (atomic_load_explicit(&step_owner, memory_order_relaxed) != src && !claim_steps(src))
        return -EBUSY;
    if (!has_num) {
        n = atomic_fetch_add_explicit(&next_step, 1, memory_order_relaxed);
    } else {
        if (num < 0 || num == INT64_MAX) /* INT64_MAX: no next step number */
            return -EINVAL;
        int64_t old = atomic_exchange_explicit(&next_step, num + 1, memory_order_relaxed);
        if (old == num + 1)
            return num; /* the same step again: merged */
        n = num;
    }
    if (n < atomic_load_explicit(&slow_from, memory_order_relaxed))
        return n;
    step_slow(n);
    return n;
}

/* ---- the agent thread -------------------------------------------------------------------- */

static int compute_timeout(int64_t now)
{
    int64_t until = INT64_MAX;
    if (g.tw.at)
        until = g.tw.at;
    if (g.sig_check_at && g.sig_check_at < until)
        until = g.sig_check_at;
    int64_t py_off = tb_pytramp_retry_at(); /* (a trampoline left on by a stop: asked off again) */
    if (py_off && py_off < until)
        until = py_off;
    if (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) {
        if (g.stop_req || !g.sources_started)
            return 0;
        if (g.cur.deadline && g.cur.deadline < until)
            until = g.cur.deadline;
        /* armed too: the sources run from step first-1 on, and a CPU ring
         * not drained then is full when the window begins (which the job's
         * thread marks without waking this one: the next poll finds it) */
        int64_t every = any_poll() ? POLL_MS : gpu_waiting() ? CUDA_WAIT_POLL_MS : 0;
        if (!every && g.cur.armed_pub) /* children take a parent that stops beating as gone (follow.h) */
            every = 1000;
        if (every && now + every * 1000000LL < until)
            until = now + every * 1000000LL;
    }
    if (until == INT64_MAX)
        return -1;
    int64_t ms = (until - now + 999999) / 1000000;
    return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

/* A step source was ignored (claim_steps): say so once, from here. */
static void log_step_conflict(void)
{
    int other = atomic_load(&step_conflict);
    if (other <= 0 || !atomic_compare_exchange_strong(&step_conflict, &other, -1))
        return;
    tb_warn("steps are counted from %s, which marked one first; step boundaries from %s are ignored",
            tb_step_source_name(atomic_load(&step_owner)), tb_step_source_name(other));
}

/* The time window is due (TBPROF_DURATION after TBPROF_DELAY, or a
 * socket's `start duration=S every=T`): arm it, and where it repeats
 * schedule the next one (the one due after `now`: none is made up for).
 * Lock held. */
static void time_window_due(int64_t now)
{
    if (leaving_locked()) { /* and none after it */
        tb_debug("time window due while the process exits: not started");
        g.tw.at = 0;
        return;
    }
    double from = g.tw.from_s + (double)g.tw.k * g.tw.every_s;
    char trig[128], k[40] = "";
    if (g.tw.count)
        snprintf(k, sizeof(k), ", %lld of %lld", (long long)g.tw.k + 1, (long long)g.tw.count);
    if (g.tw.socket)
        snprintf(trig, sizeof(trig), "socket duration=%gs every=%gs%s", g.tw.dur_s, g.tw.every_s, k);
    else if (g.tw.every_s > 0)
        snprintf(trig, sizeof(trig), "TBPROF_DURATION %gs at %gs (TBPROF_EVERY %gs%s)", g.tw.dur_s, from,
                 g.tw.every_s, k);
    else
        snprintf(trig, sizeof(trig), "TBPROF_DURATION %gs after TBPROF_DELAY %gs", g.tw.dur_s, from);
    static int skipped; /* repeats warn the first time only */
    if (request_time((int64_t)(g.tw.dur_s * 1e9), trig, g.tw.socket ? -1 : -2) == 0) {
        g.cur.time_from_s = from;
        if (g.tw.socket) {
            snprintf(g.cur.run, sizeof(g.cur.run), "%s", g.tw.run);
            g.cur.nth = g.tw.k + 1;
        }
    } else if (!skipped++) {
        tb_warn("time window (%s) skipped: a capture is already on%s", trig,
                g.tw.every_s > 0 ? " (later ones skipped so are logged at info level)" : "");
    } else {
        tb_info("time window (%s) skipped: a capture is already on", trig);
    }
    g.tw.at = 0;
    if (g.tw.every_s <= 0)
        return;
    int64_t every = (int64_t)(g.tw.every_s * 1e9);
    int64_t n = (now - g.tw.base) / every + 1; /* > k: every > 0, now >= this one's start */
    if (n <= g.tw.k)
        n = g.tw.k + 1;
    if (g.tw.count && n >= g.tw.count)
        return;
    g.tw.k = n;
    g.tw.at = g.tw.base + n * every;
}

/* Schedule the time window: the first at mono ns `at` (from_s seconds
 * after start-up, for its run name), dur_s long, again every every_s
 * seconds (0: once), count in all (0: no end). Lock held. */
static void time_window_schedule(int64_t at, double from_s, double dur_s, double every_s, int64_t count)
{
    g.tw.at = g.tw.base = at;
    g.tw.k = 0;
    g.tw.dur_s = dur_s;
    g.tw.every_s = every_s;
    g.tw.from_s = from_s;
    g.tw.count = count;
}

/* `start duration=S every=T [count=K]`: S seconds now and every T seconds.
 * Lock held. 0, -EBUSY (a capture or another repeat is on), -EPERM. */
static int request_time_repeat(double dur_s, double every_s, int64_t count, const char *run)
{
    if (g.disabled)
        return -EPERM;
    if (leaving_locked())
        return -ESHUTDOWN;
    if (g.state != TB_STATE_IDLE || g.pend.kind || g.tw.at)
        return -EBUSY;
    int64_t now = tb_mono_ns();
    time_window_schedule(now, 0, dur_s, every_s, count);
    g.tw.socket = 1;
    snprintf(g.tw.run, sizeof(g.tw.run), "%s", run ? run : "");
    time_window_due(now);
    return 0;
}

/* dl_iterate_phdr: stop at once where nothing was loaded since the last
 * look (dlpi_adds, the first object's), else note each CUDA library. */
struct cuda_look {
    unsigned long long adds; /* in: the count last looked at; out: now */
    int first, found;        /* found: CUDA_* bits */
};

static int cuda_look_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct cuda_look *l = arg;
    if (l->first) {
        l->first = 0;
        if (size < offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs))
            l->adds = 0; /* (a loader without the counts: look every time) */
        else if (info->dlpi_adds == l->adds)
            return 1;
        else
            l->adds = info->dlpi_adds;
    }
    const char *path = info->dlpi_name ? info->dlpi_name : "", *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strncmp(base, "libcuda.so", 10))
        l->found |= CUDA_DRIVER;
    else if (!strncmp(base, "libcudart.so", 12) || !strncmp(base, "libcupti.so", 11))
        l->found |= CUDA_RUNTIME;
    return 0;
}

/* Whether the process has loaded one of the CUDA libraries in mask
 * (CUDA_* bits): the driver (a libcuda.so* object: the training process,
 * not a launcher, tool or helper program of the job, which inherit
 * TBPROF_* too, and whose windows' ends are not worth a warning), or a
 * runtime or CUPTI (PyTorch has one from `import torch` on, before it
 * brings the driver up). The loaded objects are looked through only when
 * one was added since the last look, with no file-system search (a
 * dlopen(RTLD_NOLOAD) of a library not loaded tries a dozen paths: every
 * poll while a GPU source waits). Once seen, always (CUDA is not
 * unloaded). */
static int cuda_loaded(int mask)
{
    static atomic_int seen;
    static _Atomic unsigned long long last_adds = ~0ULL;
    int have = atomic_load_explicit(&seen, memory_order_relaxed);
    if (have & mask)
        return 1;
    struct cuda_look l = {.adds = atomic_load(&last_adds), .first = 1};
    dl_iterate_phdr(cuda_look_cb, &l);
    have = atomic_fetch_or(&seen, l.found) | l.found; /* before the count: a look that stops at it sees these */
    atomic_store(&last_adds, l.adds);
    return (have & mask) != 0;
}

/* The capture the children were told of began and has its run folder:
 * tell them that too, once (lock held). 1 when they know it now. */
static int follow_begun(void)
{
    if (g.state != TB_STATE_CAPTURING || !g.cur.armed_pub || !g.cur.named)
        return 0;
    if (!g.cur.begun_pub) {
        g.cur.begun_pub = 1;
        tb_follow_begin(g.cur.name, g.cur.begin);
    }
    return 1;
}

/* A fork child's capture with its parent's, being stopped (lock held): the
 * parent's run folder and the window it shares with the parent's, from
 * tb_agent_follow_stop or, where the child stops first (its exit), from
 * the parent's page. 0 where there is nothing to write. */
static int follow_window(struct cap *c)
{
    tb_follow_window w;
    if (!c->named && !c->follow_drop && tb_follow_peek(c->follow_seq, &w)) {
        snprintf(c->name, sizeof(c->name), "%s", w.run);
        c->named = 1;
        c->follow_begin = w.begin_ns;
        if (w.end_ns && w.end_ns < c->end) /* it ended before this one heard of it */
            c->end = w.end_ns;
    }
    if (c->follow_drop || !c->named)
        return 0;
    if (c->follow_begin > c->begin)
        c->begin = c->follow_begin;
    return c->end > c->begin;
}

/* One turn of the state machine on the agent thread. */
static void machine(void)
{
    log_step_conflict();
    /* looked for before the lock: dl_iterate_phdr takes one of the
     * loader's, and a job thread loading a library may be in our code */
    struct src *wait = gpu_waiting();
    int cuda_now = wait && cuda_loaded(CUDA_DRIVER);
    pthread_mutex_lock(&g.lock);
    int64_t now = tb_mono_ns();
    if (g.tw.at && now >= g.tw.at)
        time_window_due(now);
    if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !g.sources_started && !g.stop_req) {
        g.cur.cpu0 = thread_cpu_ns();
        g.sources_starting = 1;
        pthread_mutex_unlock(&g.lock);
        term_install();
        start_sources();
        exit_hook_install(tb_mono_ns(), 1);
        pthread_mutex_lock(&g.lock);
        g.sources_starting = 0;
        g.sources_started = 1;
        /* fork()ed children start theirs (follow.h; not a child's own
         * children), after this process's: its rings are mapped first */
        if (!g.cur.follow && !g.stop_req && !g.cur.armed_pub) /* (a fork meanwhile may have: follow_late_page) */
            g.cur.armed_pub = tb_follow_arm();
        now = tb_mono_ns();
        if (g.state == TB_STATE_CAPTURING && g.cur.kind != CAP_TIME && now > g.cur.begin)
            g.cur.late_ns = now - g.cur.begin; /* the window began before the sources were on */
        if (g.cur.kind == CAP_TIME && g.state == TB_STATE_ARMED && !g.stop_req) {
            begin_capturing(now);
            if (g.cur.dur_ns > 0)
                g.cur.deadline = now + g.cur.dur_ns;
        }
        pthread_cond_broadcast(&g.cond);
    }
    if (cuda_now && g.sources_started && !g.stop_req && !leaving_locked() &&
        (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !(g.cur.deadline && now >= g.cur.deadline)) {
        pthread_mutex_unlock(&g.lock);
        start_late(wait); /* (CUPTI's first load: seconds) */
        if (g.cur.armed_pub)
            tb_follow_beat(tb_mono_ns());
        exit_hook_install(tb_mono_ns(), 1);
        pthread_mutex_lock(&g.lock);
        now = tb_mono_ns();
    }
    if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && g.sources_started)
        exit_hook_install(now, 0);
    if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && g.cur.deadline && now >= g.cur.deadline)
        request_stop(g.cur.deadline);
    if (g.cur.armed_pub && (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING))
        tb_follow_beat(now);
    if (g.state == TB_STATE_CAPTURING && g.cur.armed_pub && !g.cur.named && !g.begin_settling) {
        /* its run folder, decided once it began (its inputs are fixed then;
         * a step window's begin, once its first boundary stopped waiting
         * for the sources), so that fork()ed children write there too.
         * Without children, at the write as before: the name's localtime_r
         * writes glibc's tzname, which the job may be reading (Python's
         * time module at import), and a capture may begin at start-up */
        make_run_name(&g.cur, tb_mono_to_epoch(g.cur.begin), g.cur.name, sizeof(g.cur.name));
        g.cur.named = 1;
    }
    follow_begun();
    if (g.stop_req && (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING)) {
        int captured = g.state == TB_STATE_CAPTURING;
        int quiet = 0; /* a fork child's capture outside its parent's window */
        if (captured && g.cur.follow && !follow_window(&g.cur))
            captured = 0, quiet = 1;
        struct cap c = g.cur;
        size_t nrec = g.nrec;
        uint64_t dropped = g.rec_dropped;
        int started = g.sources_started;
        int leaving = g.exiting || g.term_pending;
        set_state(TB_STATE_WRITING);
        update_slow_from();
        if (c.armed_pub)
            tb_follow_end(c.begun_pub ? c.end : 0);
        pthread_mutex_unlock(&g.lock);
        /* a job started with stderr closed: what the stop, the collect
         * (ELF files, /proc) and the write open stays off fds 0-2 from the
         * open on, not only once moved (the job's writes to 2 land nowhere) */
        unsigned held = tb_stdio_hold();
        end_waiting();
        if (started)
            stop_sources();
        tb_space *sp = NULL;
        char run[TB_CONFIG_STR + 200] = "";
        if (captured && !g.cfg.logdir[0]) {
            /* only a bad TBPROF_LOGDIR empties it, and the config already
             * warned about that once: one warning per variable */
            tb_info("capture '%s' not written: TBPROF_LOGDIR is not usable", c.trigger);
            discard_sources();
        } else if (captured) {
            if (c.named)
                snprintf(run, sizeof(run), "%s", c.name);
            else
                make_run_name(&c, tb_mono_to_epoch(c.begin), run, sizeof(run));
            sp = build_space(&c, nrec, dropped, thread_cpu_ns() - c.cpu0);
        } else {
            if (quiet || (c.follow && !captured))
                tb_info("capture '%s': %s; nothing written", c.trigger,
                        c.follow_drop == FOLLOW_DROP_STEPS
                            ? "this process counts steps of its own (its own windows capture it)"
                        : quiet ? "outside the parent's window (it never began, or ended before this one began)"
                                : "it ended before the sources here were on");
            else if (leaving && c.kind == CAP_TIME) /* not slow sources: the process ended first (the env
                                                  window in a helper program of the job, without CUDA:
                                                  quietly; a window the program or a user asked for: aloud) */
                tb_log(c.win != -2 || cuda_loaded(CUDA_DRIVER) ? TB_LOG_WARN : TB_LOG_INFO,
                       "capture '%s' ended before it began: the process %s before its sources were on; "
                       "nothing written",
                       c.trigger, g.term_pending ? "was terminated" : "exited");
            else if (c.kind == CAP_TIME) /* tbprof_start, duration=S: the caller's region went uncovered
                                       (CUPTI's first load can take seconds; tbprof_start waits 1 s) */
                tb_warn("capture '%s' ended before it began: it was stopped before its sources were on "
                        "(starting them took longer than it ran); nothing written",
                        c.trigger);
            else if (c.deadline && c.end == c.deadline)
                tb_warn("capture '%s' ended before it began: no step began within %d s; nothing written",
                        c.trigger, TRIGGER_STEPS_CAP_S);
            else
                tb_info("capture '%s' ended before it began: nothing written", c.trigger);
            discard_sources();
        }
        /* idle until the next capture: sources let go (not while the
         * process is leaving: CUDA may be tearing down) */
        for (int i = 0; i < g.nsrc && !leaving; i++)
            if (g.src[i].started && g.src[i].s->release)
                g.src[i].s->release(g.src[i].s->ctx);
        for (int i = 0; i < g.nsrc; i++) {
            g.src[i].started = 0;
            g.src[i].why = NULL;
        }
        pthread_mutex_lock(&g.lock);
        set_stop_req(0);
        g.sources_started = 0;
        g.writing = sp != NULL;
        atomic_store(&a_writing, g.writing);
        /* idle again before the file I/O: a window that begins while we write
         * arms (its steps are recorded; sources start right after the write) */
        set_state(TB_STATE_IDLE);
        /* (not in a fork child that marked no step of its own: the
         * parent's step count it inherited is not its own) */
        if (!g.exiting && !g.term_pending && !(g.is_child && atomic_load(&next_step) == steps_at_fork) &&
            !pend_check(atomic_load(&next_step) - 1, 0, 0))
            env_window_check(atomic_load(&next_step) - 1, 0, 0);
        update_slow_from();
        pthread_mutex_unlock(&g.lock);
        if (sp)
            write_space(sp, run, c.trigger, c.follow);
        tb_stdio_release(held);
        pthread_mutex_lock(&g.lock);
        g.writing = 0;
        atomic_store(&a_writing, 0);
        pthread_cond_broadcast(&g.cond);
        int term = g.term_pending;
        int idle = g.state == TB_STATE_IDLE;
        pthread_mutex_unlock(&g.lock);
        if (idle)
            term_uninstall();
        if (term)
            die_of_sigterm();
        pthread_mutex_lock(&g.lock);
    }
    if (g.state == TB_STATE_CAPTURING && g.sources_started && !g.stop_req) {
        pthread_mutex_unlock(&g.lock);
        poll_sources();
        pthread_mutex_lock(&g.lock);
    }
    pthread_mutex_unlock(&g.lock);
}

static void on_signal_byte(char b)
{
    if (b != 'T' && b != 'S' && b != 'F')
        return; /* 'w': a plain wake-up */
    pthread_mutex_lock(&g.lock);
    if (b == 'F') { /* a following child's _exit (tb_agent_follow_exit): write what is on, arm nothing */
        g.exiting = 1;
        if ((g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !g.stop_req)
            request_stop(tb_mono_ns());
    } else if (b == 'T') {
        if (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING || g.state == TB_STATE_WRITING) {
            if (!g.term_pending) {
                g.term_pending = 1;
                request_stop(tb_mono_ns()); /* the watchdog (term_watchdog) bounds what follows */
                tb_info("SIGTERM during a capture: writing it (at most %d ms)", TERM_FLUSH_MS);
            }
        } else {
            pthread_mutex_unlock(&g.lock);
            term_uninstall();
            die_of_sigterm();
        }
    } else if (b == 'S' && g.rank_out) {
        if (!g.rank_out_said) {
            g.rank_out_said = 1;
            tb_info("signal ignored: this process is not one of TBPROF_RANKS (`tbprof trigger PID` still works)");
        }
    } else if (b == 'S') {
        char trig[64], nb[24];
        snprintf(trig, sizeof(trig), "signal SIG%s", tb_signal_name(g.cfg.signal, nb, sizeof(nb)));
        int rc;
        int64_t first;
        if (atomic_load(&next_step) > 0)
            rc = request_steps(5, trig, NULL, &first);
        else
            rc = request_time((int64_t)((g.cfg.duration_s > 0 ? g.cfg.duration_s : 5.0) * 1e9), trig, -1);
        if (rc == -EBUSY)
            tb_info("signal: already capturing");
        else if (rc == -ESHUTDOWN)
            tb_debug("signal: the process is exiting: no new capture");
    }
    pthread_mutex_unlock(&g.lock);
}

static void drain(int fd, void (*each)(char))
{
    char buf[64];
    for (;;) {
        ssize_t k = read(fd, buf, sizeof(buf));
        if (k <= 0)
            return;
        if (each)
            for (ssize_t i = 0; i < k; i++)
                each(buf[i]);
    }
}

static void sig_check(int64_t now);

static void *agent_main(void *arg)
{
    (void)arg;
    is_agent_thread = 1;
    g.agent_tid = tb_gettid();
    /* numbers this thread writes as text (kernel_details' occ_pct, the
     * trace JSON, run names, the trigger) keep a '.' whatever setlocale()
     * the job calls: a locale of this thread's own */
    locale_t c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale)
        uselocale(c_locale);
    prctl(PR_SET_NAME, "tbprof-agent"); /* no /proc write: cheaper at start-up */
    for (;;) {
        fds_check();
        pthread_mutex_lock(&g.lock);
        int timeout = compute_timeout(tb_mono_ns());
        if (g.wake_fd[0] < 0 && (timeout < 0 || timeout > 100)) /* no pipe: nobody can wake us */
            timeout = 100;
        pthread_mutex_unlock(&g.lock);
        struct pollfd fds[2];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = g.wake_fd[0], .events = POLLIN};
        if (g.listen_fd >= 0)
            fds[n++] = (struct pollfd){.fd = g.listen_fd, .events = POLLIN};
        int r = poll(fds, (nfds_t)n, timeout);
        if (r > 0) {
            /* the job may have closed and reopened the numbers between the
             * check above and the poll: looked at again before a read or an
             * accept, which would take the job's data or connection */
            fds_check();
            if (fds[0].revents && fds[0].fd == g.wake_fd[0])
                drain(g.wake_fd[0], on_signal_byte);
            if (n > 1 && fds[1].revents && fds[1].fd == g.listen_fd)
                tb_ctl_serve(g.listen_fd, tb_agent_control);
        }
        sig_check(tb_mono_ns());
        tb_pytramp_retry(tb_mono_ns());
        machine();
    }
    return NULL;
}

/* A thread of the agent's own: detached, `stack` bytes of stack, every
 * signal blocked (they stay the job's), not counted as the job's by the
 * pthread_create hook (creating_own). 0 or -errno. */
static int spawn(void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t a;
    if (pthread_attr_init(&a) != 0)
        return -ENOMEM;
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (stack < (size_t)PTHREAD_STACK_MIN)
        stack = (size_t)PTHREAD_STACK_MIN;
    pthread_attr_setstacksize(&a, stack);
    sigset_t all;
    sigfillset(&all);
    pthread_t tid;
    creating_own = 1;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
    /* the new thread starts with this mask: no mask switch in the caller */
    pthread_attr_setsigmask_np(&a, &all);
    int rc = pthread_create(&tid, &a, fn, arg);
#else
    sigset_t old;
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&tid, &a, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
#endif
    creating_own = 0;
    pthread_attr_destroy(&a);
    return -rc;
}

int tb_agent_spawn(void *(*fn)(void *), void *arg) { return spawn(fn, arg, 256 << 10); }

/* Start the agent thread (once per process; again lazily in a forked child). */
static int ensure_thread(void)
{
    pthread_mutex_lock(&g.lock);
    if (g.thread_running || g.disabled) {
        pthread_mutex_unlock(&g.lock);
        return 0;
    }
    int rc = 0;
    if (g.wake_fd[0] < 0) {
        if ((rc = make_pipe(g.wake_fd, O_CLOEXEC | O_NONBLOCK)) < 0)
            goto fail;
        tb_fd_id_take(g.wake_fd[0], &wake_id[0]);
        tb_fd_id_take(g.wake_fd[1], &wake_id[1]);
    }
    sig_fd_w = g.wake_fd[1];
    /* unwinding and writing need some stack, not 8 MB */
    if ((rc = spawn(agent_main, NULL, 2 << 20)) < 0)
        goto fail;
    g.thread_running = 1;
    atomic_store(&thread_up, 1);
    pthread_mutex_unlock(&g.lock);
    return 0;
fail:
    tb_warn("agent thread not started: %s; tbprof is off in this process", strerror(-rc));
    g.disabled = 1;
    update_slow_from();
    pthread_mutex_unlock(&g.lock);
    return rc;
}

/* ---- public entry points ------------------------------------------------------------------- */

static void on_trigger_signal(int sig)
{
    (void)sig;
    int e = errno;
    tb_agent_signal_byte('S');
    errno = e;
}

/* Agent thread: is TBPROF_SIGNAL's handler still ours? Looked at 1 s after
 * start-up, then 4, 16 and 64 s later, then every 64 s (one sigaction call
 * each). Once the job's own has replaced it: one warning, no more checks. */
static void sig_check(int64_t now)
{
    pthread_mutex_lock(&g.lock);
    int due = g.sig_check_at && now >= g.sig_check_at;
    if (due) {
        if (g.sig_check_every < 64 * 1000000000LL)
            g.sig_check_every *= 4;
        g.sig_check_at = now + g.sig_check_every;
    }
    pthread_mutex_unlock(&g.lock);
    if (!due)
        return;
    struct sigaction cur;
    if (sigaction(g.cfg.signal, NULL, &cur) != 0 ||
        (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == on_trigger_signal))
        return;
    pthread_mutex_lock(&g.lock);
    g.sig_check_at = 0;
    pthread_mutex_unlock(&g.lock);
    char nb[24];
    tb_warn("TBPROF_SIGNAL=%s: the job has since installed its own handler for this signal; signal trigger off "
            "(an RTMIN+N signal, or `tbprof trigger PID`, still works)",
            tb_signal_name(g.cfg.signal, nb, sizeof(nb)));
}

/* Has the process (ever) had a second thread? */
static int process_threaded(void)
{
#ifdef TB_HAVE_SINGLE_THREADED
    if (!__libc_single_threaded)
        return 1;
#endif
    return atomic_load(&app_threaded);
}

void tb_agent_set_threads_hooked(int yes) { atomic_store(&threads_hooked, yes != 0); }

void tb_agent_thread_created(void)
{
    if (creating_own)
        return;
    int st = atomic_load_explicit(&a_state, memory_order_acquire); /* pairs with set_state */
    if (st == TB_STATE_ARMED || st == TB_STATE_CAPTURING) {
        /* a capture is on: have the sources look for the new thread now
         * rather than at their next rescan (the CPU sampler's is 10 ms, a
         * lifetime for a short worker). g.src is fixed after init; the
         * callbacks only set a flag. One pipe write, during captures only. */
        for (int i = 0; i < g.nsrc; i++)
            if (g.src[i].s && g.src[i].s->thread_created)
                g.src[i].s->thread_created(g.src[i].s->ctx, 0);
        wake();
    }
    if (atomic_load(&in_fork)) /* (g.lock is held across the fork: see tb_agent_fork_prepare) */
        return;
    if (atomic_load_explicit(&thread_up, memory_order_relaxed) ||
        atomic_load_explicit(&app_threaded, memory_order_relaxed) || atomic_exchange(&app_threaded, 1))
        return;
    /* the job's first thread: with TBPROF_SOCKET=auto, start serving the
     * socket now (before tb_agent_init, init sees app_threaded) */
    pthread_mutex_lock(&g.lock);
    int serve = g.inited && !g.disabled && !g.is_child && g.listen_fd >= 0 && g.cfg.socket == TB_SOCKET_AUTO;
    pthread_mutex_unlock(&g.lock);
    if (serve)
        ensure_thread();
}

int tb_agent_init(const tb_config *c, int disable)
{
    pthread_mutex_lock(&g.lock);
    if (g.inited) {
        pthread_mutex_unlock(&g.lock);
        return 0;
    }
    tb_cond_init_monotonic(&g.cond); /* nothing waits on it before init */
    g.inited = 1;
    g.cfg = *c;
    g.disabled = disable;
    update_slow_from();
    if (disable) {
        pthread_mutex_unlock(&g.lock);
        return 0;
    }
    tb_names_read_env(&g.names, env_get);
    tb_names_from_launcher(&g.names, (int)getppid(), env_get);
    /* TBPROF_RANKS: a rank left out (or a process with no rank, a
     * launcher) takes none of the environment's windows; the signal stays
     * caught (a pkill reaches every rank, and its default action would end
     * the process) but is ignored */
    int out = !tb_ranks_take(c, g.names.global_rank);
    int had_windows = c->nwindows || c->duration_s > 0;
    g.rank_out = out; /* (g.cfg kept whole: run names agree with the ranks that capture) */
    if (c->duration_s > 0 && !out)
        time_window_schedule(tb_mono_ns() + (int64_t)(c->delay_s * 1e9), c->delay_s, c->duration_s, c->every_s,
                             c->every_count);
    if (c->socket) {
        int fd = tb_ctl_listen(getpid());
        if (fd < 0)
            tb_warn("control socket off: %s", strerror(-fd));
        else
            g.listen_fd = fd;
        tb_fd_id_take(g.listen_fd, &listen_id);
    }
    /* TBPROF_SOCKET=auto: a single-threaded process gets no thread of ours
     * (glibc drops its single-thread fast paths once there are two, and the
     * thread itself costs; see bench_idle.sh) until it starts one itself */
    int serve = g.listen_fd >= 0 && (c->socket == TB_SOCKET_ON || process_threaded());
    int need = serve || c->signal || g.tw.at;
    pthread_mutex_unlock(&g.lock);
    if (out && (had_windows || c->signal)) {
        char r[64] = "no rank variable";
        if (c->nranks < 0) /* (the config warned about the value) */
            snprintf(r, sizeof(r), "TBPROF_RANKS not usable, so no rank is");
        else if (g.names.global_rank >= 0)
            snprintf(r, sizeof(r), "rank %lld", (long long)g.names.global_rank);
        tb_info("%s, not one of TBPROF_RANKS: this process takes none of the environment's capture "
                "windows%s", r, c->signal ? " and ignores the signal" : "");
    }
    if (need && ensure_thread() < 0)
        return -EAGAIN;
    if (c->signal) {
        struct sigaction old;
        sigaction(c->signal, NULL, &old);
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) {
            char nb[24];
            tb_warn("TBPROF_SIGNAL=%s: the job already handles this signal; signal trigger off",
                    tb_signal_name(c->signal, nb, sizeof(nb)));
        } else {
            struct sigaction sa;
            memset(&sa, 0, sizeof(sa));
            sa.sa_handler = on_trigger_signal;
            sa.sa_flags = SA_RESTART;
            sigemptyset(&sa.sa_mask);
            if (sigaction(c->signal, &sa, NULL) == 0) {
                pthread_mutex_lock(&g.lock);
                g.sig_check_every = 1000000000LL;
                g.sig_check_at = tb_mono_ns() + g.sig_check_every;
                pthread_mutex_unlock(&g.lock);
                wake();
            }
        }
    }
    return 0;
}

/* tbprof_stop(); tbprof_start(): the previous capture may still be
 * stopping or collecting (no file I/O happens in these states). Let it
 * finish, until `until`, rather than refuse the next one. A capture that is
 * armed or running with no stop requested stays (-EBUSY). Lock held; not
 * on the agent thread. */
static void wait_previous(const struct timespec *until)
{
    while (g.state == TB_STATE_WRITING ||
           (g.stop_req && (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING)))
        if (pthread_cond_timedwait(&g.cond, &g.lock, until) == ETIMEDOUT)
            break;
}

int tb_agent_start(int64_t duration_ms, const char *trigger)
{
    if (duration_ms < 0 || duration_ms > INT64_MAX / 1000000) /* in ns it must fit */
        return -EINVAL;
    if (!g.inited)
        return -EAGAIN;
    if (ensure_thread() < 0)
        return -EAGAIN;
    /* deadline for both waits below: the caller is blocked at most ~1 s */
    struct timespec ts = mono_in(1000000000);
    pthread_mutex_lock(&g.lock);
    if (!is_agent_thread)
        wait_previous(&ts);
    int rc = request_time(duration_ms * 1000000, trigger ? trigger : "api", -1);
    pthread_mutex_unlock(&g.lock);
    if (rc < 0)
        return rc;
    wake();
    if (is_agent_thread)
        return 0;
    /* wait (bounded) until the sources are on, so the capture covers what
     * the caller does next */
    pthread_mutex_lock(&g.lock);
    while (g.state == TB_STATE_ARMED && !g.sources_started)
        if (pthread_cond_timedwait(&g.cond, &g.lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g.lock);
    return 0;
}

void tb_agent_step_end(int64_t step)
{
    if (step < 0 || atomic_load(&a_state) != TB_STATE_CAPTURING)
        return; /* idle: one atomic load */
    pthread_mutex_lock(&g.lock);
    int stop = g.state == TB_STATE_CAPTURING && fixed_window(&g.cur) && g.cur.last == step && !g.stop_req;
    if (stop)
        request_stop(tb_mono_ns());
    pthread_mutex_unlock(&g.lock);
    if (stop) {
        tb_debug("step %lld ended (range end): stopping the capture there", (long long)step);
        wake();
    }
}

int tb_agent_capture_steps(int64_t first, int64_t last, const char *trigger)
{
    if (!g.inited)
        return -EPERM;
    pthread_mutex_lock(&g.lock);
    int rc = request_window(first, last, trigger, NULL, 0, 0);
    int armed = rc == 0 && g.state != TB_STATE_IDLE; /* step first-1 is under way */
    int need_thread = armed && !g.thread_running;
    pthread_mutex_unlock(&g.lock);
    if (need_thread)
        ensure_thread();
    else if (armed)
        wake();
    return rc;
}

/* A window waiting for its steps (none begun yet): drop it. Lock held.
 * 1 when there was one. The repeats of a capture under way are dropped
 * too, and 0 returned: the caller stops that capture. */
static int cancel_waiting(void)
{
    if (g.pend.kind && g.pend.period && g.state != TB_STATE_IDLE) {
        g.pend.kind = 0; /* the repeats of the capture under way (stopped by the caller) */
        return 0;
    }
    if (!g.pend.kind || g.state != TB_STATE_IDLE)
        return 0;
    g.pend.kind = 0;
    update_slow_from();
    return 1;
}

int tb_agent_stop(void)
{
    pthread_mutex_lock(&g.lock);
    int cancelled = cancel_waiting();
    int rc = cancelled ? 0 : request_stop(tb_mono_ns());
    pthread_mutex_unlock(&g.lock);
    if (rc == 0 && !cancelled)
        wake(); /* the agent thread writes what was captured */
    return rc;
}

int tb_agent_follow_start(int ppid, uint32_t seq)
{
    if (!g.inited)
        return -EAGAIN;
    /* a child that counts steps of its own (a rank a launcher forked) has
     * its own windows; the ones ending with _exit capture nothing more */
    if (atomic_load(&next_step) != steps_at_fork || atomic_load(&follow_leaving))
        return -EBUSY;
    if (ensure_thread() < 0)
        return -EAGAIN;
    char trigger[96];
    snprintf(trigger, sizeof(trigger), TB_FOLLOW_TRIGGER "%d)", ppid);
    struct timespec ts = mono_in(1000000000);
    pthread_mutex_lock(&g.lock);
    wait_previous(&ts); /* (the child's capture of the parent's last one) */
    int rc = request_time(0, trigger, -1);
    if (rc == 0) {
        g.cur.follow = 1;
        g.cur.follow_seq = seq;
    }
    pthread_mutex_unlock(&g.lock);
    if (rc == 0)
        wake();
    return rc;
}

void tb_agent_follow_stop(const tb_follow_window *w)
{
    pthread_mutex_lock(&g.lock);
    int stop = g.cur.follow && (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) && !g.stop_req;
    if (stop) {
        if (w->begin_ns && w->end_ns) {
            snprintf(g.cur.name, sizeof(g.cur.name), "%s", w->run);
            g.cur.named = 1;
            g.cur.follow_begin = w->begin_ns;
        } else {
            g.cur.follow_drop = FOLLOW_DROP_NOT_BEGUN;
        }
        int64_t now = tb_mono_ns();
        request_stop(w->end_ns && w->end_ns < now ? w->end_ns : now);
    }
    pthread_mutex_unlock(&g.lock);
    if (stop)
        wake();
}

int tb_agent_on_own_thread(void) { return is_agent_thread; }

void tb_agent_expect_nvtx(int on) { atomic_store(&expect_nvtx, on != 0); }

int tb_agent_capturing(void)
{
    return atomic_load(&a_state) == TB_STATE_CAPTURING && !atomic_load(&a_stop_req);
}

const char *tb_agent_last_profile(void)
{
    int i = atomic_load(&last_idx);
    return i < 0 ? "" : g.last_profile[i];
}

#define CTL_USAGE                                                                                                \
    "try: start steps=N | start steps=A-B (either with every=P [count=K]) | start duration=S [every=T [count=K]], " \
    "each with an optional run=NAME; stop; status"

/* count=K of an every= request: K >= 1 windows. 0 or -EINVAL. */
static int parse_count(const char *count, int64_t *k)
{
    char *end;
    errno = 0;
    long long v = strtoll(count, &end, 10);
    if (errno || end == count || *end || v < 1)
        return -EINVAL;
    *k = v;
    return 0;
}

/* A repeat asked for while a time window repeats: -EBUSY, out saying so. */
static int repeat_busy(char *out, size_t n)
{
    snprintf(out, n, "already capturing: a time window repeats already (%s)",
             g.tw.socket ? "stop ends it" : "TBPROF_EVERY");
    return -EBUSY;
}

/* `every=P [count=K]` of `start steps=...`: the window again every P steps
 * (P longer than the window), K windows in all (0: until `stop`). 0, or
 * -EINVAL with out holding the error line. */
static int parse_repeat(const char *steps, const char *every, const char *count, int64_t *period, int64_t *reps,
                        char *out, size_t n)
{
    char *end;
    long long a = steps ? strtoll(steps, &end, 10) : 0, b = a;
    if (steps && *end == '-')
        b = strtoll(end + 1, NULL, 10);
    /* steps=N, or steps=A-B; a range out of bounds (its length could
     * overflow) is left to control_start's check, which says what is wrong */
    long long len = steps && !strchr(steps, '-')                ? a
                    : a >= 0 && b >= a && b - a < 1000000 ? b - a + 1
                                                                : 0;
    errno = 0;
    long long p = every ? strtoll(every, &end, 10) : 0;
    if (!steps || !every || errno || end == every || *end || p <= len || p > TB_MAX_PERIOD) {
        snprintf(out, n, "error: every=P repeats a steps= window every P steps: P longer than the window, at most "
                         "%lld; count=K with it",
                 (long long)TB_MAX_PERIOD);
        return -EINVAL;
    }
    int64_t k = 0;
    if (count && parse_count(count, &k) < 0) {
        snprintf(out, n, "error: count=K needs K >= 1 windows");
        return -EINVAL;
    }
    *period = p;
    *reps = k;
    return 0;
}

/* ", again every P steps (K in all)" for a request's answer and trigger. */
static void repeat_words(int64_t period, int64_t reps, char *buf, size_t n)
{
    if (!period)
        buf[0] = '\0';
    else if (reps)
        snprintf(buf, n, ", again every %lld steps (%lld in all)", (long long)period, (long long)reps);
    else
        snprintf(buf, n, ", again every %lld steps until stop", (long long)period);
}

/* `start ...` from the control socket. Lock held. Returns 0, -EBUSY, or
 * -EINVAL with out holding the error line. */
static int control_start(char *args, char *out, size_t n)
{
    char *steps = NULL, *dur = NULL, *run = NULL, *every = NULL, *count = NULL, *save = NULL;
    for (char *tok = strtok_r(args, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save)) {
        char **slot = !strncmp(tok, "steps=", 6)   ? &steps
                    : !strncmp(tok, "duration=", 9) ? &dur
                    : !strncmp(tok, "run=", 4)      ? &run
                    : !strncmp(tok, "every=", 6)    ? &every
                    : !strncmp(tok, "count=", 6)    ? &count
                                                    : NULL;
        if (!slot || *slot) {
            snprintf(out, n, "error: start takes one of steps=N, steps=A-B or duration=S, and run=NAME (%s)",
                     CTL_USAGE);
            return -EINVAL;
        }
        *slot = strchr(tok, '=') + 1;
    }
    if (steps && dur) {
        snprintf(out, n, "error: start takes steps= or duration=, not both");
        return -EINVAL;
    }
    int64_t period = 0, reps = 0;
    if ((every || count) && !dur && parse_repeat(steps, every, count, &period, &reps, out, n) < 0)
        return -EINVAL;
    if (period && g.tw.at) /* one repeat at a time: they would take each other's turns */
        return repeat_busy(out, n);
    if (run && !tb_ctl_run_name_ok(run)) {
        snprintf(out, n, "error: run=NAME needs 1..%d of A-Z a-z 0-9 . _ -, not starting with '.'", TB_CTL_RUN_MAX);
        return -EINVAL;
    }
    if (g.pend.kind) { /* one capture at a time */
        snprintf(out, n, "already capturing: waiting for steps %lld-%lld", (long long)g.pend.first,
                 (long long)g.pend.last);
        return -EBUSY;
    }
    int64_t cur = atomic_load(&next_step) - 1; /* the step running now (-1: none marked) */
    int rc;
    if (steps && strchr(steps, '-')) {
        char *end, *end2 = NULL;
        errno = 0;
        long long a = strtoll(steps, &end, 10), b = *end == '-' ? strtoll(end + 1, &end2, 10) : -1;
        if (errno || end == steps || *end != '-' || end2 == end + 1 || *end2 || a < 0 || b < a ||
            b - a >= 1000000) {
            snprintf(out, n, "error: steps=A-B needs 0 <= A <= B, at most 1000000 steps");
            return -EINVAL;
        }
        if (a <= cur) {
            snprintf(out, n, "error: step %lld has begun: this process is at step %lld", a, (long long)cur);
            return -EINVAL;
        }
        char trig[sizeof(g.cur.trigger)], rep[80];
        repeat_words(period, reps, rep, sizeof(rep));
        snprintf(trig, sizeof(trig), "socket steps=%lld-%lld%s", a, b, rep);
        rc = request_window(a, b, trig, run, period, reps);
        if (rc == 0)
            snprintf(out, n, "capture waiting: steps %lld-%lld%s (this process is at step %lld)", a, b, rep,
                     (long long)cur);
        return rc;
    } else if (steps) {
        char *end;
        errno = 0;
        long long k = strtoll(steps, &end, 10);
        if (errno || end == steps || *end || k < 1 || k > 1000000) {
            snprintf(out, n, "error: steps=N needs N in 1..1000000");
            return -EINVAL;
        }
        if (cur < 0 && g.state == TB_STATE_IDLE) {
            snprintf(out, n, "error: this process has not marked any step (use duration=S)");
            return -EINVAL;
        }
        if (period) { /* by number from the next step (or TBPROF_STEP_ROUNDUP's), so repeats are a+P.. */
            int64_t r = g.cfg.step_roundup, a = r > 0 ? (cur / r + 1) * r : cur + 1;
            char trig[sizeof(g.cur.trigger)], rep[80];
            repeat_words(period, reps, rep, sizeof(rep));
            snprintf(trig, sizeof(trig), "socket steps=%lld%s", k, rep);
            rc = request_window(a, a + k - 1, trig, run, period, reps);
            if (rc == 0)
                snprintf(out, n, "capture %s: steps %lld-%lld%s (this process is at step %lld)",
                         g.state == TB_STATE_IDLE ? "waiting" : "started", (long long)a, (long long)(a + k - 1), rep,
                         (long long)cur);
            return rc;
        }
        char trig[64];
        snprintf(trig, sizeof(trig), "socket steps=%lld", k);
        int64_t a = 0;
        rc = request_steps(k, trig, run, &a);
        if (rc == 0)
            snprintf(out, n, "capture started: %lld steps from step %lld", k, (long long)atomic_load(&next_step));
        if (rc == 1) {
            snprintf(out, n, "capture waiting: steps %lld-%lld (this process is at step %lld; TBPROF_STEP_ROUNDUP=%lld)",
                     (long long)a, (long long)(a + k - 1), (long long)cur, (long long)g.cfg.step_roundup);
            return 0;
        }
    } else {
        double s = 5.0;
        if (dur && (tb_parse_seconds(dur, &s) < 0 || s < TB_MIN_DURATION_S || s > 3600)) {
            snprintf(out, n, "error: duration=S needs S in [0.001, 3600] seconds (at least 1 ms)");
            return -EINVAL;
        }
        if (every || count) { /* again every T seconds, K in all */
            double t = 0;
            int64_t k = 0;
            if (!every || tb_parse_seconds(every, &t) < 0 || t <= s || t > 86400.0 * 365 ||
                (count && parse_count(count, &k) < 0)) {
                snprintf(out, n, "error: duration=S every=T [count=K] needs T seconds longer than S, K >= 1");
                return -EINVAL;
            }
            if (g.tw.at)
                return repeat_busy(out, n);
            rc = request_time_repeat(s, t, k, run);
            if (rc == 0) {
                char all[40] = "until stop";
                if (k)
                    snprintf(all, sizeof(all), "%lld in all", (long long)k);
                snprintf(out, n, "capture started: duration %g s, again every %g s (%s)", s, t, all);
            }
            return rc;
        }
        char trig[64];
        snprintf(trig, sizeof(trig), "socket duration=%gs", s);
        rc = request_time((int64_t)(s * 1e9), trig, -1);
        if (rc == 0)
            snprintf(out, n, "capture started: duration %g s", s);
    }
    if (rc == 0 && run && !steps) /* a time window (the steps requests took it above) */
        snprintf(g.cur.run, sizeof(g.cur.run), "%s", run);
    return rc;
}

/* Control socket requests (agent thread). */
static void follow_late_page(void);

void tb_agent_control(const char *line, char *out, size_t n, int *pass_fd)
{
    char cmd[32] = "", args[TB_CTL_LINE];
    out[0] = '\0';
    while (*line == ' ' || *line == '\t')
        line++;
    size_t len = strcspn(line, " \t\r");
    if (len >= sizeof(cmd)) {
        snprintf(out, n, "error: unknown request (" CTL_USAGE ")");
        return;
    }
    memcpy(cmd, line, len);
    snprintf(args, sizeof(args), "%s", line + len);
    if (!strcmp(cmd, "status")) {
        pthread_mutex_lock(&g.lock);
        const char *last = tb_agent_last_profile();
        char waiting[96] = "";
        if (g.pend.kind)
            snprintf(waiting, sizeof(waiting), " waiting=steps_%lld-%lld%s", (long long)g.pend.first,
                     (long long)g.pend.last, g.pend.period ? "_repeating" : "");
        else if (g.tw.at && g.tw.socket)
            snprintf(waiting, sizeof(waiting), " waiting=time_every_%gs", g.tw.every_s);
        snprintf(out, n, "state=%s step=%lld captures=%u last=%s%s%s%s",
                 g.writing && g.state == TB_STATE_IDLE ? "writing" : tb_state_name(g.state),
                 (long long)atomic_load(&next_step) - 1, g.ncaptures, last[0] ? last : "-",
                 g.state != TB_STATE_IDLE ? " trigger=" : "", g.state != TB_STATE_IDLE ? g.cur.trigger : "", waiting);
        pthread_mutex_unlock(&g.lock);
        return;
    }
    if (!strcmp(cmd, "follow")) {
        /* an exec()ed child (a multiprocessing spawn or forkserver worker)
         * follows this process's captures: the page's fd (follow.h) */
        pthread_mutex_lock(&g.lock);
        int made = 0, fd = g.disabled ? -EPERM : tb_follow_share(g.cfg.children, &made);
        if (made)
            follow_late_page(); /* (a capture under way: they join it) */
        pthread_mutex_unlock(&g.lock);
        static atomic_int warned;
        if (fd >= 0) {
            *pass_fd = fd;
            snprintf(out, n, "follow page=%d", (int)getpid());
            return;
        }
        const char *why = fd == -EPERM   ? "TBPROF_CHILDREN is off here"
                          : fd == -EBADF ? "the job closed tbprof's page fd (it closes fds it did not open)"
                                         : strerror(-fd);
        if (fd != -EPERM && !atomic_exchange(&warned, 1)) /* (once: a worker asks each epoch) */
            tb_warn("workers started from now on with multiprocessing's spawn or forkserver method will not "
                    "capture with this process: %s", why);
        snprintf(out, n, "error: %s", why);
        return;
    }
    if (!strcmp(cmd, "stop")) {
        pthread_mutex_lock(&g.lock);
        int timerep = g.tw.at && g.tw.socket; /* a socket's time repeat ends here (TBPROF_EVERY's does not) */
        if (timerep)
            g.tw.at = 0;
        int repeats = timerep || (g.pend.kind && g.pend.period);
        int waited = cancel_waiting();
        if (waited)
            snprintf(out, n, "capture cancelled: it was waiting for steps %lld-%lld%s", (long long)g.pend.first,
                     (long long)g.pend.last, repeats ? " and its repeats" : "");
        pthread_mutex_unlock(&g.lock);
        if (waited)
            return;
        if (tb_agent_stop() == 0)
            snprintf(out, n, "capture stopping%s", repeats ? "; its repeats cancelled" : "");
        else if (timerep)
            snprintf(out, n, "capture cancelled: the time window's repeats");
        else
            snprintf(out, n, "error: not capturing");
        return;
    }
    if (strcmp(cmd, "start")) {
        snprintf(out, n, "error: unknown request (" CTL_USAGE ")");
        return;
    }
    pthread_mutex_lock(&g.lock);
    int rc = leaving_locked() ? -ESHUTDOWN : control_start(args, out, n);
    pthread_mutex_unlock(&g.lock);
    if (rc == -ESHUTDOWN) {
        snprintf(out, n, "error: the process is exiting: no new capture");
    } else if (rc == -EBUSY) {
        if (!out[0])
            snprintf(out, n, "already capturing");
    } else if (rc < 0 && rc != -EINVAL)
        snprintf(out, n, "error: %s", strerror(-rc));
    /* the agent thread runs machine() right after answering */
}

int tb_agent_leaving(void)
{
    pthread_mutex_lock(&g.lock);
    int v = g.exiting || g.term_pending;
    pthread_mutex_unlock(&g.lock);
    return v;
}

/* TBPROF_STEPS or TBPROF_DELAY was set and the process ends without having
 * captured: say why once, instead of leaving an empty logdir and no word (it
 * stopped short of the window, or marked no step at all). Only in a process
 * that used CUDA, the training process: launchers, tools, compile workers
 * and helper programs of the same job inherit the variables, use no GPU,
 * and stay quiet, as do fork()ed children (data-loader workers). */
static void windows_never_reached(void)
{
    static atomic_int said;
    pthread_mutex_lock(&g.lock);
    /* (ARMED: a step window waits for its first step, after its lead-in) */
    int quiet = g.ncaptures || g.is_child || (g.state != TB_STATE_IDLE && g.state != TB_STATE_ARMED) || g.writing;
    /* left out by TBPROF_RANKS: said at start-up (info); aloud only for a
     * process that used the GPU with no rank variable at all (a job run
     * without a launcher, whose TBPROF_RANKS=0 meant it) */
    int unranked = g.rank_out && g.names.global_rank < 0 && g.cfg.nranks >= 0 &&
                   (g.cfg.nwindows || g.cfg.duration_s > 0);
    quiet |= g.rank_out && !unranked;
    int nwin = g.cfg.nwindows;
    int64_t tw_at = !g.tw.socket && !g.tw.k ? g.tw.at : 0; /* the env time window's first, not begun */
    double from_s = g.tw.from_s, dur_s = g.tw.dur_s;
    pthread_mutex_unlock(&g.lock);
    if (quiet || (!nwin && !tw_at && !unranked) || atomic_exchange(&said, 1))
        return;
    if (unranked) {
        if (cuda_loaded(CUDA_DRIVER))
            tb_warn("TBPROF_RANKS: this process used the GPU but has no rank variable (RANK, "
                    "OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK, SLURM_PROCID), so it took none of the "
                    "environment's capture windows; set RANK, or unset TBPROF_RANKS");
        return;
    }
    int64_t cur = atomic_load(&next_step) - 1;
    const tb_window *w = &g.cfg.windows[0];
    if (!tw_at && cur >= w->first)
        return;
    if (!cuda_loaded(CUDA_DRIVER))
        return;
    if (tw_at) {
        tb_warn("%s %gs: the process ended %.1f s after start-up, before the window began; nothing captured",
                from_s > 0 ? "TBPROF_DELAY" : "TBPROF_DURATION", from_s > 0 ? from_s : dur_s,
                from_s - (double)(tw_at - tb_mono_ns()) / 1e9);
        return;
    }
    if (cur >= 0) {
        tb_warn("TBPROF_STEPS %lld-%lld: the process ended at step %lld, before the window; nothing captured",
                (long long)w->first, (long long)w->last, (long long)cur);
        return;
    }
    tb_warn("TBPROF_STEPS %lld-%lld: no step was marked in this process, so nothing was captured. Steps come "
            "from tbprof.step()/tbprof_step(), the PyTorch, JAX and TensorFlow hooks (Python with "
            "libtbprof.so preloaded, or tbprof run), cudaProfilerStart/Stop, or NVTX ranges named by "
            "TBPROF_NVTX_STEP; or capture by time (TBPROF_DURATION) or from outside (tbprof trigger PID)",
            (long long)w->first, (long long)w->last);
}

void tb_agent_exit(void)
{
    if (!g.inited || g.disabled)
        return;
    windows_never_reached();
    pthread_mutex_lock(&g.lock);
    g.exiting = 1;
    /* the atexit hook and the destructor both come here: one bounded wait
     * (and one warning) in all */
    if (!g.thread_running || is_agent_thread || g.exit_gave_up) {
        pthread_mutex_unlock(&g.lock);
        return;
    }
    int busy = g.state != TB_STATE_IDLE || g.writing;
    if (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING)
        request_stop(tb_mono_ns());
    pthread_mutex_unlock(&g.lock);
    if (!busy)
        return;
    wake();
    struct timespec ts = mono_in((int64_t)TERM_FLUSH_MS * 1000000);
    pthread_mutex_lock(&g.lock);
    while (g.state != TB_STATE_IDLE || g.writing)
        if (pthread_cond_timedwait(&g.cond, &g.lock, &ts) == ETIMEDOUT) {
            g.exit_gave_up = 1;
            tb_warn("exit: the profile was not finished within %d ms; not written", TERM_FLUSH_MS);
            break;
        }
    pthread_mutex_unlock(&g.lock);
}

void tb_agent_follow_exit(void)
{
    /* maybe in a signal handler (a PyTorch worker's SIGTERM handler calls
     * _exit) on a thread that holds g.lock: atomics, a byte down the pipe
     * and sleeps only */
    atomic_store(&follow_leaving, 1);
    int fd = sig_fd_w;
    if (atomic_load(&thread_up) &&
        (atomic_load(&a_state) != TB_STATE_IDLE || atomic_load(&a_writing)) && fd >= 0 &&
        write(fd, "F", 1) == 1) { /* the agent thread stops the capture (on_signal_byte) */
        struct timespec ms = {0, 1000000};
        for (int i = 0; i < FOLLOW_EXIT_MS; i++) {
            nanosleep(&ms, NULL);
            if (atomic_load(&a_state) == TB_STATE_IDLE && !atomic_load(&a_writing))
                break;
        }
    }
    tb_pytramp_dying(); /* no atexit runs: our perf map goes now */
}

/* This process's page for its children was made just now, at its first
 * fork(), with a capture under way (tbprof_start, then a pool of workers):
 * the capture goes on it as the agent thread would have put it (machine),
 * so the children forked now join it. Lock held. */
static void follow_late_page(void)
{
    int on = (g.state == TB_STATE_ARMED || g.state == TB_STATE_CAPTURING) &&
             (g.sources_starting || g.sources_started) && !g.stop_req;
    if (!on || g.cur.follow || g.cur.armed_pub || !(g.cur.armed_pub = tb_follow_arm()))
        return;
    if (!follow_begun())
        wake(); /* the agent thread names it and tells them (machine) */
}

void tb_agent_fork_prepare(void)
{
    pthread_mutex_lock(&g.lock);
    if (g.inited && !g.disabled && tb_follow_prepare_fork(g.cfg.children))
        follow_late_page();
    atomic_store(&in_fork, 1);
}
void tb_agent_fork_parent(void)
{
    atomic_store(&in_fork, 0);
    pthread_mutex_unlock(&g.lock);
}

void tb_agent_fork_child(void)
{
    /* one thread here, and it held g.lock across fork(): start over */
    pthread_mutex_init(&g.lock, NULL);
    atomic_store(&in_fork, 0);
    tb_stall_fork_child();
    tb_cond_init_monotonic(&g.cond);
    sig_fd_w = -1;
    /* the parent's pipes and socket, closed where the numbers are still
     * ours: a job that closed every fd it did not open may have its own
     * files there now (a launcher that then forks its workers) */
    if (term_fd_w >= 0) { /* the watchdog thread was the parent's */
        int w = term_fd_w;
        term_fd_w = -1;
        if (tb_fd_id_is(w, &term_id[1]))
            close(w);
        if (tb_fd_id_is(term_fd_r, &term_id[0]))
            close(term_fd_r);
        term_fd_r = -1;
    }
    int *fds[] = {&g.wake_fd[0], &g.wake_fd[1], &g.listen_fd};
    const tb_fd_id *ids[] = {&wake_id[0], &wake_id[1], &listen_id};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (*fds[i] >= 0) {
            if (tb_fd_id_is(*fds[i], ids[i]))
                close(*fds[i]);
            *fds[i] = -1;
        }
    g.thread_running = 0;
    atomic_store(&thread_up, 0);
    atomic_store(&app_threaded, 0);
    g.is_child = 1;
    steps_at_fork = atomic_load(&next_step);
    tb_follow_fork_child();
    for (int i = 0; i < g.nsrc; i++) {
        if (g.src[i].s && g.src[i].s->atfork_child)
            g.src[i].s->atfork_child(g.src[i].s->ctx);
        g.src[i].started = 0;
        g.src[i].waiting = 0;
    }
    memset(&hooks, 0, sizeof(hooks)); /* (the parent's stay registered: they return at once here) */
    if (g.term_installed)
        term_uninstall();
    set_stop_req(0);
    g.sources_started = 0;
    g.sources_starting = 0;
    g.nrec = 0;
    g.tw.at = 0;
    g.sig_check_at = 0; /* no agent thread here */
    g.pend.kind = 0;
    g.term_pending = 0;
    g.ncaptures = 0;
    g.names.last_base[0] = '\0';
    g.writing = 0;
    atomic_store(&a_writing, 0);
    g.begin_settling = 0;
    atomic_store(&last_idx, -1);
    set_state(TB_STATE_IDLE);
    update_slow_from();
}
