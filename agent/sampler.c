/* sampler.c - CPU sampling with perf_event: see sampler.h for the model and
 * the output encoding, README "CPU sampling" for the choices. */
#include "sampler.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "host.h"
#include "log.h"
#include "pyframes.h"
#include "pytramp.h"
#include "stats.h"
#include "symbols.h"
#include "unwind.h"
#include "util.h"

#define DEFAULT_BUDGET (64u << 20)
#define MAX_THREADS 4096
/* A thread's ring starts small (most threads of a runtime wait: the JVM's,
 * a PyTorch job's pools) and grows once a drain finds it over half full or
 * lost records, so the budget covers several times more threads. */
#define RING_PAGES_STACK_FIRST 32 /* 128 KiB: 7 samples, ~14 ms of a busy thread at 499 Hz */
#define RING_PAGES_STACK 128      /* 512 KiB: ~30 ms of one busy thread at 1 kHz */
#define RING_PAGES_FP 16
#define MIN_PAGES_STACK 8 /* one 16 KiB stack sample must fit */
/* A thread whose stack goes on past the 16 KiB copy (Python under the perf
 * trampoline: ~25 frames fill it) is given the kernel's largest copy once
 * DEEP_AFTER_CUTS of its walks ran out of stack; its ring grows with it. */
#define DEEP_STACK_BYTES 65528 /* sample_stack_user must be < 64 KiB, 8-aligned */
#define DEEP_RING_SCALE 4
#define DEEP_AFTER_CUTS 2
#define RESIZE_PER_POLL 8
#define MIN_PAGES_FP 2
#define FP_MAX_STACK 127 /* callchain depth asked for: the usual kernel.perf_event_max_stack */
#define POLL_WORK_NS (20 * 1000 * 1000) /* most time one poll() spends draining */
#define RESCAN_HOOKED_MS 100 /* rescan period when new threads are announced */
/* the leaf frame of a sample taken in kernel mode: no user address (those
 * end below 2^47) and no callchain context marker (PERF_CONTEXT_*) */
#define KERNEL_IP 0xffffffff80000000ULL

typedef struct cpu_thread {
    int tid;
    int fd;           /* -1: not sampled (limits), counted once, not tried again */
    void *base;       /* mmap: one metadata page + data */
    size_t mmap_len;  /* bytes mapped */
    size_t data_len;  /* data area, a power of two */
    int seen;
    int name_reads;  /* comm re-read this many times since found (NAME_READS_NS) */
    int64_t found_ns; /* when a rescan found it (CLOCK_MONOTONIC) */
    int slot;         /* its fd's place in event_fds, -1: none */
    uint32_t stack_bytes; /* user stack copied per sample (stack mode) */
    int cuts;             /* walks that ran past a full copy */
    int deep_tried;       /* a bigger copy was tried (one try) */
    int filled;           /* a drain found the ring over half full, or lost records */
    int grown;            /* its ring was given (or tried at) the full size */
} cpu_thread;

/* The capture's perf_event fds (fd + 1; 0: free slot), apart from the
 * thread list: a fork child must close its copies (they would keep the
 * parent's threads sampled for as long as it lives), and the list may be
 * in the middle of a change by the agent thread (a realloc, a free) when
 * another thread forks. */
static atomic_int event_fds[MAX_THREADS];

