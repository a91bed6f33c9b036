/* cache_store: what the cache holds, where, and what may be evicted.
 *
 * The table of models (by name), each with the pool runs of its METADATA
 * blob and its batches, readiness, pin count and LRU position; placement of
 * a new model with eviction of least-recently-used unpinned models when the
 * pool is short. Pure bookkeeping over a block_alloc, owned by the cache's
 * event loop (not thread-safe); the daemon (cache_daemon.c) does all I/O and
 * hangs its own per-model state on `owner`.
 *
 * Placement policy (docs/design.md): a model is placed as ONE contiguous
 * extent (metadata, then batch 0, 1, ...) when a free extent can hold it,
 * so evicting it later returns one large extent; only when no extent is
 * large enough are its runs placed one by one (best-fit each). A model that
 * can never fit, or that could fit only by evicting pinned or in-flight
 * models, fails with PPS_ENOSPACE without evicting anything.
 *
 * Easy to get wrong: a model is evictable only when it is complete, has no
 * pins and no fetch activity (`busy`): a fetch thread may still write into
 * its blocks until the fetcher reports the job finished. */
#ifndef PIPEPS_CACHE_STORE_H
#define PIPEPS_CACHE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cache/block_alloc.h"
#include "cache/cache_proto.h"

enum cache_model_state {
    CACHE_MODEL_RESOLVING = 0, /* reading its records from the metadata storage */
    CACHE_MODEL_FETCHING,      /* placed; batches landing */
    CACHE_MODEL_READY,         /* every batch in the pool */
};

/* One run in the pool; offsets are bytes from the pool's start. */
struct cache_run {
    uint64_t offset;
    uint64_t len;              /* bytes of data (the run is rounded up to blocks) */
    uint64_t block;            /* first block; meaningless when nblocks = 0 */
    uint64_t nblocks;
    uint8_t ready;
};

struct cache_model {
    char name[CACHE_MODEL_NAME_MAX + 1];
    enum cache_model_state state;
    uint64_t generation;
    uint64_t total_size;       /* sum of batch lengths */
    uint32_t nbatches;
    uint32_t nready;
    struct cache_run meta;     /* the METADATA blob */
    struct cache_run *batches; /* nbatches entries once placed */
    int placed;
    uint64_t blocks_held;
    int pins;                  /* subscriptions holding it; never evicted while > 0 */
    int busy;                  /* set by the owner while a fetch job may touch its blocks */
    int in_table;              /* 0 once detached (failed or cancelled, awaiting release) */
    uint64_t last_use;         /* store clock at the last touch */
    struct cache_model *hnext;
    struct cache_model *lru_prev, *lru_next;
    void *owner;               /* the daemon's per-model state */
};

struct cache_store {
    struct block_alloc alloc;
    uint64_t nblocks;
    uint64_t block_size;
    struct cache_model **buckets;
    size_t nbuckets;
    size_t nmodels;            /* in the table */
    struct cache_model *lru_head; /* most recently used first */
    struct cache_model *lru_tail;
    uint64_t clock;
};

/* Called for each victim before its blocks are freed and it is destroyed. */
typedef void (*cache_evict_fn)(struct cache_model *victim, void *arg);

void cache_store_init(struct cache_store *s, uint64_t nblocks, uint64_t block_size);
/* Destroys every model still in the table (their owner state is the
 * caller's to free first); detached models must have been released. */
void cache_store_destroy(struct cache_store *s);

struct cache_model *cache_store_find(struct cache_store *s, const char *name);
/* A new RESOLVING model, most recently used; name must be valid and absent. */
struct cache_model *cache_store_add(struct cache_store *s, const char *name);
void cache_store_touch(struct cache_store *s, struct cache_model *m);
/* Out of the table and the LRU list; keeps its blocks until release. */
void cache_store_detach(struct cache_store *s, struct cache_model *m);
/* Free its blocks and the model itself (pins must be 0). */
void cache_store_release(struct cache_store *s, struct cache_model *m);

/* Place a model: meta_len bytes of metadata and nbatches batches of the given
 * lengths, evicting LRU victims (reported through evict) when needed.
 * PPS_ENOSPACE (nothing evicted) when it cannot fit; on success the model's
 * runs are set and it is FETCHING. */
int cache_store_place(struct cache_store *s, struct cache_model *m, uint64_t meta_len,
                      uint32_t nbatches, const uint64_t *lens, cache_evict_fn evict, void *arg);
int cache_store_evictable(const struct cache_model *m);
/* The least recently used evictable model, or NULL. */
struct cache_model *cache_store_lru_victim(struct cache_store *s);

uint64_t cache_store_blocks_for(const struct cache_store *s, uint64_t len);
uint64_t cache_store_used_bytes(const struct cache_store *s);

#endif
