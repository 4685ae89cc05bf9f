/* xspace_read.c - load an xplane.pb back into a tb_space (see xspace.h).
 *
 * Tools and tests only: decoding uses protobuf-c's code generated from
 * proto/xplane.proto (tbprof_proto), which libtbprof.so must not link, so
 * nothing in preload/ calls into this file (the static archive leaves it
 * out of the .so).
 *
 * Metadata ids in a file are arbitrary int64s (sparse in TensorFlow's
 * profiles); they are mapped to the model's interned ids through a small
 * hash. Lines and events are built directly (no per-line lookups), so
 * loading is linear in the file's size. str_value stats become interned
 * refs; bytes_value stats become "<N bytes>".
 */
#include "xspace.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xplane.pb-c.h"

typedef Tensorflow__Profiler__XSpace XSpace;
typedef Tensorflow__Profiler__XPlane XPlane;
typedef Tensorflow__Profiler__XLine XLine;
typedef Tensorflow__Profiler__XEvent XEvent;
typedef Tensorflow__Profiler__XStat XStat;

static void seterr(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* ---- int64 -> uint32 map (open addressing) --------------------------------- */

typedef struct idmap {
    int64_t *keys;
    uint32_t *vals; /* 0 = empty */
    size_t mask;
} idmap;

static int idmap_init(idmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2 + 2)
        cap *= 2;
    m->keys = calloc(cap, sizeof(*m->keys));
    m->vals = calloc(cap, sizeof(*m->vals));
    m->mask = cap - 1;
    return (m->keys && m->vals) ? 0 : -ENOMEM;
}

static void idmap_free(idmap *m)
{
    free(m->keys);
    free(m->vals);
}

static size_t idmap_slot(const idmap *m, int64_t k)
{
    uint64_t h = (uint64_t)k * 0x9E3779B97F4A7C15ull;
    size_t j = (size_t)(h >> 17) & m->mask;
    while (m->vals[j] && m->keys[j] != k)
        j = (j + 1) & m->mask;
    return j;
}

static uint32_t idmap_get(const idmap *m, int64_t k)
{
    return m->vals[idmap_slot(m, k)];
}

/* sized for its entries at init; lazily added unknown ids may grow it */
static int idmap_put(idmap *m, int64_t k, uint32_t v, size_t *used)
{
    if ((*used + 1) * 2 > m->mask + 1) {
        idmap big;
        if (idmap_init(&big, m->mask + 1) < 0) {
            idmap_free(&big);
            return -ENOMEM;
        }
        for (size_t i = 0; i <= m->mask; i++)
            if (m->vals[i]) {
                size_t j = idmap_slot(&big, m->keys[i]);
                big.keys[j] = m->keys[i];
                big.vals[j] = m->vals[i];
            }
        idmap_free(m);
        *m = big;
    }
    size_t j = idmap_slot(m, k);
    if (!m->vals[j])
        (*used)++;
    m->keys[j] = k;
    m->vals[j] = v;
    return 0;
}

/* ---- truncation / framing check of the top level ---------------------------- */

static int read_varint(const uint8_t *d, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*pos >= len)
            return -1;
        uint8_t b = d[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -2;
}

/* Past the value of a field of wire type wt at *pos: a varint's value, or
 * a length-delimited field's length, in *v. 0, or -1 when it does not fit
 * in d[0..len) (or wt is a group's). */
static int skip_value(const uint8_t *d, size_t len, size_t *pos, unsigned wt, uint64_t *v)
{
    *v = 0;
    switch (wt) {
    case 0: return read_varint(d, len, pos, v) < 0 ? -1 : 0;
    case 1:
    case 5: {
        size_t need = wt == 1 ? 8 : 4;
        if (len - *pos < need)
            return -1;
        *pos += need;
        return 0;
    }
    case 2:
        if (read_varint(d, len, pos, v) < 0 || *v > len - *pos)
            return -1;
        *pos += (size_t)*v;
        return 0;
    default: return -1;
    }
}

/* Walks XSpace's top-level fields; a message naming the first problem, or
 * NULL when the framing is whole. */