static int fd_slot_take(int fd)
{
    for (int i = 0; i < MAX_THREADS; i++) {
        int free_ = 0;
        if (atomic_load_explicit(&event_fds[i], memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(&event_fds[i], &free_, fd + 1))
            return i;
    }
    return -1;
}

/* Before the fd is closed. */
static void fd_slot_drop(cpu_thread *th)
{
    if (th->slot >= 0)
        atomic_store(&event_fds[th->slot], 0);
    th->slot = -1;
}

/* When a thread's comm is read again after it was found. A rename made by a
 * sampled thread (the thread itself, mostly, just after it starts) comes as
 * a PERF_RECORD_COMM in that thread's ring; these reads catch one made by a
 * thread not sampled (the agent's, one over the limits) before a
 * short-lived thread is gone (every name is read once more at stop).
 * Spread over a second, a handful of reads per thread. */
static const int64_t NAME_READS_NS[] = {10000000, 30000000, 100000000, 300000000, 1000000000};
#define NAME_READS ((int)(sizeof(NAME_READS_NS) / sizeof(NAME_READS_NS[0])))

typedef struct cpu_sample {
    int64_t t; /* CLOCK_MONOTONIC ns */
    int32_t tid;
    uint32_t stack; /* index into stacks */
} cpu_sample;

typedef struct cpu_stack {
    uint64_t off; /* into frames[] */
    uint32_t n;
    uint32_t hash;
    uint32_t gen; /* the module list's generation when unwound (tb_symtab_lookup_gen) */
} cpu_stack;

typedef struct cpu_ctx {
    int active;
    int mode;
    unsigned hz;
    uint64_t period_ns;
    size_t budget, used;
    size_t ring_budget, ring_used;
    size_t page;
    int max_threads;

    cpu_thread *threads;
    size_t nthreads, cap_threads;
    size_t nopen; /* threads with an event (the others are not sampled) */
    int64_t last_scan;
    /* time between rescans of /proc/self/task (each costs the agent more
     * than draining and unwinding a poll's samples): every poll, or, where
     * the pthread_create hook announces new threads at once, only for
     * threads made otherwise (clone), ended ones and late names */
    int64_t rescan_ns;
    int64_t last_objects; /* when the list of loaded objects was last checked */
    int64_t begin_mono; /* capture start: no span starts before it */
    int64_t poll_work_ns; /* most time one poll spends draining */
    size_t drain_from;    /* the thread a poll drains first: after the one the last poll cut short */
    atomic_int rescan_hint;

    cpu_sample *samples;
    size_t nsamples, cap_samples;
    uint64_t *frames;
    size_t nframes, cap_frames;
    cpu_stack *stacks;
    size_t nstacks, cap_stacks;
    uint32_t *ht; /* stack index + 1; 0 = empty */
    size_t cap_ht;

    uint64_t lost_kernel, lost_full, unwind_failed, unsampled, threads_sampled, deep_threads;
    int warned_mmap;
    /* kernel-mode time is sampled too unless perf_event_paranoid (>= 2
     * without CAP_PERFMON) refuses it: then user space only */
    int user_only;
    int no_comm; /* PERF_RECORD_COMM refused (EINVAL): names read from /proc only */
    int paranoid; /* as read when kernel time was refused */
    int kernel_err; /* the errno that refused it */

    tb_symtab *sym;
    tb_unwinder *unw;
    unsigned char *scratch; /* one record that wraps around the ring */
    char why[160];
    /* CPython's perf trampoline asked for at start (pytramp.h), and what
     * became of it, for the profile ("" when the process has no Python) */
    int py_tramp;
    int py_map; /* asked for the trampoline: tb_pytramp_map_done() when freed */
    char py_desc[256];
    /* the main thread's frames entered before the trampoline went on
     * (pyframes.h): a snapshot newer than py_gen, samples labelled until
     * py_until (when the trampoline was asked off) */
    uint32_t py_gen;
    tb_pysnap *pysnap;
    int64_t py_until;
    int py_final;       /* read for the last time (at the stop) */
    uint64_t py_labelled; /* samples in the window with Python frames named from the list */
} cpu_ctx;

static cpu_ctx cpu_state;
static atomic_int warned_budget; /* once per process: the job's thread count rarely changes */

/* ---- bounded storage ---------------------------------------------------------- */

static int grow(cpu_ctx *c, void **p, size_t *cap, size_t elem, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 1024;
    while (nc < need)
        nc *= 2;
    size_t extra = (nc - *cap) * elem;
    if (c->used + extra > c->budget)
        return -ENOSPC;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return -ENOMEM;
    *p = np;
    c->used += extra;
    *cap = nc;
    return 0;
}

static uint32_t hash_frames(const uint64_t *ips, int n)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        h ^= ips[i];
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static int rehash(cpu_ctx *c, size_t ncap)
{
    size_t extra = ncap > c->cap_ht ? (ncap - c->cap_ht) * sizeof(uint32_t) : 0;
    if (c->used + extra > c->budget)
        return -ENOSPC;
    uint32_t *nt = calloc(ncap, sizeof(uint32_t));
    if (!nt)
        return -ENOMEM;
    for (size_t i = 0; i < c->nstacks; i++) {
        size_t h = c->stacks[i].hash & (ncap - 1);
        while (nt[h])
            h = (h + 1) & (ncap - 1);
        nt[h] = (uint32_t)i + 1;
    }
    free(c->ht);
    c->ht = nt;
    c->used += extra;
    c->cap_ht = ncap;
    return 0;
}

/* Stack id for these frames (leaf first), interned; -1 when full. */
static int64_t intern_stack(cpu_ctx *c, const uint64_t *ips, int n)
{
    uint32_t h = hash_frames(ips, n);
    /* the module list the frames were taken against: collect names them
     * after the objects mapped then, also a library unloaded since (or
     * another one now mapped at its place) */
    uint32_t gen = tb_symtab_generation(c->sym);
    if (c->cap_ht && c->cap_ht > 0) {
        size_t i = h & (c->cap_ht - 1);
        while (c->ht[i]) {
            cpu_stack *s = &c->stacks[c->ht[i] - 1];
            if (s->hash == h && s->n == (uint32_t)n && s->gen == gen &&
                memcmp(c->frames + s->off, ips, (size_t)n * 8) == 0)
                return c->ht[i] - 1;
            i = (i + 1) & (c->cap_ht - 1);
        }
    }
    if ((c->nstacks + 1) * 2 > c->cap_ht && rehash(c, c->cap_ht ? c->cap_ht * 2 : 4096) < 0)
        return -1;
    if (grow(c, (void **)&c->stacks, &c->cap_stacks, sizeof(cpu_stack), c->nstacks + 1) < 0 ||
        grow(c, (void **)&c->frames, &c->cap_frames, sizeof(uint64_t), c->nframes + (size_t)n) < 0)
        return -1;
    cpu_stack *s = &c->stacks[c->nstacks];
    s->off = c->nframes;
    s->n = (uint32_t)n;
    s->hash = h;
    s->gen = gen;
    memcpy(c->frames + c->nframes, ips, (size_t)n * 8);
    c->nframes += (size_t)n;
    size_t i = h & (c->cap_ht - 1);
    while (c->ht[i])
        i = (i + 1) & (c->cap_ht - 1);
    c->ht[i] = (uint32_t)c->nstacks + 1;
    return (int64_t)c->nstacks++;
}

static void add_sample(cpu_ctx *c, int tid, uint64_t t, const uint64_t *ips, int n)
{
    if (n <= 0)
        return;
    if (grow(c, (void **)&c->samples, &c->cap_samples, sizeof(cpu_sample), c->nsamples + 1) < 0) {
        c->lost_full++;
        return;
    }
    int64_t id = intern_stack(c, ips, n);
    if (id < 0) {
        c->lost_full++;
        return;
    }
    c->samples[c->nsamples++] = (cpu_sample){(int64_t)t, tid, (uint32_t)id};
}

/* ---- perf_event per thread ------------------------------------------------------ */

static int read_paranoid(void);

static int (*refuse_for_test)(const void *attr);
void tb_sampler_refuse_for_test(int (*fn)(const void *attr)) { refuse_for_test = fn; }

static long perf_open(struct perf_event_attr *a, int tid)
{
    int refused = refuse_for_test ? refuse_for_test(a) : 0;
    if (refused) {
        errno = refused;
        return -1;
    }
    return tb_fd_above_stdio((int)syscall(SYS_perf_event_open, a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC));
}

static void fill_attr(const cpu_ctx *c, struct perf_event_attr *a, size_t data_len, uint32_t stack_bytes)
{
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = PERF_TYPE_SOFTWARE;
    a->config = PERF_COUNT_SW_CPU_CLOCK;
    a->sample_period = c->period_ns;
    a->sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_TIME;
    a->exclude_kernel = c->user_only != 0;
    a->exclude_hv = 1;
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
    a->watermark = 1;
    a->wakeup_watermark = (uint32_t)(data_len / 2); /* nobody waits: keep wakeups rare */
    /* a PERF_RECORD_COMM in the ring of the thread that renames a thread
     * (itself, mostly: pthread_setname_np just after it starts), so a
     * thread that ends before its comm is read again keeps its last name;
     * timed (sample_id_all: the sample's TID and TIME after the record),
     * since one thread's renames can lie in several rings */
    a->comm = a->sample_id_all = !c->no_comm;
    if (c->mode == TB_CPU_FP) {
        a->sample_type |= PERF_SAMPLE_CALLCHAIN;
        a->exclude_callchain_kernel = 1;
        a->sample_max_stack = FP_MAX_STACK;
    } else {
        a->sample_type |= PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
        a->sample_regs_user = TB_UREG_MASK;
        a->sample_stack_user = stack_bytes;
    }
}

/* The fewest data pages a ring holding one sample needs. */
static size_t min_pages(const cpu_ctx *c, uint32_t stack_bytes)
{
    if (c->mode == TB_CPU_FP)
        return MIN_PAGES_FP;
    return stack_bytes > TB_CPU_STACK_BYTES ? MIN_PAGES_STACK * DEEP_RING_SCALE : MIN_PAGES_STACK;
}

/* The data pages a thread's ring is opened with: the first size, or once
 * grown the full one; scaled for the deep copy. */
static size_t ring_pages(const cpu_ctx *c, uint32_t stack_bytes, int grown)
{
    if (c->mode == TB_CPU_FP)
        return RING_PAGES_FP;
    size_t p = grown ? RING_PAGES_STACK : RING_PAGES_STACK_FIRST;
    return stack_bytes > TB_CPU_STACK_BYTES ? p * DEEP_RING_SCALE : p;
}

/* want pages, halved while over the ring budget, down to floor (the
 * smallest ring for stack_bytes where floor is lower); 0 when floor does
 * not fit. */
static size_t pages_within_budget(const cpu_ctx *c, uint32_t stack_bytes, size_t want, size_t floor)
{
    size_t minp = min_pages(c, stack_bytes);
    if (floor > minp)
        minp = floor;
    while (want >= minp && (want + 1) * c->page > c->ring_budget - c->ring_used)
        want /= 2;
    return want >= minp ? want : 0;
}

/* The thread's name now, read from /proc (timed before the read: a
 * rename the read misses comes as a record of a later time). */
static void remember_comm(int tid)
{
    char path[64], name[32];
    int64_t at = tb_mono_ns();
    snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
    /* (above fd 2 for the read: see tb_opendir_above_stdio) */
    int fd = tb_fd_above_stdio(open(path, O_RDONLY | O_CLOEXEC));
    if (fd < 0)
        return;
    ssize_t k = read(fd, name, sizeof(name) - 1);
    close(fd);
    if (k <= 0)
        return;
    name[k] = '\0';
    name[strcspn(name, "\n")] = '\0';
    tb_host_remember_name(tid, name, at);
}

/* A slot at the end of the thread list; NULL when out of memory. */
static cpu_thread *new_entry(cpu_ctx *c)
{
    if (c->nthreads == c->cap_threads) {
        size_t nc = c->cap_threads ? c->cap_threads * 2 : 64;
        cpu_thread *nt = realloc(c->threads, nc * sizeof(*nt));
        if (!nt)
            return NULL;
        c->threads = nt;
        c->cap_threads = nc;
    }
    return &c->threads[c->nthreads++];
}

/* A thread over the limits: counted once, and listed without an event so
 * that rescans do not try it again (nor count it again) while it lives. */
static void skip_thread(cpu_ctx *c, int tid)
{
    c->unsampled++;
    cpu_thread *th = new_entry(c);
    if (th)
        *th = (cpu_thread){.tid = tid, .fd = -1, .seen = 1, .name_reads = NAME_READS, .slot = -1};
}

/* Open and map an event for thread tid copying stack_bytes of its stack
 * per sample, with a ring of up to `want` data pages, into *th (fd, ring,
 * slot, stack_bytes; the rest untouched). 0; -errno, the open's errno;
 * 1: no ring could be mapped (locked-memory limits: perf_event_mlock_kb,
 * RLIMIT_MEMLOCK), warned about once; 2: the ring budget is used up.
 * floor > 0: a thread's event opened again (reopen): the new ring has at
 * least floor pages or none is made, the event starts disabled
 * (PERF_EVENT_IOC_ENABLE starts it), and a ring not mapped is not warned
 * about (the thread keeps its old one). */
static int open_event(cpu_ctx *c, int tid, uint32_t stack_bytes, size_t want, size_t floor, cpu_thread *th)
{
    size_t pages = pages_within_budget(c, stack_bytes, want, floor);
    if (!pages)
        return 2;
    struct perf_event_attr a;
    int fd, dropped_comm = 0;
    for (;;) {
        fill_attr(c, &a, pages * c->page, stack_bytes);
        a.disabled = floor > 0;
        fd = (int)perf_open(&a, tid);
        if (fd < 0 && (errno == EINVAL || errno == EOVERFLOW) && a.sample_max_stack) {
            /* above kernel.perf_event_max_stack, or a kernel before 4.8: the
             * system's default depth */
            a.sample_max_stack = 0;
            fd = (int)perf_open(&a, tid);
        }
        if (fd < 0 && errno == EINVAL && a.comm) {
            /* a sandbox's perf_event_open that refuses rename records: all
             * over without them (the depth asked for again: it may not have
             * been what was refused), and so from now on where that opens */
            c->no_comm = dropped_comm = 1;
            continue;
        }
        if (fd >= 0 || (errno != EACCES && errno != EPERM) || c->user_only)
            break;
        /* time in the kernel is not ours to sample here: user space only,
         * for this thread and the rest of the capture */
        c->user_only = 1;
        c->kernel_err = errno; /* before read_paranoid's stdio can change it */
        c->paranoid = read_paranoid();
    }
    if (fd < 0 && dropped_comm)
        c->no_comm = 0; /* (they were not what was refused) */
    if (fd < 0)
        return -errno;
    void *base = MAP_FAILED;
    int merr = 0;
    for (; pages >= min_pages(c, stack_bytes) && pages >= floor; pages /= 2) {
        base = mmap(NULL, (pages + 1) * c->page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base != MAP_FAILED)
            break;
        merr = errno;
    }
    if (base == MAP_FAILED) {
        if (!c->warned_mmap && !floor) {
            c->warned_mmap = 1;
            tb_warn("cpu sampling: cannot map a ring buffer for thread %d (%s: the locked-memory limit, "
                    "kernel.perf_event_mlock_kb then RLIMIT_MEMLOCK, without CAP_IPC_LOCK); such threads are "
                    "not sampled",
                    tid, strerror(merr));
        }
        close(fd);
        return 1;
    }
    th->fd = fd;
    th->base = base;
    th->mmap_len = (pages + 1) * c->page;
    th->data_len = pages * c->page;
    th->slot = fd_slot_take(fd);
    th->stack_bytes = stack_bytes;
    c->ring_used += th->mmap_len;
    c->nopen++;
    return 0;
}

static void close_thread(cpu_ctx *c, cpu_thread *th);

/* Open and map the event of one thread. 0, or -errno (the open's errno). */
static int open_thread(cpu_ctx *c, int tid)
{
    if ((int)c->nopen >= c->max_threads) {
        skip_thread(c, tid);
        return 0;
    }
    /* its name now, and again once the event is open (renames after that
     * come as records): a thread that ends before the second read keeps
     * the first, not "thread <tid>" */
    remember_comm(tid);
    cpu_thread t = {.tid = tid, .fd = -1, .seen = 1, .slot = -1};
    int r = open_event(c, tid, TB_CPU_STACK_BYTES, ring_pages(c, TB_CPU_STACK_BYTES, 0), 0, &t);
    if (r == 2 && !atomic_exchange(&warned_budget, 1))
        tb_warn("cpu sampling: the sample rings' share of TBPROF_BUFFER_MB (%zu KiB) is used up at %zu threads; "
                "thread %d is not sampled, nor others while it stays so (raise TBPROF_BUFFER_MB, or "
                "TBPROF_CPU_MODE=fp)",
                c->ring_budget >> 10, c->nopen, tid);
    if (r == 1 || r == 2 || r == -EMFILE || r == -ENFILE) { /* out of ring memory or descriptors: a limit */
        skip_thread(c, tid);
        return 0;
    }
    if (r < 0)
        return r;
    cpu_thread *th = new_entry(c);
    if (!th) {
        close_thread(c, &t);
        c->unsampled++;
        return 0;
    }
    t.found_ns = tb_mono_ns();
    *th = t;
    c->threads_sampled++;
    remember_comm(tid);
    return 0;
}

/* ---- draining ------------------------------------------------------------------------ */

static void copy_ring(const unsigned char *data, size_t mask, uint64_t pos, void *dst, size_t len)
{
    size_t off = (size_t)(pos & mask);
    size_t first = mask + 1 - off;
    if (first >= len) {
        memcpy(dst, data + off, len);
    } else {
        memcpy(dst, data + off, first);
        memcpy((unsigned char *)dst + first, data, len - first);
    }
}

/* A return address in a Python trampoline (CPython's or ours): code in no
 * loaded object. */
static int by_trampoline(uint64_t ip, void *arg)
{
    cpu_ctx *c = arg;
    return tb_symtab_module(c->sym, ip - 1) == NULL;
}

static void handle_sample(cpu_ctx *c, cpu_thread *th, const unsigned char *r, size_t len)
{
    struct perf_event_header h;
    memcpy(&h, r, sizeof(h));
    const unsigned char *p = r + sizeof(h), *end = r + len;
    uint32_t pidtid[2];
    uint64_t t;
    uint64_t ips[TB_CPU_MAX_FRAMES];
    int n = 0, whole = 0; /* whole: the walk reached the root */
    if (end - p < 16)
        return;
    memcpy(pidtid, p, 8);
    memcpy(&t, p + 8, 8);
    p += 16;
    if (c->mode == TB_CPU_FP) {
        uint64_t nr;
        if (end - p < 8)
            return;
        memcpy(&nr, p, 8);
        p += 8;
        if (nr > (uint64_t)(end - p) / 8)
            return;
        for (uint64_t i = 0; i < nr && n < TB_CPU_MAX_FRAMES; i++) {
            uint64_t ip;
            memcpy(&ip, p + i * 8, 8);
            if (ip >= (uint64_t)PERF_CONTEXT_MAX) /* context markers */
                continue;
            if (ip == 0)
                break;
            ips[n++] = ip;
        }
        /* (whole stays 0: a frame-pointer chain can break short of the
         * root with fewer than FP_MAX_STACK frames, and the Python labels
         * count activations from the root) */
    } else {
        uint64_t abi, regs[TB_UREG_COUNT], size, dyn = 0;
        if (end - p < 8)
            return;
        memcpy(&abi, p, 8);
        p += 8;
        if (abi == PERF_SAMPLE_REGS_ABI_NONE)
            return; /* no user context (a kernel thread: not ours) */
        if ((size_t)(end - p) < sizeof(regs))
            return;
        memcpy(regs, p, sizeof(regs));
        p += sizeof(regs);
        if (end - p < 8)
            return;
        memcpy(&size, p, 8);
        p += 8;
        const unsigned char *stack = p;
        if (size) {
            if ((uint64_t)(end - p) < 8 || size > (uint64_t)(end - p) - 8)
                return;
            memcpy(&dyn, p + size, 8);
            if (dyn > size)
                dyn = size;
        }
        int failed = 0;
        n = tb_unwind(c->unw, regs, stack, (size_t)dyn, ips, TB_CPU_MAX_FRAMES, &failed);
        if (failed)
            c->unwind_failed++;
        if (failed == TB_UNWIND_CUT && size && dyn == size) /* the stack goes on: a bigger copy */
            th->cuts++;
        whole = !failed;
    }
    if (c->pysnap && whole && (int64_t)t < c->py_until) {
        n = tb_pysnap_label(c->pysnap, (int)pidtid[1], (int64_t)t, ips, n, TB_CPU_MAX_FRAMES, by_trampoline, c);
    }
    if (n > 0 && (h.misc & PERF_RECORD_MISC_CPUMODE_MASK) == PERF_RECORD_MISC_KERNEL) {
        /* in a system call or fault on behalf of the user stack below:
         * "[kernel]" is its leaf (the deepest caller goes when full) */
        if (n == TB_CPU_MAX_FRAMES)
            n--;
        memmove(ips + 1, ips, (size_t)n * sizeof(ips[0]));
        ips[0] = KERNEL_IP;
        n++;
    }
    add_sample(c, (int)pidtid[1], t, ips, n);
}

/* A thread's new name: PERF_RECORD_COMM is {header; u32 pid, tid; char
 * comm[] NUL-padded to 8 bytes; sample_id: u32 pid, tid; u64 time}. */
static void handle_comm(const unsigned char *rec, size_t size)
{
    const size_t from = sizeof(struct perf_event_header) + 8, id = 16;
    if (size < from + 8 + id)
        return;
    uint32_t tid;
    int64_t at;
    memcpy(&tid, rec + sizeof(struct perf_event_header) + 4, 4);
    memcpy(&at, rec + size - 8, 8);
    char name[16];
    size_t room = size - id - from, n = room < sizeof(name) - 1 ? room : sizeof(name) - 1;
    memcpy(name, rec + from, n);
    name[n] = '\0';
    if (name[0])
        tb_host_remember_name((pid_t)tid, name, at);
}

/* This capture's snapshot of the main thread's frames (pyframes.h), once
 * the main thread has taken it. */
static void py_snapshot(cpu_ctx *c)
{
    if (c->py_map && !c->pysnap)
        c->pysnap = tb_pyframes_copy(c->py_gen);
}

/* Drain one ring; returns 1 when it stopped because the time budget ran out. */
static int drain(cpu_ctx *c, cpu_thread *th, int64_t deadline)
{
    struct perf_event_mmap_page *mp = th->base;
    const unsigned char *data = (const unsigned char *)th->base + c->page;
    size_t mask = th->data_len - 1;
    /* which of the snapshot's frames the main thread still runs, read just
     * before its samples are (each one taken after the read is left alone) */
    if (!c->py_final)
        py_snapshot(c); /* (here, not once a poll: the main thread may take it between two drains) */
    if (c->pysnap && !c->py_final && th->tid == tb_pysnap_tid(c->pysnap))
        tb_pysnap_refresh(c->pysnap);
    uint64_t head = __atomic_load_n(&mp->data_head, __ATOMIC_ACQUIRE);
    uint64_t tail = mp->data_tail;
    unsigned k = 0;
    if ((head - tail) * 2 > th->data_len)
        th->filled = 1;
    while (tail < head) {
        struct perf_event_header h;
        if (head - tail < sizeof(h))
            break;
        copy_ring(data, mask, tail, &h, sizeof(h));
        if (h.size < sizeof(h) || h.size > head - tail) {
            tail = head; /* corrupt: give the ring back */
            break;
        }
        size_t off = (size_t)(tail & mask);
        const unsigned char *rec;
        if (off + h.size <= th->data_len) {
            rec = data + off;
        } else {
            copy_ring(data, mask, tail, c->scratch, h.size);
            rec = c->scratch;
        }
        if (h.type == PERF_RECORD_SAMPLE) {
            handle_sample(c, th, rec, h.size);
        } else if (h.type == PERF_RECORD_COMM) {
            handle_comm(rec, h.size);
        } else if (h.type == PERF_RECORD_LOST && h.size >= sizeof(h) + 16) {
            uint64_t lost;
            memcpy(&lost, rec + sizeof(h) + 8, 8);
            c->lost_kernel += lost;
            th->filled = 1;
        }
        tail += h.size;
        __atomic_store_n(&mp->data_tail, tail, __ATOMIC_RELEASE);
        if ((++k & 31) == 0 && deadline && tb_mono_ns() > deadline)
            return 1;
    }
    __atomic_store_n(&mp->data_tail, tail, __ATOMIC_RELEASE);
    return 0;
}

static void close_thread(cpu_ctx *c, cpu_thread *th)
{
    if (th->fd >= 0) {
        ioctl(th->fd, PERF_EVENT_IOC_DISABLE, 0);
        drain(c, th, 0);
        munmap(th->base, th->mmap_len);
        fd_slot_drop(th);
        close(th->fd);
        c->ring_used -= th->mmap_len;
        c->nopen--;
        th->fd = -1;
    }
}

/* The thread's event opened again with another copy size or ring, holding
 * at least floor pages: the new one is opened (disabled) before the old is
 * disabled, then enabled at once, and the old drained and closed after
 * (at most the sample period under way is lost, none taken twice). Where
 * the ring budget or the locked-memory limit cannot give floor pages, the
 * thread keeps the event it has (0 returned). */
static int reopen(cpu_ctx *c, cpu_thread *th, uint32_t stack_bytes, size_t want, size_t floor)
{
    cpu_thread t = *th;
    if (open_event(c, th->tid, stack_bytes, want, floor, &t) != 0)
        return 0;
    ioctl(th->fd, PERF_EVENT_IOC_DISABLE, 0);
    if (ioctl(t.fd, PERF_EVENT_IOC_ENABLE, 0) != 0) {
        ioctl(th->fd, PERF_EVENT_IOC_ENABLE, 0);
        close_thread(c, &t);
        return 0;
    }
    close_thread(c, th);
    t.cuts = 0;
    t.filled = 0;
    *th = t;
    return 1;
}

/* After a poll's drains: a thread whose walks keep running past its copy
 * gets the largest copy (DEEP_STACK_BYTES) and a ring as much bigger (as
 * many samples as it holds now, or as it would hold grown); one whose ring
 * filled, the full ring. Each tried once per thread and capture, at most
 * RESIZE_PER_POLL per poll (each drains a ring and maps another). */
static void resize_rings(cpu_ctx *c)
{
    int left = RESIZE_PER_POLL;
    int self = tb_gettid(); /* this (the agent's) thread: busy unwinding while the job is, it would
                               take the ring memory first (a locked-memory limit is a zero-sum) */
    for (size_t i = 0; c->mode == TB_CPU_STACKCOPY && i < c->nthreads && left > 0; i++) {
        cpu_thread *th = &c->threads[i];
        if (th->fd < 0 || th->tid == self)
            continue;
        size_t now = th->data_len / c->page;
        if (th->cuts >= DEEP_AFTER_CUTS && !th->deep_tried) {
            th->deep_tried = 1;
            left--;
            /* a busy thread (its ring filled) needs the grown ring's room:
             * whole stacks are not worth losing samples to a full ring */
            int grow = th->grown || th->filled;
            /* (not grown: now <= RING_PAGES_STACK_FIRST, so floor <= want) */
            size_t want = ring_pages(c, DEEP_STACK_BYTES, grow), floor = grow ? want : now * DEEP_RING_SCALE;
            if (reopen(c, th, DEEP_STACK_BYTES, want, floor)) {
                th->grown = grow;
                c->deep_threads++;
                tb_debug("cpu sampling: thread %d's stack is deeper than %d KiB: copying 64 KiB of it", th->tid,
                         TB_CPU_STACK_BYTES >> 10);
            }
        } else if (th->filled && !th->grown) {
            th->grown = 1;
            left--;
            reopen(c, th, th->stack_bytes, ring_pages(c, th->stack_bytes, 1), now + 1);
        }
    }
}

static int tid_cmp(const void *a, const void *b)
{
    const cpu_thread *x = a, *y = b;
    return (x->tid > y->tid) - (x->tid < y->tid);
}

/* Open events for threads we do not sample yet; close the ones of threads
 * that ended. Returns the errno of the first refused open (0 if none). */
static int rescan(cpu_ctx *c, int *opened)
{
    int first_err = 0;
    int64_t now = tb_mono_ns();
    DIR *d = tb_opendir_above_stdio("/proc/self/task");
    if (!d)
        return 0;
    if (c->nthreads > 1)
        qsort(c->threads, c->nthreads, sizeof(*c->threads), tid_cmp);
    size_t known = c->nthreads;
    for (size_t i = 0; i < known; i++)
        c->threads[i].seen = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        int tid = atoi(e->d_name);
        cpu_thread key = {.tid = tid};
        cpu_thread *th = known ? bsearch(&key, c->threads, known, sizeof(*c->threads), tid_cmp) : NULL;
        if (th) {
            th->seen = 1;
            if (th->name_reads < NAME_READS && now - th->found_ns >= NAME_READS_NS[th->name_reads]) {
                th->name_reads++; /* (a rename by a thread not sampled leaves no record) */
                remember_comm(tid);
            }
            continue;
        }
        size_t before = c->nopen;
        int r = open_thread(c, tid);
        if (r < 0 && r != -ESRCH && !first_err)
            first_err = -r;
        if (c->nopen > before && opened)
            (*opened)++;
    }
    closedir(d);
    /* threads that ended: take their last samples, free the fd and ring */
    size_t w = 0;
    for (size_t i = 0; i < c->nthreads; i++) {
        if (i < known && !c->threads[i].seen)
            close_thread(c, &c->threads[i]);
        else
            c->threads[w++] = c->threads[i];
    }
    c->nthreads = w;
    c->last_scan = tb_mono_ns();
    return first_err;
}

