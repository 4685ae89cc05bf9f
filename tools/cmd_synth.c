/* cmd_synth.c - `tbprof synth LOGDIR [--kernels N] [--gpus G] [--steps S]
 * [--run NAME] [--host H] [--no-json]`: write a synthetic capture (host steps
 * and launches, GPU kernels with flows) through the agent's own writer
 * (tb_profile_write). For demos, tests and fuzz seeds; no GPU needed. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "profile.h"
#include "synth_space.h"
#include "trace.h"

static int num_arg(const char *opt, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi) {
        fprintf(stderr, "tbprof: synth: %s wants a number in %lld..%lld, not '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int usage(FILE *f)
{
    fprintf(f, "usage: tbprof synth LOGDIR [--kernels N] [--gpus G] [--steps S] [--run NAME] "
               "[--host H] [--no-json]\n"
               "  writes a synthetic capture into LOGDIR/plugins/profile/<run>/ (demos, tests; no GPU)\n"
               "  --kernels N   GPU kernels in all, spread over the steps (default 1000)\n"
               "  --gpus G      GPUs, 0..16 (default 1; 0: a CPU-only capture, steps of 1 ms)\n"
               "  --steps S     host steps (default 10)\n"
               "  --run NAME    the run folder (default: the local time)\n"
               "  --host H      the file stem (default: the host name)\n"
               "  --no-json     no <host>.trace.json.gz beside the xplane.pb\n");
    return f == stdout ? 0 : 2;
}

int cmd_synth(int argc, char **argv)
{
    const char *logdir = NULL, *run = NULL, *host = NULL;
    long long kernels = 1000, gpus = 1, steps = 10;
    int json = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if ((!strcmp(a, "--kernels") || !strcmp(a, "--events")) && has) {
            if (num_arg(a, argv[++i], 0, 100000000, &kernels) < 0)
                return 2;
        } else if (!strcmp(a, "--gpus") && has) {
            if (num_arg(a, argv[++i], 0, 16, &gpus) < 0)
                return 2;
        } else if (!strcmp(a, "--steps") && has) {
            if (num_arg(a, argv[++i], 1, 1000000, &steps) < 0)
                return 2;
        } else if (!strcmp(a, "--run") && has) {
            run = argv[++i];
        } else if (!strcmp(a, "--host") && has) {
            host = argv[++i];
        } else if (!strcmp(a, "--no-json")) {
            json = 0;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            return usage(stdout);
        } else if (a[0] != '-' && !logdir) {
            logdir = a;
        } else {
            return usage(stderr);
        }
    }
    if (!logdir)
        return usage(stderr);
    tb_space *s = tb_space_new();
    if (!s)
        return 2;
    char hn[256] = "synth";
    gethostname(hn, sizeof(hn) - 1);
    tb_space_add_hostname(s, hn);
    synth_opts o = {.kernels = (size_t)kernels, .gpus = (int)gpus, .streams = 2, .host = 1,
                    .steps = (size_t)steps, .pid = getpid()};
    int r = synth_space(s, &o);
    if (r < 0) {
        fprintf(stderr, "tbprof: synth: building the capture failed: %s\n", strerror(-r));
        tb_space_free(s);
        return 2;
    }
    tb_profile_opts po = {.logdir = logdir, .run = run, .host = host, .trace_json = json};
    char path[PATH_MAX];
    r = tb_profile_write(s, &po, path, sizeof(path));
    tb_space_free(s);
    if (r < 0) {
        fprintf(stderr, "tbprof: %s: writing the profile failed: %s\n", logdir, strerror(-r));
        return 2;
    }
    printf("%s\n", path);
    return 0;
}
