/* zlib_dl.c - see zlib_dl.h. */
#include "zlib_dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

static tb_zlib fns;
static const tb_zlib *loaded;
static char why_stored[200];
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* ---- stored gzip: a valid .gz without compression ------------------------------- */

typedef struct stored {
    int header_done, trailer_done;
    uint32_t crc, isize;
} stored;

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) { tb_crc_table(crc_table, 0xedb88320u); }

static void put(z_streamp z, const void *p, size_t n)
{
    memcpy(z->next_out, p, n);
    z->next_out += n;
    z->avail_out -= (uInt)n;
    z->total_out += n;
}

static int stored_init(z_streamp z, int level, int method, int window_bits, int mem_level, int strategy,
                       const char *version, int stream_size)
{
    (void)level, (void)method, (void)window_bits, (void)mem_level, (void)strategy, (void)version;
    (void)stream_size;
    pthread_once(&crc_once, crc_init);
    stored *s = calloc(1, sizeof(*s));
    if (!s)
        return Z_MEM_ERROR;
    z->state = (struct internal_state *)(void *)s;
    z->total_in = z->total_out = 0;
    return Z_OK;
}

/* gzip header, then each call's input as non-final stored blocks (at most
 * 65535 bytes each, 5 bytes of header), then at Z_FINISH an empty final
 * block and the CRC-32 / length trailer. Z_BUF_ERROR when no progress fits. */
static int stored_deflate(z_streamp z, int flush)
{
    stored *s = (stored *)(void *)z->state;
    if (!s || s->trailer_done)
        return Z_STREAM_ERROR;
    int progress = 0;
    if (!s->header_done) {
        static const unsigned char hdr[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
        if (z->avail_out < sizeof(hdr))
            return Z_BUF_ERROR;
        put(z, hdr, sizeof(hdr));
        s->header_done = progress = 1;
    }
    while (z->avail_in > 0 && z->avail_out > 5) {
        size_t n = z->avail_in;
        if (n > z->avail_out - 5)
            n = z->avail_out - 5;
        if (n > 65535)
            n = 65535;
        unsigned char bh[5] = {0, (unsigned char)n, (unsigned char)(n >> 8), (unsigned char)~n,
                               (unsigned char)(~n >> 8)};
        put(z, bh, sizeof(bh));
        s->crc = tb_crc_update(crc_table, s->crc, z->next_in, n);
        s->isize += (uint32_t)n;
        put(z, z->next_in, n);
        z->next_in += n;
        z->avail_in -= (uInt)n;
        z->total_in += n;
        progress = 1;
    }
    if (flush != Z_FINISH || z->avail_in > 0)
        return progress ? Z_OK : Z_BUF_ERROR;
    unsigned char tail[13] = {1, 0, 0, 0xff, 0xff}; /* final, empty */
    for (int i = 0; i < 4; i++) {
        tail[5 + i] = (unsigned char)(s->crc >> (8 * i));
        tail[9 + i] = (unsigned char)(s->isize >> (8 * i));
    }
    if (z->avail_out < sizeof(tail))
        return progress ? Z_OK : Z_BUF_ERROR;
    put(z, tail, sizeof(tail));
    s->trailer_done = 1;
    return Z_STREAM_END;
}

static int stored_end(z_streamp z)
{
    free(z->state);
    z->state = NULL;
    return Z_OK;
}

static const tb_zlib stored_fns = {stored_init, stored_deflate, stored_end};

const tb_zlib *tb_zlib_stored(void) { return &stored_fns; }

/* ---- libz.so.1 ------------------------------------------------------------------ */

/* zlib's exported functions that its own code calls. Those calls bind to the
 * first definition in the process's global scope, not to libz's own: a
 * program that exports a zlib of its own (node bundles one, with another
 * z_stream state) would be called with our stream from libz.so.1 and crash
 * the job. Where one of these resolves elsewhere, libz.so.1 is not used. */
static const char *const self_calls[] = {
    "deflateInit_", "deflateInit2_", "deflate", "deflateEnd", "deflateReset", "deflateResetKeep",
    "deflateSetHeader", "deflateParams", "deflatePrime", "deflateBound", "crc32", "crc32_z",
    "adler32", "adler32_z", "zlibVersion", "zError",
};

/* The first of them defined elsewhere (*first: that definition), or NULL. */
static const char *interposed(void *h, void **first)
{
    for (size_t i = 0; i < sizeof(self_calls) / sizeof(self_calls[0]); i++) {
        void *ours = dlsym(h, self_calls[i]);
        *first = dlsym(RTLD_DEFAULT, self_calls[i]);
        if (ours && *first && *first != ours)
            return self_calls[i];
    }
    return NULL;
}

static void load(void)
{
    void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why_stored, sizeof(why_stored), "libz.so.1 not loadable (%s)", e ? e : "dlopen failed");
        return;
    }
    void *first;
    const char *other = interposed(h, &first);
    if (other) {
        Dl_info di;
        snprintf(why_stored, sizeof(why_stored), "%s defines zlib's %s, which libz.so.1 would call",
                 dladdr(first, &di) && di.dli_fname && di.dli_fname[0] ? di.dli_fname : "the program", other);
        return; /* h stays open: it was loaded before the check, and is harmless unused */
    }
    *(void **)&fns.deflateInit2_ = dlsym(h, "deflateInit2_");
    *(void **)&fns.deflate = dlsym(h, "deflate");
    *(void **)&fns.deflateEnd = dlsym(h, "deflateEnd");
    if (!fns.deflateInit2_ || !fns.deflate || !fns.deflateEnd) {
        snprintf(why_stored, sizeof(why_stored), "libz.so.1 lacks deflate");
        return;
    }
    loaded = &fns; /* the handle stays open for the life of the process */
}

const tb_zlib *tb_zlib_get(const char **why)
{
    pthread_once(&once, load);
    if (why)
        *why = loaded ? NULL : why_stored;
    return loaded ? loaded : &stored_fns;
}
