/* model_blob: the "<model>-METADATA" value: a batched graph as a compact,
 * versioned binary blob (format in docs/formats.md, "METADATA blob").
 *
 * The blob travels from kv.bin through the storages and caches to every
 * server, so model_blob_decode treats it as hostile: every count is bounded
 * by the bytes that remain before anything is allocated, every varint and
 * string is range-checked, a checksum covers the whole blob, and the
 * result passes graph_validate before it is returned. */
#ifndef PIPEPS_MODEL_BLOB_H
#define PIPEPS_MODEL_BLOB_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "model/graph.h"

#define MODEL_BLOB_MAGIC 0x444d5050u /* "PPMD" little-endian */
#define MODEL_BLOB_VERSION 1

/* Append g's blob to out. g must pass graph_validate (PPS_EINVAL if not;
 * out is then unchanged). */
int model_blob_encode(const struct graph *g, struct wbuf *out);

/* Parse len bytes into g (initialised here; the caller graph_frees it on
 * success; on failure g is left empty). Returns 0, PPS_ETRUNCATED,
 * PPS_ECORRUPT (bad checksum, value out of range, failed validation),
 * PPS_EUNSUPPORTED (other version) or PPS_ENOMEM, with a message in err
 * (may be NULL). */
int model_blob_decode(struct graph *g, const void *data, size_t len, char *err, size_t errlen);

#endif
