/* trace.c - the in-memory XSpace model (see trace.h). */
#include "trace.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char *const category_names[TB_CAT_COUNT] = {
    [TB_CAT_NONE] = "",
    [TB_CAT_KERNEL] = "kernel",
    [TB_CAT_MEMCPY] = "gpu_memcpy",
    [TB_CAT_MEMSET] = "gpu_memset",
    [TB_CAT_CUDA_RUNTIME] = "cuda_runtime",
    [TB_CAT_CUDA_DRIVER] = "cuda_driver",
    [TB_CAT_CUDA_SYNC] = "cuda_sync",
    [TB_CAT_GPU_USER] = "gpu_user_annotation",
    [TB_CAT_USER] = "user_annotation",
    [TB_CAT_STEP] = "step",
    [TB_CAT_CPU_SAMPLE] = "cpu_sample",
    [TB_CAT_GPU_MEMORY] = "gpu_memory",
    [TB_CAT_OVERHEAD] = "overhead",
};

const char *tb_category_name(tb_category c)
{
    return (unsigned)c < TB_CAT_COUNT ? category_names[c] : "";
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- string interning: open addressing over ids ------------------------- */

struct tb_intern {
    uint32_t *slots; /* 0 = empty, else id */
    uint32_t *hashes;
    size_t mask; /* slots - 1 */
    size_t used;
};

static uint32_t hash_str(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static struct tb_intern *intern_new(void)
{
    struct tb_intern *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->mask = 63;
    t->slots = calloc(t->mask + 1, sizeof(uint32_t));
    t->hashes = calloc(t->mask + 1, sizeof(uint32_t));
    if (!t->slots || !t->hashes) {
        free(t->slots);
        free(t->hashes);
        free(t);
        return NULL;
    }
    return t;
}

static void intern_free(struct tb_intern *t)
{
    if (t) {
        free(t->slots);
        free(t->hashes);
        free(t);
    }
}

static int intern_rehash(struct tb_intern *t)
{
    size_t ncap = (t->mask + 1) * 2;
    uint32_t *slots = calloc(ncap, sizeof(uint32_t));
    uint32_t *hashes = calloc(ncap, sizeof(uint32_t));
    if (!slots || !hashes) {
        free(slots);
        free(hashes);
        return -ENOMEM;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->slots[i])
            continue;
        size_t j = t->hashes[i] & (ncap - 1);
        while (slots[j])
            j = (j + 1) & (ncap - 1);
        slots[j] = t->slots[i];
        hashes[j] = t->hashes[i];
    }
    free(t->slots);
    free(t->hashes);
    t->slots = slots;
    t->hashes = hashes;
    t->mask = ncap - 1;
    return 0;
}

/* Look `s` up; names(ctx, id) returns the string of an id. On a miss,
 * `make(ctx)` creates the entry and returns its id (or <0). */
typedef const char *(*name_of_fn)(const void *ctx, uint32_t id);
typedef int64_t (*make_fn)(void *ctx, const char *s, size_t n);

/* The slot of s[0..n) (hash h): its id's slot, or the empty slot where it
 * would go. */
static size_t intern_probe(const struct tb_intern *t, const char *s, size_t n, uint32_t h, name_of_fn name_of,
                           const void *ctx)
{
    size_t j = h & t->mask;
    for (; t->slots[j]; j = (j + 1) & t->mask) {
        if (t->hashes[j] != h)
            continue;
        const char *cand = name_of(ctx, t->slots[j]);
        if (strncmp(cand, s, n) == 0 && cand[n] == '\0')
            break;
    }
    return j;
}

static int64_t intern(struct tb_intern *t, const char *s, size_t n, name_of_fn name_of,
                      make_fn make, void *ctx)
{
    uint32_t h = hash_str(s, n);
    size_t j = intern_probe(t, s, n, h, name_of, ctx);
    if (t->slots[j])
        return t->slots[j];
    if ((t->used + 1) * 4 > (t->mask + 1) * 3) {
        if (intern_rehash(t) < 0)
            return -ENOMEM;
        j = intern_probe(t, s, n, h, name_of, ctx); /* an empty slot of the new table */
    }
    int64_t id = make(ctx, s, n);
    if (id < 0)
        return id;
    t->slots[j] = (uint32_t)id;
    t->hashes[j] = h;
    t->used++;
    return id;
}

/* The id of `s` without adding it; 0 when absent. */
static uint32_t intern_find(const struct tb_intern *t, const char *s, name_of_fn name_of, const void *ctx)
{
    size_t n = strlen(s);
    return t->slots[intern_probe(t, s, n, hash_str(s, n), name_of, ctx)];
}

/* ---- space --------------------------------------------------------------- */

tb_space *tb_space_new(void)
{
    return calloc(1, sizeof(tb_space));
}

static void free_line(tb_line *l)
{
    free(l->name);
    free(l->display_name);
    free(l->events);
    free(l->stats);
    free(l);
}

static void free_plane(tb_plane *p)
{
    for (size_t i = 0; i < p->nlines; i++)
        free_line(p->lines[i]);
    free(p->lines);
    for (size_t i = 1; i < p->nevent_meta; i++) {
        free(p->event_meta[i].name);
        free(p->event_meta[i].display_name);
    }
    free(p->event_meta);
    for (size_t i = 1; i < p->nstat_meta; i++)
        free(p->stat_meta[i]);
    free(p->stat_meta);
    free(p->stats);
    intern_free(p->ev_index);
    intern_free(p->st_index);
    free(p->name);
    free(p);
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void tb_space_free(tb_space *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nplanes; i++)
        free_plane(s->planes[i]);
    free(s->planes);
    free_strv(s->hostnames, s->nhostnames);
    free_strv(s->warnings, s->nwarnings);
    free_strv(s->errors, s->nerrors);
    free(s);
}

void tb_space_set_limit(tb_space *s, size_t bytes)
{
    s->limit_bytes = bytes;
}

static int push_str(char ***v, size_t *n, const char *str)
{
    char **nv = realloc(*v, (*n + 1) * sizeof(char *));
    if (!nv)
        return -ENOMEM;
    *v = nv;
    if (!(nv[*n] = strdup(str)))
        return -ENOMEM;
    (*n)++;
    return 0;
}

int tb_space_add_hostname(tb_space *s, const char *h) { return push_str(&s->hostnames, &s->nhostnames, h); }
int tb_space_add_warning(tb_space *s, const char *w) { return push_str(&s->warnings, &s->nwarnings, w); }
int tb_space_add_error(tb_space *s, const char *e) { return push_str(&s->errors, &s->nerrors, e); }

tb_plane *tb_space_find_plane(const tb_space *s, const char *name)
{
    for (size_t i = 0; i < s->nplanes; i++)
        if (strcmp(s->planes[i]->name, name) == 0)
            return s->planes[i];
    return NULL;
}

tb_plane *tb_space_plane(tb_space *s, const char *name)
{
    tb_plane *p = tb_space_find_plane(s, name);
    if (p)
        return p;
    if (TB_GROW(s->planes, s->cap_planes, s->nplanes + 1) < 0)
        return NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->name = strdup(name);
    p->ev_index = intern_new();
    p->st_index = intern_new();
    /* id 0 is reserved: slot 0 of each metadata table stays empty */
    if (!p->name || !p->ev_index || !p->st_index || TB_GROW(p->event_meta, p->cap_event_meta, 1) < 0 ||
        TB_GROW(p->stat_meta, p->cap_stat_meta, 1) < 0) {
        free_plane(p);
        return NULL;
    }
    memset(&p->event_meta[0], 0, sizeof(tb_meta));
    p->stat_meta[0] = NULL;
    p->nevent_meta = p->nstat_meta = 1;
    p->space = s;
    p->id = (int64_t)s->nplanes + 1;
    s->planes[s->nplanes++] = p;
    return p;
}

/* ---- metadata ------------------------------------------------------------ */

static const char *ev_name_of(const void *ctx, uint32_t id)
{
    return ((const tb_plane *)ctx)->event_meta[id].name;
}

static int64_t ev_make(void *ctx, const char *s, size_t n)
{
    tb_plane *p = ctx;
    if (p->nevent_meta >= UINT32_MAX || TB_GROW(p->event_meta, p->cap_event_meta, p->nevent_meta + 1) < 0)
        return -ENOMEM;
    tb_meta *m = &p->event_meta[p->nevent_meta];
    memset(m, 0, sizeof(*m));
    if (!(m->name = dupn(s, n)))
        return -ENOMEM;
    return (int64_t)p->nevent_meta++;
}

static const char *st_name_of(const void *ctx, uint32_t id)
{
    return ((const tb_plane *)ctx)->stat_meta[id];
}

static int64_t st_make(void *ctx, const char *s, size_t n)
{
    tb_plane *p = ctx;
    if (p->nstat_meta >= UINT32_MAX || TB_GROW(p->stat_meta, p->cap_stat_meta, p->nstat_meta + 1) < 0)
        return -ENOMEM;
    if (!(p->stat_meta[p->nstat_meta] = dupn(s, n)))
        return -ENOMEM;
    return (int64_t)p->nstat_meta++;
}

int64_t tb_plane_event_meta_n(tb_plane *p, const char *name, size_t len)
{
    return intern(p->ev_index, name, len, ev_name_of, ev_make, p);
}

int64_t tb_plane_event_meta(tb_plane *p, const char *name)
{
    return tb_plane_event_meta_n(p, name, strlen(name));
}

int64_t tb_plane_event_meta_cat_n(tb_plane *p, const char *name, size_t len, tb_category cat)
{
    int64_t m = tb_plane_event_meta_n(p, name, len);
    if (m <= 0)
        return m;
    for (;;) {
        tb_meta *e = &p->event_meta[m];
        if (e->category == TB_CAT_NONE)
            e->category = cat;
        if (e->category == (uint32_t)cat)
            return m;
        if (!e->next_cat)
            break;
        m = e->next_cat;
    }
    /* a second metadata of the name, outside the name index (which keeps
     * the first), chained to the last of the name's */
    int64_t n = ev_make(p, name, len);
    if (n < 0)
        return n;
    p->event_meta[n].category = cat;
    p->event_meta[m].next_cat = (uint32_t)n;
    return n;
}

int64_t tb_plane_event_meta_cat(tb_plane *p, const char *name, tb_category cat)
{
    return tb_plane_event_meta_cat_n(p, name, strlen(name), cat);
}

int tb_plane_set_event_display_name(tb_plane *p, int64_t meta, const char *display)
{
    if (meta <= 0 || (size_t)meta >= p->nevent_meta)
        return -EINVAL;
    char *d = strdup(display);
    if (!d)
        return -ENOMEM;
    free(p->event_meta[meta].display_name);
    p->event_meta[meta].display_name = d;
    return 0;
}

void tb_plane_set_event_category(tb_plane *p, int64_t meta, tb_category c)
{
    if (meta > 0 && (size_t)meta < p->nevent_meta)
        p->event_meta[meta].category = c;
}

int64_t tb_plane_stat_meta_n(tb_plane *p, const char *name, size_t len)
{
    return intern(p->st_index, name, len, st_name_of, st_make, p);
}

int64_t tb_plane_stat_meta(tb_plane *p, const char *name)
{
    return tb_plane_stat_meta_n(p, name, strlen(name));
}

uint32_t tb_plane_find_stat_meta(const tb_plane *p, const char *name)
{
    return p->st_index ? intern_find(p->st_index, name, st_name_of, p) : 0;
}

const char *tb_plane_event_name(const tb_plane *p, int64_t meta)
{
    return (meta > 0 && (size_t)meta < p->nevent_meta) ? p->event_meta[meta].name : "";
}

const char *tb_plane_stat_name(const tb_plane *p, int64_t meta)
{
    return (meta > 0 && (size_t)meta < p->nstat_meta) ? p->stat_meta[meta] : "";
}

static int plane_stat(tb_plane *p, const char *name, tb_stat st)
{
    int64_t m = tb_plane_stat_meta(p, name);
    if (m < 0)
        return (int)m;
    /* replace an earlier value of the same stat */
    for (size_t i = 0; i < p->nstats; i++)
        if (p->stats[i].meta == (uint32_t)m) {
            st.meta = (uint32_t)m;
            p->stats[i] = st;
            return 0;
        }
    if (TB_GROW(p->stats, p->cap_stats, p->nstats + 1) < 0)
        return -ENOMEM;
    st.meta = (uint32_t)m;
    p->stats[p->nstats++] = st;
    return 0;
}

int tb_plane_stat_i64(tb_plane *p, const char *name, int64_t v)
{
    return plane_stat(p, name, (tb_stat){.type = TB_STAT_INT64, .v.i = v});
}

int tb_plane_stat_u64(tb_plane *p, const char *name, uint64_t v)
{
    return plane_stat(p, name, (tb_stat){.type = TB_STAT_UINT64, .v.u = v});
}

int tb_plane_stat_f64(tb_plane *p, const char *name, double v)
{
    return plane_stat(p, name, (tb_stat){.type = TB_STAT_DOUBLE, .v.d = v});
}

int tb_plane_stat_str(tb_plane *p, const char *name, const char *v)
{
    int64_t ref = tb_plane_stat_meta(p, v);
    if (ref < 0)
        return (int)ref;
    return plane_stat(p, name, (tb_stat){.type = TB_STAT_REF, .v.ref = (uint32_t)ref});
}

/* ---- lines and events ---------------------------------------------------- */

tb_line *tb_plane_find_line(const tb_plane *p, int64_t id)
{
    /* Planes have tens of lines; callers that look up per event keep a cache. */
    for (size_t i = 0; i < p->nlines; i++)
        if (p->lines[i]->id == id)
            return p->lines[i];
    return NULL;
}

tb_line *tb_plane_line(tb_plane *p, int64_t id, const char *name)
{
    tb_line *l = tb_plane_find_line(p, id);
    if (l)
        return l;
    if (TB_GROW(p->lines, p->cap_lines, p->nlines + 1) < 0)
        return NULL;
    l = calloc(1, sizeof(*l));
    if (!l || !(l->name = strdup(name ? name : ""))) {
        free(l);
        return NULL;
    }
    l->id = id;
    l->plane = p;
    p->lines[p->nlines++] = l;
    return l;
}

int tb_line_set_display_name(tb_line *l, const char *display)
{
    char *d = strdup(display);
    if (!d)
        return -ENOMEM;
    free(l->display_name);
    l->display_name = d;
    return 0;
}

static int charge(tb_space *s, size_t bytes)
{
    if (s->limit_bytes && s->used_bytes + bytes > s->limit_bytes)
        return -ENOSPC;
    s->used_bytes += bytes;
    return 0;
}

int64_t tb_line_add(tb_line *l, int64_t meta, int64_t start_ns, int64_t dur_ns)
{
    tb_space *s = l->plane->space;
    if (charge(s, sizeof(tb_event)) < 0) {
        s->dropped++;
        return -ENOSPC;
    }
    if (TB_GROW(l->events, l->cap_events, l->nevents + 1) < 0) {
        s->dropped++;
        return -ENOMEM;
    }
    tb_event *e = &l->events[l->nevents];
    e->start_ns = start_ns;
    e->dur_ns = dur_ns < 0 ? 0 : dur_ns;
    e->meta = (uint32_t)meta;
    e->nstats = 0;
    e->stats_at = l->nstats;
    return (int64_t)l->nevents++;
}

static int line_stat(tb_line *l, tb_stat st)
{
    if (!l->nevents)
        return -EINVAL;
    if (charge(l->plane->space, sizeof(tb_stat)) < 0)
        return -ENOSPC; /* the event stays, without this stat */
    if (TB_GROW(l->stats, l->cap_stats, l->nstats + 1) < 0)
        return -ENOMEM;
    tb_event *e = &l->events[l->nevents - 1];
    l->stats[l->nstats++] = st;
    e->nstats++;
    return 0;
}

int tb_line_stat_i64(tb_line *l, int64_t m, int64_t v)
{
    return line_stat(l, (tb_stat){.meta = (uint32_t)m, .type = TB_STAT_INT64, .v.i = v});
}

int tb_line_stat_u64(tb_line *l, int64_t m, uint64_t v)
{
    return line_stat(l, (tb_stat){.meta = (uint32_t)m, .type = TB_STAT_UINT64, .v.u = v});
}

int tb_line_stat_f64(tb_line *l, int64_t m, double v)
{
    return line_stat(l, (tb_stat){.meta = (uint32_t)m, .type = TB_STAT_DOUBLE, .v.d = v});
}

int tb_line_stat_str(tb_line *l, int64_t m, const char *v)
{
    int64_t ref = tb_plane_stat_meta(l->plane, v);
    if (ref < 0)
        return (int)ref;
    return line_stat(l, (tb_stat){.meta = (uint32_t)m, .type = TB_STAT_REF, .v.ref = (uint32_t)ref});
}

/* Events' stat blocks lie in the pool in event order, without overlap: the
 * common case (a line's events were appended in time order), where stats
 * can be inserted by moving blocks up within the pool. */
static int blocks_in_order(const tb_line *l)
{
    for (size_t i = 1; i < l->nevents; i++)
        if (l->events[i - 1].stats_at + l->events[i - 1].nstats > l->events[i].stats_at)
            return 0;
    return 1;
}

int tb_line_add_stats(tb_line *l, const uint32_t *ev, const tb_stat *add, size_t n)
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (ev[i] >= l->nevents || (i && ev[i] < ev[i - 1]))
            return -EINVAL;
    tb_space *s = l->plane->space;
    if (charge(s, n * sizeof(tb_stat)) < 0)
        return -ENOSPC;
    size_t old = l->nstats;
    if (blocks_in_order(l)) {
        /* grow in place, then from the last event down move each block up
         * by the stats still to insert below it, its new stat after it */
        if (l->cap_stats < old + n) {
            tb_stat *p = realloc(l->stats, (old + n) * sizeof(*p));
            if (!p) {
                s->used_bytes -= n * sizeof(tb_stat);
                return -ENOMEM;
            }
            l->stats = p;
            l->cap_stats = old + n;
        }
        size_t left = n, end = old + n; /* the blocks moved so far start at `end` */
        for (size_t i = l->nevents; i-- > 0 && left;) {
            tb_event *e = &l->events[i];
            uint32_t adds = 0;
            while (left && ev[left - 1] == i)
                adds++, left--;
            end -= adds;
            memcpy(l->stats + end, add + left, adds * sizeof(tb_stat));
            end -= e->nstats; /* never below e->stats_at: n - left stats are still to come */
            if (end != e->stats_at)
                memmove(l->stats + end, l->stats + e->stats_at, e->nstats * sizeof(tb_stat));
            e->stats_at = end;
            e->nstats += adds;
        }
        l->nstats = old + n;
        return 0;
    }
    /* blocks out of order: one new pool, in event order */
    tb_stat *pool = malloc((old + n) * sizeof(*pool));
    if (!pool) {
        s->used_bytes -= n * sizeof(tb_stat);
        return -ENOMEM;
    }
    size_t k = 0, j = 0;
    for (size_t i = 0; i < l->nevents; i++) {
        tb_event *e = &l->events[i];
        if (e->nstats) /* l->stats is NULL on a line without stats yet */
            memcpy(pool + k, l->stats + e->stats_at, e->nstats * sizeof(*pool));
        e->stats_at = k;
        k += e->nstats;
        for (; j < n && ev[j] == i; j++) {
            pool[k++] = add[j];
            e->nstats++;
        }
    }
    free(l->stats);
    l->stats = pool;
    l->nstats = k;
    l->cap_stats = old + n;
    return 0;
}

