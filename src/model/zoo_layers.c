/* zoo_layers: layer helpers for the model builders (see zoo_layers.h).
 *
 * The weight recipes live here, next to the layers, so all models share
 * them: Kaiming-scaled convolutions, batch norms close to identity with
 * some spread (so that a swapped mean/var or scale/bias shows up in the
 * correctness tests), transformers' std-0.02 linears. The easy thing to get
 * wrong is ONNX's pads order: [h_begin, w_begin, h_end, w_end]. */
#include "model/zoo_layers.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

int32_t zl_param(struct zoo_model *m, const char *name, int ndims, const int64_t *dims,
                 enum zoo_init_kind kind, float a, float b)
{
    int32_t id = graph_add_param(&m->g, name, ndims, dims);
    PPS_ASSERT(id == m->ninit);
    m->init = pps_xrealloc(m->init, (unsigned long)(m->ninit + 1) * sizeof *m->init);
    m->init_names = pps_xrealloc(m->init_names, (unsigned long)(m->ninit + 1) * sizeof *m->init_names);
    m->init[m->ninit] = (struct zoo_init){.kind = kind, .a = a, .b = b};
    memcpy(m->init_names[m->ninit], m->g.params[id].name, sizeof m->init_names[0]);
    m->ninit++;
    return id;
}

void zl_name(char *out, const char *prefix, const char *suffix)
{
    int n = snprintf(out, GRAPH_NAME_MAX + 1, "%s.%s", prefix, suffix);
    PPS_ASSERT(n > 0 && n <= GRAPH_NAME_MAX);
}

int32_t zl_conv(struct zoo_model *m, int32_t x, const char *prefix, int cin, int cout, int kh,
                int kw, int sh, int sw, int ph, int pw)
{
    char name[GRAPH_NAME_MAX + 1];
    zl_name(name, prefix, "weight");
    int64_t dims[4] = {cout, cin, kh, kw};
    float std = sqrtf(2.0f / (float)(cin * kh * kw));
    int32_t w = zl_param(m, name, 4, dims, ZOO_INIT_UNIFORM, 0.0f, std);
    int32_t y = graph_add_node(&m->g, GRAPH_OP_CONV, prefix, 1, &x, 1, &w);
    int64_t k[2] = {kh, kw}, s[2] = {sh, sw}, d[2] = {1, 1}, p[4] = {ph, pw, ph, pw};
    graph_set_ints(&m->g, "kernel_shape", 2, k);
    graph_set_ints(&m->g, "strides", 2, s);
    graph_set_ints(&m->g, "pads", 4, p);
    graph_set_ints(&m->g, "dilations", 2, d);
    graph_set_int(&m->g, "group", 1);
    return y;
}

int32_t zl_bn(struct zoo_model *m, int32_t x, const char *prefix, int c, float eps, float glo,
              float ghi)
{
    char name[GRAPH_NAME_MAX + 1];
    int64_t dims[1] = {c};
    int32_t p[4];
    zl_name(name, prefix, "weight");
    p[0] = zl_param(m, name, 1, dims, ZOO_INIT_RANGE, glo, ghi);
    zl_name(name, prefix, "bias");
    p[1] = zl_param(m, name, 1, dims, ZOO_INIT_UNIFORM, 0.0f, 0.05f);
    zl_name(name, prefix, "running_mean");
    p[2] = zl_param(m, name, 1, dims, ZOO_INIT_UNIFORM, 0.0f, 0.05f);
    zl_name(name, prefix, "running_var");
    p[3] = zl_param(m, name, 1, dims, ZOO_INIT_RANGE, 0.8f, 1.25f);
    int32_t y = graph_add_node(&m->g, GRAPH_OP_BATCHNORM, prefix, 1, &x, 4, p);
    graph_set_float(&m->g, "epsilon", eps);
    return y;
}

int32_t zl_unary(struct zoo_model *m, enum graph_op op, int32_t x, const char *name)
{
    return graph_add_node(&m->g, op, name, 1, &x, 0, NULL);
}

int32_t zl_add(struct zoo_model *m, int32_t a, int32_t b, const char *name)
{
    int32_t in[2] = {a, b};
    return graph_add_node(&m->g, GRAPH_OP_ADD, name, 2, in, 0, NULL);
}

int32_t zl_binary_param(struct zoo_model *m, enum graph_op op, int32_t x, int32_t param,
                        const char *name)
{
    return graph_add_node(&m->g, op, name, 1, &x, 1, &param);
}

static int32_t pool(struct zoo_model *m, enum graph_op op, int32_t x, const char *name, int k,
                    int s, int p)
{
    int32_t y = graph_add_node(&m->g, op, name, 1, &x, 0, NULL);
    int64_t ks[2] = {k, k}, st[2] = {s, s}, pads[4] = {p, p, p, p};
    graph_set_ints(&m->g, "kernel_shape", 2, ks);
    graph_set_ints(&m->g, "strides", 2, st);
    graph_set_ints(&m->g, "pads", 4, pads);
    graph_set_int(&m->g, "ceil_mode", 0);
    return y;
}

int32_t zl_maxpool(struct zoo_model *m, int32_t x, const char *name, int k, int s, int p)
{
    return pool(m, GRAPH_OP_MAXPOOL, x, name, k, s, p);
}

