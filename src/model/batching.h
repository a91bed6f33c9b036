/* batching: cut a model's parameters into parameter batches, the unit that
 * travels from storage to cache to executor (the seed's rule, see
 * ORIGINAL-DESIGN.md "Data model" and docs/models.md).
 *
 * Walk the nodes in order. A node that brings parameters not yet placed
 * joins the current batch unless adding their 512-byte-padded sizes would
 * push the batch over max_batch_size bytes; then a new batch starts. A batch
 * always holds at least one node's parameters, so a node bigger than the
 * limit gets a batch of its own. max_batch_size 0 gives one node with
 * parameters per batch. */
#ifndef PIPEPS_BATCHING_H
#define PIPEPS_BATCHING_H

#include <stdint.h>

#include "model/graph.h"

#define BATCHING_DEFAULT_MAX 32768000ull

/* Assign every param its batch and offset, every node its wait_batch, and
 * fill g->batches / g->nbatches / g->max_batch_size (replacing an earlier
 * batching). Params are renumbered into first-use order when they are not
 * already in it (node->params follow), so each batch's params are
 * contiguous in id order. Returns 0, or PPS_EINVAL if a param is used by no
 * node (it could not be placed). */
int batching_apply(struct graph *g, uint64_t max_batch_size);

#endif
