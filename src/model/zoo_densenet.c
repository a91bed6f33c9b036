/* zoo_densenet: torchvision's densenet201 (growth 32, blocks 6-12-48-32, 64
 * initial features, bottleneck 4x), input float32 [N, 3, 224, 224], output
 * logits [N, 1000]; names are the state_dict keys
 * ("features.denseblock3.denselayer17.norm2.running_var", "classifier.weight").
 *
 * Ops: Conv, BatchNormalization, Relu, MaxPool, AveragePool, Concat,
 * GlobalAveragePool, Flatten, Gemm.
 *
 * torchvision concatenates all earlier feature maps before every dense
 * layer; here each layer appends its 32 channels with a two-input Concat
 * (features = Concat(features, new)), which is the same tensor and keeps
 * Concat within GRAPH_MAX_INPUTS. An executor can make these concats
 * in-place by allocating the block's final width once. */
#include <stdio.h>

#include "model/zoo_layers.h"

static int32_t bn_relu_conv(struct zoo_model *m, int32_t x, const char *pfx, const char *norm,
                            const char *relu, const char *conv, int cin, int cout, int k, int p)
{
    char n[GRAPH_NAME_MAX + 1];
    snprintf(n, sizeof n, "%s%s", pfx, norm);
    x = zl_bn(m, x, n, cin, 1e-5f, 0.8f, 1.2f);
    snprintf(n, sizeof n, "%s%s", pfx, relu);
    x = zl_unary(m, GRAPH_OP_RELU, x, n);
    snprintf(n, sizeof n, "%s%s", pfx, conv);
    return zl_conv(m, x, n, cin, cout, k, k, 1, 1, p, p);
}

void zoo_build_densenet201(struct zoo_model *m)
{
    static const int blocks[4] = {6, 12, 48, 32};
    const int growth = 32, bn_size = 4;
    int64_t in_dims[4] = {-1, 3, 224, 224};
    int32_t x = graph_add_input(&m->g, "input", GRAPH_F32, 4, in_dims);
    x = zl_conv(m, x, "features.conv0", 3, 64, 7, 7, 2, 2, 3, 3);
    x = zl_bn(m, x, "features.norm0", 64, 1e-5f, 0.8f, 1.2f);
    x = zl_unary(m, GRAPH_OP_RELU, x, "features.relu0");
    x = zl_maxpool(m, x, "features.pool0", 3, 2, 1);
    int c = 64;
    for (int b = 0; b < 4; b++) {
        for (int l = 0; l < blocks[b]; l++) {
            char pfx[64], n[GRAPH_NAME_MAX + 1];
            snprintf(pfx, sizeof pfx, "features.denseblock%d.denselayer%d.", b + 1, l + 1);
            int32_t y = bn_relu_conv(m, x, pfx, "norm1", "relu1", "conv1", c, bn_size * growth, 1, 0);
            y = bn_relu_conv(m, y, pfx, "norm2", "relu2", "conv2", bn_size * growth, growth, 3, 1);
            int32_t parts[2] = {x, y};
            snprintf(n, sizeof n, "%scat", pfx);
            x = zl_concat(m, 2, parts, n, 1);
            c += growth;
        }
        if (b < 3) {
            char pfx[64], n[GRAPH_NAME_MAX + 1];
            snprintf(pfx, sizeof pfx, "features.transition%d.", b + 1);
            x = bn_relu_conv(m, x, pfx, "norm", "relu", "conv", c, c / 2, 1, 0);
            c /= 2;
            snprintf(n, sizeof n, "%spool", pfx);
            x = zl_avgpool(m, x, n, 2, 2, 0);
        }
    }
    x = zl_bn(m, x, "features.norm5", c, 1e-5f, 0.8f, 1.2f);
    x = zl_unary(m, GRAPH_OP_RELU, x, "relu");
    x = zl_classifier(m, x, "classifier", c, 1000, 1.0f);
    graph_add_output(&m->g, "logits", x);
    int64_t out_dims[2] = {-1, 1000};
    graph_set_output_dims(&m->g, 0, 2, out_dims);
}
