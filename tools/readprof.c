/* readprof.c - resolve and load the profiles of one run (see readprof.h). */
#include "readprof.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "read_runs.h"
#include "xspace.h"

#define SUFFIX ".xplane.pb"
#define LARGE_INPUT (64LL << 20)

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

long long tb_input_bytes_of(const char *in, const char *run)
{
    struct stat st;
    if (stat(in, &st) < 0)
        return 0;
    if (!S_ISDIR(st.st_mode))
        return S_ISREG(st.st_mode) ? (long long)st.st_size : 0;
    /* a logdir or run folder: the profiles of the run tb_profset_load reads */
    tb_runlist rl;
    const char *what;
    long long bytes = 0;
    if (tb_runs_scan_quiet(in, &rl, &what) == 0) {
        const tb_run *r = run ? tb_runs_find(&rl, run) : NULL;
        if (!r)
            r = tb_runs_newest(&rl);
        for (size_t i = 0; r && i < r->nfiles; i++)
            if (tb_str_ends(r->files[i].name, SUFFIX))
                bytes += r->files[i].bytes;
    }
    tb_runs_free(&rl);
    return bytes;
}

long long tb_input_bytes(const char *in)
{
    return tb_input_bytes_of(in, NULL);
}

int tb_progress_wanted(long long bytes)
{
    return isatty(STDERR_FILENO) || bytes >= LARGE_INPUT;
}

