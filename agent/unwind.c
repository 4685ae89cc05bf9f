/* unwind.c - see unwind.h. */
#include "unwind.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TBPROF_HAVE_UNWIND

#include <dlfcn.h>
#include <elf.h>
#include <libunwind.h>
#include <link.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* libunwind is loaded at the first capture that needs it (dlopen), not
 * linked: Debian's static libunwind is not position-independent, so it
 * cannot go into libtbprof.so, and a hard dependency would stop the preload
 * from loading where libunwind is absent. Only its remote API is used; the
 * header gives the types. RTLD_LOCAL keeps its _Unwind_* symbols out of the
 * process's global scope (C++ exceptions keep using libgcc_s). */
static struct {
    int tried, ok;
    char why[400]; /* when !ok: why libunwind cannot be used */
    unw_addr_space_t (*create_addr_space)(unw_accessors_t *, int);
    void (*destroy_addr_space)(unw_addr_space_t);
    int (*set_caching_policy)(unw_addr_space_t, unw_caching_policy_t);
    void (*flush_cache)(unw_addr_space_t, unw_word_t, unw_word_t);
    int (*init_remote)(unw_cursor_t *, unw_addr_space_t, void *);
    int (*step)(unw_cursor_t *);
    int (*get_reg)(unw_cursor_t *, int, unw_word_t *);
    /* exported by libunwind for its remote back ends, not declared in its headers */
    int (*search_table)(unw_addr_space_t, unw_word_t, unw_dyn_info_t *, unw_proc_info_t *, int, void *);
} lu;

static void *open_libunwind(void)
{
    const char *env = getenv("TBPROF_LIBUNWIND");
    if (env && *env)
        return dlopen(env, RTLD_NOW | RTLD_LOCAL);
    void *h = dlopen("libunwind-x86_64.so.8", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        h = dlopen("libunwind-x86_64.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        /* a copy shipped beside libtbprof.so */
        Dl_info di;
        if (dladdr((void *)open_libunwind, &di) && di.dli_fname) {
            char path[4096];
            const char *slash = strrchr(di.dli_fname, '/');
            if (slash && (size_t)(slash - di.dli_fname) < sizeof(path) - 32) {
                /* its libunwind.so.8 first, from there too: the loader
                 * looks for a dependency by soname among the objects
                 * loaded, never beside the one that needs it */
                int dir = (int)(slash - di.dli_fname);
                snprintf(path, sizeof(path), "%.*s/libunwind.so.8", dir, di.dli_fname);
                void *base = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                snprintf(path, sizeof(path), "%.*s/libunwind-x86_64.so.8", dir, di.dli_fname);
                h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (base) /* h holds it where it needed it */
                    dlclose(base);
            }
        }
    }
    return h;
}

/* libunwind takes its cache lock with every signal blocked: two
 * sigprocmask() system calls around each frame it unwinds, so that a signal
 * handler unwinding on the same thread cannot deadlock on the lock. The
 * agent thread unwinds with every signal already blocked (capture.c), and
 * those calls were most of its CPU time (49 of 77 samples of its own thread
 * in a 3 s capture of two busy threads at 1 kHz). So libunwind's GOT slot
 * for sigprocmask is pointed at skip_or_forward(), which does nothing for a
 * thread inside tb_unwind() and forwards every other call (should the job
 * use this libunwind too) to what the slot held. Only where the slot is
 * writable without mprotect (not under RELRO: Debian's libunwind binds
 * lazily); elsewhere the calls stay. */
typedef int (*sigprocmask_fn)(int, const sigset_t *, sigset_t *);
static sigprocmask_fn next_sigprocmask;
static int sigmask_state; /* tb_unwind_sigmask_state() */
static __thread int in_unwind;

static int skip_or_forward(int how, const sigset_t *set, sigset_t *old)
{
    if (in_unwind) {
        if (old)
            sigemptyset(old); /* handed back to us by the matching call */
        return 0;
    }
    return next_sigprocmask(how, set, old);
}

/* A pointer the dynamic section holds: glibc has relocated it in place
 * (most), others leave it an offset from the load bias. */
static uintptr_t dyn_ptr(uintptr_t v, uintptr_t bias) { return v < bias ? v + bias : v; }

typedef struct slot_find {
    uintptr_t bias, slot;
    int writable;
} slot_find;

/* Is the slot in a writable PT_LOAD of the object at this bias, and outside
 * its RELRO part (read-only once relocated)? */
static int slot_phdr_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    slot_find *f = arg;
    if (info->dlpi_addr != f->bias)
        return 0;
    int in_rw = 0, in_relro = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t a = f->bias + ph->p_vaddr;
        int inside = f->slot >= a && f->slot + sizeof(void *) <= a + ph->p_memsz;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && inside)
            in_rw = 1;
        if (ph->p_type == PT_GNU_RELRO && inside)
            in_relro = 1;
    }
    f->writable = in_rw && !in_relro;
    return 1;
}

