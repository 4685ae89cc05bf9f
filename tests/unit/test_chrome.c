/* test_chrome.c - Chrome trace JSON: escaping, units, pids/tids, flows, gzip. */
#include <errno.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "tap.h"
#include "trace.h"
#include "xspace.h"

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static char *json_of(tb_space *s)
{
    tb_buf b = {0};
    CHECK_EQ_I(tb_chrome_encode(s, &b), 0);
    char *j = malloc(b.len + 1);
    memcpy(j, b.data, b.len);
    j[b.len] = '\0';
    tb_buf_free(&b);
    return j;
}

static void test_escaping_and_units(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_i64(h, "pid", 4321);
    tb_line *l = tb_plane_line(h, 99, "thr\"ead\n");
    /* quote, backslash, control chars, valid 2/3/4-byte UTF-8, then invalid bytes:
     * a lone continuation, a truncated sequence, an overlong, a surrogate */
    int64_t m = tb_plane_event_meta(h, "q\"b\\c\x01\x1f t\t é € 😀 bad:\x80 \xe2\x82 \xc0\xaf \xed\xa0\x80 end");
    tb_plane_set_event_category(h, m, TB_CAT_USER);
    tb_line_add(l, m, 1700000000123456789LL, 1234567);
    tb_line_stat_str(l, tb_plane_stat_meta(h, "note"), "a\"b");
    tb_line_stat_f64(l, tb_plane_stat_meta(h, "nanval"), 0.0 / 0.0);
    tb_line_stat_i64(l, tb_plane_stat_meta(h, "neg"), -42);
    char *j = json_of(s);
    CHECK(strstr(j, "\"q\\\"b\\\\c\\u0001\\u001f t\\t é € 😀 bad:\\ufffd \\ufffd\\ufffd \\ufffd\\ufffd "
                    "\\ufffd\\ufffd\\ufffd end\"") != NULL);
    CHECK(strstr(j, "\"thr\\\"ead\\n\"") != NULL);
    CHECK(strstr(j, "\"ts\":1700000000123456.789,\"dur\":1234.567") != NULL);
    CHECK(strstr(j, "\"cat\":\"user_annotation\"") != NULL);
    CHECK(strstr(j, "\"pid\":4321,\"tid\":99") != NULL);
    CHECK(strstr(j, "\"note\":\"a\\\"b\"") != NULL);
    CHECK(strstr(j, "\"nanval\":\"nan\"") != NULL);
    CHECK(strstr(j, "\"neg\":-42") != NULL);
    /* no raw control characters anywhere but the newlines between events */
    int raw = 0;
    for (const char *p = j; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\n')
            raw++;
    CHECK_EQ_I(raw, 0);
    free(j);
    tb_space_free(s);
}

static void test_flows_and_pids(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_i64(h, "pid", 1); /* pid 1 (a container's init) collides with GPU 1 */
    tb_line *hl = tb_plane_line(h, 1, "main");
    int64_t launch = tb_plane_event_meta(h, "cudaLaunchKernel");
    int64_t hc = tb_plane_stat_meta(h, "correlation_id");
    tb_plane *g0 = tb_space_plane(s, "/device:GPU:0");
    tb_plane *g1 = tb_space_plane(s, "/device:GPU:1");
    int64_t k0 = tb_plane_event_meta(g0, "k"), k1 = tb_plane_event_meta(g1, "k");
    tb_line *s0 = tb_plane_line(g0, 7, "Stream #7"), *s1 = tb_plane_line(g1, 13, "Stream #13");
    int64_t c0 = tb_plane_stat_meta(g0, "correlation_id"), c1 = tb_plane_stat_meta(g1, "correlation_id");
    for (int i = 1; i <= 10; i++) {
        tb_line_add(hl, launch, 1000 * i, 100);
        tb_line_stat_u64(hl, hc, (uint64_t)i);
    }
    tb_line_add(hl, launch, 20000, 100);
    tb_line_stat_u64(hl, hc, 999); /* no GPU partner: no flow */
    for (int i = 1; i <= 10; i++) {
        tb_line *l = i % 2 ? s0 : s1;
        tb_line_add(l, i % 2 ? k0 : k1, 1000 * i + 500, 300);
        tb_line_stat_u64(l, i % 2 ? c0 : c1, (uint64_t)i);
    }
    tb_line_add(s0, k0, 30000, 10);
    tb_line_stat_u64(s0, c0, 5000); /* no host partner */
    char *j = json_of(s);
    CHECK_EQ_I(count(j, "\"ph\":\"s\""), 10);
    CHECK_EQ_I(count(j, "\"ph\":\"f\",\"bp\":\"e\""), 10);
    CHECK_EQ_I(count(j, "\"ph\":\"X\""), 11 + 11);
    CHECK_EQ_I(count(j, "\"id\":999"), 0);
    CHECK_EQ_I(count(j, "\"id\":5000"), 0);
    /* GPU pids moved off the host's pid 1 */
    CHECK(strstr(j, "\"name\":\"process_name\",\"pid\":1,\"args\":{\"name\":\"/host:CPU\"}") != NULL);
    CHECK(strstr(j, "\"name\":\"process_name\",\"pid\":1000000,\"args\":{\"name\":\"/device:GPU:0\"}") != NULL);
    CHECK(strstr(j, "\"name\":\"process_name\",\"pid\":1000001,\"args\":{\"name\":\"/device:GPU:1\"}") != NULL);
    CHECK(strstr(j, "\"name\":\"thread_name\",\"pid\":1000001,\"tid\":13,\"args\":{\"name\":\"Stream #13\"}") != NULL);

    /* gzip form decompresses to the same document */
    tb_buf gz = {0};
    CHECK_EQ_I(tb_chrome_encode_gz(s, &gz), 0);
    CHECK(gz.len > 18 && gz.data[0] == 0x1f && gz.data[1] == 0x8b);
    size_t jl = strlen(j);
    char *plain = malloc(jl + 16);
    z_stream z = {0};
    inflateInit2(&z, 15 + 16);
    z.next_in = gz.data;
    z.avail_in = (uInt)gz.len;
    z.next_out = (Bytef *)plain;
    z.avail_out = (uInt)jl + 16;
    CHECK_EQ_I(inflate(&z, Z_FINISH), Z_STREAM_END);
    CHECK_EQ_I(z.total_out, jl);
    CHECK(memcmp(plain, j, jl) == 0);
    inflateEnd(&z);
    free(plain);
    tb_buf_free(&gz);

    char path[] = "/tmp/tbprof_test_chrome_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK_EQ_I(tb_chrome_write_gz(s, path), 0); /* replaces the user's named file */
    gzFile f = gzopen(path, "rb");
    char *back = malloc(jl + 16);
    int n = gzread(f, back, (unsigned)jl + 16);
    gzclose(f);
    CHECK_EQ_I(n, (long long)jl);
    CHECK(memcmp(back, j, jl) == 0);
    free(back);
    unlink(path);
    free(j);
    tb_space_free(s);
}

/* A large space streams through the 64 KiB chunk many times. */
static void test_large(void)
{
    tb_space *s = tb_space_new();
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(g, 7, "s");
    char name[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(name, sizeof(name), "kernel_%d", i % 37);
        tb_line_add(l, tb_plane_event_meta(g, name), 1000000 + i * 10, 5);
    }
    char *j = json_of(s);
    CHECK_EQ_I(count(j, "\"ph\":\"X\""), 20000);
    CHECK(strlen(j) > 1000000);
    CHECK(strcmp(j + strlen(j) - 3, "]}\n") == 0);
    free(j);
    tb_space_free(s);
}

struct sinkstate {
    tb_buf b;
    int calls, fail_at;
};

static int sink(void *ctx, const void *d, size_t n)
{
    struct sinkstate *st = ctx;
    if (++st->calls == st->fail_at)
        return -ENOSPC;
    uint8_t *p = realloc(st->b.data, st->b.len + n);
    if (!p)
        return -ENOMEM;
    memcpy(p + st->b.len, d, n);
    st->b.data = p;
    st->b.len += n;
    return 0;
}

/* The streamed gzip is the buffered one, in pieces; a sink error stops it. */
static void test_stream(void)
{
    tb_space *s = tb_space_new();
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(g, 7, "s");
    char name[64];
    srand(7);
    for (int i = 0; i < 50000; i++) {
        snprintf(name, sizeof(name), "kernel_%d_%d", i % 37, rand()); /* poorly compressible */
        tb_line_add(l, tb_plane_event_meta(g, name), 1000000 + i * 10, 5);
    }
    tb_buf whole = {0};
    CHECK_EQ_I(tb_chrome_encode_gz(s, &whole), 0);
    struct sinkstate ok = {.fail_at = -1};
    CHECK_EQ_I(tb_chrome_encode_gz_stream(s, sink, &ok), 0);
    CHECK(ok.calls > 3);
    CHECK(ok.b.len == whole.len && memcmp(ok.b.data, whole.data, whole.len) == 0);
    struct sinkstate bad = {.fail_at = 2};
    CHECK_EQ_I(tb_chrome_encode_gz_stream(s, sink, &bad), -ENOSPC);
    CHECK_EQ_I(bad.calls, 2); /* nothing more after the error */
    tb_buf_free(&ok.b);
    tb_buf_free(&bad.b);
    tb_buf_free(&whole);
    tb_space_free(s);
}

/* Kineto's kernel fields are numbers from the kernel_details string; a
 * foreign file's (tbprof convert) may say nan, inf or 1e300 there, and
 * JSON has no nan/inf (Perfetto and json.loads refuse the whole trace). */
static void test_odd_kernel_details(void)
{
    tb_space *s = tb_space_new();
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *l = tb_plane_line(g, 7, "Stream #7");
    int64_t kd = tb_plane_stat_meta(g, "kernel_details");
    tb_line_add(l, tb_plane_event_meta(g, "k1"), 1000, 10);
    tb_line_stat_str(l, kd, "regs:nan static_shared:inf dynamic_shared:-inf grid:1,1,1 block:32,1,1 occ_pct:1e300");
    tb_line_add(l, tb_plane_event_meta(g, "k2"), 2000, 10);
    tb_line_stat_str(l, kd, "regs:32 static_shared:0 dynamic_shared:1024 grid:2,1,1 block:64,1,1 occ_pct:50");
    tb_line_add(l, tb_plane_event_meta(g, "Memcpy HtoD"), 3000, 10);
    tb_line_stat_str(l, tb_plane_stat_meta(g, "memcpy_details"), "kind_src:pinned size:1e30");
    char *j = json_of(s);
    CHECKF(strstr(j, "\"bytes\"") == NULL, "%.60s", strstr(j, "\"bytes\"")); /* no count of bytes to tell */
    CHECK(strstr(j, "nan") == NULL);
    CHECK(strstr(j, "inf") == NULL);
    CHECK(strstr(j, "\"registers per thread\":-1,\"shared memory\":-1,\"est. achieved occupancy %\":-1}") != NULL);
    CHECK(strstr(j, "\"registers per thread\":32,\"shared memory\":1024,\"est. achieved occupancy %\":50}") != NULL);
    CHECK_EQ_I(count(j, "{"), count(j, "}"));
    free(j);
    tb_space_free(s);
}

/* A job that called setlocale(LC_ALL, "") in a decimal-comma locale (the
 * locale is the whole process's, the agent thread's too): printf's %g
 * writes "12,5", and {"x":12,5} is not JSON. Where no such locale is
 * installed (a fresh Debian container has only C and C.utf8: CI), one is
 * made by localedef into a temporary LOCPATH; skipped only where that
 * cannot be done. */
static void test_decimal_comma_locale(void)
{
    static const char *const locs[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8",
                                       "fr_FR.utf8",  "de_DE",      "ru_RU.UTF-8"};
    char *old = strdup(setlocale(LC_NUMERIC, NULL));
    const char *got = NULL;
    for (size_t i = 0; !got && i < sizeof(locs) / sizeof(locs[0]); i++)
        if (setlocale(LC_NUMERIC, locs[i]) && localeconv()->decimal_point[0] != '.')
            got = locs[i];
    char locdir[] = "/tmp/tbprof-test-locale.XXXXXX";
    int made = 0;
    if (!got && mkdtemp(locdir)) {
        made = 1;
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8 >/dev/null 2>&1", locdir);
        if (system(cmd) != -1) { /* (exit 1 for warnings, the locale made all the same) */
            setenv("LOCPATH", locdir, 1);
            if (setlocale(LC_NUMERIC, "de_DE.UTF-8") && localeconv()->decimal_point[0] != '.')
                got = "de_DE.UTF-8 (made by localedef)";
        }
    }
    if (!got) {
        printf("# skip decimal comma: no such locale installed, and localedef could not make one\n");
        setlocale(LC_NUMERIC, old);
        free(old);
        goto out;
    }
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_line *l = tb_plane_line(h, 1, "main");
    tb_line_add(l, tb_plane_event_meta(h, "e"), 1000, 10);
    tb_line_stat_f64(l, tb_plane_stat_meta(h, "ratio"), 12.5);
    tb_line_stat_f64(l, tb_plane_stat_meta(h, "tiny"), -2.5e-300);
    char *j = json_of(s);
    CHECKF(strstr(j, "\"ratio\":12.5,\"tiny\":-2.5e-300}") != NULL, "in %s: %s", got, j);
    free(j);
    tb_space_free(s);
    setlocale(LC_NUMERIC, old);
    free(old);
out:
    if (made) {
        unsetenv("LOCPATH");
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", locdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", locdir);
    }
}

