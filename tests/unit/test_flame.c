/* test_flame.c - CPU sample spans -> folded stacks, speedscope JSON, call
 * tree, per-function totals and the SVG flame graph. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "folded.h"
#include "sampler.h"
#include "stats.h"
#include "tap.h"

static void span(tb_line *l, const char *name, int64_t start, int64_t dur, int64_t samples)
{
    int64_t m = tb_plane_event_meta(l->plane, name);
    tb_plane_set_event_category(l->plane, m, TB_CAT_CPU_SAMPLE);
    tb_line_add(l, m, 1000000 + start, dur);
    if (samples >= 0)
        tb_line_stat_i64(l, tb_plane_stat_meta(l->plane, "samples"), samples);
}

static char *capture(int (*fn)(const tb_folded *, FILE *, int), const tb_folded *f, int arg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    CHECK(fn(f, m, arg) == 0);
    fclose(m);
    return buf;
}

static int write_ss(const tb_folded *f, FILE *out, int unused)
{
    (void)unused;
    return tb_speedscope_write(f, out, "my \"run\"");
}

/* Sum of the counts at the end of each folded line. */
static long long folded_sum(const char *text, int *lines)
{
    long long sum = 0;
    *lines = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        const char *sp = nl;
        while (sp > p && sp[-1] != ' ')
            sp--;
        sum += atoll(sp);
        (*lines)++;
        p = nl + 1;
    }
    return sum;
}

static tb_space *sample_space(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *a = tb_plane_line(h, 1, "python");
    tb_line *b = tb_plane_line(h, 2, "io;thread"); /* ';' must not split the thread frame */
    /* inserted out of order: the reader sorts */
    span(a, "fwd", 10, 40, 4);
    tb_line_stat_u64(a, tb_plane_stat_meta(h, "self_samples"), 4); /* as the sampler writes */
    span(a, "main", 0, 100, 9);
    tb_line_stat_u64(a, tb_plane_stat_meta(h, "self_samples"), 2);
    span(a, "bwd", 60, 30, 3);
    span(a, "a<b>&\"c\"", 65, 5, 2);   /* needs escaping everywhere */
    span(a, "main", 200, 10, 1);        /* the same stack again, later */
    span(a, "rec", 300, 50, 3);         /* recursion: rec > rec */
    span(a, "rec", 310, 10, 2);
    span(b, "read", 0, 10, -1);         /* no count stat: one sample */
    /* not samples: a step root named like a frame, an API call */
    int64_t m = tb_plane_event_meta(h, "main");
    tb_line_add(a, m, 1000000, 500);
    tb_line_stat_i64(a, tb_plane_stat_meta(h, TB_ST_IS_ROOT), 1);
    tb_line_add(a, tb_plane_event_meta(h, "cudaMemcpy"), 1000020, 5);
    return s;
}

