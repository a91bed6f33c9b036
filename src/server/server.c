/* server: connections, the request queue, the worker, model loading and
 * residency; see server.h for the threads.
 *
 * A model being served is a struct smodel: its executor model, its cache
 * subscription (which pins it at the cache and keeps the pool mapping that
 * its in-place weights live in), and what arrived so far. Loading one:
 *   1. subscribe at the cache (cache_link), wait for META;
 *   2. decode the METADATA blob from the pool, build the executor model
 *      (shapes, fusion, weight layouts: no parameter needed);
 *   3. every BATCH event hands its bytes, in place in the pool, to the
 *      executor (exec_batch_arrived) from the cache link thread, while the
 *      worker is already inside exec_run waiting on gate 0, 1, ...;
 *   4. after a successful run the model becomes resident (LRU within
 *      --memory) and the load balancer is told.
 * Batches that arrive between META and step 2's end are recorded and handed
 * over when the executor model exists: sm->lock makes that hand-over and
 * the link thread's direct calls exclusive, so each batch goes to the
 * executor exactly once.
 *
 * Locks: srv->lock guards the queue, the connection list, the resident
 * table and the counters; sm->lock guards one model's arrival state. Never
 * take srv->lock while holding sm->lock, and never release a cache
 * subscription (which may wait for a running callback that takes sm->lock)
 * while holding sm->lock.
 *
 * The easy thing to get wrong: a resident model's weights may point into
 * the cache's pool, so its subscription (pin + mapping) must outlive its
 * executor model: smodel_free destroys the executor first, then releases.
 *
 * Metrics: per-model counters (struct model_stats, under srv->lock, their
 * histograms atomic) are kept for every model name requested, up to
 * MODEL_STATS_MAX names (more are pooled under the empty name, so a client
 * inventing names cannot grow the table or the /metrics page without
 * bound). /metrics runs on its own thread and reads under srv->lock. */
#include "server/server.h"
#include "cache/cache_client.h"
#include "common/args.h"
#include "common/deadline.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"
#include "exec/exec_mem.h"
#include "exec/executor.h"
#include "http/metrics_http.h"
#include "http/prom.h"
#include "model/graph.h"
#include "model/model_blob.h"
#include "server/cache_link.h"
#include "server/lb_link.h"
#include "server/model_info.h"
#include "server/resident.h"
#include "server/server_proto.h"
#include "server/warmup.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCHES (1u << 20)   /* bound on a model's batch count from the cache */
#define META_TIMEOUT_MS 120000
#define MODEL_STATS_MAX 1024     /* model names with their own metrics */

struct server;

/* Per-model metrics; entries live until the server stops. */
struct model_stats {
    char name[INFER_MODEL_NAME_MAX + 1]; /* "" pools the names beyond MODEL_STATS_MAX */
    uint64_t requests, errors;           /* guarded by srv->lock */
    uint64_t served[3];                  /* successes by enum infer_source; srv->lock */
    struct prom_hist latency;            /* receipt to answer, seconds */
    struct prom_hist queue;              /* receipt to the worker taking it */
    struct model_stats *next;
};

struct sconn {
    struct server *srv;
    int fd;
    char peer[64];
    pthread_mutex_t wlock;       /* one frame at a time on the socket */
    int refs;                    /* reader thread + queued requests; guarded by srv->lock */
    int closed;                  /* reader saw EOF/error; guarded by srv->lock */
    struct sconn *prev, *next;
};

struct request {
    struct sconn *c;
    uint64_t rid;
    uint8_t *payload;            /* 64-byte aligned; the tensors point into it */
    struct infer_request req;
    double t_recv;
    struct model_stats *stats;   /* its model's metrics (live until the server stops) */
    struct request *next;
};

struct smodel {
    char name[INFER_MODEL_NAME_MAX + 1];
    struct server *srv;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct cache_sub *sub;
    /* guarded by lock: */
    struct exec_model *em;
    int have_meta;
    const uint8_t *meta;
    uint64_t meta_len;
    uint64_t total_size;
    uint32_t nbatches;
    const uint8_t **bdata;       /* [nbatches] arrived batches (pool addresses) */
    uint64_t *blen;
    uint32_t narrived;
    int done;                    /* DONE seen: every batch arrived */
    int hit;
    int failed;                  /* PPS_E*; 0 = fine */
    char fail_msg[512];
    double t_meta, t_first, t_last;
};

struct server {
    struct server_config cfg;
    int listen_fd;
    int sig_pipe[2];
    pthread_mutex_t lock;
    pthread_cond_t work_cond;
    pthread_cond_t conns_cond;
    struct request *qhead, *qtail;
    int nqueued;
    struct sconn *conns;
    int nconns;
    int stopping;
    pthread_t worker;
    struct resident_table res;
    struct cache_link *cache;
    struct lb_link *lb;
    const char *busy_model;      /* the model the worker serves now (for STAT) */
    struct inbound_budget budget; /* INFER payloads being received */
    /* counters, guarded by lock */
    uint64_t requests, ok, errors, bad_requests;
    uint64_t conns_refused, stalled_drops, partial_refused;
    uint64_t served_resident, served_cache, served_storage;
    uint64_t evictions;
    double started;
    double busy_since, busy_total; /* worker time in serve(); busy_since valid while busy_model */
    struct model_stats *mstats;     /* guarded by lock */
    int nmstats;
    struct metrics_http *metrics;   /* --metrics-port; NULL when off */
    struct warmup *warm;            /* --warm-models; NULL when off */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t us_between(double a, double b)
{
    return b > a ? (uint64_t)((b - a) * 1e6 + 0.5) : 0;
}

void server_config_default(struct server_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->client_addr, sizeof cfg->client_addr, "%s", NET_DEFAULT_ADDR);
    snprintf(cfg->cache_addr, sizeof cfg->cache_addr, "%s", NET_DEFAULT_ADDR);
    cfg->threads = 2;
    cfg->prep_threads = 0; /* = threads */
    cfg->memory = 4ull << 30;
    cfg->reserve = 512ull << 20;
    cfg->mode = INFER_MODE_PIPELINED;
    cfg->max_request = 256u << 20;
    cfg->max_batch = 256;
    cfg->max_conns = INBOUND_DEFAULT_MAX_CONNS;
    cfg->io_timeout_ms = INBOUND_DEFAULT_IO_TIMEOUT_S * 1000;
    cfg->max_partial = INBOUND_DEFAULT_MAX_PARTIAL;
    cfg->max_queue = 1024;
    cfg->stall_ms = 60000;
    cfg->lb_backoff_max_ms = 5000;
    cfg->metrics_port = -1;
    cfg->warm_models = 8;
}

