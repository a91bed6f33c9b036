/* lb_http: the load balancer's HTTP front end (README "HTTP API"): the
 * Open Inference Protocol (KServe v2 REST, as Triton speaks it) with JSON
 * tensors and the binary tensor data extension, `/metrics` in Prometheus
 * text, and a status page at `/`. It runs on the balancer's own event loop
 * (libevent's evhttp) and turns every inference into the same INFER request
 * a binary client sends, placed by the same policy (lb_submit). */
#ifndef PIPEPS_LB_HTTP_H
#define PIPEPS_LB_HTTP_H

#include <stdint.h>

struct lb;
struct lb_http;
struct event_base;

/* Listen on addr:port (0: any free port, *bound gets it) and serve on base.
 * max_body: largest request body (413 above it); timeout_s: read/write
 * timeout of a connection. */
int lb_http_start(struct lb_http **out, struct lb *lb, struct event_base *base, const char *addr, uint16_t port,
                  uint64_t max_body, double timeout_s, uint16_t *bound);
/* Drop pending requests (their balancer requests are forgotten) and stop.
 * NULL is a no-op. On the loop thread or after the loop has returned. */
void lb_http_stop(struct lb_http *h);

#endif
