/* test_symbols.c - address -> name: functions of this executable (.symtab),
 * of libc (.dynsym), C++ demangling when libstdc++ is present, the JIT map
 * read incrementally as it grows, and addresses nothing covers. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    tb_perfmap_free(&m);

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

int main(void)
{
    CHECK(local_function_for_lookup(1) == 4 && global_function_for_lookup(1) == 7);
    test_own_and_libc();
    test_perfmap();
    test_demangle();
    return tap_done();
}
