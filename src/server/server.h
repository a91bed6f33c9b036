/* server: the inference server (`server CLIENT_ADDR CLIENT_PORT CACHE_ADDR
 * CACHE_PORT LB_ADDR LB_PORT ...`, README "Server", docs/design.md "Server
 * pipeline").
 *
 * Threads:
 *   - the main thread accepts client connections (and waits for SIGTERM);
 *   - one reader thread per connection parses frames, answers PING, STAT
 *     and MODEL_INFO itself and queues INFER requests;
 *   - one worker thread serves INFER requests in arrival order: a resident
 *     model runs at once; any other is subscribed at the cache and run
 *     pipelined (the executor gates layer group i on batch i) or, with
 *     --mode stop-and-start, after every batch is prepared;
 *   - the cache link thread (cache_link.h) receives batch readiness and
 *     hands each batch to the executor while the worker computes;
 *   - the load-balancer link thread (lb_link.h) registers and reports
 *     resident models;
 *   - the executor's own preparer and compute threads;
 *   - with --metrics-port, the /metrics thread (http/metrics_http.h).
 * One worker, because the compute threads (--threads) already use the
 * machine's cores; a second model would only fight the first for them. */
#ifndef PIPEPS_SERVER_H
#define PIPEPS_SERVER_H

#include <stdint.h>

struct server_config {
    char client_addr[64];
    uint16_t client_port;
    char cache_addr[64];
    uint16_t cache_port;
    char lb_addr[64];
    uint16_t lb_port;          /* 0: no load balancer */
    int threads;               /* compute threads per run */
    int prep_threads;          /* threads preparing weights as batches arrive (0 = threads) */
    uint64_t memory;           /* bytes of prepared weights kept resident */
    uint64_t reserve;          /* executor memory faulted in at start (exec_mem_reserve) */
    int mode;                  /* enum infer_mode */
    uint64_t max_request;      /* bytes of an INFER payload */
    int max_batch;             /* largest batch size accepted */
    int max_conns;             /* connections served at once (--max-conns) */
    int io_timeout_ms;         /* a peer stalled this long inside a frame is dropped */
    uint64_t max_partial;      /* bytes of INFER payloads being received at once */
    int max_queue;             /* INFER requests waiting; more get PPS_EBUSY */
    int stall_ms;              /* a fetch with no progress this long fails */
    int lb_backoff_max_ms;
    int metrics_port;          /* --metrics-port on client_addr: -1 = off, 0 = any port */
    int warm_models;           /* build the kernels of this many cached models at start */
};

void server_config_default(struct server_config *cfg);
/* Listen, connect, serve until SIGTERM/SIGINT. 0 after a clean shutdown,
 * a PPS_E* code if start-up fails. */
int server_run(const struct server_config *cfg);
/* `server ...` / `pipeps server ...`. */
int server_main(int argc, char **argv);

#endif
