/* store: the storage daemon's engine: append-only data files of checksummed
 * records (store_record), an in-memory index rebuilt at start-up
 * (store_index), streamed PUTs, zero-copy-ready GETs, tombstones and
 * compaction.
 *
 * Files are data-00000001.pps, data-00000002.pps, ... in one directory. New
 * records go to the newest ("active") file until it passes file_size, then a
 * new file starts. A PUT reserves its whole record in the active file,
 * writes a PENDING header, streams the value in, then rewrites the header as
 * PUT with the data hash and fdatasyncs before the index (and the client)
 * sees it; several PUTs may stream into one file at once. A reader takes a
 * reference on the file that holds its value and reads with the file's fd,
 * so overwriting, deleting or compacting the value under it never changes
 * the bytes it reads: records are never rewritten in place, and a file
 * removed by compaction stays open until its last reader finishes.
 *
 * The one thing easy to get wrong: a tombstone may only be dropped once no
 * older PUT of its key remains in any file, else a restart resurrects the
 * value; the index keeps, per key, the count of PUT records on disk for
 * exactly this. Thread-safe: a rwlock guards the index and the accounting, a
 * mutex the active file's append position. */
#ifndef PIPEPS_STORE_H
#define PIPEPS_STORE_H

#include <stdint.h>

#define STORE_DEFAULT_FILE_SIZE (1ull << 30)
#define STORE_DEFAULT_COMPACT_RATIO 0.5

struct store;
struct store_file;

struct store_options {
    const char *dir;           /* created if missing */
    uint64_t file_size;        /* roll to a new data file past this; 0 = default */
    double compact_ratio;      /* compact a file whose live fraction is below this; 0 = default */
    int background_compaction; /* 1: a thread compacts when deletes leave a file mostly dead */
};

/* Open (and recover) the store in opt->dir: scans every data file,
 * verifies each record's checksums, truncates torn tails, rebuilds the
 * index. PPS_EBUSY if another process has the directory open. */
int store_open(const struct store_options *opt, struct store **out);
/* Stops the compactor and closes the files; no PUT may be in progress. */
void store_close(struct store *s);
const char *store_dir(const struct store *s);

/* Streamed PUT: begin reserves room for the record (PPS_ENOSPACE if the
 * file system has not got it), write appends value bytes (hashing them on
 * the way), commit makes it durable and visible; abort drops it without a
 * trace. commit and abort free the handle, also on failure. */
struct store_put;
int store_put_begin(struct store *s, const char *key, uint32_t key_len, uint64_t value_len,
                    struct store_put **out);
int store_put_write(struct store_put *p, const void *data, uint64_t len);
int store_put_commit(struct store_put *p);
void store_put_abort(struct store_put *p);
/* Whole value from memory. */
int store_put_value(struct store *s, const char *key, uint32_t key_len, const void *value,
                    uint64_t value_len);

/* A value range pinned for reading: the bytes are [off, off + len) of fd,
 * also readable at data (a read-only mapping of the file, NULL if mmap
 * failed), unchanged until store_read_end whatever happens to the key
 * meanwhile. */
struct store_read {
    struct store_file *file;
    int fd;
    uint64_t off;
    uint64_t len;
    uint64_t value_len;  /* of the whole value */
    const uint8_t *data; /* the len bytes, mapped; or NULL */
};
/* length UINT64_MAX: to the end. PPS_ENOTFOUND, or PPS_ERANGE if the range
 * is not inside the value. */
int store_read_begin(struct store *s, const char *key, uint32_t key_len, uint64_t offset,
                     uint64_t length, struct store_read *out);
void store_read_end(struct store_read *r);

/* Durable tombstone; PPS_ENOTFOUND if the key has no value. */
int store_delete(struct store *s, const char *key, uint32_t key_len);

/* The live keys starting with prefix (prefix_len 0: every key), in no
 * particular order: fn is called for each with the value's length, under
 * the index's read lock (fn must not call into the store); a non-zero
 * return stops the walk and is returned. A snapshot for maintenance (gc),
 * not for the data path: writers wait while it runs. */
typedef int (*store_list_fn)(void *ctx, const char *key, uint32_t key_len, uint64_t value_len);
int store_list(struct store *s, const char *prefix, uint32_t prefix_len, store_list_fn fn, void *ctx);

/* Compact now, in the caller's thread, every file whose live fraction is
 * below the ratio (the active file is sealed first if it qualifies), and
 * remove wholly dead files. Returns 0 or the first error. */
int store_compact(struct store *s);

struct store_stats {
    uint64_t values;          /* keys with a live value */
    uint64_t bytes_stored;    /* sum of their value lengths */
    uint64_t bytes_live;      /* bytes of live records (headers, keys, values, needed tombstones) */
    uint64_t bytes_on_disk;   /* sum of data file sizes */
    uint64_t bytes_free;      /* free space of the directory's file system (statvfs) */
    uint64_t files;           /* data files */
    uint64_t tombstones;      /* deleted keys whose tombstone must be kept */
    uint64_t puts;            /* committed since start */
    uint64_t put_aborts;      /* PUTs dropped before commit */
    uint64_t deletes;
    uint64_t compactions;     /* files compacted or removed */
    uint64_t bytes_copied;    /* by compaction */
    uint64_t bytes_reclaimed; /* by compaction and aborted PUTs */
    uint64_t recovered_records; /* valid records found at start-up */
    uint64_t recovery_dropped;  /* bytes truncated or skipped at start-up */
};
void store_get_stats(struct store *s, struct store_stats *out);

#endif
