/* xspace_write.c - streaming XSpace (xplane.pb) encoder (see xspace.h).
 *
 * Wire format from proto/xplane.proto. Two passes: the first sizes every
 * line and plane (kept in one small array, one entry per line/plane), the
 * second writes the bytes once into a buffer allocated once. Event and stat
 * sizes are recomputed on the fly (a few additions each), so there is no
 * allocation per event and the work is linear in events + stats.
 *
 * Defaults are left out as proto3 does, except oneof members (offset_ps,
 * stat values), which are always written so a reader sees which is set.
 * Event metadata with a tb_category carries one stat "tbprof_category"
 * (str_value) so readers (tbprof convert) keep Kineto's categories.
 *
 * Every string is a proto3 `string`, which C++ protobuf (xprof, TensorBoard,
 * jax) refuses to parse unless it is valid UTF-8 - one bad name and the
 * whole file is unreadable. So each byte that starts no valid sequence (a
 * thread name the kernel cut at 15 bytes mid-character, raw NVTX bytes) is
 * written as U+FFFD.
 */
#include "xspace.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TB_ST_CATEGORY "tbprof_category"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2 };

#define TAG(field, wt) ((uint32_t)(((field) << 3) | (wt)))

void tb_buf_free(tb_buf *b)
{
    if (b) {
        free(b->data);
        b->data = NULL;
        b->len = b->cap = 0;
    }
}

/* ---- sizes ------------------------------------------------------------------ */

static inline size_t vsize(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* tag (fields < 16: one byte) + varint */
static inline size_t f_varint(uint64_t v) { return 1 + vsize(v); }
static inline size_t f_len(size_t len) { return 1 + vsize(len) + len; }

static inline uint64_t ps_of(int64_t ns) { return (uint64_t)ns * 1000u; }

/* ---- UTF-8 -------------------------------------------------------------------- */

size_t tb_utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
#define CONT(i) (n > (i) && (s[i] & 0xC0) == 0x80)
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return CONT(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (!CONT(1) || !CONT(2))
            return 0;
        if (c == 0xE0 && s[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && s[1] > 0x9F)
            return 0; /* surrogates */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (!CONT(1) || !CONT(2) || !CONT(3))
            return 0;
        if (c == 0xF0 && s[1] < 0x90)
            return 0;
        if (c == 0xF4 && s[1] > 0x8F)
            return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
#undef CONT
}

/* Bytes s takes once written: each byte that starts no valid UTF-8
 * sequence becomes U+FFFD (3 bytes). */
static size_t u8len(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), out = n;
    for (size_t i = 0; i < n;) {
        uint64_t w;
        if (i + 8 <= n && (memcpy(&w, u + i, 8), !(w & 0x8080808080808080ull))) {
            i += 8; /* eight ASCII bytes */
            continue;
        }
        size_t k = u[i] < 0x80 ? 1 : tb_utf8_seq_len(u + i, n - i);
        if (!k) {
            out += 2;
            k = 1;
        }
        i += k;
    }
    return out;
}

/* s as written (out = u8len(s) bytes) */
static uint8_t *put_u8(uint8_t *p, const char *s, size_t out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s);
    if (out == n) {
        memcpy(p, s, n);
        return p + n;
    }
    for (size_t i = 0; i < n;) {
        size_t k = u[i] < 0x80 ? 1 : tb_utf8_seq_len(u + i, n - i);
        if (!k) {
            *p++ = 0xEF;
            *p++ = 0xBF;
            *p++ = 0xBD;
            i++;
            continue;
        }
        memcpy(p, u + i, k);
        p += k;
        i += k;
    }
    return p;
}

static size_t stat_size(const tb_stat *st)
{
    size_t n = f_varint(st->meta);
    switch (st->type) {
    case TB_STAT_DOUBLE: return n + 1 + 8;
    case TB_STAT_UINT64: return n + f_varint(st->v.u);
    case TB_STAT_INT64: return n + f_varint((uint64_t)st->v.i);
    case TB_STAT_REF: return n + f_varint(st->v.ref);
    default: return n + f_varint(0); /* unknown type: written as int64 0 */
    }
}

