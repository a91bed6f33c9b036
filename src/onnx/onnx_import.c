/* onnx_import: ONNX ModelProto -> PipePS graph (see onnx_import.h and
 * docs/onnx.md).
 *
 * Passes: unpack with protobuf-c; register every value name (inputs,
 * initializers via onnx_tensor, node outputs) in a hash table, refusing
 * duplicates; find the patterns (onnx_patterns) and the nodes no output
 * depends on; count op types and refuse unsupported ones (all named at
 * once); topologically sort the nodes (Kahn), refusing cycles and dangling
 * names; then map node by node. Each ONNX value becomes a constant (folded
 * here, onnx_fold) or an activation (a graph value whose shape the
 * executor's shape inference gives).
 *
 * Two worlds: shapes are inferred at two batch sizes at once (2 and 3 for a
 * dynamic batch; the model's own batch twice for a static one) and every
 * folded constant is computed in both. An element that differs between
 * the worlds came from the batch; when it reaches an attribute (a Reshape
 * target, a Slice end) it is written symbolically (0 = copy the dimension,
 * -1 = infer) or refused. A constant that differs otherwise cannot become a
 * parameter and is refused.
 *
 * The easy thing to get wrong: operand order. A graph node lists its
 * activations first, then its parameters; a constant that comes before an
 * activation in ONNX order (Sub(c, x)) becomes a Constant node so the order
 * survives (place_operands). */
#include "onnx/onnx_import.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "exec/shape.h"
#include "onnx.pb-c.h"
#include "onnx/onnx_fold.h"
#include "onnx/onnx_patterns.h"
#include "onnx/onnx_tensor.h"

#define MAX_NODES 1000000
#define MAX_VALUES 4000000

enum ival_kind { IV_NONE = 0, IV_ACT, IV_CONST, IV_SKIPPED };

/* One ONNX value (a name). */
struct ival {
    const char *name;
    enum ival_kind kind;
    int32_t gid;               /* IV_ACT: graph value id */
    struct onnx_const *c[2];   /* IV_CONST: the value in world 0 and 1 */
    int32_t param;             /* parameter made from this constant, -1 */
    int32_t const_gid;         /* Constant node made from it, -1 */
    int producer;              /* ONNX node index, -1 for inputs and initializers */
};

struct onnx_model {
    Onnx__ModelProto *proto;
    struct graph g;
    struct onnx_const_pool pool;
    const void **param_data;
    int param_cap;
    struct onnx_mappings maps;   /* external data */
    struct onnx_op_stat *ops;
    int nops;
    struct onnx_unsupported_node *unsup;
    int nunsup;
    int64_t opset;
    int onnx_nodes;
    char producer[64];
};

struct importer {
    struct onnx_model *m;
    const struct onnx_import_options *opt;
    const char *base_dir;
    char *err;
    size_t errlen;
    Onnx__GraphProto *gp;
    struct ival *vals;
    int nvals;
    int *hash;                 /* open addressing, -1 = empty */
    size_t hcap;
    struct exec_tensor *shapes[2];
    int shape_cap;
    int64_t batch[2];
    const Onnx__NodeProto *node; /* being mapped (messages) */
    char node_name[GRAPH_NAME_MAX + 1];
    int nsub;                  /* graph nodes emitted for the current ONNX node */
    uint8_t *absorbed;         /* per ONNX node: part of a rewritten pattern, skipped */
    struct onnx_rewrite *rw;   /* per ONNX node: the last node of a pattern, imported as one op */
};

/* ---- messages -------------------------------------------------------------- */

