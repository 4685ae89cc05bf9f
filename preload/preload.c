/* preload.c - the LD_PRELOAD entry: constructor, destructor, fork handlers,
 * and the exported C API (include/tbprof/tbprof.h).
 *
 * The constructor reads TBPROF_* once (config.c), registers the data sources
 * and starts the agent (capture.c). In set-uid/set-gid processes
 * (AT_SECURE) the agent does nothing at all.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "capture.h"
#include "follow.h"
#include "config.h"
#include "cudasteps.h"
#include "log.h"
#include "nvtx_record.h"
#include "python_env.h"
#include "sampler.h"
#include "tbprof/tbprof.h"
#include "thread_hook.h"
#ifdef TBPROF_WITH_CUPTI
#include "gpu.h"
#endif

/* 0: not run, 1: running, 2: done. Not pthread_once: glibc ends it with a
 * futex wake system call, paid by every process at start-up. */
static atomic_int once;

/* A relative TBPROF_LOGDIR (the default `logs` is one) is taken against the
 * working directory now, at start-up, once: a job that chdir()s later still
 * writes where it was started, and so do the processes it starts after
 * that (ranks spawned from a run folder Hydra chdir()ed into): they inherit
 * TBPROF_LOGDIR as the absolute path. Where the directory cannot be read or
 * the path would not fit, it stays relative (as before: resolved at each
 * write). */
