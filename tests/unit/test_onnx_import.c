/* Unit tests for the ONNX importer: small ModelProtos built in memory with
 * the protobuf-c structs generated from onnx.proto, packed, and imported
 * with onnx_import_memory. Covers parsing (truncation, absurd dims,
 * external data inside/outside the model's folder), graph checks (cycles,
 * dangling names, duplicates, unsupported ops), folding (Reshape target
 * from Shape with a symbolic batch, Split, Squeeze/Unsqueeze), operand
 * placement (constant-first Sub, commutative Add, Gemm alpha/beta) and the
 * GELU pattern. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "onnx.pb-c.h"
#include "onnx/onnx_import.h"

/* ---- a tiny ModelProto builder; everything it allocates is freed at once ---- */

#define MB_MAX 64

struct mb {
    void *allocs[4096];
    int nallocs;
    Onnx__ModelProto model;
    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
    Onnx__NodeProto *nodes[MB_MAX];
    Onnx__TensorProto *inits[MB_MAX];
    Onnx__ValueInfoProto *inputs[MB_MAX], *outputs[MB_MAX];
};

static void *mb_alloc(struct mb *b, size_t n)
{
    assert_true(b->nallocs < 4096);
    void *p = calloc(1, n ? n : 1);
    assert_non_null(p);
    b->allocs[b->nallocs++] = p;
    return p;
}

static char *mb_str(struct mb *b, const char *s)
{
    char *p = mb_alloc(b, strlen(s) + 1);
    strcpy(p, s);
    return p;
}

static void mb_init(struct mb *b, int64_t opset)
{
    memset(b, 0, sizeof *b);
    Onnx__ModelProto m = ONNX__MODEL_PROTO__INIT;
    Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
    Onnx__OperatorSetIdProto o = ONNX__OPERATOR_SET_ID_PROTO__INIT;
    b->model = m;
    b->graph = g;
    b->opset = o;
    b->opset.domain = mb_str(b, "");
    b->opset.has_version = 1;
    b->opset.version = opset;
    b->opsets[0] = &b->opset;
    b->model.n_opset_import = 1;
    b->model.opset_import = b->opsets;
    b->model.has_ir_version = 1;
    b->model.ir_version = 8;
    b->model.producer_name = mb_str(b, "test");
    b->model.graph = &b->graph;
    b->graph.name = mb_str(b, "g");
    b->graph.node = b->nodes;
    b->graph.initializer = b->inits;
    b->graph.input = b->inputs;
    b->graph.output = b->outputs;
}

static void mb_free(struct mb *b)
{
    for (int i = 0; i < b->nallocs; i++) free(b->allocs[i]);
    b->nallocs = 0;
}

/* ins/outs: names separated by spaces; "-" is an empty (absent) input */
static char **mb_names(struct mb *b, const char *list, size_t *n)
{
    char **v = mb_alloc(b, 64 * sizeof *v);
    *n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
        assert_true(*n < 64);
        v[(*n)++] = mb_str(b, strcmp(tok, "-") == 0 ? "" : tok);
    }
    return v;
}

static Onnx__NodeProto *mb_node(struct mb *b, const char *op, const char *name, const char *ins,
                                const char *outs)
{
    assert_true(b->graph.n_node < MB_MAX);
    Onnx__NodeProto init = ONNX__NODE_PROTO__INIT;
    Onnx__NodeProto *n = mb_alloc(b, sizeof *n);
    *n = init;
    n->op_type = mb_str(b, op);
    n->name = mb_str(b, name);
    n->domain = mb_str(b, "");
    n->input = mb_names(b, ins, &n->n_input);
    n->output = mb_names(b, outs, &n->n_output);
    n->attribute = mb_alloc(b, 8 * sizeof *n->attribute);
    b->nodes[b->graph.n_node++] = n;
    return n;
}

static Onnx__AttributeProto *mb_attr(struct mb *b, Onnx__NodeProto *n, const char *name,
                                     Onnx__AttributeProto__AttributeType type)
{
    assert_true(n->n_attribute < 8);
    Onnx__AttributeProto init = ONNX__ATTRIBUTE_PROTO__INIT;
    Onnx__AttributeProto *a = mb_alloc(b, sizeof *a);
    *a = init;
    a->name = mb_str(b, name);
    a->has_type = 1;
    a->type = type;
    n->attribute[n->n_attribute++] = a;
    return a;
}

static void mb_attr_int(struct mb *b, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = mb_attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = v;
}

static void mb_attr_float(struct mb *b, Onnx__NodeProto *n, const char *name, float v)
{
    Onnx__AttributeProto *a = mb_attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = v;
}

static void mb_attr_ints(struct mb *b, Onnx__NodeProto *n, const char *name, int cnt, const int64_t *v)
{
    Onnx__AttributeProto *a = mb_attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = (size_t)cnt;
    a->ints = mb_alloc(b, (size_t)cnt * sizeof *a->ints);
    memcpy(a->ints, v, (size_t)cnt * sizeof *v);
}

