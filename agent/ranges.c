/* ranges.c - user-annotation ranges around CUDA calls (see ranges.h). */
#include "ranges.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "folded.h"
#include "stats.h"
#include "util.h"

/* Whether e is of the enclosing kind: its category; CPU sample spans are
 * also known by their sample counts (profiles of other writers). */
static int is_kind(const tb_plane *p, const tb_line *l, const tb_event *e, tb_category cat)
{
    if (cat == TB_CAT_CPU_SAMPLE)
        return tb_cpu_span_samples(p, l, e) > 0;
    return e->meta < p->nevent_meta && p->event_meta[e->meta].category == (uint32_t)cat;
}

/* The value of stat `id` on e as a correlation id; 0 when absent. */
static uint64_t corr_of(const tb_line *l, const tb_event *e, uint32_t id)
{
    const tb_stat *st = tb_event_stat(l, e, id);
    return st && (st->type == TB_STAT_UINT64 || st->type == TB_STAT_INT64) ? st->v.u : 0;
}

int tb_ranges_walk(const tb_space *s, tb_category cat, int flags, tb_ranges_fn fn, void *ctx)
{
    int all = flags & TB_RANGES_ALL_CALLS;
    const tb_event **stack = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t i = 0; i < s->nplanes && !rc; i++) {
        const tb_plane *p = s->planes[i];
        uint32_t cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        /* a plane without such events has no call to report (sample spans
         * are also known by counts: not ruled out by their category) */
        if (strncmp(p->name, "/host:", 6) != 0 || !cid ||
            (!all && cat != TB_CAT_CPU_SAMPLE && !tb_plane_has_category(p, cat)))
            continue;
        for (size_t j = 0; j < p->nlines && !rc; j++) {
            const tb_line *l = p->lines[j];
            size_t depth = 0;
            for (size_t k = 0; k < l->nevents && !rc; k++) {
                const tb_event *e = &l->events[k];
                if (!k || e->start_ns != l->events[k - 1].start_ns) {
                    size_t keep = 0; /* the ranges still open at e's start */
                    for (size_t x = 0; x < depth; x++)
                        if (stack[x]->start_ns + stack[x]->dur_ns > e->start_ns)
                            stack[keep++] = stack[x];
                    depth = keep;
                    /* then every range starting then: one shorter than a call
                     * of the same start is sorted after it, and encloses it */
                    for (size_t q = k; q < l->nevents && l->events[q].start_ns == e->start_ns; q++) {
                        const tb_event *r = &l->events[q];
                        if (r->dur_ns <= 0 || !is_kind(p, l, r, cat))
                            continue;
                        if (TB_GROW(stack, cap, depth + 1) < 0) {
                            rc = -ENOMEM;
                            break;
                        }
                        stack[depth++] = r;
                    }
                    if (rc)
                        break;
                }
                if (is_kind(p, l, e, cat))
                    continue;
                uint64_t corr = depth || all ? corr_of(l, e, cid) : 0;
                if (corr)
                    rc = fn(ctx, p, l, e, corr, stack, depth);
            }
        }
    }
    free(stack);
    return rc;
}

/* ---- nvtx_range on GPU events --------------------------------------------------- */

typedef struct corr_name {
    uint64_t corr;
    const char *name; /* the innermost range's name (host plane memory) */
    const char *op;   /* the name of the innermost range that is not a step range; NULL: none */
} corr_name;

typedef struct link_acc {
    corr_name *v;
    size_t n, cap;
    uint64_t lo, hi; /* the least and greatest correlation id in v */
    uint32_t *slot;  /* dense ids: slot[corr - lo] = index in v + 1; else v sorted */
    const tb_plane *host;
    uint32_t step_id; /* host's TB_ST_STEP_RANGE stat id; 0: no step ranges */
} link_acc;

