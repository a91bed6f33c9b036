/* Per-op tests of the executor and its CPU backend against naive reference
 * implementations written here in plain C (loops straight from the ONNX
 * operator definitions, double accumulation), including odd shapes:
 * asymmetric padding, stride, dilation, groups and depthwise, non-square
 * kernels and inputs, ceil_mode pooling, numpy broadcasting. Also checks
 * fusion (fused == unfused == reference), views (slices, transposes,
 * reshapes and views of views) whose leading dimensions are all 1, the
 * pipelined gates (batches arriving late and out of order give
 * bit-identical output), and errors (bad input size, out-of-range or
 * negative token id, failed parameter fetch), optional inputs left out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "exec/exec_mem.h"
#include "exec/executor.h"
#include "exec/memplan.h"
#include "model/batching.h"
#include "model/graph.h"

/* ---- a tiny model harness ---------------------------------------------- */

#define TM_MAXP 64

struct tmodel {
    struct graph g;
    int np;
    char pname[TM_MAXP][GRAPH_NAME_MAX + 1];
    float *pdata[TM_MAXP];
    uint8_t **batches;
};

static uint64_t rng = 88172645463325252ull;
static float frand(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 11) * (1.0 / 9007199254740992.0));
}

static float *rand_buf(uint64_t n, float lo, float hi)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (uint64_t i = 0; i < n; i++) p[i] = frand(lo, hi);
    return p;
}

static void tm_init(struct tmodel *t, const char *name)
{
    memset(t, 0, sizeof *t);
    graph_init(&t->g, name);
}

static int32_t tm_param_data(struct tmodel *t, const char *name, int nd, const int64_t *dims,
                             const float *data)
{
    assert_true(t->np < TM_MAXP);
    uint64_t n = 1;
    for (int i = 0; i < nd; i++) n *= (uint64_t)dims[i];
    snprintf(t->pname[t->np], sizeof t->pname[0], "%s", name);
    t->pdata[t->np] = malloc(n * sizeof(float));
    memcpy(t->pdata[t->np], data, n * sizeof(float));
    t->np++;
    return graph_add_param(&t->g, name, nd, dims);
}

static int32_t tm_param(struct tmodel *t, const char *name, int nd, const int64_t *dims, float lo,
                        float hi)
{
    uint64_t n = 1;
    for (int i = 0; i < nd; i++) n *= (uint64_t)dims[i];
    float *d = rand_buf(n, lo, hi);
    int32_t id = tm_param_data(t, name, nd, dims, d);
    free(d);
    return id;
}

static const float *tm_data(const struct tmodel *t, const char *name)
{
    for (int i = 0; i < t->np; i++)
        if (strcmp(t->pname[i], name) == 0) return t->pdata[i];
    fail_msg("no data for param %s", name);
    return NULL;
}

static void tm_batch(struct tmodel *t, uint64_t max_batch)
{
    assert_int_equal(batching_apply(&t->g, max_batch), 0);
    t->batches = calloc((size_t)t->g.nbatches, sizeof *t->batches);
    for (int b = 0; b < t->g.nbatches; b++) {
        t->batches[b] = aligned_alloc(512, t->g.batches[b].nbytes);
        memset(t->batches[b], 0, t->g.batches[b].nbytes);
    }
    for (int p = 0; p < t->g.nparams; p++) {
        const struct graph_param *gp = &t->g.params[p];
        memcpy(t->batches[gp->batch] + gp->offset, tm_data(t, gp->name), gp->nbytes);
    }
}

static void tm_free(struct tmodel *t)
{
    for (int b = 0; t->batches && b < t->g.nbatches; b++) free(t->batches[b]);
    free(t->batches);
    for (int i = 0; i < t->np; i++) free(t->pdata[i]);
    graph_free(&t->g);
}

enum feed { FEED_ALL_FIRST, FEED_THREAD_DELAYED, FEED_THREAD_REVERSED };

struct feeder {
    struct exec_model *m;
    struct tmodel *t;
    enum feed mode;
};

static void *feeder_main(void *arg)
{
    struct feeder *f = arg;
    int nb = f->t->g.nbatches;
    for (int i = 0; i < nb; i++) {
        int b = f->mode == FEED_THREAD_REVERSED ? nb - 1 - i : i;
        usleep((useconds_t)(frand(0, 3000)));
        assert_int_equal(exec_batch_arrived(f->m, b, f->t->batches[b], f->t->g.batches[b].nbytes), 0);
    }
    return NULL;
}

/* Run t's graph (batched with max_batch) at batch size n; returns output 0
 * (malloc'ed) and its element count. */
static float *tm_run_opts(struct tmodel *t, int64_t n, const void *const *inputs, uint64_t *nout,
                          int no_fusion, enum feed mode, int expect_rc)
{
    struct exec_options opt;
    exec_options_default(&opt);
    opt.no_fusion = no_fusion;
    struct exec_model *m;
    char err[512] = "";
    int rc = exec_model_create(&m, &t->g, &opt, err, sizeof err);
    if (rc) fail_msg("exec_model_create: %s", err);
    pthread_t th;
    struct feeder f = {m, t, mode};
    if (mode == FEED_ALL_FIRST) {
        for (int b = 0; b < t->g.nbatches; b++)
            assert_int_equal(exec_batch_arrived(m, b, t->batches[b], t->g.batches[b].nbytes), 0);
    } else {
        assert_int_equal(pthread_create(&th, NULL, feeder_main, &f), 0);
    }
    uint64_t in_bytes[4];
    for (int i = 0; i < t->g.ninputs; i++) {
        struct exec_tensor ti;
        assert_int_equal(exec_input_info(m, i, n, &ti), 0);
        in_bytes[i] = ti.nbytes;
    }
    struct exec_tensor to;
    assert_int_equal(exec_output_info(m, 0, n, &to, err, sizeof err), 0);
    uint64_t elems = to.nbytes / 4;
    float *out = malloc(to.nbytes);
    void *outs[1] = {out};
    struct exec_timing tim;
    rc = exec_run(m, n, inputs, in_bytes, outs, &tim, err, sizeof err);
    if (rc != expect_rc) fail_msg("exec_run returned %d (%s), expected %d", rc, err, expect_rc);
    if (!rc) {
        /* Weights the first run used in place are relaid (the same bits
         * come out), then a run reuses the plan and prepared weights. */
        float *again = malloc(to.nbytes);
        void *outs2[1] = {again};
        assert_true(exec_finish_layout(m) >= 0);
        assert_int_equal(exec_layout_final(m), 1);
        assert_int_equal(exec_run(m, n, inputs, in_bytes, outs2, &tim, err, sizeof err), 0);
        assert_memory_equal(out, again, to.nbytes);
        assert_int_equal(exec_run(m, n, inputs, in_bytes, outs2, &tim, err, sizeof err), 0);
        assert_int_equal(tim.plan_ms, 0.0);
        assert_memory_equal(out, again, to.nbytes);
        free(again);
    }
    if (mode != FEED_ALL_FIRST) pthread_join(th, NULL);
    exec_model_destroy(m);
    *nout = elems;
    return out;
}

static float *tm_run(struct tmodel *t, int64_t n, const void *const *inputs, uint64_t *nout)
{
    return tm_run_opts(t, n, inputs, nout, 0, FEED_ALL_FIRST, 0);
}

/* Normalised max error: max|got-ref| / max(max|ref|, 1e-3). */
static void check_close(const char *what, const float *got, const float *ref, uint64_t n, double tol)
{
    double maxd = 0, maxr = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) fail_msg("%s: element %llu is %f", what, (unsigned long long)i, got[i]);
        double d = fabs((double)got[i] - (double)ref[i]);
        if (d > maxd) maxd = d;
        if (fabs(ref[i]) > maxr) maxr = fabs(ref[i]);
    }
    double e = maxd / (maxr > 1e-3 ? maxr : 1e-3);
    if (e > tol) fail_msg("%s: normalised error %.3g > %.3g", what, e, tol);
}

/* ---- naive references -------------------------------------------------- */

struct win {
    int64_t k[2], s[2], d[2], pb[2], pe[2];
};

static int64_t win_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe, int ceil_mode)
{
    int64_t ext = (k - 1) * d + 1;
    double q = (double)(in + pb + pe - ext) / (double)s;
    int64_t out = (int64_t)(ceil_mode ? ceil(q) : floor(q)) + 1;
    if (ceil_mode && (out - 1) * s >= in + pb) out--;
    return out;
}

static void ref_conv(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const float *w,
                     int64_t M, const float *b, const struct win *p, int64_t G, float *y,
                     int64_t OH, int64_t OW)
{
    int64_t cg = C / G, mg = M / G;
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double acc = b ? b[m] : 0;
                    int64_t g = m / mg;
                    for (int64_t c = 0; c < cg; c++)
                        for (int64_t kh = 0; kh < p->k[0]; kh++)
                            for (int64_t kw = 0; kw < p->k[1]; kw++) {
                                int64_t ih = oh * p->s[0] - p->pb[0] + kh * p->d[0];
                                int64_t iw = ow * p->s[1] - p->pb[1] + kw * p->d[1];
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                acc += (double)x[((n * C + g * cg + c) * H + ih) * W + iw] *
                                       w[((m * cg + c) * p->k[0] + kh) * p->k[1] + kw];
                            }
                    y[((n * M + m) * OH + oh) * OW + ow] = (float)acc;
                }
}

static void ref_bn(float *x, int64_t N, int64_t C, int64_t inner, const float *gamma,
                   const float *beta, const float *mean, const float *var, float eps)
{
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < inner; i++) {
                float *v = &x[(n * C + c) * inner + i];
                *v = (float)(((double)*v - mean[c]) / sqrt((double)var[c] + eps) * gamma[c] + beta[c]);
            }
}

static void ref_pool(int is_max, int include_pad, const float *x, int64_t N, int64_t C, int64_t H,
                     int64_t W, const struct win *p, float *y, int64_t OH, int64_t OW)
{
    for (int64_t nc = 0; nc < N * C; nc++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                double acc = is_max ? -INFINITY : 0;
                int64_t cnt = 0, cnt_pad = 0;
                for (int64_t kh = 0; kh < p->k[0]; kh++)
                    for (int64_t kw = 0; kw < p->k[1]; kw++) {
                        int64_t ih = oh * p->s[0] - p->pb[0] + kh * p->d[0];
                        int64_t iw = ow * p->s[1] - p->pb[1] + kw * p->d[1];
                        if (ih < H + p->pe[0] && iw < W + p->pe[1]) cnt_pad++;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        double v = x[(nc * H + ih) * W + iw];
                        if (is_max) acc = v > acc ? v : acc;
                        else acc += v;
                        cnt++;
                    }
                if (!is_max) acc /= (double)(include_pad ? cnt_pad : cnt);
                y[(nc * OH + oh) * OW + ow] = (float)acc;
            }
}

/* Numpy-broadcast binary op on shapes given as (rank, dims). */
static void ref_broadcast(int op, const float *a, int ar, const int64_t *ad, const float *b, int br,
                          const int64_t *bd, float *y, int yr, const int64_t *yd)
{
    int64_t total = 1;
    for (int i = 0; i < yr; i++) total *= yd[i];
    for (int64_t t = 0; t < total; t++) {
        int64_t rem = t, ia = 0, ib = 0, sa = 1, sb = 1;
        for (int i = yr - 1; i >= 0; i--) {
            int64_t idx = rem % yd[i];
            rem /= yd[i];
            int ai = i - (yr - ar), bi = i - (yr - br);
            if (ai >= 0) {
                ia += (ad[ai] == 1 ? 0 : idx) * sa;
                sa *= ad[ai];
            }
            if (bi >= 0) {
                ib += (bd[bi] == 1 ? 0 : idx) * sb;
                sb *= bd[bi];
            }
        }
        double u = a[ia], v = b[ib], r = 0;
        switch (op) {
        case GRAPH_OP_ADD: r = u + v; break;
        case GRAPH_OP_SUB: r = u - v; break;
        case GRAPH_OP_MUL: r = u * v; break;
        case GRAPH_OP_DIV: r = u / v; break;
        case GRAPH_OP_POW: r = pow(u, v); break;
        default: fail();
        }
        y[t] = (float)r;
    }
}

/* y[M,N] = alpha * A[M,K] x op(B) + beta * c[N] */
static void ref_gemm(const float *a, int64_t M, int64_t K, const float *b, int64_t N, int transb,
                     const float *c, float alpha, float beta, float *y)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)a[i * K + k] * (transb ? b[j * K + k] : b[k * N + j]);
            y[i * N + j] = (float)(alpha * acc + (c ? beta * c[j] : 0));
        }
}

static void ref_softmax(const float *x, float *y, int64_t outer, int64_t n, int64_t inner)
{
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            double mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < n; j++) mx = fmax(mx, x[(o * n + j) * inner + i]);
            for (int64_t j = 0; j < n; j++) s += exp(x[(o * n + j) * inner + i] - mx);
            for (int64_t j = 0; j < n; j++)
                y[(o * n + j) * inner + i] = (float)(exp(x[(o * n + j) * inner + i] - mx) / s);
        }
}

static void ref_layernorm(const float *x, float *y, int64_t outer, int64_t n, const float *g,
                          const float *b, float eps)
{
    for (int64_t o = 0; o < outer; o++) {
        double mean = 0, var = 0;
        for (int64_t j = 0; j < n; j++) mean += x[o * n + j];
        mean /= (double)n;
        for (int64_t j = 0; j < n; j++) var += (x[o * n + j] - mean) * (x[o * n + j] - mean);
        var /= (double)n;
        for (int64_t j = 0; j < n; j++)
            y[o * n + j] = (float)((x[o * n + j] - mean) / sqrt(var + eps) * g[j] + (b ? b[j] : 0));
    }
}

/* ---- conv tests -------------------------------------------------------- */

struct conv_case {
    int64_t n, c, h, w, m, g;
    int64_t kh, kw, sh, sw, dh, dw, pads[4];
    int bias;
};

static void run_conv_case(const struct conv_case *cc)
{
    struct tmodel t;
    tm_init(&t, "conv");
    int64_t xd[4] = {-1, cc->c, cc->h, cc->w};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    int64_t wd[4] = {cc->m, cc->c / cc->g, cc->kh, cc->kw}, bd[1] = {cc->m};
    int32_t ps[2] = {tm_param(&t, "w", 4, wd, -0.5f, 0.5f), cc->bias ? tm_param(&t, "b", 1, bd, -1, 1) : -1};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv", 1, &x, cc->bias ? 2 : 1, ps);
    int64_t k[2] = {cc->kh, cc->kw}, s[2] = {cc->sh, cc->sw}, d[2] = {cc->dh, cc->dw};
    graph_set_ints(&t.g, "kernel_shape", 2, k);
    graph_set_ints(&t.g, "strides", 2, s);
    graph_set_ints(&t.g, "dilations", 2, d);
    graph_set_ints(&t.g, "pads", 4, cc->pads);
    graph_set_int(&t.g, "group", cc->g);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);

    struct win p = {{cc->kh, cc->kw}, {cc->sh, cc->sw}, {cc->dh, cc->dw},
                    {cc->pads[0], cc->pads[1]}, {cc->pads[2], cc->pads[3]}};
    int64_t oh = win_out(cc->h, cc->kh, cc->sh, cc->dh, cc->pads[0], cc->pads[2], 0);
    int64_t ow = win_out(cc->w, cc->kw, cc->sw, cc->dw, cc->pads[1], cc->pads[3], 0);
    uint64_t nx = (uint64_t)(cc->n * cc->c * cc->h * cc->w), ny = (uint64_t)(cc->n * cc->m * oh * ow);
    float *in = rand_buf(nx, -1, 1);
    float *ref = malloc(ny * sizeof *ref);
    ref_conv(in, cc->n, cc->c, cc->h, cc->w, tm_data(&t, "w"), cc->m, cc->bias ? tm_data(&t, "b") : NULL,
             &p, cc->g, ref, oh, ow);
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, cc->n, ins, &nout);
    assert_int_equal(nout, ny);
    char what[128];
    snprintf(what, sizeof what, "conv c%lld m%lld g%lld k%lldx%lld s%lldx%lld d%lldx%lld",
             (long long)cc->c, (long long)cc->m, (long long)cc->g, (long long)cc->kh,
             (long long)cc->kw, (long long)cc->sh, (long long)cc->sw, (long long)cc->dh, (long long)cc->dw);
    check_close(what, out, ref, ny, 1e-4);
    free(out);
    free(ref);
    free(in);
    tm_free(&t);
}

static void test_conv_shapes(void **state)
{
    (void)state;
    const struct conv_case cases[] = {
        {1, 4, 7, 9, 8, 1, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},          /* basic, non-square input */
        {2, 3, 11, 8, 5, 1, 3, 2, 2, 1, 2, 1, {0, 1, 1, 2}, 1},         /* asym pads, stride, dilation */
        {2, 8, 6, 6, 4, 2, 3, 3, 1, 2, 1, 1, {1, 0, 1, 0}, 0},          /* groups, no bias */
        {1, 16, 9, 9, 16, 16, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}, 1},       /* depthwise */
        {2, 16, 5, 7, 32, 16, 3, 3, 1, 1, 2, 2, {2, 2, 2, 2}, 1},       /* depthwise x2, dilated */
        {2, 32, 8, 8, 64, 1, 1, 1, 1, 1, 1, 1, {0, 0, 0, 0}, 1},        /* 1x1, blocked layouts */
        {1, 3, 32, 30, 16, 1, 7, 7, 2, 2, 1, 1, {3, 3, 3, 3}, 0},       /* stem-like */
        {3, 24, 10, 10, 40, 1, 1, 7, 1, 1, 1, 1, {0, 3, 0, 3}, 1},      /* 1x7 (inception) */
        {1, 5, 4, 4, 3, 1, 5, 5, 1, 1, 1, 1, {2, 2, 2, 2}, 1},          /* kernel larger than input */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_conv_case(&cases[i]);
}

