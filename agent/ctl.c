/* ctl.c - control socket server and client (see ctl.h). */
#include "ctl.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "util.h"

unsigned long long tb_ctl_pidns(pid_t pid)
{
    char path[64];
    if (pid > 0)
        snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/ns/pid");
    struct stat st;
    return stat(path, &st) == 0 ? (unsigned long long)st.st_ino : 0;
}

socklen_t tb_ctl_addr(unsigned long long ns, pid_t pid, uid_t uid, struct sockaddr_un *a)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    /* abstract: sun_path[0] = '\0', the name follows (not NUL-terminated) */
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "tbprof.%u.%llu.%d", (unsigned)uid, ns,
                     (int)pid);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Where process `pid` (as this process sees it) binds its socket: its pid
 * namespace, and its pid in that namespace (the last NSpid of its status;
 * the same as pid unless it runs in a namespace below ours). Where /proc
 * does not say, our namespace and pid itself. */
static void target_ns(pid_t pid, unsigned long long *ns, pid_t *inner)
{
    if (!(*ns = tb_ctl_pidns(pid)))
        *ns = tb_ctl_pidns(0);
    *inner = pid;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "NSpid:", 6))
            continue;
        char *last = NULL, *save = NULL;
        for (char *t = strtok_r(line + 6, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
            last = t;
        long v = last ? strtol(last, NULL, 10) : 0;
        if (v > 0)
            *inner = (pid_t)v;
        break;
    }
    if (f)
        fclose(f);
}

int tb_ctl_listen(pid_t pid)
{
    int fd = tb_fd_above_stdio(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd < 0)
        return -errno;
    struct sockaddr_un a;
    socklen_t len = tb_ctl_addr(tb_ctl_pidns(0), pid, getuid(), &a);
    if (bind(fd, (struct sockaddr *)&a, len) < 0 || listen(fd, 8) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int peer_ok(int fd, pid_t want_pid)
{
    struct ucred cr;
    socklen_t l = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0)
        return 0;
    if (cr.uid != getuid())
        return 0;
    return want_pid <= 0 || cr.pid == want_pid;
}

/* recv() of what is there (MSG_DONTWAIT), taking an fd that came with it
 * into *got where got is given and still -1; any other fd is closed. 0 or
 * -1 as recv. */
static ssize_t recv_fd(int fd, char *buf, size_t n, int *got)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(4 * sizeof(int))];
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = n};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    ssize_t k = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    /* every fd that came is ours to close but the first one wanted (the
     * kernel closes the ones that did not fit: MSG_CTRUNC) */
    for (struct cmsghdr *cm = k >= 0 ? CMSG_FIRSTHDR(&m) : NULL; cm; cm = CMSG_NXTHDR(&m, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len < CMSG_LEN(0))
            continue;
        size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
            int f;
            memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (got && *got < 0 && nfd == 1)
                *got = tb_fd_above_stdio(f);
            else
                close(f);
        }
    }
    return k;
}

/* Read one line (up to its newline, at most n-1 bytes) by `deadline`.
 * Returns its length (newline cut off), -1 when no newline came within the
 * limit (too long), -2 when the peer closed or the deadline passed before
 * the newline (an incomplete request is never acted on). Bytes already
 * received are read even after the deadline. An fd sent with the line goes
 * into *got (got given; see recv_fd), else is closed. */
static ssize_t read_line(int fd, char *buf, size_t n, int64_t deadline, int *got)
{
    size_t len = 0;
    int nl = 0;
    while (len + 1 < n) {
        ssize_t k = recv_fd(fd, buf + len, n - 1 - len, got);
        if (k > 0) {
            nl = memchr(buf + len, '\n', (size_t)k) != NULL;
            len += (size_t)k;
            if (nl)
                break;
            continue;
        }
        if (k == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK))
            break; /* closed, or an error */
        if (errno == EINTR)
            continue;
        int64_t left = (deadline - tb_mono_ns()) / 1000000;
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
    }
    buf[len] = '\0';
    if (!nl)
        return len + 1 >= n ? -1 : -2;
    *(char *)memchr(buf, '\n', len) = '\0';
    return (ssize_t)strlen(buf);
}

static void send_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len) {
        ssize_t k = send(fd, s, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;
        s += k;
        len -= (size_t)k;
    }
}

/* The answer with fd attached to its first byte (SCM_RIGHTS), the rest as
 * send_all sends it. */
