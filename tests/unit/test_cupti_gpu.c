/* test_cupti_gpu.c - the CUPTI source against the fake libcupti: lifecycle
 * (subscribe/enable only while capturing, everything released after),
 * translation of every record kind (names, stats strings, lines, times),
 * host/device correlation, drops and pool exhaustion, failure reasons. */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "cupti_lib.h"
#include "gpu.h"
#include "host.h"
#include "stats.h"
#include "tap.h"
#include "trace.h"
#include "translate.h"

#define CUPTI_FIXED_GRAPH_CORR "130101" /* cuptiGetVersion of CUDA 13.1 with CUPTI update 1 */

static char fake_full[600], fake_old[600], fake_broken[600], script[256];

static const char *SCRIPT =
    "# device 0 facts, then one step of work\n"
    "device id=0 name=FakeGPU-H100 sms=132 cc=9.0 clock=1980000 membw=3352000000 memsize=85899345920 "
    "warp=32 maxwarps=64 maxblocks=32 regs=65536 smem=233472\n"
    "context ctx=1 dev=0\n"
    "runtime name=cudaLaunchKernel_v7000 cbid=211 tid=main corr=5 start=1 end=4\n"
    "kernel name=_Z6vecAddPfS_S_i start=10 end=30 dev=0 ctx=1 stream=7 corr=5 grid=128,1,1 block=256,1,1 "
    "regs=32 ssmem=0 dsmem=0\n"
    "runtime name=cudaLaunchKernel_v7000 cbid=211 tid=main corr=6 start=5 end=8\n"
    "kernel name=gemm_kernel start=31 end=81 dev=0 ctx=1 stream=7 corr=6 grid=64,2,1 block=128,2,1 "
    "regs=64 ssmem=1024 dsmem=2048 graph=3\n"
    "kernel name=attn_kernel start=108 end=109 dev=0 ctx=1 stream=13 corr=16 grid=132,1,1 block=256,1,1 "
    "regs=40 ssmem=0 dsmem=77824\n"
    "kernel name=tile_kernel start=109 end=110 dev=0 ctx=1 stream=13 corr=17 grid=132,1,1 block=128,1,1 "
    "regs=32 ssmem=0 dsmem=58368\n"
    "runtime name=cudaMemcpyAsync_v3020 cbid=41 tid=main corr=7 start=9 end=12\n"
    "memcpy kind=htod src=pageable dst=device bytes=4096 async=1 start=82 end=90 dev=0 ctx=1 stream=7 corr=7\n"
    "memcpy kind=dtoh src=device dst=pinned bytes=65536 async=0 start=91 end=99 dev=0 ctx=1 stream=9 corr=8\n"
    "p2p srcdev=0 dstdev=1 src=device dst=device bytes=8192 async=1 start=100 end=104 ctx=1 stream=9 corr=9\n"
    "p2p srcdev=0 dstdev=1 dev=1 src=device dst=device bytes=16384 async=1 start=100 end=102 ctx=2 stream=11 corr=15\n"
    "memset bytes=1024 value=0 mem=device async=0 start=105 end=106 dev=0 ctx=1 stream=9 corr=10\n"
    "driver name=cuMemAlloc_v2 cbid=70 tid=main corr=11 start=13 end=15\n"
    "malloc addr=0x7000 bytes=1048576 mem=device dev=0 ctx=1 stream=7 corr=11 start=14\n"
    "free addr=0x7000 bytes=1048576 mem=device dev=0 ctx=1 stream=7 corr=12 start=120\n"
    "driver name=cuMemAlloc_v2 cbid=70 tid=main corr=18 start=122 end=125\n" /* the inner call ends first */
    "runtime name=cudaMalloc_v3020 cbid=20 tid=main corr=18 start=121 end=126\n"
    /* a per-thread default stream build's launch (nvcc --default-stream per-thread) */
    "runtime name=cudaLaunchKernel_ptsz_v7000 cbid=214 tid=main corr=19 start=127 end=128\n"
    "malloc addr=0x9000 bytes=4096 mem=device dev=0 ctx=1 stream=7 corr=18 start=123\n"
    "sync type=stream ctx=1 stream=7 corr=13 start=20 end=110\n"
    "sync type=context ctx=1 stream=4294967295 corr=14 start=111 end=114\n"
    "marker id=1 name=train_step tid=main start=0 end=115\n"
    "marker id=2 name=allreduce domain=NCCL tid=main start=30 end=40\n"
    "overhead ovkind=flush obj=device dev=0 start=111 end=113\n"
    "overhead ovkind=lazy obj=device dev=0 start=113 end=114\n";

/* An idle thread: blocks reading the pipe until its write end closes. */
static void *wait_on_pipe(void *fd)
{
    char c;
    while (read(*(int *)fd, &c, 1) > 0)
        ;
    return NULL;
}

static void write_script(void)
{
    snprintf(script, sizeof(script), "/tmp/tbprof_test_cupti_%d.txt", (int)getpid());
    FILE *f = fopen(script, "w");
    fputs(SCRIPT, f);
    fclose(f);
    setenv("TBFAKE_CUPTI_SCRIPT", script, 1);
}

typedef void (*state_fn)(int *, int *, unsigned long long *, unsigned long long *, unsigned long long *);
static void fake_state(const char *path, int *sub, int *nen, unsigned long long *fl, unsigned long long *dl,
                       unsigned long long *dr)
{
    *sub = *nen = -1;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return;
    state_fn f = (state_fn)(uintptr_t)dlsym(h, "tbfake_cupti_state");
    if (f)
        f(sub, nen, fl, dl, dr);
    dlclose(h);
}
/* A clock in other units (TSC-like ticks), as another CUPTI client would
 * register between our captures. */
static uint64_t CUPTIAPI ticks_clock(void) { return (uint64_t)tb_mono_ns() * 3; }

static void other_tool_clock(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return;
    CUptiResult (*reg)(CUpti_TimestampCallbackFunc) =
        (CUptiResult(*)(CUpti_TimestampCallbackFunc))(uintptr_t)dlsym(h, "cuptiActivityRegisterTimestampCallback");
    CHECK(reg && reg(ticks_clock) == CUPTI_SUCCESS);
    dlclose(h);
}

static int fake_tid_type(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return -2;
    int (*f)(void) = (int (*)(void))(uintptr_t)dlsym(h, "tbfake_cupti_tid_type");
    int r = f ? f() : -3;
    dlclose(h);
    return r;
}

/* One CUDA runtime call returning in the job, in whichever fake is loaded:
 * 1 when CUPTI called our subscriber back (a detach was pending). */
static int job_cuda_call(void)
{
    void *h = dlopen("libcupti.so", RTLD_NOW | RTLD_NOLOAD);
    int (*f)(int, unsigned) = h ? (int (*)(int, unsigned))(uintptr_t)dlsym(h, "tbfake_cuda_api") : NULL;
    int r = f ? f(CUPTI_CB_DOMAIN_RUNTIME_API, 211) : -1;
    if (h)
        dlclose(h);
    return r;
}

/* The fake's callback domains enabled now (bit per domain), subscriptions
 * and cuptiFinalize calls so far. */
typedef struct detach_state {
    int domains;
    unsigned long long subscribes, finalizes;
} detach_state;
static detach_state fake_detach(void)
{
    detach_state d = {-1, 0, 0};
    void *h = dlopen("libcupti.so", RTLD_NOW | RTLD_NOLOAD);
    void (*f)(int *, unsigned long long *, unsigned long long *) =
        h ? (void (*)(int *, unsigned long long *, unsigned long long *))(uintptr_t)dlsym(h, "tbfake_cupti_detach")
          : NULL;
    if (f)
        f(&d.domains, &d.subscribes, &d.finalizes);
    if (h)
        dlclose(h);
    return d;
}
#define API_DOMAINS ((1 << CUPTI_CB_DOMAIN_RUNTIME_API) | (1 << CUPTI_CB_DOMAIN_DRIVER_API))

static void set_teardown(int mode)
{
    tb_config c = *tb_config_get();
    c.cupti_teardown = mode;
    tb_config_set_global(&c);
}