static void logdir_absolute(tb_config *c)
{
    const char *rel = c->logdir;
    if (!rel[0] || rel[0] == '/')
        return;
    while (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    char cwd[PATH_MAX], abs[sizeof(c->logdir)];
    if (!getcwd(cwd, sizeof(cwd))) {
        tb_debug("TBPROF_LOGDIR=%s: working directory not readable (%s): resolved at each write", c->logdir,
                 strerror(errno));
        return;
    }
    int w = !rel[0] || !strcmp(rel, ".") ? snprintf(abs, sizeof(abs), "%s", cwd)
                                         : snprintf(abs, sizeof(abs), "%s/%s", strcmp(cwd, "/") ? cwd : "", rel);
    if (w < 0 || (size_t)w >= sizeof(abs)) {
        tb_debug("TBPROF_LOGDIR=%s: too long under %s: resolved at each write", c->logdir, cwd);
        return;
    }
    memcpy(c->logdir, abs, (size_t)w + 1);
}

/* Children inherit the absolute logdir. Only before main() (preloaded): a
 * library dlopen()ed into a running job must not setenv() while its threads
 * may be reading the environment. */
static void logdir_export(const tb_config *c)
{
    if (c->logdir[0] == '/' && setenv("TBPROF_LOGDIR", c->logdir, 1) < 0)
        tb_debug("TBPROF_LOGDIR=%s: not set for child processes (%s)", c->logdir, strerror(errno));
}

static void init(void)
{
    int secure = getauxval(AT_SECURE) != 0;
    tb_config c;
    if (secure) {
        tb_config_load(&c, NULL, NULL); /* defaults: nothing is read */
        tb_config_set_global(&c);
        tb_agent_init(&c, 1);
        return;
    }
    tb_config_load(&c, NULL, NULL);
    logdir_absolute(&c);
    int hooked = tb_thread_hook_active();
    tb_agent_set_threads_hooked(hooked);
    if (hooked) /* preloaded: still before main() */
        logdir_export(&c);
    if (hooked && c.python_helper) /* preloaded: still before main() */
        tb_python_env_setup();
    if (hooked && c.cpu && c.cpu_mode == TB_CPU_STACKCOPY && c.py_trampoline == 2) /* fp: no use */
        tb_python_perf_always();
    if (c.socket == TB_SOCKET_AUTO && !hooked) {
        /* nobody will tell the agent about the job's threads (the library
         * was dlopen()ed after libc): serve from now */
        tb_debug("TBPROF_SOCKET=auto: pthread_create not interposed; serving the socket from start-up");
        c.socket = TB_SOCKET_ON;
    }
    tb_config_set_global(&c);
    tb_cudasteps_init(&c); /* cudaProfilerStart/Stop and NVTX step sources */
    const char *nvtx_why = NULL;
    if (tb_nvtx_recording_available(&nvtx_why))
        tb_agent_add_source("nvtx", tb_nvtx_source(), 1, NULL);
    else if (nvtx_why)
        tb_agent_add_source("nvtx", tb_nvtx_source(), 0, nvtx_why);
#ifdef TBPROF_WITH_CUPTI
    tb_agent_add_source("gpu", tb_gpu_source(), c.gpu, c.gpu ? NULL : "TBPROF_GPU=off");
#else
    tb_agent_add_source("gpu", NULL, 0, c.gpu ? "tbprof built without CUPTI" : "TBPROF_GPU=off");
#endif
    tb_agent_add_source("cpu", tb_cpu_source(), c.cpu, c.cpu ? NULL : "TBPROF_CPU=off");
    pthread_atfork(tb_agent_fork_prepare, tb_agent_fork_parent, tb_agent_fork_child);
    tb_agent_init(&c, 0);
}

static void ensure(void)
{
    int expect = 0;
    if (atomic_load_explicit(&once, memory_order_acquire) == 2)
        return;
    if (atomic_compare_exchange_strong(&once, &expect, 1)) {
        init();
        atomic_store_explicit(&once, 2, memory_order_release);
        return;
    }
    /* another thread is in init() (an API call racing the constructor) */
    while (atomic_load_explicit(&once, memory_order_acquire) != 2)
        sched_yield();
}

/* The next _exit (libc's, or a sanitizer's ahead of ours), found before any
 * vfork() child could call ours: dlsym is not for that context. */
static void (*next_exit)(int);

__attribute__((constructor)) static void tbprof_preload_init(void)
{
    *(void **)&next_exit = dlsym(RTLD_NEXT, "_exit");
    ensure();
}

__attribute__((destructor)) static void tbprof_preload_fini(void) { tb_agent_exit(); }

/* _exit and _Exit: a fork()ed child capturing with its parent (follow.h)
 * ends this way (multiprocessing's workers, a data loader's, end with
 * os._exit; C programs' children with _exit), which runs no destructor:
 * its capture is written first, bounded as at exit. Anywhere else (a vfork()
 * child, a process not following its parent) one atomic load, then the
 * real one. */
static _Noreturn void exit_now(int status)
{
    if (tb_follow_following())
        tb_agent_follow_exit();
    if (next_exit)
        next_exit(status);
    for (;;)
        syscall(SYS_exit_group, status);
}

TBPROF_API _Noreturn void _exit(int status) { exit_now(status); }
TBPROF_API _Noreturn void _Exit(int status) { exit_now(status); }

TBPROF_API int64_t tbprof_step(void)
{
    return tb_agent_step(TB_STEP_API, 0, 0);
}

TBPROF_API int64_t tbprof_step_num(int64_t step)
{
    return tb_agent_step(TB_STEP_API, 1, step);
}

/* The step source named `source` (tbprof.h), 0 for an unknown name. */
static int step_source(const char *source)
{
    static const struct {
        const char *name;
        int src;
    } s[] = {{"pytorch", TB_STEP_PYTORCH}, {"jax", TB_STEP_JAX}, {"tensorflow", TB_STEP_TF}, {"api", TB_STEP_API}};
    for (size_t i = 0; source && i < sizeof(s) / sizeof(s[0]); i++)
        if (!strcmp(source, s[i].name))
            return s[i].src;
    return 0;
}

TBPROF_API int64_t tbprof_step_from(const char *source)
{
    int src = step_source(source);
    return src ? tb_agent_step(src, 0, 0) : -EINVAL;
}

TBPROF_API int64_t tbprof_step_num_from(const char *source, int64_t step)
{
    int src = step_source(source);
    return src ? tb_agent_step(src, 1, step) : -EINVAL;
}

TBPROF_API void tbprof_step_end(int64_t step) { tb_cudasteps_end(step); }

TBPROF_API int tbprof_start(int64_t duration_ms)
{
    ensure();
    return tb_agent_start(duration_ms, duration_ms ? "api tbprof_start(duration)" : "api tbprof_start");
}

TBPROF_API int tbprof_capture_steps(int64_t first, int64_t last)
{
    ensure();
    return tb_agent_capture_steps(first, last, "api tbprof_capture_steps");
}

TBPROF_API int tbprof_stop(void)
{
    ensure();
    return tb_agent_stop();
}

TBPROF_API int tbprof_capturing(void) { return tb_agent_capturing(); }

TBPROF_API void tbprof_expect_nvtx(int on) { tb_agent_expect_nvtx(on); }

TBPROF_API const char *tbprof_last_profile(void) { return tb_agent_last_profile(); }

TBPROF_API int tbprof_follow_parent(void) { return tb_follow_parent(); }
