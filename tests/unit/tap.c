#include "tap.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int tap_pass, tap_fail;

void tap_failed(const char *file, int line, const char *expr, const char *fmt, ...)
{
    tap_fail++;
    fprintf(stderr, "FAIL %s:%d: %s", file, line, expr);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
}

int tap_done(void)
{
    printf("%d passed, %d failed\n", tap_pass, tap_fail);
    return tap_fail ? 1 : 0;
}

int tap_limit_memory(long extra_kb, struct rlimit *was)
{
    long vm_kb = -1;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmSize:", 7))
            vm_kb = atol(line + 7);
    if (f)
        fclose(f);
    if (vm_kb < 0 || getrlimit(RLIMIT_AS, was) != 0)
        return -1;
    struct rlimit low = {(rlim_t)(vm_kb + extra_kb) * 1024, was->rlim_max};
    return setrlimit(RLIMIT_AS, &low) == 0 ? 0 : -2;
}
