/* cuda_hooks.c - cudaProfilerStart/Stop (and the driver's cuProfilerStart/
 * Stop) as step sources, without CUPTI.
 *
 * libtbprof.so exports the four functions. Loaded first (LD_PRELOAD), its
 * definitions win for every shared object that calls them through the
 * dynamic linker: the job's calls land here, count a step (start) or close
 * it (stop), and go on to the real function. The real one is found with
 * dlsym(RTLD_NEXT), else, for a CUDA runtime loaded RTLD_LOCAL (a Python
 * extension's dependency, invisible to RTLD_NEXT), in the loaded objects
 * named libcudart* / libcuda* themselves. With no real function at all the
 * call returns success (0 is cudaSuccess and CUDA_SUCCESS): without us the
 * call could not have been bound either.
 *
 * Not seen this way: a program linked with the static cudart (nvcc's
 * default) calls its own copy, and cudart reaches cuProfilerStart through
 * cuGetProcAddress, not the dynamic linker. Those need a CUPTI callback on
 * the cudaProfilerStart/Stop callback ids, held while idle (CUPTI has one
 * subscriber per process, so cupti/gpu.c would have to share it with its
 * capture subscription): not done, see README "Steps from CUDA".
 *
 * Semantics: each start begins a step (a step boundary, like tbprof_step());
 * a stop ends the step the last start began. A single start/stop pair around
 * a region (nsys' --capture-range=cudaProfilerApi usage) is step 0, so
 * TBPROF_STEPS=0 captures exactly that range.
 */
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "config.h"
#include "cudasteps.h"
#include "log.h"
#include "tbprof/tbprof.h"

/* ---- shared by both step sources ------------------------------------------ */

int64_t tb_cudasteps_begin(int src, int has_num, int64_t num)
{
    return tb_agent_step(src, has_num, num);
}

void tb_cudasteps_end(int64_t step) { tb_agent_step_end(step); }

void tb_cudasteps_init(const tb_config *c)
{
    tb_cuda_hooks_init(c);
    tb_nvtx_init(c);
}

/* ---- cudaProfilerStart/Stop ----------------------------------------------------- */

enum { F_CUDA_START, F_CUDA_STOP, F_CU_START, F_CU_STOP, NFUNCS };

static const char *const fname[NFUNCS] = {"cudaProfilerStart", "cudaProfilerStop", "cuProfilerStart",
                                          "cuProfilerStop"};

typedef int (*prof_fn)(void);
static _Atomic(prof_fn) real_fn[NFUNCS];
static atomic_int counting;           /* TBPROF_CUDA_STEPS=on */
static _Atomic int64_t cur_step = -1; /* the step the last start began; -1: none open */
static __thread int in_runtime_call;  /* a cudart wrapper is forwarding: a nested driver call is not a new step */

struct find_ctx {
    int skip;            /* candidates seen before: passed over */
    char path[PATH_MAX]; /* the next one's path ("": none left) */
};

/* dl_iterate_phdr: the path of the next loaded libcudart* / libcuda*
 * object. Only copied here: dlopen() takes the loader's lock, which a
 * thread in dlopen() holds while it waits for the one dl_iterate_phdr holds
 * around this callback (a job loading a library on another thread would
 * deadlock with us). */
static int find_cuda_lib(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct find_ctx *f = arg;
    const char *path = info->dlpi_name;
    if (!path || !*path)
        return 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strncmp(base, "libcudart", 9) && strncmp(base, "libcuda.", 8))
        return 0;
    if (f->skip-- > 0 || strlen(path) >= sizeof(f->path))
        return 0;
    memcpy(f->path, path, strlen(path) + 1);
    return 1;
}

/* The symbol in a loaded libcudart* / libcuda* object, not `self`. The
 * object's handle is kept open when it defines it: that reference keeps it
 * (and the dependencies dlsym searched) loaded for the pointer resolve()
 * caches, from before the pointer is taken. */
