/* no_libz.c - an LD_PRELOAD shim (listed before libtbprof.so) under which
 * dlopen() of libz fails, as on a machine without zlib, so the tests see
 * what the agent does then: the xplane.pb is written, trace.json.gz is not,
 * one warning. Every other dlopen() goes to the next definition. */
#include <dlfcn.h>
#include <string.h>

typedef void *(*dlopen_fn)(const char *, int);

__attribute__((visibility("default"))) void *dlopen(const char *file, int flags)
{
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : file;
    if (base && !strncmp(base, "libz.so", 7))
        return NULL;
    static dlopen_fn next;
    if (!next)
        *(void **)&next = dlsym(RTLD_NEXT, "dlopen");
    return next ? next(file, flags) : NULL;
}
