/* cudasteps.h - steps from CUDA: cudaProfilerStart/Stop ranges (cuda_hooks.c)
 * and NVTX ranges whose name matches TBPROF_NVTX_STEP (nvtx_inject.c).
 *
 * Both feed the agent's one step counter (tb_agent_step), like tbprof_step():
 * a range start is a step boundary. A range end closes that step: when it is
 * the last step of a TBPROF_STEPS window being captured, the capture stops
 * there (so the profile ends where the range ended, not at the next start).
 * Idle cost: an atomic increment and load per range start, an atomic load per
 * range end; no lock, no CUPTI.
 */
#ifndef TBPROF_PRELOAD_CUDASTEPS_H
#define TBPROF_PRELOAD_CUDASTEPS_H

#include <stdint.h>

#include "config.h"

/* Preload constructor: read the mode and pattern from c; sets
 * NVTX_INJECTION64_PATH to this library when TBPROF_NVTX_STEP is set and the
 * variable is free. */
void tb_cudasteps_init(const tb_config *c);

/* A step range of source src (TB_STEP_CUDA_PROFILER, TB_STEP_NVTX) began:
 * returns the step number (has_num: that number), or a negative errno when
 * the boundary is ignored (another source counts steps). */
int64_t tb_cudasteps_begin(int src, int has_num, int64_t num);

/* The range that began step `step` ended (also tbprof_step_end(), for the
 * Python helper's framework annotations). */
void tb_cudasteps_end(int64_t step);

/* cuda_hooks.c: set the TBPROF_CUDA_STEPS mode (on: the exported wrappers count). */
void tb_cuda_hooks_init(const tb_config *c);

/* nvtx_inject.c: compile the pattern, claim NVTX_INJECTION64_PATH (for
 * TBPROF_NVTX_STEP and TBPROF_NVTX). */
void tb_nvtx_init(const tb_config *c);
/* 1 when tbprof records NVTX ranges (TBPROF_NVTX=on and the injection is
 * ours); else 0, with *why = the reason each profile should state (another
 * tool such as nsys holds NVTX_INJECTION64_PATH), or NULL when there is
 * nothing to say: TBPROF_NVTX=off, or libcupti holds it (CUPTI then records
 * the ranges as markers). */
int tb_nvtx_recording_available(const char **why);

#endif
