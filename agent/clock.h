/* clock.h - tbprof's one clock.
 *
 * Every event time in a tb_space is ns since the Unix epoch. Sources read
 * CLOCK_MONOTONIC (cheap, never jumps) while capturing and convert with the
 * offset measured once per capture by tb_clock_calibrate(): the realtime clock
 * read between two monotonic reads, smallest window of a few tries.
 * perf_event samples use CLOCK_MONOTONIC directly (attr.use_clockid);
 * CUPTI timestamps are converted the same way (see cupti/).
 */
#ifndef TBPROF_AGENT_CLOCK_H
#define TBPROF_AGENT_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t tb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t tb_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Measure and remember realtime - monotonic; returns it. */
int64_t tb_clock_calibrate(void);
/* The last calibrated offset (calibrates once if never done). */
int64_t tb_clock_offset(void);
static inline int64_t tb_mono_to_epoch(int64_t mono_ns) { return mono_ns + tb_clock_offset(); }

#endif
