/* Unit tests for the metadata storage's building blocks: the log record
 * codec, the log file (create, append, replay, torn tail, mid-log damage,
 * atomic rewrite, directory lock), the sync thread and the index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "metadata/meta_client.h"
#include "metadata/meta_index.h"
#include "metadata/meta_log.h"
#include "metadata/meta_sync.h"

/* ---- helpers ---- */

struct seen {
    int n;
    uint8_t type[64];
    char key[64][64];
    char value[64][64];
};

static int collect(void *ctx, const struct meta_record *rec)
{
    struct seen *s = ctx;
    assert_true(s->n < 64);
    s->type[s->n] = rec->type;
    assert_true(rec->key_len < 64 && rec->value_len < 64);
    memcpy(s->key[s->n], rec->key, rec->key_len);
    s->key[s->n][rec->key_len] = '\0';
    memcpy(s->value[s->n], rec->value, rec->value_len);
    s->value[s->n][rec->value_len] = '\0';
    s->n++;
    return 0;
}

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/pipeps-test-meta-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static char *log_path(const char *dir)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, META_LOG_FILE);
    return path;
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static void append_raw(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void put_str(struct wbuf *wb, const char *k, const char *v)
{
    meta_record_encode(wb, META_REC_PUT, k, (uint32_t)strlen(k), v, (uint32_t)strlen(v));
}

/* A log in a fresh directory holding: put a=1, put b=2, delete a, put c=3. */
static char *make_log(struct wbuf *wb)
{
    char *dir = make_tmpdir();
    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(st.created, 1);
    wbuf_init(wb);
    put_str(wb, "a", "1");
    put_str(wb, "b", "2");
    meta_record_encode(wb, META_REC_DELETE, "a", 1, NULL, 0);
    put_str(wb, "c", "3");
    assert_int_equal(meta_log_append(&log, wb->data, wb->len), 0);
    assert_int_equal(meta_log_sync(&log), 0);
    assert_int_equal(log.size, META_LOG_HEADER_SIZE + wb->len);
    meta_log_close(&log);
    return dir;
}

static void expect_four(const struct seen *s)
{
    assert_int_equal(s->n, 4);
    assert_int_equal(s->type[0], META_REC_PUT);
    assert_string_equal(s->key[0], "a");
    assert_string_equal(s->value[0], "1");
    assert_string_equal(s->key[1], "b");
    assert_int_equal(s->type[2], META_REC_DELETE);
    assert_string_equal(s->key[2], "a");
    assert_string_equal(s->value[2], "");
    assert_string_equal(s->key[3], "c");
    assert_string_equal(s->value[3], "3");
}

/* ---- record codec ---- */

static void test_record_roundtrip(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    put_str(&wb, "model-BATCH-0", "location-bytes");
    meta_record_encode(&wb, META_REC_PUT, "empty", 5, NULL, 0);
    meta_record_encode(&wb, META_REC_DELETE, "gone", 4, NULL, 0);
    assert_int_equal(wb.len, meta_record_size(13, 14) + meta_record_size(5, 0) +
                                 meta_record_size(4, 0));
    /* The layout is documented in docs/formats.md: check the fixed fields. */
    assert_memory_equal(wb.data, "MREC", 4);
    assert_int_equal(wb.data[4], META_REC_PUT);
    assert_int_equal(load_le32(wb.data + 8), 13);
    assert_int_equal(load_le32(wb.data + 12), 14);
    assert_memory_equal(wb.data + 16, "model-BATCH-0", 13);

    struct meta_record rec;
    size_t n, pos = 0;
    assert_int_equal(meta_record_decode(wb.data, wb.len, &rec, &n), 0);
    assert_int_equal(rec.type, META_REC_PUT);
    assert_int_equal(rec.key_len, 13);
    assert_memory_equal(rec.key, "model-BATCH-0", 13);
    assert_int_equal(rec.value_len, 14);
    assert_memory_equal(rec.value, "location-bytes", 14);
    pos += n;
    assert_int_equal(meta_record_decode(wb.data + pos, wb.len - pos, &rec, &n), 0);
    assert_int_equal(rec.value_len, 0);
    pos += n;
    assert_int_equal(meta_record_decode(wb.data + pos, wb.len - pos, &rec, &n), 0);
    assert_int_equal(rec.type, META_REC_DELETE);
    assert_memory_equal(rec.key, "gone", 4);
    pos += n;
    assert_int_equal(pos, wb.len);
    wbuf_free(&wb);
}

static void test_record_truncated(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    put_str(&wb, "key", "value");
    struct meta_record rec;
    size_t n;
    for (size_t len = 0; len < wb.len; len++)
        assert_int_equal(meta_record_decode(wb.data, len, &rec, &n), PPS_ETRUNCATED);
    assert_int_equal(meta_record_decode(wb.data, wb.len, &rec, &n), 0);
    wbuf_free(&wb);
}

static void test_record_corrupt(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    put_str(&wb, "key", "value");
    struct meta_record rec;
    size_t n;
    /* Every single-byte flip anywhere in the record is caught. */
    for (size_t i = 0; i < wb.len; i++) {
        wb.data[i] ^= 0x40;
        int rc = meta_record_decode(wb.data, wb.len, &rec, &n);
        assert_true(rc == PPS_ECORRUPT || rc == PPS_ETRUNCATED);
        wb.data[i] ^= 0x40;
    }
    assert_int_equal(meta_record_decode(wb.data, wb.len, &rec, &n), 0);

    /* Lengths over the limits are refused before the length is trusted. */
    uint8_t h[META_REC_HEADER_SIZE] = {'M', 'R', 'E', 'C', META_REC_PUT, 0, 0, 0};
    store_le32(h + 8, META_MAX_KEY + 1);
    assert_int_equal(meta_record_decode(h, sizeof h, &rec, &n), PPS_ECORRUPT);
    store_le32(h + 8, 3);
    store_le32(h + 12, META_MAX_VALUE + 1);
    assert_int_equal(meta_record_decode(h, sizeof h, &rec, &n), PPS_ECORRUPT);
    store_le32(h + 8, 0); /* empty key */
    store_le32(h + 12, 0);
    assert_int_equal(meta_record_decode(h, sizeof h, &rec, &n), PPS_ECORRUPT);
    store_le32(h + 8, 3);
    h[4] = 7; /* unknown type */
    assert_int_equal(meta_record_decode(h, sizeof h, &rec, &n), PPS_ECORRUPT);
    h[4] = META_REC_DELETE; /* a delete with a value */
    store_le32(h + 12, 5);
    assert_int_equal(meta_record_decode(h, sizeof h, &rec, &n), PPS_ECORRUPT);
    wbuf_free(&wb);
}

/* ---- log file ---- */

static void test_log_create_and_replay(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(st.created, 0);
    assert_int_equal(st.records, 4);
    assert_int_equal(st.puts, 3);
    assert_int_equal(st.deletes, 1);
    assert_int_equal(st.torn_tail, 0);
    assert_int_equal(st.dropped_bytes, 0);
    expect_four(&s);
    /* Appends continue at the end of the replayed log. */
    struct wbuf more;
    wbuf_init(&more);
    put_str(&more, "d", "4");
    assert_int_equal(meta_log_append(&log, more.data, more.len), 0);
    assert_int_equal(meta_log_sync(&log), 0);
    meta_log_close(&log);
    memset(&s, 0, sizeof s);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(s.n, 5);
    assert_string_equal(s.key[4], "d");
    meta_log_close(&log);
    wbuf_free(&more);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

static void test_log_torn_tail_cut_record(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    off_t good = file_size(log_path(dir));
    /* A record whose write was interrupted: only its first 20 bytes exist. */
    struct wbuf torn;
    wbuf_init(&torn);
    put_str(&torn, "e", "a value that never got written completely");
    append_raw(log_path(dir), torn.data, 20);

    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    expect_four(&s);
    assert_int_equal(st.torn_tail, 1);
    assert_int_equal(st.damaged, 0);
    assert_int_equal(st.dropped_bytes, 20);
    assert_int_equal(st.damage_offset, good);
    assert_int_equal(log.size, good);
    assert_int_equal(file_size(log_path(dir)), good); /* truncated on disk */
    /* The next append lands where the torn record was, and replays. */
    assert_int_equal(meta_log_append(&log, torn.data, torn.len), 0);
    assert_int_equal(meta_log_sync(&log), 0);
    meta_log_close(&log);
    memset(&s, 0, sizeof s);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(s.n, 5);
    assert_string_equal(s.key[4], "e");
    assert_int_equal(st.dropped_bytes, 0);
    meta_log_close(&log);
    wbuf_free(&torn);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

static void test_log_torn_tail_garbage_and_bad_checksum(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    off_t good = file_size(log_path(dir));
    /* A complete record with a flipped value byte, then random garbage. */
    struct wbuf bad;
    wbuf_init(&bad);
    put_str(&bad, "x", "flipped");
    bad.data[META_REC_HEADER_SIZE + 2] ^= 1;
    append_raw(log_path(dir), bad.data, bad.len);
    uint8_t junk[300];
    srand(7);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rand();
    append_raw(log_path(dir), junk, sizeof junk);

    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    expect_four(&s);
    assert_int_equal(st.torn_tail, 1);
    assert_int_equal(st.dropped_bytes, bad.len + sizeof junk);
    assert_int_equal(file_size(log_path(dir)), good);
    meta_log_close(&log);
    wbuf_free(&bad);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

static void test_log_damage_in_the_middle(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    off_t size = file_size(log_path(dir));
    /* Flip a byte inside the second record ("b"): valid records follow. */
    size_t second = META_LOG_HEADER_SIZE + (size_t)meta_record_size(1, 1);
    int fd = open(log_path(dir), O_RDWR);
    uint8_t byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)second + 17), 1);
    byte ^= 0xff;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)second + 17), 1);
    close(fd);

    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    /* Refused: truncating would drop acknowledged writes after the damage. */
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), PPS_ECORRUPT);
    assert_int_equal(st.damaged, 1);
    assert_int_equal(st.damage_offset, second);
    assert_int_equal(file_size(log_path(dir)), size); /* untouched */

    /* With truncate_damaged: keep what precedes the damage, save the rest. */
    memset(&s, 0, sizeof s);
    assert_int_equal(meta_log_open(&log, dir, 1, collect, &s, &st), 0);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.key[0], "a");
    assert_int_equal(file_size(log_path(dir)), (off_t)second);
    char side[512];
    snprintf(side, sizeof side, "%s/%s.damaged-%zu", dir, META_LOG_FILE, second);
    assert_int_equal(file_size(side), size - (off_t)second);
    meta_log_close(&log);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

