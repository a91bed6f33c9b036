/* shape: ONNX shape inference and operand checks (see shape.h).
 *
 * The easy thing to get wrong: dims are products of attacker-chosen numbers,
 * so every product is checked against overflow (SHAPE_MAX_ELEMS) before it
 * becomes a buffer size. */
#include "exec/shape.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

/* No tensor may hold more than 2^40 elements (4 TiB of float32). */
#define SHAPE_MAX_ELEMS (1ull << 40)

static int fail(char *err, size_t errlen, const struct graph_node *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, const struct graph_node *n, const char *fmt, ...)
{
    if (err && errlen) {
        int k = snprintf(err, errlen, "node '%s' (%s): ", n ? n->name : "?",
                         n ? graph_op_name(n->op) : "?");
        if (k < 0) k = 0;
        if ((size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return PPS_ESHAPE;
}

size_t shape_dtype_size(enum graph_dtype t) { return t == GRAPH_I64 ? 8 : 4; }

uint64_t shape_elems(const struct exec_tensor *t)
{
    uint64_t e = 1;
    for (int i = 0; i < t->ndims; i++) e *= (uint64_t)t->dims[i];
    return e;
}

/* Sets nbytes; PPS_ESHAPE if a dim is not positive or the size overflows. */
static int finish(struct exec_tensor *t, const struct graph_node *n, char *err, size_t errlen)
{
    if (t->ndims < 0 || t->ndims > GRAPH_MAX_DIMS)
        return fail(err, errlen, n, "rank %d out of range", t->ndims);
    uint64_t e = 1;
    for (int i = 0; i < t->ndims; i++) {
        if (t->dims[i] <= 0) return fail(err, errlen, n, "dimension %d is %lld", i, (long long)t->dims[i]);
        if ((uint64_t)t->dims[i] > SHAPE_MAX_ELEMS / e)
            return fail(err, errlen, n, "tensor too large");
        e *= (uint64_t)t->dims[i];
    }
    t->layout = NULL;
    t->nbytes = e * shape_dtype_size(t->dtype);
    return 0;
}

int shape_axis(int64_t axis, int rank)
{
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) return -1;
    return (int)axis;
}

void shape_operand(const struct graph *g, const struct graph_node *n, int k,
                   const struct exec_tensor *vals, struct exec_tensor *out)
{
    if (k < n->ninputs) {
        *out = vals[n->inputs[k]];
        out->layout = NULL;
        out->nbytes = shape_elems(out) * shape_dtype_size(out->dtype);
        return;
    }
    const struct graph_param *p = &g->params[n->params[k - n->ninputs]];
    memset(out, 0, sizeof *out);
    out->dtype = GRAPH_F32;
    out->ndims = p->ndims;
    for (int i = 0; i < p->ndims; i++) out->dims[i] = p->dims[i];
    out->nbytes = p->nbytes;
}

int shape_broadcast(const struct exec_tensor *a, const struct exec_tensor *b,
                    struct exec_tensor *out)
{
    int r = a->ndims > b->ndims ? a->ndims : b->ndims;
    struct exec_tensor o;
    memset(&o, 0, sizeof o);
    o.dtype = a->dtype;
    o.ndims = r;
    for (int i = 0; i < r; i++) {
        int ia = i - (r - a->ndims), ib = i - (r - b->ndims);
        int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        if (da != db && da != 1 && db != 1) return PPS_ESHAPE;
        o.dims[i] = da == 1 ? db : da;
    }
    *out = o;
    return 0;
}

int64_t shape_window_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe,
                         int ceil_mode)
{
    int64_t ext = (k - 1) * d + 1;
    int64_t span = in + pb + pe - ext;
    if (span < 0) return 0;
    int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    /* PyTorch's (and ONNX's) rule: the last window must start inside the
     * input or its left padding, not only in the right padding. */
    if (ceil_mode && (out - 1) * s >= in + pb) out--;
    return out;
}

/* An ints attribute with one value per spatial dim (sp of them). */
static int get_spatial(const struct graph_node *n, const char *name, int sp, int64_t dflt,
                       int64_t *v, char *err, size_t errlen)
{
    int64_t tmp[GRAPH_MAX_ATTR_INTS];
    int c = graph_attr_ints(n, name, tmp, GRAPH_MAX_ATTR_INTS);
    if (c != 0 && c != sp) return fail(err, errlen, n, "attribute %s needs %d values, has %d", name, sp, c);
    for (int i = 0; i < sp; i++) v[i] = c ? tmp[i] : dflt;
    return 0;
}

int shape_window(const struct graph_node *n, const struct exec_tensor *x,
                 const struct exec_tensor *w, struct shape_window *win, char *err, size_t errlen)
{
    memset(win, 0, sizeof *win);
    if (w && x->ndims != 4)
        return fail(err, errlen, n, "only 2-D (rank 4) convolutions are supported, rank is %d", x->ndims);
    if (x->ndims < 3 || x->ndims > 5)
        return fail(err, errlen, n, "only 1-D to 3-D (rank 3 to 5) inputs are supported, rank is %d", x->ndims);
    int sp = win->sp = x->ndims - 2;
    const struct graph_attr *ap = graph_attr_find(n, "auto_pad");
    if (ap && ap->kind == GRAPH_ATTR_INT && ap->i != 0)
        return fail(err, errlen, n, "auto_pad is not supported (use explicit pads)");
    int64_t ks[GRAPH_MAX_ATTR_INTS];
    int nk = graph_attr_ints(n, "kernel_shape", ks, GRAPH_MAX_ATTR_INTS);
    if (w) {
        if (w->ndims != 4) return fail(err, errlen, n, "weight rank %d, expected 4", w->ndims);
        win->kernel[0] = w->dims[2];
        win->kernel[1] = w->dims[3];
        if (nk && (nk != 2 || ks[0] != w->dims[2] || ks[1] != w->dims[3]))
            return fail(err, errlen, n, "kernel_shape disagrees with the weight");
    } else {
        if (nk != sp) return fail(err, errlen, n, "kernel_shape needs %d values", sp);
        for (int i = 0; i < sp; i++) win->kernel[i] = ks[i];
    }
    int rc;
    if ((rc = get_spatial(n, "strides", sp, 1, win->stride, err, errlen))) return rc;
    if ((rc = get_spatial(n, "dilations", sp, 1, win->dilation, err, errlen))) return rc;
    int64_t pads[GRAPH_MAX_ATTR_INTS];
    int np = graph_attr_ints(n, "pads", pads, GRAPH_MAX_ATTR_INTS);
    if (np == 0) {
        for (int i = 0; i < 2 * sp; i++) pads[i] = 0;
    } else if (np != 2 * sp) {
        return fail(err, errlen, n, "pads needs %d values, has %d", 2 * sp, np);
    }
    for (int i = 0; i < sp; i++) {
        win->pad_begin[i] = pads[i];
        win->pad_end[i] = pads[sp + i];
    }
    win->ceil_mode = (int)graph_attr_int(n, "ceil_mode", 0);
    win->group = graph_attr_int(n, "group", 1);
    for (int i = 0; i < sp; i++) {
        if (win->kernel[i] < 1 || win->kernel[i] > 4096 || win->stride[i] < 1 ||
            win->stride[i] > 4096 || win->dilation[i] < 1 || win->dilation[i] > 4096 ||
            win->pad_begin[i] < 0 || win->pad_end[i] < 0 || win->pad_begin[i] > 4096 ||
            win->pad_end[i] > 4096)
            return fail(err, errlen, n, "kernel/stride/dilation/pads out of range");
        /* A window lying entirely in padding has no input to look at. */
        if (win->pad_begin[i] >= (win->kernel[i] - 1) * win->dilation[i] + 1 ||
            win->pad_end[i] >= (win->kernel[i] - 1) * win->dilation[i] + 1)
            if (!w) return fail(err, errlen, n, "padding not smaller than the window");
    }
    if (win->ceil_mode != 0 && win->ceil_mode != 1)
        return fail(err, errlen, n, "ceil_mode must be 0 or 1");
    if (w && win->ceil_mode) return fail(err, errlen, n, "ceil_mode is a pooling attribute");
    return 0;
}

int shape_slice(const struct graph_node *n, const struct exec_tensor *x, struct shape_slice *sl,
                char *err, size_t errlen)
{
    int64_t starts[GRAPH_MAX_ATTR_INTS], ends[GRAPH_MAX_ATTR_INTS], axes[GRAPH_MAX_ATTR_INTS],
        steps[GRAPH_MAX_ATTR_INTS];
    int ns = graph_attr_ints(n, "starts", starts, GRAPH_MAX_ATTR_INTS);
    int ne = graph_attr_ints(n, "ends", ends, GRAPH_MAX_ATTR_INTS);
    int na = graph_attr_ints(n, "axes", axes, GRAPH_MAX_ATTR_INTS);
    int nt = graph_attr_ints(n, "steps", steps, GRAPH_MAX_ATTR_INTS);
    if (ns < 1 || ns != ne || (na && na != ns) || (nt && nt != ns) || ns > x->ndims)
        return fail(err, errlen, n, "starts/ends/axes/steps must have the same length (1..rank)");
    for (int d = 0; d < x->ndims; d++) {
        sl->start[d] = 0;
        sl->step[d] = 1;
        sl->count[d] = x->dims[d];
    }
    unsigned seen = 0;
    for (int i = 0; i < ns; i++) {
        int a = shape_axis(na ? axes[i] : i, x->ndims);
        if (a < 0) return fail(err, errlen, n, "slice axis out of range");
        if (seen & (1u << a)) return fail(err, errlen, n, "slice axis repeated");
        seen |= 1u << a;
        int64_t dim = x->dims[a], step = nt ? steps[i] : 1;
        if (step == 0) return fail(err, errlen, n, "slice step 0");
        int64_t s = starts[i], e = ends[i];
        if (s < 0) s += dim;
        if (e < 0) e += dim;
        int64_t cnt;
        if (step > 0) {
            s = s < 0 ? 0 : (s > dim ? dim : s);
            e = e < 0 ? 0 : (e > dim ? dim : e);
            cnt = e > s ? (e - s + step - 1) / step : 0;
        } else {
            s = s < 0 ? -1 : (s > dim - 1 ? dim - 1 : s);
            e = e < -1 ? -1 : (e > dim - 1 ? dim - 1 : e);
            cnt = s > e ? (s - e + (-step) - 1) / (-step) : 0;
        }
        if (cnt <= 0) return fail(err, errlen, n, "slice is empty along axis %d", a);
        sl->start[a] = s;
        sl->step[a] = step;
        sl->count[a] = cnt;
    }
    return 0;
}

int shape_reduce_axes(const struct graph_node *n, int rank, unsigned *mask, char *err, size_t errlen)
{
    int64_t axes[GRAPH_MAX_ATTR_INTS];
    int na = graph_attr_ints(n, "axes", axes, GRAPH_MAX_ATTR_INTS);
    int64_t keep = graph_attr_int(n, "keepdims", 1);
    if (keep != 0 && keep != 1) return fail(err, errlen, n, "keepdims must be 0 or 1");
    if (na > rank) return fail(err, errlen, n, "more axes than the rank");
    *mask = 0;
    if (na == 0) {
        for (int i = 0; i < rank; i++) *mask |= 1u << i;
        return 0;
    }
    for (int i = 0; i < na; i++) {
        int a = shape_axis(axes[i], rank);
        if (a < 0) return fail(err, errlen, n, "axis %lld out of range", (long long)axes[i]);
        if (*mask & (1u << a)) return fail(err, errlen, n, "axis %d repeated", a);
        *mask |= 1u << a;
    }
    return 0;
}

int shape_resize_scales(const struct graph_node *n, float *scales)
{
    int64_t bits[GRAPH_MAX_ATTR_INTS];
    int c = graph_attr_ints(n, "scales_bits", bits, GRAPH_MAX_ATTR_INTS);
    if (c > GRAPH_MAX_DIMS) return -1;
    for (int i = 0; i < c; i++) {
        if (bits[i] < 0 || bits[i] > 0xffffffffll) return -1;
        uint32_t b = (uint32_t)bits[i];
        float f;
        memcpy(&f, &b, sizeof f);
        if (!(f > 0.0f) || f > 1e9f) return -1;
        scales[i] = f;
    }
    return c;
}

int shape_deconv(const struct graph_node *n, const struct exec_tensor *x,
                 const struct exec_tensor *w, struct shape_deconv *dc, char *err, size_t errlen)
{
    memset(dc, 0, sizeof *dc);
    int sp = x->ndims - 2;
    if (sp < 1 || sp > 3) return fail(err, errlen, n, "input rank %d (1 to 3 spatial dims supported)", x->ndims);
    if (w->ndims != x->ndims) return fail(err, errlen, n, "weight rank %d, expected %d", w->ndims, x->ndims);
    dc->sp = sp;
    dc->group = graph_attr_int(n, "group", 1);
    if (dc->group < 1 || x->dims[1] % dc->group || w->dims[0] != x->dims[1])
        return fail(err, errlen, n, "channels %lld, weight [%lld, ...], group %lld do not agree",
                    (long long)x->dims[1], (long long)w->dims[0], (long long)dc->group);
    const struct graph_attr *ap = graph_attr_find(n, "auto_pad");
    if (ap && ap->kind == GRAPH_ATTR_INT && ap->i != 0)
        return fail(err, errlen, n, "auto_pad is not supported (use explicit pads)");
    int64_t v[GRAPH_MAX_ATTR_INTS];
    const char *names[4] = {"strides", "dilations", "output_padding", "kernel_shape"};
    int64_t *dst[4] = {dc->stride, dc->dilation, dc->out_pad, NULL};
    for (int k = 0; k < 4; k++) {
        int c = graph_attr_ints(n, names[k], v, GRAPH_MAX_ATTR_INTS);
        if (c && c != sp) return fail(err, errlen, n, "%s needs %d values, has %d", names[k], sp, c);
        for (int i = 0; i < sp; i++) {
            if (k == 3) {
                if (c && v[i] != w->dims[2 + i]) return fail(err, errlen, n, "kernel_shape disagrees with the weight");
                continue;
            }
            dst[k][i] = c ? v[i] : (k == 2 ? 0 : 1);
        }
    }
    int np = graph_attr_ints(n, "pads", v, GRAPH_MAX_ATTR_INTS);
    if (np && np != 2 * sp) return fail(err, errlen, n, "pads needs %d values, has %d", 2 * sp, np);
    for (int i = 0; i < sp; i++) {
        dc->pad_begin[i] = np ? v[i] : 0;
        dc->pad_end[i] = np ? v[sp + i] : 0;
        int64_t k = w->dims[2 + i];
        if (dc->stride[i] < 1 || dc->stride[i] > 4096 || dc->dilation[i] < 1 ||
            dc->dilation[i] > 4096 || dc->pad_begin[i] < 0 || dc->pad_end[i] < 0 ||
            dc->pad_begin[i] > 4096 || dc->pad_end[i] > 4096 || dc->out_pad[i] < 0 ||
            dc->out_pad[i] >= (dc->stride[i] > dc->dilation[i] ? dc->stride[i] : dc->dilation[i]) ||
            k < 1 || k > 4096)
            return fail(err, errlen, n, "kernel/stride/dilation/pads/output_padding out of range");
        dc->out[i] = dc->stride[i] * (x->dims[2 + i] - 1) + dc->out_pad[i] +
                     (k - 1) * dc->dilation[i] + 1 - dc->pad_begin[i] - dc->pad_end[i];
    }
    return 0;
}

static int check_operands(const struct graph_node *n, int min, int max, char *err, size_t errlen)
{
    int k = shape_noperands(n);
    if (k < min || k > max)
        return fail(err, errlen, n, "has %d operands, expected %d..%d", k, min, max);
    return 0;
}

static int need_f32(const struct graph_node *n, const struct exec_tensor *t, char *err, size_t errlen)
{
    if (t->dtype != GRAPH_F32) return fail(err, errlen, n, "operand must be float32");
    return 0;
}

int shape_node(const struct graph *g, const struct graph_node *n, const struct exec_tensor *vals,
               struct exec_tensor *out, char *err, size_t errlen)
{
    struct exec_tensor op[GRAPH_MAX_INPUTS + GRAPH_MAX_PARAMS];
    int nop = shape_noperands(n);
    if (nop > GRAPH_MAX_INPUTS + GRAPH_MAX_PARAMS) return fail(err, errlen, n, "too many operands");
    for (int k = 0; k < nop; k++) shape_operand(g, n, k, vals, &op[k]);
    memset(out, 0, sizeof *out);
    out->dtype = GRAPH_F32;
    int rc;
    switch (n->op) {
    case GRAPH_OP_CONV: {
        if ((rc = check_operands(n, 2, 3, err, errlen))) return rc;
        if (n->ninputs != 1) return fail(err, errlen, n, "needs exactly one activation input");
        const struct exec_tensor *x = &op[0], *w = &op[1];
        if ((rc = need_f32(n, x, err, errlen))) return rc;
        struct shape_window win;
        if ((rc = shape_window(n, x, w, &win, err, errlen))) return rc;
        if (win.group < 1 || x->dims[1] % win.group || w->dims[0] % win.group ||
            w->dims[1] * win.group != x->dims[1])
            return fail(err, errlen, n, "channels %lld, weight [%lld,%lld], group %lld do not agree",
                        (long long)x->dims[1], (long long)w->dims[0], (long long)w->dims[1],
                        (long long)win.group);
        if (nop == 3 && (op[2].ndims != 1 || op[2].dims[0] != w->dims[0]))
            return fail(err, errlen, n, "bias must be [%lld]", (long long)w->dims[0]);
        out->ndims = 4;
        out->dims[0] = x->dims[0];
        out->dims[1] = w->dims[0];
        for (int i = 0; i < 2; i++)
            out->dims[2 + i] = shape_window_out(x->dims[2 + i], win.kernel[i], win.stride[i],
                                                win.dilation[i], win.pad_begin[i], win.pad_end[i], 0);
        break;
    }
    case GRAPH_OP_BATCHNORM: {
        if ((rc = check_operands(n, 5, 5, err, errlen))) return rc;
        if (n->ninputs != 1) return fail(err, errlen, n, "needs exactly one activation input");
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (op[0].ndims < 2) return fail(err, errlen, n, "input rank < 2");
        for (int k = 1; k < 5; k++)
            if (op[k].ndims != 1 || op[k].dims[0] != op[0].dims[1])
                return fail(err, errlen, n, "scale/bias/mean/var must be [C]");
        *out = op[0];
        break;
    }
    case GRAPH_OP_RELU: case GRAPH_OP_GELU: case GRAPH_OP_ERF: case GRAPH_OP_TANH:
    case GRAPH_OP_SIGMOID: case GRAPH_OP_SQRT:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        *out = op[0];
        break;
    case GRAPH_OP_IDENTITY:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        *out = op[0];
        break;
    case GRAPH_OP_MAXPOOL: case GRAPH_OP_AVGPOOL: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        struct shape_window win;
        if ((rc = shape_window(n, &op[0], NULL, &win, err, errlen))) return rc;
        for (int i = 0; i < win.sp; i++)
            if (n->op == GRAPH_OP_AVGPOOL && win.dilation[i] != 1)
                return fail(err, errlen, n, "dilated average pooling is not supported");
        out->ndims = op[0].ndims;
        out->dims[0] = op[0].dims[0];
        out->dims[1] = op[0].dims[1];
        for (int i = 0; i < win.sp; i++)
            out->dims[2 + i] = shape_window_out(op[0].dims[2 + i], win.kernel[i], win.stride[i],
                                                win.dilation[i], win.pad_begin[i], win.pad_end[i],
                                                win.ceil_mode);
        break;
    }
    case GRAPH_OP_GLOBALAVGPOOL:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (op[0].ndims < 3) return fail(err, errlen, n, "input rank < 3");
        *out = op[0];
        for (int i = 2; i < out->ndims; i++) out->dims[i] = 1;
        break;
    case GRAPH_OP_CONCAT: {
        if ((rc = check_operands(n, 1, GRAPH_MAX_INPUTS + GRAPH_MAX_PARAMS, err, errlen))) return rc;
        int axis = shape_axis(graph_attr_int(n, "axis", 1), op[0].ndims);
        if (axis < 0) return fail(err, errlen, n, "axis out of range");
        *out = op[0];
        for (int k = 1; k < nop; k++) {
            if (op[k].ndims != op[0].ndims || op[k].dtype != op[0].dtype)
                return fail(err, errlen, n, "operand %d rank/type differs", k);
            for (int d = 0; d < op[0].ndims; d++)
                if (d != axis && op[k].dims[d] != op[0].dims[d])
                    return fail(err, errlen, n, "operand %d dim %d differs", k, d);
            out->dims[axis] += op[k].dims[axis];
        }
        break;
    }
    case GRAPH_OP_ADD: case GRAPH_OP_SUB: case GRAPH_OP_MUL: case GRAPH_OP_DIV:
    case GRAPH_OP_POW:
        if ((rc = check_operands(n, 2, 2, err, errlen))) return rc;
        if (n->ninputs < 1) return fail(err, errlen, n, "needs an activation operand");
        /* Pow's exponent may be int64 (ONNX allows it; the result is float) */
        if ((rc = need_f32(n, &op[0], err, errlen)) ||
            (!(n->op == GRAPH_OP_POW && op[1].dtype == GRAPH_I64) && (rc = need_f32(n, &op[1], err, errlen))))
            return rc;
        if (shape_broadcast(&op[0], &op[1], out))
            return fail(err, errlen, n, "operands do not broadcast");
        break;
    case GRAPH_OP_WHERE: {
        if ((rc = check_operands(n, 3, 3, err, errlen))) return rc;
        struct exec_tensor t;
        if (shape_broadcast(&op[0], &op[1], &t) || shape_broadcast(&t, &op[2], out))
            return fail(err, errlen, n, "operands do not broadcast");
        if ((rc = need_f32(n, &op[1], err, errlen)) || (rc = need_f32(n, &op[2], err, errlen)))
            return rc;
        out->dtype = GRAPH_F32;
        break;
    }
    case GRAPH_OP_GEMM: {
        if ((rc = check_operands(n, 2, 3, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        const struct exec_tensor *a = &op[0], *b = &op[1];
        int ta = (int)graph_attr_int(n, "transA", 0), tb = (int)graph_attr_int(n, "transB", 0);
        if (a->ndims < 2 || b->ndims != 2) return fail(err, errlen, n, "A rank >= 2 and B rank 2 needed");
        if (ta && a->ndims != 2) return fail(err, errlen, n, "transA needs a rank-2 A");
        int64_t k = ta ? a->dims[0] : a->dims[a->ndims - 1];
        int64_t kb = tb ? b->dims[1] : b->dims[0], nn = tb ? b->dims[0] : b->dims[1];
        if (k != kb) return fail(err, errlen, n, "inner dimensions %lld and %lld differ", (long long)k, (long long)kb);
        *out = *a;
        out->dtype = GRAPH_F32;
        if (ta) out->dims[0] = a->dims[1];
        out->dims[out->ndims - 1] = nn;
        if (nop == 3) {
            const struct exec_tensor *c = &op[2];
            int64_t m = 1;
            for (int i = 0; i < out->ndims - 1; i++) m *= out->dims[i];
            int ok = (c->ndims == 1 && (c->dims[0] == nn || c->dims[0] == 1)) ||
                     (c->ndims == 2 && (c->dims[0] == 1 || c->dims[0] == m) &&
                      (c->dims[1] == nn || c->dims[1] == 1));
            if (!ok) return fail(err, errlen, n, "C must broadcast to [M, N]");
        }
        break;
    }
    case GRAPH_OP_MATMUL: {
        if ((rc = check_operands(n, 2, 2, err, errlen))) return rc;
        const struct exec_tensor *a = &op[0], *b = &op[1];
        if ((rc = need_f32(n, a, err, errlen)) || (rc = need_f32(n, b, err, errlen))) return rc;
        if (a->ndims < 1 || b->ndims < 1) return fail(err, errlen, n, "rank-0 operands");
        /* numpy: a 1-D a is [1, K], a 1-D b is [K, 1]; the 1 is dropped. */
        int64_t ka = a->dims[a->ndims - 1], kb = b->dims[b->ndims == 1 ? 0 : b->ndims - 2];
        if (ka != kb) return fail(err, errlen, n, "inner dimensions %lld and %lld differ",
                                  (long long)ka, (long long)kb);
        struct exec_tensor ba = *a, bb = *b;
        ba.ndims = a->ndims >= 2 ? a->ndims - 2 : 0;
        bb.ndims = b->ndims >= 2 ? b->ndims - 2 : 0;
        if (shape_broadcast(&ba, &bb, out)) return fail(err, errlen, n, "batch dimensions do not broadcast");
        if (a->ndims >= 2) out->dims[out->ndims++] = a->dims[a->ndims - 2];
        if (b->ndims >= 2) out->dims[out->ndims++] = b->dims[b->ndims - 1];
        out->dtype = GRAPH_F32;
        break;
    }
    case GRAPH_OP_FLATTEN: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t ax = graph_attr_int(n, "axis", 1);
        if (ax < 0) ax += op[0].ndims;
        if (ax < 0 || ax > op[0].ndims) return fail(err, errlen, n, "axis out of range");
        int64_t a = 1, b = 1;
        for (int i = 0; i < op[0].ndims; i++) {
            if (i < ax) a *= op[0].dims[i];
            else b *= op[0].dims[i];
        }
        out->dtype = op[0].dtype;
        out->ndims = 2;
        out->dims[0] = a;
        out->dims[1] = b;
        break;
    }
    case GRAPH_OP_RESHAPE: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t sh[GRAPH_MAX_ATTR_INTS];
        int ns = graph_attr_ints(n, "shape", sh, GRAPH_MAX_ATTR_INTS);
        if (ns < 1 || ns > GRAPH_MAX_DIMS) return fail(err, errlen, n, "shape attribute missing");
        uint64_t total = shape_elems(&op[0]), known = 1;
        int infer = -1;
        out->dtype = op[0].dtype;
        out->ndims = ns;
        for (int i = 0; i < ns; i++) {
            int64_t d = sh[i];
            if (d == 0) {
                if (i >= op[0].ndims) return fail(err, errlen, n, "0 in shape beyond the input rank");
                d = op[0].dims[i];
            } else if (d == -1) {
                if (infer >= 0) return fail(err, errlen, n, "more than one -1 in shape");
                infer = i;
                out->dims[i] = 1;
                continue;
            } else if (d < -1) {
                return fail(err, errlen, n, "negative dimension in shape");
            }
            out->dims[i] = d;
            if ((uint64_t)d > SHAPE_MAX_ELEMS / known) return fail(err, errlen, n, "shape too large");
            known *= (uint64_t)d;
        }
        if (infer >= 0) {
            if (known == 0 || total % known) return fail(err, errlen, n, "cannot infer -1");
            out->dims[infer] = (int64_t)(total / known);
        } else if (known != total) {
            return fail(err, errlen, n, "shape has %llu elements, input %llu",
                        (unsigned long long)known, (unsigned long long)total);
        }
        break;
    }
    case GRAPH_OP_TRANSPOSE: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t perm[GRAPH_MAX_ATTR_INTS];
        int np = graph_attr_ints(n, "perm", perm, GRAPH_MAX_ATTR_INTS);
        int r = op[0].ndims;
        *out = op[0];
        if (np == 0) {
            for (int i = 0; i < r; i++) out->dims[i] = op[0].dims[r - 1 - i];
            break;
        }
        if (np != r) return fail(err, errlen, n, "perm has %d entries for rank %d", np, r);
        unsigned seen = 0;
        for (int i = 0; i < r; i++) {
            if (perm[i] < 0 || perm[i] >= r || (seen & (1u << perm[i])))
                return fail(err, errlen, n, "perm is not a permutation");
            seen |= 1u << perm[i];
            out->dims[i] = op[0].dims[perm[i]];
        }
        break;
    }
    case GRAPH_OP_GATHER: {
        if ((rc = check_operands(n, 2, 2, err, errlen))) return rc;
        /* ONNX order is (data, indices); a graph lists activations first,
         * so an embedding lookup (parameter table, activation ids) reaches
         * us as (ids, table): the int64 operand is the indices. */
        const struct exec_tensor *data = &op[0], *idx = &op[1];
        if (op[0].dtype == GRAPH_I64 && op[1].dtype == GRAPH_F32) {
            data = &op[1];
            idx = &op[0];
        }
        if (idx->dtype != GRAPH_I64 && !(idx == &op[1] && n->ninputs < 2))
            return fail(err, errlen, n, "indices must be int64 (or a float parameter)");
        int axis = shape_axis(graph_attr_int(n, "axis", 0), data->ndims);
        if (axis < 0) return fail(err, errlen, n, "axis out of range");
        if (data->ndims + idx->ndims - 1 > GRAPH_MAX_DIMS) return fail(err, errlen, n, "result rank too large");
        out->dtype = data->dtype;
        out->ndims = 0;
        for (int i = 0; i < axis; i++) out->dims[out->ndims++] = data->dims[i];
        for (int i = 0; i < idx->ndims; i++) out->dims[out->ndims++] = idx->dims[i];
        for (int i = axis + 1; i < data->ndims; i++) out->dims[out->ndims++] = data->dims[i];
        break;
    }
    case GRAPH_OP_LAYERNORM: {
        if ((rc = check_operands(n, 2, 3, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        int axis = shape_axis(graph_attr_int(n, "axis", -1), op[0].ndims);
        if (axis < 0) return fail(err, errlen, n, "axis out of range");
        uint64_t inner = 1;
        for (int i = axis; i < op[0].ndims; i++) inner *= (uint64_t)op[0].dims[i];
        for (int k = 1; k < nop; k++)
            if (shape_elems(&op[k]) != inner)
                return fail(err, errlen, n, "scale/bias must have the normalised shape");
        *out = op[0];
        break;
    }
    case GRAPH_OP_SOFTMAX:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (shape_axis(graph_attr_int(n, "axis", -1), op[0].ndims) < 0)
            return fail(err, errlen, n, "axis out of range");
        *out = op[0];
        break;
    case GRAPH_OP_SLICE: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        struct shape_slice sl;
        if ((rc = shape_slice(n, &op[0], &sl, err, errlen))) return rc;
        *out = op[0];
        for (int d = 0; d < out->ndims; d++) out->dims[d] = sl.count[d];
        break;
    }
    case GRAPH_OP_CONSTANT:
        if (n->ninputs != 0 || n->nparams != 1)
            return fail(err, errlen, n, "needs no inputs and exactly one parameter");
        *out = op[0];
        break;
    case GRAPH_OP_NEG: case GRAPH_OP_ABS: case GRAPH_OP_EXP: case GRAPH_OP_LOG:
    case GRAPH_OP_RECIPROCAL: case GRAPH_OP_LEAKYRELU: case GRAPH_OP_HARDSIGMOID:
    case GRAPH_OP_HARDSWISH: case GRAPH_OP_ELU: case GRAPH_OP_SELU: case GRAPH_OP_SOFTPLUS:
    case GRAPH_OP_SIN: case GRAPH_OP_COS: case GRAPH_OP_FLOOR: case GRAPH_OP_CEIL:
    case GRAPH_OP_SIGN:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        *out = op[0];
        break;
    case GRAPH_OP_CLIP: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        float lo = graph_attr_float(n, "min", -FLT_MAX), hi = graph_attr_float(n, "max", FLT_MAX);
        if (lo != lo || hi != hi) return fail(err, errlen, n, "min/max is NaN");
        *out = op[0];
        break;
    }
    case GRAPH_OP_NOT:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        *out = op[0];
        out->dtype = GRAPH_F32;
        break;
    case GRAPH_OP_CAST: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t to = graph_attr_int(n, "to", 0);
        if (to != 1 && to != 7)
            return fail(err, errlen, n, "cast to type %lld: only float (1) and int64 (7) are supported",
                        (long long)to);
        *out = op[0];
        out->dtype = to == 7 ? GRAPH_I64 : GRAPH_F32;
        break;
    }
    case GRAPH_OP_PRELU:
        if ((rc = check_operands(n, 2, 2, err, errlen))) return rc;
        if (n->ninputs < 1) return fail(err, errlen, n, "needs an activation operand");
        if ((rc = need_f32(n, &op[0], err, errlen)) || (rc = need_f32(n, &op[1], err, errlen)))
            return rc;
        if (shape_broadcast(&op[0], &op[1], out) || out->ndims != op[0].ndims ||
            memcmp(out->dims, op[0].dims, sizeof(int64_t) * (size_t)op[0].ndims) != 0)
            return fail(err, errlen, n, "slope does not broadcast to the input");
        break;
    case GRAPH_OP_MAX: case GRAPH_OP_MIN: case GRAPH_OP_EQUAL: case GRAPH_OP_LESS:
    case GRAPH_OP_GREATER: case GRAPH_OP_AND: case GRAPH_OP_OR: case GRAPH_OP_MOD:
        if ((rc = check_operands(n, 2, 2, err, errlen))) return rc;
        if (n->ninputs < 1) return fail(err, errlen, n, "needs an activation operand");
        if (n->op == GRAPH_OP_MOD && graph_attr_int(n, "fmod", 0) != 0 && graph_attr_int(n, "fmod", 0) != 1)
            return fail(err, errlen, n, "fmod must be 0 or 1");
        if ((n->op == GRAPH_OP_MAX || n->op == GRAPH_OP_MIN || n->op == GRAPH_OP_MOD) &&
            ((rc = need_f32(n, &op[0], err, errlen)) || (rc = need_f32(n, &op[1], err, errlen))))
            return rc;
        if (shape_broadcast(&op[0], &op[1], out))
            return fail(err, errlen, n, "operands do not broadcast");
        out->dtype = GRAPH_F32;
        break;
    case GRAPH_OP_LOGSOFTMAX:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (shape_axis(graph_attr_int(n, "axis", -1), op[0].ndims) < 0)
            return fail(err, errlen, n, "axis out of range");
        *out = op[0];
        break;
    case GRAPH_OP_INSTANCENORM:
        if ((rc = check_operands(n, 3, 3, err, errlen))) return rc;
        if (n->ninputs != 1) return fail(err, errlen, n, "scale and B must be parameters");
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (op[0].ndims < 3) return fail(err, errlen, n, "input rank < 3");
        for (int k = 1; k < 3; k++)
            if (op[k].ndims != 1 || op[k].dims[0] != op[0].dims[1])
                return fail(err, errlen, n, "scale/B must be [%lld]", (long long)op[0].dims[1]);
        *out = op[0];
        break;
    case GRAPH_OP_GLOBALMAXPOOL:
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        if (op[0].ndims < 3) return fail(err, errlen, n, "input rank < 3");
        *out = op[0];
        for (int i = 2; i < out->ndims; i++) out->dims[i] = 1;
        break;
    case GRAPH_OP_REDUCEMEAN: case GRAPH_OP_REDUCESUM: case GRAPH_OP_REDUCEMAX:
    case GRAPH_OP_REDUCEMIN: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        unsigned mask;
        if ((rc = shape_reduce_axes(n, op[0].ndims, &mask, err, errlen))) return rc;
        int keep = (int)graph_attr_int(n, "keepdims", 1);
        out->ndims = 0;
        for (int i = 0; i < op[0].ndims; i++) {
            if (!(mask & (1u << i))) out->dims[out->ndims++] = op[0].dims[i];
            else if (keep) out->dims[out->ndims++] = 1;
        }
        break;
    }
    case GRAPH_OP_EXPAND: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t sh[GRAPH_MAX_ATTR_INTS];
        int ns = graph_attr_ints(n, "shape", sh, GRAPH_MAX_ATTR_INTS);
        if (ns < 1 || ns > GRAPH_MAX_DIMS) return fail(err, errlen, n, "shape attribute missing");
        struct exec_tensor t;
        memset(&t, 0, sizeof t);
        t.ndims = ns;
        for (int i = 0; i < ns; i++) {
            if (sh[i] < 1 || sh[i] > (int64_t)SHAPE_MAX_ELEMS)
                return fail(err, errlen, n, "shape entry %d is %lld", i, (long long)sh[i]);
            t.dims[i] = sh[i];
        }
        if (shape_broadcast(&op[0], &t, out))
            return fail(err, errlen, n, "input does not broadcast to the shape");
        out->dtype = op[0].dtype;
        break;
    }
    case GRAPH_OP_TILE: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        int64_t rep[GRAPH_MAX_ATTR_INTS];
        int nr = graph_attr_ints(n, "repeats", rep, GRAPH_MAX_ATTR_INTS);
        if (nr != op[0].ndims) return fail(err, errlen, n, "repeats has %d entries for rank %d", nr, op[0].ndims);
        *out = op[0];
        for (int i = 0; i < nr; i++) {
            if (rep[i] < 1 || rep[i] > (1 << 24)) return fail(err, errlen, n, "repeats[%d] is %lld", i, (long long)rep[i]);
            if ((uint64_t)op[0].dims[i] > SHAPE_MAX_ELEMS / (uint64_t)rep[i])
                return fail(err, errlen, n, "tensor too large");
            out->dims[i] = op[0].dims[i] * rep[i];
        }
        break;
    }
    case GRAPH_OP_PAD: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        int64_t pads[GRAPH_MAX_ATTR_INTS];
        int r = op[0].ndims, np = graph_attr_ints(n, "pads", pads, GRAPH_MAX_ATTR_INTS);
        if (np != 2 * r) return fail(err, errlen, n, "pads has %d entries for rank %d", np, r);
        int64_t mode = graph_attr_int(n, "mode", 0);
        if (mode < 0 || mode > 2) return fail(err, errlen, n, "mode %lld (0 constant, 1 reflect, 2 edge)", (long long)mode);
        *out = op[0];
        for (int i = 0; i < r; i++) {
            int64_t b = pads[i], e = pads[r + i], d = op[0].dims[i];
            if (b < -d || e < -d || b > (1 << 24) || e > (1 << 24))
                return fail(err, errlen, n, "pads out of range on axis %d", i);
            if (mode != 0 && (b < 0 || e < 0)) return fail(err, errlen, n, "negative pads need mode constant");
            if (mode == 1 && (b >= d || e >= d) && d > 1)
                return fail(err, errlen, n, "reflect pads must be smaller than the dimension (axis %d)", i);
            out->dims[i] = d + b + e;
        }
        break;
    }
    case GRAPH_OP_RESIZE: {
        if ((rc = check_operands(n, 1, 1, err, errlen))) return rc;
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        int64_t sz[GRAPH_MAX_ATTR_INTS];
        int r = op[0].ndims, ns = graph_attr_ints(n, "sizes", sz, GRAPH_MAX_ATTR_INTS);
        if (ns != r) return fail(err, errlen, n, "sizes has %d entries for rank %d", ns, r);
        int64_t mode = graph_attr_int(n, "mode", 0), coord = graph_attr_int(n, "coord", 0),
                nm = graph_attr_int(n, "nearest", 0), ex = graph_attr_int(n, "exclude_outside", 0);
        float ca = graph_attr_float(n, "cubic_a", -0.75f);
        if (mode < 0 || mode > 2 || coord < 0 || coord > 3 || nm < 0 || nm > 3 || ex < 0 || ex > 1 ||
            !(ca > -10.0f && ca < 10.0f))
            return fail(err, errlen, n, "mode/coord/nearest/exclude_outside/cubic_a out of range");
        int nresized = 0;
        for (int i = 0; i < r; i++) nresized += sz[i] > 0 && sz[i] != op[0].dims[i];
        if (mode == 2 && nresized > 3) return fail(err, errlen, n, "cubic resize of more than 3 axes");
        *out = op[0];
        for (int i = 0; i < r; i++) {
            if (sz[i] < 0 || sz[i] > (1 << 24)) return fail(err, errlen, n, "sizes[%d] is %lld", i, (long long)sz[i]);
            if (sz[i] > 0) out->dims[i] = sz[i];
        }
        float sc[GRAPH_MAX_DIMS];
        int nsc = shape_resize_scales(n, sc);
        if (nsc < 0 || (nsc > 0 && nsc != r))
            return fail(err, errlen, n, "scales_bits needs %d positive finite floats", r);
        break;
    }
    case GRAPH_OP_CONVTRANSPOSE: {
        if ((rc = check_operands(n, 2, 3, err, errlen))) return rc;
        if (n->ninputs != 1) return fail(err, errlen, n, "needs exactly one activation input");
        if ((rc = need_f32(n, &op[0], err, errlen))) return rc;
        struct shape_deconv dc;
        if ((rc = shape_deconv(n, &op[0], &op[1], &dc, err, errlen))) return rc;
        if (nop == 3 && (op[2].ndims != 1 || op[2].dims[0] != op[1].dims[1] * dc.group))
            return fail(err, errlen, n, "bias must be [%lld]", (long long)(op[1].dims[1] * dc.group));
        out->ndims = op[0].ndims;
        out->dims[0] = op[0].dims[0];
        out->dims[1] = op[1].dims[1] * dc.group;
        for (int i = 0; i < dc.sp; i++) {
            out->dims[2 + i] = dc.out[i];
            if (dc.out[i] < 1) return fail(err, errlen, n, "output size %lld on axis %d", (long long)dc.out[i], 2 + i);
        }
        break;
    }
    default:
        return fail(err, errlen, n, "unknown operation %d", (int)n->op);
    }
    return finish(out, n, err, errlen);
}

