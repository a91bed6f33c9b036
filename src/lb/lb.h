/* lb: the load balancer daemon, the cluster's front door (README
 * "load_balancer", docs/design.md "Load balancer", docs/protocol.md).
 *
 * One libevent loop owns all state: three listeners (clients, servers,
 * caches), a forwarding connection to every registered server, the caches'
 * registration connections (on which it sends CACHE_IN / CACHE_OUT) and one
 * connection to the metadata storage for model sizes. Nothing in it ever
 * blocks on a peer; placement decisions are lb_place's. */
#ifndef PIPEPS_LB_H
#define PIPEPS_LB_H

#include <stdint.h>

#include "lb/lb_place.h"

struct lb_config {
    enum lb_policy policy;
    char client_addr[64];
    uint16_t client_port;      /* 0: any free port (printed) */
    char server_addr[64];
    uint16_t server_port;
    char cache_addr[64];
    uint16_t cache_port;
    char meta_addr[64];
    uint16_t meta_port;
    double amplifier;          /* basic: room made for size x amplifier (2) */
    int max_outstanding;       /* requests forwarded to one server at once (4) */
    double queue_timeout_s;    /* a request waiting longer gets PPS_ETIMEOUT (30) */
    int max_queue;             /* requests waiting in the balancer before PPS_EBUSY (100000) */
    uint64_t max_request;      /* largest INFER payload from a client (256M) */
    uint64_t max_response;     /* largest answer accepted from a server (4G) */
    int max_conns;             /* client connections (4096) */
    uint64_t max_backlog;      /* answers a client has not read yet before it is dropped (4G) */
    double io_timeout_s;       /* a peer stalled this long inside a frame is dropped (30) */
    uint16_t http_port;        /* KServe v2 HTTP API, /metrics and the status page on CLIENT_ADDR; 0: off */
    int http_port_set;         /* --http-port given (0 then means any free port) */
    uint64_t http_max_body;    /* largest HTTP request body (256M) */
    double http_timeout_s;     /* HTTP header/body read timeout (30) */
};

struct lb;
struct lreq;
struct evbuffer;
struct wbuf;

/* The answer to a request of the HTTP front end (lb_http): status 0 and the
 * server's payload (INFER: the response; MODEL_INFO: the model info), or
 * status < 0 and why (payload NULL, or the server's error text). Called once
 * per request, on the loop thread; payload is the balancer's (it may be
 * drained). */
typedef void (*lb_answer_fn)(void *ctx, int status, const char *why, struct evbuffer *payload);

/* Submit an INFER or MODEL_INFO (payload: the binary request, taken) for
 * model through the same placement as binary clients. Returns a handle, or
 * NULL if fn has already been called. */
struct lreq *lb_submit(struct lb *lb, uint16_t type, const char *model, struct evbuffer *payload, lb_answer_fn fn,
                       void *ctx);
/* The requester is gone: drop the request (or its answer, when it comes). */
void lb_forget(struct lb *lb, struct lreq *r);
/* Servers ready to take requests. */
int lb_ready_servers(const struct lb *lb);
/* Prometheus text of the balancer's metrics (a metrics_render_fn). */
void lb_render_metrics(struct wbuf *out, void *lb);
/* The cluster as JSON, for the status page. */
void lb_render_status(struct lb *lb, struct wbuf *out);

void lb_config_default(struct lb_config *cfg);
/* Run until SIGINT/SIGTERM. 0 on a clean stop, < 0 if it could not start. */
int lb_run(const struct lb_config *cfg);

#endif
