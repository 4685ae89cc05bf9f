/* cmd_dump.c - `tbprof dump FILE|LOGDIR [--json] [--top N]`: what one
 * profile holds: planes, lines and their event counts, the most frequent and
 * the longest event names, stat names, the time span, warnings. For a logdir
 * (or run folder), every .xplane.pb of the newest run, naming the run. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd.h"
#include "read_runs.h"
#include "trace.h"
#include "xspace.h"

typedef struct agg {
    uint32_t meta;
    uint64_t count;
    int64_t total_ns;
} agg;

static int by_count(const void *x, const void *y)
{
    const agg *a = x, *b = y;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return a->meta < b->meta ? -1 : a->meta > b->meta;
}

static int by_time(const void *x, const void *y)
{
    const agg *a = x, *b = y;
    if (a->total_ns != b->total_ns)
        return a->total_ns > b->total_ns ? -1 : 1;
    return a->meta < b->meta ? -1 : a->meta > b->meta;
}

static void print_stat_value(FILE *f, const tb_plane *p, const tb_stat *st, int json)
{
    switch (st->type) {
    case TB_STAT_INT64: fprintf(f, "%" PRId64, st->v.i); break;
    case TB_STAT_UINT64: fprintf(f, "%" PRIu64, st->v.u); break;
    case TB_STAT_DOUBLE:
        if (json && !isfinite(st->v.d)) /* JSON has none: strings, as `convert` writes them */
            fputs(isnan(st->v.d) ? "\"nan\"" : st->v.d > 0 ? "\"inf\"" : "\"-inf\"", f);
        else
            fprintf(f, "%.17g", st->v.d);
        break;
    case TB_STAT_REF:
        if (json)
            rr_json_str(f, tb_plane_stat_name(p, st->v.ref));
        else
            fprintf(f, "\"%s\"", rr_text(tb_plane_stat_name(p, st->v.ref)));
        break;
    default: fputs(json ? "null" : "?", f);
    }
}

/* e - b without overflow (absurd times in a damaged file) */
static long long span_of(int64_t b, int64_t e)
{
    uint64_t d = (uint64_t)e - (uint64_t)b;
    return d > (uint64_t)INT64_MAX ? INT64_MAX : (long long)d;
}

static void line_span(const tb_line *l, int64_t *b, int64_t *e)
{
    *b = INT64_MAX;
    *e = INT64_MIN;
    for (size_t k = 0; k < l->nevents; k++) {
        if (l->events[k].start_ns < *b)
            *b = l->events[k].start_ns;
        if (l->events[k].start_ns + l->events[k].dur_ns > *e)
            *e = l->events[k].start_ns + l->events[k].dur_ns;
    }
    if (!l->nevents)
        *b = *e = 0;
}

