/* translate.c - CUPTI activity records -> tb_space (see translate.h).
 *
 * Hot path: one record -> one tb_line_add and a few stats. Everything that
 * would cost a format or an intern per record is cached: kernel names by
 * their CUPTI name pointer (shared by all records of one kernel), and the
 * kernel_details / memcpy_details strings by their fields. */
#include "translate.h"

#include <errno.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_occupancy.h>

#include "host.h"
#include "record_compat.h"
#include "stats.h"
#include "symbols.h"
#include "torchop.h"
#include "util.h"

enum { T_COMPUTE, T_H2D, T_D2H, T_D2D, T_P2P, T_MOTHER, T_MEMSET, T_NTYPES };
static const char *const type_names[T_NTYPES] = {"Compute",   "MemcpyH2D",   "MemcpyD2H", "MemcpyD2D",
                                                 "MemcpyP2P", "MemcpyOther", "Memset"};

/* CUpti_ActivitySynchronizationType's, by value */
static const char *const sync_names[5] = {"Sync", "Event Sync", "Stream Wait Event", "Stream Sync",
                                          "Context Sync"};

typedef struct lineslot {
    int64_t id;
    tb_line *l;
    uint32_t mask;
} lineslot;

typedef struct devstate {
    tb_plane *p;
    tb_cupti_devprops props;
    int64_t st_corr, st_ctx, st_stream, st_kd, st_md, st_msd, st_mad, st_mfd, st_graph;
    int64_t ev_type[T_NTYPES], ev_alloc, ev_free, ev_sync[5];
    lineslot *lines;
    size_t nlines, cap;
    size_t last;
    uint32_t ctx_id[8];
    int64_t ctx_ref[8];
    int nctx;
} devstate;

typedef struct kname_slot {
    const char *ptr;
    uint32_t dev;
    int64_t meta;
} kname_slot;

typedef struct kd_key {
    uint32_t dev, regs;
    int32_t ss, ds, gx, gy, gz, bx, by, bz;
} kd_key;
typedef struct kd_slot {
    kd_key k;
    int64_t ref; /* 0: empty */
} kd_slot;

typedef struct md_key {
    uint32_t dev, src, dst, dest, async, what; /* what: 0 memcpy, 1 memset, 2 alloc, 3 free */
    uint64_t bytes;
} md_key;
typedef struct md_slot {
    md_key k;
    int64_t ref;
} md_slot;

typedef struct marker {
    uint32_t id, tid;
    uint64_t ts;
    const char *name, *domain;
    uint32_t next; /* the next in its bucket (or free) chain: index + 1; 0: none */
} marker;

/* Marker records waiting for their other half, by id: a chained hash
 * table whose chains hold a bucket's markers newest first (so the newest
 * of an id is found first), the nodes in one array reused through a free
 * list: O(1) a record, memory the most waiting at once. */
typedef struct marker_set {
    marker *v;
    size_t nv, capv; /* nodes made */
    size_t n;        /* markers in the set */
    uint32_t free;   /* free nodes: index + 1; 0: none */
    uint32_t *b;     /* bucket heads: index + 1; 0: empty */
    size_t bmask;    /* buckets - 1 (b NULL: none) */
} marker_set;

typedef struct syncrec {
    uint32_t type, corr, ctx, stream;
    uint64_t start, end;
} syncrec;

/* A GPU memory allocation or release, kept for the memory timeline built at
 * finish (the running total needs every record, in time order). */
typedef struct memrec {
    uint64_t ts, addr, bytes;
    uint32_t dev, kind, corr, alloc, seq;
} memrec;

/* The host thread and API call behind a correlation id, for the API calls
 * that allocate or free memory (see api_is_memory). */
typedef struct memapi {
    uint32_t corr, tid;
    int driver;   /* a driver call: the runtime call around it (same id) names the event */
    int64_t meta; /* the call's event metadata on the host plane */
} memapi;

#define KD_SLOTS 1024
#define MD_SLOTS 1024
#define TID_SLOTS 64
#define API_CBIDS 2048

struct tb_cupti_tr {
    tb_space *s;
    tb_cupti_tr_opts o;
    devstate *dev[TB_CUPTI_MAX_DEVICES];
    tb_cupti_devprops pending_props[TB_CUPTI_MAX_DEVICES];
    /* host */
    tb_plane *hp;
    int64_t hp_corr;
    struct {
        uint32_t tid;
        tb_line *l;
    } tids[TID_SLOTS];
    struct api_slot {
        int looked;     /* the fields below are set */
        int quiet;      /* left out: tb_cupti_api_is_quiet and not api_all */
        int64_t meta;   /* the call's event metadata */
        int memory;     /* api_is_memory(its name) */
        int graph;      /* a graph launch: cudaGraphLaunch*, cuGraphLaunch* */
        int launch;     /* a kernel or graph launch */
    } *api[2];          /* [runtime/driver][cbid] */
    /* caches */
    kname_slot *kn;
    size_t kn_mask, kn_used;
    kd_slot kd[KD_SLOTS];
    md_slot md[MD_SLOTS];
    /* pairing / deferred */
    marker_set mk;
    /* range ends whose start was not seen yet: with per-thread buffers a
     * range started on one thread and ended on another has its two records
     * in two buffers, completed in either order */
    marker_set me;
    syncrec *sy;
    size_t nsy, capsy;
    memrec *mr;
    size_t nmr, capmr;
    memapi *ma;
    size_t nma, capma;
    /* each context's device (for placing syncs, whose records name only
     * the context): a hash table, grown to at most TB_CUPTI_MAX_CONTEXTS contexts */
    struct ctxmap_slot {
        uint32_t ctx, dev;
        int used;
    } *cm;
    size_t cm_mask, cm_used;
    uint32_t cm_last; /* the context noted last (+1; 0: none): the common case, no lookup */
    /* correlation ids of runtime calls (prescan): a driver call made inside
     * one has the same id, and only the runtime call, the one the job
     * made, carries it (one flow to the GPU work, as Kineto draws it) */
    uint32_t *rc;
    size_t rc_mask, rc_used;
    tb_cupti_tr_counts c;
};