static int check_framing(const uint8_t *d, size_t len, char *err, size_t errlen)
{
    size_t pos = 0;
    while (pos < len) {
        size_t at = pos;
        uint64_t key, v;
        int r = read_varint(d, len, &pos, &key);
        if (r == -1) {
            seterr(err, errlen, "truncated at byte %zu (inside a field key)", at);
            return -EBADMSG;
        }
        unsigned field = (unsigned)(key >> 3), wt = key & 7;
        if (r < 0 || field == 0) {
            seterr(err, errlen, "not an XSpace: bad field key at byte %zu", at);
            return -EBADMSG;
        }
        switch (wt) {
        case 0:
            if (read_varint(d, len, &pos, &v) < 0) {
                seterr(err, errlen, "truncated at byte %zu (inside a varint)", pos);
                return -EBADMSG;
            }
            break;
        case 1:
        case 5: {
            size_t need = wt == 1 ? 8 : 4;
            if (len - pos < need) {
                seterr(err, errlen, "truncated at byte %zu (field %u needs %zu bytes, %zu left)", len,
                       field, need, len - pos);
                return -EBADMSG;
            }
            pos += need;
            break;
        }
        case 2:
            if (read_varint(d, len, &pos, &v) < 0) {
                seterr(err, errlen, "truncated at byte %zu (inside a length)", pos);
                return -EBADMSG;
            }
            if (v > len - pos) {
                static const char *const what[] = {"field", "plane", "error", "warning", "hostname"};
                seterr(err, errlen, "truncated at byte %zu (%s at byte %zu needs %" PRIu64 " bytes, %zu left)",
                       len, what[field <= 4 ? field : 0], at, v, len - pos);
                return -EBADMSG;
            }
            pos += (size_t)v;
            break;
        default:
            seterr(err, errlen, "not an XSpace: bad wire type %u at byte %zu", wt, at);
            return -EBADMSG;
        }
    }
    return 0;
}

/* ---- building the model ------------------------------------------------------ */

typedef struct plane_maps {
    tb_plane *p;
    idmap ev, st;
    size_t nev, nst;
} plane_maps;

static int64_t unknown_meta(plane_maps *pm, int is_event, int64_t file_id)
{
    char name[40];
    snprintf(name, sizeof(name), "#%" PRId64, file_id);
    int64_t id = is_event ? tb_plane_event_meta(pm->p, name) : tb_plane_stat_meta(pm->p, name);
    if (id < 0)
        return id;
    int r = idmap_put(is_event ? &pm->ev : &pm->st, file_id, (uint32_t)id, is_event ? &pm->nev : &pm->nst);
    return r < 0 ? r : id;
}

static int64_t map_stat_meta(plane_maps *pm, int64_t file_id)
{
    uint32_t v = idmap_get(&pm->st, file_id);
    return v ? (int64_t)v : unknown_meta(pm, 0, file_id);
}

static int64_t map_event_meta(plane_maps *pm, int64_t file_id)
{
    uint32_t v = idmap_get(&pm->ev, file_id);
    return v ? (int64_t)v : unknown_meta(pm, 1, file_id);
}

