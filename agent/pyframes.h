/* pyframes.h - names for the Python frames a capture's trampoline missed.
 *
 * The perf trampoline (pytramp.h) names the Python calls made while it is
 * on. Frames already running when a capture turns it on (`<module>`,
 * main(), a training loop written out in a function) run on in interpreter
 * activations (`_PyEval_EvalFrameDefault` called from C, not from a
 * trampoline), and would show as the interpreter. So at that moment the
 * main thread, holding the GIL, takes a snapshot of its frame list (what
 * sys._getframe() walks): each frame's `py::<qualname>:<file>`, and which
 * frames each activation runs (3.11+ runs a Python-to-Python call inline:
 * several frames to one activation; 3.10, one each).
 *
 * While the trampoline stays on, an activation that was running then can
 * end but none can begin unnamed (each new call goes through a trampoline),
 * so the unnamed activations of a main-thread sample, counted from the
 * root, are the snapshot's first groups, in order. Each but the innermost
 * is blocked in its call to the next and still runs the frames it ran; the
 * innermost may have returned from some of its inline frames since. Which
 * of those are left is read from the live frame list once per poll (before
 * that poll's samples are labelled): a frame of the snapshot is never
 * entered again, so one there at the read was there at the sample. The
 * labels are synthetic return addresses in the sample's stack, just above
 * (caller side of) the activation they ran in, named at collect.
 *
 * CPython 3.10 to 3.13, non-debug builds (the frame layouts are read from
 * their headers and checked against the live interpreter at each snapshot;
 * anything else takes none). Only the thread that took it is labelled, in
 * stacks the DWARF unwinder walked to the root (a frame-pointer chain can
 * break short of it).
 */
#ifndef TBPROF_AGENT_PYFRAMES_H
#define TBPROF_AGENT_PYFRAMES_H

#include <stddef.h>
#include <stdint.h>

/* The agent thread, once, where CPython >= 3.10 is found (pytramp.c's
 * resolve): its functions looked up (lookup: dlsym), so that the snapshot
 * takes no loader lock on the job's thread. minor: CPython's 3.<minor>. */
void tb_pyframes_resolve(void *(*lookup)(const char *name), int minor);

/* The main thread, holding the GIL, just after this call turned the
 * trampoline on (pytramp.c's sync_cb): take a snapshot, the next
 * generation. expected_evaluator: the frame evaluator the trampoline
 * installed (the interpreter's must be it); unnamed_calls: the count of
 * calls the trampoline ran without one (tb_pytramp_unnamed_calls), now. */
void tb_pyframes_take(void *expected_evaluator, uint64_t unnamed_calls);

/* The generation of the latest snapshot (0: none yet in this process). */
uint32_t tb_pyframes_generation(void);

typedef struct tb_pysnap tb_pysnap;

/* A copy of the latest snapshot when it is newer than generation `after`,
 * else NULL. The caller owns it (tb_pysnap_free). */
tb_pysnap *tb_pyframes_copy(uint32_t after);
void tb_pysnap_free(tb_pysnap *s);

/* Frames the snapshot holds; the thread it is of. */
int tb_pysnap_frames(const tb_pysnap *s);
int tb_pysnap_tid(const tb_pysnap *s);

/* Agent thread, before a poll's samples are labelled: which of the
 * snapshot's frames the thread still runs (safe reads of its frame list). */
void tb_pysnap_refresh(tb_pysnap *s);

/* named(ip, arg): 1 when the caller at return address ip is a trampoline
 * (its activation is named). */
typedef int (*tb_pysnap_named_fn)(uint64_t ip, void *arg);

/* Labels one sample: ips leaf first (n of them, room for cap), taken on
 * thread tid at time t (CLOCK_MONOTONIC ns) by an unwind that reached the
 * root. Labels go in only for the snapshot's thread, after it was taken;
 * the new count is returned (n when nothing went in). */
int tb_pysnap_label(tb_pysnap *s, int tid, int64_t t, uint64_t *ips, int n, int cap, tb_pysnap_named_fn named,
                    void *arg);

/* Synthetic addresses: one per snapshot frame, above any user address and
 * below the sampler's kernel marker. */
#define TB_PYFRAME_IP_BASE 0xfffffffe00000000ULL
static inline int tb_pyframe_ip(uint64_t addr)
{
    return addr >= TB_PYFRAME_IP_BASE && addr < TB_PYFRAME_IP_BASE + 0x10000;
}

/* The name of synthetic address addr (`py::<qualname>:<file>`), or NULL. */
const char *tb_pysnap_name(const tb_pysnap *s, uint64_t addr);

/* A fork child: the parent's snapshot is not its own. */
void tb_pyframes_atfork_child(void);

/* Tests: a snapshot built from a description of frames, bottom first:
 * names[i], group[i] (activation index from the root, non-decreasing),
 * for thread tid from time t; eval_lo..eval_hi the evaluator's code. The
 * refresh of such a snapshot leaves every frame live unless
 * tb_pysnap_set_live_for_test says otherwise. */
tb_pysnap *tb_pysnap_for_test(int tid, int64_t t, uint64_t eval_lo, uint64_t eval_hi, const char *const *names,
                              const int *group, int n);
/* Tests: the innermost live frame is frame index `top` (-1: none found
 * but the root; -2: the walk failed), read at read_at, and the same at
 * the read before (at the snapshot's time). */
void tb_pysnap_set_live_for_test(tb_pysnap *s, int top, int64_t read_at);
/* Tests: the read before found `top`, at read_at. */
void tb_pysnap_set_prev_for_test(tb_pysnap *s, int top, int64_t read_at);
/* Tests: the C stack the snapshot saw, which a sample's must match: the
 * root's return address, each activation's caller's (caller[g]) and the
 * call site each but the innermost is blocked at (eval[g]). */
void tb_pysnap_set_anchors_for_test(tb_pysnap *s, uint64_t root, const uint64_t *caller, const uint64_t *eval);
/* Tests: a snapshot whose C-stack walk saw only its `seen` innermost
 * activations, stopping at return address `last`, keeps the groups below
 * that it shares with `old`, and old's anchors (1), or is refused (0). */
int tb_pysnap_inherit_for_test(tb_pysnap *s, const tb_pysnap *old, int seen, uint64_t last);
/* Tests: the refresh of a tb_pysnap_for_test snapshot reads a frame list
 * in this process's memory instead, laid out as CPython 3.13's (code at
 * 0, previous frame at 8, owner byte at 70; the thread state's word
 * *current: the current frame): frame i of the snapshot is frames[i]
 * (its code and link as they are now), the evaluator's word *evaluator. */
void tb_pysnap_watch_for_test(tb_pysnap *s, const uint64_t *current, const uint64_t *evaluator,
                              const void *const *frames);

#endif
