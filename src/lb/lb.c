/* lb: the load balancer daemon; see lb.h.
 *
 * A client's INFER travels like this: read whole from the client
 * connection into its own evbuffer (bounded by --max-request on the header,
 * before anything is buffered); its model's size is looked up once in the
 * metadata storage (the request waits meanwhile, other requests do not);
 * lb_place picks a server, or the request waits in the queue until a
 * completion, a registration or a cache event lets it go; the payload is
 * forwarded by reference (no copy) on the balancer's connection to that
 * server under a fresh request id; the answer is relayed to the client
 * with the balancer's 64-byte block appended to the timing block, again
 * moving the bytes rather than copying them. Every request gets exactly
 * one answer: relayed, an error, a queue timeout, or ECANCELED at shutdown.
 *
 * The easy thing to get wrong: a request's payload must survive its
 * forwarding, because a server lost with the request in flight means one
 * retry on another server. So forwarding adds a reference to the payload
 * (evbuffer_add_buffer_reference) and the request keeps the original until
 * its answer. */
#include "lb/lb.h"
#include "cache/cache_proto.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/net.h"
#include "formats/location.h"
#include "http/metrics_http.h"
#include "http/prom.h"
#include "lb/lb_http.h"
#include "model/graph.h"
#include "model/model_blob.h"
#include "server/model_info.h"
#include "server/server_proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define LB_CONTROL_MAX INFER_MAX_CONTROL
#define LB_META_VALUE_MAX (64u << 20) /* META_MAX_VALUE of metadata/meta_client.h (its meta_get clashes) */
#define LB_READ_CHUNK (4 << 20)
#define LB_TICK_MS 50
#define LB_SCAN_LIMIT 512          /* queued requests looked at per scheduling pass */
#define LB_LAT_RING 8192
#define LB_MODEL_RING 256
#define LB_META_BACKOFF_MAX_MS 5000
#define LB_STOP_GRACE_S 5.0

enum conn_kind { CONN_CLIENT, CONN_SERVER_REG, CONN_SERVER_FWD, CONN_CACHE, CONN_META };

static const char *const kind_names[] = {"client", "server", "server link", "cache", "metadata storage"};

enum req_state { REQ_SIZE_WAIT, REQ_QUEUED, REQ_INFLIGHT, REQ_INFO_WAIT };

struct lb;

struct lreq {
    uint64_t id;                   /* the balancer's id towards the server */
    struct lconn *client;          /* NULL once the client has gone (answer dropped) */
    uint64_t client_rid;
    uint16_t type;                 /* MSG_INFER or MSG_MODEL_INFO */
    struct lb_model *model;
    struct evbuffer *payload;      /* the request as the client sent it */
    double t_recv, t_dispatch;
    int state;                     /* enum req_state */
    int attempts;
    struct lb_choice choice;       /* server, rule, placed, estimate */
    struct lb_server *server;
    struct lreq *prev, *next;      /* the queue, or the forwarding connection's in-flight list */
    struct lreq *cprev, *cnext;    /* the client connection's requests */
    lb_answer_fn fn;               /* a request of the HTTP front end: its answer goes here */
    void *ctx;
};

/* A CACHE_IN / CACHE_OUT awaiting the cache's answer. */
struct cache_op {
    uint64_t rid;
    uint16_t type;
    struct lb_model *model;
    struct cache_op *next;
};

/* A lookup awaiting the metadata storage's answer (answered in order):
 * a model's size, or the two steps to its description (location record,
 * then METADATA blob) for MODEL_INFO. */
enum meta_kind { META_SIZE, META_LOCATION, META_BLOB };

struct meta_op {
    uint64_t rid;
    int kind;                      /* enum meta_kind */
    struct lb_model *model;
    struct meta_op *next;
};

struct lconn {
    struct lb *lb;
    int kind;                      /* enum conn_kind */
    struct bufferevent *bev;
    char peer[80];
    int dead, closing;
    uint64_t discard;              /* bytes of a refused payload still to skip */
    struct lb_server *server;      /* CONN_SERVER_REG / CONN_SERVER_FWD */
    struct lb_machine *machine;    /* CONN_CACHE */
    struct lreq *reqs;             /* CONN_CLIENT: its requests; CONN_SERVER_FWD: in flight */
    struct cache_op *ops;          /* CONN_CACHE */
    struct lconn *prev, *next;
};

struct lat_ring {
    float *v;
    int cap, n, pos;
};

