/* lb_link: the server's registration with the load balancer.
 *
 * A thread connects to the load balancer, sends LB_SERVER_REGISTER (the
 * server's client-facing address, its cache, memory, and the models
 * resident now) and keeps the connection, sending an LB_SERVER_EVENT
 * whenever a model becomes resident or is dropped. While the load balancer
 * is down or unreachable it retries with exponential backoff (100 ms up to
 * backoff_max_ms), so start order does not matter and the server serves
 * requests all the while. Events that happen while disconnected are not
 * queued: the next registration carries the whole resident set.
 *
 * The load balancer may send requests on the connection: PING is echoed,
 * anything else is answered with ERROR/PPS_EUNSUPPORTED. */
#ifndef PIPEPS_LB_LINK_H
#define PIPEPS_LB_LINK_H

#include <stdint.h>

#include "common/buf.h"
#include "server/server_proto.h"

/* Appends the current LB_SERVER_REGISTER payload to wb (called on the link
 * thread at each (re)connection). */
typedef void (*lb_register_fn)(struct wbuf *wb, void *arg);

struct lb_link_stats {
    int registered;
    uint64_t registrations;  /* successful ones */
    uint64_t attempts;       /* connection attempts */
    uint64_t events_sent;
};

struct lb_link;

/* addr NULL or empty, or port 0: no load balancer (the link does nothing). */
int lb_link_start(struct lb_link **out, const char *addr, uint16_t port, int backoff_max_ms,
                  lb_register_fn fn, void *arg);
void lb_link_stop(struct lb_link *l);
/* Queue an event for the load balancer (dropped while not registered). */
void lb_link_event(struct lb_link *l, const struct lb_server_event *ev);
void lb_link_get_stats(struct lb_link *l, struct lb_link_stats *st);

#endif
