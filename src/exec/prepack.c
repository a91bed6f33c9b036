/* prepack: the loading-optimized model format (see prepack.h).
 *
 * The executor does the preparation exactly as a server would at load (same
 * step grouping, same kernels, same BN folding arithmetic); this file only
 * reads the prepared tensors back (exec_step_export) and rebuilds the graph
 * around them. The easy thing to get wrong: parameters must be created in
 * first-use order while walking the nodes, so that batching keeps their ids
 * and the source pointer of each new parameter stays where it was put. */
#include "exec/prepack.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "exec/executor.h"
#include "model/batching.h"

struct prepack {
    struct graph g;            /* rewritten, batched */
    const void **src;          /* [g.nparams] bytes of each new param */
    struct exec_model *m;      /* owns the prepared tensors src points into */
    int weights_prepared, bn_folded;
};

struct rewrite {
    const struct graph *old;
    const void *const *batches;
    struct prepack *p;
    int32_t *vmap;             /* old value id -> new value id */
    int32_t *pmap;             /* old param id -> new param id, -1 until first use */
    int src_cap;
};

static int32_t add_param_src(struct rewrite *rw, const char *name, int ndims, const int64_t *dims,
                             const struct graph_layout *layout, const void *bytes)
{
    struct graph *g = &rw->p->g;
    int32_t id = graph_add_param(g, name, ndims, dims);
    if (layout && layout->ndims) graph_set_param_layout(g, id, layout);
    if (id >= rw->src_cap) {
        rw->src_cap = rw->src_cap ? rw->src_cap * 2 : 64;
        rw->p->src = pps_xrealloc(rw->p->src, (unsigned long)rw->src_cap * sizeof *rw->p->src);
    }
    rw->p->src[id] = bytes;
    return id;
}

/* The new id of an old param copied as it is (created at its first use). */
static int32_t plain_param(struct rewrite *rw, int32_t old_id)
{
    if (rw->pmap[old_id] >= 0) return rw->pmap[old_id];
    const struct graph_param *op = &rw->old->params[old_id];
    const uint8_t *bytes = (const uint8_t *)rw->batches[op->batch] + op->offset;
    int32_t id = add_param_src(rw, op->name, op->ndims, op->dims, &op->layout, bytes);
    rw->pmap[old_id] = id;
    return id;
}

static void copy_attrs(struct graph *g, const struct graph_node *from)
{
    struct graph_node *n = &g->nodes[g->nnodes - 1];
    n->nattrs = from->nattrs;
    memcpy(n->attrs, from->attrs, sizeof n->attrs);
}

/* How many node operands name each param. */
static int *param_uses(const struct graph *g)
{
    int *uses = pps_xcalloc((unsigned long)(g->nparams ? g->nparams : 1), sizeof *uses);
    for (int i = 0; i < g->nnodes; i++)
        for (int k = 0; k < g->nodes[i].nparams; k++) uses[g->nodes[i].params[k]]++;
    return uses;
}

