/* test_summary.c - `tbprof summary`'s figures on spaces with known content:
 * steps, GPU busy/copy/idle split, kernels, copies, CPU functions, drops,
 * warnings, communication overlap; interval unions against a brute-force
 * count. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "profile.h"
#include "stats.h"
#include "sampler.h"
#include "summary.h"
#include "tap.h"
#include "xspace.h"

#define T0 1700000000000000000LL

static void ev(tb_line *l, const char *name, int64_t start, int64_t dur, tb_category cat)
{
    tb_line_add(l, tb_plane_event_meta_cat(l->plane, name, cat), T0 + start, dur);
}

static void st_i(tb_line *l, const char *name, int64_t v)
{
    tb_line_stat_i64(l, tb_plane_stat_meta(l->plane, name), v);
}

static void st_s(tb_line *l, const char *name, const char *v)
{
    tb_line_stat_str(l, tb_plane_stat_meta(l->plane, name), v);
}

static void step(tb_line *l, int64_t num, int64_t start, int64_t dur)
{
    ev(l, TB_EV_STEP, start, dur, TB_CAT_STEP);
    st_i(l, TB_ST_IS_ROOT, 1);
    st_i(l, TB_ST_STEP_NUM, num);
}

static void kernel(tb_line *l, const char *name, int64_t start, int64_t dur, const char *occ)
{
    char d[200];
    snprintf(d, sizeof d, "regs:32 static_shared:0 dynamic_shared:0 grid:8,1,1 block:256,1,1%s%s",
             occ ? " occ_pct:" : "", occ ? occ : "");
    /* no category: read back from a file, kernels are known by kernel_details */
    ev(l, name, start, dur, TB_CAT_NONE);
    st_s(l, TB_ST_KERNEL_DETAILS, d);
    st_i(l, TB_ST_CORRELATION_ID, start);
}

static void span(tb_line *l, const char *name, int64_t start, int64_t dur, int64_t samples)
{
    ev(l, name, start, dur, TB_CAT_CPU_SAMPLE);
    st_i(l, "samples", samples);
}

/* The host of the worked example in the comments below. */
static tb_space *example(void)
{
    tb_space *s = tb_space_new();
    tb_space_add_hostname(s, "node1");
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *main_t = tb_plane_line(h, 100, "python");
    tb_line *load_t = tb_plane_line(h, 101, "loader");
    /* steps: 1 [0,10000); 2 [10000,30000) and a second root of step 2 from
     * another source at [9000,25000) -> [9000,30000); 3 [30000,36000) */
    step(main_t, 1, 0, 10000);
    step(main_t, 2, 10000, 20000);
    step(main_t, 3, 30000, 6000);
    step(load_t, 2, 9000, 16000);
    /* CPU samples: python: main 10 > {train 8 > {matmul 5, loss 2}, io 1};
     * loader: read 4 > decode 4 */
    span(main_t, "main", 0, 30000, 10);
    span(main_t, "train", 100, 20000, 8);
    span(main_t, "matmul", 200, 10000, 5);
    span(main_t, "loss", 12000, 3000, 2);
    span(main_t, "io", 25000, 2000, 1);
    span(load_t, "read", 0, 5000, 4);
    span(load_t, "decode", 100, 1000, 4);
    /* a CUDA API call on the host with a correlation id: not a step */
    ev(main_t, "cudaLaunchKernel", 900, 50, TB_CAT_CUDA_RUNTIME);
    st_i(main_t, TB_ST_CORRELATION_ID, 1000);
    /* NVTX: "forward" 3 times (two threads), "attention" nested in the
     * first, a "loss" mark (named like the sampled function above: each
     * keeps its kind) */
    ev(main_t, "forward", 1000, 3000, TB_CAT_USER);
    ev(main_t, "attention", 1500, 1000, TB_CAT_USER);
    ev(main_t, "loss", 5000, 0, TB_CAT_USER);
    ev(main_t, "forward", 11000, 5000, TB_CAT_USER);
    ev(load_t, "forward", 20000, 2000, TB_CAT_USER);
    tb_plane_stat_i64(h, TB_ST_DROPPED, 3);
    tb_plane_stat_u64(h, TB_ST_SAMPLES, 14);
    tb_plane_stat_i64(h, TB_ST_OVERHEAD_NS, 12345);
    tb_plane_stat_str(h, TB_ST_TRIGGER, "steps 1-3");

    tb_plane *g0 = tb_space_plane(s, "/device:GPU:0");
    tb_line *s1 = tb_plane_line(g0, 1, "Stream #1");
    tb_line *s2 = tb_plane_line(g0, 2, "Stream #2");
    kernel(s1, "gemm", 1000, 2000, "50");
    kernel(s1, "gemm", 4000, 4000, "25");
    kernel(s2, "relu", 5000, 2000, NULL); /* inside the second gemm */
    ev(s1, "MemcpyH2D", 12000, 3000, TB_CAT_NONE);
    st_s(s1, TB_ST_MEMCPY_DETAILS, "kind_src:pinned kind_dst:device size:3000000 dest:0 async:1");
    ev(s1, "Memcpy", 20000, 1000, TB_CAT_NONE); /* direction from the kinds only */
    st_s(s1, TB_ST_MEMCPY_DETAILS, "kind_src:device kind_dst:pageable size:1000 dest:0 async:0");
    ev(s2, "Memset", 22000, 500, TB_CAT_NONE);
    st_s(s2, TB_ST_MEMSET_DETAILS, "num_bytes:64");
    /* an NVTX range on the GPU timeline: not busy time */
    ev(s2, "nvtx_range", 0, 36000, TB_CAT_GPU_USER);
    tb_plane_stat_i64(g0, TB_ST_CUPTI_DROPPED, 7);

    tb_plane *g1 = tb_space_plane(s, "/device:GPU:1");
    kernel(tb_plane_line(g1, 1, "Stream #1"), "gemm", 31000, 1000, "75");
    return s;
}

