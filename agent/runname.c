/* runname.c - see runname.h. */
#include "runname.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "profile.h"
#include "util.h"

static void sanitize(char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            *s = '_';
}

/* A non-negative integer variable, else -1. */
static int64_t env_count(const char *(*get)(const char *), const char *name)
{
    const char *v = get(name);
    char *end;
    if (!v || *v < '0' || *v > '9')
        return -1;
    long long x = strtoll(v, &end, 10);
    return *end || x > INT32_MAX ? -1 : (int64_t)x;
}

void tb_names_read_env(tb_names *n, const char *(*get)(const char *))
{
    static const char *const job_vars[] = {"TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "PBS_JOBID",
                                            "LSB_JOBID", "FLUX_JOB_ID", "JOB_ID"};
    memset(n, 0, sizeof(*n));
    for (size_t i = 0; i < sizeof(job_vars) / sizeof(job_vars[0]); i++) {
        const char *v = get(job_vars[i]);
        if (v && *v && strcmp(v, "none")) { /* torchrun's default run id is "none" */
            snprintf(n->job_id, sizeof(n->job_id), "%s", v);
            sanitize(n->job_id);
            break;
        }
    }
    const char *r = get("RANK");
    if (!r || !*r)
        r = get("LOCAL_RANK");
    snprintf(n->rank, sizeof(n->rank), "%s", r && *r ? r : "");
    sanitize(n->rank);
    n->rank_num = env_count(get, "RANK"); /* the global rank only: for Kineto's distributedInfo */
    n->world_size = n->rank_num >= 0 ? env_count(get, "WORLD_SIZE") : -1;
    /* TBPROF_RANKS: torchrun's, then Open MPI's, MPICH's, PMIx's, srun's */
    static const char *const rank_vars[] = {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
                                             "SLURM_PROCID"};
    n->global_rank = -1;
    for (size_t i = 0; i < sizeof(rank_vars) / sizeof(rank_vars[0]) && n->global_rank < 0; i++)
        n->global_rank = env_count(get, rank_vars[i]);
}

void tb_names_from_launcher(tb_names *n, int ppid, const char *(*get)(const char *))
{
    if (n->job_id[0] || !n->rank[0] || ppid <= 1)
        return;
    char comm[64];
    time_t start;
    if (tb_proc_start(ppid, comm, sizeof(comm), &start) < 0)
        return;
    /* a shell runs one command after another: its ranks are not one job */
    static const char *const shells[] = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox"};
    for (size_t i = 0; i < sizeof(shells) / sizeof(shells[0]); i++)
        if (!strcmp(comm, shells[i]))
            return;
    char t[64];
    if (tb_run_name_from_time(start, t, sizeof(t)) < 0)
        return;
    int64_t restart = env_count(get, "TORCHELASTIC_RESTART_COUNT");
    if (restart > 0)
        snprintf(n->job_id, sizeof(n->job_id), "%s_pid%d_restart%lld", t, ppid, (long long)restart);
    else
        snprintf(n->job_id, sizeof(n->job_id), "%s_pid%d", t, ppid);
}

const char *tb_names_hostname(tb_names *n)
{
    if (!n->hostname[0]) {
        if (gethostname(n->hostname, sizeof(n->hostname) - 1) < 0 || !n->hostname[0])
            snprintf(n->hostname, sizeof(n->hostname), "localhost");
        n->hostname[sizeof(n->hostname) - 1] = '\0';
        sanitize(n->hostname);
    }
    return n->hostname;
}

/* (time windows' seconds are printed with %.15g: whole, as %g's six
 * digits would give "1.00002e+06" from 11.6 days in, and one name to
 * windows 20 s apart from 116 days) */
/* A TBPROF_STEPS window, or a TBPROF_DELAY/DURATION one, is configured. */
static int env_window_set(const tb_config *cfg)
{
    return cfg->nwindows > 0 || cfg->duration_s > 0;
}

void tb_names_run(tb_names *n, const tb_config *cfg, const tb_run_req *r, unsigned ncaptures, char *out,
                  size_t len)
{
    char win[64] = "";
    if (r->fixed_window)
        snprintf(win, sizeof(win), "steps_%lld-%lld", (long long)r->first, (long long)r->last);
    if (r->asked && r->asked[0]) {
        /* the requester named it (`tbprof trigger` gives every process of
         * a job the same name); each repeat of a repeating one apart, by
         * its steps or by its number */
        if (r->repeating && win[0])
            snprintf(out, len, "%s_%s", r->asked, win);
        else if (r->repeating)
            snprintf(out, len, "%s_%lld", r->asked, (long long)r->nth);
        else
            snprintf(out, len, "%s", r->asked);
        return;
    }
    char t[64];
    tb_run_name_from_time((time_t)(r->begin_epoch_ns / 1000000000), t, sizeof(t));
    if (cfg->run[0]) {
        /* ranks agree: the same TBPROF_RUN and the same window */
        if (r->env_window && (cfg->nwindows > 1 || cfg->windows[0].period))
            snprintf(out, len, "%s_%s", cfg->run, win);
        else if (r->env_time && cfg->every_s > 0)
            snprintf(out, len, "%s_time_%.15g-%.15gs", cfg->run, r->time_from_s, r->time_from_s + cfg->duration_s);
        else if (r->env_window || r->env_time || (ncaptures == 0 && !env_window_set(cfg)))
            /* as is: the env window's (the one capture TBPROF_RUN is set
             * for), or, without one, the first capture's */
            snprintf(out, len, "%s", cfg->run);
        else
            snprintf(out, len, "%s_%u", cfg->run, ncaptures + 1);
        return;
    }
    if (n->job_id[0] && r->fixed_window)
        snprintf(out, len, "%s_%s", n->job_id, win);
    else if (n->job_id[0] && r->env_time)
        snprintf(out, len, "%s_time_%.15g-%.15gs", n->job_id, r->time_from_s, r->time_from_s + cfg->duration_s);
    else if (n->job_id[0])
        snprintf(out, len, "%s_%s", n->job_id, t);
    else
        snprintf(out, len, "%s", t);
    /* a second capture in the same second gets its own run folder */
    if (!strcmp(out, n->last_base)) {
        size_t l = strlen(out);
        snprintf(out + l, len - l, "_%u", ++n->same_base + 1);
    } else {
        snprintf(n->last_base, sizeof(n->last_base), "%s", out);
        n->same_base = 0;
    }
}

void tb_names_host(tb_names *n, const tb_config *cfg, int pid, char *out, size_t len)
{
    if (cfg->host[0])
        snprintf(out, len, "%s", cfg->host);
    else if (n->rank[0])
        snprintf(out, len, "%s.rank%s", tb_names_hostname(n), n->rank);
    else
        snprintf(out, len, "%s.pid%d", tb_names_hostname(n), pid);
}

void tb_names_child_host(char *host, size_t len, int pid)
{
    char own[32];
    int n = snprintf(own, sizeof(own), ".pid%d", pid);
    size_t l = strlen(host);
    if (l >= (size_t)n && !strcmp(host + l - n, own))
        return; /* <hostname>.pid<pid> already */
    snprintf(host + l, len > l ? len - l : 0, "%s", own);
}
