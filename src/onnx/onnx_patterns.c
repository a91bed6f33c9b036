/* onnx_patterns: see onnx_patterns.h.
 *
 * Works on names only: a small hash of value name -> (producing node,
 * number of readers), constants read from initializers and Constant nodes
 * holding one element. Matching walks forward from the Erf (GELU) or the
 * first ReduceMean (LayerNorm) and checks every inner value has exactly one
 * reader (two for LayerNorm's centred x), so a rewrite never drops a value
 * somebody needs. */
#include "onnx/onnx_patterns.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

struct pval {
    const char *name;
    int producer;       /* node index or -1 */
    int readers;        /* node inputs reading it plus graph outputs naming it */
    int first_reader;   /* node index of one reader (-1: none or a graph output) */
    const Onnx__TensorProto *tensor; /* initializer or Constant node value, else NULL */
    float scalar_f;     /* Constant value_float */
    int has_scalar_f;
};

struct ptab {
    struct pval *v;
    int n;
    int *hash;
    size_t cap;
};

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct pval *lookup(struct ptab *t, const char *name, int create)
{
    if (!name || !name[0]) return NULL;
    size_t i = hash_name(name) & (t->cap - 1);
    while (t->hash[i] >= 0) {
        if (strcmp(t->v[t->hash[i]].name, name) == 0) return &t->v[t->hash[i]];
        i = (i + 1) & (t->cap - 1);
    }
    if (!create) return NULL;
    struct pval *v = &t->v[t->n];
    memset(v, 0, sizeof *v);
    v->name = name;
    v->producer = -1;
    v->first_reader = -1;
    t->hash[i] = t->n++;
    return v;
}

static const Onnx__AttributeProto *find_attr(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0) return n->attribute[i];
    return NULL;
}

/* A one-element float/double constant's value. */
static int scalar(struct ptab *t, const char *name, double *out)
{
    struct pval *v = lookup(t, name, 0);
    if (!v) return 0;
    if (v->has_scalar_f) {
        *out = v->scalar_f;
        return 1;
    }
    const Onnx__TensorProto *tp = v->tensor;
    if (!tp || tp->has_data_location) return 0;
    for (size_t i = 0; i < tp->n_dims; i++)
        if (tp->dims[i] != 1) return 0;
    if (tp->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
        if (tp->n_float_data == 1) {
            *out = tp->float_data[0];
            return 1;
        }
        if (tp->has_raw_data && tp->raw_data.len == 4) {
            float f;
            memcpy(&f, tp->raw_data.data, 4);
            *out = f;
            return 1;
        }
    } else if (tp->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE) {
        if (tp->n_double_data == 1) {
            *out = tp->double_data[0];
            return 1;
        }
        if (tp->has_raw_data && tp->raw_data.len == 8) {
            memcpy(out, tp->raw_data.data, 8);
            return 1;
        }
    }
    return 0;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-4 * fabs(b); }

static const Onnx__NodeProto *node_of(const Onnx__GraphProto *gp, int i)
{
    return i >= 0 ? gp->node[i] : NULL;
}

static int is_op(const Onnx__NodeProto *n, const char *op, size_t nin)
{
    return n && strcmp(n->op_type, op) == 0 && n->n_input == nin && n->n_output >= 1 &&
           (!n->domain || !n->domain[0] || strcmp(n->domain, "ai.onnx") == 0);
}

/* The single node reading name, or -1. */
static int sole_reader(struct ptab *t, const char *name)
{
    struct pval *v = lookup(t, name, 0);
    return v && v->readers == 1 ? v->first_reader : -1;
}

/* For a binary node, the operand that is not `other` (NULL if neither is). */
static const char *other_operand(const Onnx__NodeProto *n, const char *other)
{
    if (strcmp(n->input[0], other) == 0) return n->input[1];
    if (strcmp(n->input[1], other) == 0) return n->input[0];
    return NULL;
}

/* The part after Erf/Tanh (index core): Add 1, then the products with x
 * and 0.5 in any of the three orders. head[] are the nodes from x to the
 * core's input. */
