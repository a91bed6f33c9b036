/* cpu_kernels: plain C kernels (see cpu_kernels.h).
 *
 * Broadcasting kernels first coalesce adjacent dimensions that broadcast
 * the same way, so the inner loop runs over as many contiguous elements as
 * possible and the index arithmetic happens once per row.
 *
 * The easy thing to get wrong: results must not depend on the thread
 * count's partitioning for the bit-identical guarantee; every kernel here
 * computes each output element independently (no cross-thread reductions). */
#include "exec/cpu/cpu_kernels.h"

#include <math.h>
#include <string.h>

#include "common/err.h"

/* Strides (in elements) of a tensor of shape s viewed in the index space of
 * ys (rank r, right-aligned), 0 along broadcast dimensions. */
static void bcast_strides(const struct cpuk_shape *s, const struct cpuk_shape *ys, int64_t *st)
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

/* Merge dims i and i+1 where every operand's stride pattern allows it.
 * dims/strides are rewritten in place; returns the new rank (>= 1). */
static int coalesce(int r, int64_t *dims, int nops, int64_t (*st)[CPUK_MAX_DIMS])
{
    if (r == 0) {
        dims[0] = 1;
        for (int k = 0; k < nops; k++) st[k][0] = 0;
        return 1;
    }
    int out = 0;
    for (int i = 0; i < r; i++) {
        if (dims[i] == 1 && r > 1) continue; /* size-1 dims contribute nothing */
        if (out > 0) {
            int ok = 1;
            for (int k = 0; k < nops && ok; k++)
                ok = st[k][out - 1] == st[k][i] * dims[i];
            if (ok) {
                dims[out - 1] *= dims[i];
                for (int k = 0; k < nops; k++) st[k][out - 1] = st[k][i];
                continue;
            }
        }
        dims[out] = dims[i];
        for (int k = 0; k < nops; k++) st[k][out] = st[k][i];
        out++;
    }
    if (out == 0) {
        dims[0] = 1;
        for (int k = 0; k < nops; k++) st[k][0] = 0;
        out = 1;
    }
    return out;
}

static inline float binop(enum cpuk_binop op, float a, float b)
{
    switch (op) {
    case CPUK_ADD: return a + b;
    case CPUK_SUB: return a - b;
    case CPUK_MUL: return a * b;
    case CPUK_DIV: return a / b;
    case CPUK_POW: return powf(a, b);
    }
    return 0;
}

#define BINARY_ROW(OPEXPR)                                                     \
    do {                                                                       \
        if (sa == 1 && sb == 1)                                                \
            for (int64_t j = 0; j < inner; j++) { float x = pa[j], z = pb[j]; py[j] = (OPEXPR); } \
        else if (sa == 1 && sb == 0)                                           \
            for (int64_t j = 0; j < inner; j++) { float x = pa[j], z = pb[0]; py[j] = (OPEXPR); } \
        else if (sa == 0 && sb == 1)                                           \
            for (int64_t j = 0; j < inner; j++) { float x = pa[0], z = pb[j]; py[j] = (OPEXPR); } \
        else                                                                   \
            for (int64_t j = 0; j < inner; j++) { float x = pa[j * sa], z = pb[j * sb]; py[j] = (OPEXPR); } \
    } while (0)

void cpuk_binary(enum cpuk_binop op, const float *a, const struct cpuk_shape *as, const float *b,
                 const struct cpuk_shape *bs, float *y, const struct cpuk_shape *ys)
{
    int64_t st[3][CPUK_MAX_DIMS], dims[CPUK_MAX_DIMS];
    int r = ys->ndims;
    memcpy(dims, ys->dims, sizeof(int64_t) * (size_t)r);
    bcast_strides(as, ys, st[0]);
    bcast_strides(bs, ys, st[1]);
    bcast_strides(ys, ys, st[2]);
    r = coalesce(r, dims, 3, st);
    int64_t inner = dims[r - 1], outer = 1;
    for (int i = 0; i < r - 1; i++) outer *= dims[i];
    int64_t sa = st[0][r - 1], sb = st[1][r - 1];
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, oa = 0, ob = 0, oy = 0;
        for (int i = r - 2; i >= 0; i--) {
            int64_t idx = rem % dims[i];
            rem /= dims[i];
            oa += idx * st[0][i];
            ob += idx * st[1][i];
            oy += idx * st[2][i];
        }
        const float *pa = a + oa, *pb = b + ob;
        float *py = y + oy;
        switch (op) {
        case CPUK_ADD: BINARY_ROW(x + z); break;
        case CPUK_SUB: BINARY_ROW(x - z); break;
        case CPUK_MUL: BINARY_ROW(x * z); break;
        case CPUK_DIV: BINARY_ROW(x / z); break;
        case CPUK_POW: BINARY_ROW(binop(CPUK_POW, x, z)); break;
        }
    }
}

