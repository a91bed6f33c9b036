/* zoo_gpt2: GPT-2 small (HuggingFace GPT2LMHeadModel): 12 pre-LN blocks,
 * hidden 768, 12 heads of 64, MLP 3072 with the tanh-approximated GELU
 * ("gelu_new"), LayerNorm eps 1e-5, causal attention, vocabulary 50257,
 * 1024 positions. Input int64 token ids [N, S]; output the logits float32
 * [N, S, 50257] from the final LayerNorm times the tied token embedding
 * (Gemm with B = "wte.weight", transB=1: the parameter is shared by the
 * first and the last node).
 *
 * Names are HuggingFace's GPT2Model keys ("wte.weight", "h.0.ln_1.weight",
 * "h.0.attn.c_attn.weight", "h.0.mlp.c_proj.bias", "ln_f.weight") but every
 * linear weight is stored [out, in] like nn.Linear: HuggingFace's Conv1D
 * stores [in, out], so converting from/to a HuggingFace checkpoint
 * transposes c_attn, c_proj, c_fc weights.
 *
 * Ops: Gather, Slice (of the position table parameter; of the fused qkv
 * activation along axis 2), Add (activations; and the constant causal mask
 * parameter "const.causal_mask" [S, S], 0 on and below the diagonal and
 * -1e9 above), LayerNormalization, Gemm, Reshape, Transpose, MatMul, Mul
 * (by "const.attn_scale" = 1/8), Softmax, Gelu (approximate=1). */
#include <math.h>
#include <stdio.h>

#include "model/zoo_layers.h"

#define HIDDEN 768
#define HEADS 12
#define HEAD_DIM 64
#define FFN 3072
#define LAYERS 12
#define VOCAB 50257
#define POSITIONS 1024
#define EPS 1e-5f
#define WSTD 0.02f

static int32_t heads(struct zoo_model *m, int32_t qkv, const char *pfx, const char *what, int idx)
{
    char n[GRAPH_NAME_MAX + 1];
    snprintf(n, sizeof n, "%sattn.%s", pfx, what);
    int32_t x = zl_slice(m, qkv, -1, n, (int64_t)idx * HIDDEN, (int64_t)(idx + 1) * HIDDEN, 2);
    int64_t shape[4] = {0, 0, HEADS, HEAD_DIM};
    int64_t perm_q[4] = {0, 2, 1, 3}, perm_k[4] = {0, 2, 3, 1};
    snprintf(n, sizeof n, "%sattn.%s_split", pfx, what);
    x = zl_reshape(m, x, n, 4, shape);
    snprintf(n, sizeof n, "%sattn.%s_heads", pfx, what);
    return zl_transpose(m, x, n, 4, idx == 1 ? perm_k : perm_q);
}

void zoo_build_gpt2(struct zoo_model *m, int seq)
{
    int64_t in_dims[2] = {-1, seq};
    int32_t ids = graph_add_input(&m->g, "input_ids", GRAPH_I64, 2, in_dims);
    int64_t d[2] = {VOCAB, HIDDEN};
    int32_t wte = zl_param(m, "wte.weight", 2, d, ZOO_INIT_UNIFORM, 0, WSTD);
    int32_t x = zl_embedding(m, ids, wte, "wte");
    d[0] = POSITIONS;
    int32_t wpe = zl_param(m, "wpe.weight", 2, d, ZOO_INIT_UNIFORM, 0, WSTD);
    int32_t pos = zl_slice(m, -1, wpe, "wpe", 0, seq, 0);
    x = zl_add(m, x, pos, "add_position");

    int32_t scale = -1, mask = -1;
    for (int l = 0; l < LAYERS; l++) {
        char p[32], n[GRAPH_NAME_MAX + 1];
        snprintf(p, sizeof p, "h.%d.", l);
        snprintf(n, sizeof n, "%sln_1", p);
        int32_t a = zl_layernorm(m, x, n, HIDDEN, EPS);
        snprintf(n, sizeof n, "%sattn.c_attn", p);
        int32_t qkv = zl_linear(m, a, n, HIDDEN, 3 * HIDDEN, WSTD, WSTD);
        int32_t q = heads(m, qkv, p, "q", 0);
        int32_t k = heads(m, qkv, p, "k", 1);
        int32_t v = heads(m, qkv, p, "v", 2);
        snprintf(n, sizeof n, "%sattn.scores", p);
        int32_t s = zl_matmul(m, q, k, n);
        if (scale < 0) {
            int64_t one = 1;
            scale = zl_param(m, "const.attn_scale", 1, &one, ZOO_INIT_CONST,
                             1.0f / sqrtf((float)HEAD_DIM), 0);
        }
        snprintf(n, sizeof n, "%sattn.scale", p);
        s = zl_binary_param(m, GRAPH_OP_MUL, s, scale, n);
        if (mask < 0) {
            int64_t md[2] = {seq, seq};
            mask = zl_param(m, "const.causal_mask", 2, md, ZOO_INIT_CAUSAL, -1e9f, 0);
        }
        snprintf(n, sizeof n, "%sattn.causal_mask", p);
        s = zl_binary_param(m, GRAPH_OP_ADD, s, mask, n);
        snprintf(n, sizeof n, "%sattn.softmax", p);
        s = zl_softmax(m, s, n, -1);
        snprintf(n, sizeof n, "%sattn.context", p);
        int32_t c = zl_matmul(m, s, v, n);
        int64_t perm[4] = {0, 2, 1, 3}, shape[3] = {0, 0, HIDDEN};
        snprintf(n, sizeof n, "%sattn.merge", p);
        c = zl_transpose(m, c, n, 4, perm);
        snprintf(n, sizeof n, "%sattn.merge_reshape", p);
        c = zl_reshape(m, c, n, 3, shape);
        snprintf(n, sizeof n, "%sattn.c_proj", p);
        c = zl_linear(m, c, n, HIDDEN, HIDDEN, WSTD, WSTD);
        snprintf(n, sizeof n, "%sattn.residual", p);
        x = zl_add(m, x, c, n);

        snprintf(n, sizeof n, "%sln_2", p);
        int32_t f = zl_layernorm(m, x, n, HIDDEN, EPS);
        snprintf(n, sizeof n, "%smlp.c_fc", p);
        f = zl_linear(m, f, n, HIDDEN, FFN, WSTD, WSTD);
        snprintf(n, sizeof n, "%smlp.gelu", p);
        f = zl_unary(m, GRAPH_OP_GELU, f, n);
        graph_set_int(&m->g, "approximate", 1);
        snprintf(n, sizeof n, "%smlp.c_proj", p);
        f = zl_linear(m, f, n, FFN, HIDDEN, WSTD, WSTD);
        snprintf(n, sizeof n, "%smlp.residual", p);
        x = zl_add(m, x, f, n);
    }
    x = zl_layernorm(m, x, "ln_f", HIDDEN, EPS);
    x = graph_add_node(&m->g, GRAPH_OP_GEMM, "lm_head", 1, &x, 1, &wte);
    graph_set_float(&m->g, "alpha", 1.0f);
    graph_set_float(&m->g, "beta", 1.0f);
    graph_set_int(&m->g, "transA", 0);
    graph_set_int(&m->g, "transB", 1);
    graph_add_output(&m->g, "logits", x);
    int64_t out_dims[3] = {-1, seq, VOCAB};
    graph_set_output_dims(&m->g, 0, 3, out_dims);
}
