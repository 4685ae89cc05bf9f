/* ranges.h - which host events of one kind enclose each CUDA call on its
 * thread, and so, through the call's correlation id, which GPU work was
 * launched inside them. The kinds: user-annotation ranges (NVTX ranges
 * tbprof recorded, CUPTI's marker records) and CPU sample spans (the
 * sampled stack's frames).
 *
 * An event encloses a call when, on the same /host:* line, it starts at or
 * before the call starts and ends after it. Enclosing events are the
 * line's events of the category asked for (CPU sample spans also by their
 * sample counts, tb_cpu_span_samples), with a duration (marks enclose
 * nothing); calls are the line's other events with a correlation_id stat.
 * Nested and overlapping (nvtxRangeStart/End) ranges are handled alike:
 * the stack a call sees is every such event open at its start, outermost
 * (earliest) first.
 *
 * Used by the agent (nvtx_range on GPU events, below), `tbprof summary`
 * (GPU time launched inside each range) and the GPU flame graph
 * (folded.h: GPU time by the sampled stack that launched it).
 */
#ifndef TBPROF_AGENT_RANGES_H
#define TBPROF_AGENT_RANGES_H

#include <stdint.h>

#include "trace.h"

/* One call: the plane and line it is on, the call, its correlation id, and
 * the enclosing events open at its start (stack[0] outermost,
 * stack[depth-1] innermost). Return nonzero to stop the walk. */
typedef int (*tb_ranges_fn)(void *ctx, const tb_plane *host, const tb_line *line, const tb_event *call,
                            uint64_t corr, const tb_event *const *stack, size_t depth);

#define TB_RANGES_ALL_CALLS 1 /* also the calls no event encloses (depth 0) */

/* Call fn for every call inside at least one event of category `cat`
 * (every call, with TB_RANGES_ALL_CALLS), line by line. Lines must be
 * sorted (tb_space_sort). Returns 0, -ENOMEM, or fn's nonzero return. */
int tb_ranges_walk(const tb_space *s, tb_category cat, int flags, tb_ranges_fn fn, void *ctx);

/* Give each event on a /device:* plane whose correlation id is a call
 * inside a range the stat nvtx_range: the innermost range's name (a
 * string ref), as the reference GPU tracer attributes kernels to the
 * launching thread's NVTX range. Kernels, copies and memsets also get
 * tf_op: the innermost range that is not a step range (a host event with
 * the stat TB_ST_STEP_RANGE; none when only step ranges are open), which
 * xprof reads as the op that ran them (kernel stats' op name, framework op
 * stats, the trace viewer's op line). A step range is no op: each step's
 * kernels would be another op. Events that already have nvtx_range are
 * left alone. Sorts the space. Returns the events given nvtx_range, or
 * -ENOMEM / -ENOSPC (the space's byte limit: the lines done so far keep
 * theirs; a line that cannot be sorted: nothing added). */
int64_t tb_space_link_ranges(tb_space *s);

/* Steps across threads. xprof puts an event in a step when it nests in
 * the step's root event (_r) on the root's own line, or is linked to it;
 * GPU work joins through its launch's correlation id. CUDA calls made on
 * other threads (PyTorch's autograd threads run the backward pass; JAX and
 * TensorFlow launch from their runtime's threads) would be in no step, and
 * xprof's step analyses would miss their GPU work (all of it, for JAX).
 * So each step root on the line with the most of them becomes a producer
 * (_pt = TB_CONTEXT_GENERIC, _p = its index + 1) and each CUDA call on
 * another /host:* line that starts inside that step a consumer of it (_ct,
 * _c), as TraceMe's producer/consumer pairs do. Steps nobody else calls in
 * are left as they are. Sorts the space. Returns the calls linked, or
 * -ENOMEM / -ENOSPC (nothing added then to the line that failed; a line
 * that cannot be sorted: nothing added at all). */
int64_t tb_space_link_steps(tb_space *s);

#endif