static int collect_innermost(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call,
                             uint64_t corr, const tb_event *const *stack, size_t depth)
{
    (void)call;
    link_acc *a = ctx;
    if (TB_GROW(a->v, a->cap, a->n + 1) < 0)
        return -ENOMEM;
    if (host != a->host) {
        a->host = host;
        a->step_id = tb_plane_find_stat_meta(host, TB_ST_STEP_RANGE);
    }
    size_t op = depth; /* ranges are few deep: look past the step ranges from the inside */
    while (op > 0 && a->step_id && tb_event_stat(line, stack[op - 1], a->step_id))
        op--;
    a->v[a->n++] = (corr_name){corr, tb_plane_event_name(host, stack[depth - 1]->meta),
                               op ? tb_plane_event_name(host, stack[op - 1]->meta) : NULL};
    if (a->n == 1 || corr < a->lo)
        a->lo = corr;
    if (corr > a->hi)
        a->hi = corr;
    return 0;
}

static int corr_cmp(const void *x, const void *y)
{
    uint64_t a = ((const corr_name *)x)->corr, b = ((const corr_name *)y)->corr;
    return (a > b) - (a < b);
}

/* Make the ids searchable. CUPTI numbers calls from one counter, so the
 * ids of calls inside ranges are usually dense: a table indexed by id
 * (at most 4 slots of 4 bytes per call) answers in one read; sparse ids
 * are sorted and searched instead. */
static void index_corrs(link_acc *a)
{
    uint64_t span = a->hi - a->lo + 1;
    if (span <= 4 * (uint64_t)a->n + 4096 && (a->slot = calloc(span, sizeof(*a->slot))) != NULL) {
        for (size_t i = 0; i < a->n; i++)
            if (!a->slot[a->v[i].corr - a->lo])
                a->slot[a->v[i].corr - a->lo] = (uint32_t)i + 1;
        return;
    }
    qsort(a->v, a->n, sizeof(*a->v), corr_cmp);
}

static const corr_name *name_of_corr(const link_acc *a, uint64_t corr)
{
    if (corr < a->lo || corr > a->hi)
        return NULL;
    if (a->slot) {
        uint32_t i = a->slot[corr - a->lo];
        return i ? &a->v[i - 1] : NULL;
    }
    corr_name key = {corr, NULL, NULL};
    return bsearch(&key, a->v, a->n, sizeof(*a->v), corr_cmp);
}

/* Whether e is GPU work xprof counts as an op's: a kernel, copy or memset
 * (not the sync, memory and overhead lines' events). */
static int is_op_work(const tb_plane *p, const tb_event *e)
{
    uint32_t c = e->meta < p->nevent_meta ? p->event_meta[e->meta].category : TB_CAT_NONE;
    return c == TB_CAT_KERNEL || c == TB_CAT_MEMCPY || c == TB_CAT_MEMSET;
}

/* A string stat's value id in p, interned once per run of one name. */
typedef struct ref_cache {
    const char *name;
    int64_t ref;
} ref_cache;

static int64_t ref_of(tb_plane *p, ref_cache *c, const char *name)
{
    if (name != c->name) { /* runs of work from one range: intern its name once per run */
        c->ref = tb_plane_stat_meta(p, name);
        c->name = c->ref < 0 ? NULL : name;
    }
    return c->ref;
}

/* The stats to add to one line (tb_line_add_stats' arrays), reused line by line. */
typedef struct link_buf {
    uint32_t *ev;
    tb_stat *add;
    size_t cap_ev, cap_add;
} link_buf;

/* One device line: the stats to add (nvtx_range; tf_op too on op work
 * with an op range), then one tb_line_add_stats. `had`: the plane had
 * nvtx_range before, so events may carry it already (and their tf_op). */
