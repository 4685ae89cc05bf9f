/* bench_cupti_translate.c - CUPTI record translation throughput.
 *
 * Builds CUPTI-format buffers in process (kernels 50%, runtime API calls
 * 35%, copies 10%, memsets 5%; 40 kernel names, 4 streams, the shapes a
 * training step repeats), then times translating them into a tb_space.
 * Prints records/s; target >= 10M records/s.
 *
 * Then the pass that names GPU work by the NVTX range it was launched in
 * (ranges.h), on the translated space with a range per 100 us of each
 * launching thread and one nested in it, sorted first as the writers sort
 * it anyway: GPU events/s, and its time as a share of the translation's
 * (both measured in the same rep).
 * Usage: bench_cupti_translate [records] */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ranges.h"
#include "translate.h"

static CUptiResult next(uint8_t *buf, size_t valid, CUpti_Activity **rec)
{
    uint8_t *pos;
    if (!*rec) {
        pos = buf;
    } else {
        uint32_t sz;
        memcpy(&sz, (uint8_t *)*rec - 8, 4);
        pos = (uint8_t *)*rec + sz;
    }
    if (pos + 8 > buf + valid)
        return CUPTI_ERROR_MAX_LIMIT_REACHED;
    *rec = (CUpti_Activity *)(pos + 8);
    return CUPTI_SUCCESS;
}

static uint8_t *put(uint8_t *p, const void *r, uint32_t size)
{
    size = (size + 7) & ~7u;
    memcpy(p, &size, 4);
    memset(p + 4, 0, 4);
    memcpy(p + 8, r, size);
    return p + 8 + size;
}

