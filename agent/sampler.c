/* sampler.c - placeholder until CPU sampling lands (issue 6). */
#include "sampler.h"

#include <errno.h>

static int cpu_start(void *ctx, const tb_capture_info *info, const char **why)
{
    (void)ctx;
    (void)info;
    *why = "CPU sampling not built yet";
    return -ENOSYS;
}

static tb_source cpu = {.name = "cpu", .start = cpu_start};

tb_source *tb_cpu_source(void) { return &cpu; }