static void skip_libunwind_sigprocmask(void *h)
{
    struct link_map *lm = NULL;
    sigmask_state = -1;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !lm->l_ld)
        return;
    uintptr_t bias = lm->l_addr, jmprel = 0, symtab = 0, strtab = 0;
    size_t pltrelsz = 0, strsz = 0;
    int rela = 0;
    for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_JMPREL: jmprel = dyn_ptr(d->d_un.d_ptr, bias); break;
        case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
        case DT_PLTREL: rela = d->d_un.d_val == DT_RELA; break;
        case DT_SYMTAB: symtab = dyn_ptr(d->d_un.d_ptr, bias); break;
        case DT_STRTAB: strtab = dyn_ptr(d->d_un.d_ptr, bias); break;
        case DT_STRSZ: strsz = d->d_un.d_val; break;
        }
    }
    if (!jmprel || !symtab || !strtab || !rela)
        return;
    const ElfW(Rela) *r = (const ElfW(Rela) *)jmprel;
    const ElfW(Sym) *syms = (const ElfW(Sym) *)symtab;
    for (size_t i = 0; i < pltrelsz / sizeof(*r); i++) {
        if (ELF64_R_TYPE(r[i].r_info) != R_X86_64_JUMP_SLOT)
            continue;
        uint32_t name = syms[ELF64_R_SYM(r[i].r_info)].st_name;
        if (name >= strsz || strcmp((const char *)strtab + name, "sigprocmask") != 0)
            continue;
        slot_find f = {bias, bias + r[i].r_offset, 0};
        dl_iterate_phdr(slot_phdr_cb, &f);
        if (!f.writable) {
            sigmask_state = -2;
            return;
        }
        void **slot = (void **)f.slot;
        void *was = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (was == (void *)skip_or_forward) { /* loaded again after a dlclose: done already */
            sigmask_state = 1;
            return;
        }
        *(void **)&next_sigprocmask = was;
        __atomic_store_n(slot, (void *)skip_or_forward, __ATOMIC_RELEASE);
        sigmask_state = 1;
        return;
    }
}

int tb_unwind_sigmask_state(void) { return sigmask_state; }

static int load_libunwind(void)
{
    if (lu.tried)
        return lu.ok;
    lu.tried = 1;
    void *h = open_libunwind();
    if (!h) {
        /* said once, by the sampler that falls back (tb_unwinder_why) */
        const char *env = getenv("TBPROF_LIBUNWIND"), *e = dlerror();
        if (env && *env)
            snprintf(lu.why, sizeof(lu.why), "libunwind not loadable (TBPROF_LIBUNWIND: %s)", e ? e : env);
        else
            snprintf(lu.why, sizeof(lu.why), "libunwind-x86_64.so.8 not found (%s)", e ? e : "dlopen failed");
        return 0;
    }
#define LU_SYM(field, name)                                    \
    do {                                                       \
        *(void **)&lu.field = dlsym(h, name);                  \
        if (!lu.field) {                                       \
            snprintf(lu.why, sizeof(lu.why), "libunwind lacks %s", name); \
            return 0;                                          \
        }                                                      \
    } while (0)
    LU_SYM(create_addr_space, "_Ux86_64_create_addr_space");
    LU_SYM(destroy_addr_space, "_Ux86_64_destroy_addr_space");
    LU_SYM(set_caching_policy, "_Ux86_64_set_caching_policy");
    LU_SYM(flush_cache, "_Ux86_64_flush_cache");
    LU_SYM(init_remote, "_Ux86_64_init_remote");
    LU_SYM(step, "_Ux86_64_step");
    LU_SYM(get_reg, "_Ux86_64_get_reg");
    LU_SYM(search_table, "_Ux86_64_dwarf_search_unwind_table");
#undef LU_SYM
    skip_libunwind_sigprocmask(h);
    lu.ok = 1;
    return 1;
}

/* What a frame's ip was found to be, kept per ip: the signal trampoline a
 * handler returns to (is_sigreturn, asked of every frame), a return address
 * inside a Python perf trampoline (in_py_trampoline, asked of JIT memory),
 * a return address right after an indirect or a direct call (after_call,
 * asked of the words above a JIT frame).
 * Each answer costs a read of the code there, a system call where the
 * chunk is not cached, and a job as big as PyTorch spreads its frames over
 * more code than the image cache holds. Code in a loaded object does not
 * change while the module list stays the same, and CPython never frees a
 * trampoline while the process runs. Emptied when half full and when the
 * mapped objects change. */
#define IP_CACHE 8192 /* 128 KiB, during a capture */
enum {
    IP_SIG_KNOWN = 1,
    IP_SIG = 2,
    IP_TRAMP_KNOWN = 4,
    IP_TRAMP = 8,
    IP_TRAMP_FP = 128, /* (with IP_TRAMP) the form that saves %rbp */
    IP_CALL_KNOWN = 16,
    IP_ICALL = 32,
    IP_DCALL = 64
};
typedef struct ip_slot {
    uint64_t ip; /* 0: empty */
    int flags;   /* IP_* */
} ip_slot;

/* Loaded objects' images (.eh_frame_hdr, .eh_frame, code) are read through
 * a cache of aligned chunks filled with tb_self_read: a library the job
 * dlclose()s while we unwind through it fails a read instead of faulting
 * the job, and the hot tables cost one system call per chunk, not per word.
 * Emptied when the module list changes (tb_unwinder_flush). */
#define IMG_CHUNK 512  /* within one page: mapped whole or not at all */
#define IMG_SLOTS 1024 /* 520 KiB with the tags, during a capture: a Python job misses
                          * 260 times in 1500 samples (1870 with 256 slots) */
typedef struct img_chunk {
    uint64_t at; /* the chunk's address + 1; 0: empty */
    unsigned char b[IMG_CHUNK];
} img_chunk;

