/* onnx_fold: constant tensors and import-time folding (see onnx_fold.h).
 *
 * Every result's shape is computed and bounded first, then allocated, then
 * filled element by element through the index helpers below; these are
 * small tensors (shapes, scalars, masks), so clarity beats speed here.
 * The easy thing to get wrong: index arithmetic on broadcast operands; one
 * helper (broadcast_index) maps an output position to an operand's element
 * and every broadcasting op uses it. */
#include "onnx/onnx_fold.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

void onnx_const_pool_free(struct onnx_const_pool *p)
{
    struct onnx_const *c = p->head;
    while (c) {
        struct onnx_const *next = c->next;
        free(c->owned);
        free(c);
        c = next;
    }
    p->head = NULL;
}

static size_t type_size(enum onnx_const_type t) { return t == ONNX_CONST_F32 ? 4 : 8; }

static int count_elems(int ndims, const int64_t *dims, uint64_t *n, char *err, size_t errlen)
{
    if (ndims < 0 || ndims > GRAPH_MAX_DIMS)
        return pps_fail(err, errlen, PPS_EUNSUPPORTED, "constant of rank %d (at most %d)", ndims,
                        GRAPH_MAX_DIMS);
    uint64_t e = 1;
    for (int i = 0; i < ndims; i++) {
        if (dims[i] < 0) return pps_fail(err, errlen, PPS_EINVAL, "negative dimension %lld", (long long)dims[i]);
        if (dims[i] > 0 && (uint64_t)dims[i] > ONNX_FOLD_MAX_ELEMS / (e ? e : 1))
            return pps_fail(err, errlen, PPS_ETOOBIG,
                            "a constant computed at import would have over %llu elements",
                            (unsigned long long)ONNX_FOLD_MAX_ELEMS);
        e *= (uint64_t)dims[i];
    }
    *n = e;
    return 0;
}

static struct onnx_const *pool_link(struct onnx_const_pool *p, struct onnx_const *c)
{
    c->next = p->head;
    p->head = c;
    return c;
}

struct onnx_const *onnx_const_new(struct onnx_const_pool *p, enum onnx_const_type type, int ndims,
                                  const int64_t *dims, char *err, size_t errlen)
{
    uint64_t n = 0;
    if (count_elems(ndims, dims, &n, err, errlen)) return NULL;
    struct onnx_const *c = pps_xcalloc(1, sizeof *c);
    c->type = type;
    c->ndims = ndims;
    for (int i = 0; i < ndims; i++) c->dims[i] = dims[i];
    c->n = n;
    c->owned = pps_xcalloc(n ? n : 1, type_size(type));
    c->data = c->owned;
    return pool_link(p, c);
}

struct onnx_const *onnx_const_view(struct onnx_const_pool *p, enum onnx_const_type type, int ndims,
                                   const int64_t *dims, const void *data)
{
    struct onnx_const *c = pps_xcalloc(1, sizeof *c);
    c->type = type;
    c->ndims = ndims;
    c->n = 1;
    for (int i = 0; i < ndims; i++) {
        c->dims[i] = dims[i];
        c->n *= (uint64_t)dims[i];
    }
    c->data = data;
    return pool_link(p, c);
}

double onnx_const_get(const struct onnx_const *c, uint64_t i)
{
    if (c->type == ONNX_CONST_F32) {
        float f;
        memcpy(&f, (const char *)c->data + i * 4, 4);
        return f;
    }
    int64_t v;
    memcpy(&v, (const char *)c->data + i * 8, 8);
    return (double)v;
}

int64_t onnx_const_geti(const struct onnx_const *c, uint64_t i)
{
    if (c->type == ONNX_CONST_I64) {
        int64_t v;
        memcpy(&v, (const char *)c->data + i * 8, 8);
        return v;
    }
    float f;
    memcpy(&f, (const char *)c->data + i * 4, 4);
    if (!(f > -9.2e18f && f < 9.2e18f)) return f > 0 ? INT64_MAX : INT64_MIN; /* NaN too */
    return (int64_t)f;
}

void onnx_const_set(struct onnx_const *c, uint64_t i, double v)
{
    PPS_ASSERT(c->owned);
    if (c->type == ONNX_CONST_F32) {
        float f = (float)v;
        memcpy((char *)c->owned + i * 4, &f, 4);
    } else {
        int64_t x = (v > -9.2e18 && v < 9.2e18) ? (int64_t)v : (v > 0 ? INT64_MAX : INT64_MIN);
        memcpy((char *)c->owned + i * 8, &x, 8);
    }
}

