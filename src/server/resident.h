/* resident: the server's table of resident models and its memory budget.
 *
 * A resident model keeps its prepared weights in the server so the next
 * request for it runs at once. The table charges each model the bytes it
 * owns and keeps the total within a capacity (--memory) by dropping least
 * recently used models first. A model in use (acquired by a request that is
 * being served) is never chosen as a victim: the caller asks for victims
 * with resident_victim and drops them itself, so freeing (which may block on
 * the executor) happens outside whatever lock guards the table.
 *
 * Pure bookkeeping, not thread-safe (the server guards it with its lock).
 * The easy thing to get wrong: a model that alone exceeds the capacity must
 * not evict everything else for nothing; resident_fits says whether it may
 * stay at all. */
#ifndef PIPEPS_RESIDENT_H
#define PIPEPS_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

struct resident_entry {
    char name[256];
    uint64_t bytes;                 /* charged against the capacity */
    int in_use;                     /* requests using it now; never a victim while > 0 */
    uint64_t last_use;              /* table clock at the last touch */
    void *owner;                    /* the server's per-model state */
    struct resident_entry *prev, *next; /* most recently used first */
};

struct resident_table {
    uint64_t capacity;
    uint64_t used;
    int count;
    uint64_t clock;
    struct resident_entry *head, *tail;
};

void resident_init(struct resident_table *t, uint64_t capacity);
/* Frees the entries (not their owners: drain them with resident_first first). */
void resident_destroy(struct resident_table *t);

/* The entry for name, or NULL. Does not touch. */
struct resident_entry *resident_find(struct resident_table *t, const char *name);
/* Add name (absent) charged bytes, most recently used, in_use = 0. */
struct resident_entry *resident_add(struct resident_table *t, const char *name, uint64_t bytes,
                                    void *owner);
void resident_touch(struct resident_table *t, struct resident_entry *e);
void resident_set_bytes(struct resident_table *t, struct resident_entry *e, uint64_t bytes);
/* Unlink and free e (in_use must be 0); returns its owner. */
void *resident_remove(struct resident_table *t, struct resident_entry *e);

/* Whether a model of bytes could be resident at all (bytes <= capacity). */
int resident_fits(const struct resident_table *t, uint64_t bytes);
/* The least recently used entry not in use, other than keep (may be NULL),
 * if used + extra exceeds the capacity; NULL when within capacity or when
 * every candidate is in use. Call repeatedly, removing each victim. */
struct resident_entry *resident_victim(struct resident_table *t, uint64_t extra,
                                       const struct resident_entry *keep);
/* The least recently used entry not in use, regardless of capacity (NULL if none). */
struct resident_entry *resident_lru_idle(struct resident_table *t);
/* Iteration, most recently used first. */
static inline struct resident_entry *resident_first(struct resident_table *t) { return t->head; }

#endif
