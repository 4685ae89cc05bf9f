/* test_ranges.c - GPU work attributed to what was open around its launch:
 * the nvtx_range stat the agent writes (innermost range), the summary's
 * GPU time per range (every enclosing range, once per name), and the GPU
 * flame graph's stacks (the CPU sample spans around the call).
 *
 * The space, main thread (times in ns):
 *   outer  [100, 1000)  inner [200, 300)  mark "tick" at 250
 *   async  [280, 600)   (nvtxRangeStart/End: overlaps inner, not nested)
 *   outer  [500, 520)   (the same name nested in itself)
 * loader thread: loader [0, 5000)
 * CUDA calls (correlation id @ start): 1@150 2@210 3@250 4@290 7@300 5@400
 * 10@510 6@1100 on main, 8@500 on loader; GPU work of call c lasts 10*c ns,
 * plus work 9 whose call is not in the capture.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "folded.h"
#include "ranges.h"
#include "sampler.h"
#include "stats.h"
#include "summary.h"
#include "tap.h"

static void ev(tb_line *l, const char *name, int64_t start, int64_t dur, tb_category cat)
{
    tb_line_add(l, tb_plane_event_meta_cat(l->plane, name, cat), start, dur);
}

static void call(tb_line *l, uint64_t corr, int64_t start)
{
    ev(l, "cudaLaunchKernel", start, 5, TB_CAT_CUDA_RUNTIME);
    tb_line_stat_u64(l, tb_plane_stat_meta(l->plane, TB_ST_CORRELATION_ID), corr);
}

static void work(tb_line *l, uint64_t corr)
{
    ev(l, "gemm", 10000 + 100 * (int64_t)corr, 10 * (int64_t)corr, TB_CAT_KERNEL);
    tb_line_stat_u64(l, tb_plane_stat_meta(l->plane, TB_ST_CORRELATION_ID), corr);
}

static tb_space *example(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *m = tb_plane_line(h, 1, "main"), *ld = tb_plane_line(h, 2, "loader");
    /* added out of time order: the pass sorts */
    call(m, 6, 1100);
    ev(m, "outer", 100, 900, TB_CAT_USER);
    ev(m, "inner", 200, 100, TB_CAT_USER);
    ev(m, "tick", 250, 0, TB_CAT_USER);
    ev(m, "async", 280, 320, TB_CAT_USER);
    ev(m, "outer", 500, 20, TB_CAT_USER);
    call(m, 1, 150);
    call(m, 2, 210);
    call(m, 3, 250);
    call(m, 4, 290);
    call(m, 7, 300);
    call(m, 5, 400);
    call(m, 10, 510);
    ev(ld, "loader", 0, 5000, TB_CAT_USER);
    call(ld, 8, 500);
    tb_plane *d = tb_space_plane(s, "/device:GPU:0");
    tb_line *st = tb_plane_line(d, 7, "Stream #7"), *st2 = tb_plane_line(d, 9, "Stream #9");
    for (uint64_t c = 1; c <= 10; c++)
        work(c % 2 ? st : st2, c);
    return s;
}

/* The string stat `stat` of the GPU work of correlation id corr ("-": none). */
static const char *stat_of(tb_space *s, uint64_t corr, const char *stat)
{
    const tb_plane *d = tb_space_find_plane(s, "/device:GPU:0");
    for (size_t j = 0; j < d->nlines; j++) {
        const tb_line *l = d->lines[j];
        for (size_t k = 0; k < l->nevents; k++) {
            const tb_event *e = &l->events[k];
            const tb_stat *c = tb_event_find_stat(d, l, e, TB_ST_CORRELATION_ID);
            if (!c || c->v.u != corr)
                continue;
            const tb_stat *r = tb_event_find_stat(d, l, e, stat);
            return r && r->type == TB_STAT_REF ? tb_plane_stat_name(d, r->v.ref) : "-";
        }
    }
    return "no such work";
}

/* The nvtx_range of the GPU work of correlation id corr ("-": none). */
static const char *range_of(tb_space *s, uint64_t corr) { return stat_of(s, corr, TB_ST_NVTX_RANGE); }
/* Its tf_op: the op xprof shows for it. */
static const char *op_of(tb_space *s, uint64_t corr) { return stat_of(s, corr, TB_ST_TF_OP); }

