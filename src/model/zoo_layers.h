/* zoo_layers: the layer vocabulary the model builders are written in
 * (conv, batch norm, linear, layer norm, pooling, ...), each appending ONNX
 * nodes and named parameters with their weight recipe to a zoo_model.
 *
 * Only the zoo_*.c builders use this header. Parameter names are given as a
 * prefix ("layer1.0.conv1") and get PyTorch's suffixes (".weight", ".bias",
 * ".running_mean", ".running_var"), so the names match torchvision's and
 * HuggingFace's state_dict keys. Parameters are created in use order, which
 * makes batching's first-use order the creation order. */
#ifndef PIPEPS_ZOO_LAYERS_H
#define PIPEPS_ZOO_LAYERS_H

#include <stdint.h>

#include "model/graph.h"
#include "model/zoo.h"

/* A parameter with its weight recipe. */
int32_t zl_param(struct zoo_model *m, const char *name, int ndims, const int64_t *dims,
                 enum zoo_init_kind kind, float a, float b);
/* "%s.%s" into a static-size buffer; names longer than GRAPH_NAME_MAX abort. */
void zl_name(char *out, const char *prefix, const char *suffix);

/* Conv without bias, weight "<prefix>.weight" [cout, cin, kh, kw], Kaiming
 * (ReLU gain) scale. pads are symmetric (ph top/bottom, pw left/right). */
int32_t zl_conv(struct zoo_model *m, int32_t x, const char *prefix, int cin, int cout, int kh,
                int kw, int sh, int sw, int ph, int pw);
/* BatchNormalization with params weight, bias, running_mean, running_var;
 * gamma uniform in [glo, ghi). */
int32_t zl_bn(struct zoo_model *m, int32_t x, const char *prefix, int c, float eps, float glo,
              float ghi);
int32_t zl_unary(struct zoo_model *m, enum graph_op op, int32_t x, const char *name);
int32_t zl_add(struct zoo_model *m, int32_t a, int32_t b, const char *name);
/* Elementwise op with a parameter as second operand (numpy broadcasting). */
int32_t zl_binary_param(struct zoo_model *m, enum graph_op op, int32_t x, int32_t param,
                        const char *name);
int32_t zl_maxpool(struct zoo_model *m, int32_t x, const char *name, int k, int s, int p);
/* AveragePool with PyTorch's default count_include_pad=1. */
int32_t zl_avgpool(struct zoo_model *m, int32_t x, const char *name, int k, int s, int p);
int32_t zl_concat(struct zoo_model *m, int n, const int32_t *xs, const char *name, int axis);
/* GlobalAveragePool, Flatten(axis 1), Gemm to classes ("<prefix>.weight",
 * "<prefix>.bias"), weight std gain / sqrt(cin): gain ~ 1 / (rms of the
 * pooled features) keeps the logits' spread O(1). */
int32_t zl_classifier(struct zoo_model *m, int32_t x, const char *prefix, int cin, int classes,
                      float gain);
/* Linear layer as Gemm(transB=1): weight [out, in] (PyTorch layout), bias
 * [out], both uniform with standard deviation wstd / bstd (bias omitted if
 * bstd < 0). */
int32_t zl_linear(struct zoo_model *m, int32_t x, const char *prefix, int in, int out, float wstd,
                  float bstd);
/* LayerNormalization over the last axis, params weight (gamma ~ 1) and bias. */
int32_t zl_layernorm(struct zoo_model *m, int32_t x, const char *prefix, int dim, float eps);
int32_t zl_reshape(struct zoo_model *m, int32_t x, const char *name, int n, const int64_t *shape);
int32_t zl_transpose(struct zoo_model *m, int32_t x, const char *name, int n, const int64_t *perm);
int32_t zl_matmul(struct zoo_model *m, int32_t a, int32_t b, const char *name);
int32_t zl_softmax(struct zoo_model *m, int32_t x, const char *name, int axis);
/* Slice [start, end) along axis of an activation x, or of parameter
 * param when x < 0 (then the node has no activation input). */
int32_t zl_slice(struct zoo_model *m, int32_t x, int32_t param, const char *name, int64_t start,
                 int64_t end, int64_t axis);
/* Gather rows of parameter table by the int64 ids activation (axis 0). */
int32_t zl_embedding(struct zoo_model *m, int32_t ids, int32_t table, const char *name);

/* The family builders (zoo_resnet.c, zoo_inception.c, zoo_densenet.c,
 * zoo_bert.c, zoo_gpt2.c). seq is the transformers' sequence length. */
void zoo_build_resnet152(struct zoo_model *m);
void zoo_build_inception_v3(struct zoo_model *m);
void zoo_build_densenet201(struct zoo_model *m);
void zoo_build_bert_base(struct zoo_model *m, int seq);
void zoo_build_gpt2(struct zoo_model *m, int seq);
void zoo_build_tiny_mlp(struct zoo_model *m);

#endif