static int nfail(struct importer *im, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int nfail(struct importer *im, int code, const char *fmt, ...)
{
    if (!im->err || !im->errlen) return code;
    int k = 0;
    if (im->node)
        k = snprintf(im->err, im->errlen, "node '%s' (%s): ", im->node_name,
                     im->node->op_type ? im->node->op_type : "?");
    if (k < 0) k = 0;
    if ((size_t)k < im->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(im->err + k, im->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- the value table ------------------------------------------------------ */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct ival *find_val(struct importer *im, const char *name)
{
    if (!name || !im->hcap) return NULL;
    size_t i = hash_str(name) & (im->hcap - 1);
    while (im->hash[i] >= 0) {
        if (strcmp(im->vals[im->hash[i]].name, name) == 0) return &im->vals[im->hash[i]];
        i = (i + 1) & (im->hcap - 1);
    }
    return NULL;
}

/* New value; NULL (message set) if the name exists already. */
static struct ival *add_val(struct importer *im, const char *name, int producer)
{
    if (find_val(im, name)) {
        nfail(im, PPS_EINVAL, "value '%s' is defined twice (graph input, initializer or node output)", name);
        return NULL;
    }
    PPS_ASSERT(im->nvals < MAX_VALUES && (size_t)im->nvals < im->hcap / 2);
    struct ival *v = &im->vals[im->nvals];
    memset(v, 0, sizeof *v);
    v->name = name;
    v->gid = -1;
    v->param = -1;
    v->const_gid = -1;
    v->producer = producer;
    size_t i = hash_str(name) & (im->hcap - 1);
    while (im->hash[i] >= 0) i = (i + 1) & (im->hcap - 1);
    im->hash[i] = im->nvals++;
    return v;
}

/* ---- attributes ------------------------------------------------------------ */

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0) return n->attribute[i];
    return NULL;
}

static int64_t attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt)
{
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_i ? a->i : dflt;
}

static float attr_float(const Onnx__NodeProto *n, const char *name, float dflt)
{
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_f ? a->f : dflt;
}

/* The string attribute into buf ("" if absent). */
static const char *attr_str(const Onnx__NodeProto *n, const char *name, char *buf, size_t cap)
{
    const Onnx__AttributeProto *a = attr(n, name);
    buf[0] = '\0';
    if (a && a->has_s) {
        size_t len = a->s.len < cap - 1 ? a->s.len : cap - 1;
        if (len) memcpy(buf, a->s.data, len);
        buf[len] = '\0';
    }
    return buf;
}

/* Ints attribute: count (0 if absent), -1 if more than max. */
static int attr_ints(const Onnx__NodeProto *n, const char *name, int64_t *out, int max)
{
    const Onnx__AttributeProto *a = attr(n, name);
    if (!a) return 0;
    if (a->n_ints > (size_t)max) return -1;
    for (size_t i = 0; i < a->n_ints; i++) out[i] = a->ints[i];
    return (int)a->n_ints;
}

/* Setting attributes on the last graph node, checked against the graph's
 * limits (graph.c asserts them). */
static int set_ints(struct importer *im, const char *name, int n, const int64_t *v)
{
    if (n > GRAPH_MAX_ATTR_INTS)
        return nfail(im, PPS_EUNSUPPORTED, "attribute %s has %d values (at most %d)", name, n, GRAPH_MAX_ATTR_INTS);
    const struct graph_node *gn = &im->m->g.nodes[im->m->g.nnodes - 1];
    if (!graph_attr_find(gn, name) && gn->nattrs >= GRAPH_MAX_ATTRS)
        return nfail(im, PPS_EUNSUPPORTED, "too many attributes");
    graph_set_ints(&im->m->g, name, n, v);
    return 0;
}

static int set_int(struct importer *im, const char *name, int64_t v)
{
    const struct graph_node *gn = &im->m->g.nodes[im->m->g.nnodes - 1];
    if (!graph_attr_find(gn, name) && gn->nattrs >= GRAPH_MAX_ATTRS)
        return nfail(im, PPS_EUNSUPPORTED, "too many attributes");
    graph_set_int(&im->m->g, name, v);
    return 0;
}

static int set_float(struct importer *im, const char *name, float v)
{
    const struct graph_node *gn = &im->m->g.nodes[im->m->g.nnodes - 1];
    if (!graph_attr_find(gn, name) && gn->nattrs >= GRAPH_MAX_ATTRS)
        return nfail(im, PPS_EUNSUPPORTED, "too many attributes");
    graph_set_float(&im->m->g, name, v);
    return 0;
}

/* Copy the listed numeric attributes of the ONNX node (those present). */
static int copy_attrs(struct importer *im, const Onnx__NodeProto *n, const char *const *names)
{
    for (; *names; names++) {
        const Onnx__AttributeProto *a = attr(n, *names);
        if (!a) continue;
        int rc = 0;
        switch (a->type) {
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: rc = set_int(im, *names, a->i); break;
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: rc = set_float(im, *names, a->f); break;
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
            if (a->n_ints > GRAPH_MAX_ATTR_INTS)
                return nfail(im, PPS_EUNSUPPORTED, "attribute %s has %zu values", *names, a->n_ints);
            rc = set_ints(im, *names, (int)a->n_ints, a->ints);
            break;
        default:
            return nfail(im, PPS_EUNSUPPORTED, "attribute %s has an unexpected type", *names);
        }
        if (rc) return rc;
    }
    return 0;
}

/* A tensor of the file; a message inside a node names the node. */
static int load_tensor(struct importer *im, const Onnx__TensorProto *t, const char *tname, struct onnx_const **out)
{
    char msg[512];
    int rc = onnx_tensor_load(t, tname, im->base_dir, &im->m->pool, &im->m->maps, out, msg, sizeof msg);
    if (rc) return nfail(im, rc, "%s", msg);
    return 0;
}

/* ---- graph values and their shapes in both worlds --------------------------- */

static void grow_shapes(struct importer *im, int need)
{
    if (need <= im->shape_cap) return;
    int cap = im->shape_cap ? im->shape_cap : 64;
    while (cap < need) cap *= 2;
    for (int w = 0; w < 2; w++) {
        im->shapes[w] = pps_xrealloc(im->shapes[w], (unsigned long)cap * sizeof *im->shapes[w]);
        memset(im->shapes[w] + im->shape_cap, 0, (size_t)(cap - im->shape_cap) * sizeof *im->shapes[w]);
    }
    im->shape_cap = cap;
}

/* Append a graph node (attributes follow, then end_node). */
static int32_t begin_node(struct importer *im, enum graph_op op, int nin, const int32_t *ins, int npar,
                          const int32_t *pars)
{
    char name[GRAPH_NAME_MAX + 1];
    if (im->nsub == 0) snprintf(name, sizeof name, "%s", im->node_name);
    else snprintf(name, sizeof name, "%.80s:%d", im->node_name, im->nsub);
    im->nsub++;
    return graph_add_node(&im->m->g, op, name, nin, ins, npar, pars);
}

/* Shape inference of the last node in both worlds. */
static int end_node(struct importer *im)
{
    struct graph *g = &im->m->g;
    int32_t gid = graph_nvalues(g) - 1;
    grow_shapes(im, gid + 1);
    char msg[256];
    for (int w = 0; w < 2; w++) {
        int rc = shape_node(g, &g->nodes[g->nnodes - 1], im->shapes[w], &im->shapes[w][gid], msg, sizeof msg);
        if (rc) {
            /* shape_node's message names the graph node (the ONNX node's name) */
            if (im->err && im->errlen) snprintf(im->err, im->errlen, "%s", msg);
            return rc;
        }
    }
    return 0;
}

static enum graph_op need_op(struct importer *im, const char *name, int *rc)
{
    enum graph_op op = graph_op_from_name(name);
    if (op == GRAPH_OP_INVALID) *rc = nfail(im, PPS_EUNSUPPORTED, "needs graph operation %s, which this build lacks", name);
    return op;
}

/* A float32 parameter holding constant c (world-independent). */
static int32_t param_from(struct importer *im, const char *name, const struct onnx_const *c0,
                          const struct onnx_const *c1, int *rc)
{
    if (!onnx_const_equal(c0, c1)) {
        *rc = nfail(im, PPS_EUNSUPPORTED, "constant '%s' depends on the batch size", name);
        return -1;
    }
    if (c0->n == 0 || c0->ndims > GRAPH_MAX_DIMS) {
        *rc = nfail(im, PPS_EUNSUPPORTED, "constant '%s' is empty or of rank > %d", name, GRAPH_MAX_DIMS);
        return -1;
    }
    const struct onnx_const *f = c0;
    if (c0->type != ONNX_CONST_F32) {
        f = onnx_const_cast(&im->m->pool, c0, ONNX_CONST_F32, im->err, im->errlen);
        if (!f) {
            *rc = PPS_ETOOBIG;
            return -1;
        }
    }
    struct graph *g = &im->m->g;
    int32_t p = graph_add_param(g, name, f->ndims, f->dims);
    if (p >= im->m->param_cap) {
        im->m->param_cap = im->m->param_cap ? im->m->param_cap * 2 : 64;
        im->m->param_data = pps_xrealloc(im->m->param_data, (unsigned long)im->m->param_cap * sizeof(void *));
    }
    im->m->param_data[p] = f->data;
    return p;
}

static int32_t param_of(struct importer *im, struct ival *v, int *rc)
{
    if (v->param >= 0) return v->param;
    v->param = param_from(im, v->name, v->c[0], v->c[1], rc);
    return v->param;
}

/* A Constant node producing v's value (an activation). */
static int32_t const_node_of(struct importer *im, struct ival *v, int *rc)
{
    if (v->const_gid >= 0) return v->const_gid;
    enum graph_op op = need_op(im, "Constant", rc);
    if (!op) return -1;
    int32_t p = param_of(im, v, rc);
    if (p < 0) return -1;
    int32_t gid = begin_node(im, op, 0, NULL, 1, &p);
    if ((*rc = end_node(im))) return -1;
    v->const_gid = gid;
    return gid;
}

/* Operand k of the current node (NULL when absent or ""). */
static struct ival *in(struct importer *im, int k)
{
    const Onnx__NodeProto *n = im->node;
    if (k < 0 || (size_t)k >= n->n_input || !n->input[k] || !n->input[k][0]) return NULL;
    return find_val(im, n->input[k]);
}

static int is_const(const struct ival *v) { return v && v->kind == IV_CONST; }
static int is_act(const struct ival *v) { return v && v->kind == IV_ACT; }

/* An unnamed activation: a node's output that a mapping chains into its next
 * node (a Cast operand, the running result of a Sum or a long Concat). */
static struct ival temp_act(int32_t gid)
{
    struct ival v;
    memset(&v, 0, sizeof v);
    v.kind = IV_ACT;
    v.gid = gid;
    v.param = v.const_gid = -1;
    return v;
}

/* Dims of v in world w. */
static int vdims(struct importer *im, const struct ival *v, int w, int64_t *dims)
{
    if (v->kind == IV_CONST) {
        for (int i = 0; i < v->c[w]->ndims; i++) dims[i] = v->c[w]->dims[i];
        return v->c[w]->ndims;
    }
    const struct exec_tensor *t = &im->shapes[w][v->gid];
    for (int i = 0; i < t->ndims; i++) dims[i] = t->dims[i];
    return t->ndims;
}

/* Operands in ONNX order into node inputs and params: activations, then
 * the trailing constants as params; a constant before an activation
 * becomes a Constant node. */
static int place_operands(struct importer *im, struct ival **ops, int n, int32_t *ins, int *nin,
                          int32_t *pars, int *npar)
{
    int last_act = -1, rc = 0;
    for (int k = 0; k < n; k++)
        if (is_act(ops[k])) last_act = k;
    *nin = *npar = 0;
    for (int k = 0; k < n; k++) {
        if (!ops[k]) continue;
        if (k <= last_act) {
            if (*nin >= GRAPH_MAX_INPUTS) return nfail(im, PPS_EUNSUPPORTED, "more than %d inputs", GRAPH_MAX_INPUTS);
            int32_t id = is_act(ops[k]) ? ops[k]->gid : const_node_of(im, ops[k], &rc);
            if (id < 0) return rc;
            ins[(*nin)++] = id;
        } else {
            if (*npar >= GRAPH_MAX_PARAMS) return nfail(im, PPS_EUNSUPPORTED, "more than %d constant operands", GRAPH_MAX_PARAMS);
            int32_t p = param_of(im, ops[k], &rc);
            if (p < 0) return rc;
            pars[(*npar)++] = p;
        }
    }
    return 0;
}

/* Node output k becomes graph value gid. */
static int set_out_act(struct importer *im, int k, int32_t gid)
{
    const Onnx__NodeProto *n = im->node;
    if ((size_t)k >= n->n_output || !n->output[k][0]) return 0;
    struct ival *v = find_val(im, n->output[k]);
    v->kind = IV_ACT;
    v->gid = gid;
    return 0;
}

static int set_out_const(struct importer *im, int k, struct onnx_const *c0, struct onnx_const *c1)
{
    const Onnx__NodeProto *n = im->node;
    if ((size_t)k >= n->n_output || !n->output[k][0]) return 0;
    struct ival *v = find_val(im, n->output[k]);
    v->kind = IV_CONST;
    v->c[0] = c0;
    v->c[1] = c1;
    return 0;
}

/* Outputs beyond the first that some consumer reads are refused. */
static int only_first_output(struct importer *im)
{
    for (size_t k = 1; k < im->node->n_output; k++) {
        struct ival *v = find_val(im, im->node->output[k]);
        if (v && im->node->output[k][0]) v->kind = IV_NONE; /* readers get a clear error */
    }
    return 0;
}

/* ---- symbolic shape elements ------------------------------------------------ */

/* Target dims (per world) of a reshape of x into a "shape" attribute:
 * equal elements are literal; a batch-dependent one is 0 if it copies x's
 * dimension at that position, otherwise -1 (at most one). */
static int shape_attr(struct importer *im, const struct ival *x, int n, const int64_t *d0, const int64_t *d1,
                      int64_t *out)
{
    int64_t xd[2][GRAPH_MAX_DIMS];
    int xr = vdims(im, x, 0, xd[0]);
    vdims(im, x, 1, xd[1]);
    int infer = 0;
    for (int i = 0; i < n; i++) {
        if (d0[i] == d1[i]) {
            out[i] = d0[i];
            if (d0[i] == 0) { /* a literal zero-length dimension would need allowzero */
                return nfail(im, PPS_EUNSUPPORTED, "zero-length dimension in a shape");
            }
        } else if (i < xr && xd[0][i] == d0[i] && xd[1][i] == d1[i]) {
            out[i] = 0;
        } else {
            out[i] = -1;
            if (++infer > 1)
                return nfail(im, PPS_EUNSUPPORTED, "shape has more than one element derived from the batch size");
        }
    }
    return 0;
}

/* Emit Reshape(x) to per-world dims. */
static int emit_reshape(struct importer *im, struct ival *x, int n, const int64_t *d0, const int64_t *d1,
                        int32_t *gid)
{
    if (n < 1 || n > GRAPH_MAX_DIMS) return nfail(im, PPS_EUNSUPPORTED, "reshape to rank %d", n);
    int64_t sh[GRAPH_MAX_DIMS];
    int rc = shape_attr(im, x, n, d0, d1, sh);
    if (rc) return rc;
    *gid = begin_node(im, GRAPH_OP_RESHAPE, 1, &x->gid, 0, NULL);
    if ((rc = set_ints(im, "shape", n, sh))) return rc;
    return end_node(im);
}

/* A constant's int64 values in world w into out (max elements). */
static int const_ints(struct importer *im, const struct ival *v, int w, int64_t *out, int max, const char *what)
{
    if (!is_const(v)) return nfail(im, PPS_EUNSUPPORTED, "%s must be a constant", what);
    if (v->c[w]->n > (uint64_t)max) return nfail(im, PPS_EUNSUPPORTED, "%s has %llu values (at most %d)", what,
                                                  (unsigned long long)v->c[w]->n, max);
    for (uint64_t i = 0; i < v->c[w]->n; i++) out[i] = onnx_const_geti(v->c[w], i);
    return (int)v->c[w]->n;
}

/* Both worlds' values must agree. */
static int const_ints_fixed(struct importer *im, const struct ival *v, int64_t *out, int max, const char *what)
{
    int64_t o1[64];
    if (max > 64) max = 64;
    int n = const_ints(im, v, 0, out, max, what);
    if (n < 0 || (n == 0 && !is_const(v))) return n;
    if (const_ints(im, v, 1, o1, max, what) != n || memcmp(out, o1, (size_t)n * sizeof *out) != 0)
        return nfail(im, PPS_EUNSUPPORTED, "%s depends on the batch size", what);
    return n;
}

/* ---- folding ----------------------------------------------------------------- */

/* Fold the current node (all operands constant) if its op has a folding
 * rule. 1 = folded, 0 = not foldable, < 0 error. */
static int try_fold(struct importer *im, const char *op)
{
    const Onnx__NodeProto *n = im->node;
    struct onnx_const_pool *pool = &im->m->pool;
    char *err = im->err;
    size_t el = im->errlen;
    struct ival *a = in(im, 0), *b = in(im, 1), *c = in(im, 2);
    struct onnx_const *r[2] = {NULL, NULL};
    static const struct { const char *name; enum onnx_fold_op op; } bins[] = {
        {"Add", FOLD_ADD}, {"Sub", FOLD_SUB}, {"Mul", FOLD_MUL}, {"Div", FOLD_DIV}, {"Pow", FOLD_POW},
        {"Equal", FOLD_EQUAL}, {"Less", FOLD_LESS}, {"Greater", FOLD_GREATER}, {"And", FOLD_AND},
        {"Or", FOLD_OR}, {"Mod", FOLD_MOD}, {"Max", FOLD_MAX}, {"Min", FOLD_MIN},
    };
    static const struct { const char *name; enum onnx_fold_unary op; } uns[] = {
        {"Neg", FOLD_NEG}, {"Abs", FOLD_ABS}, {"Sqrt", FOLD_SQRT}, {"Exp", FOLD_EXP}, {"Log", FOLD_LOG},
        {"Reciprocal", FOLD_RECIPROCAL}, {"Floor", FOLD_FLOOR}, {"Ceil", FOLD_CEIL}, {"Not", FOLD_NOT},
        {"Relu", FOLD_RELU}, {"Sigmoid", FOLD_SIGMOID}, {"Tanh", FOLD_TANH}, {"Erf", FOLD_ERF},
        {"Identity", FOLD_IDENTITY}, {"Dropout", FOLD_IDENTITY},
    };
    for (size_t i = 0; i < sizeof bins / sizeof bins[0]; i++)
        if (strcmp(op, bins[i].name) == 0) {
            if (n->n_input < 2 && (bins[i].op == FOLD_MAX || bins[i].op == FOLD_MIN)) {
                set_out_const(im, 0, a->c[0], a->c[1]);
                return 1;
            }
            for (int w = 0; w < 2; w++) {
                struct onnx_const *acc = a->c[w];
                for (size_t k = 1; k < n->n_input; k++) {
                    struct ival *o = in(im, (int)k);
                    if (!o) continue;
                    acc = onnx_fold_binary(pool, bins[i].op, acc, o->c[w], err, el);
                    if (!acc) return nfail(im, PPS_EINVAL, "cannot fold: %s", err);
                }
                r[w] = acc;
            }
            set_out_const(im, 0, r[0], r[1]);
            return 1;
        }
    for (size_t i = 0; i < sizeof uns / sizeof uns[0]; i++)
        if (strcmp(op, uns[i].name) == 0) {
            for (int w = 0; w < 2; w++)
                if (!(r[w] = uns[i].op == FOLD_IDENTITY ? a->c[w] : onnx_fold_unary(pool, uns[i].op, a->c[w], err, el)))
                    return nfail(im, PPS_EINVAL, "cannot fold: %s", err);
            set_out_const(im, 0, r[0], r[1]);
            return 1;
        }
    if (strcmp(op, "Cast") == 0) {
        int64_t to = attr_int(n, "to", 1);
        enum onnx_const_type t = (to == 1 || to == 10 || to == 11 || to == 16) ? ONNX_CONST_F32 : ONNX_CONST_I64;
        for (int w = 0; w < 2; w++) {
            if (!(r[w] = onnx_const_cast(pool, a->c[w], t, err, el))) return nfail(im, PPS_EINVAL, "%s", err);
            if (to == 9) /* bool */
                for (uint64_t k = 0; k < r[w]->n; k++) onnx_const_seti(r[w], k, onnx_const_geti(r[w], k) != 0);
        }
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Where") == 0) {
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_where(pool, a->c[w], b->c[w], c->c[w], err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Gather") == 0) {
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_gather(pool, a->c[w], b->c[w], attr_int(n, "axis", 0), err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Concat") == 0) {
        const struct onnx_const *parts[2][64];
        int np = 0;
        if (n->n_input > 64) return nfail(im, PPS_EUNSUPPORTED, "Concat of %zu constants (at most 64)", n->n_input);
        for (size_t k = 0; k < n->n_input; k++) {
            struct ival *o = in(im, (int)k);
            if (!o) continue;
            parts[0][np] = o->c[0];
            parts[1][np] = o->c[1];
            np++;
        }
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_concat(pool, parts[w], np, attr_int(n, "axis", 0), err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Transpose") == 0) {
        int64_t perm[GRAPH_MAX_DIMS];
        int np = attr_ints(n, "perm", perm, GRAPH_MAX_DIMS);
        if (np > 0 && np != a->c[0]->ndims) return nfail(im, PPS_EINVAL, "perm has %d entries for rank %d", np, a->c[0]->ndims);
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_transpose(pool, a->c[w], np > 0 ? perm : NULL, err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Range") == 0) {
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_range(pool, a->c[w], b->c[w], c->c[w], err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Trilu") == 0) {
        int64_t k[1] = {0};
        for (int w = 0; w < 2; w++) {
            if (b && const_ints(im, b, w, k, 1, "Trilu's k") != 1) return nfail(im, PPS_EINVAL, "Trilu's k is not a scalar");
            if (!(r[w] = onnx_fold_trilu(pool, a->c[w], k[0], (int)attr_int(n, "upper", 1), err, el)))
                return nfail(im, PPS_EINVAL, "%s", err);
        }
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    if (strcmp(op, "Expand") == 0) {
        for (int w = 0; w < 2; w++) {
            int64_t sh[GRAPH_MAX_DIMS];
            int ns = const_ints(im, b, w, sh, GRAPH_MAX_DIMS, "Expand's shape");
            if (ns < 0) return ns;
            if (!(r[w] = onnx_fold_expand(pool, a->c[w], ns, sh, err, el))) return nfail(im, PPS_EINVAL, "%s", err);
        }
        set_out_const(im, 0, r[0], r[1]);
        return 1;
    }
    return 0;
}

/* ---- shape-producing and reshaping ops (constant or not) --------------------- */

static int map_shape(struct importer *im, int size_only)
{
    struct ival *x = in(im, 0);
    struct onnx_const *r[2];
    for (int w = 0; w < 2; w++) {
        int64_t d[GRAPH_MAX_DIMS];
        int nd = vdims(im, x, w, d);
        if (size_only) {
            int64_t prod = 1;
            for (int i = 0; i < nd; i++) prod *= d[i];
            r[w] = onnx_const_new(&im->m->pool, ONNX_CONST_I64, 0, NULL, im->err, im->errlen);
            onnx_const_seti(r[w], 0, prod);
            continue;
        }
        int64_t start = attr_int(im->node, "start", 0), end = attr_int(im->node, "end", nd);
        if (start < 0) start += nd;
        if (end < 0) end += nd;
        if (start < 0) start = 0;
        if (end > nd) end = nd;
        int64_t len = end > start ? end - start : 0;
        r[w] = onnx_const_new(&im->m->pool, ONNX_CONST_I64, 1, &len, im->err, im->errlen);
        for (int64_t i = 0; i < len; i++) onnx_const_seti(r[w], (uint64_t)i, d[start + i]);
    }
    return set_out_const(im, 0, r[0], r[1]);
}

static int map_constant(struct importer *im)
{
    const Onnx__NodeProto *n = im->node;
    const Onnx__AttributeProto *a;
    struct onnx_const *c = NULL;
    int rc;
    struct onnx_const_pool *pool = &im->m->pool;
    if ((a = attr(n, "value")) && a->t) {
        if ((rc = load_tensor(im, a->t, im->node_name, &c))) return rc;
    } else if ((a = attr(n, "value_float")) && a->has_f) {
        c = onnx_const_new(pool, ONNX_CONST_F32, 0, NULL, NULL, 0);
        onnx_const_set(c, 0, a->f);
    } else if ((a = attr(n, "value_int")) && a->has_i) {
        c = onnx_const_new(pool, ONNX_CONST_I64, 0, NULL, NULL, 0);
        onnx_const_seti(c, 0, a->i);
    } else if ((a = attr(n, "value_floats"))) {
        int64_t len = (int64_t)a->n_floats;
        c = onnx_const_new(pool, ONNX_CONST_F32, 1, &len, im->err, im->errlen);
        if (!c) return PPS_ETOOBIG;
        for (size_t i = 0; i < a->n_floats; i++) onnx_const_set(c, i, a->floats[i]);
    } else if ((a = attr(n, "value_ints"))) {
        int64_t len = (int64_t)a->n_ints;
        c = onnx_const_new(pool, ONNX_CONST_I64, 1, &len, im->err, im->errlen);
        if (!c) return PPS_ETOOBIG;
        for (size_t i = 0; i < a->n_ints; i++) onnx_const_seti(c, i, a->ints[i]);
    } else {
        return nfail(im, PPS_EUNSUPPORTED, "Constant without a value/value_float(s)/value_int(s) attribute");
    }
    return set_out_const(im, 0, c, c);
}

static int map_constant_of_shape(struct importer *im)
{
    struct ival *s = in(im, 0);
    if (!is_const(s)) return nfail(im, PPS_EUNSUPPORTED, "the shape input must be a constant");
    struct onnx_const *value = NULL;
    const Onnx__AttributeProto *a = attr(im->node, "value");
    int rc;
    if (a && a->t && (rc = load_tensor(im, a->t, im->node_name, &value))) return rc;
    struct onnx_const *r[2];
    for (int w = 0; w < 2; w++) {
        int64_t d[GRAPH_MAX_DIMS];
        int nd = const_ints(im, s, w, d, GRAPH_MAX_DIMS, "ConstantOfShape's shape");
        if (nd < 0) return nd;
        r[w] = onnx_const_new(&im->m->pool, value ? value->type : ONNX_CONST_F32, nd, d, im->err, im->errlen);
        if (!r[w]) return PPS_ETOOBIG;
        if (value && value->n >= 1)
            for (uint64_t i = 0; i < r[w]->n; i++) {
                if (value->type == ONNX_CONST_I64) onnx_const_seti(r[w], i, onnx_const_geti(value, 0));
                else onnx_const_set(r[w], i, onnx_const_get(value, 0));
            }
    }
    return set_out_const(im, 0, r[0], r[1]);
}

/* Squeeze / Unsqueeze / Reshape / Flatten of a constant or an activation. */
static int map_reshape_like(struct importer *im, const char *op)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0);
    int64_t out[2][GRAPH_MAX_DIMS];
    int on = 0;
    for (int w = 0; w < 2; w++) {
        int64_t xd[GRAPH_MAX_DIMS];
        int xr = vdims(im, x, w, xd);
        int64_t axes[GRAPH_MAX_DIMS];
        int na = 0;
        if (strcmp(op, "Reshape") == 0) {
            int64_t sh[GRAPH_MAX_DIMS];
            int ns = const_ints(im, in(im, 1), w, sh, GRAPH_MAX_DIMS, "Reshape's shape");
            if (ns < 0) return ns;
            int allowzero = (int)attr_int(n, "allowzero", 0);
            uint64_t total = 1, known = 1;
            int infer = -1;
            for (int i = 0; i < xr; i++) total *= (uint64_t)xd[i];
            for (int i = 0; i < ns; i++) {
                int64_t d = sh[i];
                if (d == 0 && !allowzero) {
                    if (i >= xr) return nfail(im, PPS_EINVAL, "0 in shape beyond the input rank");
                    d = xd[i];
                }
                if (d == -1) {
                    if (infer >= 0) return nfail(im, PPS_EINVAL, "more than one -1 in shape");
                    infer = i;
                    d = 1;
                } else if (d < 0) {
                    return nfail(im, PPS_EINVAL, "negative dimension %lld in shape", (long long)d);
                }
                out[w][i] = d;
                known *= (uint64_t)d;
            }
            if (infer >= 0) {
                if (known == 0 || total % known) return nfail(im, PPS_EINVAL, "cannot infer the -1 in shape");
                out[w][infer] = (int64_t)(total / known);
            } else if (known != total) {
                return nfail(im, PPS_EINVAL, "shape has %llu elements, the input %llu", (unsigned long long)known,
                             (unsigned long long)total);
            }
            on = ns;
            continue;
        }
        if (strcmp(op, "Flatten") == 0) {
            int64_t ax = attr_int(n, "axis", 1);
            if (ax < 0) ax += xr;
            if (ax < 0 || ax > xr) return nfail(im, PPS_EINVAL, "axis out of range");
            out[w][0] = out[w][1] = 1;
            for (int i = 0; i < xr; i++) out[w][i < ax ? 0 : 1] *= xd[i];
            on = 2;
            continue;
        }
        /* Squeeze / Unsqueeze: axes from the attribute (old opsets) or input 1 */
        if (in(im, 1)) na = const_ints_fixed(im, in(im, 1), axes, GRAPH_MAX_DIMS, "axes");
        else na = attr_ints(n, "axes", axes, GRAPH_MAX_DIMS);
        if (na < 0) return na == -1 ? nfail(im, PPS_EUNSUPPORTED, "too many axes") : na;
        if (strcmp(op, "Unsqueeze") == 0) {
            int r = xr + na;
            if (r > GRAPH_MAX_DIMS) return nfail(im, PPS_EUNSUPPORTED, "result rank %d", r);
            unsigned mark = 0;
            for (int k = 0; k < na; k++) {
                int64_t ax = axes[k] < 0 ? axes[k] + r : axes[k];
                if (ax < 0 || ax >= r || (mark & (1u << ax))) return nfail(im, PPS_EINVAL, "bad axes");
                mark |= 1u << ax;
            }
            for (int i = 0, j = 0; i < r; i++) out[w][i] = (mark & (1u << i)) ? 1 : xd[j++];
            on = r;
        } else {
            unsigned mark = 0;
            for (int k = 0; k < na; k++) {
                int64_t ax = axes[k] < 0 ? axes[k] + xr : axes[k];
                if (ax < 0 || ax >= xr || xd[ax] != 1) return nfail(im, PPS_EINVAL, "cannot squeeze axis %lld", (long long)axes[k]);
                mark |= 1u << ax;
            }
            on = 0;
            for (int i = 0; i < xr; i++)
                if (!(na == 0 ? xd[i] == 1 : (mark & (1u << i)) != 0)) out[w][on++] = xd[i];
        }
    }
    if (is_const(x)) {
        struct onnx_const *r[2];
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_const_reshape(&im->m->pool, x->c[w], on, out[w], im->err, im->errlen)))
                return nfail(im, PPS_EINVAL, "%s", im->err);
        return set_out_const(im, 0, r[0], r[1]);
    }
    if (on == 0) {
        /* rank 0 results are not graph values; keep rank 1 */
        return nfail(im, PPS_EUNSUPPORTED, "a rank-0 activation (squeezed to a scalar)");
    }
    int32_t gid = -1;
    int rc;
    if (strcmp(op, "Flatten") == 0) {
        gid = begin_node(im, GRAPH_OP_FLATTEN, 1, &x->gid, 0, NULL);
        if ((rc = set_int(im, "axis", attr_int(n, "axis", 1))) || (rc = end_node(im))) return rc;
    } else if ((rc = emit_reshape(im, x, on, out[0], out[1], &gid))) {
        return rc;
    }
    return set_out_act(im, 0, gid);
}

/* Slice of a constant or an activation. */
static int map_slice(struct importer *im)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0);
    int64_t st[2][GRAPH_MAX_DIMS], en[2][GRAPH_MAX_DIMS], ax[GRAPH_MAX_DIMS], sp[GRAPH_MAX_DIMS];
    int ns, ne, na = 0, nt = 0;
    if (im->m->opset < 10) {
        ns = attr_ints(n, "starts", st[0], GRAPH_MAX_DIMS);
        ne = attr_ints(n, "ends", en[0], GRAPH_MAX_DIMS);
        na = attr_ints(n, "axes", ax, GRAPH_MAX_DIMS);
        memcpy(st[1], st[0], sizeof st[0]);
        memcpy(en[1], en[0], sizeof en[0]);
    } else {
        ns = const_ints(im, in(im, 1), 0, st[0], GRAPH_MAX_DIMS, "starts");
        if (ns >= 0) ns = const_ints(im, in(im, 1), 1, st[1], GRAPH_MAX_DIMS, "starts");
        ne = const_ints(im, in(im, 2), 0, en[0], GRAPH_MAX_DIMS, "ends");
        if (ne >= 0) ne = const_ints(im, in(im, 2), 1, en[1], GRAPH_MAX_DIMS, "ends");
        if (ns < 0 || ne < 0) return ns < 0 ? ns : ne;
        if (in(im, 3) && (na = const_ints_fixed(im, in(im, 3), ax, GRAPH_MAX_DIMS, "axes")) < 0) return na;
        if (in(im, 4) && (nt = const_ints_fixed(im, in(im, 4), sp, GRAPH_MAX_DIMS, "steps")) < 0) return nt;
    }
    if (ns < 0 || ne < 0 || ns != ne || (na && na != ns) || (nt && nt != ns))
        return nfail(im, PPS_EINVAL, "starts/ends/axes/steps lengths differ");
    if (!na)
        for (int k = 0; k < ns; k++) ax[k] = k;
    if (!nt)
        for (int k = 0; k < ns; k++) sp[k] = 1;
    if (is_const(x)) {
        struct onnx_const *r[2];
        for (int w = 0; w < 2; w++)
            if (!(r[w] = onnx_fold_slice(&im->m->pool, x->c[w], ns, st[w], en[w], ax, sp, im->err, im->errlen)))
                return nfail(im, PPS_EINVAL, "%s", im->err);
        return set_out_const(im, 0, r[0], r[1]);
    }
    /* batch-derived bounds: "up to the end" is expressible, nothing else */
    for (int k = 0; k < ns; k++) {
        int64_t d[2][GRAPH_MAX_DIMS];
        int r = vdims(im, x, 0, d[0]);
        vdims(im, x, 1, d[1]);
        int a = (int)(ax[k] < 0 ? ax[k] + r : ax[k]);
        if (a < 0 || a >= r) return nfail(im, PPS_EINVAL, "axis %lld out of range", (long long)ax[k]);
        if (st[0][k] != st[1][k]) {
            if (st[0][k] >= d[0][a] && st[1][k] >= d[1][a] && sp[k] < 0) st[0][k] = INT64_MAX;
            else return nfail(im, PPS_EUNSUPPORTED, "slice start depends on the batch size");
        }
        if (en[0][k] != en[1][k]) {
            if (en[0][k] >= d[0][a] && en[1][k] >= d[1][a] && sp[k] > 0) en[0][k] = INT64_MAX;
            else return nfail(im, PPS_EUNSUPPORTED, "slice end depends on the batch size");
        }
    }
    int32_t gid = begin_node(im, GRAPH_OP_SLICE, 1, &x->gid, 0, NULL);
    int rc;
    if ((rc = set_ints(im, "starts", ns, st[0])) || (rc = set_ints(im, "ends", ns, en[0])) ||
        (rc = set_ints(im, "axes", ns, ax)) || (rc = set_ints(im, "steps", ns, sp)) || (rc = end_node(im)))
        return rc;
    return set_out_act(im, 0, gid);
}

static int map_split(struct importer *im)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0);
    int64_t d[2][GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d[0]);
    vdims(im, x, 1, d[1]);
    int64_t axis = attr_int(n, "axis", 0);
    if (axis < 0) axis += r;
    if (axis < 0 || axis >= r) return nfail(im, PPS_EINVAL, "axis out of range");
    if (d[0][axis] != d[1][axis]) return nfail(im, PPS_EUNSUPPORTED, "splitting the batch dimension");
    int nout = (int)n->n_output;
    if (nout < 1 || nout > 256) return nfail(im, PPS_EUNSUPPORTED, "%d outputs", nout);
    int64_t sizes[256];
    int nsz;
    if (in(im, 1)) nsz = const_ints_fixed(im, in(im, 1), sizes, 64, "split");
    else nsz = attr_ints(n, "split", sizes, 256);
    if (nsz < 0) return nsz == -1 ? nfail(im, PPS_EUNSUPPORTED, "too many splits") : nsz;
    int64_t len = d[0][axis];
    if (nsz == 0) {
        int64_t each = (len + nout - 1) / nout;
        for (int k = 0; k < nout; k++) {
            int64_t off = each * k;
            sizes[k] = off >= len ? 0 : (len - off < each ? len - off : each);
        }
        nsz = nout;
    }
    if (nsz != nout) return nfail(im, PPS_EINVAL, "split has %d sizes for %d outputs", nsz, nout);
    int64_t off = 0;
    for (int k = 0; k < nout; k++) {
        if (sizes[k] < 0 || sizes[k] > len - off) return nfail(im, PPS_EINVAL, "split sizes exceed the dimension");
        int64_t s = off, e = off + sizes[k], a = axis, one = 1;
        off = e;
        if (!n->output[k][0]) continue;
        if (is_const(x)) {
            struct onnx_const *c[2];
            for (int w = 0; w < 2; w++)
                if (!(c[w] = onnx_fold_slice(&im->m->pool, x->c[w], 1, &s, &e, &a, &one, im->err, im->errlen)))
                    return nfail(im, PPS_EINVAL, "%s", im->err);
            set_out_const(im, k, c[0], c[1]);
            continue;
        }
        int32_t gid = begin_node(im, GRAPH_OP_SLICE, 1, &x->gid, 0, NULL);
        int rc;
        if ((rc = set_ints(im, "starts", 1, &s)) || (rc = set_ints(im, "ends", 1, &e)) ||
            (rc = set_ints(im, "axes", 1, &a)) || (rc = end_node(im)))
            return rc;
        set_out_act(im, k, gid);
    }
    if (off != len) return nfail(im, PPS_EINVAL, "split sizes add up to %lld, the dimension is %lld", (long long)off, (long long)len);
    return 0;
}

