/* warmup: a fresh server process builds, before its first request, the
 * kernels of the models its machine's cache already holds, so that their
 * first request from the cache does not pay for oneDNN's JIT compilation.
 *
 * The cache link hands over the list of models the cache held when it was
 * first reached (with copies of their METADATA blobs; nothing is pinned).
 * A low-priority thread then builds each model's executor skeleton and its
 * batch-1 plan, and throws them away: what stays is oneDNN's process-wide
 * primitive cache (and recycled activation memory). Requests never wait for
 * it: the worker does not know it exists, and it stops at shutdown. */
#ifndef PIPEPS_SERVER_WARMUP_H
#define PIPEPS_SERVER_WARMUP_H

#include <stdint.h>

#include "exec/executor.h"
#include "server/cache_link.h"

struct warmup;

/* max_models: warm at most this many (most recently used first); 0 disables. */
int warmup_start(struct warmup **out, const struct exec_options *opt, int max_models);
/* The cache link's list callback (cache_list_fn); arg is the warmup. */
void warmup_offer(struct cache_listed *v, uint32_t n, void *arg);
/* Models warmed so far. */
int warmup_done(struct warmup *w);
/* Stop (after the model in progress) and free. */
void warmup_stop(struct warmup *w);

#endif
