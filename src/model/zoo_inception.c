/* zoo_inception: torchvision's inception_v3 for inference: no auxiliary
 * classifier (aux_logits=False: torchvision runs AuxLogits only in
 * training), transform_input=False, input float32 [N, 3, 299, 299], output
 * logits [N, 1000]. Every convolution is torchvision's BasicConv2d: Conv
 * without bias, BatchNormalization with eps 0.001, Relu; names follow the
 * state_dict ("Mixed_6b.branch7x7_2.conv.weight", "...bn.running_mean").
 *
 * Ops: Conv, BatchNormalization, Relu, MaxPool, AveragePool
 * (count_include_pad=1, PyTorch's default), Concat, GlobalAveragePool,
 * Flatten, Gemm.
 *
 * InceptionE's nested torch.cat([.., cat(2a, 2b), cat(3a, 3b), ..]) is one
 * six-way Concat here: concatenation is associative, the channel order is
 * the same. Non-square kernels (1x7, 7x1) use pads (0,3)/(3,0): easy to
 * swap. */
#include <stdio.h>

#include "model/zoo_layers.h"

/* BasicConv2d: conv + bn(eps 1e-3) + relu. "prefix.conv", "prefix.bn". */
static int32_t basic(struct zoo_model *m, int32_t x, const char *blk, const char *name, int cin,
                     int cout, int kh, int kw, int s, int ph, int pw)
{
    char prefix[GRAPH_NAME_MAX + 1], n[GRAPH_NAME_MAX + 1];
    snprintf(prefix, sizeof prefix, "%s%s", blk, name);
    zl_name(n, prefix, "conv");
    x = zl_conv(m, x, n, cin, cout, kh, kw, s, s, ph, pw);
    zl_name(n, prefix, "bn");
    x = zl_bn(m, x, n, cout, 1e-3f, 0.8f, 1.2f);
    zl_name(n, prefix, "relu");
    return zl_unary(m, GRAPH_OP_RELU, x, n);
}

static int32_t pool_name(struct zoo_model *m, int32_t x, const char *blk, int avg, int k, int s,
                         int p)
{
    char n[GRAPH_NAME_MAX + 1];
    snprintf(n, sizeof n, "%s%s", blk, avg ? "avg_pool" : "max_pool");
    return avg ? zl_avgpool(m, x, n, k, s, p) : zl_maxpool(m, x, n, k, s, p);
}

static int32_t cat(struct zoo_model *m, const char *blk, int n, const int32_t *xs)
{
    char name[GRAPH_NAME_MAX + 1];
    snprintf(name, sizeof name, "%scat", blk);
    return zl_concat(m, n, xs, name, 1);
}

