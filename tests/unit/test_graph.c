/* Unit tests for the model graph (builders, attributes, op names,
 * graph_validate) and the seed's parameter batching rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/err.h"
#include "model/batching.h"
#include "model/graph.h"

static void test_op_names(void **state)
{
    (void)state;
    assert_string_equal(graph_op_name(GRAPH_OP_CONV), "Conv");
    assert_string_equal(graph_op_name(GRAPH_OP_LAYERNORM), "LayerNormalization");
    assert_string_equal(graph_op_name(GRAPH_OP_INVALID), "?");
    assert_string_equal(graph_op_name((enum graph_op)999), "?");
    for (int i = 1; i < GRAPH_OP_COUNT; i++)
        assert_int_equal(graph_op_from_name(graph_op_name((enum graph_op)i)), i);
    assert_int_equal(graph_op_from_name("Bogus"), GRAPH_OP_INVALID);
    assert_int_equal(graph_op_from_name(NULL), GRAPH_OP_INVALID);
    assert_string_equal(graph_dtype_name(GRAPH_I64), "int64");
}

/* input -> Conv(w,b) -> Relu -> Gemm(w2,b2) */
static void build_small(struct graph *g)
{
    graph_init(g, "small");
    int64_t in_dims[4] = {-1, 3, 8, 8};
    int32_t x = graph_add_input(g, "input", GRAPH_F32, 4, in_dims);
    assert_int_equal(x, 0);
    int64_t wd[4] = {4, 3, 3, 3}, bd[1] = {4};
    int32_t cp[2] = {graph_add_param(g, "conv.weight", 4, wd), graph_add_param(g, "conv.bias", 1, bd)};
    int32_t v = graph_add_node(g, GRAPH_OP_CONV, "conv", 1, &x, 2, cp);
    int64_t k[2] = {3, 3}, pads[4] = {1, 1, 1, 1};
    graph_set_ints(g, "kernel_shape", 2, k);
    graph_set_ints(g, "pads", 4, pads);
    graph_set_int(g, "group", 1);
    v = graph_add_node(g, GRAPH_OP_RELU, "relu", 1, &v, 0, NULL);
    int64_t fl_in = 1;
    v = graph_add_node(g, GRAPH_OP_FLATTEN, "flatten", 1, &v, 0, NULL);
    graph_set_int(g, "axis", fl_in);
    int64_t w2d[2] = {10, 256}, b2d[1] = {10};
    int32_t gp[2] = {graph_add_param(g, "fc.weight", 2, w2d), graph_add_param(g, "fc.bias", 1, b2d)};
    v = graph_add_node(g, GRAPH_OP_GEMM, "fc", 1, &v, 2, gp);
    graph_set_int(g, "transB", 1);
    graph_add_output(g, "logits", v);
    int64_t od[2] = {-1, 10};
    graph_set_output_dims(g, 0, 2, od);
}

static void test_build_and_attrs(void **state)
{
    (void)state;
    struct graph g;
    build_small(&g);
    assert_int_equal(g.nnodes, 4);
    assert_int_equal(g.nparams, 4);
    assert_int_equal(graph_nvalues(&g), 5);
    assert_int_equal(g.outputs[0].value, 4);
    const struct graph_node *conv = &g.nodes[0];
    int64_t out[8];
    assert_int_equal(graph_attr_ints(conv, "pads", out, 8), 4);
    assert_int_equal(out[3], 1);
    assert_int_equal(graph_attr_ints(conv, "strides", out, 8), 0);
    assert_int_equal(graph_attr_int(conv, "group", 7), 1);
    assert_int_equal(graph_attr_int(conv, "missing", 7), 7);
    assert_true(graph_attr_float(&g.nodes[3], "alpha", 1.0f) == 1.0f);
    assert_non_null(graph_attr_find(&g.nodes[3], "transB"));
    assert_null(graph_attr_find(&g.nodes[3], "transA"));
    /* Setting an attribute twice replaces it. */
    graph_set_int(&g, "transB", 0);
    assert_int_equal(g.nodes[3].nattrs, 1);
    assert_int_equal(graph_attr_int(&g.nodes[3], "transB", 5), 0);
    graph_set_float(&g, "alpha", 0.5f);
    assert_true(graph_attr_float(&g.nodes[3], "alpha", 1.0f) == 0.5f);
    assert_int_equal(g.params[0].nbytes, 4 * 3 * 3 * 3 * 4);
    assert_int_equal(graph_param_padded(&g.params[0]), 512);
    assert_int_equal(graph_param_padded(&g.params[1]), 512);
    assert_int_equal(graph_param_padded(&g.params[2]), 10240);
    assert_int_equal(graph_find_param(&g, "fc.bias"), 3);
    assert_int_equal(graph_find_param(&g, "nope"), -1);
    /* A long name is truncated, not overflowed. */
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    int64_t d1 = 1;
    int32_t p = graph_add_param(&g, longname, 1, &d1);
    assert_int_equal(strlen(g.params[p].name), GRAPH_NAME_MAX);
    graph_free(&g);
}