static int add_file(tb_profset *ps, const char *cmd, const char *path, int progress)
{
    char err[256] = "";
    tb_space *s = NULL;
    long long bytes = tb_input_bytes(path);
    if (progress)
        fprintf(stderr, "tbprof %s: reading %s (%.1f MB)...\n", cmd, rr_text(path), (double)bytes / 1e6);
    int r = tb_xspace_read_file(path, &s, err, sizeof err);
    if (r < 0) {
        char *why = malloc(strlen(path) + strlen(err) + 4);
        if (why) {
            sprintf(why, "%s: %s", path, err);
            char **nv = realloc(ps->skipped_why, (ps->nwhy + 1) * sizeof(*nv));
            if (nv) {
                ps->skipped_why = nv;
                nv[ps->nwhy++] = why;
            } else {
                free(why);
            }
        }
        ps->skipped++;
        fprintf(stderr, "tbprof %s: skipping %s: %s\n", cmd, rr_text(path), err[0] ? err : strerror(-r));
        return 0;
    }
    tb_prof *np = realloc(ps->profs, (ps->n + 1) * sizeof(*np));
    if (!np) {
        tb_space_free(s);
        return -ENOMEM;
    }
    ps->profs = np;
    tb_prof *p = &ps->profs[ps->n++];
    p->path = strdup(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t bl = strlen(base);
    if (tb_str_ends(base, SUFFIX))
        bl -= strlen(SUFFIX);
    p->label = strndup(base, bl);
    p->space = s;
    p->bytes = bytes;
    return 0;
}

/* Whether the folder `in` (".", "run/", a link) is named `name`. */
static int names_folder(const char *in, const char *name)
{
    char *real = realpath(in, NULL);
    const char *path = real ? real : in;
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    int same = n - b == strlen(name) && !strncmp(path + b, name, n - b);
    free(real);
    return same;
}

/* The run of `rl` to read: `run` by name (when the input was a logdir or
 * its plugins/profile, not a run folder), else the newest. NULL after
 * printing why. */
static const tb_run *pick_run(const char *cmd, const char *in, const char *run,
                              const tb_runlist *rl, int scan_rc, const char *what)
{
    if (run && !rl->profdir && rl->n == 1 && !names_folder(in, run)) {
        fprintf(stderr, "tbprof %s: --run %s, but %s is another run's folder\n", cmd, run, in);
        return NULL;
    }
    if (run && rl->profdir) {
        const tb_run *r = tb_runs_find(rl, run);
        if (r)
            return r;
        char *p = tb_path_join(rl->profdir, run);
        if (p && is_dir(p)) {
            fprintf(stderr, "tbprof %s: no *" SUFFIX " files in %s\n", cmd, p);
        } else {
            fprintf(stderr, "tbprof %s: no run '%s' under %s\n", cmd, run, rl->profdir);
            if (rl->n) {
                fprintf(stderr, "  runs there:");
                for (size_t i = 0; i < rl->n; i++)
                    fprintf(stderr, " %s", rr_text(rl->runs[i].name));
                fputc('\n', stderr);
            }
        }
        free(p);
        return NULL;
    }
    if (scan_rc == -ENOENT)
        fprintf(stderr,
                "tbprof %s: no profile under %s: expected %s/plugins/profile/<run>/*" SUFFIX "\n",
                cmd, in, in);
    else if (scan_rc < 0)
        fprintf(stderr, "tbprof %s: %s: %s\n", cmd, in, what);
    return tb_runs_newest(rl);
}

int tb_profset_load(const char *cmd, const char *in, const char *run, int progress,
                    tb_profset *ps)
{
    memset(ps, 0, sizeof(*ps));
    struct stat st;
    if (stat(in, &st) < 0) {
        fprintf(stderr, "tbprof %s: %s: %s\n", cmd, in, strerror(errno));
        return 2;
    }
    if (run && !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "tbprof %s: --run %s picks a run under a logdir; %s is a file\n", cmd, run, in);
        return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
        const char *slash = strrchr(in, '/');
        ps->dir = slash ? strndup(in, (size_t)(slash - in)) : strdup(".");
        if (add_file(ps, cmd, in, progress) < 0 || !ps->n) {
            if (!ps->skipped)
                fprintf(stderr, "tbprof %s: out of memory\n", cmd);
            return 2;
        }
        return 0;
    }
    /* a run folder, a logdir or its plugins/profile folder: found the same
     * way as `tbprof ls` and `dump` find them (read_runs.c) */
    tb_runlist rl;
    const char *what;
    int src = tb_runs_scan(in, &rl, &what);
    const tb_run *r = pick_run(cmd, in, run, &rl, src, what);
    if (!r) {
        tb_runs_free(&rl);
        return 2;
    }
    if (!(ps->dir = strdup(r->path))) {
        fprintf(stderr, "tbprof %s: out of memory\n", cmd);
        tb_runs_free(&rl);
        return 2;
    }
    size_t nf = 0;
    for (size_t i = 0; i < r->nfiles; i++) {
        if (!tb_str_ends(r->files[i].name, SUFFIX))
            continue;
        nf++;
        if (add_file(ps, cmd, r->files[i].path, progress) < 0) {
            fprintf(stderr, "tbprof %s: out of memory\n", cmd);
            tb_runs_free(&rl);
            return 2;
        }
    }
    tb_runs_free(&rl);
    if (!ps->n) {
        fprintf(stderr, "tbprof %s: none of the %zu profile(s) in %s could be read\n", cmd, nf,
                ps->dir);
        return 2;
    }
    return 0;
}

void tb_profset_free(tb_profset *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->profs[i].path);
        free(ps->profs[i].label);
        tb_space_free(ps->profs[i].space);
    }
    free(ps->profs);
    for (size_t i = 0; i < ps->nwhy; i++)
        free(ps->skipped_why[i]);
    free(ps->skipped_why);
    free(ps->dir);
    memset(ps, 0, sizeof(*ps));
}

/* ---- shared by convert and flame ------------------------------------------- */

