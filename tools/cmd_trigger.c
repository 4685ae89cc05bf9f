/* cmd_trigger.c - `tbprof trigger PID... [--steps N | --duration S | --stop | --status]`:
 * ask running processes' agents (their control sockets, agent/ctl.h) to
 * capture, print the answers, then wait for the profiles and print their
 * paths. Several processes (the ranks of one job, or `--tree` under a
 * launcher) get one run folder and, for steps, the same step numbers. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cmd.h"
#include "ctl.h"
#include "profile.h"

#define MAX_TARGETS 1024
#define ALIGN_LEAD_S 1.0 /* several processes: the window starts about this far ahead */
/* a request's answer: the agent thread answers between captures' work, not
 * while it writes a profile (a large one takes seconds) */
#define REQ_MS 10000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tbprof trigger PID... [--tree] [--steps N [--at-step A] | --duration S | --stop | --status]\n"
            "                      [--run NAME] [--no-wait] [--timeout S]\n"
            "       tbprof trigger --all [the same options]\n"
            "       tbprof trigger --list\n"
            "  PID...         the process to capture, or several (the ranks of one job): their profiles go\n"
            "                 into one run folder and, with --steps, cover the same step numbers\n"
            "  --tree         every process started under each PID (not PID itself: the launcher)\n"
            "                 that runs the agent: the ranks under torchrun, mpirun or srun\n"
            "  --all          every process of this user on this host that runs the agent (on each node\n"
            "                 of a multi-node job, with the same --at-step and --run everywhere)\n"
            "  --steps N      capture N steps (the processes mark steps)\n"
            "  --at-step A    the first of them: step A (default: the next step; with several processes,\n"
            "                 a step all of them reach about a second from now)\n"
            "  --duration S   capture S seconds (default: 5 s when no option is given)\n"
            "  --run NAME     the run folder's name (default with several processes: the local time)\n"
            "  --stop         end the capture in progress now (or one still waiting for its steps)\n"
            "  --status       print each agent's state and last profile\n"
            "  --list         the processes of this user that run the agent: state, step, command\n"
            "  --no-wait      print the answers and return without waiting for the files\n"
            "  --timeout S    give up waiting for the profiles after S seconds (default 600)\n");
}

/* "key=value" from a status line into out. */
static void field(const char *line, const char *key, char *out, size_t n)
{
    out[0] = '\0';
    size_t kl = strlen(key);
    for (const char *p = line; (p = strstr(p, key)); p++)
        if ((p == line || p[-1] == ' ') && p[kl] == '=') {
            p += kl + 1;
            size_t l = strcspn(p, " ");
            snprintf(out, n, "%.*s", (int)(l < n ? l : n - 1), p);
            return;
        }
}

static long long field_ll(const char *line, const char *key, long long dflt)
{
    char v[32];
    field(line, key, v, sizeof(v));
    char *end;
    long long x = strtoll(v, &end, 10);
    return v[0] && !*end ? x : dflt;
}

static void no_agent(pid_t pid, int rc)
{
    if (rc == -EPERM)
        fprintf(stderr, "tbprof trigger: the socket of process %d belongs to another user or process\n", (int)pid);
    else if (kill(pid, 0) < 0 && errno == ESRCH)
        fprintf(stderr, "tbprof trigger: no process %d\n", (int)pid);
    else if (rc == -ETIMEDOUT)
        fprintf(stderr,
                "tbprof trigger: process %d did not answer within %d s: its agent may be writing a large "
                "profile, or the process is stopped or hung (try again)\n",
                (int)pid, REQ_MS / 1000);
    else if (rc == -EPROTO)
        fprintf(stderr,
                "tbprof trigger: process %d has the agent's socket but no agent thread to answer it: with "
                "TBPROF_SOCKET=auto (the default) a process serves it once it has a second thread, so a "
                "single-threaded program needs TBPROF_SOCKET=on (or TBPROF_SIGNAL)\n",
                (int)pid);
    else
        fprintf(stderr,
                "tbprof trigger: no tbprof agent answers in process %d (%s): not started under "
                "LD_PRELOAD=libtbprof.so, TBPROF_SOCKET=off, or another user's\n",
                (int)pid, strerror(-rc));
}

/* Whether process pid runs the agent's thread ("tbprof-agent"): 1 yes,
 * 0 no (after `tries` looks 40 ms apart: it may be starting), -1 cannot
 * tell (/proc hidden or not ours). With TBPROF_SOCKET=auto a
 * single-threaded process has the socket but no thread to answer it. */