static Onnx__TensorProto *mb_tensor(struct mb *b, const char *name, int32_t type, int nd, const int64_t *dims)
{
    Onnx__TensorProto init = ONNX__TENSOR_PROTO__INIT;
    Onnx__TensorProto *t = mb_alloc(b, sizeof *t);
    *t = init;
    t->name = mb_str(b, name);
    t->has_data_type = 1;
    t->data_type = type;
    t->n_dims = (size_t)nd;
    t->dims = mb_alloc(b, (size_t)(nd ? nd : 1) * sizeof *t->dims);
    if (nd) memcpy(t->dims, dims, (size_t)nd * sizeof *dims);
    return t;
}

static Onnx__TensorProto *mb_init_f(struct mb *b, const char *name, int nd, const int64_t *dims, const float *v)
{
    Onnx__TensorProto *t = mb_tensor(b, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, nd, dims);
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
    t->n_float_data = n;
    t->float_data = mb_alloc(b, n * sizeof(float));
    memcpy(t->float_data, v, n * sizeof(float));
    b->inits[b->graph.n_initializer++] = t;
    return t;
}

static Onnx__TensorProto *mb_init_i64(struct mb *b, const char *name, int nd, const int64_t *dims, const int64_t *v)
{
    Onnx__TensorProto *t = mb_tensor(b, name, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, nd, dims);
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
    t->n_int64_data = n;
    t->int64_data = mb_alloc(b, n * sizeof(int64_t));
    memcpy(t->int64_data, v, n * sizeof(int64_t));
    b->inits[b->graph.n_initializer++] = t;
    return t;
}

static Onnx__ValueInfoProto *mb_value(struct mb *b, const char *name, int32_t elem, int nd, const int64_t *dims)
{
    Onnx__ValueInfoProto vi = ONNX__VALUE_INFO_PROTO__INIT;
    Onnx__TypeProto tpi = ONNX__TYPE_PROTO__INIT;
    Onnx__TypeProto__Tensor tti = ONNX__TYPE_PROTO__TENSOR__INIT;
    Onnx__TensorShapeProto spi = ONNX__TENSOR_SHAPE_PROTO__INIT;
    Onnx__ValueInfoProto *v = mb_alloc(b, sizeof *v);
    *v = vi;
    v->name = mb_str(b, name);
    Onnx__TypeProto *tp = mb_alloc(b, sizeof *tp);
    *tp = tpi;
    Onnx__TypeProto__Tensor *tt = mb_alloc(b, sizeof *tt);
    *tt = tti;
    Onnx__TensorShapeProto *sp = mb_alloc(b, sizeof *sp);
    *sp = spi;
    v->type = tp;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    tt->has_elem_type = 1;
    tt->elem_type = elem;
    tt->shape = sp;
    sp->n_dim = (size_t)nd;
    sp->dim = mb_alloc(b, (size_t)(nd ? nd : 1) * sizeof *sp->dim);
    for (int i = 0; i < nd; i++) {
        Onnx__TensorShapeProto__Dimension di = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
        Onnx__TensorShapeProto__Dimension *d = mb_alloc(b, sizeof *d);
        *d = di;
        if (dims[i] < 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = mb_str(b, i == 0 ? "N" : "S");
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        }
        sp->dim[i] = d;
    }
    return v;
}

/* dims < 0: symbolic */
static void mb_input(struct mb *b, const char *name, int nd, const int64_t *dims)
{
    b->inputs[b->graph.n_input++] = mb_value(b, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, nd, dims);
}

static void mb_output(struct mb *b, const char *name)
{
    b->outputs[b->graph.n_output++] = mb_value(b, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, 0, NULL);
}

static uint8_t *mb_pack(struct mb *b, size_t *len)
{
    *len = onnx__model_proto__get_packed_size(&b->model);
    uint8_t *buf = mb_alloc(b, *len);
    assert_int_equal(onnx__model_proto__pack(&b->model, buf), *len);
    return buf;
}

static int mb_import(struct mb *b, const char *dir, int64_t seq, struct onnx_model **m, char *err, size_t errlen)
{
    size_t len;
    uint8_t *buf = mb_pack(b, &len);
    struct onnx_import_options o;
    onnx_import_options_default(&o);
    o.seq_len = seq;
    return onnx_import_memory(buf, len, dir, &o, m, err, errlen);
}

static int count_op(const struct graph *g, const char *op)
{
    int n = 0;
    for (int i = 0; i < g->nnodes; i++)
        if (strcmp(graph_op_name(g->nodes[i].op), op) == 0) n++;
    return n;
}

static float param_elem(const struct onnx_model *m, int32_t p, size_t i)
{
    float f;
    memcpy(&f, (const char *)onnx_model_param(m, p) + i * 4, 4);
    return f;
}

