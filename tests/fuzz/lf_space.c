/* lf_space.c - libFuzzer target: an .xplane.pb as the tools read it.
 *
 * Built only with -DTBPROF_SANITIZE=fuzzer (clang; see README "Tests and
 * benchmarks"). Bytes that decode get the links the agent adds at collect
 * (NVTX ranges onto GPU work, steps across threads), then go through what
 * `tbprof summary`, `flame` and `convert` do with a profile (summary,
 * CPU/GPU/sync folds, the call tree and its SVG, folded and speedscope
 * output, on-CPU pieces of every host line), then re-encode and decode
 * again with the same event count, and write Chrome JSON. ASan/UBSan
 * catch the rest. The bounded mutation fuzzers (fuzz_dump, fuzz_summary)
 * run in ctest; this one explores by coverage, for as long as it is
 * given. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tools/synth_space.h"
#include "folded.h"
#include "log.h"
#include "ranges.h"
#include "seeds.h"
#include "summary.h"
#include "xspace.h"

static FILE *devnull;

/* LF_WRITE_SEEDS=DIR: write the seed corpus there (synthetic captures, one
 * with NVTX ranges, CPU sample spans and syncs) and exit. */
static int write_seeds(const char *dir)
{
    static const synth_opts opts[] = {
        {.kernels = 60, .gpus = 2, .streams = 2, .host = 1, .steps = 3, .pid = 77},
        {.kernels = 8, .gpus = 1, .streams = 1, .host = 1, .steps = 2, .pid = 77},
        {.kernels = 6, .gpus = 1, .streams = 3, .host = 0, .pid = 77},
    };
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        tb_space *s = tb_space_new();
        synth_space(s, &opts[i]);
        if (i == 0) {
            add_syncs(s, 77);
            add_ranges_and_samples(s, 77);
            add_calls_elsewhere(s, 77, 78);
        }
        tb_buf b = {0};
        char path[4096];
        snprintf(path, sizeof(path), "%s/synth%zu.xplane.pb", dir, i);
        FILE *f = tb_xspace_encode(s, &b) == 0 ? fopen(path, "wb") : NULL;
        int ok = f && fwrite(b.data, 1, b.len, f) == b.len;
        if (f && fclose(f) != 0)
            ok = 0;
        tb_buf_free(&b);
        tb_space_free(s);
        if (!ok) {
            fprintf(stderr, "lf_space: cannot write %s\n", path);
            return 1;
        }
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *seeds = getenv("LF_WRITE_SEEDS");
    if (seeds)
        exit(write_seeds(seeds));
    devnull = fopen("/dev/null", "w");
    tb_log_set_level(TB_LOG_OFF);
    return 0;
}

static size_t events(const tb_space *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nplanes; i++)
        for (size_t j = 0; j < s->planes[i]->nlines; j++)
            n += s->planes[i]->lines[j]->nevents;
    return n;
}

static void folds(tb_space *sp)
{
    for (int what = 0; what < 3; what++) {
        tb_folded f;
        memset(&f, 0, sizeof(f));
        int r = what == 0 ? tb_folded_add_space(&f, sp) : what == 1 ? tb_folded_add_gpu(&f, sp)
                                                                    : tb_folded_add_syncs(&f, sp);
        if (r == 0) {
            tb_flame_node *root = tb_flame_tree(&f, what == 0);
            if (root) {
                tb_flame_opts o = {.ns = what != 0};
                tb_flame_svg(root, devnull, &o);
                tb_flame_free(root);
            }
            tb_folded_write(&f, devnull, 1);
            tb_speedscope_write(&f, devnull, "fuzz");
            tb_func_stat *fs = NULL;
            size_t n = 0;
            if (tb_folded_functions(&f, &fs, &n) == 0)
                free(fs);
        }
        tb_folded_free(&f);
    }
}

static void segments(const tb_space *sp)
{
    for (size_t i = 0; i < sp->nplanes; i++) {
        const tb_plane *p = sp->planes[i];
        if (strncmp(p->name, "/host:", 6) != 0)
            continue;
        for (size_t j = 0; j < p->nlines; j++) {
            tb_cpu_segs segs;
            if (tb_cpu_segments(p, p->lines[j], &segs) != 0)
                continue;
            for (size_t k = 1; k < segs.n; k++)
                if (segs.v[k].start < segs.v[k - 1].end || segs.v[k].end <= segs.v[k].start)
                    abort(); /* pieces are disjoint, sorted and not empty */
            if (segs.n)
                tb_cpu_segments_in(&segs, segs.v[0].start, segs.v[segs.n - 1].end, NULL, NULL);
            free(segs.v);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    tb_space *sp = NULL;
    char err[256];
    if (tb_xspace_decode(data, len, &sp, err, sizeof(err)) != 0)
        return 0;
    /* what the agent adds at collect: NVTX ranges onto GPU work, steps
     * across threads (the bytes decide which path: they may hold both) */
    if (len & 1)
        tb_space_link_ranges(sp);
    if (len & 2)
        tb_space_link_steps(sp);
    tb_summary sum;
    if (tb_summarize(sp, &sum) == 0)
        tb_summary_free(&sum);
    folds(sp);
    segments(sp);
    tb_buf b = {0};
    if (tb_xspace_encode(sp, &b) == 0) {
        tb_space *again = NULL;
        if (tb_xspace_decode(b.data, b.len, &again, err, sizeof(err)) != 0 || events(again) != events(sp))
            abort(); /* what we wrote, we read back whole */
        tb_space_free(again);
    }
    tb_buf_free(&b);
    tb_buf c = {0};
    tb_chrome_encode(sp, &c);
    tb_buf_free(&c);
    tb_space_free(sp);
    return 0;
}