static int agent_thread_present(pid_t pid, int tries)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    for (int t = 0; t < tries; t++) {
        DIR *d = opendir(dir);
        if (!d)
            return -1;
        int found = 0, any = 0;
        struct dirent *e;
        while (!found && (e = readdir(d))) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            char path[sizeof(dir) + sizeof(e->d_name) + 8], comm[32] = "";
            snprintf(path, sizeof(path), "%s/%s/comm", dir, e->d_name);
            FILE *f = fopen(path, "r");
            if (!f)
                continue;
            any = 1;
            if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "tbprof-agent", 12))
                found = 1;
            fclose(f);
        }
        closedir(d);
        if (found)
            return 1;
        if (!any)
            return -1;
        struct timespec ts = {0, 40000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Ask pid for its status; says why not on stderr. 0 or -1. */
static int status_of(pid_t pid, char *ans, size_t n)
{
    if (tb_ctl_exists(pid) == 1 && agent_thread_present(pid, 5) == 0) {
        no_agent(pid, -EPROTO); /* socket bound, nobody serving it yet: say why at once */
        return -1;
    }
    int rc = tb_ctl_request(pid, "status", ans, n, REQ_MS);
    if (rc < 0) {
        no_agent(pid, rc);
        return -1;
    }
    return 0;
}

static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[k] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    int ppid = 0;
    return p && sscanf(p + 1, " %*c %d", &ppid) == 1 ? (pid_t)ppid : 0;
}

/* A socket can outlive its process in /proc/net/unix: a forked child
 * that has not closed its copy yet holds the parent's name. */
static int alive(pid_t pid) { return kill(pid, 0) == 0 || errno != ESRCH; }

static int has_pid(const pid_t *v, int n, pid_t p)
{
    for (int i = 0; i < n; i++)
        if (v[i] == p)
            return 1;
    return 0;
}

/* --tree: the agents started under any of roots[0..nroots) (not the roots:
 * a launcher's own profile is not wanted), appended to out. Returns the
 * new count. */
static int add_tree(const pid_t *roots, int nroots, pid_t *out, int n)
{
    static pid_t all[MAX_TARGETS];
    int na = tb_ctl_list(all, MAX_TARGETS);
    if (na > MAX_TARGETS)
        na = MAX_TARGETS;
    for (int i = 0; i < na && n < MAX_TARGETS; i++) {
        int under = 0;
        pid_t p = parent_of(all[i]);
        for (int depth = 0; p > 1 && depth < 64 && !under; depth++, p = parent_of(p))
            under = has_pid(roots, nroots, p);
        if (under && !has_pid(out, n, all[i]))
            out[n++] = all[i];
    }
    return n;
}

static void command_of(pid_t pid, char *out, size_t n)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t k = fread(out, 1, n - 1, f);
    fclose(f);
    out[k] = '\0';
    for (size_t i = 0; i + 1 < k; i++)
        if (!out[i])
            out[i] = ' ';
}

static int list_agents(void)
{
    static pid_t all[MAX_TARGETS];
    int na = tb_ctl_list(all, MAX_TARGETS);
    if (na < 0) {
        fprintf(stderr, "tbprof trigger: cannot read /proc/net/unix to find agents\n");
        return 1;
    }
    if (na == 0) {
        printf("no process of this user runs the tbprof agent (with its control socket)\n");
        return 0;
    }
    printf("%-8s %-10s %8s %8s  %s\n", "PID", "STATE", "STEP", "CAPTURES", "COMMAND");
    int shown = 0;
    for (int i = 0; i < na && i < MAX_TARGETS; i++) {
        char ans[TB_CTL_LINE + PATH_MAX + 64], state[64] = "", cmd[120];
        if (!alive(all[i]))
            continue;
        long long step = -1, caps = 0;
        command_of(all[i], cmd, sizeof(cmd));
        if (agent_thread_present(all[i], 1) == 0)
            snprintf(state, sizeof(state), "no-thread"); /* a request would wait in its queue */
        else if (tb_ctl_request(all[i], "status", ans, sizeof(ans), 500) < 0)
            snprintf(state, sizeof(state), "no-answer");
        else {
            field(ans, "state", state, sizeof(state));
            step = field_ll(ans, "step", -1);
            caps = field_ll(ans, "captures", 0);
        }
        char sstep[24] = "-";
        if (step >= 0)
            snprintf(sstep, sizeof(sstep), "%lld", step);
        printf("%-8d %-10s %8s %8lld  %s\n", (int)all[i], state, sstep, caps, cmd);
        shown++;
    }
    if (!shown)
        printf("no process of this user runs the tbprof agent (with its control socket)\n");
    return 0;
}

