/* cpu_ref: reference C kernels (see cpu_ref.h).
 *
 * Each kernel computes every output element independently from its
 * multi-index (no scatter, no cross-thread reduction), so the result does
 * not depend on how OpenMP splits the loop: the executor's bit-identical
 * guarantee holds for these too.
 *
 * The easy thing to get wrong: broadcasting and the rank-0 case. Shapes are
 * right-aligned against the output's (numpy), a rank-0 tensor is one
 * element, and a dimension of 1 broadcasts (stride 0). */
#include "exec/cpu/cpu_ref.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "common/err.h"

static int64_t elems(const struct cpuk_shape *s)
{
    int64_t e = 1;
    for (int i = 0; i < s->ndims; i++) e *= s->dims[i];
    return e;
}

/* Element strides of s viewed in ys's index space (right-aligned), 0 where
 * s broadcasts. */
static void bstrides(const struct cpuk_shape *s, const struct cpuk_shape *ys, int64_t *st)
{
    int r = ys->ndims, off = r - s->ndims;
    int64_t acc = 1;
    for (int i = r - 1; i >= 0; i--) {
        int si = i - off;
        int64_t d = si >= 0 ? s->dims[si] : 1;
        st[i] = d == 1 ? 0 : acc;
        acc *= d;
    }
}

/* Offset of flat output index o (shape ys) in a tensor with strides st. */
static int64_t offset_of(int64_t o, const struct cpuk_shape *ys, const int64_t *st)
{
    int64_t off = 0;
    for (int i = ys->ndims - 1; i >= 0; i--) {
        int64_t idx = o % ys->dims[i];
        o /= ys->dims[i];
        off += idx * st[i];
    }
    return off;
}

static inline float unop(enum cpuref_unop op, float alpha, float beta, float v)
{
    switch (op) {
    case CPUREF_NEG: return -v;
    case CPUREF_ABS: return fabsf(v);
    case CPUREF_EXP: return expf(v);
    case CPUREF_LOG: return logf(v);
    case CPUREF_RECIPROCAL: return 1.0f / v;
    case CPUREF_LEAKYRELU: return v >= 0 ? v : alpha * v;
    case CPUREF_CLIP: return v < alpha ? alpha : (v > beta ? beta : v);
    case CPUREF_HARDSIGMOID: {
        float t = alpha * v + beta;
        return t < 0 ? 0 : (t > 1 ? 1 : t);
    }
    case CPUREF_HARDSWISH: {
        float t = v / 6.0f + 0.5f;
        return v * (t < 0 ? 0 : (t > 1 ? 1 : t));
    }
    case CPUREF_ELU: return v >= 0 ? v : alpha * expm1f(v);
    case CPUREF_SELU: return beta * (v > 0 ? v : alpha * expm1f(v));
    case CPUREF_SOFTPLUS: return v > 20.0f ? v : log1pf(expf(v));
    case CPUREF_SIN: return sinf(v);
    case CPUREF_COS: return cosf(v);
    case CPUREF_FLOOR: return floorf(v);
    case CPUREF_CEIL: return ceilf(v);
    case CPUREF_SIGN: return v > 0 ? 1.0f : (v < 0 ? -1.0f : v);
    }
    return v;
}

void cpuref_unary(enum cpuref_unop op, float alpha, float beta, const float *x, float *y,
                  uint64_t n)
{
    int64_t nn = (int64_t)n;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nn; i++) y[i] = unop(op, alpha, beta, x[i]);
}

static inline double load(const void *p, enum graph_dtype t, int64_t i)
{
    return t == GRAPH_I64 ? (double)((const int64_t *)p)[i] : (double)((const float *)p)[i];
}

