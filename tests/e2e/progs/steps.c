/* steps.c - a training-loop stand-in for the agent's e2e tests and the demo.
 *
 *   steps [-n steps] [-m ms_per_step] [-M ms_last_step] [-t threads] [-N] [-o OFF] [-a A,B] [-s]
 *         [-f] [-e] [-X step] [-x code] [-r] [-C] [-G] [-A] [-R P] [-D dir] [-O] [-L step]
 *
 *   -n   number of steps (default 30); step i calls tbprof_step() (or with
 *        -N tbprof_step_num(i), twice: the duplicate must merge)
 *   -o   with -N, number step i as OFF+i (a job resumed from a checkpoint
 *        at global step OFF); -s prints that number
 *   -R   at each step divisible by P where a new profile has been written
 *        since the last print (tbprof_last_profile() changed) and no capture
 *        is on, print "mem <profiles> <VmRSS kB> <open fds>": what the job
 *        holds between captures, for tests of many captures in one process
 *        (with windows "A-B/P", 1 < A: steps before the next window arms)
 *   -m   milliseconds of work per step (compute + malloc), default 5
 *   -M   a job that slows down: step i works -m + (M - m) * i / (n - 1) ms
 *   -t   extra worker threads doing malloc/compute while the loop runs
 *   -a   API capture: tbprof_start(0) just before step A's boundary,
 *        tbprof_stop() just before step B+1's
 *   -s   print the epoch-ns times taken just before and just after each
 *        step's tbprof_step() call: "step N T0 T1", and around each
 *        tbprof_stop() call: "stop T0 T1" (stdout)
 *   -f   fork a child at step 1 that works 200 ms without steps and exits 0
 *   -e   at step 1, fork + exec this program with "-n 8 -m 2 -x 0"
 *   -X   exit() with the -x code at the start of step X (mid-capture)
 *   -x   exit status (default 0)
 *   -r   print "ready <pid>" once the loop starts
 *   -O   before the loop, hand the API numbers at the edge of int64 and
 *        print what came back: "edge step_num(INT64_MAX)=R next=S
 *        start(INT64_MAX/1000)=T" (then tbprof_stop())
 *   -D   chdir(dir) before the loop (a job that changes its working
 *        directory after start-up)
 *   -T   install the job's own SIGTERM handler: it ends the loop, exit 7
 *   -C   like a CUDA runtime initialised at start: register an atexit
 *        handler that tears the (fake) GPU contexts down
 *        (tbfake_cuda_teardown), as libcudart does; with -L, at step L+1
 *        (a runtime that registers it once GPU tracing came up)
 *   -G   "launch GPU work" in the first step of each capture (for the fake
 *        libcupti's TBFAKE_CUPTI_AT_LAUNCH mode, which stamps its scripted
 *        records at that call, as real CUPTI stamps work inside the step that
 *        launched it): with -a, wait until tbprof_capturing() after
 *        tbprof_start(); in a step where tbprof_capturing() is true, call the
 *        fake's tbfake_cupti_launch() until GPU tracing is on (bounded, 30 s)
 *   -L   at the start of step L, once tbprof_capturing(), dlopen
 *        ("libcuda.so.1", or the library $TBTEST_CUDA_LIB names; A:B:...
 *        one at each step from L on): a job that comes to CUDA during a
 *        capture (-G launches from then on)
 *   -A   make one CUDA runtime call per step (the fake libcupti's
 *        tbfake_cuda_api, once the agent has loaded it), as a CUDA job
 *        does: CUPTI calls its subscriber back at its exit when asked to;
 *        after the last step, go on calling until tbprof has let CUPTI go
 *        (no longer subscribed; bounded, 30 s), as a longer job would
 * At the end it prints "done <steps> last=<tbprof_last_profile()>".
 */
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"
#include "progutil.h"

static atomic_int stop_workers;
static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}
static _Thread_local volatile double sink; /* per thread: workers run work() too */