static int gelu_tail(const Onnx__GraphProto *gp, struct ptab *t, int core, const char *x, const int *head,
                     int nhead, int approximate, uint8_t *absorbed, struct onnx_rewrite *rw)
{
    const Onnx__NodeProto *e = gp->node[core];
    double c;
    int ai = sole_reader(t, e->output[0]);
    const Onnx__NodeProto *a = node_of(gp, ai);
    if (!is_op(a, "Add", 2)) return 0;
    const char *one = other_operand(a, e->output[0]);
    if (!one || !scalar(t, one, &c) || !near(c, 1.0)) return 0;
    int m1i = sole_reader(t, a->output[0]);
    const Onnx__NodeProto *m1 = node_of(gp, m1i);
    if (!is_op(m1, "Mul", 2)) return 0;
    const char *o1 = other_operand(m1, a->output[0]);
    if (!o1) return 0;
    int last = -1, extra = -1;
    if (strcmp(o1, x) == 0 || (scalar(t, o1, &c) && near(c, 0.5))) {
        /* (x * (1+erf)) * 0.5, or (0.5 * (1+erf)) * x */
        int want_half = strcmp(o1, x) == 0;
        int m2i = sole_reader(t, m1->output[0]);
        const Onnx__NodeProto *m2 = node_of(gp, m2i);
        if (!is_op(m2, "Mul", 2)) return 0;
        const char *o2 = other_operand(m2, m1->output[0]);
        if (!o2) return 0;
        if (want_half ? !(scalar(t, o2, &c) && near(c, 0.5)) : strcmp(o2, x) != 0) return 0;
        last = m2i;
        extra = m1i;
    } else {
        /* (x * 0.5) * (1+erf) */
        struct pval *hv = lookup(t, o1, 0);
        const Onnx__NodeProto *h = hv && hv->readers == 1 ? node_of(gp, hv->producer) : NULL;
        if (!is_op(h, "Mul", 2)) return 0;
        const char *hx = NULL;
        if (scalar(t, h->input[1], &c) && near(c, 0.5)) hx = h->input[0];
        else if (scalar(t, h->input[0], &c) && near(c, 0.5)) hx = h->input[1];
        if (!hx || strcmp(hx, x) != 0) return 0;
        last = m1i;
        extra = hv->producer;
    }
    for (int i = 0; i < nhead; i++) absorbed[head[i]] = 1;
    absorbed[core] = absorbed[ai] = absorbed[extra] = 1;
    rw[last].kind = ONNX_REWRITE_GELU;
    rw[last].x = x;
    rw[last].approximate = approximate;
    return 1;
}

/* The producer of a value only the pattern reads, or -1. */
static int sole_producer(struct ptab *t, const char *name)
{
    struct pval *v = lookup(t, name, 0);
    return v && v->readers == 1 ? v->producer : -1;
}

/* Binary node with a scalar operand near want: the other operand. */
static const char *with_scalar(struct ptab *t, const Onnx__NodeProto *n, const char *op, double want)
{
    double c;
    if (!is_op(n, op, 2)) return NULL;
    if (scalar(t, n->input[1], &c) && near(c, want)) return n->input[0];
    if (scalar(t, n->input[0], &c) && near(c, want)) return n->input[1];
    return NULL;
}

static int match_gelu(const Onnx__GraphProto *gp, struct ptab *t, int erf, uint8_t *absorbed,
                      struct onnx_rewrite *rw)
{
    int di = sole_producer(t, gp->node[erf]->input[0]);
    const Onnx__NodeProto *d = node_of(gp, di);
    double c;
    const char *x = NULL;
    if (is_op(d, "Div", 2) && scalar(t, d->input[1], &c) && near(c, sqrt(2.0))) x = d->input[0];
    else x = with_scalar(t, d, "Mul", sqrt(0.5));
    if (!x) return 0;
    return gelu_tail(gp, t, erf, x, &di, 1, 0, absorbed, rw);
}

/* tanh GELU: Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)), x^3 as Pow(x, 3) or
 * Mul(x, Mul(x, x)). */
static int match_gelu_tanh(const Onnx__GraphProto *gp, struct ptab *t, int th, uint8_t *absorbed,
                           struct onnx_rewrite *rw)
{
    int head[5], nh = 0;
    int vi = sole_producer(t, gp->node[th]->input[0]);
    const char *u = with_scalar(t, node_of(gp, vi), "Mul", sqrt(2.0 / M_PI));
    if (!u) return 0;
    head[nh++] = vi;
    int ui = sole_producer(t, u);
    const Onnx__NodeProto *un = node_of(gp, ui);
    if (!is_op(un, "Add", 2)) return 0;
    head[nh++] = ui;
    for (int side = 0; side < 2; side++) {
        const char *x = un->input[side], *tv = un->input[1 - side];
        int ti = sole_producer(t, tv);
        const char *x3 = with_scalar(t, node_of(gp, ti), "Mul", 0.044715);
        if (!x3) continue;
        int ci = sole_producer(t, x3);
        const Onnx__NodeProto *cn = node_of(gp, ci);
        double c;
        int n = nh;
        int h2[5];
        memcpy(h2, head, sizeof head);
        h2[n++] = ti;
        h2[n++] = ci;
        if (is_op(cn, "Pow", 2) && strcmp(cn->input[0], x) == 0 && scalar(t, cn->input[1], &c) && c == 3.0)
            return gelu_tail(gp, t, th, x, h2, n, 1, absorbed, rw);
        if (is_op(cn, "Mul", 2)) {
            const char *sq = other_operand(cn, x);
            int si = sq ? sole_producer(t, sq) : -1;
            const Onnx__NodeProto *sn = node_of(gp, si);
            if (is_op(sn, "Mul", 2) && strcmp(sn->input[0], x) == 0 && strcmp(sn->input[1], x) == 0) {
                h2[n++] = si;
                return gelu_tail(gp, t, th, x, h2, n, 1, absorbed, rw);
            }
        }
    }
    return 0;
}

