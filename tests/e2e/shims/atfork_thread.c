/* atfork_thread.c - an LD_PRELOAD shim, listed after libtbprof.so (so
 * initialized, and its fork handlers registered, before tbprof's), whose
 * fork child handler starts a thread and joins it, as a library that
 * restarts its worker threads in a fork child does (and as TSan's runtime
 * does for its background thread). Its handlers were registered before
 * tbprof's, so in the child it runs first, while tbprof's state is still
 * the parent's as copied in the middle of the fork. The thread prints
 * "atfork thread ran" on stderr. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *run(void *arg)
{
    (void)arg;
    static const char msg[] = "atfork thread ran\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    return NULL;
}

static void child(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, run, NULL) == 0)
        pthread_join(t, NULL);
}

__attribute__((constructor)) static void init(void) { pthread_atfork(NULL, NULL, child); }
