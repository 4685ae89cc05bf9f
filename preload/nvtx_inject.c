/* nvtx_inject.c - NVTX ranges whose name matches TBPROF_NVTX_STEP are steps.
 *
 * NVTX (v2 library and the header-only v3) looks up an injection library at
 * its first call: the path in NVTX_INJECTION64_PATH is dlopen()ed and its
 * InitializeInjectionNvtx2(getExportTable) is called; the library then
 * writes its handlers into that NVTX instance's function slots. Every copy
 * of NVTX in the process (each library built with the v3 headers has its own)
 * does this once. When TBPROF_NVTX_STEP is set, the preload constructor
 * points the variable at libtbprof.so itself (only when it is unset: nsys or
 * a CUPTI user that set it keep it, with one warning), and the handlers here
 * turn matching range starts into step boundaries and their ends into step
 * ends. Everything else NVTX offers stays a no-op, as with no tool attached.
 *
 * Pattern: a plain name prefix ("step" matches "step 12", "step_train"), or
 * "/regex/" (POSIX extended, unanchored). The step number comes from the
 * name when it carries one: prefix mode, the rest of the name is separators
 * (space _ : # = -) and a decimal number; regex mode, group 1 is a decimal
 * number. Otherwise each match counts the next step.
 *
 * Cost per call (idle): push/start compare the name with the prefix and bump
 * a thread-local depth; pop/end compare a depth or an id. No lock, no
 * allocation (except nvtxDomainRegisterString, bounded), no CUPTI.
 *
 * The ABI (module and callback ids, export-table layouts) is NVTX's public
 * injection interface; the structures below mirror it so this file builds
 * without the CUDA headers.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "capture.h"
#include "config.h"
#include "cudasteps.h"
#include "log.h"
#include "nvtx_record.h"
#include "tbprof/tbprof.h"

/* ---- the NVTX injection ABI ----------------------------------------------------- */

enum {
    NVTX_ETID_CALLBACKS = 1,
    NVTX_ETID_VERSIONINFO = 3,
};
enum {
    NVTX_CB_MODULE_CORE = 1,
    NVTX_CB_MODULE_CORE2 = 5,
};
enum { /* NVTX_CB_MODULE_CORE */
    CORE_MarkEx = 1,
    CORE_MarkA = 2,
    CORE_MarkW = 3,
    CORE_RangeStartEx = 4,
    CORE_RangeStartA = 5,
    CORE_RangeStartW = 6,
    CORE_RangeEnd = 7,
    CORE_RangePushEx = 8,
    CORE_RangePushA = 9,
    CORE_RangePushW = 10,
    CORE_RangePop = 11,
};
enum { /* NVTX_CB_MODULE_CORE2 */
    CORE2_DomainMarkEx = 1,
    CORE2_DomainRangeStartEx = 2,
    CORE2_DomainRangeEnd = 3,
    CORE2_DomainRangePushEx = 4,
    CORE2_DomainRangePop = 5,
    CORE2_DomainRegisterStringA = 10,
    CORE2_DomainRegisterStringW = 11,
    CORE2_DomainCreateA = 12,
    CORE2_DomainCreateW = 13,
};
enum { MSG_ASCII = 1, MSG_UNICODE = 2, MSG_REGISTERED = 3 };

typedef void (*nvtx_fn)(void);
typedef const void *(*nvtx_get_export_table)(uint32_t id);

typedef struct nvtx_etbl_callbacks {
    size_t struct_size;
    int (*GetModuleFunctionTable)(int module, nvtx_fn ***out_table, unsigned int *out_size);
} nvtx_etbl_callbacks;

typedef struct nvtx_etbl_version {
    size_t struct_size;
    uint32_t version;
    uint32_t reserved0;
    void (*SetInjectionNvtxVersion)(uint32_t version);
} nvtx_etbl_version;

typedef struct nvtx_attr { /* nvtxEventAttributes_v2 */
    uint16_t version;
    uint16_t size;
    uint32_t category;
    int32_t color_type;
    uint32_t color;
    int32_t payload_type;
    int32_t reserved0;
    uint64_t payload;
    int32_t message_type;
    union {
        const char *ascii;
        const wchar_t *unicode;
        const void *registered;
    } message;
} nvtx_attr;

