/* slow_fini.c - an LD_PRELOAD shim (listed before libtbprof.so, so its
 * destructor runs after tbprof's) whose destructor prints "fini <pid>" on
 * stdout and then takes TBTEST_FINI_MS ms (default 1500): a process whose
 * exit is slow after tbprof's destructor ran (a library tearing down, CUDA
 * freeing its contexts), so a test sees what triggers do while it leaves. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((destructor)) static void slow_fini(void)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "fini %d\n", (int)getpid());
    ssize_t w = write(1, line, (size_t)n);
    (void)w;
    const char *ms = getenv("TBTEST_FINI_MS");
    long v = ms ? atol(ms) : 1500;
    struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0)
        ;
    w = write(1, "fini done\n", 10);
    (void)w;
}
