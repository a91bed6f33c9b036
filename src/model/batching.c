/* batching: the seed's greedy parameter batching (see batching.h).
 *
 * The easy thing to get wrong is a parameter shared by two nodes (GPT-2's
 * tied embedding): it is placed once, with the first node that uses it, and
 * the later node only counts its new parameters toward the limit. Its
 * wait_batch still never decreases (graph.h). */
#include "model/batching.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* Put params into first-use order. Returns PPS_EINVAL if one is unused. */
static int order_params(struct graph *g)
{
    int32_t np = g->nparams;
    if (np == 0) return 0;
    int32_t *new_id = pps_xmalloc((unsigned long)np * sizeof *new_id);
    for (int32_t i = 0; i < np; i++) new_id[i] = -1;
    int32_t next = 0;
    for (int i = 0; i < g->nnodes; i++) {
        struct graph_node *n = &g->nodes[i];
        for (int k = 0; k < n->nparams; k++)
            if (new_id[n->params[k]] < 0) new_id[n->params[k]] = next++;
    }
    if (next != np) {
        free(new_id);
        return PPS_EINVAL;
    }
    int identity = 1;
    for (int32_t i = 0; i < np && identity; i++) identity = new_id[i] == i;
    if (!identity) {
        struct graph_param *moved = pps_xmalloc((unsigned long)np * sizeof *moved);
        for (int32_t i = 0; i < np; i++) moved[new_id[i]] = g->params[i];
        memcpy(g->params, moved, (size_t)np * sizeof *moved);
        free(moved);
        for (int i = 0; i < g->nnodes; i++) {
            struct graph_node *n = &g->nodes[i];
            for (int k = 0; k < n->nparams; k++) n->params[k] = new_id[n->params[k]];
        }
    }
    free(new_id);
    return 0;
}

int batching_apply(struct graph *g, uint64_t max_batch_size)
{
    int rc = order_params(g);
    if (rc) return rc;
    free(g->batches);
    g->batches = NULL;
    g->nbatches = 0;
    g->max_batch_size = max_batch_size;
    for (int i = 0; i < g->nparams; i++) {
        g->params[i].batch = -1;
        g->params[i].offset = 0;
    }
    /* At most one batch per node with parameters. */
    int cap = 0;
    for (int i = 0; i < g->nnodes; i++) cap += g->nodes[i].nparams > 0;
    if (cap) g->batches = pps_xcalloc((unsigned long)cap, sizeof *g->batches);

    int32_t cur = -1;        /* current batch, -1 before the first */
    int32_t prev_wait = -1;
    int32_t next_param = 0;  /* params are placed in id order (first-use order) */
    for (int i = 0; i < g->nnodes; i++) {
        struct graph_node *n = &g->nodes[i];
        uint64_t add = 0;
        int fresh = 0;
        for (int k = 0; k < n->nparams; k++) {
            struct graph_param *p = &g->params[n->params[k]];
            if (p->batch >= 0) continue;
            /* A param listed twice by one node counts once. */
            int dup = 0;
            for (int j = 0; j < k; j++) dup |= n->params[j] == n->params[k];
            if (dup) continue;
            add += graph_param_padded(p);
            fresh++;
        }
        if (fresh) {
            if (cur < 0 || g->batches[cur].nbytes + add > max_batch_size) {
                cur = g->nbatches++;
                g->batches[cur].first_param = next_param;
                g->batches[cur].nparams = 0;
                g->batches[cur].nbytes = 0;
            }
            /* First-use order means this node's fresh params are exactly
             * the next ids; place them in id order. */
            for (int f = 0; f < fresh; f++) {
                struct graph_param *p = &g->params[next_param++];
                PPS_ASSERT(p->batch < 0);
                p->batch = cur;
                p->offset = g->batches[cur].nbytes;
                g->batches[cur].nbytes += graph_param_padded(p);
                g->batches[cur].nparams++;
            }
        }
        int32_t need = prev_wait;
        for (int k = 0; k < n->nparams; k++)
            if (g->params[n->params[k]].batch > need) need = g->params[n->params[k]].batch;
        n->wait_batch = need;
        prev_wait = need;
    }
    PPS_ASSERT(next_param == g->nparams);
    return 0;
}
