/* test_host.c - host thread lines: naming, reuse, and tids after fork. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
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

static atomic_int hammering;
static void *hammer(void *arg)
{
    (void)arg;
    for (int64_t i = 2; atomic_load(&hammering); i++)
        tb_host_remember_name((pid_t)(0x7fff0000 + (i & 1023)), "hammer", i);
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

    /* a fork while another thread remembers names (the agent thread at a
     * rescan): the child remembers and names its own (a lock held at the
     * fork in the parent stayed held in the child: it waited for ever) */
    atomic_store(&hammering, 1);
    pthread_t h;
    pthread_create(&h, NULL, hammer, NULL);
    int hung = 0;
    for (int i = 0; i < 200 && !hung; i++) {
        pid_t c = fork();
        if (c == 0) {
            tb_host_remember_name(tb_gettid(), "child", 1);
            _exit(0);
        }
        int cst = 0;
        for (int w = 0; w < 5000 && waitpid(c, &cst, WNOHANG) == 0; w++) /* 5 s: a loaded machine */
            usleep(1000);
        if (waitpid(c, &cst, WNOHANG) == 0) {
            hung = 1;
            kill(c, SIGKILL);
            waitpid(c, &cst, 0);
        }
    }
    atomic_store(&hammering, 0);
    pthread_join(h, NULL);
    CHECKF(!hung, "a fork child hung on the names' lock");

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
