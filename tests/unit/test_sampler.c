/* test_sampler.c - the CPU source driven directly (start/poll/stop/collect),
 * as the agent thread drives it, on threads with a known split of CPU time:
 * the merged spans must give that split back, nest properly, stay inside the
 * capture window, and include a thread that was created and ended during the
 * capture. Skips (passes) where perf_event_open is refused. */
#include <errno.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "host.h"
#include "sampler.h"
#include "stats.h"
#include "tap.h"
#include "trace.h"

static atomic_int stop_flag;
static __thread volatile double sink; /* per thread: no data race between workers */
static __thread volatile long burns;

__attribute__((noinline, noipa)) static void store(double x) { sink = x; }

/* Same loop body in both, so equal iteration counts mean equal CPU time.
 * The call at the end makes them non-leaf functions, which gcc gives a
 * frame pointer (leaf functions get none: -momit-leaf-frame-pointer). */
#define BURN_BODY(k)                                                       \
    double x = sink;                                                       \
    for (long i = 0; i < iters; i++)                                       \
        x = x * 1.0000001 + (k);                                           \
    store(x);                                                              \
    burns++; /* after the call: no tail call */

__attribute__((noinline, noipa)) static void burn_a(long iters) { BURN_BODY(1.0) }
__attribute__((noinline, noipa)) static void burn_b(long iters) { BURN_BODY(2.0) }

#define UNIT 100000 /* a round (10 units) lasts a few ms: longer than the sampling period */