/* ReduceMean over the last axis only, keepdims 1: its input, or NULL. */
static const char *mean_last(const Onnx__GraphProto *gp, struct ptab *t, int i)
{
    const Onnx__NodeProto *n = node_of(gp, i);
    if (!n || strcmp(n->op_type, "ReduceMean") != 0 || n->n_input < 1 || n->n_output != 1) return NULL;
    const Onnx__AttributeProto *kd = find_attr(n, "keepdims");
    if (kd && kd->i != 1) return NULL;
    const Onnx__AttributeProto *ax = find_attr(n, "axes");
    if (ax) return ax->n_ints == 1 && ax->ints[0] == -1 ? n->input[0] : NULL;
    if (n->n_input != 2) return NULL;
    struct pval *v = lookup(t, n->input[1], 0);
    const Onnx__TensorProto *tp = v ? v->tensor : NULL;
    if (!tp || tp->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || tp->has_data_location) return NULL;
    int64_t a;
    if (tp->n_int64_data == 1) a = tp->int64_data[0];
    else if (tp->has_raw_data && tp->raw_data.len == 8) memcpy(&a, tp->raw_data.data, 8);
    else return NULL;
    return a == -1 ? n->input[0] : NULL;
}

static int match_layernorm(const Onnx__GraphProto *gp, struct ptab *t, int mi, uint8_t *absorbed,
                           struct onnx_rewrite *rw)
{
    const char *x = mean_last(gp, t, mi);
    if (!x) return 0;
    const Onnx__NodeProto *mean = gp->node[mi];
    int si = sole_reader(t, mean->output[0]);
    const Onnx__NodeProto *sub = node_of(gp, si);
    if (!is_op(sub, "Sub", 2) || strcmp(sub->input[0], x) != 0 || strcmp(sub->input[1], mean->output[0]) != 0)
        return 0;
    /* the centred x has two readers: Pow and Div */
    struct pval *dv = lookup(t, sub->output[0], 0);
    if (!dv || dv->readers != 2) return 0;
    int pi = -1, qi = -1;
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_input; k++)
            if (strcmp(n->input[k], sub->output[0]) == 0) {
                if (strcmp(n->op_type, "Pow") == 0) pi = (int)i;
                else if (strcmp(n->op_type, "Div") == 0) qi = (int)i;
            }
    }
    const Onnx__NodeProto *pw = node_of(gp, pi), *dv2 = node_of(gp, qi);
    double c;
    if (!is_op(pw, "Pow", 2) || strcmp(pw->input[0], sub->output[0]) != 0 || !scalar(t, pw->input[1], &c) ||
        c != 2.0)
        return 0;
    int vi = sole_reader(t, pw->output[0]);
    if (mean_last(gp, t, vi) == NULL) return 0;
    const Onnx__NodeProto *var = gp->node[vi];
    int ei = sole_reader(t, var->output[0]);
    const Onnx__NodeProto *ae = node_of(gp, ei);
    if (!is_op(ae, "Add", 2)) return 0;
    const char *eps_name = other_operand(ae, var->output[0]);
    double eps;
    if (!eps_name || !scalar(t, eps_name, &eps)) return 0;
    int ri = sole_reader(t, ae->output[0]);
    const Onnx__NodeProto *sq = node_of(gp, ri);
    if (!is_op(sq, "Sqrt", 1)) return 0;
    if (!is_op(dv2, "Div", 2) || strcmp(dv2->input[0], sub->output[0]) != 0 || strcmp(dv2->input[1], sq->output[0]) != 0 ||
        sole_reader(t, sq->output[0]) != qi)
        return 0;
    int last = qi;
    const char *gamma = NULL, *beta = NULL;
    int gi = sole_reader(t, dv2->output[0]);
    const Onnx__NodeProto *g = node_of(gp, gi);
    struct pval *gv;
    if (is_op(g, "Mul", 2) && (gamma = other_operand(g, dv2->output[0])) && (gv = lookup(t, gamma, 0)) && gv->tensor) {
        absorbed[last] = 1;
        last = gi;
        int bi = sole_reader(t, g->output[0]);
        const Onnx__NodeProto *b = node_of(gp, bi);
        struct pval *bv;
        if (is_op(b, "Add", 2) && (beta = other_operand(b, g->output[0])) && (bv = lookup(t, beta, 0)) && bv->tensor) {
            absorbed[last] = 1;
            last = bi;
        } else {
            beta = NULL;
        }
    } else {
        gamma = NULL;
    }
    absorbed[mi] = absorbed[si] = absorbed[pi] = absorbed[vi] = absorbed[ei] = absorbed[ri] = 1;
    absorbed[last] = 0;
    rw[last].kind = ONNX_REWRITE_LAYERNORM;
    rw[last].x = x;
    rw[last].gamma = gamma;
    rw[last].beta = beta;
    rw[last].epsilon = (float)eps;
    return 1;
}

