/* gpu.c - the CUPTI source: capture lifecycle and the buffer pool.
 *
 * Idle: nothing (libcupti is not even loaded before the first capture).
 * start: subscribe (fails fast when another CUPTI client holds the
 *   subscription), preallocate a pool of buffers from the capture's share
 *   of TBPROF_BUFFER_MB, register the buffer callbacks, enable activity.
 * capture: CUPTI asks for buffers (request callback: pop from the pool, or
 *   return none when it is empty: CUPTI then drops records and counts
 *   them) and hands filled ones back (complete callback: queue them). The
 *   callbacks never block on I/O and never allocate. poll() (the agent
 *   thread, every few ms) faults in the next PREFAULT_AHEAD free buffers
 *   with MADV_POPULATE_WRITE, so the CUDA and CUPTI threads that fill them
 *   take no page faults; the pool's other buffers stay untouched until
 *   they come up (a short capture does not make the whole budget resident).
 * stop: disable activity, force-flush, read CUPTI's dropped count,
 *   restore the thread-id type; unsubscribe, unless CUPTI is to be detached.
 * collect: translate the queued buffers (translate.c), free the pool.
 * release (not at exit): detach CUPTI from the process (see "detach").
 */
#include "gpu.h"

#include <dlfcn.h>
#include <errno.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "clock.h"
#include "config.h"
#include "cupti_lib.h"
#include "host.h"
#include "log.h"
#include "stall.h"
#include "stats.h"
#include "translate.h"

#define BUF_ALIGN 4096 /* CUPTI wants 8; buffers are whole pages (mmap) */
#define BUF_MAX (8u << 20)
#define BUF_MIN (64u << 10)
#define POOL_MIN_BUFFERS 4
/* Buffers a pool aims for: CUPTI 13 keeps one per thread that makes CUDA
 * calls (CUPTI_ACTIVITY_ATTR_PER_THREAD_ACTIVITY_BUFFER, on by default), and
 * a training job has several such threads (main, autograd, pin-memory,
 * NCCL, CUPTI's own), each holding a part-filled buffer until the flush. */
#define POOL_BUFFERS 32
/* ... or two per thread the process has at the start, where that is more
 * (a JAX process has dozens): the same budget in smaller buffers. A thread
 * that records little holds a mostly untouched mapping. */
#define POOL_BUFFERS_PER_THREAD 2
#define POOL_MAX_BUFFERS 1024
#define PREFAULT_AHEAD 2
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; glibc headers before 2.35 lack the name */
#endif

typedef struct done_buf {
    uint8_t *buf;
    size_t valid;
} done_buf;

typedef struct gpu_ctx {
    const tb_cupti_lib *lib;
    CUpti_SubscriberHandle sub; /* ours while det_state != DET_NONE */
    const char *sub_how;        /* the call that made it */
    CUpti_ActivityKind enabled[24];
    int nenabled;
    int restore_tid_type;
    int zeroed_attr; /* we set CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER */
    CUpti_ActivityThreadIdType old_tid_type;
    /* pool: guarded by mu (callbacks run on CUPTI's and the app's threads) */
    pthread_mutex_t mu;
    uint8_t **all;   /* every buffer allocated for this capture */
    uint8_t **free_; /* stack of free buffers */
    uint8_t *faulted; /* per all[] buffer: poll() faulted it in */
    done_buf *done;  /* completed buffers, in completion order */
    size_t nall, nfree, ndone;
    size_t buf_size;
    atomic_int active;
    atomic_ullong exhausted;
    int64_t ts_to_epoch;
    int ts_callback;
    uint64_t cupti_dropped;
    tb_gpu_stats last;
    int started;
    char drain[120];          /* TB_ST_GPU_DRAIN */
    int teardown;             /* detach CUPTI after this capture */
    char teardown_why[300];   /* TB_ST_CUPTI_TEARDOWN */
} gpu_ctx;

static gpu_ctx g = {.mu = PTHREAD_MUTEX_INITIALIZER};
/* Buffers of past captures CUPTI still held when their pool was freed: it
 * may write into them yet, so they stay allocated until it hands them back
 * (then freed in buf_completed). Guarded by g.mu; past ORPHANS_MAX they stay
 * mapped for good (CUPTI may still write into them); each capture counts
 * them as tbprof_cupti_buffers_kept. */
#define ORPHANS_MAX 256
static struct {
    uint8_t *buf;
    size_t size;
} orphans[ORPHANS_MAX];
static size_t norphans;
/* Bytes of them (past the table too): once they reach a capture's budget no
 * GPU capture starts (gpu_start) until CUPTI gives them back, so captures
 * after another client took the buffer callbacks cannot pile up memory. */
static size_t orphan_bytes;

/* Buffers are anonymous mappings: zero-filled by the kernel, so CUPTI need
 * not clear each one on the CUDA thread that asks for it
 * (CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER), and their pages come
 * in as they are first written. NULL when the mapping fails. */
static uint8_t *buf_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void buf_unmap(uint8_t *buf, size_t size)
{
    if (buf)
        munmap(buf, size);
}
static int prefault_off; /* MADV_POPULATE_WRITE refused (a kernel before 5.14) */
static atomic_int ts_capturing;

/* ---- CUPTI callbacks --------------------------------------------------- */

static void CUPTIAPI buf_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *max_records = 0;
    *buffer = NULL;
    *size = 0;
    if (!atomic_load(&g.active)) {
        atomic_fetch_add(&g.exhausted, 1);
        return;
    }
    pthread_mutex_lock(&g.mu);
    if (g.nfree) {
        *buffer = g.free_[--g.nfree];
        *size = g.buf_size;
    }
    pthread_mutex_unlock(&g.mu);
    if (!*buffer)
        atomic_fetch_add(&g.exhausted, 1); /* CUPTI drops and counts the records */
}

static void CUPTIAPI buf_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid)
{
    (void)ctx;
    (void)stream;
    (void)size;
    if (!buffer)
        return;
    pthread_mutex_lock(&g.mu);
    int ours = 0;
    for (size_t i = 0; i < g.nall; i++)
        if (g.all[i] == buffer) {
            ours = 1;
            break;
        }
    if (ours) {
        if (valid)
            g.done[g.ndone++] = (done_buf){buffer, valid}; /* done has room for every buffer */
        else
            g.free_[g.nfree++] = buffer;
    } else {
        for (size_t i = 0; i < norphans; i++)
            if (orphans[i].buf == buffer) { /* a past capture's, back at last: its records are too late */
                buf_unmap(buffer, orphans[i].size);
                orphan_bytes -= orphans[i].size;
                orphans[i] = orphans[--norphans];
                break;
            }
    }
    pthread_mutex_unlock(&g.mu);
}

/* While capturing, CUPTI's clock is ours: CLOCK_MONOTONIC shifted to the
 * epoch with the agent's calibrated offset, the clock perf samples use.
 * Idle, it is CUPTI's own default (CLOCK_REALTIME on Linux), so another
 * tool using CUPTI between our captures sees the timestamps it expects. */
static uint64_t CUPTIAPI ts_callback(void)
{
    if (atomic_load_explicit(&ts_capturing, memory_order_relaxed))
        return (uint64_t)tb_mono_to_epoch(tb_mono_ns());
    return (uint64_t)tb_real_ns();
}

