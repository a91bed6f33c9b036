/* store_index: the storage daemon's in-memory index, key -> where the
 * newest record of that key lives.
 *
 * A chained hash table of entries that embed their key. An entry exists for
 * every key with a live value, and for a deleted key as long as dead PUT
 * records of it remain on disk (its newest tombstone must then survive
 * compaction, or a restart would bring an old value back). The index does
 * no locking: the store guards it with its rwlock. */
#ifndef PIPEPS_STORE_INDEX_H
#define PIPEPS_STORE_INDEX_H

#include <stddef.h>
#include <stdint.h>

struct store_file;

struct store_entry {
    struct store_entry *next;  /* hash chain */
    uint64_t hash;             /* of the key */
    struct store_file *file;   /* file of the winning record (live PUT or newest tombstone) */
    uint64_t rec_off;          /* offset of that record in file */
    uint64_t value_len;        /* of the live value; 0 for a tombstone */
    uint64_t seq;              /* seq of the winning record; a record with a lower seq is dead */
    uint32_t nputs;            /* valid PUT records of this key on disk, live or dead */
    uint8_t live;              /* 1: the winner is a PUT; 0: a tombstone */
    uint32_t key_len;
    char key[];                /* NUL-terminated */
};

struct store_index {
    struct store_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

void store_index_init(struct store_index *ix);
/* Frees every entry. */
void store_index_free(struct store_index *ix);
struct store_entry *store_index_find(const struct store_index *ix, const char *key,
                                     uint32_t key_len);
/* The entry for key, created (zeroed, not live) if absent. */
struct store_entry *store_index_get(struct store_index *ix, const char *key, uint32_t key_len);
/* Unlink and free e. */
void store_index_remove(struct store_index *ix, struct store_entry *e);

/* Iterate: start with *pos = 0 and e = NULL; returns the next entry or NULL.
 * The table must not change during an iteration, except that the entry just
 * returned may be removed when the caller first fetches the next one:
 * fetch, then remove. */
struct store_entry *store_index_next(const struct store_index *ix, size_t *pos,
                                     struct store_entry *e);

#endif