static void innermost_range_on_gpu_work(void)
{
    tb_space *s = example();
    CHECK_EQ_I(tb_space_link_ranges(s), 8);
    CHECK_STR(range_of(s, 1), "outer");
    CHECK_STR(range_of(s, 2), "inner");
    CHECK_STR(range_of(s, 3), "inner"); /* a mark encloses nothing */
    CHECK_STR(range_of(s, 4), "async"); /* the latest-started open range */
    CHECK_STR(range_of(s, 7), "async"); /* inner ended at 300: its end is not inside */
    CHECK_STR(range_of(s, 5), "async");
    CHECK_STR(range_of(s, 10), "outer");
    CHECK_STR(range_of(s, 6), "-");     /* after every range */
    CHECK_STR(range_of(s, 8), "loader"); /* its own thread's range, not main's */
    CHECK_STR(range_of(s, 9), "-");     /* no call in the capture */
    /* kernels: the same range is their op */
    uint64_t corrs[] = {1, 2, 3, 4, 7, 5, 10, 6, 8, 9};
    for (size_t i = 0; i < sizeof corrs / sizeof corrs[0]; i++)
        CHECKF(strcmp(op_of(s, corrs[i]), range_of(s, corrs[i])) == 0, "work %llu: tf_op %s, nvtx_range %s",
               (unsigned long long)corrs[i], op_of(s, corrs[i]), range_of(s, corrs[i]));
    /* once: a second pass finds every event named */
    CHECK_EQ_I(tb_space_link_ranges(s), 0);
    const tb_plane *d = tb_space_find_plane(s, "/device:GPU:0");
    size_t n = 0;
    for (size_t j = 0; j < d->nlines; j++)
        for (size_t k = 0; k < d->lines[j]->nevents; k++)
            n += tb_event_find_stat(d, d->lines[j], &d->lines[j]->events[k], TB_ST_NVTX_RANGE) != NULL;
    CHECK_EQ_I(n, 8);
    tb_space_free(s);

    /* no ranges, or no GPU work: nothing to do, nothing added */
    s = tb_space_new();
    tb_line *m = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main");
    call(m, 1, 100);
    work(tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7"), 1);
    CHECK_EQ_I(tb_space_link_ranges(s), 0);
    CHECK_EQ_I(tb_plane_find_stat_meta(tb_space_find_plane(s, "/device:GPU:0"), TB_ST_NVTX_RANGE), 0);
    tb_space_free(s);

    /* ids far apart (a table by id would be mostly empty): searched instead */
    s = tb_space_new();
    m = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main");
    ev(m, "far", 0, 1000, TB_CAT_USER);
    call(m, 5, 100);
    call(m, 900000, 200);
    tb_line *g = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    work(g, 5);
    work(g, 5000);
    work(g, 900000);
    CHECK_EQ_I(tb_space_link_ranges(s), 2);
    CHECK_STR(range_of(s, 5), "far");
    CHECK_STR(range_of(s, 5000), "-");
    CHECK_STR(range_of(s, 900000), "far");
    tb_space_free(s);

    /* step ranges (TBPROF_NVTX_STEP's, marked by the NVTX source) are no
     * op: the innermost range past them is, else none; nvtx_range is still
     * the innermost. Work that is no op's (a sync) gets no tf_op. */
    s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    m = tb_plane_line(h, 1, "main");
    int64_t step = tb_plane_stat_meta(h, TB_ST_STEP_RANGE);
    ev(m, "step 1", 0, 1000, TB_CAT_USER);
    tb_line_stat_i64(m, step, 1);
    ev(m, "forward", 100, 300, TB_CAT_USER);
    ev(m, "step 2", 1000, 1000, TB_CAT_USER);
    tb_line_stat_i64(m, step, 1);
    ev(m, "train", 900, 2000, TB_CAT_USER); /* around step 2 only */
    call(m, 1, 50);   /* in step 1 only */
    call(m, 2, 150);  /* forward, in step 1 */
    call(m, 3, 1500); /* step 2, in train */
    call(m, 4, 1600);
    g = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    for (uint64_t c = 1; c <= 3; c++)
        work(g, c);
    tb_line *sync = tb_plane_line(tb_space_find_plane(s, "/device:GPU:0"), 0xdeadbeef + 289, "CUDA sync");
    ev(sync, "Stream Sync", 20000, 5, TB_CAT_CUDA_SYNC);
    tb_line_stat_u64(sync, tb_plane_stat_meta(sync->plane, TB_ST_CORRELATION_ID), 4);
    CHECK_EQ_I(tb_space_link_ranges(s), 4);
    CHECK_STR(range_of(s, 1), "step 1");
    CHECK_STR(op_of(s, 1), "-");
    CHECK_STR(range_of(s, 2), "forward");
    CHECK_STR(op_of(s, 2), "forward");
    CHECK_STR(range_of(s, 3), "step 2");
    CHECK_STR(op_of(s, 3), "train"); /* started before step 2, so outside it */
    CHECK_STR(range_of(s, 4), "step 2");
    CHECK_STR(op_of(s, 4), "-");
    /* the summary's GPU time by innermost range goes by tf_op: the steps
     * are no rows, work only in a step range is outside every range */
    tb_summary sm;
    CHECK_EQ_I(tb_summarize(s, &sm), 0);
    CHECK_EQ_I(sm.ngpu_ranges, 2);
    for (size_t i = 0; i < sm.ngpu_ranges; i++)
        CHECKF(!strcmp(sm.gpu_ranges[i].name, "forward") ? sm.gpu_ranges[i].total_ns == 20
                                                         : !strcmp(sm.gpu_ranges[i].name, "train") &&
                                                               sm.gpu_ranges[i].total_ns == 30,
               "by range: %s %lld ns", sm.gpu_ranges[i].name, (long long)sm.gpu_ranges[i].total_ns);
    CHECK_EQ_I(sm.gpu_outside_ns, 10);
    tb_summary_free(&sm);
    /* so do the GPU flame graph's range frames */
    tb_folded fr = {.gpu_ranges = 1};
    CHECK_EQ_I(tb_folded_add_gpu(&fr, s), 0);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    CHECK_EQ_I(tb_folded_write(&fr, out, 1), 0);
    fclose(out);
    CHECK_STR(text, "main;" TB_FOLDED_UNSAMPLED ";gemm 10\n"
                    "main;" TB_FOLDED_UNSAMPLED ";nvtx::forward;gemm 20\n"
                    "main;" TB_FOLDED_UNSAMPLED ";nvtx::train;gemm 30\n");
    free(text);
    tb_folded_free(&fr);
    tb_space_free(s);

    /* the space's byte limit: an error, and the profile is still whole */
    s = example();
    tb_space_set_limit(s, s->used_bytes);
    CHECK_EQ_I(tb_space_link_ranges(s), -ENOSPC);
    CHECK_STR(range_of(s, 1), "-");
    tb_space_free(s);
}

static const tb_sum_named *range_named(const tb_summary *m, const char *name)
{
    for (size_t i = 0; i < m->nranges; i++)
        if (strcmp(m->ranges[i].name, name) == 0)
            return &m->ranges[i];
    return NULL;
}

static void gpu_time_per_range(void)
{
    tb_space *s = example();
    tb_summary m;
    CHECK_EQ_I(tb_summarize(s, &m), 0);
    /* work of calls inside some range: 1 2 3 4 5 7 8 10 */
    CHECK_EQ_I(m.range_gpu_events, 8);
    struct {
        const char *name;
        uint64_t count;
        int64_t ns;
    } want[] = {
        {"outer", 7, 10 + 20 + 30 + 40 + 50 + 70 + 100}, /* 10 once, though two outers are open */
        {"inner", 3, 20 + 30 + 40},
        {"async", 4, 40 + 50 + 70 + 100},
        {"loader", 1, 80},
        {"tick", 0, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const tb_sum_named *r = range_named(&m, want[i].name);
        CHECKF(r && r->gpu_count == want[i].count && r->gpu_ns == want[i].ns, "%s: %llu ops %lld ns",
               want[i].name, r ? (unsigned long long)r->gpu_count : 0ULL, r ? (long long)r->gpu_ns : -1LL);
    }
    /* host time is unchanged by it: the two outers count in full */
    const tb_sum_named *o = range_named(&m, "outer");
    CHECK(o && o->count == 2 && o->total_ns == 920);
    tb_summary_free(&m);
    tb_space_free(s);
}

/* The CPU sample spans of thread "python" (1 kHz: 1 ms periods):
 *   main [0, 10 ms) > train [0, 10 ms) > forward [0.5, 6 ms) > attn [4, 5 ms)
 * calls: 1 @2 ms and 2 @4.5 ms (attn began less than a period before: not
 * known to enclose it), 3 @8 ms, 4 @20 ms (after every span); thread
 * "loader", never sampled: 5 @1 ms. GPU work: 1 -> k1 100 ns and k1b 50 ns
 * (one graph launch), 2 -> k2 200, 3 -> MemcpyH2D 300 (and a sync, not
 * work), 4 -> k4 400, 5 -> k5 500, 6 (no call) -> k6 600. */
static void gpu_time_by_launching_stack(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_u64(h, TB_ST_CPU_HZ, 1000);
    tb_line *py = tb_plane_line(h, 1, "python"), *ld = tb_plane_line(h, 2, "loader");
    const int64_t ms = 1000000;
    ev(py, "main", 0, 10 * ms, TB_CAT_CPU_SAMPLE);
    ev(py, "train", 0, 10 * ms, TB_CAT_CPU_SAMPLE);
    ev(py, "forward", ms / 2, 6 * ms - ms / 2, TB_CAT_CPU_SAMPLE);
    ev(py, "attn", 4 * ms, ms, TB_CAT_CPU_SAMPLE);
    call(py, 1, 2 * ms);
    call(py, 2, 4 * ms + ms / 2);
    call(py, 3, 8 * ms);
    call(py, 4, 20 * ms);
    call(ld, 5, ms);
    tb_plane *d = tb_space_plane(s, "/device:GPU:0");
    tb_line *st = tb_plane_line(d, 7, "Stream #7(Kernel)"), *sync = tb_plane_line(d, 1LL << 33, "CUDA sync");
    int64_t c = tb_plane_stat_meta(d, TB_ST_CORRELATION_ID);
    struct {
        const char *name;
        uint64_t corr;
        int64_t ns;
    } w[] = {{"k1", 1, 100}, {"k1b", 1, 50}, {"k2", 2, 200}, {"MemcpyH2D", 3, 300},
             {"k4", 4, 400}, {"k5", 5, 500}, {"k6", 6, 600}};
    int64_t nr = tb_plane_stat_meta(d, TB_ST_NVTX_RANGE);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        ev(st, w[i].name, 30 * ms + (int64_t)i * 1000, w[i].ns, TB_CAT_KERNEL);
        tb_line_stat_u64(st, c, w[i].corr);
        if (!strcmp(w[i].name, "k2") || !strcmp(w[i].name, "k6")) /* launched inside an op's range */
            tb_line_stat_str(st, nr, w[i].name[1] == '2' ? "aten::mm" : "aten::add");
    }
    ev(sync, "Stream Sync", 31 * ms, 999, TB_CAT_CUDA_SYNC);
    tb_line_stat_u64(sync, c, 3);

    tb_folded f = {0};
    CHECK_EQ_I(tb_folded_add_gpu(&f, s), 0);
    CHECK(f.ns);
    CHECK_EQ_I(f.total, 2150);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    CHECK_EQ_I(tb_folded_write(&f, out, 1), 0);
    fclose(out);
    static const char *const want[] = {
        "python;main;train;forward;k1 100\n",
        "python;main;train;forward;k1b 50\n",
        "python;main;train;forward;k2 200\n",
        "python;main;train;MemcpyH2D 300\n",
        "python;" TB_FOLDED_UNSAMPLED ";k4 400\n",
        "loader;" TB_FOLDED_UNSAMPLED ";k5 500\n",
        TB_FOLDED_NO_CALL ";k6 600\n",
    };
    size_t lines = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') + 1)
        lines++;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECKF(text && strstr(text, want[i]), "missing \"%.*s\" in:\n%s", (int)strlen(want[i]) - 1, want[i],
               text ? text : "");
    }
    CHECK_EQ_I(lines, 7);
    free(text);
    tb_folded_free(&f);

    /* gpu_ranges (tbprof flame/convert --gpu): the op's frame above its GPU
     * work, sampled stack or not; the rest as before */
    tb_folded fr = {.gpu_ranges = 1};
    CHECK_EQ_I(tb_folded_add_gpu(&fr, s), 0);
    CHECK_EQ_I(fr.total, 2150);
    text = NULL;
    out = open_memstream(&text, &len);
    CHECK_EQ_I(tb_folded_write(&fr, out, 1), 0);
    fclose(out);
    static const char *const want_r[] = {
        "python;main;train;forward;k1 100\n",
        "python;main;train;forward;nvtx::aten::mm;k2 200\n",
        TB_FOLDED_NO_CALL ";nvtx::aten::add;k6 600\n",
    };
    for (size_t i = 0; i < sizeof want_r / sizeof want_r[0]; i++)
        CHECKF(text && strstr(text, want_r[i]), "missing \"%.*s\" in:\n%s", (int)strlen(want_r[i]) - 1, want_r[i],
               text ? text : "");
    free(text);
    tb_folded_free(&fr);

    /* the summary's launchers: the deepest frame (no Python frames here) */
    tb_summary m;
    CHECK_EQ_I(tb_summarize(s, &m), 0);
    CHECK_EQ_I(m.launched_ns, 2150);
    CHECK_EQ_I(m.unsampled_ns, 400 + 500);
    CHECK_EQ_I(m.no_call_ns, 600);
    CHECK_EQ_I(m.nlaunchers, 2);
    if (m.nlaunchers == 2) {
        CHECK_STR(m.launchers[0].name, "forward");
        CHECK_EQ_I(m.launchers[0].ns, 350);
        CHECK_STR(m.launchers[1].name, "train");
        CHECK_EQ_I(m.launchers[1].ns, 300);
    }
    tb_summary_free(&m);
    tb_space_free(s);

    /* no GPU work: nothing, and no error */
    s = tb_space_new();
    call(tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "python"), 1, 100);
    tb_folded e = {0};
    CHECK_EQ_I(tb_folded_add_gpu(&e, s), 0);
    CHECK_EQ_I(e.total, 0);
    CHECK_EQ_I(e.nstacks, 0);
    tb_folded_free(&e);
    tb_space_free(s);
}

