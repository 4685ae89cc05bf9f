/* test_xspace.c - the XSpace encoder against protobuf-c's generated decoder
 * and against our own reader: every field, every stat type, ps units. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "tap.h"
#include "trace.h"
#include "xplane.pb-c.h"
#include "xspace.h"

#define T0 1700000000123456789LL /* a realistic epoch-ns base */

typedef Tensorflow__Profiler__XSpace XSpace;
typedef Tensorflow__Profiler__XPlane XPlane;
typedef Tensorflow__Profiler__XLine XLine;
typedef Tensorflow__Profiler__XEvent XEvent;
typedef Tensorflow__Profiler__XStat XStat;

static tb_space *build(void)
{
    tb_space *s = tb_space_new();
    tb_space_add_hostname(s, "node-7");
    tb_space_add_warning(s, "GPU tracing off: test");
    tb_space_add_warning(s, "");
    tb_space_add_error(s, "an error line");

    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_i64(h, "pid", 4242);
    tb_plane_stat_u64(h, "tbprof_cpu_samples", 18446744073709551615ull);
    tb_plane_stat_f64(h, "ratio", 0.125);
    tb_plane_stat_str(h, "tbprof_trigger", "steps 10-20");

    int64_t m_step = tb_plane_event_meta(h, "train");
    int64_t m_launch = tb_plane_event_meta(h, "cudaLaunchKernel");
    int64_t m_odd = tb_plane_event_meta(h, "quote\" back\\slash \x01 ctl");
    tb_plane_set_event_display_name(h, m_launch, "Launch");
    tb_plane_set_event_category(h, m_step, TB_CAT_STEP);
    tb_plane_set_event_category(h, m_launch, TB_CAT_CUDA_RUNTIME);
    int64_t s_r = tb_plane_stat_meta(h, "_r"), s_step = tb_plane_stat_meta(h, "step_num");
    int64_t s_corr = tb_plane_stat_meta(h, "correlation_id"), s_neg = tb_plane_stat_meta(h, "neg");
    int64_t s_d = tb_plane_stat_meta(h, "dbl"), s_str = tb_plane_stat_meta(h, "kernel_details");

    tb_line *main = tb_plane_line(h, 100, "python");
    tb_line_set_display_name(main, "MainThread");
    /* out of order on purpose: the encoder sorts */
    tb_line_add(main, m_launch, T0 + 2000, 500);
    tb_line_stat_u64(main, s_corr, 77);
    tb_line_stat_i64(main, s_neg, -5);
    tb_line_add(main, m_step, T0 + 1000, 10000);
    tb_line_stat_i64(main, s_r, 1);
    tb_line_stat_i64(main, s_step, 10);
    tb_line_add(main, m_odd, T0 + 9000, 0);
    tb_line_stat_f64(main, s_d, -3.5e-7);
    tb_line_stat_str(main, s_str, "regs:32 grid:1,1,1");
    tb_line *worker = tb_plane_line(h, 101, "worker");
    tb_line_add(worker, m_launch, T0 + 5, 1);
    /* the same name as a sampled function: its own metadata */
    tb_line_add(worker, tb_plane_event_meta_cat(h, "cudaLaunchKernel", TB_CAT_CPU_SAMPLE), T0 + 4, 3);
    tb_plane_line(h, 102, "idle"); /* a line with no events */

    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_plane_stat_i64(g, "compute_cap_major", 9);
    int64_t m_k = tb_plane_event_meta(g, "void gemm<float>(int)");
    tb_plane_set_event_category(g, m_k, TB_CAT_KERNEL);
    int64_t g_corr = tb_plane_stat_meta(g, "correlation_id");
    int64_t g_kd = tb_plane_stat_meta(g, "kernel_details");
    tb_line *st = tb_plane_line(g, 7, "Stream #7(Compute)");
    for (int i = 0; i < 50; i++) {
        tb_line_add(st, m_k, T0 + 3000 + i * 100, 80 + i);
        tb_line_stat_u64(st, g_corr, 77 + (uint64_t)i);
        tb_line_stat_str(st, g_kd, i % 2 ? "regs:32 grid:1,1,1" : "regs:64");
    }
    return s;
}

static const XStat *xstat_by_name(const XPlane *xp, XStat **stats, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < xp->n_stat_metadata; k++)
            if (xp->stat_metadata[k]->key == stats[i]->metadata_id &&
                !strcmp(xp->stat_metadata[k]->value->name, name))
                return stats[i];
    return NULL;
}