static size_t rc_slot(uint32_t id, size_t mask)
{
    return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

/* Note runtime correlation id (non-zero); a failed growth keeps what is there. */
static void rc_add(tb_cupti_tr *t, uint32_t id)
{
    if (!id)
        return;
    if (2 * (t->rc_used + 1) > (t->rc ? t->rc_mask + 1 : 0)) {
        size_t n = t->rc ? 2 * (t->rc_mask + 1) : 1024;
        uint32_t *b = calloc(n, sizeof(*b));
        if (!b)
            return;
        for (size_t i = 0; t->rc && i <= t->rc_mask; i++)
            if (t->rc[i]) {
                size_t j = rc_slot(t->rc[i], n - 1);
                while (b[j])
                    j = (j + 1) & (n - 1);
                b[j] = t->rc[i];
            }
        free(t->rc);
        t->rc = b;
        t->rc_mask = n - 1;
    }
    size_t j = rc_slot(id, t->rc_mask);
    while (t->rc[j] && t->rc[j] != id)
        j = (j + 1) & t->rc_mask;
    if (!t->rc[j]) {
        t->rc[j] = id;
        t->rc_used++;
    }
}

static int rc_has(const tb_cupti_tr *t, uint32_t id)
{
    if (!t->rc || !id)
        return 0;
    for (size_t j = rc_slot(id, t->rc_mask); t->rc[j]; j = (j + 1) & t->rc_mask)
        if (t->rc[j] == id)
            return 1;
    return 0;
}

const char *tb_cupti_memory_kind_name(int kind)
{
    switch (kind) {
    case CUPTI_ACTIVITY_MEMORY_KIND_ARRAY:
        return "array";
    case CUPTI_ACTIVITY_MEMORY_KIND_DEVICE:
        return "device";
    case CUPTI_ACTIVITY_MEMORY_KIND_DEVICE_STATIC:
        return "device_static";
    case CUPTI_ACTIVITY_MEMORY_KIND_MANAGED:
        return "managed";
    case CUPTI_ACTIVITY_MEMORY_KIND_MANAGED_STATIC:
        return "managed_static";
    case CUPTI_ACTIVITY_MEMORY_KIND_PAGEABLE:
        return "pageable";
    case CUPTI_ACTIVITY_MEMORY_KIND_PINNED:
        return "pinned";
    default:
        return "unknown";
    }
}

tb_cupti_tr *tb_cupti_tr_new(tb_space *s, const tb_cupti_tr_opts *o)
{
    tb_cupti_tr *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->s = s;
    if (o)
        t->o = *o;
    t->kn_mask = 1023;
    t->kn = calloc(t->kn_mask + 1, sizeof(*t->kn));
    if (!t->kn) {
        free(t);
        return NULL;
    }
    return t;
}

void tb_cupti_tr_set_device(tb_cupti_tr *t, uint32_t dev, const tb_cupti_devprops *p)
{
    if (dev >= TB_CUPTI_MAX_DEVICES || !p || !p->valid)
        return;
    t->pending_props[dev] = *p;
    if (t->dev[dev]) {
        t->dev[dev]->props = *p;
        memset(t->kd, 0, sizeof(t->kd)); /* kernel_details: their occupancy changes */
    }
}

static devstate *get_dev(tb_cupti_tr *t, uint32_t dev)
{
    if (dev >= TB_CUPTI_MAX_DEVICES)
        return NULL;
    devstate *d = t->dev[dev];
    if (d)
        return d;
    char name[40];
    snprintf(name, sizeof(name), "/device:GPU:%u", dev);
    tb_plane *p = tb_space_plane(t->s, name);
    if (!p)
        return NULL;
    d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->p = p;
    d->props = t->pending_props[dev];
    d->st_corr = tb_plane_stat_meta(p, TB_ST_CORRELATION_ID);
    d->st_ctx = tb_plane_stat_meta(p, TB_ST_CONTEXT_ID);
    d->st_stream = tb_plane_stat_meta(p, TB_ST_STREAM_ID);
    d->st_kd = tb_plane_stat_meta(p, TB_ST_KERNEL_DETAILS);
    d->st_md = tb_plane_stat_meta(p, TB_ST_MEMCPY_DETAILS);
    d->st_msd = tb_plane_stat_meta(p, TB_ST_MEMSET_DETAILS);
    d->st_mad = tb_plane_stat_meta(p, TB_ST_MEMALLOC_DETAILS);
    d->st_mfd = tb_plane_stat_meta(p, TB_ST_MEMFREE_DETAILS);
    d->st_graph = tb_plane_stat_meta(p, TB_ST_CUDA_GRAPH_ID);
    for (int i = 0; i < T_NTYPES; i++)
        d->ev_type[i] = tb_plane_event_meta_cat(p, type_names[i], i == T_MEMSET ? TB_CAT_MEMSET : TB_CAT_MEMCPY);
    d->ev_alloc = tb_plane_event_meta_cat(p, "MemoryAlloc", TB_CAT_GPU_MEMORY);
    d->ev_free = tb_plane_event_meta_cat(p, "MemoryFree", TB_CAT_GPU_MEMORY);
    for (int i = 0; i < 5; i++)
        d->ev_sync[i] = tb_plane_event_meta_cat(p, sync_names[i], TB_CAT_CUDA_SYNC);
    if (d->st_corr < 0 || d->st_ctx < 0 || d->st_kd < 0 || d->st_md < 0 || d->ev_type[0] < 0 ||
        d->ev_sync[4] < 0 || d->st_graph < 0) {
        free(d);
        return NULL;
    }
    t->dev[dev] = d;
    return d;
}

static lineslot *get_line(devstate *d, int64_t id)
{
    if (d->nlines && d->lines[d->last].id == id)
        return &d->lines[d->last];
    for (size_t i = 0; i < d->nlines; i++)
        if (d->lines[i].id == id) {
            d->last = i;
            return &d->lines[i];
        }
    if (TB_GROW(d->lines, d->cap, d->nlines + 1) < 0)
        return NULL;
    char name[48];
    if (id == TB_CUPTI_LINE_OVERHEAD)
        snprintf(name, sizeof(name), "CUPTI overhead");
    else if (id == TB_CUPTI_LINE_MEMORY)
        snprintf(name, sizeof(name), "Memory");
    else if (id == TB_CUPTI_LINE_SYNC)
        snprintf(name, sizeof(name), "CUDA sync");
    else
        snprintf(name, sizeof(name), "Stream #%lld", (long long)id);
    tb_line *l = tb_plane_line(d->p, id, name);
    if (!l)
        return NULL;
    d->lines[d->nlines] = (lineslot){.id = id, .l = l, .mask = 0};
    d->last = d->nlines;
    return &d->lines[d->nlines++];
}


static size_t ctx_hash(uint32_t ctx, size_t mask) { return (size_t)((ctx * 0x9e3779b97f4a7c15ull) >> 40) & mask; }

/* The slot of ctx in the table, or the empty one where it would go. */
static struct ctxmap_slot *ctx_slot(const tb_cupti_tr *t, uint32_t ctx)
{
    size_t i = ctx_hash(ctx, t->cm_mask);
    while (t->cm[i].used && t->cm[i].ctx != ctx)
        i = (i + 1) & t->cm_mask;
    return &t->cm[i];
}

static int ctx_dev(const tb_cupti_tr *t, uint32_t ctx, uint32_t *dev)
{
    if (!t->cm)
        return 0;
    const struct ctxmap_slot *c = ctx_slot(t, ctx);
    if (c->used)
        *dev = c->dev;
    return c->used;
}

/* Remember ctx's device (the first one a record tells). */
static void note_ctx(tb_cupti_tr *t, uint32_t ctx, uint32_t dev)
{
    if (t->cm_last == ctx + 1u && ctx != UINT32_MAX)
        return;
    if (t->cm) {
        struct ctxmap_slot *c = ctx_slot(t, ctx);
        if (c->used) {
            t->cm_last = ctx + 1u;
            return;
        }
    }
    if (t->cm_used >= TB_CUPTI_MAX_CONTEXTS) {
        t->c.contexts_unplaced++;
        return;
    }
    if (!t->cm || (t->cm_used + 1) * 2 > t->cm_mask + 1) { /* at most half full */
        size_t n = t->cm ? 2 * (t->cm_mask + 1) : 64;
        struct ctxmap_slot *old = t->cm, *nv = calloc(n, sizeof(*nv));
        if (!nv) {
            t->c.contexts_unplaced++;
            return;
        }
        size_t omask = t->cm_mask;
        t->cm = nv;
        t->cm_mask = n - 1;
        for (size_t i = 0; old && i <= omask; i++)
            if (old[i].used)
                *ctx_slot(t, old[i].ctx) = old[i];
        free(old);
    }
    *ctx_slot(t, ctx) = (struct ctxmap_slot){ctx, dev, 1};
    t->cm_used++;
    t->cm_last = ctx + 1u;
}

/* "$$<id>" as the reference tracer writes context_id, interned once. */
static int64_t ctx_ref(devstate *d, uint32_t ctx)
{
    for (int i = 0; i < d->nctx; i++)
        if (d->ctx_id[i] == ctx)
            return d->ctx_ref[i];
    char buf[24];
    snprintf(buf, sizeof(buf), "$$%u", ctx);
    int64_t r = tb_plane_stat_meta(d->p, buf);
    if (r > 0 && d->nctx < 8) {
        d->ctx_id[d->nctx] = ctx;
        d->ctx_ref[d->nctx++] = r;
    }
    return r;
}

static void add_ref_stat(tb_line *l, int64_t meta, int64_t ref)
{
    /* a string stat whose value is already interned: add a placeholder
     * through the public API (it charges the space's limit), then make it a
     * reference, which saves a hash lookup per record */
    if (meta <= 0 || ref <= 0)
        return;
    if (tb_line_stat_u64(l, meta, 0) == 0) {
        tb_stat *st = &l->stats[l->nstats - 1];
        st->type = TB_STAT_REF;
        st->v.u = 0;
        st->v.ref = (uint32_t)ref;
    }
}

static int64_t kernel_meta(tb_cupti_tr *t, devstate *d, uint32_t dev, const char *name)
{
    if (!name)
        name = "(unnamed kernel)";
    size_t h = (((uintptr_t)name >> 3) * 0x9E3779B97F4A7C15ull + dev) >> 20;
    for (size_t i = h & t->kn_mask;; i = (i + 1) & t->kn_mask) {
        kname_slot *s = &t->kn[i];
        if (!s->ptr)
            break;
        if (s->ptr == name && s->dev == dev)
            return s->meta;
    }
    int64_t meta;
    char *dm = NULL;
    if (t->o.demangle)
        dm = tb_demangle(name);
    meta = tb_plane_event_meta_cat(d->p, dm ? dm : name, TB_CAT_KERNEL);
    free(dm);
    if (meta <= 0)
        return meta;
    if ((t->kn_used + 1) * 4 > (t->kn_mask + 1) * 3) { /* grow at 75% */
        size_t nmask = t->kn_mask * 2 + 1;
        kname_slot *n = calloc(nmask + 1, sizeof(*n));
        if (!n)
            return meta; /* uncached, still correct */
        for (size_t i = 0; i <= t->kn_mask; i++) {
            kname_slot *s = &t->kn[i];
            if (!s->ptr)
                continue;
            size_t hh = (((uintptr_t)s->ptr >> 3) * 0x9E3779B97F4A7C15ull + s->dev) >> 20;
            size_t j = hh & nmask;
            while (n[j].ptr)
                j = (j + 1) & nmask;
            n[j] = *s;
        }
        free(t->kn);
        t->kn = n;
        t->kn_mask = nmask;
    }
    size_t i = h & t->kn_mask;
    while (t->kn[i].ptr)
        i = (i + 1) & t->kn_mask;
    t->kn[i] = (kname_slot){.ptr = name, .dev = dev, .meta = meta};
    t->kn_used++;
    return meta;
}

/* A rough estimate (warps, registers, shared memory), for a GPU NVIDIA's
 * calculator does not know yet. */
static double occupancy_estimate(const tb_cupti_devprops *p, int regs, int smem, int threads)
{
    if (!p->valid || p->warp_size <= 0 || p->max_threads_per_sm <= 0 || threads <= 0)
        return 0;
    int warps_sm = p->max_threads_per_sm / p->warp_size;
    int wpb = (threads + p->warp_size - 1) / p->warp_size;
    if (wpb <= 0 || warps_sm <= 0)
        return 0;
    int blocks = warps_sm / wpb;
    if (p->max_blocks_per_sm > 0 && blocks > p->max_blocks_per_sm)
        blocks = p->max_blocks_per_sm;
    if (regs > 0 && p->regs_per_sm > 0) {
        int per_warp = ((regs * p->warp_size + 255) / 256) * 256; /* allocation unit: 256 regs/warp */
        int warps_by_regs = p->regs_per_sm / per_warp;
        if (warps_by_regs / wpb < blocks)
            blocks = warps_by_regs / wpb;
    }
    if (smem > 0 && p->smem_per_sm > 0 && p->smem_per_sm / smem < blocks)
        blocks = p->smem_per_sm / smem;
    if (blocks < 0)
        blocks = 0;
    return (double)blocks * wpb * 100.0 / warps_sm;
}

/* Theoretical occupancy (%) of a launch, as the reference tracer computes
 * it: NVIDIA's occupancy calculator (cuda_occupancy.h: register and shared
 * memory allocation granularity, the driver's reserved shared memory per
 * block, the carveout the driver would choose), active blocks x block size
 * over the SM's thread limit. Device limits CUPTI's device record lacks
 * take their usual values. */
static double occupancy_pct(const tb_cupti_devprops *p, int regs, int static_smem, int dyn_smem, int threads)
{
    if (!p->valid || p->max_threads_per_sm <= 0 || threads <= 0)
        return 0;
    int reserved = p->smem_reserved_per_block ? p->smem_reserved_per_block : p->cc_major >= 8 ? 1024 : 0;
    cudaOccDeviceProp dp = {
        .computeMajor = (int)p->cc_major,
        .computeMinor = (int)p->cc_minor,
        .maxThreadsPerBlock = p->max_threads_per_block > 0 ? p->max_threads_per_block : 1024,
        .maxThreadsPerMultiprocessor = p->max_threads_per_sm,
        .regsPerBlock = p->regs_per_block > 0 ? p->regs_per_block : p->regs_per_sm,
        .regsPerMultiprocessor = p->regs_per_sm,
        .warpSize = p->warp_size > 0 ? p->warp_size : 32,
        .sharedMemPerBlock = (size_t)(p->smem_per_block > 0 ? p->smem_per_block : 48 << 10),
        .sharedMemPerMultiprocessor = (size_t)p->smem_per_sm,
        .numSms = (int)p->sm_count,
        .sharedMemPerBlockOptin = (size_t)(p->smem_per_block_optin > 0 ? p->smem_per_block_optin
                                                                        : p->smem_per_sm - reserved),
        .reservedSharedMemPerBlock = (size_t)reserved,
    };
    size_t smem = (size_t)static_smem + (size_t)dyn_smem;
    cudaOccFuncAttributes fa = {
        .maxThreadsPerBlock = threads, /* it ran with this block */
        .numRegs = regs,
        .sharedSizeBytes = (size_t)static_smem,
        .partitionedGCConfig = PARTITIONED_GC_OFF,
        .shmemLimitConfig = smem > dp.sharedMemPerBlock ? FUNC_SHMEM_LIMIT_OPTIN : FUNC_SHMEM_LIMIT_DEFAULT,
        .maxDynamicSharedSizeBytes = (size_t)dyn_smem,
    };
    cudaOccDeviceState st = {.carveoutConfig = SHAREDMEM_CARVEOUT_DEFAULT};
    cudaOccResult res = {0};
    if (dp.regsPerMultiprocessor <= 0 || dp.sharedMemPerMultiprocessor == 0 ||
        cudaOccMaxActiveBlocksPerMultiprocessor(&res, &dp, &fa, &st, threads, (size_t)dyn_smem) != CUDA_OCC_SUCCESS)
        return occupancy_estimate(p, regs, static_smem + dyn_smem, threads);
    return (double)res.activeBlocksPerMultiprocessor * threads * 100.0 / p->max_threads_per_sm;
}

static uint32_t mix(uint32_t h, uint32_t v)
{
    h ^= v;
    h *= 16777619u;
    return h;
}

static int64_t kernel_details_ref(tb_cupti_tr *t, devstate *d, const kd_key *k)
{
    uint32_t h = 2166136261u;
    const uint32_t *w = (const uint32_t *)k;
    for (size_t i = 0; i < sizeof(*k) / 4; i++)
        h = mix(h, w[i]);
    kd_slot *s = &t->kd[h & (KD_SLOTS - 1)];
    if (s->ref > 0 && memcmp(&s->k, k, sizeof(*k)) == 0)
        return s->ref;
    char buf[200];
    double occ = occupancy_pct(&d->props, (int)k->regs, k->ss, k->ds, k->bx * k->by * k->bz);
    snprintf(buf, sizeof(buf),
             "regs:%u static_shared:%d dynamic_shared:%d grid:%d,%d,%d block:%d,%d,%d occ_pct:%g",
             k->regs, k->ss, k->ds, k->gx, k->gy, k->gz, k->bx, k->by, k->bz, occ);
    int64_t ref = tb_plane_stat_meta(d->p, buf);
    if (ref > 0) {
        s->k = *k;
        s->ref = ref;
    }
    return ref;
}

static int64_t mem_details_ref(tb_cupti_tr *t, devstate *d, const md_key *k)
{
    uint32_t h = 2166136261u;
    h = mix(h, k->dev);
    h = mix(h, k->src | k->dst << 8 | k->async << 16 | k->what << 24);
    h = mix(h, k->dest);
    h = mix(h, (uint32_t)k->bytes);
    h = mix(h, (uint32_t)(k->bytes >> 32));
    md_slot *s = &t->md[h & (MD_SLOTS - 1)];
    if (s->ref > 0 && memcmp(&s->k, k, sizeof(*k)) == 0)
        return s->ref;
    char buf[160];
    switch (k->what) {
    case 0:
        snprintf(buf, sizeof(buf), "kind_src:%s kind_dst:%s size:%llu dest:%u async:%u",
                 tb_cupti_memory_kind_name((int)k->src), tb_cupti_memory_kind_name((int)k->dst),
                 (unsigned long long)k->bytes, k->dest, k->async);
        break;
    case 1:
        snprintf(buf, sizeof(buf), "kind:%s num_bytes:%llu async:%u", tb_cupti_memory_kind_name((int)k->src),
                 (unsigned long long)k->bytes, k->async);
        break;
    default:
        snprintf(buf, sizeof(buf), "kind:%s num_bytes:%llu", tb_cupti_memory_kind_name((int)k->src),
                 (unsigned long long)k->bytes);
        break;
    }
    int64_t ref = tb_plane_stat_meta(d->p, buf);
    if (ref > 0) {
        memset(&s->k, 0, sizeof(s->k));
        s->k = *k;
        s->ref = ref;
    }
    return ref;
}

static int bad_time(tb_cupti_tr *t, uint64_t start, uint64_t end)
{
    if (start == 0 || end < start) {
        t->c.bad_time++;
        return 1;
    }
    return 0;
}

/* An event [start, end] (CUPTI time) on line l; <0 when not added. */
static int add_span(tb_cupti_tr *t, tb_line *l, int64_t meta, uint64_t start, uint64_t end)
{
    return tb_line_add(l, meta, (int64_t)start + t->o.ts_to_epoch_ns, (int64_t)(end - start));
}

/* What every device activity record (kernel, copy, memset, memory, sync)
 * says, whatever its CUPTI struct. */
typedef struct devrec {
    uint64_t start, end;
    uint32_t dev, corr, ctx, stream, graph;
} devrec;

/* devrec of a CUPTI record with start/end/contextId/streamId/correlationId/
 * graphId fields, on device `devid` */
#define DEVREC(r, devid) \
    ((devrec){.start = (r)->start, .end = (r)->end, .dev = (devid), .corr = (r)->correlationId, \
              .ctx = (r)->contextId, .stream = (r)->streamId, .graph = (r)->graphId})

/* The plane of r's device, or NULL (a bad time is counted). note: r's
 * context runs on r's device (for placing sync records). Inline: once per
 * device record, the known device is an array lookup. */
static inline devstate *rec_dev(tb_cupti_tr *t, const devrec *r, int note)
{
    if (!r->start && !r->end) /* CUPTI could not time it (no device memory) */
        t->c.untimed++;
    if (bad_time(t, r->start, r->end))
        return NULL;
    devstate *d = r->dev < TB_CUPTI_MAX_DEVICES ? t->dev[r->dev] : NULL;
    if (!d)
        d = get_dev(t, r->dev);
    if (d && note)
        note_ctx(t, r->ctx, r->dev);
    return d;
}

/* Common device-event stats; returns the line or NULL when the event was not added. */
static tb_line *device_event(tb_cupti_tr *t, devstate *d, int64_t line_id, int type, int64_t meta,
                             const devrec *r)
{
    lineslot *ls = get_line(d, line_id);
    if (!ls || meta <= 0)
        return NULL;
    if (type >= 0)
        ls->mask |= 1u << type;
    tb_line *l = ls->l;
    if (add_span(t, l, meta, r->start, r->end) < 0)
        return NULL;
    if (r->graph && t->o.graph_corr_unreliable)
        t->c.graph_uncorrelated++;
    else
        tb_line_stat_u64(l, d->st_corr, r->corr);
    /* CUPTI's "not applicable" ids (a free of memory with no context, a
     * context-wide sync) are not written as ids */
    if (r->ctx != CUPTI_INVALID_CONTEXT_ID)
        add_ref_stat(l, d->st_ctx, ctx_ref(d, r->ctx));
    if (line_id != (int64_t)r->stream && r->stream != CUPTI_INVALID_STREAM_ID) /* a stream's own line says it */
        tb_line_stat_u64(l, d->st_stream, r->stream);
    if (r->graph)
        tb_line_stat_u64(l, d->st_graph, r->graph);
    return l;
}

/* A copy or memset: the event of r on its stream's line as `type`, with
 * the details string of k as stat st_details. */
static void stream_event(tb_cupti_tr *t, devstate *d, const devrec *r, int type, int64_t st_details,
                         const md_key *k)
{
    tb_line *l = device_event(t, d, r->stream, type, d->ev_type[type], r);
    if (l)
        add_ref_stat(l, st_details, mem_details_ref(t, d, k));
}

/* A kernel record that cannot be one: a grid or block dimension below 1,
 * or more than 1024 threads a block (every CUDA GPU's limit). CUPTI writes
 * its newest record layout (record_compat.h); a libcupti newer than this
 * build's headers that moved a field would show here first. (A missing
 * name is not taken as a sign: CUPTI may not know one.) */
static int kernel_odd(const CUpti_ActivityKernel10 *k)
{
    return k->gridX < 1 || k->gridY < 1 || k->gridZ < 1 || k->blockX < 1 || k->blockY < 1 || k->blockZ < 1 ||
           (int64_t)k->blockX * k->blockY * k->blockZ > 1024;
}

static void do_kernel(tb_cupti_tr *t, const CUpti_ActivityKernel10 *k)
{
    t->c.kernels++;
    if (kernel_odd(k))
        t->c.odd_kernels++;
    devrec r = DEVREC(k, k->deviceId);
    devstate *d = rec_dev(t, &r, 1);
    if (!d)
        return;
    int64_t meta = kernel_meta(t, d, k->deviceId, k->name);
    tb_line *l = device_event(t, d, k->streamId, T_COMPUTE, meta, &r);
    if (!l)
        return;
    kd_key key = {.dev = k->deviceId,
                  .regs = k->registersPerThread,
                  .ss = k->staticSharedMemory,
                  .ds = k->dynamicSharedMemory,
                  .gx = k->gridX,
                  .gy = k->gridY,
                  .gz = k->gridZ,
                  .bx = k->blockX,
                  .by = k->blockY,
                  .bz = k->blockZ};
    add_ref_stat(l, d->st_kd, kernel_details_ref(t, d, &key));
}

static int copy_type(int kind)
{
    switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
        return T_H2D;
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
        return T_D2H;
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
        return T_D2D;
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP:
        return T_P2P;
    default:
        return T_MOTHER;
    }
}

