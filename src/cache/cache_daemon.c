/* cache_daemon: event loop, server protocol, load-balancer link and the
 * life of a cached model; see cache_daemon.h.
 *
 * A model's life: a SUBSCRIBE or CACHE_IN for an unknown model adds it
 * (RESOLVING) and asks the fetcher for its records; once they arrive the
 * model is placed in the pool (evicting LRU models if needed), its METADATA
 * blob copied in, and a fetch job submitted (FETCHING); each landed batch is
 * announced, in index order, to every subscription; when all have landed it
 * is READY. A failure or a CACHE_OUT during the fetch detaches the model
 * (a new request starts afresh), and its blocks are freed only when the
 * fetcher reports the job FINISHED.
 *
 * Easy to get wrong: connections are never freed inside a send or while a
 * model's subscription list is being walked. Anything that must close a
 * connection marks it dead and a deferred "reaper" event frees it after the
 * current callback, so walking subscribers is always safe.
 *
 * Metrics (--metrics-port): /metrics is served on this loop
 * (metrics_http_attach) from the counters STAT reports, so no lock is
 * needed; both go through cache_counts. */
#include "cache/cache_daemon.h"
#include "cache/cache_fetch.h"
#include "cache/cache_proto.h"
#include "cache/cache_store.h"
#include "cache/shm_pool.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"
#include "http/metrics_http.h"
#include "http/prom.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SUBS_PER_CONN 256
#define MAX_OUTPUT_BYTES (16u << 20) /* a peer that reads nothing is dropped */
#define LB_BACKOFF_MIN_MS 100
/* How long a model that would fit waits for an interrupted fetch to let go
 * of its blocks (it normally takes milliseconds, see fetch_job_cancel). */
#define ZOMBIE_WAIT_S 2.0

struct cache_daemon;

enum sub_kind { SUB_SUBSCRIBE, SUB_CACHE_IN };

/* A request waiting on a model: a server's subscription (pins the model
 * until UNPIN) or a CACHE_IN waiting for the whole model. */
struct sub {
    enum sub_kind kind;
    struct conn *conn;
    uint64_t rid;
    struct cache_model *m;
    uint32_t next_batch;       /* the next BATCH to announce */
    int meta_sent;
    int done_sent;
    int hit;
    struct sub *cprev, *cnext; /* in conn->subs */
    struct sub *mprev, *mnext; /* in the model's subs */
};

struct conn {
    struct cache_daemon *d;
    struct bufferevent *bev;
    char peer[96];
    int is_lb;
    int closing;               /* flush, then die */
    int dead;                  /* freed by the reaper; nothing more is sent */
    int timer_armed;           /* read timeout on: a frame is partly received */
    struct sub *subs;
    int nsubs;
    struct conn *prev, *next;
};

/* The daemon's per-model state (cache_model.owner). */
struct model_state {
    struct sub *subs;
    struct fetch_job *job;     /* until FINISHED */
    int resolving;             /* a RESOLVED event is due */
    int active;                /* counted in d->active_fetches */
    double t_start;
    struct model_state *zprev, *znext; /* detached models awaiting release */
    struct cache_model *m;
    /* between RESOLVED and placement: the records (owned here) */
    struct location_record loc;
    uint8_t *metadata;
    uint64_t metadata_len;
    int waiting;               /* for blocks an interrupted fetch still holds */
    double wait_since;         /* when it first waited (0: never) */
    struct model_state *wnext;
};

struct lb_link {
    struct conn *conn;
    struct event *timer;
    int backoff_ms;
    int register_sent;
    int registered;
    int down_logged;
    uint64_t next_rid;
    uint64_t register_rid;
    uint64_t registrations;
    struct sockaddr_in sa;
};

struct cache_daemon {
    struct cache_config cfg;
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *fetch_ev, *sigterm_ev, *sigint_ev, *reaper_ev, *room_ev;
    struct shm_pool pool;
    struct cache_store store;
    struct fetcher *fetch;
    struct conn *conns;
    int nconns;
    struct lb_link lb;
    struct model_state *zombies;
    struct model_state *waiting;  /* resolved models waiting for room, FIFO */
    struct fetch_job **orphans;   /* jobs of released models, awaiting FINISHED */
    size_t norphans, orphans_cap;
    int stopping;
    uint16_t listen_port;
    struct metrics_http *metrics; /* --metrics-port; NULL when off */
    /* counters */
    uint64_t hits, misses, cache_in, cache_out;
    uint64_t bytes_fetched, fetches_started, fetches_ok, fetches_failed;
    uint64_t evictions_lru, evictions_cmd, bad_requests, conns_refused, stalled_drops;
    int active_fetches;
    double busy_since, busy_total;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- sending ----------------------------------------------------------- */

static void conn_kill(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->d->reaper_ev, EV_TIMEOUT, 0);
}

static void conn_close_after_flush(struct conn *c)
{
    if (c->dead || c->closing)
        return;
    c->closing = 1;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_kill(c);
}

static void send_frame(struct conn *c, uint16_t type, uint8_t flags, int32_t status, uint64_t rid,
                       const void *payload, size_t len)
{
    if (c->dead || c->closing)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) > MAX_OUTPUT_BYTES) {
        log_warn("%s: not reading its messages (%zu bytes queued); dropping the connection",
                 c->peer, evbuffer_get_length(out));
        conn_kill(c);
        return;
    }
    struct frame_header h = {
        .type = type, .flags = flags, .status = status, .request_id = rid, .payload_len = len};
    uint8_t hdr[FRAME_HEADER_SIZE];
    frame_encode_header(hdr, &h);
    bufferevent_write(c->bev, hdr, sizeof hdr);
    if (len)
        bufferevent_write(c->bev, payload, len);
}

static void send_response(struct conn *c, uint16_t type, uint64_t rid, const void *p, size_t n)
{
    send_frame(c, type, FRAME_FLAG_RESPONSE, 0, rid, p, n);
}

static void send_error(struct conn *c, uint16_t type, uint64_t rid, int status, const char *msg)
{
    send_frame(c, type, FRAME_FLAG_RESPONSE, status, rid, msg, strlen(msg));
}

/* A peer broke the protocol: tell it why, log, and drop only it. */
static void reject(struct conn *c, uint16_t type, uint64_t rid, int status, const char *msg)
{
    c->d->bad_requests++;
    log_warn("%s: %s (%s); closing the connection", c->peer, msg, pps_strerror(status));
    send_error(c, type, rid, status, msg);
    conn_close_after_flush(c);
}

/* ---- the load-balancer link (events) ----------------------------------- */

static void lb_event(struct cache_daemon *d, uint8_t kind, const struct cache_model *m)
{
    struct conn *c = d->lb.conn;
    if (!c || !d->lb.register_sent || c->dead)
        return;
    struct cache_lb_event ev = {.kind = kind,
                                .size = m->blocks_held * d->store.block_size,
                                .used = cache_store_used_bytes(&d->store),
                                .capacity = d->pool.size};
    if (kind == CACHE_EVENT_EVICTED) /* reported before the blocks are freed */
        ev.used -= ev.size;
    snprintf(ev.model, sizeof ev.model, "%s", m->name);
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_event(&wb, &ev);
    send_frame(c, MSG_LB_CACHE_EVENT, 0, 0, d->lb.next_rid++, wb.data, wb.len);
    wbuf_free(&wb);
}

