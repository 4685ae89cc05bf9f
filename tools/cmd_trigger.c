/* cmd_trigger.c - `tbprof trigger PID... [--steps N | --duration S | --stop | --status]`:
 * ask running processes' agents (their control sockets, agent/ctl.h) to
 * capture, print the answers, then wait for the profiles and print their
 * paths. Several processes (the ranks of one job; `--tree` under a
 * launcher; `--all` on this host) get one run folder and, for steps, the
 * same step numbers. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cmd.h"
#include "config.h"
#include "ctl.h"
#include "profile.h"
#include "util.h"

#define MAX_TARGETS 1024
#define ALIGN_LEAD_S 1.0 /* several processes: the window starts about this far ahead */
/* how long a request waits for its answer: the agent thread answers
 * between its other work (between the pieces of a profile it writes), not
 * while it collects a capture, nor while the process is stopped */
#define REQ_MS 10000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tbprof trigger PID... [--tree] [--steps N [--at-step A] | --duration S | --stop | --status]\n"
            "                      [--every P [--count K]] [--run NAME] [--no-wait] [--timeout S]\n"
            "       tbprof trigger --all [the same options]\n"
            "       tbprof trigger --list\n"
            "  PID...         the process to capture, or several (the ranks of one job): their profiles go\n"
            "                 into one run folder and, with --steps, cover the same step numbers\n"
            "  --tree         every process started under each PID (not PID itself: the launcher)\n"
            "                 that runs the agent: the ranks under torchrun, mpirun or srun\n"
            "  --all          every process of this user on this host that runs the agent (on each node\n"
            "                 of a multi-node job, with the same --at-step and --run everywhere)\n"
            "  --steps N      capture N steps (the processes mark steps)\n"
            "  --every P      with --steps N: again every P steps; with --duration S: every P seconds (each its\n"
            "                 own run folder), until --stop\n"
            "  --count K      ... K captures in all\n"
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

/* The status line's last= (the last profile's path) into out: the rest of
 * the line up to the fields that may follow it (" trigger=", " waiting="),
 * as a path may hold spaces ("My Drive/logs"). */
static void last_of(const char *line, char *out, size_t n)
{
    out[0] = '\0';
    const char *p = strstr(line, " last=");
    if (!p)
        return;
    p += 6;
    size_t l = strlen(p);
    static const char *const after[] = {" trigger=", " waiting="};
    for (size_t i = 0; i < sizeof(after) / sizeof(after[0]); i++) {
        const char *q = strstr(p, after[i]);
        if (q && (size_t)(q - p) < l)
            l = (size_t)(q - p);
    }
    snprintf(out, n, "%.*s", (int)(l < n ? l : n - 1), p);
}

static long long field_ll(const char *line, const char *key, long long dflt)
{
    char v[32];
    field(line, key, v, sizeof(v));
    char *end;
    long long x = strtoll(v, &end, 10);
    return v[0] && !*end ? x : dflt;
}

/* Whether libtbprof.so is mapped in process pid (1), not (0), or /proc
 * does not say (-1: another user's, or gone). */
static int maps_tbprof(pid_t pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, "/libtbprof") != NULL;
    fclose(f);
    return found;
}

static void no_agent(pid_t pid, int rc)
{
    if (rc == -EPERM)
        fprintf(stderr, "tbprof trigger: the socket of process %d belongs to another user or process\n", (int)pid);
    else if (kill(pid, 0) < 0 && errno == ESRCH)
        fprintf(stderr, "tbprof trigger: no process %d\n", (int)pid);
    else if (rc == -ETIMEDOUT)
        fprintf(stderr,
                "tbprof trigger: process %d did not answer within %d s: its agent may be collecting a large "
                "capture, or the process is stopped or hung (try again)\n",
                (int)pid, REQ_MS / 1000);
    else if (rc == -EPROTO)
        fprintf(stderr,
                "tbprof trigger: process %d has the agent's socket but no agent thread to answer it: with "
                "TBPROF_SOCKET=auto (the default) a process serves it once it has a second thread, so a "
                "single-threaded program needs TBPROF_SOCKET=on (or TBPROF_SIGNAL)\n",
                (int)pid);
    else if (maps_tbprof(pid) == 1)
        fprintf(stderr,
                "tbprof trigger: process %d has libtbprof.so loaded but no control socket of its own (%s): a "
                "child fork()ed without exec (only the process started with the preload and exec'd ones "
                "serve one: trigger the process it was forked from, which a Python child or one that called "
                "tbprof_follow_parent() captures with; its own TBPROF_STEPS/TBPROF_DURATION windows and "
                "tbprof_start() still work), or TBPROF_SOCKET=off\n",
                (int)pid, strerror(-rc));
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
    char state;
    int ppid;
    return tb_proc_stat((int)pid, &state, &ppid) == 0 ? (pid_t)ppid : 0;
}

