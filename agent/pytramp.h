/* pytramp.h - CPython's perf trampoline, on for the length of a capture.
 *
 * CPython >= 3.12 can run each Python call through a small generated
 * function (its "perf trampoline", named in /tmp/perf-<pid>.map), which
 * makes Python frames visible in native stacks: the sampler's unwinder
 * steps over them and names them `py::<function>:<file>`. It costs every
 * Python call of the job while it is on (measured here: 40-50% on a
 * call-bound loop), so tbprof does not keep it on while idle: the CPU source
 * asks for it at a capture's start and gives it back at its stop.
 *
 * Only the interpreter may switch it (sys.activate_stack_trampoline, with the
 * GIL), so a request from the agent thread is queued with Py_AddPendingCall
 * and run by the job's main thread between two bytecodes, typically within
 * microseconds; the agent never takes the GIL or waits for it. Frames
 * already running when it turns on (the main loop, `<module>`) keep no
 * trampoline; calls made after it (each step's forward, backward, data
 * loading) are named. The main thread's frames of before are named from
 * a snapshot of its frame list taken in the same call (pyframes.h).
 *
 * A trampoline that was on before the capture (PYTHONPERFSUPPORT=1, or the
 * program's own sys.activate_stack_trampoline) is left alone and stays on.
 * Python's own atexit run marks the interpreter gone (no request after it)
 * and removes the perf map we caused, once the capture has read it;
 * a fork()ed child turns off a trampoline the parent's capture had on
 * (os.register_at_fork). Every Python function is looked up with dlsym at
 * the first request.
 *
 * CPython 3.10 and 3.11 have no perf trampoline: on x86-64 tbprof brings
 * its own (pytramp.c's own_eval), a PEP 523 frame evaluator that calls
 * CPython's through a stub per code object with the bytes of 3.12's
 * trampoline, named in the same map; switched on and off per capture the
 * same way. A process without CPython >= 3.10 gets nothing.
 */
#ifndef TBPROF_AGENT_PYTRAMP_H
#define TBPROF_AGENT_PYTRAMP_H

#include <stddef.h>
#include <stdint.h>

/* Ask for the trampoline on (a capture starts) or off (it stopped). Agent
 * thread; never blocks on the interpreter. No-op outside CPython >= 3.10. */
void tb_pytramp_request(int on);

/* A stop that found another frame evaluator installed over CPython's
 * trampoline (torch.compile's, for the length of a compiled call: it puts
 * the one it replaced back after) left it on: the agent thread asks for
 * "off" again at tb_pytramp_retry_at() (CLOCK_MONOTONIC ns; 0: nothing to
 * ask) by calling tb_pytramp_retry(now), which does so when due and no
 * capture wants it on. */
int64_t tb_pytramp_retry_at(void);
void tb_pytramp_retry(int64_t now);

/* The capture that asked for the trampoline has read the perf map (its
 * collect), or never will. The map CPython wrote for our trampolines is
 * removed at Python's exit, but not before this: a capture running at exit,
 * or stopped just before it and not collected yet, still needs the names.
 * Agent thread. */
void tb_pytramp_map_done(void);

/* The process is about to die of SIGTERM (no atexit runs): the map CPython
 * wrote for our trampolines goes now. Any thread; never blocks. */
void tb_pytramp_dying(void);

/* What the trampoline did for the capture now running or just stopped, for
 * the profile (stat TB_ST_PY_TRAMPOLINE); 0 where the process has no
 * CPython >= 3.10 (nothing to say), else 1 with `out` filled. */
int tb_pytramp_describe(char *out, size_t n);

/* Whether the kernel's frame-pointer walk (TBPROF_CPU_MODE=fp) reaches the
 * trampolines: 1 where the process has a CPython >= 3.10 whose evaluator
 * (_PyEval_EvalFrameDefault) sets up a frame pointer, 0 where its does
 * not, -1 where it has none. Such an
 * interpreter was built with -fno-omit-frame-pointer (3.15's default under
 * PEP 831; Fedora's builds) or for aarch64, where compilers keep frame
 * records; each call through a trampoline then leaves its return address
 * in the chain, named from the perf map like a stack copy's. Agent
 * thread. */
int tb_pytramp_frame_pointers(void);

/* The test behind it, on a function's first n bytes: x86-64, `push %rbp;
 * mov %rsp,%rbp` first (after an endbr64); aarch64, `add x29, sp, #imm`
 * (`mov x29, sp`) among the first 16 instructions; 0 elsewhere. */
int tb_pytramp_prologue_keeps_fp(const unsigned char *code, size_t n);

/* In a fork()ed child, from the sampler's atfork handler (before any
 * Python code runs there): forget the parent's requests and CPython's
 * evaluator (the child's Python then turns a parent's trampoline off). */
void tb_pytramp_atfork_child(void);

/* Tests: look Python's functions up with `fn` instead of dlsym, and forget
 * everything (state, symbols). */
void tb_pytramp_reset_for_test(void *(*fn)(const char *name));

#define TB_ST_PY_TRAMPOLINE "tbprof_python_trampoline"

/* tb_pytramp_describe's words for a trampoline a capture turned on */
#define TB_PYTRAMP_ON_DURING                                                                         \
    "on during the capture (turned on at its start: Python frames entered before then show as the "  \
    "interpreter)"

/* Calls the trampoline ran without one of its own (3.10, 3.11: no stub
 * could be had; CPython 3.12's falls back the same way, unseen here):
 * such a call's frames show as the interpreter, and while the count does
 * not move the only unnamed activations are those of before the capture
 * (pyframes.h). Any thread. */
uint64_t tb_pytramp_unnamed_calls(void);

#endif