void onnx_const_seti(struct onnx_const *c, uint64_t i, int64_t v)
{
    PPS_ASSERT(c->owned);
    if (c->type == ONNX_CONST_I64) memcpy((char *)c->owned + i * 8, &v, 8);
    else onnx_const_set(c, i, (double)v);
}

int onnx_const_equal(const struct onnx_const *a, const struct onnx_const *b)
{
    if (a == b) return 1;
    if (a->type != b->type || a->ndims != b->ndims || a->n != b->n) return 0;
    for (int i = 0; i < a->ndims; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return a->n == 0 || memcmp(a->data, b->data, a->n * type_size(a->type)) == 0;
}

struct onnx_const *onnx_const_cast(struct onnx_const_pool *p, const struct onnx_const *c,
                                   enum onnx_const_type type, char *err, size_t errlen)
{
    struct onnx_const *r = onnx_const_new(p, type, c->ndims, c->dims, err, errlen);
    if (!r) return NULL;
    for (uint64_t i = 0; i < c->n; i++) {
        if (type == ONNX_CONST_I64) onnx_const_seti(r, i, onnx_const_geti(c, i));
        else onnx_const_set(r, i, onnx_const_get(c, i));
    }
    return r;
}

struct onnx_const *onnx_const_reshape(struct onnx_const_pool *p, const struct onnx_const *c,
                                      int ndims, const int64_t *dims, char *err, size_t errlen)
{
    uint64_t n = 0;
    if (count_elems(ndims, dims, &n, err, errlen)) return NULL;
    if (n != c->n) {
        pps_fail(err, errlen, PPS_ESHAPE, "reshaping %llu elements into %llu", (unsigned long long)c->n,
                 (unsigned long long)n);
        return NULL;
    }
    struct onnx_const *r = pps_xcalloc(1, sizeof *r);
    *r = *c;
    r->owned = NULL; /* shares c's data; c lives in the same pool */
    r->ndims = ndims;
    for (int i = 0; i < ndims; i++) r->dims[i] = dims[i];
    return pool_link(p, r);
}

int onnx_broadcast_dims(int na, const int64_t *a, int nb, const int64_t *b, int64_t *out)
{
    int n = na > nb ? na : nb;
    if (n > GRAPH_MAX_DIMS) return -1;
    for (int i = 0; i < n; i++) {
        int64_t da = i < n - na ? 1 : a[i - (n - na)];
        int64_t db = i < n - nb ? 1 : b[i - (n - nb)];
        if (da != db && da != 1 && db != 1) return -1;
        out[i] = da == 1 ? db : da;
    }
    return n;
}

/* Element of c (broadcast to out dims, rank n) at the output position pos. */
static uint64_t broadcast_index(const struct onnx_const *c, int n, const int64_t *pos)
{
    uint64_t idx = 0;
    int off = n - c->ndims;
    for (int i = 0; i < c->ndims; i++) {
        int64_t p = c->dims[i] == 1 ? 0 : pos[off + i];
        idx = idx * (uint64_t)c->dims[i] + (uint64_t)p;
    }
    return idx;
}

static void next_pos(int n, const int64_t *dims, int64_t *pos)
{
    for (int i = n - 1; i >= 0; i--) {
        if (++pos[i] < dims[i]) return;
        pos[i] = 0;
    }
}

static double apply_float(enum onnx_fold_op op, double x, double y)
{
    switch (op) {
    case FOLD_ADD: return x + y;
    case FOLD_SUB: return x - y;
    case FOLD_MUL: return x * y;
    case FOLD_DIV: return x / y;
    case FOLD_POW: return pow(x, y);
    case FOLD_MAX: return x > y ? x : y;
    case FOLD_MIN: return x < y ? x : y;
    case FOLD_EQUAL: return x == y;
    case FOLD_LESS: return x < y;
    case FOLD_GREATER: return x > y;
    case FOLD_AND: return x != 0 && y != 0;
    case FOLD_OR: return x != 0 || y != 0;
    case FOLD_MOD: return fmod(x, y);
    }
    return 0;
}

/* Integer ops wrap instead of overflowing (shape arithmetic never gets
 * there; a hostile file must not make it undefined behaviour). */
static int64_t apply_int(enum onnx_fold_op op, int64_t x, int64_t y)
{
    uint64_t ux = (uint64_t)x, uy = (uint64_t)y;
    switch (op) {
    case FOLD_ADD: return (int64_t)(ux + uy);
    case FOLD_SUB: return (int64_t)(ux - uy);
    case FOLD_MUL: return (int64_t)(ux * uy);
    case FOLD_DIV:
        if (y == 0 || (x == INT64_MIN && y == -1)) return 0;
        return x / y;
    case FOLD_MOD: {
        if (y == 0 || (x == INT64_MIN && y == -1)) return 0;
        int64_t r = x % y; /* ONNX Mod with fmod=0: the sign follows the divisor */
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return r;
    }
    case FOLD_POW: {
        int64_t r = 1;
        for (int64_t k = 0; k < y && k < 64; k++) r = (int64_t)((uint64_t)r * ux);
        return r;
    }
    case FOLD_MAX: return x > y ? x : y;
    case FOLD_MIN: return x < y ? x : y;
    case FOLD_EQUAL: return x == y;
    case FOLD_LESS: return x < y;
    case FOLD_GREATER: return x > y;
    case FOLD_AND: return x != 0 && y != 0;
    case FOLD_OR: return x != 0 || y != 0;
    }
    return 0;
}

struct onnx_const *onnx_fold_binary(struct onnx_const_pool *p, enum onnx_fold_op op,
                                    const struct onnx_const *a, const struct onnx_const *b, char *err,
                                    size_t errlen)
{
    int64_t dims[GRAPH_MAX_DIMS];
    int n = onnx_broadcast_dims(a->ndims, a->dims, b->ndims, b->dims, dims);
    if (n < 0) {
        pps_fail(err, errlen, PPS_ESHAPE, "operands do not broadcast");
        return NULL;
    }
    int compare = op == FOLD_EQUAL || op == FOLD_LESS || op == FOLD_GREATER || op == FOLD_AND ||
                  op == FOLD_OR;
    enum onnx_const_type rt = compare ? ONNX_CONST_I64 : a->type;
    struct onnx_const *r = onnx_const_new(p, rt, n, dims, err, errlen);
    if (!r) return NULL;
    int both_int = a->type == ONNX_CONST_I64 && b->type == ONNX_CONST_I64;
    int64_t pos[GRAPH_MAX_DIMS] = {0};
    for (uint64_t i = 0; i < r->n; i++) {
        uint64_t ia = broadcast_index(a, n, pos), ib = broadcast_index(b, n, pos);
        if (both_int) onnx_const_seti(r, i, apply_int(op, onnx_const_geti(a, ia), onnx_const_geti(b, ib)));
        else onnx_const_set(r, i, apply_float(op, onnx_const_get(a, ia), onnx_const_get(b, ib)));
        next_pos(n, dims, pos);
    }
    return r;
}

struct onnx_const *onnx_fold_unary(struct onnx_const_pool *p, enum onnx_fold_unary op,
                                   const struct onnx_const *a, char *err, size_t errlen)
{
    struct onnx_const *r = onnx_const_new(p, a->type, a->ndims, a->dims, err, errlen);
    if (!r) return NULL;
    for (uint64_t i = 0; i < a->n; i++) {
        if (a->type == ONNX_CONST_I64 && (op == FOLD_NEG || op == FOLD_ABS || op == FOLD_NOT ||
                                          op == FOLD_IDENTITY || op == FOLD_RELU)) {
            int64_t x = onnx_const_geti(a, i);
            int64_t y = op == FOLD_NEG ? (int64_t)(0 - (uint64_t)x)
                        : op == FOLD_ABS ? (x < 0 ? (int64_t)(0 - (uint64_t)x) : x)
                        : op == FOLD_NOT ? (x == 0)
                        : op == FOLD_RELU ? (x > 0 ? x : 0) : x;
            onnx_const_seti(r, i, y);
            continue;
        }
        double x = onnx_const_get(a, i), y = x;
        switch (op) {
        case FOLD_NEG: y = -x; break;
        case FOLD_ABS: y = fabs(x); break;
        case FOLD_SQRT: y = sqrt(x); break;
        case FOLD_EXP: y = exp(x); break;
        case FOLD_LOG: y = log(x); break;
        case FOLD_RECIPROCAL: y = 1.0 / x; break;
        case FOLD_FLOOR: y = floor(x); break;
        case FOLD_CEIL: y = ceil(x); break;
        case FOLD_NOT: y = x == 0; break;
        case FOLD_RELU: y = x > 0 ? x : 0; break;
        case FOLD_SIGMOID: y = 1.0 / (1.0 + exp(-x)); break;
        case FOLD_TANH: y = tanh(x); break;
        case FOLD_ERF: y = erf(x); break;
        case FOLD_IDENTITY: break;
        }
        onnx_const_set(r, i, y);
    }
    return r;
}

struct onnx_const *onnx_fold_where(struct onnx_const_pool *p, const struct onnx_const *cond,
                                   const struct onnx_const *x, const struct onnx_const *y, char *err,
                                   size_t errlen)
{
    int64_t d1[GRAPH_MAX_DIMS], dims[GRAPH_MAX_DIMS];
    int n1 = onnx_broadcast_dims(cond->ndims, cond->dims, x->ndims, x->dims, d1);
    int n = n1 < 0 ? -1 : onnx_broadcast_dims(n1, d1, y->ndims, y->dims, dims);
    if (n < 0) {
        pps_fail(err, errlen, PPS_ESHAPE, "operands do not broadcast");
        return NULL;
    }
    struct onnx_const *r = onnx_const_new(p, x->type, n, dims, err, errlen);
    if (!r) return NULL;
    int64_t pos[GRAPH_MAX_DIMS] = {0};
    for (uint64_t i = 0; i < r->n; i++) {
        int c = onnx_const_get(cond, broadcast_index(cond, n, pos)) != 0;
        const struct onnx_const *src = c ? x : y;
        uint64_t k = broadcast_index(src, n, pos);
        if (r->type == ONNX_CONST_I64) onnx_const_seti(r, i, onnx_const_geti(src, k));
        else onnx_const_set(r, i, onnx_const_get(src, k));
        next_pos(n, dims, pos);
    }
    return r;
}

static void copy_elem(struct onnx_const *dst, uint64_t di, const struct onnx_const *src, uint64_t si)
{
    if (dst->type == ONNX_CONST_I64) onnx_const_seti(dst, di, onnx_const_geti(src, si));
    else onnx_const_set(dst, di, onnx_const_get(src, si));
}

static int norm_axis(int64_t axis, int rank)
{
    if (axis < 0) axis += rank;
    return axis >= 0 && axis < rank ? (int)axis : -1;
}

struct onnx_const *onnx_fold_gather(struct onnx_const_pool *p, const struct onnx_const *data,
                                    const struct onnx_const *idx, int64_t axis, char *err,
                                    size_t errlen)
{
    int ax = norm_axis(axis, data->ndims);
    if (ax < 0 || data->ndims + idx->ndims - 1 > GRAPH_MAX_DIMS) {
        pps_fail(err, errlen, PPS_ESHAPE, "Gather axis %lld out of range or result rank too large",
                 (long long)axis);
        return NULL;
    }
    int64_t dims[GRAPH_MAX_DIMS];
    int n = 0;
    uint64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++) outer *= (uint64_t)(dims[n++] = data->dims[i]);
    for (int i = 0; i < idx->ndims; i++) dims[n++] = idx->dims[i];
    for (int i = ax + 1; i < data->ndims; i++) inner *= (uint64_t)(dims[n++] = data->dims[i]);
    struct onnx_const *r = onnx_const_new(p, data->type, n, dims, err, errlen);
    if (!r) return NULL;
    int64_t len = data->dims[ax];
    uint64_t o = 0;
    for (uint64_t a = 0; a < outer; a++)
        for (uint64_t k = 0; k < idx->n; k++) {
            int64_t j = onnx_const_geti(idx, k);
            if (j < 0) j += len;
            if (j < 0 || j >= len) {
                pps_fail(err, errlen, PPS_ERANGE, "Gather index %lld out of range [0, %lld)",
                         (long long)onnx_const_geti(idx, k), (long long)len);
                return NULL;
            }
            for (uint64_t b = 0; b < inner; b++)
                copy_elem(r, o++, data, (a * (uint64_t)len + (uint64_t)j) * inner + b);
        }
    return r;
}

