/* summary.c - overview figures of one profile (see summary.h). */
#include "summary.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "host.h"
#include "ranges.h"
#include "sampler.h"
#include "stats.h"
#include "strmap.h"
#include "util.h"

const char *tb_copy_dir_name(tb_copy_dir d)
{
    static const char *const names[TB_COPY_NDIR] = {"H2D", "D2H", "D2D", "P2P", "other"};
    return (unsigned)d < TB_COPY_NDIR ? names[d] : "other";
}

/* ---- intervals ------------------------------------------------------------ */

static int iv_cmp(const void *a, const void *b)
{
    const tb_interval *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* The one merge rule, for intervals taken in order of start: 1 when
 * [start, end) overlaps or touches *last and was folded into it, 0 when it
 * begins a new interval. */
static int extends(tb_interval *last, int64_t start, int64_t end)
{
    if (start > last->end)
        return 0;
    if (end > last->end)
        last->end = end;
    return 1;
}

size_t tb_intervals_merge(tb_interval *iv, size_t n)
{
    if (n == 0)
        return 0;
    qsort(iv, n, sizeof(*iv), iv_cmp);
    size_t k = 0;
    for (size_t i = 1; i < n; i++)
        if (!extends(&iv[k], iv[i].start, iv[i].end))
            iv[++k] = iv[i];
    return k + 1;
}

/* The first merged interval that ends after lo (n: none). */
static size_t first_after(const tb_interval *m, size_t n, int64_t lo)
{
    size_t a = 0, b = n;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (m[mid].end <= lo)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

int64_t tb_intervals_overlap(const tb_interval *m, size_t n, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return 0;
    int64_t sum = 0;
    for (size_t i = first_after(m, n, lo); i < n && m[i].start < hi; i++) {
        int64_t s = m[i].start > lo ? m[i].start : lo;
        int64_t e = m[i].end < hi ? m[i].end : hi;
        if (e > s)
            sum += e - s;
    }
    return sum;
}

int64_t tb_intervals_both(const tb_interval *a, size_t na, const tb_interval *b, size_t nb, int64_t lo,
                          int64_t hi)
{
    if (hi <= lo)
        return 0;
    int64_t sum = 0;
    size_t i = first_after(a, na, lo), j = first_after(b, nb, lo);
    while (i < na && j < nb && a[i].start < hi && b[j].start < hi) {
        int64_t s = a[i].start > b[j].start ? a[i].start : b[j].start;
        int64_t e = a[i].end < b[j].end ? a[i].end : b[j].end;
        if (s < lo)
            s = lo;
        if (e > hi)
            e = hi;
        if (e > s)
            sum += e - s;
        if (a[i].end < b[j].end) /* the one that ends first can meet nothing more */
            i++;
        else
            j++;
    }
    return sum;
}

int tb_kernel_is_comm(const char *name)
{
    static const char *const words[] = {"nccl",          "allreduce",      "all_reduce", "allgather",
                                        "all_gather",    "reducescatter",  "reduce_scatter",
                                        "alltoall",      "all_to_all"};
    for (const char *p = name; *p; p++)
        for (size_t k = 0; k < sizeof(words) / sizeof(words[0]); k++)
            if (!strncasecmp(p, words[k], strlen(words[k])))
                return 1;
    return 0;
}

typedef struct iv_vec {
    tb_interval *v;
    size_t n, cap;
} iv_vec;

static int iv_push(iv_vec *v, int64_t start, int64_t dur)
{
    if (TB_GROW(v->v, v->cap, v->n + 1) < 0)
        return -ENOMEM;
    v->v[v->n++] = (tb_interval){start, start + dur};
    return 0;
}

/* ---- details strings ------------------------------------------------------- */

/* Start of the value of `key` in "k1:v1 k2:v2 ...", or NULL. */
static const char *details_find(const char *d, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = d; p && *p;) {
        while (*p == ' ')
            p++;
        if (strncmp(p, key, kl) == 0 && p[kl] == ':')
            return p + kl + 1;
        p = strchr(p, ' ');
    }
    return NULL;
}

int tb_details_num(const char *details, const char *key, double *v)
{
    const char *p = details ? details_find(details, key) : NULL;
    if (!p)
        return 0;
    char *end;
    double x = strtod(p, &end);
    if (end == p)
        return 0;
    *v = x;
    return 1;
}

int tb_details_str(const char *details, const char *key, char *buf, size_t n)
{
    const char *p = details ? details_find(details, key) : NULL;
    if (!p || n == 0)
        return 0;
    size_t len = strcspn(p, " ");
    if (len >= n)
        len = n - 1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return 1;
}

/* ---- stats ----------------------------------------------------------------- */

static const char *stat_str(const tb_plane *p, const tb_stat *st)
{
    return st && st->type == TB_STAT_REF ? tb_plane_stat_name(p, st->v.ref) : NULL;
}

/* Numeric value of a stat (strings parsed); 1 when it has one. */
static int stat_num(const tb_plane *p, const tb_stat *st, double *v)
{
    if (!st)
        return 0;
    switch (st->type) {
    case TB_STAT_INT64: *v = (double)st->v.i; return 1;
    case TB_STAT_UINT64: *v = (double)st->v.u; return 1;
    case TB_STAT_DOUBLE: *v = st->v.d; return 1;
    case TB_STAT_REF: {
        const char *s = tb_plane_stat_name(p, st->v.ref);
        char *end;
        double x = strtod(s, &end);
        if (end == s)
            return 0;
        *v = x;
        return 1;
    }
    default: return 0;
    }
}

static int stat_i64(const tb_stat *st, int64_t *v)
{
    if (!st)
        return 0;
    switch (st->type) {
    case TB_STAT_INT64: *v = st->v.i; return 1;
    case TB_STAT_UINT64: *v = (int64_t)st->v.u; return 1;
    case TB_STAT_DOUBLE: /* NaN, inf or out of range: no number (the cast is UB) */
        if (!(st->v.d > -9.2e18 && st->v.d < 9.2e18))
            return 0;
        *v = (int64_t)st->v.d;
        return 1;
    default: return 0;
    }
}

/* ---- GPU activity ------------------------------------------------------------ */

/* Per-plane lookups resolved once, so the per-event work is integer
 * compares and array reads. */
typedef struct plane_ids {
    uint32_t kd, md, msd; /* kernel/memcpy/memset details stat ids (0: none) */
    uint32_t *kidx;       /* event meta id -> kernel index + 1 (0: not yet) */
    int8_t *comm;         /* event meta id -> 1 communication kernel, -1 not, 0 not yet known */
    double *occ;          /* details ref id -> occ_pct; NAN: not parsed, -1: none */
} plane_ids;

static int starts_with(const char *s, const char *pre)
{
    return strncmp(s, pre, strlen(pre)) == 0;
}

/* TB_CAT_KERNEL / MEMCPY / MEMSET, or TB_CAT_NONE for anything else. */
static tb_category classify(const tb_plane *p, const plane_ids *ids, const tb_line *l,
                            const tb_event *e, const tb_stat **details)
{
    *details = NULL;
    tb_category c = e->meta < p->nevent_meta ? (tb_category)p->event_meta[e->meta].category
                                             : TB_CAT_NONE;
    const tb_stat *st = tb_event_stats(l, e);
    tb_category by_stat = TB_CAT_NONE;
    for (uint32_t i = 0; i < e->nstats && (ids->kd || ids->md || ids->msd); i++) {
        uint32_t m = st[i].meta;
        if (!m)
            continue;
        if (m == ids->kd)
            by_stat = TB_CAT_KERNEL;
        else if (m == ids->md)
            by_stat = TB_CAT_MEMCPY;
        else if (m == ids->msd)
            by_stat = TB_CAT_MEMSET;
        else
            continue;
        *details = &st[i];
        break;
    }
    if (c == TB_CAT_KERNEL || c == TB_CAT_MEMCPY || c == TB_CAT_MEMSET)
        return c;
    if (c != TB_CAT_NONE)
        return TB_CAT_NONE; /* annotations, memory, overhead: not busy time */
    if (by_stat != TB_CAT_NONE)
        return by_stat;
    const char *name = tb_plane_event_name(p, e->meta);
    if (starts_with(name, "Memcpy") || starts_with(name, "memcpy"))
        return TB_CAT_MEMCPY;
    if (starts_with(name, "Memset") || starts_with(name, "memset"))
        return TB_CAT_MEMSET;
    return TB_CAT_NONE;
}

static int mem_kind(const char *k) /* 1 host, 2 device, 0 unknown */
{
    if (!strcasecmp(k, "pageable") || !strcasecmp(k, "pinned") || !strcasecmp(k, "host"))
        return 1;
    if (!strcasecmp(k, "device") || !strcasecmp(k, "array") || !strcasecmp(k, "managed") ||
        !strcasecmp(k, "device_static") || !strcasecmp(k, "managed_static"))
        return 2;
    return 0;
}

static tb_copy_dir copy_dir(const char *name, const char *details)
{
    static const struct {
        const char *a, *b;
        tb_copy_dir d;
    } pats[] = {{"H2D", "HtoD", TB_COPY_H2D},
                {"D2H", "DtoH", TB_COPY_D2H},
                {"D2D", "DtoD", TB_COPY_D2D},
                {"P2P", "PtoP", TB_COPY_P2P}};
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++)
        if (strstr(name, pats[i].a) || strstr(name, pats[i].b))
            return pats[i].d;
    char src[32], dst[32];
    if (tb_details_str(details, "kind_src", src, sizeof src) &&
        tb_details_str(details, "kind_dst", dst, sizeof dst)) {
        int s = mem_kind(src), d = mem_kind(dst);
        if (s == 1 && d == 2)
            return TB_COPY_H2D;
        if (s == 2 && d == 1)
            return TB_COPY_D2H;
        if (s == 2 && d == 2)
            return TB_COPY_D2D;
    }
    return TB_COPY_OTHER;
}