/* x -> conv1(+BN, relu) -> conv2(+BN) -> add(x') -> relu, where x' = conv3(x)
 * (ResNet's downsample block): fused, unfused and reference agree. */
static void test_conv_bn_add_relu_fusion(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "block");
    int64_t C = 16, M = 32, H = 9, W = 9, N = 2;
    int64_t xd[4] = {-1, C, H, W};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    int64_t w1d[4] = {M, C, 3, 3}, w2d[4] = {M, M, 3, 3}, w3d[4] = {M, C, 1, 1}, cd[1] = {M};
    int64_t k3[2] = {3, 3}, k1[2] = {1, 1}, p1[4] = {1, 1, 1, 1}, p0[4] = {0, 0, 0, 0};
    const char *bn_names[3] = {"bn1", "bn2", "bn3"};
    int32_t pw[3] = {tm_param(&t, "w1", 4, w1d, -0.3f, 0.3f), tm_param(&t, "w2", 4, w2d, -0.1f, 0.1f),
                     tm_param(&t, "w3", 4, w3d, -0.5f, 0.5f)};
    int32_t bnp[3][4];
    for (int i = 0; i < 3; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "%s.weight", bn_names[i]);
        bnp[i][0] = tm_param(&t, nm, 1, cd, 0.5f, 1.5f);
        snprintf(nm, sizeof nm, "%s.bias", bn_names[i]);
        bnp[i][1] = tm_param(&t, nm, 1, cd, -0.5f, 0.5f);
        snprintf(nm, sizeof nm, "%s.running_mean", bn_names[i]);
        bnp[i][2] = tm_param(&t, nm, 1, cd, -0.5f, 0.5f);
        snprintf(nm, sizeof nm, "%s.running_var", bn_names[i]);
        bnp[i][3] = tm_param(&t, nm, 1, cd, 0.5f, 2.0f);
    }
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv1", 1, &x, 1, &pw[0]);
    graph_set_ints(&t.g, "kernel_shape", 2, k3);
    graph_set_ints(&t.g, "pads", 4, p1);
    v = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn1", 1, &v, 4, bnp[0]);
    graph_set_float(&t.g, "epsilon", 1e-5f);
    v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu1", 1, &v, 0, NULL);
    v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv2", 1, &v, 1, &pw[1]);
    graph_set_ints(&t.g, "kernel_shape", 2, k3);
    graph_set_ints(&t.g, "pads", 4, p1);
    int32_t y2 = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn2", 1, &v, 4, bnp[1]);
    graph_set_float(&t.g, "epsilon", 1e-5f);
    int32_t y3 = graph_add_node(&t.g, GRAPH_OP_CONV, "conv3", 1, &x, 1, &pw[2]);
    graph_set_ints(&t.g, "kernel_shape", 2, k1);
    graph_set_ints(&t.g, "pads", 4, p0);
    y3 = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn3", 1, &y3, 4, bnp[2]);
    graph_set_float(&t.g, "epsilon", 1e-5f);
    int32_t add_in[2] = {y2, y3};
    v = graph_add_node(&t.g, GRAPH_OP_ADD, "add", 2, add_in, 0, NULL);
    v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu2", 1, &v, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, 40000); /* several batches */

    uint64_t nx = (uint64_t)(N * C * H * W), ny = (uint64_t)(N * M * H * W);
    float *in = rand_buf(nx, -1, 1);
    float *a = malloc(ny * 4), *b = malloc(ny * 4), *r = malloc(ny * 4);
    struct win w3 = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}}, w1 = {{1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}};
    ref_conv(in, N, C, H, W, tm_data(&t, "w1"), M, NULL, &w3, 1, a, H, W);
    ref_bn(a, N, M, H * W, tm_data(&t, "bn1.weight"), tm_data(&t, "bn1.bias"),
           tm_data(&t, "bn1.running_mean"), tm_data(&t, "bn1.running_var"), 1e-5f);
    for (uint64_t i = 0; i < ny; i++) a[i] = a[i] > 0 ? a[i] : 0;
    ref_conv(a, N, M, H, W, tm_data(&t, "w2"), M, NULL, &w3, 1, b, H, W);
    ref_bn(b, N, M, H * W, tm_data(&t, "bn2.weight"), tm_data(&t, "bn2.bias"),
           tm_data(&t, "bn2.running_mean"), tm_data(&t, "bn2.running_var"), 1e-5f);
    ref_conv(in, N, C, H, W, tm_data(&t, "w3"), M, NULL, &w1, 1, r, H, W);
    ref_bn(r, N, M, H * W, tm_data(&t, "bn3.weight"), tm_data(&t, "bn3.bias"),
           tm_data(&t, "bn3.running_mean"), tm_data(&t, "bn3.running_var"), 1e-5f);
    for (uint64_t i = 0; i < ny; i++) {
        float s = b[i] + r[i];
        r[i] = s > 0 ? s : 0;
    }
    const void *ins[1] = {in};
    uint64_t n1, n2;
    float *fused = tm_run_opts(&t, N, ins, &n1, 0, FEED_ALL_FIRST, 0);
    float *plain = tm_run_opts(&t, N, ins, &n2, 1, FEED_ALL_FIRST, 0);
    assert_int_equal(n1, ny);
    check_close("block fused", fused, r, ny, 1e-4);
    check_close("block unfused", plain, r, ny, 1e-4);

    /* The fusion analysis found the pattern: 3 conv steps, nothing else. */
    struct exec_model *m;
    char err[256];
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), 0);
    assert_int_equal(exec_model_nsteps(m), 3);
    int sums = 0, bns = 0;
    for (int i = 0; i < 3; i++) {
        const struct exec_step *st = exec_model_step(m, i);
        bns += st->bn_node >= 0;
        for (int k = 0; k < st->npost; k++) sums += st->post[k].kind == EXEC_POST_SUM;
    }
    assert_int_equal(bns, 3);
    assert_int_equal(sums, 1);
    exec_model_destroy(m);
    free(fused); free(plain); free(in); free(a); free(b); free(r);
    tm_free(&t);
}

/* Grouped conv + BN (folded: per-output-channel scales over both group
 * dims) + Relu, with parameters that do not persist: the bytes are
 * scribbled over once prepared, and the output must not change. */
static void test_grouped_bn_fold_nonpersistent(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "gbn");
    int64_t C = 16, M = 32, G = 4, H = 6, W = 7, N = 2;
    int64_t xd[4] = {-1, C, H, W}, wd[4] = {M, C / G, 3, 3}, cd[1] = {M};
    int64_t k3[2] = {3, 3}, p1[4] = {1, 1, 1, 1};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    int32_t ps[2] = {tm_param(&t, "w", 4, wd, -0.3f, 0.3f), tm_param(&t, "b", 1, cd, -0.3f, 0.3f)};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv", 1, &x, 2, ps);
    graph_set_ints(&t.g, "kernel_shape", 2, k3);
    graph_set_ints(&t.g, "pads", 4, p1);
    graph_set_int(&t.g, "group", G);
    int32_t bn[4] = {tm_param(&t, "g", 1, cd, 0.5f, 1.5f), tm_param(&t, "be", 1, cd, -0.5f, 0.5f),
                     tm_param(&t, "m", 1, cd, -0.5f, 0.5f), tm_param(&t, "v", 1, cd, 0.5f, 2.0f)};
    v = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn", 1, &v, 4, bn);
    v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
    /* A LayerNorm over the last axis keeps parameters that are used as they are. */
    int64_t ld[1] = {W};
    int32_t lp[2] = {tm_param(&t, "ln.g", 1, ld, 0.5f, 1.5f), tm_param(&t, "ln.b", 1, ld, -0.5f, 0.5f)};
    v = graph_add_node(&t.g, GRAPH_OP_LAYERNORM, "ln", 1, &v, 2, lp);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, 2048);
    uint64_t ny = (uint64_t)(N * M * H * W);
    float *in = rand_buf((uint64_t)(N * C * H * W), -1, 1);
    float *ref = malloc(ny * 4), *tmp = malloc(ny * 4);
    struct win w3 = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
    ref_conv(in, N, C, H, W, tm_data(&t, "w"), M, tm_data(&t, "b"), &w3, G, tmp, H, W);
    ref_bn(tmp, N, M, H * W, tm_data(&t, "g"), tm_data(&t, "be"), tm_data(&t, "m"), tm_data(&t, "v"), 1e-5f);
    for (uint64_t i = 0; i < ny; i++) tmp[i] = tmp[i] > 0 ? tmp[i] : 0;
    ref_layernorm(tmp, ref, N * M * H, W, tm_data(&t, "ln.g"), tm_data(&t, "ln.b"), 1e-5f);

    struct exec_options opt;
    exec_options_default(&opt);
    opt.params_persist = 0;
    struct exec_model *m;
    char err[256];
    assert_int_equal(exec_model_create(&m, &t.g, &opt, err, sizeof err), 0);
    uint8_t **copies = calloc((size_t)t.g.nbatches, sizeof *copies);
    for (int b = 0; b < t.g.nbatches; b++) {
        copies[b] = malloc(t.g.batches[b].nbytes);
        memcpy(copies[b], t.batches[b], t.g.batches[b].nbytes);
        assert_int_equal(exec_batch_arrived(m, b, copies[b], t.g.batches[b].nbytes), 0);
    }
    assert_int_equal(exec_wait_prepared(m), 0);
    assert_int_equal(exec_batches_prepared(m), t.g.nbatches);
    for (int b = 0; b < t.g.nbatches; b++) {
        memset(copies[b], 0xFF, t.g.batches[b].nbytes); /* NaNs if anything still read them */
        free(copies[b]);
    }
    free(copies);
    assert_true(exec_model_memory_bytes(m) > (uint64_t)(M * (C / G) * 9 * 4));
    float *out = malloc(ny * 4);
    void *outs[1] = {out};
    const void *ins[1] = {in};
    uint64_t ib = (uint64_t)(N * C * H * W) * 4;
    assert_int_equal(exec_run(m, N, ins, &ib, outs, NULL, err, sizeof err), 0);
    check_close("grouped conv+bn+relu+ln, parameters copied", out, ref, ny, 1e-4);
    exec_model_destroy(m);
    free(out); free(ref); free(tmp); free(in);
    tm_free(&t);
}

/* ---- pooling ----------------------------------------------------------- */

static void run_pool(enum graph_op op, int64_t n, int64_t c, int64_t h, int64_t w, const struct win *p,
                     int ceil_mode, int include_pad)
{
    struct tmodel t;
    tm_init(&t, "pool");
    int64_t xd[4] = {-1, c, h, w};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    /* A 1x1 conv in front so the pool sees oneDNN's blocked layout too. */
    int64_t wd[4] = {c, c, 1, 1};
    int32_t wp = tm_param(&t, "w", 4, wd, -0.5f, 0.5f);
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv", 1, &x, 1, &wp);
    int64_t k1[2] = {1, 1};
    graph_set_ints(&t.g, "kernel_shape", 2, k1);
    v = graph_add_node(&t.g, op, "pool", 1, &v, 0, NULL);
    int64_t k[2] = {p->k[0], p->k[1]}, s[2] = {p->s[0], p->s[1]}, d[2] = {p->d[0], p->d[1]},
            pads[4] = {p->pb[0], p->pb[1], p->pe[0], p->pe[1]};
    if (op != GRAPH_OP_GLOBALAVGPOOL) {
        graph_set_ints(&t.g, "kernel_shape", 2, k);
        graph_set_ints(&t.g, "strides", 2, s);
        graph_set_ints(&t.g, "pads", 4, pads);
        if (op == GRAPH_OP_MAXPOOL) graph_set_ints(&t.g, "dilations", 2, d);
        graph_set_int(&t.g, "ceil_mode", ceil_mode);
        if (op == GRAPH_OP_AVGPOOL) graph_set_int(&t.g, "count_include_pad", include_pad);
    }
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    uint64_t nx = (uint64_t)(n * c * h * w);
    float *in = rand_buf(nx, -1, 1);
    float *conv = malloc(nx * 4);
    struct win one = {{1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}};
    ref_conv(in, n, c, h, w, tm_data(&t, "w"), c, NULL, &one, 1, conv, h, w);
    struct win q = *p;
    int64_t oh, ow;
    if (op == GRAPH_OP_GLOBALAVGPOOL) {
        q = (struct win){{h, w}, {1, 1}, {1, 1}, {0, 0}, {0, 0}};
        oh = ow = 1;
    } else {
        oh = win_out(h, p->k[0], p->s[0], p->d[0], p->pb[0], p->pe[0], ceil_mode);
        ow = win_out(w, p->k[1], p->s[1], p->d[1], p->pb[1], p->pe[1], ceil_mode);
    }
    uint64_t ny = (uint64_t)(n * c * oh * ow);
    float *ref = malloc(ny * 4);
    ref_pool(op == GRAPH_OP_MAXPOOL, include_pad, conv, n, c, h, w, &q, ref, oh, ow);
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, n, ins, &nout);
    assert_int_equal(nout, ny);
    char what[96];
    snprintf(what, sizeof what, "%s k%lldx%lld s%lld ceil%d pad%d", graph_op_name(op), (long long)p->k[0],
             (long long)p->k[1], (long long)p->s[0], ceil_mode, include_pad);
    check_close(what, out, ref, ny, 1e-5);
    free(out); free(ref); free(conv); free(in);
    tm_free(&t);
}

/* Prepared weights in a layout the fast kernels do not take (forced by a
 * test hook): the plan reorders them per run into the layout of the
 * convolution it picked, and the result is unchanged. */
static void test_conv_weights_fallback(void **state)
{
    (void)state;
    struct win g = {{1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}};
    setenv("PIPEPS_EXEC_TEST_RAW_WEIGHTS", "1", 1);
    run_pool(GRAPH_OP_GLOBALAVGPOOL, 2, 32, 7, 5, &g, 0, 0);
    run_pool(GRAPH_OP_MAXPOOL, 2, 16, 12, 11, &(struct win){{3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}}, 0, 0);
    unsetenv("PIPEPS_EXEC_TEST_RAW_WEIGHTS");
}

static void test_pooling(void **state)
{
    (void)state;
    struct win r50 = {{3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}};
    run_pool(GRAPH_OP_MAXPOOL, 2, 16, 12, 11, &r50, 0, 0);
    struct win ceilw = {{3, 3}, {2, 2}, {1, 1}, {0, 0}, {0, 0}};
    run_pool(GRAPH_OP_MAXPOOL, 1, 16, 8, 9, &ceilw, 1, 0);  /* ceil adds a window */
    run_pool(GRAPH_OP_MAXPOOL, 1, 16, 8, 9, &ceilw, 0, 0);
    struct win dil = {{2, 3}, {1, 2}, {2, 1}, {1, 0}, {0, 1}};
    run_pool(GRAPH_OP_MAXPOOL, 1, 8, 7, 10, &dil, 0, 0);
    struct win inc = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
    run_pool(GRAPH_OP_AVGPOOL, 2, 16, 7, 7, &inc, 0, 1);    /* inception's avg pool */
    run_pool(GRAPH_OP_AVGPOOL, 2, 16, 7, 7, &inc, 0, 0);
    struct win dn = {{2, 2}, {2, 2}, {1, 1}, {0, 0}, {0, 0}};
    run_pool(GRAPH_OP_AVGPOOL, 1, 32, 9, 8, &dn, 0, 0);     /* densenet transition, odd input */
    struct win cp = {{3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}};
    run_pool(GRAPH_OP_AVGPOOL, 1, 8, 8, 8, &cp, 1, 1);      /* ceil + include pad: C kernel */
    run_pool(GRAPH_OP_AVGPOOL, 1, 8, 8, 8, &cp, 1, 0);
    struct win g = {{1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}};
    run_pool(GRAPH_OP_GLOBALAVGPOOL, 2, 32, 7, 5, &g, 0, 0);
}

/* ---- concat, batch norm, binary --------------------------------------- */

