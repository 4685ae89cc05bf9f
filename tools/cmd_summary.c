/* cmd_summary.c - `tbprof summary LOGDIR|RUNDIR|FILE [--json] [--top N]
 * [--run NAME]`: an overview of a profile in the terminal, in the spirit of
 * xprof's overview page and GPU kernel stats: steps and their GPU busy /
 * copy / idle split, communication overlap, top kernels, copies by
 * direction, NVTX ranges, top CPU functions, drops, the agent's overhead
 * and the warnings recorded in the profile.
 * Several hosts/ranks of one run are shown side by side first. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "folded.h"
#include "follow.h"
#include "read_runs.h"
#include "readprof.h"
#include "sampler.h"
#include "summary.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tbprof summary LOGDIR|RUN_DIR|FILE.xplane.pb [--json] [--top N] [--steps N] [--run NAME]\n"
               "  LOGDIR       the newest run under LOGDIR/plugins/profile/ (or --run NAME)\n"
               "  --json       the same figures as JSON on stdout\n"
               "  --top N      kernels, NVTX ranges and CPU functions listed (default 10)\n"
               "  --steps N    steps listed per host in the table (default 20; JSON has all)\n");
}

#define INFO_MAX 120 /* characters of a setting shown in the text summary */

/* "12.3 ms" with a unit that fits. */
static const char *dur(char *b, size_t n, int64_t ns)
{
    double v = (double)ns;
    double a = v < 0 ? -v : v;
    if (a < 1e3)
        snprintf(b, n, "%" PRId64 " ns", ns);
    else if (a < 1e6)
        snprintf(b, n, "%.1f us", v / 1e3);
    else if (a < 1e9)
        snprintf(b, n, "%.2f ms", v / 1e6);
    else
        snprintf(b, n, "%.3f s", v / 1e9);
    return b;
}

static const char *bytes_str(char *b, size_t n, uint64_t x)
{
    double v = (double)x;
    if (v < 1e3)
        snprintf(b, n, "%" PRIu64 " B", x);
    else if (v < 1e6)
        snprintf(b, n, "%.1f kB", v / 1e3);
    else if (v < 1e9)
        snprintf(b, n, "%.1f MB", v / 1e6);
    else
        snprintf(b, n, "%.2f GB", v / 1e9);
    return b;
}

static double gbps(uint64_t bytes, int64_t ns)
{
    return ns > 0 ? (double)bytes / (double)ns : 0.0; /* bytes/ns == GB/s */
}

static uint64_t drops_total(const tb_summary *m)
{
    uint64_t d = 0;
    for (size_t i = 0; i < m->ncounters; i++) {
        const char *n = m->counters[i].name;
        if (strstr(n, "dropped") || strstr(n, "lost") || strstr(n, "exhausted"))
            d += (uint64_t)(m->counters[i].value > 0 ? m->counters[i].value : 0);
    }
    return d;
}

/* ---- text ------------------------------------------------------------------ */

/* Counters worth a line in the terminal: losses and sample/thread counts. */
static int shown_counter(const char *n)
{
    static const char *const words[] = {"drop", "lost", "fail", "exhaust", "unsampled", "leak"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strstr(n, words[i]))
            return 1;
    return !strcmp(n, "tbprof_cpu_samples") || !strcmp(n, "tbprof_cpu_threads");
}

/* part's share of the host's steps (or capture) as "12.3%"; "-" without a GPU plane */
static const char *gpu_share(char *b, size_t n, const tb_summary *m, int64_t part)
{
    if (!m->ngpus)
        return "-";
    snprintf(b, n, "%.1f%%", rr_pct(part, m->window_ns));
    return b;
}

/* How many leading bytes every host's label shares, cut back to just after
 * a '.', '-', '_' or '/' so that what is left is whole words: hosts of one
 * job (node-0001.cluster.local.rank0, ...rank1) differ at the end, and a
 * 20-character column showed only the part they share. */
static size_t shared_prefix(const tb_profset *ps)
{
    if (ps->n < 2)
        return 0;
    const char *a = ps->profs[0].label;
    size_t n = strlen(a);
    for (size_t i = 1; i < ps->n; i++) {
        const char *b = ps->profs[i].label;
        size_t k = 0;
        while (k < n && a[k] && a[k] == b[k])
            k++;
        n = k;
    }
    while (n && !strchr(".-_/", a[n - 1]))
        n--;
    for (size_t i = 0; i < ps->n; i++)
        if (!ps->profs[i].label[n]) /* one label is the prefix itself: keep it whole */
            return 0;
    return n;
}

/* A column's label: past the shared prefix, and the tail of what is still
 * longer than the column (the rank number, not the node name). */
static const char *column_label(const char *label, size_t skip, char *out, size_t n)
{
    const char *l = rr_text(label + skip);
    size_t len = strlen(l);
    if (len <= 20)
        return l;
    snprintf(out, n, "..%s", l + len - 18);
    return out;
}

/* The pid whose capture this host's captured with (a data-loader worker's
 * trainer: its trigger names it), else 0. */
static int worker_of(const tb_summary *m)
{
    size_t n = sizeof(TB_FOLLOW_TRIGGER) - 1;
    if (!m->trigger || strncmp(m->trigger, TB_FOLLOW_TRIGGER, n))
        return 0;
    return atoi(m->trigger + n);
}

