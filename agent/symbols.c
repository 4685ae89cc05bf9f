/* symbols.c - see symbols.h. */
#include "symbols.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "perfmap.h"
#include "util.h"

typedef struct tb_sym {
    uint64_t addr; /* file vaddr */
    uint64_t size;
    const char *name;
    int rank; /* lower is better among aliases */
} tb_sym;

struct tb_elfsyms {
    void *map; /* mmapped file, or NULL for an in-memory image */
    size_t map_len;
    char *strs; /* names copied from a loaded image (owned), or NULL */
    char *unversioned; /* "name" of the "name@VERSION" symbols (owned), or NULL */
    tb_sym *s;
    size_t n;
    int symtab; /* a file's own .symtab was read (not only .dynsym: not stripped) */
};

typedef struct demangle_slot {
    const char *key;
    char *val;
} demangle_slot;

struct tb_symtab {
    tb_module **mods; /* sorted by start */
    size_t nmods;
    uint32_t gen;
    tb_module **retired; /* unloaded objects, oldest first */
    size_t nretired;
    unsigned long long adds, subs;
    int have_list;
    tb_perfmap pm;
    char *pm_path; /* NULL: default */
    int pm_pid;
    int pm_refused; /* warned that the map is not ours */
    demangle_slot *dm;
    size_t ndm, capdm;
    /* demangled names when the table is full: owned, freed at the end */
};

/* ---- ELF parsing (bounds-checked: files may be anything) -------------------- */

static int sym_cmp(const void *a, const void *b)
{
    const tb_sym *x = a, *y = b;
    if (x->addr != y->addr)
        return x->addr < y->addr ? -1 : 1;
    return x->rank - y->rank;
}

static int leading_underscores(const char *s)
{
    int n = 0;
    while (s[n] == '_')
        n++;
    return n;
}

static void add_symbol_array(const unsigned char *symbytes, size_t count, const char *strtab, size_t strsz,
                             tb_sym **out, size_t *n, size_t *cap);

static void add_symbols(const unsigned char *img, size_t len, const Elf64_Shdr *sh, unsigned shnum,
                        unsigned idx, tb_sym **out, size_t *n, size_t *cap)
{
    const Elf64_Shdr *s = &sh[idx];
    if (s->sh_entsize != sizeof(Elf64_Sym) || s->sh_link >= shnum)
        return;
    if (s->sh_offset > len || s->sh_size > len - s->sh_offset)
        return;
    const Elf64_Shdr *str = &sh[s->sh_link];
    if (str->sh_offset > len || str->sh_size > len - str->sh_offset || str->sh_size == 0)
        return;
    const char *strtab = (const char *)img + str->sh_offset;
    size_t strsz = str->sh_size;
    if (strtab[strsz - 1] != '\0')
        return;
    add_symbol_array(img + s->sh_offset, s->sh_size / sizeof(Elf64_Sym), strtab, strsz, out, n, cap);
}

/* The function symbols of `count` Elf64_Syms at `symbytes`, named in
 * strtab[0, strsz) (which ends in a NUL). */
static void add_symbol_array(const unsigned char *symbytes, size_t count, const char *strtab, size_t strsz,
                             tb_sym **out, size_t *n, size_t *cap)
{
    const Elf64_Sym *syms = (const Elf64_Sym *)symbytes;
    for (size_t i = 0; i < count; i++) {
        Elf64_Sym sym;
        memcpy(&sym, &syms[i], sizeof(sym));
        int type = ELF64_ST_TYPE(sym.st_info);
        if (type != STT_FUNC && type != STT_GNU_IFUNC)
            continue;
        if (sym.st_shndx == SHN_UNDEF || sym.st_value == 0 || sym.st_name >= strsz)
            continue;
        const char *name = strtab + sym.st_name;
        if (!*name)
            continue;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 1024;
            tb_sym *ns = realloc(*out, nc * sizeof(*ns));
            if (!ns)
                return;
            *out = ns;
            *cap = nc;
        }
        int bind = ELF64_ST_BIND(sym.st_info);
        int rank = (bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 100 : 200) + leading_underscores(name) * 10;
        /* a .symtab's versioned aliases (libc's debug file): the plain name
         * first, then the default version (@@), then an old one (@) */
        const char *at = strchr(name, '@');
        if (at)
            rank += at[1] == '@' ? 1 : 2;
        (*out)[(*n)++] = (tb_sym){sym.st_value, sym.st_size, name, rank};
    }
}

static tb_elfsyms *finish_syms(tb_sym *s, size_t n);