/* concat(conv_a(x), conv_b(x), x) -> BN -> relu: blocked and plain inputs. */
static void test_concat_bn(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "concat");
    int64_t N = 2, C = 16, H = 5, W = 6, A = 32, B = 16;
    int64_t xd[4] = {-1, C, H, W};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    int64_t wa[4] = {A, C, 1, 1}, wb[4] = {B, C, 3, 3}, k1[2] = {1, 1}, k3[2] = {3, 3}, p1[4] = {1, 1, 1, 1};
    int32_t pa = tm_param(&t, "wa", 4, wa, -0.5f, 0.5f), pb = tm_param(&t, "wb", 4, wb, -0.2f, 0.2f);
    int32_t va = graph_add_node(&t.g, GRAPH_OP_CONV, "ca", 1, &x, 1, &pa);
    graph_set_ints(&t.g, "kernel_shape", 2, k1);
    int32_t vb = graph_add_node(&t.g, GRAPH_OP_CONV, "cb", 1, &x, 1, &pb);
    graph_set_ints(&t.g, "kernel_shape", 2, k3);
    graph_set_ints(&t.g, "pads", 4, p1);
    int32_t cat_in[3] = {va, vb, x};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONCAT, "cat", 3, cat_in, 0, NULL);
    graph_set_int(&t.g, "axis", 1);
    int64_t T = A + B + C, td[1] = {T};
    int32_t bn[4] = {tm_param(&t, "g", 1, td, 0.5f, 1.5f), tm_param(&t, "b", 1, td, -0.5f, 0.5f),
                     tm_param(&t, "m", 1, td, -0.5f, 0.5f), tm_param(&t, "v", 1, td, 0.5f, 2.0f)};
    v = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn", 1, &v, 4, bn);
    graph_set_float(&t.g, "epsilon", 1e-3f);
    v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);

    float *in = rand_buf((uint64_t)(N * C * H * W), -1, 1);
    uint64_t plane = (uint64_t)(H * W);
    float *ya = malloc((uint64_t)(N * A) * plane * 4), *yb = malloc((uint64_t)(N * B) * plane * 4);
    struct win one = {{1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}}, three = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
    ref_conv(in, N, C, H, W, tm_data(&t, "wa"), A, NULL, &one, 1, ya, H, W);
    ref_conv(in, N, C, H, W, tm_data(&t, "wb"), B, NULL, &three, 1, yb, H, W);
    uint64_t ny = (uint64_t)(N * T) * plane;
    float *ref = malloc(ny * 4);
    for (int64_t n = 0; n < N; n++) {
        float *dst = ref + (uint64_t)(n * T) * plane;
        memcpy(dst, ya + (uint64_t)(n * A) * plane, (size_t)(A * (int64_t)plane) * 4);
        memcpy(dst + A * plane, yb + (uint64_t)(n * B) * plane, (size_t)(B * (int64_t)plane) * 4);
        memcpy(dst + (A + B) * plane, in + (uint64_t)(n * C) * plane, (size_t)(C * (int64_t)plane) * 4);
    }
    ref_bn(ref, N, T, (int64_t)plane, tm_data(&t, "g"), tm_data(&t, "b"), tm_data(&t, "m"), tm_data(&t, "v"), 1e-3f);
    for (uint64_t i = 0; i < ny; i++) ref[i] = ref[i] > 0 ? ref[i] : 0;
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, N, ins, &nout);
    assert_int_equal(nout, ny);
    check_close("concat+bn+relu", out, ref, ny, 1e-4);
    free(out); free(ref); free(ya); free(yb); free(in);
    tm_free(&t);
}

struct bin_case {
    enum graph_op op;
    int ar;
    int64_t ad[4];
    int br;
    int64_t bd[4];
    int b_is_param;
};

static void run_binary(const struct bin_case *bc, int64_t n)
{
    struct tmodel t;
    tm_init(&t, "bin");
    int64_t ad[4], bd[4];
    memcpy(ad, bc->ad, sizeof ad);
    memcpy(bd, bc->bd, sizeof bd);
    ad[0] = -1;
    int32_t a = graph_add_input(&t.g, "a", GRAPH_F32, bc->ar, ad);
    int32_t v;
    int b_input = !bc->b_is_param;
    if (b_input) {
        bd[0] = -1;
        int32_t b = graph_add_input(&t.g, "b", GRAPH_F32, bc->br, bd);
        int32_t ins2[2] = {a, b};
        v = graph_add_node(&t.g, bc->op, "op", 2, ins2, 0, NULL);
    } else {
        float lo = bc->op == GRAPH_OP_DIV ? 0.5f : -1.0f;
        int32_t p = tm_param(&t, "p", bc->br, bd, lo, 2.0f);
        v = graph_add_node(&t.g, bc->op, "op", 1, &a, 1, &p);
    }
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    int64_t ar[4], br[4];
    memcpy(ar, bc->ad, sizeof ar);
    memcpy(br, bc->bd, sizeof br);
    ar[0] = n;
    if (b_input) br[0] = n;
    uint64_t na = 1, nb = 1;
    for (int i = 0; i < bc->ar; i++) na *= (uint64_t)ar[i];
    for (int i = 0; i < bc->br; i++) nb *= (uint64_t)br[i];
    int yr = bc->ar > bc->br ? bc->ar : bc->br;
    int64_t yd[4];
    uint64_t ny = 1;
    for (int i = 0; i < yr; i++) {
        int ai = i - (yr - bc->ar), bi = i - (yr - bc->br);
        int64_t x = ai >= 0 ? ar[ai] : 1, y = bi >= 0 ? br[bi] : 1;
        yd[i] = x == 1 ? y : x;
        ny *= (uint64_t)yd[i];
    }
    float lo = bc->op == GRAPH_OP_POW ? 0.1f : -1.0f;
    float *xa = rand_buf(na, lo, 2.0f);
    float *xb = b_input ? rand_buf(nb, bc->op == GRAPH_OP_DIV ? 0.5f : -1.0f, 2.0f) : NULL;
    const float *bdata = b_input ? xb : tm_data(&t, "p");
    float *ref = malloc(ny * 4);
    ref_broadcast(bc->op, xa, bc->ar, ar, bdata, bc->br, br, ref, yr, yd);
    const void *ins[2] = {xa, xb};
    uint64_t nout;
    float *out = tm_run(&t, n, ins, &nout);
    assert_int_equal(nout, ny);
    check_close(graph_op_name(bc->op), out, ref, ny, 1e-5);
    free(out); free(ref); free(xa); free(xb);
    tm_free(&t);
}

static void test_binary_broadcast(void **state)
{
    (void)state;
    const struct bin_case cases[] = {
        {GRAPH_OP_ADD, 3, {0, 3, 4}, 3, {0, 3, 4}, 0},
        {GRAPH_OP_ADD, 4, {0, 6, 5, 3}, 4, {1, 6, 1, 1}, 1},   /* per-channel parameter */
        {GRAPH_OP_SUB, 3, {0, 3, 4}, 1, {4}, 1},               /* trailing vector */
        {GRAPH_OP_DIV, 3, {0, 3, 4}, 1, {1}, 1},               /* scalar */
        {GRAPH_OP_MUL, 3, {0, 1, 4}, 3, {0, 3, 4}, 0},         /* src0 broadcasts: swapped */
        {GRAPH_OP_SUB, 3, {0, 1, 4}, 2, {3, 4}, 1},            /* src0 broadcasts: C kernel */
        {GRAPH_OP_DIV, 4, {0, 1, 3, 1}, 4, {0, 5, 1, 2}, 0},   /* both broadcast */
        {GRAPH_OP_POW, 3, {0, 2, 5}, 1, {1}, 1},
        {GRAPH_OP_MUL, 4, {0, 2, 3, 4}, 4, {0, 2, 3, 4}, 0},
        {GRAPH_OP_ADD, 4, {0, 2, 1, 4}, 2, {3, 1}, 1},         /* [N,2,1,4]+[3,1] -> [N,2,3,4] */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_binary(&cases[i], 1);
        run_binary(&cases[i], 3);
    }
}

/* ---- gemm / matmul ----------------------------------------------------- */

static void test_gemm(void **state)
{
    (void)state;
    for (int variant = 0; variant < 4; variant++) {
        struct tmodel t;
        tm_init(&t, "gemm");
        int64_t T = 5, K = 24, N = 19, B = 2;
        int64_t xd[3] = {-1, T, K};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int transb = variant != 1;
        int64_t wd[2] = {transb ? N : K, transb ? K : N}, bd[1] = {N};
        int32_t ps[2] = {tm_param(&t, "w", 2, wd, -0.5f, 0.5f), tm_param(&t, "c", 1, bd, -1, 1)};
        int32_t res = -1;
        if (variant == 3) { /* residual: another Gemm of the same shape */
            int64_t wd2[2] = {N, K};
            int32_t p2 = tm_param(&t, "w2", 2, wd2, -0.5f, 0.5f);
            res = graph_add_node(&t.g, GRAPH_OP_GEMM, "g2", 1, &x, 1, &p2);
            graph_set_int(&t.g, "transB", 1);
        }
        int32_t v = graph_add_node(&t.g, GRAPH_OP_GEMM, "g", 1, &x, 2, ps);
        graph_set_int(&t.g, "transB", transb);
        float alpha = variant == 1 ? 0.5f : 1.0f, beta = variant == 1 ? 2.0f : 1.0f;
        if (variant == 1) {
            graph_set_float(&t.g, "alpha", alpha);
            graph_set_float(&t.g, "beta", beta);
        }
        if (variant == 2) {
            v = graph_add_node(&t.g, GRAPH_OP_GELU, "gelu", 1, &v, 0, NULL);
        }
        if (variant == 3) {
            int32_t ai[2] = {v, res};
            v = graph_add_node(&t.g, GRAPH_OP_ADD, "add", 2, ai, 0, NULL);
            v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
        }
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        float *in = rand_buf((uint64_t)(B * T * K), -1, 1);
        uint64_t ny = (uint64_t)(B * T * N);
        float *ref = malloc(ny * 4);
        ref_gemm(in, B * T, K, tm_data(&t, "w"), N, transb, tm_data(&t, "c"), alpha, beta, ref);
        if (variant == 2)
            for (uint64_t i = 0; i < ny; i++) ref[i] = (float)(0.5 * ref[i] * (1 + erf(ref[i] / sqrt(2.0))));
        if (variant == 3) {
            float *r2 = malloc(ny * 4);
            ref_gemm(in, B * T, K, tm_data(&t, "w2"), N, 1, NULL, 1, 0, r2);
            for (uint64_t i = 0; i < ny; i++) {
                float s = ref[i] + r2[i];
                ref[i] = s > 0 ? s : 0;
            }
            free(r2);
        }
        const void *ins[1] = {in};
        uint64_t nout;
        float *out = tm_run(&t, B, ins, &nout);
        assert_int_equal(nout, ny);
        check_close("gemm", out, ref, ny, 1e-5);
        free(out); free(ref); free(in);
        tm_free(&t);
    }
}

/* Attention-shaped MatMul: [N,H,T,D] x [N,H,D,T] / scalar, plus broadcast
 * batch dims and a MatMul with a 2-D parameter. */
static void test_matmul(void **state)
{
    (void)state;
    for (int variant = 0; variant < 3; variant++) {
        struct tmodel t;
        tm_init(&t, "mm");
        int64_t Nb = 2, H = 3, T = 4, D = 5, U = 6;
        int64_t ad[4] = {-1, H, T, D}, bd[4] = {-1, H, D, U};
        if (variant == 1) {
            ad[1] = 1;   /* [N,1,T,D] x [N,H,D,U] */
        }
        int32_t a = graph_add_input(&t.g, "a", GRAPH_F32, 4, ad);
        int32_t v;
        int64_t pd2[2] = {D, U}, sd[1] = {1};
        if (variant == 2) {
            int32_t p = tm_param(&t, "w", 2, pd2, -1, 1);
            v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "mm", 1, &a, 1, &p);
        } else {
            int32_t b = graph_add_input(&t.g, "b", GRAPH_F32, 4, bd);
            int32_t ins2[2] = {a, b};
            v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "mm", 2, ins2, 0, NULL);
        }
        float scale = 8.0f;
        int32_t sp = tm_param_data(&t, "scale", 1, sd, &scale);
        v = graph_add_node(&t.g, GRAPH_OP_DIV, "div", 1, &v, 1, &sp);
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        int64_t ha = variant == 1 ? 1 : H;
        uint64_t na = (uint64_t)(Nb * ha * T * D), nb = (uint64_t)(Nb * H * D * U), ny = (uint64_t)(Nb * H * T * U);
        float *xa = rand_buf(na, -1, 1), *xb = rand_buf(nb, -1, 1);
        const float *bsrc = variant == 2 ? tm_data(&t, "w") : xb;
        float *ref = malloc(ny * 4);
        for (int64_t n = 0; n < Nb; n++)
            for (int64_t h = 0; h < H; h++) {
                const float *pa = xa + ((n * ha + (variant == 1 ? 0 : h)) * T) * D;
                const float *pb = variant == 2 ? bsrc : bsrc + ((n * H + h) * D) * U;
                float *py = ref + ((n * H + h) * T) * U;
                ref_gemm(pa, T, D, pb, U, 0, NULL, 1.0f / scale, 0, py);
            }
        const void *ins[2] = {xa, xb};
        uint64_t nout;
        float *out = tm_run(&t, Nb, ins, &nout);
        assert_int_equal(nout, ny);
        check_close("matmul", out, ref, ny, 1e-5);
        free(out); free(ref); free(xa); free(xb);
        tm_free(&t);
    }
}

/* ---- shape ops, gather, norms ------------------------------------------ */

/* x[N,4,6] -> Reshape[0,2,2,6] -> Transpose(0,2,1,3) -> Flatten(2) ->
 * Slice(axis 1, 5:0:-2) ; Identity; compared with index arithmetic. */
static void test_shape_ops(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "shape");
    int64_t xd[3] = {-1, 4, 6};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
    int32_t v = graph_add_node(&t.g, GRAPH_OP_RESHAPE, "r", 1, &x, 0, NULL);
    int64_t shp[4] = {0, 2, -1, 6};
    graph_set_ints(&t.g, "shape", 4, shp);
    v = graph_add_node(&t.g, GRAPH_OP_TRANSPOSE, "t", 1, &v, 0, NULL);
    int64_t perm[4] = {0, 2, 1, 3};
    graph_set_ints(&t.g, "perm", 4, perm);
    v = graph_add_node(&t.g, GRAPH_OP_FLATTEN, "f", 1, &v, 0, NULL);
    graph_set_int(&t.g, "axis", 3);        /* [N*2*2, 6] */
    v = graph_add_node(&t.g, GRAPH_OP_SLICE, "s", 1, &v, 0, NULL);
    int64_t st[1] = {5}, en[1] = {-100}, ax[1] = {1}, sp[1] = {-2};
    graph_set_ints(&t.g, "starts", 1, st);
    graph_set_ints(&t.g, "ends", 1, en);
    graph_set_ints(&t.g, "axes", 1, ax);
    graph_set_ints(&t.g, "steps", 1, sp);
    v = graph_add_node(&t.g, GRAPH_OP_IDENTITY, "id", 1, &v, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    int64_t N = 3;
    float *in = rand_buf((uint64_t)(N * 24), -1, 1);
    /* y[(n*2+b)*2+a, j] = x[n, a*2+b... ]: reshape [n,2,2,6] as [n][a][b][k],
     * transpose -> [n][b][a][k], flatten -> row (n*2+b)*2+a, slice k=5,3,1. */
    float ref[3 * 4 * 3];
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < 2; b++)
            for (int64_t a = 0; a < 2; a++)
                for (int64_t j = 0; j < 3; j++) {
                    int64_t k = 5 - 2 * j;
                    ref[(((n * 2 + b) * 2 + a) * 3) + j] = in[n * 24 + (a * 2 + b) * 6 + k];
                }
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, N, ins, &nout);
    assert_int_equal(nout, 36);
    assert_memory_equal(out, ref, sizeof ref);
    free(out); free(in);
    tm_free(&t);
}

/* ids[N,T] -> Gather(table) + Gather(pos) -> LayerNorm -> Softmax(axis 1)
 * and an int64 Transpose/Slice path; out-of-range id is an error. */
static void test_gather_layernorm_softmax(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "emb");
    int64_t V = 11, E = 8, T = 5, N = 2;
    int64_t idd[2] = {-1, T};
    int32_t ids = graph_add_input(&t.g, "ids", GRAPH_I64, 2, idd);
    int64_t td[2] = {V, E}, pd[3] = {1, T, E}, ed[1] = {E};
    int32_t tab = tm_param(&t, "tab", 2, td, -1, 1);
    int32_t pos = tm_param(&t, "pos", 3, pd, -1, 1);
    /* ids -> transpose twice (int64 path) -> gather */
    int32_t tv = graph_add_node(&t.g, GRAPH_OP_TRANSPOSE, "t1", 1, &ids, 0, NULL);
    tv = graph_add_node(&t.g, GRAPH_OP_TRANSPOSE, "t2", 1, &tv, 0, NULL);
    int32_t v = graph_add_node(&t.g, GRAPH_OP_GATHER, "emb", 1, &tv, 1, &tab);
    v = graph_add_node(&t.g, GRAPH_OP_ADD, "addpos", 1, &v, 1, &pos);
    int32_t lnp[2] = {tm_param(&t, "ln.g", 1, ed, 0.5f, 1.5f), tm_param(&t, "ln.b", 1, ed, -0.5f, 0.5f)};
    v = graph_add_node(&t.g, GRAPH_OP_LAYERNORM, "ln", 1, &v, 2, lnp);
    graph_set_int(&t.g, "axis", -1);
    graph_set_float(&t.g, "epsilon", 1e-5f);
    v = graph_add_node(&t.g, GRAPH_OP_SOFTMAX, "sm", 1, &v, 0, NULL);
    graph_set_int(&t.g, "axis", 1);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    int64_t in[10] = {0, 3, 10, 4, 5, 7, 7, 2, 9, 1};
    uint64_t ny = (uint64_t)(N * T * E);
    float *emb = malloc(ny * 4), *ln = malloc(ny * 4), *ref = malloc(ny * 4);
    for (int64_t i = 0; i < N * T; i++) {
        int64_t id = in[i];
        for (int64_t e = 0; e < E; e++)
            emb[i * E + e] = tm_data(&t, "tab")[id * E + e] + tm_data(&t, "pos")[(i % T) * E + e];
    }
    ref_layernorm(emb, ln, N * T, E, tm_data(&t, "ln.g"), tm_data(&t, "ln.b"), 1e-5f);
    ref_softmax(ln, ref, N, T, E);
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, N, ins, &nout);
    assert_int_equal(nout, ny);
    check_close("gather+ln+softmax", out, ref, ny, 1e-5);
    free(out);
    in[4] = 11; /* out of range */
    out = tm_run_opts(&t, N, ins, &nout, 0, FEED_ALL_FIRST, PPS_ERANGE);
    free(out);
    in[4] = 5;
    in[3] = -1; /* negative: refused by the kernel too (the ids reach it through transposes) */
    out = tm_run_opts(&t, N, ins, &nout, 0, FEED_ALL_FIRST, PPS_ERANGE);
    free(out);
    free(emb); free(ln); free(ref);
    tm_free(&t);
}

