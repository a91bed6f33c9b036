/* cache_proto: payloads of the cache's messages (docs/protocol.md, "Cache"),
 * shared by the cache daemon, its server-side client (cache_client.h) and
 * the load balancer.
 *
 * Server link (server -> cache requests; the cache answers with frames that
 * carry the request's id and the response flag):
 *   CACHE_HELLO     ()            -> u32 version, str shm_name, u64 pool_size, u64 block_size
 *   CACHE_SUBSCRIBE (str model)   -> a stream: CACHE_META, CACHE_BATCH per batch in index
 *                                    order, CACHE_DONE; or at any point a CACHE_SUBSCRIBE
 *                                    response with status < 0 (text reason) that ends it.
 *                                    The model stays pinned until CACHE_UNPIN or disconnect.
 *   CACHE_UNPIN     (u64 sub_id)  -> empty (sub_id = the SUBSCRIBE's request id)
 *   CACHE_IN        (str model)   -> u64 total_size once the whole model is in the pool
 *   CACHE_OUT       (str model)   -> empty; PPS_EBUSY while pinned
 *   CACHE_LIST      ()            -> u32 n, then n CACHE_META bodies: the complete models,
 *                                    most recently used first (at most CACHE_LIST_MAX); a
 *                                    server warms their kernels at start. Nothing is pinned:
 *                                    the blobs may be evicted while being read.
 * Load-balancer link (the cache connects and keeps the connection):
 *   LB_CACHE_REGISTER (cache -> LB request) -> any response, status 0 = registered
 *   LB_CACHE_EVENT    (cache -> LB, one-way, never answered)
 * Every offset is a byte offset into the shared-memory pool, never a
 * pointer. Decoders take untrusted bytes: PPS_EPROTO on a short, long or
 * malformed payload, PPS_EINVAL on a bad model name. */
#ifndef PIPEPS_CACHE_PROTO_H
#define PIPEPS_CACHE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define CACHE_PROTO_VERSION 1
#define CACHE_MODEL_NAME_MAX WIRE_NAME_MAX
#define CACHE_SHM_NAME_MAX 255
#define CACHE_ADDR_MAX 63
/* Models a CACHE_LIST answer names at most. */
#define CACHE_LIST_MAX 1024
/* Bound of any request payload the cache accepts. */
#define CACHE_MAX_REQUEST (64u << 10)

struct cache_hello {
    uint32_t version;
    char shm_name[CACHE_SHM_NAME_MAX + 1];
    uint64_t pool_size;
    uint64_t block_size;
};

/* CACHE_META: where the model description sits in the pool. */
struct cache_meta_msg {
    char model[CACHE_MODEL_NAME_MAX + 1];
    uint64_t generation;      /* deployment generation (location record) */
    uint64_t total_size;      /* padded bytes of all batches */
    uint32_t nbatches;
    uint64_t offset;          /* the METADATA blob: pool offset and length */
    uint64_t len;
};

struct cache_batch_msg {
    uint32_t index;
    uint64_t offset;          /* batch <index>: pool offset (block-aligned) and length */
    uint64_t len;
};

struct cache_done_msg {
    uint32_t nbatches;
    uint8_t hit;              /* 1 if the whole model was cached when subscribed */
};

struct cache_register_msg {
    char server_addr[CACHE_ADDR_MAX + 1];  /* where servers reach this cache */
    uint16_t server_port;
    char shm_name[CACHE_SHM_NAME_MAX + 1];
    uint64_t capacity;                      /* pool bytes */
    uint64_t block_size;
    uint64_t used;                          /* bytes held now */
    uint32_t nmodels;                       /* models held now (complete ones) */
    struct wire_model_bytes *models;        /* decoder: malloc'd, caller frees */
};

enum cache_lb_event_kind {
    CACHE_EVENT_LOADED = 1,   /* the model is entirely in the pool */
    CACHE_EVENT_EVICTED = 2,  /* removed (CACHE_OUT or LRU eviction) */
    CACHE_EVENT_FAILED = 3,   /* its fetch failed; nothing of it is held */
};

struct cache_lb_event {
    uint8_t kind;
    char model[CACHE_MODEL_NAME_MAX + 1];
    uint64_t size;            /* the model's bytes in the pool */
    uint64_t used;            /* pool bytes in use after the event */
    uint64_t capacity;
};

/* 1..255 printable ASCII bytes, no space. */
int cache_proto_valid_model_name(const char *name);

void cache_proto_encode_hello(struct wbuf *wb, const struct cache_hello *m);
int cache_proto_decode_hello(const void *p, size_t n, struct cache_hello *m);
void cache_proto_encode_model(struct wbuf *wb, const char *model);
/* SUBSCRIBE, CACHE_IN and CACHE_OUT requests: just the model name. */
int cache_proto_decode_model(const void *p, size_t n, char model[CACHE_MODEL_NAME_MAX + 1]);
void cache_proto_encode_meta(struct wbuf *wb, const struct cache_meta_msg *m);
int cache_proto_decode_meta(const void *p, size_t n, struct cache_meta_msg *m);
void cache_proto_encode_batch(struct wbuf *wb, const struct cache_batch_msg *m);
int cache_proto_decode_batch(const void *p, size_t n, struct cache_batch_msg *m);
/* CACHE_LIST answer; on success *out (n entries) is malloc'd, free() it. */
void cache_proto_encode_list(struct wbuf *wb, const struct cache_meta_msg *v, uint32_t n);
int cache_proto_decode_list(const void *p, size_t n, struct cache_meta_msg **out, uint32_t *count);
void cache_proto_encode_done(struct wbuf *wb, const struct cache_done_msg *m);
int cache_proto_decode_done(const void *p, size_t n, struct cache_done_msg *m);
void cache_proto_encode_u64(struct wbuf *wb, uint64_t v);
int cache_proto_decode_u64(const void *p, size_t n, uint64_t *v);
void cache_proto_encode_register(struct wbuf *wb, const struct cache_register_msg *m);
/* On success m->models is malloc'd (NULL when nmodels = 0); free() it. */
int cache_proto_decode_register(const void *p, size_t n, struct cache_register_msg *m);
void cache_proto_encode_event(struct wbuf *wb, const struct cache_lb_event *m);
int cache_proto_decode_event(const void *p, size_t n, struct cache_lb_event *m);

#endif
