/* block_alloc: the cache pool's allocator of contiguous block runs.
 *
 * The pool is an array of nblocks equal blocks; a parameter batch (or a
 * model's METADATA blob) occupies one contiguous run of them so a server can
 * use every tensor in place. Free space is kept as a list of extents sorted
 * by start and always coalesced, so the list length is bounded by the
 * number of live runs + 1 and a freed neighbour merges at once. Allocation is
 * best-fit (smallest extent that holds the run; lowest start on ties): it
 * keeps large extents whole for large models, which is what limits
 * fragmentation here (docs/design.md). Pure bookkeeping: no memory is
 * touched, and block indices, never pointers, are handed out. Not
 * thread-safe (the cache's event loop owns it). */
#ifndef PIPEPS_BLOCK_ALLOC_H
#define PIPEPS_BLOCK_ALLOC_H

#include <stddef.h>
#include <stdint.h>

struct block_extent {
    uint64_t start;
    uint64_t count;
};

struct block_alloc {
    uint64_t nblocks;
    uint64_t nfree;              /* blocks in all free extents */
    struct block_extent *free;   /* sorted by start, no two adjacent */
    size_t nextents;
    size_t cap;
};

void block_alloc_init(struct block_alloc *a, uint64_t nblocks);
void block_alloc_destroy(struct block_alloc *a);
/* A run of count (> 0) blocks: 0 and *start, or PPS_ENOSPACE when no free
 * extent is large enough (the allocator is unchanged), PPS_EINVAL for 0. */
int block_alloc_get(struct block_alloc *a, uint64_t count, uint64_t *start);
/* Return a run obtained from block_alloc_get (or a part of one). Freeing a
 * block that is already free is a bug and aborts. */
void block_alloc_put(struct block_alloc *a, uint64_t start, uint64_t count);
/* The largest free extent, in blocks (0 when full). */
uint64_t block_alloc_largest(const struct block_alloc *a);

#endif