static const char *xstat_meta_name(const XPlane *xp, int64_t id)
{
    for (size_t k = 0; k < xp->n_stat_metadata; k++)
        if (xp->stat_metadata[k]->key == id)
            return xp->stat_metadata[k]->value->name;
    return NULL;
}

static const Tensorflow__Profiler__XEventMetadata *xev_meta(const XPlane *xp, int64_t id)
{
    for (size_t k = 0; k < xp->n_event_metadata; k++)
        if (xp->event_metadata[k]->key == id)
            return xp->event_metadata[k]->value;
    return NULL;
}

/* The protobuf-c view must say exactly what the model said. */
static void check_against_protobuf_c(tb_space *s, const tb_buf *b)
{
    XSpace *x = tensorflow__profiler__xspace__unpack(NULL, b->len, b->data);
    CHECK(x != NULL);
    if (!x)
        return;
    CHECK_EQ_I(x->n_planes, s->nplanes);
    CHECK_EQ_I(x->n_hostnames, 1);
    CHECK_STR(x->hostnames[0], "node-7");
    CHECK_EQ_I(x->n_warnings, 2);
    CHECK_STR(x->warnings[0], "GPU tracing off: test");
    CHECK_STR(x->warnings[1], "");
    CHECK_EQ_I(x->n_errors, 1);
    CHECK_STR(x->errors[0], "an error line");
    for (size_t i = 0; i < s->nplanes && i < x->n_planes; i++) {
        const tb_plane *p = s->planes[i];
        const XPlane *xp = x->planes[i];
        CHECK_EQ_I(xp->id, p->id);
        CHECK_STR(xp->name, p->name);
        CHECK_EQ_I(xp->n_lines, p->nlines);
        CHECK_EQ_I(xp->n_event_metadata, p->nevent_meta - 1);
        /* every metadata entry: key == id, name, display name */
        for (size_t k = 0; k < xp->n_event_metadata; k++) {
            const Tensorflow__Profiler__XEventMetadata *v = xp->event_metadata[k]->value;
            CHECK_EQ_I(xp->event_metadata[k]->key, v->id);
            CHECK_STR(v->name, tb_plane_event_name(p, v->id));
            const char *dn = p->event_meta[v->id].display_name;
            CHECK_STR(v->display_name, dn ? dn : "");
        }
        for (size_t k = 0; k < xp->n_stat_metadata; k++) {
            const Tensorflow__Profiler__XStatMetadata *v = xp->stat_metadata[k]->value;
            CHECK_EQ_I(xp->stat_metadata[k]->key, v->id);
            CHECK_STR(v->name, tb_plane_stat_name(p, v->id));
        }
        CHECK_EQ_I(xp->n_stats, p->nstats);
        for (size_t j = 0; j < p->nlines && j < xp->n_lines; j++) {
            const tb_line *l = p->lines[j];
            const XLine *xl = xp->lines[j];
            CHECK_EQ_I(xl->id, l->id);
            CHECK_STR(xl->name, l->name);
            CHECK_STR(xl->display_name, l->display_name ? l->display_name : "");
            CHECK_EQ_I(xl->n_events, l->nevents);
            int64_t first = INT64_MAX, end = INT64_MIN;
            for (size_t e = 0; e < l->nevents; e++) {
                if (l->events[e].start_ns < first)
                    first = l->events[e].start_ns;
                if (l->events[e].start_ns + l->events[e].dur_ns > end)
                    end = l->events[e].start_ns + l->events[e].dur_ns;
            }
            if (l->nevents) {
                CHECK_EQ_I(xl->timestamp_ns, first);
                CHECK_EQ_I(xl->duration_ps, (end - first) * 1000);
            }
            for (size_t e = 0; e < l->nevents && e < xl->n_events; e++) {
                const tb_event *ev = &l->events[e];
                const XEvent *xe = xl->events[e];
                CHECK_EQ_I(xe->metadata_id, ev->meta);
                CHECK_EQ_I(xe->data_case, TENSORFLOW__PROFILER__XEVENT__DATA_OFFSET_PS);
                CHECK_EQ_I(xe->offset_ps, (ev->start_ns - first) * 1000);
                CHECK_EQ_I(xe->duration_ps, ev->dur_ns * 1000);
                CHECK_EQ_I(xe->n_stats, ev->nstats);
                const tb_stat *ts = tb_event_stats(l, ev);
                for (size_t k = 0; k < ev->nstats && k < xe->n_stats; k++) {
                    const XStat *xs = xe->stats[k];
                    CHECK_EQ_I(xs->metadata_id, ts[k].meta);
                    switch (ts[k].type) {
                    case TB_STAT_INT64:
                        CHECK_EQ_I(xs->value_case, TENSORFLOW__PROFILER__XSTAT__VALUE_INT64_VALUE);
                        CHECK_EQ_I(xs->int64_value, ts[k].v.i);
                        break;
                    case TB_STAT_UINT64:
                        CHECK_EQ_I(xs->value_case, TENSORFLOW__PROFILER__XSTAT__VALUE_UINT64_VALUE);
                        CHECK(xs->uint64_value == ts[k].v.u);
                        break;
                    case TB_STAT_DOUBLE:
                        CHECK_EQ_I(xs->value_case, TENSORFLOW__PROFILER__XSTAT__VALUE_DOUBLE_VALUE);
                        CHECK(xs->double_value == ts[k].v.d);
                        break;
                    case TB_STAT_REF:
                        CHECK_EQ_I(xs->value_case, TENSORFLOW__PROFILER__XSTAT__VALUE_REF_VALUE);
                        CHECK_STR(xstat_meta_name(xp, (int64_t)xs->ref_value), tb_plane_stat_name(p, ts[k].v.ref));
                        break;
                    }
                }
            }
        }
    }
    /* spot checks written out by hand, independent of the loops above */
    const XPlane *h = x->planes[0];
    const XLine *main = h->lines[0];
    CHECK_EQ_I(main->timestamp_ns, T0 + 1000);
    CHECK_EQ_I(main->duration_ps, 10000 * 1000);
    CHECK_STR(xev_meta(h, main->events[0]->metadata_id)->name, "train");
    CHECK_EQ_I(main->events[1]->offset_ps, 1000 * 1000);
    CHECK_EQ_I(main->events[1]->duration_ps, 500 * 1000);
    CHECK_STR(xev_meta(h, main->events[1]->metadata_id)->display_name, "Launch");
    const XStat *neg = xstat_by_name(h, main->events[1]->stats, main->events[1]->n_stats, "neg");
    CHECK(neg && neg->int64_value == -5);
    const XStat *pid = xstat_by_name(h, h->stats, h->n_stats, "pid");
    CHECK(pid && pid->value_case == TENSORFLOW__PROFILER__XSTAT__VALUE_INT64_VALUE && pid->int64_value == 4242);
    const XStat *trig = xstat_by_name(h, h->stats, h->n_stats, "tbprof_trigger");
    CHECK(trig && trig->value_case == TENSORFLOW__PROFILER__XSTAT__VALUE_REF_VALUE &&
          !strcmp(xstat_meta_name(h, (int64_t)trig->ref_value), "steps 10-20"));
    CHECK_EQ_I(h->lines[2]->n_events, 0);
    tensorflow__profiler__xspace__free_unpacked(x, NULL);
}

