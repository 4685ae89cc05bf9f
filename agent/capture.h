/* capture.h - the agent: one thread, one capture state machine.
 *
 *   idle -> armed -> capturing -> writing -> idle   (repeatable)
 *
 * armed: a trigger fired; the agent thread starts the sources (GPU, CPU).
 *   Step windows arm one step early, so sources run when the first step
 *   begins; other triggers go on to capturing once the sources are on.
 * capturing: recording; step boundaries are recorded; the agent thread
 *   polls the sources.
 * writing: the agent thread stops the sources, builds a tb_space (host plane,
 *   steps, each source's collect()), trims it to the window and writes it with
 *   tb_profile_write(). Only the agent thread writes.
 *
 * Training threads only touch the step counter (an atomic increment and an
 * atomic load when no window is near) and, near or inside a window, take a
 * mutex for a few hundred nanoseconds to record the step. They never wait on
 * the agent thread and never do I/O beyond a one-byte write to a pipe.
 */
#ifndef TBPROF_AGENT_CAPTURE_H
#define TBPROF_AGENT_CAPTURE_H

#include <stdint.h>

#include "config.h"
#include "source.h"

typedef enum tb_state {
    TB_STATE_IDLE = 0,
    TB_STATE_ARMED,
    TB_STATE_CAPTURING,
    TB_STATE_WRITING,
} tb_state;

const char *tb_state_name(int s);

/* Register a data source before tb_agent_init(). s may be NULL (a source not
 * built in); enabled = 0 with off_reason records why it is absent. */
void tb_agent_add_source(const char *name, tb_source *s, int enabled, const char *off_reason);

/* Start the agent with this config (the preload constructor). Starts the
 * agent thread when a trigger needs serving (the socket in a process with
 * threads or with TBPROF_SOCKET=on, a signal, a time window), else lazily at
 * the first trigger or the job's first thread. Disabled (no-op) when
 * disable != 0. */
int tb_agent_init(const tb_config *c, int disable);

/* Step sources. Steps are counted from one source per process: the first
 * one to mark a boundary. Boundaries from any other source are ignored
 * (counted, warned about once, and named in the profile), so two sources
 * marking the same steps (a tbprof_step() call in the loop and the PyTorch
 * optimizer hook, say) never count each step twice. */
enum {
    TB_STEP_API = 1,       /* tbprof_step(), tbprof_step_num(), Python tbprof.step() */
    TB_STEP_PYTORCH,       /* the optimizer-step hook (tbprof_step_from("pytorch")) */
    TB_STEP_CUDA_PROFILER, /* cudaProfilerStart/Stop, cuProfilerStart/Stop */
    TB_STEP_NVTX,          /* NVTX ranges matching TBPROF_NVTX_STEP */
    TB_STEP_JAX,           /* jax.profiler.StepTraceAnnotation (tbprof_step_from("jax")) */
    TB_STEP_TF,            /* tf.profiler.experimental.Trace steps (tbprof_step_from("tensorflow")) */
    TB_STEP_NSOURCES
};
const char *tb_step_source_name(int src);

/* Step boundary from source src: has_num = 0 counts on from the last step.
 * Returns the step that begins, -EBUSY when another source counts steps,
 * -EINVAL for a negative num or an unknown source. */
int64_t tb_agent_step(int src, int has_num, int64_t num);

/* A helper thread of the agent's own (detached, small stack, every signal
 * blocked; not counted as the job's by the pthread_create hook). 0 or a
 * negative errno. */
int tb_agent_spawn(void *(*fn)(void *), void *arg);
/* 1 on the agent thread (the one that starts, stops and collects sources). */
int tb_agent_on_own_thread(void);

/* The preload's pthread_create hook, after the job started a thread (not
 * called for the agent's own): the first call starts the agent thread when
 * TBPROF_SOCKET=auto left a single-threaded process without one. */
void tb_agent_thread_created(void);

/* Wake the agent thread to look at its deadlines again (any thread; one
 * byte to its pipe, never blocks). */
void tb_agent_wake(void);
/* Whether that hook sees the job's pthread_create calls (the preload says
 * so at start-up): sources may then look for new threads less often. */
void tb_agent_set_threads_hooked(int yes);

/* Start a capture now for duration_ms (0: until tb_agent_stop). Waits up to
 * 1 s for the sources to start. -EBUSY when a capture is on, -EPERM when
 * the agent is disabled. */
int tb_agent_start(int64_t duration_ms, const char *trigger);
/* Capture steps first..last (by number, as TBPROF_STEPS does): armed at
 * step first-1. -EINVAL for a bad range or a first step that has begun,
 * -EBUSY while another capture is on or waiting, -EPERM when disabled. */
int tb_agent_capture_steps(int64_t first, int64_t last, const char *trigger);
/* Step `step` ended (a range or annotation closed): when it is the last step
 * of the step window being captured (TBPROF_STEPS, or by number over the
 * socket or the API), the capture stops now, not at the next boundary.
 * Idle: one atomic load. */
void tb_agent_step_end(int64_t step);
int tb_agent_stop(void);
/* follow.c, in a fork()ed child: the parent (pid ppid) armed a capture
 * (follow.c's seq):
 * capture until tb_agent_follow_stop(), CPU only (CUDA does not survive a
 * fork), into the parent's run folder as <host>.pid<pid>. 0, -EBUSY (a
 * capture of the child's own is on), -EPERM, -EAGAIN. */
int tb_agent_follow_start(int ppid, uint32_t seq);
/* The parent's capture ended: stop the one tb_agent_follow_start began,
 * trimmed to the parent's window w (none begun: nothing written). */
struct tb_follow_window;
void tb_agent_follow_stop(const struct tb_follow_window *w);
int tb_agent_capturing(void);
/* NVTX ranges will come in later captures (tbprof_expect_nvtx). */
void tb_agent_expect_nvtx(int on);
const char *tb_agent_last_profile(void);

/* Answer one control-socket request (see ctl.h for the protocol); *pass_fd:
 * an fd to send with the answer ("follow"). */
void tb_agent_control(const char *line, char *out, size_t n, int *pass_fd);

/* Process exit (library destructor): flush a capture in progress, bounded. */
void tb_agent_exit(void);
/* _exit() in a child following its parent: its capture is stopped and
 * written, waited for up to 500 ms; then its perf map goes. Atomics, a
 * pipe write and sleeps only (a signal handler may call _exit). */
void tb_agent_follow_exit(void);

/* 1 while the process is leaving (exit, or a SIGTERM being handled):
 * sources then take no time of their own at stop. */
int tb_agent_leaving(void);

/* pthread_atfork handlers. */
void tb_agent_fork_prepare(void);
void tb_agent_fork_parent(void);
void tb_agent_fork_child(void);

/* Written by the SIGTERM / trigger-signal handlers (async-signal-safe). */
void tb_agent_signal_byte(char c);

#endif
