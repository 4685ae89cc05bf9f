/* folded.h - CPU sample stacks out of a tb_space, and what readers make of
 * them: folded stacks ("a;b;c N", Brendan Gregg's format), speedscope's
 * "sampled" JSON, a call tree for flame graphs, and per-function totals.
 *
 * The sampler writes CPU samples as merged nested spans on /host:CPU thread
 * lines (category TB_CAT_CPU_SAMPLE; read back from a file, spans are known
 * by their sample-count stat): a span is one frame, its children are the
 * frames it called, and each span carries how many samples fell inside it.
 * A span's self count is its total minus its children's totals; every span
 * with a self count > 0 yields one stack (root first) with that count.
 *
 * Frame names are borrowed from the space: a tb_folded is valid while the
 * spaces it was built from are alive. The same structure holds GPU time by
 * launching stack (tb_folded_add_gpu), its counts in ns.
 */
#ifndef TBPROF_AGENT_FOLDED_H
#define TBPROF_AGENT_FOLDED_H

#include <stdint.h>
#include <stdio.h>

#include "trace.h"

typedef struct tb_folded_stack {
    uint32_t at;     /* frames at f->frames[at .. at+depth), root first */
    uint32_t depth;
    uint32_t thread; /* index into f->threads */
    uint64_t count;  /* samples whose stack is exactly this one */
} tb_folded_stack;

typedef struct tb_folded {
    tb_folded_stack *stacks;
    size_t nstacks, cap_stacks;
    const char **frames; /* frame name pool */
    size_t nframes, cap_frames;
    const char **threads; /* thread (line) names */
    size_t nthreads, cap_threads;
    uint64_t total; /* sum of all counts */
    uint64_t bad_spans; /* spans that overlapped a sibling (skipped) */
    int ns;             /* counts are ns of GPU time (tb_folded_add_gpu), not samples */
    int gpu_ranges;     /* set by the caller: tb_folded_add_gpu puts each GPU event's
                         * NVTX range above it as the frame "nvtx::<range>" */
} tb_folded;

/* Append the CPU sample stacks of every /host:* plane of `s` (sorted first).
 * 0 or -ENOMEM. A space without CPU samples adds nothing. */
int tb_folded_add_space(tb_folded *f, tb_space *s);

/* Append GPU work by the CPU stack that launched it: one stack per kernel,
 * copy or memset (events on /device:GPU:* "Stream #" lines), weighted by
 * its duration in ns, rooted at the thread of its CUDA call (the host
 * event with its correlation_id). The frames are those of the call's
 * thread's CPU sample spans that enclose the call and began more than one
 * sampling period (tbprof_cpu_hz) before it: what was on the stack in the
 * samples before and after the call, so they ran around it; frames that
 * came and went between two samples are not known and their time goes to
 * the deepest frame that is. The leaf is the GPU event's name. A call no
 * such frame encloses gets TB_FOLDED_UNSAMPLED; GPU work whose call is not
 * in the space sits under the thread TB_FOLDED_NO_CALL. With f->gpu_ranges,
 * the frame "nvtx::<name>" of the event's op range (its tf_op: the
 * innermost NVTX range open at its launch, step ranges aside; with torch's
 * op ranges, its op; nvtx_range in profiles without tf_op) sits between
 * the stack and the event, so the graph shows op time even without CPU
 * samples. Sorts the space. 0 or -ENOMEM. */
int tb_folded_add_gpu(tb_folded *f, tb_space *s);
/* The same for the host's waits for the GPU: the sync records (Stream Sync,
 * Event Sync, Context Sync) on the /device:GPU:* "CUDA sync" lines, each
 * weighted by how long it waited, under the stack of the call that
 * waited (cudaStreamSynchronize, cudaEventSynchronize,
 * cudaDeviceSynchronize: CUPTI records the synchronization APIs; a
 * synchronous cudaMemcpy is not one). */
int tb_folded_add_syncs(tb_folded *f, tb_space *s);
#define TB_FOLDED_SYNC_LINE "CUDA sync"
#define TB_FOLDED_RANGE_PREFIX "nvtx::"
#define TB_FOLDED_UNSAMPLED "[no CPU sample around the call]"
#define TB_FOLDED_NO_CALL "[CUDA call not in the capture]"
void tb_folded_free(tb_folded *f);

