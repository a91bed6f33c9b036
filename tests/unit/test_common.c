/* Unit tests for the common core: buf codec, frame header, args parsing,
 * error tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>

#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"

static void test_buf_roundtrip(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    wbuf_u8(&wb, 7);
    wbuf_u16(&wb, 0xBEEF);
    wbuf_u32(&wb, 0xDEADBEEF);
    wbuf_u64(&wb, 0x0123456789ABCDEFull);
    wbuf_f32(&wb, 1.5f);
    wbuf_str(&wb, "hello");
    wbuf_pad(&wb, 8);
    assert_int_equal(wb.len % 8, 0);
    assert_int_equal(wb.data[1], 0xEF); /* little-endian on the wire */

    struct rbuf rb;
    rbuf_init(&rb, wb.data, wb.len);
    uint8_t a; uint16_t b; uint32_t c; uint64_t d; float f; char s[16];
    assert_int_equal(rbuf_u8(&rb, &a), 0);
    assert_int_equal(rbuf_u16(&rb, &b), 0);
    assert_int_equal(rbuf_u32(&rb, &c), 0);
    assert_int_equal(rbuf_u64(&rb, &d), 0);
    assert_int_equal(rbuf_f32(&rb, &f), 0);
    assert_int_equal(rbuf_str(&rb, s, sizeof s - 1), 0);
    assert_int_equal(a, 7);
    assert_int_equal(b, 0xBEEF);
    assert_int_equal(c, 0xDEADBEEF);
    assert_true(d == 0x0123456789ABCDEFull);
    assert_true(f == 1.5f);
    assert_string_equal(s, "hello");
    wbuf_free(&wb);
}

static void test_buf_truncated_and_oversized(void **state)
{
    (void)state;
    uint8_t bytes[6] = {10, 0, 0, 0, 'a', 'b'}; /* claims 10 bytes, has 2 */
    struct rbuf rb;
    char s[32];
    rbuf_init(&rb, bytes, sizeof bytes);
    assert_int_equal(rbuf_str(&rb, s, 31), PPS_ETRUNCATED);
    assert_int_equal(rb.err, PPS_ETRUNCATED);
    uint32_t v;
    assert_int_equal(rbuf_u32(&rb, &v), PPS_ETRUNCATED); /* sticky */

    rbuf_init(&rb, bytes, sizeof bytes);
    assert_int_equal(rbuf_str(&rb, s, 4), PPS_ETOOBIG);
}

static void test_buf_finish_and_names(void **state)
{
    (void)state;
    uint8_t bytes[5] = {1, 2, 3, 4, 5};
    struct rbuf rb;
    uint32_t v;
    rbuf_init(&rb, bytes, 4);
    rbuf_u32(&rb, &v);
    assert_int_equal(rbuf_finish(&rb), 0);               /* consumed exactly */
    rbuf_init(&rb, bytes, 5);
    rbuf_u32(&rb, &v);
    assert_int_equal(rbuf_finish(&rb), PPS_EPROTO);      /* a byte left over */
    rbuf_init(&rb, bytes, 3);
    rbuf_u32(&rb, &v);
    assert_int_equal(rbuf_finish(&rb), PPS_EPROTO);      /* a failed read */

    assert_true(wire_name_valid("resnet152-alter-00000001", 255));
    assert_false(wire_name_valid("", 255));
    assert_false(wire_name_valid("abcd", 3));
    assert_true(wire_name_valid("abc", 3));
    assert_false(wire_name_valid("a b", 255));
    assert_false(wire_name_valid("a\tb", 255));
    assert_false(wire_name_valid("caf\xc3\xa9", 255));
    assert_false(wire_name_valid("a\x7f", 255));
}

static void test_buf_model_list(void **state)
{
    (void)state;
    struct wire_model_bytes in[2] = {{"resnet152", 241384448}, {"bert_base", 1}};
    struct wbuf wb;
    wbuf_init(&wb);
    wbuf_model_list(&wb, in, 2);
    struct rbuf rb;
    struct wire_model_bytes *out;
    uint32_t n;
    rbuf_init(&rb, wb.data, wb.len);
    assert_int_equal(rbuf_model_list(&rb, &out, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].model, "resnet152");
    assert_true(out[0].bytes == 241384448);
    assert_string_equal(out[1].model, "bert_base");
    assert_int_equal(rbuf_finish(&rb), 0);
    free(out);
    /* Cut short inside the last entry: an error, nothing allocated. */
    rbuf_init(&rb, wb.data, wb.len - 1);
    assert_int_equal(rbuf_model_list(&rb, &out, &n), PPS_EPROTO);
    assert_null(out);
    assert_int_equal(n, 0);
    /* A count the remaining bytes cannot hold is refused before allocating. */
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    rbuf_init(&rb, huge, sizeof huge);
    assert_int_equal(rbuf_model_list(&rb, &out, &n), PPS_EPROTO);
    assert_null(out);
    /* Empty list. */
    wbuf_reset(&wb);
    wbuf_model_list(&wb, NULL, 0);
    rbuf_init(&rb, wb.data, wb.len);
    assert_int_equal(rbuf_model_list(&rb, &out, &n), 0);
    assert_null(out);
    assert_int_equal(n, 0);
    wbuf_free(&wb);
}