/* The int stat `name` of line l's event k; -1: none. */
static int64_t int_stat(const tb_plane *p, const tb_line *l, size_t k, const char *name)
{
    const tb_stat *st = tb_event_find_stat(p, l, &l->events[k], name);
    return st ? st->v.i : -1;
}

static void root(tb_line *l, int64_t num, int64_t start, int64_t dur)
{
    ev(l, "train", start, dur, TB_CAT_STEP);
    tb_line_stat_i64(l, tb_plane_stat_meta(l->plane, TB_ST_IS_ROOT), 1);
    tb_line_stat_i64(l, tb_plane_stat_meta(l->plane, TB_ST_STEP_NUM), num);
}

/* Calls on other threads into the step running on the step thread: each
 * a consumer (_ct, _c) of that step's root, the root a producer (_pt, _p). */
static void calls_on_other_threads_join_their_step(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *m = tb_plane_line(h, 1, "main"), *bw = tb_plane_line(h, 2, "autograd"), *io = tb_plane_line(h, 3, "io");
    root(m, 7, 1000, 1000); /* steps 7 [1000, 2000), 8 [2000, 3000), 9 [3000, 4000) */
    root(m, 8, 2000, 1000);
    root(m, 9, 3000, 1000);
    call(m, 1, 1100);  /* on the step line: nested already */
    call(bw, 2, 500);  /* before the first step */
    call(bw, 3, 1500); /* step 7 */
    call(bw, 4, 2000); /* step 8's first ns */
    call(bw, 5, 4000); /* the last step's end: after it */
    ev(bw, "MmBackward0", 2400, 100, TB_CAT_USER); /* not a call */
    call(io, 6, 1999); /* step 7's last ns, another thread */
    tb_line *idle = tb_plane_line(h, 4, "idle");
    ev(idle, "wait", 0, 5000, TB_CAT_USER);
    CHECK_EQ_I(tb_space_link_steps(s), 3);
    const char *c = TB_ST_CONSUMER_ID;
    CHECK_EQ_I(int_stat(h, bw, 0, c), -1);
    CHECK_EQ_I(int_stat(h, bw, 1, c), 1);
    CHECK_EQ_I(int_stat(h, bw, 1, TB_ST_CONSUMER_TYPE), TB_CONTEXT_GENERIC);
    CHECK_EQ_I(int_stat(h, bw, 2, c), 2);
    CHECK_EQ_I(int_stat(h, bw, 3, c), -1);
    CHECK_EQ_I(int_stat(h, bw, 4, c), -1); /* MmBackward0, sorted after the call at 2000 */
    CHECK_EQ_I(int_stat(h, io, 0, c), 1);
    CHECK_EQ_I(int_stat(h, m, 1, c), -1); /* main's call (after step 7's root, sorted) */
    /* producers: steps 7 and 8 (9 had no other thread's call: as before) */
    CHECK_EQ_I(int_stat(h, m, 0, TB_ST_PRODUCER_ID), 1);
    CHECK_EQ_I(int_stat(h, m, 0, TB_ST_PRODUCER_TYPE), TB_CONTEXT_GENERIC);
    CHECK_EQ_I(int_stat(h, m, 2, TB_ST_PRODUCER_ID), 2);
    CHECK_EQ_I(int_stat(h, m, 3, TB_ST_PRODUCER_ID), -1);
    CHECK_EQ_I(int_stat(h, m, 3, TB_ST_STEP_NUM), 9);
    CHECK_EQ_I(idle->events[0].nstats, 0);
    tb_space_free(s);

    /* one thread only, or no steps: nothing to link, nothing added */
    s = tb_space_new();
    h = tb_space_plane(s, "/host:CPU");
    m = tb_plane_line(h, 1, "main");
    root(m, 1, 0, 100);
    call(m, 1, 10);
    CHECK_EQ_I(tb_space_link_steps(s), 0);
    CHECK_EQ_I(tb_plane_find_stat_meta(h, TB_ST_PRODUCER_ID), 0);
    call(tb_plane_line(h, 2, "other"), 2, 5000); /* after the step */
    CHECK_EQ_I(tb_space_link_steps(s), 0);
    CHECK_EQ_I(tb_plane_find_stat_meta(h, TB_ST_PRODUCER_ID), 0);
    CHECK_EQ_I(tb_plane_find_stat_meta(h, TB_ST_CONSUMER_ID), 0); /* not even its name */
    tb_space_free(s);
}

