/* sampler.h - the CPU sampling source (perf_event + unwinding). */
#ifndef TBPROF_AGENT_SAMPLER_H
#define TBPROF_AGENT_SAMPLER_H

#include "source.h"

/* tb_capture_info.cpu_mode */
typedef enum tb_cpu_mode {
    TB_CPU_STACKCOPY = 0, /* user regs + stack copy, unwound with libunwind (default) */
    TB_CPU_FP = 1,        /* frame-pointer callchains (cheap) */
} tb_cpu_mode;

tb_source *tb_cpu_source(void);

#endif
