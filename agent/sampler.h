/* sampler.h - the CPU sampling source (perf_event + unwinding).
 *
 * While a capture runs, every thread of the process has a perf_event
 * (PERF_COUNT_SW_CPU_CLOCK, period 1e9/cpu_hz ns of the thread's CPU time,
 * timestamps on CLOCK_MONOTONIC), user and kernel mode; where
 * kernel.perf_event_paranoid refuses kernel mode (>= 2 without CAP_PERFMON)
 * the first refusal switches the capture to user space only. Threads alive at
 * start() get one at once; threads created later are found by poll(), which
 * rescans /proc/self/task (see README "CPU sampling" for why not inherit).
 * poll() drains the per-thread ring buffers on the agent thread and, in
 * TB_CPU_STACKCOPY mode, unwinds the copied user stacks there (unwind.h);
 * stacks are interned, so memory grows with distinct stacks, not samples,
 * and is capped by tb_capture_info.buffer_bytes (samples beyond it are
 * dropped and counted as lost).
 *
 * Output encoding (collect): on each thread's line of /host:CPU
 * (tb_host_line), consecutive samples of the thread are merged into nested
 * spans, a flame chart over time: a span is one frame at one depth, open for
 * as long as consecutive samples share the same frames from the root down to
 * it. Span names are function names ("burn_a", "std::vector<int>::push_back",
 * "py::work:/path/app.py" for Python, "[libfoo.so]" / "[unknown]" when no
 * symbol covers the address). A sample taken in kernel mode (a system call,
 * a page fault) has the user stack it was taken on behalf of with
 * TB_CPU_KERNEL_FRAME as its leaf. Metadata category TB_CAT_CPU_SAMPLE. A span
 * covers [first sample time - period, last sample time] (each sample stands
 * for one period of CPU time ending at its timestamp); a gap of more than
 * TB_CPU_GAP_PERIODS periods (the thread was off CPU) closes every span.
 *
 * Span stats:
 *   "samples"       (uint64) samples taken while this span was open: the
 *                   frame's inclusive ("total") count for this stretch.
 *   "self_samples"  (uint64, present only when > 0) samples in which this
 *                   frame was the leaf: the frame's exclusive ("self") count.
 * Per-function counts over a capture: self = sum of self_samples over its
 * spans; total = sum of samples over its spans that have no enclosing span
 * of the same name on the line (so recursion is counted once). The sum of
 * all self_samples equals the plane stat tbprof_cpu_samples minus samples
 * dropped by the space's event cap and minus those of spans the agent trims
 * for starting after the stop request (samples taken between the request
 * and the agent thread stopping the sampler). No span starts before
 * tb_capture_info.begin_ns.
 *
 * Plane stats on /host:CPU: TB_ST_SAMPLES (samples recorded),
 * TB_ST_SAMPLES_LOST (lost by the kernel: PERF_RECORD_LOST, plus dropped by
 * the buffer cap), TB_ST_UNWIND_FAILED (samples whose stack walk stopped
 * early: copy too short, no unwind info), and the ones below.
 */
#ifndef TBPROF_AGENT_SAMPLER_H
#define TBPROF_AGENT_SAMPLER_H

#include "source.h"

/* tb_capture_info.cpu_mode */
typedef enum tb_cpu_mode {
    TB_CPU_STACKCOPY = 0, /* user regs + stack copy, unwound with libunwind (default) */
    TB_CPU_FP = 1,        /* frame-pointer callchains (cheap) */
} tb_cpu_mode;

/* Default rate when tb_capture_info.cpu_hz is 0 (see README for why). */
#define TB_CPU_DEFAULT_HZ 499
/* Bytes of user stack copied per sample in TB_CPU_STACKCOPY mode. */
#define TB_CPU_STACK_BYTES 16384
/* How often the agent should call poll() while capturing (ms). */
#define TB_CPU_POLL_MS 10
/* Spans close when a thread's next sample is this many periods later. */
#define TB_CPU_GAP_PERIODS 3
/* Most frames kept per sample (CPython under its perf trampoline spends
 * ~4 native frames per Python call: ~120 Python frames). */
#define TB_CPU_MAX_FRAMES 512

/* Span stats (see above) and extra plane stats. */
#define TB_ST_CPU_SPAN_SAMPLES "samples"
#define TB_ST_CPU_SPAN_SELF "self_samples"
#define TB_ST_CPU_HZ "tbprof_cpu_hz"
#define TB_ST_CPU_MODE "tbprof_cpu_mode" /* "stackcopy" or "fp" */
/* "user and kernel", or "user space only (...why...)" */
#define TB_ST_CPU_TIME "tbprof_cpu_time"
/* the leaf frame of samples taken in kernel mode */
#define TB_CPU_KERNEL_FRAME "[kernel]"
#define TB_ST_CPU_THREADS "tbprof_cpu_threads"                   /* threads sampled */
#define TB_ST_CPU_THREADS_UNSAMPLED "tbprof_cpu_threads_unsampled" /* fd/memlock limits; each thread once */

tb_source *tb_cpu_source(void);

/* Tests: each perf_event_open first asks fn(attr) (a struct
 * perf_event_attr *), which returns 0 to let it go on or an errno to
 * refuse it with, as a sandbox might; NULL: none. */
void tb_sampler_refuse_for_test(int (*fn)(const void *attr));

#endif
