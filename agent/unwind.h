/* unwind.h - DWARF unwinding of copied user stacks (libunwind, remote mode).
 *
 * perf_event gives each sample the user registers and a copy of the top of
 * the user stack (PERF_SAMPLE_REGS_USER + PERF_SAMPLE_STACK_USER). Later, on
 * the agent thread, tb_unwind() walks that copy with libunwind's remote API:
 * an address space whose accessors read stack words from the copy and code /
 * .eh_frame_hdr / .eh_frame bytes from this process's own loaded objects
 * (never from anywhere else: an address outside the copy and outside every
 * loaded object's segments ends the walk). Code in no loaded object (JIT
 * code: no unwind tables) is stepped over by scanning the copy for its
 * caller's return address (unwind.c, jit_caller); CPython's perf
 * trampolines by their known layout.
 *
 * Built without libunwind (TBPROF_HAVE_UNWIND unset), tb_unwinder_new()
 * returns NULL and the sampler uses frame-pointer callchains.
 */
#ifndef TBPROF_AGENT_UNWIND_H
#define TBPROF_AGENT_UNWIND_H

#include <stddef.h>
#include <stdint.h>

#include "symbols.h"

/* The user registers the sampler asks for (perf_event's x86-64 register
 * numbers; a sample lists them in increasing bit order, which is the order of
 * enum tb_ureg). */
enum tb_ureg {
    TB_UREG_AX, TB_UREG_BX, TB_UREG_CX, TB_UREG_DX, TB_UREG_SI, TB_UREG_DI,
    TB_UREG_BP, TB_UREG_SP, TB_UREG_IP,
    TB_UREG_R8, TB_UREG_R9, TB_UREG_R10, TB_UREG_R11,
    TB_UREG_R12, TB_UREG_R13, TB_UREG_R14, TB_UREG_R15,
    TB_UREG_COUNT
};
/* PERF_REG_X86_AX..IP (bits 0-8) and R8..R15 (bits 16-23). */
#define TB_UREG_MASK (0x1ffULL | (0xffULL << 16))

typedef struct tb_unwinder tb_unwinder;

/* NULL when built without libunwind, libunwind cannot be loaded, or out of
 * memory: tb_unwinder_why() then says which, for the one warning. */
tb_unwinder *tb_unwinder_new(tb_symtab *st);
const char *tb_unwinder_why(void);
void tb_unwinder_free(tb_unwinder *u);
/* Call after tb_symtab_refresh() reported a change of mapped objects. */
void tb_unwinder_flush(tb_unwinder *u);

/* Whether libunwind's sigprocmask calls are skipped while tb_unwind runs
 * (see unwind.c): 1 yes, 0 libunwind not loaded (yet), -1 its PLT slot for
 * sigprocmask not found, -2 the slot is read-only (RELRO). */
int tb_unwind_sigmask_state(void);

/* Which CPython perf trampoline ip is a return address in, as the walk
 * tells it (tests): 0 none, 1 the form without a frame pointer (3.12,
 * 3.13), 2 the one that saves %rbp (3.14 on). ip must be in no loaded
 * object. */
int tb_unwind_py_trampoline_form(tb_unwinder *u, uint64_t ip);

/* Unwind one sample. regs[TB_UREG_COUNT] as perf_event wrote them; `stack`
 * holds `stack_len` bytes copied from address regs[TB_UREG_SP] upward.
 * Writes up to `max` instruction pointers to ips, leaf first (ips[0] is the
 * sampled IP; the others are return addresses, whose call is at ips[i] - 1;
 * a frame interrupted by a signal, above the signal trampoline, gets its
 * interrupted pc + 1, so ips[i] - 1 is the address to look up for every
 * i > 0). Returns the number written;
 * *failed is set when the walk stopped on an error rather than at the
 * outermost frame or at `max`: TB_UNWIND_CUT when it needed stack above
 * the copy (where the copy is as long as was asked for, the stack is
 * deeper than copied; where shorter, it ended), TB_UNWIND_FAILED otherwise
 * (no unwind info and no usable frame pointer). */
#define TB_UNWIND_FAILED 1
#define TB_UNWIND_CUT 2
int tb_unwind(tb_unwinder *u, const uint64_t *regs, const void *stack, size_t stack_len,
              uint64_t *ips, int max, int *failed);

#endif
