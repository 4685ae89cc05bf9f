/* follow.c - fork()ed children that capture while their parent does: see
 * follow.h for the model. */
#include "follow.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "clock.h"
#include "log.h"

typedef struct follow_page {
    _Atomic uint32_t seq; /* odd from the arm of the process's capture to its end */
    int32_t pid;          /* the process that made the page */
    /* the capture under way, or the last one: written before seq turns even
     * again, and left alone until the next arm */
    _Atomic int64_t begin_ns; /* CLOCK_MONOTONIC; 0: not begun (yet) */
    _Atomic int64_t end_ns;   /* 0: ended before it began (nothing written) */
    atomic_int joined;        /* children that took part in it (at most TB_FOLLOW_MAX) */
    char run[TB_FOLLOW_RUN_MAX + 1]; /* its run folder, from begin_ns on */
} follow_page;

static follow_page *own;    /* this process's (its children's to follow) */
static follow_page *parent; /* the parent's, in a fork child (NULL: none) */
static atomic_int watching; /* a thread of ours follows the parent */
static atomic_int follower; /* the pid that started it (a fork of this child is not following) */

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE): the waiters are other processes */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

int tb_follow_prepare_fork(int on)
{
    if (!on || own)
        return 0;
    void *p = mmap(NULL, sizeof(follow_page), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 0; /* children of this process do not follow it; nothing else changes */
    own = p;
    own->pid = (int32_t)getpid();
    return 1;
}

void tb_follow_fork_child(void)
{
    /* the page the parent made for its children (none: keep none; the
     * child's own children get a page of its own) */
    parent = own && own->pid == (int32_t)getppid() ? own : NULL;
    own = NULL;
    atomic_store(&watching, 0); /* the parent's thread is not here */
}

/* The page this process publishes on, or NULL. */
static follow_page *publishing(void) { return own && own->pid == (int32_t)getpid() ? own : NULL; }

static void bump(follow_page *p, uint32_t s)
{
    atomic_store_explicit(&p->seq, s + 1, memory_order_release);
    futex(&p->seq, FUTEX_WAKE, INT32_MAX, NULL);
}

int tb_follow_arm(void)
{
    follow_page *p = publishing();
    uint32_t s = p ? atomic_load(&p->seq) : 1;
    if (s & 1)
        return 0;
    atomic_store(&p->begin_ns, 0);
    atomic_store(&p->end_ns, 0);
    atomic_store(&p->joined, 0);
    p->run[0] = '\0';
    bump(p, s);
    return 1;
}

void tb_follow_begin(const char *run, int64_t begin_ns)
{
    follow_page *p = publishing();
    if (!p || !(atomic_load(&p->seq) & 1))
        return;
    snprintf(p->run, sizeof(p->run), "%s", run);
    atomic_store_explicit(&p->begin_ns, begin_ns > 0 ? begin_ns : 1, memory_order_release);
}

void tb_follow_end(int64_t end_ns)
{
    follow_page *p = publishing();
    uint32_t s = p ? atomic_load(&p->seq) : 0;
    if (!(s & 1))
        return;
    atomic_store(&p->end_ns, atomic_load(&p->begin_ns) ? (end_ns > 0 ? end_ns : 1) : 0);
    bump(p, s);
}

/* The parent's capture, as far as it has come: its run folder (once it
 * began), begin and end (0: not yet, or never). 0 where the parent armed
 * another capture meanwhile (what was read is not to be trusted). */
static int read_page(const follow_page *p, uint32_t s, tb_follow_window *w)
{
    w->begin_ns = atomic_load_explicit((_Atomic int64_t *)&p->begin_ns, memory_order_acquire);
    w->end_ns = atomic_load_explicit((_Atomic int64_t *)&p->end_ns, memory_order_acquire);
    snprintf(w->run, sizeof(w->run), "%.*s", (int)sizeof(w->run) - 1, w->begin_ns ? p->run : "");
    atomic_thread_fence(memory_order_acquire);
    uint32_t now = atomic_load((_Atomic uint32_t *)&p->seq);
    return now == s || now == s + 1; /* the same arm (its end may have come) */
}

int tb_follow_peek(tb_follow_window *w)
{
    follow_page *p = parent;
    if (!p)
        return 0;
    uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
    return read_page(p, s, w) && w->begin_ns != 0;
}

static void *watch(void *arg)
{
    follow_page *p = arg;
    int ppid = p->pid;
    uint32_t seen = 0, armed = 0; /* armed: the odd seq followed (0: none) */
    int first = 1;
    for (;;) {
        uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
        int gone = getppid() != ppid;
        if (armed && (s != armed || gone)) {
            /* the parent's capture ended (or the parent did, mid-capture:
             * what the page says of it so far) */
            tb_follow_window w;
            if (!read_page(p, armed, &w))
                w = (tb_follow_window){.begin_ns = 0};
            if (gone && !w.end_ns && w.begin_ns)
                w.end_ns = tb_mono_ns();
            tb_agent_follow_stop(&w);
            armed = 0;
        }
        if (gone)
            return NULL; /* nothing more will come from it */
        if ((s & 1) && (s != seen || first)) { /* the parent armed a capture */
            if (atomic_fetch_add(&p->joined, 1) >= TB_FOLLOW_MAX) {
                tb_info("not capturing with the parent (pid %d): %d of its children do already", ppid,
                        TB_FOLLOW_MAX);
            } else {
                int rc = tb_agent_follow_start(ppid);
                armed = rc == 0 ? s : 0;
                tb_debug("the parent (pid %d) armed a capture: %s", ppid,
                         rc < 0 ? strerror(-rc) : "capturing with it");
            }
        }
        seen = s;
        first = 0;
        /* while following, look at the parent once a second: one that
         * ends mid-capture never ends it on the page */
        struct timespec sec = {1, 0};
        futex(&p->seq, FUTEX_WAIT, s, armed ? &sec : NULL);
    }
    return NULL;
}

int tb_follow_parent(void)
{
    follow_page *p = parent;
    if (!p)
        return -ENOENT;
    int no = 0;
    if (!atomic_compare_exchange_strong(&watching, &no, 1))
        return -EALREADY;
    atomic_store(&follower, (int)getpid()); /* (before the thread: an _exit may come at once) */
    int rc = tb_agent_spawn(watch, p);
    tb_debug("following the parent (pid %d): %s", p->pid, rc < 0 ? strerror(-rc) : "a thread waits for its captures");
    if (rc < 0) {
        atomic_store(&follower, 0);
        atomic_store(&watching, 0);
        tb_warn("this fork()ed child will not capture with its parent: its thread did not start (%s)",
                strerror(-rc));
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
    own = parent = NULL;
    atomic_store(&watching, 0);
    atomic_store(&follower, 0);
}
