/* zlib_dl.c - see zlib_dl.h. */
#include "zlib_dl.h"

#include <dlfcn.h>
#include <pthread.h>

#include "log.h"

static tb_zlib fns;
static const tb_zlib *loaded;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
    void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        tb_debug("zlib: %s", e ? e : "libz.so.1 not loadable");
        return;
    }
    *(void **)&fns.deflateInit2_ = dlsym(h, "deflateInit2_");
    *(void **)&fns.deflate = dlsym(h, "deflate");
    *(void **)&fns.deflateEnd = dlsym(h, "deflateEnd");
    if (!fns.deflateInit2_ || !fns.deflate || !fns.deflateEnd) {
        tb_debug("zlib: libz.so.1 lacks deflate");
        dlclose(h);
        return;
    }
    loaded = &fns; /* the handle stays open for the life of the process */
}

const tb_zlib *tb_zlib_get(void)
{
    pthread_once(&once, load);
    return loaded;
}
