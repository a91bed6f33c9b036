/* zoo_tiny: tiny_mlp, a two-layer perceptron of 18 K parameters for
 * measuring what is not compute: the load balancer's overhead, request
 * rates, protocol costs. Input float32 [N, 64], output logits [N, 10]:
 * fc1 (Gemm 64 -> 256), Relu, fc2 (Gemm 256 -> 10), as torch.nn.Linear
 * layers named fc1/fc2 in a state_dict. */
#include <math.h>

#include "model/zoo_layers.h"

void zoo_build_tiny_mlp(struct zoo_model *m)
{
    int64_t in_dims[2] = {-1, 64};
    int32_t x = graph_add_input(&m->g, "input", GRAPH_F32, 2, in_dims);
    x = zl_linear(m, x, "fc1", 64, 256, 1.0f / sqrtf(64.0f), 0.02f);
    x = zl_unary(m, GRAPH_OP_RELU, x, "relu");
    x = zl_linear(m, x, "fc2", 256, 10, 1.0f / sqrtf(256.0f), 0.02f);
    graph_add_output(&m->g, "logits", x);
    int64_t out_dims[2] = {-1, 10};
    graph_set_output_dims(&m->g, 0, 2, out_dims);
}