_Static_assert(sizeof(nvtx_attr) == 48, "nvtxEventAttributes_v2 is 48 bytes on LP64");
_Static_assert(offsetof(nvtx_attr, message) == 40, "message at offset 40");

/* ---- pattern ---------------------------------------------------------------------- */

static struct {
    int on;
    int regex;
    regex_t re;
    char prefix[TB_CONFIG_STR];
    size_t prefix_len;
    /* regex: the literal every match begins with ("" when not known), and
     * whether it is anchored at the name's start: a name without it is no
     * match, without running the regex */
    char lit[TB_CONFIG_STR];
    size_t lit_len;
    int lit_anchored;
} pat;

static int inj_on;                /* we claimed NVTX_INJECTION64_PATH */
static int nvtx_asked;            /* TBPROF_NVTX=on */
static int xla_ranges;            /* TBPROF_XLA_RANGES=on: give XLA its "TSL" domain */
static char nvtx_owner[256];      /* NVTX_INJECTION64_PATH when another tool's */

static int sep(int c) { return c == ' ' || c == '_' || c == ':' || c == '#' || c == '=' || c == '-'; }

/* The step number in s[0..] (separators then digits, to the end). */
static int tail_number(const char *s, int64_t *num)
{
    while (sep((unsigned char)*s))
        s++;
    if (*s < '0' || *s > '9')
        return 0;
    int64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (*s - '0');
    }
    if (*s)
        return 0;
    *num = v;
    return 1;
}

/* 0: no match; 1: match, step counted; 2: match with *num. */
static int match(const char *name, int64_t *num)
{
    if (!name)
        return 0;
    if (!pat.regex) {
        if (strncmp(name, pat.prefix, pat.prefix_len))
            return 0;
        return tail_number(name + pat.prefix_len, num) ? 2 : 1;
    }
    if (pat.lit_len && (pat.lit_anchored ? strncmp(name, pat.lit, pat.lit_len) : !strstr(name, pat.lit)))
        return 0;
    regmatch_t m[2];
    if (regexec(&pat.re, name, 2, m, 0))
        return 0;
    if (m[1].rm_so >= 0 && m[1].rm_eo > m[1].rm_so && m[1].rm_eo - m[1].rm_so < 19) {
        char d[20];
        size_t len = (size_t)(m[1].rm_eo - m[1].rm_so);
        memcpy(d, name + m[1].rm_so, len);
        d[len] = '\0';
        if (tail_number(d, num))
            return 2;
    }
    return 1;
}

/* Wide names: their UTF-8 (bounded), then the same match. */
static int match_w(const wchar_t *w, int64_t *num)
{
    if (!w)
        return 0;
    char buf[256];
    tb_wide_to_utf8(w, buf, sizeof(buf));
    return match(buf, num);
}

/* Registered strings and domains: our handle is a pointer to this record
 * (magic tells which). Equal strings share one record (a program may
 * register its step name every step, or create its domain in each call);
 * all stay reachable from the table for the process lifetime, as handles
 * do (nvtxDomainDestroy is a no-op). A domain's id (1.., 0 is NVTX's
 * default domain) picks its push/pop stack and tags its recorded ranges.
 * A string's id is its match with the step pattern (match()), num its step
 * number, decided once at registration: its ranges need no match.
 *
 * Domains (at most DOM_MAX, of at most 4 KiB each) are not counted in
 * REG_MAX_BYTES: a job whose strings filled it may still create a domain.
 * Past REG_MAX_BYTES a string is not kept, but a step name still gets a
 * handle that carries its match in itself (REG_TAG: bit 0 set, which no
 * record's address has; bit 1: numbered; bits 2..: the number): the Python
 * nvtx package registers each distinct message, and a job naming each step
 * ("step 41234") passes the cap after ~30,000 steps, whose steps must go on
 * counting (a TBPROF_STEPS window late in the job). Their ranges are
 * recorded unnamed. */
#define REG_MAGIC 0x74627278u /* "tbrx" */
#define DOM_MAGIC 0x74626478u /* "tbdx" */
#define REG_MAX_BYTES (1u << 20)
#define REG_TAG ((uintptr_t)1)
#define REG_TAG_NUMBERED ((uintptr_t)2)
#define REG_BUCKETS 1024
#define DOM_MAX 255
_Static_assert(DOM_MAX <= UINT8_MAX, "nvtx_record.c keeps a range's domain in 8 bits");
typedef struct reg_str {
    uint32_t magic, id;
    int64_t num;
    struct reg_str *next;
    char s[];
} reg_str;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static reg_str *reg_table[REG_BUCKETS];
static size_t reg_bytes;
static const reg_str *domains[DOM_MAX + 1]; /* by id */
static uint32_t ndomains;