/* A memcpy (MEMCPY) or peer copy (MEMCPY2) record: r on the device the
 * copy runs on, `dest` the destination device. */
static inline void copy_event(tb_cupti_tr *t, const devrec *r, int note, int type, uint32_t dest,
                       uint32_t src_kind, uint32_t dst_kind, uint32_t flags, uint64_t bytes)
{
    t->c.memcpys++;
    devstate *d = rec_dev(t, r, note);
    if (!d)
        return;
    md_key key = {.dev = r->dev,
                  .src = src_kind,
                  .dst = dst_kind,
                  .dest = dest,
                  .async = (flags & CUPTI_ACTIVITY_FLAG_MEMCPY_ASYNC) ? 1 : 0,
                  .what = 0,
                  .bytes = bytes};
    stream_event(t, d, r, type, d->st_md, &key);
}

static void do_memcpy(tb_cupti_tr *t, const CUpti_ActivityMemcpy6 *m)
{
    devrec r = DEVREC(m, m->deviceId);
    copy_event(t, &r, 1, copy_type(m->copyKind), m->deviceId, m->srcKind, m->dstKind, m->flags, m->bytes);
}

static void do_p2p(tb_cupti_tr *t, const CUpti_ActivityMemcpyPtoP4 *m)
{
    /* on the device the copy runs on (deviceId: its stream and context
     * are that device's), not always the one copied from; the contexts
     * owning the source and destination memory are on those devices
     * (a context no other record names, whose syncs go by them) */
    devrec r = DEVREC(m, m->deviceId);
    copy_event(t, &r, 1, T_P2P, m->dstDeviceId, m->srcKind, m->dstKind, m->flags, m->bytes);
    if (m->srcContextId && m->srcContextId != CUPTI_INVALID_CONTEXT_ID)
        note_ctx(t, m->srcContextId, m->srcDeviceId);
    if (m->dstContextId && m->dstContextId != CUPTI_INVALID_CONTEXT_ID)
        note_ctx(t, m->dstContextId, m->dstDeviceId);
}