static const char *event_label(const tb_plane *p, const tb_event *e)
{
    if (e->meta < p->nevent_meta && e->meta) {
        const tb_meta *m = &p->event_meta[e->meta];
        if (m->display_name && *m->display_name)
            return m->display_name;
        return m->name;
    }
    return "";
}

/* ---- events by name (kernels, NVTX ranges) -------------------------------------- */

static int named_cmp(const void *a, const void *b)
{
    const tb_sum_named *x = a, *y = b;
    if (x->total_ns != y->total_ns)
        return x->total_ns < y->total_ns ? 1 : -1;
    return strcmp(x->name, y->name);
}

typedef struct named_acc {
    tb_sum_named **v; /* the summary's array and its count */
    size_t *n;
    size_t cap;
    tb_strmap map; /* name -> index */
} named_acc;

/* The index of `name`'s entry, added when new; -ENOMEM. */
static int64_t named_index(named_acc *a, const char *name)
{
    int64_t k = tb_strmap_get(&a->map, name);
    if (k < 0) {
        if (TB_GROW(*a->v, a->cap, *a->n + 1) < 0 || tb_strmap_put(&a->map, name, (uint32_t)*a->n) < 0)
            return -ENOMEM;
        k = (int64_t)(*a->n)++;
        (*a->v)[k] = (tb_sum_named){.name = name, .min_ns = INT64_MAX};
    }
    return k;
}

/* The entry for event e's name, through `cache` (event meta id -> index + 1,
 * one per plane, nevent_meta + 1 zeroed slots); added when new. NULL: out
 * of memory. */
static tb_sum_named *named_of(named_acc *a, uint32_t *cache, const tb_plane *p, const tb_event *e)
{
    uint32_t meta = e->meta < p->nevent_meta ? e->meta : 0;
    if (!cache[meta]) {
        int64_t k = named_index(a, event_label(p, e));
        if (k < 0)
            return NULL;
        cache[meta] = (uint32_t)k + 1;
    }
    return &(*a->v)[cache[meta] - 1];
}

static void named_add(tb_sum_named *x, int64_t dur)
{
    x->count++;
    x->total_ns += dur;
    if (dur < x->min_ns)
        x->min_ns = dur;
    if (dur > x->max_ns)
        x->max_ns = dur;
}

static void named_sort(named_acc *a)
{
    if (*a->n > 1)
        qsort(*a->v, *a->n, sizeof(**a->v), named_cmp);
}

/* GPU activity of one correlation id (one CUDA call) */
typedef struct corr_work {
    uint64_t corr, count;
    int64_t ns;
} corr_work;

/* One piece of GPU activity: its interval, the correlation id of the CUDA
 * call that launched it, and which unions it belongs to besides busy time. */
enum { ACT_COMM = 1, ACT_COMPUTE = 2, ACT_H2D = 4, ACT_D2H = 8 };
typedef struct act {
    int64_t start, end;
    uint32_t corr; /* 0: none (or not below 2^32: not joined to its call) */
    uint32_t kind; /* ACT_* */
} act;

typedef struct wait_of {
    const tb_plane *plane;
    const tb_line *line;
} wait_of;

typedef struct gpu_acc {
    iv_vec all, h2d, d2h;
    iv_vec comm, compute; /* communication kernels, the other kernels */
    iv_vec idle_cpu, idle_queued; /* GPU idle time by cause (scan_idle) */
    struct wait_of *threads; /* host lines with CUDA calls (collect_calls) */
    size_t nthreads, cap_threads;
    uint32_t *wait_thread; /* per idle_cpu interval: the index of the thread that launched next */
    size_t cap_wait;
    act *acts;
    size_t nacts, cap_acts;
    named_acc kernels;
    named_acc by_range; /* GPU activity by its nvtx_range */
    corr_work *work; /* by correlation id once scan_gpu is done */
    size_t nwork, cap_work;
    struct call_end *calls; /* the CUDA calls, by correlation id (collect_calls) */
    size_t ncalls;
} gpu_acc;

static int work_cmp(const void *x, const void *y)
{
    uint64_t a = ((const corr_work *)x)->corr, b = ((const corr_work *)y)->corr;
    return (a > b) - (a < b);
}

/* Sort by correlation id, one entry per id. */
static void work_merge(gpu_acc *g)
{
    if (!g->nwork)
        return;
    qsort(g->work, g->nwork, sizeof(*g->work), work_cmp);
    size_t k = 0;
    for (size_t i = 1; i < g->nwork; i++) {
        if (g->work[i].corr == g->work[k].corr) {
            g->work[k].count += g->work[i].count;
            g->work[k].ns += g->work[i].ns;
        } else {
            g->work[++k] = g->work[i];
        }
    }
    g->nwork = k + 1;
}