/* ---- space helpers ---- */
static tb_line *line_named(tb_plane *p, const char *name)
{
    for (size_t i = 0; p && i < p->nlines; i++)
        if (strcmp(p->lines[i]->name, name) == 0)
            return p->lines[i];
    return NULL;
}
static const tb_event *event_named(tb_plane *p, tb_line *l, const char *name, int nth)
{
    for (size_t i = 0; l && i < l->nevents; i++)
        if (strcmp(tb_plane_event_name(p, l->events[i].meta), name) == 0 && nth-- == 0)
            return &l->events[i];
    return NULL;
}
static int count_named(tb_plane *p, tb_line *l, const char *name)
{
    int n = 0;
    for (size_t i = 0; l && i < l->nevents; i++)
        n += strcmp(tb_plane_event_name(p, l->events[i].meta), name) == 0;
    return n;
}
static const char *str_stat(tb_plane *p, tb_line *l, const tb_event *e, const char *name)
{
    const tb_stat *s = e ? tb_event_find_stat(p, l, e, name) : NULL;
    return s && s->type == TB_STAT_REF ? tb_plane_stat_name(p, s->v.ref) : "(none)";
}
static long long int_stat(tb_plane *p, tb_line *l, const tb_event *e, const char *name)
{
    const tb_stat *s = e ? tb_event_find_stat(p, l, e, name) : NULL;
    if (!s)
        return -1;
    return s->type == TB_STAT_UINT64 ? (long long)s->v.u : (long long)s->v.i;
}
static long long plane_int(tb_plane *p, const char *name)
{
    for (size_t i = 0; p && i < p->nstats; i++)
        if (strcmp(tb_plane_stat_name(p, p->stats[i].meta), name) == 0)
            return p->stats[i].type == TB_STAT_UINT64 ? (long long)p->stats[i].v.u : (long long)p->stats[i].v.i;
    return -1;
}
static const char *plane_str(tb_plane *p, const char *name)
{
    for (size_t i = 0; p && i < p->nstats; i++)
        if (strcmp(tb_plane_stat_name(p, p->stats[i].meta), name) == 0 && p->stats[i].type == TB_STAT_REF)
            return tb_plane_stat_name(p, p->stats[i].v.ref);
    return "(none)";
}
static int has_warning(tb_space *s, const char *needle)
{
    for (size_t i = 0; i < s->nwarnings; i++)
        if (strstr(s->warnings[i], needle))
            return 1;
    return 0;
}

static tb_space *capture_polled(tb_source *src, size_t bytes, int *rc, const char **why, int64_t *t0, int polls)
{
    tb_capture_info info = {.begin_ns = tb_real_ns(), .buffer_bytes = bytes};
    *why = NULL;
    *t0 = tb_real_ns();
    *rc = src->start(src->ctx, &info, why);
    if (*rc < 0)
        return NULL;
    for (int i = 0; i < polls; i++)
        src->poll(src->ctx);
    src->stop(src->ctx);
    tb_space *s = tb_space_new();
    src->collect(src->ctx, s);
    /* idle again, as in the agent; the job's next CUDA call lets a pending
     * detach happen, so every capture starts from a detached CUPTI */
    src->release(src->ctx);
    job_cuda_call();
    return s;
}

/* the call that subscribed in the last capture, "(none)" when none did */
static const char *subscribed_with(void)
{
    const char *w = tb_gpu_last_stats().subscribed_with;
    return w ? w : "(none)";
}

static tb_space *capture(tb_source *src, size_t bytes, int *rc, const char **why, int64_t *t0)
{
    return capture_polled(src, bytes, rc, why, t0, 0);
}

/* The fake's count of buffers handed to it, and of those wholly resident. */
static void fake_buffers(const char *path, unsigned long long *handed, unsigned long long *resident)
{
    typedef void (*buffers_fn)(unsigned long long *, unsigned long long *);
    *handed = *resident = 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    buffers_fn f = h ? (buffers_fn)(uintptr_t)dlsym(h, "tbfake_cupti_buffers") : NULL;
    if (f)
        f(handed, resident);
    if (h)
        dlclose(h);
}