/* A range that starts at the call's start encloses it (ranges.h), also when
 * it is the shorter of the two (sorted after the call): nvtxRangePush and
 * the launch on one clock tick, or clocks of coarse resolution. */
static void range_starting_with_the_call(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *m = tb_plane_line(h, 1, "main");
    ev(m, "outer", 100, 900, TB_CAT_USER);
    ev(m, "fwd", 400, 3, TB_CAT_USER); /* shorter than the 5 ns call at 400 */
    call(m, 1, 400);
    ev(m, "tick", 500, 0, TB_CAT_USER); /* a mark at a call's start: still nothing */
    call(m, 2, 500);
    tb_line *st = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    work(st, 1);
    work(st, 2);
    CHECK_EQ_I(tb_space_link_ranges(s), 2);
    CHECK_STR(range_of(s, 1), "fwd");
    CHECK_STR(range_of(s, 2), "outer");
    tb_summary m2;
    CHECK_EQ_I(tb_summarize(s, &m2), 0);
    for (size_t i = 0; i < m2.nranges; i++)
        if (!strcmp(m2.ranges[i].name, "fwd"))
            CHECKF(m2.ranges[i].gpu_count == 1 && m2.ranges[i].gpu_ns == 10, "fwd: %llu pieces, %lld ns",
                   (unsigned long long)m2.ranges[i].gpu_count, (long long)m2.ranges[i].gpu_ns);
    tb_summary_free(&m2);
    tb_space_free(s);
}