/* x [N,3,8,8] -> Conv(w [4,3,3,3], b, pads 1) -> Relu -> y */
static void build_conv_relu(struct mb *b)
{
    mb_init(b, 17);
    int64_t xd[4] = {-1, 3, 8, 8}, wd[4] = {4, 3, 3, 3}, bd[1] = {4};
    static float w[108], bias[4] = {1, 2, 3, 4};
    for (int i = 0; i < 108; i++) w[i] = (float)i / 100.0f;
    mb_input(b, "x", 4, xd);
    mb_init_f(b, "w", 4, wd, w);
    mb_init_f(b, "b", 1, bd, bias);
    Onnx__NodeProto *c = mb_node(b, "Conv", "conv", "x w b", "c");
    int64_t pads[4] = {1, 1, 1, 1};
    mb_attr_ints(b, c, "pads", 4, pads);
    mb_node(b, "Relu", "relu", "c", "y");
    mb_output(b, "y");
}

static void test_conv_relu(void **state)
{
    (void)state;
    struct mb b;
    build_conv_relu(&b);
    struct onnx_model *m = NULL;
    char err[512];
    int rc = mb_import(&b, NULL, 0, &m, err, sizeof err);
    assert_int_equal(rc, 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->ninputs, 1);
    assert_int_equal(g->inputs[0].dims[0], -1);
    assert_int_equal(g->nnodes, 2);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_CONV);
    assert_int_equal(g->nodes[0].nparams, 2);
    assert_int_equal(g->nodes[1].op, GRAPH_OP_RELU);
    assert_int_equal(g->noutputs, 1);
    assert_int_equal(g->outputs[0].ndims, 4);
    assert_int_equal(g->outputs[0].dims[1], 4);
    assert_int_equal(g->outputs[0].dims[2], 8);
    assert_int_equal(g->nparams, 2);
    assert_true(param_elem(m, 0, 107) == 1.07f);
    assert_true(param_elem(m, 1, 3) == 4.0f);
    assert_int_equal(graph_validate(g, err, sizeof err), 0);
    onnx_model_free(m);
    mb_free(&b);
}

/* Every prefix of a valid model is refused or imported, never a crash. */
static void test_truncated(void **state)
{
    (void)state;
    struct mb b;
    build_conv_relu(&b);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    int refused = 0;
    for (size_t cut = 0; cut < len; cut++) {
        struct onnx_model *m = NULL;
        char err[512];
        int rc = onnx_import_memory(buf, cut, NULL, NULL, &m, err, sizeof err);
        if (rc) {
            assert_true(rc < 0);
            assert_true(err[0] != '\0');
            refused++;
        }
        onnx_model_free(m);
    }
    assert_true(refused > (int)len / 2);
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(onnx_import_memory(buf, len / 2, NULL, NULL, &m, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "ModelProto"));
    mb_free(&b);
}

static void expect_fail(struct mb *b, int code, const char *needle)
{
    struct onnx_model *m = NULL;
    char err[1024];
    int rc = mb_import(b, NULL, 0, &m, err, sizeof err);
    if (rc != code || !strstr(err, needle)) fprintf(stderr, "rc %d, message: %s\n", rc, err);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err, needle));
    assert_null(m);
}

static void test_cycle(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 4};
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Add", "a1", "x t2", "t1");
    mb_node(&b, "Relu", "r2", "t1", "t2");
    mb_output(&b, "t2");
    expect_fail(&b, PPS_EINVAL, "cycle");
    mb_free(&b);
}

static void test_dangling_and_missing_initializer(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 4};
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Relu", "r", "nope", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "node 'r' (Relu) reads 'nope', which no node, input or initializer produces");
    mb_free(&b);

    /* Conv whose weight initializer is missing */
    mb_init(&b, 17);
    int64_t x4[4] = {-1, 3, 8, 8};
    mb_input(&b, "x", 4, x4);
    mb_node(&b, "Conv", "conv", "x conv.weight", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "reads 'conv.weight'");
    mb_free(&b);
}

static void test_duplicate_names(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 4};
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Relu", "r1", "x", "y");
    mb_node(&b, "Sigmoid", "r2", "x", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "'y', which is already defined");
    mb_free(&b);
}

