/* dlopen_burn.c - loads a library after its capture started and burns CPU
 * in it, for the CPU sampler's test of objects loaded mid-capture (a
 * PyTorch job loads cuBLAS at its first matmul, Python extension modules
 * at their import).
 *
 *   dlopen_burn LIBRARY [MS [LIBRARY2]]
 *
 * Starts a capture through the tbprof C API (no-op without the preload),
 * waits 100 ms, dlopen()s LIBRARY (tests/e2e/progs/dlburn/dlburn.c) and
 * calls its lib_burn() from caller_in_main() for MS ms of CPU time
 * (default 1000), then stops the capture. With LIBRARY2: after LIBRARY's
 * turn it is dlclose()d (prints "unloaded" when it went away), 100 ms
 * later LIBRARY2 is loaded and its lib_burn() called for MS ms more
 * (prints "same_address 1" when it was mapped where LIBRARY was).
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tbapi.h"

static int64_t now_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ms of this thread's CPU time (as many samples on a loaded machine as on
 * an idle one), at most 20x that of wall time */
__attribute__((noinline, noipa)) void caller_in_main(void (*burn)(long), int ms)
{
    int64_t cpu_until = now_ns(CLOCK_THREAD_CPUTIME_ID) + (int64_t)ms * 1000000;
    int64_t until = now_ns(CLOCK_MONOTONIC) + (int64_t)ms * 20000000;
    while (now_ns(CLOCK_THREAD_CPUTIME_ID) < cpu_until && now_ns(CLOCK_MONOTONIC) < until)
        burn(2000000);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen_burn LIBRARY [MS]\n");
        return 2;
    }
    int ms = argc > 2 ? atoi(argv[2]) : 1000;
    tbapi_init();
    if (tb_start(0) < 0)
        fprintf(stderr, "dlopen_burn: tbprof_start failed (no preload?)\n");
    struct timespec ts = {0, 100000000};
    nanosleep(&ts, NULL);
    void *h = dlopen(argv[1], RTLD_NOW);
    void (*burn)(long) = NULL;
    if (h)
        *(void **)&burn = dlsym(h, "lib_burn");
    if (!burn) {
        fprintf(stderr, "dlopen_burn: %s\n", dlerror());
        return 1;
    }
    caller_in_main(burn, ms);
    if (argc > 3) {
        Dl_info di;
        void *base = dladdr((void *)burn, &di) ? di.dli_fbase : NULL;
        dlclose(h);
        void *still = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
        printf("unloaded %d\n", still == NULL);
        nanosleep(&ts, NULL);
        h = dlopen(argv[3], RTLD_NOW);
        *(void **)&burn = h ? dlsym(h, "lib_burn") : NULL;
        if (!burn) {
            fprintf(stderr, "dlopen_burn: %s\n", dlerror());
            return 1;
        }
        printf("same_address %d\n", dladdr((void *)burn, &di) && di.dli_fbase == base);
        caller_in_main(burn, ms);
    }
    tb_stop();
    printf("loaded %s\n", argv[1]);
    return 0;
}