/* The stats of a model name, created on first use (srv->lock held). */
static struct model_stats *model_stats_get(struct server *srv, const char *name)
{
    if (srv->nmstats >= MODEL_STATS_MAX)
        name = "";
    for (struct model_stats *m = srv->mstats; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    struct model_stats *m = pps_xcalloc(1, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    prom_hist_init(&m->latency, NULL, 0);
    prom_hist_init(&m->queue, NULL, 0);
    m->next = srv->mstats;
    srv->mstats = m;
    srv->nmstats++;
    return m;
}

/* ---- connections -------------------------------------------------------- */

static void conn_unref(struct sconn *c)
{
    struct server *srv = c->srv;
    pthread_mutex_lock(&srv->lock);
    int last = --c->refs == 0;
    if (last) {
        if (c->prev)
            c->prev->next = c->next;
        else
            srv->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        srv->nconns--;
        pthread_cond_broadcast(&srv->conns_cond);
    }
    pthread_mutex_unlock(&srv->lock);
    if (last) {
        close(c->fd);
        pthread_mutex_destroy(&c->wlock);
        free(c);
    }
}

static int conn_send(struct sconn *c, struct frame_header *h, const void *p, size_t n)
{
    pthread_mutex_lock(&c->wlock);
    int rc = frame_send(c->fd, h, p, n);
    pthread_mutex_unlock(&c->wlock);
    return rc;
}

static void conn_reply(struct sconn *c, uint16_t type, uint64_t rid, const void *p, size_t n)
{
    struct frame_header h = {.type = type, .flags = FRAME_FLAG_RESPONSE, .request_id = rid};
    conn_send(c, &h, p, n);
}

static void conn_error(struct sconn *c, uint16_t type, uint64_t rid, int status, const char *msg)
{
    pthread_mutex_lock(&c->wlock);
    frame_send_error(c->fd, type, rid, status, msg);
    pthread_mutex_unlock(&c->wlock);
}

/* ---- models -------------------------------------------------------------- */

static void smodel_free(struct server *srv, struct smodel *sm)
{
    if (!sm)
        return;
    struct exec_model *em;
    pthread_mutex_lock(&sm->lock);
    em = sm->em;
    sm->em = NULL; /* the link thread stops handing it batches */
    pthread_mutex_unlock(&sm->lock);
    if (em) {
        exec_batch_failed(em, PPS_ECANCELED);
        exec_model_destroy(em);
    }
    cache_link_release(srv->cache, sm->sub); /* after the executor: it may use the pool */
    sm->sub = NULL;
    free(sm->bdata);
    free(sm->blen);
    pthread_mutex_destroy(&sm->lock);
    pthread_cond_destroy(&sm->cond);
    free(sm);
}

/* Cache link thread: one event of a model's subscription. */
static void on_cache_event(struct cache_sub *sub, const struct cache_event *ev, void *arg)
{
    (void)sub;
    struct smodel *sm = arg;
    double t = now_s();
    pthread_mutex_lock(&sm->lock);
    switch (ev->kind) {
    case CACHE_EV_META:
        if (sm->have_meta || ev->nbatches == 0 || ev->nbatches > MAX_BATCHES) {
            sm->failed = PPS_EPROTO;
            snprintf(sm->fail_msg, sizeof sm->fail_msg, "cache sent a bad META for %s", sm->name);
            break;
        }
        sm->bdata = calloc(ev->nbatches, sizeof *sm->bdata);
        sm->blen = calloc(ev->nbatches, sizeof *sm->blen);
        if (!sm->bdata || !sm->blen) {
            sm->failed = PPS_ENOMEM;
            snprintf(sm->fail_msg, sizeof sm->fail_msg, "out of memory");
            break;
        }
        sm->meta = ev->data;
        sm->meta_len = ev->len;
        sm->nbatches = ev->nbatches;
        sm->total_size = ev->total_size;
        sm->have_meta = 1;
        sm->t_meta = t;
        break;
    case CACHE_EV_BATCH:
        if (!sm->have_meta || ev->index >= sm->nbatches || sm->bdata[ev->index]) {
            sm->failed = PPS_EPROTO;
            snprintf(sm->fail_msg, sizeof sm->fail_msg, "cache announced batch %u of %s out of order",
                     ev->index, sm->name);
            if (sm->em)
                exec_batch_failed(sm->em, PPS_EFETCH);
            break;
        }
        sm->bdata[ev->index] = ev->data;
        sm->blen[ev->index] = ev->len;
        if (sm->narrived++ == 0)
            sm->t_first = t;
        sm->t_last = t;
        if (sm->em) {
            int rc = exec_batch_arrived(sm->em, (int)ev->index, ev->data, ev->len);
            if (rc) {
                sm->failed = rc;
                snprintf(sm->fail_msg, sizeof sm->fail_msg,
                         "batch %u of %s does not fit its description (%s)", ev->index, sm->name,
                         pps_strerror(rc));
                exec_batch_failed(sm->em, PPS_ECORRUPT);
            }
        }
        break;
    case CACHE_EV_DONE:
        sm->done = 1;
        sm->hit = ev->hit;
        break;
    case CACHE_EV_ERROR:
        /* Once every batch is here the model is complete; a later broken
         * connection does not matter (the mapping stays). */
        if (sm->have_meta && sm->narrived == sm->nbatches) {
            sm->done = 1;
            break;
        }
        sm->failed = ev->status < 0 ? ev->status : PPS_EFETCH;
        snprintf(sm->fail_msg, sizeof sm->fail_msg, "%s", ev->message);
        if (sm->em)
            exec_batch_failed(sm->em, sm->failed == PPS_ENOTFOUND ? PPS_ENOTFOUND : PPS_EFETCH);
        break;
    }
    pthread_cond_broadcast(&sm->cond);
    pthread_mutex_unlock(&sm->lock);
}

static struct smodel *smodel_new(struct server *srv, const char *name)
{
    struct smodel *sm = pps_xcalloc(1, sizeof *sm);
    snprintf(sm->name, sizeof sm->name, "%s", name);
    sm->srv = srv;
    pthread_mutex_init(&sm->lock, NULL);
    pthread_cond_init(&sm->cond, NULL);
    return sm;
}

/* Wait (sm->lock held) until cond or failure; PPS_ETIMEOUT after ms. */
static int wait_until(struct smodel *sm, int (*ready)(const struct smodel *), int ms)
{
    struct timespec dl = deadline_after_ms(ms);
    while (!sm->failed && !ready(sm))
        if (pthread_cond_timedwait(&sm->cond, &sm->lock, &dl) == ETIMEDOUT)
            return ready(sm) ? 0 : PPS_ETIMEOUT;
    return sm->failed ? sm->failed : 0;
}

static int meta_ready(const struct smodel *sm) { return sm->have_meta; }
static int all_done(const struct smodel *sm) { return sm->done; }

/* ---- residency ------------------------------------------------------------ */

static void tell_lb(struct server *srv, uint8_t kind, const char *name, uint64_t bytes)
{
    struct lb_server_event ev = {.kind = kind, .bytes = bytes, .capacity = srv->cfg.memory};
    snprintf(ev.model, sizeof ev.model, "%s", name);
    pthread_mutex_lock(&srv->lock);
    ev.used = srv->res.used;
    pthread_mutex_unlock(&srv->lock);
    lb_link_event(srv->lb, &ev);
}

struct victim {
    struct smodel *sm;
    uint64_t bytes;
    struct victim *next;
};

/* srv->lock held: remove LRU idle models until used + extra fits, onto *list. */
static void collect_victims(struct server *srv, uint64_t extra, const struct resident_entry *keep,
                            struct victim **list)
{
    struct resident_entry *e;
    while ((e = resident_victim(&srv->res, extra, keep)) != NULL) {
        struct victim *v = pps_xcalloc(1, sizeof *v);
        v->bytes = e->bytes;
        v->sm = resident_remove(&srv->res, e);
        v->next = *list;
        *list = v;
        srv->evictions++;
    }
}

static void drop_victims(struct server *srv, struct victim *list)
{
    while (list) {
        struct victim *v = list;
        list = v->next;
        log_info("%s: dropped from the server (least recently used, %" PRIu64 " bytes)", v->sm->name,
                 v->bytes);
        tell_lb(srv, LB_SERVER_EVENT_EVICTED, v->sm->name, v->bytes);
        smodel_free(srv, v->sm);
        free(v);
    }
}

/* Drop the least recently used idle resident model (to unpin it at a full
 * cache). 0 if one was dropped, PPS_ENOTFOUND if none is idle. */
static int drop_one_idle(struct server *srv)
{
    struct victim *v = NULL;
    pthread_mutex_lock(&srv->lock);
    struct resident_entry *e = resident_lru_idle(&srv->res);
    if (e) {
        v = pps_xcalloc(1, sizeof *v);
        v->bytes = e->bytes;
        v->sm = resident_remove(&srv->res, e);
        srv->evictions++;
    }
    pthread_mutex_unlock(&srv->lock);
    if (!v)
        return PPS_ENOTFOUND;
    drop_victims(srv, v);
    return 0;
}

/* ---- serving --------------------------------------------------------------- */

struct serve_ctx {
    struct request *r;
    char err[512];
    struct infer_timing tm;
    double t_take;
};

static int fail_req(struct serve_ctx *x, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_req(struct serve_ctx *x, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, sizeof x->err, fmt, ap);
    va_end(ap);
    return code;
}

static void dims_text(char *out, size_t cap, int ndims, const int64_t *dims)
{
    size_t n = 0;
    n += (size_t)snprintf(out + n, cap - n, "[");
    for (int i = 0; i < ndims && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, i ? ",%" PRId64 : "%" PRId64, dims[i]);
    if (n < cap)
        snprintf(out + n, cap - n, "]");
}

/* The request's tensors against the model's input specs. */
static int check_inputs(struct serve_ctx *x, const struct graph *g, int max_batch, int64_t *batch)
{
    const struct infer_request *rq = &x->r->req;
    /* Trailing optional inputs (graph_io) may be left out. */
    int nreq = graph_required_inputs(g);
    if (rq->ninputs < nreq || rq->ninputs > g->ninputs) {
        if (nreq == g->ninputs)
            return fail_req(x, PPS_ESHAPE, "%s takes %d input tensor(s), the request has %d",
                            g->name, g->ninputs, rq->ninputs);
        return fail_req(x, PPS_ESHAPE, "%s takes %d to %d input tensors, the request has %d",
                        g->name, nreq, g->ninputs, rq->ninputs);
    }
    for (int i = 0; i < rq->ninputs; i++) {
        const struct graph_io *s = &g->inputs[i];
        const struct infer_tensor *t = &rq->inputs[i];
        int ok = t->dtype == (uint8_t)s->dtype && t->ndims == s->ndims;
        for (int d = 1; ok && d < s->ndims; d++)
            ok = t->dims[d] == s->dims[d];
        if (ok && i > 0 && t->dims[0] != rq->inputs[0].dims[0])
            ok = 0;
        if (!ok) {
            char want[160], got[160];
            int64_t wd[GRAPH_MAX_DIMS];
            memcpy(wd, s->dims, sizeof wd);
            dims_text(want, sizeof want, s->ndims, wd);
            dims_text(got, sizeof got, t->ndims, t->dims);
            return fail_req(x, PPS_ESHAPE,
                            "input %d (%s): got %s %s, the model takes %s %s (-1 = any batch size)",
                            i, s->name, infer_dtype_name(t->dtype), got,
                            graph_dtype_name(s->dtype), want);
        }
    }
    *batch = rq->inputs[0].dims[0];
    if (*batch > max_batch)
        return fail_req(x, PPS_ERANGE, "batch size %" PRId64 " is over the server's limit %d",
                        *batch, max_batch);
    return 0;
}

/* Does msg already say which model ("model NAME: ..." from the cache)?
 * Then it is passed on without naming the model again. */
static int names_model(const char *msg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(msg, "model ", 6) == 0 && strncmp(msg + 6, name, n) == 0 &&
           (msg[6 + n] == ':' || msg[6 + n] == ' ');
}

/* Subscribe and wait for the model's METADATA; build the executor model. */
static int load_model(struct server *srv, struct serve_ctx *x, struct smodel **out)
{
    const char *name = x->r->req.model;
    for (int attempt = 0;; attempt++) {
        struct smodel *sm = smodel_new(srv, name);
        sm->sub = cache_link_subscribe(srv->cache, name, on_cache_event, sm);
        pthread_mutex_lock(&sm->lock);
        int rc = wait_until(sm, meta_ready, META_TIMEOUT_MS);
        pthread_mutex_unlock(&sm->lock);
        if (rc == PPS_ENOSPACE && attempt < 64 && drop_one_idle(srv) == 0) {
            /* The pool is full of models this server keeps pinned. */
            smodel_free(srv, sm);
            continue;
        }
        if (rc) {
            if (rc == PPS_ENOTFOUND && names_model(sm->fail_msg, name))
                fail_req(x, rc, "%s", sm->fail_msg); /* the cache's words name it once */
            else if (rc == PPS_ENOTFOUND)
                fail_req(x, rc, "unknown model %s (%s)", name, sm->fail_msg);
            else if (rc == PPS_ETIMEOUT)
                fail_req(x, PPS_EFETCH, "the cache sent no metadata for %s in %d s", name,
                         META_TIMEOUT_MS / 1000);
            else if (rc == PPS_ECONNECT || rc == PPS_ECLOSED)
                fail_req(x, rc, "cache unavailable: %s", sm->fail_msg);
            else
                fail_req(x, rc == PPS_ENOSPACE ? rc : PPS_EFETCH, "fetching %s failed: %s", name,
                         sm->fail_msg);
            smodel_free(srv, sm);
            return rc == PPS_ENOTFOUND || rc == PPS_ECONNECT || rc == PPS_ECLOSED ||
                           rc == PPS_ENOSPACE
                       ? rc
                       : PPS_EFETCH;
        }
        double t0 = now_s();
        x->tm.meta_us = us_between(x->r->t_recv, sm->t_meta);
        x->tm.wait_us += us_between(x->t_take, sm->t_meta);

        /* Make room for it before it grows (its parameter bytes estimate
         * what its prepared weights take). */
        struct victim *victims = NULL;
        pthread_mutex_lock(&srv->lock);
        if (resident_fits(&srv->res, sm->total_size))
            collect_victims(srv, sm->total_size, NULL, &victims);
        pthread_mutex_unlock(&srv->lock);
        drop_victims(srv, victims);

        struct graph g;
        char err[256] = "";
        rc = model_blob_decode(&g, sm->meta, sm->meta_len, err, sizeof err);
        if (rc) {
            fail_req(x, PPS_ECORRUPT, "metadata of %s is invalid: %s", name, err);
            smodel_free(srv, sm);
            return PPS_ECORRUPT;
        }
        if ((uint32_t)g.nbatches != sm->nbatches) {
            fail_req(x, PPS_ECORRUPT, "metadata of %s describes %d batches, the cache holds %u",
                     name, g.nbatches, sm->nbatches);
            graph_free(&g);
            smodel_free(srv, sm);
            return PPS_ECORRUPT;
        }
        struct exec_options opt;
        exec_options_default(&opt);
        opt.threads = srv->cfg.threads;
        opt.prep_threads = srv->cfg.prep_threads ? srv->cfg.prep_threads : srv->cfg.threads;
        opt.params_persist = 1; /* weights used in place stay valid: we hold the pin */
        struct exec_model *em = NULL;
        rc = exec_model_create(&em, &g, &opt, err, sizeof err);
        graph_free(&g);
        if (rc) {
            fail_req(x, rc, "cannot build %s: %s", name, err);
            smodel_free(srv, sm);
            return rc;
        }
        /* Hand over what arrived meanwhile; from now on the link thread
         * calls the executor itself. */
        pthread_mutex_lock(&sm->lock);
        for (uint32_t i = 0; i < sm->nbatches && !rc; i++)
            if (sm->bdata[i])
                rc = exec_batch_arrived(em, (int)i, sm->bdata[i], sm->blen[i]);
        if (rc) {
            sm->failed = rc;
            snprintf(sm->fail_msg, sizeof sm->fail_msg, "a batch of %s does not fit its description",
                     name);
        } else if (sm->failed) {
            exec_batch_failed(em, PPS_EFETCH);
        }
        sm->em = em;
        pthread_mutex_unlock(&sm->lock);
        x->tm.load_us = us_between(t0, now_s());
        *out = sm;
        return 0;
    }
}

/* Fill the outputs' headers and run. resp receives the payload. */
static int run_model(struct server *srv, struct serve_ctx *x, struct smodel *sm, int64_t batch,
                     struct wbuf *resp)
{
    struct exec_model *em = sm->em;
    const struct graph *g = exec_model_graph(em);
    int nout = g->noutputs;
    struct infer_tensor outs[INFER_MAX_TENSORS];
    size_t offs[INFER_MAX_TENSORS];
    char err[256] = "";
    infer_encode_response_head(resp, &x->tm, nout);
    for (int i = 0; i < nout; i++) {
        struct exec_tensor t;
        int rc = exec_output_info(em, i, batch, &t, err, sizeof err);
        if (rc)
            return fail_req(x, rc, "%s: output %d: %s", sm->name, i, err);
        memset(&outs[i], 0, sizeof outs[i]);
        outs[i].dtype = (uint8_t)t.dtype;
        outs[i].ndims = t.ndims;
        memcpy(outs[i].dims, t.dims, sizeof outs[i].dims);
        outs[i].nbytes = t.nbytes;
        offs[i] = infer_reserve_tensor(resp, &outs[i]);
    }
    const void *inputs[INFER_MAX_TENSORS] = {NULL}; /* left out: NULL, the input's default */
    uint64_t in_bytes[INFER_MAX_TENSORS] = {0};
    void *outputs[INFER_MAX_TENSORS];
    for (int i = 0; i < x->r->req.ninputs; i++) {
        inputs[i] = x->r->req.inputs[i].data;
        in_bytes[i] = x->r->req.inputs[i].nbytes;
    }
    for (int i = 0; i < nout; i++)
        outputs[i] = resp->data + offs[i];

    if (srv->cfg.mode == INFER_MODE_STOP_AND_START) {
        /* The baseline: every batch prepared before the first step. */
        double t0 = now_s();
        int rc = exec_wait_prepared(em);
        x->tm.wait_us += us_between(t0, now_s());
        if (rc)
            return fail_req(x, rc, "fetching %s failed: %s", sm->name,
                            sm->fail_msg[0] ? sm->fail_msg : pps_strerror(rc));
    }
    pthread_mutex_lock(&sm->lock);
    x->tm.batches_at_start = sm->narrived;
    x->tm.nbatches = sm->nbatches ? sm->nbatches : (uint32_t)exec_batch_count(em);
    pthread_mutex_unlock(&sm->lock);
    struct exec_timing et;
    memset(&et, 0, sizeof et);
    double t_start = now_s();
    int rc = exec_run(em, batch, inputs, in_bytes, outputs, &et, err, sizeof err);
    double t_end = now_s();
    x->tm.exec_start_us = us_between(x->r->t_recv, t_start);
    x->tm.exec_end_us = us_between(x->r->t_recv, t_end);
    x->tm.wait_us += (uint64_t)(et.wait_ms * 1e3 + 0.5);
    x->tm.compute_us = (uint64_t)((et.compute_ms + et.plan_ms) * 1e3 + 0.5);
    x->tm.plan_us = (uint64_t)(et.plan_ms * 1e3 + 0.5);
    if (rc) {
        pthread_mutex_lock(&sm->lock);
        int failed = sm->failed;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sm->fail_msg);
        pthread_mutex_unlock(&sm->lock);
        if (failed == PPS_ECLOSED || failed == PPS_ECONNECT)
            return fail_req(x, failed, "cache unavailable while loading %s: %s", sm->name, msg);
        if (failed)
            return fail_req(x, PPS_EFETCH, "fetching %s failed: %s", sm->name, msg);
        return fail_req(x, rc, "%s: %s", sm->name, err[0] ? err : pps_strerror(rc));
    }
    return 0;
}

static void log_timing(const struct request *r, int64_t batch, const struct infer_timing *t)
{
    static const char *src[] = {"resident", "cache", "storage"};
    log_info("INFER %s batch %" PRId64 " (%s, %s): queue %.3f ms, wait %.3f ms, compute %.3f ms, "
             "total %.3f ms; batches %u (%u there at start), first/last batch at %.3f/%.3f ms, "
             "exec %.3f..%.3f ms",
             r->req.model, batch, src[t->source < 3 ? t->source : 0],
             t->mode == INFER_MODE_STOP_AND_START ? "stop-and-start" : "pipelined",
             t->queue_us / 1e3, t->wait_us / 1e3, t->compute_us / 1e3, t->total_us / 1e3,
             t->nbatches, t->batches_at_start, t->first_batch_us / 1e3, t->last_batch_us / 1e3,
             t->exec_start_us / 1e3, t->exec_end_us / 1e3);
}

static int request_waiting(void *arg)
{
    struct server *srv = arg;
    pthread_mutex_lock(&srv->lock);
    int waiting = srv->qhead != NULL || srv->stopping;
    pthread_mutex_unlock(&srv->lock);
    return waiting;
}

/* A cold run used matmul weights in place (the executor's deferred
 * relayout); reorder them into the faster layout now while no request
 * waits, rather than only in the gaps between requests, which under a
 * steady load may never be long enough. The work goes in slices of about a
 * millisecond and stops as soon as a request arrives (it goes on after that
 * request), so nobody waits behind it. Runs on the worker, which alone
 * frees models. */
static void finish_layout_if_idle(struct server *srv, struct smodel *sm)
{
    if (exec_layout_final(sm->em) || request_waiting(srv))
        return;
    double t0 = now_s();
    int n = exec_finish_layout_until(sm->em, request_waiting, srv);
    if (n > 0)
        log_info("%s: %d weights relaid in %.1f ms while idle", sm->name, n, (now_s() - t0) * 1e3);
}

static void serve(struct server *srv, struct request *r)
{
    struct serve_ctx x;
    memset(&x, 0, sizeof x);
    x.r = r;
    x.t_take = now_s();
    x.tm.queue_us = us_between(r->t_recv, x.t_take);
    x.tm.mode = (uint8_t)srv->cfg.mode;
    int rc = 0;
    int cold = 0;
    int64_t batch = 0;
    struct smodel *sm = NULL;
    struct resident_entry *e;
    struct wbuf resp;
    wbuf_init(&resp);

    pthread_mutex_lock(&srv->lock);
    e = resident_find(&srv->res, r->req.model);
    if (e) {
        e->in_use++;
        resident_touch(&srv->res, e);
        sm = e->owner;
    }
    srv->busy_model = r->req.model;
    srv->busy_since = x.t_take;
    pthread_mutex_unlock(&srv->lock);

    if (!sm) {
        cold = 1;
        rc = load_model(srv, &x, &sm);
    }
    if (!rc)
        rc = check_inputs(&x, exec_model_graph(sm->em), srv->cfg.max_batch, &batch);
    if (!rc)
        rc = run_model(srv, &x, sm, batch, &resp);
    if (!rc && cold) {
        /* Complete (every gate opened): wait for DONE, which tells whether
         * the cache had it all, then keep it. */
        pthread_mutex_lock(&sm->lock);
        wait_until(sm, all_done, 1000);
        x.tm.source = sm->hit ? INFER_SRC_CACHE : INFER_SRC_STORAGE;
        x.tm.first_batch_us = us_between(r->t_recv, sm->t_first);
        x.tm.last_batch_us = us_between(r->t_recv, sm->t_last);
        pthread_mutex_unlock(&sm->lock);
    }
    x.tm.total_us = us_between(r->t_recv, now_s());

    /* Residency and counters. */
    struct victim *victims = NULL;
    struct smodel *to_free = NULL;
    uint64_t bytes = 0;
    int became_resident = 0;
    pthread_mutex_lock(&srv->lock);
    srv->busy_model = NULL;
    srv->busy_total += now_s() - srv->busy_since;
    struct model_stats *ms = r->stats;
    prom_hist_observe(&ms->latency, (double)x.tm.total_us / 1e6);
    prom_hist_observe(&ms->queue, (double)x.tm.queue_us / 1e6);
    if (rc)
        ms->errors++;
    else
        ms->served[x.tm.source < 3 ? x.tm.source : INFER_SRC_RESIDENT]++;
    if (rc) {
        srv->errors++;
        if (cold)
            to_free = sm; /* a failed load is not kept (may be NULL) */
        else
            e->in_use--;
    } else {
        srv->ok++;
        /* What keeping it costs: its own memory and the pool bytes it pins. */
        bytes = exec_model_memory_bytes(sm->em) + sm->total_size;
        if (cold) {
            srv->served_cache += x.tm.source == INFER_SRC_CACHE;
            srv->served_storage += x.tm.source == INFER_SRC_STORAGE;
            if (resident_fits(&srv->res, bytes)) {
                collect_victims(srv, bytes, NULL, &victims);
                resident_add(&srv->res, sm->name, bytes, sm);
                became_resident = 1;
            } else {
                to_free = sm;
            }
        } else {
            srv->served_resident++;
            resident_set_bytes(&srv->res, e, bytes);
            e->in_use--;
            collect_victims(srv, 0, e, &victims);
            if (!resident_fits(&srv->res, bytes)) {
                resident_remove(&srv->res, e);
                to_free = sm;
            }
        }
    }
    pthread_mutex_unlock(&srv->lock);

    /* A model not kept is unpinned at the cache (acknowledged, one loopback
     * round trip) before the reply: the balancer may answer the reply with a
     * CACHE_OUT of it, which the cache refuses while a pin lasts. Its
     * executor is idle and nothing else can reach it (not resident), so the
     * pool bytes are not read again. */
    if (to_free && !rc) {
        cache_link_release_wait(srv->cache, to_free->sub, 200);
        to_free->sub = NULL;
    }
    if (rc) {
        log_warn("INFER %s from %s: %s: %s", r->req.model, r->c->peer, pps_errname(rc), x.err);
        conn_error(r->c, MSG_INFER, r->rid, rc, x.err);
    } else {
        struct wbuf head;
        wbuf_init(&head);
        infer_encode_response_head(&head, &x.tm, exec_model_graph(sm->em)->noutputs);
        memcpy(resp.data, head.data, head.len); /* same length: patch the timing in */
        wbuf_free(&head);
        log_timing(r, batch, &x.tm);
        conn_reply(r->c, MSG_INFER, r->rid, resp.data, resp.len);
    }
    wbuf_free(&resp);
    drop_victims(srv, victims);
    if (became_resident) {
        log_info("%s: resident (%" PRIu64 " bytes)", sm->name, bytes);
        tell_lb(srv, LB_SERVER_EVENT_RESIDENT, sm->name, bytes);
    }
    if (to_free) {
        if (!rc)
            log_info("%s: needs %" PRIu64 " bytes, over --memory %" PRIu64 ": not kept", sm->name,
                     bytes, srv->cfg.memory);
        if (!cold)
            tell_lb(srv, LB_SERVER_EVENT_EVICTED, to_free->name, bytes);
        smodel_free(srv, to_free);
    }
    if (!rc && to_free != sm)
        finish_layout_if_idle(srv, sm);
}

static void request_free(struct request *r)
{
    conn_unref(r->c);
    free(r->payload);
    free(r);
}

static void *worker_thread(void *arg)
{
    struct server *srv = arg;
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        while (!srv->qhead && !srv->stopping)
            pthread_cond_wait(&srv->work_cond, &srv->lock);
        if (srv->stopping) {
            pthread_mutex_unlock(&srv->lock);
            return NULL;
        }
        struct request *r = srv->qhead;
        srv->qhead = r->next;
        if (!srv->qhead)
            srv->qtail = NULL;
        srv->nqueued--;
        int gone = r->c->closed;
        pthread_mutex_unlock(&srv->lock);
        if (gone)
            log_info("INFER %s: client %s left before it was served; skipped", r->req.model,
                     r->c->peer);
        else
            serve(srv, r);
        request_free(r);
    }
}

