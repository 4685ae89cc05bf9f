/* no_tmpfile.c - an LD_PRELOAD shim (listed before libtbprof.so) that makes
 * open()/openat() with O_TMPFILE fail with EOPNOTSUPP, as on NFS and most
 * parallel file systems, so the tests exercise the agent's named-temporary
 * path on a local disk. Everything else goes to the system call unchanged. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

static long open_mode(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, int) : 0;
}

__attribute__((visibility("default"))) int openat(int dfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    long mode = open_mode(flags, ap);
    va_end(ap);
    if ((flags & O_TMPFILE) == O_TMPFILE) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return (int)syscall(SYS_openat, dfd, path, flags, mode);
}

__attribute__((visibility("default"))) int openat64(int dfd, const char *path, int flags, ...)
    __attribute__((alias("openat")));
