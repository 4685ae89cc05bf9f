/* test_pyframes.c - labels for Python frames entered before a capture
 * (agent/pyframes.h): which activation of a sample gets which frames of
 * the snapshot, against a snapshot described by hand; and the refresh's
 * reads of a frame list laid out by hand in this process's memory (frames
 * returning, a failed read, a loop, a deep list, the evaluator changed).
 * The snapshot taken from a live CPython is tested end to end
 * (test_cpu_python). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pyframes.h"
#include "tap.h"
#include "util.h"

#define P(i) (TB_PYFRAME_IP_BASE + (i))
#define TID 7

/* _PyEval_EvalFrameDefault: [EVAL_LO, EVAL_HI); a trampoline's code (no
 * loaded object): [JIT_LO, JIT_HI) */
#define EVAL_LO 0x1000
#define EVAL_HI 0x2000
#define JIT_LO 0x9000
#define JIT_HI 0xa000

static int calls;
static int by_jit(uint64_t ip, void *arg)
{
    (void)arg;
    calls++;
    return ip - 1 >= JIT_LO && ip - 1 < JIT_HI;
}

/* root-first addresses -> a sample (leaf first); labelled, then back to
 * root-first in out; the new count */
static int label(tb_pysnap *s, int tid, int64_t t, const uint64_t *root_first, int n, int cap, uint64_t *out)
{
    uint64_t ips[64];
    for (int i = 0; i < n; i++)
        ips[i] = root_first[n - 1 - i];
    int m = tb_pysnap_label(s, tid, t, ips, n, cap, by_jit, NULL);
    for (int i = 0; i < m; i++)
        out[i] = ips[m - 1 - i];
    return m;
}

static int same(const uint64_t *a, int n, const uint64_t *b, int m)
{
    return n == m && memcmp(a, b, (size_t)n * sizeof(*a)) == 0;
}

/* A frame as the refresh reads it (3.13's layout: code, previous frame,
 * the owner byte at 70) */
typedef struct frame {
    uint64_t code, prev;
    unsigned char rest[56];
} frame;

static frame *link_to(frame *f, uint64_t code, const frame *prev)
{
    f->code = code;
    f->prev = (uint64_t)(uintptr_t)prev;
    return f;
}

/* The refresh against a frame list in memory: <module> calls main inline
 * (activation 0), main calls through C into step, which calls loss inline
 * (activation 1). A sample's labels say what each read found. */