static void test_validate(void **state)
{
    (void)state;
    struct graph g;
    char err[256];
    build_small(&g);
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);
    /* a fixed batch (graph_set_fixed_batch) is valid; a positive output dims[0] is not */
    graph_set_fixed_batch(&g, 5);
    assert_int_equal(graph_fixed_batch(&g), 5);
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);
    g.inputs[0].dims[0] = 0;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.inputs[0].dims[0] = -1;
    assert_int_equal(graph_fixed_batch(&g), 0);
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);
    assert_int_equal(batching_apply(&g, BATCHING_DEFAULT_MAX), 0);
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);

    /* Each corruption is caught. */
    g.nodes[1].inputs[0] = 2; /* refers to its own output */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    assert_true(strlen(err) > 0);
    g.nodes[1].inputs[0] = 1;
    g.nodes[2].wait_batch = -1; /* lower than the node before */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.nodes[2].wait_batch = 0;
    g.params[2].offset = 100;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.params[2].offset = 512; /* overlaps conv.bias at 512 */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.params[2].offset = 1024;
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);
    g.params[3].dims[0] = 0;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.params[3].dims[0] = 10;
    g.params[3].nbytes = 44;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.params[3].nbytes = 40;
    g.nodes[0].op = (enum graph_op)GRAPH_OP_COUNT;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.nodes[0].op = GRAPH_OP_CONV;
    g.nodes[0].params[0] = 4;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.nodes[0].params[0] = 0;
    g.nodes[0].attrs[0].nints = GRAPH_MAX_ATTR_INTS + 1;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.nodes[0].attrs[0].nints = 2;
    memset(g.nodes[0].name, 'a', sizeof g.nodes[0].name); /* no terminator */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    strcpy(g.nodes[0].name, "conv");
    g.outputs[0].value = 5;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.outputs[0].value = 4;
    g.inputs[0].dims[0] = GRAPH_MAX_FIXED_BATCH + 1; /* batch: -1 (dynamic) or a fixed size in range */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.inputs[0].dims[0] = -1;
    g.batches[0].nbytes = 1024; /* too small for its params */
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.batches[0].nbytes = 1024 + 10240 + 512;
    assert_int_equal(graph_validate(&g, err, sizeof err), 0);
    g.params[1].batch = -1;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.params[1].batch = 0;
    g.ninputs = 0;
    assert_int_equal(graph_validate(&g, err, sizeof err), PPS_ECORRUPT);
    g.ninputs = 1;
    assert_int_equal(graph_validate(&g, NULL, 0), 0);
    graph_free(&g);
}

static void test_batching_default_one_batch(void **state)
{
    (void)state;
    struct graph g;
    build_small(&g);
    assert_int_equal(batching_apply(&g, BATCHING_DEFAULT_MAX), 0);
    assert_int_equal(g.nbatches, 1);
    assert_int_equal(g.batches[0].nbytes, 512 + 512 + 10240 + 512);
    assert_int_equal(g.batches[0].first_param, 0);
    assert_int_equal(g.batches[0].nparams, 4);
    assert_int_equal(g.params[3].offset, 512 + 512 + 10240);
    for (int i = 0; i < g.nnodes; i++) assert_int_equal(g.nodes[i].wait_batch, 0);
    assert_true(graph_total_padded(&g) == g.batches[0].nbytes);
    graph_free(&g);
}

static void test_batching_zero_is_one_node_per_batch(void **state)
{
    (void)state;
    struct graph g;
    build_small(&g);
    assert_int_equal(batching_apply(&g, 0), 0);
    assert_int_equal(g.nbatches, 2);
    assert_int_equal(g.params[0].batch, 0);
    assert_int_equal(g.params[1].batch, 0);
    assert_int_equal(g.params[1].offset, 512);
    assert_int_equal(g.params[2].batch, 1);
    assert_int_equal(g.params[2].offset, 0);
    assert_int_equal(g.nodes[0].wait_batch, 0);
    assert_int_equal(g.nodes[1].wait_batch, 0); /* no params: inherits */
    assert_int_equal(g.nodes[2].wait_batch, 0);
    assert_int_equal(g.nodes[3].wait_batch, 1);
    assert_int_equal(g.max_batch_size, 0);
    assert_int_equal(graph_validate(&g, NULL, 0), 0);
    /* Re-batching replaces the earlier result. */
    assert_int_equal(batching_apply(&g, UINT64_MAX), 0);
    assert_int_equal(g.nbatches, 1);
    assert_int_equal(graph_validate(&g, NULL, 0), 0);
    graph_free(&g);
}