/* Parse the symbol tables of an ELF image in memory. */
static tb_elfsyms *parse_elf(const unsigned char *img, size_t len)
{
    if (len < sizeof(Elf64_Ehdr) || memcmp(img, ELFMAG, SELFMAG) != 0 || img[EI_CLASS] != ELFCLASS64)
        return NULL;
    Elf64_Ehdr eh;
    memcpy(&eh, img, sizeof(eh));
    if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0 || eh.e_shoff > len ||
        (size_t)eh.e_shnum * sizeof(Elf64_Shdr) > len - eh.e_shoff)
        return NULL;
    Elf64_Shdr *sh = malloc((size_t)eh.e_shnum * sizeof(*sh));
    if (!sh)
        return NULL;
    memcpy(sh, img + eh.e_shoff, (size_t)eh.e_shnum * sizeof(*sh));
    tb_sym *s = NULL;
    size_t n = 0, cap = 0;
    int symtab = 0;
    for (unsigned i = 0; i < eh.e_shnum; i++)
        if (sh[i].sh_type == SHT_SYMTAB || sh[i].sh_type == SHT_DYNSYM) {
            size_t before = n;
            add_symbols(img, len, sh, eh.e_shnum, i, &s, &n, &cap);
            symtab |= sh[i].sh_type == SHT_SYMTAB && n > before;
        }
    free(sh);
    tb_elfsyms *es = finish_syms(s, n);
    if (es)
        es->symtab = symtab;
    return es;
}

/* The names kept as "name@VERSION" ("pthread_cond_wait@@GLIBC_2.3.2"),
 * named "name" from a copy es owns (left as they are without memory). */
static void unversion(tb_elfsyms *es, tb_sym *s, size_t n)
{
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        const char *at = strchr(s[i].name, '@');
        if (at && at > s[i].name)
            need += (size_t)(at - s[i].name) + 1;
    }
    if (!need || !(es->unversioned = malloc(need)))
        return;
    char *w = es->unversioned;
    for (size_t i = 0; i < n; i++) {
        const char *at = strchr(s[i].name, '@');
        if (!at || at == s[i].name)
            continue;
        size_t len = (size_t)(at - s[i].name);
        memcpy(w, s[i].name, len);
        w[len] = '\0';
        s[i].name = w;
        w += len + 1;
    }
}

/* The table of the n symbols collected in s (taken over): sorted, one per
 * address (the best-ranked name), sizeless ones extended. */
static tb_elfsyms *finish_syms(tb_sym *s, size_t n)
{
    tb_elfsyms *es = calloc(1, sizeof(*es));
    if (!es) {
        free(s);
        return NULL;
    }
    if (n) {
        qsort(s, n, sizeof(*s), sym_cmp);
        /* keep the best-ranked of each address */
        size_t w = 0;
        for (size_t i = 0; i < n; i++)
            if (w == 0 || s[w - 1].addr != s[i].addr)
                s[w++] = s[i];
            else if (s[i].size > s[w - 1].size && s[w - 1].size == 0)
                s[w - 1].size = s[i].size;
        n = w;
        unversion(es, s, n);
        /* sizeless symbols extend to the next one (capped) */
        for (size_t i = 0; i < n; i++)
            if (s[i].size == 0) {
                uint64_t next = i + 1 < n ? s[i + 1].addr : s[i].addr + 4096;
                s[i].size = next - s[i].addr > 65536 ? 65536 : next - s[i].addr;
            }
    }
    es->s = s;
    es->n = n;
    return es;
}

static void free_syms(tb_elfsyms *es);

enum {
    FILE_KEEP_EMPTY = 1, /* an ELF file with no function symbol (a stripped executable) is kept, mapped */
    FILE_OWNED = 2,      /* only a file of this user or root (a debug file found by name) */
};

/* The function symbols of the ELF file at path, its image mapped (names
 * point into it); NULL where it is not one (or has none, without
 * FILE_KEEP_EMPTY). */
static tb_elfsyms *load_file_syms(const char *path, int flags)
{
    /* (O_NONBLOCK: a FIFO planted at the path is not waited on) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(Elf64_Ehdr) ||
        ((flags & FILE_OWNED) && st.st_uid != geteuid() && st.st_uid != 0)) {
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return NULL;
    tb_elfsyms *es = parse_elf(map, (size_t)st.st_size);
    if (!es && (flags & FILE_KEEP_EMPTY) && memcmp(map, ELFMAG, SELFMAG) == 0)
        es = calloc(1, sizeof(*es)); /* (no section headers: its build ID may still name a debug file) */
    if (!es || (es->n == 0 && !(flags & FILE_KEEP_EMPTY))) {
        free_syms(es);
        munmap(map, (size_t)st.st_size);
        return NULL;
    }
    es->map = map;
    es->map_len = (size_t)st.st_size;
    return es;
}

static void free_syms(tb_elfsyms *es)
{
    if (!es)
        return;
    if (es->map)
        munmap(es->map, es->map_len);
    free(es->strs);
    free(es->unversioned);
    free(es->s);
    free(es);
}

#define FIND_BACK 8

