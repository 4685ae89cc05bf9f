/* cudasteps.c - a CUDA-style loop that marks its steps with
 * cudaProfilerStart/Stop, for tests/e2e/test_agent_cudasteps.py.
 *
 *   cudasteps [-n steps] [-m ms] [-g gap_ms] [-L lib | -l lib] [-D] [-1] [-a] [-b N] [-c]
 *
 *   -n   steps (default 10): each is cudaProfilerStart(); ~ms of host work;
 *        cudaProfilerStop(); ~gap_ms of host work outside any range
 *   -m   ms of work inside each range (default 3); -g gap (default 2)
 *   -L   dlopen(lib, RTLD_GLOBAL) first (a CUDA runtime linked normally)
 *   -l   dlopen(lib, RTLD_LOCAL) first (a runtime loaded by a Python
 *        extension: invisible to RTLD_NEXT)
 *   -D   use the driver's cuProfilerStart/Stop instead
 *   -1   one range around all steps (nsys capture-range style)
 *   -a   also call tbprof_step() just before each cudaProfilerStart (two
 *        step sources marking the same steps); prints "api i RET" per call
 *   -b   benchmark: N start/stop pairs, print "bench ns_per_pair=X"
 *   -c   at the end dlclose() the library (a plugin unloaded), then call
 *        start and stop once more; prints "after dlclose start=A stop=B"
 *        (with the preload only: without it they would call unmapped code)
 * Prints "range i START_NS STOP_NS" (epoch ns, just before the start call and
 * just after the stop call) per range, then "rc start=A stop=B" (what the
 * calls returned) and "forwarded start=X stop=Y" (calls that reached the
 * library's real functions; -1 without a library).
 *
 * The CUDA functions are weak references: with libtbprof.so preloaded they
 * bind to its wrappers; without it the program calls the library's own
 * (dlsym) so it also runs, and benchmarks, without tbprof.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"
#include "tbapi.h"

extern int cudaProfilerStart(void) __attribute__((weak));
extern int cudaProfilerStop(void) __attribute__((weak));
extern int cuProfilerStart(void) __attribute__((weak));
extern int cuProfilerStop(void) __attribute__((weak));


static void work(double ms) { spin_ms(ms); }

int main(int argc, char **argv)
{
    int n = 10, driver = 0, one = 0, api = 0, close_lib = 0;
    long bench = 0;
    double ms = 3, gap = 2;
    const char *lib = NULL;
    int lib_global = 0;
    int c;
    while ((c = getopt(argc, argv, "n:m:g:L:l:D1ab:c")) != -1) {
        switch (c) {
        case 'n': n = atoi(optarg); break;
        case 'm': ms = atof(optarg); break;
        case 'g': gap = atof(optarg); break;
        case 'L': lib = optarg; lib_global = 1; break;
        case 'l': lib = optarg; lib_global = 0; break;
        case 'D': driver = 1; break;
        case '1': one = 1; break;
        case 'a': api = 1; break;
        case 'b': bench = atol(optarg); break;
        case 'c': close_lib = 1; break;
        default:
            fprintf(stderr, "usage: cudasteps [-n N] [-m ms] [-g ms] [-L lib | -l lib] [-D] [-1] [-a] [-b N] [-c]\n");
            return 2;
        }
    }
    void *h = NULL;
    if (lib) {
        h = dlopen(lib, RTLD_NOW | (lib_global ? RTLD_GLOBAL : RTLD_LOCAL));
        if (!h) {
            fprintf(stderr, "cudasteps: %s\n", dlerror());
            return 2;
        }
    }
    int (*start)(void) = driver ? cuProfilerStart : cudaProfilerStart;
    int (*stop)(void) = driver ? cuProfilerStop : cudaProfilerStop;
    if (!start && h) { /* no preload: the library's own */
        *(void **)&start = dlsym(h, driver ? "cuProfilerStart" : "cudaProfilerStart");
        *(void **)&stop = dlsym(h, driver ? "cuProfilerStop" : "cudaProfilerStop");
    }
    if (!start || !stop) {
        fprintf(stderr, "cudasteps: no cudaProfilerStart (no preload, no -L/-l)\n");
        return 2;
    }
    tbapi_init();
    int rc_start = 0, rc_stop = 0;
    if (bench > 0) {
        for (long i = 0; i < bench / 10 + 1; i++) { /* warm-up: resolve, fault in */
            start();
            stop();
        }
        int64_t t0 = now_ns(CLOCK_MONOTONIC);
        for (long i = 0; i < bench; i++) {
            rc_start |= start();
            rc_stop |= stop();
        }
        int64_t t1 = now_ns(CLOCK_MONOTONIC);
        printf("bench ns_per_pair=%.1f\n", (double)(t1 - t0) / (double)bench);
    } else if (one) {
        int64_t a = now_ns(CLOCK_REALTIME);
        rc_start = start();
        for (int i = 0; i < n; i++)
            work(ms);
        rc_stop = stop();
        int64_t b = now_ns(CLOCK_REALTIME);
        printf("range 0 %lld %lld\n", (long long)a, (long long)b);
        work(gap);
    } else {
        for (int i = 0; i < n; i++) {
            int64_t a = now_ns(CLOCK_REALTIME);
            if (api)
                printf("api %d %lld\n", i, (long long)tb_step());
            int r = start();
            if (r)
                rc_start = r;
            work(ms);
            r = stop();
            if (r)
                rc_stop = r;
            int64_t b = now_ns(CLOCK_REALTIME);
            printf("range %d %lld %lld\n", i, (long long)a, (long long)b);
            work(gap);
        }
    }
    printf("rc start=%d stop=%d\n", rc_start, rc_stop);
    int (*calls)(int) = NULL;
    if (h)
        *(void **)&calls = dlsym(h, "fakecuda_calls");
    printf("forwarded start=%d stop=%d\n", calls ? calls(driver ? 2 : 0) : -1, calls ? calls(driver ? 3 : 1) : -1);
    fflush(stdout);
    if (close_lib && h) {
        dlclose(h);
        int a = start();
        int b = stop();
        printf("after dlclose start=%d stop=%d\n", a, b);
        fflush(stdout);
    }
    return 0;
}
