/* children_c.c - a C program whose fork()ed child follows it
 * (tbprof_follow_parent) and ends with _exit() right after the parent's
 * capture: the child's profile must still be written.
 *
 * The child is forked before any capture, calls tbprof_follow_parent() and
 * spins in child_spin() until the parent writes a byte to its pipe, then
 * _exit(3)s at once. The parent starts a capture (tbprof_start), spins
 * 400 ms of CPU in parent_spin(), stops it (tbprof_stop) and tells the
 * child to end (argv[1] ms later: a sanitizer build's write outlasts the
 * 500 ms that _exit waits). Prints "child PID follow RC" and "status S" (the child's
 * exit status) and "pid PID" (the parent).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tbapi.h"

static volatile uint64_t sink;

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) static void parent_spin(int64_t ns)
{
    int64_t end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 1000; i++)
            sink += (uint64_t)i * 7;
}

__attribute__((noinline)) static void child_spin(int fd)
{
    char b;
    for (;;) {
        for (int i = 0; i < 100000; i++)
            sink += (uint64_t)i * 3;
        if (read(fd, &b, 1) == 1)
            return;
    }
}

int main(int argc, char **argv)
{
    /* argv[1]: ms between the stop and the child's end (default 0: at once) */
    int end_after_ms = argc > 1 ? atoi(argv[1]) : 0;
    tbapi_init();
    int (*follow)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "tbprof_follow_parent");
    int p[2], ready[2];
    if (pipe(p) < 0 || pipe(ready) < 0)
        return 1;
    /* the agent's thread, started at start-up (TBPROF_SOCKET=on), idle
     * first: gcc's libasan leaves its allocator locked in a child forked
     * while another thread allocates, and the child's threads hang there */
    usleep(200000);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        close(p[1]);
        close(ready[0]);
        int rc = follow ? follow() : -1;
        printf("child %d follow %d\n", (int)getpid(), rc);
        fflush(stdout);
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        /* non-blocking reads between spins */
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        child_spin(p[0]);
        _exit(3);
    }
    close(p[0]);
    close(ready[1]);
    char b;
    if (read(ready[0], &b, 1) != 1)
        return 1;
    tb_start(0);
    parent_spin(400 * 1000000LL);
    tb_stop();
    if (end_after_ms > 0)
        usleep((useconds_t)end_after_ms * 1000);
    if (write(p[1], "e", 1) != 1)
        return 1;
    int st = 0;
    waitpid(pid, &st, 0);
    printf("status %d\npid %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1, (int)getpid());
    return 0;
}
