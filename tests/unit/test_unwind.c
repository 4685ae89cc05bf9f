/* test_unwind.c - unwinding a copied stack the way the sampler does: take
 * this thread's registers and a copy of its stack inside a known call chain
 * (one function built without a frame pointer, so only DWARF CFI can step
 * over it), unwind the copy, symbolize, and expect the chain back. A short
 * copy must stop early and say so; garbage must not crash. */
#include <dlfcn.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "symbols.h"
#include "tap.h"
#include "unwind.h"

#define COPY 16384

static uint64_t regs[TB_UREG_COUNT];
static unsigned char stack_copy[COPY];
static size_t stack_len;
static volatile int depth_sink;

/* (both compilers take it without ASan too; clang 14 has no __SANITIZE_ADDRESS__) */
#define NO_ASAN __attribute__((no_sanitize_address))

/* The main thread's stack end, looked up in main(): capture() also runs in
 * a signal handler, where pthread_getattr_np (fopen, malloc) must not. */
static uint64_t stack_end;

static void find_stack_end(void)
{
    pthread_attr_t a;
    void *lo;
    size_t sz;
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
        if (pthread_attr_getstack(&a, &lo, &sz) == 0)
            stack_end = (uint64_t)(uintptr_t)lo + sz;
        pthread_attr_destroy(&a);
    }
}

/* Copy the live stack byte by byte (memcpy would trip ASan's stack redzones). */
NO_ASAN __attribute__((noinline)) static void copy_stack(uint64_t sp)
{
    uint64_t top = sp + COPY;
    if (stack_end && stack_end < top)
        top = stack_end;
    stack_len = (size_t)(top - sp);
    const volatile unsigned char *src = (const unsigned char *)(uintptr_t)sp;
    for (size_t i = 0; i < stack_len; i++)
        stack_copy[i] = src[i];
}

__attribute__((noinline)) static void capture(void)
{
    ucontext_t uc;
    getcontext(&uc); /* registers as they are right after this call returns */
    const greg_t *g = uc.uc_mcontext.gregs;
    regs[TB_UREG_AX] = (uint64_t)g[REG_RAX];
    regs[TB_UREG_BX] = (uint64_t)g[REG_RBX];
    regs[TB_UREG_CX] = (uint64_t)g[REG_RCX];
    regs[TB_UREG_DX] = (uint64_t)g[REG_RDX];
    regs[TB_UREG_SI] = (uint64_t)g[REG_RSI];
    regs[TB_UREG_DI] = (uint64_t)g[REG_RDI];
    regs[TB_UREG_BP] = (uint64_t)g[REG_RBP];
    regs[TB_UREG_SP] = (uint64_t)g[REG_RSP];
    regs[TB_UREG_IP] = (uint64_t)g[REG_RIP];
    regs[TB_UREG_R8] = (uint64_t)g[REG_R8];
    regs[TB_UREG_R9] = (uint64_t)g[REG_R9];
    regs[TB_UREG_R10] = (uint64_t)g[REG_R10];
    regs[TB_UREG_R11] = (uint64_t)g[REG_R11];
    regs[TB_UREG_R12] = (uint64_t)g[REG_R12];
    regs[TB_UREG_R13] = (uint64_t)g[REG_R13];
    regs[TB_UREG_R14] = (uint64_t)g[REG_R14];
    regs[TB_UREG_R15] = (uint64_t)g[REG_R15];
    copy_stack(regs[TB_UREG_SP]);
}

__attribute__((noinline)) static void level3(void)
{
    capture();
    depth_sink++;
}
/* No frame pointer here: the walk must use .eh_frame to step over it. */
__attribute__((noinline, optimize("omit-frame-pointer"))) static void level2(void)
{
    volatile char pad[200];
    pad[0] = 1;
    level3();
    depth_sink += pad[0];
}
__attribute__((noinline)) static void level1(void)
{
    level2();
    depth_sink++;
}

#ifdef EHTAIL_LIB
/* A function in a library whose .eh_frame_hdr table ends its segment (see
 * tests/unit/lib/ehtail.c): its callers are found all the same. */
