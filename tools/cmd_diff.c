/* cmd_diff.c - `tbprof diff A B [--top N] [--json] [--max-slowdown PCT]`: two profiles side by
 * side, for "did my change help, and where?". A and B are what `summary`
 * takes (a logdir's newest run, a run folder, one .xplane.pb); every host
 * of a run is folded together (tools/runsum.h). It shows step time, GPU
 * busy, the GPU waiting for the CPU, exposed communication and kernel time
 * for each, then the kernels whose time changed most.
 *
 * With one LOGDIR, its two newest runs are compared (the older as A).
 *
 * Runs of different lengths compare per step: each kernel's time and
 * launches inside steps are divided by the run's steps (all hosts'). Where
 * either run has no steps, they compare per second of capture instead.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "read_runs.h"
#include "readprof.h"
#include "runsum.h"
#include "strmap.h"

#define USAGE                                                                                                   \
    "usage: tbprof diff A B [--top N] [--json] [--max-slowdown PCT]   (A, B: LOGDIR, RUN_DIR or FILE.xplane.pb)\n" \
    "       tbprof diff LOGDIR ...                                     (its two newest runs)\n"

/* One side: what was read and its figures. */
typedef struct side {
    const char *in;
    char *dir; /* the run folder read */
    tb_runsum s;
    double per; /* the divisor of its figures: steps, or seconds of capture (JSON "divisor") */
    int by_step; /* per step: kernels count where launched inside steps */
} side;

/* One kernel name over both sides; a = -1 / b = -1: absent there. */
typedef struct krow {
    const char *name;
    int64_t a, b; /* indexes into the sides' kernel tables */
    double a_ns, b_ns, a_n, b_n; /* per step (second) */
    double delta;
} krow;

static int krow_cmp(const void *x, const void *y)
{
    const krow *p = x, *q = y;
    double a = p->delta < 0 ? -p->delta : p->delta, b = q->delta < 0 ? -q->delta : q->delta;
    if (a != b)
        return a < b ? 1 : -1;
    return strcmp(p->name, q->name);
}

static int load_side(side *sd)
{
    tb_profset ps;
    int rc = tb_profset_load("diff", sd->in, NULL, tb_progress_wanted(tb_input_bytes(sd->in)), &ps);
    if (rc) {
        tb_profset_free(&ps);
        return -1;
    }
    sd->dir = strdup(ps.dir ? ps.dir : sd->in);
    rc = tb_runsum_of(&ps, &sd->s);
    tb_profset_free(&ps);
    if (rc < 0 || !sd->dir) {
        fprintf(stderr, "tbprof diff: %s: out of memory\n", sd->in);
        return -1;
    }
    return 0;
}

/* The kernels of both sides, by how much their time per step changed. */
static krow *join_kernels(const side *a, const side *b, size_t *n)
{
    size_t cap = a->s.nkernels + b->s.nkernels;
    krow *k = calloc(cap ? cap : 1, sizeof(*k));
    tb_strmap idx = {0};
    if (!k)
        return NULL;
    *n = 0;
    for (int w = 0; w < 2; w++) {
        const side *sd = w ? b : a;
        for (size_t i = 0; i < sd->s.nkernels; i++) {
            const tb_runsum_kernel *x = &sd->s.kernels[i];
            int64_t at = tb_strmap_get(&idx, x->name);
            if (at < 0) {
                if (tb_strmap_put(&idx, x->name, (uint32_t)*n) < 0) {
                    free(k);
                    tb_strmap_free(&idx);
                    return NULL;
                }
                at = (int64_t)(*n)++;
                k[at] = (krow){.name = x->name, .a = -1, .b = -1};
            }
            /* per step: the launches inside steps (a capture by time also
             * holds some before the first and after the last) */
            double ns = (double)(sd->by_step ? x->step_ns : x->ns) / sd->per,
                   cnt = (double)(sd->by_step ? x->step_count : x->count) / sd->per;
            if (w) {
                k[at].b = (int64_t)i;
                k[at].b_ns = ns;
                k[at].b_n = cnt;
            } else {
                k[at].a = (int64_t)i;
                k[at].a_ns = ns;
                k[at].a_n = cnt;
            }
        }
    }
    tb_strmap_free(&idx);
    for (size_t i = 0; i < *n; i++)
        k[i].delta = k[i].b_ns - k[i].a_ns;
    if (*n > 1)
        qsort(k, *n, sizeof(*k), krow_cmp);
    return k;
}

/* "1.234 ms" for a duration in ns that may be fractional or negative */
static const char *fdur(double ns, char *buf, size_t n)
{
    if (ns < 0) {
        buf[0] = '-';
        rr_fmt_dur((long long)(-ns + 0.5), buf + 1, n - 1);
    } else {
        rr_fmt_dur((long long)(ns + 0.5), buf, n);
    }
    return buf;
}