/* ---- lifecycle ----------------------------------------------------------------------- */

/* Everything of the capture zeroed but its last reason (c->why). */
static void forget_capture(cpu_ctx *c)
{
    char why[sizeof(c->why)];
    memcpy(why, c->why, sizeof(why));
    memset(c, 0, sizeof(*c));
    memcpy(c->why, why, sizeof(why));
}

static void free_capture(cpu_ctx *c)
{
    for (size_t i = 0; i < c->nthreads; i++)
        if (c->threads[i].fd >= 0) {
            munmap(c->threads[i].base, c->threads[i].mmap_len);
            fd_slot_drop(&c->threads[i]);
            close(c->threads[i].fd);
        }
    if (c->py_map) /* (after cpu_collect's last read of the perf map) */
        tb_pytramp_map_done();
    free(c->threads);
    free(c->samples);
    free(c->frames);
    free(c->stacks);
    free(c->ht);
    free(c->scratch);
    tb_unwinder_free(c->unw);
    tb_symtab_free(c->sym);
    tb_pysnap_free(c->pysnap);
    forget_capture(c);
}

static int refused(int err)
{
    return err == EACCES || err == EPERM || err == ENOSYS || err == ENOENT || err == EOPNOTSUPP ||
           err == ENODEV;
}

/* Descriptors open in this process (0 when /proc cannot say). */
static int open_fds(void)
{
    DIR *d = tb_opendir_above_stdio("/proc/self/fd");
    if (!d)
        return 0;
    int n = -1; /* the directory's own */
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n : 0;
}