/* Unwind the captured regs/stack into ips and name each frame (the leaf by
 * its pc, the others by their return address - 1), printed as "# TAG
 * frame N: name"; the frame count. */
static int unwind_named(tb_unwinder *u, tb_symtab *st, const char *tag, uint64_t *ips, const char **names,
                        int *failed)
{
    int n = tb_unwind(u, regs, stack_copy, stack_len, ips, 64, failed);
    for (int i = 0; i < n; i++) {
        const char *nm = tb_symtab_lookup(st, i ? ips[i] - 1 : ips[i], NULL);
        names[i] = nm ? nm : "?";
        printf("# %sframe %d: %s\n", tag, i, names[i]);
    }
    return n;
}

static void (*ehtail_call)(void (*)(void));
__attribute__((noinline)) static void tail_cb(void)
{
    capture();
    depth_sink += 2;
}
__attribute__((noinline)) static void tail_outer(void)
{
    ehtail_call(tail_cb);
    depth_sink += 3;
}

/* dlopen() the library, ehtail_call set, the module list read again; its
 * handle, or NULL (a failed check). */
static void *open_ehtail(tb_unwinder *u, tb_symtab *st)
{
    void *h = dlopen(EHTAIL_LIB, RTLD_NOW | RTLD_LOCAL);
    *(void **)&ehtail_call = h ? dlsym(h, "ehtail_call") : NULL;
    CHECKF(ehtail_call != NULL, "%s: %s", EHTAIL_LIB, dlerror());
    if (!ehtail_call)
        return NULL;
    if (tb_symtab_stale(st) && tb_symtab_refresh(st))
        tb_unwinder_flush(u);
    return h;
}

static void check_table_at_segment_end(tb_unwinder *u, tb_symtab *st)
{
    void *h = open_ehtail(u, st);
    if (!h)
        return;
    /* the layout the test is about: the table's last entry ends the segment */
    const tb_module *m = tb_symtab_module(st, (uint64_t)(uintptr_t)ehtail_call);
    CHECK(m != NULL && m->eh_frame_hdr != 0 && m->eh_frame_hdr % 8 == 0 &&
          !tb_symtab_readable(st, m->eh_frame_hdr + m->eh_frame_hdr_len, 1));
    tail_outer();
    uint64_t ips[64];
    const char *names[64];
    int failed = -1;
    int n = unwind_named(u, st, "ehtail ", ips, names, &failed);
    CHECKF(n >= 5, "only %d frames", n);
    if (n >= 5) {
        CHECK_STR(names[1], "tail_cb");
        CHECK_STR(names[2], "ehtail_call");
        CHECK_STR(names[3], "tail_outer");
        CHECK_STR(names[4], "main");
    }
    CHECK_EQ_I(failed, 0);
    dlclose(h);
}

/* The job dlclose()s a library after the module list was read and before
 * a stack through it is unwound (the agent thread drains while a job
 * thread unloads): its unwind tables are gone. The walk ends there, the
 * frames below it kept; before, reading the tables faulted the job. */
static void check_unloaded_mid_unwind(tb_unwinder *u, tb_symtab *st)
{
    void *h = open_ehtail(u, st);
    if (!h)
        return;
    tail_outer();
    tb_unwinder_flush(u); /* nothing of the library cached: its tables are read after the unload */
    dlclose(h);           /* the refcount was 1 (check_table_at_segment_end closed its own) */
    void *still = dlopen(EHTAIL_LIB, RTLD_NOW | RTLD_NOLOAD);
    CHECKF(still == NULL, "the library is still loaded: the test does not unload it");
    if (still) {
        dlclose(still);
        return;
    }
    uint64_t ips[64];
    int failed = -1;
    int n = tb_unwind(u, regs, stack_copy, stack_len, ips, 64, &failed);
    CHECKF(n >= 3, "only %d frames", n);
    if (n >= 2) {
        const char *nm = tb_symtab_lookup(st, ips[1] - 1, NULL);
        CHECK_STR(nm ? nm : "?", "tail_cb");
    }
    printf("# unloaded mid-unwind: %d frames, failed=%d\n", n, failed);
}
#endif