/* Count kernel e; ACT_COMM or ACT_COMPUTE (which union it joins), or -ENOMEM. */
static int add_kernel(tb_summary *sum, gpu_acc *g, const tb_plane *p, plane_ids *ids,
                      const tb_event *e, const tb_stat *details, int in_step)
{
    tb_sum_named *kr = named_of(&g->kernels, ids->kidx, p, e);
    if (!kr)
        return -ENOMEM;
    named_add(kr, e->dur_ns);
    if (in_step) {
        kr->step_count++;
        kr->step_ns += e->dur_ns;
    }
    double occ = -1;
    if (details && details->type == TB_STAT_REF && details->v.ref < p->nstat_meta) {
        double *c = &ids->occ[details->v.ref];
        if (isnan(*c) && !tb_details_num(stat_str(p, details), "occ_pct", c))
            *c = -1;
        occ = *c;
    }
    if (occ >= 0 && isfinite(occ)) { /* "inf" from another writer: none (JSON has no inf) */
        kr->occ_pct += occ; /* a sum until the end */
        kr->occ_count++;
    }
    sum->kernel_total_ns += e->dur_ns;
    uint32_t meta = e->meta < p->nevent_meta ? e->meta : 0;
    if (!ids->comm[meta])
        ids->comm[meta] = tb_kernel_is_comm(kr->name) ? 1 : -1;
    if (ids->comm[meta] < 0)
        return ACT_COMPUTE;
    sum->comm_kernels++;
    sum->comm_kernel_ns += e->dur_ns;
    return ACT_COMM;
}

/* GPU activity e (line l) to the range its stat `nr` names (rcache: ref
 * id -> index + 1, per plane); outside every range without one. */
static int add_by_range(tb_summary *sum, gpu_acc *g, const tb_plane *p, const tb_line *l, const tb_event *e,
                        uint32_t nr, uint32_t *rcache)
{
    const tb_stat *st = nr ? tb_event_stat(l, e, nr) : NULL;
    if (!st || st->type != TB_STAT_REF || !st->v.ref || st->v.ref >= p->nstat_meta) {
        sum->gpu_outside_ns += e->dur_ns;
        return 0;
    }
    uint32_t ref = st->v.ref;
    if (!rcache[ref]) {
        int64_t k = named_index(&g->by_range, tb_plane_stat_name(p, ref));
        if (k < 0)
            return (int)k;
        rcache[ref] = (uint32_t)k + 1;
    }
    named_add(&(*g->by_range.v)[rcache[ref] - 1], e->dur_ns);
    sum->gpu_in_range_ns += e->dur_ns;
    return 0;
}

static int act_cmp(const void *a, const void *b)
{
    const act *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Add [start, end) to a union built from intervals sorted by start. */
static int union_add(iv_vec *v, int64_t start, int64_t end)
{
    if (v->n && extends(&v->v[v->n - 1], start, end))
        return 0;
    return iv_push(v, start, end - start);
}

/* Sort the activity once; build every union from it. */
static int build_unions(gpu_acc *g)
{
    if (g->nacts)
        qsort(g->acts, g->nacts, sizeof(*g->acts), act_cmp);
    for (size_t i = 0; i < g->nacts; i++) {
        const act *a = &g->acts[i];
        if (union_add(&g->all, a->start, a->end) < 0 ||
            ((a->kind & ACT_COMM) && union_add(&g->comm, a->start, a->end) < 0) ||
            ((a->kind & ACT_COMPUTE) && union_add(&g->compute, a->start, a->end) < 0) ||
            ((a->kind & ACT_H2D) && union_add(&g->h2d, a->start, a->end) < 0) ||
            ((a->kind & ACT_D2H) && union_add(&g->d2h, a->start, a->end) < 0))
            return -ENOMEM;
    }
    return 0;
}

/* A CUDA call's span and thread (index in gpu_acc.threads), by correlation
 * id (CUPTI's are 32-bit; GPU work is joined by those only, see act). 24
 * bytes: a million of them sort twice as fast as at 32. */
typedef struct call_end {
    uint32_t corr, thread;
    int64_t start, end;
} call_end;

static int call_end_cmp(const void *a, const void *b)
{
    uint32_t x = ((const call_end *)a)->corr, y = ((const call_end *)b)->corr;
    return (x > y) - (x < y);
}

/* The calls on /host:* lines with a correlation id, sorted by it, one per
 * id (its earliest start, its latest end); their lines into g->threads. */
static int collect_calls(tb_space *s, gpu_acc *g, call_end **out, size_t *n)
{
    call_end *v = NULL;
    size_t nv = 0, cap = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        uint32_t cid = starts_with(p->name, "/host:") ? tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID) : 0;
        if (!cid)
            continue;
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            uint32_t thread = UINT32_MAX; /* in g->threads once the line has a call */
            for (size_t k = 0; k < l->nevents; k++) {
                const tb_event *e = &l->events[k];
                const tb_stat *cs = e->nstats ? tb_event_stat(l, e, cid) : NULL;
                int64_t corr = 0;
                if (!cs || !stat_i64(cs, &corr) || corr <= 0 || corr > UINT32_MAX)
                    continue;
                if (TB_GROW(v, cap, nv + 1) < 0 ||
                    (thread == UINT32_MAX && TB_GROW(g->threads, g->cap_threads, g->nthreads + 1) < 0)) {
                    free(v);
                    return -ENOMEM;
                }
                if (thread == UINT32_MAX) {
                    thread = (uint32_t)g->nthreads;
                    g->threads[g->nthreads++] = (wait_of){p, l};
                }
                v[nv++] = (call_end){(uint32_t)corr, thread, e->start_ns, e->start_ns + e->dur_ns};
            }
        }
    }
    if (nv) {
        qsort(v, nv, sizeof(*v), call_end_cmp);
        size_t k = 0;
        for (size_t i = 1; i < nv; i++) {
            if (v[i].corr == v[k].corr) {
                if (v[i].start < v[k].start)
                    v[k].start = v[i].start;
                if (v[i].end > v[k].end)
                    v[k].end = v[i].end;
            } else {
                v[++k] = v[i];
            }
        }
        nv = k + 1;
    }
    *out = v;
    *n = nv;
    return 0;
}

/* Whether kernel e (correlation id corr) was launched inside a step: its
 * call's start in one of sum->steps (sorted by start, not nested), or its
 * own start where the profile has no such call. */
static int in_a_step(const tb_summary *sum, const gpu_acc *g, uint64_t corr, const tb_event *e)
{
    int64_t t = e->start_ns;
    if (corr && corr <= UINT32_MAX && g->ncalls) {
        call_end key = {.corr = (uint32_t)corr};
        const call_end *c = bsearch(&key, g->calls, g->ncalls, sizeof(*g->calls), call_end_cmp);
        if (c)
            t = c->start;
    }
    size_t lo = 0, hi = sum->nsteps; /* -> the first step starting after t */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sum->steps[mid].start_ns <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo && t < sum->steps[lo - 1].start_ns + sum->steps[lo - 1].dur_ns;
}

