/* fakecupti.c - a stand-in libcupti for machines without a GPU.
 *
 * Exports the CUPTI functions tbprof calls. At cuptiActivityEnable(
 * CONCURRENT_KERNEL) it reads a script (TBFAKE_CUPTI_SCRIPT) of activity
 * records whose times are offsets (microseconds) from "now" (enable, or with
 * TBFAKE_CUPTI_AT_LAUNCH the program's launch call: tbfake_cupti_launch); at
 * cuptiActivityFlushAll it hands them to the registered buffer callbacks
 * packed into the client's buffers, exactly as CUPTI would: records of a
 * kind that was never enabled are not delivered, a buffer request answered
 * with no buffer drops the remaining records (counted, reported by
 * cuptiActivityGetNumDroppedRecords).
 *
 * Script: one record per line, "kind key=value ...", '#' comments.
 *   device   id= name= sms= cc=MAJ.MIN clock=kHz membw=KB/s memsize=bytes warp= maxwarps= maxblocks= regs= smem=
 *   context  ctx= dev=
 *   kernel   name= start= end= dev= ctx= stream= corr= grid=x,y,z block=x,y,z regs= ssmem= dsmem= graph=
 *            untimed=1 (start and end 0: CUPTI could not time it)
 *   memcpy   kind=htod|dtoh|dtod|htoh|ptop src=pageable|pinned|device dst=... bytes= async=0|1 (+ times/ids)
 *   p2p      srcdev= dstdev= dev= (where it runs; default srcdev) srcctx= dstctx= (the contexts
 *            owning the memory; default 0) bytes= src= dst= async= (+ times/ids)
 *   memset   bytes= value= mem=device async= (+ times/ids)
 *   runtime|driver name=cudaLaunchKernel_v7000 cbid= tid=N|main corr= start= end=
 *   sync     type=event|wait|stream|context ctx= stream= corr= start= end=
 *   marker   id= name= domain= tid= start= end=    (a start and an end record; %XX
 *            in the name is decoded: %20 a space, %2C a comma)
 *   overhead ovkind=compiler|flush|instr|lazy|resource obj=thread|process|device tid= dev= start= end=
 *   malloc|free addr= bytes= mem=device dev= ctx= stream= corr= start=
 * Knobs (environment):
 *   TBFAKE_CUPTI_SUBSCRIBER=1     cuptiSubscribe: another subscriber holds CUPTI
 *                                 (a value that is not a number is its name,
 *                                 which cuptiSubscribe_v2 hands back)
 *   TBFAKE_CUPTI_V2_SIZE=N        cuptiSubscribe_v2 takes only params of
 *                                 structSize N (CUPTI_ERROR_INVALID_PARAMETER)
 *   TBFAKE_CUPTI_V2_FAIL=N        cuptiSubscribe_v2 returns CUptiResult N
 *   TBFAKE_CUPTI_FAIL_SUBSCRIBE=N cuptiSubscribe returns CUptiResult N
 *   TBFAKE_CUPTI_SUBSCRIBE_MS=N   cuptiSubscribe takes N ms (a slow first CUPTI start)
 *   TBFAKE_CUPTI_FAIL_ENABLE=N    cuptiActivityEnable(CONCURRENT_KERNEL) returns N
 *   TBFAKE_CUPTI_FAIL_DUMP=1      cuptiActivityEnableAndDump refuses every kind
 *   TBFAKE_CUPTI_DISABLE_MS=N     cuptiActivityDisable(CONCURRENT_KERNEL) takes N ms
 *                                 (CUPTI 13.0 GA's deadlock, ended)
 *   TBFAKE_CUPTI_DROPPED=N        CUPTI reports N extra dropped records
 *   TBFAKE_CUPTI_REPEAT=N         replay the script N times (times shifted, corr ids offset)
 *   TBFAKE_CUPTI_PER_BUFFER=N     at most N records per buffer
 *   TBFAKE_CUPTI_THREADS=N        records come from N threads, each with its
 *                                 own buffers (CUPTI's per-thread buffers)
 *   TBFAKE_CUPTI_SLOW_MS=N        sleep N ms before handing each buffer back
 *   TBFAKE_CUPTI_SKEW_NS=N        the default clock is CLOCK_REALTIME + N
 *   TBFAKE_CUPTI_SHIFT_US=N       add N us to every script time
 *   TBFAKE_CUPTI_AT_LAUNCH=1      times are offsets from the program's first
 *                                 tbfake_cupti_launch() call after enable, not
 *                                 from enable (a flush before that call
 *                                 delivers none of them)
 *   TBFAKE_CUPTI_REPORT=path      append one line per call (subscribe, enable, ...)
 *   TBFAKE_CUPTI_VERSION=N        cuptiGetVersion reports N (default: the header's)
 *   TBFAKE_CUPTI_FAIL_FINALIZE=N  cuptiFinalize returns CUptiResult N
 *   TBFAKE_CUPTI_API_OFF_FAIL=N   cuptiActivityEnableRuntimeApi/DriverApi return
 *                                 CUptiResult N (and record the call anyway)
 *   TBFAKE_CUPTI_LOSE_BUFFERS=1   filled buffers never come back (another
 *                                 CUPTI client registered its own buffer
 *                                 callbacks over the subscriber's)
 *   TBFAKE_CUPTI_LATE=dropped|read  a forced flush returns with the last
 *                                 buffer it filled still held (its thread
 *                                 still handing it over), which comes back
 *                                 at the next cuptiActivityGetNumDroppedRecords
 *                                 (dropped) or cuptiActivityGetNextRecord
 *                                 (read: while the client reads the others)
 *   TBFAKE_CUPTI_INFLIGHT=1       GPU work (kernel, memcpy, memset records)
 *                                 whose end is still ahead of the clock is
 *                                 running: a default flush keeps a buffer
 *                                 back and delivers nothing; a forced one
 *                                 delivers such records incomplete
 *                                 (cuptiActivityGetNextRecord stops there
 *                                 with CUPTI_ERROR_INVALID_KIND)
 * CUDA calls: tbfake_cuda_api(domain, cbid) is one returning runtime or
 * driver call (a test program's, or the fake libcuda's cuDriverGetVersion):
 * the subscriber's callback runs at its enter and exit when the subscriber
 * enabled that domain (cuptiEnableDomain), as CUPTI calls it; cuptiFinalize
 * reports whether it ran inside such an exit callback, and on which thread.
 * Built three ways: full; -DFAKE_OLD (no timestamp callback, thread-id type,
 * callback names, cuptiEnableDomain, cuptiFinalize or
 * cuptiActivityEnableAllSyncRecords: an older CUPTI);
 * -DFAKE_BROKEN (no cuptiActivityFlushAll).
 */
#include <cupti.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))
#define MAXKINDS 64

typedef struct rec {
    uint32_t size;
    uint32_t kind;
    union {
        CUpti_Activity a;
        CUpti_ActivityKernel10 k;
        CUpti_ActivityMemcpy6 m;
        CUpti_ActivityMemcpyPtoP4 p;
        CUpti_ActivityMemset4 ms;
        CUpti_ActivityAPI api;
        CUpti_ActivitySynchronization2 sy;
        CUpti_ActivityMarker2 mk;
        CUpti_ActivityOverhead3 ov;
        CUpti_ActivityMemory4 mem;
        CUpti_ActivityDevice5 dev;
        CUpti_ActivityContext3 ctx;
    } u;
} rec;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int subscribed;
static CUpti_CallbackFunc sub_cb; /* the subscriber's callback, and its data */
static void *sub_ud;
static int domains[CUPTI_CB_DOMAIN_SIZE]; /* callback domains the subscriber enabled */
/* threads inside an API exit callback now (no __thread: LeakSanitizer
 * cannot scan the TLS of a dlopen()ed library) */