static void side_by_side(const tb_profset *ps, const tb_summary *ms)
{
    char b[64];
    size_t skip = shared_prefix(ps);
    if (skip)
        printf("hosts: %.*s<column>\n", (int)skip, rr_text(ps->profs[0].label));
    printf("%-18s", "");
    for (size_t i = 0; i < ps->n; i++)
        printf(" %-20.20s", column_label(ps->profs[i].label, skip, b, sizeof b));
    printf("\n");
#define ROW(title, ...)                                                                      \
    do {                                                                                     \
        printf("%-18s", title);                                                              \
        for (size_t i = 0; i < ps->n; i++) {                                                 \
            const tb_summary *m = &ms[i];                                                    \
            (void)m;                                                                         \
            char cell[64];                                                                   \
            snprintf(cell, sizeof cell, __VA_ARGS__);                                        \
            printf(" %-20.20s", cell);                                                       \
        }                                                                                    \
        printf("\n");                                                                        \
    } while (0)
    int workers = 0;
    for (size_t i = 0; i < ps->n; i++)
        workers |= worker_of(&ms[i]) > 0;
    if (workers) /* data-loader workers that captured with their trainer (follow.h) */
        ROW("worker of", worker_of(m) > 0 ? "pid%d" : "-", worker_of(m));
    ROW("steps", "%zu", m->nsteps);
    ROW("step time mean", "%s", m->nsteps ? dur(b, sizeof b, m->step_mean_ns) : "-");
    ROW("step time min", "%s", m->nsteps ? dur(b, sizeof b, m->step_min_ns) : "-");
    ROW("step time max", "%s", m->nsteps ? dur(b, sizeof b, m->step_max_ns) : "-");
    ROW("GPU busy", "%s", gpu_share(b, sizeof b, m, m->gpu_busy_ns));
    ROW("H2D copy", "%s", gpu_share(b, sizeof b, m, m->h2d_ns));
    ROW("D2H copy", "%s", gpu_share(b, sizeof b, m, m->d2h_ns));
    ROW("GPU idle", "%s", gpu_share(b, sizeof b, m, m->gpu_idle_ns));
    ROW("GPU waits on CPU", "%s", gpu_share(b, sizeof b, m, m->idle_cpu_ns));
    int comm = 0, sampled = 0;
    for (size_t i = 0; i < ps->n; i++) {
        comm |= ms[i].comm_kernels != 0;
        sampled |= tb_sum_wait_sampled_ns(&ms[i]) > 0;
    }
    if (sampled) /* a rank whose launching thread is blocked (its data loader, say) */
        ROW("  of it, off CPU", "%s",
            tb_sum_wait_sampled_ns(m) > 0 ? gpu_share(b, sizeof b, m, m->wait_off_cpu_ns) : "-");
    if (comm) /* the rank that waits least on collectives is the one the others wait for */
        ROW("comm exposed", "%s", m->comm_kernels ? gpu_share(b, sizeof b, m, m->comm_exposed_ns) : "-");
    ROW("top kernel", "%s", m->nkernels ? rr_text(m->kernels[0].name) : "-");
    ROW("top NVTX range", "%s", m->nranges ? rr_text(m->ranges[0].name) : "-");
    ROW("CPU samples", "%" PRIu64, m->cpu_samples);
    ROW("top CPU function", "%s", m->nfuncs ? rr_text(m->funcs[0].name) : "-");
    ROW("drops", "%" PRIu64, drops_total(m));
    ROW("warnings", "%zu", m->nwarnings);
#undef ROW
    printf("\n");
}

/* One row of the GPU-work-by-launching-function table. */
static void launcher_row(const char *name, int64_t ns, int64_t all)
{
    char b[64];
    printf("  %11s %5.1f%%  %s\n", dur(b, sizeof b, ns), rr_pct(ns, all), rr_text(name));
}

/* The rows of time by calling frame (launchers, syncs): the first `top`
 * frames, then the time of calls without a sampled frame and of events
 * without their call, each as a share of `all`. */
static void caller_rows(const tb_sum_frame *f, size_t n, int top, int64_t unsampled, int64_t no_call, int64_t all)
{
    for (size_t i = 0; i < n && i < (size_t)top; i++)
        launcher_row(f[i].name, f[i].ns, all);
    if (unsampled)
        launcher_row(TB_FOLDED_UNSAMPLED, unsampled, all);
    if (no_call)
        launcher_row(TB_FOLDED_NO_CALL, no_call, all);
}

#define HOST_BOUND_PCT 20.0   /* the GPU waiting for the CPU worth a hint, % of the step time */
#define EXPOSED_COMM_PCT 10.0 /* exposed communication worth a hint, % of the step time */

#define WAIT_FRAMES 5 /* frames listed for the CPU's work while the GPU waited */

/* What the launching threads did while the GPU waited for them: on CPU (in
 * which frames) or off CPU, as shares of the wait. Nothing without CPU
 * samples. */
static void wait_text(const tb_summary *m, int top)
{
    if (tb_sum_wait_sampled_ns(m) <= 0)
        return;
    /* time in the kernel is on CPU where it was sampled (tbprof_cpu_time);
     * older profiles and user-space-only ones count it off CPU */
    int kernel_sampled = 0;
    for (size_t i = 0; i < m->ninfos; i++)
        if (!strcmp(m->infos[i].name, TB_ST_CPU_TIME) && !strcmp(m->info_values[i], "user and kernel"))
            kernel_sampled = 1;
    printf("  while the GPU waited for the CPU, the launching thread was on CPU %.1f%% of that time, off CPU %.1f%%\n"
           "    (blocked or sleeping: a DataLoader queue, I/O, a lock, the GIL%s)",
           rr_pct(m->wait_on_cpu_ns, m->idle_cpu_ns), rr_pct(m->wait_off_cpu_ns, m->idle_cpu_ns),
           kernel_sampled ? "" : "; or in the kernel, which was not sampled");
    if (m->wait_unsampled_ns)
        printf(", on a thread without CPU samples %.1f%%", rr_pct(m->wait_unsampled_ns, m->idle_cpu_ns));
    if (!m->nwait_frames) {
        printf("\n");
        return;
    }
    printf("; on CPU in\n    its deepest Python frame, else its deepest frame:\n");
    size_t n = top < WAIT_FRAMES ? (size_t)(top > 0 ? top : 1) : WAIT_FRAMES;
    for (size_t i = 0; i < m->nwait_frames && i < n; i++)
        if (!i || rr_pct(m->wait_frames[i].ns, m->idle_cpu_ns) >= 0.05) /* not the 0.0% ones */
            launcher_row(m->wait_frames[i].name, m->wait_frames[i].ns, m->idle_cpu_ns);
}

