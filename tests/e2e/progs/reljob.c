/* reljob.c - the job for the reliability tests (tests/e2e/test_rel_*.py):
 * a step loop that, at one step, does something hostile to the agent, and
 * prints what it did so the test can check the profile's counts against it.
 *
 *   reljob [-n steps] [-m ms] [-A step] [-T threads] [-F forks [-E]]
 *          [-P threads -S steps [-a]] [-X [-K|-Y]] [-I] [-r] [-g] [-x code]
 *          [-L lib]
 *   reljob -W dir -k pid [-c nth]        (watcher: SIGKILL pid at the nth
 *                                         file created in dir; inotify;
 *                                         "job ended after N" if it exits
 *                                         before that)
 *
 *   -n   main-thread steps (tbprof_step), default 20; -m ms of work each (2)
 *   -A   the step at which the event below happens (default 5)
 *   -T   create and join this many short-lived threads (50 alive at a time,
 *        each named, ~0.2 ms of work): "threads N joined N"
 *   -F   fork this many children (all alive at once, then reaped); child i
 *        calls tbprof_step() 3 times and exits with status 1 + i % 200
 *        ("forks N ok K" counts children whose status was their own);
 *        -E: the children exec this program ("-n 1 -x status") instead
 *   -P/-S  K threads call tbprof_step() S times each, all at once (barrier);
 *        prints "psteps K*S first F last L" (the numbers they got);
 *        -a: tbprof_start(0) before, tbprof_stop() after (an API capture)
 *   -X   exit(code) at step A; -K: _exit(code) instead; -Y: exit() from a
 *        second thread while the main thread keeps stepping
 *   -I   the job's own SIGINT handler: ends the loop, exits with code
 *   -r   print "ready <pid>" before the loop; -g: then wait for a line on stdin
 *   -x   exit status (default 0)
 *   -L   dlopen(lib) first (a set-uid copy: ld.so ignores LD_PRELOAD there),
 *        then report "secure S agent_thread T socket K start R" at the end;
 *        -D: instead, at step A tbprof_start(300 ms) and dlclose(lib), and
 *        the loop goes on without the API ("dlclose R")
 * Ends with "done <steps> status <code>".
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"

static volatile sig_atomic_t got_int;
static __thread volatile double sink; /* per thread: no race between workers */
static int code;

static void on_int(int sig)
{
    (void)sig;
    got_int = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void work(double ms)
{
    int64_t end = now_ns() + (int64_t)(ms * 1e6);
    double acc = 0;
    do {
        for (int i = 1; i < 500; i++)
            acc += 1.0 / i;
    } while (now_ns() < end);
    sink = acc;
}

/* ---- -T: short-lived threads ------------------------------------------------ */

static void *short_thread(void *arg)
{
    char name[16];
    snprintf(name, sizeof(name), "short-%d", (int)(intptr_t)arg);
    pthread_setname_np(pthread_self(), name);
    work(0.2);
    return arg;
}

static void churn_threads(int n)
{
    enum { ALIVE = 50 };
    pthread_t th[ALIVE];
    int made = 0, joined = 0, failed = 0;
    while (made + failed < n) {
        int k = 0;
        for (; k < ALIVE && made + failed < n; k++) {
            if (pthread_create(&th[k], NULL, short_thread, (void *)(intptr_t)(made + failed)) != 0) {
                failed++;
                k--;
                continue;
            }
            made++;
        }
        for (int i = 0; i < k; i++)
            if (pthread_join(th[i], NULL) == 0)
                joined++;
    }
    printf("threads %d joined %d failed %d\n", made, joined, failed);
}

/* ---- -F: forks ------------------------------------------------------------------ */

static void forks(int n, int do_exec, const char *self)
{
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    int ok = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        int st = 1 + i % 200;
        pid_t p = fork();
        if (p == 0) {
            if (do_exec) {
                char cs[16];
                snprintf(cs, sizeof(cs), "%d", st);
                execl(self, self, "-n", "1", "-m", "0", "-x", cs, (char *)NULL);
                _exit(255);
            }
            for (int k = 0; k < 3; k++)
                tb_step();
            _exit(st);
        }
        pids[i] = p;
        if (p < 0)
            bad++;
    }
    for (int i = 0; i < n; i++) {
        if (pids[i] <= 0)
            continue;
        int st;
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
            ;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 1 + i % 200)
            ok++;
        else {
            bad++;
            fprintf(stderr, "reljob: child %d status 0x%x\n", (int)pids[i], st);
        }
    }
    free(pids);
    printf("forks %d ok %d bad %d\n", n, ok, bad);
}

