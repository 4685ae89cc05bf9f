/* test_runname.c - the names of a capture's files (agent/runname.h): the
 * run folder ranks of one job agree on, from each source of a name in its
 * order (asked for, TBPROF_RUN, job id, clock), and each rank's file stem;
 * environment values made safe for a path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "profile.h"
#include "runname.h"
#include "tap.h"

static const char *const *envv; /* NAME, value, ..., NULL */

static const char *get(const char *name)
{
    for (const char *const *e = envv; e && *e; e += 2)
        if (!strcmp(e[0], name))
            return e[1];
    return NULL;
}

static const char *no_env(const char *name, void *ud)
{
    (void)name;
    (void)ud;
    return NULL;
}

static tb_names names_of(const char *const *env)
{
    tb_names n;
    envv = env;
    tb_names_read_env(&n, get);
    return n;
}

#define T0 1800000000000000000LL /* a capture's start, ns since the epoch */

static const char *run(tb_names *n, const tb_config *c, const tb_run_req *r, unsigned ncaptures)
{
    static char out[300];
    tb_names_run(n, c, r, ncaptures, out, sizeof(out));
    return out;
}

int main(void)
{
    tb_config cfg;
    tb_config_load(&cfg, no_env, NULL); /* the defaults */
    char t0[64];
    tb_run_name_from_time((time_t)(T0 / 1000000000), t0, sizeof(t0));

    /* the job's identity, made safe for a path; torchrun's "none" is no id */
    static const char *const slurm[] = {"TORCHELASTIC_RUN_ID", "none", "SLURM_JOB_ID", "12/34 x",
                                        "RANK", "3", "WORLD_SIZE", "8", NULL};
    tb_names n = names_of(slurm);
    CHECK_STR(n.job_id, "12_34_x");
    CHECK_STR(n.rank, "3");
    CHECK_EQ_I(n.rank_num, 3);
    CHECK_EQ_I(n.world_size, 8);
    static const char *const local[] = {"LOCAL_RANK", "1", "WORLD_SIZE", "8", NULL};
    tb_names l = names_of(local);
    CHECK_STR(l.job_id, "");
    CHECK_STR(l.rank, "1");             /* names the file ... */
    CHECK_EQ_I(l.rank_num, -1);         /* ... but is not the global rank */
    CHECK_EQ_I(l.world_size, -1);
    static const char *const odd[] = {"RANK", "a/b", NULL};
    tb_names o = names_of(odd);
    CHECK_STR(o.rank, "a_b");
    CHECK_EQ_I(o.rank_num, -1);
    /* the global rank TBPROF_RANKS goes by: RANK first, then MPI's, srun's;
     * LOCAL_RANK is not one */
    CHECK_EQ_I(n.global_rank, 3);
    CHECK_EQ_I(l.global_rank, -1);
    static const char *const mpi[] = {"SLURM_PROCID", "9", "OMPI_COMM_WORLD_RANK", "5", NULL};
    CHECK_EQ_I(names_of(mpi).global_rank, 5);
    static const char *const srun[] = {"SLURM_PROCID", "9", "LOCAL_RANK", "0", NULL};
    CHECK_EQ_I(names_of(srun).global_rank, 9);

    /* 1. asked for: wins over everything */
    tb_run_req steps = {.asked = "", .first = 10, .last = 12, .fixed_window = 1, .env_window = 1,
                        .begin_epoch_ns = T0};
    tb_run_req asked = steps;
    asked.asked = "job42";
    CHECK_STR(run(&n, &cfg, &asked, 0), "job42");
    asked.repeating = 1; /* `start steps=10-12 every=P run=job42`: each repeat its own folder */
    CHECK_STR(run(&n, &cfg, &asked, 0), "job42_steps_10-12");
    asked.repeating = 0;

    /* 2. TBPROF_RUN: as is for one window or the first capture; the window
     * when there are several; _N for this process's later captures */
    snprintf(cfg.run, sizeof(cfg.run), "exp1");
    cfg.nwindows = 1;
    CHECK_STR(run(&n, &cfg, &steps, 3), "exp1");
    cfg.nwindows = 2;
    CHECK_STR(run(&n, &cfg, &steps, 3), "exp1_steps_10-12");
    cfg.nwindows = 1; /* one window repeating ("10-12/100"): each repeat its own folder */
    cfg.windows[0].period = 100;
    CHECK_STR(run(&n, &cfg, &steps, 3), "exp1_steps_10-12");
    cfg.windows[0].period = 0;
    tb_run_req trig = {.begin_epoch_ns = T0};
    /* the plain name is the env window's: a signal or trigger capture
     * before it gets its own (before: both "exp1", one run folder with the
     * two profiles as h and h.1) */
    CHECK_STR(run(&n, &cfg, &trig, 0), "exp1_1");
    CHECK_STR(run(&n, &cfg, &steps, 1), "exp1");
    cfg.nwindows = 0; /* no env window: the first capture has it */
    CHECK_STR(run(&n, &cfg, &trig, 0), "exp1");
    CHECK_STR(run(&n, &cfg, &trig, 2), "exp1_3");
    cfg.nwindows = 1;
    cfg.run[0] = '\0';

    /* 3. the job id: with the window (steps or TBPROF_DELAY/DURATION), else
     * with the time */
    CHECK_STR(run(&n, &cfg, &steps, 0), "12_34_x_steps_10-12");
    cfg.delay_s = 30;
    cfg.duration_s = 5;
    tb_run_req timewin = {.env_time = 1, .time_from_s = 30, .begin_epoch_ns = T0};
    CHECK_STR(run(&n, &cfg, &timewin, 0), "12_34_x_time_30-35s");
    /* TBPROF_EVERY=600: the third one began 1230 s in */
    cfg.every_s = 600;
    timewin.time_from_s = 1230;
    CHECK_STR(run(&n, &cfg, &timewin, 2), "12_34_x_time_1230-1235s");
    snprintf(cfg.run, sizeof(cfg.run), "exp1"); /* with TBPROF_RUN too: each its own folder */
    CHECK_STR(run(&n, &cfg, &timewin, 2), "exp1_time_1230-1235s");
    cfg.run[0] = '\0';
    /* a server watched for weeks: the seconds in full, never "1.00002e+06"
     * (which also made windows 20 s apart 116 days in share one name) */
    timewin.time_from_s = 1000020;
    CHECK_STR(run(&n, &cfg, &timewin, 2), "12_34_x_time_1000020-1000025s");
    cfg.every_s = 20;
    timewin.time_from_s = 10000020;
    CHECK_STR(run(&n, &cfg, &timewin, 2), "12_34_x_time_10000020-10000025s");
    timewin.time_from_s = 10000040;
    CHECK_STR(run(&n, &cfg, &timewin, 2), "12_34_x_time_10000040-10000045s");
    timewin.time_from_s = 2.5; /* fractions as given */
    cfg.duration_s = 0.25;
    CHECK_STR(run(&n, &cfg, &timewin, 2), "12_34_x_time_2.5-2.75s");
    cfg.duration_s = 5;
    cfg.every_s = 0;
    char want[300];
    snprintf(want, sizeof(want), "12_34_x_%s", t0);
    CHECK_STR(run(&n, &cfg, &trig, 0), want);

    /* 4. the time; a second and third capture in the same second get _2, _3 */
    CHECK_STR(run(&l, &cfg, &trig, 0), t0);
    snprintf(want, sizeof(want), "%s_2", t0);
    CHECK_STR(run(&l, &cfg, &trig, 1), want);
    snprintf(want, sizeof(want), "%s_3", t0);
    CHECK_STR(run(&l, &cfg, &trig, 2), want);
    tb_run_req later = {.begin_epoch_ns = T0 + 1000000000LL};
    char t1[64];
    tb_run_name_from_time((time_t)(later.begin_epoch_ns / 1000000000), t1, sizeof(t1));
    CHECK_STR(run(&l, &cfg, &later, 3), t1);

    /* the file stem: TBPROF_HOST, else host.rank<RANK>, else host.pid<pid> */
    char host[400], want_host[400];
    const char *hn = tb_names_hostname(&n);
    CHECK(hn[0] != '\0' && strchr(hn, '/') == NULL);
    tb_names_host(&n, &cfg, 77, host, sizeof(host));
    snprintf(want_host, sizeof(want_host), "%s.rank3", hn);
    CHECK_STR(host, want_host);
    tb_names none = names_of(NULL);
    tb_names_host(&none, &cfg, 77, host, sizeof(host));
    snprintf(want_host, sizeof(want_host), "%s.pid77", tb_names_hostname(&none));
    CHECK_STR(host, want_host);
    snprintf(cfg.host, sizeof(cfg.host), "trainer-a");
    tb_names_host(&n, &cfg, 77, host, sizeof(host));
    CHECK_STR(host, "trainer-a");

    /* a fork child capturing with its parent: .pid<pid> after the stem it
     * inherited, once (host.pid<pid> is its own already) */
    tb_names_child_host(host, sizeof(host), 78);
    CHECK_STR(host, "trainer-a.pid78");
    tb_names_host(&n, &(tb_config){0}, 78, host, sizeof(host));
    tb_names_child_host(host, sizeof(host), 78);
    snprintf(want_host, sizeof(want_host), "%s.rank3.pid78", hn);
    CHECK_STR(host, want_host);
    tb_names_host(&none, &(tb_config){0}, 78, host, sizeof(host));
    tb_names_child_host(host, sizeof(host), 78);
    snprintf(want_host, sizeof(want_host), "%s.pid78", tb_names_hostname(&none));
    CHECK_STR(host, want_host);
    tb_names_host(&none, &(tb_config){0}, 788, host, sizeof(host)); /* (ends in "pid88"? no: ".pid788") */
    tb_names_child_host(host, sizeof(host), 88);
    snprintf(want_host, sizeof(want_host), "%s.pid788.pid88", tb_names_hostname(&none));
    CHECK_STR(host, want_host);
    char tiny[8] = "abcdef";
    tb_names_child_host(tiny, sizeof(tiny), 123456); /* cut, terminated */
    CHECK_STR(tiny, "abcdef.");
    return tap_done();
}