/* A signal that interrupts a function at its first instruction: the frame
 * above the signal trampoline holds the interrupted pc, not a return
 * address, so its name is that of the pc itself; pc - 1 (what a return
 * address is looked up with) is the end of the function before it.
 * sig_first_insn() starts with ud2 (SIGILL; the handler samples, then
 * steps over it); sig_before() lies just before it. */
__asm__(".text\n"
        ".p2align 4\n"
        ".type sig_before,@function\n"
        "sig_before:\n"
        ".cfi_startproc\n"
        "    nop\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size sig_before, .-sig_before\n"
        ".type sig_first_insn,@function\n"
        "sig_first_insn:\n"
        ".cfi_startproc\n"
        "    ud2\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size sig_first_insn, .-sig_first_insn\n");
void sig_first_insn(void);
void sig_before(void);

static void on_sigill(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ucv;
    capture();
    uc->uc_mcontext.gregs[REG_RIP] += 2; /* past the ud2 */
}
__attribute__((noinline)) static void sig_caller(void)
{
    sig_first_insn();
    depth_sink += 4;
}

static void check_interrupted_first_insn(tb_unwinder *u, tb_symtab *st)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigill;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGILL, &sa, &old);
    sig_caller();
    sigaction(SIGILL, &old, NULL);
    /* twice: the second walk has each frame's sigreturn answer kept */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t ips[64];
        const char *names[64];
        int failed = -1;
        int n = unwind_named(u, st, pass ? "signal (again) " : "signal ", ips, names, &failed);
        int at = -1;
        for (int i = 0; i < n && at < 0; i++)
            if (strcmp(names[i], "sig_first_insn") == 0 || strcmp(names[i], "sig_before") == 0)
                at = i;
        CHECKF(at > 0, "no frame in sig_first_insn");
        if (at > 0) {
            const char *nm = tb_symtab_lookup(st, ips[at] - 1, NULL);
            CHECK_STR(nm ? nm : "?", "sig_first_insn");
            nm = at + 1 < n ? tb_symtab_lookup(st, ips[at + 1] - 1, NULL) : NULL;
            CHECK_STR(nm ? nm : "?", "sig_caller");
        }
        CHECK_EQ_I(failed, 0);
    }
}

/* Unwind the captured sample 100 times in a child where seccomp answers
 * system call `nr` with `ret` (the unwinder's caches emptied first): the
 * child's frame count when it got `want` whole walks, 0 when it did not or
 * was killed, -1 where seccomp is unavailable.
 * - rt_sigprocmask killing the process: unwinding makes no sigprocmask
 *   call (unwind.c skips libunwind's two per frame);
 * - process_vm_readv refused (EPERM, as container profiles may): loaded
 *   objects' tables are read with plain copies instead. */
static int unwind_with_seccomp(tb_unwinder *u, int want, int nr, unsigned ret)
{
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, ret),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(255);
        tb_unwinder_flush(u);
        uint64_t ips[64];
        int failed = 0, n = 0;
        for (int i = 0; i < 100; i++)
            n = tb_unwind(u, regs, stack_copy, stack_len, ips, 64, &failed);
        _exit(n == want && !failed ? 0 : 1);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 255)
        return -1;
    if (WIFSIGNALED(status)) {
        printf("# child killed by signal %d (a system call seccomp refused)\n", WTERMSIG(status));
        return 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? want : 0;
}

/* Code a JIT generated, as oneDNN's kernels are: in anonymous memory (no
 * loaded object, no unwind tables), saving the callee-saved registers,
 * keeping locals, and using %rbp as a plain register. Its locals hold two
 * code addresses that are not return addresses of an indirect call (one
 * after a direct call, one at a function's start), and the first word it
 * pushes (%rsi: its caller's `local`) points up the stack without being a
 * frame pointer. It calls back (call *%rdi) into compiled code, where the
 * sample is taken. */
__asm__(".text\n"
        ".p2align 4\n"
        ".type jit_decoy_fn,@function\n"
        "    .byte 0x90,0x90,0x90,0x90,0x90,0x90,0x90,0x90\n"
        "jit_decoy_fn:\n"
        "    call jit_decoy_fn2\n"
        "jit_decoy_after_call:\n"
        "    ret\n"
        ".size jit_decoy_fn, .-jit_decoy_fn\n"
        ".type jit_decoy_fn2,@function\n"
        "jit_decoy_fn2:\n"
        "    ret\n"
        ".size jit_decoy_fn2, .-jit_decoy_fn2\n");
