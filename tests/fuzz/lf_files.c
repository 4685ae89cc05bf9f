/* lf_files.c - libFuzzer target: the files the agent reads inside the job.
 *
 * Built only with -DTBPROF_SANITIZE=fuzzer (see lf_space.c). An input that
 * starts with the ELF magic is an object file's bytes, read as the symbol
 * reader reads each mapped library's file (tb_elfsyms_parse); any other
 * input is a JIT map (/tmp/perf-<pid>.map), written to a memory file in
 * pieces, as a JIT appends to it, and read after each piece.
 *
 * Checked beyond the sanitizers: the build ID and .gnu_debuglink name the
 * debug-file lookup reads lie inside the image; functions come out in strictly rising
 * address order, each with a size, and a lookup of each one's start (and
 * last byte, where fewer than 8 functions start inside it) finds a
 * function covering it; reading the map in pieces gives
 * exactly the entries one read of the whole gives, and each entry's name
 * is found at its start.
 *
 * LF_WRITE_SEEDS=DIR: write seed inputs (this process's vDSO image, a map)
 * into DIR and exit. */
#include <elf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "perfmap.h"
#include "symbols.h"

static int map_fd = -1;
static char map_path[64];

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "lf_files: cannot write %s\n", path);
        exit(1);
    }
}

/* The vDSO: a small, real ELF object with a .dynsym (its own size is the
 * end of its section headers, the last thing in it). */
static void write_vdso(const char *dir)
{
    const unsigned char *img = (const unsigned char *)getauxval(AT_SYSINFO_EHDR);
    if (!img)
        return;
    Elf64_Ehdr eh;
    memcpy(&eh, img, sizeof(eh));
    size_t len = (size_t)eh.e_shoff + (size_t)eh.e_shnum * eh.e_shentsize;
    if (len > sizeof(eh) && len < (1u << 20))
        write_file(dir, "vdso.so", img, len);
}

/* A small ELF object with no symbols: a .gnu_debuglink section (a name,
 * padding, a CRC) and a build-ID note, what the debug-file lookup reads. */
static void write_debuglink(const char *dir)
{
    static const char names[] = "\0.shstrtab\0.gnu_debuglink\0.note.gnu.build-id";
    static const unsigned char link[] = "libx.debug\0\0\x12\x34\x56\x78";
    static const unsigned char note[] = {4, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 'G', 'N', 'U', 0,
                                         1, 2, 3, 4, 5, 6, 7, 8};
    unsigned char img[512] = {0};
    Elf64_Ehdr eh = {0};
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_DYN;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_ehsize = sizeof(eh);
    eh.e_shentsize = sizeof(Elf64_Shdr);
    eh.e_shnum = 4;
    eh.e_shstrndx = 1;
    size_t at = sizeof(eh);
    Elf64_Shdr sh[4] = {{0}};
    sh[1] = (Elf64_Shdr){.sh_name = 1, .sh_type = SHT_STRTAB, .sh_offset = at, .sh_size = sizeof(names)};
    memcpy(img + at, names, sizeof(names));
    at += (sizeof(names) + 7) & ~(size_t)7;
    sh[2] = (Elf64_Shdr){.sh_name = 11, .sh_type = SHT_PROGBITS, .sh_offset = at, .sh_size = sizeof(link) - 1};
    memcpy(img + at, link, sizeof(link) - 1);
    at += (sizeof(link) + 7) & ~(size_t)7;
    sh[3] = (Elf64_Shdr){.sh_name = 26, .sh_type = SHT_NOTE, .sh_offset = at, .sh_size = sizeof(note)};
    memcpy(img + at, note, sizeof(note));
    at += (sizeof(note) + 7) & ~(size_t)7;
    eh.e_shoff = at;
    memcpy(img, &eh, sizeof(eh));
    memcpy(img + at, sh, sizeof(sh));
    write_file(dir, "debuglink.so", img, at + sizeof(sh));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    tb_log_set_level(TB_LOG_OFF);
    const char *seeds = getenv("LF_WRITE_SEEDS");
    if (seeds) {
        write_vdso(seeds);
        write_debuglink(seeds);
        static const char map[] = "7f0000001000 100 py::first:/app/a.py\n7f0000002000 80 py::second:/app/b.py\n"
                                  "7f0000001000 100 py::again:/app/a.py\n  7f0000003000  40 py::spaced\n"
                                  "7f0000004000 0 zero\n7f00000050";
        write_file(seeds, "perfmap", map, sizeof(map) - 1);
        exit(0);
    }
    map_fd = memfd_create("lf_files-map", MFD_CLOEXEC);
    if (map_fd < 0) {
        fprintf(stderr, "lf_files: memfd_create: %s\n", strerror(errno));
        exit(1);
    }
    snprintf(map_path, sizeof(map_path), "/proc/self/fd/%d", map_fd);
    return 0;
}