int shape_infer(const struct graph *g, int64_t batch, struct exec_tensor *vals, char *err,
                size_t errlen)
{
    if (batch < 1 || batch > (1 << 20)) return fail(err, errlen, NULL, "batch size %lld out of range", (long long)batch);
    int64_t fixed = graph_fixed_batch(g);
    if (fixed && batch != fixed)
        return fail(err, errlen, NULL, "the model's batch size is fixed at %lld (its inputs' first dimension), not %lld",
                    (long long)fixed, (long long)batch);
    for (int i = 0; i < g->ninputs; i++) {
        const struct graph_io *io = &g->inputs[i];
        struct exec_tensor *t = &vals[i];
        memset(t, 0, sizeof *t);
        t->dtype = io->dtype;
        t->ndims = io->ndims;
        for (int d = 0; d < io->ndims; d++) t->dims[d] = io->dims[d];
        t->dims[0] = batch;
        int rc = finish(t, NULL, err, errlen);
        if (rc) return rc;
    }
    for (int i = 0; i < g->nnodes; i++) {
        int rc = shape_node(g, &g->nodes[i], vals, &vals[g->ninputs + i], err, errlen);
        if (rc) return rc;
    }
    for (int i = 0; i < g->noutputs; i++) {
        const struct graph_io *io = &g->outputs[i];
        const struct exec_tensor *t = &vals[io->value];
        if (t->dtype != GRAPH_F32)
            return fail(err, errlen, NULL, "output '%s' is not float32", io->name);
        if (io->ndims == 0) continue;
        int same = io->ndims == t->ndims && t->dims[0] == batch;
        for (int d = 1; same && d < io->ndims; d++) same = io->dims[d] == t->dims[d];
        if (!same) return fail(err, errlen, NULL, "output '%s' shape disagrees with the graph", io->name);
    }
    return 0;
}