static inline size_t event_size(const tb_line *l, const tb_event *e, int64_t line_ts)
{
    size_t n = f_varint(e->meta);
    n += f_varint((uint64_t)e->start_ns * 1000u - (uint64_t)line_ts * 1000u); /* offset_ps: oneof, always */
    if (e->dur_ns)
        n += f_varint(ps_of(e->dur_ns));
    const tb_stat *st = tb_event_stats(l, e);
    for (uint32_t i = 0; i < e->nstats; i++)
        n += f_len(stat_size(&st[i]));
    return n;
}

static size_t str_field(const char *s)
{
    return (s && *s) ? f_len(u8len(s)) : 0;
}

static int64_t line_ts(const tb_line *l)
{
    return l->nevents ? l->events[0].start_ns : 0;
}

/* Latest end minus first start; wraps instead of overflowing on absurd
 * times (a fuzzed file read back), never undefined behaviour. */
static int64_t line_span_ns(const tb_line *l)
{
    if (!l->nevents)
        return 0;
    uint64_t first = (uint64_t)l->events[0].start_ns, span = 0;
    for (size_t i = 0; i < l->nevents; i++) {
        uint64_t e = (uint64_t)l->events[i].start_ns - first + (uint64_t)l->events[i].dur_ns;
        if (e > span && e <= (uint64_t)INT64_MAX)
            span = e;
    }
    return (int64_t)span;
}

/* Line message size, given its events' total and span computed once. */
static size_t line_size(const tb_line *l, size_t events_bytes, int64_t span)
{
    size_t n = 0;
    if (l->id)
        n += f_varint((uint64_t)l->id);
    n += str_field(l->name);
    int64_t ts = line_ts(l);
    if (ts)
        n += f_varint((uint64_t)ts);
    n += events_bytes;
    if (span)
        n += 1 + vsize(ps_of(span)); /* field 9 */
    n += str_field(l->display_name);
    return n;
}

static size_t event_meta_size(const tb_plane *p, size_t id, int64_t cat_meta)
{
    const tb_meta *m = &p->event_meta[id];
    size_t n = f_varint(id) + str_field(m->name) + str_field(m->display_name);
    if (m->category && cat_meta > 0) {
        const char *c = tb_category_name((tb_category)m->category);
        n += f_len(f_varint((uint64_t)cat_meta) + f_len(strlen(c)));
    }
    return n;
}

static size_t stat_meta_size(const tb_plane *p, size_t id)
{
    return f_varint(id) + str_field(p->stat_meta[id]);
}

/* map entry {1: key, 2: value message} */
static size_t map_entry_size(uint64_t key, size_t value_len)
{
    return f_varint(key) + f_len(value_len);
}

/* ---- writing ---------------------------------------------------------------- */

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint8_t *put_fvarint(uint8_t *p, uint32_t field, uint64_t v)
{
    p = put_varint(p, TAG(field, WT_VARINT));
    return put_varint(p, v);
}

static inline uint8_t *put_lenhdr(uint8_t *p, uint32_t field, size_t len)
{
    p = put_varint(p, TAG(field, WT_LEN));
    return put_varint(p, len);
}

static uint8_t *put_str(uint8_t *p, uint32_t field, const char *s)
{
    if (!s || !*s)
        return p;
    size_t n = u8len(s);
    p = put_lenhdr(p, field, n);
    return put_u8(p, s, n);
}

/* repeated string: written even when empty */
static uint8_t *put_rstr(uint8_t *p, uint32_t field, const char *s)
{
    size_t n = u8len(s);
    p = put_lenhdr(p, field, n);
    return put_u8(p, s, n);
}

