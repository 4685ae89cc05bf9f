/* readprof.h - what `tbprof summary`, `convert` and `flame` take as input:
 * a logdir, a run folder or one .xplane.pb file, resolved to the profiles
 * of one run and loaded, skipping (and naming) files that cannot be read.
 */
#ifndef TBPROF_TOOLS_READPROF_H
#define TBPROF_TOOLS_READPROF_H

#include <stddef.h>

#include "trace.h"

typedef struct tb_prof {
    char *path;  /* the .xplane.pb file */
    char *label; /* file name without .xplane.pb: the host / rank */
    tb_space *space;
    long long bytes;
} tb_prof;

typedef struct tb_profset {
    char *dir;     /* the run folder (or the file's folder) */
    tb_prof *profs; /* loaded */
    size_t n;
    size_t skipped; /* files that could not be read (named on stderr) */
    char **skipped_why; /* "<file>: <reason>" */
    size_t nwhy;
} tb_profset;

/* Resolve `in` (file, run folder, logdir/plugins/profile, logdir) to the
 * .xplane.pb files of one run (`run`: that run's folder name; NULL: the
 * newest) and load them. Files that fail to load are reported on stderr
 * ("tbprof <cmd>: skipping FILE: why") and skipped. progress: print phases
 * on stderr (see tb_progress_wanted). Returns 0 with at least one profile
 * loaded, or 2 after printing an actionable message. */
int tb_profset_load(const char *cmd, const char *in, const char *run, int progress,
                    tb_profset *ps);
void tb_profset_free(tb_profset *ps);

/* Progress on stderr only when it is a terminal or the input is large. */
int tb_progress_wanted(long long bytes);
/* The bytes of the profiles `in` stands for: a file's size, or for a
 * logdir or run folder the .xplane.pb files of its run `run` (NULL: the
 * newest) that tb_profset_load reads. tb_input_bytes: the newest run. */
long long tb_input_bytes_of(const char *in, const char *run);
long long tb_input_bytes(const char *in);


#include <stdio.h>

/* What tb_profset_fold folds: CPU sample stacks, GPU time by launching
 * stack (tb_folded_add_gpu), or the host's waits for the GPU by the stack
 * that waited (tb_folded_add_syncs). */
typedef enum tb_fold_what { TB_FOLD_CPU, TB_FOLD_GPU, TB_FOLD_SYNCS } tb_fold_what;

/* The stacks of every loaded profile; with several profiles each thread is
 * named "<label>: <thread>". 0 or -ENOMEM; free with
 * tb_profset_folded_free. */
#include "folded.h"
typedef struct tb_profset_folded {
    tb_folded f;
    char **names; /* allocated thread names */
    size_t nnames;
} tb_profset_folded;
int tb_profset_fold(tb_profset *ps, tb_fold_what what, tb_profset_folded *out);
void tb_profset_folded_free(tb_profset_folded *pf);

/* Write OUT atomically (OUT.tmp.<pid>, then rename; nothing is left on
 * failure), or to stdout when out is "-". When OUT is a symlink, its target
 * is replaced that way (the link stays); when OUT is (or links to) a device,
 * FIFO or socket, it is opened and written directly, never replaced. fn
 * writes the content. Returns 0, or 2 after printing "tbprof CMD: cannot
 * write OUT: why". */
int tb_write_output(const char *cmd, const char *out, int (*fn)(FILE *, void *), void *arg);
/* tb_profset_fold, for a command that shows what it folded: 0 when there
 * is something to show; 2 after saying on stderr why not ("tbprof CMD:
 * out of memory", no GPU work or syncs with correlation ids, or no CPU
 * samples and what the profiles say of it). Free pf with
 * tb_profset_folded_free either way. */
int tb_profset_fold_some(const char *cmd, tb_profset *ps, tb_fold_what what, tb_profset_folded *pf);

#endif
