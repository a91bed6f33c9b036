/* onnx_fold: constant tensors of the ONNX importer and the arithmetic that
 * folds ONNX nodes over them at import time (shape subgraphs: Shape ->
 * Gather -> Unsqueeze -> Concat -> Reshape, scale constants, masks).
 *
 * A constant is float32 or int64 (other ONNX types are converted when read:
 * double and float16 to float32, int32/int8/uint8/bool to int64). Every
 * constant lives in a pool and is freed with it. Element counts of results
 * are bounded (ONNX_FOLD_MAX_ELEMS) before allocation, so a hostile file
 * cannot make a folded ConstantOfShape or Range allocate without limit.
 * The easy thing to get wrong: data may point into a mapped file at any
 * alignment, so elements are read with memcpy, never through a cast. */
#ifndef PIPEPS_ONNX_FOLD_H
#define PIPEPS_ONNX_FOLD_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

#define ONNX_FOLD_MAX_ELEMS (1ull << 26) /* elements of a tensor computed at import */

enum onnx_const_type { ONNX_CONST_F32 = 1, ONNX_CONST_I64 = 2 };

struct onnx_const {
    enum onnx_const_type type;
    int ndims;
    int64_t dims[GRAPH_MAX_DIMS];
    uint64_t n;                 /* elements */
    const void *data;           /* n floats or int64s, any alignment */
    void *owned;                /* allocation behind data, or NULL */
    struct onnx_const *next;    /* pool list */
};

struct onnx_const_pool {
    struct onnx_const *head;
};

void onnx_const_pool_free(struct onnx_const_pool *p);
/* A new zero-filled constant of the given shape (NULL with a message if it
 * is over the limits). */
struct onnx_const *onnx_const_new(struct onnx_const_pool *p, enum onnx_const_type type, int ndims,
                                  const int64_t *dims, char *err, size_t errlen);
/* A constant viewing data it does not own (initializers). */
struct onnx_const *onnx_const_view(struct onnx_const_pool *p, enum onnx_const_type type, int ndims,
                                   const int64_t *dims, const void *data);

double onnx_const_get(const struct onnx_const *c, uint64_t i);
int64_t onnx_const_geti(const struct onnx_const *c, uint64_t i);
void onnx_const_set(struct onnx_const *c, uint64_t i, double v);
void onnx_const_seti(struct onnx_const *c, uint64_t i, int64_t v);
/* Same type, shape and values. */
int onnx_const_equal(const struct onnx_const *a, const struct onnx_const *b);
/* Copy converted to type. */
struct onnx_const *onnx_const_cast(struct onnx_const_pool *p, const struct onnx_const *c,
                                   enum onnx_const_type type, char *err, size_t errlen);
/* Same values, other dims (element count must agree). */
struct onnx_const *onnx_const_reshape(struct onnx_const_pool *p, const struct onnx_const *c,
                                      int ndims, const int64_t *dims, char *err, size_t errlen);

enum onnx_fold_op {
    FOLD_ADD, FOLD_SUB, FOLD_MUL, FOLD_DIV, FOLD_POW, FOLD_MAX, FOLD_MIN,
    FOLD_EQUAL, FOLD_LESS, FOLD_GREATER, FOLD_AND, FOLD_OR, FOLD_MOD,
};
/* Numpy-broadcast binary op. Comparisons give int64 0/1; otherwise the
 * result has a's type. */
struct onnx_const *onnx_fold_binary(struct onnx_const_pool *p, enum onnx_fold_op op,
                                    const struct onnx_const *a, const struct onnx_const *b, char *err,
                                    size_t errlen);

enum onnx_fold_unary {
    FOLD_NEG, FOLD_ABS, FOLD_SQRT, FOLD_EXP, FOLD_LOG, FOLD_RECIPROCAL, FOLD_FLOOR, FOLD_CEIL,
    FOLD_NOT, FOLD_RELU, FOLD_SIGMOID, FOLD_TANH, FOLD_ERF, FOLD_IDENTITY,
};
struct onnx_const *onnx_fold_unary(struct onnx_const_pool *p, enum onnx_fold_unary op,
                                   const struct onnx_const *a, char *err, size_t errlen);

/* Where(cond, x, y) with broadcasting; cond nonzero = true. */
struct onnx_const *onnx_fold_where(struct onnx_const_pool *p, const struct onnx_const *cond,
                                   const struct onnx_const *x, const struct onnx_const *y, char *err,
                                   size_t errlen);
/* Gather along axis (negative indices count from the end). */
struct onnx_const *onnx_fold_gather(struct onnx_const_pool *p, const struct onnx_const *data,
                                    const struct onnx_const *idx, int64_t axis, char *err,
                                    size_t errlen);
/* Concatenate along axis. */
struct onnx_const *onnx_fold_concat(struct onnx_const_pool *p, const struct onnx_const *const *in,
                                    int n, int64_t axis, char *err, size_t errlen);
/* Slice with ONNX semantics (starts/ends clamped, negative steps). */
struct onnx_const *onnx_fold_slice(struct onnx_const_pool *p, const struct onnx_const *x, int n,
                                   const int64_t *starts, const int64_t *ends, const int64_t *axes,
                                   const int64_t *steps, char *err, size_t errlen);
struct onnx_const *onnx_fold_transpose(struct onnx_const_pool *p, const struct onnx_const *x,
                                       const int64_t *perm, char *err, size_t errlen);
/* Trilu: the upper (j - i >= k) or lower (j - i <= k) triangle of the last
 * two axes, the rest zero. */
struct onnx_const *onnx_fold_trilu(struct onnx_const_pool *p, const struct onnx_const *x, int64_t k, int upper,
                                   char *err, size_t errlen);
/* Broadcast x to shape (ONNX Expand: the result is the broadcast of both). */
struct onnx_const *onnx_fold_expand(struct onnx_const_pool *p, const struct onnx_const *x, int ndims,
                                    const int64_t *dims, char *err, size_t errlen);
/* Range(start, limit, delta). */
struct onnx_const *onnx_fold_range(struct onnx_const_pool *p, const struct onnx_const *start,
                                   const struct onnx_const *limit, const struct onnx_const *delta,
                                   char *err, size_t errlen);

/* Numpy broadcasting of two shapes; -1 if incompatible or rank too large. */
int onnx_broadcast_dims(int na, const int64_t *a, int nb, const int64_t *b, int64_t *out);

#endif