static int rewrite_graph(struct rewrite *rw, char *err, size_t errlen)
{
    const struct graph *old = rw->old;
    struct exec_model *m = rw->p->m;
    struct graph *g = &rw->p->g;
    int nsteps = exec_model_nsteps(m);
    /* step_of[node]: the step a primary node leads; folded_into[node]: the
     * step whose Conv absorbed this BatchNormalization. */
    int *step_of = pps_xmalloc((unsigned long)(old->nnodes ? old->nnodes : 1) * sizeof *step_of);
    int *folded_into = pps_xmalloc((unsigned long)(old->nnodes ? old->nnodes : 1) * sizeof *folded_into);
    for (int i = 0; i < old->nnodes; i++) step_of[i] = folded_into[i] = -1;
    struct exec_prepared (*exp)[2] = pps_xcalloc((unsigned long)(nsteps ? nsteps : 1), sizeof *exp);
    int *nexp = pps_xcalloc((unsigned long)(nsteps ? nsteps : 1), sizeof *nexp);
    int *uses = param_uses(old);
    for (int s = 0; s < nsteps; s++) {
        const struct exec_step *st = exec_model_step(m, s);
        const struct graph_node *n = &old->nodes[st->node];
        step_of[st->node] = s;
        if (n->nparams < 1 || uses[n->params[0]] != 1) continue; /* shared weight: stays plain */
        nexp[s] = exec_step_export(m, s, exp[s], 2);
        if (st->bn_node >= 0 && nexp[s] == 2) folded_into[st->bn_node] = s;
    }

    graph_init(g, old->name);
    snprintf(g->target, sizeof g->target, "%s", exec_target());
    g->ninputs = old->ninputs;
    memcpy(g->inputs, old->inputs, sizeof g->inputs);
    for (int i = 0; i < old->ninputs; i++) rw->vmap[i] = i;
    int rc = 0;
    for (int i = 0; i < old->nnodes; i++) {
        const struct graph_node *n = &old->nodes[i];
        int32_t old_out = graph_node_output(old, i);
        if (folded_into[i] >= 0) {
            /* The BN's output is now the Conv's (the BN reads only it). */
            rw->vmap[old_out] = rw->vmap[n->inputs[0]];
            rw->p->bn_folded++;
            continue;
        }
        int32_t inputs[GRAPH_MAX_INPUTS], params[GRAPH_MAX_PARAMS];
        for (int k = 0; k < n->ninputs; k++) inputs[k] = rw->vmap[n->inputs[k]];
        int np = 0, s = step_of[i];
        if (s >= 0 && nexp[s] > 0) {
            const struct exec_prepared *w = &exp[s][0];
            const struct graph_param *ow = &old->params[n->params[0]];
            params[np++] = add_param_src(rw, ow->name, ow->ndims, ow->dims, &w->layout, w->bytes);
            rw->p->weights_prepared++;
            if (n->op == GRAPH_OP_CONV) {
                if (nexp[s] == 2) {
                    /* The bias as the kernel adds it: the Conv's own, with the BN folded in. */
                    char name[GRAPH_NAME_MAX + 1];
                    snprintf(name, sizeof name, "%.80s.bias_folded", n->name);
                    int64_t oc = ow->dims[0];
                    params[np++] = add_param_src(rw, name, 1, &oc, NULL, exp[s][1].bytes);
                }
            } else {
                for (int k = 1; k < n->nparams; k++) params[np++] = plain_param(rw, n->params[k]);
            }
        } else {
            for (int k = 0; k < n->nparams; k++) params[np++] = plain_param(rw, n->params[k]);
        }
        int32_t v = graph_add_node(g, n->op, n->name, n->ninputs, inputs, np, params);
        copy_attrs(g, n);
        rw->vmap[old_out] = v;
    }
    for (int i = 0; i < old->noutputs; i++) {
        graph_add_output(g, old->outputs[i].name, rw->vmap[old->outputs[i].value]);
        g->outputs[i].ndims = old->outputs[i].ndims;
        memcpy(g->outputs[i].dims, old->outputs[i].dims, sizeof g->outputs[i].dims);
    }
    rc = batching_apply(g, old->max_batch_size);
    if (rc) pps_fail(err, errlen, rc, "%s: batching the prepared model failed", old->name);
    if (!rc) rc = graph_validate(g, err, errlen);
    free(step_of);
    free(folded_into);
    free(exp);
    free(nexp);
    free(uses);
    return rc;
}

int prepack_model(const struct graph *g, const void *const *batches, struct prepack **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    if (g->nbatches < 1) return pps_fail(err, errlen, PPS_EINVAL, "%s: model is not batched", g->name);
    struct prepack *p = pps_xcalloc(1, sizeof *p);
    struct exec_options opt;
    exec_options_default(&opt);
    opt.params_persist = 1; /* prepared tensors are read back from the model */
    opt.eager_layout = 1;   /* every weight in its final layout, nothing deferred */
    int rc = exec_model_create(&p->m, g, &opt, err, errlen);
    for (int b = 0; b < g->nbatches && !rc; b++)
        rc = exec_batch_arrived(p->m, b, batches[b], g->batches[b].nbytes);
    if (!rc) rc = exec_wait_prepared(p->m);
    if (rc && !err[0]) pps_fail(err, errlen, rc, "%s: preparing the weights failed", g->name);
    if (!rc) {
        struct rewrite rw = {.old = g, .batches = batches, .p = p};
        rw.vmap = pps_xmalloc((unsigned long)graph_nvalues(g) * sizeof *rw.vmap);
        rw.pmap = pps_xmalloc((unsigned long)(g->nparams ? g->nparams : 1) * sizeof *rw.pmap);
        for (int i = 0; i < g->nparams; i++) rw.pmap[i] = -1;
        rc = rewrite_graph(&rw, err, errlen);
        free(rw.vmap);
        free(rw.pmap);
    }
    if (rc) {
        prepack_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

const struct graph *prepack_graph(const struct prepack *p) { return &p->g; }

void prepack_fill_batch(const struct prepack *p, int b, void *buf)
{
    const struct graph_batch *bt = &p->g.batches[b];
    memset(buf, 0, bt->nbytes);
    for (int32_t k = bt->first_param; k < bt->first_param + bt->nparams; k++) {
        const struct graph_param *gp = &p->g.params[k];
        memcpy((uint8_t *)buf + gp->offset, p->src[k], gp->nbytes);
    }
}

int prepack_weights_prepared(const struct prepack *p) { return p->weights_prepared; }
int prepack_bn_folded(const struct prepack *p) { return p->bn_folded; }

void prepack_free(struct prepack *p)
{
    if (!p) return;
    graph_free(&p->g);
    free(p->src);
    exec_model_destroy(p->m);
    free(p);
}
