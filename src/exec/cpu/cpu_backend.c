/* cpu_backend: oneDNN-based CPU backend (see cpu_backend.h, backend.h).
 *
 * A step's plan-level state (struct cpu_node) is a short list of calls,
 * each a oneDNN primitive or a C kernel, whose arguments are bound to
 * "where the bytes are" (an input, the output, a scratch offset, the step's
 * prepared weights or a parameter) rather than to addresses, so a plan is
 * built once and run with whatever buffers the executor hands in. Typical
 * lists: [reorder input to the conv's layout] [conv+post-ops]; or
 * [reorder blocked input to plain] [C kernel] [eltwise post].
 *
 * Every primitive uses a user-provided scratchpad (part of the step's
 * scratch in the executor's arena), so oneDNN allocates nothing while
 * running and memory use is known after planning.
 *
 * The easy thing to get wrong: prepared weights are in the layout chosen at
 * step_init (batch 1); node_prepare must create the convolution with that
 * weights descriptor, never "any", or a plan for another batch size could
 * expect a layout the weights are not in.
 *
 * Views (slices, transposes, reshapes of them) are strided descriptors of
 * their input's buffer, a slice's start in offset0. No primitive is ever
 * given a descriptor with an offset: oneDNN 2.6's brgemm matmul ignores
 * offset0 (it read GPT-2's v heads from q's columns at batch 1, sequence
 * length 1, where every leading dimension is 1 and brgemm takes the view),
 * so md_detach_offset moves it into the byte offset the argument is bound
 * at, and add_arg checks that none is left. */
#include "exec/cpu/cpu_backend.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "exec/cpu/cpu_kernels.h"
#include "exec/cpu/cpu_ref.h"
#include "exec/shape.h"

#define CPU_MAX_CALLS 8
#define CPU_MAX_ARGS (EXEC_STEP_MAX_INPUTS + 8)
#define SCRATCH_ALIGN 64

struct cpu_be {
    struct exec_backend base;
    dnnl_engine_t engine;
};

struct cpu_ctx {
    dnnl_stream_t stream;
    int threads;
};

/* Model-level state of a step. */
struct cpu_step {
    const struct graph *g;
    const struct exec_step *st;
    const struct graph_node *node;   /* primary */
    int has_wmd;
    dnnl_memory_desc_t wmd;          /* layout of prepared weights */
    dnnl_memory_desc_t raw_wmd;      /* layout of the raw weight parameter */
    int64_t bias_len;                /* 0: no bias */
    void *weights;                   /* prepared weights (in the step's region, or in place) */
    float *bias;                     /* in the step's region */
    const void *param[EXEC_STEP_MAX_PARAMS]; /* parameters used as they are */
    int gemm_2d;                     /* Gemm, or MatMul with a 2-D parameter B */
    /* Weights stored prepared (a native kv.bin): raw_wmd is their stored
     * layout. in_place: it is the layout the kernel wants (and no BN is left
     * to fold), so weights and bias are the parameters themselves. */
    int stored, in_place;
    int test_raw_weights;            /* test hook: prepared layout forced to the raw one */
    /* Deferred relayout (EXEC_W_DEFER_LAYOUT, decided by step_init): weights
     * is the raw parameter in place, in raw_wmd, until step_relayout has
     * written wmd's layout to relaid and step_relayout_commit switched. */
    int deferred;
    void *relaid;
    int relaid_done;
    int64_t relaid_upto;             /* slices done: indices of the outermost dim */
    float alpha, beta;
};

/* B_IN_RAW: the input's own buffer even when the op reads a copy of it. */
enum bind { B_IN = 1, B_IN_RAW, B_OUT, B_SCRATCH, B_WEIGHTS, B_BIAS, B_PARAM };

struct carg {
    int arg;          /* DNNL_ARG_*, or the position for a C kernel */
    enum bind bind;
    int idx;
    uint64_t off;
    dnnl_memory_t mem;
};

struct cpu_node;
typedef int (*kernel_fn)(const struct cpu_node *nd, const struct cpu_step *cs, void *const *ptrs);

struct ccall {
    dnnl_primitive_t prim;
    kernel_fn fn;
    int nargs;
    struct carg args[CPU_MAX_ARGS];
};

/* Plan-level state of a step. */
struct cpu_node {
    uint64_t in_remap[EXEC_STEP_MAX_INPUTS]; /* nonzero: input k is read from scratch + value - 1 */
    int ncalls;
    struct ccall calls[CPU_MAX_CALLS];
    dnnl_memory_desc_t out_md;
    uint64_t scratch;
    /* C kernel parameters */
    struct cpuk_shape sh[4];
    enum graph_dtype dtype[4];
    size_t esize;
    int axis, nops;
    int perm[GRAPH_MAX_DIMS];
    int64_t start[GRAPH_MAX_DIMS], step[GRAPH_MAX_DIMS], count[GRAPH_MAX_DIMS];
    enum cpuk_binop bop;
    enum cpuk_unop uop;
    int64_t kernel[2], stride[2], pad_begin[2], pad_end[2];
    int include_pad;
    int64_t outer, inner;
    uint64_t n;
    float eps;
    /* cpu_ref kernels */
    enum cpuref_unop ref_uop;
    enum cpuref_binop ref_bop;
    enum cpuref_reduce ref_red;
    unsigned axes_mask;
    float alpha, beta;
    struct cpuref_resize_mode resize;
    int resize_nscales;
    float resize_scales[GRAPH_MAX_DIMS];
    struct cpuref_deconv deconv;
};

static struct cpu_be g_cpu;
static pthread_once_t g_cpu_once = PTHREAD_ONCE_INIT;

/* ---- helpers ----------------------------------------------------------- */

static int map_status(dnnl_status_t s)
{
    switch (s) {
    case dnnl_success: return 0;
    case dnnl_out_of_memory: return PPS_ENOMEM;
    case dnnl_unimplemented: return PPS_EUNSUPPORTED;
    case dnnl_invalid_arguments: return PPS_EINVAL;
    default: return PPS_EINTERNAL;
    }
}