struct onnx_const *onnx_fold_concat(struct onnx_const_pool *p, const struct onnx_const *const *in,
                                    int n, int64_t axis, char *err, size_t errlen)
{
    if (n < 1) {
        pps_fail(err, errlen, PPS_EINVAL, "Concat of nothing");
        return NULL;
    }
    int rank = in[0]->ndims;
    int ax = norm_axis(axis, rank);
    if (ax < 0) {
        pps_fail(err, errlen, PPS_ESHAPE, "Concat axis %lld out of range", (long long)axis);
        return NULL;
    }
    int64_t dims[GRAPH_MAX_DIMS];
    for (int i = 0; i < rank; i++) dims[i] = in[0]->dims[i];
    dims[ax] = 0;
    for (int k = 0; k < n; k++) {
        if (in[k]->ndims != rank) {
            pps_fail(err, errlen, PPS_ESHAPE, "Concat operands of different ranks");
            return NULL;
        }
        for (int i = 0; i < rank; i++)
            if (i != ax && in[k]->dims[i] != dims[i]) {
                pps_fail(err, errlen, PPS_ESHAPE, "Concat operands differ in dimension %d", i);
                return NULL;
            }
        dims[ax] += in[k]->dims[ax];
    }
    enum onnx_const_type t = in[0]->type;
    struct onnx_const *r = onnx_const_new(p, t, rank, dims, err, errlen);
    if (!r) return NULL;
    uint64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++) outer *= (uint64_t)dims[i];
    for (int i = ax + 1; i < rank; i++) inner *= (uint64_t)dims[i];
    uint64_t o = 0;
    for (uint64_t a = 0; a < outer; a++)
        for (int k = 0; k < n; k++) {
            uint64_t chunk = (uint64_t)in[k]->dims[ax] * inner;
            for (uint64_t e = 0; e < chunk; e++) copy_elem(r, o++, in[k], a * chunk + e);
        }
    return r;
}

