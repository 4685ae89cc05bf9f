/* config.h - TBPROF_* environment variables, read once from ONE table.
 *
 * The preload constructor calls tb_config_load() once; everything else reads
 * the parsed result through tb_config_get() (e.g. cupti/ reads cupti_path).
 * A bad value gives one warning naming the variable and the accepted form,
 * that feature is turned off (or, for sizes and rates, the default is used,
 * as the warning says), and the job runs on. `tbprof help env` prints the
 * same table (tb_config_help), so the docs cannot drift from the parser.
 */
#ifndef TBPROF_AGENT_CONFIG_H
#define TBPROF_AGENT_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sampler.h"
#ifndef TB_CPU_DEFAULT_HZ
#define TB_CPU_DEFAULT_HZ 499
#endif

#define TB_MAX_WINDOWS 16
#define TB_MAX_RANK_RANGES 64
#define TB_MAX_PERIOD 1000000000000LL /* steps between repeats of a window, at most */
#define TB_CONFIG_STR 512

/* TBPROF_CUDA_STEPS: whether cudaProfilerStart/Stop count steps. */
typedef enum tb_cuda_steps_mode {
    TB_CUDA_STEPS_OFF = 0,
    TB_CUDA_STEPS_ON, /* exported cudaProfilerStart/Stop count, then forward to the real ones */
} tb_cuda_steps_mode;

/* The values of an "auto | on | off" variable (TBPROF_SOCKET, TBPROF_CUPTI_TEARDOWN). */
typedef enum tb_auto_mode {
    TB_OFF = 0,
    TB_ON,
    TB_AUTO,
} tb_auto_mode;

/* TBPROF_SOCKET */
typedef enum tb_socket_mode {
    TB_SOCKET_OFF = TB_OFF,
    TB_SOCKET_ON = TB_ON,     /* listen, and serve from start-up: an agent thread in every process */
    TB_SOCKET_AUTO = TB_AUTO, /* listen; the agent thread (which serves it) starts with the
                                 process's second thread, or at the first trigger that needs it */
} tb_socket_mode;

typedef struct tb_window {
    int64_t first, last; /* steps first..last inclusive */
    int64_t period;      /* "A-B/P": again every P steps (A+P..B+P, ...); 0: once */
    int64_t count;       /* "A-B/PxK": K windows in all; 0: no end */
} tb_window;

/* The k-th window (k from 0) of the repeating window w, in *out: 0, or
 * -1 when w has no k-th (it ran out, or the numbers would overflow). */
int tb_window_nth(const tb_window *w, int64_t k, tb_window *out);
/* k of w's first repeat whose last step is m or later (0: w's own is). */
int64_t tb_window_index_from(const tb_window *w, int64_t m);

/* TBPROF_RANKS: global ranks lo..hi inclusive. */
typedef struct tb_rank_range {
    int64_t lo, hi;
} tb_rank_range;

/* A capture's shortest duration (TBPROF_DURATION, the socket's duration=):
 * shorter would be 0 ns, which means "until stopped". */
#define TB_MIN_DURATION_S 0.001