static int efail(char *err, size_t errlen, const struct cpu_step *cs, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int efail(char *err, size_t errlen, const struct cpu_step *cs, int code, const char *fmt, ...)
{
    if (err && errlen) {
        int k = snprintf(err, errlen, "node '%s' (%s): ", cs ? cs->node->name : "?",
                         cs ? graph_op_name(cs->node->op) : "?");
        if (k < 0) k = 0;
        if ((size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return code;
}

#define DN(call, what)                                                                       \
    do {                                                                                     \
        dnnl_status_t st_ = (call);                                                          \
        if (st_ != dnnl_success)                                                             \
            return efail(err, errlen, cs, map_status(st_), "oneDNN %s failed (status %d)", what, \
                         (int)st_);                                                          \
    } while (0)

static void md_plain(dnnl_memory_desc_t *md, int ndims, const int64_t *dims)
{
    dnnl_dims_t d = {0}, s = {0};
    if (ndims == 0) {
        ndims = 1;
        d[0] = 1;
    } else {
        for (int i = 0; i < ndims; i++) d[i] = dims[i];
    }
    int64_t acc = 1;
    for (int i = ndims - 1; i >= 0; i--) {
        s[i] = acc;
        acc *= d[i];
    }
    dnnl_memory_desc_init_by_strides(md, ndims, d, dnnl_f32, s);
}

static void md_of(dnnl_memory_desc_t *md, const struct exec_tensor *t)
{
    if (t->layout) *md = *(const dnnl_memory_desc_t *)t->layout;
    else md_plain(md, t->ndims, t->dims);
}

static void md_any(dnnl_memory_desc_t *md, int ndims, const int64_t *dims)
{
    dnnl_dims_t d;
    for (int i = 0; i < ndims; i++) d[i] = dims[i];
    dnnl_memory_desc_init_by_tag(md, ndims, d, dnnl_f32, dnnl_format_tag_any);
}

static int md_is_plain(const dnnl_memory_desc_t *md)
{
    dnnl_memory_desc_t p;
    md_plain(&p, md->ndims, md->dims);
    return dnnl_memory_desc_equal(md, &p);
}

/* Right-aligned rank extension: [K, N] as [1, 1, K, N]. */
static void md_plain_rank(dnnl_memory_desc_t *md, int rank, const struct exec_tensor *t)
{
    int64_t d[DNNL_MAX_NDIMS];
    int off = rank - t->ndims;
    for (int i = 0; i < rank; i++) d[i] = i < off ? 1 : t->dims[i - off];
    md_plain(md, rank, d);
}

/* The view md without its offset0, which is added (in bytes) to *off, the
 * offset the argument is bound at (see the file comment). */
static void md_detach_offset(dnnl_memory_desc_t *md, uint64_t *off)
{
    *off += (uint64_t)md->offset0 * (uint64_t)dnnl_data_type_size(md->data_type);
    md->offset0 = 0;
}

/* A plain layout with arbitrary strides and offset (no blocking): what a
 * view (transpose, slice, reshape of a view) produces. */
static int md_strided(const dnnl_memory_desc_t *md)
{
    return md->format_kind == dnnl_blocked && md->format_desc.blocking.inner_nblks == 0;
}

/* A strided layout that is not a dense permutation of the dims (a slice,
 * or anything with an offset): most primitives cannot take it. */
static int md_is_view(const dnnl_memory_desc_t *md)
{
    if (!md_strided(md)) return 0;
    if (md->offset0 != 0) return 1;
    const dnnl_dims_t *st = &md->format_desc.blocking.strides;
    int order[DNNL_MAX_NDIMS], n = md->ndims;
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) /* sort axes by stride, innermost first */
        for (int j = i; j > 0 && (*st)[order[j]] < (*st)[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int64_t expect = 1;
    for (int i = 0; i < n; i++) {
        int64_t d = md->dims[order[i]];
        if (d == 1) continue;
        if ((*st)[order[i]] != expect) return 1;
        expect *= d;
    }
    return 0;
}

/* The strided md of a view reshaped to dims, if the reshape only splits
 * or merges axes that are contiguous with each other (numpy's no-copy
 * reshape rule); 0 on success. */
static int md_reshape_view(dnnl_memory_desc_t *out, const dnnl_memory_desc_t *in, int ndims,
                           const int64_t *dims)
{
    const dnnl_dims_t *ist = &in->format_desc.blocking.strides;
    int64_t od_[DNNL_MAX_NDIMS], os_[DNNL_MAX_NDIMS]; /* old dims/strides without size-1 axes */
    int on = 0;
    for (int i = 0; i < in->ndims; i++)
        if (in->dims[i] != 1) {
            od_[on] = in->dims[i];
            os_[on] = (*ist)[i];
            on++;
        }
    dnnl_dims_t nd, ns;
    for (int k = 0; k < ndims; k++) {
        nd[k] = dims[k];
        ns[k] = 1;
    }
    int oi = 0, ni = 0;
    while (ni < ndims && oi < on) {
        int64_t np = dims[ni], op = od_[oi];
        int nj = ni + 1, oj = oi + 1;
        while (np != op) {
            if (np < op) {
                if (nj >= ndims) return -1;
                np *= dims[nj++];
            } else {
                if (oj >= on) return -1;
                op *= od_[oj++];
            }
        }
        for (int ok = oi; ok < oj - 1; ok++)
            if (os_[ok] != od_[ok + 1] * os_[ok + 1]) return -1;
        ns[nj - 1] = os_[oj - 1];
        for (int nk = nj - 1; nk > ni; nk--) ns[nk - 1] = ns[nk] * dims[nk];
        ni = nj;
        oi = oj;
    }
    if (oi != on) return -1;
    for (; ni < ndims; ni++)
        if (dims[ni] != 1) return -1;
    if (dnnl_memory_desc_init_by_strides(out, ndims, nd, dnnl_f32, ns) != dnnl_success) return -1;
    out->offset0 = in->offset0;
    return 0;
}

static void set_out(struct cpu_node *nd, const dnnl_memory_desc_t *md, struct exec_tensor *out)
{
    nd->out_md = *md;
    out->layout = md_is_plain(md) ? NULL : &nd->out_md;
    out->nbytes = dnnl_memory_desc_get_size(md);
}

static void to_shape(struct cpuk_shape *s, const struct exec_tensor *t)
{
    s->ndims = t->ndims;
    for (int i = 0; i < t->ndims; i++) s->dims[i] = t->dims[i];
}

static uint64_t scratch_alloc(struct cpu_node *nd, uint64_t bytes)
{
    uint64_t off = (nd->scratch + SCRATCH_ALIGN - 1) & ~(uint64_t)(SCRATCH_ALIGN - 1);
    nd->scratch = off + bytes;
    return off;
}

static struct ccall *new_call(struct cpu_node *nd)
{
    PPS_ASSERT(nd->ncalls < CPU_MAX_CALLS);
    struct ccall *c = &nd->calls[nd->ncalls++];
    memset(c, 0, sizeof *c);
    return c;
}

static int add_arg(struct ccall *c, int arg, const dnnl_memory_desc_t *md, enum bind b, int idx,
                   uint64_t off)
{
    PPS_ASSERT(c->nargs < CPU_MAX_ARGS);
    struct carg *a = &c->args[c->nargs++];
    a->arg = arg;
    a->bind = b;
    a->idx = idx;
    a->off = off;
    a->mem = NULL;
    if (md) {
        PPS_ASSERT(md->offset0 == 0); /* md_detach_offset */
        dnnl_status_t s = dnnl_memory_create(&a->mem, md, g_cpu.engine, DNNL_MEMORY_NONE);
        if (s != dnnl_success) {
            c->nargs--;
            return map_status(s);
        }
    }
    return 0;
}

static dnnl_primitive_attr_t attr_new(void)
{
    dnnl_primitive_attr_t attr;
    PPS_ASSERT(dnnl_primitive_attr_create(&attr) == dnnl_success);
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    return attr;
}

/* Create the primitive of pd as a new call, with its scratchpad bound. */
static int prim_call(struct cpu_node *nd, dnnl_primitive_desc_t pd, struct ccall **out)
{
    struct ccall *c = new_call(nd);
    dnnl_status_t s = dnnl_primitive_create(&c->prim, pd);
    if (s != dnnl_success) {
        nd->ncalls--;
        return map_status(s);
    }
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (sp && dnnl_memory_desc_get_size(sp) > 0) {
        int rc = add_arg(c, DNNL_ARG_SCRATCHPAD, sp, B_SCRATCH, 0,
                         scratch_alloc(nd, dnnl_memory_desc_get_size(sp)));
        if (rc) return rc;
    }
    *out = c;
    return 0;
}

/* A reorder call from (src_md at bind sb/si/so) to (dst_md at db/di/do). */
static int reorder_call(struct cpu_node *nd, const dnnl_memory_desc_t *src_view, enum bind sb,
                        int si, uint64_t so, const dnnl_memory_desc_t *dst_view, enum bind db,
                        int di, uint64_t dof)
{
    dnnl_memory_desc_t src = *src_view, dst = *dst_view;
    const dnnl_memory_desc_t *src_md = &src, *dst_md = &dst;
    md_detach_offset(&src, &so);
    md_detach_offset(&dst, &dof);
    dnnl_primitive_desc_t pd;
    dnnl_primitive_attr_t attr = attr_new();
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, src_md, g_cpu.engine, dst_md,
                                                         g_cpu.engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return map_status(s);
    struct ccall *c;
    int rc = prim_call(nd, pd, &c);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return rc;
    if ((rc = add_arg(c, DNNL_ARG_FROM, src_md, sb, si, so))) return rc;
    return add_arg(c, DNNL_ARG_TO, dst_md, db, di, dof);
}

/* Where input k can be read in plain layout: itself, or a scratch copy. */
struct src_ref {
    enum bind bind;
    int idx;
    uint64_t off;
};

static int plain_input(struct cpu_node *nd, const struct exec_tensor *t, int k, struct src_ref *r)
{
    r->bind = B_IN;
    r->idx = k;
    r->off = 0;
    if (!t->layout) return 0;
    dnnl_memory_desc_t plain;
    md_plain(&plain, t->ndims, t->dims);
    uint64_t off = scratch_alloc(nd, dnnl_memory_desc_get_size(&plain));
    int rc = reorder_call(nd, (const dnnl_memory_desc_t *)t->layout, B_IN, k, 0, &plain,
                          B_SCRATCH, 0, off);
    if (rc) return rc;
    r->bind = B_SCRATCH;
    r->idx = 0;
    r->off = off;
    return 0;
}

/* Operand k of the primary node: an input (possibly made plain) or a param. */
static int operand_ref(struct cpu_node *nd, const struct cpu_step *cs, const struct exec_tensor *in,
                       int k, struct src_ref *r)
{
    if (k < cs->node->ninputs) return plain_input(nd, &in[k], k, r);
    r->bind = B_PARAM;
    r->idx = k - cs->node->ninputs;
    r->off = 0;
    return 0;
}

static void operand_tensor(const struct cpu_step *cs, const struct exec_tensor *in, int k,
                           struct exec_tensor *t)
{
    if (k < cs->node->ninputs) {
        *t = in[k];
        return;
    }
    const struct graph_param *p = &cs->g->params[cs->node->params[k - cs->node->ninputs]];
    memset(t, 0, sizeof *t);
    t->dtype = GRAPH_F32;
    t->ndims = p->ndims;
    for (int i = 0; i < p->ndims; i++) t->dims[i] = p->dims[i];
    t->nbytes = p->nbytes;
}

static dnnl_alg_kind_t unary_alg(const struct graph_node *n, float *alpha, float *beta)
{
    *alpha = 0;
    *beta = 0;
    switch (n->op) {
    case GRAPH_OP_RELU: return dnnl_eltwise_relu;
    case GRAPH_OP_TANH: return dnnl_eltwise_tanh;
    case GRAPH_OP_SIGMOID: return dnnl_eltwise_logistic;
    case GRAPH_OP_SQRT: return dnnl_eltwise_sqrt;
    case GRAPH_OP_GELU:
        return graph_attr_int(n, "approximate", 0) == 1 ? dnnl_eltwise_gelu_tanh : dnnl_eltwise_gelu_erf;
    case GRAPH_OP_NEG: *alpha = -1.0f; return dnnl_eltwise_linear;
    case GRAPH_OP_ABS: return dnnl_eltwise_abs;
    case GRAPH_OP_EXP: return dnnl_eltwise_exp;
    case GRAPH_OP_LOG: return dnnl_eltwise_log;
    case GRAPH_OP_RECIPROCAL:
        *alpha = 1.0f;
        *beta = -1.0f;
        return dnnl_eltwise_pow;
    case GRAPH_OP_LEAKYRELU: *alpha = graph_attr_float(n, "alpha", 0.01f); return dnnl_eltwise_relu;
    case GRAPH_OP_CLIP:
        *alpha = graph_attr_float(n, "min", -FLT_MAX);
        *beta = graph_attr_float(n, "max", FLT_MAX);
        return dnnl_eltwise_clip_v2;
    case GRAPH_OP_HARDSWISH: return dnnl_eltwise_hardswish;
    case GRAPH_OP_ELU: *alpha = graph_attr_float(n, "alpha", 1.0f); return dnnl_eltwise_elu;
    case GRAPH_OP_SOFTPLUS: return dnnl_eltwise_soft_relu;
    default: return dnnl_alg_kind_undef;
    }
}

static dnnl_alg_kind_t binary_alg(enum graph_op op)
{
    switch (op) {
    case GRAPH_OP_ADD: return dnnl_binary_add;
    case GRAPH_OP_SUB: return dnnl_binary_sub;
    case GRAPH_OP_MUL: return dnnl_binary_mul;
    case GRAPH_OP_DIV: return dnnl_binary_div;
    default: return dnnl_alg_kind_undef;
    }
}

/* Post-ops of the step as oneDNN attributes, from post index `from`. The
 * SCALAR operands become binary post-op arguments of call c (bound later
 * by bind_post_args). */
static void build_post_ops(const struct cpu_step *cs, int from, int out_rank,
                           dnnl_primitive_attr_t attr)
{
    const struct exec_step *st = cs->st;
    if (from >= st->npost) return;
    dnnl_post_ops_t po;
    PPS_ASSERT(dnnl_post_ops_create(&po) == dnnl_success);
    for (int i = from; i < st->npost; i++) {
        const struct graph_node *pn = &cs->g->nodes[st->post[i].node];
        if (st->post[i].kind == EXEC_POST_UNARY) {
            float a, b;
            dnnl_alg_kind_t alg = unary_alg(pn, &a, &b);
            dnnl_post_ops_append_eltwise(po, 1.0f, alg, a, b);
        } else if (st->post[i].kind == EXEC_POST_SUM) {
            dnnl_post_ops_append_sum(po, 1.0f);
        } else if (st->post[i].kind == EXEC_POST_SCALAR) {
            int64_t ones[DNNL_MAX_NDIMS];
            for (int d = 0; d < out_rank; d++) ones[d] = 1;
            dnnl_memory_desc_t md;
            md_plain(&md, out_rank, ones);
            dnnl_post_ops_append_binary(po, binary_alg(pn->op), &md);
        }
    }
    dnnl_primitive_attr_set_post_ops(attr, po);
    dnnl_post_ops_destroy(po);
}

/* The primitive descriptor of op_desc on the CPU engine, with a user-owned
 * scratchpad and, if cs is given, the step's post-ops (output rank
 * out_rank). */
static dnnl_status_t pd_create(dnnl_primitive_desc_t *pd, const_dnnl_op_desc_t op_desc,
                               const struct cpu_step *cs, int out_rank)
{
    dnnl_primitive_attr_t attr = attr_new();
    if (cs) build_post_ops(cs, 0, out_rank, attr);
    dnnl_status_t s = dnnl_primitive_desc_create(pd, op_desc, attr, g_cpu.engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static int bind_post_args(const struct cpu_step *cs, int from, int out_rank, struct ccall *c)
{
    const struct exec_step *st = cs->st;
    for (int i = from; i < st->npost; i++) {
        if (st->post[i].kind != EXEC_POST_SCALAR) continue;
        int64_t ones[DNNL_MAX_NDIMS];
        for (int d = 0; d < out_rank; d++) ones[d] = 1;
        dnnl_memory_desc_t md;
        md_plain(&md, out_rank, ones);
        int rc = add_arg(c, DNNL_ARG_ATTR_MULTIPLE_POST_OP(i - from) | DNNL_ARG_SRC_1, &md, B_PARAM,
                         st->post[i].operand, 0);
        if (rc) return rc;
    }
    return 0;
}

/* Post-ops as separate in-place calls on the output (for kernels that
 * cannot fuse them). */
static int post_calls(struct cpu_node *nd, const struct cpu_step *cs, const struct exec_tensor *in,
                      int from, const dnnl_memory_desc_t *out_md)
{
    const struct exec_step *st = cs->st;
    for (int i = from; i < st->npost; i++) {
        const struct graph_node *pn = &cs->g->nodes[st->post[i].node];
        dnnl_primitive_desc_t pd;
        dnnl_primitive_attr_t attr = attr_new();
        dnnl_status_t s;
        dnnl_memory_desc_t src1;
        uint64_t src1_off = 0;
        if (st->post[i].kind == EXEC_POST_UNARY) {
            float a, b;
            dnnl_alg_kind_t alg = unary_alg(pn, &a, &b);
            dnnl_eltwise_desc_t ed;
            s = dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, out_md, a, b);
            if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &ed, attr, g_cpu.engine, NULL);
        } else {
            if (st->post[i].kind == EXEC_POST_SUM) {
                md_of(&src1, &in[st->post[i].operand]);
                md_detach_offset(&src1, &src1_off);
            } else {
                int64_t ones[DNNL_MAX_NDIMS];
                for (int d = 0; d < out_md->ndims; d++) ones[d] = 1;
                md_plain(&src1, out_md->ndims, ones);
            }
            dnnl_binary_desc_t bd;
            s = dnnl_binary_desc_init(&bd, st->post[i].kind == EXEC_POST_SUM ? dnnl_binary_add
                                                                             : binary_alg(pn->op),
                                      out_md, &src1, out_md);
            if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &bd, attr, g_cpu.engine, NULL);
        }
        dnnl_primitive_attr_destroy(attr);
        if (s != dnnl_success) return map_status(s);
        struct ccall *c;
        int rc = prim_call(nd, pd, &c);
        dnnl_primitive_desc_destroy(pd);
        if (rc) return rc;
        if (st->post[i].kind == EXEC_POST_UNARY) {
            if ((rc = add_arg(c, DNNL_ARG_SRC, out_md, B_OUT, 0, 0))) return rc;
        } else {
            if ((rc = add_arg(c, DNNL_ARG_SRC_0, out_md, B_OUT, 0, 0))) return rc;
            if (st->post[i].kind == EXEC_POST_SUM)
                rc = add_arg(c, DNNL_ARG_SRC_1, &src1, B_IN, st->post[i].operand, src1_off);
            else
                rc = add_arg(c, DNNL_ARG_SRC_1, &src1, B_PARAM, st->post[i].operand, 0);
            if (rc) return rc;
        }
        if ((rc = add_arg(c, DNNL_ARG_DST, out_md, B_OUT, 0, 0))) return rc;
    }
    return 0;
}

/* Add a C kernel call reading the given refs (then the output). */
static struct ccall *kernel_call(struct cpu_node *nd, kernel_fn fn, const struct src_ref *refs,
                                 int nrefs)
{
    struct ccall *c = new_call(nd);
    c->fn = fn;
    for (int i = 0; i < nrefs; i++) add_arg(c, i, NULL, refs[i].bind, refs[i].idx, refs[i].off);
    add_arg(c, nrefs, NULL, B_OUT, 0, 0);
    return c;
}

/* ---- the backend interface: support and fusion ------------------------- */

static int cpu_supports(struct exec_backend *be, const struct graph *g, const struct graph_node *n)
{
    (void)be;
    (void)g;
    if (n->op <= GRAPH_OP_INVALID || n->op >= GRAPH_OP_COUNT) return 0;
    /* Only these read their data from a parameter alone; the others
     * expect their first operand to be an activation. */
    if (n->ninputs < 1)
        return n->op == GRAPH_OP_SLICE || n->op == GRAPH_OP_CONCAT || n->op == GRAPH_OP_CONSTANT;
    return 1;
}

static int cpu_supports_post(struct exec_backend *be, const struct graph *g,
                             const struct graph_node *primary, const struct graph_node *post,
                             enum exec_post_kind kind, int npost_before)
{
    (void)be;
    (void)g;
    float a, b;
    if (kind == EXEC_POST_UNARY && unary_alg(post, &a, &b) == dnnl_alg_kind_undef) return 0;
    switch (primary->op) {
    case GRAPH_OP_CONV:
        if (kind == EXEC_POST_SUM) return npost_before == 0;
        return kind == EXEC_POST_UNARY;
    case GRAPH_OP_GEMM: case GRAPH_OP_MATMUL:
        if (kind == EXEC_POST_SUM) return npost_before == 0;
        if (kind == EXEC_POST_PERMUTE)
            return primary->op == GRAPH_OP_MATMUL && primary->ninputs == 2 && npost_before == 0;
        return 1;
    case GRAPH_OP_BATCHNORM:
        return kind == EXEC_POST_UNARY && post->op == GRAPH_OP_RELU && npost_before == 0;
    case GRAPH_OP_ADD: case GRAPH_OP_SUB: case GRAPH_OP_MUL: case GRAPH_OP_DIV:
        return kind == EXEC_POST_UNARY;
    default:
        return 0;
    }
}

/* ---- contexts ---------------------------------------------------------- */

static void *cpu_context_create(struct exec_backend *be, int threads)
{
    (void)be;
    struct cpu_ctx *c = pps_xcalloc(1, sizeof *c);
    PPS_ASSERT(dnnl_stream_create(&c->stream, g_cpu.engine, dnnl_stream_default_flags) == dnnl_success);
    c->threads = threads > 0 ? threads : 1;
    return c;
}

static void cpu_context_begin(struct exec_backend *be, void *context)
{
    (void)be;
    struct cpu_ctx *c = context;
    /* The OpenMP thread count is per calling thread (an ICV), so each
     * thread that runs or prepares sets its own. */
    omp_set_num_threads(c->threads);
}

static void cpu_context_free(struct exec_backend *be, void *context)
{
    (void)be;
    struct cpu_ctx *c = context;
    if (!c) return;
    dnnl_stream_destroy(c->stream);
    free(c);
}

/* ---- model level ------------------------------------------------------- */

/* Prepared layouts travel in the graph (graph_layout) as the blocking part
 * of a oneDNN descriptor: only f32 blocked descriptors without offsets,
 * padding offsets or extra data (compensation) qualify. */
static int md_to_layout(const dnnl_memory_desc_t *md, struct graph_layout *l)
{
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    if (md->format_kind != dnnl_blocked || md->data_type != dnnl_f32 || md->offset0 ||
        md->extra.flags || md->ndims < 1 || md->ndims > GRAPH_MAX_DIMS ||
        b->inner_nblks > GRAPH_LAYOUT_MAX_BLKS)
        return PPS_EUNSUPPORTED;
    memset(l, 0, sizeof *l);
    l->ndims = md->ndims;
    for (int i = 0; i < md->ndims; i++) {
        if (md->padded_offsets[i]) return PPS_EUNSUPPORTED;
        l->dims[i] = md->dims[i];
        l->padded_dims[i] = md->padded_dims[i];
        l->strides[i] = b->strides[i];
    }
    l->nblks = b->inner_nblks;
    for (int k = 0; k < b->inner_nblks; k++) {
        l->blks[k] = b->inner_blks[k];
        l->idxs[k] = (int32_t)b->inner_idxs[k];
    }
    return 0;
}

static void layout_to_md(const struct graph_layout *l, dnnl_memory_desc_t *md)
{
    memset(md, 0, sizeof *md);
    md->ndims = l->ndims;
    md->data_type = dnnl_f32;
    md->format_kind = dnnl_blocked;
    dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    for (int i = 0; i < l->ndims; i++) {
        md->dims[i] = l->dims[i];
        md->padded_dims[i] = l->padded_dims[i];
        b->strides[i] = l->strides[i];
    }
    b->inner_nblks = l->nblks;
    for (int k = 0; k < l->nblks; k++) {
        b->inner_blks[k] = l->blks[k];
        b->inner_idxs[k] = l->idxs[k];
    }
}

/* If the step's weight parameter w is stored prepared, its stored layout
 * replaces the raw one as the source of preparation: the same tensor seen
 * by the kernel (same dims), whose bytes are exactly that layout's. */
static int use_stored_layout(struct cpu_step *cs, const struct graph_param *w, char *err, size_t errlen)
{
    if (!w->layout.ndims) return 0;
    dnnl_memory_desc_t md;
    layout_to_md(&w->layout, &md);
    int same = md.ndims == cs->raw_wmd.ndims;
    for (int i = 0; same && i < md.ndims; i++) same = md.dims[i] == cs->raw_wmd.dims[i];
    if (!same || dnnl_memory_desc_get_size(&md) != w->nbytes)
        return efail(err, errlen, cs, PPS_ECORRUPT,
                     "the stored layout of '%s' does not describe this weight (%llu bytes)", w->name,
                     (unsigned long long)w->nbytes);
    cs->raw_wmd = md;
    cs->stored = 1;
    return 0;
}

/* Conv weights: [OC, IC/G, KH, KW], or [G, OC/G, IC/G, KH, KW] grouped. */
static void conv_weight_dims(const struct cpu_step *cs, int64_t *d, int *nd)
{
    const struct graph_param *w = &cs->g->params[cs->node->params[0]];
    int64_t group = graph_attr_int(cs->node, "group", 1);
    if (group > 1) {
        d[0] = group;
        d[1] = w->dims[0] / group;
        d[2] = w->dims[1];
        d[3] = w->dims[2];
        d[4] = w->dims[3];
        *nd = 5;
    } else {
        for (int i = 0; i < 4; i++) d[i] = w->dims[i];
        *nd = 4;
    }
}

static int conv_desc(const struct cpu_step *cs, const dnnl_memory_desc_t *src,
                     const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *dst,
                     const struct exec_tensor *x, dnnl_convolution_desc_t *cd)
{
    struct shape_window win;
    int64_t wd[5];
    int wnd;
    conv_weight_dims(cs, wd, &wnd);
    struct exec_tensor w;
    memset(&w, 0, sizeof w);
    w.ndims = 4;
    const struct graph_param *wp = &cs->g->params[cs->node->params[0]];
    for (int i = 0; i < 4; i++) w.dims[i] = wp->dims[i];
    if (shape_window(cs->node, x, &w, &win, NULL, 0)) return PPS_ESHAPE;
    dnnl_dims_t strides = {win.stride[0], win.stride[1]};
    dnnl_dims_t dil = {win.dilation[0] - 1, win.dilation[1] - 1};
    dnnl_dims_t pl = {win.pad_begin[0], win.pad_begin[1]};
    dnnl_dims_t pr = {win.pad_end[0], win.pad_end[1]};
    dnnl_memory_desc_t bias;
    if (cs->bias_len) {
        dnnl_dims_t bd = {cs->bias_len};
        dnnl_memory_desc_init_by_tag(&bias, 1, bd, dnnl_f32, dnnl_a);
    }
    dnnl_status_t s = dnnl_dilated_convolution_forward_desc_init(
        cd, dnnl_forward_inference, dnnl_convolution_direct, src, wei, cs->bias_len ? &bias : NULL,
        dst, strides, dil, pl, pr);
    return map_status(s);
}

/* Whether oneDNN fell back to its reference (slow, loop) implementation. */
static int pd_is_ref(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl)
        return 1;
    return strncmp(impl, "ref", 3) == 0;
}

/* The convolution at batch size n (activation layouts "any") with weights
 * layout wei ("any" allowed). */
static dnnl_status_t conv_pd_at(const struct cpu_step *cs, const struct exec_tensor *x1,
                                const struct exec_tensor *y1, int64_t n,
                                const dnnl_memory_desc_t *wei, dnnl_primitive_desc_t *pd)
{
    struct exec_tensor x = *x1, y = *y1;
    x.dims[0] = y.dims[0] = n;
    dnnl_memory_desc_t src, dst;
    md_any(&src, 4, x.dims);
    md_any(&dst, 4, y.dims);
    dnnl_convolution_desc_t cd;
    if (conv_desc(cs, &src, wei, &dst, &x, &cd)) return dnnl_invalid_arguments;
    dnnl_status_t s = pd_create(pd, &cd, cs, 4);
    return s;
}

/* Whether a fast (non-reference) convolution exists at batch n with weights wei. */
static int conv_fast_at(const struct cpu_step *cs, const struct exec_tensor *x1,
                        const struct exec_tensor *y1, int64_t n, const dnnl_memory_desc_t *wei)
{
    dnnl_primitive_desc_t pd;
    if (conv_pd_at(cs, x1, y1, n, wei, &pd) != dnnl_success) return 0;
    int ok = !pd_is_ref(pd);
    dnnl_primitive_desc_destroy(pd);
    return ok;
}

/* Batch sizes the weights layout is checked at: prepared weights serve every
 * batch size, and oneDNN's preferred layout can differ between them (a 1x1
 * conv at batch 1 and at batch 8 may want different blockings). */
static const int64_t conv_probe_batches[] = {1, 8, 32};
#define CONV_NPROBES (int)(sizeof conv_probe_batches / sizeof conv_probe_batches[0])

static int init_conv(struct cpu_step *cs, const struct exec_tensor *in, const struct exec_tensor *out,
                     unsigned flags, char *err, size_t errlen)
{
    const struct graph_param *w = &cs->g->params[cs->node->params[0]];
    cs->bias_len = (cs->node->nparams >= 2 || cs->st->bn_node >= 0) ? w->dims[0] : 0;
    int64_t wd[5];
    int wnd;
    conv_weight_dims(cs, wd, &wnd);
    dnnl_dims_t d;
    for (int i = 0; i < wnd; i++) d[i] = wd[i];
    dnnl_memory_desc_init_by_tag(&cs->raw_wmd, wnd, d, dnnl_f32, wnd == 5 ? dnnl_goihw : dnnl_oihw);
    dnnl_memory_desc_t any;
    md_any(&any, wnd, wd);
    /* Candidates: the layout oneDNN prefers at each probe batch size; take
     * the first that has a fast implementation at every probe size (the
     * choice depends on the graph only, never on what ran first). */
    dnnl_memory_desc_t cand[CONV_NPROBES];
    int ncand = 0;
    for (int i = 0; i < CONV_NPROBES; i++) {
        dnnl_primitive_desc_t pd;
        dnnl_status_t s = conv_pd_at(cs, &in[0], out, conv_probe_batches[i], &any, &pd);
        if (s != dnnl_success) {
            if (i == 0)
                return efail(err, errlen, cs, map_status(s), "no oneDNN convolution (status %d)", (int)s);
            continue;
        }
        const dnnl_memory_desc_t *wm = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        int dup = 0;
        for (int c = 0; c < ncand && !dup; c++) dup = dnnl_memory_desc_equal(&cand[c], wm);
        if (!dup) cand[ncand++] = *wm;
        dnnl_primitive_desc_destroy(pd);
        if (i == 0) {
            /* The common case: batch 1's choice is fast everywhere. */
            int all = 1;
            for (int j = 1; j < CONV_NPROBES && all; j++)
                all = conv_fast_at(cs, &in[0], out, conv_probe_batches[j], &cand[0]);
            if (all) break;
        }
    }
    cs->wmd = cand[0];
    /* Test hook: keep the parameter's own layout, which the fast kernels do
     * not take, to exercise the per-run weight reorder of prep_conv. */
    if (getenv("PIPEPS_EXEC_TEST_RAW_WEIGHTS")) {
        cs->wmd = cs->raw_wmd;
        cs->test_raw_weights = 1;
        ncand = 0;
    }
    for (int c = 1; c < ncand; c++) {
        int all = 1;
        for (int j = 0; j < CONV_NPROBES && all; j++)
            all = conv_fast_at(cs, &in[0], out, conv_probe_batches[j], &cand[c]);
        if (all) {
            cs->wmd = cand[c];
            break;
        }
    }
    cs->has_wmd = 1;
    int rc = use_stored_layout(cs, w, err, errlen);
    if (rc) return rc;
    cs->in_place = cs->stored && (flags & EXEC_W_PERSIST) && cs->st->bn_node < 0 &&
                   dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd);
    return 0;
}

/* Gemm (and MatMul with a 2-D parameter B) as a 2-D oneDNN matmul. */
static void gemm_dims(const struct cpu_step *cs, const struct exec_tensor *a, int64_t *m, int64_t *k,
                      int64_t *n, int *ta, int *tb)
{
    const struct graph_param *b = &cs->g->params[cs->node->params[0]];
    *ta = cs->node->op == GRAPH_OP_GEMM ? (int)graph_attr_int(cs->node, "transA", 0) : 0;
    *tb = cs->node->op == GRAPH_OP_GEMM ? (int)graph_attr_int(cs->node, "transB", 0) : 0;
    *k = *ta ? a->dims[0] : a->dims[a->ndims - 1];
    *n = *tb ? b->dims[0] : b->dims[1];
    int64_t mm = 1;
    if (*ta) mm = a->dims[1];
    else
        for (int i = 0; i < a->ndims - 1; i++) mm *= a->dims[i];
    *m = mm;
}

static void gemm_src_md(dnnl_memory_desc_t *md, int64_t m, int64_t k, int ta)
{
    dnnl_dims_t d = {m, k}, s = {ta ? 1 : k, ta ? m : 1};
    dnnl_memory_desc_init_by_strides(md, 2, d, dnnl_f32, s);
}

static int gemm_pd(const struct cpu_step *cs, const dnnl_memory_desc_t *src,
                   const dnnl_memory_desc_t *wei, int64_t m, int64_t n, dnnl_primitive_desc_t *pd)
{
    dnnl_memory_desc_t dst, bias;
    dnnl_dims_t dd = {m, n}, bd = {1, n};
    dnnl_memory_desc_init_by_tag(&dst, 2, dd, dnnl_f32, dnnl_ab);
    if (cs->bias_len) dnnl_memory_desc_init_by_tag(&bias, 2, bd, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t md;
    dnnl_status_t s = dnnl_matmul_desc_init(&md, src, wei, cs->bias_len ? &bias : NULL, &dst);
    if (s != dnnl_success) return map_status(s);
    dnnl_primitive_attr_t attr = attr_new();
    if (cs->alpha != 1.0f) dnnl_primitive_attr_set_output_scales(attr, 1, 0, &cs->alpha);
    build_post_ops(cs, 0, 2, attr);
    s = dnnl_primitive_desc_create(pd, &md, attr, g_cpu.engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    return map_status(s);
}

static int init_gemm(struct cpu_step *cs, const struct exec_tensor *in, char *err, size_t errlen)
{
    int64_t m, k, n;
    int ta, tb;
    gemm_dims(cs, &in[0], &m, &k, &n, &ta, &tb);
    cs->gemm_2d = 1;
    cs->alpha = cs->node->op == GRAPH_OP_GEMM ? graph_attr_float(cs->node, "alpha", 1.0f) : 1.0f;
    cs->beta = cs->node->op == GRAPH_OP_GEMM ? graph_attr_float(cs->node, "beta", 1.0f) : 1.0f;
    if (cs->alpha == 0.0f) return efail(err, errlen, cs, PPS_EUNSUPPORTED, "alpha 0 is not supported");
    cs->bias_len = cs->node->nparams >= 2 ? n : 0;
    dnnl_dims_t wd = {k, n}, ws = {tb ? 1 : n, tb ? k : 1};
    dnnl_memory_desc_init_by_strides(&cs->raw_wmd, 2, wd, dnnl_f32, ws);
    int src_rc = use_stored_layout(cs, &cs->g->params[cs->node->params[0]], err, errlen);
    if (src_rc) return src_rc;
    dnnl_memory_desc_t src, wei;
    gemm_src_md(&src, m, k, ta);
    dnnl_memory_desc_init_by_tag(&wei, 2, wd, dnnl_f32, dnnl_format_tag_any);
    dnnl_primitive_desc_t pd;
    int rc = getenv("PIPEPS_GEMM_PLAIN") ? -1 : gemm_pd(cs, &src, &wei, m, n, &pd);
    if (rc) {
        /* No implementation chose a layout: keep the parameter's own. */
        rc = gemm_pd(cs, &src, &cs->raw_wmd, m, n, &pd);
        if (rc) return efail(err, errlen, cs, rc, "no oneDNN matmul for [%lld,%lld]x[%lld,%lld]",
                             (long long)m, (long long)k, (long long)k, (long long)n);
    }
    cs->wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    cs->has_wmd = 1;
    dnnl_primitive_desc_destroy(pd);
    cs->in_place = cs->stored && dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd);
    return 0;
}

/* Whether the matmul also has a fast kernel for the raw weights layout (at
 * the step's batch-1 shape), so deferring the relayout costs little. */
static int gemm_raw_fast(const struct cpu_step *cs, const struct exec_tensor *in)
{
    int64_t m, k, n;
    int ta, tb;
    gemm_dims(cs, &in[0], &m, &k, &n, &ta, &tb);
    dnnl_memory_desc_t src;
    gemm_src_md(&src, m, k, ta);
    dnnl_primitive_desc_t pd;
    if (gemm_pd(cs, &src, &cs->raw_wmd, m, n, &pd)) return 0;
    int fast = !pd_is_ref(pd);
    dnnl_primitive_desc_destroy(pd);
    return fast;
}

/* A Gemm oneDNN's matmul (with a bias row) cannot express: C varies along
 * the rows ([M,N] or [M,1] with M > 1), or B is an activation. */
static int gemm_needs_ref(const struct graph *g, const struct graph_node *n)
{
    if (n->ninputs != 1) return 1;
    if (n->nparams < 2) return 0;
    const struct graph_param *c = &g->params[n->params[1]];
    return c->ndims == 2 && c->dims[0] > 1;
}

static int cpu_step_init(struct exec_backend *be, const struct graph *g, const struct exec_step *st,
                         const struct exec_tensor *in, const struct exec_tensor *out, unsigned flags,
                         void **state, char *err, size_t errlen)
{
    (void)be;
    struct cpu_step *cs = pps_xcalloc(1, sizeof *cs);
    cs->g = g;
    cs->st = st;
    cs->node = &g->nodes[st->node];
    cs->alpha = cs->beta = 1.0f;
    *state = cs;
    const struct graph_node *n = cs->node;
    if (n->op == GRAPH_OP_CONV) return init_conv(cs, in, out, flags, err, errlen);
    if ((n->op == GRAPH_OP_GEMM && !gemm_needs_ref(g, n)) ||
        (n->op == GRAPH_OP_MATMUL && n->ninputs == 1 && n->nparams == 1 &&
         g->params[n->params[0]].ndims == 2 && in[0].ndims >= 2)) {
        int rc = init_gemm(cs, in, err, errlen);
        /* Decided here, before any plan is built: plans bake in the layout. */
        if (!rc && (flags & EXEC_W_PERSIST) && (flags & EXEC_W_DEFER_LAYOUT) &&
            !dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd) && gemm_raw_fast(cs, in))
            cs->deferred = 1;
        return rc;
    }
    return 0;
}

/* Prepared weights are carved out of the region the executor gives each
 * step (sized by cpu_step_prepared_bytes), so they live in one block the
 * executor can pre-fault before the parameters arrive. */
struct carve {
    uint8_t *p;
    uint64_t left;
};

static uint64_t up64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

static void *carve(struct carve *c, uint64_t n)
{
    n = up64(n ? n : 1);
    PPS_ASSERT(n <= c->left);
    void *p = c->p;
    c->p += n;
    c->left -= n;
    return p;
}

/* From the end of the region: bytes only a deferred relayout writes. */
static void *carve_tail(struct carve *c, uint64_t n)
{
    n = up64(n ? n : 1);
    PPS_ASSERT(n <= c->left);
    c->left -= n;
    return c->p + c->left;
}

static uint64_t cpu_step_deferred_bytes(struct exec_backend *be, const void *state)
{
    (void)be;
    const struct cpu_step *cs = state;
    return cs->deferred ? up64(dnnl_memory_desc_get_size(&cs->wmd)) : 0;
}

/* Whether parameter k of the step is consumed by preparation (folded into
 * weights or bias) rather than used as it is. */
static int param_consumed(const struct cpu_step *cs, int k)
{
    return (cs->node->op == GRAPH_OP_CONV && k < cs->node->nparams + (cs->st->bn_node >= 0 ? 4 : 0)) ||
           (cs->gemm_2d && k < cs->node->nparams);
}

static uint64_t cpu_step_prepared_bytes(struct exec_backend *be, const void *state, int persist)
{
    (void)be;
    const struct cpu_step *cs = state;
    uint64_t n = 0;
    if (cs->in_place && !cs->gemm_2d) return 0; /* weights and bias are the parameters */
    if (cs->has_wmd && !(cs->gemm_2d && persist && dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd)))
        n += up64(dnnl_memory_desc_get_size(&cs->wmd));
    if (cs->bias_len) n += up64((uint64_t)cs->bias_len * sizeof(float));
    if (!persist)
        for (int k = 0; k < cs->st->nparams; k++)
            if (!param_consumed(cs, k)) n += up64(cs->g->params[cs->st->params[k]].nbytes);
    return n;
}

/* Run one reorder now (weight preparation) on the preparer's stream, with
 * per-output-channel scales (mask over the weight dims) if scales. */
static int reorder_now(struct cpu_ctx *ctx, const dnnl_memory_desc_t *smd, const void *src,
                       const dnnl_memory_desc_t *dmd, void *dst, const float *scales,
                       int64_t nscales, int mask)
{
    dnnl_primitive_desc_t pd;
    dnnl_primitive_attr_t attr = NULL;
    if (scales) {
        PPS_ASSERT(dnnl_primitive_attr_create(&attr) == dnnl_success);
        dnnl_primitive_attr_set_output_scales(attr, nscales, mask, scales);
    }
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, smd, g_cpu.engine, dmd, g_cpu.engine, attr);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return map_status(s);
    dnnl_primitive_t p;
    s = dnnl_primitive_create(&p, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) return map_status(s);
    dnnl_memory_t ms, md;
    s = dnnl_memory_create(&ms, smd, g_cpu.engine, (void *)src);
    if (s == dnnl_success) {
        s = dnnl_memory_create(&md, dmd, g_cpu.engine, dst);
        if (s == dnnl_success) {
            dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
            s = dnnl_primitive_execute(p, ctx->stream, 2, args);
            if (s == dnnl_success) s = dnnl_stream_wait(ctx->stream);
            dnnl_memory_destroy(md);
        }
        dnnl_memory_destroy(ms);
    }
    dnnl_primitive_destroy(p);
    return map_status(s);
}

