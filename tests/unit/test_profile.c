/* test_profile.c - layout, atomic writes, TFRecord framing, CRC32C. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "event.pb-c.h"
#include "profile.h"
#include "tap.h"
#include "trace.h"
#include "xspace.h"

static char root[256];

static void rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", path);
}

static int count_entries(const char *dir, const char *contains)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && (!contains || strstr(e->d_name, contains)))
            n++;
    closedir(d);
    return n;
}

static size_t slurp(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void test_crc32c(void)
{
    CHECK_EQ_I(tb_crc32c("123456789", 9), 0xe3069283u);
    CHECK_EQ_I(tb_crc32c("", 0), 0);
    /* RFC 3720 (iSCSI) B.4 vectors */
    uint8_t b[32];
    memset(b, 0, 32);
    CHECK_EQ_I(tb_crc32c(b, 32), 0x8a9136aau);
    memset(b, 0xff, 32);
    CHECK_EQ_I(tb_crc32c(b, 32), 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        b[i] = (uint8_t)i;
    CHECK_EQ_I(tb_crc32c(b, 32), 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        b[i] = (uint8_t)(31 - i);
    CHECK_EQ_I(tb_crc32c(b, 32), 0x113fdb5cu);
    /* the mask is a 15-bit rotation plus a constant */
    CHECK_EQ_I(tb_crc32c_mask(0), 0xa282ead8u);
    CHECK_EQ_I(tb_crc32c_mask(0x12345678u), (((0x12345678u >> 15) | (0x12345678u << 17)) + 0xa282ead8u) & 0xffffffffu);
}

static void test_layout(void)
{
    char out[512];
    setenv("TZ", "UTC", 1);
    tzset();
    CHECK_EQ_I(tb_run_name_from_time(1700000000, out, sizeof(out)), 0);
    CHECK_STR(out, "2023_11_14_22_13_20");
    CHECK(tb_run_name_from_time(1700000000, out, 5) < 0);

    char logdir[300];
    snprintf(logdir, sizeof(logdir), "%s/a/b/logs", root);
    CHECK_EQ_I(tb_run_dir(logdir, "run1", out, sizeof(out)), 0);
    char want[600];
    snprintf(want, sizeof(want), "%s/plugins/profile/run1", logdir);
    CHECK_STR(out, want);
    struct stat st;
    CHECK(stat(want, &st) == 0 && S_ISDIR(st.st_mode));
    CHECK_EQ_I(tb_run_dir(logdir, "run1", out, sizeof(out)), 0); /* exists already: fine */
    CHECK_EQ_I(tb_run_dir(logdir, "../escape", out, sizeof(out)), -EINVAL);
    CHECK_EQ_I(tb_run_dir(logdir, "..", out, sizeof(out)), -EINVAL);
    CHECK_EQ_I(tb_run_dir(logdir, "", out, sizeof(out)), -EINVAL);

    /* a symlink planted as the run folder is not followed */
    char elsewhere[300], link[700];
    snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", root);
    mkdir(elsewhere, 0777);
    snprintf(link, sizeof(link), "%s/plugins/profile/evil", logdir);
    CHECK(symlink(elsewhere, link) == 0);
    int r = tb_run_dir(logdir, "evil", out, sizeof(out));
    CHECKF(r == -ELOOP || r == -ENOTDIR, "r = %d", r);
    tb_profile_opts o = {.logdir = logdir, .run = "evil", .host = "h"};
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "t");
    tb_line_add(l, tb_plane_event_meta(l->plane, "e"), 1000, 10);
    CHECK(tb_profile_write(s, &o, out, sizeof(out)) < 0);
    CHECK_EQ_I(count_entries(elsewhere, NULL), 0);
    tb_space_free(s);
}