/* Unary ops and Where (GPT-2's causal mask pattern). */
/* Int64 inputs that index a table: a negative or too large id is refused
 * before anything runs, naming the input and the position; an optional
 * input left out holds its fill value; graph_validate's rules for optional
 * inputs. */
static void test_index_inputs(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "ids");
    const int64_t V = 7, E = 3, T = 4, N = 2;
    int64_t idd[2] = {-1, T};
    int32_t ids = graph_add_input(&t.g, "ids", GRAPH_I64, 2, idd);
    int32_t types = graph_add_input(&t.g, "types", GRAPH_I64, 2, idd);
    graph_set_input_optional(&t.g, types, 1);
    int64_t td[2] = {V, E}, yd[2] = {2, E};
    int32_t tab = tm_param(&t, "tab", 2, td, -1, 1);
    int32_t ttab = tm_param(&t, "ttab", 2, yd, -1, 1);
    int32_t a = graph_add_node(&t.g, GRAPH_OP_GATHER, "emb", 1, &ids, 1, &tab);
    int32_t b = graph_add_node(&t.g, GRAPH_OP_GATHER, "types", 1, &types, 1, &ttab);
    int32_t ab[2] = {a, b};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_ADD, "add", 2, ab, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);

    struct exec_model *m;
    char err[256] = "";
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), 0);
    for (int i = 0; i < t.g.nbatches; i++)
        assert_int_equal(exec_batch_arrived(m, i, t.batches[i], t.g.batches[i].nbytes), 0);
    int64_t in[8] = {0, 1, 2, 3, 4, 5, 6, 0}, ty[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    uint64_t nb[2] = {sizeof in, sizeof ty};
    float y1[N * T * E], y2[N * T * E];
    void *o1[1] = {y1}, *o2[1] = {y2};
    const void *given[2] = {in, ty}, *omitted[2] = {in, NULL};
    assert_int_equal(exec_run(m, N, given, nb, o1, NULL, err, sizeof err), 0);
    assert_int_equal(exec_run(m, N, omitted, nb, o2, NULL, err, sizeof err), 0);
    assert_memory_equal(y1, y2, sizeof y1); /* left out = all fill (1) */
    for (int64_t i = 0; i < N * T; i++)
        for (int64_t e = 0; e < E; e++) {
            float r = tm_data(&t, "tab")[in[i] * E + e] + tm_data(&t, "ttab")[1 * E + e];
            assert_true(fabsf(y1[i * E + e] - r) < 1e-6f);
        }
    /* A negative id: refused with its position, not wrapped to row V-1. */
    in[6] = -1;
    assert_int_equal(exec_run(m, N, given, nb, o1, NULL, err, sizeof err), PPS_ERANGE);
    assert_non_null(strstr(err, "input 'ids' at [1, 2] is -1, out of range [0, 7)"));
    in[6] = V;
    assert_int_equal(exec_run(m, N, given, nb, o1, NULL, err, sizeof err), PPS_ERANGE);
    assert_non_null(strstr(err, "at [1, 2] is 7"));
    in[6] = 6;
    ty[7] = 2;
    assert_int_equal(exec_run(m, N, given, nb, o1, NULL, err, sizeof err), PPS_ERANGE);
    assert_non_null(strstr(err, "input 'types' at [1, 3] is 2, out of range [0, 2)"));
    /* The required input cannot be left out. */
    const void *none[2] = {NULL, ty};
    assert_int_equal(exec_run(m, N, none, nb, o1, NULL, err, sizeof err), PPS_EINVAL);
    exec_model_destroy(m);

    /* Optional inputs: int64, after the required ones, never input 0; a
     * fill value outside the table is refused when the model is created. */
    assert_int_equal(graph_required_inputs(&t.g), 1);
    assert_int_equal(graph_validate(&t.g, err, sizeof err), 0);
    t.g.inputs[1].fill = 2;
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), PPS_ESHAPE);
    t.g.inputs[1].fill = 1;
    t.g.inputs[0].optional = 1;
    assert_int_not_equal(graph_validate(&t.g, err, sizeof err), 0);
    t.g.inputs[0].optional = 0;
    t.g.inputs[1].dtype = GRAPH_F32;
    assert_int_not_equal(graph_validate(&t.g, err, sizeof err), 0);
    t.g.inputs[1].dtype = GRAPH_I64;
    tm_free(&t);
}

static void test_unary_where(void **state)
{
    (void)state;
    const enum graph_op ops[] = {GRAPH_OP_RELU, GRAPH_OP_GELU, GRAPH_OP_GELU, GRAPH_OP_ERF,
                                 GRAPH_OP_TANH, GRAPH_OP_SIGMOID, GRAPH_OP_SQRT};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct tmodel t;
        tm_init(&t, "un");
        int64_t xd[3] = {-1, 7, 9};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t v = graph_add_node(&t.g, ops[i], "u", 1, &x, 0, NULL);
        int approx = i == 2;
        if (approx) graph_set_int(&t.g, "approximate", 1);
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        uint64_t n = 2 * 63;
        float *in = rand_buf(n, ops[i] == GRAPH_OP_SQRT ? 0.0f : -3.0f, 3.0f);
        float *ref = malloc(n * 4);
        for (uint64_t k = 0; k < n; k++) {
            double z = in[k], r = 0;
            switch (ops[i]) {
            case GRAPH_OP_RELU: r = z > 0 ? z : 0; break;
            case GRAPH_OP_GELU:
                r = approx ? 0.5 * z * (1 + tanh(sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)))
                           : 0.5 * z * (1 + erf(z / sqrt(2.0)));
                break;
            case GRAPH_OP_ERF: r = erf(z); break;
            case GRAPH_OP_TANH: r = tanh(z); break;
            case GRAPH_OP_SIGMOID: r = 1 / (1 + exp(-z)); break;
            case GRAPH_OP_SQRT: r = sqrt(z); break;
            default: fail();
            }
            ref[k] = (float)r;
        }
        const void *ins[1] = {in};
        uint64_t nout;
        float *out = tm_run(&t, 2, ins, &nout);
        assert_int_equal(nout, n);
        check_close(graph_op_name(ops[i]), out, ref, n, 1e-5);
        free(out); free(ref); free(in);
        tm_free(&t);
    }
    /* Where(cond[N,1,T,T] activation, x[N,H,T,T], fill[1] param) */
    struct tmodel t;
    tm_init(&t, "where");
    int64_t cd[4] = {-1, 1, 4, 4}, xd[4] = {-1, 3, 4, 4}, fd[1] = {1};
    int32_t c = graph_add_input(&t.g, "c", GRAPH_F32, 4, cd);
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    float fill = -1e4f;
    int32_t f = tm_param_data(&t, "fill", 1, fd, &fill);
    int32_t wi[2] = {c, x};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_WHERE, "w", 2, wi, 1, &f);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    float cond[2 * 16], xs[2 * 48], ref[2 * 48];
    for (int k = 0; k < 32; k++) cond[k] = (float)((k % 4) <= ((k / 4) % 4));
    for (int k = 0; k < 96; k++) xs[k] = frand(-1, 1);
    for (int n = 0; n < 2; n++)
        for (int h = 0; h < 3; h++)
            for (int k = 0; k < 16; k++)
                ref[(n * 3 + h) * 16 + k] = cond[n * 16 + k] != 0 ? xs[(n * 3 + h) * 16 + k] : fill;
    const void *ins[2] = {cond, xs};
    uint64_t nout;
    float *out = tm_run(&t, 2, ins, &nout);
    assert_int_equal(nout, 96);
    assert_memory_equal(out, ref, sizeof ref);
    free(out);
    tm_free(&t);
}

/* GPT-2's attention on views: qkv[N,S,3E] -> Slice (3x) -> Reshape
 * [N,S,H,D] -> Transpose (q, v: 0,2,1,3; k: 0,2,3,1) -> MatMul -> Mul
 * scale -> Softmax -> MatMul -> Transpose -> Reshape [N,S,E] -> Relu (a
 * consumer that needs plain data). No copy is needed for the slices and
 * transposes; the result must equal the naive computation. Run at batch
 * and sequence length 1 too: with every leading dimension 1 the k and v
 * slices are views that differ from a plain tensor only by their offset
 * (GPT-2 at S = 1, N = 1 once read v from q's columns). */
#define ATT_MAX_S 8
static void run_attention_views(int64_t N, int64_t S)
{
    const int64_t H = 3, D = 4, E = H * D;
    assert_true(S <= ATT_MAX_S);
    struct tmodel t;
    tm_init(&t, "attn");
    int64_t xd[3] = {-1, S, 3 * E};
    int32_t x = graph_add_input(&t.g, "qkv", GRAPH_F32, 3, xd);
    int32_t hv[3];
    for (int i = 0; i < 3; i++) {
        int32_t v = graph_add_node(&t.g, GRAPH_OP_SLICE, "slice", 1, &x, 0, NULL);
        int64_t st[1] = {i * E}, en[1] = {(i + 1) * E}, ax[1] = {2};
        graph_set_ints(&t.g, "starts", 1, st);
        graph_set_ints(&t.g, "ends", 1, en);
        graph_set_ints(&t.g, "axes", 1, ax);
        v = graph_add_node(&t.g, GRAPH_OP_RESHAPE, "split", 1, &v, 0, NULL);
        int64_t shp[4] = {0, 0, H, D};
        graph_set_ints(&t.g, "shape", 4, shp);
        v = graph_add_node(&t.g, GRAPH_OP_TRANSPOSE, "heads", 1, &v, 0, NULL);
        int64_t pq[4] = {0, 2, 1, 3}, pk[4] = {0, 2, 3, 1};
        graph_set_ints(&t.g, "perm", 4, i == 1 ? pk : pq);
        hv[i] = v;
    }
    int32_t qk[2] = {hv[0], hv[1]};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "scores", 2, qk, 0, NULL);
    int64_t one[1] = {1};
    float scale = 0.5f;
    int32_t sp = tm_param_data(&t, "scale", 1, one, &scale);
    v = graph_add_node(&t.g, GRAPH_OP_MUL, "scale", 1, &v, 1, &sp);
    v = graph_add_node(&t.g, GRAPH_OP_SOFTMAX, "softmax", 1, &v, 0, NULL);
    graph_set_int(&t.g, "axis", -1);
    int32_t pv[2] = {v, hv[2]};
    v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "context", 2, pv, 0, NULL);
    v = graph_add_node(&t.g, GRAPH_OP_TRANSPOSE, "merge", 1, &v, 0, NULL);
    int64_t pm[4] = {0, 2, 1, 3};
    graph_set_ints(&t.g, "perm", 4, pm);
    v = graph_add_node(&t.g, GRAPH_OP_RESHAPE, "merge_reshape", 1, &v, 0, NULL);
    int64_t shp3[3] = {0, 0, E};
    graph_set_ints(&t.g, "shape", 3, shp3);
    v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);

    float *in = rand_buf((uint64_t)(N * S * 3 * E), -1, 1);
    float *ref = malloc((size_t)(N * S * E) * 4);
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < H; h++) {
            double sc[ATT_MAX_S][ATT_MAX_S];
            for (int64_t i = 0; i < S; i++) {
                double mx = -1e30, sum = 0;
                for (int64_t j = 0; j < S; j++) {
                    double acc = 0;
                    for (int64_t d = 0; d < D; d++)
                        acc += (double)in[(n * S + i) * 3 * E + h * D + d] * in[(n * S + j) * 3 * E + E + h * D + d];
                    sc[i][j] = acc * scale;
                    if (sc[i][j] > mx) mx = sc[i][j];
                }
                for (int64_t j = 0; j < S; j++) sum += (sc[i][j] = exp(sc[i][j] - mx));
                for (int64_t j = 0; j < S; j++) sc[i][j] /= sum;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0;
                    for (int64_t j = 0; j < S; j++) acc += sc[i][j] * in[(n * S + j) * 3 * E + 2 * E + h * D + d];
                    ref[(n * S + i) * E + h * D + d] = (float)(acc > 0 ? acc : 0);
                }
            }
        }
    const void *ins[1] = {in};
    uint64_t nout;
    float *out = tm_run(&t, N, ins, &nout);
    assert_int_equal(nout, (uint64_t)(N * S * E));
    check_close("attention on views", out, ref, nout, 1e-5);
    float *plain = tm_run_opts(&t, N, ins, &nout, 1, FEED_ALL_FIRST, 0);
    check_close("attention unfused", plain, ref, nout, 1e-5);

    /* The merge Transpose was fused into the context MatMul. */
    struct exec_model *m;
    char err[256];
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), 0);
    int permuted = 0;
    for (int i = 0; i < exec_model_nsteps(m); i++) {
        const struct exec_step *st = exec_model_step(m, i);
        for (int k = 0; k < st->npost; k++) permuted += st->post[k].kind == EXEC_POST_PERMUTE;
    }
    assert_int_equal(permuted, 1);
    exec_model_destroy(m);
    free(out); free(plain); free(ref); free(in);
    tm_free(&t);
}

static void test_attention_views(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{2, 5}, {1, 1}, {2, 1}, {1, 2}, {1, 5}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        print_message("attention views N=%lld S=%lld\n", (long long)shapes[i][0],
                      (long long)shapes[i][1]);
        run_attention_views(shapes[i][0], shapes[i][1]);
    }
}

/* Every view kind whose leading dimensions are all 1 (where a view differs
 * from a plain tensor only by its offset or by strides of size-1 axes):
 * slices, transposes, reshapes, and views of views, each read by a MatMul
 * as A and as B (read in place), by Relu (copied to plain first) and as the
 * model output (written plain), at batch 1 and 2. Reference: the same
 * slicing and permuting done on plain arrays. */
enum vkind { V_SLICE, V_TRANSPOSE, V_RESHAPE };
struct vop {
    enum vkind kind;
    int64_t a[4]; /* slice: axis, start, end; transpose: perm; reshape: shape (0 copies) */
};
struct vchain {
    const char *name;
    int64_t in[4]; /* input dims, [0] the batch */
    int nops;
    struct vop ops[4];
};

/* Plain-array reference of one view op on a rank-4 tensor (dims updated). */
static float *ref_vop(const float *x, int64_t *dims, const struct vop *op)
{
    int64_t n = dims[0] * dims[1] * dims[2] * dims[3];
    float *y = malloc((size_t)n * 4);
    int64_t st[4] = {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
    if (op->kind == V_RESHAPE) {
        memcpy(y, x, (size_t)n * 4);
        for (int i = 0; i < 4; i++)
            if (op->a[i]) dims[i] = op->a[i];
        return y;
    }
    int64_t od[4], ostr[4], base = 0; /* output dims and the input strides they walk */
    for (int i = 0; i < 4; i++) {
        int src = op->kind == V_TRANSPOSE ? (int)op->a[i] : i;
        od[i] = dims[src];
        ostr[i] = st[src];
    }
    if (op->kind == V_SLICE) {
        od[op->a[0]] = op->a[2] - op->a[1];
        base = op->a[1] * st[op->a[0]];
    }
    int64_t k = 0;
    for (int64_t i0 = 0; i0 < od[0]; i0++)
        for (int64_t i1 = 0; i1 < od[1]; i1++)
            for (int64_t i2 = 0; i2 < od[2]; i2++)
                for (int64_t i3 = 0; i3 < od[3]; i3++)
                    y[k++] = x[base + i0 * ostr[0] + i1 * ostr[1] + i2 * ostr[2] + i3 * ostr[3]];
    memcpy(dims, od, sizeof od);
    return y;
}

static int32_t add_vop(struct graph *g, int32_t v, const struct vop *op)
{
    int64_t one = 1;
    switch (op->kind) {
    case V_SLICE:
        v = graph_add_node(g, GRAPH_OP_SLICE, "slice", 1, &v, 0, NULL);
        graph_set_ints(g, "starts", 1, &op->a[1]);
        graph_set_ints(g, "ends", 1, &op->a[2]);
        graph_set_ints(g, "axes", 1, &op->a[0]);
        graph_set_ints(g, "steps", 1, &one);
        break;
    case V_TRANSPOSE:
        v = graph_add_node(g, GRAPH_OP_TRANSPOSE, "transpose", 1, &v, 0, NULL);
        graph_set_ints(g, "perm", 4, op->a);
        break;
    case V_RESHAPE:
        v = graph_add_node(g, GRAPH_OP_RESHAPE, "reshape", 1, &v, 0, NULL);
        graph_set_ints(g, "shape", 4, op->a);
        break;
    }
    return v;
}

enum vuse { U_MATMUL_A, U_MATMUL_B, U_RELU, U_OUTPUT };

static void run_view_chain(const struct vchain *c, int64_t N, enum vuse use)
{
    /* The view's reference value cur [N, d1, d2, d3] first: the second
     * input's shape depends on it, and inputs come before nodes. */
    int64_t dims[4] = {N, c->in[1], c->in[2], c->in[3]};
    uint64_t nx = (uint64_t)(dims[0] * dims[1] * dims[2] * dims[3]);
    float *x = rand_buf(nx, -1, 1);
    float *cur = malloc(nx * 4);
    memcpy(cur, x, nx * 4);
    for (int i = 0; i < c->nops; i++) {
        float *next = ref_vop(cur, dims, &c->ops[i]);
        free(cur);
        cur = next;
    }
    struct tmodel t;
    tm_init(&t, "views");
    int64_t xd[4] = {-1, c->in[1], c->in[2], c->in[3]};
    int32_t v = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
    const int64_t P = 3;
    int mm = use == U_MATMUL_A || use == U_MATMUL_B;
    /* MatMul: A [N,d1,M,K] x B [N,d1,K,Q]; the view is A or B. */
    int64_t M = use == U_MATMUL_A ? dims[2] : P, K = use == U_MATMUL_A ? dims[3] : dims[2];
    int64_t Q = use == U_MATMUL_A ? P : dims[3];
    int32_t w = -1;
    if (mm) {
        int64_t wd[4] = {-1, dims[1], use == U_MATMUL_A ? K : M, use == U_MATMUL_A ? Q : K};
        w = graph_add_input(&t.g, "w", GRAPH_F32, 4, wd);
    }
    for (int i = 0; i < c->nops; i++) v = add_vop(&t.g, v, &c->ops[i]);
    int64_t od[4] = {N, dims[1], dims[2], dims[3]};
    float *other = NULL, *ref = NULL;
    if (mm) {
        int32_t ab[2] = {v, w};
        if (use == U_MATMUL_B) {
            ab[0] = w;
            ab[1] = v;
        }
        v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "mm", 2, ab, 0, NULL);
        other = rand_buf((uint64_t)(N * dims[1] * (use == U_MATMUL_A ? K * Q : M * K)), -1, 1);
        od[2] = M;
        od[3] = Q;
        ref = malloc((size_t)(N * dims[1] * M * Q) * 4);
        for (int64_t b = 0; b < N * dims[1]; b++) {
            const float *pa = use == U_MATMUL_A ? cur + b * M * K : other + b * M * K;
            const float *pb = use == U_MATMUL_A ? other + b * K * Q : cur + b * K * Q;
            ref_gemm(pa, M, K, pb, Q, 0, NULL, 1.0f, 0, ref + b * M * Q);
        }
    } else {
        uint64_t n = (uint64_t)(N * dims[1] * dims[2] * dims[3]);
        ref = malloc(n * 4);
        for (uint64_t i = 0; i < n; i++) ref[i] = use == U_RELU && cur[i] < 0 ? 0 : cur[i];
        if (use == U_RELU) v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
    }
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    const void *ins[2] = {x, other};
    uint64_t nout;
    static const char *uses[] = {"matmul A", "matmul B", "relu", "output"};
    char what[128];
    snprintf(what, sizeof what, "%s N=%lld read by %s", c->name, (long long)N, uses[use]);
    for (int nf = 0; nf < 2; nf++) {
        float *out = tm_run_opts(&t, N, ins, &nout, nf, FEED_ALL_FIRST, 0);
        assert_int_equal(nout, (uint64_t)(od[0] * od[1] * od[2] * od[3]));
        check_close(what, out, ref, nout, 1e-5);
        free(out);
    }
    free(x); free(cur); free(other); free(ref);
    tm_free(&t);
}