static int weights_conv(struct cpu_ctx *ctx, struct cpu_step *cs, const void *const *params,
                        struct carve *cv)
{
    const struct graph_param *wp = &cs->g->params[cs->node->params[0]];
    int64_t oc = wp->dims[0];
    const float *b = cs->node->nparams >= 2 ? params[1] : NULL;
    if (cs->in_place) {
        /* Stored exactly as the kernel reads them (a native kv.bin): the
         * parameters in the cache's memory are the prepared weights. */
        cs->weights = (void *)params[0];
        cs->bias = (float *)b;
        return 0;
    }
    cs->weights = carve(cv, dnnl_memory_desc_get_size(&cs->wmd));
    if (cs->bias_len) cs->bias = carve(cv, (uint64_t)oc * sizeof(float));
    if (cs->st->bn_node < 0) {
        if (cs->bias_len) memcpy(cs->bias, b, (size_t)oc * sizeof(float));
        return reorder_now(ctx, &cs->raw_wmd, params[0], &cs->wmd, cs->weights, NULL, 0, 0);
    }
    /* y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta: the weight
     * scale is applied by the reorder (per output channel: dim 0, or dims
     * 0 and 1 of grouped weights), so no temporary copy is made. */
    int pb = cs->node->nparams;
    const float *gamma = params[pb], *beta = params[pb + 1], *mean = params[pb + 2],
                *var = params[pb + 3];
    float eps = graph_attr_float(&cs->g->nodes[cs->st->bn_node], "epsilon", 1e-5f);
    float *scale = malloc((size_t)oc * sizeof(float));
    if (!scale) return PPS_ENOMEM;
    for (int64_t o = 0; o < oc; o++) {
        scale[o] = gamma[o] / sqrtf(var[o] + eps);
        cs->bias[o] = ((b ? b[o] : 0.0f) - mean[o]) * scale[o] + beta[o];
    }
    int rc = reorder_now(ctx, &cs->raw_wmd, params[0], &cs->wmd, cs->weights, scale, oc,
                         cs->raw_wmd.ndims == 5 ? 3 : 1);
    free(scale);
    return rc;
}