static void test_log_rewrite(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    struct wbuf snap;
    wbuf_init(&snap);
    put_str(&snap, "b", "2");
    put_str(&snap, "c", "3");
    int switched = 0;
    assert_int_equal(meta_log_rewrite(&log, snap.data, snap.len, &switched), 0);
    assert_int_equal(switched, 1);
    assert_int_equal(log.size, META_LOG_HEADER_SIZE + snap.len);
    /* Appends after the rewrite go to the new file. */
    struct wbuf more;
    wbuf_init(&more);
    meta_record_encode(&more, META_REC_DELETE, "b", 1, NULL, 0);
    assert_int_equal(meta_log_append(&log, more.data, more.len), 0);
    assert_int_equal(meta_log_sync(&log), 0);
    meta_log_close(&log);
    assert_int_equal(file_size(log_path(dir)), META_LOG_HEADER_SIZE + snap.len + more.len);
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/%s", dir, META_LOG_TMP_FILE);
    assert_int_equal(access(tmp, F_OK), -1);

    memset(&s, 0, sizeof s);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.key[0], "b");
    assert_string_equal(s.key[1], "c");
    assert_int_equal(s.type[2], META_REC_DELETE);
    meta_log_close(&log);
    wbuf_free(&more);
    wbuf_free(&snap);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

