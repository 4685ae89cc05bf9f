/* cmd_convert.c - `tbprof convert IN --to OUT`: a profile (xplane.pb, a run
 * folder or a logdir's newest run) to
 *   OUT.json.gz / OUT.json      Chrome trace (Perfetto, chrome://tracing)
 *   OUT.folded / OUT.txt        CPU samples as folded stacks ("a;b;c N")
 *   OUT.speedscope.json         CPU samples for speedscope ("sampled" profiles)
 * The format follows OUT's name, or --format when OUT is "-" (stdout).
 * The output appears atomically; progress goes to stderr when it is a
 * terminal or the input is large. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "folded.h"
#include "readprof.h"
#include "xspace.h"

enum fmt { F_NONE, F_TRACE_GZ, F_TRACE, F_FOLDED, F_SPEEDSCOPE };

static const struct {
    const char *name, *suffix;
    enum fmt f;
} formats[] = {{"speedscope", ".speedscope.json", F_SPEEDSCOPE},
               {"trace.json.gz", ".json.gz", F_TRACE_GZ},
               {"trace.json", ".json", F_TRACE},
               {"folded", ".folded", F_FOLDED},
               {"folded", ".txt", F_FOLDED}};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tbprof convert IN --to OUT [--format F] [--run NAME] [--no-threads] [--gpu | --syncs]\n"
            "  IN                  FILE.xplane.pb, a run folder, or a LOGDIR (its newest run)\n"
            "  --to OUT.json.gz    Chrome trace JSON, gzip (Perfetto, chrome://tracing)\n"
            "  --to OUT.json       Chrome trace JSON\n"
            "  --to OUT.folded     CPU samples as folded stacks \"a;b;c N\" (also .txt)\n"
            "  --to OUT.speedscope.json   CPU samples for https://www.speedscope.app\n"
            "  --to -              stdout; needs --format trace.json|trace.json.gz|folded|speedscope\n"
            "  --no-threads        folded: leave out the thread name as the root frame\n"
            "  --gpu               folded, speedscope: GPU time (ns) by the sampled CPU stack that\n"
            "                      launched it, instead of CPU samples (see tbprof flame --gpu)\n"
            "  --syncs             folded, speedscope: the host's waits for the GPU (ns) by the\n"
            "                      sampled CPU stack that waited (see tbprof flame --syncs)\n");
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct job {
    tb_profset *ps;
    tb_profset_folded *pf;
    tb_buf *buf;
    int with_threads;
} job;

static int put_buf(FILE *f, void *arg)
{
    const tb_buf *b = ((job *)arg)->buf;
    if (fwrite(b->data, 1, b->len, f) == b->len)
        return 0;
    return errno ? -errno : -EIO;
}

static int put_folded(FILE *f, void *arg)
{
    job *j = arg;
    return tb_folded_write(&j->pf->f, f, j->with_threads);
}

static int put_speedscope(FILE *f, void *arg)
{
    job *j = arg;
    const char *name = j->ps->n == 1 ? j->ps->profs[0].label : j->ps->dir;
    return tb_speedscope_write(&j->pf->f, f, name);
}

int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {{"to", required_argument, 0, 'o'},
                                         {"format", required_argument, 0, 'f'},
                                         {"run", required_argument, 0, 'r'},
                                         {"no-threads", no_argument, 0, 'T'},
                                         {"gpu", no_argument, 0, 'g'},
                                         {"syncs", no_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = NULL, *run = NULL, *fmt_name = NULL;
    int with_threads = 1, c;
    tb_fold_what what = TB_FOLD_CPU;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:f:r:Tgsh", opts, NULL)) != -1) {
        switch (c) {
        case 'g': what = TB_FOLD_GPU; break;
        case 's': what = TB_FOLD_SYNCS; break;
        case 'o': out = optarg; break;
        case 'f': fmt_name = optarg; break;
        case 'r': run = optarg; break;
        case 'T': with_threads = 0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || !out) {
        usage(stderr);
        return 2;
    }
    enum fmt fmt = F_NONE;
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]) && fmt == F_NONE; i++) {
        if (fmt_name ? !strcmp(fmt_name, formats[i].name) : ends_with(out, formats[i].suffix))
            fmt = formats[i].f;
    }
    if (fmt == F_NONE) {
        if (fmt_name)
            fprintf(stderr, "tbprof convert: unknown --format '%s'\n", fmt_name);
        else
            fprintf(stderr,
                    "tbprof convert: cannot tell the format from '%s': name it .json.gz, .json, "
                    ".folded, .txt or .speedscope.json (or give --format)\n",
                    out);
        return 2;
    }
    if (what != TB_FOLD_CPU && (fmt == F_TRACE || fmt == F_TRACE_GZ)) {
        fprintf(stderr, "tbprof convert: --%s makes folded stacks or speedscope (.folded, .txt, "
                        ".speedscope.json); a trace has the GPU work already\n",
                what == TB_FOLD_GPU ? "gpu" : "syncs");
        return 2;
    }
    const char *in = argv[optind];
    long long bytes = tb_input_bytes_of(in, run);
    int progress = tb_progress_wanted(bytes) && strcmp(out, "-") != 0;
    double t0 = now_s();
    tb_profset ps;
    int rc = tb_profset_load("convert", in, run, progress, &ps);
    if (rc) {
        tb_profset_free(&ps);
        return rc;
    }
    job j = {.ps = &ps, .with_threads = with_threads};
    tb_buf buf = {0};
    tb_profset_folded pf = {0};
    if (fmt == F_TRACE || fmt == F_TRACE_GZ) {
        if (ps.n != 1) {
            fprintf(stderr,
                    "tbprof convert: %s holds %zu profiles; a trace is one host's: convert one "
                    "file, e.g.\n  tbprof convert %s --to %s\n",
                    ps.dir, ps.n, ps.profs[0].path, out);
            tb_profset_free(&ps);
            return 2;
        }
        if (progress)
            fprintf(stderr, "tbprof convert: encoding the trace (%zu events)...\n",
                    tb_space_event_count(ps.profs[0].space));
        int r = fmt == F_TRACE ? tb_chrome_encode(ps.profs[0].space, &buf)
                               : tb_chrome_encode_gz(ps.profs[0].space, &buf);
        if (r < 0) {
            fprintf(stderr, "tbprof convert: encoding the trace failed: %s\n", strerror(-r));
            tb_buf_free(&buf);
            tb_profset_free(&ps);
            return 2;
        }
        j.buf = &buf;
        rc = tb_write_output("convert", out, put_buf, &j);
    } else if ((rc = tb_profset_fold_some("convert", &ps, what, &pf)) == 0) {
        j.pf = &pf;
        rc = tb_write_output("convert", out, fmt == F_FOLDED ? put_folded : put_speedscope, &j);
    }
    if (rc == 0 && progress)
        fprintf(stderr, "tbprof convert: wrote %s (%.1f MB) in %.2f s\n", out,
                (double)tb_input_bytes(out) / 1e6, now_s() - t0);
    tb_profset_folded_free(&pf);
    tb_buf_free(&buf);
    tb_profset_free(&ps);
    return rc;
}