/* ---- the walk against a plain reference -------------------------------------- */

/* The walk as first written: at each new start, drop the ranges that ended
 * by scanning the whole stack, then push the ranges starting then. Plain,
 * and quadratic in the ranges open at once; the walk must give the same
 * calls with the same stacks. */
static int ref_kind(const tb_plane *p, const tb_line *l, const tb_event *e, tb_category cat)
{
    if (cat == TB_CAT_CPU_SAMPLE)
        return tb_cpu_span_samples(p, l, e) > 0;
    return e->meta < p->nevent_meta && p->event_meta[e->meta].category == (uint32_t)cat;
}

static int ref_walk(const tb_space *s, tb_category cat, int flags, tb_ranges_fn fn, void *ctx)
{
    int all = flags & TB_RANGES_ALL_CALLS;
    const tb_event **stack = NULL;
    int rc = 0;
    for (size_t i = 0; i < s->nplanes && !rc; i++) {
        const tb_plane *p = s->planes[i];
        uint32_t cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        if (strncmp(p->name, "/host:", 6) != 0 || !cid ||
            (!all && cat != TB_CAT_CPU_SAMPLE && !tb_plane_has_category(p, cat)))
            continue;
        for (size_t j = 0; j < p->nlines && !rc; j++) {
            const tb_line *l = p->lines[j];
            size_t depth = 0;
            free(stack);
            stack = malloc((l->nevents + 1) * sizeof(*stack));
            for (size_t k = 0; k < l->nevents && !rc; k++) {
                const tb_event *e = &l->events[k];
                if (!k || e->start_ns != l->events[k - 1].start_ns) {
                    size_t keep = 0;
                    for (size_t x = 0; x < depth; x++)
                        if (stack[x]->start_ns + stack[x]->dur_ns > e->start_ns)
                            stack[keep++] = stack[x];
                    depth = keep;
                    for (size_t q = k; q < l->nevents && l->events[q].start_ns == e->start_ns; q++) {
                        const tb_event *r = &l->events[q];
                        if (r->dur_ns > 0 && ref_kind(p, l, r, cat))
                            stack[depth++] = r;
                    }
                }
                if (ref_kind(p, l, e, cat))
                    continue;
                const tb_stat *st = depth || all ? tb_event_stat(l, e, cid) : NULL;
                uint64_t corr = st && (st->type == TB_STAT_UINT64 || st->type == TB_STAT_INT64) ? st->v.u : 0;
                if (corr)
                    rc = fn(ctx, p, l, e, corr, stack, depth);
            }
        }
    }
    free(stack);
    return rc;
}