struct lb {
    struct lb_config cfg;
    struct event_base *base;
    struct evconnlistener *listeners[3];
    struct event *sig_int, *sig_term, *tick, *meta_timer, *reaper;
    struct lconn *conns;
    int nclients;
    struct lb_place pl;
    struct lreq *qhead, *qtail;    /* waiting requests, oldest first (retries go first) */
    int nqueued;
    uint64_t next_rid;
    /* metadata link */
    struct lconn *meta;
    int meta_up, meta_backoff_ms;
    struct meta_op *mhead, *mtail; /* sent, awaiting answers (FIFO) */
    struct lb_model **mwant;       /* models to ask about once connected */
    int nmwant, capmwant;
    struct sockaddr_in meta_sa;
    /* shutdown */
    int stopping;
    double stop_deadline;
    double t_start;
    /* counters */
    uint64_t requests, ok, errors, timeouts, retries, unknown_models, busy, canceled, bad_requests;
    uint64_t model_infos, server_registrations, cache_registrations, server_losses, cache_losses;
    uint64_t cache_in_sent, cache_out_sent, cache_in_failed, cache_out_refused, size_lookups;
    struct lat_ring lat, lat_queue;
    struct prom_hist hist_latency, hist_queue;
    struct lb_http *http;
    /* recent evictions reported by the caches, for the status page */
    struct {
        double t;
        int machine;
        char model[LB_NAME_MAX + 1];
    } evicted[16];
    int nevicted;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void ring_push(struct lat_ring *r, double v)
{
    if (!r->v) {
        r->cap = LB_LAT_RING;
        r->v = pps_xcalloc((size_t)r->cap, sizeof *r->v);
    }
    r->v[r->pos] = (float)v;
    r->pos = (r->pos + 1) % r->cap;
    if (r->n < r->cap)
        r->n++;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Percentiles of the ring's contents into q[] for p[] (0..1). */
static void ring_percentiles(const struct lat_ring *r, const double *p, double *q, int np)
{
    if (!r->n) {
        for (int i = 0; i < np; i++)
            q[i] = 0;
        return;
    }
    float *s = pps_xmalloc((size_t)r->n * sizeof *s);
    memcpy(s, r->v, (size_t)r->n * sizeof *s);
    qsort(s, (size_t)r->n, sizeof *s, cmp_float);
    for (int i = 0; i < np; i++) {
        int k = (int)ceil(p[i] * r->n) - 1;
        q[i] = s[k < 0 ? 0 : k >= r->n ? r->n - 1 : k];
    }
    free(s);
}

/* ---- connections: sending ---------------------------------------------- */

static void send_head(struct lconn *c, uint16_t type, uint8_t flags, int32_t status, uint64_t rid,
                      uint64_t len)
{
    struct frame_header h = {.type = type, .flags = flags, .status = status, .request_id = rid,
                             .payload_len = len};
    uint8_t raw[FRAME_HEADER_SIZE];
    frame_encode_header(raw, &h);
    bufferevent_write(c->bev, raw, sizeof raw);
}

static void send_frame(struct lconn *c, uint16_t type, uint8_t flags, int32_t status, uint64_t rid,
                       const void *p, size_t n)
{
    if (c->dead)
        return;
    send_head(c, type, flags, status, rid, n);
    if (n)
        bufferevent_write(c->bev, p, n);
}

static void send_error(struct lconn *c, uint16_t type, uint64_t rid, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void send_error(struct lconn *c, uint16_t type, uint64_t rid, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_frame(c, type, FRAME_FLAG_RESPONSE, status, rid, msg, strlen(msg));
}

static void kill_conn(struct lconn *c);

/* Answer, then close once the answer is out (the stream cannot be trusted). */
static void reject_and_close(struct lconn *c, uint16_t type, uint64_t rid, int status, const char *why)
{
    log_warn("%s %s: %s; closing", kind_names[c->kind], c->peer, why);
    c->lb->bad_requests++;
    send_error(c, type, rid, status, "%s", why);
    c->closing = 1;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        kill_conn(c);
}

/* ---- requests ------------------------------------------------------------ */

static void q_unlink(struct lb *lb, struct lreq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        lb->qhead = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        lb->qtail = r->prev;
    r->prev = r->next = NULL;
    lb->nqueued--;
}

static void q_append(struct lb *lb, struct lreq *r, int front)
{
    r->prev = r->next = NULL;
    if (front) {
        r->next = lb->qhead;
        if (lb->qhead)
            lb->qhead->prev = r;
        else
            lb->qtail = r;
        lb->qhead = r;
    } else {
        r->prev = lb->qtail;
        if (lb->qtail)
            lb->qtail->next = r;
        else
            lb->qhead = r;
        lb->qtail = r;
    }
    lb->nqueued++;
}

static void fwd_link(struct lconn *f, struct lreq *r)
{
    r->prev = NULL;
    r->next = f->reqs;
    if (f->reqs)
        f->reqs->prev = r;
    f->reqs = r;
}

static void fwd_unlink(struct lconn *f, struct lreq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        f->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void client_unlink(struct lreq *r)
{
    struct lconn *c = r->client;
    if (!c)
        return;
    if (r->cprev)
        r->cprev->cnext = r->cnext;
    else
        c->reqs = r->cnext;
    if (r->cnext)
        r->cnext->cprev = r->cprev;
    r->cprev = r->cnext = NULL;
    r->client = NULL;
}

static void req_free(struct lreq *r)
{
    client_unlink(r);
    if (r->payload)
        evbuffer_free(r->payload);
    free(r);
}

static void note_model_answer(struct lb *lb, struct lreq *r, int ok, double latency_ms)
{
    if (r->type != MSG_INFER)
        return;
    if (ok) {
        lb->ok++;
        ring_push(&lb->lat, latency_ms);
        prom_hist_observe(&lb->hist_latency, latency_ms / 1e3);
        if (r->model) {
            if (!r->model->latency) {
                r->model->latency = pps_xmalloc(sizeof *r->model->latency);
                prom_hist_init(r->model->latency, NULL, 0);
            }
            prom_hist_observe(r->model->latency, latency_ms / 1e3);
        }
    } else {
        lb->errors++;
    }
    if (r->model) {
        if (ok)
            r->model->ok++;
        else
            r->model->errors++;
    }
}

/* Answer a request that never reached a server (or lost it) with an error,
 * and free it. The request must be in no list but its client's. */
static void req_fail(struct lb *lb, struct lreq *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void req_fail(struct lb *lb, struct lreq *r, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_info("request %" PRIu64 " (%s %s) from %s: %s: %s", r->client_rid, frame_type_name(r->type),
             r->model ? r->model->name : "?", r->client ? r->client->peer : "(gone)", pps_errname(status), msg);
    note_model_answer(lb, r, 0, 0);
    if (r->fn)
        r->fn(r->ctx, status, msg, NULL);
    else if (r->client)
        send_error(r->client, r->type, r->client_rid, status, "load balancer: %s", msg);
    req_free(r);
}

/* ---- cache link ---------------------------------------------------------- */

static void cache_send(struct lb *lb, struct lb_machine *m, uint16_t type, struct lb_model *model)
{
    struct lconn *c = m->conn;
    if (!c || c->dead)
        return;
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_model(&wb, model->name);
    struct cache_op *op = pps_xcalloc(1, sizeof *op);
    op->rid = ++lb->next_rid;
    op->type = type;
    op->model = model;
    op->next = c->ops;
    c->ops = op;
    send_frame(c, type, 0, 0, op->rid, wb.data, wb.len);
    wbuf_free(&wb);
    if (type == MSG_CACHE_IN) {
        m->cache_in++;
        lb->cache_in_sent++;
    } else {
        m->cache_out++;
        lb->cache_out_sent++;
    }
    log_debug("%s %s to cache %s:%u", frame_type_name(type), model->name, m->cache_addr, m->cache_port);
}

/* ---- scheduling ---------------------------------------------------------- */

static void forward(struct lb *lb, struct lreq *r, const struct lb_choice *ch)
{
    struct lb_server *s = ch->server;
    struct lconn *f = s->fwd_conn;
    r->choice = *ch;
    r->server = s;
    r->state = REQ_INFLIGHT;
    r->attempts++;
    r->id = ++lb->next_rid;
    r->t_dispatch = now_s();
    fwd_link(f, r);
    size_t n = evbuffer_get_length(r->payload);
    send_head(f, r->type, 0, 0, r->id, n);
    if (n)
        evbuffer_add_buffer_reference(bufferevent_get_output(f->bev), r->payload);
    if (r->type == MSG_INFER) {
        lb_place_dispatched(&lb->pl, s, r->model, ch->estimate_ms);
        ring_push(&lb->lat_queue, (r->t_dispatch - r->t_recv) * 1e3);
        prom_hist_observe(&lb->hist_queue, r->t_dispatch - r->t_recv);
    }
}

static int any_capacity(const struct lb *lb)
{
    for (int i = 0; i < lb->pl.nservers; i++)
        if (lb->pl.servers[i]->ready && lb->pl.servers[i]->outstanding < lb->pl.max_outstanding)
            return 1;
    return 0;
}

/* Try to place waiting requests, oldest first; a request that cannot go
 * now (its cache needs room taken by requests in flight) does not hold up
 * the ones behind it. */
static void schedule(struct lb *lb)
{
    int looked = 0;
    struct lreq *r = lb->qhead;
    while (r && looked < LB_SCAN_LIMIT && any_capacity(lb)) {
        struct lreq *next = r->next;
        if (r->state == REQ_QUEUED) {
            looked++;
            struct lb_choice ch;
            if (lb_place_choose(&lb->pl, r->model, &ch) == 0) {
                struct lb_machine *m = ch.server->machine;
                for (int i = 0; i < ch.nvictims; i++)
                    cache_send(lb, m, MSG_CACHE_OUT, ch.victims[i]);
                if (ch.cache_in)
                    cache_send(lb, m, MSG_CACHE_IN, r->model);
                q_unlink(lb, r);
                forward(lb, r, &ch);
            }
        }
        r = next;
    }
}

/* ---- metadata link (model sizes) --------------------------------------- */

static void meta_connect(struct lb *lb);

static void meta_get(struct lb *lb, struct lb_model *m, int kind, const char *key)
{
    struct wbuf wb;
    wbuf_init(&wb);
    wbuf_str(&wb, key);
    struct meta_op *op = pps_xcalloc(1, sizeof *op);
    op->rid = ++lb->next_rid;
    op->kind = kind;
    op->model = m;
    if (lb->mtail)
        lb->mtail->next = op;
    else
        lb->mhead = op;
    lb->mtail = op;
    send_frame(lb->meta, MSG_META_GET, 0, 0, op->rid, wb.data, wb.len);
    wbuf_free(&wb);
    if (kind == META_SIZE)
        lb->size_lookups++;
}

static void meta_send(struct lb *lb, struct lb_model *m)
{
    char key[LB_NAME_MAX + 8];
    snprintf(key, sizeof key, "%s-SIZE", m->name);
    meta_get(lb, m, META_SIZE, key);
}

static void size_lookup(struct lb *lb, struct lb_model *m)
{
    m->size_state = LB_SIZE_ASKING;
    if (lb->meta_up) {
        meta_send(lb, m);
        return;
    }
    if (lb->nmwant == lb->capmwant) {
        lb->capmwant = lb->capmwant ? lb->capmwant * 2 : 16;
        lb->mwant = pps_xrealloc(lb->mwant, (unsigned long)lb->capmwant * sizeof *lb->mwant);
    }
    lb->mwant[lb->nmwant++] = m;
    if (!lb->meta)
        meta_connect(lb);
}

/* Whether a request or a lookup still points at m (then it must not be
 * forgotten). */
static int model_in_use(const struct lb *lb, const struct lb_model *m)
{
    for (const struct lreq *r = lb->qhead; r; r = r->next)
        if (r->model == m)
            return 1;
    for (const struct meta_op *op = lb->mhead; op; op = op->next)
        if (op->model == m)
            return 1;
    for (int i = 0; i < lb->nmwant; i++)
        if (lb->mwant[i] == m)
            return 1;
    return 0;
}

/* The size of m is now known, absent, or could not be read: release the
 * requests waiting for it. */
static void size_resolved(struct lb *lb, struct lb_model *m, int status, const char *why)
{
    for (struct lreq *r = lb->qhead, *next; r; r = next) {
        next = r->next;
        if (r->model != m || r->state != REQ_SIZE_WAIT)
            continue;
        if (m->size_state == LB_SIZE_KNOWN) {
            r->state = REQ_QUEUED;
            continue;
        }
        q_unlink(lb, r);
        if (m->size_state == LB_SIZE_ABSENT)
            lb->unknown_models++;
        req_fail(lb, r, status, "%s", why);
    }
    if (m->size_state == LB_SIZE_ABSENT && !model_in_use(lb, m))
        lb_place_forget_model(&lb->pl, m);
    else if (m->size_state != LB_SIZE_ABSENT)
        schedule(lb);
}

/* ---- MODEL_INFO from the metadata storage --------------------------------- */

/* A MODEL_INFO answer from m's cached description. */
static void answer_info(struct lreq *r, struct lb_model *m)
{
    if (r->fn) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, m->info, m->info_len);
        r->fn(r->ctx, 0, NULL, b);
        evbuffer_free(b);
    } else if (r->client) {
        send_frame(r->client, MSG_MODEL_INFO, FRAME_FLAG_RESPONSE, 0, r->client_rid, m->info, m->info_len);
    }
}

/* Answer the MODEL_INFO requests waiting for m: its description, or an error. */
static void info_resolved(struct lb *lb, struct lb_model *m, int status, const char *why)
{
    for (struct lreq *r = lb->qhead, *next; r; r = next) {
        next = r->next;
        if (r->model != m || r->state != REQ_INFO_WAIT)
            continue;
        q_unlink(lb, r);
        if (status) {
            req_fail(lb, r, status, "%s", why);
            continue;
        }
        answer_info(r, m);
        req_free(r);
    }
    if (status)
        m->info_state = LB_SIZE_UNKNOWN;
}

static void on_info_answer(struct lb *lb, struct lb_model *m, int kind, const struct frame_header *h,
                           const uint8_t *p)
{
    char why[600];
    if (h->status == PPS_ENOTFOUND) {
        snprintf(why, sizeof why, "unknown model '%s' (no %s in the metadata storage)", m->name,
                 kind == META_LOCATION ? "location record" : "METADATA record");
        info_resolved(lb, m, PPS_ENOTFOUND, why);
        return;
    }
    if (h->status < 0) {
        snprintf(why, sizeof why, "reading %s's description from the metadata storage: %s", m->name,
                 pps_strerror(h->status));
        info_resolved(lb, m, PPS_ECONNECT, why);
        return;
    }
    if (kind == META_LOCATION) {
        struct location_record rec;
        if (location_decode(p, h->payload_len, &rec)) {
            snprintf(why, sizeof why, "model '%s': malformed location record", m->name);
            info_resolved(lb, m, PPS_ECORRUPT, why);
            return;
        }
        meta_get(lb, m, META_BLOB, rec.metadata_key);
        location_free(&rec);
        return;
    }
    struct graph g;
    char err[256];
    if (model_blob_decode(&g, p, h->payload_len, err, sizeof err)) {
        snprintf(why, sizeof why, "model '%s': malformed METADATA: %s", m->name, err);
        info_resolved(lb, m, PPS_ECORRUPT, why);
        return;
    }
    struct infer_model_info mi;
    model_info_from_graph(&mi, &g);
    graph_free(&g);
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_model_info(&wb, &mi);
    free(m->info);
    m->info = wb.data; /* kept: the description of a deployed model */
    m->info_len = wb.len;
    m->info_state = LB_SIZE_KNOWN;
    info_resolved(lb, m, 0, NULL);
}

static void on_meta_answer(struct lb *lb, const struct frame_header *h, const uint8_t *p)
{
    struct meta_op *op = lb->mhead;
    if (!op || op->rid != h->request_id) {
        log_warn("metadata storage: answer to unknown request %" PRIu64, h->request_id);
        return;
    }
    lb->mhead = op->next;
    if (!lb->mhead)
        lb->mtail = NULL;
    struct lb_model *m = op->model;
    int kind = op->kind;
    free(op);
    if (kind != META_SIZE) {
        on_info_answer(lb, m, kind, h, p);
        return;
    }
    char why[600];
    int status = 0;
    if (h->status == PPS_ENOTFOUND) {
        m->size_state = LB_SIZE_ABSENT;
        status = PPS_ENOTFOUND;
        snprintf(why, sizeof why, "unknown model '%s' (no %s-SIZE record in the metadata storage)", m->name,
                 m->name);
    } else if (h->status < 0) {
        m->size_state = LB_SIZE_UNKNOWN;
        status = PPS_ECONNECT;
        snprintf(why, sizeof why, "reading %s-SIZE from the metadata storage: %s: %.*s", m->name,
                 pps_strerror(h->status), (int)(h->payload_len > 200 ? 200 : h->payload_len),
                 p ? (const char *)p : "");
    } else {
        char txt[32];
        size_t n = h->payload_len < sizeof txt - 1 ? h->payload_len : sizeof txt - 1;
        memcpy(txt, p ? (const char *)p : "", n);
        txt[n] = '\0';
        uint64_t size = 0;
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(txt, &end, 10);
        if (errno || end == txt || *end != '\0' || h->payload_len >= sizeof txt || v == 0) {
            m->size_state = LB_SIZE_ABSENT;
            status = PPS_ECORRUPT;
            snprintf(why, sizeof why, "model '%s': malformed %s-SIZE record", m->name, m->name);
        } else {
            size = v;
            m->size = size;
            m->size_state = LB_SIZE_KNOWN;
            log_debug("model %s: %" PRIu64 " bytes", m->name, size);
        }
    }
    size_resolved(lb, m, status, why);
}

/* The metadata link is down: every pending lookup fails now (the requests
 * get PPS_ECONNECT at once rather than waiting out the queue timeout). */
static void meta_lost(struct lb *lb, const char *why)
{
    lb->meta_up = 0;
    lb->meta = NULL;
    struct lb_model **want = NULL;
    int nwant = 0;
    char msg[300];
    snprintf(msg, sizeof msg, "metadata storage %s:%u unreachable (%s)", lb->cfg.meta_addr, lb->cfg.meta_port, why);
    while (lb->mhead) {
        struct meta_op *op = lb->mhead;
        lb->mhead = op->next;
        if (op->kind != META_SIZE) {
            info_resolved(lb, op->model, PPS_ECONNECT, msg);
            free(op);
            continue;
        }
        want = pps_xrealloc(want, (unsigned long)(nwant + 1) * sizeof *want);
        want[nwant++] = op->model;
        free(op);
    }
    lb->mtail = NULL;
    for (int i = 0; i < lb->nmwant; i++) {
        want = pps_xrealloc(want, (unsigned long)(nwant + 1) * sizeof *want);
        want[nwant++] = lb->mwant[i];
    }
    lb->nmwant = 0;
    for (int i = 0; i < nwant; i++) {
        want[i]->size_state = LB_SIZE_UNKNOWN;
        size_resolved(lb, want[i], PPS_ECONNECT, msg);
    }
    free(want);
    if (!lb->stopping) {
        struct timeval tv = {lb->meta_backoff_ms / 1000, (lb->meta_backoff_ms % 1000) * 1000};
        evtimer_add(lb->meta_timer, &tv);
        lb->meta_backoff_ms = lb->meta_backoff_ms * 2 > LB_META_BACKOFF_MAX_MS ? LB_META_BACKOFF_MAX_MS
                                                                               : lb->meta_backoff_ms * 2;
    }
}

/* ---- connections: life cycle -------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static struct lconn *conn_new(struct lb *lb, struct bufferevent *bev, int kind, const char *peer)
{
    struct lconn *c = pps_xcalloc(1, sizeof *c);
    c->lb = lb;
    c->bev = bev;
    c->kind = kind;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    c->next = lb->conns;
    if (lb->conns)
        lb->conns->prev = c;
    lb->conns = c;
    if (kind == CONN_CLIENT)
        lb->nclients++;
    bufferevent_set_max_single_read(bev, LB_READ_CHUNK);
    bufferevent_set_max_single_write(bev, LB_READ_CHUNK);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return c;
}

static void kill_conn(struct lconn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->lb->reaper, EV_TIMEOUT, 0);
}

static void server_lost(struct lb *lb, struct lb_server *s, const char *why);

static void conn_gone(struct lconn *c)
{
    struct lb *lb = c->lb;
    switch (c->kind) {
    case CONN_CLIENT:
        /* Waiting requests are dropped; answers of those in flight are
         * dropped when they come. */
        while (c->reqs) {
            struct lreq *r = c->reqs;
            if (r->state == REQ_INFLIGHT) {
                client_unlink(r);
            } else {
                q_unlink(lb, r);
                req_free(r);
            }
        }
        lb->nclients--;
        break;
    case CONN_SERVER_REG:
    case CONN_SERVER_FWD:
        if (c->server)
            server_lost(lb, c->server, c->kind == CONN_SERVER_REG ? "registration connection closed"
                                                                  : "forwarding connection closed");
        break;
    case CONN_CACHE:
        if (c->machine && c->machine->conn == c) {
            log_warn("cache %s:%u (%s) went away; its contents are unknown until it registers again",
                     c->machine->cache_addr, c->machine->cache_port, c->peer);
            lb_place_cache_lost(&lb->pl, c->machine);
            lb->cache_losses++;
        }
        while (c->ops) {
            struct cache_op *op = c->ops;
            c->ops = op->next;
            free(op);
        }
        break;
    case CONN_META:
        if (lb->meta == c)
            meta_lost(lb, "connection closed");
        break;
    }
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb *lb = arg;
    for (struct lconn *c = lb->conns, *next; c; c = next) {
        next = c->next;
        if (!c->dead)
            continue;
        conn_gone(c);
        if (c->prev)
            c->prev->next = c->next;
        else
            lb->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        bufferevent_free(c->bev);
        free(c);
    }
    if (!lb->stopping)
        schedule(lb);
}

/* A server is gone: its requests in flight are retried once on another
 * server (the payload is still ours), or answered with an error. */
static void server_lost(struct lb *lb, struct lb_server *s, const char *why)
{
    struct lconn *reg = s->reg_conn, *fwd = s->fwd_conn;
    log_warn("server %s lost (%s); %s", s->label, why,
             fwd && fwd->reqs ? "retrying its requests in flight" : "nothing was in flight");
    lb->server_losses++;
    if (fwd) {
        while (fwd->reqs) {
            struct lreq *r = fwd->reqs;
            fwd_unlink(fwd, r);
            if (r->type == MSG_INFER)
                lb_place_completed(&lb->pl, s, r->model, r->choice.estimate_ms, 0, 0, 0, 0);
            r->server = NULL;
            if (!r->client) {
                req_free(r);
            } else if (r->type == MSG_INFER && r->attempts < 2 && !lb->stopping) {
                lb->retries++;
                r->state = REQ_QUEUED;
                q_append(lb, r, 1);
            } else {
                req_fail(lb, r, PPS_ECLOSED, "server %s went away with the request in flight (%d attempt%s)",
                         s->label, r->attempts, r->attempts == 1 ? "" : "s");
            }
        }
        fwd->server = NULL;
        kill_conn(fwd);
    }
    if (reg) {
        reg->server = NULL;
        kill_conn(reg);
    }
    lb_place_remove_server(&lb->pl, s);
}

/* ---- server link --------------------------------------------------------- */

static void peer_ip(const char *peer, char *ip, size_t n)
{
    snprintf(ip, n, "%s", peer);
    char *colon = strrchr(ip, ':');
    if (colon)
        *colon = '\0';
}

/* An address a peer announced; "0.0.0.0" or empty means "where I came from". */
static void announced_addr(const char *addr, const char *peer, char *out, size_t n)
{
    if (!addr[0] || strcmp(addr, "0.0.0.0") == 0)
        peer_ip(peer, out, n);
    else
        snprintf(out, n, "%s", addr);
}

static void on_server_register(struct lconn *c, const struct frame_header *h, const uint8_t *p)
{
    struct lb *lb = c->lb;
    struct lb_server_register reg;
    if (lb_server_decode_register(p, h->payload_len, &reg)) {
        send_error(c, h->type, h->request_id, PPS_EPROTO, "malformed LB_SERVER_REGISTER");
        return;
    }
    if (c->server) {
        free(reg.models);
        send_error(c, h->type, h->request_id, PPS_EEXISTS, "already registered on this connection");
        return;
    }
    char addr[LB_ADDR_MAX + 1], cache_addr[LB_ADDR_MAX + 1];
    announced_addr(reg.client_addr, c->peer, addr, sizeof addr);
    announced_addr(reg.cache_addr, c->peer, cache_addr, sizeof cache_addr);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(reg.client_port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1 || reg.client_port == 0) {
        free(reg.models);
        send_error(c, h->type, h->request_id, PPS_EINVAL,
                   "client address %s:%u is not a numeric IPv4 address and port", addr, reg.client_port);
        return;
    }
    /* A server registering again under the same address replaces the old. */
    for (int i = 0; i < lb->pl.nservers; i++) {
        struct lb_server *old = lb->pl.servers[i];
        if (old->port == reg.client_port && strcmp(old->addr, addr) == 0) {
            server_lost(lb, old, "registered again");
            break;
        }
    }
    struct lb_machine *m = lb_place_machine(&lb->pl, cache_addr, reg.cache_port);
    struct lb_server *s = lb_place_add_server(&lb->pl, addr, reg.client_port, m);
    s->memory_capacity = reg.memory_capacity;
    s->memory_used = reg.memory_used;
    for (uint32_t i = 0; i < reg.nmodels; i++)
        lb_place_server_resident(&lb->pl, s, reg.models[i].model, 1);
    free(reg.models);
    c->server = s;
    s->reg_conn = c;
    struct bufferevent *bev = bufferevent_socket_new(lb->base, -1, BEV_OPT_CLOSE_ON_FREE);
    char peer[80];
    snprintf(peer, sizeof peer, "%s", s->label);
    struct lconn *f = conn_new(lb, bev, CONN_SERVER_FWD, peer);
    f->server = s;
    s->fwd_conn = f;
    lb->server_registrations++;
    send_frame(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, NULL, 0);
    log_info("server %s registered (machine %d: cache %s:%u, %u resident model%s); connecting",
             s->label, m->id, m->cache_addr, m->cache_port, reg.nmodels, reg.nmodels == 1 ? "" : "s");
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&sa, sizeof sa) < 0)
        kill_conn(f);
}