/* ---- detach: CUPTI out of the process between captures --------------------
 *
 * Unsubscribing leaves CUPTI attached, and with it its instrumentation of
 * every launch: PyTorch measured jobs 10-20% slower after a torch.profiler
 * trace until Kineto called cuptiFinalize after each one. CUPTI wants
 * cuptiFinalize called from a callback at the exit of a CUDA runtime or
 * driver call. So once a capture is collected (translation reads records
 * through libcupti, which would attach it again), the subscription we still
 * hold turns on the runtime and driver callback domains and a detach is
 * pending; the first CUDA call to return finalizes CUPTI from inside its
 * callback: our own cuDriverGetVersion on the agent thread, where libcuda is
 * loaded, else the job's next call. A capture that starts first takes the
 * pending detach back and keeps the subscription.
 *
 *   NONE --subscribe--> HELD --release--> PENDING --a call returns--> FINALIZING
 *     ^                  ^  ^-- start -------'                           |
 *     |                  '---------------- cuptiFinalize failed ---------+
 *     '---------------------------------------- detached ----------------'
 *
 * State changes that race with the job's threads are compare-and-swaps on
 * det_state, so exactly one of them finalizes or cancels. */
enum { DET_NONE, DET_HELD, DET_PENDING, DET_FINALIZING };
static atomic_int det_state;
static atomic_int det_failed; /* the CUptiResult of a failed cuptiFinalize, not yet reported */
static atomic_int det_tid;    /* the thread that ran the last cuptiFinalize */
static int teardown_broken;   /* a cuptiFinalize failed: unsubscribe from then on */
static atomic_int finalized;  /* cuptiFinalize calls that succeeded in this process */
#define CUPTI_API_12_6 24u     /* cuptiGetVersion() of CUDA 12.6 (13.x reports 130000 and up) */

/* CUPTI 13.0 up to 13.1 with CUPTI update 1 (API 130101) gives cudaGraphLaunch
 * calls and the work they launch wrong correlation ids in every profiling
 * session after the first (CUPTI release notes, "Updates in CUDA 13.1 Update
 * 1"). With teardown each capture after one we finalized is such a session:
 * its graph work goes without correlation ids, and the profile says why.
 * (A session another tool ended before our first capture is not known.) */
#define CUPTI_API_13_0 130000u
#define CUPTI_API_GRAPH_CORR_FIXED 130101u
static int graph_corr_breaks_on_reattach(uint32_t v)
{
    return v >= CUPTI_API_13_0 && v < CUPTI_API_GRAPH_CORR_FIXED;
}
static int graph_corr_unreliable(uint32_t v)
{
    return graph_corr_breaks_on_reattach(v) && atomic_load(&finalized) > 0;
}

/* CUDA 13.0 GA's CUPTI can deadlock in cuptiActivityDisable(CONCURRENT_
 * KERNEL), the call that ends a capture; 13.0 Update 1 (API 130001: the
 * nvidia-cuda-cupti 13.0.85 wheel) fixed it (CUPTI release notes). */
#define CUPTI_DISABLE_DEADLOCK_ADVICE                                                                \
    "this libcupti is CUDA 13.0's first release (CUPTI API 130000), whose cuptiActivityDisable can "    \
    "deadlock (fixed in CUDA 13.0 Update 1): use libcupti 13.0.85 or later (pip install "               \
    "'nvidia-cuda-cupti>=13.0.85', or TBPROF_CUPTI_PATH)"

/* ---- calls that may not come back (agent/stall.h) ---------------------------
 * Every CUPTI call that starts, stops or detaches tracing goes between
 * watch_in and tb_stall_leave: if one hangs, a warning names it. */

/* cuptiGetVersion of the libcupti in use (0: unknown), for watch_in on a
 * job's thread while the agent thread may be starting the next capture */
static atomic_uint cupti_version;

static int watch_in(const char *call, const char *doing)
{
    char what[160];
    if (tb_agent_on_own_thread())
        snprintf(what, sizeof(what), "GPU tracing: %s (%s, on tbprof's thread)", call, doing);
    else
        snprintf(what, sizeof(what), "GPU tracing: %s (%s, on the job's thread %d)", call, doing,
                 (int)syscall(SYS_gettid));
    const char *advice = "if the job has stopped, it is stuck inside CUPTI or the CUDA driver (py-spy dump "
                         "--native or gdb shows the stack); TBPROF_GPU=off runs it without GPU tracing";
    if (atomic_load(&cupti_version) == CUPTI_API_13_0 && !strcmp(call, "cuptiActivityDisable"))
        advice = CUPTI_DISABLE_DEADLOCK_ADVICE;
    return tb_stall_enter(what, advice);
}

static CUptiResult api_domains(uint32_t on)
{
    if (!g.lib->EnableDomain)
        return CUPTI_ERROR_NOT_SUPPORTED;
    CUptiResult r = g.lib->EnableDomain(on, g.sub, CUPTI_CB_DOMAIN_RUNTIME_API);
    CUptiResult r2 = g.lib->EnableDomain(on, g.sub, CUPTI_CB_DOMAIN_DRIVER_API);
    return r != CUPTI_SUCCESS ? r : r2;
}

/* libcuda's cuThreadExchangeStreamCaptureMode, when libcuda is loaded (set
 * by gpu_release before a detach can start). */
static CUresult (*_Atomic capture_mode_xchg)(CUstreamCaptureMode *);

/* On the job's threads (and ours), at every CUDA call while a detach is
 * pending; no callback domain is enabled otherwise: the subscription exists
 * to own CUPTI for the capture and to detect another subscriber. */
static void CUPTIAPI api_callback(void *ud, CUpti_CallbackDomain dom, CUpti_CallbackId cbid, const void *data)
{
    (void)ud;
    (void)cbid;
    const CUpti_CallbackData *cd = data;
    if ((dom != CUPTI_CB_DOMAIN_RUNTIME_API && dom != CUPTI_CB_DOMAIN_DRIVER_API) || !cd ||
        cd->callbackSite != CUPTI_API_EXIT)
        return;
    int want = DET_PENDING;
    if (!atomic_compare_exchange_strong(&det_state, &want, DET_FINALIZING))
        return;
    /* a job thread may be capturing a CUDA graph in global mode, where a
     * call CUDA deems unsafe from any thread invalidates the capture: this
     * thread's calls go in relaxed mode while CUPTI tears down (the call
     * is a driver call: its callback finds FINALIZING and returns) */
    CUresult (*xchg)(CUstreamCaptureMode *) = atomic_load(&capture_mode_xchg);
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    int swapped = xchg && xchg(&mode) == CUDA_SUCCESS;
    int w = watch_in("cuptiFinalize", "detaching CUPTI at the exit of a CUDA call");
    CUptiResult r = g.lib->Finalize();
    tb_stall_leave(w);
    if (swapped)
        xchg(&mode);
    atomic_store(&det_tid, (int)syscall(SYS_gettid));
    if (r == CUPTI_SUCCESS) {
        atomic_fetch_add(&finalized, 1);
        atomic_store(&det_state, DET_NONE);
        return;
    }
    api_domains(0); /* still subscribed: stop calling back */
    atomic_store(&det_failed, (int)r);
    atomic_store(&det_state, DET_HELD);
}

/* A failed cuptiFinalize, warned about once (agent thread): later captures
 * unsubscribe instead. */