static void test_absurd_dims(void **state)
{
    (void)state;
    struct mb b;
    /* 2^40 * 2 elements in an initializer (no data: it must fail on the dims, before anything) */
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 4};
    mb_input(&b, "x", 2, xd);
    int64_t huge[2] = {1ll << 20, 1ll << 21};
    b.inits[b.graph.n_initializer++] = mb_tensor(&b, "big", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, 2, huge);
    mb_node(&b, "Add", "add", "x big", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_ETOOBIG, "'big'");
    mb_free(&b);

    /* negative initializer dim */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, xd);
    int64_t neg[1] = {-4};
    b.inits[b.graph.n_initializer++] = mb_tensor(&b, "neg", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, 1, neg);
    mb_node(&b, "Add", "add", "x neg", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "tensor 'neg' has dimension -4");
    mb_free(&b);

    /* data count disagreeing with the dims */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, xd);
    int64_t four[1] = {4};
    float v[4] = {1, 2, 3, 4};
    Onnx__TensorProto *t = mb_init_f(&b, "short", 1, four, v);
    t->n_float_data = 3;
    mb_node(&b, "Add", "add", "x short", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "tensor 'short' holds 3 values");
    mb_free(&b);

    /* an input dimension of 0 and a symbolic one without seq */
    mb_init(&b, 17);
    int64_t zero[2] = {-1, 0};
    mb_input(&b, "x", 2, zero);
    mb_node(&b, "Relu", "r", "x", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EINVAL, "input 'x' dimension 1 is 0");
    mb_free(&b);
    mb_init(&b, 17);
    int64_t sym[3] = {-1, -1, 4};
    mb_input(&b, "x", 3, sym);
    mb_node(&b, "Relu", "r", "x", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EUNSUPPORTED, "symbolic ('S')");
    /* with seq_len the symbolic dim is fixed */
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 7, &m, err, sizeof err), 0);
    assert_int_equal(onnx_model_graph(m)->inputs[0].dims[1], 7);
    onnx_model_free(m);
    mb_free(&b);
}

static void test_unsupported(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 4};
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Relu", "r", "x", "t");
    mb_node(&b, "NonMaxSuppression", "nms", "t", "u");
    mb_node(&b, "Hardmax", "hm", "u", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EUNSUPPORTED, "'nms' (NonMaxSuppression, opset 17), 'hm' (Hardmax, opset 17)");
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    struct onnx_import_options o;
    onnx_import_options_default(&o);
    o.allow_unsupported = 1;
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(onnx_import_memory(buf, len, NULL, &o, &m, err, sizeof err), 0);
    assert_int_equal(onnx_model_nunsupported(m), 2);
    assert_string_equal(onnx_model_unsupported(m, 0)->name, "nms");
    assert_int_equal(onnx_model_nop_types(m), 3);
    assert_int_equal(onnx_model_op_type(m, 0)->supported, 1);
    assert_int_equal(onnx_model_op_type(m, 1)->supported, 0);
    onnx_model_free(m);
    mb_free(&b);

    /* an unsupported node no output depends on is left out, not refused */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Relu", "r", "x", "y");
    mb_node(&b, "NonMaxSuppression", "nms", "x", "unused");
    mb_output(&b, "y");
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    assert_int_equal(onnx_model_graph(m)->nnodes, 1);
    assert_int_equal(onnx_model_nunsupported(m), 0);
    onnx_model_free(m);
    mb_free(&b);
}

/* x [N, 4, 6] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [24])) */
static void test_reshape_from_shape_symbolic_batch(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[3] = {-1, 4, 6}, one[1] = {1}, zero_d[1] = {0};
    int64_t idx0 = 0, v24 = 24, ax0 = 0;
    mb_input(&b, "x", 3, xd);
    mb_init_i64(&b, "i0", 0, NULL, &idx0);
    mb_init_i64(&b, "c24", 1, one, &v24);
    mb_init_i64(&b, "axes0", 1, one, &ax0);
    (void)zero_d;
    mb_node(&b, "Shape", "shape", "x", "s");
    Onnx__NodeProto *ga = mb_node(&b, "Gather", "gather", "s i0", "n");
    mb_attr_int(&b, ga, "axis", 0);
    mb_node(&b, "Unsqueeze", "unsq", "n axes0", "n1");
    Onnx__NodeProto *cat = mb_node(&b, "Concat", "cat", "n1 c24", "target");
    mb_attr_int(&b, cat, "axis", 0);
    mb_node(&b, "Reshape", "reshape", "x target", "y");
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1); /* the shape arithmetic is folded away */
    assert_int_equal(g->nodes[0].op, GRAPH_OP_RESHAPE);
    int64_t sh[8];
    assert_int_equal(graph_attr_ints(&g->nodes[0], "shape", sh, 8), 2);
    assert_int_equal(sh[0], 0); /* the batch: copied, not frozen */
    assert_int_equal(sh[1], 24);
    assert_int_equal(g->outputs[0].ndims, 2);
    assert_int_equal(g->outputs[0].dims[1], 24);
    onnx_model_free(m);
    mb_free(&b);

    /* Reshape to [N*4, 6] computed as Mul(Gather(Shape), 4): the batch-derived element becomes -1 */
    mb_init(&b, 17);
    int64_t four = 4, six = 6;
    mb_input(&b, "x", 3, xd);
    mb_init_i64(&b, "i0", 0, NULL, &idx0);
    mb_init_i64(&b, "c4", 0, NULL, &four);
    mb_init_i64(&b, "c6", 1, one, &six);
    mb_init_i64(&b, "axes0", 1, one, &ax0);
    mb_node(&b, "Shape", "shape", "x", "s");
    mb_node(&b, "Gather", "gather", "s i0", "n");
    mb_node(&b, "Mul", "mul", "n c4", "n4");
    mb_node(&b, "Unsqueeze", "unsq", "n4 axes0", "n1");
    cat = mb_node(&b, "Concat", "cat", "n1 c6", "target");
    mb_attr_int(&b, cat, "axis", 0);
    mb_node(&b, "Reshape", "reshape", "x target", "y");
    mb_output(&b, "y");
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(graph_attr_ints(&g->nodes[0], "shape", sh, 8), 2);
    assert_int_equal(sh[0], -1);
    assert_int_equal(sh[1], 6);
    onnx_model_free(m);
    mb_free(&b);
}