void cpuk_where(const void *cond, enum graph_dtype cond_type, const struct cpuk_shape *cs,
                const float *x, const struct cpuk_shape *xs, const float *z,
                const struct cpuk_shape *zs, float *y, const struct cpuk_shape *ys)
{
    int64_t st[4][CPUK_MAX_DIMS], dims[CPUK_MAX_DIMS];
    int r = ys->ndims;
    memcpy(dims, ys->dims, sizeof(int64_t) * (size_t)r);
    bcast_strides(cs, ys, st[0]);
    bcast_strides(xs, ys, st[1]);
    bcast_strides(zs, ys, st[2]);
    bcast_strides(ys, ys, st[3]);
    r = coalesce(r, dims, 4, st);
    int64_t inner = dims[r - 1], outer = 1;
    for (int i = 0; i < r - 1; i++) outer *= dims[i];
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, off[4] = {0, 0, 0, 0};
        for (int i = r - 2; i >= 0; i--) {
            int64_t idx = rem % dims[i];
            rem /= dims[i];
            for (int k = 0; k < 4; k++) off[k] += idx * st[k][i];
        }
        for (int64_t j = 0; j < inner; j++) {
            int64_t ci = off[0] + j * st[0][r - 1];
            int c = cond_type == GRAPH_I64 ? ((const int64_t *)cond)[ci] != 0
                                           : ((const float *)cond)[ci] != 0.0f;
            y[off[3] + j] = c ? x[off[1] + j * st[1][r - 1]] : z[off[2] + j * st[2][r - 1]];
        }
    }
}

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
static inline float gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

void cpuk_unary(enum cpuk_unop op, const float *x, float *y, uint64_t n)
{
    int64_t nn = (int64_t)n;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nn; i++) {
        float v = x[i];
        switch (op) {
        case CPUK_ERF: v = erff(v); break;
        case CPUK_RELU: v = v > 0 ? v : 0; break;
        case CPUK_TANH: v = tanhf(v); break;
        case CPUK_SIGMOID: v = 1.0f / (1.0f + expf(-v)); break;
        case CPUK_SQRT: v = sqrtf(v); break;
        case CPUK_GELU: v = gelu_erf(v); break;
        case CPUK_GELU_TANH: v = gelu_tanh(v); break;
        }
        y[i] = v;
    }
}

int cpuk_gather(const void *data, const struct cpuk_shape *ds, size_t esize, const int64_t *idx,
                uint64_t nidx, int axis, void *out)
{
    int64_t outer = 1, inner = 1, dim = ds->dims[axis];
    for (int i = 0; i < axis; i++) outer *= ds->dims[i];
    for (int i = axis + 1; i < ds->ndims; i++) inner *= ds->dims[i];
    for (uint64_t k = 0; k < nidx; k++)
        if (idx[k] < 0 || idx[k] >= dim) return PPS_ERANGE;
    size_t row = (size_t)inner * esize;
    int64_t total = outer * (int64_t)nidx;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < total; t++) {
        int64_t o = t / (int64_t)nidx, k = t % (int64_t)nidx;
        int64_t i = idx[k];
        memcpy((char *)out + (size_t)t * row, (const char *)data + ((size_t)(o * dim + i)) * row, row);
    }
    return 0;
}

void cpuk_slice(const void *x, const struct cpuk_shape *xs, size_t esize, const int64_t *start,
                const int64_t *step, const int64_t *count, void *y)
{
    int r = xs->ndims;
    int64_t xst[CPUK_MAX_DIMS], acc = 1;
    for (int i = r - 1; i >= 0; i--) {
        xst[i] = acc;
        acc *= xs->dims[i];
    }
    int64_t inner = count[r - 1], outer = 1;
    for (int i = 0; i < r - 1; i++) outer *= count[i];
    int contiguous = step[r - 1] == 1;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, off = start[r - 1] * xst[r - 1];
        for (int i = r - 2; i >= 0; i--) {
            int64_t idx = rem % count[i];
            rem /= count[i];
            off += (start[i] + idx * step[i]) * xst[i];
        }
        char *dst = (char *)y + (size_t)(o * inner) * esize;
        const char *src = (const char *)x + (size_t)off * esize;
        if (contiguous) {
            memcpy(dst, src, (size_t)inner * esize);
        } else {
            for (int64_t j = 0; j < inner; j++)
                memcpy(dst + (size_t)j * esize, src + (ptrdiff_t)(j * step[r - 1]) * (ptrdiff_t)esize, esize);
        }
    }
}

