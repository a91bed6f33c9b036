/* kvbin: reader and writer of kv.bin, the file generate_file writes and
 * deploy_file reads (format in docs/formats.md).
 *
 * Per model: a header (name, total padded size, number of batches, number of
 * records), then key/value records ("<model>-METADATA", "<model>-BATCH-<i>"),
 * each with an XXH3-64 checksum of its value. Every header carries its own
 * checksum too. The reader maps the file and hands out values in place;
 * every length is checked against the file size before use, and a truncated
 * or corrupt file gives an error naming the offset. Headers and values start
 * on 512-byte boundaries so a batch can be used from the mapping as is. */
#ifndef PIPEPS_KVBIN_H
#define PIPEPS_KVBIN_H

#include <stddef.h>
#include <stdint.h>

#define KVBIN_NAME_MAX 255
#define KVBIN_VERSION 1
#define KVBIN_ALIGN 512
#define KVBIN_FILE_HEADER_SIZE 64
#define KVBIN_ENTRY_HEADER_SIZE 32 /* model and record headers, before the name */
#define KVBIN_ERR_LEN 512          /* room enough for any error message */

struct kvbin_record {
    char key[KVBIN_NAME_MAX + 1];
    uint64_t header_offset; /* where the record header starts in the file */
    uint64_t file_offset;   /* where the value starts in the file */
    uint64_t len;
    uint64_t checksum;      /* XXH3-64 of the value */
    const uint8_t *data;    /* the value inside the mapping */
};

struct kvbin_model {
    char name[KVBIN_NAME_MAX + 1];
    uint64_t header_offset;
    uint64_t total_size;    /* padded bytes of all batches */
    uint32_t nbatches;
    uint32_t nrecords;
    struct kvbin_record *records;
};

struct kvbin {
    char *path;             /* for messages; owned */
    void *map;
    uint64_t map_len;
    int owns_map;           /* 1: kvbin_close unmaps */
    uint32_t nmodels;
    struct kvbin_model *models;
};

/* Map and index path. Structure is validated (bounds, counts, names, header
 * checksums) but value checksums are checked by kvbin_verify (deploy_file
 * and `pipeps inspect --verify` call it) so opening a big file stays cheap.
 * On error, err (if non-NULL) holds a message naming the path and offset.
 * The file must not be truncated while open (the mapping would fault):
 * writers replace kv.bin by rename, never in place. */
int kvbin_open(struct kvbin *kv, const char *path, char *err, size_t errlen);
/* The same over bytes already in memory (tests, fuzzing); data must outlive
 * kv and is not freed by kvbin_close. name is used in messages. */
int kvbin_open_buffer(struct kvbin *kv, const void *data, uint64_t len, const char *name,
                      char *err, size_t errlen);
void kvbin_close(struct kvbin *kv);
/* PPS_ECORRUPT (message with key and offset in err) if the checksum differs. */
int kvbin_verify(const struct kvbin_record *rec, char *err, size_t errlen);
/* Check that m is a complete model as deploy_file needs it: exactly the
 * records "<name>-METADATA" and "<name>-BATCH-0" .. "<name>-BATCH-<n-1>"
 * (n = nbatches), batch sizes summing to total_size; with verify, also every
 * value checksum. Messages name the path, the model and the offset. */
int kvbin_check_model(const struct kvbin *kv, const struct kvbin_model *m, int verify,
                      char *err, size_t errlen);
const struct kvbin_model *kvbin_find_model(const struct kvbin *kv, const char *name);
const struct kvbin_record *kvbin_find_record(const struct kvbin_model *m, const char *key);
/* 1 if name is a valid model name or key: 1..KVBIN_NAME_MAX bytes of
 * printable ASCII without spaces. */
int kvbin_name_ok(const char *name);

struct kvbin_writer;

/* Writes to "<path>.tmp" and renames over path on kvbin_writer_close, so a
 * crash never leaves a half-written kv.bin under the real name. */
int kvbin_writer_open(struct kvbin_writer **out, const char *path);
/* Start a model; exactly nrecords records must follow. */
int kvbin_writer_model(struct kvbin_writer *w, const char *name, uint64_t total_size,
                       uint32_t nbatches, uint32_t nrecords);
/* One whole record. */
int kvbin_writer_record(struct kvbin_writer *w, const char *key, const void *data, uint64_t len);
/* One record written in pieces (e.g. a batch assembled parameter by
 * parameter): begin with its final length, then write pieces adding up to
 * exactly len bytes, then end. */
int kvbin_writer_record_begin(struct kvbin_writer *w, const char *key, uint64_t len);
int kvbin_writer_record_write(struct kvbin_writer *w, const void *data, uint64_t n);
int kvbin_writer_record_end(struct kvbin_writer *w);
/* Flush, fsync, rename. Frees w whatever the result; on error the temporary
 * file is removed and path is untouched. Calls after a failed call return
 * that first error (the writer's error is sticky). */
int kvbin_writer_close(struct kvbin_writer *w);
/* Drop the temporary file. Frees w. */
void kvbin_writer_abort(struct kvbin_writer *w);

#endif
