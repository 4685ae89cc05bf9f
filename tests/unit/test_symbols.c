/* test_symbols.c - address -> name: functions of this executable (.symtab),
 * of libc (.dynsym), C++ demangling when libstdc++ is present, the JIT map
 * read incrementally as it grows (and refused when it is not the user's
 * file), addresses nothing covers, and libraries whose file was replaced
 * or deleted after they were loaded, and stripped libraries named from their
 * separate debug files (.gnu_debuglink beside them or in .debug/, by CRC
 * where they have no build ID; libc's by build ID under /usr/lib/debug
 * where libc6-dbg is installed). */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "perfmap.h"
#include "symbols.h"
#include "tap.h"

__attribute__((noinline)) static int local_function_for_lookup(int x) { return x * 3 + 1; }
__attribute__((noinline)) int global_function_for_lookup(int x) { return x * 5 + 2; }

static void test_own_and_libc(void)
{
    tb_symtab *st = tb_symtab_new();
    CHECK(st != NULL);
    tb_symtab_refresh(st);
    const char *mod = NULL;
    /* a static function: only in .symtab */
    uintptr_t a = (uintptr_t)local_function_for_lookup;
    const char *n = tb_symtab_lookup(st, a + 1, &mod);
    CHECKF(n && strcmp(n, "local_function_for_lookup") == 0, "got %s", n ? n : "(null)");
    CHECKF(mod && strcmp(mod, "test_symbols") == 0, "module %s", mod ? mod : "(null)");
    n = tb_symtab_lookup(st, (uintptr_t)global_function_for_lookup, &mod);
    CHECKF(n && strcmp(n, "global_function_for_lookup") == 0, "got %s", n ? n : "(null)");
    /* a libc function, through .dynsym; the module is libc (libc's own
     * qsort, not a sanitizer's interceptor of it) */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *fn = libc ? dlsym(libc, "qsort") : NULL;
    n = tb_symtab_lookup(st, (uintptr_t)fn + 2, &mod);
    CHECKF(n && strcmp(n, "qsort") == 0, "got %s", n ? n : "(null)");
    CHECKF(mod && strncmp(mod, "libc", 4) == 0, "module %s", mod ? mod : "(null)");
    /* the module table knows where code is, and that a heap address is no code */
    const tb_module *m = tb_symtab_module(st, a);
    CHECK(m != NULL && m->eh_frame_hdr != 0);
    CHECK(tb_symtab_readable(st, a, 8));
    void *heap = malloc(16);
    CHECK(!tb_symtab_readable(st, (uintptr_t)heap, 8));
    n = tb_symtab_lookup(st, (uintptr_t)heap, &mod);
    CHECK(n == NULL && mod == NULL);
    free(heap);
    /* an object loaded later is found after a refresh */
    void *h = dlopen("libz.so.1", RTLD_NOW);
    void *h2 = dlopen("liblzma.so.5", RTLD_NOW);
    if (h && h2) {
        tb_symtab_refresh(st);
        const char *mn = NULL;
        n = tb_symtab_lookup(st, (uintptr_t)dlsym(h2, "lzma_version_number"), &mn);
        CHECKF(n && strcmp(n, "lzma_version_number") == 0, "got %s", n ? n : "(null)");
        CHECKF(mn && strncmp(mn, "liblzma", 7) == 0, "module %s", mn ? mn : "(null)");
        n = tb_symtab_lookup(st, (uintptr_t)dlsym(h, "inflateEnd"), &mn);
        CHECKF(n && strcmp(n, "inflateEnd") == 0, "got %s", n ? n : "(null)");
    } else {
        printf("# skip dlopen part: %s\n", dlerror());
    }
    tb_symtab_free(st);
}

static void test_demangle(void)
{
    /* this C program has no libstdc++ in its global scope (as a Python
     * job whose C++ extensions load theirs RTLD_LOCAL): tb_demangle finds
     * or loads it by itself */
    char *d = tb_demangle("_ZN2ns3Foo3barEi");
    if (!d && !dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL)) {
        printf("# skip demangle: libstdc++.so.6 not found\n");
        return;
    }
    CHECKF(d && strcmp(d, "ns::Foo::bar(int)") == 0, "got %s", d ? d : "(null)");
    free(d);
    CHECK(tb_demangle("plain_c_name") == NULL);
    CHECK(tb_demangle("_Znot a mangled name") == NULL);
}

