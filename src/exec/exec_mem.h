/* exec_mem: recycling of the executor's big memory blocks (prepared
 * weights, activation arenas) inside one process.
 *
 * Fresh anonymous memory costs a page fault per 4 KiB page on first touch
 * (about 0.5 ms of CPU per MB here), which for a 240 MB model is as much
 * CPU as preparing its weights. A server that switches between models frees
 * one model's blocks and soon needs blocks of the same sizes again, so freed
 * blocks are kept (already faulted in) up to a limit and handed out again;
 * a server also reserves a faulted-in block at start for its first models.
 * The easy thing to get wrong: a recycled block holds old bytes, so users
 * must not assume zeroed memory. */
#ifndef PIPEPS_EXEC_MEM_H
#define PIPEPS_EXEC_MEM_H

#include <stdint.h>

#define EXEC_MEM_DEFAULT_KEEP (512ull << 20)

/* A block of at least bytes (page aligned), or NULL: the best-fitting idle
 * block (split if bigger; its tail stays idle), else fresh memory. *faulted
 * is set to 1 if it was recycled (its pages were touched before). *size
 * receives the block's real size, to pass back to exec_mem_put. */
void *exec_mem_get(uint64_t bytes, uint64_t *size, int *faulted);
/* Give a block back: kept for reuse while the idle total stays under the
 * limit (oldest idle blocks are unmapped first), else unmapped. Adjacent
 * idle blocks are joined. */
void exec_mem_put(void *p, uint64_t size);
/* Map and fault in bytes now and keep them idle (raising the limit to at
 * least bytes): a server calls it at start so that even its first cold
 * model writes prepared weights at memory speed. 0 or PPS_ENOMEM. */
int exec_mem_reserve(uint64_t bytes);
/* Idle bytes kept at most (default EXEC_MEM_DEFAULT_KEEP; 0 disables
 * recycling and unmaps what is idle). */
void exec_mem_set_keep(uint64_t bytes);
uint64_t exec_mem_idle_bytes(void);

#endif
