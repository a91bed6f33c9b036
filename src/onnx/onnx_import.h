/* onnx_import: an ONNX ModelProto (.onnx file) into a PipePS graph
 * (model/graph.h), so an exported model is served like a built-in one.
 *
 * The file is parsed with the protobuf-c code generated from onnx.proto.
 * Every ONNX value is either a constant (initializers, Constant nodes and
 * everything computed from constants and from shapes: folded here) or an
 * activation (a graph value). Constants a node needs become float32
 * parameters of that node, or attributes (Reshape's shape, Slice's starts,
 * Pad's pads, ...). Shapes of activations come from the executor's own shape
 * inference (exec/shape.h), evaluated for two batch sizes at once so that a
 * shape element derived from the batch ("Shape(x)[0]") is recognised and
 * written as 0 / -1 in a Reshape target instead of being frozen. docs/onnx.md
 * describes the mapping, the folding and the limits.
 *
 * The easy thing to get wrong: everything in the file is untrusted. Counts,
 * dims and lengths are bounded before allocation, external data must stay
 * inside the model's folder, and a malformed graph (cycle, dangling name)
 * is refused with a message naming the node, never a crash. */
#ifndef PIPEPS_ONNX_IMPORT_H
#define PIPEPS_ONNX_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

/* The .onnx protobuf itself is limited to 2 GiB by protobuf; bigger models
 * keep their weights as external data. */
#define ONNX_MAX_PROTO_BYTES ((uint64_t)2 << 30)

struct onnx_import_options {
    int64_t seq_len;       /* value for every symbolic dim other than input dim 0; 0 = refuse */
    int allow_unsupported; /* 1: import nodes the executor does not support (for `pipeps import` reports) */
};

void onnx_import_options_default(struct onnx_import_options *o);

/* opaque: owns the graph (unbatched: param batch/offset unset) and the parameter data */
struct onnx_model;

int onnx_import_file(const char *path, const struct onnx_import_options *o,
                     struct onnx_model **out, char *err, size_t errlen);
/* bytes of a ModelProto already in memory; base_dir for external data
 * (NULL: external data refused). bytes need not outlive the call. */
int onnx_import_memory(const void *bytes, size_t len, const char *base_dir,
                       const struct onnx_import_options *o, struct onnx_model **out, char *err,
                       size_t errlen);

const struct graph *onnx_model_graph(const struct onnx_model *m);
/* float32 values of param id p of onnx_model_graph() (nbytes of the param),
 * valid until free. Not necessarily 4-byte aligned (it may point into a
 * mapped external-data file): copy it with memcpy. */
const void *onnx_model_param(const struct onnx_model *m, int32_t p);
void onnx_model_free(struct onnx_model *m);

/* ---- what `pipeps import` reports ----------------------------------------- */

/* Per ONNX op type of the model's graph, in first-appearance order. */
struct onnx_op_stat {
    char op_type[64];
    char domain[64];
    int count;
    int supported;         /* 1: the importer maps it (to a graph op or by folding) */
};
int onnx_model_nop_types(const struct onnx_model *m);
const struct onnx_op_stat *onnx_model_op_type(const struct onnx_model *m, int i);

/* Nodes that could not be imported (only with allow_unsupported; without it
 * the import fails naming them). */
struct onnx_unsupported_node {
    char name[GRAPH_NAME_MAX + 1];
    char op_type[64];
    char domain[64];
    int64_t opset;
};
int onnx_model_nunsupported(const struct onnx_model *m);
const struct onnx_unsupported_node *onnx_model_unsupported(const struct onnx_model *m, int i);

/* Model facts for reports: ONNX opset of the default domain, node count of
 * the ONNX graph, producer name ("pytorch"). */
int64_t onnx_model_opset(const struct onnx_model *m);
int onnx_model_onnx_nodes(const struct onnx_model *m);
const char *onnx_model_producer(const struct onnx_model *m);

#endif
