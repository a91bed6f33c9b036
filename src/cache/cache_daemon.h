/* cache_daemon: the cache process (`cache ...`, docs/protocol.md "Cache").
 *
 * One libevent loop owns all control state: the model table and pool
 * allocator (cache_store), server connections and their subscriptions, the
 * link to the load balancer, counters. Bulk data never passes through it:
 * the fetcher's threads (cache_fetch) receive straight into the shared
 * pool and report per-batch completion back through an eventfd. */
#ifndef PIPEPS_CACHE_DAEMON_H
#define PIPEPS_CACHE_DAEMON_H

#include <stdint.h>

#define CACHE_DEFAULT_PROGRESS_TIMEOUT_S 5

struct cache_config {
    char server_addr[64];
    uint16_t server_port;
    char meta_addr[64];
    uint16_t meta_port;
    char lb_addr[64];
    uint16_t lb_port;
    char shm_name[256];
    uint64_t shm_size;         /* a multiple of block_size */
    uint64_t block_size;       /* a multiple of 4096 */
    int fetch_threads;         /* connections (threads) per storage */
    int depth;                 /* requests in flight per storage connection */
    int retries;               /* resends after a broken storage connection */
    int io_timeout_ms;         /* a server stalled this long inside a frame is dropped */
    int progress_timeout_ms;   /* a storage silent this long with a request due has stalled */
    uint64_t throttle_bps;     /* 0 = unlimited */
    int lb_backoff_max_ms;     /* cap of the reconnect backoff to the load balancer */
    int max_conns;             /* server connections */
    int metrics_port;          /* --metrics-port on server_addr: -1 = off, 0 = any port */
};

/* Create the pool, listen, run until SIGTERM/SIGINT, then remove the pool.
 * Returns 0 after a clean shutdown, a PPS_E* code if start-up fails. */
int cache_daemon_run(const struct cache_config *cfg);

#endif
