/* test_torchop.c - torch's NVTX op ranges (agent/torchop.h): the op's name
 * for the event and the rest as stats; every other name left alone. The
 * names are as torch's getNvtxStr writes them. */
#include <string.h>

#include "tap.h"
#include "torchop.h"

static int parse(const char *s, tb_torch_op *op)
{
    memset(op, 0x5a, sizeof(*op));
    return tb_torch_op_parse(s, strlen(s), op);
}

static void op_name(const char *s, const char *name, long long seq, long long op_id, const char *args)
{
    tb_torch_op op;
    int ok = parse(s, &op);
    CHECKF(ok, "\"%s\" not taken as an op", s);
    if (!ok)
        return;
    CHECKF(op.name == s && op.name_len == strlen(name) && !memcmp(s, name, op.name_len),
           "\"%s\": name of %zu bytes, expected \"%s\"", s, op.name_len, name);
    CHECK_EQ_I(op.seq, seq);
    CHECK_EQ_I(op.op_id, op_id);
    if (!args) {
        CHECKF(op.args == NULL, "\"%s\": args where none", s);
    } else {
        CHECKF(op.args && op.args_len == strlen(args) && !memcmp(op.args, args, op.args_len),
               "\"%s\": args \"%.*s\", expected \"%s\"", s, op.args ? (int)op.args_len : 0, op.args ? op.args : "",
               args);
    }
}

/* XLA's ranges: the event's name, and the key-value list (the stat) */
static void xla_name(const char *s, const char *name, const char *kv)
{
    tb_torch_op op;
    memset(&op, 0x5a, sizeof(op));
    int ok = tb_tsl_annotation_parse(s, strlen(s), &op);
    CHECKF(ok, "\"%s\" not taken as TSL's encoding", s);
    if (!ok)
        return;
    CHECKF(op.name_len == strlen(name) && !memcmp(op.name, name, op.name_len), "\"%s\": name \"%.*s\", expected \"%s\"",
           s, (int)op.name_len, op.name, name);
    CHECKF(op.kv && op.kv_len == strlen(kv) && !memcmp(op.kv, kv, op.kv_len), "\"%s\": kv \"%.*s\"", s,
           op.kv ? (int)op.kv_len : 0, op.kv ? op.kv : "");
    CHECK(op.seq == -1 && op.op_id == -1 && op.args == NULL);
}

static void not_tsl(const char *s)
{
    tb_torch_op op;
    CHECKF(!tb_tsl_annotation_parse(s, strlen(s), &op), "\"%s\" taken as TSL's encoding", s);
}

static void not_op(const char *s)
{
    tb_torch_op op;
    CHECKF(!parse(s, &op), "\"%s\" taken as an op", s);
}