__attribute__((noinline, noipa)) static void *worker(void *arg)
{
    atomic_int *own_stop = arg;
    while (!atomic_load(&stop_flag) && !(own_stop && atomic_load(own_stop))) {
        burn_a(6 * UNIT);
        burn_b(4 * UNIT);
    }
    return NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t stat_u64(const tb_line *l, const tb_plane *p, const tb_event *e, const char *name)
{
    const tb_stat *s = tb_event_find_stat(p, l, e, name);
    return s ? s->v.u : 0;
}

static int64_t plane_stat(const tb_plane *p, const char *name, int *found)
{
    for (size_t i = 0; i < p->nstats; i++)
        if (strcmp(tb_plane_stat_name(p, p->stats[i].meta), name) == 0) {
            *found = 1;
            return (int64_t)p->stats[i].v.u;
        }
    *found = 0;
    return 0;
}

typedef struct tally {
    uint64_t a, b, self_total, spans, bad_nest, out_of_window;
    int a_under_worker; /* a burn_a span inside a worker span */
} tally;

/* Walk one line: spans sorted (start asc, longer first) must nest. */
static void walk_line(const tb_plane *p, const tb_line *l, int64_t lo, int64_t hi, tally *t)
{
    const tb_event *stack[256];
    int depth = 0;
    for (size_t i = 0; i < l->nevents; i++) {
        const tb_event *e = &l->events[i];
        const char *name = tb_plane_event_name(p, e->meta);
        const tb_meta *m = &p->event_meta[e->meta];
        if (m->category != TB_CAT_CPU_SAMPLE)
            continue;
        t->spans++;
        if (e->start_ns < lo || e->start_ns + e->dur_ns > hi)
            t->out_of_window++;
        while (depth > 0 && e->start_ns >= stack[depth - 1]->start_ns + stack[depth - 1]->dur_ns)
            depth--;
        if (depth > 0 && e->start_ns + e->dur_ns > stack[depth - 1]->start_ns + stack[depth - 1]->dur_ns)
            t->bad_nest++;
        int under_worker = 0;
        for (int d = 0; d < depth; d++)
            if (strcmp(tb_plane_event_name(p, stack[d]->meta), "worker") == 0)
                under_worker = 1;
        uint64_t samples = stat_u64(l, p, e, TB_ST_CPU_SPAN_SAMPLES);
        t->self_total += stat_u64(l, p, e, TB_ST_CPU_SPAN_SELF);
        if (strcmp(name, "burn_a") == 0) {
            t->a += samples;
            t->a_under_worker |= under_worker;
        } else if (strcmp(name, "burn_b") == 0) {
            t->b += samples;
        }
        if (depth < 256)
            stack[depth++] = e;
    }
}

static void run_mode(int mode)
{
    const char *mname = mode == TB_CPU_FP ? "fp" : "stackcopy";
    tb_source *src = tb_cpu_source();
    atomic_store(&stop_flag, 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    sleep_ms(50);

    tb_clock_calibrate();
    tb_capture_info info = {.begin_ns = tb_real_ns(), .buffer_bytes = 32u << 20, .cpu_hz = 1000, .cpu_mode = mode};
    const char *why = NULL;
    int rc = src->start(src->ctx, &info, &why);
    if (rc < 0) {
        atomic_store(&stop_flag, 1);
        for (int i = 0; i < 3; i++)
            pthread_join(th[i], NULL);
        CHECKF(rc == -EACCES || rc == -EPERM || rc == -ENOSYS || rc == -ENOENT || rc == -EOPNOTSUPP ||
                   rc == -ENODEV,
               "start failed with an unexpected error %d (%s)", rc, why ? why : "");
        CHECKF(why && *why, "no reason given");
        printf("# skip %s: %s\n", mname, why ? why : "?");
        return;
    }
    int64_t t0 = tb_real_ns();
    /* a thread created and ended during the capture */
    atomic_int late_stop = 0;
    pthread_t late;
    pid_t late_tid = 0;
    for (int ms = 0; ms < 1500; ms += 5) {
        if (ms == 300)
            pthread_create(&late, NULL, worker, &late_stop);
        if (ms == 900) {
            atomic_store(&late_stop, 1);
            pthread_join(late, NULL);
        }
        sleep_ms(5);
        src->poll(src->ctx);
    }
    (void)late_tid;
    src->stop(src->ctx);
    int64_t t1 = tb_real_ns();
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);

    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_space_sort(space);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    CHECKF(p != NULL, "%s: no host plane", mname);
    if (!p) {
        tb_space_free(space);
        return;
    }
    int found;
    int64_t nsamples = plane_stat(p, TB_ST_SAMPLES, &found);
    CHECKF(found, "%s: no %s stat", mname, TB_ST_SAMPLES);
    int64_t lost = plane_stat(p, TB_ST_SAMPLES_LOST, &found);
    CHECKF(found, "%s: no %s stat", mname, TB_ST_SAMPLES_LOST);
    int64_t unwind_failed = plane_stat(p, TB_ST_UNWIND_FAILED, &found);
    CHECKF(found == (mode == TB_CPU_STACKCOPY), "%s: unwind-failure stat present=%d", mname, found);

    tally total = {0};
    int lines_with_work = 0;
    uint64_t line_ab[64] = {0}, stray = 0; /* burn samples per line; on lines with a trace of them */
    for (size_t i = 0; i < p->nlines; i++) {
        tally t = {0};
        /* the window is [the capture's begin, the return from stop]: spans
         * start no earlier than info.begin_ns (taken before start(), which
         * can take long under load: t0 is no bound) and end at a sample
         * taken before stop() returned (1 ms for clock conversion) */
        walk_line(p, p->lines[i], info.begin_ns, t1 + 1000000, &t);
        if (i < 64)
            line_ab[i] = t.a + t.b;
        total.a += t.a;
        total.b += t.b;
        total.self_total += t.self_total;
        total.spans += t.spans;
        total.bad_nest += t.bad_nest;
        total.out_of_window += t.out_of_window;
        total.a_under_worker |= t.a_under_worker;
    }
    /* a thread with work holds a real part of the burn samples: under TSan a
     * stackcopy unwind of the main thread (deep in the runtime, which keeps
     * other threads' PCs on its stack) can rarely yield a bogus burn frame */
    for (size_t i = 0; i < p->nlines && i < 64; i++) {
        if (line_ab[i] * 50 >= total.a + total.b && line_ab[i] > 0)
            lines_with_work++;
        else
            stray += line_ab[i];
    }
    double share = total.a + total.b ? (double)total.a / (double)(total.a + total.b) : 0;
    printf("# %s: start took %.1f ms; %lld samples, %lld lost, %lld unwind failures, %llu spans, burn_a %llu "
           "burn_b %llu (%.1f%% a), %d threads with work, %llu burn samples elsewhere\n",
           mname, (double)(t0 - info.begin_ns) / 1e6, (long long)nsamples, (long long)lost, (long long)unwind_failed, (unsigned long long)total.spans,
           (unsigned long long)total.a, (unsigned long long)total.b, share * 100, lines_with_work,
           (unsigned long long)stray);
    /* 1.5 s of up to 4 busy threads on at least one core at 1 kHz */
    CHECKF(nsamples > 300, "%s: only %lld samples", mname, (long long)nsamples);
    CHECKF(total.self_total == (uint64_t)nsamples, "%s: self samples %llu != samples %lld", mname,
           (unsigned long long)total.self_total, (long long)nsamples);
    CHECKF(total.a + total.b > (uint64_t)nsamples * 8 / 10, "%s: burn_a+burn_b %llu of %lld samples", mname,
           (unsigned long long)(total.a + total.b), (long long)nsamples);
    CHECKF(share > 0.55 && share < 0.65, "%s: burn_a share %.3f, expected 0.60 +- 0.05", mname, share);
    CHECKF(total.bad_nest == 0, "%s: %llu spans overlap their parent's end", mname,
           (unsigned long long)total.bad_nest);
    CHECKF(total.out_of_window == 0, "%s: %llu spans outside the capture window", mname,
           (unsigned long long)total.out_of_window);
    CHECKF(total.a_under_worker, "%s: burn_a never seen under its caller worker()", mname);
    /* 3 workers + the late one: the late thread was found by a rescan */
    CHECKF(lines_with_work == 4, "%s: %d threads with burn samples, expected 4", mname, lines_with_work);
    CHECKF(stray * 100 <= total.a + total.b, "%s: %llu burn samples on threads that never ran them", mname,
           (unsigned long long)stray);
    if (mode == TB_CPU_STACKCOPY)
        CHECKF(unwind_failed * 10 < nsamples, "%s: %lld of %lld unwinds failed", mname, (long long)unwind_failed,
               (long long)nsamples);
    tb_space_free(space);
}

static void test_refuses_second_start(void)
{
    tb_source *src = tb_cpu_source();
    tb_capture_info info = {.buffer_bytes = 4u << 20, .cpu_hz = 100, .cpu_mode = TB_CPU_FP};
    const char *why = NULL;
    if (src->start(src->ctx, &info, &why) < 0)
        return;
    const char *why2 = NULL;
    CHECK_EQ_I(src->start(src->ctx, &info, &why2), -EBUSY);
    CHECK(why2 != NULL);
    src->stop(src->ctx);
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    /* collect twice: nothing left, nothing added */
    size_t n = tb_space_event_count(space);
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    CHECK_EQ_I(tb_space_event_count(space), n);
    tb_space_free(space);
}

/* Descriptors open in this process. */
static int count_fds(void)
{
    int n = 0;
    char path[64];
    for (int fd = 0; fd < 4096; fd++) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        n += access(path, F_OK) == 0;
    }
    return n;
}