struct target {
    pid_t pid;
    char before[PATH_MAX]; /* its last profile before the request */
    long long step;        /* its step at the status */
    int on;                /* asked to capture, and it agreed */
    int done;
    int idle_seen;
};

/* Several processes asked for N steps: a window that starts at a step all
 * of them reach about ALIGN_LEAD_S from now (their step rate from two
 * status rounds 300 ms apart), so each captures the same step numbers. */
static long long aligned_start(struct target *t, int n)
{
    long long max0 = -1;
    for (int i = 0; i < n; i++)
        if (t[i].on && t[i].step > max0)
            max0 = t[i].step;
    int64_t t0 = tb_mono_ns();
    struct timespec ts = {0, 300000000};
    nanosleep(&ts, NULL);
    double rate = 0;
    long long max1 = max0;
    for (int i = 0; i < n; i++) {
        char ans[TB_CTL_LINE + PATH_MAX + 64];
        if (!t[i].on || tb_ctl_request(t[i].pid, "status", ans, sizeof(ans), REQ_MS) < 0)
            continue;
        long long s = field_ll(ans, "step", t[i].step);
        double r = (double)(s - t[i].step) / ((double)(tb_mono_ns() - t0) / 1e9);
        if (r > rate)
            rate = r;
        if (s > max1)
            max1 = s;
    }
    return max1 + 2 + (long long)(rate * ALIGN_LEAD_S + 0.999);
}

/* Wait for each agreeing target's new profile; print each path. */
static int wait_all(struct target *t, int n, double timeout_s)
{
    int left = 0, failed = 0;
    for (int i = 0; i < n; i++)
        left += t[i].on;
    int64_t start = tb_mono_ns(), deadline = start + (int64_t)(timeout_s * 1e9), next_note = start + 10000000000LL;
    while (left > 0 && tb_mono_ns() < deadline) {
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        char waiting_for[160] = "";
        for (int i = 0; i < n; i++) {
            if (!t[i].on || t[i].done)
                continue;
            char ans[TB_CTL_LINE + PATH_MAX + 64];
            int rc = tb_ctl_request(t[i].pid, "status", ans, sizeof(ans), REQ_MS);
            if (rc == -ETIMEDOUT && alive(t[i].pid)) {
                if (!waiting_for[0]) /* writing its profile (not answering meanwhile), or stopped */
                    snprintf(waiting_for, sizeof(waiting_for), "process %d is not answering", (int)t[i].pid);
                continue;
            }
            if (rc < 0) {
                if (alive(t[i].pid))
                    fprintf(stderr, "tbprof trigger: process %d no longer answers (%s)\n", (int)t[i].pid,
                            strerror(-rc));
                else
                    fprintf(stderr, "tbprof trigger: process %d ended before its profile was written\n",
                            (int)t[i].pid);
                t[i].done = 1, left--, failed = 1;
                continue;
            }
            char state[32], last[PATH_MAX], waiting[64];
            field(ans, "state", state, sizeof(state));
            field(ans, "last", last, sizeof(last));
            field(ans, "waiting", waiting, sizeof(waiting));
            if (strcmp(last, t[i].before) && strcmp(last, "-") && !strcmp(state, "idle")) {
                printf("%s\n", last);
                fflush(stdout);
                t[i].done = 1, left--;
            } else if (!strcmp(state, "idle") && !waiting[0] && ++t[i].idle_seen > 20) {
                /* idle again with no new file: it ended without writing */
                fprintf(stderr, "tbprof trigger: process %d's capture ended without a profile (see its stderr)\n",
                        (int)t[i].pid);
                t[i].done = 1, left--, failed = 1;
            } else if (!waiting_for[0]) {
                snprintf(waiting_for, sizeof(waiting_for), "process %d is %s at step %lld%s%s", (int)t[i].pid,
                         waiting[0] ? "waiting" : state, field_ll(ans, "step", -1), waiting[0] ? " for " : "",
                         waiting);
            }
        }
        if (left > 0 && tb_mono_ns() >= next_note) { /* a progress line on a long wait */
            fprintf(stderr, "tbprof trigger: %.0f s: waiting for %d profile%s (%s)\n", (tb_mono_ns() - start) / 1e9,
                    left, left == 1 ? "" : "s", waiting_for);
            next_note += 10000000000LL;
        }
    }
    if (left > 0) {
        fprintf(stderr, "tbprof trigger: %d profile%s not written after %g s\n", left, left == 1 ? "" : "s",
                timeout_s);
        /* a window still waiting for its steps would fire later, with nobody
         * waiting for it: take it back (a capture under way is left to end) */
        for (int i = 0; i < n; i++) {
            char ans[TB_CTL_LINE + PATH_MAX + 64], waiting[64];
            if (!t[i].on || t[i].done || tb_ctl_request(t[i].pid, "status", ans, sizeof(ans), REQ_MS) < 0)
                continue;
            field(ans, "waiting", waiting, sizeof(waiting));
            if (waiting[0] && tb_ctl_request(t[i].pid, "stop", ans, sizeof(ans), REQ_MS) == 0)
                fprintf(stderr, "tbprof trigger: process %d: %s\n", (int)t[i].pid, ans);
        }
        return 1;
    }
    return failed;
}