/* XStat -> tb_stat; 0 or -ENOMEM */
static int conv_stat(plane_maps *pm, const XStat *x, tb_stat *out)
{
    int64_t m = map_stat_meta(pm, x->metadata_id);
    if (m < 0)
        return (int)m;
    memset(out, 0, sizeof(*out));
    out->meta = (uint32_t)m;
    switch (x->value_case) {
    case TENSORFLOW__PROFILER__XSTAT__VALUE_DOUBLE_VALUE:
        out->type = TB_STAT_DOUBLE;
        out->v.d = x->double_value;
        break;
    case TENSORFLOW__PROFILER__XSTAT__VALUE_UINT64_VALUE:
        out->type = TB_STAT_UINT64;
        out->v.u = x->uint64_value;
        break;
    case TENSORFLOW__PROFILER__XSTAT__VALUE_INT64_VALUE:
        out->type = TB_STAT_INT64;
        out->v.i = x->int64_value;
        break;
    case TENSORFLOW__PROFILER__XSTAT__VALUE_STR_VALUE: {
        int64_t r = tb_plane_stat_meta(pm->p, x->str_value ? x->str_value : "");
        if (r < 0)
            return (int)r;
        out->type = TB_STAT_REF;
        out->v.ref = (uint32_t)r;
        break;
    }
    case TENSORFLOW__PROFILER__XSTAT__VALUE_BYTES_VALUE: {
        char tmp[48];
        snprintf(tmp, sizeof(tmp), "<%zu bytes>", x->bytes_value.len);
        int64_t r = tb_plane_stat_meta(pm->p, tmp);
        if (r < 0)
            return (int)r;
        out->type = TB_STAT_REF;
        out->v.ref = (uint32_t)r;
        break;
    }
    case TENSORFLOW__PROFILER__XSTAT__VALUE_REF_VALUE: {
        int64_t r = map_stat_meta(pm, (int64_t)x->ref_value);
        if (r < 0)
            return (int)r;
        out->type = TB_STAT_REF;
        out->v.ref = (uint32_t)r;
        break;
    }
    default: /* no value set: keep it as int64 0 */
        out->type = TB_STAT_INT64;
        out->v.i = 0;
        break;
    }
    return 0;
}

static tb_category category_by_name(const char *n)
{
    for (int c = 1; c < TB_CAT_COUNT; c++)
        if (!strcmp(tb_category_name((tb_category)c), n))
            return (tb_category)c;
    return TB_CAT_NONE;
}

static int add_line(plane_maps *pm, const XLine *xl)
{
    tb_plane *p = pm->p;
    if (p->nlines == p->cap_lines) {
        size_t ncap = p->cap_lines ? p->cap_lines * 2 : 8;
        tb_line **nl = realloc(p->lines, ncap * sizeof(*nl));
        if (!nl)
            return -ENOMEM;
        p->lines = nl;
        p->cap_lines = ncap;
    }
    tb_line *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->id = xl->id;
    l->plane = p;
    l->name = strdup(xl->name ? xl->name : "");
    if (!l->name) {
        free(l);
        return -ENOMEM;
    }
    p->lines[p->nlines++] = l; /* owned by the plane from here */
    if (xl->display_name && *xl->display_name && !(l->display_name = strdup(xl->display_name)))
        return -ENOMEM;
    size_t nstats = 0;
    for (size_t i = 0; i < xl->n_events; i++)
        nstats += xl->events[i]->n_stats;
    if (xl->n_events && !(l->events = malloc(xl->n_events * sizeof(tb_event))))
        return -ENOMEM;
    l->cap_events = xl->n_events;
    if (nstats && !(l->stats = malloc(nstats * sizeof(tb_stat))))
        return -ENOMEM;
    l->cap_stats = nstats;
    for (size_t i = 0; i < xl->n_events; i++) {
        const XEvent *xe = xl->events[i];
        int64_t m = map_event_meta(pm, xe->metadata_id);
        if (m < 0)
            return (int)m;
        int64_t off_ps = xe->data_case == TENSORFLOW__PROFILER__XEVENT__DATA_OFFSET_PS ? xe->offset_ps : 0;
        /* floor(ps / 1000) without overflow in the sum (wraps like the writer) */
        int64_t off_ns = off_ps / 1000 - (off_ps % 1000 < 0);
        tb_event *e = &l->events[l->nevents];
        e->start_ns = (int64_t)((uint64_t)xl->timestamp_ns + (uint64_t)off_ns);
        e->dur_ns = xe->duration_ps > 0 ? xe->duration_ps / 1000 : 0;
        /* keep start + dur representable: the model's users add them */
        if (e->start_ns > 0 && e->dur_ns > INT64_MAX - e->start_ns)
            e->dur_ns = INT64_MAX - e->start_ns;
        e->meta = (uint32_t)m;
        e->nstats = 0;
        e->stats_at = l->nstats;
        for (size_t k = 0; k < xe->n_stats; k++) {
            int r = conv_stat(pm, xe->stats[k], &l->stats[l->nstats]);
            if (r < 0)
                return r;
            l->nstats++;
            e->nstats++;
        }
        l->nevents++;
    }
    p->space->used_bytes += l->nevents * sizeof(tb_event) + l->nstats * sizeof(tb_stat);
    return 0;
}

