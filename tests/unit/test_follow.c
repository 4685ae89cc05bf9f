/* test_follow.c - the page a process shares with its fork()ed children
 * (agent/follow.c), with real fork()s: the agent's side is stubbed here
 * (tb_agent_follow_start/stop and tb_agent_spawn), so each child reports
 * what its follower thread asked of the agent down a pipe.
 *
 * Checked: a child that follows starts a capture at the parent's arm and
 * stops it at the end with the parent's run folder and window; an arm
 * that never began tells it to drop its capture; a child forked during a
 * capture joins it at once; a second tbprof_follow_parent() is refused;
 * only the follower is "following" (not the parent, not its own fork); a
 * child of a process with TBPROF_CHILDREN=off has nothing to follow; a
 * follower whose parent dies mid-capture stops with what the page said,
 * the end taken as it noticed; a child makes its own page at its first
 * fork, and publishes there, not on its parent's; the page's fd for an
 * exec()ed child is the same page, and never a file of the job's that
 * took its number. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "clock.h"
#include "follow.h"
#include "tap.h"

/* ---- the agent's side, stubbed: each call is a line down report[1] ---- */

static int report[2] = {-1, -1};
static int go[2] = {-1, -1}; /* the children end at EOF on go[0] */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[700];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if (write(report[1], line, (size_t)n) != n)
        _exit(9);
}

int tb_agent_follow_start(int ppid, uint32_t seq)
{
    (void)seq;
    say("start %d", ppid);
    return 0;
}

void tb_agent_follow_stop(const tb_follow_window *w)
{
    say("stop %lld %lld %s", (long long)w->begin_ns, (long long)w->end_ns, w->run[0] ? w->run : "-");
}

int tb_agent_spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return -rc;
}

/* ---- the test ---------------------------------------------------------- */

/* The next line the children report, waited for up to 5 s ("" on none). */
static const char *next_line(void)
{
    static char buf[4096];
    static size_t have;
    static char line[700];
    int64_t end = tb_mono_ns() + 5000000000LL;
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            snprintf(line, sizeof(line), "%.*s", (int)n, buf);
            memmove(buf, nl + 1, have - n - 1);
            have -= n + 1;
            return line;
        }
        if (tb_mono_ns() > end)
            return "";
        ssize_t r = read(report[0], buf + have, sizeof(buf) - have);
        if (r > 0)
            have += (size_t)r;
        else
            usleep(1000);
    }
}

/* A fork()ed child: follows (or not), says "ready R F" (R: the follow's
 * result, F: tb_follow_following()), then waits for a byte on `go` and
 * _exits. With `fork_own`: first forks a grandchild of its own (its page
 * made), says "own P" (whether it publishes there: its arm returns 1). */
static pid_t child(int follow, int fork_own)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    close(go[1]);
    tb_follow_fork_child();
    int rc = follow ? tb_follow_parent() : -1;
    int again = follow ? tb_follow_parent() : -EALREADY;
    say("ready %d %d %d", rc, tb_follow_following(), again);
    if (fork_own) {
        int made = tb_follow_prepare_fork(1);
        pid_t g = fork();
        if (g == 0)
            _exit(0);
        waitpid(g, NULL, 0);
        say("own %d %d", made, tb_follow_arm());
    }
    char b;
    while (read(go[0], &b, 1) < 0 && errno == EINTR) {
    }
    _exit(0);
}