/* Limits exactly at and just below a node's padded size. */
static void test_batching_limit_boundaries(void **state)
{
    (void)state;
    struct graph g;
    build_small(&g); /* conv: 1024 padded bytes, fc: 10752 */
    assert_int_equal(batching_apply(&g, 1024 + 10752), 0);
    assert_int_equal(g.nbatches, 1);
    assert_int_equal(batching_apply(&g, 1024 + 10752 - 1), 0);
    assert_int_equal(g.nbatches, 2);
    /* A limit smaller than any node: still one node per batch, never empty. */
    assert_int_equal(batching_apply(&g, 1), 0);
    assert_int_equal(g.nbatches, 2);
    assert_int_equal(g.batches[0].nbytes, 1024);
    assert_int_equal(g.batches[1].nbytes, 10752);
    assert_int_equal(graph_validate(&g, NULL, 0), 0);
    graph_free(&g);
}

/* Nodes before the first parameter wait for nothing; a shared (tied)
 * parameter is placed once and never lowers wait_batch; params added out of
 * use order are renumbered. */
static void test_batching_shared_and_reordered(void **state)
{
    (void)state;
    struct graph g;
    graph_init(&g, "tied");
    int64_t d[2] = {-1, 4};
    int32_t x = graph_add_input(&g, "ids", GRAPH_I64, 2, d);
    int64_t wd[2] = {1000, 64}, ld[1] = {64};
    int32_t late = graph_add_param(&g, "ln.weight", 1, ld); /* added first, used second */
    int32_t wte = graph_add_param(&g, "wte.weight", 2, wd);
    int32_t v = graph_add_node(&g, GRAPH_OP_IDENTITY, "id", 1, &x, 0, NULL);
    v = graph_add_node(&g, GRAPH_OP_GATHER, "embed", 1, &v, 1, &wte);
    graph_set_int(&g, "axis", 0);
    int32_t lp[2] = {late, late};
    v = graph_add_node(&g, GRAPH_OP_MUL, "scale", 1, &v, 2, lp); /* same param twice */
    v = graph_add_node(&g, GRAPH_OP_GEMM, "lm_head", 1, &v, 1, &wte);
    graph_set_int(&g, "transB", 1);
    graph_add_output(&g, "logits", v);
    assert_int_equal(batching_apply(&g, 0), 0);
    assert_string_equal(g.params[0].name, "wte.weight");
    assert_string_equal(g.params[1].name, "ln.weight");
    assert_int_equal(g.nodes[1].params[0], 0);
    assert_int_equal(g.nodes[2].params[0], 1);
    assert_int_equal(g.nodes[3].params[0], 0);
    assert_int_equal(g.nbatches, 2);
    assert_int_equal(g.nodes[0].wait_batch, -1);
    assert_int_equal(g.nodes[1].wait_batch, 0);
    assert_int_equal(g.nodes[2].wait_batch, 1);
    assert_int_equal(g.nodes[3].wait_batch, 1); /* its own param is in batch 0 */
    assert_int_equal(g.batches[1].nbytes, 512);
    assert_int_equal(graph_validate(&g, NULL, 0), 0);

    /* An unused parameter cannot be placed. */
    int64_t one = 1;
    graph_add_param(&g, "unused", 1, &one);
    assert_int_equal(batching_apply(&g, 0), PPS_EINVAL);
    graph_free(&g);
}

/* Many small nodes: greedy packing, batches never exceed the limit unless a
 * single node does, and every batch is non-empty. */
static void test_batching_greedy_many(void **state)
{
    (void)state;
    struct graph g;
    graph_init(&g, "chain");
    int64_t d[2] = {-1, 8};
    int32_t v = graph_add_input(&g, "x", GRAPH_F32, 2, d);
    for (int i = 0; i < 50; i++) {
        int64_t pd[1] = {(int64_t)(1 + (i * 37) % 700)};
        int32_t p = graph_add_param(&g, "p", 1, pd);
        v = graph_add_node(&g, GRAPH_OP_ADD, "add", 1, &v, 1, &p);
    }
    graph_add_output(&g, "y", v);
    const uint64_t limit = 4096;
    assert_int_equal(batching_apply(&g, limit), 0);
    assert_int_equal(graph_validate(&g, NULL, 0), 0);
    uint64_t sum = 0;
    for (int b = 0; b < g.nbatches; b++) {
        assert_true(g.batches[b].nparams >= 1);
        if (g.batches[b].nparams > 1) assert_true(g.batches[b].nbytes <= limit);
        /* Greedy: the next batch's first node would not have fit here. */
        if (b + 1 < g.nbatches) {
            const struct graph_param *first = &g.params[g.batches[b + 1].first_param];
            assert_true(g.batches[b].nbytes + graph_param_padded(first) > limit);
        }
        sum += g.batches[b].nbytes;
    }
    assert_true(sum == graph_total_padded(&g));
    graph_free(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_names),
        cmocka_unit_test(test_build_and_attrs),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_batching_default_one_batch),
        cmocka_unit_test(test_batching_zero_is_one_node_per_batch),
        cmocka_unit_test(test_batching_limit_boundaries),
        cmocka_unit_test(test_batching_shared_and_reordered),
        cmocka_unit_test(test_batching_greedy_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
