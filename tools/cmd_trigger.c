/* cmd_trigger.c - `tbprof trigger PID [--steps N | --duration S | --stop | --status]`:
 * ask a running process's agent (its control socket, agent/ctl.h) to
 * capture, print its answer, then wait for the profile and print its path. */
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

static void usage(FILE *f)
{
    fprintf(f, "usage: tbprof trigger PID [--steps N | --duration S | --stop | --status] [--no-wait] [--timeout S]\n"
               "  --steps N      capture the next N steps (the process marks steps)\n"
               "  --duration S   capture S seconds (default: 5 s when no option is given)\n"
               "  --stop         end the capture in progress now\n"
               "  --status       print the agent's state and last profile\n"
               "  --no-wait      print the answer and return without waiting for the file\n"
               "  --timeout S    give up waiting for the profile after S seconds (default 600)\n");
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

static int no_agent(pid_t pid, int rc)
{
    if (rc == -EPERM)
        fprintf(stderr, "tbprof trigger: the socket of process %d belongs to another user or process\n", (int)pid);
    else if (kill(pid, 0) < 0 && errno == ESRCH)
        fprintf(stderr, "tbprof trigger: no process %d\n", (int)pid);
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
    return 1;
}

/* Whether process pid runs the agent's thread ("tbprof-agent"): 1 yes,
 * 0 no (after a short wait: it may be starting), -1 cannot tell (/proc
 * hidden or not ours). With TBPROF_SOCKET=auto a single-threaded process
 * has the socket but no thread to answer it. */
static int agent_thread_present(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    for (int tries = 0; tries < 5; tries++) {
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

int cmd_trigger(int argc, char **argv)
{
    pid_t pid = 0;
    char req[TB_CTL_LINE] = "start duration=5";
    int wait = 1, status_only = 0;
    double timeout_s = 600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1) {
                fprintf(stderr, "tbprof trigger: --steps needs a positive integer\n");
                return 2;
            }
            snprintf(req, sizeof(req), "start steps=%ld", n);
        } else if (!strcmp(a, "--duration") && i + 1 < argc) {
            char *end;
            double s = strtod(argv[++i], &end);
            if (*end || !(s > 0)) {
                fprintf(stderr, "tbprof trigger: --duration needs seconds > 0\n");
                return 2;
            }
            snprintf(req, sizeof(req), "start duration=%g", s);
        } else if (!strcmp(a, "--stop")) {
            snprintf(req, sizeof(req), "stop");
            wait = 0;
        } else if (!strcmp(a, "--status")) {
            status_only = 1;
        } else if (!strcmp(a, "--no-wait")) {
            wait = 0;
        } else if (!strcmp(a, "--timeout") && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        } else if (a[0] != '-' && !pid) {
            char *end;
            long p = strtol(a, &end, 10);
            if (*end || p <= 0) {
                fprintf(stderr, "tbprof trigger: '%s' is not a process id\n", a);
                return 2;
            }
            pid = (pid_t)p;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!pid) {
        usage(stderr);
        return 2;
    }
    char ans[TB_CTL_LINE + 64 + PATH_MAX], before[PATH_MAX] = "";
    if (tb_ctl_exists(pid) == 1 && agent_thread_present(pid) == 0)
        return no_agent(pid, -EPROTO); /* socket bound, nobody serving it yet: say why at once */
    int rc = tb_ctl_request(pid, "status", ans, sizeof(ans), 2000);
    if (rc < 0)
        return no_agent(pid, rc);
    if (status_only) {
        printf("%s\n", ans);
        return 0;
    }
    field(ans, "last", before, sizeof(before));
    rc = tb_ctl_request(pid, req, ans, sizeof(ans), 2000);
    if (rc < 0)
        return no_agent(pid, rc);
    printf("%s\n", ans);
    fflush(stdout);
    if (strncmp(ans, "capture started", 15) && strncmp(ans, "capture stopping", 16))
        return 1;
    if (!wait)
        return 0;
    int64_t deadline = tb_mono_ns() + (int64_t)(timeout_s * 1e9);
    while (tb_mono_ns() < deadline) {
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        rc = tb_ctl_request(pid, "status", ans, sizeof(ans), 2000);
        if (rc < 0) {
            fprintf(stderr, "tbprof trigger: process %d ended before its profile was written\n", (int)pid);
            return 1;
        }
        char state[32], last[PATH_MAX];
        field(ans, "state", state, sizeof(state));
        field(ans, "last", last, sizeof(last));
        if (strcmp(last, before) && strcmp(last, "-") && !strcmp(state, "idle")) {
            printf("%s\n", last);
            return 0;
        }
        if (!strcmp(state, "idle") && !strcmp(last, before)) {
            /* idle again with no new file: it ended without writing (see the job's stderr) */
            static int idle_seen;
            if (++idle_seen > 20) {
                fprintf(stderr, "tbprof trigger: the capture ended without a profile (see the job's stderr)\n");
                return 1;
            }
        }
    }
    fprintf(stderr, "tbprof trigger: no profile after %g s\n", timeout_s);
    return 1;
}
