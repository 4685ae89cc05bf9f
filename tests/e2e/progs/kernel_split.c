/* kernel_split.c - one thread that splits its CPU time between user-space
 * arithmetic (user_work) and reading /dev/zero (read_zero: the kernel
 * clears the buffer, so nearly all of it is kernel time, in every build),
 * for the CPU
 * sampler's kernel-time test.
 *
 *   kernel_split [-m CAPTURE_MS]   (CPU time of the thread, at most 20x that of wall time)
 *
 * The capture runs through the tbprof C API on the main thread (no-op
 * without the preload). Prints "tid TID", "capture BEGIN_NS END_NS" (epoch
 * ns), "spent NS_USER NS_READ" (thread CPU time measured in each function)
 * and "rusage UTIME_NS STIME_NS" (the thread's user and system time over
 * the capture, from getrusage(RUSAGE_THREAD)): what the samples should
 * give back.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"

static volatile double sink;

__attribute__((noinline, noipa)) void store_result(double x) { sink = x; }

__attribute__((noinline, noipa)) void user_work(long iters)
{
    double x = sink;
    for (long i = 0; i < iters; i++)
        x = x * 1.0000001 + 1.0;
    store_result(x);
}

/* The system call itself, not read(): a sanitizer's read() interceptor
 * checks the whole buffer in user space (under TSan most of the time). */
__attribute__((noinline, noipa)) long read_zero(int fd, char *buf, size_t len, int times)
{
    long got = 0;
    for (int i = 0; i < times; i++) {
        long r = syscall(SYS_read, fd, buf, len);
        if (r > 0)
            got += r;
    }
    return got;
}

static int64_t now_ns(int clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t tv_ns(struct timeval tv) { return (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000; }

int main(int argc, char **argv)
{
    int ms = 1500, opt;
    while ((opt = getopt(argc, argv, "m:")) != -1) {
        if (opt == 'm')
            ms = atoi(optarg);
        else {
            fprintf(stderr, "usage: kernel_split [-m MS]\n");
            return 2;
        }
    }
    int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    size_t len = 1 << 20;
    char *buf = malloc(len);
    if (fd < 0 || !buf) {
        perror("kernel_split: /dev/zero");
        return 1;
    }
    read_zero(fd, buf, len, 1); /* the buffer's pages faulted in before the capture */
    tbapi_init();
    int64_t begin = now_ns(CLOCK_REALTIME);
    if (tb_start(0) < 0)
        fprintf(stderr, "kernel_split: tbprof_start failed (no preload?)\n");
    struct rusage r0, r1;
    getrusage(RUSAGE_THREAD, &r0);
    /* CAPTURE_MS of this thread's CPU time, not of wall time: on a loaded
     * machine the samples (one per ms of CPU) stay as many; the wall time is
     * bounded at 20x */
    int64_t in_user = 0, in_read = 0, until = now_ns(CLOCK_MONOTONIC) + (int64_t)ms * 20000000;
    while (in_user + in_read < (int64_t)ms * 1000000 && now_ns(CLOCK_MONOTONIC) < until) {
        int64_t t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        user_work(130000);
        int64_t t1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        read_zero(fd, buf, len, 16);
        int64_t t2 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        in_user += t1 - t0;
        in_read += t2 - t1;
    }
    getrusage(RUSAGE_THREAD, &r1);
    int64_t end = now_ns(CLOCK_REALTIME);
    tb_stop();
    printf("tid %d\n", (int)syscall(SYS_gettid));
    printf("capture %lld %lld\n", (long long)begin, (long long)end);
    printf("spent %lld %lld\n", (long long)in_user, (long long)in_read);
    printf("rusage %lld %lld\n", (long long)(tv_ns(r1.ru_utime) - tv_ns(r0.ru_utime)),
           (long long)(tv_ns(r1.ru_stime) - tv_ns(r0.ru_stime)));
    fflush(stdout);
    close(fd);
    free(buf);
    return 0;
}
