/* config.c - the TBPROF_* table and its parsers (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sampler.h"

/* TBPROF_RUN and TBPROF_HOST are file name components (NAME_MAX 255), to
 * which suffixes are added: up to ~46 bytes ("_steps_A-B") to a run, and to
 * a host ".N.trace.json.gz", or 45 bytes around it in
 * "events.out.tfevents.<time>.<host>.profile-empty" */
#define TB_NAME_MAX 200

typedef enum {
    T_STR,   /* any string (bounded) */
    T_BOOL,  /* on/off */
    T_UINT,  /* integer in [min, max] */
    T_SEC,   /* seconds */
    T_STEPS, /* step windows */
    T_SIG,   /* signal name or off */
    T_LOG,   /* log level */
    T_CPUMODE,
    T_CUDASTEPS,
    T_AUTO,  /* auto | on | off: tb_auto_mode */
    T_OPS,   /* on | off | shapes: 1, 0, 2 */
    T_TRAMP, /* capture (or on) | always | off: 1, 2, 0 */
    T_EVERY, /* seconds, or seconds x count */
    T_RANKS, /* all, or ranks and ranges */
} var_type;

typedef struct var {
    const char *name;
    var_type type;
    const char *def;  /* default, in the accepted form ("" = unset) */
    const char *form; /* accepted form, shown in warnings and help */
    const char *help;
    const char *bad;  /* what happens on a bad value */
    const char *bad_value; /* value used then (in the accepted form) */
    size_t off;       /* field in tb_config */
    long long min, max;
} var;

#define F(field) offsetof(tb_config, field)
#define STR_(x) #x
#define XSTR(x) STR_(x)

/* glibc's regcomp writes a repeated part out once per repeat ({m,n}: n
 * times, +: twice), so stacked and nested repeats multiply, and its time
 * and memory grow faster still: s{1,4000} took 124 MB, s{1,30000} 7 GB
 * and 16 s, "s" and twenty '+' 700 MB (found by lf_config). A pattern past
 * this many pieces is refused before it is compiled (about 10 MB). */
#define REGEX_PIECES_MAX 1000

unsigned long tb_regex_cost(const char *p, unsigned long cap)
{
    enum { DEPTH = 64 };
    unsigned long sum[DEPTH], last[DEPTH]; /* per open group: pieces before its last item, and that item's */
    int d = 0;
    sum[0] = last[0] = 0;
#define SAT(x) ((x) > cap ? cap + 1 : (x))
    while (*p) {
        char ch = *p++;
        unsigned long k = 0; /* a repeat's copies (0: not a repeat) */
        if (ch == '\\' && *p >= '1' && *p <= '9') {
            return cap + 1; /* a back-reference: glibc's regexec backtracks (on the job's thread) */
        } else if (ch == '\\' && *p) {
            p++;
        } else if (ch == '[') { /* a bracket expression: one piece */
            p += *p == '^';
            p += *p == ']';
            while (*p && *p != ']') {
                if (*p == '[' && (p[1] == ':' || p[1] == '.' || p[1] == '=')) {
                    char close = p[1];
                    for (p += 2; *p && !(p[0] == close && p[1] == ']'); p++)
                        ;
                    p += *p ? 2 : 0;
                } else {
                    p++;
                }
            }
            p += *p == ']';
        } else if (ch == '(') {
            if (d + 1 == DEPTH)
                return cap + 1;
            d++;
            sum[d] = last[d] = 0;
            continue;
        } else if (ch == ')' && d > 0) {
            unsigned long group = SAT(sum[d] + last[d] + 1);
            d--;
            sum[d] = SAT(sum[d] + last[d]);
            last[d] = group;
            continue;
        } else if (ch == '|') {
            sum[d] = SAT(sum[d] + last[d] + 1);
            last[d] = 0;
            continue;
        } else if (ch == '*' || ch == '?') {
            k = 1;
        } else if (ch == '+') {
            k = 2;
        } else if (ch == '{' && *p >= '0' && *p <= '9') { /* {m}, {m,}, {m,n}; else a '{' */
            const char *q = p;
            unsigned long m = 0, n;
            for (; *q >= '0' && *q <= '9'; q++)
                m = SAT(m * 10 + (unsigned long)(*q - '0'));
            n = m;
            if (*q == ',') {
                q++;
                n = m + 1;
                if (*q >= '0' && *q <= '9')
                    for (n = 0; *q >= '0' && *q <= '9'; q++)
                        n = SAT(n * 10 + (unsigned long)(*q - '0'));
            }
            if (*q == '}') {
                p = q + 1;
                k = n > m ? n : m;
                k = k ? k : 1;
            }
        }
        if (k) {
            last[d] = SAT(last[d] * k + 1);
            continue;
        }
        sum[d] = SAT(sum[d] + last[d]); /* an ordinary piece */
        last[d] = 1;
    }
    unsigned long total = SAT(sum[d] + last[d]);
    while (d-- > 0)
        total = SAT(total + sum[d] + last[d]);
    return total;
#undef SAT
}