static long in_exit_tids[64];
static unsigned long long n_subscribe, n_finalize;
static int enabled[MAXKINDS], seen[MAXKINDS];
/* runtime [0] and driver [1] calls not recorded (cuptiActivityEnableRuntimeApi/
 * DriverApi with 0); enabling the RUNTIME or DRIVER kind records them all again */
static unsigned char api_off[2][4096];
static CUpti_BuffersCallbackRequestFunc req_cb;
static CUpti_BuffersCallbackCompleteFunc done_cb;
#ifndef FAKE_OLD
static CUpti_TimestampCallbackFunc ts_cb;
static CUpti_ActivityThreadIdType tid_type;
#endif
static rec *recs;
static size_t nrecs;
static size_t dropped_pending;
static unsigned long long n_flush, n_delivered, n_dropped_total, n_handed, n_resident;
static char *names[4096]; /* strings the records point at; live until unload */
static size_t nnames;
static struct {
    int dom;
    uint32_t cbid;
    const char *name;
} cbnames[256];
static int ncbnames;

static void report(const char *fmt, ...)
{
    const char *p = getenv("TBFAKE_CUPTI_REPORT");
    if (!p || !*p)
        return;
    FILE *f = fopen(p, "a");
    if (!f)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

/* TBFAKE_CUPTI_LOADED=PATH: that file is created when this library is
 * loaded (a test that no libcupti is loaded at all, before any call) */
__attribute__((constructor)) static void mark_loaded(void)
{
    const char *p = getenv("TBFAKE_CUPTI_LOADED");
    FILE *f = p && *p ? fopen(p, "a") : NULL;
    if (f)
        fclose(f);
}

static long envl(const char *n, long def)
{
    const char *v = getenv(n);
    return v && *v ? strtol(v, NULL, 0) : def;
}

/* cuptiGetVersion()'s answer (TBFAKE_CUPTI_VERSION, default the header's) */
static long api_version(void) { return envl("TBFAKE_CUPTI_VERSION", CUPTI_API_VERSION); }
#define FAKE_API_OVERHEAD3 22          /* CUDA 12.4 */
#define FAKE_API_DEVICE_NAME_OWNED 130000 /* CUDA 13.0 */

static uint64_t fake_clock(void)
{
#ifndef FAKE_OLD
    if (ts_cb)
        return ts_cb();
#endif
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (uint64_t)envl("TBFAKE_CUPTI_SKEW_NS", 0);
}

static const char *keep(const char *s)
{
    for (size_t i = 0; i < nnames; i++)
        if (strcmp(names[i], s) == 0)
            return names[i];
    if (nnames == sizeof(names) / sizeof(names[0]))
        return "overflow";
    names[nnames] = strdup(s);
    return names[nnames] ? names[nnames++] : "oom";
}

/* %XX in a marker's name (a space is %20), decoded into a static buffer */
static const char *unescape(const char *s)
{
    static char out[512];
    size_t n = 0;
    for (; *s && n + 1 < sizeof(out); s++) {
        unsigned v;
        if (s[0] == '%' && s[1] && s[2] && sscanf(s + 1, "%2x", &v) == 1) {
            out[n++] = (char)v;
            s += 2;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = 0;
    return out;
}

/* key=value lookup in a tokenized line */
static const char *kv(char **tok, int ntok, const char *key)
{
    size_t kl = strlen(key);
    for (int i = 1; i < ntok; i++)
        if (strncmp(tok[i], key, kl) == 0 && tok[i][kl] == '=')
            return tok[i] + kl + 1;
    return NULL;
}
static long long kvl(char **tok, int ntok, const char *key, long long def)
{
    const char *v = kv(tok, ntok, key);
    if (!v)
        return def;
    if (strcmp(v, "main") == 0)
        return getpid();
    return strtoll(v, NULL, 0);
}
static uint64_t kvt(char **tok, int ntok, const char *key, uint64_t base)
{
    const char *v = kv(tok, ntok, key);
    return v ? base + (uint64_t)(strtod(v, NULL) * 1000.0) : base;
}
static void kv3(char **tok, int ntok, const char *key, int32_t *x, int32_t *y, int32_t *z)
{
    const char *v = kv(tok, ntok, key);
    *x = *y = *z = 1;
    if (v)
        sscanf(v, "%d,%d,%d", x, y, z);
}
static int memkind(const char *v)
{
    if (!v)
        return CUPTI_ACTIVITY_MEMORY_KIND_UNKNOWN;
    if (!strcmp(v, "pageable"))
        return CUPTI_ACTIVITY_MEMORY_KIND_PAGEABLE;
    if (!strcmp(v, "pinned"))
        return CUPTI_ACTIVITY_MEMORY_KIND_PINNED;
    if (!strcmp(v, "device"))
        return CUPTI_ACTIVITY_MEMORY_KIND_DEVICE;
    if (!strcmp(v, "array"))
        return CUPTI_ACTIVITY_MEMORY_KIND_ARRAY;
    if (!strcmp(v, "managed"))
        return CUPTI_ACTIVITY_MEMORY_KIND_MANAGED;
    return CUPTI_ACTIVITY_MEMORY_KIND_UNKNOWN;
}

static size_t caprecs;

static rec *push(CUpti_ActivityKind kind, size_t size)
{
    if (nrecs == caprecs) {
        size_t nc = caprecs ? caprecs * 2 : 256;
        rec *n = realloc(recs, nc * sizeof(*recs));
        if (!n)
            return NULL;
        recs = n;
        caprecs = nc;
    }
    rec *r = &recs[nrecs++];
    memset(r, 0, sizeof(*r));
    r->size = (uint32_t)((size + 7) & ~(size_t)7);
    r->kind = kind;
    r->u.a.kind = kind;
    return r;
}

static void parse_line(char *line, uint64_t base, uint32_t corr_off)
{
    char *tok[64];
    int ntok = 0;
    for (char *s = strtok(line, " \t\r\n"); s && ntok < 64; s = strtok(NULL, " \t\r\n"))
        tok[ntok++] = s;
    if (!ntok || tok[0][0] == '#')
        return;
    const char *k = tok[0];
    uint64_t st = kvt(tok, ntok, "start", base), en = kv(tok, ntok, "end") ? kvt(tok, ntok, "end", base) : st;
    uint32_t dev = (uint32_t)kvl(tok, ntok, "dev", 0), ctx = (uint32_t)kvl(tok, ntok, "ctx", 1),
             stream = (uint32_t)kvl(tok, ntok, "stream", 7),
             corr = (uint32_t)kvl(tok, ntok, "corr", 0) + corr_off;
    const char *name = kv(tok, ntok, "name");
    rec *r;
    if (!strcmp(k, "kernel")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, sizeof(CUpti_ActivityKernel10))))
            return;
        CUpti_ActivityKernel10 *x = &r->u.k;
        x->start = st, x->end = en, x->deviceId = dev, x->contextId = ctx, x->streamId = stream;
        if (kvl(tok, ntok, "untimed", 0)) /* CUPTI had no device memory to time it: both 0 */
            x->start = x->end = 0;
        x->correlationId = corr;
        kv3(tok, ntok, "grid", &x->gridX, &x->gridY, &x->gridZ);
        kv3(tok, ntok, "block", &x->blockX, &x->blockY, &x->blockZ);
        x->registersPerThread = (uint16_t)kvl(tok, ntok, "regs", 0);
        x->staticSharedMemory = (int32_t)kvl(tok, ntok, "ssmem", 0);
        x->dynamicSharedMemory = (int32_t)kvl(tok, ntok, "dsmem", 0);
        x->graphId = (uint32_t)kvl(tok, ntok, "graph", 0);
        x->name = keep(name ? name : "kernel");
    } else if (!strcmp(k, "memcpy")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_MEMCPY, sizeof(CUpti_ActivityMemcpy6))))
            return;
        CUpti_ActivityMemcpy6 *x = &r->u.m;
        const char *ck = kv(tok, ntok, "kind");
        x->copyKind = !ck || !strcmp(ck, "htod") ? CUPTI_ACTIVITY_MEMCPY_KIND_HTOD
                      : !strcmp(ck, "dtoh") ? CUPTI_ACTIVITY_MEMCPY_KIND_DTOH
                      : !strcmp(ck, "dtod") ? CUPTI_ACTIVITY_MEMCPY_KIND_DTOD
                      : !strcmp(ck, "ptop") ? CUPTI_ACTIVITY_MEMCPY_KIND_PTOP
                                            : CUPTI_ACTIVITY_MEMCPY_KIND_HTOH;
        x->srcKind = (uint8_t)memkind(kv(tok, ntok, "src"));
        x->dstKind = (uint8_t)memkind(kv(tok, ntok, "dst"));
        x->flags = kvl(tok, ntok, "async", 0) ? CUPTI_ACTIVITY_FLAG_MEMCPY_ASYNC : 0;
        x->bytes = (uint64_t)kvl(tok, ntok, "bytes", 0);
        x->start = st, x->end = en, x->deviceId = dev, x->contextId = ctx, x->streamId = stream;
        x->correlationId = corr;
        x->graphId = (uint32_t)kvl(tok, ntok, "graph", 0);
    } else if (!strcmp(k, "p2p")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_MEMCPY2, sizeof(CUpti_ActivityMemcpyPtoP4))))
            return;
        CUpti_ActivityMemcpyPtoP4 *x = &r->u.p;
        x->copyKind = CUPTI_ACTIVITY_MEMCPY_KIND_PTOP;
        x->srcKind = (uint8_t)memkind(kv(tok, ntok, "src"));
        x->dstKind = (uint8_t)memkind(kv(tok, ntok, "dst"));
        x->flags = kvl(tok, ntok, "async", 0) ? CUPTI_ACTIVITY_FLAG_MEMCPY_ASYNC : 0;
        x->bytes = (uint64_t)kvl(tok, ntok, "bytes", 0);
        x->start = st, x->end = en, x->contextId = ctx, x->streamId = stream, x->correlationId = corr;
        x->srcDeviceId = (uint32_t)kvl(tok, ntok, "srcdev", 0);
        x->dstDeviceId = (uint32_t)kvl(tok, ntok, "dstdev", 1);
        x->deviceId = (uint32_t)kvl(tok, ntok, "dev", x->srcDeviceId); /* where it runs */
        x->srcContextId = (uint32_t)kvl(tok, ntok, "srcctx", 0);
        x->dstContextId = (uint32_t)kvl(tok, ntok, "dstctx", 0);
    } else if (!strcmp(k, "memset")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_MEMSET, sizeof(CUpti_ActivityMemset4))))
            return;
        CUpti_ActivityMemset4 *x = &r->u.ms;
        x->value = (uint32_t)kvl(tok, ntok, "value", 0);
        x->bytes = (uint64_t)kvl(tok, ntok, "bytes", 0);
        x->memoryKind = (uint16_t)memkind(kv(tok, ntok, "mem"));
        x->flags = kvl(tok, ntok, "async", 0) ? CUPTI_ACTIVITY_FLAG_MEMSET_ASYNC : 0;
        x->start = st, x->end = en, x->deviceId = dev, x->contextId = ctx, x->streamId = stream;
        x->correlationId = corr;
    } else if (!strcmp(k, "runtime") || !strcmp(k, "driver")) {
        int drv = !strcmp(k, "driver");
        if (!(r = push(drv ? CUPTI_ACTIVITY_KIND_DRIVER : CUPTI_ACTIVITY_KIND_RUNTIME, sizeof(CUpti_ActivityAPI))))
            return;
        CUpti_ActivityAPI *x = &r->u.api;
        x->cbid = (CUpti_CallbackId)kvl(tok, ntok, "cbid", 0);
        x->start = st, x->end = en, x->correlationId = corr;
        x->processId = (uint32_t)getpid();
        x->threadId = (uint32_t)kvl(tok, ntok, "tid", getpid());
        if (name && ncbnames < 256) {
            cbnames[ncbnames].dom = drv ? CUPTI_CB_DOMAIN_DRIVER_API : CUPTI_CB_DOMAIN_RUNTIME_API;
            cbnames[ncbnames].cbid = x->cbid;
            cbnames[ncbnames++].name = keep(name);
        }
    } else if (!strcmp(k, "sync")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_SYNCHRONIZATION, sizeof(CUpti_ActivitySynchronization2))))
            return;
        CUpti_ActivitySynchronization2 *x = &r->u.sy;
        const char *ty = kv(tok, ntok, "type");
        x->type = !ty || !strcmp(ty, "stream") ? CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_SYNCHRONIZE
                  : !strcmp(ty, "event")       ? CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_EVENT_SYNCHRONIZE
                  : !strcmp(ty, "wait")        ? CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_WAIT_EVENT
                                               : CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_CONTEXT_SYNCHRONIZE;
        x->start = st, x->end = en, x->contextId = ctx, x->streamId = stream, x->correlationId = corr;
    } else if (!strcmp(k, "marker")) {
        uint32_t tid = (uint32_t)kvl(tok, ntok, "tid", getpid()), id = (uint32_t)kvl(tok, ntok, "id", 1) + corr_off;
        for (int e = 0; e < 2; e++) {
            if (!(r = push(CUPTI_ACTIVITY_KIND_MARKER, sizeof(CUpti_ActivityMarker2))))
                return;
            CUpti_ActivityMarker2 *x = &r->u.mk;
            x->flags = e ? CUPTI_ACTIVITY_FLAG_MARKER_END : CUPTI_ACTIVITY_FLAG_MARKER_START;
            x->timestamp = e ? en : st;
            x->id = id;
            x->objectKind = CUPTI_ACTIVITY_OBJECT_THREAD;
            x->objectId.pt.processId = (uint32_t)getpid();
            x->objectId.pt.threadId = tid;
            x->name = e ? NULL : keep(name ? unescape(name) : "range");
            const char *dom = kv(tok, ntok, "domain");
            x->domain = e || !dom ? NULL : keep(dom);
        }
    } else if (!strcmp(k, "overhead")) {
        /* the record the reported version writes: Overhead3 (with
         * overheadData) from CUDA 12.4, Overhead2 in 12.2-12.3, Overhead before */
        long v = api_version();
        size_t sz = v >= FAKE_API_OVERHEAD3 ? sizeof(CUpti_ActivityOverhead3)
                    : v >= 20               ? sizeof(CUpti_ActivityOverhead2)
                                            : sizeof(CUpti_ActivityOverhead);
        if (!(r = push(CUPTI_ACTIVITY_KIND_OVERHEAD, sz)))
            return;
        CUpti_ActivityOverhead3 *x = &r->u.ov;
        const char *ok = kv(tok, ntok, "ovkind");
        x->overheadKind = !ok || !strcmp(ok, "flush") ? CUPTI_ACTIVITY_OVERHEAD_CUPTI_BUFFER_FLUSH
                          : !strcmp(ok, "compiler")    ? CUPTI_ACTIVITY_OVERHEAD_DRIVER_COMPILER
                          : !strcmp(ok, "instr")       ? CUPTI_ACTIVITY_OVERHEAD_CUPTI_INSTRUMENTATION
                          : !strcmp(ok, "lazy")        ? CUPTI_ACTIVITY_OVERHEAD_LAZY_FUNCTION_LOADING
                                                       : CUPTI_ACTIVITY_OVERHEAD_CUPTI_RESOURCE;
        const char *ob = kv(tok, ntok, "obj");
        if (ob && !strcmp(ob, "device")) {
            x->objectKind = CUPTI_ACTIVITY_OBJECT_DEVICE;
            x->objectId.dcs.deviceId = dev;
        } else if (ob && !strcmp(ob, "process")) {
            x->objectKind = CUPTI_ACTIVITY_OBJECT_PROCESS;
            x->objectId.pt.processId = (uint32_t)getpid();
        } else {
            x->objectKind = CUPTI_ACTIVITY_OBJECT_THREAD;
            x->objectId.pt.threadId = (uint32_t)kvl(tok, ntok, "tid", getpid());
        }
        x->start = st, x->end = en;
    } else if (!strcmp(k, "malloc") || !strcmp(k, "free")) {
        if (!(r = push(CUPTI_ACTIVITY_KIND_MEMORY2, sizeof(CUpti_ActivityMemory4))))
            return;
        CUpti_ActivityMemory4 *x = &r->u.mem;
        x->memoryOperationType = !strcmp(k, "malloc") ? CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_ALLOCATION
                                                      : CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_RELEASE;
        x->memoryKind = (CUpti_ActivityMemoryKind)memkind(kv(tok, ntok, "mem"));
        x->address = (uint64_t)kvl(tok, ntok, "addr", 0);
        x->bytes = (uint64_t)kvl(tok, ntok, "bytes", 0);
        x->timestamp = st, x->deviceId = dev, x->contextId = ctx, x->streamId = stream, x->correlationId = corr;
    } else if (!strcmp(k, "device")) {
        if (corr_off) /* once per replay set */
            return;
        if (!(r = push(CUPTI_ACTIVITY_KIND_DEVICE, sizeof(CUpti_ActivityDevice5))))
            return;
        CUpti_ActivityDevice5 *x = &r->u.dev;
        x->id = (uint32_t)kvl(tok, ntok, "id", 0);
        x->name = keep(name ? name : "Fake GPU");
        x->numMultiprocessors = (uint32_t)kvl(tok, ntok, "sms", 0);
        const char *cc = kv(tok, ntok, "cc");
        if (cc)
            sscanf(cc, "%u.%u", &x->computeCapabilityMajor, &x->computeCapabilityMinor);
        x->coreClockRate = (uint32_t)kvl(tok, ntok, "clock", 0);
        x->globalMemoryBandwidth = (uint64_t)kvl(tok, ntok, "membw", 0);
        x->globalMemorySize = (uint64_t)kvl(tok, ntok, "memsize", 0);
        x->numThreadsPerWarp = (uint32_t)kvl(tok, ntok, "warp", 32);
        x->maxWarpsPerMultiprocessor = (uint32_t)kvl(tok, ntok, "maxwarps", 64);
        x->maxBlocksPerMultiprocessor = (uint32_t)kvl(tok, ntok, "maxblocks", 32);
        x->maxRegistersPerMultiprocessor = (uint32_t)kvl(tok, ntok, "regs", 65536);
        x->maxSharedMemoryPerMultiprocessor = (uint32_t)kvl(tok, ntok, "smem", 233472);
    } else if (!strcmp(k, "context")) {
        if (corr_off)
            return;
        if (!(r = push(CUPTI_ACTIVITY_KIND_CONTEXT, sizeof(CUpti_ActivityContext3))))
            return;
        r->u.ctx.contextId = ctx;
        r->u.ctx.deviceId = dev;
    }
}