static void check_elf(const uint8_t *data, size_t size)
{
    tb_elfsyms *es = tb_elfsyms_parse(data, size);
    size_t n = tb_elfsyms_count(es);
    uint64_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t start, len, fs, fl;
        const char *name = tb_elfsyms_at(es, i, &start, &len);
        if (!name || !*name || len == 0 || (i && start <= prev))
            abort();
        /* the name lies in the image, NUL included; or it is the copy
         * of a versioned one cut at its '@' ("name@@VER" -> "name") */
        int in_image = (const uint8_t *)name >= data && (const uint8_t *)name + strlen(name) < data + size;
        if (!in_image && strchr(name, '@'))
            abort();
        prev = start;
        if (tb_elfsyms_find(es, start, &fs, &fl) != name || fs != start)
            abort();
        /* its last byte: found, unless more functions start inside it
         * than a lookup looks back over */
        uint64_t last = start + len - 1 < start ? UINT64_MAX : start + len - 1;
        size_t inside = 0;
        for (size_t j = i + 1; j < n && inside < 8; j++, inside++) {
            tb_elfsyms_at(es, j, &fs, NULL);
            if (fs > last)
                break;
        }
        if (inside < 8 && (!tb_elfsyms_find(es, last, &fs, &fl) || last - fs >= fl))
            abort();
    }
    tb_elfsyms_free(es);
    /* what the debug-file lookup reads: inside the image */
    const unsigned char *id = NULL;
    const char *link = NULL;
    uint32_t crc = 0;
    size_t idn = tb_elf_ids(data, size, &id, &link, &crc);
    if (idn && (id < data || idn > size || id > data + size - idn))
        abort();
    if (link && ((const uint8_t *)link < data || (const uint8_t *)link + strlen(link) >= data + size ||
                 !*link || strchr(link, '/')))
        abort();
}

/* The memory file holds data[0..upto) */
static void map_write(const uint8_t *data, size_t from, size_t upto)
{
    if (from == 0 && ftruncate(map_fd, 0) != 0)
        abort();
    if (upto > from && pwrite(map_fd, data + from, upto - from, (off_t)from) != (ssize_t)(upto - from))
        abort();
}

static void check_map(const uint8_t *data, size_t size)
{
    /* in pieces: cut where the input's bytes say, several cuts per line */
    tb_perfmap inc, whole;
    tb_perfmap_init(&inc, map_path);
    inc.max_bytes = 1u << 16; /* a small cap, so running out is reached */
    size_t at = 0;
    for (size_t i = 0; at < size && i < 64; i++) {
        size_t next = at + 1 + data[(at * 7 + i) % size] % 97;
        if (next > size)
            next = size;
        map_write(data, at, next);
        at = next;
        if (tb_perfmap_update(&inc) < 0)
            abort();
    }
    map_write(data, at, size);
    if (tb_perfmap_update(&inc) < 0)
        abort();
    tb_perfmap_init(&whole, map_path);
    whole.max_bytes = 1u << 16;
    if (tb_perfmap_update(&whole) < 0)
        abort();
    if (inc.n != whole.n || inc.offset != whole.offset || inc.names_len != whole.names_len)
        abort();
    for (size_t i = 0; i < inc.n; i++) {
        const tb_perfmap_entry *a = &inc.e[i], *b = &whole.e[i];
        if (a->start != b->start || a->size != b->size || a->size == 0 ||
            strcmp(inc.names + a->name, whole.names + b->name) != 0 || strchr(inc.names + a->name, '\n'))
            abort();
    }
    /* each entry's start finds a name (its own, or a later one's at the
     * same start); the last byte of the address space finds none or one
     * covering it */
    for (size_t i = 0; i < whole.n; i++) {
        uint64_t s = whole.e[i].start;
        const char *name = tb_perfmap_lookup(&whole, s);
        if (!name || name < whole.names || name >= whole.names + whole.names_len)
            abort();
    }
    tb_perfmap_lookup(&whole, UINT64_MAX);
    tb_perfmap_free(&inc);
    tb_perfmap_free(&whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= SELFMAG && memcmp(data, ELFMAG, SELFMAG) == 0)
        check_elf(data, size);
    else if (size)
        check_map(data, size);
    return 0;
}
