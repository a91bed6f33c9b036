/* Unit tests for the server's payloads (server_proto) and its resident-model
 * table (resident): roundtrips, tensor alignment, truncation at every byte,
 * hostile counts and shapes; LRU order, models in use never evicted, a
 * model larger than the budget. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "server/resident.h"
#include "server/server_proto.h"

static void make_request(struct infer_request *r, float *x, int64_t *ids)
{
    memset(r, 0, sizeof *r);
    strcpy(r->model, "resnet152-alter-00000001");
    r->ninputs = 2;
    for (int i = 0; i < 6; i++)
        x[i] = (float)i - 2.5f;
    r->inputs[0] = (struct infer_tensor){.dtype = INFER_F32, .ndims = 3, .dims = {1, 2, 3},
                                         .nbytes = 24, .data = x};
    for (int i = 0; i < 4; i++)
        ids[i] = 1000 + i;
    r->inputs[1] = (struct infer_tensor){.dtype = INFER_I64, .ndims = 2, .dims = {2, 2},
                                         .nbytes = 32, .data = ids};
}

static void test_request_roundtrip(void **state)
{
    (void)state;
    float x[6];
    int64_t ids[4];
    struct infer_request r, d;
    make_request(&r, x, ids);
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_request(&wb, &r);
    char err[256];
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), 0);
    assert_string_equal(d.model, r.model);
    assert_int_equal(d.ninputs, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(d.inputs[i].dtype, r.inputs[i].dtype);
        assert_int_equal(d.inputs[i].ndims, r.inputs[i].ndims);
        assert_memory_equal(d.inputs[i].dims, r.inputs[i].dims, sizeof(int64_t) * (size_t)r.inputs[i].ndims);
        assert_memory_equal(d.inputs[i].data, r.inputs[i].data, r.inputs[i].nbytes);
        /* Data sits at a multiple of 64 from the payload's start. */
        assert_int_equal(((const uint8_t *)d.inputs[i].data - wb.data) % INFER_TENSOR_ALIGN, 0);
    }
    /* Every truncation and one extra byte are errors, never a crash. */
    for (size_t cut = 0; cut < wb.len; cut++)
        assert_true(infer_decode_request(wb.data, cut, &d, err, sizeof err) < 0);
    wbuf_u8(&wb, 0);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_EPROTO);
    wbuf_free(&wb);
}

static void test_request_rejects(void **state)
{
    (void)state;
    float x[6];
    int64_t ids[4];
    struct infer_request r, d;
    char err[256];
    struct wbuf wb;
    wbuf_init(&wb);

    make_request(&r, x, ids);
    r.inputs[0].dims[1] = 0; /* dims must be >= 1 */
    infer_encode_request(&wb, &r);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_ESHAPE);

    make_request(&r, x, ids);
    r.inputs[0].nbytes = 20; /* does not match the shape */
    wbuf_reset(&wb);
    infer_encode_request(&wb, &r);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_ESHAPE);

    make_request(&r, x, ids);
    r.inputs[1].dtype = 9;
    wbuf_reset(&wb);
    infer_encode_request(&wb, &r);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_ESHAPE);

    make_request(&r, x, ids);
    strcpy(r.model, "has space");
    wbuf_reset(&wb);
    infer_encode_request(&wb, &r);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_EINVAL);

    make_request(&r, x, ids);
    r.flags = 4;
    wbuf_reset(&wb);
    infer_encode_request(&wb, &r);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_EUNSUPPORTED);

    /* Hostile tensor count and a shape whose byte count overflows. */
    wbuf_reset(&wb);
    wbuf_str(&wb, "m");
    wbuf_u32(&wb, 0);
    wbuf_u32(&wb, 1000000);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_ESHAPE);
    wbuf_reset(&wb);
    wbuf_str(&wb, "m");
    wbuf_u32(&wb, 0);
    wbuf_u32(&wb, 1);
    wbuf_u8(&wb, INFER_F32);
    wbuf_u8(&wb, 3);
    memset(wbuf_reserve(&wb, 6), 0, 6);
    for (int i = 0; i < 3; i++)
        wbuf_i64(&wb, INT64_C(1) << 40);
    wbuf_u64(&wb, 16);
    assert_int_equal(infer_decode_request(wb.data, wb.len, &d, err, sizeof err), PPS_ESHAPE);
    wbuf_free(&wb);
}

