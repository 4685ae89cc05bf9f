/* cmd_doctor.c - `tbprof doctor`: will tbprof trace the GPU and sample the
 * CPU on this machine, and if not, why?
 *
 * It does not guess from the environment: it runs a short real capture in
 * a child (`tbprof run --duration 0.3 --gpu --cpu -- tbprof doctor --work`,
 * the child spinning a second), reads the profile the agent wrote, and
 * reports per source what the agent recorded: which libcupti traced, or
 * the reason GPU tracing was off; how many CPU samples, or why sampling
 * was off; and whether the logdir (TBPROF_LOGDIR) can be written. The
 * child loads the CUDA driver (GPU tracing waits for that) but makes no
 * CUDA calls, so "ready" means libcuda.so.1 and libcupti loaded and CUPTI
 * let tbprof subscribe and enable activity;
 * a job's own conflicts (torch.profiler holding CUPTI) show in its
 * profile, not here.
 * Exit status: 0 all ready, 1 one of them off, 2 no profile came back. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "config.h"
#include "host.h"
#include "pytramp.h"
#include "readprof.h"
#include "sampler.h"
#include "stats.h"
#include "trace.h"

#define CHILD_TIMEOUT_S 30 /* a CUPTI start that hangs must not hang us */
#define PIP_LOOK_S 10     /* python3 asked where pip put libcupti */

static void usage(FILE *f)
{
    fprintf(f, "usage: tbprof doctor [--cupti PATH]\n"
               "  runs a 0.3 s test capture in a child process and says whether GPU tracing\n"
               "  and CPU sampling work here, or why not, and whether TBPROF_LOGDIR is writable\n"
               "  --cupti PATH   the libcupti to try (TBPROF_CUPTI_PATH: a file or folder)\n");
}

/* The child's work: the CUDA driver loaded, where there is one (GPU
 * tracing starts once a process has; no CUDA call is made), then a second
 * of CPU, something to sample. */
static int work(void)
{
    (void)dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL); /* kept loaded */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    volatile double acc = 0;
    do {
        for (int i = 1; i < 100000; i++)
            acc += 1.0 / i;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 1000000000L);
    (void)acc;
    return 0;
}

/* The last line python3 on PATH (a Python job's usual interpreter) prints
 * running code (-I), into out; "" when it cannot be run or says nothing in
 * PIP_LOOK_S. */
static int python3_says(const char *code, char *out, size_t n)
{
    out[0] = '\0';
    int fd[2], timed_out = 0;
    if (pipe(fd) < 0)
        return 0;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return 0;
    }
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);
        execlp("python3", "python3", "-I", "-c", code, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    /* at most PIP_LOOK_S: a python3 that hangs (a site hook on a dead
     * network mount) must not hang the doctor */
    size_t got = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long left_ms = PIP_LOOK_S * 1000L - ((t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000L);
        struct pollfd pfd = {.fd = fd[0], .events = POLLIN};
        int pr = left_ms > 0 ? poll(&pfd, 1, (int)left_ms) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) { /* timed out (or poll failed): what it said so far */
            kill(pid, SIGKILL);
            timed_out = 1;
            break;
        }
        if (got + 1 >= n) { /* full (a site hook's chatter): keep the line being read */
            char *nl = memrchr(out, '\n', got);
            size_t keep = nl ? got - (size_t)(nl + 1 - out) : 0;
            memmove(out, out + got - keep, keep); /* (keep < got: room to read) */
            got = keep;
        }
        ssize_t r = read(fd[0], out + got, n - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd[0]);
    kill(pid, SIGKILL); /* (done or given up on: it has nothing more to say) */
    for (int i = 0; i < 100 && waitpid(pid, NULL, WNOHANG) == 0; i++)
        usleep(20000); /* (one stuck in the kernel is left, not waited for) */
    out[got] = '\0';
    /* the last line: a site hook may have printed before it */
    while (got && out[got - 1] == '\n')
        out[--got] = '\0';
    char *last = strrchr(out, '\n');
    if (last)
        memmove(out, last + 1, strlen(last + 1) + 1);
    return timed_out;
}

/* A libcupti in python3's packages (pip's nvidia-cuda-cupti, which PyTorch
 * and JAX wheels bring: nvidia/cu13/lib, nvidia/cuda_cupti/lib), newest
 * major first, into out; 0 when found. A machine with pip CUDA and no
 * toolkit has no other: a Python job loads that one itself, a plain
 * program needs TBPROF_CUPTI_PATH. */