static void stacks_and_functions(void)
{
    tb_space *s = sample_space();
    tb_folded f = {0};
    CHECK(tb_folded_add_space(&f, s) == 0);
    /* main 9 = fwd 4 + bwd 3 + self 2; bwd 3 = a<b> 2 + self 1; main 1;
     * rec 3 = rec 2 + self 1; read 1 */
    CHECK_EQ_I(f.total, 9 + 1 + 3 + 1);
    CHECK_EQ_I(f.nthreads, 2);
    CHECK_EQ_I(f.bad_spans, 0);

    char *txt = capture(tb_folded_write, &f, 1);
    int lines;
    CHECK_EQ_I(folded_sum(txt, &lines), 14);
    CHECK(strstr(txt, "python;main 3\n") != NULL); /* 2 + 1: merged */
    CHECK(strstr(txt, "python;main;fwd 4\n") != NULL);
    CHECK(strstr(txt, "python;main;bwd 1\n") != NULL);
    CHECK(strstr(txt, "python;main;bwd;a<b>&\"c\" 2\n") != NULL);
    CHECK(strstr(txt, "python;rec 1\n") != NULL);
    CHECK(strstr(txt, "python;rec;rec 2\n") != NULL);
    CHECK(strstr(txt, "io:thread;read 1\n") != NULL);
    CHECK_EQ_I(lines, 7);
    free(txt);
    txt = capture(tb_folded_write, &f, 0);
    CHECK(strncmp(txt, "main 3\n", 7) == 0 || strstr(txt, "\nmain 3\n"));
    CHECK(strstr(txt, "python") == NULL);
    CHECK_EQ_I(folded_sum(txt, &lines), 14);
    free(txt);

    tb_func_stat *fs;
    size_t n;
    CHECK(tb_folded_functions(&f, &fs, &n) == 0);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(fs[i].name, "rec")) {
            CHECK_EQ_I(fs[i].self, 3);
            CHECK_EQ_I(fs[i].total, 3); /* once per sample, not 5 */
            found++;
        }
        if (!strcmp(fs[i].name, "main")) {
            CHECK_EQ_I(fs[i].self, 3);
            CHECK_EQ_I(fs[i].total, 10);
            found++;
        }
    }
    CHECK_EQ_I(found, 2);
    CHECK_STR(fs[0].name, "fwd"); /* most self samples */
    free(fs);

    txt = capture(write_ss, &f, 0);
    CHECK(strstr(txt, "\"type\":\"sampled\"") != NULL);
    CHECK(strstr(txt, "\"name\":\"my \\\"run\\\"\"") != NULL);
    CHECK(strstr(txt, "{\"name\":\"a<b>&\\\"c\\\"\"}") != NULL);
    CHECK(strstr(txt, "\"endValue\":13") != NULL); /* python */
    CHECK(strstr(txt, "\"endValue\":1,") != NULL);  /* io;thread */
    free(txt);
    tb_folded_free(&f);
    tb_space_free(s);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

static void flame_svg(void)
{
    tb_space *s = sample_space();
    tb_folded f = {0};
    CHECK(tb_folded_add_space(&f, s) == 0);
    tb_flame_node *root = tb_flame_tree(&f, 1);
    CHECK(root && root->total == 14);
    CHECK_EQ_I(root->nkids, 2);
    if (root && root->nkids == 2)
        CHECK_STR(root->kids[0]->name, "io;thread");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    tb_flame_opts o = {.title = "t<1>", .width_px = 1020};
    CHECK(tb_flame_svg(root, m, &o) == 0);
    fclose(m);
    /* frames: all, python, io;thread, main, fwd, bwd, a<b>, rec, rec, read */
    CHECK_EQ_I(count(buf, "<rect x="), 10 + 1); /* + the background */
    CHECK(strstr(buf, "<title>a&lt;b&gt;&amp;&quot;c&quot; (2 samples, 14.29%; self 2)</title>") != NULL);
    CHECK(strstr(buf, "<title>all (14 samples, 100.00%; self 0)</title>") != NULL);
    /* the root spans the drawable width: 1020 - 2 * 10 px */
    CHECK(strstr(buf, "width=\"1000.00\"") != NULL);
    CHECK(strstr(buf, ">t&lt;1&gt;</text>") != NULL);
    CHECK(strstr(buf, "a<b>") == NULL);
    CHECK_EQ_I(count(buf, "<g "), count(buf, "</g>"));
    free(buf);
    tb_flame_free(root);
    tb_folded_free(&f);
    tb_space_free(s);
}

static void escaping(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    tb_json_str(m, "a\"b\\c\n\x01\xff\xc3\xa9");
    fputc('|', m);
    tb_xml_str(m, "<&\x02\xc3(\xe2\x82\xac");
    fclose(m);
    CHECK_STR(buf, "\"a\\\"b\\\\c\\n\\u0001\\ufffd\xc3\xa9\"|&lt;&amp; &#xFFFD;(\xe2\x82\xac");
    free(buf);
}

