/* stats.h - stat and event names tbprof writes, in one place.
 *
 * Names that xprof understands follow the public xplane_schema / reference
 * GPU tracer (openxla/xla xla/tsl/profiler/utils/xplane_schema.cc and
 * xla/backends/profiler/gpu/cupti_collector.cc); tbprof's own start with
 * "tbprof_". Writers and tools key off these, so add a name here rather
 * than spelling it at a call site.
 */
#ifndef TBPROF_AGENT_STATS_H
#define TBPROF_AGENT_STATS_H

/* steps: xprof takes a host event with _r=1 as a step root, step_num as its
 * number; a root named "train..." (no '/') is an explicit step marker. */
#define TB_EV_STEP "train"
#define TB_ST_IS_ROOT "_r"
#define TB_ST_STEP_NUM "step_num"
#define TB_ST_ITER_NUM "iter_num"
#define TB_ST_GROUP_ID "group_id"
/* xprof's context links (TraceMe producer/consumer): an event with _ct/_c
 * becomes a child of the event with the same _pt/_p, so a step root that
 * produces a context takes calls on other threads into its step */
#define TB_ST_PRODUCER_TYPE "_pt"
#define TB_ST_PRODUCER_ID "_p"
#define TB_ST_CONSUMER_TYPE "_ct"
#define TB_ST_CONSUMER_ID "_c"
#define TB_CONTEXT_GENERIC 0 /* xprof's ContextType::kGeneric */

/* GPU activity (event stats) */
#define TB_ST_CORRELATION_ID "correlation_id"
#define TB_ST_CONTEXT_ID "context_id"
#define TB_ST_DEVICE_ID "device_id"
#define TB_ST_STREAM_ID "stream" /* events off their stream's line (sync, memory); the reference's kStream */
/* "regs:R static_shared:S dynamic_shared:D grid:X,Y,Z block:X,Y,Z occ_pct:P" */
#define TB_ST_KERNEL_DETAILS "kernel_details"
/* "kind_src:K kind_dst:K size:N dest:D async:A" */
#define TB_ST_MEMCPY_DETAILS "memcpy_details"
/* the reference tracer capitalises these two (xplane_schema.cc) */
#define TB_ST_MEMSET_DETAILS "Memset_details"
#define TB_ST_MEMALLOC_DETAILS "memalloc_details"
#define TB_ST_MEMFREE_DETAILS "MemFree_details"
#define TB_ST_CUDA_GRAPH_ID "cuda_graph_id"
/* the innermost NVTX range open on the launching thread when the CUDA call
 * behind this GPU event was made (ranges.h); the reference's kNVTXRange */
#define TB_ST_NVTX_RANGE "nvtx_range"

/* GPU memory timeline (host events xprof's memory profile reads: an event
 * named MemoryAllocation / MemoryDeallocation, one allocator per
 * allocator_name, int64 stats) */
#define TB_EV_MEMORY_ALLOCATION "MemoryAllocation"
#define TB_EV_MEMORY_DEALLOCATION "MemoryDeallocation"
#define TB_ST_ALLOCATOR_NAME "allocator_name"       /* "GPU_<dev>_<memory kind>" */
#define TB_ST_BYTES_ALLOCATED "bytes_allocated"     /* the allocator's total after the event */
#define TB_ST_PEAK_BYTES_IN_USE "peak_bytes_in_use" /* the largest total so far */
#define TB_ST_REQUESTED_BYTES "requested_bytes"
#define TB_ST_ALLOCATION_BYTES "allocation_bytes"
#define TB_ST_ADDR "addr"
/* tf_op: on memory events, the memory profile's "op name" (the CUDA call);
 * on kernels, copies and memsets, the innermost NVTX range around the
 * launch that is not a step range (below), so xprof's kernel stats,
 * framework op stats and its trace viewer's op line name the op (ranges.h) */
#define TB_ST_TF_OP "tf_op"
/* an NVTX range's or mark's domain, when not the default one (host events) */
#define TB_ST_NVTX_DOMAIN "tbprof_nvtx_domain"
/* 1 on an NVTX range that began a step (TBPROF_NVTX_STEP): a step, not an op */
#define TB_ST_STEP_RANGE "tbprof_step_range"

/* GPU device facts (plane stats) */
#define TB_ST_DEV_CLOCK_RATE "clock_rate"          /* kHz */
#define TB_ST_DEV_CORE_COUNT "core_count"          /* SMs */
#define TB_ST_DEV_MEM_BANDWIDTH "memory_bandwidth" /* bytes/s */
#define TB_ST_DEV_MEM_SIZE "memory_size"           /* bytes */
#define TB_ST_DEV_CC_MAJOR "compute_cap_major"
#define TB_ST_DEV_CC_MINOR "compute_cap_minor"
#define TB_ST_DEV_VENDOR "device_vendor"
#define TB_ST_DEV_NAME "gpu_device_name"