static int add_plane(tb_space *s, const XPlane *xp)
{
    const char *name = xp->name ? xp->name : "";
    tb_plane *existing = tb_space_find_plane(s, name);
    plane_maps pm = {0};
    pm.p = existing ? existing : tb_space_plane(s, name);
    if (!pm.p)
        return -ENOMEM;
    if (!existing)
        pm.p->id = xp->id;
    int r = -ENOMEM;
    if (idmap_init(&pm.ev, xp->n_event_metadata) < 0 || idmap_init(&pm.st, xp->n_stat_metadata) < 0)
        goto out;
    /* stat metadata first: event metadata's stats refer to it */
    for (size_t i = 0; i < xp->n_stat_metadata; i++) {
        const Tensorflow__Profiler__XPlane__StatMetadataEntry *en = xp->stat_metadata[i];
        const char *n = (en->value && en->value->name) ? en->value->name : "";
        int64_t id = tb_plane_stat_meta(pm.p, n);
        if (id < 0 || idmap_put(&pm.st, en->key, (uint32_t)id, &pm.nst) < 0)
            goto out;
    }
    /* only when the file names it: don't add the name to foreign files */
    int64_t cat_id = tb_plane_find_stat_meta(pm.p, "tbprof_category");
    for (size_t i = 0; i < xp->n_event_metadata; i++) {
        const Tensorflow__Profiler__XPlane__EventMetadataEntry *en = xp->event_metadata[i];
        const Tensorflow__Profiler__XEventMetadata *v = en->value;
        tb_category cat = TB_CAT_NONE;
        for (size_t k = 0; v && cat_id && k < v->n_stats; k++) {
            const XStat *st = v->stats[k];
            if (idmap_get(&pm.st, st->metadata_id) == (uint32_t)cat_id &&
                st->value_case == TENSORFLOW__PROFILER__XSTAT__VALUE_STR_VALUE && st->str_value)
                cat = category_by_name(st->str_value);
        }
        /* one metadata per (name, category), as the writer had them */
        const char *name = (v && v->name) ? v->name : "";
        int64_t id = tb_plane_event_meta_cat(pm.p, name, cat);
        if (id < 0 || idmap_put(&pm.ev, en->key, (uint32_t)id, &pm.nev) < 0)
            goto out;
        if (v && v->display_name && *v->display_name &&
            tb_plane_set_event_display_name(pm.p, id, v->display_name) < 0)
            goto out;
    }
    for (size_t i = 0; i < xp->n_stats; i++) {
        tb_stat st;
        if ((r = conv_stat(&pm, xp->stats[i], &st)) < 0)
            goto out;
        if (pm.p->nstats == pm.p->cap_stats) {
            size_t ncap = pm.p->cap_stats ? pm.p->cap_stats * 2 : 8;
            tb_stat *ns = realloc(pm.p->stats, ncap * sizeof(*ns));
            if (!ns) {
                r = -ENOMEM;
                goto out;
            }
            pm.p->stats = ns;
            pm.p->cap_stats = ncap;
        }
        pm.p->stats[pm.p->nstats++] = st;
    }
    for (size_t i = 0; i < xp->n_lines; i++)
        if ((r = add_line(&pm, xp->lines[i])) < 0)
            goto out;
    r = 0;
out:
    idmap_free(&pm.ev);
    idmap_free(&pm.st);
    return r;
}

/* ---- arena for protobuf-c's unpack: one bump allocator, freed at once --------------- */

/* unpack allocates every message and array separately (five or more per
 * event); a bump arena makes that a pointer increment and the final free a
 * walk over a few large blocks. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
} arena_block;

typedef struct arena {
    arena_block *head;
} arena;

static void *arena_alloc(void *ctx, size_t size)
{
    arena *a = ctx;
    size = (size + 15) & ~(size_t)15;
    arena_block *b = a->head;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > (1u << 20) ? size : (1u << 20);
        arena_block *nb = malloc(sizeof(*nb) + cap);
        if (!nb)
            return NULL;
        nb->used = 0;
        nb->cap = cap;
        nb->next = a->head;
        a->head = nb;
        b = nb;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

static void arena_free_one(void *ctx, void *p)
{
    (void)ctx;
    (void)p; /* everything goes at once in arena_release */
}

