/* follow.c - fork()ed children that capture while their parent does: see
 * follow.h for the model. */
#include "follow.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "clock.h"
#include "ctl.h"
#include "log.h"
#include "util.h"

typedef struct follow_page {
    _Atomic uint32_t seq; /* the futex word: odd from the arm of a capture to its end */
    int32_t pid;          /* the process that made the page */
    /* What the children read of the capture, written by the parent under
     * a seqlock (gen odd while it writes; its writes are serialised by the
     * agent's lock): a reader copies them and keeps the copy only where gen
     * was even and unchanged around it. */
    _Atomic uint32_t gen;
    _Atomic uint32_t cap_seq; /* the (odd) seq these are of */
    _Atomic int64_t begin_ns; /* CLOCK_MONOTONIC; 0: not begun (yet) */
    _Atomic int64_t end_ns;   /* 0: not ended, or ended before it began (nothing written) */
    char run[TB_FOLLOW_RUN_MAX + 1]; /* its run folder, from begin_ns on */
    /* apart from the seqlock: */
    _Atomic int64_t beat_ns; /* the parent's agent was there (CLOCK_MONOTONIC) */
    atomic_int joined;       /* children that took part in the capture (at most TB_FOLLOW_MAX) */
} follow_page;

/* A child's copy of the parent's capture. */
typedef struct follow_snap {
    uint32_t cap_seq;
    tb_follow_window w;
} follow_snap;

static follow_page *own; /* this process's (its children's to follow) */
static int own_fd = -1;  /* its memfd, for an exec()ed child that asks (tb_follow_share); -1: none */
static tb_fd_id own_id;  /* (the fd is still the page's) */
static atomic_int shared_fd = -1; /* the last dup tb_follow_share made (its caller closes it) */
static int own_fd_lost; /* the job closed own_fd: exec()ed children get no page from now on */
/* The page followed: the parent's, in a fork child; one asked for over the
 * leader's socket (a spawned or forkserver child), once it came. */
static _Atomic(follow_page *) parent;
static int leader;  /* whose captures this process follows (its page's maker); 0: nobody's */
static int forker;  /* ... and its parent (the leader, or a forkserver between them) */
static int forked;  /* a fork child of a process with the agent */
/* In a multiprocessing forkserver: its parent, whose captures the workers
 * it forks follow (0: not looked at yet; -1: not a forkserver). */
static int relay_for;
static atomic_int watching; /* a thread of ours follows the parent */
static atomic_int follower; /* the pid that started it (a fork of this child is not following) */
/* The window of the capture the child follows, kept by its watcher once
 * it began: the child still knows it when the parent re-arms before the
 * child reads the page again. */
static pthread_mutex_t kept_lk = PTHREAD_MUTEX_INITIALIZER;
static follow_snap kept;

#define STALE_NS (30 * 1000000000LL) /* no beat for this long: the parent's capture is taken as over */
#define JOIN_GRACE_NS (50 * 1000000) /* a child forked during a capture waits this long (an exec ends it) */

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE): the waiters are other processes */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

/* Make this process's page, where it has none (1: made now). A memfd's, so
 * that an exec()ed child can map it too (tb_follow_share); anonymous where
 * the kernel has no memfd. */