static void on_server_event(struct lconn *c, const struct frame_header *h, const uint8_t *p)
{
    struct lb_server_event ev;
    if (!c->server)
        return;
    if (lb_server_decode_event(p, h->payload_len, &ev)) {
        log_warn("server %s: malformed LB_SERVER_EVENT ignored", c->peer);
        return;
    }
    c->server->memory_used = ev.used;
    c->server->memory_capacity = ev.capacity;
    lb_place_server_resident(&c->lb->pl, c->server, ev.model, ev.kind == LB_SERVER_EVENT_RESIDENT);
    log_debug("server %s: %s %s", c->server->label, ev.model,
              ev.kind == LB_SERVER_EVENT_RESIDENT ? "resident" : "evicted");
}

/* Fields of the server's timing block the balancer learns from. */
struct seen_timing {
    int ok;
    uint64_t queue_us, total_us, meta_us, last_batch_us;
    uint8_t source;
};

static void read_timing(struct evbuffer *b, uint32_t tlen, struct seen_timing *t)
{
    uint8_t raw[4 + 74];
    memset(t, 0, sizeof *t);
    if (tlen < 74 || evbuffer_get_length(b) < sizeof raw)
        return;
    evbuffer_copyout(b, raw, sizeof raw);
    const uint8_t *q = raw + 4;
    t->ok = 1;
    t->queue_us = load_le64(q);
    t->total_us = load_le64(q + 24);
    t->source = q[32];
    t->meta_us = load_le64(q + 42);
    t->last_batch_us = load_le64(q + 66);
}