typedef struct tb_config {
    char logdir[TB_CONFIG_STR];   /* TBPROF_LOGDIR; "" = writing off */
    tb_window windows[TB_MAX_WINDOWS]; /* TBPROF_STEPS, ascending, disjoint */
    int nwindows;
    double duration_s; /* TBPROF_DURATION; 0 = unset */
    double delay_s;    /* TBPROF_DELAY; 0 = unset */
    double every_s;    /* TBPROF_EVERY: the time window again every this long; 0 = once */
    int64_t every_count; /* TBPROF_EVERY's xK: K time windows in all; 0 = no end */
    int signal;        /* TBPROF_SIGNAL; 0 = off */
    tb_rank_range ranks[TB_MAX_RANK_RANGES]; /* TBPROF_RANKS */
    int nranks;        /* 0 = all; -1: none (a bad value) */
    int gpu, cpu;      /* TBPROF_GPU, TBPROF_CPU */
    unsigned cpu_hz;   /* TBPROF_CPU_HZ */
    int cpu_mode;      /* TBPROF_CPU_MODE: tb_cpu_mode (sampler.h) */
    int py_trampoline; /* TBPROF_PY_TRAMPOLINE: 0 off, 1 on for captures, 2 on from start-up */
    int children;      /* TBPROF_CHILDREN: fork()ed children capture with the process (follow.h) */
    int64_t buffer_mb; /* TBPROF_BUFFER_MB */
    int64_t min_free_mb; /* TBPROF_MIN_FREE_MB */
    int64_t max_mb;    /* TBPROF_MAX_MB; 0 = no cap */
    int log_level;     /* TBPROF_LOG: tb_log_level */
    char run[TB_CONFIG_STR];  /* TBPROF_RUN; "" = derived */
    char host[TB_CONFIG_STR]; /* TBPROF_HOST; "" = derived */
    int trace_json;    /* TBPROF_TRACE_JSON */
    int socket;        /* TBPROF_SOCKET: tb_socket_mode */
    int python_helper; /* TBPROF_PYTHON_HELPER: the helper on PYTHONPATH of a preloaded Python */
    int pytorch_hook;  /* TBPROF_PYTORCH_HOOK (read by the Python helper) */
    int torch_ops;     /* TBPROF_TORCH_OPS (likewise): 0 off, 1 on, 2 with input shapes */
    int xla_ranges;    /* TBPROF_XLA_RANGES: accept XLA's NVTX domain "TSL" */
    int jax_hook;      /* TBPROF_JAX_HOOK (read by the Python helper) */
    int tf_hook;       /* TBPROF_TF_HOOK (read by the Python helper) */
    char cupti_path[TB_CONFIG_STR]; /* TBPROF_CUPTI_PATH; "" = search */
    int cuda_steps;    /* TBPROF_CUDA_STEPS: tb_cuda_steps_mode (preload/cudasteps.h) */
    char nvtx_step[TB_CONFIG_STR]; /* TBPROF_NVTX_STEP; "" = NVTX steps off */
    int nvtx;          /* TBPROF_NVTX: record NVTX ranges while capturing */
    int64_t start_wait_ms; /* TBPROF_START_WAIT_MS */
    int64_t step_roundup;  /* TBPROF_STEP_ROUNDUP */
    int64_t gpu_drain_ms;  /* TBPROF_GPU_DRAIN_MS */
    int cupti_teardown; /* TBPROF_CUPTI_TEARDOWN: tb_auto_mode (cupti/gpu.c decides auto) */
    int cuda_api_all;  /* TBPROF_CUDA_API_ALL: also the constant queries cupti/translate.c leaves out */
    int64_t stall_warn_ms; /* TBPROF_STALL_WARN_MS; 0 = no watch (agent/stall.h) */
    int warnings;      /* how many variables had bad values */
} tb_config;

/* Getter for the environment: getenv() in the agent, a table in tests. */
typedef const char *(*tb_getenv_fn)(const char *name, void *ud);

/* Fill `c` from the defaults and the environment (get == NULL: getenv).
 * Warns once per bad variable (through tb_warn). Returns c->warnings. */
int tb_config_load(tb_config *c, tb_getenv_fn get, void *ud);

/* The process-wide config (loaded by the preload constructor; defaults
 * until then). */
const tb_config *tb_config_get(void);
void tb_config_set_global(const tb_config *c);

/* Parsers, exposed for tests and the CLI. 0 or -EINVAL. */
int tb_parse_steps(const char *s, tb_window *w, int max, int *n);
/* "S" or "SxK" (TBPROF_EVERY): seconds as tb_parse_seconds, K >= 1 (0: none given). */
int tb_parse_every(const char *s, double *sec, int64_t *count);
int tb_parse_seconds(const char *s, double *out);
int tb_parse_bool(const char *s, int *out);
int tb_parse_signal(const char *s, int *out);
/* "all", or ranks and ranges "0,8-15" (at most max of them); r and n are
 * left as they were on a bad value. */
int tb_parse_ranks(const char *s, tb_rank_range *r, int max, int *n);
/* Whether TBPROF_RANKS takes global rank `rank` (-1: the process has none,
 * taken only when all ranks are). */
int tb_ranks_take(const tb_config *c, int64_t rank);
/* A signal as TBPROF_SIGNAL names it: "USR2", "RTMIN+3" (written into
 * buf where it is not a constant). */
const char *tb_signal_name(int sig, char *buf, size_t n);

/* `tbprof help env`: the table as text, or as a Markdown table. */
void tb_config_help(FILE *f, int markdown);

/* An upper bound on the pieces glibc's regcomp makes of extended regex
 * p, its repeats written out; cap + 1 once past cap, and for a
 * back-reference (glibc's regexec backtracks on those). TBPROF_NVTX_STEP's
 * /regex/ is refused past 1000 (regcomp's time and memory grow faster
 * than that: s{1,30000} took 7 GB). */
unsigned long tb_regex_cost(const char *p, unsigned long cap);

#endif