/* Perfetto takes a tid past uint32 for none, and the events and the
 * thread's name onto the main thread (tid = pid). The host line of GPU
 * memory events without a traced call has id 2^32 + 1. */
static void test_tid_past_uint32(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_i64(h, "pid", 100);
    tb_line *main_l = tb_plane_line(h, 100, "main");
    tb_line *mem = tb_plane_line(h, ((int64_t)1 << 32) + 1, "GPU memory");
    tb_line *neg = tb_plane_line(h, -5, "odd");
    tb_line *top = tb_plane_line(h, 4294967295LL, "taken"); /* a real id at the top */
    int64_t m = tb_plane_event_meta(h, "e");
    tb_line_add(main_l, m, 1000, 10);
    tb_line_add(mem, m, 2000, 10);
    tb_line_add(neg, m, 3000, 10);
    tb_line_add(top, m, 4000, 10);
    char *j = json_of(s);
    CHECK(strstr(j, "4294967297") == NULL);
    CHECK(strstr(j, "\"tid\":-5") == NULL);
    CHECK(strstr(j, "\"pid\":100,\"tid\":100,\"args\":{\"name\":\"main\"}") != NULL);
    CHECK(strstr(j, "\"pid\":100,\"tid\":4294967295,\"args\":{\"name\":\"taken\"}") != NULL);
    CHECK(strstr(j, "\"pid\":100,\"tid\":4294967294,\"args\":{\"name\":\"GPU memory\"}") != NULL);
    CHECK(strstr(j, "\"pid\":100,\"tid\":4294967293,\"args\":{\"name\":\"odd\"}") != NULL);
    CHECK(strstr(j, "\"pid\":100,\"tid\":4294967294,\"ts\":2.000") != NULL); /* its event too */
    free(j);
    tb_space_free(s);
}

