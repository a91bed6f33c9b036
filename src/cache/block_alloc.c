/* block_alloc: sorted, coalesced free-extent list with best-fit placement;
 * see block_alloc.h. The one thing easy to get wrong is coalescing on put:
 * a freed run may touch the extent before it, the one after it, or both. */
#include "cache/block_alloc.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

void block_alloc_init(struct block_alloc *a, uint64_t nblocks)
{
    memset(a, 0, sizeof *a);
    a->nblocks = nblocks;
    a->cap = 16;
    a->free = pps_xmalloc(a->cap * sizeof *a->free);
    if (nblocks) {
        a->free[0].start = 0;
        a->free[0].count = nblocks;
        a->nextents = 1;
        a->nfree = nblocks;
    }
}

void block_alloc_destroy(struct block_alloc *a)
{
    free(a->free);
    memset(a, 0, sizeof *a);
}

static void remove_extent(struct block_alloc *a, size_t i)
{
    memmove(&a->free[i], &a->free[i + 1], (a->nextents - i - 1) * sizeof *a->free);
    a->nextents--;
}

static void insert_extent(struct block_alloc *a, size_t i, uint64_t start, uint64_t count)
{
    if (a->nextents == a->cap) {
        a->cap *= 2;
        a->free = pps_xrealloc(a->free, a->cap * sizeof *a->free);
    }
    memmove(&a->free[i + 1], &a->free[i], (a->nextents - i) * sizeof *a->free);
    a->free[i].start = start;
    a->free[i].count = count;
    a->nextents++;
}

int block_alloc_get(struct block_alloc *a, uint64_t count, uint64_t *start)
{
    if (count == 0)
        return PPS_EINVAL;
    size_t best = a->nextents;
    for (size_t i = 0; i < a->nextents; i++) {
        if (a->free[i].count < count)
            continue;
        if (best == a->nextents || a->free[i].count < a->free[best].count)
            best = i;
        if (a->free[i].count == count)
            break; /* exact fit: cannot do better */
    }
    if (best == a->nextents)
        return PPS_ENOSPACE;
    struct block_extent *e = &a->free[best];
    *start = e->start;
    e->start += count;
    e->count -= count;
    if (e->count == 0)
        remove_extent(a, best);
    a->nfree -= count;
    return 0;
}

void block_alloc_put(struct block_alloc *a, uint64_t start, uint64_t count)
{
    if (count == 0)
        return;
    PPS_ASSERT(start < a->nblocks && count <= a->nblocks - start);
    /* first extent starting after the run (binary search) */
    size_t lo = 0, hi = a->nextents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->free[mid].start < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t i = lo;
    struct block_extent *prev = i > 0 ? &a->free[i - 1] : NULL;
    struct block_extent *next = i < a->nextents ? &a->free[i] : NULL;
    /* a double free would overlap a free extent */
    PPS_ASSERT(!prev || prev->start + prev->count <= start);
    PPS_ASSERT(!next || start + count <= next->start);
    int join_prev = prev && prev->start + prev->count == start;
    int join_next = next && start + count == next->start;
    if (join_prev && join_next) {
        prev->count += count + next->count;
        remove_extent(a, i);
    } else if (join_prev) {
        prev->count += count;
    } else if (join_next) {
        next->start = start;
        next->count += count;
    } else {
        insert_extent(a, i, start, count);
    }
    a->nfree += count;
}

uint64_t block_alloc_largest(const struct block_alloc *a)
{
    uint64_t best = 0;
    for (size_t i = 0; i < a->nextents; i++)
        if (a->free[i].count > best)
            best = a->free[i].count;
    return best;
}