struct onnx_const *onnx_fold_slice(struct onnx_const_pool *p, const struct onnx_const *x, int n,
                                   const int64_t *starts, const int64_t *ends, const int64_t *axes,
                                   const int64_t *steps, char *err, size_t errlen)
{
    int rank = x->ndims;
    int64_t st[GRAPH_MAX_DIMS], sp[GRAPH_MAX_DIMS], cnt[GRAPH_MAX_DIMS];
    for (int i = 0; i < rank; i++) {
        st[i] = 0;
        sp[i] = 1;
        cnt[i] = x->dims[i];
    }
    for (int k = 0; k < n; k++) {
        int ax = norm_axis(axes ? axes[k] : k, rank);
        int64_t step = steps ? steps[k] : 1;
        if (ax < 0 || step == 0) {
            pps_fail(err, errlen, PPS_ESHAPE, "Slice axis out of range or step 0");
            return NULL;
        }
        int64_t d = x->dims[ax], s = starts[k], e = ends[k];
        if (s < 0) s = s < -d ? 0 : s + d;
        if (e < 0) e = e < -d ? -1 : e + d;
        if (step > 0) {
            if (s > d) s = d;
            if (e > d) e = d;
            if (e < 0) e = 0;
            cnt[ax] = e > s ? (e - s + step - 1) / step : 0;
        } else {
            if (s > d - 1) s = d - 1;
            if (e > d - 1) e = d - 1;
            cnt[ax] = s > e ? (s - e + (-step) - 1) / (-step) : 0;
        }
        st[ax] = s;
        sp[ax] = step;
    }
    struct onnx_const *r = onnx_const_new(p, x->type, rank, cnt, err, errlen);
    if (!r) return NULL;
    int64_t pos[GRAPH_MAX_DIMS] = {0};
    for (uint64_t i = 0; i < r->n; i++) {
        uint64_t src = 0;
        for (int d = 0; d < rank; d++) src = src * (uint64_t)x->dims[d] + (uint64_t)(st[d] + pos[d] * sp[d]);
        copy_elem(r, i, x, src);
        next_pos(rank, cnt, pos);
    }
    return r;
}

