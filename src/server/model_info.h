/* model_info: a model's MODEL_INFO answer (input and output specs, batches,
 * parameter bytes) from its graph, as the server and the load balancer
 * both give it: the server from a model it holds, the balancer from the
 * METADATA blob in the metadata storage. */
#ifndef PIPEPS_MODEL_INFO_H
#define PIPEPS_MODEL_INFO_H

#include "model/graph.h"
#include "server/server_proto.h"

void model_info_from_graph(struct infer_model_info *mi, const struct graph *g);

#endif
