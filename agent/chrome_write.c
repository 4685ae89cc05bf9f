/* chrome_write.c - Chrome trace JSON (Kineto's conventions), plain or gzip.
 *
 *   {"displayTimeUnit":"ns", "distributedInfo":{...}, "deviceProperties":[...],
 *    "traceEvents":[ ...M metadata, X events, s/f flows... ]}
 *
 * - distributedInfo / deviceProperties (Kineto's top-level keys): only
 *   when the profile has a rank (tbprof_rank) / GPU planes.
 * - Process per plane: the host plane's pid is its "pid" stat (the profiled
 *   process) when present; /device:GPU:<n> gets pid n (as Kineto does) unless
 *   that collides with the host pid, then 1000000+n; other planes 4194304+id (past PID_MAX_LIMIT).
 *   Thread per line: tid = line id (thread id, stream id).
 * - "X" events: cat from the event's tb_category, ts/dur in microseconds
 *   printed from integer ns ("123.456"), args = the event's stats.
 * - Flows "ac2g": "s" on a host event and "f" ("bp":"e") on the GPU event
 *   carrying the same correlation_id; only ids present on both sides, so
 *   every flow pairs up. A flow ends at one event, so where several GPU
 *   events share a launch's id (the kernels of a CUDA graph launch) the
 *   k-th (k >= 1) gets id + k * 2^32 (CUPTI's ids are 32-bit; below 2^53,
 *   which JavaScript viewers read exactly) and the launch one "s" for each.
 *
 * Names are escaped once per metadata entry (not per event); output goes
 * through a 64 KiB chunk buffer into a growing tb_buf, deflated on the way
 * when gzip is asked for. Linear in events + stats.
 */
#include "xspace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "stats.h"
#include "summary.h"
#include "zlib_dl.h"

/* ---- output ---------------------------------------------------------------------- */

typedef struct jw {
    char buf[1 << 16];
    size_t n;
    int err;
    tb_buf *out;
    z_stream *z;
    const tb_zlib *zl; /* with z */
    /* streaming: compressed bytes go to sink as they come (out is reused) */
    int (*sink)(void *ctx, const void *data, size_t len);
    void *sink_ctx;
} jw;

static int buf_reserve(tb_buf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    size_t ncap = b->cap ? b->cap : 1 << 16;
    while (ncap - b->len < more) {
        if (ncap > SIZE_MAX / 2)
            return -ENOMEM;
        ncap *= 2;
    }
    uint8_t *d = realloc(b->data, ncap);
    if (!d)
        return -ENOMEM;
    b->data = d;
    b->cap = ncap;
    return 0;
}

static void jw_drain(jw *w, int finish)
{
    if (w->err) {
        w->n = 0; /* output is void already; keep the chunk usable */
        return;
    }
    if (!w->z) {
        if (buf_reserve(w->out, w->n) < 0) {
            w->err = -ENOMEM;
            return;
        }
        memcpy(w->out->data + w->out->len, w->buf, w->n);
        w->out->len += w->n;
        w->n = 0;
        return;
    }
    w->z->next_in = (Bytef *)w->buf;
    w->z->avail_in = (uInt)w->n;
    for (;;) {
        if (buf_reserve(w->out, 1 << 16) < 0) {
            w->err = -ENOMEM;
            return;
        }
        w->z->next_out = w->out->data + w->out->len;
        w->z->avail_out = (uInt)(w->out->cap - w->out->len > (1u << 30) ? (1u << 30) : w->out->cap - w->out->len);
        uInt before = w->z->avail_out;
        int r = w->zl->deflate(w->z, finish ? Z_FINISH : Z_NO_FLUSH);
        w->out->len += before - w->z->avail_out;
        if (r == Z_STREAM_END)
            break;
        if (r != Z_OK && r != Z_BUF_ERROR) {
            w->err = -EIO;
            return;
        }
        if (!finish && w->z->avail_in == 0 && w->z->avail_out != 0)
            break;
    }
    if (w->sink && w->out->len && !w->err) {
        w->err = w->sink(w->sink_ctx, w->out->data, w->out->len);
        w->out->len = 0;
    }
    w->n = 0;
}

/* A piece longer than the chunk: pass it through in chunk-sized parts. */
static __attribute__((noinline)) void put_long(jw *w, const char *s, size_t n)
{
    jw_drain(w, 0);
    while (n) {
        size_t k = n < sizeof(w->buf) ? n : sizeof(w->buf);
        memcpy(w->buf, s, k);
        w->n = k;
        jw_drain(w, 0);
        s += k;
        n -= k;
    }
}

static inline void put(jw *w, const char *s, size_t n)
{
    if (w->n + n > sizeof(w->buf)) {
        if (n > sizeof(w->buf) / 2) {
            put_long(w, s, n);
            return;
        }
        jw_drain(w, 0);
    }
    memcpy(w->buf + w->n, s, n);
    w->n += n;
}