/* The same with a sign: "+1.234 ms", "-0.5 us", "0 ns" */
static const char *sdur(double ns, char *buf, size_t n)
{
    if (ns >= 0.5) {
        buf[0] = '+';
        fdur(ns, buf + 1, n - 1);
        return buf;
    }
    return fdur(ns, buf, n);
}

static void side_json(const char *key, const side *sd)
{
    const tb_runsum *r = &sd->s;
    printf("\"%s\":{\"input\":", key);
    rr_json_str(stdout, sd->in);
    printf(",\"run_dir\":");
    rr_json_str(stdout, sd->dir);
    printf(",\"hosts\":%zu,\"hosts_without_steps\":%zu,\"gpus\":%zu,\"steps\":%zu,\"step_mean_ns\":%lld,\"window_ns\":%lld,\"gpu_window_ns\":%lld,"
           "\"gpu_busy_ns\":%lld,\"gpu_idle_cpu_ns\":%lld,\"gpu_wait_sampled_ns\":%lld,"
           "\"gpu_wait_off_cpu_ns\":%lld,\"comm_kernels\":%llu,\"comm_exposed_ns\":%lld,"
           "\"kernel_total_ns\":%lld,\"launches\":%llu,\"step_kernel_ns\":%lld,\"step_launches\":%llu,"
           "\"divisor\":%.6g}",
           r->hosts, r->hosts_without_steps, r->gpus, r->nsteps, (long long)tb_runsum_mean(r), (long long)r->window_ns,
           (long long)r->gpu_window_ns,
           (long long)r->gpu_busy_ns, (long long)r->idle_cpu_ns, (long long)r->wait_sampled_ns,
           (long long)r->wait_off_cpu_ns, (unsigned long long)r->comm_kernels,
           (long long)r->comm_exposed_ns, (long long)r->kernel_total_ns, (unsigned long long)r->launches,
           (long long)r->step_kernel_ns, (unsigned long long)r->step_launches, sd->per);
}

static void print_json(const side *a, const side *b, const char *unit, const krow *k, size_t n)
{
    printf("{");
    side_json("a", a);
    printf(",");
    side_json("b", b);
    printf(",\"per\":\"%s\",\"kernels\":[", unit);
    for (size_t i = 0; i < n; i++) {
        printf(i ? ",{\"name\":" : "{\"name\":");
        rr_json_str(stdout, k[i].name);
        printf(",\"a_ns\":%lld,\"b_ns\":%lld,\"a_count\":%llu,\"b_count\":%llu,\"a_per_ns\":%.1f,\"b_per_ns\":%.1f,"
               "\"delta_per_ns\":%.1f}",
               k[i].a >= 0 ? (long long)a->s.kernels[k[i].a].ns : 0LL,
               k[i].b >= 0 ? (long long)b->s.kernels[k[i].b].ns : 0LL,
               k[i].a >= 0 ? (unsigned long long)a->s.kernels[k[i].a].count : 0ULL,
               k[i].b >= 0 ? (unsigned long long)b->s.kernels[k[i].b].count : 0ULL, k[i].a_ns, k[i].b_ns,
               k[i].delta);
    }
    printf("]}\n");
}

/* One figure of the header: A, B and the change ("-" where absent). */
static void fig_row(const char *title, const char *va, const char *vb, const char *change)
{
    printf("  %-24s %14s %14s  %s\n", title, va, vb, change);
}

static void share_row(const char *title, const side *a, const side *b, int64_t pa, int64_t pb, int show_a,
                      int show_b)
{
    char x[32] = "-", y[32] = "-", c[48] = "";
    double sa = rr_pct(pa, a->s.gpu_window_ns), sb = rr_pct(pb, b->s.gpu_window_ns);
    if (show_a)
        snprintf(x, sizeof x, "%.1f%%", sa);
    if (show_b)
        snprintf(y, sizeof y, "%.1f%%", sb);
    if (show_a && show_b)
        snprintf(c, sizeof c, "%+.1f points", sb - sa > -0.05 && sb - sa < 0.05 ? 0.0 : sb - sa);
    fig_row(title, x, y, c);
}

/* "A: DIR  (N hosts, M steps)", and the hosts left out (runsum.h) */
static void side_line(const char *key, const side *sd)
{
    const tb_runsum *r = &sd->s;
    printf("%s: %s  (%zu host%s, %zu steps", key, rr_text(sd->dir), r->hosts, r->hosts == 1 ? "" : "s", r->nsteps);
    if (r->hosts_without_steps)
        printf("; %zu host%s without steps left out", r->hosts_without_steps, r->hosts_without_steps == 1 ? "" : "s");
    printf(")\n");
}