static void steps_and_gpu(void)
{
    tb_space *s = example();
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_STR(m.host, "node1");
    CHECK_EQ_I(m.ngpus, 2);
    CHECK_EQ_I(m.gpu_events, 7);
    CHECK_EQ_I(m.nsteps, 3);
    if (m.nsteps == 3) {
        CHECK_EQ_I(m.steps[0].num, 1);
        CHECK_EQ_I(m.steps[0].dur_ns, 10000);
        CHECK_EQ_I(m.steps[0].gpu_busy_ns, 6000); /* [1000,3000) + [4000,8000) */
        CHECK_EQ_I(m.steps[0].gpu_idle_ns, 4000);
        CHECK_EQ_I(m.steps[0].h2d_ns, 0);
        CHECK_EQ_I(m.steps[1].num, 2);
        CHECK_EQ_I(m.steps[1].start_ns, T0 + 9000);
        CHECK_EQ_I(m.steps[1].dur_ns, 21000);
        CHECK_EQ_I(m.steps[1].gpu_busy_ns, 4500); /* copies 3000 + 1000, memset 500 */
        CHECK_EQ_I(m.steps[1].h2d_ns, 3000);
        CHECK_EQ_I(m.steps[1].d2h_ns, 1000);
        CHECK_EQ_I(m.steps[1].gpu_idle_ns, 16500);
        CHECK_EQ_I(m.steps[2].num, 3);
        CHECK_EQ_I(m.steps[2].gpu_busy_ns, 1000); /* gemm on GPU 1 */
        CHECK_EQ_I(m.steps[2].gpu_idle_ns, 5000);
    }
    CHECK_EQ_I(m.step_mean_ns, 37000 / 3);
    CHECK_EQ_I(m.step_min_ns, 6000);
    CHECK_EQ_I(m.step_max_ns, 21000);
    CHECK_EQ_I(m.window_ns, 37000);
    CHECK_EQ_I(m.gpu_busy_ns, 11500);
    CHECK_EQ_I(m.gpu_idle_ns, 25500);
    CHECK_EQ_I(m.h2d_ns, 3000);
    CHECK_EQ_I(m.d2h_ns, 1000);

    CHECK_EQ_I(m.nkernels, 2);
    if (m.nkernels == 2) {
        CHECK_STR(m.kernels[0].name, "gemm");
        CHECK_EQ_I(m.kernels[0].count, 3);
        CHECK_EQ_I(m.kernels[0].total_ns, 7000);
        CHECK_EQ_I(m.kernels[0].min_ns, 1000);
        CHECK_EQ_I(m.kernels[0].max_ns, 4000);
        CHECKF(m.kernels[0].occ_pct == 50.0, "occ %f", m.kernels[0].occ_pct);
        CHECK_STR(m.kernels[1].name, "relu");
        CHECK_EQ_I(m.kernels[1].count, 1);
        CHECK(m.kernels[1].occ_pct < 0); /* not reported */
    }
    CHECK_EQ_I(m.kernel_total_ns, 9000);
    CHECK_EQ_I(m.copies[TB_COPY_H2D].count, 1);
    CHECK_EQ_I(m.copies[TB_COPY_H2D].bytes, 3000000);
    CHECK_EQ_I(m.copies[TB_COPY_H2D].total_ns, 3000);
    CHECK_EQ_I(m.copies[TB_COPY_D2H].count, 1);
    CHECK_EQ_I(m.copies[TB_COPY_D2H].bytes, 1000);
    CHECK_EQ_I(m.copies[TB_COPY_D2H].total_ns, 1000);
    CHECK_EQ_I(m.copies[TB_COPY_D2D].count, 0);
    CHECK_EQ_I(m.copies[TB_COPY_OTHER].count, 0);
    CHECK_EQ_I(m.memsets, 1);
    CHECK_EQ_I(m.memset_ns, 500);

    /* CPU: 14 samples; by self: matmul 5, decode 4, loss 2, main 1 (total
     * 10), train 1 (8), io 1 (1), read 0 (4) */
    CHECK_EQ_I(m.cpu_samples, 14);
    static const struct {
        const char *name;
        int self, total;
    } want[] = {{"matmul", 5, 5}, {"decode", 4, 4}, {"loss", 2, 2}, {"main", 1, 10},
                {"train", 1, 8},  {"io", 1, 1},     {"read", 0, 4}};
    CHECK_EQ_I(m.nfuncs, 7);
    for (size_t i = 0; i < 7 && i < m.nfuncs; i++) {
        CHECK_STR(m.funcs[i].name, want[i].name);
        CHECK_EQ_I(m.funcs[i].self, want[i].self);
        CHECK_EQ_I(m.funcs[i].total, want[i].total);
    }

    CHECK_EQ_I(m.overhead_ns, 12345);
    CHECK(m.trigger && strcmp(m.trigger, "steps 1-3") == 0);
    int dropped = 0, cupti = 0, samples = 0;
    for (size_t i = 0; i < m.ncounters; i++) {
        if (!strcmp(m.counters[i].name, TB_ST_DROPPED) && !strcmp(m.counters[i].plane, "/host:CPU"))
            dropped = (int)m.counters[i].value;
        if (!strcmp(m.counters[i].name, TB_ST_CUPTI_DROPPED) &&
            !strcmp(m.counters[i].plane, "/device:GPU:0"))
            cupti = (int)m.counters[i].value;
        if (!strcmp(m.counters[i].name, TB_ST_SAMPLES))
            samples = (int)m.counters[i].value;
    }
    CHECK_EQ_I(m.ncounters, 3);
    CHECK_EQ_I(dropped, 3);
    CHECK_EQ_I(cupti, 7);
    CHECK_EQ_I(samples, 14);
    CHECK_EQ_I(m.nwarnings, 0);
    tb_summary_free(&m);
    tb_space_free(s);
}

