/* progutil.h - small helpers shared by the e2e test programs. */
#ifndef TBPROF_TEST_PROGUTIL_H
#define TBPROF_TEST_PROGUTIL_H

#include <stdint.h>
#include <time.h>

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

#endif