static void test_frame_header(void **state)
{
    (void)state;
    struct frame_header h = {.type = MSG_META_GET, .flags = FRAME_FLAG_RESPONSE,
                             .status = PPS_ENOTFOUND, .request_id = 42, .payload_len = 1000};
    uint8_t raw[FRAME_HEADER_SIZE];
    frame_encode_header(raw, &h);
    struct frame_header g;
    assert_int_equal(frame_decode_header(raw, &g, 1000), 0);
    assert_int_equal(g.type, MSG_META_GET);
    assert_int_equal(g.status, PPS_ENOTFOUND);
    assert_true(g.request_id == 42);
    assert_int_equal(frame_decode_header(raw, &g, 999), PPS_ETOOBIG);
    raw[0] ^= 1;
    assert_int_equal(frame_decode_header(raw, &g, 1000), PPS_EPROTO);
    raw[0] ^= 1;
    raw[4] = 9;
    assert_int_equal(frame_decode_header(raw, &g, 1000), PPS_EUNSUPPORTED);
    raw[4] = FRAME_VERSION;
    raw[13] = 1;
    assert_int_equal(frame_decode_header(raw, &g, 1000), PPS_EPROTO);
    assert_string_equal(frame_type_name(MSG_STORE_GET), "STORE_GET");
    assert_string_equal(frame_type_name(0x7777), "0x7777");
}

static void test_frame_over_socketpair(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct frame_header h = {.type = MSG_PING, .request_id = 5};
    assert_int_equal(frame_send(sv[0], &h, "abc", 3), 0);
    struct frame_header r;
    uint8_t *payload;
    assert_int_equal(frame_recv(sv[1], &r, &payload, 16), 0);
    assert_int_equal(r.payload_len, 3);
    assert_memory_equal(payload, "abc", 3);
    free(payload);
    assert_int_equal(frame_send(sv[0], &h, "0123456789", 10), 0);
    assert_int_equal(frame_recv(sv[1], &r, &payload, 4), PPS_ETOOBIG);
    close(sv[0]);
    assert_int_equal(net_discard(sv[1], 10), 0);
    assert_int_equal(frame_recv(sv[1], &r, &payload, 16), PPS_ECLOSED);
    close(sv[1]);
}

static void test_args(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(args_parse_size("32768000", &v), 0);
    assert_true(v == 32768000);
    assert_int_equal(args_parse_size("1G", &v), 0);
    assert_true(v == 1073741824ull);
    assert_int_equal(args_parse_size("64KiB", &v), 0);
    assert_true(v == 65536);
    assert_int_equal(args_parse_size("12Q", &v), PPS_EINVAL);
    assert_int_equal(args_parse_size("-1", &v), PPS_EINVAL);

    char *argv[] = {"prog", "7777", "--dir", "/tmp/x", "extra", "--flag"};
    struct args_option opts[] = {{"dir", 1, NULL}, {"flag", 0, NULL}};
    struct args a;
    assert_int_equal(args_split(6, argv, opts, 2, &a, NULL), 0);
    assert_int_equal(a.npositional, 2);
    assert_string_equal(a.positional[1], "extra");
    assert_string_equal(opts[0].value, "/tmp/x");
    assert_string_equal(opts[1].value, "1");
    char *bad[] = {"prog", "--nope"};
    assert_int_equal(args_split(2, bad, opts, 2, &a, NULL), PPS_EINVAL);

    char host[64];
    uint16_t port;
    assert_int_equal(net_parse_hostport("10.0.0.1:80", host, sizeof host, &port), 0);
    assert_string_equal(host, "10.0.0.1");
    assert_int_equal(port, 80);
    assert_int_equal(net_parse_hostport("x:70000", host, sizeof host, &port), PPS_EINVAL);
}

static void test_err_tables(void **state)
{
    (void)state;
    assert_string_equal(pps_errname(PPS_ENOTFOUND), "PPS_ENOTFOUND");
    assert_string_equal(pps_strerror(PPS_ETOOBIG), "length over the limit");
    assert_string_equal(pps_strerror(-9999), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_roundtrip),
        cmocka_unit_test(test_buf_truncated_and_oversized),
        cmocka_unit_test(test_buf_finish_and_names),
        cmocka_unit_test(test_buf_model_list),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_frame_over_socketpair),
        cmocka_unit_test(test_args),
        cmocka_unit_test(test_err_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
