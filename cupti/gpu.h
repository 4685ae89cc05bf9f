/* gpu.h - the GPU tracing source (CUPTI), as the agent sees it.
 *
 * start(): load libcupti (first capture only), subscribe, register buffer
 * callbacks, enable activity kinds. stop(): disable them, force-flush,
 * read CUPTI's dropped-record count, unsubscribe (an idle process holds no
 * CUPTI subscription and no enabled activity). collect(): translate the
 * buffers into the space and free the pool. */
#ifndef TBPROF_CUPTI_GPU_H
#define TBPROF_CUPTI_GPU_H

#include <stdint.h>

#include "source.h"

/* The CUPTI source; its start() dlopen()s libcupti at the first capture. */
tb_source *tb_gpu_source(void);

/* Numbers about the last capture (tests, logs). */
typedef struct tb_gpu_stats {
    uint64_t buffers_completed;  /* buffers CUPTI handed back with records */
    uint64_t pool_exhausted;     /* buffer requests refused: pool empty */
    uint64_t cupti_dropped;      /* records CUPTI dropped (its own count) */
    uint64_t records;            /* records translated */
    uint64_t incomplete;         /* incomplete records (work still running at the forced flush) */
    uint64_t untimed;            /* GPU work records with both timestamps 0 (CUPTI could not time them) */
    uint64_t cut_buffers, cut_bytes; /* buffers read only up to such a record; their bytes from it on */
    uint64_t buffers_kept;       /* buffers CUPTI still held after the forced flush */
    uint64_t buffers_prefaulted; /* buffers poll() faulted in before CUPTI got them */
    uint64_t graph_uncorrelated; /* CUDA-graph events written without correlation_id (gpu.c) */
    uint64_t kernels, odd_kernels; /* kernel records, and those that did not read as kernels */
    uint64_t launches;             /* kernel and graph launch calls recorded */
    int used_timestamp_callback; /* 1: CUPTI timestamps were CLOCK_MONOTONIC-based */
    uint32_t cupti_api_version;  /* cuptiGetVersion(), 0 when unknown */
    const char *subscribed_with; /* the call that subscribed ("cuptiSubscribe", ...) */
    size_t buffer_size, pool_buffers;
} tb_gpu_stats;
tb_gpu_stats tb_gpu_last_stats(void);

#endif
