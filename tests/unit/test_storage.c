/* Unit tests for the storage engine: record codec, the data-file scanner
 * (torn tails, skipped regions, resynchronisation), index rebuild on
 * reopen, aborted PUTs, compaction and tombstone survival, readers pinned
 * across compaction, concurrent PUTs. Each test works in its own
 * temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/err.h"
#include "common/log.h"
#include "storage/storage_client.h"
#include "storage/store.h"
#include "storage/store_record.h"

/* ---- helpers ---- */

static char *make_dir(void)
{
    char *d = strdup("/tmp/pps-store-test-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void remove_dir(char *d)
{
    DIR *dir = opendir(d);
    if (dir) {
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", d, de->d_name);
            unlink(p);
        }
        closedir(dir);
    }
    rmdir(d);
    free(d);
}

static struct store *open_store(const char *dir, uint64_t file_size)
{
    struct store_options o = {.dir = dir, .file_size = file_size};
    struct store *s = NULL;
    assert_int_equal(store_open(&o, &s), 0);
    return s;
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static void put(struct store *s, const char *key, size_t n, uint32_t seed)
{
    uint8_t *v = malloc(n ? n : 1);
    fill(v, n, seed);
    assert_int_equal(store_put_value(s, key, (uint32_t)strlen(key), v, n), 0);
    free(v);
}

/* Assert key holds the n bytes made by seed. */
static void expect(struct store *s, const char *key, size_t n, uint32_t seed)
{
    struct store_read rd;
    assert_int_equal(store_read_begin(s, key, (uint32_t)strlen(key), 0, UINT64_MAX, &rd), 0);
    assert_int_equal(rd.len, n);
    uint8_t *got = malloc(n ? n : 1), *want = malloc(n ? n : 1);
    assert_int_equal(pread(rd.fd, got, n, (off_t)rd.off), (ssize_t)n);
    fill(want, n, seed);
    assert_memory_equal(got, want, n);
    assert_non_null(rd.data);
    assert_memory_equal(rd.data, want, n);
    free(got);
    free(want);
    store_read_end(&rd);
}

static void expect_missing(struct store *s, const char *key)
{
    struct store_read rd;
    assert_int_equal(store_read_begin(s, key, (uint32_t)strlen(key), 0, UINT64_MAX, &rd),
                     PPS_ENOTFOUND);
}

static int count_files(const char *d)
{
    int n = 0;
    DIR *dir = opendir(d);
    struct dirent *de;
    while ((de = readdir(dir)) != NULL)
        n += strncmp(de->d_name, "data-", 5) == 0;
    closedir(dir);
    return n;
}

static off_t file_size_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Append one record by hand; corrupt = 1 flips a value byte after hashing. */
static void append_record(int fd, uint8_t kind, const char *key, const uint8_t *value,
                          uint64_t vlen, uint64_t seq, int corrupt)
{
    struct store_record r = {.kind = kind, .key_len = (uint32_t)strlen(key), .value_len = vlen,
                             .seq = seq};
    r.data_hash = store_record_data_hash(key, r.key_len, value, vlen);
    uint8_t hdr[STORE_RECORD_HEADER];
    store_record_encode(hdr, &r, key);
    assert_int_equal(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
    assert_int_equal(write(fd, key, r.key_len), (ssize_t)r.key_len);
    if (vlen) {
        uint8_t *v = malloc(vlen);
        memcpy(v, value, vlen);
        if (corrupt)
            v[vlen / 2] ^= 0x40;
        assert_int_equal(write(fd, v, vlen), (ssize_t)vlen);
        free(v);
    }
}

struct scan_log {
    int nrec, nskip;
    uint64_t rec_off[16];
    char keys[16][32];
    uint64_t skip_off[16], skip_len[16];
};

static int log_cb(void *ctx, const struct store_scan_event *ev)
{
    struct scan_log *l = ctx;
    if (ev->rec) {
        l->rec_off[l->nrec] = ev->off;
        snprintf(l->keys[l->nrec], sizeof l->keys[0], "%s", ev->key);
        l->nrec++;
    } else {
        l->skip_off[l->nskip] = ev->off;
        l->skip_len[l->nskip] = ev->len;
        l->nskip++;
    }
    return 0;
}

static int scan_path(const char *path, struct scan_log *l, struct store_scan_result *res)
{
    memset(l, 0, sizeof *l);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    int rc = store_scan_file(fd, log_cb, l, res);
    close(fd);
    return rc;
}

/* ---- record codec ---- */

static void test_record_codec(void **state)
{
    (void)state;
    const char *key = "model-BATCH-3";
    struct store_record r = {.kind = STORE_RECORD_PUT, .key_len = (uint32_t)strlen(key),
                             .value_len = 123456, .seq = 42, .data_hash = 0x1122334455667788ull};
    uint8_t hdr[STORE_RECORD_HEADER];
    store_record_encode(hdr, &r, key);
    assert_memory_equal(hdr, "PPSR", 4);
    struct store_record d;
    assert_int_equal(store_record_decode(hdr, &d), 0);
    assert_int_equal(store_record_check(hdr, key), 0);
    assert_int_equal(d.kind, STORE_RECORD_PUT);
    assert_int_equal(d.key_len, r.key_len);
    assert_true(d.value_len == 123456 && d.seq == 42 && d.data_hash == r.data_hash);
    assert_int_equal(store_record_size(d.key_len, d.value_len), 48 + 13 + 123456);

    /* Every single-bit flip in the header is caught by decode or the hash.
     * (A flip may change key_len: the key buffer has room for any length.) */
    static char padded[STORAGE_MAX_KEY + 1];
    memcpy(padded, key, strlen(key));
    for (int i = 0; i < STORE_RECORD_HEADER; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t bad[STORE_RECORD_HEADER];
            memcpy(bad, hdr, sizeof bad);
            bad[i] ^= (uint8_t)(1u << bit);
            int ok = store_record_decode(bad, &d) == 0 && store_record_check(bad, padded) == 0;
            assert_false(ok);
        }
    }
    /* ... and so is a different key. */
    assert_int_equal(store_record_check(hdr, "model-BATCH-4"), PPS_ECORRUPT);

    /* Over-limit lengths are refused by decode. */
    r.key_len = STORAGE_MAX_KEY + 1;
    char longkey[STORAGE_MAX_KEY + 2];
    memset(longkey, 'k', sizeof longkey);
    store_record_encode(hdr, &r, longkey);
    assert_int_equal(store_record_decode(hdr, &d), PPS_ECORRUPT);
    r.key_len = 3;
    r.value_len = STORAGE_MAX_VALUE + 1;
    store_record_encode(hdr, &r, "abc");
    assert_int_equal(store_record_decode(hdr, &d), PPS_ECORRUPT);
    /* A tombstone carries no value. */
    r.kind = STORE_RECORD_DELETE;
    r.value_len = 5;
    store_record_encode(hdr, &r, "abc");
    assert_int_equal(store_record_decode(hdr, &d), PPS_ECORRUPT);

    /* The data hash is XXH3-64 of key || value. */
    uint8_t buf[7] = {'a', 'b', 'c', 1, 2, 3, 4};
    assert_true(store_record_data_hash("abc", 3, buf + 3, 4) == XXH3_64bits(buf, sizeof buf));
}

/* ---- scanner ---- */

static void test_scan_valid_and_torn(void **state)
{
    (void)state;
    char *dir = make_dir();
    char path[256];
    snprintf(path, sizeof path, "%s/f", dir);
    uint8_t v[3000];
    fill(v, sizeof v, 1);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    append_record(fd, STORE_RECORD_PUT, "a", v, 1000, 1, 0);
    append_record(fd, STORE_RECORD_DELETE, "a", NULL, 0, 2, 0);
    append_record(fd, STORE_RECORD_PUT, "b", v, 3000, 3, 0);
    off_t clean = lseek(fd, 0, SEEK_END);
    close(fd);

    struct scan_log l;
    struct store_scan_result res;
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 3);
    assert_int_equal(l.nskip, 0);
    assert_int_equal(res.end, clean);
    assert_int_equal(res.tail, clean);
    assert_null(res.tail_why);
    assert_int_equal(res.max_seq, 3);
    assert_int_equal(l.rec_off[1], 48 + 1 + 1000);

    /* A record cut off in its value. */
    fd = open(path, O_RDWR | O_APPEND);
    append_record(fd, STORE_RECORD_PUT, "c", v, 3000, 4, 0);
    close(fd);
    assert_int_equal(truncate(path, clean + 48 + 1 + 1500), 0);
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 3);
    assert_int_equal(res.end, clean);
    assert_int_equal(res.tail, clean);
    assert_non_null(res.tail_why);

    /* A header cut off. */
    assert_int_equal(truncate(path, clean + 20), 0);
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 3);
    assert_int_equal(res.tail, clean);

    /* Garbage after the last record. */
    assert_int_equal(truncate(path, clean), 0);
    fd = open(path, O_RDWR | O_APPEND);
    assert_int_equal(write(fd, v, 777), 777);
    close(fd);
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 3);
    assert_int_equal(res.tail, clean);
    assert_int_equal(res.file_size, clean + 777);

    /* A complete last record whose value does not match its hash. */
    assert_int_equal(truncate(path, clean), 0);
    fd = open(path, O_RDWR | O_APPEND);
    append_record(fd, STORE_RECORD_PUT, "c", v, 3000, 4, 1);
    close(fd);
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 3);
    assert_int_equal(res.end, clean);
    assert_int_equal(res.tail, clean);
    remove_dir(dir);
}

