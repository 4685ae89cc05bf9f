/* cmd_ls.c - `tbprof ls LOGDIR [--json]`: every run folder, oldest first,
 * its files with sizes and, for each .xplane.pb, its event count. A file
 * that cannot be read is one line on stderr and the listing goes on (exit 1). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "read_runs.h"
#include "trace.h"
#include "xspace.h"

int cmd_ls(int argc, char **argv)
{
    const char *in = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: tbprof ls LOGDIR [--json]\n");
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "tbprof: ls: unknown option '%s'\nusage: tbprof ls LOGDIR [--json]\n", argv[i]);
            return 2;
        } else if (!in)
            in = argv[i];
        else {
            fprintf(stderr, "usage: tbprof ls LOGDIR [--json]\n");
            return 2;
        }
    }
    if (!in) {
        fprintf(stderr, "usage: tbprof ls LOGDIR [--json]\n");
        return 2;
    }
    tb_runlist rl;
    if (tb_runs_scan_or_say(in, &rl) < 0)
        return 2;
    size_t bad = 0;
    if (json)
        fputs("{\"logdir\":", stdout), rr_json_str(stdout, in), fputs(",\"runs\":[", stdout);
    for (size_t i = 0; i < rl.n; i++) {
        const tb_run *r = &rl.runs[i];
        char when[32] = "";
        struct tm tm;
        if (localtime_r(&r->mtime, &tm))
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        if (json) {
            fputs(i ? ",{\"run\":" : "{\"run\":", stdout);
            rr_json_str(stdout, r->name);
            fputs(",\"path\":", stdout);
            rr_json_str(stdout, r->path);
            printf(",\"mtime\":%lld,\"files\":[", (long long)r->mtime);
        } else {
            printf("%s  (%s%s)\n", rr_text(r->name), when, i + 1 == rl.n ? ", newest" : "");
        }
        for (size_t k = 0; k < r->nfiles; k++) {
            const tb_runfile *f = &r->files[k];
            long long events = -1;
            char err[256] = "";
            if (tb_str_ends(f->name, ".xplane.pb")) {
                uint64_t n;
                if (tb_xspace_count_events(f->path, &n, err, sizeof(err)) < 0) {
                    fprintf(stderr, "tbprof: %s: %s\n", f->path, err);
                    bad++;
                } else {
                    events = (long long)n;
                }
            }
            if (json) {
                fputs(k ? ",{\"name\":" : "{\"name\":", stdout);
                rr_json_str(stdout, f->name);
                printf(",\"bytes\":%lld", f->bytes);
                if (events >= 0)
                    printf(",\"events\":%lld", events);
                if (err[0]) {
                    fputs(",\"error\":", stdout);
                    rr_json_str(stdout, err);
                }
                fputc('}', stdout);
            } else if (events >= 0) {
                printf("  %-40s %12lld bytes  %10lld events\n", rr_text(f->name), f->bytes, events);
            } else {
                printf("  %-40s %12lld bytes%s%s\n", rr_text(f->name), f->bytes, err[0] ? "  unreadable: " : "",
                       rr_text(err));
            }
        }
        if (json)
            fputs("]}", stdout);
    }
    if (json)
        fputs("]}\n", stdout);
    int rc = bad || rl.skipped ? 1 : 0;
    tb_runs_free(&rl);
    return rc;
}
