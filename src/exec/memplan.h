/* memplan: offsets for a plan's activation buffers in one arena.
 *
 * Each buffer has a size and a lifetime [start, end] in step indices; two
 * buffers whose lifetimes overlap never share bytes. Offsets are assigned
 * greedily, largest buffer first, each at the lowest aligned offset free
 * for its whole lifetime (the ggml/TFLite "greedy by size" heuristic): done
 * once per (model, batch size), then every run reuses the arena. */
#ifndef PIPEPS_EXEC_MEMPLAN_H
#define PIPEPS_EXEC_MEMPLAN_H

#include <stdint.h>

struct memplan_buf {
    uint64_t size;
    int start, end;   /* inclusive step range the buffer is live in */
    uint64_t offset;  /* set by memplan_assign */
};

/* Sets every buf's offset (multiple of align, a power of two) and returns
 * the arena size needed. */
uint64_t memplan_assign(struct memplan_buf *bufs, int n, uint64_t align);

#endif