static int scan_gpu(tb_summary *sum, tb_space *s, gpu_acc *g)
{
    size_t events = 0; /* every event of the GPU planes: room for all activity, one allocation */
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (starts_with(p->name, "/device:GPU:"))
            for (size_t j = 0; j < p->nlines; j++)
                events += p->lines[j]->nevents;
    }
    if (events && TB_GROW(g->acts, g->cap_acts, events) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (!starts_with(p->name, "/device:GPU:"))
            continue;
        sum->ngpus++;
        plane_ids ids = {.kd = tb_plane_find_stat_meta(p, TB_ST_KERNEL_DETAILS),
                         .md = tb_plane_find_stat_meta(p, TB_ST_MEMCPY_DETAILS),
                         .msd = tb_plane_find_stat_meta(p, TB_ST_MEMSET_DETAILS)};
        uint32_t cid = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        /* by tf_op: the innermost range, step ranges aside (ranges.h); in
         * profiles written before tbprof wrote tf_op, by nvtx_range */
        uint32_t nr = tb_plane_find_stat_meta(p, TB_ST_TF_OP);
        if (!nr)
            nr = tb_plane_find_stat_meta(p, TB_ST_NVTX_RANGE);
        ids.kidx = calloc(p->nevent_meta + 1, sizeof(*ids.kidx));
        ids.comm = calloc(p->nevent_meta + 1, sizeof(*ids.comm));
        ids.occ = malloc((p->nstat_meta + 1) * sizeof(*ids.occ));
        uint32_t *rcache = calloc(p->nstat_meta + 1, sizeof(*rcache));
        if (!ids.kidx || !ids.comm || !ids.occ || !rcache) {
            free(ids.kidx);
            free(ids.comm);
            free(ids.occ);
            free(rcache);
            return -ENOMEM;
        }
        for (size_t q = 0; q <= p->nstat_meta; q++)
            ids.occ[q] = NAN;
        int rc = 0;
        for (size_t j = 0; j < p->nlines && !rc; j++) {
            const tb_line *l = p->lines[j];
            for (size_t k = 0; k < l->nevents && !rc; k++) {
                const tb_event *e = &l->events[k];
                const tb_stat *dst;
                tb_category c = classify(p, &ids, l, e, &dst);
                if (c == TB_CAT_NONE)
                    continue;
                sum->gpu_events++;
                const tb_stat *cs = tb_event_stat(l, e, cid);
                int64_t corr = 0;
                if (cs && stat_i64(cs, &corr) && corr) {
                    if (TB_GROW(g->work, g->cap_work, g->nwork + 1) < 0) {
                        rc = -ENOMEM;
                        break;
                    }
                    g->work[g->nwork++] = (corr_work){(uint64_t)corr, 1, e->dur_ns};
                }
                act *a = &g->acts[g->nacts++]; /* room for every event of the planes */
                *a = (act){e->start_ns, e->start_ns + e->dur_ns, corr > 0 && corr <= UINT32_MAX ? (uint32_t)corr : 0,
                           0};
                if (add_by_range(sum, g, p, l, e, nr, rcache) < 0) {
                    rc = -ENOMEM;
                } else if (c == TB_CAT_KERNEL) {
                    rc = add_kernel(sum, g, p, &ids, e, dst, sum->nsteps && in_a_step(sum, g, (uint64_t)corr, e));
                    a->kind = rc > 0 ? (uint32_t)rc : 0;
                    rc = rc < 0 ? rc : 0;
                } else if (c == TB_CAT_MEMSET) {
                    sum->memsets++;
                    sum->memset_ns += e->dur_ns;
                } else {
                    const char *details = stat_str(p, dst);
                    tb_copy_dir d = copy_dir(tb_plane_event_name(p, e->meta), details);
                    tb_sum_copy *cp = &sum->copies[d];
                    double bytes = 0;
                    if (!tb_details_num(details, "size", &bytes))
                        stat_num(p, tb_event_find_stat(p, l, e, "bytes"), &bytes);
                    cp->count++;
                    cp->bytes += bytes > 0 && bytes < 1.8e19 ? (uint64_t)bytes : 0;
                    cp->total_ns += e->dur_ns;
                    a->kind = d == TB_COPY_H2D ? ACT_H2D : d == TB_COPY_D2H ? ACT_D2H : 0;
                }
            }
        }
        free(ids.kidx);
        free(ids.comm);
        free(ids.occ);
        free(rcache);
        if (rc)
            return rc;
    }
    for (size_t k = 0; k < sum->nkernels; k++) {
        tb_sum_named *kr = &sum->kernels[k];
        kr->occ_pct = kr->occ_count ? kr->occ_pct / (double)kr->occ_count : -1;
    }
    named_sort(&g->kernels);
    named_sort(&g->by_range);
    work_merge(g);
    return build_unions(g);
}

/* The GPU figures of the window [lo, hi) into st (all but its dur_ns). */
static void window_figures(const gpu_acc *g, int64_t lo, int64_t hi, tb_sum_step *st)
{
    st->gpu_busy_ns = tb_intervals_overlap(g->all.v, g->all.n, lo, hi);
    st->h2d_ns = tb_intervals_overlap(g->h2d.v, g->h2d.n, lo, hi);
    st->d2h_ns = tb_intervals_overlap(g->d2h.v, g->d2h.n, lo, hi);
    st->gpu_idle_ns = (hi - lo) - st->gpu_busy_ns;
    st->comm_ns = tb_intervals_overlap(g->comm.v, g->comm.n, lo, hi);
    st->comm_exposed_ns =
        st->comm_ns - tb_intervals_both(g->comm.v, g->comm.n, g->compute.v, g->compute.n, lo, hi);
    st->idle_cpu_ns = tb_intervals_overlap(g->idle_cpu.v, g->idle_cpu.n, lo, hi);
    st->idle_queued_ns = tb_intervals_overlap(g->idle_queued.v, g->idle_queued.n, lo, hi);
}

/* Add a window's figures (a step's, or the whole capture's) to the sums. */
static void add_window(tb_summary *sum, const tb_sum_step *st)
{
    sum->window_ns += st->dur_ns;
    sum->gpu_busy_ns += st->gpu_busy_ns;
    sum->h2d_ns += st->h2d_ns;
    sum->d2h_ns += st->d2h_ns;
    sum->gpu_idle_ns += st->gpu_idle_ns;
    sum->comm_ns += st->comm_ns;
    sum->comm_exposed_ns += st->comm_exposed_ns;
    sum->idle_cpu_ns += st->idle_cpu_ns;
    sum->idle_queued_ns += st->idle_queued_ns;
}

/* ---- GPU idle time by cause ------------------------------------------------------- */

/* Split the GPU's idle gaps (between the capture's first event and its last
 * GPU activity, all GPUs of the host together) by what the work that ended
 * each gap was doing: not yet launched (the GPU waited for the CPU: from
 * the gap's start to the end of that work's launching call), or launched
 * and not yet running (the rest: launch latency, waits on events and other
 * streams). A gap whose next work has no call in the profile is neither.
 * Also counts the calls that launched GPU work, and their time. */
