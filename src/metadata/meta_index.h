/* meta_index: the in-memory key -> value table of the metadata storage.
 *
 * A chained hash table (XXH3-64 of the key, power-of-two bucket count,
 * doubled when the load factor passes 1). Only the event-loop thread touches
 * it, so there is no locking. Each entry remembers the sequence number of the
 * write that produced it, so the server can hold a GET's answer until that
 * write is durable. LIST wants keys in byte order: meta_index_list collects
 * the matching entries and sorts them at call time (lists are rare, lookups
 * are not, so the table stays a plain hash).
 *
 * Ownership: the index owns every entry and its value buffer. Entry pointers
 * stay valid until the entry is replaced or deleted. */
#ifndef PIPEPS_META_INDEX_H
#define PIPEPS_META_INDEX_H

#include <stddef.h>
#include <stdint.h>

struct meta_entry {
    struct meta_entry *next; /* bucket chain */
    uint64_t hash;
    uint64_t seq;            /* sequence number of the write that set it */
    uint8_t *value;          /* malloc'd, value_len bytes (never NULL) */
    uint32_t value_len;
    uint32_t key_len;
    char key[];              /* key_len bytes + NUL */
};

struct meta_index {
    struct meta_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    uint64_t key_bytes;   /* sum of key_len over entries */
    uint64_t value_bytes; /* sum of value_len over entries */
};

void meta_index_init(struct meta_index *ix);
void meta_index_free(struct meta_index *ix);

struct meta_entry *meta_index_get(const struct meta_index *ix, const void *key, uint32_t key_len);
/* Insert or replace. Takes ownership of value (malloc'd; freed with the
 * entry). *old_value_len (if non-NULL) gets the replaced value's length, or
 * -1 if the key was new. Never fails (small allocations abort on OOM). */
struct meta_entry *meta_index_put(struct meta_index *ix, const void *key, uint32_t key_len,
                                  uint8_t *value, uint32_t value_len, uint64_t seq,
                                  int64_t *old_value_len);
/* 0, or PPS_ENOTFOUND. *old_value_len gets the removed value's length. */
int meta_index_delete(struct meta_index *ix, const void *key, uint32_t key_len,
                      uint32_t *old_value_len);

/* Call fn for every entry (unordered) until it returns non-zero, which is
 * then returned. fn must not modify the index. */
typedef int (*meta_index_fn)(void *ctx, const struct meta_entry *e);
int meta_index_foreach(const struct meta_index *ix, meta_index_fn fn, void *ctx);

/* Entries whose key starts with prefix, sorted by key (unsigned bytes,
 * shorter first on a tie). *out is malloc'd (the caller frees the array, not
 * the entries); valid until the index is next modified. PPS_ENOMEM if the
 * array cannot be allocated. */
int meta_index_list(const struct meta_index *ix, const void *prefix, uint32_t prefix_len,
                    const struct meta_entry ***out, size_t *n);

#endif