/* GPU idle by cause under the step table (or the capture's line), and a
 * hint where the GPU waited for the CPU for a good part of the time. */
static void idle_text(const tb_summary *m, int top)
{
    if (!m->gpu_events || m->gpu_idle_ns <= 0)
        return;
    char b1[64], b2[64], b3[64], b4[64];
    int64_t other = m->gpu_idle_ns - m->idle_cpu_ns - m->idle_queued_ns;
    const char *of = m->nsteps ? "step time" : "capture";
    printf("  GPU idle %s: waiting for the CPU to launch work %s (%.1f%% of the %s), launched work not yet\n"
           "    running %s, other %s (no GPU work after it, or its launch not in the capture)\n",
           dur(b1, sizeof b1, m->gpu_idle_ns), dur(b2, sizeof b2, m->idle_cpu_ns), rr_pct(m->idle_cpu_ns, m->window_ns),
           of, dur(b3, sizeof b3, m->idle_queued_ns), dur(b4, sizeof b4, other));
    wait_text(m, top);
    if (m->launch_calls)
        printf("  launches: %" PRIu64 " CUDA calls in the capture launched GPU work, %s each on average (%s in all)\n",
               m->launch_calls, dur(b1, sizeof b1, m->launch_call_ns / (int64_t)m->launch_calls),
               dur(b2, sizeof b2, m->launch_call_ns));
    double pct = rr_pct(m->idle_cpu_ns, m->window_ns);
    if (pct < HOST_BOUND_PCT)
        return;
    if (m->wait_off_cpu_ns > m->wait_on_cpu_ns)
        printf("  hint: host-bound: the GPU waited for the CPU %.0f%% of the %s, and the launching thread was mostly\n"
               "  off CPU meanwhile: waiting on data loading, I/O or a lock, not computing. More DataLoader workers\n"
               "  (num_workers), pin_memory and prefetching, or fewer threads contending for the GIL, help.\n",
               pct, of);
    else if (m->nwait_frames)
        printf("  hint: host-bound: the GPU waited for the CPU %.0f%% of the %s while the launching thread ran code,\n"
               "  most in %s.\n"
               "  Fewer, larger launches (CUDA graphs, torch.compile, a bigger batch), or that work moved off the\n"
               "  training thread, help.\n",
               pct, of, rr_text(m->wait_frames[0].name));
    else
        printf("  hint: host-bound: the GPU waited for the CPU %.0f%% of the %s. The CPU's work between launches\n"
               "  sets the pace (Python, data loading, syncs such as .item()): the top CPU functions say which. Fewer,\n"
               "  larger launches (CUDA graphs, torch.compile, a bigger batch) or DataLoader workers help.\n",
               pct, of);
}

