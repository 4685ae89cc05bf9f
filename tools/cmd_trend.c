/* cmd_trend.c - `tbprof trend LOGDIR [--prefix P] [--json]`: one line per run,
 * oldest first: its steps' time (mean, min, max over every host of the run),
 * GPU busy share, the share the GPU waited for the CPU, exposed
 * communication share and top kernel, and the mean
 * step time against the first run with steps. For a job captured again and again (TBPROF_STEPS=A-B/P,
 * TBPROF_EVERY): did it slow down, and from which capture on? With several
 * hosts (ranks) in a run, the slowest host's mean step time is shown too.
 *
 * One run is loaded at a time (its profiles summarized, then freed), so a
 * logdir of many large runs needs the memory of its largest run only. A run
 * that cannot be read is one line on stderr and the listing goes on (exit 1);
 * so is each unreadable file of a run whose other files are read: the run's
 * row is of the files read, said under the table (exit 1).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "read_runs.h"
#include "readprof.h"
#include "runsum.h"

#define USAGE "usage: tbprof trend LOGDIR [--prefix P] [--json]\n"

/* One run's figures, every host of it together. */
typedef struct trend_row {
    const tb_run *run;
    int ok; /* read and summarized */
    size_t skipped; /* of its files, those that could not be read (named on stderr) */
    tb_runsum s; /* its top kernel only */
} trend_row;

static int64_t row_mean(const trend_row *r) { return tb_runsum_mean(&r->s); }

/* Load run r's profiles and fold them into row. 0, or -1 after saying why
 * on stderr. */
static int read_row(const tb_run *r, trend_row *row)
{
    memset(row, 0, sizeof(*row));
    row->run = r;
    tb_profset ps;
    if (tb_profset_load("trend", r->path, NULL, 0, &ps)) {
        tb_profset_free(&ps);
        return -1;
    }
    int rc = tb_runsum_of(&ps, &row->s);
    row->skipped = ps.skipped;
    tb_profset_free(&ps);
    if (rc < 0) {
        fprintf(stderr, "tbprof trend: %s: out of memory\n", r->path);
        return -1;
    }
    tb_runsum_keep(&row->s, 1);
    row->ok = 1;
    return 0;
}

/* When the run's capture ran (as its profile says; a copied logdir's file
 * times are the copy's), else when its newest profile was written. */
static void when(const tb_run *r, char *buf, size_t n)
{
    struct tm tm;
    time_t t = r->captured_ns > 0 ? (time_t)(r->captured_ns / 1000000000) : r->mtime;
    buf[0] = '\0';
    if (localtime_r(&t, &tm))
        strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

static void print_json(const char *in, const trend_row *rows, size_t n, int64_t base)
{
    fputs("{\"logdir\":", stdout);
    rr_json_str(stdout, in);
    fputs(",\"runs\":[", stdout);
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        const trend_row *r = &rows[i];
        if (!r->ok)
            continue;
        fputs(first ? "{\"run\":" : ",{\"run\":", stdout);
        first = 0;
        rr_json_str(stdout, r->run->name);
        printf(",\"mtime\":%lld,\"captured_ns\":%lld,\"hosts\":%zu,\"hosts_without_steps\":%zu,\"gpus\":%zu,\"steps\":%zu",
               (long long)r->run->mtime, (long long)r->run->captured_ns, r->s.hosts, r->s.hosts_without_steps, r->s.gpus, r->s.nsteps);
        if (r->skipped)
            printf(",\"files_unreadable\":%zu", r->skipped);
        if (r->s.nsteps)
            printf(",\"step_mean_ns\":%lld,\"step_min_ns\":%lld,\"step_max_ns\":%lld,"
                   "\"slowest_host_mean_ns\":%lld",
                   (long long)row_mean(r), (long long)r->s.step_min_ns, (long long)r->s.step_max_ns,
                   (long long)r->s.slowest_host_mean_ns);
        if (r->s.nsteps && base > 0)
            printf(",\"vs_first\":%.4f", (double)row_mean(r) / (double)base);
        printf(",\"window_ns\":%lld,\"gpu_window_ns\":%lld,\"gpu_busy_ns\":%lld,\"gpu_idle_cpu_ns\":%lld,\"gpu_wait_sampled_ns\":%lld,"
               "\"gpu_wait_off_cpu_ns\":%lld,\"comm_kernels\":%llu,\"comm_exposed_ns\":%lld",
               (long long)r->s.window_ns, (long long)r->s.gpu_window_ns, (long long)r->s.gpu_busy_ns, (long long)r->s.idle_cpu_ns,
               (long long)r->s.wait_sampled_ns, (long long)r->s.wait_off_cpu_ns,
               (unsigned long long)r->s.comm_kernels, (long long)r->s.comm_exposed_ns);
        if (r->s.nkernels) {
            fputs(",\"top_kernel\":", stdout);
            rr_json_str(stdout, r->s.kernels[0].name);
            printf(",\"top_kernel_ns\":%lld,\"kernel_total_ns\":%lld", (long long)r->s.kernels[0].ns,
                   (long long)r->s.kernel_total_ns);
        }
        fputs("}", stdout);
    }
    fputs("]}\n", stdout);
}