const tb_stat *tb_event_find_stat(const tb_plane *p, const tb_line *l, const tb_event *e,
                                  const char *name)
{
    return tb_event_stat(l, e, tb_plane_find_stat_meta(p, name));
}

const tb_stat *tb_plane_find_stat(const tb_plane *p, const char *name)
{
    uint32_t m = tb_plane_find_stat_meta(p, name);
    for (size_t i = 0; m && i < p->nstats; i++)
        if (p->stats[i].meta == m)
            return &p->stats[i];
    return NULL;
}

int tb_plane_has_category(const tb_plane *p, tb_category cat)
{
    for (size_t m = 1; m < p->nevent_meta; m++)
        if (p->event_meta[m].category == (uint32_t)cat)
            return 1;
    return 0;
}

/* ---- sorting --------------------------------------------------------------- */

static int ev_before(const tb_event *a, const tb_event *b)
{
    if (a->start_ns != b->start_ns)
        return a->start_ns < b->start_ns;
    return a->dur_ns > b->dur_ns;
}

/* Bottom-up merge sort: stable, O(n log n), one scratch array. */
static int sort_events(tb_event *ev, size_t n)
{
    size_t i = 1;
    while (i < n && !ev_before(&ev[i], &ev[i - 1]))
        i++;
    if (i >= n)
        return 0; /* already sorted: the common case */
    tb_event *tmp = malloc(n * sizeof(*tmp));
    if (!tmp)
        return -ENOMEM;
    tb_event *src = ev, *dst = tmp;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n;
            size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi)
                dst[k++] = ev_before(&src[b], &src[a]) ? src[b++] : src[a++];
            while (a < mid)
                dst[k++] = src[a++];
            while (b < hi)
                dst[k++] = src[b++];
        }
        tb_event *t = src;
        src = dst;
        dst = t;
    }
    if (src != ev)
        memcpy(ev, src, n * sizeof(*ev));
    free(tmp);
    return 0;
}

