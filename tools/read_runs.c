/* read_runs.c - list run folders and their files (see read_runs.h). */
#include "read_runs.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "xspace.h"

int tb_str_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

char *tb_path_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/')
        la--;
    char *r = malloc(la + strlen(b) + 2);
    if (r)
        sprintf(r, "%.*s/%s", (int)la, a, b);
    return r;
}

/* Names in natural order: a run of digits compares as a number, so the
 * files of rank2 come before those of rank10. */
int tb_name_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            const char *ea = a, *eb = b;
            while (*a == '0' && a[1] >= '0' && a[1] <= '9')
                a++;
            while (*b == '0' && b[1] >= '0' && b[1] <= '9')
                b++;
            const char *da = a, *db = b;
            while (*a >= '0' && *a <= '9')
                a++;
            while (*b >= '0' && *b <= '9')
                b++;
            if (a - da != b - db)
                return a - da < b - db ? -1 : 1;
            int c = strncmp(da, db, (size_t)(a - da));
            if (c)
                return c;
            if (a - ea != b - eb) /* "007" after "7" */
                return a - ea < b - eb ? -1 : 1;
            continue;
        }
        if (*a != *b)
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int file_cmp(const void *x, const void *y)
{
    return tb_name_cmp(((const tb_runfile *)x)->name, ((const tb_runfile *)y)->name);
}

/* ---- when a run was captured, from the head of its profile ---------------- */

#define HEAD_BYTES 4096 /* a line's timestamp comes before its events: in the first bytes */
#define HEAD_FILES 4    /* profiles of a run tried for one */

/* When r was captured (ns since the epoch), as its profiles say: the least
 * line timestamp in the first bytes of its first profile that has one;
 * 0 when none says (another writer's layout, gzip, unreadable). */
static int64_t capture_time(const tb_run *r)
{
    unsigned char buf[HEAD_BYTES];
    int tried = 0;
    for (size_t i = 0; i < r->nfiles && tried < HEAD_FILES; i++) {
        if (!tb_str_ends(r->files[i].name, ".xplane.pb"))
            continue;
        tried++;
        FILE *f = fopen(r->files[i].path, "rb");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        int64_t t = tb_xspace_head_time(buf, n);
        if (t)
            return t;
    }
    return 0;
}

/* When r ran: its capture time where its profile says it (a copied
 * logdir, cp -r or gsutil, has new modification times), else its
 * profiles' modification time (ns since the epoch, both). One key for
 * every run, so the order is a total one (qsort needs that). */
static int64_t run_time(const tb_run *r)
{
    return r->captured_ns ? r->captured_ns : (int64_t)r->mtime * 1000000000 + r->mtime_nsec;
}

/* Oldest first: by run_time, then the profiles' modification time, then name. */
static int run_cmp(const void *x, const void *y)
{
    const tb_run *a = x, *b = y;
    int64_t ta = run_time(a), tb = run_time(b);
    if (ta != tb)
        return ta < tb ? -1 : 1;
    if (a->mtime != b->mtime)
        return a->mtime < b->mtime ? -1 : 1;
    if (a->mtime_nsec != b->mtime_nsec)
        return a->mtime_nsec < b->mtime_nsec ? -1 : 1;
    return tb_name_cmp(a->name, b->name);
}

/* Fill r with the regular files of r->path (hidden temporaries skipped);
 * r->mtime is that of its newest profile. */
