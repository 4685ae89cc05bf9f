/* nvtx_record.c - NVTX ranges recorded while capturing (see nvtx_record.h).
 *
 * Memory: start() takes the capture's share of TBPROF_BUFFER_MB once (none
 * while the job has not initialized NVTX: its ranges start with the next
 * capture after its first NVTX call), half
 * for fixed-size range records, half for their names (NUL-terminated, at
 * most NAME_MAX bytes each). Writers claim a record and name bytes with one
 * atomic add each; a record is published by its `ready` flag (release), and
 * its end by a release store of `end`.
 *
 * Writers and the agent: every writer holds `inflight` from before its check
 * of `tb_nvtx_recording` until its last store. stop() clears the flag, then
 * waits for `inflight` to drain (writers never block inside: a few stores),
 * so collect() reads settled records and may free them. A token carries the
 * capture's generation, so an end() for a range of an earlier capture (or of
 * the parent, after fork) touches nothing.
 */
#include "nvtx_record.h"

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "clock.h"
#include "host.h"
#include "log.h"
#include "stats.h"
#include "trace.h"
#include "torchop.h"

#define NAME_MAX_BYTES 256
#define MIN_BUDGET (64u << 10)

typedef struct rec {
    int64_t start;             /* CLOCK_MONOTONIC ns */
    _Atomic int64_t end;       /* 0 while open */
    uint32_t name_off;
    uint16_t name_len;
    uint8_t dom, flags; /* dom: tb_nvtx_name.dom; flags: TB_NVTX_REC_* */
    int32_t tid;
    atomic_int ready;
} rec;
_Static_assert(sizeof(rec) == 32, "README: 32-byte range records");
_Static_assert(NAME_MAX_BYTES <= UINT16_MAX, "name_len is 16 bits");

atomic_int tb_nvtx_recording;

static struct {
    rec *recs;
    char *names;
    size_t cap, name_cap;
    atomic_size_t nrec, name_used;
    atomic_ullong dropped;
    atomic_int inflight;
    atomic_uint gen;
    int64_t stop_mono;
    int started;
} R;

size_t tb_wide_to_utf8(const wchar_t *w, char *out, size_t cap)
{
    size_t n = 0;
    if (!cap)
        return 0;
    for (; w && *w; w++) {
        uint32_t c = (uint32_t)*w;
        char b[4];
        size_t k;
        if (c < 0x80) {
            b[0] = (char)c;
            k = 1;
        } else if (c < 0x800) {
            b[0] = (char)(0xc0 | c >> 6);
            b[1] = (char)(0x80 | (c & 0x3f));
            k = 2;
        } else if (c < 0x10000 && (c < 0xd800 || c > 0xdfff)) {
            b[0] = (char)(0xe0 | c >> 12);
            b[1] = (char)(0x80 | ((c >> 6) & 0x3f));
            b[2] = (char)(0x80 | (c & 0x3f));
            k = 3;
        } else if (c >= 0x10000 && c < 0x110000) {
            b[0] = (char)(0xf0 | c >> 18);
            b[1] = (char)(0x80 | ((c >> 12) & 0x3f));
            b[2] = (char)(0x80 | ((c >> 6) & 0x3f));
            b[3] = (char)(0x80 | (c & 0x3f));
            k = 4;
        } else {
            b[0] = '?'; /* a surrogate or out of range: not a character */
            k = 1;
        }
        if (n + k + 1 > cap)
            break;
        memcpy(out + n, b, k);
        n += k;
    }
    out[n] = '\0';
    return n;
}