/* An answer from a server on its forwarding connection. */
static void on_server_answer(struct lconn *f, const struct frame_header *h, struct evbuffer *payload)
{
    struct lb *lb = f->lb;
    struct lreq *r = f->reqs;
    while (r && r->id != h->request_id)
        r = r->next;
    if (!r) {
        log_warn("server %s: answer to unknown request %" PRIu64 " ignored", f->peer, h->request_id);
        return;
    }
    fwd_unlink(f, r);
    struct lb_server *s = r->server;
    double t = now_s();
    double latency_ms = (t - r->t_recv) * 1e3;
    struct seen_timing st = {0};
    uint32_t tlen = 0;
    int relay_block = 0;
    if (r->type == MSG_INFER && h->status == 0 && evbuffer_get_length(payload) >= 4) {
        uint8_t b4[4];
        evbuffer_copyout(payload, b4, 4);
        tlen = load_le32(b4);
        if ((uint64_t)tlen + 4 <= evbuffer_get_length(payload)) {
            relay_block = 1;
            read_timing(payload, tlen, &st);
        }
    }
    if (r->type == MSG_INFER) {
        double fetch_ms = st.ok && st.source == 2 && st.last_batch_us > st.meta_us
                              ? (double)(st.last_batch_us - st.meta_us) / 1e3 : 0;
        lb_place_completed(&lb->pl, s, r->model, r->choice.estimate_ms, h->status == 0 && st.ok, st.source,
                           st.ok ? (double)(st.total_us - st.queue_us) / 1e3 : 0, fetch_ms);
        if (h->status == 0 && st.ok && st.source < 3)
            r->model->by_source[st.source]++;
    }
    struct lconn *c = r->client;
    if (r->fn) {
        r->fn(r->ctx, h->status, NULL, payload);
    } else if (c && !c->dead) {
        if (relay_block) {
            struct infer_lb_block blk = {
                .attempts = (uint8_t)r->attempts,
                .rule = (uint8_t)r->choice.rule,
                .placed = (uint8_t)r->choice.placed,
                .lb_queue_us = (uint64_t)((r->t_dispatch - r->t_recv) * 1e6),
                .lb_total_us = (uint64_t)((t - r->t_recv) * 1e6),
                .server_id = (uint32_t)s->id,
                .machine_id = (uint32_t)s->machine->id,
            };
            size_t ln = strnlen(s->label, sizeof blk.server - 1);
            memcpy(blk.server, s->label, ln); /* truncated if longer: it is a label */
            blk.server[ln] = '\0';
            uint8_t raw[INFER_LB_BLOCK_SIZE], b4[4];
            infer_encode_lb_block(raw, &blk);
            size_t total = evbuffer_get_length(payload);
            struct evbuffer *out = bufferevent_get_output(c->bev);
            send_head(c, h->type, FRAME_FLAG_RESPONSE, 0, r->client_rid, total + INFER_LB_BLOCK_SIZE);
            evbuffer_drain(payload, 4);
            store_le32(b4, tlen + INFER_LB_BLOCK_SIZE);
            evbuffer_add(out, b4, 4);
            evbuffer_remove_buffer(payload, out, tlen);
            evbuffer_add(out, raw, sizeof raw);
            evbuffer_add_buffer(out, payload);
        } else {
            send_head(c, h->type, FRAME_FLAG_RESPONSE, h->status, r->client_rid, evbuffer_get_length(payload));
            bufferevent_write_buffer(c->bev, payload);
        }
        size_t backlog = evbuffer_get_length(bufferevent_get_output(c->bev));
        if (backlog > lb->cfg.max_backlog) {
            /* A client that stops reading must not hold the balancer's memory. */
            log_warn("client %s: %zu bytes of answers unread (over --max-backlog); dropped", c->peer, backlog);
            kill_conn(c);
        }
    }
    if (r->type == MSG_INFER) {
        note_model_answer(lb, r, h->status == 0, latency_ms);
        if (h->status)
            log_debug("request %" PRIu64 " (%s) failed at server %s: %s", r->client_rid, r->model->name, s->label,
                      pps_errname(h->status));
    }
    req_free(r);
    if (!lb->stopping)
        schedule(lb);
}

/* ---- cache link -------------------------------------------------------- */

static void on_cache_register(struct lconn *c, const struct frame_header *h, const uint8_t *p)
{
    struct lb *lb = c->lb;
    struct cache_register_msg reg;
    if (cache_proto_decode_register(p, h->payload_len, &reg)) {
        send_error(c, h->type, h->request_id, PPS_EPROTO, "malformed LB_CACHE_REGISTER");
        return;
    }
    char addr[LB_ADDR_MAX + 1];
    announced_addr(reg.server_addr, c->peer, addr, sizeof addr);
    struct lb_machine *m = lb_place_machine(&lb->pl, addr, reg.server_port);
    if (m->conn && m->conn != c) {
        struct lconn *old = m->conn;
        old->machine = NULL;
        kill_conn(old);
    }
    const char **names = pps_xcalloc(reg.nmodels + 1, sizeof *names);
    uint64_t *bytes = pps_xcalloc(reg.nmodels + 1, sizeof *bytes);
    for (uint32_t i = 0; i < reg.nmodels; i++) {
        names[i] = reg.models[i].model;
        bytes[i] = reg.models[i].bytes;
    }
    lb_place_cache_register(&lb->pl, m, reg.capacity, reg.block_size, reg.used, names, bytes, (int)reg.nmodels);
    free(names);
    free(bytes);
    free(reg.models);
    m->conn = c;
    c->machine = m;
    lb->cache_registrations++;
    send_frame(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, NULL, 0);
    log_info("cache %s:%u registered (machine %d, pool %" PRIu64 " bytes, %u model%s held)", m->cache_addr,
             m->cache_port, m->id, m->capacity, reg.nmodels, reg.nmodels == 1 ? "" : "s");
    schedule(lb);
}

static void on_cache_event(struct lconn *c, const struct frame_header *h, const uint8_t *p)
{
    struct cache_lb_event ev;
    if (!c->machine)
        return;
    if (cache_proto_decode_event(p, h->payload_len, &ev)) {
        log_warn("cache %s: malformed LB_CACHE_EVENT ignored", c->peer);
        return;
    }
    lb_place_cache_event(&c->lb->pl, c->machine, ev.kind, ev.model, ev.size, ev.used, ev.capacity);
    if (ev.kind == CACHE_EVENT_EVICTED) {
        struct lb *lb = c->lb;
        int k = lb->nevicted++ % (int)(sizeof lb->evicted / sizeof lb->evicted[0]);
        lb->evicted[k].t = now_s();
        lb->evicted[k].machine = c->machine->id;
        snprintf(lb->evicted[k].model, sizeof lb->evicted[k].model, "%s", ev.model);
    }
    log_debug("cache %s: %s %s", c->peer, ev.kind == 1 ? "loaded" : ev.kind == 2 ? "evicted" : "failed", ev.model);
    schedule(c->lb);
}

static void on_cache_answer(struct lconn *c, const struct frame_header *h, const uint8_t *p)
{
    struct lb *lb = c->lb;
    struct cache_op **pp = &c->ops;
    while (*pp && (*pp)->rid != h->request_id)
        pp = &(*pp)->next;
    if (!*pp)
        return; /* the answer to our registration's events, or to an op of a replaced connection */
    struct cache_op *op = *pp;
    *pp = op->next;
    if (h->status < 0 && c->machine) {
        int n = (int)(h->payload_len > 200 ? 200 : h->payload_len);
        log_warn("cache %s: %s %s: %s: %.*s", c->peer, frame_type_name(op->type), op->model->name,
                 pps_errname(h->status), n, p ? (const char *)p : "");
        if (op->type == MSG_CACHE_OUT) {
            lb_place_cache_out_refused(&lb->pl, c->machine, op->model);
            lb->cache_out_refused++;
        } else {
            lb_place_cache_in_failed(&lb->pl, c->machine, op->model);
            lb->cache_in_failed++;
        }
    }
    free(op);
    schedule(lb);
}