static void host_text(const tb_prof *p, const tb_summary *m, int top, int max_steps)
{
    char b1[64], b2[64], b3[64], b4[64], b5[64];
    printf("== %s  (%s)\n", rr_text(p->label), rr_text(p->path));
    if (m->host && strcmp(m->host, p->label))
        printf("host %s; ", rr_text(m->host));
    if (m->rank >= 0 && m->world_size >= 0)
        printf("rank %" PRId64 " of %" PRId64 "; ", m->rank, m->world_size);
    else if (m->rank >= 0)
        printf("rank %" PRId64 "; ", m->rank);
    printf("capture %s", dur(b1, sizeof b1, m->end_ns - m->begin_ns));
    if (m->trigger)
        printf(", trigger: %s", rr_text(m->trigger));
    printf("; %zu GPU%s, %" PRIu64 " GPU events, %" PRIu64 " CPU samples\n", m->ngpus,
           m->ngpus == 1 ? "" : "s", m->gpu_events, m->cpu_samples);
    /* the capture's settings and facts, one per line; a long value (the
     * list of CUDA calls left out) is cut, --json has it whole */
    for (size_t i = 0; i < m->ninfos; i++) {
        const char *v = rr_text(m->info_values[i]);
        int n = (int)strlen(v);
        printf("  %-18s %.*s%s\n", rr_text(m->infos[i].name + 7), n > INFO_MAX ? INFO_MAX : n, v,
               n > INFO_MAX ? " ... (--json: all of it)" : "");
    }

    /* steps */
    if (m->nsteps) {
        printf("\nSteps: %zu captured; step time mean %s, min %s, max %s\n", m->nsteps,
               dur(b1, sizeof b1, m->step_mean_ns), dur(b2, sizeof b2, m->step_min_ns),
               dur(b3, sizeof b3, m->step_max_ns));
        if (m->ngpus) {
            int comm = m->comm_kernels != 0;
            printf("  %8s %11s %18s %11s %11s %18s", "step", "time", "GPU busy", "H2D", "D2H", "GPU idle");
            if (comm)
                printf(" %11s %18s", "comm", "exposed");
            printf("\n");
            size_t shown = m->nsteps < (size_t)max_steps ? m->nsteps : (size_t)max_steps;
            const tb_sum_step all = {.dur_ns = m->window_ns, .gpu_busy_ns = m->gpu_busy_ns, .h2d_ns = m->h2d_ns,
                                     .d2h_ns = m->d2h_ns, .gpu_idle_ns = m->gpu_idle_ns, .comm_ns = m->comm_ns,
                                     .comm_exposed_ns = m->comm_exposed_ns};
            for (size_t i = 0; i <= shown; i++) { /* the steps shown, then the sums over all steps */
                const tb_sum_step *s = i < shown ? &m->steps[i] : &all;
                char num[24];
                if (i < shown) {
                    snprintf(num, sizeof num, "%" PRId64, s->num);
                } else {
                    if (shown < m->nsteps)
                        printf("  ... %zu more (--steps N, or --json)\n", m->nsteps - shown);
                    snprintf(num, sizeof num, "all");
                }
                printf("  %8s %11s %11s %5.1f%% %11s %11s %11s %5.1f%%", num, dur(b1, sizeof b1, s->dur_ns),
                       dur(b2, sizeof b2, s->gpu_busy_ns), rr_pct(s->gpu_busy_ns, s->dur_ns),
                       dur(b3, sizeof b3, s->h2d_ns), dur(b4, sizeof b4, s->d2h_ns),
                       dur(b5, sizeof b5, s->gpu_idle_ns), rr_pct(s->gpu_idle_ns, s->dur_ns));
                if (comm)
                    printf(" %11s %11s %5.1f%%", dur(b1, sizeof b1, s->comm_ns),
                           dur(b2, sizeof b2, s->comm_exposed_ns), rr_pct(s->comm_exposed_ns, s->dur_ns));
                printf("\n");
            }
            idle_text(m, top);
        }
    } else {
        printf("\nSteps: none found (no host event with _r=1, e.g. from TBPROF_STEPS or "
               "tbprof_step())\n");
        if (m->ngpus)
            printf("  over the capture: GPU busy %s (%.1f%%), H2D %s, D2H %s, idle %s (%.1f%%)\n",
                   dur(b1, sizeof b1, m->gpu_busy_ns), rr_pct(m->gpu_busy_ns, m->window_ns),
                   dur(b2, sizeof b2, m->h2d_ns), dur(b3, sizeof b3, m->d2h_ns),
                   dur(b4, sizeof b4, m->gpu_idle_ns), rr_pct(m->gpu_idle_ns, m->window_ns));
        idle_text(m, top);
    }

    /* kernels */
    if (m->nkernels) {
        printf("\nTop kernels (%zu distinct, %s in kernels):\n", m->nkernels,
               dur(b1, sizeof b1, m->kernel_total_ns));
        printf("  %11s %6s %8s %11s %11s %11s %6s  %s\n", "total", "%", "count", "mean", "min",
               "max", "occ%", "kernel");
        for (size_t i = 0; i < m->nkernels && i < (size_t)top; i++) {
            const tb_sum_named *k = &m->kernels[i];
            char occ[16];
            if (k->occ_pct >= 0)
                snprintf(occ, sizeof occ, "%.1f", k->occ_pct);
            else
                snprintf(occ, sizeof occ, "-");
            printf("  %11s %5.1f%% %8" PRIu64 " %11s %11s %11s %6s  %s\n",
                   dur(b1, sizeof b1, k->total_ns), rr_pct(k->total_ns, m->kernel_total_ns), k->count,
                   dur(b2, sizeof b2, k->total_ns / (int64_t)k->count),
                   dur(b3, sizeof b3, k->min_ns), dur(b4, sizeof b4, k->max_ns), occ, rr_text(k->name));
        }
    } else if (m->ngpus) {
        printf("\nTop kernels: none recorded\n");
    }

    /* copies */
    int any_copy = 0;
    for (int d = 0; d < TB_COPY_NDIR; d++)
        any_copy |= m->copies[d].count != 0;
    if (any_copy || m->memsets) {
        printf("\nCopies:\n  %-6s %8s %11s %11s %11s\n", "dir", "count", "bytes", "time",
               "bandwidth");
        for (int d = 0; d < TB_COPY_NDIR; d++) {
            const tb_sum_copy *c = &m->copies[d];
            if (!c->count)
                continue;
            printf("  %-6s %8" PRIu64 " %11s %11s %8.2f GB/s\n", tb_copy_dir_name((tb_copy_dir)d),
                   c->count, bytes_str(b1, sizeof b1, c->bytes), dur(b2, sizeof b2, c->total_ns),
                   gbps(c->bytes, c->total_ns));
        }
        if (m->memsets)
            printf("  %-6s %8" PRIu64 " %11s %11s\n", "memset", m->memsets, "",
                   dur(b1, sizeof b1, m->memset_ns));
    }

    /* communication */
    if (m->comm_kernels) {
        int64_t over = m->comm_ns - m->comm_exposed_ns;
        printf("\nCommunication (collective kernels: NCCL's, all_reduce, all_gather, ...): %" PRIu64
               " launch%s, %s in them\n",
               m->comm_kernels, m->comm_kernels == 1 ? "" : "es", dur(b1, sizeof b1, m->comm_kernel_ns));
        printf("  %s: %s on the GPU, %s of it (%.1f%%) beside compute kernels, %s exposed (%.1f%% of the %s)\n",
               m->nsteps ? "in the steps" : "over the capture", dur(b1, sizeof b1, m->comm_ns),
               dur(b2, sizeof b2, over), rr_pct(over, m->comm_ns), dur(b3, sizeof b3, m->comm_exposed_ns),
               rr_pct(m->comm_exposed_ns, m->window_ns), m->nsteps ? "step time" : "capture");
        if (rr_pct(m->comm_exposed_ns, m->window_ns) >= EXPOSED_COMM_PCT)
            printf("  hint: exposed communication is %.0f%% of the %s. Overlap it with compute (DDP's gradient\n"
                   "  buckets, FSDP's prefetch), and compare the ranks: the one that waits least in its\n"
                   "  collectives is the one the others wait for.\n",
                   rr_pct(m->comm_exposed_ns, m->window_ns), m->nsteps ? "step time" : "capture");
    }

    /* GPU memory */
    if (m->nmemory) {
        printf("\nGPU memory (cudaMalloc/cudaFree and kin in the capture; totals start at the least the "
               "capture implies):\n");
        printf("  %-22s %8s %11s %8s %11s %11s %11s\n", "allocator", "allocs", "bytes", "frees", "bytes", "peak",
               "at end");
        for (size_t i = 0; i < m->nmemory; i++) {
            const tb_sum_memory *x = &m->memory[i];
            char b5[32], b6[32];
            printf("  %-22s %8" PRIu64 " %11s %8" PRIu64 " %11s %11s %11s\n", rr_text(x->allocator), x->allocs,
                   bytes_str(b1, sizeof b1, x->alloc_bytes), x->frees, bytes_str(b2, sizeof b2, x->free_bytes),
                   bytes_str(b5, sizeof b5, (uint64_t)x->peak_bytes),
                   x->last_bytes < 0 ? "-" : bytes_str(b6, sizeof b6, (uint64_t)x->last_bytes));
        }
    }

    /* NVTX */
    if (m->nranges) {
        int gpu = m->range_gpu_events > 0;
        printf("\nNVTX ranges (%zu distinct names, %" PRIu64 " ranges and marks; nested ones count in full):\n",
               m->nranges, m->range_events);
        if (gpu)
            printf("  GPU, GPU ops: the GPU work launched inside the range, nested ranges included\n");
        printf("  %11s %8s %11s %11s %11s", "total", "count", "mean", "min", "max");
        if (gpu)
            printf(" %11s %8s", "GPU", "GPU ops");
        printf("  %s\n", "range");
        for (size_t i = 0; i < m->nranges && i < (size_t)top; i++) {
            const tb_sum_named *r = &m->ranges[i];
            printf("  %11s %8" PRIu64 " %11s %11s %11s", dur(b1, sizeof b1, r->total_ns), r->count,
                   dur(b2, sizeof b2, r->total_ns / (int64_t)r->count), dur(b3, sizeof b3, r->min_ns),
                   dur(b4, sizeof b4, r->max_ns));
            if (gpu)
                printf(" %11s %8" PRIu64, r->gpu_count ? dur(b1, sizeof b1, r->gpu_ns) : "-", r->gpu_count);
            printf("  %s\n", rr_text(r->name));
        }
    }

    /* GPU time by innermost range */
    if (m->ngpu_ranges) {
        int64_t all = m->gpu_in_range_ns + m->gpu_outside_ns;
        printf("\nGPU time by innermost NVTX range (each piece of GPU work once, to the range open at its launch,\n"
               "  step ranges aside; with torch's op ranges, --torch-ops: GPU time by op):\n");
        printf("  %11s %6s %8s %11s  %s\n", "GPU", "%", "count", "mean", "range");
        for (size_t i = 0; i < m->ngpu_ranges && i < (size_t)top; i++) {
            const tb_sum_named *r = &m->gpu_ranges[i];
            printf("  %11s %5.1f%% %8" PRIu64 " %11s  %s\n", dur(b1, sizeof b1, r->total_ns), rr_pct(r->total_ns, all),
                   r->count, dur(b2, sizeof b2, r->total_ns / (int64_t)r->count), rr_text(r->name));
        }
        if (m->gpu_outside_ns)
            printf("  %11s %5.1f%% %8s %11s  (outside every range)\n", dur(b1, sizeof b1, m->gpu_outside_ns),
                   rr_pct(m->gpu_outside_ns, all), "", "");
    }

    /* CPU */
    if (m->nfuncs) {
        printf("\nTop CPU functions (%" PRIu64 " samples):\n", m->cpu_samples);
        printf("  %8s %6s %8s %6s  %s\n", "self", "%", "total", "%", "function");
        for (size_t i = 0; i < m->nfuncs && i < (size_t)top; i++) {
            const tb_func_stat *f = &m->funcs[i];
            printf("  %8" PRIu64 " %5.1f%% %8" PRIu64 " %5.1f%%  %s\n", f->self,
                   rr_pct((int64_t)f->self, (int64_t)m->cpu_samples), f->total,
                   rr_pct((int64_t)f->total, (int64_t)m->cpu_samples), rr_text(f->name));
        }
    }

    /* GPU work by launching function (also where none of it had a sampled
     * frame around its call: the rows of their own say so) */
    if (m->launched_ns > 0) {
        printf("\nGPU work by launching function (%s of GPU work):\n"
               "  each CUDA call's deepest Python frame, else its deepest frame, in the CPU samples around it;\n"
               "  the whole stacks: tbprof flame --gpu\n",
               dur(b1, sizeof b1, m->launched_ns));
        printf("  %11s %6s  %s\n", "GPU", "%", "function");
        caller_rows(m->launchers, m->nlaunchers, top, m->unsampled_ns, m->no_call_ns, m->launched_ns);
    }

    /* the host's waits for the GPU */
    if (m->syncs) {
        int64_t span = m->end_ns - m->begin_ns;
        char share[96];
        if (m->sync_ns <= span) /* waits of several threads at once add up past the capture's length */
            snprintf(share, sizeof share, "%.1f%% of the capture", rr_pct(m->sync_ns, span));
        else
            snprintf(share, sizeof share, "%.1fx the capture's length: threads waiting at once",
                     span > 0 ? (double)m->sync_ns / (double)span : 0.0);
        printf("\nSyncs: the CPU waited for the GPU in %" PRIu64 " sync%s, %s in all (%s):\n"
               "  cudaStreamSynchronize and the like (.item(), .cpu(), torch.cuda.synchronize()), by the\n"
               "  calling thread's deepest Python frame, else its deepest frame:\n",
               m->syncs, m->syncs == 1 ? "" : "s", dur(b1, sizeof b1, m->sync_ns), share);
        printf("  %11s %6s  %s\n", "waited", "%", "function");
        caller_rows(m->sync_frames, m->nsync_frames, top, m->sync_unsampled_ns, m->sync_no_call_ns, m->sync_ns);
    }

    /* drops, overhead */
    printf("\nCounters, drops and overhead:\n");
    int any = 0;
    for (size_t i = 0; i < m->ncounters; i++) {
        if (!shown_counter(m->counters[i].name))
            continue; /* settings and timestamps: in --json */
        printf("  %-34s %12" PRId64 "  (%s)\n", rr_text(m->counters[i].name), m->counters[i].value,
               rr_text(m->counters[i].plane));
        any = 1;
    }
    if (m->overhead_ns >= 0) {
        /* the agent thread's CPU time: on its own thread, not taken from
         * the job's unless the job needs every core */
        printf("  %-34s %12s  (the agent thread's CPU time from the capture's start to its profile built: "
               "%.2f%% of the capture's length)\n", "agent overhead",
               dur(b1, sizeof b1, m->overhead_ns), rr_pct(m->overhead_ns, m->end_ns - m->begin_ns));
        any = 1;
    }
    if (!any)
        printf("  none recorded\n");
    if (m->nwarnings) {
        printf("\nWarnings recorded in the profile:\n");
        for (size_t i = 0; i < m->nwarnings; i++)
            printf("  - %s\n", rr_text(m->warnings[i]));
    }
    printf("\n");
}

