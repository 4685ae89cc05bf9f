/* test_trace.c - the in-memory model: interning, lines, stats, limits, sort. */
#include <string.h>

#include "tap.h"
#include "trace.h"

static void interning(void)
{
    tb_space *s = tb_space_new();
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    CHECK(p && p->id == 1);
    CHECK(tb_space_plane(s, "/host:CPU") == p);
    CHECK(tb_space_plane(s, "/device:GPU:0")->id == 2);
    int64_t a = tb_plane_event_meta(p, "kernel_a");
    int64_t b = tb_plane_event_meta(p, "kernel_b");
    CHECK(a >= 1 && b >= 1 && a != b);
    CHECK_EQ_I(tb_plane_event_meta(p, "kernel_a"), a);
    CHECK_EQ_I(tb_plane_event_meta_n(p, "kernel_abc", 8), a);
    CHECK_STR(tb_plane_event_name(p, b), "kernel_b");
    CHECK_STR(tb_plane_event_name(p, 9999), "");
    /* many names: rehashing keeps every id stable */
    char buf[32];
    int64_t ids[5000];
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof buf, "name%d", i);
        ids[i] = tb_plane_stat_meta(p, buf);
    }
    int ok = 1;
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof buf, "name%d", i);
        ok &= tb_plane_stat_meta(p, buf) == ids[i];
        ok &= strcmp(tb_plane_stat_name(p, ids[i]), buf) == 0;
    }
    CHECK(ok);
    tb_space_free(s);
}

static void events_and_stats(void)
{
    tb_space *s = tb_space_new();
    tb_plane *p = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(p, 7, "Stream #7");
    CHECK(tb_plane_line(p, 7, "ignored") == l);
    int64_t k = tb_plane_event_meta(p, "gemm");
    int64_t corr = tb_plane_stat_meta(p, "correlation_id");
    int64_t det = tb_plane_stat_meta(p, "kernel_details");
    CHECK_EQ_I(tb_line_add(l, k, 2000, 10), 0);
    CHECK_EQ_I(tb_line_stat_u64(l, corr, 42), 0);
    CHECK_EQ_I(tb_line_stat_str(l, det, "grid:1,1,1"), 0);
    CHECK_EQ_I(tb_line_add(l, k, 1000, 5), 1);
    CHECK_EQ_I(tb_line_stat_u64(l, corr, 41), 0);
    const tb_event *e0 = &l->events[0];
    CHECK_EQ_I(e0->nstats, 2);
    const tb_stat *st = tb_event_find_stat(p, l, e0, "kernel_details");
    CHECK(st && st->type == TB_STAT_REF);
    CHECK_STR(tb_plane_stat_name(p, st->v.ref), "grid:1,1,1");
    tb_space_sort(s);
    CHECK_EQ_I(l->events[0].start_ns, 1000);
    st = tb_event_find_stat(p, l, &l->events[0], "correlation_id");
    CHECK(st && st->v.u == 41);
    int64_t b, e;
    tb_space_span(s, &b, &e);
    CHECK_EQ_I(b, 1000);
    CHECK_EQ_I(e, 2010);
    CHECK_EQ_I(tb_space_event_count(s), 2);
    CHECK_EQ_I(tb_plane_stat_str(p, "device_vendor", "NVIDIA"), 0);
    CHECK_EQ_I(tb_plane_stat_i64(p, "core_count", 132), 0);
    CHECK_EQ_I(tb_plane_stat_i64(p, "core_count", 114), 0);
    CHECK_EQ_I(p->nstats, 2);
    tb_space_free(s);
}

static void limit_and_sort(void)
{
    tb_space *s = tb_space_new();
    tb_space_set_limit(s, 100 * sizeof(tb_event));
    tb_plane *p = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(p, 1, "main");
    int64_t m = tb_plane_event_meta(p, "x");
    int refused = 0;
    for (int i = 0; i < 150; i++)
        if (tb_line_add(l, m, 1000 - i, 1) < 0)
            refused++;
    CHECK_EQ_I(l->nevents, 100);
    CHECK_EQ_I(refused, 50);
    CHECK_EQ_I(tb_space_dropped(s), 50);
    tb_space_sort(s);
    int sorted = 1;
    for (size_t i = 1; i < l->nevents; i++)
        sorted &= l->events[i - 1].start_ns <= l->events[i].start_ns;
    CHECK(sorted);
    tb_space_free(s);
    /* parents before children at equal start */
    s = tb_space_new();
    p = tb_space_plane(s, "/host:CPU");
    l = tb_plane_line(p, 1, "main");
    tb_line_add(l, tb_plane_event_meta(p, "child"), 100, 5);
    tb_line_add(l, tb_plane_event_meta(p, "parent"), 100, 50);
    tb_space_sort(s);
    CHECK_STR(tb_plane_event_name(p, l->events[0].meta), "parent");
    tb_space_free(s);
}

int main(void)
{
    interning();
    events_and_stats();
    limit_and_sort();
    return tap_done();
}