static int pip_cupti(char *out, size_t n)
{
    static const char code[] =
        "import glob,os,re,site\n"
        "d=site.getsitepackages()+[site.getusersitepackages()]\n"
        "f=[p for x in d for p in glob.glob(os.path.join(x,'nvidia','*','lib','libcupti.so.*'))]\n"
        "def major(p):\n"
        "    m=re.search(r'\\.so\\.(\\d+)',p)\n"
        "    return int(m.group(1)) if m else 0\n"
        "print(max(f,key=major) if f else '')\n";
    python3_says(code, out, n);
    return out[0] == '/' ? 0 : -1;
}

static const char *py_trampoline_only(const char *name, void *ud)
{
    (void)ud;
    return strcmp(name, "TBPROF_PY_TRAMPOLINE") ? NULL : getenv(name);
}

/* Whether a job of python3 on PATH gets its Python functions named in the
 * CPU samples (CPU sampling ready, stacks `mode`): one line, none without
 * a python3. For frame-pointer stacks, python3 sends its evaluator's first
 * bytes (through ctypes), put to the agent's own test. */
static void python_frames_report(const char *mode)
{
    static const char code[] =
        "import platform,sys,sysconfig\n"
        "try:\n"
        "    import ctypes\n"
        "    a=ctypes.cast(ctypes.pythonapi._PyEval_EvalFrameDefault,ctypes.c_void_p).value\n"
        "    h=ctypes.string_at(a,64).hex()\n"
        "except Exception:\n"
        "    h='-'\n"
        "print('%d %d %d %s %s' % (sys.version_info[0], sys.version_info[1],"
        " bool(sysconfig.get_config_var('Py_GIL_DISABLED')), platform.machine() or '?', h))\n";
    char says[512], arch[64] = "", hex[160] = "-";
    int major = 0, minor = 0, ft = 0;
    int slow = python3_says(code, says, sizeof(says));
    if (sscanf(says, "%d %d %d %63s %159s", &major, &minor, &ft, arch, hex) < 4 || major != 3) {
        if (slow) /* (one that is there but did not answer is not left out silently) */
            printf("  Python frames  not checked: python3 did not answer within %d s\n", PIP_LOOK_S);
        return;
    }
    /* its evaluator keeps a frame pointer: 1, 0, or -1 not told */
    unsigned char efd[64];
    int fp = strlen(hex) == 2 * sizeof(efd) ? 1 : -1;
    for (size_t i = 0; fp >= 0 && i < sizeof(efd); i++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            fp = -1;
        efd[i] = (unsigned char)v;
    }
    if (fp >= 0)
        fp = tb_pytramp_prologue_keeps_fp(efd, sizeof(efd));
    int x86 = strcmp(arch, "x86_64") == 0;
    /* TBPROF_PY_TRAMPOLINE as the agent reads it (OFF, 0, no; a bad value is off) */
    tb_config c;
    tb_config_load(&c, py_trampoline_only, NULL);
    printf("  Python frames  python3 %d.%d: ", major, minor);
    if (!c.py_trampoline)
        printf("not named (TBPROF_PY_TRAMPOLINE=off)\n");
    else if (minor < 10)
        printf("not named: CPython %d.%d has no perf trampoline, and tbprof's own needs 3.10 or later "
               "(py-spy names them)\n", major, minor);
    else if (minor >= 12 && ft)
        printf("not named: a free-threaded build (tbprof leaves its trampoline off)\n");
    else if (!x86 && minor < 12)
        printf("not named: tbprof's own trampoline for 3.10 and 3.11 is x86-64's (this is %s)\n", arch);
    else if (x86 && !(mode && !strcmp(mode, "fp")))
        printf("named in CPU samples during captures (%s)\n",
               minor >= 12 ? "CPython's perf trampoline" : "tbprof's own trampoline");
    else if (fp > 0) /* frame-pointer stacks: fp mode, or all there are on this machine */
        printf("named in CPU samples during captures (frame-pointer stacks: this CPython keeps frame pointers)\n");
    else if (fp == 0 && x86)
        printf("not named in fp stacks: this CPython keeps no frame pointers (TBPROF_CPU_MODE=dwarf, the "
               "default, walks through the trampolines)\n");
    else if (fp == 0)
        printf("not named: this CPython keeps no frame pointers, and stacks on %s are frame-pointer walks\n", arch);
    else
        printf("named in frame-pointer stacks only where this CPython keeps frame pointers (not told: no "
               "ctypes)\n");
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

/* Run the test capture into dir; 0 when the child exited, -1 otherwise. */
static int run_child(const char *dir)
{
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (k <= 0) {
        fprintf(stderr, "tbprof doctor: cannot find my own path: %s\n", strerror(errno));
        return -1;
    }
    exe[k] = '\0';
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tbprof doctor: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* (the window from 0.1 s: work() has loaded the driver by then) */
        char *args[] = {"run",   "--duration", "0.3",      "--delay", "0.1", "--logdir", (char *)dir,
                        "--gpu", "--cpu",      "--no-trace-json",     "--no-hook", "--log", "error",
                        "--",    exe,          "doctor",   "--work",  NULL};
        _exit(cmd_run((int)(sizeof(args) / sizeof(args[0])) - 1, args));
    }
    for (int waited_ms = 0;; waited_ms += 20) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
        if (r < 0 && errno != EINTR)
            return -1;
        if (waited_ms >= CHILD_TIMEOUT_S * 1000) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fprintf(stderr, "tbprof doctor: the test capture did not finish in %d s (killed)\n", CHILD_TIMEOUT_S);
            return -1;
        }
        usleep(20000);
    }
}