static void print_text(const side *a, const side *b, const char *unit, const krow *k, size_t n, int top)
{
    const tb_runsum *ra = &a->s, *rb = &b->s;
    char x[32], y[32], c[64];
    side_line("A", a);
    side_line("B", b);
    printf("\n");
    printf("  %-24s %14s %14s  %s\n", "", "A", "B", "change");
    if (ra->nsteps && rb->nsteps) {
        int64_t ma = tb_runsum_mean(ra), mb = tb_runsum_mean(rb);
        if (ma > 0)
            snprintf(c, sizeof c, "%+.1f%% (%.2fx)", 100.0 * (double)(mb - ma) / (double)ma, (double)mb / (double)ma);
        else /* steps of no length: no ratio */
            snprintf(c, sizeof c, "-");
        fig_row("step time mean", fdur((double)ma, x, sizeof x), fdur((double)mb, y, sizeof y), c);
    }
    share_row("GPU busy", a, b, ra->gpu_busy_ns, rb->gpu_busy_ns, ra->gpus > 0, rb->gpus > 0);
    share_row("GPU waits on CPU", a, b, ra->idle_cpu_ns, rb->idle_cpu_ns, ra->gpus > 0, rb->gpus > 0);
    if (ra->wait_sampled_ns || rb->wait_sampled_ns) /* the launching thread blocked meanwhile */
        share_row("  of it, thread off CPU", a, b, ra->wait_off_cpu_ns, rb->wait_off_cpu_ns, ra->wait_sampled_ns > 0,
                  rb->wait_sampled_ns > 0);
    if (ra->comm_kernels || rb->comm_kernels)
        share_row("comm exposed", a, b, ra->comm_exposed_ns, rb->comm_exposed_ns, ra->comm_kernels > 0,
                  rb->comm_kernels > 0);
    double ka = (double)(a->by_step ? ra->step_kernel_ns : ra->kernel_total_ns) / a->per,
           kb = (double)(b->by_step ? rb->step_kernel_ns : rb->kernel_total_ns) / b->per;
    char t[48];
    snprintf(t, sizeof t, "kernel time per %s", unit);
    if (ka > 0)
        snprintf(c, sizeof c, "%+.1f%%", 100.0 * (kb - ka) / ka);
    else
        snprintf(c, sizeof c, "-");
    fig_row(t, fdur(ka, x, sizeof x), fdur(kb, y, sizeof y), c);
    snprintf(t, sizeof t, "launches per %s", unit);
    double la = (double)(a->by_step ? ra->step_launches : ra->launches) / a->per,
           lb = (double)(b->by_step ? rb->step_launches : rb->launches) / b->per;
    snprintf(x, sizeof x, "%.1f", la);
    snprintf(y, sizeof y, "%.1f", lb);
    snprintf(c, sizeof c, "%+.1f", lb - la);
    fig_row(t, x, y, c);

    if (!n) {
        printf("\nNo kernels in either.\n");
        return;
    }
    size_t only_a = 0, only_b = 0;
    for (size_t i = 0; i < n; i++) {
        only_a += k[i].b < 0;
        only_b += k[i].a < 0;
    }
    printf("\nKernels by change in time per %s (%zu in both, %zu only in A, %zu only in B):\n", unit,
           n - only_a - only_b, only_a, only_b);
    printf("  %11s %11s %12s %17s  %s\n", "A", "B", "change", "launches A -> B", "kernel");
    double shown = 0;
    for (size_t i = 0; i < n && i < (size_t)top; i++) {
        char d[32], l[40];
        if (k[i].a < 0)
            snprintf(l, sizeof l, "new %.1f", k[i].b_n);
        else if (k[i].b < 0)
            snprintf(l, sizeof l, "%.1f gone", k[i].a_n);
        else
            snprintf(l, sizeof l, "%.1f -> %.1f", k[i].a_n, k[i].b_n);
        printf("  %11s %11s %12s %17s  %s\n", k[i].a < 0 ? "-" : fdur(k[i].a_ns, x, sizeof x),
               k[i].b < 0 ? "-" : fdur(k[i].b_ns, y, sizeof y), sdur(k[i].delta, d, sizeof d), l, rr_text(k[i].name));
        shown += k[i].delta;
    }
    if (n > (size_t)top)
        printf("  ... %zu more (--top N, or --json)\n", n - (size_t)top);
    printf("\nKernel time per %s: %s -> %s; the kernels above account for %s of the %s change.\n", unit,
           fdur(ka, x, sizeof x), fdur(kb, y, sizeof y), sdur(shown, c, sizeof c), sdur(kb - ka, t, sizeof t));
}

/* --max-slowdown: 0 when B's mean step is within pct% of A's, else 1 (2
 * when a side has no steps to compare), with one line on stderr. */