/* The one table: parser, defaults, warnings and `tbprof help env` all read it. */
static const var vars[] = {
    {"TBPROF_LOGDIR", T_STR, "logs", "a directory path",
     "where profiles go: <dir>/plugins/profile/<run>/<host>.xplane.pb (TensorBoard --logdir); a relative "
     "path is taken against the working directory at start-up, once (a later chdir() does not move it, "
     "and processes the job starts inherit it as that absolute path)",
     "writing off", "", F(logdir), 0, 0},
    {"TBPROF_STEPS", T_STEPS, "", "A,B | A-B | N | several as A-B;C-D | the last one repeating as A-B/P or A-B/PxK",
     "capture steps A..B inclusive (Keras-compatible \"10,20\"); each window is its own run; A-B/P: "
     "again every P steps (A+P..B+P, ...), PxK: K windows in all",
     "step capture off", "", F(windows), 0, 0},
    {"TBPROF_DURATION", T_SEC, "", "seconds, at least 1 ms (e.g. 10, 2.5, 500ms)",
     "time-window capture for programs without steps: capture this long (after TBPROF_DELAY)",
     "time-window capture off", "", F(duration_s), 0, 0},
    {"TBPROF_DELAY", T_SEC, "", "seconds >= 0 (e.g. 30, 500ms)",
     "start the time-window capture this long after start-up (default duration 10 s)",
     "time-window capture off", "", F(delay_s), 0, 0},
    {"TBPROF_EVERY", T_EVERY, "", "seconds > TBPROF_DURATION, or SxK (e.g. 10m, 600x6)",
     "repeat the time-window capture every S seconds, for long jobs and servers without steps: the "
     "first at TBPROF_DELAY (default: S) after start-up, each next S after the one before; xK: K "
     "captures in all",
     "no repeat", "", F(every_s), 0, 0},
    {"TBPROF_SIGNAL", T_SIG, "off", "off | USR1 | USR2 | RTMIN+N",
     "opt-in: this signal starts a capture (like `tbprof trigger PID`)", "signal trigger off",
     "off", F(signal), 0, 0},
    {"TBPROF_RANKS", T_RANKS, "all", "all | R,A-B,... (e.g. 0,8-15)",
     "a job of many ranks: only these ranks take the environment's windows (TBPROF_STEPS, "
     "TBPROF_DURATION) and the signal (TBPROF_SIGNAL, then ignored elsewhere); the global rank is "
     "RANK, else OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK or SLURM_PROCID, and a process with none (a "
     "launcher) is left out. Not filtered: `tbprof trigger PID` (it names its processes) and the API",
     "no rank takes the environment's windows", "", F(ranks), 0, 0},
    {"TBPROF_GPU", T_BOOL, "on", "on | off", "GPU tracing (CUPTI) during captures",
     "GPU tracing off", "off", F(gpu), 0, 0},
    {"TBPROF_CPU", T_BOOL, "on", "on | off", "CPU stack sampling (perf_event) during captures",
     "CPU sampling off", "off", F(cpu), 0, 0},
    {"TBPROF_CPU_HZ", T_UINT, XSTR(TB_CPU_DEFAULT_HZ), "integer 1..10000",
     "CPU samples per second of each thread's CPU time",
     "CPU sampling off", "", F(cpu_hz), 1, 10000},
    {"TBPROF_CPU_MODE", T_CPUMODE, "dwarf", "dwarf | fp",
     "CPU stacks: copy user stacks and unwind with DWARF (dwarf) or frame pointers only (fp)",
     "using dwarf", "dwarf", F(cpu_mode), 0, 0},
    {"TBPROF_PY_TRAMPOLINE", T_TRAMP, "capture", "capture | always | off",
     "CPython >= 3.10, dwarf stacks: the perf trampoline (Python frames in the samples; 3.10 and 3.11: "
     "tbprof's own, x86-64) on for each capture and off after it, as it costs every Python call while on (the "
     "main thread's frames entered before the capture are named from its frame list); always (3.12+): on from "
     "start-up (PYTHONPERFSUPPORT=1 in a preloaded Python), so every thread's frames entered before a capture are "
     "named too",
     "trampoline left alone", "off", F(py_trampoline), 0, 0},
    {"TBPROF_CHILDREN", T_BOOL, "on", "on | off",
     "a child fork()ed from the process (a data-loader worker) captures while the process captures, "
     "into the same run folder as <host>.pid<pid> (Python children through the Python helper, "
     "multiprocessing's spawn and forkserver workers included; C programs call tbprof_follow_parent() "
     "in theirs)",
     "children not followed", "off", F(children), 0, 0},
    {"TBPROF_BUFFER_MB", T_UINT, "64", "integer 1..65536",
     "capture memory (GPU activity buffers and sample rings); full = counted drops",
     "using 64", "64", F(buffer_mb), 1, 65536},
    {"TBPROF_MAX_MB", T_UINT, "512", "integer 0..65536 (0 = no cap)",
     "cap on one profile's in-memory events and on its xplane.pb size", "using 512", "512",
     F(max_mb), 0, 65536},
    {"TBPROF_MIN_FREE_MB", T_UINT, "512", "integer 0..16777216 (0 = no floor)",
     "a profile is not written where its files would leave the logdir's file system with less free "
     "space than this (room for the job's own checkpoints and logs)",
     "using 512", "512", F(min_free_mb), 0, 16777216},
    {"TBPROF_LOG", T_LOG, "warn", "off | error | warn | info | debug", "what tbprof prints on stderr",
     "using warn", "warn", F(log_level), 0, 0},
    {"TBPROF_RUN", T_STR, "", "a name without '/', at most " XSTR(TB_NAME_MAX) " bytes",
     "run folder name; default: job id (TORCHELASTIC_RUN_ID, SLURM_JOB_ID, ..., else a rank's "
     "launcher) + step window, else local time",
     "using the derived name", "", F(run), 0, 0},
    {"TBPROF_HOST", T_STR, "", "a name without '/', at most " XSTR(TB_NAME_MAX) " bytes",
     "file stem; default: hostname + .rank<RANK> (or LOCAL_RANK), else .pid<pid>",
     "using the derived name", "", F(host), 0, 0},
    {"TBPROF_TRACE_JSON", T_BOOL, "on", "on | off", "also write <host>.trace.json.gz (Perfetto)",
     "trace JSON off", "off", F(trace_json), 0, 0},
    {"TBPROF_SOCKET", T_AUTO, "auto", "auto | on | off",
     "control socket for `tbprof trigger PID` (abstract Unix socket, same uid only); auto: served "
     "once the process has a second thread (no thread of ours in single-threaded programs), on: "
     "served from start-up",
     "control socket off", "off", F(socket), 0, 0},
    {"TBPROF_PYTHON_HELPER", T_BOOL, "on", "on | off",
     "a Python started with libtbprof.so in LD_PRELOAD gets tbprof's Python helper as under `tbprof "
     "run`: share/tbprof/python (beside the library) first on PYTHONPATH, and the PyTorch, JAX and "
     "TensorFlow step hooks on where their variables are unset",
     "helper left out", "off", F(python_helper), 0, 0},
    {"TBPROF_PYTORCH_HOOK", T_BOOL, "off", "on | off",
     "Python: count optimizer steps as tbprof steps (set by `tbprof run`, and in a preloaded Python by "
     "TBPROF_PYTHON_HELPER)", "hook off", "off",
     F(pytorch_hook), 0, 0},
    {"TBPROF_TORCH_OPS", T_OPS, "off", "on | off | shapes",
     "Python, with the PyTorch hook: torch's NVTX op ranges (emit_nvtx) on from the first optimizer "
     "step of each capture to its end, so each torch op is a range and the CUDA calls and GPU work "
     "inside it carry its name (`tbprof run --torch-ops`); shapes: with each op's input shapes "
     "(stat torch_args; `--torch-shapes`), at a higher cost per op",
     "op ranges off", "off", F(torch_ops), 0, 0},
    {"TBPROF_XLA_RANGES", T_BOOL, "off", "on | off",
     "record XLA's per-op NVTX ranges (JAX, TensorFlow: NVTX domain \"TSL\"), naming each kernel by "
     "its HLO op; off: tbprof declines that domain, as without a tool, because XLA then stops feeding "
     "its own profiler's op annotations (jax.profiler traces in the process would lose their op names)",
     "XLA ranges off", "off", F(xla_ranges), 0, 0},
    {"TBPROF_JAX_HOOK", T_BOOL, "off", "on | off",
     "Python: count jax.profiler.StepTraceAnnotation steps (their step_num) as tbprof steps (set by "
     "`tbprof run`)",
     "hook off", "off", F(jax_hook), 0, 0},
    {"TBPROF_TF_HOOK", T_BOOL, "off", "on | off",
     "Python: count step-marking tf.profiler.experimental.Trace annotations (a step_num, or _r=1 as "
     "Keras' fit loop passes) as tbprof steps (set by `tbprof run`)",
     "hook off", "off", F(tf_hook), 0, 0},
    {"TBPROF_CUPTI_PATH", T_STR, "", "path to libcupti.so",
     "libcupti to load when none is loaded yet (default: search CUDA and pip folders)",
     "searching", "", F(cupti_path), 0, 0},
    {"TBPROF_CUDA_STEPS", T_CUDASTEPS, "on", "on | off",
     "each cudaProfilerStart() (or cuProfilerStart) begins a step, cudaProfilerStop ends it "
     "(calls through the dynamic linker: a shared libcudart, not nvcc's static one); unset, off where "
     "TBPROF_NVTX_STEP is set",
     "using on", "on", F(cuda_steps), 0, 0},
    {"TBPROF_NVTX_STEP", T_STR, "", "a name prefix, or /regex/ (POSIX extended, no back-references, at most 1000 pieces with its repeats written out)",
     "NVTX ranges/marks whose name matches are steps (a number after the prefix, or regex group 1, "
     "is the step number); sets NVTX_INJECTION64_PATH when unset",
     "NVTX steps off", "", F(nvtx_step), 0, 0},
    {"TBPROF_START_WAIT_MS", T_UINT, "2000", "integer 0..60000",
     "a step window's first boundary waits up to this long for the sources still starting (CUPTI's "
     "first load), so the window holds whole steps; 0: never wait",
     "using 2000", "2000", F(start_wait_ms), 0, 60000},
    {"TBPROF_STEP_ROUNDUP", T_UINT, "0", "integer 0..1000000",
     "a triggered steps capture (the signal, `tbprof trigger PID --steps N`) begins at the next step "
     "number divisible by this, so ranks triggered moments apart capture the same steps; 0: at the "
     "next step",
     "using 0", "0", F(step_roundup), 0, 1000000},
    {"TBPROF_GPU_DRAIN_MS", T_UINT, "2000", "integer 0..60000",
     "at the end of a capture, wait up to this long (on tbprof's thread, never the job's) for GPU "
     "work launched in the window and still running, so its records are complete; 0: never wait "
     "(work still running is left out)",
     "using 2000", "2000", F(gpu_drain_ms), 0, 60000},
    {"TBPROF_NVTX", T_BOOL, "on", "on | off",
     "record NVTX ranges and marks on their thread's line while capturing (NVTX's injection: sets "
     "NVTX_INJECTION64_PATH when unset)",
     "NVTX ranges off", "off", F(nvtx), 0, 0},
    {"TBPROF_CUPTI_TEARDOWN", T_AUTO, "auto", "auto | on | off",
     "after each capture, detach CUPTI from the process (cuptiFinalize at the exit of a CUDA call), "
     "so the job runs as fast as before it; auto: on with CUPTI 12.6 or later (older ones can crash "
     "re-attaching with CUDA graphs), off: unsubscribe only (CUPTI stays loaded, its instrumentation "
     "cost too)",
     "using auto", "auto", F(cupti_teardown), 0, 0},
    {"TBPROF_CUDA_API_ALL", T_BOOL, "off", "on | off",
     "record every CUDA runtime and driver call; off: leave out those that launch no GPU work and "
     "are made constantly (cudaGetDevice, cudaGetLastError, cuCtxGetCurrent, cuPointerGetAttribute, "
     "event and stream queries, ...: the list is in the profile's tbprof_cuda_api_left_out)",
     "using off", "off", F(cuda_api_all), 0, 0},
    {"TBPROF_STALL_WARN_MS", T_UINT, "5000", "integer 0..600000 (0 = off)",
     "warn when a CUPTI call tbprof makes to start, stop or detach tracing has not returned after "
     "this long, naming the call (a job stopped there is stuck inside CUPTI or the CUDA driver), or "
     "a profile write has not moved for this long (a slow or hung file system); 0: no watch, and no "
     "watcher thread",
     "using 5000", "5000", F(stall_warn_ms), 0, 600000},
};
#define NVARS (sizeof(vars) / sizeof(vars[0]))