static void test_response_roundtrip(void **state)
{
    (void)state;
    /* Zeroed first: the struct is compared bytewise, padding included. */
    struct infer_timing t;
    memset(&t, 0, sizeof t);
    t.queue_us = 1, t.wait_us = 2, t.compute_us = 3, t.total_us = 10;
    t.source = INFER_SRC_STORAGE, t.mode = INFER_MODE_STOP_AND_START;
    t.nbatches = 34, t.batches_at_start = 5, t.meta_us = 4, t.exec_start_us = 5;
    t.first_batch_us = 6, t.last_batch_us = 7, t.load_us = 8, t.plan_us = 9, t.exec_end_us = 9;
    float y[4] = {1, 2, 3, 4};
    struct infer_tensor out = {.dtype = INFER_F32, .ndims = 2, .dims = {1, 4}, .nbytes = 16};
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_response_head(&wb, &t, 1);
    size_t off = infer_reserve_tensor(&wb, &out);
    memcpy(wb.data + off, y, sizeof y);
    struct infer_response r;
    char err[256];
    assert_int_equal(infer_decode_response(wb.data, wb.len, &r, err, sizeof err), 0);
    assert_memory_equal(&r.timing, &t, sizeof t);
    assert_int_equal(r.noutputs, 1);
    assert_memory_equal(r.outputs[0].data, y, sizeof y);
    for (size_t cut = 0; cut < wb.len; cut++)
        assert_true(infer_decode_response(wb.data, cut, &r, err, sizeof err) < 0);

    /* A longer timing block from a newer server: known fields read, rest skipped. */
    struct wbuf w2;
    wbuf_init(&w2);
    uint32_t tlen = load_le32(wb.data);
    wbuf_u32(&w2, tlen + 8);
    wbuf_put(&w2, wb.data + 4, tlen);
    wbuf_u64(&w2, 77);
    wbuf_u32(&w2, 0);
    assert_int_equal(infer_decode_response(w2.data, w2.len, &r, err, sizeof err), 0);
    assert_int_equal(r.timing.exec_end_us, 9);
    assert_int_equal(r.noutputs, 0);
    wbuf_free(&w2);
    wbuf_free(&wb);
}