int cmd_trigger(int argc, char **argv)
{
    static pid_t pids[MAX_TARGETS];
    static struct target t[MAX_TARGETS];
    int npids = 0, tree = 0, all = 0, wait = 1, status_only = 0, stop = 0;
    long nsteps = 0, at_step = -1;
    double duration = 0, timeout_s = 600;
    const char *run = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            return list_agents();
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            nsteps = strtol(argv[++i], &end, 10);
            if (*end || nsteps < 1) {
                fprintf(stderr, "tbprof trigger: --steps needs a positive integer\n");
                return 2;
            }
        } else if (!strcmp(a, "--at-step") && i + 1 < argc) {
            at_step = strtol(argv[++i], &end, 10);
            if (*end || at_step < 0) {
                fprintf(stderr, "tbprof trigger: --at-step needs a step number >= 0\n");
                return 2;
            }
        } else if (!strcmp(a, "--duration") && i + 1 < argc) {
            duration = strtod(argv[++i], &end);
            if (*end || !(duration > 0)) {
                fprintf(stderr, "tbprof trigger: --duration needs seconds > 0\n");
                return 2;
            }
        } else if (!strcmp(a, "--run") && i + 1 < argc) {
            run = argv[++i];
        } else if (!strcmp(a, "--tree")) {
            tree = 1;
        } else if (!strcmp(a, "--all")) {
            all = 1;
        } else if (!strcmp(a, "--stop")) {
            stop = 1;
        } else if (!strcmp(a, "--status")) {
            status_only = 1;
        } else if (!strcmp(a, "--no-wait")) {
            wait = 0;
        } else if (!strcmp(a, "--timeout") && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        } else if (a[0] != '-') {
            long p = strtol(a, &end, 10);
            if (*end || p <= 0 || p > INT_MAX) {
                fprintf(stderr, "tbprof trigger: '%s' is not a process id\n", a);
                return 2;
            }
            if (npids < MAX_TARGETS && !has_pid(pids, npids, (pid_t)p))
                pids[npids++] = (pid_t)p;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!npids == !all || (all && tree)) {
        usage(stderr);
        return 2;
    }
    if ((nsteps > 0) + (duration > 0) + stop + status_only > 1 || (at_step >= 0 && !nsteps)) {
        fprintf(stderr, "tbprof trigger: give one of --steps N [--at-step A], --duration S, --stop, --status\n");
        return 2;
    }
    if (run && (!run[0] || strlen(run) > 64 || run[0] == '.' ||
                strspn(run, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(run))) {
        fprintf(stderr, "tbprof trigger: --run needs 1..64 of A-Z a-z 0-9 . _ -, not starting with '.'\n");
        return 2;
    }
    int ntargets = npids;
    pid_t root = pids[0];
    if (tree) {
        static pid_t found[MAX_TARGETS];
        ntargets = add_tree(pids, npids, found, 0);
        if (!ntargets) {
            fprintf(stderr, "tbprof trigger: no process under %d%s runs the tbprof agent\n", (int)pids[0],
                    npids > 1 ? " (or the others given)" : "");
            return 1;
        }
        memcpy(pids, found, sizeof(pid_t) * (size_t)ntargets);
    } else if (all) {
        int na = tb_ctl_list(pids, MAX_TARGETS);
        ntargets = 0;
        for (int i = 0; i < na && i < MAX_TARGETS; i++)
            if (pids[i] != getpid() && alive(pids[i])) /* not this command, where LD_PRELOAD reached it */
                pids[ntargets++] = pids[i];
        if (!ntargets) {
            fprintf(stderr, "tbprof trigger: no process of this user runs the tbprof agent here\n");
            return 1;
        }
    }
    int discover = tree || all; /* targets found, not named: single-threaded ones are left out */
    int several = ntargets > 1 || discover;

    /* each target's status: is an agent there, its step and last profile */
    int nt = 0, failed = 0, skipped = 0, answered = 0;
    for (int i = 0; i < ntargets; i++) {
        char ans[TB_CTL_LINE + PATH_MAX + 64];
        if (discover && tb_ctl_exists(pids[i]) == 1 && agent_thread_present(pids[i], 3) == 0) {
            skipped++; /* single-threaded (a shell, a helper): no thread to answer */
            continue;
        }
        if (status_of(pids[i], ans, sizeof(ans)) < 0) {
            failed = 1;
            continue;
        }
        answered++;
        if (status_only) {
            if (several)
                printf("%d: %s\n", (int)pids[i], ans);
            else
                printf("%s\n", ans);
            continue;
        }
        struct target *x = &t[nt++];
        memset(x, 0, sizeof(*x));
        x->pid = pids[i];
        x->on = 1;
        field(ans, "last", x->before, sizeof(x->before));
        x->step = field_ll(ans, "step", -1);
    }
    if (skipped) {
        char where[48] = "";
        if (tree)
            snprintf(where, sizeof(where), " under %d", (int)root);
        fprintf(stderr, "tbprof trigger: %d single-threaded process%s%s left out (no agent thread serves %s)\n",
                skipped, skipped == 1 ? "" : "es", where, skipped == 1 ? "its socket" : "their sockets");
    }
    if (skipped && !answered && !failed)
        no_agent(pids[0], -EPROTO); /* all of them: say what to do */
    if (status_only)
        return failed || !answered;
    if (!nt)
        return 1;

    /* the request */
    char req[TB_CTL_LINE];
    char runbuf[64] = "";
    if (!run && several && !stop) {
        /* one folder for all of them, named as an agent names its own */
        tb_run_name_from_time(time(NULL), runbuf, sizeof(runbuf));
        run = runbuf;
    }
    if (stop) {
        snprintf(req, sizeof(req), "stop");
        wait = 0;
    } else if (nsteps && (several || at_step >= 0)) {
        for (int i = 0; i < nt; i++)
            if (t[i].step < 0) {
                fprintf(stderr, "tbprof trigger: process %d has marked no step: left out (a launcher?)\n",
                        (int)t[i].pid);
                t[i].on = 0;
            }
        int any = 0;
        for (int i = 0; i < nt; i++)
            any |= t[i].on;
        if (!any) {
            fprintf(stderr, "tbprof trigger: none of the processes marks steps (use --duration S)\n");
            return 1;
        }
        long long a = at_step >= 0 ? at_step : aligned_start(t, nt);
        snprintf(req, sizeof(req), "start steps=%lld-%lld", a, a + nsteps - 1);
    } else if (nsteps) {
        snprintf(req, sizeof(req), "start steps=%ld", nsteps);
    } else {
        snprintf(req, sizeof(req), "start duration=%g", duration > 0 ? duration : 5.0);
    }
    if (run && !stop) {
        size_t l = strlen(req);
        snprintf(req + l, sizeof(req) - l, " run=%s", run);
    }
    int agreed = 0;
    for (int i = 0; i < nt; i++) {
        if (!t[i].on)
            continue;
        char ans[TB_CTL_LINE + PATH_MAX + 64];
        int rc = tb_ctl_request(t[i].pid, req, ans, sizeof(ans), REQ_MS);
        if (rc < 0) {
            no_agent(t[i].pid, rc);
            t[i].on = 0;
            failed = 1;
            continue;
        }
        if (several)
            printf("%d: %s\n", (int)t[i].pid, ans);
        else
            printf("%s\n", ans);
        int ok = !strncmp(ans, "capture started", 15) || !strncmp(ans, "capture waiting", 15) ||
                 !strncmp(ans, "capture stopping", 16) || !strncmp(ans, "capture cancelled", 17);
        t[i].on = ok;
        agreed += ok;
        failed |= !ok;
    }
    fflush(stdout);
    if (!agreed)
        return 1;
    if (!wait)
        return failed;
    if (several)
        fprintf(stderr, "tbprof trigger: %d process%s capturing into run folder %s\n", agreed,
                agreed == 1 ? "" : "es", run);
    return wait_all(t, nt, timeout_s) | failed;
}
