/* fast_clock.c - an LD_PRELOAD shim (listed before libtbprof.so) whose
 * CLOCK_MONOTONIC runs TBTEST_CLOCK_SPEED times as fast as the real one
 * (default 100) from the process's first look at it: minutes of a job's
 * time (and of tbprof's timeouts on it) pass in seconds. Only for jobs
 * whose own waits are timed by that clock (the steps program's work) and
 * captures without the CPU sampler (perf stamps its samples itself). */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static _Atomic int64_t base = -1;

__attribute__((visibility("default"))) int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc != 0 || id != CLOCK_MONOTONIC)
        return rc;
    static int64_t speed;
    if (!speed) {
        const char *v = getenv("TBTEST_CLOCK_SPEED");
        speed = v && atoll(v) > 0 ? atoll(v) : 100;
    }
    int64_t now = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec, b = -1;
    if (!atomic_compare_exchange_strong(&base, &b, now))
        now = b + (now - b) * speed;
    ts->tv_sec = now / 1000000000;
    ts->tv_nsec = now % 1000000000;
    return rc;
}
