/* Unit tests for deploy_plan: the storage and distribution list parsers
 * (accepted shapes, every error with file:line) and the slicing rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "deploy/deploy_plan.h"

static int parse_sl(const char *text, struct deploy_storage_list *sl, char *err)
{
    return deploy_parse_storage_list(text, strlen(text), "storage_list.txt", sl, err, 512);
}

static int parse_dl(const char *text, uint32_t n, struct deploy_dist_list *dl, char *err)
{
    return deploy_parse_dist_list(text, strlen(text), "dist.txt", n, dl, err, 512);
}

static void test_storage_list_ok(void **state)
{
    (void)state;
    struct deploy_storage_list sl;
    char err[512];
    const char *text = "address, port\r\n"
                       "127.0.0.1, 7777\r\n"
                       "\n"
                       "# a comment\n"
                       "  localhost ,7778  \n"
                       "10.0.0.2,\t65535"; /* no final newline */
    assert_int_equal(parse_sl(text, &sl, err), 0);
    assert_string_equal(sl.meta.addr, "127.0.0.1");
    assert_int_equal(sl.meta.port, 7777);
    assert_int_equal(sl.meta.line, 2);
    assert_int_equal(sl.nstorages, 2);
    assert_string_equal(sl.storages[0].addr, "localhost");
    assert_int_equal(sl.storages[0].port, 7778);
    assert_int_equal(sl.storages[0].line, 5);
    assert_string_equal(sl.storages[1].addr, "10.0.0.2");
    assert_int_equal(sl.storages[1].port, 65535);

    assert_int_equal(parse_sl("addr, port\n127.0.0.1, 7777\n", &sl, err), 0); /* metadata only */
    assert_int_equal(sl.nstorages, 0);
}

static void expect_sl_error(const char *text, const char *msg)
{
    struct deploy_storage_list sl;
    char err[512] = "";
    assert_int_not_equal(parse_sl(text, &sl, err), 0);
    if (!strstr(err, msg))
        fail_msg("expected \"%s\" in \"%s\"", msg, err);
}

static void test_storage_list_errors(void **state)
{
    (void)state;
    expect_sl_error("", "storage_list.txt: empty file");
    expect_sl_error("address, port\n", "storage_list.txt:1: no metadata storage listed");
    expect_sl_error("127.0.0.1, 7777\n127.0.0.1, 7778\n", "storage_list.txt:1: the first line is a header");
    expect_sl_error("a, p\n127.0.0.1, 0\n", "storage_list.txt:2: bad port \"0\"");
    expect_sl_error("a, p\n127.0.0.1, 65536\n", "storage_list.txt:2: bad port \"65536\"");
    expect_sl_error("a, p\n127.0.0.1, 77x\n", "storage_list.txt:2: bad port \"77x\"");
    expect_sl_error("a, p\n127.0.0.1, -1\n", "storage_list.txt:2: bad port");
    expect_sl_error("a, p\n127.0.0.1:7777\n", "storage_list.txt:2: expected \"address, port\", found 1 field");
    expect_sl_error("a, p\n1.2.3.4, 1, 2\n", "storage_list.txt:2: expected \"address, port\", found 3 fields");
    expect_sl_error("a, p\n, 7777\n", "storage_list.txt:2: field 1 is empty");
    expect_sl_error("a, p\nm, 1\n\nh, 2\n# x\nh, 2\n", "storage_list.txt:6: storage h:2 is already listed at line 4");
    /* the metadata storage listed again as a storage (issue 11) */
    expect_sl_error("a, p\nm, 1\nm, 1\n", "storage_list.txt:3: m:1 is the metadata storage (line 2)");
    expect_sl_error("a, p\nm, 1\nh, 2\nm, 1\n", "storage_list.txt:4: m:1 is the metadata storage (line 2)");
    expect_sl_error("a, p\nhost name, 1\n", "storage_list.txt:2: bad address \"host name\"");
    char longaddr[200];
    snprintf(longaddr, sizeof longaddr, "a, p\n%070d, 1\n", 0);
    expect_sl_error(longaddr, "storage_list.txt:2: bad address");
    struct deploy_storage_list sl;
    char err[512];
    assert_int_equal(deploy_parse_storage_list("a\nb\0c, 1\n", 9, "x", &sl, err, sizeof err), PPS_EINVAL);
    assert_string_equal(err, "x:2: NUL byte in a text file");
}

static void test_dist_list_ok(void **state)
{
    (void)state;
    struct deploy_dist_list dl;
    char err[512];
    const char *text = "model, storages\n"
                       "alpha, 0\n"
                       "beta,1, 0\n"
                       "\n"
                       "resnet152-alter-00000001 , 2 \n";
    assert_int_equal(parse_dl(text, 3, &dl, err), 0);
    assert_int_equal(dl.nmodels, 3);
    assert_string_equal(dl.models[0].model, "alpha");
    assert_int_equal(dl.models[0].nstorages, 1);
    assert_int_equal(dl.models[0].storages[0], 0);
    assert_int_equal(dl.models[1].nstorages, 2);
    assert_int_equal(dl.models[1].storages[0], 1); /* order kept: slice 0 goes to storage 1 */
    assert_int_equal(dl.models[1].storages[1], 0);
    assert_string_equal(dl.models[2].model, "resnet152-alter-00000001");
    assert_int_equal(dl.models[2].line, 5);
    deploy_dist_list_free(&dl);

    assert_int_equal(parse_dl("model, storages\n", 3, &dl, err), 0); /* no models: fine */
    assert_int_equal(dl.nmodels, 0);
    deploy_dist_list_free(&dl);
}

