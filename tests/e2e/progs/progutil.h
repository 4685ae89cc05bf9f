/* progutil.h - small helpers shared by the e2e test programs. */
#ifndef TBPROF_TEST_PROGUTIL_H
#define TBPROF_TEST_PROGUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static inline int64_t now_ns(int clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static _Thread_local volatile double progutil_sink; /* keeps the work */

/* about ms of pure CPU work on the calling thread */
static inline void spin_ms(double ms)
{
    int64_t end = now_ns(CLOCK_MONOTONIC) + (int64_t)(ms * 1e6);
    double acc = 0;
    while (now_ns(CLOCK_MONOTONIC) < end)
        for (int i = 1; i < 2000; i++)
            acc += 1.0 / i;
    progutil_sink = acc;
}

/* Poll cond() every ms until it holds; after 30 s say so on stderr and go on. */
static inline void wait_until(int (*cond)(void), const char *what)
{
    int64_t end = now_ns(CLOCK_MONOTONIC) + 30 * (int64_t)1000000000;
    while (!cond()) {
        if (now_ns(CLOCK_MONOTONIC) > end) {
            fprintf(stderr, "gave up waiting for %s\n", what);
            return;
        }
        usleep(1000);
    }
}

#endif