static void refresh_reads(void)
{
    uint64_t probe = 42, got = 0;
    if (tb_self_read(&got, (uint64_t)(uintptr_t)&probe, 8, 0) != 0 || got != 42) {
        printf("# refresh: process_vm_readv refused here (qemu-user?): not tested\n");
        return;
    }
    static const char *const names[] = {"py::<module>:t.py", "py::main:t.py", "py::step:t.py", "py::loss:t.py"};
    static const int group[] = {0, 0, 1, 1};
    static frame f[6]; /* the four, a shim, and a frame that is none of them */
    enum { MOD, MAIN, STEP, LOSS, SHIM, OTHER };
    link_to(&f[MOD], 0xc0de0, NULL);
    link_to(&f[MAIN], 0xc0de1, &f[MOD]);
    link_to(&f[SHIM], 0, &f[MAIN]);
    f[SHIM].rest[70 - 16] = 3; /* (FRAME_OWNED_BY_CSTACK) */
    link_to(&f[STEP], 0xc0de2, &f[SHIM]);
    link_to(&f[LOSS], 0xc0de3, &f[STEP]);
    uint64_t current = (uint64_t)(uintptr_t)&f[LOSS], evaluator = 0xe7a1;
    const void *const at[] = {&f[MOD], &f[MAIN], &f[STEP], &f[LOSS]};
    tb_pysnap *s = tb_pysnap_for_test(TID, tb_mono_ns(), EVAL_LO, EVAL_HI, names, group, 4);
    tb_pysnap_watch_for_test(s, &current, &evaluator, at);
    static const uint64_t two[] = {0x501, 0x1101, 0x601, 0x1201, 0x700};
    static const uint64_t all[] = {0x501, P(0), P(1), 0x1101, 0x601, P(2), P(3), 0x1201, 0x700};
    static const uint64_t step_only[] = {0x501, P(0), P(1), 0x1101, 0x601, P(2), 0x1201, 0x700};
    uint64_t out[64];

    /* every frame live: a sample before the read gets them all, one after
     * it nothing (its frames may have returned before it) */
    int64_t t = tb_mono_ns();
    CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5); /* (no read yet) */
    tb_pysnap_refresh(s);
    int m = label(s, TID, t, two, 5, 64, out);
    CHECKF(same(out, m, all, 9), "m %d", m);
    CHECK_EQ_I(label(s, TID, tb_mono_ns() + 1, two, 5, 64, out), 5);

    /* loss returned: step alone live. A sample between the two reads may
     * have had loss still: nothing; one between this read and the next
     * that agrees: step */
    current = (uint64_t)(uintptr_t)&f[STEP];
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5);
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    m = label(s, TID, t, two, 5, 64, out);
    CHECKF(same(out, m, step_only, 8), "m %d", m);

    /* a call into loss's old slot runs other code: not the snapshot's loss */
    current = (uint64_t)(uintptr_t)link_to(&f[LOSS], 0xc0de9, &f[STEP]);
    tb_pysnap_refresh(s);
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    m = label(s, TID, t, two, 5, 64, out);
    CHECKF(same(out, m, step_only, 8), "m %d", m);

    /* a read that fails: nothing that poll; the next read's answer is
     * compared with the last one read */
    int64_t before_fail = tb_mono_ns();
    current = 0x10;
    tb_pysnap_refresh(s);
    CHECK_EQ_I(label(s, TID, before_fail, two, 5, 64, out), 5);
    current = (uint64_t)(uintptr_t)&f[STEP];
    tb_pysnap_refresh(s);
    m = label(s, TID, before_fail, two, 5, 64, out);
    CHECKF(same(out, m, step_only, 8), "m %d", m);

    /* a loop (read from a shim overwritten under the walk): no answer */
    current = (uint64_t)(uintptr_t)link_to(&f[OTHER], 0xbad, link_to(&f[SHIM], 0, &f[OTHER]));
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5);
    link_to(&f[SHIM], 0, &f[MAIN]);

    /* a recursion 2,000 deep above the snapshot's frames: not walked */
    enum { DEEP = 2000 };
    frame *deep = calloc(DEEP, sizeof(*deep));
    CHECK(deep != NULL);
    if (deep) {
        for (int i = 0; i < DEEP; i++)
            link_to(&deep[i], 0xd0, i ? &deep[i - 1] : &f[STEP]);
        current = (uint64_t)(uintptr_t)&deep[DEEP - 1];
        t = tb_mono_ns();
        tb_pysnap_refresh(s);
        CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5);
        current = (uint64_t)(uintptr_t)&deep[600]; /* 601 above: walked */
        tb_pysnap_refresh(s);
        t = tb_mono_ns();
        tb_pysnap_refresh(s);
        m = label(s, TID, t, two, 5, 64, out);
        CHECKF(same(out, m, step_only, 8), "m %d", m);
        free(deep);
    }

    /* the evaluator replaced (another tool's, or ours cut off): no more
     * labels, even once it is back */
    current = (uint64_t)(uintptr_t)&f[STEP];
    evaluator = 0xe7a2;
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5);
    evaluator = 0xe7a1;
    tb_pysnap_refresh(s);
    t = tb_mono_ns();
    tb_pysnap_refresh(s);
    CHECK_EQ_I(label(s, TID, t, two, 5, 64, out), 5);
    tb_pysnap_free(s);
}

/* A snapshot of frames in memory (names and groups as given), for inherit */
static tb_pysnap *snap_of(const char *const *names, const int *group, frame *const *fr, int n)
{
    static uint64_t current, evaluator = 0xe7a1;
    const void *at[8];
    for (int i = 0; i < n; i++)
        at[i] = fr[i];
    tb_pysnap *s = tb_pysnap_for_test(TID, 100, EVAL_LO, EVAL_HI, names, group, n);
    if (s)
        tb_pysnap_watch_for_test(s, &current, &evaluator, at);
    return s;
}

/* A capture begun inside a function an earlier capture's trampoline
 * called: the C-stack walk stops at that trampoline, and the groups below
 * it keep the last snapshot's checks where they are its groups. */
