/* gpu.c - placeholder until CUPTI tracing lands (issue 5). */
#include "gpu.h"

#include <errno.h>

static int gpu_start(void *ctx, const tb_capture_info *info, const char **why)
{
    (void)ctx;
    (void)info;
    *why = "GPU tracing not built yet";
    return -ENOSYS;
}

static tb_source gpu = {.name = "gpu", .start = gpu_start};

tb_source *tb_gpu_source(void) { return &gpu; }