static void append(const char *path, const char *text)
{
    FILE *f = fopen(path, "a");
    fputs(text, f);
    fclose(f);
}

static void test_perfmap(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/tbprof-test-perfmap-%d.map", (int)getpid());
    unlink(path);
    tb_perfmap m;
    tb_perfmap_init(&m, path);
    CHECK_EQ_I(tb_perfmap_update(&m), -2 /* ENOENT */);
    append(path, "7f0000001000 100 py::first:/app/a.py\n7f0000002000 80 py::second:/app/b.py\n7f00000030");
    CHECK_EQ_I(tb_perfmap_update(&m), 2);
    const char *n = tb_perfmap_lookup(&m, 0x7f0000001000 + 0xff);
    CHECKF(n && strcmp(n, "py::first:/app/a.py") == 0, "got %s", n ? n : "(null)");
    CHECK(tb_perfmap_lookup(&m, 0x7f0000001000 + 0x100) == NULL);
    CHECK(tb_perfmap_lookup(&m, 0x7f0000000fff) == NULL);
    /* the partial third line completes later; a reused address wins */
    append(path, "00 40 py::third:/app/c.py\nbogus line\n7f0000001000 100 py::again:/app/a.py\n");
    CHECK_EQ_I(tb_perfmap_update(&m), 2);
    n = tb_perfmap_lookup(&m, 0x7f0000003010);
    CHECKF(n && strcmp(n, "py::third:/app/c.py") == 0, "got %s", n ? n : "(null)");
    n = tb_perfmap_lookup(&m, 0x7f0000001010);
    CHECKF(n && strcmp(n, "py::again:/app/a.py") == 0, "got %s", n ? n : "(null)");
    CHECK_EQ_I(tb_perfmap_update(&m), 0);
    /* malformed lines skipped: a sign, a zero size, no number, no name, a
     * too long number; leading and doubled spaces are fine */
    append(path, "-7f0000006000 10 py::neg\n7f0000006000 0 py::zero\n7f0000006000 zz py::nonum\n"
                 "7f0000006000 10\n7f0000006000 10 \n"
                 "00000000000000000000000000000000000000007f0000006000 10 py::long\n"
                 "  7f0000007000  10 py::spaced\n");
    CHECK_EQ_I(tb_perfmap_update(&m), 1);
    CHECK(tb_perfmap_lookup(&m, 0x7f0000006004) == NULL);
    n = tb_perfmap_lookup(&m, 0x7f0000007004);
    CHECKF(n && strcmp(n, "py::spaced") == 0, "got %s", n ? n : "(null)");
    /* the file replaced (an earlier process's map removed, this one's made
     * afresh): read from its start, the old names forgotten. Before, the
     * new file was read from the old one's length on: its first lines
     * (here all of them) were lost */
    unlink(path);
    append(path, "7f0000008000 10 py::fresh:/app/e.py\n");
    CHECK_EQ_I(tb_perfmap_update(&m), 1);
    n = tb_perfmap_lookup(&m, 0x7f0000008004);
    CHECKF(n && strcmp(n, "py::fresh:/app/e.py") == 0, "got %s", n ? n : "(null)");
    CHECK(tb_perfmap_lookup(&m, 0x7f0000007004) == NULL);
    /* cut shorter in place: read again from the start as well */
    FILE *tf = fopen(path, "w");
    fputs("7f0000009000 10 py::cut\n", tf);
    fclose(tf);
    CHECK_EQ_I(tb_perfmap_update(&m), 1);
    n = tb_perfmap_lookup(&m, 0x7f0000009004);
    CHECKF(n && strcmp(n, "py::cut") == 0, "got %s", n ? n : "(null)");
    CHECK(tb_perfmap_lookup(&m, 0x7f0000008004) == NULL);
    /* rewritten in place, longer (as a new file on a freed inode number):
     * its first bytes tell */
    tf = fopen(path, "w");
    fputs("7f000000a000 10 py::rewritten\n7f000000b000 10 py::rewritten_too:/a/much/longer/path.py\n", tf);
    fclose(tf);
    CHECK_EQ_I(tb_perfmap_update(&m), 2);
    n = tb_perfmap_lookup(&m, 0x7f000000a004);
    CHECKF(n && strcmp(n, "py::rewritten") == 0, "got %s", n ? n : "(null)");
    CHECK(tb_perfmap_lookup(&m, 0x7f0000009004) == NULL);
    tb_perfmap_free(&m);
    unlink(path);
    append(path, "7f0000001000 100 py::first:/app/a.py\n7f0000002000 80 py::second:/app/b.py\n");

    /* through the symbol table: addresses in no object go to the map */
    tb_symtab *st = tb_symtab_new();
    tb_symtab_set_perfmap_path(st, path);
    tb_symtab_refresh(st);
    const char *mod = "x";
    n = tb_symtab_lookup(st, 0x7f0000002010, &mod);
    CHECKF(n && strcmp(n, "py::second:/app/b.py") == 0, "got %s", n ? n : "(null)");
    CHECK(mod == NULL);
    append(path, "7f0000005000 10 py::late:/app/d.py\n");
    CHECK(tb_symtab_lookup(st, 0x7f0000005004, NULL) == NULL); /* not read yet */
    tb_symtab_refresh(st);
    n = tb_symtab_lookup(st, 0x7f0000005004, NULL);
    CHECKF(n && strcmp(n, "py::late:/app/d.py") == 0, "got %s", n ? n : "(null)");
    tb_symtab_free(st);
    unlink(path);
}

