/* cache_store: model table, placement and LRU; see cache_store.h. */
#include "cache/cache_store.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

void cache_store_init(struct cache_store *s, uint64_t nblocks, uint64_t block_size)
{
    memset(s, 0, sizeof *s);
    block_alloc_init(&s->alloc, nblocks);
    s->nblocks = nblocks;
    s->block_size = block_size;
    s->nbuckets = 256;
    s->buckets = pps_xcalloc(s->nbuckets, sizeof *s->buckets);
}

static void free_model(struct cache_model *m)
{
    free(m->batches);
    free(m);
}

static void free_runs(struct cache_store *s, struct cache_model *m)
{
    if (!m->placed)
        return;
    if (m->meta.nblocks)
        block_alloc_put(&s->alloc, m->meta.block, m->meta.nblocks);
    for (uint32_t i = 0; i < m->nbatches; i++)
        if (m->batches[i].nblocks)
            block_alloc_put(&s->alloc, m->batches[i].block, m->batches[i].nblocks);
    m->placed = 0;
    m->blocks_held = 0;
}

void cache_store_destroy(struct cache_store *s)
{
    while (s->lru_head) {
        struct cache_model *m = s->lru_head;
        cache_store_detach(s, m);
        free_runs(s, m);
        free_model(m);
    }
    free(s->buckets);
    block_alloc_destroy(&s->alloc);
    memset(s, 0, sizeof *s);
}

