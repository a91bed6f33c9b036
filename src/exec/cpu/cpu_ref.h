/* cpu_ref: plain, correct C reference kernels for the ONNX ops (or the
 * corner cases of them) that oneDNN has no primitive for: element-wise
 * functions outside oneDNN's eltwise set, comparisons and Cast over
 * float32/int64, reductions, InstanceNormalization, Expand, Tile, Pad,
 * Resize, ConvTranspose, batched MatMul with broadcasting, and Gather with
 * float (constant) indices. An op the fast backend lacks falls back to one
 * of these rather than refusing the model.
 *
 * All tensors are plain C order, shapes are struct cpuk_shape (rank 0 is a
 * scalar). The caller (cpu_backend.c) has validated every shape and
 * attribute through shape.c; the kernels trust them. */
#ifndef PIPEPS_EXEC_CPU_REF_H
#define PIPEPS_EXEC_CPU_REF_H

#include <stddef.h>
#include <stdint.h>

#include "exec/cpu/cpu_kernels.h"
#include "model/graph.h"

enum cpuref_unop {
    CPUREF_NEG, CPUREF_ABS, CPUREF_EXP, CPUREF_LOG, CPUREF_RECIPROCAL, CPUREF_LEAKYRELU,
    CPUREF_CLIP, CPUREF_HARDSIGMOID, CPUREF_HARDSWISH, CPUREF_ELU, CPUREF_SELU, CPUREF_SOFTPLUS,
    CPUREF_SIN, CPUREF_COS, CPUREF_FLOOR, CPUREF_CEIL, CPUREF_SIGN
};

/* y = f(x) elementwise; alpha/beta are the op's attributes (LeakyRelu,
 * Elu: alpha; Clip: min, max; HardSigmoid: alpha, beta; Selu: alpha,
 * gamma). */
void cpuref_unary(enum cpuref_unop op, float alpha, float beta, const float *x, float *y,
                  uint64_t n);

enum cpuref_binop {
    CPUREF_MAX, CPUREF_MIN, CPUREF_EQUAL, CPUREF_LESS, CPUREF_GREATER, CPUREF_PRELU, CPUREF_POW,
    CPUREF_AND, CPUREF_OR, CPUREF_MOD, CPUREF_FMOD
};

/* y (float32, shape ys) = a op b with numpy broadcasting; a and b are
 * float32 or int64 (compared exactly when both are int64). PRelu is
 * a < 0 ? a * b : a; Pow is powf (a float base, a float or int64 exponent);
 * And/Or treat nonzero as true; Mod's result has b's sign, FMod's a's. */
void cpuref_binary(enum cpuref_binop op, const void *a, enum graph_dtype at,
                   const struct cpuk_shape *as, const void *b, enum graph_dtype bt,
                   const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys);

/* Not: y = (x == 0) as float 0/1. */
void cpuref_not(const void *x, enum graph_dtype xt, float *y, uint64_t n);
/* Cast between float32 and int64 (float to int64 truncates toward zero;
 * NaN and out-of-range values saturate). */
void cpuref_cast(const void *x, enum graph_dtype xt, void *y, enum graph_dtype yt, uint64_t n);

enum cpuref_reduce { CPUREF_RMEAN, CPUREF_RSUM, CPUREF_RMAX, CPUREF_RMIN };
/* Reduce x over the axes whose bit is set in axes_mask; y holds the
 * result in x's rank with reduced dims 1 (keepdims off only drops them,
 * the element order is the same). Accumulates in double. */
void cpuref_reduce(enum cpuref_reduce op, const float *x, const struct cpuk_shape *xs,
                   unsigned axes_mask, float *y);

/* Instance normalisation: per (n, c) over the inner elements. */
void cpuref_instancenorm(const float *x, float *y, int64_t n, int64_t c, int64_t inner,
                         const float *scale, const float *bias, float eps);

/* y = x broadcast to ys (Expand; x's rank <= ys's, right-aligned). */
void cpuref_expand(const void *x, const struct cpuk_shape *xs, size_t esize, void *y,
                   const struct cpuk_shape *ys);
/* y = x tiled: ys.dims[i] = xs.dims[i] * repeats[i]. */
void cpuref_tile(const void *x, const struct cpuk_shape *xs, size_t esize, void *y,
                 const struct cpuk_shape *ys);

enum cpuref_pad_mode { CPUREF_PAD_CONSTANT = 0, CPUREF_PAD_REFLECT = 1, CPUREF_PAD_EDGE = 2 };
/* pads = [begin..., end...] (rank each, may be negative: a crop). */
void cpuref_pad(const float *x, const struct cpuk_shape *xs, const int64_t *pads,
                enum cpuref_pad_mode mode, float value, float *y, const struct cpuk_shape *ys);

/* Resize x to ys: mode 0 nearest, 1 linear, 2 cubic (separable over every
 * axis whose size or scale changes); coord, nearest, cubic_a and
 * exclude_outside as in graph.h's Resize; scales (NULL: out/in) are the
 * per-axis scales the coordinate transform uses. */
struct cpuref_resize_mode {
    int mode, coord, nearest, exclude_outside;
    double cubic_a;
};
void cpuref_resize(const float *x, const struct cpuk_shape *xs, float *y,
                   const struct cpuk_shape *ys, const struct cpuref_resize_mode *rm,
                   const float *scales);

/* Transposed convolution, 1 to 3 spatial dims: x [N, Cin, s...], w [Cin,
 * Cout/group, k...], bias [Cout] or NULL, y [N, Cout, o...]. */
struct cpuref_deconv {
    int sp;                               /* spatial rank, 1..3 */
    int64_t group;
    int64_t stride[3], dilation[3], pad_begin[3];
};
void cpuref_convtranspose(const float *x, const struct cpuk_shape *xs, const float *w,
                          const struct cpuk_shape *ws, const float *bias, float *y,
                          const struct cpuk_shape *ys, const struct cpuref_deconv *p);

/* Batched MatMul with numpy broadcasting of the batch dims: a [..., M, K],
 * b [..., K, N], y [..., M, N] (1-D operands promoted by the caller). */
void cpuref_matmul(const float *a, const struct cpuk_shape *as, const float *b,
                   const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys);

/* Gemm: y[M,N] = alpha * A' B' + beta * C, A' = transA ? A^T : A (A is
 * [M,K] or [K,M]), B' likewise from B; C (NULL: none) broadcasts to
 * [M,N] from cs (rank <= 2). */
void cpuref_gemm(const float *a, const float *b, const float *c, const struct cpuk_shape *cs,
                 float *y, int64_t m, int64_t k, int64_t n, int ta, int tb, float alpha,
                 float beta);

/* Gather along axis with float indices (a constant index tensor stored as
 * a parameter): each is rounded to an integer, negative counts from the
 * end; PPS_ERANGE if one is outside [-dim, dim). */
int cpuref_gather_findex(const void *data, const struct cpuk_shape *ds, size_t esize,
                         const float *idx, uint64_t nidx, int axis, void *out);

#endif
