/* cmd_run.c - `tbprof run [options] -- cmd args...`: run a command with the
 * agent preloaded. Sets LD_PRELOAD (libtbprof.so from ../lib next to this
 * binary), the TBPROF_* variables the options ask for, PYTHONPATH for the
 * Python helper (whose sitecustomize installs the PyTorch optimizer-step
 * hook when TBPROF_PYTORCH_HOOK=1, and the jax.profiler.StepTraceAnnotation
 * and tf.profiler.experimental.Trace step hooks when TBPROF_JAX_HOOK=1 and
 * TBPROF_TF_HOOK=1), then execvp()s the command. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "config.h"
#include "pyhelper.h"
#include "util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tbprof run [options] [--] command [args...]\n"
            "  --steps A,B        capture steps A..B (TBPROF_STEPS; also A-B, N, A-B;C-D, A-B/P: every P steps,\n"
            "                     A-B/PxK: K times)\n"
            "  --duration S       capture S seconds (TBPROF_DURATION), after --delay S (TBPROF_DELAY)\n"
            "  --delay S\n"
            "  --every S[xK]      repeat the --duration capture every S seconds, K times (TBPROF_EVERY)\n"
            "  --logdir D         where profiles go (TBPROF_LOGDIR, default logs)\n"
            "  --run NAME         run folder name (TBPROF_RUN)\n"
            "  --gpu | --no-gpu   GPU tracing (TBPROF_GPU)\n"
            "  --cpu | --no-cpu   CPU sampling (TBPROF_CPU)\n"
            "  --cpu-hz N         CPU sampling rate (TBPROF_CPU_HZ)\n"
            "  --signal SIG       opt-in signal trigger, e.g. USR2 (TBPROF_SIGNAL)\n"
            "  --ranks R          only these global ranks take the windows and the signal, e.g. 0,8-15\n"
            "                     (TBPROF_RANKS)\n"
            "  --no-trace-json    no Chrome trace JSON (TBPROF_TRACE_JSON=off)\n"
            "  --no-hook          no step hooks: PyTorch optimizer steps, jax.profiler.StepTraceAnnotation,\n"
            "                     tf.profiler.experimental.Trace (TBPROF_PYTORCH_HOOK, _JAX_HOOK, _TF_HOOK=off)\n"
            "  --torch-ops        name CUDA calls and GPU work by the torch op that made them: torch's NVTX\n"
            "                     op ranges on during captures (TBPROF_TORCH_OPS=on; needs the PyTorch hook)\n"
            "  --torch-shapes     --torch-ops, each op with its input shapes (TBPROF_TORCH_OPS=shapes; costs\n"
            "                     torch more per op)\n"
            "  --log LEVEL        off | error | warn | info | debug (TBPROF_LOG)\n"
            "  --env NAME=VALUE   any other TBPROF_* variable (see `tbprof help env`)\n");
}

static int dir_of_exe(char *out, size_t n)
{
    ssize_t k = readlink("/proc/self/exe", out, n - 1);
    if (k <= 0)
        return -1;
    out[k] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    return 0;
}

int tb_agent_lib(const char *cmd, char *lib, size_t n)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    if (n < PATH_MAX || dir_of_exe(dir, sizeof(dir)) < 0) {
        fprintf(stderr, "tbprof %s: cannot find my own path\n", cmd);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/../lib/libtbprof.so", dir);
    if (!realpath(path, lib)) {
        fprintf(stderr, "tbprof %s: %s: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    /* ld.so splits LD_PRELOAD at spaces and colons (and tabs): such a path
     * would be preloaded as pieces that do not exist, and nothing profiled */
    const char *bad = strpbrk(lib, " :\t");
    if (bad) {
        fprintf(stderr,
                "tbprof %s: cannot preload %s: its path has a %s, and ld.so splits LD_PRELOAD at "
                "spaces, tabs and colons, so the agent would not load; install tbprof under a path "
                "without them\n",
                cmd, lib, *bad == ' ' ? "space" : *bad == ':' ? "colon" : "tab");
        return -1;
    }
    return 0;
}