static const tb_sym *find_sym(const tb_elfsyms *es, uint64_t a)
{
    size_t lo = 0, hi = es->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (es->s[mid].addr <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* the nearest start at or below a; when that function ends before a,
     * a few earlier ones that may span it (a function with a smaller one
     * typed inside it: an extra entry point, a local label) */
    for (size_t k = lo, steps = 0; k > 0 && steps < FIND_BACK; k--, steps++) {
        const tb_sym *s = &es->s[k - 1];
        if (a - s->addr < s->size)
            return s;
    }
    return NULL;
}

tb_elfsyms *tb_elfsyms_parse(const void *img, size_t len) { return parse_elf(img, len); }
void tb_elfsyms_free(tb_elfsyms *es) { free_syms(es); }
size_t tb_elfsyms_count(const tb_elfsyms *es) { return es ? es->n : 0; }

static const char *sym_out(const tb_sym *s, uint64_t *start, uint64_t *size)
{
    if (!s)
        return NULL;
    if (start)
        *start = s->addr;
    if (size)
        *size = s->size;
    return s->name;
}

const char *tb_elfsyms_at(const tb_elfsyms *es, size_t i, uint64_t *start, uint64_t *size)
{
    return sym_out(es && i < es->n ? &es->s[i] : NULL, start, size);
}

const char *tb_elfsyms_find(const tb_elfsyms *es, uint64_t a, uint64_t *start, uint64_t *size)
{
    return sym_out(es ? find_sym(es, a) : NULL, start, size);
}

/* ---- module list ---------------------------------------------------------------- */

static void free_module(tb_module *m)
{
    if (!m)
        return;
    free_syms(m->syms);
    free(m->path);
    free(m);
}

/* dl_iterate_phdr's counters of objects loaded and unloaded, which every
 * entry carries (left 0, 0 where the C library keeps none). */
typedef struct dl_counts {
    unsigned long long adds, subs;
} dl_counts;

static void read_counts(const struct dl_phdr_info *info, size_t size, dl_counts *v)
{
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
        v->adds = info->dlpi_adds;
        v->subs = info->dlpi_subs;
    }
}

typedef struct collect_ctx {
    tb_module **mods;
    size_t n, cap;
    dl_counts counts;
    int first;
} collect_ctx;

static int phdr_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    collect_ctx *c = arg;
    if (c->first) {
        c->first = 0;
        read_counts(info, size, &c->counts);
    }
    tb_module *m = calloc(1, sizeof(*m));
    if (!m)
        return 0;
    m->bias = info->dlpi_addr;
    m->start = UINT64_MAX;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && ph->p_memsz) {
            uint64_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
            if (m->nseg < TB_MOD_MAX_SEGS) {
                m->seg[m->nseg].start = s;
                m->seg[m->nseg].end = e;
                m->seg[m->nseg].exec = (ph->p_flags & PF_X) != 0;
                m->nseg++;
            }
            if (s < m->start)
                m->start = s;
            if (e > m->end)
                m->end = e;
        } else if (ph->p_type == PT_GNU_EH_FRAME) {
            m->eh_frame_hdr = info->dlpi_addr + ph->p_vaddr;
            m->eh_frame_hdr_len = ph->p_memsz;
        } else if (ph->p_type == PT_DYNAMIC) {
            m->dynamic = info->dlpi_addr + ph->p_vaddr;
        } else if (ph->p_type == PT_NOTE && m->nnote < 2) {
            m->note[m->nnote].start = info->dlpi_addr + ph->p_vaddr;
            m->note[m->nnote].len = ph->p_memsz;
            m->nnote++;
        }
    }
    if (!m->nseg) {
        free(m);
        return 0;
    }
    const char *name = info->dlpi_name;
    char exe[4096];
    if (!name || !*name) {
        ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        exe[k > 0 ? k : 0] = '\0';
        name = k > 0 ? exe : "[exe]";
    }
    m->is_vdso = strstr(name, "vdso") != NULL && name[0] != '/';
    m->path = strdup(name);
    if (!m->path) {
        free(m);
        return 0;
    }
    const char *slash = strrchr(m->path, '/');
    m->base_name = slash ? slash + 1 : m->path;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 64;
        tb_module **nm = realloc(c->mods, nc * sizeof(*nm));
        if (!nm) {
            free_module(m);
            return 0;
        }
        c->mods = nm;
        c->cap = nc;
    }
    c->mods[c->n++] = m;
    return 0;
}

static int mod_cmp(const void *a, const void *b)
{
    const tb_module *x = *(tb_module *const *)a, *y = *(tb_module *const *)b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* The file mapped at a module's first segment, from /proc/self/maps, for a
 * module the loader knows by a relative name (dlopen("./libx.so") keeps
 * it): the name means another file, or none, once the job has chdir()ed. */
static void absolute_path(tb_module *m)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[4096 + 128];
    while (fgets(line, sizeof(line), f)) {
        unsigned long long a, b;
        int at = 0;
        if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &a, &b, &at) != 2 || !at)
            continue;
        if (m->seg[0].start < a || m->seg[0].start >= b)
            continue;
        char *path = line + at;
        path[strcspn(path, "\n")] = '\0';
        size_t len = strlen(path);
        /* a file since deleted has no symbols to read either way */
        if (path[0] == '/' && !(len > 10 && strcmp(path + len - 10, " (deleted)") == 0)) {
            char *p = strdup(path);
            if (p) {
                free(m->path);
                m->path = p;
                const char *slash = strrchr(p, '/');
                m->base_name = slash + 1;
            }
        }
        break;
    }
    fclose(f);
}

static void dm_clear(tb_symtab *st);

/* Keep an unloaded object (its symbols, loaded or to load from its file)
 * for the samples taken in it; the oldest goes when too many are kept. */