static void test_views_leading_ones(void **state)
{
    (void)state;
    static const struct vchain chains[] = {
        /* GPT-2's heads at S = 1: a slice of the fused qkv row, split, transposed. */
        {"slice-reshape-transpose", {0, 1, 1, 18}, 3,
         {{V_SLICE, {3, 12, 18, 0}}, {V_RESHAPE, {0, 0, 2, 3}}, {V_TRANSPOSE, {0, 2, 1, 3}}}},
        {"slice-reshape-transpose(k)", {0, 1, 1, 18}, 3,
         {{V_SLICE, {3, 6, 12, 0}}, {V_RESHAPE, {0, 0, 2, 3}}, {V_TRANSPOSE, {0, 2, 3, 1}}}},
        /* A slice of a transposed view. */
        {"transpose-slice", {0, 1, 4, 6}, 2,
         {{V_TRANSPOSE, {0, 1, 3, 2}}, {V_SLICE, {2, 1, 4, 0}}}},
        /* Slice, reshape that splits the sliced axis, transpose. */
        {"slice-reshape-transpose(2)", {0, 1, 1, 12}, 3,
         {{V_SLICE, {3, 4, 10, 0}}, {V_RESHAPE, {0, 1, 2, 3}}, {V_TRANSPOSE, {0, 1, 3, 2}}}},
        /* A slice of a slice. */
        {"slice-slice", {0, 1, 2, 10}, 2, {{V_SLICE, {3, 2, 9, 0}}, {V_SLICE, {2, 1, 2, 0}}}},
        /* A slice along a leading axis of size > 1 that leaves it 1. */
        {"slice-leading", {0, 3, 1, 5}, 1, {{V_SLICE, {1, 2, 3, 0}}}},
    };
    for (size_t i = 0; i < sizeof chains / sizeof chains[0]; i++)
        for (int64_t N = 1; N <= 2; N++)
            for (int use = U_MATMUL_A; use <= U_OUTPUT; use++)
                run_view_chain(&chains[i], N, (enum vuse)use);
}

/* ---- pipelining, determinism, errors ----------------------------------- */

/* A chain of convs (one node per batch): batches delivered late, in order
 * and reversed, give bit-identical output to all-present. */
static void build_chain(struct tmodel *t)
{
    tm_init(t, "chain");
    int64_t xd[4] = {-1, 8, 10, 10};
    int32_t v = graph_add_input(&t->g, "x", GRAPH_F32, 4, xd);
    int64_t c = 8;
    for (int i = 0; i < 6; i++) {
        int64_t m = 16 + 16 * (i % 2);
        int64_t wd[4] = {m, c, 3, 3}, bd[1] = {m}, k[2] = {3, 3}, p[4] = {1, 1, 1, 1};
        char nm[32];
        snprintf(nm, sizeof nm, "w%d", i);
        int32_t ps[2];
        ps[0] = tm_param(t, nm, 4, wd, -0.2f, 0.2f);
        snprintf(nm, sizeof nm, "b%d", i);
        ps[1] = tm_param(t, nm, 1, bd, -0.1f, 0.1f);
        v = graph_add_node(&t->g, GRAPH_OP_CONV, nm, 1, &v, 2, ps);
        graph_set_ints(&t->g, "kernel_shape", 2, k);
        graph_set_ints(&t->g, "pads", 4, p);
        v = graph_add_node(&t->g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
        c = m;
    }
    v = graph_add_node(&t->g, GRAPH_OP_GLOBALAVGPOOL, "gap", 1, &v, 0, NULL);
    v = graph_add_node(&t->g, GRAPH_OP_FLATTEN, "flat", 1, &v, 0, NULL);
    int64_t fd[2] = {5, c}, fb[1] = {5};
    int32_t fp[2] = {tm_param(t, "fc.w", 2, fd, -1, 1), tm_param(t, "fc.b", 1, fb, -1, 1)};
    v = graph_add_node(&t->g, GRAPH_OP_GEMM, "fc", 1, &v, 2, fp);
    graph_set_int(&t->g, "transB", 1);
    graph_add_output(&t->g, "y", v);
    tm_batch(t, 0);
}

static void test_pipelined_bit_identical(void **state)
{
    (void)state;
    struct tmodel t;
    build_chain(&t);
    assert_true(t.g.nbatches >= 7);
    float *in = rand_buf(2 * 800, -1, 1);
    const void *ins[1] = {in};
    uint64_t n0, n1, n2;
    float *all = tm_run_opts(&t, 2, ins, &n0, 0, FEED_ALL_FIRST, 0);
    float *late = tm_run_opts(&t, 2, ins, &n1, 0, FEED_THREAD_DELAYED, 0);
    float *rev = tm_run_opts(&t, 2, ins, &n2, 0, FEED_THREAD_REVERSED, 0);
    assert_int_equal(n0, 10);
    assert_memory_equal(all, late, n0 * 4);
    assert_memory_equal(all, rev, n0 * 4);
    free(all); free(late); free(rev); free(in);
    tm_free(&t);
}

/* Matmul weights (BERT's shapes) are used in place by the first run and
 * relaid afterwards: the run before and after the switch give the same bits,
 * both match the reference, and --eager-layout gives the same bits again. */
static void test_deferred_relayout(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "relayout");
    int64_t B = 2, T = 8, K = 768, N = 768;
    int64_t xd[3] = {-1, T, K}, wd[2] = {K, N};
    int32_t v = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
    int32_t w1 = tm_param(&t, "w1", 2, wd, -0.05f, 0.05f), w2 = tm_param(&t, "w2", 2, wd, -0.05f, 0.05f);
    v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "mm1", 1, &v, 1, &w1);
    v = graph_add_node(&t.g, GRAPH_OP_MATMUL, "mm2", 1, &v, 1, &w2);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, 0);
    uint64_t ny = (uint64_t)(B * T * N);
    float *in = rand_buf((uint64_t)(B * T * K), -1, 1);
    float *mid = malloc(ny * 4), *ref = malloc(ny * 4);
    ref_gemm(in, B * T, K, tm_data(&t, "w1"), N, 0, NULL, 1, 0, mid);
    ref_gemm(mid, B * T, N, tm_data(&t, "w2"), N, 0, NULL, 1, 0, ref);
    const void *ins[1] = {in};
    uint64_t in_bytes[1] = {(uint64_t)(B * T * K) * 4};
    float *out[3];
    for (int eager = 0; eager < 2; eager++) {
        struct exec_options opt;
        exec_options_default(&opt);
        opt.eager_layout = eager;
        struct exec_model *m;
        char err[512] = "";
        assert_int_equal(exec_model_create(&m, &t.g, &opt, err, sizeof err), 0);
        for (int b = 0; b < t.g.nbatches; b++)
            assert_int_equal(exec_batch_arrived(m, b, t.batches[b], t.g.batches[b].nbytes), 0);
        assert_int_equal(exec_wait_prepared(m), 0);
        for (int r = 0; r < (eager ? 1 : 2); r++) {
            float *o = malloc(ny * 4);
            void *outs[1] = {o};
            /* Before the first run nothing is relaid (the preparer waits for
             * all batches to be prepared and may start; never finished and
             * committed before a run unless exec_finish_layout is called). */
            if (!eager && r == 0) assert_int_equal(exec_layout_final(m), 0);
            assert_int_equal(exec_run(m, B, ins, in_bytes, outs, NULL, err, sizeof err), 0);
            check_close("relayout", o, ref, ny, 1e-5);
            out[eager ? 2 : r] = o;
            if (!eager && r == 0) {
                assert_int_equal(exec_finish_layout(m), 2); /* both matmuls were deferred */
                assert_int_equal(exec_layout_final(m), 1);
            }
        }
        if (eager) {
            assert_int_equal(exec_layout_final(m), 1);
            assert_int_equal(exec_finish_layout(m), 0); /* nothing was deferred */
        }
        exec_model_destroy(m);
    }
    assert_memory_equal(out[0], out[1], ny * 4);
    assert_memory_equal(out[0], out[2], ny * 4);
    for (int i = 0; i < 3; i++) free(out[i]);
    free(in); free(mid); free(ref);
    tm_free(&t);
}

struct failer {
    struct exec_model *m;
    struct tmodel *t;
};

static void *fail_main(void *arg)
{
    struct failer *f = arg;
    exec_batch_arrived(f->m, 0, f->t->batches[0], f->t->g.batches[0].nbytes);
    usleep(20000);
    exec_batch_failed(f->m, PPS_EFETCH);
    return NULL;
}

static void test_errors(void **state)
{
    (void)state;
    struct tmodel t;
    build_chain(&t);
    struct exec_model *m;
    char err[256];
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), 0);
    /* Wrong batch length / index. */
    assert_int_equal(exec_batch_arrived(m, 0, t.batches[0], 3), PPS_EINVAL);
    assert_int_equal(exec_batch_arrived(m, t.g.nbatches, t.batches[0], t.g.batches[0].nbytes), PPS_EINVAL);
    float *in = rand_buf(2 * 800, -1, 1);
    const void *ins[1] = {in};
    float out[10];
    void *outs[1] = {out};
    uint64_t bad = 100, good = 2 * 800 * 4;
    assert_int_equal(exec_run(m, 2, ins, &bad, outs, NULL, err, sizeof err), PPS_ESHAPE);
    /* Parameters never come: the run returns the failure, not a hang. */
    pthread_t th;
    struct failer f = {m, &t};
    assert_int_equal(pthread_create(&th, NULL, fail_main, &f), 0);
    assert_int_equal(exec_run(m, 2, ins, &good, outs, NULL, err, sizeof err), PPS_EFETCH);
    pthread_join(th, NULL);
    exec_model_destroy(m);

    /* A graph whose op attributes are wrong is refused at creation. */
    struct tmodel b;
    tm_init(&b, "bad");
    int64_t xd[4] = {-1, 3, 8, 8}, wd[4] = {4, 5, 3, 3};
    int32_t x = graph_add_input(&b.g, "x", GRAPH_F32, 4, xd);
    int32_t w = tm_param(&b, "w", 4, wd, 0, 1);
    int32_t v = graph_add_node(&b.g, GRAPH_OP_CONV, "conv", 1, &x, 1, &w);
    graph_add_output(&b.g, "y", v);
    tm_batch(&b, BATCHING_DEFAULT_MAX);
    assert_int_equal(exec_model_create(&m, &b.g, NULL, err, sizeof err), PPS_ESHAPE);
    assert_non_null(strstr(err, "conv"));
    tm_free(&b);
    free(in);
    tm_free(&t);
}

static void test_memplan(void **state)
{
    (void)state;
    struct memplan_buf b[5] = {
        {100, 0, 1, 0}, {200, 1, 2, 0}, {100, 2, 3, 0}, {300, 3, 4, 0}, {50, 0, 4, 0},
    };
    uint64_t total = memplan_assign(b, 5, 64);
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++) {
            int live = b[i].start <= b[j].end && b[j].start <= b[i].end;
            int overlap = b[i].offset < b[j].offset + b[j].size && b[j].offset < b[i].offset + b[i].size;
            assert_false(live && overlap);
        }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(b[i].offset % 64, 0);
        assert_true(b[i].offset + b[i].size <= total);
    }
    assert_true(total < 100 + 200 + 100 + 300 + 50); /* something was shared */
}

static void test_exec_mem_recycling(void **state)
{
    (void)state;
    const uint64_t MB = 1u << 20;
    exec_mem_set_keep(0); /* start from an empty pool */
    exec_mem_set_keep(8 * MB);
    uint64_t sz, sz2, sz3;
    int faulted;
    uint8_t *a = exec_mem_get(3 * MB, &sz, &faulted);
    assert_non_null(a);
    assert_int_equal(faulted, 0);
    assert_true(sz >= 3 * MB && sz % 4096 == 0);
    memset(a, 7, 3 * MB);
    exec_mem_put(a, sz);
    assert_int_equal(exec_mem_idle_bytes(), sz);
    /* A smaller request splits the idle block: its front, contents and all. */
    uint8_t *b = exec_mem_get(MB - 100, &sz2, &faulted);
    assert_int_equal(faulted, 1);
    assert_ptr_equal(b, a);
    assert_int_equal(sz2, MB);
    assert_int_equal(b[12345], 7);
    assert_int_equal(exec_mem_idle_bytes(), sz - MB);
    /* The tail serves the next request. */
    uint8_t *c = exec_mem_get(2 * MB, &sz3, &faulted);
    assert_int_equal(faulted, 1);
    assert_ptr_equal(c, a + MB);
    assert_int_equal(exec_mem_idle_bytes(), 0);
    /* Pieces given back in any order join into one block again. */
    exec_mem_put(c, sz3);
    exec_mem_put(b, sz2);
    assert_int_equal(exec_mem_idle_bytes(), 3 * MB);
    uint8_t *d = exec_mem_get(3 * MB, &sz, &faulted);
    assert_int_equal(faulted, 1);
    assert_ptr_equal(d, a);
    /* Nothing idle fits: fresh memory. */
    uint8_t *e = exec_mem_get(6 * MB, &sz2, &faulted);
    assert_int_equal(faulted, 0);
    /* Over the limit: the oldest idle blocks are unmapped. */
    exec_mem_put(d, sz);
    exec_mem_put(e, sz2);
    assert_true(exec_mem_idle_bytes() <= 8 * MB);
    /* A reservation is faulted in now, kept, and handed out as recycled. */
    exec_mem_set_keep(0);
    assert_int_equal(exec_mem_reserve(4 * MB), 0);
    assert_int_equal(exec_mem_idle_bytes(), 4 * MB);
    uint8_t *f = exec_mem_get(3 * MB, &sz, &faulted);
    assert_int_equal(faulted, 1);
    exec_mem_put(f, sz);
    assert_int_equal(exec_mem_idle_bytes(), 4 * MB);
    exec_mem_set_keep(0);
    assert_int_equal(exec_mem_idle_bytes(), 0);
    exec_mem_set_keep(EXEC_MEM_DEFAULT_KEEP);
}

/* ---- ONNX import ops (graph ops 29+) ----------------------------------- */

/* One node y = op(x) (plus params) on x[N, dims...]; returns output 0. */
static float *run_single(struct tmodel *t, int64_t n, const void *x, uint64_t *nout)
{
    tm_batch(t, BATCHING_DEFAULT_MAX);
    const void *ins[1] = {x};
    return tm_run(t, n, ins, nout);
}

