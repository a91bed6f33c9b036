/* zoo_bert: BERT-base encoder (HuggingFace BertModel without the pooler):
 * 12 layers, hidden 768, 12 heads of 64, intermediate 3072, exact (erf)
 * GELU, LayerNorm eps 1e-12, vocabulary 30522, 512 positions, 2 token
 * types. Inputs int64 [N, S]: input_ids; attention_mask (optional, 1 =
 * attend, 0 = padding; all ones when omitted); token_type_ids (optional,
 * 0 or 1; all zeros when omitted). Output the last hidden state float32
 * [N, S, 768].
 *
 * Position ids are 0..S-1, so the graph takes rows 0..S-1 of the position
 * table with a Slice whose data operand is the parameter and adds them
 * (broadcast over the batch). Token types are a Gather of their table.
 *
 * The attention mask is applied as HuggingFace's BERT does: every layer
 * adds (1 - mask) * finfo(float32).min to the scaled scores of each key
 * column before the softmax. The graph has no cast, so the 0/1 mask ids
 * Gather rows of the constant table "const.attention_mask_table" [2, 1] =
 * {-FLT_MAX, 0} ([N, S, 1], reshaped to [N, 1, 1, S] once, broadcast over
 * heads and query rows); the Gather also refuses mask values other than 0
 * and 1. With the mask all ones the layer adds exactly 0 and the token type
 * rows are row 0, so outputs are bit for bit those of a maskless graph.
 *
 * Ops: Gather (data = the embedding table parameter, indices = the ids
 * activation), Slice (of a parameter, and with attributes starts/ends/axes/
 * steps), Add, LayerNormalization, Gemm (rank-3 A, transB=1), Reshape,
 * Transpose, MatMul, Mul (by the constant parameter "const.attn_scale" =
 * 1/sqrt(64), shared by all layers), Softmax, Gelu.
 *
 * Names are HuggingFace's BertModel state_dict keys
 * ("encoder.layer.0.attention.self.query.weight", [out, in] like nn.Linear). */
#include <float.h>
#include <math.h>
#include <stdio.h>

#include "model/zoo_layers.h"

#define HIDDEN 768
#define HEADS 12
#define HEAD_DIM 64
#define FFN 3072
#define LAYERS 12
#define EPS 1e-12f
#define WSTD 0.02f

/* [N, S, 768] -> [N, 12, S, 64] (perm 0,2,1,3) or [N, 12, 64, S] (0,2,3,1). */
static int32_t split_heads(struct zoo_model *m, int32_t x, const char *pfx, int keys)
{
    char n[GRAPH_NAME_MAX + 1];
    int64_t shape[4] = {0, 0, HEADS, HEAD_DIM};
    int64_t perm_q[4] = {0, 2, 1, 3}, perm_k[4] = {0, 2, 3, 1};
    zl_name(n, pfx, "split");
    x = zl_reshape(m, x, n, 4, shape);
    zl_name(n, pfx, "heads");
    return zl_transpose(m, x, n, 4, keys ? perm_k : perm_q);
}