/* ---- client link --------------------------------------------------------- */

/* The model name at the start of an INFER or MODEL_INFO payload. */
static int payload_model(struct evbuffer *b, char name[LB_NAME_MAX + 1])
{
    uint8_t raw[4 + LB_NAME_MAX];
    size_t have = evbuffer_get_length(b);
    if (have < 4)
        return PPS_EPROTO;
    size_t n = have < sizeof raw ? have : sizeof raw;
    evbuffer_copyout(b, raw, n);
    uint32_t len = load_le32(raw);
    if (len == 0 || len > LB_NAME_MAX)
        return PPS_EINVAL;
    if (4 + (size_t)len > n)
        return PPS_EPROTO;
    memcpy(name, raw + 4, len);
    name[len] = '\0';
    return wire_name_valid(name, LB_NAME_MAX) ? 0 : PPS_EINVAL;
}

/* A new request for model name, from a client connection or (fn set) from
 * the HTTP front end; it takes the payload. It may be answered before this
 * returns (then NULL is returned). */
static struct lreq *submit(struct lb *lb, struct lconn *c, uint64_t rid, uint16_t type, const char *name,
                           struct evbuffer *payload, lb_answer_fn fn, void *ctx)
{
    struct lreq *r = pps_xcalloc(1, sizeof *r);
    r->client = c;
    r->client_rid = rid;
    r->type = type;
    r->payload = payload;
    r->t_recv = now_s();
    r->fn = fn;
    r->ctx = ctx;
    if (c) {
        r->cnext = c->reqs;
        if (c->reqs)
            c->reqs->cprev = r;
        c->reqs = r;
    }
    if (lb->stopping) {
        req_fail(lb, r, PPS_ECANCELED, "shutting down");
        return NULL;
    }
    if (type == MSG_MODEL_INFO) {
        /* Answered from the model's METADATA blob in the metadata storage:
         * asking a server would make its cache fetch the whole model. */
        lb->model_infos++;
        struct lb_model *m = lb_place_model(&lb->pl, name);
        r->model = m;
        if (m->info_state == LB_SIZE_KNOWN) {
            answer_info(r, m);
            req_free(r);
            return NULL;
        }
        if (!lb->meta_up) {
            req_fail(lb, r, PPS_ECONNECT, "metadata storage %s:%u unreachable", lb->cfg.meta_addr, lb->cfg.meta_port);
            return NULL;
        }
        r->state = REQ_INFO_WAIT;
        q_append(lb, r, 0);
        if (m->info_state != LB_SIZE_ASKING) {
            char key[LB_NAME_MAX + 16];
            location_key_name(name, key, sizeof key);
            m->info_state = LB_SIZE_ASKING;
            meta_get(lb, m, META_LOCATION, key);
        }
        return r;
    }
    lb->requests++;
    if (lb->nqueued >= lb->cfg.max_queue) {
        lb->busy++;
        req_fail(lb, r, PPS_EBUSY, "%d requests already waiting (--max-queue)", lb->nqueued);
        return NULL;
    }
    struct lb_model *m = lb_place_model(&lb->pl, name);
    r->model = m;
    m->requests++;
    if (m->size_state == LB_SIZE_KNOWN) {
        r->state = REQ_QUEUED;
        q_append(lb, r, 0);
        schedule(lb);
        return r;
    }
    r->state = REQ_SIZE_WAIT;
    q_append(lb, r, 0);
    if (m->size_state != LB_SIZE_ASKING)
        size_lookup(lb, m);
    return r;
}

struct lreq *lb_submit(struct lb *lb, uint16_t type, const char *model, struct evbuffer *payload, lb_answer_fn fn,
                       void *ctx)
{
    return submit(lb, NULL, 0, type, model, payload, fn, ctx);
}

void lb_forget(struct lb *lb, struct lreq *r)
{
    if (r->state == REQ_INFLIGHT) {
        r->fn = NULL; /* the answer is dropped when it comes */
        r->ctx = NULL;
        return;
    }
    q_unlink(lb, r);
    req_free(r);
}

static void on_client_request(struct lconn *c, const struct frame_header *h, struct evbuffer *payload)
{
    struct lb *lb = c->lb;
    char name[LB_NAME_MAX + 1];
    int rc = payload_model(payload, name);
    if (rc) {
        lb->bad_requests++;
        send_error(c, h->type, h->request_id, rc,
                   rc == PPS_EINVAL ? "bad model name (1..255 printable ASCII bytes, no spaces)"
                                    : "payload does not start with a model name");
        evbuffer_free(payload);
        return;
    }
    submit(lb, c, h->request_id, h->type, name, payload, NULL, NULL);
}

static void stat_text(struct lb *lb, struct wbuf *wb);

static void on_client_frame(struct lconn *c, const struct frame_header *h, struct evbuffer *payload)
{
    struct lb *lb = c->lb;
    if (h->flags & FRAME_FLAG_RESPONSE) {
        lb->bad_requests++;
        send_error(c, MSG_ERROR, h->request_id, PPS_EPROTO, "unexpected response frame");
        evbuffer_free(payload);
        return;
    }
    switch (h->type) {
    case MSG_INFER:
    case MSG_MODEL_INFO:
        on_client_request(c, h, payload);
        return;
    case MSG_PING: {
        send_head(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, evbuffer_get_length(payload));
        bufferevent_write_buffer(c->bev, payload);
        break;
    }
    case MSG_STAT: {
        struct wbuf wb;
        wbuf_init(&wb);
        stat_text(lb, &wb);
        send_frame(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, wb.data, wb.len);
        wbuf_free(&wb);
        break;
    }
    default:
        lb->bad_requests++;
        send_error(c, MSG_ERROR, h->request_id, PPS_EUNSUPPORTED, "unknown message type %s",
                   frame_type_name(h->type));
    }
    evbuffer_free(payload);
}

/* ---- frames -------------------------------------------------------------- */

static uint64_t payload_limit(const struct lconn *c, uint16_t type)
{
    switch (c->kind) {
    case CONN_CLIENT:
        return type == MSG_INFER ? c->lb->cfg.max_request : LB_CONTROL_MAX;
    case CONN_SERVER_FWD:
        return c->lb->cfg.max_response;
    case CONN_META:
        /* a META_GET answer may be a METADATA blob (densenet201's is 105 KiB) */
        return LB_META_VALUE_MAX;
    default:
        return LB_CONTROL_MAX;
    }
}

static void dispatch(struct lconn *c, const struct frame_header *h, struct evbuffer *payload)
{
    const uint8_t *p = NULL;
    if (c->kind != CONN_CLIENT && c->kind != CONN_SERVER_FWD && h->payload_len)
        p = evbuffer_pullup(payload, -1);
    int response = (h->flags & FRAME_FLAG_RESPONSE) != 0;
    switch (c->kind) {
    case CONN_CLIENT:
        on_client_frame(c, h, payload);
        return;
    case CONN_SERVER_FWD:
        if (response)
            on_server_answer(c, h, payload);
        else
            log_warn("server %s sent a request on the forwarding link; ignored", c->peer);
        break;
    case CONN_SERVER_REG:
        if (response)
            break; /* e.g. the echo of a PING of ours */
        if (h->type == MSG_LB_SERVER_REGISTER)
            on_server_register(c, h, p);
        else if (h->type == MSG_LB_SERVER_EVENT)
            on_server_event(c, h, p);
        else if (h->type == MSG_PING)
            send_frame(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, p, h->payload_len);
        else
            send_error(c, MSG_ERROR, h->request_id, PPS_EUNSUPPORTED, "unexpected %s on the server link",
                       frame_type_name(h->type));
        break;
    case CONN_CACHE:
        if (response)
            on_cache_answer(c, h, p);
        else if (h->type == MSG_LB_CACHE_REGISTER)
            on_cache_register(c, h, p);
        else if (h->type == MSG_LB_CACHE_EVENT)
            on_cache_event(c, h, p);
        else if (h->type == MSG_PING)
            send_frame(c, h->type, FRAME_FLAG_RESPONSE, 0, h->request_id, p, h->payload_len);
        else
            send_error(c, MSG_ERROR, h->request_id, PPS_EUNSUPPORTED, "unexpected %s on the cache link",
                       frame_type_name(h->type));
        break;
    case CONN_META:
        if (response && h->type == MSG_META_GET)
            on_meta_answer(c->lb, h, p);
        break;
    }
    evbuffer_free(payload);
}

