/* store_record: record codec and data-file scanner; see store_record.h. */
#include "storage/store_record.h"
#include "common/buf.h"
#include "common/err.h"
#include "storage/storage_client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* Scan reads go through one buffer of this size: large enough that hashing
 * a big value costs few system calls. */
#define SCAN_CHUNK (4u << 20)
#define HEAD_AND_KEY (STORE_RECORD_HEADER + STORAGE_MAX_KEY)

static uint64_t head_hash(const uint8_t *hdr, const char *key, uint32_t key_len)
{
    XXH3_state_t *st = XXH3_createState();
    PPS_ASSERT(st);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, hdr, 40);
    XXH3_64bits_update(st, key, key_len);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

void store_record_encode(uint8_t out[STORE_RECORD_HEADER], const struct store_record *r,
                         const char *key)
{
    store_le32(out, STORE_RECORD_MAGIC);
    out[4] = STORE_RECORD_VERSION;
    out[5] = r->kind;
    store_le16(out + 6, 0);
    store_le32(out + 8, r->key_len);
    store_le32(out + 12, 0);
    store_le64(out + 16, r->value_len);
    store_le64(out + 24, r->seq);
    store_le64(out + 32, r->data_hash);
    store_le64(out + 40, head_hash(out, key, r->key_len));
}

int store_record_decode(const uint8_t in[STORE_RECORD_HEADER], struct store_record *r)
{
    memset(r, 0, sizeof *r);
    if (load_le32(in) != STORE_RECORD_MAGIC || in[4] != STORE_RECORD_VERSION ||
        load_le16(in + 6) != 0 || load_le32(in + 12) != 0)
        return PPS_ECORRUPT;
    r->kind = in[5];
    r->key_len = load_le32(in + 8);
    r->value_len = load_le64(in + 16);
    r->seq = load_le64(in + 24);
    r->data_hash = load_le64(in + 32);
    if (r->kind < STORE_RECORD_PUT || r->kind > STORE_RECORD_PENDING)
        return PPS_ECORRUPT;
    if (r->key_len == 0 || r->key_len > STORAGE_MAX_KEY || r->value_len > STORAGE_MAX_VALUE)
        return PPS_ECORRUPT;
    if (r->kind == STORE_RECORD_DELETE && r->value_len != 0)
        return PPS_ECORRUPT;
    return 0;
}

int store_record_check(const uint8_t in[STORE_RECORD_HEADER], const char *key)
{
    uint32_t key_len = load_le32(in + 8);
    if (key_len == 0 || key_len > STORAGE_MAX_KEY)
        return PPS_ECORRUPT;
    return head_hash(in, key, key_len) == load_le64(in + 40) ? 0 : PPS_ECORRUPT;
}

uint64_t store_record_data_hash(const char *key, uint32_t key_len, const void *value,
                                uint64_t value_len)
{
    XXH3_state_t *st = XXH3_createState();
    PPS_ASSERT(st);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, key, key_len);
    XXH3_64bits_update(st, value, (size_t)value_len);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

/* pread exactly n bytes; PPS_ETRUNCATED if the file ends first. */
static int read_at(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return PPS_EIO;
        }
        if (r == 0)
            return PPS_ETRUNCATED;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Does a valid header (fixed fields, key inside the file, header hash)
 * start at off? Fills r and key (NUL-terminated) if so. */
static int header_at(int fd, uint64_t off, uint64_t size, uint8_t *hk, struct store_record *r,
                     char *key)
{
    uint64_t avail = size - off;
    size_t n = avail < HEAD_AND_KEY ? (size_t)avail : HEAD_AND_KEY;
    if (n < STORE_RECORD_HEADER)
        return PPS_ETRUNCATED;
    int rc = read_at(fd, hk, n, off);
    if (rc)
        return rc;
    if (store_record_decode(hk, r))
        return PPS_ECORRUPT;
    if (STORE_RECORD_HEADER + (size_t)r->key_len > n)
        return PPS_ETRUNCATED;
    memcpy(key, hk + STORE_RECORD_HEADER, r->key_len);
    key[r->key_len] = '\0';
    return store_record_check(hk, key);
}

/* Find the next offset >= from where a valid header starts; *found = 0 if
 * there is none before the end of the file. */