static void test_split_squeeze_unsqueeze(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[3] = {-1, 6, 1}, two[1] = {2}, one[1] = {1};
    int64_t sizes[2] = {2, 4}, ax2 = 2, ax1 = 1;
    mb_input(&b, "x", 3, xd);
    mb_init_i64(&b, "sizes", 1, two, sizes);
    mb_init_i64(&b, "ax2", 1, one, &ax2);
    mb_init_i64(&b, "ax1", 1, one, &ax1);
    Onnx__NodeProto *sp = mb_node(&b, "Split", "split", "x sizes", "a c");
    mb_attr_int(&b, sp, "axis", 1);
    mb_node(&b, "Squeeze", "sq", "a ax2", "a2");
    mb_node(&b, "Unsqueeze", "usq", "a2 ax1", "y1");
    mb_output(&b, "y1");
    mb_output(&b, "c");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(count_op(g, "Slice"), 2);
    assert_int_equal(count_op(g, "Reshape"), 2);
    int64_t v[8];
    const struct graph_node *s2 = &g->nodes[1];
    assert_int_equal(s2->op, GRAPH_OP_SLICE);
    assert_int_equal(graph_attr_ints(s2, "starts", v, 8), 1);
    assert_int_equal(v[0], 2);
    assert_int_equal(graph_attr_ints(s2, "ends", v, 8), 1);
    assert_int_equal(v[0], 6);
    /* Squeeze: [N,2,1] -> [N,2] as Reshape [0, 2]; Unsqueeze -> [N,1,2] as [0, 1, 2] */
    assert_int_equal(graph_attr_ints(&g->nodes[2], "shape", v, 8), 2);
    assert_int_equal(v[0], 0);
    assert_int_equal(v[1], 2);
    assert_int_equal(graph_attr_ints(&g->nodes[3], "shape", v, 8), 3);
    assert_int_equal(v[0], 0);
    assert_int_equal(v[1], 1);
    assert_int_equal(v[2], 2);
    assert_int_equal(g->noutputs, 2);
    assert_int_equal(g->outputs[1].dims[1], 4);
    onnx_model_free(m);
    mb_free(&b);
}

/* Sub(c, x): the constant comes first, so it is a Constant node; Add(c, x)
 * is commutative: the constant becomes a parameter after x. */
static void test_constant_first_operands(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 3}, three[1] = {3};
    float c[3] = {1, 2, 3};
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "c", 1, three, c);
    mb_node(&b, "Add", "add", "c x", "t");
    mb_node(&b, "Sub", "sub", "c t", "y");
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    int rc = mb_import(&b, NULL, 0, &m, err, sizeof err);
    if (graph_op_from_name("Constant") == GRAPH_OP_INVALID) {
        /* this build has no Constant op yet: the Sub is refused clearly */
        assert_int_equal(rc, PPS_EUNSUPPORTED);
        assert_non_null(strstr(err, "Constant"));
        mb_free(&b);
        return;
    }
    assert_int_equal(rc, 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 3);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_ADD);
    assert_int_equal(g->nodes[0].ninputs, 1);
    assert_int_equal(g->nodes[0].nparams, 1);
    assert_string_equal(graph_op_name(g->nodes[1].op), "Constant");
    assert_int_equal(g->nodes[1].ninputs, 0);
    assert_int_equal(g->nodes[1].params[0], g->nodes[0].params[0]); /* one parameter for c */
    assert_int_equal(g->nodes[2].op, GRAPH_OP_SUB);
    assert_int_equal(g->nodes[2].ninputs, 2);
    assert_int_equal(g->nodes[2].inputs[0], graph_node_output(g, 1)); /* c first */
    assert_int_equal(g->nodes[2].inputs[1], graph_node_output(g, 0));
    assert_int_equal(g->nparams, 1);
    onnx_model_free(m);
    mb_free(&b);
}

/* A Concat of 20 operands (more than a node takes) becomes a chain of 8,
 * then the previous result and 7, then it and the last 5. */