static void retire(tb_symtab *st, tb_module *m)
{
    if (!st->retired) {
        st->retired = calloc(TB_SYMTAB_RETIRED, sizeof(*st->retired));
        if (!st->retired) {
            free_module(m);
            return;
        }
    }
    if (st->nretired == TB_SYMTAB_RETIRED) {
        free_module(st->retired[0]);
        memmove(st->retired, st->retired + 1, (TB_SYMTAB_RETIRED - 1) * sizeof(*st->retired));
        st->nretired--;
        dm_clear(st); /* keyed by name pointers, some of them just freed */
    }
    st->retired[st->nretired++] = m;
}

static int refresh_modules(tb_symtab *st)
{
    if (!tb_symtab_stale(st)) /* without building the list to compare */
        return 0;
    collect_ctx c = {.first = 1};
    dl_iterate_phdr(phdr_cb, &c);
    /* (the counters equal here only where the C library keeps none) */
    if (st->have_list && c.counts.adds == st->adds && c.counts.subs == st->subs && c.n == st->nmods) {
        for (size_t i = 0; i < c.n; i++)
            free_module(c.mods[i]);
        free(c.mods);
        return 0;
    }
    for (size_t i = 0; i < c.n; i++)
        if (c.mods[i]->path[0] != '/' && !c.mods[i]->is_vdso)
            absolute_path(c.mods[i]);
    qsort(c.mods, c.n, sizeof(*c.mods), mod_cmp);
    uint32_t gen = st->gen + 1;
    /* keep already-loaded symbols of objects still mapped at the same place */
    for (size_t i = 0; i < c.n; i++) {
        c.mods[i]->gen_from = gen;
        for (size_t j = 0; j < st->nmods; j++) {
            tb_module *o = st->mods[j];
            if (o && o->bias == c.mods[i]->bias && o->start == c.mods[i]->start &&
                strcmp(o->path, c.mods[i]->path) == 0) {
                c.mods[i]->syms = o->syms;
                c.mods[i]->syms_loaded = o->syms_loaded;
                c.mods[i]->gen_from = o->gen_from;
                o->syms = NULL;
                free_module(o);
                st->mods[j] = NULL;
                break;
            }
        }
    }
    /* the others were unloaded: samples taken in them before are named
     * after them still (tb_symtab_lookup_gen) */
    for (size_t j = 0; j < st->nmods; j++)
        if (st->mods[j]) {
            st->mods[j]->gen_to = gen;
            retire(st, st->mods[j]);
        }
    free(st->mods);
    st->mods = c.mods;
    st->nmods = c.n;
    st->gen = gen;
    st->adds = c.counts.adds;
    st->subs = c.counts.subs;
    st->have_list = 1;
    return 1;
}

/* ---- public ----------------------------------------------------------------------- */

tb_symtab *tb_symtab_new(void)
{
    tb_symtab *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    tb_perfmap_init(&st->pm, NULL);
    return st;
}

void tb_symtab_free(tb_symtab *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->nmods; i++)
        free_module(st->mods[i]);
    free(st->mods);
    for (size_t i = 0; i < st->nretired; i++)
        free_module(st->retired[i]);
    free(st->retired);
    tb_perfmap_free(&st->pm);
    free(st->pm_path);
    for (size_t i = 0; i < st->capdm; i++)
        free(st->dm[i].val);
    free(st->dm);
    free(st);
}

void tb_symtab_set_perfmap_path(tb_symtab *st, const char *path)
{
    free(st->pm_path);
    st->pm_path = path ? strdup(path) : NULL;
    tb_perfmap_free(&st->pm);
    tb_perfmap_init(&st->pm, NULL);
    st->pm_pid = 0;
}

static void refresh_perfmap(tb_symtab *st)
{
    int pid = (int)getpid();
    if (!st->pm.path || (!st->pm_path && st->pm_pid != pid)) {
        /* first use, or a forked child: start over with our own pid's map */
        char path[64];
        tb_perfmap_free(&st->pm);
        if (st->pm_path) {
            tb_perfmap_init(&st->pm, st->pm_path);
        } else {
            snprintf(path, sizeof(path), "/tmp/perf-%d.map", pid);
            tb_perfmap_init(&st->pm, path);
        }
        st->pm_pid = pid;
        st->pm_refused = 0;
    }
    if (tb_perfmap_update(&st->pm) == -EPERM && !st->pm_refused) {
        st->pm_refused = 1;
        tb_warn("JIT map %s not read: not a regular file of this user (or root); Python frames in it stay "
                "unnamed", st->pm.path);
    }
}

static int first_counts_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    read_counts(info, size, arg);
    return 1; /* the first object carries the counts: stop */
}

int tb_symtab_stale(tb_symtab *st)
{
    dl_counts v = {0, 0};
    dl_iterate_phdr(first_counts_cb, &v);
    return !st->have_list || v.adds != st->adds || v.subs != st->subs || (!v.adds && !v.subs);
}

int tb_symtab_refresh(tb_symtab *st)
{
    int changed = refresh_modules(st);
    refresh_perfmap(st);
    return changed;
}

