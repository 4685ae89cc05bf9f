/* translate.h - CUPTI activity records -> tb_space (the XSpace model).
 *
 * Device work (kernels, copies, memsets) goes on /device:GPU:<n>, one line
 * per stream named like the reference GPU tracer ("Stream #<id>(Compute,
 * MemcpyH2D)"); CUDA runtime/driver API calls, NVTX ranges and thread
 * overheads go on the calling thread's /host:CPU line with correlation_id,
 * so writers link each launch to its GPU work; synchronization waits go on a
 * "CUDA sync" line of their context's device plane (on the host plane when
 * no record tells the device); GPU memory alloc/free on a "Memory"
 * line; CUPTI's device-level overheads on "CUPTI overhead" (the process's
 * on the host plane).
 *
 * Timestamps: every CUPTI time t becomes t + ts_to_epoch_ns (see gpu.c).
 * Single-threaded; the agent thread runs it at collect().
 */
#ifndef TBPROF_CUPTI_TRANSLATE_H
#define TBPROF_CUPTI_TRANSLATE_H

#include <cupti.h>
#include <stdint.h>

#include "trace.h"

#define TB_CUPTI_MAX_DEVICES 64
/* Contexts whose device is remembered, for placing their syncs (whose
 * records name only the context): green contexts (CUDA 12.4+) can be many.
 * Past this many the later ones' syncs go where those of a context no
 * record names go (counted: contexts_unplaced). */
#define TB_CUPTI_MAX_CONTEXTS (1u << 16)
/* Device-plane lines of what is not GPU execution: CUPTI's overhead, memory
 * allocations and frees (host-side times), synchronizations (the host's
 * wait). Their ids are in xprof's derived-line range (0xdeadbeef ..
 * 0xdeadbeef + 289), which its analyses skip: on a stream-like id it would
 * count them as GPU ops (step time, op stats). Overhead takes the id the
 * reference tracer gives it (kThreadIdOverhead); the others the range's
 * last ids, which xprof derives only on host planes. */
#define TB_CUPTI_LINE_DERIVED_MIN ((int64_t)0xdeadbeef)
#define TB_CUPTI_LINE_OVERHEAD (TB_CUPTI_LINE_DERIVED_MIN + 6)
#define TB_CUPTI_LINE_MEMORY (TB_CUPTI_LINE_DERIVED_MIN + 288)
#define TB_CUPTI_LINE_SYNC (TB_CUPTI_LINE_DERIVED_MIN + 289)
/* the host plane's line of GPU memory events whose call was not traced:
 * past any thread id */
#define TB_CUPTI_HOST_LINE_MEMORY (((int64_t)1 << 32) + 1)
/* the host plane's lines of synchronizations whose GPU is not known (a
 * context no record placed, in a process that sees several GPUs) and of
 * CUPTI overhead of the whole process (no GPU, no thread) */
#define TB_CUPTI_HOST_LINE_SYNC (((int64_t)1 << 32) + 2)
#define TB_CUPTI_HOST_LINE_OVERHEAD (((int64_t)1 << 32) + 3)

typedef struct tb_cupti_devprops {
    int valid;
    char name[128];
    int64_t clock_khz, sm_count, cc_major, cc_minor;
    uint64_t mem_bandwidth; /* bytes/s */
    uint64_t mem_size;      /* bytes */
    /* for theoretical occupancy (0: unknown, a default is taken) */
    int warp_size, max_threads_per_sm, max_blocks_per_sm, regs_per_sm, smem_per_sm;
    int max_threads_per_block, regs_per_block, smem_per_block, smem_per_block_optin, smem_reserved_per_block;
} tb_cupti_devprops;

/* Iterates a buffer; same contract as cuptiActivityGetNextRecord. */
typedef CUptiResult (*tb_cupti_next_fn)(uint8_t *buf, size_t valid, CUpti_Activity **rec);
/* Name of a runtime/driver API callback id, or NULL. */
typedef const char *(*tb_cupti_api_name_fn)(CUpti_CallbackDomain dom, uint32_t cbid);

typedef struct tb_cupti_tr_opts {
    int64_t ts_to_epoch_ns;
    tb_cupti_api_name_fn api_name; /* may be NULL: "cuda_api_<cbid>" */
    int demangle;                  /* demangle kernel names with __cxa_demangle when present */
    /* CUDA-graph work's correlation ids are not to be trusted (a CUPTI
     * that numbers graph launches wrongly, see gpu.c): graph-launched GPU
     * work and the cudaGraphLaunch/cuGraphLaunch calls get no
     * correlation_id, so no flow or NVTX range is drawn from a wrong id */
    int graph_corr_unreliable;
    int api_all; /* record every API call; else tb_cupti_api_is_quiet ones are left out */
    /* cuptiGetVersion() of the libcupti that wrote the records (0: unknown):
     * which versions of them carry memory the client frees (below) */
    uint32_t cupti_api;
} tb_cupti_tr_opts;

