/* fuse: groups a graph's nodes into execution steps (backend.h) by
 * analysing the graph, never by model name.
 *
 * A node is fused into the step of the node producing its input when that
 * value is read by that node alone (and is not a model output), and the
 * backend says it can fuse the pair:
 *   Conv -> BatchNormalization         folded into the conv's weights
 *   Conv/Gemm/MatMul/BatchNormalization/Add -> Add(other activation, same shape)
 *                                      accumulated into the output (sum)
 *   ... -> Relu/Gelu/Tanh/Sigmoid      applied to the output
 *   MatMul/Gemm -> Mul/Div/Add/Sub by a one-element parameter
 *   MatMul (no other post-op) -> Transpose   written in transposed order
 * A step runs at the position of its last node, which keeps the node order a
 * valid execution order (every value a step reads is produced earlier). */
#ifndef PIPEPS_EXEC_FUSE_H
#define PIPEPS_EXEC_FUSE_H

#include <stddef.h>

#include "exec/backend.h"
#include "model/graph.h"

/* v1, v2: shapes of every value at batch sizes 1 and 2 (a sum needs equal
 * shapes at every batch size; checking two sizes rules out broadcasting
 * along the batch dimension). With fuse == 0 every node is its own step.
 * *steps is malloc'ed (caller frees), sorted by last_node. */
int fuse_build(const struct graph *g, struct exec_backend *be, const struct exec_tensor *v1,
               const struct exec_tensor *v2, int fuse, struct exec_step **steps, int *nsteps,
               char *err, size_t errlen);

#endif