static int read_paranoid(void)
{
    FILE *f = fopen("/proc/sys/kernel/perf_event_paranoid", "re");
    int v = -100;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -100;
        fclose(f);
    }
    return v;
}

static int cpu_start(void *ctx, const tb_capture_info *info, const char **why)
{
    cpu_ctx *c = ctx;
    if (c->active) {
        *why = "CPU sampling already running";
        return -EBUSY;
    }
    free_capture(c);
    c->why[0] = '\0';
    c->mode = info->cpu_mode == TB_CPU_FP ? TB_CPU_FP : TB_CPU_STACKCOPY;
    c->hz = info->cpu_hz ? info->cpu_hz : TB_CPU_DEFAULT_HZ;
    if (c->hz > 100000)
        c->hz = 100000;
    c->period_ns = 1000000000ull / c->hz;
    c->poll_work_ns = info->poll_work_ns > 0 ? info->poll_work_ns : POLL_WORK_NS;
    c->drain_from = 0;
    c->rescan_ns = (info->threads_hooked ? RESCAN_HOOKED_MS : TB_CPU_POLL_MS) * 1000000LL;
    c->budget = info->buffer_bytes ? info->buffer_bytes : DEFAULT_BUDGET;
    c->page = (size_t)sysconf(_SC_PAGESIZE);
    c->ring_budget = c->budget / 2;
    c->budget -= c->ring_budget;
    struct rlimit rl;
    c->max_threads = MAX_THREADS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        /* leave the job most of the descriptors it has left (a job near its
         * limit would otherwise get EMFILE from its own open()s) */
        rlim_t used = (rlim_t)open_fds();
        rlim_t left = rl.rlim_cur > used ? rl.rlim_cur - used : 0;
        if (left / 4 < MAX_THREADS)
            c->max_threads = (int)(left / 4);
    }
    c->sym = tb_symtab_new();
    c->scratch = malloc(65536);
    if (!c->sym || !c->scratch) {
        free_capture(c);
        *why = "out of memory";
        return -ENOMEM;
    }
    tb_symtab_refresh(c->sym);
    if (c->mode == TB_CPU_STACKCOPY) {
        c->unw = tb_unwinder_new(c->sym);
        if (!c->unw) {
#if defined(__x86_64__)
            tb_warn_once("cpu sampling: %s; using frame-pointer stacks", tb_unwinder_why());
#else
            /* (by design here, not a failure to warn of at every capture) */
            tb_info("cpu sampling: %s; using frame-pointer stacks", tb_unwinder_why());
#endif
            c->mode = TB_CPU_FP;
        }
    }
    /* the agent calibrated the clock just before start() */
    c->begin_mono = info->begin_ns ? info->begin_ns - tb_clock_offset() : tb_mono_ns();
    int opened = 0;
    int err = rescan(c, &opened);
    if (!opened && err == EINVAL && c->mode == TB_CPU_STACKCOPY) {
        /* a kernel without user register/stack sampling: frame pointers */
        tb_warn("cpu sampling: stack copies refused by the kernel (EINVAL); using frame-pointer stacks");
        c->mode = TB_CPU_FP;
        err = rescan(c, &opened);
    }
    if (!opened) {
        if (!err && c->unsampled) {
            /* nothing refused: every thread was over our own limits */
            snprintf(c->why, sizeof(c->why),
                     "no thread sampled: %llu over the limits (descriptors free, ring share of "
                     "TBPROF_BUFFER_MB, locked memory)",
                     (unsigned long long)c->unsampled);
            free_capture(c);
            *why = c->why;
            return -EAGAIN;
        }
        if (!err)
            err = EAGAIN;
        if (refused(err))
            snprintf(c->why, sizeof(c->why),
                     "perf_event_open refused (%s; kernel.perf_event_paranoid=%d, or a seccomp/container "
                     "policy)",
                     strerrorname_np(err) ? strerrorname_np(err) : "error", read_paranoid());
        else
            snprintf(c->why, sizeof(c->why), "perf_event_open failed: %s", strerror(err));
        free_capture(c);
        *why = c->why;
        return -err;
    }
    c->active = 1;
    /* Python frames: stack copies are walked through the trampolines; the
     * kernel's frame-pointer walk reaches them only where the interpreter
     * keeps frame pointers (else the trampoline would cost each Python
     * call for stacks that end in the interpreter all the same) */
    int py_fp = info->py_trampoline && c->mode == TB_CPU_FP ? tb_pytramp_frame_pointers() : 1;
    if (info->py_trampoline && py_fp > 0) {
        c->py_tramp = c->py_map = 1;
        c->py_gen = tb_pyframes_generation();
        c->py_until = INT64_MAX;
        tb_pytramp_request(1);
    } else if (py_fp == 0) {
        snprintf(c->py_desc, sizeof(c->py_desc),
                 "not turned on: this CPython keeps no frame pointers, so frame-pointer stacks end in its own "
                 "frames (dwarf stacks name Python frames)");
    }
    return 0;
}

