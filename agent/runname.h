/* runname.h - what a capture's files are called.
 *
 * <logdir>/plugins/profile/<run>/<host>.xplane.pb: TensorBoard shows one run
 * folder as one profile and its files as its hosts, so every rank of a job
 * that captured the same window must pick the same <run>, and each rank a
 * <host> of its own. The inputs from the environment are read once
 * (tb_names_read_env); the rules are functions of them, the capture and the
 * config, tested on their own (tests/unit/test_runname.c).
 */
#ifndef TBPROF_AGENT_RUNNAME_H
#define TBPROF_AGENT_RUNNAME_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct tb_names {
    char job_id[128];    /* TORCHELASTIC_RUN_ID, SLURM_JOB_ID, ... ("": none) */
    char rank[32];       /* RANK, else LOCAL_RANK ("": none) */
    int64_t rank_num;    /* RANK as a number; -1: unset or not one */
    int64_t world_size;  /* WORLD_SIZE, with RANK only; -1 likewise */
    int64_t global_rank; /* RANK, else an MPI or Slurm rank variable; -1: none */
    char hostname[256];  /* asked for at the first use (tb_names_hostname) */
    char last_base[256]; /* the last run name made from the clock ... */
    unsigned same_base;  /* ... and how many more had it */
} tb_names;

/* What a capture brings to its run name. */
typedef struct tb_run_req {
    const char *asked;      /* the requester's name for it (socket run=, `tbprof trigger --run`); "" or NULL: none */
    int64_t first, last;    /* with fixed_window: its step numbers */
    int fixed_window;       /* steps by number (TBPROF_STEPS, `start steps=A-B`, tbprof_capture_steps) */
    int env_window;         /* one of TBPROF_STEPS' windows */
    int repeating;          /* a requested window that repeats (`start ... every=P`): one folder each */
    int64_t nth;            /* ... by time: which repeat, from 1 (ranks asked together agree on it) */
    int env_time;           /* the TBPROF_DELAY/TBPROF_DURATION window */
    double time_from_s;     /* with env_time: seconds after start-up it began at (TBPROF_EVERY's repeats) */
    int64_t begin_epoch_ns; /* when capturing began */
} tb_run_req;

/* Read the job id and rank (get: getenv, or a table in tests). Names are
 * made safe for a path: anything outside [A-Za-z0-9._-] becomes '_'. */
void tb_names_read_env(tb_names *n, const char *(*get)(const char *));

/* Where no job id was found but the process is a rank (RANK or
 * LOCAL_RANK set): the job id of its launcher, the parent ppid (torchrun's
 * agent, mpirun's daemon, deepspeed's launch.py), from its start time and
 * pid ("2026_12_06_05_48_47_pid1234", "_restart<N>" after a torchrun
 * restart), which every local rank reads alike, so that ranks reaching a
 * window in different seconds still share its run folder. Not when the
 * parent is pid 1 or a shell (which runs unrelated commands in turn). */
void tb_names_from_launcher(tb_names *n, int ppid, const char *(*get)(const char *));

/* The run folder of a capture: the name asked for; else TBPROF_RUN (with
 * the window when TBPROF_STEPS has several, with _<N> for this process's
 * N-th capture when it is not a TBPROF_STEPS one); else the job id with the
 * window (steps_A-B, time_D-Es) or the time; else the time
 * (YYYY_MM_DD_HH_MM_SS, _2, _3 for more in the same second). ncaptures:
 * profiles this process wrote before. */
void tb_names_run(tb_names *n, const tb_config *cfg, const tb_run_req *r, unsigned ncaptures, char *out,
                  size_t len);

/* The file stem: TBPROF_HOST; else <hostname>.rank<RANK>; else
 * <hostname>.pid<pid>. */
void tb_names_host(tb_names *n, const tb_config *cfg, int pid, char *out, size_t len);
/* A fork()ed child capturing with its parent (follow.h) writes beside the
 * parent's file: its host name gets ".pid<pid>" unless it ends with it
 * already (a child of a rank has the rank's RANK, and TBPROF_HOST is
 * inherited). */
void tb_names_child_host(char *host, size_t len, int pid);

/* gethostname (made safe; "localhost" if none), asked for once. */
const char *tb_names_hostname(tb_names *n);

#endif
