/* summary.h - the figures `tbprof summary` shows, computed from one tb_space
 * (one host / rank): steps and their GPU busy / copy / idle split, kernel
 * statistics, copies by direction, top CPU functions, drops, overhead and
 * warnings. Pure analysis: no I/O, testable on spaces built in memory.
 *
 * Definitions
 * - Step: a /host:* event with stat _r != 0 (xprof's step root), numbered by
 *   its step_num (or iter_num) stat, else by order. Two roots with the same
 *   number (from two sources) are one step spanning both.
 * - GPU activity: events on /device:GPU:* planes that are kernels, memcpys
 *   or memsets (by category, by the kernel_details / memcpy_details /
 *   Memset_details stat, or by a "Memcpy"/"Memset" name prefix).
 * - GPU busy in a window: the length of the union of all activity intervals
 *   (every GPU of the host) clipped to the window; idle = window - busy.
 *   H2D / D2H time: the union of copies of that direction, clipped.
 *   Unions are built once by sorting (O(n log n)); each window then costs
 *   O(log n + intervals inside it).
 * - NVTX ranges: /host:* events whose category is user_annotation (what
 *   tbprof records from NVTX, and CUPTI's marker records), grouped by name.
 *   A range's GPU work: the GPU activity whose correlation id is a CUDA
 *   call made inside the range on its thread (ranges.h), nested ranges
 *   included; each piece of work counts once per range name. Apart, GPU
 *   time by innermost range: each piece of work once, to its nvtx_range.
 * - GPU work by launching function: GPU time by launching stack
 *   (tb_folded_add_gpu) credited to one frame per stack: its deepest Python
 *   frame (py::...), else its deepest frame; calls without sampled frames
 *   and GPU work without its call are totalled apart. Only with CPU samples.
 * - Syncs: the host's waits for the GPU, from the sync records on the
 *   /device:GPU:* "CUDA sync" lines (not Stream Wait Event: the host does
 *   not wait), each credited like GPU work by launching function to the
 *   frame of the call that waited.
 * - GPU memory: per allocator_name, the count and bytes of MemoryAllocation
 *   and MemoryDeallocation events on /host:* lines, the largest
 *   peak_bytes_in_use / bytes_allocated, and the total after the last one.
 * - GPU idle by cause: each gap between GPU activity (all GPUs of the host
 *   together; the first from the capture's first event) is split by the
 *   activity that ends it and the end of the CUDA call that launched it
 *   (joined by correlation id): until that call's end the GPU waited for
 *   the CPU to launch work (idle_cpu: a host-bound step); from it to the
 *   activity's start the work was queued and not running (idle_queued:
 *   launch latency, waits on events or other streams). Work that starts
 *   before its call returns (a synchronous copy, a kernel picked up while
 *   cudaLaunchKernel is still returning) counts its whole gap as waiting
 *   for the CPU: CUPTI records when a call began and ended, not when its
 *   work was enqueued, and the end is the latest that can have been. A
 *   gap whose next activity has no call in the profile, and the time
 *   after the last activity, are in neither.
 *   While the GPU waited for the CPU, the thread of that call was on CPU
 *   where its CPU sample spans cover the wait (tb_cpu_segments), else off
 *   CPU; on a host plane without CPU samples, unknown.
 * - Communication: kernels of collective libraries, by name
 *   (tb_kernel_is_comm: NCCL's, and all_reduce / all_gather /
 *   reduce_scatter / all_to_all kernels of others). In a window: comm =
 *   the union of their intervals; overlapped = the part of it during which
 *   some other kernel (compute) ran on a GPU of the host; exposed = comm -
 *   overlapped, the time the step waited on communication alone. Copies
 *   and memsets are not compute.
 * - Copy direction: from the event name (MemcpyH2D, ...HtoD, ...) or from
 *   memcpy_details' kind_src/kind_dst (pageable/pinned = host,
 *   device/array/managed = device).
 *
 * Strings in a tb_summary point into the space: keep the space alive.
 */
#ifndef TBPROF_AGENT_SUMMARY_H
#define TBPROF_AGENT_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include "folded.h"
#include "trace.h"

typedef enum tb_copy_dir {
    TB_COPY_H2D = 0,
    TB_COPY_D2H,
    TB_COPY_D2D,
    TB_COPY_P2P,
    TB_COPY_OTHER,
    TB_COPY_NDIR
} tb_copy_dir;