struct onnx_const *onnx_fold_transpose(struct onnx_const_pool *p, const struct onnx_const *x,
                                       const int64_t *perm, char *err, size_t errlen)
{
    int rank = x->ndims;
    int64_t dims[GRAPH_MAX_DIMS], pm[GRAPH_MAX_DIMS];
    unsigned seen = 0;
    for (int i = 0; i < rank; i++) {
        pm[i] = perm ? perm[i] : rank - 1 - i;
        if (pm[i] < 0 || pm[i] >= rank || (seen & (1u << pm[i]))) {
            pps_fail(err, errlen, PPS_ESHAPE, "Transpose perm is not a permutation");
            return NULL;
        }
        seen |= 1u << pm[i];
        dims[i] = x->dims[pm[i]];
    }
    struct onnx_const *r = onnx_const_new(p, x->type, rank, dims, err, errlen);
    if (!r) return NULL;
    int64_t pos[GRAPH_MAX_DIMS] = {0}, src_pos[GRAPH_MAX_DIMS];
    for (uint64_t i = 0; i < r->n; i++) {
        for (int d = 0; d < rank; d++) src_pos[pm[d]] = pos[d];
        uint64_t src = 0;
        for (int d = 0; d < rank; d++) src = src * (uint64_t)x->dims[d] + (uint64_t)src_pos[d];
        copy_elem(r, i, x, src);
        next_pos(rank, dims, pos);
    }
    return r;
}