/* A host whose GPU tracing and CPU sampling were off: warnings say why,
 * once each; the capture span is the window. */
static void nvtx_ranges(void)
{
    tb_space *s = example();
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    /* the GPU plane's nvtx_range (a GPU annotation) and the sampled
     * function "loss" are not ranges */
    CHECK_EQ_I(m.range_events, 5);
    CHECK_EQ_I(m.nranges, 3);
    if (m.nranges == 3) {
        CHECK_STR(m.ranges[0].name, "forward");
        CHECK_EQ_I(m.ranges[0].count, 3);
        CHECK_EQ_I(m.ranges[0].total_ns, 10000);
        CHECK_EQ_I(m.ranges[0].min_ns, 2000);
        CHECK_EQ_I(m.ranges[0].max_ns, 5000);
        CHECK_STR(m.ranges[1].name, "attention");
        CHECK_EQ_I(m.ranges[1].total_ns, 1000);
        CHECK_STR(m.ranges[2].name, "loss");
        CHECK_EQ_I(m.ranges[2].count, 1);
        CHECK_EQ_I(m.ranges[2].max_ns, 0);
    }
    tb_summary_free(&m);
    tb_space_free(s);

    /* no annotations: no ranges */
    s = tb_space_new();
    step(tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main"), 1, 0, 10);
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nranges, 0);
    CHECK(m.ranges == NULL);
    tb_summary_free(&m);
    tb_space_free(s);
}