static void *idle_thread(void *arg)
{
    atomic_int *stop = arg;
    while (!atomic_load(stop))
        sleep_ms(2);
    return NULL;
}

/* More threads than the descriptor limit lets us sample (RLIMIT_NOFILE/4):
 * the rest are counted once each, however many rescans see them (every
 * poll here: no pthread_create hook), and not tried again at each one. */
static void test_unsampled_counted_once(void)
{
    struct rlimit was;
    if (getrlimit(RLIMIT_NOFILE, &was) != 0)
        return;
    enum { NTH = 12 };
    atomic_int stop = 0;
    pthread_t th[NTH];
    for (int i = 0; i < NTH; i++)
        pthread_create(&th[i], NULL, idle_thread, &stop);
    struct rlimit low = {(rlim_t)count_fds() + 16, was.rlim_max}; /* 4 threads sampled */
    setrlimit(RLIMIT_NOFILE, &low);
    tb_source *src = tb_cpu_source();
    tb_capture_info info = {.buffer_bytes = 8u << 20, .cpu_hz = 100, .cpu_mode = TB_CPU_FP};
    const char *why = NULL;
    int rc = src->start(src->ctx, &info, &why);
    setrlimit(RLIMIT_NOFILE, &was);
    if (rc == 0) {
        for (int i = 0; i < 30; i++) {
            sleep_ms(12); /* past the 10 ms rescan period */
            src->poll(src->ctx);
        }
        src->stop(src->ctx);
        tb_space *space = tb_space_new();
        CHECK_EQ_I(src->collect(src->ctx, space), 0);
        tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
        int found = 0, found2 = 0;
        int64_t sampled = p ? plane_stat(p, TB_ST_CPU_THREADS, &found) : 0;
        int64_t unsampled = p ? plane_stat(p, TB_ST_CPU_THREADS_UNSAMPLED, &found2) : 0;
        CHECKF(found && sampled == 4, "%lld threads sampled, expected 4", (long long)sampled);
        CHECKF(found2 && unsampled >= NTH + 1 - 4 && unsampled <= NTH + 1 - 4 + 2,
               "%lld threads unsampled, expected %d (of %d threads)", (long long)unsampled, NTH + 1 - 4, NTH + 1);
        tb_space_free(space);
    } else {
        printf("# skip unsampled: %s\n", why ? why : "?");
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < NTH; i++)
        pthread_join(th[i], NULL);
}