static void do_memset(tb_cupti_tr *t, const CUpti_ActivityMemset4 *m)
{
    t->c.memsets++;
    devrec r = DEVREC(m, m->deviceId);
    devstate *d = rec_dev(t, &r, 1);
    if (!d)
        return;
    md_key key = {.dev = m->deviceId,
                  .src = m->memoryKind,
                  .async = (m->flags & CUPTI_ACTIVITY_FLAG_MEMSET_ASYNC) ? 1 : 0,
                  .what = 1,
                  .bytes = m->bytes};
    stream_event(t, d, &r, T_MEMSET, d->st_msd, &key);
}

/* The /host:CPU plane, made on first use with the correlation_id stat. */
static tb_plane *host_plane(tb_cupti_tr *t)
{
    if (!t->hp && (t->hp = tb_host_plane(t->s)) != NULL)
        t->hp_corr = tb_plane_stat_meta(t->hp, TB_ST_CORRELATION_ID);
    return t->hp;
}

static tb_line *host_line(tb_cupti_tr *t, uint32_t tid)
{
    unsigned slot = (tid * 2654435761u) >> 26; /* 64 slots */
    if (t->tids[slot].l && t->tids[slot].tid == tid)
        return t->tids[slot].l;
    tb_line *l = tb_host_line(t->s, (pid_t)tid);
    if (l) {
        t->tids[slot].tid = tid;
        t->tids[slot].l = l;
    }
    host_plane(t);
    return l;
}

/* A host-plane line past every thread id (TB_CUPTI_HOST_LINE_*), made on
 * first use (for the few records that go there: a lookup each). */
static tb_line *host_special_line(tb_cupti_tr *t, int64_t id, const char *name)
{
    tb_plane *hp = host_plane(t);
    return hp ? tb_plane_line(hp, id, name) : NULL;
}

/* Whether an API call of this name allocates or frees memory (cudaMalloc*,
 * cudaHostAlloc, cudaFree*, cuMemAlloc*, cuMemFree*, cuMemCreate and
 * cuMemRelease of the virtual memory API): its thread is where the memory
 * timeline's events for its correlation id go. A call matched needlessly
 * only costs a table entry. */
static int api_is_memory(const char *name)
{
    return strstr(name, "alloc") || strstr(name, "Alloc") || strstr(name, "Free") ||
           strstr(name, "MemCreate") || strstr(name, "MemRelease");
}

