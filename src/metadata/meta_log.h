/* meta_log: the append-only log that makes the metadata storage durable.
 *
 * File DIR/meta.log = a 16-byte file header, then records (docs/formats.md):
 *
 *   off size field
 *    0   4   magic      "MREC"
 *    4   1   type       1 = put, 2 = delete
 *    5   3   reserved   0
 *    8   4   key_len    1..META_MAX_KEY
 *   12   4   value_len  0..META_MAX_VALUE (0 for a delete)
 *   16   k   key
 *   16+k v   value
 *   16+k+v 8 checksum   XXH3-64 of bytes [0, 16+k+v) of the record
 *
 * The log is the truth; the in-memory index is rebuilt from it on start
 * (meta_log_open replays every record through a callback). A crash can leave
 * a torn record at the tail: replay detects it (short record or checksum
 * mismatch, with no valid record after it), logs it and truncates it away.
 * Damage followed by valid records is not a torn write but a damaged disk:
 * open refuses with PPS_ECORRUPT, naming the offset, unless told to truncate
 * there (the dropped bytes are first saved to a side file).
 *
 * This module does plain synchronous file I/O; the server runs it on its
 * sync thread (meta_sync). It is not thread-safe: one user at a time. The one
 * thing easy to get wrong: a rewrite (compaction) is only durable after the
 * new file is fsync'd, renamed over the old one AND the directory fsync'd. */
#ifndef PIPEPS_META_LOG_H
#define PIPEPS_META_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define META_LOG_FILE "meta.log"
#define META_LOG_TMP_FILE "meta.log.compact"
#define META_LOG_LOCK_FILE "LOCK"
#define META_LOG_MAGIC "PPSMLOG1" /* 8 bytes, then u32 version, u32 reserved */
#define META_LOG_VERSION 1
#define META_LOG_HEADER_SIZE 16

#define META_REC_MAGIC 0x4345524Du /* "MREC" as little-endian bytes */
#define META_REC_HEADER_SIZE 16
#define META_REC_OVERHEAD 24 /* header + checksum */

enum meta_rec_type { META_REC_PUT = 1, META_REC_DELETE = 2 };

struct meta_record {
    uint8_t type;
    const uint8_t *key; /* points into the decoded bytes */
    uint32_t key_len;
    const uint8_t *value;
    uint32_t value_len;
};

static inline uint64_t meta_record_size(uint32_t key_len, uint32_t value_len)
{
    return (uint64_t)META_REC_OVERHEAD + key_len + value_len;
}

/* Append one encoded record to wb. */
void meta_record_encode(struct wbuf *wb, uint8_t type, const void *key, uint32_t key_len,
                        const void *value, uint32_t value_len);
/* Decode the record at data[0..len). 0 and *rec_len on success;
 * PPS_ETRUNCATED if the bytes end before the record does; PPS_ECORRUPT for a
 * bad magic, type, reserved field, length over the limits or checksum. */
int meta_record_decode(const uint8_t *data, size_t len, struct meta_record *rec,
                       size_t *rec_len);

struct meta_log {
    int fd;
    int dir_fd;
    int lock_fd;
    char *dir;
    char *path;
    uint64_t size; /* bytes in the file, header included */
};

struct meta_replay_stats {
    uint64_t records;
    uint64_t puts;
    uint64_t deletes;
    uint64_t dropped_bytes;  /* cut from the tail */
    uint64_t damage_offset;  /* where the first bad record starts (if any) */
    int torn_tail;           /* 1 if a torn tail was dropped */
    int damaged;             /* 1 if damage with valid records after it was found */
    int created;             /* 1 if the log did not exist */
};

/* Called for every valid record in file order; a non-zero return aborts
 * the open with that code. */
typedef int (*meta_replay_fn)(void *ctx, const struct meta_record *rec);

/* Create dir (and parents) if needed, lock it (PPS_EBUSY if another process
 * holds it), create an empty log or replay the existing one through fn, and
 * truncate a torn tail. truncate_damaged: on mid-log damage, save the bytes
 * from the damage on to DIR/meta.log.damaged-<offset> and truncate there
 * instead of failing. */
int meta_log_open(struct meta_log *log, const char *dir, int truncate_damaged, meta_replay_fn fn,
                  void *ctx, struct meta_replay_stats *stats);
void meta_log_close(struct meta_log *log);

/* Write len bytes (whole encoded records) at the end; not yet durable. On
 * failure the partial write is cut off again where possible. */
int meta_log_append(struct meta_log *log, const void *data, size_t len);
/* Make everything appended so far durable (fdatasync). */
int meta_log_sync(struct meta_log *log);
/* Replace the whole log by a file holding `data` (encoded records) after the
 * header: write DIR/meta.log.compact, fsync, rename over meta.log, fsync
 * DIR. *switched is set to 1 once the rename happened (the log now is the
 * new file, even if the directory fsync then failed); on a failure with
 * *switched == 0 the old log is untouched and still in use. */
int meta_log_rewrite(struct meta_log *log, const void *data, size_t len, int *switched);

#endif