static void cpu_poll(void *ctx)
{
    cpu_ctx *c = ctx;
    if (!c->active)
        return;
    int64_t now = tb_mono_ns();
    if (atomic_exchange(&c->rescan_hint, 0) || now - c->last_scan >= c->rescan_ns)
        rescan(c, NULL);
    /* a library loaded during the capture (cuBLAS at its first use, an
     * extension module at an import): known before the samples taken in
     * it are unwound, or their stacks would end at its first frame; one
     * unloaded (dlclose) is remembered, so that the samples taken in it
     * before are named after it at collect (both stack modes) */
    if (now - c->last_objects >= TB_CPU_POLL_MS * 1000000LL) {
        c->last_objects = now;
        if (tb_symtab_stale(c->sym) && tb_symtab_refresh(c->sym))
            tb_unwinder_flush(c->unw);
    }
    /* more samples than a poll's time drains (many busy threads, a high
     * rate): the next poll starts after the thread this one stopped in, so
     * every thread's ring is drained in turn and the samples lost to full
     * rings are spread evenly, not all taken from the threads last in line */
    int64_t deadline = now + c->poll_work_ns;
    size_t n = c->nthreads, from = n ? c->drain_from % n : 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (from + k) % n;
        if (c->threads[i].fd >= 0 && drain(c, &c->threads[i], deadline)) {
            c->drain_from = i + 1;
            break;
        }
    }
    resize_rings(c);
}