static uint8_t *put_stat(uint8_t *p, const tb_stat *st)
{
    p = put_fvarint(p, 1, st->meta);
    switch (st->type) {
    case TB_STAT_DOUBLE: {
        uint64_t bits;
        memcpy(&bits, &st->v.d, 8);
        *p++ = TAG(2, WT_I64);
        for (int i = 0; i < 8; i++)
            *p++ = (uint8_t)(bits >> (8 * i));
        return p;
    }
    case TB_STAT_UINT64: return put_fvarint(p, 3, st->v.u);
    case TB_STAT_INT64: return put_fvarint(p, 4, (uint64_t)st->v.i);
    case TB_STAT_REF: return put_fvarint(p, 7, st->v.ref);
    default: return put_fvarint(p, 4, 0);
    }
}

static uint8_t *put_stats(uint8_t *p, uint32_t field, const tb_stat *st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p = put_lenhdr(p, field, stat_size(&st[i]));
        p = put_stat(p, &st[i]);
    }
    return p;
}

/* Output: either one buffer holding the whole message (never flushes), or
 * a reused chunk handed to a sink whenever the next piece might not fit. */
typedef struct wr {
    uint8_t *base, *end; /* current chunk */
    const tb_xspace_sink *sink;
    size_t flushed; /* bytes handed to the sink so far */
    int err;
} wr;

#define CHUNK (256u << 10)

static __attribute__((noinline)) uint8_t *flush_for(wr *w, uint8_t *p, size_t n)
{
    if (!w->err && p > w->base)
        w->err = w->sink->write(w->sink->ctx, w->base, (size_t)(p - w->base));
    w->flushed += (size_t)(p - w->base);
    (void)n; /* the chunk holds the largest piece (sized in pass 1) */
    return w->base;
}

/* Room for n more bytes at p (n is an upper bound of the next piece). */
static inline uint8_t *need(wr *w, uint8_t *p, size_t n)
{
    if (!w->sink || (size_t)(w->end - p) >= n)
        return p;
    return flush_for(w, p, n);
}

static uint8_t *put_line(wr *w, uint8_t *p, const tb_line *l, int64_t span)
{
    int64_t ts = line_ts(l);
    if (l->id)
        p = put_fvarint(p, 1, (uint64_t)l->id);
    p = put_str(p, 2, l->name);
    if (ts)
        p = put_fvarint(p, 3, (uint64_t)ts);
    const uint64_t ts_ps = (uint64_t)ts * 1000u;
    for (size_t i = 0; i < l->nevents; i++) {
        const tb_event *e = &l->events[i];
        const tb_stat *st = tb_event_stats(l, e);
        size_t sz = event_size(l, e, ts);
        p = need(w, p, sz + 11);
        p = put_lenhdr(p, 4, sz);
        p = put_fvarint(p, 1, e->meta);
        p = put_fvarint(p, 2, (uint64_t)e->start_ns * 1000u - ts_ps);
        if (e->dur_ns)
            p = put_fvarint(p, 3, ps_of(e->dur_ns));
        p = put_stats(p, 4, st, e->nstats);
    }
    p = need(w, p, 24 + (l->display_name ? u8len(l->display_name) : 0));
    if (span)
        p = put_fvarint(p, 9, ps_of(span));
    p = put_str(p, 11, l->display_name);
    return p;
}

typedef struct line_info {
    size_t events_bytes; /* sum of f_len(event) */
    int64_t span;
    size_t size; /* whole XLine message */
} line_info;