/* From this CUPTI API version (CUDA 12.4) overhead records are Overhead3,
 * whose overheadData the client frees; older ones end before that field
 * (Overhead2: 48 bytes, Overhead: 40), so the bytes there are the next
 * record's. */
#define TB_CUPTI_API_OVERHEAD3 22u
/* From this version (CUDA 13.0) a device record's name is the client's to
 * free; older Device4 records share CUPTI's own string ("should not be
 * modified"). Device5 came in a late 12.x, whose names are then left
 * unfreed: a few bytes per device and capture, against freeing a string
 * CUPTI still uses. */
#define TB_CUPTI_API_DEVICE_NAME_OWNED 130000u

/* From this version (CUDA 13.2) device records are Device6, which tbprof
 * does not read (it reads Device5, 13.0's and 13.1's): whether its fields
 * sit where Device5's do is not known, so such a CUPTI's device records are
 * skipped and what it leaves the client to free is kept (translate.c,
 * layout_known). */
#define TB_CUPTI_API_DEVICE6 130200u

typedef struct tb_cupti_tr tb_cupti_tr;

tb_cupti_tr *tb_cupti_tr_new(tb_space *s, const tb_cupti_tr_opts *o);
/* Device facts from the driver (occupancy and plane stats); records of kind
 * DEVICE in the buffers fill them too. */
void tb_cupti_tr_set_device(tb_cupti_tr *t, uint32_t dev, const tb_cupti_devprops *p);
/* Translate every record of one completed buffer. Returns records seen.
 * Frees what CUPTI leaves the client to free (a device record's name, an
 * overhead record's data) and clears those fields: translate a buffer once. */
int64_t tb_cupti_tr_buffer(tb_cupti_tr *t, uint8_t *buf, size_t valid, tb_cupti_next_fn next);
/* Read only what a buffer says of devices and contexts (device and context
 * records), and the runtime calls' correlation ids, before any buffer is
 * translated: CUPTI hands buffers back in any order, and a kernel read
 * before its device's record would get no occupancy, a driver call inside
 * a runtime call read first would carry the runtime's correlation id.
 * Frees as tb_cupti_tr_buffer does (translating the buffer afterwards is
 * right). */
void tb_cupti_tr_prescan(tb_cupti_tr *t, uint8_t *buf, size_t valid, tb_cupti_next_fn next);
/* Translate one record (the bench and tests drive it directly); frees as
 * tb_cupti_tr_buffer does. */
void tb_cupti_tr_record(tb_cupti_tr *t, CUpti_Activity *rec);
/* Pair leftovers, name lines, write device facts. Returns 0 or -errno. */
int tb_cupti_tr_finish(tb_cupti_tr *t);
void tb_cupti_tr_free(tb_cupti_tr *t);

/* Counters over the translation (tests, logs). */
typedef struct tb_cupti_tr_counts {
    uint64_t records, kernels, memcpys, memsets, api, markers, syncs, overheads, memory,
        unknown, bad_time, unmatched_markers;
    uint64_t graph_uncorrelated; /* events left without correlation_id (graph_corr_unreliable) */
    uint64_t api_quiet;          /* API records left out (tb_cupti_api_is_quiet) */
    uint64_t odd_kernels;        /* kernel records that do not read as kernels (kernel_odd) */
    uint64_t launches;           /* kernel and graph launch calls (cudaLaunch*, cuLaunch*, *GraphLaunch*) */
    uint64_t incomplete;         /* incomplete records (work still running at a forced flush) */
    uint64_t untimed;            /* GPU work records with both timestamps 0 (CUPTI could not time them) */
    uint64_t cut_buffers;        /* buffers not read to their end (an incomplete record) */
    uint64_t cut_bytes;          /* their bytes from the incomplete record on (where known) */
    uint64_t contexts_unplaced;  /* records naming a context past the ones whose device is kept */
    uint64_t syncs_gpu_unknown;  /* syncs put on the host's "GPU unknown" line */
} tb_cupti_tr_counts;
tb_cupti_tr_counts tb_cupti_tr_get_counts(const tb_cupti_tr *t);

/* Whether a runtime/driver call, by its CUPTI callback name
 * ("cudaGetDevice_v3020", "cuStreamQuery_ptsz"), is one left out unless
 * TBPROF_CUDA_API_ALL=on: it launches no GPU work, returns at once and
 * frameworks make it constantly. */
int tb_cupti_api_is_quiet(const char *cupti_name);
/* The names tb_cupti_api_is_quiet matches, space-separated (the profile's
 * TB_ST_CUDA_API_LEFT_OUT). */
const char *tb_cupti_api_quiet_list(void);

/* "device", "pinned", ... as the reference tracer spells them. */
const char *tb_cupti_memory_kind_name(int kind);

#endif