/* ---- subscriptions ----------------------------------------------------- */

static void sub_unlink(struct sub *s)
{
    struct model_state *ms = s->m->owner;
    if (s->mprev)
        s->mprev->mnext = s->mnext;
    else
        ms->subs = s->mnext;
    if (s->mnext)
        s->mnext->mprev = s->mprev;
    struct conn *c = s->conn;
    if (s->cprev)
        s->cprev->cnext = s->cnext;
    else
        c->subs = s->cnext;
    if (s->cnext)
        s->cnext->cprev = s->cprev;
    c->nsubs--;
}

static void sub_free(struct cache_daemon *d, struct sub *s)
{
    sub_unlink(s);
    if (s->kind == SUB_SUBSCRIBE) {
        s->m->pins--;
        if (s->m->in_table)
            cache_store_touch(&d->store, s->m);
    }
    free(s);
}

static struct sub *sub_new(struct conn *c, enum sub_kind kind, uint64_t rid, struct cache_model *m)
{
    struct sub *s = pps_xcalloc(1, sizeof *s);
    struct model_state *ms = m->owner;
    s->kind = kind;
    s->conn = c;
    s->rid = rid;
    s->m = m;
    s->cnext = c->subs;
    if (c->subs)
        c->subs->cprev = s;
    c->subs = s;
    c->nsubs++;
    s->mnext = ms->subs;
    if (ms->subs)
        ms->subs->mprev = s;
    ms->subs = s;
    if (kind == SUB_SUBSCRIBE)
        m->pins++;
    return s;
}

static void send_meta(struct cache_daemon *d, struct sub *s)
{
    struct cache_model *m = s->m;
    struct cache_meta_msg mm = {.generation = m->generation,
                                .total_size = m->total_size,
                                .nbatches = m->nbatches,
                                .offset = m->meta.offset,
                                .len = m->meta.len};
    snprintf(mm.model, sizeof mm.model, "%s", m->name);
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_meta(&wb, &mm);
    send_response(s->conn, MSG_CACHE_META, s->rid, wb.data, wb.len);
    wbuf_free(&wb);
    (void)d;
}

/* Bring one request up to date with its model. Returns 1 if it is over
 * (answered and freed). */
static int sub_flush(struct cache_daemon *d, struct sub *s)
{
    struct cache_model *m = s->m;
    if (s->kind == SUB_CACHE_IN) {
        if (m->state != CACHE_MODEL_READY)
            return 0;
        struct wbuf wb;
        wbuf_init(&wb);
        cache_proto_encode_u64(&wb, m->total_size);
        send_response(s->conn, MSG_CACHE_IN, s->rid, wb.data, wb.len);
        wbuf_free(&wb);
        sub_free(d, s);
        return 1;
    }
    if (m->state == CACHE_MODEL_RESOLVING)
        return 0;
    if (!s->meta_sent) {
        send_meta(d, s);
        s->meta_sent = 1;
    }
    struct wbuf wb;
    wbuf_init(&wb);
    while (s->next_batch < m->nbatches && m->batches[s->next_batch].ready) {
        const struct cache_run *r = &m->batches[s->next_batch];
        struct cache_batch_msg bm = {.index = s->next_batch, .offset = r->offset, .len = r->len};
        wbuf_reset(&wb);
        cache_proto_encode_batch(&wb, &bm);
        send_response(s->conn, MSG_CACHE_BATCH, s->rid, wb.data, wb.len);
        s->next_batch++;
    }
    if (m->state == CACHE_MODEL_READY && !s->done_sent) {
        struct cache_done_msg dm = {.nbatches = m->nbatches, .hit = (uint8_t)s->hit};
        wbuf_reset(&wb);
        cache_proto_encode_done(&wb, &dm);
        send_response(s->conn, MSG_CACHE_DONE, s->rid, wb.data, wb.len);
        s->done_sent = 1;
    }
    wbuf_free(&wb);
    return 0;
}

static void flush_model(struct cache_daemon *d, struct cache_model *m)
{
    struct model_state *ms = m->owner;
    struct sub *s = ms->subs;
    while (s) {
        struct sub *next = s->mnext;
        sub_flush(d, s);
        s = next;
    }
}

/* ---- model life -------------------------------------------------------- */

static void fetch_activity(struct cache_daemon *d, struct model_state *ms, int on)
{
    if (on && !ms->active) {
        ms->active = 1;
        if (d->active_fetches++ == 0)
            d->busy_since = now_s();
    } else if (!on && ms->active) {
        ms->active = 0;
        if (--d->active_fetches == 0)
            d->busy_total += now_s() - d->busy_since;
    }
}

/* Every batch of the model has landed, so no thread writes into its blocks
 * any more; only the job's bookkeeping lives on until FINISHED. Let it go
 * without the model, so the blocks can be freed now. */
static void orphan_job(struct cache_daemon *d, struct model_state *ms)
{
    if (!ms->job)
        return;
    PPS_ASSERT(ms->m->state == CACHE_MODEL_READY);
    fetch_job_set_owner(ms->job, NULL);
    if (d->norphans == d->orphans_cap) {
        d->orphans_cap = d->orphans_cap ? d->orphans_cap * 2 : 8;
        d->orphans = pps_xrealloc(d->orphans, d->orphans_cap * sizeof *d->orphans);
    }
    d->orphans[d->norphans++] = ms->job;
    ms->job = NULL;
}

static void orphan_finished(struct cache_daemon *d, struct fetch_job *job)
{
    for (size_t i = 0; i < d->norphans; i++)
        if (d->orphans[i] == job) {
            d->orphans[i] = d->orphans[--d->norphans];
            break;
        }
    fetch_job_free(job);
}

static void drop_records(struct model_state *ms)
{
    location_free(&ms->loc);
    free(ms->metadata);
    ms->metadata = NULL;
    ms->metadata_len = 0;
}

static void unwait(struct cache_daemon *d, struct model_state *ms)
{
    if (!ms->waiting)
        return;
    struct model_state **pp = &d->waiting;
    while (*pp != ms)
        pp = &(*pp)->wnext;
    *pp = ms->wnext;
    ms->wnext = NULL;
    ms->waiting = 0;
}

static void release_model(struct cache_daemon *d, struct cache_model *m)
{
    struct model_state *ms = m->owner;
    PPS_ASSERT(!ms->subs && !ms->resolving);
    orphan_job(d, ms);
    fetch_activity(d, ms, 0);
    unwait(d, ms);
    drop_records(ms);
    if (!m->in_table && m->placed && d->waiting) /* room for a waiting model? */
        event_active(d->room_ev, EV_TIMEOUT, 0);
    if (!m->in_table) {
        if (ms->zprev)
            ms->zprev->znext = ms->znext;
        else if (d->zombies == ms)
            d->zombies = ms->znext;
        if (ms->znext)
            ms->znext->zprev = ms->zprev;
    }
    free(ms);
    m->owner = NULL;
    cache_store_release(&d->store, m);
}