static void *find_in_cuda_libs(const char *sym, void *self)
{
    struct find_ctx f;
    for (int k = 0; k < 64; k++) {
        f.skip = k;
        f.path[0] = '\0';
        if (!dl_iterate_phdr(find_cuda_lib, &f) || !f.path[0])
            return NULL;
        void *h = dlopen(f.path, RTLD_LAZY | RTLD_NOLOAD); /* unloaded meanwhile: NULL */
        if (!h)
            continue;
        void *p = dlsym(h, sym); /* searches that object and its dependencies only */
        if (p && p != self)
            return p; /* h not closed: never given back */
        dlclose(h);
    }
    return NULL;
}

/* Keeps the object that defines p loaded, for the pointer resolve()
 * caches: a job that dlclose()s its CUDA runtime (a plugin let go) would
 * otherwise leave it pointing into unmapped code, and its next
 * cudaProfilerStart would crash. A dlopen(RTLD_NOLOAD) counts as a
 * reference; this one is never given back. */
static void pin(void *p)
{
    Dl_info di;
    if (dladdr(p, &di) && di.dli_fname && di.dli_fname[0])
        (void)dlopen(di.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
}

static prof_fn resolve(int i, void *self)
{
    prof_fn f = atomic_load_explicit(&real_fn[i], memory_order_acquire);
    if (f)
        return f;
    void *p = dlsym(RTLD_NEXT, fname[i]);
    if (p == self)
        p = NULL;
    if (p)
        pin(p);
    else
        p = find_in_cuda_libs(fname[i], self); /* pinned by the handle it keeps */
    if (!p) {
        /* not cached: a CUDA library loaded later is found then */
        tb_warn_once("%s called but no CUDA library defines it: returning success without forwarding",
                     fname[i]);
        return NULL;
    }
    *(void **)&f = p;
    atomic_store_explicit(&real_fn[i], f, memory_order_release);
    tb_debug("%s forwards to %p", fname[i], p);
    return f;
}

static void on_start(void)
{
    if (!atomic_load_explicit(&counting, memory_order_relaxed) || in_runtime_call)
        return;
    int64_t n = tb_cudasteps_begin(TB_STEP_CUDA_PROFILER, 0, 0);
    if (n >= 0)
        atomic_store_explicit(&cur_step, n, memory_order_relaxed);
}

static void on_stop(void)
{
    if (!atomic_load_explicit(&counting, memory_order_relaxed) || in_runtime_call)
        return;
    int64_t n = atomic_exchange_explicit(&cur_step, -1, memory_order_relaxed);
    if (n >= 0)
        tb_cudasteps_end(n);
}

void tb_cuda_hooks_init(const tb_config *c)
{
    atomic_store(&counting, c->cuda_steps == TB_CUDA_STEPS_ON);
}

/* The exported wrappers. cudaError_t and CUresult are int-sized enums;
 * 0 is success for both. */
TBPROF_API int cudaProfilerStart(void)
{
    on_start();
    prof_fn f = resolve(F_CUDA_START, (void *)cudaProfilerStart);
    in_runtime_call++;
    int rc = f ? f() : 0;
    in_runtime_call--;
    return rc;
}

TBPROF_API int cudaProfilerStop(void)
{
    prof_fn f = resolve(F_CUDA_STOP, (void *)cudaProfilerStop);
    in_runtime_call++;
    int rc = f ? f() : 0;
    in_runtime_call--;
    on_stop();
    return rc;
}

TBPROF_API int cuProfilerStart(void)
{
    on_start();
    prof_fn f = resolve(F_CU_START, (void *)cuProfilerStart);
    return f ? f() : 0;
}

TBPROF_API int cuProfilerStop(void)
{
    prof_fn f = resolve(F_CU_STOP, (void *)cuProfilerStop);
    int rc = f ? f() : 0;
    on_stop();
    return rc;
}