int32_t zl_avgpool(struct zoo_model *m, int32_t x, const char *name, int k, int s, int p)
{
    int32_t y = pool(m, GRAPH_OP_AVGPOOL, x, name, k, s, p);
    graph_set_int(&m->g, "count_include_pad", 1);
    return y;
}

int32_t zl_concat(struct zoo_model *m, int n, const int32_t *xs, const char *name, int axis)
{
    int32_t y = graph_add_node(&m->g, GRAPH_OP_CONCAT, name, n, xs, 0, NULL);
    graph_set_int(&m->g, "axis", axis);
    return y;
}

int32_t zl_classifier(struct zoo_model *m, int32_t x, const char *prefix, int cin, int classes,
                      float gain)
{
    x = zl_unary(m, GRAPH_OP_GLOBALAVGPOOL, x, "avgpool");
    x = zl_unary(m, GRAPH_OP_FLATTEN, x, "flatten");
    graph_set_int(&m->g, "axis", 1);
    /* Logits with a spread of O(1): the softmax is neither uniform nor
     * one-hot. */
    return zl_linear(m, x, prefix, cin, classes, gain / sqrtf((float)cin), 0.02f);
}

int32_t zl_linear(struct zoo_model *m, int32_t x, const char *prefix, int in, int out, float wstd,
                  float bstd)
{
    char name[GRAPH_NAME_MAX + 1];
    int64_t wd[2] = {out, in}, bd[1] = {out};
    int32_t p[2];
    int np = 1;
    zl_name(name, prefix, "weight");
    p[0] = zl_param(m, name, 2, wd, ZOO_INIT_UNIFORM, 0.0f, wstd);
    if (bstd >= 0) {
        zl_name(name, prefix, "bias");
        p[1] = zl_param(m, name, 1, bd, ZOO_INIT_UNIFORM, 0.0f, bstd);
        np = 2;
    }
    int32_t y = graph_add_node(&m->g, GRAPH_OP_GEMM, prefix, 1, &x, np, p);
    graph_set_float(&m->g, "alpha", 1.0f);
    graph_set_float(&m->g, "beta", 1.0f);
    graph_set_int(&m->g, "transA", 0);
    graph_set_int(&m->g, "transB", 1);
    return y;
}

int32_t zl_layernorm(struct zoo_model *m, int32_t x, const char *prefix, int dim, float eps)
{
    char name[GRAPH_NAME_MAX + 1];
    int64_t d[1] = {dim};
    int32_t p[2];
    zl_name(name, prefix, "weight");
    p[0] = zl_param(m, name, 1, d, ZOO_INIT_RANGE, 0.9f, 1.1f);
    zl_name(name, prefix, "bias");
    p[1] = zl_param(m, name, 1, d, ZOO_INIT_UNIFORM, 0.0f, 0.02f);
    int32_t y = graph_add_node(&m->g, GRAPH_OP_LAYERNORM, prefix, 1, &x, 2, p);
    graph_set_int(&m->g, "axis", -1);
    graph_set_float(&m->g, "epsilon", eps);
    return y;
}

int32_t zl_reshape(struct zoo_model *m, int32_t x, const char *name, int n, const int64_t *shape)
{
    int32_t y = graph_add_node(&m->g, GRAPH_OP_RESHAPE, name, 1, &x, 0, NULL);
    graph_set_ints(&m->g, "shape", n, shape);
    return y;
}

int32_t zl_transpose(struct zoo_model *m, int32_t x, const char *name, int n, const int64_t *perm)
{
    int32_t y = graph_add_node(&m->g, GRAPH_OP_TRANSPOSE, name, 1, &x, 0, NULL);
    graph_set_ints(&m->g, "perm", n, perm);
    return y;
}

int32_t zl_matmul(struct zoo_model *m, int32_t a, int32_t b, const char *name)
{
    int32_t in[2] = {a, b};
    return graph_add_node(&m->g, GRAPH_OP_MATMUL, name, 2, in, 0, NULL);
}

int32_t zl_softmax(struct zoo_model *m, int32_t x, const char *name, int axis)
{
    int32_t y = graph_add_node(&m->g, GRAPH_OP_SOFTMAX, name, 1, &x, 0, NULL);
    graph_set_int(&m->g, "axis", axis);
    return y;
}

int32_t zl_slice(struct zoo_model *m, int32_t x, int32_t param, const char *name, int64_t start,
                 int64_t end, int64_t axis)
{
    int32_t y;
    if (x >= 0)
        y = graph_add_node(&m->g, GRAPH_OP_SLICE, name, 1, &x, 0, NULL);
    else
        y = graph_add_node(&m->g, GRAPH_OP_SLICE, name, 0, NULL, 1, &param);
    int64_t one = 1;
    graph_set_ints(&m->g, "starts", 1, &start);
    graph_set_ints(&m->g, "ends", 1, &end);
    graph_set_ints(&m->g, "axes", 1, &axis);
    graph_set_ints(&m->g, "steps", 1, &one);
    return y;
}

int32_t zl_embedding(struct zoo_model *m, int32_t ids, int32_t table, const char *name)
{
    int32_t y = graph_add_node(&m->g, GRAPH_OP_GATHER, name, 1, &ids, 1, &table);
    graph_set_int(&m->g, "axis", 0);
    return y;
}
