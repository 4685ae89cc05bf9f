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
long long tb_input_bytes(const char *in);

#endif
