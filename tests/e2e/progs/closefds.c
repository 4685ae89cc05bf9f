/* closefds.c - a job that closes every fd it did not open, as a daemon does
 * at start-up (closefrom(3)), then opens files of its own, which get the
 * numbers back, for tests/e2e/test_agent_lifecycle.py.
 *
 *   closefds FILE...
 *   closefds -t
 *
 *   closefds -f FILE
 *
 * -f: single-threaded, closes every fd it did not open, opens FILE (it
 * gets the number of tbprof's control socket), then forks: the child reads
 * the file and prints "child CONTENT" (up to 200 bytes), as a launcher's
 * worker uses a file its parent opened.
 *
 * -t: starts a capture (tbprof_start), and while it runs closes every fd
 * it did not open (tbprof's SIGTERM pipe among them), then sends itself
 * SIGTERM: it should die of it; prints "survived" and exits 0 when not.
 *
 * Closes fds 3..1023, opens each FILE read-only, idles 1 s and prints
 * "cpu_ms N" (the process's CPU time over that second), then reads each
 * file and prints "file I CONTENT" (what read() returned, up to 200
 * bytes), then asks for a 300 ms capture (tbprof_start) while it works and
 * prints "start RC" and "last PATH" (tbprof_last_profile after it). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"
#include "tbapi.h"

static double cpu_ms(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e3 +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e3;
}

static int close_then_term(void)
{
    if (tb_start(0) < 0)
        fprintf(stderr, "closefds: tbprof_start failed (no preload?)\n");
    for (int i = 0; i < 500 && !tb_capturing(); i++)
        usleep(10000);
    printf("capturing %d\n", tb_capturing());
    fflush(stdout);
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    usleep(200000);
    kill(getpid(), SIGTERM);
    spin_ms(3000);
    printf("survived\n");
    return 0;
}

static int close_open_fork(const char *file)
{
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    int fd = open(file, O_RDONLY);
    printf("fd %d\n", fd);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char buf[201] = "";
        ssize_t k = read(fd, buf, 200);
        buf[k > 0 ? k : 0] = '\0';
        printf("child %s\n", buf);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    tbapi_init();
    if (argc > 1 && strcmp(argv[1], "-t") == 0)
        return close_then_term();
    if (argc > 2 && strcmp(argv[1], "-f") == 0)
        return close_open_fork(argv[2]);
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    int fds[16], n = 0;
    for (int i = 1; i < argc && n < 16; i++)
        fds[n++] = open(argv[i], O_RDONLY);
    double c0 = cpu_ms();
    usleep(1000000);
    printf("cpu_ms %.0f\n", cpu_ms() - c0);
    for (int i = 0; i < n; i++) {
        char buf[201] = "";
        ssize_t k = fds[i] >= 0 ? read(fds[i], buf, 200) : -1;
        buf[k > 0 ? k : 0] = '\0';
        printf("file %d %s\n", i, buf);
    }
    fflush(stdout);
    int rc = tb_start(300);
    spin_ms(500);
    for (int i = 0; i < 100 && tb_capturing(); i++)
        usleep(20000);
    usleep(200000);
    printf("start %d\nlast %s\n", rc, tb_last());
    return 0;
}
