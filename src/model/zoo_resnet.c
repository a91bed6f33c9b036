/* zoo_resnet: torchvision's resnet152 (Bottleneck blocks 3-8-36-3, stride on
 * the 3x3 conv, "v1.5"), input float32 [N, 3, 224, 224], output logits
 * [N, 1000]. Parameter names are torchvision's state_dict keys
 * ("layer3.17.bn2.running_var"); num_batches_tracked is not stored.
 *
 * Ops: Conv, BatchNormalization, Relu, MaxPool, Add, GlobalAveragePool,
 * Flatten, Gemm.
 *
 * Each block's last batch norm gets a small gamma (0.05-0.2): with
 * inference-mode batch norms nothing re-normalises the residual stream, and
 * 50 blocks of full-size branches would grow it by orders of magnitude.
 * Even so it grows to rms ~5 by layer4, hence the classifier's gain 0.25. */
#include <stdio.h>

#include "model/zoo_layers.h"

static int32_t conv_bn(struct zoo_model *m, int32_t x, const char *blk, const char *conv,
                       const char *bn, int cin, int cout, int k, int s, int p, float glo, float ghi)
{
    char cn[GRAPH_NAME_MAX + 1], bnn[GRAPH_NAME_MAX + 1];
    snprintf(cn, sizeof cn, "%s%s", blk, conv);
    snprintf(bnn, sizeof bnn, "%s%s", blk, bn);
    x = zl_conv(m, x, cn, cin, cout, k, k, s, s, p, p);
    return zl_bn(m, x, bnn, cout, 1e-5f, glo, ghi);
}

static int32_t bottleneck(struct zoo_model *m, int32_t x, const char *blk, int cin, int planes,
                          int stride)
{
    char name[GRAPH_NAME_MAX + 1];
    int cout = planes * 4;
    int32_t y = conv_bn(m, x, blk, "conv1", "bn1", cin, planes, 1, 1, 0, 0.8f, 1.2f);
    snprintf(name, sizeof name, "%srelu1", blk);
    y = zl_unary(m, GRAPH_OP_RELU, y, name);
    y = conv_bn(m, y, blk, "conv2", "bn2", planes, planes, 3, stride, 1, 0.8f, 1.2f);
    snprintf(name, sizeof name, "%srelu2", blk);
    y = zl_unary(m, GRAPH_OP_RELU, y, name);
    y = conv_bn(m, y, blk, "conv3", "bn3", planes, cout, 1, 1, 0, 0.05f, 0.2f);
    int32_t identity = x;
    if (stride != 1 || cin != cout)
        identity = conv_bn(m, x, blk, "downsample.0", "downsample.1", cin, cout, 1, stride, 0,
                           0.8f, 1.2f);
    snprintf(name, sizeof name, "%sadd", blk);
    y = zl_add(m, y, identity, name);
    snprintf(name, sizeof name, "%srelu3", blk);
    return zl_unary(m, GRAPH_OP_RELU, y, name);
}

void zoo_build_resnet152(struct zoo_model *m)
{
    static const int blocks[4] = {3, 8, 36, 3};
    int64_t in_dims[4] = {-1, 3, 224, 224};
    int32_t x = graph_add_input(&m->g, "input", GRAPH_F32, 4, in_dims);
    x = zl_conv(m, x, "conv1", 3, 64, 7, 7, 2, 2, 3, 3);
    x = zl_bn(m, x, "bn1", 64, 1e-5f, 0.8f, 1.2f);
    x = zl_unary(m, GRAPH_OP_RELU, x, "relu");
    x = zl_maxpool(m, x, "maxpool", 3, 2, 1);
    int cin = 64;
    for (int l = 0; l < 4; l++) {
        int planes = 64 << l;
        for (int b = 0; b < blocks[l]; b++) {
            char blk[32];
            snprintf(blk, sizeof blk, "layer%d.%d.", l + 1, b);
            x = bottleneck(m, x, blk, cin, planes, (b == 0 && l > 0) ? 2 : 1);
            cin = planes * 4;
        }
    }
    x = zl_classifier(m, x, "fc", 2048, 1000, 0.25f);
    graph_add_output(&m->g, "logits", x);
    int64_t out_dims[2] = {-1, 1000};
    graph_set_output_dims(&m->g, 0, 2, out_dims);
}
