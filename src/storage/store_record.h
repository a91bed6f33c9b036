/* store_record: the on-disk record of the storage daemon's data files, and
 * the scanner that rebuilds the index from them.
 *
 * A data file is a sequence of records; each is a 48-byte header, the key,
 * then the value (format in docs/formats.md):
 *
 *   off size field
 *    0   4   magic       "PPSR" (0x52535050 little-endian)
 *    4   1   version     STORE_RECORD_VERSION
 *    5   1   kind        PUT, DELETE (tombstone) or PENDING (a PUT whose
 *                        value is not complete: being received, aborted, or
 *                        cut by a crash; never served)
 *    6   2   reserved    0
 *    8   4   key_len     1..STORAGE_MAX_KEY
 *   12   4   reserved    0
 *   16   8   value_len   bytes of value after the key (0 for DELETE)
 *   24   8   seq         store-wide sequence number; the highest wins
 *   32   8   data_hash   XXH3-64 of key || value
 *   40   8   head_hash   XXH3-64 of bytes 0..39 || key
 *
 * The header hash lets the scanner trust value_len (and so skip a record
 * without reading it) before it has read the value; the data hash catches a
 * value that never fully reached the disk. The one thing easy to get wrong:
 * a header that looks valid is not a record until its data hash matches,
 * and only what follows the last valid record is a "torn tail"; a bad
 * record with valid records after it is skipped, never truncated. */
#ifndef PIPEPS_STORE_RECORD_H
#define PIPEPS_STORE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define STORE_RECORD_HEADER 48
#define STORE_RECORD_MAGIC 0x52535050u
#define STORE_RECORD_VERSION 1

enum store_record_kind {
    STORE_RECORD_PUT = 1,
    STORE_RECORD_DELETE = 2,
    STORE_RECORD_PENDING = 3,
};

struct store_record {
    uint8_t kind;
    uint32_t key_len;
    uint64_t value_len;
    uint64_t seq;
    uint64_t data_hash;
};

/* Total bytes the record occupies in its file (header + key + value). */
static inline uint64_t store_record_size(uint32_t key_len, uint64_t value_len)
{
    return STORE_RECORD_HEADER + (uint64_t)key_len + value_len;
}

/* Write the header for r and key (key_len bytes) into out, computing the
 * header hash. The data hash is taken from r as given. */
void store_record_encode(uint8_t out[STORE_RECORD_HEADER], const struct store_record *r,
                         const char *key);
/* Decode the fixed fields of a header: PPS_ECORRUPT on bad magic, version,
 * kind, reserved bits, key length or value length. The header hash is not
 * checked (it covers the key, which the caller may not have read yet). */
int store_record_decode(const uint8_t in[STORE_RECORD_HEADER], struct store_record *r);
/* Check the header hash of a decoded header against its key bytes:
 * 0 or PPS_ECORRUPT. */
int store_record_check(const uint8_t in[STORE_RECORD_HEADER], const char *key);
/* XXH3-64 of key || value, for a value held in memory. */
uint64_t store_record_data_hash(const char *key, uint32_t key_len, const void *value,
                                uint64_t value_len);

/* What the scanner found at one place of a file. */
struct store_scan_event {
    uint64_t off;                   /* where the record or region starts */
    uint64_t len;                   /* its length in the file */
    const struct store_record *rec; /* a valid PUT or DELETE; NULL for a skipped region */
    const char *key;                /* NUL-terminated, valid during the callback; NULL if skipped */
    const char *why;                /* for a skipped region: what was wrong */
};

/* Called for every valid record and every skipped region, in file order.
 * A non-zero return stops the scan and is returned by store_scan_file. */
typedef int (*store_scan_fn)(void *ctx, const struct store_scan_event *ev);

struct store_scan_result {
    uint64_t file_size; /* size of the file when scanned */
    uint64_t end;       /* end of the last valid record (0 if none) */
    uint64_t tail;      /* start of the torn tail (== file_size if none); >= end */
    uint64_t nrecords;  /* valid PUT and DELETE records */
    uint64_t skipped;   /* bytes in skipped regions before the tail */
    uint64_t max_seq;   /* highest seq of a valid record, 0 if none */
    const char *tail_why; /* why the bytes from `tail` on are not records; NULL if none */
};

/* Scan a data file from offset 0, verifying both hashes of every record.
 * A PENDING record, or a complete record whose data hash fails, is a
 * skipped region; bytes that do not start a valid header are skipped up to
 * the next valid header (resynchronisation). A record cut off by the end of
 * the file, or garbage with no valid header after it, is the torn tail,
 * reported in res->tail, not truncated here. Returns 0, an I/O error, or
 * the callback's non-zero value. */
int store_scan_file(int fd, store_scan_fn fn, void *ctx, struct store_scan_result *res);

#endif
