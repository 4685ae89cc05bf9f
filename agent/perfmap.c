/* perfmap.c - see perfmap.h. */
#include "perfmap.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void tb_perfmap_init(tb_perfmap *m, const char *path)
{
    memset(m, 0, sizeof(*m));
    m->path = path ? strdup(path) : NULL;
    m->sorted = 1;
}

void tb_perfmap_free(tb_perfmap *m)
{
    free(m->path);
    free(m->e);
    free(m->names);
    memset(m, 0, sizeof(*m));
}

static size_t cap_bytes(const tb_perfmap *m) { return m->max_bytes ? m->max_bytes : (64u << 20); }

static int add_entry(tb_perfmap *m, uint64_t start, uint64_t size, const char *name, size_t len)
{
    if ((m->n + 1) * sizeof(tb_perfmap_entry) + m->names_len + len + 1 > cap_bytes(m))
        return -ENOSPC;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 256;
        tb_perfmap_entry *ne = realloc(m->e, nc * sizeof(*ne));
        if (!ne)
            return -ENOMEM;
        m->e = ne;
        m->cap = nc;
    }
    if (m->names_len + len + 1 > m->names_cap) {
        size_t nc = m->names_cap ? m->names_cap : 4096;
        while (nc < m->names_len + len + 1)
            nc *= 2;
        char *nn = realloc(m->names, nc);
        if (!nn)
            return -ENOMEM;
        m->names = nn;
        m->names_cap = nc;
    }
    memcpy(m->names + m->names_len, name, len);
    m->names[m->names_len + len] = '\0';
    tb_perfmap_entry *e = &m->e[m->n];
    e->start = start;
    e->size = size;
    e->name = (uint32_t)m->names_len;
    e->seq = (uint32_t)m->n;
    m->names_len += len + 1;
    m->n++;
    m->sorted = 0;
    return 0;
}

/* The hex number in the space-separated word at s[*i] (spaces before it
 * skipped; *i left after it): 1, or 0 where there is none. */
static int hex_word(const char *s, size_t len, size_t *i, uint64_t *v)
{
    char buf[40], *end;
    while (*i < len && s[*i] == ' ')
        (*i)++;
    size_t a = *i;
    while (*i < len && s[*i] != ' ')
        (*i)++;
    size_t n = *i - a;
    if (n == 0 || n >= sizeof(buf) || !isxdigit((unsigned char)s[a]))
        return 0;
    memcpy(buf, s + a, n);
    buf[n] = '\0';
    *v = strtoull(buf, &end, 16);
    return *end == '\0';
}

/* Parse one complete line (no newline): "START SIZE name", hex numbers;
 * malformed lines are skipped. */
static int parse_line(tb_perfmap *m, const char *s, size_t len)
{
    size_t i = 0;
    uint64_t start, size;
    if (!hex_word(s, len, &i, &start) || !hex_word(s, len, &i, &size) || size == 0)
        return 0;
    if (i < len && s[i] == ' ')
        i++;
    if (i >= len)
        return 0;
    return add_entry(m, start, size, s + i, len - i) == 0;
}

/* The file read before, grown (not replaced: inode numbers are reused as
 * soon as freed, so its first bytes are compared too); its inode noted. */
static int same_file(tb_perfmap *m, int fd, const struct stat *st)
{
    int same = (unsigned long long)st->st_dev == m->dev && (unsigned long long)st->st_ino == m->ino &&
               st->st_size >= m->offset;
    char now[sizeof(m->head)];
    if (same && m->head_len)
        same = pread(fd, now, m->head_len, 0) == (ssize_t)m->head_len && !memcmp(now, m->head, m->head_len);
    if (!same)
        m->head_len = 0;
    return same;
}

int tb_perfmap_update(tb_perfmap *m)
{
    if (!m->path)
        return -EINVAL;
    /* not blocking on a FIFO planted at the path, and only a regular file
     * of this user (or root), as perf reads these maps: /tmp is shared, and
     * a map someone else made would name our frames */
    int fd = open(m->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_uid != geteuid() && st.st_uid != 0)) {
        close(fd);
        return -EPERM;
    }
    if (m->offset && !same_file(m, fd, &st)) {
        m->offset = 0;
        m->n = 0;
        m->names_len = 0;
        m->sorted = 1;
    }
    m->dev = (unsigned long long)st.st_dev;
    m->ino = (unsigned long long)st.st_ino;
    FILE *f = fdopen(fd, "r");
    if (!f) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (fseek(f, m->offset, SEEK_SET) != 0) {
        int e = errno;
        fclose(f);
        return -e;
    }
    int added = 0;
    char buf[8192];
    size_t have = 0;
    for (;;) {
        size_t got = fread(buf + have, 1, sizeof(buf) - have, f);
        if (got == 0)
            break;
        have += got;
        size_t pos = 0;
        for (;;) {
            char *nl = memchr(buf + pos, '\n', have - pos);
            if (!nl)
                break;
            size_t len = (size_t)(nl - (buf + pos));
            added += parse_line(m, buf + pos, len);
            m->offset += (long)len + 1;
            pos += len + 1;
        }
        if (pos == 0 && have == sizeof(buf)) {
            /* a line longer than the buffer: skip it */
            char *nl = NULL;
            int c;
            long skipped = (long)have;
            while ((c = fgetc(f)) != EOF) {
                skipped++;
                if (c == '\n') {
                    nl = buf;
                    break;
                }
            }
            if (!nl)
                break; /* incomplete: retry later */
            m->offset += skipped;
            have = 0;
            continue;
        }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    if (m->head_len < sizeof(m->head) && m->offset > (long)m->head_len) {
        ssize_t k = pread(fileno(f), m->head, sizeof(m->head), 0);
        m->head_len = k > 0 ? (size_t)(k < m->offset ? k : m->offset) : 0;
    }
    fclose(f);
    return added;
}

static int cmp_entry(const void *a, const void *b)
{
    const tb_perfmap_entry *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

const char *tb_perfmap_lookup(tb_perfmap *m, uint64_t addr)
{
    if (!m->n)
        return NULL;
    if (!m->sorted) {
        qsort(m->e, m->n, sizeof(*m->e), cmp_entry);
        m->sorted = 1;
    }
    /* last entry with start <= addr */
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->e[mid].start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* walk back a little: an earlier, longer entry may cover addr when the
     * latest one starting below it is too short */
    for (size_t k = lo, steps = 0; k > 0 && steps < 8; k--, steps++) {
        const tb_perfmap_entry *e = &m->e[k - 1];
        if (addr - e->start < e->size)
            return m->names + e->name;
    }
    return NULL;
}