void jit_decoy_fn(void);
extern const char jit_decoy_after_call[];

static void (*volatile jit_code)(void (*)(void), volatile uint64_t *); /* (volatile: the call stays indirect) */

__attribute__((noinline)) static void jit_cb(void)
{
    capture();
    depth_sink += 6;
}
__attribute__((noinline)) static void jit_outer(void)
{
    volatile uint64_t local[2] = {0, 0};
    jit_code(jit_cb, local);
    depth_sink += 7 + (int)local[1];
}
__attribute__((noinline, optimize("omit-frame-pointer"))) static void jit_outer_nofp(void)
{
    volatile uint64_t local[2] = {0, 0};
    jit_code(jit_cb, local);
    depth_sink += 8 + (int)local[1];
}

/* The generated function: NULL where executable memory is refused. */
/* The generated code, in one page: the kernel at JIT_KERNEL; a pair of
 * frame-pointer functions at JIT_FP_A (calls *%rsi, with %rdi passed on)
 * and JIT_FP_B (calls *%rdi), as V8's and the JVM interpreter's frames
 * keep the chain. NULL where executable memory is refused. */
#define JIT_KERNEL 0
#define JIT_FP_A 256
#define JIT_FP_B 320
#define JIT_TRAMP 384 /* CPython's perf trampolines: TRAMP_FORMS of them, 16 bytes apart */
/* 3.12's; 3.14's (saves %rbp); 3.14's built with CET (endbr64 first) */
static const unsigned char tramp_forms[][16] = {
    {0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc},
    {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc},
    {0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc}};
#define TRAMP_FORMS 3
static unsigned char *make_jit_code(void)
{
    unsigned char code[512] = {0};
    size_t n = 0;
    static const unsigned char pro[] = {
        0x56,                                                       /* push %rsi */
        0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57, /* push rbx..r15 */
        0x48, 0x81, 0xec, 0x80, 0x00, 0x00, 0x00,                   /* sub $0x80,%rsp */
        0x49, 0x89, 0xe0,                                           /* mov %rsp,%r8 */
        0x31, 0xc0,                                                 /* xor %eax,%eax */
        0xb9, 0x10, 0x00, 0x00, 0x00,                               /* mov $16,%ecx */
        0x49, 0x89, 0x00,                                           /* 1: mov %rax,(%r8) (no stale words) */
        0x49, 0x83, 0xc0, 0x08,                                     /* add $8,%r8 */
        0xff, 0xc9,                                                 /* dec %ecx */
        0x75, 0xf5};                                                /* jnz 1b */
    memcpy(code + n, pro, sizeof(pro));
    n += sizeof(pro);
    uint64_t decoys[2] = {(uint64_t)(uintptr_t)jit_decoy_after_call, (uint64_t)(uintptr_t)jit_decoy_fn};
    for (int i = 0; i < 2; i++) {
        code[n++] = 0x48; /* movabs $decoy,%rax */
        code[n++] = 0xb8;
        memcpy(code + n, &decoys[i], 8);
        n += 8;
        static const unsigned char store[2][5] = {{0x48, 0x89, 0x44, 0x24, 0x40},  /* mov %rax,0x40(%rsp) */
                                                  {0x48, 0x89, 0x44, 0x24, 0x78}}; /* mov %rax,0x78(%rsp) */
        memcpy(code + n, store[i], 5);
        n += 5;
    }
    static const unsigned char body[] = {
        0x48, 0xbd, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, /* movabs $0x5a5a...,%rbp */
        0x48, 0x89, 0xeb,                                           /* mov %rbp,%rbx */
        0xff, 0xd7,                                                 /* call *%rdi */
        0x48, 0x81, 0xc4, 0x80, 0x00, 0x00, 0x00,                   /* add $0x80,%rsp */
        0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, /* pop r15..rbx */
        0x5e, 0xc3};                                                /* pop %rsi; ret */
    memcpy(code + n, body, sizeof(body));
    n += sizeof(body);
    static const unsigned char fp_a[] = {0x55, 0x48, 0x89, 0xe5, /* push %rbp; mov %rsp,%rbp */
                                         0xff, 0xd6,             /* call *%rsi */
                                         0x5d, 0xc3};            /* pop %rbp; ret */
    static const unsigned char fp_b[] = {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd7, 0x5d, 0xc3}; /* ... call *%rdi ... */
    if (n > JIT_FP_A)
        return NULL;
    memcpy(code + JIT_FP_A, fp_a, sizeof(fp_a));
    memcpy(code + JIT_FP_B, fp_b, sizeof(fp_b));
    memcpy(code + JIT_TRAMP, tramp_forms, sizeof(tramp_forms));
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *mem = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return NULL;
    memcpy(mem, code, sizeof(code));
    if (mprotect(mem, (size_t)page, PROT_READ | PROT_EXEC) != 0) {
        munmap(mem, (size_t)page);
        return NULL;
    }
    return mem;
}