static int ensure_own(void)
{
    if (own)
        return 0;
    void *p = MAP_FAILED;
    int fd = tb_fd_above_stdio(memfd_create("tbprof-follow", MFD_CLOEXEC));
    if (fd >= 0 && (ftruncate(fd, sizeof(follow_page)) < 0 ||
                    (p = mmap(NULL, sizeof(follow_page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)) {
        close(fd);
        fd = -1;
    }
    if (p == MAP_FAILED)
        p = mmap(NULL, sizeof(follow_page), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 0; /* children of this process do not follow it; nothing else changes */
    own = p;
    own->pid = (int32_t)getpid();
    own_fd = fd;
    tb_fd_id_take(fd, &own_id);
    return 1;
}

/* Whether this process is a multiprocessing forkserver: the python -c
 * "from multiprocessing.forkserver import main; main(...)" its parent
 * started (the default start method on Linux from Python 3.14). 1, 0, or
 * -1 where /proc does not say (asked again at the next fork). */
static int is_forkserver(void)
{
    static const char want[] = "from multiprocessing.forkserver import main";
    char buf[4096];
    int fd = tb_fd_above_stdio(open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC));
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    for (ssize_t i = 0; i < n; i += (ssize_t)strnlen(buf + i, (size_t)(n - i)) + 1)
        if (!strncmp(buf + i, want, sizeof(want) - 1))
            return 1;
    return 0;
}

int tb_follow_prepare_fork(int on)
{
    if (!on || own)
        return 0;
    if (!relay_for) {
        int fs = forked ? 0 : is_forkserver();
        if (fs >= 0) /* (its parent: pid 1 too, a container's trainer) */
            relay_for = fs && getppid() > 0 ? (int)getppid() : -1;
    }
    if (relay_for > 0)
        return 0; /* its workers follow its parent, not it: no page of its own */
    return ensure_own();
}

int tb_follow_share(int on, int *made)
{
    *made = 0;
    if (!on)
        return -EPERM;
    *made = ensure_own();
    if (!own)
        return -ENOMEM;
    if (own_fd_lost)
        return -EBADF;
    if (own_fd < 0)
        return -ENOSYS;
    /* still the page's (checked on the copy, which no job thread can
     * close and reopen meanwhile): a job that closed every fd it did not
     * open may have a file of its own under that number now, never to be
     * sent */
    int fd = fcntl(own_fd, F_DUPFD_CLOEXEC, 3);
    if (fd < 0 && errno != EBADF)
        return -errno;
    if (!tb_fd_id_is(fd, &own_id)) {
        if (fd >= 0)
            close(fd);
        own_fd = -1;
        own_fd_lost = 1;
        return -EBADF;
    }
    atomic_store(&shared_fd, fd);
    return fd;
}

void tb_follow_fork_child(void)
{
    int pp = (int)getppid();
    follow_page *p = NULL;
    forked = 1;
    if (relay_for > 0) { /* a forkserver's worker: its parent's parent's page, asked for */
        leader = relay_for;
        forker = pp;
    } else { /* the page the parent made for its children (none: keep none) */
        p = own && own->pid == pp ? own : NULL;
        leader = forker = p ? pp : 0;
    }
    atomic_store(&parent, p);
    relay_for = -1; /* (the forkserver's cmdline, but a worker) */
    /* the child's own children get a page of its own */
    /* ... and the parent's fd, with the copy it was sending a worker, if a
     * fork came before the send closed it: where the numbers are still
     * the page's */
    int fds[] = {own_fd, atomic_exchange(&shared_fd, -1)};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (tb_fd_id_is(fds[i], &own_id))
            close(fds[i]);
    own_fd = -1;
    own = NULL;
    atomic_store(&watching, 0); /* the parent's thread is not here */
    pthread_mutex_init(&kept_lk, NULL); /* (it may have held it across the fork) */
    memset(&kept, 0, sizeof(kept));
}

/* The page this process publishes on, or NULL. */
static follow_page *publishing(void) { return own && own->pid == (int32_t)getpid() ? own : NULL; }

/* (read-modify-writes for the seqlock's ordering, no fences: acquire keeps
 * the writes after it after it, release the reads before it before it) */
static uint32_t write_open(follow_page *p)
{
    return atomic_fetch_add_explicit(&p->gen, 1, memory_order_acq_rel) + 2;
}

static void write_close(follow_page *p, uint32_t g) { atomic_store_explicit(&p->gen, g, memory_order_release); }

static void set_seq(follow_page *p, uint32_t s)
{
    atomic_store_explicit(&p->seq, s, memory_order_release);
    futex(&p->seq, FUTEX_WAKE, INT32_MAX, NULL);
}

int tb_follow_arm(void)
{
    follow_page *p = publishing();
    uint32_t s = p ? atomic_load(&p->seq) : 1;
    if (s & 1)
        return 0;
    uint32_t g = write_open(p);
    atomic_store_explicit(&p->cap_seq, s + 1, memory_order_relaxed);
    atomic_store_explicit(&p->begin_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&p->end_ns, 0, memory_order_relaxed);
    p->run[0] = '\0';
    write_close(p, g);
    atomic_store(&p->joined, 0);
    atomic_store(&p->beat_ns, tb_mono_ns());
    set_seq(p, s + 1);
    return 1;
}

void tb_follow_begin(const char *run, int64_t begin_ns)
{
    follow_page *p = publishing();
    if (!p || !(atomic_load(&p->seq) & 1))
        return;
    uint32_t g = write_open(p);
    snprintf(p->run, sizeof(p->run), "%s", run);
    atomic_store_explicit(&p->begin_ns, begin_ns > 0 ? begin_ns : 1, memory_order_relaxed);
    write_close(p, g);
    futex(&p->seq, FUTEX_WAKE, INT32_MAX, NULL); /* (seq as it was: the watchers read the begin) */
}

void tb_follow_beat(int64_t now)
{
    follow_page *p = publishing();
    if (p)
        atomic_store_explicit(&p->beat_ns, now, memory_order_relaxed);
}

void tb_follow_end(int64_t end_ns)
{
    follow_page *p = publishing();
    uint32_t s = p ? atomic_load(&p->seq) : 0;
    if (!(s & 1))
        return;
    uint32_t g = write_open(p);
    int begun = atomic_load_explicit(&p->begin_ns, memory_order_relaxed) != 0;
    atomic_store_explicit(&p->end_ns, begun ? (end_ns > 0 ? end_ns : 1) : 0, memory_order_relaxed);
    write_close(p, g);
    set_seq(p, s + 1);
}

/* A consistent copy of the parent's capture, or 0 where the parent kept
 * writing it (it stopped mid-write: preempted for long, or dead). */
static int snapshot(const follow_page *p, follow_snap *o)
{
    follow_page *q = (follow_page *)p;
    for (int i = 0; i < 1000; i++) {
        uint32_t g1 = atomic_load_explicit(&q->gen, memory_order_acquire);
        if (!(g1 & 1)) {
            o->cap_seq = atomic_load_explicit(&q->cap_seq, memory_order_relaxed);
            o->w.begin_ns = atomic_load_explicit(&q->begin_ns, memory_order_relaxed);
            o->w.end_ns = atomic_load_explicit(&q->end_ns, memory_order_relaxed);
            memcpy(o->w.run, q->run, sizeof(o->w.run));
            if (atomic_fetch_add_explicit(&q->gen, 0, memory_order_acq_rel) == g1) {
                o->w.run[sizeof(o->w.run) - 1] = '\0';
                if (!o->w.begin_ns)
                    o->w.run[0] = '\0';
                return 1;
            }
        }
        sched_yield();
    }
    return 0;
}

/* The page's account of capture cap_seq, else what the watcher kept of it
 * (0: nothing known: it never began, or the child never saw it begin). */
static int window_of(const follow_page *p, uint32_t cap_seq, tb_follow_window *w)
{
    follow_snap sn;
    if (snapshot(p, &sn) && sn.cap_seq == cap_seq) {
        *w = sn.w;
        return 1;
    }
    pthread_mutex_lock(&kept_lk);
    int have = kept.cap_seq == cap_seq && kept.w.begin_ns;
    if (have)
        *w = kept.w;
    pthread_mutex_unlock(&kept_lk);
    if (have)
        w->end_ns = 0; /* (not known: the caller's now) */
    return have;
}

int tb_follow_peek(uint32_t cap_seq, tb_follow_window *w)
{
    follow_page *p = atomic_load(&parent);
    return p && window_of(p, cap_seq, w) && w->begin_ns;
}

/* The leader gone: this process's parent is no longer the one it had (it
 * ended: we were reparented), or a leader past a forkserver ended. */
static int leader_gone(void)
{
    if ((int)getppid() != forker)
        return 1;
    return leader != forker && kill(leader, 0) < 0 && errno == ESRCH;
}

/* An exec()ed child (a multiprocessing spawn or forkserver worker): the
 * leader's page, asked for over its control socket. The request waits in
 * the socket's queue while the leader cannot answer (writing a profile; a
 * single-threaded process, whose agent thread starts with its first thread
 * or capture), and is made again for as long as the leader lives. */
static follow_page *ask_for_page(void)
{
    for (;;) {
        char ans[TB_CTL_LINE] = "";
        int fd = -1;
        int rc = tb_ctl_request_fd(leader, "follow", ans, sizeof(ans), 30000, &fd);
        if (rc == 0 && fd >= 0) {
            struct stat st;
            follow_page *p = fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(follow_page)
                                 ? mmap(NULL, sizeof(follow_page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                                 : MAP_FAILED;
            close(fd);
            if (p != MAP_FAILED && p->pid == leader)
                return p;
            if (p != MAP_FAILED)
                munmap(p, sizeof(follow_page));
            snprintf(ans, sizeof(ans), "not its page");
        } else if (rc == -ETIMEDOUT && !leader_gone()) {
            continue; /* (it still lives: asked again) */
        }
        /* no agent there, TBPROF_CHILDREN=off there, or it ended; or its
         * agent refused (it says why itself, once: not once a worker) */
        if (rc == -ECONNREFUSED || rc == -ENOENT || (rc == 0 && !strncmp(ans, "error: ", 7)) || leader_gone())
            tb_debug("not capturing with pid %d: %s", leader, rc < 0 ? strerror(-rc) : ans);
        else /* an agent is there, and what came was not its page */
            tb_warn("this worker will not capture with its parent (pid %d): %s", leader,
                    rc < 0 ? strerror(-rc) : ans);
        return NULL;
    }
}

static void *watch(void *arg)
{
    (void)arg;
    follow_page *p = atomic_load(&parent);
    if (!p && !(p = ask_for_page())) {
        atomic_store(&follower, 0);
        return NULL;
    }
    atomic_store(&parent, p);
    int ppid = leader;
    uint32_t seen = 0, armed = 0; /* armed: the (odd) seq of the capture followed; 0: none */
    int first = 1;
    for (;;) {
        uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
        int gone = leader_gone();
        int64_t now = tb_mono_ns();
        /* a parent that exec()ed or hangs mid-capture never ends it on the page */
        int stale = (s & 1) && now - atomic_load(&p->beat_ns) > STALE_NS;
        follow_snap sn;
        if (armed && s == armed && snapshot(p, &sn) && sn.cap_seq == armed && sn.w.begin_ns) {
            pthread_mutex_lock(&kept_lk); /* (the begin: futex woken, or the once-a-second look) */
            kept = sn;
            pthread_mutex_unlock(&kept_lk);
        }
        if (armed && (s != armed || gone || stale)) {
            /* the parent's capture ended, or the parent did mid-capture:
             * what the page says of it so far */
            tb_follow_window w = {0};
            if (window_of(p, armed, &w) && w.begin_ns && !w.end_ns)
                w.end_ns = now;
            tb_agent_follow_stop(&w);
            armed = 0;
        }
        if (gone)
            return NULL; /* nothing more will come from it */
        if (first && (s & 1)) {
            /* forked during a capture: a child about to exec (subprocess's
             * preexec_fn, pty.fork) is gone before it joins */
            first = 0;
            struct timespec grace = {0, JOIN_GRACE_NS};
            nanosleep(&grace, NULL);
            continue;
        }
        first = 0;
        if ((s & 1) && s != seen && !stale) { /* the parent armed a capture */
            if (atomic_fetch_add(&p->joined, 1) >= TB_FOLLOW_MAX) {
                tb_info("not capturing with the parent (pid %d): %d of its children do already", ppid,
                        TB_FOLLOW_MAX);
            } else {
                int rc = tb_agent_follow_start(ppid, s);
                armed = rc == 0 ? s : 0;
                tb_debug("the parent (pid %d) armed a capture: %s", ppid,
                         rc < 0 ? strerror(-rc) : "capturing with it");
            }
        }
        seen = s;
        /* while following, look at the parent once a second: one that
         * ends mid-capture never ends it on the page */
        struct timespec sec = {1, 0};
        futex(&p->seq, FUTEX_WAIT, s, armed ? &sec : NULL);
    }
    return NULL;
}

int tb_follow_parent(void)
{
    if (!atomic_load(&parent) && !leader) {
        /* a fork child of a process without a page (forked before its agent
         * was on, or TBPROF_CHILDREN off there); else an exec()ed child:
         * its parent's agent is asked for the page */
        if (forked || getppid() <= 0)
            return -ENOENT;
        leader = forker = (int)getppid();
    }
    int no = 0;
    if (!atomic_compare_exchange_strong(&watching, &no, 1))
        return -EALREADY;
    atomic_store(&follower, (int)getpid()); /* (before the thread: an _exit may come at once) */
    int rc = tb_agent_spawn(watch, NULL);
    tb_debug("following pid %d: %s", leader, rc < 0 ? strerror(-rc) : "a thread waits for its captures");
    if (rc < 0) {
        atomic_store(&follower, 0);
        atomic_store(&watching, 0);
        tb_warn("this child will not capture with its parent: its thread did not start (%s)", strerror(-rc));
    }
    return rc;
}

int tb_follow_following(void)
{
    int pid = atomic_load_explicit(&follower, memory_order_relaxed);
    return pid != 0 && pid == (int)getpid();
}

void tb_follow_reset_for_test(void)
{
    own = NULL;
    atomic_store(&parent, NULL);
    leader = forker = forked = relay_for = 0;
    atomic_store(&watching, 0);
    atomic_store(&follower, 0);
}