static void set_stall_timer(struct lconn *c, int armed)
{
    if (armed) {
        double s = c->lb->cfg.io_timeout_s;
        struct timeval tv = {(time_t)s, (suseconds_t)((s - floor(s)) * 1e6)};
        bufferevent_set_timeouts(c->bev, &tv, NULL);
    } else {
        bufferevent_set_timeouts(c->bev, NULL, NULL);
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct lconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->dead && !c->closing) {
        size_t avail = evbuffer_get_length(in);
        if (c->discard) {
            size_t n = avail < c->discard ? avail : (size_t)c->discard;
            evbuffer_drain(in, n);
            c->discard -= n;
            if (c->discard)
                break;
            continue;
        }
        if (avail < FRAME_HEADER_SIZE)
            break;
        uint8_t raw[FRAME_HEADER_SIZE];
        evbuffer_copyout(in, raw, sizeof raw);
        struct frame_header h;
        int rc = frame_decode_header(raw, &h, UINT64_MAX);
        if (rc) {
            reject_and_close(c, MSG_ERROR, h.request_id, rc,
                             rc == PPS_EUNSUPPORTED ? "unsupported protocol version" : "malformed frame header");
            break;
        }
        uint64_t limit = payload_limit(c, h.type);
        if (h.payload_len > limit) {
            char why[160];
            snprintf(why, sizeof why, "%s payload of %" PRIu64 " bytes is over the limit of %" PRIu64,
                     frame_type_name(h.type), h.payload_len, limit);
            if (c->kind == CONN_CLIENT) {
                /* Refused before it is buffered; the framing is intact, so
                 * skip the payload and keep the connection. */
                log_warn("client %s: %s; refused", c->peer, why);
                c->lb->bad_requests++;
                send_error(c, h.type, h.request_id, PPS_ETOOBIG, "%s", why);
                evbuffer_drain(in, FRAME_HEADER_SIZE);
                c->discard = h.payload_len;
                continue;
            }
            reject_and_close(c, h.type, h.request_id, PPS_ETOOBIG, why);
            break;
        }
        if (avail < FRAME_HEADER_SIZE + h.payload_len) {
            /* Wake up when the whole frame is here, not per chunk. */
            uint64_t want = FRAME_HEADER_SIZE + h.payload_len;
            bufferevent_setwatermark(bev, EV_READ, want > SIZE_MAX ? SIZE_MAX : (size_t)want, 0);
            set_stall_timer(c, 1);
            return;
        }
        evbuffer_drain(in, FRAME_HEADER_SIZE);
        struct evbuffer *payload = evbuffer_new();
        if (!payload)
            abort();
        if (h.payload_len)
            evbuffer_remove_buffer(in, payload, (size_t)h.payload_len);
        dispatch(c, &h, payload);
    }
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    set_stall_timer(c, evbuffer_get_length(in) > 0 && !c->dead);
    if (c->closing && !c->dead && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        kill_conn(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct lconn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        kill_conn(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct lconn *c = arg;
    struct lb *lb = c->lb;
    if (what & BEV_EVENT_CONNECTED) {
        net_set_nodelay(bufferevent_getfd(bev));
        if (c->kind == CONN_SERVER_FWD && c->server) {
            c->server->ready = 1;
            log_info("server %s ready", c->server->label);
            schedule(lb);
        } else if (c->kind == CONN_META) {
            lb->meta_up = 1;
            lb->meta_backoff_ms = 100;
            log_info("connected to the metadata storage at %s:%u", lb->cfg.meta_addr, lb->cfg.meta_port);
            for (int i = 0; i < lb->nmwant; i++)
                meta_send(lb, lb->mwant[i]);
            lb->nmwant = 0;
        }
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        log_warn("%s %s: stalled inside a frame for %.0f s (--io-timeout); dropped", kind_names[c->kind], c->peer,
                 lb->cfg.io_timeout_s);
    } else if (what & BEV_EVENT_ERROR) {
        int err = EVUTIL_SOCKET_ERROR();
        if (c->kind == CONN_CLIENT)
            log_debug("client %s: %s", c->peer, evutil_socket_error_to_string(err));
        else
            log_warn("%s %s: %s", kind_names[c->kind], c->peer, evutil_socket_error_to_string(err));
    } else if (c->kind != CONN_CLIENT) {
        if (evbuffer_get_length(bufferevent_get_input(bev)))
            log_warn("%s %s: disconnected in the middle of a frame", kind_names[c->kind], c->peer);
        else
            log_info("%s %s: disconnected", kind_names[c->kind], c->peer);
    } else if (evbuffer_get_length(bufferevent_get_input(bev))) {
        log_warn("client %s: disconnected in the middle of a frame; its partial request is dropped", c->peer);
    }
    kill_conn(c);
}

static void meta_connect(struct lb *lb)
{
    struct bufferevent *bev = bufferevent_socket_new(lb->base, -1, BEV_OPT_CLOSE_ON_FREE);
    char peer[80];
    snprintf(peer, sizeof peer, "%s:%u", lb->cfg.meta_addr, lb->cfg.meta_port);
    lb->meta = conn_new(lb, bev, CONN_META, peer);
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&lb->meta_sa, sizeof lb->meta_sa) < 0)
        kill_conn(lb->meta);
}

static void meta_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb *lb = arg;
    if (!lb->meta && !lb->stopping)
        meta_connect(lb);
}

/* ---- listeners ------------------------------------------------------------ */

static void format_peer(const struct sockaddr *sa, char *out, size_t n)
{
    snprintf(out, n, "?");
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(out, n, "%s:%u", ip, ntohs(in->sin_port));
    }
}