/* Move one record: add dt to its times and dcorr to its correlation (or
 * marker) id. */
static void shift_rec(rec *r, uint64_t dt, uint32_t dcorr)
{
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        if (r->u.k.start) /* (0: untimed=1, as CUPTI writes it) */
            r->u.k.start += dt, r->u.k.end += dt;
        r->u.k.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_MEMCPY:
        r->u.m.start += dt, r->u.m.end += dt, r->u.m.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_MEMCPY2:
        r->u.p.start += dt, r->u.p.end += dt, r->u.p.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_MEMSET:
        r->u.ms.start += dt, r->u.ms.end += dt, r->u.ms.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_RUNTIME:
    case CUPTI_ACTIVITY_KIND_DRIVER:
        r->u.api.start += dt, r->u.api.end += dt, r->u.api.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION:
        r->u.sy.start += dt, r->u.sy.end += dt, r->u.sy.correlationId += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_MARKER:
        r->u.mk.timestamp += dt, r->u.mk.id += dcorr;
        break;
    case CUPTI_ACTIVITY_KIND_OVERHEAD:
        r->u.ov.start += dt, r->u.ov.end += dt;
        break;
    case CUPTI_ACTIVITY_KIND_MEMORY2:
        r->u.mem.timestamp += dt, r->u.mem.correlationId += dcorr;
        break;
    default:
        break;
    }
}