/* A 64-bit ELF image holding one .symtab (and its .strtab) of these
 * symbols; returns its size. */
typedef struct fake_sym {
    const char *name;
    uint64_t addr, size;
    int bind, type;
} fake_sym;

static size_t build_elf(unsigned char *img, size_t cap, const fake_sym *fs, int n)
{
    memset(img, 0, cap);
    size_t off = sizeof(Elf64_Ehdr);
    Elf64_Sym *syms = (Elf64_Sym *)(img + off);
    size_t symoff = off;
    off += (size_t)(n + 1) * sizeof(Elf64_Sym);
    size_t stroff = off, k = 1; /* strtab starts with "" */
    img[off] = '\0';
    for (int i = 0; i < n; i++) {
        size_t l = strlen(fs[i].name) + 1;
        memcpy(img + stroff + k, fs[i].name, l);
        syms[i + 1] = (Elf64_Sym){.st_name = (uint32_t)k, .st_info = ELF64_ST_INFO(fs[i].bind, fs[i].type),
                                  .st_shndx = 1, .st_value = fs[i].addr, .st_size = fs[i].size};
        k += l;
    }
    off = (stroff + k + 7) & ~(size_t)7;
    Elf64_Shdr *sh = (Elf64_Shdr *)(img + off);
    sh[1] = (Elf64_Shdr){.sh_type = SHT_SYMTAB, .sh_offset = symoff, .sh_link = 2,
                         .sh_size = (uint64_t)(n + 1) * sizeof(Elf64_Sym), .sh_entsize = sizeof(Elf64_Sym)};
    sh[2] = (Elf64_Shdr){.sh_type = SHT_STRTAB, .sh_offset = stroff, .sh_size = k};
    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_shoff = off;
    eh->e_shnum = 3;
    eh->e_shentsize = sizeof(Elf64_Shdr);
    return off + 3 * sizeof(Elf64_Shdr);
}

static const char *find_name(const tb_elfsyms *es, uint64_t a)
{
    const char *n = tb_elfsyms_find(es, a, NULL, NULL);
    return n ? n : "(none)";
}

/* What a symbol table gives: one name per address (a global before a weak
 * or local alias, fewer leading underscores first), sizeless functions up
 * to the next, a function found past a smaller one starting inside it, data
 * symbols ignored; damaged tables give no names rather than bad ones. */
