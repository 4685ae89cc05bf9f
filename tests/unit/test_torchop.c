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
    CHECKF(op.name_len == strlen(name) && !memcmp(s, name, op.name_len), "\"%s\": name of %zu bytes, expected \"%s\"",
           s, op.name_len, name);
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
        CHECK(tb_line_add(l, tb_plane_event_meta_n(hp, s, op.name_len), 100, 50) == 0);
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
        tb_space_free(sp);
    }
    return tap_done();
}