static uint64_t rec_end(const rec *r)
{
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        return r->u.k.end;
    case CUPTI_ACTIVITY_KIND_MEMCPY:
        return r->u.m.end;
    case CUPTI_ACTIVITY_KIND_MEMCPY2:
        return r->u.p.end;
    case CUPTI_ACTIVITY_KIND_MEMSET:
        return r->u.ms.end;
    case CUPTI_ACTIVITY_KIND_RUNTIME:
    case CUPTI_ACTIVITY_KIND_DRIVER:
        return r->u.api.end;
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION:
        return r->u.sy.end;
    case CUPTI_ACTIVITY_KIND_MARKER:
        return r->u.mk.timestamp;
    case CUPTI_ACTIVITY_KIND_OVERHEAD:
        return r->u.ov.end;
    case CUPTI_ACTIVITY_KIND_MEMORY2:
        return r->u.mem.timestamp;
    default:
        return 0;
    }
}

/* Stamped: the records' times are absolute (not offsets any more). */
static int stamped;

/* Give the armed records absolute times: offsets from `now` (plus the shift knob). */
static void stamp(uint64_t now)
{
    uint64_t base = now + (uint64_t)envl("TBFAKE_CUPTI_SHIFT_US", 0) * 1000u;
    for (size_t i = 0; i < nrecs; i++)
        shift_rec(&recs[i], base, 0);
    stamped = 1;
}

/* Parse the script once (times as offsets), then append REPEAT-1 copies,
 * each after the previous one ends, correlation ids offset by 100000. */
