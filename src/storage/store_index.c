/* store_index: chained hash table of store entries; see store_index.h. */
#include "storage/store_index.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

void store_index_init(struct store_index *ix)
{
    ix->nbuckets = 64;
    ix->count = 0;
    ix->buckets = pps_xcalloc(ix->nbuckets, sizeof *ix->buckets);
}

void store_index_free(struct store_index *ix)
{
    for (size_t i = 0; i < ix->nbuckets; i++) {
        struct store_entry *e = ix->buckets[i];
        while (e) {
            struct store_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(ix->buckets);
    ix->buckets = NULL;
    ix->nbuckets = ix->count = 0;
}

struct store_entry *store_index_find(const struct store_index *ix, const char *key,
                                     uint32_t key_len)
{
    uint64_t h = XXH3_64bits(key, key_len);
    for (struct store_entry *e = ix->buckets[h & (ix->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
            return e;
    return NULL;
}

static void grow(struct store_index *ix)
{
    size_t n = ix->nbuckets * 2;
    struct store_entry **b = pps_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < ix->nbuckets; i++) {
        struct store_entry *e = ix->buckets[i];
        while (e) {
            struct store_entry *next = e->next;
            size_t j = e->hash & (n - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(ix->buckets);
    ix->buckets = b;
    ix->nbuckets = n;
}

struct store_entry *store_index_get(struct store_index *ix, const char *key, uint32_t key_len)
{
    struct store_entry *e = store_index_find(ix, key, key_len);
    if (e)
        return e;
    if (ix->count >= ix->nbuckets)
        grow(ix);
    e = pps_xcalloc(1, sizeof *e + key_len + 1);
    e->hash = XXH3_64bits(key, key_len);
    e->key_len = key_len;
    memcpy(e->key, key, key_len);
    size_t j = e->hash & (ix->nbuckets - 1);
    e->next = ix->buckets[j];
    ix->buckets[j] = e;
    ix->count++;
    return e;
}

void store_index_remove(struct store_index *ix, struct store_entry *e)
{
    struct store_entry **pp = &ix->buckets[e->hash & (ix->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    PPS_ASSERT(*pp == e);
    *pp = e->next;
    ix->count--;
    free(e);
}

struct store_entry *store_index_next(const struct store_index *ix, size_t *pos,
                                     struct store_entry *e)
{
    if (e && e->next)
        return e->next;
    size_t i = e ? *pos + 1 : *pos;
    for (; i < ix->nbuckets; i++) {
        if (ix->buckets[i]) {
            *pos = i;
            return ix->buckets[i];
        }
    }
    *pos = ix->nbuckets;
    return NULL;
}