/* lit must be a string literal ("" lit "" does not compile otherwise) */
#define PUTS(w, lit) put((w), "" lit "", sizeof(lit) - 1)

static void put_u64(jw *w, uint64_t v)
{
    char tmp[24];
    int i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(w, tmp + i, sizeof(tmp) - (size_t)i);
}

static void put_i64(jw *w, int64_t v)
{
    if (v < 0) {
        PUTS(w, "-");
        put_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(w, (uint64_t)v);
    }
}

/* ns as microseconds with three decimals: 1234567 -> "1234.567" */
static void put_us(jw *w, int64_t ns)
{
    uint64_t a = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
    if (ns < 0)
        PUTS(w, "-");
    put_u64(w, a / 1000);
    char f[4] = {'.', (char)('0' + a % 1000 / 100), (char)('0' + a % 100 / 10), (char)('0' + a % 10)};
    put(w, f, 4);
}

static void put_double(jw *w, double d)
{
    if (!isfinite(d)) { /* JSON has no NaN/Inf */
        if (isnan(d))
            PUTS(w, "\"nan\"");
        else if (d > 0)
            PUTS(w, "\"inf\"");
        else
            PUTS(w, "\"-inf\"");
        return;
    }
    char tmp[40], out[40];
    int n = snprintf(tmp, sizeof(tmp), "%.17g", d);
    /* %g writes the locale's decimal point, and the job's setlocale() is
     * ours too ("12,5" in de_DE: not JSON): any byte that is not a digit,
     * sign or exponent is that point, written as '.' */
    size_t k = 0;
    for (int i = 0; i < n && i < (int)sizeof(tmp) - 1; i++) {
        char c = tmp[i];
        if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e')
            out[k++] = c;
        else if (!k || out[k - 1] != '.')
            out[k++] = '.';
    }
    put(w, out, k);
}

/* ---- JSON strings: escapes, invalid UTF-8 -> U+FFFD --------------------------------- */

/* Append the quoted, escaped form of s[0..n) to b. */
static int escape_into(tb_buf *b, const char *str, size_t n)
{
    if (buf_reserve(b, n * 6 + 2) < 0)
        return -ENOMEM;
    char *o = (char *)b->data + b->len, *start = o;
    const unsigned char *s = (const unsigned char *)str;
    static const char hex[] = "0123456789abcdef";
    *o++ = '"';
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            *o++ = '\\';
            switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\t': *o++ = 't'; break;
            case '\r': *o++ = 'r'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            }
            i++;
            continue;
        }
        size_t k = tb_utf8_seq_len(s + i, n - i);
        if (k) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(o, "\\ufffd", 6);
            o += 6;
            i++;
        }
    }
    *o++ = '"';
    b->len += (size_t)(o - start);
    return 0;
}

static void put_jstr(jw *w, const char *s)
{
    tb_buf t = {0};
    if (escape_into(&t, s, strlen(s)) < 0) {
        w->err = -ENOMEM;
        return;
    }
    put(w, (const char *)t.data, t.len);
    free(t.data);
}

/* ---- per-plane escaped name tables ------------------------------------------------------ */

typedef struct names {
    tb_buf arena;
    size_t *ev_off, *st_off; /* [id] -> offset; [id+1]-[id] = length */
} names;

static void names_free(names *nm)
{
    free(nm->arena.data);
    free(nm->ev_off);
    free(nm->st_off);
    memset(nm, 0, sizeof(*nm));
}

static int names_build(names *nm, const tb_plane *p)
{
    memset(nm, 0, sizeof(*nm));
    nm->ev_off = calloc(p->nevent_meta + 1, sizeof(size_t));
    nm->st_off = calloc(p->nstat_meta + 1, sizeof(size_t));
    if (!nm->ev_off || !nm->st_off)
        return -ENOMEM;
    for (size_t i = 0; i < p->nevent_meta; i++) {
        nm->ev_off[i] = nm->arena.len;
        const char *s = i ? p->event_meta[i].name : "";
        if (escape_into(&nm->arena, s, strlen(s)) < 0)
            return -ENOMEM;
    }
    nm->ev_off[p->nevent_meta] = nm->arena.len;
    for (size_t i = 0; i < p->nstat_meta; i++) {
        nm->st_off[i] = nm->arena.len;
        const char *s = (i && p->stat_meta[i]) ? p->stat_meta[i] : "";
        if (escape_into(&nm->arena, s, strlen(s)) < 0)
            return -ENOMEM;
    }
    nm->st_off[p->nstat_meta] = nm->arena.len;
    return 0;
}