/* A socket can outlive its process in /proc/net/unix: a forked child
 * that has not closed its copy yet holds the parent's name. A zombie (ended,
 * not yet reaped by its parent) is not alive. */
static int alive(pid_t pid)
{
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    char state;
    int ppid;
    if (tb_proc_stat((int)pid, &state, &ppid) < 0)
        return 1; /* hidden /proc: kill() said it exists */
    return state != 'Z' && state != 'X';
}

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
    printf("%-8s %-16s %8s %8s  %s\n", "PID", "STATE", "STEP", "CAPTURES", "COMMAND");
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
            char waiting[48];
            field(ans, "state", state, sizeof(state));
            field(ans, "waiting", waiting, sizeof(waiting));
            if (waiting[0]) /* a window waiting for its steps: "waiting" with them */
                snprintf(state, sizeof(state), "waiting:%s", waiting + strlen("steps_"));
            step = field_ll(ans, "step", -1);
            caps = field_ll(ans, "captures", 0);
        }
        char sstep[24] = "-";
        if (step >= 0)
            snprintf(sstep, sizeof(sstep), "%lld", step);
        printf("%-8d %-16s %8s %8lld  %s\n", (int)all[i], state, sstep, caps, cmd);
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
    int64_t start = tb_mono_ns(), deadline = start + (int64_t)((timeout_s < 1e9 ? timeout_s : 1e9) * 1e9), next_note = start + 10000000000LL;
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
                    fprintf(stderr,
                            "tbprof trigger: process %d ended during the capture; its agent writes what it "
                            "captured when the process exits (unless killed): see `tbprof ls` on its "
                            "TBPROF_LOGDIR\n",
                            (int)t[i].pid);
                t[i].done = 1, left--, failed = 1;
                continue;
            }
            char state[32], last[PATH_MAX], waiting[64];
            field(ans, "state", state, sizeof(state));
            last_of(ans, last, sizeof(last));
            field(ans, "waiting", waiting, sizeof(waiting));
            /* a new last profile is written whole (the agent names it after
             * the write), even where a repeat is already capturing again */
            if (strcmp(last, t[i].before) && strcmp(last, "-")) {
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

struct opts {
    pid_t pids[MAX_TARGETS]; /* named, then the targets */
    int npids, tree, all, wait, status_only, stop;
    long nsteps, at_step, count;
    const char *every; /* --every: steps (with --steps) or seconds (with --duration); --count K in all */
    char every_req[32]; /* ... as the request says it: steps, or seconds as a plain number */
    double duration, timeout_s;
    const char *run;
};

/* An integer option's value, lo or more, into *out: 0, or -1 after naming
 * the option and the value (not a number, trailing junk, out of range). */
static int int_arg(const char *opt, const char *v, long lo, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo) {
        if (errno == ERANGE && x > 0)
            fprintf(stderr, "tbprof trigger: %s '%s' is too large (at most %ld)\n", opt, v, LONG_MAX);
        else
            fprintf(stderr, "tbprof trigger: %s needs %s, not '%s'\n", opt,
                    lo > 0 ? "a positive integer" : "a step number >= 0", v);
        return -1;
    }
    *out = x;
    return 0;
}

/* A seconds option's value (finite, > 0) into *out: 0, or -1 after naming
 * the option and the value. */
