/* pyhelper.h - where tbprof's Python helper (tools/python: sitecustomize.py
 * and the tbprof module) is, and what turns its step hooks on: shared by
 * `tbprof run` (tools/cmd_run.c) and the preloaded agent's constructor
 * (preload/python_env.c), which give a Python the same environment. */
#ifndef TBPROF_AGENT_PYHELPER_H
#define TBPROF_AGENT_PYHELPER_H

#include <stddef.h>

/* The helper installed beside the libtbprof.so at `lib`:
 * <lib's folder>/../share/tbprof/python, resolved, into out[n], when its
 * sitecustomize.py is readable there. 0, or -1. */
int tb_python_helper_dir(const char *lib, char *out, size_t n);

/* TBPROF_PYTORCH_HOOK, TBPROF_JAX_HOOK and TBPROF_TF_HOOK (read by the
 * helper's sitecustomize.py) set to `value`; only where unset unless
 * `overwrite`. */
void tb_python_hooks_set(const char *value, int overwrite);

#endif
