/* folded.c - CPU sample stacks, folded/speedscope writers, call tree (see
 * folded.h). The flame graph SVG is in flame.c. */
#include "folded.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ranges.h"
#include "sampler.h"
#include "stats.h"
#include "strmap.h"
#include "util.h"

/* ---- how the sampler encodes counts --------------------------------------- */

/* The sampler's span stats (sampler.h: TB_ST_CPU_SPAN_SAMPLES,
 * TB_ST_CPU_SPAN_SELF): "samples" is the span's inclusive count,
 * "self_samples" (absent when 0) its exclusive one. */
#define SPAN_SAMPLES "samples"
#define SPAN_SELF "self_samples"

#define COUNT_UNKNOWN UINT64_MAX

static uint64_t stat_u(const tb_stat *st)
{
    switch (st->type) {
    case TB_STAT_INT64: return st->v.i > 0 ? (uint64_t)st->v.i : 0;
    case TB_STAT_UINT64: return st->v.u;
    case TB_STAT_DOUBLE: return st->v.d > 0 ? (uint64_t)(st->v.d + 0.5) : 0;
    default: return 0;
    }
}

typedef struct span_ids {
    uint32_t samples, self, root; /* stat ids in the plane; 0: absent */
} span_ids;

static span_ids plane_span_ids(const tb_plane *p)
{
    return (span_ids){tb_plane_find_stat_meta(p, SPAN_SAMPLES), tb_plane_find_stat_meta(p, SPAN_SELF),
                      tb_plane_find_stat_meta(p, TB_ST_IS_ROOT)};
}

/* Total samples of a span: COUNT_UNKNOWN for a CPU sample span without a
 * count (the caller counts such a leaf as one sample), 0 for other events.
 * *self: the explicit self count, or COUNT_UNKNOWN (derive it). */
static uint64_t span_count2(const tb_plane *p, const span_ids *ids, const tb_line *l,
                            const tb_event *e, uint64_t *self)
{
    const tb_stat *st = tb_event_stats(l, e);
    uint64_t total = COUNT_UNKNOWN;
    int has_total = 0, has_self = 0;
    *self = COUNT_UNKNOWN;
    for (uint32_t i = 0; i < e->nstats; i++) {
        uint32_t m = st[i].meta;
        if (!m)
            continue;
        if (m == ids->root)
            return 0; /* a step root whose name a sampled function shares */
        if (m == ids->samples) {
            total = stat_u(&st[i]);
            has_total = 1;
        } else if (m == ids->self) {
            *self = stat_u(&st[i]);
            has_self = 1;
        }
    }
    if (has_total) {
        if (!has_self)
            *self = COUNT_UNKNOWN; /* the sampler leaves self_samples out when 0 */
        return total;
    }
    if (has_self)
        return *self ? *self : COUNT_UNKNOWN;
    if (e->meta < p->nevent_meta && p->event_meta[e->meta].category == TB_CAT_CPU_SAMPLE)
        return COUNT_UNKNOWN;
    return 0;
}

static uint64_t span_count(const tb_plane *p, const tb_line *l, const tb_event *e)
{
    uint64_t self;
    span_ids ids = plane_span_ids(p);
    return span_count2(p, &ids, l, e, &self);
}

uint64_t tb_cpu_span_samples(const tb_plane *p, const tb_line *l, const tb_event *e)
{
    uint64_t c = span_count(p, l, e);
    return c == COUNT_UNKNOWN ? 1 : c;
}

/* ---- one nesting walk over a line's sample spans --------------------------- */

/* A walk's user: `open` when a span opens at `depth` (its parent, if any,
 * is the one open at depth - 1), `close` when the span open at `depth`
 * closes (innermost first), with its end. Each keeps its own stack by
 * depth. */
typedef struct span_walk {
    int (*open)(void *ctx, size_t depth, const tb_event *e, uint64_t count, uint64_t self);
    int (*close)(void *ctx, size_t depth, int64_t end);
    void *ctx;
    uint64_t overlaps; /* spans skipped: they outlast their would-be parent */
} span_walk;

/* Walk l's sample spans (the line sorted by start) as the sampler nests
 * them: a span starting before the innermost open one ends is its child; a
 * span ending after that parent is not a nesting and is skipped (counted in
 * w->overlaps). Other events (span_count2 0) are passed over. */