static void arm_script(void)
{
    nrecs = 0;
    stamped = 0;
    memset(seen, 0, sizeof(seen));
    const char *path = getenv("TBFAKE_CUPTI_SCRIPT");
    if (!path || !*path)
        return;
    long repeat = envl("TBFAKE_CUPTI_REPEAT", 1);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof(line), f))
        parse_line(line, 0, 0);
    fclose(f);
    size_t n0 = nrecs;
    uint64_t span = 0;
    for (size_t i = 0; i < n0; i++)
        if (recs[i].kind != CUPTI_ACTIVITY_KIND_DEVICE && recs[i].kind != CUPTI_ACTIVITY_KIND_CONTEXT &&
            rec_end(&recs[i]) > span)
            span = rec_end(&recs[i]);
    span += 1000;
    for (long rep = 1; rep < repeat; rep++)
        for (size_t i = 0; i < n0; i++) {
            if (recs[i].kind == CUPTI_ACTIVITY_KIND_DEVICE || recs[i].kind == CUPTI_ACTIVITY_KIND_CONTEXT)
                continue; /* once per replay set */
            rec *r = push((CUpti_ActivityKind)recs[i].kind, 0);
            if (!r)
                return;
            *r = recs[i]; /* recs may have moved: push returned into the new array */
            shift_rec(r, (uint64_t)rep * span, (uint32_t)(rep * 100000));
        }
    if (!envl("TBFAKE_CUPTI_AT_LAUNCH", 0))
        stamp(fake_clock());
}

/* ---- the CUPTI API --------------------------------------------------------- */

/* Another subscriber's name (TBFAKE_CUPTI_SUBSCRIBER), "" when unnamed,
 * NULL when there is none. */
static const char *other_subscriber(void)
{
    const char *v = getenv("TBFAKE_CUPTI_SUBSCRIBER");
    if (!v || !*v || !strcmp(v, "0"))
        return NULL;
    char *end;
    strtol(v, &end, 0);
    return *end ? v : "";
}

static CUptiResult do_subscribe(CUpti_SubscriberHandle *s, CUpti_CallbackFunc cb, void *ud, const char **holder)
{
    long fail = envl("TBFAKE_CUPTI_FAIL_SUBSCRIBE", 0), slow = envl("TBFAKE_CUPTI_SUBSCRIBE_MS", 0);
    if (slow > 0)
        usleep((useconds_t)slow * 1000);
    pthread_mutex_lock(&mu);
    CUptiResult r = CUPTI_SUCCESS;
    *holder = subscribed ? "a second tbprof" : other_subscriber();
    if (*holder)
        r = CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
    else if (fail)
        r = (CUptiResult)fail;
    else {
        subscribed = 1;
        n_subscribe++;
        sub_cb = cb;
        sub_ud = ud;
        memset(domains, 0, sizeof(domains));
        *s = (CUpti_SubscriberHandle)(uintptr_t)0x5u;
    }
    pthread_mutex_unlock(&mu);
    return r;
}

API CUptiResult cuptiSubscribe(CUpti_SubscriberHandle *s, CUpti_CallbackFunc cb, void *ud)
{
    const char *holder;
    CUptiResult r = do_subscribe(s, cb, ud, &holder);
    report("subscribe %d", (int)r);
    return r;
}

#ifndef FAKE_OLD
/* CUpti_SubscriberParams as CUPTI 13.2 reads it (allowMultipleSubscribers
 * past 13.0's fields; structSize tells which are there) */
typedef struct {
    size_t structSize;
    const char *subscriberName;
    char *oldSubscriberName;
    size_t oldSubscriberSize;
    uint8_t allowMultipleSubscribers;
} fake_sub_params;

API CUptiResult cuptiSubscribe_v2(CUpti_SubscriberHandle *s, CUpti_CallbackFunc cb, void *ud,
                                  CUpti_SubscriberParams *params)
{
    fake_sub_params *p = (fake_sub_params *)(void *)params;
    long want = envl("TBFAKE_CUPTI_V2_SIZE", 0), fail = envl("TBFAKE_CUPTI_V2_FAIL", 0);
    size_t size = p ? p->structSize : 0;
    int multi = p && size > offsetof(fake_sub_params, allowMultipleSubscribers) ? p->allowMultipleSubscribers : -1;
    const char *name = p && size >= offsetof(fake_sub_params, oldSubscriberName) && p->subscriberName
                           ? p->subscriberName : "-";
    CUptiResult r;
    const char *holder = NULL;
    if (fail)
        r = (CUptiResult)fail;
    else if (p && (size < sizeof(size_t) || (want && size != (size_t)want)))
        r = CUPTI_ERROR_INVALID_PARAMETER;
    else
        r = do_subscribe(s, cb, ud, &holder);
    if (r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED && p && size >= offsetof(fake_sub_params, allowMultipleSubscribers) &&
        p->oldSubscriberName && p->oldSubscriberSize)
        snprintf(p->oldSubscriberName, p->oldSubscriberSize, "%s", holder ? holder : "");
    report("subscribe %d v2 name=%s size=%zu multi=%d", (int)r, name, size, multi);
    return r;
}
#endif

API CUptiResult cuptiUnsubscribe(CUpti_SubscriberHandle s)
{
    (void)s;
    pthread_mutex_lock(&mu);
    int was = subscribed;
    subscribed = 0;
    sub_cb = NULL;
    memset(domains, 0, sizeof(domains));
    pthread_mutex_unlock(&mu);
    report("unsubscribe %d", was);
    return was ? CUPTI_SUCCESS : CUPTI_ERROR_INVALID_PARAMETER;
}

API CUptiResult cuptiActivityEnable(CUpti_ActivityKind k)
{
    if ((unsigned)k >= MAXKINDS)
        return CUPTI_ERROR_INVALID_KIND;
    long fail = envl("TBFAKE_CUPTI_FAIL_ENABLE", 0);
    if (k == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && fail) {
        report("enable %d %ld", (int)k, fail);
        return (CUptiResult)fail;
    }
    pthread_mutex_lock(&mu);
    if (k == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)
        arm_script();
    if (k == CUPTI_ACTIVITY_KIND_RUNTIME || k == CUPTI_ACTIVITY_KIND_DRIVER)
        memset(api_off[k == CUPTI_ACTIVITY_KIND_DRIVER], 0, sizeof(api_off[0]));
    enabled[k] = 1;
    seen[k] = 1;
    pthread_mutex_unlock(&mu);
    report("enable %d 0", (int)k);
    return CUPTI_SUCCESS;
}

#ifndef FAKE_OLD
/* (an older CUPTI, FAKE_OLD, lacks it: tbprof falls back to the plain enable) */
API CUptiResult cuptiActivityEnableAndDump(CUpti_ActivityKind k)
{
    if (envl("TBFAKE_CUPTI_FAIL_DUMP", 0)) { /* (a CUPTI that refuses it: tbprof enables plainly) */
        report("enable_dump %d refused", (int)k);
        return CUPTI_ERROR_NOT_COMPATIBLE;
    }
    report("enable_dump %d", (int)k);
    return cuptiActivityEnable(k);
}
#endif