/* A plane neither host nor GPU gets a pid no process has: with pid_max at
 * 2^22 (large servers) the job's own pid can be 2,000,000 + a plane id,
 * which merged the two planes' tracks */
static void test_other_plane_pid(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane *o = tb_space_plane(s, "/host:metadata");
    tb_plane_stat_i64(h, "pid", 2000000 + o->id);
    int64_t m = tb_plane_event_meta(h, "e"), mo = tb_plane_event_meta(o, "x");
    tb_line_add(tb_plane_line(h, 7, "main"), m, 1000, 10);
    tb_line_add(tb_plane_line(o, 1, "meta"), mo, 1000, 10);
    char *j = json_of(s);
    char want[128];
    snprintf(want, sizeof(want), "\"pid\":%lld,\"args\":{\"name\":\"/host:metadata\"}",
             4194304LL + (long long)o->id);
    CHECKF(strstr(j, want) != NULL, "no %s", want);
    snprintf(want, sizeof(want), "\"pid\":%lld,\"args\":{\"name\":\"/host:CPU\"}",
             2000000LL + (long long)o->id);
    CHECKF(strstr(j, want) != NULL, "no %s", want);
    free(j);
    tb_space_free(s);
}

/* kB of a /proc/self/status field ("VmHWM", "VmRSS"); -1 when unknown */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, field, n) && line[n] == ':')
            v = atol(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

static int fail_at_once(void *ctx, const void *d, size_t n)
{
    (void)ctx, (void)d, (void)n;
    return -ENOSPC;
}

/* A CUDA graph launch: one host call, its kernels on the GPU all carrying the
 * call's correlation id. A flow ends at one event, so each kernel needs a
 * flow of its own for a viewer to draw an arrow to every kernel, not only to
 * the first. */
static void test_graph_launch_flows(void)
{
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane_stat_i64(h, "pid", 77);
    tb_line *hl = tb_plane_line(h, 1, "main");
    int64_t launch = tb_plane_event_meta(h, "cudaGraphLaunch");
    int64_t hc = tb_plane_stat_meta(h, "correlation_id");
    tb_line_add(hl, launch, 1000, 100);
    tb_line_stat_u64(hl, hc, 50);
    tb_line_add(hl, tb_plane_event_meta(h, "cudaLaunchKernel"), 2000, 100);
    tb_line_stat_u64(hl, hc, 51);
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    int64_t k = tb_plane_event_meta(g, "k"), gc = tb_plane_stat_meta(g, "correlation_id");
    tb_line *st[2] = {tb_plane_line(g, 7, "Stream #7"), tb_plane_line(g, 8, "Stream #8")};
    for (int i = 0; i < 4; i++) { /* the graph's 4 kernels, on two streams */
        tb_line_add(st[i % 2], k, 1500 + 100 * i, 50);
        tb_line_stat_u64(st[i % 2], gc, 50);
    }
    tb_line_add(st[0], k, 2500, 50); /* an ordinary launch */
    tb_line_stat_u64(st[0], gc, 51);
    char *j = json_of(s);
    CHECK_EQ_I(count(j, "\"ph\":\"s\""), 5);
    CHECK_EQ_I(count(j, "\"ph\":\"f\",\"bp\":\"e\""), 5);
    /* every id once as a start on the launch and once as an end */
    const uint64_t ids[] = {50, 50 + (1ull << 32), 50 + (2ull << 32), 50 + (3ull << 32), 51};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "\"id\":%llu,\"pid\":77,\"tid\":1,", (unsigned long long)ids[i]);
        CHECK_EQ_I(count(j, needle), 1);
        snprintf(needle, sizeof(needle), "\"id\":%llu,\"pid\":0,", (unsigned long long)ids[i]);
        CHECK_EQ_I(count(j, needle), 1);
    }
    free(j);
    tb_space_free(s);
}