static const char *stat_str(const tb_plane *p, const tb_stat *st, char *buf, size_t n)
{
    switch (st->type) {
    case TB_STAT_INT64: snprintf(buf, n, "i%lld", (long long)st->v.i); break;
    case TB_STAT_UINT64: snprintf(buf, n, "u%llu", (unsigned long long)st->v.u); break;
    case TB_STAT_DOUBLE: snprintf(buf, n, "d%.17g", st->v.d); break;
    case TB_STAT_REF: snprintf(buf, n, "s%s", tb_plane_stat_name(p, st->v.ref)); break;
    default: snprintf(buf, n, "?");
    }
    return buf;
}

/* Model equality by names and values (ids may differ after a reload). */
static void check_same_space(const tb_space *a, const tb_space *b)
{
    CHECK_EQ_I(b->nplanes, a->nplanes);
    CHECK_EQ_I(b->nhostnames, a->nhostnames);
    CHECK_EQ_I(b->nwarnings, a->nwarnings);
    CHECK_EQ_I(b->nerrors, a->nerrors);
    for (size_t i = 0; i < a->nwarnings && i < b->nwarnings; i++)
        CHECK_STR(b->warnings[i], a->warnings[i]);
    for (size_t i = 0; i < a->nplanes && i < b->nplanes; i++) {
        const tb_plane *p = a->planes[i], *q = b->planes[i];
        CHECK_STR(q->name, p->name);
        CHECK_EQ_I(q->id, p->id);
        CHECK_EQ_I(q->nlines, p->nlines);
        CHECK_EQ_I(q->nstats, p->nstats);
        char x[128], y[128];
        for (size_t k = 0; k < p->nstats && k < q->nstats; k++) {
            CHECK_STR(tb_plane_stat_name(q, q->stats[k].meta), tb_plane_stat_name(p, p->stats[k].meta));
            CHECK_STR(stat_str(q, &q->stats[k], y, sizeof(y)), stat_str(p, &p->stats[k], x, sizeof(x)));
        }
        for (size_t j = 0; j < p->nlines && j < q->nlines; j++) {
            const tb_line *l = p->lines[j], *r = q->lines[j];
            CHECK_EQ_I(r->id, l->id);
            CHECK_STR(r->name, l->name);
            CHECK_STR(r->display_name ? r->display_name : "", l->display_name ? l->display_name : "");
            CHECK_EQ_I(r->nevents, l->nevents);
            for (size_t e = 0; e < l->nevents && e < r->nevents; e++) {
                const tb_event *u = &l->events[e], *v = &r->events[e];
                CHECK_EQ_I(v->start_ns, u->start_ns);
                CHECK_EQ_I(v->dur_ns, u->dur_ns);
                CHECK_STR(tb_plane_event_name(q, v->meta), tb_plane_event_name(p, u->meta));
                const tb_meta *pm = &p->event_meta[u->meta], *qm = &q->event_meta[v->meta];
                CHECK_EQ_I(qm->category, pm->category);
                CHECK_STR(qm->display_name ? qm->display_name : "", pm->display_name ? pm->display_name : "");
                CHECK_EQ_I(v->nstats, u->nstats);
                for (uint32_t k = 0; k < u->nstats && k < v->nstats; k++) {
                    const tb_stat *su = tb_event_stats(l, u) + k, *sv = tb_event_stats(r, v) + k;
                    CHECK_STR(tb_plane_stat_name(q, sv->meta), tb_plane_stat_name(p, su->meta));
                    CHECK_STR(stat_str(q, sv, y, sizeof(y)), stat_str(p, su, x, sizeof(x)));
                }
            }
        }
    }
}

