/* Unit tests for kvbin: writer/reader roundtrip, truncation at every byte,
 * corrupt values and headers, bad magic and version, model completeness
 * checks, writer misuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/buf.h"
#include "common/err.h"
#include "formats/kvbin.h"

static char tmpdir[] = "/tmp/pipeps-test-kvbin-XXXXXX";

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

static void tmp_path(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmpdir, name); }

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 31u + i * 7u + (i >> 8));
}

/* The sample file: model "alpha" (METADATA of 100 bytes, batches of 512 and
 * 1000 bytes, batch 1 written in pieces) and model "beta" (METADATA of 0
 * bytes, one batch of 513 bytes). */
#define ALPHA_TOTAL (512 + 1000)
static const size_t sizes[] = {100, 512, 1000, 0, 513};

static void write_sample(const char *path)
{
    struct kvbin_writer *w;
    uint8_t buf[1000];
    assert_int_equal(kvbin_writer_open(&w, path), 0);
    assert_int_equal(kvbin_writer_model(w, "alpha", ALPHA_TOTAL, 2, 3), 0);
    fill(buf, sizes[0], 0);
    assert_int_equal(kvbin_writer_record(w, "alpha-METADATA", buf, sizes[0]), 0);
    fill(buf, sizes[1], 1);
    assert_int_equal(kvbin_writer_record(w, "alpha-BATCH-0", buf, sizes[1]), 0);
    fill(buf, sizes[2], 2);
    assert_int_equal(kvbin_writer_record_begin(w, "alpha-BATCH-1", sizes[2]), 0);
    assert_int_equal(kvbin_writer_record_write(w, buf, 300), 0);
    assert_int_equal(kvbin_writer_record_write(w, buf + 300, 0), 0);
    assert_int_equal(kvbin_writer_record_write(w, buf + 300, 700), 0);
    assert_int_equal(kvbin_writer_record_end(w), 0);
    assert_int_equal(kvbin_writer_model(w, "beta", 513, 1, 2), 0);
    assert_int_equal(kvbin_writer_record(w, "beta-METADATA", NULL, 0), 0);
    fill(buf, sizes[4], 4);
    assert_int_equal(kvbin_writer_record(w, "beta-BATCH-0", buf, sizes[4]), 0);
    assert_int_equal(kvbin_writer_close(w), 0);
}

static void test_roundtrip(void **state)
{
    (void)state;
    char path[256], tmp[300];
    tmp_path(path, sizeof path, "sample.bin");
    write_sample(path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0); /* renamed away */

    struct kvbin kv;
    char err[KVBIN_ERR_LEN] = "";
    assert_int_equal(kvbin_open(&kv, path, err, sizeof err), 0);
    assert_int_equal(kv.nmodels, 2);
    assert_string_equal(kv.models[0].name, "alpha");
    assert_int_equal(kv.models[0].total_size, ALPHA_TOTAL);
    assert_int_equal(kv.models[0].nbatches, 2);
    assert_int_equal(kv.models[0].nrecords, 3);
    assert_string_equal(kv.models[1].name, "beta");
    assert_int_equal(kv.models[1].nrecords, 2);
    int k = 0;
    for (uint32_t i = 0; i < kv.nmodels; i++) {
        const struct kvbin_model *m = &kv.models[i];
        assert_int_equal(kvbin_check_model(&kv, m, 1, err, sizeof err), 0);
        for (uint32_t j = 0; j < m->nrecords; j++, k++) {
            const struct kvbin_record *r = &m->records[j];
            uint8_t expect[1000];
            fill(expect, sizes[k], (unsigned)k);
            assert_int_equal(r->len, sizes[k]);
            assert_int_equal(r->file_offset % KVBIN_ALIGN, 0);
            assert_int_equal(r->header_offset % KVBIN_ALIGN, 0);
            assert_ptr_equal(r->data, (const uint8_t *)kv.map + r->file_offset);
            if (sizes[k])
                assert_memory_equal(r->data, expect, sizes[k]);
            assert_int_equal(r->checksum, XXH3_64bits(expect, sizes[k]));
            assert_int_equal(kvbin_verify(r, err, sizeof err), 0);
        }
    }
    const struct kvbin_model *beta = kvbin_find_model(&kv, "beta");
    assert_ptr_equal(beta, &kv.models[1]);
    assert_null(kvbin_find_model(&kv, "gamma"));
    assert_ptr_equal(kvbin_find_record(beta, "beta-BATCH-0"), &beta->records[1]);
    assert_null(kvbin_find_record(beta, "alpha-BATCH-0"));
    kvbin_close(&kv);
}