/* A /host:CPU plane stat: its string (str) or number (num); 0 if absent. */
static int host_stat(const tb_plane *h, const char *name, const char **str, long long *num)
{
    const tb_stat *st = h ? tb_plane_find_stat(h, name) : NULL;
    if (!st)
        return 0;
    if (st->type == TB_STAT_REF && str)
        *str = tb_plane_stat_name(h, st->v.ref);
    else if (st->type == TB_STAT_INT64 && num)
        *num = st->v.i;
    else if (st->type == TB_STAT_UINT64 && num)
        *num = (long long)st->v.u;
    else
        return 0;
    return 1;
}

/* Where a job's profiles would go (TBPROF_LOGDIR, default logs): it, or
 * the nearest path above it that exists, must be a writable folder. */
static int logdir_report(void)
{
    const char *env = getenv("TBPROF_LOGDIR");
    const char *dir = env && *env ? env : "logs";
    char at[PATH_MAX];
    snprintf(at, sizeof(at), "%s", dir);
    struct stat st;
    const char *why = NULL;
    while (!why && stat(at, &st) != 0) {
        char *slash = strrchr(at, '/');
        if (!strcmp(at, ".") || !strcmp(at, "/"))
            why = strerror(errno); /* a deleted working folder */
        else if (!slash)
            snprintf(at, sizeof(at), ".");
        else
            slash[slash == at] = '\0'; /* "a/b" -> "a", "/x" -> "/" */
    }
    if (!why)
        why = !S_ISDIR(st.st_mode) ? "not a folder" : access(at, W_OK) ? strerror(errno) : NULL;
    if (why) {
        printf("  logdir         off: %s: %s: %s\n", dir, at, why);
        return 1;
    }
    if (!strcmp(at, dir))
        printf("  logdir         ready: %s\n", dir);
    else
        printf("  logdir         ready: %s (to be made under %s)\n", dir, at);
    return 0;
}