/* ~ms of CPU work with some allocation */
static void work(double ms)
{
    int64_t end = now_ns(CLOCK_MONOTONIC) + (int64_t)(ms * 1e6);
    double acc = 0;
    while (now_ns(CLOCK_MONOTONIC) < end) {
        char *p = malloc(4096);
        if (p) {
            memset(p, 1, 4096);
            acc += p[100];
            free(p);
        }
        for (int i = 1; i < 2000; i++)
            acc += 1.0 / i;
    }
    sink = acc;
}

/* -A: one CUDA runtime call returning (cudaLaunchKernel's callback id) */
static void cuda_call(void)
{
    void *h = dlopen("libcupti.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return;
    int (*f)(int, unsigned) = (int (*)(int, unsigned))dlsym(h, "tbfake_cuda_api");
    if (f)
        f(2 /* CUPTI_CB_DOMAIN_RUNTIME_API */, 211);
    dlclose(h);
}

/* -A after the loop: one more call; 1 once the fake has no subscriber */
static int cupti_let_go(void)
{
    cuda_call();
    void *h = dlopen("libcupti.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return 1;
    void (*f)(int *, int *, unsigned long long *, unsigned long long *, unsigned long long *);
    *(void **)&f = dlsym(h, "tbfake_cupti_state");
    int sub = 0, nen;
    unsigned long long fl, dl, dr;
    if (f)
        f(&sub, &nen, &fl, &dl, &dr);
    dlclose(h);
    return !sub;
}

/* -C: the runtime's atexit teardown, in the fake libcupti if it is loaded
 * by then (the agent loads it at the first capture) */
static void cuda_teardown(void)
{
    void *h = dlopen("libcupti.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return;
    void (*f)(void) = (void (*)(void))dlsym(h, "tbfake_cuda_teardown");
    if (f)
        f();
    dlclose(h);
}

/* tbprof_stop(), with -s the times just before and after it */
static void stop_printed(int print)
{
    int64_t t0 = now_ns(CLOCK_REALTIME);
    tb_stop();
    if (print)
        printf("stop %lld %lld\n", (long long)t0, (long long)now_ns(CLOCK_REALTIME));
}

/* VmRSS in kB, and the number of open file descriptors */
static void print_mem(int profiles)
{
    long rss = -1;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            rss = atol(line + 6);
    if (f)
        fclose(f);
    int fds = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        fds += e->d_name[0] != '.';
    if (d)
        closedir(d);
    printf("mem %d %ld %d\n", profiles, rss, fds - 1); /* less the one opendir holds */
}

static void *worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_workers))
        work(1);
    return NULL;
}

