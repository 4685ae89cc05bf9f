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

/* libz.so.1's functions; where it cannot be loaded or cannot be used
 * safely (the process defines zlib functions of its own, which libz's
 * internal calls would bind to), functions of ours with the same contract
 * that write a valid gzip stream of stored (uncompressed) blocks, and *why
 * (when why is not NULL) says why; NULL when libz is used. Thread-safe;
 * loads at most once. Only deflateInit2_ with gzip framing (windowBits
 * 15 + 16), deflate with Z_NO_FLUSH / Z_FINISH and deflateEnd are used. */
const tb_zlib *tb_zlib_get(const char **why);

/* The stored-gzip functions themselves (tests). */
const tb_zlib *tb_zlib_stored(void);

#endif