static void test_round_trip(void)
{
    tb_space *s = build();
    tb_buf b = {0};
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    CHECK(b.len > 0);
    check_against_protobuf_c(s, &b);

    tb_space *back = NULL;
    char err[256] = "";
    CHECK_EQ_I(tb_xspace_decode(b.data, b.len, &back, err, sizeof(err)), 0);
    CHECK(back != NULL);
    if (back) {
        check_same_space(s, back);
        /* a reloaded space encodes to the same bytes again */
        tb_buf b2 = {0};
        CHECK_EQ_I(tb_xspace_encode(back, &b2), 0);
        tb_space *again = NULL;
        CHECK_EQ_I(tb_xspace_decode(b2.data, b2.len, &again, err, sizeof(err)), 0);
        if (again)
            check_same_space(s, again);
        tb_space_free(again);
        tb_buf_free(&b2);
    }
    tb_space_free(back);

    /* every strict prefix is refused with a message, never a crash */
    int refused = 0;
    for (size_t cut = 0; cut < b.len; cut += (cut < 64 ? 1 : 97)) {
        tb_space *t = NULL;
        err[0] = '\0';
        int r = tb_xspace_decode(b.data, cut, &t, err, sizeof(err));
        if (r < 0 && err[0] && !t)
            refused++;
        else
            tap_failed(__FILE__, __LINE__, "prefix refused", "prefix %zu of %zu: r=%d err='%s'", cut, b.len, r, err);
        tb_space_free(t);
    }
    CHECK(refused > 64);
    tb_space *t = NULL;
    CHECK_EQ_I(tb_xspace_decode(b.data, 0, &t, err, sizeof(err)), -ENODATA);
    CHECK_STR(err, "empty file");
    CHECK(tb_xspace_decode(b.data, b.len - 1, &t, err, sizeof(err)) < 0);
    CHECK(strstr(err, "truncated") != NULL);
    const char *text = "hello, this is not a protobuf\n";
    CHECK(tb_xspace_decode((const uint8_t *)text, strlen(text), &t, err, sizeof(err)) < 0);
    CHECK(strstr(err, "not an XSpace") != NULL);
    CHECK(t == NULL);
    tb_buf_free(&b);
    tb_space_free(s);
}