static void test_onnx_unary(void **state)
{
    (void)state;
    const enum graph_op ops[] = {GRAPH_OP_NEG, GRAPH_OP_ABS, GRAPH_OP_EXP, GRAPH_OP_LOG,
                                 GRAPH_OP_RECIPROCAL, GRAPH_OP_LEAKYRELU, GRAPH_OP_CLIP,
                                 GRAPH_OP_CLIP, GRAPH_OP_HARDSIGMOID, GRAPH_OP_HARDSWISH,
                                 GRAPH_OP_ELU, GRAPH_OP_SELU, GRAPH_OP_SOFTPLUS, GRAPH_OP_SIN,
                                 GRAPH_OP_COS, GRAPH_OP_FLOOR, GRAPH_OP_CEIL, GRAPH_OP_SIGN};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct tmodel t;
        tm_init(&t, "un");
        int64_t xd[3] = {-1, 5, 7};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t v = graph_add_node(&t.g, ops[i], "u", 1, &x, 0, NULL);
        int clip_one_sided = ops[i] == GRAPH_OP_CLIP && i == 7;
        switch (ops[i]) {
        case GRAPH_OP_LEAKYRELU: graph_set_float(&t.g, "alpha", 0.1f); break;
        case GRAPH_OP_CLIP:
            graph_set_float(&t.g, "min", -0.5f);
            if (!clip_one_sided) graph_set_float(&t.g, "max", 1.25f);
            break;
        case GRAPH_OP_HARDSIGMOID:
            graph_set_float(&t.g, "alpha", 0.3f);
            graph_set_float(&t.g, "beta", 0.4f);
            break;
        case GRAPH_OP_ELU: graph_set_float(&t.g, "alpha", 0.7f); break;
        default: break;
        }
        graph_add_output(&t.g, "y", v);
        uint64_t n = 2 * 35;
        int positive = ops[i] == GRAPH_OP_LOG || ops[i] == GRAPH_OP_RECIPROCAL;
        float *in = rand_buf(n, positive ? 0.1f : -4.0f, 4.0f);
        float *ref = malloc(n * 4);
        for (uint64_t k = 0; k < n; k++) {
            double z = in[k], r = 0;
            switch (ops[i]) {
            case GRAPH_OP_NEG: r = -z; break;
            case GRAPH_OP_ABS: r = fabs(z); break;
            case GRAPH_OP_EXP: r = exp(z); break;
            case GRAPH_OP_LOG: r = log(z); break;
            case GRAPH_OP_RECIPROCAL: r = 1 / z; break;
            case GRAPH_OP_LEAKYRELU: r = z >= 0 ? z : 0.1 * z; break;
            case GRAPH_OP_CLIP: r = z < -0.5 ? -0.5 : (!clip_one_sided && z > 1.25 ? 1.25 : z); break;
            case GRAPH_OP_HARDSIGMOID: r = fmax(0, fmin(1, 0.3 * z + 0.4)); break;
            case GRAPH_OP_HARDSWISH: r = z * fmax(0, fmin(1, z / 6 + 0.5)); break;
            case GRAPH_OP_ELU: r = z >= 0 ? z : 0.7 * (exp(z) - 1); break;
            case GRAPH_OP_SELU:
                r = 1.0507009873554804934193349852946 *
                    (z > 0 ? z : 1.6732632423543772848170429916717 * (exp(z) - 1));
                break;
            case GRAPH_OP_SOFTPLUS: r = log(1 + exp(z)); break;
            case GRAPH_OP_SIN: r = sin(z); break;
            case GRAPH_OP_COS: r = cos(z); break;
            case GRAPH_OP_FLOOR: r = floor(z); break;
            case GRAPH_OP_CEIL: r = ceil(z); break;
            case GRAPH_OP_SIGN: r = z > 0 ? 1 : (z < 0 ? -1 : 0); break;
            default: fail();
            }
            ref[k] = (float)r;
        }
        uint64_t nout;
        float *out = run_single(&t, 2, in, &nout);
        assert_int_equal(nout, n);
        check_close(graph_op_name(ops[i]), out, ref, n, 1e-5);
        free(out); free(ref); free(in);
        tm_free(&t);
    }
}

/* Conv -> Clip(0, 6) (ReLU6) and Conv -> HardSwish fuse as oneDNN post-ops:
 * fused == unfused == the naive reference. */
static void test_onnx_conv_activation_fusion(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        struct tmodel t;
        tm_init(&t, "cact");
        int64_t N = 2, C = 4, H = 5, W = 6, K = 8;
        int64_t xd[4] = {-1, C, H, W}, wd[4] = {K, C, 3, 3};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
        int32_t w = tm_param(&t, "w", 4, wd, -1, 1);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_CONV, "conv", 1, &x, 1, &w);
        int64_t pads[4] = {1, 1, 1, 1};
        graph_set_ints(&t.g, "pads", 4, pads);
        v = graph_add_node(&t.g, variant ? GRAPH_OP_HARDSWISH : GRAPH_OP_CLIP, "act", 1, &v, 0, NULL);
        if (!variant) {
            graph_set_float(&t.g, "min", 0.0f);
            graph_set_float(&t.g, "max", 6.0f);
        }
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        uint64_t nx = (uint64_t)(N * C * H * W), ny = (uint64_t)(N * K * H * W);
        float *in = rand_buf(nx, -3, 3), *ref = malloc(ny * 4);
        struct win p = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
        ref_conv(in, N, C, H, W, tm_data(&t, "w"), K, NULL, &p, 1, ref, H, W);
        for (uint64_t k = 0; k < ny; k++) {
            double z = ref[k];
            ref[k] = (float)(variant ? z * fmax(0, fmin(1, z / 6 + 0.5)) : fmin(6, fmax(0, z)));
        }
        const void *ins[1] = {in};
        uint64_t n1, n2;
        float *fused = tm_run_opts(&t, N, ins, &n1, 0, FEED_ALL_FIRST, 0);
        float *plain = tm_run_opts(&t, N, ins, &n2, 1, FEED_ALL_FIRST, 0);
        assert_int_equal(n1, ny);
        check_close("conv+act fused", fused, ref, ny, 1e-4);
        check_close("conv+act unfused", plain, ref, ny, 1e-4);
        free(fused); free(plain); free(ref); free(in);
        tm_free(&t);
    }
}

/* Max/Min/PRelu/Equal/Less/Greater with broadcasting both ways (a [N,1,4]
 * against b [N,3,1] or a param [3,1]; PRelu's slope [1,4]), comparisons of int64 inputs, Not and a
 * Cast round trip (float -> int64 truncates toward zero). */
static void test_onnx_binary_compare_cast(void **state)
{
    (void)state;
    const enum graph_op ops[] = {GRAPH_OP_MAX, GRAPH_OP_MIN, GRAPH_OP_PRELU, GRAPH_OP_EQUAL,
                                 GRAPH_OP_LESS, GRAPH_OP_GREATER, GRAPH_OP_AND, GRAPH_OP_OR};
    const int64_t N = 2;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        for (int with_param = 0; with_param < 2; with_param++) {
            if (ops[i] == GRAPH_OP_PRELU && !with_param) continue;
            struct tmodel t;
            tm_init(&t, "bin");
            int prelu = ops[i] == GRAPH_OP_PRELU;
            int64_t ad[3] = {-1, 1, 4}, bd[3] = {-1, 3, 1}, pd[2] = {3, 1}, qd[2] = {1, 4};
            int32_t a = graph_add_input(&t.g, "a", GRAPH_F32, 3, ad);
            int32_t v;
            float pv[4] = {0.5f, -0.25f, 0.0f, 2.0f};
            if (with_param) {
                int32_t p = tm_param_data(&t, "p", 2, prelu ? qd : pd, pv);
                v = graph_add_node(&t.g, ops[i], "op", 1, &a, 1, &p);
            } else {
                int32_t b = graph_add_input(&t.g, "b", GRAPH_F32, 3, bd);
                int32_t ab[2] = {a, b};
                v = graph_add_node(&t.g, ops[i], "op", 2, ab, 0, NULL);
            }
            graph_add_output(&t.g, "y", v);
            tm_batch(&t, BATCHING_DEFAULT_MAX);
            float xa[8] = {0.5f, -1.0f, 2.0f, 0.0f, -0.25f, 3.0f, -2.0f, 0.5f};
            float xb[6] = {0.5f, -0.25f, 1.0f, 2.0f, 0.0f, -1.0f};
            float ref[24];
            int rows = prelu ? 1 : 3;
            for (int n = 0; n < 2; n++)
                for (int r = 0; r < rows; r++)
                    for (int j = 0; j < 4; j++) {
                        float x = xa[n * 4 + j], z, y = 0;
                        z = prelu ? pv[j] : (with_param ? pv[r] : xb[n * 3 + r]);
                        switch (ops[i]) {
                        case GRAPH_OP_MAX: y = x > z ? x : z; break;
                        case GRAPH_OP_MIN: y = x < z ? x : z; break;
                        case GRAPH_OP_PRELU: y = x < 0 ? x * z : x; break;
                        case GRAPH_OP_EQUAL: y = x == z; break;
                        case GRAPH_OP_LESS: y = x < z; break;
                        case GRAPH_OP_GREATER: y = x > z; break;
                        case GRAPH_OP_AND: y = x != 0 && z != 0; break;
                        case GRAPH_OP_OR: y = x != 0 || z != 0; break;
                        default: fail();
                        }
                        ref[(n * rows + r) * 4 + j] = y;
                    }
            const void *ins[2] = {xa, xb};
            uint64_t nout;
            float *out = tm_run(&t, N, ins, &nout);
            assert_int_equal(nout, (uint64_t)(N * rows * 4));
            check_close(graph_op_name(ops[i]), out, ref, nout, 0);
            free(out);
            tm_free(&t);
        }
    }
    /* Mod (Python's sign rule) and Mod fmod=1 (C's) by a parameter. */
    for (int fm = 0; fm < 2; fm++) {
        struct tmodel t;
        tm_init(&t, "mod");
        int64_t xd[2] = {-1, 4}, dd[1] = {4};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 2, xd);
        float dv[4] = {2, 2, -2, -2};
        int32_t d = tm_param_data(&t, "d", 1, dd, dv);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_MOD, "mod", 1, &x, 1, &d);
        graph_set_int(&t.g, "fmod", fm);
        graph_add_output(&t.g, "y", v);
        float xs[4] = {5.5f, -5.5f, 5.5f, -5.5f};
        float ref[2][4] = {{1.5f, 0.5f, -0.5f, -1.5f}, {1.5f, -1.5f, 1.5f, -1.5f}};
        uint64_t nout;
        float *out = run_single(&t, 1, xs, &nout);
        assert_int_equal(nout, 4);
        check_close(fm ? "Mod fmod" : "Mod", out, ref[fm], 4, 0);
        free(out);
        tm_free(&t);
    }
    /* Pow(x, e) with an int64 exponent input. */
    {
        struct tmodel t;
        tm_init(&t, "powi");
        int64_t xd[2] = {-1, 3};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 2, xd);
        int32_t e = graph_add_input(&t.g, "e", GRAPH_I64, 2, xd);
        int32_t xe[2] = {x, e};
        int32_t v = graph_add_node(&t.g, GRAPH_OP_POW, "pow", 2, xe, 0, NULL);
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        float xs[6] = {2, -3, 0.5f, 1.5f, -1, 4};
        int64_t es[6] = {3, 2, -1, 0, 5, 1};
        float ref[6] = {8, 9, 2, 1, -1, 4};
        const void *ins[2] = {xs, es};
        uint64_t nout;
        float *out = tm_run(&t, 2, ins, &nout);
        assert_int_equal(nout, 6);
        check_close("pow int64 exponent", out, ref, 6, 1e-6);
        free(out);
        tm_free(&t);
    }
    /* Not(Equal(ids, ids2)) on int64 inputs; Cast(Cast(x, int64), float). */
    struct tmodel t;
    tm_init(&t, "cmp");
    int64_t idd[2] = {-1, 3}, xd[2] = {-1, 3};
    int32_t ids = graph_add_input(&t.g, "ids", GRAPH_I64, 2, idd);
    int32_t ids2 = graph_add_input(&t.g, "ids2", GRAPH_I64, 2, idd);
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 2, xd);
    int32_t pair[2] = {ids, ids2};
    int32_t eq = graph_add_node(&t.g, GRAPH_OP_EQUAL, "eq", 2, pair, 0, NULL);
    int32_t ne = graph_add_node(&t.g, GRAPH_OP_NOT, "not", 1, &eq, 0, NULL);
    int32_t ci = graph_add_node(&t.g, GRAPH_OP_CAST, "toint", 1, &x, 0, NULL);
    graph_set_int(&t.g, "to", 7);
    int32_t cf = graph_add_node(&t.g, GRAPH_OP_CAST, "tofloat", 1, &ci, 0, NULL);
    graph_set_int(&t.g, "to", 1);
    int32_t sum[2] = {ne, cf};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_ADD, "add", 2, sum, 0, NULL);
    graph_add_output(&t.g, "y", v);
    tm_batch(&t, BATCHING_DEFAULT_MAX);
    int64_t a[6] = {1, 5, 9, 2, 5, 7}, b[6] = {1, 4, 9, 3, 5, 8};
    float xs[6] = {1.75f, -1.75f, 0.5f, -0.5f, 3.0f, -2.99f};
    /* not-equal + trunc(x) */
    float ref[6] = {0 + 1, 1 - 1, 0 + 0, 1 + 0, 0 + 3, 1 - 2};
    const void *ins[3] = {a, b, xs};
    uint64_t nout;
    float *out = tm_run(&t, 2, ins, &nout);
    assert_int_equal(nout, 6);
    check_close("not/equal/cast", out, ref, 6, 0);
    free(out);
    tm_free(&t);
}

/* Reduce* over some / all axes with and without keepdims, GlobalMaxPool,
 * LogSoftmax on a middle axis, InstanceNormalization: against loops. */
static void test_onnx_reduce_norm(void **state)
{
    (void)state;
    const int64_t N = 2, A = 3, B = 4, C = 5;
    const uint64_t nx = (uint64_t)(N * A * B * C);
    float *x = rand_buf(nx, -2, 2);
#define X(n, a, b, c) x[(((n) * A + (a)) * B + (b)) * C + (c)]
    const enum graph_op rops[] = {GRAPH_OP_REDUCEMEAN, GRAPH_OP_REDUCESUM, GRAPH_OP_REDUCEMAX,
                                  GRAPH_OP_REDUCEMIN};
    for (size_t i = 0; i < 4; i++) {
        for (int variant = 0; variant < 3; variant++) {
            /* 0: axes [1, -1] keepdims 1; 1: axes [1, -1] keepdims 0; 2: all axes but batch */
            struct tmodel t;
            tm_init(&t, "red");
            int64_t xd[4] = {-1, A, B, C};
            int32_t in = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
            int32_t v = graph_add_node(&t.g, rops[i], "r", 1, &in, 0, NULL);
            int64_t axes2[2] = {1, -1}, axes3[3] = {1, 2, 3};
            if (variant < 2) graph_set_ints(&t.g, "axes", 2, axes2);
            else graph_set_ints(&t.g, "axes", 3, axes3);
            graph_set_int(&t.g, "keepdims", variant == 1 ? 0 : 1);
            graph_add_output(&t.g, "y", v);
            uint64_t nout;
            float *out = run_single(&t, N, x, &nout);
            int64_t nb = variant < 2 ? B : 1;
            assert_int_equal(nout, (uint64_t)(N * nb));
            float ref[2 * 4];
            for (int64_t n = 0; n < N; n++)
                for (int64_t b = 0; b < nb; b++) {
                    double acc = rops[i] == GRAPH_OP_REDUCEMAX ? -1e30 : (rops[i] == GRAPH_OP_REDUCEMIN ? 1e30 : 0);
                    int64_t cnt = 0;
                    for (int64_t a = 0; a < A; a++)
                        for (int64_t bb = 0; bb < B; bb++)
                            for (int64_t c = 0; c < C; c++) {
                                if (variant < 2 && bb != b) continue;
                                double z = X(n, a, bb, c);
                                cnt++;
                                if (rops[i] == GRAPH_OP_REDUCEMAX) acc = z > acc ? z : acc;
                                else if (rops[i] == GRAPH_OP_REDUCEMIN) acc = z < acc ? z : acc;
                                else acc += z;
                            }
                    if (rops[i] == GRAPH_OP_REDUCEMEAN) acc /= (double)cnt;
                    ref[n * nb + b] = (float)acc;
                }
            check_close(graph_op_name(rops[i]), out, ref, nout, 1e-5);
            free(out);
            tm_free(&t);
        }
    }
    /* GlobalMaxPool over [B, C] of x seen as [N, A, B, C]. */
    {
        struct tmodel t;
        tm_init(&t, "gmp");
        int64_t xd[4] = {-1, A, B, C};
        int32_t in = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_GLOBALMAXPOOL, "g", 1, &in, 0, NULL);
        graph_add_output(&t.g, "y", v);
        uint64_t nout;
        float *out = run_single(&t, N, x, &nout);
        assert_int_equal(nout, (uint64_t)(N * A));
        float ref[2 * 3];
        for (int64_t n = 0; n < N; n++)
            for (int64_t a = 0; a < A; a++) {
                float m = -1e30f;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t c = 0; c < C; c++) m = X(n, a, b, c) > m ? X(n, a, b, c) : m;
                ref[n * A + a] = m;
            }
        check_close("GlobalMaxPool", out, ref, nout, 0);
        free(out);
        tm_free(&t);
    }
    /* LogSoftmax(axis 2) and InstanceNormalization. */
    for (int which = 0; which < 2; which++) {
        struct tmodel t;
        tm_init(&t, "norm");
        int64_t xd[4] = {-1, A, B, C}, cd[1] = {A};
        int32_t in = graph_add_input(&t.g, "x", GRAPH_F32, 4, xd);
        int32_t v;
        if (which == 0) {
            v = graph_add_node(&t.g, GRAPH_OP_LOGSOFTMAX, "ls", 1, &in, 0, NULL);
            graph_set_int(&t.g, "axis", 2);
        } else {
            int32_t ps[2] = {tm_param(&t, "scale", 1, cd, 0.5f, 1.5f), tm_param(&t, "bias", 1, cd, -1, 1)};
            v = graph_add_node(&t.g, GRAPH_OP_INSTANCENORM, "in", 1, &in, 2, ps);
            graph_set_float(&t.g, "epsilon", 1e-3f);
        }
        graph_add_output(&t.g, "y", v);
        float *ref = malloc(nx * 4);
        if (which == 0) {
            for (int64_t n = 0; n < N; n++)
                for (int64_t a = 0; a < A; a++)
                    for (int64_t c = 0; c < C; c++) {
                        double m = -1e30, sum = 0;
                        for (int64_t b = 0; b < B; b++) m = X(n, a, b, c) > m ? X(n, a, b, c) : m;
                        for (int64_t b = 0; b < B; b++) sum += exp(X(n, a, b, c) - m);
                        for (int64_t b = 0; b < B; b++)
                            ref[(((n * A + a) * B + b) * C) + c] = (float)(X(n, a, b, c) - m - log(sum));
                    }
        } else {
            const float *sc = tm_data(&t, "scale"), *bi = tm_data(&t, "bias");
            for (int64_t n = 0; n < N; n++)
                for (int64_t a = 0; a < A; a++) {
                    const float *px = &X(n, a, 0, 0);
                    double mean = 0, var = 0;
                    for (int64_t k = 0; k < B * C; k++) mean += px[k];
                    mean /= (double)(B * C);
                    for (int64_t k = 0; k < B * C; k++) var += (px[k] - mean) * (px[k] - mean);
                    var /= (double)(B * C);
                    for (int64_t k = 0; k < B * C; k++)
                        ref[(n * A + a) * B * C + k] = (float)((px[k] - mean) / sqrt(var + 1e-3) * sc[a] + bi[a]);
                }
        }
        uint64_t nout;
        float *out = run_single(&t, N, x, &nout);
        assert_int_equal(nout, nx);
        check_close(which ? "InstanceNormalization" : "LogSoftmax", out, ref, nx, 1e-5);
        free(out); free(ref);
        tm_free(&t);
    }
