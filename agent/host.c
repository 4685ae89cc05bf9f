/* host.c - see host.h. */
#include "host.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "stats.h"

/* Names of threads seen alive, for threads that end before collect. A small
 * fixed table: bounded memory; older entries are overwritten round-robin. */
#define NAMES 1024
static struct {
    pid_t tid;
    char name[16];
    int64_t at; /* when it had that name */
} names[NAMES];
static unsigned next_name;
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

/* A fork child is a copy of one thread: the agent thread may have held
 * the lock in the parent at that moment, and nobody would release the
 * child's copy (its first capture would wait on it for ever). */
static void names_unlock_in_child(void) { pthread_mutex_init(&names_lock, NULL); }
static void names_atfork(void) { pthread_atfork(NULL, NULL, names_unlock_in_child); }

void tb_host_remember_name(pid_t tid, const char *name, int64_t at)
{
    pthread_once(&names_once, names_atfork);
    pthread_mutex_lock(&names_lock);
    int known = 0;
    unsigned slot = 0;
    for (unsigned i = 0; i < NAMES && !known; i++)
        if (names[i].tid == tid) {
            slot = i;
            known = 1;
        }
    if (!known)
        slot = next_name++ % NAMES;
    if (!known || at >= names[slot].at) {
        names[slot].tid = tid;
        names[slot].at = at;
        snprintf(names[slot].name, sizeof(names[slot].name), "%s", name);
    }
    pthread_mutex_unlock(&names_lock);
}

static int remembered(pid_t tid, char *out, size_t n)
{
    int found = 0;
    pthread_mutex_lock(&names_lock);
    for (unsigned i = 0; i < NAMES; i++)
        if (names[i].tid == tid && names[i].name[0]) {
            snprintf(out, n, "%s", names[i].name);
            found = 1;
            break;
        }
    pthread_mutex_unlock(&names_lock);
    return found;
}

static int thread_name(pid_t tid, char *out, size_t n)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/comm", (int)tid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    int ok = fgets(out, (int)n, f) != NULL;
    fclose(f);
    if (!ok)
        return 0;
    out[strcspn(out, "\n")] = '\0';
    return out[0] != '\0';
}

tb_plane *tb_host_plane(tb_space *s)
{
    return tb_space_plane(s, TB_HOST_PLANE);
}

tb_line *tb_host_line(tb_space *s, pid_t tid)
{
    tb_plane *p = tb_host_plane(s);
    if (!p)
        return NULL;
    tb_line *l = tb_plane_find_line(p, tid);
    if (l)
        return l;
    char name[64];
    if (!remembered(tid, name, sizeof(name)) && !thread_name(tid, name, sizeof(name)))
        snprintf(name, sizeof(name), "thread %d", (int)tid);
    l = tb_plane_line(p, tid, name);
    if (l) {
        char disp[96];
        snprintf(disp, sizeof(disp), "%s (%d)", name, (int)tid);
        tb_line_set_display_name(l, disp);
    }
    return l;
}

static __thread pid_t cached_tid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A forked child runs on a copy of the forking thread, whose cached tid is
 * the parent's: forget it so the child's events land on its own line. */
static void forget_tid_in_child(void) { cached_tid = 0; }
static void install_atfork(void) { pthread_atfork(NULL, NULL, forget_tid_in_child); }

pid_t tb_gettid(void)
{
    if (!cached_tid) {
        pthread_once(&atfork_once, install_atfork);
        cached_tid = (pid_t)syscall(SYS_gettid);
    }
    return cached_tid;
}

int tb_capture_window(tb_space *s, int64_t *begin_ns, int64_t *end_ns)
{
    tb_plane *p = tb_space_find_plane(s, TB_HOST_PLANE);
    const tb_stat *b = p ? tb_plane_find_stat(p, TB_ST_CAPTURE_BEGIN_NS) : NULL;
    const tb_stat *e = p ? tb_plane_find_stat(p, TB_ST_CAPTURE_END_NS) : NULL;
    if (!b || !e || b->type != TB_STAT_INT64 || e->type != TB_STAT_INT64)
        return -ENOENT;
    *begin_ns = b->v.i;
    *end_ns = e->v.i;
    return 0;
}