/* Out of the table; freed once no thread and no event refers to it. */
static void detach_model(struct cache_daemon *d, struct cache_model *m)
{
    struct model_state *ms = m->owner;
    if (!m->in_table)
        return;
    cache_store_detach(&d->store, m);
    ms->zprev = NULL;
    ms->znext = d->zombies;
    if (d->zombies)
        d->zombies->zprev = ms;
    d->zombies = ms;
    if (ms->job && m->state != CACHE_MODEL_READY)
        fetch_job_cancel(ms->job);
    fetch_activity(d, ms, 0);
    if (!ms->resolving && m->pins == 0 && (!ms->job || m->state == CACHE_MODEL_READY))
        release_model(d, m);
}

/* End every request on the model with an error, and drop the model. */
static void fail_model(struct cache_daemon *d, struct cache_model *m, int status, const char *msg,
                       int report)
{
    struct model_state *ms = m->owner;
    if (status == PPS_ECANCELED)
        log_info("model %s: fetch cancelled: %s", m->name, msg);
    else
        log_warn("model %s: fetch failed: %s", m->name, msg);
    char text[512];
    snprintf(text, sizeof text, "model %s: %s", m->name, msg);
    while (ms->subs) {
        struct sub *s = ms->subs;
        send_error(s->conn, s->kind == SUB_SUBSCRIBE ? MSG_CACHE_SUBSCRIBE : MSG_CACHE_IN, s->rid,
                   status, text);
        sub_free(d, s);
    }
    if (report) {
        d->fetches_failed++;
        lb_event(d, CACHE_EVENT_FAILED, m);
    }
    detach_model(d, m);
}

static struct cache_model *start_model(struct cache_daemon *d, const char *name)
{
    struct cache_model *m = cache_store_add(&d->store, name);
    struct model_state *ms = pps_xcalloc(1, sizeof *ms);
    ms->m = m;
    ms->resolving = 1;
    ms->t_start = now_s();
    m->owner = ms;
    m->busy = 1;
    d->fetches_started++;
    fetch_activity(d, ms, 1);
    fetch_resolve(d->fetch, name, m);
    log_info("model %s: fetching", name);
    return m;
}

static void evict_cb(struct cache_model *victim, void *arg)
{
    struct cache_daemon *d = arg;
    struct model_state *ms = victim->owner;
    PPS_ASSERT(!ms->subs && !ms->resolving);
    orphan_job(d, ms);
    log_info("model %s: evicted (least recently used, %" PRIu64 " bytes) to make room",
             victim->name, victim->blocks_held * d->store.block_size);
    d->evictions_lru++;
    lb_event(d, CACHE_EVENT_EVICTED, victim);
    free(ms);
    victim->owner = NULL; /* the store frees the model itself */
}

static void model_ready(struct cache_daemon *d, struct cache_model *m)
{
    struct model_state *ms = m->owner;
    m->state = CACHE_MODEL_READY;
    m->busy = 0; /* evictable even before the job's FINISHED: see orphan_job */
    double dt = now_s() - ms->t_start;
    log_info("model %s: ready, %u batches, %" PRIu64 " bytes in %.3f s (%.1f MB/s)", m->name,
             m->nbatches, m->total_size, dt, dt > 0 ? (double)m->total_size / dt / 1e6 : 0.0);
    d->fetches_ok++;
    fetch_activity(d, ms, 0);
    lb_event(d, CACHE_EVENT_LOADED, m);
    flush_model(d, m);
}

/* "<model>-BATCH-<i>" -> i, or -1. */
static long batch_index(const char *model, const char *key, uint32_t nkeys)
{
    size_t n = strlen(model);
    if (strncmp(key, model, n) != 0 || strncmp(key + n, "-BATCH-", 7) != 0)
        return -1;
    const char *p = key + n + 7;
    if (!*p || (p[0] == '0' && p[1]))
        return -1;
    long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v >= (long)nkeys)
            return -1;
    }
    return v;
}

/* Does an interrupted fetch still hold blocks that will come free soon? */
static int zombies_hold_blocks(const struct cache_daemon *d)
{
    for (const struct model_state *z = d->zombies; z; z = z->znext)
        if (z->m->placed)
            return 1;
    return 0;
}

/* Place a resolved model (its records in ms) and start fetching its batches. */
static void place_and_fetch(struct cache_daemon *d, struct cache_model *m)
{
    struct model_state *ms = m->owner;
    struct location_record *loc = &ms->loc;
    char msg[384];
    uint32_t nb = 0;
    for (uint32_t k = 0; k < loc->nkeys; k++)
        if (batch_index(m->name, loc->keys[k].key, loc->nkeys) >= 0)
            nb++;
    const struct location_key **keys = pps_xcalloc(nb ? nb : 1, sizeof *keys);
    uint64_t *lens = pps_xcalloc(nb ? nb : 1, sizeof *lens);
    int bad = 0;
    for (uint32_t k = 0; k < loc->nkeys && !bad; k++) {
        long i = batch_index(m->name, loc->keys[k].key, loc->nkeys);
        if (i < 0)
            continue;
        if ((uint64_t)i >= nb || keys[i])
            bad = 1;
        else
            keys[i] = &loc->keys[k];
    }
    if (bad) {
        snprintf(msg, sizeof msg, "location record lists batches that are not 0..%u", nb - 1);
        free(keys);
        free(lens);
        fail_model(d, m, PPS_ECORRUPT, msg, 1); /* frees m */
        return;
    }
    for (uint32_t i = 0; i < nb; i++)
        lens[i] = keys[i]->size;

    /* A cancelled or failed fetch frees its blocks once its threads let go
     * (milliseconds, fetch_job_cancel). Placing this model before that
     * would put it after those blocks and leave a hole in the pool when
     * they come free; without room it would fail. So wait for them: until
     * they are free when there is no room, at most ZOMBIE_WAIT_S when the
     * model would fit anyway. */
    int rc = 0;
    double now = now_s();
    if (zombies_hold_blocks(d) && (!ms->wait_since || now - ms->wait_since < ZOMBIE_WAIT_S))
        rc = PPS_EBUSY;
    else
        rc = cache_store_place(&d->store, m, ms->metadata_len, nb, lens, evict_cb, d);
    if (rc == PPS_EBUSY || (rc == PPS_ENOSPACE && zombies_hold_blocks(d))) {
        if (!ms->wait_since) {
            ms->wait_since = now;
            log_info("model %s: waiting for the blocks of an interrupted fetch", m->name);
        }
        struct model_state **pp = &d->waiting;
        while (*pp)
            pp = &(*pp)->wnext;
        *pp = ms;
        ms->waiting = 1;
        struct timeval tv = {.tv_sec = (time_t)ZOMBIE_WAIT_S,
                             .tv_usec = (suseconds_t)((ZOMBIE_WAIT_S - (time_t)ZOMBIE_WAIT_S) * 1e6)};
        event_add(d->room_ev, &tv); /* released blocks activate it sooner */
        free(keys);
        free(lens);
        return;
    }
    if (rc) {
        uint64_t need = cache_store_blocks_for(&d->store, ms->metadata_len);
        for (uint32_t i = 0; i < nb; i++)
            need += cache_store_blocks_for(&d->store, lens[i]);
        snprintf(msg, sizeof msg,
                 "no room: needs %" PRIu64 " bytes, pool has %" PRIu64 " bytes, %" PRIu64
                 " free, the rest pinned or being fetched",
                 need * d->store.block_size, d->pool.size,
                 d->store.alloc.nfree * d->store.block_size);
        free(keys);
        free(lens);
        fail_model(d, m, rc, msg, 1); /* frees m */
        return;
    }
    m->generation = loc->generation;
    if (ms->metadata_len)
        memcpy(d->pool.base + m->meta.offset, ms->metadata, ms->metadata_len);
    m->meta.ready = 1;
    struct fetch_job *job = fetch_job_new(d->fetch, nb);
    fetch_job_set_owner(job, m);
    for (uint32_t i = 0; i < nb; i++) {
        const struct location_key *k = keys[i];
        if (k->size == 0) {
            m->batches[i].ready = 1;
            m->nready++;
            continue;
        }
        for (uint32_t s = 0; s < k->nslices; s++)
            fetch_job_add(job, i, &k->slices[s], d->pool.base + m->batches[i].offset +
                                                     k->slices[s].offset);
    }
    ms->job = job;
    m->busy = 1;
    fetch_job_submit(job);
    free(keys);
    free(lens);
    drop_records(ms); /* the job has copied what it needs */
    log_info("model %s: %u batches, %" PRIu64 " bytes placed at pool offset %" PRIu64, m->name, nb,
             m->total_size, m->meta.offset);
    flush_model(d, m);
    if (m->nready == m->nbatches)
        model_ready(d, m);
}

