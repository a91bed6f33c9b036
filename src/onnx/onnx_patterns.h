/* onnx_patterns: recognising decomposed operations in an ONNX graph so the
 * importer emits the one graph op the executor (and its fusion) knows:
 *   exact GELU   x * 0.5 * (1 + Erf(x / sqrt(2)))   in the orders exporters
 *                write it (Div or Mul by 1/sqrt(2); the 0.5 applied first,
 *                last or to x)                      -> Gelu
 *   tanh GELU    x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
 *                                                   -> Gelu approximate=1
 *   LayerNorm    ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div,
 *                [Mul gamma], [Add beta] over the last axis
 *                                                   -> LayerNormalization
 *   Linear       MatMul(x, W) + Add(b) with W and b constants (torch's
 *                nn.Linear export)                   -> Gemm(x; W, b)
 * The easy thing to get wrong: an inner value of a pattern that something
 * else also reads (another node or a graph output) must stop the rewrite,
 * since the rewritten graph no longer computes it. */
#ifndef PIPEPS_ONNX_PATTERNS_H
#define PIPEPS_ONNX_PATTERNS_H

#include <stdint.h>

#include "onnx.pb-c.h"

enum onnx_rewrite_kind { ONNX_REWRITE_NONE = 0, ONNX_REWRITE_GELU, ONNX_REWRITE_LAYERNORM, ONNX_REWRITE_LINEAR };

/* Set on the last node of a pattern: that node is imported as this op. */
struct onnx_rewrite {
    enum onnx_rewrite_kind kind;
    const char *x;      /* the input */
    const char *gamma;  /* LayerNorm: scale, or NULL (ones); Linear: W */
    const char *beta;   /* LayerNorm: bias, or NULL (zeros); Linear: b */
    float epsilon;
    int approximate;    /* GELU: 1 = the tanh form */
};

/* absorbed[i] = 1 for the other nodes of a pattern (skipped by the
 * importer); rw[i] for the last. Both have gp->n_node entries, zeroed by
 * the caller. Returns the number of patterns found. */
int onnx_find_patterns(const Onnx__GraphProto *gp, uint8_t *absorbed, struct onnx_rewrite *rw);

#endif
