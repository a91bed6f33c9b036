/* graph: building, reading and validating struct graph (see graph.h).
 *
 * Builders are used by trusted code (the model zoo, the ONNX importer) and
 * abort on misuse or out-of-memory. graph_validate is the gate for graphs
 * that came from bytes (the METADATA blob): everything the executor indexes
 * with is range-checked there, so the executor may trust a validated graph.
 * The easy thing to get wrong: a parsed graph's strings and counts are
 * attacker-controlled until validated, so validate never assumes a NUL or a
 * count in range. */
#include "model/graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char *const op_names[GRAPH_OP_COUNT] = {
    [GRAPH_OP_INVALID] = NULL,
#define GRAPH_OP_NAME(name, value, onnx) [value] = onnx,
    GRAPH_OP_LIST(GRAPH_OP_NAME)
#undef GRAPH_OP_NAME
};

const char *graph_op_name(enum graph_op op)
{
    if ((int)op <= 0 || (int)op >= GRAPH_OP_COUNT || !op_names[op]) return "?";
    return op_names[op];
}

enum graph_op graph_op_from_name(const char *onnx_name)
{
    if (!onnx_name) return GRAPH_OP_INVALID;
    for (int i = 1; i < GRAPH_OP_COUNT; i++)
        if (op_names[i] && strcmp(op_names[i], onnx_name) == 0) return (enum graph_op)i;
    return GRAPH_OP_INVALID;
}

const char *graph_dtype_name(enum graph_dtype t)
{
    switch (t) {
    case GRAPH_F32: return "float32";
    case GRAPH_I64: return "int64";
    }
    return "?";
}