static int seconds_arg(const char *opt, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x) || !(x > 0)) {
        fprintf(stderr, "tbprof trigger: %s needs seconds > 0, not '%s'\n", opt, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* The command line into o. Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.wait = 1, .at_step = -1, .timeout_s = 600};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            return list_agents();
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            if (int_arg(a, argv[++i], 1, &o->nsteps) < 0)
                return 2;
        } else if (!strcmp(a, "--at-step") && i + 1 < argc) {
            if (int_arg(a, argv[++i], 0, &o->at_step) < 0)
                return 2;
        } else if (!strcmp(a, "--every") && i + 1 < argc) {
            o->every = argv[++i];
        } else if (!strcmp(a, "--count") && i + 1 < argc) {
            if (int_arg(a, argv[++i], 1, &o->count) < 0)
                return 2;
        } else if (!strcmp(a, "--duration") && i + 1 < argc) {
            if (seconds_arg(a, argv[++i], &o->duration) < 0)
                return 2;
        } else if (!strcmp(a, "--run") && i + 1 < argc) {
            o->run = argv[++i];
        } else if (!strcmp(a, "--tree")) {
            o->tree = 1;
        } else if (!strcmp(a, "--all")) {
            o->all = 1;
        } else if (!strcmp(a, "--stop")) {
            o->stop = 1;
        } else if (!strcmp(a, "--status")) {
            o->status_only = 1;
        } else if (!strcmp(a, "--no-wait")) {
            o->wait = 0;
        } else if (!strcmp(a, "--timeout") && i + 1 < argc) {
            if (seconds_arg(a, argv[++i], &o->timeout_s) < 0)
                return 2;
        } else if (a[0] != '-') {
            long p = strtol(a, &end, 10);
            if (*end || p <= 0 || p > INT_MAX) {
                fprintf(stderr, "tbprof trigger: '%s' is not a process id\n", a);
                return 2;
            }
            if (o->npids < MAX_TARGETS && !has_pid(o->pids, o->npids, (pid_t)p))
                o->pids[o->npids++] = (pid_t)p;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!o->npids == !o->all || (o->all && o->tree)) {
        usage(stderr);
        return 2;
    }
    if ((o->nsteps > 0) + (o->duration > 0) + o->stop + o->status_only > 1 || (o->at_step >= 0 && !o->nsteps)) {
        fprintf(stderr, "tbprof trigger: give one of --steps N [--at-step A], --duration S, --stop, --status\n");
        return 2;
    }
    if (o->nsteps > 0 && o->at_step > LONG_MAX - (o->nsteps - 1)) {
        fprintf(stderr, "tbprof trigger: --at-step %ld with --steps %ld goes past the last step number\n",
                o->at_step, o->nsteps);
        return 2;
    }
    if (o->every || o->count) {
        char *end = NULL;
        long p = o->every ? strtol(o->every, &end, 10) : 0;
        double t = 0;
        int ok = o->every && (o->nsteps ? *end == '\0' && p > o->nsteps
                                        : o->duration > 0 && tb_parse_seconds(o->every, &t) == 0 && t > o->duration);
        if (!ok) {
            fprintf(stderr, "tbprof trigger: --every repeats a capture: --steps N --every P (steps, P > N) or "
                            "--duration S --every T (seconds, T > S); --count K with it\n");
            return 2;
        }
        if (o->nsteps)
            snprintf(o->every_req, sizeof(o->every_req), "%ld", p);
        else
            snprintf(o->every_req, sizeof(o->every_req), "%.9g", t);
    }
    if (o->run && !tb_ctl_run_name_ok(o->run)) {
        fprintf(stderr, "tbprof trigger: --run needs 1..%d of A-Z a-z 0-9 . _ -, not starting with '.'\n",
                TB_CTL_RUN_MAX);
        return 2;
    }
    return -1;
}

/* --tree / --all: replace o->pids by the processes found. Returns how many
 * (0: none, said why). */