static void (*volatile jit_fp_a)(void (*)(void), void *);
static uint64_t ret_icall; /* a return address right after an indirect call (into jit_outer) */
/* compiled code calling a frame-pointer JIT function that calls another */
__attribute__((noinline)) static void jit_fp_outer(void *b)
{
    jit_fp_a(jit_cb, b);
    depth_sink += 9;
}

/* A sample taken in compiled code that JIT code called: the walk goes on
 * past the JIT frame to its caller, whether that keeps a frame pointer or
 * not; before, it ended at the JIT frame. */
__attribute__((noinline)) static void check_jit_frame(tb_unwinder *u, tb_symtab *st)
{
    unsigned char *mem = make_jit_code();
    if (!mem) {
        printf("# skip: executable memory refused here\n");
        return;
    }
    *(void **)&jit_code = mem + JIT_KERNEL;
    *(void **)&jit_fp_a = mem + JIT_FP_A;
    uint64_t lo = (uint64_t)(uintptr_t)mem;
    for (int pass = 0; pass < 3; pass++) {
        static const char *const tags[] = {"jit ", "jit nofp ", "jit fp chain "};
        if (pass == 0)
            jit_outer();
        else if (pass == 1)
            jit_outer_nofp();
        else
            jit_fp_outer(mem + JIT_FP_B);
        uint64_t ips[64];
        const char *names[64];
        int failed = -1;
        int n = unwind_named(u, st, tags[pass], ips, names, &failed);
        int k = 2; /* the first frame above the JIT ones */
        CHECK(n > 2 && ips[2] - 1 >= lo + JIT_KERNEL + (pass == 2 ? JIT_FP_B : 0) && ips[2] - 1 < lo + 4096);
        if (pass == 2) { /* both frames of the chain: B's, then A's */
            CHECK(n > 3 && ips[2] - 1 >= lo + JIT_FP_B && ips[2] - 1 < lo + JIT_FP_B + 8);
            CHECK(n > 3 && ips[3] - 1 >= lo + JIT_FP_A && ips[3] - 1 < lo + JIT_FP_A + 8);
            k = 3;
        }
        CHECKF(n >= k + 4, "only %d frames", n);
        if (n >= k + 4) {
            CHECK_STR(names[1], "jit_cb");
            CHECK_STR(names[k + 1], pass == 0 ? "jit_outer" : pass == 1 ? "jit_outer_nofp" : "jit_fp_outer");
            CHECK_STR(names[k + 2], "check_jit_frame");
            CHECK_STR(names[k + 3], "main");
        }
        CHECK_EQ_I(failed, 0);
        if (pass == 0 && n > 3)
            ret_icall = ips[3];
    }
    munmap(mem, (size_t)sysconf(_SC_PAGESIZE));
}

/* CPython's perf trampoline between a Python function's caller and the
 * evaluator: trampoline(tstate, frame, throwflag, evaluator) calls *%rcx.
 * The walk steps over each form by hand (its return address is the
 * Python frame's name), on to a caller with frame pointers, whose CFA is
 * found from %rbp (the form that saves %rbp must give the caller's back),
 * and to one without. */
