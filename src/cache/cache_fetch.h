/* cache_fetch: the cache's data plane, run by threads so the event loop never
 * waits on a remote store.
 *
 * - A resolver thread reads a model's location record ("<model>-LOCATION")
 *   and its METADATA blob from the metadata storage over one persistent
 *   connection.
 * - Per storage (address:port) a link with conns_per_storage connections,
 *   each served by one thread, persistent across jobs. A job (one model's
 *   fetch) is a list of range requests, queued on their storages' links in
 *   batch order, so batch 0's slices go first on every link and the slices
 *   of one batch are pulled from different storages at once. With several
 *   connections per storage each slice is cut into one piece per
 *   connection (piece j on connection j), so they pull each batch
 *   together. Each
 *   connection keeps up to `depth` requests in flight (storage_get_send),
 *   then receives each response straight into its destination in the pool
 *   (storage_get_recv): the link never idles between requests and no byte
 *   is copied through a user-space buffer.
 * - A broken connection is reopened (with backoff) and the unfinished
 *   requests are resent, up to `retries` times per request; then the job
 *   fails. A storage silent for progress_timeout_ms while a response is due
 *   has stalled: that request is resent once, a second stall fails it. An
 *   error status from the storage fails it at once.
 * - fetch_job_cancel lets go of a job at once: its queued requests are
 *   retired and connections with its requests in flight are shut down, so
 *   FINISHED (and the reuse of its memory) does not wait for transfers or
 *   timeouts.
 *
 * Results come back as events on a queue whose eventfd the loop watches:
 * RESOLVED (per resolve), BATCH (a batch's last byte landed), FAILED (once
 * per job, at the first unrecoverable error) and FINISHED (last event of a
 * job: no thread touches the job or its destinations any more; only then may
 * the owner free the job and the memory it wrote to). */
#ifndef PIPEPS_CACHE_FETCH_H
#define PIPEPS_CACHE_FETCH_H

#include <stdint.h>

#include "formats/location.h"

struct fetch_config {
    char meta_addr[64];
    uint16_t meta_port;
    int conns_per_storage;   /* >= 1 */
    int depth;               /* requests in flight per connection, >= 1 */
    uint64_t throttle_bps;   /* total receive rate limit, bytes/s; 0 = none */
    int retries;             /* resends of a request after a broken connection */
    int progress_timeout_ms; /* a storage silent this long while a response is due has
                              * stalled (0 = never); a stalled request is resent once */
};

enum fetch_event_kind {
    FETCH_EV_RESOLVED = 1,
    FETCH_EV_BATCH,
    FETCH_EV_FAILED,
    FETCH_EV_FINISHED,
};

struct fetch_job;

struct fetch_event {
    enum fetch_event_kind kind;
    void *token;                 /* RESOLVED: as given to fetch_resolve */
    struct fetch_job *job;       /* BATCH, FAILED, FINISHED (fetch_job_owner tells whose) */
    uint32_t batch;              /* BATCH */
    int status;                  /* RESOLVED, FAILED: 0 or PPS_E* */
    char message[384];           /* reason when status < 0 */
    /* RESOLVED with status 0; the receiver owns them (location_free, free) */
    struct location_record loc;
    uint8_t *metadata;
    uint64_t metadata_len;
};

struct fetch_stats {
    uint64_t bytes_received;
    uint64_t requests;
    uint64_t reconnects;         /* connections reopened after a failure */
    uint64_t storage_conns;      /* connections open now */
};

struct fetcher;

int fetch_create(struct fetcher **out, const struct fetch_config *cfg);
/* Stops every thread (interrupting transfers); jobs never reach FINISHED. */
void fetch_destroy(struct fetcher *f);
/* Readable when events are queued; the reader drains it with fetch_next_event. */
int fetch_event_fd(const struct fetcher *f);
/* 1 and *ev filled, or 0 when the queue is empty. Also clears the eventfd. */
int fetch_next_event(struct fetcher *f, struct fetch_event *ev);
void fetch_get_stats(struct fetcher *f, struct fetch_stats *st);

/* Queue a metadata read; one RESOLVED event answers it. */
void fetch_resolve(struct fetcher *f, const char *model, void *token);

/* Build a job, add the slices of its batches, then submit it. dst is where
 * the slice's bytes go (room for slice->size bytes); the caller keeps that
 * memory until FINISHED, or until every batch's BATCH event has come (no
 * thread writes into a batch after announcing it). */
struct fetch_job *fetch_job_new(struct fetcher *f, uint32_t nbatches);
/* The owner's pointer (e.g. its model), read and written only by the thread
 * that consumes events, never by fetch threads; NULL when orphaned. */
void fetch_job_set_owner(struct fetch_job *job, void *owner);
void *fetch_job_owner(const struct fetch_job *job);
void fetch_job_add(struct fetch_job *job, uint32_t batch, const struct location_slice *slice,
                   uint8_t *dst);
void fetch_job_submit(struct fetch_job *job);
/* Stop working on the job soon (thread-safe); no FAILED event follows, but
 * FINISHED still does. */
void fetch_job_cancel(struct fetch_job *job);
/* After its FINISHED event (or after fetch_destroy). */
void fetch_job_free(struct fetch_job *job);

#endif