static int scan_idle(tb_summary *sum, gpu_acc *g)
{
    if (!g->nacts)
        return 0;
    const call_end *calls = g->calls;
    size_t ncalls = g->ncalls;
    int64_t busy_end = sum->begin_ns; /* acts: sorted by build_unions */
    int rc = 0;
    for (size_t i = 0; i < g->nacts && !rc; i++) {
        const act *a = &g->acts[i];
        if (a->start > busy_end) {
            call_end key = {.corr = a->corr};
            const call_end *c =
                a->corr && ncalls ? bsearch(&key, calls, ncalls, sizeof(*calls), call_end_cmp) : NULL;
            if (c) {
                int64_t launched = c->end < busy_end ? busy_end : c->end > a->start ? a->start : c->end;
                if (launched > busy_end) {
                    if (TB_GROW(g->wait_thread, g->cap_wait, g->idle_cpu.n + 1) < 0 ||
                        iv_push(&g->idle_cpu, busy_end, launched - busy_end) < 0) {
                        rc = -ENOMEM;
                        break;
                    }
                    g->wait_thread[g->idle_cpu.n - 1] = c->thread;
                }
                if (a->start > launched && iv_push(&g->idle_queued, launched, a->start - launched) < 0)
                    rc = -ENOMEM;
            }
        }
        if (a->end > busy_end)
            busy_end = a->end;
    }
    /* the calls that launched GPU work (both lists sorted by correlation id) */
    for (size_t i = 0, j = 0; i < ncalls && j < g->nwork;) {
        if (calls[i].corr < g->work[j].corr) {
            i++;
        } else if (calls[i].corr > g->work[j].corr) {
            j++;
        } else {
            sum->launch_calls++;
            sum->launch_call_ns += calls[i].end - calls[i].start;
            i++, j++;
        }
    }
    return rc;
}

/* ---- what the CPU did while the GPU waited for it --------------------------------- */

/* The CPU sample pieces of one thread (line), built when first needed;
 * none where its plane has no CPU samples (tbprof_cpu_hz) */
typedef struct wait_thread {
    const tb_line *line;
    tb_cpu_segs segs;
} wait_thread;

/* Time by frame name into a tb_sum_frame array (*v, *n) */
typedef struct frame_acc {
    tb_sum_frame **v;
    size_t *n, cap;
    tb_strmap map; /* name -> index */
} frame_acc;

static int frame_add(frame_acc *a, const char *name, int64_t ns)
{
    int64_t k = tb_strmap_get(&a->map, name);
    if (k < 0) {
        if (TB_GROW(*a->v, a->cap, *a->n + 1) < 0 || tb_strmap_put(&a->map, name, (uint32_t)*a->n) < 0)
            return -ENOMEM;
        k = (int64_t)(*a->n)++;
        (*a->v)[k] = (tb_sum_frame){.name = name};
    }
    (*a->v)[k].ns += ns;
    return 0;
}

