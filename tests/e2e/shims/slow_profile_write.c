/* slow_profile_write.c - an LD_PRELOAD shim (listed before libtbprof.so)
 * under which each write() into a file under a "plugins/profile" folder
 * takes 150 ms longer (TBTEST_SLOW_WRITE_MS: another figure), so a test
 * sees what the agent does while it writes a large profile: the job and
 * the control socket go on. Every other write() goes to the system call
 * unchanged.
 *
 * With TBTEST_SLOW_DUP_MS set, fcntl(F_DUPFD*) of a file under such a
 * folder that sits on fd 0-2 (as it would if the agent opened it while the
 * job has stderr closed) takes that much longer: what is at most
 * microseconds becomes long enough for a test to see. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int under_profile(int fd)
{
    char link[64], path[1024];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, path, sizeof(path) - 1);
    if (k <= 0)
        return 0;
    path[k] = '\0';
    return strstr(path, "/plugins/profile/") != NULL;
}

static void sleep_ms(long v)
{
    struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

__attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long); /* every command we pass one to takes an int or a pointer */
    va_end(ap);
    const char *ms = getenv("TBTEST_SLOW_DUP_MS");
    if (ms && fd >= 0 && fd <= 2 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && under_profile(fd))
        sleep_ms(atol(ms));
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

__attribute__((visibility("default"))) ssize_t write(int fd, const void *buf, size_t n)
{
    if (under_profile(fd)) {
        const char *ms = getenv("TBTEST_SLOW_WRITE_MS");
        sleep_ms(ms ? atol(ms) : 150);
    }
    return syscall(SYS_write, fd, buf, n);
}