static void test_scan_skips_inside(void **state)
{
    (void)state;
    char *dir = make_dir();
    char path[256];
    snprintf(path, sizeof path, "%s/f", dir);
    uint8_t v[2000];
    fill(v, sizeof v, 2);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    append_record(fd, STORE_RECORD_PUT, "a", v, 100, 1, 0);
    off_t p1 = lseek(fd, 0, SEEK_CUR);
    append_record(fd, STORE_RECORD_PENDING, "x", v, 2000, 0, 0); /* incomplete PUT */
    off_t p2 = lseek(fd, 0, SEEK_CUR);
    append_record(fd, STORE_RECORD_PUT, "b", v, 500, 2, 1); /* corrupt value */
    off_t p3 = lseek(fd, 0, SEEK_CUR);
    assert_int_equal(write(fd, "garbage that is not a record", 28), 28);
    off_t p4 = lseek(fd, 0, SEEK_CUR);
    append_record(fd, STORE_RECORD_PUT, "c", v, 700, 3, 0);
    off_t end = lseek(fd, 0, SEEK_CUR);
    close(fd);

    struct scan_log l;
    struct store_scan_result res;
    assert_int_equal(scan_path(path, &l, &res), 0);
    assert_int_equal(l.nrec, 2);
    assert_string_equal(l.keys[0], "a");
    assert_string_equal(l.keys[1], "c");
    assert_int_equal(l.rec_off[1], p4);
    assert_int_equal(l.nskip, 3);
    assert_int_equal(l.skip_off[0], p1);
    assert_int_equal(l.skip_len[0], p2 - p1);
    assert_int_equal(l.skip_off[1], p2);
    assert_int_equal(l.skip_off[2], p3);
    assert_int_equal(l.skip_len[2], 28);
    assert_int_equal(res.end, end);
    assert_int_equal(res.tail, end);
    assert_int_equal(res.skipped, (uint64_t)(p4 - p1));
    remove_dir(dir);
}

