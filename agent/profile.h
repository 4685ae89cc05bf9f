/* profile.h - where profiles go on disk, and writing them safely.
 *
 *   <logdir>/plugins/profile/<run>/<host>.xplane.pb
 *   <logdir>/plugins/profile/<run>/<host>.trace.json.gz   (optional)
 *   <logdir>/events.out.tfevents.<time>.<host>.profile-empty
 *
 * <run> is YYYY_MM_DD_HH_MM_SS by default (TensorBoard's profilers' form);
 * the agent passes a name that agrees across ranks (TBPROF_RUN, job id).
 * <host> is the host name plus rank/pid suffix chosen by the agent.
 * Every file appears atomically: written to a temporary name in the same
 * folder (O_EXCL|O_NOFOLLOW, process umask), fsync()ed, then linked to its
 * final name without replacing anything (another process's file is never
 * overwritten: a taken name gets a ".1", ".2", ... suffix before the
 * extension).
 */
#ifndef TBPROF_AGENT_PROFILE_H
#define TBPROF_AGENT_PROFILE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "trace.h"

typedef struct tb_profile_opts {
    const char *logdir; /* required */
    const char *run;    /* NULL: tb_run_name_from_time(now) */
    const char *host;   /* file stem; NULL: gethostname() */
    int trace_json;     /* also write <host>.trace.json.gz */
    int no_marker;      /* no events.out.tfevents...profile-empty (a fork child's: its parent's does) */
    size_t max_bytes;   /* 0: no cap; a larger xplane.pb is not written (-EFBIG) */
    uint64_t min_free;  /* 0: no floor; else the files are not written where they would leave the
                           file system less free than this (-TB_ELOWSPACE) */
    /* called before each piece written to the files (256 KiB or less), on
     * the writing thread: the agent answers its control socket there */
    void (*tick)(void *ctx);
    void *tick_ctx;
} tb_profile_opts;

/* tb_profile_write's error (negated) when the files would leave the file
 * system less free than min_free: not an errno value. */
#define TB_ELOWSPACE 10000
/* strerror(), and words for TB_ELOWSPACE. err > 0. */
const char *tb_profile_strerror(int err);

/* YYYY_MM_DD_HH_MM_SS in local time. */
int tb_run_name_from_time(time_t t, char *out, size_t n);

/* mkdir -p <logdir>/plugins/profile/<run>; path into out. */
int tb_run_dir(const char *logdir, const char *run, char *out, size_t n);

/* Write `data` to `dir`/`name` atomically, never replacing an existing file.
 * The final path (maybe with a suffix) goes into `final`. 0 or -errno. */
int tb_atomic_write(const char *dir, const char *name, const void *data, size_t len, char *final,
                    size_t final_n);

/* The empty TensorBoard event file in logdir (one per host and run). */
int tb_write_tfevents(const char *logdir, const char *host, double wall_time);

/* Everything at once: xplane.pb (+ trace.json.gz) + the tfevents file.
 * path_out receives the xplane.pb path. 0 or -errno; on error nothing
 * partial is left behind. */
int tb_profile_write(tb_space *s, const tb_profile_opts *o, char *path_out, size_t n);

/* CRC32C (Castagnoli) and TFRecord's masked form. */
unsigned tb_crc32c(const void *data, size_t len);
static inline unsigned tb_crc32c_mask(unsigned crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

#endif