static void print_text(const char *in, const trend_row *rows, size_t n, int64_t base, size_t unread, size_t partial)
{
    size_t shown = 0, w = 3;
    int multi = 0; /* some run has several hosts: their slowest host's mean too (a straggler rank) */
    int comm = 0;  /* some run has communication kernels: its exposed share too */
    int off = 0;   /* some run's launching threads were sampled while the GPU waited: off-CPU share */
    for (size_t i = 0; i < n; i++)
        if (rows[i].ok) {
            shown++;
            size_t l = strlen(rows[i].run->name);
            w = l > w ? l : w;
            multi |= rows[i].s.hosts > 1;
            comm |= rows[i].s.comm_kernels != 0;
            off |= rows[i].s.wait_sampled_ns > 0;
        }
    printf("Step time across %zu run%s of %s, oldest first (every host of a run together)%s\n", shown,
           shown == 1 ? "" : "s", rr_text(in),
           unread && partial ? "; unreadable runs and files named on stderr"
           : unread          ? "; unreadable runs named on stderr"
           : partial         ? "; unreadable files named on stderr"
                             : "");
    printf("%-*s  %-19s  %5s  %6s  %11s  %11s  %11s  %6s  ", (int)w, "run", "captured", "hosts", "steps", "step mean",
           "min", "max", "vs 1st");
    if (multi)
        printf("%12s  ", "slowest host");
    printf("%8s  %12s  ", "GPU busy", "waits on CPU");
    if (off)
        printf("%13s  ", "of it off CPU");
    if (comm)
        printf("%12s  ", "comm exposed");
    printf("%s\n", "top kernel (share of kernel time)");
    const trend_row *slow = NULL;
    const trend_row *last = NULL;
    for (size_t i = 0; i < n; i++) {
        const trend_row *r = &rows[i];
        if (!r->ok)
            continue;
        char t[32], a[32], b[32], c[32], vs[16] = "-";
        when(r->run, t, sizeof(t));
        if (r->s.nsteps) {
            rr_fmt_dur(row_mean(r), a, sizeof(a));
            rr_fmt_dur(r->s.step_min_ns, b, sizeof(b));
            rr_fmt_dur(r->s.step_max_ns, c, sizeof(c));
            if (base > 0)
                snprintf(vs, sizeof(vs), "%.2fx", (double)row_mean(r) / (double)base);
            if (!slow || row_mean(r) >= row_mean(slow)) /* a tie: the later run, so the last when it is as slow */
                slow = r;
            last = r;
        } else {
            snprintf(a, sizeof(a), "-");
            snprintf(b, sizeof(b), "-");
            snprintf(c, sizeof(c), "-");
        }
        char busy[16] = "-", waits[16] = "-"; /* no GPU plane: not 0% busy, but not traced */
        if (r->s.gpus) {
            snprintf(busy, sizeof(busy), "%.1f%%", rr_pct(r->s.gpu_busy_ns, r->s.gpu_window_ns));
            snprintf(waits, sizeof(waits), "%.1f%%", rr_pct(r->s.idle_cpu_ns, r->s.gpu_window_ns));
        }
        printf("%-*s  %-19s  %5zu  %6zu  %11s  %11s  %11s  %6s  ", (int)w, rr_text(r->run->name), t, r->s.hosts, r->s.nsteps,
               a, b, c, vs);
        if (multi) {
            char sl[32] = "-";
            if (r->s.nsteps)
                rr_fmt_dur(r->s.slowest_host_mean_ns, sl, sizeof(sl));
            printf("%12s  ", sl);
        }
        printf("%8s  %12s  ", busy, waits);
        if (off) {
            char o[16] = "-";
            if (r->s.wait_sampled_ns > 0)
                snprintf(o, sizeof(o), "%.1f%%", rr_pct(r->s.wait_off_cpu_ns, r->s.gpu_window_ns));
            printf("%13s  ", o);
        }
        if (comm) {
            char ex[16] = "-";
            if (r->s.comm_kernels)
                snprintf(ex, sizeof(ex), "%.1f%%", rr_pct(r->s.comm_exposed_ns, r->s.gpu_window_ns));
            printf("%12s  ", ex);
        }
        if (r->s.nkernels)
            printf("%s (%.0f%%)\n", rr_text(r->s.kernels[0].name), rr_pct(r->s.kernels[0].ns, r->s.kernel_total_ns));
        else
            printf("-\n");
    }
    int left = 0; /* hosts without steps beside hosts with: not in their run's figures (runsum.h) */
    for (size_t i = 0; i < n; i++)
        if (rows[i].ok && rows[i].s.hosts_without_steps)
            printf("%s %s: %zu host%s without steps left out", left++ ? "," : "\nNot counted:", rr_text(rows[i].run->name),
                   rows[i].s.hosts_without_steps, rows[i].s.hosts_without_steps == 1 ? "" : "s");
    if (left)
        printf(" (their whole captures are not steps)\n");
    left = 0; /* runs read in part: their figures are of the files read */
    for (size_t i = 0; i < n; i++)
        if (rows[i].ok && rows[i].skipped)
            printf("%s %s: %zu file%s unreadable", left++ ? "," : "\nRead in part:", rr_text(rows[i].run->name),
                   rows[i].skipped, rows[i].skipped == 1 ? "" : "s");
    if (left)
        printf(" (their runs' figures are of the other files)\n");
    if (!last) {
        printf("\nNo run holds steps: only GPU busy is compared.\n");
        return;
    }
    char a[32], b[32];
    printf("\nMean step time: first %s, last %s", rr_fmt_dur(base, a, sizeof(a)), rr_fmt_dur(row_mean(last), b, sizeof(b)));
    if (base > 0) /* steps of no length: no ratio */
        printf(" (%.2fx)", (double)row_mean(last) / (double)base);
    if (slow != last) {
        printf("; slowest %s in %s", rr_fmt_dur(row_mean(slow), a, sizeof(a)), rr_text(slow->run->name));
        if (base > 0)
            printf(" (%.2fx)", (double)row_mean(slow) / (double)base);
    }
    printf("\n");
}