static void check_full_translation(tb_space *s, int64_t t0)
{
    tb_plane *d = tb_space_find_plane(s, "/device:GPU:0");
    tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
    CHECK(d != NULL);
    CHECK(h != NULL);
    if (!d || !h)
        return;
    /* lines named like the reference tracer */
    tb_line *s7 = line_named(d, "Stream #7(Compute,MemcpyH2D)");
    tb_line *s9 = line_named(d, "Stream #9(MemcpyD2H,MemcpyP2P,Memset)");
    CHECKF(s7 != NULL, "Stream #7 line missing");
    CHECKF(s9 != NULL, "Stream #9 line missing");
    /* kernels: demangled, though this C program has no libstdc++ of its own */
    const tb_event *k1 = event_named(d, s7, "vecAdd(float*, float*, float*, int)", 0);
    const tb_event *k2 = event_named(d, s7, "gemm_kernel", 0);
    CHECK(k1 != NULL);
    CHECK(k2 != NULL);
    if (k1 && k2) {
        CHECK_EQ_I(k1->dur_ns, 20000);
        CHECK_EQ_I(k2->dur_ns, 50000);
        CHECK_EQ_I(k2->start_ns - k1->start_ns, 21000); /* exact offsets survive */
        CHECKF(llabs(k1->start_ns - (t0 + 10000)) < 2000000000LL, "kernel at %lld, capture at %lld",
               (long long)k1->start_ns, (long long)t0);
        CHECK_STR(str_stat(d, s7, k1, TB_ST_KERNEL_DETAILS),
                  "regs:32 static_shared:0 dynamic_shared:0 grid:128,1,1 block:256,1,1 occ_pct:100");
        /* 64 regs x 256 threads: 16K regs per block, 4 blocks of 8 warps -> 50% */
        CHECK_STR(str_stat(d, s7, k2, TB_ST_KERNEL_DETAILS),
                  "regs:64 static_shared:1024 dynamic_shared:2048 grid:64,2,1 block:128,2,1 occ_pct:50");
        /* (launches not traced: kernels of another tool's thread, say)
         * NVIDIA's calculator, as the reference tracer: a block's shared
         * memory plus the driver's 1 KB, in the carveout the driver picks
         * (228 KB: 2 blocks of 76+1 KB -> 25%; 3 of 57+1 KB -> 18.75%) */
        tb_line *s13 = line_named(d, "Stream #13(Compute)");
        CHECK_STR(str_stat(d, s13, event_named(d, s13, "attn_kernel", 0), TB_ST_KERNEL_DETAILS),
                  "regs:40 static_shared:0 dynamic_shared:77824 grid:132,1,1 block:256,1,1 occ_pct:25");
        CHECK_STR(str_stat(d, s13, event_named(d, s13, "tile_kernel", 0), TB_ST_KERNEL_DETAILS),
                  "regs:32 static_shared:0 dynamic_shared:58368 grid:132,1,1 block:128,1,1 occ_pct:18.75");
        CHECK_EQ_I(int_stat(d, s7, k1, TB_ST_CORRELATION_ID), 5);
        CHECK_EQ_I(int_stat(d, s7, k2, TB_ST_CORRELATION_ID), 6);
        CHECK_STR(str_stat(d, s7, k1, TB_ST_CONTEXT_ID), "$$1");
        CHECK_EQ_I(int_stat(d, s7, k1, TB_ST_STREAM_ID), -1); /* the line is the stream */
        CHECK_EQ_I(int_stat(d, s7, k2, TB_ST_CUDA_GRAPH_ID), 3);
        CHECK_EQ_I(int_stat(d, s7, k1, TB_ST_CUDA_GRAPH_ID), -1);
        CHECK_EQ_I(d->event_meta[k1->meta].category, TB_CAT_KERNEL);
    }
    const tb_event *h2d = event_named(d, s7, "MemcpyH2D", 0);
    CHECK(h2d != NULL);
    CHECK_STR(str_stat(d, s7, h2d, TB_ST_MEMCPY_DETAILS),
              "kind_src:pageable kind_dst:device size:4096 dest:0 async:1");
    if (h2d)
        CHECK_EQ_I(d->event_meta[h2d->meta].category, TB_CAT_MEMCPY);
    const tb_event *d2h = event_named(d, s9, "MemcpyD2H", 0);
    CHECK_STR(str_stat(d, s9, d2h, TB_ST_MEMCPY_DETAILS),
              "kind_src:device kind_dst:pinned size:65536 dest:0 async:0");
    const tb_event *p2p = event_named(d, s9, "MemcpyP2P", 0);
    CHECK_STR(str_stat(d, s9, p2p, TB_ST_MEMCPY_DETAILS),
              "kind_src:device kind_dst:device size:8192 dest:1 async:1");
    /* a peer copy run by device 1 (its stream 11) from device 0: on GPU:1 */
    tb_plane *d1 = tb_space_find_plane(s, "/device:GPU:1");
    tb_line *s11 = d1 ? line_named(d1, "Stream #11(MemcpyP2P)") : NULL;
    CHECKF(s11 != NULL, "no Stream #11 line on /device:GPU:1");
    const tb_event *pull = event_named(d1, s11, "MemcpyP2P", 0);
    CHECK_STR(str_stat(d1, s11, pull, TB_ST_MEMCPY_DETAILS),
              "kind_src:device kind_dst:device size:16384 dest:1 async:1");
    const tb_event *ms = event_named(d, s9, "Memset", 0);
    CHECK_STR(str_stat(d, s9, ms, TB_ST_MEMSET_DETAILS), "kind:device num_bytes:1024 async:0");
    if (ms)
        CHECK_EQ_I(d->event_meta[ms->meta].category, TB_CAT_MEMSET);
    /* memory, sync, overhead lines */
    tb_line *mem = line_named(d, "Memory");
    const tb_event *ma = event_named(d, mem, "MemoryAlloc", 0), *mf = event_named(d, mem, "MemoryFree", 0);
    CHECK_STR(str_stat(d, mem, ma, TB_ST_MEMALLOC_DETAILS), "kind:device num_bytes:1048576");
    CHECK_STR(str_stat(d, mem, mf, TB_ST_MEMFREE_DETAILS), "kind:device num_bytes:1048576");
    tb_line *sy = line_named(d, "CUDA sync");
    const tb_event *se = event_named(d, sy, "Stream Sync", 0);
    CHECK(se != NULL);
    if (se) {
        CHECK_EQ_I(se->dur_ns, 90000);
        CHECK_EQ_I(int_stat(d, sy, se, TB_ST_CORRELATION_ID), 13);
        CHECK_EQ_I(int_stat(d, sy, se, TB_ST_STREAM_ID), 7);
        CHECK_EQ_I(d->event_meta[se->meta].category, TB_CAT_CUDA_SYNC);
    }
    /* a context-wide sync: CUPTI's "no stream" id is not written as one */
    const tb_event *ce = event_named(d, sy, "Context Sync", 0);
    CHECK(ce != NULL);
    if (ce)
        CHECK(!tb_event_find_stat(d, sy, ce, TB_ST_STREAM_ID));
    tb_line *ov = line_named(d, "CUPTI overhead");
    CHECK(event_named(d, ov, "BUFFER_FLUSH", 0) != NULL);
    CHECK(event_named(d, ov, "LAZY_FUNCTION_LOADING", 0) != NULL); /* a stall worth its name */
    /* what is not GPU execution sits on lines xprof's analyses skip (its
     * derived-line ids); streams do not */
    const tb_line *derived[] = {mem, sy, ov};
    for (size_t i = 0; i < 3; i++)
        CHECKF(derived[i] && derived[i]->id >= 0xdeadbeefLL && derived[i]->id <= 0xdeadbeefLL + 289,
               "line %zu id %lld outside xprof's derived range", i, derived[i] ? (long long)derived[i]->id : -1LL);
    CHECK_EQ_I(ov ? ov->id : 0, 0xdeadbeefLL + 6); /* the reference tracer's overhead line */
    CHECK(s7 && s7->id == 7 && s9 && s9->id == 9);
    /* device facts */
    CHECK_STR(plane_str(d, TB_ST_DEV_VENDOR), "Nvidia");
    CHECK_STR(plane_str(d, TB_ST_DEV_NAME), "FakeGPU-H100");
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_CLOCK_RATE), 1980000);
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_CORE_COUNT), 132);
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_MEM_BANDWIDTH), 3352000000000LL);
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_MEM_SIZE), 85899345920LL);
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_CC_MAJOR), 9);
    CHECK_EQ_I(plane_int(d, TB_ST_DEV_CC_MINOR), 0);
    /* host side: API calls on the main thread's line, same correlation ids */
    tb_line *hl = tb_plane_find_line(h, getpid());
    CHECK(hl != NULL);
    CHECK_EQ_I(count_named(h, hl, "cudaLaunchKernel"), 2);
    /* version suffixes go, the stream one stays */
    CHECK_EQ_I(count_named(h, hl, "cudaLaunchKernel_ptsz"), 1);
    const tb_event *l1 = event_named(h, hl, "cudaLaunchKernel", 0), *l2 = event_named(h, hl, "cudaLaunchKernel", 1);
    long long c1 = int_stat(h, hl, l1, TB_ST_CORRELATION_ID), c2 = int_stat(h, hl, l2, TB_ST_CORRELATION_ID);
    CHECK((c1 == 5 && c2 == 6) || (c1 == 6 && c2 == 5));
    if (l1 && k1)
        CHECK(l1->start_ns < k1->start_ns || l2->start_ns < k1->start_ns);
    const tb_event *mc = event_named(h, hl, "cudaMemcpyAsync", 0);
    CHECK_EQ_I(int_stat(h, hl, mc, TB_ST_CORRELATION_ID), 7);
    if (mc)
        CHECK_EQ_I(h->event_meta[mc->meta].category, TB_CAT_CUDA_RUNTIME);
    const tb_event *dr = event_named(h, hl, "cuMemAlloc", 0);
    CHECK(dr != NULL);
    if (dr)
        CHECK_EQ_I(h->event_meta[dr->meta].category, TB_CAT_CUDA_DRIVER);
    const tb_event *nv = event_named(h, hl, "train_step", 0);
    CHECK(nv != NULL);
    if (nv) {
        CHECK_EQ_I(nv->dur_ns, 115000);
        CHECK_EQ_I(h->event_meta[nv->meta].category, TB_CAT_USER);
        CHECK(tb_event_find_stat(h, hl, nv, TB_ST_NVTX_DOMAIN) == NULL); /* the default domain */
    }
    const tb_event *ar = event_named(h, hl, "allreduce", 0);
    CHECK(ar != NULL);
    if (ar) {
        CHECK_EQ_I(ar->dur_ns, 10000);
        CHECK_STR(str_stat(h, hl, ar, TB_ST_NVTX_DOMAIN), "NCCL");
    }
    CHECK_EQ_I(plane_int(h, TB_ST_CUPTI_DROPPED), 0);
    CHECK_EQ_I(plane_int(h, TB_ST_POOL_EXHAUSTED), 0);
    /* the memory timeline: the allocation on the thread of its cuMemAlloc,
     * the release (no API record) on the "GPU memory" line; int64 stats */
    const tb_event *al = event_named(h, hl, TB_EV_MEMORY_ALLOCATION, 0);
    tb_line *gm = line_named(h, "GPU memory");
    const tb_event *rl = event_named(h, gm, TB_EV_MEMORY_DEALLOCATION, 0);
    CHECK(al != NULL);
    CHECK(rl != NULL);
    if (al && rl) {
        CHECK_STR(str_stat(h, hl, al, TB_ST_ALLOCATOR_NAME), "GPU_0_device");
        CHECK_STR(str_stat(h, gm, rl, TB_ST_ALLOCATOR_NAME), "GPU_0_device");
        CHECK_STR(str_stat(h, hl, al, TB_ST_TF_OP), "cuMemAlloc");
        /* a cudaMalloc and the cuMemAlloc inside it with one id (as CUPTI
         * may report them): named for the runtime call */
        const tb_event *al2 = event_named(h, hl, TB_EV_MEMORY_ALLOCATION, 1);
        CHECK(al2 != NULL);
        CHECK_STR(str_stat(h, hl, al2, TB_ST_TF_OP), "cudaMalloc");
        CHECK(tb_event_find_stat(h, gm, rl, TB_ST_TF_OP) == NULL);
        const tb_stat *bytes = tb_event_find_stat(h, hl, al, TB_ST_BYTES_ALLOCATED);
        CHECK(bytes && bytes->type == TB_STAT_INT64);
        CHECK_EQ_I(int_stat(h, hl, al, TB_ST_BYTES_ALLOCATED), 1048576);
        CHECK_EQ_I(int_stat(h, gm, rl, TB_ST_BYTES_ALLOCATED), 0);
        CHECK_EQ_I(int_stat(h, gm, rl, TB_ST_PEAK_BYTES_IN_USE), 1048576);
        CHECK_EQ_I(int_stat(h, hl, al, TB_ST_ALLOCATION_BYTES), 1048576);
        CHECK_EQ_I(int_stat(h, hl, al, TB_ST_ADDR), 0x7000);
        CHECK_EQ_I(rl->start_ns - al->start_ns, 106000);
        CHECK_EQ_I(al->dur_ns, 0);
        CHECK_EQ_I(h->event_meta[al->meta].category, TB_CAT_GPU_MEMORY);
    }
}