static int resync(int fd, uint64_t from, uint64_t size, uint8_t *buf, uint8_t *hk,
                  struct store_record *r, char *key, uint64_t *at, int *found)
{
    static const uint8_t magic[4] = {'P', 'P', 'S', 'R'};
    *found = 0;
    uint64_t pos = from;
    while (pos + STORE_RECORD_HEADER <= size) {
        uint64_t left = size - pos;
        size_t n = left < SCAN_CHUNK ? (size_t)left : SCAN_CHUNK;
        int rc = read_at(fd, buf, n, pos);
        if (rc)
            return rc;
        size_t i = 0;
        while (i + sizeof magic <= n) {
            uint8_t *hit = memmem(buf + i, n - i, magic, sizeof magic);
            if (!hit)
                break;
            uint64_t cand = pos + (uint64_t)(hit - buf);
            rc = header_at(fd, cand, size, hk, r, key);
            if (rc == 0) {
                *at = cand;
                *found = 1;
                return 0;
            }
            if (rc == PPS_EIO)
                return rc;
            i = (size_t)(hit - buf) + 1;
        }
        if (n < SCAN_CHUNK)
            break;
        pos += n - (sizeof magic - 1); /* a magic may straddle two chunks */
    }
    return 0;
}

/* Recompute the data hash of the record at off from the file. */
static int data_hash_at(int fd, uint64_t off, const struct store_record *r, const char *key,
                        uint8_t *buf, uint64_t *hash)
{
    XXH3_state_t *st = XXH3_createState();
    PPS_ASSERT(st);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, key, r->key_len);
    uint64_t pos = off + STORE_RECORD_HEADER + r->key_len;
    uint64_t left = r->value_len;
    int rc = 0;
    while (left) {
        size_t n = left < SCAN_CHUNK ? (size_t)left : SCAN_CHUNK;
        rc = read_at(fd, buf, n, pos);
        if (rc)
            break;
        XXH3_64bits_update(st, buf, n);
        pos += n;
        left -= n;
    }
    *hash = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return rc;
}

static int emit_skip(store_scan_fn fn, void *ctx, struct store_scan_result *res, uint64_t off,
                     uint64_t len, const char *why)
{
    res->skipped += len;
    struct store_scan_event ev = {.off = off, .len = len, .why = why};
    return fn ? fn(ctx, &ev) : 0;
}

int store_scan_file(int fd, store_scan_fn fn, void *ctx, struct store_scan_result *res)
{
    memset(res, 0, sizeof *res);
    struct stat stbuf;
    if (fstat(fd, &stbuf) < 0)
        return PPS_EIO;
    uint64_t size = (uint64_t)stbuf.st_size;
    res->file_size = size;
    uint8_t *buf = pps_xmalloc(SCAN_CHUNK);
    uint8_t hk[HEAD_AND_KEY];
    char key[STORAGE_MAX_KEY + 1];
    struct store_record r;
    uint64_t p = 0;
    int rc = 0;
    const char *tail_why = NULL;

    while (p < size) {
        rc = header_at(fd, p, size, hk, &r, key);
        if (rc == PPS_EIO)
            break;
        if (rc == PPS_ETRUNCATED || rc == PPS_ECORRUPT) {
            /* Not a header here. Valid records may still follow (a damaged
             * header in the middle): look for the next one. */
            int cut = rc == PPS_ETRUNCATED;
            uint64_t next = 0;
            int found = 0;
            rc = resync(fd, p + 1, size, buf, hk, &r, key, &next, &found);
            if (rc)
                break;
            if (!found) {
                tail_why = cut ? "record header cut off by the end of the file"
                               : "bytes that are not a record, up to the end of the file";
                break;
            }
            rc = emit_skip(fn, ctx, res, p, next - p, "bytes that are not a record (bad header)");
            if (rc)
                break;
            p = next;
            continue; /* header_at at p succeeds again: a cheap re-read */
        }
        uint64_t rec_len = store_record_size(r.key_len, r.value_len);
        if (rec_len > size - p) {
            tail_why = "record cut off by the end of the file";
            break;
        }
        if (r.kind == STORE_RECORD_PENDING) {
            rc = emit_skip(fn, ctx, res, p, rec_len, "incomplete PUT (never acknowledged)");
            if (rc)
                break;
            p += rec_len;
            continue;
        }
        uint64_t h = 0;
        rc = data_hash_at(fd, p, &r, key, buf, &h);
        if (rc)
            break;
        if (h != r.data_hash) {
            if (p + rec_len == size) {
                tail_why = "data checksum mismatch in the last record";
                break;
            }
            rc = emit_skip(fn, ctx, res, p, rec_len, "data checksum mismatch");
            if (rc)
                break;
            p += rec_len;
            continue;
        }
        struct store_scan_event ev = {.off = p, .len = rec_len, .rec = &r, .key = key};
        res->nrecords++;
        if (r.seq > res->max_seq)
            res->max_seq = r.seq;
        p += rec_len;
        res->end = p;
        if (fn && (rc = fn(ctx, &ev)) != 0)
            break;
    }
    free(buf);
    if (rc)
        return rc;
    res->tail = p;
    res->tail_why = p < size ? tail_why : NULL;
    return 0;
}