static void expect(const char *want)
{
    const char *got = next_line();
    CHECKF(!strcmp(got, want), "got '%s', expected '%s'", got, want);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (pipe(report) < 0 || pipe(go) < 0)
        return 1;
    fcntl(report[0], F_SETFL, O_NONBLOCK); /* (next_line waits 5 s at most) */
    char me[16], want[700];
    snprintf(me, sizeof(me), "%d", (int)getpid());

    /* TBPROF_CHILDREN=off: no page, nothing to follow */
    CHECK_EQ_I(tb_follow_prepare_fork(0), 0);
    pid_t c0 = child(1, 0);
    expect("ready -2 0 -2"); /* -ENOENT, twice */

    /* on: the page is made at the first fork, once */
    CHECK_EQ_I(tb_follow_prepare_fork(1), 1);
    CHECK_EQ_I(tb_follow_prepare_fork(1), 0);
    pid_t c1 = child(1, 0);
    expect("ready 0 1 -114");
    CHECK_EQ_I(tb_follow_following(), 0); /* the parent does not follow */

    /* a capture: arm (the child starts), begin (nothing yet), end (it stops with the window) */
    CHECK_EQ_I(tb_follow_arm(), 1);
    CHECK_EQ_I(tb_follow_arm(), 0); /* one arm at a time */
    snprintf(want, sizeof(want), "start %s", me);
    expect(want);
    tb_follow_begin("job_steps_3-5", 1000);
    tb_follow_end(2000);
    expect("stop 1000 2000 job_steps_3-5");
    tb_follow_end(3000); /* one end */

    /* an arm that never began: the child drops its capture */
    CHECK_EQ_I(tb_follow_arm(), 1);
    expect(want);
    tb_follow_end(4000);
    expect("stop 0 0 -");

    /* a child forked while a capture is on joins it at once; the first
     * child is told too; both get the end */
    CHECK_EQ_I(tb_follow_arm(), 1);
    expect(want);
    tb_follow_begin("run2", 5000);
    pid_t c2 = child(1, 0);
    expect("ready 0 1 -114");
    expect(want);
    tb_follow_end(6000);
    expect("stop 5000 6000 run2");
    expect("stop 5000 6000 run2");

    /* the parent ends and arms again before the child reads the page: the
     * child still knows the window it saw begin (it keeps it), not "never
     * began"; then the new capture's start */
    CHECK_EQ_I(tb_follow_arm(), 1);
    expect(want);
    expect(want);
    tb_follow_begin("kept", 7000);
    usleep(100000); /* (the children read the begin: it wakes them) */
    tb_follow_end(8000);
    CHECK_EQ_I(tb_follow_arm(), 1);
    int stops = 0, starts = 0; /* (two children: their lines interleave) */
    for (int i = 0; i < 4; i++) {
        const char *got = next_line();
        long long b0 = -1, e0 = -1;
        char r0[64] = "";
        if (!strcmp(got, want))
            starts++;
        else if (sscanf(got, "stop %lld %lld %63s", &b0, &e0, r0) == 3 && b0 == 7000 && e0 >= 8000 &&
                 !strcmp(r0, "kept"))
            stops++;
        else
            CHECKF(0, "got '%s'", got);
    }
    CHECK_EQ_I(stops, 2);
    CHECK_EQ_I(starts, 2);
    tb_follow_end(9000);
    expect("stop 0 0 -");
    expect("stop 0 0 -");

    /* a child's own fork: its page is its own (it publishes there), and
     * a child that does not call tbprof_follow_parent() reports nothing */
    pid_t c3 = child(0, 1);
    expect("ready -1 0 -114");
    expect("own 1 1");

    /* an exec()ed child's way in (tb_follow_share, over the control
     * socket): an fd of the same page, refused with TBPROF_CHILDREN off */
    int made = -1;
    CHECK_EQ_I(tb_follow_share(0, &made), -EPERM);
    int pfd = tb_follow_share(1, &made);
    CHECK(pfd >= 0);
    CHECK_EQ_I(made, 0); /* (made at the first fork) */
    volatile uint32_t *seen = pfd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_SHARED, pfd, 0) : MAP_FAILED;
    CHECK(seen != MAP_FAILED);
    if (seen != MAP_FAILED) {
        CHECK_EQ_I((int)seen[1], (int)getpid()); /* (the page's maker, after its seq) */
        CHECK_EQ_I(seen[0] & 1, 0);
        CHECK_EQ_I(tb_follow_arm(), 1);
        CHECK_EQ_I(seen[0] & 1, 1); /* the arm, seen through the fd */
        snprintf(want, sizeof(want), "start %s", me);
        expect(want);
        expect(want);
        tb_follow_end(0);
        CHECK_EQ_I(seen[0] & 1, 0);
        expect("stop 0 0 -");
        expect("stop 0 0 -");
        munmap((void *)seen, 4096);
    }
    /* a fork between the dup and its send's close: the child has no copy */
    if (pfd >= 0) {
        pid_t k = fork();
        if (k == 0) {
            tb_follow_fork_child();
            _exit(fcntl(pfd, F_GETFD) < 0 ? 0 : 3);
        }
        int st = -1;
        CHECK(waitpid(k, &st, 0) == k && WIFEXITED(st));
        CHECKF(WEXITSTATUS(st) == 0, "the child kept the page's fd being sent (%d)", WEXITSTATUS(st));
        close(pfd);
    }
    /* a job that closed our fd and opened a file of its own under that
     * number: the file is never sent */
    int ours = -1;
    for (int fd = 3; fd < 1024 && ours < 0; fd++) {
        char path[64], link[128];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n > 0 && (link[n] = '\0', strstr(link, "memfd:tbprof-follow")))
            ours = fd;
    }
    CHECK(ours >= 0);
    int other = open("/dev/null", O_RDONLY);
    if (ours >= 0 && other >= 0 && dup2(other, ours) == ours) {
        CHECK_EQ_I(tb_follow_share(1, &made), -EBADF);
        CHECK_EQ_I(tb_follow_share(1, &made), -EBADF); /* (and after: the same answer, not another) */
    }
    if (other >= 0)
        close(other);

    /* the parent dies mid-capture (a parent of its own, killed): the
     * follower stops with the page's begin and an end of its own */
    int sync[2];
    if (pipe(sync) < 0)
        return 1;
    pid_t mid = fork();
    if (mid == 0) {
        close(sync[0]);
        close(go[1]);
        tb_follow_fork_child();
        tb_follow_prepare_fork(1);
        pid_t g = fork();
        if (g == 0) {
            tb_follow_fork_child();
            tb_follow_parent();
            char b;
            if (read(go[0], &b, 1) < 0) /* until the end of the test */
                _exit(1);
            _exit(0);
        }
        usleep(100000); /* the grandchild's thread waits */
        tb_follow_arm();
        tb_follow_begin("orphaned", 7000);
        if (write(sync[1], "a", 1) != 1)
            _exit(1);
        pause(); /* killed here */
        _exit(0);
    }
    close(sync[1]);
    char b;
    CHECK(read(sync[0], &b, 1) == 1);
    snprintf(want, sizeof(want), "start %d", (int)mid);
    expect(want);
    int64_t killed = tb_mono_ns();
    kill(mid, SIGKILL);
    waitpid(mid, NULL, 0);
    const char *got = next_line();
    long long begin = -1, end = -1;
    char run[64] = "";
    CHECKF(sscanf(got, "stop %lld %lld %63s", &begin, &end, run) == 3, "got '%s'", got);
    CHECK_EQ_I(begin, 7000);
    CHECK(!strcmp(run, "orphaned"));
    CHECKF(end >= killed && end < killed + 3000000000LL, "end %lld, killed at %lld", end, (long long)killed);

    close(go[1]); /* every child ends */
    pid_t kids[] = {c0, c1, c2, c3};
    for (size_t i = 0; i < sizeof(kids) / sizeof(kids[0]); i++) {
        int st = -1;
        CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return tap_done();
}
