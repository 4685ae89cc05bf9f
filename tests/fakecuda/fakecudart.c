/* fakecudart.c - a stand-in libcudart.so for GPU-less tests of the
 * cudaProfilerStart/Stop step source (preload/cuda_hooks.c).
 *
 * Exports the runtime's cudaProfilerStart/Stop and the driver's
 * cuProfilerStart/Stop. Each call is counted (fakecuda_calls(i), i in the
 * order above) so a test can tell that tbprof's wrapper forwarded it, and
 * returns FAKECUDA_RC (default 0 = cudaSuccess) so it can tell that the
 * return value came back unchanged.
 */
#include <stdatomic.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

static atomic_int calls[4];

static int rc(void)
{
    const char *s = getenv("FAKECUDA_RC");
    return s ? atoi(s) : 0;
}

EXPORT int cudaProfilerStart(void)
{
    atomic_fetch_add(&calls[0], 1);
    return rc();
}

EXPORT int cudaProfilerStop(void)
{
    atomic_fetch_add(&calls[1], 1);
    return rc();
}

EXPORT int cuProfilerStart(void)
{
    atomic_fetch_add(&calls[2], 1);
    return rc();
}

EXPORT int cuProfilerStop(void)
{
    atomic_fetch_add(&calls[3], 1);
    return rc();
}

EXPORT int fakecuda_calls(int i) { return i >= 0 && i < 4 ? atomic_load(&calls[i]) : -1; }
