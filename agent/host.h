/* host.h - the /host:CPU plane: one line per thread, id = kernel tid,
 * name = the thread's name (/proc/self/task/<tid>/comm at capture end,
 * or the name remembered when it was seen alive). Every source that puts
 * events on host threads (steps, CUDA API calls, CPU samples) uses this so
 * they land on the same lines. */
#ifndef TBPROF_AGENT_HOST_H
#define TBPROF_AGENT_HOST_H

#include <sys/types.h>

#include "trace.h"

#define TB_HOST_PLANE "/host:CPU"

tb_plane *tb_host_plane(tb_space *s);
/* Line for thread `tid`; created on first use and named after the thread. */
tb_line *tb_host_line(tb_space *s, pid_t tid);
/* Remember a thread's name while it is alive (it may end before collect):
 * the name it had at `at` (CLOCK_MONOTONIC ns), kept unless a name of a
 * later time is known (names reach us out of order: read from /proc, and
 * in the kernel's rename records of other threads' rings). */
void tb_host_remember_name(pid_t tid, const char *name, int64_t at);
/* The capture window [begin, end) in epoch ns. The agent puts it on the host
 * plane (tbprof_capture_begin_ns / _end_ns) before sources collect, so a
 * source can keep only what happened inside it. 0 when it is set, else
 * -ENOENT (then keep everything). */
int tb_capture_window(tb_space *s, int64_t *begin_ns, int64_t *end_ns);

/* The calling thread's kernel tid (cached per thread). */
pid_t tb_gettid(void);

#endif