void cpuref_binary(enum cpuref_binop op, const void *a, enum graph_dtype at,
                   const struct cpuk_shape *as, const void *b, enum graph_dtype bt,
                   const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys)
{
    int64_t sa[CPUK_MAX_DIMS], sb[CPUK_MAX_DIMS];
    bstrides(as, ys, sa);
    bstrides(bs, ys, sb);
    int64_t n = elems(ys);
    int both_int = at == GRAPH_I64 && bt == GRAPH_I64;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        int64_t ia = offset_of(o, ys, sa), ib = offset_of(o, ys, sb);
        float r;
        if (both_int) {
            int64_t x = ((const int64_t *)a)[ia], z = ((const int64_t *)b)[ib];
            switch (op) {
            case CPUREF_MAX: r = (float)(x > z ? x : z); break;
            case CPUREF_MIN: r = (float)(x < z ? x : z); break;
            case CPUREF_EQUAL: r = x == z; break;
            case CPUREF_LESS: r = x < z; break;
            case CPUREF_GREATER: r = x > z; break;
            case CPUREF_POW: r = powf((float)x, (float)z); break;
            case CPUREF_AND: r = x != 0 && z != 0; break;
            case CPUREF_OR: r = x != 0 || z != 0; break;
            case CPUREF_MOD: case CPUREF_FMOD: r = (float)(z == 0 ? 0 : x % z); break; /* float operands only */
            default: r = (float)(x < 0 ? x * z : x); break;
            }
        } else {
            double x = load(a, at, ia), z = load(b, bt, ib);
            switch (op) {
            /* fmax/fmin would drop a NaN; ONNX propagates it. */
            case CPUREF_MAX: r = (float)(x != x || x > z ? x : z); break;
            case CPUREF_MIN: r = (float)(x != x || x < z ? x : z); break;
            case CPUREF_EQUAL: r = x == z; break;
            case CPUREF_LESS: r = x < z; break;
            case CPUREF_GREATER: r = x > z; break;
            case CPUREF_POW: r = powf((float)x, (float)z); break;
            case CPUREF_AND: r = x != 0 && z != 0; break;
            case CPUREF_OR: r = x != 0 || z != 0; break;
            case CPUREF_FMOD: r = fmodf((float)x, (float)z); break;
            case CPUREF_MOD: {
                float m = fmodf((float)x, (float)z);
                r = m != 0 && ((m < 0) != ((float)z < 0)) ? m + (float)z : m;
                break;
            }
            default: r = (float)x < 0 ? (float)x * (float)z : (float)x; break;
            }
        }
        y[o] = r;
    }
}

void cpuref_not(const void *x, enum graph_dtype xt, float *y, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) y[i] = load(x, xt, (int64_t)i) == 0.0 ? 1.0f : 0.0f;
}

void cpuref_cast(const void *x, enum graph_dtype xt, void *y, enum graph_dtype yt, uint64_t n)
{
    if (xt == yt) {
        memmove(y, x, n * (xt == GRAPH_I64 ? 8 : 4));
        return;
    }
    if (yt == GRAPH_F32) {
        for (uint64_t i = 0; i < n; i++) ((float *)y)[i] = (float)((const int64_t *)x)[i];
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        float v = ((const float *)x)[i];
        int64_t r;
        if (v != v) r = 0;
        else if (v >= 9.2233720368547758e18f) r = INT64_MAX;
        else if (v <= -9.2233720368547758e18f) r = INT64_MIN;
        else r = (int64_t)v; /* truncates toward zero */
        ((int64_t *)y)[i] = r;
    }
}

void cpuref_reduce(enum cpuref_reduce op, const float *x, const struct cpuk_shape *xs,
                   unsigned axes_mask, float *y)
{
    int64_t kdims[CPUK_MAX_DIMS], kstr[CPUK_MAX_DIMS], rdims[CPUK_MAX_DIMS], rstr[CPUK_MAX_DIMS];
    int nk = 0, nr = 0;
    int64_t acc = 1, str[CPUK_MAX_DIMS];
    for (int i = xs->ndims - 1; i >= 0; i--) {
        str[i] = acc;
        acc *= xs->dims[i];
    }
    for (int i = 0; i < xs->ndims; i++) {
        if (axes_mask & (1u << i)) {
            rdims[nr] = xs->dims[i];
            rstr[nr++] = str[i];
        } else {
            kdims[nk] = xs->dims[i];
            kstr[nk++] = str[i];
        }
    }
    int64_t nout = 1, nred = 1;
    for (int i = 0; i < nk; i++) nout *= kdims[i];
    for (int i = 0; i < nr; i++) nred *= rdims[i];
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < nout; o++) {
        int64_t base = 0, rem = o;
        for (int i = nk - 1; i >= 0; i--) {
            base += (rem % kdims[i]) * kstr[i];
            rem /= kdims[i];
        }
        double s = op == CPUREF_RMAX ? -INFINITY : (op == CPUREF_RMIN ? INFINITY : 0.0);
        for (int64_t r = 0; r < nred; r++) {
            int64_t off = base, rr = r;
            for (int i = nr - 1; i >= 0; i--) {
                off += (rr % rdims[i]) * rstr[i];
                rr /= rdims[i];
            }
            double v = x[off];
            switch (op) {
            case CPUREF_RMEAN: case CPUREF_RSUM: s += v; break;
            case CPUREF_RMAX: if (v > s || v != v) s = v; break;
            case CPUREF_RMIN: if (v < s || v != v) s = v; break;
            }
        }
        if (op == CPUREF_RMEAN) s /= (double)nred;
        y[o] = (float)s;
    }
}