static int weights_gemm(struct cpu_ctx *ctx, struct cpu_step *cs, const void *const *params,
                        unsigned flags, struct carve *cv)
{
    int persist = flags & EXEC_W_PERSIST;
    if (persist && dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd)) {
        cs->weights = (void *)params[0];
    } else if (persist && cs->deferred) {
        /* oneDNN's matmul takes the plain layout too, a little slower (same
         * kernel, B packed on the fly): run on it in place now, relayout
         * later, off the cold run's critical path. */
        cs->weights = (void *)params[0];
        cs->relaid = carve_tail(cv, dnnl_memory_desc_get_size(&cs->wmd));
        cs->relaid_done = 0;
    } else {
        cs->weights = carve(cv, dnnl_memory_desc_get_size(&cs->wmd));
        int rc = reorder_now(ctx, &cs->raw_wmd, params[0], &cs->wmd, cs->weights, NULL, 0, 0);
        if (rc) return rc;
    }
    if (cs->bias_len) {
        const struct graph_param *cp = &cs->g->params[cs->node->params[1]];
        uint64_t ce = graph_param_elems(cp);
        const float *c = params[1];
        cs->bias = carve(cv, (uint64_t)cs->bias_len * sizeof(float));
        /* oneDNN adds the bias before the output scale (alpha). */
        for (int64_t j = 0; j < cs->bias_len; j++)
            cs->bias[j] = cs->beta * c[ce == 1 ? 0 : j] / cs->alpha;
    }
    return 0;
}

static int cpu_step_weights(struct exec_backend *be, void *context, void *state,
                            const void *const *params, unsigned flags, void *region)
{
    (void)be;
    int persist = flags & EXEC_W_PERSIST;
    struct cpu_ctx *ctx = context;
    struct cpu_step *cs = state;
    const struct exec_step *st = cs->st;
    struct carve cv = {region, cpu_step_prepared_bytes(be, state, persist)};
    int rc = 0;
    if (cs->node->op == GRAPH_OP_CONV) rc = weights_conv(ctx, cs, params, &cv);
    else if (cs->gemm_2d) rc = weights_gemm(ctx, cs, params, flags, &cv);
    if (rc) return rc;
    /* Every other parameter is used as it is: in place, or copied. */
    for (int k = 0; k < st->nparams; k++) {
        if (persist) {
            cs->param[k] = params[k];
        } else if (!param_consumed(cs, k)) {
            uint64_t nb = cs->g->params[st->params[k]].nbytes;
            void *copy = carve(&cv, nb);
            memcpy(copy, params[k], nb);
            cs->param[k] = copy;
        }
    }
    return 0;
}

/* A deferred relayout goes in slices of about this many bytes, so a thread
 * doing it can stop for a request within a millisecond or two. */
#define RELAYOUT_SLICE_BYTES (2u << 20)

/* One slice: the next rows of the final layout's outermost dimension (its
 * blocks are contiguous there), reordered from the same rows of the plain
 * weights. Returns 1 when the step is done, 2 if slices remain. */
static int cpu_step_relayout(struct exec_backend *be, void *context, void *state)
{
    (void)be;
    struct cpu_step *cs = state;
    if (!cs->deferred || cs->relaid_done) return 0;
    const dnnl_memory_desc_t *dst = &cs->wmd, *src = &cs->raw_wmd;
    const dnnl_blocking_desc_t *db = &dst->format_desc.blocking, *sb = &src->format_desc.blocking;
    int d = 0;
    for (int i = 1; i < dst->ndims; i++)
        if (db->strides[i] > db->strides[d]) d = i;
    int64_t blk = 1;
    for (int k = 0; k < db->inner_nblks; k++)
        if (db->inner_idxs[k] == d) blk *= db->inner_blks[k];
    uint64_t unit = (uint64_t)db->strides[d] * sizeof(float); /* bytes per block of rows */
    if (dst->format_kind != dnnl_blocked || src->format_kind != dnnl_blocked || sb->inner_nblks ||
        dst->offset0 || src->offset0 || !unit) {
        /* Not sliceable: all at once. */
        int rc = reorder_now(context, src, cs->weights, dst, cs->relaid, NULL, 0, 0);
        if (rc) return rc;
        cs->relaid_done = 1;
        return 1;
    }
    int64_t per = (int64_t)(RELAYOUT_SLICE_BYTES / unit);
    if (per < 1) per = 1;
    int64_t n0 = cs->relaid_upto, n1 = n0 + per * blk;
    if (n1 > dst->dims[d]) n1 = dst->dims[d];
    dnnl_memory_desc_t sd = *dst, ss = *src;
    sd.dims[d] = n1 - n0;
    sd.padded_dims[d] = (n1 - n0 + blk - 1) / blk * blk;
    ss.dims[d] = ss.padded_dims[d] = n1 - n0;
    const uint8_t *sp = (const uint8_t *)cs->weights + (uint64_t)n0 * (uint64_t)sb->strides[d] * sizeof(float);
    uint8_t *dp = (uint8_t *)cs->relaid + (uint64_t)(n0 / blk) * unit;
    int rc = reorder_now(context, &ss, sp, &sd, dp, NULL, 0, 0);
    if (rc) return rc;
    cs->relaid_upto = n1;
    if (n1 < dst->dims[d]) return 2;
    cs->relaid_done = 1;
    return 1;
}

static void cpu_step_relayout_commit(struct exec_backend *be, void *state)
{
    (void)be;
    struct cpu_step *cs = state;
    if (!cs->deferred || !cs->relaid_done) return;
    cs->weights = cs->relaid;
    cs->deferred = 0;
}

static int cpu_step_export(struct exec_backend *be, void *state, struct exec_prepared *out, int max)
{
    (void)be;
    const struct cpu_step *cs = state;
    int n = 0;
    if (!cs->has_wmd || cs->deferred || max < 2 || cs->test_raw_weights) return 0;
    if (cs->node->op != GRAPH_OP_CONV && !cs->gemm_2d) return 0;
    if (md_to_layout(&cs->wmd, &out[0].layout)) return 0;
    dnnl_memory_desc_t back;
    layout_to_md(&out[0].layout, &back);
    if (!dnnl_memory_desc_equal(&back, &cs->wmd)) return 0; /* does not survive the round trip */
    out[0].kind = EXEC_PREPARED_WEIGHTS;
    out[0].bytes = cs->weights;
    out[0].nbytes = dnnl_memory_desc_get_size(&cs->wmd);
    n = 1;
    if (cs->node->op == GRAPH_OP_CONV && cs->bias_len) {
        memset(&out[1], 0, sizeof out[1]);
        out[1].kind = EXEC_PREPARED_BIAS;
        out[1].bytes = cs->bias;
        out[1].nbytes = (uint64_t)cs->bias_len * sizeof(float);
        n = 2;
    }
    return n;
}

static int cpu_step_stored_mismatch(struct exec_backend *be, const void *state)
{
    (void)be;
    const struct cpu_step *cs = state;
    return cs->stored && !dnnl_memory_desc_equal(&cs->wmd, &cs->raw_wmd);
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "any";
    }
}

static char g_target[GRAPH_TARGET_MAX + 1];

static const char *cpu_target(struct exec_backend *be)
{
    (void)be;
    return g_target;
}

/* The layout node_run reads the step's weights in now. */
static const dnnl_memory_desc_t *current_wmd(const struct cpu_step *cs)
{
    return cs->deferred ? &cs->raw_wmd : &cs->wmd;
}

static void cpu_step_free(struct exec_backend *be, void *state)
{
    (void)be;
    struct cpu_step *cs = state;
    free(cs);
}

/* ---- plan level: one routine per kind of op ---------------------------- */

#define PREP_ARGS                                                                          \
    struct cpu_step *cs, struct cpu_node *nd, const struct exec_tensor *in, unsigned mask, \
        int out_plain, struct exec_tensor *out, struct exec_node_plan *plan, char *err,    \
        size_t errlen

static int prep_conv(PREP_ARGS)
{
    dnnl_memory_desc_t src, dst;
    md_any(&src, 4, in[0].dims);
    if (out_plain) md_plain(&dst, 4, out->dims);
    else md_any(&dst, 4, out->dims);
    dnnl_convolution_desc_t cd;
    int rc = conv_desc(cs, &src, &cs->wmd, &dst, &in[0], &cd);
    if (rc) return efail(err, errlen, cs, rc, "cannot describe the convolution");
    dnnl_primitive_attr_t attr = attr_new();
    build_post_ops(cs, 0, 4, attr);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_primitive_desc_create(&pd, &cd, attr, g_cpu.engine, NULL);
    /* The prepared layout may have no fast kernel at this batch size: then
     * let oneDNN choose the weights layout too and reorder the prepared
     * weights into it on every run (a small copy next to the conv). */
    const dnnl_memory_desc_t *want_wei = &cs->wmd;
    if (s != dnnl_success || pd_is_ref(pd) || cs->test_raw_weights) {
        dnnl_memory_desc_t any;
        int64_t wd[5];
        int wnd;
        conv_weight_dims(cs, wd, &wnd);
        md_any(&any, wnd, wd);
        dnnl_convolution_desc_t cd2;
        dnnl_primitive_desc_t pd2;
        if (!conv_desc(cs, &src, &any, &dst, &in[0], &cd2) &&
            dnnl_primitive_desc_create(&pd2, &cd2, attr, g_cpu.engine, NULL) == dnnl_success) {
            if (!pd_is_ref(pd2) || !pd || cs->test_raw_weights) {
                if (pd) dnnl_primitive_desc_destroy(pd);
                pd = pd2;
                s = dnnl_success;
                want_wei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            } else {
                dnnl_primitive_desc_destroy(pd2);
            }
        }
    }
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return efail(err, errlen, cs, map_status(s), "no oneDNN convolution (status %d)", (int)s);
    const dnnl_memory_desc_t *want_src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *got_dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    set_out(nd, got_dst, out);
    dnnl_memory_desc_t have;
    md_of(&have, &in[0]);
    struct src_ref sref = {B_IN, 0, 0};
    struct src_ref wref = {B_WEIGHTS, 0, 0};
    if (!dnnl_memory_desc_equal(&have, want_src)) {
        sref.bind = B_SCRATCH;
        sref.off = scratch_alloc(nd, dnnl_memory_desc_get_size(want_src));
        rc = reorder_call(nd, &have, B_IN, 0, 0, want_src, B_SCRATCH, 0, sref.off);
        if (rc) goto out;
    }
    if (!dnnl_memory_desc_equal(want_wei, &cs->wmd)) {
        wref.bind = B_SCRATCH;
        wref.off = scratch_alloc(nd, dnnl_memory_desc_get_size(want_wei));
        rc = reorder_call(nd, &cs->wmd, B_WEIGHTS, 0, 0, want_wei, B_SCRATCH, 0, wref.off);
        if (rc) goto out;
        log_debug("exec: node '%s': weights reordered per run at batch %lld", cs->node->name,
                  (long long)in[0].dims[0]);
    }
    /* A sum post-op accumulates into dst: dst must hold the other operand. */
    if (cs->st->npost > 0 && cs->st->post[0].kind == EXEC_POST_SUM) {
        int k = cs->st->post[0].operand;
        dnnl_memory_desc_t res;
        md_of(&res, &in[k]);
        if ((mask >> k & 1) && dnnl_memory_desc_equal(&res, got_dst)) {
            plan->alias_input = k;
        } else {
            rc = reorder_call(nd, &res, B_IN, k, 0, got_dst, B_OUT, 0, 0);
            if (rc) goto out;
        }
    }
    struct ccall *c;
    if ((rc = prim_call(nd, pd, &c))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_SRC, want_src, sref.bind, sref.idx, sref.off))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_WEIGHTS, want_wei, wref.bind, wref.idx, wref.off))) goto out;
    if (cs->bias_len) {
        const dnnl_memory_desc_t *bmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1);
        if ((rc = add_arg(c, DNNL_ARG_BIAS, bmd, B_BIAS, 0, 0))) goto out;
    }
    if ((rc = add_arg(c, DNNL_ARG_DST, got_dst, B_OUT, 0, 0))) goto out;
out:
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the convolution");
    return 0;
}

static int prep_gemm(PREP_ARGS)
{
    int64_t m, k, n;
    int ta, tb;
    gemm_dims(cs, &in[0], &m, &k, &n, &ta, &tb);
    (void)out_plain;
    struct src_ref a;
    int rc = plain_input(nd, &in[0], 0, &a);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    dnnl_memory_desc_t src;
    gemm_src_md(&src, m, k, ta);
    dnnl_primitive_desc_t pd = NULL;
    rc = gemm_pd(cs, &src, current_wmd(cs), m, n, &pd);
    /* As for convolutions: if the prepared layout has no fast kernel at
     * this M, reorder the weights per run into the layout oneDNN wants. */
    const dnnl_memory_desc_t *want_wei = current_wmd(cs);
    if (rc || pd_is_ref(pd)) {
        dnnl_memory_desc_t any;
        dnnl_dims_t wd = {k, n};
        dnnl_memory_desc_init_by_tag(&any, 2, wd, dnnl_f32, dnnl_format_tag_any);
        dnnl_primitive_desc_t pd2;
        if (gemm_pd(cs, &src, &any, m, n, &pd2) == 0) {
            if (!pd_is_ref(pd2) || rc) {
                if (pd) dnnl_primitive_desc_destroy(pd);
                pd = pd2;
                rc = 0;
                want_wei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            } else {
                dnnl_primitive_desc_destroy(pd2);
            }
        }
    }
    if (rc) return efail(err, errlen, cs, rc, "no oneDNN matmul with the prepared weights layout");
    struct src_ref wref = {B_WEIGHTS, 0, 0};
    if (!dnnl_memory_desc_equal(want_wei, current_wmd(cs))) {
        wref.bind = B_SCRATCH;
        wref.off = scratch_alloc(nd, dnnl_memory_desc_get_size(want_wei));
        rc = reorder_call(nd, current_wmd(cs), B_WEIGHTS, 0, 0, want_wei, B_SCRATCH, 0, wref.off);
        if (rc) {
            dnnl_primitive_desc_destroy(pd);
            return efail(err, errlen, cs, rc, "cannot reorder the weights");
        }
    }
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    if (cs->st->npost > 0 && cs->st->post[0].kind == EXEC_POST_SUM) {
        int r = cs->st->post[0].operand;
        if ((mask >> r & 1) && !in[r].layout) {
            plan->alias_input = r;
        } else {
            dnnl_memory_desc_t res;
            md_of(&res, &in[r]);
            dnnl_memory_desc_t flat;
            md_plain(&flat, in[r].ndims, in[r].dims);
            /* The residual has the output's logical shape; copy it in as
             * plain bytes (the output is plain). */
            rc = reorder_call(nd, &res, B_IN, r, 0, &flat, B_OUT, 0, 0);
            if (rc) goto out;
        }
    }
    struct ccall *c;
    if ((rc = prim_call(nd, pd, &c))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_SRC, &src, a.bind, a.idx, a.off))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_WEIGHTS, want_wei, wref.bind, wref.idx, wref.off))) goto out;
    if (cs->bias_len) {
        const dnnl_memory_desc_t *bmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1);
        if ((rc = add_arg(c, DNNL_ARG_BIAS, bmd, B_BIAS, 0, 0))) goto out;
    }
    if ((rc = add_arg(c, DNNL_ARG_DST, dst, B_OUT, 0, 0))) goto out;
    rc = bind_post_args(cs, 0, 2, c);
