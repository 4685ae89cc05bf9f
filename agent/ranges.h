/* ranges.h - which user-annotation ranges (NVTX ranges tbprof recorded,
 * CUPTI's marker records) enclose each CUDA call on its thread, and so,
 * through the call's correlation id, which GPU work was launched inside
 * which range.
 *
 * A range encloses a call when, on the same /host:* line, the range starts
 * at or before the call starts and ends after it. Ranges are the line's
 * events of category TB_CAT_USER with a duration (marks enclose nothing);
 * calls are the line's events with a correlation_id stat. Nested and
 * overlapping (nvtxRangeStart/End) ranges are handled alike: the stack a
 * call sees is every range open at its start, outermost (earliest) first.
 *
 * Used by the agent (nvtx_range on GPU events, below) and by
 * `tbprof summary` (GPU time launched inside each range).
 */
#ifndef TBPROF_AGENT_RANGES_H
#define TBPROF_AGENT_RANGES_H

#include <stdint.h>

#include "trace.h"

/* One call inside ranges: its correlation id, the plane it is on, and the
 * ranges open at its start (stack[0] outermost, stack[depth-1] innermost;
 * depth >= 1). Return nonzero to stop the walk. */
typedef int (*tb_ranges_fn)(void *ctx, const tb_plane *host, uint64_t corr, const tb_event *const *stack,
                            size_t depth);

/* Call fn for every call inside at least one range, line by line. Lines
 * must be sorted (tb_space_sort). Returns 0, -ENOMEM, or fn's nonzero
 * return. */
int tb_ranges_walk(const tb_space *s, tb_ranges_fn fn, void *ctx);

/* Give each event on a /device:* plane whose correlation id is a call
 * inside a range the stat nvtx_range: the innermost range's name (a
 * string ref), as the reference GPU tracer attributes kernels to the
 * launching thread's NVTX range. Events that already have the stat are
 * left alone. Sorts the space. Returns the events given it, or -ENOMEM /
 * -ENOSPC (the space's byte limit: the lines done so far keep theirs). */
int64_t tb_space_link_ranges(tb_space *s);

#endif