static int scan_files(tb_run *r)
{
    DIR *d = opendir(r->path);
    if (!d)
        return -errno;
    struct dirent *e;
    size_t cap = 0;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *p = tb_path_join(r->path, e->d_name);
        struct stat st;
        if (!p || stat(p, &st) < 0 || !S_ISREG(st.st_mode)) {
            free(p);
            continue;
        }
        if (r->nfiles == cap) {
            cap = cap ? cap * 2 : 8;
            tb_runfile *nf = realloc(r->files, cap * sizeof(*nf));
            if (!nf) {
                free(p);
                rc = -ENOMEM;
                break;
            }
            r->files = nf;
        }
        char *name = strdup(e->d_name);
        if (!name) {
            free(p);
            rc = -ENOMEM;
            break;
        }
        r->files[r->nfiles].name = name;
        r->files[r->nfiles].path = p;
        r->files[r->nfiles].bytes = (long long)st.st_size;
        r->nfiles++;
        if (tb_str_ends(e->d_name, ".xplane.pb") &&
            (st.st_mtim.tv_sec > r->mtime ||
             (st.st_mtim.tv_sec == r->mtime && st.st_mtim.tv_nsec > r->mtime_nsec))) {
            r->mtime = st.st_mtim.tv_sec;
            r->mtime_nsec = st.st_mtim.tv_nsec;
        }
    }
    closedir(d);
    if (r->nfiles)
        qsort(r->files, r->nfiles, sizeof(*r->files), file_cmp);
    return rc;
}

static int has_profile(const tb_run *r)
{
    for (size_t i = 0; i < r->nfiles; i++)
        if (tb_str_ends(r->files[i].name, ".xplane.pb"))
            return 1;
    return 0;
}

static void run_free(tb_run *r)
{
    for (size_t i = 0; i < r->nfiles; i++) {
        free(r->files[i].name);
        free(r->files[i].path);
    }
    free(r->files);
    free(r->name);
    free(r->path);
}

void tb_runs_free(tb_runlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        run_free(&l->runs[i]);
    free(l->runs);
    free(l->profdir);
    l->runs = NULL;
    l->n = 0;
    l->profdir = NULL;
}

int tb_runs_scan_or_say(const char *logdir, tb_runlist *out)
{
    const char *what;
    int rc = tb_runs_scan(logdir, out, &what);
    if (rc < 0) {
        fprintf(stderr, "tbprof: %s: %s\n", logdir, what);
        tb_runs_free(out);
    }
    return rc;
}

const tb_run *tb_runs_newest(const tb_runlist *l)
{
    return l->n ? &l->runs[l->n - 1] : NULL;
}

const tb_run *tb_runs_find(const tb_runlist *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->runs[i].name, name))
            return &l->runs[i];
    return NULL;
}

static int add_run(tb_runlist *l, const char *path, const char *name)
{
    tb_run r = {0};
    r.path = strdup(path);
    r.name = strdup(name);
    if (!r.path || !r.name) {
        run_free(&r);
        return -ENOMEM;
    }
    int rc = scan_files(&r);
    if (rc < 0 || !has_profile(&r)) {
        run_free(&r);
        return rc;
    }
    r.captured_ns = capture_time(&r);
    tb_run *nr = realloc(l->runs, (l->n + 1) * sizeof(*nr));
    if (!nr) {
        run_free(&r);
        return -ENOMEM;
    }
    l->runs = nr;
    l->runs[l->n++] = r;
    return 0;
}

static int scan_profile_dir(const char *pdir, tb_runlist *out, int quiet)
{
    DIR *d = opendir(pdir);
    if (!d)
        return -errno;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && rc == 0) {
        if (e->d_name[0] == '.')
            continue;
        char *p = tb_path_join(pdir, e->d_name);
        struct stat st;
        if (!p)
            rc = -ENOMEM;
        else if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rc = add_run(out, p, e->d_name);
        if (rc < 0 && rc != -ENOMEM) {
            /* one unreadable run (another user's in a shared logdir) must
             * not make the others unreadable */
            if (!quiet)
                fprintf(stderr, "tbprof: skipping run %s: %s\n", rr_text(p), strerror(-rc));
            out->skipped++;
            rc = 0;
        }
        free(p);
    }
    closedir(d);
    return rc;
}

