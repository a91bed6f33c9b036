/* shape: ONNX shape inference for the executor.
 *
 * Given the batch size, computes the dtype and dims of every value of a
 * graph, checking each node's operands (counts, types, ranks, attribute
 * values) on the way: a graph that arrived over the network passed
 * graph_validate (structure) but its op semantics are only checked here, so
 * every attribute an op reads is range-checked before a kernel sees it.
 *
 * Operands of a node are its activation inputs followed by its parameters
 * (graph.h). Shape rules follow ONNX opset 17 with the documented
 * deviations (Gemm with A of rank >= 2, Reshape's shape as an attribute). */
#ifndef PIPEPS_EXEC_SHAPE_H
#define PIPEPS_EXEC_SHAPE_H

#include <stddef.h>
#include <stdint.h>

#include "exec/backend.h"
#include "model/graph.h"

/* Operand k of node n (inputs first, then params) as a tensor (layout NULL,
 * nbytes of plain storage). vals holds the values' shapes. */
void shape_operand(const struct graph *g, const struct graph_node *n, int k,
                   const struct exec_tensor *vals, struct exec_tensor *out);
static inline int shape_noperands(const struct graph_node *n) { return n->ninputs + n->nparams; }

/* Output of node n from its operands' shapes. PPS_ESHAPE (message in err)
 * if the operands or attributes are invalid for the op. */
int shape_node(const struct graph *g, const struct graph_node *n, const struct exec_tensor *vals,
               struct exec_tensor *out, char *err, size_t errlen);

/* Every value of g (vals has graph_nvalues(g) entries) at batch size batch.
 * Also checks that outputs with recorded dims agree. */
int shape_infer(const struct graph *g, int64_t batch, struct exec_tensor *vals, char *err,
                size_t errlen);

/* Numpy broadcasting of a and b into out (dims only). PPS_ESHAPE if
 * incompatible. */
int shape_broadcast(const struct exec_tensor *a, const struct exec_tensor *b,
                    struct exec_tensor *out);

uint64_t shape_elems(const struct exec_tensor *t);
size_t shape_dtype_size(enum graph_dtype t);

/* Geometry of a window op (Conv: 2-D; MaxPool, AveragePool: 1-D to 3-D)
 * after checks; sp is the number of spatial dims. */
struct shape_window {
    int sp;
    int64_t kernel[3], stride[3], dilation[3], pad_begin[3], pad_end[3];
    int ceil_mode;
    int64_t group;
};
/* Reads and checks the window attributes of n for input x (rank 4 for
 * Conv, 3 to 5 for pooling). For Conv, w is the weight tensor (kernel taken
 * from it when kernel_shape is absent); NULL for pooling. */
int shape_window(const struct graph_node *n, const struct exec_tensor *x,
                 const struct exec_tensor *w, struct shape_window *win, char *err, size_t errlen);
/* Output length along one spatial axis. */
int64_t shape_window_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe,
                         int ceil_mode);

/* Slice attributes resolved against the input (ONNX clamping rules). */
struct shape_slice {
    int64_t start[GRAPH_MAX_DIMS], step[GRAPH_MAX_DIMS], count[GRAPH_MAX_DIMS];
};
int shape_slice(const struct graph_node *n, const struct exec_tensor *x, struct shape_slice *sl,
                char *err, size_t errlen);

/* Reduce*'s "axes" (absent = all) as a bit mask over the input's axes;
 * checks range, repeats and keepdims. */
int shape_reduce_axes(const struct graph_node *n, int rank, unsigned *mask, char *err,
                      size_t errlen);

/* Resize's "scales_bits" (graph.h) decoded into scales; returns how many
 * (0: absent), -1 if malformed (not positive and finite, or too many). */
int shape_resize_scales(const struct graph_node *n, float *scales);

/* Geometry of a ConvTranspose (1 to 3 spatial dims) after checks. */
struct shape_deconv {
    int sp;
    int64_t group;
    int64_t stride[3], dilation[3], pad_begin[3], pad_end[3], out_pad[3], out[3];
};
int shape_deconv(const struct graph_node *n, const struct exec_tensor *x,
                 const struct exec_tensor *w, struct shape_deconv *dc, char *err, size_t errlen);

/* Normalised axis in [0, rank) or -1 if out of range. */
int shape_axis(int64_t axis, int rank);

#endif