static inline void put_ev_name(jw *w, const names *nm, const tb_plane *p, uint32_t id)
{
    if (id >= p->nevent_meta)
        id = 0;
    put(w, (const char *)nm->arena.data + nm->ev_off[id], nm->ev_off[id + 1] - nm->ev_off[id]);
}

static inline void put_st_name(jw *w, const names *nm, const tb_plane *p, uint32_t id)
{
    if (id >= p->nstat_meta)
        id = 0;
    put(w, (const char *)nm->arena.data + nm->st_off[id], nm->st_off[id + 1] - nm->st_off[id]);
}

/* ---- correlation id sets ------------------------------------------------------------------ */

typedef struct u64set {
    uint64_t *keys;
    uint8_t *used;
    uint32_t *count; /* events carrying the key (collect_corr) */
    uint32_t *taken; /* of those, written so far (chrome_emit) */
    size_t mask, n;
} u64set;

static size_t set_slot(const u64set *s, uint64_t k)
{
    size_t j = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & s->mask;
    while (s->used[j] && s->keys[j] != k)
        j = (j + 1) & s->mask;
    return j;
}

static int set_init(u64set *s, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2 + 2)
        cap *= 2;
    s->keys = calloc(cap, sizeof(uint64_t));
    s->used = calloc(cap, 1);
    s->count = calloc(cap, sizeof(uint32_t));
    s->taken = calloc(cap, sizeof(uint32_t));
    s->mask = cap - 1;
    s->n = 0;
    return (s->keys && s->used && s->count && s->taken) ? 0 : -ENOMEM;
}

static void set_add(u64set *s, uint64_t k)
{
    size_t j = set_slot(s, k);
    if (!s->used[j]) {
        s->used[j] = 1;
        s->keys[j] = k;
        s->n++;
    }
    if (s->count[j] < UINT32_MAX)
        s->count[j]++;
}

/* Events carrying k (0: none). */
static uint32_t set_count(const u64set *s, uint64_t k)
{
    size_t j = set_slot(s, k);
    return s->used[j] ? s->count[j] : 0;
}

/* The next of k's events to be written: 0 for the first. */
static uint32_t set_take(u64set *s, uint64_t k)
{
    size_t j = set_slot(s, k);
    return s->used[j] ? s->taken[j]++ : 0;
}

static void set_free(u64set *s)
{
    free(s->keys);
    free(s->used);
    free(s->count);
    free(s->taken);
}

/* The flow id of the k-th GPU event carrying correlation id corr, or
 * UINT64_MAX where it has none of its own (past 32-bit ids or 2^21 events:
 * those share the launch's flow, which ends at the first). */
#define FLOW_EXTRA_MAX (1u << 21)
static uint64_t flow_id(uint64_t corr, uint32_t k)
{
    if (k == 0)
        return corr;
    if (corr >> 32 || k >= FLOW_EXTRA_MAX)
        return UINT64_MAX;
    return corr + ((uint64_t)k << 32);
}

#define GPU_PLANE_PREFIX "/device:GPU:"

static int is_gpu_plane(const tb_plane *p)
{
    return strncmp(p->name, GPU_PLANE_PREFIX, sizeof(GPU_PLANE_PREFIX) - 1) == 0;
}

/* N of a "/device:GPU:N" plane */
static int64_t gpu_index(const tb_plane *p) { return strtoll(p->name + sizeof(GPU_PLANE_PREFIX) - 1, NULL, 10); }

static int is_host_plane(const tb_plane *p)
{
    return strcmp(p->name, "/host:CPU") == 0;
}

static int stat_as_u64(const tb_stat *st, uint64_t *out)
{
    switch (st->type) {
    case TB_STAT_UINT64: *out = st->v.u; return 1;
    case TB_STAT_INT64: *out = (uint64_t)st->v.i; return 1;
    default: return 0;
    }
}

/* A plane stat as a number: 1 and *v when present. */
static int plane_num_stat(const tb_plane *p, const char *name, int64_t *v)
{
    const tb_stat *st = tb_plane_find_stat(p, name);
    uint64_t u;
    if (!st || !stat_as_u64(st, &u))
        return 0;
    *v = (int64_t)u;
    return 1;
}

static int plane_pid_stat(const tb_plane *p, int64_t *pid)
{
    return plane_num_stat(p, TB_ST_PID, pid);
}

static const char *plane_str_stat(const tb_plane *p, const char *name)
{
    const tb_stat *st = tb_plane_find_stat(p, name);
    return st && st->type == TB_STAT_REF ? tb_plane_stat_name(p, st->v.ref) : NULL;
}

/* Kineto's top-level keys that tools reading torch.profiler traces use to
 * tell ranks and devices apart: "distributedInfo" (the rank and world size,
 * when the job said them: tbprof_rank) and "deviceProperties" (one entry
 * per GPU plane, from its device facts; keys only for facts we have). */