API CUptiResult cuptiActivityDisable(CUpti_ActivityKind k)
{
    if ((unsigned)k >= MAXKINDS)
        return CUPTI_ERROR_INVALID_KIND;
    long slow = k == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ? envl("TBFAKE_CUPTI_DISABLE_MS", 0) : 0;
    if (slow > 0)
        usleep((useconds_t)slow * 1000);
    pthread_mutex_lock(&mu);
    enabled[k] = 0;
    pthread_mutex_unlock(&mu);
    report("disable %d", (int)k);
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc rq,
                                               CUpti_BuffersCallbackCompleteFunc dn)
{
    if (!rq || !dn)
        return CUPTI_ERROR_INVALID_PARAMETER;
    pthread_mutex_lock(&mu);
    req_cb = rq;
    done_cb = dn;
    pthread_mutex_unlock(&mu);
    report("callbacks");
    return CUPTI_SUCCESS;
}

#ifndef FAKE_BROKEN
/* 1 when every page of buf[0..size) is in memory (mincore): the client
 * faulted it in before handing it over, so filling it takes no page fault. */
static int all_resident(const uint8_t *buf, size_t size)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)buf & ~(uintptr_t)(pg - 1);
    size_t len = (uintptr_t)buf + size - a, np = (len + pg - 1) / pg;
    unsigned char *vec = malloc(np);
    int all = vec && mincore((void *)a, len, vec) == 0;
    for (size_t i = 0; all && i < np; i++)
        all = vec[i] & 1;
    free(vec);
    return all;
}

/* The client said its buffers come zeroed
 * (CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER): CUPTI then does not
 * clear them; the fake checks they are and logs any that is not. */
static int zeroed_attr;

static int all_zero(const uint8_t *buf, size_t size)
{
    for (size_t i = 0; i < size; i++)
        if (buf[i])
            return 0;
    return 1;
}

API CUptiResult cuptiActivitySetAttribute(CUpti_ActivityAttribute attr, size_t *size, void *value)
{
    if (!size || !value)
        return CUPTI_ERROR_INVALID_PARAMETER;
    if (attr != CUPTI_ACTIVITY_ATTR_ZEROED_OUT_ACTIVITY_BUFFER)
        return CUPTI_SUCCESS; /* others: accepted, not modelled */
    if (*size < 1)
        return CUPTI_ERROR_PARAMETER_SIZE_NOT_SUFFICIENT;
    pthread_mutex_lock(&mu);
    zeroed_attr = *(uint8_t *)value != 0;
    pthread_mutex_unlock(&mu);
    report("attr zeroed %u", (unsigned)*(uint8_t *)value);
    return CUPTI_SUCCESS;
}

/* One "thread"'s buffer while flushing (TBFAKE_CUPTI_THREADS). */
typedef struct fbuf {
    uint8_t *buf;
    size_t size, used, n;
} fbuf;

/* TBFAKE_CUPTI_INFLIGHT: the buffer CUPTI keeps back for work still running. */
static uint8_t *held_buf;
static size_t held_size;

/* TBFAKE_CUPTI_LATE: the filled buffer a forced flush did not hand back yet. */
static fbuf late_buf;

/* Hand back the late buffer, if any, when TBFAKE_CUPTI_LATE is `when`. */
static void late_return(const char *when)
{
    const char *v = getenv("TBFAKE_CUPTI_LATE");
    if (!v || strcmp(v, when))
        return;
    pthread_mutex_lock(&mu);
    fbuf b = late_buf;
    late_buf = (fbuf){0};
    CUpti_BuffersCallbackCompleteFunc cb = done_cb;
    pthread_mutex_unlock(&mu);
    if (b.buf && cb) {
        report("late %s %zu", when, b.n);
        cb(NULL, 0, b.buf, b.size, b.used);
    }
}

/* GPU work whose end the clock has not reached yet (TBFAKE_CUPTI_INFLIGHT). */
static int running(const rec *r, uint64_t now)
{
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_MEMCPY:
    case CUPTI_ACTIVITY_KIND_MEMCPY2:
    case CUPTI_ACTIVITY_KIND_MEMSET:
        return rec_end(r) > now;
    default:
        return 0;
    }
}

/* What CUPTI allocates for the client to free() (the header says so): a
 * device record's name, an overhead record's data (the fake gives every
 * overhead record some). A client that does not free them leaks under LSan.
 * Older CUPTIs (by TBFAKE_CUPTI_VERSION) own the device name ("shared across
 * all activity records": freeing it breaks CUPTI) and write overhead records
 * without the data field (freeing what sits there crashes). */
static void give_to_client(uint32_t kind, uint8_t *rec)
{
    long v = api_version();
    if (kind == CUPTI_ACTIVITY_KIND_DEVICE && v >= FAKE_API_DEVICE_NAME_OWNED) {
        CUpti_ActivityDevice5 *d = (CUpti_ActivityDevice5 *)rec;
        d->name = d->name ? strdup(d->name) : NULL;
    } else if (kind == CUPTI_ACTIVITY_KIND_OVERHEAD && v >= FAKE_API_OVERHEAD3) {
        ((CUpti_ActivityOverhead3 *)rec)->overheadData = calloc(1, 16);
    }
}

/* Hand a filled buffer back (after TBFAKE_CUPTI_SLOW_MS), unless `lose`
 * (TBFAKE_CUPTI_LOSE_BUFFERS: another client's callback got it). */
static void complete(fbuf *b, long slow, int lose)
{
    if (!b->buf)
        return;
    if (lose) {
        *b = (fbuf){0};
        return;
    }
    if (slow)
        usleep((useconds_t)slow * 1000);
    done_cb(NULL, 0, b->buf, b->size, b->used);
    *b = (fbuf){0};
}

/* A call of a runtime or driver API the client asked not to record. */
static int not_recorded(const rec *r)
{
    int drv = r->kind == CUPTI_ACTIVITY_KIND_DRIVER;
    if ((r->kind != CUPTI_ACTIVITY_KIND_RUNTIME && !drv) || r->u.api.cbid >= 4096)
        return 0;
    return api_off[drv][r->u.api.cbid];
}

