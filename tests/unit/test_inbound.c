/* Unit tests for common/inbound: option parsing, the partial-payload budget,
 * and the header read that tolerates idle connections but not a stall in a
 * frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/inbound.h"

static void test_parse(void **state)
{
    (void)state;
    struct inbound_limits lim;
    char err[160];
    inbound_limits_default(&lim);
    assert_int_equal(lim.io_timeout_ms, INBOUND_DEFAULT_IO_TIMEOUT_S * 1000);
    assert_int_equal(lim.max_conns, INBOUND_DEFAULT_MAX_CONNS);
    assert_int_equal(inbound_parse(&lim, "3", "7", "64M", err, sizeof err), 0);
    assert_int_equal(lim.io_timeout_ms, 3000);
    assert_int_equal(lim.max_conns, 7);
    assert_true(lim.max_partial == (64ull << 20));
    /* NULL keeps the value */
    assert_int_equal(inbound_parse(&lim, NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(lim.max_conns, 7);
    /* bad values name their option */
    assert_int_equal(inbound_parse(&lim, "0", NULL, NULL, err, sizeof err), PPS_EINVAL);
    assert_non_null(strstr(err, "--io-timeout"));
    assert_int_equal(inbound_parse(&lim, NULL, "many", NULL, err, sizeof err), PPS_EINVAL);
    assert_non_null(strstr(err, "--max-conns"));
    assert_int_equal(inbound_parse(&lim, NULL, NULL, "4K", err, sizeof err), PPS_EINVAL);
    assert_non_null(strstr(err, "--max-partial"));
    assert_int_equal(lim.io_timeout_ms, 3000);
}

static void test_budget(void **state)
{
    (void)state;
    struct inbound_budget b;
    inbound_budget_init(&b, 100);
    assert_int_equal(inbound_budget_take(&b, 60), 0);
    assert_int_equal(inbound_budget_take(&b, 41), PPS_EBUSY); /* nothing charged */
    assert_int_equal(inbound_budget_used(&b), 60);
    assert_int_equal(inbound_budget_take(&b, 40), 0);
    assert_int_equal(inbound_budget_take(&b, 1), PPS_EBUSY);
    inbound_budget_give(&b, 60);
    assert_int_equal(inbound_budget_used(&b), 40);
    assert_int_equal(inbound_budget_take(&b, UINT64_MAX), PPS_EBUSY); /* no wrap-around */
    inbound_budget_give(&b, 40);
    assert_int_equal(inbound_budget_used(&b), 0);
}

static void test_recv_header(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(inbound_set_recv_timeout(sv[0], 100), 0);
    uint8_t hdr[FRAME_HEADER_SIZE], sent[FRAME_HEADER_SIZE];
    struct frame_header h = {.type = MSG_PING, .request_id = 9, .payload_len = 0};
    frame_encode_header(sent, &h);
    size_t got = 0;

    /* idle for several timeouts, then a whole header: read, not timed out */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        usleep(350 * 1000);
        ssize_t w = write(sv[1], sent, sizeof sent);
        _exit(w == (ssize_t)sizeof sent ? 0 : 1);
    }
    assert_int_equal(inbound_recv_header(sv[0], hdr, &got), 0);
    assert_int_equal(got, FRAME_HEADER_SIZE);
    assert_memory_equal(hdr, sent, sizeof sent);
    int status = -1;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(status, 0);

    /* half a header, then silence: PPS_ETIMEOUT with the bytes counted */
    assert_int_equal(write(sv[1], sent, 10), 10);
    assert_int_equal(inbound_recv_header(sv[0], hdr, &got), PPS_ETIMEOUT);
    assert_int_equal(got, 10);

    /* a clean close between frames */
    close(sv[1]);
    assert_int_equal(inbound_recv_header(sv[0], hdr, &got), PPS_ECLOSED);
    assert_int_equal(got, 0);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_recv_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
