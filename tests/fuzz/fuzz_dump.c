/* fuzz_dump.c - bounded mutation fuzzing of the xplane.pb reader and of
 * `tbprof dump`: `fuzz_dump [CASES] [SEED]`.
 *
 * Seeds are real files from our encoder (a synthetic capture and a space
 * with every stat type). Each case applies a few mutations (bit flips, byte
 * sets, varint-sized garbage, inserts, deletes, truncation, chunk copies)
 * and decodes. Anything decoded must sort, re-encode, decode again with the
 * same event count, and produce Chrome JSON; tb_xspace_count (`tbprof ls`)
 * must agree with the decoder on every case. Every 50th case also runs
 * `tbprof dump` on the bytes (when TBPROF_BUILD names a build): it must exit
 * 0 or 2, never die of a signal. Deterministic for a seed. */
#include <errno.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../tools/synth_space.h"
#define FUZZ_NAME "fuzz_dump"
#include "mutate.h"
#include "xspace.h"

static void seed_every_stat(tb_buf *b)
{
    tb_space *s = tb_space_new();
    tb_space_add_hostname(s, "h");
    tb_space_add_warning(s, "w");
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_f64(p, "d", 2.5);
    tb_plane_stat_str(p, "s", "v");
    tb_line *l = tb_plane_line(p, 3, "t");
    tb_line_set_display_name(l, "T");
    int64_t m = tb_plane_event_meta(p, "ev");
    tb_plane_set_event_display_name(p, m, "EV");
    tb_plane_set_event_category(p, m, TB_CAT_USER);
    for (int i = 0; i < 20; i++) {
        tb_line_add(l, m, 1000 + i * 7, i);
        tb_line_stat_i64(l, tb_plane_stat_meta(p, "i"), -i);
        tb_line_stat_u64(l, tb_plane_stat_meta(p, "u"), (uint64_t)i << 40);
        tb_line_stat_f64(l, tb_plane_stat_meta(p, "f"), i * 0.5);
        tb_line_stat_str(l, tb_plane_stat_meta(p, "r"), i % 2 ? "odd" : "even");
    }
    tb_xspace_encode(s, b);
    tb_space_free(s);
}

int main(int argc, char **argv)
{
    int cases = argc > 1 ? atoi(argv[1]) : 2000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9E3779B97F4A7C15ull;
    if (!rng_state)
        rng_state = 1;

    tb_buf seeds[2] = {{0}, {0}};
    tb_space *s = tb_space_new();
    synth_opts o = {.kernels = 300, .gpus = 2, .streams = 2, .host = 1, .steps = 3, .pid = 77};
    synth_space(s, &o);
    tb_xspace_encode(s, &seeds[0]);
    tb_space_free(s);
    seed_every_stat(&seeds[1]);

    char tbprof[4096] = "", tmpf[256];
    const char *build = getenv("TBPROF_BUILD");
    if (build)
        snprintf(tbprof, sizeof(tbprof), "%s/bin/tbprof", build);
    if (tbprof[0] && access(tbprof, X_OK) != 0)
        tbprof[0] = '\0';
    snprintf(tmpf, sizeof(tmpf), "/tmp/tbprof_fuzz_dump_%d.xplane.pb", (int)getpid());

    size_t cap = seeds[0].len + 4096;
    uint8_t *d = malloc(cap);
    int decoded = 0, refused = 0, spawned = 0;
    char err[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int cs = 0; cs < cases; cs++) {
        const tb_buf *seed = &seeds[rnd() % 2];
        memcpy(d, seed->data, seed->len);
        size_t len = mutate(d, seed->len, cap);
        tb_space *sp = NULL;
        err[0] = '\0';
        int r = tb_xspace_decode(d, len, &sp, err, sizeof(err));
        /* `tbprof ls`'s count without decoding: the decoder's verdict, its
         * message and its event count */
        uint64_t counted = 0;
        char cerr[256] = "";
        int cr = tb_xspace_count(d, len, &counted, cerr, sizeof(cerr));
        EXPECT(cr == r && (r < 0 ? strcmp(cerr, err) == 0 : counted == tb_space_event_count(sp)),
               "count: %d '%s' %llu, decode: %d '%s' %zu", cr, cerr, (unsigned long long)counted, r, err,
               sp ? tb_space_event_count(sp) : 0);
        if (r < 0) {
            EXPECT(sp == NULL, "space returned on error %d", r);
            EXPECT(err[0] != '\0' && !strchr(err, '\n'), "error message '%s'", err);
            refused++;
        } else {
            decoded++;
            size_t n = tb_space_event_count(sp);
            int64_t b0, e0;
            tb_space_span(sp, &b0, &e0);
            EXPECT(b0 <= e0, "span %lld..%lld", (long long)b0, (long long)e0);
            tb_buf b = {0}, j = {0};
            EXPECT(tb_xspace_encode(sp, &b) == 0, "re-encode failed");
            tb_space *again = NULL;
            r = tb_xspace_decode(b.data, b.len, &again, err, sizeof(err));
            /* an XSpace with only empty warnings etc. re-encodes fine; all must load */
            EXPECT(r == 0 || (b.len == 0 && r == -ENODATA), "re-decode: %d %s", r, err);
            if (again)
                EXPECT(tb_space_event_count(again) == n, "events %zu -> %zu", n, tb_space_event_count(again));
            EXPECT(tb_chrome_encode(sp, &j) == 0, "chrome encode failed");
            tb_space_free(again);
            tb_buf_free(&b);
            tb_buf_free(&j);
            tb_space_free(sp);
        }
        if (tbprof[0] && cs % 50 == 0) {
            FILE *f = fopen(tmpf, "wb");
            if (f) {
                fwrite(d, 1, len, f);
                fclose(f);
                int status = 0;
                if (run_tool(tbprof, "dump", tmpf, NULL, &status) == 0) {
                    spawned++;
                    EXPECT(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2),
                           "tbprof dump: status 0x%x (kept in %s.crash)", status, tmpf);
                    if (!(WIFEXITED(status) && WEXITSTATUS(status) <= 2)) {
                        char keep[300];
                        snprintf(keep, sizeof(keep), "%s.crash", tmpf);
                        rename(tmpf, keep);
                    }
                }
            }
        }
    }
    unlink(tmpf);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("fuzz_dump: %d cases in %.1f s: %d decoded, %d refused, %d tbprof dump runs, %d failures\n", cases,
           secs, decoded, refused, spawned, fail);
    /* the mutations must reach both outcomes, or the fuzzer tests nothing */
    if (cases >= 100 && (decoded == 0 || refused == 0)) {
        printf("fuzz_dump: mutations reached only one outcome\n");
        fail++;
    }
    free(d);
    tb_buf_free(&seeds[0]);
    tb_buf_free(&seeds[1]);
    return fail ? 1 : 0;
}