struct tb_unwinder {
    unw_addr_space_t as;
    tb_symtab *st;
    ip_slot *ips;
    size_t nips;
    img_chunk *img;
    size_t nimg; /* chunks filled since the last clear */
};

/* How far above the sampled sp a read that missed the copy counts as one
 * into the rest of the thread's stack: within the largest copy the kernel
 * makes (64 KiB), which is all a bigger copy could give; a wild read
 * further up (a garbage frame pointer) is a failure like any other */
#define STACK_REACH ((uint64_t)68 << 10)

/* What one tb_unwind() call walks over; passed to the accessors as `arg`. */
typedef struct sample_ctx {
    tb_unwinder *u;
    const uint64_t *regs;
    const unsigned char *stack;
    uint64_t sp;
    size_t len;
    int past_copy; /* a read above the copy, in what may be the rest of the stack */
    int noinfo;    /* a frame was looked up and had no unwind info */
} sample_ctx;

/* len bytes of a loaded object's image at addr, which the caller has found
 * in a readable segment: 0, or -1 when it is unmapped now. */
static int read_image(tb_unwinder *u, uint64_t addr, void *dst, size_t len)
{
    unsigned char *out = dst;
    while (len) {
        uint64_t base = addr & ~(uint64_t)(IMG_CHUNK - 1);
        size_t off = (size_t)(addr - base), take = IMG_CHUNK - off < len ? IMG_CHUNK - off : len;
        img_chunk *ch = &u->img[((base / IMG_CHUNK) * 0x9e3779b97f4a7c15ULL >> 40) & (IMG_SLOTS - 1)];
        if (ch->at != base + 1) {
            ch->at = 0;
            if (tb_self_read(ch->b, base, IMG_CHUNK, 1) < 0)
                return -1;
            ch->at = base + 1;
            u->nimg++;
        }
        memcpy(out, ch->b + off, take);
        out += take;
        addr += take;
        len -= take;
    }
    return 0;
}

static void img_clear(tb_unwinder *u)
{
    if (!u->nimg)
        return; /* (never filled: its pages not touched either) */
    for (size_t i = 0; i < IMG_SLOTS; i++)
        u->img[i].at = 0;
    u->nimg = 0;
}

static int find_proc_info(unw_addr_space_t as, unw_word_t ip, unw_proc_info_t *pi, int need_unwind_info,
                          void *arg)
{
    sample_ctx *c = arg;
    const tb_module *m = tb_symtab_module(c->u->st, ip);
    if (!m || !m->eh_frame_hdr || m->eh_frame_hdr_len < 12 ||
        !tb_symtab_readable(c->u->st, m->eh_frame_hdr, 12))
        return -UNW_ENOINFO;
    unsigned char hdr[12];
    if (read_image(c->u, m->eh_frame_hdr, hdr, sizeof(hdr)) < 0)
        return -UNW_ENOINFO;
    /* version 1; eh_frame_ptr pcrel|sdata4; fde_count udata4; table datarel|sdata4 */
    if (hdr[0] != 1 || hdr[2] != 0x03 || hdr[3] != 0x3b)
        return -UNW_ENOINFO;
    uint32_t fde_count;
    memcpy(&fde_count, hdr + 8, 4);
    /* a table longer than the segment that holds it is not read past its end */
    if (fde_count == 0 || fde_count > (m->eh_frame_hdr_len - 12) / 8 ||
        !tb_symtab_readable(c->u->st, m->eh_frame_hdr + 12, (size_t)fde_count * 8))
        return -UNW_ENOINFO;
    unw_dyn_info_t di;
    memset(&di, 0, sizeof(di));
    di.format = UNW_INFO_FORMAT_REMOTE_TABLE;
    di.start_ip = m->start;
    di.end_ip = m->end;
    di.u.rti.segbase = m->eh_frame_hdr;
    di.u.rti.table_data = m->eh_frame_hdr + 12;
    di.u.rti.table_len = (unw_word_t)fde_count * 8 / sizeof(unw_word_t);
    return lu.search_table(as, ip, &di, pi, need_unwind_info, arg);
}

static int eh_find_proc_info(unw_addr_space_t as, unw_word_t ip, unw_proc_info_t *pi, int need_unwind_info,
                             void *arg)
{
    int r = find_proc_info(as, ip, pi, need_unwind_info, arg);
    if (r == -UNW_ENOINFO)
        ((sample_ctx *)arg)->noinfo = 1; /* (what a step that then ends means: trial_walk) */
    return r;
}

/* libunwind frees the table-format unwind info it asked for itself. */
static void eh_put_unwind_info(unw_addr_space_t as, unw_proc_info_t *pi, void *arg)
{
    (void)as;
    (void)pi;
    (void)arg;
}

static int no_dyn_list(unw_addr_space_t as, unw_word_t *addr, void *arg)
{
    (void)as;
    (void)addr;
    (void)arg;
    return -UNW_ENOINFO;
}

