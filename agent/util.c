/* util.c - small internal helpers (see util.h). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int tb_grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    if (elem == 0)
        return -ENOMEM;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / elem) /* ncap * 2 * elem would overflow */
            return -ENOMEM;
        ncap *= 2;
    }
    if (ncap > SIZE_MAX / elem)
        return -ENOMEM;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

void tb_fd_id_take(int fd, tb_fd_id *id)
{
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0)
        *id = (tb_fd_id){st.st_dev, st.st_ino};
    else
        *id = (tb_fd_id){0, 0};
}

int tb_fd_id_is(int fd, const tb_fd_id *id)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == id->dev && st.st_ino == id->ino;
}

int tb_fd_above_stdio(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int e = errno;
    close(fd);
    errno = e;
    return high;
}

DIR *tb_opendir_above_stdio(const char *path)
{
    int fd = tb_fd_above_stdio(open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d && fd >= 0) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return d;
}

unsigned tb_stdio_hold(void)
{
    unsigned held = 0;
    for (int k = 0; k < 3; k++) {
        /* the lowest free fd; O_NONBLOCK marks it ours (still_held) */
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            break;
        if (fd > 2) { /* 0, 1 and 2 all taken (the usual case) */
            close(fd);
            break;
        }
        held |= 1u << fd;
    }
    return held;
}

/* Is fd still the /dev/null tb_stdio_hold put there? A job thread may have
 * dup2()ed its own file onto the number meanwhile (putting its stdout
 * back): that one is not ours to close. Ours is a character device opened
 * read-only, non-blocking and close-on-exec; dup2 clears close-on-exec, a
 * stdout is opened for writing, and nobody opens a /dev/null of theirs
 * non-blocking. */
static int still_held(int fd)
{
    struct stat st;
    int fdfl = fcntl(fd, F_GETFD), fl = fcntl(fd, F_GETFL);
    return fdfl >= 0 && (fdfl & FD_CLOEXEC) && fl >= 0 && (fl & O_ACCMODE) == O_RDONLY && (fl & O_NONBLOCK) &&
           fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
}

void tb_stdio_release(unsigned held)
{
    for (int fd = 0; fd < 3; fd++)
        if ((held & (1u << fd)) && still_held(fd))
            close(fd);
}

void tb_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

int tb_env_path_add(const char *var, const char *add, int front, const char *seps)
{
    const char *old = getenv(var);
    size_t al = strlen(add);
    for (const char *p = old ? old + strspn(old, seps) : NULL; p && *p; p += strspn(p, seps)) {
        size_t l = strcspn(p, seps);
        if (l == al && !strncmp(p, add, l))
            return 0;
        p += l;
    }
    size_t n = al + (old ? strlen(old) : 0) + 2;
    char *v = malloc(n);
    if (!v)
        return -ENOMEM;
    if (!old || !*old)
        snprintf(v, n, "%s", add);
    else
        snprintf(v, n, "%s:%s", front ? add : old, front ? old : add);
    int rc = setenv(var, v, 1) < 0 ? -errno : 0;
    free(v);
    return rc;
}

/* /proc/PID/stat read into buf: the text after the command name (field 3,
 * the state, on), the name itself in comm (may be NULL); NULL where /proc
 * does not say (gone, hidden). The name may hold spaces and parentheses:
 * it ends at the last ')'. */
static char *proc_stat_read(int pid, char *buf, size_t n, char *comm, size_t ncomm)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    size_t k = f ? fread(buf, 1, n - 1, f) : 0;
    if (f)
        fclose(f);
    buf[k] = '\0';
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    if (!open || !close || close < open)
        return NULL;
    if (comm)
        snprintf(comm, ncomm, "%.*s", (int)(close - open - 1), open + 1);
    return close + 1;
}

int tb_proc_stat(int pid, char *state, int *ppid)
{
    char buf[1024];
    const char *p = proc_stat_read(pid, buf, sizeof(buf), NULL, 0);
    return p && sscanf(p, " %c %d", state, ppid) == 2 ? 0 : -1;
}

int tb_proc_start(int pid, char *comm, size_t ncomm, time_t *start)
{
    char buf[1024];
    char *p = proc_stat_read(pid, buf, sizeof(buf), comm, ncomm), *end;
    if (!p)
        return -1;
    /* after "pid (comm) ": state is field 3, starttime field 22 */
    unsigned long long ticks = 0;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (field == 22) {
            ticks = strtoull(p, &end, 10);
            if (end == p)
                return -1;
        }
        while (*p && *p != ' ')
            p++;
    }
    long hz = sysconf(_SC_CLK_TCK);
    unsigned long long btime = 0;
    char line[256];
    FILE *f;
    if ((f = fopen("/proc/stat", "re"))) {
        while (fgets(line, sizeof(line), f))
            if (!strncmp(line, "btime ", 6))
                btime = strtoull(line + 6, NULL, 10);
        fclose(f);
    }
    if (hz <= 0 || !btime)
        return -1;
    *start = (time_t)(btime + ticks / (unsigned long long)hz);
    return 0;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TB_NO_ASAN_UTIL __attribute__((no_sanitize_address))
#endif
#endif
#if !defined(TB_NO_ASAN_UTIL) && defined(__SANITIZE_ADDRESS__)
#define TB_NO_ASAN_UTIL __attribute__((no_sanitize_address))
#endif
#ifndef TB_NO_ASAN_UTIL
#define TB_NO_ASAN_UTIL
#endif

/* The plain copy: byte by byte, not memcpy, so that ASan's redzones around
 * a loaded object's globals do not trip on it. */
TB_NO_ASAN_UTIL static void copy_plain(unsigned char *dst, uint64_t addr, size_t len)
{
    const volatile unsigned char *src = (const volatile unsigned char *)(uintptr_t)addr;
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i];
}

static int self_read_refused; /* process_vm_readv said ENOSYS/EPERM once: plain copies from then on */

int tb_self_read(void *dst, uint64_t addr, size_t len, int in_object)
{
    if (!len)
        return 0;
    if (addr + len < addr)
        return -1;
    if (!__atomic_load_n(&self_read_refused, __ATOMIC_RELAXED)) {
        struct iovec local = {dst, len}, remote = {(void *)(uintptr_t)addr, len};
        /* getpid() each time, not kept: a fork child is another pid */
        ssize_t k = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (k == (ssize_t)len)
            return 0;
        if (k >= 0 || (errno != ENOSYS && errno != EPERM))
            return -1; /* EFAULT: not mapped (any more) */
        __atomic_store_n(&self_read_refused, 1, __ATOMIC_RELAXED);
    }
    if (!in_object)
        return -1;
    copy_plain(dst, addr, len);
    return 0;
}

void tb_crc_table(uint32_t table[256], uint32_t poly)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
        table[i] = c;
    }
}

uint32_t tb_crc_update(const uint32_t table[256], uint32_t crc, const void *p, size_t n)
{
    const unsigned char *b = p;
    crc = ~crc;
    while (n--)
        crc = table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}
