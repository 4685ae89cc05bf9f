/* bench_summary.c - cost of `tbprof summary`'s analysis (tb_summarize) and
 * of folding CPU sample spans, on spaces built in memory (no file I/O):
 * N kernels over 2 GPUs x 4 streams inside 100 steps, plus N/10 CPU sample
 * spans 8 deep. Prints seconds and ns per event; shows the analysis is
 * O(n log n): the per-event cost stays flat as N grows 10x.
 * Then the same N with each kernel's launch on the host (correlation ids)
 * and NVTX ranges ("forward" per step, 10 "layer"s in it): the GPU time
 * per range adds the join of ranges, launches and GPU work, reported as
 * the ratio of the two runs' summarize times; it includes crediting each
 * of the GPU's waits for the CPU to the CPU spans of the launching thread.
 * usage: bench_summary [N] (default 1000000) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "folded.h"
#include "stats.h"
#include "summary.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static tb_space *build(size_t n, int launches)
{
    const int64_t t0 = 1700000000000000000LL, step_ns = 30000000;
    const size_t steps = 100;
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *ht = tb_plane_line(h, 1, "python");
    int64_t r = tb_plane_stat_meta(h, TB_ST_IS_ROOT), sn = tb_plane_stat_meta(h, TB_ST_STEP_NUM);
    int64_t smp = tb_plane_stat_meta(h, "samples");
    tb_plane_stat_u64(h, "tbprof_cpu_hz", 1000); /* sampled: what the GPU waited on is looked up */
    for (size_t i = 0; i < steps; i++) {
        tb_line_add(ht, tb_plane_event_meta(h, "train"), t0 + (int64_t)i * step_ns, step_ns);
        tb_line_stat_i64(ht, r, 1);
        tb_line_stat_i64(ht, sn, (int64_t)i);
    }
    /* CPU spans: stacks 8 deep, each leaf 1 sample */
    char name[32];
    size_t nspans = n / 10, depth = 8, stacks = nspans / depth;
    int64_t span_ns = steps * step_ns / (int64_t)(stacks ? stacks : 1);
    for (size_t k = 0; k < stacks; k++)
        for (size_t d = 0; d < depth; d++) {
            snprintf(name, sizeof name, "fn_%zu_%zu", d, (k * 7 + d) % 50);
            int64_t m = tb_plane_event_meta(h, name);
            tb_plane_set_event_category(h, m, TB_CAT_CPU_SAMPLE);
            tb_line_add(ht, m, t0 + (int64_t)k * span_ns + (int64_t)d, span_ns - 2 * (int64_t)d);
            tb_line_stat_u64(ht, smp, 1);
        }
    if (launches) /* NVTX: forward over 60% of each step, 10 layers in it */
        for (size_t i = 0; i < steps; i++) {
            int64_t b = t0 + (int64_t)i * step_ns;
            tb_line_add(ht, tb_plane_event_meta_cat(h, "forward", TB_CAT_USER), b, step_ns * 6 / 10);
            for (int k = 0; k < 10; k++)
                tb_line_add(ht, tb_plane_event_meta_cat(h, "layer", TB_CAT_USER), b + k * step_ns * 6 / 100,
                            step_ns * 5 / 100);
        }
    int64_t launch = tb_plane_event_meta_cat(h, "cudaLaunchKernel", TB_CAT_CUDA_RUNTIME);
    int64_t hc = tb_plane_stat_meta(h, TB_ST_CORRELATION_ID);
    uint64_t corr = 0;
    for (int g = 0; g < 2; g++) {
        snprintf(name, sizeof name, "/device:GPU:%d", g);
        tb_plane *p = tb_space_plane(s, name);
        int64_t kd = tb_plane_stat_meta(p, TB_ST_KERNEL_DETAILS);
        int64_t dc = tb_plane_stat_meta(p, TB_ST_CORRELATION_ID);
        size_t per = n / 8;
        int64_t gap = steps * step_ns / (int64_t)(per ? per : 1);
        for (int st = 0; st < 4; st++) {
            tb_line *l = tb_plane_line(p, st + 1, "stream");
            for (size_t i = 0; i < per; i++) {
                snprintf(name, sizeof name, "kernel_%zu", (i * 31 + (size_t)st) % 200);
                tb_line_add(l, tb_plane_event_meta(p, name), t0 + (int64_t)i * gap + st * 100,
                            gap / 2);
                tb_line_stat_str(l, kd, "regs:32 grid:8,1,1 block:256,1,1 occ_pct:50");
                if (!launches)
                    continue;
                tb_line_stat_u64(l, dc, ++corr);
                tb_line_add(ht, launch, t0 + (int64_t)i * gap + st * 100 - 50, 20);
                tb_line_stat_u64(ht, hc, corr);
            }
        }
    }
    return s;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    double plain = 0; /* s/event without launches, at N */
    for (size_t scale = n / 10; scale <= n * 10; scale *= 10) {
        int launches = scale > n;
        if (launches)
            scale = n;
        tb_space *s = build(scale, launches);
        tb_space_sort(s);
        size_t events = tb_space_event_count(s);
        double a = now();
        tb_summary m;
        if (tb_summarize(s, &m) != 0)
            return 1;
        double b = now();
        tb_folded f = {0};
        tb_folded_add_space(&f, s);
        tb_flame_node *root = tb_flame_tree(&f, 1);
        double c = now();
        printf("events %9zu  summarize %.3f s (%.0f ns/event)  fold+tree %.3f s  "
               "[steps %zu, busy %.1f%%, kernels %zu, samples %llu]\n",
               events, b - a, (b - a) * 1e9 / (double)events, c - b, m.nsteps,
               100.0 * (double)m.gpu_busy_ns / (double)m.window_ns, m.nkernels,
               (unsigned long long)m.cpu_samples);
        if (!launches) {
            plain = (b - a) / (double)events;
        } else {
            const tb_sum_named *fw = m.nranges ? &m.ranges[0] : NULL;
            printf("  with launches and NVTX ranges: %.2fx the summarize time per event without them "
                   "[%s: %llu GPU ops inside]\n",
                   (b - a) / (double)events / plain, fw ? fw->name : "-",
                   fw ? (unsigned long long)fw->gpu_count : 0ULL);
            tb_summary_free(&m);
            tb_folded_free(&f);
            tb_flame_free(root);
            tb_space_free(s);
            break;
        }
        tb_flame_free(root);
        tb_folded_free(&f);
        tb_summary_free(&m);
        tb_space_free(s);
    }
    return 0;
}