/* ---- MODEL_INFO and STAT (on the connection's thread) ----------------------- */

static void handle_model_info(struct server *srv, struct sconn *c, uint64_t rid, const uint8_t *p,
                              size_t n)
{
    char name[INFER_MODEL_NAME_MAX + 1];
    if (infer_decode_model(p, n, name)) {
        conn_error(c, MSG_MODEL_INFO, rid, PPS_EINVAL, "MODEL_INFO: bad model name");
        return;
    }
    struct infer_model_info mi;
    int found = 0;
    pthread_mutex_lock(&srv->lock);
    struct resident_entry *e = resident_find(&srv->res, name);
    if (e) {
        /* The executor model is not freed while resident and we hold the lock. */
        model_info_from_graph(&mi, exec_model_graph(((struct smodel *)e->owner)->em));
        mi.resident = 1;
        found = 1;
    }
    pthread_mutex_unlock(&srv->lock);
    if (!found) {
        /* Read the description from the cache (which fetches the model if it
         * lacks it: a client asking is about to send requests). */
        struct smodel *sm = smodel_new(srv, name);
        sm->sub = cache_link_subscribe(srv->cache, name, on_cache_event, sm);
        pthread_mutex_lock(&sm->lock);
        int rc = wait_until(sm, meta_ready, META_TIMEOUT_MS);
        pthread_mutex_unlock(&sm->lock);
        struct graph g;
        char err[600] = "";
        if (!rc && (rc = model_blob_decode(&g, sm->meta, sm->meta_len, err, sizeof err)) == 0) {
            model_info_from_graph(&mi, &g);
            graph_free(&g);
        } else if (!err[0]) {
            snprintf(err, sizeof err, "%s", sm->fail_msg[0] ? sm->fail_msg : pps_strerror(rc));
        }
        smodel_free(srv, sm);
        if (rc) {
            char msg[900];
            if (names_model(err, name))
                snprintf(msg, sizeof msg, "%s", err);
            else
                snprintf(msg, sizeof msg, "%s: %s", name, err);
            conn_error(c, MSG_MODEL_INFO, rid, rc, msg);
            return;
        }
    }
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_model_info(&wb, &mi);
    conn_reply(c, MSG_MODEL_INFO, rid, wb.data, wb.len);
    wbuf_free(&wb);
}