static int access_mem(unw_addr_space_t as, unw_word_t addr, unw_word_t *valp, int write, void *arg)
{
    (void)as;
    sample_ctx *c = arg;
    if (write)
        return -UNW_EINVAL;
    if (addr >= c->sp && addr - c->sp + sizeof(unw_word_t) <= c->len && addr + sizeof(unw_word_t) > addr) {
        memcpy(valp, c->stack + (addr - c->sp), sizeof(*valp));
        return 0;
    }
    if (tb_symtab_readable(c->u->st, addr, sizeof(unw_word_t)))
        return read_image(c->u, addr, valp, sizeof(*valp)) < 0 ? -UNW_EINVAL : 0;
    /* libunwind reads tables a byte at a time out of aligned words: the
     * last entry of an .eh_frame_hdr table that ends its segment 4 bytes
     * past a word boundary is read with the word that holds it, 4 bytes of
     * it past the segment. Those bytes are never used: the part inside the
     * segment is read, the rest is zero (else the lookup failed, and every
     * stack through that function ended there). */
    for (size_t k = sizeof(unw_word_t) - 1; k > 0; k--)
        if (tb_symtab_readable(c->u->st, addr, k)) {
            unsigned char b[sizeof(unw_word_t)] = {0};
            if (read_image(c->u, addr, b, k) < 0)
                return -UNW_EINVAL;
            memcpy(valp, b, sizeof(*valp));
            return 0;
        }
    if (addr >= c->sp && addr - c->sp < STACK_REACH)
        c->past_copy = 1;
    return -UNW_EINVAL;
}

static int access_reg(unw_addr_space_t as, unw_regnum_t reg, unw_word_t *valp, int write, void *arg)
{
    (void)as;
    sample_ctx *c = arg;
    if (write)
        return -UNW_EREADONLYREG;
    int i;
    switch (reg) {
    case UNW_X86_64_RAX: i = TB_UREG_AX; break;
    case UNW_X86_64_RDX: i = TB_UREG_DX; break;
    case UNW_X86_64_RCX: i = TB_UREG_CX; break;
    case UNW_X86_64_RBX: i = TB_UREG_BX; break;
    case UNW_X86_64_RSI: i = TB_UREG_SI; break;
    case UNW_X86_64_RDI: i = TB_UREG_DI; break;
    case UNW_X86_64_RBP: i = TB_UREG_BP; break;
    case UNW_X86_64_RSP: i = TB_UREG_SP; break;
    case UNW_X86_64_RIP: i = TB_UREG_IP; break;
    case UNW_X86_64_R8: i = TB_UREG_R8; break;
    case UNW_X86_64_R9: i = TB_UREG_R9; break;
    case UNW_X86_64_R10: i = TB_UREG_R10; break;
    case UNW_X86_64_R11: i = TB_UREG_R11; break;
    case UNW_X86_64_R12: i = TB_UREG_R12; break;
    case UNW_X86_64_R13: i = TB_UREG_R13; break;
    case UNW_X86_64_R14: i = TB_UREG_R14; break;
    case UNW_X86_64_R15: i = TB_UREG_R15; break;
    default: return -UNW_EBADREG;
    }
    *valp = c->regs[i];
    return 0;
}

static int access_fpreg(unw_addr_space_t as, unw_regnum_t reg, unw_fpreg_t *val, int write, void *arg)
{
    (void)as;
    (void)reg;
    (void)val;
    (void)write;
    (void)arg;
    return -UNW_EINVAL;
}

static int no_resume(unw_addr_space_t as, unw_cursor_t *cur, void *arg)
{
    (void)as;
    (void)cur;
    (void)arg;
    return -UNW_EINVAL;
}

static int no_proc_name(unw_addr_space_t as, unw_word_t addr, char *buf, size_t len, unw_word_t *off,
                        void *arg)
{
    (void)as;
    (void)addr;
    (void)buf;
    (void)len;
    (void)off;
    (void)arg;
    return -UNW_EINVAL;
}

static unw_accessors_t accessors = {
    .find_proc_info = eh_find_proc_info,
    .put_unwind_info = eh_put_unwind_info,
    .get_dyn_info_list_addr = no_dyn_list,
    .access_mem = access_mem,
    .access_reg = access_reg,
    .access_fpreg = access_fpreg,
    .resume = no_resume,
    .get_proc_name = no_proc_name,
};

const char *tb_unwinder_why(void)
{
    return lu.tried && !lu.ok ? lu.why : "out of memory for the unwinder";
}

tb_unwinder *tb_unwinder_new(tb_symtab *st)
{
    if (!st || !load_libunwind())
        return NULL;
    tb_unwinder *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->st = st;
    u->ips = calloc(IP_CACHE, sizeof(*u->ips));
    u->img = calloc(IMG_SLOTS, sizeof(*u->img));
    u->as = lu.create_addr_space(&accessors, 0);
    if (!u->as || !u->ips || !u->img) {
        if (u->as)
            lu.destroy_addr_space(u->as);
        free(u->ips);
        free(u->img);
        free(u);
        return NULL;
    }
    lu.set_caching_policy(u->as, UNW_CACHE_GLOBAL);
    return u;
}

void tb_unwinder_free(tb_unwinder *u)
{
    if (!u)
        return;
    lu.destroy_addr_space(u->as);
    free(u->ips);
    free(u->img);
    free(u);
}

static void ips_clear(tb_unwinder *u)
{
    if (!u->nips)
        return;
    memset(u->ips, 0, IP_CACHE * sizeof(*u->ips));
    u->nips = 0;
}

void tb_unwinder_flush(tb_unwinder *u)
{
    if (!u)
        return;
    lu.flush_cache(u->as, 0, 0);
    ips_clear(u);
    img_clear(u);
}

