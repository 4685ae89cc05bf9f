/* own_zlib.c - an LD_PRELOAD shim (listed before libtbprof.so) that defines
 * one of zlib's functions, as a program that bundles its own zlib and
 * exports it does (node): libz.so.1's own call to deflateReset() would bind
 * to this one. The agent must not use libz.so.1 then (a real bundled zlib
 * keeps another state layout: the job crashed); reaching this aborts. */
#include <stdlib.h>
#include <unistd.h>

__attribute__((visibility("default"))) int deflateReset(void *strm)
{
    static const char m[] = "own_zlib: the program's deflateReset was called with tbprof's stream\n";
    (void)strm;
    ssize_t w = write(2, m, sizeof(m) - 1);
    (void)w;
    abort();
}
