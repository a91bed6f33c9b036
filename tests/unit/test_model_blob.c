/* Unit tests for the METADATA blob: exact roundtrip of every zoo model
 * (batched and unbatched), clean failure on truncation at every offset, and
 * random corruption (with the checksum recomputed so the parser proper is
 * exercised) that must never crash, leak or yield an invalid graph. Run
 * under ASan+UBSan in the sanitizer build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/buf.h"
#include "common/err.h"
#include "model/batching.h"
#include "model/model_blob.h"
#include "model/zoo.h"

static void build(struct zoo_model *m, const char *name, uint64_t max_batch)
{
    char err[256];
    assert_int_equal(zoo_build(m, name, NULL, err, sizeof err), 0);
    assert_int_equal(batching_apply(&m->g, max_batch), 0);
}

static void assert_graphs_equal(const struct graph *a, const struct graph *b)
{
    assert_string_equal(a->name, b->name);
    assert_true(a->max_batch_size == b->max_batch_size);
    assert_int_equal(a->ninputs, b->ninputs);
    assert_int_equal(a->noutputs, b->noutputs);
    for (int i = 0; i < a->ninputs; i++) {
        assert_string_equal(a->inputs[i].name, b->inputs[i].name);
        assert_int_equal(a->inputs[i].dtype, b->inputs[i].dtype);
        assert_int_equal(a->inputs[i].ndims, b->inputs[i].ndims);
        assert_memory_equal(a->inputs[i].dims, b->inputs[i].dims, sizeof(int64_t) * (size_t)a->inputs[i].ndims);
        assert_int_equal(a->inputs[i].optional, b->inputs[i].optional);
        assert_true(a->inputs[i].fill == b->inputs[i].fill);
    }
    for (int i = 0; i < a->noutputs; i++) {
        assert_string_equal(a->outputs[i].name, b->outputs[i].name);
        assert_int_equal(a->outputs[i].value, b->outputs[i].value);
        assert_int_equal(a->outputs[i].ndims, b->outputs[i].ndims);
    }
    assert_int_equal(a->nparams, b->nparams);
    for (int i = 0; i < a->nparams; i++) {
        const struct graph_param *p = &a->params[i], *q = &b->params[i];
        assert_string_equal(p->name, q->name);
        assert_int_equal(p->ndims, q->ndims);
        assert_memory_equal(p->dims, q->dims, sizeof(int64_t) * (size_t)p->ndims);
        assert_true(p->nbytes == q->nbytes && p->offset == q->offset);
        assert_int_equal(p->batch, q->batch);
        assert_memory_equal(&p->layout, &q->layout, sizeof p->layout);
    }
    assert_string_equal(a->target, b->target);
    assert_int_equal(a->nbatches, b->nbatches);
    for (int i = 0; i < a->nbatches; i++) {
        assert_true(a->batches[i].nbytes == b->batches[i].nbytes);
        assert_int_equal(a->batches[i].first_param, b->batches[i].first_param);
        assert_int_equal(a->batches[i].nparams, b->batches[i].nparams);
    }
    assert_int_equal(a->nnodes, b->nnodes);
    for (int i = 0; i < a->nnodes; i++) {
        const struct graph_node *n = &a->nodes[i], *m = &b->nodes[i];
        assert_int_equal(n->op, m->op);
        assert_string_equal(n->name, m->name);
        assert_int_equal(n->ninputs, m->ninputs);
        assert_memory_equal(n->inputs, m->inputs, sizeof(int32_t) * (size_t)n->ninputs);
        assert_int_equal(n->nparams, m->nparams);
        assert_memory_equal(n->params, m->params, sizeof(int32_t) * (size_t)n->nparams);
        assert_int_equal(n->wait_batch, m->wait_batch);
        assert_int_equal(n->nattrs, m->nattrs);
        for (int k = 0; k < n->nattrs; k++) {
            const struct graph_attr *x = &n->attrs[k], *y = &m->attrs[k];
            assert_string_equal(x->name, y->name);
            assert_int_equal(x->kind, y->kind);
            if (x->kind == GRAPH_ATTR_INT) assert_true(x->i == y->i);
            if (x->kind == GRAPH_ATTR_FLOAT) assert_memory_equal(&x->f, &y->f, sizeof x->f);
            if (x->kind == GRAPH_ATTR_INTS) {
                assert_int_equal(x->nints, y->nints);
                assert_memory_equal(x->ints, y->ints, sizeof(int64_t) * (size_t)x->nints);
            }
        }
    }
}

static void test_roundtrip_every_model(void **state)
{
    (void)state;
    static const uint64_t limits[3] = {32768000, 0, UINT64_MAX};
    for (int i = 0; i < zoo_count(); i++)
        for (int l = 0; l < 3; l++) {
            struct zoo_model m;
            build(&m, zoo_name(i), limits[l]);
            struct wbuf wb, wb2;
            wbuf_init(&wb);
            wbuf_init(&wb2);
            assert_int_equal(model_blob_encode(&m.g, &wb), 0);
            struct graph g;
            char err[256];
            int rc = model_blob_decode(&g, wb.data, wb.len, err, sizeof err);
            if (rc) print_error("%s limit %d: %s\n", zoo_name(i), l, err);
            assert_int_equal(rc, 0);
            assert_graphs_equal(&m.g, &g);
            assert_int_equal(model_blob_encode(&g, &wb2), 0);
            assert_int_equal(wb.len, wb2.len);
            assert_memory_equal(wb.data, wb2.data, wb.len);
            graph_free(&g);
            wbuf_free(&wb);
            wbuf_free(&wb2);
            zoo_free(&m);
        }
}

static void test_unbatched_and_invalid(void **state)
{
    (void)state;
    struct zoo_model m;
    char err[256];
    assert_int_equal(zoo_build(&m, "gpt2", NULL, err, sizeof err), 0);
    struct wbuf wb;
    wbuf_init(&wb);
    assert_int_equal(model_blob_encode(&m.g, &wb), 0); /* unbatched is fine */
    struct graph g;
    assert_int_equal(model_blob_decode(&g, wb.data, wb.len, err, sizeof err), 0);
    assert_int_equal(g.nbatches, 0);
    assert_graphs_equal(&m.g, &g);
    graph_free(&g);
    /* An invalid graph is refused and the buffer left unchanged. */
    size_t len = wb.len;
    m.g.nodes[3].inputs[0] = 1000000;
    assert_int_equal(model_blob_encode(&m.g, &wb), PPS_EINVAL);
    assert_int_equal(wb.len, len);
    wbuf_free(&wb);
    zoo_free(&m);
}