/* Both entry points: size everything, let begin() see the total, write. */
static int encode(tb_space *s, tb_buf *b, const tb_xspace_sink *sink)
{
    if (tb_space_sort(s) < 0)
        return -ENOMEM;

    /* category stat name, interned in each plane that needs it */
    size_t nl = 0;
    for (size_t i = 0; i < s->nplanes; i++)
        nl += s->planes[i]->nlines;
    int64_t *cat_meta = calloc(s->nplanes + 1, sizeof(*cat_meta));
    size_t *plane_size = calloc(s->nplanes + 1, sizeof(*plane_size));
    line_info *li = calloc(nl + 1, sizeof(*li));
    if (!cat_meta || !plane_size || !li) {
        free(cat_meta);
        free(plane_size);
        free(li);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->nplanes; i++) {
        tb_plane *p = s->planes[i];
        for (size_t m = 1; m < p->nevent_meta; m++)
            if (p->event_meta[m].category) {
                cat_meta[i] = tb_plane_stat_meta(p, TB_ST_CATEGORY);
                break;
            }
    }

    /* pass 1: sizes (and the largest piece written at once: the chunk size) */
    size_t total = 0, k = 0, maxp = 64;
#define MAXP(x)                                                            \
    do {                                                                   \
        size_t x_ = (x);                                                   \
        if (x_ > maxp)                                                     \
            maxp = x_;                                                     \
    } while (0)
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        size_t n = 0;
        if (p->id)
            n += f_varint((uint64_t)p->id);
        n += str_field(p->name);
        MAXP(40 + u8len(p->name));
        for (size_t j = 0; j < p->nlines; j++, k++) {
            const tb_line *l = p->lines[j];
            int64_t ts = line_ts(l);
            size_t eb = 0, maxev = 0;
            for (size_t e = 0; e < l->nevents; e++) {
                size_t es = event_size(l, &l->events[e], ts);
                if (es > maxev)
                    maxev = es;
                eb += f_len(es);
            }
            MAXP(maxev + 11);
            MAXP(48 + u8len(l->name));
            MAXP(24 + (l->display_name ? u8len(l->display_name) : 0));
            li[k].events_bytes = eb;
            li[k].span = line_span_ns(l);
            li[k].size = line_size(l, eb, li[k].span);
            n += f_len(li[k].size);
        }
        for (size_t m = 1; m < p->nevent_meta; m++) {
            size_t vs = event_meta_size(p, m, cat_meta[i]);
            MAXP(vs + 48);
            n += f_len(map_entry_size(m, vs));
        }
        for (size_t m = 1; m < p->nstat_meta; m++) {
            size_t vs = stat_meta_size(p, m);
            MAXP(vs + 48);
            n += f_len(map_entry_size(m, vs));
        }
        for (size_t m = 0; m < p->nstats; m++)
            n += f_len(stat_size(&p->stats[m]));
        plane_size[i] = n;
        total += f_len(n);
    }
    for (size_t i = 0; i < s->nerrors; i++) {
        total += f_len(u8len(s->errors[i]));
        MAXP(11 + u8len(s->errors[i]));
    }
    for (size_t i = 0; i < s->nwarnings; i++) {
        total += f_len(u8len(s->warnings[i]));
        MAXP(11 + u8len(s->warnings[i]));
    }
    for (size_t i = 0; i < s->nhostnames; i++) {
        total += f_len(u8len(s->hostnames[i]));
        MAXP(11 + u8len(s->hostnames[i]));
    }