/* What a walk reported: per call its line, call, id and stack, flattened. */
typedef struct walk_log {
    uintptr_t *v;
    size_t n, cap;
    size_t calls, stop_at; /* stop_at: return 7 at that call (1-based); 0: never */
} walk_log;

static void log_put(walk_log *w, uintptr_t x)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 1024;
        w->v = realloc(w->v, w->cap * sizeof(*w->v));
    }
    w->v[w->n++] = x;
}

static int log_call(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call, uint64_t corr,
                    const tb_event *const *stack, size_t depth)
{
    walk_log *w = ctx;
    log_put(w, (uintptr_t)host);
    log_put(w, (uintptr_t)line);
    log_put(w, (uintptr_t)call);
    log_put(w, (uintptr_t)corr);
    log_put(w, depth);
    for (size_t x = 0; x < depth; x++)
        log_put(w, (uintptr_t)stack[x]);
    return ++w->calls == w->stop_at ? 7 : 0;
}

static int count_call(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call, uint64_t corr,
                      const tb_event *const *stack, size_t depth)
{
    (void)host, (void)line, (void)call, (void)corr;
    size_t *n = ctx;
    *n += depth ? (size_t)(uintptr_t)stack[depth - 1] % 2 + 1 : 1; /* read the innermost, as link_ranges does */
    return 0;
}

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(uint64_t n)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state % n;
}

/* A random space: nested, overlapping and never-ending ranges, marks,
 * calls (some at a range's start, some shorter than it), other events. */
