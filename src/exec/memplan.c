/* memplan: greedy-by-size offset assignment (see memplan.h).
 *
 * The easy thing to get wrong: the gaps must be searched among buffers that
 * are live at the same time as the one being placed, in offset order, not
 * among all placed buffers. */
#include "exec/memplan.h"

#include <pthread.h>
#include <stdlib.h>

#include "common/err.h"

static const struct memplan_buf *sort_base;

static int by_size_desc(const void *a, const void *b)
{
    const struct memplan_buf *x = &sort_base[*(const int *)a], *y = &sort_base[*(const int *)b];
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

static int by_offset(const void *a, const void *b)
{
    const struct memplan_buf *x = *(const struct memplan_buf *const *)a,
                             *y = *(const struct memplan_buf *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return 0;
}

uint64_t memplan_assign(struct memplan_buf *bufs, int n, uint64_t align)
{
    if (n <= 0) return 0;
    int *order = pps_xmalloc((unsigned long)n * sizeof *order);
    const struct memplan_buf **live = pps_xmalloc((unsigned long)n * sizeof *live);
    for (int i = 0; i < n; i++) order[i] = i;
    /* qsort has no context argument in C11; plans are built under the
     * executor's lock, so a file-scope base is safe. */
    static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&sort_lock);
    sort_base = bufs;
    qsort(order, (size_t)n, sizeof *order, by_size_desc);
    sort_base = NULL;
    pthread_mutex_unlock(&sort_lock);

    uint64_t total = 0;
    for (int oi = 0; oi < n; oi++) {
        struct memplan_buf *b = &bufs[order[oi]];
        int nlive = 0;
        for (int pj = 0; pj < oi; pj++) {
            const struct memplan_buf *p = &bufs[order[pj]];
            if (p->start <= b->end && b->start <= p->end) live[nlive++] = p;
        }
        qsort(live, (size_t)nlive, sizeof *live, by_offset);
        uint64_t off = 0;
        for (int k = 0; k < nlive; k++) {
            if (live[k]->offset >= off + b->size) break; /* fits in the gap before it */
            uint64_t e = live[k]->offset + live[k]->size;
            e = (e + align - 1) & ~(align - 1);
            if (e > off) off = e;
        }
        b->offset = off;
        if (off + b->size > total) total = off + b->size;
    }
    free(order);
    free(live);
    return (total + align - 1) & ~(align - 1);
}