void cpuref_instancenorm(const float *x, float *y, int64_t n, int64_t c, int64_t inner,
                         const float *scale, const float *bias, float eps)
{
    int64_t rows = n * c;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * inner;
        float *py = y + r * inner;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < inner; i++) mean += px[i];
        mean /= (double)inner;
        for (int64_t i = 0; i < inner; i++) {
            double d = px[i] - mean;
            var += d * d;
        }
        var /= (double)inner;
        int64_t ch = r % c;
        double k = (double)scale[ch] / sqrt(var + (double)eps);
        for (int64_t i = 0; i < inner; i++) py[i] = (float)((px[i] - mean) * k + (double)bias[ch]);
    }
}

void cpuref_expand(const void *x, const struct cpuk_shape *xs, size_t esize, void *y,
                   const struct cpuk_shape *ys)
{
    int64_t sx[CPUK_MAX_DIMS];
    bstrides(xs, ys, sx);
    int64_t n = elems(ys);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++)
        memcpy((char *)y + (size_t)o * esize, (const char *)x + (size_t)offset_of(o, ys, sx) * esize,
               esize);
}

void cpuref_tile(const void *x, const struct cpuk_shape *xs, size_t esize, void *y,
                 const struct cpuk_shape *ys)
{
    int64_t n = elems(ys);
    int r = ys->ndims;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        int64_t rem = o, off = 0, acc = 1;
        for (int i = r - 1; i >= 0; i--) {
            int64_t idx = rem % ys->dims[i];
            rem /= ys->dims[i];
            off += (idx % xs->dims[i]) * acc;
            acc *= xs->dims[i];
        }
        memcpy((char *)y + (size_t)o * esize, (const char *)x + (size_t)off * esize, esize);
    }
}

void cpuref_pad(const float *x, const struct cpuk_shape *xs, const int64_t *pads,
                enum cpuref_pad_mode mode, float value, float *y, const struct cpuk_shape *ys)
{
    int r = ys->ndims;
    int64_t n = elems(ys);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        int64_t rem = o, off = 0, acc = 1;
        int outside = 0;
        for (int i = r - 1; i >= 0; i--) {
            int64_t idx = rem % ys->dims[i], dim = xs->dims[i];
            rem /= ys->dims[i];
            int64_t j = idx - pads[i];
            if (j < 0 || j >= dim) {
                if (mode == CPUREF_PAD_CONSTANT) {
                    outside = 1;
                    j = 0;
                } else if (mode == CPUREF_PAD_EDGE) {
                    j = j < 0 ? 0 : dim - 1;
                } else {
                    /* reflect (shape.c keeps pads < dim, so one bounce) */
                    j = j < 0 ? -j : 2 * (dim - 1) - j;
                    if (dim == 1) j = 0;
                }
            }
            off += j * acc;
            acc *= dim;
        }
        y[o] = outside ? value : x[off];
    }
}

/* Source coordinate of output index o along an axis (graph.h's "coord").
 * len is the resized length as ONNX defines it: in * scale, which is not
 * the (floored) output size when scales were given. */
static double resize_coord(int64_t o, int64_t in, double len, int coord, double scale)
{
    switch (coord) {
    case 1: return (double)o / scale;
    case 2: return len <= 1 ? 0.0 : (double)o * (double)(in - 1) / (len - 1);
    case 3: return len > 1 ? ((double)o + 0.5) / scale - 0.5 : 0.0;
    default: return ((double)o + 0.5) / scale - 0.5;
    }
}