static void warnings_and_no_steps(void)
{
    tb_space *s = tb_space_new();
    tb_space_add_warning(s, "GPU tracing off: libcupti.so not found");
    tb_space_add_error(s, "profile truncated: buffer full");
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_str(h, TB_ST_GPU_OFF_REASON, "libcupti.so not found"); /* said already */
    tb_plane_stat_str(h, TB_ST_CPU_OFF_REASON, "perf_event_open: Permission denied");
    tb_plane_stat_str(h, "tbprof_cpu_mode", "stackcopy"); /* a setting, not a warning */
    tb_line *l = tb_plane_line(h, 7, "worker");
    ev(l, "work", 0, 5000, TB_CAT_USER);
    ev(l, "more", 8000, 2000, TB_CAT_USER);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK(m.host == NULL);
    CHECK_EQ_I(m.nsteps, 0);
    CHECK_EQ_I(m.ngpus, 0);
    CHECK_EQ_I(m.window_ns, 10000);
    CHECK_EQ_I(m.gpu_busy_ns, 0);
    CHECK_EQ_I(m.cpu_samples, 0);
    CHECK_EQ_I(m.nfuncs, 0);
    CHECK_EQ_I(m.overhead_ns, -1);
    CHECK_EQ_I(m.nwarnings, 3);
    if (m.nwarnings == 3) {
        CHECK_STR(m.warnings[0], "GPU tracing off: libcupti.so not found");
        CHECK_STR(m.warnings[1], "profile truncated: buffer full");
        CHECK_STR(m.warnings[2], "CPU sampling off: perf_event_open: Permission denied");
    }
    CHECK_EQ_I(m.ninfos, 1);
    if (m.ninfos == 1) {
        CHECK_STR(m.infos[0].name, "tbprof_cpu_mode");
        CHECK_STR(m.info_values[0], "stackcopy");
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* A warning whose text is part of an earlier one's is a warning of its
 * own; only the very same text twice is said once. */
static void warning_inside_another(void)
{
    tb_space *s = tb_space_new();
    tb_space_add_warning(s, "11 GPU activity records left out: their work was still running");
    tb_space_add_warning(s, "1 GPU activity records left out: their work was still running");
    tb_space_add_warning(s, "11 GPU activity records left out: their work was still running");
    tb_space_add_error(s, "GPU activity records left out");
    ev(tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main"), "work", 0, 10, TB_CAT_USER);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nwarnings, 3);
    if (m.nwarnings == 3) {
        CHECK_STR(m.warnings[0], "11 GPU activity records left out: their work was still running");
        CHECK_STR(m.warnings[1], "1 GPU activity records left out: their work was still running");
        CHECK_STR(m.warnings[2], "GPU activity records left out");
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* Steps partly numbered: two sources' roots of one numbered step merge
 * (also where some roots have no number), an unnumbered root that is a
 * numbered step is that step, and an unnumbered one of its own follows
 * the step before it. */
static void partly_numbered_steps(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(h, 1, "t"), *o = tb_plane_line(h, 2, "other");
    step(l, 100, 0, 1000);
    step(l, 101, 1000, 1000);
    step(o, 101, 1010, 990); /* the same step, from a second source */
    ev(o, "train", 1005, 990, TB_CAT_NONE); /* and from one without numbers */
    st_i(o, TB_ST_IS_ROOT, 1);
    ev(l, "train", 2000, 1000, TB_CAT_NONE); /* a step of its own */
    st_i(l, TB_ST_IS_ROOT, 1);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 3);
    if (m.nsteps == 3) {
        CHECK_EQ_I(m.steps[0].num, 100);
        CHECK_EQ_I(m.steps[0].start_ns - T0, 0);
        CHECK_EQ_I(m.steps[0].dur_ns, 1000);
        CHECK_EQ_I(m.steps[1].num, 101);
        CHECK_EQ_I(m.steps[1].start_ns - T0, 1000);
        CHECK_EQ_I(m.steps[1].dur_ns, 1000);
        CHECK_EQ_I(m.steps[2].num, 102);
        CHECK_EQ_I(m.steps[2].start_ns - T0, 2000);
        CHECK_EQ_I(m.steps[2].dur_ns, 1000);
    }
    CHECK_EQ_I(m.step_mean_ns, 1000);
    tb_summary_free(&m);
    tb_space_free(s);
}

/* Steps without step_num are numbered by start; kernels' occupancy comes
 * from kernel_details also when given a category and a display name. */
static void unnumbered_steps_and_display_names(void)
{
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "t");
    ev(l, "train", 5000, 1000, TB_CAT_NONE);
    st_i(l, TB_ST_IS_ROOT, 1);
    ev(l, "train", 0, 3000, TB_CAT_NONE);
    st_i(l, TB_ST_IS_ROOT, 1);
    ev(l, "not_a_step", 0, 9000, TB_CAT_NONE);
    st_i(l, TB_ST_IS_ROOT, 0);
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *gl = tb_plane_line(g, 1, "s");
    int64_t k = tb_plane_event_meta(g, "_Z4gemmPfS_");
    tb_plane_set_event_display_name(g, k, "gemm(float*, float*)");
    tb_plane_set_event_category(g, k, TB_CAT_KERNEL);
    tb_line_add(gl, k, T0 + 100, 200);
    st_s(gl, TB_ST_KERNEL_DETAILS, "regs:16 occ_pct:12.5");
    tb_line_add(gl, k, T0 + 5000, 4000); /* half inside step 1 */
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 2);
    if (m.nsteps == 2) {
        CHECK_EQ_I(m.steps[0].num, 0);
        CHECK_EQ_I(m.steps[0].dur_ns, 3000);
        CHECK_EQ_I(m.steps[0].gpu_busy_ns, 200);
        CHECK_EQ_I(m.steps[1].num, 1);
        CHECK_EQ_I(m.steps[1].gpu_busy_ns, 1000);
    }
    CHECK_EQ_I(m.nkernels, 1);
    if (m.nkernels == 1) {
        CHECK_STR(m.kernels[0].name, "gemm(float*, float*)");
        CHECK_EQ_I(m.kernels[0].occ_count, 1);
        CHECKF(m.kernels[0].occ_pct == 12.5, "occ %f", m.kernels[0].occ_pct);
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* Up to max random intervals inside [0, span), each cell they cover set in
 * mark (to 1, or to its value in `with`: marks what both cover). */
static size_t random_intervals(tb_interval *iv, size_t max, int64_t span, unsigned char *mark,
                               const unsigned char *with)
{
    size_t n = (size_t)rand() % max;
    for (size_t i = 0; i < n; i++) {
        int64_t a = rand() % span, d = rand() % 200;
        if (a + d > span)
            d = span - a;
        iv[i] = (tb_interval){a, a + d};
        for (int64_t x = a; x < a + d; x++)
            mark[x] = with ? with[x] : 1;
    }
    return n;
}

/* Unions: merge + overlap against a brute-force count over a bitmap. */
static void interval_unions(void)
{
    srand(7);
    for (int round = 0; round < 200; round++) {
        enum { SPAN = 2000 };
        static unsigned char covered[SPAN], both[SPAN];
        memset(covered, 0, sizeof covered);
        tb_interval iv[40];
        size_t n = random_intervals(iv, 40, SPAN, covered, NULL);
        size_t m = tb_intervals_merge(iv, n);
        int ok = 1;
        for (size_t i = 1; i < m; i++)
            ok &= iv[i].start > iv[i - 1].end; /* disjoint, sorted, not touching */
        int64_t lo = rand() % SPAN, hi = lo + rand() % (SPAN - lo + 1);
        int64_t want = 0;
        for (int64_t x = lo; x < hi; x++)
            want += covered[x];
        int64_t got = tb_intervals_overlap(iv, m, lo, hi);
        if (!ok || got != want) {
            CHECKF(0, "round %d: sorted %d, overlap %lld, expected %lld", round, ok,
                   (long long)got, (long long)want);
            return;
        }
        /* a second list: the time both cover */
        tb_interval iv2[40];
        want = 0;
        memset(both, 0, sizeof both);
        size_t n2 = random_intervals(iv2, 40, SPAN, both, covered);
        for (int64_t x = lo; x < hi; x++)
            want += both[x];
        size_t m2 = tb_intervals_merge(iv2, n2);
        got = tb_intervals_both(iv, m, iv2, m2, lo, hi);
        if (got != want || tb_intervals_both(iv2, m2, iv, m, lo, hi) != want) {
            CHECKF(0, "round %d: both %lld, expected %lld", round, (long long)got, (long long)want);
            return;
        }
    }
    CHECK(1);
    /* many intervals: O(n log n), well inside the test's time */
    size_t n = 2000000;
    tb_interval *big = malloc(n * sizeof(*big));
    for (size_t i = 0; i < n; i++) {
        int64_t a = (int64_t)((i * 7919) % n) * 10;
        big[i] = (tb_interval){a, a + 5};
    }
    size_t m = tb_intervals_merge(big, n);
    CHECK_EQ_I(m, n);
    CHECK_EQ_I(tb_intervals_overlap(big, m, 0, (int64_t)n * 10), (int64_t)n * 5);
    CHECK_EQ_I(tb_intervals_overlap(big, m, 3, 13), 2 + 3);
    free(big);
}

/* Communication: collective kernels by name; per step the union of their
 * intervals and the part no compute kernel (on any GPU of the host)
 * overlapped. Copies are not compute. */
static void communication(void)
{
    CHECK(tb_kernel_is_comm("ncclDevKernel_AllReduce_Sum_f32_RING_LL"));
    CHECK(tb_kernel_is_comm("ncclKernel_AllGather_RING_LL_Sum_int8_t"));
    CHECK(tb_kernel_is_comm("void c10d::symmetric_memory::one_shot_all_reduce_kernel<float>"));
    CHECK(tb_kernel_is_comm("NCCL"));
    CHECK(tb_kernel_is_comm("deep_ep::AllToAll"));
    CHECK(tb_kernel_is_comm("reduce_scatter_tensor"));
    CHECK(!tb_kernel_is_comm("sm90_xmma_gemm_f16f16_f32"));
    CHECK(!tb_kernel_is_comm("reduce_kernel<512, 1>"));
    CHECK(!tb_kernel_is_comm("allocate_and_gather"));
    CHECK(!tb_kernel_is_comm(""));

    tb_space *s = tb_space_new();
    tb_line *h = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "python");
    step(h, 1, 0, 10000);
    step(h, 2, 10000, 10000);
    tb_plane *g0 = tb_space_plane(s, "/device:GPU:0");
    tb_line *comp = tb_plane_line(g0, 1, "Stream #1"), *comm = tb_plane_line(g0, 2, "Stream #2");
    tb_line *copy = tb_plane_line(g0, 3, "Stream #3");
    /* step 1: all-reduce [3000,8000) beside a gemm [1000,5000): 2000
     * overlapped, 3000 exposed; the copy under it is not compute */
    kernel(comp, "gemm", 1000, 4000, NULL);
    kernel(comm, "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 3000, 5000, NULL);
    ev(copy, "MemcpyH2D", 6000, 1000, TB_CAT_NONE);
    st_s(copy, TB_ST_MEMCPY_DETAILS, "kind_src:pinned kind_dst:device size:4096 dest:0 async:1");
    /* step 2: two collectives [11000,14000) and [13500,15000) (union 4000);
     * compute [12000,13000) on GPU 0 and [14000,14500) on GPU 1 */
    kernel(comm, "one_shot_all_reduce_kernel", 11000, 3000, NULL);
    kernel(copy, "ncclKernel_AllGather_RING_LL", 13500, 1500, NULL);
    kernel(comp, "gemm", 12000, 1000, NULL);
    kernel(tb_plane_line(tb_space_plane(s, "/device:GPU:1"), 1, "Stream #1"), "relu", 14000, 500, NULL);
    /* after the steps: in the kernel counts, not in the step figures */
    kernel(comm, "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 30000, 100, NULL);

    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.comm_kernels, 4);
    CHECK_EQ_I(m.comm_kernel_ns, 5000 + 3000 + 1500 + 100);
    CHECK_EQ_I(m.nsteps, 2);
    if (m.nsteps == 2) {
        CHECK_EQ_I(m.steps[0].comm_ns, 5000);
        CHECK_EQ_I(m.steps[0].comm_exposed_ns, 3000);
        CHECK_EQ_I(m.steps[1].comm_ns, 4000);
        CHECK_EQ_I(m.steps[1].comm_exposed_ns, 4000 - 1000 - 500);
    }
    CHECK_EQ_I(m.comm_ns, 9000);
    CHECK_EQ_I(m.comm_exposed_ns, 5500);
    tb_summary_free(&m);
    tb_space_free(s);

    /* no steps: the same figures over the whole capture */
    s = tb_space_new();
    g0 = tb_space_plane(s, "/device:GPU:0");
    comp = tb_plane_line(g0, 1, "Stream #1"), comm = tb_plane_line(g0, 2, "Stream #2");
    kernel(comm, "ncclDevKernel_SendRecv", 0, 1000, NULL);
    kernel(comp, "gemm", 800, 1000, NULL);
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 0);
    CHECK_EQ_I(m.comm_ns, 1000);
    CHECK_EQ_I(m.comm_exposed_ns, 800);
    tb_summary_free(&m);
    tb_space_free(s);
}

static void kernel_corr(tb_line *l, int64_t start, int64_t dur, int64_t corr)
{
    ev(l, "k", start, dur, TB_CAT_NONE);
    st_s(l, TB_ST_KERNEL_DETAILS, "regs:32 grid:8,1,1 block:256,1,1");
    st_i(l, TB_ST_CORRELATION_ID, corr);
}

static void call(tb_line *l, int64_t start, int64_t dur, int64_t corr)
{
    ev(l, "cudaLaunchKernel", start, dur, TB_CAT_CUDA_RUNTIME);
    st_i(l, TB_ST_CORRELATION_ID, corr);
}

/* GPU idle by cause: each gap split at the end of the call that launched
 * the work ending it. */
static void idle_by_cause(void)
{
    tb_space *s = tb_space_new();
    tb_line *h = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "python");
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *s7 = tb_plane_line(g, 7, "Stream #7"), *s9 = tb_plane_line(g, 9, "Stream #9");
    step(h, 1, 0, 10000);
    /* [0,300): launched at 200: 200 waiting for the CPU, 100 queued */
    call(h, 100, 100, 1);
    kernel_corr(s7, 300, 700, 1);
    /* queued behind it: no gap */
    call(h, 400, 100, 2);
    kernel_corr(s7, 1000, 1000, 2);
    /* [2000,5050): starts before its call returns: all waiting for the CPU */
    call(h, 5000, 100, 3);
    kernel_corr(s7, 5050, 950, 3);
    /* [6000,7000): no call in the profile: neither */
    kernel_corr(s7, 7000, 500, 99);
    /* [7500,8000): launched long before (at 150): queued */
    call(h, 100, 50, 4);
    kernel_corr(s9, 8000, 200, 4);
    /* [8200,10000): no GPU work after: neither */
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 1);
    if (m.nsteps == 1) {
        CHECK_EQ_I(m.steps[0].gpu_idle_ns, 10000 - 3350);
        CHECK_EQ_I(m.steps[0].idle_cpu_ns, 200 + 3050);
        CHECK_EQ_I(m.steps[0].idle_queued_ns, 100 + 500);
    }
    CHECK_EQ_I(m.idle_cpu_ns, 3250);
    CHECK_EQ_I(m.idle_queued_ns, 600);
    /* the calls that launched work: 1-4 (99 has none), 100 + 100 + 100 + 50 */
    CHECK_EQ_I(m.launch_calls, 4);
    CHECK_EQ_I(m.launch_call_ns, 350);
    tb_summary_free(&m);
    tb_space_free(s);
}

/* GPU time by NVTX range: a call's work counts once for each name open
 * around it, once also where a name is nested in itself; many async ranges
 * open at once (a server's requests) are summed in time linear in them. */
static void range_gpu_time(void)
{
    tb_space *s = tb_space_new();
    tb_line *h = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "python");
    tb_line *k = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    ev(h, "layer", 0, 1000, TB_CAT_USER);
    ev(h, "layer", 100, 500, TB_CAT_USER);
    ev(h, "attn", 200, 100, TB_CAT_USER);
    call(h, 250, 10, 1); /* layer > layer > attn */
    kernel_corr(k, 300, 40, 1);
    call(h, 700, 10, 2); /* layer */
    kernel_corr(k, 800, 60, 2);
    /* 5000 requests, each named by its id and open till the end: a call
     * after each start, inside it and every request begun before */
    const int64_t n = 5000, t0 = 10000;
    for (int64_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "request %lld", (long long)i);
        ev(h, name, t0 + 10 * i, 10 * n, TB_CAT_USER);
    }
    for (int64_t i = 0; i < n; i++) {
        call(h, t0 + 10 * i + 1, 1, 100 + i);
        kernel_corr(k, t0 + 10 * i + 5, 2, 100 + i);
    }
    tb_summary m;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK(tb_summarize(s, &m) == 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("# %lld async ranges open at once: summarized in %.3f s\n", (long long)n,
           (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    int found = 0;
    int64_t req_count = 0, req_gpu_count = 0, req_gpu_ns = 0, req_first = -1;
    for (size_t i = 0; i < m.nranges; i++) {
        const tb_sum_named *r = &m.ranges[i];
        if (!strcmp(r->name, "layer")) {
            found++;
            CHECK_EQ_I(r->gpu_count, 2);
            CHECK_EQ_I(r->gpu_ns, 100);
        } else if (!strcmp(r->name, "attn")) {
            found++;
            CHECK_EQ_I(r->gpu_count, 1);
            CHECK_EQ_I(r->gpu_ns, 40);
        } else if (!strncmp(r->name, "request ", 8)) {
            req_count += (int64_t)r->count;
            req_gpu_count += (int64_t)r->gpu_count;
            req_gpu_ns += r->gpu_ns;
            if (!strcmp(r->name, "request 0"))
                req_first = (int64_t)r->gpu_count;
        }
    }
    CHECK_EQ_I(found, 2);
    CHECK_EQ_I(req_count, n);
    CHECK_EQ_I(req_first, n); /* open around every call */
    CHECK_EQ_I(req_gpu_count, n * (n + 1) / 2);
    CHECK_EQ_I(req_gpu_ns, n * (n + 1));
    tb_summary_free(&m);
    tb_space_free(s);
}

/* A capture by time: kernels before the first step and after the last are
 * counted in the totals, and not in the step figures. A kernel is in a step
 * when its call started in one (the kernel may run after the step ends),
 * or, without a call, when it started in one. */
static void kernels_in_steps(void)
{
    tb_space *s = tb_space_new();
    tb_line *h = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "python");
    tb_line *w = tb_plane_line(tb_space_plane(s, "/host:CPU"), 2, "autograd");
    tb_line *k = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    /* the end of the step before the capture: launched and ran outside */
    call(h, 0, 100, 1);
    kernel_corr(k, 150, 400, 1);
    step(h, 5, 1000, 1000);
    step(h, 6, 2000, 1000);
    /* in step 5, on the main thread and on another thread */
    call(h, 1100, 100, 2);
    kernel_corr(k, 1300, 300, 2);
    call(w, 1500, 100, 3);
    kernel_corr(k, 1700, 200, 3);
    /* launched in step 6, ran after it ended */
    call(h, 2900, 50, 4);
    kernel_corr(k, 3000, 700, 4);
    /* no call in the profile: by its own start (in step 6, then after) */
    kernel_corr(k, 2500, 100, 98);
    kernel_corr(k, 3800, 100, 99);
    /* the next step's beginning, cut by the capture's end: outside */
    call(h, 3100, 50, 5);
    kernel_corr(k, 3900, 500, 5);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 2);
    CHECK_EQ_I(m.nkernels, 1);
    if (m.nkernels == 1) {
        CHECK_EQ_I(m.kernels[0].count, 7);
        CHECK_EQ_I(m.kernels[0].total_ns, 400 + 300 + 200 + 700 + 100 + 100 + 500);
        CHECK_EQ_I(m.kernels[0].step_count, 4);
        CHECK_EQ_I(m.kernels[0].step_ns, 300 + 200 + 700 + 100);
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* While the GPU waited for the CPU: the launching thread's CPU samples say
 * whether it was on CPU (in which frame) or off CPU; clipped to the steps. */
static void cpu_while_waiting(void)
{
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_u64(hp, "tbprof_cpu_hz", 1000);
    tb_line *py = tb_plane_line(hp, 1, "python");
    tb_line *other = tb_plane_line(tb_space_plane(s, "/host:unsampled"), 2, "other");
    tb_line *quiet = tb_plane_line(hp, 3, "no samples"); /* on the sampled plane */
    tb_line *s7 = tb_plane_line(tb_space_plane(s, "/device:GPU:0"), 7, "Stream #7");
    step(py, 1, 0, 10000);
    step(py, 2, 10000, 2000);
    /* waits (GPU idle until the launching call's end): [0,100) and
     * [1000,4900) on python, [6000,6500) on the unsampled host plane,
     * [7500,10600) on python across the step boundary */
    call(py, 0, 100, 1);
    kernel_corr(s7, 100, 900, 1);
    call(py, 4800, 100, 2);
    kernel_corr(s7, 5000, 1000, 2);
    call(other, 6000, 500, 3);
    kernel_corr(s7, 7000, 500, 3);
    call(py, 10500, 100, 4);
    kernel_corr(s7, 11000, 500, 4);
    /* [11500,11800) launched by a thread without a sample: unsampled */
    call(quiet, 11700, 100, 5);
    kernel_corr(s7, 11800, 100, 5);
    /* python's samples: train > load_batch > read (native: credited to
     * load_batch); off CPU [3500,4000) and [4500,4900); forward; a native
     * root with no Python frame above it, credited to itself */
    span(py, "py::train", 0, 3500, 3);
    span(py, "py::load_batch", 1000, 2000, 2);
    span(py, "read", 1500, 1000, 1);
    span(py, "py::forward", 4000, 500, 1);
    span(py, "native_only", 9000, 1200, 1);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 2);
    CHECK_EQ_I(m.idle_cpu_ns, 100 + 3900 + 500 + 3100 + 300);
    /* on: train 100 + 500, load_batch 2000, forward 500, native_only 1000 + 200 */
    CHECK_EQ_I(m.wait_on_cpu_ns, 4300);
    /* off: [3500,4000) [4500,4900) [7500,9000) [10200,10600) */
    CHECK_EQ_I(m.wait_off_cpu_ns, 500 + 400 + 1500 + 400);
    CHECK_EQ_I(m.wait_unsampled_ns, 500 + 300);
    CHECK_EQ_I(m.wait_on_cpu_ns + m.wait_off_cpu_ns + m.wait_unsampled_ns, m.idle_cpu_ns);
    static const struct {
        const char *name;
        int64_t ns;
    } want[] = {{"py::load_batch", 2000}, {"native_only", 1200}, {"py::train", 600}, {"py::forward", 500}};
    CHECK_EQ_I(m.nwait_frames, 4);
    for (size_t i = 0; i < m.nwait_frames && i < 4; i++) {
        CHECK_STR(m.wait_frames[i].name, want[i].name);
        CHECK_EQ_I(m.wait_frames[i].ns, want[i].ns);
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* Syncs: the host's waits for the GPU by the frame of the call that waited */
static void syncs_by_caller(void)
{
    const int64_t ms = 1000000;
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_u64(hp, "tbprof_cpu_hz", 1000); /* a sample every ms */
    tb_line *py = tb_plane_line(hp, 1, "python");
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *sl = tb_plane_line(g, 0x7fffffff, "CUDA sync");
    span(py, "py::train", 0, 10 * ms, 10);
    span(py, "py::loss_item", 2 * ms, 4 * ms, 4);
    span(py, "native_wait", 3 * ms, 2 * ms, 2); /* began within a period of the call: not known around it */
    ev(py, "cudaStreamSynchronize", 4 * ms, ms / 2, TB_CAT_CUDA_RUNTIME);
    st_i(py, TB_ST_CORRELATION_ID, 11);
    ev(py, "cudaDeviceSynchronize", 8 * ms, ms / 5, TB_CAT_CUDA_RUNTIME);
    st_i(py, TB_ST_CORRELATION_ID, 12);
    ev(py, "cudaStreamWaitEvent", 5 * ms, ms / 10, TB_CAT_CUDA_RUNTIME);
    st_i(py, TB_ST_CORRELATION_ID, 13);
    ev(sl, "Stream Sync", 4 * ms, 400000, TB_CAT_CUDA_SYNC);
    st_i(sl, TB_ST_CORRELATION_ID, 11);
    ev(sl, "Context Sync", 8 * ms, 200000, TB_CAT_CUDA_SYNC);
    st_i(sl, TB_ST_CORRELATION_ID, 12);
    ev(sl, "Stream Wait Event", 5 * ms, 100000, TB_CAT_CUDA_SYNC); /* the host does not wait */
    st_i(sl, TB_ST_CORRELATION_ID, 13);
    ev(sl, "Event Sync", 9 * ms, 50000, TB_CAT_CUDA_SYNC); /* its call not in the capture */
    st_i(sl, TB_ST_CORRELATION_ID, 99);
    /* a native thread in a system call in the samples around its call: the
     * function that entered the kernel, not "[kernel]" */
    tb_line *w = tb_plane_line(hp, 2, "worker");
    span(w, "native_loop", 0, 10 * ms, 10);
    span(w, TB_CPU_KERNEL_FRAME, 0, 10 * ms, 10);
    ev(w, "cudaEventSynchronize", 6 * ms, ms / 5, TB_CAT_CUDA_RUNTIME);
    st_i(w, TB_ST_CORRELATION_ID, 14);
    ev(sl, "Event Sync", 6 * ms, 100000, TB_CAT_CUDA_SYNC);
    st_i(sl, TB_ST_CORRELATION_ID, 14);
    tb_space_sort(s);
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.syncs, 4);
    CHECK_EQ_I(m.sync_ns, 750000);
    CHECK_EQ_I(m.sync_no_call_ns, 50000);
    CHECK_EQ_I(m.sync_unsampled_ns, 0);
    CHECK_EQ_I(m.nsync_frames, 3);
    if (m.nsync_frames == 3) {
        CHECK_STR(m.sync_frames[0].name, "py::loss_item");
        CHECK_EQ_I(m.sync_frames[0].ns, 400000);
        CHECK_STR(m.sync_frames[1].name, "py::train");
        CHECK_EQ_I(m.sync_frames[1].ns, 200000);
        CHECK_STR(m.sync_frames[2].name, "native_loop");
        CHECK_EQ_I(m.sync_frames[2].ns, 100000);
    }
    tb_summary_free(&m);
    tb_space_free(s);
}

/* step_num written as a double by another writer: a number where it is
 * one; NaN or out of int64's range is no number (the cast was undefined
 * and gave step INT64_MIN) */
static void step_num_doubles(void)
{
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "t");
    double nums[] = {0.0 / 0.0, 7.0, 1e30};
    for (int i = 0; i < 3; i++) {
        ev(l, "train", 1000 * i, 1000, TB_CAT_NONE);
        st_i(l, TB_ST_IS_ROOT, 1);
        tb_line_stat_f64(l, tb_plane_stat_meta(l->plane, TB_ST_STEP_NUM), nums[i]);
    }
    tb_summary m;
    CHECK(tb_summarize(s, &m) == 0);
    CHECK_EQ_I(m.nsteps, 3);
    for (size_t i = 0; i < m.nsteps; i++)
        CHECKF(m.steps[i].num >= 0 && m.steps[i].num < 10, "step %zu numbered %lld", i, (long long)m.steps[i].num);
    tb_summary_free(&m);
    tb_space_free(s);
}

static void details_parsing(void)
{
    double v = 0;
    char buf[16];
    CHECK(tb_details_num("regs:32 occ_pct:66.5", "occ_pct", &v) && v == 66.5);
    CHECK(tb_details_num("regs:32 occ_pct:66.5", "regs", &v) && v == 32);
    CHECK(!tb_details_num("xregs:32", "regs", &v));
    CHECK(!tb_details_num(NULL, "regs", &v));
    CHECK(tb_details_str("kind_src:pinned kind_dst:device", "kind_dst", buf, sizeof buf));
    CHECK_STR(buf, "device");
}

/* The same figures after tb_profile_write and tb_xspace_read_file: the
 * summary of a file equals the summary of the space the agent held. */
static void through_a_file(void)
{
    char dir[] = "/tmp/tbprof-test-summary-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECKF(0, "mkdtemp failed");
        return;
    }
    tb_space *s = example();
    tb_summary a, b;
    CHECK(tb_summarize(s, &a) == 0);
    char path[512];
    tb_profile_opts o = {.logdir = dir, .run = "run1", .host = "node1.rank0"};
    CHECK(tb_profile_write(s, &o, path, sizeof path) == 0);
    tb_space *r = NULL;
    char err[256] = "";
    CHECKF(tb_xspace_read_file(path, &r, err, sizeof err) == 0, "%s: %s", path, err);
    if (r) {
        CHECK(tb_summarize(r, &b) == 0);
        CHECK_EQ_I(b.nsteps, a.nsteps);
        for (size_t i = 0; i < a.nsteps && i < b.nsteps; i++) {
            CHECK_EQ_I(b.steps[i].num, a.steps[i].num);
            CHECK_EQ_I(b.steps[i].dur_ns, a.steps[i].dur_ns);
            CHECK_EQ_I(b.steps[i].gpu_busy_ns, a.steps[i].gpu_busy_ns);
            CHECK_EQ_I(b.steps[i].h2d_ns, a.steps[i].h2d_ns);
            CHECK_EQ_I(b.steps[i].d2h_ns, a.steps[i].d2h_ns);
        }
        CHECK_EQ_I(b.gpu_busy_ns, 11500);
        CHECK_EQ_I(b.gpu_events, 7);
        CHECK_EQ_I(b.nkernels, 2);
        if (b.nkernels == 2) {
            CHECK_STR(b.kernels[0].name, "gemm");
            CHECKF(b.kernels[0].occ_pct == 50.0, "occ %f", b.kernels[0].occ_pct);
        }
        CHECK_EQ_I(b.nranges, 3); /* the category survives the file */
        if (b.nranges == 3)
            CHECK_EQ_I(b.ranges[0].total_ns, 10000);
        CHECK_EQ_I(b.copies[TB_COPY_H2D].bytes, 3000000);
        CHECK_EQ_I(b.copies[TB_COPY_D2H].bytes, 1000);
        CHECK_EQ_I(b.cpu_samples, 14);
        CHECK_EQ_I(b.nfuncs, 7);
        if (b.nfuncs == 7) {
            CHECK_STR(b.funcs[0].name, "matmul");
            CHECK_EQ_I(b.funcs[3].total, 10);
        }
        CHECK_EQ_I(b.overhead_ns, 12345);
        CHECK_EQ_I(b.ncounters, 3);
        tb_summary_free(&b);
        tb_space_free(r);
    }
    tb_summary_free(&a);
    tb_space_free(s);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    steps_and_gpu();
    nvtx_ranges();
    warnings_and_no_steps();
    warning_inside_another();
    unnumbered_steps_and_display_names();
    partly_numbered_steps();
    interval_unions();
    communication();
    idle_by_cause();
    kernels_in_steps();
    range_gpu_time();
    cpu_while_waiting();
    syncs_by_caller();
    details_parsing();
    step_num_doubles();
    through_a_file();
    return tap_done();
}
