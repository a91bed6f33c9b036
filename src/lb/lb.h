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
    double io_timeout_s;       /* a peer stalled this long inside a frame is dropped (30) */
};

void lb_config_default(struct lb_config *cfg);
/* Run until SIGINT/SIGTERM. 0 on a clean stop, < 0 if it could not start. */
int lb_run(const struct lb_config *cfg);

#endif