static void test_log_leftover_tmp_lock_and_bad_files(void **state)
{
    (void)state;
    struct wbuf wb;
    char *dir = make_log(&wb);
    /* A compaction interrupted by a crash leaves meta.log.compact behind. */
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/%s", dir, META_LOG_TMP_FILE);
    int fd = open(tmp, O_WRONLY | O_CREAT, 0644);
    assert_int_equal(write(fd, "partial", 7), 7);
    close(fd);

    struct meta_log log, second;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    expect_four(&s);
    assert_int_equal(access(tmp, F_OK), -1);
    /* A second user of the same directory is refused while the first lives. */
    assert_int_equal(meta_log_open(&second, dir, 0, collect, &s, &st), PPS_EBUSY);
    meta_log_close(&log);

    /* Not a log: bad magic, or shorter than the header. */
    fd = open(log_path(dir), O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "NOTALOG-xxxxxxxxxxxx", 20), 20);
    close(fd);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), PPS_ECORRUPT);
    fd = open(log_path(dir), O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "PPSM", 4), 4);
    close(fd);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), PPS_ECORRUPT);
    wbuf_free(&wb);
    rm_rf(dir);
    free(dir);
}

/* ---- sync thread ---- */

static void test_sync_thread_append_and_rewrite(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    struct meta_log log;
    struct meta_replay_stats st;
    struct seen s = {0};
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    struct meta_sync *sync;
    assert_int_equal(meta_sync_start(&sync, &log), 0);
    struct meta_sync_job job;
    memset(&job, 0, sizeof job);
    wbuf_init(&job.records);
    wbuf_init(&job.snapshot);
    put_str(&job.records, "k1", "v1");
    put_str(&job.records, "k2", "v2");
    job.kind = META_SYNC_APPEND;
    job.seq_end = 2;
    job.nrecords = 2;
    meta_sync_submit(sync, &job);
    struct meta_sync_job *done = meta_sync_wait(sync);
    assert_ptr_equal(done, &job);
    assert_int_equal(job.rc, 0);
    assert_int_equal(job.file_size, META_LOG_HEADER_SIZE + job.records.len);

    /* A compaction job replaces the log with the snapshot. */
    wbuf_reset(&job.records);
    put_str(&job.records, "k1", "v3");
    put_str(&job.snapshot, "k1", "v3");
    put_str(&job.snapshot, "k2", "v2");
    job.kind = META_SYNC_REWRITE;
    meta_sync_submit(sync, &job);
    done = meta_sync_wait(sync);
    assert_ptr_equal(done, &job);
    assert_int_equal(job.rc, 0);
    assert_int_equal(job.compacted, 1);
    assert_int_equal(job.file_size, META_LOG_HEADER_SIZE + job.snapshot.len);
    meta_sync_stop(sync);
    meta_log_close(&log);

    memset(&s, 0, sizeof s);
    assert_int_equal(meta_log_open(&log, dir, 0, collect, &s, &st), 0);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.key[0], "k1");
    assert_string_equal(s.value[0], "v3");
    assert_string_equal(s.key[1], "k2");
    meta_log_close(&log);
    wbuf_free(&job.records);
    wbuf_free(&job.snapshot);
    rm_rf(dir);
    free(dir);
}

