/* cmd_flame.c - `tbprof flame IN -o out.svg`: an SVG flame graph of the CPU
 * samples of a profile (or of every host of a run), for a browser; with
 * --gpu, of the GPU time by the CPU stack that launched it; with --syncs, of
 * the host's waits for the GPU by the stack that waited. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "folded.h"
#include "readprof.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tbprof flame IN -o OUT.svg [--gpu | --syncs] [--title T] [--width PX] [--no-threads]\n"
               "                   [--run NAME]\n"
               "  IN              FILE.xplane.pb, a run folder, or a LOGDIR (its newest run)\n"
               "  -o OUT.svg      the flame graph (open it in a browser; hover for counts); - for stdout\n"
               "                  (also --to, as in tbprof convert)\n"
               "  --gpu           GPU time (kernels, copies, memsets) by the sampled CPU stack that\n"
               "                  launched it, the GPU work's name on top (default: CPU samples)\n"
               "  --syncs         the host's waits for the GPU (stream, event and context syncs: .item(),\n"
               "                  torch.cuda.synchronize()) by the sampled CPU stack that waited\n"
               "  --no-threads    merge threads (default: one tower per thread)\n");
}

typedef struct job {
    const tb_flame_node *root;
    tb_flame_opts o;
} job;

static int put_svg(FILE *f, void *arg)
{
    job *j = arg;
    return tb_flame_svg(j->root, f, &j->o);
}

int cmd_flame(int argc, char **argv)
{
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"to", required_argument, 0, 'o'}, /* as convert takes it */
                                         {"title", required_argument, 0, 't'},
                                         {"width", required_argument, 0, 'w'},
                                         {"run", required_argument, 0, 'r'},
                                         {"no-threads", no_argument, 0, 'T'},
                                         {"gpu", no_argument, 0, 'g'},
                                         {"syncs", no_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = NULL, *run = NULL, *title = NULL;
    int with_threads = 1, width = 1200, c;
    tb_fold_what what = TB_FOLD_CPU;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:t:w:r:Tgsh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'g': what = TB_FOLD_GPU; break;
        case 's': what = TB_FOLD_SYNCS; break;
        case 't': title = optarg; break;
        case 'w': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 200 || v > 100000) {
                fprintf(stderr, "tbprof flame: --width wants pixels (200..100000), not '%s'\n",
                        optarg);
                return 2;
            }
            width = (int)v;
            break;
        }
        case 'r': run = optarg; break;
        case 'T': with_threads = 0; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || !out) {
        usage(stderr);
        return 2;
    }
    const char *in = argv[optind];
    tb_profset ps;
    int rc = tb_profset_load("flame", in, run,
                             tb_progress_wanted(tb_input_bytes_of(in, run)) && strcmp(out, "-") != 0, &ps);
    if (rc) {
        tb_profset_free(&ps);
        return rc;
    }
    tb_profset_folded pf;
    tb_flame_node *root = NULL;
    if ((rc = tb_profset_fold_some("flame", &ps, what, &pf)) != 0) {
        /* said why */
    } else if (!(root = tb_flame_tree(&pf.f, with_threads))) {
        fprintf(stderr, "tbprof flame: out of memory\n");
        rc = 2;
    } else {
        char deftitle[512];
        static const char *const what_title[] = {"CPU flame graph", "GPU time by launching stack",
                                                 "Waits for the GPU (syncs) by calling stack"};
        snprintf(deftitle, sizeof deftitle, "%s: %s", what_title[what], ps.n == 1 ? ps.profs[0].label : ps.dir);
        job j = {.root = root,
                 .o = {.title = title ? title : deftitle, .width_px = width, .ns = what != TB_FOLD_CPU}};
        rc = tb_write_output("flame", out, put_svg, &j);
    }
    tb_flame_free(root);
    tb_profset_folded_free(&pf);
    tb_profset_free(&ps);
    return rc;
}