/* tbprof's own (plane stats): what was lost and why */
#define TB_ST_DROPPED "tbprof_dropped_events"        /* model/space cap */
#define TB_ST_CUPTI_DROPPED "tbprof_cupti_dropped"   /* CUPTI's own count */
#define TB_ST_POOL_EXHAUSTED "tbprof_buffer_pool_exhausted"
/* which libcupti traced: "<path> (CUPTI API <n>, <subscribe call>)" */
#define TB_ST_CUPTI_LIBRARY "tbprof_cupti_library"
#define TB_ST_CUPTI_BUFFERS "tbprof_cupti_buffers" /* buffers CUPTI filled and handed back */
#define TB_ST_CUPTI_POOL "tbprof_cupti_pool"       /* "<buffers> x <bytes>" */
/* what becomes of CUPTI after the capture: "on: ..." (detached with
 * cuptiFinalize) or "off: <why>" (unsubscribed, CUPTI stays attached) */
#define TB_ST_CUPTI_TEARDOWN "tbprof_cupti_teardown"
/* the wait at stop for GPU work still running (TBPROF_GPU_DRAIN_MS):
 * "<ms> ms, all complete" / "gave up after <ms> ms" / "skipped: <why>" */
#define TB_ST_GPU_DRAIN "tbprof_gpu_drain"
/* GPU records CUPTI handed over incomplete (work still running at the
 * forced flush): not in the profile */
#define TB_ST_GPU_INCOMPLETE "tbprof_gpu_incomplete_records"
/* CUDA-graph events (kernels, copies, graph launch calls) written without
 * correlation_id: this CUPTI numbers them wrongly after a re-attach (gpu.c);
 * written only where that applies */
#define TB_ST_GRAPH_UNCORRELATED "tbprof_cuda_graph_uncorrelated"
#define TB_ST_ODD_KERNELS "tbprof_cupti_odd_kernel_records" /* kernel records that do not read as kernels */
/* the CUDA calls not recorded (TBPROF_CUDA_API_ALL=off), space-separated */
#define TB_ST_CUDA_API_LEFT_OUT "tbprof_cuda_api_left_out"
/* buffers CUPTI still held after the forced flush (0 unless another CUPTI
 * client took over activity recording during the capture) */
#define TB_ST_CUPTI_BUFFERS_KEPT "tbprof_cupti_buffers_kept"
#define TB_ST_SAMPLES "tbprof_cpu_samples"
#define TB_ST_SAMPLES_LOST "tbprof_cpu_samples_lost"
#define TB_ST_SAMPLES_OUTSIDE "tbprof_cpu_samples_outside_window" /* taken while armed early / stopping */
#define TB_ST_UNWIND_FAILED "tbprof_unwind_failures"
/* threads whose stacks outgrew the 16 KiB copy and got a 64 KiB one (dwarf) */
#define TB_ST_DEEP_THREADS "tbprof_cpu_deep_stack_threads"
#define TB_ST_GPU_OFF_REASON "tbprof_gpu_off_reason"
#define TB_ST_CPU_OFF_REASON "tbprof_cpu_off_reason"
/* ns into the window GPU tracing began: the process loaded CUDA then */
#define TB_ST_GPU_LATE_NS "tbprof_gpu_start_delay_ns"
/* ns the window's first step boundary waited for the sources (TBPROF_START_WAIT_MS) */
#define TB_ST_START_WAIT_NS "tbprof_start_wait_ns"
#define TB_ST_NVTX_OFF_REASON "tbprof_nvtx_off_reason"
/* NVTX ranges tbprof recorded itself that did not fit (TBPROF_NVTX) */
#define TB_ST_NVTX_DROPPED "tbprof_nvtx_dropped"
#define TB_ST_TRIGGER "tbprof_trigger"               /* "steps 10-20", "signal", ... */
#define TB_ST_OVERHEAD_NS "tbprof_agent_overhead_ns"
#define TB_ST_PID "pid"                              /* host plane: the process */
#define TB_ST_RANK "tbprof_rank"                     /* host plane: $RANK, when a number */
#define TB_ST_WORLD_SIZE "tbprof_world_size"         /* host plane: $WORLD_SIZE (with RANK) */
#define TB_ST_STEPS_DROPPED "tbprof_steps_dropped"   /* step boundaries past the record cap */
#define TB_ST_STEP_SOURCE "tbprof_step_source"       /* the source steps are counted from */
#define TB_ST_STEPS_IGNORED "tbprof_steps_ignored"   /* boundaries from other sources, since start */
#define TB_ST_CAPTURE_BEGIN_NS "tbprof_capture_begin_ns" /* the window written (epoch ns) */
#define TB_ST_CAPTURE_END_NS "tbprof_capture_end_ns"

#endif