/* A capture of the whole script, checked in full. */
static void capture_full(tb_source *src)
{
    int rc;
    const char *why;
    int64_t t0;
    tb_space *s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECKF(rc == 0, "capture: %d %s", rc, rc ? why : "");
    if (s) {
        check_full_translation(s, t0);
        tb_space_free(s);
    }
}

/* NVTX ranges from CUPTI's marker records: a range started on one thread
 * and ended on another has its start and end in two per-thread buffers,
 * completed in either order; both orders give the range. */
static void markers_in_either_order(void)
{
    tb_space *s = tb_space_new();
    tb_cupti_tr_opts o = {.ts_to_epoch_ns = 0};
    tb_cupti_tr *t = s ? tb_cupti_tr_new(s, &o) : NULL;
    CHECK(t != NULL);
    if (!t) {
        tb_space_free(s);
        return;
    }
    CUpti_ActivityMarker2 m[6];
    memset(m, 0, sizeof(m));
    const char *names[] = {"end_first", "end_first", "start_first", "start_first", "no_end", "no_start"};
    uint32_t ids[] = {1, 1, 2, 2, 3, 4};
    uint32_t flags[] = {CUPTI_ACTIVITY_FLAG_MARKER_END, CUPTI_ACTIVITY_FLAG_MARKER_START,
                        CUPTI_ACTIVITY_FLAG_MARKER_START, CUPTI_ACTIVITY_FLAG_MARKER_END,
                        CUPTI_ACTIVITY_FLAG_MARKER_START, CUPTI_ACTIVITY_FLAG_MARKER_END};
    uint64_t ts[] = {5000, 1000, 2000, 3000, 4000, 6000};
    for (int i = 0; i < 6; i++) {
        m[i].kind = CUPTI_ACTIVITY_KIND_MARKER;
        m[i].flags = (CUpti_ActivityFlag)flags[i];
        m[i].id = ids[i];
        m[i].timestamp = ts[i];
        m[i].objectKind = CUPTI_ACTIVITY_OBJECT_THREAD;
        m[i].objectId.pt.threadId = 4242;
        m[i].name = flags[i] == CUPTI_ACTIVITY_FLAG_MARKER_START ? names[i] : NULL;
        tb_cupti_tr_record(t, (CUpti_Activity *)&m[i]);
    }
    CHECK_EQ_I(tb_cupti_tr_finish(t), 0);
    CHECK_EQ_I(tb_cupti_tr_get_counts(t).unmatched_markers, 2); /* no_end, no_start */
    tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
    tb_line *l = h ? tb_host_line(s, 4242) : NULL;
    const tb_event *a = event_named(h, l, "end_first", 0), *b = event_named(h, l, "start_first", 0);
    CHECK(a != NULL && b != NULL);
    if (a)
        CHECK_EQ_I(a->dur_ns, 4000);
    if (b)
        CHECK_EQ_I(b->dur_ns, 1000);
    CHECK(event_named(h, l, "no_end", 0) == NULL);
    tb_cupti_tr_free(t);
    tb_space_free(s);
}

/* ---- NVTX marker pairing against a reference ---- */

/* The pairing of marker records as it was first written (a scan of the
 * waiting records, newest first), kept here as the reference for the
 * hashed one: what each record gives, in the order it gives it. */
typedef struct ref_mk {
    uint32_t id, tid;
    uint64_t ts;
    const char *name, *domain;
} ref_mk;
typedef struct ref_span {
    uint32_t tid;
    const char *name, *domain;
    uint64_t start, end;
} ref_span;
typedef struct ref_pairing {
    ref_mk *mk, *me;
    size_t nmk, nme;
    ref_span *sp;
    size_t nsp;
    long long unmatched, bad_time;
} ref_pairing;

static int ref_take(ref_mk *v, size_t *n, uint32_t id, ref_mk *out)
{
    for (size_t i = *n; i-- > 0;)
        if (v[i].id == id) {
            *out = v[i];
            memmove(&v[i], &v[i + 1], (*n - i - 1) * sizeof(*v));
            --*n;
            return 1;
        }
    return 0;
}

static void ref_span_add(ref_pairing *r, uint32_t tid, const char *name, const char *domain, uint64_t s, uint64_t e)
{
    r->sp[r->nsp++] = (ref_span){tid, name && *name ? name : "(unnamed)", domain, s, e};
}

static void ref_record(ref_pairing *r, const CUpti_ActivityMarker2 *m)
{
    if (m->objectKind != CUPTI_ACTIVITY_OBJECT_THREAD)
        return;
    uint32_t tid = m->objectId.pt.threadId;
    ref_mk st, end;
    if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_START) {
        st = (ref_mk){m->id, tid, m->timestamp, m->name, m->domain};
        if (ref_take(r->me, &r->nme, m->id, &end)) {
            if (end.ts >= st.ts && st.ts)
                ref_span_add(r, st.tid, st.name, st.domain, st.ts, end.ts);
            else
                r->bad_time++;
            return;
        }
        r->mk[r->nmk++] = st;
    } else if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_END) {
        if (ref_take(r->mk, &r->nmk, m->id, &st)) {
            if (m->timestamp >= st.ts && st.ts)
                ref_span_add(r, st.tid, st.name, st.domain, st.ts, m->timestamp);
            else
                r->bad_time++;
            return;
        }
        r->me[r->nme++] = (ref_mk){m->id, tid, m->timestamp, NULL, NULL};
    } else if ((m->flags & CUPTI_ACTIVITY_FLAG_MARKER_INSTANTANEOUS) && m->timestamp) {
        ref_span_add(r, tid, m->name, m->domain, m->timestamp, m->timestamp);
    }
}

enum { MK_THREADS = 4 };

typedef struct mk_stream {
    CUpti_ActivityMarker2 *v;
    size_t n, cap, at;
} mk_stream;

static void mk_put(mk_stream *s, uint32_t flags, uint32_t id, uint32_t tid, uint64_t ts, const char *name,
                   const char *domain, int kind)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->v = realloc(s->v, s->cap * sizeof(*s->v));
    }
    CUpti_ActivityMarker2 *m = &s->v[s->n++];
    memset(m, 0, sizeof(*m));
    m->kind = CUPTI_ACTIVITY_KIND_MARKER;
    m->flags = (CUpti_ActivityFlag)flags;
    m->id = id;
    m->timestamp = ts;
    m->objectKind = (CUpti_ActivityObjectKind)kind;
    m->objectId.pt.threadId = tid;
    m->name = name;
    m->domain = domain;
}

/* Random NVTX ranges on MK_THREADS threads, as CUPTI would hand their
 * records over: each thread's records in time order in its own buffers,
 * the buffers completed in any order. Some ranges end on another thread;
 * a thread reuses the ids of its ranges that ended; some records are
 * dropped (ends with no start, starts with no end), some ranges never
 * end, some starts have no timestamp; marks and process-wide markers in
 * between. Returns the records in delivery order (*n). */
