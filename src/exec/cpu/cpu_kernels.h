/* cpu_kernels: plain C kernels for the ops (or the corner cases) oneDNN has
 * no primitive for: numpy-broadcast elementwise ops, Where, Gather, Slice,
 * Transpose and Concat of any element type, Erf, and average pooling with
 * ceil_mode and count_include_pad (PyTorch's divisor).
 *
 * All tensors are plain C order. Loops are parallelised with OpenMP, the
 * runtime oneDNN itself uses here, so both share one thread pool. */
#ifndef PIPEPS_EXEC_CPU_KERNELS_H
#define PIPEPS_EXEC_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

#define CPUK_MAX_DIMS GRAPH_MAX_DIMS

/* A plain tensor shape. */
struct cpuk_shape {
    int ndims;
    int64_t dims[CPUK_MAX_DIMS];
};

enum cpuk_binop { CPUK_ADD, CPUK_SUB, CPUK_MUL, CPUK_DIV, CPUK_POW };
enum cpuk_unop { CPUK_ERF, CPUK_RELU, CPUK_TANH, CPUK_SIGMOID, CPUK_SQRT, CPUK_GELU, CPUK_GELU_TANH };

/* y = a op b with numpy broadcasting; ys is the broadcast shape. */
void cpuk_binary(enum cpuk_binop op, const float *a, const struct cpuk_shape *as, const float *b,
                 const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys);
/* y = cond ? x : z with broadcasting; cond is float32 or int64 (nonzero = true). */
void cpuk_where(const void *cond, enum graph_dtype cond_type, const struct cpuk_shape *cs,
                const float *x, const struct cpuk_shape *xs, const float *z,
                const struct cpuk_shape *zs, float *y, const struct cpuk_shape *ys);
void cpuk_unary(enum cpuk_unop op, const float *x, float *y, uint64_t n);

/* ONNX Gather along axis, with indices in [0, dim) as an embedding lookup
 * takes them: a negative index (ONNX would count it from the end) or one
 * past the end returns PPS_ERANGE (nothing is read out of bounds). */
int cpuk_gather(const void *data, const struct cpuk_shape *ds, size_t esize, const int64_t *idx,
                uint64_t nidx, int axis, void *out);
/* out[i] = x[start + i*step] per axis; count = output dims. */
void cpuk_slice(const void *x, const struct cpuk_shape *xs, size_t esize, const int64_t *start,
                const int64_t *step, const int64_t *count, void *y);
/* y = x transposed: y.dims[i] = x.dims[perm[i]]. */
void cpuk_transpose(const void *x, const struct cpuk_shape *xs, size_t esize, const int *perm,
                    void *y);
/* Concatenate n tensors along axis (all dims but axis equal). */
void cpuk_concat(const void *const *xs, const struct cpuk_shape *shapes, int n, size_t esize,
                 int axis, void *y);

/* NCHW average pooling with PyTorch's divisor: with count_include_pad the
 * window is clipped to the padded input (so a ceil_mode window hanging past
 * the right padding divides by less), without it to the input. */
void cpuk_avgpool(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y, int64_t oh,
                  int64_t ow, const int64_t *kernel, const int64_t *stride,
                  const int64_t *pad_begin, const int64_t *pad_end, int count_include_pad);

/* Layer normalisation over the last `inner` elements of each of `outer`
 * rows; scale/bias have `inner` elements (bias may be NULL). */
void cpuk_layernorm(const float *x, float *y, int64_t outer, int64_t inner, const float *scale,
                    const float *bias, float eps);

#endif
