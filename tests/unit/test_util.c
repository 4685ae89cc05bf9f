/* test_util.c - small helpers (agent/util.h): holding the free ones of fds
 * 0-2 while a library opens fds it keeps, and letting go of only those
 * still ours.
 *
 * Checked: a hold takes a closed stdout and the release frees it again; a
 * job that puts its stdout back with dup2() while the agent holds the
 * number keeps it (before: the release closed the job's stdout, and its
 * next print failed with EBADF, as CI's test_cpu_python once did); the
 * same for a /dev/null of the job's; an fd moved above 2 is a copy, the
 * original closed; a directory the agent reads keeps off a closed fd 1. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tap.h"
#include "util.h"

static int same_file(int a, int b)
{
    struct stat x, y;
    return fstat(a, &x) == 0 && fstat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

int main(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/tbprof-test-util-%d", (int)getpid());
    int job_out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600); /* the job's "stdout" */
    int saved = dup(1);
    CHECK(job_out > 2 && saved > 2);

    /* the job has closed fd 1: held, then free again */
    close(1);
    unsigned held = tb_stdio_hold();
    int took1 = (held & 2u) != 0, is_open = fcntl(1, F_GETFD) >= 0;
    tb_stdio_release(held);
    int free_after = fcntl(1, F_GETFD) < 0 && errno == EBADF;

    /* the job puts its stdout back while the agent holds fd 1 */
    held = tb_stdio_hold();
    int took1b = (held & 2u) != 0;
    dup2(job_out, 1);
    tb_stdio_release(held);
    int kept = same_file(1, job_out);
    int written = write(1, "x", 1) == 1;

    /* the same with a /dev/null of the job's, opened for writing */
    close(1);
    held = tb_stdio_hold();
    int jn = open("/dev/null", O_WRONLY);
    dup2(jn, 1);
    close(jn);
    tb_stdio_release(held);
    int null_kept = fcntl(1, F_GETFD) >= 0;

    /* and one read-only, close-on-exec (Python's os.dup2(fd, 1, inheritable=False)) */
    close(1);
    held = tb_stdio_hold();
    jn = open("/dev/null", O_RDONLY | O_CLOEXEC);
    dup3(jn, 1, O_CLOEXEC);
    close(jn);
    tb_stdio_release(held);
    int ro_null_kept = fcntl(1, F_GETFD) >= 0;

    /* an fd at 0-2 moved above them: a close-on-exec copy, the original closed */
    close(1);
    int low = open(path, O_RDONLY); /* takes 1 */
    int high = tb_fd_above_stdio(low);
    int low_free = fcntl(1, F_GETFD) < 0, high_cloexec = high > 2 && (fcntl(high, F_GETFD) & FD_CLOEXEC);
    close(high);

    /* a directory read with fd 1 closed: its fd is above 2, fd 1 stays free */
    DIR *d = tb_opendir_above_stdio("/proc/self/task");
    int dir_fd = d ? dirfd(d) : -1, dir_free1 = fcntl(1, F_GETFD) < 0, entries = 0;
    while (d && readdir(d))
        entries++;
    if (d)
        closedir(d);
    errno = 0;
    DIR *none = tb_opendir_above_stdio("/nonexistent-tbprof");
    int none_errno = errno, none_free1 = fcntl(1, F_GETFD) < 0;

    dup2(saved, 1); /* the test's own stdout back, for the results */
    close(saved);
    CHECK(took1);
    CHECK(is_open);
    CHECK(free_after);
    CHECK(took1b);
    CHECKF(kept, "the job's stdout was closed by the release");
    CHECK(written);
    CHECK(null_kept);
    CHECK(ro_null_kept);
    CHECK_EQ_I(low, 1);
    CHECK(low_free);
    CHECK(high_cloexec);
    CHECKF(dir_fd > 2, "the directory's fd is %d", dir_fd);
    CHECK(dir_free1);
    CHECK(entries >= 3); /* ".", "..", this thread */
    CHECK(none == NULL && none_errno == ENOENT && none_free1);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 1);
    close(job_out);
    unlink(path);
    return tap_done();
}