static void accept_common(struct lb *lb, evutil_socket_t fd, struct sockaddr *sa, int kind)
{
    char peer[80];
    format_peer(sa, peer, sizeof peer);
    if (lb->stopping) {
        evutil_closesocket(fd);
        return;
    }
    if (kind == CONN_CLIENT && lb->nclients >= lb->cfg.max_conns) {
        log_warn("client %s refused: %d client connections already (--max-conns)", peer, lb->nclients);
        evutil_closesocket(fd);
        return;
    }
    net_set_nodelay(fd);
    struct bufferevent *bev = bufferevent_socket_new(lb->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    conn_new(lb, bev, kind, peer);
    log_debug("%s %s connected", kind_names[kind], peer);
}

static void accept_client(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int n, void *arg)
{
    (void)l;
    (void)n;
    accept_common(arg, fd, sa, CONN_CLIENT);
}

static void accept_server(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int n, void *arg)
{
    (void)l;
    (void)n;
    accept_common(arg, fd, sa, CONN_SERVER_REG);
}

static void accept_cache(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int n, void *arg)
{
    (void)l;
    (void)n;
    accept_common(arg, fd, sa, CONN_CACHE);
}

/* ---- timers, signals, STAT ----------------------------------------------- */

static int inflight_total(const struct lb *lb)
{
    int n = 0;
    for (int i = 0; i < lb->pl.nservers; i++)
        if (lb->pl.servers[i]->fwd_conn)
            for (struct lreq *r = ((struct lconn *)lb->pl.servers[i]->fwd_conn)->reqs; r; r = r->next)
                n++;
    return n;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb *lb = arg;
    double t = now_s();
    for (struct lreq *r = lb->qhead, *next; r; r = next) {
        next = r->next;
        if (t - r->t_recv < lb->cfg.queue_timeout_s)
            continue;
        q_unlink(lb, r);
        lb->timeouts++;
        req_fail(lb, r, PPS_ETIMEOUT, "waited %.1f s in the queue (--queue-timeout)%s", t - r->t_recv,
                 lb->pl.nservers ? "" : "; no server registered");
    }
    if (lb->stopping && (inflight_total(lb) == 0 || t > lb->stop_deadline))
        event_base_loopbreak(lb->base);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct lb *lb = arg;
    if (lb->stopping)
        return;
    log_info("signal %d: stopping (waiting up to %.0f s for requests in flight)", (int)sig, LB_STOP_GRACE_S);
    lb->stopping = 1;
    lb->stop_deadline = now_s() + LB_STOP_GRACE_S;
    for (int i = 0; i < 3; i++)
        if (lb->listeners[i])
            evconnlistener_disable(lb->listeners[i]);
    while (lb->qhead) {
        struct lreq *r = lb->qhead;
        q_unlink(lb, r);
        lb->canceled++;
        req_fail(lb, r, PPS_ECANCELED, "shutting down");
    }
}

static void stat_text(struct lb *lb, struct wbuf *wb)
{
    char line[1024];
#define OUT(...)                                                                                    \
    do {                                                                                            \
        int n_ = snprintf(line, sizeof line, __VA_ARGS__);                                          \
        wbuf_put(wb, line, n_ < 0 ? 0 : (size_t)n_ >= sizeof line ? sizeof line - 1 : (size_t)n_); \
    } while (0)
    const double p[4] = {0.5, 0.9, 0.99, 1.0};
    double q[4], qq[4];
    ring_percentiles(&lb->lat, p, q, 4);
    ring_percentiles(&lb->lat_queue, p, qq, 4);
    OUT("daemon load_balancer\npolicy %s\nuptime_s %.0f\n", lb_policy_name(lb->pl.policy), now_s() - lb->t_start);
    OUT("amplifier %.2f\nmax_outstanding %d\nqueue_timeout_s %.1f\n", lb->pl.amplifier, lb->pl.max_outstanding,
        lb->cfg.queue_timeout_s);
    OUT("servers %d\nmachines %d\nclients %d\nqueued %d\ninflight %d\n", lb->pl.nservers, lb->pl.nmachines,
        lb->nclients, lb->nqueued, inflight_total(lb));
    OUT("requests %" PRIu64 "\nok %" PRIu64 "\nerrors %" PRIu64 "\ntimeouts %" PRIu64 "\nretries %" PRIu64
        "\nunknown_models %" PRIu64 "\nbusy %" PRIu64 "\ncanceled %" PRIu64 "\nbad_requests %" PRIu64
        "\nmodel_infos %" PRIu64 "\n",
        lb->requests, lb->ok, lb->errors, lb->timeouts, lb->retries, lb->unknown_models, lb->busy, lb->canceled,
        lb->bad_requests, lb->model_infos);
    OUT("latency_ms_p50 %.3f\nlatency_ms_p90 %.3f\nlatency_ms_p99 %.3f\nlatency_ms_max %.3f\n", q[0], q[1], q[2],
        q[3]);
    OUT("queue_ms_p50 %.3f\nqueue_ms_p99 %.3f\n", qq[0], qq[2]);
    OUT("cache_in %" PRIu64 "\ncache_out %" PRIu64 "\ncache_in_failed %" PRIu64 "\ncache_out_refused %" PRIu64
        "\nsize_lookups %" PRIu64 "\nserver_registrations %" PRIu64 "\ncache_registrations %" PRIu64
        "\nserver_losses %" PRIu64 "\ncache_losses %" PRIu64 "\nmetadata_connected %d\n",
        lb->cache_in_sent, lb->cache_out_sent, lb->cache_in_failed, lb->cache_out_refused, lb->size_lookups,
        lb->server_registrations, lb->cache_registrations, lb->server_losses, lb->cache_losses, lb->meta_up);
    static const char *const rule_names[LB_RULE_COUNT] = {
        "-", "cached_idle", "idle", "cached_light", "least_loaded_cap", "fastest_start", "round_robin", "least_loaded"};
    for (int i = 1; i < LB_RULE_COUNT; i++)
        OUT("decisions_%s %" PRIu64 "\n", rule_names[i], lb->pl.decisions[i]);
    uint64_t evictions = 0, loads = 0;
    for (int i = 0; i < lb->pl.nmachines; i++) {
        evictions += lb->pl.machines[i]->evictions;
        loads += lb->pl.machines[i]->loads;
    }
    OUT("evictions %" PRIu64 "\nloads %" PRIu64 "\n", evictions, loads);
    for (int i = 0; i < lb->pl.nmachines; i++) {
        struct lb_machine *m = lb->pl.machines[i];
        OUT("cache %d %s:%u connected %d capacity %" PRIu64 " used %" PRIu64 " reported_used %" PRIu64
            " servers %d cache_in %" PRIu64 " cache_out %" PRIu64 " loads %" PRIu64 " evictions %" PRIu64
            " models",
            m->id, m->cache_addr, m->cache_port, m->cache_connected, m->capacity, lb_machine_used(m),
            m->reported_used, m->nservers, m->cache_in, m->cache_out, m->loads, m->evictions);
        int any = 0;
        for (int k = 0; k < m->nentries; k++) {
            const struct lb_entry *e = &m->entries[k];
            if (e->state == LB_ENTRY_NONE)
                continue;
            static const char *const st[] = {"", "loading", "loaded", "evicting"};
            OUT("%s%s:%s", any ? "," : " ", e->model->name, st[e->state]);
            any = 1;
        }
        OUT("%s\n", any ? "" : " -");
    }
    for (int i = 0; i < lb->pl.nservers; i++) {
        struct lb_server *s = lb->pl.servers[i];
        OUT("server %d %s machine %d ready %d outstanding %d served %" PRIu64 " errors %" PRIu64 " resident",
            s->id, s->label, s->machine->id, s->ready, s->outstanding, s->served, s->errors);
        for (int k = 0; k < s->nresident; k++)
            OUT("%s%s", k ? "," : " ", s->resident[k]->name);
        OUT("%s\n", s->nresident ? "" : " -");
    }
    for (size_t b = 0; b < lb->pl.nbuckets; b++)
        for (struct lb_model *m = lb->pl.buckets[b]; m; m = m->hnext) {
            if (m->size_state != LB_SIZE_KNOWN)
                continue;
            OUT("model %s size %" PRIu64 " requests %" PRIu64 " ok %" PRIu64 " errors %" PRIu64
                " resident %" PRIu64 " cache %" PRIu64 " storage %" PRIu64 " t_resident_ms %.1f t_cache_ms %.1f"
                " t_storage_ms %.1f cached_on",
                m->name, m->size, m->requests, m->ok, m->errors, m->by_source[0], m->by_source[1], m->by_source[2],
                m->t_resident, m->t_cache, m->t_storage);
            int any = 0;
            for (int i = 0; i < lb->pl.nmachines; i++)
                if (lb_machine_holds(lb->pl.machines[i], m)) {
                    OUT("%s%d", any ? "," : " ", lb->pl.machines[i]->id);
                    any = 1;
                }
            OUT("%s\n", any ? "" : " -");
        }
#undef OUT
}

/* ---- metrics and the status page ----------------------------------------- */

int lb_ready_servers(const struct lb *lb)
{
    int n = 0;
    for (int i = 0; i < lb->pl.nservers; i++)
        n += lb->pl.servers[i]->ready;
    return n;
}

void lb_render_metrics(struct wbuf *out, void *arg)
{
    struct lb *lb = arg;
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_requests_total", "INFER requests received", lb->requests);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_answers_ok_total", "INFER requests answered successfully",
                    lb->ok);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_errors_total", "INFER requests answered with an error",
                    lb->errors);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_queue_timeouts_total", "requests that waited past --queue-timeout", lb->timeouts);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_retries_total", "requests retried after their server was lost", lb->retries);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_cache_in_total", "CACHE_IN sent to caches",
                    lb->cache_in_sent);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_lb_cache_out_total", "CACHE_OUT sent to caches",
                    lb->cache_out_sent);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_lb_queued_requests", "requests waiting in the balancer",
                    (uint64_t)lb->nqueued);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_lb_servers", "registered servers ready to take requests",
                    (uint64_t)lb_ready_servers(lb));
    prom_head(out, "pipeps_lb_request_duration_seconds", PROM_HISTOGRAM,
              "time from a request's arrival to its answer, successful INFERs");
    prom_hist_write(out, "pipeps_lb_request_duration_seconds", NULL, 0, &lb->hist_latency);
    prom_head(out, "pipeps_lb_queue_seconds", PROM_HISTOGRAM, "time a request waited in the balancer before forwarding");
    prom_hist_write(out, "pipeps_lb_queue_seconds", NULL, 0, &lb->hist_queue);
    static const char *const rule_names[LB_RULE_COUNT] = {
        "-", "cached_idle", "idle", "cached_light", "least_loaded_cap", "fastest_start", "round_robin", "least_loaded"};
    prom_head(out, "pipeps_lb_decisions_total", PROM_COUNTER, "placement decisions by rule");
    for (int i = 1; i < LB_RULE_COUNT; i++) {
        struct prom_label l = {"rule", rule_names[i]};
        prom_u64(out, "pipeps_lb_decisions_total", &l, 1, lb->pl.decisions[i]);
    }
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "pipeps_lb_model_errors_total" : "pipeps_lb_model_requests_total";
        prom_head(out, name, PROM_COUNTER, k ? "INFER errors per model" : "INFER requests per model");
        for (size_t b = 0; b < lb->pl.nbuckets; b++)
            for (struct lb_model *m = lb->pl.buckets[b]; m; m = m->hnext)
                if (m->requests) {
                    struct prom_label l = {"model", m->name};
                    prom_u64(out, name, &l, 1, k ? m->errors : m->requests);
                }
    }
    prom_head(out, "pipeps_lb_model_answers_total", PROM_COUNTER,
              "successful answers per model by where the parameters came from");
    static const char *const sources[3] = {"resident", "cache", "storage"};
    for (size_t b = 0; b < lb->pl.nbuckets; b++)
        for (struct lb_model *m = lb->pl.buckets[b]; m; m = m->hnext)
            if (m->requests)
                for (int k = 0; k < 3; k++) {
                    struct prom_label l[2] = {{"model", m->name}, {"source", sources[k]}};
                    prom_u64(out, "pipeps_lb_model_answers_total", l, 2, m->by_source[k]);
                }
    prom_head(out, "pipeps_lb_model_request_duration_seconds", PROM_HISTOGRAM,
              "time from arrival to answer per model, successful INFERs");
    for (size_t b = 0; b < lb->pl.nbuckets; b++)
        for (struct lb_model *m = lb->pl.buckets[b]; m; m = m->hnext)
            if (m->latency) {
                struct prom_label l = {"model", m->name};
                prom_hist_write(out, "pipeps_lb_model_request_duration_seconds", &l, 1, m->latency);
            }
    static const struct {
        const char *name, *help;
        enum prom_type type;
    } per_machine[3] = {
        {"pipeps_lb_cache_capacity_bytes", "pool bytes of each machine's cache", PROM_GAUGE},
        {"pipeps_lb_cache_used_bytes", "pool bytes the balancer counts as used or reserved", PROM_GAUGE},
        {"pipeps_lb_cache_evictions_total", "evictions reported by each machine's cache", PROM_COUNTER},
    };
    for (int k = 0; k < 3; k++) {
        prom_head(out, per_machine[k].name, per_machine[k].type, per_machine[k].help);
        for (int i = 0; i < lb->pl.nmachines; i++) {
            const struct lb_machine *m = lb->pl.machines[i];
            char id[16];
            snprintf(id, sizeof id, "%d", m->id);
            struct prom_label l = {"machine", id};
            uint64_t v = k == 0 ? m->capacity : k == 1 ? lb_machine_used(m) : m->evictions;
            prom_u64(out, per_machine[k].name, &l, 1, v);
        }
    }
    prom_head(out, "pipeps_lb_server_outstanding_requests", PROM_GAUGE, "requests forwarded to each server, unanswered");
    for (int i = 0; i < lb->pl.nservers; i++) {
        struct prom_label l = {"server", lb->pl.servers[i]->label};
        prom_u64(out, "pipeps_lb_server_outstanding_requests", &l, 1, (uint64_t)lb->pl.servers[i]->outstanding);
    }
}

/* JSON string: printable ASCII names only reach here, but escape anyway. */
static void json_str(struct wbuf *out, const char *s)
{
    wbuf_u8(out, '"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            wbuf_u8(out, '\\');
            wbuf_u8(out, ch);
        } else if (ch < 0x20 || ch >= 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            wbuf_put(out, esc, 6);
        } else {
            wbuf_u8(out, ch);
        }
    }
    wbuf_u8(out, '"');
}