static int sum_who(void *ctx, const char *who, int64_t ns)
{
    (void)who;
    *(int64_t *)ctx += ns;
    return 0;
}

/* On-CPU pieces of a line's spans: a parent's own time between its
 * children, credit to the deepest Python frame, adjacent pieces of one
 * frame merged, kernel time to the function that entered the kernel, a
 * span overlapping its would-be parent skipped, other events ignored; and
 * the time inside a window. */
static void cpu_segments(void)
{
    tb_space *s = tb_space_new();
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(p, 1, "python");
    span(l, "py::main", 0, 1000, 10);
    span(l, "libc_read", 100, 200, 2);  /* native under main: main's */
    span(l, "py::step", 400, 300, 3);
    span(l, "gemm", 500, 100, 1);        /* native under step: step's */
    span(l, "bad", 650, 400, 1);         /* ends after step and main: skipped */
    tb_line_add(l, tb_plane_event_meta(p, "cudaLaunchKernel"), 1000000 + 420, 10); /* not a span */
    span(l, "native_root", 2000, 500, 5); /* no Python frame: itself */
    span(l, "read", 2100, 200, 2);
    span(l, TB_CPU_KERNEL_FRAME, 2150, 150, 1); /* kernel time: the caller's */
    tb_space_sort(s);
    tb_cpu_segs g;
    CHECK(tb_cpu_segments(p, l, &g) == 0);
    static const struct {
        int64_t a, b;
        const char *who;
    } want[] = {{0, 400, "py::main"},        {400, 700, "py::step"}, {700, 1000, "py::main"},
                {2000, 2100, "native_root"}, {2100, 2300, "read"},   {2300, 2500, "native_root"}};
    CHECK_EQ_I(g.n, 6);
    for (size_t i = 0; i < g.n && i < 6; i++) {
        CHECK_EQ_I(g.v[i].start - 1000000, want[i].a);
        CHECK_EQ_I(g.v[i].end - 1000000, want[i].b);
        CHECK_STR(g.v[i].who, want[i].who);
    }
    int64_t seen = 0;
    /* [650, 2100): main 300 + native_root 100 + step 50 */
    CHECK_EQ_I(tb_cpu_segments_in(&g, 1000000 + 650, 1000000 + 2100, sum_who, &seen), 450);
    CHECK_EQ_I(seen, 450);
    CHECK_EQ_I(tb_cpu_segments_in(&g, 1000000 + 1000, 1000000 + 2000, NULL, NULL), 0);
    free(g.v);
    /* a line without spans: none */
    CHECK(tb_cpu_segments(p, tb_plane_line(p, 2, "idle"), &g) == 0);
    CHECK_EQ_I(g.n, 0);
    free(g.v);
    tb_space_free(s);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* GPU time by launching stack of an XLA program without CPU samples:
 * every kernel under one frame, thousands of distinct kernel names, each
 * launched again every step. The call tree (flame --gpu, convert --gpu)
 * finds a node's child by name; a linear search over 20000 siblings per
 * stack took 10 s for 300k kernels (minutes for a real capture). */
static void wide_tree(void)
{
    enum { NAMES = 30000, STACKS = 300000 };
    char (*names)[16] = malloc(NAMES * sizeof(*names));
    tb_folded f = {0};
    f.ns = 1;
    f.threads = malloc(sizeof(*f.threads));
    f.threads[0] = "[CUDA call not in the capture]";
    f.nthreads = f.cap_threads = 1;
    f.stacks = malloc(STACKS * sizeof(*f.stacks));
    f.frames = malloc(STACKS * sizeof(*f.frames));
    CHECK(names && f.stacks && f.frames);
    if (!names || !f.stacks || !f.frames)
        return;
    for (int i = 0; i < NAMES; i++)
        snprintf(names[i], sizeof(names[i]), "fusion_%d", i);
    for (int i = 0; i < STACKS; i++) {
        f.frames[i] = names[i % NAMES];
        f.stacks[i] = (tb_folded_stack){(uint32_t)i, 1, 0, 1000};
    }
    f.nstacks = f.cap_stacks = f.nframes = f.cap_frames = STACKS;
    f.total = (uint64_t)STACKS * 1000;
    double t0 = now_s();
    tb_flame_node *root = tb_flame_tree(&f, 1);
    double took = now_s() - t0;
    CHECKF(took < 2.0, "call tree of %d stacks over %d names took %.1f s", STACKS, NAMES, took);
    CHECK(root && root->nkids == 1 && root->kids[0]->nkids == NAMES);
    if (root && root->nkids == 1 && root->kids[0]->nkids == NAMES) {
        const tb_flame_node *t = root->kids[0];
        int sorted = 1;
        for (size_t i = 1; i < t->nkids; i++)
            sorted &= strcmp(t->kids[i - 1]->name, t->kids[i]->name) < 0;
        CHECK(sorted);
        CHECK_EQ_I(t->kids[0]->total, (STACKS / NAMES) * 1000); /* "fusion_0" */
        CHECK_STR(t->kids[0]->name, "fusion_0");
        CHECK_EQ_I(t->total, f.total);
    }
    tb_flame_free(root);
    free(names);
    tb_folded_free(&f);
}

/* speedscope of a run of many ranks: one profile per thread, each
 * thread's stacks found in one pass (a pass over every stack per thread
 * took 10 s for 8000 threads, minutes for a real multi-rank run). */
static void speedscope_many_threads(void)
{
    enum { THREADS = 8000, PER = 100, STACKS = THREADS * PER };
    tb_folded f = {0};
    char (*tnames)[16] = malloc(THREADS * sizeof(*tnames));
    f.threads = malloc(THREADS * sizeof(*f.threads));
    f.stacks = malloc(STACKS * sizeof(*f.stacks));
    f.frames = malloc(STACKS * sizeof(*f.frames));
    CHECK(tnames && f.threads && f.stacks && f.frames);
    if (!tnames || !f.threads || !f.stacks || !f.frames)
        return;
    for (int t = 0; t < THREADS; t++) {
        snprintf(tnames[t], sizeof(tnames[t]), "rank%d: t", t);
        f.threads[t] = tnames[t];
    }
    f.nthreads = f.cap_threads = THREADS;
    for (int i = 0; i < STACKS; i++) {
        f.frames[i] = i % 2 ? "fwd" : "bwd";
        /* interleaved, as threads of several profiles come */
        f.stacks[i] = (tb_folded_stack){(uint32_t)i, 1, (uint32_t)(i % THREADS), (uint64_t)(i / THREADS) + 1};
        f.total += f.stacks[i].count;
    }
    f.nstacks = f.cap_stacks = f.nframes = f.cap_frames = STACKS;
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    double t0 = now_s();
    CHECK(tb_speedscope_write(&f, m, "run") == 0);
    double took = now_s() - t0;
    fclose(m);
    CHECKF(took < 2.0, "speedscope of %d threads, %d stacks took %.1f s", THREADS, STACKS, took);
    /* each thread: weights 1..PER in order, endValue their sum */
    CHECK_EQ_I(count(buf, "\"type\":\"sampled\""), THREADS);
    CHECK(strstr(buf, "\"name\":\"rank7999: t\",\"unit\":\"none\",\"startValue\":0,\"endValue\":5050,") != NULL);
    char want[64];
    snprintf(want, sizeof want, "\"weights\":[1,2,3,4,5,6,7,8,9,10,11,");
    CHECK_EQ_I(count(buf, want), THREADS);
    free(buf);
    free(tnames);
    tb_folded_free(&f);
}

int main(void)
{
    speedscope_many_threads();
    wide_tree();
    cpu_segments();
    stacks_and_functions();
    flame_svg();
    escaping();
    return tap_done();
}