/* ---- parsers ---------------------------------------------------------------- */

static const char *skip_ws(const char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    return s;
}

int tb_parse_bool(const char *s, int *out)
{
    static const char *const on[] = {"on", "1", "true", "yes"};
    static const char *const off[] = {"off", "0", "false", "no"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, on[i])) {
            *out = 1;
            return 0;
        }
        if (!strcasecmp(s, off[i])) {
            *out = 0;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_i64(const char **p, int64_t *out)
{
    const char *s = skip_ws(*p);
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || v < 0)
        return -EINVAL;
    *out = v;
    *p = skip_ws(end);
    return 0;
}

/* "/P" or "/PxK" after a window: P > the window's length (so the repeats
 * neither overlap nor touch), K >= 1. */
static int parse_period(const char **p, tb_window *w)
{
    /* period - 1 <= last - first: P <= the window's length, which itself
     * (last - first + 1) overflows for 0-INT64_MAX */
    if (parse_i64(p, &w->period) || w->period - 1 <= w->last - w->first || w->period > TB_MAX_PERIOD)
        return -EINVAL;
    if (**p == 'x' || **p == 'X') {
        (*p)++;
        if (parse_i64(p, &w->count) || w->count < 1)
            return -EINVAL;
    }
    return 0;
}

int tb_parse_steps(const char *s, tb_window *w, int max, int *n)
{
    int k = 0;
    const char *p = skip_ws(s);
    if (!*p)
        return -EINVAL;
    for (;;) {
        tb_window win = {0};
        if (parse_i64(&p, &win.first))
            return -EINVAL;
        if (*p == ',' || *p == '-') {
            p++;
            if (parse_i64(&p, &win.last))
                return -EINVAL;
        } else {
            win.last = win.first;
        }
        if (win.last < win.first)
            return -EINVAL;
        if (*p == '/') {
            p++;
            if (parse_period(&p, &win))
                return -EINVAL;
            p = skip_ws(p);
        }
        if (k && win.first <= w[k - 1].last)
            return -EINVAL; /* windows must ascend without overlap */
        if (k && w[k - 1].period)
            return -EINVAL; /* a repeating window is the last one */
        if (k == max)
            return -EINVAL;
        w[k++] = win;
        if (!*p)
            break;
        if (*p != ';')
            return -EINVAL;
        p = skip_ws(p + 1);
        if (!*p)
            break; /* trailing ';' */
    }
    *n = k;
    return 0;
}