/* Total samples inside a CPU sample span (the one place that knows how the
 * sampler encodes counts); 0 when `e` is not a CPU sample span. */
uint64_t tb_cpu_span_samples(const tb_plane *p, const tb_line *l, const tb_event *e);

/* ns between the CPU samples of a host plane (from tbprof_cpu_hz); 0 when
 * it has none (sampling off, or a profile from elsewhere). */
int64_t tb_cpu_period_ns(const tb_plane *p);

/* A thread's on-CPU time as its CPU sample spans on line `l` cover it:
 * disjoint [start, end) pieces in time order, each credited to one frame:
 * the deepest Python frame (py::...) of the stack there, else its leaf
 * (for a "[kernel]" leaf, the function that entered the kernel).
 * A sample covers the sampling period up to it (sampler.h), so the pieces
 * add up to about samples x period; time between them the thread was off
 * CPU, not sampled, or (where only user space is sampled) in the kernel.
 * Names are borrowed from the plane. 0 or -ENOMEM (out zeroed). */
typedef struct tb_cpu_seg {
    int64_t start, end;
    const char *who;
} tb_cpu_seg;
typedef struct tb_cpu_segs {
    tb_cpu_seg *v;
    size_t n;
} tb_cpu_segs;
int tb_cpu_segments(const tb_plane *p, const tb_line *l, tb_cpu_segs *out);
/* The on-CPU time of `s` inside [lo, hi), calling each(ctx, who, ns) for
 * each piece (NULL: none); -ENOMEM when `each` fails. O(log n + pieces). */
int64_t tb_cpu_segments_in(const tb_cpu_segs *s, int64_t lo, int64_t hi,
                           int (*each)(void *ctx, const char *who, int64_t ns), void *ctx);

/* Per-function figures: self = samples with the function as leaf; total =
 * samples with the function anywhere on the stack (once per sample, even
 * when recursive). Sorted by self, then total, descending, then name. */
typedef struct tb_func_stat {
    const char *name;
    uint64_t self, total;
} tb_func_stat;
int tb_folded_functions(const tb_folded *f, tb_func_stat **out, size_t *n);

/* Writers. with_threads: the thread name is the root frame of each stack.
 * Folded: one line per distinct stack, "frame;frame;frame count\n", ';' in
 * names replaced by ':' and newlines by spaces. */
int tb_folded_write(const tb_folded *f, FILE *out, int with_threads);
/* speedscope file format (https://www.speedscope.app/file-format-schema.json):
 * one "sampled" profile per thread, frames shared; weights in nanoseconds
 * when f->ns. */
int tb_speedscope_write(const tb_folded *f, FILE *out, const char *name);

/* A call tree merged over all stacks (children by name). */
typedef struct tb_flame_node {
    const char *name;
    uint64_t total, self;
    struct tb_flame_node **kids;
    size_t nkids, cap_kids;
    uint32_t *index; /* while the tree is built: kids by name hash (wide nodes) */
    size_t index_cap;
} tb_flame_node;
/* Root is "all"; with_threads puts a level of thread names under it.
 * Children sorted by name (flame graph convention). NULL on ENOMEM. */
tb_flame_node *tb_flame_tree(const tb_folded *f, int with_threads);
void tb_flame_free(tb_flame_node *n);
/* SVG flame graph: rects with widths proportional to samples, <title> with
 * counts and percentages, names XML-escaped; frames narrower than
 * min_width_px are left out (their samples still count in the parent). */
typedef struct tb_flame_opts {
    const char *title;  /* NULL: "CPU flame graph" ("GPU time by launching stack" with ns) */
    int ns;             /* counts are nanoseconds (tb_folded_add_gpu), not samples */
    int width_px;       /* 0: 1200 */
    double min_width_px; /* 0: 0.1 */
} tb_flame_opts;
int tb_flame_svg(const tb_flame_node *root, FILE *out, const tb_flame_opts *o);

/* JSON string literal (quotes included), escaping per RFC 8259. */
void tb_json_str(FILE *out, const char *s);
/* XML text/attribute escaping (& < > " '), dropping control characters
 * XML 1.0 cannot hold. */
void tb_xml_str(FILE *out, const char *s);

#endif