static void put_kineto_meta(jw *w, const tb_space *s)
{
    int64_t v;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (!is_host_plane(p) || !plane_num_stat(p, TB_ST_RANK, &v))
            continue;
        PUTS(w, "\"distributedInfo\":{\"rank\":");
        put_i64(w, v);
        if (plane_num_stat(p, TB_ST_WORLD_SIZE, &v)) {
            PUTS(w, ",\"world_size\":");
            put_i64(w, v);
        }
        PUTS(w, "},\n");
        break;
    }
    static const struct {
        const char *stat, *key;
    } facts[] = {{TB_ST_DEV_MEM_SIZE, "totalGlobalMem"},
                 {TB_ST_DEV_CC_MAJOR, "computeMajor"},
                 {TB_ST_DEV_CC_MINOR, "computeMinor"},
                 {TB_ST_DEV_CORE_COUNT, "numSms"}};
    int n = 0;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (!is_gpu_plane(p))
            continue;
        if (n++)
            PUTS(w, ",{\"id\":");
        else
            PUTS(w, "\"deviceProperties\":[{\"id\":");
        put_i64(w, gpu_index(p));
        const char *name = plane_str_stat(p, TB_ST_DEV_NAME);
        if (name) {
            PUTS(w, ",\"name\":");
            put_jstr(w, name);
        }
        for (size_t f = 0; f < sizeof(facts) / sizeof(facts[0]); f++)
            if (plane_num_stat(p, facts[f].stat, &v)) {
                put(w, ",\"", 2);
                put(w, facts[f].key, strlen(facts[f].key));
                put(w, "\":", 2);
                put_i64(w, v);
            }
        PUTS(w, "}");
    }
    if (n)
        PUTS(w, "],\n");
}

/* Collect correlation ids of (gpu ? GPU : non-GPU) planes: a count of the
 * stats first, so the table is sized by the ids (launches), not by all the
 * events (a CPU-heavy host plane's millions of samples). */
static int collect_corr(const tb_space *s, int gpu, u64set *set)
{
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && set_init(set, n) < 0)
            return -ENOMEM;
        for (size_t i = 0; i < s->nplanes; i++) {
            const tb_plane *p = s->planes[i];
            uint32_t cm;
            if (is_gpu_plane(p) != gpu || !(cm = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID)))
                continue;
            for (size_t j = 0; j < p->nlines; j++) {
                const tb_line *l = p->lines[j];
                for (size_t e = 0; e < l->nevents; e++) {
                    const tb_stat *st = tb_event_stats(l, &l->events[e]);
                    for (uint32_t k = 0; k < l->events[e].nstats; k++) {
                        uint64_t v;
                        if (st[k].meta == cm && stat_as_u64(&st[k], &v)) {
                            if (pass == 0)
                                n++;
                            else
                                set_add(set, v);
                        }
                    }
                }
            }
        }
    }
    return 0;
}

/* ---- the document ------------------------------------------------------------------------- */

static void put_meta_event(jw *w, int *first, const char *what, int64_t pid, int64_t tid, int have_tid,
                           const char *argkey, const char *name, int64_t num)
{
    if (!*first)
        PUTS(w, ",\n");
    *first = 0;
    PUTS(w, "{\"ph\":\"M\",\"name\":\"");
    put(w, what, strlen(what));
    PUTS(w, "\",\"pid\":");
    put_i64(w, pid);
    if (have_tid) {
        PUTS(w, ",\"tid\":");
        put_i64(w, tid);
    }
    PUTS(w, ",\"args\":{\"");
    put(w, argkey, strlen(argkey));
    PUTS(w, "\":");
    if (name)
        put_jstr(w, name);
    else
        put_i64(w, num);
    PUTS(w, "}}");
}

static void put_stat_value(jw *w, const names *nm, const tb_plane *p, const tb_stat *st)
{
    switch (st->type) {
    case TB_STAT_INT64: put_i64(w, st->v.i); break;
    case TB_STAT_UINT64: put_u64(w, st->v.u); break;
    case TB_STAT_DOUBLE: put_double(w, st->v.d); break;
    case TB_STAT_REF: put_st_name(w, nm, p, st->v.ref); break;
    default: PUTS(w, "null");
    }
}

static void put_flow(jw *w, int start, uint64_t id, int64_t pid, int64_t tid, int64_t ts)
{
    PUTS(w, ",\n{\"ph\":\"");
    put(w, start ? "s" : "f", 1);
    PUTS(w, "\",");
    if (!start)
        PUTS(w, "\"bp\":\"e\",");
    PUTS(w, "\"cat\":\"ac2g\",\"name\":\"ac2g\",\"id\":");
    put_u64(w, id);
    PUTS(w, ",\"pid\":");
    put_i64(w, pid);
    PUTS(w, ",\"tid\":");
    put_i64(w, tid);
    PUTS(w, ",\"ts\":");
    put_us(w, ts);
    PUTS(w, "}");
}

