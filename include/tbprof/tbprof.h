/* tbprof.h - the C API of libtbprof.so (the whole public contract).
 *
 * Works whether the library is linked in or LD_PRELOADed. Every function is
 * safe to call from any thread, cheap when no capture is armed, never blocks
 * on I/O, and returns 0 or a negative errno.
 *
 * Steps: call tbprof_step() once per training step, at the start of the step
 * (or at the end of the previous one: the same boundary). The first call
 * starts step 0; step k runs from the k-th call (counting from 0) to the next.
 * TBPROF_STEPS=10,20 captures steps 10..20 inclusive.
 */
#ifndef TBPROF_TBPROF_H
#define TBPROF_TBPROF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TBPROF_API __attribute__((visibility("default")))

/* Mark a step boundary on the calling thread: the next step begins now.
 * Returns the number of the step that begins, or -EBUSY when steps are
 * counted from another source (below). */
TBPROF_API int64_t tbprof_step(void);
/* Mark a step boundary with an explicit step number (e.g. from a framework's
 * global step); duplicates of the current number are merged. */
TBPROF_API int64_t tbprof_step_num(int64_t step);
/* tbprof_step() on behalf of a named step source: "pytorch" (the optimizer
 * hook the Python helper installs), "jax" (its jax.profiler.
 * StepTraceAnnotation hook), "tensorflow" (its tf.profiler.experimental.Trace
 * hook) or "api". -EINVAL for other names.
 *
 * Steps are counted from one source per process, the first to mark a
 * boundary: this API, a framework hook, cudaProfilerStart/Stop or
 * NVTX ranges (TBPROF_CUDA_STEPS, TBPROF_NVTX_STEP). Boundaries from the
 * others return -EBUSY and are counted in the profile (tbprof_steps_ignored),
 * so a step marked by two sources is counted once. */
TBPROF_API int64_t tbprof_step_from(const char *source);
/* tbprof_step_num() on behalf of a named step source (as above). */
TBPROF_API int64_t tbprof_step_num_from(const char *source, int64_t step);
/* Step `step` (a number a tbprof_step* call returned) ended before the next
 * one begins, as a step's trace annotation or range closes: when it is the
 * last step of a TBPROF_STEPS window being captured, the capture stops now
 * rather than at the next boundary. Negative numbers are ignored. */
TBPROF_API void tbprof_step_end(int64_t step);
/* Start a capture now, for `duration_ms` (0: until tbprof_stop()).
 * Returns once the sources are on, so the capture covers what the caller does
 * next: that can take up to about 1 s when a previous capture is still being
 * stopped or written (tbprof_stop(); tbprof_start() back to back works).
 * -EBUSY while another capture is armed or running. */
TBPROF_API int tbprof_start(int64_t duration_ms);
/* Capture steps first..last inclusive, by number, as TBPROF_STEPS does: the
 * capture arms at step first-1 and holds exactly those steps. Ranks of a job
 * that each call it with the same numbers capture the same steps (and, with a
 * job id, share a run folder). Returns at once. -EINVAL for a bad range or
 * when step `first` has begun, -EBUSY while another capture is on or waiting;
 * tbprof_stop() cancels one still waiting. */
TBPROF_API int tbprof_capture_steps(int64_t first, int64_t last);
/* Stop the capture (or cancel one waiting for its steps); the profile is
 * written by the agent thread. */
TBPROF_API int tbprof_stop(void);
/* 1 while capturing, 0 otherwise (also once the capture was asked to stop:
 * at the step after its window, by tbprof_stop(), at its deadline). */
TBPROF_API int tbprof_capturing(void);
/* NVTX ranges will come during captures even if the process has made no
 * NVTX call yet (the Python helper's torch op ranges,
 * install_torch_hook(torch_ops=True)): from the next capture on, NVTX gets
 * its memory (a quarter of TBPROF_BUFFER_MB) at the capture's start, as with
 * TBPROF_TORCH_OPS=on. 0 goes back to the configured behaviour. */
TBPROF_API void tbprof_expect_nvtx(int on);
/* Path of the last profile written, or "" (the string is the agent's). */
TBPROF_API const char *tbprof_last_profile(void);
/* In a child of a process running the agent: from now on, capture
 * whenever the parent captures, into the parent's run folder as
 * <host>.pid<pid> (CPU sampling; TBPROF_CHILDREN=on, the default). Starts
 * one small thread of the agent's in the child. In a fork()ed child it
 * reads the page the parent shares with its children; in an exec()ed one
 * (and in a worker of a Python multiprocessing forkserver, which follows
 * the forkserver's parent) that thread first asks the parent's agent for
 * the page over its control socket, and ends quietly where no agent
 * answers or TBPROF_CHILDREN is off there. The Python helper calls it in
 * every Python child forked from a preloaded Python (os.register_at_fork)
 * and in multiprocessing "spawn" workers, so data-loader workers need
 * nothing; a C program calls it in its children. 0; -ENOENT where there is
 * no parent to follow (a fork child of a parent with TBPROF_CHILDREN=off,
 * or an orphan); -EALREADY. */
TBPROF_API int tbprof_follow_parent(void);

#ifdef __cplusplus
}
#endif
#endif
