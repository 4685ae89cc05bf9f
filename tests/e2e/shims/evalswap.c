/* evalswap.c - a frame evaluator put over the interpreter's for a stretch
 * of calls, as torch.compile's (TorchDynamo's) is for each compiled call:
 * it keeps the one it replaced, calls it for every frame, and puts it back
 * at the end. Not a preload shim: progs/evalswap_py.py loads it with
 * ctypes.PyDLL (the GIL held in each call). No Python.h: PEP 523's
 * functions are looked up.
 *
 *   evalswap_enter()    install it (the one there is kept); 0, -1 no API
 *   evalswap_exit()     put the kept one back
 *   evalswap_current()  0: the default evaluator, 1: this one, 2: another
 *                       (a perf trampoline's) */
#include <dlfcn.h>
#include <stddef.h>

typedef void *(*eval_fn)(void *tstate, void *frame, int throwflag);

static void *(*interp_get)(void);
static eval_fn (*get)(void *interp);
static void (*set)(void *interp, eval_fn fn);
static eval_fn deflt, previous;

static void *shim(void *tstate, void *frame, int throwflag) { return previous(tstate, frame, throwflag); }

static int look(void)
{
    if (!get) {
        *(void **)&interp_get = dlsym(RTLD_DEFAULT, "PyInterpreterState_Get");
        *(void **)&set = dlsym(RTLD_DEFAULT, "_PyInterpreterState_SetEvalFrameFunc");
        *(void **)&deflt = dlsym(RTLD_DEFAULT, "_PyEval_EvalFrameDefault");
        *(void **)&get = dlsym(RTLD_DEFAULT, "_PyInterpreterState_GetEvalFrameFunc");
    }
    return interp_get && get && set && deflt;
}

__attribute__((visibility("default"))) int evalswap_enter(void)
{
    if (!look())
        return -1;
    void *interp = interp_get();
    if (get(interp) != shim) {
        previous = get(interp);
        set(interp, shim);
    }
    return 0;
}

__attribute__((visibility("default"))) int evalswap_exit(void)
{
    if (!look())
        return -1;
    void *interp = interp_get();
    if (get(interp) == shim && previous)
        set(interp, previous);
    previous = NULL;
    return 0;
}

__attribute__((visibility("default"))) int evalswap_current(void)
{
    if (!look())
        return -1;
    eval_fn cur = get(interp_get());
    return cur == deflt ? 0 : cur == shim ? 1 : 2;
}
