/* runsum.c - one run's figures over its hosts (see runsum.h). */
#include "runsum.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "summary.h"
#include "util.h"

int64_t tb_runsum_mean(const tb_runsum *r) { return r->nsteps ? r->step_sum_ns / (int64_t)r->nsteps : 0; }

static int kernel_cmp(const void *a, const void *b)
{
    const tb_runsum_kernel *x = a, *y = b;
    if (x->ns != y->ns)
        return x->ns < y->ns ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Add host summary s's kernels to r's table (idx: name -> index). */
static int add_kernels(tb_runsum *r, size_t *cap, tb_strmap *idx, const tb_summary *s)
{
    for (size_t k = 0; k < s->nkernels; k++) {
        const tb_sum_named *kn = &s->kernels[k];
        int64_t at = tb_strmap_get(idx, kn->name);
        if (at < 0) {
            char *name = strdup(kn->name);
            if (!name || TB_GROW(r->kernels, *cap, r->nkernels + 1) < 0 ||
                tb_strmap_put(idx, name, (uint32_t)r->nkernels) < 0) {
                free(name);
                return -ENOMEM;
            }
            at = (int64_t)r->nkernels++;
            r->kernels[at] = (tb_runsum_kernel){.name = name};
        }
        r->kernels[at].count += kn->count;
        r->kernels[at].ns += kn->total_ns;
        uint64_t step_count = s->nsteps ? kn->step_count : kn->count;
        int64_t step_ns = s->nsteps ? kn->step_ns : kn->total_ns;
        r->kernels[at].step_count += step_count;
        r->kernels[at].step_ns += step_ns;
        r->step_launches += step_count;
        r->step_kernel_ns += step_ns;
        r->launches += kn->count;
    }
    return 0;
}

/* Fold host summary s into r. */
static void add_host(tb_runsum *r, const tb_summary *s)
{
    r->hosts++;
    r->gpus += s->ngpus;
    r->window_ns += s->window_ns;
    if (s->ngpus)
        r->gpu_window_ns += s->window_ns;
    r->capture_ns += s->end_ns - s->begin_ns;
    r->gpu_busy_ns += s->gpu_busy_ns;
    r->idle_cpu_ns += s->idle_cpu_ns;
    r->wait_sampled_ns += tb_sum_wait_sampled_ns(s);
    r->wait_off_cpu_ns += s->wait_off_cpu_ns;
    r->comm_exposed_ns += s->comm_exposed_ns;
    r->comm_kernels += s->comm_kernels;
    r->kernel_total_ns += s->kernel_total_ns;
    r->cpu_samples += s->cpu_samples;
    if (!s->nsteps)
        return;
    if (!r->nsteps || s->step_min_ns < r->step_min_ns)
        r->step_min_ns = s->step_min_ns;
    if (s->step_max_ns > r->step_max_ns)
        r->step_max_ns = s->step_max_ns;
    for (size_t k = 0; k < s->nsteps; k++)
        r->step_sum_ns += s->steps[k].dur_ns;
    r->nsteps += s->nsteps;
    if (s->step_mean_ns > r->slowest_host_mean_ns)
        r->slowest_host_mean_ns = s->step_mean_ns;
}

int tb_runsum_of(const tb_profset *ps, tb_runsum *out)
{
    /* the hosts without steps [0] and with [1] apart: the run's figures are
     * the second's where it has any */
    tb_runsum acc[2] = {0};
    tb_strmap idx[2] = {0}; /* keys are the names the tables own */
    size_t cap[2] = {0};
    int rc = 0;
    for (size_t h = 0; h < ps->n && !rc; h++) {
        tb_summary s; /* one host at a time: its strings die with its space's use */
        rc = tb_summarize(ps->profs[h].space, &s);
        if (rc)
            break;
        int k = s.nsteps > 0;
        add_host(&acc[k], &s);
        rc = add_kernels(&acc[k], &cap[k], &idx[k], &s);
        tb_summary_free(&s);
    }
    tb_strmap_free(&idx[0]);
    tb_strmap_free(&idx[1]);
    int k = acc[1].hosts > 0;
    *out = acc[k];
    if (k)
        out->hosts_without_steps = acc[0].hosts;
    tb_runsum_free(&acc[!k]);
    if (rc) {
        tb_runsum_free(out);
        return -ENOMEM;
    }
    if (out->nkernels > 1)
        qsort(out->kernels, out->nkernels, sizeof(*out->kernels), kernel_cmp);
    return 0;
}

void tb_runsum_keep(tb_runsum *r, size_t n)
{
    for (size_t i = n; i < r->nkernels; i++)
        free(r->kernels[i].name);
    if (n < r->nkernels)
        r->nkernels = n;
}

void tb_runsum_free(tb_runsum *r)
{
    tb_runsum_keep(r, 0);
    free(r->kernels);
    memset(r, 0, sizeof(*r));
}
