/* prepack: rewrite a model into its loading-optimized ("native") form, the
 * parameters a server can use in place from the cache's shared memory.
 *
 * The model is prepared once, offline, by the executor itself: every
 * BatchNormalization folded into its Conv (the Conv gets the folded bias),
 * every Conv and Gemm weight reordered into the blocked layout its kernel
 * consumes on this machine. The rewritten graph records each prepared
 * weight's layout (graph_param.layout) and the target they were made for
 * (graph.target); it is batched again with the same rule and size limit.
 * Everything else (activations' ops, other parameters) is unchanged, so
 * the prepared model computes exactly what the portable one computes, with
 * the same kernels: the outputs are bit-identical.
 *
 * A weight shared by several nodes (GPT-2's tied embedding) stays plain:
 * only one of its users could read a prepared layout. */
#ifndef PIPEPS_EXEC_PREPACK_H
#define PIPEPS_EXEC_PREPACK_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

struct prepack;

/* Prepare g (batched, portable or prepared for another target: stored
 * layouts are re-prepared) whose parameter batch b is batches[b]. Returns 0
 * or a PPS_E* code with a message in err. The batches must stay valid until
 * prepack_free. */
int prepack_model(const struct graph *g, const void *const *batches, struct prepack **out,
                  char *err, size_t errlen);
/* The rewritten, batched graph. */
const struct graph *prepack_graph(const struct prepack *p);
/* Write batch b of the rewritten graph (its nbytes) into buf, padding zeroed. */
void prepack_fill_batch(const struct prepack *p, int b, void *buf);
/* How many weight tensors were stored in a kernel layout, and BNs folded. */
int prepack_weights_prepared(const struct prepack *p);
int prepack_bn_folded(const struct prepack *p);
void prepack_free(struct prepack *p);

#endif
