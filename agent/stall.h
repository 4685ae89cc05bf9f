/* stall.h - saying so when a call into a library we do not control does
 * not come back.
 *
 * tbprof cannot break a deadlock inside CUPTI or the CUDA driver (NVIDIA
 * fixed one in cuptiActivityDisable in CUDA 13.0 Update 1; torch.profiler
 * users report jobs hung in its stop), but it can name the call, so a user
 * whose job stopped knows where and what to change. Around such a call:
 *
 *     int w = tb_stall_enter("GPU tracing: cuptiActivityDisable (...)", advice);
 *     ... the call ...
 *     tb_stall_leave(w);
 *
 * A watcher thread (started at the first tb_stall_enter, parked on a
 * condition variable while nothing is watched) warns once when a call has
 * been in for TBPROF_STALL_WARN_MS, with the advice; the call's return is
 * warned about too. No-ops when TBPROF_STALL_WARN_MS=0. Any thread; calls
 * on one thread do not nest. Not from a signal handler. The agent watches
 * its CUPTI calls (cupti/gpu.c) and its profile writes (a hung file system
 * under TBPROF_LOGDIR), and lists the slow ones in the next profile.
 */
#ifndef TBPROF_AGENT_STALL_H
#define TBPROF_AGENT_STALL_H

#include <stddef.h>

/* what: the call and where it runs; advice: what to do (may be NULL).
 * Both are copied. Returns a token for tb_stall_leave, -1 when not
 * watched (off, every slot in use, no watcher thread). */
int tb_stall_enter(const char *what, const char *advice);
void tb_stall_leave(int token);
/* Progress inside a long watched call (a profile written piece by piece):
 * the limit counts from now, unless the call was already warned about. */
void tb_stall_touch(int token);

/* The calls that took TBPROF_STALL_WARN_MS or longer since the last take,
 * as "what: 12.3 s; ..." in out (cut to n); returns how many. */
int tb_stall_take(char *out, size_t n);

/* In a forked child: the watcher thread is gone; start over. */
void tb_stall_fork_child(void);

#endif