int tb_space_sort(tb_space *s)
{
    int r = 0;
    for (size_t i = 0; i < s->nplanes; i++)
        for (size_t j = 0; j < s->planes[i]->nlines; j++) {
            tb_line *l = s->planes[i]->lines[j];
            if (sort_events(l->events, l->nevents) < 0)
                r = -ENOMEM;
        }
    return r;
}

void tb_space_span(const tb_space *s, int64_t *begin_ns, int64_t *end_ns)
{
    int64_t b = INT64_MAX, e = INT64_MIN;
    for (size_t i = 0; i < s->nplanes; i++)
        for (size_t j = 0; j < s->planes[i]->nlines; j++) {
            const tb_line *l = s->planes[i]->lines[j];
            for (size_t k = 0; k < l->nevents; k++) {
                if (l->events[k].start_ns < b)
                    b = l->events[k].start_ns;
                if (l->events[k].start_ns + l->events[k].dur_ns > e)
                    e = l->events[k].start_ns + l->events[k].dur_ns;
            }
        }
    if (b == INT64_MAX)
        b = e = 0;
    *begin_ns = b;
    *end_ns = e;
}

size_t tb_space_event_count(const tb_space *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nplanes; i++)
        for (size_t j = 0; j < s->planes[i]->nlines; j++)
            n += s->planes[i]->lines[j]->nevents;
    return n;
}
