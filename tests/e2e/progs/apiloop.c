/* apiloop.c - back-to-back API captures: `apiloop N ms` runs N regions of
 * {tbprof_start(0); ms of work with a step marker; tbprof_stop();} with no
 * pause between them and prints "start <i> <rc>" for each, so a test can
 * check that a region right after a stop is captured, not refused. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tbapi.h"

static volatile double sink;

static void work(double ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double acc = 0;
    do {
        for (int i = 1; i < 1000; i++)
            acc += 1.0 / i;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) * 1e3 + (double)(t.tv_nsec - t0.tv_nsec) / 1e6 < ms);
    sink = acc;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 3;
    double ms = argc > 2 ? atof(argv[2]) : 5;
    tbapi_init();
    for (int i = 0; i < n; i++) {
        int rc = tb_start(0);
        printf("start %d %d\n", i, rc);
        fflush(stdout);
        tb_step_num(100 + i);
        work(ms);
        tb_step_num(200 + i);
        tb_stop();
    }
    return 0;
}