/* One metadata per (name, category); the first keeps the name's index. */
static void test_meta_per_category(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    int64_t plain = tb_plane_event_meta(h, "forward");
    int64_t user = tb_plane_event_meta_cat_n(h, "forward", 7, TB_CAT_USER);
    CHECK_EQ_I(user, plain); /* no category yet: claimed */
    int64_t cpu = tb_plane_event_meta_cat_n(h, "forward", 7, TB_CAT_CPU_SAMPLE);
    int64_t api = tb_plane_event_meta_cat_n(h, "forwardXX", 7, TB_CAT_CUDA_RUNTIME); /* length counts */
    CHECK(cpu > 0 && cpu != user && api > 0 && api != user && api != cpu);
    CHECK_EQ_I(tb_plane_event_meta_cat_n(h, "forward", 7, TB_CAT_CPU_SAMPLE), cpu);
    CHECK_EQ_I(tb_plane_event_meta_cat_n(h, "forward", 7, TB_CAT_USER), user);
    CHECK_EQ_I(tb_plane_event_meta_cat_n(h, "forward", 7, TB_CAT_CUDA_RUNTIME), api);
    CHECK_EQ_I(tb_plane_event_meta(h, "forward"), user);
    CHECK_STR(tb_plane_event_name(h, cpu), "forward");
    CHECK_EQ_I(h->event_meta[cpu].category, TB_CAT_CPU_SAMPLE);
    CHECK_EQ_I(h->event_meta[api].category, TB_CAT_CUDA_RUNTIME);
    tb_space_free(s);
}

static void test_read_file_errors(void)
{
    tb_space *t = NULL;
    char err[256];
    CHECK_EQ_I(tb_xspace_read_file("/nonexistent/x.xplane.pb", &t, err, sizeof(err)), -ENOENT);
    CHECK(strstr(err, "No such file") != NULL);
    CHECK_EQ_I(tb_xspace_read_file("/", &t, err, sizeof(err)), -EISDIR);
    char path[] = "/tmp/tbprof_test_xspace_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_EQ_I(tb_xspace_read_file(path, &t, err, sizeof(err)), -ENODATA);
    /* a whole file written to disk reads back */
    tb_space *s = build();
    tb_buf b = {0};
    tb_xspace_encode(s, &b);
    CHECK_EQ_I(write(fd, b.data, b.len), (long long)b.len);
    close(fd);
    CHECK_EQ_I(tb_xspace_read_file(path, &t, err, sizeof(err)), 0);
    CHECK_EQ_I(tb_space_event_count(t), tb_space_event_count(s));
    tb_space_free(t);
    tb_space_free(s);
    tb_buf_free(&b);
    unlink(path);
}

/* Empty and degenerate spaces still encode to something a reader accepts
 * or clearly refuses. */
static void test_edges(void)
{
    tb_space *s = tb_space_new();
    tb_buf b = {0};
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    CHECK_EQ_I(b.len, 0);
    tb_space_add_warning(s, "nothing captured");
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    tb_space *t = NULL;
    char err[128];
    CHECK_EQ_I(tb_xspace_decode(b.data, b.len, &t, err, sizeof(err)), 0);
    CHECK(t && t->nwarnings == 1 && t->nplanes == 0);
    tb_space_free(t);
    tb_buf_free(&b);
    /* events at negative offsets to nothing, huge ids, max durations */
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(p, INT64_MAX, "big");
    int64_t m = tb_plane_event_meta(p, "e");
    tb_line_add(l, m, 1, INT64_MAX / 1000);
    tb_line_add(l, m, 0, 0);
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    CHECK_EQ_I(tb_xspace_decode(b.data, b.len, &t, err, sizeof(err)), 0);
    if (t) {
        CHECK_EQ_I(t->planes[0]->lines[0]->id, INT64_MAX);
        CHECK_EQ_I(t->planes[0]->lines[0]->events[0].start_ns, 0);
        CHECK_EQ_I(t->planes[0]->lines[0]->events[1].dur_ns, INT64_MAX / 1000);
    }
    tb_space_free(t);
    tb_buf_free(&b);
    tb_space_free(s);
}

struct collect {
    tb_buf b;
    size_t total;
    int begins, writes;
    int refuse;
};

static int col_begin(void *ctx, size_t total)
{
    struct collect *c = ctx;
    c->begins++;
    c->total = total;
    return c->refuse ? -EFBIG : 0;
}

static int col_write(void *ctx, const void *data, size_t len)
{
    struct collect *c = ctx;
    c->writes++;
    uint8_t *d = realloc(c->b.data, c->b.len + len);
    if (!d)
        return -ENOMEM;
    memcpy(d + c->b.len, data, len);
    c->b.data = d;
    c->b.len += len;
    return 0;
}

/* The streaming form writes exactly the buffered form's bytes, in pieces,
 * including pieces larger than its chunk. */
