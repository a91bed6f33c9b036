/* kvbin: reader and writer of kv.bin, the file generate_file writes and
 * deploy_file reads (format in docs/formats.md).
 *
 * Per model: a header (name, total padded size, number of batches, number of
 * records), then key/value records ("<model>-METADATA", "<model>-BATCH-<i>"),
 * each with an XXH3-64 checksum of its value. The reader maps the file and
 * hands out values in place; every length is checked against the file size
 * before use, and a truncated or corrupt file gives an error naming the
 * offset. Values are 512-byte aligned in the file so a batch can be used
 * from the mapping as is. */
#ifndef PIPEPS_KVBIN_H
#define PIPEPS_KVBIN_H

#include <stddef.h>
#include <stdint.h>

#define KVBIN_NAME_MAX 255

struct kvbin_record {
    char key[KVBIN_NAME_MAX + 1];
    uint64_t file_offset;   /* where the value starts in the file */
    uint64_t len;
    uint64_t checksum;      /* XXH3-64 of the value */
    const uint8_t *data;    /* the value inside the mapping */
};

struct kvbin_model {
    char name[KVBIN_NAME_MAX + 1];
    uint64_t total_size;    /* padded bytes of all batches */
    uint32_t nbatches;
    uint32_t nrecords;
    struct kvbin_record *records;
};

struct kvbin {
    void *map;
    uint64_t map_len;
    uint32_t nmodels;
    struct kvbin_model *models;
};

/* Map and index path. Structure is validated (bounds, counts, names) but
 * value checksums are checked by kvbin_verify (deploy_file and `pipeps
 * inspect --verify` call it) so opening a big file stays cheap. On error,
 * err (if non-NULL) holds a message naming the offset. */
int kvbin_open(struct kvbin *kv, const char *path, char *err, size_t errlen);
void kvbin_close(struct kvbin *kv);
/* PPS_ECORRUPT (message with key and offset in err) if the checksum differs. */
int kvbin_verify(const struct kvbin_record *rec, char *err, size_t errlen);
const struct kvbin_model *kvbin_find_model(const struct kvbin *kv, const char *name);
const struct kvbin_record *kvbin_find_record(const struct kvbin_model *m, const char *key);

struct kvbin_writer;

/* Writes to "<path>.tmp" and renames over path on kvbin_writer_close, so a
 * crash never leaves a half-written kv.bin under the real name. */
int kvbin_writer_open(struct kvbin_writer **out, const char *path);
/* Start a model; exactly nrecords kvbin_writer_record calls must follow. */
int kvbin_writer_model(struct kvbin_writer *w, const char *name, uint64_t total_size,
                       uint32_t nbatches, uint32_t nrecords);
int kvbin_writer_record(struct kvbin_writer *w, const char *key, const void *data, uint64_t len);
/* Flush, fsync, rename. Frees w whatever the result. */
int kvbin_writer_close(struct kvbin_writer *w);
/* Drop the temporary file. Frees w. */
void kvbin_writer_abort(struct kvbin_writer *w);

#endif