static void cpu_stop(void *ctx)
{
    cpu_ctx *c = ctx;
    if (!c->active)
        return;
    /* the trampoline off first: each Python call pays for it until the
     * main thread runs the request (frames entered with it stay named) */
    if (c->py_tramp) {
        if (!tb_pytramp_describe(c->py_desc, sizeof(c->py_desc)))
            c->py_desc[0] = '\0';
        c->py_until = tb_mono_ns(); /* samples after it may be in frames entered with it off */
        py_snapshot(c);
        tb_pysnap_refresh(c->pysnap); /* (the last: the main thread may turn it off before the drains) */
        c->py_final = 1;
        tb_pytramp_request(0);
        c->py_tramp = 0;
    }
    for (size_t i = 0; i < c->nthreads; i++)
        if (c->threads[i].fd >= 0)
            ioctl(c->threads[i].fd, PERF_EVENT_IOC_DISABLE, 0);
    for (size_t i = 0; i < c->nthreads; i++) {
        int open = c->threads[i].fd >= 0;
        close_thread(c, &c->threads[i]); /* its last samples and renames drained */
        if (open)
            remember_comm(c->threads[i].tid); /* the name it ends the capture with */
    }
    c->nthreads = 0;
    c->active = 0;
}

static void cpu_thread_created(void *ctx, int tid)
{
    (void)tid;
    cpu_ctx *c = ctx;
    atomic_store(&c->rescan_hint, 1);
}

/* A fork child's copies of the parent's capture buffers, still reachable
 * (volatile: stores the compiler keeps) so that LSan reports no leak in a
 * child that exits. */
