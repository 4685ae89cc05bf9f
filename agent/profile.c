/* profile.c - the on-disk layout and safe file writing (see profile.h). */
#include "profile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "xspace.h"

/* ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ------------------------ */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) { tb_crc_table(crc_table, 0x82F63B78u); }

unsigned tb_crc32c(const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    return tb_crc_update(crc_table, 0, data, len);
}

/* ---- names and folders ------------------------------------------------------------ */

int tb_run_name_from_time(time_t t, char *out, size_t n)
{
    struct tm tm;
    if (!localtime_r(&t, &tm))
        return -EINVAL;
    if (strftime(out, n, "%Y_%m_%d_%H_%M_%S", &tm) == 0)
        return -ENAMETOOLONG;
    return 0;
}

/* A single path component we create: no '/', not "." or "..", not empty. */
static int component_ok(const char *c)
{
    return c && *c && !strchr(c, '/') && strcmp(c, ".") && strcmp(c, "..") && strlen(c) < NAME_MAX;
}

/* mkdir -p for the user's logdir (symlinks in it are the user's choice). */
static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0)
        return -EINVAL;
    if (n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0777) < 0 && errno != EEXIST)
        return -errno;
    struct stat st;
    if (stat(buf, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* Create (if needed) and open `name` under dirfd without following a
 * symlink there: another user can't redirect our output elsewhere. */
static int open_subdir(int dirfd, const char *name)
{
    if (mkdirat(dirfd, name, 0777) < 0 && errno != EEXIST)
        return -errno;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
        return fd;
    int e = errno;
    struct stat st; /* O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: name the symlink */
    if (e == ENOTDIR && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
        e = ELOOP;
    return -e;
}

int tb_run_dir(const char *logdir, const char *run, char *out, size_t n)
{
    if (!logdir || !*logdir || !component_ok(run))
        return -EINVAL;
    int r = mkdir_p(logdir);
    if (r < 0)
        return r;
    int fd = open(logdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    static const char *const parts[] = {"plugins", "profile"};
    for (size_t i = 0; i < 3; i++) {
        int nfd = open_subdir(fd, i < 2 ? parts[i] : run);
        close(fd);
        if (nfd < 0)
            return nfd;
        fd = nfd;
    }
    close(fd);
    size_t ll = strlen(logdir);
    while (ll > 1 && logdir[ll - 1] == '/')
        ll--;
    int w = snprintf(out, n, "%.*s/plugins/profile/%s", (int)ll, logdir, run);
    return (w < 0 || (size_t)w >= n) ? -ENAMETOOLONG : 0;
}

/* ---- atomic write ------------------------------------------------------------------ */

/* Split "host.xplane.pb" into stem "host" and ext ".xplane.pb"; names with
 * dots in the host part keep them (known multi-part extensions first). */
static size_t ext_at(const char *name)
{
    static const char *const exts[] = {".xplane.pb", ".trace.json.gz", ".trace.json", ".profile-empty"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        size_t e = strlen(exts[i]);
        if (n > e && !strcmp(name + n - e, exts[i]))
            return n - e;
    }
    const char *dot = strrchr(name, '.');
    return (dot && dot != name) ? (size_t)(dot - name) : n;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Link tmp to final without replacing anything: link(), or where the file
 * system has no hard links, renameat2(RENAME_NOREPLACE), or where it has
 * neither (FUSE mounts of object stores - gcsfuse, blobfuse -, vfat: EINVAL
 * for the flag) a rename to a name found free. That last is a look then a
 * rename: a writer racing for the very same name could be replaced, which
 * ranks (names of their own) do not do. */
static int link_noreplace(int dfd, const char *tmp, const char *final, int *renamed)
{
    *renamed = 0;
    if (linkat(dfd, tmp, dfd, final, 0) == 0)
        return 0;
    int e = errno;
    if (e != EPERM && e != EOPNOTSUPP && e != ENOSYS && e != EMLINK)
        return -e;
#ifdef SYS_renameat2
    if (syscall(SYS_renameat2, dfd, tmp, dfd, final, 1u /* RENAME_NOREPLACE */) == 0) {
        *renamed = 1;
        return 0;
    }
    e = errno;
    if (e != EINVAL && e != ENOSYS && e != EOPNOTSUPP)
        return -e;
#endif
    struct stat st;
    if (fstatat(dfd, final, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return -EEXIST;
    if (errno != ENOENT)
        return -errno;
    if (renameat(dfd, tmp, dfd, final) < 0)
        return -errno;
    *renamed = 1;
    return 0;
}

/* A file being written in `dir`: an unnamed O_TMPFILE inode where the file
 * system has them (ext4, xfs, btrfs, tmpfs: a writer killed mid-write leaves
 * nothing behind), else a dot-named temporary file (NFS and other shared
 * file systems; readers skip the name). */
typedef struct atomic_file {
    int dfd, fd;
    int anon;               /* O_TMPFILE: linked in through proc[] */
    char proc[40];          /* "/proc/self/fd/N" */
    char tmp[NAME_MAX + 1]; /* the temporary name when !anon */
    uint64_t min_free;      /* bytes the file system must keep free (0: no floor) */
    int remake;             /* dir is a run folder: made again if found removed (see remake_dir) */
} atomic_file;

/* 0 when writing `more` bytes into fd's file system leaves at least
 * min_free free for unprivileged users (or fstatvfs cannot tell), else
 * -TB_ELOWSPACE. */
static int keeps_free(int fd, uint64_t more, uint64_t min_free)
{
    struct statvfs v;
    if (!min_free || fstatvfs(fd, &v) < 0 || !v.f_frsize)
        return 0;
    uint64_t avail = (uint64_t)v.f_bavail * v.f_frsize;
    return avail >= more && avail - more >= min_free ? 0 : -TB_ELOWSPACE;
}

const char *tb_profile_strerror(int err)
{
    return err == TB_ELOWSPACE ? "the file system would be left with less free space than TBPROF_MIN_FREE_MB"
                               : strerror(err);
}

static void af_abort(atomic_file *af)
{
    if (af->fd >= 0) {
        close(af->fd);
        if (!af->anon)
            unlinkat(af->dfd, af->tmp, 0);
    }
    if (af->dfd >= 0)
        close(af->dfd);
    af->fd = af->dfd = -1;
}

/* A run folder is shared by the ranks of a job, and a rank whose write
 * failed removes it when it looks empty (tb_profile_write) - which it does
 * before another rank opened its file there, or while that file is still
 * an unnamed O_TMPFILE inode. That rank makes the folder again (its parents
 * are never removed) and goes on. */
static int remake_dir(atomic_file *af, const char *dir)
{
    if (mkdir(dir, 0777) < 0 && errno != EEXIST)
        return -errno;
    int fd = tb_fd_above_stdio(open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (fd < 0)
        return -errno;
    if (af->dfd >= 0)
        close(af->dfd);
    af->dfd = fd;
    return 0;
}

/* A hidden temporary ".tbprof-<pid>-<n>.tmp" made in dfd (its name into
 * tmp), never following or replacing anything: the fd, or -1 (errno). */
static int open_named_tmp(int dfd, char tmp[NAME_MAX + 1])
{
    static _Atomic unsigned counter;
    int fd = -1;
    for (int tries = 0; tries < 100; tries++) {
        snprintf(tmp, NAME_MAX + 1, ".tbprof-%d-%u.tmp", (int)getpid(), counter++);
        /* 0666: open() applies the process umask */
        fd = tb_fd_above_stdio(openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666));
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    return fd;
}

/* Create the temporary file for `len` bytes (refused where the file system
 * would keep less than af->min_free, set by the caller; 0: no floor). */
static int af_open(atomic_file *af, const char *dir, size_t len)
{
    af->dfd = af->fd = -1;
    /* Over RLIMIT_FSIZE, write() raises SIGXFSZ, which kills the process by
     * default: refuse before writing instead. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && len > rl.rlim_cur)
        return -EFBIG;
    af->dfd = tb_fd_above_stdio(open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (af->dfd < 0 && !(errno == ENOENT && af->remake && remake_dir(af, dir) == 0))
        return -errno;
    int r = keeps_free(af->dfd, len, af->min_free);
    if (r < 0) {
        close(af->dfd);
        af->dfd = -1;
        return r;
    }
    af->anon = 0;
#ifdef O_TMPFILE
    /* 0666: open() applies the process umask. Linking it in later goes
     * through /proc/self/fd (linkat AT_EMPTY_PATH needs a capability), so
     * only when that path works. */
    af->fd = tb_fd_above_stdio(openat(af->dfd, ".", O_RDWR | O_TMPFILE | O_CLOEXEC, 0666)); /* read back by to_named */
    if (af->fd >= 0) {
        snprintf(af->proc, sizeof(af->proc), "/proc/self/fd/%d", af->fd);
        if (access(af->proc, F_OK) == 0) {
            af->anon = 1;
            af->tmp[0] = '\0';
            return 0;
        }
        close(af->fd);
        af->fd = -1;
    }
#endif
    af->fd = open_named_tmp(af->dfd, af->tmp);
    if (af->fd < 0) {
        int e = errno;
        af_abort(af);
        return -e;
    }
    return 0;
}

/* Where the unnamed file cannot be linked in after all (a sandbox's /proc
 * - gVisor - or a file system that refuses the link from /proc/self/fd):
 * its bytes into a named temporary of the same folder, which is linked
 * the named way. 0 or -errno (af left as it was on failure). */
static int to_named(atomic_file *af)
{
    int fd = open_named_tmp(af->dfd, af->tmp);
    if (fd < 0)
        return -errno;
    char buf[65536];
    off_t at = 0;
    int r = 0;
    for (;;) {
        ssize_t k = pread(af->fd, buf, sizeof(buf), at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            r = k < 0 ? -errno : 0;
            break;
        }
        if ((r = write_all(fd, buf, (size_t)k)) < 0)
            break;
        at += k;
    }
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r < 0) {
        unlinkat(af->dfd, af->tmp, 0);
        af->tmp[0] = '\0';
        return r;
    }
    close(af->fd);
    af->fd = -1;
    af->anon = 0;
    return 0;
}

static int af_write(void *ctx, const void *data, size_t len)
{
    return write_all(((atomic_file *)ctx)->fd, data, len);
}

/* fsync, then link to `name` (or name.1.ext, ...) without replacing anything. */
static int af_commit(atomic_file *af, const char *dir, const char *name, char *final, size_t final_n)
{
    int r = 0;
    if (fsync(af->fd) < 0)
        r = -errno; /* ENOSPC / EDQUOT / EIO show up here on some file systems */
    if (!af->anon) { /* named: closed before the link, as close can report errors */
        if (close(af->fd) < 0 && r == 0)
            r = -errno;
        af->fd = -1;
    }
    if (r < 0) {
        af_abort(af);
        return r;
    }
    size_t stem = ext_at(name);
    char cand[NAME_MAX + 1];
    int renamed = 0;
    r = -EEXIST;
    for (unsigned k = 0; k < 1000 && r == -EEXIST; k++) {
        int w = k == 0 ? snprintf(cand, sizeof(cand), "%s", name)
                       : snprintf(cand, sizeof(cand), "%.*s.%u%s", (int)stem, name, k, name + stem);
        if (w < 0 || (size_t)w >= sizeof(cand)) {
            r = -ENAMETOOLONG;
            break;
        }
        if (af->anon) {
            r = linkat(AT_FDCWD, af->proc, af->dfd, cand, AT_SYMLINK_FOLLOW) == 0 ? 0 : -errno;
            if (r == -EPERM || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOSYS || r == -EXDEV ||
                (r == -ENOENT && !af->remake)) {
                /* the link from /proc refused: once through a named copy */
                int c = to_named(af);
                if (c < 0) {
                    r = c;
                    break;
                }
                r = -EEXIST;
                k--; /* the same name, the named way */
                continue;
            }
        } else
            r = link_noreplace(af->dfd, af->tmp, cand, &renamed);
        if (r == -ENOENT && af->anon && af->remake && remake_dir(af, dir) == 0) {
            af->remake = 0; /* once */
            r = -EEXIST;
            k--; /* the same name, in the folder made again */
        }
    }
    if (af->anon) {
        if (close(af->fd) < 0 && r == 0) {
            r = -errno;
            unlinkat(af->dfd, cand, 0);
        }
        af->fd = -1;
    } else if (!renamed) {
        unlinkat(af->dfd, af->tmp, 0);
    }
    if (r == 0) {
        fsync(af->dfd); /* the new name survives a crash too; best effort */
        if (final && final_n) {
            int w = snprintf(final, final_n, "%s/%s", dir, cand);
            if (w < 0 || (size_t)w >= final_n)
                final[0] = '\0';
        }
    }
    close(af->dfd);
    af->dfd = -1;
    return r;
}

int tb_atomic_write(const char *dir, const char *name, const void *data, size_t len, char *final,
                    size_t final_n)
{
    if (!dir || !component_ok(name))
        return -EINVAL;
    atomic_file af = {.dfd = -1, .fd = -1}; /* no free-space floor: small files */
    int r = af_open(&af, dir, len);
    if (r < 0)
        return r;
    if ((r = write_all(af.fd, data, len)) < 0) {
        af_abort(&af);
        return r;
    }
    return af_commit(&af, dir, name, final, final_n);
}

/* ---- TensorBoard event file ----------------------------------------------------------- */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* One TFRecord holding Event{wall_time, file_version "brain.Event:2"}; returns its size. */
static size_t tfevents_record(uint8_t *out, double wall_time)
{
    uint8_t ev[32];
    size_t n = 0;
    uint64_t bits;
    memcpy(&bits, &wall_time, 8);
    ev[n++] = (1 << 3) | 1; /* wall_time: double */
    put_le64(ev + n, bits);
    n += 8;
    static const char ver[] = "brain.Event:2";
    ev[n++] = (3 << 3) | 2; /* file_version: string */
    ev[n++] = (uint8_t)(sizeof(ver) - 1);
    memcpy(ev + n, ver, sizeof(ver) - 1);
    n += sizeof(ver) - 1;

    put_le64(out, n);
    put_le32(out + 8, tb_crc32c_mask(tb_crc32c(out, 8)));
    memcpy(out + 12, ev, n);
    put_le32(out + 12 + n, tb_crc32c_mask(tb_crc32c(ev, n)));
    return 12 + n + 4;
}

static int tfevents_write(const char *logdir, const char *host, double wall_time, char *final, size_t fn)
{
    if (!component_ok(host))
        return -EINVAL;
    char name[NAME_MAX + 1];
    int w = snprintf(name, sizeof(name), "events.out.tfevents.%lld.%s.profile-empty", (long long)wall_time,
                     host);
    if (w < 0 || (size_t)w >= sizeof(name))
        return -ENAMETOOLONG;
    uint8_t rec[64];
    size_t n = tfevents_record(rec, wall_time);
    return tb_atomic_write(logdir, name, rec, n, final, fn);
}

int tb_write_tfevents(const char *logdir, const char *host, double wall_time)
{
    return tfevents_write(logdir, host, wall_time, NULL, 0);
}

/* ---- everything at once ------------------------------------------------------------------ */

struct xsink {
    atomic_file af;
    const char *dir;
    size_t max_bytes;
    const tb_profile_opts *o;
};

static void tick(const tb_profile_opts *o)
{
    if (o->tick)
        o->tick(o->tick_ctx);
}

static int xsink_write(void *ctx, const void *data, size_t len)
{
    struct xsink *x = ctx;
    tick(x->o);
    return af_write(&x->af, data, len);
}

static int xsink_begin(void *ctx, size_t total)
{
    struct xsink *x = ctx;
    if (x->max_bytes && total > x->max_bytes)
        return -EFBIG;
    return af_open(&x->af, x->dir, total);
}

/* trace.json.gz: its size is known only at the end, so the caps
 * (max_bytes, RLIMIT_FSIZE: no SIGXFSZ) are checked before each piece, the
 * free space at the start and every GZ_FREE_CHECK bytes. */
#define GZ_FREE_CHECK (4u << 20)
struct gzsink {
    atomic_file af;
    size_t max_bytes, written, checked; /* checked: written when the free space was last looked at */
    struct rlimit rl;
    const tb_profile_opts *o;
};

static int gzsink_write(void *ctx, const void *data, size_t len)
{
    struct gzsink *g = ctx;
    if ((g->max_bytes && g->written + len > g->max_bytes) ||
        (g->rl.rlim_cur != RLIM_INFINITY && g->written + len > g->rl.rlim_cur))
        return -EFBIG;
    if (!g->written || g->written + len - g->checked >= GZ_FREE_CHECK) { /* its size is unknown until the end */
        int r = keeps_free(g->af.fd, len, g->af.min_free);
        if (r < 0)
            return r;
        g->checked = g->written + len;
    }
    g->written += len;
    tick(g->o);
    return write_all(g->af.fd, data, len);
}

int tb_profile_write(tb_space *s, const tb_profile_opts *o, char *path_out, size_t n)
{
    if (!s || !o || !o->logdir)
        return -EINVAL;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char run[NAME_MAX + 1], host[NAME_MAX + 1];
    int r;
    if (o->run) {
        if (!component_ok(o->run))
            return -EINVAL;
        snprintf(run, sizeof(run), "%s", o->run);
    } else if ((r = tb_run_name_from_time(tv.tv_sec, run, sizeof(run))) < 0) {
        return r;
    }
    if (o->host) {
        if (!component_ok(o->host))
            return -EINVAL;
        snprintf(host, sizeof(host), "%s", o->host);
    } else if (gethostname(host, sizeof(host) - 1) < 0 || !host[0]) {
        snprintf(host, sizeof(host), "localhost");
    }
    host[sizeof(host) - 1] = '\0';

    char dir[PATH_MAX], name[NAME_MAX + 1], xpath[PATH_MAX];
    if (snprintf(name, sizeof(name), "%s.xplane.pb", host) >= (int)sizeof(name))
        return -ENAMETOOLONG;
    if ((r = tb_run_dir(o->logdir, run, dir, sizeof(dir))) < 0)
        return r;
    /* Streamed straight into the temporary file: no buffer of the whole
     * profile in the job's memory. The size is known before any byte. */
    struct xsink ctx = {.af = {.dfd = -1, .fd = -1, .min_free = o->min_free, .remake = 1},
                        .dir = dir,
                        .max_bytes = o->max_bytes,
                        .o = o};
    tb_xspace_sink sink = {.begin = xsink_begin, .write = xsink_write, .ctx = &ctx};
    r = tb_xspace_encode_stream(s, &sink);
    if (r == 0)
        r = af_commit(&ctx.af, dir, name, xpath, sizeof(xpath));
    else
        af_abort(&ctx.af);
    if (r < 0) {
        rmdir(dir); /* only if we left it empty */
        return r;
    }
    /* The event file is what makes TensorBoard list the Profile plugin: part
     * of the contract, so a failure here takes the xplane.pb back out. */
    double wall = (double)tv.tv_sec + tv.tv_usec / 1e6;
    if (!o->no_marker && (r = tb_write_tfevents(o->logdir, host, wall)) < 0) {
        unlink(xpath);
        rmdir(dir);
        return r;
    }
    if (o->trace_json) {
        /* Optional extra, streamed into its temp file: a failure is one
         * warning, the profile stays. */
        char tname[NAME_MAX + 1];
        struct gzsink g = {
            .af = {.dfd = -1, .fd = -1, .min_free = o->min_free, .remake = 1}, .max_bytes = o->max_bytes, .o = o};
        /* the same stem as the xplane.pb it goes with ("h.1" when "h" was taken) */
        const char *xbase = strrchr(xpath, '/') ? strrchr(xpath, '/') + 1 : xpath;
        size_t stem = strlen(xbase) > strlen(".xplane.pb") ? strlen(xbase) - strlen(".xplane.pb") : 0;
        if (!stem) {
            xbase = host;
            stem = strlen(host);
        }
        int tr = snprintf(tname, sizeof(tname), "%.*s.trace.json.gz", (int)stem, xbase) >= (int)sizeof(tname)
                     ? -ENAMETOOLONG
                     : 0;
        if (tr == 0)
            tr = af_open(&g.af, dir, 0);
        if (tr == 0) {
            if (getrlimit(RLIMIT_FSIZE, &g.rl) < 0)
                g.rl.rlim_cur = RLIM_INFINITY;
            tr = tb_chrome_encode_gz_stream(s, gzsink_write, &g);
            if (tr == 0)
                tr = af_commit(&g.af, dir, tname, NULL, 0);
            else
                af_abort(&g.af);
        }
        if (tr < 0)
            tb_warn("trace.json.gz not written in %s: %s", dir, tb_profile_strerror(-tr));
    }
    if (path_out && n) {
        int w = snprintf(path_out, n, "%s", xpath);
        if (w < 0 || (size_t)w >= n)
            path_out[0] = '\0';
    }
    return 0;
}