static void inherit_checks(void)
{
    static frame mod, main_, outer, phase, inner, other;
    link_to(&mod, 0xc0de0, NULL);
    link_to(&main_, 0xc0de1, &mod);
    link_to(&outer, 0xc0de2, &main_);
    link_to(&phase, 0xc0de3, &main_);
    link_to(&inner, 0xc0de4, &phase);
    link_to(&other, 0xc0de5, &main_);
    /* the last snapshot: <module>, main inline; outer through C */
    static const char *const old_names[] = {"py::<module>:t.py", "py::main:t.py", "py::outer:t.py"};
    static const int old_group[] = {0, 0, 1};
    frame *const old_fr[] = {&mod, &main_, &outer};
    tb_pysnap *old = snap_of(old_names, old_group, old_fr, 3);
    static const uint64_t caller[] = {0x501, 0x601}, eval[] = {0x1101};
    CHECK(old != NULL);
    if (!old)
        return;
    tb_pysnap_set_anchors_for_test(old, 0x501, caller, eval);

    /* now: outer returned, phase (called by a trampoline) runs inner inline */
    static const char *const names[] = {"py::<module>:t.py", "py::main:t.py", "py::phase:t.py", "py::inner:t.py"};
    static const int group[] = {0, 0, 1, 1};
    frame *const fr[] = {&mod, &main_, &phase, &inner};
    tb_pysnap *s = snap_of(names, group, fr, 4);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 1, 0x9001), 1);
    CHECK_EQ_I(tb_pysnap_frames(s), 2);
    /* a sample: <module>/main's activation, then phase's through its
     * trampoline; its labels: those two, checked against old's anchors */
    uint64_t out[64];
    static const uint64_t sample[] = {0x501, 0x1101, 0x9001, 0x1201, 0x700};
    tb_pysnap_set_live_for_test(s, 1, 1000);
    int m = label(s, TID, 200, sample, 5, 64, out);
    static const uint64_t labelled[] = {0x501, P(0), P(1), 0x1101, 0x9001, 0x1201, 0x700};
    CHECKF(same(out, m, labelled, 7), "m %d", m);
    static const uint64_t elsewhere[] = {0x501, 0x602, 0x1101, 0x9001, 0x1201, 0x700};
    CHECK_EQ_I(label(s, TID, 200, elsewhere, 6, 64, out), 6); /* (the root's activation, another caller) */
    static const uint64_t other_root[] = {0x502, 0x1101, 0x9001, 0x1201, 0x700};
    CHECK_EQ_I(label(s, TID, 200, other_root, 5, 64, out), 5);
    tb_pysnap_free(s);

    /* refused: */
    s = snap_of(names, group, fr, 4);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 1, 0x501), 0); /* the walk reached the root */
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 0, 0x9001), 0); /* (it saw none) */
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, NULL, 1, 0x9001), 0);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 2, 0x9001), 0); /* the stop below every group */
    tb_pysnap_free(s);
    /* a group below the stop that is not old's: the walk stopped above an
     * activation begun since (other, from main through C) */
    static const char *const names3[] = {"py::<module>:t.py", "py::main:t.py", "py::other:t.py",
                                         "py::phase:t.py"};
    static const int group3[] = {0, 0, 1, 2};
    frame *const fr3[] = {&mod, &main_, &other, &phase};
    s = snap_of(names3, group3, fr3, 4);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 1, 0x9001), 0);
    tb_pysnap_free(s);
    /* both of old's groups below the stop: kept, outer with them */
    static const char *const names4[] = {"py::<module>:t.py", "py::main:t.py", "py::outer:t.py",
                                         "py::phase:t.py"};
    frame *const fr4[] = {&mod, &main_, &outer, &phase};
    s = snap_of(names4, group3, fr4, 4);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 1, 0x9001), 1);
    CHECK_EQ_I(tb_pysnap_frames(s), 3);
    tb_pysnap_free(s);
    /* the root's activation since ran more inline (main called outer
     * inline, which returned; now phase through C): main's group has one
     * frame more, kept as the last */
    static const char *const names5[] = {"py::<module>:t.py", "py::main:t.py", "py::other:t.py",
                                         "py::phase:t.py"};
    static const int group5[] = {0, 0, 0, 1};
    s = snap_of(names5, group5, fr3, 4);
    CHECK_EQ_I(tb_pysnap_inherit_for_test(s, old, 1, 0x9001), 1);
    CHECK_EQ_I(tb_pysnap_frames(s), 3);
    tb_pysnap_free(s);
    tb_pysnap_free(old);
}