/* CPython's perf trampoline (a copy of _Py_trampoline_func_start per Python
 * function, in JIT memory with no unwind tables), in two forms. 3.12 and
 * 3.13 keep no frame pointer:
 *     sub $8,%rsp ; call *%rcx ; add $8,%rsp ; ret
 * (bytes [ip-6, ip+5) of a return address right after its call); from
 * CPython's fix for frame-pointer unwinding (gh-136541: 3.14, and the 3.13
 * releases after it) it keeps one:
 *     push %rbp ; mov %rsp,%rbp ; call *%rcx ; pop %rbp ; ret
 * (bytes [ip-6, ip+2)). Either way, after the call returns the caller's
 * return address is at sp+8 and its sp is sp+16; the second form saved the
 * caller's %rbp at sp. An endbr64 before either changes neither. */
static const unsigned char py_trampoline[11] = {0x48, 0x83, 0xec, 0x08, 0xff, 0xd1,
                                                0x48, 0x83, 0xc4, 0x08, 0xc3};
static const unsigned char py_trampoline_fp[8] = {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3};

/* ip's slot in the answer cache, made (with no answer yet) where it has none */
static ip_slot *ip_slot_of(tb_unwinder *u, uint64_t ip)
{
    size_t h = (size_t)((ip * 0x9e3779b97f4a7c15ULL) >> 40) & (IP_CACHE - 1);
    while (u->ips[h].ip) {
        if (u->ips[h].ip == ip)
            return &u->ips[h];
        h = (h + 1) & (IP_CACHE - 1);
    }
    if (u->nips * 2 >= IP_CACHE) {
        ips_clear(u);
        return ip_slot_of(u, ip);
    }
    u->nips++;
    u->ips[h] = (ip_slot){ip, 0};
    return &u->ips[h];
}

/* Is ip a return address inside a Python perf trampoline? 0: no; 1: the
 * form without a frame pointer; 2: the one that saves %rbp. JIT memory is
 * in no loaded object (in_object: ip is in one), so it is read with
 * process_vm_readv (fails cleanly on an unmapped address instead of
 * faulting; the shorter form is read alone where the longer one's bytes
 * run into an unmapped page). */
static int in_py_trampoline(tb_unwinder *u, uint64_t ip, int in_object)
{
    if (ip < 6 || in_object)
        return 0;
    ip_slot *sl = ip_slot_of(u, ip);
    if (!(sl->flags & IP_TRAMP_KNOWN)) {
        unsigned char buf[sizeof(py_trampoline)];
        size_t got = tb_self_read(buf, ip - 6, sizeof(buf), 0) == 0                   ? sizeof(buf)
                     : tb_self_read(buf, ip - 6, sizeof(py_trampoline_fp), 0) == 0 ? sizeof(py_trampoline_fp)
                                                                                     : 0;
        int flags = 0;
        if (got == sizeof(py_trampoline) && memcmp(buf, py_trampoline, sizeof(py_trampoline)) == 0)
            flags = IP_TRAMP;
        else if (got >= sizeof(py_trampoline_fp) && memcmp(buf, py_trampoline_fp, sizeof(py_trampoline_fp)) == 0)
            flags = IP_TRAMP | IP_TRAMP_FP;
        sl->flags |= IP_TRAMP_KNOWN | flags;
    }
    return !(sl->flags & IP_TRAMP) ? 0 : sl->flags & IP_TRAMP_FP ? 2 : 1;
}

int tb_unwind_py_trampoline_form(tb_unwinder *u, uint64_t ip) { return u ? in_py_trampoline(u, ip, 0) : 0; }

/* Is ip the signal trampoline a handler returns to (glibc's and musl's
 * __restore_rt: mov $15,%rax; syscall)? Checked here rather than with
 * libunwind's unw_is_signal_frame, which tells the trampoline frame in
 * some versions and the frame after it in others. */
static int sigreturn_code(sample_ctx *c, uint64_t ip, int *yes)
{
    unw_word_t w0 = 0, w1 = 0;
    int past = c->past_copy; /* code, not stack: a miss here says nothing of the stack's depth */
    int unread = access_mem(NULL, ip, &w0, 0, c) < 0 || access_mem(NULL, ip + 8, &w1, 0, c) < 0;
    c->past_copy = past;
    *yes = !unread && w0 == 0x0f0000000fc0c748ULL && (w1 & 0xff) == 0x05;
    return unread ? -1 : 0;
}

static int is_sigreturn(sample_ctx *c, uint64_t ip, int in_object)
{
    int yes = 0;
    if (!ip || (ip >= c->sp && ip - c->sp < c->len)) { /* (code on the stack: this sample's copy) */
        sigreturn_code(c, ip, &yes);
        return yes;
    }
    if (!in_object)
        return 0; /* JIT memory: the C library's trampoline is in a loaded object, a static binary's in it */
    ip_slot *sl = ip_slot_of(c->u, ip);
    if (!(sl->flags & IP_SIG_KNOWN)) {
        if (sigreturn_code(c, ip, &yes) < 0)
            return 0; /* (not kept: it may be readable at the next sample) */
        sl->flags |= IP_SIG_KNOWN | (yes ? IP_SIG : 0);
    }
    return !!(sl->flags & IP_SIG);
}

/* What tb_unwind asks of each frame's ip: whether it is in a loaded object
 * (*in_object; one module lookup for both questions), and whether it is
 * the signal trampoline a handler returns to (the value). */
static int frame_facts(sample_ctx *c, uint64_t ip, int *in_object)
{
    *in_object = tb_symtab_module(c->u->st, ip) != NULL;
    return is_sigreturn(c, ip, *in_object);
}