static void test_concat_of_many_operands(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 13);
    int64_t xd[2] = {-1, 2};
    mb_input(&b, "x", 2, xd);
    mb_node(&b, "Relu", "r", "x", "y");
    char ins[256] = "";
    for (int i = 0; i < 20; i++)
        strcat(ins, i % 2 ? "y " : "x ");
    ins[strlen(ins) - 1] = '\0';
    Onnx__NodeProto *cat = mb_node(&b, "Concat", "cat", ins, "z");
    mb_attr_int(&b, cat, "axis", 1);
    mb_output(&b, "z");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(count_op(g, "Concat"), 3);
    const struct graph_node *c0 = &g->nodes[1], *c1 = &g->nodes[2], *c2 = &g->nodes[3];
    assert_int_equal(c0->ninputs, 8);
    assert_int_equal(c1->ninputs, 8);
    assert_int_equal(c2->ninputs, 6);
    assert_int_equal(c1->inputs[0], graph_node_output(g, 1));
    assert_int_equal(c2->inputs[0], graph_node_output(g, 2));
    assert_int_equal(c0->inputs[0], g->inputs[0].value);
    assert_int_equal(c0->inputs[1], graph_node_output(g, 0));
    assert_int_equal(graph_attr_int(c0, "axis", -7), 1);
    assert_int_equal(graph_attr_int(c2, "axis", -7), 1);
    assert_int_equal(g->outputs[0].dims[1], 40);
    onnx_model_free(m);
    mb_free(&b);
}

static void test_gemm_alpha_beta(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 2}, wd[2] = {3, 2}, bd[1] = {3};
    float w[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {1, 1, 1};
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "w", 2, wd, w);
    mb_init_f(&b, "b", 1, bd, bias);
    Onnx__NodeProto *n = mb_node(&b, "Gemm", "fc", "x w b", "y");
    mb_attr_int(&b, n, "transB", 1);
    mb_attr_float(&b, n, "alpha", 2.0f);
    mb_attr_float(&b, n, "beta", 0.5f);
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(g->nodes[0].nparams, 2);
    assert_int_equal(graph_attr_int(&g->nodes[0], "transB", 0), 1);
    assert_null(graph_attr_find(&g->nodes[0], "alpha"));
    assert_true(param_elem(m, g->nodes[0].params[0], 5) == 12.0f);
    assert_true(param_elem(m, g->nodes[0].params[1], 2) == 0.5f);
    onnx_model_free(m);
    mb_free(&b);
}

/* Exact GELU as torch exports it: Mul(Mul(x, Add(Erf(Div(x, sqrt2)), 1)), 0.5) */
static void test_gelu_pattern(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[2] = {-1, 8};
    float s2 = 1.4142135f, one = 1.0f, half = 0.5f;
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "s2", 0, NULL, &s2);
    mb_init_f(&b, "one", 0, NULL, &one);
    mb_init_f(&b, "half", 0, NULL, &half);
    mb_node(&b, "Div", "div", "x s2", "d");
    mb_node(&b, "Erf", "erf", "d", "e");
    mb_node(&b, "Add", "add", "e one", "a");
    mb_node(&b, "Mul", "mul", "x a", "m");
    mb_node(&b, "Mul", "mul2", "m half", "y");
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_GELU);
    assert_int_equal(g->nodes[0].inputs[0], 0);
    assert_int_equal(g->nparams, 0);
    onnx_model_free(m);
    mb_free(&b);

    /* the other order (0.5 * x first) and a second reader of an inner value: no rewrite there */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "s2", 0, NULL, &s2);
    mb_init_f(&b, "one", 0, NULL, &one);
    mb_init_f(&b, "half", 0, NULL, &half);
    mb_node(&b, "Mul", "xh", "x half", "h");
    mb_node(&b, "Div", "div", "x s2", "d");
    mb_node(&b, "Erf", "erf", "d", "e");
    mb_node(&b, "Add", "add", "e one", "a");
    mb_node(&b, "Mul", "mul", "h a", "y");
    mb_output(&b, "y");
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    g = onnx_model_graph(m);
    assert_int_equal(count_op(g, "Gelu"), 1);
    assert_int_equal(count_op(g, "Erf"), 0);
    onnx_model_free(m);
    mb_free(&b);

    mb_init(&b, 17);
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "s2", 0, NULL, &s2);
    mb_init_f(&b, "one", 0, NULL, &one);
    mb_init_f(&b, "half", 0, NULL, &half);
    mb_node(&b, "Div", "div", "x s2", "d");
    mb_node(&b, "Erf", "erf", "d", "e");
    mb_node(&b, "Add", "add", "e one", "a");
    mb_node(&b, "Mul", "mul", "x a", "m");
    mb_node(&b, "Mul", "mul2", "m half", "y");
    mb_output(&b, "y");
    mb_output(&b, "e"); /* the Erf output is read outside the pattern */
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    g = onnx_model_graph(m);
    assert_int_equal(count_op(g, "Gelu"), 0);
    assert_int_equal(count_op(g, "Erf"), 1);
    onnx_model_free(m);
    mb_free(&b);
    /* tanh form: 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * Pow(x, 3)))) */
    mb_init(&b, 17);
    float k0 = 0.7978845608f, k1 = 0.044715f, three = 3.0f;
    mb_input(&b, "x", 2, xd);
    mb_init_f(&b, "k0", 0, NULL, &k0);
    mb_init_f(&b, "k1", 0, NULL, &k1);
    mb_init_f(&b, "three", 0, NULL, &three);
    mb_init_f(&b, "one", 0, NULL, &one);
    mb_init_f(&b, "half", 0, NULL, &half);
    mb_node(&b, "Pow", "cube", "x three", "x3");
    mb_node(&b, "Mul", "m1", "k1 x3", "t");
    mb_node(&b, "Add", "a1", "x t", "u");
    mb_node(&b, "Mul", "m2", "k0 u", "v");
    mb_node(&b, "Tanh", "tanh", "v", "th");
    mb_node(&b, "Add", "a2", "one th", "a");
    mb_node(&b, "Mul", "m3", "x a", "m");
    mb_node(&b, "Mul", "m4", "half m", "y");
    mb_output(&b, "y");
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_GELU);
    assert_int_equal(graph_attr_int(&g->nodes[0], "approximate", 0), 1);
    onnx_model_free(m);
    mb_free(&b);
}