/* One line per source; 1 when either is off. */
static int report(const tb_space *s)
{
    const tb_plane *h = tb_space_find_plane(s, TB_HOST_PLANE);
    int bad = 0;
    const char *lib = NULL, *why = NULL, *mode = NULL;
    long long samples = 0;
    if (!host_stat(h, TB_ST_GPU_OFF_REASON, &why, NULL) && host_stat(h, TB_ST_CUPTI_LIBRARY, &lib, NULL)) {
        printf("  GPU tracing    ready: %s\n", lib);
        const char *after = NULL;
        if (host_stat(h, TB_ST_CUPTI_TEARDOWN, &after, NULL))
            printf("  CUPTI after    %s\n", after);
        /* what the capture warned about this libcupti (a CUDA 13.0 GA one's
         * deadlock, calls slow to return) */
        for (size_t i = 0; i < s->nwarnings; i++)
            if (strstr(s->warnings[i], "CUPTI") || strstr(s->warnings[i], "libcupti"))
                printf("  CUPTI warning  %s\n", s->warnings[i]);
    } else {
        char nodrv[400];
        if (why && strstr(why, "did not load CUDA")) { /* work() found no driver to load: say why */
            dlerror();
            void *h = dlopen("libcuda.so.1", RTLD_LAZY);
            if (h) {
                dlclose(h);
            } else {
                const char *e = dlerror();
                snprintf(nodrv, sizeof(nodrv), "no CUDA driver here (%s)", e ? e : "libcuda.so.1 not found");
                why = nodrv;
            }
        }
        printf("  GPU tracing    off: %s\n", why ? why : "no reason recorded (an agent built without CUPTI?)");
        bad = 1;
    }
    why = NULL;
    if (!host_stat(h, TB_ST_CPU_OFF_REASON, &why, NULL) && host_stat(h, TB_ST_SAMPLES, NULL, &samples) &&
        samples > 0) {
        const char *time = NULL;
        host_stat(h, TB_ST_CPU_MODE, &mode, NULL);
        host_stat(h, TB_ST_CPU_TIME, &time, NULL);
        printf("  CPU sampling   ready: %lld samples in 0.3 s (%s stacks; %s)\n", samples, mode ? mode : "?",
               time ? time : "user space only");
        python_frames_report(mode);
    } else {
        printf("  CPU sampling   off: %s\n", why ? why : "no samples taken");
        bad = 1;
    }
    if (logdir_report())
        bad = 1;
    FILE *f = fopen("/proc/sys/kernel/perf_event_paranoid", "re");
    int paranoid;
    if (f && fscanf(f, "%d", &paranoid) == 1)
        printf("  perf_event_paranoid %d%s\n", paranoid,
               paranoid > 2 ? " (above 2: only a process with CAP_PERFMON can sample)" : "");
    if (f)
        fclose(f);
    return bad;
}

int cmd_doctor(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--work"))
            return work();
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--cupti") && i + 1 < argc) {
            setenv("TBPROF_CUPTI_PATH", argv[++i], 1);
            continue;
        }
        fprintf(stderr, "tbprof doctor: unknown option '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    char lib[PATH_MAX];
    if (tb_agent_lib("doctor", lib, sizeof(lib)) < 0)
        return 2; /* the test capture could not load the agent either */
    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/tbprof-doctor.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "tbprof doctor: cannot make a folder under %s: %s\n", tmp && *tmp ? tmp : "/tmp",
                strerror(errno));
        return 2;
    }
    printf("tbprof doctor: a 0.3 s test capture in a child process\n");
    fflush(stdout);
    int rc = 2;
    tb_profset ps;
    int ok = run_child(dir) == 0 && tb_profset_load("doctor", dir, NULL, 0, &ps) == 0;
    /* no libcupti for a plain program (no toolkit), TBPROF_CUPTI_PATH
     * unset: a machine with pip's CUDA has one in python3's packages, which
     * PyTorch and JAX jobs load themselves; the capture again with it */
    const char *why = NULL;
    char pip[PATH_MAX];
    const tb_plane *h = ok ? tb_space_find_plane(ps.profs[0].space, TB_HOST_PLANE) : NULL;
    if (h && host_stat(h, TB_ST_GPU_OFF_REASON, &why, NULL) && why && !strncmp(why, "libcupti not found", 18) &&
        !getenv("TBPROF_CUPTI_PATH") && pip_cupti(pip, sizeof(pip)) == 0) {
        printf("  libcupti       none for a plain program (no CUDA toolkit); python3's packages have %s, "
               "which PyTorch and JAX jobs load themselves (a CUDA program: TBPROF_CUPTI_PATH=%s); "
               "testing with it\n",
               pip, pip);
        fflush(stdout);
        /* a fresh folder of our own for the second capture (not the first's
         * name made again: someone else could have made it meanwhile) */
        char dir2[PATH_MAX];
        snprintf(dir2, sizeof(dir2), "%s/tbprof-doctor.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        tb_profset ps2;
        setenv("TBPROF_CUPTI_PATH", pip, 1);
        int made = mkdtemp(dir2) != NULL;
        if (made && run_child(dir2) == 0 && tb_profset_load("doctor", dir2, NULL, 0, &ps2) == 0) {
            tb_profset_free(&ps);
            ps = ps2;
        } else { /* the first capture's answer stands */
            printf("  libcupti       the test capture with %s did not finish (see the messages above)\n", pip);
        }
        if (made)
            nftw(dir2, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    }
    if (ok) {
        printf("  agent          ready: a profile was written\n");
        rc = report(ps.profs[0].space);
        tb_profset_free(&ps);
    } else {
        printf("  agent          no profile came back (see the messages above)\n");
    }
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    return rc;
}