static void test_elf_table(void)
{
    static unsigned char img[4096];
    const fake_sym fs[] = {
        {"__outer_alias", 0x1000, 0x100, STB_GLOBAL, STT_FUNC},
        {"outer", 0x1000, 0x100, STB_GLOBAL, STT_FUNC},
        {"outer_local", 0x1000, 0x100, STB_LOCAL, STT_FUNC},
        {"inner_entry", 0x1080, 0x10, STB_LOCAL, STT_FUNC},
        {"sizeless", 0x2000, 0, STB_GLOBAL, STT_FUNC},
        {"after", 0x2040, 0x20, STB_WEAK, STT_FUNC},
        {"a_variable", 0x3000, 0x100, STB_GLOBAL, STT_OBJECT},
    };
    size_t len = build_elf(img, sizeof(img), fs, 7);
    tb_elfsyms *es = tb_elfsyms_parse(img, len);
    CHECK_EQ_I((int)tb_elfsyms_count(es), 4);
    CHECK_STR(find_name(es, 0x1000), "outer");
    CHECK_STR(find_name(es, 0x1085), "inner_entry");
    CHECK_STR(find_name(es, 0x10f0), "outer"); /* past the inner one's end */
    CHECK_STR(find_name(es, 0x1100), "(none)");
    uint64_t start = 0, size = 0;
    CHECK_STR(tb_elfsyms_find(es, 0x203f, &start, &size), "sizeless");
    CHECK(start == 0x2000 && size == 0x40);
    CHECK_STR(find_name(es, 0x2050), "after");
    CHECK_STR(find_name(es, 0x3010), "(none)");
    tb_elfsyms_free(es);
    /* a string table without its final NUL, then one section header cut off */
    Elf64_Shdr *sh = (Elf64_Shdr *)(img + ((Elf64_Ehdr *)img)->e_shoff);
    sh[2].sh_size -= 1;
    es = tb_elfsyms_parse(img, len);
    CHECK_EQ_I((int)tb_elfsyms_count(es), 0);
    tb_elfsyms_free(es);
    sh[2].sh_size += 1;
    CHECK(tb_elfsyms_parse(img, len - 1) == NULL);
    CHECK(tb_elfsyms_parse("\177ELF", 4) == NULL);
}

/* A map at the path that is no regular file of ours is not read: a FIFO
 * (opening it must not wait for a writer) or, when the test runs as root
 * and can give the file away, one of another user. */
static void test_perfmap_refused(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/tbprof-test-perfmap-%d.fifo", (int)getpid());
    unlink(path);
    tb_perfmap m;
    if (mkfifo(path, 0600) == 0) {
        tb_perfmap_init(&m, path);
        CHECK_EQ_I(tb_perfmap_update(&m), -EPERM);
        tb_perfmap_free(&m);
        unlink(path);
    } else {
        printf("# skip fifo: %s\n", strerror(errno));
    }
    append(path, "7f0000001000 100 py::planted:/x.py\n");
    tb_perfmap_init(&m, path);
    CHECK_EQ_I(tb_perfmap_update(&m), 1); /* ours */
    tb_perfmap_free(&m);
    if (geteuid() == 0 && chown(path, 65534, 65534) == 0) {
        tb_perfmap_init(&m, path);
        CHECK_EQ_I(tb_perfmap_update(&m), -EPERM);
        CHECK(tb_perfmap_lookup(&m, 0x7f0000001004) == NULL);
        tb_perfmap_free(&m);
        /* through the symbol table: warned about, the address unnamed */
        tb_symtab *st = tb_symtab_new();
        tb_symtab_set_perfmap_path(st, path);
        tb_symtab_refresh(st);
        CHECK(tb_symtab_lookup(st, 0x7f0000001004, NULL) == NULL);
        tb_symtab_free(st);
    } else {
        printf("# skip another user's map: not root\n");
    }
    unlink(path);
}

/* A library the job dlopen()ed by a relative path ("./libx.so": the
 * loader keeps that name) and a chdir() later: its symbols are still read
 * from the file that is mapped, not from whatever the name means now. */