static void test_empty_file_roundtrip(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "empty.bin");
    struct kvbin_writer *w;
    assert_int_equal(kvbin_writer_open(&w, path), 0);
    assert_int_equal(kvbin_writer_close(w), 0);
    struct kvbin kv;
    char err[KVBIN_ERR_LEN];
    assert_int_equal(kvbin_open(&kv, path, err, sizeof err), 0);
    assert_int_equal(kv.nmodels, 0);
    assert_int_equal(kv.map_len, KVBIN_ALIGN);
    kvbin_close(&kv);
}

/* Open a private copy of exactly len bytes, so a read past the end is seen
 * by AddressSanitizer. */
static int open_prefix(const uint8_t *data, size_t len, char *err, size_t errlen)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    struct kvbin kv;
    int rc = kvbin_open_buffer(&kv, copy, len, "kv.bin", err, errlen);
    if (rc == 0)
        kvbin_close(&kv);
    free(copy);
    return rc;
}

static void test_truncation_everywhere(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "trunc.bin");
    write_sample(path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    char err[KVBIN_ERR_LEN];
    assert_int_equal(open_prefix(data, len, err, sizeof err), 0);
    for (size_t n = 0; n < len; n++) {
        err[0] = '\0';
        int rc = open_prefix(data, n, err, sizeof err);
        if (rc != PPS_ETRUNCATED)
            fail_msg("prefix of %zu bytes: rc %d (%s)", n, rc, err);
        assert_non_null(strstr(err, "kv.bin: "));
        assert_non_null(strstr(err, "offset"));
    }

    /* the interesting places, message by message */
    struct kvbin kv;
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), 0);
    const struct kvbin_record *b1 = &kv.models[0].records[2];
    const struct kvbin_model *beta = &kv.models[1];
    char expect[KVBIN_ERR_LEN];

    assert_int_equal(open_prefix(data, 10, err, sizeof err), PPS_ETRUNCATED);
    assert_string_equal(err, "kv.bin: file header at offset 0: file is 10 bytes, shorter than the 64-byte header");

    /* in the middle of alpha-BATCH-1's value */
    size_t cut = (size_t)b1->file_offset + 10;
    assert_int_equal(open_prefix(data, cut, err, sizeof err), PPS_ETRUNCATED);
    snprintf(expect, sizeof expect,
             "kv.bin: record 2 of model alpha at offset %llu: length 1000 beyond end of file (size %zu)",
             (unsigned long long)b1->header_offset, cut);
    assert_string_equal(err, expect);

    /* in the padding after it */
    cut = (size_t)(b1->file_offset + b1->len + 1);
    assert_int_equal(open_prefix(data, cut, err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "padding after the value"));

    /* exactly before beta's header */
    cut = (size_t)beta->header_offset;
    assert_int_equal(open_prefix(data, cut, err, sizeof err), PPS_ETRUNCATED);
    snprintf(expect, sizeof expect, "kv.bin: model 1 of 2 at offset %zu: header beyond end of file (size %zu)",
             cut, cut);
    assert_string_equal(err, expect);

    /* inside beta's name */
    cut = (size_t)beta->header_offset + KVBIN_ENTRY_HEADER_SIZE + 2;
    assert_int_equal(open_prefix(data, cut, err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "name of 4 bytes beyond end of file"));

    /* right after beta's header: its 2 records cannot fit */
    cut = (size_t)beta->records[0].header_offset;
    assert_int_equal(open_prefix(data, cut, err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "model 1 of 2 (beta)"));
    assert_non_null(strstr(err, "2 records cannot fit"));
    kvbin_close(&kv);
    free(data);
}