int cmd_run(int argc, char **argv)
{
    static const struct {
        const char *opt, *var, *value; /* value NULL: takes an argument */
    } opts[] = {
        {"--steps", "TBPROF_STEPS", NULL},     {"--duration", "TBPROF_DURATION", NULL},
        {"--delay", "TBPROF_DELAY", NULL},     {"--every", "TBPROF_EVERY", NULL},
        {"--logdir", "TBPROF_LOGDIR", NULL},
        {"--run", "TBPROF_RUN", NULL},         {"--gpu", "TBPROF_GPU", "on"},
        {"--no-gpu", "TBPROF_GPU", "off"},     {"--cpu", "TBPROF_CPU", "on"},
        {"--no-cpu", "TBPROF_CPU", "off"},     {"--cpu-hz", "TBPROF_CPU_HZ", NULL},
        {"--signal", "TBPROF_SIGNAL", NULL},   {"--no-trace-json", "TBPROF_TRACE_JSON", "off"},
        {"--ranks", "TBPROF_RANKS", NULL},
        {"--no-hook", NULL, NULL},             {"--log", "TBPROF_LOG", NULL},
        {"--torch-ops", "TBPROF_TORCH_OPS", "on"}, {"--torch-shapes", "TBPROF_TORCH_OPS", "shapes"},
    };
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (a[0] != '-')
            break;
        if (!strcmp(a, "--env") && i + 1 < argc) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            if (!eq || strncmp(kv, "TBPROF_", 7)) {
                fprintf(stderr, "tbprof run: --env takes TBPROF_NAME=VALUE\n");
                return 2;
            }
            *eq = '\0';
            setenv(kv, eq + 1, 1);
            continue;
        }
        size_t k = 0;
        for (; k < sizeof(opts) / sizeof(opts[0]); k++)
            if (!strcmp(a, opts[k].opt))
                break;
        if (k == sizeof(opts) / sizeof(opts[0])) {
            fprintf(stderr, "tbprof run: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!opts[k].var) { /* --no-hook: no framework hook */
            tb_python_hooks_set("off", 1);
            continue;
        }
        const char *v = opts[k].value;
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "tbprof run: %s needs a value\n", a);
                return 2;
            }
            v = argv[++i];
        }
        if (!strcmp(opts[k].var, "TBPROF_STEPS")) {
            tb_window w[TB_MAX_WINDOWS];
            int n;
            if (tb_parse_steps(v, w, TB_MAX_WINDOWS, &n) < 0) {
                fprintf(stderr, "tbprof run: --steps '%s': expected A,B | A-B | N | A-B;C-D | A-B/P[xK]\n", v);
                return 2;
            }
        }
        double sec;
        int64_t count;
        if (!strcmp(opts[k].var, "TBPROF_EVERY") && tb_parse_every(v, &sec, &count) < 0) {
            fprintf(stderr, "tbprof run: --every '%s': expected seconds, or SxK (e.g. 10m, 600x6)\n", v);
            return 2;
        }
        setenv(opts[k].var, v, 1);
    }
    if (i >= argc) {
        fprintf(stderr, "tbprof run: no command given\n");
        usage(stderr);
        return 2;
    }
    char lib[PATH_MAX], py[PATH_MAX];
    if (tb_agent_lib("run", lib, sizeof(lib)) < 0)
        return 2;
    tb_env_path_add("LD_PRELOAD", lib, 0, ": "); /* after a sanitizer runtime, if any */
    if (tb_python_helper_dir(lib, py, sizeof(py)) == 0) /* as the preloaded agent finds it */
        tb_env_path_add("PYTHONPATH", py, 1, ": ");
    tb_python_hooks_set("on", 0); /* unless set (--no-hook, or the caller's) */
    execvp(argv[i], argv + i);
    fprintf(stderr, "tbprof run: %s: %s\n", argv[i], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}
