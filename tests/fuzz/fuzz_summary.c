/* fuzz_summary.c - bounded mutation fuzzing of what `tbprof summary` does
 * with a profile, and of the tools fed a damaged trace.json.gz:
 *
 *   fuzz_summary [CASES] [SEED] [SEED_FILE...]
 *
 * Seeds: a synthetic capture (GPU kernels, copies, steps), a space with every
 * stat type, any SEED_FILE given (e.g. a real agent profile with CPU
 * samples), and the gzip Chrome trace of the synthetic capture. Each case
 * mutates one seed (bit flips, byte sets, long varints, inserts, deletes,
 * truncation, chunk copies). An xplane case is decoded; what decodes is
 * summarized (tb_summarize) and folded (tb_folded_add_space +
 * tb_folded_functions), and the function figures must add up (self <=
 * total <= all samples). Every 40th case (160th in sanitizer builds) runs
 * `tbprof summary FILE` (and every 80th with --json) on the bytes, and a
 * trace.json.gz case runs `tbprof summary` and `tbprof dump` on it: each
 * must exit 0 or 2 (a clear refusal), never die of a signal (when
 * TBPROF_BUILD names a build). Deterministic for a seed; prints counts. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../tools/synth_space.h"
#include "folded.h"
#include "summary.h"
#define FUZZ_NAME "fuzz_summary"
#include "mutate.h"
#include "seeds.h"
#include "xspace.h"

static int cs;

static void seed_every_stat(tb_buf *b)
{
    tb_space *s = tb_space_new();
    tb_space_add_hostname(s, "h");
    tb_space_add_warning(s, "w");
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_f64(p, "d", 2.5);
    tb_plane_stat_str(p, "tbprof_trigger", "fuzz");
    tb_plane_stat_i64(p, "tbprof_dropped_events", 3);
    tb_line *l = tb_plane_line(p, 3, "t");
    int64_t m = tb_plane_event_meta(p, "train");
    tb_plane_set_event_category(p, m, TB_CAT_STEP);
    for (int i = 0; i < 20; i++) {
        tb_line_add(l, m, 1000 + i * 70, 60);
        tb_line_stat_i64(l, tb_plane_stat_meta(p, "_r"), 1);
        tb_line_stat_i64(l, tb_plane_stat_meta(p, "step_num"), i);
        tb_line_stat_u64(l, tb_plane_stat_meta(p, "u"), (uint64_t)i << 40);
        tb_line_stat_str(l, tb_plane_stat_meta(p, "r"), i % 2 ? "odd" : "even");
    }
    tb_xspace_encode(s, b);
    tb_space_free(s);
}

static int spawned, tool_ok;

static void tool_case(const char *tbprof, const char *cmd, const char *file, const char *opt, const uint8_t *d,
                      size_t len)
{
    FILE *f = fopen(file, "wb");
    if (!f)
        return;
    fwrite(d, 1, len, f);
    fclose(f);
    int status = 0;
    if (run_tool(tbprof, cmd, file, opt, &status) != 0)
        return;
    spawned++;
    int ok = WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2);
    tool_ok += ok;
    EXPECT(ok, "tbprof %s %s: status 0x%x (kept in %s.crash)", cmd, opt ? opt : "", status, file);
    if (!ok) {
        char keep[600];
        snprintf(keep, sizeof(keep), "%s.crash", file);
        rename(file, keep);
    }
}

static int read_seed(const char *path, tb_buf *b)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    uint8_t chunk[65536];
    size_t k;
    memset(b, 0, sizeof(*b));
    while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        uint8_t *n = realloc(b->data, b->len + k);
        if (!n)
            break;
        b->data = n;
        memcpy(b->data + b->len, chunk, k);
        b->len += k;
    }
    fclose(f);
    return 0;
}

/* Figures must be sane whatever the bytes were. */
static void check_summary(tb_space *sp)
{
    tb_summary sum;
    int r = tb_summarize(sp, &sum);
    EXPECT(r == 0 || r == -ENOMEM, "tb_summarize: %d", r);
    if (r == 0)
        tb_summary_free(&sum);
    tb_folded f;
    memset(&f, 0, sizeof(f));
    r = tb_folded_add_space(&f, sp);
    EXPECT(r == 0 || r == -ENOMEM, "tb_folded_add_space: %d", r);
    if (r == 0) {
        tb_func_stat *fs = NULL;
        size_t n = 0;
        uint64_t self = 0;
        if (tb_folded_functions(&f, &fs, &n) == 0) {
            for (size_t i = 0; i < n; i++) {
                self += fs[i].self;
                EXPECT(fs[i].self <= fs[i].total && fs[i].total <= f.total, "%s: self %llu total %llu of %llu",
                       fs[i].name, (unsigned long long)fs[i].self, (unsigned long long)fs[i].total,
                       (unsigned long long)f.total);
            }
            EXPECT(self <= f.total, "self sum %llu > total %llu", (unsigned long long)self,
                   (unsigned long long)f.total);
            free(fs);
        }
    }
    tb_folded_free(&f);
}

