/* synth_space.h - a synthetic capture shaped like a real one, for
 * `tbprof synth` (demos, e2e tests), the fuzzer's seeds and the
 * serialization benchmark. Header-only so tests/ can use it without linking
 * the CLI.
 *
 * Host plane /host:CPU (pid stat, a "python" thread with one "train" step
 * root per step carrying _r and step_num, and cudaLaunchKernel calls with
 * correlation_id nested inside); GPU planes /device:GPU:<g> with stream
 * lines of kernels (50 distinct names) carrying correlation_id, context_id,
 * stream and kernel_details. Deterministic for a given seed.
 */
#ifndef TBPROF_TOOLS_SYNTH_SPACE_H
#define TBPROF_TOOLS_SYNTH_SPACE_H

#include <stdint.h>
#include <stdio.h>

#include "stats.h"
#include "trace.h"

#define SYNTH_T0 1700000000000000000LL
#define SYNTH_NAMES 50

typedef struct synth_opts {
    size_t kernels;  /* GPU kernel events in all */
    int gpus;        /* 0: host steps only, a CPU-only capture */
    int streams;     /* per GPU, >= 1 */
    int host;        /* also the host plane with launches and steps */
    size_t steps;    /* steps the kernels are spread over (host only) */
    int64_t pid;
} synth_opts;

/* 0 or a negative errno (the space is left partly filled). */
static inline int synth_space(tb_space *s, const synth_opts *o)
{
    char name[128];
    int gpus = o->gpus > 0 ? o->gpus : 0, streams = o->streams > 0 ? o->streams : 1;
    size_t steps = o->steps ? o->steps : 1;
    tb_plane *h = NULL;
    tb_line *hl = NULL;
    int64_t m_step = 0, m_launch = 0, hs_corr = 0, hs_r = 0, hs_step = 0;
    if (o->host) {
        if (!(h = tb_space_plane(s, "/host:CPU")))
            return -12;
        tb_plane_stat_i64(h, "pid", o->pid);
        tb_plane_stat_str(h, TB_ST_TRIGGER, "synthetic");
        if (!(hl = tb_plane_line(h, o->pid, "python")))
            return -12;
        m_step = tb_plane_event_meta(h, TB_EV_STEP);
        m_launch = tb_plane_event_meta(h, "cudaLaunchKernel");
        tb_plane_set_event_category(h, m_step, TB_CAT_STEP);
        tb_plane_set_event_category(h, m_launch, TB_CAT_CUDA_RUNTIME);
        hs_corr = tb_plane_stat_meta(h, TB_ST_CORRELATION_ID);
        hs_r = tb_plane_stat_meta(h, TB_ST_IS_ROOT);
        hs_step = tb_plane_stat_meta(h, TB_ST_STEP_NUM);
    }
    tb_plane *gp[16];
    tb_line *gl[16][8];
    int64_t km[16][SYNTH_NAMES], gs_corr[16], gs_ctx[16], gs_stream[16], gs_kd[16];
    if (gpus > 16)
        gpus = 16;
    if (streams > 8)
        streams = 8;
    for (int g = 0; g < gpus; g++) {
        snprintf(name, sizeof(name), "/device:GPU:%d", g);
        if (!(gp[g] = tb_space_plane(s, name)))
            return -12;
        tb_plane_stat_i64(gp[g], TB_ST_DEV_CORE_COUNT, 132);
        tb_plane_stat_i64(gp[g], TB_ST_DEV_CC_MAJOR, 9);
        tb_plane_stat_i64(gp[g], TB_ST_DEV_CC_MINOR, 0);
        tb_plane_stat_f64(gp[g], TB_ST_DEV_MEM_BANDWIDTH, 3.35e12);
        for (int k = 0; k < streams; k++) {
            snprintf(name, sizeof(name), "Stream #%d(Kernel)", 7 + k);
            if (!(gl[g][k] = tb_plane_line(gp[g], 7 + k, name)))
                return -12;
        }
        for (int n = 0; n < SYNTH_NAMES; n++) {
            snprintf(name, sizeof(name), "void synth_kernel_%02d<float, %d>(float const*, float*, int)", n, 32 << (n % 4));
            km[g][n] = tb_plane_event_meta(gp[g], name);
            tb_plane_set_event_category(gp[g], km[g][n], TB_CAT_KERNEL);
        }
        gs_corr[g] = tb_plane_stat_meta(gp[g], TB_ST_CORRELATION_ID);
        gs_ctx[g] = tb_plane_stat_meta(gp[g], TB_ST_CONTEXT_ID);
        gs_stream[g] = tb_plane_stat_meta(gp[g], TB_ST_STREAM_ID);
        gs_kd[g] = tb_plane_stat_meta(gp[g], TB_ST_KERNEL_DETAILS);
    }
    size_t kernels = gpus ? o->kernels : 0;
    int64_t t = SYNTH_T0;
    for (size_t i = 0; hl && !kernels && i < steps; i++) {
        /* no launches: steps of 1 ms, 0.5 ms apart */
        if (tb_line_add(hl, m_step, t, 1000000) < 0)
            return -28;
        tb_line_stat_i64(hl, hs_r, 1);
        tb_line_stat_i64(hl, hs_step, (int64_t)i);
        t += 1500000;
    }
    size_t per_step = (kernels + steps - 1) / steps;
    if (!per_step)
        per_step = 1;
    uint32_t rng = 12345;
    for (size_t i = 0; i < kernels; i++) {
        if (hl && i % per_step == 0) {
            /* the step root spans its launches (0.5 us, then 3 us per
             * launch) and ends where the next one starts */
            size_t left = kernels - i < per_step ? kernels - i : per_step;
            if (tb_line_add(hl, m_step, t, (int64_t)left * 3000 + 500) < 0)
                return -28;
            tb_line_stat_i64(hl, hs_r, 1);
            tb_line_stat_i64(hl, hs_step, (int64_t)(i / per_step));
            t += 500;
        }
        uint64_t corr = i + 1;
        rng = rng * 1103515245u + 12345u;
        int g = (int)(i % (size_t)gpus), k = (int)((i / (size_t)gpus) % (size_t)streams);
        int n = (int)((rng >> 8) % SYNTH_NAMES);
        if (hl) {
            if (tb_line_add(hl, m_launch, t, 2000) < 0)
                return -28;
            tb_line_stat_u64(hl, hs_corr, corr);
        }
        tb_line *l = gl[g][k];
        if (tb_line_add(l, km[g][n], t + 4000, 1000 + (int64_t)(rng % 1500)) < 0)
            return -28;
        tb_line_stat_u64(l, gs_corr[g], corr);
        tb_line_stat_i64(l, gs_ctx[g], 1);
        tb_line_stat_i64(l, gs_stream[g], 7 + k);
        snprintf(name, sizeof(name), "regs:%d static_shared:0 dynamic_shared:%d grid:%d,1,1 block:256,1,1 occ_pct:50",
                 32 + 8 * (n % 4), 1024 * (n % 3), 108 + n);
        tb_line_stat_str(l, gs_kd[g], name);
        t += 3000;
    }
    return 0;
}

#endif