#undef MAXP

    wr out = {0};
    int r = 0;
    /* protobuf parsers (C++'s int sizes, python's) refuse a message of 2 GiB
     * or more: such a file is disk spent on a profile no reader opens */
    if (total > (size_t)INT32_MAX) {
        r = -EFBIG;
        goto done;
    }
    if (sink) {
        out.sink = sink;
        if (sink->begin && (r = sink->begin(sink->ctx, total)) < 0)
            goto done;
        size_t chunk = maxp > CHUNK ? maxp : CHUNK;
        if (!(out.base = malloc(chunk))) {
            r = -ENOMEM;
            goto done;
        }
        out.end = out.base + chunk;
    } else {
        if (!b->data || b->cap - b->len < total) { /* an empty space into an empty buffer: base not NULL */
            size_t ncap = b->len + total;
            uint8_t *d = realloc(b->data, ncap ? ncap : 1);
            if (!d) {
                r = -ENOMEM;
                goto done;
            }
            b->data = d;
            b->cap = ncap ? ncap : 1;
        }
        out.base = b->data + b->len;
        out.end = out.base + total;
    }

    /* pass 2: bytes */
    uint8_t *w = out.base;
    k = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        w = need(&out, w, 40 + u8len(p->name));
        w = put_lenhdr(w, 1, plane_size[i]);
        if (p->id)
            w = put_fvarint(w, 1, (uint64_t)p->id);
        w = put_str(w, 2, p->name);
        for (size_t j = 0; j < p->nlines; j++, k++) {
            w = need(&out, w, 48 + u8len(p->lines[j]->name));
            w = put_lenhdr(w, 3, li[k].size);
            w = put_line(&out, w, p->lines[j], li[k].span);
        }
        for (size_t m = 1; m < p->nevent_meta; m++) {
            const tb_meta *em = &p->event_meta[m];
            size_t vs = event_meta_size(p, m, cat_meta[i]);
            w = need(&out, w, vs + 48);
            w = put_lenhdr(w, 4, map_entry_size(m, vs));
            w = put_fvarint(w, 1, m);
            w = put_lenhdr(w, 2, vs);
            w = put_fvarint(w, 1, m);
            w = put_str(w, 2, em->name);
            w = put_str(w, 4, em->display_name);
            if (em->category && cat_meta[i] > 0) {
                const char *c = tb_category_name((tb_category)em->category);
                size_t cl = strlen(c);
                w = put_lenhdr(w, 5, f_varint((uint64_t)cat_meta[i]) + f_len(cl));
                w = put_fvarint(w, 1, (uint64_t)cat_meta[i]);
                w = put_lenhdr(w, 5, cl);
                memcpy(w, c, cl);
                w += cl;
            }
        }
        for (size_t m = 1; m < p->nstat_meta; m++) {
            size_t vs = stat_meta_size(p, m);
            w = need(&out, w, vs + 48);
            w = put_lenhdr(w, 5, map_entry_size(m, vs));
            w = put_fvarint(w, 1, m);
            w = put_lenhdr(w, 2, vs);
            w = put_fvarint(w, 1, m);
            w = put_str(w, 2, p->stat_meta[m]);
        }
        for (size_t m = 0; m < p->nstats; m++) {
            w = need(&out, w, 48);
            w = put_stats(w, 6, &p->stats[m], 1);
        }
    }
    for (size_t i = 0; i < s->nerrors + s->nwarnings + s->nhostnames; i++) {
        const char *str = i < s->nerrors ? s->errors[i]
                          : i < s->nerrors + s->nwarnings ? s->warnings[i - s->nerrors]
                                                          : s->hostnames[i - s->nerrors - s->nwarnings];
        uint32_t field = i < s->nerrors ? 2 : i < s->nerrors + s->nwarnings ? 3 : 4;
        w = need(&out, w, 11 + u8len(str));
        w = put_rstr(w, field, str);
    }
    size_t written = out.flushed + (size_t)(w - out.base);
    if (sink && !out.err && w > out.base)
        out.err = sink->write(sink->ctx, out.base, (size_t)(w - out.base));
    r = out.err;
    if (r == 0 && written != total)
        r = -EIO; /* sizing and writing disagree: a bug; never hand out a bad file */
    if (r == 0 && !sink)
        b->len += total;
done:
    if (sink)
        free(out.base);
    free(cat_meta);
    free(plane_size);
    free(li);
    return r;
}

int tb_xspace_encode(tb_space *s, tb_buf *b)
{
    return encode(s, b, NULL);
}

int tb_xspace_encode_stream(tb_space *s, const tb_xspace_sink *sink)
{
    return sink && sink->write ? encode(s, NULL, sink) : -EINVAL;
}

