/* symbols.h - address -> function name for the CPU sampler.
 *
 * A tb_symtab knows the objects mapped in this process (dl_iterate_phdr:
 * the executable, shared libraries, the vDSO) and, lazily, the ELF symbol
 * tables (.symtab and .dynsym) of each object the first time an address in
 * it is looked up; each table is read once and cached until the object goes
 * away. When the file at the object's path is no longer the one mapped (a
 * library deleted or replaced since it was loaded: its GNU build IDs
 * differ, or it is gone; one loaded from a memfd), the names come from the
 * mapped image's own dynamic symbol table instead: the exported functions. Addresses outside every object are looked up in the JIT map
 * /tmp/perf-<pid>.map (perfmap.h), which CPython 3.12+ writes while its perf
 * trampoline is on (`py::<function>:<file>` entries).
 *
 * C++ names are demangled with __cxa_demangle when the process already has
 * it (libstdc++ loaded); tbprof itself never links libstdc++.
 *
 * Not thread-safe: the agent thread owns a tb_symtab. Nothing here aborts;
 * an object whose file cannot be read just has no names.
 */
#ifndef TBPROF_AGENT_SYMBOLS_H
#define TBPROF_AGENT_SYMBOLS_H

#include <stddef.h>
#include <stdint.h>

#define TB_MOD_MAX_SEGS 8

/* One mapped object (from dl_iterate_phdr). */
typedef struct tb_module {
    char *path;      /* file path ("/proc/self/exe" target for the executable) */
    const char *base_name; /* points into path, after the last '/' */
    uint64_t bias;   /* load bias: runtime address = file vaddr + bias */
    uint64_t start, end; /* lowest / highest runtime address of its PT_LOADs */
    struct {
        uint64_t start, end; /* runtime addresses */
        int exec;
    } seg[TB_MOD_MAX_SEGS];
    int nseg;
    uint64_t eh_frame_hdr;     /* runtime address of PT_GNU_EH_FRAME, 0 if none */
    uint64_t eh_frame_hdr_len;
    uint64_t dynamic;          /* runtime address of PT_DYNAMIC, 0 if none */
    struct {
        uint64_t start, len;   /* runtime address of a PT_NOTE */
    } note[2];
    int nnote;
    int is_vdso;
    /* the module list's generations it was in: [gen_from, gen_to); gen_to
     * 0 while it is still mapped */
    uint32_t gen_from, gen_to;
    /* symbols, loaded on first lookup (private) */
    int syms_loaded;
    struct tb_elfsyms *syms;
} tb_module;

typedef struct tb_symtab tb_symtab;

tb_symtab *tb_symtab_new(void);
void tb_symtab_free(tb_symtab *st);

/* Re-read the list of mapped objects when it changed (cheap when it did
 * not) and read what was appended to the perf map. Returns 1 when the object
 * list changed (unwind caches must be flushed), else 0. */
int tb_symtab_refresh(tb_symtab *st);

/* Whether objects were loaded or unloaded since the list was last read
 * (dl_iterate_phdr's counters; one call that stops at the first object):
 * cheap enough for every poll. Always 1 where the C library keeps no
 * counters. */
int tb_symtab_stale(tb_symtab *st);
/* The object holding runtime address `addr` (inside one of its PT_LOAD
 * segments), or NULL. */
const tb_module *tb_symtab_module(tb_symtab *st, uint64_t addr);

/* Is [addr, addr+len) inside a loaded object's segment (safe to read)? */
int tb_symtab_readable(tb_symtab *st, uint64_t addr, size_t len);

/* Name of the function holding `addr`: demangled, owned by `st` (valid
 * until tb_symtab_free). NULL when unknown; *module then (or always, when
 * non-NULL) receives the object's base name, or NULL for an address in no
 * object (JIT code without a perf map entry). */
const char *tb_symtab_lookup(tb_symtab *st, uint64_t addr, const char **module);

/* The module list's generation: 1 once read, + 1 at each refresh that
 * found objects loaded or unloaded. */
uint32_t tb_symtab_generation(tb_symtab *st);
/* tb_symtab_lookup() of an address recorded at generation `gen` (a stack
 * unwound then): named after the object mapped there at that time, also
 * when it has been unloaded since (dlclose) or another one mapped at the
 * same place. Objects unloaded are remembered (up to TB_SYMTAB_RETIRED of
 * them, the oldest forgotten first) for as long as `st` lives. */
const char *tb_symtab_lookup_gen(tb_symtab *st, uint64_t addr, uint32_t gen, const char **module);
#define TB_SYMTAB_RETIRED 256

/* Demangle a C++ name with libstdc++'s __cxa_demangle: the process's (also
 * one loaded RTLD_LOCAL, as Python loads C++ extensions), else loaded on
 * first use. Returns a malloc()ed string or NULL (not mangled, or no
 * libstdc++ on the machine). Thread-safe. */
char *tb_demangle(const char *name);

/* The function symbols of one ELF image in memory, as tb_symtab reads each
 * object's file: bounds-checked for any bytes. Exposed for tests and
 * fuzzing. NULL when the bytes are no 64-bit ELF (or out of memory); names
 * point into img, which must outlive the table. */
typedef struct tb_elfsyms tb_elfsyms;
tb_elfsyms *tb_elfsyms_parse(const void *img, size_t len);
void tb_elfsyms_free(tb_elfsyms *es);
size_t tb_elfsyms_count(const tb_elfsyms *es);
/* The i-th function in address order (one per address: the best-named of
 * aliases), with its file vaddr and size (> 0; a sizeless symbol extends
 * to the next one, at most 64 KiB). */
const char *tb_elfsyms_at(const tb_elfsyms *es, size_t i, uint64_t *start, uint64_t *size);
/* The function covering file vaddr a, as a lookup finds it: the nearest
 * start at or below a that spans it, looking back over up to 7 functions
 * that start inside another one; NULL if none. */
const char *tb_elfsyms_find(const tb_elfsyms *es, uint64_t a, uint64_t *start, uint64_t *size);

/* What the debug-file lookup reads from an object's image (tests,
 * fuzzing): its build ID (*id, the length returned; 0: none) and its
 * .gnu_debuglink name (*link, NUL-terminated inside img; NULL: none) with
 * the CRC-32 that link records. */
size_t tb_elf_ids(const void *img, size_t len, const unsigned char **id, const char **link, uint32_t *crc);

/* Override the perf map path (tests); NULL restores /tmp/perf-<pid>.map. */
void tb_symtab_set_perfmap_path(tb_symtab *st, const char *path);

#endif