/* Is code at [addr, addr+len) in an executable segment of a loaded object? */
static int in_code(tb_unwinder *u, uint64_t addr, size_t len)
{
    const tb_module *m = tb_symtab_module(u->st, addr);
    if (!m || addr + len < addr)
        return 0;
    for (int i = 0; i < m->nseg; i++)
        if (m->seg[i].exec && addr >= m->seg[i].start && addr + len <= m->seg[i].end)
            return 1;
    return 0;
}

/* Do the bytes just before `ret` encode an indirect call (opcode 0xff with
 * /2: `call *%rax`, `call *8(%rbx)`, `call *0x10(%rax,%rcx,8)`, `call
 * *disp(%rip)`, a REX prefix before them or not) that ends at `ret`? The
 * way compiled code calls generated code: through a pointer. */
static int is_indirect_call_end(const unsigned char *b, size_t nb)
{
    for (size_t k = 2; k <= 7 && k <= nb; k++) {
        const unsigned char *p = b + nb - k;
        if (p[0] != 0xff || ((p[1] >> 3) & 7) != 2)
            continue;
        unsigned mod = p[1] >> 6, rm = p[1] & 7;
        size_t len = 2;
        if (mod != 3 && rm == 4) {
            if (k < 3)
                continue;
            len++; /* SIB byte */
            if (mod == 0 && (p[2] & 7) == 5)
                len += 4; /* no base: disp32 */
        }
        if (mod == 0 && rm == 5)
            len += 4; /* rip-relative disp32 */
        else if (mod == 1)
            len += 1;
        else if (mod == 2)
            len += 4;
        if (len == k)
            return 1;
    }
    return 0;
}

/* Is w a return address in a loaded object's code, right after a call:
 * an indirect one (IP_ICALL), or, where direct_ok, a direct one (`call
 * rel32`, IP_DCALL)? Kept per address, like the other answers about code. */
static int after_call(sample_ctx *c, uint64_t w, int direct_ok)
{
    if (w < 8 || !in_code(c->u, w - 8, 8))
        return 0;
    ip_slot *sl = ip_slot_of(c->u, w);
    if (!(sl->flags & IP_CALL_KNOWN)) {
        unsigned char b[8];
        if (read_image(c->u, w - 8, b, sizeof(b)) < 0)
            return 0; /* (not kept: unmapped now, perhaps not at the next sample) */
        sl->flags |= IP_CALL_KNOWN | (is_indirect_call_end(b, sizeof(b)) ? IP_ICALL : 0) | (b[3] == 0xe8 ? IP_DCALL : 0);
    }
    return !!(sl->flags & (direct_ok ? IP_ICALL | IP_DCALL : IP_ICALL));
}

/* JIT code (a frame in no loaded object: oneDNN's kernels, XLA's CPU code,
 * the JVM's, V8's) has no unwind tables, and where it keeps no frame
 * pointer libunwind's guess from %rbp is garbage: such stacks ended at the
 * JIT frame. Its caller is found in the sample's copy of the stack (only
 * there: offsets into it, so no address can wrap or leave it):
 *
 * - a frame-pointer frame: where %rbp lies between sp and the first return
 *   address into compiled code (below), is 8-aligned and holds a saved
 *   %rbp higher up (or 0, the outermost), the word above it is the return
 *   address: into compiled code right after an indirect call, or into more
 *   JIT code (V8's and the JVM interpreter's frames keep the chain: each is
 *   kept as a frame);
 * - else, as debuggers scan a stack without unwind info: the first word
 *   from sp up (within JIT_SCAN_BYTES) that is a return address into a
 *   loaded object's code right after an indirect call (compiled code
 *   reaches generated code through a pointer). The caller's %rbp matters
 *   where it, or a caller of it, keeps frame pointers; generated code often
 *   uses %rbp as a plain register, having pushed the caller's first. So
 *   %rbp and the words between sp and that return address that can be a
 *   frame pointer above it are candidates (is_frame_pointer); where there
 *   are several, a short trial walk from each decides.
 *
 * 1 with the caller's return address, its sp and its %rbp. */
#define JIT_SCAN_BYTES 4096 /* past a kernel's saved registers and locals (oneDNN's: a few hundred bytes) */
#define JIT_BP_CANDIDATES 4

static uint64_t copy_word(const sample_ctx *c, size_t off)
{
    uint64_t w;
    memcpy(&w, c->stack + off, sizeof(w));
    return w;
}

/* Could v be the frame pointer of a frame above the return address at copy
 * offset ret_off: in the copy, above it, and a frame record there (a saved
 * %rbp higher up, then a return address right after a call)? A saved %rbp
 * of 0 (the outermost frame's) is not taken: a pointer into a frame's
 * zeroed locals (ASan keeps one in a register) met a stale return address
 * above it that way. */
static int is_frame_pointer(sample_ctx *c, uint64_t v, size_t ret_off)
{
    if (v < c->sp || (v & 7) || c->len < 16 || v - c->sp > c->len - 16 || v - c->sp <= ret_off)
        return 0;
    size_t vo = (size_t)(v - c->sp);
    uint64_t saved = copy_word(c, vo);
    return saved > v && !(saved & 7) && after_call(c, copy_word(c, vo + 8), 1);
}

/* The callee-saved registers as the frames the cursor stepped over left
 * them, into regs (the others stay) */