static void json_printf(struct wbuf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void json_printf(struct wbuf *out, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    wbuf_put(out, buf, n < 0 ? 0 : (size_t)n >= sizeof buf ? sizeof buf - 1 : (size_t)n);
}

void lb_render_status(struct lb *lb, struct wbuf *out)
{
    const double p[2] = {0.5, 0.99};
    double q[2];
    ring_percentiles(&lb->lat, p, q, 2);
    json_printf(out, "{\"policy\":\"%s\",\"uptime_s\":%.0f,\"requests\":%" PRIu64 ",\"ok\":%" PRIu64
                     ",\"errors\":%" PRIu64 ",\"queued\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"machines\":[",
                lb_policy_name(lb->pl.policy), now_s() - lb->t_start, lb->requests, lb->ok, lb->errors, lb->nqueued,
                q[0], q[1]);
    for (int i = 0; i < lb->pl.nmachines; i++) {
        struct lb_machine *m = lb->pl.machines[i];
        json_printf(out, "%s{\"id\":%d,\"cache\":", i ? "," : "", m->id);
        char addr[96];
        snprintf(addr, sizeof addr, "%s:%u", m->cache_addr, m->cache_port);
        json_str(out, addr);
        json_printf(out, ",\"connected\":%s,\"capacity\":%" PRIu64 ",\"used\":%" PRIu64 ",\"models\":[",
                    m->cache_connected ? "true" : "false", m->capacity, lb_machine_used(m));
        int any = 0;
        for (int k = 0; k < m->nentries; k++) {
            static const char *const st[] = {"", "loading", "loaded", "evicting"};
            if (m->entries[k].state == LB_ENTRY_NONE)
                continue;
            json_printf(out, "%s{\"name\":", any ? "," : "");
            json_str(out, m->entries[k].model->name);
            json_printf(out, ",\"state\":\"%s\",\"bytes\":%" PRIu64 "}", st[m->entries[k].state],
                        m->entries[k].bytes);
            any = 1;
        }
        wbuf_put(out, "],\"servers\":[", 13);
        any = 0;
        for (int k = 0; k < lb->pl.nservers; k++) {
            struct lb_server *s = lb->pl.servers[k];
            if (s->machine != m)
                continue;
            json_printf(out, "%s{\"id\":%d,\"addr\":", any ? "," : "", s->id);
            json_str(out, s->label);
            json_printf(out, ",\"ready\":%s,\"outstanding\":%d,\"served\":%" PRIu64 ",\"resident\":[",
                        s->ready ? "true" : "false", s->outstanding, s->served);
            for (int j = 0; j < s->nresident; j++) {
                if (j)
                    wbuf_u8(out, ',');
                json_str(out, s->resident[j]->name);
            }
            wbuf_put(out, "]}", 2);
            any = 1;
        }
        wbuf_put(out, "]}", 2);
    }
    wbuf_put(out, "],\"models\":[", 12);
    int any = 0;
    for (size_t b = 0; b < lb->pl.nbuckets; b++)
        for (struct lb_model *m = lb->pl.buckets[b]; m; m = m->hnext) {
            if (!m->requests)
                continue;
            double mp[2] = {0, 0};
            if (m->latency) {
                /* percentiles from the histogram: the upper bound of the bucket */
                uint64_t total = 0, cum = 0;
                for (int k = 0; k <= m->latency->nbounds; k++)
                    total += atomic_load(&m->latency->counts[k]);
                for (int k = 0, j = 0; k <= m->latency->nbounds && j < 2; k++) {
                    cum += atomic_load(&m->latency->counts[k]);
                    while (j < 2 && total && (double)cum >= p[j] * (double)total) {
                        mp[j++] = k < m->latency->nbounds ? m->latency->bounds[k] * 1e3 : 1e4;
                    }
                }
            }
            json_printf(out, "%s{\"name\":", any ? "," : "");
            json_str(out, m->name);
            json_printf(out, ",\"size\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"errors\":%" PRIu64
                             ",\"resident\":%" PRIu64 ",\"cache\":%" PRIu64 ",\"storage\":%" PRIu64
                             ",\"p50_ms_le\":%.0f,\"p99_ms_le\":%.0f}",
                        m->size, m->requests, m->errors, m->by_source[0], m->by_source[1], m->by_source[2], mp[0],
                        mp[1]);
            any = 1;
        }
    wbuf_put(out, "],\"evictions\":[", 15);
    int nev = lb->nevicted < 16 ? lb->nevicted : 16;
    for (int i = 0; i < nev; i++) {
        int k = (lb->nevicted - 1 - i) % 16;
        json_printf(out, "%s{\"ago_s\":%.1f,\"machine\":%d,\"model\":", i ? "," : "", now_s() - lb->evicted[k].t,
                    lb->evicted[k].machine);
        json_str(out, lb->evicted[k].model);
        wbuf_u8(out, '}');
    }
    wbuf_put(out, "]}", 2);
}

/* ---- start and stop ------------------------------------------------------ */

void lb_config_default(struct lb_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->policy = LB_POLICY_BASIC;
    cfg->amplifier = 2.0;
    cfg->max_outstanding = 4;
    cfg->queue_timeout_s = 30;
    cfg->max_queue = 100000;
    cfg->max_request = 256u << 20;
    cfg->max_response = UINT64_C(4) << 30;
    cfg->max_conns = 4096;
    cfg->io_timeout_s = 30;
    cfg->max_backlog = UINT64_C(4) << 30;
    cfg->http_max_body = 256u << 20;
    cfg->http_timeout_s = 30;
}

static int listen_on(struct lb *lb, int i, const char *addr, uint16_t port, evconnlistener_cb cb, uint16_t *bound)
{
    int fd;
    int rc = net_listen(addr, port, &fd);
    if (rc) {
        log_error("cannot listen on %s:%u: %s", addr, port, pps_strerror(rc));
        return rc;
    }
    net_local_port(fd, bound);
    evutil_make_socket_nonblocking(fd);
    lb->listeners[i] = evconnlistener_new(lb->base, cb, lb, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1, fd);
    if (!lb->listeners[i]) {
        evutil_closesocket(fd);
        return PPS_EIO;
    }
    return 0;
}

int lb_run(const struct lb_config *cfg)
{
    net_ignore_sigpipe();
    struct lb *lb = pps_xcalloc(1, sizeof *lb);
    lb->cfg = *cfg;
    lb->t_start = now_s();
    lb->meta_backoff_ms = 100;
    lb_place_init(&lb->pl, cfg->policy, cfg->amplifier, cfg->max_outstanding);
    lb->meta_sa.sin_family = AF_INET;
    lb->meta_sa.sin_port = htons(cfg->meta_port);
    int rc = 0;
    if (inet_pton(AF_INET, cfg->meta_addr, &lb->meta_sa.sin_addr) != 1) {
        log_error("metadata storage address '%s' is not a numeric IPv4 address", cfg->meta_addr);
        rc = PPS_EINVAL;
        goto out_place;
    }
    lb->base = event_base_new();
    if (!lb->base) {
        rc = PPS_ENOMEM;
        goto out_place;
    }
    uint16_t ports[3];
    if ((rc = listen_on(lb, 0, cfg->client_addr, cfg->client_port, accept_client, &ports[0])) ||
        (rc = listen_on(lb, 1, cfg->server_addr, cfg->server_port, accept_server, &ports[1])) ||
        (rc = listen_on(lb, 2, cfg->cache_addr, cfg->cache_port, accept_cache, &ports[2])))
        goto out_base;
    prom_hist_init(&lb->hist_latency, NULL, 0);
    prom_hist_init(&lb->hist_queue, NULL, 0);
    uint16_t http_port = 0;
    if (cfg->http_port_set &&
        (rc = lb_http_start(&lb->http, lb, lb->base, cfg->client_addr, cfg->http_port, cfg->http_max_body,
                            cfg->http_timeout_s, &http_port)))
        goto out_base;
    lb->reaper = event_new(lb->base, -1, 0, reaper_cb, lb);
    lb->tick = event_new(lb->base, -1, EV_PERSIST, tick_cb, lb);
    lb->meta_timer = evtimer_new(lb->base, meta_timer_cb, lb);
    lb->sig_int = evsignal_new(lb->base, SIGINT, signal_cb, lb);
    lb->sig_term = evsignal_new(lb->base, SIGTERM, signal_cb, lb);
    struct timeval tick = {0, LB_TICK_MS * 1000};
    evtimer_add(lb->tick, &tick);
    evsignal_add(lb->sig_int, NULL);
    evsignal_add(lb->sig_term, NULL);
    meta_connect(lb);
    printf("load_balancer: policy %s; clients on %s:%u, servers on %s:%u, caches on %s:%u; metadata storage "
           "%s:%u\n",
           lb_policy_name(cfg->policy), cfg->client_addr, ports[0], cfg->server_addr, ports[1], cfg->cache_addr,
           ports[2], cfg->meta_addr, cfg->meta_port);
    if (lb->http)
        printf("load_balancer: HTTP (KServe v2 API, /metrics, status page) on http://%s:%u/\n", cfg->client_addr,
               http_port);
    fflush(stdout);
    log_info("policy %s, amplifier %.2f, %d outstanding per server, queue timeout %.1f s", lb_policy_name(cfg->policy),
             cfg->amplifier, cfg->max_outstanding, cfg->queue_timeout_s);
    event_base_dispatch(lb->base);
    log_info("stopped: %" PRIu64 " requests, %" PRIu64 " ok, %" PRIu64 " errors", lb->requests, lb->ok, lb->errors);
    lb_http_stop(lb->http); /* its requests are answered or forgotten first */
    lb->http = NULL;
    /* Tear down: answer what is still in flight, close everything. */
    for (struct lconn *c = lb->conns; c; c = c->next) {
        if (c->kind == CONN_SERVER_FWD)
            while (c->reqs) {
                struct lreq *r = c->reqs;
                fwd_unlink(c, r);
                req_fail(lb, r, PPS_ECANCELED, "shutting down");
            }
    }
    for (struct lconn *c = lb->conns; c; c = c->next)
        bufferevent_flush(c->bev, EV_WRITE, BEV_FLUSH);
    while (lb->conns) {
        struct lconn *c = lb->conns;
        lb->conns = c->next;
        if (c->kind == CONN_CLIENT)
            while (c->reqs)
                req_free(c->reqs);
        while (c->ops) {
            struct cache_op *op = c->ops;
            c->ops = op->next;
            free(op);
        }
        bufferevent_free(c->bev);
        free(c);
    }
    while (lb->mhead) {
        struct meta_op *op = lb->mhead;
        lb->mhead = op->next;
        free(op);
    }
    free(lb->mwant);
    free(lb->lat.v);
    free(lb->lat_queue.v);
    event_free(lb->reaper);
    event_free(lb->tick);
    event_free(lb->meta_timer);
    event_free(lb->sig_int);
    event_free(lb->sig_term);
out_base:
    lb_http_stop(lb->http);
    for (int i = 0; i < 3; i++)
        if (lb->listeners[i])
            evconnlistener_free(lb->listeners[i]);
    event_base_free(lb->base);
out_place:
    lb_place_free(&lb->pl);
    free(lb);
    return rc;
}
