/* stall.c - see stall.h. One mutex guards everything here, held only to
 * read and change the slots: warnings are written after it is let go, so a
 * job's thread leaving a watch never waits behind a write to stderr. */
#include "stall.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "capture.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "util.h"

#define SLOTS 4 /* watched at once: the agent thread's call or write, a job thread's detach */

typedef struct slot {
    int used, warned;
    int64_t t0, limit_ns;
    char what[320]; /* a call and its thread, or a write and its folder */
    char advice[480];
} slot;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC, set up by the first enter */
    int cv_ready;
    int watcher; /* 0: not started, 1: running, -1: could not be started */
    slot s[SLOTS];
    char report[512];
    int nreport;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *watch(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "tbprof-watch");
    char msg[SLOTS][sizeof(W.s[0].what) + sizeof(W.s[0].advice) + 48];
    pthread_mutex_lock(&W.mu);
    for (;;) {
        int64_t now = tb_mono_ns(), next = 0;
        int nmsg = 0;
        for (int i = 0; i < SLOTS; i++) {
            slot *s = &W.s[i];
            if (!s->used || s->warned)
                continue;
            int64_t due = s->t0 + s->limit_ns;
            if (now >= due) {
                s->warned = 1;
                snprintf(msg[nmsg++], sizeof(msg[0]), "%s has not returned after %.1f s%s%s", s->what,
                         (double)(now - s->t0) / 1e9, s->advice[0] ? "; " : "", s->advice);
            } else if (!next || due < next) {
                next = due;
            }
        }
        if (nmsg) {
            pthread_mutex_unlock(&W.mu);
            for (int i = 0; i < nmsg; i++)
                tb_warn("%s", msg[i]);
            pthread_mutex_lock(&W.mu);
            continue; /* the slots may have changed meanwhile */
        }
        if (!next) {
            pthread_cond_wait(&W.cv, &W.mu);
        } else {
            struct timespec ts = {.tv_sec = next / 1000000000, .tv_nsec = next % 1000000000};
            pthread_cond_timedwait(&W.cv, &W.mu, &ts);
        }
    }
    return NULL;
}

/* W.mu held. 0 when the watcher runs. */
static int watcher_up(void)
{
    if (!W.cv_ready) {
        tb_cond_init_monotonic(&W.cv);
        W.cv_ready = 1;
    }
    if (!W.watcher) {
        int rc = tb_agent_spawn(watch, NULL);
        W.watcher = rc < 0 ? -1 : 1;
        if (rc < 0)
            tb_debug("stall watcher not started: %s; slow CUPTI calls go unreported", strerror(-rc));
    }
    return W.watcher > 0 ? 0 : -1;
}

int tb_stall_enter(const char *what, const char *advice)
{
    int64_t limit_ms = tb_config_get()->stall_warn_ms;
    if (limit_ms <= 0)
        return -1;
    int t = -1;
    pthread_mutex_lock(&W.mu);
    if (watcher_up() == 0)
        for (int i = 0; i < SLOTS && t < 0; i++)
            if (!W.s[i].used)
                t = i;
    if (t >= 0) {
        slot *s = &W.s[t];
        s->used = 1;
        s->warned = 0;
        s->limit_ns = limit_ms * 1000000;
        snprintf(s->what, sizeof(s->what), "%s", what);
        snprintf(s->advice, sizeof(s->advice), "%s", advice ? advice : "");
        s->t0 = tb_mono_ns();
        pthread_cond_signal(&W.cv);
    }
    pthread_mutex_unlock(&W.mu);
    return t;
}

void tb_stall_leave(int t)
{
    if (t < 0 || t >= SLOTS)
        return;
    char msg[sizeof(W.s[0].what) + 48] = "";
    pthread_mutex_lock(&W.mu);
    slot *s = &W.s[t];
    if (s->used) {
        int64_t d = tb_mono_ns() - s->t0;
        if (s->warned || d >= s->limit_ns) {
            snprintf(msg, sizeof(msg), "%s returned after %.1f s", s->what, (double)d / 1e9);
            size_t at = strlen(W.report);
            if (at < sizeof(W.report))
                snprintf(W.report + at, sizeof(W.report) - at, "%s%s: %.1f s", at ? "; " : "", s->what,
                         (double)d / 1e9);
            W.nreport++;
        }
        s->used = 0;
    }
    pthread_mutex_unlock(&W.mu);
    if (msg[0])
        tb_warn("%s", msg);
}

void tb_stall_touch(int t)
{
    if (t < 0 || t >= SLOTS)
        return;
    pthread_mutex_lock(&W.mu);
    if (W.s[t].used && !W.s[t].warned)
        W.s[t].t0 = tb_mono_ns();
    pthread_mutex_unlock(&W.mu);
}

int tb_stall_take(char *out, size_t n)
{
    pthread_mutex_lock(&W.mu);
    int k = W.nreport;
    if (n)
        snprintf(out, n, "%s", W.report);
    W.report[0] = '\0';
    W.nreport = 0;
    pthread_mutex_unlock(&W.mu);
    return k;
}

void tb_stall_fork_child(void)
{
    /* the watcher did not survive the fork, and may have held W.mu */
    pthread_mutex_init(&W.mu, NULL);
    W.cv_ready = 0;
    W.watcher = 0;
    memset(W.s, 0, sizeof(W.s));
    W.report[0] = '\0';
    W.nreport = 0;
}