static void *volatile child_left[9];

static void cpu_atfork_child(void *ctx)
{
    cpu_ctx *c = ctx;
    /* The parent's events: close our copies, sample nothing. Nothing else
     * of the parent's capture is touched: the agent thread may have been
     * in the middle of changing it (the list realloc'd, a free) when
     * another thread forked, and freeing it here could free twice. It is
     * left to the child unused (copy-on-write pages nobody writes). The
     * rings are not mapped here at all (the kernel copies no perf_event
     * mapping into a child). */
    for (int i = 0; i < MAX_THREADS; i++) {
        int v = atomic_exchange(&event_fds[i], 0);
        if (v > 0)
            close(v - 1);
    }
    void *p[9] = {c->threads, c->samples, c->frames, c->stacks, c->ht, c->scratch, c->unw, c->sym, c->pysnap};
    for (int i = 0; i < 9; i++)
        child_left[i] = p[i];
    forget_capture(c);
    tb_pytramp_atfork_child();
}

/* ---- collect: symbolize, merge into spans -------------------------------------------- */

typedef struct ipmeta {
    uint64_t key; /* lookup address | 1<<63 marks used */
    uint32_t meta;
    uint32_t gen; /* of the module list it was looked up in */
} ipmeta;

typedef struct span {
    uint32_t meta;
    int64_t start, last;
    uint64_t samples, self;
} span;

typedef struct collect_state {
    cpu_ctx *c;
    tb_plane *plane;
    int64_t st_samples, st_self;
    uint64_t refused;
    struct pending *pend;
    size_t npend, cap_pend;
} collect_state;

/* unknown: set to the metadata id of "[unknown]" (a frame in no loaded
 * object and no JIT map) once one is named so */
static uint32_t frame_meta(cpu_ctx *c, tb_plane *p, ipmeta *cache, size_t cap, uint64_t addr, uint32_t gen,
                           int64_t *unknown)
{
    uint64_t key = addr | (1ULL << 63);
    size_t h = (size_t)(((addr ^ gen) * 0x9e3779b97f4a7c15ULL) >> 20) & (cap - 1);
    while (cache[h].key) {
        if (cache[h].key == key && cache[h].gen == gen)
            return cache[h].meta;
        h = (h + 1) & (cap - 1);
    }
    const char *module = NULL;
    const char *name = addr == KERNEL_IP       ? TB_CPU_KERNEL_FRAME
                       : tb_pyframe_ip(addr) ? tb_pysnap_name(c->pysnap, addr)
                                             : tb_symtab_lookup_gen(c->sym, addr, gen, &module);
    char buf[300];
    if (!name) {
        if (module)
            snprintf(buf, sizeof(buf), "[%s]", module);
        else
            snprintf(buf, sizeof(buf), "[unknown]");
        name = buf;
    }
    int64_t m = tb_plane_event_meta_cat(p, name, TB_CAT_CPU_SAMPLE);
    uint32_t meta = m > 0 ? (uint32_t)m : 0;
    if (name == buf && !module && m > 0)
        *unknown = m;
    cache[h].key = key;
    cache[h].meta = meta;
    cache[h].gen = gen;
    return meta;
}

/* Spans of one thread, emitted at the end sorted by (start, depth): a parent
 * precedes its children even when they share start and end, so readers that
 * nest by order (trace viewers, tb_space_sort's stable sort) see the tree. */
typedef struct pending {
    span s;
    int depth;
} pending;

static void queue(collect_state *cs, const span *s, int depth)
{
    if (!s->meta)
        return;
    if (cs->npend == cs->cap_pend) {
        size_t nc = cs->cap_pend ? cs->cap_pend * 2 : 1024;
        pending *np = realloc(cs->pend, nc * sizeof(*np));
        if (!np) {
            cs->refused += s->self;
            return;
        }
        cs->pend = np;
        cs->cap_pend = nc;
    }
    cs->pend[cs->npend++] = (pending){*s, depth};
}

static int pending_cmp(const void *a, const void *b)
{
    const pending *x = a, *y = b;
    if (x->s.start != y->s.start)
        return x->s.start < y->s.start ? -1 : 1;
    return x->depth - y->depth;
}

static void flush_thread(collect_state *cs, tb_line *l)
{
    if (cs->npend > 1)
        qsort(cs->pend, cs->npend, sizeof(*cs->pend), pending_cmp);
    for (size_t i = 0; l && i < cs->npend; i++) {
        const span *s = &cs->pend[i].s;
        int64_t start = tb_mono_to_epoch(s->start);
        int64_t end = tb_mono_to_epoch(s->last);
        if (tb_line_add(l, s->meta, start, end - start) < 0) {
            cs->refused += s->self;
            continue;
        }
        tb_line_stat_u64(l, cs->st_samples, s->samples);
        if (s->self)
            tb_line_stat_u64(l, cs->st_self, s->self);
    }
    cs->npend = 0;
}

static int sample_cmp(const void *a, const void *b)
{
    const cpu_sample *x = a, *y = b;
    if (x->tid != y->tid)
        return x->tid < y->tid ? -1 : 1;
    return (x->t > y->t) - (x->t < y->t);
}

