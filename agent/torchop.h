/* torchop.h - frameworks' op ranges in NVTX: PyTorch's and XLA's.
 *
 * With torch's NVTX emission on (torch.autograd.profiler.emit_nvtx, or
 * TBPROF_TORCH_OPS through the Python helper), every op pushes a range named
 *   <op>[, seq = N][, op_id = N][, sizes = [...]][, input_op_ids = [...]]
 * ("aten::mm, seq = 12, op_id = 345"). Kept as it is, each op instance would
 * be a name of its own: the trace viewer, `tbprof summary` and the
 * nvtx_range stat of the GPU work it launched would group nothing. So the
 * event takes the op's name and the rest becomes stats: torch_seq (the
 * autograd sequence number that ties a backward op to its forward op),
 * torch_op_id, and torch_args (sizes and input_op_ids, as torch wrote them).
 *
 * XLA (JAX, TensorFlow), given its NVTX domain (TBPROF_XLA_RANGES=on),
 * names its ranges in TSL's annotation encoding, <title>#<key>=<value>,...#:
 * "XlaModule:#hlo_module=jit_step,program_id=3#" around a module's run and
 * "Thunk:#name=dot_general,hlo_op=fusion.3,unique_hlo_op_id=12#" around an
 * instruction's. The event takes the HLO op's name (else the module's, else
 * the title), and the key-value list becomes the stat xla_annotation, so
 * GPU work is named by the HLO op that ran it.
 */
#ifndef TBPROF_AGENT_TORCHOP_H
#define TBPROF_AGENT_TORCHOP_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

#define TB_ST_TORCH_SEQ "torch_seq"
#define TB_ST_TORCH_OP_ID "torch_op_id"
#define TB_ST_TORCH_ARGS "torch_args"
#define TB_ST_XLA_ANNOTATION "xla_annotation"

/* A range's name taken apart (every pointer into the name). */
typedef struct tb_torch_op {
    const char *name; /* the event's name: name[0..name_len) */
    size_t name_len;
    int64_t seq;      /* -1: none */
    int64_t op_id;    /* -1: none */
    const char *args; /* "sizes = ..., input_op_ids = ..."; NULL: none */
    size_t args_len;
    const char *kv;   /* TSL's "<key>=<value>,..." (XLA's ranges); NULL: none */
    size_t kv_len;
} tb_torch_op;

/* 1 when name[0..len) is in torch's format with a non-empty op name and
 * at least one of the fields (op filled in), else 0 (a range of the user's:
 * leave it as it is). */
int tb_torch_op_parse(const char *name, size_t len, tb_torch_op *op);

/* 1 when name[0..len) is in TSL's annotation encoding (a title, then
 * '#', <key>=<value> pairs joined by ',' beginning with a key of letters,
 * digits and '_', and a closing '#'; no other '#'), op filled in; else 0. */
int tb_tsl_annotation_parse(const char *name, size_t len, tb_torch_op *op);

/* The event metadata (category user annotation) of an NVTX range named
 * name[0..len): for one of torch's op ranges the op's name, for one of
 * XLA's the HLO op's (both with op filled in for tb_torch_op_stats); else
 * the name as it is, with op holding no fields. <= 0: out of memory. */
int64_t tb_nvtx_range_meta(tb_plane *hp, const char *name, size_t len, tb_torch_op *op);

/* The fields of op as stats on line l's last event (the range); nothing
 * for an op without fields (a range of the user's). */
void tb_torch_op_stats(tb_plane *hp, tb_line *l, const tb_torch_op *op);

#endif
