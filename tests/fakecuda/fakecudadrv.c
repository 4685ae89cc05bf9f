/* fakecudadrv.c - a stand-in libcuda.so.1 with two functions, for tests of
 * tbprof's CUPTI detach: after a capture the agent calls the driver's
 * cuDriverGetVersion (only when libcuda is already loaded) so that CUPTI's
 * API-exit callback, where it finalizes CUPTI, runs on the agent thread.
 * Here that call is reported to the fake libcupti (tbfake_cuda_api) as a
 * returning driver API call, the way CUPTI would call its subscriber back.
 * cuThreadExchangeStreamCaptureMode swaps a per-thread mode and logs each
 * call in the fake libcupti's call log (tbfake_report).
 */
#include <dlfcn.h>
#include <stdio.h>

#define EXPORT __attribute__((visibility("default")))
#define DRIVER_API_DOMAIN 1        /* CUPTI_CB_DOMAIN_DRIVER_API */
#define CBID_cuDriverGetVersion 2u /* CUPTI_DRIVER_TRACE_CBID_cuDriverGetVersion */

/* A function of the fake libcupti, where it is loaded (the agent loads it
 * at its first capture, and it stays). */
static void *fake_cupti_sym(const char *name)
{
    void *h = dlopen("libcupti.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return NULL;
    void *f = dlsym(h, name);
    dlclose(h);
    return f;
}

/* This thread's stream-capture interaction mode (CUDA's default: global),
 * swapped as the driver does; each call logged to the fake libcupti. */
static __thread int capture_mode;

EXPORT int cuThreadExchangeStreamCaptureMode(int *mode)
{
    if (!mode)
        return 1;
    int old = capture_mode;
    capture_mode = *mode;
    *mode = old;
    void (*rep)(const char *) = (void (*)(const char *))fake_cupti_sym("tbfake_report");
    if (rep) {
        char line[64];
        snprintf(line, sizeof(line), "capture_mode %d was %d", capture_mode, old);
        rep(line);
    }
    return 0;
}

EXPORT int cuDriverGetVersion(int *version)
{
    if (!version)
        return 1; /* CUDA_ERROR_INVALID_VALUE */
    *version = 13000;
    int (*api)(int, unsigned) = (int (*)(int, unsigned))fake_cupti_sym("tbfake_cuda_api");
    if (api)
        api(DRIVER_API_DOMAIN, CBID_cuDriverGetVersion);
    return 0;
}