const tb_module *tb_symtab_module(tb_symtab *st, uint64_t addr)
{
    if (!st->have_list)
        refresh_modules(st);
    size_t lo = 0, hi = st->nmods;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->mods[mid]->start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* objects do not overlap, but check a couple in case of odd layouts */
    for (size_t k = lo, steps = 0; k > 0 && steps < 2; k--, steps++) {
        tb_module *m = st->mods[k - 1];
        if (addr >= m->end)
            continue;
        for (int i = 0; i < m->nseg; i++)
            if (addr >= m->seg[i].start && addr < m->seg[i].end)
                return m;
    }
    return NULL;
}

int tb_symtab_readable(tb_symtab *st, uint64_t addr, size_t len)
{
    const tb_module *m = tb_symtab_module(st, addr);
    if (!m)
        return 0;
    for (int i = 0; i < m->nseg; i++)
        if (addr >= m->seg[i].start && addr + len <= m->seg[i].end && addr + len >= addr)
            return 1;
    return 0;
}

/* ---- the file at a module's path: still the one mapped? ------------------------- */

/* The GNU build ID in notes[0, len): its length (*id set), or 0. */
static size_t note_build_id(const unsigned char *notes, size_t len, const unsigned char **id)
{
    size_t off = 0;
    while (off <= len && len - off >= 12) { /* (a last note's padding may end past len) */
        uint32_t hdr[3]; /* namesz, descsz, type */
        memcpy(hdr, notes + off, sizeof(hdr));
        size_t name = off + 12, desc = name + (((size_t)hdr[0] + 3) & ~(size_t)3);
        if (hdr[0] > len || hdr[1] > len || desc > len || len - desc < hdr[1])
            return 0;
        if (hdr[2] == NT_GNU_BUILD_ID && hdr[0] == 4 && memcmp(notes + name, "GNU", 4) == 0 && hdr[1]) {
            *id = notes + desc;
            return hdr[1];
        }
        off = desc + (((size_t)hdr[1] + 3) & ~(size_t)3);
    }
    return 0;
}

/* The build ID of the ELF file image img[0, len): from its PT_NOTE
 * segments, else its note sections (a debug file written without the
 * segment). */
static size_t file_build_id(const unsigned char *img, size_t len, const unsigned char **id)
{
    Elf64_Ehdr eh;
    if (!img || len < sizeof(eh))
        return 0;
    memcpy(&eh, img, sizeof(eh));
    for (int sections = 0; sections < 2; sections++) {
        size_t ent = sections ? sizeof(Elf64_Shdr) : sizeof(Elf64_Phdr);
        uint64_t table = sections ? eh.e_shoff : eh.e_phoff;
        unsigned num = sections ? eh.e_shnum : eh.e_phnum;
        if (!num || (sections ? eh.e_shentsize : eh.e_phentsize) != ent || table > len ||
            (size_t)num * ent > len - table)
            continue;
        for (unsigned i = 0; i < num; i++) {
            uint64_t at, size;
            int note;
            if (sections) {
                Elf64_Shdr sh;
                memcpy(&sh, img + table + (size_t)i * ent, sizeof(sh));
                note = sh.sh_type == SHT_NOTE, at = sh.sh_offset, size = sh.sh_size;
            } else {
                Elf64_Phdr ph;
                memcpy(&ph, img + table + (size_t)i * ent, sizeof(ph));
                note = ph.p_type == PT_NOTE, at = ph.p_offset, size = ph.p_filesz;
            }
            if (!note || at > len || size > len - at)
                continue;
            size_t n = note_build_id(img + at, (size_t)size, id);
            if (n)
                return n;
        }
    }
    return 0;
}

/* 0 when the module's mapped image and the file read for it carry
 * different build IDs (the file was replaced since it was loaded); 1 when
 * they match or either has none. */
static int same_build(tb_symtab *st, const tb_module *m, const tb_elfsyms *es)
{
    const unsigned char *fid = NULL;
    size_t fn = file_build_id(es->map, es->map_len, &fid);
    if (!fn)
        return 1;
    for (int i = 0; i < m->nnote; i++) {
        if (!m->note[i].len || !tb_symtab_readable(st, m->note[i].start, (size_t)m->note[i].len))
            continue;
        unsigned char notes[4096]; /* (a build ID note is 36 bytes; the notes before it few) */
        size_t len = m->note[i].len < sizeof(notes) ? (size_t)m->note[i].len : sizeof(notes);
        if (tb_self_read(notes, m->note[i].start, len, 1) < 0)
            continue; /* unloaded meanwhile */
        const unsigned char *mid = NULL;
        size_t mn = note_build_id(notes, len, &mid);
        if (mn)
            return mn == fn && memcmp(mid, fid, fn) == 0;
    }
    return 1;
}

/* ---- a stripped object's symbols from its separate debug file ------------------- */

/* The .gnu_debuglink of the ELF file image img[0, len): the debug file's
 * name (NUL-terminated inside the image) and its CRC-32, or NULL. */