/* Truncating copy into a GRAPH_NAME_MAX+1 (or smaller) field. */
static void copy_name(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

void graph_init(struct graph *g, const char *name)
{
    memset(g, 0, sizeof *g);
    copy_name(g->name, sizeof g->name, name);
}

void graph_free(struct graph *g)
{
    free(g->nodes);
    free(g->params);
    free(g->batches);
    memset(g, 0, sizeof *g);
}

int32_t graph_add_input(struct graph *g, const char *name, enum graph_dtype dtype, int ndims,
                        const int64_t *dims)
{
    /* Node outputs are numbered after the inputs, so inputs come first. */
    PPS_ASSERT(g->nnodes == 0);
    PPS_ASSERT(g->ninputs < (int)(sizeof g->inputs / sizeof g->inputs[0]));
    PPS_ASSERT(ndims >= 1 && ndims <= GRAPH_MAX_DIMS);
    struct graph_io *io = &g->inputs[g->ninputs];
    memset(io, 0, sizeof *io);
    copy_name(io->name, sizeof io->name, name);
    io->dtype = dtype;
    io->ndims = ndims;
    for (int i = 0; i < ndims; i++) io->dims[i] = dims[i];
    io->dims[0] = -1;
    io->value = g->ninputs;
    return g->ninputs++;
}

void graph_set_fixed_batch(struct graph *g, int64_t batch)
{
    PPS_ASSERT(batch >= 1 && batch <= GRAPH_MAX_FIXED_BATCH);
    for (int i = 0; i < g->ninputs; i++) g->inputs[i].dims[0] = batch;
}

int64_t graph_fixed_batch(const struct graph *g)
{
    return g->ninputs > 0 && g->inputs[0].dims[0] > 0 ? g->inputs[0].dims[0] : 0;
}

void graph_set_input_optional(struct graph *g, int index, int64_t fill)
{
    PPS_ASSERT(index > 0 && index < g->ninputs && g->inputs[index].dtype == GRAPH_I64);
    g->inputs[index].optional = 1;
    g->inputs[index].fill = fill;
}

int graph_required_inputs(const struct graph *g)
{
    int n = 0;
    while (n < g->ninputs && !g->inputs[n].optional) n++;
    return n;
}

void graph_add_output(struct graph *g, const char *name, int32_t value)
{
    PPS_ASSERT(g->noutputs < (int)(sizeof g->outputs / sizeof g->outputs[0]));
    PPS_ASSERT(value >= 0 && value < graph_nvalues(g));
    struct graph_io *io = &g->outputs[g->noutputs++];
    memset(io, 0, sizeof *io);
    copy_name(io->name, sizeof io->name, name);
    io->dtype = GRAPH_F32;
    io->value = value;
}

void graph_set_output_dims(struct graph *g, int index, int ndims, const int64_t *dims)
{
    PPS_ASSERT(index >= 0 && index < g->noutputs);
    PPS_ASSERT(ndims >= 1 && ndims <= GRAPH_MAX_DIMS);
    struct graph_io *io = &g->outputs[index];
    io->ndims = ndims;
    for (int i = 0; i < ndims; i++) io->dims[i] = dims[i];
    io->dims[0] = -1;
}

uint64_t graph_param_elems(const struct graph_param *p)
{
    uint64_t n = 1;
    for (int i = 0; i < p->ndims; i++) n *= (uint64_t)p->dims[i];
    return n;
}

uint64_t graph_param_padded(const struct graph_param *p)
{
    return (p->nbytes + GRAPH_PARAM_ALIGN - 1) / GRAPH_PARAM_ALIGN * GRAPH_PARAM_ALIGN;
}

uint64_t graph_layout_bytes(const struct graph_layout *l)
{
    uint64_t n = 1;
    for (int i = 0; i < l->ndims; i++) n *= (uint64_t)l->padded_dims[i];
    return n * sizeof(float);
}

void graph_set_param_layout(struct graph *g, int32_t p, const struct graph_layout *l)
{
    PPS_ASSERT(p >= 0 && p < g->nparams);
    struct graph_param *gp = &g->params[p];
    gp->layout = *l;
    gp->nbytes = l->ndims ? graph_layout_bytes(l) : graph_param_elems(gp) * sizeof(float);
}

void graph_layout_name(const struct graph_layout *l, char *buf, size_t cap)
{
    if (!cap) return;
    if (l->ndims <= 0 || l->ndims > GRAPH_MAX_DIMS) {
        snprintf(buf, cap, "plain");
        return;
    }
    /* Outer dims from the largest stride down, upper case when blocked,
     * then the inner blocks: oneDNN's tag names (e.g. "ABcd16b16a"). */
    int order[GRAPH_MAX_DIMS], n = l->ndims;
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && l->strides[order[j]] > l->strides[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    size_t k = 0;
    for (int i = 0; i < n && k + 1 < cap; i++) {
        int blocked = 0;
        for (int b = 0; b < l->nblks; b++) blocked |= l->idxs[b] == order[i];
        buf[k++] = (char)((blocked ? 'A' : 'a') + order[i]);
    }
    buf[k] = '\0';
    for (int b = 0; b < l->nblks && b < GRAPH_LAYOUT_MAX_BLKS && k + 1 < cap; b++) {
        int w = snprintf(buf + k, cap - k, "%lld%c", (long long)l->blks[b], 'a' + l->idxs[b]);
        if (w < 0 || (size_t)w >= cap - k) break;
        k += (size_t)w;
    }
}

int32_t graph_add_param(struct graph *g, const char *name, int ndims, const int64_t *dims)
{
    PPS_ASSERT(ndims >= 0 && ndims <= GRAPH_MAX_DIMS);
    if (g->nparams == g->param_cap) {
        g->param_cap = g->param_cap ? g->param_cap * 2 : 64;
        g->params = pps_xrealloc(g->params, (unsigned long)g->param_cap * sizeof *g->params);
    }
    struct graph_param *p = &g->params[g->nparams];
    memset(p, 0, sizeof *p);
    copy_name(p->name, sizeof p->name, name);
    p->ndims = ndims;
    for (int i = 0; i < ndims; i++) {
        PPS_ASSERT(dims[i] > 0);
        p->dims[i] = dims[i];
    }
    p->nbytes = graph_param_elems(p) * sizeof(float);
    p->batch = -1;
    p->offset = 0;
    return g->nparams++;
}

int32_t graph_find_param(const struct graph *g, const char *name)
{
    for (int i = 0; i < g->nparams; i++)
        if (strcmp(g->params[i].name, name) == 0) return i;
    return -1;
}

int32_t graph_add_node(struct graph *g, enum graph_op op, const char *name, int ninputs,
                       const int32_t *inputs, int nparams, const int32_t *params)
{
    PPS_ASSERT(op > GRAPH_OP_INVALID && op < GRAPH_OP_COUNT);
    PPS_ASSERT(ninputs >= 0 && ninputs <= GRAPH_MAX_INPUTS);
    PPS_ASSERT(nparams >= 0 && nparams <= GRAPH_MAX_PARAMS);
    if (g->nnodes == g->node_cap) {
        g->node_cap = g->node_cap ? g->node_cap * 2 : 64;
        g->nodes = pps_xrealloc(g->nodes, (unsigned long)g->node_cap * sizeof *g->nodes);
    }
    struct graph_node *n = &g->nodes[g->nnodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    copy_name(n->name, sizeof n->name, name);
    n->ninputs = ninputs;
    for (int i = 0; i < ninputs; i++) {
        PPS_ASSERT(inputs[i] >= 0 && inputs[i] < graph_nvalues(g));
        n->inputs[i] = inputs[i];
    }
    n->nparams = nparams;
    for (int i = 0; i < nparams; i++) {
        PPS_ASSERT(params[i] >= 0 && params[i] < g->nparams);
        n->params[i] = params[i];
    }
    n->wait_batch = -1;
    g->nnodes++;
    return graph_node_output(g, g->nnodes - 1);
}

/* The attribute slot for name on the last node: the existing one, or a new one. */
static struct graph_attr *attr_slot(struct graph *g, const char *attr)
{
    PPS_ASSERT(g->nnodes > 0);
    struct graph_node *n = &g->nodes[g->nnodes - 1];
    PPS_ASSERT(strlen(attr) < sizeof n->attrs[0].name);
    for (int i = 0; i < n->nattrs; i++)
        if (strcmp(n->attrs[i].name, attr) == 0) {
            memset(&n->attrs[i], 0, sizeof n->attrs[i]);
            copy_name(n->attrs[i].name, sizeof n->attrs[i].name, attr);
            return &n->attrs[i];
        }
    PPS_ASSERT(n->nattrs < GRAPH_MAX_ATTRS);
    struct graph_attr *a = &n->attrs[n->nattrs++];
    memset(a, 0, sizeof *a);
    copy_name(a->name, sizeof a->name, attr);
    return a;
}

void graph_set_int(struct graph *g, const char *attr, int64_t v)
{
    struct graph_attr *a = attr_slot(g, attr);
    a->kind = GRAPH_ATTR_INT;
    a->i = v;
}

void graph_set_float(struct graph *g, const char *attr, float v)
{
    struct graph_attr *a = attr_slot(g, attr);
    a->kind = GRAPH_ATTR_FLOAT;
    a->f = v;
}

void graph_set_ints(struct graph *g, const char *attr, int n, const int64_t *v)
{
    PPS_ASSERT(n >= 0 && n <= GRAPH_MAX_ATTR_INTS);
    struct graph_attr *a = attr_slot(g, attr);
    a->kind = GRAPH_ATTR_INTS;
    a->nints = n;
    for (int i = 0; i < n; i++) a->ints[i] = v[i];
}

const struct graph_attr *graph_attr_find(const struct graph_node *n, const char *attr)
{
    for (int i = 0; i < n->nattrs && i < GRAPH_MAX_ATTRS; i++)
        if (strncmp(n->attrs[i].name, attr, sizeof n->attrs[i].name) == 0) return &n->attrs[i];
    return NULL;
}

int64_t graph_attr_int(const struct graph_node *n, const char *attr, int64_t dflt)
{
    const struct graph_attr *a = graph_attr_find(n, attr);
    if (!a) return dflt;
    if (a->kind == GRAPH_ATTR_INT) return a->i;
    if (a->kind == GRAPH_ATTR_FLOAT) return (int64_t)a->f;
    return dflt;
}

float graph_attr_float(const struct graph_node *n, const char *attr, float dflt)
{
    const struct graph_attr *a = graph_attr_find(n, attr);
    if (!a) return dflt;
    if (a->kind == GRAPH_ATTR_FLOAT) return a->f;
    if (a->kind == GRAPH_ATTR_INT) return (float)a->i;
    return dflt;
}

int graph_attr_ints(const struct graph_node *n, const char *attr, int64_t *out, int max)
{
    const struct graph_attr *a = graph_attr_find(n, attr);
    if (!a || a->kind != GRAPH_ATTR_INTS) return 0;
    int cnt = a->nints;
    for (int i = 0; i < cnt && i < max; i++) out[i] = a->ints[i];
    return cnt;
}

uint64_t graph_total_padded(const struct graph *g)
{
    uint64_t total = 0;
    for (int i = 0; i < g->nparams; i++) total += graph_param_padded(&g->params[i]);
    return total;
}

/* ---- validation ---------------------------------------------------------- */

#define VALIDATE_MAX_ELEMS (1ull << 40) /* 4 TiB of float32: far beyond any model */

/* Every validation failure is PPS_ECORRUPT: the blob came over the wire. */
#define fail(err, errlen, ...) pps_fail(err, errlen, PPS_ECORRUPT, __VA_ARGS__)

static int name_ok(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static int dims_ok(int ndims, const int64_t *dims, int min_ndims, int dynamic_first)
{
    if (ndims < min_ndims || ndims > GRAPH_MAX_DIMS) return 0;
    uint64_t elems = 1;
    for (int i = 0; i < ndims; i++) {
        if (i == 0 && dynamic_first) {
            /* -1, or (inputs) a fixed batch: graph_set_fixed_batch */
            if (dims[0] != -1 && !(dynamic_first == 2 && dims[0] >= 1 && dims[0] <= GRAPH_MAX_FIXED_BATCH))
                return 0;
            continue;
        }
        if (dims[i] <= 0 || (uint64_t)dims[i] > VALIDATE_MAX_ELEMS) return 0;
        elems *= (uint64_t)dims[i];
        if (elems > VALIDATE_MAX_ELEMS) return 0;
    }
    return 1;
}

static int io_ok(const struct graph_io *io, int is_input)
{
    if (!name_ok(io->name, sizeof io->name)) return 0;
    if (io->dtype != GRAPH_F32 && io->dtype != GRAPH_I64) return 0;
    if (!is_input && io->ndims == 0) return 1; /* output shape not recorded */
    return dims_ok(io->ndims, io->dims, 1, is_input ? 2 : 1);
}

/* A layout read from a file: the same element count as its param, blocks
 * that divide the padded dims, everything small enough that its byte size
 * cannot overflow. Whether a kernel can use it is the backend's business. */
static int layout_ok(const struct graph_layout *l, uint64_t param_elems)
{
    if (l->ndims < 1 || l->ndims > GRAPH_MAX_DIMS || l->nblks < 0 || l->nblks > GRAPH_LAYOUT_MAX_BLKS)
        return 0;
    int64_t blk[GRAPH_MAX_DIMS];
    for (int i = 0; i < l->ndims; i++) blk[i] = 1;
    for (int b = 0; b < l->nblks; b++) {
        if (l->idxs[b] < 0 || l->idxs[b] >= l->ndims || l->blks[b] < 1 || l->blks[b] > 4096) return 0;
        blk[l->idxs[b]] *= l->blks[b];
        if (blk[l->idxs[b]] > 4096) return 0;
    }
    uint64_t elems = 1, padded = 1;
    for (int i = 0; i < l->ndims; i++) {
        if (l->dims[i] < 1 || l->padded_dims[i] < l->dims[i] || l->padded_dims[i] > (1ll << 40) ||
            l->padded_dims[i] % blk[i] || l->strides[i] < 1 || l->strides[i] > (1ll << 40))
            return 0;
        if ((uint64_t)l->dims[i] > (1ull << 40) / elems) return 0;
        if ((uint64_t)l->padded_dims[i] > (1ull << 40) / padded) return 0;
        elems *= (uint64_t)l->dims[i];
        padded *= (uint64_t)l->padded_dims[i];
    }
    return elems == param_elems;
}

int graph_validate(const struct graph *g, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!name_ok(g->name, sizeof g->name)) return fail(err, errlen, "model name not terminated");
    if (g->ninputs < 1 || g->ninputs > 4) return fail(err, errlen, "bad input count %d", g->ninputs);
    if (g->noutputs < 1 || g->noutputs > 4)
        return fail(err, errlen, "bad output count %d", g->noutputs);
    if (g->nnodes < 0 || g->nparams < 0 || g->nbatches < 0)
        return fail(err, errlen, "negative count");
    if (g->nnodes > 0 && !g->nodes) return fail(err, errlen, "nodes missing");
    if (g->nparams > 0 && !g->params) return fail(err, errlen, "params missing");
    if (g->nbatches > 0 && !g->batches) return fail(err, errlen, "batches missing");
    if (g->nnodes > INT32_MAX - g->ninputs) return fail(err, errlen, "too many nodes");

    for (int i = 0; i < g->ninputs; i++) {
        if (!io_ok(&g->inputs[i], 1)) return fail(err, errlen, "input %d malformed", i);
        if (g->inputs[i].value != i) return fail(err, errlen, "input %d has value %d", i, g->inputs[i].value);
        if (g->inputs[i].dims[0] != g->inputs[0].dims[0])
            return fail(err, errlen, "input %d: first dimension differs from input 0's (batch)", i);
        if (g->inputs[i].optional != 0 && g->inputs[i].optional != 1)
            return fail(err, errlen, "input %d: bad optional flag", i);
        if (g->inputs[i].optional && (i == 0 || g->inputs[i].dtype != GRAPH_I64))
            return fail(err, errlen, "input %d: only int64 inputs after the first may be optional", i);
        if (i > 0 && g->inputs[i - 1].optional && !g->inputs[i].optional)
            return fail(err, errlen, "input %d: a required input after an optional one", i);
    }
    int32_t nvalues = graph_nvalues(g);
    for (int i = 0; i < g->noutputs; i++) {
        if (!io_ok(&g->outputs[i], 0)) return fail(err, errlen, "output %d malformed", i);
        if (g->outputs[i].dtype != GRAPH_F32)
            return fail(err, errlen, "output %d is not float32", i);
        if (g->outputs[i].value < 0 || g->outputs[i].value >= nvalues)
            return fail(err, errlen, "output %d refers to value %d of %d", i, g->outputs[i].value,
                        nvalues);
    }

    int batched = g->nbatches > 0;
    for (int i = 0; i < g->nparams; i++) {
        const struct graph_param *p = &g->params[i];
        if (!name_ok(p->name, sizeof p->name)) return fail(err, errlen, "param %d name", i);
        if (!dims_ok(p->ndims, p->dims, 0, 0))
            return fail(err, errlen, "param %d (%s) has bad dims", i, p->name);
        if (p->layout.ndims && !layout_ok(&p->layout, graph_param_elems(p)))
            return fail(err, errlen, "param %d (%s) has a malformed layout", i, p->name);
        uint64_t want = p->layout.ndims ? graph_layout_bytes(&p->layout)
                                        : graph_param_elems(p) * sizeof(float);
        if (p->nbytes != want)
            return fail(err, errlen, "param %d (%s) size %llu does not match its dims", i, p->name,
                        (unsigned long long)p->nbytes);
        if (!batched) {
            if (p->batch != -1) return fail(err, errlen, "param %d batched in an unbatched graph", i);
            continue;
        }
        if (p->batch < 0 || p->batch >= g->nbatches)
            return fail(err, errlen, "param %d (%s) in batch %d of %d", i, p->name, p->batch,
                        g->nbatches);
        if (i > 0 && p->batch < g->params[i - 1].batch)
            return fail(err, errlen, "param %d batch order", i);
        if (p->offset % GRAPH_PARAM_ALIGN)
            return fail(err, errlen, "param %d offset %llu unaligned", i,
                        (unsigned long long)p->offset);
        const struct graph_batch *b = &g->batches[p->batch];
        if (p->offset > b->nbytes || graph_param_padded(p) > b->nbytes - p->offset)
            return fail(err, errlen, "param %d (%s) does not fit batch %d", i, p->name, p->batch);
    }
    if (batched) {
        int32_t next = 0;
        for (int b = 0; b < g->nbatches; b++) {
            const struct graph_batch *bt = &g->batches[b];
            if (bt->first_param != next || bt->nparams < 1 || bt->nparams > g->nparams - next)
                return fail(err, errlen, "batch %d param range [%d,+%d) malformed", b,
                            bt->first_param, bt->nparams);
            /* Params of a batch must not overlap: walk them in offset order. */
            uint64_t end = 0;
            for (int32_t k = bt->first_param; k < bt->first_param + bt->nparams; k++) {
                const struct graph_param *p = &g->params[k];
                if (p->batch != b) return fail(err, errlen, "param %d not in batch %d", k, b);
                if (p->offset < end) return fail(err, errlen, "param %d overlaps in batch %d", k, b);
                end = p->offset + graph_param_padded(p);
            }
            if (bt->nbytes % GRAPH_PARAM_ALIGN)
                return fail(err, errlen, "batch %d size unaligned", b);
            next += bt->nparams;
        }
        if (next != g->nparams) return fail(err, errlen, "batches cover %d of %d params", next, g->nparams);
    }

    int32_t prev_wait = -1;
    for (int i = 0; i < g->nnodes; i++) {
        const struct graph_node *n = &g->nodes[i];
        if ((int)n->op <= GRAPH_OP_INVALID || (int)n->op >= GRAPH_OP_COUNT ||
            !op_names[n->op])
            return fail(err, errlen, "node %d has unknown op %d", i, (int)n->op);
        if (!name_ok(n->name, sizeof n->name)) return fail(err, errlen, "node %d name", i);
        if (n->ninputs < 0 || n->ninputs > GRAPH_MAX_INPUTS)
            return fail(err, errlen, "node %d input count %d", i, n->ninputs);
        if (n->nparams < 0 || n->nparams > GRAPH_MAX_PARAMS)
            return fail(err, errlen, "node %d param count %d", i, n->nparams);
        if (n->nattrs < 0 || n->nattrs > GRAPH_MAX_ATTRS)
            return fail(err, errlen, "node %d attr count %d", i, n->nattrs);
        if (n->ninputs + n->nparams < 1) return fail(err, errlen, "node %d has no operands", i);
        for (int k = 0; k < n->ninputs; k++)
            if (n->inputs[k] < 0 || n->inputs[k] >= g->ninputs + i)
                return fail(err, errlen, "node %d (%s) input %d refers to value %d (must be < %d)",
                            i, n->name, k, n->inputs[k], g->ninputs + i);
        int32_t need = -1;
        for (int k = 0; k < n->nparams; k++) {
            if (n->params[k] < 0 || n->params[k] >= g->nparams)
                return fail(err, errlen, "node %d (%s) param %d out of range", i, n->name,
                            n->params[k]);
            if (g->params[n->params[k]].batch > need) need = g->params[n->params[k]].batch;
        }
        for (int k = 0; k < n->nattrs; k++) {
            const struct graph_attr *a = &n->attrs[k];
            if (!name_ok(a->name, sizeof a->name) || a->name[0] == '\0')
                return fail(err, errlen, "node %d attr %d name", i, k);
            if (a->kind != GRAPH_ATTR_INT && a->kind != GRAPH_ATTR_FLOAT &&
                a->kind != GRAPH_ATTR_INTS)
                return fail(err, errlen, "node %d attr %s kind", i, a->name);
            if (a->kind == GRAPH_ATTR_INTS && (a->nints < 0 || a->nints > GRAPH_MAX_ATTR_INTS))
                return fail(err, errlen, "node %d attr %s has %d ints", i, a->name, a->nints);
        }
        if (need < prev_wait) need = prev_wait;
        if (batched ? n->wait_batch != need : n->wait_batch != -1)
            return fail(err, errlen, "node %d (%s) waits for batch %d, must be %d", i, n->name,
                        n->wait_batch, batched ? need : -1);
        prev_wait = n->wait_batch;
    }
    return 0;
}
