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

/* The ranges open on one line as the walk goes: v[base, top), in line
 * order (outermost first). A range leaves when the walk reaches its end;
 * a min-heap by end finds those, so entering and leaving cost O(log n)
 * each instead of a scan of every open range at every new start (many
 * async ranges open at once made that quadratic). Ended ranges stay in v
 * (at most `ndead`, all within v[lo, hi]) until a call needs the stack:
 * then those at either end are dropped in O(1) each and the rest by
 * moving the shorter side past them. */
typedef struct open_ent {
    int64_t end;
    const tb_event *r;
} open_ent;

typedef struct open_set {
    const tb_event **v;
    size_t cap, base, top;
    open_ent *h; /* the ranges in v not yet found ended, a min-heap by end */
    size_t hn, hcap;
    size_t ndead, lo, hi;
} open_set;

/* A range's end; one past the int64 range counts as never ending. */
static int64_t end_of(const tb_event *r)
{
    int64_t e;
    return __builtin_add_overflow(r->start_ns, r->dur_ns, &e) ? INT64_MAX : e;
}

/* The ranges ended by t: found in the heap, counted, left in v for now. */
static void open_expire(open_set *o, int64_t t)
{
    while (o->hn && o->h[0].end <= t) {
        const tb_event *r = o->h[0].r;
        open_ent last = o->h[--o->hn];
        size_t i = 0; /* sift the last entry down from the root */
        for (;;) {
            size_t c = 2 * i + 1;
            if (c >= o->hn)
                break;
            if (c + 1 < o->hn && o->h[c + 1].end < o->h[c].end)
                c++;
            if (o->h[c].end >= last.end)
                break;
            o->h[i] = o->h[c];
            i = c;
        }
        if (o->hn)
            o->h[i] = last;
        /* its place: v holds the line's events in their order, so by address */
        size_t a = o->base, b = o->top;
        while (a < b) {
            size_t m = a + (b - a) / 2;
            if (o->v[m] < r)
                a = m + 1;
            else
                b = m;
        }
        if (!o->ndead || a < o->lo)
            o->lo = a;
        if (!o->ndead || a > o->hi)
            o->hi = a;
        o->ndead++;
    }
}

/* Drop the ended ranges at either end of v (O(1) each). */
static void open_trim(open_set *o, int64_t t)
{
    while (o->ndead && o->top > o->base && end_of(o->v[o->top - 1]) <= t)
        o->top--, o->ndead--;
    while (o->ndead && o->top > o->base && end_of(o->v[o->base]) <= t)
        o->base++, o->ndead--;
    if (o->ndead) {
        if (o->lo < o->base)
            o->lo = o->base;
        if (o->hi >= o->top)
            o->hi = o->top - 1;
    }
}

/* Drop every ended range, keeping the order. */
static void open_compact(open_set *o, int64_t t)
{
    open_trim(o, t);
    if (!o->ndead)
        return;
    if (o->hi + 1 - o->base < o->top - o->lo) { /* move the outer side up */
        size_t w = o->hi + 1;
        for (size_t x = o->hi + 1; x-- > o->base;)
            if (end_of(o->v[x]) > t)
                o->v[--w] = o->v[x];
        o->base = w;
    } else { /* the inner side down */
        size_t w = o->lo;
        for (size_t x = o->lo; x < o->top; x++)
            if (end_of(o->v[x]) > t)
                o->v[w++] = o->v[x];
        o->top = w;
    }
    o->ndead = 0;
}

/* Add range r (starting at the walk's time, after every range in v). */
static int open_push(open_set *o, const tb_event *r)
{
    if (o->top == o->cap) { /* room: drop the ended, move to the front, else grow */
        open_compact(o, r->start_ns);
        if (o->base) {
            memmove(o->v, o->v + o->base, (o->top - o->base) * sizeof(*o->v));
            o->top -= o->base;
            o->base = 0;
        }
        if (o->top * 2 > o->cap || o->top == o->cap)
            if (TB_GROW(o->v, o->cap, o->cap + 1) < 0)
                return -ENOMEM;
    }
    if (TB_GROW(o->h, o->hcap, o->hn + 1) < 0)
        return -ENOMEM;
    o->v[o->top++] = r;
    open_ent add = {end_of(r), r};
    size_t i = o->hn++;
    while (i && o->h[(i - 1) / 2].end > add.end) {
        o->h[i] = o->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    o->h[i] = add;
    return 0;
}

/* tb_ranges_walk; with RANGES_WITH_ENDED, fn's stack may also hold ranges
 * that ended by the call's start (never the innermost or the outermost):
 * for callers that look at the innermost few, which skip those, so that
 * a call costs no pass over a deep stack. */
#define RANGES_WITH_ENDED 0x100

static int walk(const tb_space *s, tb_category cat, int flags, tb_ranges_fn fn, void *ctx)
{
    int all = flags & TB_RANGES_ALL_CALLS;
    open_set o = {0};
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
            o.base = o.top = o.hn = o.ndead = 0;
            for (size_t k = 0; k < l->nevents && !rc; k++) {
                const tb_event *e = &l->events[k];
                if (!k || e->start_ns != l->events[k - 1].start_ns) {
                    open_expire(&o, e->start_ns); /* the ranges still open at e's start */
                    /* then every range starting then: one shorter than a call
                     * of the same start is sorted after it, and encloses it */
                    for (size_t q = k; q < l->nevents && l->events[q].start_ns == e->start_ns && !rc; q++) {
                        const tb_event *r = &l->events[q];
                        if (r->dur_ns > 0 && is_kind(p, l, r, cat))
                            rc = open_push(&o, r);
                    }
                    if (rc)
                        break;
                }
                if (is_kind(p, l, e, cat))
                    continue;
                uint64_t corr = o.top - o.base > o.ndead || all ? corr_of(l, e, cid) : 0;
                if (!corr)
                    continue;
                if (!(flags & RANGES_WITH_ENDED) || o.ndead * 2 > o.top - o.base)
                    open_compact(&o, e->start_ns);
                else
                    open_trim(&o, e->start_ns);
                rc = fn(ctx, p, l, e, corr, o.v ? o.v + o.base : NULL, o.top - o.base); /* (NULL + 0: UB) */
            }
        }
    }
    free(o.v);
    free(o.h);
    return rc;
}

int tb_ranges_walk(const tb_space *s, tb_category cat, int flags, tb_ranges_fn fn, void *ctx)
{
    return walk(s, cat, flags & TB_RANGES_ALL_CALLS, fn, ctx);
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
    link_acc *a = ctx;
    if (TB_GROW(a->v, a->cap, a->n + 1) < 0)
        return -ENOMEM;
    if (host != a->host) {
        a->host = host;
        a->step_id = tb_plane_find_stat_meta(host, TB_ST_STEP_RANGE);
    }
    /* stack[depth - 1] is open (RANGES_WITH_ENDED); look past the step
     * ranges, and the ended ranges among them, from the inside */
    size_t op = depth;
    while (op > 0 && a->step_id &&
           (tb_event_stat(line, stack[op - 1], a->step_id) || end_of(stack[op - 1]) <= call->start_ns))
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
    /* the walk needs every line in time order: on an unsorted one it
     * would name work by whatever range it had open */
    int rc = tb_space_sort(s);
    if (rc < 0)
        return rc;
    link_acc a = {0};
    rc = walk(s, TB_CAT_USER, RANGES_WITH_ENDED, collect_innermost, &a);
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
    int rc = tb_space_sort(s); /* steps are found by time: unsorted, the wrong ones */
    if (rc < 0)
        return rc;
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