static void test_atomic_write(void)
{
    char dir[300], f1[512], f2[512], f3[512];
    snprintf(dir, sizeof(dir), "%s/aw", root);
    mkdir(dir, 0777);
    CHECK_EQ_I(tb_atomic_write(dir, "node.a.xplane.pb", "first", 5, f1, sizeof(f1)), 0);
    CHECK_EQ_I(tb_atomic_write(dir, "node.a.xplane.pb", "second", 6, f2, sizeof(f2)), 0);
    CHECK_EQ_I(tb_atomic_write(dir, "node.a.xplane.pb", "third", 5, f3, sizeof(f3)), 0);
    char want[600];
    snprintf(want, sizeof(want), "%s/node.a.xplane.pb", dir);
    CHECK_STR(f1, want);
    snprintf(want, sizeof(want), "%s/node.a.1.xplane.pb", dir);
    CHECK_STR(f2, want);
    snprintf(want, sizeof(want), "%s/node.a.2.xplane.pb", dir);
    CHECK_STR(f3, want);
    uint8_t buf[64];
    CHECK_EQ_I(slurp(f1, buf, sizeof(buf)), 5);
    CHECK(memcmp(buf, "first", 5) == 0); /* never overwritten */
    CHECK_EQ_I(slurp(f2, buf, sizeof(buf)), 6);
    CHECK(memcmp(buf, "second", 6) == 0);
    CHECK_EQ_I(tb_atomic_write(dir, "plain", "x", 1, f1, sizeof(f1)), 0);
    CHECK_EQ_I(tb_atomic_write(dir, "plain", "y", 1, f1, sizeof(f1)), 0);
    snprintf(want, sizeof(want), "%s/plain.1", dir);
    CHECK_STR(f1, want);
    CHECK_EQ_I(count_entries(dir, "tmp"), 0);
    CHECK_EQ_I(count_entries(dir, NULL), 5);

    /* permissions: 0666 minus the umask */
    mode_t old = umask(027);
    CHECK_EQ_I(tb_atomic_write(dir, "perm.bin", "z", 1, f1, sizeof(f1)), 0);
    umask(old);
    struct stat st;
    CHECK(stat(f1, &st) == 0 && (st.st_mode & 0777) == 0640);

    /* two processes racing on one name: both files survive, whole */
    pid_t kid = fork();
    if (kid == 0) {
        char big[4096];
        memset(big, 'k', sizeof(big));
        for (int i = 0; i < 20; i++)
            tb_atomic_write(dir, "race.xplane.pb", big, sizeof(big), NULL, 0);
        _exit(0);
    }
    char big[4096];
    memset(big, 'p', sizeof(big));
    for (int i = 0; i < 20; i++)
        CHECK_EQ_I(tb_atomic_write(dir, "race.xplane.pb", big, sizeof(big), NULL, 0), 0);
    int status;
    waitpid(kid, &status, 0);
    CHECK_EQ_I(count_entries(dir, "race"), 40);
    CHECK_EQ_I(count_entries(dir, "tmp"), 0);
}