#undef X
    free(x);
}

/* Expand, Tile, Pad (constant, reflect, edge; negative = crop), Resize
 * (the ONNX operator documentation's examples): hand-computed literals. */
static void test_onnx_layout_ops(void **state)
{
    (void)state;
    struct lcase {
        enum graph_op op;
        int nd;
        int64_t xd[3];
        float x[8];
        int nout;
        float y[32];
    };
    /* x is [N=1, ...]; the attributes are set per case below. */
    const struct lcase cases[] = {
        /* Expand [1,3,1] to [2,3,2] (shape [1,2,3,2]... applied as [2,1,2] broadcast) */
        {GRAPH_OP_EXPAND, 3, {1, 3, 1}, {1, 2, 3}, 12, {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}},
        /* Tile [1,2,2] by [1,2,1] */
        {GRAPH_OP_TILE, 3, {1, 2, 2}, {1, 2, 3, 4}, 8, {1, 2, 3, 4, 1, 2, 3, 4}},
        /* Pad constant [1,2,2]: pads begin [0,1,0] end [0,0,2], value 9 */
        {GRAPH_OP_PAD, 3, {1, 2, 2}, {1, 2, 3, 4}, 12, {9, 9, 9, 9, 1, 2, 9, 9, 3, 4, 9, 9}},
        /* Pad reflect [1,1,3]: pads begin [0,0,2] end [0,0,1] */
        {GRAPH_OP_PAD, 3, {1, 1, 3}, {1, 2, 3}, 6, {3, 2, 1, 2, 3, 2}},
        /* Pad edge [1,1,3]: pads begin [0,0,2] end [0,0,1] */
        {GRAPH_OP_PAD, 3, {1, 1, 3}, {1, 2, 3}, 6, {1, 1, 1, 2, 3, 3}},
        /* Pad constant with a negative begin (crop) [1,1,3]: begin [0,0,-1] end [0,0,1] */
        {GRAPH_OP_PAD, 3, {1, 1, 3}, {1, 2, 3}, 3, {2, 3, 0}},
        /* Resize nearest (half_pixel, round_prefer_floor) [1,2,2] -> [1,4,6] */
        {GRAPH_OP_RESIZE, 3, {1, 2, 2}, {1, 2, 3, 4}, 24,
         {1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 3, 3, 3, 4, 4, 4}},
        /* Resize linear (half_pixel) [1,2,2] -> [1,4,4] */
        {GRAPH_OP_RESIZE, 3, {1, 2, 2}, {1, 2, 3, 4}, 16,
         {1, 1.25f, 1.75f, 2, 1.5f, 1.75f, 2.25f, 2.5f, 2.5f, 2.75f, 3.25f, 3.5f, 3, 3.25f, 3.75f, 4}},
        /* Resize linear align_corners [1,1,4] -> [1,1,8] */
        {GRAPH_OP_RESIZE, 3, {1, 1, 4}, {1, 2, 3, 4}, 8,
         {1, 1.42857142857f, 1.85714285714f, 2.28571428571f, 2.71428571429f, 3.14285714286f,
          3.57142857143f, 4}},
        /* Resize linear [1,2,4] -> [1,1,2] with ONNX scales 0.6 (not out/in) */
        {GRAPH_OP_RESIZE, 3, {1, 2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}, 2, {2.6666665f, 4.3333331f}},
        /* the same, align_corners: the resized length is 4 * 0.6, not 2 */
        {GRAPH_OP_RESIZE, 3, {1, 2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}, 2, {1.0f, 3.142857f}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct lcase *lc = &cases[i];
        struct tmodel t;
        tm_init(&t, "layout");
        int64_t xd[3] = {-1, lc->xd[1], lc->xd[2]};
        int32_t in = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t v = graph_add_node(&t.g, lc->op, "op", 1, &in, 0, NULL);
        switch (i) {
        case 0: { int64_t sh[3] = {2, 1, 2}; graph_set_ints(&t.g, "shape", 3, sh); break; }
        case 1: { int64_t r[3] = {1, 2, 1}; graph_set_ints(&t.g, "repeats", 3, r); break; }
        case 2: {
            int64_t p[6] = {0, 1, 0, 0, 0, 2};
            graph_set_ints(&t.g, "pads", 6, p);
            graph_set_float(&t.g, "value", 9.0f);
            break;
        }
        case 3: case 4: {
            int64_t p[6] = {0, 0, 2, 0, 0, 1};
            graph_set_ints(&t.g, "pads", 6, p);
            graph_set_int(&t.g, "mode", i == 3 ? 1 : 2);
            break;
        }
        case 5: { int64_t p[6] = {0, 0, -1, 0, 0, 1}; graph_set_ints(&t.g, "pads", 6, p); break; }
        case 6: { int64_t sz[3] = {0, 4, 6}; graph_set_ints(&t.g, "sizes", 3, sz); break; }
        case 7: {
            int64_t sz[3] = {0, 4, 4};
            graph_set_ints(&t.g, "sizes", 3, sz);
            graph_set_int(&t.g, "mode", 1);
            break;
        }
        case 8: {
            int64_t sz[3] = {0, 1, 8};
            graph_set_ints(&t.g, "sizes", 3, sz);
            graph_set_int(&t.g, "mode", 1);
            graph_set_int(&t.g, "coord", 2);
            break;
        }
        default: {
            int64_t sz[3] = {0, 1, 2}, bits[3];
            const float sc[3] = {1.0f, 0.6f, 0.6f};
            for (int k = 0; k < 3; k++) {
                uint32_t b;
                memcpy(&b, &sc[k], 4);
                bits[k] = b;
            }
            graph_set_ints(&t.g, "sizes", 3, sz);
            graph_set_ints(&t.g, "scales_bits", 3, bits);
            graph_set_int(&t.g, "mode", 1);
            if (i == 10) graph_set_int(&t.g, "coord", 2);
            break;
        }
        }
        graph_add_output(&t.g, "y", v);
        uint64_t nout;
        float *out = run_single(&t, 1, lc->x, &nout);
        /* Expand's leading 2 is the output's batch here. */
        assert_int_equal(nout, (uint64_t)lc->nout);
        check_close(graph_op_name(lc->op), out, lc->y, nout, 1e-6);
        free(out);
        tm_free(&t);
    }
}

/* ConvTranspose (1-D and 2-D; stride, dilation, asymmetric pads,
 * output_padding, groups, bias) against a scatter-form reference. */
static void test_onnx_convtranspose(void **state)
{
    (void)state;
    /* oneDNN's deconvolution, then (PIPEPS_REF_DECONV) the reference kernel. */
    for (int ref_kernel = 0; ref_kernel < 2; ref_kernel++) {
    if (ref_kernel) setenv("PIPEPS_REF_DECONV", "1", 1);
    struct ctcase {
        int sp;
        int64_t cin, cout, in[2], k[2], s[2], d[2], pb[2], pe[2], op[2], group;
        int bias;
    };
    const struct ctcase cases[] = {
        {2, 4, 6, {3, 4}, {3, 3}, {2, 2}, {1, 1}, {1, 0}, {0, 1}, {1, 0}, 2, 1},
        {2, 3, 2, {5, 5}, {2, 3}, {1, 2}, {2, 1}, {0, 0}, {0, 0}, {0, 1}, 1, 0},
        {1, 2, 4, {7, 1}, {4, 1}, {3, 1}, {1, 1}, {2, 0}, {1, 0}, {2, 0}, 1, 1},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const struct ctcase *cc = &cases[ci];
        int64_t N = 2, sp = cc->sp, G = cc->group, cog = cc->cout / G, cig = cc->cin / G;
        int64_t out[2] = {1, 1}, in[2] = {1, 1}, k[2] = {1, 1};
        for (int i = 0; i < sp; i++) {
            in[i] = cc->in[i];
            k[i] = cc->k[i];
            out[i] = cc->s[i] * (in[i] - 1) + cc->op[i] + (k[i] - 1) * cc->d[i] + 1 - cc->pb[i] - cc->pe[i];
        }
        struct tmodel t;
        tm_init(&t, "ct");
        int64_t xd[4] = {-1, cc->cin, in[0], in[1]}, wd[4] = {cc->cin, cog, k[0], k[1]}, bd[1] = {cc->cout};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 2 + (int)sp, xd);
        int32_t ps[2] = {tm_param(&t, "w", 2 + (int)sp, wd, -1, 1), -1};
        if (cc->bias) ps[1] = tm_param(&t, "b", 1, bd, -1, 1);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_CONVTRANSPOSE, "ct", 1, &x, cc->bias ? 2 : 1, ps);
        int64_t pads[4], s[2], d[2], op[2];
        for (int i = 0; i < sp; i++) {
            pads[i] = cc->pb[i];
            pads[sp + i] = cc->pe[i];
            s[i] = cc->s[i];
            d[i] = cc->d[i];
            op[i] = cc->op[i];
        }
        graph_set_ints(&t.g, "pads", 2 * (int)sp, pads);
        graph_set_ints(&t.g, "strides", (int)sp, s);
        graph_set_ints(&t.g, "dilations", (int)sp, d);
        graph_set_ints(&t.g, "output_padding", (int)sp, op);
        graph_set_int(&t.g, "group", G);
        graph_add_output(&t.g, "y", v);
        uint64_t nx = (uint64_t)(N * cc->cin * in[0] * in[1]), ny = (uint64_t)(N * cc->cout * out[0] * out[1]);
        float *xs = rand_buf(nx, -1, 1);
        double *acc = calloc(ny, sizeof *acc);
        const float *w = tm_data(&t, "w"), *b = cc->bias ? tm_data(&t, "b") : NULL;
        /* scatter: every input pixel adds its kernel-weighted copy */
        for (int64_t n = 0; n < N; n++)
            for (int64_t ic = 0; ic < cc->cin; ic++)
                for (int64_t i0 = 0; i0 < in[0]; i0++)
                    for (int64_t i1 = 0; i1 < in[1]; i1++)
                        for (int64_t oc = 0; oc < cog; oc++)
                            for (int64_t k0 = 0; k0 < k[0]; k0++)
                                for (int64_t k1 = 0; k1 < k[1]; k1++) {
                                    int64_t o0 = i0 * cc->s[0] + k0 * cc->d[0] - cc->pb[0];
                                    int64_t o1 = sp == 2 ? i1 * cc->s[1] + k1 * cc->d[1] - cc->pb[1] : 0;
                                    if (o0 < 0 || o0 >= out[0] || o1 < 0 || o1 >= out[1]) continue;
                                    int64_t g = ic / cig, occ = g * cog + oc;
                                    acc[((n * cc->cout + occ) * out[0] + o0) * out[1] + o1] +=
                                        (double)xs[((n * cc->cin + ic) * in[0] + i0) * in[1] + i1] *
                                        w[((ic * cog + oc) * k[0] + k0) * k[1] + k1];
                                }
        float *ref = malloc(ny * 4);
        for (uint64_t q = 0; q < ny; q++)
            ref[q] = (float)(acc[q] + (b ? b[(q / (uint64_t)(out[0] * out[1])) % (uint64_t)cc->cout] : 0));
        uint64_t nout;
        float *got = run_single(&t, N, xs, &nout);
        assert_int_equal(nout, ny);
        check_close(ref_kernel ? "ConvTranspose (reference)" : "ConvTranspose", got, ref, ny, 1e-5);
        free(got); free(ref); free(acc); free(xs);
        tm_free(&t);
    }
    }
    unsetenv("PIPEPS_REF_DECONV");
}

/* Constant before an activation (Sub(c, x) as the importer writes it),
 * MatMul with 1-D operands (c [K] @ x [N,K,M] and x @ p [M]), Gather on
 * axis 1 of an activation with float indices (one negative) from a param. */
static void test_onnx_constant_matmul_gather(void **state)
{
    (void)state;
    const int64_t N = 2, K = 3, M = 4;
    struct tmodel t;
    tm_init(&t, "cmg");
    int64_t xd[3] = {-1, K, M}, cd[1] = {K}, pd[1] = {M}, id[1] = {2};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
    float cv[3] = {1.0f, -2.0f, 0.5f}, pv[4] = {0.25f, 1.0f, -1.0f, 2.0f}, iv[2] = {-1.0f, 0.0f};
    int32_t cp = tm_param_data(&t, "c", 1, cd, cv);
    int32_t pp = tm_param_data(&t, "p", 1, pd, pv);
    int32_t ip = tm_param_data(&t, "idx", 1, id, iv);
    int32_t c = graph_add_node(&t.g, GRAPH_OP_CONSTANT, "c", 0, NULL, 1, &cp);
    int32_t cx[2] = {c, x};
    int32_t row = graph_add_node(&t.g, GRAPH_OP_MATMUL, "cx", 2, cx, 0, NULL);      /* [N, M] */
    int32_t col = graph_add_node(&t.g, GRAPH_OP_MATMUL, "xp", 1, &x, 1, &pp);        /* [N, K] */
    int32_t gat = graph_add_node(&t.g, GRAPH_OP_GATHER, "g", 1, &row, 1, &ip);       /* [N, 2] */
    graph_set_int(&t.g, "axis", 1);
    int32_t cv2[2] = {c, col};
    int32_t sub = graph_add_node(&t.g, GRAPH_OP_SUB, "sub", 2, cv2, 0, NULL);        /* c - col: [N, K] */
    int32_t cat[2] = {sub, gat};
    int32_t v = graph_add_node(&t.g, GRAPH_OP_CONCAT, "cat", 2, cat, 0, NULL);       /* [N, K+2] */
    graph_set_int(&t.g, "axis", 1);
    graph_add_output(&t.g, "y", v);
    float xs[2 * 3 * 4];
    for (int q = 0; q < 24; q++) xs[q] = (float)(q % 7) - 3.0f;
    float ref[2 * 5];
    for (int64_t n = 0; n < N; n++) {
        double r[4];
        for (int64_t m = 0; m < M; m++) {
            r[m] = 0;
            for (int64_t k = 0; k < K; k++) r[m] += cv[k] * xs[(n * K + k) * M + m];
        }
        for (int64_t k = 0; k < K; k++) {
            double s = 0;
            for (int64_t m = 0; m < M; m++) s += xs[(n * K + k) * M + m] * pv[m];
            ref[n * 5 + k] = (float)(cv[k] - s);
        }
        ref[n * 5 + 3] = (float)r[M - 1];
        ref[n * 5 + 4] = (float)r[0];
    }
    uint64_t nout;
    float *out = run_single(&t, N, xs, &nout);
    assert_int_equal(nout, 10);
    check_close("constant/matmul/gather", out, ref, nout, 1e-6);
    free(out);
    tm_free(&t);
}

/* A fixed-batch model (an ONNX file with a static first dimension):
 * Reshape [3,4] -> [2,6] holds at batch 3 only; it is planned and run at 3,
 * and another batch size is refused with a message that says why. */