/* CUDA calls that launch no GPU work, return at once and are made thousands
 * of times a step: PyTorch asks for the device and the last error around
 * kernel launches and checks for stream capture in its allocator; Triton's
 * launcher gets the context and checks each pointer argument; XLA sets the
 * context around its calls and polls events. Recorded, they bury the calls
 * that matter and fill the buffers. Kineto leaves out the first six runtime
 * ones from torch.profiler's traces. Syncs that waited are still recorded
 * (their own activity kind). */
static const char *const quiet_api[] = {
    "cudaGetDevice", "cudaSetDevice", "cudaGetLastError", "cudaEventCreate", "cudaEventCreateWithFlags",
    "cudaEventDestroy", "cudaPeekAtLastError", "cudaGetDeviceCount", "cudaDeviceGetAttribute",
    "cudaRuntimeGetVersion", "cudaDriverGetVersion", "cudaGetDriverEntryPoint",
    "cudaGetDriverEntryPointByVersion", "cudaEventQuery", "cudaStreamQuery", "cudaStreamIsCapturing",
    "cudaStreamGetCaptureInfo", "cudaThreadExchangeStreamCaptureMode", "cudaPointerGetAttributes",
    "cuCtxGetCurrent", "cuCtxSetCurrent", "cuCtxGetDevice", "cuCtxPushCurrent", "cuCtxPopCurrent",
    "cuCtxGetId", "cuDeviceGet", "cuDeviceGetCount", "cuDeviceGetAttribute", "cuDevicePrimaryCtxGetState",
    "cuDriverGetVersion", "cuGetProcAddress", "cuEventQuery", "cuStreamQuery", "cuStreamIsCapturing",
    "cuStreamGetCaptureInfo", "cuThreadExchangeStreamCaptureMode", "cuPointerGetAttribute",
    "cuPointerGetAttributes", "cuFuncGetAttribute",
};

/* The length of a CUPTI callback name without its version suffixes and,
 * with drop_stream, its per-thread default stream ones:
 * "cudaStreamGetCaptureInfo_v2_ptsz_v11030" -> "cudaStreamGetCaptureInfo"
 * (drop_stream: the call, as the quiet list names it) or
 * "cudaStreamGetCaptureInfo_v2_ptsz" (the name a profile shows: which
 * default stream the job was built for is worth seeing). */
static size_t api_base_len(const char *name, int drop_stream)
{
    size_t n = strlen(name);
    for (;;) {
        if (drop_stream && n > 5 &&
            (memcmp(name + n - 5, "_ptsz", 5) == 0 || memcmp(name + n - 5, "_ptds", 5) == 0)) {
            n -= 5;
            continue;
        }
        size_t d = n;
        while (d > 0 && name[d - 1] >= '0' && name[d - 1] <= '9')
            d--;
        if (d < n && d > 2 && name[d - 1] == 'v' && name[d - 2] == '_') {
            n = d - 2;
            continue;
        }
        return n;
    }
}

int tb_cupti_api_is_quiet(const char *cupti_name)
{
    size_t n = api_base_len(cupti_name, 1);
    for (size_t i = 0; i < sizeof(quiet_api) / sizeof(quiet_api[0]); i++)
        if (strlen(quiet_api[i]) == n && memcmp(quiet_api[i], cupti_name, n) == 0)
            return 1;
    return 0;
}

const char *tb_cupti_api_quiet_list(void)
{
    static char list[2048]; /* 775 bytes now */
    if (!list[0]) {
        size_t at = 0;
        for (size_t i = 0; i < sizeof(quiet_api) / sizeof(quiet_api[0]) && at < sizeof(list); i++)
            at += (size_t)snprintf(list + at, sizeof(list) - at, "%s%s", i ? " " : "", quiet_api[i]);
    }
    return list;
}

static void do_api(tb_cupti_tr *t, const CUpti_ActivityAPI *a, int driver)
{
    t->c.api++;
    if (bad_time(t, a->start, a->end))
        return;
    struct api_slot *cache = NULL, slot = {0};
    if (a->cbid < API_CBIDS) {
        if (!t->api[driver])
            t->api[driver] = calloc(API_CBIDS, sizeof(*t->api[driver]));
        if (t->api[driver]) {
            cache = &t->api[driver][a->cbid];
            slot = *cache;
        }
    }
    if (!slot.looked) {
        const char *nm = t->o.api_name ? t->o.api_name(driver ? CUPTI_CB_DOMAIN_DRIVER_API
                                                              : CUPTI_CB_DOMAIN_RUNTIME_API,
                                                       a->cbid)
                                       : NULL;
        char buf[128];
        if (nm && !t->o.api_all && tb_cupti_api_is_quiet(nm)) {
            slot.quiet = 1;
        } else if (!nm) {
            snprintf(buf, sizeof(buf), "%s_api_%u", driver ? "cuda_driver" : "cuda_runtime", a->cbid);
        } else {
            /* "cudaLaunchKernel_v7000" -> "cudaLaunchKernel"; CUDA 13's
             * <<<>>> and cudaLaunchKernel enter the runtime as
             * "__cudaLaunchKernel_v13000": named for the call users made */
            const char *from = strncmp(nm, "__cudaLaunchKernel", 18) == 0 ? nm + 2 : nm;
            snprintf(buf, sizeof(buf), "%.*s", (int)api_base_len(from, 0), from);
        }
        if (!slot.quiet) {
            if (!host_plane(t))
                return;
            slot.meta = tb_plane_event_meta_cat(t->hp, buf, driver ? TB_CAT_CUDA_DRIVER : TB_CAT_CUDA_RUNTIME);
            if (slot.meta <= 0)
                return;
            slot.memory = api_is_memory(buf);
            slot.graph = strncmp(buf, "cudaGraphLaunch", 15) == 0 || strncmp(buf, "cuGraphLaunch", 13) == 0;
            slot.launch = slot.graph || ((strncmp(buf, "cudaLaunch", 10) == 0 || strncmp(buf, "cuLaunch", 8) == 0) &&
                                         !strstr(buf, "HostFunc")); /* (a host function: no kernel) */
        }
        slot.looked = 1;
        if (cache)
            *cache = slot;
    }
    if (slot.quiet) {
        t->c.api_quiet++;
        return;
    }
    tb_line *l = host_line(t, a->threadId);
    if (!l || !t->hp)
        return;
    if (add_span(t, l, slot.meta, a->start, a->end) < 0)
        return;
    if (slot.graph && t->o.graph_corr_unreliable) {
        t->c.launches++;
        t->c.graph_uncorrelated++;
        return;
    }
    /* (memapi_order prefers the runtime call of a pair) */
    if (slot.memory && TB_GROW(t->ma, t->capma, t->nma + 1) == 0)
        t->ma[t->nma++] = (memapi){.corr = a->correlationId, .tid = a->threadId, .meta = slot.meta, .driver = driver};
    if (driver && rc_has(t, a->correlationId)) /* inside a runtime call: that one carries the id */
        return;
    t->c.launches += slot.launch != 0;
    tb_line_stat_u64(l, t->hp_corr, a->correlationId);
}

/* A span on thread tid's host line. */
static void host_span(tb_cupti_tr *t, uint32_t tid, const char *name, tb_category cat, uint64_t start, uint64_t end)
{
    tb_line *l = host_line(t, tid);
    int64_t meta = l && t->hp ? tb_plane_event_meta_cat(t->hp, name && *name ? name : "(unnamed)", cat) : 0;
    if (meta > 0)
        add_span(t, l, meta, start, end);
}

/* An NVTX range or mark (a torch op's under the op's name, torchop.h); its
 * domain as a stat when not the default one. */
static void nvtx_span(tb_cupti_tr *t, uint32_t tid, const char *name, const char *domain, uint64_t start,
                      uint64_t end)
{
    tb_line *l = host_line(t, tid);
    if (!l || !t->hp)
        return;
    if (!name || !*name)
        name = "(unnamed)";
    tb_torch_op op;
    int64_t meta = tb_nvtx_range_meta(t->hp, name, strlen(name), &op);
    if (meta <= 0 || add_span(t, l, meta, start, end) < 0)
        return;
    tb_torch_op_stats(t->hp, l, &op);
    if (domain && *domain)
        tb_line_stat_str(l, tb_plane_stat_meta(t->hp, TB_ST_NVTX_DOMAIN), domain);
}

