/* torchop.c - frameworks' op ranges in NVTX: PyTorch's and XLA's (torchop.h). */
#include "torchop.h"

#include <ctype.h>
#include <string.h>

/* n = the digits (with an optional '-') at s[0..len); the count of bytes read, 0 if none. */
static size_t read_int(const char *s, size_t len, int64_t *n)
{
    size_t i = 0;
    int neg = 0;
    if (i < len && s[i] == '-') {
        neg = 1;
        i++;
    }
    size_t d0 = i;
    uint64_t v = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9' && i - d0 < 18)
        v = v * 10 + (uint64_t)(s[i++] - '0');
    if (i == d0 || (i < len && s[i] >= '0' && s[i] <= '9'))
        return 0;
    *n = neg ? -(int64_t)v : (int64_t)v;
    return i;
}

/* s[0..len) starts with ", <key> = "; returns its length, else 0. */
static size_t field(const char *s, size_t len, const char *key)
{
    size_t k = strlen(key);
    if (len < k + 5 || memcmp(s, ", ", 2) || memcmp(s + 2, key, k) || memcmp(s + 2 + k, " = ", 3))
        return 0;
    return k + 5;
}

/* Where in s[0..len) the first ", " that begins one of torch's fields is; len: nowhere. */
static size_t first_field(const char *s, size_t len)
{
    static const char *const keys[] = {"seq", "op_id", "sizes", "input_op_ids"};
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] != ',' || s[i + 1] != ' ')
            continue;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            if (field(s + i, len - i, keys[k]))
                return i;
    }
    return len;
}

int tb_torch_op_parse(const char *name, size_t len, tb_torch_op *op)
{
    size_t at = first_field(name, len);
    if (at == 0 || at == len)
        return 0;
    tb_torch_op o = {.name = name, .name_len = at, .seq = -1, .op_id = -1};
    const char *s = name + at;
    size_t n = len - at, f, d;
    /* in torch's order: seq, op_id, then sizes and input_op_ids (kept whole) */
    if ((f = field(s, n, "seq"))) {
        if (!(d = read_int(s + f, n - f, &o.seq)))
            return 0;
        s += f + d;
        n -= f + d;
    }
    if ((f = field(s, n, "op_id"))) {
        if (!(d = read_int(s + f, n - f, &o.op_id)) || o.op_id < 0)
            return 0;
        s += f + d;
        n -= f + d;
    }
    if (n) {
        if (!field(s, n, "sizes") && !field(s, n, "input_op_ids"))
            return 0;
        o.args = s + 2;
        o.args_len = n - 2;
    }
    *op = o;
    return 1;
}

/* The value of `key` in kv[0..len) ("k=v,k=v"), its length in *n; NULL: absent or empty. */
static const char *kv_value(const char *kv, size_t len, const char *key, size_t *n)
{
    size_t k = strlen(key);
    for (size_t i = 0; i < len;) {
        const char *comma = memchr(kv + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - kv) : len;
        if (end - i > k && kv[i + k] == '=' && !memcmp(kv + i, key, k) && end - i - k - 1 > 0) {
            *n = end - i - k - 1;
            return kv + i + k + 1;
        }
        i = end + 1;
    }
    return NULL;
}

int tb_tsl_annotation_parse(const char *name, size_t len, tb_torch_op *op)
{
    const char *hash = len ? memchr(name, '#', len) : NULL;
    if (!hash || hash == name || name[len - 1] != '#' || (size_t)(hash - name) + 2 >= len)
        return 0;
    const char *kv = hash + 1;
    size_t kv_len = len - (size_t)(hash - name) - 2, k = 0;
    /* it starts with a key of [A-Za-z0-9_] and '='; values may hold ','
     * themselves (XLA's op names: "transpose[permutation=(1, 0)]"), so
     * pairs are not checked one by one; no '#' inside */
    while (k < kv_len && (isalnum((unsigned char)kv[k]) || kv[k] == '_'))
        k++;
    if (k == 0 || k == kv_len || kv[k] != '=' || memchr(kv, '#', kv_len))
        return 0;
    tb_torch_op o = {.name = name, .name_len = (size_t)(hash - name), .seq = -1, .op_id = -1, .kv = kv,
                     .kv_len = kv_len};
    size_t n;
    const char *v = kv_value(kv, kv_len, "hlo_op", &n);
    if (!v)
        v = kv_value(kv, kv_len, "hlo_module", &n);
    if (v) {
        o.name = v;
        o.name_len = n;
    } else if (o.name_len > 1 && name[o.name_len - 1] == ':') {
        o.name_len--; /* XLA's "Thunk:" */
    }
    *op = o;
    return 1;
}

int64_t tb_nvtx_range_meta(tb_plane *hp, const char *name, size_t len, tb_torch_op *op)
{
    if (!tb_torch_op_parse(name, len, op) && !tb_tsl_annotation_parse(name, len, op))
        *op = (tb_torch_op){.name = name, .name_len = len, .seq = -1, .op_id = -1};
    return tb_plane_event_meta_cat_n(hp, op->name, op->name_len, TB_CAT_USER);
}

void tb_torch_op_stats(tb_plane *hp, tb_line *l, const tb_torch_op *op)
{
    int64_t m;
    if (op->seq >= 0 && (m = tb_plane_stat_meta(hp, TB_ST_TORCH_SEQ)) > 0)
        tb_line_stat_i64(l, m, op->seq);
    if (op->op_id >= 0 && (m = tb_plane_stat_meta(hp, TB_ST_TORCH_OP_ID)) > 0)
        tb_line_stat_i64(l, m, op->op_id);
    const char *str[2][2] = {{TB_ST_TORCH_ARGS, op->args}, {TB_ST_XLA_ANNOTATION, op->kv}};
    size_t len[2] = {op->args_len, op->kv_len};
    for (int i = 0; i < 2; i++) {
        if (!str[i][1] || !len[i] || (m = tb_plane_stat_meta(hp, str[i][0])) <= 0)
            continue;
        char buf[512];
        size_t n = len[i] < sizeof(buf) - 1 ? len[i] : sizeof(buf) - 1;
        memcpy(buf, str[i][1], n);
        buf[n] = 0;
        tb_line_stat_str(l, m, buf);
    }
}