static void test_relative_path(void)
{
    void *orig = dlopen("liblzma.so.5", RTLD_NOW);
    Dl_info di;
    if (!orig || !dladdr(dlsym(orig, "lzma_version_number"), &di) || !di.dli_fname) {
        printf("# skip relative path: no liblzma\n");
        return;
    }
    char dir[64], cwd[4096];
    snprintf(dir, sizeof(dir), "/tmp/tbprof-test-rel-%d", (int)getpid());
    mkdir(dir, 0700);
    if (!getcwd(cwd, sizeof(cwd)) || chdir(dir) != 0) {
        CHECKF(0, "chdir %s", dir);
        return;
    }
    /* a copy of its own (the loader would hand back the loaded one) */
    FILE *in = fopen(di.dli_fname, "rb"), *out = fopen("liblzma-rel.so", "wb");
    char buf[65536];
    size_t k;
    while (in && out && (k = fread(buf, 1, sizeof(buf), in)) > 0)
        fwrite(buf, 1, k, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    void *h = dlopen("./liblzma-rel.so", RTLD_NOW | RTLD_LOCAL);
    CHECKF(h != NULL, "dlopen ./liblzma-rel.so: %s", dlerror());
    CHECK(chdir("/") == 0); /* the job moves on */
    if (h) {
        tb_symtab *st = tb_symtab_new();
        tb_symtab_refresh(st);
        const char *mn = NULL;
        void *fn = dlsym(h, "lzma_version_number");
        const char *n = tb_symtab_lookup(st, (uintptr_t)fn, &mn);
        CHECKF(fn != dlsym(orig, "lzma_version_number"), "the copy was not loaded apart");
        CHECKF(n && strcmp(n, "lzma_version_number") == 0, "got %s", n ? n : "(null)");
        CHECKF(mn && strcmp(mn, "liblzma-rel.so") == 0, "module %s", mn ? mn : "(null)");
        tb_symtab_free(st);
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/liblzma-rel.so", dir);
    unlink(path);
    rmdir(dir);
    CHECK(chdir(cwd) == 0);
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t k;
    int ok = in && out;
    while (ok && (k = fread(buf, 1, sizeof(buf), in)) > 0)
        ok = fwrite(buf, 1, k, out) == k;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* A library replaced on disk after the job loaded it (a package upgraded
 * or an extension rebuilt under a running job), and one deleted: the names
 * are the mapped library's, never those of whatever file has the path now. */
static void test_replaced_file(void)
{
    void *lz = dlopen("liblzma.so.5", RTLD_NOW), *z = dlopen("libz.so.1", RTLD_NOW);
    Dl_info dl, dz;
    if (!lz || !z || !dladdr(dlsym(lz, "lzma_version_number"), &dl) || !dladdr(dlsym(z, "inflate"), &dz)) {
        printf("# skip replaced file: no liblzma or libz\n");
        return;
    }
    char a[96], b[96], tmp[112];
    snprintf(a, sizeof(a), "/tmp/tbprof-test-repl-%d-a.so", (int)getpid());
    snprintf(b, sizeof(b), "/tmp/tbprof-test-repl-%d-b.so", (int)getpid());
    snprintf(tmp, sizeof(tmp), "%s.new", a);
    CHECK(copy_file(dl.dli_fname, a) == 0 && copy_file(dl.dli_fname, b) == 0);
    void *ha = dlopen(a, RTLD_NOW | RTLD_LOCAL), *hb = dlopen(b, RTLD_NOW | RTLD_LOCAL);
    CHECKF(ha && hb, "dlopen copies: %s", dlerror());
    if (ha && hb) {
        /* a: replaced the way installers do (a new file renamed over it),
         * by another library; b: deleted */
        CHECK(copy_file(dz.dli_fname, tmp) == 0 && rename(tmp, a) == 0);
        CHECK(unlink(b) == 0);
        tb_symtab *st = tb_symtab_new();
        tb_symtab_refresh(st);
        const char *mn = NULL;
        void *fa = dlsym(ha, "lzma_version_number"), *fb = dlsym(hb, "lzma_code");
        const char *n = tb_symtab_lookup(st, (uintptr_t)fa, &mn);
        CHECKF(n && strcmp(n, "lzma_version_number") == 0, "replaced: got %s", n ? n : "(null)");
        CHECKF(mn && strstr(a, mn), "module %s", mn ? mn : "(null)");
        n = tb_symtab_lookup(st, (uintptr_t)fb + 1, NULL);
        CHECKF(n && strcmp(n, "lzma_code") == 0, "deleted: got %s", n ? n : "(null)");
        tb_symtab_free(st);
    }
    unlink(a);
    unlink(b);
    unlink(tmp);
}

/* A stripped copy of libdbgsplit.so at dir/sub/name whose debug file
 * (split off with objcopy, as distributions do; from `debug_of`'s image
 * where that is given, a debug file of another build) lies at
 * dir/sub/where/<link name>; strip_extra: more for strip, then `post` run
 * in dir/sub; the name its hidden function gets, or NULL. */
static const char *split_and_look(const char *dir, const char *sub, const char *where, const char *debug_of,
                                  const char *strip_extra, const char *post, char *out, size_t outlen)
{
    char lib[512], cmd[4096];
    snprintf(lib, sizeof(lib), "%s/%s/libdbgsplit.so", dir, sub);
    snprintf(cmd, sizeof(cmd),
             "set -e; mkdir -p '%s/%s/%s'; cp '%s' '%s'; cd '%s/%s';"
             " objcopy --only-keep-debug '%s' dbgsplit.debug;"
             " strip --strip-unneeded %s libdbgsplit.so; objcopy --add-gnu-debuglink=dbgsplit.debug libdbgsplit.so;"
             " [ '%s' = . ] || mv dbgsplit.debug '%s/dbgsplit.debug'; %s",
             dir, sub, where, DBGSPLIT_LIB, lib, dir, sub, debug_of ? debug_of : "libdbgsplit.so", strip_extra, where,
             where, post);
    if (system(cmd) != 0)
        return NULL;
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        CHECKF(0, "dlopen %s: %s", lib, dlerror());
        return NULL;
    }
    int (*(*get)(void))(int) = (int (*(*)(void))(int))dlsym(h, "dbgsplit_hidden");
    if (!get)
        return NULL;
    tb_symtab *st = tb_symtab_new();
    tb_symtab_refresh(st);
    const char *n = tb_symtab_lookup(st, (uintptr_t)get() + 1, NULL);
    snprintf(out, outlen, "%s", n ? n : "(null)");
    tb_symtab_free(st);
    return out;
}

static void test_debug_files(void)
{
    if (system("command -v objcopy >/dev/null && command -v strip >/dev/null") != 0) {
        printf("# skip debug files: no objcopy or strip (binutils)\n");
        return;
    }
    char dir[64], name[256], other[4200];
    snprintf(dir, sizeof(dir), "/tmp/tbprof-test-dbg-%d", (int)getpid());
    /* the same object unstripped has the name in its own .symtab; stripped,
     * only the debug file beside it or in .debug/ can give it */
    const char *n = split_and_look(dir, "beside", ".", NULL, "", "", name, sizeof(name));
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") == 0, "beside: got %s", n ? n : "(no copy)");
    /* what the lookup reads from that stripped copy: objcopy's link and the build ID */
    snprintf(other, sizeof(other), "%s/beside/libdbgsplit.so", dir);
    FILE *f = fopen(other, "rb");
    static unsigned char img[1 << 20];
    size_t len = f ? fread(img, 1, sizeof(img), f) : 0;
    if (f)
        fclose(f);
    const unsigned char *bid = NULL;
    const char *link = NULL;
    uint32_t crc = 0;
    size_t idn = tb_elf_ids(img, len, &bid, &link, &crc);
    CHECKF(idn == 20, "build ID of %zu bytes", idn);
    CHECKF(link && strcmp(link, "dbgsplit.debug") == 0, "link %s", link ? link : "(none)");
    n = split_and_look(dir, "dotdebug", ".debug", NULL, "", "", name, sizeof(name));
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") == 0, ".debug/: got %s", n ? n : "(no copy)");
    /* a debug file of another build at the link's name: not taken */
    ssize_t k = readlink("/proc/self/exe", other, sizeof(other) - 1);
    other[k > 0 ? k : 0] = '\0';
    n = split_and_look(dir, "other", ".", other, "", "", name, sizeof(name));
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") != 0, "another build's debug file: got %s",
           n ? n : "(no copy)");
    /* an object with no build ID: matched by the link's CRC-32, and a
     * debug file changed since the link was made is not taken */
    const char *noid = "--remove-section=.note.gnu.build-id";
    n = split_and_look(dir, "crc", ".", NULL, noid, "", name, sizeof(name));
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") == 0, "by CRC: got %s", n ? n : "(no copy)");
    n = split_and_look(dir, "crcbad", ".", NULL, noid, "printf x >> dbgsplit.debug", name, sizeof(name));
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") != 0, "CRC changed: got %s", n ? n : "(no copy)");
    /* a FIFO planted at the link's name is not waited on (the alarm ends a
     * hang as a failure), and a debug file of another user is not read */
    alarm(20);
    n = split_and_look(dir, "fifo", ".", NULL, "", "rm dbgsplit.debug && mkfifo dbgsplit.debug", name, sizeof(name));
    alarm(0);
    CHECKF(n && strcmp(n, "hidden_work_for_debugfile") != 0, "FIFO: got %s", n ? n : "(no copy)");
    if (geteuid() == 0) {
        n = split_and_look(dir, "notmine", ".", NULL, "", "chown 65534 dbgsplit.debug", name, sizeof(name));
        CHECKF(n && strcmp(n, "hidden_work_for_debugfile") != 0, "another user's: got %s", n ? n : "(no copy)");
    }
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);

    /* libc (stripped in Debian) by its build ID, where libc6-dbg is
     * installed: memcpy's implementation, chosen at load (IFUNC), is a
     * local function named only in the debug file; pthread_create, which
     * the debug file's .symtab has only as pthread_create@@GLIBC_2.34 and
     * pthread_create@GLIBC_2.2.5, is named as the program calls it */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD); /* (not a sanitizer's interceptor) */
    void *cp = libc ? dlsym(libc, "memcpy") : NULL, *pc = libc ? dlsym(libc, "pthread_create") : NULL;
    Dl_info di;
    char debug[300] = "", line[300];
    if (cp && dladdr(cp, &di) && di.dli_fname) {
        snprintf(cmd, sizeof(cmd), "readelf -n '%s' 2>/dev/null", di.dli_fname);
        FILE *f = popen(cmd, "r");
        while (f && fgets(line, sizeof(line), f)) {
            char *id = strstr(line, "Build ID: ");
            if (id && strlen(id + 10) > 3) {
                id += 10;
                id[strcspn(id, "\r\n")] = '\0';
                snprintf(debug, sizeof(debug), "/usr/lib/debug/.build-id/%.2s/%s.debug", id, id + 2);
            }
        }
        if (f)
            pclose(f);
    }
    if (!debug[0] || access(debug, R_OK) != 0) {
        printf("# skip libc by build ID: no debug file for it (libc6-dbg)%s%s\n", debug[0] ? ": " : "", debug);
        return;
    }
    tb_symtab *st = tb_symtab_new();
    tb_symtab_refresh(st);
    const char *mod = NULL;
    n = tb_symtab_lookup(st, (uintptr_t)cp + 1, &mod);
    CHECKF(n && strncmp(n, "__mem", 5) == 0, "memcpy's implementation in %s: got %s", mod ? mod : "?",
           n ? n : "(null)");
    n = pc ? tb_symtab_lookup(st, (uintptr_t)pc + 1, NULL) : NULL;
    CHECKF(n && strcmp(n, "pthread_create") == 0, "pthread_create: got %s", n ? n : "(null)");
    tb_symtab_free(st);
}

