/* metrics_http: the `GET /metrics` endpoint every daemon offers with
 * --metrics-port (README, "Metrics"), on libevent's evhttp.
 *
 * The daemon supplies a render function that appends its Prometheus text
 * (http/prom.h) to a buffer; the endpoint calls it once per scrape and
 * answers 200 with "text/plain; version=0.0.4". Other paths get 404, other
 * methods on /metrics 405. Three ways to run it:
 *
 *   - metrics_http_start: on its own thread and event base. For daemons
 *     whose state lives on many threads (storage, server): render runs on
 *     the metrics thread and takes whatever lock the daemon's counters need.
 *   - metrics_http_attach: on the caller's event base. For libevent daemons
 *     (metadata storage, cache, load balancer): render runs on the loop
 *     thread between the daemon's own callbacks, so it reads loop-owned
 *     state without locks. It must not block.
 *   - metrics_http_respond: answer one request of an evhttp the caller owns
 *     (a daemon that already serves other HTTP paths routes "/metrics" to
 *     it, e.g. from evhttp_set_cb).
 *
 * Listening is separate (metrics_http_listen) so that a daemon can bind its
 * ports before it touches its data directory and fail early if the port is
 * taken, and start serving once its state exists. The one thing easy to get
 * wrong: with metrics_http_attach, metrics_http_stop must run on the loop
 * thread or after the loop has returned, never from another thread. */
#ifndef PIPEPS_METRICS_HTTP_H
#define PIPEPS_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

struct event_base;
struct evhttp_request;
struct metrics_http;

/* Append the whole exposition text to out (called once per scrape). */
typedef void (*metrics_render_fn)(struct wbuf *out, void *arg);

/* Listen on addr:port (addr NULL or "" = loopback; port 0 = any free one).
 * *bound_port gets the port actually bound. On failure err (errlen bytes)
 * holds one line naming the address and the reason. */
int metrics_http_listen(const char *addr, uint16_t port, int *fd_out, uint16_t *bound_port,
                        char *err, size_t errlen);

/* Serve the listening socket fd on a thread of its own. fd is the
 * endpoint's from the call on (closed on failure too). */
int metrics_http_start(struct metrics_http **out, int fd, metrics_render_fn render, void *arg);

/* Serve the listening socket fd on base (the caller's loop). fd as above. */
int metrics_http_attach(struct metrics_http **out, struct event_base *base, int fd,
                        metrics_render_fn render, void *arg);

/* Stop serving, close the socket and open connections, free. NULL is a
 * no-op. For metrics_http_start: joins the thread (from any other thread).
 * For metrics_http_attach: see the note above. */
void metrics_http_stop(struct metrics_http *m);

/* Answer req with render's text (GET or HEAD; anything else 405). The
 * caller has matched the path. */
void metrics_http_respond(struct evhttp_request *req, metrics_render_fn render, void *arg);

/* The Content-Type of the answer. */
#define METRICS_HTTP_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
