/* test_host.c - host thread lines: naming, reuse, and tids after fork. */
#include <pthread.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host.h"
#include "tap.h"

static void *named_thread(void *arg)
{
    prctl(PR_SET_NAME, "worker-7");
    *(pid_t *)arg = tb_gettid();
    tb_host_remember_name(tb_gettid(), "worker-7", 1);
    return NULL;
}

int main(void)
{
    tb_space *s = tb_space_new();
    pid_t me = tb_gettid();
    CHECK_EQ_I(me, getpid()); /* main thread */
    prctl(PR_SET_NAME, "trainer");
    tb_line *l = tb_host_line(s, me);
    CHECK(l && l->id == me);
    CHECK_STR(l->name, "trainer");
    CHECK(tb_host_line(s, me) == l);
    CHECK_STR(tb_host_plane(s)->name, TB_HOST_PLANE);

    /* a thread that ended before collect keeps its remembered name */
    pthread_t t;
    pid_t tid = 0;
    pthread_create(&t, NULL, named_thread, &tid);
    pthread_join(t, NULL);
    tb_line *w = tb_host_line(s, tid);
    CHECK(w && strcmp(w->name, "worker-7") == 0);

    /* names that arrive out of order (a rename record drained after a
     * later read): the one of the latest time is kept */
    const pid_t gone = 0x7ffffff0; /* no such thread: the remembered name is used */
    tb_host_remember_name(gone, "second", 200);
    tb_host_remember_name(gone, "first", 100);
    tb_line *g = tb_host_line(s, gone);
    CHECK(g && strcmp(g->name, "second") == 0);
    tb_host_remember_name(gone, "third", 300);
    tb_space *s2 = tb_space_new();
    g = tb_host_line(s2, gone);
    CHECK(g && strcmp(g->name, "third") == 0);
    tb_space_free(s2);

    /* a forked child gets its own tid, not the parent's cached one */
    pid_t child = fork();
    if (child == 0)
        _exit(tb_gettid() == getpid() ? 0 : 1);
    int st = 0;
    waitpid(child, &st, 0);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw the parent's tid");
    tb_space_free(s);
    return tap_done();
}