static void room_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache_daemon *d = arg;
    struct model_state *list = d->waiting;
    d->waiting = NULL;
    while (list) {
        struct model_state *ms = list;
        list = ms->wnext;
        ms->wnext = NULL;
        ms->waiting = 0;
        place_and_fetch(d, ms->m); /* may wait again, fail, or start */
    }
}

static void on_fetch_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache_daemon *d = arg;
    struct fetch_event ev;
    while (fetch_next_event(d->fetch, &ev)) {
        if (ev.kind == FETCH_EV_RESOLVED) {
            struct cache_model *m = ev.token;
            struct model_state *ms = m->owner;
            ms->resolving = 0;
            m->busy = ms->job != NULL;
            if (!m->in_table) {
                if (m->pins == 0)
                    release_model(d, m);
            } else if (ev.status) {
                fail_model(d, m, ev.status, ev.message, 1);
            } else {
                ms->loc = ev.loc;
                ms->metadata = ev.metadata;
                ms->metadata_len = ev.metadata_len;
                memset(&ev.loc, 0, sizeof ev.loc);
                ev.metadata = NULL;
                place_and_fetch(d, m);
            }
            location_free(&ev.loc);
            free(ev.metadata);
            continue;
        }
        struct cache_model *m = fetch_job_owner(ev.job);
        if (!m) { /* the model was released after all its batches landed */
            if (ev.kind == FETCH_EV_FINISHED)
                orphan_finished(d, ev.job);
            continue;
        }
        struct model_state *ms = m->owner;
        switch (ev.kind) {
        case FETCH_EV_BATCH:
            if (!m->in_table || ev.batch >= m->nbatches || m->batches[ev.batch].ready)
                break;
            m->batches[ev.batch].ready = 1;
            m->nready++;
            d->bytes_fetched += m->batches[ev.batch].len;
            flush_model(d, m);
            if (m->nready == m->nbatches)
                model_ready(d, m);
            break;
        case FETCH_EV_FAILED:
            if (m->in_table)
                fail_model(d, m, ev.status, ev.message, 1);
            break;
        case FETCH_EV_FINISHED:
            fetch_job_free(ev.job);
            ms->job = NULL;
            m->busy = ms->resolving;
            if (!m->in_table && !ms->resolving && m->pins == 0)
                release_model(d, m);
            break;
        default:
            break;
        }
    }
}

/* ---- requests ---------------------------------------------------------- */

/* What STAT and /metrics report beyond the plain counters. */
struct cache_counts {
    uint64_t ready, fetching, batches, pinned, subs;
    double busy; /* seconds with at least one fetch running */
    struct fetch_stats fs;
};

static void cache_counts(struct cache_daemon *d, struct cache_counts *k)
{
    memset(k, 0, sizeof *k);
    for (struct cache_model *m = d->store.lru_head; m; m = m->lru_next) {
        if (m->state == CACHE_MODEL_READY)
            k->ready++;
        else
            k->fetching++;
        if (m->placed)
            for (uint32_t i = 0; i < m->nbatches; i++)
                k->batches += m->batches[i].ready;
        k->pinned += m->pins > 0;
    }
    for (struct conn *c = d->conns; c; c = c->next)
        for (struct sub *s = c->subs; s; s = s->cnext)
            k->subs += s->kind == SUB_SUBSCRIBE;
    k->busy = d->busy_total + (d->active_fetches ? now_s() - d->busy_since : 0);
    fetch_get_stats(d->fetch, &k->fs);
}