const char *tb_copy_dir_name(tb_copy_dir d); /* "H2D", "D2H", "D2D", "P2P", "other" */

typedef struct tb_sum_step {
    int64_t num;
    int64_t start_ns, dur_ns;
    int64_t gpu_busy_ns; /* union of GPU activity inside the step */
    int64_t h2d_ns, d2h_ns;
    int64_t gpu_idle_ns; /* dur - busy */
    int64_t comm_ns, comm_exposed_ns; /* communication, and the part without compute */
    int64_t idle_cpu_ns, idle_queued_ns; /* GPU idle: waiting for a launch; launched work not running */
} tb_sum_step;

/* Events of one name: a kernel, or an NVTX range. */
typedef struct tb_sum_named {
    const char *name;
    uint64_t count;
    int64_t total_ns, min_ns, max_ns;
    double occ_pct;     /* kernels: mean occ_pct over launches that report it; -1: none do */
    uint64_t occ_count; /* kernels: launches that report it */
    /* kernels, with steps: the launches made inside a step (the launching
     * call's start in it; the kernel's own start without a call in the
     * profile) and their durations summed. A capture by time or trigger
     * also holds kernels before its first step and after its last: per-step
     * figures divide these, not count and total_ns. */
    uint64_t step_count;
    int64_t step_ns;
    uint64_t gpu_count; /* ranges: GPU activity launched inside (see above) */
    int64_t gpu_ns;     /* ranges: the sum of its durations */
} tb_sum_named;

typedef struct tb_sum_copy {
    uint64_t count, bytes;
    int64_t total_ns; /* sum of durations */
} tb_sum_copy;

/* One GPU memory allocator of the memory timeline ("GPU_0_device"): its
 * MemoryAllocation / MemoryDeallocation events on /host:* (stats.h). */
typedef struct tb_sum_memory {
    const char *allocator;
    uint64_t allocs, frees;
    uint64_t alloc_bytes, free_bytes;
    int64_t peak_bytes; /* largest peak_bytes_in_use (or bytes_allocated) seen */
    int64_t last_bytes; /* bytes_allocated after the last event; -1: none said */
    int64_t last_ns;    /* when that event was */
} tb_sum_memory;

/* Time credited to one CPU frame: GPU time it launched (launchers), or the
 * GPU's wait for the CPU while it ran (wait_frames) */
typedef struct tb_sum_frame {
    const char *name;
    int64_t ns;
} tb_sum_frame;

typedef struct tb_sum_counter {
    const char *plane; /* plane name */
    const char *name;  /* stat name (tbprof_*) */
    int64_t value;
} tb_sum_counter;

