/* python_env.h - tbprof's Python helper (step hooks) for a Python started
 * with the agent preloaded; see python_env.c. */
#ifndef TBPROF_PRELOAD_PYTHON_ENV_H
#define TBPROF_PRELOAD_PYTHON_ENV_H

/* From the constructor, before main(): in a CPython 3 that has not started,
 * put the helper on PYTHONPATH and the step hooks on. 1 when done. */
int tb_python_env_setup(void);

/* TBPROF_PY_TRAMPOLINE=always, from the constructor: PYTHONPERFSUPPORT=1
 * (unless set) in a CPython >= 3.12 that has not started. 1 when done. */
int tb_python_perf_always(void);

#endif
