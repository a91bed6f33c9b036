/* location: the record that says where a deployed model's bytes live.
 *
 * deploy_file writes one record per model under the metadata key
 * "<model>-LOCATION", after every value it points to is durable, so a
 * reader that finds the record finds a whole model. It lists every key of the
 * model that lives on storages ("<model>-BATCH-<i>") with its size and its
 * slices: (offset within the value, size, storage address, port, key on that
 * storage). Storage keys carry the deployment's generation
 * ("resnet152-BATCH-3@1764145000123") so a redeploy writes beside the old
 * copy and flips this one record; the old generation is deleted after.
 * The record also names the metadata-storage key of the model description
 * ("<model>-METADATA@<generation>") and gives the total padded size.
 *
 * Encoding (little-endian, buf.h conventions), documented in docs/formats.md:
 *   u32 magic "PPSL", u16 version 1, u16 0,
 *   str model, u64 generation, u64 total_size, str metadata_key,
 *   u32 nkeys, nkeys x { str key, u64 size, u32 nslices,
 *                        nslices x { u64 offset, u64 size, str addr, u16 port, str storage_key } }
 */
#ifndef PIPEPS_LOCATION_H
#define PIPEPS_LOCATION_H

#include <stdint.h>

#include "common/buf.h"

#define LOCATION_MAGIC 0x4C535050u /* "PPSL" */
#define LOCATION_VERSION 1
#define LOCATION_MAX_KEYS 65536
#define LOCATION_MAX_SLICES 64
#define LOCATION_NAME_MAX 255

struct location_slice {
    uint64_t offset;                        /* byte offset within the value */
    uint64_t size;
    char addr[64];
    uint16_t port;
    char storage_key[LOCATION_NAME_MAX + 1];
};

struct location_key {
    char key[LOCATION_NAME_MAX + 1];        /* "<model>-BATCH-<i>" */
    uint64_t size;                          /* value size; slices tile [0, size) */
    uint32_t nslices;
    struct location_slice *slices;
};

struct location_record {
    char model[LOCATION_NAME_MAX + 1];
    uint64_t generation;
    uint64_t total_size;
    char metadata_key[LOCATION_NAME_MAX + 1];
    uint32_t nkeys;
    struct location_key *keys;
};

/* "<model>-LOCATION" into out (room for outlen bytes). */
void location_key_name(const char *model, char *out, unsigned long outlen);
void location_encode(const struct location_record *rec, struct wbuf *out);
/* Parse untrusted bytes: bounds-checked, slices must tile each value exactly
 * in offset order. On success the caller frees with location_free.
 * PPS_ECORRUPT / PPS_ETRUNCATED / PPS_ETOOBIG otherwise. */
int location_decode(const void *data, uint64_t len, struct location_record *rec);
void location_free(struct location_record *rec);
/* The entry for key, or NULL. */
const struct location_key *location_find(const struct location_record *rec, const char *key);

#endif