/* ---- store ---- */

static void test_store_rebuild(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    put(s, "k1", 1000, 1);
    put(s, "k2", 0, 2); /* empty values are values */
    put(s, "k3", 70000, 3);
    put(s, "k1", 2000, 11); /* overwrite */
    assert_int_equal(store_delete(s, "k3", 2), 0);
    assert_int_equal(store_delete(s, "k3", 2), PPS_ENOTFOUND);
    assert_int_equal(store_delete(s, "nope", 4), PPS_ENOTFOUND);
    struct store_read rd;
    assert_int_equal(store_read_begin(s, "k1", 2, 100, 1900, &rd), 0);
    assert_int_equal(rd.len, 1900);
    store_read_end(&rd);
    assert_int_equal(store_read_begin(s, "k1", 2, 100, 1901, &rd), PPS_ERANGE);
    assert_int_equal(store_read_begin(s, "k1", 2, 2001, UINT64_MAX, &rd), PPS_ERANGE);
    assert_int_equal(store_read_begin(s, "k1", 2, 2000, UINT64_MAX, &rd), 0);
    assert_int_equal(rd.len, 0);
    store_read_end(&rd);
    assert_int_equal(store_read_begin(s, "k1", 2, UINT64_MAX - 5, 10, &rd), PPS_ERANGE);
    store_close(s);

    s = open_store(dir, 0);
    expect(s, "k1", 2000, 11);
    expect(s, "k2", 0, 2);
    expect_missing(s, "k3");
    /* The file grows past what was there when its mapping was made. */
    put(s, "k5", 300000, 5);
    expect(s, "k5", 300000, 5);
    assert_int_equal(store_delete(s, "k5", 2), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.values, 2);
    assert_int_equal(st.bytes_stored, 2000);
    assert_int_equal(st.recovered_records, 5);
    assert_int_equal(st.puts, 1);
    assert_int_equal(st.recovery_dropped, 0);
    /* New writes continue after the recovered ones. */
    put(s, "k4", 10, 4);
    store_close(s);
    s = open_store(dir, 0);
    expect(s, "k4", 10, 4);
    expect(s, "k1", 2000, 11);
    store_close(s);
    remove_dir(dir);
}