static void (*volatile tramp_code)(void *, void *, int, void (*)(void));
__attribute__((noinline)) static void tramp_outer(void)
{
    tramp_code(NULL, NULL, 0, jit_cb);
    depth_sink += 10;
}
__attribute__((noinline, optimize("omit-frame-pointer"))) static void tramp_outer_nofp(void)
{
    volatile char pad[40];
    pad[0] = 2;
    tramp_code(NULL, NULL, 0, jit_cb);
    depth_sink += pad[0];
}

__attribute__((noinline)) static void check_py_trampolines(tb_unwinder *u, tb_symtab *st)
{
    unsigned char *mem = make_jit_code();
    if (!mem) {
        printf("# skip: executable memory refused here\n");
        return;
    }
    for (int form = 0; form < TRAMP_FORMS; form++)
        for (int fp = 1; fp >= 0; fp--) {
            unsigned char *t = mem + JIT_TRAMP + 16 * form;
            *(void **)&tramp_code = t;
            if (fp)
                tramp_outer();
            else
                tramp_outer_nofp();
            uint64_t ips[64];
            const char *names[64];
            int failed = -1;
            char tag[32];
            snprintf(tag, sizeof(tag), "tramp %d%s ", form, fp ? "" : " nofp");
            int n = unwind_named(u, st, tag, ips, names, &failed);
            /* capture, jit_cb, the trampoline, its caller, check_py_trampolines, main */
            CHECKF(n >= 6, "%sonly %d frames", tag, n);
            if (n < 6)
                continue;
            uint64_t call_end = (uint64_t)(uintptr_t)t + (form == 0 ? 6 : form == 1 ? 6 : 10);
            CHECKF(ips[2] == call_end, "%sframe 2 is %#llx, not the trampoline's return address %#llx", tag,
                   (unsigned long long)ips[2], (unsigned long long)call_end);
            /* stepped over as a trampoline (the JIT frame search would
             * walk the second form too, by another road) */
            CHECK_EQ_I(tb_unwind_py_trampoline_form(u, call_end), form == 0 ? 1 : 2);
            CHECK_STR(names[1], "jit_cb");
            CHECK_STR(names[3], fp ? "tramp_outer" : "tramp_outer_nofp");
            CHECK_STR(names[4], "check_py_trampolines");
            CHECK_STR(names[5], "main");
            CHECK_EQ_I(failed, 0);
        }
    munmap(mem, (size_t)sysconf(_SC_PAGESIZE));
}

/* A JIT frame's caller looked for at the edges of the copy and of the
 * address space (a signal frame's saved sp can be anything): copies of 0
 * to 64 bytes full of return addresses and frame-pointer-like words, sp
 * and %rbp up to 2^64 - 8. No read outside the copy (ASan), a bounded walk. */
static void check_jit_edges(tb_unwinder *u)
{
    static const uint64_t sps[] = {UINT64_MAX - 7, UINT64_MAX - 15, UINT64_MAX - 63, 4096, 0x7ff000000000ULL};
    static const size_t lens[] = {0, 7, 8, 15, 16, 24, 63, 64};
    static const int64_t bps[] = {0, 8, -8, 48, 56};
    int bad = 0, walks = 0;
    for (size_t i = 0; i < sizeof(sps) / sizeof(sps[0]); i++)
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++)
            for (int b = 0; b < 5; b++)
                for (int rets = 0; rets < 2; rets++) {
                    uint64_t sp = sps[i], r[TB_UREG_COUNT] = {0};
                    unsigned char *copy = malloc(lens[j] ? lens[j] : 1); /* exactly the copy: ASan sees past it */
                    if (!copy)
                        continue;
                    for (size_t o = 0; o < lens[j]; o++) {
                        /* return addresses (or not) and frame-pointer-like words */
                        uint64_t w = rets && (o / 8) % 2 ? ret_icall : sp + (o & ~(size_t)7) + 16;
                        copy[o] = (unsigned char)(w >> (8 * (o % 8)));
                    }
                    r[TB_UREG_IP] = 0x1000; /* in no object: a JIT frame */
                    r[TB_UREG_SP] = sp;
                    r[TB_UREG_BP] = b == 4 ? UINT64_MAX - 7 : sp + (uint64_t)bps[b];
                    uint64_t ips[64];
                    int failed = 0;
                    int n = tb_unwind(u, r, copy, lens[j], ips, 64, &failed);
                    bad += n < 1 || n > 64;
                    walks++;
                    free(copy);
                }
    CHECKF(bad == 0, "%d of %d walks out of bounds", bad, walks);
}