static void expect_dl_error(const char *text, uint32_t n, const char *msg)
{
    struct deploy_dist_list dl;
    char err[512] = "";
    assert_int_not_equal(parse_dl(text, n, &dl, err), 0);
    if (!strstr(err, msg))
        fail_msg("expected \"%s\" in \"%s\"", msg, err);
    assert_null(dl.models);
}

static void test_dist_list_errors(void **state)
{
    (void)state;
    expect_dl_error("", 2, "dist.txt: empty file");
    expect_dl_error("m, s\nalpha, 2\n", 2,
                    "dist.txt:2: storage index 2 out of range: the storage list has 2 storages (0..1)");
    expect_dl_error("m, s\nalpha, 1\n", 1, "dist.txt:2: storage index 1 out of range: the storage list has 1 storage (0..0)");
    expect_dl_error("m, s\nalpha, 0\n", 0, "dist.txt:2: storage index 0 out of range: the storage list has no storages");
    expect_dl_error("m, s\nalpha, 0, 1, 0\n", 2, "dist.txt:2: storage index 0 listed twice for model alpha");
    expect_dl_error("m, s\nalpha, 0\nbeta, 1\nalpha, 1\n", 2, "dist.txt:4: model alpha is already listed at line 2");
    expect_dl_error("m, s\nalpha\n", 2, "dist.txt:2: expected \"model, storage[, storage ...]\"");
    expect_dl_error("m, s\nalpha, -1\n", 2, "dist.txt:2: storage index \"-1\" is not a non-negative integer");
    expect_dl_error("m, s\nalpha, 1.5\n", 2, "dist.txt:2: storage index \"1.5\"");
    expect_dl_error("m, s\nalpha, 99999999999\n", 2, "dist.txt:2: storage index \"99999999999\"");
    expect_dl_error("m, s\nal pha, 0\n", 2, "dist.txt:2: bad model name \"al pha\"");
    expect_dl_error("m, s\nalpha, 0,\n", 2, "dist.txt:2: field 3 is empty");
    expect_dl_error("alpha, 0\nbeta, 1\n", 2, "dist.txt:1: the first line is a header");
}

static void check_plan(uint64_t len, uint32_t n)
{
    uint64_t s;
    uint32_t k = deploy_slice_plan(len, n, &s);
    assert_true(k >= 1 && k <= n);
    if (len == 0) {
        assert_int_equal(k, 1);
        assert_int_equal(s, 0);
        return;
    }
    assert_int_equal(s % 512, 0);
    /* slices [i*s, min((i+1)*s, len)) tile the value, none empty */
    assert_true((uint64_t)(k - 1) * s < len);
    assert_true((uint64_t)k * s >= len);
    /* as equal as 512-byte granularity allows: no slice more than 511
     * bytes over an exact share */
    assert_true(s < len / n + 1 + 512);
}

static void test_slice_plan(void **state)
{
    (void)state;
    uint64_t s;
    assert_int_equal(deploy_slice_plan(0, 2, &s), 1);
    assert_int_equal(deploy_slice_plan(100, 1, &s), 1);
    assert_int_equal(s, 512);
    assert_int_equal(deploy_slice_plan(512, 2, &s), 1); /* second would be empty */
    assert_int_equal(s, 512);
    assert_int_equal(deploy_slice_plan(1024, 2, &s), 2);
    assert_int_equal(s, 512);
    assert_int_equal(deploy_slice_plan(1025, 2, &s), 2);
    assert_int_equal(s, 1024); /* 1024 + 1 */
    assert_int_equal(deploy_slice_plan(12345, 2, &s), 2);
    assert_int_equal(s, 6656); /* 6656 + 5689 */
    assert_int_equal(deploy_slice_plan(32768000, 3, &s), 3);
    assert_int_equal(s, 10923008);
    assert_int_equal(deploy_slice_plan(1536, 4, &s), 3); /* three 512-byte slices, the fourth storage idle */
    for (uint64_t len = 0; len < 5000; len += 7)
        for (uint32_t n = 1; n <= 8; n++)
            check_plan(len, n);
    check_plan(4ull << 30, 64);
    check_plan((4ull << 30) - 1, 3);

    char key[300];
    deploy_generation_key("alpha-BATCH-3", 1764145000123ull, key, sizeof key);
    assert_string_equal(key, "alpha-BATCH-3@1764145000123");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_storage_list_ok),
        cmocka_unit_test(test_storage_list_errors),
        cmocka_unit_test(test_dist_list_ok),
        cmocka_unit_test(test_dist_list_errors),
        cmocka_unit_test(test_slice_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