static void stat_text(struct server *srv, struct wbuf *wb)
{
    struct cache_link_stats cs;
    cache_link_get_stats(srv->cache, &cs);
    struct lb_link_stats ls;
    lb_link_get_stats(srv->lb, &ls);
    char line[512];
#define LINE(...)                                                                \
    do {                                                                         \
        int k_ = snprintf(line, sizeof line, __VA_ARGS__);                       \
        wbuf_put(wb, line, (size_t)k_ < sizeof line ? (size_t)k_ : sizeof line - 1); \
    } while (0)
    pthread_mutex_lock(&srv->lock);
    LINE("uptime_s %.1f\n", now_s() - srv->started);
    LINE("mode %s\n", srv->cfg.mode == INFER_MODE_STOP_AND_START ? "stop-and-start" : "pipelined");
    LINE("threads %d\n", srv->cfg.threads);
    LINE("requests %" PRIu64 "\n", srv->requests);
    LINE("ok %" PRIu64 "\n", srv->ok);
    LINE("errors %" PRIu64 "\n", srv->errors);
    LINE("bad_requests %" PRIu64 "\n", srv->bad_requests);
    LINE("served_resident %" PRIu64 "\n", srv->served_resident);
    LINE("served_from_cache %" PRIu64 "\n", srv->served_cache);
    LINE("served_from_storage %" PRIu64 "\n", srv->served_storage);
    LINE("queued %d\n", srv->nqueued);
    LINE("busy %s\n", srv->busy_model ? srv->busy_model : "-");
    LINE("connections %d\n", srv->nconns);
    LINE("connections_refused %" PRIu64 "\n", srv->conns_refused);
    LINE("stalled_drops %" PRIu64 "\n", srv->stalled_drops);
    LINE("partial_bytes %" PRIu64 "\n", inbound_budget_used(&srv->budget));
    LINE("partial_refused %" PRIu64 "\n", srv->partial_refused);
    LINE("memory_capacity %" PRIu64 "\n", srv->res.capacity);
    LINE("memory_used %" PRIu64 "\n", srv->res.used);
    LINE("resident_models %d\n", srv->res.count);
    LINE("evictions %" PRIu64 "\n", srv->evictions);
    for (struct resident_entry *e = resident_first(&srv->res); e; e = e->next)
        LINE("resident %s %" PRIu64 "\n", e->name, e->bytes);
    pthread_mutex_unlock(&srv->lock);
    LINE("cache_connected %d\n", cs.connected);
    LINE("cache_connects %" PRIu64 "\n", cs.connects);
    LINE("cache_subscriptions %" PRIu64 "\n", cs.subscriptions);
    LINE("cache_failures %" PRIu64 "\n", cs.failures);
    LINE("cache_pool %s %" PRIu64 "\n", cs.shm_name[0] ? cs.shm_name : "-", cs.pool_size);
    LINE("warmed_models %d\n", srv->warm ? warmup_done(srv->warm) : 0);
    LINE("lb_registered %d\n", ls.registered);
    LINE("lb_registrations %" PRIu64 "\n", ls.registrations);
#undef LINE
}