int main(void)
{
    /* what emit_nvtx writes: seq for ops autograd records, always an op_id */
    op_name("aten::mm, seq = 12, op_id = 345", "aten::mm", 12, 345, NULL);
    op_name("MmBackward0, seq = 12, op_id = 400", "MmBackward0", 12, 400, NULL);
    op_name("aten::empty, op_id = 7", "aten::empty", -1, 7, NULL);
    op_name("aten::add_, seq = 0", "aten::add_", 0, -1, NULL);
    /* record_shapes=True */
    op_name("aten::mm, seq = 3, op_id = 4, sizes = [[2, 3], [3, 4]], input_op_ids = [(1,0), (2,0)]", "aten::mm", 3, 4,
            "sizes = [[2, 3], [3, 4]], input_op_ids = [(1,0), (2,0)]");
    op_name("aten::relu, op_id = 9, sizes = [[8]]", "aten::relu", -1, 9, "sizes = [[8]]");
    /* a record_function label with a comma of its own */
    op_name("## forward, layer 1 ##, op_id = 17", "## forward, layer 1 ##", -1, 17, NULL);

    /* the user's own ranges */
    not_op("train_step");
    not_op("epoch 3, step 7");
    not_op("");
    not_op(", seq = 12, op_id = 3");    /* no op name */
    not_op("aten::mm, seq = ");         /* no number */
    not_op("aten::mm, seq = 12x");      /* not torch's tail */
    not_op("aten::mm, seq = 12, extra"); /* a field torch does not write */
    not_op("aten::mm, op_id = -3");
    not_op("aten::mm, seq = 123456789012345678901"); /* too long to be one */
    not_op("aten::mm,seq = 12");

    /* XLA's annotations (xla/backends/gpu/runtime/annotation.cc writes them) */
    xla_name("Thunk:#name=dot_general,hlo_op=fusion.3,unique_hlo_op_id=12#", "fusion.3",
             "name=dot_general,hlo_op=fusion.3,unique_hlo_op_id=12");
    xla_name("Thunk:#hlo_op=copy.1,unique_hlo_op_id=5#", "copy.1", "hlo_op=copy.1,unique_hlo_op_id=5");
    xla_name("Thunk:#name=transpose[permutation=(1, 0)],hlo_op=transpose.2,unique_hlo_op_id=7#", "transpose.2",
             "name=transpose[permutation=(1, 0)],hlo_op=transpose.2,unique_hlo_op_id=7");
    xla_name("XlaModule:#hlo_module=jit_train_step,program_id=3#", "jit_train_step",
             "hlo_module=jit_train_step,program_id=3");
    xla_name("XlaModule:#prefix=jit(step),hlo_module=jit_step,program_id=4#", "jit_step",
             "prefix=jit(step),hlo_module=jit_step,program_id=4");
    xla_name("Other:#k=v#", "Other", "k=v"); /* no op, no module: the title */
    xla_name("step#num=3#", "step", "num=3");
    not_tsl("#k=v#");          /* no title */
    not_tsl("Thunk:#k=v");     /* not closed */
    not_tsl("Thunk:##");       /* nothing inside */
    not_tsl("loss#3#");        /* no key */
    not_tsl("a#b#c=d#");       /* a '#' inside */
    not_tsl("Thunk:#=v#");     /* an empty key */
    not_tsl("train_step");
    not_tsl("");
    not_tsl("#");

    /* a length, not a NUL, ends the name (ranges are stored unterminated) */
    {
        const char *s = "aten::mm, seq = 12garbage";
        tb_torch_op op;
        CHECK(tb_torch_op_parse(s, strlen("aten::mm, seq = 12"), &op) == 1 && op.seq == 12 && op.name_len == 8);
    }

    /* the stats on the range's event */
    {
        tb_space *sp = tb_space_new();
        tb_plane *hp = tb_space_plane(sp, "/host:CPU");
        tb_line *l = tb_plane_line(hp, 1, "main");
        const char *s = "aten::mm, seq = 3, op_id = 4, sizes = [[2, 3], [3, 4]]";
        tb_torch_op op;
        CHECK(parse(s, &op));
        CHECK(tb_line_add(l, tb_plane_event_meta_n(hp, op.name, op.name_len), 100, 50) == 0);
        tb_torch_op_stats(hp, l, &op);
        CHECK_EQ_I(l->events[0].nstats, 3);
        uint32_t seq = tb_plane_find_stat_meta(hp, TB_ST_TORCH_SEQ), id = tb_plane_find_stat_meta(hp, TB_ST_TORCH_OP_ID),
                 args = tb_plane_find_stat_meta(hp, TB_ST_TORCH_ARGS),
                 val = tb_plane_find_stat_meta(hp, "sizes = [[2, 3], [3, 4]]");
        CHECK(seq && id && args && val);
        for (uint32_t i = 0; i < l->events[0].nstats; i++) {
            const tb_stat *st = &l->stats[l->events[0].stats_at + i];
            if (st->meta == seq)
                CHECK_EQ_I(st->v.i, 3);
            else if (st->meta == id)
                CHECK_EQ_I(st->v.i, 4);
            else
                CHECK(st->meta == args && st->v.ref == val);
        }
        CHECK(tb_plane_find_stat_meta(hp, "aten::mm") == 0); /* the name is event metadata, not a stat */

        /* tb_nvtx_range_meta: the op's name for torch's, the whole name
         * otherwise, and then no stats */
        tb_torch_op o2;
        int64_t m1 = tb_nvtx_range_meta(hp, "aten::mm, seq = 9, op_id = 10", 29, &o2);
        CHECK(m1 > 0 && !strcmp(tb_plane_event_name(hp, m1), "aten::mm") && o2.seq == 9 && o2.op_id == 10);
        int64_t m2 = tb_nvtx_range_meta(hp, "epoch 3, step 7", 15, &o2);
        CHECK(m2 > 0 && !strcmp(tb_plane_event_name(hp, m2), "epoch 3, step 7"));
        CHECK(tb_line_add(l, m2, 200, 10) == 1);
        tb_torch_op_stats(hp, l, &o2);
        CHECK_EQ_I(l->events[1].nstats, 0);
        /* XLA's: the HLO op's name, the list as xla_annotation */
        const char *x = "Thunk:#hlo_op=fusion.3,unique_hlo_op_id=12#";
        int64_t m3 = tb_nvtx_range_meta(hp, x, strlen(x), &o2);
        CHECK(m3 > 0 && !strcmp(tb_plane_event_name(hp, m3), "fusion.3"));
        CHECK(tb_line_add(l, m3, 300, 10) == 2);
        tb_torch_op_stats(hp, l, &o2);
        CHECK_EQ_I(l->events[2].nstats, 1);
        const tb_stat *xa = tb_event_find_stat(hp, l, &l->events[2], TB_ST_XLA_ANNOTATION);
        CHECK(xa && !strcmp(tb_plane_stat_name(hp, xa->v.ref), "hlo_op=fusion.3,unique_hlo_op_id=12"));
        tb_space_free(sp);
    }
    return tap_done();
}
