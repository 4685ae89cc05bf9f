/* read_runs.h - run folders of a logdir and their files, for every tool
 * that takes a logdir (ls, dump, and through readprof.c summary, convert,
 * flame) (owner: writers). */
#ifndef TBPROF_TOOLS_READ_RUNS_H
#define TBPROF_TOOLS_READ_RUNS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct tb_runfile {
    char *name; /* file name in the run folder */
    char *path;
    long long bytes;
} tb_runfile;

typedef struct tb_run {
    char *name; /* run folder name */
    char *path;
    time_t mtime; /* newest .xplane.pb in it (modification time) */
    long mtime_nsec; /* ... and its nanoseconds, for ordering */
    int64_t captured_ns; /* when its capture ran, as its profile says (ns since the epoch); 0: unknown */
    tb_runfile *files; /* every regular file, by name */
    size_t nfiles;
} tb_run;

typedef struct tb_runlist {
    tb_run *runs; /* oldest first (read_runs.c run_cmp): the last is the newest */
    size_t n;
    char *profdir; /* folder the runs were listed from (plugins/profile);
                      NULL when the input is itself a run folder */
    size_t skipped; /* run folders that could not be read (each named on
                       stderr: "tbprof: skipping run DIR: why") */
} tb_runlist;

/* The one place that finds runs, for ls, dump, summary, convert and flame:
 * runs under <logdir>/plugins/profile, or `logdir` itself when it is a run
 * folder (holds *.xplane.pb) or plugins/profile. A run is a subfolder with
 * at least one *.xplane.pb; hidden entries are skipped. 0, or -errno /
 * -ENOENT when there is no run; *what gets a message for the user. A run
 * folder of plugins/profile that cannot be read (another user's, EACCES)
 * is named on stderr, counted in out->skipped and left out; only running
 * out of memory fails the scan. `out` is
 * always initialised: call tb_runs_free whatever this returns (on -ENOENT
 * out->profdir may still name where runs were looked for). */
int tb_runs_scan(const char *logdir, tb_runlist *out, const char **what);
/* The same without a word on stderr (a look before the real scan). */
int tb_runs_scan_quiet(const char *logdir, tb_runlist *out, const char **what);
void tb_runs_free(tb_runlist *l);
/* tb_runs_scan for ls and dump: on failure says "tbprof: LOGDIR: what" on
 * stderr, frees out and returns <0. */
int tb_runs_scan_or_say(const char *logdir, tb_runlist *out);
/* The newest run, or NULL when there is none. Runs are ordered by when
 * their capture ran as their profiles say (the least line timestamp in the
 * first bytes of a run's first profile: tbprof's and TensorFlow's writers
 * put it there), which a copy (cp -r, gsutil) keeps; where a run's
 * profiles do not say, by their latest modification time; ties: the
 * latest modification time, then the greatest name. */
const tb_run *tb_runs_newest(const tb_runlist *l);
/* The run named `name`, or NULL. */
const tb_run *tb_runs_find(const tb_runlist *l, const char *name);
int tb_str_ends(const char *s, const char *suffix);
/* strcmp, except that runs of digits compare as numbers (rank2 < rank10). */
int tb_name_cmp(const char *a, const char *b);
/* "a/b" (trailing slashes of a dropped), malloc'd; NULL when out of memory. */
char *tb_path_join(const char *a, const char *b);

#include <stdio.h>
/* s for text output (tables, lines on a terminal): s itself when it has
 * no control byte, else a copy with each byte below 0x20 and 0x7f (a
 * newline, ESC of a terminal escape) as '?'. A name read from a profile or
 * a folder goes through it before it is printed as text (JSON escapes them:
 * rr_json_str). The copy lives until RR_TEXT_SLOTS more calls; NULL stays
 * NULL. */
#define RR_TEXT_SLOTS 16
const char *rr_text(const char *s);
/* A JSON string literal (escapes, invalid UTF-8 as U+FFFD) to f. */
void rr_json_str(FILE *f, const char *s);
/* "1.234 ms"-style duration. */
const char *rr_fmt_dur(long long ns, char *buf, size_t n);
/* part as a percentage of whole; 0 when whole is not positive. */
double rr_pct(long long part, long long whole);

#endif