/* The /metrics text (README, "Metrics"); runs on the metrics thread. */
static void metrics_text(struct wbuf *out, void *arg)
{
    struct server *srv = arg;
    static const char *const src_names[3] = {"resident", "cache", "storage"};
    struct cache_link_stats cs;
    cache_link_get_stats(srv->cache, &cs);
    struct lb_link_stats ls;
    lb_link_get_stats(srv->lb, &ls);
    pthread_mutex_lock(&srv->lock);
    prom_head(out, "pipeps_server_requests_total", PROM_COUNTER,
              "INFER requests received, by model (refusals for a full queue included).");
    for (struct model_stats *m = srv->mstats; m; m = m->next) {
        struct prom_label l = {"model", m->name};
        prom_u64(out, "pipeps_server_requests_total", &l, 1, m->requests);
    }
    prom_head(out, "pipeps_server_errors_total", PROM_COUNTER,
              "INFER requests answered with an error, by model.");
    for (struct model_stats *m = srv->mstats; m; m = m->next) {
        struct prom_label l = {"model", m->name};
        prom_u64(out, "pipeps_server_errors_total", &l, 1, m->errors);
    }
    prom_head(out, "pipeps_server_served_total", PROM_COUNTER,
              "INFER requests answered successfully, by model and by where the parameters were: "
              "resident in the server, all in the cache, or fetched from storage.");
    for (struct model_stats *m = srv->mstats; m; m = m->next)
        for (int i = 0; i < 3; i++) {
            struct prom_label l[2] = {{"model", m->name}, {"source", src_names[i]}};
            prom_u64(out, "pipeps_server_served_total", l, 2, m->served[i]);
        }
    prom_head(out, "pipeps_server_request_duration_seconds", PROM_HISTOGRAM,
              "Time from an INFER request's receipt to its answer, by model.");
    for (struct model_stats *m = srv->mstats; m; m = m->next) {
        struct prom_label l = {"model", m->name};
        prom_hist_write(out, "pipeps_server_request_duration_seconds", &l, 1, &m->latency);
    }
    prom_head(out, "pipeps_server_queue_duration_seconds", PROM_HISTOGRAM,
              "Time an INFER request waited for the worker, by model.");
    for (struct model_stats *m = srv->mstats; m; m = m->next) {
        struct prom_label l = {"model", m->name};
        prom_hist_write(out, "pipeps_server_queue_duration_seconds", &l, 1, &m->queue);
    }
    prom_metric_f64(out, PROM_COUNTER, "pipeps_server_busy_seconds_total",
                    "Time the worker spent serving requests.",
                    srv->busy_total + (srv->busy_model ? now_s() - srv->busy_since : 0));
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_queue_length",
                    "INFER requests waiting for the worker.", (uint64_t)srv->nqueued);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_resident_bytes",
                    "Memory of the resident models' prepared weights.", srv->res.used);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_memory_capacity_bytes",
                    "Memory for resident models (--memory).", srv->res.capacity);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_resident_models", "Models kept resident.",
                    (uint64_t)srv->res.count);
    prom_head(out, "pipeps_server_resident_model_bytes", PROM_GAUGE,
              "Memory of each resident model.");
    for (struct resident_entry *e = resident_first(&srv->res); e; e = e->next) {
        struct prom_label l = {"model", e->name};
        prom_u64(out, "pipeps_server_resident_model_bytes", &l, 1, e->bytes);
    }
    prom_metric_u64(out, PROM_COUNTER, "pipeps_server_evictions_total",
                    "Resident models dropped to make room.", srv->evictions);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_server_bad_requests_total",
                    "Malformed frames and requests.", srv->bad_requests);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_open_connections", "Client connections open.",
                    (uint64_t)srv->nconns);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_server_connections_refused_total",
                    "Connections refused over --max-conns.", srv->conns_refused);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_server_stalled_drops_total",
                    "Peers dropped for stalling inside a request (--io-timeout).", srv->stalled_drops);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_server_partial_refused_total",
                    "Requests refused over --max-partial.", srv->partial_refused);
    pthread_mutex_unlock(&srv->lock);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_cache_connected",
                    "1 while connected to the machine's cache.", (uint64_t)cs.connected);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_server_lb_registered",
                    "1 while registered with the load balancer.", (uint64_t)ls.registered);
}