/* Recompute the checksum of the record/model header at off, as the format
 * documents: XXH3-64 of the header with the checksum field zeroed. */
static void reseal(uint8_t *data, size_t off)
{
    size_t n = 32 + load_le16(data + off + 4);
    store_le64(data + off + 24, 0);
    store_le64(data + off + 24, XXH3_64bits(data + off, n));
}

static void reseal_file_header(uint8_t *data)
{
    store_le64(data + 56, 0);
    store_le64(data + 56, XXH3_64bits(data, 64));
}

static void test_corrupt_values_and_headers(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "corrupt.bin");
    write_sample(path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    char err[KVBIN_ERR_LEN], expect[KVBIN_ERR_LEN];
    struct kvbin kv;
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), 0);
    uint64_t b0_hdr = kv.models[0].records[1].header_offset;
    uint64_t b0_val = kv.models[0].records[1].file_offset;
    uint64_t beta_hdr = kv.models[1].header_offset;
    kvbin_close(&kv);

    /* a flipped value byte: open succeeds (values are checked on demand),
     * verify names the key and offset */
    data[b0_val + 77] ^= 0x40;
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), 0);
    assert_int_equal(kvbin_verify(&kv.models[0].records[0], err, sizeof err), 0);
    assert_int_equal(kvbin_verify(&kv.models[0].records[1], err, sizeof err), PPS_ECORRUPT);
    snprintf(expect, sizeof expect, "record alpha-BATCH-0 at offset %llu: value checksum mismatch",
             (unsigned long long)b0_hdr);
    assert_memory_equal(err, expect, strlen(expect));
    assert_int_equal(kvbin_check_model(&kv, &kv.models[0], 0, err, sizeof err), 0);
    assert_int_equal(kvbin_check_model(&kv, &kv.models[0], 1, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "kv.bin: model alpha: record alpha-BATCH-0 at offset"));
    assert_int_equal(kvbin_check_model(&kv, &kv.models[1], 1, err, sizeof err), 0);
    kvbin_close(&kv);
    data[b0_val + 77] ^= 0x40;

    /* a flipped byte in a key: the header checksum catches it */
    data[b0_hdr + 32] ^= 0x01;
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    snprintf(expect, sizeof expect, "kv.bin: record 1 of model alpha at offset %llu: header checksum mismatch",
             (unsigned long long)b0_hdr);
    assert_string_equal(err, expect);
    data[b0_hdr + 32] ^= 0x01;

    /* a huge length with a valid header checksum: the bounds check catches it */
    uint8_t saved[8];
    memcpy(saved, data + b0_hdr + 8, 8);
    store_le64(data + b0_hdr + 8, 999999999);
    reseal(data, b0_hdr);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ETRUNCATED);
    snprintf(expect, sizeof expect,
             "kv.bin: record 1 of model alpha at offset %llu: length 999999999 beyond end of file (size %zu)",
             (unsigned long long)b0_hdr, len);
    assert_string_equal(err, expect);
    store_le64(data + b0_hdr + 8, UINT64_MAX - 100); /* no overflow in the bounds arithmetic */
    reseal(data, b0_hdr);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ETRUNCATED);
    memcpy(data + b0_hdr + 8, saved, 8);
    reseal(data, b0_hdr);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), 0);
    kvbin_close(&kv);

    /* a record count far beyond the file */
    memcpy(saved, data + beta_hdr + 20, 4);
    store_le32(data + beta_hdr + 20, 0xFFFFFFFFu);
    reseal(data, beta_hdr);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "4294967295 records cannot fit"));
    memcpy(data + beta_hdr + 20, saved, 4);
    reseal(data, beta_hdr);

    /* a model count far beyond the file */
    memcpy(saved, data + 12, 4);
    store_le32(data + 12, 0xFFFFFFFFu);
    reseal_file_header(data);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ETRUNCATED);
    assert_non_null(strstr(err, "4294967295 models cannot fit"));
    memcpy(data + 12, saved, 4);
    reseal_file_header(data);

    /* a duplicate model name */
    memcpy(saved, data + beta_hdr + 32, 4);
    assert_int_equal(load_le16(data + beta_hdr + 4), 4);
    assert_int_equal(load_le16(data + KVBIN_ALIGN + 4), 5);
    store_le16(data + beta_hdr + 4, 5);
    memcpy(data + beta_hdr + 32, "alpha", 5);
    reseal(data, beta_hdr);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "duplicate model name alpha"));
    free(data);
    data = read_file(path, &len);

    /* trailing garbage */
    uint8_t *longer = malloc(len + KVBIN_ALIGN);
    memcpy(longer, data, len);
    memset(longer + len, 0, KVBIN_ALIGN);
    assert_int_equal(kvbin_open_buffer(&kv, longer, len + KVBIN_ALIGN, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    snprintf(expect, sizeof expect, "kv.bin: offset %zu: 512 unexpected bytes after the last model", len);
    assert_string_equal(err, expect);
    free(longer);
    free(data);
}

static void test_bad_magic_and_version(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "magic.bin");
    write_sample(path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    char err[KVBIN_ERR_LEN];
    struct kvbin kv;

    data[3] = 'X';
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_string_equal(err, "kv.bin: offset 0: bad magic, not a kv.bin file");
    assert_int_equal(kvbin_open_buffer(&kv, "hello", 5, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_int_equal(kvbin_open_buffer(&kv, "PPSK", 4, "kv.bin", err, sizeof err), PPS_ETRUNCATED);
    data[3] = 'K';

    store_le16(data + 8, 2);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_EUNSUPPORTED);
    assert_string_equal(err, "kv.bin: file header at offset 8: unsupported kv.bin version 2 (this build reads version 1)");
    store_le16(data + 8, 1);

    data[20] ^= 1; /* the declared file size, without resealing */
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_string_equal(err, "kv.bin: file header at offset 0: header checksum mismatch");
    reseal_file_header(data);
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "file header at offset 16: says the file is"));
    data[20] ^= 1;
    reseal_file_header(data);

    data[KVBIN_ALIGN] = 'Z'; /* model header magic */
    assert_int_equal(kvbin_open_buffer(&kv, data, len, "kv.bin", err, sizeof err), PPS_ECORRUPT);
    assert_string_equal(err, "kv.bin: model 0 of 2 at offset 512: bad header magic (expected \"KVMD\")");
    free(data);

    assert_int_equal(kvbin_open(&kv, "/nonexistent/kv.bin", err, sizeof err), PPS_ENOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/kv.bin: cannot open"));
    char empty[256];
    tmp_path(empty, sizeof empty, "zero.bin");
    FILE *f = fopen(empty, "wb");
    fclose(f);
    assert_int_equal(kvbin_open(&kv, empty, err, sizeof err), PPS_ETRUNCATED);
}

static void write_model(const char *path, uint64_t total, uint32_t nbatches, const char *const *keys,
                        const size_t *lens, uint32_t nrecords)
{
    static uint8_t zeros[4096];
    struct kvbin_writer *w;
    assert_int_equal(kvbin_writer_open(&w, path), 0);
    assert_int_equal(kvbin_writer_model(w, "m", total, nbatches, nrecords), 0);
    for (uint32_t i = 0; i < nrecords; i++)
        assert_int_equal(kvbin_writer_record(w, keys[i], zeros, lens[i]), 0);
    assert_int_equal(kvbin_writer_close(w), 0);
}

static int check_written(const char *path, char *err, size_t errlen)
{
    struct kvbin kv;
    assert_int_equal(kvbin_open(&kv, path, err, errlen), 0);
    int rc = kvbin_check_model(&kv, &kv.models[0], 1, err, errlen);
    kvbin_close(&kv);
    return rc;
}

static void test_check_model(void **state)
{
    (void)state;
    char path[256], err[KVBIN_ERR_LEN];
    tmp_path(path, sizeof path, "check.bin");
    const char *good[] = {"m-BATCH-1", "m-METADATA", "m-BATCH-0"};
    const size_t lens[] = {1024, 10, 512};
    write_model(path, 1536, 2, good, lens, 3);
    assert_int_equal(check_written(path, err, sizeof err), 0); /* any order */

    write_model(path, 1537, 2, good, lens, 3);
    assert_int_equal(check_written(path, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "batches add up to 1536 bytes, header says 1537"));

    const char *no_meta[] = {"m-BATCH-1", "m-BATCH-0"};
    write_model(path, 1536, 2, no_meta, lens, 2);
    assert_int_equal(check_written(path, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "has 2 records, expected 3"));

    const char *out_of_range[] = {"m-BATCH-2", "m-METADATA", "m-BATCH-0"};
    write_model(path, 1536, 2, out_of_range, lens, 3);
    assert_int_equal(check_written(path, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "unexpected key m-BATCH-2"));

    const char *leading_zero[] = {"m-BATCH-01", "m-METADATA", "m-BATCH-0"};
    write_model(path, 1536, 2, leading_zero, lens, 3);
    assert_int_equal(check_written(path, err, sizeof err), PPS_ECORRUPT);

    const char *other[] = {"m-BATCH-1", "m-METADATA", "n-BATCH-0"};
    write_model(path, 1536, 2, other, lens, 3);
    assert_int_equal(check_written(path, err, sizeof err), PPS_ECORRUPT);
    assert_non_null(strstr(err, "record 2 of model m at offset"));
}

static void test_writer_misuse(void **state)
{
    (void)state;
    char path[256], tmp[300];
    tmp_path(path, sizeof path, "misuse.bin");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct kvbin_writer *w;
    uint8_t b[16] = {0};

    /* a model missing a record is never published */
    assert_int_equal(kvbin_writer_open(&w, path), 0);
    assert_int_equal(kvbin_writer_model(w, "m", 16, 1, 2), 0);
    assert_int_equal(kvbin_writer_record(w, "m-BATCH-0", b, 16), 0);
    assert_int_equal(kvbin_writer_close(w), PPS_EINVAL);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_not_equal(access(tmp, F_OK), 0);

    assert_int_equal(kvbin_writer_open(&w, path), 0);
    assert_int_equal(kvbin_writer_record(w, "m-BATCH-0", b, 16), PPS_EINVAL); /* no model yet */
    assert_int_equal(kvbin_writer_model(w, "bad name", 16, 1, 2), PPS_EINVAL);
    assert_int_equal(kvbin_writer_model(w, "", 16, 1, 2), PPS_EINVAL);
    assert_int_equal(kvbin_writer_model(w, "m", 16, 1, 1), 0);
    assert_int_equal(kvbin_writer_model(w, "n", 16, 1, 1), PPS_EINVAL); /* m unfinished */
    assert_int_equal(kvbin_writer_record_begin(w, "m-BATCH-0", 16), 0);
    assert_int_equal(kvbin_writer_record_write(w, b, 17), PPS_EINVAL); /* more than announced */
    assert_int_equal(kvbin_writer_record_write(w, b, 8), 0);
    assert_int_equal(kvbin_writer_record_end(w), PPS_EINVAL);          /* fewer than announced */
    assert_int_equal(kvbin_writer_record_write(w, b, 8), 0);
    assert_int_equal(kvbin_writer_record_end(w), 0);
    assert_int_equal(kvbin_writer_record(w, "m-BATCH-1", b, 16), PPS_EINVAL); /* one too many */
    assert_true(access(tmp, F_OK) == 0);
    kvbin_writer_abort(w);
    assert_int_not_equal(access(tmp, F_OK), 0);
    assert_int_not_equal(access(path, F_OK), 0);

    char long_name[KVBIN_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_false(kvbin_name_ok(long_name));
    long_name[KVBIN_NAME_MAX] = '\0';
    assert_true(kvbin_name_ok(long_name));
    assert_false(kvbin_name_ok("tab\tname"));

    assert_int_equal(kvbin_writer_open(&w, "/nonexistent/dir/kv.bin"), PPS_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_empty_file_roundtrip),
        cmocka_unit_test(test_truncation_everywhere),
        cmocka_unit_test(test_corrupt_values_and_headers),
        cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_check_model),
        cmocka_unit_test(test_writer_misuse),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