static void test_fixed_batch(void **state)
{
    (void)state;
    struct tmodel t;
    tm_init(&t, "fixed");
    int64_t xd[2] = {-1, 4}, sh[2] = {2, 6};
    int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 2, xd);
    graph_set_fixed_batch(&t.g, 3);
    assert_int_equal(graph_fixed_batch(&t.g), 3);
    int32_t v = graph_add_node(&t.g, GRAPH_OP_RESHAPE, "r", 1, &x, 0, NULL);
    graph_set_ints(&t.g, "shape", 2, sh);
    v = graph_add_node(&t.g, GRAPH_OP_NEG, "neg", 1, &v, 0, NULL);
    graph_add_output(&t.g, "y", v);
    char err[256] = "";
    assert_int_equal(graph_validate(&t.g, err, sizeof err), 0);
    float xs[12], ref[12];
    for (int k = 0; k < 12; k++) {
        xs[k] = (float)k - 5.5f;
        ref[k] = -xs[k];
    }
    uint64_t nout;
    float *out = run_single(&t, 3, xs, &nout);
    assert_int_equal(nout, 12);
    assert_memory_equal(out, ref, sizeof ref);
    free(out);
    struct exec_model *m;
    assert_int_equal(exec_model_create(&m, &t.g, NULL, err, sizeof err), 0);
    struct exec_tensor to;
    assert_int_equal(exec_output_info(m, 0, 2, &to, err, sizeof err), PPS_ESHAPE);
    assert_non_null(strstr(err, "fixed at 3"));
    exec_model_destroy(m);
    tm_free(&t);
}

/* MaxPool / AveragePool on 1-D and 3-D inputs (ceil_mode, pads,
 * count_include_pad off): hand-computed. */
static void test_onnx_pool_nd(void **state)
{
    (void)state;
    struct pcase {
        enum graph_op op;
        int rank;
        int64_t dims[5];
        int64_t k[3], s[3], pads[6];
        int ceil;
        int nout;
        float y[8];
    };
    const struct pcase cases[] = {
        {GRAPH_OP_MAXPOOL, 3, {1, 1, 5}, {2}, {2}, {0, 0}, 1, 3, {3, 5, 4}},
        {GRAPH_OP_AVGPOOL, 3, {1, 1, 5}, {3}, {1}, {1, 1}, 0, 5, {2, 2, 10.0f / 3, 11.0f / 3, 4.5f}},
        {GRAPH_OP_MAXPOOL, 5, {1, 1, 2, 2, 2}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0, 0, 0, 0}, 0, 1, {7}},
        {GRAPH_OP_AVGPOOL, 5, {1, 1, 2, 2, 2}, {2, 1, 2}, {1, 1, 1}, {0, 0, 0, 0, 0, 0}, 0, 2, {2.5f, 4.5f}},
    };
    const float x1[5] = {1, 3, 2, 5, 4}, x3[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct pcase *pc = &cases[i];
        int sp = pc->rank - 2;
        struct tmodel t;
        tm_init(&t, "poolnd");
        int64_t xd[5];
        memcpy(xd, pc->dims, sizeof xd);
        xd[0] = -1;
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, pc->rank, xd);
        int32_t v = graph_add_node(&t.g, pc->op, "pool", 1, &x, 0, NULL);
        graph_set_ints(&t.g, "kernel_shape", sp, pc->k);
        graph_set_ints(&t.g, "strides", sp, pc->s);
        graph_set_ints(&t.g, "pads", 2 * sp, pc->pads);
        graph_set_int(&t.g, "ceil_mode", pc->ceil);
        graph_add_output(&t.g, "y", v);
        uint64_t nout;
        float *out = run_single(&t, 1, sp == 1 ? x1 : x3, &nout);
        assert_int_equal(nout, (uint64_t)pc->nout);
        check_close(graph_op_name(pc->op), out, pc->y, nout, 1e-6);
        free(out);
        tm_free(&t);
    }
}

/* Widened semantics of existing ops: BatchNormalization on rank 2, 3 and
 * 5; Gather along axis 2 of an activation with int64 indices from an input;
 * Softmax on axis 1 of a rank-3 tensor. */
static void test_onnx_widened(void **state)
{
    (void)state;
    const int64_t N = 2, C = 3;
    const int ranks[3] = {2, 3, 5};
    for (int ri = 0; ri < 3; ri++) {
        int r = ranks[ri];
        struct tmodel t;
        tm_init(&t, "bn");
        int64_t xd[5] = {-1, C, 2, 3, 2}, cd[1] = {C};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, r, xd);
        int32_t ps[4] = {tm_param(&t, "g", 1, cd, 0.5f, 1.5f), tm_param(&t, "b", 1, cd, -1, 1),
                         tm_param(&t, "m", 1, cd, -1, 1), tm_param(&t, "v", 1, cd, 0.5f, 2)};
        int32_t v = graph_add_node(&t.g, GRAPH_OP_BATCHNORM, "bn", 1, &x, 4, ps);
        graph_add_output(&t.g, "y", v);
        int64_t inner = 1;
        for (int i = 2; i < r; i++) inner *= xd[i];
        uint64_t n = (uint64_t)(N * C * inner);
        float *in = rand_buf(n, -2, 2), *ref = malloc(n * 4);
        memcpy(ref, in, n * 4);
        ref_bn(ref, N, C, inner, tm_data(&t, "g"), tm_data(&t, "b"), tm_data(&t, "m"), tm_data(&t, "v"), 1e-5f);
        uint64_t nout;
        float *out = run_single(&t, N, in, &nout);
        assert_int_equal(nout, n);
        check_close("batchnorm rank", out, ref, n, 1e-5);
        free(out); free(ref); free(in);
        tm_free(&t);
    }
    {
        struct tmodel t;
        tm_init(&t, "gather");
        int64_t xd[3] = {-1, 3, 4}, id[2] = {-1, 2};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t ix = graph_add_input(&t.g, "idx", GRAPH_I64, 2, id);
        int32_t ins[2] = {x, ix};
        int32_t v = graph_add_node(&t.g, GRAPH_OP_GATHER, "g", 2, ins, 0, NULL);
        graph_set_int(&t.g, "axis", 2);
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        float xs[24];
        for (int k = 0; k < 24; k++) xs[k] = (float)k;
        int64_t is[4] = {3, 0, 1, 1};
        float ref[2 * 3 * 2 * 2];
        for (int n = 0; n < 2; n++)
            for (int a = 0; a < 3; a++)
                for (int q = 0; q < 4; q++) ref[(n * 3 + a) * 4 + q] = xs[(n * 3 + a) * 4 + is[q]];
        const void *in2[2] = {xs, is};
        uint64_t nout;
        float *out = tm_run(&t, 2, in2, &nout);
        assert_int_equal(nout, 24);
        check_close("gather axis 2", out, ref, 24, 0);
        free(out);
        tm_free(&t);
    }
    {
        struct tmodel t;
        tm_init(&t, "softmax");
        int64_t xd[3] = {-1, 4, 3};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_SOFTMAX, "sm", 1, &x, 0, NULL);
        graph_set_int(&t.g, "axis", 1);
        graph_add_output(&t.g, "y", v);
        float *in = rand_buf(24, -3, 3), ref[24];
        ref_softmax(in, ref, 2, 4, 3);
        uint64_t nout;
        float *out = run_single(&t, 2, in, &nout);
        check_close("softmax axis 1", out, ref, 24, 1e-5);
        free(out); free(in);
        tm_free(&t);
    }
}

/* Gemm forms oneDNN's matmul does not take (the reference kernel): a
 * row-varying C [M,N] with transA, alpha and beta, then a Relu fused after
 * it; and B an activation with C [M,1]. */
static void test_onnx_gemm_ref(void **state)
{
    (void)state;
    const int64_t M = 3, K = 4, N = 5;
    for (int variant = 0; variant < 2; variant++) {
        struct tmodel t;
        tm_init(&t, "gemmref");
        int64_t ad[2] = {-1, M}, bd[2] = {-1, N}, bpd[2] = {K, N}, cd[2] = {M, variant ? 1 : N};
        int32_t a = graph_add_input(&t.g, "a", GRAPH_F32, 2, ad); /* [K, M]: transA */
        int32_t v;
        int32_t c = tm_param(&t, "c", 2, cd, -1, 1);
        if (variant == 0) {
            int32_t ps[2] = {tm_param(&t, "b", 2, bpd, -1, 1), c};
            v = graph_add_node(&t.g, GRAPH_OP_GEMM, "gemm", 1, &a, 2, ps);
        } else {
            int32_t b = graph_add_input(&t.g, "b", GRAPH_F32, 2, bd);
            int32_t ab[2] = {a, b};
            v = graph_add_node(&t.g, GRAPH_OP_GEMM, "gemm", 2, ab, 1, &c);
        }
        graph_set_fixed_batch(&t.g, K); /* A's rows (transA) are the batch */
        graph_set_int(&t.g, "transA", 1);
        graph_set_float(&t.g, "alpha", 0.5f);
        graph_set_float(&t.g, "beta", -2.0f);
        v = graph_add_node(&t.g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
        graph_add_output(&t.g, "y", v);
        tm_batch(&t, BATCHING_DEFAULT_MAX);
        float *xa = rand_buf((uint64_t)(K * M), -1, 1), *xb = rand_buf((uint64_t)(K * N), -1, 1);
        const float *bsrc = variant ? xb : tm_data(&t, "b"), *cs = tm_data(&t, "c");
        float ref[3 * 5];
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t q = 0; q < K; q++) s += (double)xa[q * M + i] * bsrc[q * N + j];
                s = 0.5 * s - 2.0 * cs[variant ? i : i * N + j];
                ref[i * N + j] = (float)(s > 0 ? s : 0);
            }
        const void *ins[2] = {xa, xb};
        uint64_t n1, n2;
        float *fused = tm_run_opts(&t, K, ins, &n1, 0, FEED_ALL_FIRST, 0);
        float *plain = tm_run_opts(&t, K, ins, &n2, 1, FEED_ALL_FIRST, 0);
        assert_int_equal(n1, (uint64_t)(M * N));
        check_close("gemm ref fused", fused, ref, n1, 1e-5);
        check_close("gemm ref unfused", plain, ref, n2, 1e-5);
        free(fused); free(plain); free(xa); free(xb);
        tm_free(&t);
    }
}

/* Bad attributes of the new ops are refused at model creation with a
 * message naming the node (never reach a kernel). */
static void test_onnx_shape_errors(void **state)
{
    (void)state;
    for (int c = 0; c < 10; c++) {
        struct graph g;
        graph_init(&g, "bad");
        int64_t xd[3] = {-1, 3, 4};
        int32_t x = graph_add_input(&g, "x", GRAPH_F32, 3, xd);
        const char *want = NULL;
        int32_t v;
        switch (c) {
        case 0: {
            v = graph_add_node(&g, GRAPH_OP_PAD, "badpad", 1, &x, 0, NULL);
            int64_t p[6] = {0, 0, 4, 0, 0, 0};
            graph_set_ints(&g, "pads", 6, p);
            graph_set_int(&g, "mode", 1); /* reflect by 4 on a dim of 4 */
            want = "reflect";
            break;
        }
        case 1: {
            v = graph_add_node(&g, GRAPH_OP_TILE, "badtile", 1, &x, 0, NULL);
            int64_t r[2] = {1, 2};
            graph_set_ints(&g, "repeats", 2, r);
            want = "repeats";
            break;
        }
        case 2:
            v = graph_add_node(&g, GRAPH_OP_CAST, "badcast", 1, &x, 0, NULL);
            graph_set_int(&g, "to", 6);
            want = "int64 (7)";
            break;
        case 3: {
            v = graph_add_node(&g, GRAPH_OP_RESIZE, "badresize", 1, &x, 0, NULL);
            int64_t sz[2] = {0, 8};
            graph_set_ints(&g, "sizes", 2, sz);
            want = "sizes";
            break;
        }
        case 4: {
            v = graph_add_node(&g, GRAPH_OP_REDUCESUM, "badreduce", 1, &x, 0, NULL);
            int64_t ax[2] = {1, -2};
            graph_set_ints(&g, "axes", 2, ax);
            want = "repeated";
            break;
        }
        case 5: {
            v = graph_add_node(&g, GRAPH_OP_EXPAND, "badexpand", 1, &x, 0, NULL);
            int64_t sh[2] = {2, 4};
            graph_set_ints(&g, "shape", 2, sh);
            want = "broadcast";
            break;
        }
        case 6: {
            int64_t wd[3] = {4, 2, 3};
            int32_t w = graph_add_param(&g, "w", 3, wd); /* Cin 4 for 3 channels */
            v = graph_add_node(&g, GRAPH_OP_CONVTRANSPOSE, "badct", 1, &x, 1, &w);
            want = "channels";
            break;
        }
        case 7: {
            int64_t cd[1] = {3};
            int32_t p = graph_add_param(&g, "c", 1, cd);
            v = graph_add_node(&g, GRAPH_OP_CONSTANT, "badconst", 1, &x, 1, &p);
            want = "no inputs";
            break;
        }
        case 8: {
            v = graph_add_node(&g, GRAPH_OP_RESIZE, "badscales", 1, &x, 0, NULL);
            int64_t sz[3] = {0, 3, 8}, bits[3] = {0x3f800000, 0x3f800000, 0xff800000}; /* -inf */
            graph_set_ints(&g, "sizes", 3, sz);
            graph_set_ints(&g, "scales_bits", 3, bits);
            want = "scales_bits";
            break;
        }
        default: {
            int64_t pd[1] = {5};
            int32_t p = graph_add_param(&g, "slope", 1, pd);
            v = graph_add_node(&g, GRAPH_OP_PRELU, "badprelu", 1, &x, 1, &p);
            want = "slope";
            break;
        }
        }
        graph_add_output(&g, "y", v);
        assert_int_equal(batching_apply(&g, BATCHING_DEFAULT_MAX), 0);
        struct exec_model *m = NULL;
        char err[256] = "";
        int rc = exec_model_create(&m, &g, NULL, err, sizeof err);
        if (rc != PPS_ESHAPE || !strstr(err, g.nodes[0].name) || !strstr(err, want))
            fail_msg("case %d: rc %d, message '%s' (wanted '%s')", c, rc, err, want);
        graph_free(&g);
    }
}

/* Cubic Resize [4,4] -> [8,8] of 1..16: rows 0 and 3 of the ONNX node
 * tests' expected outputs (default a = -0.75; a = -0.5 with
 * exclude_outside; align_corners). */
static void test_onnx_resize_cubic(void **state)
{
    (void)state;
    static const float want[3][2][8] = {
        {{0.47265625f, 0.76953125f, 1.2460938f, 1.875f, 2.28125f, 2.9101562f, 3.3867188f, 3.6835938f},
         {6.0820312f, 6.3789062f, 6.8554688f, 7.484375f, 7.890625f, 8.519531f, 8.996094f, 9.292969f}},
        {{0.5588235f, 0.81494206f, 1.3569825f, 1.8970588f, 2.3970587f, 2.9371352f, 3.4791756f, 3.735294f},
         {5.9117646f, 6.1678834f, 6.7099237f, 7.25f, 7.75f, 8.290076f, 8.832117f, 9.088235f}},
        {{1.0f, 1.3411078f, 1.8002915f, 2.329446f, 2.670554f, 3.1997085f, 3.6588922f, 4.0f},
         {6.3177843f, 6.658892f, 7.118076f, 7.64723f, 7.988338f, 8.517492f, 8.976676f, 9.317784f}},
    };
    float xs[16];
    for (int k = 0; k < 16; k++) xs[k] = (float)(k + 1);
    for (int c = 0; c < 3; c++) {
        struct tmodel t;
        tm_init(&t, "cubic");
        int64_t xd[3] = {-1, 4, 4}, sz[3] = {0, 8, 8};
        int32_t x = graph_add_input(&t.g, "x", GRAPH_F32, 3, xd);
        int32_t v = graph_add_node(&t.g, GRAPH_OP_RESIZE, "r", 1, &x, 0, NULL);
        graph_set_ints(&t.g, "sizes", 3, sz);
        graph_set_int(&t.g, "mode", 2);
        if (c == 1) {
            graph_set_float(&t.g, "cubic_a", -0.5f);
            graph_set_int(&t.g, "exclude_outside", 1);
        }
        if (c == 2) graph_set_int(&t.g, "coord", 2);
        graph_add_output(&t.g, "y", v);
        uint64_t nout;
        float *out = run_single(&t, 1, xs, &nout);
        assert_int_equal(nout, 64);
        check_close("cubic row 0", out, want[c][0], 8, 1e-6);
        check_close("cubic row 3", out + 24, want[c][1], 8, 1e-6);
        free(out);
        tm_free(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memplan),
        cmocka_unit_test(test_deferred_relayout),
        cmocka_unit_test(test_exec_mem_recycling),
        cmocka_unit_test(test_conv_shapes),
        cmocka_unit_test(test_conv_bn_add_relu_fusion),
        cmocka_unit_test(test_grouped_bn_fold_nonpersistent),
        cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_conv_weights_fallback),
        cmocka_unit_test(test_concat_bn),
        cmocka_unit_test(test_binary_broadcast),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_shape_ops),
        cmocka_unit_test(test_gather_layernorm_softmax),
        cmocka_unit_test(test_unary_where),
        cmocka_unit_test(test_index_inputs),
        cmocka_unit_test(test_attention_views),
        cmocka_unit_test(test_views_leading_ones),
        cmocka_unit_test(test_pipelined_bit_identical),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_onnx_unary),
        cmocka_unit_test(test_onnx_conv_activation_fusion),
        cmocka_unit_test(test_onnx_binary_compare_cast),
        cmocka_unit_test(test_onnx_reduce_norm),
        cmocka_unit_test(test_onnx_layout_ops),
        cmocka_unit_test(test_onnx_convtranspose),
        cmocka_unit_test(test_onnx_constant_matmul_gather),
        cmocka_unit_test(test_fixed_batch),
        cmocka_unit_test(test_onnx_pool_nd),
        cmocka_unit_test(test_onnx_widened),
        cmocka_unit_test(test_onnx_gemm_ref),
        cmocka_unit_test(test_onnx_shape_errors),
        cmocka_unit_test(test_onnx_resize_cubic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
