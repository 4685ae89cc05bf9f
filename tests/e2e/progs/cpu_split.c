/* cpu_split.c - threads with a known split of CPU time between two named
 * functions, for the CPU sampler's accuracy tests.
 *
 *   cpu_split [-t THREADS] [-m CAPTURE_MS] [-l LATE_FROM_MS,LATE_TO_MS] [-n] [-w ROUNDS]
 *
 * Every worker loops over burn_a(6 units) then burn_b(4 units): the two run
 * the same loop body, so 60% of the workers' CPU time is in burn_a and 40% in
 * burn_b. One more worker ("late") is created LATE_FROM_MS into the capture
 * and ends at LATE_TO_MS; it names itself only after 60 ms of work, as
 * threads that set their name once set up do. The capture runs through the
 * tbprof C API (no-op without the preload). Prints "worker TID", "late TID",
 * "capture BEGIN_NS END_NS" (epoch ns), "pid PID", "burns N" and "spent
 * NS_A NS_B": the workers' CPU time measured in burn_a and burn_b, the split
 * the samples should give back (load on the machine can move it off 60/40,
 * as it can the samples). -n: no capture (for benchmarks,
 * then -m is the run time). -w: fixed work instead of fixed time (each
 * worker does ROUNDS rounds, the capture spans them; for benchmarks).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"

static atomic_int stop_all;
static __thread volatile double sink; /* per thread: no data race between workers */
static __thread volatile long burns;
static atomic_long total_burns;
static atomic_llong spent_a, spent_b; /* ns of thread CPU time, all workers */

__attribute__((noinline, noipa)) void store_result(double x) { sink = x; }

/* The same body in both; the call at the end makes them non-leaf functions
 * (with a frame pointer when built with -fno-omit-frame-pointer) and the
 * increment after it keeps that call from becoming a tail call. */
#define BURN_BODY(k)                                                       \
    double x = sink;                                                       \
    for (long i = 0; i < iters; i++)                                       \
        x = x * 1.0000001 + (k);                                           \
    store_result(x);                                                       \
    burns++;

__attribute__((noinline, noipa)) void burn_a(long iters) { BURN_BODY(1.0) }
__attribute__((noinline, noipa)) void burn_b(long iters) { BURN_BODY(2.0) }

#define UNIT 100000 /* a round of 10 units is a few ms: longer than the sampling period, no aliasing */

static long fixed_rounds; /* -w */

typedef struct wargs {
    atomic_int stop;
    const char *name;
    atomic_int tid;
    int name_after_ms; /* work this long before pthread_setname_np */
} wargs;

static int64_t now_ns(int clk);

__attribute__((noinline, noipa)) void *worker(void *arg)
{
    wargs *w = arg;
    int64_t named_at = now_ns(CLOCK_MONOTONIC) + (int64_t)w->name_after_ms * 1000000;
    int named = 0;
    int64_t in_a = 0, in_b = 0;
    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    for (long r = 0; !atomic_load(&stop_all) && !atomic_load(&w->stop); r++) {
        if (!named && now_ns(CLOCK_MONOTONIC) >= named_at) {
            pthread_setname_np(pthread_self(), w->name);
            named = 1;
        }
        if (fixed_rounds && r >= fixed_rounds)
            break;
        int64_t t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        burn_a(6 * UNIT);
        int64_t t1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        burn_b(4 * UNIT);
        int64_t t2 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        in_a += t1 - t0;
        in_b += t2 - t1;
    }
    atomic_fetch_add(&total_burns, burns);
    atomic_fetch_add(&spent_a, in_a);
    atomic_fetch_add(&spent_b, in_b);
    return NULL;
}

static int64_t now_ns(int clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    int nthreads = 3, ms = 1500, late_from = 300, late_to = 900, capture = 1, opt;
    while ((opt = getopt(argc, argv, "t:m:l:nw:")) != -1) {
        switch (opt) {
        case 't': nthreads = atoi(optarg); break;
        case 'm': ms = atoi(optarg); break;
        case 'l':
            if (sscanf(optarg, "%d,%d", &late_from, &late_to) != 2)
                return 2;
            break;
        case 'n': capture = 0; break;
        case 'w': fixed_rounds = atol(optarg); break;
        default:
            fprintf(stderr, "usage: cpu_split [-t N] [-m MS] [-l FROM,TO] [-n]\n");
            return 2;
        }
    }
    if (nthreads < 1 || nthreads > 64)
        return 2;
    tbapi_init();
    wargs w[65];
    pthread_t th[65];
    static char names[65][16];
    for (int i = 0; i < nthreads; i++) {
        snprintf(names[i], sizeof(names[i]), "worker%u", (unsigned)i % 100u); /* nthreads <= 64 */
        w[i] = (wargs){.name = names[i]};
        pthread_create(&th[i], NULL, worker, &w[i]);
    }
    sleep_ms(50);
    int64_t begin = now_ns(CLOCK_REALTIME);
    if (capture && tb_start(0) < 0)
        fprintf(stderr, "cpu_split: tbprof_start failed (no preload?)\n");
    int late_started = 0, late_done = 0;
    wargs late = {.name = "late", .name_after_ms = 60};
    pthread_t late_th;
    if (fixed_rounds) {
        for (int i = 0; i < nthreads; i++)
            pthread_join(th[i], NULL);
        int64_t end = now_ns(CLOCK_REALTIME);
        if (capture)
            tb_stop();
        printf("work_ns %lld\n", (long long)(end - begin));
        return 0;
    }
    for (int t = 0; t < ms; t += 5) {
        if (!late_started && late_from >= 0 && t >= late_from) {
            pthread_create(&late_th, NULL, worker, &late);
            late_started = 1;
        }
        if (late_started && !late_done && t >= late_to) {
            atomic_store(&late.stop, 1);
            pthread_join(late_th, NULL);
            late_done = 1;
        }
        sleep_ms(5);
    }
    if (late_started && !late_done) {
        atomic_store(&late.stop, 1);
        pthread_join(late_th, NULL);
    }
    int64_t end = now_ns(CLOCK_REALTIME);
    if (capture)
        tb_stop();
    atomic_store(&stop_all, 1);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        printf("worker %d\n", atomic_load(&w[i].tid));
    }
    if (late_started)
        printf("late %d\n", atomic_load(&late.tid));
    printf("capture %lld %lld\n", (long long)begin, (long long)end);
    printf("pid %d\n", (int)getpid());
    printf("burns %ld\n", atomic_load(&total_burns));
    printf("spent %lld %lld\n", (long long)atomic_load(&spent_a), (long long)atomic_load(&spent_b));
    fflush(stdout);
    return 0;
}