static void stat_text(struct cache_daemon *d, struct wbuf *wb)
{
    struct cache_counts k;
    cache_counts(d, &k);
    uint64_t ready = k.ready, fetching = k.fetching, batches = k.batches, pinned = k.pinned,
             subs = k.subs;
    double busy = k.busy;
    struct fetch_stats fs = k.fs;
    char text[2048];
    int n = snprintf(
        text, sizeof text,
        "daemon cache\n"
        "pool_name %s\n"
        "capacity_bytes %" PRIu64 "\n"
        "used_bytes %" PRIu64 "\n"
        "free_bytes %" PRIu64 "\n"
        "block_size %" PRIu64 "\n"
        "largest_free_extent_bytes %" PRIu64 "\n"
        "models %" PRIu64 "\n"
        "models_fetching %" PRIu64 "\n"
        "batches %" PRIu64 "\n"
        "pinned_models %" PRIu64 "\n"
        "subscriptions %" PRIu64 "\n"
        "connections %d\n"
        "hits %" PRIu64 "\n"
        "misses %" PRIu64 "\n"
        "cache_in %" PRIu64 "\n"
        "cache_out %" PRIu64 "\n"
        "fetches_started %" PRIu64 "\n"
        "fetches_ok %" PRIu64 "\n"
        "fetches_failed %" PRIu64 "\n"
        "bytes_fetched %" PRIu64 "\n"
        "fetch_busy_seconds %.6f\n"
        "fetch_throughput_bytes_per_second %.0f\n"
        "storage_connections %" PRIu64 "\n"
        "storage_reconnects %" PRIu64 "\n"
        "evictions %" PRIu64 "\n"
        "evictions_lru %" PRIu64 "\n"
        "evictions_cmd %" PRIu64 "\n"
        "bad_requests %" PRIu64 "\n"
        "connections_refused %" PRIu64 "\n"
        "stalled_drops %" PRIu64 "\n"
        "lb_connected %d\n"
        "lb_registrations %" PRIu64 "\n"
        "prefault_seconds %.6f\n",
        d->pool.name, d->pool.size, cache_store_used_bytes(&d->store),
        d->store.alloc.nfree * d->store.block_size, d->store.block_size,
        block_alloc_largest(&d->store.alloc) * d->store.block_size, ready, fetching, batches,
        pinned, subs, d->nconns, d->hits, d->misses, d->cache_in, d->cache_out,
        d->fetches_started, d->fetches_ok, d->fetches_failed, d->bytes_fetched, busy,
        busy > 0 ? (double)d->bytes_fetched / busy : 0.0, fs.storage_conns, fs.reconnects,
        d->evictions_lru + d->evictions_cmd, d->evictions_lru, d->evictions_cmd,
        d->bad_requests, d->conns_refused, d->stalled_drops, d->lb.registered, d->lb.registrations, d->pool.prefault_seconds);
    wbuf_put(wb, text, (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
}

/* The /metrics text (README, "Metrics"); runs on the loop thread. */
static void metrics_text(struct wbuf *out, void *arg)
{
    struct cache_daemon *d = arg;
    struct cache_counts k;
    cache_counts(d, &k);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_hits_total",
                    "Server subscriptions for a model already whole in the pool.", d->hits);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_misses_total",
                    "Server subscriptions for a model not (yet) whole in the pool.", d->misses);
    prom_head(out, "pipeps_cache_evictions_total", PROM_COUNTER,
              "Models evicted: to make room (lru) or by the load balancer's CACHE_OUT (command).");
    struct prom_label lru = {"reason", "lru"}, cmd = {"reason", "command"};
    prom_u64(out, "pipeps_cache_evictions_total", &lru, 1, d->evictions_lru);
    prom_u64(out, "pipeps_cache_evictions_total", &cmd, 1, d->evictions_cmd);
    prom_head(out, "pipeps_cache_lb_commands_total", PROM_COUNTER,
              "CACHE_IN and CACHE_OUT requests from the load balancer.");
    struct prom_label in = {"command", "cache_in"}, outc = {"command", "cache_out"};
    prom_u64(out, "pipeps_cache_lb_commands_total", &in, 1, d->cache_in);
    prom_u64(out, "pipeps_cache_lb_commands_total", &outc, 1, d->cache_out);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_fetches_started_total",
                    "Model fetches started (concurrent requests for one model share one).",
                    d->fetches_started);
    prom_head(out, "pipeps_cache_fetches_finished_total", PROM_COUNTER,
              "Model fetches finished, by result.");
    struct prom_label ok = {"result", "ok"}, failed = {"result", "failed"};
    prom_u64(out, "pipeps_cache_fetches_finished_total", &ok, 1, d->fetches_ok);
    prom_u64(out, "pipeps_cache_fetches_finished_total", &failed, 1, d->fetches_failed);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_fetched_bytes_total",
                    "Parameter bytes fetched from the storages into the pool.", d->bytes_fetched);
    prom_metric_f64(out, PROM_COUNTER, "pipeps_cache_fetch_busy_seconds_total",
                    "Time with at least one fetch running.", k.busy);
    prom_metric_f64(out, PROM_GAUGE, "pipeps_cache_fetch_throughput_bytes_per_second",
                    "Fetched bytes over fetch busy time, since start.",
                    k.busy > 0 ? (double)d->bytes_fetched / k.busy : 0.0);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_pool_capacity_bytes", "Size of the pool.",
                    d->pool.size);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_pool_used_bytes",
                    "Pool bytes held by models (whole blocks).", cache_store_used_bytes(&d->store));
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_pool_largest_free_bytes",
                    "Largest run of free blocks (the largest batch that fits without evicting).",
                    block_alloc_largest(&d->store.alloc) * d->store.block_size);
    prom_head(out, "pipeps_cache_models", PROM_GAUGE, "Models in the pool, by state.");
    struct prom_label ready = {"state", "ready"}, fetching = {"state", "fetching"};
    prom_u64(out, "pipeps_cache_models", &ready, 1, k.ready);
    prom_u64(out, "pipeps_cache_models", &fetching, 1, k.fetching);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_pinned_models",
                    "Models pinned by a server's subscription (never evicted).", k.pinned);
    prom_head(out, "pipeps_cache_model_bytes", PROM_GAUGE,
              "Pool bytes each model holds (whole blocks).");
    for (struct cache_model *m = d->store.lru_head; m; m = m->lru_next) {
        struct prom_label l = {"model", m->name};
        prom_u64(out, "pipeps_cache_model_bytes", &l, 1, m->blocks_held * d->store.block_size);
    }
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_subscriptions", "Active server subscriptions.",
                    k.subs);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_open_connections",
                    "Connections of servers and the load balancer.", (uint64_t)d->nconns);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_connections_refused_total",
                    "Connections refused over --max-conns.", d->conns_refused);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_storage_connections",
                    "Connections to storages open now.", k.fs.storage_conns);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_storage_reconnects_total",
                    "Storage connections reopened after a failure.", k.fs.reconnects);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_bad_requests_total",
                    "Malformed requests (the connection is closed).", d->bad_requests);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_cache_stalled_drops_total",
                    "Peers dropped for stalling inside a request (--io-timeout).", d->stalled_drops);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_cache_lb_connected",
                    "1 while registered with the load balancer.", (uint64_t)d->lb.registered);
}

static int decode_model_or_reject(struct conn *c, const struct frame_header *h, const uint8_t *p,
                                  char name[CACHE_MODEL_NAME_MAX + 1])
{
    int rc = cache_proto_decode_model(p, h->payload_len, name);
    if (rc == PPS_EINVAL) {
        send_error(c, h->type, h->request_id, rc,
                   "bad model name (1..255 printable ASCII bytes, no spaces)");
        return rc;
    }
    if (rc) {
        reject(c, h->type, h->request_id, rc, "malformed payload (expected: str model)");
        return rc;
    }
    return 0;
}

static void on_subscribe(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_daemon *d = c->d;
    char name[CACHE_MODEL_NAME_MAX + 1];
    if (decode_model_or_reject(c, h, p, name))
        return;
    if (c->nsubs >= MAX_SUBS_PER_CONN) {
        send_error(c, h->type, h->request_id, PPS_EBUSY, "too many subscriptions on this connection");
        return;
    }
    for (struct sub *s = c->subs; s; s = s->cnext)
        if (s->rid == h->request_id && s->kind == SUB_SUBSCRIBE) {
            send_error(c, h->type, h->request_id, PPS_EEXISTS,
                       "a subscription with this request id is active on this connection");
            return;
        }
    struct cache_model *m = cache_store_find(&d->store, name);
    int hit = m && m->state == CACHE_MODEL_READY;
    if (hit)
        d->hits++;
    else
        d->misses++;
    if (!m)
        m = start_model(d, name);
    cache_store_touch(&d->store, m);
    struct sub *s = sub_new(c, SUB_SUBSCRIBE, h->request_id, m);
    s->hit = hit;
    sub_flush(d, s);
}