static int frame_cmp(const void *a, const void *b)
{
    const tb_sum_frame *x = a, *y = b;
    if (x->ns != y->ns)
        return x->ns < y->ns ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Sort by time, descending; the map freed. */
static void frame_done(frame_acc *a)
{
    if (*a->n > 1)
        qsort(*a->v, *a->n, sizeof(**a->v), frame_cmp);
    tb_strmap_free(&a->map);
}

typedef struct wait_acc {
    tb_summary *sum;
    wait_thread *th;
    size_t nth, cap_th;
    frame_acc frames; /* sum->wait_frames */
} wait_acc;

static int wait_credit(void *ctx, const char *who, int64_t ns)
{
    return frame_add(&((wait_acc *)ctx)->frames, who, ns);
}

static wait_thread *wait_thread_of(wait_acc *w, const tb_plane *p, const tb_line *l)
{
    for (size_t i = w->nth; i-- > 0;)
        if (w->th[i].line == l)
            return &w->th[i];
    if (TB_GROW(w->th, w->cap_th, w->nth + 1) < 0)
        return NULL;
    wait_thread *t = &w->th[w->nth];
    *t = (wait_thread){.line = l};
    if (tb_cpu_period_ns(p) > 0 && tb_cpu_segments(p, l, &t->segs) < 0)
        return NULL;
    w->nth++;
    return t;
}

/* The GPU's waits for the CPU inside [lo, hi): what the thread of each
 * launching call was doing meanwhile. */
static int wait_window(wait_acc *w, const gpu_acc *g, int64_t lo, int64_t hi)
{
    const iv_vec *iv = &g->idle_cpu;
    for (size_t i = first_after(iv->v, iv->n, lo); i < iv->n && iv->v[i].start < hi; i++) {
        int64_t a = iv->v[i].start > lo ? iv->v[i].start : lo, b = iv->v[i].end < hi ? iv->v[i].end : hi;
        if (b <= a)
            continue;
        const wait_of *who = &g->threads[g->wait_thread[i]];
        wait_thread *t = wait_thread_of(w, who->plane, who->line);
        if (!t)
            return -ENOMEM;
        /* a thread that made CUDA calls ran; without a single sample in the
         * capture it was most likely not sampled (tbprof_cpu_threads_unsampled),
         * not off CPU throughout */
        if (!t->segs.n) {
            w->sum->wait_unsampled_ns += b - a;
            continue;
        }
        int64_t on = tb_cpu_segments_in(&t->segs, a, b, wait_credit, w);
        if (on < 0)
            return -ENOMEM;
        w->sum->wait_on_cpu_ns += on;
        w->sum->wait_off_cpu_ns += (b - a) - on;
    }
    return 0;
}

/* Over the steps (or the whole capture): the on-CPU, off-CPU and unsampled
 * parts of the GPU's waits for the CPU, and the on-CPU part by frame. */
static int scan_waits(tb_summary *sum, const gpu_acc *g)
{
    if (!g->idle_cpu.n)
        return 0;
    wait_acc w = {.sum = sum, .frames = {.v = &sum->wait_frames, .n = &sum->nwait_frames}};
    int rc = 0;
    if (sum->nsteps)
        for (size_t i = 0; i < sum->nsteps && !rc; i++)
            rc = wait_window(&w, g, sum->steps[i].start_ns, sum->steps[i].start_ns + sum->steps[i].dur_ns);
    else
        rc = wait_window(&w, g, sum->begin_ns, sum->end_ns);
    frame_done(&w.frames);
    for (size_t i = 0; i < w.nth; i++)
        free(w.th[i].segs.v);
    free(w.th);
    return rc;
}

/* ---- NVTX ranges ------------------------------------------------------------------ */

/* tb_ranges_walk's callback: credit one call's GPU work to each range name
 * open around it, once per name. */
typedef struct range_gpu {
    tb_summary *sum;
    named_acc *a;
    const gpu_acc *g;
    const tb_plane *p; /* the plane `cache` belongs to */
    uint32_t *cache;
    uint64_t *seen, ncalls; /* by name index: the last call credited to it (a count, from 1) */
    size_t cap_seen;
} range_gpu;

static int credit_ranges(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call,
                         uint64_t corr, const tb_event *const *stack, size_t depth)
{
    (void)line, (void)call;
    range_gpu *r = ctx;
    corr_work key = {.corr = corr};
    const corr_work *w = bsearch(&key, r->g->work, r->g->nwork, sizeof(*r->g->work), work_cmp);
    if (!w)
        return 0;
    if (r->p != host) {
        free(r->cache);
        r->p = host;
        if (!(r->cache = calloc(host->nevent_meta + 1, sizeof(*r->cache))))
            return -ENOMEM;
    }
    r->sum->range_gpu_events += w->count;
    r->ncalls++;
    for (size_t x = 0; x < depth; x++) {
        tb_sum_named *n = named_of(r->a, r->cache, host, stack[x]);
        if (!n)
            return -ENOMEM;
        /* a name nested in itself counts once (a stamp per name: a scan of
         * the entries below cost depth^2 with thousands of async ranges) */
        size_t k = (size_t)(n - *r->a->v);
        if (k >= r->cap_seen) {
            size_t old_cap = r->cap_seen;
            if (TB_GROW(r->seen, r->cap_seen, *r->a->n) < 0)
                return -ENOMEM;
            memset(r->seen + old_cap, 0, (r->cap_seen - old_cap) * sizeof(*r->seen));
        }
        if (r->seen[k] != r->ncalls) {
            r->seen[k] = r->ncalls;
            n->gpu_count += w->count;
            n->gpu_ns += w->ns;
        }
    }
    return 0;
}

static int scan_ranges(tb_summary *sum, tb_space *s, const gpu_acc *g)
{
    named_acc a = {.v = &sum->ranges, .n = &sum->nranges};
    int rc = 0;
    for (size_t i = 0; i < s->nplanes && !rc; i++) {
        const tb_plane *p = s->planes[i];
        if (!starts_with(p->name, "/host:"))
            continue;
        if (!tb_plane_has_category(p, TB_CAT_USER))
            continue;
        uint32_t *cache = calloc(p->nevent_meta + 1, sizeof(*cache));
        if (!cache) {
            rc = -ENOMEM;
            break;
        }
        for (size_t j = 0; j < p->nlines && !rc; j++) {
            const tb_line *l = p->lines[j];
            for (size_t k = 0; k < l->nevents; k++) {
                const tb_event *e = &l->events[k];
                if (e->meta >= p->nevent_meta || p->event_meta[e->meta].category != TB_CAT_USER)
                    continue;
                tb_sum_named *r = named_of(&a, cache, p, e);
                if (!r) {
                    rc = -ENOMEM;
                    break;
                }
                named_add(r, e->dur_ns);
                sum->range_events++;
            }
        }
        free(cache);
    }
    if (!rc && g->nwork && sum->nranges) {
        range_gpu r = {.sum = sum, .a = &a, .g = g};
        rc = tb_ranges_walk(s, TB_CAT_USER, 0, credit_ranges, &r);
        free(r.cache);
        free(r.seen);
    }
    named_sort(&a);
    tb_strmap_free(&a.map);
    return rc;
}

/* ---- GPU memory ---------------------------------------------------------------- */

static int memory_cmp(const void *a, const void *b)
{
    return strcmp(((const tb_sum_memory *)a)->allocator, ((const tb_sum_memory *)b)->allocator);
}

/* The memory timeline's events, per allocator (see stats.h). Events of a
 * line are in time order, lines are not: the "last" total is taken from
 * the latest event seen. */
static int scan_memory(tb_summary *sum, tb_space *s)
{
    size_t cap = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        uint32_t an = tb_plane_find_stat_meta(p, TB_ST_ALLOCATOR_NAME);
        if (!an || !starts_with(p->name, "/host:"))
            continue;
        uint32_t tot = tb_plane_find_stat_meta(p, TB_ST_BYTES_ALLOCATED),
                 peak = tb_plane_find_stat_meta(p, TB_ST_PEAK_BYTES_IN_USE),
                 size = tb_plane_find_stat_meta(p, TB_ST_ALLOCATION_BYTES);
        uint32_t ev_alloc = 0, ev_free = 0; /* event metadata ids of the two names */
        for (size_t m = 1; m < p->nevent_meta; m++) {
            const char *en = p->event_meta[m].name;
            if (en && strcmp(en, TB_EV_MEMORY_ALLOCATION) == 0)
                ev_alloc = (uint32_t)m;
            else if (en && strcmp(en, TB_EV_MEMORY_DEALLOCATION) == 0)
                ev_free = (uint32_t)m;
        }
        if (!ev_alloc && !ev_free)
            continue;
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            for (size_t k = 0; k < l->nevents; k++) {
                const tb_event *e = &l->events[k];
                int alloc = ev_alloc && e->meta == ev_alloc;
                if (!alloc && !(ev_free && e->meta == ev_free))
                    continue;
                const tb_stat *st = tb_event_stats(l, e);
                const char *name = NULL;
                int64_t t = 0, pk = 0, b = 0;
                int has_t = 0;
                for (uint32_t x = 0; x < e->nstats; x++) {
                    if (st[x].meta == an)
                        name = stat_str(p, &st[x]);
                    else if (tot && st[x].meta == tot)
                        has_t = stat_i64(&st[x], &t);
                    else if (peak && st[x].meta == peak)
                        stat_i64(&st[x], &pk);
                    else if (size && st[x].meta == size)
                        stat_i64(&st[x], &b);
                }
                if (!name)
                    continue;
                tb_sum_memory *m = NULL;
                for (size_t x = 0; x < sum->nmemory && !m; x++)
                    if (strcmp(sum->memory[x].allocator, name) == 0)
                        m = &sum->memory[x];
                if (!m) {
                    if (TB_GROW(sum->memory, cap, sum->nmemory + 1) < 0)
                        return -ENOMEM;
                    m = &sum->memory[sum->nmemory++];
                    *m = (tb_sum_memory){.allocator = name, .last_bytes = -1};
                }
                if (alloc) {
                    m->allocs++;
                    m->alloc_bytes += b > 0 ? (uint64_t)b : 0;
                } else {
                    m->frees++;
                    m->free_bytes += b > 0 ? (uint64_t)b : 0;
                }
                if (pk > m->peak_bytes)
                    m->peak_bytes = pk;
                if (has_t) {
                    if (t > m->peak_bytes)
                        m->peak_bytes = t;
                    if (m->last_bytes < 0 || e->start_ns >= m->last_ns) {
                        m->last_bytes = t;
                        m->last_ns = e->start_ns;
                    }
                }
            }
        }
    }
    if (sum->nmemory > 1)
        qsort(sum->memory, sum->nmemory, sizeof(*sum->memory), memory_cmp);
    return 0;
}

/* ---- steps ------------------------------------------------------------------- */

static int step_num_cmp(const void *a, const void *b)
{
    const tb_sum_step *x = a, *y = b;
    if (x->num != y->num)
        return x->num < y->num ? -1 : 1;
    return (x->start_ns > y->start_ns) - (x->start_ns < y->start_ns);
}

static int step_start_cmp(const void *a, const void *b)
{
    const tb_sum_step *x = a, *y = b;
    if (x->start_ns != y->start_ns)
        return x->start_ns < y->start_ns ? -1 : 1;
    return (x->num > y->num) - (x->num < y->num);
}

/* Step b's span into a's (two roots of one step). */
static void merge_step(tb_sum_step *a, const tb_sum_step *b)
{
    int64_t end = a->start_ns + a->dur_ns, bend = b->start_ns + b->dur_ns;
    if (b->start_ns < a->start_ns)
        a->start_ns = b->start_ns;
    a->dur_ns = (bend > end ? bend : end) - a->start_ns;
}

/* Whether roots a and b are one step: each overlaps the other over more
 * than half its length (a root around many steps is not one of them). */
static int same_step(const tb_sum_step *a, const tb_sum_step *b)
{
    int64_t lo = a->start_ns > b->start_ns ? a->start_ns : b->start_ns;
    int64_t ae = a->start_ns + a->dur_ns, be = b->start_ns + b->dur_ns;
    int64_t ov = (ae < be ? ae : be) - lo;
    return ov > 0 && 2 * ov > a->dur_ns && 2 * ov > b->dur_ns;
}