/* The first ring buffer mapped in this process (/proc/self/maps names
 * perf_event mappings): 0 when none. */
static uintptr_t perf_ring(size_t *len)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    uintptr_t a = 0, b = 0;
    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, "perf_event") && sscanf(line, "%lx-%lx", &a, &b) == 2)
            break;
        else
            a = b = 0;
    if (f)
        fclose(f);
    *len = b - a;
    return a;
}

static int perf_fds(void)
{
    int n = 0;
    char path[64], target[128];
    for (int fd = 0; fd < 1024; fd++) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t k = readlink(path, target, sizeof(target) - 1);
        if (k > 0) {
            target[k] = '\0';
            n += strstr(target, "perf_event") != NULL;
        }
    }
    return n;
}

/* A 100 Hz frame-pointer capture of the CPU source; 0, or -1 after
 * printing why it is skipped (what: the test's name) */
static int fp_started; /* start_fp worked once: perf_event_open works here */
static int start_fp(tb_source *src, const char *what)
{
    tb_capture_info info = {.buffer_bytes = 8u << 20, .cpu_hz = 100, .cpu_mode = TB_CPU_FP};
    const char *why = NULL;
    if (src->start(src->ctx, &info, &why) == 0) {
        fp_started = 1;
        return 0;
    }
    if (what)
        printf("# skip %s: %s\n", what, why ? why : "?");
    return -1;
}

/* stop, collect into a space thrown away; collect's result */
static int stop_and_collect(tb_source *src)
{
    src->stop(src->ctx);
    tb_space *space = tb_space_new();
    int r = src->collect(src->ctx, space);
    tb_space_free(space);
    return r;
}

/* A child forked during a capture: its copy of the source lets go of the
 * parent's events (no fd inherited) and never unmaps the addresses of the
 * parent's rings, which the kernel does not copy into a child: by the time
 * the fork handler runs, something else of the child's may be mapped there. */