static CUpti_ActivityMarker2 *mk_scenario(unsigned seed, int nranges, char (*names)[16], size_t *n)
{
    srand(seed);
    mk_stream st[MK_THREADS] = {{0}};
    struct open_r {
        uint32_t id;
        int end_th, cross;
    } *open[MK_THREADS];
    size_t nopen[MK_THREADS] = {0};
    uint32_t *pool[MK_THREADS];
    size_t npool[MK_THREADS] = {0};
    for (int i = 0; i < MK_THREADS; i++) {
        open[i] = malloc((size_t)nranges * sizeof(**open));
        pool[i] = malloc((size_t)nranges * sizeof(**pool));
    }
    uint32_t next_id = 1;
    uint64_t t = 1000;
    int started = 0;
    for (;;) {
        size_t total_open = 0;
        for (int i = 0; i < MK_THREADS; i++)
            total_open += nopen[i];
        if (started == nranges && !total_open)
            break;
        t += 1 + (uint64_t)(rand() % 3);
        int th = rand() % MK_THREADS;
        uint32_t tid = 100 + (uint32_t)th;
        if (rand() % 16 == 0) {
            mk_put(&st[th], CUPTI_ACTIVITY_FLAG_MARKER_INSTANTANEOUS, next_id++, tid, t, "mark", NULL,
                   rand() % 4 ? CUPTI_ACTIVITY_OBJECT_THREAD : CUPTI_ACTIVITY_OBJECT_PROCESS);
            continue;
        }
        if (started < nranges && (!nopen[th] || rand() % 2)) {
            int cross = rand() % 8 == 0;
            int end_th = cross ? (th + 1 + rand() % (MK_THREADS - 1)) % MK_THREADS : th;
            uint32_t id = !cross && npool[th] && rand() % 2 ? pool[th][--npool[th]] : next_id++;
            snprintf(names[started], 16, "r%d", started);
            if (rand() % 25) /* else dropped */
                mk_put(&st[th], CUPTI_ACTIVITY_FLAG_MARKER_START, id, tid, rand() % 200 ? t : 0, names[started],
                       started % 5 == 0 ? "dom" : NULL, CUPTI_ACTIVITY_OBJECT_THREAD);
            open[th][nopen[th]++] = (struct open_r){id, end_th, cross};
            started++;
        } else if (nopen[th]) {
            /* the oldest, the newest or any one ends */
            int how = rand() % 3;
            size_t k = how == 0 ? 0 : how == 1 ? nopen[th] - 1 : (size_t)rand() % nopen[th];
            struct open_r o = open[th][k];
            memmove(&open[th][k], &open[th][k + 1], (nopen[th] - k - 1) * sizeof(o));
            nopen[th]--;
            if (started == nranges && rand() % 50 == 0)
                continue; /* never ends */
            if (rand() % 25) /* else dropped */
                mk_put(&st[o.end_th], CUPTI_ACTIVITY_FLAG_MARKER_END, o.id, 100 + (uint32_t)o.end_th, t, NULL, NULL,
                       CUPTI_ACTIVITY_OBJECT_THREAD);
            if (!o.cross)
                pool[th][npool[th]++] = o.id;
        }
    }
    size_t all = 0;
    for (int i = 0; i < MK_THREADS; i++)
        all += st[i].n;
    CUpti_ActivityMarker2 *out = malloc((all + 1) * sizeof(*out));
    *n = 0;
    for (;;) { /* a buffer of 1..64 records of a thread with records left */
        int left[MK_THREADS], nl = 0;
        for (int i = 0; i < MK_THREADS; i++)
            if (st[i].at < st[i].n)
                left[nl++] = i;
        if (!nl)
            break;
        mk_stream *s = &st[left[rand() % nl]];
        size_t take = 1 + (size_t)(rand() % 64);
        while (take-- && s->at < s->n)
            out[(*n)++] = s->v[s->at++];
    }
    for (int i = 0; i < MK_THREADS; i++) {
        free(st[i].v);
        free(open[i]);
        free(pool[i]);
    }
    return out;
}

/* The translator's ranges are the reference's: the same pairs (name,
 * domain, times) on the same threads in the same order, and the same
 * unmatched and bad-time counts. */
static void markers_match_reference(void)
{
    int small = getenv("TBPROF_SANITIZE") && *getenv("TBPROF_SANITIZE");
    int nranges = small ? 800 : 4000, seeds = small ? 6 : 24;
    char(*names)[16] = malloc((size_t)nranges * sizeof(*names));
    int bad = 0;
    for (int seed = 1; seed <= seeds && !bad; seed++) {
        size_t n = 0;
        CUpti_ActivityMarker2 *recs = mk_scenario((unsigned)seed, nranges, names, &n);
        ref_pairing r = {0};
        r.mk = malloc((n + 1) * sizeof(*r.mk));
        r.me = malloc((n + 1) * sizeof(*r.me));
        r.sp = malloc((n + 1) * sizeof(*r.sp));
        tb_space *s = tb_space_new();
        tb_cupti_tr_opts o = {.ts_to_epoch_ns = 0};
        tb_cupti_tr *t = tb_cupti_tr_new(s, &o);
        for (size_t i = 0; i < n; i++) {
            ref_record(&r, &recs[i]);
            tb_cupti_tr_record(t, (CUpti_Activity *)&recs[i]);
        }
        r.unmatched += (long long)(r.nmk + r.nme);
        tb_cupti_tr_finish(t);
        tb_cupti_tr_counts c = tb_cupti_tr_get_counts(t);
        CHECKF(c.unmatched_markers == (uint64_t)r.unmatched, "seed %d: unmatched %llu, reference %lld", seed,
               (unsigned long long)c.unmatched_markers, r.unmatched);
        CHECKF(c.bad_time == (uint64_t)r.bad_time, "seed %d: bad_time %llu, reference %lld", seed,
               (unsigned long long)c.bad_time, r.bad_time);
        bad |= c.unmatched_markers != (uint64_t)r.unmatched || c.bad_time != (uint64_t)r.bad_time;
        tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
        size_t matched = 0;
        for (uint32_t tid = 100; tid < 100 + MK_THREADS && !bad; tid++) {
            tb_line *l = h ? tb_plane_find_line(h, tid) : NULL;
            size_t k = 0;
            for (size_t i = 0; i < r.nsp && !bad; i++) {
                const ref_span *sp = &r.sp[i];
                if (sp->tid != tid)
                    continue;
                const tb_event *e = l && k < l->nevents ? &l->events[k] : NULL;
                k++;
                const char *dom = e ? str_stat(h, l, e, TB_ST_NVTX_DOMAIN) : "";
                int same = e && strcmp(tb_plane_event_name(h, e->meta), sp->name) == 0 &&
                           e->start_ns == (int64_t)sp->start && e->dur_ns == (int64_t)(sp->end - sp->start) &&
                           strcmp(dom, sp->domain ? sp->domain : "(none)") == 0;
                CHECKF(same, "seed %d tid %u range %zu: %s at %lld+%lld, reference %s at %llu+%llu", seed, tid,
                       k - 1, e ? tb_plane_event_name(h, e->meta) : "(none)", e ? (long long)e->start_ns : -1LL,
                       e ? (long long)e->dur_ns : -1LL, sp->name, (unsigned long long)sp->start,
                       (unsigned long long)(sp->end - sp->start));
                bad |= !same;
                matched += same;
            }
            CHECKF(bad || (l ? l->nevents : 0) == k, "seed %d tid %u: %zu ranges, reference %zu", seed, tid,
                   l ? l->nevents : 0, k);
            bad |= (l ? l->nevents : 0) != k;
        }
        if (seed == 1)
            printf("# markers vs reference: %zu records, %zu ranges, %lld unmatched, %lld bad time\n", n, matched,
                   r.unmatched, r.bad_time);
        tb_cupti_tr_free(t);
        tb_space_free(s);
        free(r.mk);
        free(r.me);
        free(r.sp);
        free(recs);
    }
    free(names);
}

/* Collect time of N ranges on one thread ended oldest first (all
 * started, then all ended): printed, not asserted. */
static void markers_oldest_first_timing(void)
{
    int small = getenv("TBPROF_SANITIZE") && *getenv("TBPROF_SANITIZE");
    static const int sizes[] = {20000, 80000, 320000};
    for (int si = 0; si < (small ? 1 : 3); si++) {
        int n = sizes[si];
        CUpti_ActivityMarker2 *m = calloc(2 * (size_t)n, sizeof(*m));
        for (int i = 0; i < 2 * n; i++) {
            m[i].kind = CUPTI_ACTIVITY_KIND_MARKER;
            m[i].flags = i < n ? CUPTI_ACTIVITY_FLAG_MARKER_START : CUPTI_ACTIVITY_FLAG_MARKER_END;
            m[i].id = (uint32_t)(i % n) + 1;
            m[i].timestamp = 1000 + (uint64_t)i;
            m[i].objectKind = CUPTI_ACTIVITY_OBJECT_THREAD;
            m[i].objectId.pt.threadId = 4243;
            m[i].name = i < n ? "async_range" : NULL;
        }
        tb_space *s = tb_space_new();
        tb_cupti_tr_opts o = {.ts_to_epoch_ns = 0};
        tb_cupti_tr *t = tb_cupti_tr_new(s, &o);
        int64_t t0 = tb_mono_ns();
        for (int i = 0; i < 2 * n; i++)
            tb_cupti_tr_record(t, (CUpti_Activity *)&m[i]);
        tb_cupti_tr_finish(t);
        int64_t t1 = tb_mono_ns();
        tb_line *l = tb_plane_find_line(tb_space_find_plane(s, TB_HOST_PLANE), 4243);
        CHECK_EQ_I(l ? (long long)l->nevents : 0, n);
        CHECK_EQ_I(tb_cupti_tr_get_counts(t).unmatched_markers, 0);
        printf("# markers ended oldest first: %d ranges paired in %.3f s\n", n, (t1 - t0) / 1e9);
        tb_cupti_tr_free(t);
        tb_space_free(s);
        free(m);
    }
}