static size_t marker_bucket(uint32_t id, size_t mask)
{
    return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

/* Put m in the set: 0, or -ENOMEM (the set as it was). */
static int marker_put(marker_set *ms, const marker *m)
{
    if (ms->n + 1 > (ms->b ? ms->bmask + 1 : 0)) { /* at most one a bucket */
        size_t nb = ms->b ? 2 * (ms->bmask + 1) : 64;
        uint32_t *b = nb < UINT32_MAX ? calloc(nb, sizeof(*b)) : NULL;
        if (!b)
            return -ENOMEM;
        /* each chain turned around, then pushed node by node onto its new
         * bucket: the markers of one id (one old chain) keep their order */
        for (size_t i = 0; ms->b && i <= ms->bmask; i++) {
            uint32_t rev = 0;
            for (uint32_t at = ms->b[i]; at;) {
                uint32_t nx = ms->v[at - 1].next;
                ms->v[at - 1].next = rev;
                rev = at;
                at = nx;
            }
            while (rev) {
                marker *x = &ms->v[rev - 1];
                uint32_t nx = x->next;
                size_t j = marker_bucket(x->id, nb - 1);
                x->next = b[j];
                b[j] = rev;
                rev = nx;
            }
        }
        free(ms->b);
        ms->b = b;
        ms->bmask = nb - 1;
    }
    uint32_t at = ms->free;
    if (at) {
        ms->free = ms->v[at - 1].next;
    } else {
        if (ms->nv >= UINT32_MAX - 1 || TB_GROW(ms->v, ms->capv, ms->nv + 1) < 0)
            return -ENOMEM;
        at = (uint32_t)++ms->nv;
    }
    size_t j = marker_bucket(m->id, ms->bmask);
    ms->v[at - 1] = *m;
    ms->v[at - 1].next = ms->b[j];
    ms->b[j] = at;
    ms->n++;
    return 0;
}

/* Take the newest marker with `id` out of the set into *out: 1, or 0 when
 * none has it. */
static int take_marker(marker_set *ms, uint32_t id, marker *out)
{
    if (!ms->n)
        return 0;
    for (uint32_t *link = &ms->b[marker_bucket(id, ms->bmask)]; *link; link = &ms->v[*link - 1].next) {
        uint32_t at = *link;
        marker *x = &ms->v[at - 1];
        if (x->id != id)
            continue;
        *out = *x;
        *link = x->next;
        x->next = ms->free;
        ms->free = at;
        ms->n--;
        return 1;
    }
    return 0;
}

/* Empty the set (its memory kept for the next capture's markers). */
static void marker_clear(marker_set *ms)
{
    if (ms->b)
        memset(ms->b, 0, (ms->bmask + 1) * sizeof(*ms->b));
    ms->nv = ms->n = 0;
    ms->free = 0;
}

static void marker_set_free(marker_set *ms)
{
    free(ms->v);
    free(ms->b);
}

/* A range from its start record and its end's timestamp. */
static void marker_span(tb_cupti_tr *t, const marker *st, uint64_t end)
{
    if (end >= st->ts && st->ts)
        nvtx_span(t, st->tid, st->name, st->domain, st->ts, end);
    else
        t->c.bad_time++;
}

static void do_marker(tb_cupti_tr *t, const CUpti_ActivityMarker2 *m)
{
    t->c.markers++;
    if (m->objectKind != CUPTI_ACTIVITY_OBJECT_THREAD)
        return; /* process-wide and domain markers: not drawn */
    uint32_t tid = m->objectId.pt.threadId;
    if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_START) {
        marker st = {.id = m->id, .tid = tid, .ts = m->timestamp, .name = m->name, .domain = m->domain}, end;
        if (take_marker(&t->me, m->id, &end)) { /* its end came first */
            marker_span(t, &st, end.ts);
            return;
        }
        marker_put(&t->mk, &st); /* no memory: its end is counted unmatched */
    } else if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_END) {
        marker st;
        if (take_marker(&t->mk, m->id, &st)) {
            marker_span(t, &st, m->timestamp);
            return;
        }
        /* it waits for its start, in a buffer read later (ends whose start
         * CUPTI dropped wait to the end): no more than the marker records
         * read, which the buffer pool bounds */
        marker end = {.id = m->id, .tid = tid, .ts = m->timestamp};
        if (marker_put(&t->me, &end) < 0) {
            t->c.unmatched_markers++;
            return;
        }
    } else if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_INSTANTANEOUS) {
        if (m->timestamp)
            nvtx_span(t, tid, m->name, m->domain, m->timestamp, m->timestamp);
    }
}

static const char *overhead_name(int kind)
{
    switch (kind) {
    case CUPTI_ACTIVITY_OVERHEAD_DRIVER_COMPILER:
        return "COMPILER";
    case CUPTI_ACTIVITY_OVERHEAD_CUPTI_BUFFER_FLUSH:
        return "BUFFER_FLUSH";
    case CUPTI_ACTIVITY_OVERHEAD_CUPTI_INSTRUMENTATION:
        return "INSTRUMENTATION";
    case CUPTI_ACTIVITY_OVERHEAD_CUPTI_RESOURCE:
        return "RESOURCE";
    case CUPTI_ACTIVITY_OVERHEAD_RUNTIME_TRIGGERED_MODULE_LOADING:
        return "MODULE_LOADING";
    case CUPTI_ACTIVITY_OVERHEAD_LAZY_FUNCTION_LOADING:
        return "LAZY_FUNCTION_LOADING";
    case CUPTI_ACTIVITY_OVERHEAD_COMMAND_BUFFER_FULL:
        return "COMMAND_BUFFER_FULL";
    case CUPTI_ACTIVITY_OVERHEAD_ACTIVITY_BUFFER_REQUEST:
        return "ACTIVITY_BUFFER_REQUEST";
    case CUPTI_ACTIVITY_OVERHEAD_UVM_ACTIVITY_INIT:
        return "UVM_ACTIVITY_INIT";
    default:
        return "CUPTI overhead";
    }
}

static void do_overhead(tb_cupti_tr *t, const CUpti_ActivityOverhead3 *o)
{
    t->c.overheads++;
    if (bad_time(t, o->start, o->end))
        return;
    const char *name = overhead_name(o->overheadKind);
    if (o->objectKind != CUPTI_ACTIVITY_OBJECT_DEVICE && o->objectKind != CUPTI_ACTIVITY_OBJECT_CONTEXT &&
        o->objectKind != CUPTI_ACTIVITY_OBJECT_STREAM) {
        /* a thread's, or the process's (no GPU: not drawn on one) */
        if (o->objectKind == CUPTI_ACTIVITY_OBJECT_THREAD && o->objectId.pt.threadId) {
            host_span(t, o->objectId.pt.threadId, name, TB_CAT_OVERHEAD, o->start, o->end);
            return;
        }
        tb_line *l = host_special_line(t, TB_CUPTI_HOST_LINE_OVERHEAD, "CUPTI overhead");
        int64_t meta = l ? tb_plane_event_meta_cat(t->hp, name, TB_CAT_OVERHEAD) : 0;
        if (meta > 0)
            add_span(t, l, meta, o->start, o->end);
        return;
    }
    devstate *d = get_dev(t, o->objectId.dcs.deviceId);
    if (!d)
        return;
    int64_t meta = tb_plane_event_meta_cat(d->p, name, TB_CAT_OVERHEAD);
    if (meta <= 0)
        return;
    lineslot *ls = get_line(d, TB_CUPTI_LINE_OVERHEAD);
    if (ls)
        add_span(t, ls->l, meta, o->start, o->end);
}

static void do_memory(tb_cupti_tr *t, const CUpti_ActivityMemory4 *m)
{
    t->c.memory++;
    if (m->memoryOperationType != CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_ALLOCATION &&
        m->memoryOperationType != CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_RELEASE)
        return;
    devrec r = {.start = m->timestamp,
                .end = m->timestamp,
                .dev = m->deviceId,
                .corr = m->correlationId,
                .ctx = m->contextId,
                .stream = m->streamId};
    devstate *d = rec_dev(t, &r, 0);
    if (!d)
        return;
    int alloc = m->memoryOperationType == CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_ALLOCATION;
    tb_line *l = device_event(t, d, TB_CUPTI_LINE_MEMORY, -1, alloc ? d->ev_alloc : d->ev_free, &r);
    if (!l)
        return;
    md_key key = {.dev = m->deviceId, .src = (uint32_t)m->memoryKind, .what = alloc ? 2 : 3, .bytes = m->bytes};
    add_ref_stat(l, alloc ? d->st_mad : d->st_mfd, mem_details_ref(t, d, &key));
    if (TB_GROW(t->mr, t->capmr, t->nmr + 1) < 0)
        return;
    t->mr[t->nmr] = (memrec){.ts = m->timestamp,
                             .addr = m->address,
                             .bytes = m->bytes,
                             .dev = m->deviceId,
                             .kind = (uint32_t)m->memoryKind,
                             .corr = m->correlationId,
                             .alloc = (uint32_t)alloc,
                             .seq = (uint32_t)t->nmr};
    t->nmr++;
}

