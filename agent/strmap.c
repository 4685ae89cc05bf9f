/* strmap.c - string-keyed map (see strmap.h). */
#include "strmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

int64_t tb_strmap_get(const tb_strmap *m, const char *key)
{
    if (!m->keys)
        return -1;
    uint32_t h = hash(key);
    for (size_t j = h & m->mask; m->keys[j]; j = (j + 1) & m->mask)
        if (m->hashes[j] == h && strcmp(m->keys[j], key) == 0)
            return m->vals[j];
    return -1;
}

static int rehash(tb_strmap *m)
{
    size_t ncap = m->keys ? (m->mask + 1) * 2 : 64;
    const char **keys = calloc(ncap, sizeof(*keys));
    uint32_t *vals = calloc(ncap, sizeof(*vals));
    uint32_t *hashes = calloc(ncap, sizeof(*hashes));
    if (!keys || !vals || !hashes) {
        free(keys);
        free(vals);
        free(hashes);
        return -ENOMEM;
    }
    if (m->keys)
        for (size_t i = 0; i <= m->mask; i++) {
            if (!m->keys[i])
                continue;
            size_t j = m->hashes[i] & (ncap - 1);
            while (keys[j])
                j = (j + 1) & (ncap - 1);
            keys[j] = m->keys[i];
            vals[j] = m->vals[i];
            hashes[j] = m->hashes[i];
        }
    free(m->keys);
    free(m->vals);
    free(m->hashes);
    m->keys = keys;
    m->vals = vals;
    m->hashes = hashes;
    m->mask = ncap - 1;
    return 0;
}

int tb_strmap_put(tb_strmap *m, const char *key, uint32_t val)
{
    if (!m->keys || (m->used + 1) * 4 > (m->mask + 1) * 3)
        if (rehash(m) < 0)
            return -ENOMEM;
    uint32_t h = hash(key);
    size_t j = h & m->mask;
    for (; m->keys[j]; j = (j + 1) & m->mask)
        if (m->hashes[j] == h && strcmp(m->keys[j], key) == 0) {
            m->vals[j] = val;
            return 0;
        }
    m->keys[j] = key;
    m->vals[j] = val;
    m->hashes[j] = h;
    m->used++;
    return 0;
}

void tb_strmap_free(tb_strmap *m)
{
    free(m->keys);
    free(m->vals);
    free(m->hashes);
    memset(m, 0, sizeof(*m));
}