out:
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the matmul");
    return 0;
}

/* MatMul of two activations (or with a parameter of rank > 2): batched
 * oneDNN matmul with broadcasting of the batch dimensions. */
/* md with leading size-1 axes added up to rank r (right-aligned). */
static void md_extend_rank(dnnl_memory_desc_t *out, const dnnl_memory_desc_t *in, int r)
{
    if (in->ndims == r) {
        *out = *in;
        return;
    }
    const dnnl_dims_t *ist = &in->format_desc.blocking.strides;
    dnnl_dims_t d, st;
    int off = r - in->ndims;
    int64_t span = 1;
    for (int i = 0; i < in->ndims; i++)
        if (in->dims[i] * (*ist)[i] > span) span = in->dims[i] * (*ist)[i];
    for (int i = 0; i < r; i++) {
        d[i] = i < off ? 1 : in->dims[i - off];
        st[i] = i < off ? span : (*ist)[i - off];
    }
    dnnl_memory_desc_init_by_strides(out, r, d, dnnl_f32, st);
    out->offset0 = in->offset0;
}

/* MatMul of two activations (or with a parameter of rank > 2): batched
 * oneDNN matmul with broadcasting of the batch dimensions. Operands that
 * are views (transposed or sliced heads) are read in place; a fused
 * Transpose is done by writing the product with permuted strides. */
static int prep_matmul(PREP_ARGS)
{
    (void)out_plain;
    const struct exec_step *st = cs->st;
    int permute = st->npost > 0 && st->post[st->npost - 1].kind == EXEC_POST_PERMUTE;
    int r = out->ndims;
    int64_t perm[GRAPH_MAX_ATTR_INTS];
    dnnl_memory_desc_t dmd;
    md_plain(&dmd, r, out->dims);
    if (permute) {
        /* out.dims[i] = product.dims[perm[i]]: describe the product with
         * the memory order of the (plain) transposed output. */
        const struct graph_node *tn = &cs->g->nodes[st->post[st->npost - 1].node];
        int np = graph_attr_ints(tn, "perm", perm, GRAPH_MAX_ATTR_INTS);
        int dperm[DNNL_MAX_NDIMS];
        for (int i = 0; i < r; i++) dperm[i] = np ? (int)perm[i] : r - 1 - i;
        dnnl_memory_desc_t plain_out = dmd;
        DN(dnnl_memory_desc_permute_axes(&dmd, &plain_out, dperm), "permute");
    }
    struct exec_tensor a, b;
    operand_tensor(cs, in, 0, &a);
    operand_tensor(cs, in, 1, &b);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_desc_t amd, bmd;
    struct src_ref ra, rb;
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        /* attempt 0: views read in place; 1: plain copies of them. */
        const struct exec_tensor *ts[2] = {&a, &b};
        struct src_ref *refs[2] = {&ra, &rb};
        dnnl_memory_desc_t *mds[2] = {&amd, &bmd};
        for (int k = 0; k < 2 && !rc; k++) {
            const struct exec_tensor *t = ts[k];
            if (k >= cs->node->ninputs || !t->layout) {
                rc = operand_ref(nd, cs, in, k, refs[k]);
                md_plain_rank(mds[k], r, t);
            } else if (attempt == 0 && md_strided(t->layout)) {
                *refs[k] = (struct src_ref){B_IN, k, 0};
                md_extend_rank(mds[k], t->layout, r);
                md_detach_offset(mds[k], &refs[k]->off);
            } else {
                rc = plain_input(nd, t, k, refs[k]);
                md_plain_rank(mds[k], r, t);
            }
        }
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the inputs");
        dnnl_matmul_desc_t md;
        dnnl_status_t s = dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &dmd);
        if (s == dnnl_success) {
            s = pd_create(&pd, &md, cs, r);
        }
        if (s == dnnl_success) break;
        pd = NULL;
        for (int i = 0; i < nd->ncalls; i++) {
            for (int q = 0; q < nd->calls[i].nargs; q++)
                if (nd->calls[i].args[q].mem) dnnl_memory_destroy(nd->calls[i].args[q].mem);
            if (nd->calls[i].prim) dnnl_primitive_destroy(nd->calls[i].prim);
        }
        nd->ncalls = 0;
        nd->scratch = 0;
        if (attempt == 1)
            return efail(err, errlen, cs, map_status(s), "no oneDNN matmul (status %d)", (int)s);
    }
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    if (st->npost > 0 && st->post[0].kind == EXEC_POST_SUM) {
        int k = st->post[0].operand;
        if ((mask >> k & 1) && !in[k].layout) {
            plan->alias_input = k;
        } else {
            dnnl_memory_desc_t res;
            md_of(&res, &in[k]);
            rc = reorder_call(nd, &res, B_IN, k, 0, &dmd, B_OUT, 0, 0);
            if (rc) goto out;
        }
    }
    struct ccall *c;
    if ((rc = prim_call(nd, pd, &c))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_SRC, &amd, ra.bind, ra.idx, ra.off))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_WEIGHTS, &bmd, rb.bind, rb.idx, rb.off))) goto out;
    if ((rc = add_arg(c, DNNL_ARG_DST, &dmd, B_OUT, 0, 0))) goto out;
    rc = bind_post_args(cs, 0, r, c);
out:
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the matmul");
    return 0;
}

/* Layout-preserving primitives (eltwise, batch norm) work on the input's
 * layout; a model output needs plain, so convert the input first. */
static int layout_input(struct cpu_node *nd, const struct exec_tensor *in, int out_plain,
                        dnnl_memory_desc_t *md, struct src_ref *r, int *converted)
{
    *converted = 0;
    r->bind = B_IN;
    r->idx = 0;
    r->off = 0;
    if (out_plain && in[0].layout) {
        int rc = plain_input(nd, &in[0], 0, r);
        if (rc) return rc;
        *converted = 1;
        md_plain(md, in[0].ndims, in[0].dims);
        return 0;
    }
    md_of(md, &in[0]);
    return 0;
}

static int prep_eltwise(PREP_ARGS)
{
    dnnl_memory_desc_t md;
    struct src_ref r;
    int conv;
    int rc = layout_input(nd, in, out_plain, &md, &r, &conv);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    float a, b;
    dnnl_alg_kind_t alg = unary_alg(cs->node, &a, &b);
    dnnl_eltwise_desc_t ed;
    DN(dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &md, a, b), "eltwise descriptor");
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = pd_create(&pd, &ed, NULL, 0);
    if (s != dnnl_success) return efail(err, errlen, cs, map_status(s), "no oneDNN eltwise");
    set_out(nd, &md, out);
    if (!conv && (mask & 1)) plan->alias_input = 0;
    struct ccall *c;
    rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, &md, r.bind, r.idx, r.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, &md, B_OUT, 0, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the eltwise");
    return 0;
}

static int prep_batchnorm(PREP_ARGS)
{
    dnnl_memory_desc_t md;
    struct src_ref r;
    int conv;
    int rc = layout_input(nd, in, out_plain, &md, &r, &conv);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    unsigned flags = dnnl_use_global_stats | dnnl_use_scale | dnnl_use_shift;
    if (cs->st->npost == 1) flags |= dnnl_fuse_norm_relu;
    float eps = graph_attr_float(cs->node, "epsilon", 1e-5f);
    dnnl_batch_normalization_desc_t bd;
    DN(dnnl_batch_normalization_forward_desc_init(&bd, dnnl_forward_inference, &md, eps, flags),
       "batch normalization descriptor");
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = pd_create(&pd, &bd, NULL, 0);
    if (s != dnnl_success) return efail(err, errlen, cs, map_status(s), "no oneDNN batch normalization");
    set_out(nd, &md, out);
    if (!conv && (mask & 1)) plan->alias_input = 0;
    dnnl_memory_desc_t cmd;
    int64_t c1 = in[0].dims[1];
    md_plain(&cmd, 1, &c1);
    struct ccall *c;
    rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, &md, r.bind, r.idx, r.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, &md, B_OUT, 0, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_SCALE, &cmd, B_PARAM, 0, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_SHIFT, &cmd, B_PARAM, 1, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_MEAN, &cmd, B_PARAM, 2, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_VARIANCE, &cmd, B_PARAM, 3, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the batch normalization");
    return 0;
}

static int k_avgpool(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_avgpool(p[0], nd->sh[0].dims[0], nd->sh[0].dims[1], nd->sh[0].dims[2], nd->sh[0].dims[3],
                 p[1], nd->sh[1].dims[2], nd->sh[1].dims[3], nd->kernel, nd->stride, nd->pad_begin,
                 nd->pad_end, nd->include_pad);
    return 0;
}

static int prep_pool(PREP_ARGS)
{
    (void)mask;
    (void)plan;
    const struct graph_node *n = cs->node;
    int sp = in[0].ndims - 2;
    dnnl_dims_t kernel, strides, dil, pl, pr;
    dnnl_alg_kind_t alg;
    if (n->op == GRAPH_OP_GLOBALAVGPOOL) {
        if (sp < 1 || sp > 3) return efail(err, errlen, cs, PPS_EUNSUPPORTED, "rank %d", in[0].ndims);
        for (int i = 0; i < sp; i++) {
            kernel[i] = in[0].dims[2 + i];
            strides[i] = 1;
            dil[i] = pl[i] = pr[i] = 0;
        }
        alg = dnnl_pooling_avg_exclude_padding;
    } else {
        struct shape_window win;
        int rc = shape_window(n, &in[0], NULL, &win, err, errlen);
        if (rc) return rc;
        int include = n->op == GRAPH_OP_AVGPOOL && graph_attr_int(n, "count_include_pad", 0);
        int extended = 0;
        for (int i = 0; i < win.sp; i++) {
            kernel[i] = win.kernel[i];
            strides[i] = win.stride[i];
            dil[i] = win.dilation[i] - 1;
            pl[i] = win.pad_begin[i];
            int64_t ext = (win.kernel[i] - 1) * win.dilation[i] + 1;
            int64_t need = (out->dims[2 + i] - 1) * win.stride[i] + ext - in[0].dims[2 + i] - pl[i];
            pr[i] = win.pad_end[i];
            if (need > pr[i]) {
                pr[i] = need; /* ceil_mode: a last window hanging past the padding */
                extended = 1;
            }
        }
        alg = n->op == GRAPH_OP_MAXPOOL ? dnnl_pooling_max
              : include                  ? dnnl_pooling_avg_include_padding
                                         : dnnl_pooling_avg_exclude_padding;
        if (include && extended && win.sp != 2)
            return efail(err, errlen, cs, PPS_EUNSUPPORTED,
                         "ceil_mode with count_include_pad is supported for 2-D pooling only");
        if (include && extended) {
            /* oneDNN would divide the hanging window by the full kernel. */
            struct src_ref r;
            rc = plain_input(nd, &in[0], 0, &r);
            if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
            to_shape(&nd->sh[0], &in[0]);
            to_shape(&nd->sh[1], out);
            for (int i = 0; i < 2; i++) {
                nd->kernel[i] = win.kernel[i];
                nd->stride[i] = win.stride[i];
                nd->pad_begin[i] = win.pad_begin[i];
                nd->pad_end[i] = win.pad_end[i];
            }
            nd->include_pad = 1;
            kernel_call(nd, k_avgpool, &r, 1);
            out->layout = NULL;
            out->nbytes = shape_elems(out) * sizeof(float);
            return 0;
        }
    }
    dnnl_memory_desc_t src, dst;
    md_of(&src, &in[0]);
    md_any(&dst, out->ndims, out->dims);
    dnnl_pooling_v2_desc_t pdsc;
    DN(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference, alg, &src, &dst, strides,
                                         kernel, dil, pl, pr),
       "pooling descriptor");
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = pd_create(&pd, &pdsc, NULL, 0);
    if (s != dnnl_success) return efail(err, errlen, cs, map_status(s), "no oneDNN pooling (status %d)", (int)s);
    const dnnl_memory_desc_t *got = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    struct src_ref d = {B_OUT, 0, 0};
    if (out_plain && !md_is_plain(got)) {
        /* Pool in the input's layout (a plain destination would take
         * oneDNN's reference kernel), then reorder to plain. */
        d.bind = B_SCRATCH;
        d.off = scratch_alloc(nd, dnnl_memory_desc_get_size(got));
    }
    struct ccall *c;
    int rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, &src, B_IN, 0, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, got, d.bind, d.idx, d.off);
    const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(pd, dnnl_query_workspace_md, 0);
    if (!rc && ws && dnnl_memory_desc_get_size(ws) > 0)
        rc = add_arg(c, DNNL_ARG_WORKSPACE, ws, B_SCRATCH, 0, scratch_alloc(nd, dnnl_memory_desc_get_size(ws)));
    if (!rc && d.bind == B_SCRATCH) {
        dnnl_memory_desc_t plain;
        md_plain(&plain, out->ndims, out->dims);
        rc = reorder_call(nd, got, B_SCRATCH, 0, d.off, &plain, B_OUT, 0, 0);
        set_out(nd, &plain, out);
    } else {
        set_out(nd, got, out);
    }
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the pooling");
    return 0;
}

static int k_concat(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_concat((const void *const *)p, nd->sh, nd->nops, nd->esize,
                nd->axis, p[nd->nops]);
    return 0;
}

static int prep_concat(PREP_ARGS)
{
    (void)mask;
    (void)plan;
    const struct graph_node *n = cs->node;
    int nops = shape_noperands(n);
    int axis = shape_axis(graph_attr_int(n, "axis", 1), out->ndims);
    if (out->dtype != GRAPH_F32) {
        /* int64: C kernel on plain operands (up to 4, the shapes nd->sh holds). */
        if (nops > 4) return efail(err, errlen, cs, PPS_EUNSUPPORTED, "int64 concat of more than 4 operands");
        struct src_ref refs[4];
        for (int k = 0; k < nops; k++) {
            struct exec_tensor t;
            operand_tensor(cs, in, k, &t);
            to_shape(&nd->sh[k], &t);
            int rc = operand_ref(nd, cs, in, k, &refs[k]);
            if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
        }
        nd->nops = nops;
        nd->axis = axis;
        nd->esize = shape_dtype_size(out->dtype);
        kernel_call(nd, k_concat, refs, nops);
        out->layout = NULL;
        out->nbytes = shape_elems(out) * nd->esize;
        return 0;
    }
    dnnl_memory_desc_t srcs[GRAPH_MAX_INPUTS + GRAPH_MAX_PARAMS], dst;
    for (int k = 0; k < nops; k++) {
        struct exec_tensor t;
        operand_tensor(cs, in, k, &t);
        md_of(&srcs[k], &t);
    }
    if (out_plain) md_plain(&dst, out->ndims, out->dims);
    else md_any(&dst, out->ndims, out->dims);
    dnnl_primitive_attr_t attr = attr_new();
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = dnnl_concat_primitive_desc_create(&pd, &dst, nops, axis, srcs, attr, g_cpu.engine);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return efail(err, errlen, cs, map_status(s), "no oneDNN concat (status %d)", (int)s);
    const dnnl_memory_desc_t *got = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    set_out(nd, got, out);
    struct ccall *c;
    int rc = prim_call(nd, pd, &c);
    for (int k = 0; k < nops && !rc; k++) {
        if (k < n->ninputs) rc = add_arg(c, DNNL_ARG_MULTIPLE_SRC + k, &srcs[k], B_IN, k, 0);
        else rc = add_arg(c, DNNL_ARG_MULTIPLE_SRC + k, &srcs[k], B_PARAM, k - n->ninputs, 0);
    }
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, got, B_OUT, 0, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the concat");
    return 0;
}