static int cpu_collect(void *ctx, tb_space *space)
{
    cpu_ctx *c = ctx;
    if (!c->sym) /* never started, or already collected */
        return 0;
    if (c->active)
        cpu_stop(c);
    tb_plane *p = tb_host_plane(space);
    if (!p) {
        free_capture(c);
        return -ENOMEM;
    }
    tb_symtab_refresh(c->sym);
    collect_state cs = {c, p, tb_plane_stat_meta(p, TB_ST_CPU_SPAN_SAMPLES),
                        tb_plane_stat_meta(p, TB_ST_CPU_SPAN_SELF), 0, NULL, 0, 0};

    /* metadata id of every frame, leaf first, parallel to c->frames */
    uint32_t *metas = malloc((c->nframes ? c->nframes : 1) * sizeof(uint32_t));
    size_t cap = 1024;
    while (cap < c->nframes * 2)
        cap *= 2;
    ipmeta *cache = calloc(cap, sizeof(ipmeta));
    int rc = 0;
    if (!metas || !cache) {
        rc = -ENOMEM;
        goto out;
    }
    int64_t unknown = -1;
    for (size_t s = 0; s < c->nstacks; s++) {
        const cpu_stack *st = &c->stacks[s];
        for (uint32_t i = 0; i < st->n; i++) {
            uint64_t ip = c->frames[st->off + i];
            /* return addresses point after the call: look up the call itself */
            metas[st->off + i] =
                frame_meta(c, p, cache, cap, i == 0 || tb_pyframe_ip(ip) ? ip : ip - 1, st->gen, &unknown);
        }
    }

    if (c->nsamples > 1)
        qsort(c->samples, c->nsamples, sizeof(*c->samples), sample_cmp);
    /* Only samples inside the agent's window are kept (sources start one
     * step early for step windows, and stop a moment after the request):
     * spans, self counts and the sample total then agree with each other. */
    int64_t win_b = INT64_MIN, win_e = INT64_MAX, b_ep, e_ep;
    if (tb_capture_window(space, &b_ep, &e_ep) == 0) {
        win_b = b_ep - tb_clock_offset();
        win_e = e_ep - tb_clock_offset();
    }
    size_t kept = 0;
    for (size_t j = 0; j < c->nsamples; j++)
        if (c->samples[j].t >= win_b && c->samples[j].t < win_e)
            c->samples[kept++] = c->samples[j];
    uint64_t outside = c->nsamples - kept;
    c->nsamples = kept;
    for (size_t j = 0; j < kept && c->pysnap; j++) {
        const cpu_stack *st = &c->stacks[c->samples[j].stack];
        for (uint32_t i = 0; i < st->n; i++)
            if (tb_pyframe_ip(c->frames[st->off + i])) {
                c->py_labelled++;
                break;
            }
    }
    uint64_t in_jit = 0; /* samples whose leaf is "[unknown]" */
    for (size_t j = 0; j < kept && unknown > 0; j++) {
        const cpu_stack *st = &c->stacks[c->samples[j].stack];
        in_jit += st->n && metas[st->off] == (uint32_t)unknown;
    }
    int64_t lo = c->begin_mono > win_b ? c->begin_mono : win_b;
    int64_t period = (int64_t)c->period_ns, gap = period * TB_CPU_GAP_PERIODS;
    span open[TB_CPU_MAX_FRAMES];
    size_t i = 0;
    while (i < c->nsamples) {
        int tid = c->samples[i].tid;
        tb_line *l = tb_host_line(space, tid);
        int nopen = 0;
        int64_t prev = 0;
        for (; i < c->nsamples && c->samples[i].tid == tid; i++) {
            const cpu_sample *sm = &c->samples[i];
            const cpu_stack *st = &c->stacks[sm->stack];
            int n = (int)st->n;
            const uint32_t *m = metas + st->off; /* leaf first: root is m[n-1] */
            if (nopen && sm->t - prev > gap) {
                while (nopen > 0) {
                    nopen--;
                    queue(&cs, &open[nopen], nopen);
                }
            }
            int k = 0;
            while (k < nopen && k < n && open[k].meta == m[n - 1 - k])
                k++;
            while (nopen > k) {
                nopen--;
                queue(&cs, &open[nopen], nopen);
            }
            /* timer jitter can put two samples a bit less than a period
             * apart: never start a span before the previous sample */
            int64_t start = sm->t - period;
            if (prev && start < prev)
                start = prev;
            if (start < lo) /* the agent keeps host events starting in the window */
                start = sm->t < lo ? sm->t : lo;
            for (int d = k; d < n; d++)
                open[d] = (span){m[n - 1 - d], start, sm->t, 0, 0};
            nopen = n;
            for (int d = 0; d < n; d++) {
                open[d].samples++;
                open[d].last = sm->t;
            }
            open[n - 1].self++;
            prev = sm->t;
        }
        while (nopen > 0) {
            nopen--;
            queue(&cs, &open[nopen], nopen);
        }
        flush_thread(&cs, l);
    }

    tb_plane_stat_u64(p, TB_ST_SAMPLES, c->nsamples);
    if (outside)
        tb_plane_stat_u64(p, TB_ST_SAMPLES_OUTSIDE, outside);
    tb_plane_stat_u64(p, TB_ST_SAMPLES_LOST, c->lost_kernel + c->lost_full);
    if (c->mode == TB_CPU_STACKCOPY)
        tb_plane_stat_u64(p, TB_ST_UNWIND_FAILED, c->unwind_failed);
    if (c->mode == TB_CPU_STACKCOPY)
        tb_plane_stat_u64(p, TB_ST_DEEP_THREADS, c->deep_threads);
    tb_plane_stat_u64(p, TB_ST_CPU_HZ, c->hz);
    tb_plane_stat_str(p, TB_ST_CPU_MODE, c->mode == TB_CPU_FP ? "fp" : "stackcopy");
    char kwhy[120];
    if (c->user_only && c->paranoid >= 2)
        snprintf(kwhy, sizeof(kwhy), "user space only (kernel.perf_event_paranoid=%d refuses kernel time)",
                 c->paranoid);
    else if (c->user_only) /* a seccomp or container policy, not the sysctl */
        snprintf(kwhy, sizeof(kwhy), "user space only (kernel time refused: %s)",
                 strerrorname_np(c->kernel_err) ? strerrorname_np(c->kernel_err) : "error");
    tb_plane_stat_str(p, TB_ST_CPU_TIME, c->user_only ? kwhy : "user and kernel");
    if (c->py_labelled && !strcmp(c->py_desc, TB_PYTRAMP_ON_DURING))
        snprintf(c->py_desc, sizeof(c->py_desc),
                 "on during the capture (turned on at its start: the main thread's Python frames entered before "
                 "then are named from its frame list, in %llu of its samples; other threads' show as the "
                 "interpreter)",
                 (unsigned long long)c->py_labelled);
    if (c->py_desc[0])
        tb_plane_stat_str(p, TB_ST_PY_TRAMPOLINE, c->py_desc);
    tb_plane_stat_u64(p, TB_ST_CPU_THREADS, c->threads_sampled);
    if (c->unsampled)
        tb_plane_stat_u64(p, TB_ST_CPU_THREADS_UNSAMPLED, c->unsampled);
    if (in_jit >= 10 && in_jit * 10 >= kept) {
        char w[400];
        snprintf(w, sizeof(w),
                 "cpu sampling: %llu of %llu samples (%.0f%%) ran in code outside any loaded object, "
                 "named [unknown]: JIT-compiled code; a JIT writing /tmp/perf-<pid>.map names it "
                 "(oneDNN, PyTorch's CPU convolutions and matmuls: ONEDNN_JIT_PROFILE=2)",
                 (unsigned long long)in_jit, (unsigned long long)kept, 100.0 * (double)in_jit / (double)kept);
        tb_space_add_warning(space, w);
    }
    if (c->lost_kernel + c->lost_full) {
        char w[160];
        snprintf(w, sizeof(w), "cpu sampling: %llu samples lost (%llu by the kernel: poll too slow; %llu over the buffer cap)",
                 (unsigned long long)(c->lost_kernel + c->lost_full), (unsigned long long)c->lost_kernel,
                 (unsigned long long)c->lost_full);
        tb_space_add_warning(space, w);
    }
out:
    free(cs.pend);
    free(metas);
    free(cache);
    free_capture(c);
    return rc;
}

/* tb_source.rebudget: the rings and the samples each keep half of
 * `bytes`, as at start, or what they hold where that is more (nothing is
 * freed: a lower limit only stops growth). */
static size_t cpu_rebudget(void *ctx, size_t bytes)
{
    cpu_ctx *c = ctx;
    size_t ring = bytes / 2, rest = bytes - ring;
    c->ring_budget = ring > c->ring_used ? ring : c->ring_used;
    c->budget = rest > c->used ? rest : c->used;
    return c->ring_budget + c->budget;
}

static tb_source cpu = {
    .name = "cpu",
    .ctx = &cpu_state,
    .start = cpu_start,
    .poll = cpu_poll,
    .stop = cpu_stop,
    .collect = cpu_collect,
    .atfork_child = cpu_atfork_child,
    .thread_created = cpu_thread_created,
    .rebudget = cpu_rebudget,
};

tb_source *tb_cpu_source(void) { return &cpu; }
