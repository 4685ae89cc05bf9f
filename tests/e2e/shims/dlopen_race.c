/* dlopen_race.c - an LD_PRELOAD shim (listed before libtbprof.so, so
 * tbprof's dlopen() calls land here) that makes one thread's dlopen() of a
 * new library meet tbprof's look-up of a CUDA runtime loaded RTLD_LOCAL
 * (cuda_hooks.c), as it would in a job whose other thread is loading a
 * library at that moment (an import, a plugin, a CUDA library loaded
 * lazily).
 *
 * The first dlopen(..., RTLD_NOLOAD) of a libcudart* object starts a thread
 * that dlopen()s TBTEST_DLOPEN_OTHER (a library not loaded yet: the loader
 * takes its load lock, then, to add the object, the lock on the list of
 * loaded objects), waits 300 ms, then makes the call. A caller that holds
 * the list lock there (a dlopen() from inside a dl_iterate_phdr callback)
 * and the other thread then wait for each other for ever. The other thread
 * prints "other loaded" on stderr when its dlopen() returned. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *(*real_dlopen)(const char *, int);
static int started;

__attribute__((constructor)) static void init(void)
{
    *(void **)&real_dlopen = dlsym(RTLD_NEXT, "dlopen");
}

static void *other(void *arg)
{
    void *h = real_dlopen((const char *)arg, RTLD_NOW | RTLD_LOCAL);
    fprintf(stderr, "other loaded: %s\n", h ? "yes" : dlerror());
    return NULL;
}

__attribute__((visibility("default"))) void *dlopen(const char *file, int flags)
{
    const char *lib = getenv("TBTEST_DLOPEN_OTHER");
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : file;
    if (lib && base && (flags & RTLD_NOLOAD) && !strncmp(base, "libcudart", 9) &&
        !__atomic_exchange_n(&started, 1, __ATOMIC_SEQ_CST)) {
        pthread_t t;
        if (pthread_create(&t, NULL, other, (void *)lib) == 0) {
            pthread_detach(t);
            struct timespec ts = {0, 300 * 1000000L};
            while (nanosleep(&ts, &ts) < 0)
                ;
        }
    }
    return real_dlopen(file, flags);
}