/* Registration payload (lb_link thread). */
static void lb_register_payload(struct wbuf *wb, void *arg)
{
    struct server *srv = arg;
    struct lb_server_register m;
    memset(&m, 0, sizeof m);
    snprintf(m.client_addr, sizeof m.client_addr, "%s", srv->cfg.client_addr);
    m.client_port = srv->cfg.client_port;
    snprintf(m.cache_addr, sizeof m.cache_addr, "%s", srv->cfg.cache_addr);
    m.cache_port = srv->cfg.cache_port;
    m.memory_capacity = srv->cfg.memory;
    m.threads = (uint32_t)srv->cfg.threads;
    m.mode = (uint8_t)srv->cfg.mode;
    pthread_mutex_lock(&srv->lock);
    m.memory_used = srv->res.used;
    m.models = pps_xcalloc((size_t)srv->res.count + 1, sizeof *m.models);
    for (struct resident_entry *e = resident_first(&srv->res); e; e = e->next) {
        snprintf(m.models[m.nmodels].model, sizeof m.models[0].model, "%s", e->name);
        m.models[m.nmodels++].bytes = e->bytes;
    }
    pthread_mutex_unlock(&srv->lock);
    lb_server_encode_register(wb, &m);
    free(m.models);
}

/* ---- connection reader ------------------------------------------------------ */