static void test_store_torn_tail(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    put(s, "a", 5000, 1);
    put(s, "b", 6000, 2);
    store_close(s);
    char path[512];
    snprintf(path, sizeof path, "%s/data-00000001.pps", dir);
    off_t clean = file_size_of(path);

    /* A crash in the middle of a PUT: a PUT header whose value was cut. */
    uint8_t v[4000];
    fill(v, sizeof v, 9);
    int fd = open(path, O_RDWR | O_APPEND);
    append_record(fd, STORE_RECORD_PUT, "c", v, 4000, 99, 0);
    close(fd);
    assert_int_equal(truncate(path, clean + 48 + 1 + 1234), 0);

    s = open_store(dir, 0);
    expect(s, "a", 5000, 1);
    expect(s, "b", 6000, 2);
    expect_missing(s, "c");
    assert_int_equal(file_size_of(path), clean);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.recovery_dropped, 48 + 1 + 1234);
    put(s, "d", 300, 4);
    store_close(s);

    /* Random bytes appended: dropped too. */
    fd = open(path, O_RDWR | O_APPEND);
    assert_int_equal(write(fd, v, 333), 333);
    close(fd);
    s = open_store(dir, 0);
    expect(s, "a", 5000, 1);
    expect(s, "d", 300, 4);
    store_get_stats(s, &st);
    assert_int_equal(st.recovery_dropped, 333);
    store_close(s);
    remove_dir(dir);
}

