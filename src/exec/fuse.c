/* fuse: graph analysis that groups nodes into steps (see fuse.h).
 *
 * The easy thing to get wrong: a value may only disappear into a fused step
 * if nothing else reads it, and a model output is read by the caller, so
 * both count as consumers. */
#include "exec/fuse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static int same_dims(const struct exec_tensor *a, const struct exec_tensor *b)
{
    if (a->ndims != b->ndims) return 0;
    for (int i = 0; i < a->ndims; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

/* Element-wise ops a backend may fuse as a post-op (it still decides, per
 * op, in supports_post): MobileNet's Clip (ReLU6) and HardSwish, ... */
static int is_activation(enum graph_op op)
{
    switch (op) {
    case GRAPH_OP_RELU: case GRAPH_OP_GELU: case GRAPH_OP_TANH: case GRAPH_OP_SIGMOID:
    case GRAPH_OP_CLIP: case GRAPH_OP_LEAKYRELU: case GRAPH_OP_HARDSWISH: case GRAPH_OP_ELU:
    case GRAPH_OP_SOFTPLUS: case GRAPH_OP_ABS: case GRAPH_OP_EXP: case GRAPH_OP_NEG:
        return 1;
    default:
        return 0;
    }
}

static void add_param(struct exec_step *st, int32_t p)
{
    PPS_ASSERT(st->nparams < EXEC_STEP_MAX_PARAMS);
    st->params[st->nparams++] = p;
}

int fuse_build(const struct graph *g, struct exec_backend *be, const struct exec_tensor *v1,
               const struct exec_tensor *v2, int fuse, struct exec_step **steps_out, int *nsteps,
               char *err, size_t errlen)
{
    int32_t nv = graph_nvalues(g);
    int *uses = pps_xcalloc((unsigned long)nv, sizeof *uses);
    int32_t *user = pps_xmalloc((unsigned long)nv * sizeof *user);
    int *claimed = pps_xmalloc((unsigned long)(g->nnodes ? g->nnodes : 1) * sizeof *claimed);
    struct exec_step *steps = pps_xcalloc((unsigned long)(g->nnodes ? g->nnodes : 1), sizeof *steps);
    for (int32_t v = 0; v < nv; v++) user[v] = -1;
    for (int i = 0; i < g->nnodes; i++) {
        claimed[i] = 0;
        for (int k = 0; k < g->nodes[i].ninputs; k++) {
            int32_t v = g->nodes[i].inputs[k];
            uses[v]++;
            user[v] = i;
        }
    }
    for (int i = 0; i < g->noutputs; i++) uses[g->outputs[i].value] += 2;

    int n = 0;
    for (int i = 0; i < g->nnodes; i++) {
        if (claimed[i]) continue;
        const struct graph_node *pn = &g->nodes[i];
        if (!be->supports(be, g, pn)) {
            snprintf(err, errlen, "node '%s': backend %s does not support %s", pn->name, be->name,
                     graph_op_name(pn->op));
            free(uses); free(user); free(claimed); free(steps);
            return PPS_EUNSUPPORTED;
        }
        struct exec_step *st = &steps[n++];
        memset(st, 0, sizeof *st);
        st->node = i;
        st->bn_node = -1;
        for (int k = 0; k < pn->ninputs; k++) st->inputs[st->ninputs++] = pn->inputs[k];
        for (int k = 0; k < pn->nparams; k++) add_param(st, pn->params[k]);
        int cur = i;
        claimed[i] = 1;

#define SOLE_USER(node) \
    (uses[graph_node_output(g, node)] == 1 ? user[graph_node_output(g, node)] : -1)

        if (fuse && be->folds_batchnorm && pn->op == GRAPH_OP_CONV) {
            int j = SOLE_USER(cur);
            if (j >= 0 && !claimed[j] && g->nodes[j].op == GRAPH_OP_BATCHNORM &&
                g->nodes[j].ninputs == 1 && g->nodes[j].nparams == 4) {
                st->bn_node = j;
                for (int k = 0; k < 4; k++) add_param(st, g->nodes[j].params[k]);
                claimed[j] = 1;
                cur = j;
            }
        }
        while (fuse && st->npost < EXEC_STEP_MAX_POST) {
            int j = SOLE_USER(cur);
            if (j < 0 || claimed[j]) break;
            const struct graph_node *nj = &g->nodes[j];
            int32_t cv = graph_node_output(g, cur), ov = graph_node_output(g, j);
            enum exec_post_kind kind;
            int32_t other = -1;
            if (is_activation(nj->op) && nj->ninputs == 1 && nj->nparams == 0) {
                kind = EXEC_POST_UNARY;
            } else if (nj->op == GRAPH_OP_ADD && nj->ninputs == 2 && nj->nparams == 0 &&
                       nj->inputs[0] != nj->inputs[1]) {
                other = nj->inputs[0] == cv ? nj->inputs[1] : nj->inputs[0];
                if (!same_dims(&v1[other], &v1[cv]) || !same_dims(&v2[other], &v2[cv]) ||
                    !same_dims(&v1[ov], &v1[cv]) || v1[other].dtype != GRAPH_F32)
                    break;
                kind = EXEC_POST_SUM;
            } else if ((nj->op == GRAPH_OP_ADD || nj->op == GRAPH_OP_SUB ||
                        nj->op == GRAPH_OP_MUL || nj->op == GRAPH_OP_DIV) &&
                       nj->ninputs == 1 && nj->nparams == 1 && nj->inputs[0] == cv &&
                       graph_param_elems(&g->params[nj->params[0]]) == 1 &&
                       same_dims(&v1[ov], &v1[cv])) {
                kind = EXEC_POST_SCALAR;
            } else if (nj->op == GRAPH_OP_TRANSPOSE && nj->ninputs == 1 && nj->nparams == 0) {
                kind = EXEC_POST_PERMUTE;
            } else {
                break;
            }
            if (!be->supports_post(be, g, pn, nj, kind, st->npost)) break;
            struct exec_post *po = &st->post[st->npost++];
            po->kind = kind;
            po->node = j;
            po->operand = -1;
            if (kind == EXEC_POST_SUM) {
                po->operand = st->ninputs;
                st->inputs[st->ninputs++] = other;
            } else if (kind == EXEC_POST_SCALAR) {
                po->operand = st->nparams;
                add_param(st, nj->params[0]);
            }
            claimed[j] = 1;
            cur = j;
            if (kind == EXEC_POST_PERMUTE) break; /* the output's shape changed */
        }
#undef SOLE_USER
        st->last_node = cur;
        st->output = graph_node_output(g, cur);
    }

    /* Gates and preparation batches; order by the position a step runs at. */
    for (int s = 0; s < n; s++) {
        struct exec_step *st = &steps[s];
        st->gate = g->nodes[st->last_node].wait_batch;
        st->prep_batch = -1;
        for (int k = 0; k < st->nparams; k++) {
            int32_t b = g->params[st->params[k]].batch;
            if (b > st->prep_batch) st->prep_batch = b;
        }
        if (st->prep_batch > st->gate) st->gate = st->prep_batch;
    }
    /* Insertion sort by last_node: steps are nearly sorted already. */
    for (int s = 1; s < n; s++) {
        struct exec_step tmp = steps[s];
        int t = s - 1;
        while (t >= 0 && steps[t].last_node > tmp.last_node) {
            steps[t + 1] = steps[t];
            t--;
        }
        steps[t + 1] = tmp;
    }
    free(uses);
    free(user);
    free(claimed);
    *steps_out = steps;
    *nsteps = n;
    return 0;
}