static void test_failures_leave_nothing(void)
{
    char dir[300], f[512];
    snprintf(dir, sizeof(dir), "%s/fail", root);
    mkdir(dir, 0777);
    /* a missing folder */
    char missing[400];
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    CHECK_EQ_I(tb_atomic_write(missing, "x.pb", "a", 1, f, sizeof(f)), -ENOENT);
    /* a read-only folder (root ignores modes: then a file stands in for the folder) */
    if (geteuid() != 0) {
        chmod(dir, 0500);
        CHECK_EQ_I(tb_atomic_write(dir, "x.pb", "a", 1, f, sizeof(f)), -EACCES);
        chmod(dir, 0700);
    } else {
        char file[400];
        snprintf(file, sizeof(file), "%s/afile", dir);
        FILE *fp = fopen(file, "w");
        fclose(fp);
        CHECK_EQ_I(tb_atomic_write(file, "x.pb", "a", 1, f, sizeof(f)), -ENOTDIR);
        unlink(file);
    }
    /* a file size limit: refused before writing (no SIGXFSZ), nothing left */
    struct rlimit old, tiny;
    getrlimit(RLIMIT_FSIZE, &old);
    tiny = old;
    tiny.rlim_cur = 1000;
    CHECK(setrlimit(RLIMIT_FSIZE, &tiny) == 0);
    static char big[100000];
    CHECK_EQ_I(tb_atomic_write(dir, "big.xplane.pb", big, sizeof(big), f, sizeof(f)), -EFBIG);
    CHECK_EQ_I(count_entries(dir, NULL), 0);

    /* the whole profile under the same limit: an error and no files at all */
    char logdir[400];
    snprintf(logdir, sizeof(logdir), "%s/logs", dir);
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "t");
    int64_t m = tb_plane_event_meta(l->plane, "event");
    for (int i = 0; i < 1000; i++)
        tb_line_add(l, m, 1000 + i * 10, 5);
    tb_profile_opts o = {.logdir = logdir, .run = "r", .host = "h"};
    CHECK_EQ_I(tb_profile_write(s, &o, f, sizeof(f)), -EFBIG);
    setrlimit(RLIMIT_FSIZE, &old);
    char rundir[500];
    snprintf(rundir, sizeof(rundir), "%s/plugins/profile", logdir);
    CHECK(count_entries(rundir, NULL) <= 0); /* no run folder left, or an empty profile/ */
    CHECK_EQ_I(count_entries(logdir, "tfevents"), 0);

    /* max_bytes: -EFBIG, nothing written */
    o.max_bytes = 100;
    CHECK_EQ_I(tb_profile_write(s, &o, f, sizeof(f)), -EFBIG);
    CHECK(count_entries(rundir, NULL) <= 0);
    CHECK_EQ_I(count_entries(logdir, "tfevents"), 0);

    /* min_free over what the file system has: -TB_ELOWSPACE, nothing written */
    o.max_bytes = 0;
    struct statvfs v;
    CHECK(statvfs(dir, &v) == 0);
    o.min_free = (uint64_t)v.f_bavail * v.f_frsize + (1ull << 30);
    o.trace_json = 1;
    CHECK_EQ_I(tb_profile_write(s, &o, f, sizeof(f)), -TB_ELOWSPACE);
    CHECK(count_entries(rundir, NULL) <= 0);
    CHECK_EQ_I(count_entries(logdir, "tfevents"), 0);
    CHECK(strstr(tb_profile_strerror(TB_ELOWSPACE), "TBPROF_MIN_FREE_MB") != NULL);
    CHECK_STR(tb_profile_strerror(ENOSPC), strerror(ENOSPC));
    o.min_free = 1; /* a byte: written, trace.json.gz too */
    CHECK_EQ_I(tb_profile_write(s, &o, f, sizeof(f)), 0);
    CHECK_EQ_I(count_entries(rundir, NULL), 1);
    snprintf(rundir, sizeof(rundir), "%s/plugins/profile/r", logdir);
    CHECK_EQ_I(count_entries(rundir, "trace.json.gz"), 1);
    tb_space_free(s);
}