API CUptiResult cuptiActivityFlushAll(uint32_t flag)
{
    pthread_mutex_lock(&mu);
    long per = envl("TBFAKE_CUPTI_PER_BUFFER", 0), slow = envl("TBFAKE_CUPTI_SLOW_MS", 0);
    long nthr = envl("TBFAKE_CUPTI_THREADS", 1);
    int lose = envl("TBFAKE_CUPTI_LOSE_BUFFERS", 0) != 0;
    if (nthr < 1 || nthr > 256)
        nthr = 1;
    fbuf cur[256] = {{0}};
    size_t i = 0, delivered = 0, dropped = 0, unlaunched = 0, nonzero = 0;
    if (!stamped) { /* TBFAKE_CUPTI_AT_LAUNCH: no records for work not launched yet (kept for the launch) */
        unlaunched = nrecs;
        i = nrecs;
    }
    int inflight = stamped && envl("TBFAKE_CUPTI_INFLIGHT", 0) != 0;
    uint64_t now = inflight ? fake_clock() : 0;
    if (inflight && !(flag & CUPTI_ACTIVITY_FLAG_FLUSH_FORCED) && req_cb && done_cb) {
        size_t busy = 0;
        for (size_t k = 0; k < nrecs; k++)
            busy += seen[recs[k].kind] && running(&recs[k], now);
        if (busy) { /* the buffer holding them stays with CUPTI */
            if (!held_buf) {
                size_t maxr = 0;
                req_cb(&held_buf, &held_size, &maxr);
                n_handed += held_buf != NULL;
            }
            n_flush++;
            pthread_mutex_unlock(&mu);
            report("flush %u held running=%zu", flag, busy);
            return CUPTI_SUCCESS;
        }
    }
    if (held_buf) { /* what it held goes out with the rest below */
        done_cb(NULL, 0, held_buf, held_size, 0);
        held_buf = NULL;
    }
    /* records go to "thread" k % nthr, each filling its own buffers, as
     * CUPTI's per-thread activity buffers (its default since CUDA 13) do */
    for (size_t k = 0; i < nrecs && req_cb && done_cb; i++) {
        if (!seen[recs[i].kind] || not_recorded(&recs[i]))
            continue;
        fbuf *b = &cur[k++ % (size_t)nthr];
        if (b->buf && (b->used + 8 + recs[i].size > b->size || (per && (long)b->n >= per)))
            complete(b, slow, lose);
        if (!b->buf) {
            size_t maxr = 0;
            req_cb(&b->buf, &b->size, &maxr);
            if (b->buf) {
                n_handed++;
                n_resident += all_resident(b->buf, b->size);
                nonzero += zeroed_attr && !all_zero(b->buf, b->size);
            }
            if (!b->buf || b->size < 8 + recs[i].size) { /* no buffer: CUPTI drops what it cannot store */
                b->buf = NULL;
                for (; i < nrecs; i++)
                    dropped += seen[recs[i].kind] != 0;
                break;
            }
        }
        memcpy(b->buf + b->used, &recs[i].size, 4);
        uint32_t kind = inflight && running(&recs[i], now) ? (uint32_t)CUPTI_ACTIVITY_KIND_INVALID : recs[i].kind;
        memcpy(b->buf + b->used + 4, &kind, 4);
        memcpy(b->buf + b->used + 8, &recs[i].u, recs[i].size);
        if (!lose) /* else the other client owns what comes with the buffer */
            give_to_client(kind, b->buf + b->used + 8);
        b->used += 8 + recs[i].size;
        b->n++;
        delivered++;
    }
    const char *late = getenv("TBFAKE_CUPTI_LATE");
    for (long t = nthr; t-- > 0;) {
        if (late && *late && (flag & CUPTI_ACTIVITY_FLAG_FLUSH_FORCED) && cur[t].buf && !late_buf.buf) {
            late_buf = cur[t]; /* the last one filled: comes back later (late_return) */
            continue;
        }
        complete(&cur[t], slow, lose);
    }
    if (stamped)
        nrecs = 0;
    dropped_pending += dropped;
    n_flush++;
    n_delivered += delivered;
    n_dropped_total += dropped;
    pthread_mutex_unlock(&mu);
    if (unlaunched)
        report("flush %u delivered=%zu dropped=%zu unlaunched=%zu", flag, delivered, dropped, unlaunched);
    else
        report("flush %u delivered=%zu dropped=%zu%s", flag, delivered, dropped,
               nonzero ? " nonzero_buffer_promised_zeroed" : "");
    return CUPTI_SUCCESS;
}
#else
static void late_return(const char *when) { (void)when; }
#endif