/* ---- JSON ------------------------------------------------------------------ */

static void jkv_i(const char *k, int64_t v, int comma)
{
    printf("%s\"%s\":%" PRId64, comma ? "," : "", k, v);
}

/* ,"top":[{"function":name,"<ns_key>":ns}, ...] (the first `top` of f) */
static void jframes(const tb_sum_frame *f, size_t n, int top, const char *ns_key)
{
    printf(",\"top\":[");
    for (size_t i = 0; i < n && i < (size_t)top; i++) {
        printf(i ? ",{\"function\":" : "{\"function\":");
        tb_json_str(stdout, f[i].name);
        jkv_i(ns_key, f[i].ns, 1);
        printf("}");
    }
    printf("]");
}

/* ,"k":v, or ,"k":null when v < 0 (the profile does not say) */
static void jkv_opt(const char *k, int64_t v)
{
    if (v >= 0)
        jkv_i(k, v, 1);
    else
        printf(",\"%s\":null", k);
}

static void jnum(double v)
{
    printf("%.6g", v);
}

/* ,"key":[{"name":..,"count":..,"total_ns":..,...}] for the first `top` */
enum { NAMED_KERNELS = 1, NAMED_RANGES, NAMED_GPU_RANGES };

static void jnamed(const char *key, const tb_sum_named *v, size_t n, int top, int what)
{
    printf(",\"%s\":[", key);
    for (size_t i = 0; i < n && i < (size_t)top; i++) {
        const tb_sum_named *k = &v[i];
        printf(i ? ",{\"name\":" : "{\"name\":");
        tb_json_str(stdout, k->name);
        jkv_i("count", (int64_t)k->count, 1);
        jkv_i("total_ns", k->total_ns, 1);
        jkv_i("mean_ns", k->total_ns / (int64_t)k->count, 1);
        jkv_i("min_ns", k->min_ns, 1);
        jkv_i("max_ns", k->max_ns, 1);
        if (what == NAMED_RANGES) {
            jkv_i("gpu_count", (int64_t)k->gpu_count, 1);
            jkv_i("gpu_ns", k->gpu_ns, 1);
        }
        if (what == NAMED_KERNELS) {
            printf(",\"occ_pct\":");
            if (k->occ_pct >= 0)
                jnum(k->occ_pct);
            else
                printf("null");
        }
        printf("}");
    }
    printf("]");
}