/* ---- index ---- */

static uint8_t *dup_value(const char *v)
{
    size_t n = strlen(v);
    uint8_t *p = malloc(n ? n : 1);
    memcpy(p, v, n);
    return p;
}

static void test_index_basic(void **state)
{
    (void)state;
    struct meta_index ix;
    meta_index_init(&ix);
    int64_t old;
    meta_index_put(&ix, "alpha", 5, dup_value("one"), 3, 1, &old);
    assert_int_equal(old, -1);
    meta_index_put(&ix, "alpha", 5, dup_value("three"), 5, 2, &old);
    assert_int_equal(old, 3);
    assert_int_equal(ix.count, 1);
    assert_int_equal(ix.key_bytes, 5);
    assert_int_equal(ix.value_bytes, 5);
    const struct meta_entry *e = meta_index_get(&ix, "alpha", 5);
    assert_non_null(e);
    assert_int_equal(e->seq, 2);
    assert_memory_equal(e->value, "three", 5);
    assert_string_equal(e->key, "alpha");
    assert_null(meta_index_get(&ix, "alph", 4));
    uint32_t oldlen;
    assert_int_equal(meta_index_delete(&ix, "alpha", 5, &oldlen), 0);
    assert_int_equal(oldlen, 5);
    assert_int_equal(meta_index_delete(&ix, "alpha", 5, &oldlen), PPS_ENOTFOUND);
    assert_int_equal(ix.count, 0);
    assert_int_equal(ix.key_bytes, 0);
    assert_int_equal(ix.value_bytes, 0);
    meta_index_free(&ix);
}