int main(void)
{
    /* <module> calls main calls outer inline (one activation); outer calls
     * through C into next, which calls gen inline; gen calls cb through C */
    static const char *const names[] = {"py::<module>:t.py", "py::main:t.py", "py::outer:t.py",
                                        "py::next:t.py",     "py::gen:t.py",  "py::cb:t.py"};
    static const int group[] = {0, 0, 0, 1, 1, 2};
    tb_pysnap *s = tb_pysnap_for_test(TID, 100, EVAL_LO, EVAL_HI, names, group, 6);
    CHECK(s != NULL);
    CHECK_EQ_I(tb_pysnap_frames(s), 6);
    uint64_t out[64];

    /* two unnamed activations: the outer one keeps all its frames (it is
     * blocked in its call to the next); the inner one, those found live */
    static const uint64_t two[] = {0x501, 0x1101, 0x601, 0x1201, 0x700};
    tb_pysnap_set_live_for_test(s, 4, 1000); /* gen live */
    int m = label(s, TID, 200, two, 5, 64, out);
    static const uint64_t two_all[] = {0x501, P(0), P(1), P(2), 0x1101, 0x601, P(3), P(4), 0x1201, 0x700};
    CHECKF(same(out, m, two_all, 10), "m %d", m);

    /* gen returned since: next alone */
    tb_pysnap_set_live_for_test(s, -1, 1000); /* none found but the root */
    m = label(s, TID, 200, two, 5, 64, out);
    static const uint64_t two_first[] = {0x501, P(0), P(1), P(2), 0x1101, 0x601, P(3), 0x1201, 0x700};
    CHECKF(same(out, m, two_first, 9), "m %d", m);

    /* the read found outer's activation innermost: the sample's second
     * one was running then only with its first frame (or ended since) */
    tb_pysnap_set_live_for_test(s, 2, 1000);
    m = label(s, TID, 200, two, 5, 64, out);
    CHECKF(same(out, m, two_first, 9), "m %d", m);

    /* an activation called by a trampoline: it and those above are named,
     * and the one below keeps the frames found live (outer returned) */
    static const uint64_t named[] = {0x501, 0x1101, 0x601, 0x9001, 0x1201, 0x9201, 0x700};
    tb_pysnap_set_live_for_test(s, 1, 1000); /* main live, outer returned */
    calls = 0;
    m = label(s, TID, 200, named, 7, 64, out);
    static const uint64_t named_out[] = {0x501, P(0), P(1), 0x1101, 0x601, 0x9001, 0x1201, 0x9201, 0x700};
    CHECKF(same(out, m, named_out, 9), "m %d", m);
    CHECK(calls >= 1);

    /* the activation lost a frame between the read before and this one:
     * how many it had at the sample is not known */
    tb_pysnap_set_prev_for_test(s, 2, 150); /* outer was live then */
    CHECK_EQ_I(label(s, TID, 200, named, 7, 64, out), 7);
    tb_pysnap_set_prev_for_test(s, 1, 150); /* the same then */
    m = label(s, TID, 200, named, 7, 64, out);
    CHECKF(same(out, m, named_out, 9), "m %d", m);
    CHECK_EQ_I(label(s, TID, 150, named, 7, 64, out), 7); /* taken before the read before */
    tb_pysnap_set_live_for_test(s, 1, 1000);

    /* the leaf is in the evaluator (its own address, not a return one) */
    static const uint64_t leaf[] = {0x501, 0x1000};
    m = label(s, TID, 200, leaf, 2, 64, out);
    static const uint64_t leaf_out[] = {0x501, P(0), P(1), 0x1000};
    CHECKF(same(out, m, leaf_out, 4), "m %d", m);
    static const uint64_t past[] = {0x501, 0x2000}; /* (one past its end) */
    CHECK_EQ_I(label(s, TID, 200, past, 2, 64, out), 2);

    /* nothing goes in: */
    tb_pysnap_set_live_for_test(s, 4, 1000);
    CHECK_EQ_I(label(s, TID + 1, 200, two, 5, 64, out), 5); /* another thread */
    CHECK_EQ_I(label(s, TID, 99, two, 5, 64, out), 5);      /* a sample before the snapshot */
    CHECK_EQ_I(label(s, TID, 200, two, 5, 9, out), 5);      /* no room */
    CHECK_EQ_I(label(s, TID, 200, two, 5, 10, out), 10);    /* (just room) */
    static const uint64_t four[] = {0x501, 0x1101, 0x601, 0x1201, 0x601, 0x1301, 0x601, 0x1401};
    CHECK_EQ_I(label(s, TID, 200, four, 8, 64, out), 8); /* more unnamed activations than it had */
    static const uint64_t one[] = {0x501, 0x1101, 0x601};
    CHECK_EQ_I(label(s, TID, 200, one, 3, 64, out), 3); /* the read found one this sample had left */
    tb_pysnap_set_live_for_test(s, 4, 150);
    CHECK_EQ_I(label(s, TID, 200, two, 5, 64, out), 5); /* a sample taken after the read */
    CHECK_EQ_I(label(s, TID, 150, two, 5, 64, out), 10);
    tb_pysnap_set_live_for_test(s, -2, 1000);           /* the read failed */
    CHECK_EQ_I(label(s, TID, 200, two, 5, 64, out), 5);
    static const uint64_t none[] = {0x501, 0x601, 0x9001, 0x1201};
    tb_pysnap_set_live_for_test(s, 4, 1000);
    CHECK_EQ_I(label(s, TID, 200, none, 4, 64, out), 4); /* no unnamed activation */
    CHECK_EQ_I(tb_pysnap_label(NULL, TID, 200, out, 4, 64, by_jit, NULL), 4);

    /* the C stack the snapshot saw: a sample's must match it at the root,
     * at each activation's caller and where each outer one is blocked */
    {
        static const uint64_t caller[] = {0x501, 0x601, 0x9001}, eval[] = {0x1101, 0x1201};
        tb_pysnap_set_anchors_for_test(s, 0x501, caller, eval);
        tb_pysnap_set_live_for_test(s, 4, 1000);
        m = label(s, TID, 200, two, 5, 64, out);
        CHECKF(same(out, m, two_all, 10), "m %d", m); /* (it matches) */
        static const uint64_t other_root[] = {0x502, 0x1101, 0x601, 0x1201, 0x700};
        CHECK_EQ_I(label(s, TID, 200, other_root, 5, 64, out), 5); /* an unwind that stopped short of the root */
        static const uint64_t other_caller[] = {0x501, 0x1101, 0x602, 0x1201, 0x700};
        CHECK_EQ_I(label(s, TID, 200, other_caller, 5, 64, out), 5); /* another caller's activation */
        static const uint64_t other_site[] = {0x501, 0x1102, 0x601, 0x1201, 0x700};
        CHECK_EQ_I(label(s, TID, 200, other_site, 5, 64, out), 5); /* the outer one blocked elsewhere */
        static const uint64_t inner_site[] = {0x501, 0x1101, 0x601, 0x1299, 0x700};
        m = label(s, TID, 200, inner_site, 5, 64, out); /* (the innermost runs on: anywhere) */
        static const uint64_t inner_all[] = {0x501, P(0), P(1), P(2), 0x1101, 0x601, P(3), P(4), 0x1299, 0x700};
        CHECKF(same(out, m, inner_all, 10), "m %d", m);
        static const uint64_t zero[3] = {0}, zero_eval[2] = {0};
        tb_pysnap_set_anchors_for_test(s, 0, zero, zero_eval);
    }

    /* names at collect */
    CHECK_STR(tb_pysnap_name(s, P(1)), "py::main:t.py");
    CHECK_STR(tb_pysnap_name(s, P(5)), "py::cb:t.py");
    CHECK(tb_pysnap_name(s, P(6)) == NULL);
    CHECK(tb_pysnap_name(s, 0x1101) == NULL);
    CHECK(tb_pysnap_name(NULL, P(0)) == NULL);
    CHECK(!tb_pyframe_ip(0xffffffff80000000ULL)); /* the sampler's kernel marker */
    CHECK(!tb_pyframe_ip(0x00007fffffffffffULL));
    CHECK(tb_pyframe_ip(P(255)));
    tb_pysnap_free(s);

    refresh_reads();
    inherit_checks();

    /* no snapshot taken in this process */
    CHECK_EQ_I(tb_pyframes_generation(), 0);
    CHECK(tb_pyframes_copy(0) == NULL);
    return tap_done();
}