static void test_tfevents(void)
{
    char logdir[300];
    snprintf(logdir, sizeof(logdir), "%s/tfe", root);
    mkdir(logdir, 0777);
    CHECK_EQ_I(tb_write_tfevents(logdir, "node1", 1700000000.5), 0);
    char path[600];
    snprintf(path, sizeof(path), "%s/events.out.tfevents.1700000000.node1.profile-empty", logdir);
    uint8_t b[256];
    size_t n = slurp(path, b, sizeof(b));
    /* framing, byte by byte: u64 length, masked crc(length), data, masked crc(data) */
    CHECK(n > 16);
    uint64_t len = 0;
    for (int i = 0; i < 8; i++)
        len |= (uint64_t)b[i] << (8 * i);
    CHECK_EQ_I(n, 8 + 4 + len + 4);
    uint32_t c1 = (uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 | (uint32_t)b[11] << 24;
    CHECK_EQ_I(c1, tb_crc32c_mask(tb_crc32c(b, 8)));
    const uint8_t *d = b + 12;
    const uint8_t *c2p = d + len;
    uint32_t c2 = (uint32_t)c2p[0] | (uint32_t)c2p[1] << 8 | (uint32_t)c2p[2] << 16 | (uint32_t)c2p[3] << 24;
    CHECK_EQ_I(c2, tb_crc32c_mask(tb_crc32c(d, len)));
    /* the data: tag 0x09 + double, tag 0x1a + len 13 + "brain.Event:2" */
    CHECK_EQ_I(len, 1 + 8 + 1 + 1 + 13);
    CHECK_EQ_I(d[0], 0x09);
    double wt;
    memcpy(&wt, d + 1, 8);
    CHECK(wt == 1700000000.5);
    CHECK_EQ_I(d[9], 0x1a);
    CHECK_EQ_I(d[10], 13);
    CHECK(memcmp(d + 11, "brain.Event:2", 13) == 0);
    /* and protobuf-c's Event decoder agrees */
    Tensorflow__Event *ev = tensorflow__event__unpack(NULL, len, d);
    CHECK(ev != NULL);
    if (ev) {
        CHECK(ev->wall_time == 1700000000.5);
        CHECK_EQ_I(ev->what_case, TENSORFLOW__EVENT__WHAT_FILE_VERSION);
        CHECK_STR(ev->file_version, "brain.Event:2");
        tensorflow__event__free_unpacked(ev, NULL);
    }
    /* same second, same host again: a second file, the first kept */
    CHECK_EQ_I(tb_write_tfevents(logdir, "node1", 1700000000.7), 0);
    CHECK_EQ_I(count_entries(logdir, "profile-empty"), 2);
    CHECK_EQ_I(tb_write_tfevents(logdir, "a/b", 1.0), -EINVAL);
}

static void test_profile_write(void)
{
    char logdir[300], out[700];
    snprintf(logdir, sizeof(logdir), "%s/full", root);
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(h, 11, "main");
    int64_t m = tb_plane_event_meta(h, "step");
    for (int i = 0; i < 100; i++)
        tb_line_add(l, m, 1700000000000000000LL + i * 1000, 900);
    tb_profile_opts o = {.logdir = logdir, .run = "2024_01_02_03_04_05", .host = "node.rank0", .trace_json = 1};
    CHECK_EQ_I(tb_profile_write(s, &o, out, sizeof(out)), 0);
    char want[700];
    snprintf(want, sizeof(want), "%s/plugins/profile/2024_01_02_03_04_05/node.rank0.xplane.pb", logdir);
    CHECK_STR(out, want);
    tb_space *back = NULL;
    char err[200];
    CHECK_EQ_I(tb_xspace_read_file(out, &back, err, sizeof(err)), 0);
    CHECK_EQ_I(back ? tb_space_event_count(back) : 0, 100);
    tb_space_free(back);
    CHECK_EQ_I(count_entries(logdir, "profile-empty"), 1);
    snprintf(want, sizeof(want), "%s/plugins/profile/2024_01_02_03_04_05/node.rank0.trace.json.gz", logdir);
    gzFile gz = gzopen(want, "rb");
    CHECK(gz != NULL);
    if (gz) {
        static char json[1 << 20];
        int n = gzread(gz, json, sizeof(json) - 1);
        gzclose(gz);
        CHECK(n > 0);
        json[n > 0 ? n : 0] = '\0';
        CHECK(strstr(json, "\"traceEvents\"") != NULL);
        int xs = 0;
        for (char *p = json; (p = strstr(p, "\"ph\":\"X\"")); p++)
            xs++;
        CHECK_EQ_I(xs, 100);
    }
    /* a second rank with the same host stem, same run: its own file */
    CHECK_EQ_I(tb_profile_write(s, &o, out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "%s/plugins/profile/2024_01_02_03_04_05/node.rank0.1.xplane.pb", logdir);
    CHECK_STR(out, want);
    /* default run name and host */
    tb_profile_opts d = {.logdir = logdir};
    CHECK_EQ_I(tb_profile_write(s, &d, out, sizeof(out)), 0);
    CHECK(strstr(out, "/plugins/profile/20") != NULL && strstr(out, ".xplane.pb") != NULL);
    tb_space_free(s);
}

/* Two ranks, one run folder: rank 1's write fails (here: over max_bytes)
 * and removes the folder when it looks empty - which it does while rank
 * 0's file is still an unnamed O_TMPFILE inode being written. Rank 0's
 * profile must still appear. (The tick runs after rank 0 opened its file.) */
struct other_rank {
    const char *logdir;
    tb_space *s;
    int calls, r;
};

static void other_rank_fails(void *ctx)
{
    struct other_rank *o = ctx;
    if (o->calls++)
        return;
    tb_profile_opts f = {.logdir = o->logdir, .run = "shared", .host = "rank1", .max_bytes = 1};
    o->r = tb_profile_write(o->s, &f, NULL, 0);
}

static void test_other_rank_failing(void)
{
    char logdir[300], out[700], want[700];
    snprintf(logdir, sizeof(logdir), "%s/ranks", root);
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "main");
    int64_t m = tb_plane_event_meta(l->plane, "e");
    for (int i = 0; i < 100; i++)
        tb_line_add(l, m, 1700000000000000000LL + i * 1000, 900);
    struct other_rank o = {.logdir = logdir, .s = s};
    tb_profile_opts r0 = {.logdir = logdir, .run = "shared", .host = "rank0", .trace_json = 1,
                          .tick = other_rank_fails, .tick_ctx = &o};
    int r = tb_profile_write(s, &r0, out, sizeof(out));
    CHECK_EQ_I(r, 0); /* before: -ENOENT, linking into the removed folder */
    CHECK(o.calls > 0);
    CHECK_EQ_I(o.r, -EFBIG);
    snprintf(want, sizeof(want), "%s/plugins/profile/shared/rank0.xplane.pb", logdir);
    CHECK_STR(out, want);
    tb_space *back = NULL;
    char err[200];
    CHECK_EQ_I(tb_xspace_read_file(want, &back, err, sizeof(err)), 0);
    CHECK_EQ_I(back ? tb_space_event_count(back) : 0, 100);
    tb_space_free(back);
    snprintf(want, sizeof(want), "%s/plugins/profile/shared", logdir);
    CHECK_EQ_I(count_entries(want, "rank0.trace.json.gz"), 1);
    tb_space_free(s);
}

/* A file system with neither hard links nor RENAME_NOREPLACE (FUSE mounts
 * of object stores - gcsfuse, blobfuse - where logdirs often live; vfat):
 * link says ENOSYS or EPERM, renameat2 with a flag EINVAL, and O_TMPFILE
 * is not there. Played here by this program's own linkat, syscall and
 * access, which the agent's calls resolve to. */
static int no_links;
static int no_proc_links; /* a sandbox's /proc (gVisor): the unnamed file cannot be linked in */

int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    if (no_links) {
        errno = ENOSYS;
        return -1;
    }
    if (no_proc_links && !strncmp(oldpath, "/proc/self/fd/", 14)) {
        errno = EPERM;
        return -1;
    }
    return (int)syscall(SYS_linkat, olddirfd, oldpath, newdirfd, newpath, flags);
}