static void test_stream(void)
{
    tb_space *s = build();
    tb_plane *g = tb_space_find_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_find_line(g, 7);
    size_t big = 600 * 1024;
    char *name = malloc(big + 1);
    memset(name, 'n', big);
    name[big] = '\0';
    int64_t m = tb_plane_event_meta(g, name); /* a 600 KiB name: larger than the chunk */
    for (int i = 0; i < 40000; i++) {
        tb_line_add(l, m, T0 + 100000 + i * 10, 5);
        tb_line_stat_u64(l, tb_plane_stat_meta(g, "correlation_id"), (uint64_t)i);
    }
    tb_line_stat_str(l, tb_plane_stat_meta(g, "long_value"), name);
    free(name);
    tb_buf b = {0};
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    struct collect c = {0};
    tb_xspace_sink sink = {col_begin, col_write, &c};
    CHECK_EQ_I(tb_xspace_encode_stream(s, &sink), 0);
    CHECK_EQ_I(c.begins, 1);
    CHECK_EQ_I(c.total, b.len);
    CHECK(c.writes > 3);
    CHECK_EQ_I(c.b.len, b.len);
    CHECK(c.b.len == b.len && memcmp(c.b.data, b.data, b.len) == 0);
    tb_buf_free(&c.b);
    /* begin() refusing: nothing written, its error returned */
    struct collect r = {.refuse = 1};
    tb_xspace_sink rs = {col_begin, col_write, &r};
    CHECK_EQ_I(tb_xspace_encode_stream(s, &rs), -EFBIG);
    CHECK_EQ_I(r.writes, 0);
    tb_buf_free(&b);
    tb_space_free(s);
}

/* A foreign file with absurd times (packed by protobuf-c, not by us): the
 * model keeps start + dur representable, and every user of it runs without
 * overflow (UBSan builds trap on signed overflow). */
static void test_absurd_times(void)
{
    Tensorflow__Profiler__XStatMetadata sm = TENSORFLOW__PROFILER__XSTAT_METADATA__INIT;
    sm.id = 5;
    sm.name = "s";
    Tensorflow__Profiler__XPlane__StatMetadataEntry sme = TENSORFLOW__PROFILER__XPLANE__STAT_METADATA_ENTRY__INIT;
    sme.key = 5;
    sme.value = &sm;
    Tensorflow__Profiler__XPlane__StatMetadataEntry *smes[] = {&sme};
    XStat st = TENSORFLOW__PROFILER__XSTAT__INIT;
    st.metadata_id = 99; /* unknown: becomes "#99" */
    st.value_case = TENSORFLOW__PROFILER__XSTAT__VALUE_REF_VALUE;
    st.ref_value = 12345; /* unknown ref */
    XStat *sts[] = {&st};
    XEvent e1 = TENSORFLOW__PROFILER__XEVENT__INIT, e2 = TENSORFLOW__PROFILER__XEVENT__INIT;
    e1.metadata_id = 7; /* no metadata at all */
    e1.data_case = TENSORFLOW__PROFILER__XEVENT__DATA_OFFSET_PS;
    e1.offset_ps = INT64_MAX;
    e1.duration_ps = INT64_MAX;
    e1.n_stats = 1;
    e1.stats = sts;
    e2.metadata_id = 7;
    e2.data_case = TENSORFLOW__PROFILER__XEVENT__DATA_OFFSET_PS;
    e2.offset_ps = INT64_MIN;
    e2.duration_ps = -5;
    XEvent *evs[] = {&e1, &e2};
    XLine line = TENSORFLOW__PROFILER__XLINE__INIT;
    line.id = -1;
    line.timestamp_ns = INT64_MAX - 10;
    line.n_events = 2;
    line.events = evs;
    XLine line2 = line;
    line2.timestamp_ns = INT64_MIN;
    XLine *lines[] = {&line, &line2};
    XPlane plane = TENSORFLOW__PROFILER__XPLANE__INIT;
    plane.id = 12;
    plane.name = "/device:GPU:3";
    plane.n_lines = 2;
    plane.lines = lines;
    plane.n_stat_metadata = 1;
    plane.stat_metadata = smes;
    XPlane *planes[] = {&plane};
    XSpace x = TENSORFLOW__PROFILER__XSPACE__INIT;
    x.n_planes = 1;
    x.planes = planes;
    size_t len = tensorflow__profiler__xspace__get_packed_size(&x);
    uint8_t *buf = malloc(len);
    tensorflow__profiler__xspace__pack(&x, buf);
    tb_space *s = NULL;
    char err[128];
    CHECK_EQ_I(tb_xspace_decode(buf, len, &s, err, sizeof(err)), 0);
    free(buf);
    if (!s)
        return;
    CHECK_EQ_I(s->planes[0]->id, 12);
    CHECK_EQ_I(tb_space_event_count(s), 4);
    CHECK_STR(tb_plane_event_name(s->planes[0], s->planes[0]->lines[0]->events[0].meta), "#7");
    int64_t b, e;
    tb_space_span(s, &b, &e);
    CHECK(b <= e);
    tb_buf pb = {0}, js = {0};
    CHECK_EQ_I(tb_xspace_encode(s, &pb), 0);
    CHECK_EQ_I(tb_chrome_encode(s, &js), 0);
    tb_space *t = NULL;
    CHECK_EQ_I(tb_xspace_decode(pb.data, pb.len, &t, err, sizeof(err)), 0);
    CHECK_EQ_I(t ? tb_space_event_count(t) : 0, 4);
    tb_space_free(t);
    tb_buf_free(&pb);
    tb_buf_free(&js);
    tb_space_free(s);
}

