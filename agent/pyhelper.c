/* pyhelper.c - the Python helper's place and its hook variables (pyhelper.h). */
#include "pyhelper.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tb_python_helper_dir(const char *lib, char *out, size_t n)
{
    char real[PATH_MAX], want[PATH_MAX + 32], dir[PATH_MAX], site[PATH_MAX + 32];
    if (!realpath(lib, real))
        return -1;
    char *slash = strrchr(real, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    snprintf(want, sizeof(want), "%s/../share/tbprof/python", real);
    if (!realpath(want, dir))
        return -1;
    snprintf(site, sizeof(site), "%s/sitecustomize.py", dir);
    if (access(site, R_OK) != 0 || strlen(dir) >= n)
        return -1;
    snprintf(out, n, "%s", dir);
    return 0;
}

void tb_python_hooks_set(const char *value, int overwrite)
{
    static const char *const hooks[] = {"TBPROF_PYTORCH_HOOK", "TBPROF_JAX_HOOK", "TBPROF_TF_HOOK"};
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
        setenv(hooks[i], value, overwrite);
}