static int find_targets(struct opts *o)
{
    static pid_t found[MAX_TARGETS];
    int n = 0;
    if (o->tree) {
        n = add_tree(o->pids, o->npids, found, 0);
        if (!n) {
            /* the job's own pid given with --tree (its data-loader workers,
             * fork children, have no socket): say what to do instead */
            static pid_t agents[MAX_TARGETS];
            int na = tb_ctl_list(agents, MAX_TARGETS);
            pid_t self = 0;
            for (int i = 0; i < o->npids && !self; i++)
                if (has_pid(agents, na < MAX_TARGETS ? na : MAX_TARGETS, o->pids[i]))
                    self = o->pids[i];
            fprintf(stderr, "tbprof trigger: no process under %d%s runs the tbprof agent", (int)o->pids[0],
                    o->npids > 1 ? " (or the others given)" : "");
            if (self)
                fprintf(stderr, "; %d itself does (--tree leaves out the PIDs given, the launchers): "
                                "`tbprof trigger %d` without --tree captures it", (int)self, (int)self);
            fputc('\n', stderr);
        }
    } else {
        int na = tb_ctl_list(found, MAX_TARGETS);
        for (int i = 0; i < na && i < MAX_TARGETS; i++)
            if (found[i] != getpid() && alive(found[i])) /* not this command, where LD_PRELOAD reached it */
                found[n++] = found[i];
        if (!n)
            fprintf(stderr, "tbprof trigger: no process of this user runs the tbprof agent here\n");
    }
    memcpy(o->pids, found, sizeof(pid_t) * (size_t)n);
    return n;
}

/* A process writing a profile (an env window's, a repeat's) names it in
 * last= only once it is written: the path that came next would be taken
 * for the one this trigger asked for. Wait for that write to end (bounded;
 * a progress line after a few seconds), with `ans` the status after it. */
#define WRITING_WAIT_S 120
static void wait_while_writing(pid_t pid, char *ans, size_t n)
{
    char state[32];
    field(ans, "state", state, sizeof(state));
    int64_t start = tb_mono_ns(), next_note = start + 3000000000LL;
    while (!strcmp(state, "writing") && tb_mono_ns() - start < WRITING_WAIT_S * 1000000000LL) {
        if (tb_mono_ns() >= next_note) {
            fprintf(stderr, "tbprof trigger: process %d is writing its last profile; waiting for that first\n",
                    (int)pid);
            next_note += 10000000000LL;
        }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        char again[TB_CTL_LINE + PATH_MAX + 64];
        if (tb_ctl_request(pid, "status", again, sizeof(again), REQ_MS) < 0)
            return; /* (not answering while it writes: the wait goes on as before) */
        snprintf(ans, n, "%s", again);
        field(ans, "state", state, sizeof(state));
    }
}

/* Each of pids[0..n)'s status: is an agent there, its step and last profile,
 * into t[] (or printed, --status). Processes found (not named) that are
 * single-threaded are left out. Returns how many answered; *failed set
 * where one did not. */
static int gather(const struct opts *o, pid_t root, int n, int several, struct target *t, int *nt, int *failed)
{
    int skipped = 0, answered = 0, discover = o->tree || o->all;
    for (int i = 0; i < n; i++) {
        char ans[TB_CTL_LINE + PATH_MAX + 64];
        pid_t pid = o->pids[i];
        if (discover && tb_ctl_exists(pid) == 1 && agent_thread_present(pid, 3) == 0) {
            skipped++; /* single-threaded (a shell, a helper): no thread to answer */
            continue;
        }
        if (status_of(pid, ans, sizeof(ans)) < 0) {
            *failed = 1;
            continue;
        }
        answered++;
        if (o->status_only) {
            if (several)
                printf("%d: %s\n", (int)pid, ans);
            else
                printf("%s\n", ans);
            continue;
        }
        if (o->wait && !o->stop)
            wait_while_writing(pid, ans, sizeof(ans));
        struct target *x = &t[(*nt)++];
        memset(x, 0, sizeof(*x));
        x->pid = pid;
        x->on = 1;
        last_of(ans, x->before, sizeof(x->before));
        x->step = field_ll(ans, "step", -1);
    }
    if (skipped) {
        char where[48] = "";
        if (o->tree)
            snprintf(where, sizeof(where), " under %d", (int)root);
        fprintf(stderr, "tbprof trigger: %d single-threaded process%s%s left out (no agent thread serves %s)\n",
                skipped, skipped == 1 ? "" : "es", where, skipped == 1 ? "its socket" : "their sockets");
        if (!answered && !*failed)
            no_agent(o->pids[0], -EPROTO); /* all of them: say what to do */
    }
    return answered;
}

/* The request line for the targets; with several, steps by number (the
 * same for all; targets without steps left out). 0, or 1 when none is left. */