/* Strings in an XSpace are proto3 `string` fields: C++ protobuf (xprof,
 * TensorBoard, jax's ProfileData) refuses the WHOLE file when one of them
 * is not valid UTF-8. A thread name the kernel cut at 15 bytes in the
 * middle of a character, or an NVTX name of raw bytes, must not do that:
 * each byte that starts no valid sequence is written as U+FFFD. */
static int valid_utf8(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    while (*u) {
        size_t n = *u < 0x80 ? 1 : (*u & 0xE0) == 0xC0 ? 2 : (*u & 0xF0) == 0xE0 ? 3 : (*u & 0xF8) == 0xF0 ? 4 : 0;
        if (!n || (n == 2 && *u < 0xC2) || (n == 4 && *u > 0xF4))
            return 0;
        for (size_t i = 1; i < n; i++)
            if ((u[i] & 0xC0) != 0x80)
                return 0;
        if ((n == 3 && *u == 0xE0 && u[1] < 0xA0) || (n == 3 && *u == 0xED && u[1] > 0x9F) ||
            (n == 4 && *u == 0xF0 && u[1] < 0x90) || (n == 4 && *u == 0xF4 && u[1] > 0x8F))
            return 0;
        u += n;
    }
    return 1;
}

static void test_invalid_utf8(void)
{
    tb_space *s = tb_space_new();
    tb_space_add_hostname(s, "node\x80");
    tb_space_add_warning(s, "warn \xff");
    tb_space_add_error(s, "ok é");
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_str(h, "tbprof_trigger", "cut \xe3\x83");
    /* "データ" cut by the kernel's 15-byte comm limit: 5 whole characters and a lead byte... */
    tb_line *l = tb_plane_line(h, 42, "\xe3\x83\x87\xe3\x83\xbc\xe3\x82\xbf\xe3\x83\xad\xe3\x83\xbc\xe3\x83");
    tb_line_set_display_name(l, "thr \xc0\xaf (42)");
    int64_t m = tb_plane_event_meta(h, "nvtx \xed\xa0\x80 range \xf5");
    tb_plane_set_event_display_name(h, m, "disp \xfe");
    tb_plane_set_event_category(h, m, TB_CAT_USER);
    tb_line_add(l, m, T0, 1000);
    tb_line_stat_str(l, tb_plane_stat_meta(h, "name \x81"), "value \xc3");
    tb_buf b = {0};
    CHECK_EQ_I(tb_xspace_encode(s, &b), 0);
    /* the streaming form sizes the replaced strings alike */
    struct collect c = {0};
    tb_xspace_sink sink = {col_begin, col_write, &c};
    CHECK_EQ_I(tb_xspace_encode_stream(s, &sink), 0);
    CHECK(c.b.len == b.len && memcmp(c.b.data, b.data, b.len) == 0);
    tb_buf_free(&c.b);
    XSpace *x = tensorflow__profiler__xspace__unpack(NULL, b.len, b.data);
    CHECK(x != NULL);
    if (x) {
        int bad = 0;
        for (size_t i = 0; i < x->n_hostnames; i++)
            bad += !valid_utf8(x->hostnames[i]);
        for (size_t i = 0; i < x->n_warnings; i++)
            bad += !valid_utf8(x->warnings[i]);
        for (size_t i = 0; i < x->n_errors; i++)
            bad += !valid_utf8(x->errors[i]);
        for (size_t i = 0; i < x->n_planes; i++) {
            XPlane *p = x->planes[i];
            bad += !valid_utf8(p->name);
            for (size_t j = 0; j < p->n_lines; j++)
                bad += !valid_utf8(p->lines[j]->name) + !valid_utf8(p->lines[j]->display_name);
            for (size_t j = 0; j < p->n_event_metadata; j++)
                bad += !valid_utf8(p->event_metadata[j]->value->name) +
                       !valid_utf8(p->event_metadata[j]->value->display_name);
            for (size_t j = 0; j < p->n_stat_metadata; j++)
                bad += !valid_utf8(p->stat_metadata[j]->value->name);
        }
        CHECK_EQ_I(bad, 0);
        CHECK_STR(x->hostnames[0], "node\xef\xbf\xbd");
        CHECK_STR(x->errors[0], "ok é");
        CHECK_STR(x->planes[0]->lines[0]->name,
                  "\xe3\x83\x87\xe3\x83\xbc\xe3\x82\xbf\xe3\x83\xad\xe3\x83\xbc\xef\xbf\xbd\xef\xbf\xbd");
        tensorflow__profiler__xspace__free_unpacked(x, NULL);
    }
    tb_buf_free(&b);
    tb_space_free(s);
}