void cpuk_transpose(const void *x, const struct cpuk_shape *xs, size_t esize, const int *perm,
                    void *y)
{
    int r = xs->ndims;
    if (r < 1 || r > CPUK_MAX_DIMS) {
        memcpy(y, x, esize);
        return;
    }
    int64_t xst[CPUK_MAX_DIMS], acc = 1, yd[CPUK_MAX_DIMS] = {0}, pst[CPUK_MAX_DIMS] = {0};
    for (int i = r - 1; i >= 0; i--) {
        xst[i] = acc;
        acc *= xs->dims[i];
    }
    for (int i = 0; i < r; i++) {
        yd[i] = xs->dims[perm[i]];
        pst[i] = xst[perm[i]];
    }
    int64_t inner = yd[r - 1], outer = 1, sin = pst[r - 1];
    for (int i = 0; i < r - 1; i++) outer *= yd[i];
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, off = 0;
        for (int i = r - 2; i >= 0; i--) {
            int64_t idx = rem % yd[i];
            rem /= yd[i];
            off += idx * pst[i];
        }
        char *dst = (char *)y + (size_t)(o * inner) * esize;
        const char *src = (const char *)x + (size_t)off * esize;
        if (esize == 4) {
            for (int64_t j = 0; j < inner; j++) ((float *)dst)[j] = ((const float *)src)[j * sin];
        } else {
            for (int64_t j = 0; j < inner; j++)
                memcpy(dst + (size_t)j * esize, src + (size_t)(j * sin) * esize, esize);
        }
    }
}

void cpuk_concat(const void *const *xs, const struct cpuk_shape *shapes, int n, size_t esize,
                 int axis, void *y)
{
    int64_t outer = 1, total_axis = 0;
    for (int i = 0; i < axis; i++) outer *= shapes[0].dims[i];
    int64_t inner = 1;
    for (int i = axis + 1; i < shapes[0].ndims; i++) inner *= shapes[0].dims[i];
    for (int k = 0; k < n; k++) total_axis += shapes[k].dims[axis];
    size_t yrow = (size_t)(total_axis * inner) * esize;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        size_t pos = 0;
        for (int k = 0; k < n; k++) {
            size_t len = (size_t)(shapes[k].dims[axis] * inner) * esize;
            memcpy((char *)y + (size_t)o * yrow + pos, (const char *)xs[k] + (size_t)o * len, len);
            pos += len;
        }
    }
}

void cpuk_avgpool(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y, int64_t oh,
                  int64_t ow, const int64_t *kernel, const int64_t *stride,
                  const int64_t *pad_begin, const int64_t *pad_end, int count_include_pad)
{
    int64_t planes = n * c;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int64_t i = 0; i < oh; i++) {
            int64_t hs = i * stride[0] - pad_begin[0];
            int64_t he = hs + kernel[0];
            if (he > h + pad_end[0]) he = h + pad_end[0];
            int64_t hsc = hs < 0 ? 0 : hs, hec = he > h ? h : he;
            for (int64_t j = 0; j < ow; j++) {
                int64_t ws = j * stride[1] - pad_begin[1];
                int64_t we = ws + kernel[1];
                if (we > w + pad_end[1]) we = w + pad_end[1];
                int64_t wsc = ws < 0 ? 0 : ws, wec = we > w ? w : we;
                float sum = 0;
                for (int64_t a = hsc; a < hec; a++)
                    for (int64_t b = wsc; b < wec; b++) sum += xp[a * w + b];
                int64_t div = count_include_pad ? (he - hs) * (we - ws) : (hec - hsc) * (wec - wsc);
                yp[i * ow + j] = div > 0 ? sum / (float)div : 0.0f;
            }
        }
    }
}

void cpuk_layernorm(const float *x, float *y, int64_t outer, int64_t inner, const float *scale,
                    const float *bias, float eps)
{
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        const float *xr = x + o * inner;
        float *yr = y + o * inner;
        double mean = 0, var = 0;
        for (int64_t j = 0; j < inner; j++) mean += xr[j];
        mean /= (double)inner;
        for (int64_t j = 0; j < inner; j++) {
            double d = xr[j] - mean;
            var += d * d;
        }
        var /= (double)inner;
        float inv = (float)(1.0 / sqrt(var + eps));
        for (int64_t j = 0; j < inner; j++) {
            float v = (float)(xr[j] - mean) * inv * scale[j];
            yr[j] = bias ? v + bias[j] : v;
        }
    }
}