static const char *debuglink(const unsigned char *img, size_t len, uint32_t *crc)
{
    Elf64_Ehdr eh;
    if (!img || len < sizeof(eh))
        return NULL;
    memcpy(&eh, img, sizeof(eh));
    if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shoff > len || eh.e_shstrndx >= eh.e_shnum ||
        (size_t)eh.e_shnum * sizeof(Elf64_Shdr) > len - eh.e_shoff)
        return NULL;
    Elf64_Shdr names;
    memcpy(&names, img + eh.e_shoff + (size_t)eh.e_shstrndx * sizeof(names), sizeof(names));
    static const char want[] = ".gnu_debuglink";
    if (names.sh_offset > len || names.sh_size > len - names.sh_offset || names.sh_size < sizeof(want))
        return NULL;
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        Elf64_Shdr sh;
        memcpy(&sh, img + eh.e_shoff + (size_t)i * sizeof(sh), sizeof(sh));
        if (sh.sh_type != SHT_PROGBITS || sh.sh_name > names.sh_size - sizeof(want) ||
            memcmp(img + names.sh_offset + sh.sh_name, want, sizeof(want)) != 0)
            continue;
        if (sh.sh_offset > len || sh.sh_size > len - sh.sh_offset || sh.sh_size < 8)
            return NULL;
        const char *name = (const char *)img + sh.sh_offset;
        size_t nlen = strnlen(name, (size_t)sh.sh_size);
        size_t at = (nlen + 4) & ~(size_t)3; /* the CRC: after the NUL, 4-aligned */
        if (!nlen || nlen >= 256 || at + 4 > sh.sh_size || strchr(name, '/')) /* (NUL-ended before strchr) */
            return NULL;
        memcpy(crc, name + at, 4);
        return name;
    }
    return NULL;
}

size_t tb_elf_ids(const void *img, size_t len, const unsigned char **id, const char **link, uint32_t *crc)
{
    *link = debuglink(img, len, crc);
    return file_build_id(img, len, id);
}

#define DEBUG_ROOT "/usr/lib/debug"
#define DEBUG_CRC_MAX (64u << 20) /* a CRC of gigabytes of DWARF is not read at collect */

/* the CRC-32 of .gnu_debuglink (zlib's) */
static uint32_t crc32_table[256];
static pthread_once_t crc32_once = PTHREAD_ONCE_INIT;
static void crc32_init(void) { tb_crc_table(crc32_table, 0xEDB88320u); }

/* Is the debug file es (mapped) the one for the object whose build ID is
 * oid[0, on): the same build ID, or where the object has none (on 0), the
 * CRC-32 its .gnu_debuglink names (crc_want; no link: not matched)? */
static int debug_matches(const unsigned char *oid, size_t on, const tb_elfsyms *es, const char *link,
                         uint32_t crc_want)
{
    const unsigned char *did = NULL;
    if (on) {
        size_t dn = file_build_id(es->map, es->map_len, &did);
        return dn == on && memcmp(oid, did, on) == 0;
    }
    if (!link || es->map_len > DEBUG_CRC_MAX)
        return 0;
    pthread_once(&crc32_once, crc32_init);
    return tb_crc_update(crc32_table, 0, es->map, es->map_len) == crc_want;
}

/* The symbols of obj's separate debug file (path: the object's file), as
 * gdb and perf find it: by build ID under DEBUG_ROOT/.build-id/, then by
 * its .gnu_debuglink name beside the object, in .debug/ there, and under
 * DEBUG_ROOT/<the object's directory>/. NULL where there is none. */
static tb_elfsyms *debug_file_syms(const char *path, const tb_elfsyms *obj)
{
    char cand[4][PATH_MAX];
    int nc = 0;
    const unsigned char *id = NULL;
    size_t idn = file_build_id(obj->map, obj->map_len, &id);
    if (idn >= 2 && idn <= 64) {
        int k = snprintf(cand[nc], sizeof(cand[nc]), DEBUG_ROOT "/.build-id/%02x/", id[0]);
        for (size_t i = 1; i < idn; i++)
            k += snprintf(cand[nc] + k, sizeof(cand[nc]) - (size_t)k, "%02x", id[i]);
        snprintf(cand[nc] + k, sizeof(cand[nc]) - (size_t)k, ".debug");
        nc++;
    }
    uint32_t crc = 0;
    const char *link = debuglink(obj->map, obj->map_len, &crc);
    const char *slash = strrchr(path, '/');
    if (link && slash) {
        int dir = (int)(slash - path);
        snprintf(cand[nc++], sizeof(cand[0]), "%.*s/%s", dir, path, link);
        snprintf(cand[nc++], sizeof(cand[0]), "%.*s/.debug/%s", dir, path, link);
        snprintf(cand[nc++], sizeof(cand[0]), DEBUG_ROOT "%.*s/%s", dir, path, link);
    }
    for (int i = 0; i < nc; i++) {
        if (!strcmp(cand[i], path))
            continue; /* (a link naming the object itself) */
        tb_elfsyms *es = load_file_syms(cand[i], FILE_OWNED); /* (another user's would name our frames) */
        if (!es)
            continue;
        if (es->symtab && debug_matches(id, idn, es, link, crc)) {
            tb_debug("symbols: %s from %s", path, cand[i]);
            return es;
        }
        free_syms(es);
    }
    return NULL;
}

