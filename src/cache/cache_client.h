/* cache_client: a server's side of the cache protocol (docs/protocol.md,
 * "Cache"): connect, learn the pool, map it read-only, subscribe to models
 * and follow their batches as they land, unpin.
 *
 *   struct cache_client *cc;
 *   cache_client_connect(&cc, "127.0.0.1", port);      // HELLO + mmap PROT_READ
 *   cache_client_subscribe(cc, "resnet152", &sub);
 *   for (;;) {                                         // or cache_client_fetch + callback
 *       cache_client_next_event(cc, &ev, -1);
 *       META:  ev.data/ev.len is the METADATA blob, ev.nbatches batches follow
 *       BATCH: batch ev.index is at ev.data (ev.len bytes), in index order
 *       DONE or ERROR: the subscription's last event
 *   }
 *   ... use the model (the cache never frees a pinned model) ...
 *   cache_client_unpin(cc, sub);
 *
 * Pointers (ev.data, cache_client_pool) point into the read-only mapping and
 * stay valid until cache_client_close. A model stays pinned from SUBSCRIBE
 * until cache_client_unpin or the connection closes, also after DONE; an
 * ERROR ends the subscription and needs no unpin. Several subscriptions may
 * be in flight on one client; events carry their sub_id (the SUBSCRIBE's
 * request id). If the cache restarts, its pool is a new segment: close the
 * client and connect again.
 *
 * Blocking, not thread-safe: one thread drives a client (a server that
 * loads with several threads opens one client per thread or serialises). */
#ifndef PIPEPS_CACHE_CLIENT_H
#define PIPEPS_CACHE_CLIENT_H

#include <stdint.h>

#include "cache/cache_proto.h"

enum cache_event_kind {
    CACHE_EV_META = 1,   /* the model's description is in the pool */
    CACHE_EV_BATCH,      /* one more batch is in the pool */
    CACHE_EV_DONE,       /* every batch has been announced */
    CACHE_EV_ERROR,      /* the subscription failed (status, message) */
};

struct cache_event {
    enum cache_event_kind kind;
    uint64_t sub_id;
    /* META */
    char model[CACHE_MODEL_NAME_MAX + 1];
    uint64_t generation;
    uint64_t total_size;
    uint32_t nbatches;
    /* BATCH: index; META and BATCH: where the bytes are */
    uint32_t index;
    uint64_t offset;             /* pool offset */
    uint64_t len;
    const uint8_t *data;         /* pool base + offset, read-only */
    /* DONE */
    int hit;                     /* the model was entirely cached when subscribed */
    /* ERROR */
    int status;                  /* PPS_E* */
    char message[512];
};

struct cache_client;

/* Connect, HELLO, and map the pool read-only. timeouts: 10 s per reply. */
int cache_client_connect(struct cache_client **out, const char *addr, uint16_t port);
void cache_client_close(struct cache_client *c);
/* The socket, e.g. for poll() before cache_client_next_event. */
int cache_client_fd(const struct cache_client *c);
const uint8_t *cache_client_pool(const struct cache_client *c, uint64_t *size);
uint64_t cache_client_block_size(const struct cache_client *c);
const char *cache_client_shm_name(const struct cache_client *c);

/* Send SUBSCRIBE; its events follow through cache_client_next_event. */
int cache_client_subscribe(struct cache_client *c, const char *model, uint64_t *sub_id);
/* The next event of any subscription. timeout_ms < 0 waits for ever;
 * PPS_ETIMEOUT when nothing came; PPS_ECLOSED if the cache went away;
 * PPS_EPROTO if it sent something malformed (then close the client). */
int cache_client_next_event(struct cache_client *c, struct cache_event *ev, int timeout_ms);
/* Release a subscription's pin (and stop its events). PPS_ENOTFOUND if the
 * cache does not know it (e.g. it already ended with an error). */
int cache_client_unpin(struct cache_client *c, uint64_t sub_id);

/* Subscribe and drive that subscription to its end, calling cb for each of
 * its events (events of other subscriptions are kept for next_event).
 * Returns 0 after DONE (the model stays pinned: unpin *sub_id later), the
 * error status after ERROR, or cb's non-zero return value (the
 * subscription is then unpinned). */
typedef int (*cache_event_fn)(const struct cache_event *ev, void *arg);
int cache_client_fetch(struct cache_client *c, const char *model, cache_event_fn cb, void *arg,
                       uint64_t *sub_id);

/* The cache's STAT text, malloc'd; the caller frees. */
int cache_client_stat(struct cache_client *c, char **text);
/* The cache's complete models (CACHE_LIST): *out has *n entries, free() it.
 * Their METADATA blobs are at offset/len in the pool, not pinned. */
int cache_client_list(struct cache_client *c, struct cache_meta_msg **out, uint32_t *n);

#endif
