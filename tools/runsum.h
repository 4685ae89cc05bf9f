/* runsum.h - one run's figures with every host (rank) of it together, for
 * the commands that compare runs: `tbprof trend` (one line per run) and
 * `tbprof diff` (two runs, kernel by kernel). Built from the per-host
 * summaries (agent/summary.h); everything here is copied, so a tb_runsum
 * outlives the profiles it came from.
 *
 * A host's figures cover its steps, or its whole capture where it has none.
 * Where some hosts of a run have steps and others none (a launcher or
 * data-loading process preloaded beside the ranks), the figures are those
 * of the hosts with steps: the others' whole captures would count as part
 * of the steps. They are counted in hosts_without_steps.
 */
#ifndef TBPROF_TOOLS_RUNSUM_H
#define TBPROF_TOOLS_RUNSUM_H

#include <stddef.h>
#include <stdint.h>

#include "readprof.h"

/* One kernel name over every host of the run. */
typedef struct tb_runsum_kernel {
    char *name;
    uint64_t count;
    int64_t ns;
    /* per-step figures' share: on hosts with steps, the launches inside
     * them (tb_sum_named's step_*); else count and ns */
    uint64_t step_count;
    int64_t step_ns;
} tb_runsum_kernel;

typedef struct tb_runsum {
    size_t hosts, gpus;                /* of the hosts the figures cover */
    size_t hosts_without_steps;        /* left out: other hosts had steps */
    size_t nsteps;                     /* all hosts' steps */
    int64_t step_sum_ns, step_min_ns, step_max_ns;
    int64_t slowest_host_mean_ns; /* the largest per-host mean (a straggler rank) */
    /* over the steps (the capture, for a host without steps), summed over hosts */
    int64_t window_ns, gpu_busy_ns, idle_cpu_ns, comm_exposed_ns;
    /* of window_ns: the hosts with a GPU plane, what the GPU figures are
     * shares of (a host without GPU tracing has no idle GPU time) */
    int64_t gpu_window_ns;
    int64_t capture_ns; /* the hosts' captures (first to last event), summed */
    /* of idle_cpu_ns: where the launching thread had CPU samples, and of
     * that, where it was off CPU (tb_summary's wait_*) */
    int64_t wait_sampled_ns, wait_off_cpu_ns;
    uint64_t comm_kernels;
    uint64_t launches; /* kernel launches */
    int64_t kernel_total_ns;
    /* the same inside steps (totals on hosts without steps): what per-step
     * figures divide */
    uint64_t step_launches;
    int64_t step_kernel_ns;
    uint64_t cpu_samples;
    tb_runsum_kernel *kernels; /* by ns descending, then name */
    size_t nkernels;
} tb_runsum;

/* Summarize every profile of ps and fold them together. 0 or -ENOMEM (out
 * zeroed, nothing held). */
int tb_runsum_of(const tb_profset *ps, tb_runsum *out);
/* Keep the first n kernels only (the rest freed). */
void tb_runsum_keep(tb_runsum *r, size_t n);
void tb_runsum_free(tb_runsum *r);
/* Mean step time over every host's steps; 0 without steps. */
int64_t tb_runsum_mean(const tb_runsum *r);

#endif
