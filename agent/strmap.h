/* strmap.h - a string-keyed open-addressing map to small integer slots.
 *
 * Used by the readers' aggregations (kernels by name, functions by name,
 * frames for speedscope). Keys are borrowed pointers (they must outlive the
 * map: names in a tb_space's metadata). Lookups and inserts are O(1)
 * expected; the map grows by doubling.
 */
#ifndef TBPROF_AGENT_STRMAP_H
#define TBPROF_AGENT_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct tb_strmap {
    const char **keys;
    uint32_t *vals;
    uint32_t *hashes;
    size_t mask; /* capacity - 1; 0 when empty */
    size_t used;
} tb_strmap;

/* Index stored for `key`, or -1 when absent. */
int64_t tb_strmap_get(const tb_strmap *m, const char *key);
/* Store key -> val (replacing). 0 or -ENOMEM. */
int tb_strmap_put(tb_strmap *m, const char *key, uint32_t val);
void tb_strmap_free(tb_strmap *m);

#endif