static int k_binary(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_binary(nd->bop, p[0], &nd->sh[0], p[1], &nd->sh[1], p[2], &nd->sh[2]);
    return 0;
}

static int binary_c(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct src_ref refs[2];
    for (int k = 0; k < 2; k++) {
        struct exec_tensor t;
        operand_tensor(cs, in, k, &t);
        to_shape(&nd->sh[k], &t);
        int rc = operand_ref(nd, cs, in, k, &refs[k]);
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    }
    to_shape(&nd->sh[2], out);
    switch (cs->node->op) {
    case GRAPH_OP_ADD: nd->bop = CPUK_ADD; break;
    case GRAPH_OP_SUB: nd->bop = CPUK_SUB; break;
    case GRAPH_OP_MUL: nd->bop = CPUK_MUL; break;
    case GRAPH_OP_DIV: nd->bop = CPUK_DIV; break;
    default: nd->bop = CPUK_POW; break;
    }
    kernel_call(nd, k_binary, refs, 2);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    dnnl_memory_desc_t omd;
    md_plain(&omd, out->ndims, out->dims);
    int rc = post_calls(nd, cs, in, 0, &omd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the post-ops");
    return 0;
}

static int same_dims(const struct exec_tensor *a, const struct exec_tensor *b)
{
    if (a->ndims != b->ndims) return 0;
    for (int i = 0; i < a->ndims; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

static int prep_ref_binary(PREP_ARGS);

static int prep_binary(PREP_ARGS)
{
    const struct graph_node *n = cs->node;
    if (n->op == GRAPH_OP_POW) {
        struct exec_tensor e;
        operand_tensor(cs, in, 1, &e);
        if (e.dtype == GRAPH_I64) return prep_ref_binary(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        return binary_c(cs, nd, in, mask, out_plain, out, plan, err, errlen);
    }
    struct exec_tensor t0, t1;
    operand_tensor(cs, in, 0, &t0);
    operand_tensor(cs, in, 1, &t1);
    int k0 = 0, k1 = 1;
    int commutative = n->op == GRAPH_OP_ADD || n->op == GRAPH_OP_MUL;
    if (!same_dims(&t0, out)) {
        if (!commutative || !same_dims(&t1, out))
            return binary_c(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        k0 = 1;
        k1 = 0;
        struct exec_tensor t = t0;
        t0 = t1;
        t1 = t;
    }
    /* src0 has the output's shape; it must be an activation to keep its
     * layout (a parameter is plain anyway). */
    dnnl_memory_desc_t m0, m1;
    struct src_ref r0 = {k0 < n->ninputs ? B_IN : B_PARAM, k0 < n->ninputs ? k0 : k0 - n->ninputs, 0};
    struct src_ref r1 = {k1 < n->ninputs ? B_IN : B_PARAM, k1 < n->ninputs ? k1 : k1 - n->ninputs, 0};
    int rc;
    if (out_plain && t0.layout) {
        if ((rc = plain_input(nd, &in[k0], k0, &r0))) return efail(err, errlen, cs, rc, "reorder");
        md_plain(&m0, t0.ndims, t0.dims);
    } else {
        md_of(&m0, &t0);
    }
    if (same_dims(&t1, out)) {
        if (t1.layout && !dnnl_memory_desc_equal((const dnnl_memory_desc_t *)t1.layout, &m0) &&
            (rc = plain_input(nd, &in[k1], k1, &r1)))
            return efail(err, errlen, cs, rc, "reorder");
        if (r1.bind == B_SCRATCH) md_plain(&m1, t1.ndims, t1.dims);
        else md_of(&m1, &t1);
    } else {
        if (t1.layout && (rc = plain_input(nd, &in[k1], k1, &r1)))
            return efail(err, errlen, cs, rc, "reorder");
        md_plain_rank(&m1, out->ndims, &t1);
    }
    dnnl_binary_desc_t bd;
    dnnl_status_t s = dnnl_binary_desc_init(&bd, binary_alg(n->op), &m0, &m1, &m0);
    dnnl_primitive_desc_t pd = NULL;
    if (s == dnnl_success) {
        s = pd_create(&pd, &bd, cs, out->ndims);
    }
    if (s != dnnl_success) {
        /* Drop the calls made so far and use the C kernel on plain data. */
        for (int i = 0; i < nd->ncalls; i++) {
            for (int a = 0; a < nd->calls[i].nargs; a++)
                if (nd->calls[i].args[a].mem) dnnl_memory_destroy(nd->calls[i].args[a].mem);
            if (nd->calls[i].prim) dnnl_primitive_destroy(nd->calls[i].prim);
        }
        nd->ncalls = 0;
        nd->scratch = 0;
        return binary_c(cs, nd, in, mask, out_plain, out, plan, err, errlen);
    }
    set_out(nd, &m0, out);
    if (r0.bind == B_IN && (mask >> k0 & 1)) plan->alias_input = k0;
    struct ccall *c;
    rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC_0, &m0, r0.bind, r0.idx, r0.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC_1, &m1, r1.bind, r1.idx, r1.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, &m0, B_OUT, 0, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the binary op");
    return 0;
}

static int k_where(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_where(p[0], nd->dtype[0], &nd->sh[0], p[1], &nd->sh[1], p[2], &nd->sh[2], p[3], &nd->sh[3]);
    return 0;
}

static int prep_where(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct src_ref refs[3];
    for (int k = 0; k < 3; k++) {
        struct exec_tensor t;
        operand_tensor(cs, in, k, &t);
        to_shape(&nd->sh[k], &t);
        nd->dtype[k] = t.dtype;
        int rc = operand_ref(nd, cs, in, k, &refs[k]);
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    }
    to_shape(&nd->sh[3], out);
    kernel_call(nd, k_where, refs, 3);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int k_unary(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_unary(nd->uop, p[0], p[1], nd->n);
    return 0;
}

static int prep_erf(PREP_ARGS)
{
    (void)out_plain;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    nd->uop = CPUK_ERF;
    nd->n = shape_elems(out);
    kernel_call(nd, k_unary, &r, 1);
    if (r.bind == B_IN && (mask & 1)) plan->alias_input = 0;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int prep_view(PREP_ARGS)
{
    (void)mask;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * shape_dtype_size(out->dtype);
    if (!in[0].layout) {
        plan->alias_input = 0;
        return 0;
    }
    const dnnl_memory_desc_t *src = in[0].layout;
    /* A view stays a view when the new shape only splits or merges axes
     * that are contiguous in it (a slice's row split into heads). */
    if (!out_plain && md_strided(src) &&
        md_reshape_view(&nd->out_md, src, out->ndims, out->dims) == 0) {
        out->layout = md_is_plain(&nd->out_md) ? NULL : &nd->out_md;
        out->nbytes = in[0].nbytes;
        plan->alias_input = 0;
        return 0;
    }
    /* Otherwise materialise the input in plain order, which is what the
     * reshaped logical shape indexes. */
    dnnl_memory_desc_t plain;
    md_plain(&plain, in[0].ndims, in[0].dims);
    int rc = reorder_call(nd, src, B_IN, 0, 0, &plain, B_OUT, 0, 0);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    return 0;
}

static int k_transpose(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_transpose(p[0], &nd->sh[0], nd->esize, nd->perm, p[1]);
    return 0;
}

static int prep_transpose(PREP_ARGS)
{
    (void)mask;
    int r = in[0].ndims;
    int64_t perm[GRAPH_MAX_ATTR_INTS];
    int np = graph_attr_ints(cs->node, "perm", perm, GRAPH_MAX_ATTR_INTS);
    for (int i = 0; i < r; i++) nd->perm[i] = np ? (int)perm[i] : r - 1 - i;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * shape_dtype_size(out->dtype);
    if (in[0].dtype != GRAPH_F32) {
        to_shape(&nd->sh[0], &in[0]);
        nd->esize = shape_dtype_size(in[0].dtype);
        struct src_ref ref = {B_IN, 0, 0};
        kernel_call(nd, k_transpose, &ref, 1);
        return 0;
    }
    /* The input viewed with permuted axes. */
    dnnl_memory_desc_t src, view, dst;
    md_of(&src, &in[0]);
    int dperm[DNNL_MAX_NDIMS];
    for (int i = 0; i < r; i++) dperm[nd->perm[i]] = i;
    DN(dnnl_memory_desc_permute_axes(&view, &src, dperm), "permute");
    if (!out_plain && md_strided(&src)) {
        /* No copy: consumers read the view (a matmul directly, others
         * through a reorder that is the transpose, done where needed). */
        nd->out_md = view;
        out->layout = md_is_plain(&view) ? NULL : &nd->out_md;
        out->nbytes = in[0].nbytes;
        plan->alias_input = 0;
        return 0;
    }
    md_plain(&dst, out->ndims, out->dims);
    int rc = reorder_call(nd, &view, B_IN, 0, 0, &dst, B_OUT, 0, 0);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the transpose");
    return 0;
}

static int k_gather(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    if (nd->dtype[1] == GRAPH_F32)
        return cpuref_gather_findex(p[0], &nd->sh[0], nd->esize, p[1], nd->n, nd->axis, p[2]);
    return cpuk_gather(p[0], &nd->sh[0], nd->esize, p[1], nd->n, nd->axis, p[2]);
}

static int prep_gather(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct exec_tensor t0, t1;
    operand_tensor(cs, in, 0, &t0);
    operand_tensor(cs, in, 1, &t1);
    int kd = 0, ki = 1;
    if (t0.dtype == GRAPH_I64 && t1.dtype == GRAPH_F32) {
        kd = 1;
        ki = 0;
    }
    struct exec_tensor *data = kd ? &t1 : &t0, *idx = ki ? &t1 : &t0;
    struct src_ref refs[2];
    int rc = operand_ref(nd, cs, in, kd, &refs[0]);
    if (!rc) rc = operand_ref(nd, cs, in, ki, &refs[1]);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    to_shape(&nd->sh[0], data);
    nd->dtype[1] = idx->dtype;
    nd->esize = shape_dtype_size(data->dtype);
    nd->n = shape_elems(idx);
    nd->axis = shape_axis(graph_attr_int(cs->node, "axis", 0), data->ndims);
    kernel_call(nd, k_gather, refs, 2);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * nd->esize;
    return 0;
}

static int k_slice(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuk_slice(p[0], &nd->sh[0], nd->esize, nd->start, nd->step, nd->count, p[1]);
    return 0;
}

static int prep_slice(PREP_ARGS)
{
    (void)mask;
    /* The data may be an activation or a parameter (a position table). */
    struct exec_tensor x;
    operand_tensor(cs, in, 0, &x);
    struct shape_slice sl;
    int rc = shape_slice(cs->node, &x, &sl, err, errlen);
    if (rc) return rc;
    int unit = x.dtype == GRAPH_F32 && cs->node->ninputs == 1 && !out_plain;
    for (int d = 0; d < x.ndims; d++) unit = unit && sl.step[d] == 1;
    if (unit) {
        /* A window of an activation: a view with an offset, no copy. */
        dnnl_memory_desc_t src;
        md_of(&src, &x);
        dnnl_dims_t dims, offs;
        for (int d = 0; d < x.ndims; d++) {
            dims[d] = sl.count[d];
            offs[d] = sl.start[d];
        }
        if (md_strided(&src) &&
            dnnl_memory_desc_init_submemory(&nd->out_md, &src, dims, offs) == dnnl_success) {
            out->layout = md_is_plain(&nd->out_md) ? NULL : &nd->out_md;
            out->nbytes = in[0].nbytes;
            plan->alias_input = 0;
            return 0;
        }
    }
    struct src_ref r;
    if ((rc = operand_ref(nd, cs, in, 0, &r))) return efail(err, errlen, cs, rc, "reorder");
    to_shape(&nd->sh[0], &x);
    nd->esize = shape_dtype_size(x.dtype);
    memcpy(nd->start, sl.start, sizeof sl.start);
    memcpy(nd->step, sl.step, sizeof sl.step);
    memcpy(nd->count, sl.count, sizeof sl.count);
    kernel_call(nd, k_slice, &r, 1);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * nd->esize;
    return 0;
}

static int k_layernorm(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    cpuk_layernorm(p[0], p[1], nd->outer, nd->inner, cs->param[0],
                   cs->node->nparams >= 2 ? cs->param[1] : NULL, nd->eps);
    return 0;
}

static int prep_layernorm(PREP_ARGS)
{
    (void)out_plain;
    const struct graph_node *n = cs->node;
    int axis = shape_axis(graph_attr_int(n, "axis", -1), in[0].ndims);
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    nd->outer = nd->inner = 1;
    for (int i = 0; i < in[0].ndims; i++) {
        if (i < axis) nd->outer *= in[0].dims[i];
        else nd->inner *= in[0].dims[i];
    }
    nd->eps = graph_attr_float(n, "epsilon", 1e-5f);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    if (r.bind == B_IN && (mask & 1)) plan->alias_input = 0;
    if (n->ninputs != 1)
        return efail(err, errlen, cs, PPS_EUNSUPPORTED, "scale and bias must be parameters");
    dnnl_memory_desc_t md, smd;
    int64_t d2[2] = {nd->outer, nd->inner};
    md_plain(&md, 2, d2);
    md_plain(&smd, 1, &nd->inner);
    unsigned flags = dnnl_use_scale | (n->nparams >= 2 ? dnnl_use_shift : 0);
    dnnl_layer_normalization_desc_t ld;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_layer_normalization_forward_desc_init(&ld, dnnl_forward_inference, &md,
                                                                 NULL, nd->eps, flags);
    if (s == dnnl_success) {
        s = pd_create(&pd, &ld, NULL, 0);
    }
    if (s != dnnl_success) {
        kernel_call(nd, k_layernorm, &r, 1);
        return 0;
    }
    struct ccall *c;
    rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, &md, r.bind, r.idx, r.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, &md, B_OUT, 0, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_SCALE, &smd, B_PARAM, 0, 0);
    if (!rc && n->nparams >= 2) rc = add_arg(c, DNNL_ARG_SHIFT, &smd, B_PARAM, 1, 0);
    const int stat_args[2] = {DNNL_ARG_MEAN, DNNL_ARG_VARIANCE};
    for (int i = 0; i < 2 && !rc; i++) {
        const dnnl_memory_desc_t *sm = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, stat_args[i]);
        if (sm && dnnl_memory_desc_get_size(sm) > 0)
            rc = add_arg(c, stat_args[i], sm, B_SCRATCH, 0, scratch_alloc(nd, dnnl_memory_desc_get_size(sm)));
    }
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the layer normalization");
    return 0;
}

static int prep_softmax(PREP_ARGS)
{
    (void)out_plain;
    int axis = shape_axis(graph_attr_int(cs->node, "axis", -1), in[0].ndims);
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    dnnl_memory_desc_t md;
    md_plain(&md, in[0].ndims, in[0].dims);
    dnnl_softmax_v2_desc_t sd;
    dnnl_alg_kind_t alg = cs->node->op == GRAPH_OP_LOGSOFTMAX ? dnnl_softmax_log : dnnl_softmax_accurate;
    DN(dnnl_softmax_v2_forward_desc_init(&sd, dnnl_forward_inference, alg, &md, &md, axis),
       "softmax descriptor");
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = pd_create(&pd, &sd, NULL, 0);
    if (s != dnnl_success) return efail(err, errlen, cs, map_status(s), "no oneDNN softmax");
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    if (r.bind == B_IN && (mask & 1)) plan->alias_input = 0;
    struct ccall *c;
    rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, &md, r.bind, r.idx, r.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, &md, B_OUT, 0, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the softmax");
    return 0;
}

/* ---- ONNX ops beyond the original model set (kernels in cpu_ref.c) ------ */

static int k_constant(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    memcpy(p[1], p[0], nd->n);
    return 0;
}

/* Constant: a fresh copy of its parameter per run (small tensors only). */
static int prep_constant(PREP_ARGS)
{
    (void)cs;
    (void)in;
    (void)mask;
    (void)out_plain;
    (void)plan;
    (void)err;
    (void)errlen;
    struct src_ref r = {B_PARAM, 0, 0};
    nd->n = shape_elems(out) * sizeof(float);
    kernel_call(nd, k_constant, &r, 1);
    out->layout = NULL;
    out->nbytes = nd->n;
    return 0;
}

static enum cpuref_unop ref_unop_of(enum graph_op op)
{
    switch (op) {
    case GRAPH_OP_NEG: return CPUREF_NEG;
    case GRAPH_OP_ABS: return CPUREF_ABS;
    case GRAPH_OP_EXP: return CPUREF_EXP;
    case GRAPH_OP_LOG: return CPUREF_LOG;
    case GRAPH_OP_RECIPROCAL: return CPUREF_RECIPROCAL;
    case GRAPH_OP_LEAKYRELU: return CPUREF_LEAKYRELU;
    case GRAPH_OP_CLIP: return CPUREF_CLIP;
    case GRAPH_OP_HARDSIGMOID: return CPUREF_HARDSIGMOID;
    case GRAPH_OP_HARDSWISH: return CPUREF_HARDSWISH;
    case GRAPH_OP_ELU: return CPUREF_ELU;
    case GRAPH_OP_SELU: return CPUREF_SELU;
    case GRAPH_OP_SOFTPLUS: return CPUREF_SOFTPLUS;
    case GRAPH_OP_SIN: return CPUREF_SIN;
    case GRAPH_OP_COS: return CPUREF_COS;
    case GRAPH_OP_FLOOR: return CPUREF_FLOOR;
    case GRAPH_OP_SIGN: return CPUREF_SIGN;
    default: return CPUREF_CEIL;
    }
}

static int k_ref_unary(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuref_unary(nd->ref_uop, nd->alpha, nd->beta, p[0], p[1], nd->n);
    return 0;
}

/* Element-wise ops oneDNN's eltwise lacks (HardSigmoid, Selu, Sin, ...). */
static int prep_ref_unary(PREP_ARGS)
{
    (void)out_plain;
    const struct graph_node *n = cs->node;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    nd->ref_uop = ref_unop_of(n->op);
    switch (n->op) {
    case GRAPH_OP_HARDSIGMOID:
        nd->alpha = graph_attr_float(n, "alpha", 0.2f);
        nd->beta = graph_attr_float(n, "beta", 0.5f);
        break;
    case GRAPH_OP_SELU:
        nd->alpha = graph_attr_float(n, "alpha", 1.67326319217681884765625f);
        nd->beta = graph_attr_float(n, "gamma", 1.05070102214813232421875f);
        break;
    case GRAPH_OP_LEAKYRELU: nd->alpha = graph_attr_float(n, "alpha", 0.01f); break;
    case GRAPH_OP_ELU: nd->alpha = graph_attr_float(n, "alpha", 1.0f); break;
    case GRAPH_OP_CLIP:
        nd->alpha = graph_attr_float(n, "min", -FLT_MAX);
        nd->beta = graph_attr_float(n, "max", FLT_MAX);
        break;
    default: break;
    }
    nd->n = shape_elems(out);
    kernel_call(nd, k_ref_unary, &r, 1);
    if (r.bind == B_IN && (mask & 1)) plan->alias_input = 0;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int k_ref_binary(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuref_binary(nd->ref_bop, p[0], nd->dtype[0], &nd->sh[0], p[1], nd->dtype[1], &nd->sh[1],
                  p[2], &nd->sh[2]);
    return 0;
}

/* Max/Min with broadcasting, PRelu, comparisons (float or int64 operands). */
static int prep_ref_binary(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct src_ref refs[2];
    for (int k = 0; k < 2; k++) {
        struct exec_tensor t;
        operand_tensor(cs, in, k, &t);
        to_shape(&nd->sh[k], &t);
        nd->dtype[k] = t.dtype;
        int rc = operand_ref(nd, cs, in, k, &refs[k]);
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    }
    to_shape(&nd->sh[2], out);
    switch (cs->node->op) {
    case GRAPH_OP_MAX: nd->ref_bop = CPUREF_MAX; break;
    case GRAPH_OP_MIN: nd->ref_bop = CPUREF_MIN; break;
    case GRAPH_OP_EQUAL: nd->ref_bop = CPUREF_EQUAL; break;
    case GRAPH_OP_LESS: nd->ref_bop = CPUREF_LESS; break;
    case GRAPH_OP_GREATER: nd->ref_bop = CPUREF_GREATER; break;
    case GRAPH_OP_POW: nd->ref_bop = CPUREF_POW; break;
    case GRAPH_OP_AND: nd->ref_bop = CPUREF_AND; break;
    case GRAPH_OP_OR: nd->ref_bop = CPUREF_OR; break;
    case GRAPH_OP_MOD: nd->ref_bop = graph_attr_int(cs->node, "fmod", 0) ? CPUREF_FMOD : CPUREF_MOD; break;
    default: nd->ref_bop = CPUREF_PRELU; break;
    }
    kernel_call(nd, k_ref_binary, refs, 2);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int k_not_cast(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    if (cs->node->op == GRAPH_OP_NOT) cpuref_not(p[0], nd->dtype[0], p[1], nd->n);
    else cpuref_cast(p[0], nd->dtype[0], p[1], nd->dtype[1], nd->n);
    return 0;
}

static int prep_not_cast(PREP_ARGS)
{
    (void)out_plain;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    nd->dtype[0] = in[0].dtype;
    nd->dtype[1] = out->dtype;
    nd->n = shape_elems(out);
    kernel_call(nd, k_not_cast, &r, 1);
    if (r.bind == B_IN && (mask & 1) && in[0].dtype == out->dtype) plan->alias_input = 0;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * shape_dtype_size(out->dtype);
    return 0;
}

static int k_reduce(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuref_reduce(nd->ref_red, p[0], &nd->sh[0], nd->axes_mask, p[1]);
    return 0;
}

/* Reduce* and GlobalMaxPool (a max over the spatial axes). */
static int prep_reduce(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    const struct graph_node *n = cs->node;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    to_shape(&nd->sh[0], &in[0]);
    if (n->op == GRAPH_OP_GLOBALMAXPOOL) {
        nd->axes_mask = 0;
        for (int i = 2; i < in[0].ndims; i++) nd->axes_mask |= 1u << i;
        nd->ref_red = CPUREF_RMAX;
    } else {
        if ((rc = shape_reduce_axes(n, in[0].ndims, &nd->axes_mask, err, errlen))) return rc;
        nd->ref_red = n->op == GRAPH_OP_REDUCEMEAN  ? CPUREF_RMEAN
                      : n->op == GRAPH_OP_REDUCESUM ? CPUREF_RSUM
                      : n->op == GRAPH_OP_REDUCEMAX ? CPUREF_RMAX
                                                    : CPUREF_RMIN;
    }
    kernel_call(nd, k_reduce, &r, 1);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int k_instancenorm(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    cpuref_instancenorm(p[0], p[1], nd->sh[0].dims[0], nd->sh[0].dims[1], nd->inner,
                        cs->param[0], cs->param[1], nd->eps);
    return 0;
}

static int prep_instancenorm(PREP_ARGS)
{
    (void)out_plain;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    to_shape(&nd->sh[0], &in[0]);
    nd->inner = 1;
    for (int i = 2; i < in[0].ndims; i++) nd->inner *= in[0].dims[i];
    nd->eps = graph_attr_float(cs->node, "epsilon", 1e-5f);
    kernel_call(nd, k_instancenorm, &r, 1);
    if (r.bind == B_IN && (mask & 1)) plan->alias_input = 0;
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

static int k_reshape_like(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    switch (cs->node->op) {
    case GRAPH_OP_EXPAND: cpuref_expand(p[0], &nd->sh[0], nd->esize, p[1], &nd->sh[1]); break;
    case GRAPH_OP_TILE: cpuref_tile(p[0], &nd->sh[0], nd->esize, p[1], &nd->sh[1]); break;
    case GRAPH_OP_PAD:
        cpuref_pad(p[0], &nd->sh[0], nd->start, (enum cpuref_pad_mode)nd->axis, nd->alpha, p[1],
                   &nd->sh[1]);
        break;
    default:
        cpuref_resize(p[0], &nd->sh[0], p[1], &nd->sh[1], &nd->resize,
                      nd->resize_nscales ? nd->resize_scales : NULL);
        break;
    }
    return 0;
}

/* Expand, Tile, Pad, Resize: one C kernel from plain input to plain output. */
static int prep_reshape_like(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    const struct graph_node *n = cs->node;
    struct src_ref r;
    int rc = plain_input(nd, &in[0], 0, &r);
    if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    to_shape(&nd->sh[0], &in[0]);
    to_shape(&nd->sh[1], out);
    nd->esize = shape_dtype_size(in[0].dtype);
    if (n->op == GRAPH_OP_PAD) {
        int64_t pads[GRAPH_MAX_ATTR_INTS];
        graph_attr_ints(n, "pads", pads, GRAPH_MAX_ATTR_INTS);
        for (int i = 0; i < in[0].ndims; i++) nd->start[i] = pads[i]; /* begin pads */
        nd->axis = (int)graph_attr_int(n, "mode", 0);
        nd->alpha = graph_attr_float(n, "value", 0.0f);
    } else if (n->op == GRAPH_OP_RESIZE) {
        nd->resize.mode = (int)graph_attr_int(n, "mode", 0);
        nd->resize.coord = (int)graph_attr_int(n, "coord", 0);
        nd->resize.nearest = (int)graph_attr_int(n, "nearest", 0);
        nd->resize.exclude_outside = (int)graph_attr_int(n, "exclude_outside", 0);
        nd->resize.cubic_a = graph_attr_float(n, "cubic_a", -0.75f);
        nd->resize_nscales = shape_resize_scales(n, nd->resize_scales);
        if (nd->resize_nscales < 0) nd->resize_nscales = 0; /* shape.c refused it */
    }
    kernel_call(nd, k_reshape_like, &r, 1);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * nd->esize;
    return 0;
}

static int k_convtranspose(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    cpuref_convtranspose(p[0], &nd->sh[0], cs->param[0], &nd->sh[1],
                         cs->node->nparams >= 2 ? cs->param[1] : NULL, p[1], &nd->sh[2], &nd->deconv);
    return 0;
}

/* ConvTranspose (1-D to 3-D) as a oneDNN deconvolution. The weight
 * parameter is ONNX's [Cin, Cout/group, k...], oneDNN's iohw (giohw with
 * groups) generalised by strides; it is reordered into the primitive's layout on every run (into
 * scratch), like the per-run fallback of prep_conv. output_padding extends
 * the right padding's output side: padding_r = pads_end - output_padding.
 * Returns 1 (nothing built) when oneDNN has no fitting primitive. */
static int deconv_dnnl(PREP_ARGS, const struct shape_deconv *dc)
{
    (void)mask;
    (void)plan;
    int64_t cin = in[0].dims[1], cout = out->dims[1], g = dc->group;
    int sp = dc->sp, r = in[0].ndims;
    struct exec_tensor w;
    operand_tensor(cs, in, 1, &w);
    /* Logical weights [g,] oc/g, ic/g, k...; physical ONNX [ic, oc/g, k...]. */
    int64_t ks = 1, icg = cin / g, ocg = cout / g;
    for (int i = 0; i < sp; i++) ks *= w.dims[2 + i];
    dnnl_dims_t wdims, wstr;
    int wnd = 0;
    if (g > 1) {
        wdims[wnd] = g;
        wstr[wnd++] = icg * ocg * ks;
    }
    wdims[wnd] = ocg;
    wstr[wnd++] = ks;
    wdims[wnd] = icg;
    wstr[wnd++] = ocg * ks;
    int64_t acc = 1;
    for (int i = sp - 1; i >= 0; i--) {
        wdims[wnd + i] = w.dims[2 + i];
        wstr[wnd + i] = acc;
        acc *= w.dims[2 + i];
    }
    wnd += sp;
    int64_t wd[DNNL_MAX_NDIMS];
    for (int i = 0; i < wnd; i++) wd[i] = wdims[i];
    dnnl_memory_desc_t src, wany, wraw, dst, bias;
    md_any(&src, r, in[0].dims);
    md_any(&wany, wnd, wd);
    if (dnnl_memory_desc_init_by_strides(&wraw, wnd, wdims, dnnl_f32, wstr) != dnnl_success) return 1;
    if (out_plain) md_plain(&dst, r, out->dims);
    else md_any(&dst, r, out->dims);
    int has_bias = cs->node->nparams >= 2;
    md_plain(&bias, 1, &cout);
    dnnl_dims_t strides, dil, pl, pr;
    for (int i = 0; i < sp; i++) {
        strides[i] = dc->stride[i];
        dil[i] = dc->dilation[i] - 1;
        pl[i] = dc->pad_begin[i];
        pr[i] = dc->pad_end[i] - dc->out_pad[i];
    }
    dnnl_deconvolution_desc_t dd;
    dnnl_primitive_desc_t pd;
    if (dnnl_dilated_deconvolution_forward_desc_init(&dd, dnnl_forward_inference,
                                                     dnnl_deconvolution_direct, &src, &wany,
                                                     has_bias ? &bias : NULL, &dst, strides, dil,
                                                     pl, pr) != dnnl_success ||
        pd_create(&pd, &dd, NULL, 0) != dnnl_success)
        return 1;
    const dnnl_memory_desc_t *want_src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *want_wei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *got_dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    set_out(nd, got_dst, out);
    dnnl_memory_desc_t have;
    md_of(&have, &in[0]);
    struct src_ref sref = {B_IN, 0, 0}, wref = {B_PARAM, 0, 0};
    int rc = 0;
    if (!dnnl_memory_desc_equal(&have, want_src)) {
        sref.bind = B_SCRATCH;
        sref.off = scratch_alloc(nd, dnnl_memory_desc_get_size(want_src));
        rc = reorder_call(nd, &have, B_IN, 0, 0, want_src, B_SCRATCH, 0, sref.off);
    }
    if (!rc && !dnnl_memory_desc_equal(&wraw, want_wei)) {
        wref.bind = B_SCRATCH;
        wref.off = scratch_alloc(nd, dnnl_memory_desc_get_size(want_wei));
        rc = reorder_call(nd, &wraw, B_PARAM, 0, 0, want_wei, B_SCRATCH, 0, wref.off);
    }
    struct ccall *c;
    if (!rc) rc = prim_call(nd, pd, &c);
    if (!rc) rc = add_arg(c, DNNL_ARG_SRC, want_src, sref.bind, sref.idx, sref.off);
    if (!rc) rc = add_arg(c, DNNL_ARG_WEIGHTS, want_wei, wref.bind, wref.idx, wref.off);
    if (!rc && has_bias) rc = add_arg(c, DNNL_ARG_BIAS, &bias, B_PARAM, 1, 0);
    if (!rc) rc = add_arg(c, DNNL_ARG_DST, got_dst, B_OUT, 0, 0);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the deconvolution");
    return 0;
}

static int prep_convtranspose(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct exec_tensor w;
    operand_tensor(cs, in, 1, &w);
    struct shape_deconv dc;
    int rc = shape_deconv(cs->node, &in[0], &w, &dc, err, errlen);
    if (rc) return rc;
    if (!getenv("PIPEPS_REF_DECONV")) {
        rc = deconv_dnnl(cs, nd, in, mask, out_plain, out, plan, err, errlen, &dc);
        if (rc <= 0) return rc; /* 1: no oneDNN primitive, nothing built */
    }
    struct src_ref r;
    if ((rc = plain_input(nd, &in[0], 0, &r))) return efail(err, errlen, cs, rc, "cannot reorder the input");
    to_shape(&nd->sh[0], &in[0]);
    to_shape(&nd->sh[1], &w);
    to_shape(&nd->sh[2], out);
    nd->deconv.sp = dc.sp;
    nd->deconv.group = dc.group;
    for (int i = 0; i < dc.sp; i++) {
        nd->deconv.stride[i] = dc.stride[i];
        nd->deconv.dilation[i] = dc.dilation[i];
        nd->deconv.pad_begin[i] = dc.pad_begin[i];
    }
    kernel_call(nd, k_convtranspose, &r, 1);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return 0;
}

/* The step's post-ops (fusion gave a Gemm/MatMul some) as separate calls
 * after a reference kernel; a fused Transpose is not one of them. */
static int ref_post_calls(const struct cpu_step *cs, struct cpu_node *nd,
                          const struct exec_tensor *in, const struct exec_tensor *out, char *err,
                          size_t errlen)
{
    for (int i = 0; i < cs->st->npost; i++)
        if (cs->st->post[i].kind == EXEC_POST_PERMUTE)
            return efail(err, errlen, cs, PPS_EUNSUPPORTED, "a fused Transpose after this MatMul");
    dnnl_memory_desc_t omd;
    md_plain(&omd, out->ndims, out->dims);
    int rc = post_calls(nd, cs, in, 0, &omd);
    if (rc) return efail(err, errlen, cs, rc, "cannot build the post-ops");
    return 0;
}

static int k_ref_gemm(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    const struct graph_node *n = cs->node;
    int nops = n->ninputs + n->nparams;
    cpuref_gemm(p[0], p[1], nops == 3 ? p[2] : NULL, &nd->sh[2], p[nops], nd->sh[3].dims[0],
                nd->sh[3].dims[1], nd->sh[3].dims[2], nd->perm[0], nd->perm[1], nd->alpha, nd->beta);
    return 0;
}

/* Gemm with a row-varying C or an activation B (gemm_needs_ref). */
static int prep_ref_gemm(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    const struct graph_node *n = cs->node;
    int nops = shape_noperands(n);
    struct src_ref refs[3];
    struct exec_tensor t[3];
    for (int k = 0; k < nops; k++) {
        operand_tensor(cs, in, k, &t[k]);
        int rc = operand_ref(nd, cs, in, k, &refs[k]);
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    }
    int ta = (int)graph_attr_int(n, "transA", 0), tb = (int)graph_attr_int(n, "transB", 0);
    int64_t k = ta ? t[0].dims[0] : t[0].dims[t[0].ndims - 1];
    int64_t nn = tb ? t[1].dims[0] : t[1].dims[1];
    int64_t m = (int64_t)(shape_elems(&t[0]) / (uint64_t)k);
    if (nops == 3) to_shape(&nd->sh[2], &t[2]);
    nd->sh[3].ndims = 3;
    nd->sh[3].dims[0] = m;
    nd->sh[3].dims[1] = k;
    nd->sh[3].dims[2] = nn;
    nd->perm[0] = ta;
    nd->perm[1] = tb;
    nd->alpha = graph_attr_float(n, "alpha", 1.0f);
    nd->beta = graph_attr_float(n, "beta", 1.0f);
    kernel_call(nd, k_ref_gemm, refs, nops);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return ref_post_calls(cs, nd, in, out, err, errlen);
}

static int k_ref_matmul(const struct cpu_node *nd, const struct cpu_step *cs, void *const *p)
{
    (void)cs;
    cpuref_matmul(p[0], &nd->sh[0], p[1], &nd->sh[1], p[2], &nd->sh[2]);
    return 0;
}

/* MatMul with a 1-D operand: promoted as numpy does ([K] -> [1, K] for a,
 * [K, 1] for b) and computed by the reference kernel. */
static int prep_ref_matmul(PREP_ARGS)
{
    (void)mask;
    (void)out_plain;
    (void)plan;
    struct src_ref refs[2];
    struct exec_tensor t[2];
    for (int k = 0; k < 2; k++) {
        operand_tensor(cs, in, k, &t[k]);
        int rc = operand_ref(nd, cs, in, k, &refs[k]);
        if (rc) return efail(err, errlen, cs, rc, "cannot reorder the input");
    }
    to_shape(&nd->sh[0], &t[0]);
    to_shape(&nd->sh[1], &t[1]);
    if (t[0].ndims == 1) {
        nd->sh[0].ndims = 2;
        nd->sh[0].dims[0] = 1;
        nd->sh[0].dims[1] = t[0].dims[0];
    }
    if (t[1].ndims == 1) {
        nd->sh[1].ndims = 2;
        nd->sh[1].dims[1] = 1;
    }
    /* The product's shape: batch dims, then M and N (the 1s put back). */
    struct cpuk_shape *ys = &nd->sh[2];
    int rb = (nd->sh[0].ndims > nd->sh[1].ndims ? nd->sh[0].ndims : nd->sh[1].ndims) - 2;
    ys->ndims = rb + 2;
    for (int i = 0; i < rb; i++) {
        int ia = i - (rb - (nd->sh[0].ndims - 2)), ib = i - (rb - (nd->sh[1].ndims - 2));
        int64_t da = ia >= 0 ? nd->sh[0].dims[ia] : 1, db = ib >= 0 ? nd->sh[1].dims[ib] : 1;
        ys->dims[i] = da == 1 ? db : da;
    }
    ys->dims[rb] = nd->sh[0].dims[nd->sh[0].ndims - 2];
    ys->dims[rb + 1] = nd->sh[1].dims[nd->sh[1].ndims - 1];
    kernel_call(nd, k_ref_matmul, refs, 2);
    out->layout = NULL;
    out->nbytes = shape_elems(out) * sizeof(float);
    return ref_post_calls(cs, nd, in, out, err, errlen);
}

static void node_destroy(struct cpu_node *nd)
{
    for (int i = 0; i < nd->ncalls; i++) {
        for (int a = 0; a < nd->calls[i].nargs; a++)
            if (nd->calls[i].args[a].mem) dnnl_memory_destroy(nd->calls[i].args[a].mem);
        if (nd->calls[i].prim) dnnl_primitive_destroy(nd->calls[i].prim);
    }
    free(nd);
}

static int cpu_node_prepare(struct exec_backend *be, void *step_state, const struct exec_tensor *in,
                            unsigned mask, int out_plain, struct exec_tensor *out,
                            struct exec_node_plan *plan, char *err, size_t errlen)
{
    (void)be;
    struct cpu_step *cs = step_state;
    struct cpu_node *nd = pps_xcalloc(1, sizeof *nd);
    plan->alias_input = -1;
    plan->state = nd;
    plan->scratch_bytes = 0;
    int rc = 0;
    /* Views (slices, transposes) reach only the ops that can read them
     * (matmul, reorders, the view ops themselves); for the rest they are
     * copied to plain order first, and the op reads the copy. */
    struct exec_tensor local[EXEC_STEP_MAX_INPUTS];
    int ninputs = cs->st->ninputs;
    memcpy(local, in, (size_t)ninputs * sizeof *local);
    switch (cs->node->op) {
    case GRAPH_OP_MATMUL: case GRAPH_OP_GEMM: case GRAPH_OP_CONV: case GRAPH_OP_TRANSPOSE:
    case GRAPH_OP_RESHAPE: case GRAPH_OP_FLATTEN: case GRAPH_OP_IDENTITY: case GRAPH_OP_SLICE:
        break;
    default:
        for (int k = 0; k < ninputs && !rc; k++) {
            if (!in[k].layout || !md_is_view(in[k].layout)) continue;
            dnnl_memory_desc_t plain;
            md_plain(&plain, in[k].ndims, in[k].dims);
            uint64_t off = scratch_alloc(nd, dnnl_memory_desc_get_size(&plain));
            rc = reorder_call(nd, in[k].layout, B_IN_RAW, k, 0, &plain, B_SCRATCH, 0, off);
            nd->in_remap[k] = off + 1;
            local[k].layout = NULL;
            mask &= ~(1u << k); /* the copy is not the input's buffer */
        }
        if (rc) {
            node_destroy(nd);
            plan->state = NULL;
            return efail(err, errlen, cs, rc, "cannot copy a view input");
        }
    }
    in = local;
    switch (cs->node->op) {
    case GRAPH_OP_CONV: rc = prep_conv(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_GEMM:
        rc = cs->gemm_2d ? prep_gemm(cs, nd, in, mask, out_plain, out, plan, err, errlen)
                         : prep_ref_gemm(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_MATMUL:
        if (in[0].ndims < 2 || (cs->node->ninputs > 1 ? in[1].ndims
                                                       : cs->g->params[cs->node->params[0]].ndims) < 2) {
            rc = prep_ref_matmul(cs, nd, in, mask, out_plain, out, plan, err, errlen);
            break;
        }
        rc = cs->gemm_2d ? prep_gemm(cs, nd, in, mask, out_plain, out, plan, err, errlen)
                         : prep_matmul(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_BATCHNORM: rc = prep_batchnorm(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_RELU: case GRAPH_OP_TANH: case GRAPH_OP_SIGMOID: case GRAPH_OP_SQRT:
    case GRAPH_OP_GELU: case GRAPH_OP_NEG: case GRAPH_OP_ABS: case GRAPH_OP_EXP: case GRAPH_OP_LOG:
    case GRAPH_OP_RECIPROCAL: case GRAPH_OP_LEAKYRELU: case GRAPH_OP_CLIP: case GRAPH_OP_HARDSWISH:
    case GRAPH_OP_ELU: case GRAPH_OP_SOFTPLUS: case GRAPH_OP_HARDSIGMOID: case GRAPH_OP_SELU:
    case GRAPH_OP_SIN: case GRAPH_OP_COS: case GRAPH_OP_FLOOR: case GRAPH_OP_CEIL:
    case GRAPH_OP_SIGN: {
        float a, b;
        if (unary_alg(cs->node, &a, &b) != dnnl_alg_kind_undef)
            rc = prep_eltwise(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        else
            rc = prep_ref_unary(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    }
    case GRAPH_OP_CONSTANT: rc = prep_constant(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_PRELU: case GRAPH_OP_MAX: case GRAPH_OP_MIN: case GRAPH_OP_EQUAL:
    case GRAPH_OP_LESS: case GRAPH_OP_GREATER: case GRAPH_OP_AND: case GRAPH_OP_OR: case GRAPH_OP_MOD:
        rc = prep_ref_binary(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_NOT: case GRAPH_OP_CAST:
        rc = prep_not_cast(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_REDUCEMEAN: case GRAPH_OP_REDUCESUM: case GRAPH_OP_REDUCEMAX:
    case GRAPH_OP_REDUCEMIN: case GRAPH_OP_GLOBALMAXPOOL:
        rc = prep_reduce(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_INSTANCENORM: rc = prep_instancenorm(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_EXPAND: case GRAPH_OP_TILE: case GRAPH_OP_PAD: case GRAPH_OP_RESIZE:
        rc = prep_reshape_like(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_CONVTRANSPOSE: rc = prep_convtranspose(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_LOGSOFTMAX: rc = prep_softmax(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_ERF: rc = prep_erf(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_MAXPOOL: case GRAPH_OP_AVGPOOL: case GRAPH_OP_GLOBALAVGPOOL:
        rc = prep_pool(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_CONCAT: rc = prep_concat(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_ADD: case GRAPH_OP_SUB: case GRAPH_OP_MUL: case GRAPH_OP_DIV: case GRAPH_OP_POW:
        rc = prep_binary(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_WHERE: rc = prep_where(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_FLATTEN: case GRAPH_OP_RESHAPE: case GRAPH_OP_IDENTITY:
        rc = prep_view(cs, nd, in, mask, out_plain, out, plan, err, errlen);
        break;
    case GRAPH_OP_TRANSPOSE: rc = prep_transpose(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_GATHER: rc = prep_gather(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_LAYERNORM: rc = prep_layernorm(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_SOFTMAX: rc = prep_softmax(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    case GRAPH_OP_SLICE: rc = prep_slice(cs, nd, in, mask, out_plain, out, plan, err, errlen); break;
    default:
        rc = efail(err, errlen, cs, PPS_EUNSUPPORTED, "unsupported operation");
    }
    /* Ops with their own post-op support handled them; the C-kernel and
     * view paths never get posts (cpu_supports_post refuses). */
    if (rc) {
        node_destroy(nd);
        plan->state = NULL;
        return rc;
    }
    plan->scratch_bytes = nd->scratch;
    return 0;
}

static inline void *resolve(const struct carg *a, const struct cpu_node *nd,
                            const struct cpu_step *cs, void *const *in, void *out, void *scratch)
{
    switch (a->bind) {
    case B_IN:
        if (nd->in_remap[a->idx]) return (char *)scratch + nd->in_remap[a->idx] - 1 + a->off;
        return (char *)in[a->idx] + a->off;
    case B_IN_RAW: return (char *)in[a->idx] + a->off;
    /* off (a detached view offset, or a scratch slot) applies to every bind. */
    case B_OUT: return (char *)out + a->off;
    case B_SCRATCH: return (char *)scratch + a->off;
    case B_WEIGHTS: return (char *)cs->weights + a->off;
    case B_BIAS: return (char *)cs->bias + a->off;
    case B_PARAM: return (char *)(void *)cs->param[a->idx] + a->off;
    }
    return NULL;
}

static int cpu_node_run(struct exec_backend *be, void *context, void *step_state, void *node_state,
                        void *const *in, void *out, void *scratch)
{
    (void)be;
    struct cpu_ctx *ctx = context;
    const struct cpu_step *cs = step_state;
    const struct cpu_node *nd = node_state;
    for (int i = 0; i < nd->ncalls; i++) {
        const struct ccall *c = &nd->calls[i];
        if (c->prim) {
            dnnl_exec_arg_t args[CPU_MAX_ARGS];
            for (int a = 0; a < c->nargs; a++) {
                dnnl_memory_set_data_handle(c->args[a].mem, resolve(&c->args[a], nd, cs, in, out, scratch));
                args[a].arg = c->args[a].arg;
                args[a].memory = c->args[a].mem;
            }
            dnnl_status_t s = dnnl_primitive_execute(c->prim, ctx->stream, c->nargs, args);
            if (s != dnnl_success) return map_status(s);
        } else {
            void *ptrs[CPU_MAX_ARGS];
            for (int a = 0; a < c->nargs; a++) ptrs[a] = resolve(&c->args[a], nd, cs, in, out, scratch);
            int rc = c->fn(nd, cs, ptrs);
            if (rc) return rc;
        }
    }
    return 0;
}

static void cpu_node_free(struct exec_backend *be, void *node_state)
{
    (void)be;
    if (node_state) node_destroy(node_state);
}

static void cpu_destroy(struct exec_backend *be) { (void)be; }

static void cpu_init_once(void)
{
    PPS_ASSERT(dnnl_engine_create(&g_cpu.engine, dnnl_cpu, 0) == dnnl_success);
    /* Room for the kernels of several big models (a server warms those of
     * the models in its machine's cache at start; default 1024). */
    dnnl_set_primitive_cache_capacity(4096);
    const dnnl_version_t *v = dnnl_version();
    snprintf(g_target, sizeof g_target, "onednn-%d.%d.%d/%s", v->major, v->minor, v->patch,
             isa_name(dnnl_get_effective_cpu_isa()));
    struct exec_backend *b = &g_cpu.base;
    b->name = "cpu-onednn";
    b->ctx = &g_cpu;
    b->supports = cpu_supports;
    b->supports_post = cpu_supports_post;
    b->folds_batchnorm = 1;
    b->context_create = cpu_context_create;
    b->context_begin = cpu_context_begin;
    b->context_free = cpu_context_free;
    b->step_init = cpu_step_init;
    b->step_weights = cpu_step_weights;
    b->step_relayout = cpu_step_relayout;
    b->step_deferred_bytes = cpu_step_deferred_bytes;
    b->step_relayout_commit = cpu_step_relayout_commit;
    b->step_prepared_bytes = cpu_step_prepared_bytes;
    b->step_free = cpu_step_free;
    b->step_export = cpu_step_export;
    b->step_stored_mismatch = cpu_step_stored_mismatch;
    b->target = cpu_target;
    b->node_prepare = cpu_node_prepare;
    b->node_run = cpu_node_run;
    b->node_free = cpu_node_free;
    b->destroy = cpu_destroy;
}

struct exec_backend *cpu_backend_get(void)
{
    pthread_once(&g_cpu_once, cpu_init_once);
    return &g_cpu.base;
}
