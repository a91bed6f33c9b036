/* cache_link: the server's connection to its machine's cache, driven by one
 * thread, shared by the server's other threads.
 *
 * cache_client (src/cache) is blocking and single-threaded; the server
 * needs batch readiness delivered while its worker is busy computing, and
 * subscriptions started from several threads. So one link thread owns the
 * client: other threads queue subscriptions and releases (a pipe wakes the
 * thread), and the thread calls each subscription's callback with its
 * events as they arrive (the callback hands batches to the executor).
 *
 * Connection life: the link connects at start and whenever it has none
 * (backoff 100 ms .. 5 s); a subscription made while the cache is down is
 * answered with an ERROR event (PPS_ECONNECT) after one immediate attempt.
 * When the connection breaks, every unfinished subscription gets an ERROR
 * (PPS_ECLOSED) and the link reconnects; a cache that restarts is a new pool.
 *
 * The easy thing to get wrong: event data points into the pool mapping of
 * the connection that delivered it, and resident models use those bytes in
 * place long after the subscription finished. So each connection (and its
 * read-only mapping) is reference-counted: every subscription holds its
 * connection until cache_link_release, and a broken connection's mapping
 * stays valid until its last subscription is released. The segment itself
 * survives a cache crash or restart while mapped (the cache unlinks and
 * recreates, never reuses, a segment). */
#ifndef PIPEPS_CACHE_LINK_H
#define PIPEPS_CACHE_LINK_H

#include <stdint.h>

#include "cache/cache_client.h"

struct cache_link;
struct cache_sub;

/* Called on the link thread for each event of s, in order. After an ERROR
 * there are no more events. ev->data stays valid until cache_link_release(s).
 * The callback must not call cache_link functions. */
typedef void (*cache_sub_fn)(struct cache_sub *s, const struct cache_event *ev, void *arg);

struct cache_link_stats {
    int connected;
    uint64_t connects;       /* successful connections, the first included */
    uint64_t subscriptions;
    uint64_t failures;       /* subscriptions that ended with an ERROR */
    uint64_t pool_size;      /* of the current connection (0 when down) */
    char shm_name[CACHE_SHM_NAME_MAX + 1];
};

/* Start the link thread (it connects in the background). stall_ms: an
 * unfinished subscription that sees no event for this long fails with
 * PPS_ETIMEOUT (0 = never). */
int cache_link_start(struct cache_link **out, const char *addr, uint16_t port, int stall_ms);
/* Stop the thread and close every connection. Every subscription must have
 * been released. */
void cache_link_stop(struct cache_link *l);

/* Subscribe to model; events follow through fn (maybe before this returns).
 * Never blocks on the cache. */
struct cache_sub *cache_link_subscribe(struct cache_link *l, const char *model, cache_sub_fn fn,
                                       void *arg);
/* Done with s: no callback runs for it once this returns (it waits for one
 * that is running); its pin at the cache is released (if its connection is
 * still up) and its connection's mapping is unmapped if s was its last
 * holder. Must not be called from a callback. */
void cache_link_release(struct cache_link *l, struct cache_sub *s);
/* The same, and returns once the cache has acknowledged the unpin (or the
 * connection is gone), or after timeout_ms: for a caller that then tells
 * someone the pool bytes are free to evict. */
void cache_link_release_wait(struct cache_link *l, struct cache_sub *s, int timeout_ms);

void cache_link_get_stats(struct cache_link *l, struct cache_link_stats *st);

/* One model the cache holds, with a copy of its METADATA blob. */
struct cache_listed {
    char model[CACHE_MODEL_NAME_MAX + 1];
    uint8_t *meta;            /* malloc'd copy; the receiver frees it */
    uint64_t meta_len;
};
/* Called once on the link thread with what the cache held when it was
 * first reached (most recently used first; n may be 0). v and the blobs are
 * the callee's to free. Must be quick and not call cache_link functions. */
typedef void (*cache_list_fn)(struct cache_listed *v, uint32_t n, void *arg);
/* Ask for that list once, on the first connection (now if connected). */
void cache_link_list_once(struct cache_link *l, cache_list_fn fn, void *arg);

#endif