/* ---- Kineto's argument names for GPU work ------------------------------------------------ */

/* Kineto's trace.json carries GPU work's facts under its own argument names,
 * which tools reading torch.profiler traces (Holistic Trace Analysis, the
 * PyTorch trace viewers) look for: device, stream, correlation; for
 * kernels grid, block, registers per thread, shared memory (static +
 * dynamic) and est. achieved occupancy %; for copies and memsets bytes and
 * memory bandwidth (GB/s). They are derived from our stats and written
 * after them. A details string's fragment is made once per interned
 * value. */
typedef struct kineto {
    int64_t device;                 /* the plane's GPU index */
    uint32_t kd, md, msd, stream;   /* stat ids (0: absent) */
    uint32_t tf_op;                 /* on GPU work it repeats nvtx_range, for xprof: not written */
    char **frag;                    /* details ref id -> fragment; NULL: not made yet */
    uint64_t *bytes;                /* copy/memset details ref id -> bytes + 2 (1: none, 0: not yet) */
    size_t n;
} kineto;

static void kineto_free(kineto *k)
{
    for (size_t i = 0; k->frag && i < k->n; i++)
        free(k->frag[i]);
    free(k->frag);
    free(k->bytes);
    memset(k, 0, sizeof(*k));
}

static int kineto_init(kineto *k, const tb_plane *p)
{
    memset(k, 0, sizeof(*k));
    k->device = gpu_index(p);
    k->kd = tb_plane_find_stat_meta(p, TB_ST_KERNEL_DETAILS);
    k->md = tb_plane_find_stat_meta(p, TB_ST_MEMCPY_DETAILS);
    k->msd = tb_plane_find_stat_meta(p, TB_ST_MEMSET_DETAILS);
    k->stream = tb_plane_find_stat_meta(p, TB_ST_STREAM_ID);
    k->tf_op = tb_plane_find_stat_meta(p, TB_ST_TF_OP);
    k->n = p->nstat_meta;
    k->frag = calloc(k->n + 1, sizeof(*k->frag));
    k->bytes = calloc(k->n + 1, sizeof(*k->bytes));
    return k->frag && k->bytes ? 0 : -ENOMEM;
}

/* "X,Y,Z" of key in details as a JSON array, or "[]" */
static void dims(const char *details, const char *key, char *out, size_t n)
{
    char v[64];
    if (!tb_details_str(details, key, v, sizeof v) || !v[0] || strspn(v, "0123456789,") != strlen(v))
        snprintf(out, n, "[]");
    else
        snprintf(out, n, "[%s]", v);
}

/* A details number as a JSON integer: -1 (unknown) for nan, inf or
 * anything too large to print whole in the fragment (a foreign file's). */
static double whole_or_unknown(double v)
{
    return isfinite(v) && fabs(v) < 1e15 ? v : -1;
}

static const char *kernel_frag(kineto *k, const tb_plane *p, uint32_t ref)
{
    if (ref >= k->n)
        return "";
    if (!k->frag[ref]) {
        const char *d = tb_plane_stat_name(p, ref);
        double regs = -1, ss = 0, ds = 0, occ = -1;
        char grid[80], block[80], f[320];
        tb_details_num(d, "regs", &regs);
        tb_details_num(d, "static_shared", &ss);
        tb_details_num(d, "dynamic_shared", &ds);
        tb_details_num(d, "occ_pct", &occ);
        dims(d, "grid", grid, sizeof grid);
        dims(d, "block", block, sizeof block);
        snprintf(f, sizeof f,
                 ",\"grid\":%s,\"block\":%s,\"registers per thread\":%.0f,\"shared memory\":%.0f,"
                 "\"est. achieved occupancy %%\":%.0f",
                 grid, block, whole_or_unknown(regs), whole_or_unknown(ss + ds), whole_or_unknown(occ));
        k->frag[ref] = strdup(f);
        if (!k->frag[ref])
            return "";
    }
    return k->frag[ref];
}

/* bytes of a copy ("size:N") or memset ("num_bytes:N") details string; -1: none */
static int64_t details_bytes(kineto *k, const tb_plane *p, uint32_t ref, const char *key)
{
    if (ref >= k->n)
        return -1;
    if (!k->bytes[ref]) {
        double v = -1;
        tb_details_num(tb_plane_stat_name(p, ref), key, &v);
        k->bytes[ref] = v >= 0 && v < 1e18 ? (uint64_t)v + 2 : 1; /* (a double past uint64 is undefined) */
    }
    return (int64_t)k->bytes[ref] - 2;
}