static void detach_report(void)
{
    int r = atomic_exchange(&det_failed, 0);
    if (!r)
        return;
    teardown_broken = 1;
    tb_warn("GPU tracing: cuptiFinalize failed (%s): CUPTI stays attached between captures; later "
            "captures unsubscribe only",
            tb_cupti_result_str(g.lib, (CUptiResult)r));
}

/* Before a capture: 1 when the last capture's subscription is still ours
 * (its detach taken back, or never asked for), 0 when there is none. A
 * detach running on another thread is waited for (bounded). */
static int detach_cancel(void)
{
    int want = DET_PENDING;
    if (atomic_compare_exchange_strong(&det_state, &want, DET_HELD)) {
        api_domains(0);
        tb_debug("GPU: no CUDA call returned since the last capture; its CUPTI subscription is kept");
        return 1;
    }
    for (int i = 0; i < 2000 && atomic_load(&det_state) == DET_FINALIZING; i++)
        usleep(1000);
    detach_report();
    int s = atomic_load(&det_state);
    return s == DET_FINALIZING ? -EBUSY : s == DET_HELD;
}

/* Exit: the CUDA runtime's teardown makes driver calls; finalizing CUPTI in
 * the middle of it is not worth the risk. No CUPTI call here. */
static void detach_off_at_exit(void)
{
    int want = DET_PENDING;
    atomic_compare_exchange_strong(&det_state, &want, DET_HELD);
}

/* A libcuda function, only where the job has libcuda loaded already
 * (nothing is loaded or initialised for tbprof; the library stays, the job
 * holds it); NULL otherwise. */
static void *libcuda_sym(const char *name)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return NULL;
    void *f = dlsym(h, name);
    dlclose(h);
    return f;
}

/* One CUDA call from the agent thread, so the detach need not wait for the
 * job's next one (nor run on the job's thread). */
static void detach_poke(void)
{
    CUresult (*version)(int *);
    *(void **)&version = libcuda_sym("cuDriverGetVersion");
    int v = 0;
    if (version)
        version(&v);
}

/* Whether to detach after this capture, and what the output says of it. */
static int teardown_wanted(char *why, size_t n)
{
    int mode = tb_config_get()->cupti_teardown;
    uint32_t v = g.last.cupti_api_version;
    if (mode == TB_OFF)
        snprintf(why, n, "off (TBPROF_CUPTI_TEARDOWN=off): unsubscribed, CUPTI stays attached");
    else if (!g.lib->Finalize || !g.lib->EnableDomain)
        snprintf(why, n, "off: this libcupti lacks cuptiFinalize or cuptiEnableDomain; unsubscribed, CUPTI "
                         "stays attached");
    else if (teardown_broken)
        snprintf(why, n, "off: cuptiFinalize failed after an earlier capture; unsubscribed, CUPTI stays attached");
    else if (mode == TB_AUTO && !v)
        snprintf(why, n, "off: this libcupti does not say its version (cuptiGetVersion); "
                         "TBPROF_CUPTI_TEARDOWN=on forces the detach");
    else if (mode == TB_AUTO && v < CUPTI_API_12_6)
        snprintf(why, n,
                 "off: CUPTI API version %u is older than CUDA 12.6's (%u), where attaching again after "
                 "cuptiFinalize can crash with CUDA graphs; TBPROF_CUPTI_TEARDOWN=on forces it",
                 v, CUPTI_API_12_6);
    else {
        int k = snprintf(why, n, "on: cuptiFinalize after the capture (TBPROF_CUPTI_TEARDOWN=%s)",
                         mode == TB_ON ? "on" : "auto");
        if (graph_corr_breaks_on_reattach(v) && k > 0 && (size_t)k < n)
            snprintf(why + k, n - (size_t)k,
                     "; this CUPTI (API %u) numbers CUDA-graph launches wrongly once attached again: "
                     "later captures write graph work without correlation ids",
                     v);
        return 1;
    }
    return 0;
}

static const char *api_name(CUpti_CallbackDomain dom, uint32_t cbid)
{
    const char *n = NULL;
    if (g.lib && g.lib->GetCallbackName && g.lib->GetCallbackName(dom, cbid, &n) == CUPTI_SUCCESS)
        return n;
    return NULL;
}

/* ---- subscription -------------------------------------------------------- */

/* cuptiSubscribe_v2's parameters (CUDA 13.0+), declared here rather than
 * taken from cupti.h: CUPTI 13.2's params add allowMultipleSubscribers after
 * the fields 13.0 has, and which layout a libcupti reads is told by
 * struct_size, not by the header we were built with. */
typedef struct sub_params {
    size_t struct_size;
    const char *name;    /* CUPTI shows other tools "CUPTI for tbprof" */
    char *holder;        /* out: the subscriber already there, on a refusal */
    size_t holder_size;
    uint8_t allow_multiple;
} sub_params;
#define SUB_PARAMS_13_0 (offsetof(sub_params, holder_size) + sizeof(size_t))
#define SUB_PARAMS_13_2 (offsetof(sub_params, allow_multiple) + sizeof(uint8_t))
#ifdef CUpti_SubscriberParams_STRUCT_SIZE
_Static_assert(offsetof(sub_params, holder_size) == offsetof(CUpti_SubscriberParams, oldSubscriberSize) &&
                   offsetof(sub_params, holder) == offsetof(CUpti_SubscriberParams, oldSubscriberName),
               "CUpti_SubscriberParams moved a field: sub_params must follow");
#endif

/* Subscribe, named and alone. tbprof traces only as CUPTI's one subscriber
 * (its timestamp callback and activity kinds are process-wide), so where
 * CUPTI can admit several (13.3+ with r610+ drivers) it asks for none
 * beside it; before that, one is all CUPTI allows. A libcupti without _v2,
 * or one refusing both layouts, gets the classic call. *holder: the other
 * subscriber's name when CUPTI gave one. *how: the call made last. */
static CUptiResult subscribe(char *holder, size_t holder_size, const char **how)
{
    holder[0] = 0;
    if (g.lib->Subscribe_v2) {
        static const struct {
            size_t size;
            const char *call;
        } forms[] = {{SUB_PARAMS_13_2, "cuptiSubscribe_v2 (13.2 params)"},
                     {SUB_PARAMS_13_0, "cuptiSubscribe_v2 (13.0 params)"}};
        for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
            sub_params p = {.struct_size = forms[i].size, .name = "tbprof", .holder = holder,
                            .holder_size = holder_size, .allow_multiple = 0};
            *how = forms[i].call;
            CUptiResult r = g.lib->Subscribe_v2(&g.sub, (CUpti_CallbackFunc)api_callback, NULL, &p);
            holder[holder_size - 1] = 0;
            if (r == CUPTI_SUCCESS || r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED)
                return r;
            tb_debug("%s: %s", *how, tb_cupti_result_str(g.lib, r));
        }
    }
    *how = "cuptiSubscribe";
    return g.lib->Subscribe(&g.sub, (CUpti_CallbackFunc)api_callback, NULL);
}

/* PyTorch's CUDA library is in the process: torch.profiler (Kineto)
 * subscribes at its first use and, unless TEARDOWN_CUPTI=1, never lets go. */
static int pytorch_loaded(void)
{
    void *h = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    if (h)
        dlclose(h);
    return h != NULL;
}

/* ---- pool ---------------------------------------------------------------- */