/* C++ protobuf (xprof, TensorBoard) and python's parse no message of 2 GiB
 * or more: such an XSpace is refused before a byte is written (the agent
 * allows TBPROF_MAX_MB up to 64 GiB, and 0 for no cap). Eight hostnames
 * that are one 256 MiB string make 2 GiB + 40 bytes. */
static int big_begin(void *ctx, size_t total)
{
    struct collect *c = ctx;
    c->begins++;
    c->total = total;
    return -ECANCELED; /* never write 2 GiB here */
}

static int count_write(void *ctx, const void *data, size_t len)
{
    (void)data;
    *(size_t *)ctx += len;
    return 0;
}

/* A line that cannot be sorted (no memory for the merge) is not written:
 * its offsets from an unsorted first event would be negative, which the
 * file holds as huge unsigned picoseconds (it was written all the same). */
static void test_unsortable_not_written(void)
{
    if (TAP_SANITIZED) {
        printf("# skip unsortable: a sanitizer's address space is not what RLIMIT_AS can bound\n");
        return;
    }
    enum { N = 1000000 };
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(h, 1, "main");
    int64_t m = tb_plane_event_meta(h, "e");
    for (int64_t i = 0; i < N; i++)
        tb_line_add(l, m, T0 + (N - i) * 100, 10); /* newest first */
    /* the events are there; their sort's buffer (N events) is not to be had */
    struct rlimit was;
    int lim = tap_limit_memory(4096, &was);
    if (lim == -1) {
        printf("# skip unsortable: no VmSize or RLIMIT_AS\n");
        tb_space_free(s);
        return;
    }
    size_t bytes = 0;
    tb_xspace_sink sink = {NULL, count_write, &bytes};
    int r = lim == 0 ? tb_xspace_encode_stream(s, &sink) : 1;
    setrlimit(RLIMIT_AS, &was);
    CHECK_EQ_I(r, -ENOMEM);
    CHECK_EQ_I(bytes, 0);
    tb_space_free(s);
}

static void test_over_2gib_refused(void)
{
    size_t n = 256u << 20;
    char *str = malloc(n + 1);
    CHECK(str != NULL);
    if (!str)
        return;
    memset(str, 'h', n);
    str[n] = '\0';
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line_add(tb_plane_line(h, 1, "main"), tb_plane_event_meta(h, "e"), T0, 10);
    char *v[8];
    for (int i = 0; i < 8; i++)
        v[i] = str;
    s->hostnames = v;
    s->nhostnames = 8;
    struct collect c = {0};
    tb_xspace_sink sink = {big_begin, col_write, &c};
    int r = tb_xspace_encode_stream(s, &sink);
    CHECK_EQ_I(r, -EFBIG);
    CHECK_EQ_I(c.begins, 0);
    CHECK_EQ_I(c.writes, 0);
    if (r == -EFBIG) { /* (else the buffered form would allocate 2 GiB) */
        tb_buf b = {0};
        CHECK_EQ_I(tb_xspace_encode(s, &b), -EFBIG);
        CHECK_EQ_I(b.len, 0);
        tb_buf_free(&b);
    }
    /* just under: 7 of them go to begin() */
    s->nhostnames = 7;
    CHECK_EQ_I(tb_xspace_encode_stream(s, &sink), -ECANCELED);
    CHECK(c.total > (size_t)7 * n && c.total < (size_t)INT32_MAX);
    s->hostnames = NULL;
    s->nhostnames = 0;
    tb_space_free(s);
    free(str);
}

int main(void)
{
    test_over_2gib_refused();
    test_unsortable_not_written();
    test_invalid_utf8();
    test_absurd_times();
    test_stream();
    test_round_trip();
    test_meta_per_category();
    test_read_file_errors();
    test_edges();
    return tap_done();
}