static void on_unpin(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    uint64_t sub_id;
    if (cache_proto_decode_u64(p, h->payload_len, &sub_id)) {
        reject(c, h->type, h->request_id, PPS_EPROTO, "malformed payload (expected: u64 sub_id)");
        return;
    }
    for (struct sub *s = c->subs; s; s = s->cnext)
        if (s->rid == sub_id && s->kind == SUB_SUBSCRIBE) {
            sub_free(c->d, s);
            send_response(c, h->type, h->request_id, NULL, 0);
            return;
        }
    send_error(c, h->type, h->request_id, PPS_ENOTFOUND, "no such subscription on this connection");
}

static void on_cache_in(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_daemon *d = c->d;
    char name[CACHE_MODEL_NAME_MAX + 1];
    if (decode_model_or_reject(c, h, p, name))
        return;
    if (c->nsubs >= MAX_SUBS_PER_CONN) {
        send_error(c, h->type, h->request_id, PPS_EBUSY, "too many requests in flight");
        return;
    }
    d->cache_in++;
    struct cache_model *m = cache_store_find(&d->store, name);
    if (!m)
        m = start_model(d, name);
    cache_store_touch(&d->store, m);
    struct sub *s = sub_new(c, SUB_CACHE_IN, h->request_id, m);
    sub_flush(d, s);
}

static void on_cache_out(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_daemon *d = c->d;
    char name[CACHE_MODEL_NAME_MAX + 1];
    char msg[384];
    if (decode_model_or_reject(c, h, p, name))
        return;
    d->cache_out++;
    struct cache_model *m = cache_store_find(&d->store, name);
    if (!m) {
        snprintf(msg, sizeof msg, "model %s is not in the cache", name);
        send_error(c, h->type, h->request_id, PPS_ENOTFOUND, msg);
        return;
    }
    if (m->pins > 0) {
        snprintf(msg, sizeof msg, "model %s is pinned by %d subscription(s)", name, m->pins);
        send_error(c, h->type, h->request_id, PPS_EBUSY, msg);
        return;
    }
    d->evictions_cmd++;
    if (m->state == CACHE_MODEL_READY) {
        log_info("model %s: evicted by CACHE_OUT (%" PRIu64 " bytes)", name,
                 m->blocks_held * d->store.block_size);
        lb_event(d, CACHE_EVENT_EVICTED, m);
        detach_model(d, m); /* released now, or when its job finishes */
    } else {
        fail_model(d, m, PPS_ECANCELED, "evicted by CACHE_OUT while being fetched", 0);
    }
    send_response(c, h->type, h->request_id, NULL, 0);
}

static void on_hello(struct conn *c, const struct frame_header *h)
{
    struct cache_daemon *d = c->d;
    struct cache_hello hello = {.version = CACHE_PROTO_VERSION,
                                .pool_size = d->pool.size,
                                .block_size = d->store.block_size};
    snprintf(hello.shm_name, sizeof hello.shm_name, "%s", d->pool.name);
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_hello(&wb, &hello);
    send_response(c, h->type, h->request_id, wb.data, wb.len);
    wbuf_free(&wb);
}

static void on_register_response(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_daemon *d = c->d;
    if (h->request_id != d->lb.register_rid)
        return;
    if (h->status < 0) {
        log_warn("load balancer refused the registration: %.*s (%s)", (int)h->payload_len,
                 (const char *)p, pps_strerror(h->status));
        conn_kill(c);
        return;
    }
    d->lb.registered = 1;
    d->lb.registrations++;
    d->lb.backoff_ms = LB_BACKOFF_MIN_MS;
    d->lb.down_logged = 0;
    log_info("registered with the load balancer at %s:%u", d->cfg.lb_addr, d->cfg.lb_port);
}

/* CACHE_LIST: the complete models, most recently used first. */
static void on_list(struct conn *c, const struct frame_header *h)
{
    struct cache_daemon *d = c->d;
    struct cache_meta_msg *v = calloc(CACHE_LIST_MAX, sizeof *v);
    if (!v) {
        send_error(c, h->type, h->request_id, PPS_ENOMEM, "out of memory");
        return;
    }
    uint32_t n = 0;
    for (struct cache_model *m = d->store.lru_head; m && n < CACHE_LIST_MAX; m = m->lru_next) {
        if (m->state != CACHE_MODEL_READY || !m->in_table) continue;
        struct cache_meta_msg *e = &v[n++];
        snprintf(e->model, sizeof e->model, "%s", m->name);
        e->generation = m->generation;
        e->total_size = m->total_size;
        e->nbatches = m->nbatches;
        e->offset = m->meta.offset;
        e->len = m->meta.len;
    }
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_list(&wb, v, n);
    send_response(c, h->type, h->request_id, wb.data, wb.len);
    wbuf_free(&wb);
    free(v);
}

static void dispatch(struct conn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_daemon *d = c->d;
    if (h->flags & FRAME_FLAG_RESPONSE) {
        if (c->is_lb) {
            if (h->type == MSG_LB_CACHE_REGISTER)
                on_register_response(c, h, p);
            return; /* responses to one-way events are tolerated */
        }
        reject(c, MSG_ERROR, h->request_id, PPS_EPROTO, "unexpected response frame");
        return;
    }
    switch (h->type) {
    case MSG_PING:
        send_response(c, h->type, h->request_id, p, h->payload_len);
        break;
    case MSG_STAT: {
        struct wbuf wb;
        wbuf_init(&wb);
        stat_text(d, &wb);
        send_response(c, h->type, h->request_id, wb.data, wb.len);
        wbuf_free(&wb);
        break;
    }
    case MSG_CACHE_HELLO:
        on_hello(c, h);
        break;
    case MSG_CACHE_SUBSCRIBE:
        on_subscribe(c, h, p);
        break;
    case MSG_CACHE_UNPIN:
        on_unpin(c, h, p);
        break;
    case MSG_CACHE_IN:
        on_cache_in(c, h, p);
        break;
    case MSG_CACHE_OUT:
        on_cache_out(c, h, p);
        break;
    case MSG_CACHE_LIST:
        on_list(c, h);
        break;
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "unknown message type %s", frame_type_name(h->type));
        reject(c, MSG_ERROR, h->request_id, PPS_EUNSUPPORTED, msg);
    }
    }
}