static int runs_scan(const char *logdir, tb_runlist *out, const char **what, int quiet)
{
    memset(out, 0, sizeof(*out));
    *what = NULL;
    struct stat st;
    if (stat(logdir, &st) < 0) {
        int e = errno;
        *what = strerror(e);
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        *what = "not a directory";
        return -ENOTDIR;
    }
    char *pdir = tb_path_join(logdir, "plugins/profile");
    if (!pdir) {
        *what = strerror(ENOMEM);
        return -ENOMEM;
    }
    int rc;
    if (stat(pdir, &st) == 0 && S_ISDIR(st.st_mode)) {
        out->profdir = pdir;
        pdir = NULL;
        rc = scan_profile_dir(out->profdir, out, quiet);
    } else {
        /* a run folder itself, or plugins/profile given directly */
        const char *base = strrchr(logdir, '/');
        base = base && base[1] ? base + 1 : logdir;
        rc = add_run(out, logdir, base);
        if (rc == 0 && out->n == 0) {
            rc = scan_profile_dir(logdir, out, quiet);
            if (rc == 0 && out->n && !(out->profdir = strdup(logdir)))
                rc = -ENOMEM;
        }
    }
    free(pdir);
    if (rc < 0) {
        *what = strerror(-rc);
        tb_runs_free(out);
        return rc;
    }
    if (out->n == 0) {
        *what = "no profile found (no plugins/profile/<run>/*.xplane.pb)";
        return -ENOENT;
    }
    qsort(out->runs, out->n, sizeof(*out->runs), run_cmp);
    return 0;
}

int tb_runs_scan(const char *logdir, tb_runlist *out, const char **what)
{
    return runs_scan(logdir, out, what, 0);
}

int tb_runs_scan_quiet(const char *logdir, tb_runlist *out, const char **what)
{
    return runs_scan(logdir, out, what, 1);
}

const char *rr_text(const char *s)
{
    static char *slot[RR_TEXT_SLOTS];
    static size_t cap[RR_TEXT_SLOTS];
    static unsigned next;
    if (!s)
        return NULL;
    const unsigned char *c = (const unsigned char *)s;
    while (*c && *c >= 0x20 && *c != 0x7f)
        c++;
    if (!*c)
        return s;
    size_t n = strlen(s) + 1;
    unsigned i = next++ % RR_TEXT_SLOTS;
    if (cap[i] < n) {
        char *p = realloc(slot[i], n);
        if (!p)
            return "?"; /* out of memory: never the raw bytes */
        slot[i] = p;
        cap[i] = n;
    }
    for (size_t k = 0; k < n; k++) {
        unsigned char b = (unsigned char)s[k];
        slot[i][k] = (b && (b < 0x20 || b == 0x7f)) ? '?' : (char)b;
    }
    return slot[i];
}

void rr_json_str(FILE *f, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    while (*s) {
        unsigned c = *s;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc((int)c, f);
            s++;
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
            s++;
        } else if (c < 0x80) {
            fputc((int)c, f);
            s++;
        } else {
            /* copy a valid UTF-8 sequence, else U+FFFD for the byte */
            size_t k = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
            size_t i = 1;
            while (k && i < k && (s[i] & 0xC0) == 0x80)
                i++;
            int ok = k && i == k && !(c == 0xE0 && s[1] < 0xA0) && !(c == 0xED && s[1] > 0x9F) &&
                     !(c == 0xF0 && s[1] < 0x90) && !(c == 0xF4 && s[1] > 0x8F);
            if (ok) {
                fwrite(s, 1, k, f);
                s += k;
            } else {
                fputs("\\ufffd", f);
                s++;
            }
        }
    }
    fputc('"', f);
}

double rr_pct(long long part, long long whole)
{
    return whole > 0 ? 100.0 * (double)part / (double)whole : 0.0;
}

const char *rr_fmt_dur(long long ns, char *buf, size_t n)
{
    double v = (double)ns;
    if (ns < 0)
        v = -v;
    if (v < 1e3)
        snprintf(buf, n, "%lld ns", ns);
    else if (v < 1e6)
        snprintf(buf, n, "%.3f us", (double)ns / 1e3);
    else if (v < 1e9)
        snprintf(buf, n, "%.3f ms", (double)ns / 1e6);
    else
        snprintf(buf, n, "%.3f s", (double)ns / 1e9);
    return buf;
}