static const char *api_name(CUpti_CallbackDomain d, uint32_t cbid)
{
    (void)d;
    return cbid == 211 ? "cudaLaunchKernel_v7000" : "cudaMemcpyAsync_v3020";
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 4000000;
    /* keep freed memory in the heap, so reps after the first measure the
     * translation itself rather than first-touch page faults (which cost
     * several microseconds each on some VMs); the first rep is printed too */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    double cold = 0;
    static char names[40][64];
    for (int i = 0; i < 40; i++)
        snprintf(names[i], sizeof(names[i]), "_Z12kernel_%02dPfPKfi", i);
    size_t cap = (size_t)n * (sizeof(CUpti_ActivityKernel10) + 16);
    uint8_t *buf = malloc(cap), *p = buf;
    if (!buf)
        return 1;
    uint64_t t = 1700000000000000000ull;
    long nk = 0;
    for (long i = 0; i < n; i++) {
        int m = (int)(i % 20);
        /* in each 20 records: kernels 0-6 launched by the API calls 10-16
         * (one correlation id each); kernels 7-9, copies and memsets have
         * no call in the buffers */
        uint32_t corr = (uint32_t)(i - m + (m >= 10 && m < 17 ? m - 10 : m) + 1);
        if (m < 10) {
            CUpti_ActivityKernel10 k = {.kind = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL};
            k.start = t, k.end = t + 5000, k.deviceId = 0, k.contextId = 1, k.streamId = 7 + (uint32_t)(i % 4);
            k.correlationId = corr, k.gridX = 128, k.gridY = 1, k.gridZ = 1, k.blockX = 256, k.blockY = 1, k.blockZ = 1;
            k.registersPerThread = 32, k.name = names[nk++ % 40];
            p = put(p, &k, sizeof(k));
        } else if (m < 17) {
            CUpti_ActivityAPI a = {.kind = CUPTI_ACTIVITY_KIND_RUNTIME};
            a.cbid = m < 16 ? 211 : 41, a.start = t, a.end = t + 3000, a.threadId = 1000 + (uint32_t)(i % 2);
            a.correlationId = corr;
            p = put(p, &a, sizeof(a));
        } else if (m < 19) {
            CUpti_ActivityMemcpy6 c = {.kind = CUPTI_ACTIVITY_KIND_MEMCPY};
            c.copyKind = CUPTI_ACTIVITY_MEMCPY_KIND_HTOD, c.srcKind = CUPTI_ACTIVITY_MEMORY_KIND_PINNED;
            c.dstKind = CUPTI_ACTIVITY_MEMORY_KIND_DEVICE, c.bytes = 1 << 20, c.start = t, c.end = t + 8000;
            c.streamId = 7, c.contextId = 1, c.correlationId = corr, c.flags = CUPTI_ACTIVITY_FLAG_MEMCPY_ASYNC;
            p = put(p, &c, sizeof(c));
        } else {
            CUpti_ActivityMemset4 s = {.kind = CUPTI_ACTIVITY_KIND_MEMSET};
            s.bytes = 4096, s.start = t, s.end = t + 1000, s.streamId = 8, s.contextId = 1, s.correlationId = corr;
            s.memoryKind = CUPTI_ACTIVITY_MEMORY_KIND_DEVICE;
            p = put(p, &s, sizeof(s));
        }
        t += 1000;
    }
    size_t valid = (size_t)(p - buf);
    /* cut into ~8 MB buffers at record boundaries, as the pool hands them out */
    size_t cuts[4096], ncuts = 0, last = 0;
    {
        CUpti_Activity *r = NULL;
        while (next(buf, valid, &r) == CUPTI_SUCCESS) {
            uint32_t sz;
            memcpy(&sz, (uint8_t *)r - 8, 4);
            size_t e = (size_t)((uint8_t *)r - buf) + sz;
            if (e - last > (8u << 20) && ncuts < 4095) {
                cuts[ncuts++] = (size_t)((uint8_t *)r - buf) - 8;
                last = cuts[ncuts - 1];
            }
        }
        cuts[ncuts++] = valid;
    }
    double best = 1e30, link_best = 1e30, link_share = 0;
    int64_t linked = 0;
    for (int rep = 0; rep < 3; rep++) {
        tb_space *s = tb_space_new();
        tb_cupti_tr_opts o = {.ts_to_epoch_ns = 0, .api_name = api_name};
        tb_cupti_tr *tr = tb_cupti_tr_new(s, &o);
        double t0 = now();
        int64_t got = 0;
        size_t off = 0;
        /* as collect does: every buffer prescanned (devices, contexts, the
         * runtime calls' correlation ids), then translated */
        for (size_t c = 0; c < ncuts; c++) {
            tb_cupti_tr_prescan(tr, buf + off, cuts[c] - off, next);
            off = cuts[c];
        }
        off = 0;
        for (size_t c = 0; c < ncuts; c++) {
            got += tb_cupti_tr_buffer(tr, buf + off, cuts[c] - off, next);
            off = cuts[c];
        }
        tb_cupti_tr_finish(tr);
        double dt = now() - t0;
        if (got != n)
            fprintf(stderr, "translated %lld of %ld records\n", (long long)got, n);
        if (rep == 0)
            cold = dt;
        else if (dt < best)
            best = dt;
        if (rep == 2)
            printf("events in space: %zu\n", tb_space_event_count(s));
        /* NVTX ranges on the two launching threads: "step" per 100 us,
         * "layer" nested in it */
        tb_plane *hp = tb_space_find_plane(s, "/host:CPU");
        for (uint32_t tid = 1000; hp && tid < 1002; tid++) {
            tb_line *l = tb_plane_find_line(hp, tid);
            int64_t step = tb_plane_event_meta_cat(hp, "step", TB_CAT_USER);
            int64_t layer = tb_plane_event_meta_cat(hp, "layer", TB_CAT_USER);
            for (int64_t r = 1700000000000000000LL; l && r < (int64_t)t; r += 100000) {
                tb_line_add(l, step, r, 90000);
                tb_line_add(l, layer, r + 10000, 30000);
            }
        }
        tb_space_sort(s); /* the writers sort anyway; the pass's own cost is what follows */
        double l0 = now();
        int64_t nl = tb_space_link_ranges(s);
        double ldt = now() - l0;
        if (rep && ldt < link_best) {
            link_best = ldt;
            link_share = ldt / dt;
            linked = nl;
        }
        tb_cupti_tr_free(tr);
        tb_space_free(s);
    }
    printf("bench_cupti_translate: first run (fresh memory): %.1f M records/s\n", n / cold / 1e6);
    printf("bench_cupti_translate: %ld records in %.3f s: %.1f M records/s (warm heap; target >= 10)\n", n,
           best, n / best / 1e6);
    printf("bench_cupti_translate: NVTX range of each GPU event: %lld events named in %.3f s: %.1f M events/s, "
           "%.0f%% of the translation's time\n",
           (long long)linked, link_best, linked / link_best / 1e6, 100 * link_share);
    free(buf);
    return 0;
}