/* Frees the pool; returns the buffers not translated: those CUPTI still
 * holds, and those it handed back after the first `translated` of done[]
 * (SIZE_MAX: none counted). Under the one lock, so a buffer coming back
 * meanwhile is either counted here or was read. */
static size_t pool_free(size_t translated)
{
    pthread_mutex_lock(&g.mu);
    size_t missed = g.nall - g.nfree - g.ndone + (g.ndone > translated ? g.ndone - translated : 0);
    /* only buffers back in our hands are freed; one CUPTI still holds (it
     * may still write into it: buffers_kept) becomes an orphan */
    for (size_t i = 0; i < g.nall; i++) {
        uint8_t *b = g.all[i];
        int free_it = 0;
        for (size_t j = 0; j < g.nfree && !free_it; j++)
            free_it = g.free_[j] == b;
        for (size_t j = 0; j < g.ndone && !free_it; j++)
            free_it = g.done[j].buf == b;
        if (free_it) {
            buf_unmap(b, g.buf_size);
            continue;
        }
        orphan_bytes += g.buf_size;
        if (norphans < ORPHANS_MAX) {
            orphans[norphans].buf = b;
            orphans[norphans++].size = g.buf_size;
        }
    }
    free(g.all);
    free(g.free_);
    free(g.done);
    free(g.faulted);
    g.all = g.free_ = NULL;
    g.done = NULL;
    g.faulted = NULL;
    g.nall = g.nfree = g.ndone = 0;
    pthread_mutex_unlock(&g.mu);
    return missed;
}

/* Threads in this process now ("Threads:" of /proc/self/status), 0 when
 * unknown. */