int tb_window_nth(const tb_window *w, int64_t k, tb_window *out)
{
    if (k < 0 || (k > 0 && !w->period) || (w->count && k >= w->count))
        return -1;
    /* period <= TB_MAX_PERIOD: k * period overflows only past INT64_MAX / period */
    if (k && (k > (INT64_MAX - w->last) / w->period))
        return -1;
    *out = *w;
    out->first = w->first + k * w->period;
    out->last = w->last + k * w->period;
    return 0;
}

int64_t tb_window_index_from(const tb_window *w, int64_t m)
{
    return w->period && m > w->last ? (m - w->last + w->period - 1) / w->period : 0;
}

int tb_parse_seconds(const char *s, double *out)
{
    s = skip_ws(s);
    /* a decimal number (strtod also reads hex, "0x10" = 16 s, and inf) */
    if (!(isdigit((unsigned char)*s) || (*s == '.' && isdigit((unsigned char)s[1]))) ||
        (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')))
        return -EINVAL;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -EINVAL;
    const char *u = skip_ws(end);
    if (!strcmp(u, "ms"))
        v /= 1000.0;
    else if (!strcmp(u, "m") || !strcmp(u, "min"))
        v *= 60.0;
    else if (*u && strcmp(u, "s"))
        return -EINVAL;
    if (v > 86400.0 * 365)
        return -EINVAL;
    *out = v;
    return 0;
}

int tb_parse_every(const char *s, double *sec, int64_t *count)
{
    char buf[64];
    size_t len = strlen(s);
    const char *x = strrchr(s, 'x');
    if (!x)
        x = strrchr(s, 'X');
    int64_t k = 0;
    if (x) {
        const char *p = x + 1;
        if (parse_i64(&p, &k) || *p || k < 1)
            return -EINVAL;
        len = (size_t)(x - s);
    }
    if (len >= sizeof(buf))
        return -EINVAL;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    memcpy(buf, s, len);
    buf[len] = '\0';
    double v;
    if (tb_parse_seconds(buf, &v) || v <= 0)
        return -EINVAL;
    *sec = v;
    *count = k;
    return 0;
}

int tb_parse_signal(const char *s, int *out)
{
    if (!strcasecmp(s, "off") || !strcmp(s, "0") || !strcasecmp(s, "no")) {
        *out = 0;
        return 0;
    }
    if (!strncasecmp(s, "SIG", 3))
        s += 3;
    if (!strcasecmp(s, "USR1")) {
        *out = SIGUSR1;
        return 0;
    }
    if (!strcasecmp(s, "USR2")) {
        *out = SIGUSR2;
        return 0;
    }
    if (!strncasecmp(s, "RTMIN", 5)) {
        int k = 0;
        const char *p = s + 5;
        if (*p == '+') {
            if (!isdigit((unsigned char)p[1])) /* strtol takes "+ 3" and "+-0" */
                return -EINVAL;
            char *end;
            long v = strtol(p + 1, &end, 10);
            if (end == p + 1 || *end || v < 0 || v > 15)
                return -EINVAL;
            k = (int)v;
        } else if (*p) {
            return -EINVAL;
        }
        if (SIGRTMIN + k > SIGRTMAX)
            return -EINVAL;
        *out = SIGRTMIN + k;
        return 0;
    }
    return -EINVAL;
}

const char *tb_signal_name(int sig, char *buf, size_t n)
{
    if (sig == SIGUSR1)
        return "USR1";
    if (sig == SIGUSR2)
        return "USR2";
    if (sig == SIGRTMIN)
        return "RTMIN";
    if (sig > SIGRTMIN && sig <= SIGRTMAX)
        snprintf(buf, n, "RTMIN+%d", sig - SIGRTMIN);
    else
        snprintf(buf, n, "%d", sig);
    return buf;
}

int tb_parse_ranks(const char *s, tb_rank_range *out, int max, int *nout)
{
    tb_rank_range r[TB_MAX_RANK_RANGES];
    int n = 0;
    if (max > TB_MAX_RANK_RANGES)
        max = TB_MAX_RANK_RANGES;
    while (*s == ' ')
        s++;
    if (!strncasecmp(s, "all", 3) && !s[3 + strspn(s + 3, " ")]) {
        *nout = 0;
        return 0;
    }
    const char *p = s;
    for (;;) { /* R or A-B, then ',' or the end; spaces around each */
        if (n == max || !isdigit((unsigned char)*p))
            return -EINVAL;
        char *end;
        errno = 0;
        long long lo = strtoll(p, &end, 10), hi = lo;
        end += strspn(end, " ");
        if (*end == '-') {
            end += 1 + strspn(end + 1, " ");
            if (!isdigit((unsigned char)*end))
                return -EINVAL;
            hi = strtoll(end, &end, 10);
            end += strspn(end, " ");
        }
        if (errno || hi < lo || (*end && *end != ','))
            return -EINVAL;
        r[n].lo = lo;
        r[n++].hi = hi;
        if (!*end)
            break;
        p = end + 1 + strspn(end + 1, " ");
    }
    memcpy(out, r, (size_t)n * sizeof(r[0]));
    *nout = n;
    return 0;
}

int tb_ranks_take(const tb_config *c, int64_t rank)
{
    if (!c->nranks)
        return 1;
    if (c->nranks < 0) /* a bad TBPROF_RANKS: none (warned) */
        return 0;
    for (int i = 0; i < c->nranks && rank >= 0; i++)
        if (rank >= c->ranks[i].lo && rank <= c->ranks[i].hi)
            return 1;
    return 0;
}

static int parse_log(const char *s, int *out)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug"};
    for (int i = 0; i < 5; i++)
        if (!strcasecmp(s, names[i])) {
            *out = i; /* tb_log_level order */
            return 0;
        }
    if (!strcasecmp(s, "warning")) {
        *out = TB_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

/* Parse `val` for variable `v` into c. 0 or -EINVAL (c untouched then). */
static int parse_var(const var *v, const char *val, tb_config *c)
{
    char *field = (char *)c + v->off;
    /* a word or number as YAML, a .env file or a shell line may give it:
     * with spaces or a newline around it (not a path or a name: T_STR) */
    char word[TB_CONFIG_STR];
    if (v->type != T_STR) {
        val = skip_ws(val);
        size_t n = strlen(val);
        while (n && isspace((unsigned char)val[n - 1]))
            n--;
        if (n >= sizeof(word))
            return -EINVAL;
        memcpy(word, val, n);
        word[n] = '\0';
        val = word;
    }
    switch (v->type) {
    case T_STR: {
        size_t len = strlen(val);
        if (len >= TB_CONFIG_STR)
            return -EINVAL;
        if ((v->off == F(run) || v->off == F(host)) &&
            (strchr(val, '/') || !strcmp(val, ".") || !strcmp(val, "..") || len > TB_NAME_MAX))
            return -EINVAL;
        if (v->off == F(logdir) && !len)
            return -EINVAL;
        if (v->off == F(nvtx_step) && len && val[0] == '/') {
            regex_t re; /* "/regex/": must compile, cheaply */
            char pat[TB_CONFIG_STR];
            if (len < 3 || val[len - 1] != '/')
                return -EINVAL;
            memcpy(pat, val + 1, len - 2);
            pat[len - 2] = '\0';
            if (tb_regex_cost(pat, REGEX_PIECES_MAX) > REGEX_PIECES_MAX || regcomp(&re, pat, REG_EXTENDED))
                return -EINVAL;
            regfree(&re);
        }
        memcpy(field, val, len + 1);
        return 0;
    }
    case T_BOOL:
        return tb_parse_bool(val, (int *)field);
    case T_UINT: {
        const char *p = val;
        int64_t x;
        if (parse_i64(&p, &x) || *p || x < v->min || x > v->max)
            return -EINVAL;
        if (v->off == F(cpu_hz))
            c->cpu_hz = (unsigned)x;
        else
            *(int64_t *)field = x;
        return 0;
    }
    case T_SEC: {
        double d;
        if (tb_parse_seconds(val, &d))
            return -EINVAL;
        if (v->off == F(duration_s) && d < TB_MIN_DURATION_S)
            return -EINVAL; /* shorter would be 0 ns, which means "until stopped" */
        *(double *)field = d;
        return 0;
    }
    case T_STEPS: {
        tb_window w[TB_MAX_WINDOWS];
        int n = 0;
        if (tb_parse_steps(val, w, TB_MAX_WINDOWS, &n))
            return -EINVAL;
        memcpy(c->windows, w, sizeof(w));
        c->nwindows = n;
        return 0;
    }
    case T_EVERY:
        return tb_parse_every(val, &c->every_s, &c->every_count);
    case T_RANKS:
        return tb_parse_ranks(val, c->ranks, TB_MAX_RANK_RANGES, &c->nranks);
    case T_SIG:
        return tb_parse_signal(val, (int *)field);
    case T_LOG:
        return parse_log(val, (int *)field);
    case T_CPUMODE:
        if (!strcasecmp(val, "dwarf") || !strcasecmp(val, "stack"))
            *(int *)field = TB_CPU_STACKCOPY;
        else if (!strcasecmp(val, "fp"))
            *(int *)field = TB_CPU_FP;
        else
            return -EINVAL;
        return 0;
    case T_TRAMP:
        if (!strcasecmp(val, "capture")) {
            *(int *)field = 1;
            return 0;
        }
        if (!strcasecmp(val, "always")) {
            *(int *)field = 2;
            return 0;
        }
        return tb_parse_bool(val, (int *)field);
    case T_OPS:
        if (!strcasecmp(val, "shapes")) {
            *(int *)field = 2;
            return 0;
        }
        return tb_parse_bool(val, (int *)field);
    case T_AUTO: {
        int b;
        if (!strcasecmp(val, "auto"))
            *(int *)field = TB_AUTO;
        else if (tb_parse_bool(val, &b) == 0)
            *(int *)field = b ? TB_ON : TB_OFF;
        else
            return -EINVAL;
        return 0;
    }
    case T_CUDASTEPS:
        if (!strcasecmp(val, "on") || !strcmp(val, "1"))
            *(int *)field = TB_CUDA_STEPS_ON;
        else if (!strcasecmp(val, "off") || !strcmp(val, "0"))
            *(int *)field = TB_CUDA_STEPS_OFF;
        else
            return -EINVAL;
        return 0;
    }
    return -EINVAL;
}

static const char *env_get(const char *name, void *ud)
{
    (void)ud;
    return getenv(name);
}

int tb_config_load(tb_config *c, tb_getenv_fn get, void *ud)
{
    if (!get)
        get = env_get;
    memset(c, 0, sizeof(*c));
    /* defaults first (they always parse: the table is checked by a test) */
    for (size_t i = 0; i < NVARS; i++)
        if (vars[i].def[0])
            parse_var(&vars[i], vars[i].def, c);
    /* TBPROF_LOG first so its level applies to the other warnings */
    const char *lv = get("TBPROF_LOG", ud);
    if (lv && parse_log(lv, &c->log_level) == 0)
        tb_log_set_level((tb_log_level)c->log_level);
    for (size_t i = 0; i < NVARS; i++) {
        const var *v = &vars[i];
        const char *val = get(v->name, ud);
        if (!val)
            continue;
        if (parse_var(v, val, c) == 0)
            continue;
        c->warnings++;
        tb_warn("%s='%.64s' is not valid (expected %s); %s", v->name, val, v->form, v->bad);
        if (v->off == F(cpu_hz))
            c->cpu = 0;
        else if (v->off == F(duration_s) || v->off == F(delay_s)) {
            c->duration_s = -1; /* poisoned: no time window at all */
        } else if (v->off == F(logdir))
            c->logdir[0] = '\0';
        else if (v->type == T_STEPS)
            c->nwindows = 0;
        else if (v->type == T_RANKS) /* a job asked for a few ranks: not every rank for a typo */
            c->nranks = -1;
        else if (v->type == T_STR)
            ((char *)c + v->off)[0] = '\0';
        else
            parse_var(v, v->bad_value, c);
    }
    /* steps from NVTX ranges asked for by name: cudaProfilerStart/Stop,
     * counted by default, do not take step counting from them (a program
     * written for nsys calls cudaProfilerStart once before its loop, and
     * the first source to mark a step owns the count); both only when
     * TBPROF_CUDA_STEPS is set too */
    if (c->nvtx_step[0] && !get("TBPROF_CUDA_STEPS", ud))
        c->cuda_steps = TB_CUDA_STEPS_OFF;
    const char *delay_given = get("TBPROF_DELAY", ud);
    if (c->duration_s < 0) {
        c->duration_s = 0;
        c->delay_s = 0;
        c->every_s = 0;
    } else if ((delay_given || c->every_s > 0) && c->duration_s == 0) {
        c->duration_s = 10; /* TBPROF_DELAY=0 too: a 10 s window from start-up */
    }
    if (c->every_s > 0 && c->every_s <= c->duration_s) {
        c->warnings++;
        tb_warn("TBPROF_EVERY=%gs is not longer than the capture (TBPROF_DURATION %gs); no repeat", c->every_s,
                c->duration_s);
        c->every_s = 0;
        c->every_count = 0;
    } else if (c->every_s > 0 && !delay_given) {
        c->delay_s = c->every_s; /* "every 10 min": the first one 10 min in */
    }
    tb_log_set_level((tb_log_level)c->log_level);
    return c->warnings;
}

/* ---- the process-wide copy ------------------------------------------------- */

static tb_config global;
static int global_set;

static const char *none(const char *n, void *ud);

const tb_config *tb_config_get(void)
{
    if (!global_set) {
        /* defaults only: never reads the environment behind the caller's back */
        tb_config_load(&global, none, NULL);
        global_set = 1;
    }
    return &global;
}

static const char *none(const char *n, void *ud)
{
    (void)n;
    (void)ud;
    return NULL;
}

void tb_config_set_global(const tb_config *c)
{
    global = *c;
    global_set = 1;
}

/* ---- help ----------------------------------------------------------------- */

static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else
            fputc(*s, f);
    }
}

void tb_config_help(FILE *f, int markdown)
{
    if (markdown) {
        fputs("| variable | default | accepted | meaning | bad value |\n|---|---|---|---|---|\n", f);
        for (size_t i = 0; i < NVARS; i++) {
            const var *v = &vars[i];
            fprintf(f, "| `%s` | %s%s%s | ", v->name, v->def[0] ? "`" : "", v->def[0] ? v->def : "unset",
                    v->def[0] ? "`" : "");
            md_cell(f, v->form);
            fputs(" | ", f);
            md_cell(f, v->help);
            fputs(" | ", f);
            md_cell(f, v->bad);
            fputs(" |\n", f);
        }
        return;
    }
    fputs("tbprof reads these environment variables once, at start-up.\n"
          "A bad value prints one warning naming the variable and the accepted form; the job runs on,\n"
          "and the variable's `bad value:` line says what tbprof does instead.\n\n",
          f);
    for (size_t i = 0; i < NVARS; i++) {
        const var *v = &vars[i];
        fprintf(f, "%-20s default: %s\n%-20s accepted: %s\n%-20s %s\n%-20s bad value: %s\n\n", v->name,
                v->def[0] ? v->def : "(unset)", "", v->form, "", v->help, "", v->bad);
    }
}