static int32_t inception_a(struct zoo_model *m, int32_t x, const char *blk, int cin, int pool_f)
{
    int32_t o[4];
    o[0] = basic(m, x, blk, "branch1x1", cin, 64, 1, 1, 1, 0, 0);
    o[1] = basic(m, x, blk, "branch5x5_1", cin, 48, 1, 1, 1, 0, 0);
    o[1] = basic(m, o[1], blk, "branch5x5_2", 48, 64, 5, 5, 1, 2, 2);
    o[2] = basic(m, x, blk, "branch3x3dbl_1", cin, 64, 1, 1, 1, 0, 0);
    o[2] = basic(m, o[2], blk, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    o[2] = basic(m, o[2], blk, "branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1);
    o[3] = pool_name(m, x, blk, 1, 3, 1, 1);
    o[3] = basic(m, o[3], blk, "branch_pool", cin, pool_f, 1, 1, 1, 0, 0);
    return cat(m, blk, 4, o);
}

static int32_t inception_b(struct zoo_model *m, int32_t x, const char *blk, int cin)
{
    int32_t o[3];
    o[0] = basic(m, x, blk, "branch3x3", cin, 384, 3, 3, 2, 0, 0);
    o[1] = basic(m, x, blk, "branch3x3dbl_1", cin, 64, 1, 1, 1, 0, 0);
    o[1] = basic(m, o[1], blk, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    o[1] = basic(m, o[1], blk, "branch3x3dbl_3", 96, 96, 3, 3, 2, 0, 0);
    o[2] = pool_name(m, x, blk, 0, 3, 2, 0);
    return cat(m, blk, 3, o);
}

static int32_t inception_c(struct zoo_model *m, int32_t x, const char *blk, int cin, int c7)
{
    int32_t o[4];
    o[0] = basic(m, x, blk, "branch1x1", cin, 192, 1, 1, 1, 0, 0);
    o[1] = basic(m, x, blk, "branch7x7_1", cin, c7, 1, 1, 1, 0, 0);
    o[1] = basic(m, o[1], blk, "branch7x7_2", c7, c7, 1, 7, 1, 0, 3);
    o[1] = basic(m, o[1], blk, "branch7x7_3", c7, 192, 7, 1, 1, 3, 0);
    o[2] = basic(m, x, blk, "branch7x7dbl_1", cin, c7, 1, 1, 1, 0, 0);
    o[2] = basic(m, o[2], blk, "branch7x7dbl_2", c7, c7, 7, 1, 1, 3, 0);
    o[2] = basic(m, o[2], blk, "branch7x7dbl_3", c7, c7, 1, 7, 1, 0, 3);
    o[2] = basic(m, o[2], blk, "branch7x7dbl_4", c7, c7, 7, 1, 1, 3, 0);
    o[2] = basic(m, o[2], blk, "branch7x7dbl_5", c7, 192, 1, 7, 1, 0, 3);
    o[3] = pool_name(m, x, blk, 1, 3, 1, 1);
    o[3] = basic(m, o[3], blk, "branch_pool", cin, 192, 1, 1, 1, 0, 0);
    return cat(m, blk, 4, o);
}

static int32_t inception_d(struct zoo_model *m, int32_t x, const char *blk, int cin)
{
    int32_t o[3];
    o[0] = basic(m, x, blk, "branch3x3_1", cin, 192, 1, 1, 1, 0, 0);
    o[0] = basic(m, o[0], blk, "branch3x3_2", 192, 320, 3, 3, 2, 0, 0);
    o[1] = basic(m, x, blk, "branch7x7x3_1", cin, 192, 1, 1, 1, 0, 0);
    o[1] = basic(m, o[1], blk, "branch7x7x3_2", 192, 192, 1, 7, 1, 0, 3);
    o[1] = basic(m, o[1], blk, "branch7x7x3_3", 192, 192, 7, 1, 1, 3, 0);
    o[1] = basic(m, o[1], blk, "branch7x7x3_4", 192, 192, 3, 3, 2, 0, 0);
    o[2] = pool_name(m, x, blk, 0, 3, 2, 0);
    return cat(m, blk, 3, o);
}

static int32_t inception_e(struct zoo_model *m, int32_t x, const char *blk, int cin)
{
    int32_t o[6];
    o[0] = basic(m, x, blk, "branch1x1", cin, 320, 1, 1, 1, 0, 0);
    int32_t b3 = basic(m, x, blk, "branch3x3_1", cin, 384, 1, 1, 1, 0, 0);
    o[1] = basic(m, b3, blk, "branch3x3_2a", 384, 384, 1, 3, 1, 0, 1);
    o[2] = basic(m, b3, blk, "branch3x3_2b", 384, 384, 3, 1, 1, 1, 0);
    int32_t d = basic(m, x, blk, "branch3x3dbl_1", cin, 448, 1, 1, 1, 0, 0);
    d = basic(m, d, blk, "branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1);
    o[3] = basic(m, d, blk, "branch3x3dbl_3a", 384, 384, 1, 3, 1, 0, 1);
    o[4] = basic(m, d, blk, "branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 0);
    o[5] = pool_name(m, x, blk, 1, 3, 1, 1);
    o[5] = basic(m, o[5], blk, "branch_pool", cin, 192, 1, 1, 1, 0, 0);
    return cat(m, blk, 6, o);
}

void zoo_build_inception_v3(struct zoo_model *m)
{
    int64_t in_dims[4] = {-1, 3, 299, 299};
    int32_t x = graph_add_input(&m->g, "input", GRAPH_F32, 4, in_dims);
    x = basic(m, x, "", "Conv2d_1a_3x3", 3, 32, 3, 3, 2, 0, 0);
    x = basic(m, x, "", "Conv2d_2a_3x3", 32, 32, 3, 3, 1, 0, 0);
    x = basic(m, x, "", "Conv2d_2b_3x3", 32, 64, 3, 3, 1, 1, 1);
    x = zl_maxpool(m, x, "maxpool1", 3, 2, 0);
    x = basic(m, x, "", "Conv2d_3b_1x1", 64, 80, 1, 1, 1, 0, 0);
    x = basic(m, x, "", "Conv2d_4a_3x3", 80, 192, 3, 3, 1, 0, 0);
    x = zl_maxpool(m, x, "maxpool2", 3, 2, 0);
    x = inception_a(m, x, "Mixed_5b.", 192, 32);
    x = inception_a(m, x, "Mixed_5c.", 256, 64);
    x = inception_a(m, x, "Mixed_5d.", 288, 64);
    x = inception_b(m, x, "Mixed_6a.", 288);
    x = inception_c(m, x, "Mixed_6b.", 768, 128);
    x = inception_c(m, x, "Mixed_6c.", 768, 160);
    x = inception_c(m, x, "Mixed_6d.", 768, 160);
    x = inception_c(m, x, "Mixed_6e.", 768, 192);
    x = inception_d(m, x, "Mixed_7a.", 768);
    x = inception_e(m, x, "Mixed_7b.", 1280);
    x = inception_e(m, x, "Mixed_7c.", 2048);
    x = zl_classifier(m, x, "fc", 2048, 1000, 1.0f);
    graph_add_output(&m->g, "logits", x);
    int64_t out_dims[2] = {-1, 1000};
    graph_set_output_dims(&m->g, 0, 2, out_dims);
}