/* Ranges started on one thread and ended on another (a request started by
 * the thread that receives it, ended by the worker that serves it): with
 * per-thread buffers the worker's buffer, all ends, may come first. Every
 * range is drawn, however many ends wait for their start. */
static void many_ends_before_their_starts(void)
{
    enum { N = 1000 };
    tb_space *s = tb_space_new();
    tb_cupti_tr_opts o = {.ts_to_epoch_ns = 0};
    tb_cupti_tr *t = tb_cupti_tr_new(s, &o);
    CUpti_ActivityMarker2 m;
    for (int pass = 0; pass < 2; pass++) /* the worker's buffer (ends), then the receiver's (starts) */
        for (int i = 0; i < N; i++) {
            memset(&m, 0, sizeof(m));
            m.kind = CUPTI_ACTIVITY_KIND_MARKER;
            m.flags = pass ? CUPTI_ACTIVITY_FLAG_MARKER_START : CUPTI_ACTIVITY_FLAG_MARKER_END;
            m.id = 500 + (uint32_t)i;
            m.timestamp = pass ? 1000 + 10 * (uint64_t)i : 1005 + 10 * (uint64_t)i + 2000;
            m.objectKind = CUPTI_ACTIVITY_OBJECT_THREAD;
            m.objectId.pt.threadId = pass ? 4244 : 4245;
            m.name = pass ? "request" : NULL;
            tb_cupti_tr_record(t, (CUpti_Activity *)&m);
        }
    CHECK_EQ_I(tb_cupti_tr_finish(t), 0);
    CHECK_EQ_I(tb_cupti_tr_get_counts(t).unmatched_markers, 0);
    tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
    tb_line *l = h ? tb_plane_find_line(h, 4244) : NULL;
    CHECK_EQ_I(count_named(h, l, "request"), N);
    const tb_event *last = event_named(h, l, "request", N - 1);
    CHECK(last != NULL);
    if (last) {
        CHECK_EQ_I(last->start_ns, 1000 + 10 * (N - 1));
        CHECK_EQ_I(last->dur_ns, 2005);
    }
    tb_cupti_tr_free(t);
    tb_space_free(s);
}