static tb_space *random_space(size_t nev, int64_t span)
{
    tb_space *s = tb_space_new();
    size_t nlines = 1 + rnd(3);
    uint64_t corr = 1;
    for (size_t j = 0; j < nlines; j++) {
        tb_plane *h = tb_space_plane(s, j == 2 ? "/host:other" : "/host:CPU");
        tb_line *l = tb_plane_line(h, j, "t");
        for (size_t k = 0; k < nev; k++) {
            int64_t start = (int64_t)rnd((uint64_t)span);
            switch (rnd(8)) {
            case 0: case 1: case 2: { /* a range: short, long, or open to the end; some step ranges */
                static const char *names[] = {"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"};
                ev(l, names[rnd(8)], start, rnd(4) ? (int64_t)rnd(rnd(2) ? 8 : (uint64_t)span) : span,
                   TB_CAT_USER);
                if (!rnd(4))
                    tb_line_stat_i64(l, tb_plane_stat_meta(l->plane, TB_ST_STEP_RANGE), 1);
                break;
            }
            case 3: /* a mark */
                ev(l, "tick", start, 0, TB_CAT_USER);
                break;
            case 4: /* another kind of event, no id */
                ev(l, "compute", start, (int64_t)rnd(20), TB_CAT_NONE);
                break;
            default: /* a call, of 0 to 9 ns */
                ev(l, "cudaLaunchKernel", start, (int64_t)rnd(10), TB_CAT_CUDA_RUNTIME);
                tb_line_stat_u64(l, tb_plane_stat_meta(l->plane, TB_ST_CORRELATION_ID), corr++);
            }
        }
    }
    tb_line *st = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    for (uint64_t c = 1; c < corr; c++)
        work(st, c);
    tb_space_sort(s);
    return s;
}

/* The nvtx_range and tf_op link_ranges should give each call's work. */
typedef struct want_names {
    const char **range, **op; /* by correlation id */
} want_names;

static int want_innermost(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call, uint64_t corr,
                          const tb_event *const *stack, size_t depth)
{
    (void)call;
    want_names *w = ctx;
    uint32_t step = tb_plane_find_stat_meta(host, TB_ST_STEP_RANGE);
    size_t op = depth;
    while (op > 0 && step && tb_event_stat(line, stack[op - 1], step))
        op--;
    w->range[corr] = tb_plane_event_name(host, stack[depth - 1]->meta);
    w->op[corr] = op ? tb_plane_event_name(host, stack[op - 1]->meta) : "-";
    return 0;
}

static double secs_of(tb_ranges_fn fn, int (*walk)(const tb_space *, tb_category, int, tb_ranges_fn, void *),
                      const tb_space *s, size_t *n)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    walk(s, TB_CAT_USER, 0, fn, n);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