static void test_store_abort(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    put(s, "keep", 100, 1);
    struct store_stats before, after;
    store_get_stats(s, &before);

    /* An aborted PUT at the tail leaves the file as it was. */
    struct store_put *p;
    uint8_t v[8192];
    fill(v, sizeof v, 5);
    assert_int_equal(store_put_begin(s, "gone", 4, sizeof v, &p), 0);
    assert_int_equal(store_put_write(p, v, 4096), 0);
    store_put_abort(p);
    expect_missing(s, "gone");
    store_get_stats(s, &after);
    assert_int_equal(after.bytes_on_disk, before.bytes_on_disk);
    assert_int_equal(after.put_aborts, 1);

    /* Two PUTs at once; the first is aborted after the second committed:
     * its region stays, as a PENDING record that scans skip. */
    struct store_put *a, *b;
    assert_int_equal(store_put_begin(s, "first", 5, sizeof v, &a), 0);
    assert_int_equal(store_put_begin(s, "second", 6, sizeof v, &b), 0);
    assert_int_equal(store_put_write(b, v, sizeof v), 0);
    assert_int_equal(store_put_write(a, v, 100), 0);
    assert_int_equal(store_put_commit(b), 0);
    store_put_abort(a);
    expect_missing(s, "first");
    /* Committing short of the announced length is refused. */
    assert_int_equal(store_put_begin(s, "short", 5, 10, &p), 0);
    assert_int_equal(store_put_write(p, v, 5), 0);
    assert_int_equal(store_put_write(p, v, 6), PPS_EINVAL);
    assert_int_equal(store_put_commit(p), PPS_EINVAL);
    expect_missing(s, "short");
    store_close(s);

    s = open_store(dir, 0);
    expect_missing(s, "first");
    expect_missing(s, "short");
    struct store_read rd;
    assert_int_equal(store_read_begin(s, "second", 6, 0, UINT64_MAX, &rd), 0);
    assert_int_equal(rd.len, sizeof v);
    store_read_end(&rd);
    expect(s, "keep", 100, 1);
    store_close(s);
    remove_dir(dir);
}

static void test_store_compaction(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 64 * 1024);
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "v%02d", i);
        put(s, key, 10000, (uint32_t)i);
    }
    int files_before = count_files(dir);
    assert_true(files_before >= 3);
    for (int i = 0; i < 20; i++) {
        if (i % 5 == 0)
            continue;
        snprintf(key, sizeof key, "v%02d", i);
        assert_int_equal(store_delete(s, key, (uint32_t)strlen(key)), 0);
    }
    put(s, "v05", 12000, 55); /* overwrite one that stays */
    struct store_stats st0, st1;
    store_get_stats(s, &st0);
    assert_int_equal(store_compact(s), 0);
    store_get_stats(s, &st1);
    assert_true(st1.compactions > 0);
    assert_true(st1.bytes_on_disk < st0.bytes_on_disk);
    assert_true(count_files(dir) < files_before);
    assert_int_equal(st1.values, 4);
    for (int i = 0; i < 20; i += 5) {
        snprintf(key, sizeof key, "v%02d", i);
        if (i == 5)
            expect(s, key, 12000, 55);
        else
            expect(s, key, 10000, (uint32_t)i);
    }
    /* Nothing left to do: a second pass changes nothing. */
    assert_int_equal(store_compact(s), 0);
    store_close(s);

    /* After a restart, deleted keys stay deleted. */
    s = open_store(dir, 64 * 1024);
    store_get_stats(s, &st1);
    assert_int_equal(st1.values, 4);
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "v%02d", i);
        if (i % 5)
            expect_missing(s, key);
    }
    expect(s, "v05", 12000, 55);
    store_close(s);
    remove_dir(dir);
}

/* A tombstone must outlive compaction while an older PUT of its key is
 * still on disk in a file that is not compacted. */