int main(void)
{
    many_ends_before_their_starts();
    markers_in_either_order();
    markers_match_reference();
    markers_oldest_first_timing();
    mallopt(M_MMAP_THRESHOLD, 64 << 10); /* fixed: freed buffers are unmapped, never recycled */
    const char *b = getenv("TBPROF_BUILD");
    if (!b) {
        printf("TBPROF_BUILD not set\n");
        return 1;
    }
    snprintf(fake_full, sizeof(fake_full), "%s/fakecupti/libcupti.so", b);
    snprintf(fake_old, sizeof(fake_old), "%s/fakecupti-old/libcupti.so", b);
    snprintf(fake_broken, sizeof(fake_broken), "%s/fakecupti-broken/libcupti.so", b);
    write_script();
    setenv("TBPROF_CUPTI_PATH", fake_full, 1);
    /* a CUPTI whose graph correlation ids stay right across re-attaches:
     * every capture here translates the same (test_gpu_fake.py checks the
     * graph work of an older one, re-attached, goes unlinked) */
    setenv("TBFAKE_CUPTI_VERSION", CUPTI_FIXED_GRAPH_CORR, 1);
    tb_source *src = tb_gpu_source();
    int rc, sub, nen;
    unsigned long long fl, dl, drp;
    const char *why;
    int64_t t0;

    /* idle: nothing loaded before the first capture */
    CHECK(dlopen(fake_full, RTLD_NOW | RTLD_NOLOAD) == NULL);

    /* 1. a full capture */
    tb_capture_info info = {.buffer_bytes = 4 << 20};
    t0 = tb_real_ns();
    rc = src->start(src->ctx, &info, &why);
    CHECKF(rc == 0, "start: %d %s", rc, rc ? why : "");
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(sub, 1);
    CHECK(nen >= 10); /* kernels, copies, memset, API, sync, markers, overhead, memory, ... */
    CHECK_EQ_I(fake_tid_type(fake_full), CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM);
    src->stop(src->ctx);
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(sub, 1);   /* kept until collected: it detaches CUPTI then */
    CHECK_EQ_I(nen, 0);   /* no activity enabled while idle */
    CHECK_EQ_I(fl, 2);    /* one default flush (nothing left running on the GPU), one forced */
    CHECK_EQ_I(fake_tid_type(fake_full), CUPTI_ACTIVITY_THREAD_ID_TYPE_DEFAULT);
    tb_space *s = tb_space_new();
    CHECK_EQ_I(src->collect(src->ctx, s), 0);
    CHECK_EQ_I(fake_detach().domains, 0);
    CHECK_STR(plane_str(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_TEARDOWN),
              "on: cuptiFinalize after the capture (TBPROF_CUPTI_TEARDOWN=auto)");
    /* idle: CUPTI is detached at the exit of the job's next CUDA call (no
     * libcuda here for the agent to call itself) */
    detach_state d0 = fake_detach();
    src->release(src->ctx);
    detach_state d1 = fake_detach();
    CHECK_EQ_I(d1.domains, API_DOMAINS);
    CHECK_EQ_I(d1.finalizes, d0.finalizes);
    CHECK_EQ_I(job_cuda_call(), 1);
    d1 = fake_detach();
    CHECK_EQ_I(d1.finalizes, d0.finalizes + 1);
    CHECK_EQ_I(d1.domains, 0);
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(sub, 0); /* detached: another tool may subscribe now */
    CHECK_EQ_I(job_cuda_call(), 0); /* and the job's calls are not called back */
    CHECK(tb_gpu_last_stats().used_timestamp_callback == 1);
    CHECK_EQ_I(tb_gpu_last_stats().records, dl);
    check_full_translation(s, t0);
    /* named, alone, through the 13.2 params; the output says which library */
    CHECK_STR(subscribed_with(), "cuptiSubscribe_v2 (13.2 params)");
    CHECK_EQ_I(tb_gpu_last_stats().cupti_api_version, atoi(CUPTI_FIXED_GRAPH_CORR)); /* cuptiGetVersion read */
    {
        const char *lib = plane_str(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_LIBRARY);
        CHECKF(lib && strstr(lib, fake_full) && strstr(lib, "cuptiSubscribe_v2"), "library stat: %s",
               lib ? lib : "(none)");
    }
    tb_space_free(s);

    /* 2. again: repeated captures give the same result (CUPTI attached
     * again after the detach) */
    capture_full(src);

    /* 2a. a capture that starts before the job made a CUDA call takes the
     * pending detach back: the same subscription, no callbacks left on */
    {
        detach_state d = fake_detach();
        tb_capture_info ci = {.buffer_bytes = 4 << 20};
        CHECK_EQ_I(src->start(src->ctx, &ci, &why), 0);
        src->stop(src->ctx);
        tb_space *s1 = tb_space_new();
        src->collect(src->ctx, s1);
        src->release(src->ctx);
        CHECK_EQ_I(fake_detach().domains, API_DOMAINS);
        t0 = tb_real_ns();
        CHECK_EQ_I(src->start(src->ctx, &ci, &why), 0);
        detach_state d2 = fake_detach();
        CHECK_EQ_I(d2.domains, 0);
        CHECK_EQ_I(d2.subscribes, d.subscribes + 1); /* one, for both captures */
        CHECK_EQ_I(d2.finalizes, d.finalizes);
        CHECK_STR(subscribed_with(), "cuptiSubscribe_v2 (13.2 params)");
        CHECK_EQ_I(job_cuda_call(), 0); /* capturing: no callback */
        src->stop(src->ctx);
        tb_space *s2 = tb_space_new();
        src->collect(src->ctx, s2);
        check_full_translation(s2, t0);
        src->release(src->ctx);
        CHECK_EQ_I(job_cuda_call(), 1);
        CHECK_EQ_I(fake_detach().finalizes, d.finalizes + 1);
        tb_space_free(s1);
        tb_space_free(s2);
    }

    /* 2c. TBPROF_CUPTI_TEARDOWN=off, and auto with a CUPTI before 12.6 or
     * of unknown version:
     * unsubscribed at stop, never finalized; =on finalizes any CUPTI */
    static const struct {
        int mode;
        const char *version, *says;
        int detached;
    } modes[] = {{TB_OFF, NULL, "off (TBPROF_CUPTI_TEARDOWN=off)", 0},
                 {TB_AUTO, "23", "off: CUPTI API version 23 is older than CUDA 12.6's (24)", 0},
                 {TB_AUTO, "0", "off: this libcupti does not say its version", 0},
                 {TB_ON, "23", "on: cuptiFinalize after the capture (TBPROF_CUPTI_TEARDOWN=on)", 1}};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        set_teardown(modes[i].mode);
        if (modes[i].version)
            setenv("TBFAKE_CUPTI_VERSION", modes[i].version, 1);
        detach_state d = fake_detach();
        tb_capture_info ci = {.buffer_bytes = 4 << 20};
        CHECK_EQ_I(src->start(src->ctx, &ci, &why), 0);
        src->stop(src->ctx);
        fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
        CHECK_EQ_I(sub, modes[i].detached);
        s = tb_space_new();
        src->collect(src->ctx, s);
        const char *says = plane_str(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_TEARDOWN);
        CHECKF(strncmp(says, modes[i].says, strlen(modes[i].says)) == 0, "mode %zu says: %s", i, says);
        src->release(src->ctx);
        CHECK_EQ_I(job_cuda_call(), modes[i].detached);
        CHECK_EQ_I(fake_detach().finalizes, d.finalizes + (unsigned long long)modes[i].detached);
        tb_space_free(s);
        setenv("TBFAKE_CUPTI_VERSION", CUPTI_FIXED_GRAPH_CORR, 1);
    }
    set_teardown(TB_AUTO);

    /* 2b. between captures another tool set CUPTI's clock to its own (Kineto
     * registers a TSC-based one): the next capture is on our clock again */
    other_tool_clock(fake_full);
    capture_full(src);

    /* 3. another subscriber: a clear reason, nothing left enabled */
    setenv("TBFAKE_CUPTI_SUBSCRIBER", "1", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECK_EQ_I(rc, -EBUSY);
    CHECKF(why && strstr(why, "another CUPTI client") && strstr(why, "MULTIPLE_SUBSCRIBERS"), "why: %s",
           why ? why : "(null)");
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(nen, 0);
    /* a CUPTI that names the subscriber already there: the reason does too */
    setenv("TBFAKE_CUPTI_SUBSCRIBER", "CUPTI for Nsight Systems", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECK_EQ_I(rc, -EBUSY);
    CHECKF(why && strstr(why, "held by CUPTI for Nsight Systems"), "why: %s", why ? why : "(null)");
    unsetenv("TBFAKE_CUPTI_SUBSCRIBER");

    /* 3b. a libcupti that takes only 13.0's params (structSize 32), or whose
     * cuptiSubscribe_v2 fails: the next form is tried, the capture works */
    static const struct {
        const char *knob, *value, *call;
    } forms[] = {{"TBFAKE_CUPTI_V2_SIZE", "32", "cuptiSubscribe_v2 (13.0 params)"},
                 {"TBFAKE_CUPTI_V2_FAIL", "27", "cuptiSubscribe"}}; /* 27: CUPTI_ERROR_NOT_SUPPORTED */
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        setenv(forms[i].knob, forms[i].value, 1);
        s = capture(src, 4 << 20, &rc, &why, &t0);
        CHECKF(rc == 0, "%s=%s: %d %s", forms[i].knob, forms[i].value, rc, rc ? why : "");
        CHECK_STR(subscribed_with(), forms[i].call);
        tb_space_free(s);
        unsetenv(forms[i].knob);
    }

    /* 4. activity refused (a driver too old): reason names the CUPTI error, released */
    setenv("TBFAKE_CUPTI_FAIL_ENABLE", "14", 1); /* CUPTI_ERROR_NOT_COMPATIBLE */
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECK(rc < 0);
    CHECKF(why && strstr(why, "CUPTI_ERROR_NOT_COMPATIBLE"), "why: %s", why ? why : "(null)");
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(sub, 0);
    CHECK_EQ_I(nen, 0);
    unsetenv("TBFAKE_CUPTI_FAIL_ENABLE");

    /* 5. the pool runs dry: CUPTI drops, both counts land in the output */
    setenv("TBFAKE_CUPTI_REPEAT", "3000", 1);
    unsigned long long drop0 = drp, del0 = dl;
    s = capture(src, 256 << 10, &rc, &why, &t0);
    CHECK_EQ_I(rc, 0);
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    if (s) {
        tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
        CHECKF(drp > drop0, "fake dropped %llu", drp - drop0);
        CHECK_EQ_I(plane_int(h, TB_ST_CUPTI_DROPPED), (long long)(drp - drop0));
        CHECK(plane_int(h, TB_ST_POOL_EXHAUSTED) >= 1);
        CHECK(has_warning(s, "GPU activity records lost"));
        CHECK_EQ_I(tb_gpu_last_stats().records, dl - del0); /* all delivered were translated */
        CHECK(tb_gpu_last_stats().pool_buffers * tb_gpu_last_stats().buffer_size <= (256 << 10));
        tb_space_free(s);
    }
    unsetenv("TBFAKE_CUPTI_REPEAT");

    /* 6. CUPTI's own drop count is reported as is */
    setenv("TBFAKE_CUPTI_DROPPED", "7", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    if (s) {
        CHECK_EQ_I(plane_int(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_DROPPED), 7);
        CHECK_EQ_I(plane_int(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_POOL_EXHAUSTED), 0);
        tb_space_free(s);
    }
    unsetenv("TBFAKE_CUPTI_DROPPED");

    /* 7. slow buffer hand-back and small buffers: still complete */
    setenv("TBFAKE_CUPTI_SLOW_MS", "2", 1);
    setenv("TBFAKE_CUPTI_PER_BUFFER", "3", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    if (s) {
        check_full_translation(s, t0);
        CHECK(tb_gpu_last_stats().buffers_completed >= 6);
        tb_space_free(s);
    }
    unsetenv("TBFAKE_CUPTI_SLOW_MS");
    unsetenv("TBFAKE_CUPTI_PER_BUFFER");

    /* 7b. a buffer CUPTI hands back after the forced flush returned (the
     * thread that filled it still handing it over): while the others are
     * read, or before the capture is collected. Its records are in the
     * profile, counted, and no buffer is said to be kept. (No drain: the
     * forced flush is the only one.) */
    {
        tb_config c = *tb_config_get(), c0 = c;
        c.gpu_drain_ms = 0;
        tb_config_set_global(&c);
        setenv("TBFAKE_CUPTI_PER_BUFFER", "3", 1);
        static const char *const when[] = {"read", "dropped"};
        for (size_t i = 0; i < 2; i++) {
            setenv("TBFAKE_CUPTI_LATE", when[i], 1);
            fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
            unsigned long long del0 = dl;
            s = capture(src, 4 << 20, &rc, &why, &t0);
            fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
            CHECKF(rc == 0, "late %s: %d", when[i], rc);
            if (s) {
                check_full_translation(s, t0);
                CHECKF(tb_gpu_last_stats().records == dl - del0, "late %s: %llu of %llu records translated",
                       when[i], (unsigned long long)tb_gpu_last_stats().records, dl - del0);
                CHECK(tb_gpu_last_stats().buffers_completed >= 6);
                /* back before the profile was written: nothing to warn of */
                CHECKF(plane_int(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_BUFFERS_KEPT) == 0,
                       "late %s: %lld buffers kept", when[i],
                       plane_int(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_BUFFERS_KEPT));
                CHECKF(!has_warning(s, "CUPTI kept"), "late %s: warned of buffers kept", when[i]);
                tb_space_free(s);
            }
        }
        unsetenv("TBFAKE_CUPTI_LATE");
        unsetenv("TBFAKE_CUPTI_PER_BUFFER");
        tb_config_set_global(&c0);
    }

    /* 8. poll() faults in the buffers CUPTI gets next (the fake checks with
     * mincore when it takes one); without a poll they come untouched.
     * 2 MB buffers: fresh mmaps, never resident from an earlier capture
     * (M_MMAP_THRESHOLD, set in main, keeps glibc from recycling them). */
    unsigned long long h0, r0, h1, r1;
    fake_buffers(fake_full, &h0, &r0);
    s = capture(src, 64 << 20, &rc, &why, &t0);
    fake_buffers(fake_full, &h1, &r1);
    CHECK_EQ_I(rc, 0);
    CHECK_EQ_I(tb_gpu_last_stats().buffer_size, 2 << 20);
    CHECK(h1 > h0);
    CHECKF(r1 == r0, "%llu of %llu buffers resident without a poll", r1 - r0, h1 - h0);
    CHECK_EQ_I(tb_gpu_last_stats().buffers_prefaulted, 0);
    tb_space_free(s);
    s = capture_polled(src, 64 << 20, &rc, &why, &t0, 3);
    fake_buffers(fake_full, &h0, &r0);
    CHECK_EQ_I(rc, 0);
    CHECK(h0 > h1);
    if (getenv("TBPROF_TEST_EMULATED")) /* qemu-user's mincore() does not see the guest's touches */
        printf("# skip residency after a poll: emulated\n");
    else
        CHECKF(r0 - r1 == h0 - h1, "%llu of %llu buffers resident after a poll", r0 - r1, h0 - h1);
    CHECK_EQ_I(tb_gpu_last_stats().buffers_prefaulted, 2); /* PREFAULT_AHEAD, not the pool */
    if (s)
        check_full_translation(s, t0);
    tb_space_free(s);

    /* 9. CUPTI 13's per-thread buffers: 16 threads recording at once each
     * hold a buffer; the default budget's GPU share has enough for all */
    setenv("TBFAKE_CUPTI_THREADS", "16", 1);
    setenv("TBFAKE_CUPTI_REPEAT", "500", 1);
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    drop0 = drp, del0 = dl;
    s = capture(src, 45 << 20, &rc, &why, &t0);
    fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
    CHECK_EQ_I(rc, 0);
    CHECK_EQ_I(drp - drop0, 0);
    CHECK_EQ_I(tb_gpu_last_stats().pool_exhausted, 0);
    CHECK(tb_gpu_last_stats().buffers_completed >= 16);
    CHECK_EQ_I(tb_gpu_last_stats().records, dl - del0);
    CHECKF(dl - del0 >= 500 * 15, "%llu records", dl - del0);
    tb_space_free(s);

    /* 9a. a process of many threads (JAX has dozens), 60 of them recording
     * at once: the pool takes two buffers per thread of the process, not
     * 32, so no thread goes without */
    setenv("TBFAKE_CUPTI_THREADS", "60", 1);
    {
        enum { IDLE = 48 };
        pthread_t idle[IDLE];
        int pfd[2], made = 0;
        CHECK_EQ_I(pipe(pfd), 0);
        for (int i = 0; i < IDLE; i++)
            made += pthread_create(&idle[i], NULL, wait_on_pipe, &pfd[0]) == 0;
        CHECK_EQ_I(made, IDLE);
        fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
        drop0 = drp, del0 = dl;
        s = capture(src, 45 << 20, &rc, &why, &t0);
        fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
        CHECK_EQ_I(rc, 0);
        CHECKF(tb_gpu_last_stats().pool_buffers >= 2 * (IDLE + 1), "%zu buffers",
               tb_gpu_last_stats().pool_buffers);
        CHECK(tb_gpu_last_stats().pool_buffers * tb_gpu_last_stats().buffer_size <= (45u << 20));
        CHECK_EQ_I(drp - drop0, 0);
        CHECK_EQ_I(tb_gpu_last_stats().pool_exhausted, 0);
        CHECK(tb_gpu_last_stats().buffers_completed >= 60);
        tb_space_free(s);
        close(pfd[1]); /* the idle threads' reads return: they exit */
        for (int i = 0; i < made; i++)
            pthread_join(idle[i], NULL);
        close(pfd[0]);
    }
    unsetenv("TBFAKE_CUPTI_THREADS");
    unsetenv("TBFAKE_CUPTI_REPEAT");

    /* 9b. cuptiFinalize fails: one warning; the subscription stays ours and
     * no callback is left on; the next capture reuses it, and from then on
     * captures unsubscribe instead */
    setenv("TBFAKE_CUPTI_FAIL_FINALIZE", "999", 1); /* CUPTI_ERROR_UNKNOWN */
    {
        detach_state d = fake_detach();
        s = capture(src, 4 << 20, &rc, &why, &t0); /* its release and the job's call: the finalize fails */
        CHECK_EQ_I(rc, 0);
        tb_space_free(s);
        detach_state d2 = fake_detach();
        CHECK_EQ_I(d2.finalizes, d.finalizes);
        CHECK_EQ_I(d2.domains, 0);
        CHECK_EQ_I(job_cuda_call(), 0);
        fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
        CHECK_EQ_I(sub, 1);
        tb_capture_info ci = {.buffer_bytes = 4 << 20};
        CHECK_EQ_I(src->start(src->ctx, &ci, &why), 0);
        CHECK_EQ_I(fake_detach().subscribes, d2.subscribes); /* reused */
        src->stop(src->ctx);
        fake_state(fake_full, &sub, &nen, &fl, &dl, &drp);
        CHECK_EQ_I(sub, 0); /* unsubscribed: teardown is off now */
        s = tb_space_new();
        src->collect(src->ctx, s);
        const char *says = plane_str(tb_space_find_plane(s, TB_HOST_PLANE), TB_ST_CUPTI_TEARDOWN);
        CHECKF(strstr(says, "off: cuptiFinalize failed") != NULL, "says: %s", says);
        tb_space_free(s);
    }
    unsetenv("TBFAKE_CUPTI_FAIL_FINALIZE");

    /* 10. libcupti missing */
    tb_cupti_lib_reset_for_tests();
    setenv("TBPROF_CUPTI_PATH", "/nonexistent/libcupti.so", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECK_EQ_I(rc, -ENOENT);
    CHECKF(why && strstr(why, "libcupti not found") && strstr(why, "TBPROF_CUPTI_PATH"), "why: %s",
           why ? why : "(null)");

    /* 9. a libcupti lacking a required function */
    setenv("TBPROF_CUPTI_PATH", fake_broken, 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECK(rc < 0);
    CHECKF(why && strstr(why, "cuptiActivityFlushAll"), "why: %s", why ? why : "(null)");

    /* 10. an older CUPTI without the timestamp callback: the offset is
     * measured, so a skewed CUPTI clock still lands on our clock */
    tb_cupti_lib_reset_for_tests();
    setenv("TBPROF_CUPTI_PATH", fake_old, 1);
    setenv("TBFAKE_CUPTI_SKEW_NS", "5000000000", 1);
    s = capture(src, 4 << 20, &rc, &why, &t0);
    CHECKF(rc == 0, "old fake: %d %s", rc, rc ? why : "");
    if (s) {
        CHECK(tb_gpu_last_stats().used_timestamp_callback == 0);
        CHECK_STR(subscribed_with(), "cuptiSubscribe"); /* no _v2 there */
        tb_plane *d = tb_space_find_plane(s, "/device:GPU:0");
        tb_line *s7 = line_named(d, "Stream #7(Compute,MemcpyH2D)");
        const tb_event *k2 = event_named(d, s7, "gemm_kernel", 0);
        CHECK(k2 != NULL);
        if (k2)
            CHECKF(llabs(k2->start_ns - (t0 + 31000)) < 500000000LL, "skew not removed: %lld ns",
                   (long long)(k2->start_ns - t0));
        tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
        CHECK_EQ_I(count_named(h, tb_plane_find_line(h, getpid()), "cuda_runtime_api_211"), 2);
        tb_space_free(s);
    }
    unsetenv("TBFAKE_CUPTI_SKEW_NS");

    /* 11. (last: it leaves buffers with CUPTI for good) another client takes
     * the buffer callbacks: every capture's buffers stay with CUPTI; once
     * they add up to a capture's budget no GPU capture starts, so repeated
     * captures do not pile up memory */
    tb_cupti_lib_reset_for_tests();
    setenv("TBPROF_CUPTI_PATH", fake_full, 1);
    setenv("TBFAKE_CUPTI_LOSE_BUFFERS", "1", 1);
    setenv("TBFAKE_CUPTI_REPEAT", "200", 1); /* a few buffers' worth each time */
    int refused_at = 0;
    for (int i = 1; i <= 40 && !refused_at; i++) {
        s = capture(src, 4 * 65536, &rc, &why, &t0);
        if (rc < 0)
            refused_at = i;
        tb_space_free(s);
    }
    CHECKF(refused_at > 1, "refused at capture %d", refused_at);
    CHECKF(rc < 0 && why && strstr(why, "CUPTI still holds"), "why: %s", rc < 0 && why ? why : "(none)");
    unsetenv("TBFAKE_CUPTI_LOSE_BUFFERS");
    unsetenv("TBFAKE_CUPTI_REPEAT");
    unlink(script);
    return tap_done();
}