/* The handle of a registered string past the cap: a step name's REG_TAG
 * handle, else NULL (an unnamed range). */
static const void *unkept_string(const char *s, size_t len)
{
    char buf[4097];
    int64_t num = 0;
    if (!pat.on || len >= sizeof(buf))
        return NULL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    int m = match(buf, &num);
    if (!m || num < 0 || (uint64_t)num > (UINTPTR_MAX >> 2))
        return NULL;
    return (const void *)(REG_TAG | (m == 2 ? REG_TAG_NUMBERED | (uintptr_t)num << 2 : 0));
}

static const void *intern(const char *s, size_t len, uint32_t magic)
{
    uint32_t h = 2166136261u ^ magic; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    reg_str **b = &reg_table[h % REG_BUCKETS];
    pthread_mutex_lock(&reg_mu);
    reg_str *r = *b;
    while (r && (r->magic != magic || strncmp(r->s, s, len) || r->s[len]))
        r = r->next;
    if (!r) {
        size_t need = sizeof(reg_str) + len + 1;
        if (magic == DOM_MAGIC && ndomains >= DOM_MAX) {
            pthread_mutex_unlock(&reg_mu);
            tb_warn_once("NVTX: more than 255 domains; later ones are not kept (their ranges are in the "
                         "default domain)");
            return NULL;
        }
        if (magic == REG_MAGIC && reg_bytes + need > REG_MAX_BYTES) {
            pthread_mutex_unlock(&reg_mu);
            tb_warn_once("NVTX: more than 1 MiB of registered strings; later ones are not kept: ranges named "
                         "by them are unnamed (those matching TBPROF_NVTX_STEP still count steps)");
            return unkept_string(s, len);
        }
        r = malloc(need);
        if (r) {
            r->magic = magic;
            r->id = 0;
            r->num = 0;
            if (magic == DOM_MAGIC) {
                r->id = ++ndomains;
                domains[r->id] = r;
            }
            memcpy(r->s, s, len);
            r->s[len] = '\0';
            if (magic == REG_MAGIC && pat.on)
                r->id = (uint32_t)match(r->s, &r->num);
            r->next = *b;
            *b = r;
            if (magic == REG_MAGIC)
                reg_bytes += need;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return r;
}

/* The id of a domain handle: 0 for NULL (the default domain) and for
 * anything that is not one of ours. */
static uint16_t domain_id(const void *dom)
{
    const reg_str *r = dom;
    return r && !((uintptr_t)r & REG_TAG) && r->magic == DOM_MAGIC ? (uint16_t)r->id : 0;
}

const char *tb_nvtx_domain_name(unsigned id)
{
    pthread_mutex_lock(&reg_mu);
    const char *n = id && id <= ndomains ? domains[id]->s : NULL;
    pthread_mutex_unlock(&reg_mu);
    return n;
}

/* The name an attribute block carries (NULLs when it has none we read). */
static tb_nvtx_name attr_name(const nvtx_attr *a)
{
    tb_nvtx_name n = {0};
    if (!a || a->size < offsetof(nvtx_attr, message) + sizeof(a->message))
        return n;
    if (a->message_type == MSG_ASCII)
        n.a = a->message.ascii;
    else if (a->message_type == MSG_UNICODE)
        n.w = a->message.unicode;
    else if (a->message_type == MSG_REGISTERED) {
        const reg_str *r = a->message.registered;
        uintptr_t h = (uintptr_t)r;
        if (h & REG_TAG) { /* a step name past the cap */
            n.step = 1 + (h & REG_TAG_NUMBERED ? 2 : 1);
            n.step_num = (int64_t)(h >> 2);
        } else if (r && r->magic == REG_MAGIC) {
            n.a = r->s;
            n.step = (uint8_t)(1 + r->id);
            n.step_num = r->num;
        }
    }
    return n;
}

/* ---- steps and recording ------------------------------------------------------ */

/* The step pattern, checked for every range (0 when TBPROF_NVTX_STEP is unset). */
static int match_name(tb_nvtx_name n, int64_t *num)
{
    if (!pat.on)
        return 0;
    if (n.step) { /* a registered string's */
        *num = n.step_num;
        return n.step - 1;
    }
    return n.a ? match(n.a, num) : match_w(n.w, num);
}

/* Recording while capturing (TBPROF_NVTX): one relaxed load when idle. */
static inline uint64_t rec_begin(tb_nvtx_name n, int flags)
{
    if (!atomic_load_explicit(&tb_nvtx_recording, memory_order_relaxed))
        return 0;
    return tb_nvtx_rec_begin(n, flags);
}

static _Atomic uint64_t next_range_id = 1;
static _Atomic uint64_t step_range_id;   /* the start/end range that began the open step */
static _Atomic int64_t step_range_num = -1;

/* Push/pop ranges nest per thread and per domain. Each thread keeps a stack
 * for the default domain (the core API, and a NULL domain handle) and one
 * each for the first NEST_SLOTS - 1 other domains it uses; more domains on
 * one thread share the last stack, where a pop may end another domain's
 * range. Each level remembers its recorded range (token) in STACK_MAX
 * slots: the outermost STACK_FIXED levels (a step, an epoch) one slot each,
 * the levels below them in a ring of the rest, so the innermost ones always
 * have theirs: a thread that pushes without popping (a missing pop per
 * iteration) goes on recording, and a range whose slot a deeper one takes
 * is forgotten (counted as dropped), not left without its end. */
#define STACK_MAX TB_NVTX_STACK_DEPTH
#define STACK_FIXED 16
#define NEST_SLOTS 4
typedef struct nest {
    int depth, step_at;
    int64_t step_num;
    uint64_t tok[STACK_MAX];
} nest;
static __thread nest nests[NEST_SLOTS];
static __thread uint16_t nest_dom[NEST_SLOTS];

static nest *nest_of(uint16_t dom)
{
    if (!dom)
        return &nests[0];
    for (int i = 1; i < NEST_SLOTS; i++) {
        if (nest_dom[i] == dom)
            return &nests[i];
        if (!nest_dom[i]) {
            nest_dom[i] = dom;
            return &nests[i];
        }
    }
    return &nests[NEST_SLOTS - 1];
}

static int64_t begin(int m, int64_t num) { return tb_cudasteps_begin(TB_STEP_NVTX, m == 2, num); }

static void mark(tb_nvtx_name n)
{
    int64_t num = 0;
    int m = match_name(n, &num);
    if (m)
        begin(m, num);
    rec_begin(n, TB_NVTX_REC_MARK);
}

static uint64_t range_start(tb_nvtx_name n)
{
    int64_t num = 0;
    int m = match_name(n, &num);
    int64_t k = m ? begin(m, num) : -1; /* before recording: a step's own range is in its capture */
    /* a recorded range's id is its token (bit 63 set); others count up */
    uint64_t id = rec_begin(n, m ? TB_NVTX_REC_STEP : 0);
    if (!id)
        id = atomic_fetch_add_explicit(&next_range_id, 1, memory_order_relaxed);
    if (m) {
        atomic_store_explicit(&step_range_num, k, memory_order_relaxed);
        atomic_store_explicit(&step_range_id, id, memory_order_relaxed);
    }
    return id;
}

static void range_end(uint64_t id)
{
    if (id & TB_NVTX_TOKEN_BIT)
        tb_nvtx_rec_end(id);
    if (id && atomic_load_explicit(&step_range_id, memory_order_relaxed) == id) {
        int64_t k = atomic_exchange_explicit(&step_range_num, -1, memory_order_relaxed);
        atomic_store_explicit(&step_range_id, 0, memory_order_relaxed);
        tb_cudasteps_end(k);
    }
}

/* The token slot of a push/pop level (see STACK_FIXED). */
static inline int tok_slot(int level)
{
    return level < STACK_FIXED ? level : STACK_FIXED + (level - STACK_FIXED) % (STACK_MAX - STACK_FIXED);
}

static int push(nest *st, tb_nvtx_name n)
{
    /* 2^31 pushes never popped (one missed pop per iteration, for weeks):
     * refused as NVTX errors are, not a counter overflowed into a negative
     * slot index */
    if (st->depth == INT_MAX)
        return -1;
    int64_t num = 0;
    int m = match_name(n, &num);
    int level = st->depth++;
    if (m) {
        st->step_num = begin(m, num);
        st->step_at = st->depth;
    }
    uint64_t *t = &st->tok[tok_slot(level)];
    if (*t) /* a range STACK_MAX - STACK_FIXED levels up, still open: its end is lost */
        tb_nvtx_rec_forget(*t);
    /* after begin(): a step's own range is in its capture */
    *t = rec_begin(n, m ? TB_NVTX_REC_STEP : 0);
    return level;
}

static int pop(nest *st)
{
    if (st->depth <= 0)
        return -1; /* NVTX: pop without push */
    int level = st->depth - 1;
    uint64_t *t = &st->tok[tok_slot(level)];
    if (*t) { /* this level's own: deeper ones that took the slot were popped first */
        tb_nvtx_rec_end(*t);
        *t = 0;
    }
    if (st->depth == st->step_at) {
        st->step_at = 0;
        tb_cudasteps_end(st->step_num);
    }
    return --st->depth;
}

/* ---- handlers ---------------------------------------------------------------------- */

static tb_nvtx_name A(const char *s) { return (tb_nvtx_name){.a = s}; }
static tb_nvtx_name W(const wchar_t *w) { return (tb_nvtx_name){.w = w}; }
/* The name of an attribute block in domain dom. */
static tb_nvtx_name in_dom(const void *dom, const nvtx_attr *a)
{
    tb_nvtx_name n = attr_name(a);
    n.dom = domain_id(dom);
    return n;
}

static void h_MarkEx(const nvtx_attr *a) { mark(attr_name(a)); }
static void h_MarkA(const char *s) { mark(A(s)); }
static void h_MarkW(const wchar_t *s) { mark(W(s)); }
static uint64_t h_RangeStartEx(const nvtx_attr *a) { return range_start(attr_name(a)); }
static uint64_t h_RangeStartA(const char *s) { return range_start(A(s)); }
static uint64_t h_RangeStartW(const wchar_t *s) { return range_start(W(s)); }
static void h_RangeEnd(uint64_t id) { range_end(id); }
static int h_RangePushEx(const nvtx_attr *a) { return push(&nests[0], attr_name(a)); }
static int h_RangePushA(const char *s) { return push(&nests[0], A(s)); }
static int h_RangePushW(const wchar_t *s) { return push(&nests[0], W(s)); }
static int h_RangePop(void) { return pop(&nests[0]); }

static void h_DomainMarkEx(const void *dom, const nvtx_attr *a) { mark(in_dom(dom, a)); }
static uint64_t h_DomainRangeStartEx(const void *dom, const nvtx_attr *a) { return range_start(in_dom(dom, a)); }
static void h_DomainRangeEnd(const void *dom, uint64_t id)
{
    (void)dom;
    range_end(id);
}
static int h_DomainRangePushEx(const void *dom, const nvtx_attr *a)
{
    tb_nvtx_name n = in_dom(dom, a);
    return push(nest_of(n.dom), n);
}
static int h_DomainRangePop(const void *dom) { return pop(nest_of(domain_id(dom))); }
static const void *h_DomainRegisterStringA(const void *dom, const char *s)
{
    (void)dom;
    return s ? intern(s, strnlen(s, 4096), REG_MAGIC) : NULL;
}
static const void *h_DomainRegisterStringW(const void *dom, const wchar_t *w)
{
    (void)dom;
    if (!w)
        return NULL;
    char buf[4096];
    return intern(buf, tb_wide_to_utf8(w, buf, sizeof(buf)), REG_MAGIC);
}
/* XLA (JAX, TensorFlow) asks for the domain "TSL" once and, given a handle,
 * annotates every op with NVTX ranges there instead of on its own
 * profiler's annotation stack: jax.profiler and TensorFlow's profiler in
 * that process would lose their kernels' op names (and XLA would format
 * annotations while tbprof is idle). So without TBPROF_XLA_RANGES it gets
 * what no tool gives: NULL. */
static const void *domain_create(const char *name, size_t len)
{
    if (len == 3 && !memcmp(name, "TSL", 3) && !xla_ranges) {
        tb_debug("NVTX: declined XLA's domain \"TSL\" (TBPROF_XLA_RANGES=off): XLA keeps its own annotations");
        return NULL;
    }
    return intern(name, len, DOM_MAGIC);
}
static const void *h_DomainCreateA(const char *name)
{
    return name ? domain_create(name, strnlen(name, 4096)) : NULL;
}
static const void *h_DomainCreateW(const wchar_t *w)
{
    if (!w)
        return NULL;
    char buf[4096];
    return domain_create(buf, tb_wide_to_utf8(w, buf, sizeof(buf)));
}

/* ---- injection entry ---------------------------------------------------------------- */

struct slot {
    int module, cbid;
    nvtx_fn fn;
};

#define SLOT(mod, id, f) {NVTX_CB_MODULE_##mod, mod##_##id, (nvtx_fn)(f)}
static const struct slot slots[] = {
    SLOT(CORE, MarkEx, h_MarkEx),
    SLOT(CORE, MarkA, h_MarkA),
    SLOT(CORE, MarkW, h_MarkW),
    SLOT(CORE, RangeStartEx, h_RangeStartEx),
    SLOT(CORE, RangeStartA, h_RangeStartA),
    SLOT(CORE, RangeStartW, h_RangeStartW),
    SLOT(CORE, RangeEnd, h_RangeEnd),
    SLOT(CORE, RangePushEx, h_RangePushEx),
    SLOT(CORE, RangePushA, h_RangePushA),
    SLOT(CORE, RangePushW, h_RangePushW),
    SLOT(CORE, RangePop, h_RangePop),
    SLOT(CORE2, DomainMarkEx, h_DomainMarkEx),
    SLOT(CORE2, DomainRangeStartEx, h_DomainRangeStartEx),
    SLOT(CORE2, DomainRangeEnd, h_DomainRangeEnd),
    SLOT(CORE2, DomainRangePushEx, h_DomainRangePushEx),
    SLOT(CORE2, DomainRangePop, h_DomainRangePop),
    SLOT(CORE2, DomainRegisterStringA, h_DomainRegisterStringA),
    SLOT(CORE2, DomainRegisterStringW, h_DomainRegisterStringW),
    SLOT(CORE2, DomainCreateA, h_DomainCreateA),
    SLOT(CORE2, DomainCreateW, h_DomainCreateW),
};

static atomic_uint ninstances;

/* Called by each NVTX instance at its first call. Returns 1 when attached
 * (0 makes that NVTX instance a no-op and unload its handle on us). */
TBPROF_API int InitializeInjectionNvtx2(nvtx_get_export_table get)
{
    if (!inj_on || !get)
        return 0;
    const nvtx_etbl_callbacks *cb = get(NVTX_ETID_CALLBACKS);
    if (!cb || cb->struct_size < sizeof(*cb) || !cb->GetModuleFunctionTable) {
        tb_warn_once("NVTX: this NVTX has no callback export table; NVTX steps off for it");
        return 0;
    }
    const nvtx_etbl_version *ver = get(NVTX_ETID_VERSIONINFO);
    if (ver && ver->struct_size >= sizeof(*ver) && ver->SetInjectionNvtxVersion)
        ver->SetInjectionNvtxVersion(ver->version);
    int installed = 0;
    static const int modules[] = {NVTX_CB_MODULE_CORE, NVTX_CB_MODULE_CORE2};
    for (size_t mi = 0; mi < sizeof(modules) / sizeof(modules[0]); mi++) {
        int mod = modules[mi];
        nvtx_fn **table = NULL;
        unsigned int size = 0;
        if (!cb->GetModuleFunctionTable(mod, &table, &size) || !table)
            continue;
        for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
            const struct slot *s = &slots[i];
            if (s->module != mod || (unsigned)s->cbid >= size || !table[s->cbid])
                continue;
            *table[s->cbid] = s->fn;
            installed++;
        }
    }
    if (!installed) {
        tb_warn_once("NVTX: no range functions could be attached; NVTX steps off");
        return 0;
    }
    unsigned k = atomic_fetch_add(&ninstances, 1) + 1;
    tb_debug("NVTX instance %u attached (%d handlers)", k, installed);
    return 1;
}

int tb_nvtx_attached(void) { return atomic_load(&ninstances) > 0; }

/* ---- set-up (preload constructor) --------------------------------------------------- */

/* The literal that every match of the ERE re begins with, into pat.lit:
 * the characters after an optional '^' up to the first special one, less
 * the last when a quantifier follows it; none when re has an alternation
 * (each branch begins its own way). A regexec costs ~65 ns more than this
 * check on a name that does not match (2-core VM), paid by every NVTX range
 * of the job while tbprof is idle. */
static void regex_literal(const char *re)
{
    size_t n = 0, i = 0;
    pat.lit_len = 0;
    if (strchr(re, '|'))
        return;
    pat.lit_anchored = re[0] == '^';
    i = pat.lit_anchored ? 1 : 0;
    while (re[i] && !strchr(".[\\()*+?{}|^$", re[i]) && n + 1 < sizeof(pat.lit))
        pat.lit[n++] = re[i++];
    if (n && re[i] && strchr("*+?{", re[i]))
        n--; /* "ab*": the b is optional */
    pat.lit[n] = '\0';
    pat.lit_len = n;
}

/* Compile TBPROF_NVTX_STEP into pat; 0 when it is unset or bad. */
static int compile_pattern(const char *p)
{
    size_t len = strlen(p);
    if (!len)
        return 0;
    if (p[0] == '/') { /* config.c checked that it compiles */
        char re[TB_CONFIG_STR];
        if (len < 3 || len - 2 >= sizeof(re))
            return 0;
        memcpy(re, p + 1, len - 2);
        re[len - 2] = '\0';
        if (regcomp(&pat.re, re, REG_EXTENDED)) {
            tb_warn("TBPROF_NVTX_STEP: regex does not compile; NVTX steps off");
            return 0;
        }
        pat.regex = 1;
        regex_literal(re);
    } else {
        memcpy(pat.prefix, p, len + 1);
        pat.prefix_len = len;
    }
    return 1;
}

void tb_nvtx_init(const tb_config *c)
{
    int steps = compile_pattern(c->nvtx_step);
    nvtx_asked = c->nvtx;
    xla_ranges = c->xla_ranges;
    if (!steps && !c->nvtx)
        return;
    /* who wants the injection, for the messages */
    const char *who = steps ? "TBPROF_NVTX_STEP" : "TBPROF_NVTX";
    Dl_info di;
    char self[PATH_MAX];
    if (!dladdr((void *)tb_nvtx_init, &di) || !di.dli_fname || !realpath(di.dli_fname, self)) {
        tb_warn("%s: cannot find libtbprof.so's own path; NVTX steps and ranges off", who);
        return;
    }
    const char *cur = getenv("NVTX_INJECTION64_PATH");
    if (cur && cur[0]) {
        char real[PATH_MAX];
        if (!realpath(cur, real) || strcmp(real, self)) {
            /* nsys, or CUPTI (which then records the ranges as markers), or
             * another tool: theirs. Only a step pattern is worth a warning. */
            snprintf(nvtx_owner, sizeof(nvtx_owner), "%.200s", cur);
            if (steps)
                tb_warn("TBPROF_NVTX_STEP: NVTX_INJECTION64_PATH is already set to '%.200s' (nsys, CUPTI or "
                        "another tool); left as is, NVTX steps off",
                        cur);
            else
                tb_debug("NVTX_INJECTION64_PATH is '%.200s': NVTX ranges go to that tool, not tbprof", cur);
            return;
        }
    } else if (setenv("NVTX_INJECTION64_PATH", self, 0)) {
        tb_warn("%s: cannot set NVTX_INJECTION64_PATH; NVTX steps and ranges off", who);
        return;
    }
    pat.on = steps;
    inj_on = 1;
    if (steps)
        tb_debug("NVTX steps: ranges matching '%s' (NVTX_INJECTION64_PATH=%s)", c->nvtx_step, self);
}

int tb_nvtx_recording_available(const char **why)
{
    static char reason[300];
    if (inj_on && nvtx_asked)
        return 1;
    *why = NULL;
    if (nvtx_asked && nvtx_owner[0] && !strstr(nvtx_owner, "cupti")) {
        snprintf(reason, sizeof(reason), "NVTX_INJECTION64_PATH is %.200s (that tool gets the ranges)", nvtx_owner);
        *why = reason;
    }
    return 0;
}