static int walk_spans(const tb_plane *p, const tb_line *l, span_walk *w)
{
    int64_t *ends = NULL;
    size_t depth = 0, cap = 0;
    int rc = 0;
    span_ids ids = plane_span_ids(p);
    for (size_t i = 0; i < l->nevents && !rc; i++) {
        const tb_event *e = &l->events[i];
        uint64_t self, c = span_count2(p, &ids, l, e, &self);
        if (!c)
            continue;
        for (; depth && e->start_ns >= ends[depth - 1] && !rc; depth--)
            rc = w->close(w->ctx, depth - 1, ends[depth - 1]);
        int64_t end = e->start_ns + e->dur_ns;
        if (rc)
            break;
        if (depth && end > ends[depth - 1]) {
            w->overlaps++;
            continue;
        }
        if (TB_GROW(ends, cap, depth + 1) < 0) {
            rc = -ENOMEM;
            break;
        }
        rc = w->open(w->ctx, depth, e, c, self);
        ends[depth++] = end;
    }
    for (; depth && !rc; depth--)
        rc = w->close(w->ctx, depth - 1, ends[depth - 1]);
    free(ends);
    return rc;
}

static const char *event_name(const tb_plane *p, const tb_event *e)
{
    const tb_meta *m = &p->event_meta[e->meta < p->nevent_meta ? e->meta : 0];
    return m->display_name && *m->display_name ? m->display_name : m->name ? m->name : "";
}

static const char *line_name(const tb_line *l)
{
    if (l->display_name && *l->display_name)
        return l->display_name;
    return l->name;
}

/* ---- spans -> stacks ------------------------------------------------------ */

typedef struct open_span {
    const char *name;
    uint64_t total; /* COUNT_UNKNOWN or the span's own count */
    uint64_t self;  /* COUNT_UNKNOWN (derive: total - kids) or explicit */
    uint64_t kids;  /* sum of children's totals */
} open_span;

/* A new thread (folded stacks' line) named `name`: its index in *idx. */
static int add_thread(tb_folded *f, const char *name, uint32_t *idx)
{
    if (TB_GROW(f->threads, f->cap_threads, f->nthreads + 1) < 0)
        return -ENOMEM;
    *idx = (uint32_t)f->nthreads;
    f->threads[f->nthreads++] = name;
    return 0;
}

/* Append a stack of n frames with `count`; returns where its n frame names
 * go, NULL when out of memory (nothing appended). */
static const char **add_stack(tb_folded *f, size_t n, uint32_t thread, uint64_t count)
{
    if (TB_GROW(f->stacks, f->cap_stacks, f->nstacks + 1) < 0 ||
        TB_GROW(f->frames, f->cap_frames, f->nframes + n) < 0)
        return NULL;
    f->stacks[f->nstacks++] = (tb_folded_stack){(uint32_t)f->nframes, (uint32_t)n, thread, count};
    const char **fr = f->frames + f->nframes;
    f->nframes += n;
    f->total += count;
    return fr;
}

typedef struct stack_walk {
    tb_folded *f;
    const tb_plane *p;
    const tb_line *l;
    uint32_t thread; /* added with the line's first span */
    open_span *stk;
    size_t cap;
} stack_walk;

static int stack_open(void *ctx, size_t depth, const tb_event *e, uint64_t count, uint64_t self)
{
    stack_walk *w = ctx;
    if (w->thread == UINT32_MAX && add_thread(w->f, line_name(w->l), &w->thread) < 0)
        return -ENOMEM;
    if (TB_GROW(w->stk, w->cap, depth + 1) < 0)
        return -ENOMEM;
    w->stk[depth] = (open_span){.name = event_name(w->p, e), .total = count, .self = self};
    return 0;
}

/* A span closes: emit its self samples, give its total to its parent. */
static int stack_close(void *ctx, size_t depth, int64_t end)
{
    (void)end;
    stack_walk *w = ctx;
    open_span *o = &w->stk[depth];
    uint64_t total;
    if (o->total == COUNT_UNKNOWN)
        total = o->kids ? o->kids : 1;
    else
        total = o->total > o->kids ? o->total : o->kids;
    uint64_t self = o->self != COUNT_UNKNOWN ? o->self : total - o->kids;
    if (self) {
        const char **fr = add_stack(w->f, depth + 1, w->thread, self);
        if (!fr)
            return -ENOMEM;
        for (size_t i = 0; i <= depth; i++)
            fr[i] = w->stk[i].name;
    }
    if (depth)
        w->stk[depth - 1].kids += total;
    return 0;
}