/* Kineto's args of a GPU event, from the stats the caller picked out while
 * writing the others: its stream stat (NULL: the line is the stream, or
 * none) and its kernel_details / memcpy_details / Memset_details stat
 * (NULL: none). */
static void put_kineto(jw *w, kineto *k, const tb_plane *p, const tb_line *l, const tb_event *ev,
                       const tb_stat *stream_st, const tb_stat *details)
{
    int64_t stream = -1, bytes = -1;
    const char *kfrag = "";
    uint64_t v;
    if (strncmp(l->name, "Stream #", 8) == 0)
        stream = l->id;
    else if (stream_st && stat_as_u64(stream_st, &v))
        stream = (int64_t)v;
    if (details && details->type == TB_STAT_REF) {
        if (details->meta == k->kd)
            kfrag = kernel_frag(k, p, details->v.ref);
        else
            bytes = details_bytes(k, p, details->v.ref, details->meta == k->md ? "size" : "num_bytes");
    }
    PUTS(w, "\"device\":");
    put_i64(w, k->device);
    if (stream >= 0) {
        PUTS(w, ",\"stream\":");
        put_i64(w, stream);
    }
    put(w, kfrag, strlen(kfrag));
    if (bytes >= 0) {
        PUTS(w, ",\"bytes\":");
        put_i64(w, bytes);
        PUTS(w, ",\"memory bandwidth (GB/s)\":");
        put_double(w, ev->dur_ns > 0 ? (double)bytes / (double)ev->dur_ns : 0.0);
    }
}

/* A GPU memory timeline event (stats allocator_name and bytes_allocated,
 * see stats.h) also becomes a point of a counter track named after its
 * allocator, which Perfetto draws as a graph of the bytes allocated. */
static void put_counter(jw *w, const names *nm, const tb_plane *p, const tb_stat *alloc, const tb_stat *total,
                        int64_t pid, int64_t ts)
{
    PUTS(w, ",\n{\"ph\":\"C\",\"cat\":\"gpu_memory\",\"name\":");
    put_st_name(w, nm, p, alloc->v.ref);
    PUTS(w, ",\"pid\":");
    put_i64(w, pid);
    PUTS(w, ",\"ts\":");
    put_us(w, ts);
    PUTS(w, ",\"args\":{\"" TB_ST_BYTES_ALLOCATED "\":");
    put_stat_value(w, nm, p, total);
    PUTS(w, "}}");
}

/* The tid of line j: its id. Perfetto reads a tid past uint32 as none and
 * puts the events on the process's main thread (tid = pid): the host line
 * of GPU memory events without a traced call (id 2^32 + 1) took over the
 * main thread's track and its name. Such lines get the highest tids that no
 * line of the plane has, in line order. */
static int64_t line_tid(const tb_plane *p, size_t j)
{
#define IN_RANGE(id) ((id) >= 0 && (id) <= (int64_t)UINT32_MAX)
    if (IN_RANGE(p->lines[j]->id))
        return p->lines[j]->id;
    int64_t t = UINT32_MAX;
    for (size_t i = 0;; i++) {
        if (i != j && IN_RANGE(p->lines[i]->id))
            continue;
        for (size_t k = 0; k < p->nlines; k++)
            if (p->lines[k]->id == t) {
                t--;
                k = (size_t)-1; /* again, from the first line */
            }
        if (i == j)
            return t;
        t--; /* line i's */
    }
#undef IN_RANGE
}

