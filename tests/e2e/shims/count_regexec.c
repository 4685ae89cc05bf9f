/* count_regexec.c - an LD_PRELOAD shim (listed before libtbprof.so) that
 * counts the process's regexec() calls and writes "regexec_calls=N" to
 * stderr at exit: what a TBPROF_NVTX_STEP=/regex/ pattern costs each NVTX
 * range, counted rather than timed. */
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <dlfcn.h>

static atomic_long calls;

__attribute__((visibility("default"))) int regexec(const regex_t *re, const char *s, size_t n, regmatch_t m[n],
                                                   int flags)
{
    static int (*real)(const regex_t *, const char *, size_t, regmatch_t[], int);
    if (!real)
        real = (int (*)(const regex_t *, const char *, size_t, regmatch_t[], int))dlsym(RTLD_NEXT, "regexec");
    atomic_fetch_add(&calls, 1);
    return real(re, s, n, m, flags);
}

__attribute__((destructor)) static void report(void)
{
    char buf[64];
    int len = snprintf(buf, sizeof(buf), "regexec_calls=%ld\n", atomic_load(&calls));
    if (write(2, buf, (size_t)len) < 0)
        return;
}