/* The flow pairing's id sets are for the events that carry a correlation
 * id, not for every event of the planes: a CPU-heavy profile (2M sampled
 * spans, 100k launches) wrote its trace.json.gz with a 2^23-slot table,
 * ~75 MB touched in the job's memory, where 100k ids need ~2 MB. */
static void test_corr_sets_sized_by_ids(void)
{
#if defined(__SANITIZE_THREAD__)
    printf("# skip corr set size: ThreadSanitizer's shadow memory grows with every byte touched\n");
    return;
#endif
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    if (!cr || status_kb("VmHWM") < 0) {
        printf("# skip corr set size: no /proc/self/clear_refs\n");
        if (cr)
            fclose(cr);
        return;
    }
    tb_space *s = tb_space_new();
    tb_plane *h = tb_space_plane(s, "/host:CPU");
    tb_plane *g = tb_space_plane(s, "/device:GPU:0");
    tb_line *samples = tb_plane_line(h, 1, "main"), *api = tb_plane_line(h, 2, "launcher");
    tb_line *stream = tb_plane_line(g, 7, "Stream #7");
    int64_t fn = tb_plane_event_meta(h, "f"), launch = tb_plane_event_meta(h, "cudaLaunchKernel");
    int64_t k = tb_plane_event_meta(g, "k");
    int64_t hc = tb_plane_stat_meta(h, "correlation_id"), gc = tb_plane_stat_meta(g, "correlation_id");
    for (int64_t i = 0; i < 2000000; i++)
        tb_line_add(samples, fn, 1000000 + i * 10, 5);
    for (int64_t i = 0; i < 100000; i++) {
        tb_line_add(api, launch, 1000000 + i * 200, 5);
        tb_line_stat_u64(api, hc, (uint64_t)(i + 1) * 7919u);
        tb_line_add(stream, k, 1000100 + i * 200, 5);
        tb_line_stat_u64(stream, gc, (uint64_t)(i + 1) * 7919u);
    }
    fputs("5", cr); /* VmHWM := VmRSS */
    fclose(cr);
    long before = status_kb("VmRSS");
    /* the sink refuses at once: no compression, the sets are built all the same */
    CHECK_EQ_I(tb_chrome_encode_gz_stream(s, fail_at_once, NULL), -ENOSPC);
    long grew = status_kb("VmHWM") - before;
    CHECKF(grew < 24 * 1024, "peak grew by %ld kB while writing", grew);
    tb_space_free(s);
}

int main(void)
{
    test_corr_sets_sized_by_ids();
    test_tid_past_uint32();
    test_other_plane_pid();
    test_decimal_comma_locale();
    test_odd_kernel_details();
    test_stream();
    test_escaping_and_units();
    test_flows_and_pids();
    test_graph_launch_flows();
    test_large();
    return tap_done();
}