/* A prepared model's layouts and target travel exactly; a layout that does
 * not describe its param (blocks not dividing the padded dims, another
 * element count) is refused. */
static void test_prepared_layouts(void **state)
{
    (void)state;
    struct zoo_model m;
    char err[256];
    assert_int_equal(zoo_build(&m, "inception_v3", NULL, err, sizeof err), 0);
    const struct graph_param *w = &m.g.params[0]; /* Conv2d_1a_3x3.conv.weight [32, 3, 3, 3] */
    assert_int_equal(w->ndims, 4);
    struct graph_layout l = {.ndims = 4, .dims = {32, 3, 3, 3}, .padded_dims = {32, 8, 3, 3},
                             .strides = {72 * 8, 72, 24, 8}, .nblks = 1, .blks = {8}, .idxs = {1}};
    graph_set_param_layout(&m.g, 0, &l);
    assert_true(m.g.params[0].nbytes == 32 * 8 * 9 * 4);
    snprintf(m.g.target, sizeof m.g.target, "%s", "onednn-test/avx2");
    assert_int_equal(batching_apply(&m.g, 32768000), 0);
    char name[64];
    graph_layout_name(&m.g.params[0].layout, name, sizeof name);
    assert_string_equal(name, "aBcd8b");
    struct wbuf wb;
    wbuf_init(&wb);
    assert_int_equal(model_blob_encode(&m.g, &wb), 0);
    struct graph g;
    int rc = model_blob_decode(&g, wb.data, wb.len, err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_graphs_equal(&m.g, &g);
    graph_free(&g);
    size_t len = wb.len;
    m.g.params[0].layout.padded_dims[1] = 7; /* not a multiple of the block */
    assert_int_equal(model_blob_encode(&m.g, &wb), PPS_EINVAL);
    m.g.params[0].layout.padded_dims[1] = 8;
    m.g.params[0].layout.dims[0] = 16; /* half the elements */
    assert_int_not_equal(graph_validate(&m.g, err, sizeof err), 0);
    assert_non_null(strstr(err, "layout"));
    assert_int_equal(wb.len, len);
    wbuf_free(&wb);
    zoo_free(&m);
}

static void reseal(uint8_t *blob, size_t len)
{
    store_le64(blob + len - 8, XXH3_64bits(blob, len - 8));
}

static void test_header_errors(void **state)
{
    (void)state;
    struct zoo_model m;
    build(&m, "bert_base", 32768000);
    struct wbuf wb;
    wbuf_init(&wb);
    assert_int_equal(model_blob_encode(&m.g, &wb), 0);
    struct graph g;
    char err[256];
    uint8_t *copy = malloc(wb.len);

    memcpy(copy, wb.data, wb.len);
    copy[4] = 2; /* version */
    reseal(copy, wb.len);
    assert_int_equal(model_blob_decode(&g, copy, wb.len, err, sizeof err), PPS_EUNSUPPORTED);
    assert_non_null(strstr(err, "version"));

    /* bert_base has optional inputs: flag bit 0 (bit 1 is a prepared
     * model's); other bits are refused, and so is a blob whose inputs break
     * graph_validate's rules for them. */
    assert_int_equal(copy[6] = wb.data[6], 1);
    memcpy(copy, wb.data, wb.len);
    copy[6] |= 4;
    reseal(copy, wb.len);
    assert_int_equal(model_blob_decode(&g, copy, wb.len, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "flags"));
    m.g.inputs[2].optional = 0; /* a required input after an optional one... */
    struct wbuf wb3;
    wbuf_init(&wb3);
    assert_int_equal(model_blob_encode(&m.g, &wb3), PPS_EINVAL); /* ...is not encoded */
    wbuf_free(&wb3);
    m.g.inputs[2].optional = 1;

    memcpy(copy, wb.data, wb.len);
    copy[0] ^= 1; /* magic */
    assert_int_equal(model_blob_decode(&g, copy, wb.len, err, sizeof err), PPS_ECORRUPT);

    memcpy(copy, wb.data, wb.len);
    copy[wb.len / 2] ^= 0x10; /* damage without resealing */
    assert_int_equal(model_blob_decode(&g, copy, wb.len, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "checksum"));

    /* A tiny blob that claims millions of nodes is refused before any
     * allocation is sized by the claim. */
    struct wbuf tiny;
    wbuf_init(&tiny);
    wbuf_u32(&tiny, MODEL_BLOB_MAGIC);
    wbuf_u16(&tiny, MODEL_BLOB_VERSION);
    wbuf_u16(&tiny, 0);
    uint8_t body[] = {1, 'x', 0, 1, 1, 0, 0, 0xff, 0xff, 0xff, 0x07};
    wbuf_put(&tiny, body, sizeof body);
    wbuf_u64(&tiny, XXH3_64bits(tiny.data, tiny.len));
    assert_int_equal(model_blob_decode(&g, tiny.data, tiny.len, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "node count"));
    wbuf_free(&tiny);

    free(copy);
    wbuf_free(&wb);
    zoo_free(&m);
}

static void test_truncation_every_offset(void **state)
{
    (void)state;
    for (int i = 0; i < zoo_count(); i++) {
        struct zoo_model m;
        build(&m, zoo_name(i), 32768000);
        struct wbuf wb;
        wbuf_init(&wb);
        assert_int_equal(model_blob_encode(&m.g, &wb), 0);
        for (size_t cut = 0; cut < wb.len; cut++) {
            /* An exact-size heap copy, so ASan sees any read past the end. */
            uint8_t *copy = malloc(cut ? cut : 1);
            memcpy(copy, wb.data, cut);
            struct graph g;
            int rc = model_blob_decode(&g, copy, cut, NULL, 0);
            assert_true(rc == PPS_ETRUNCATED || rc == PPS_ECORRUPT);
            assert_int_equal(g.nnodes, 0);
            /* Resealed truncations reach the field parser itself. */
            if (cut >= 16 && cut % 7 == 0) {
                reseal(copy, cut);
                rc = model_blob_decode(&g, copy, cut, NULL, 0);
                assert_true(rc == PPS_ETRUNCATED || rc == PPS_ECORRUPT);
            }
            free(copy);
        }
        wbuf_free(&wb);
        zoo_free(&m);
    }
}

/* xorshift: the test's own deterministic randomness. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_random_corruption(void **state)
{
    (void)state;
    int accepted = 0, rejected = 0;
    for (int i = 0; i < zoo_count(); i++) {
        struct zoo_model m;
        build(&m, zoo_name(i), 32768000);
        struct wbuf wb;
        wbuf_init(&wb);
        assert_int_equal(model_blob_encode(&m.g, &wb), 0);
        uint8_t *copy = malloc(wb.len);
        for (int iter = 0; iter < 1500; iter++) {
            memcpy(copy, wb.data, wb.len);
            int nflips = 1 + (int)(rnd() % 4);
            for (int f = 0; f < nflips; f++) {
                size_t pos = 8 + rnd() % (wb.len - 16); /* past the fixed header, before the checksum */
                switch (rnd() % 3) {
                case 0: copy[pos] ^= (uint8_t)(1u << (rnd() % 8)); break;
                case 1: copy[pos] = (uint8_t)rnd(); break;
                default: copy[pos] = (rnd() & 1) ? 0xff : 0x00; break;
                }
            }
            reseal(copy, wb.len);
            struct graph g;
            char err[256];
            int rc = model_blob_decode(&g, copy, wb.len, err, sizeof err);
            if (rc == 0) {
                /* Anything accepted is a valid graph (e.g. a changed name
                 * or attribute value). */
                assert_int_equal(graph_validate(&g, NULL, 0), 0);
                graph_free(&g);
                accepted++;
            } else {
                assert_true(rc == PPS_ECORRUPT || rc == PPS_ETRUNCATED);
                assert_true(strlen(err) > 0);
                rejected++;
            }
        }
        free(copy);
        wbuf_free(&wb);
        zoo_free(&m);
    }
    print_message("random corruption: %d accepted (still valid), %d rejected\n", accepted, rejected);
    assert_true(rejected > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_every_model),
        cmocka_unit_test(test_unbatched_and_invalid),
        cmocka_unit_test(test_prepared_layouts),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_truncation_every_offset),
        cmocka_unit_test(test_random_corruption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