/* Receive a payload into its own (aligned) buffer. One over 64 KiB is
 * charged to the --max-partial budget while it arrives; PPS_EBUSY (nothing
 * read) when it does not fit. */
static int read_payload(struct sconn *c, const struct frame_header *h, uint8_t **out)
{
    struct server *srv = c->srv;
    uint64_t charged = h->payload_len > INFER_MAX_CONTROL ? h->payload_len : 0;
    if (charged && inbound_budget_take(&srv->budget, charged))
        return PPS_EBUSY;
    uint8_t *p = NULL;
    size_t n = h->payload_len ? (size_t)h->payload_len : 1;
    if (posix_memalign((void **)&p, INFER_TENSOR_ALIGN, (n + 63) / 64 * 64)) {
        if (charged)
            inbound_budget_give(&srv->budget, charged);
        return PPS_ENOMEM;
    }
    int rc = net_read_full(c->fd, p, h->payload_len);
    if (charged)
        inbound_budget_give(&srv->budget, charged);
    if (rc) {
        free(p);
        if (charged)
            inbound_trim(); /* a large partial payload: give its pages back */
        return rc;
    }
    *out = p;
    return 0;
}

static void count_bad(struct server *srv)
{
    pthread_mutex_lock(&srv->lock);
    srv->bad_requests++;
    pthread_mutex_unlock(&srv->lock);
}

/* One frame. Returns 0 to keep the connection, < 0 to close it. */
static int handle_frame(struct server *srv, struct sconn *c)
{
    struct frame_header h;
    uint8_t raw[FRAME_HEADER_SIZE];
    size_t got = 0;
    int rc = inbound_recv_header(c->fd, raw, &got);
    if (rc == PPS_ETIMEOUT) {
        pthread_mutex_lock(&srv->lock);
        srv->stalled_drops++;
        pthread_mutex_unlock(&srv->lock);
        log_warn("%s: stalled %d s after %zu bytes of a frame header; dropped", c->peer,
                 srv->cfg.io_timeout_ms / 1000, got);
        return rc;
    }
    if (rc) {
        if (got)
            log_warn("%s: disconnected after %zu bytes of a frame header", c->peer, got);
        return rc;
    }
    rc = frame_decode_header(raw, &h, srv->cfg.max_request);
    if (rc) {
        count_bad(srv);
        log_warn("%s: bad frame header (%s); closing the connection", c->peer, pps_strerror(rc));
        conn_error(c, rc == PPS_ETOOBIG ? h.type : MSG_ERROR, h.request_id, rc,
                   rc == PPS_ETOOBIG ? "payload over the server's limit" : "malformed frame header");
        return rc;
    }
    if (h.flags & FRAME_FLAG_RESPONSE) {
        count_bad(srv);
        log_warn("%s: unexpected response frame; closing the connection", c->peer);
        conn_error(c, MSG_ERROR, h.request_id, PPS_EPROTO, "unexpected response frame");
        return PPS_EPROTO;
    }
    if (h.type != MSG_INFER && h.payload_len > INFER_MAX_CONTROL) {
        count_bad(srv);
        log_warn("%s: %s payload of %" PRIu64 " bytes over the limit; closing", c->peer,
                 frame_type_name(h.type), h.payload_len);
        conn_error(c, h.type, h.request_id, PPS_ETOOBIG, "payload over the limit");
        return PPS_ETOOBIG;
    }
    uint8_t *p = NULL;
    if ((rc = read_payload(c, &h, &p)) == PPS_EBUSY) {
        /* skip it; the stream stays in step */
        pthread_mutex_lock(&srv->lock);
        srv->partial_refused++;
        pthread_mutex_unlock(&srv->lock);
        char msg[160];
        snprintf(msg, sizeof msg,
                 "%" PRIu64 " bytes of requests are being received already (--max-partial %" PRIu64
                 "); try again later", inbound_budget_used(&srv->budget), srv->budget.limit);
        log_warn("%s: %s payload of %" PRIu64 " bytes refused: %s", c->peer,
                 frame_type_name(h.type), h.payload_len, msg);
        if ((rc = net_discard(c->fd, h.payload_len)) != 0)
            return rc;
        conn_error(c, h.type, h.request_id, PPS_EBUSY, msg);
        return 0;
    }
    if (rc) {
        if (rc == PPS_ETIMEOUT) {
            pthread_mutex_lock(&srv->lock);
            srv->stalled_drops++;
            pthread_mutex_unlock(&srv->lock);
            log_warn("%s: stalled %d s in the middle of a %s payload of %" PRIu64 " bytes; dropped",
                     c->peer, srv->cfg.io_timeout_ms / 1000, frame_type_name(h.type),
                     h.payload_len);
        } else if (rc != PPS_ENOMEM) {
            log_warn("%s: disconnected in the middle of a %s frame", c->peer,
                     frame_type_name(h.type));
        }
        return rc;
    }
    switch (h.type) {
    case MSG_PING:
        conn_reply(c, MSG_PING, h.request_id, p, h.payload_len);
        break;
    case MSG_STAT: {
        struct wbuf wb;
        wbuf_init(&wb);
        stat_text(srv, &wb);
        conn_reply(c, MSG_STAT, h.request_id, wb.data, wb.len);
        wbuf_free(&wb);
        break;
    }
    case MSG_MODEL_INFO:
        handle_model_info(srv, c, h.request_id, p, h.payload_len);
        break;
    case MSG_INFER: {
        struct request *r = pps_xcalloc(1, sizeof *r);
        char err[256];
        rc = infer_decode_request(p, h.payload_len, &r->req, err, sizeof err);
        if (rc) {
            count_bad(srv);
            log_warn("%s: bad INFER request: %s", c->peer, err);
            conn_error(c, MSG_INFER, h.request_id, rc, err);
            free(r);
            break;
        }
        r->c = c;
        r->rid = h.request_id;
        r->payload = p;
        r->t_recv = now_s();
        p = NULL;
        pthread_mutex_lock(&srv->lock);
        srv->requests++;
        struct model_stats *ms = model_stats_get(srv, r->req.model);
        r->stats = ms;
        ms->requests++;
        int full = srv->nqueued >= srv->cfg.max_queue;
        if (!full) {
            c->refs++;
            if (srv->qtail)
                srv->qtail->next = r;
            else
                srv->qhead = r;
            srv->qtail = r;
            srv->nqueued++;
            pthread_cond_signal(&srv->work_cond);
        } else {
            srv->errors++;
            ms->errors++;
        }
        pthread_mutex_unlock(&srv->lock);
        if (full) {
            conn_error(c, MSG_INFER, h.request_id, PPS_EBUSY, "server queue full; try later");
            free(r->payload);
            free(r);
        }
        break;
    }
    default:
        count_bad(srv);
        log_warn("%s: unknown message type %s", c->peer, frame_type_name(h.type));
        conn_error(c, MSG_ERROR, h.request_id, PPS_EUNSUPPORTED, "message type not handled by the server");
        break;
    }
    free(p);
    return 0;
}

static void *conn_thread(void *arg)
{
    struct sconn *c = arg;
    struct server *srv = c->srv;
    while (handle_frame(srv, c) == 0)
        ;
    pthread_mutex_lock(&srv->lock);
    c->closed = 1;
    pthread_mutex_unlock(&srv->lock);
    shutdown(c->fd, SHUT_RDWR);
    log_debug("%s: disconnected", c->peer);
    conn_unref(c);
    return NULL;
}

