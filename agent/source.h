/* source.h - what a data source (CUPTI GPU tracing, the CPU sampler) gives
 * the agent's capture state machine.
 *
 * The agent owns the capture lifecycle (agent/capture.c): on a trigger it
 * calls start() on each enabled source, poll() periodically from the agent
 * thread while capturing, stop() at the end, then collect() to translate
 * what was recorded into the tb_space being written, and release() unless
 * the process is exiting. All of these run on the agent thread (start may
 * also run on the thread calling tbprof_start()).
 *
 * A source that cannot work (no libcupti, perf_event refused, another CUPTI
 * subscriber) returns a negative errno from start() and sets *why to a short
 * static or source-owned reason ("libcupti.so not found"); the agent warns
 * once, records the reason in the output (XSpace warnings and a plane stat),
 * and captures without it. Sources never abort and never block the job.
 */
#ifndef TBPROF_AGENT_SOURCE_H
#define TBPROF_AGENT_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

typedef struct tb_capture_info {
    int64_t begin_ns;      /* epoch ns when the capture started */
    size_t buffer_bytes;   /* this source's share of TBPROF_BUFFER_MB */
    unsigned cpu_hz;       /* TBPROF_CPU_HZ */
    int cpu_mode;          /* tb_cpu_mode (sampler.h) */
    int nvtx_expected;     /* NVTX calls will come even if none came yet (TBPROF_TORCH_OPS, tbprof_expect_nvtx) */
    int threads_hooked;    /* thread_created() hears of the job's new threads (pthread_create) */
    int py_trampoline;     /* CPython's perf trampoline on for the capture (TBPROF_PY_TRAMPOLINE) */
    int64_t poll_work_ns;  /* most time one CPU poll spends draining; 0: the default (tests set it) */
} tb_capture_info;

typedef struct tb_source {
    const char *name; /* "gpu", "cpu" */
    void *ctx;
    int (*start)(void *ctx, const tb_capture_info *info, const char **why);
    void (*poll)(void *ctx);                   /* may be NULL */
    void (*stop)(void *ctx);                   /* disable + flush */
    int (*collect)(void *ctx, tb_space *space); /* translate, then free capture data */
    /* after collect, when the process is not exiting: let go of what the
     * source keeps between captures (CUPTI: detach). May be NULL. */
    void (*release)(void *ctx);
    void (*atfork_child)(void *ctx);           /* forget everything; may be NULL */
    /* mid-capture, agent thread: the GPU source started late (the process
     * loaded CUDA during the capture) and takes its share of
     * TBPROF_BUFFER_MB back from a source that was handed it. From now on
     * grow within `bytes`, or within what is held already where that is
     * more; returns the budget kept. May be NULL (keeps all it had). */
    size_t (*rebudget)(void *ctx, size_t bytes);
    void (*thread_created)(void *ctx, int tid); /* may be NULL */
} tb_source;

#endif