/* Decomposed LayerNorm over the last axis -> one LayerNormalization */
static void test_layernorm_pattern(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[3] = {-1, 5, 4}, four[1] = {4}, one_d[1] = {1}, axm1 = -1;
    float two = 2.0f, eps = 1e-5f, gamma[4] = {1, 2, 3, 4}, beta[4] = {0, 1, 0, 1};
    mb_input(&b, "x", 3, xd);
    mb_init_f(&b, "two", 0, NULL, &two);
    mb_init_f(&b, "eps", 0, NULL, &eps);
    mb_init_f(&b, "gamma", 1, four, gamma);
    mb_init_f(&b, "beta", 1, four, beta);
    mb_init_i64(&b, "axes", 1, one_d, &axm1);
    mb_node(&b, "ReduceMean", "mean", "x axes", "mu");
    mb_node(&b, "Sub", "sub", "x mu", "d");
    mb_node(&b, "Pow", "pow", "d two", "d2");
    mb_node(&b, "ReduceMean", "var", "d2 axes", "v");
    mb_node(&b, "Add", "addeps", "v eps", "ve");
    mb_node(&b, "Sqrt", "sqrt", "ve", "sd");
    mb_node(&b, "Div", "div", "d sd", "n");
    mb_node(&b, "Mul", "scale", "n gamma", "ns");
    mb_node(&b, "Add", "shift", "ns beta", "y");
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    struct onnx_import_options o;
    onnx_import_options_default(&o);
    o.allow_unsupported = 1; /* ReduceMean may be missing from this build; the rewrite needs none */
    assert_int_equal(onnx_import_memory(buf, len, NULL, &o, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_LAYERNORM);
    assert_int_equal(g->nodes[0].nparams, 2);
    assert_true(graph_attr_float(&g->nodes[0], "epsilon", 0) == 1e-5f);
    assert_int_equal(graph_attr_int(&g->nodes[0], "axis", 0), -1);
    assert_true(param_elem(m, g->nodes[0].params[0], 3) == 4.0f);
    assert_true(param_elem(m, g->nodes[0].params[1], 1) == 1.0f);
    onnx_model_free(m);
    mb_free(&b);
}

/* torch's nn.Linear export: Add(b, MatMul(x, W)) -> Gemm(x; W, b) */
static void test_linear_pattern(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    int64_t xd[3] = {-1, 3, 4}, wd[2] = {4, 5}, bd[1] = {5};
    float w[20], bias[5] = {1, 2, 3, 4, 5};
    for (int i = 0; i < 20; i++) w[i] = (float)i;
    mb_input(&b, "x", 3, xd);
    mb_init_f(&b, "W", 2, wd, w);
    mb_init_f(&b, "bias", 1, bd, bias);
    mb_node(&b, "MatMul", "mm", "x W", "m");
    mb_node(&b, "Add", "add", "bias m", "y");
    mb_output(&b, "y");
    struct onnx_model *m = NULL;
    char err[512];
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    const struct graph *g = onnx_model_graph(m);
    assert_int_equal(g->nnodes, 1);
    assert_int_equal(g->nodes[0].op, GRAPH_OP_GEMM);
    assert_int_equal(g->nodes[0].nparams, 2);
    assert_int_equal(graph_attr_int(&g->nodes[0], "transB", 0), 0);
    assert_int_equal(g->outputs[0].ndims, 3);
    assert_int_equal(g->outputs[0].dims[2], 5);
    onnx_model_free(m);
    mb_free(&b);

    /* the MatMul's result also read elsewhere: no rewrite */
    mb_init(&b, 17);
    mb_input(&b, "x", 3, xd);
    mb_init_f(&b, "W", 2, wd, w);
    mb_init_f(&b, "bias", 1, bd, bias);
    mb_node(&b, "MatMul", "mm", "x W", "m");
    mb_node(&b, "Add", "add", "bias m", "y");
    mb_output(&b, "y");
    mb_output(&b, "m");
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), 0);
    g = onnx_model_graph(m);
    assert_int_equal(count_op(g, "MatMul"), 1);
    assert_int_equal(count_op(g, "Add"), 1);
    assert_int_equal(count_op(g, "Gemm"), 0);
    onnx_model_free(m);
    mb_free(&b);
}