static void test_fork_child(void)
{
    tb_source *src = tb_cpu_source();
    if (start_fp(src, "fork") < 0)
        return;
    size_t len = 0;
    uintptr_t ring = perf_ring(&len);
    CHECKF(ring != 0 && perf_fds() > 0, "no ring buffer or event found in the parent");
    pid_t pid = ring ? fork() : -1;
    if (pid == 0) {
        /* memory of the child's own where the parent's ring is */
        void *m = mmap((void *)ring, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
        if (m != (void *)ring)
            _exit(3);
        memset(m, 0x5a, len);
        src->atfork_child(src->ctx);
        int fds = perf_fds();
        volatile unsigned char *v = m;
        _exit(v[0] == 0x5a && v[len - 1] == 0x5a ? (fds ? 2 : 0) : 1); /* faults if unmapped */
    }
    if (pid > 0) {
        int st = 0;
        waitpid(pid, &st, 0);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "fork child: %s %d (1: its memory changed, 2: an event fd left open, 3: the ring's address "
               "was mapped in the child)",
               WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
    CHECK_EQ_I(stop_and_collect(src), 0);
}

/* A fork while the agent thread changes the capture (opens events, polls,
 * collects, frees it): the child closes its copies of the events and frees
 * nothing of the parent's capture, which may be half-changed (freeing it
 * freed blocks twice: the child died of SIGABRT). */
static atomic_int cycling;

static void *capture_cycles(void *arg)
{
    tb_source *src = arg;
    while (atomic_load(&cycling) && start_fp(src, NULL) == 0) {
        src->poll(src->ctx);
        stop_and_collect(src);
    }
    return NULL;
}

static void test_fork_while_the_agent_works(void)
{
    tb_source *src = tb_cpu_source();
    if (start_fp(src, "fork while working") < 0)
        return;
    stop_and_collect(src);
    enum { NTH = 8, FORKS = 300 };
    atomic_int stop = 0;
    pthread_t th[NTH], agent;
    for (int i = 0; i < NTH; i++)
        pthread_create(&th[i], NULL, idle_thread, &stop);
    atomic_store(&cycling, 1);
    pthread_create(&agent, NULL, capture_cycles, src);
    int died = 0, sig = 0;
    for (int i = 0; i < FORKS; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            src->atfork_child(src->ctx);
            _exit(0);
        }
        int st = 0;
        if (pid > 0 && waitpid(pid, &st, 0) == pid && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
            died++;
            sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
        }
    }
    atomic_store(&cycling, 0);
    pthread_join(agent, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTH; i++)
        pthread_join(th[i], NULL);
    CHECKF(died == 0, "%d of %d fork children died (last by signal %d)", died, FORKS, sig);
}

/* A job that already uses most of its descriptors keeps most of the ones
 * it has left while a capture runs: events are opened for at most a
 * quarter of the free descriptors, not of the limit. */
static void test_leaves_free_fds(void)
{
    struct rlimit was;
    if (getrlimit(RLIMIT_NOFILE, &was) != 0)
        return;
    enum { NTH = 12 };
    atomic_int stop = 0;
    pthread_t th[NTH];
    for (int i = 0; i < NTH; i++)
        pthread_create(&th[i], NULL, idle_thread, &stop);
    /* the job's descriptors: 44 of 64 in use, 20 free */
    int held[64], nheld = 0;
    struct rlimit low = {64, was.rlim_max};
    setrlimit(RLIMIT_NOFILE, &low);
    while (count_fds() < 44 && nheld < 64)
        held[nheld++] = dup(0);
    int free_before = 64 - count_fds();
    tb_source *src = tb_cpu_source();
    if (start_fp(src, "free fds") == 0) {
        int free_during = 64 - count_fds();
        CHECKF(free_during * 4 >= free_before * 3, "the job has %d descriptors free during the capture, %d before",
               free_during, free_before);
        CHECK_EQ_I(stop_and_collect(src), 0);
    }
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    setrlimit(RLIMIT_NOFILE, &was);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTH; i++)
        pthread_join(th[i], NULL);
}

/* Threads created once the job has run out of descriptors (EMFILE at
 * perf_event_open, mid-capture): counted as unsampled, each once. */
static void test_emfile_midway(void)
{
    struct rlimit was;
    if (getrlimit(RLIMIT_NOFILE, &was) != 0)
        return;
    tb_source *src = tb_cpu_source();
    if (start_fp(src, "emfile") < 0)
        return;
    src->poll(src->ctx);
    enum { NTH = 3 };
    atomic_int stop = 0;
    pthread_t th[NTH];
    /* no descriptor free from here on but the lowest (the rescan's own
     * opendir takes it) */
    int lowest = dup(0);
    close(lowest);
    struct rlimit low = {(rlim_t)lowest + 1, was.rlim_max};
    setrlimit(RLIMIT_NOFILE, &low);
    for (int i = 0; i < NTH; i++)
        pthread_create(&th[i], NULL, idle_thread, &stop);
    for (int i = 0; i < 20; i++) {
        sleep_ms(12);
        src->poll(src->ctx);
    }
    setrlimit(RLIMIT_NOFILE, &was);
    src->stop(src->ctx);
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    int found = 0;
    int64_t unsampled = p ? plane_stat(p, TB_ST_CPU_THREADS_UNSAMPLED, &found) : 0;
    int found3 = 0;
    int64_t sampled = p ? plane_stat(p, TB_ST_CPU_THREADS, &found3) : 0;
    CHECKF(found && unsampled == NTH, "%lld threads unsampled, expected %d (%lld sampled)", (long long)unsampled, NTH, (long long)sampled);
    tb_space_free(space);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTH; i++)
        pthread_join(th[i], NULL);
}

