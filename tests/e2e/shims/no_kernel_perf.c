/* no_kernel_perf.c - an LD_PRELOAD shim (listed before libtbprof.so) under
 * which perf_event_open refuses events that count kernel mode with EACCES,
 * as kernel.perf_event_paranoid=2 does for a user without CAP_PERFMON,
 * whoever runs the test. Events with exclude_kernel set, and every other
 * syscall(), go to the next definition. */
#include <dlfcn.h>
#include <errno.h>
#include <linux/perf_event.h>
#include <stdarg.h>
#include <sys/syscall.h>

typedef long (*syscall_fn)(long, ...);

__attribute__((visibility("default"))) long syscall(long n, ...)
{
    /* syscall() takes up to six register arguments: pass six on (extra
     * ones read as whatever the registers hold, which the kernel ignores) */
    va_list ap;
    va_start(ap, n);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (n == SYS_perf_event_open) {
        const struct perf_event_attr *attr = (const struct perf_event_attr *)a[0];
        if (attr && !attr->exclude_kernel) {
            errno = EACCES;
            return -1;
        }
    }
    /* looked up at the first call, from any thread (the agent's first) */
    static void *next_p;
    syscall_fn next;
    *(void **)&next = __atomic_load_n(&next_p, __ATOMIC_ACQUIRE);
    if (!next) {
        *(void **)&next = dlsym(RTLD_NEXT, "syscall");
        __atomic_store_n(&next_p, *(void **)&next, __ATOMIC_RELEASE);
    }
    if (!next) {
        errno = ENOSYS;
        return -1;
    }
    return next(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