int cmd_trend(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"prefix", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int json = 0, c;
    const char *prefix = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jp:h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'p': prefix = optarg; break;
        case 'h':
            fputs(USAGE "  one line per run, oldest first: steps, step time (mean, min, max) over every host,\n"
                  "  against the first run with steps, GPU busy, the GPU waiting for the CPU, exposed\n"
                  "  communication (where there is some) and the top kernel\n"
                  "  --prefix P   only the runs whose name begins with P (one job's, e.g. its TBPROF_RUN)\n"
                  "  --json       the same as JSON\n",
                  stdout);
            return 0;
        default: fputs(USAGE, stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        fputs(USAGE, stderr);
        return 2;
    }
    const char *in = argv[optind];
    tb_runlist rl;
    if (tb_runs_scan_or_say(in, &rl) < 0)
        return 2;
    trend_row *rows = calloc(rl.n ? rl.n : 1, sizeof(*rows));
    if (!rows) {
        fprintf(stderr, "tbprof trend: out of memory\n");
        tb_runs_free(&rl);
        return 2;
    }
    long long bytes = 0;
    for (size_t i = 0; i < rl.n; i++)
        for (size_t k = 0; k < rl.runs[i].nfiles; k++)
            bytes += rl.runs[i].files[k].bytes;
    int progress = tb_progress_wanted(bytes);
    size_t n = 0, unread = rl.skipped, partial = 0;
    int64_t base = 0; /* the first run with steps' mean; 0 (steps of no length): no ratios */
    int have_base = 0;
    for (size_t i = 0; i < rl.n; i++) {
        const tb_run *r = &rl.runs[i];
        if (prefix && strncmp(r->name, prefix, strlen(prefix)))
            continue;
        if (progress)
            fprintf(stderr, "tbprof trend: run %zu of %zu: %s\n", i + 1, rl.n, rr_text(r->name));
        if (read_row(r, &rows[n]) < 0)
            unread++;
        else if (rows[n].skipped)
            partial++;
        else if (!have_base && rows[n].s.nsteps) {
            base = row_mean(&rows[n]);
            have_base = 1;
        }
        n++;
    }
    if (!n) {
        fprintf(stderr, "tbprof trend: %s: no run whose name begins with '%s'\n", in, prefix ? prefix : "");
        free(rows);
        tb_runs_free(&rl);
        return 2;
    }
    if (json)
        print_json(in, rows, n, base);
    else
        print_text(in, rows, n, base, unread, partial);
    for (size_t i = 0; i < n; i++)
        tb_runsum_free(&rows[i].s);
    free(rows);
    tb_runs_free(&rl);
    return unread || partial ? 1 : 0; /* main.c checks that stdout was written */
}
