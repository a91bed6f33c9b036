/* Unit tests for npy: write/read roundtrip (the header layout numpy
 * expects), headers as numpy writes them (1-D, scalar, version 2.0, key
 * order), truncation at every byte, and rejected dtypes, Fortran order and
 * hostile shapes. The integration tests cross-check with numpy itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "formats/npy.h"

static char tmpdir[] = "/tmp/pipeps-test-npy-XXXXXX";

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void test_roundtrip(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/a.npy", tmpdir);
    float v[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        v[i] = (float)i * 0.5f - 3.0f;
    int64_t dims[3] = {2, 3, 4};
    assert_int_equal(npy_write_file(path, NPY_F32, 3, dims, v, sizeof v), 0);
    size_t len;
    uint8_t *img = slurp(path, &len);
    assert_int_equal((len - sizeof v) % 64, 0); /* data starts on a multiple of 64 */
    assert_int_equal(img[len - sizeof v - 1], '\n');
    free(img);

    struct npy_array a;
    char err[256];
    assert_int_equal(npy_read_file(path, &a, err, sizeof err), 0);
    assert_int_equal(a.dtype, NPY_F32);
    assert_int_equal(a.ndims, 3);
    assert_int_equal(a.dims[0], 2);
    assert_int_equal(a.dims[2], 4);
    assert_int_equal(a.nbytes, sizeof v);
    assert_memory_equal(a.data, v, sizeof v);
    npy_free(&a);

    int64_t ids[5] = {1, 2, 30521, 0, 7};
    int64_t d1[1] = {5};
    assert_int_equal(npy_write_file(path, NPY_I64, 1, d1, ids, sizeof ids), 0);
    assert_int_equal(npy_read_file(path, &a, err, sizeof err), 0);
    assert_int_equal(a.dtype, NPY_I64);
    assert_int_equal(a.ndims, 1);
    assert_memory_equal(a.data, ids, sizeof ids);
    npy_free(&a);

    /* Wrong byte count for the shape. */
    assert_int_equal(npy_write_file(path, NPY_I64, 1, d1, ids, 8), PPS_EINVAL);
}

/* Build an image with the given header text (padded as numpy does). */
static size_t image(uint8_t *out, int major, const char *dict, const void *data, size_t n)
{
    size_t pre = major == 1 ? 10 : 12;
    size_t dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    size_t hlen = total - pre;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (uint8_t)major;
    out[7] = 0;
    out[8] = (uint8_t)hlen;
    out[9] = (uint8_t)(hlen >> 8);
    if (major != 1)
        out[10] = out[11] = 0;
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', hlen - dl - 1);
    out[total - 1] = '\n';
    memcpy(out + total, data, n);
    return total + n;
}

static void test_numpy_headers(void **state)
{
    (void)state;
    uint8_t buf[1024];
    float v[3] = {1, 2, 3};
    struct npy_array a;
    char err[256];

    size_t n = image(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, 12);
    assert_int_equal(npy_parse(buf, n, &a, err, sizeof err), 0);
    assert_int_equal(a.ndims, 1);
    assert_int_equal(a.dims[0], 3);
    npy_free(&a);

    n = image(buf, 2, "{\"shape\": (1, 3), \"fortran_order\": False, \"descr\": \"<f4\"}", v, 12);
    assert_int_equal(npy_parse(buf, n, &a, err, sizeof err), 0);
    assert_int_equal(a.ndims, 2);
    assert_int_equal(a.dims[1], 3);
    npy_free(&a);

    n = image(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", v, 4);
    assert_int_equal(npy_parse(buf, n, &a, err, sizeof err), 0);
    assert_int_equal(a.ndims, 0);
    assert_int_equal(a.nbytes, 4);
    npy_free(&a);

    /* Truncation at every byte gives an error, never a crash. */
    n = image(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, 12);
    for (size_t cut = 0; cut < n; cut++) {
        assert_true(npy_parse(buf, cut, &a, err, sizeof err) < 0);
        assert_null(a.data);
    }
}

static void test_rejected(void **state)
{
    (void)state;
    uint8_t buf[1024];
    float v[4] = {0};
    struct npy_array a;
    char err[256];
    static const struct {
        const char *dict;
        int rc;
    } cases[] = {
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", PPS_EUNSUPPORTED},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", PPS_EUNSUPPORTED},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", PPS_EUNSUPPORTED},
        {"{'descr': '<f4', 'shape': (1,), }", PPS_ECORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4, 5, 6, 7, 8, 9), }",
         PPS_ECORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
         PPS_ETOOBIG},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", PPS_ECORRUPT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", PPS_ETRUNCATED},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", PPS_EUNSUPPORTED},
        {"['descr']", PPS_ECORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = image(buf, 1, cases[i].dict, v, sizeof v);
        int rc = npy_parse(buf, n, &a, err, sizeof err);
        if (rc != cases[i].rc)
            fail_msg("case %zu: %d (%s), want %d", i, rc, err, cases[i].rc);
    }
    buf[0] = 'X';
    assert_int_equal(npy_parse(buf, 100, &a, err, sizeof err), PPS_ECORRUPT);
    char path[256];
    snprintf(path, sizeof path, "%s/missing.npy", tmpdir);
    assert_int_equal(npy_read_file(path, &a, err, sizeof err), PPS_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_numpy_headers),
        cmocka_unit_test(test_rejected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