static void test_store_tombstone_kept(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 100 * 1000);
    put(s, "K", 1000, 1);          /* file 1: K v1 ... */
    put(s, "big1", 98000, 2);      /* ... and live data that keeps file 1 */
    put(s, "K", 1000, 3);          /* file 2: K v2 (v1 now dead) */
    put(s, "filler", 90000, 4);
    assert_int_equal(store_delete(s, "filler", 6), 0);
    assert_int_equal(store_delete(s, "K", 1), 0); /* tombstone in file 2 or 3 */
    assert_int_equal(store_compact(s), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.tombstones, 1); /* K v1 is still in file 1 */
    expect_missing(s, "K");
    store_close(s);

    s = open_store(dir, 100 * 1000);
    expect_missing(s, "K");
    expect(s, "big1", 98000, 2);
    /* Once file 1 goes, the tombstone can go too. */
    assert_int_equal(store_delete(s, "big1", 4), 0);
    assert_int_equal(store_compact(s), 0);
    store_get_stats(s, &st);
    assert_int_equal(st.tombstones, 0);
    assert_int_equal(st.values, 0);
    assert_int_equal(st.bytes_live, 0);
    store_close(s);
    s = open_store(dir, 100 * 1000);
    expect_missing(s, "K");
    expect_missing(s, "big1");
    store_get_stats(s, &st);
    assert_int_equal(st.values, 0);
    store_close(s);
    remove_dir(dir);
}

/* After a crash in the middle of a compaction a record can exist twice
 * (original and copy, same seq) and a copy can sit in a newer file than the
 * tombstone that killed it: the highest seq wins, not the file order. */
static void test_store_seq_beats_file_order(void **state)
{
    (void)state;
    char *dir = make_dir();
    uint8_t v1[500], va[700], vb[900];
    fill(v1, sizeof v1, 1);
    fill(va, sizeof va, 2);
    fill(vb, sizeof vb, 3);
    char path[512];
    snprintf(path, sizeof path, "%s/data-00000001.pps", dir);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    append_record(fd, STORE_RECORD_PUT, "K", v1, sizeof v1, 1, 0);
    append_record(fd, STORE_RECORD_PUT, "A", va, sizeof va, 2, 0);
    close(fd);
    snprintf(path, sizeof path, "%s/data-00000002.pps", dir);
    fd = open(path, O_RDWR | O_CREAT, 0644);
    append_record(fd, STORE_RECORD_DELETE, "K", NULL, 0, 3, 0);
    append_record(fd, STORE_RECORD_PUT, "B", vb, sizeof vb, 4, 0);
    close(fd);
    snprintf(path, sizeof path, "%s/data-00000003.pps", dir);
    fd = open(path, O_RDWR | O_CREAT, 0644);
    append_record(fd, STORE_RECORD_PUT, "K", v1, sizeof v1, 1, 0); /* stale copy */
    append_record(fd, STORE_RECORD_PUT, "A", va, sizeof va, 2, 0); /* copy of the live one */
    close(fd);

    struct store *s = open_store(dir, 0);
    expect_missing(s, "K");
    expect(s, "A", sizeof va, 2);
    expect(s, "B", sizeof vb, 3);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.values, 2);
    assert_int_equal(st.tombstones, 1); /* two PUTs of K remain on disk */
    /* New writes get seqs above everything on disk. */
    put(s, "K", 100, 9);
    expect(s, "K", 100, 9);
    /* Compaction sorts it out: nothing comes back, nothing is lost. */
    assert_int_equal(store_delete(s, "A", 1), 0);
    assert_int_equal(store_compact(s), 0);
    store_close(s);
    s = open_store(dir, 0);
    expect(s, "K", 100, 9);
    expect(s, "B", sizeof vb, 3);
    expect_missing(s, "A");
    store_close(s);
    remove_dir(dir);
}

