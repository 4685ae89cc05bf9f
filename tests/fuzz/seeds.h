/* seeds.h - what the fuzzers' synthetic seeds add to a synthetic capture
 * (tools/synth_space.h), so mutations reach the summary's joins: NVTX
 * ranges and CPU sample spans around the launches (GPU per range,
 * launchers, the CPU while the GPU waited) and sync records with their
 * calls (syncs by calling frame), CUDA calls on another thread inside the
 * steps (steps across threads). Used by fuzz_summary and lf_space. */
#ifndef TBPROF_FUZZ_SEEDS_H
#define TBPROF_FUZZ_SEEDS_H

#include <string.h>

#include "stats.h"
#include "trace.h"

/* NVTX ranges and CPU sample spans around the synthetic capture's launches,
 * so mutations reach the joins of ranges, samples and GPU work (the
 * summary's GPU per range and launchers). */
static inline void add_ranges_and_samples(tb_space *s, int64_t tid)
{
    tb_plane *h = tb_space_find_plane(s, "/host:CPU");
    tb_line *l = h ? tb_plane_find_line(h, tid) : NULL;
    int64_t b, e;
    tb_space_span(s, &b, &e);
    if (!l || e <= b)
        return;
    tb_plane_stat_u64(h, "tbprof_cpu_hz", 100000); /* 10 us periods */
    int64_t fwd = tb_plane_event_meta_cat(h, "forward", TB_CAT_USER);
    int64_t outer = tb_plane_event_meta_cat(h, "main", TB_CAT_CPU_SAMPLE);
    int64_t inner = tb_plane_event_meta_cat(h, "py::step:/x/loop.py", TB_CAT_CPU_SAMPLE);
    int64_t smp = tb_plane_stat_meta(h, "samples");
    tb_line_add(l, outer, b, e - b);
    tb_line_stat_u64(l, smp, (uint64_t)((e - b) / 10000));
    for (int64_t t = b; t + 40000 < e; t += 100000) {
        tb_line_add(l, fwd, t + 1000, 60000);
        tb_line_add(l, inner, t, 50000);
        tb_line_stat_u64(l, smp, 5);
    }
}

/* A "CUDA sync" line on the first GPU: every tenth launch of thread tid is
 * followed by a cudaStreamSynchronize whose Stream Sync record waits 20 us;
 * one record has no call (its call before the capture). */
static inline void add_syncs(tb_space *s, int64_t tid)
{
    tb_plane *h = tb_space_find_plane(s, "/host:CPU");
    tb_plane *g = tb_space_find_plane(s, "/device:GPU:0");
    tb_line *l = h ? tb_plane_find_line(h, tid) : NULL;
    if (!l || !g || !l->nevents)
        return;
    tb_line *sl = tb_plane_line(g, 0x7fffffff, "CUDA sync");
    int64_t call = tb_plane_event_meta_cat(h, "cudaStreamSynchronize", TB_CAT_CUDA_RUNTIME);
    int64_t rec = tb_plane_event_meta_cat(g, "Stream Sync", TB_CAT_CUDA_SYNC);
    int64_t hc = tb_plane_stat_meta(h, TB_ST_CORRELATION_ID), gc = tb_plane_stat_meta(g, TB_ST_CORRELATION_ID);
    size_t n = l->nevents;
    int64_t corr = 1 << 30;
    for (size_t i = 0; i < n; i += 10) {
        int64_t at = l->events[i].start_ns + l->events[i].dur_ns;
        tb_line_add(l, call, at, 25000);
        tb_line_stat_i64(l, hc, corr);
        tb_line_add(sl, rec, at + 2000, 20000);
        tb_line_stat_i64(sl, gc, corr++);
    }
    tb_line_add(sl, rec, l->events[0].start_ns, 1000);
    tb_line_stat_i64(sl, gc, (1 << 30) - 1);
}

/* Thread `other` makes a CUDA call in the middle of each step of thread
 * tid (an autograd or runtime thread): tb_space_link_steps' consumers. */
static inline void add_calls_elsewhere(tb_space *s, int64_t tid, int64_t other)
{
    tb_plane *h = tb_space_find_plane(s, "/host:CPU");
    tb_line *l = h ? tb_plane_find_line(h, tid) : NULL;
    if (!l)
        return;
    int64_t root = tb_plane_find_stat_meta(h, "_r");
    tb_line *o = tb_plane_line(h, other, "autograd");
    int64_t call = tb_plane_event_meta_cat(h, "cudaLaunchKernel", TB_CAT_CUDA_RUNTIME);
    size_t n = l->nevents;
    for (size_t i = 0; i < n && root; i++)
        if (tb_event_stat(l, &l->events[i], (uint32_t)root))
            tb_line_add(o, call, l->events[i].start_ns + l->events[i].dur_ns / 2, 3000);
}

#endif