/* ---- op mapping ---------------------------------------------------------------- */

/* Explicit pads from auto_pad for a window op over x (rank 4: NCHW). */
static int auto_pads(struct importer *im, const struct ival *x, const int64_t *kernel, int transposed,
                     int64_t *pads, int *npads)
{
    char mode[32];
    attr_str(im->node, "auto_pad", mode, sizeof mode);
    if (!mode[0] || strcmp(mode, "NOTSET") == 0) return 0;
    int64_t d[GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d);
    int ns = r - 2;
    if (ns < 1 || ns > 4) return nfail(im, PPS_EUNSUPPORTED, "auto_pad on rank %d", r);
    int64_t strides[4] = {1, 1, 1, 1}, dil[4] = {1, 1, 1, 1};
    if (attr_ints(im->node, "strides", strides, 4) < 0 || attr_ints(im->node, "dilations", dil, 4) < 0)
        return nfail(im, PPS_EINVAL, "bad strides/dilations");
    *npads = 2 * ns;
    for (int i = 0; i < ns; i++) {
        int64_t total = 0;
        if (strcmp(mode, "VALID") != 0) {
            int64_t ext = (kernel[i] - 1) * dil[i] + 1;
            if (transposed) {
                total = strides[i] * (d[2 + i] - 1) + ext - d[2 + i] * strides[i];
            } else {
                int64_t out = (d[2 + i] + strides[i] - 1) / strides[i];
                total = (out - 1) * strides[i] + ext - d[2 + i];
            }
            if (total < 0) total = 0;
        }
        int64_t small = total / 2, big = total - small;
        int upper = strcmp(mode, "SAME_LOWER") != 0;
        pads[i] = upper ? small : big;
        pads[ns + i] = upper ? big : small;
    }
    return 0;
}