int tb_profset_fold(tb_profset *ps, tb_fold_what what, tb_profset_folded *out)
{
    memset(out, 0, sizeof(*out));
    out->f.gpu_ranges = what != TB_FOLD_CPU; /* each GPU event under its NVTX range (torch op) */
    for (size_t i = 0; i < ps->n; i++) {
        size_t t0 = out->f.nthreads;
        tb_space *s = ps->profs[i].space;
        int r = what == TB_FOLD_GPU     ? tb_folded_add_gpu(&out->f, s)
                : what == TB_FOLD_SYNCS ? tb_folded_add_syncs(&out->f, s)
                                        : tb_folded_add_space(&out->f, s);
        if (r < 0)
            return -ENOMEM;
        if (ps->n < 2)
            continue;
        for (size_t t = t0; t < out->f.nthreads; t++) {
            const char *th = out->f.threads[t];
            char *nm = malloc(strlen(ps->profs[i].label) + strlen(th) + 3);
            char **nv = realloc(out->names, (out->nnames + 1) * sizeof(*nv));
            if (!nm || !nv) {
                free(nm);
                if (nv)
                    out->names = nv;
                return -ENOMEM;
            }
            out->names = nv;
            sprintf(nm, "%s: %s", ps->profs[i].label, th);
            out->names[out->nnames++] = nm;
            out->f.threads[t] = nm;
        }
    }
    return 0;
}

void tb_profset_folded_free(tb_profset_folded *pf)
{
    tb_folded_free(&pf->f);
    for (size_t i = 0; i < pf->nnames; i++)
        free(pf->names[i]);
    free(pf->names);
    memset(pf, 0, sizeof(*pf));
}

/* Why a profile set has no CPU samples (the warnings that say so), one
 * line each on f (NULL: only count them). Returns how many. */
static int why_no_samples(const tb_profset *ps, FILE *f)
{
    int said = 0;
    for (size_t i = 0; i < ps->n; i++) {
        const tb_space *s = ps->profs[i].space;
        for (size_t w = 0; w < s->nwarnings; w++)
            if (strstr(s->warnings[w], "CPU") || strstr(s->warnings[w], "perf_event")) {
                if (f)
                    fprintf(f, "  %s: %s\n", rr_text(ps->profs[i].label), rr_text(s->warnings[w]));
                said++;
            }
        const tb_plane *h = tb_space_find_plane(s, "/host:CPU");
        const tb_stat *why = h ? tb_plane_find_stat(h, "tbprof_cpu_off_reason") : NULL;
        if (why && why->type == TB_STAT_REF) {
            if (f)
                fprintf(f, "  %s: CPU sampling off: %s\n", rr_text(ps->profs[i].label),
                        rr_text(tb_plane_stat_name(h, why->v.ref)));
            said++;
        }
    }
    return said;
}

int tb_profset_fold_some(const char *cmd, tb_profset *ps, tb_fold_what what, tb_profset_folded *pf)
{
    const char *where = rr_text(ps->n == 1 ? ps->profs[0].path : ps->dir); /* (a run folder's name) */
    if (tb_profset_fold(ps, what, pf) < 0) {
        fprintf(stderr, "tbprof %s: out of memory\n", cmd);
        return 2;
    }
    if (pf->f.total)
        return 0;
    if (what == TB_FOLD_SYNCS) {
        fprintf(stderr, "tbprof %s: no sync that waited in %s (no stream, event or context sync in the "
                        "capture, or GPU tracing off)\n", cmd, where);
        return 2;
    }
    if (what == TB_FOLD_GPU) {
        fprintf(stderr, "tbprof %s: no GPU work with its correlation id in %s (was GPU tracing on?)\n", cmd, where);
        return 2;
    }
    if (why_no_samples(ps, NULL)) {
        fprintf(stderr, "tbprof %s: no CPU samples in %s; the profile says:\n", cmd, where);
        why_no_samples(ps, stderr);
    } else {
        fprintf(stderr, "tbprof %s: no CPU samples in %s, and the profile records no reason (was it captured "
                        "with TBPROF_CPU=off, or did the capture end before the first sample?)\n", cmd, where);
    }
    return 2;
}