void zoo_build_bert_base(struct zoo_model *m, int seq)
{
    int64_t in_dims[2] = {-1, seq};
    int32_t ids = graph_add_input(&m->g, "input_ids", GRAPH_I64, 2, in_dims);
    int32_t amask = graph_add_input(&m->g, "attention_mask", GRAPH_I64, 2, in_dims);
    graph_set_input_optional(&m->g, amask, 1);
    int32_t types = graph_add_input(&m->g, "token_type_ids", GRAPH_I64, 2, in_dims);
    graph_set_input_optional(&m->g, types, 0);
    int64_t d[2];

    d[0] = 30522; d[1] = HIDDEN;
    int32_t wte = zl_param(m, "embeddings.word_embeddings.weight", 2, d, ZOO_INIT_UNIFORM, 0, WSTD);
    int32_t x = zl_embedding(m, ids, wte, "embeddings.word_embeddings");
    d[0] = 512;
    int32_t wpe = zl_param(m, "embeddings.position_embeddings.weight", 2, d, ZOO_INIT_UNIFORM, 0, WSTD);
    int32_t pos = zl_slice(m, -1, wpe, "embeddings.position_embeddings", 0, seq, 0); /* [S, 768] */
    x = zl_add(m, x, pos, "embeddings.add_position");
    d[0] = 2;
    int32_t tte = zl_param(m, "embeddings.token_type_embeddings.weight", 2, d, ZOO_INIT_UNIFORM, 0, WSTD);
    int32_t tt = zl_embedding(m, types, tte, "embeddings.token_type_embeddings"); /* [N, S, 768] */
    x = zl_add(m, x, tt, "embeddings.add_token_type");
    x = zl_layernorm(m, x, "embeddings.LayerNorm", HIDDEN, EPS);

    /* Additive mask [N, 1, 1, S]: -FLT_MAX on padding keys, 0 elsewhere. */
    d[0] = 2; d[1] = 1;
    int32_t mtab = zl_param(m, "const.attention_mask_table", 2, d, ZOO_INIT_MASK_TABLE, -FLT_MAX, 0);
    int32_t madd = zl_embedding(m, amask, mtab, "attention_mask.table"); /* [N, S, 1] */
    int64_t mshape[4] = {0, 1, 1, -1};
    madd = zl_reshape(m, madd, "attention_mask.reshape", 4, mshape);

    int32_t scale = -1;
    for (int l = 0; l < LAYERS; l++) {
        char p[64], n[GRAPH_NAME_MAX + 1];
        snprintf(p, sizeof p, "encoder.layer.%d.", l);
        snprintf(n, sizeof n, "%sattention.self.query", p);
        int32_t q = zl_linear(m, x, n, HIDDEN, HIDDEN, WSTD, WSTD);
        q = split_heads(m, q, n, 0);
        snprintf(n, sizeof n, "%sattention.self.key", p);
        int32_t k = zl_linear(m, x, n, HIDDEN, HIDDEN, WSTD, WSTD);
        k = split_heads(m, k, n, 1);
        snprintf(n, sizeof n, "%sattention.self.value", p);
        int32_t v = zl_linear(m, x, n, HIDDEN, HIDDEN, WSTD, WSTD);
        v = split_heads(m, v, n, 0);

        snprintf(n, sizeof n, "%sattention.self.scores", p);
        int32_t s = zl_matmul(m, q, k, n); /* [N, 12, S, S] */
        if (scale < 0) {
            int64_t one = 1;
            scale = zl_param(m, "const.attn_scale", 1, &one, ZOO_INIT_CONST,
                             1.0f / sqrtf((float)HEAD_DIM), 0);
        }
        snprintf(n, sizeof n, "%sattention.self.scale", p);
        s = zl_binary_param(m, GRAPH_OP_MUL, s, scale, n);
        snprintf(n, sizeof n, "%sattention.self.mask", p);
        s = zl_add(m, s, madd, n);
        snprintf(n, sizeof n, "%sattention.self.softmax", p);
        s = zl_softmax(m, s, n, -1);
        snprintf(n, sizeof n, "%sattention.self.context", p);
        int32_t c = zl_matmul(m, s, v, n); /* [N, 12, S, 64] */
        int64_t perm[4] = {0, 2, 1, 3}, shape[3] = {0, 0, HIDDEN};
        snprintf(n, sizeof n, "%sattention.self.merge", p);
        c = zl_transpose(m, c, n, 4, perm);
        snprintf(n, sizeof n, "%sattention.self.merge_reshape", p);
        c = zl_reshape(m, c, n, 3, shape);

        snprintf(n, sizeof n, "%sattention.output.dense", p);
        c = zl_linear(m, c, n, HIDDEN, HIDDEN, WSTD, WSTD);
        snprintf(n, sizeof n, "%sattention.output.residual", p);
        c = zl_add(m, c, x, n);
        snprintf(n, sizeof n, "%sattention.output.LayerNorm", p);
        int32_t h = zl_layernorm(m, c, n, HIDDEN, EPS);

        snprintf(n, sizeof n, "%sintermediate.dense", p);
        int32_t f = zl_linear(m, h, n, HIDDEN, FFN, WSTD, WSTD);
        snprintf(n, sizeof n, "%sintermediate.gelu", p);
        f = zl_unary(m, GRAPH_OP_GELU, f, n);
        snprintf(n, sizeof n, "%soutput.dense", p);
        f = zl_linear(m, f, n, FFN, HIDDEN, WSTD, WSTD);
        snprintf(n, sizeof n, "%soutput.residual", p);
        f = zl_add(m, f, h, n);
        snprintf(n, sizeof n, "%soutput.LayerNorm", p);
        x = zl_layernorm(m, f, n, HIDDEN, EPS);
    }
    graph_add_output(&m->g, "last_hidden_state", x);
    int64_t out_dims[3] = {-1, seq, HIDDEN};
    graph_set_output_dims(&m->g, 0, 3, out_dims);
}