static int map_window(struct importer *im, enum graph_op op)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0), *w = in(im, 1), *b = in(im, 2);
    int rc = 0;
    if (!is_act(x)) return nfail(im, PPS_EUNSUPPORTED, "the input must not be a constant");
    int32_t pars[2];
    int npar = 0;
    int conv = op == GRAPH_OP_CONV || strcmp(n->op_type, "ConvTranspose") == 0;
    int64_t kernel[4];
    int nk = attr_ints(n, "kernel_shape", kernel, 4);
    if (conv) {
        if (!is_const(w)) return nfail(im, PPS_EUNSUPPORTED, "the weights must be a constant (an initializer)");
        if ((pars[npar++] = param_of(im, w, &rc)) < 0) return rc;
        if (b) {
            if (!is_const(b)) return nfail(im, PPS_EUNSUPPORTED, "the bias must be a constant");
            if ((pars[npar++] = param_of(im, b, &rc)) < 0) return rc;
        }
        if (nk <= 0) {
            nk = w->c[0]->ndims - 2;
            for (int i = 0; i < nk && i < 4; i++) kernel[i] = w->c[0]->dims[2 + i];
        }
    }
    int64_t pads[8];
    int npads = 0;
    if ((rc = auto_pads(im, x, kernel, strcmp(n->op_type, "ConvTranspose") == 0, pads, &npads))) return rc;
    int32_t gid = begin_node(im, op, 1, &x->gid, npar, pars);
    static const char *const names[] = {"kernel_shape", "strides", "dilations", "pads", "group", "ceil_mode",
                                        "count_include_pad", "output_padding", NULL};
    if ((rc = copy_attrs(im, n, names))) return rc;
    if (npads && (rc = set_ints(im, "pads", npads, pads))) return rc;
    if (strcmp(n->op_type, "ConvTranspose") == 0 && attr(n, "output_shape")) {
        int64_t os[GRAPH_MAX_DIMS], xd[GRAPH_MAX_DIMS], st[4] = {1, 1, 1, 1}, dl[4] = {1, 1, 1, 1}, outpad[4] = {0, 0, 0, 0};
        int r = vdims(im, x, 0, xd), ns = r - 2;
        int no = attr_ints(n, "output_shape", os, GRAPH_MAX_DIMS);
        if (ns < 1 || ns > 4 || nk != ns || (no != ns && no != r) || attr_ints(n, "strides", st, 4) < 0 ||
            attr_ints(n, "dilations", dl, 4) < 0 || attr_ints(n, "output_padding", outpad, 4) < 0)
            return nfail(im, PPS_EINVAL, "output_shape, kernel_shape, strides or dilations do not fit rank %d", r);
        char mode[32];
        attr_str(n, "auto_pad", mode, sizeof mode);
        int lower = strcmp(mode, "SAME_LOWER") == 0;
        for (int i = 0; i < ns; i++) {
            int64_t total = st[i] * (xd[2 + i] - 1) + outpad[i] + (kernel[i] - 1) * dl[i] + 1 - os[no - ns + i];
            if (total < 0) {
                /* a larger output than the kernel covers: extra output padding at the end */
                outpad[i] -= total;
                total = 0;
            }
            pads[i] = lower ? total - total / 2 : total / 2;
            pads[ns + i] = lower ? total / 2 : total - total / 2;
        }
        if ((rc = set_ints(im, "pads", 2 * ns, pads)) || (rc = set_ints(im, "output_padding", ns, outpad))) return rc;
    }
    if ((rc = end_node(im))) return rc;
    only_first_output(im);
    return set_out_act(im, 0, gid);
}

/* Binary (or variadic, chained) elementwise ops. */
static int map_binary(struct importer *im, enum graph_op op, int commutative)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *acc = in(im, 0);
    int rc;
    int32_t gid = -1;
    if (n->n_input == 1) {
        if (!is_act(acc)) return nfail(im, PPS_EUNSUPPORTED, "constant operand");
        return set_out_act(im, 0, acc->gid);
    }
    struct ival tmp, cast;
    for (size_t k = 1; k < n->n_input; k++) {
        struct ival *o = in(im, (int)k);
        if (op == GRAPH_OP_POW && is_act(o) && im->shapes[0][o->gid].dtype == GRAPH_I64) {
            /* an integer exponent (ONNX allows it for Pow): as float */
            enum graph_op cop = need_op(im, "Cast", &rc);
            if (!cop) return rc;
            cast = temp_act(begin_node(im, cop, 1, &o->gid, 0, NULL));
            if ((rc = set_int(im, "to", 1)) || (rc = end_node(im))) return rc;
            o = &cast;
        }
        if (!o) continue;
        struct ival *ops[2] = {acc, o};
        if (commutative && !is_act(acc) && is_act(o)) {
            ops[0] = o;
            ops[1] = acc;
        }
        int32_t ins[2], pars[2];
        int nin, npar;
        if ((rc = place_operands(im, ops, 2, ins, &nin, pars, &npar))) return rc;
        gid = begin_node(im, op, nin, ins, npar, pars);
        if ((rc = end_node(im))) return rc;
        tmp = temp_act(gid);
        acc = &tmp;
    }
    return set_out_act(im, 0, gid);
}