static void host_json(const tb_prof *p, const tb_summary *m, int top)
{
    printf("{\"label\":");
    tb_json_str(stdout, p->label);
    printf(",\"file\":");
    tb_json_str(stdout, p->path);
    printf(",\"hostname\":");
    if (m->host)
        tb_json_str(stdout, m->host);
    else
        printf("null");
    jkv_opt("rank", m->rank);
    jkv_opt("world_size", m->world_size);
    jkv_i("begin_ns", m->begin_ns, 1);
    jkv_i("end_ns", m->end_ns, 1);
    jkv_i("capture_ns", m->end_ns - m->begin_ns, 1);
    printf(",\"trigger\":");
    if (m->trigger)
        tb_json_str(stdout, m->trigger);
    else
        printf("null");
    jkv_opt("worker_of", worker_of(m) > 0 ? worker_of(m) : -1); /* (a data-loader worker's trainer) */
    jkv_i("gpus", (int64_t)m->ngpus, 1);
    jkv_i("gpu_events", (int64_t)m->gpu_events, 1);

    printf(",\"steps\":{");
    jkv_i("count", (int64_t)m->nsteps, 0);
    jkv_i("mean_ns", m->step_mean_ns, 1);
    jkv_i("min_ns", m->step_min_ns, 1);
    jkv_i("max_ns", m->step_max_ns, 1);
    printf(",\"list\":[");
    for (size_t i = 0; i < m->nsteps; i++) {
        const tb_sum_step *s = &m->steps[i];
        printf(i ? ",{" : "{");
        jkv_i("num", s->num, 0);
        jkv_i("start_ns", s->start_ns, 1);
        jkv_i("dur_ns", s->dur_ns, 1);
        jkv_i("gpu_busy_ns", s->gpu_busy_ns, 1);
        jkv_i("h2d_ns", s->h2d_ns, 1);
        jkv_i("d2h_ns", s->d2h_ns, 1);
        jkv_i("gpu_idle_ns", s->gpu_idle_ns, 1);
        jkv_i("comm_ns", s->comm_ns, 1);
        jkv_i("comm_exposed_ns", s->comm_exposed_ns, 1);
        jkv_i("idle_cpu_ns", s->idle_cpu_ns, 1);
        jkv_i("idle_queued_ns", s->idle_queued_ns, 1);
        printf("}");
    }
    printf("]}");

    printf(",\"gpu\":{");
    jkv_i("window_ns", m->window_ns, 0);
    jkv_i("busy_ns", m->gpu_busy_ns, 1);
    jkv_i("h2d_ns", m->h2d_ns, 1);
    jkv_i("d2h_ns", m->d2h_ns, 1);
    jkv_i("idle_ns", m->gpu_idle_ns, 1);
    jkv_i("idle_cpu_ns", m->idle_cpu_ns, 1);       /* waiting for the CPU to launch work */
    jkv_i("idle_queued_ns", m->idle_queued_ns, 1); /* launched work not yet running */
    jkv_i("launch_calls", (int64_t)m->launch_calls, 1); /* CUDA calls that launched GPU work */
    jkv_i("launch_call_ns", m->launch_call_ns, 1);
    printf(",\"busy_pct\":");
    jnum(rr_pct(m->gpu_busy_ns, m->window_ns));
    /* the launching threads while the GPU waited (idle_cpu_ns = the three) */
    printf(",\"while_waiting\":{");
    jkv_i("on_cpu_ns", m->wait_on_cpu_ns, 0);
    jkv_i("off_cpu_ns", m->wait_off_cpu_ns, 1);
    jkv_i("unsampled_ns", m->wait_unsampled_ns, 1);
    jframes(m->wait_frames, m->nwait_frames, top, "ns");
    printf("}}");

    /* communication kernels; ns / exposed_ns: in the steps (the capture without steps) */
    printf(",\"communication\":{");
    jkv_i("kernels", (int64_t)m->comm_kernels, 0);
    jkv_i("kernel_ns", m->comm_kernel_ns, 1);
    jkv_i("ns", m->comm_ns, 1);
    jkv_i("overlapped_ns", m->comm_ns - m->comm_exposed_ns, 1);
    jkv_i("exposed_ns", m->comm_exposed_ns, 1);
    printf(",\"exposed_pct\":");
    jnum(rr_pct(m->comm_exposed_ns, m->window_ns));
    printf("}");

    printf(",\"kernels\":{");
    jkv_i("distinct", (int64_t)m->nkernels, 0);
    jkv_i("total_ns", m->kernel_total_ns, 1);
    jnamed("top", m->kernels, m->nkernels, top, NAMED_KERNELS);
    printf("}");

    printf(",\"nvtx\":{");
    jkv_i("distinct", (int64_t)m->nranges, 0);
    jkv_i("count", (int64_t)m->range_events, 1);
    jkv_i("gpu_count", (int64_t)m->range_gpu_events, 1);
    jnamed("top", m->ranges, m->nranges, top, NAMED_RANGES);
    printf("}");

    /* GPU time by innermost range: count, total_ns (GPU time), mean/min/max of the pieces */
    printf(",\"gpu_by_range\":{");
    jkv_i("in_range_ns", m->gpu_in_range_ns, 0);
    jkv_i("outside_ns", m->gpu_outside_ns, 1);
    jnamed("top", m->gpu_ranges, m->ngpu_ranges, top, NAMED_GPU_RANGES);
    printf("}");

    printf(",\"copies\":{");
    for (int d = 0; d < TB_COPY_NDIR; d++) {
        const tb_sum_copy *c = &m->copies[d];
        printf("%s\"%s\":{", d ? "," : "", tb_copy_dir_name((tb_copy_dir)d));
        jkv_i("count", (int64_t)c->count, 0);
        jkv_i("bytes", (int64_t)c->bytes, 1);
        jkv_i("total_ns", c->total_ns, 1);
        printf(",\"gb_per_s\":");
        jnum(gbps(c->bytes, c->total_ns));
        printf("}");
    }
    printf("},\"memsets\":{");
    jkv_i("count", (int64_t)m->memsets, 0);
    jkv_i("total_ns", m->memset_ns, 1);
    printf("}");

    printf(",\"gpu_memory\":[");
    for (size_t i = 0; i < m->nmemory; i++) {
        const tb_sum_memory *x = &m->memory[i];
        printf(i ? ",{\"allocator\":" : "{\"allocator\":");
        tb_json_str(stdout, x->allocator);
        jkv_i("allocs", (int64_t)x->allocs, 1);
        jkv_i("alloc_bytes", (int64_t)x->alloc_bytes, 1);
        jkv_i("frees", (int64_t)x->frees, 1);
        jkv_i("free_bytes", (int64_t)x->free_bytes, 1);
        jkv_i("peak_bytes", x->peak_bytes, 1);
        jkv_i("end_bytes", x->last_bytes, 1);
        printf("}");
    }
    printf("]");

    printf(",\"cpu\":{");
    jkv_i("samples", (int64_t)m->cpu_samples, 0);
    printf(",\"functions\":[");
    for (size_t i = 0; i < m->nfuncs && i < (size_t)top; i++) {
        const tb_func_stat *f = &m->funcs[i];
        printf(i ? ",{\"name\":" : "{\"name\":");
        tb_json_str(stdout, f->name);
        jkv_i("self", (int64_t)f->self, 1);
        jkv_i("total", (int64_t)f->total, 1);
        printf(",\"self_pct\":");
        jnum(rr_pct((int64_t)f->self, (int64_t)m->cpu_samples));
        printf(",\"total_pct\":");
        jnum(rr_pct((int64_t)f->total, (int64_t)m->cpu_samples));
        printf("}");
    }
    printf("]}");

    printf(",\"gpu_launchers\":{");
    jkv_i("total_ns", m->launched_ns, 0);
    jkv_i("unsampled_ns", m->unsampled_ns, 1);
    jkv_i("no_call_ns", m->no_call_ns, 1);
    jframes(m->launchers, m->nlaunchers, top, "gpu_ns");
    printf("}");

    /* the host's waits for the GPU (sync records), by calling frame */
    printf(",\"syncs\":{");
    jkv_i("count", (int64_t)m->syncs, 0);
    jkv_i("ns", m->sync_ns, 1);
    jkv_i("unsampled_ns", m->sync_unsampled_ns, 1);
    jkv_i("no_call_ns", m->sync_no_call_ns, 1);
    jframes(m->sync_frames, m->nsync_frames, top, "ns");
    printf("}");

    printf(",\"counters\":[");
    for (size_t i = 0; i < m->ncounters; i++) {
        printf(i ? ",{\"plane\":" : "{\"plane\":");
        tb_json_str(stdout, m->counters[i].plane);
        printf(",\"name\":");
        tb_json_str(stdout, m->counters[i].name);
        jkv_i("value", m->counters[i].value, 1);
        printf("}");
    }
    printf("],\"info\":{");
    for (size_t i = 0; i < m->ninfos; i++) {
        if (i)
            printf(",");
        tb_json_str(stdout, m->infos[i].name);
        printf(":");
        tb_json_str(stdout, m->info_values[i]);
    }
    printf("}");
    jkv_opt("overhead_ns", m->overhead_ns);
    printf(",\"warnings\":[");
    for (size_t i = 0; i < m->nwarnings; i++) {
        if (i)
            printf(",");
        tb_json_str(stdout, m->warnings[i]);
    }
    printf("]}");
}