/* ---- external data ---- */

static char tmpdir[256];

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void build_external(struct mb *b, const char *location, const char *offset)
{
    mb_init(b, 17);
    int64_t xd[2] = {-1, 4}, four[1] = {4};
    mb_input(b, "x", 2, xd);
    Onnx__TensorProto *t = mb_tensor(b, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, 1, four);
    t->has_data_location = 1;
    t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    t->n_external_data = offset ? 2 : 1;
    t->external_data = mb_alloc(b, 2 * sizeof *t->external_data);
    const char *keys[2] = {"location", "offset"}, *vals[2] = {location, offset};
    for (size_t i = 0; i < t->n_external_data; i++) {
        Onnx__StringStringEntryProto e = ONNX__STRING_STRING_ENTRY_PROTO__INIT;
        t->external_data[i] = mb_alloc(b, sizeof e);
        *t->external_data[i] = e;
        t->external_data[i]->key = mb_str(b, keys[i]);
        t->external_data[i]->value = mb_str(b, vals[i]);
    }
    b->inits[b->graph.n_initializer++] = t;
    mb_node(b, "Mul", "mul", "x w", "y");
    mb_output(b, "y");
}

static void test_external_data(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_onnx_import.%d", (int)getpid());
    char sub[300], outside[300], path[400];
    snprintf(sub, sizeof sub, "%s/model", tmpdir);
    snprintf(outside, sizeof outside, "%s/secret.bin", tmpdir);
    assert_int_equal(mkdir(tmpdir, 0700), 0);
    assert_int_equal(mkdir(sub, 0700), 0);
    float data[6] = {9, 9, 1.5f, 2.5f, 3.5f, 4.5f};
    snprintf(path, sizeof path, "%s/weights.bin", sub);
    write_file(path, data, sizeof data);
    write_file(outside, data, sizeof data);
    snprintf(path, sizeof path, "%s/escape.bin", sub);
    assert_int_equal(symlink(outside, path), 0);

    struct mb b;
    struct onnx_model *m = NULL;
    char err[1024];
    build_external(&b, "weights.bin", "8");
    assert_int_equal(mb_import(&b, sub, 0, &m, err, sizeof err), 0);
    assert_true(param_elem(m, 0, 0) == 1.5f);
    assert_true(param_elem(m, 0, 3) == 4.5f);
    onnx_model_free(m);
    /* no folder given: refused */
    assert_int_equal(mb_import(&b, NULL, 0, &m, err, sizeof err), PPS_EUNSUPPORTED);
    assert_non_null(strstr(err, "external data"));
    mb_free(&b);

    /* beyond the end of the file */
    build_external(&b, "weights.bin", "12");
    assert_int_equal(mb_import(&b, sub, 0, &m, err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "beyond the end"));
    mb_free(&b);

    const char *bad[3] = {"../secret.bin", "/etc/passwd", "escape.bin"};
    for (int i = 0; i < 3; i++) {
        build_external(&b, bad[i], NULL);
        int rc = mb_import(&b, sub, 0, &m, err, sizeof err);
        assert_int_equal(rc, PPS_EINVAL);
        assert_null(m);
        assert_true(strstr(err, "inside the model's folder") || strstr(err, "outside the model's folder"));
        mb_free(&b);
    }
    build_external(&b, "missing.bin", NULL);
    assert_int_equal(mb_import(&b, sub, 0, &m, err, sizeof err), PPS_ENOTFOUND);
    mb_free(&b);

    unlink(path);
    snprintf(path, sizeof path, "%s/weights.bin", sub);
    unlink(path);
    unlink(outside);
    rmdir(sub);
    rmdir(tmpdir);
}

static void test_rank0_input_and_no_graph(void **state)
{
    (void)state;
    struct mb b;
    mb_init(&b, 17);
    mb_input(&b, "x", 0, NULL);
    mb_node(&b, "Relu", "r", "x", "y");
    mb_output(&b, "y");
    expect_fail(&b, PPS_EUNSUPPORTED, "input 'x' is a scalar");
    b.model.graph = NULL;
    expect_fail(&b, PPS_EINVAL, "no graph");
    mb_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_relu),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_cycle),
        cmocka_unit_test(test_dangling_and_missing_initializer),
        cmocka_unit_test(test_duplicate_names),
        cmocka_unit_test(test_absurd_dims),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_reshape_from_shape_symbolic_batch),
        cmocka_unit_test(test_split_squeeze_unsqueeze),
        cmocka_unit_test(test_constant_first_operands),
        cmocka_unit_test(test_concat_of_many_operands),
        cmocka_unit_test(test_gemm_alpha_beta),
        cmocka_unit_test(test_gelu_pattern),
        cmocka_unit_test(test_layernorm_pattern),
        cmocka_unit_test(test_linear_pattern),
        cmocka_unit_test(test_external_data),
        cmocka_unit_test(test_rank0_input_and_no_graph),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