static int make_request(const struct opts *o, int several, const char *run, struct target *t, int nt, char *req,
                        size_t n)
{
    if (o->stop) {
        snprintf(req, n, "stop");
        return 0;
    }
    if (o->nsteps && (several || o->at_step >= 0)) {
        int any = 0;
        for (int i = 0; i < nt; i++) {
            if (t[i].step < 0) {
                fprintf(stderr, "tbprof trigger: process %d has marked no step: left out (a launcher?)\n",
                        (int)t[i].pid);
                t[i].on = 0;
            }
            any |= t[i].on;
        }
        if (!any) {
            fprintf(stderr, "tbprof trigger: none of the processes marks steps (use --duration S)\n");
            return 1;
        }
        long long a = o->at_step >= 0 ? o->at_step : aligned_start(t, nt);
        if (a > LLONG_MAX - o->nsteps + 1) {
            fprintf(stderr, "tbprof trigger: %ld steps from step %lld go past the last step number\n",
                    o->nsteps, a);
            return 1;
        }
        snprintf(req, n, "start steps=%lld-%lld", a, a + o->nsteps - 1);
    } else if (o->nsteps) {
        snprintf(req, n, "start steps=%ld", o->nsteps);
    } else {
        snprintf(req, n, "start duration=%g", o->duration > 0 ? o->duration : 5.0);
    }
    size_t l = strlen(req);
    if (o->every)
        l += (size_t)snprintf(req + l, n - l, " every=%s", o->every_req);
    if (o->count && l < n)
        l += (size_t)snprintf(req + l, n - l, " count=%ld", o->count);
    if (run && l < n)
        snprintf(req + l, n - l, " run=%s", run);
    return 0;
}

/* Send req to every target still on; print each answer. Returns how many
 * agreed; *failed set where one did not. */
static int send_request(const char *req, int several, struct target *t, int nt, int *failed)
{
    int agreed = 0;
    for (int i = 0; i < nt; i++) {
        if (!t[i].on)
            continue;
        char ans[TB_CTL_LINE + PATH_MAX + 64];
        int rc = tb_ctl_request(t[i].pid, req, ans, sizeof(ans), REQ_MS);
        if (rc < 0) {
            no_agent(t[i].pid, rc);
            t[i].on = 0;
            *failed = 1;
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
        *failed |= !ok;
    }
    fflush(stdout);
    return agreed;
}

int cmd_trigger(int argc, char **argv)
{
    static struct opts o;
    static struct target t[MAX_TARGETS];
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    pid_t root = o.pids[0];
    int ntargets = o.tree || o.all ? find_targets(&o) : o.npids;
    if (!ntargets)
        return 1;
    int several = ntargets > 1 || o.tree || o.all;
    int nt = 0, failed = 0;
    int answered = gather(&o, root, ntargets, several, t, &nt, &failed);
    if (o.status_only)
        return failed || !answered;
    if (!nt)
        return 1;
    char runbuf[64] = "";
    const char *run = o.stop ? NULL : o.run;
    if (!run && several && !o.stop) {
        /* one folder for all of them, named as an agent names its own */
        tb_run_name_from_time(time(NULL), runbuf, sizeof(runbuf));
        run = runbuf;
    }
    char req[TB_CTL_LINE];
    if (make_request(&o, several, run, t, nt, req, sizeof(req)))
        return 1;
    int agreed = send_request(req, several, t, nt, &failed);
    if (!agreed)
        return 1;
    if (!o.wait || o.stop)
        return failed;
    if (several)
        fprintf(stderr, "tbprof trigger: %d process%s capturing into run folder %s\n", agreed,
                agreed == 1 ? "" : "es", run);
    rc = wait_all(t, nt, o.timeout_s) | failed;
    if (o.every) { /* the first one is written; the rest come on their own */
        char k[48] = " until stopped";
        if (o.count)
            snprintf(k, sizeof(k), ", %ld in all", o.count);
        fprintf(stderr, "tbprof trigger: captures again every %s %s%s, each in its own run folder; "
                        "tbprof trigger with the same processes and --stop ends them\n", o.every,
                o.nsteps ? "steps" : "s", k);
    }
    return rc;
}