int cmd_summary(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"top", required_argument, 0, 't'},
                                         {"steps", required_argument, 0, 's'},
                                         {"run", required_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int json = 0, top = 10, max_steps = 20, c;
    const char *run = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jt:s:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 't':
        case 's': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "tbprof summary: --%s wants a positive number, not '%s'\n",
                        c == 't' ? "top" : "steps", optarg);
                return 2;
            }
            if (c == 't')
                top = (int)v;
            else
                max_steps = (int)v;
            break;
        }
        case 'r': run = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *in = argv[optind];
    tb_profset ps;
    int rc = tb_profset_load("summary", in, run, tb_progress_wanted(tb_input_bytes(in)) && !json,
                             &ps);
    if (rc) {
        tb_profset_free(&ps);
        return rc;
    }
    tb_summary *ms = calloc(ps.n, sizeof(*ms));
    if (!ms) {
        fprintf(stderr, "tbprof summary: out of memory\n");
        tb_profset_free(&ps);
        return 2;
    }
    for (size_t i = 0; i < ps.n; i++)
        if (tb_summarize(ps.profs[i].space, &ms[i]) < 0) {
            fprintf(stderr, "tbprof summary: out of memory analysing %s\n", ps.profs[i].path);
            for (size_t j = 0; j < i; j++)
                tb_summary_free(&ms[j]);
            free(ms);
            tb_profset_free(&ps);
            return 2;
        }
    if (json) {
        printf("{\"run_dir\":");
        tb_json_str(stdout, ps.dir);
        printf(",\"hosts\":[");
        for (size_t i = 0; i < ps.n; i++) {
            if (i)
                printf(",");
            host_json(&ps.profs[i], &ms[i], top);
        }
        printf("],\"skipped\":[");
        for (size_t i = 0; i < ps.nwhy; i++) {
            if (i)
                printf(",");
            tb_json_str(stdout, ps.skipped_why[i]);
        }
        printf("]}\n");
    } else {
        printf("Profile %s: %zu host%s", rr_text(ps.dir), ps.n, ps.n == 1 ? "" : "s");
        if (ps.skipped)
            printf(" (%zu file%s skipped: named on stderr)", ps.skipped, ps.skipped == 1 ? "" : "s");
        printf("\n\n");
        if (ps.n > 1)
            side_by_side(&ps, ms);
        for (size_t i = 0; i < ps.n; i++)
            host_text(&ps.profs[i], &ms[i], top, max_steps);
    }
    for (size_t i = 0; i < ps.n; i++)
        tb_summary_free(&ms[i]);
    free(ms);
    tb_profset_free(&ps);
    return 0; /* main.c checks that stdout was written */
}
