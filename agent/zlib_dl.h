/* zlib_dl.h - zlib's deflate, loaded with dlopen() the first time a gzip
 * file is written.
 *
 * libtbprof.so is preloaded into every process of a job, most of which never
 * write a profile; linking libz would map and relocate it in each of them at
 * start-up. Only the agent thread (or the CLI) calls these, at write time.
 */
#ifndef TBPROF_ZLIB_DL_H
#define TBPROF_ZLIB_DL_H

#include <zlib.h>

typedef struct tb_zlib {
    int (*deflateInit2_)(z_streamp, int, int, int, int, int, const char *, int);
    int (*deflate)(z_streamp, int);
    int (*deflateEnd)(z_streamp);
} tb_zlib;

/* The loaded functions, or NULL when libz.so.1 cannot be loaded (the reason
 * is logged once at debug level). Thread-safe; loads at most once. */
const tb_zlib *tb_zlib_get(void);

#endif
