/* python_env.c - tbprof's Python helper for a Python started with the agent
 * preloaded (TBPROF_PYTHON_HELPER=on, the default), as `tbprof run` gives it.
 *
 * `LD_PRELOAD=libtbprof.so TBPROF_STEPS=10,20 python train.py` is the
 * product's first line, and a PyTorch/JAX/Keras script marks no steps of its
 * own: the step hooks live in tools/python's sitecustomize.py, which Python
 * runs only from its path. So the constructor, still before the
 * interpreter's start-up reads its environment, puts the helper's folder
 * (installed beside the library: <lib>/../share/tbprof/python) first on
 * PYTHONPATH and turns the three hooks on where their variables are unset.
 * Children inherit both, as they inherit LD_PRELOAD. Nothing happens in a
 * process whose interpreter is running already (the agent dlopen()ed from
 * Python), one without CPython, or when the helper is not installed there.
 */
#include "python_env.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pyhelper.h"
#include "util.h"

/* The helper beside this library (pyhelper.h), or -1. */
static int helper_dir(char *out, size_t n)
{
    Dl_info di;
    if (!dladdr((void *)tb_python_env_setup, &di) || !di.dli_fname)
        return -1;
    return tb_python_helper_dir(di.dli_fname, out, n);
}

/* 1 when this process's program is a Python interpreter (python,
 * python3.12, ...): not gdb or another program that links libpython, whose
 * children would inherit the helper and hooks for nothing. */
static int exe_is_python(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    const char *base = strrchr(exe, '/');
    return !strncmp(base ? base + 1 : exe, "python", 6);
}

/* The minor version of a CPython 3 that has not started yet, else -1. */
static int python_about_to_start(void)
{
    if (!exe_is_python())
        return -1;
    int (*initialized)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    const char *(*version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
    int major = 0, minor = 0;
    if (!initialized || !version || initialized() || sscanf(version(), "%d.%d", &major, &minor) != 2 ||
        major != 3)
        return -1;
    return minor;
}

int tb_python_perf_always(void)
{
    if (python_about_to_start() < 12)
        return 0;
    setenv("PYTHONPERFSUPPORT", "1", 0); /* the job's own setting wins */
    tb_debug("python: TBPROF_PY_TRAMPOLINE=always: PYTHONPERFSUPPORT=%s", getenv("PYTHONPERFSUPPORT"));
    return 1;
}

int tb_python_env_setup(void)
{
    if (python_about_to_start() < 0)
        return 0;
    char dir[PATH_MAX];
    if (helper_dir(dir, sizeof(dir)) < 0) {
        tb_debug("python: no helper beside libtbprof.so (share/tbprof/python): no step hooks");
        return 0;
    }
    if (tb_env_path_add("PYTHONPATH", dir, 1, ":") < 0)
        return 0;
    tb_python_hooks_set("on", 0);
    tb_debug("python: %s first on PYTHONPATH, step hooks on (TBPROF_PYTHON_HELPER=off: neither)", dir);
    return 1;
}
