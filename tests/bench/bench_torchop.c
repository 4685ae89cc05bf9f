/* bench_torchop.c - the cost, at collect time on the agent thread, of
 * torch's op ranges (emit_nvtx, `tbprof run --torch-ops`) against plain
 * NVTX ranges: N ranges into a /host:CPU line as the NVTX source puts
 * them there. Baseline: 64 names of the user's ("layer_17"), looked at by
 * the parser and left alone. Torch: every range a name of its own
 * ("aten::mm, seq = 12, op_id = 345", from 64 ops), cut to the op's name
 * with torch_seq and torch_op_id as stats. Prints ns per range for both
 * and their ratio (same run, same machine).
 * usage: bench_torchop [N] (default 1000000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "torchop.h"
#include "trace.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* names[i]: NUL-separated in one block, as the NVTX arena keeps them */
static char *make_names(size_t n, int torch, size_t **off)
{
    char *buf = malloc(n * 48);
    *off = malloc(n * sizeof(**off));
    if (!buf || !*off)
        return NULL;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        (*off)[i] = at;
        at += (size_t)(torch ? sprintf(buf + at, "aten::op_%02zu, seq = %zu, op_id = %zu", i % 64, i / 3, i + 100)
                             : sprintf(buf + at, "layer_%02zu", i % 64)) + 1;
    }
    return buf;
}

static double run(size_t n, const char *names, const size_t *off, size_t *nstats)
{
    tb_space *s = tb_space_new();
    tb_plane *hp = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(hp, 1, "python");
    double t = now();
    for (size_t i = 0; i < n; i++) {
        const char *name = names + off[i];
        tb_torch_op op;
        int64_t meta = tb_nvtx_range_meta(hp, name, strlen(name), &op);
        if (tb_line_add(l, meta, 1700000000000000000LL + (int64_t)i * 1000, 500) < 0)
            break;
        tb_torch_op_stats(hp, l, &op);
    }
    t = now() - t;
    *nstats = 0;
    for (size_t i = 0; i < l->nevents; i++)
        *nstats += l->events[i].nstats;
    tb_space_free(s);
    return t;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    size_t *off_plain, *off_torch, st_plain, st_torch;
    char *plain = make_names(n, 0, &off_plain), *torch = make_names(n, 1, &off_torch);
    if (!plain || !torch) {
        fprintf(stderr, "bench_torchop: out of memory\n");
        return 1;
    }
    run(n / 10, plain, off_plain, &st_plain); /* warm the heap */
    double tp = run(n, plain, off_plain, &st_plain);
    double tt = run(n, torch, off_torch, &st_torch);
    if (st_plain != 0 || st_torch != 2 * n) {
        fprintf(stderr, "bench_torchop: %zu and %zu stats, expected 0 and %zu\n", st_plain, st_torch, 2 * n);
        return 1;
    }
    printf("bench_torchop: %zu NVTX ranges into events: plain names %.1f ns/range, torch op names %.1f ns/range "
           "(op name + torch_seq + torch_op_id): ratio %.2f\n",
           n, tp / n * 1e9, tt / n * 1e9, tt / tp);
    free(plain);
    free(torch);
    free(off_plain);
    free(off_torch);
    return 0;
}