/* Where a write to `out` really goes when `out` is a symlink: the final
 * target, which may not exist yet (a dangling link). Returns a malloc'ed
 * path, or NULL with errno set. */
static char *link_target(const char *out)
{
    char *cur = strdup(out);
    for (int hop = 0; cur && hop < 40; hop++) {
        struct stat st;
        if (lstat(cur, &st) < 0 || !S_ISLNK(st.st_mode))
            return cur; /* missing: the file to create; else what to replace */
        char *full = realpath(cur, NULL);
        if (full) {
            free(cur);
            return full;
        }
        char to[PATH_MAX];
        ssize_t n = readlink(cur, to, sizeof(to) - 1);
        if (n < 0) {
            free(cur);
            return NULL;
        }
        to[n] = '\0';
        char *next;
        const char *slash = strrchr(cur, '/');
        if (to[0] == '/' || !slash) {
            next = strdup(to);
        } else {
            size_t dl = (size_t)(slash - cur) + 1;
            next = malloc(dl + (size_t)n + 1);
            if (next) {
                memcpy(next, cur, dl);
                memcpy(next + dl, to, (size_t)n + 1);
            }
        }
        free(cur);
        cur = next;
    }
    if (cur) {
        free(cur);
        errno = ELOOP;
    }
    return NULL;
}

/* Write straight into `out` (a device, FIFO or socket: no temporary, no
 * rename, which would put a regular file in its place). */
static int write_direct(const char *out, int (*fn)(FILE *, void *), void *arg)
{
    FILE *f = fopen(out, "w");
    if (!f)
        return -errno;
    int r = fn(f, arg);
    if (r == 0 && fflush(f) != 0)
        r = -errno;
    if (fclose(f) != 0 && r == 0)
        r = -errno;
    return r;
}

/* Write `path` through `path`.tmp.<pid> and rename: readers never see a
 * half-written file, and nothing is left on failure. */
static int write_replace(const char *path, int (*fn)(FILE *, void *), void *arg)
{
    char *tmp = malloc(strlen(path) + 32);
    if (!tmp)
        return -ENOMEM;
    sprintf(tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wx");
    int r = f ? fn(f, arg) : -errno;
    if (f) {
        if (r == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0))
            r = -errno;
        if (fclose(f) != 0 && r == 0)
            r = -errno;
    }
    if (r == 0 && rename(tmp, path) != 0)
        r = -errno;
    if (r < 0 && f)
        unlink(tmp);
    free(tmp);
    return r;
}

int tb_write_output(const char *cmd, const char *out, int (*fn)(FILE *, void *), void *arg)
{
    if (!strcmp(out, "-")) {
        int r = fn(stdout, arg);
        /* the flush's errno names the cause (ENOSPC, EPIPE); a writer that
         * saw ferror() mid-way can only say -EIO */
        errno = 0;
        int e = fflush(stdout) != 0 ? errno : 0;
        if (r < 0 || e) {
            fprintf(stderr, "tbprof %s: cannot write to stdout: %s\n", cmd, strerror(e ? e : -r));
            /* said: drop what is still buffered, or main.c's check of stdout
             * would flush it, fail again and say it again */
            __fpurge(stdout);
            clearerr(stdout);
            return 2;
        }
        return 0;
    }
    int r;
    struct stat st, lst;
    if (stat(out, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        r = write_direct(out, fn, arg); /* /dev/null, /dev/stdout, a FIFO... */
    } else if (lstat(out, &lst) == 0 && S_ISLNK(lst.st_mode)) {
        char *target = link_target(out); /* replace the target; the link stays */
        r = target ? write_replace(target, fn, arg) : -errno;
        free(target);
    } else {
        r = write_replace(out, fn, arg);
    }
    if (r < 0) {
        fprintf(stderr, "tbprof %s: cannot write %s: %s\n", cmd, out, strerror(-r));
        return 2;
    }
    return 0;
}