static void keep_callee_saved(unw_cursor_t *cur, uint64_t *regs)
{
    static const struct {
        int unw, ours;
    } keep[] = {{UNW_X86_64_RBX, TB_UREG_BX}, {UNW_X86_64_RBP, TB_UREG_BP}, {UNW_X86_64_R12, TB_UREG_R12},
                {UNW_X86_64_R13, TB_UREG_R13}, {UNW_X86_64_R14, TB_UREG_R14}, {UNW_X86_64_R15, TB_UREG_R15}};
    unw_word_t v = 0;
    for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
        if (lu.get_reg(cur, keep[k].unw, &v) == 0)
            regs[keep[k].ours] = v;
}

/* How well a walk goes on from a caller at (sp, ip) with %rbp = bp, the
 * other registers as in regs: 16 when it reaches the outermost frame within
 * 8 steps, else the steps that gave a return address right after a call. */
#define TRIAL_STEPS 8
static int trial_walk(sample_ctx *c, const uint64_t *regs, uint64_t sp, uint64_t ip, uint64_t bp)
{
    uint64_t r[TB_UREG_COUNT];
    memcpy(r, regs, sizeof(r));
    r[TB_UREG_SP] = sp;
    r[TB_UREG_IP] = ip;
    r[TB_UREG_BP] = bp;
    sample_ctx t = *c;
    t.regs = r;
    unw_cursor_t cur;
    if (lu.init_remote(&cur, c->u->as, &t) < 0)
        return 0;
    for (int d = 0; d < TRIAL_STEPS; d++) {
        unw_word_t next = 0;
        t.noinfo = 0;
        int st = lu.step(&cur);
        if (st == 0) /* the outermost frame; or, where the frame had no unwind info, a guess gone wrong */
            return t.noinfo ? d : 2 * TRIAL_STEPS;
        if (st < 0 || lu.get_reg(&cur, UNW_REG_IP, &next) < 0 || !after_call(&t, next, 1))
            return d;
    }
    return TRIAL_STEPS;
}

static int jit_caller(sample_ctx *c, unw_cursor_t *cur, uint64_t *ret, uint64_t *caller_sp, uint64_t *bp)
{
    unw_word_t sp = 0, rbp = 0;
    if (lu.get_reg(cur, UNW_REG_SP, &sp) < 0 || lu.get_reg(cur, UNW_X86_64_RBP, &rbp) < 0)
        return 0;
    if (sp < c->sp || sp - c->sp >= c->len || (sp & 7))
        return 0;
    size_t from = (size_t)(sp - c->sp);
    size_t to = c->len - from > JIT_SCAN_BYTES ? from + JIT_SCAN_BYTES : c->len;
    /* the first return address into compiled code (`to`: none), looked for
     * up to %rbp first where %rbp could be a frame-pointer frame of the JIT's
     * own below it: so a long chain of such frames costs each of them its
     * own size, and the words looked at are not looked at again */
    size_t at = to, o = from;
    int fp = rbp >= sp && !(rbp & 7) && rbp - c->sp < to && rbp - c->sp + 16 <= c->len;
    size_t ro = fp ? (size_t)(rbp - c->sp) : 0, first_stop = fp ? ro + 8 : to;
    for (; at == to && o + 8 <= first_stop; o += 8)
        if (after_call(c, copy_word(c, o), 0))
            at = o;
    if (fp && at == to) {
        uint64_t saved = copy_word(c, ro), r2 = copy_word(c, ro + 8);
        /* (a JIT address: outside every object, not small, not on the stack) */
        int jit = r2 >= 0x10000 && r2 < ((uint64_t)1 << 47) && (r2 < c->sp || r2 - c->sp >= c->len) &&
                  !tb_symtab_module(c->u->st, r2);
        if ((saved == 0 || (saved > rbp && !(saved & 7))) && (jit || after_call(c, r2, 0))) {
            *ret = r2;
            *caller_sp = rbp + 16;
            *bp = saved;
            return 1;
        }
    }
    for (; at == to && o + 8 <= to; o += 8)
        if (after_call(c, copy_word(c, o), 0))
            at = o;
    if (at == to) {
        if (to == c->len && to - from < JIT_SCAN_BYTES)
            c->past_copy = 1; /* (the copy ended first: a bigger one may hold it) */
        return 0;
    }
    *ret = copy_word(c, at);
    *caller_sp = c->sp + at + 8;
    /* %rbp, and the words that could be the frame pointer it saved: a
     * register holding a pointer into a frame's locals can meet a stale
     * frame record there, so where more than one could be, the one whose
     * walk goes furthest (up to the outermost frame) is taken */
    uint64_t cand[JIT_BP_CANDIDATES];
    int ncand = 0;
    if (is_frame_pointer(c, rbp, at))
        cand[ncand++] = rbp;
    for (size_t b = at; b > from && ncand < JIT_BP_CANDIDATES; b -= 8) {
        uint64_t v = copy_word(c, b - 8);
        int seen = 0;
        for (int k = 0; k < ncand; k++)
            seen |= cand[k] == v;
        if (!seen && is_frame_pointer(c, v, at))
            cand[ncand++] = v;
    }
    *bp = ncand ? cand[0] : rbp;
    if (ncand > 1) {
        uint64_t r[TB_UREG_COUNT];
        memcpy(r, c->regs, sizeof(r));
        keep_callee_saved(cur, r);
        int best = -1;
        for (int k = 0; k < ncand; k++) {
            int d = trial_walk(c, r, *caller_sp, *ret, cand[k]);
            if (d > best) {
                best = d;
                *bp = cand[k];
            }
        }
    }
    return 1;
}