int main(int argc, char **argv)
{
    int nsteps = 30, nthreads = 0, use_num = 0, print_steps = 0, do_fork = 0, do_exec = 0, ready = 0;
    int gpu = 0, launched = 0, api_calls = 0, mem = 0, profiles = 0, edge = 0, teardown = 0;
    char last[4096] = "";
    double ms = 5, ms_last = -1;
    long api_a = -1, api_b = -1, exit_at = -1, off = 0, cuda_at = -1;
    int code = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:m:M:t:No:a:sfeX:x:rTCGAR:D:OL:")) != -1) {
        switch (opt) {
        case 'n': nsteps = atoi(optarg); break;
        case 'm': ms = atof(optarg); break;
        case 'M': ms_last = atof(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'N': use_num = 1; break;
        case 'o': off = atol(optarg); break;
        case 'a': sscanf(optarg, "%ld,%ld", &api_a, &api_b); break;
        case 's': print_steps = 1; break;
        case 'f': do_fork = 1; break;
        case 'e': do_exec = 1; break;
        case 'X': exit_at = atol(optarg); break;
        case 'x': code = atoi(optarg); break;
        case 'r': ready = 1; break;
        case 'T': signal(SIGTERM, on_term); break;
        case 'G': gpu = 1; break;
        case 'A': api_calls = 1; break;
        case 'R': mem = atoi(optarg); break;
        case 'C': teardown = 1; break;
        case 'O': edge = 1; break;
        case 'L': cuda_at = atol(optarg); break;
        case 'D':
            if (chdir(optarg) < 0) {
                perror("chdir");
                return 2;
            }
            break;
        default: fprintf(stderr, "usage: see steps.c\n"); return 2;
        }
    }
    tbapi_init();
    /* -L: the libraries of $TBTEST_CUDA_LIB (A:B:...), one a step from L on;
     * cuda_last: the step that loads the last of them (the driver) */
    char cuda_libs[8][256];
    int ncuda_libs = 0;
    const char *ls = getenv("TBTEST_CUDA_LIB");
    for (ls = ls && *ls ? ls : "libcuda.so.1"; *ls && ncuda_libs < 8; ncuda_libs++) {
        size_t len = strcspn(ls, ":");
        snprintf(cuda_libs[ncuda_libs], sizeof(cuda_libs[0]), "%.*s", (int)len, ls);
        ls += len + (ls[len] == ':');
    }
    long cuda_last = cuda_at + ncuda_libs - 1;
    if (teardown && cuda_at < 0)
        atexit(cuda_teardown);
    if (edge) {
        int64_t r = tb_step_num(INT64_MAX), s = tb_step();
        int t = tb_start(INT64_MAX / 1000);
        printf("edge step_num(INT64_MAX)=%lld next=%lld start(INT64_MAX/1000)=%d\n", (long long)r, (long long)s, t);
        fflush(stdout);
        tb_stop();
    }
    pthread_t th[64];
    if (nthreads > 64)
        nthreads = 64;
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    if (ready) {
        printf("ready %d\n", (int)getpid());
        fflush(stdout);
    }
    pid_t child = -1;
    for (int i = 0; i < nsteps; i++) {
        if (got_term) {
            code = 7;
            nsteps = i;
            break;
        }
        if (api_a >= 0 && i == api_b + 1)
            stop_printed(print_steps);
        if (i == exit_at) {
            fflush(stdout);
            exit(code);
        }
        if (api_a >= 0 && i == api_a && tb_start(0) == 0 && gpu)
            wait_until(tb_capturing, "tbprof_capturing()");
        if (i == cuda_at)
            wait_until(tb_capturing, "tbprof_capturing() (-L)");
        if (cuda_at >= 0 && i >= cuda_at && i <= cuda_last && !dlopen(cuda_libs[i - cuda_at], RTLD_NOW | RTLD_GLOBAL))
            fprintf(stderr, "-L: %s\n", dlerror());
        if (teardown && cuda_at >= 0 && i == cuda_at + 1)
            atexit(cuda_teardown);
        int64_t t0 = now_ns(CLOCK_REALTIME);
        if (use_num) {
            tb_step_num(off + i);
            tb_step_num(off + i); /* duplicate: merged */
        } else {
            tb_step();
        }
        if (print_steps)
            printf("step %ld %lld %lld\n", (use_num ? off : 0) + i, (long long)t0, (long long)now_ns(CLOCK_REALTIME));
        if (gpu && tb_capturing() && i >= cuda_last) {
            if (!launched)
                wait_until(fake_launch, "GPU tracing (tbfake_cupti_launch)");
            launched = 1;
        } else {
            launched = 0;
        }
        if (api_calls)
            cuda_call();
        if (mem > 0 && i % mem == 0 && strcmp(tb_last(), last) && !tb_capturing()) {
            snprintf(last, sizeof(last), "%s", tb_last());
            print_mem(++profiles);
        }
        if (i == 1 && do_fork) {
            child = fork();
            if (child == 0) {
                work(200);
                _exit(0);
            }
        }
        if (i == 1 && do_exec) {
            child = fork();
            if (child == 0) {
                execl("/proc/self/exe", argv[0], "-n", "8", "-m", "2", "-x", "0", (char *)NULL);
                _exit(127);
            }
        }
        work(ms_last >= 0 && nsteps > 1 ? ms + (ms_last - ms) * i / (nsteps - 1) : ms);
    }
    if (api_a >= 0 && api_b + 1 >= nsteps)
        stop_printed(print_steps);
    if (api_calls)
        wait_until(cupti_let_go, "tbprof to let CUPTI go (-A)");
    if (print_steps)
        printf("end %lld\n", (long long)now_ns(CLOCK_REALTIME));
    if (child > 0) {
        int st;
        waitpid(child, &st, 0);
        printf("child %d status %d\n", (int)child, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    atomic_store(&stop_workers, 1);
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    printf("done %d last=%s\n", nsteps, tb_last());
    return code;
}