static void arena_release(arena *a)
{
    while (a->head) {
        arena_block *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

int tb_xspace_decode(const uint8_t *data, size_t len, tb_space **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!len) {
        seterr(err, errlen, "empty file");
        return -ENODATA;
    }
    if (len >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
        seterr(err, errlen, "not an XSpace: gzip data (a trace.json.gz?)");
        return -EBADMSG;
    }
    int r = check_framing(data, len, err, errlen);
    if (r < 0)
        return r;
    /* One plane at a time (the top level's framing is whole): protobuf-c's
     * unpacked form of a plane is several times its size, so unpacking the
     * whole XSpace at once needed that for every plane together. Then
     * hostnames, warnings and errors, in the order unpacking added them. */
    tb_space *s = tb_space_new();
    if (!s) {
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    static const unsigned order[] = {1, 4, 3, 2};
    size_t nplanes = 0, nnotes = 0;
    const char *bad = NULL;
    for (size_t o = 0; o < sizeof(order) / sizeof(order[0]) && !bad; o++) {
        size_t pos = 0;
        while (pos < len && !bad) {
            uint64_t key = 0, v = 0;
            read_varint(data, len, &pos, &key); /* cannot fail: check_framing */
            unsigned field = (unsigned)(key >> 3), wt = key & 7;
            skip_value(data, len, &pos, wt, &v);
            if (field < 1 || field > 4)
                continue; /* a newer schema's field */
            if (wt != 2) {
                bad = "not an XSpace: protobuf decoding failed";
                break;
            }
            if (field != order[o])
                continue;
            const uint8_t *at = data + pos - v;
            if (field == 1) {
                arena ar = {0};
                ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free_one, .allocator_data = &ar};
                XPlane *xp = tensorflow__profiler__xplane__unpack(&alloc, (size_t)v, at);
                if (!xp) {
                    bad = "not an XSpace: protobuf decoding failed";
                } else if (!xp->name || !*xp->name) {
                    seterr(err, errlen, "not an XSpace: plane %zu has no name", nplanes);
                    bad = "";
                } else if (add_plane(s, xp) < 0) {
                    bad = "out of memory";
                }
                arena_release(&ar);
                nplanes++;
                continue;
            }
            char *str = strndup((const char *)at, (size_t)v); /* up to a NUL, as protobuf-c's */
            int rr = !str ? -ENOMEM
                     : field == 4 ? tb_space_add_hostname(s, str)
                     : field == 3 ? tb_space_add_warning(s, str)
                                  : tb_space_add_error(s, str);
            free(str);
            if (rr < 0)
                bad = "out of memory";
            nnotes += field != 4;
        }
    }
    if (!bad && !nplanes && !nnotes)
        bad = "not an XSpace: no planes";
    if (bad) {
        tb_space_free(s);
        if (*bad)
            seterr(err, errlen, "%s", bad);
        return !strcmp(bad, "out of memory") ? -ENOMEM : -EBADMSG;
    }
    *out = s;
    return 0;
}

/* The whole file at path into a malloc'd buffer; 0, or -errno with err set. */
static int read_all(const char *path, uint8_t **data, size_t *size, char *err, size_t errlen)
{
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        seterr(err, errlen, "%s", strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        seterr(err, errlen, "%s", strerror(e));
        return -e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        seterr(err, errlen, "is a directory");
        return -EISDIR;
    }
    size_t cap = (S_ISREG(st.st_mode) && st.st_size > 0) ? (size_t)st.st_size + 1 : 65536, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        close(fd);
        seterr(err, errlen, "out of memory (%zu bytes)", cap);
        return -ENOMEM;
    }
    for (;;) {
        if (len == cap) {
            uint8_t *nb = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                close(fd);
                seterr(err, errlen, "out of memory");
                return -ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            seterr(err, errlen, "read failed: %s", strerror(e));
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *data = buf;
    *size = len;
    return 0;
}

int tb_xspace_read_file(const char *path, tb_space **out, char *err, size_t errlen)
{
    *out = NULL;
    uint8_t *buf;
    size_t len;
    int r = read_all(path, &buf, &len, err, errlen);
    if (r < 0)
        return r;
    r = tb_xspace_decode(buf, len, out, err, errlen);
    free(buf);
    return r;
}

/* ---- counting events without decoding (tbprof ls) ------------------------------ */

/* The messages of xplane.proto and what each known field holds; a known
 * field with another wire type, or anything else protobuf-c might refuse,
 * makes the walk unsure and the caller decodes for real. */
enum { W_SPACE, W_PLANE, W_LINE, W_EVENT, W_STAT, W_EVMETA_ENTRY, W_STMETA_ENTRY, W_EVMETA, W_STMETA, W_NONE };
enum { K_UNKNOWN, K_VARINT, K_FIXED64, K_BYTES, K_MSG, K_VARINT_OR_PACKED };

typedef struct wire_field {
    unsigned char kind, msg;
} wire_field;

/* known[type][field] for fields 1..11 */
static const wire_field known[W_NONE][12] = {
    [W_SPACE] = {[1] = {K_MSG, W_PLANE}, [2] = {K_BYTES, 0}, [3] = {K_BYTES, 0}, [4] = {K_BYTES, 0}},
    [W_PLANE] = {[1] = {K_VARINT, 0},
                 [2] = {K_BYTES, 0},
                 [3] = {K_MSG, W_LINE},
                 [4] = {K_MSG, W_EVMETA_ENTRY},
                 [5] = {K_MSG, W_STMETA_ENTRY},
                 [6] = {K_MSG, W_STAT}},
    [W_LINE] = {[1] = {K_VARINT, 0},
                [2] = {K_BYTES, 0},
                [3] = {K_VARINT, 0},
                [4] = {K_MSG, W_EVENT},
                [9] = {K_VARINT, 0},
                [10] = {K_VARINT, 0},
                [11] = {K_BYTES, 0}},
    [W_EVENT] = {[1] = {K_VARINT, 0}, [2] = {K_VARINT, 0}, [3] = {K_VARINT, 0}, [4] = {K_MSG, W_STAT},
                 [5] = {K_VARINT, 0}},
    [W_STAT] = {[1] = {K_VARINT, 0},
                [2] = {K_FIXED64, 0},
                [3] = {K_VARINT, 0},
                [4] = {K_VARINT, 0},
                [5] = {K_BYTES, 0},
                [6] = {K_BYTES, 0},
                [7] = {K_VARINT, 0}},
    [W_EVMETA_ENTRY] = {[1] = {K_VARINT, 0}, [2] = {K_MSG, W_EVMETA}},
    [W_STMETA_ENTRY] = {[1] = {K_VARINT, 0}, [2] = {K_MSG, W_STMETA}},
    [W_EVMETA] = {[1] = {K_VARINT, 0},
                  [2] = {K_BYTES, 0},
                  [3] = {K_BYTES, 0},
                  [4] = {K_BYTES, 0},
                  [5] = {K_MSG, W_STAT},
                  [6] = {K_VARINT_OR_PACKED, 0}},
    [W_STMETA] = {[1] = {K_VARINT, 0}, [2] = {K_BYTES, 0}, [3] = {K_BYTES, 0}},
};

typedef struct wire_count {
    uint64_t events;
    size_t planes, unnamed_planes;
} wire_count;

/* Walk message `type` in d[0..len): 0 when every field is well formed,
 * -1 when unsure. Counts events (XLine field 4) and planes without a name. */
static int wire_walk(const uint8_t *d, size_t len, int type, wire_count *c)
{
    size_t pos = 0;
    int named = 0;
    while (pos < len) {
        uint64_t key, v;
        if (read_varint(d, len, &pos, &key) < 0)
            return -1;
        uint64_t field = key >> 3;
        unsigned wt = key & 7;
        if (field == 0 || field > 536870911)
            return -1;
        wire_field k = field < 12 ? known[type][field] : (wire_field){K_UNKNOWN, 0};
        switch (wt) {
        case 0:
            if (k.kind != K_UNKNOWN && k.kind != K_VARINT && k.kind != K_VARINT_OR_PACKED)
                return -1;
            if (read_varint(d, len, &pos, &v) < 0)
                return -1;
            break;
        case 1:
        case 5: {
            size_t need = wt == 1 ? 8 : 4;
            if (k.kind != K_UNKNOWN && !(k.kind == K_FIXED64 && wt == 1))
                return -1;
            if (len - pos < need)
                return -1;
            pos += need;
            break;
        }
        case 2:
            if (k.kind != K_UNKNOWN && k.kind != K_BYTES && k.kind != K_MSG && k.kind != K_VARINT_OR_PACKED)
                return -1;
            if (read_varint(d, len, &pos, &v) < 0 || v > len - pos)
                return -1;
            if (k.kind == K_MSG) {
                if (type == W_LINE && field == 4)
                    c->events++;
                if (wire_walk(d + pos, (size_t)v, k.msg, c) < 0)
                    return -1;
            } else if (k.kind == K_VARINT_OR_PACKED) {
                size_t p = 0;
                while (p < (size_t)v)
                    if (read_varint(d + pos, (size_t)v, &p, &key) < 0)
                        return -1;
            } else if (type == W_PLANE && field == 2 && v > 0) {
                named = 1;
            }
            pos += (size_t)v;
            break;
        default:
            return -1;
        }
    }
    if (type == W_PLANE) {
        c->planes++;
        c->unnamed_planes += !named;
    }
    return 0;
}

int tb_xspace_count(const uint8_t *data, size_t len, uint64_t *events, char *err, size_t errlen)
{
    *events = 0;
    wire_count c = {0};
    /* the decoder's own rules for what is an XSpace (no planes, a plane
     * without a name, bad framing) and its messages: decode when unsure */
    if (len && !(len >= 2 && data[0] == 0x1f && data[1] == 0x8b) && wire_walk(data, len, W_SPACE, &c) == 0 &&
        c.planes && !c.unnamed_planes) {
        *events = c.events;
        return 0;
    }
    tb_space *s = NULL;
    int r = tb_xspace_decode(data, len, &s, err, errlen);
    if (r < 0)
        return r;
    *events = tb_space_event_count(s);
    tb_space_free(s);
    return 0;
}

int tb_xspace_count_events(const char *path, uint64_t *events, char *err, size_t errlen)
{
    *events = 0;
    uint8_t *buf;
    size_t len;
    int r = read_all(path, &buf, &len, err, errlen);
    if (r < 0)
        return r;
    r = tb_xspace_count(buf, len, events, err, errlen);
    free(buf);
    return r;
}

/* ---- when a profile was captured, from its first bytes (run order) ----------- */

/* The least XLine timestamp_ns (field 3) among the lines whose headers lie
 * in d[0..len), the leading bytes of an XSpace (its planes: field 1; a
 * plane's lines: field 3); 0 when none. A message cut off by the end is
 * read as far as it goes. */
static int64_t head_line_time(const uint8_t *d, size_t len, int depth)
{
    int64_t best = 0;
    size_t pos = 0;
    while (pos < len) {
        uint64_t key, v;
        if (read_varint(d, len, &pos, &key) < 0)
            break;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (depth == 2 && field == 3 && wt == 0) { /* XLine.timestamp_ns */
            if (read_varint(d, len, &pos, &v) < 0)
                break;
            if (v && v < (uint64_t)INT64_MAX && (!best || (int64_t)v < best))
                best = (int64_t)v;
            continue;
        }
        if (depth < 2 && field == (depth == 0 ? 1u : 3u) && wt == 2) {
            if (read_varint(d, len, &pos, &v) < 0)
                break;
            size_t n = v < (uint64_t)(len - pos) ? (size_t)v : len - pos;
            int64_t t = head_line_time(d + pos, n, depth + 1);
            if (t && (!best || t < best))
                best = t;
            pos += n;
            continue;
        }
        if (skip_value(d, len, &pos, wt, &v) < 0)
            break;
    }
    return best;
}

int64_t tb_xspace_head_time(const uint8_t *head, size_t len)
{
    return head_line_time(head, len, 0);
}