static int64_t clamp_i(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

static int64_t resize_nearest(double xo, int64_t in, int nearest)
{
    double f = floor(xo);
    int64_t i;
    switch (nearest) {
    case 1: i = (int64_t)(xo - f >= 0.5 ? f + 1 : f); break;  /* round_prefer_ceil */
    case 2: i = (int64_t)f; break;                              /* floor */
    case 3: i = (int64_t)ceil(xo); break;                       /* ceil */
    default: i = (int64_t)(xo - f > 0.5 ? f + 1 : f); break;    /* round_prefer_floor */
    }
    return clamp_i(i, in - 1);
}

/* Cubic convolution weights of the 4 taps around t in [0, 1) (ONNX's
 * coefficient a: -0.75 as PyTorch, -0.5 as TensorFlow). */
static void cubic_weights(double t, double a, double *w)
{
    double d[4] = {t + 1, t, 1 - t, 2 - t};
    for (int k = 0; k < 4; k++) {
        double z = d[k];
        w[k] = z <= 1 ? ((a + 2) * z - (a + 3)) * z * z + 1
                      : ((a * z - 5 * a) * z + 8 * a) * z - 4 * a;
    }
}

void cpuref_resize(const float *x, const struct cpuk_shape *xs, float *y,
                   const struct cpuk_shape *ys, const struct cpuref_resize_mode *rm,
                   const float *scales)
{
    int r = ys->ndims, mode = rm->mode;
    int64_t n = elems(ys), str[CPUK_MAX_DIMS], acc = 1;
    for (int i = r - 1; i >= 0; i--) {
        str[i] = acc;
        acc *= xs->dims[i];
    }
    /* interpolated axes and taps per axis (linear 2, cubic 4) */
    int lin[CPUK_MAX_DIMS], nlin = 0, ntap = mode == 2 ? 4 : 2;
    for (int i = 0; i < r; i++)
        if (mode != 0 && (xs->dims[i] != ys->dims[i] || (scales && scales[i] != 1.0f))) lin[nlin++] = i;
    int64_t ncorner = 1;
    for (int k = 0; k < nlin; k++) ncorner *= ntap;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        int64_t idx[CPUK_MAX_DIMS], rem = o, base = 0;
        int64_t ti[CPUK_MAX_DIMS][4];
        double tw[CPUK_MAX_DIMS][4];
        for (int i = r - 1; i >= 0; i--) {
            idx[i] = rem % ys->dims[i];
            rem /= ys->dims[i];
        }
        for (int i = 0; i < r; i++) {
            int64_t in = xs->dims[i];
            double scale = scales ? (double)scales[i] : (double)ys->dims[i] / (double)in;
            if (in == ys->dims[i] && scale == 1.0) {
                base += idx[i] * str[i];
                continue;
            }
            double len = scales ? (double)in * scale : (double)ys->dims[i];
            double xo = resize_coord(idx[i], in, len, rm->coord, scale);
            if (mode == 0) {
                base += resize_nearest(xo, in, rm->nearest) * str[i];
                continue;
            }
            double f = floor(xo), t = xo - f;
            int64_t first = (int64_t)f - (mode == 2 ? 1 : 0);
            if (mode == 1) {
                tw[i][0] = 1 - t;
                tw[i][1] = t;
            } else {
                cubic_weights(t, rm->cubic_a, tw[i]);
            }
            double wsum = 0;
            for (int k = 0; k < ntap; k++) {
                int64_t at = first + k;
                if (rm->exclude_outside && (at < 0 || at >= in)) tw[i][k] = 0;
                wsum += tw[i][k];
                ti[i][k] = clamp_i(at, in - 1); /* outside: the edge value */
            }
            if (rm->exclude_outside && wsum != 0)
                for (int k = 0; k < ntap; k++) tw[i][k] /= wsum;
        }
        double s = 0;
        for (int64_t corner = 0; corner < ncorner; corner++) {
            double wt = 1;
            int64_t off = base, c = corner;
            for (int k = 0; k < nlin; k++) {
                int a = lin[k], tap = (int)(c % ntap);
                c /= ntap;
                wt *= tw[a][tap];
                off += ti[a][tap] * str[a];
            }
            if (wt != 0) s += wt * x[off];
        }
        y[o] = (float)s;
    }
}

