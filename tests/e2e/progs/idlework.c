/* idlework.c - a thread/malloc/syscall-heavy workload that also marks steps,
 * for the idle-overhead benchmark (tests/bench/bench_idle.sh):
 *   idlework [threads] [iterations per thread]
 * Each thread does malloc/free of varied sizes, getppid() and clock_gettime
 * syscalls, short-lived threads are created and joined by the main thread,
 * and the main thread calls tbprof_step() once per outer iteration. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"

static long iters = 200000;
static volatile long sink;

static void *churn(void *arg)
{
    unsigned seed = (unsigned)(size_t)arg;
    long acc = 0;
    for (long i = 0; i < iters; i++) {
        size_t sz = 16 + (rand_r(&seed) % 4096);
        char *p = malloc(sz);
        if (p) {
            p[0] = (char)i;
            acc += p[0];
            free(p);
        }
        if ((i & 15) == 0)
            acc += syscall(SYS_getppid);
        if ((i & 63) == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            acc += ts.tv_nsec & 1;
        }
    }
    sink += acc;
    return NULL;
}

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        iters = atol(argv[2]);
    if (nthreads > 64)
        nthreads = 64;
    tbapi_init();
    pthread_t th[64];
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, churn, (void *)(size_t)(i + 1));
    /* the "training loop": steps, plus thread create/join churn */
    for (long s = 0; s < iters / 10; s++) {
        tb_step();
        if ((s & 255) == 0) {
            pthread_t t;
            if (pthread_create(&t, NULL, nothing, NULL) == 0)
                pthread_join(t, NULL);
        }
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    printf("%ld\n", (long)(sink & 1));
    return 0;
}