long syscall(long n, ...)
{
    static long (*real)(long, ...);
    /* as many arguments as the calls made here pass (reading more is
     * undefined, and ASan under clang says so) */
    int nargs = n == SYS_gettid ? 0 : n == SYS_renameat2 ? 5 : 6;
    va_list ap;
    va_start(ap, n);
    long a[6] = {0};
    for (int i = 0; i < nargs; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (no_links && n == SYS_renameat2 && a[4]) {
        errno = EINVAL;
        return -1;
    }
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int access(const char *path, int mode)
{
    if (no_links && !strncmp(path, "/proc/self/fd/", 14)) {
        errno = ENOENT;
        return -1;
    }
    return faccessat(AT_FDCWD, path, mode, 0);
}

static void test_no_links_no_noreplace(void)
{
    char dir[300], f1[512], f2[512], want[600];
    snprintf(dir, sizeof(dir), "%s/nolinks", root);
    mkdir(dir, 0777);
    no_links = 1;
    int r1 = tb_atomic_write(dir, "n.xplane.pb", "first", 5, f1, sizeof(f1));
    int r2 = tb_atomic_write(dir, "n.xplane.pb", "second", 6, f2, sizeof(f2));
    char logdir[400], out[700];
    snprintf(logdir, sizeof(logdir), "%s/logs", dir);
    tb_space *s = tb_space_new();
    tb_line *l = tb_plane_line(tb_space_plane(s, "/host:CPU"), 1, "t");
    tb_line_add(l, tb_plane_event_meta(l->plane, "e"), 1000, 5);
    tb_profile_opts o = {.logdir = logdir, .run = "r", .host = "h", .trace_json = 1};
    int r3 = tb_profile_write(s, &o, out, sizeof(out));
    no_links = 0;
    CHECK_EQ_I(r1, 0); /* before: -EINVAL, no profile on such a mount */
    CHECK_EQ_I(r2, 0);
    CHECK_EQ_I(r3, 0);
    snprintf(want, sizeof(want), "%s/n.xplane.pb", dir);
    CHECK_STR(f1, want);
    snprintf(want, sizeof(want), "%s/n.1.xplane.pb", dir);
    CHECK_STR(f2, want);
    uint8_t buf[64];
    snprintf(want, sizeof(want), "%s/n.xplane.pb", dir);
    CHECK_EQ_I(slurp(want, buf, sizeof(buf)), 5);
    CHECK(memcmp(buf, "first", 5) == 0); /* not replaced */
    CHECK_EQ_I(count_entries(dir, "tmp"), 0);
    snprintf(want, sizeof(want), "%s/plugins/profile/r", logdir);
    CHECK_EQ_I(count_entries(want, NULL), 2); /* h.xplane.pb, h.trace.json.gz */
    CHECK_EQ_I(count_entries(logdir, "profile-empty"), 1);
    tb_space_free(s);
}

/* O_TMPFILE works but its link from /proc/self/fd is refused: the bytes
 * go through a named temporary (the profile was lost, -EPERM) */
static void test_unnamed_file_not_linkable(void)
{
    char dir[300], f1[512], f2[512], want[600];
    snprintf(dir, sizeof(dir), "%s/noproclinks", root);
    mkdir(dir, 0777);
    char big[200000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)(i * 7);
    no_proc_links = 1;
    int r1 = tb_atomic_write(dir, "p.xplane.pb", big, sizeof(big), f1, sizeof(f1));
    int r2 = tb_atomic_write(dir, "p.xplane.pb", "second", 6, f2, sizeof(f2));
    no_proc_links = 0;
    CHECK_EQ_I(r1, 0);
    CHECK_EQ_I(r2, 0);
    snprintf(want, sizeof(want), "%s/p.xplane.pb", dir);
    CHECK_STR(f1, want);
    static uint8_t back[sizeof(big) + 1];
    CHECK_EQ_I(slurp(want, back, sizeof(back)), (long)sizeof(big));
    CHECK(memcmp(back, big, sizeof(big)) == 0);
    snprintf(want, sizeof(want), "%s/p.1.xplane.pb", dir);
    CHECK_STR(f2, want);
    CHECK_EQ_I(count_entries(dir, "tmp"), 0);
    CHECK_EQ_I(count_entries(dir, NULL), 2);
}

int main(void)
{
    signal(SIGXFSZ, SIG_DFL); /* a write past RLIMIT_FSIZE would kill us: the test is that none happens */
    snprintf(root, sizeof(root), "/tmp/tbprof_test_profile_%d", (int)getpid());
    rm_rf(root);
    mkdir(root, 0777);
    test_crc32c();
    test_layout();
    test_atomic_write();
    test_failures_leave_nothing();
    test_tfevents();
    test_profile_write();
    test_other_rank_failing();
    test_no_links_no_noreplace();
    test_unnamed_file_not_linkable();
    if (!tap_fail)
        rm_rf(root);
    return tap_done();
}