static int scan_steps(tb_summary *sum, tb_space *s)
{
    size_t cap = 0;
    int any_unnumbered = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (!starts_with(p->name, "/host:"))
            continue;
        uint32_t rid = tb_plane_find_stat_meta(p, TB_ST_IS_ROOT);
        uint32_t sid = tb_plane_find_stat_meta(p, TB_ST_STEP_NUM), iid = tb_plane_find_stat_meta(p, TB_ST_ITER_NUM);
        if (!rid)
            continue;
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            for (size_t k = 0; k < l->nevents; k++) {
                const tb_event *e = &l->events[k];
                if (!e->nstats)
                    continue;
                int64_t root = 0, num = -1;
                int is_root = 0;
                const tb_stat *st = tb_event_stats(l, e);
                for (uint32_t q = 0; q < e->nstats; q++) {
                    uint32_t m = st[q].meta;
                    if (m == rid)
                        is_root = stat_i64(&st[q], &root) && root != 0;
                    else if (m && (m == sid || m == iid))
                        stat_i64(&st[q], &num);
                }
                if (!is_root)
                    continue;
                if (TB_GROW(sum->steps, cap, sum->nsteps + 1) < 0)
                    return -ENOMEM;
                if (num < 0)
                    any_unnumbered = 1;
                sum->steps[sum->nsteps++] =
                    (tb_sum_step){.num = num, .start_ns = e->start_ns, .dur_ns = e->dur_ns};
            }
        }
    }
    if (!sum->nsteps)
        return 0;
    /* one step per number: two roots of one step (two sources) merge;
     * unnumbered roots (num -1) sort first and are left alone here */
    qsort(sum->steps, sum->nsteps, sizeof(*sum->steps), step_num_cmp);
    size_t k = 0;
    for (size_t i = 1; i < sum->nsteps; i++) {
        tb_sum_step *a = &sum->steps[k], *b = &sum->steps[i];
        if (b->num >= 0 && b->num == a->num)
            merge_step(a, b);
        else
            sum->steps[++k] = *b;
    }
    sum->nsteps = k + 1;
    qsort(sum->steps, sum->nsteps, sizeof(*sum->steps), step_start_cmp);
    if (!any_unnumbered)
        return 0;
    /* Partly numbered: an unnumbered root that covers most of a numbered
     * step and is mostly that step is the same step from another source,
     * merged into it; the others are numbered after the step before them
     * (from 0 where none is), not by position among numbered steps (an
     * unnumbered root after step 100 was "3"). */
    k = 0;
    for (size_t i = 0; i < sum->nsteps; i++) {
        tb_sum_step *b = &sum->steps[i];
        if (b->num < 0) {
            tb_sum_step *same = NULL;
            for (size_t j = k; j-- > 0 && !same && sum->steps[j].start_ns + sum->steps[j].dur_ns > b->start_ns;)
                if (sum->steps[j].num >= 0 && same_step(&sum->steps[j], b))
                    same = &sum->steps[j];
            for (size_t j = i + 1; j < sum->nsteps && !same && sum->steps[j].start_ns < b->start_ns + b->dur_ns; j++)
                if (sum->steps[j].num >= 0 && same_step(&sum->steps[j], b))
                    same = &sum->steps[j];
            if (same) {
                merge_step(same, b);
                continue;
            }
        }
        sum->steps[k++] = *b;
    }
    sum->nsteps = k;
    qsort(sum->steps, sum->nsteps, sizeof(*sum->steps), step_start_cmp);
    for (size_t i = 0; i < sum->nsteps; i++)
        if (sum->steps[i].num < 0)
            sum->steps[i].num = i ? sum->steps[i - 1].num + 1 : 0;
    return 0;
}

/* ---- plane stats: counters, overhead, warnings --------------------------------- */

/* Add w unless the very same text was said: one contained in an earlier
 * warning is another warning ("1 records ..." in "11 records ..."). */
static int add_warning(tb_summary *sum, size_t *cap, const char *w)
{
    for (size_t i = 0; i < sum->nwarnings; i++)
        if (!strcmp(sum->warnings[i], w))
            return 0; /* already said */
    char *d = strdup(w);
    if (!d || TB_GROW(sum->warnings, *cap, sum->nwarnings + 1) < 0) {
        free(d);
        return -ENOMEM;
    }
    sum->warnings[sum->nwarnings++] = d;
    return 0;
}

static int scan_plane_stats(tb_summary *sum, tb_space *s)
{
    size_t cap_w = 0, cap_c = 0, cap_i = 0, cap_iv = 0;
    for (size_t i = 0; i < s->nwarnings; i++)
        if (add_warning(sum, &cap_w, s->warnings[i]) < 0)
            return -ENOMEM;
    for (size_t i = 0; i < s->nerrors; i++)
        if (add_warning(sum, &cap_w, s->errors[i]) < 0)
            return -ENOMEM;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        for (size_t j = 0; j < p->nstats; j++) {
            const tb_stat *st = &p->stats[j];
            const char *n = tb_plane_stat_name(p, st->meta);
            if (!starts_with(n, "tbprof_"))
                continue;
            const char *str = stat_str(p, st);
            int64_t v;
            if (strcmp(n, TB_ST_TRIGGER) == 0) {
                sum->trigger = str;
            } else if (str && !strstr(n, "reason")) {
                /* settings such as tbprof_cpu_mode: facts, not warnings */
                if (TB_GROW(sum->infos, cap_i, sum->ninfos + 1) < 0 ||
                    TB_GROW(sum->info_values, cap_iv, sum->ninfos + 1) < 0)
                    return -ENOMEM;
                sum->infos[sum->ninfos] = (tb_sum_counter){.plane = p->name, .name = n};
                sum->info_values[sum->ninfos++] = str;
            } else if (str) {
                /* reasons: "tbprof_gpu_off_reason" -> "GPU tracing off: ..." */
                const char *what = strcmp(n, TB_ST_GPU_OFF_REASON) == 0   ? "GPU tracing off"
                                   : strcmp(n, TB_ST_CPU_OFF_REASON) == 0 ? "CPU sampling off"
                                                                          : n + 7;
                int dup = 0;
                for (size_t w = 0; w < sum->nwarnings && !dup; w++)
                    dup = strstr(sum->warnings[w], str) != NULL;
                if (dup || !*str)
                    continue;
                char buf[1024];
                snprintf(buf, sizeof buf, "%s: %s", what, str);
                if (add_warning(sum, &cap_w, buf) < 0)
                    return -ENOMEM;
            } else if (stat_i64(st, &v)) {
                if (strcmp(n, TB_ST_OVERHEAD_NS) == 0) {
                    sum->overhead_ns = (sum->overhead_ns < 0 ? 0 : sum->overhead_ns) + v;
                    continue;
                }
                if (strcmp(n, TB_ST_RANK) == 0) {
                    sum->rank = v;
                    continue;
                }
                if (strcmp(n, TB_ST_WORLD_SIZE) == 0) {
                    sum->world_size = v;
                    continue;
                }
                if (TB_GROW(sum->counters, cap_c, sum->ncounters + 1) < 0)
                    return -ENOMEM;
                sum->counters[sum->ncounters++] =
                    (tb_sum_counter){.plane = p->name, .name = n, .value = v};
            }
        }
    }
    return 0;
}