static int chrome_emit(tb_space *s, jw *w)
{
    u64set host_corr = {0}, gpu_corr = {0};
    int r = tb_space_sort(s);
    if (r == 0)
        r = collect_corr(s, 1, &gpu_corr);
    if (r == 0)
        r = collect_corr(s, 0, &host_corr);
    int64_t *pids = calloc(s->nplanes + 1, sizeof(int64_t));
    if (r < 0 || !pids) {
        set_free(&host_corr);
        set_free(&gpu_corr);
        free(pids);
        return -ENOMEM;
    }

    /* pids */
    int64_t host_pid = -1;
    for (size_t i = 0; i < s->nplanes; i++)
        if (is_host_plane(s->planes[i]) && plane_pid_stat(s->planes[i], &host_pid))
            break;
    int collide = 0;
    for (size_t i = 0; i < s->nplanes; i++)
        if (is_gpu_plane(s->planes[i]) && gpu_index(s->planes[i]) == host_pid)
            collide = 1;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        if (is_gpu_plane(p))
            pids[i] = gpu_index(p) + (collide ? 1000000 : 0);
        else if (is_host_plane(p) && host_pid >= 0)
            pids[i] = host_pid;
        else /* past any pid Linux gives (PID_MAX_LIMIT, 2^22): never the job's */
            pids[i] = 4194304 + p->id;
    }

    PUTS(w, "{\"displayTimeUnit\":\"ns\",\n");
    put_kineto_meta(w, s);
    PUTS(w, "\"traceEvents\":[\n");
    int first = 1;
    for (size_t i = 0; i < s->nplanes; i++) {
        const tb_plane *p = s->planes[i];
        put_meta_event(w, &first, "process_name", pids[i], 0, 0, "name", p->name, 0);
        put_meta_event(w, &first, "process_sort_index", pids[i], 0, 0, "sort_index", NULL, (int64_t)i);
        for (size_t j = 0; j < p->nlines; j++) {
            const tb_line *l = p->lines[j];
            put_meta_event(w, &first, "thread_name", pids[i], line_tid(p, j), 1, "name",
                           l->display_name && *l->display_name ? l->display_name : l->name, 0);
            put_meta_event(w, &first, "thread_sort_index", pids[i], line_tid(p, j), 1, "sort_index", NULL,
                           (int64_t)j);
        }
    }
    for (size_t i = 0; i < s->nplanes && !w->err; i++) {
        const tb_plane *p = s->planes[i];
        names nm;
        if (names_build(&nm, p) < 0) {
            names_free(&nm);
            w->err = -ENOMEM;
            break;
        }
        int gpu = is_gpu_plane(p);
        kineto ka = {0};
        if (gpu && kineto_init(&ka, p) < 0) {
            kineto_free(&ka);
            names_free(&nm);
            w->err = -ENOMEM;
            break;
        }
        uint32_t cm = tb_plane_find_stat_meta(p, TB_ST_CORRELATION_ID);
        uint32_t am = gpu ? 0 : tb_plane_find_stat_meta(p, TB_ST_ALLOCATOR_NAME),
                 bm = am ? tb_plane_find_stat_meta(p, TB_ST_BYTES_ALLOCATED) : 0;
        /* xprof's step links across threads (ranges.h): nothing for Perfetto */
        uint32_t links[4] = {
            tb_plane_find_stat_meta(p, TB_ST_PRODUCER_TYPE), tb_plane_find_stat_meta(p, TB_ST_PRODUCER_ID),
            tb_plane_find_stat_meta(p, TB_ST_CONSUMER_TYPE), tb_plane_find_stat_meta(p, TB_ST_CONSUMER_ID)};
        /* pid as text once per plane */
        for (size_t j = 0; j < p->nlines && !w->err; j++) {
            const tb_line *l = p->lines[j];
            const int64_t tid = line_tid(p, j);
            for (size_t e = 0; e < l->nevents; e++) {
                const tb_event *ev = &l->events[e];
                const tb_stat *st = tb_event_stats(l, ev);
                const char *cat = ev->meta < p->nevent_meta
                                      ? tb_category_name((tb_category)p->event_meta[ev->meta].category)
                                      : "";
                if (!first)
                    PUTS(w, ",\n");
                first = 0;
                PUTS(w, "{\"ph\":\"X\",\"cat\":\"");
                put(w, cat, strlen(cat));
                PUTS(w, "\",\"name\":");
                put_ev_name(w, &nm, p, ev->meta);
                PUTS(w, ",\"pid\":");
                put_i64(w, pids[i]);
                PUTS(w, ",\"tid\":");
                put_i64(w, tid);
                PUTS(w, ",\"ts\":");
                put_us(w, ev->start_ns);
                PUTS(w, ",\"dur\":");
                put_us(w, ev->dur_ns);
                uint64_t corr = 0;
                int has_corr = 0;
                const tb_stat *alloc = NULL, *total = NULL, *stream_st = NULL, *details = NULL;
                if (ev->nstats) {
                    /* correlation_id is written as Kineto's "correlation", and on
                     * GPU work the stream and a kernel's kernel_details as
                     * Kineto's fields (put_kineto) */
                    PUTS(w, ",\"args\":{");
                    int na = 0;
                    for (uint32_t k = 0; k < ev->nstats; k++) {
                        if (cm && st[k].meta == cm) {
                            if (!has_corr)
                                has_corr = stat_as_u64(&st[k], &corr);
                            continue;
                        }
                        if (gpu && st[k].meta) {
                            uint32_t m = st[k].meta;
                            if (m == ka.stream) {
                                stream_st = &st[k];
                                continue; /* put_kineto writes it */
                            }
                            if (m == ka.kd || m == ka.md || m == ka.msd)
                                details = &st[k];
                            if (m == ka.kd)
                                continue; /* put_kineto spells it out */
                            if (m == ka.tf_op)
                                continue;
                        }
                        if (st[k].meta && (st[k].meta == links[0] || st[k].meta == links[1] ||
                                           st[k].meta == links[2] || st[k].meta == links[3]))
                            continue;
                        if (am && st[k].meta == am && st[k].type == TB_STAT_REF)
                            alloc = &st[k];
                        if (bm && st[k].meta == bm)
                            total = &st[k];
                        if (na++)
                            PUTS(w, ",");
                        put_st_name(w, &nm, p, st[k].meta);
                        PUTS(w, ":");
                        put_stat_value(w, &nm, p, &st[k]);
                    }
                    if (has_corr) {
                        if (na++)
                            PUTS(w, ",");
                        PUTS(w, "\"correlation\":");
                        put_u64(w, corr);
                    }
                    if (gpu) {
                        if (na++)
                            PUTS(w, ",");
                        put_kineto(w, &ka, p, l, ev, stream_st, details);
                    }
                    PUTS(w, "}");
                }
                PUTS(w, "}");
                if (has_corr && gpu) {
                    uint64_t id = flow_id(corr, set_take(&gpu_corr, corr));
                    if (set_count(&host_corr, corr) && id != UINT64_MAX)
                        put_flow(w, 0, id, pids[i], tid, ev->start_ns);
                } else if (has_corr && set_count(&host_corr, corr)) {
                    uint32_t n = set_count(&gpu_corr, corr); /* one flow to each */
                    for (uint32_t k = 0; k < n && flow_id(corr, k) != UINT64_MAX; k++)
                        put_flow(w, 1, flow_id(corr, k), pids[i], tid, ev->start_ns);
                }
                if (alloc && total)
                    put_counter(w, &nm, p, alloc, total, pids[i], ev->start_ns);
            }
        }
        kineto_free(&ka);
        names_free(&nm);
    }
    PUTS(w, "\n]");
    if (s->nwarnings || s->nerrors) {
        PUTS(w, ",\"tbprof_warnings\":[");
        for (size_t i = 0; i < s->nwarnings + s->nerrors; i++) {
            if (i)
                PUTS(w, ",");
            put_jstr(w, i < s->nwarnings ? s->warnings[i] : s->errors[i - s->nwarnings]);
        }
        PUTS(w, "]");
    }
    PUTS(w, "}\n");
    set_free(&host_corr);
    set_free(&gpu_corr);
    free(pids);
    return w->err;
}