/* ---- -P: steps from many threads at once ---------------------------------------- */

static pthread_barrier_t bar;
static int psteps_per;
static _Atomic int64_t pmin = INT64_MAX, pmax = -1;

static void *stepper(void *arg)
{
    (void)arg;
    int64_t lo = INT64_MAX, hi = -1;
    pthread_barrier_wait(&bar);
    for (int i = 0; i < psteps_per; i++) {
        int64_t s = tb_step();
        if (s < lo)
            lo = s;
        if (s > hi)
            hi = s;
    }
    int64_t cur = atomic_load(&pmin);
    while (lo < cur && !atomic_compare_exchange_weak(&pmin, &cur, lo))
        ;
    cur = atomic_load(&pmax);
    while (hi > cur && !atomic_compare_exchange_weak(&pmax, &cur, hi))
        ;
    return NULL;
}

static void parallel_steps(int k, int s, int api)
{
    pthread_t *th = calloc((size_t)k, sizeof(pthread_t));
    psteps_per = s;
    pthread_barrier_init(&bar, NULL, (unsigned)k);
    if (api)
        printf("start %d\n", tb_start(0));
    for (int i = 0; i < k; i++)
        pthread_create(&th[i], NULL, stepper, NULL);
    for (int i = 0; i < k; i++)
        pthread_join(th[i], NULL);
    if (api)
        printf("stop %d\n", tb_stop());
    pthread_barrier_destroy(&bar);
    free(th);
    printf("psteps %lld first %lld last %lld\n", (long long)k * s, (long long)atomic_load(&pmin),
           (long long)atomic_load(&pmax));
}

/* ---- -Y: exit() from another thread ----------------------------------------- */

static void *exiter(void *arg)
{
    (void)arg;
    fflush(stdout);
    exit(code);
}

/* ---- -L: what the agent did in this (maybe set-uid) process ---------------------- */

static int agent_thread_seen(void)
{
    DIR *d = opendir("/proc/self/task");
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[300], comm[64] = "";
        snprintf(p, sizeof(p), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "tbprof", 6))
            found = 1;
        fclose(f);
    }
    if (d)
        closedir(d);
    return found;
}

static int socket_seen(void)
{
    char want[64], line[512];
    struct stat ns;
    if (stat("/proc/self/ns/pid", &ns) < 0)
        ns.st_ino = 0;
    snprintf(want, sizeof(want), "@tbprof.%u.%llu.%d", (unsigned)getuid(), (unsigned long long)ns.st_ino,
             (int)getpid());
    size_t wl = strlen(want);
    FILE *f = fopen("/proc/net/unix", "r");
    int found = 0;
    while (f && fgets(line, sizeof(line), f)) {
        char *at = strstr(line, "@tbprof.");
        if (at && !strncmp(at, want, wl) && (at[wl] == '\n' || at[wl] == ' ' || at[wl] == '\0'))
            found = 1;
    }
    if (f)
        fclose(f);
    return found;
}

/* ---- -W: the watcher ------------------------------------------------------------ */