/* One plane's report; json: an object. */
static int dump_plane(FILE *f, const tb_plane *p, int json, size_t top)
{
    agg *a = calloc(p->nevent_meta + 1, sizeof(*a));
    uint8_t *used_stat = calloc(p->nstat_meta + 1, 1);
    if (!a || !used_stat) {
        free(a);
        free(used_stat);
        return -ENOMEM;
    }
    size_t nev = 0;
    for (size_t m = 0; m < p->nevent_meta; m++)
        a[m].meta = (uint32_t)m;
    for (size_t j = 0; j < p->nlines; j++) {
        const tb_line *l = p->lines[j];
        nev += l->nevents;
        for (size_t k = 0; k < l->nevents; k++) {
            const tb_event *e = &l->events[k];
            uint32_t m = e->meta < p->nevent_meta ? e->meta : 0;
            a[m].count++;
            a[m].total_ns = e->dur_ns > INT64_MAX - a[m].total_ns ? INT64_MAX : a[m].total_ns + e->dur_ns;
        }
        for (size_t k = 0; k < l->nstats; k++)
            if (l->stats[k].meta < p->nstat_meta)
                used_stat[l->stats[k].meta] = 1;
    }
    for (size_t k = 0; k < p->nstats; k++)
        if (p->stats[k].meta < p->nstat_meta)
            used_stat[p->stats[k].meta] = 1;
    size_t names = 0;
    for (size_t m = 1; m < p->nevent_meta; m++)
        names += a[m].count > 0;
    char d1[32], d2[32];

    if (json) {
        fprintf(f, "{\"id\":%" PRId64 ",\"name\":", p->id);
        rr_json_str(f, p->name);
        fprintf(f, ",\"events\":%zu,\"event_names\":%zu,\"stats\":{", nev, names);
        for (size_t k = 0; k < p->nstats; k++) {
            fputs(k ? "," : "", f);
            rr_json_str(f, tb_plane_stat_name(p, p->stats[k].meta));
            fputc(':', f);
            print_stat_value(f, p, &p->stats[k], 1);
        }
        fputs("},\"lines\":[", f);
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            int64_t b, e;
            line_span(l, &b, &e);
            fprintf(f, "%s{\"id\":%" PRId64 ",\"name\":", j ? "," : "", l->id);
            rr_json_str(f, l->name);
            if (l->display_name) {
                fputs(",\"display_name\":", f);
                rr_json_str(f, l->display_name);
            }
            fprintf(f, ",\"events\":%zu,\"begin_ns\":%" PRId64 ",\"end_ns\":%" PRId64 "}", l->nevents, b, e);
        }
        fputs("]", f);
    } else {
        fprintf(f, "  plane %" PRId64 " %s: %zu lines, %zu events, %zu event names\n", p->id, rr_text(p->name),
                p->nlines, nev, names);
        if (p->nstats) {
            fputs("    plane stats:", f);
            for (size_t k = 0; k < p->nstats; k++) {
                fprintf(f, " %s=", rr_text(tb_plane_stat_name(p, p->stats[k].meta)));
                print_stat_value(f, p, &p->stats[k], 0);
            }
            fputc('\n', f);
        }
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            int64_t b, e;
            line_span(l, &b, &e);
            fprintf(f, "    line %" PRId64 " %s%s%s%s: %zu events, %s\n", l->id, rr_text(l->name),
                    l->display_name ? " (" : "", l->display_name ? rr_text(l->display_name) : "",
                    l->display_name ? ")" : "", l->nevents, rr_fmt_dur(span_of(b, e), d1, sizeof(d1)));
        }
    }

    /* top names by count, then by total time */
    for (int pass = 0; pass < 2; pass++) {
        qsort(a + 1, p->nevent_meta > 0 ? p->nevent_meta - 1 : 0, sizeof(*a), pass ? by_time : by_count);
        size_t shown = 0;
        if (json)
            fprintf(f, ",\"%s\":[", pass ? "top_by_time" : "top_by_count");
        else if (names)
            fprintf(f, "    top events by %s:\n", pass ? "total time" : "count");
        for (size_t m = 1; m < p->nevent_meta && shown < top; m++) {
            if (!a[m].count)
                continue;
            const char *n = tb_plane_event_name(p, a[m].meta);
            if (json) {
                fprintf(f, "%s{\"name\":", shown ? "," : "");
                rr_json_str(f, n);
                fprintf(f, ",\"count\":%" PRIu64 ",\"total_ns\":%" PRId64 "}", a[m].count, a[m].total_ns);
            } else {
                fprintf(f, "      %10" PRIu64 "  %12s  %s\n", a[m].count, rr_fmt_dur(a[m].total_ns, d2, sizeof(d2)),
                        rr_text(n));
            }
            shown++;
        }
        if (json)
            fputc(']', f);
    }
    if (json)
        fputs(",\"stat_names\":[", f);
    else
        fputs("    stat names:", f);
    int any = 0;
    for (size_t m = 1; m < p->nstat_meta; m++) {
        if (!used_stat[m])
            continue;
        if (json) {
            fputs(any ? "," : "", f);
            rr_json_str(f, p->stat_meta[m]);
        } else {
            fprintf(f, "%s%s", any ? ", " : " ", rr_text(p->stat_meta[m]));
        }
        any = 1;
    }
    fputs(json ? "]}" : (any ? "\n" : " (none)\n"), f);
    free(a);
    free(used_stat);
    return 0;
}

static void json_strv(FILE *f, const char *key, char **v, size_t n)
{
    fprintf(f, ",\"%s\":[", key);
    for (size_t i = 0; i < n; i++) {
        fputs(i ? "," : "", f);
        rr_json_str(f, v[i]);
    }
    fputc(']', f);
}