/* A job with (almost) no descriptor free: no event at all, and the reason
 * says so rather than an errno nothing returned. */
static void test_no_fds_free(void)
{
    struct rlimit was;
    if (getrlimit(RLIMIT_NOFILE, &was) != 0)
        return;
    struct rlimit low = {(rlim_t)count_fds() + 2, was.rlim_max};
    setrlimit(RLIMIT_NOFILE, &low);
    tb_source *src = tb_cpu_source();
    tb_capture_info info = {.buffer_bytes = 8u << 20, .cpu_hz = 100, .cpu_mode = TB_CPU_FP};
    const char *why = NULL;
    int rc = src->start(src->ctx, &info, &why);
    setrlimit(RLIMIT_NOFILE, &was);
    if (rc == 0) {
        CHECKF(0, "started with no descriptor to spare");
        stop_and_collect(src);
        return;
    }
    CHECKF(why && strstr(why, "no thread sampled") && strstr(why, "descriptors free"), "why: %s", why ? why : "(null)");
}

/* More samples than a poll drains (a short poll budget standing in for many
 * busy threads at a high rate): each poll drains in turn from the thread
 * after the one the last poll stopped in, so the samples lost to full rings
 * are spread over the threads. Always from the first thread, the last in
 * line were drained only at stop and kept only what their rings held. */
static void *tid_worker(void *arg)
{
    *(volatile pid_t *)arg = (pid_t)syscall(SYS_gettid);
    return worker(NULL);
}

static void test_drain_takes_turns(void)
{
    enum { NW = 4 };
    atomic_store(&stop_flag, 0);
    pthread_t th[NW];
    volatile pid_t tids[NW] = {0};
    for (int i = 0; i < NW; i++)
        pthread_create(&th[i], NULL, tid_worker, (void *)&tids[i]);
    sleep_ms(50);
    tb_source *src = tb_cpu_source();
    tb_clock_calibrate();
    /* 1 MiB: 64 KiB rings (several hundred samples each); poll_work_ns 1:
     * a poll stops after its first 32 records once one ring has that many */
    tb_capture_info info = {.begin_ns = tb_real_ns(), .buffer_bytes = 1u << 20, .cpu_hz = 4000,
                            .cpu_mode = TB_CPU_FP, .poll_work_ns = 1};
    const char *why = NULL;
    int rc = src->start(src->ctx, &info, &why);
    if (rc == 0) {
        /* 4 kHz, 100 ms between polls: far more than 32 samples of a busy
         * worker per poll, and more than a ring holds in the 2 s, even where
         * 4 workers share 2 busy cores */
        for (int ms = 0; ms < 2000; ms += 100) {
            sleep_ms(100);
            src->poll(src->ctx);
        }
        src->stop(src->ctx);
    }
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < NW; i++)
        pthread_join(th[i], NULL);
    if (rc < 0) {
        printf("# skip drain turns: %s\n", why ? why : "?");
        return;
    }
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_space_sort(space);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    uint64_t got[NW] = {0}, lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; p && i < p->nlines; i++) {
        tally t = {0};
        walk_line(p, p->lines[i], INT64_MIN, INT64_MAX, &t);
        for (int w = 0; w < NW; w++)
            if (p->lines[i]->id == (int64_t)tids[w])
                got[w] = t.self_total;
    }
    for (int w = 0; w < NW; w++) {
        lo = got[w] < lo ? got[w] : lo;
        hi = got[w] > hi ? got[w] : hi;
    }
    printf("# drain turns: worker samples %llu %llu %llu %llu\n", (unsigned long long)got[0],
           (unsigned long long)got[1], (unsigned long long)got[2], (unsigned long long)got[3]);
    CHECKF(hi > 0 && lo * 10 >= hi * 7, "workers' samples %llu..%llu: not drained in turn", (unsigned long long)lo,
           (unsigned long long)hi);
    tb_space_free(space);
}