static void walk_matches_reference(void)
{
    for (int round = 0; round < 400; round++) {
        size_t nev = 1 + rnd(round < 300 ? 40 : 600);
        tb_space *s = random_space(nev, 1 + (int64_t)rnd(round % 2 ? 50 : 5000));
        for (int flags = 0; flags <= TB_RANGES_ALL_CALLS; flags++) {
            walk_log got = {0}, want = {0};
            got.stop_at = want.stop_at = round % 5 == 4 ? 1 + rnd(nev) : 0;
            int rg = tb_ranges_walk(s, TB_CAT_USER, flags, log_call, &got);
            int rw = ref_walk(s, TB_CAT_USER, flags, log_call, &want);
            CHECKF(rg == rw && got.n == want.n && (!got.n || !memcmp(got.v, want.v, got.n * sizeof(*got.v))),
                   "round %d flags %d: walk %d (%zu calls, %zu words), reference %d (%zu calls, %zu words)", round,
                   flags, rg, got.calls, got.n, rw, want.calls, want.n);
            free(got.v);
            free(want.v);
        }
        /* and what link_ranges writes: the innermost range, the innermost not a step */
        want_names w = {calloc(nev * 3 + 1, sizeof(char *)), calloc(nev * 3 + 1, sizeof(char *))};
        ref_walk(s, TB_CAT_USER, 0, want_innermost, &w);
        size_t named = 0, bad = 0;
        for (uint64_t c = 1; c <= nev * 3; c++) {
            named += w.range[c] != NULL;
            if (!w.range[c])
                w.range[c] = w.op[c] = "-";
        }
        CHECK_EQ_I(tb_space_link_ranges(s), named);
        const tb_line *st = tb_space_find_plane(s, "/device:GPU:0")->lines[0];
        for (size_t k = 0; k < st->nevents; k++) {
            uint64_t c = tb_event_find_stat(st->plane, st, &st->events[k], TB_ST_CORRELATION_ID)->v.u;
            const char *r = range_of(s, c), *op = op_of(s, c);
            if (strcmp(r, w.range[c]) || strcmp(op, w.op[c] ? w.op[c] : "-")) {
                if (!bad++)
                    CHECKF(0, "round %d call %llu: nvtx_range %s tf_op %s, expected %s and %s", round,
                           (unsigned long long)c, r, op, w.range[c], w.op[c]);
            }
        }
        CHECK_EQ_I(bad, 0);
        free(w.range);
        free(w.op);
        tb_space_free(s);
    }

    /* many async ranges open at once (one per request of a server, each
     * open long, ending in any order), a call after each start: timings */
    /* (a sanitizer build, 10-20x slower: the smallest, without the
     * reference, or TSan's run took 52 s) */
    const char *san = getenv("TBPROF_SANITIZE");
    size_t top = san && *san ? 20000 : 80000;
    for (size_t n = 20000; n <= top; n *= 2) {
        tb_space *s = tb_space_new();
        tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main");
        for (size_t i = 0; i < n; i++) {
            ev(l, "request", 10 * (int64_t)i, 10 * (int64_t)(n / 4 + rnd(n)), TB_CAT_USER);
            call(l, i + 1, 10 * (int64_t)i + 1);
        }
        tb_line *st = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
        for (size_t i = 0; i < n; i++)
            work(st, i + 1);
        tb_space_sort(s);
        size_t a = 0, b = 0;
        /* the reference, quadratic, only at the smaller sizes (sanitizer runs) */
        int ref = n <= 40000 && top > 20000;
        double t = secs_of(count_call, tb_ranges_walk, s, &a), tr = ref ? secs_of(count_call, ref_walk, s, &b) : 0;
        CHECK(a == b || !ref);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        CHECK_EQ_I(tb_space_link_ranges(s), n);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("# %zu ranges open long, a call after each: walk %.3f s (reference %.3f s), "
               "link_ranges %.3f s\n",
               n, t, tr, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        tb_space_free(s);
    }
}

/* No memory to sort a line: link_ranges and link_steps fail (-ENOMEM) and
 * add nothing, rather than walk the unsorted line and attribute calls to
 * whatever range or step the walk happened to have open. */
static void unsortable_line_links_nothing(void)
{
    if (TAP_SANITIZED) {
        printf("# skip unsortable: a sanitizer's address space is not what RLIMIT_AS can bound\n");
        return;
    }
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *m = tb_plane_line(h, 1, "main"), *w = tb_plane_line(h, 2, "worker");
    /* main, newest first: a million other events after the steps, then
     * steps 1 [1000, 2000) and 2 [2000, 3000) with a range and a call in each */
    enum { N = 1000000 };
    int64_t other = tb_plane_event_meta_cat(h, "compute", TB_CAT_NONE);
    for (int64_t i = 0; i < N; i++)
        tb_line_add(m, other, 100000 + (N - i) * 10, 5);
    call(m, 2, 2150);
    ev(m, "bwd", 2100, 100, TB_CAT_USER);
    root(m, 2, 2000, 1000);
    call(m, 1, 1150);
    ev(m, "fwd", 1100, 100, TB_CAT_USER);
    root(m, 1, 1000, 1000);
    call(w, 3, 1500); /* in step 1, on another thread */
    call(w, 4, 2500); /* in step 2 */
    tb_line *st = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    for (uint64_t c = 1; c <= 4; c++)
        work(st, c);

    /* main's sort needs 32 MB more; the rest fits */
    struct rlimit was;
    int lim = tap_limit_memory(4096, &was);
    if (lim == -1) {
        printf("# skip unsortable: no VmSize or RLIMIT_AS\n");
        tb_space_free(s);
        return;
    }
    int64_t nr = 1, ns = 1;
    if (lim == 0) {
        nr = tb_space_link_ranges(s);
        ns = tb_space_link_steps(s);
    }
    setrlimit(RLIMIT_AS, &was);
    CHECK_EQ_I(nr, -ENOMEM);
    CHECK_EQ_I(ns, -ENOMEM);
    for (uint64_t c = 1; c <= 4; c++)
        CHECK_STR(range_of(s, c), "-");
    for (size_t k = 0; k < w->nevents; k++)
        CHECK_EQ_I(int_stat(h, w, k, TB_ST_CONSUMER_ID), -1);
    CHECK_EQ_I(tb_plane_find_stat_meta(h, TB_ST_PRODUCER_ID), 0);

    /* with the memory: each call in its range and step */
    CHECK_EQ_I(tb_space_link_ranges(s), 2);
    CHECK_STR(range_of(s, 1), "fwd");
    CHECK_STR(range_of(s, 2), "bwd");
    CHECK_STR(range_of(s, 3), "-");
    CHECK_EQ_I(tb_space_link_steps(s), 2);
    CHECK_EQ_I(int_stat(h, w, 0, TB_ST_CONSUMER_ID), 1);
    CHECK_EQ_I(int_stat(h, w, 1, TB_ST_CONSUMER_ID), 2);
    tb_space_free(s);
}

int main(void)
{
    unsortable_line_links_nothing();
    walk_matches_reference();
    range_starting_with_the_call();
    calls_on_other_threads_join_their_step();
    innermost_range_on_gpu_work();
    gpu_time_per_range();
    gpu_time_by_launching_stack();
    return tap_done();
}
