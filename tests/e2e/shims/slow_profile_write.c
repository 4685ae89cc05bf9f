/* slow_profile_write.c - an LD_PRELOAD shim (listed before libtbprof.so)
 * under which each write() into a file under a "plugins/profile" folder
 * takes 150 ms longer (TBTEST_SLOW_WRITE_MS: another figure), so a test
 * sees what the agent does while it writes a large profile: the job and
 * the control socket go on. Every other write() goes to the system call
 * unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

__attribute__((visibility("default"))) ssize_t write(int fd, const void *buf, size_t n)
{
    char link[64], path[1024];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, path, sizeof(path) - 1);
    if (k > 0) {
        path[k] = '\0';
        if (strstr(path, "/plugins/profile/")) {
            const char *ms = getenv("TBTEST_SLOW_WRITE_MS");
            long v = ms ? atol(ms) : 150;
            struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return syscall(SYS_write, fd, buf, n);
}