int tb_chrome_encode(tb_space *s, tb_buf *b)
{
    jw *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->out = b;
    int r = chrome_emit(s, w);
    if (r == 0) {
        jw_drain(w, 1);
        r = w->err;
    }
    free(w);
    return r;
}

static int encode_gz(tb_space *s, tb_buf *b, int (*sink)(void *, const void *, size_t), void *ctx)
{
    const char *why = NULL;
    const tb_zlib *zl = tb_zlib_get(&why);
    if (why)
        tb_warn_once("gzip files are written without compression in this process: %s", why);
    jw *w = calloc(1, sizeof(*w));
    z_stream *z = calloc(1, sizeof(*z));
    if (!w || !z) {
        free(w);
        free(z);
        return -ENOMEM;
    }
    /* level 1: the agent writes this on the job's machine; speed over ratio */
    int zr = zl->deflateInit2_(z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, (int)sizeof(z_stream));
    if (zr != Z_OK) {
        free(w);
        free(z);
        return zr == Z_MEM_ERROR ? -ENOMEM : -EIO;
    }
    w->out = b;
    w->z = z;
    w->zl = zl;
    w->sink = sink;
    w->sink_ctx = ctx;
    int r = chrome_emit(s, w);
    if (r == 0) {
        jw_drain(w, 1);
        r = w->err;
    }
    zl->deflateEnd(z);
    free(z);
    free(w);
    return r;
}

int tb_chrome_encode_gz(tb_space *s, tb_buf *b)
{
    return encode_gz(s, b, NULL, NULL);
}

int tb_chrome_encode_gz_stream(tb_space *s, int (*write)(void *ctx, const void *data, size_t len), void *ctx)
{
    tb_buf scratch = {0};
    int r = write ? encode_gz(s, &scratch, write, ctx) : -EINVAL;
    tb_buf_free(&scratch);
    return r;
}

/* A user-named file (tbprof convert): written to a temp name beside it and
 * renamed over the target, so a reader sees the old file or the new one. */
int tb_chrome_write_gz(tb_space *s, const char *path)
{
    tb_buf gz = {0};
    int r = tb_chrome_encode_gz(s, &gz);
    if (r < 0) {
        tb_buf_free(&gz);
        return r;
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
        tb_buf_free(&gz);
        return -ENAMETOOLONG;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        r = -errno;
        tb_buf_free(&gz);
        return r;
    }
    const uint8_t *p = gz.data;
    size_t left = gz.len;
    while (left && r == 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            r = n < 0 ? -errno : -EIO;
        else {
            p += n;
            left -= (size_t)n;
        }
    }
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    tb_buf_free(&gz);
    return r;
}