static void send_with_fd(int c, const char *s, int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct iovec iov = {.iov_base = (void *)s, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ssize_t k;
    do
        k = sendmsg(c, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (k < 0 && errno == EINTR);
    if (k == 1)
        send_all(c, s + 1);
}

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The client closed its socket (after its request line, which was read).
 * Only a full close: one that shut its write side only (shutdown(SHUT_WR)
 * after the request, as `socat` and `nc -N` do) still reads the answer. */
static int client_gone(int c)
{
    struct pollfd p = {.fd = c, .events = 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR));
}

void tb_ctl_serve(int listen_fd, tb_ctl_handler h)
{
    /* one deadline for every pending client (each still gets 50 ms): silent
     * ones cannot hold the agent thread 200 ms each */
    int64_t deadline = tb_mono_ns() + 200000000;
    for (int i = 0; i < 16; i++) {
        int c = tb_fd_above_stdio(accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (c < 0)
            return; /* EAGAIN: nothing more pending */
        char line[TB_CTL_LINE], out[TB_CTL_LINE + 4096];
        ssize_t k;
        if (!peer_ok(c, 0)) {
            send_all(c, "error: permission denied (different user)\n");
        } else if ((k = read_line(c, line, sizeof(line), max_i64(deadline, tb_mono_ns() + 50000000), NULL)) < 0) {
            send_all(c, k == -1 ? "error: request too long\n" : "error: incomplete request (no newline)\n");
        } else if (client_gone(c)) {
            /* queued before the agent thread started (TBPROF_SOCKET=auto) and
             * given up on since: a capture nobody waits for is not started */
            tb_debug("control socket: dropped '%s' from a client that left", line);
        } else {
            int pass = -1;
            h(line, out, sizeof(out) - 1, &pass);
            strcat(out, "\n");
            if (pass >= 0)
                send_with_fd(c, out, pass);
            else
                send_all(c, out);
            if (pass >= 0)
                close(pass);
        }
        close(c);
    }
}

int tb_ctl_request_fd(pid_t pid, const char *line, char *answer, size_t n, int timeout_ms, int *fd_out)
{
    if (fd_out)
        *fd_out = -1;
    int64_t deadline = tb_mono_ns() + (int64_t)timeout_ms * 1000000;
    /* (above stdio: in a worker this runs beside the job's own I/O) */
    int fd = tb_fd_above_stdio(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd < 0)
        return -errno;
    struct sockaddr_un a;
    unsigned long long ns;
    pid_t inner;
    target_ns(pid, &ns, &inner);
    socklen_t len = tb_ctl_addr(ns, inner, getuid(), &a);
    /* non-blocking: a blocking connect() waits without limit while the
     * server's backlog is full (a stopped or hung process); tried again
     * after 10 ms, then less often (200 ms at most) */
    int64_t again_ns = 10000000;
    while (connect(fd, (struct sockaddr *)&a, len) < 0) {
        int e = errno;
        int64_t left = deadline - tb_mono_ns();
        if ((e == EAGAIN || e == EINTR) && left > 0) {
            struct timespec ts = {0, again_ns < left ? again_ns : left};
            nanosleep(&ts, NULL);
            again_ns = again_ns < 100000000 ? again_ns * 2 : 200000000;
            continue;
        }
        close(fd);
        return e == EAGAIN ? -ETIMEDOUT : -e;
    }
    if (!peer_ok(fd, pid)) {
        close(fd);
        return -EPERM;
    }
    char req[TB_CTL_LINE + 2];
    snprintf(req, sizeof(req), "%s\n", line);
    send_all(fd, req);
    ssize_t k = read_line(fd, answer, n, deadline, fd_out); /* (an fd comes with its first bytes) */
    close(fd);
    if (k <= 0) { /* no answer by the deadline (busy, stopped), or cut short */
        if (fd_out && *fd_out >= 0) {
            close(*fd_out);
            *fd_out = -1;
        }
        /* (the waits end within a millisecond of the deadline) */
        return k == -2 && tb_mono_ns() + 1000000 >= deadline ? -ETIMEDOUT : -EPROTO;
    }
    return 0;
}

int tb_ctl_request(pid_t pid, const char *line, char *answer, size_t n, int timeout_ms)
{
    return tb_ctl_request_fd(pid, line, answer, n, timeout_ms, NULL);
}

/* The pids whose socket (this uid's, in pid namespace `ns`) is bound,
 * from /proc/net/unix: all of them into out (up to max), or only `want`
 * (want > 0). Returns how many were found (all, even past max), -1 when
 * it cannot tell. */
static int scan_sockets(unsigned long long ns, pid_t want, pid_t *out, int max)
{
    char prefix[64];
    int pl = snprintf(prefix, sizeof(prefix), "@tbprof.%u.%llu.", (unsigned)getuid(), ns);
    FILE *f = fopen("/proc/net/unix", "re");
    if (!f)
        return -1;
    char line[512];
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        /* the path is the last field */
        char *p = strrchr(line, ' ');
        p = p ? p + 1 : line;
        if (strncmp(p, prefix, (size_t)pl))
            continue;
        char *end;
        long v = strtol(p + pl, &end, 10);
        if (end == p + pl || (*end != '\n' && *end != '\0') || v <= 0 || (want > 0 && v != want))
            continue;
        int dup = 0; /* a forked child's copy of the socket is listed again */
        for (int i = 0; i < found && i < max; i++)
            dup |= out && out[i] == (pid_t)v;
        if (dup)
            continue;
        if (out && found < max)
            out[found] = (pid_t)v;
        found++;
    }
    fclose(f);
    return found;
}

int tb_ctl_exists(pid_t pid)
{
    unsigned long long ns;
    pid_t inner;
    target_ns(pid, &ns, &inner);
    int n = scan_sockets(ns, inner, NULL, 0);
    return n < 0 ? -1 : n > 0;
}

int tb_ctl_list(pid_t *out, int max) { return scan_sockets(tb_ctl_pidns(0), 0, out, max); }

int tb_ctl_run_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TB_CTL_RUN_MAX || s[0] == '.')
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}
