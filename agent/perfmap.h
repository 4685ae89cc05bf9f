/* perfmap.h - reader for the JIT symbol map /tmp/perf-<pid>.map.
 *
 * Each line is "<start hex> <size hex> <name>". JITs (CPython 3.12+'s perf
 * trampoline, V8, ...) append to the file while the process runs, so the
 * reader remembers how far it got and reads only what was appended; a
 * trailing line without its newline is left for the next read. Later
 * entries for the same start address win (code memory may be reused). A
 * file replaced at the path (another inode, other first bytes, or shorter
 * than what was read) is read from its start, and what the old one said
 * forgotten: it was an earlier process's with the same pid, removed by the
 * agent.
 */
#ifndef TBPROF_AGENT_PERFMAP_H
#define TBPROF_AGENT_PERFMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct tb_perfmap_entry {
    uint64_t start, size;
    uint32_t name;  /* offset into the name pool */
    uint32_t seq;   /* order of appearance */
} tb_perfmap_entry;

typedef struct tb_perfmap {
    char *path;
    long offset;     /* bytes consumed so far */
    unsigned long long dev, ino; /* the file they came from, */
    char head[64];               /* and its first bytes (head_len of them) */
    size_t head_len;
    tb_perfmap_entry *e;
    size_t n, cap;
    char *names;
    size_t names_len, names_cap;
    int sorted;
    size_t max_bytes; /* cap on memory (entries + names); 0 = 64 MiB */
} tb_perfmap;

void tb_perfmap_init(tb_perfmap *m, const char *path);
void tb_perfmap_free(tb_perfmap *m);
/* Read what was appended since last time. Returns entries added, or -errno
 * (-ENOENT when the file does not exist: no JIT wrote one; -EPERM when it
 * is no regular file, or belongs to another user than this process's
 * effective one and root: not read). */
int tb_perfmap_update(tb_perfmap *m);
/* Name of the entry covering addr, or NULL. */
const char *tb_perfmap_lookup(tb_perfmap *m, uint64_t addr);

#endif