API CUptiResult cuptiActivityGetNextRecord(uint8_t *buffer, size_t valid, CUpti_Activity **record)
{
    late_return("read");
    uint8_t *pos;
    if (!*record) {
        pos = buffer;
    } else {
        uint32_t sz;
        memcpy(&sz, (uint8_t *)*record - 8, 4);
        pos = (uint8_t *)*record + sz;
    }
    if (pos + 8 > buffer + valid) {
        *record = NULL;
        return CUPTI_ERROR_MAX_LIMIT_REACHED;
    }
    uint32_t kind;
    memcpy(&kind, pos + 4, 4);
    *record = (CUpti_Activity *)(pos + 8);
    if (kind == CUPTI_ACTIVITY_KIND_INVALID) /* incomplete (TBFAKE_CUPTI_INFLIGHT) */
        return CUPTI_ERROR_INVALID_KIND;
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiActivityGetNumDroppedRecords(CUcontext ctx, uint32_t stream, size_t *dropped)
{
    (void)ctx;
    (void)stream;
    if (!dropped)
        return CUPTI_ERROR_INVALID_PARAMETER;
    late_return("dropped");
    pthread_mutex_lock(&mu);
    *dropped = dropped_pending + (size_t)envl("TBFAKE_CUPTI_DROPPED", 0);
    dropped_pending = 0;
    pthread_mutex_unlock(&mu);
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiGetTimestamp(uint64_t *ts)
{
    *ts = fake_clock();
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiGetResultString(CUptiResult r, const char **s)
{
    switch (r) {
    case CUPTI_SUCCESS:
        *s = "CUPTI_SUCCESS";
        break;
    case CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED:
        *s = "CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED";
        break;
    case CUPTI_ERROR_NOT_COMPATIBLE:
        *s = "CUPTI_ERROR_NOT_COMPATIBLE";
        break;
    case CUPTI_ERROR_CUDA_COMPILER_NOT_COMPATIBLE:
        *s = "CUPTI_ERROR_CUDA_COMPILER_NOT_COMPATIBLE";
        break;
    case CUPTI_ERROR_INSUFFICIENT_PRIVILEGES:
        *s = "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES";
        break;
    default:
        *s = "CUPTI_ERROR_UNKNOWN";
        break;
    }
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiGetVersion(uint32_t *v)
{
    *v = (uint32_t)api_version();
    return CUPTI_SUCCESS;
}

/* Mark (on = 1) or unmark this thread as inside an API exit callback. */
static void api_exit_mark(int on)
{
    long me = syscall(SYS_gettid);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < 64; i++)
        if (in_exit_tids[i] == (on ? 0 : me)) {
            in_exit_tids[i] = on ? me : 0;
            break;
        }
    pthread_mutex_unlock(&mu);
}

#ifndef FAKE_OLD
static const char *which_thread(void) { return syscall(SYS_gettid) == getpid() ? "main" : "other"; }

/* Whether this thread is inside an API exit callback (mu held). */
static int in_api_exit(void)
{
    long me = syscall(SYS_gettid);
    for (int i = 0; i < 64; i++)
        if (in_exit_tids[i] == me)
            return 1;
    return 0;
}

API CUptiResult cuptiEnableDomain(uint32_t on, CUpti_SubscriberHandle s, CUpti_CallbackDomain d)
{
    (void)s;
    if ((unsigned)d >= CUPTI_CB_DOMAIN_SIZE)
        return CUPTI_ERROR_INVALID_PARAMETER;
    pthread_mutex_lock(&mu);
    int ok = subscribed;
    if (ok)
        domains[d] = on != 0;
    pthread_mutex_unlock(&mu);
    report("domain %d %u", (int)d, on);
    return ok ? CUPTI_SUCCESS : CUPTI_ERROR_INVALID_PARAMETER;
}

/* A line in the call log from the fake libcuda (its driver calls). */
API void tbfake_report(const char *line)
{
    report("%s", line);
}

API CUptiResult cuptiActivityEnableAllSyncRecords(uint8_t enable)
{
    report("allsync %u", (unsigned)enable);
    return CUPTI_SUCCESS;
}

#ifndef FAKE_OLD
static CUptiResult api_record(int drv, CUpti_CallbackId cbid, uint8_t enable)
{
    long fail = envl("TBFAKE_CUPTI_API_OFF_FAIL", 0);
    report("api_record %s %u %u %ld", drv ? "driver" : "runtime", (unsigned)cbid, (unsigned)enable, fail);
    if (fail)
        return (CUptiResult)fail;
    if (cbid >= 4096)
        return CUPTI_ERROR_INVALID_PARAMETER;
    pthread_mutex_lock(&mu);
    api_off[drv][cbid] = !enable;
    pthread_mutex_unlock(&mu);
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiActivityEnableRuntimeApi(CUpti_CallbackId cbid, uint8_t enable)
{
    return api_record(0, cbid, enable);
}

API CUptiResult cuptiActivityEnableDriverApi(CUpti_CallbackId cbid, uint8_t enable)
{
    return api_record(1, cbid, enable);
}
#endif

/* CUPTI detached: every subscription, enabled kind, callback and setting gone */
API CUptiResult cuptiFinalize(void)
{
    long fail = envl("TBFAKE_CUPTI_FAIL_FINALIZE", 0);
    pthread_mutex_lock(&mu);
    int n = 0;
    for (int i = 0; i < MAXKINDS; i++)
        n += enabled[i];
    if (!fail) {
        n_finalize++;
        subscribed = 0;
        sub_cb = NULL;
        memset(domains, 0, sizeof(domains));
        memset(enabled, 0, sizeof(enabled));
        memset(api_off, 0, sizeof(api_off));
        req_cb = NULL;
        done_cb = NULL;
        ts_cb = NULL;
        tid_type = CUPTI_ACTIVITY_THREAD_ID_TYPE_DEFAULT;
    }
    int in_exit = in_api_exit();
    pthread_mutex_unlock(&mu);
    report("finalize %ld in_exit_callback=%d thread=%s enabled=%d", fail, in_exit, which_thread(), n);
    return (CUptiResult)fail;
}
#endif

#ifndef FAKE_OLD
API CUptiResult cuptiActivityRegisterTimestampCallback(CUpti_TimestampCallbackFunc f)
{
    if (!f)
        return CUPTI_ERROR_INVALID_PARAMETER;
    ts_cb = f;
    report("tscallback");
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiSetThreadIdType(CUpti_ActivityThreadIdType t)
{
    tid_type = t;
    report("tidtype %d", (int)t);
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiGetThreadIdType(CUpti_ActivityThreadIdType *t)
{
    *t = tid_type;
    return CUPTI_SUCCESS;
}

API CUptiResult cuptiGetCallbackName(CUpti_CallbackDomain dom, uint32_t cbid, const char **name)
{
    for (int i = 0; i < ncbnames; i++)
        if (cbnames[i].dom == (int)dom && cbnames[i].cbid == cbid) {
            *name = cbnames[i].name;
            return CUPTI_SUCCESS;
        }
    return CUPTI_ERROR_INVALID_PARAMETER;
}
#endif

/* ---- test hooks ------------------------------------------------------------------- */

/* State as a test checks it: subscribed, number of kinds enabled now,
 * flushes, records delivered and dropped over the library's life. */
/* Buffers the client handed over so far, and how many of them were wholly
 * resident when it did. */
API void tbfake_cupti_buffers(unsigned long long *handed, unsigned long long *resident)
{
    pthread_mutex_lock(&mu);
    *handed = n_handed;
    *resident = n_resident;
    pthread_mutex_unlock(&mu);
}

API void tbfake_cupti_state(int *is_subscribed, int *nenabled, unsigned long long *flushes,
                            unsigned long long *delivered, unsigned long long *dropped)
{
    pthread_mutex_lock(&mu);
    int n = 0;
    for (int i = 0; i < MAXKINDS; i++)
        n += enabled[i];
    *is_subscribed = subscribed;
    *nenabled = n;
    *flushes = n_flush;
    *delivered = n_delivered;
    *dropped = n_dropped_total;
    pthread_mutex_unlock(&mu);
}

/* TBFAKE_CUPTI_AT_LAUNCH=1: the program launched its GPU work. Real CUPTI
 * stamps a record when the work runs, inside the step that launched it; here
 * the first call after activity was enabled gives the scripted records their
 * times as offsets from now. Returns 1 when this call stamped them, 2 when
 * they were stamped already (an earlier call, or stamping at enable), 0 when
 * activity is not enabled (no capture has started tracing yet).
 * The agent loads the fake RTLD_LOCAL: a program finds this function with
 * dlopen("libcupti.so", RTLD_NOLOAD) + dlsym (then dlclose). */
API int tbfake_cupti_launch(void)
{
    pthread_mutex_lock(&mu);
    int r = 0;
    if (enabled[CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL]) {
        r = stamped ? 2 : 1;
        if (!stamped)
            stamp(fake_clock());
    }
    pthread_mutex_unlock(&mu);
    if (r == 1)
        report("launch");
    return r;
}

/* The CUDA runtime's exit-time teardown, for a program that models one
 * (steps -C registers this with atexit at its start, as libcudart does at
 * its initialisation): contexts go away, and the records CUPTI still holds
 * for them are lost here, so a tool must have flushed before. */
API void tbfake_cuda_teardown(void)
{
    pthread_mutex_lock(&mu);
    size_t pending = stamped ? nrecs : 0;
    if (stamped)
        nrecs = 0;
    pthread_mutex_unlock(&mu);
    report("teardown pending=%zu", pending);
}

/* Callback domains enabled now (a bit per domain), and subscriptions and
 * finalizes over the library's life. */
API void tbfake_cupti_detach(int *domains_on, unsigned long long *subscribes, unsigned long long *finalizes)
{
    pthread_mutex_lock(&mu);
    *domains_on = 0;
    for (int i = 0; i < CUPTI_CB_DOMAIN_SIZE; i++)
        *domains_on |= domains[i] << i;
    *subscribes = n_subscribe;
    *finalizes = n_finalize;
    pthread_mutex_unlock(&mu);
}

/* One CUDA runtime (domain 2) or driver (1) call returning: the
 * subscriber's callback at its enter and exit sites when it enabled that
 * domain. Returns 1 when it was called back. */
API int tbfake_cuda_api(int domain, unsigned cbid)
{
    if (domain < 0 || domain >= CUPTI_CB_DOMAIN_SIZE)
        return 0;
    pthread_mutex_lock(&mu);
    CUpti_CallbackFunc cb = subscribed && domains[domain] ? sub_cb : NULL;
    void *ud = sub_ud;
    pthread_mutex_unlock(&mu);
    if (!cb)
        return 0;
    CUpti_CallbackData d;
    memset(&d, 0, sizeof(d));
    d.functionName = domain == CUPTI_CB_DOMAIN_DRIVER_API ? "cuFake" : "cudaFake";
    d.callbackSite = CUPTI_API_ENTER;
    cb(ud, (CUpti_CallbackDomain)domain, cbid, &d);
    d.callbackSite = CUPTI_API_EXIT;
    api_exit_mark(1);
    cb(ud, (CUpti_CallbackDomain)domain, cbid, &d);
    api_exit_mark(0);
    return 1;
}

/* The thread-id type currently set (-1 in the FAKE_OLD build). */
API int tbfake_cupti_tid_type(void)
{
#ifndef FAKE_OLD
    return (int)tid_type;
#else
    return -1;
#endif
}

/* unloaded by a test (dlclose) or at exit: give the script memory back */
__attribute__((destructor)) static void fake_fini(void)
{
    free(recs);
    recs = NULL;
    nrecs = caprecs = 0;
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    nnames = 0;
}