/* ---- connections ------------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->dead && !c->closing) {
        size_t avail = evbuffer_get_length(in);
        if (avail < FRAME_HEADER_SIZE)
            break;
        uint8_t raw[FRAME_HEADER_SIZE];
        evbuffer_copyout(in, raw, sizeof raw);
        struct frame_header h;
        int rc = frame_decode_header(raw, &h, CACHE_MAX_REQUEST);
        if (rc) {
            const char *why = rc == PPS_ETOOBIG         ? "payload length over the limit"
                              : rc == PPS_EUNSUPPORTED ? "unsupported protocol version"
                                                       : "malformed frame header";
            reject(c, rc == PPS_EPROTO ? MSG_ERROR : h.type, h.request_id, rc, why);
            break;
        }
        if (avail < FRAME_HEADER_SIZE + h.payload_len)
            break; /* the rest is on its way */
        evbuffer_drain(in, FRAME_HEADER_SIZE);
        const uint8_t *p = h.payload_len ? evbuffer_pullup(in, (ssize_t)h.payload_len) : NULL;
        dispatch(c, &h, p);
        evbuffer_drain(in, h.payload_len);
    }
    if (c->closing && !c->dead && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_kill(c);
    /* Between frames a peer may be silent forever; inside one, --io-timeout. */
    if (!c->dead && !c->closing)
        inbound_ev_arm(bev, evbuffer_get_length(in) > 0, c->d->cfg.io_timeout_ms,
                       &c->timer_armed);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_kill(c);
}

static void lb_register(struct cache_daemon *d);

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int fd = bufferevent_getfd(c->bev);
        net_set_nodelay(fd);
        if (c->is_lb)
            lb_register(c->d);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
        c->d->stalled_drops++;
        log_warn("%s: stalled %d s in the middle of a frame (%zu bytes buffered); dropped",
                 c->peer, c->d->cfg.io_timeout_ms / 1000,
                 evbuffer_get_length(bufferevent_get_input(bev)));
    } else if (c->is_lb && !c->d->lb.register_sent) {
        if (!c->d->lb.down_logged)
            log_info("load balancer at %s:%u not reachable yet; retrying with backoff",
                     c->d->cfg.lb_addr, c->d->cfg.lb_port);
        c->d->lb.down_logged = 1;
    } else if (what & BEV_EVENT_ERROR) {
        log_info("%s: connection error: %s", c->peer,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    } else {
        log_debug("%s: disconnected", c->peer);
    }
    conn_kill(c);
}

static struct conn *conn_new(struct cache_daemon *d, struct bufferevent *bev, const char *peer,
                             int is_lb)
{
    struct conn *c = pps_xcalloc(1, sizeof *c);
    c->d = d;
    c->bev = bev;
    c->is_lb = is_lb;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    if (!is_lb)
        d->nconns++;
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return c;
}

static void lb_schedule(struct cache_daemon *d);

static void conn_free(struct conn *c)
{
    struct cache_daemon *d = c->d;
    while (c->subs)
        sub_free(d, c->subs);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!c->is_lb)
        d->nconns--;
    bufferevent_free(c->bev);
    if (c->is_lb && d->lb.conn == c) {
        if (d->lb.registered)
            log_warn("lost the load balancer connection; reconnecting");
        d->lb.conn = NULL;
        d->lb.registered = 0;
        d->lb.register_sent = 0;
        if (!d->stopping)
            lb_schedule(d);
    }
    free(c);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache_daemon *d = arg;
    struct conn *c = d->conns;
    while (c) {
        struct conn *next = c->next;
        if (c->dead)
            conn_free(c);
        c = next;
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)l;
    (void)salen;
    struct cache_daemon *d = arg;
    char peer[64] = "?";
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(peer, sizeof peer, "%s:%u", ip, ntohs(in->sin_port));
    }
    if (d->nconns >= d->cfg.max_conns) {
        log_warn("%s: refused: %d connections already (--max-conns)", peer, d->nconns);
        d->conns_refused++;
        inbound_refuse(fd, d->cfg.max_conns);
        return;
    }
    net_set_nodelay(fd);
    struct bufferevent *bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    conn_new(d, bev, peer, 0);
    log_debug("%s: connected", peer);
}

/* ---- load-balancer link ------------------------------------------------ */

static void lb_register(struct cache_daemon *d)
{
    struct conn *c = d->lb.conn;
    struct cache_register_msg reg = {.server_port = d->listen_port,
                                     .capacity = d->pool.size,
                                     .block_size = d->store.block_size,
                                     .used = cache_store_used_bytes(&d->store)};
    snprintf(reg.server_addr, sizeof reg.server_addr, "%s", d->cfg.server_addr);
    snprintf(reg.shm_name, sizeof reg.shm_name, "%s", d->pool.name);
    uint32_t n = 0;
    for (struct cache_model *m = d->store.lru_head; m; m = m->lru_next)
        n += m->state == CACHE_MODEL_READY;
    reg.models = pps_xcalloc(n ? n : 1, sizeof *reg.models);
    for (struct cache_model *m = d->store.lru_head; m; m = m->lru_next)
        if (m->state == CACHE_MODEL_READY) {
            snprintf(reg.models[reg.nmodels].model, sizeof reg.models[0].model, "%s", m->name);
            reg.models[reg.nmodels++].bytes = m->blocks_held * d->store.block_size;
        }
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_register(&wb, &reg);
    free(reg.models);
    d->lb.register_rid = d->lb.next_rid++;
    send_frame(c, MSG_LB_CACHE_REGISTER, 0, 0, d->lb.register_rid, wb.data, wb.len);
    wbuf_free(&wb);
    d->lb.register_sent = 1;
    log_info("connected to the load balancer at %s:%u; registering (%u models held)",
             d->cfg.lb_addr, d->cfg.lb_port, n);
}

static void lb_connect(struct cache_daemon *d)
{
    struct bufferevent *bev = bufferevent_socket_new(d->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        lb_schedule(d);
        return;
    }
    char peer[96];
    snprintf(peer, sizeof peer, "load balancer %s:%u", d->cfg.lb_addr, d->cfg.lb_port);
    d->lb.conn = conn_new(d, bev, peer, 1);
    d->lb.register_sent = 0;
    d->lb.registered = 0;
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&d->lb.sa, sizeof d->lb.sa) < 0)
        conn_kill(d->lb.conn); /* the reaper schedules the next try */
}

static void lb_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache_daemon *d = arg;
    if (!d->lb.conn && !d->stopping)
        lb_connect(d);
}

static void lb_schedule(struct cache_daemon *d)
{
    int ms = d->lb.backoff_ms;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(d->lb.timer, &tv);
    d->lb.backoff_ms = ms * 2 > d->cfg.lb_backoff_max_ms ? d->cfg.lb_backoff_max_ms : ms * 2;
}

static int resolve_ipv4(const char *host, uint16_t port, struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) == 1)
        return 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return PPS_EINVAL;
    sa->sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return 0;
}

/* ---- start and stop ---------------------------------------------------- */

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct cache_daemon *d = arg;
    log_info("signal %d: shutting down", (int)sig);
    d->stopping = 1;
    event_base_loopbreak(d->base);
}