void cpuref_convtranspose(const float *x, const struct cpuk_shape *xs, const float *w,
                          const struct cpuk_shape *ws, const float *bias, float *y,
                          const struct cpuk_shape *ys, const struct cpuref_deconv *p)
{
    int sp = p->sp;
    int64_t in_sp[3] = {1, 1, 1}, out_sp[3] = {1, 1, 1}, k_sp[3] = {1, 1, 1};
    int64_t st[3] = {1, 1, 1}, dl[3] = {1, 1, 1}, pb[3] = {0, 0, 0};
    for (int i = 0; i < sp; i++) {
        in_sp[i] = xs->dims[2 + i];
        out_sp[i] = ys->dims[2 + i];
        k_sp[i] = ws->dims[2 + i];
        st[i] = p->stride[i];
        dl[i] = p->dilation[i];
        pb[i] = p->pad_begin[i];
    }
    int64_t N = xs->dims[0], cin = xs->dims[1], cout = ys->dims[1];
    int64_t cin_g = cin / p->group, cout_g = cout / p->group;
    int64_t in_size = in_sp[0] * in_sp[1] * in_sp[2], out_size = out_sp[0] * out_sp[1] * out_sp[2];
    int64_t k_size = k_sp[0] * k_sp[1] * k_sp[2];
    int64_t planes = N * cout;
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        int64_t nn = pl / cout, oc = pl % cout, g = oc / cout_g, ocl = oc % cout_g;
        float *py = y + pl * out_size;
        for (int64_t op = 0; op < out_size; op++) {
            int64_t o[3] = {op / (out_sp[1] * out_sp[2]), (op / out_sp[2]) % out_sp[1], op % out_sp[2]};
            double s = bias ? bias[oc] : 0.0;
            for (int64_t kk = 0; kk < k_size; kk++) {
                int64_t k[3] = {kk / (k_sp[1] * k_sp[2]), (kk / k_sp[2]) % k_sp[1], kk % k_sp[2]};
                int64_t ipos = 0;
                int ok = 1;
                for (int d = 0; d < 3 && ok; d++) {
                    int64_t t = o[d] + pb[d] - k[d] * dl[d];
                    if (t < 0 || t % st[d]) ok = 0;
                    else {
                        int64_t i = t / st[d];
                        if (i >= in_sp[d]) ok = 0;
                        else ipos = ipos * in_sp[d] + i;
                    }
                }
                if (!ok) continue;
                for (int64_t icl = 0; icl < cin_g; icl++) {
                    int64_t ic = g * cin_g + icl;
                    s += (double)x[(nn * cin + ic) * in_size + ipos] *
                         (double)w[(ic * cout_g + ocl) * k_size + kk];
                }
            }
            py[op] = (float)s;
        }
    }
}

void cpuref_matmul(const float *a, const struct cpuk_shape *as, const float *b,
                   const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys)
{
    int r = ys->ndims;
    int64_t M = ys->dims[r - 2], N = ys->dims[r - 1], K = as->dims[as->ndims - 1];
    struct cpuk_shape bat = *ys, ab = *as, bb = *bs;
    bat.ndims = r - 2;
    ab.ndims = as->ndims - 2;
    bb.ndims = bs->ndims - 2;
    int64_t sa[CPUK_MAX_DIMS], sb[CPUK_MAX_DIMS];
    bstrides(&ab, &bat, sa);
    bstrides(&bb, &bat, sb);
    int64_t nbat = elems(&bat), rows = nbat * M;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        int64_t bi = row / M, m = row % M;
        const float *pa = a + (offset_of(bi, &bat, sa) * M + m) * K;
        const float *pb = b + offset_of(bi, &bat, sb) * K * N;
        float *py = y + row * N;
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)pa[k] * (double)pb[k * N + j];
            py[j] = (float)s;
        }
    }
}

void cpuref_gemm(const float *a, const float *b, const float *c, const struct cpuk_shape *cs,
                 float *y, int64_t m, int64_t k, int64_t n, int ta, int tb, float alpha,
                 float beta)
{
    struct cpuk_shape ys = {2, {m, n}};
    int64_t sc[CPUK_MAX_DIMS] = {0, 0};
    if (c) bstrides(cs, &ys, sc);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t q = 0; q < k; q++)
                s += (double)(ta ? a[q * m + i] : a[i * k + q]) * (double)(tb ? b[j * k + q] : b[q * n + j]);
            s *= alpha;
            if (c) s += (double)beta * c[i * sc[0] + j * sc[1]];
            y[i * n + j] = (float)s;
        }
}

int cpuref_gather_findex(const void *data, const struct cpuk_shape *ds, size_t esize,
                         const float *idx, uint64_t nidx, int axis, void *out)
{
    int64_t outer = 1, inner = 1, dim = ds->dims[axis];
    for (int i = 0; i < axis; i++) outer *= ds->dims[i];
    for (int i = axis + 1; i < ds->ndims; i++) inner *= ds->dims[i];
    for (uint64_t k = 0; k < nidx; k++)
        if (!(idx[k] >= (float)-dim && idx[k] < (float)dim)) return PPS_ERANGE;
    size_t row = (size_t)inner * esize;
    int64_t total = outer * (int64_t)nidx;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < total; t++) {
        int64_t o = t / (int64_t)nidx, k = t % (int64_t)nidx;
        int64_t i = (int64_t)lrintf(idx[k]);
        if (i < 0) i += dim;
        if (i < 0) i = 0;
        if (i >= dim) i = dim - 1;
        memcpy((char *)out + (size_t)t * row, (const char *)data + ((size_t)(o * dim + i)) * row, row);
    }
    return 0;
}
