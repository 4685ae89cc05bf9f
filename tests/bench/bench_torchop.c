/* bench_torchop.c - the cost, at collect time on the agent thread, of
 * torch's op ranges (emit_nvtx, `tbprof run --torch-ops`) against plain
 * NVTX ranges: N ranges into a /host:CPU line as the NVTX source puts
 * them there. Baseline: 64 names of the user's ("layer_17"), looked at by
 * the parser and left alone. Torch: every range a name of its own
 * ("aten::mm, seq = 12, op_id = 345", from 64 ops), cut to the op's name
 * with torch_seq and torch_op_id as stats. Prints ns per range for both
 * and their ratio (same run, same machine).
 *
 * Then the kernels those ranges launched (one each, N/4 of them): naming
 * them (tb_space_link_ranges) with nvtx_range and tf_op, against the same
 * ranges marked as step ranges (nvtx_range only, the baseline; best of 3
 * in turns), and the bytes each adds to xplane.pb per kernel.
 *
 * Last, the steps across threads (tb_space_link_steps): N CUDA calls on
 * another thread than the 100 steps', each linked to its step, against the
 * same calls on the step thread (only looked at: the baseline).
 * usage: bench_torchop [N] (default 1000000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ranges.h"
#include "stats.h"
#include "torchop.h"
#include "trace.h"
#include "xspace.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* names[i]: NUL-separated in one block, as the NVTX arena keeps them */
static char *make_names(size_t n, int torch, size_t **off)
{
    char *buf = malloc(n * 48);
    *off = malloc(n * sizeof(**off));
    if (!buf || !*off)
        return NULL;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        (*off)[i] = at;
        at += (size_t)(torch ? sprintf(buf + at, "aten::op_%02zu, seq = %zu, op_id = %zu", i % 64, i / 3, i + 100)
                             : sprintf(buf + at, "layer_%02zu", i % 64)) + 1;
    }
    return buf;
}

static double run(size_t n, const char *names, const size_t *off, size_t *nstats)
{
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(hp, 1, "python");
    double t = now();
    for (size_t i = 0; i < n; i++) {
        const char *name = names + off[i];
        tb_torch_op op;
        int64_t meta = tb_nvtx_range_meta(hp, name, strlen(name), &op);
        if (tb_line_add(l, meta, 1700000000000000000LL + (int64_t)i * 1000, 500) < 0)
            break;
        tb_torch_op_stats(hp, l, &op);
    }
    t = now() - t;
    *nstats = 0;
    for (size_t i = 0; i < l->nevents; i++)
        *nstats += l->events[i].nstats;
    tb_space_free(s);
    return t;
}

static size_t encoded_size(tb_space *s)
{
    tb_buf b = {0};
    if (tb_xspace_encode(s, &b) < 0) {
        fprintf(stderr, "bench_torchop: encode failed\n");
        exit(1);
    }
    size_t n = b.len;
    tb_buf_free(&b);
    return n;
}

/* n op ranges on one thread, a launch in each, its kernel on a stream;
 * steps: the ranges are step ranges (no tf_op). Returns the link's
 * seconds; *added: the bytes it added to xplane.pb. */
static double link_run(size_t n, int steps, size_t *added)
{
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU"), *dp = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(hp, 1, "python"), *st = tb_plane_line(dp, 7, "Stream #7");
    int64_t call = tb_plane_event_meta_cat(hp, "cudaLaunchKernel", TB_CAT_CUDA_RUNTIME);
    int64_t hc = tb_plane_stat_meta(hp, TB_ST_CORRELATION_ID), dc = tb_plane_stat_meta(dp, TB_ST_CORRELATION_ID);
    int64_t step = tb_plane_stat_meta(hp, TB_ST_STEP_RANGE), kd = tb_plane_stat_meta(dp, TB_ST_KERNEL_DETAILS);
    int64_t t0 = 1700000000000000000LL;
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "aten::op_%02zu", i % 64);
        tb_line_add(l, tb_plane_event_meta_cat(hp, name, TB_CAT_USER), t0 + (int64_t)i * 1000, 500);
        if (steps)
            tb_line_stat_i64(l, step, 1);
        tb_line_add(l, call, t0 + (int64_t)i * 1000 + 100, 50);
        tb_line_stat_u64(l, hc, i + 1);
        snprintf(name, sizeof name, "gemm_%02zu", i % 64);
        tb_line_add(st, tb_plane_event_meta_cat(dp, name, TB_CAT_KERNEL), t0 + (int64_t)i * 1000 + 300, 400);
        tb_line_stat_u64(st, dc, i + 1);
        tb_line_stat_str(st, kd, "regs:32 static_shared:0 dynamic_shared:0 grid:80,1,1 block:256,1,1 occ_pct:100");
    }
    tb_space_sort(s);
    size_t before = encoded_size(s);
    double t = now();
    int64_t named = tb_space_link_ranges(s);
    t = now() - t;
    if (named != (int64_t)n) {
        fprintf(stderr, "bench_torchop: %lld of %zu kernels named\n", (long long)named, n);
        exit(1);
    }
    *added = encoded_size(s) - before;
    tb_space_free(s);
    return t;
}