static void test_store_reader_pinned(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 32 * 1024);
    put(s, "x", 20000, 7);
    struct store_read rd;
    assert_int_equal(store_read_begin(s, "x", 1, 1000, 5000, &rd), 0);
    /* Overwrite, delete and compact the value away under the reader. */
    put(s, "x", 20000, 8);
    assert_int_equal(store_delete(s, "x", 1), 0);
    assert_int_equal(store_compact(s), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/data-00000001.pps", dir);
    assert_int_equal(access(path, F_OK), -1); /* the file is gone... */
    uint8_t got[5000], want[20000];
    fill(want, sizeof want, 7);
    assert_int_equal(pread(rd.fd, got, sizeof got, (off_t)rd.off), (ssize_t)sizeof got);
    assert_memory_equal(got, want + 1000, sizeof got); /* ...its bytes are not */
    assert_non_null(rd.data);                          /* nor through the mapping */
    assert_memory_equal(rd.data, want + 1000, sizeof got);
    store_read_end(&rd);
    expect_missing(s, "x");
    store_close(s);
    remove_dir(dir);
}

struct put_job {
    struct store *s;
    int id;
};

static void *put_thread(void *arg)
{
    struct put_job *j = arg;
    char key[32];
    for (int i = 0; i < 25; i++) {
        snprintf(key, sizeof key, "t%d-%d", j->id, i);
        size_t n = (size_t)(1000 + (j->id * 7919 + i * 104729) % 60000);
        uint8_t *v = malloc(n);
        fill(v, n, (uint32_t)(j->id * 100 + i));
        struct store_put *p;
        if (store_put_begin(j->s, key, (uint32_t)strlen(key), n, &p) != 0)
            abort();
        /* In pieces, so that the PUTs of different threads interleave. */
        for (size_t off = 0; off < n; off += 4096) {
            size_t m = n - off < 4096 ? n - off : 4096;
            if (store_put_write(p, v + off, m) != 0)
                abort();
        }
        if (store_put_commit(p) != 0)
            abort();
        free(v);
    }
    return NULL;
}

static void test_store_concurrent_puts(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 256 * 1024);
    pthread_t t[4];
    struct put_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct put_job){s, i};
        pthread_create(&t[i], NULL, put_thread, &jobs[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    store_close(s);
    s = open_store(dir, 256 * 1024);
    char key[32];
    for (int id = 0; id < 4; id++) {
        for (int i = 0; i < 25; i++) {
            snprintf(key, sizeof key, "t%d-%d", id, i);
            expect(s, key, (size_t)(1000 + (id * 7919 + i * 104729) % 60000),
                   (uint32_t)(id * 100 + i));
        }
    }
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.values, 100);
    assert_int_equal(st.recovery_dropped, 0);
    store_close(s);
    remove_dir(dir);
}

static void test_store_bad_args_and_lock(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    struct store_put *p;
    assert_int_equal(store_put_begin(s, "", 0, 1, &p), PPS_EINVAL);
    assert_int_equal(store_put_begin(s, "a\0b", 3, 1, &p), PPS_EINVAL);
    assert_int_equal(store_put_begin(s, "a", 1, STORAGE_MAX_VALUE + 1, &p), PPS_ETOOBIG);
    char big[STORAGE_MAX_KEY + 1];
    memset(big, 'k', sizeof big);
    assert_int_equal(store_put_begin(s, big, STORAGE_MAX_KEY + 1, 1, &p), PPS_EINVAL);
    assert_int_equal(store_put_value(s, big, STORAGE_MAX_KEY, "v", 1), 0);
    struct store_options o = {.dir = dir};
    struct store *second = NULL;
    assert_int_equal(store_open(&o, &second), PPS_EBUSY);
    assert_null(second);
    store_close(s);
    remove_dir(dir);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_codec),
        cmocka_unit_test(test_scan_valid_and_torn),
        cmocka_unit_test(test_scan_skips_inside),
        cmocka_unit_test(test_store_rebuild),
        cmocka_unit_test(test_store_torn_tail),
        cmocka_unit_test(test_store_abort),
        cmocka_unit_test(test_store_compaction),
        cmocka_unit_test(test_store_tombstone_kept),
        cmocka_unit_test(test_store_seq_beats_file_order),
        cmocka_unit_test(test_store_reader_pinned),
        cmocka_unit_test(test_store_concurrent_puts),
        cmocka_unit_test(test_store_bad_args_and_lock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