typedef struct tb_summary {
    const char *host; /* first hostname in the space, else NULL */
    int64_t begin_ns, end_ns; /* span of all events */
    size_t ngpus;             /* /device:GPU:* planes */
    uint64_t gpu_events;      /* kernels + copies + memsets */

    tb_sum_step *steps; /* by start time */
    size_t nsteps;
    int64_t step_mean_ns, step_min_ns, step_max_ns; /* 0 without steps */
    /* sums over steps (or over the whole capture when there are no steps) */
    int64_t window_ns, gpu_busy_ns, h2d_ns, d2h_ns, gpu_idle_ns;
    int64_t comm_ns, comm_exposed_ns;
    int64_t idle_cpu_ns, idle_queued_ns;
    /* CUDA calls in the profile that launched GPU work (by correlation id),
     * and the sum of their durations: the host's cost of launching */
    uint64_t launch_calls;
    int64_t launch_call_ns;
    /* While the GPU waited for the CPU (idle_cpu_ns, see above): the thread
     * of the call that ended each wait, by its CPU samples (tb_cpu_segments):
     * on CPU, credited by frame (its deepest Python frame, else its leaf);
     * off CPU (no sample: blocked, sleeping, in the kernel); or unsampled
     * (a host without CPU samples, or a thread without one in the
     * capture). The three add up to idle_cpu_ns. */
    int64_t wait_on_cpu_ns, wait_off_cpu_ns, wait_unsampled_ns;
    tb_sum_frame *wait_frames; /* the on-CPU part by frame, by ns descending */
    size_t nwait_frames;

    /* communication kernels (see above): launches and summed durations */
    uint64_t comm_kernels;
    int64_t comm_kernel_ns;

    tb_sum_named *kernels; /* by total time, descending */
    size_t nkernels;
    int64_t kernel_total_ns;

    /* NVTX ranges and marks (user annotations on /host:* lines), by name,
     * by total time descending; nested ranges each count in full */
    tb_sum_named *ranges;
    size_t nranges;
    uint64_t range_events;
    uint64_t range_gpu_events; /* GPU activity launched inside some range */
    /* GPU activity by its nvtx_range stat (the innermost range open at its
     * launch, ranges.h): each piece of work once ("self" GPU time: with
     * torch's op ranges, GPU time by op), by GPU time descending */
    tb_sum_named *gpu_ranges;
    size_t ngpu_ranges;
    int64_t gpu_in_range_ns, gpu_outside_ns; /* GPU activity with and without one */

    tb_sum_copy copies[TB_COPY_NDIR];
    uint64_t memsets;
    int64_t memset_ns;

    tb_sum_memory *memory; /* GPU memory allocators, by name */
    size_t nmemory;

    tb_func_stat *funcs; /* CPU functions by self samples, descending */
    size_t nfuncs;
    uint64_t cpu_samples; /* total samples in the CPU sample spans */

    tb_sum_frame *launchers; /* GPU work by launching function, by ns descending */
    size_t nlaunchers;
    int64_t launched_ns;  /* all GPU time in the launcher figures */
    int64_t unsampled_ns; /* of it: calls without a sampled frame around them */
    int64_t no_call_ns;   /* of it: GPU work whose call is not in the profile */

    /* The host's waits for the GPU: sync records (Stream/Event/Context Sync
     * on the "CUDA sync" lines, tb_folded_add_syncs) that waited, their
     * summed time, and that time by the frame of the call that waited,
     * credited as launchers are */
    uint64_t syncs;
    int64_t sync_ns, sync_unsampled_ns, sync_no_call_ns;
    tb_sum_frame *sync_frames; /* by ns descending */
    size_t nsync_frames;

    tb_sum_counter *counters; /* numeric tbprof_* plane stats (drops, samples) */
    size_t ncounters;
    int64_t overhead_ns; /* tbprof_agent_overhead_ns; -1 when absent */
    const char *trigger; /* tbprof_trigger, or NULL */
    int64_t rank, world_size; /* tbprof_rank / tbprof_world_size; -1 when absent */
    tb_sum_counter *infos; /* other string tbprof_* stats (cpu mode, ...): */
    const char **info_values; /* infos[i].name = info_values[i] */
    size_t ninfos;

    const char **warnings; /* XSpace warnings and errors, *_off_reason stats */
    size_t nwarnings;
} tb_summary;

/* The part of the GPU's waits for the CPU that CPU samples explain (on or
 * off CPU); 0 when the launching threads were not sampled. */
static inline int64_t tb_sum_wait_sampled_ns(const tb_summary *m)
{
    return m->wait_on_cpu_ns + m->wait_off_cpu_ns;
}

/* Analyse `s` (sorted in place first). 0 or -ENOMEM; on error *out is
 * zeroed and nothing leaks. */
int tb_summarize(tb_space *s, tb_summary *out);
void tb_summary_free(tb_summary *sum);

/* Length of the union of the intervals [start, start+dur) that lies inside
 * [lo, hi), for `iv` sorted and merged by tb_intervals_merge. */
typedef struct tb_interval {
    int64_t start, end;
} tb_interval;
/* Sort and merge overlapping/touching intervals in place; returns the new
 * count. O(n log n). */
size_t tb_intervals_merge(tb_interval *iv, size_t n);
int64_t tb_intervals_overlap(const tb_interval *merged, size_t n, int64_t lo, int64_t hi);
/* Length of the time inside [lo, hi) covered by both merged lists. */
int64_t tb_intervals_both(const tb_interval *a, size_t na, const tb_interval *b, size_t nb, int64_t lo,
                          int64_t hi);

/* 1 when a kernel of this name is a collective communication kernel:
 * "nccl" anywhere in it (any case), or one of allreduce, all_reduce,
 * allgather, all_gather, reducescatter, reduce_scatter, alltoall,
 * all_to_all (any case). */
int tb_kernel_is_comm(const char *name);

/* Parse "key:value" out of a details string ("regs:32 ... occ_pct:50.5"):
 * 1 and *v set when present. */
int tb_details_num(const char *details, const char *key, double *v);
int tb_details_str(const char *details, const char *key, char *buf, size_t n);

#endif