static void daemon_free(struct cache_daemon *d)
{
    d->stopping = 1;
    metrics_http_stop(d->metrics); /* the loop has returned: see metrics_http.h */
    d->metrics = NULL;
    if (d->listener)
        evconnlistener_free(d->listener);
    /* threads write into the pool: stop them before anything is unmapped */
    fetch_destroy(d->fetch);
    d->fetch = NULL;
    while (d->conns) {
        d->conns->dead = 1;
        conn_free(d->conns);
    }
    for (size_t i = 0; i < d->norphans; i++)
        fetch_job_free(d->orphans[i]);
    free(d->orphans);
    /* every subscription is gone; free per-model state, then the models */
    while (d->zombies) {
        struct model_state *ms = d->zombies;
        d->zombies = ms->znext;
        fetch_job_free(ms->job);
        drop_records(ms);
        cache_store_release(&d->store, ms->m);
        free(ms);
    }
    for (struct cache_model *m = d->store.lru_head; m; m = m->lru_next) {
        struct model_state *ms = m->owner;
        if (ms) {
            fetch_job_free(ms->job);
            drop_records(ms);
            free(ms);
        }
        m->owner = NULL;
    }
    if (d->store.buckets)
        cache_store_destroy(&d->store);
    if (d->lb.timer)
        event_free(d->lb.timer);
    if (d->fetch_ev)
        event_free(d->fetch_ev);
    if (d->reaper_ev)
        event_free(d->reaper_ev);
    if (d->room_ev)
        event_free(d->room_ev);
    if (d->sigterm_ev)
        event_free(d->sigterm_ev);
    if (d->sigint_ev)
        event_free(d->sigint_ev);
    if (d->base)
        event_base_free(d->base);
    if (d->pool.base) {
        shm_pool_close(&d->pool, 1);
        log_info("removed shared memory %s", d->pool.name);
    }
}

int cache_daemon_run(const struct cache_config *cfg)
{
    struct cache_daemon *d = pps_xcalloc(1, sizeof *d);
    d->cfg = *cfg;
    d->pool.fd = -1;
    d->lb.backoff_ms = LB_BACKOFF_MIN_MS;
    d->lb.next_rid = 1;
    int rc = 0;
    if (cfg->block_size == 0 || cfg->block_size % 4096 || cfg->shm_size < cfg->block_size ||
        cfg->shm_size % cfg->block_size) {
        log_error("bad pool geometry: %" PRIu64 " bytes in blocks of %" PRIu64, cfg->shm_size,
                  cfg->block_size);
        free(d);
        return PPS_EINVAL;
    }
    if ((rc = resolve_ipv4(cfg->lb_addr, cfg->lb_port, &d->lb.sa)) != 0) {
        log_error("cannot resolve the load balancer address %s", cfg->lb_addr);
        free(d);
        return rc;
    }
    int lfd = -1;
    char err[200];
    if ((rc = net_listen_msg(cfg->server_addr, cfg->server_port, &lfd, err, sizeof err)) != 0) {
        log_error("%s", err);
        free(d);
        return rc;
    }
    net_local_port(lfd, &d->listen_port);
    int mfd = -1;
    uint16_t metrics_port = 0;
    if (cfg->metrics_port >= 0 &&
        (rc = metrics_http_listen(cfg->server_addr, (uint16_t)cfg->metrics_port, &mfd,
                                  &metrics_port, err, sizeof err)) != 0) {
        log_error("%s", err);
        close(lfd);
        free(d);
        return rc;
    }

    rc = shm_pool_create(&d->pool, cfg->shm_name, cfg->shm_size);
    if (rc) {
        log_error("cannot create shared memory %s of %" PRIu64 " bytes: %s", cfg->shm_name,
                  cfg->shm_size, pps_strerror(rc));
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        free(d);
        return rc;
    }
    log_info("pool %s: %" PRIu64 " bytes, %" PRIu64 " blocks of %" PRIu64
             "; pre-faulted in %.3f s (%.2f GB/s)%s",
             d->pool.name, d->pool.size, d->pool.size / cfg->block_size, cfg->block_size,
             d->pool.prefault_seconds,
             d->pool.prefault_seconds > 0 ? (double)d->pool.size / d->pool.prefault_seconds / 1e9
                                          : 0.0,
             d->pool.replaced_leftover ? " (replaced a leftover pool)" : "");
    cache_store_init(&d->store, d->pool.size / cfg->block_size, cfg->block_size);

    struct fetch_config fc = {.meta_port = cfg->meta_port,
                              .conns_per_storage = cfg->fetch_threads,
                              .depth = cfg->depth,
                              .throttle_bps = cfg->throttle_bps,
                              .retries = cfg->retries,
                              .progress_timeout_ms = cfg->progress_timeout_ms};
    snprintf(fc.meta_addr, sizeof fc.meta_addr, "%s", cfg->meta_addr);
    if ((rc = fetch_create(&d->fetch, &fc)) != 0) {
        log_error("cannot start the fetcher: %s", pps_strerror(rc));
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        goto out;
    }
    d->base = event_base_new();
    if (!d->base) {
        log_error("cannot set up the event loop: out of memory");
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        rc = PPS_ENOMEM;
        goto out;
    }
    if (mfd >= 0 && (rc = metrics_http_attach(&d->metrics, d->base, mfd, metrics_text, d)) != 0) {
        log_error("cannot serve metrics: %s", pps_strerror(rc));
        close(lfd);
        goto out;
    }
    evutil_make_socket_nonblocking(lfd);
    d->listener = evconnlistener_new(d->base, accept_cb, d, LEV_OPT_CLOSE_ON_FREE, -1, lfd);
    d->fetch_ev = event_new(d->base, fetch_event_fd(d->fetch), EV_READ | EV_PERSIST,
                            on_fetch_event, d);
    d->reaper_ev = event_new(d->base, -1, 0, reaper_cb, d);
    d->room_ev = event_new(d->base, -1, 0, room_cb, d);
    d->lb.timer = evtimer_new(d->base, lb_timer_cb, d);
    d->sigterm_ev = evsignal_new(d->base, SIGTERM, signal_cb, d);
    d->sigint_ev = evsignal_new(d->base, SIGINT, signal_cb, d);
    if (!d->listener || !d->fetch_ev || !d->reaper_ev || !d->room_ev || !d->lb.timer || !d->sigterm_ev ||
        !d->sigint_ev) {
        if (!d->listener)
            close(lfd);
        log_error("cannot set up the event loop: out of memory");
        rc = PPS_ENOMEM;
        goto out;
    }
    event_add(d->fetch_ev, NULL);
    event_add(d->sigterm_ev, NULL);
    event_add(d->sigint_ev, NULL);
    lb_connect(d);
    log_info("cache listening on %s:%u (metadata storage %s:%u, load balancer %s:%u)",
             cfg->server_addr, d->listen_port, cfg->meta_addr, cfg->meta_port, cfg->lb_addr,
             cfg->lb_port);
    if (d->metrics) {
        printf("cache metrics on http://%s:%u/metrics\n", cfg->server_addr, metrics_port);
        fflush(stdout);
        log_info("metrics on http://%s:%u/metrics", cfg->server_addr, metrics_port);
    }
    event_base_dispatch(d->base);
    rc = 0;
out:
    daemon_free(d);
    free(d);
    return rc;
}
