/* gpu.h - the GPU tracing source (CUPTI), as the agent sees it. */
#ifndef TBPROF_CUPTI_GPU_H
#define TBPROF_CUPTI_GPU_H

#include "source.h"

/* The CUPTI source; its start() dlopen()s libcupti at the first capture. */
tb_source *tb_gpu_source(void);

#endif
