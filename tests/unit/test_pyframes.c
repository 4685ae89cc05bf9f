/* test_pyframes.c - labels for Python frames entered before a capture
 * (agent/pyframes.h): which activation of a sample gets which frames of
 * the snapshot, against a snapshot described by hand. The snapshot taken
 * from a live CPython is tested end to end (test_cpu_python). */
#include <stdint.h>
#include <string.h>

#include "pyframes.h"
#include "tap.h"

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

    /* no snapshot taken in this process */
    CHECK_EQ_I(tb_pyframes_generation(), 0);
    CHECK(tb_pyframes_copy(0) == NULL);
    return tap_done();
}