/* Bytes of a UTF-8 name to keep: at most max, not cutting a character. */
static size_t cut_utf8(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

/* A token: bit 63, 31 bits of the capture's generation, record index + 1. */
static uint32_t gen_bits(void) { return atomic_load(&R.gen) & 0x7fffffffu; }
static uint64_t token_of(size_t i) { return TB_NVTX_TOKEN_BIT | (uint64_t)gen_bits() << 32 | (uint64_t)(i + 1); }

uint64_t tb_nvtx_rec_begin(tb_nvtx_name nm, int flags)
{
    uint64_t tok = 0;
    atomic_fetch_add(&R.inflight, 1);
    /* the sources run from step first-1 of a step window (or from a
     * trigger to the next step) on, but the profile holds only what begins
     * in the window (capture.c trims the rest): a range before it would
     * take a record the window's ranges need */
    if (!atomic_load(&tb_nvtx_recording) || !tb_agent_capturing())
        goto out;
    int64_t now = tb_mono_ns();
    size_t i = atomic_fetch_add_explicit(&R.nrec, 1, memory_order_relaxed);
    if (i >= R.cap) {
        atomic_fetch_add_explicit(&R.dropped, 1, memory_order_relaxed);
        goto out;
    }
    rec *r = &R.recs[i];
    char wbuf[NAME_MAX_BYTES + 1];
    const char *s = nm.a;
    size_t len;
    if (!s && nm.w) {
        len = tb_wide_to_utf8(nm.w, wbuf, sizeof(wbuf));
        s = wbuf;
    } else {
        len = s ? cut_utf8(s, NAME_MAX_BYTES) : 0;
    }
    size_t off = len ? atomic_fetch_add_explicit(&R.name_used, len + 1, memory_order_relaxed) : 0;
    if (len && off + len + 1 > R.name_cap) {
        len = 0; /* names full: the range stays, unnamed */
        atomic_fetch_add_explicit(&R.dropped, 1, memory_order_relaxed);
    }
    if (len) {
        memcpy(R.names + off, s, len);
        R.names[off + len] = '\0';
    }
    r->start = now;
    r->name_off = (uint32_t)off;
    r->name_len = (uint16_t)len;
    r->dom = (uint8_t)nm.dom;
    r->flags = (uint8_t)flags;
    r->tid = (int32_t)tb_gettid();
    atomic_store_explicit(&r->end, flags & TB_NVTX_REC_MARK ? now : 0, memory_order_relaxed);
    atomic_store_explicit(&r->ready, 1, memory_order_release);
    tok = token_of(i);
out:
    atomic_fetch_sub(&R.inflight, 1);
    return tok;
}

/* rec.end of a range dropped by tb_nvtx_rec_forget */
#define END_FORGOTTEN ((int64_t)-1)

static void set_end(uint64_t token, int forget)
{
    if (!(token & TB_NVTX_TOKEN_BIT))
        return;
    atomic_fetch_add(&R.inflight, 1);
    if (atomic_load(&tb_nvtx_recording) && ((token >> 32) & 0x7fffffffu) == gen_bits()) {
        size_t i = (size_t)(token & 0xffffffffu) - 1;
        if (i < R.cap)
            atomic_store_explicit(&R.recs[i].end, forget ? END_FORGOTTEN : tb_mono_ns(), memory_order_release);
    }
    atomic_fetch_sub(&R.inflight, 1);
}

void tb_nvtx_rec_end(uint64_t token) { set_end(token, 0); }

void tb_nvtx_rec_forget(uint64_t token) { set_end(token, 1); }

/* ---- the source ------------------------------------------------------------------ */

static void quiesce(void)
{
    atomic_store(&tb_nvtx_recording, 0);
    while (atomic_load(&R.inflight) > 0)
        sched_yield();
}

/* The buffers dropped from R (not freed: release, or a fork child). */
static void forget_buffers(void)
{
    R.recs = NULL;
    R.names = NULL;
    R.cap = R.name_cap = 0;
    R.started = 0;
}

static void release(void)
{
    free(R.recs);
    free(R.names);
    forget_buffers();
}

static void touch_pages(void *p, size_t n)
{
    volatile char *c = p;
    for (size_t i = 0; i < n; i += 4096)
        c[i] = 0;
    if (n)
        c[n - 1] = 0;
}

static int src_start(void *ctx, const tb_capture_info *info, const char **why)
{
    (void)ctx;
    quiesce();
    release();
    atomic_store(&R.nrec, 0);
    atomic_store(&R.name_used, 0);
    atomic_store(&R.dropped, 0);
    R.stop_mono = 0;
    if (!tb_nvtx_attached() && !info->nvtx_expected) {
        /* the job has made no NVTX call yet: nothing to record, no memory
         * (with TBPROF_TORCH_OPS, torch's first comes in this capture) */
        R.started = 1;
        return 0;
    }
    size_t budget = info->buffer_bytes < MIN_BUDGET ? MIN_BUDGET : info->buffer_bytes;
    R.cap = budget / 2 / sizeof(rec);
    R.name_cap = budget / 2;
    if (R.name_cap > UINT32_MAX) /* rec.name_off is 32 bits (TBPROF_BUFFER_MB near its maximum) */
        R.name_cap = UINT32_MAX;
    R.recs = calloc(R.cap, sizeof(rec)); /* ready = 0 */
    R.names = malloc(R.name_cap);
    if (!R.recs || !R.names) {
        release();
        *why = "out of memory for NVTX ranges";
        return -ENOMEM;
    }
    /* fault every page in here, on the agent thread, not in the job's
     * ranges (a page fault per 128 records there). Not memset(0): the
     * compiler may turn malloc + memset(0) into calloc, which leaves fresh
     * mmap()ed pages untouched. */
    touch_pages(R.recs, R.cap * sizeof(rec));
    touch_pages(R.names, R.name_cap);
    atomic_fetch_add(&R.gen, 1);
    R.started = 1;
    atomic_store(&tb_nvtx_recording, 1);
    return 0;
}

static void src_stop(void *ctx)
{
    (void)ctx;
    R.stop_mono = tb_mono_ns();
    quiesce();
}

static int src_collect(void *ctx, tb_space *s)
{
    (void)ctx;
    if (!R.started)
        return 0;
    tb_plane *hp = tb_host_plane(s);
    size_t n = atomic_load(&R.nrec);
    if (n > R.cap)
        n = R.cap;
    uint64_t dropped = atomic_load(&R.dropped);
    int64_t win_begin, win_end = INT64_MAX;
    if (tb_capture_window(s, &win_begin, &win_end) < 0)
        win_end = INT64_MAX;
    int rc = 0;
    int64_t dom_stat = 0, step_stat = 0;
    uint64_t too_deep = 0;
    for (size_t i = 0; hp && i < n; i++) {
        rec *r = &R.recs[i];
        if (!atomic_load_explicit(&r->ready, memory_order_acquire))
            continue; /* claimed, never written (the writer's process forked away) */
        int64_t end = atomic_load_explicit(&r->end, memory_order_acquire);
        if (end == END_FORGOTTEN) {
            too_deep++;
            continue;
        }
        if (!end || end < r->start)
            end = R.stop_mono > r->start ? R.stop_mono : r->start; /* still open at the stop */
        tb_line *l = tb_host_line(s, r->tid);
        const char *name = r->name_len ? R.names + r->name_off : "(unnamed)";
        tb_torch_op op;
        int64_t meta = tb_nvtx_range_meta(hp, name, r->name_len ? r->name_len : strlen(name), &op);
        if (!l || meta <= 0) {
            rc = -ENOMEM;
            break;
        }
        int64_t b = tb_mono_to_epoch(r->start), e = tb_mono_to_epoch(end);
        if (e > win_end) /* open at the capture's end: cut there */
            e = win_end > b ? win_end : b;
        if (tb_line_add(l, meta, b, e - b) < 0)
            continue;
        tb_torch_op_stats(hp, l, &op);
        if (r->flags & TB_NVTX_REC_STEP) { /* not an op: tb_space_link_ranges names GPU work past it */
            if (!step_stat)
                step_stat = tb_plane_stat_meta(hp, TB_ST_STEP_RANGE);
            if (step_stat > 0)
                tb_line_stat_i64(l, step_stat, 1);
        }
        if (!r->dom)
            continue;
        const char *dn = tb_nvtx_domain_name(r->dom);
        if (dn && !dom_stat)
            dom_stat = tb_plane_stat_meta(hp, TB_ST_NVTX_DOMAIN);
        if (dn && dom_stat > 0)
            tb_line_stat_str(l, dom_stat, dn);
    }
    if (hp && (dropped || too_deep || atomic_load(&R.nrec) > 0))
        tb_plane_stat_u64(hp, TB_ST_NVTX_DROPPED, dropped + too_deep);
    if (too_deep) {
        tb_space_warn(s,
                      "NVTX: %llu ranges dropped: nested more than %d deep on one thread, whose innermost ranges "
                      "are kept (a push without its pop, repeated?)",
                      (unsigned long long)too_deep, TB_NVTX_STACK_DEPTH);
    }
    if (dropped) {
        tb_space_warn(s,
                      "NVTX: %llu ranges or names dropped: the capture's share of TBPROF_BUFFER_MB for NVTX "
                      "(%zu ranges) was full",
                      (unsigned long long)dropped, R.cap);
    }
    release();
    return rc;
}

/* a fork child's copies of the parent's buffers, still reachable for LSan
 * (volatile: stores the compiler keeps) */
static void *volatile child_left[2];

static void src_atfork_child(void *ctx)
{
    (void)ctx;
    /* the parent's writers do not exist here */
    atomic_store(&tb_nvtx_recording, 0);
    atomic_store(&R.inflight, 0);
    atomic_fetch_add(&R.gen, 1);
    /* forgotten, not freed: the agent thread may have been freeing or
     * replacing them when another thread forked (kept reachable for LSan) */
    child_left[0] = R.recs;
    child_left[1] = R.names;
    forget_buffers();
}

static tb_source src = {
    .name = "nvtx",
    .start = src_start,
    .stop = src_stop,
    .collect = src_collect,
    .atfork_child = src_atfork_child,
};

tb_source *tb_nvtx_source(void) { return &src; }