static int map_gemm(struct importer *im)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *a = in(im, 0), *b = in(im, 1), *c = in(im, 2);
    float alpha = attr_float(n, "alpha", 1.0f), beta = attr_float(n, "beta", 1.0f);
    int rc = 0, tb = (int)attr_int(n, "transB", 0);
    if (!is_act(a)) return nfail(im, PPS_EUNSUPPORTED, "A must not be a constant");
    int32_t ins[2] = {a->gid, -1}, pars[2];
    int nin = 1, npar = 0;
    if (is_const(b)) {
        const struct onnx_const *bc = b->c[0];
        if (alpha != 1.0f) {
            struct onnx_const *s = onnx_const_new(&im->m->pool, ONNX_CONST_F32, 0, NULL, NULL, 0);
            onnx_const_set(s, 0, alpha);
            if (!(bc = onnx_fold_binary(&im->m->pool, FOLD_MUL, b->c[0], s, im->err, im->errlen))) return PPS_ETOOBIG;
            char name[GRAPH_NAME_MAX + 1];
            snprintf(name, sizeof name, "%.80s*alpha", b->name);
            if ((pars[npar++] = param_from(im, name, bc, bc, &rc)) < 0) return rc;
        } else if ((pars[npar++] = param_of(im, b, &rc)) < 0) {
            return rc;
        }
    } else {
        if (alpha != 1.0f) return nfail(im, PPS_EUNSUPPORTED, "alpha != 1 with a non-constant B");
        ins[nin++] = b->gid;
    }
    if (c && beta != 0.0f) {
        if (!is_const(c)) return nfail(im, PPS_EUNSUPPORTED, "C must be a constant");
        int64_t bd[GRAPH_MAX_DIMS];
        vdims(im, b, 0, bd);
        int64_t nn = tb ? bd[0] : bd[1];
        const struct onnx_const *cc = c->c[0];
        if (beta != 1.0f || cc->n == 1) {
            struct onnx_const *s = onnx_const_new(&im->m->pool, ONNX_CONST_F32, 0, NULL, NULL, 0);
            onnx_const_set(s, 0, beta);
            if (!(cc = onnx_fold_binary(&im->m->pool, FOLD_MUL, c->c[0], s, im->err, im->errlen))) return PPS_ETOOBIG;
            if (cc->n == 1 && !(cc = onnx_fold_expand(&im->m->pool, cc, 1, &nn, im->err, im->errlen)))
                return PPS_ETOOBIG;
            char name[GRAPH_NAME_MAX + 1];
            snprintf(name, sizeof name, "%.80s*beta", c->name);
            if ((pars[npar++] = param_from(im, name, cc, cc, &rc)) < 0) return rc;
        } else if ((pars[npar++] = param_of(im, c, &rc)) < 0) {
            return rc;
        }
    }
    int32_t gid = begin_node(im, GRAPH_OP_GEMM, nin, ins, npar, pars);
    static const char *const names[] = {"transA", "transB", NULL};
    if ((rc = copy_attrs(im, n, names)) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

static int map_gather(struct importer *im)
{
    struct ival *data = in(im, 0), *idx = in(im, 1);
    int64_t axis = attr_int(im->node, "axis", 0);
    int rc = 0;
    int32_t ins[2], pars[1];
    int nin = 0, npar = 0;
    if (is_act(data) && is_const(idx)) {
        /* constant indices: normalised (negative counts from the end) to a float parameter */
        int64_t d[2][GRAPH_MAX_DIMS];
        int r = vdims(im, data, 0, d[0]);
        vdims(im, data, 1, d[1]);
        int a = (int)(axis < 0 ? axis + r : axis);
        if (a < 0 || a >= r) return nfail(im, PPS_EINVAL, "axis %lld out of range", (long long)axis);
        if (d[0][a] != d[1][a]) return nfail(im, PPS_EUNSUPPORTED, "gathering along the batch dimension");
        struct onnx_const *nc = onnx_const_cast(&im->m->pool, idx->c[0], ONNX_CONST_F32, im->err, im->errlen);
        if (!nc) return PPS_ETOOBIG;
        for (uint64_t i = 0; i < nc->n; i++) {
            int64_t j = onnx_const_geti(idx->c[0], i);
            if (j < 0) j += d[0][a];
            if (j < 0 || j >= d[0][a]) return nfail(im, PPS_ERANGE, "index %lld out of range [0, %lld)",
                                                      (long long)onnx_const_geti(idx->c[0], i), (long long)d[0][a]);
            onnx_const_set(nc, i, (double)j);
        }
        ins[nin++] = data->gid;
        if ((pars[npar++] = param_from(im, idx->name, nc, nc, &rc)) < 0) return rc;
    } else if (is_const(data) && is_act(idx)) {
        ins[nin++] = idx->gid; /* embedding lookup: (ids, table) */
        if ((pars[npar++] = param_of(im, data, &rc)) < 0) return rc;
    } else {
        ins[nin++] = data->gid;
        ins[nin++] = idx->gid;
    }
    int32_t gid = begin_node(im, GRAPH_OP_GATHER, nin, ins, npar, pars);
    if ((rc = set_int(im, "axis", axis)) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

/* Ops whose operands are all in ONNX order with trailing constants as
 * params, attributes copied by name. */
static int map_generic(struct importer *im, enum graph_op op, const char *const *attrs, int max_inputs)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *ops[16];
    int nops = (int)n->n_input;
    if (nops > max_inputs) nops = max_inputs;
    if (nops > 16) return nfail(im, PPS_EUNSUPPORTED, "too many operands");
    for (int k = 0; k < nops; k++) {
        ops[k] = in(im, k);
        if (!ops[k] && n->input[k][0] == '\0') continue;
    }
    /* trailing absent operands only */
    while (nops > 0 && !ops[nops - 1]) nops--;
    for (int k = 0; k < nops; k++)
        if (!ops[k]) return nfail(im, PPS_EUNSUPPORTED, "optional operand %d left out before a given one", k);
    int32_t ins[GRAPH_MAX_INPUTS], pars[GRAPH_MAX_PARAMS];
    int nin, npar, rc;
    if ((rc = place_operands(im, ops, nops, ins, &nin, pars, &npar))) return rc;
    int32_t gid = begin_node(im, op, nin, ins, npar, pars);
    if (attrs && (rc = copy_attrs(im, n, attrs))) return rc;
    if ((rc = end_node(im))) return rc;
    only_first_output(im);
    return set_out_act(im, 0, gid);
}

/* Concat of more operands than a node takes (DenseNet's blocks join up to
 * 49): a chain, each node joining the previous result and the next seven.
 * Concatenation along one axis is associative, so the values are equal. */
static int map_concat(struct importer *im, enum graph_op op)
{
    static const char *const names[] = {"axis", NULL};
    const Onnx__NodeProto *n = im->node;
    if (n->n_input <= GRAPH_MAX_INPUTS) return map_generic(im, op, names, GRAPH_MAX_INPUTS);
    struct ival acc;
    int32_t gid = -1;
    int rc;
    size_t k = 0;
    while (k < n->n_input) {
        struct ival *ops[GRAPH_MAX_INPUTS];
        int nops = 0;
        if (gid >= 0) ops[nops++] = &acc;
        for (; nops < GRAPH_MAX_INPUTS && k < n->n_input; k++) {
            if (!(ops[nops++] = in(im, (int)k))) return nfail(im, PPS_EUNSUPPORTED, "operand %zu is empty", k);
        }
        int32_t ins[GRAPH_MAX_INPUTS], pars[GRAPH_MAX_PARAMS];
        int nin, npar;
        if ((rc = place_operands(im, ops, nops, ins, &nin, pars, &npar))) return rc;
        gid = begin_node(im, op, nin, ins, npar, pars);
        if ((rc = copy_attrs(im, n, names)) || (rc = end_node(im))) return rc;
        acc = temp_act(gid);
    }
    return set_out_act(im, 0, gid);
}

static int map_softmax(struct importer *im, enum graph_op op)
{
    struct ival *x = in(im, 0);
    int64_t d[GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d);
    int64_t axis = attr_int(im->node, "axis", im->m->opset < 13 ? 1 : -1);
    if (axis < 0) axis += r;
    if (im->m->opset < 13 && axis != r - 1)
        return nfail(im, PPS_EUNSUPPORTED, "opset %lld softmax over axes %lld..%d (coerced to 2-D) is not supported",
                     (long long)im->m->opset, (long long)axis, r - 1);
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    int rc;
    if ((rc = set_int(im, "axis", axis)) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

static int map_clip(struct importer *im, enum graph_op op)
{
    struct ival *x = in(im, 0), *lo = in(im, 1), *hi = in(im, 2);
    int rc;
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    if (im->m->opset < 11) {
        static const char *const names[] = {"min", "max", NULL};
        if ((rc = copy_attrs(im, im->node, names))) return rc;
    } else {
        struct ival *b[2] = {lo, hi};
        const char *nm[2] = {"min", "max"};
        for (int k = 0; k < 2; k++) {
            if (!b[k]) continue;
            if (!is_const(b[k]) || b[k]->c[0]->n != 1 || !onnx_const_equal(b[k]->c[0], b[k]->c[1]))
                return nfail(im, PPS_EUNSUPPORTED, "%s must be a constant scalar", nm[k]);
            if ((rc = set_float(im, nm[k], (float)onnx_const_get(b[k]->c[0], 0)))) return rc;
        }
    }
    if ((rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

static int map_reduce(struct importer *im, enum graph_op op)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0);
    int64_t axes[GRAPH_MAX_DIMS];
    int na;
    if (in(im, 1)) na = const_ints_fixed(im, in(im, 1), axes, GRAPH_MAX_DIMS, "axes");
    else na = attr_ints(n, "axes", axes, GRAPH_MAX_DIMS);
    if (na < 0) return na == -1 ? nfail(im, PPS_EUNSUPPORTED, "too many axes") : na;
    if (na == 0 && attr_int(n, "noop_with_empty_axes", 0)) return set_out_act(im, 0, x->gid);
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    int rc;
    if ((na && (rc = set_ints(im, "axes", na, axes))) || (rc = set_int(im, "keepdims", attr_int(n, "keepdims", 1))) ||
        (rc = end_node(im)))
        return rc;
    return set_out_act(im, 0, gid);
}

static int map_pad(struct importer *im, enum graph_op op)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0);
    int64_t pads[16], axes[GRAPH_MAX_DIMS];
    int np, na = 0, rc;
    float value = 0;
    int64_t d[GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d);
    if (im->m->opset < 11) {
        np = attr_ints(n, "pads", pads, 16);
        value = attr_float(n, "value", 0);
    } else {
        np = const_ints_fixed(im, in(im, 1), pads, 16, "pads");
        struct ival *cv = in(im, 2);
        if (cv) {
            if (!is_const(cv) || cv->c[0]->n != 1) return nfail(im, PPS_EUNSUPPORTED, "constant_value must be a constant scalar");
            value = (float)onnx_const_get(cv->c[0], 0);
        }
        if (in(im, 3) && (na = const_ints_fixed(im, in(im, 3), axes, GRAPH_MAX_DIMS, "axes")) < 0) return na;
    }
    if (np < 0) return np == -1 ? nfail(im, PPS_EUNSUPPORTED, "too many pads") : np;
    if (na) {
        if (np != 2 * na) return nfail(im, PPS_EINVAL, "%d pads for %d axes", np, na);
        int64_t full[16] = {0};
        for (int k = 0; k < na; k++) {
            int64_t a = axes[k] < 0 ? axes[k] + r : axes[k];
            if (a < 0 || a >= r) return nfail(im, PPS_EINVAL, "axis out of range");
            full[a] = pads[k];
            full[r + a] = pads[na + k];
        }
        memcpy(pads, full, sizeof full);
        np = 2 * r;
    }
    if (np != 2 * r) return nfail(im, PPS_EINVAL, "%d pads for rank %d", np, r);
    char mode[32];
    attr_str(n, "mode", mode, sizeof mode);
    int m = !mode[0] || strcmp(mode, "constant") == 0 ? 0 : strcmp(mode, "reflect") == 0 ? 1
                                                            : strcmp(mode, "edge") == 0  ? 2 : -1;
    if (m < 0) return nfail(im, PPS_EUNSUPPORTED, "pad mode '%s'", mode);
    if (is_const(x)) return nfail(im, PPS_EUNSUPPORTED, "padding a constant");
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    if ((rc = set_ints(im, "pads", np, pads)) || (rc = set_int(im, "mode", m)) || (rc = set_float(im, "value", value)) ||
        (rc = end_node(im)))
        return rc;
    return set_out_act(im, 0, gid);
}

static int map_resize(struct importer *im, enum graph_op op)
{
    const Onnx__NodeProto *n = im->node;
    struct ival *x = in(im, 0), *scales, *sizes;
    if (strcmp(n->op_type, "Upsample") == 0 || im->m->opset < 11) {
        scales = in(im, 1);
        sizes = NULL;
    } else {
        scales = in(im, 2);
        sizes = in(im, 3);
    }
    int64_t d[2][GRAPH_MAX_DIMS], out[2][GRAPH_MAX_DIMS];
    double scale_of[GRAPH_MAX_DIMS]; /* the scale ONNX maps coordinates with, per axis (0: from sizes) */
    memset(scale_of, 0, sizeof scale_of);
    int r = vdims(im, x, 0, d[0]);
    vdims(im, x, 1, d[1]);
    for (int w = 0; w < 2; w++) {
        if (sizes && is_const(sizes) && sizes->c[w]->n > 0) {
            if (const_ints(im, sizes, w, out[w], GRAPH_MAX_DIMS, "sizes") != r)
                return nfail(im, PPS_EINVAL, "sizes must have one value per dimension");
        } else if (scales && is_const(scales) && scales->c[w]->n == (uint64_t)r) {
            for (int i = 0; i < r; i++) {
                scale_of[i] = onnx_const_get(scales->c[w], (uint64_t)i);
                out[w][i] = (int64_t)floor((double)d[w][i] * scale_of[i]);
            }
        } else if (!scales && attr(n, "scales")) {
            const Onnx__AttributeProto *a = attr(n, "scales");
            if (a->n_floats != (size_t)r) return nfail(im, PPS_EINVAL, "scales must have one value per dimension");
            for (int i = 0; i < r; i++) {
                scale_of[i] = a->floats[i];
                out[w][i] = (int64_t)floor((double)d[w][i] * scale_of[i]);
            }
        } else {
            return nfail(im, PPS_EUNSUPPORTED, "scales or sizes must be a constant with one value per dimension");
        }
    }
    int64_t sz[GRAPH_MAX_DIMS];
    for (int i = 0; i < r; i++) {
        if (out[0][i] == out[1][i]) sz[i] = out[0][i];
        else if (out[0][i] == d[0][i] && out[1][i] == d[1][i]) sz[i] = 0; /* the batch: unchanged */
        else return nfail(im, PPS_EUNSUPPORTED, "resizing the batch dimension");
    }
    char s[48];
    attr_str(n, "mode", s, sizeof s);
    int mode = !s[0] || strcmp(s, "nearest") == 0 ? 0 : strcmp(s, "linear") == 0 || strcmp(s, "bilinear") == 0 ? 1 : -1;
    if (mode < 0) return nfail(im, PPS_EUNSUPPORTED, "resize mode '%s'", s);
    attr_str(n, "coordinate_transformation_mode", s, sizeof s);
    int coord = !s[0] ? (im->m->opset < 11 ? 1 : 0)
                : strcmp(s, "half_pixel") == 0 ? 0 : strcmp(s, "asymmetric") == 0 ? 1
                : strcmp(s, "align_corners") == 0 ? 2 : strcmp(s, "pytorch_half_pixel") == 0 ? 3 : -1;
    if (coord < 0) return nfail(im, PPS_EUNSUPPORTED, "coordinate_transformation_mode '%s'", s);
    attr_str(n, "nearest_mode", s, sizeof s);
    int nearest = !s[0] || strcmp(s, "round_prefer_floor") == 0 ? 0 : strcmp(s, "round_prefer_ceil") == 0 ? 1
                  : strcmp(s, "floor") == 0 ? 2 : strcmp(s, "ceil") == 0 ? 3 : -1;
    if (nearest < 0) return nfail(im, PPS_EUNSUPPORTED, "nearest_mode '%s'", s);
    /* The graph op knows the output sizes only, so it maps coordinates by
     * output/input; ONNX maps them by the given scale. Where the two differ
     * in what is read, the model is refused rather than computed otherwise. */
    for (int i = 0; i < r && coord != 2; i++) {
        if (scale_of[i] <= 0 || out[0][i] < 1 || (double)out[0][i] == (double)d[0][i] * scale_of[i]) continue;
        double eff = (double)out[0][i] / (double)d[0][i];
        for (int64_t o = 0; o < out[0][i]; o++) {
            double src[2];
            for (int k = 0; k < 2; k++) {
                double sc = k ? eff : scale_of[i];
                double v = coord == 1 ? (double)o / sc
                           : coord == 3 && out[0][i] == 1 ? 0.0 : ((double)o + 0.5) / sc - 0.5;
                if (mode == 0) {
                    double fl = floor(v), fr = v - fl;
                    v = nearest == 2 ? fl : nearest == 3 ? ceil(v) : fr == 0.5 ? (nearest == 1 ? fl + 1 : fl) : floor(v + 0.5);
                }
                if (v < 0) v = 0;
                if (v > (double)(d[0][i] - 1)) v = (double)(d[0][i] - 1);
                src[k] = v;
            }
            if (fabs(src[0] - src[1]) > 1e-6)
                return nfail(im, PPS_EUNSUPPORTED, "scale %g on axis %d is not output/input (%lld/%lld) and changes what is "
                                                   "read; give sizes instead", scale_of[i], i, (long long)out[0][i], (long long)d[0][i]);
        }
    }
    if (!is_act(x)) return nfail(im, PPS_EUNSUPPORTED, "resizing a constant");
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    int rc;
    if ((rc = set_int(im, "mode", mode)) || (rc = set_ints(im, "sizes", r, sz)) || (rc = set_int(im, "coord", coord)) ||
        (rc = set_int(im, "nearest", nearest)) || (rc = end_node(im)))
        return rc;
    return set_out_act(im, 0, gid);
}

static int map_expand_tile(struct importer *im, enum graph_op op, int tile)
{
    struct ival *x = in(im, 0), *s = in(im, 1);
    int64_t v[2][GRAPH_MAX_DIMS], xd[2][GRAPH_MAX_DIMS];
    int ns = const_ints(im, s, 0, v[0], GRAPH_MAX_DIMS, tile ? "repeats" : "shape");
    if (ns < 0) return ns;
    if (const_ints(im, s, 1, v[1], GRAPH_MAX_DIMS, "shape") != ns) return PPS_EINVAL;
    int xr = vdims(im, x, 0, xd[0]);
    vdims(im, x, 1, xd[1]);
    for (int i = 0; i < ns; i++) {
        if (v[0][i] == v[1][i]) continue;
        /* a batch-derived target element: the input's own dimension there, kept by broadcasting with 1 */
        int xi = i - (ns - xr);
        if (!tile && xi >= 0 && xd[0][xi] == v[0][i] && xd[1][xi] == v[1][i]) v[0][i] = 1;
        else return nfail(im, PPS_EUNSUPPORTED, "%s depends on the batch size", tile ? "repeats" : "shape");
    }
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    int rc;
    if ((rc = set_ints(im, tile ? "repeats" : "shape", ns, v[0])) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

static int map_cast(struct importer *im)
{
    struct ival *x = in(im, 0);
    int64_t to = attr_int(im->node, "to", 1);
    enum graph_dtype want = (to == 1 || to == 10 || to == 11 || to == 16) ? GRAPH_F32 : GRAPH_I64;
    if (im->shapes[0][x->gid].dtype == want && to != 9) return set_out_act(im, 0, x->gid);
    int rc = 0;
    enum graph_op op = need_op(im, "Cast", &rc);
    if (!op) return rc;
    int32_t gid = begin_node(im, op, 1, &x->gid, 0, NULL);
    if ((rc = set_int(im, "to", want == GRAPH_F32 ? 1 : 7)) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

/* LayerNormalization's optional outputs Mean and InvStdDev (over the axes
 * from "axis" on, kept as 1), built from graph ops when something reads
 * them. */
static int layernorm_stats(struct importer *im, struct ival *x)
{
    const Onnx__NodeProto *n = im->node;
    int want_mean = n->n_output > 1 && n->output[1][0], want_inv = n->n_output > 2 && n->output[2][0];
    if (!want_mean && !want_inv) return 0;
    int rc = 0;
    enum graph_op rmean = need_op(im, "ReduceMean", &rc), recip = need_op(im, "Reciprocal", &rc);
    if (!rmean || !recip) return rc;
    int64_t d[GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d);
    int64_t axis = attr_int(n, "axis", -1);
    if (axis < 0) axis += r;
    if (axis < 0 || axis >= r) return nfail(im, PPS_EINVAL, "axis out of range");
    int64_t axes[GRAPH_MAX_DIMS];
    int na = 0;
    for (int64_t a = axis; a < r; a++) axes[na++] = a;
    int32_t mean = begin_node(im, rmean, 1, &x->gid, 0, NULL);
    if ((rc = set_ints(im, "axes", na, axes)) || (rc = set_int(im, "keepdims", 1)) || (rc = end_node(im))) return rc;
    if (want_mean) set_out_act(im, 1, mean);
    if (!want_inv) return 0;
    int32_t ops[2] = {x->gid, mean};
    int32_t centred = begin_node(im, GRAPH_OP_SUB, 2, ops, 0, NULL);
    if ((rc = end_node(im))) return rc;
    ops[0] = ops[1] = centred;
    int32_t sq = begin_node(im, GRAPH_OP_MUL, 2, ops, 0, NULL);
    if ((rc = end_node(im))) return rc;
    int32_t var = begin_node(im, rmean, 1, &sq, 0, NULL);
    if ((rc = set_ints(im, "axes", na, axes)) || (rc = set_int(im, "keepdims", 1)) || (rc = end_node(im))) return rc;
    struct onnx_const *eps = onnx_const_new(&im->m->pool, ONNX_CONST_F32, 0, NULL, NULL, 0);
    onnx_const_set(eps, 0, attr_float(n, "epsilon", 1e-5f));
    char name[GRAPH_NAME_MAX + 1];
    snprintf(name, sizeof name, "%.80s.epsilon", im->node_name);
    int32_t pe = param_from(im, name, eps, eps, &rc);
    if (pe < 0) return rc;
    int32_t ve = begin_node(im, GRAPH_OP_ADD, 1, &var, 1, &pe);
    if ((rc = end_node(im))) return rc;
    int32_t sd = begin_node(im, GRAPH_OP_SQRT, 1, &ve, 0, NULL);
    if ((rc = end_node(im))) return rc;
    int32_t inv = begin_node(im, recip, 1, &sd, 0, NULL);
    if ((rc = end_node(im))) return rc;
    return set_out_act(im, 2, inv);
}

/* ---- the op table ------------------------------------------------------------- */

enum map_kind {
    MK_FOLD_ONLY = 1, /* Constant, Shape, ...: constants only */
    MK_ALIAS,         /* Identity, Dropout */
    MK_UNARY,         /* same-name graph op, one input, attributes copied */
    MK_BINARY, MK_BINARY_COMM,
    MK_SPECIAL,
};

struct op_rule {
    const char *onnx;
    const char *graph_op; /* needed graph op (NULL: none) */
    enum map_kind kind;
};

static const struct op_rule rules[] = {
    {"Constant", NULL, MK_FOLD_ONLY}, {"ConstantOfShape", NULL, MK_FOLD_ONLY}, {"Shape", NULL, MK_SPECIAL},
    {"Size", NULL, MK_SPECIAL}, {"Range", NULL, MK_FOLD_ONLY}, {"Trilu", NULL, MK_FOLD_ONLY},
    {"Identity", NULL, MK_ALIAS}, {"Dropout", NULL, MK_ALIAS},
    {"Relu", "Relu", MK_UNARY}, {"Sigmoid", "Sigmoid", MK_UNARY}, {"Tanh", "Tanh", MK_UNARY},
    {"Erf", "Erf", MK_UNARY}, {"Sqrt", "Sqrt", MK_UNARY}, {"Neg", "Neg", MK_UNARY}, {"Abs", "Abs", MK_UNARY},
    {"Exp", "Exp", MK_UNARY}, {"Log", "Log", MK_UNARY}, {"Reciprocal", "Reciprocal", MK_UNARY},
    {"HardSwish", "HardSwish", MK_UNARY}, {"Softplus", "Softplus", MK_UNARY},
    {"LeakyRelu", "LeakyRelu", MK_UNARY}, {"Elu", "Elu", MK_UNARY}, {"Selu", "Selu", MK_UNARY},
    {"HardSigmoid", "HardSigmoid", MK_UNARY}, {"GlobalAveragePool", "GlobalAveragePool", MK_UNARY},
    {"GlobalMaxPool", "GlobalMaxPool", MK_UNARY}, {"Gelu", "Gelu", MK_SPECIAL}, {"Floor", "Floor", MK_UNARY},
    {"Ceil", "Ceil", MK_UNARY}, {"Sign", "Sign", MK_UNARY}, {"Not", "Not", MK_UNARY},
    {"Add", "Add", MK_BINARY_COMM}, {"Mul", "Mul", MK_BINARY_COMM}, {"Sub", "Sub", MK_BINARY},
    {"Div", "Div", MK_BINARY}, {"Pow", "Pow", MK_BINARY}, {"Max", "Max", MK_BINARY_COMM},
    {"Min", "Min", MK_BINARY_COMM}, {"Sum", "Add", MK_BINARY_COMM}, {"Mean", "Add", MK_SPECIAL}, {"Equal", "Equal", MK_BINARY_COMM},
    {"Less", "Less", MK_BINARY}, {"Greater", "Greater", MK_BINARY}, {"And", "And", MK_BINARY_COMM},
    {"Or", "Or", MK_BINARY_COMM}, {"Mod", "Mod", MK_BINARY},
    {"PRelu", "PRelu", MK_SPECIAL}, {"Where", "Where", MK_SPECIAL},
    {"Conv", "Conv", MK_SPECIAL}, {"ConvTranspose", "ConvTranspose", MK_SPECIAL},
    {"MaxPool", "MaxPool", MK_SPECIAL}, {"AveragePool", "AveragePool", MK_SPECIAL},
    {"BatchNormalization", "BatchNormalization", MK_SPECIAL}, {"InstanceNormalization", "InstanceNormalization", MK_SPECIAL},
    {"LayerNormalization", "LayerNormalization", MK_SPECIAL},
    {"Gemm", "Gemm", MK_SPECIAL}, {"MatMul", "MatMul", MK_SPECIAL}, {"Flatten", "Flatten", MK_SPECIAL},
    {"Reshape", "Reshape", MK_SPECIAL}, {"Squeeze", "Reshape", MK_SPECIAL}, {"Unsqueeze", "Reshape", MK_SPECIAL},
    {"Transpose", "Transpose", MK_SPECIAL}, {"Concat", "Concat", MK_SPECIAL}, {"Gather", "Gather", MK_SPECIAL},
    {"Slice", "Slice", MK_SPECIAL}, {"Split", "Slice", MK_SPECIAL},
    {"Softmax", "Softmax", MK_SPECIAL}, {"LogSoftmax", "LogSoftmax", MK_SPECIAL},
    {"Clip", "Clip", MK_SPECIAL}, {"ReduceMean", "ReduceMean", MK_SPECIAL}, {"ReduceSum", "ReduceSum", MK_SPECIAL},
    {"ReduceMax", "ReduceMax", MK_SPECIAL}, {"ReduceMin", "ReduceMin", MK_SPECIAL},
    {"Pad", "Pad", MK_SPECIAL}, {"Resize", "Resize", MK_SPECIAL}, {"Upsample", "Resize", MK_SPECIAL},
    {"Expand", "Expand", MK_SPECIAL}, {"Tile", "Tile", MK_SPECIAL}, {"Cast", NULL, MK_SPECIAL},
};

static const struct op_rule *find_rule(const Onnx__NodeProto *n)
{
    if (n->domain && n->domain[0] && strcmp(n->domain, "ai.onnx") != 0) return NULL;
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        if (strcmp(rules[i].onnx, n->op_type) == 0) return &rules[i];
    return NULL;
}

/* Whether the node can be imported with this build's graph ops. Ops that
 * fold (Shape, Range, ...) are always supported; whether their operands
 * are constant shows only while mapping. */
static int rule_supported(const struct op_rule *r)
{
    return r && (!r->graph_op || graph_op_from_name(r->graph_op) != GRAPH_OP_INVALID);
}

/* Operands an op cannot do without (ONNX's required inputs; optional ones
 * the importer needs count too: Resize's scales or sizes). */
static size_t required_inputs(const char *op, int64_t opset)
{
    static const struct { const char *op; size_t n; } req[] = {
        {"Add", 2}, {"Sub", 2}, {"Mul", 2}, {"Div", 2}, {"Pow", 2}, {"Equal", 2}, {"Less", 2},
        {"Greater", 2}, {"And", 2}, {"Or", 2}, {"Mod", 2}, {"PRelu", 2}, {"Where", 3}, {"Conv", 2},
        {"ConvTranspose", 2}, {"Gemm", 2}, {"MatMul", 2}, {"Gather", 2}, {"BatchNormalization", 5},
        {"InstanceNormalization", 3}, {"LayerNormalization", 2}, {"Reshape", 2}, {"Expand", 2},
        {"Tile", 2}, {"Range", 3}, {"Upsample", 2},
    };
    if (strcmp(op, "Constant") == 0) return 0;
    if (strcmp(op, "Unsqueeze") == 0) return opset >= 13 ? 2 : 1;
    if (strcmp(op, "Slice") == 0) return opset >= 10 ? 3 : 1;
    if (strcmp(op, "Pad") == 0) return opset >= 11 ? 2 : 1;
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (strcmp(req[i].op, op) == 0) return req[i].n;
    return 1;
}

static int map_node(struct importer *im, const struct op_rule *rule)
{
    const Onnx__NodeProto *n = im->node;
    const char *op = n->op_type;
    int all_const = 1, rc = 0;
    size_t need = required_inputs(op, im->m->opset);
    for (size_t k = 0; k < need; k++)
        if (k >= n->n_input || !n->input[k][0])
            return nfail(im, PPS_EINVAL, "has %zu operand(s); %s needs at least %zu", n->n_input, op, need);
    if (n->n_output < 1 || !n->output[0][0]) return nfail(im, PPS_EINVAL, "has no output");
    for (size_t k = 0; k < n->n_input; k++) {
        if (!n->input[k][0]) continue;
        struct ival *v = find_val(im, n->input[k]);
        if (v->kind == IV_NONE)
            return nfail(im, PPS_EUNSUPPORTED, "reads '%s', an output this importer does not produce (e.g. a mask or indices output)",
                         v->name);
        if (v->kind != IV_CONST) all_const = 0;
    }
    if (n->n_input == 0 && rule->kind != MK_FOLD_ONLY) return nfail(im, PPS_EINVAL, "has no inputs");
    if (strcmp(op, "Constant") == 0) return map_constant(im);
    if (strcmp(op, "ConstantOfShape") == 0) return map_constant_of_shape(im);
    if (strcmp(op, "Shape") == 0) return map_shape(im, 0);
    if (strcmp(op, "Size") == 0) return map_shape(im, 1);
    if (strcmp(op, "Reshape") == 0 || strcmp(op, "Squeeze") == 0 || strcmp(op, "Unsqueeze") == 0 ||
        strcmp(op, "Flatten") == 0)
        return map_reshape_like(im, op);
    if (strcmp(op, "Slice") == 0) return map_slice(im);
    if (strcmp(op, "Split") == 0) return map_split(im);
    if (all_const) {
        if ((rc = try_fold(im, op)) != 0) return rc < 0 ? rc : 0;
        return nfail(im, PPS_EUNSUPPORTED, "all operands are constants and %s is not folded at import", op);
    }
    if (rule->kind == MK_FOLD_ONLY) return nfail(im, PPS_EUNSUPPORTED, "needs constant operands");
    struct ival *x = in(im, 0);
    if (rule->kind == MK_ALIAS) {
        only_first_output(im);
        return set_out_act(im, 0, x->gid);
    }
    enum graph_op gop = GRAPH_OP_INVALID;
    if (rule->graph_op && !(gop = need_op(im, rule->graph_op, &rc))) return rc;
    static const char *const unary_attrs[] = {"alpha", "beta", "gamma", NULL};
    static const char *const no_attrs[] = {NULL};
    switch (rule->kind) {
    case MK_UNARY: return map_generic(im, gop, unary_attrs, 1);
    case MK_BINARY: return map_binary(im, gop, 0);
    case MK_BINARY_COMM: return map_binary(im, gop, 1);
    default: break;
    }
    if (strcmp(op, "Gelu") == 0) {
        char s[16];
        attr_str(n, "approximate", s, sizeof s);
        int32_t gid = begin_node(im, gop, 1, &x->gid, 0, NULL);
        if (strcmp(s, "tanh") == 0 && (rc = set_int(im, "approximate", 1))) return rc;
        if ((rc = end_node(im))) return rc;
        return set_out_act(im, 0, gid);
    }
    if (strcmp(op, "Conv") == 0 || strcmp(op, "ConvTranspose") == 0 || strcmp(op, "MaxPool") == 0 ||
        strcmp(op, "AveragePool") == 0)
        return map_window(im, gop);
    if (strcmp(op, "BatchNormalization") == 0 || strcmp(op, "InstanceNormalization") == 0 ||
        strcmp(op, "LayerNormalization") == 0) {
        static const char *const names[] = {"epsilon", "axis", NULL};
        if (!is_act(x)) return nfail(im, PPS_EUNSUPPORTED, "the input must not be a constant");
        if (attr_int(n, "training_mode", 0))
            return nfail(im, PPS_EUNSUPPORTED, "training_mode=1 (batch statistics) is not served; export in eval mode");
        for (size_t k = 1; k < n->n_input; k++)
            if (in(im, (int)k) && !is_const(in(im, (int)k)))
                return nfail(im, PPS_EUNSUPPORTED, "scale/bias/mean/variance must be constants");
        if ((rc = map_generic(im, gop, names, strcmp(op, "BatchNormalization") == 0 ? 5 : 3))) return rc;
        if (strcmp(op, "LayerNormalization") == 0) return layernorm_stats(im, x);
        return 0;
    }
    if (strcmp(op, "PRelu") == 0 || strcmp(op, "Where") == 0 || strcmp(op, "MatMul") == 0 ||
        strcmp(op, "Transpose") == 0) {
        static const char *const names[] = {"axis", "perm", NULL};
        return map_generic(im, gop, names, 16);
    }
    if (strcmp(op, "Gemm") == 0) return map_gemm(im);
    if (strcmp(op, "Concat") == 0) return map_concat(im, gop);
    if (strcmp(op, "Mean") == 0) {
        /* a chain of Adds, then one Mul by 1/n */
        if ((rc = map_binary(im, GRAPH_OP_ADD, 1)) || n->n_input < 2) return rc;
        struct ival *sum = find_val(im, n->output[0]);
        struct onnx_const *k = onnx_const_new(&im->m->pool, ONNX_CONST_F32, 0, NULL, NULL, 0);
        onnx_const_set(k, 0, 1.0 / (double)n->n_input);
        char name[GRAPH_NAME_MAX + 1];
        snprintf(name, sizeof name, "%.80s.1/n", im->node_name);
        int32_t p = param_from(im, name, k, k, &rc);
        if (p < 0) return rc;
        int32_t gid = begin_node(im, GRAPH_OP_MUL, 1, &sum->gid, 1, &p);
        if ((rc = end_node(im))) return rc;
        return set_out_act(im, 0, gid);
    }
    if (strcmp(op, "Gather") == 0) return map_gather(im);
    if (strcmp(op, "Softmax") == 0 || strcmp(op, "LogSoftmax") == 0) return map_softmax(im, gop);
    if (strcmp(op, "Clip") == 0) return map_clip(im, gop);
    if (strncmp(op, "Reduce", 6) == 0) return map_reduce(im, gop);
    if (strcmp(op, "Pad") == 0) return map_pad(im, gop);
    if (strcmp(op, "Resize") == 0 || strcmp(op, "Upsample") == 0) return map_resize(im, gop);
    if (strcmp(op, "Expand") == 0) return map_expand_tile(im, gop, 0);
    if (strcmp(op, "Tile") == 0) return map_expand_tile(im, gop, 1);
    if (strcmp(op, "Cast") == 0) return map_cast(im);
    (void)no_attrs;
    return nfail(im, PPS_EUNSUPPORTED, "no mapping");
}

/* ---- the whole model ------------------------------------------------------------ */

void onnx_import_options_default(struct onnx_import_options *o)
{
    memset(o, 0, sizeof *o);
}

static int64_t default_opset(const Onnx__ModelProto *mp)
{
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (!o->domain || !o->domain[0] || strcmp(o->domain, "ai.onnx") == 0) return o->has_version ? o->version : 1;
    }
    return -1;
}

static void node_display_name(const Onnx__NodeProto *n, int index, char *out, size_t cap)
{
    if (n->name && n->name[0]) snprintf(out, cap, "%s", n->name);
    else snprintf(out, cap, "%s_%d", n->op_type ? n->op_type : "node", index);
}

static int rewrite_supported(enum onnx_rewrite_kind k)
{
    (void)k; /* Gelu, LayerNormalization, Gemm, MatMul and Add are in every build */
    return 1;
}

/* MatMul(x, W) + Add(b) as Gemm(x; W, b): A of rank >= 2, b with N
 * values; otherwise the two nodes as they were. */
static int map_linear(struct importer *im, struct ival *x, const struct onnx_rewrite *rw)
{
    struct ival *w = find_val(im, rw->gamma), *b = find_val(im, rw->beta);
    int rc = 0;
    if (!is_const(w) || !is_const(b)) return nfail(im, PPS_EINTERNAL, "Linear pattern without constants");
    int64_t d[GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d);
    int64_t nn = w->c[0]->dims[1];
    int32_t wp = param_of(im, w, &rc);
    if (wp < 0) return rc;
    if (r >= 2 && d[r - 1] == w->c[0]->dims[0] && b->c[0]->n == (uint64_t)nn && onnx_const_equal(b->c[0], b->c[1])) {
        struct onnx_const *bc = b->c[0];
        int32_t bp;
        if (bc->ndims == 1) {
            bp = param_of(im, b, &rc);
        } else {
            if (!(bc = onnx_const_reshape(&im->m->pool, bc, 1, &nn, im->err, im->errlen))) return PPS_EINVAL;
            bp = param_from(im, b->name, bc, bc, &rc);
        }
        if (bp < 0) return rc;
        int32_t pars[2] = {wp, bp};
        int32_t gid = begin_node(im, GRAPH_OP_GEMM, 1, &x->gid, 2, pars);
        if ((rc = end_node(im))) return rc;
        return set_out_act(im, 0, gid);
    }
    int32_t mm = begin_node(im, GRAPH_OP_MATMUL, 1, &x->gid, 1, &wp);
    if ((rc = end_node(im))) return rc;
    int32_t bp = param_of(im, b, &rc);
    if (bp < 0) return rc;
    int32_t gid = begin_node(im, GRAPH_OP_ADD, 1, &mm, 1, &bp);
    if ((rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

static int node_supported(struct importer *im, size_t i)
{
    if (im->absorbed[i]) return 1;
    if (im->rw[i].kind) return rewrite_supported(im->rw[i].kind);
    return rule_supported(find_rule(im->gp->node[i]));
}

/* A recognised pattern (onnx_patterns.h) as its one graph op. */
static int map_rewrite(struct importer *im, const struct onnx_rewrite *rw)
{
    struct ival *x = find_val(im, rw->x);
    int rc = 0;
    if (!is_act(x)) return nfail(im, PPS_EUNSUPPORTED, "the input of a %s pattern must not be a constant",
                                 rw->kind == ONNX_REWRITE_GELU ? "GELU" : rw->kind == ONNX_REWRITE_LINEAR ? "MatMul+Add" : "LayerNorm");
    if (rw->kind == ONNX_REWRITE_LINEAR) return map_linear(im, x, rw);
    if (rw->kind == ONNX_REWRITE_GELU) {
        int32_t gid = begin_node(im, GRAPH_OP_GELU, 1, &x->gid, 0, NULL);
        if (rw->approximate && (rc = set_int(im, "approximate", 1))) return rc;
        if ((rc = end_node(im))) return rc;
        return set_out_act(im, 0, gid);
    }
    int64_t d[2][GRAPH_MAX_DIMS];
    int r = vdims(im, x, 0, d[0]);
    vdims(im, x, 1, d[1]);
    if (r < 2 || d[0][r - 1] != d[1][r - 1]) return nfail(im, PPS_EUNSUPPORTED, "LayerNorm over the batch dimension");
    int64_t len = d[0][r - 1];
    const char *names[2] = {rw->gamma, rw->beta};
    int32_t pars[2];
    for (int k = 0; k < 2; k++) {
        struct ival *v = names[k] ? find_val(im, names[k]) : NULL;
        if (v && !is_const(v)) return nfail(im, PPS_EUNSUPPORTED, "LayerNorm %s must be a constant", k ? "bias" : "scale");
        if (v && v->c[0]->n == (uint64_t)len && onnx_const_equal(v->c[0], v->c[1])) {
            if ((pars[k] = param_of(im, v, &rc)) < 0) return rc;
            continue;
        }
        struct onnx_const *c;
        if (v) {
            if (v->c[0]->n != 1) return nfail(im, PPS_EUNSUPPORTED, "LayerNorm %s has %llu values for %lld", k ? "bias" : "scale",
                                              (unsigned long long)v->c[0]->n, (long long)len);
            c = onnx_fold_expand(&im->m->pool, v->c[0], 1, &len, im->err, im->errlen);
        } else {
            c = onnx_const_new(&im->m->pool, ONNX_CONST_F32, 1, &len, im->err, im->errlen);
            for (int64_t i = 0; c && k == 0 && i < len; i++) onnx_const_set(c, (uint64_t)i, 1.0);
        }
        if (!c) return PPS_ETOOBIG;
        char name[GRAPH_NAME_MAX + 1];
        snprintf(name, sizeof name, "%.80s.%s", im->node_name, k ? "bias" : "scale");
        if ((pars[k] = param_from(im, name, c, c, &rc)) < 0) return rc;
    }
    int32_t gid = begin_node(im, GRAPH_OP_LAYERNORM, 1, &x->gid, 2, pars);
    if ((rc = set_int(im, "axis", -1)) || (rc = set_float(im, "epsilon", rw->epsilon)) || (rc = end_node(im))) return rc;
    return set_out_act(im, 0, gid);
}

/* Op-type statistics and the unsupported list. */
static void count_ops(struct importer *im)
{
    struct onnx_model *m = im->m;
    Onnx__GraphProto *gp = im->gp;
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        const char *dom = n->domain ? n->domain : "";
        int sup = node_supported(im, i);
        int k;
        for (k = 0; k < m->nops; k++)
            if (strcmp(m->ops[k].op_type, n->op_type) == 0 && strcmp(m->ops[k].domain, dom) == 0) break;
        if (k == m->nops) {
            m->ops = pps_xrealloc(m->ops, (unsigned long)(m->nops + 1) * sizeof *m->ops);
            memset(&m->ops[k], 0, sizeof m->ops[k]);
            snprintf(m->ops[k].op_type, sizeof m->ops[k].op_type, "%s", n->op_type);
            snprintf(m->ops[k].domain, sizeof m->ops[k].domain, "%s", dom);
            m->ops[k].supported = 1;
            m->nops++;
        }
        m->ops[k].count++;
        m->ops[k].supported &= sup;
        if (!sup) {
            m->unsup = pps_xrealloc(m->unsup, (unsigned long)(m->nunsup + 1) * sizeof *m->unsup);
            struct onnx_unsupported_node *u = &m->unsup[m->nunsup++];
            memset(u, 0, sizeof *u);
            node_display_name(n, (int)i, u->name, sizeof u->name);
            snprintf(u->op_type, sizeof u->op_type, "%s", n->op_type);
            snprintf(u->domain, sizeof u->domain, "%s", dom);
            u->opset = m->opset;
            if (dom[0] && strcmp(dom, "ai.onnx") != 0) {
                u->opset = -1;
                for (size_t j = 0; j < im->m->proto->n_opset_import; j++) {
                    const Onnx__OperatorSetIdProto *o = im->m->proto->opset_import[j];
                    if (o->domain && strcmp(o->domain, dom) == 0) u->opset = o->version;
                }
            }
        }
    }
}

static int is_initializer(const Onnx__GraphProto *gp, const char *name)
{
    for (size_t i = 0; i < gp->n_initializer; i++)
        if (gp->initializer[i]->name && strcmp(gp->initializer[i]->name, name) == 0) return 1;
    return 0;
}

static int add_inputs(struct importer *im)
{
    Onnx__GraphProto *gp = im->gp;
    int nin = 0;
    im->batch[0] = 2;
    im->batch[1] = 3;
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (!vi->name || is_initializer(gp, vi->name)) continue;
        const char *nm = vi->name;
        if (nin >= 4) return nfail(im, PPS_EUNSUPPORTED, "the model has more than 4 inputs (PipePS serves at most 4)");
        const Onnx__TypeProto *tp = vi->type;
        if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
            return nfail(im, PPS_EUNSUPPORTED, "input '%s' is not a tensor", nm);
        int32_t et = tp->tensor_type->elem_type;
        enum graph_dtype dt;
        if (et == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) dt = GRAPH_F32;
        else if (et == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) dt = GRAPH_I64;
        else return nfail(im, PPS_EUNSUPPORTED, "input '%s' has element type %d (only float32 and int64 inputs are served)", nm, et);
        const Onnx__TensorShapeProto *sp = tp->tensor_type->shape;
        if (!sp) return nfail(im, PPS_EUNSUPPORTED, "input '%s' has no shape", nm);
        if (sp->n_dim == 0) return nfail(im, PPS_EUNSUPPORTED, "input '%s' is a scalar (rank 0); inputs need a batch dimension", nm);
        if (sp->n_dim > GRAPH_MAX_DIMS) return nfail(im, PPS_EUNSUPPORTED, "input '%s' has rank %zu (at most %d)", nm, sp->n_dim, GRAPH_MAX_DIMS);
        int64_t dims[GRAPH_MAX_DIMS];
        uint64_t elems = 1;
        for (size_t d = 0; d < sp->n_dim; d++) {
            const Onnx__TensorShapeProto__Dimension *dm = sp->dim[d];
            int fixed = dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            if (fixed && (dm->dim_value < 1 || dm->dim_value > (1ll << 31)))
                return nfail(im, PPS_EINVAL, "input '%s' dimension %zu is %lld", nm, d, (long long)dm->dim_value);
            if (d == 0) {
                if (nin == 0) {
                    if (fixed) im->batch[0] = im->batch[1] = dm->dim_value;
                } else if (fixed && dm->dim_value != im->batch[0]) {
                    return nfail(im, PPS_EUNSUPPORTED,
                                 "input '%s' has first dimension %lld, but every input's first dimension is the batch (%s)",
                                 nm, (long long)dm->dim_value, im->batch[0] == im->batch[1] ? "fixed by the first input" : "dynamic");
                }
                dims[0] = -1;
                continue;
            }
            if (fixed) {
                dims[d] = dm->dim_value;
            } else if (im->opt->seq_len > 0) {
                dims[d] = im->opt->seq_len;
            } else {
                return nfail(im, PPS_EUNSUPPORTED, "input '%s' dimension %zu is symbolic ('%s'); give a sequence length (seq=N)",
                             nm, d, dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM && dm->dim_param ? dm->dim_param : "?");
            }
            elems *= (uint64_t)dims[d];
            if (elems > (1ull << 32)) return nfail(im, PPS_ETOOBIG, "input '%s' is too large per batch element", nm);
        }
        struct ival *v = add_val(im, nm, -1);
        if (!v) return PPS_EINVAL;
        v->kind = IV_ACT;
        v->gid = graph_add_input(&im->m->g, nm, dt, (int)sp->n_dim, dims);
        grow_shapes(im, v->gid + 1);
        for (int w = 0; w < 2; w++) {
            struct exec_tensor *t = &im->shapes[w][v->gid];
            memset(t, 0, sizeof *t);
            t->dtype = dt;
            t->ndims = (int)sp->n_dim;
            for (size_t d = 0; d < sp->n_dim; d++) t->dims[d] = d == 0 ? im->batch[w] : dims[d];
            t->nbytes = elems * (uint64_t)im->batch[w] * shape_dtype_size(dt);
        }
        nin++;
    }
    if (nin == 0) return nfail(im, PPS_EUNSUPPORTED, "the model has no inputs (every graph input is an initializer)");
    /* a fixed first dimension: the executor runs the model at that batch only */
    if (im->batch[0] == im->batch[1]) {
        if (im->batch[0] > GRAPH_MAX_FIXED_BATCH)
            return nfail(im, PPS_EUNSUPPORTED, "fixed batch %lld is too large", (long long)im->batch[0]);
        graph_set_fixed_batch(&im->m->g, im->batch[0]);
    }
    return 0;
}

/* Kahn's algorithm: order[] gets the node indices in an executable order. */
static int topo_sort(struct importer *im, int *order)
{
    Onnx__GraphProto *gp = im->gp;
    int nn = (int)gp->n_node;
    int *indeg = pps_xcalloc((unsigned long)nn + 1, sizeof *indeg);
    int *head = pps_xmalloc(((unsigned long)nn + 1) * sizeof *head);
    for (int i = 0; i < nn; i++) head[i] = -1;
    /* edge list: consumer c of producer p, linked per producer */
    size_t nedges = 0;
    for (int i = 0; i < nn; i++) nedges += gp->node[i]->n_input;
    int *enext = pps_xmalloc((nedges + 1) * sizeof *enext), *eto = pps_xmalloc((nedges + 1) * sizeof *eto);
    size_t ne = 0;
    int rc = 0;
    for (int i = 0; i < nn && !rc; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_input; k++) {
            if (!n->input[k] || !n->input[k][0]) continue;
            struct ival *v = find_val(im, n->input[k]);
            if (!v) {
                char nm[GRAPH_NAME_MAX + 1];
                node_display_name(n, i, nm, sizeof nm);
                im->node = NULL;
                rc = pps_fail(im->err, im->errlen, PPS_EINVAL,
                              "node '%s' (%s) reads '%s', which no node, input or initializer produces", nm,
                              n->op_type, n->input[k]);
                break;
            }
            if (v->producer >= 0) {
                indeg[i]++;
                eto[ne] = i;
                enext[ne] = head[v->producer];
                head[v->producer] = (int)ne++;
            }
        }
    }
    int done = 0;
    if (!rc) {
        int *queue = order, qh = 0;
        for (int i = 0; i < nn; i++)
            if (indeg[i] == 0) queue[done++] = i;
        while (qh < done) {
            int p = queue[qh++];
            for (int e = head[p]; e >= 0; e = enext[e])
                if (--indeg[eto[e]] == 0) queue[done++] = eto[e];
        }
        if (done < nn) {
            char list[256] = "";
            size_t len = 0;
            int shown = 0;
            for (int i = 0; i < nn && shown < 4; i++)
                if (indeg[i] > 0) {
                    char nm[GRAPH_NAME_MAX + 1];
                    node_display_name(gp->node[i], i, nm, sizeof nm);
                    int k = snprintf(list + len, sizeof list - len, "%s'%s'", shown ? ", " : "", nm);
                    if (k > 0 && (size_t)k < sizeof list - len) len += (size_t)k;
                    shown++;
                }
            rc = pps_fail(im->err, im->errlen, PPS_EINVAL, "the graph has a cycle: %d node(s) wait on each other (%s)",
                          nn - done, list);
        }
    }
    free(indeg);
    free(head);
    free(enext);
    free(eto);
    return rc;
}

/* Nodes no graph output depends on are not imported (nor checked for
 * support): an exporter's leftover branch costs nothing and cannot make a
 * model unservable. */
static void skip_dead_nodes(struct importer *im)
{
    Onnx__GraphProto *gp = im->gp;
    size_t cap = gp->n_output + 1;
    for (size_t i = 0; i < gp->n_node; i++) cap += gp->node[i]->n_input;
    int *stack = pps_xmalloc(cap * sizeof *stack);
    uint8_t *live = pps_xcalloc((unsigned long)gp->n_node + 1, 1);
    size_t top = 0;
    for (size_t i = 0; i < gp->n_output; i++) {
        struct ival *v = find_val(im, gp->output[i]->name);
        if (v && v->producer >= 0) stack[top++] = v->producer;
    }
    while (top > 0) {
        int i = stack[--top];
        if (live[i]) continue;
        live[i] = 1;
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_input; k++) {
            struct ival *v = n->input[k][0] ? find_val(im, n->input[k]) : NULL;
            if (v && v->producer >= 0 && !live[v->producer]) stack[top++] = v->producer;
        }
    }
    for (size_t i = 0; i < gp->n_node; i++)
        if (!live[i]) im->absorbed[i] = 1;
    free(stack);
    free(live);
}

static int import_graph(struct importer *im)
{
    struct onnx_model *m = im->m;
    Onnx__ModelProto *mp = m->proto;
    if (!mp->graph) return pps_fail(im->err, im->errlen, PPS_EINVAL, "the model has no graph");
    im->gp = mp->graph;
    Onnx__GraphProto *gp = im->gp;
    m->opset = default_opset(mp);
    if (m->opset < 1) return pps_fail(im->err, im->errlen, PPS_EINVAL, "the model imports no default-domain opset");
    snprintf(m->producer, sizeof m->producer, "%s", mp->producer_name ? mp->producer_name : "");
    if (gp->n_node > MAX_NODES) return pps_fail(im->err, im->errlen, PPS_ETOOBIG, "%zu nodes (at most %d)", gp->n_node, MAX_NODES);
    m->onnx_nodes = (int)gp->n_node;
    for (size_t i = 0; i < gp->n_node; i++)
        if (!gp->node[i]->op_type || !gp->node[i]->op_type[0])
            return pps_fail(im->err, im->errlen, PPS_EINVAL, "node %zu has no op_type", i);
    /* value table */
    size_t nv = gp->n_input + gp->n_initializer;
    for (size_t i = 0; i < gp->n_node; i++) nv += gp->node[i]->n_output;
    if (nv > MAX_VALUES) return pps_fail(im->err, im->errlen, PPS_ETOOBIG, "%zu values", nv);
    im->vals = pps_xcalloc((unsigned long)nv + 1, sizeof *im->vals);
    im->hcap = 16;
    while (im->hcap < 2 * (nv + 1)) im->hcap *= 2;
    im->hash = pps_xmalloc((unsigned long)im->hcap * sizeof *im->hash);
    for (size_t i = 0; i < im->hcap; i++) im->hash[i] = -1;
    int rc;
    if ((rc = add_inputs(im))) return rc;
    for (size_t i = 0; i < gp->n_initializer; i++) {
        const Onnx__TensorProto *t = gp->initializer[i];
        if (!t->name || !t->name[0]) return pps_fail(im->err, im->errlen, PPS_EINVAL, "initializer %zu has no name", i);
        struct ival *v = add_val(im, t->name, -1);
        if (!v) return PPS_EINVAL;
        struct onnx_const *c;
        if ((rc = load_tensor(im, t, t->name, &c))) return rc;
        v->kind = IV_CONST;
        v->c[0] = v->c[1] = c;
    }
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_output; k++) {
            if (!n->output[k] || !n->output[k][0]) continue;
            if (!add_val(im, n->output[k], (int)i)) {
                char nm[GRAPH_NAME_MAX + 1];
                node_display_name(n, (int)i, nm, sizeof nm);
                return pps_fail(im->err, im->errlen, PPS_EINVAL, "node '%s' (%s) writes '%s', which is already defined", nm,
                                n->op_type, n->output[k]);
            }
        }
    }
    im->absorbed = pps_xcalloc((unsigned long)gp->n_node + 1, sizeof *im->absorbed);
    im->rw = pps_xcalloc((unsigned long)gp->n_node + 1, sizeof *im->rw);
    onnx_find_patterns(gp, im->absorbed, im->rw);
    skip_dead_nodes(im);
    count_ops(im);
    if (m->nunsup && !im->opt->allow_unsupported) {
        size_t len = 0;
        int k = snprintf(im->err, im->errlen, "%d node(s) cannot be served:", m->nunsup);
        if (k > 0) len = (size_t)k;
        for (int i = 0; i < m->nunsup && len < im->errlen; i++) {
            const struct onnx_unsupported_node *u = &m->unsup[i];
            k = snprintf(im->err + len, im->errlen - len, "%s '%s' (%s%s%s, opset %lld)", i ? "," : "", u->name,
                         u->domain[0] ? u->domain : "", u->domain[0] ? "." : "", u->op_type, (long long)u->opset);
            if (k < 0) break;
            len += (size_t)k;
        }
        return PPS_EUNSUPPORTED;
    }
    int *order = pps_xmalloc(((unsigned long)gp->n_node + 1) * sizeof *order);
    if ((rc = topo_sort(im, order))) {
        free(order);
        return rc;
    }
    for (size_t oi = 0; oi < gp->n_node && !rc; oi++) {
        int i = order[oi];
        const Onnx__NodeProto *n = gp->node[i];
        im->node = n;
        im->nsub = 0;
        node_display_name(n, i, im->node_name, sizeof im->node_name);
        if (im->absorbed[i]) continue;
        const struct op_rule *r = find_rule(n);
        int skip = !node_supported(im, (size_t)i);
        for (size_t k = 0; k < n->n_input && !skip; k++)
            if (n->input[k][0] && find_val(im, n->input[k])->kind == IV_SKIPPED) skip = 1;
        if (skip) {
            for (size_t k = 0; k < n->n_output; k++)
                if (n->output[k][0]) find_val(im, n->output[k])->kind = IV_SKIPPED;
            continue;
        }
        rc = im->rw[i].kind ? map_rewrite(im, &im->rw[i]) : map_node(im, r);
        if (!rc)
            for (size_t k = 0; k < n->n_output; k++) {
                struct ival *v = n->output[k][0] ? find_val(im, n->output[k]) : NULL;
                if (k == 0 && v && v->kind == IV_NONE)
                    rc = nfail(im, PPS_EINTERNAL, "produced no value for '%s'", v->name);
            }
    }
    free(order);
    im->node = NULL;
    if (rc) return rc;
    /* outputs */
    struct graph *g = &m->g;
    for (size_t i = 0; i < gp->n_output; i++) {
        const char *nm = gp->output[i]->name;
        struct ival *v = nm ? find_val(im, nm) : NULL;
        if (!v) return pps_fail(im->err, im->errlen, PPS_EINVAL, "graph output '%s' is produced by nothing", nm ? nm : "?");
        if (v->kind == IV_SKIPPED) continue;
        if (g->noutputs >= 4) return pps_fail(im->err, im->errlen, PPS_EUNSUPPORTED, "the model has more than 4 outputs (PipePS serves at most 4)");
        if (v->kind == IV_CONST) return pps_fail(im->err, im->errlen, PPS_EUNSUPPORTED, "graph output '%s' is a constant", nm);
        if (v->kind != IV_ACT) return pps_fail(im->err, im->errlen, PPS_EUNSUPPORTED, "graph output '%s' is not produced", nm);
        int32_t gid = v->gid;
        if (gid < g->ninputs || im->shapes[0][gid].dtype != GRAPH_F32) {
            /* an input passed through, or an int64 result: one more node */
            int crc = 0;
            im->nsub = 0;
            snprintf(im->node_name, sizeof im->node_name, "output:%.80s", nm);
            enum graph_op op = im->shapes[0][gid].dtype == GRAPH_F32 ? GRAPH_OP_IDENTITY : need_op(im, "Cast", &crc);
            if (!op) return crc;
            gid = begin_node(im, op, 1, &gid, 0, NULL);
            if (op != GRAPH_OP_IDENTITY && (crc = set_int(im, "to", 1))) return crc;
            if ((crc = end_node(im))) return crc;
        }
        graph_add_output(g, nm, gid);
        const struct exec_tensor *t0 = &im->shapes[0][gid], *t1 = &im->shapes[1][gid];
        int batched = t0->ndims >= 1 && t0->dims[0] == im->batch[0] && t1->dims[0] == im->batch[1];
        for (int d = 1; batched && d < t0->ndims; d++) batched = t0->dims[d] == t1->dims[d];
        if (batched) graph_set_output_dims(g, g->noutputs - 1, t0->ndims, t0->dims);
    }
    if (m->nunsup) return 0; /* a partial graph, for the report only */
    if (g->noutputs == 0) return pps_fail(im->err, im->errlen, PPS_EINVAL, "the model has no outputs");
    return graph_validate(g, im->err, im->errlen);
}

void onnx_model_free(struct onnx_model *m)
{
    if (!m) return;
    graph_free(&m->g);
    onnx_const_pool_free(&m->pool);
    onnx_mappings_free(&m->maps);
    free(m->param_data);
    free(m->ops);
    free(m->unsup);
    if (m->proto) onnx__model_proto__free_unpacked(m->proto, NULL);
    free(m);
}

int onnx_import_memory(const void *bytes, size_t len, const char *base_dir, const struct onnx_import_options *o,
                       struct onnx_model **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    struct onnx_import_options dflt;
    if (!o) {
        onnx_import_options_default(&dflt);
        o = &dflt;
    }
    if ((uint64_t)len > ONNX_MAX_PROTO_BYTES)
        return pps_fail(err, errlen, PPS_ETOOBIG, "the ONNX protobuf is %zu bytes; protobuf allows at most 2 GiB "
                        "(keep the weights as external data)", len);
    if (len == 0) return pps_fail(err, errlen, PPS_ETRUNCATED, "empty model file");
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, bytes);
    if (!mp) return pps_fail(err, errlen, PPS_ECORRUPT, "not a valid ONNX ModelProto (the protobuf does not parse: truncated or not ONNX)");
    struct onnx_model *m = pps_xcalloc(1, sizeof *m);
    m->proto = mp;
    graph_init(&m->g, mp->graph && mp->graph->name ? mp->graph->name : "onnx");
    struct importer im;
    memset(&im, 0, sizeof im);
    im.m = m;
    im.opt = o;
    im.base_dir = base_dir;
    im.err = err;
    im.errlen = errlen;
    int rc = import_graph(&im);
    free(im.vals);
    free(im.hash);
    free(im.absorbed);
    free(im.rw);
    free(im.shapes[0]);
    free(im.shapes[1]);
    if (rc) {
        onnx_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int onnx_import_file(const char *path, const struct onnx_import_options *o, struct onnx_model **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = pps_from_errno(errno);
        return pps_fail(err, errlen, rc, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pps_fail(err, errlen, PPS_EINVAL, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > ONNX_MAX_PROTO_BYTES) {
        close(fd);
        return pps_fail(err, errlen, PPS_ETOOBIG, "%s: %lld bytes; an ONNX protobuf is at most 2 GiB "
                        "(larger models keep their weights as external data)", path, (long long)st.st_size);
    }
    if (st.st_size == 0) {
        close(fd);
        return pps_fail(err, errlen, PPS_ETRUNCATED, "%s: empty file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return pps_fail(err, errlen, PPS_EIO, "%s: cannot map: %s", path, strerror(errno));
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    char msg[1024];
    int rc = onnx_import_memory(p, (size_t)st.st_size, dir, o, out, msg, sizeof msg);
    munmap(p, (size_t)st.st_size);
    if (rc) return pps_fail(err, errlen, rc, "%s: %s", path, msg);
    /* the graph's name: the file's base name without .onnx */
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char name[GRAPH_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", base);
    char *dot = strrchr(name, '.');
    if (dot && strcmp(dot, ".onnx") == 0) *dot = '\0';
    snprintf((*out)->g.name, sizeof (*out)->g.name, "%s", name);
    return 0;
}

const struct graph *onnx_model_graph(const struct onnx_model *m) { return &m->g; }

const void *onnx_model_param(const struct onnx_model *m, int32_t p)
{
    PPS_ASSERT(p >= 0 && p < m->g.nparams);
    return m->param_data[p];
}

int onnx_model_nop_types(const struct onnx_model *m) { return m->nops; }
const struct onnx_op_stat *onnx_model_op_type(const struct onnx_model *m, int i)
{
    PPS_ASSERT(i >= 0 && i < m->nops);
    return &m->ops[i];
}
int onnx_model_nunsupported(const struct onnx_model *m) { return m->nunsup; }
const struct onnx_unsupported_node *onnx_model_unsupported(const struct onnx_model *m, int i)
{
    PPS_ASSERT(i >= 0 && i < m->nunsup);
    return &m->unsup[i];
}
int64_t onnx_model_opset(const struct onnx_model *m) { return m->opset; }
int onnx_model_onnx_nodes(const struct onnx_model *m) { return m->onnx_nodes; }
const char *onnx_model_producer(const struct onnx_model *m) { return m->producer; }