struct onnx_const *onnx_fold_trilu(struct onnx_const_pool *p, const struct onnx_const *x, int64_t k, int upper,
                                   char *err, size_t errlen)
{
    if (x->ndims < 2) {
        pps_fail(err, errlen, PPS_ESHAPE, "Trilu of a rank-%d tensor (at least 2)", x->ndims);
        return NULL;
    }
    struct onnx_const *r = onnx_const_new(p, x->type, x->ndims, x->dims, err, errlen); /* zeros */
    if (!r) return NULL;
    uint64_t cols = (uint64_t)x->dims[x->ndims - 1], rows = (uint64_t)x->dims[x->ndims - 2];
    for (uint64_t i = 0; i < r->n; i++) {
        int64_t col = (int64_t)(i % cols), row = (int64_t)((i / cols) % rows);
        if (upper ? col - row >= k : col - row <= k) copy_elem(r, i, x, i);
    }
    return r;
}

struct onnx_const *onnx_fold_expand(struct onnx_const_pool *p, const struct onnx_const *x, int ndims,
                                    const int64_t *dims, char *err, size_t errlen)
{
    int64_t out[GRAPH_MAX_DIMS];
    int n = onnx_broadcast_dims(x->ndims, x->dims, ndims, dims, out);
    if (n < 0) {
        pps_fail(err, errlen, PPS_ESHAPE, "Expand shape does not broadcast with the input");
        return NULL;
    }
    struct onnx_const *r = onnx_const_new(p, x->type, n, out, err, errlen);
    if (!r) return NULL;
    int64_t pos[GRAPH_MAX_DIMS] = {0};
    for (uint64_t i = 0; i < r->n; i++) {
        copy_elem(r, i, x, broadcast_index(x, n, pos));
        next_pos(n, out, pos);
    }
    return r;
}

struct onnx_const *onnx_fold_range(struct onnx_const_pool *p, const struct onnx_const *start,
                                   const struct onnx_const *limit, const struct onnx_const *delta,
                                   char *err, size_t errlen)
{
    if (start->n != 1 || limit->n != 1 || delta->n != 1) {
        pps_fail(err, errlen, PPS_ESHAPE, "Range operands must be scalars");
        return NULL;
    }
    double s = onnx_const_get(start, 0), l = onnx_const_get(limit, 0), d = onnx_const_get(delta, 0);
    if (d == 0 || !isfinite(s) || !isfinite(l) || !isfinite(d)) {
        pps_fail(err, errlen, PPS_EINVAL, "Range with delta 0 or a non-finite bound");
        return NULL;
    }
    double cnt = ceil((l - s) / d);
    if (cnt < 0) cnt = 0;
    if (cnt > (double)ONNX_FOLD_MAX_ELEMS) {
        pps_fail(err, errlen, PPS_ETOOBIG, "Range of %.0f elements", cnt);
        return NULL;
    }
    int64_t dims[1] = {(int64_t)cnt};
    struct onnx_const *r = onnx_const_new(p, start->type, 1, dims, err, errlen);
    if (!r) return NULL;
    for (int64_t i = 0; i < dims[0]; i++) {
        if (r->type == ONNX_CONST_I64)
            onnx_const_seti(r, (uint64_t)i, onnx_const_geti(start, 0) + i * onnx_const_geti(delta, 0));
        else onnx_const_set(r, (uint64_t)i, s + (double)i * d);
    }
    return r;
}
