/* ctl.h - the per-process control socket (`tbprof trigger PID`).
 *
 * An abstract Unix stream socket named "tbprof.<uid>.<pidns>.<pid>" (no
 * file to create or clean up; gone when the process exits). <pidns> is the
 * inode of the process' pid namespace (/proc/self/ns/pid), so that
 * containers that share a network namespace but not a pid namespace
 * (hostNetwork pods, each job pid 1 or 7) do not take each other's name;
 * a client given a pid of its own view finds the name through
 * /proc/<pid>/ns/pid and the last NSpid of /proc/<pid>/status. The agent thread serves
 * it; a peer whose SO_PEERCRED uid differs from ours is refused, and the
 * client checks the server's uid and pid the same way. Protocol: one
 * request line, one answer line, then the server closes:
 *
 *   start steps=N       -> "capture started: N steps from step A" | "already capturing" | "error: ..."
 *   start steps=A-B     -> "capture waiting: steps A-B (this process is at step S)" | ...
 *                          (exactly those step numbers: ranks given the same
 *                          window capture the same steps)
 *   start duration=S    -> "capture started: duration S s" | ...
 *   start ... run=NAME  -> the same, the profile going into run folder NAME
 *   stop                -> "capture stopping" | "capture cancelled: ..." (a
 *                          window still waiting) | "error: not capturing"
 *   follow              -> "follow page=<pid>" with the fd of this process's
 *                          page for its children (follow.h) | "error: ..."
 *   status              -> "state=idle step=N captures=K last=<path or ->"
 *                          [" trigger=..."] [" waiting=steps_A-B"]
 */
#ifndef TBPROF_AGENT_CTL_H
#define TBPROF_AGENT_CTL_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#define TB_CTL_LINE 256
#define TB_CTL_RUN_MAX 64 /* run=NAME: the longest name */

/* Whether s may be a request's run=NAME: 1..TB_CTL_RUN_MAX of
 * [A-Za-z0-9._-], not starting with '.' (one folder name, never a path). */
int tb_ctl_run_name_ok(const char *s);

/* The inode of pid's pid namespace (pid 0: ours), 0 when /proc does not
 * say. */
unsigned long long tb_ctl_pidns(pid_t pid);

/* Address of the socket of the process numbered `pid` in pid namespace
 * `ns`; returns the address length. */
socklen_t tb_ctl_addr(unsigned long long ns, pid_t pid, uid_t uid, struct sockaddr_un *a);

/* Bind + listen (non-blocking, close-on-exec). fd or -errno. */
int tb_ctl_listen(pid_t pid);

/* Answer one request line into out (no newline); *pass_fd (-1 on entry):
 * an fd to send the client with the answer (SCM_RIGHTS), closed after. */
typedef void (*tb_ctl_handler)(const char *line, char *out, size_t n, int *pass_fd);

/* Accept every pending connection on listen_fd and answer each (bounded:
 * a client gets 200 ms to send its line). Never blocks longer. */
void tb_ctl_serve(int listen_fd, tb_ctl_handler h);

/* Client: send `line` to process pid, read the answer (timeout_ms).
 * 0 or -errno (-ECONNREFUSED / -ENOENT: no agent there; -EPERM: the
 * socket belongs to another user or pid; -ETIMEDOUT: no answer in time:
 * the agent thread answers between its other work, not while it writes a
 * profile). */
int tb_ctl_request(pid_t pid, const char *line, char *answer, size_t n, int timeout_ms);

/* Client: the same, for a request whose answer brings an fd: *fd_out
 * (close-on-exec) or -1 where none came. */
int tb_ctl_request_fd(pid_t pid, const char *line, char *answer, size_t n, int timeout_ms, int *fd_out);

/* Client: whether pid's socket (ours: this uid) is bound, from
 * /proc/net/unix: 1 yes, 0 no, -1 cannot tell. */
int tb_ctl_exists(pid_t pid);

/* Client: the pids of this uid whose socket is bound in our pid namespace
 * (up to max into out).
 * Returns how many there are, -1 when /proc/net/unix cannot be read. */
int tb_ctl_list(pid_t *out, int max);

#endif
