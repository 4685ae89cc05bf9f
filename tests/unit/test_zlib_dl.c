/* test_zlib_dl.c - the stored-gzip writer (used where libz.so.1 cannot be
 * used) makes streams that zlib itself decodes to the input, through the
 * calls chrome_write.c makes: input in pieces, output space small and large,
 * Z_FINISH at the end. And tb_zlib_get() in this test (which exports no zlib
 * of its own) hands out libz.so.1's deflate. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "tap.h"
#include "zlib_dl.h"

/* Deflates in with zl, `piece` input bytes and `room` output bytes at a
 * time; returns the output length (0 on an error). */
static size_t run(const tb_zlib *zl, const unsigned char *in, size_t n, size_t piece, size_t room,
                  unsigned char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (zl->deflateInit2_(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, (int)sizeof(z)) != Z_OK)
        return 0;
    size_t off = 0, len = 0;
    int r = Z_OK, calls = 0;
    while (r != Z_STREAM_END && calls++ < 1000000) {
        if (z.avail_in == 0 && off < n) {
            z.next_in = (Bytef *)in + off;
            z.avail_in = (uInt)(n - off < piece ? n - off : piece);
            off += z.avail_in;
        }
        size_t give = cap - len < room ? cap - len : room;
        z.next_out = out + len;
        z.avail_out = (uInt)give;
        r = zl->deflate(&z, off == n ? Z_FINISH : Z_NO_FLUSH);
        len += give - z.avail_out;
        if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
            break;
    }
    zl->deflateEnd(&z);
    return r == Z_STREAM_END ? len : 0;
}

static int inflates_to(const unsigned char *gz, size_t len, const unsigned char *want, size_t n)
{
    unsigned char *back = malloc(n + 16);
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (!back || inflateInit2(&z, 16 + 15) != Z_OK) {
        free(back);
        return 0;
    }
    z.next_in = (Bytef *)gz;
    z.avail_in = (uInt)len;
    z.next_out = back;
    z.avail_out = (uInt)(n + 16);
    int r = inflate(&z, Z_FINISH); /* checks the CRC-32 and length trailer */
    int ok = r == Z_STREAM_END && z.total_out == n && memcmp(back, want, n) == 0;
    inflateEnd(&z);
    free(back);
    return ok;
}

int main(void)
{
    size_t n = 300000; /* several 65535-byte blocks */
    unsigned char *in = malloc(n), *out = malloc(2 * n + 4096);
    CHECK(in && out);
    srand(7);
    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)(i % 97 < 50 ? (int)('a' + i % 26) : rand());

    const tb_zlib *st = tb_zlib_stored();
    static const size_t pieces[] = {100, 1000, 65535, 65536, 300000}; /* (each call: a block, 5 bytes more) */
    static const size_t rooms[] = {13, 64, 70000, 1 << 20};
    for (size_t a = 0; a < sizeof(pieces) / sizeof(pieces[0]); a++)
        for (size_t b = 0; b < sizeof(rooms) / sizeof(rooms[0]); b++) {
            size_t len = run(st, in, n, pieces[a], rooms[b], out, 2 * n + 4096);
            CHECKF(len > n, "piece %zu room %zu: %zu bytes out", pieces[a], rooms[b], len);
            CHECKF(inflates_to(out, len, in, n), "piece %zu room %zu: does not inflate back", pieces[a], rooms[b]);
        }
    /* empty input: header, an empty final block, the trailer */
    size_t len = run(st, in, 0, 1, 64, out, 64);
    CHECK_EQ_I(len, 10 + 5 + 8);
    CHECK(inflates_to(out, len, in, 0));

    const char *why = "unset";
    const tb_zlib *zl = tb_zlib_get(&why);
    CHECKF(why == NULL, "libz.so.1 not used: %s", why ? why : "");
    CHECK(zl != st);
    len = run(zl, in, n, 65536, 1 << 20, out, 2 * n + 4096);
    CHECKF(len > 0 && len < n, "libz: %zu bytes of %zu", len, n);
    CHECK(inflates_to(out, len, in, n));
    free(in);
    free(out);
    return tap_done();
}