/* ---- GPU work by launching function ------------------------------------------------ */

/* Time by calling frame, out of stacks from tb_folded_add_gpu/_syncs */
typedef struct by_caller {
    frame_acc frames;
    int64_t *all_ns, *unsampled_ns, *no_call_ns;
} by_caller;

/* Each stack (frames root first, the GPU event's name last) credits its
 * deepest Python frame, else its deepest frame (above "[kernel]"); calls
 * without a sampled frame and events without their call are totalled
 * apart. */
static int credit_callers(const tb_folded *g, by_caller *c)
{
    int rc = 0;
    for (size_t i = 0; i < g->nstacks && !rc; i++) {
        const tb_folded_stack *st = &g->stacks[i];
        const char *const *fr = g->frames + st->at;
        int64_t ns = (int64_t)st->count;
        *c->all_ns += ns;
        if (st->depth < 2) {
            *c->no_call_ns += ns;
            continue;
        }
        if (strcmp(fr[0], TB_FOLDED_UNSAMPLED) == 0) {
            *c->unsampled_ns += ns;
            continue;
        }
        /* the deepest frame, not the kernel (the function that entered it) */
        const char *who = fr[st->depth - 2];
        if (st->depth >= 3 && !strcmp(who, TB_CPU_KERNEL_FRAME))
            who = fr[st->depth - 3];
        for (uint32_t d = st->depth - 1; d-- > 0;)
            if (starts_with(fr[d], "py::")) {
                who = fr[d];
                break;
            }
        rc = frame_add(&c->frames, who, ns);
    }
    frame_done(&c->frames);
    return rc;
}

/* Fold `s` with `add` (tb_folded_add_gpu or _syncs) and credit its stacks
 * into c; *nstacks (when given): how many stacks, one per event with a
 * duration. */
static int scan_callers(tb_space *s, int (*add)(tb_folded *, tb_space *), by_caller *c, uint64_t *nstacks)
{
    tb_folded g = {0};
    int rc = add(&g, s);
    if (nstacks)
        *nstacks = g.nstacks;
    if (!rc)
        rc = credit_callers(&g, c);
    tb_folded_free(&g);
    return rc;
}

static int scan_launchers(tb_summary *sum, tb_space *s)
{
    by_caller c = {{.v = &sum->launchers, .n = &sum->nlaunchers}, &sum->launched_ns, &sum->unsampled_ns,
                   &sum->no_call_ns};
    return scan_callers(s, tb_folded_add_gpu, &c, NULL);
}

/* The host's waits for the GPU (sync records) by the frame that waited. */
static int scan_syncs(tb_summary *sum, tb_space *s)
{
    by_caller c = {{.v = &sum->sync_frames, .n = &sum->nsync_frames}, &sum->sync_ns, &sum->sync_unsampled_ns,
                   &sum->sync_no_call_ns};
    return scan_callers(s, tb_folded_add_syncs, &c, &sum->syncs);
}

/* ---- the whole ------------------------------------------------------------------- */

int tb_summarize(tb_space *s, tb_summary *sum)
{
    memset(sum, 0, sizeof(*sum));
    sum->overhead_ns = -1;
    sum->rank = sum->world_size = -1;
    int sorted = tb_space_sort(s);
    sum->host = s->nhostnames ? s->hostnames[0] : NULL;
    tb_space_span(s, &sum->begin_ns, &sum->end_ns);
    /* the capture's window as the agent wrote it: a capture is as long as it
     * ran, not as its events (none: an idle process; or GPU work that ended
     * early), and the figures without steps cover all of it */
    int64_t wb, we;
    if (tb_capture_window(s, &wb, &we) == 0 && wb > 0 && we > wb) {
        if (sum->begin_ns == sum->end_ns || wb < sum->begin_ns)
            sum->begin_ns = wb;
        if (we > sum->end_ns)
            sum->end_ns = we;
    }

    gpu_acc g = {.kernels = {.v = &sum->kernels, .n = &sum->nkernels},
                 .by_range = {.v = &sum->gpu_ranges, .n = &sum->ngpu_ranges}};
    tb_folded f = {0};
    /* steps and calls first: kernels are counted in the steps by their call */
    int rc = sorted < 0 ? sorted : scan_steps(sum, s);
    if (!rc)
        rc = collect_calls(s, &g, &g.calls, &g.ncalls);
    if (!rc)
        rc = scan_gpu(sum, s, &g);
    if (!rc)
        rc = scan_ranges(sum, s, &g);
    if (!rc)
        rc = scan_idle(sum, &g);
    if (!rc)
        rc = scan_memory(sum, s);
    if (!rc) {
        if (sum->nsteps) {
            sum->step_min_ns = INT64_MAX;
            for (size_t i = 0; i < sum->nsteps; i++) {
                tb_sum_step *st = &sum->steps[i];
                window_figures(&g, st->start_ns, st->start_ns + st->dur_ns, st);
                if (st->dur_ns < sum->step_min_ns)
                    sum->step_min_ns = st->dur_ns;
                if (st->dur_ns > sum->step_max_ns)
                    sum->step_max_ns = st->dur_ns;
                add_window(sum, st);
            }
            sum->step_mean_ns = sum->window_ns / (int64_t)sum->nsteps;
        } else {
            tb_sum_step all = {.dur_ns = sum->end_ns - sum->begin_ns};
            window_figures(&g, sum->begin_ns, sum->end_ns, &all);
            add_window(sum, &all);
        }
        rc = scan_waits(sum, &g);
    }
    if (!rc) {
        rc = tb_folded_add_space(&f, s);
    }
    if (!rc) {
        sum->cpu_samples = f.total;
        rc = tb_folded_functions(&f, &sum->funcs, &sum->nfuncs);
    }
    if (!rc && sum->cpu_samples && sum->gpu_events)
        rc = scan_launchers(sum, s);
    if (!rc && sum->ngpus)
        rc = scan_syncs(sum, s);
    if (!rc)
        rc = scan_plane_stats(sum, s);
    free(g.all.v);
    free(g.h2d.v);
    free(g.d2h.v);
    free(g.comm.v);
    free(g.compute.v);
    free(g.idle_cpu.v);
    free(g.idle_queued.v);
    free(g.threads);
    free(g.wait_thread);
    free(g.acts);
    free(g.work);
    free(g.calls);
    tb_strmap_free(&g.kernels.map);
    tb_strmap_free(&g.by_range.map);
    tb_folded_free(&f);
    if (rc) {
        tb_summary_free(sum);
        return rc;
    }
    return 0;
}

void tb_summary_free(tb_summary *sum)
{
    free(sum->steps);
    free(sum->kernels);
    free(sum->ranges);
    free(sum->gpu_ranges);
    free(sum->memory);
    free(sum->funcs);
    free(sum->launchers);
    free(sum->wait_frames);
    free(sum->sync_frames);
    free(sum->counters);
    free(sum->infos);
    free(sum->info_values);
    for (size_t i = 0; i < sum->nwarnings; i++)
        free((char *)sum->warnings[i]);
    free(sum->warnings);
    memset(sum, 0, sizeof(*sum));
    sum->overhead_ns = -1;
    sum->rank = sum->world_size = -1;
}
