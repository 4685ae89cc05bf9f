/* lf_config.c - libFuzzer target: the strings a job hands the agent.
 *
 * Built only with -DTBPROF_SANITIZE=fuzzer (see lf_space.c). The input,
 * split at '\n', gives the TBPROF_* variables their values in the order
 * tb_config_load asks for them (bad values must warn and fall back, never
 * crash or overrun), then the job id and rank variables the run and file
 * names are made of (each must come out one path component); each piece is
 * also an NVTX range name for torch's and XLA's op formats and a
 * step-window spec. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ctl.h"
#include "log.h"
#include "runname.h"
#include "torchop.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    tb_log_set_level(TB_LOG_OFF);
    return 0;
}

typedef struct pieces {
    char *v[64];
    size_t n, next;
} pieces;

/* Every variable asked for takes the next piece; an empty piece is unset. */
static const char *get(const char *name, void *ud)
{
    pieces *p = ud;
    if (!strcmp(name, "TBPROF_LOG"))
        return NULL; /* stays quiet */
    if (p->next >= p->n)
        return NULL;
    const char *s = p->v[p->next++];
    return *s ? s : NULL;
}

static pieces *cur; /* for tb_names_read_env's getter */

static const char *get_name(const char *name)
{
    return get(name, cur);
}

/* A file or folder name we make: one path component, never . or .. */
static void check_component(const char *s)
{
    if (!*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, ".."))
        abort();
}

static void check_names(const tb_config *c, pieces *p)
{
    tb_names n;
    memset(&n, 0, sizeof(n));
    cur = p;
    tb_names_read_env(&n, get_name);
    strcpy(n.hostname, "h"); /* not the machine's: the same name each run */
    const char *asked = p->n ? p->v[0] : "";
    tb_run_req r = {.asked = tb_ctl_run_name_ok(asked) ? asked : NULL, .first = 3, .last = 5,
                    .fixed_window = p->n & 1, .env_time = !(p->n & 1), .time_from_s = 1.5,
                    .begin_epoch_ns = 1700000000000000000LL};
    char out[256];
    tb_names_run(&n, c, &r, (unsigned)p->n, out, sizeof(out));
    check_component(out);
    tb_names_host(&n, c, 1234, out, sizeof(out));
    check_component(out);
}

static void check_op(const char *s, size_t len)
{
    tb_torch_op op;
    /* every piece found lies inside the range name */
#define INSIDE(p, n) (!(p) || ((p) >= s && (p) + (n) <= s + len))
    if (tb_torch_op_parse(s, len, &op) && !(INSIDE(op.name, op.name_len) && INSIDE(op.args, op.args_len)))
        abort();
    if (tb_tsl_annotation_parse(s, len, &op) && !(INSIDE(op.name, op.name_len) && INSIDE(op.kv, op.kv_len)))
        abort();
#undef INSIDE
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char *buf = malloc(len + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, len);
    buf[len] = '\0';
    pieces p = {.n = 0};
    for (char *s = buf; p.n < 64;) {
        p.v[p.n++] = s;
        char *nl = strchr(s, '\n');
        if (!nl)
            break;
        *nl = '\0';
        s = nl + 1;
    }
    for (size_t i = 0; i < p.n; i++) {
        check_op(p.v[i], strlen(p.v[i]));
        tb_window w[8];
        int n = 0;
        tb_parse_steps(p.v[i], w, 8, &n);
        double sec;
        int64_t count;
        tb_parse_every(p.v[i], &sec, &count);
        tb_parse_seconds(p.v[i], &sec);
    }
    tb_config c;
    tb_config_load(&c, get, &p);
    tb_log_set_level(TB_LOG_OFF); /* the load set the level it read (warn without TBPROF_LOG) */
    check_names(&c, &p);
    free(buf);
    return 0;
}