struct cache_model *cache_store_find(struct cache_store *s, const char *name)
{
    struct cache_model *m = s->buckets[hash_name(name) % s->nbuckets];
    for (; m; m = m->hnext)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

static void grow_table(struct cache_store *s)
{
    size_t n = s->nbuckets * 2;
    struct cache_model **b = pps_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct cache_model *m = s->buckets[i];
        while (m) {
            struct cache_model *next = m->hnext;
            size_t h = hash_name(m->name) % n;
            m->hnext = b[h];
            b[h] = m;
            m = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static void lru_unlink(struct cache_store *s, struct cache_model *m)
{
    if (m->lru_prev)
        m->lru_prev->lru_next = m->lru_next;
    else
        s->lru_head = m->lru_next;
    if (m->lru_next)
        m->lru_next->lru_prev = m->lru_prev;
    else
        s->lru_tail = m->lru_prev;
    m->lru_prev = m->lru_next = NULL;
}

static void lru_push_front(struct cache_store *s, struct cache_model *m)
{
    m->lru_prev = NULL;
    m->lru_next = s->lru_head;
    if (s->lru_head)
        s->lru_head->lru_prev = m;
    else
        s->lru_tail = m;
    s->lru_head = m;
}

struct cache_model *cache_store_add(struct cache_store *s, const char *name)
{
    PPS_ASSERT(cache_proto_valid_model_name(name) && !cache_store_find(s, name));
    if (s->nmodels >= s->nbuckets)
        grow_table(s);
    struct cache_model *m = pps_xcalloc(1, sizeof *m);
    strcpy(m->name, name);
    m->state = CACHE_MODEL_RESOLVING;
    size_t h = hash_name(name) % s->nbuckets;
    m->hnext = s->buckets[h];
    s->buckets[h] = m;
    m->in_table = 1;
    s->nmodels++;
    m->last_use = ++s->clock;
    lru_push_front(s, m);
    return m;
}

void cache_store_touch(struct cache_store *s, struct cache_model *m)
{
    m->last_use = ++s->clock;
    if (!m->in_table || s->lru_head == m)
        return;
    lru_unlink(s, m);
    lru_push_front(s, m);
}

void cache_store_detach(struct cache_store *s, struct cache_model *m)
{
    if (!m->in_table)
        return;
    struct cache_model **pp = &s->buckets[hash_name(m->name) % s->nbuckets];
    while (*pp != m)
        pp = &(*pp)->hnext;
    *pp = m->hnext;
    m->hnext = NULL;
    lru_unlink(s, m);
    m->in_table = 0;
    s->nmodels--;
}

void cache_store_release(struct cache_store *s, struct cache_model *m)
{
    PPS_ASSERT(m->pins == 0);
    cache_store_detach(s, m);
    free_runs(s, m);
    free_model(m);
}

uint64_t cache_store_blocks_for(const struct cache_store *s, uint64_t len)
{
    return len / s->block_size + (len % s->block_size != 0);
}

static void set_run(struct cache_store *s, struct cache_run *r, uint64_t block, uint64_t len)
{
    r->len = len;
    r->nblocks = cache_store_blocks_for(s, len);
    r->block = r->nblocks ? block : 0;
    r->offset = r->nblocks ? block * s->block_size : 0;
    r->ready = 0;
}

/* All runs of m, or none (the allocator is unchanged on failure). */
static int try_place(struct cache_store *s, struct cache_model *m, uint64_t total_blocks)
{
    uint64_t start;
    if (total_blocks && block_alloc_get(&s->alloc, total_blocks, &start) == 0) {
        uint64_t b = start;
        set_run(s, &m->meta, b, m->meta.len);
        b += m->meta.nblocks;
        for (uint32_t i = 0; i < m->nbatches; i++) {
            set_run(s, &m->batches[i], b, m->batches[i].len);
            b += m->batches[i].nblocks;
        }
        return 0;
    }
    /* No extent holds the whole model: best-fit each run, in batch order. */
    uint32_t done = 0; /* runs placed: 0 = meta, i + 1 = batch i */
    int rc = 0;
    for (uint32_t k = 0; k <= m->nbatches; k++) {
        struct cache_run *r = k == 0 ? &m->meta : &m->batches[k - 1];
        uint64_t nb = cache_store_blocks_for(s, r->len);
        uint64_t blk = 0;
        if (nb && (rc = block_alloc_get(&s->alloc, nb, &blk)) != 0)
            break;
        set_run(s, r, blk, r->len);
        done = k + 1;
    }
    if (rc) {
        for (uint32_t k = 0; k < done; k++) {
            struct cache_run *r = k == 0 ? &m->meta : &m->batches[k - 1];
            if (r->nblocks)
                block_alloc_put(&s->alloc, r->block, r->nblocks);
            r->nblocks = 0;
        }
        return rc;
    }
    return 0;
}

int cache_store_evictable(const struct cache_model *m)
{
    return m->in_table && m->state == CACHE_MODEL_READY && m->pins == 0 && !m->busy;
}

struct cache_model *cache_store_lru_victim(struct cache_store *s)
{
    for (struct cache_model *m = s->lru_tail; m; m = m->lru_prev)
        if (cache_store_evictable(m))
            return m;
    return NULL;
}

int cache_store_place(struct cache_store *s, struct cache_model *m, uint64_t meta_len,
                      uint32_t nbatches, const uint64_t *lens, cache_evict_fn evict, void *arg)
{
    PPS_ASSERT(!m->placed);
    uint64_t pool_bytes = s->nblocks * s->block_size;
    uint64_t need = 0, total = 0;
    if (meta_len > pool_bytes)
        return PPS_ENOSPACE;
    need = cache_store_blocks_for(s, meta_len);
    for (uint32_t i = 0; i < nbatches; i++) {
        if (lens[i] > pool_bytes)
            return PPS_ENOSPACE;
        need += cache_store_blocks_for(s, lens[i]);
        total += lens[i];
        if (need > s->nblocks)
            return PPS_ENOSPACE;
    }
    if (need > s->nblocks)
        return PPS_ENOSPACE;
    uint64_t reclaimable = s->alloc.nfree;
    for (struct cache_model *v = s->lru_head; v; v = v->lru_next)
        if (v != m && cache_store_evictable(v))
            reclaimable += v->blocks_held;
    if (need > reclaimable)
        return PPS_ENOSPACE;

    struct cache_run *batches = nbatches ? calloc(nbatches, sizeof *batches) : NULL;
    if (nbatches && !batches)
        return PPS_ENOMEM;
    free(m->batches);
    m->batches = batches;
    m->nbatches = nbatches;
    m->meta.len = meta_len;
    for (uint32_t i = 0; i < nbatches; i++)
        batches[i].len = lens[i];

    for (;;) {
        if (try_place(s, m, need) == 0)
            break;
        struct cache_model *v = cache_store_lru_victim(s);
        if (!v) /* fragmentation around pinned models: give up */
            return PPS_ENOSPACE;
        if (evict)
            evict(v, arg);
        cache_store_release(s, v);
    }
    m->placed = 1;
    m->blocks_held = need;
    m->total_size = total;
    m->nready = 0;
    m->state = CACHE_MODEL_FETCHING;
    return 0;
}

uint64_t cache_store_used_bytes(const struct cache_store *s)
{
    return (s->nblocks - s->alloc.nfree) * s->block_size;
}