static int64_t link_line(tb_line *l, uint32_t cid, uint32_t rid, uint32_t oid, int had, const link_acc *a,
                         link_buf *b)
{
    tb_plane *p = l->plane;
    size_t n = 0, named = 0;
    ref_cache rc_name = {0}, rc_op = {0};
    for (size_t k = 0; k < l->nevents; k++) {
        const tb_event *e = &l->events[k];
        uint64_t corr = corr_of(l, e, cid);
        const corr_name *cn = corr ? name_of_corr(a, corr) : NULL;
        if (!cn || (had && tb_event_find_stat(p, l, e, TB_ST_NVTX_RANGE)))
            continue;
        const char *op = cn->op && is_op_work(p, e) ? cn->op : NULL;
        int64_t ref = ref_of(p, &rc_name, cn->name);
        int64_t oref = !op ? 0 : op == cn->name ? ref : ref_of(p, &rc_op, op); /* mostly one range */
        if (ref < 0 || oref < 0)
            return ref < 0 ? ref : oref;
        if (TB_GROW(b->ev, b->cap_ev, n + 2) < 0 || TB_GROW(b->add, b->cap_add, n + 2) < 0)
            return -ENOMEM;
        b->ev[n] = (uint32_t)k;
        b->add[n++] = (tb_stat){.meta = rid, .type = TB_STAT_REF, .v.ref = (uint32_t)ref};
        if (op) {
            b->ev[n] = (uint32_t)k;
            b->add[n++] = (tb_stat){.meta = oid, .type = TB_STAT_REF, .v.ref = (uint32_t)oref};
        }
        named++;
    }
    int rc = tb_line_add_stats(l, b->ev, b->add, n);
    return rc < 0 ? rc : (int64_t)named;
}

int64_t tb_space_link_ranges(tb_space *s)
{
    tb_space_sort(s);
    link_acc a = {0};
    int rc = tb_ranges_walk(s, TB_CAT_USER, 0, collect_innermost, &a);
    if (rc || !a.n) {
        free(a.v);
        return rc;
    }
    index_corrs(&a);
    int64_t named = 0;
    link_buf b = {0};
    for (size_t i = 0; i < s->nplanes && named >= 0; i++) {
        tb_plane *p = s->planes[i];
        uint32_t cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        if (strncmp(p->name, "/device:", 8) != 0 || !cid)
            continue;
        uint32_t had = tb_plane_find_stat_meta(p, TB_ST_NVTX_RANGE);
        int64_t rid = had ? had : tb_plane_stat_meta(p, TB_ST_NVTX_RANGE);
        int64_t oid = rid < 0 ? rid : tb_plane_stat_meta(p, TB_ST_TF_OP);
        if (oid < 0) {
            named = oid;
            break;
        }
        for (size_t j = 0; j < p->nlines; j++) {
            int64_t n = link_line(p->lines[j], cid, (uint32_t)rid, (uint32_t)oid, had != 0, &a, &b);
            if (n < 0) {
                named = n;
                break;
            }
            named += n;
        }
    }
    free(b.ev);
    free(b.add);
    free(a.slot);
    free(a.v);
    return named;
}

/* ---- step contexts across threads ------------------------------------------------ */

typedef struct step_span {
    int64_t start, end;
    uint32_t ev;   /* the root's index on the step line */
    uint32_t used; /* a call on another line is in it */
} step_span;

/* The step whose span holds t (spans sorted, not overlapping); -1: none. */
static ssize_t step_at(const step_span *v, size_t n, int64_t t)
{
    size_t lo = 0, hi = n;
    while (lo < hi) { /* the first span starting after t */
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid].start <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && t < v[lo - 1].end ? (ssize_t)lo - 1 : -1;
}

static void i64_stat(tb_stat *st, int64_t meta, int64_t v)
{
    *st = (tb_stat){.meta = (uint32_t)meta, .type = TB_STAT_INT64, .v.i = v};
}

