/* test_trace.c - the in-memory model: interning, lines, stats, limits, sort. */
#include <errno.h>
#include <stdio.h>
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

/* The stat values of event i, as "name=value,..." (u64 and refs). */
static const char *stats_of(const tb_plane *p, const tb_line *l, size_t i)
{
    static char buf[256];
    size_t n = 0;
    buf[0] = 0;
    const tb_event *e = &l->events[i];
    const tb_stat *st = tb_event_stats(l, e);
    for (uint32_t k = 0; k < e->nstats && n < sizeof buf; k++) {
        const char *name = tb_plane_stat_name(p, st[k].meta);
        if (st[k].type == TB_STAT_REF)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s=%s", k ? "," : "", name,
                                  tb_plane_stat_name(p, st[k].v.ref));
        else
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s=%llu", k ? "," : "", name,
                                  (unsigned long long)st[k].v.u);
    }
    return buf;
}

/* Stats added to events already in a line (after a sort, in any order). */
static void stats_added_later(void)
{
    tb_space *s = tb_space_new();
    tb_plane *p = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(p, 7, "Stream #7");
    int64_t k = tb_plane_event_meta(p, "k"), a = tb_plane_stat_meta(p, "a"), b = tb_plane_stat_meta(p, "b"),
            r = tb_plane_stat_meta(p, "nvtx_range"), fwd = tb_plane_stat_meta(p, "forward");
    CHECK_EQ_I(tb_plane_find_stat_meta(p, "b"), b);
    CHECK_EQ_I(tb_plane_find_stat_meta(p, "absent"), 0);
    CHECK_EQ_I(tb_plane_find_stat_meta(p, "absent"), 0); /* looking did not add it */
    tb_line_add(l, k, 300, 1);
    tb_line_stat_u64(l, a, 3);
    tb_line_add(l, k, 100, 1); /* no stats */
    tb_line_add(l, k, 200, 1);
    tb_line_stat_u64(l, a, 2);
    tb_line_stat_u64(l, b, 22);
    tb_space_sort(s); /* events 100, 200, 300; their stats stay where they were */
    uint32_t ev[] = {0, 2};
    tb_stat add[] = {{.meta = (uint32_t)b, .type = TB_STAT_UINT64, .v.u = 11},
                     {.meta = (uint32_t)r, .type = TB_STAT_REF, .v.ref = (uint32_t)fwd}};
    CHECK_EQ_I(tb_line_add_stats(l, ev, add, 2), 0);
    CHECK_STR(stats_of(p, l, 0), "b=11");
    CHECK_STR(stats_of(p, l, 1), "a=2,b=22");
    CHECK_STR(stats_of(p, l, 2), "a=3,nvtx_range=forward");
    CHECK_EQ_I(l->nstats, 5);
    /* the line's last event still takes stats, and keeps them together */
    CHECK_EQ_I(tb_line_stat_u64(l, b, 33), 0);
    CHECK_STR(stats_of(p, l, 2), "a=3,nvtx_range=forward,b=33");
    CHECK_STR(stats_of(p, l, 1), "a=2,b=22");
    /* an index out of range or out of order: nothing added */
    uint32_t bad[] = {1, 9};
    CHECK_EQ_I(tb_line_add_stats(l, bad, add, 2), -EINVAL);
    bad[0] = 2, bad[1] = 1;
    CHECK_EQ_I(tb_line_add_stats(l, bad, add, 2), -EINVAL);
    CHECK_STR(stats_of(p, l, 1), "a=2,b=22");
    CHECK_EQ_I(tb_line_add_stats(l, bad, add, 0), 0);
    /* an index repeated: that event gets each stat, in order (the pool is
     * out of event order here, so it is rebuilt) */
    uint32_t twice[] = {1, 1};
    CHECK_EQ_I(tb_line_add_stats(l, twice, add, 2), 0);
    CHECK_STR(stats_of(p, l, 1), "a=2,b=22,b=11,nvtx_range=forward");
    CHECK_STR(stats_of(p, l, 0), "b=11");
    CHECK_STR(stats_of(p, l, 2), "a=3,nvtx_range=forward,b=33");
    /* the space's byte limit */
    tb_space_set_limit(s, s->used_bytes + sizeof(tb_stat));
    CHECK_EQ_I(tb_line_add_stats(l, ev, add, 2), -ENOSPC);
    CHECK_STR(stats_of(p, l, 0), "b=11");
    CHECK_EQ_I(tb_line_add_stats(l, ev + 1, add + 1, 1), 0);
    CHECK_STR(stats_of(p, l, 2), "a=3,nvtx_range=forward,b=33,nvtx_range=forward");
    tb_space_free(s);

    /* events appended in time order (the stats lie in event order): the
     * stats move up in place; first, middle (without stats) and last events */
    s = tb_space_new();
    p = tb_space_plane(s, "/device:GPU:0");
    l = tb_plane_line(p, 7, "Stream #7");
    a = tb_plane_stat_meta(p, "a"), b = tb_plane_stat_meta(p, "b");
    for (int i = 0; i < 5; i++) {
        tb_line_add(l, k, 100 * i, 1);
        for (int j = 0; j < i % 3; j++)
            tb_line_stat_u64(l, j ? b : a, (uint64_t)(10 * i + j));
    }
    CHECK_STR(stats_of(p, l, 2), "a=20,b=21"); /* events 0 and 3 have none */
    /* events 0 and 3 get two stats each (a repeated index), 4 one */
    uint32_t ev2[] = {0, 0, 3, 3, 4};
    tb_stat add2[] = {{.meta = (uint32_t)b, .type = TB_STAT_UINT64, .v.u = 1},
                      {.meta = (uint32_t)a, .type = TB_STAT_UINT64, .v.u = 2},
                      {.meta = (uint32_t)b, .type = TB_STAT_UINT64, .v.u = 31},
                      {.meta = (uint32_t)a, .type = TB_STAT_UINT64, .v.u = 32},
                      {.meta = (uint32_t)b, .type = TB_STAT_UINT64, .v.u = 42}};
    CHECK_EQ_I(tb_line_add_stats(l, ev2, add2, 5), 0);
    CHECK_STR(stats_of(p, l, 0), "b=1,a=2");
    CHECK_STR(stats_of(p, l, 1), "a=10");
    CHECK_STR(stats_of(p, l, 2), "a=20,b=21");
    CHECK_STR(stats_of(p, l, 3), "b=31,a=32");
    CHECK_STR(stats_of(p, l, 4), "a=40,b=42");
    CHECK_EQ_I(l->nstats, 9);
    CHECK_EQ_I(tb_line_stat_u64(l, a, 43), 0);
    CHECK_STR(stats_of(p, l, 4), "a=40,b=42,a=43");
    CHECK_STR(stats_of(p, l, 3), "b=31,a=32");
    tb_space_free(s);
}

int main(void)
{
    interning();
    events_and_stats();
    limit_and_sort();
    stats_added_later();
    return tap_done();
}
