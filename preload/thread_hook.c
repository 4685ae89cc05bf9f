/* thread_hook.c - pthread_create, interposed: tells the agent when the job
 * starts its first thread (TBPROF_SOCKET=auto, capture.c).
 *
 * A single-threaded program (a shell, a compiler, `python -c`) never gets an
 * agent thread of ours; a job that runs threads anyway (PyTorch, JAX, NumPy
 * with OpenBLAS all do, at import) gets it with its first one. The wrapper
 * forwards to the next definition (glibc's, or a sanitizer's interceptor
 * placed before us) and returns its result unchanged; the added cost per
 * call is a thread-local and an atomic load once the first thread was seen.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "thread_hook.h"
#include "tbprof/tbprof.h"

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static _Atomic(create_fn) real_create;

TBPROF_API int pthread_create(pthread_t *restrict t, const pthread_attr_t *restrict attr, void *(*fn)(void *),
                              void *restrict arg)
{
    create_fn real = atomic_load_explicit(&real_create, memory_order_acquire);
    if (!real) {
        *(void **)&real = dlsym(RTLD_NEXT, "pthread_create");
        if (!real)
            return EAGAIN; /* no pthread_create after us: cannot happen with glibc */
        atomic_store_explicit(&real_create, real, memory_order_release);
    }
    int rc = real(t, attr, fn, arg);
    if (rc == 0)
        tb_agent_thread_created();
    return rc;
}

/* Our own definition, whatever the dynamic linker binds "pthread_create" to. */
extern __typeof__(pthread_create) tb_own_pthread_create
    __attribute__((alias("pthread_create"), visibility("hidden"), nothrow));

int tb_thread_hook_active(void)
{
    if (dlsym(RTLD_DEFAULT, "pthread_create") == (void *)tb_own_pthread_create)
        return 1;
    /* an interceptor in front (a sanitizer runtime) forwards to the next
     * definition, which is ours when we were preloaded after it */
    Dl_info di;
    const char *pre = getenv("LD_PRELOAD");
    if (!pre || !dladdr((void *)tb_own_pthread_create, &di) || !di.dli_fname)
        return 0;
    const char *base = strrchr(di.dli_fname, '/');
    return strstr(pre, base ? base + 1 : di.dli_fname) != NULL;
}
