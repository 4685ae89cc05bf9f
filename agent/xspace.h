/* xspace.h - XSpace (xplane.pb) encoding and decoding.
 *
 * The writer is a streaming protobuf encoder written for tbprof: it sizes
 * each message first and then writes it once, linear in events, with no
 * per-event allocation. The reader (tools and tests only; it links
 * protobuf-c's generated code from proto/xplane.proto) loads a file back
 * into a tb_space so every tool works on one model.
 */
#ifndef TBPROF_AGENT_XSPACE_H
#define TBPROF_AGENT_XSPACE_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

typedef struct tb_buf {
    uint8_t *data;
    size_t len, cap;
} tb_buf;

void tb_buf_free(tb_buf *b);

/* Length of the valid UTF-8 sequence at s (n >= 1 bytes left), 0 when
 * none starts there (overlong forms, surrogates, > U+10FFFF, cut short). */
size_t tb_utf8_seq_len(const unsigned char *s, size_t n);

/* Serialize `s` (sorted first) to b; returns 0 or -ENOMEM, or -EFBIG when
 * the XSpace would be 2 GiB or more (no protobuf reader parses that). */
int tb_xspace_encode(tb_space *s, tb_buf *b);

/* Streaming form (no buffer of the whole file): begin(ctx, total) is called
 * once with the exact size before any byte (return < 0 to stop, e.g. over a
 * cap); then write(ctx, data, len) with consecutive pieces (a reused 256 KiB
 * chunk). Returns 0 or the first negative value begin/write returned;
 * -EFBIG without calling begin at 2 GiB or more. */
typedef struct tb_xspace_sink {
    int (*begin)(void *ctx, size_t total);
    int (*write)(void *ctx, const void *data, size_t len);
    void *ctx;
} tb_xspace_sink;
int tb_xspace_encode_stream(tb_space *s, const tb_xspace_sink *sink);

/* Read an xplane.pb file into a new tb_space. On failure returns a negative
 * errno and writes one line naming what is wrong into err ("truncated at
 * byte 1234", "not an XSpace: ...", "empty file"). */
int tb_xspace_read_file(const char *path, tb_space **out, char *err, size_t errlen);
int tb_xspace_decode(const uint8_t *data, size_t len, tb_space **out, char *err, size_t errlen);
/* How many events the xplane.pb at path holds, without building the
 * profile (`tbprof ls`): a walk over the wire format that needs the
 * file's size in memory, not the decoded profile's (about 12 times that).
 * A file it cannot vouch for is decoded, so it fails exactly where
 * tb_xspace_read_file does, with the same message. 0 or -errno. */
int tb_xspace_count_events(const char *path, uint64_t *events, char *err, size_t errlen);
int tb_xspace_count(const uint8_t *data, size_t len, uint64_t *events, char *err, size_t errlen);
/* When a profile was captured (ns since the epoch), from its first bytes
 * alone (a few KiB): the least line timestamp among the lines they begin
 * (tbprof's writer and protobuf's field order put a line's timestamp before
 * its events); 0 when they name none (another writer's layout, gzip). */
int64_t tb_xspace_head_time(const uint8_t *head, size_t len);

/* Chrome trace JSON (Kineto conventions), gzip-compressed with zlib. */
int tb_chrome_write_gz(tb_space *s, const char *path);
/* Uncompressed JSON into a buffer (tests, `tbprof convert --to x.json`). */
int tb_chrome_encode(tb_space *s, tb_buf *b);
/* The same JSON gzip-compressed into a buffer (tb_profile_write writes it
 * with tb_atomic_write). 0 or -ENOMEM / -EIO. */
int tb_chrome_encode_gz(tb_space *s, tb_buf *b);
/* The same, handed to write(ctx, data, len) in pieces as it is compressed
 * (about 64 KiB each; no buffer of the whole file). 0 or the first error. */
int tb_chrome_encode_gz_stream(tb_space *s, int (*write)(void *ctx, const void *data, size_t len), void *ctx);

#endif