static int gate(const side *a, const side *b, double pct_allowed)
{
    if (!a->s.nsteps || !b->s.nsteps) {
        fprintf(stderr, "tbprof diff: --max-slowdown: %s has no steps to compare\n", a->s.nsteps ? b->in : a->in);
        return 2;
    }
    int64_t ma = tb_runsum_mean(&a->s), mb = tb_runsum_mean(&b->s);
    double slow = 100.0 * (double)(mb - ma) / (double)ma;
    char x[32], y[32];
    if (slow > pct_allowed) {
        fprintf(stderr, "tbprof diff: slower: mean step %s -> %s (%+.1f%%), over the %g%% allowed\n",
                fdur((double)ma, x, sizeof x), fdur((double)mb, y, sizeof y), slow, pct_allowed);
        return 1;
    }
    fprintf(stderr, "tbprof diff: mean step %s -> %s (%+.1f%%), within the %g%% allowed\n",
            fdur((double)ma, x, sizeof x), fdur((double)mb, y, sizeof y), slow, pct_allowed);
    return 0;
}

int cmd_diff(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"top", required_argument, 0, 't'},
                                         {"max-slowdown", required_argument, 0, 'm'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int json = 0, top = 15, c;
    double max_slow = -1; /* --max-slowdown: the step time growth allowed, in percent */
    optind = 1;
    while ((c = getopt_long(argc, argv, "jt:m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'm': {
            char *end;
            max_slow = strtod(optarg, &end);
            if (end != optarg && *end == '%')
                end++;
            if (end == optarg || *end || !(max_slow >= 0 && max_slow <= 1e6)) {
                fprintf(stderr, "tbprof diff: --max-slowdown wants a percentage such as 5 or 5%%, not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "tbprof diff: --top wants a positive number, not '%s'\n", optarg);
                return 2;
            }
            top = (int)v;
            break;
        }
        case 'h':
            fputs(USAGE "  two profiles side by side (every host of a run together): step time, GPU busy,\n"
                  "  the GPU waiting for the CPU, exposed communication, kernel time, and the kernels\n"
                  "  whose time per step changed most (per second of capture where a side has no steps)\n"
                  "  --top N   kernels listed (default 15; --json lists all)\n"
                  "  --json    the same as JSON\n"
                  "  --max-slowdown PCT   exit 1 when B's mean step time is more than PCT% over A's\n"
                  "                       (a performance gate for CI; both need steps)\n",
                  stdout);
            return 0;
        default: fputs(USAGE, stderr); return 2;
        }
    }
    if (optind != argc - 2 && optind != argc - 1) {
        fputs(USAGE, stderr);
        return 2;
    }
    side a = {.in = argv[optind]}, b = {.in = argv[optind + 1]};
    tb_runlist rl = {0};
    if (optind == argc - 1) { /* one logdir: its two newest runs, the older as A */
        if (tb_runs_scan_or_say(argv[optind], &rl) < 0)
            return 2;
        if (rl.n < 2) {
            fprintf(stderr, "tbprof diff: %s holds one run (%s): name two runs, or two profiles, to compare\n",
                    argv[optind], rl.runs[0].name);
            tb_runs_free(&rl);
            return 2;
        }
        a.in = rl.runs[rl.n - 2].path;
        b.in = rl.runs[rl.n - 1].path;
        fprintf(stderr, "tbprof diff: the two newest runs of %s: A %s, B %s\n", argv[optind], rl.runs[rl.n - 2].name,
                rl.runs[rl.n - 1].name);
    }
    int rc = 2;
    if (load_side(&a) == 0 && load_side(&b) == 0) {
        int steps = a.s.nsteps && b.s.nsteps;
        const char *unit = steps ? "step" : "second";
        a.by_step = b.by_step = steps;
        /* per second of capture: a side with steps has kernels outside them too */
        a.per = steps ? (double)a.s.nsteps : (double)a.s.capture_ns / 1e9;
        b.per = steps ? (double)b.s.nsteps : (double)b.s.capture_ns / 1e9;
        if (a.per <= 0)
            a.per = 1;
        if (b.per <= 0)
            b.per = 1;
        size_t n = 0;
        krow *k = join_kernels(&a, &b, &n);
        if (!k) {
            fprintf(stderr, "tbprof diff: out of memory\n");
        } else {
            if (json)
                print_json(&a, &b, unit, k, n);
            else
                print_text(&a, &b, unit, k, n, top);
            rc = 0; /* main.c checks that stdout was written */
            free(k);
            if (max_slow >= 0)
                rc = gate(&a, &b, max_slow);
        }
    }
    free(a.dir);
    free(b.dir);
    tb_runs_free(&rl);
    tb_runsum_free(&a.s);
    tb_runsum_free(&b.s);
    return rc;
}
