/* model_info: MODEL_INFO from a graph; see model_info.h. */
#include "server/model_info.h"

#include <stdio.h>
#include <string.h>

static void fill_spec(struct infer_io_spec *s, const struct graph_io *io)
{
    snprintf(s->name, sizeof s->name, "%s", io->name);
    s->dtype = (uint8_t)io->dtype;
    s->ndims = io->ndims;
    for (int d = 0; d < io->ndims; d++)
        s->dims[d] = io->dims[d];
}

void model_info_from_graph(struct infer_model_info *mi, const struct graph *g)
{
    memset(mi, 0, sizeof *mi);
    mi->ninputs = g->ninputs < INFER_MAX_TENSORS ? g->ninputs : INFER_MAX_TENSORS;
    mi->noutputs = g->noutputs < INFER_MAX_TENSORS ? g->noutputs : INFER_MAX_TENSORS;
    for (int i = 0; i < mi->ninputs; i++)
        fill_spec(&mi->inputs[i], &g->inputs[i]);
    for (int i = 0; i < mi->noutputs; i++)
        fill_spec(&mi->outputs[i], &g->outputs[i]);
    mi->nbatches = (uint32_t)g->nbatches;
    mi->param_bytes = graph_total_padded(g);
}