int main(void)
{
    find_stack_end();
    tb_symtab *st = tb_symtab_new();
    tb_symtab_refresh(st);
    tb_unwinder *u = tb_unwinder_new(st);
    if (!u) {
        printf("# skip: no libunwind at run time (frame-pointer mode only)\n");
        tb_symtab_free(st);
        CHECK(1);
        return tap_done();
    }
    level1();
    uint64_t ips[64];
    const char *names[64];
    int failed = -1;
    int n = unwind_named(u, st, "", ips, names, &failed);
    /* frame 0 is capture() right after getcontext returned */
    CHECKF(n >= 5, "only %d frames", n);
    if (n >= 5) {
        CHECK_STR(names[0], "capture");
        CHECK_STR(names[1], "level3");
        CHECK_STR(names[2], "level2");
        CHECK_STR(names[3], "level1");
        CHECK_STR(names[4], "main");
    }
    CHECK_EQ_I(failed, 0); /* reached the outermost frame (_start) */

    /* libunwind's signal blocking is skipped where its GOT slot is writable
     * (Debian's: lazily bound); no system call in the walk */
    int state = tb_unwind_sigmask_state();
    printf("# libunwind sigprocmask: %d\n", state);
    CHECKF(state == 1 || state == -2, "state %d: slot not found", state);
    if (state == 1) {
        int got = unwind_with_seccomp(u, n, __NR_rt_sigprocmask, SECCOMP_RET_KILL_PROCESS);
        if (got < 0)
            printf("# skip: seccomp unavailable\n");
        else
            CHECK_EQ_I(got, n);
    }
    int got = unwind_with_seccomp(u, n, __NR_process_vm_readv, SECCOMP_RET_ERRNO | EPERM);
    if (got < 0)
        printf("# skip: seccomp unavailable\n");
    else
        CHECKF(got == n, "process_vm_readv refused: %d frames of %d", got, n);

#ifdef EHTAIL_LIB
    check_table_at_segment_end(u, st);
    check_unloaded_mid_unwind(u, st);
#endif

    check_interrupted_first_insn(u, st);
    check_jit_frame(u, st);
    check_jit_edges(u);
    check_py_trampolines(u, st);

    /* a copy too short for the chain: fewer frames, flagged as cut (the
     * walk read the stack above the copy: the sampler gives such a thread
     * a bigger copy) */
    int n_short = tb_unwind(u, regs, stack_copy, 64, ips, 64, &failed);
    CHECKF(n_short < n, "short copy gave %d frames of %d", n_short, n);
    CHECK_EQ_I(failed, TB_UNWIND_CUT);

    /* garbage registers and stack: no crash, bounded output */
    srand(1);
    for (int it = 0; it < 2000; it++) {
        uint64_t r[TB_UREG_COUNT];
        static unsigned char junk[4096];
        for (int i = 0; i < TB_UREG_COUNT; i++)
            r[i] = ((uint64_t)rand() << 33) ^ ((uint64_t)rand() << 2);
        for (size_t i = 0; i < sizeof(junk); i++)
            junk[i] = (unsigned char)rand();
        /* sometimes plausible: IP in our code, SP at the copy */
        if (it & 1)
            r[TB_UREG_IP] = regs[TB_UREG_IP] + (uint64_t)(rand() % 512);
        if (it & 2)
            r[TB_UREG_BP] = r[TB_UREG_SP] + (uint64_t)(rand() % 4096);
        int k = tb_unwind(u, r, junk, sizeof(junk), ips, 64, &failed);
        if (k < 1 || k > 64) {
            CHECKF(0, "garbage gave %d frames", k);
            break;
        }
    }
    CHECK(1);
    tb_unwinder_free(u);
    tb_symtab_free(st);
    return tap_done();
}