/* The vDSO, which has no file: its exported functions named from its
 * image in memory, whose section headers lie past its PT_LOAD's end */
static void test_vdso(void)
{
    void *h = dlopen("linux-vdso.so.1", RTLD_NOW | RTLD_NOLOAD);
    void *f = h ? dlsym(h, "__vdso_clock_gettime") : NULL;
    if (!f) {
        printf("ok # SKIP no vDSO with __vdso_clock_gettime here\n");
        return;
    }
    tb_symtab *st = tb_symtab_new();
    CHECK(tb_symtab_refresh(st) >= 0);
    const char *mod = NULL;
    const char *n = tb_symtab_lookup(st, (uintptr_t)f + 1, &mod);
    CHECKF(n && !strcmp(n, "__vdso_clock_gettime"), "the vDSO's clock_gettime: got %s in %s", n ? n : "(null)",
           mod ? mod : "(null)");
    tb_symtab_free(st);
}

int main(void)
{
    CHECK(local_function_for_lookup(1) == 4 && global_function_for_lookup(1) == 7);
    test_own_and_libc();
    test_elf_table();
    test_perfmap();
    test_perfmap_refused();
    test_demangle();
    test_relative_path();
    test_replaced_file();
    test_debug_files();
    test_vdso();
    return tap_done();
}