/* n calls during 100 steps, on the steps' own thread or another; returns
 * tb_space_link_steps' seconds. */
static double steps_run(size_t n, int other)
{
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU");
    tb_line *m = tb_plane_line(hp, 1, "python"), *bw = tb_plane_line(hp, 2, "autograd");
    int64_t root = tb_plane_event_meta_cat(hp, "train", TB_CAT_STEP);
    int64_t call = tb_plane_event_meta_cat(hp, "cudaLaunchKernel", TB_CAT_CUDA_RUNTIME);
    int64_t r = tb_plane_stat_meta(hp, TB_ST_IS_ROOT), num = tb_plane_stat_meta(hp, TB_ST_STEP_NUM),
            corr = tb_plane_stat_meta(hp, TB_ST_CORRELATION_ID);
    int64_t t0 = 1700000000000000000LL, per = (int64_t)n * 1000 / 100;
    for (int k = 0; k < 100; k++) {
        tb_line_add(m, root, t0 + k * per, per);
        tb_line_stat_i64(m, r, 1);
        tb_line_stat_i64(m, num, k);
    }
    tb_line *l = other ? bw : m;
    for (size_t i = 0; i < n; i++) {
        tb_line_add(l, call, t0 + (int64_t)i * 1000 + 10, 50);
        tb_line_stat_u64(l, corr, i + 1);
    }
    if (!other)
        tb_line_add(bw, call, t0 - 1000, 50); /* a second line, before the steps */
    tb_space_sort(s);
    double t = now();
    int64_t linked = tb_space_link_steps(s);
    t = now() - t;
    if (linked != (other ? (int64_t)n : 0)) {
        fprintf(stderr, "bench_torchop: %lld calls linked to their step, expected %zu\n", (long long)linked,
                other ? n : 0);
        exit(1);
    }
    tb_space_free(s);
    return t;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    size_t *off_plain, *off_torch, st_plain, st_torch;
    char *plain = make_names(n, 0, &off_plain), *torch = make_names(n, 1, &off_torch);
    if (!plain || !torch) {
        fprintf(stderr, "bench_torchop: out of memory\n");
        return 1;
    }
    run(n / 10, plain, off_plain, &st_plain); /* warm the heap */
    double tp = run(n, plain, off_plain, &st_plain);
    double tt = run(n, torch, off_torch, &st_torch);
    if (st_plain != 0 || st_torch != 2 * n) {
        fprintf(stderr, "bench_torchop: %zu and %zu stats, expected 0 and %zu\n", st_plain, st_torch, 2 * n);
        return 1;
    }
    printf("bench_torchop: %zu NVTX ranges into events: plain names %.1f ns/range, torch op names %.1f ns/range "
           "(op name + torch_seq + torch_op_id): ratio %.2f\n",
           n, tp / n * 1e9, tt / n * 1e9, tt / tp);
    size_t k = n / 4, b_step, b_op;
    link_run(k / 10, 0, &b_op); /* warm */
    double ls = 1e30, lo = 1e30; /* best of 3, taken in turns */
    for (int r = 0; r < 3; r++) {
        double a = link_run(k, 1, &b_step), b = link_run(k, 0, &b_op);
        ls = a < ls ? a : ls;
        lo = b < lo ? b : lo;
    }
    printf("bench_torchop: %zu kernels named by their range: nvtx_range only %.1f ns/kernel, + tf_op %.1f "
           "ns/kernel (ratio %.2f); xplane.pb +%.1f vs +%.1f bytes/kernel\n",
           k, ls / k * 1e9, lo / k * 1e9, lo / ls, (double)b_step / k, (double)b_op / k);
    double same = 1e30, other = 1e30;
    for (int r = 0; r < 3; r++) {
        double a = steps_run(n, 0), b = steps_run(n, 1);
        same = a < same ? a : same;
        other = b < other ? b : other;
    }
    printf("bench_torchop: %zu calls in 100 steps: on the step thread (looked at) %.1f ns/call, on another "
           "thread (linked to their step) %.1f ns/call (ratio %.2f)\n",
           n, same / n * 1e9, other / n * 1e9, other / same);
    free(plain);
    free(torch);
    free(off_plain);
    free(off_torch);
    return 0;
}
