/* meta_index: chained hash table of the metadata storage; see meta_index.h.
 * Easy to get wrong: the byte counters must follow every replace and delete,
 * since the server's compaction decision is made from them. */
#include "metadata/meta_index.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define META_INDEX_MIN_BUCKETS 64

void meta_index_init(struct meta_index *ix)
{
    memset(ix, 0, sizeof *ix);
    ix->nbuckets = META_INDEX_MIN_BUCKETS;
    ix->buckets = pps_xcalloc(ix->nbuckets, sizeof *ix->buckets);
}

static void entry_free(struct meta_entry *e)
{
    free(e->value);
    free(e);
}

void meta_index_free(struct meta_index *ix)
{
    for (size_t i = 0; i < ix->nbuckets; i++) {
        struct meta_entry *e = ix->buckets[i];
        while (e) {
            struct meta_entry *next = e->next;
            entry_free(e);
            e = next;
        }
    }
    free(ix->buckets);
    memset(ix, 0, sizeof *ix);
}

static uint64_t key_hash(const void *key, uint32_t key_len) { return XXH3_64bits(key, key_len); }

static struct meta_entry **find_slot(const struct meta_index *ix, const void *key, uint32_t key_len,
                                     uint64_t hash)
{
    struct meta_entry **slot = &ix->buckets[hash & (ix->nbuckets - 1)];
    while (*slot) {
        struct meta_entry *e = *slot;
        if (e->hash == hash && e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
            return slot;
        slot = &e->next;
    }
    return slot;
}

static void grow(struct meta_index *ix)
{
    size_t n = ix->nbuckets * 2;
    struct meta_entry **b = pps_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < ix->nbuckets; i++) {
        struct meta_entry *e = ix->buckets[i];
        while (e) {
            struct meta_entry *next = e->next;
            struct meta_entry **head = &b[e->hash & (n - 1)];
            e->next = *head;
            *head = e;
            e = next;
        }
    }
    free(ix->buckets);
    ix->buckets = b;
    ix->nbuckets = n;
}

struct meta_entry *meta_index_get(const struct meta_index *ix, const void *key, uint32_t key_len)
{
    return *find_slot(ix, key, key_len, key_hash(key, key_len));
}

struct meta_entry *meta_index_put(struct meta_index *ix, const void *key, uint32_t key_len,
                                  uint8_t *value, uint32_t value_len, uint64_t seq,
                                  int64_t *old_value_len)
{
    PPS_ASSERT(value != NULL);
    uint64_t hash = key_hash(key, key_len);
    struct meta_entry **slot = find_slot(ix, key, key_len, hash);
    struct meta_entry *e = *slot;
    if (e) {
        if (old_value_len)
            *old_value_len = e->value_len;
        ix->value_bytes -= e->value_len;
        free(e->value);
    } else {
        if (old_value_len)
            *old_value_len = -1;
        e = pps_xmalloc(sizeof *e + (unsigned long)key_len + 1);
        e->hash = hash;
        e->key_len = key_len;
        if (key_len)
            memcpy(e->key, key, key_len);
        e->key[key_len] = '\0';
        e->next = NULL;
        *slot = e;
        ix->count++;
        ix->key_bytes += key_len;
        if (ix->count > ix->nbuckets)
            grow(ix);
    }
    e->value = value;
    e->value_len = value_len;
    e->seq = seq;
    ix->value_bytes += value_len;
    return e;
}

int meta_index_delete(struct meta_index *ix, const void *key, uint32_t key_len,
                      uint32_t *old_value_len)
{
    struct meta_entry **slot = find_slot(ix, key, key_len, key_hash(key, key_len));
    struct meta_entry *e = *slot;
    if (!e)
        return PPS_ENOTFOUND;
    *slot = e->next;
    if (old_value_len)
        *old_value_len = e->value_len;
    ix->count--;
    ix->key_bytes -= e->key_len;
    ix->value_bytes -= e->value_len;
    entry_free(e);
    return 0;
}

int meta_index_foreach(const struct meta_index *ix, meta_index_fn fn, void *ctx)
{
    for (size_t i = 0; i < ix->nbuckets; i++)
        for (const struct meta_entry *e = ix->buckets[i]; e; e = e->next) {
            int rc = fn(ctx, e);
            if (rc)
                return rc;
        }
    return 0;
}

static int key_cmp(const void *a, const void *b)
{
    const struct meta_entry *x = *(const struct meta_entry *const *)a;
    const struct meta_entry *y = *(const struct meta_entry *const *)b;
    uint32_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

int meta_index_list(const struct meta_index *ix, const void *prefix, uint32_t prefix_len,
                    const struct meta_entry ***out, size_t *n)
{
    size_t cap = ix->count ? ix->count : 1, k = 0;
    const struct meta_entry **arr = malloc(cap * sizeof *arr);
    if (!arr)
        return PPS_ENOMEM;
    for (size_t i = 0; i < ix->nbuckets; i++)
        for (const struct meta_entry *e = ix->buckets[i]; e; e = e->next)
            if (e->key_len >= prefix_len && (!prefix_len || memcmp(e->key, prefix, prefix_len) == 0))
                arr[k++] = e;
    qsort(arr, k, sizeof *arr, key_cmp);
    *out = arr;
    *n = k;
    return 0;
}