/* Threads renamed after their sampler opened, which end before the
 * capture stops and before their name is read again (10 ms after it was
 * found; no poll here until they are gone): one renames itself, the other
 * is renamed by the main thread. Their lines must carry the new names, not
 * the ones read when the capture found them ("renamed_late" came out as
 * the process's name under TSan, where threads start slowly). */
static atomic_int rename_go;

typedef struct {
    atomic_int tid;
    int self; /* renames itself, or is renamed by the main thread */
} renamed;

static void *renamed_thread(void *arg)
{
    renamed *r = arg;
    atomic_store(&r->tid, (int)syscall(SYS_gettid));
    while (!atomic_load(&rename_go))
        sleep_ms(1);
    if (r->self)
        pthread_setname_np(pthread_self(), "self_renamed");
    burn_a(40 * UNIT); /* sampled: a line of its own */
    return NULL;
}

static void test_names_after_renames(void)
{
    pthread_t a, b;
    renamed ra = {.self = 1}, rb = {.self = 0};
    pthread_create(&a, NULL, renamed_thread, &ra);
    pthread_create(&b, NULL, renamed_thread, &rb);
    pthread_setname_np(a, "first_a");
    pthread_setname_np(b, "first_b");
    while (!atomic_load(&ra.tid) || !atomic_load(&rb.tid))
        sleep_ms(1);
    int64_t ta = atomic_load(&ra.tid), tb = atomic_load(&rb.tid);
    tb_source *src = tb_cpu_source();
    tb_clock_calibrate();
    tb_capture_info info = {.begin_ns = tb_real_ns(), .buffer_bytes = 8u << 20, .cpu_hz = 1000,
                            .cpu_mode = TB_CPU_FP};
    const char *why = NULL;
    int rc = src->start(src->ctx, &info, &why); /* both found, named first_* */
    if (rc == 0)
        pthread_setname_np(b, "main_renamed"); /* a record in the main thread's ring */
    atomic_store(&rename_go, 1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    if (rc < 0) {
        printf("# skip renames: %s\n", why ? why : "?");
        return;
    }
    src->poll(src->ctx); /* the rescan finds both gone */
    src->stop(src->ctx);
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    const char *na = NULL, *nb = NULL;
    for (size_t i = 0; p && i < p->nlines; i++) {
        if (p->lines[i]->id == ta)
            na = p->lines[i]->name;
        if (p->lines[i]->id == tb)
            nb = p->lines[i]->name;
    }
    CHECKF(na && strcmp(na, "self_renamed") == 0, "thread renamed by itself: line named %s", na ? na : "(no line)");
    CHECKF(nb && strcmp(nb, "main_renamed") == 0, "thread renamed by main: line named %s", nb ? nb : "(no line)");
    tb_space_free(space);
}

/* One thread's renames in two rings: R renames W, then W renames itself;
 * both live on to the stop. W's line has W's own, later name, whichever
 * ring is drained last (at stop, R's after W's: R's tid is higher), not
 * the older one from R's ring. */
static atomic_int cross_step;
static atomic_int cross_tid;
static void *cross_w(void *arg)
{
    (void)arg;
    atomic_store(&cross_tid, (int)syscall(SYS_gettid));
    while (atomic_load(&cross_step) < 2)
        sleep_ms(1);
    pthread_setname_np(pthread_self(), "W_self_later");
    burn_a(200 * UNIT); /* tens of ms: sampled at 100 Hz, a line of its own */
    atomic_store(&cross_step, 3);
    while (atomic_load(&cross_step) < 4)
        sleep_ms(1);
    return NULL;
}
static void *cross_r(void *arg)
{
    pthread_t *w = arg;
    while (atomic_load(&cross_step) < 1)
        sleep_ms(1);
    pthread_setname_np(*w, "by_R_earlier");
    atomic_store(&cross_step, 2);
    while (atomic_load(&cross_step) < 4)
        sleep_ms(1);
    return NULL;
}

static void test_names_across_rings(void)
{
    pthread_t w, r;
    atomic_store(&cross_step, 0);
    pthread_create(&w, NULL, cross_w, NULL);
    while (!atomic_load(&cross_tid))
        sleep_ms(1);
    pthread_create(&r, NULL, cross_r, &w);
    sleep_ms(5);
    tb_source *src = tb_cpu_source();
    int rc = start_fp(src, "names across rings");
    atomic_store(&cross_step, 1);
    while (atomic_load(&cross_step) < 3)
        sleep_ms(1);
    if (rc == 0)
        src->stop(src->ctx); /* no poll before: every record is drained at stop */
    atomic_store(&cross_step, 4);
    pthread_join(w, NULL);
    pthread_join(r, NULL);
    if (rc < 0)
        return;
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    const char *name = NULL;
    for (size_t i = 0; p && i < p->nlines; i++)
        if (p->lines[i]->id == atomic_load(&cross_tid))
            name = p->lines[i]->name;
    CHECKF(name && strcmp(name, "W_self_later") == 0, "W renamed by R, then by itself: line named %s",
           name ? name : "(no line)");
    tb_space_free(space);
}

/* perf_event_open refusing rename records (EINVAL while attr.comm is set),
 * as a sandbox's partial perf_event_open may; the depth of the events
 * opened. */
static atomic_int comm_refusals, opened_depth;
static int refuse_comm(const void *attr)
{
    const struct perf_event_attr *a = attr;
    if (a->comm) {
        atomic_fetch_add(&comm_refusals, 1);
        return EINVAL;
    }
    atomic_store(&opened_depth, (int)a->sample_max_stack);
    return 0;
}

/* Where rename records are refused, the events open without them (once
 * refused, not asked again) but with the callchain depth asked for, and
 * threads are sampled as before. */
static void test_comm_refused(void)
{
    atomic_store(&stop_flag, 0);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    int worked = fp_started;
    tb_sampler_refuse_for_test(refuse_comm);
    tb_source *src = tb_cpu_source();
    int rc = start_fp(src, "comm refused");
    CHECKF(rc == 0 || !worked, "no capture where rename records are refused");
    if (rc == 0) {
        sleep_ms(300); /* (3 samples at 100 Hz need 30 ms of the worker's CPU: a loaded machine) */
        src->poll(src->ctx);
        src->stop(src->ctx);
    }
    atomic_store(&stop_flag, 1);
    pthread_join(th, NULL);
    tb_sampler_refuse_for_test(NULL);
    if (rc < 0)
        return;
    tb_space *space = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, space), 0);
    tb_plane *p = tb_space_find_plane(space, TB_HOST_PLANE);
    int found = 0, found2 = 0;
    int64_t threads = p ? plane_stat(p, TB_ST_CPU_THREADS, &found) : 0;
    int64_t samples = p ? plane_stat(p, TB_ST_SAMPLES, &found2) : 0;
    CHECKF(found && threads >= 2, "%lld threads sampled with rename records refused", (long long)threads);
    CHECKF(found2 && samples >= 3, "%lld samples with rename records refused", (long long)samples);
    /* the first open, and again without the depth (older kernels refuse
     * that); then neither for this thread nor the next */
    CHECKF(atomic_load(&comm_refusals) == 2, "rename records asked for %d times", atomic_load(&comm_refusals));
    FILE *f = fopen("/proc/sys/kernel/perf_event_max_stack", "re");
    int max_stack = 0;
    if (f) {
        if (fscanf(f, "%d", &max_stack) != 1)
            max_stack = 0;
        fclose(f);
    }
    if (max_stack >= 127) /* (the depth fp mode asks: kept where the system allows it) */
        CHECKF(atomic_load(&opened_depth) > 0, "the depth asked for was dropped with the rename records");
    tb_space_free(space);
}

int main(void)
{
    tb_source *src = tb_cpu_source();
    CHECK(src && strcmp(src->name, "cpu") == 0);
    CHECK(src->start && src->poll && src->stop && src->collect);
    run_mode(TB_CPU_STACKCOPY);
    run_mode(TB_CPU_FP);
    test_refuses_second_start();
    test_unsampled_counted_once();
    test_fork_child();
    test_fork_while_the_agent_works();
    test_leaves_free_fds();
    test_emfile_midway();
    test_no_fds_free();
    test_drain_takes_turns();
    test_names_after_renames();
    test_names_across_rings();
    test_comm_refused();
    return tap_done();
}