static int dump_space(FILE *f, const char *path, long long bytes, tb_space *s, int json, size_t top)
{
    int64_t b, e;
    tb_space_sort(s);
    tb_space_span(s, &b, &e);
    size_t n = tb_space_event_count(s);
    char d[32];
    if (json) {
        fputs("{\"file\":", f);
        rr_json_str(f, path);
        fprintf(f, ",\"bytes\":%lld,\"events\":%zu,\"begin_ns\":%" PRId64 ",\"end_ns\":%" PRId64
                   ",\"span_ns\":%lld",
                bytes, n, b, e, span_of(b, e));
        json_strv(f, "hostnames", s->hostnames, s->nhostnames);
        json_strv(f, "warnings", s->warnings, s->nwarnings);
        json_strv(f, "errors", s->errors, s->nerrors);
        fputs(",\"planes\":[", f);
        for (size_t i = 0; i < s->nplanes; i++) {
            fputs(i ? "," : "", f);
            if (dump_plane(f, s->planes[i], 1, top) < 0)
                return -ENOMEM;
        }
        fputs("]}", f);
        return 0;
    }
    fprintf(f, "%s (%lld bytes)\n", rr_text(path), bytes);
    for (size_t i = 0; i < s->nhostnames; i++)
        fprintf(f, "  hostname: %s\n", rr_text(s->hostnames[i]));
    fprintf(f, "  %zu planes, %zu events, span %s", s->nplanes, n, rr_fmt_dur(span_of(b, e), d, sizeof(d)));
    if (n)
        fprintf(f, " (from %" PRId64 " to %" PRId64 " ns since the epoch)", b, e);
    fputc('\n', f);
    for (size_t i = 0; i < s->nwarnings; i++)
        fprintf(f, "  warning: %s\n", rr_text(s->warnings[i]));
    for (size_t i = 0; i < s->nerrors; i++)
        fprintf(f, "  error: %s\n", rr_text(s->errors[i]));
    for (size_t i = 0; i < s->nplanes; i++)
        if (dump_plane(f, s->planes[i], 0, top) < 0)
            return -ENOMEM;
    return 0;
}

static int usage(FILE *f)
{
    fprintf(f, "usage: tbprof dump FILE|LOGDIR [--json] [--top N]\n"
               "  FILE: an .xplane.pb; LOGDIR (or a run folder): every profile of the newest run\n");
    return f == stdout ? 0 : 2;
}

int cmd_dump(int argc, char **argv)
{
    const char *in = NULL;
    int json = 0;
    size_t top = 10;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(stdout);
        else if (!strcmp(argv[i], "--top")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "tbprof: dump: --top wants a count\n");
                return 2;
            }
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end || v < 0) {
                fprintf(stderr, "tbprof: dump: --top wants a count, not '%s'\n", argv[i]);
                return 2;
            }
            top = (size_t)v;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "tbprof: dump: unknown option '%s'\n", argv[i]);
            return usage(stderr);
        } else if (!in)
            in = argv[i];
        else
            return usage(stderr);
    }
    if (!in)
        return usage(stderr);

    struct stat st;
    if (stat(in, &st) < 0) {
        fprintf(stderr, "tbprof: %s: %s\n", in, strerror(errno));
        return 2;
    }
    char err[256];
    if (!S_ISDIR(st.st_mode)) {
        tb_space *s = NULL;
        if (tb_xspace_read_file(in, &s, err, sizeof(err)) < 0) {
            fprintf(stderr, "tbprof: %s: %s\n", in, err);
            return 2;
        }
        int r = dump_space(stdout, in, (long long)st.st_size, s, json, top);
        if (json)
            fputc('\n', stdout);
        tb_space_free(s);
        return r < 0 ? 2 : 0;
    }

    tb_runlist rl;
    if (tb_runs_scan_or_say(in, &rl) < 0)
        return 2;
    const tb_run *run = tb_runs_newest(&rl);
    if (json) {
        fputs("{\"run\":", stdout);
        rr_json_str(stdout, run->name);
        fputs(",\"run_dir\":", stdout);
        rr_json_str(stdout, run->path);
        fprintf(stdout, ",\"runs\":%zu,\"profiles\":[", rl.n);
    } else {
        printf("run %s (newest of %zu in %s): %s\n", rr_text(run->name), rl.n, rr_text(in), rr_text(run->path));
    }
    size_t ok = 0, bad = 0;
    for (size_t i = 0; i < run->nfiles; i++) {
        const tb_runfile *rf = &run->files[i];
        if (!tb_str_ends(rf->name, ".xplane.pb"))
            continue;
        tb_space *s = NULL;
        if (tb_xspace_read_file(rf->path, &s, err, sizeof(err)) < 0) {
            fprintf(stderr, "tbprof: %s: %s\n", rf->path, err);
            bad++;
            continue;
        }
        if (json && ok)
            fputc(',', stdout);
        dump_space(stdout, rf->path, rf->bytes, s, json, top);
        ok++;
        tb_space_free(s);
    }
    if (json)
        fputs("]}\n", stdout);
    bad += rl.skipped;
    tb_runs_free(&rl);
    return ok ? (bad ? 1 : 0) : 2;
}