/* MatMul(x, W) read only by Add(., b), W and b constants. */
static int match_linear(const Onnx__GraphProto *gp, struct ptab *t, int mi, uint8_t *absorbed,
                        struct onnx_rewrite *rw)
{
    const Onnx__NodeProto *mm = gp->node[mi];
    struct pval *w = lookup(t, mm->input[1], 0);
    if (!w || !w->tensor || w->tensor->n_dims != 2) return 0;
    int ai = sole_reader(t, mm->output[0]);
    const Onnx__NodeProto *add = node_of(gp, ai);
    if (!is_op(add, "Add", 2) || absorbed[ai] || rw[ai].kind) return 0;
    const char *b = other_operand(add, mm->output[0]);
    struct pval *bv = b ? lookup(t, b, 0) : NULL;
    if (!bv || !bv->tensor || bv->tensor->n_dims < 1 || bv->tensor->n_dims > 2 ||
        bv->tensor->dims[bv->tensor->n_dims - 1] != w->tensor->dims[1])
        return 0;
    if (bv->tensor->n_dims == 2 && bv->tensor->dims[0] != 1) return 0;
    absorbed[mi] = 1;
    rw[ai].kind = ONNX_REWRITE_LINEAR;
    rw[ai].x = mm->input[0];
    rw[ai].gamma = mm->input[1];
    rw[ai].beta = b;
    return 1;
}

int onnx_find_patterns(const Onnx__GraphProto *gp, uint8_t *absorbed, struct onnx_rewrite *rw)
{
    size_t nv = gp->n_initializer + gp->n_input;
    for (size_t i = 0; i < gp->n_node; i++) nv += gp->node[i]->n_output + gp->node[i]->n_input;
    struct ptab t;
    t.n = 0;
    t.cap = 16;
    while (t.cap < 2 * (nv + 1)) t.cap *= 2;
    t.v = pps_xcalloc((unsigned long)nv + 1, sizeof *t.v);
    t.hash = pps_xmalloc((unsigned long)t.cap * sizeof *t.hash);
    for (size_t i = 0; i < t.cap; i++) t.hash[i] = -1;
    for (size_t i = 0; i < gp->n_initializer; i++) {
        struct pval *v = lookup(&t, gp->initializer[i]->name, 1);
        if (v) v->tensor = gp->initializer[i];
    }
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_output; k++) {
            struct pval *v = lookup(&t, n->output[k], 1);
            if (!v) continue;
            v->producer = (int)i;
            if (strcmp(n->op_type, "Constant") == 0) {
                const Onnx__AttributeProto *a = find_attr(n, "value");
                if (a && a->t) v->tensor = a->t;
                a = find_attr(n, "value_float");
                if (a && a->has_f) {
                    v->scalar_f = a->f;
                    v->has_scalar_f = 1;
                }
            }
        }
    }
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        for (size_t k = 0; k < n->n_input; k++) {
            struct pval *v = lookup(&t, n->input[k], 1);
            if (!v) continue;
            /* a node reading the same value twice counts twice */
            if (v->readers++ == 0) v->first_reader = (int)i;
        }
    }
    for (size_t i = 0; i < gp->n_output; i++) {
        struct pval *v = lookup(&t, gp->output[i]->name, 1);
        if (v) {
            v->readers++;
            v->first_reader = -1;
        }
    }
    int found = 0;
    for (size_t i = 0; i < gp->n_node; i++) {
        if (absorbed[i] || rw[i].kind) continue;
        const Onnx__NodeProto *n = gp->node[i];
        if (is_op(n, "Erf", 1)) found += match_gelu(gp, &t, (int)i, absorbed, rw);
        else if (is_op(n, "Tanh", 1)) found += match_gelu_tanh(gp, &t, (int)i, absorbed, rw);
        else if (strcmp(n->op_type, "ReduceMean") == 0) found += match_layernorm(gp, &t, (int)i, absorbed, rw);
    }
    for (size_t i = 0; i < gp->n_node; i++)
        if (!absorbed[i] && !rw[i].kind && is_op(gp->node[i], "MatMul", 2))
            found += match_linear(gp, &t, (int)i, absorbed, rw);
    free(t.v);
    free(t.hash);
    return found;
}