/* Restart the DWARF walk at a caller found by hand (over a Python
 * trampoline, over JIT code): its return address and sp; the callee-saved
 * registers as the frames below left them, %rbp as given where bp is set. */
static int restart_at(unw_cursor_t *cur, sample_ctx *c, uint64_t *regs, uint64_t sp, uint64_t ret,
                      const uint64_t *bp)
{
    keep_callee_saved(cur, regs);
    if (bp)
        regs[TB_UREG_BP] = *bp;
    regs[TB_UREG_SP] = sp;
    regs[TB_UREG_IP] = ret;
    return lu.init_remote(cur, c->u->as, c) < 0 ? -1 : 0;
}

int tb_unwind(tb_unwinder *u, const uint64_t *regs_in, const void *stack, size_t stack_len, uint64_t *ips,
              int max, int *failed)
{
    *failed = 0;
    if (max <= 0)
        return 0;
    uint64_t regs[TB_UREG_COUNT];
    memcpy(regs, regs_in, sizeof(regs));
    sample_ctx c = {u, regs, stack, regs[TB_UREG_SP], stack_len, 0, 0};
    int n = 0;
    ips[n++] = regs[TB_UREG_IP];
    if (!u)
        return n;
    unw_cursor_t cur;
    int in_object;
    /* the frame last recorded is the signal trampoline a handler returns to */
    int after_signal = frame_facts(&c, regs[TB_UREG_IP], &in_object);
    in_unwind = 1;
    if (lu.init_remote(&cur, u->as, &c) < 0) {
        *failed = TB_UNWIND_FAILED;
        in_unwind = 0;
        return n;
    }
    while (n < max) {
        unw_word_t ip = 0, sp = 0, ret = 0, caller_sp = 0, bp = 0;
        if (!in_object && !after_signal && jit_caller(&c, &cur, &ret, &caller_sp, &bp)) {
            /* a JIT frame: on from its caller, found on the stack */
            ips[n++] = ret;
            if (restart_at(&cur, &c, regs, caller_sp, ret, &bp) < 0) {
                *failed = TB_UNWIND_FAILED;
                break;
            }
            after_signal = frame_facts(&c, ret, &in_object);
            continue;
        }
        int r = lu.step(&cur);
        if (r == 0)
            break;
        if (r < 0) {
            *failed = TB_UNWIND_FAILED;
            break;
        }
        if (lu.get_reg(&cur, UNW_REG_IP, &ip) < 0) {
            *failed = TB_UNWIND_FAILED;
            break;
        }
        if (ip == 0)
            break;
        /* the frame a signal interrupted holds the interrupted pc, not a
         * return address: stored + 1, so that the ip - 1 every caller
         * looks up is the pc itself (at a function's first instruction,
         * pc - 1 is the function before it) */
        ips[n++] = after_signal ? ip + 1 : ip;
        after_signal = frame_facts(&c, ip, &in_object);
        int tramp = n < max && !after_signal ? in_py_trampoline(u, ip, in_object) : 0;
        if (tramp) {
            /* step over the trampoline by hand: its caller's return
             * address is at sp+8 and the caller's sp is sp+16; callee-saved
             * registers are as the frames below left them, but %rbp in the
             * second form: the caller's is the one saved at sp (left at
             * the trampoline's, the walk loses the caller's frame base or
             * the value it keeps there, and ends a frame or two later) */
            if (lu.get_reg(&cur, UNW_REG_SP, &sp) < 0 || access_mem(u->as, sp + 8, &ret, 0, &c) < 0 ||
                (tramp == 2 && access_mem(u->as, sp, &bp, 0, &c) < 0)) {
                *failed = TB_UNWIND_FAILED;
                break;
            }
            if (ret == 0)
                break;
            ips[n++] = ret;
            if (restart_at(&cur, &c, regs, sp + 16, ret, tramp == 2 ? &bp : NULL) < 0) {
                *failed = TB_UNWIND_FAILED;
                break;
            }
            after_signal = frame_facts(&c, ret, &in_object);
        }
    }
    in_unwind = 0;
    if (*failed && c.past_copy)
        *failed = TB_UNWIND_CUT;
    return n;
}

#else /* !TBPROF_HAVE_UNWIND */

const char *tb_unwinder_why(void)
{
#if defined(__x86_64__)
    return "built without libunwind";
#else
    return "stack copies are unwound on x86-64 only";
#endif
}
tb_unwinder *tb_unwinder_new(tb_symtab *st)
{
    (void)st;
    return NULL;
}
void tb_unwinder_free(tb_unwinder *u) { (void)u; }
void tb_unwinder_flush(tb_unwinder *u) { (void)u; }
int tb_unwind_sigmask_state(void) { return 0; }
int tb_unwind_py_trampoline_form(tb_unwinder *u, uint64_t ip)
{
    (void)u;
    (void)ip;
    return 0;
}
int tb_unwind(tb_unwinder *u, const uint64_t *regs, const void *stack, size_t stack_len, uint64_t *ips, int max,
              int *failed)
{
    (void)u;
    (void)stack;
    (void)stack_len;
    *failed = TB_UNWIND_FAILED;
    if (max <= 0)
        return 0;
    ips[0] = regs[TB_UREG_IP];
    return 1;
}

#endif