static int add_line(tb_folded *f, const tb_plane *p, const tb_line *l)
{
    stack_walk sw = {.f = f, .p = p, .l = l, .thread = UINT32_MAX};
    span_walk w = {stack_open, stack_close, &sw, 0};
    int rc = walk_spans(p, l, &w);
    f->bad_spans += w.overlaps;
    free(sw.stk);
    return rc;
}

int tb_folded_add_space(tb_folded *f, tb_space *s)
{
    int rc = tb_space_sort(s); /* nesting is read from the order: unsorted, the wrong stacks */
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (strncmp(p->name, "/host:", 6) != 0)
            continue;
        for (size_t j = 0; j < p->nlines; j++) {
            rc = add_line(f, p, p->lines[j]);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* ---- on-CPU time by function -------------------------------------------- */

static int seg_push(tb_cpu_segs *o, size_t *cap, int64_t a, int64_t b, const char *who)
{
    if (b <= a)
        return 0;
    if (o->n && o->v[o->n - 1].end == a && o->v[o->n - 1].who == who) {
        o->v[o->n - 1].end = b;
        return 0;
    }
    if (TB_GROW(o->v, *cap, o->n + 1) < 0)
        return -ENOMEM;
    o->v[o->n++] = (tb_cpu_seg){a, b, who};
    return 0;
}

typedef struct seg_open {
    const char *py;  /* deepest py:: frame open here, or NULL */
    const char *who; /* what this span's own time goes to */
} seg_open;

typedef struct seg_walk {
    const tb_plane *p;
    tb_cpu_segs *out;
    size_t cap_v;
    int64_t t; /* time up to which pieces are out */
    seg_open *stk;
    size_t cap;
} seg_walk;

/* A span opens: the time since t was its parent's own. */
static int seg_open_span(void *ctx, size_t depth, const tb_event *e, uint64_t count, uint64_t self)
{
    (void)count, (void)self;
    seg_walk *w = ctx;
    int64_t at = e->start_ns;
    if (depth && at > w->t && seg_push(w->out, &w->cap_v, w->t, at, w->stk[depth - 1].who) < 0)
        return -ENOMEM;
    if (at > w->t)
        w->t = at;
    if (TB_GROW(w->stk, w->cap, depth + 1) < 0)
        return -ENOMEM;
    const char *name = event_name(w->p, e);
    const char *py = strncmp(name, "py::", 4) == 0 ? name : depth ? w->stk[depth - 1].py : NULL;
    /* time in the kernel goes to the function that entered it */
    const char *who = py ? py : depth && !strcmp(name, TB_CPU_KERNEL_FRAME) ? w->stk[depth - 1].who : name;
    w->stk[depth] = (seg_open){py, who};
    return 0;
}

/* A span closes: the time since t was its own. */
static int seg_close_span(void *ctx, size_t depth, int64_t end)
{
    seg_walk *w = ctx;
    if (end <= w->t)
        return 0;
    int rc = seg_push(w->out, &w->cap_v, w->t, end, w->stk[depth].who);
    w->t = end;
    return rc;
}

int tb_cpu_segments(const tb_plane *p, const tb_line *l, tb_cpu_segs *out)
{
    memset(out, 0, sizeof(*out));
    seg_walk sw = {.p = p, .out = out, .t = INT64_MIN};
    span_walk w = {seg_open_span, seg_close_span, &sw, 0};
    int rc = walk_spans(p, l, &w);
    free(sw.stk);
    if (rc) {
        free(out->v);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

int64_t tb_cpu_segments_in(const tb_cpu_segs *s, int64_t lo, int64_t hi,
                           int (*each)(void *ctx, const char *who, int64_t ns), void *ctx)
{
    /* the first segment ending after lo */
    size_t a = 0, b = s->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (s->v[m].end <= lo)
            a = m + 1;
        else
            b = m;
    }
    int64_t on = 0;
    for (size_t i = a; i < s->n && s->v[i].start < hi; i++) {
        int64_t x = s->v[i].start > lo ? s->v[i].start : lo, y = s->v[i].end < hi ? s->v[i].end : hi;
        if (y <= x)
            continue;
        on += y - x;
        if (each && each(ctx, s->v[i].who, y - x) < 0)
            return -ENOMEM;
    }
    return on;
}

/* ---- GPU work by launching stack ------------------------------------------ */

typedef struct gpu_work {
    uint64_t corr;
    const char *name;
    const char *range; /* "nvtx::<its nvtx_range>" (f->gpu_ranges), else NULL */
    uint64_t ns;
    int seen; /* its call was found */
} gpu_work;

typedef struct gpu_fold {
    tb_folded *f;
    gpu_work *w;
    size_t n;
    const tb_plane *host; /* the plane `period` is of */
    int64_t period;       /* ns between its CPU samples */
    const tb_line *line;
    uint32_t thread; /* f->threads index of `line` */
    const char **fr; /* scratch frames */
    size_t cap_fr;
} gpu_fold;

static int work_cmp(const void *a, const void *b)
{
    uint64_t x = ((const gpu_work *)a)->corr, y = ((const gpu_work *)b)->corr;
    return (x > y) - (x < y);
}

/* Append one stack of frames fr[0..n) with `count`. */
static int emit_names(tb_folded *f, const char *const *fr, size_t n, uint32_t thread, uint64_t count)
{
    const char **to = add_stack(f, n, thread, count);
    if (!to)
        return -ENOMEM;
    memcpy(to, fr, n * sizeof(*fr));
    return 0;
}

int64_t tb_cpu_period_ns(const tb_plane *p)
{
    const tb_stat *st = tb_plane_find_stat(p, TB_ST_CPU_HZ);
    uint64_t hz = st ? stat_u(st) : 0;
    return hz ? (int64_t)(1000000000ull / hz) : 0;
}

static int fold_call(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call, uint64_t corr,
                     const tb_event *const *stack, size_t depth)
{
    gpu_fold *g = ctx;
    if (host != g->host) {
        g->host = host;
        g->period = tb_cpu_period_ns(host);
    }
    gpu_work key = {.corr = corr};
    gpu_work *w = bsearch(&key, g->w, g->n, sizeof(*g->w), work_cmp);
    if (!w)
        return 0;
    while (w > g->w && w[-1].corr == corr)
        w--;
    if (line != g->line) {
        if (add_thread(g->f, line_name(line), &g->thread) < 0)
            return -ENOMEM;
        g->line = line;
    }
    /* frames that began a sampling period before the call: spans nest, so
     * those are a prefix of the stack */
    size_t keep = 0;
    while (keep < depth && stack[keep]->start_ns < call->start_ns - g->period)
        keep++;
    if (TB_GROW(g->fr, g->cap_fr, keep + 3) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < keep; i++)
        g->fr[i] = event_name(host, stack[i]);
    if (!keep)
        g->fr[keep++] = TB_FOLDED_UNSAMPLED;
    for (; w < g->w + g->n && w->corr == corr; w++) {
        w->seen = 1;
        size_t n = keep;
        if (w->range)
            g->fr[n++] = w->range;
        g->fr[n++] = w->name;
        if (w->ns && emit_names(g->f, g->fr, n, g->thread, w->ns) < 0)
            return -ENOMEM;
    }
    return 0;
}

/* "nvtx::<the range stat rid of e>" kept in plane p (as a string it holds,
 * so it lives as long as the space); NULL when e has none or out of memory. */
static const char *range_frame(tb_plane *p, const tb_line *l, const tb_event *e, uint32_t rid)
{
    const tb_stat *st = rid ? tb_event_stat(l, e, rid) : NULL;
    if (!st || st->type != TB_STAT_REF || !st->v.ref || st->v.ref >= p->nstat_meta)
        return NULL;
    char buf[512];
    snprintf(buf, sizeof(buf), TB_FOLDED_RANGE_PREFIX "%s", tb_plane_stat_name(p, st->v.ref));
    int64_t id = tb_plane_stat_meta(p, buf);
    return id > 0 ? tb_plane_stat_name(p, id) : NULL;
}

/* The device lines tb_folded_add_gpu and _add_syncs fold: GPU work on
 * "Stream #" lines, or the host's waits on the "CUDA sync" line (where a
 * stream waiting for an event is left out: it does not block the host). */
static int folds_line(const tb_line *l, int syncs)
{
    const char *ln = l->name ? l->name : "";
    return syncs ? strcmp(ln, TB_FOLDED_SYNC_LINE) == 0 : strncmp(ln, "Stream #", 8) == 0;
}

static int add_device(tb_folded *f, tb_space *s, int syncs)
{
    int rc = tb_space_sort(s); /* calls' stacks are found by time */
    if (rc < 0)
        return rc;
    f->ns = 1;
    gpu_fold g = {.f = f};
    size_t cap = 0;
    for (size_t i = 0; i < s->nplanes && !rc; i++) {
        tb_plane *p = s->planes[i];
        uint32_t cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        /* tf_op: the innermost range, step ranges aside (ranges.h); in
         * profiles from before tbprof wrote it, nvtx_range */
        uint32_t rid = f->gpu_ranges ? tb_plane_find_stat_meta(p, TB_ST_TF_OP) : 0;
        if (f->gpu_ranges && !rid)
            rid = tb_plane_find_stat_meta(p, TB_ST_NVTX_RANGE);
        if (strncmp(p->name, "/device:GPU:", 12) != 0 || !cid)
            continue;
        for (size_t j = 0; j < p->nlines && !rc; j++) {
            const tb_line *l = p->lines[j];
            if (!folds_line(l, syncs))
                continue;
            for (size_t k = 0; k < l->nevents; k++) {
                const tb_event *e = &l->events[k];
                if (syncs && strcmp(event_name(p, e), "Stream Wait Event") == 0)
                    continue;
                const tb_stat *st = tb_event_stat(l, e, cid);
                uint64_t corr = st ? stat_u(st) : 0;
                if (!corr)
                    continue;
                if (TB_GROW(g.w, cap, g.n + 1) < 0) {
                    rc = -ENOMEM;
                    break;
                }
                g.w[g.n++] = (gpu_work){corr, event_name(p, e), range_frame(p, l, e, rid),
                                        e->dur_ns > 0 ? (uint64_t)e->dur_ns : 0, 0};
            }
        }
    }
    if (!rc && g.n) {
        qsort(g.w, g.n, sizeof(*g.w), work_cmp);
        rc = tb_ranges_walk(s, TB_CAT_CPU_SAMPLE, TB_RANGES_ALL_CALLS, fold_call, &g);
        uint32_t orphans = UINT32_MAX;
        for (size_t i = 0; i < g.n && !rc; i++) {
            if (g.w[i].seen || !g.w[i].ns)
                continue;
            if (orphans == UINT32_MAX && add_thread(f, TB_FOLDED_NO_CALL, &orphans) < 0) {
                rc = -ENOMEM;
                break;
            }
            const char *fr[2] = {g.w[i].range, g.w[i].name};
            size_t skip = !g.w[i].range;
            rc = emit_names(f, fr + skip, 2 - skip, orphans, g.w[i].ns);
        }
    }
    free(g.w);
    free(g.fr);
    return rc;
}

int tb_folded_add_gpu(tb_folded *f, tb_space *s)
{
    return add_device(f, s, 0);
}

int tb_folded_add_syncs(tb_folded *f, tb_space *s)
{
    return add_device(f, s, 1);
}

void tb_folded_free(tb_folded *f)
{
    free(f->stacks);
    free(f->frames);
    free(f->threads);
    memset(f, 0, sizeof(*f));
}

/* ---- functions ------------------------------------------------------------ */

static int func_cmp(const void *a, const void *b)
{
    const tb_func_stat *x = a, *y = b;
    if (x->self != y->self)
        return x->self < y->self ? 1 : -1;
    if (x->total != y->total)
        return x->total < y->total ? 1 : -1;
    return strcmp(x->name, y->name);
}

int tb_folded_functions(const tb_folded *f, tb_func_stat **out, size_t *n)
{
    tb_strmap map = {0};
    tb_func_stat *fs = NULL;
    size_t nfs = 0, cap = 0, cap_seen = 0;
    size_t *seen = NULL; /* last stack index (+1) that counted each function */
    int rc = 0;
    for (size_t i = 0; i < f->nstacks && !rc; i++) {
        const tb_folded_stack *s = &f->stacks[i];
        for (uint32_t d = 0; d < s->depth; d++) {
            const char *name = f->frames[s->at + d];
            int64_t k = tb_strmap_get(&map, name);
            if (k < 0) {
                if (TB_GROW(fs, cap, nfs + 1) < 0 || TB_GROW(seen, cap_seen, nfs + 1) < 0 ||
                    tb_strmap_put(&map, name, (uint32_t)nfs) < 0) {
                    rc = -ENOMEM;
                    break;
                }
                k = (int64_t)nfs++;
                fs[k] = (tb_func_stat){.name = name};
                seen[k] = 0;
            }
            if (seen[k] != i + 1) {
                seen[k] = i + 1;
                fs[k].total += s->count;
            }
            if (d + 1 == s->depth)
                fs[k].self += s->count;
        }
    }
    tb_strmap_free(&map);
    free(seen);
    if (rc) {
        free(fs);
        return rc;
    }
    if (nfs)
        qsort(fs, nfs, sizeof(*fs), func_cmp);
    *out = fs;
    *n = nfs;
    return 0;
}

/* ---- call tree ------------------------------------------------------------ */

static tb_flame_node *node_new(const char *name)
{
    tb_flame_node *n = calloc(1, sizeof(*n));
    if (n)
        n->name = name;
    return n;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Index n's kids by name (open addressing, slots hold kid index + 1) in a
 * table of `cap` slots (a power of two). 0 or -ENOMEM. */
static int index_kids(tb_flame_node *n, size_t cap)
{
    uint32_t *ix = calloc(cap, sizeof(*ix));
    if (!ix)
        return -ENOMEM;
    for (size_t i = 0; i < n->nkids; i++) {
        size_t j = (size_t)name_hash(n->kids[i]->name) & (cap - 1);
        while (ix[j])
            j = (j + 1) & (cap - 1);
        ix[j] = (uint32_t)i + 1;
    }
    free(n->index);
    n->index = ix;
    n->index_cap = cap;
    return 0;
}

#define INDEX_FROM 8 /* kids searched linearly below this */

/* Child named `name`. Few kids: a linear search from the newest
 * (consecutive stacks tend to share a prefix); more (GPU work by launching
 * stack: thousands of kernel names under one frame): a hash of the kids,
 * so building the tree stays linear in the stacks. */
static tb_flame_node *child(tb_flame_node *n, const char *name)
{
    size_t slot = 0;
    if (n->index) {
        slot = (size_t)name_hash(name) & (n->index_cap - 1);
        for (; n->index[slot]; slot = (slot + 1) & (n->index_cap - 1))
            if (strcmp(n->kids[n->index[slot] - 1]->name, name) == 0)
                return n->kids[n->index[slot] - 1];
    } else {
        for (size_t i = n->nkids; i-- > 0;)
            if (strcmp(n->kids[i]->name, name) == 0)
                return n->kids[i];
    }
    if (n->nkids >= UINT32_MAX - 1 || TB_GROW(n->kids, n->cap_kids, n->nkids + 1) < 0)
        return NULL;
    tb_flame_node *c = node_new(name);
    if (!c)
        return NULL;
    n->kids[n->nkids++] = c;
    if (n->index && n->nkids * 2 <= n->index_cap) {
        n->index[slot] = (uint32_t)n->nkids; /* the free slot the search ended on */
    } else if (n->nkids >= INDEX_FROM) {
        size_t cap = n->index_cap ? n->index_cap : 16;
        while (cap < n->nkids * 4)
            cap *= 2;
        if (index_kids(n, cap) < 0)
            return NULL; /* c is n's: freed with the tree */
    }
    return c;
}

static int kid_cmp(const void *a, const void *b)
{
    return strcmp((*(tb_flame_node *const *)a)->name, (*(tb_flame_node *const *)b)->name);
}

/* Sorted kids, and the index (built for the lookups) let go. */
static void sort_tree(tb_flame_node *n)
{
    free(n->index);
    n->index = NULL;
    n->index_cap = 0;
    if (n->nkids > 1)
        qsort(n->kids, n->nkids, sizeof(n->kids[0]), kid_cmp);
    for (size_t i = 0; i < n->nkids; i++)
        sort_tree(n->kids[i]);
}

tb_flame_node *tb_flame_tree(const tb_folded *f, int with_threads)
{
    tb_flame_node *root = node_new("all");
    if (!root)
        return NULL;
    for (size_t i = 0; i < f->nstacks; i++) {
        const tb_folded_stack *s = &f->stacks[i];
        tb_flame_node *n = root;
        n->total += s->count;
        if (with_threads) {
            if (!(n = child(n, f->threads[s->thread])))
                goto oom;
            n->total += s->count;
        }
        for (uint32_t d = 0; d < s->depth; d++) {
            if (!(n = child(n, f->frames[s->at + d])))
                goto oom;
            n->total += s->count;
        }
        n->self += s->count;
    }
    sort_tree(root);
    return root;
oom:
    tb_flame_free(root);
    return NULL;
}

void tb_flame_free(tb_flame_node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        tb_flame_free(n->kids[i]);
    free(n->kids);
    free(n->index);
    free(n);
}

/* ---- writers -------------------------------------------------------------- */

static void folded_name(FILE *out, const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (c == ';')
            c = ':';
        else if (c == '\n' || c == '\r' || c == '\t')
            c = ' ';
        fputc(c, out);
    }
}

typedef struct path_buf {
    const tb_flame_node **v;
    size_t n, cap;
} path_buf;

static int folded_dfs(const tb_flame_node *n, path_buf *p, FILE *out)
{
    if (TB_GROW(p->v, p->cap, p->n + 1) < 0)
        return -ENOMEM;
    p->v[p->n++] = n;
    if (n->self) {
        /* p->v[0] is the "all" root: not a frame */
        for (size_t i = 1; i < p->n; i++) {
            if (i > 1)
                fputc(';', out);
            folded_name(out, p->v[i]->name);
        }
        fprintf(out, " %llu\n", (unsigned long long)n->self);
    }
    for (size_t i = 0; i < n->nkids; i++)
        if (folded_dfs(n->kids[i], p, out) < 0)
            return -ENOMEM;
    p->n--;
    return 0;
}

int tb_folded_write(const tb_folded *f, FILE *out, int with_threads)
{
    tb_flame_node *root = tb_flame_tree(f, with_threads);
    if (!root)
        return -ENOMEM;
    path_buf p = {0};
    int rc = 0;
    /* the root "all" goes on the path but is never printed */
    rc = folded_dfs(root, &p, out);
    free(p.v);
    tb_flame_free(root);
    if (!rc && ferror(out))
        rc = -EIO;
    return rc;
}

/* Length of the valid UTF-8 sequence at u (1..4), or 0 when invalid. */
static int utf8_len(const unsigned char *u)
{
    if (u[0] < 0x80)
        return 1;
    int n;
    unsigned min;
    if ((u[0] & 0xE0) == 0xC0) {
        n = 2;
        min = 0x80;
    } else if ((u[0] & 0xF0) == 0xE0) {
        n = 3;
        min = 0x800;
    } else if ((u[0] & 0xF8) == 0xF0) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    unsigned cp = u[0] & (0x3F >> (n - 1));
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (u[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* s to out: valid UTF-8 sequences as they are, a byte that starts none as
 * `bad`, each ASCII byte through ascii(). */
static void escape_utf8(FILE *out, const char *s, const char *bad, void (*ascii)(FILE *, unsigned char))
{
    for (const unsigned char *u = (const unsigned char *)s; *u;) {
        int n = utf8_len(u);
        if (n == 0) { /* not UTF-8 (a mangled symbol?): keep the output valid */
            fputs(bad, out);
            u++;
        } else if (n > 1) {
            fwrite(u, 1, (size_t)n, out);
            u += n;
        } else {
            ascii(out, *u++);
        }
    }
}

static void json_ascii(FILE *out, unsigned char c)
{
    switch (c) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    default:
        if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
}

void tb_json_str(FILE *out, const char *s)
{
    fputc('"', out);
    escape_utf8(out, s, "\\ufffd", json_ascii);
    fputc('"', out);
}

static void xml_ascii(FILE *out, unsigned char c)
{
    switch (c) {
    case '&': fputs("&amp;", out); break;
    case '<': fputs("&lt;", out); break;
    case '>': fputs("&gt;", out); break;
    case '"': fputs("&quot;", out); break;
    case '\'': fputs("&apos;", out); break;
    default:
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            fputc(' ', out); /* not representable in XML 1.0 */
        else
            fputc(c, out);
    }
}

void tb_xml_str(FILE *out, const char *s)
{
    escape_utf8(out, s, "&#xFFFD;", xml_ascii);
}

int tb_speedscope_write(const tb_folded *f, FILE *out, const char *name)
{
    /* frame table: one entry per distinct name */
    tb_strmap map = {0};
    uint32_t *fidx = malloc((f->nframes ? f->nframes : 1) * sizeof(*fidx));
    const char **uniq = malloc((f->nframes ? f->nframes : 1) * sizeof(*uniq));
    size_t nuniq = 0;
    int rc = 0;
    if (!fidx || !uniq)
        rc = -ENOMEM;
    for (size_t i = 0; i < f->nframes && !rc; i++) {
        int64_t k = tb_strmap_get(&map, f->frames[i]);
        if (k < 0) {
            k = (int64_t)nuniq;
            uniq[nuniq++] = f->frames[i];
            if (tb_strmap_put(&map, f->frames[i], (uint32_t)k) < 0)
                rc = -ENOMEM;
        }
        fidx[i] = (uint32_t)k;
    }
    /* each thread's stacks, in order: by[first[t] .. first[t + 1]) (a
     * counting sort, so a run of thousands of threads is one pass) */
    size_t *first = rc ? NULL : calloc(f->nthreads + 1, sizeof(*first));
    size_t *by = rc ? NULL : malloc((f->nstacks ? f->nstacks : 1) * sizeof(*by));
    if (!rc && (!first || !by))
        rc = -ENOMEM;
    if (rc)
        goto out;
    for (size_t i = 0; i < f->nstacks; i++)
        if (f->stacks[i].thread < f->nthreads)
            first[f->stacks[i].thread + 1]++;
    for (size_t t = 0; t < f->nthreads; t++)
        first[t + 1] += first[t];
    for (size_t i = 0; i < f->nstacks; i++) {
        uint32_t t = f->stacks[i].thread;
        if (t < f->nthreads)
            by[first[t]++] = i;
    }
    for (size_t t = f->nthreads; t > 0; t--) /* back to where each thread begins */
        first[t] = first[t - 1];
    first[0] = 0;
    fputs("{\"$schema\":\"https://www.speedscope.app/file-format-schema.json\",", out);
    fputs("\"exporter\":\"tbprof\",\"name\":", out);
    tb_json_str(out, name ? name : "tbprof CPU samples");
    fputs(",\"activeProfileIndex\":0,\"shared\":{\"frames\":[", out);
    for (size_t i = 0; i < nuniq; i++) {
        fputs(i ? ",{\"name\":" : "{\"name\":", out);
        tb_json_str(out, uniq[i]);
        fputc('}', out);
    }
    fputs("]},\"profiles\":[", out);
    size_t nprof = 0;
    for (size_t t = 0; t < f->nthreads; t++) {
        uint64_t total = 0;
        size_t nst = first[t + 1] - first[t];
        for (size_t x = first[t]; x < first[t + 1]; x++)
            total += f->stacks[by[x]].count;
        if (!nst)
            continue;
        fputs(nprof++ ? ",{" : "{", out);
        fputs("\"type\":\"sampled\",\"name\":", out);
        tb_json_str(out, f->threads[t]);
        fprintf(out, ",\"unit\":\"%s\",\"startValue\":0,\"endValue\":%llu,\"samples\":[",
                f->ns ? "nanoseconds" : "none", (unsigned long long)total);
        for (size_t x = first[t]; x < first[t + 1]; x++) {
            const tb_folded_stack *s = &f->stacks[by[x]];
            fputs(x > first[t] ? ",[" : "[", out);
            for (uint32_t d = 0; d < s->depth; d++)
                fprintf(out, d ? ",%u" : "%u", fidx[s->at + d]);
            fputc(']', out);
        }
        fputs("],\"weights\":[", out);
        for (size_t x = first[t]; x < first[t + 1]; x++)
            fprintf(out, x > first[t] ? ",%llu" : "%llu", (unsigned long long)f->stacks[by[x]].count);
        fputs("]}", out);
    }
    fputs("]}\n", out);
    if (ferror(out))
        rc = -EIO;
out:
    tb_strmap_free(&map);
    free(fidx);
    free(uniq);
    free(first);
    free(by);
    return rc;
}