/* Link one host plane's calls to its steps. */
static int64_t link_steps_plane(tb_plane *p)
{
    uint32_t rid = tb_plane_find_stat_meta(p, TB_ST_IS_ROOT), cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
    if (!rid || !cid || p->nlines < 2)
        return 0;
    tb_line *sl = NULL; /* the step line: the most roots */
    size_t most = 0;
    for (size_t j = 0; j < p->nlines; j++) {
        size_t n = 0;
        for (size_t k = 0; k < p->lines[j]->nevents; k++)
            n += tb_event_stat(p->lines[j], &p->lines[j]->events[k], rid) != NULL;
        if (n > most)
            most = n, sl = p->lines[j];
    }
    if (!sl)
        return 0;
    step_span *v = calloc(most, sizeof(*v));
    link_buf b = {0};
    if (!v)
        return -ENOMEM;
    size_t n = 0;
    for (size_t k = 0; k < sl->nevents; k++) {
        const tb_event *e = &sl->events[k];
        if (!tb_event_stat(sl, e, rid))
            continue;
        if (n && e->start_ns < v[n - 1].end) /* overlapping roots (two sources): the earlier one */
            continue;
        v[n++] = (step_span){e->start_ns, e->start_ns + e->dur_ns, (uint32_t)k, 0};
    }
    int64_t ct = 0, ci = 0, linked = 0; /* the consumer stats' ids, interned at the first consumer */
    for (size_t j = 0; j < p->nlines && linked >= 0; j++) {
        tb_line *l = p->lines[j];
        if (l == sl)
            continue;
        size_t m = 0;
        for (size_t k = 0; k < l->nevents; k++) {
            const tb_event *e = &l->events[k];
            ssize_t at = tb_event_stat(l, e, cid) ? step_at(v, n, e->start_ns) : -1;
            if (at < 0)
                continue;
            if (!ct && ((ct = tb_plane_stat_meta(p, TB_ST_CONSUMER_TYPE)) < 0 ||
                        (ci = tb_plane_stat_meta(p, TB_ST_CONSUMER_ID)) < 0)) {
                linked = -ENOMEM;
                break;
            }
            if (TB_GROW(b.ev, b.cap_ev, m + 2) < 0 || TB_GROW(b.add, b.cap_add, m + 2) < 0) {
                linked = -ENOMEM;
                break;
            }
            v[at].used = 1;
            b.ev[m] = b.ev[m + 1] = (uint32_t)k;
            i64_stat(&b.add[m++], ct, TB_CONTEXT_GENERIC);
            i64_stat(&b.add[m++], ci, at + 1);
        }
        int rc = linked < 0 ? 0 : tb_line_add_stats(l, b.ev, b.add, m);
        if (rc < 0)
            linked = rc;
        else if (linked >= 0)
            linked += (int64_t)m / 2;
    }
    if (linked > 0) { /* the producers: the steps someone called in */
        int64_t pt = tb_plane_stat_meta(p, TB_ST_PRODUCER_TYPE), pi = tb_plane_stat_meta(p, TB_ST_PRODUCER_ID);
        size_t m = 0;
        if (pt < 0 || pi < 0 || TB_GROW(b.ev, b.cap_ev, 2 * n) < 0 || TB_GROW(b.add, b.cap_add, 2 * n) < 0) {
            linked = -ENOMEM;
        } else {
            for (size_t i = 0; i < n; i++) {
                if (!v[i].used)
                    continue;
                b.ev[m] = b.ev[m + 1] = v[i].ev;
                i64_stat(&b.add[m++], pt, TB_CONTEXT_GENERIC);
                i64_stat(&b.add[m++], pi, (int64_t)i + 1);
            }
            int rc = tb_line_add_stats(sl, b.ev, b.add, m);
            if (rc < 0)
                linked = rc;
        }
    }
    free(v);
    free(b.ev);
    free(b.add);
    return linked;
}

int64_t tb_space_link_steps(tb_space *s)
{
    tb_space_sort(s);
    int64_t total = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        if (strncmp(s->planes[i]->name, "/host:", 6) != 0)
            continue;
        int64_t n = link_steps_plane(s->planes[i]);
        if (n < 0)
            return n;
        total += n;
    }
    return total;
}