static void accept_one(struct server *srv)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    char peer[64] = "?";
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        const uint8_t *a = (const uint8_t *)&in->sin_addr;
        snprintf(peer, sizeof peer, "%u.%u.%u.%u:%u", a[0], a[1], a[2], a[3],
                 (unsigned)ntohs(in->sin_port));
    }
    pthread_mutex_lock(&srv->lock);
    int full = srv->nconns >= srv->cfg.max_conns;
    pthread_mutex_unlock(&srv->lock);
    if (full) {
        log_warn("%s: refused: %d connections already (--max-conns)", peer, srv->cfg.max_conns);
        pthread_mutex_lock(&srv->lock);
        srv->conns_refused++;
        pthread_mutex_unlock(&srv->lock);
        inbound_refuse(fd, srv->cfg.max_conns);
        return;
    }
    net_set_nodelay(fd);
    net_set_bufsize(fd, 4 << 20);
    inbound_set_recv_timeout(fd, srv->cfg.io_timeout_ms);
    struct sconn *c = pps_xcalloc(1, sizeof *c);
    c->srv = srv;
    c->fd = fd;
    c->refs = 1;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_mutex_lock(&srv->lock);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    pthread_mutex_unlock(&srv->lock);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, conn_thread, c) != 0) {
        log_error("%s: cannot start a thread for the connection", peer);
        conn_unref(c);
    }
    pthread_attr_destroy(&attr);
}

/* ---- life cycle --------------------------------------------------------------- */

static int sig_write_fd = -1;

static void on_signal(int sig)
{
    char c = (char)sig;
    ssize_t r = write(sig_write_fd, &c, 1);
    (void)r;
}

int server_run(const struct server_config *cfg)
{
    struct server *srv = pps_xcalloc(1, sizeof *srv);
    srv->cfg = *cfg;
    srv->started = now_s();
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->work_cond, NULL);
    pthread_cond_init(&srv->conns_cond, NULL);
    resident_init(&srv->res, cfg->memory);
    inbound_budget_init(&srv->budget, cfg->max_partial);
    net_ignore_sigpipe();

    char err[200];
    int rc = net_listen_msg(cfg->client_addr, cfg->client_port, &srv->listen_fd, err, sizeof err);
    if (rc) {
        log_error("%s", err);
        free(srv);
        return rc;
    }
    uint16_t port = cfg->client_port;
    net_local_port(srv->listen_fd, &port);
    srv->cfg.client_port = port;
    int metrics_fd = -1;
    uint16_t metrics_port = 0;
    if (cfg->metrics_port >= 0 &&
        (rc = metrics_http_listen(cfg->client_addr, (uint16_t)cfg->metrics_port, &metrics_fd,
                                  &metrics_port, err, sizeof err)) != 0) {
        log_error("%s", err);
        close(srv->listen_fd);
        free(srv);
        return rc;
    }
    if (cfg->reserve) {
        /* Fault in executor memory now, off the first cold request's path. */
        double t0 = now_s();
        if (exec_mem_reserve(cfg->reserve))
            log_warn("cannot reserve %" PRIu64 " bytes of executor memory; going on without",
                     cfg->reserve);
        else
            log_info("reserved %" PRIu64 " MiB of executor memory in %.0f ms", cfg->reserve >> 20,
                     (now_s() - t0) * 1e3);
    }
    if (pipe2(srv->sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        close(srv->listen_fd);
        if (metrics_fd >= 0)
            close(metrics_fd);
        free(srv);
        return pps_from_errno(errno);
    }
    sig_write_fd = srv->sig_pipe[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (cfg->warm_models > 0) {
        struct exec_options wo;
        exec_options_default(&wo);
        wo.threads = cfg->threads;
        wo.params_persist = 1; /* as the models it warms for will be built */
        if (warmup_start(&srv->warm, &wo, cfg->warm_models) != 0)
            srv->warm = NULL; /* only slower first requests */
    }
    if ((rc = cache_link_start(&srv->cache, cfg->cache_addr, cfg->cache_port, cfg->stall_ms)) != 0 ||
        (rc = lb_link_start(&srv->lb, cfg->lb_addr, cfg->lb_port, cfg->lb_backoff_max_ms,
                            lb_register_payload, srv)) != 0) {
        log_error("cannot start: %s", pps_strerror(rc));
        return rc;
    }
    if (srv->warm)
        cache_link_list_once(srv->cache, warmup_offer, srv->warm);
    if (pthread_create(&srv->worker, NULL, worker_thread, srv) != 0) {
        log_error("cannot start the worker thread");
        return PPS_ENOMEM;
    }
    if (metrics_fd >= 0) {
        if ((rc = metrics_http_start(&srv->metrics, metrics_fd, metrics_text, srv)) != 0) {
            log_error("cannot serve metrics: %s", pps_strerror(rc));
            return rc;
        }
        printf("server metrics on http://%s:%u/metrics\n", cfg->client_addr, metrics_port);
        fflush(stdout);
        log_info("metrics on http://%s:%u/metrics", cfg->client_addr, metrics_port);
    }
    log_info("serving on %s:%u (cache %s:%u, load balancer %s:%u, %s, %d threads, memory %" PRIu64
             " bytes)",
             cfg->client_addr, port, cfg->cache_addr, cfg->cache_port,
             cfg->lb_addr[0] ? cfg->lb_addr : "-", cfg->lb_port,
             cfg->mode == INFER_MODE_STOP_AND_START ? "stop-and-start" : "pipelined", cfg->threads,
             cfg->memory);

    for (;;) {
        struct pollfd p[2] = {{.fd = srv->listen_fd, .events = POLLIN},
                              {.fd = srv->sig_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (p[0].revents)
            accept_one(srv);
    }
    log_info("shutting down");
    metrics_http_stop(srv->metrics);
    srv->metrics = NULL;

    /* Stop taking work, finish the request being served, refuse the rest. */
    close(srv->listen_fd);
    pthread_mutex_lock(&srv->lock);
    srv->stopping = 1;
    pthread_cond_broadcast(&srv->work_cond);
    for (struct sconn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RD);
    pthread_mutex_unlock(&srv->lock);
    pthread_join(srv->worker, NULL);
    pthread_mutex_lock(&srv->lock);
    struct request *q = srv->qhead;
    srv->qhead = srv->qtail = NULL;
    pthread_mutex_unlock(&srv->lock);
    while (q) {
        struct request *n = q->next;
        conn_error(q->c, MSG_INFER, q->rid, PPS_ECANCELED, "server shutting down");
        request_free(q);
        q = n;
    }
    pthread_mutex_lock(&srv->lock);
    for (struct sconn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    while (srv->nconns > 0)
        pthread_cond_wait(&srv->conns_cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);

    lb_link_stop(srv->lb);
    struct resident_entry *e;
    while ((e = resident_first(&srv->res)) != NULL)
        smodel_free(srv, resident_remove(&srv->res, e));
    cache_link_stop(srv->cache);
    warmup_stop(srv->warm); /* after the link: it may still hand the list over */
    resident_destroy(&srv->res);
    while (srv->mstats) {
        struct model_stats *m = srv->mstats;
        srv->mstats = m->next;
        free(m);
    }
    close(srv->sig_pipe[0]);
    close(srv->sig_pipe[1]);
    sig_write_fd = -1;
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->work_cond);
    pthread_cond_destroy(&srv->conns_cond);
    free(srv);
    log_info("stopped");
    return 0;
}