static int watcher(const char *dir, pid_t pid, int nth)
{
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO) < 0) {
        perror("reljob: inotify");
        return 2;
    }
    printf("watching\n");
    fflush(stdout);
    int seen = 0;
    char buf[4096] __attribute__((aligned(8)));
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) == 0) {
            if (kill(pid, 0) < 0 && errno == ESRCH) { /* reaped: it finished first */
                printf("job ended after %d\n", seen);
                return 0;
            }
            continue;
        }
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return 2;
        }
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (++seen == nth) {
                kill(pid, SIGKILL);
                printf("killed at %s\n", ev->len ? ev->name : "?");
                return 0;
            }
        }
    }
}

int main(int argc, char **argv)
{
    int nsteps = 20, at = 5, nthreads = 0, nforks = 0, do_exec = 0, pk = 0, ps = 0, api = 0;
    int do_exit = 0, do_close = 0, hard = 0, from_thread = 0, ready = 0, gate = 0, nth = 1;
    double ms = 2;
    const char *lib = NULL, *wdir = NULL;
    pid_t wpid = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:m:A:T:F:EP:S:aXKYIrgx:L:DW:k:c:")) != -1) {
        switch (opt) {
        case 'n': nsteps = atoi(optarg); break;
        case 'm': ms = atof(optarg); break;
        case 'A': at = atoi(optarg); break;
        case 'T': nthreads = atoi(optarg); break;
        case 'F': nforks = atoi(optarg); break;
        case 'E': do_exec = 1; break;
        case 'P': pk = atoi(optarg); break;
        case 'S': ps = atoi(optarg); break;
        case 'a': api = 1; break;
        case 'X': do_exit = 1; break;
        case 'K': hard = 1; break;
        case 'Y': from_thread = 1; break;
        case 'I': signal(SIGINT, on_int); break;
        case 'r': ready = 1; break;
        case 'g': gate = 1; break;
        case 'x': code = atoi(optarg); break;
        case 'L': lib = optarg; break;
        case 'D': do_close = 1; break;
        case 'W': wdir = optarg; break;
        case 'k': wpid = (pid_t)atoi(optarg); break;
        case 'c': nth = atoi(optarg); break;
        default: fprintf(stderr, "usage: see reljob.c\n"); return 2;
        }
    }
    if (wdir)
        return watcher(wdir, wpid, nth);
    void *h = NULL;
    if (lib && !(h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL))) {
        fprintf(stderr, "reljob: dlopen: %s\n", dlerror());
        return 3;
    }
    if (do_close && h) /* by the handle: a dlsym(RTLD_DEFAULT) hit would pin the library */
        *(void **)&tbapi_start_ = dlsym(h, "tbprof_start");
    else
        tbapi_init();
    if (ready) {
        printf("ready %d\n", (int)getpid());
        fflush(stdout);
    }
    if (gate) {
        char line[64];
        if (!fgets(line, sizeof(line), stdin))
            return 4;
    }
    int i = 0;
    for (; i < nsteps && !got_int; i++) {
        if (i == at && do_exit) {
            fflush(stdout);
            if (hard)
                _exit(code);
            if (!from_thread)
                exit(code);
            pthread_t t;
            pthread_create(&t, NULL, exiter, NULL);
        }
        tb_step();
        if (i == at && do_close && h) {
            int st = tb_start(300);
            tbapi_start_ = NULL;
            printf("start %d dlclose %d\n", st, dlclose(h));
            fflush(stdout);
            h = NULL;
            lib = NULL;
        }
        if (i == at) {
            if (nthreads)
                churn_threads(nthreads);
            if (nforks)
                forks(nforks, do_exec, "/proc/self/exe");
            if (pk)
                parallel_steps(pk, ps, api);
            fflush(stdout);
        }
        work(ms);
    }
    if (lib) {
        int st = tb_start(0);
        printf("secure %d agent_thread %d socket %d start %d\n", (int)getauxval(AT_SECURE), agent_thread_seen(),
               socket_seen(), st);
        if (st == 0)
            tb_stop();
    }
    printf("done %d status %d\n", i, code);
    fflush(stdout);
    return code;
}