static size_t process_threads(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return 0;
    char line[256];
    unsigned long n = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Threads: %lu", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* How many buffers a pool aims for (see POOL_BUFFERS). */
static size_t pool_target(void)
{
    size_t want = process_threads() * POOL_BUFFERS_PER_THREAD;
    if (want < POOL_BUFFERS)
        want = POOL_BUFFERS;
    return want > POOL_MAX_BUFFERS ? POOL_MAX_BUFFERS : want;
}

static int pool_alloc(size_t budget)
{
    size_t bs = budget / pool_target();
    if (bs > BUF_MAX)
        bs = BUF_MAX;
    if (bs < BUF_MIN)
        bs = BUF_MIN;
    bs &= ~(size_t)(BUF_ALIGN - 1);
    size_t n = budget / bs;
    if (n < POOL_MIN_BUFFERS)
        n = POOL_MIN_BUFFERS;
    if (budget && n * bs > budget && budget >= POOL_MIN_BUFFERS * 4096) {
        bs = (budget / n) & ~(size_t)(BUF_ALIGN - 1);
    }
    uint8_t **all = calloc(n, sizeof(*all)), **fr = calloc(n, sizeof(*fr)), *faulted = calloc(n, 1);
    done_buf *dn = calloc(n, sizeof(*dn));
    if (!all || !fr || !dn || !faulted)
        goto oom;
    for (size_t i = 0; i < n; i++)
        if (!(all[i] = buf_map(bs)))
            goto oom;
    for (size_t i = 0; i < n; i++) /* handed out from the top: all[0] first */
        fr[i] = all[n - 1 - i];
    pthread_mutex_lock(&g.mu);
    g.all = all;
    g.free_ = fr;
    g.done = dn;
    g.faulted = faulted;
    g.nall = g.nfree = n;
    g.ndone = 0;
    g.buf_size = bs;
    pthread_mutex_unlock(&g.mu);
    return 0;
oom:
    if (all)
        for (size_t i = 0; i < n; i++)
            buf_unmap(all[i], bs);
    free(all);
    free(fr);
    free(dn);
    free(faulted);
    return -ENOMEM;
}

/* Fault in the next PREFAULT_AHEAD buffers CUPTI will get. Agent thread
 * only (it alone frees the pool). MADV_POPULATE_WRITE maps the pages
 * without changing a byte, so a buffer CUPTI took meanwhile is safe. */
static void prefault_next(void)
{
    uint8_t *todo[PREFAULT_AHEAD];
    size_t nt = 0;
    pthread_mutex_lock(&g.mu);
    for (size_t k = 0; k < g.nfree && k < PREFAULT_AHEAD; k++) {
        uint8_t *b = g.free_[g.nfree - 1 - k];
        for (size_t i = 0; i < g.nall; i++)
            if (g.all[i] == b && !g.faulted[i]) {
                g.faulted[i] = 1;
                todo[nt++] = b;
            }
    }
    size_t bs = g.buf_size;
    pthread_mutex_unlock(&g.mu);
    for (size_t k = 0; k < nt; k++) {
        if (madvise(todo[k], bs, MADV_POPULATE_WRITE) == 0) {
            g.last.buffers_prefaulted++;
            continue;
        }
        if (errno == EINVAL || errno == ENOSYS || errno == EPERM) {
            prefault_off = 1;
            tb_debug("GPU tracing: MADV_POPULATE_WRITE refused (%s); CUPTI buffers fault in as they fill",
                     strerror(errno));
        }
        break; /* ENOMEM, EFAULT...: the pages fault in as CUPTI writes them */
    }
}

static void gpu_poll(void *ctx)
{
    (void)ctx;
    if (g.started && !prefault_off)
        prefault_next();
}

/* ---- lifecycle ------------------------------------------------------------- */

static const CUpti_ActivityKind optional_kinds[] = {
    CUPTI_ACTIVITY_KIND_DEVICE,   CUPTI_ACTIVITY_KIND_CONTEXT,         CUPTI_ACTIVITY_KIND_MEMCPY,
    CUPTI_ACTIVITY_KIND_MEMCPY2,  CUPTI_ACTIVITY_KIND_MEMSET,          CUPTI_ACTIVITY_KIND_RUNTIME,
    CUPTI_ACTIVITY_KIND_DRIVER,   CUPTI_ACTIVITY_KIND_SYNCHRONIZATION, CUPTI_ACTIVITY_KIND_MARKER,
    CUPTI_ACTIVITY_KIND_OVERHEAD, CUPTI_ACTIVITY_KIND_MEMORY2,
};

static void disable_all(void)
{
    while (g.nenabled > 0)
        g.lib->ActivityDisable(g.enabled[--g.nenabled]);
    if (g.lib->ActivityEnableAllSyncRecords) /* CUPTI's default again, for whoever uses it next */
        g.lib->ActivityEnableAllSyncRecords(1);
}

/* CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER: whether the client's
 * buffers come zeroed. 1 when CUPTI took the value. */
static int set_zeroed_attr(uint8_t on)
{
    size_t sz = sizeof(on);
    return g.lib->ActivitySetAttribute &&
           g.lib->ActivitySetAttribute(CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER, &sz, &on) == CUPTI_SUCCESS;
}

/* Activity off, our thread-id type and clock undone; the subscription
 * given up unless `keep` (it detaches CUPTI later: gpu_release). */
static void release(int keep)
{
    if (g.nenabled)
        disable_all();
    if (!keep && atomic_load(&det_state) == DET_HELD) {
        g.lib->Unsubscribe(g.sub);
        atomic_store(&det_state, DET_NONE);
    }
    if (g.restore_tid_type && g.lib->SetThreadIdType) {
        g.lib->SetThreadIdType(g.old_tid_type);
        g.restore_tid_type = 0;
    }
    if (g.zeroed_attr) { /* CUPTI's default again: the next client's buffers may not be zeroed */
        set_zeroed_attr(0);
        g.zeroed_attr = 0;
    }
    atomic_store(&ts_capturing, 0);
}

static void calibrate(void)
{
    /* CUPTI's clock vs ours: the CUPTI reading between two monotonic reads,
     * narrowest window of a few tries */
    int64_t best_w = INT64_MAX, off = 0;
    for (int i = 0; i < 7; i++) {
        uint64_t c = 0;
        int64_t m1 = tb_mono_ns();
        if (g.lib->GetTimestamp(&c) != CUPTI_SUCCESS)
            continue;
        int64_t m2 = tb_mono_ns();
        if (m2 - m1 < best_w) {
            best_w = m2 - m1;
            off = tb_mono_to_epoch(m1 + (m2 - m1) / 2) - (int64_t)c;
        }
    }
    g.ts_to_epoch = off;
}

/* CUPTI records none of the calls translate.c would leave out anyway
 * (tb_cupti_api_is_quiet): no record written on the job's thread, no buffer
 * space. Per capture, after the RUNTIME and DRIVER kinds are enabled (which
 * reset this); the callback ids are found by name (some 1300 lookups, on
 * the agent thread). A libcupti without cuptiActivityEnableRuntimeApi/
 * DriverApi (older CUDA 12 releases) records them; translation drops them.
 * Not undone at stop: enabling a call there would record it with the kind
 * off, and the next client's enabling of the kind resets them anyway. */
static void quiet_apis_off(void)
{
    if (tb_config_get()->cuda_api_all || !g.lib->GetCallbackName)
        return;
    static const struct {
        CUpti_CallbackDomain dom;
        uint32_t n;
    } doms[2] = {{CUPTI_CB_DOMAIN_RUNTIME_API, CUPTI_RUNTIME_TRACE_CBID_SIZE},
                 {CUPTI_CB_DOMAIN_DRIVER_API, CUPTI_DRIVER_TRACE_CBID_SIZE}};
    size_t off = 0, failed = 0;
    for (int d = 0; d < 2; d++) {
        CUptiResult (*set)(CUpti_CallbackId, uint8_t) =
            d == 0 ? g.lib->ActivityEnableRuntimeApi : g.lib->ActivityEnableDriverApi;
        for (uint32_t cb = 1; set && cb < doms[d].n; cb++) {
            const char *name = NULL;
            if (g.lib->GetCallbackName(doms[d].dom, cb, &name) != CUPTI_SUCCESS || !name ||
                !tb_cupti_api_is_quiet(name))
                continue;
            if (set(cb, 0) == CUPTI_SUCCESS)
                off++;
            else
                failed++;
        }
    }
    tb_debug("GPU: %zu CUDA calls not recorded (TBPROF_CUDA_API_ALL=off), %zu refused by CUPTI", off, failed);
}

static int gpu_start(void *ctx, const tb_capture_info *info, const char **why)
{
    (void)ctx;
    static char whybuf[900];
    if (g.started) {
        *why = "GPU capture already running";
        return -EBUSY;
    }
    if (g.nall) /* a capture stopped but never collected */
        pool_free(SIZE_MAX);
    const tb_cupti_lib *lib = tb_cupti_lib_load(why);
    if (!lib)
        return -ENOENT;
    if (g.lib != lib) /* set once: a pending detach's callback reads it on a job thread */
        g.lib = lib;
    memset(&g.last, 0, sizeof(g.last));
    g.drain[0] = '\0';
    atomic_store(&g.exhausted, 0);
    g.cupti_dropped = 0;

    size_t budget = info && info->buffer_bytes ? info->buffer_bytes : (size_t)32 << 20;
    pthread_mutex_lock(&g.mu);
    size_t kept = orphan_bytes;
    pthread_mutex_unlock(&g.mu);
    if (kept >= budget) {
        snprintf(whybuf, sizeof(whybuf),
                 "CUPTI still holds %zu MiB of buffers from past captures (another CUPTI client took the buffer "
                 "callbacks?): GPU capture off until it gives them back, so tbprof's memory stays bounded",
                 kept >> 20);
        *why = whybuf;
        return -EBUSY;
    }

    char holder[128];
    const char *how = "cuptiSubscribe";
    int held = detach_cancel();
    if (held < 0) {
        *why = "CUPTI is still detaching after the last capture (cuptiFinalize has not returned in 2 s)";
        return -EBUSY;
    }
    CUptiResult r = CUPTI_SUCCESS;
    if (!held) {
        int w = watch_in("cuptiSubscribe", "starting a capture");
        r = subscribe(holder, sizeof(holder), &how);
        tb_stall_leave(w);
    }
    if (r != CUPTI_SUCCESS) {
        if (r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED)
            snprintf(whybuf, sizeof(whybuf),
                     "another CUPTI client is subscribed (%s%s%s): %s owns CUPTI; GPU activity not captured%s",
                     tb_cupti_result_str(g.lib, r), holder[0] ? ", held by " : "", holder,
                     holder[0] ? "that tool" : "torch.profiler, nsys, ncu or another tracer",
                     pytorch_loaded() ? ". In PyTorch, torch.profiler keeps CUPTI from its first use to the "
                                        "end of the process; run the job with TEARDOWN_CUPTI=1 to have it let "
                                        "go after each trace"
                                      : "");
        else
            snprintf(whybuf, sizeof(whybuf), "%s failed: %s (no GPU, no driver, or a driver too old for %s)",
                     how, tb_cupti_result_str(g.lib, r), g.lib->path);
        *why = whybuf;
        return r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED ? -EBUSY : -ENODEV;
    }
    if (!held) {
        atomic_store(&det_state, DET_HELD);
        g.sub_how = how;
    }
    g.last.subscribed_with = g.sub_how;
    if (g.lib->GetVersion && g.lib->GetVersion(&g.last.cupti_api_version) != CUPTI_SUCCESS)
        g.last.cupti_api_version = 0;
    atomic_store(&cupti_version, g.last.cupti_api_version);
    tb_debug("GPU: %s (CUPTI API %u), subscribed with %s%s", g.lib->path, g.last.cupti_api_version, g.sub_how,
             held ? ", at the last capture" : "");
    if (g.last.cupti_api_version == CUPTI_API_13_0)
        tb_warn_once("GPU tracing: %s: %s; if a capture's end hangs the job, that is why", g.lib->path,
                     CUPTI_DISABLE_DEADLOCK_ADVICE);

    if (pool_alloc(budget) < 0) {
        release(0);
        *why = "out of memory for the CUPTI buffer pool";
        return -ENOMEM;
    }
    g.last.buffer_size = g.buf_size;
    g.last.pool_buffers = g.nall;

    /* Timestamps: our clock when CUPTI lets us supply it (set before any
     * activity is enabled), else a measured offset. Registered at every
     * start: between our captures another client may have put its own
     * clock in (Kineto registers a TSC-based one) or reset CUPTI. */
    g.ts_callback = g.lib->ActivityRegisterTimestampCallback &&
                    g.lib->ActivityRegisterTimestampCallback(ts_callback) == CUPTI_SUCCESS;
    if (g.ts_callback) {
        atomic_store(&ts_capturing, 1);
        g.ts_to_epoch = 0;
    } else {
        calibrate();
    }
    g.last.used_timestamp_callback = g.ts_callback;

    /* our buffers come zeroed (buf_map): CUPTI need not clear each one on
     * the CUDA thread that asks for it, a stall on the job's thread */
    g.zeroed_attr = set_zeroed_attr(1);

    /* host API records carry kernel tids, like our /host:CPU lines */
    if (g.lib->SetThreadIdType) {
        CUpti_ActivityThreadIdType old = CUPTI_ACTIVITY_THREAD_ID_TYPE_DEFAULT;
        if (!g.lib->GetThreadIdType || g.lib->GetThreadIdType(&old) == CUPTI_SUCCESS) {
            if (g.lib->SetThreadIdType(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM) == CUPTI_SUCCESS) {
                g.old_tid_type = old;
                g.restore_tid_type = 1;
            }
        }
    }

    atomic_store(&g.active, 1);
    int w = watch_in("cuptiActivityEnable", "starting a capture");
    r = g.lib->ActivityRegisterCallbacks(buf_requested, buf_completed);
    if (r != CUPTI_SUCCESS) {
        snprintf(whybuf, sizeof(whybuf), "cuptiActivityRegisterCallbacks failed: %s",
                 tb_cupti_result_str(g.lib, r));
        goto fail;
    }
    /* the count is since its last read, which may have been another
     * client's session: read now, so the capture's is its own */
    size_t stale = 0;
    (void)g.lib->ActivityGetNumDroppedRecords(NULL, 0, &stale);
    g.nenabled = 0;
    r = g.lib->ActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    if (r != CUPTI_SUCCESS) {
        snprintf(whybuf, sizeof(whybuf),
                 "cuptiActivityEnable(CONCURRENT_KERNEL) failed: %s (driver too old, no GPU, or "
                 "profiling not permitted)",
                 tb_cupti_result_str(g.lib, r));
        goto fail;
    }
    g.enabled[g.nenabled++] = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL;
    /* CUPTI records every cudaEventQuery/cudaStreamQuery by default, also
     * those of work not done yet: a job's pollers (NCCL's watchdog, the
     * caching allocator's event checks) would fill the buffers with them.
     * Only syncs that waited, and queries that found the work done. */
    if (g.lib->ActivityEnableAllSyncRecords)
        g.lib->ActivityEnableAllSyncRecords(0);
    for (size_t i = 0; i < sizeof(optional_kinds) / sizeof(optional_kinds[0]); i++) {
        /* devices and contexts: CUPTI emits their records as the driver
         * starts and as a context is made, long before a capture mid-run;
         * "and dump" hands over those that exist now (which GPU each
         * context is: syncs and copies of contexts the window's kernels do
         * not name are placed on their device) */
        CUpti_ActivityKind k = optional_kinds[i];
        int dump = g.lib->ActivityEnableAndDump &&
                   (k == CUPTI_ACTIVITY_KIND_DEVICE || k == CUPTI_ACTIVITY_KIND_CONTEXT);
        r = dump ? g.lib->ActivityEnableAndDump(k) : CUPTI_ERROR_NOT_SUPPORTED;
        if (r != CUPTI_SUCCESS)
            r = g.lib->ActivityEnable(k);
        if (r == CUPTI_SUCCESS)
            g.enabled[g.nenabled++] = optional_kinds[i];
        else
            tb_debug("GPU tracing: activity kind %d not enabled: %s", (int)optional_kinds[i],
                     tb_cupti_result_str(g.lib, r));
    }
    quiet_apis_off();
    tb_stall_leave(w);
    g.started = 1;
    return 0;
fail:
    tb_stall_leave(w);
    atomic_store(&g.active, 0);
    release(0);
    pool_free(SIZE_MAX);
    *why = whybuf;
    return -ENODEV;
}

/* Buffers CUPTI holds now (handed out, not handed back). */
static size_t held_by_cupti(void)
{
    pthread_mutex_lock(&g.mu);
    size_t n = g.nall - g.nfree - g.ndone;
    pthread_mutex_unlock(&g.mu);
    return n;
}

/* With every kind off, CUPTI adds no record; those it holds for work still
 * on the GPU (a job runs ahead of its GPU: the window's last step is often
 * still running) complete as the GPU finishes it. A forced flush now would
 * hand them over incomplete, and they would be lost. So first default
 * flushes, which return only buffers whose records are all complete, until
 * CUPTI holds none of ours: at most TBPROF_GPU_DRAIN_MS, on this (the
 * agent's) thread. Not while the process leaves: CUDA may be tearing down. */
static void drain(void)
{
    int64_t limit = tb_config_get()->gpu_drain_ms;
    if (limit <= 0) {
        snprintf(g.drain, sizeof(g.drain), "skipped: TBPROF_GPU_DRAIN_MS=0");
        return;
    }
    if (tb_agent_leaving()) {
        snprintf(g.drain, sizeof(g.drain), "skipped: the process is exiting");
        return;
    }
    int64_t t0 = tb_mono_ns(), until = t0 + limit * 1000000;
    useconds_t nap = 500;
    size_t held;
    for (;;) {
        int w = watch_in("cuptiActivityFlushAll", "waiting for the capture's GPU work");
        g.lib->ActivityFlushAll(0);
        tb_stall_leave(w);
        if ((held = held_by_cupti()) == 0 || tb_mono_ns() >= until || tb_agent_leaving())
            break;
        usleep(nap);
        if (nap < 16000)
            nap *= 2;
    }
    double ms = (double)(tb_mono_ns() - t0) / 1e6;
    if (held)
        snprintf(g.drain, sizeof(g.drain), "gave up after %.1f ms (TBPROF_GPU_DRAIN_MS=%lld): CUPTI held %zu buffers",
                 ms, (long long)limit, held);
    else
        snprintf(g.drain, sizeof(g.drain), "%.1f ms, all complete", ms);
}

static void gpu_stop(void *ctx)
{
    (void)ctx;
    if (!g.started)
        return;
    int w = watch_in("cuptiActivityDisable", "ending a capture");
    disable_all();
    tb_stall_leave(w);
    drain();
    w = watch_in("cuptiActivityFlushAll", "ending a capture");
    g.lib->ActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    tb_stall_leave(w);
    size_t dropped = 0;
    if (g.lib->ActivityGetNumDroppedRecords(NULL, 0, &dropped) == CUPTI_SUCCESS)
        g.cupti_dropped = dropped;
    atomic_store(&g.active, 0);
    g.teardown = teardown_wanted(g.teardown_why, sizeof(g.teardown_why));
    w = watch_in("cuptiUnsubscribe", "ending a capture");
    release(g.teardown);
    tb_stall_leave(w);
    g.started = 0;
}

/* Device facts from the driver when libcuda is already in the process. */
static void device_facts(tb_cupti_tr *t)
{
    CUresult (*getcount)(int *);
    CUresult (*get)(CUdevice *, int);
    CUresult (*attr)(int *, CUdevice_attribute, CUdevice);
    CUresult (*totalmem)(size_t *, CUdevice);
    CUresult (*getname)(char *, int, CUdevice);
    *(void **)&getcount = libcuda_sym("cuDeviceGetCount");
    *(void **)&get = libcuda_sym("cuDeviceGet");
    *(void **)&attr = libcuda_sym("cuDeviceGetAttribute");
    *(void **)&totalmem = libcuda_sym("cuDeviceTotalMem_v2");
    *(void **)&getname = libcuda_sym("cuDeviceGetName");
    int n = 0;
    if (!getcount || !get || !attr || getcount(&n) != CUDA_SUCCESS)
        n = 0;
    for (int i = 0; i < n && i < TB_CUPTI_MAX_DEVICES; i++) {
        CUdevice d;
        if (get(&d, i) != CUDA_SUCCESS)
            continue;
        tb_cupti_devprops p = {.valid = 1};
        int v = 0, bus = 0, memclk = 0;
#define A(e, dst)                                                                                  \
    do {                                                                                           \
        if (attr(&v, e, d) == CUDA_SUCCESS)                                                        \
            dst = v;                                                                               \
    } while (0)
        A(CU_DEVICE_ATTRIBUTE_CLOCK_RATE, p.clock_khz);
        A(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, p.sm_count);
        A(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, p.cc_major);
        A(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, p.cc_minor);
        A(CU_DEVICE_ATTRIBUTE_WARP_SIZE, p.warp_size);
        A(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, p.max_threads_per_sm);
        A(CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, p.max_blocks_per_sm);
        A(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, p.regs_per_sm);
        A(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, p.smem_per_sm);
        A(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, p.max_threads_per_block);
        A(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, p.regs_per_block);
        A(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, p.smem_per_block);
        A(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, p.smem_per_block_optin);
        A(CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, p.smem_reserved_per_block);
        A(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, memclk);
        A(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, bus);
#undef A
        /* DDR: two transfers per clock */
        p.mem_bandwidth = 2ull * (uint64_t)memclk * 1000ull * (uint64_t)bus / 8ull;
        size_t mem = 0;
        if (totalmem && totalmem(&mem, d) == CUDA_SUCCESS)
            p.mem_size = mem;
        if (getname)
            getname(p.name, (int)sizeof(p.name), d);
        tb_cupti_tr_set_device(t, (uint32_t)i, &p);
    }
}

static int gpu_collect(void *ctx, tb_space *space)
{
    (void)ctx;
    if (!g.nall)
        return 0;
    tb_cupti_tr_opts o = {.ts_to_epoch_ns = g.ts_to_epoch,
                          .api_name = api_name,
                          .demangle = 1,
                          .graph_corr_unreliable = graph_corr_unreliable(g.last.cupti_api_version),
                          .api_all = tb_config_get()->cuda_api_all,
                          .cupti_api = g.last.cupti_api_version};
    tb_cupti_tr *t = tb_cupti_tr_new(space, &o);
    int rc = 0;
    size_t nd = SIZE_MAX; /* buffers translated */
    uint64_t ctx_unplaced = 0, syncs_unknown = 0;
    if (!t) {
        rc = -ENOMEM;
    } else {
        device_facts(t);
        /* every buffer back, also one CUPTI hands back while the others are
         * read (its own thread may complete one after the forced flush
         * returned): read until no more came. done[] never moves, and its
         * entries below ndone are written before ndone grows (under mu) */
        nd = 0;
        for (;;) {
            pthread_mutex_lock(&g.mu);
            size_t n = g.ndone;
            pthread_mutex_unlock(&g.mu);
            if (n == nd)
                break;
            /* each batch prescanned before any of it is translated */
            for (size_t i = nd; i < n; i++)
                tb_cupti_tr_prescan(t, g.done[i].buf, g.done[i].valid, g.lib->ActivityGetNextRecord);
            for (; nd < n; nd++)
                tb_cupti_tr_buffer(t, g.done[nd].buf, g.done[nd].valid, g.lib->ActivityGetNextRecord);
        }
        rc = tb_cupti_tr_finish(t);
        tb_cupti_tr_counts c = tb_cupti_tr_get_counts(t);
        g.last.records = c.records;
        g.last.incomplete = c.incomplete;
        g.last.untimed = c.untimed;
        if (c.bad_time > c.untimed)
            tb_debug("GPU: %llu records with backward or missing times left out",
                     (unsigned long long)(c.bad_time - c.untimed));
        g.last.cut_buffers = c.cut_buffers;
        g.last.cut_bytes = c.cut_bytes;
        g.last.buffers_completed = nd;
        g.last.graph_uncorrelated = c.graph_uncorrelated;
        g.last.kernels = c.kernels;
        g.last.odd_kernels = c.odd_kernels;
        g.last.launches = c.launches;
        ctx_unplaced = c.contexts_unplaced;
        syncs_unknown = c.syncs_gpu_unknown;
        if (c.api_quiet)
            tb_debug("GPU: %llu records of calls CUPTI was asked not to record left out",
                     (unsigned long long)c.api_quiet);
        tb_cupti_tr_free(t);
    }
    /* what CUPTI has not handed back even now (a forced flush returns every
     * buffer: normally 0; one back between the stop and now was read) */
    g.last.buffers_kept = pool_free(nd);
    g.last.pool_exhausted = atomic_load(&g.exhausted);
    g.last.cupti_dropped = g.cupti_dropped;
    tb_plane *hp = tb_host_plane(space);
    if (hp) {
        tb_plane_stat_u64(hp, TB_ST_CUPTI_DROPPED, g.last.cupti_dropped);
        tb_plane_stat_u64(hp, TB_ST_POOL_EXHAUSTED, g.last.pool_exhausted);
        char lib[700];
        snprintf(lib, sizeof(lib), "%s (CUPTI API %u, %s)", g.lib->path, g.last.cupti_api_version,
                 g.last.subscribed_with ? g.last.subscribed_with : "?");
        tb_plane_stat_str(hp, TB_ST_CUPTI_LIBRARY, lib);
        tb_plane_stat_u64(hp, TB_ST_CUPTI_BUFFERS, g.last.buffers_completed);
        snprintf(lib, sizeof(lib), "%zu x %zu", g.last.pool_buffers, g.last.buffer_size);
        tb_plane_stat_str(hp, TB_ST_CUPTI_POOL, lib);
        tb_plane_stat_str(hp, TB_ST_CUPTI_TEARDOWN, g.teardown_why);
        tb_plane_stat_str(hp, TB_ST_GPU_DRAIN, g.drain);
        tb_plane_stat_u64(hp, TB_ST_GPU_INCOMPLETE, g.last.incomplete);
        tb_plane_stat_u64(hp, TB_ST_CUPTI_BUFFERS_KEPT, g.last.buffers_kept);
        if (!o.api_all)
            tb_plane_stat_str(hp, TB_ST_CUDA_API_LEFT_OUT, tb_cupti_api_quiet_list());
        if (o.graph_corr_unreliable)
            tb_plane_stat_u64(hp, TB_ST_GRAPH_UNCORRELATED, g.last.graph_uncorrelated);
        if (g.last.odd_kernels)
            tb_plane_stat_u64(hp, TB_ST_ODD_KERNELS, g.last.odd_kernels);
    }
    if (g.last.odd_kernels) {
        tb_space_warn(space,
                      "%llu of %llu kernel records do not read as kernels (a grid or block dimension below 1, "
                      "or over 1024 threads a block): this libcupti (CUPTI API %u) may lay out its "
                      "records unlike the CUPTI tbprof was built with (API %u); GPU event names, times and "
                      "details may be wrong: rebuild tbprof against this CUDA's cupti.h",
                      (unsigned long long)g.last.odd_kernels, (unsigned long long)g.last.kernels,
                      g.last.cupti_api_version, (unsigned)CUPTI_API_VERSION);
    }
    /* launches in the window and not one kernel, none dropped: a CUPTI
     * that records API calls but no GPU work (reported of a CUDA 13.0
     * CUPTI once detached and attached again, as tbprof does between
     * captures) */
    if (g.last.launches >= 8 && !g.last.kernels && !g.last.cupti_dropped && !g.last.pool_exhausted &&
        !g.last.incomplete && !g.last.cut_buffers && !g.last.buffers_kept && !g.last.untimed)
        tb_space_warn(space,
                      "%llu kernel launches recorded but no kernel: this libcupti (CUPTI API %u) traced no GPU "
                      "work in this capture%s; TBPROF_CUPTI_TEARDOWN=off keeps CUPTI attached between captures",
                      (unsigned long long)g.last.launches, g.last.cupti_api_version,
                      atomic_load(&finalized) > 0 ? " (it had been detached and attached again)" : "");
    if (g.last.graph_uncorrelated) {
        tb_space_warn(space,
                      "%llu CUDA-graph events written without correlation ids (no flows, no NVTX ranges): "
                      "this libcupti (CUPTI API %u) numbers graph launches wrongly once it has been detached "
                      "and attached again (fixed in CUDA 13.1 Update 1); use a newer libcupti "
                      "(TBPROF_CUPTI_PATH) or keep CUPTI attached (TBPROF_CUPTI_TEARDOWN=off)",
                      (unsigned long long)g.last.graph_uncorrelated, g.last.cupti_api_version);
    }
    if (ctx_unplaced) {
        tb_space_warn(space,
                      "more than %u CUDA contexts: the GPU of the later ones is not kept (%llu records named "
                      "them); %llu synchronizations whose GPU is not known are on the host plane's "
                      "\"CUDA sync (GPU unknown)\" line",
                      TB_CUPTI_MAX_CONTEXTS, (unsigned long long)ctx_unplaced, (unsigned long long)syncs_unknown);
    }
    if (g.last.buffers_kept) {
        tb_space_warn(space,
                      "CUPTI kept %llu of tbprof's %zu activity buffers after the final flush, until the capture "
                      "was translated: another CUPTI "
                      "client (torch.profiler started during the capture, say) may have taken over activity "
                      "recording; GPU records of this capture may be missing",
                      (unsigned long long)g.last.buffers_kept, g.last.pool_buffers);
    }
    if (g.last.incomplete) {
        /* CUPTI reads no further in a buffer than its first incomplete
         * record: what followed it there (API calls, markers...) is gone */
        char cut[200] = "";
        if (g.last.cut_buffers && g.last.cut_bytes)
            snprintf(cut, sizeof(cut),
                     "; %llu activity buffer%s could not be read past %s first such record: the %llu bytes from "
                     "there on (that record and any after it) are lost",
                     (unsigned long long)g.last.cut_buffers, g.last.cut_buffers == 1 ? "" : "s",
                     g.last.cut_buffers == 1 ? "its" : "their", (unsigned long long)g.last.cut_bytes);
        else if (g.last.cut_buffers)
            snprintf(cut, sizeof(cut),
                     "; %llu activity buffer%s could not be read past %s first such record: any records after "
                     "it are lost",
                     (unsigned long long)g.last.cut_buffers, g.last.cut_buffers == 1 ? "" : "s",
                     g.last.cut_buffers == 1 ? "its" : "their");
        tb_space_warn(space,
                      "%llu GPU activity records left out: their work was still running when the capture "
                      "ended (waited %s)%s; raise TBPROF_GPU_DRAIN_MS",
                      (unsigned long long)g.last.incomplete, g.drain, cut);
    }
    /* complete records without times: CUPTI's own note on kernel records
     * says it had no device memory to time them (seen after millions of
     * graph kernels), not work still running */
    if (g.last.untimed)
        tb_space_warn(space,
                      "%llu GPU activity records left out: CUPTI gave them no timestamps (it records so when it "
                      "lacks device memory to time them: many concurrent kernels or graph launches)",
                      (unsigned long long)g.last.untimed);
    /* into the profile only: warned about at the first capture */
    if (g.last.cupti_api_version == CUPTI_API_13_0)
        tb_space_add_warning(space, CUPTI_DISABLE_DEADLOCK_ADVICE);
    if (g.last.cupti_dropped || g.last.pool_exhausted) {
        tb_space_warn(space,
                      "GPU activity records lost: CUPTI dropped %llu records; the buffer pool (%zu x %zu "
                      "bytes) ran out %llu times; raise TBPROF_BUFFER_MB or capture fewer steps",
                      (unsigned long long)g.last.cupti_dropped, g.last.pool_buffers, g.last.buffer_size,
                      (unsigned long long)g.last.pool_exhausted);
    }
    return rc;
}

/* Idle again after collect: detach CUPTI (see "detach" above). */
static void gpu_release(void *ctx)
{
    (void)ctx;
    if (!g.teardown || atomic_load(&det_state) != DET_HELD)
        return;
    static int exit_hook;
    if (!exit_hook && atexit(detach_off_at_exit) == 0)
        exit_hook = 1;
    if (!atomic_load(&capture_mode_xchg)) {
        CUresult (*f)(CUstreamCaptureMode *);
        *(void **)&f = libcuda_sym("cuThreadExchangeStreamCaptureMode");
        atomic_store(&capture_mode_xchg, f);
    }
    CUptiResult r = api_domains(1);
    if (r != CUPTI_SUCCESS) {
        api_domains(0);
        release(0);
        tb_debug("GPU: cuptiEnableDomain failed (%s): unsubscribed, CUPTI not detached",
                 tb_cupti_result_str(g.lib, r));
        return;
    }
    int64_t t = tb_mono_ns();
    atomic_store(&det_state, DET_PENDING);
    detach_poke();
    int s = atomic_load(&det_state);
    if (s == DET_NONE)
        tb_debug("GPU: CUPTI detached (cuptiFinalize) in %.1f ms, on %s", (tb_mono_ns() - t) / 1e6,
                 atomic_load(&det_tid) == (int)syscall(SYS_gettid) ? "the agent thread" : "a job thread");
    else if (s == DET_PENDING)
        tb_debug("GPU: CUPTI detaches at the job's next CUDA call");
    detach_report();
}

static void gpu_atfork_child(void *ctx)
{
    (void)ctx;
    /* the child has no CUPTI state of ours worth keeping: forget buffers
     * without calling into CUPTI (its threads did not survive the fork) */
    g.started = 0;
    atomic_store(&det_state, DET_NONE);
    atomic_store(&det_failed, 0);
    g.nenabled = 0;
    g.restore_tid_type = 0;
    atomic_store(&g.active, 0);
    atomic_store(&ts_capturing, 0);
    pthread_mutex_init(&g.mu, NULL);
    g.all = g.free_ = NULL;
    g.done = NULL;
    g.faulted = NULL;
    g.nall = g.nfree = g.ndone = 0;
}

tb_gpu_stats tb_gpu_last_stats(void) { return g.last; }

static tb_source gpu = {
    .name = "gpu",
    .start = gpu_start,
    .poll = gpu_poll,
    .stop = gpu_stop,
    .collect = gpu_collect,
    .release = gpu_release,
    .atfork_child = gpu_atfork_child,
};

tb_source *tb_gpu_source(void) { return &gpu; }