/* A pointer the dynamic section holds: glibc has relocated it in place
 * (most), others leave it an offset from the load bias. */
static uint64_t dyn_ptr(uint64_t v, uint64_t bias) { return v < bias ? v + bias : v; }

/* The function symbols of the module's mapped image, from its dynamic
 * section (DT_SYMTAB, DT_STRTAB, the symbol count from DT_HASH or
 * DT_GNU_HASH): the exported functions, for an object whose file is gone
 * or replaced. Names are copied (the job may unload the object). */
static tb_elfsyms *image_syms(tb_symtab *st, const tb_module *m)
{
    if (!m->dynamic)
        return NULL;
    /* read with tb_self_read, not through pointers: the job may dlclose
     * the object while this runs on the agent thread */
    uint64_t symtab = 0, strtab = 0, strsz = 0, hash = 0, gnu_hash = 0, syment = sizeof(Elf64_Sym);
    for (uint64_t a = m->dynamic;; a += sizeof(Elf64_Dyn)) {
        if (!tb_symtab_readable(st, a, sizeof(Elf64_Dyn)))
            return NULL;
        Elf64_Dyn d;
        if (tb_self_read(&d, a, sizeof(d), 1) < 0)
            return NULL;
        if (d.d_tag == DT_NULL)
            break;
        switch (d.d_tag) {
        case DT_SYMTAB: symtab = dyn_ptr(d.d_un.d_ptr, m->bias); break;
        case DT_STRTAB: strtab = dyn_ptr(d.d_un.d_ptr, m->bias); break;
        case DT_STRSZ: strsz = d.d_un.d_val; break;
        case DT_SYMENT: syment = d.d_un.d_val; break;
        case DT_HASH: hash = dyn_ptr(d.d_un.d_ptr, m->bias); break;
        case DT_GNU_HASH: gnu_hash = dyn_ptr(d.d_un.d_ptr, m->bias); break;
        }
    }
    if (!symtab || !strtab || !strsz || strsz > (256u << 20) || syment != sizeof(Elf64_Sym) ||
        !tb_symtab_readable(st, strtab, (size_t)strsz))
        return NULL;
    uint64_t count = 0;
    uint32_t w[4];
    if (hash && tb_symtab_readable(st, hash, 8) && tb_self_read(w, hash, 8, 1) == 0) {
        count = w[1]; /* nchain */
    } else if (gnu_hash && tb_symtab_readable(st, gnu_hash, 16) && tb_self_read(w, gnu_hash, 16, 1) == 0) {
        /* nbuckets, symoffset, bloom size, shift */
        uint64_t buckets = gnu_hash + 16 + (uint64_t)w[2] * 8, chains = buckets + (uint64_t)w[0] * 4;
        if (!tb_symtab_readable(st, buckets, (size_t)w[0] * 4))
            return NULL;
        uint32_t *bv = malloc(w[0] ? (size_t)w[0] * 4 : 4), last = 0, b;
        if (!bv || tb_self_read(bv, buckets, (size_t)w[0] * 4, 1) < 0) {
            free(bv);
            return NULL;
        }
        for (uint32_t i = 0; i < w[0]; i++)
            if (bv[i] > last)
                last = bv[i];
        free(bv);
        count = w[1];
        if (last >= w[1]) { /* the highest chain runs to the last symbol */
            for (;;) {
                uint64_t a = chains + (uint64_t)(last - w[1]) * 4;
                if (!tb_symtab_readable(st, a, 4) || tb_self_read(&b, a, 4, 1) < 0)
                    return NULL;
                if (b & 1)
                    break;
                last++;
            }
            count = (uint64_t)last + 1;
        }
    }
    if (!count || count > (16u << 20) || !tb_symtab_readable(st, symtab, (size_t)count * sizeof(Elf64_Sym)))
        return NULL;
    char *strs = malloc((size_t)strsz + 1);
    unsigned char *syms = malloc((size_t)count * sizeof(Elf64_Sym));
    if (!strs || !syms || tb_self_read(strs, strtab, (size_t)strsz, 1) < 0 ||
        tb_self_read(syms, symtab, (size_t)count * sizeof(Elf64_Sym), 1) < 0) {
        free(strs);
        free(syms);
        return NULL;
    }
    strs[strsz] = '\0';
    tb_sym *v = NULL;
    size_t n = 0, cap = 0;
    add_symbol_array(syms, (size_t)count, strs, (size_t)strsz + 1, &v, &n, &cap);
    free(syms);
    tb_elfsyms *es = n ? finish_syms(v, n) : NULL;
    if (!es) {
        if (!n)
            free(v);
        free(strs);
        return NULL;
    }
    es->strs = strs;
    return es;
}

/* __cxa_demangle, looked up once: from the global scope, else from a
 * libstdc++ loaded only locally (Python loads C++ extensions such as
 * torch's RTLD_LOCAL, so theirs is not in the global scope), else loaded
 * here (a C program's GPU kernels have C++ names too). libstdc++ is never
 * unloaded: it is not safe to. */
typedef char *(*demangle_fn)(const char *, char *, size_t *, int *);
static demangle_fn demangler;
static pthread_once_t demangler_once = PTHREAD_ONCE_INIT;