static void test_index_many_and_list(void **state)
{
    (void)state;
    struct meta_index ix;
    meta_index_init(&ix);
    char key[32];
    /* Enough keys to grow the table several times. */
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "m%d-BATCH-%d", i % 7, i);
        meta_index_put(&ix, key, (uint32_t)n, dup_value("v"), 1, (uint64_t)i, NULL);
    }
    assert_int_equal(ix.count, 5000);
    assert_true(ix.nbuckets >= 4096);
    for (int i = 0; i < 5000; i += 3) {
        int n = snprintf(key, sizeof key, "m%d-BATCH-%d", i % 7, i);
        const struct meta_entry *e = meta_index_get(&ix, key, (uint32_t)n);
        assert_non_null(e);
        assert_int_equal(e->seq, i);
    }
    const struct meta_entry **arr;
    size_t n;
    assert_int_equal(meta_index_list(&ix, "m3-", 3, &arr, &n), 0);
    size_t expect = 0;
    for (int i = 0; i < 5000; i++)
        expect += (i % 7 == 3);
    assert_int_equal(n, expect);
    for (size_t i = 0; i + 1 < n; i++) {
        assert_memory_equal(arr[i]->key, "m3-", 3);
        assert_true(strcmp(arr[i]->key, arr[i + 1]->key) < 0); /* sorted */
    }
    free(arr);
    /* Byte order, shorter key first on a common prefix. */
    struct meta_index small;
    meta_index_init(&small);
    meta_index_put(&small, "ab", 2, dup_value(""), 0, 0, NULL);
    meta_index_put(&small, "a", 1, dup_value(""), 0, 0, NULL);
    meta_index_put(&small, "b", 1, dup_value(""), 0, 0, NULL);
    meta_index_put(&small, "a\xff", 2, dup_value(""), 0, 0, NULL);
    assert_int_equal(meta_index_list(&small, "", 0, &arr, &n), 0);
    assert_int_equal(n, 4);
    assert_string_equal(arr[0]->key, "a");
    assert_string_equal(arr[1]->key, "ab");
    assert_string_equal(arr[2]->key, "a\xff");
    assert_string_equal(arr[3]->key, "b");
    free(arr);
    assert_int_equal(meta_index_list(&small, "zz", 2, &arr, &n), 0);
    assert_int_equal(n, 0);
    free(arr);
    meta_index_free(&small);
    meta_index_free(&ix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_record_truncated),
        cmocka_unit_test(test_record_corrupt),
        cmocka_unit_test(test_log_create_and_replay),
        cmocka_unit_test(test_log_torn_tail_cut_record),
        cmocka_unit_test(test_log_torn_tail_garbage_and_bad_checksum),
        cmocka_unit_test(test_log_damage_in_the_middle),
        cmocka_unit_test(test_log_rewrite),
        cmocka_unit_test(test_log_leftover_tmp_lock_and_bad_files),
        cmocka_unit_test(test_sync_thread_append_and_rewrite),
        cmocka_unit_test(test_index_basic),
        cmocka_unit_test(test_index_many_and_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