static void do_device(tb_cupti_tr *t, const CUpti_ActivityDevice5 *v)
{
    if (v->id >= TB_CUPTI_MAX_DEVICES || t->pending_props[v->id].valid)
        return;
    tb_cupti_devprops p = {.valid = 1};
    snprintf(p.name, sizeof(p.name), "%s", v->name ? v->name : "");
    p.clock_khz = v->coreClockRate;
    p.sm_count = v->numMultiprocessors;
    p.cc_major = v->computeCapabilityMajor;
    p.cc_minor = v->computeCapabilityMinor;
    p.mem_bandwidth = v->globalMemoryBandwidth * 1000ull; /* CUPTI: KB/s */
    p.mem_size = v->globalMemorySize;
    p.warp_size = (int)v->numThreadsPerWarp;
    p.max_threads_per_sm = (int)(v->maxWarpsPerMultiprocessor * v->numThreadsPerWarp);
    p.max_blocks_per_sm = (int)v->maxBlocksPerMultiprocessor;
    p.regs_per_sm = (int)v->maxRegistersPerMultiprocessor;
    p.smem_per_sm = (int)v->maxSharedMemoryPerMultiprocessor;
    p.max_threads_per_block = (int)v->maxThreadsPerBlock;
    p.regs_per_block = (int)v->maxRegistersPerBlock;
    p.smem_per_block = (int)v->maxSharedMemoryPerBlock; /* opt-in and reserved: defaults below */
    tb_cupti_tr_set_device(t, v->id, &p);
}

/* A libcupti from CUDA 13.2 on writes Device6 where tbprof reads Device5
 * (TB_CUPTI_API_DEVICE6), and may lay out other records otherwise: a
 * pointer field read at the old place could be anything, and free() or a
 * read of it would end the job. So such a CUPTI's device records are not
 * read (the driver gives the same facts) and the memory it leaves the
 * client to free is kept, not freed: a few bytes a device, an overhead
 * record and a capture, held here (reachable: leak checkers stay quiet) up
 * to KEPT_MAX, then let go of unfreed. */
#define KEPT_MAX 4096
static void *kept[KEPT_MAX];
static atomic_size_t nkept;

static int layout_known(const tb_cupti_tr *t)
{
    return t->o.cupti_api < TB_CUPTI_API_DEVICE6; /* (read as Device5 whatever the headers) */
}

/* Memory CUPTI left the client to free: freed, or kept where its record's
 * layout is not known. */
static void client_free(const tb_cupti_tr *t, void *p)
{
    if (layout_known(t)) {
        free(p);
    } else if (p) {
        size_t i = atomic_fetch_add(&nkept, 1);
        if (i < KEPT_MAX)
            kept[i] = p;
    }
}

/* A device or context record: the device's facts, the context's device.
 * Read twice when prescanned: the second time finds both known. */
static void about_devices(tb_cupti_tr *t, CUpti_Activity *r)
{
    if (r->kind == CUPTI_ACTIVITY_KIND_DEVICE) {
        CUpti_ActivityDevice5 *v = (CUpti_ActivityDevice5 *)r;
        if (layout_known(t))
            do_device(t, v);
        if (t->o.cupti_api >= TB_CUPTI_API_DEVICE_NAME_OWNED) { /* else CUPTI's own string */
            client_free(t, (void *)v->name); /* CUPTI: the client frees it */
            v->name = NULL;
        }
    } else if (r->kind == CUPTI_ACTIVITY_KIND_CONTEXT) {
        const CUpti_ActivityContext3 *c = (const CUpti_ActivityContext3 *)r;
        note_ctx(t, c->contextId, c->deviceId);
    }
}

void tb_cupti_tr_prescan(tb_cupti_tr *t, uint8_t *buf, size_t valid, tb_cupti_next_fn next)
{
    CUpti_Activity *r = NULL;
    if (!buf || !valid)
        return;
    while (next(buf, valid, &r) == CUPTI_SUCCESS && r)
        if (r->kind == CUPTI_ACTIVITY_KIND_DEVICE || r->kind == CUPTI_ACTIVITY_KIND_CONTEXT)
            about_devices(t, r);
        else if (r->kind == CUPTI_ACTIVITY_KIND_RUNTIME)
            rc_add(t, ((const CUpti_ActivityAPI *)r)->correlationId);
}