static void test_model_info_and_lb_messages(void **state)
{
    (void)state;
    struct infer_model_info mi = {.ninputs = 1, .noutputs = 1, .nbatches = 3, .param_bytes = 1536,
                                  .resident = 1};
    strcpy(mi.inputs[0].name, "input_ids");
    mi.inputs[0].dtype = INFER_I64;
    mi.inputs[0].ndims = 2;
    mi.inputs[0].dims[0] = -1;
    mi.inputs[0].dims[1] = 128;
    strcpy(mi.outputs[0].name, "logits");
    mi.outputs[0].dtype = INFER_F32;
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_model_info(&wb, &mi);
    struct infer_model_info d;
    assert_int_equal(infer_decode_model_info(wb.data, wb.len, &d), 0);
    assert_memory_equal(&d, &mi, sizeof d);
    for (size_t cut = 0; cut < wb.len; cut++)
        assert_int_equal(infer_decode_model_info(wb.data, cut, &d), PPS_EPROTO);

    struct wire_model_bytes models[2] = {{"resnet152", 247566752}, {"bert_base", 340586496}};
    struct lb_server_register reg = {.client_addr = "127.0.0.1", .client_port = 7000,
                                     .cache_addr = "127.0.0.1", .cache_port = 7001,
                                     .memory_capacity = 1ull << 32, .memory_used = 588153248,
                                     .threads = 2, .mode = 0, .nmodels = 2, .models = models};
    wbuf_reset(&wb);
    lb_server_encode_register(&wb, &reg);
    struct lb_server_register dr;
    assert_int_equal(lb_server_decode_register(wb.data, wb.len, &dr), 0);
    assert_string_equal(dr.client_addr, "127.0.0.1");
    assert_int_equal(dr.client_port, 7000);
    assert_int_equal(dr.cache_port, 7001);
    assert_int_equal(dr.nmodels, 2);
    assert_string_equal(dr.models[1].model, "bert_base");
    assert_int_equal(dr.models[1].bytes, 340586496);
    free(dr.models);
    for (size_t cut = 0; cut < wb.len; cut++) {
        assert_int_equal(lb_server_decode_register(wb.data, cut, &dr), PPS_EPROTO);
        assert_null(dr.models);
    }
    /* A hostile model count is refused before allocating. */
    wbuf_reset(&wb);
    lb_server_encode_register(&wb, &reg);
    store_le32(wb.data + wb.len - 2 * (4 + 9 + 8) - 4, 0xffffffffu);
    assert_int_equal(lb_server_decode_register(wb.data, wb.len, &dr), PPS_EPROTO);
    assert_null(dr.models);

    struct lb_server_event ev = {.kind = LB_SERVER_EVENT_EVICTED, .model = "gpt2", .bytes = 5,
                                 .used = 6, .capacity = 7};
    wbuf_reset(&wb);
    lb_server_encode_event(&wb, &ev);
    struct lb_server_event de;
    assert_int_equal(lb_server_decode_event(wb.data, wb.len, &de), 0);
    assert_memory_equal(&de, &ev, sizeof de);
    wb.data[0] = 9;
    assert_int_equal(lb_server_decode_event(wb.data, wb.len, &de), PPS_EPROTO);
    wbuf_free(&wb);
}

static void test_resident_lru(void **state)
{
    (void)state;
    struct resident_table t;
    resident_init(&t, 100);
    int owners[4];
    struct resident_entry *a = resident_add(&t, "a", 40, &owners[0]);
    struct resident_entry *b = resident_add(&t, "b", 40, &owners[1]);
    assert_null(resident_victim(&t, 20, NULL)); /* 80 + 20 fits */
    assert_ptr_equal(resident_find(&t, "b"), b);
    assert_null(resident_find(&t, "c"));

    resident_touch(&t, a); /* b is now the least recently used */
    assert_ptr_equal(resident_victim(&t, 30, NULL), b);
    b->in_use = 1;         /* in use: never a victim */
    assert_ptr_equal(resident_victim(&t, 30, NULL), a);
    a->in_use = 1;
    assert_null(resident_victim(&t, 30, NULL));
    assert_null(resident_lru_idle(&t));
    a->in_use = b->in_use = 0;

    /* Adding c (50) evicts b then nothing else. */
    struct resident_entry *v = resident_victim(&t, 50, NULL);
    assert_ptr_equal(v, b);
    assert_ptr_equal(resident_remove(&t, v), &owners[1]);
    assert_null(resident_victim(&t, 50, NULL));
    struct resident_entry *c = resident_add(&t, "c", 50, &owners[2]);
    assert_int_equal(t.used, 90);
    assert_int_equal(t.count, 2);

    /* Growth of a model in use evicts others, not itself. */
    resident_set_bytes(&t, c, 70);
    assert_ptr_equal(resident_victim(&t, 0, c), a);
    assert_ptr_equal(resident_remove(&t, a), &owners[0]);
    assert_null(resident_victim(&t, 0, c));
    assert_int_equal(t.used, 70);

    assert_true(resident_fits(&t, 100));
    assert_false(resident_fits(&t, 101));
    assert_ptr_equal(resident_lru_idle(&t), c);
    assert_ptr_equal(resident_first(&t), c);
    resident_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_roundtrip),
        cmocka_unit_test(test_request_rejects),
        cmocka_unit_test(test_response_roundtrip),
        cmocka_unit_test(test_model_info_and_lb_messages),
        cmocka_unit_test(test_resident_lru),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