int main(int argc, char **argv)
{
    int cases = argc > 1 ? atoi(argv[1]) : 2000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 0xC0FFEE1234567ull;
    if (!rng_state)
        rng_state = 1;

    enum { MAXSEEDS = 16 };
    tb_buf seeds[MAXSEEDS];
    int is_gz[MAXSEEDS] = {0};
    int nseeds = 0;
    memset(seeds, 0, sizeof(seeds));
    tb_space *s = tb_space_new();
    synth_opts o = {.kernels = 200, .gpus = 2, .streams = 2, .host = 1, .steps = 4, .pid = 77};
    synth_space(s, &o);
    add_syncs(s, 77);
    add_ranges_and_samples(s, 77);
    tb_xspace_encode(s, &seeds[nseeds++]);
    is_gz[nseeds] = 1;
    tb_chrome_encode_gz(s, &seeds[nseeds++]);
    tb_space_free(s);
    seed_every_stat(&seeds[nseeds++]);
    for (int i = 3; i < argc && nseeds < MAXSEEDS; i++) {
        if (read_seed(argv[i], &seeds[nseeds]) == 0 && seeds[nseeds].len) {
            size_t l = strlen(argv[i]);
            is_gz[nseeds] = l > 3 && !strcmp(argv[i] + l - 3, ".gz");
            nseeds++;
        } else {
            fprintf(stderr, "fuzz_summary: cannot read seed %s\n", argv[i]);
        }
    }
    size_t cap = 0;
    for (int i = 0; i < nseeds; i++)
        if (seeds[i].len + 4096 > cap)
            cap = seeds[i].len + 4096;

    char tbprof[4096] = "", dir[256], xfile[300], gzfile[300];
    const char *build = getenv("TBPROF_BUILD");
    if (build)
        snprintf(tbprof, sizeof(tbprof), "%s/bin/tbprof", build);
    if (tbprof[0] && access(tbprof, X_OK) != 0)
        tbprof[0] = '\0';
    snprintf(dir, sizeof(dir), "/tmp/tbprof_fuzz_summary_%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(xfile, sizeof(xfile), "%s/h.xplane.pb", dir);
    snprintf(gzfile, sizeof(gzfile), "%s/h.trace.json.gz", dir);

    /* a sanitizer build's tbprof starts slowly: fewer tool runs there */
    const char *san = getenv("TBPROF_SANITIZE");
    int every = san && *san ? 4 : 1;
    uint8_t *d = malloc(cap);
    int decoded = 0, refused = 0, gzcases = 0;
    char err[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (cs = 0; cs < cases; cs++) {
        int k = (int)(rnd() % (unsigned)nseeds);
        memcpy(d, seeds[k].data, seeds[k].len);
        size_t len = mutate(d, seeds[k].len, cap);
        tb_space *sp = NULL;
        err[0] = '\0';
        int r = tb_xspace_decode(d, len, &sp, err, sizeof(err));
        if (r < 0) {
            EXPECT(sp == NULL, "space returned on error %d", r);
            EXPECT(err[0] && !strchr(err, '\n'), "error message '%s'", err);
            refused++;
        } else {
            decoded++;
            check_summary(sp);
            tb_space_free(sp);
        }
        if (!tbprof[0])
            continue;
        if (is_gz[k]) {
            if (cs % (10 * every) == 0) {
                gzcases++;
                tool_case(tbprof, "summary", gzfile, NULL, d, len);
                tool_case(tbprof, "dump", gzfile, NULL, d, len);
            }
        } else if (cs % (40 * every) == 0) {
            tool_case(tbprof, "summary", xfile, cs % (80 * every) == 0 ? "--json" : NULL, d, len);
        }
    }
    unlink(xfile);
    unlink(gzfile);
    rmdir(dir);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("fuzz_summary: %d cases (%d seeds) in %.1f s: %d decoded and summarized, %d refused, %d tool runs "
           "(%d on trace.json.gz cases) all exited 0/2: %d, %d failures\n",
           cases, nseeds, secs, decoded, refused, spawned, gzcases, tool_ok, fail);
    if (cases >= 100 && (decoded == 0 || refused == 0)) {
        printf("fuzz_summary: mutations reached only one outcome\n");
        fail++;
    }
    free(d);
    for (int i = 0; i < nseeds; i++)
        tb_buf_free(&seeds[i]);
    return fail ? 1 : 0;
}