void tb_cupti_tr_record(tb_cupti_tr *t, CUpti_Activity *r)
{
    t->c.records++;
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        do_kernel(t, (const CUpti_ActivityKernel10 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_MEMCPY:
        do_memcpy(t, (const CUpti_ActivityMemcpy6 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_MEMCPY2:
        do_p2p(t, (const CUpti_ActivityMemcpyPtoP4 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_MEMSET:
        do_memset(t, (const CUpti_ActivityMemset4 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_RUNTIME:
        do_api(t, (const CUpti_ActivityAPI *)r, 0);
        break;
    case CUPTI_ACTIVITY_KIND_DRIVER:
        do_api(t, (const CUpti_ActivityAPI *)r, 1);
        break;
    case CUPTI_ACTIVITY_KIND_MARKER:
        do_marker(t, (const CUpti_ActivityMarker2 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_OVERHEAD: {
        CUpti_ActivityOverhead3 *o = (CUpti_ActivityOverhead3 *)r;
        do_overhead(t, o);
        if (t->o.cupti_api >= TB_CUPTI_API_OVERHEAD3) { /* else not this record's field */
            client_free(t, o->overheadData); /* CUPTI: the client frees it */
            o->overheadData = NULL;
        }
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMORY2:
        do_memory(t, (const CUpti_ActivityMemory4 *)r);
        break;
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION: {
        const CUpti_ActivitySynchronization2 *s = (const CUpti_ActivitySynchronization2 *)r;
        t->c.syncs++;
        if (bad_time(t, s->start, s->end))
            break;
        if (TB_GROW(t->sy, t->capsy, t->nsy + 1) < 0)
            break;
        t->sy[t->nsy++] = (syncrec){.type = (uint32_t)s->type,
                                    .corr = s->correlationId,
                                    .ctx = s->contextId,
                                    .stream = s->streamId,
                                    .start = s->start,
                                    .end = s->end};
        break;
    }
    case CUPTI_ACTIVITY_KIND_DEVICE:
    case CUPTI_ACTIVITY_KIND_CONTEXT:
        about_devices(t, r);
        break;
    default:
        t->c.unknown++;
        break;
    }
}

int64_t tb_cupti_tr_buffer(tb_cupti_tr *t, uint8_t *buf, size_t valid, tb_cupti_next_fn next)
{
    CUpti_Activity *r = NULL;
    int64_t n = 0;
    if (!buf || !valid)
        return 0;
    CUptiResult rc;
    CUpti_Activity *prev = NULL;
    while ((rc = next(buf, valid, &r)) == CUPTI_SUCCESS && r) {
        tb_cupti_tr_record(t, r);
        prev = r;
        n++;
    }
    /* CUPTI_ERROR_INVALID_KIND: an incomplete record (work still running at
     * a forced flush); the buffer cannot be read past it, so whatever came
     * after it in this buffer is lost too: how many records is not known,
     * how many bytes is where CUPTI points at the record */
    if (rc != CUPTI_SUCCESS && rc != CUPTI_ERROR_MAX_LIMIT_REACHED) {
        t->c.incomplete++;
        t->c.cut_buffers++;
        if (r && r != prev && (uint8_t *)r > buf && (uint8_t *)r < buf + valid)
            t->c.cut_bytes += valid - (size_t)((uint8_t *)r - buf);
    }
    return n;
}

/* 1 and *dev when the process has one GPU as far as the records and the
 * driver tell (a device plane or device facts); 0 when several, or none. */
static int only_device(tb_cupti_tr *t, uint32_t *dev)
{
    int n = 0;
    for (uint32_t j = 0; j < TB_CUPTI_MAX_DEVICES; j++)
        if (t->dev[j] || t->pending_props[j].valid) {
            *dev = j;
            n++;
        }
    return n == 1;
}

/* A sync whose GPU is not known (its context in no record, several GPUs):
 * not drawn on a GPU it may not be on, but on the host plane's "CUDA sync"
 * line, with its context and stream; no correlation_id, which would make
 * it a second host event of its call's id (xprof takes those for
 * launches). */
static void host_sync(tb_cupti_tr *t, const syncrec *s, uint32_t ty)
{
    tb_line *l = host_special_line(t, TB_CUPTI_HOST_LINE_SYNC, "CUDA sync (GPU unknown)");
    int64_t meta = l ? tb_plane_event_meta_cat(t->hp, sync_names[ty], TB_CAT_CUDA_SYNC) : 0;
    if (meta <= 0 || add_span(t, l, meta, s->start, s->end) < 0)
        return;
    if (s->ctx != CUPTI_INVALID_CONTEXT_ID) {
        char buf[24];
        snprintf(buf, sizeof(buf), "$$%u", s->ctx);
        tb_line_stat_str(l, tb_plane_stat_meta(t->hp, TB_ST_CONTEXT_ID), buf);
    }
    if (s->stream != CUPTI_INVALID_STREAM_ID)
        tb_line_stat_u64(l, tb_plane_stat_meta(t->hp, TB_ST_STREAM_ID), s->stream);
}

static void emit_syncs(tb_cupti_tr *t)
{
    for (size_t i = 0; i < t->nsy; i++) {
        syncrec *s = &t->sy[i];
        uint32_t dev = 0;
        int found = ctx_dev(t, s->ctx, &dev);
        if (!found) /* context never seen: the process's one GPU, if it has one */
            found = only_device(t, &dev);
        uint32_t ty = s->type <= 4 ? s->type : 0;
        if (!found) {
            t->c.syncs_gpu_unknown++;
            host_sync(t, s, ty);
            continue;
        }
        devstate *d = get_dev(t, dev);
        if (!d)
            continue;
        devrec r = {.start = s->start, .end = s->end, .dev = dev, .corr = s->corr, .ctx = s->ctx,
                    .stream = s->stream};
        device_event(t, d, TB_CUPTI_LINE_SYNC, -1, d->ev_sync[ty], &r);
    }
    t->nsy = 0;
}

static int memrec_cmp(const void *a, const void *b)
{
    const memrec *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int memapi_cmp(const void *a, const void *b)
{
    uint32_t x = ((const memapi *)a)->corr, y = ((const memapi *)b)->corr;
    return x < y ? -1 : x > y;
}

/* By id, a runtime call before a driver call with the same id. */
static int memapi_order(const void *a, const void *b)
{
    int c = memapi_cmp(a, b);
    return c ? c : ((const memapi *)a)->driver - ((const memapi *)b)->driver;
}

/* The GPU memory timeline: for each device and memory kind (an allocator,
 * "GPU_0_device"), one MemoryAllocation / MemoryDeallocation event per
 * record, with the running total and its peak as the stats xprof's memory
 * profile reads (int64 values: it reads them with IntValue). Each goes on
 * the host line of the thread whose API call it belongs to (so xprof's
 * step grouping takes it into that thread's step), else on a "GPU memory"
 * line. CUPTI reports only what happens while we capture, so a total
 * starts at the least that must have been allocated already: just enough
 * that no release takes it below zero. */
static void emit_memory(tb_cupti_tr *t)
{
    if (!t->nmr)
        return;
    tb_plane *hp = host_plane(t);
    if (!hp)
        goto out;
    int64_t ev[2] = {tb_plane_event_meta_cat(hp, TB_EV_MEMORY_DEALLOCATION, TB_CAT_GPU_MEMORY),
                     tb_plane_event_meta_cat(hp, TB_EV_MEMORY_ALLOCATION, TB_CAT_GPU_MEMORY)};
    int64_t st_name = tb_plane_stat_meta(hp, TB_ST_ALLOCATOR_NAME),
            st_total = tb_plane_stat_meta(hp, TB_ST_BYTES_ALLOCATED),
            st_peak = tb_plane_stat_meta(hp, TB_ST_PEAK_BYTES_IN_USE),
            st_req = tb_plane_stat_meta(hp, TB_ST_REQUESTED_BYTES),
            st_bytes = tb_plane_stat_meta(hp, TB_ST_ALLOCATION_BYTES), st_addr = tb_plane_stat_meta(hp, TB_ST_ADDR),
            st_op = tb_plane_stat_meta(hp, TB_ST_TF_OP);
    if (ev[0] <= 0 || ev[1] <= 0 || st_op <= 0)
        goto out;
    qsort(t->mr, t->nmr, sizeof(*t->mr), memrec_cmp);
    if (t->nma) {
        /* one call per id: where CUPTI gives a runtime call and the driver
         * call inside it the same id, the runtime call (cudaMalloc, what
         * the program called) */
        qsort(t->ma, t->nma, sizeof(*t->ma), memapi_order);
        size_t k = 0;
        for (size_t i = 0; i < t->nma; i++)
            if (!k || t->ma[i].corr != t->ma[k - 1].corr)
                t->ma[k++] = t->ma[i];
        t->nma = k;
    }
    tb_line *orphans = NULL;
    for (size_t i = 0, j; i < t->nmr; i = j) {
        const memrec *first = &t->mr[i];
        int64_t run = 0, low = 0;
        for (j = i; j < t->nmr && t->mr[j].dev == first->dev && t->mr[j].kind == first->kind; j++) {
            run += t->mr[j].alloc ? (int64_t)t->mr[j].bytes : -(int64_t)t->mr[j].bytes;
            low = run < low ? run : low;
        }
        char name[64];
        snprintf(name, sizeof(name), "GPU_%u_%s", first->dev, tb_cupti_memory_kind_name((int)first->kind));
        int64_t total = -low, peak = total;
        for (size_t k = i; k < j; k++) {
            const memrec *m = &t->mr[k];
            total += m->alloc ? (int64_t)m->bytes : -(int64_t)m->bytes;
            peak = total > peak ? total : peak;
            memapi key = {.corr = m->corr};
            const memapi *a = t->nma ? bsearch(&key, t->ma, t->nma, sizeof(*t->ma), memapi_cmp) : NULL;
            tb_line *l = a ? host_line(t, a->tid) : NULL;
            if (!l)
                l = orphans ? orphans : (orphans = tb_plane_line(hp, TB_CUPTI_HOST_LINE_MEMORY, "GPU memory"));
            if (!l || add_span(t, l, ev[m->alloc], m->ts, m->ts) < 0)
                continue;
            tb_line_stat_str(l, st_name, name);
            tb_line_stat_i64(l, st_total, total);
            tb_line_stat_i64(l, st_peak, peak);
            tb_line_stat_i64(l, st_req, (int64_t)m->bytes);
            tb_line_stat_i64(l, st_bytes, (int64_t)m->bytes);
            tb_line_stat_i64(l, st_addr, (int64_t)m->addr);
            if (a)
                tb_line_stat_str(l, st_op, tb_plane_event_name(hp, a->meta));
        }
    }
out:
    t->nmr = t->nma = 0;
}

int tb_cupti_tr_finish(tb_cupti_tr *t)
{
    emit_syncs(t);
    emit_memory(t);
    t->c.unmatched_markers += t->mk.n + t->me.n;
    marker_clear(&t->mk);
    marker_clear(&t->me);
    for (uint32_t i = 0; i < TB_CUPTI_MAX_DEVICES; i++) {
        devstate *d = t->dev[i];
        if (!d)
            continue;
        for (size_t j = 0; j < d->nlines; j++) {
            lineslot *ls = &d->lines[j];
            if (!ls->mask)
                continue;
            char name[160];
            int n = snprintf(name, sizeof(name), "Stream #%lld(", (long long)ls->id);
            for (int ty = 0; ty < T_NTYPES && n < (int)sizeof(name) - 20; ty++)
                if (ls->mask & (1u << ty))
                    n += snprintf(name + n, sizeof(name) - (size_t)n, "%s%s",
                                  name[n - 1] == '(' ? "" : ",", type_names[ty]);
            snprintf(name + n, sizeof(name) - (size_t)n, ")");
            char *nn = strdup(name);
            if (nn) {
                free(ls->l->name);
                ls->l->name = nn;
            }
        }
        tb_plane_stat_str(d->p, TB_ST_DEV_VENDOR, "Nvidia");
        const tb_cupti_devprops *p = &d->props;
        if (p->valid) {
            if (p->name[0])
                tb_plane_stat_str(d->p, TB_ST_DEV_NAME, p->name);
            if (p->clock_khz)
                tb_plane_stat_i64(d->p, TB_ST_DEV_CLOCK_RATE, p->clock_khz);
            if (p->sm_count)
                tb_plane_stat_i64(d->p, TB_ST_DEV_CORE_COUNT, p->sm_count);
            if (p->mem_bandwidth)
                tb_plane_stat_u64(d->p, TB_ST_DEV_MEM_BANDWIDTH, p->mem_bandwidth);
            if (p->mem_size)
                tb_plane_stat_u64(d->p, TB_ST_DEV_MEM_SIZE, p->mem_size);
            tb_plane_stat_i64(d->p, TB_ST_DEV_CC_MAJOR, p->cc_major);
            tb_plane_stat_i64(d->p, TB_ST_DEV_CC_MINOR, p->cc_minor);
        }
    }
    return 0;
}

tb_cupti_tr_counts tb_cupti_tr_get_counts(const tb_cupti_tr *t) { return t->c; }

void tb_cupti_tr_free(tb_cupti_tr *t)
{
    if (!t)
        return;
    for (int i = 0; i < TB_CUPTI_MAX_DEVICES; i++) {
        if (t->dev[i]) {
            free(t->dev[i]->lines);
            free(t->dev[i]);
        }
    }
    free(t->api[0]);
    free(t->api[1]);
    free(t->mr);
    free(t->ma);
    free(t->kn);
    marker_set_free(&t->mk);
    marker_set_free(&t->me);
    free(t->sy);
    free(t->cm);
    free(t->rc);
    free(t);
}
