/* read_runs.h - run folders of a logdir and their files, for `tbprof ls`
 * and `tbprof dump` (owner: writers). */
#ifndef TBPROF_TOOLS_READ_RUNS_H
#define TBPROF_TOOLS_READ_RUNS_H

#include <stddef.h>
#include <time.h>

typedef struct tb_runfile {
    char *name; /* file name in the run folder */
    char *path;
    long long bytes;
} tb_runfile;

typedef struct tb_run {
    char *name; /* run folder name */
    char *path;
    time_t mtime; /* newest file in it */
    tb_runfile *files;
    size_t nfiles;
} tb_run;

typedef struct tb_runlist {
    tb_run *runs; /* sorted by (mtime, name): the last is the newest */
    size_t n;
} tb_runlist;

/* Runs under <logdir>/plugins/profile, or `logdir` itself when it is a run
 * folder (holds *.xplane.pb) or plugins/profile. 0, or -errno / -ENOENT
 * when there is nothing; *what gets a message for the user. */
int tb_runs_scan(const char *logdir, tb_runlist *out, const char **what);
void tb_runs_free(tb_runlist *l);
int tb_str_ends(const char *s, const char *suffix);

#include <stdio.h>
/* A JSON string literal (escapes, invalid UTF-8 as U+FFFD) to f. */
void rr_json_str(FILE *f, const char *s);
/* "1.234 ms"-style duration. */
const char *rr_fmt_dur(long long ns, char *buf, size_t n);

#endif