static void find_demangler(void)
{
    void *f = dlsym(RTLD_DEFAULT, "__cxa_demangle");
    if (!f) {
        void *h = dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
        if (!h)
            h = dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL);
        f = h ? dlsym(h, "__cxa_demangle") : NULL;
    }
    *(void **)&demangler = f;
}

char *tb_demangle(const char *name)
{
    if (!name || name[0] != '_' || name[1] != 'Z')
        return NULL;
    pthread_once(&demangler_once, find_demangler);
    if (!demangler)
        return NULL;
    int status = 0;
    char *out = demangler(name, NULL, NULL, &status);
    if (status != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static size_t ptr_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static void dm_clear(tb_symtab *st)
{
    for (size_t i = 0; i < st->capdm; i++)
        free(st->dm[i].val);
    free(st->dm);
    st->dm = NULL;
    st->ndm = st->capdm = 0;
}

static const char *demangled(tb_symtab *st, const char *name)
{
    if (name[0] != '_' || name[1] != 'Z')
        return name;
    if (st->ndm * 2 >= st->capdm) {
        size_t nc = st->capdm ? st->capdm * 2 : 1024;
        demangle_slot *nd = calloc(nc, sizeof(*nd));
        if (!nd)
            return name;
        for (size_t i = 0; i < st->capdm; i++)
            if (st->dm[i].key) {
                size_t h = ptr_hash(st->dm[i].key) & (nc - 1);
                while (nd[h].key)
                    h = (h + 1) & (nc - 1);
                nd[h] = st->dm[i];
            }
        free(st->dm);
        st->dm = nd;
        st->capdm = nc;
    }
    size_t h = ptr_hash(name) & (st->capdm - 1);
    while (st->dm[h].key) {
        if (st->dm[h].key == name)
            return st->dm[h].val ? st->dm[h].val : name;
        h = (h + 1) & (st->capdm - 1);
    }
    st->dm[h].key = name;
    st->dm[h].val = tb_demangle(name);
    st->ndm++;
    return st->dm[h].val ? st->dm[h].val : name;
}

uint32_t tb_symtab_generation(tb_symtab *st)
{
    if (!st->have_list)
        refresh_modules(st);
    return st->gen;
}

const char *tb_symtab_lookup(tb_symtab *st, uint64_t addr, const char **module)
{
    return tb_symtab_lookup_gen(st, addr, tb_symtab_generation(st), module);
}

static int module_holds(const tb_module *m, uint64_t addr)
{
    for (int i = 0; i < m->nseg; i++)
        if (addr >= m->seg[i].start && addr < m->seg[i].end)
            return 1;
    return 0;
}

const char *tb_symtab_lookup_gen(tb_symtab *st, uint64_t addr, uint32_t gen, const char **module)
{
    const tb_module *cm = tb_symtab_module(st, addr);
    if (!cm || cm->gen_from > gen) {
        /* mapped here since: the object that was here at gen, if one was */
        for (size_t i = st->nretired; i > 0; i--) {
            const tb_module *r = st->retired[i - 1];
            if (r->gen_from <= gen && gen < r->gen_to && module_holds(r, addr)) {
                cm = r;
                break;
            }
        }
    }
    if (module)
        *module = cm ? cm->base_name : NULL;
    if (!cm) {
        if (!st->pm.path)
            refresh_perfmap(st);
        return tb_perfmap_lookup(&st->pm, addr);
    }
    tb_module *m = (tb_module *)cm;
    if (!m->syms_loaded) {
        m->syms_loaded = 1;
        if (m->is_vdso) {
            unsigned long eh = getauxval(AT_SYSINFO_EHDR);
            if (eh && eh >= m->start && eh < m->end) {
                /* its section headers lie past its one PT_LOAD's end, in
                 * the same page: the kernel maps the image's whole pages */
                uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
                uint64_t end = pg ? (m->end + pg - 1) / pg * pg : m->end;
                m->syms = parse_elf((const unsigned char *)eh, (size_t)(end - eh));
                if (m->syms && m->syms->n == 0) {
                    free_syms(m->syms);
                    m->syms = NULL;
                }
            }
        } else {
            /* unloaded (gen_to): its image is gone (or another one's is
             * there), only its file is left to read */
            m->syms = load_file_syms(m->path, FILE_KEEP_EMPTY);
            if (!m->gen_to && m->syms && !same_build(st, m, m->syms)) {
                tb_debug("symbols: %s was replaced since it was loaded: names from its mapped image", m->path);
                free_syms(m->syms);
                m->syms = NULL;
            }
            if (m->syms && !m->syms->symtab) { /* stripped: its debug file's symbols, where there is one */
                tb_elfsyms *d = debug_file_syms(m->path, m->syms);
                if (d || !m->syms->n) {
                    free_syms(m->syms);
                    m->syms = d;
                }
            }
            if (!m->syms && !m->gen_to)
                m->syms = image_syms(st, m);
        }
    }
    if (!m->syms)
        return NULL;
    const tb_sym *s = find_sym(m->syms, addr - m->bias);
    return s ? demangled(st, s->name) : NULL;
}
