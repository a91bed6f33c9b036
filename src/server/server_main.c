/* server_main: the `server` command line (README "Server"): parse the
 * seed's positional arguments and the options, then run the daemon. */
#include "common/args.h"
#include "common/err.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"
#include "cache/cache_proto.h"
#include "server/server.h"
#include "server/server_proto.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: server CLIENT_ADDR CLIENT_PORT CACHE_ADDR CACHE_PORT LB_ADDR LB_PORT\n"
            "              [--threads T] [--memory BYTES] [--mode pipelined|stop-and-start]\n"
            "              [--max-request BYTES] [--max-batch N] [--max-queue N]\n"
            "              [--stall-timeout SECONDS] [--prep-threads N] [--reserve BYTES]\n"
            "              [--io-timeout SECONDS] [--max-conns N] [--max-partial BYTES]\n"
            "              [--metrics-port PORT] [--warm-models N]\n"
            "  Serves INFER requests on CLIENT_ADDR:CLIENT_PORT (also its identity for the load\n"
            "  balancer), loads models through the cache at CACHE_ADDR:CACHE_PORT and registers\n"
            "  with the load balancer at LB_ADDR:LB_PORT (LB_PORT 0: none), retrying until it is up.\n"
            "  --threads        compute threads per inference (default 2)\n"
            "  --memory         bytes of resident models (their parameters pinned in the cache,\n"
            "                   prepared weights, activations), LRU (default 4G)\n"
            "  --mode           pipelined (default): layer group i runs once batch i is here;\n"
            "                   stop-and-start: wait for every batch, then run (baseline)\n"
            "  --max-request    largest INFER payload accepted (default 256M)\n"
            "  --max-batch      largest batch size accepted (default 256)\n"
            "  --max-queue      INFER requests waiting before PPS_EBUSY (default 1024)\n"
            "  --stall-timeout  a model fetch with no progress this long fails (default 60)\n"
            "  --prep-threads   threads preparing weights as batches arrive (default: --threads)\n"
            "  --reserve        executor memory faulted in at start, reused by cold models\n"
            "                   (default 512M; 0: none)\n"
            "  --io-timeout     drop a peer that stalls this many seconds inside a request;\n"
            "                   idle connections are kept (default 120)\n"
            "  --max-conns      connections served at once; more are refused with PPS_EBUSY\n"
            "                   (default 1024)\n"
            "  --max-partial    bytes of INFER payloads being received at once; one beyond\n"
            "                   it is refused with PPS_EBUSY (default 1G, at least\n"
            "                   --max-request)\n"
            "  --metrics-port   serve Prometheus metrics on http://CLIENT_ADDR:PORT/metrics\n"
            "                   (0 = any free port, printed; default: off)\n"
            "  --warm-models    at start, build the kernels of up to N models the cache holds\n"
            "                   (most recently used first) so their first request is fast\n"
            "                   (default 8; 0: off)\n");
}

int server_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"threads", 1, NULL},     {"memory", 1, NULL},    {"mode", 1, NULL},
        {"max-request", 1, NULL}, {"max-batch", 1, NULL}, {"max-queue", 1, NULL},
        {"stall-timeout", 1, NULL}, {"prep-threads", 1, NULL}, {"reserve", 1, NULL},
        {"io-timeout", 1, NULL},  {"max-conns", 1, NULL}, {"max-partial", 1, NULL},
        {"metrics-port", 1, NULL}, {"warm-models", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &a, &help)) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    if (a.npositional != 6) {
        usage(stderr);
        return 2;
    }
    struct server_config cfg;
    server_config_default(&cfg);
    int bad = 0;
    if (snprintf(cfg.client_addr, sizeof cfg.client_addr, "%s", a.positional[0]) >=
            (int)sizeof cfg.client_addr ||
        snprintf(cfg.cache_addr, sizeof cfg.cache_addr, "%s", a.positional[2]) >=
            (int)sizeof cfg.cache_addr ||
        snprintf(cfg.lb_addr, sizeof cfg.lb_addr, "%s", a.positional[4]) >= (int)sizeof cfg.lb_addr) {
        fprintf(stderr, "server: address too long\n");
        return 2;
    }
    if (strcmp(a.positional[1], "0") == 0)
        cfg.client_port = 0;
    else if (net_parse_port(a.positional[1], &cfg.client_port))
        bad = fprintf(stderr, "server: bad CLIENT_PORT '%s'\n", a.positional[1]);
    if (net_parse_port(a.positional[3], &cfg.cache_port))
        bad = fprintf(stderr, "server: bad CACHE_PORT '%s'\n", a.positional[3]);
    if (strcmp(a.positional[5], "0") == 0)
        cfg.lb_port = 0;
    else if (net_parse_port(a.positional[5], &cfg.lb_port))
        bad = fprintf(stderr, "server: bad LB_PORT '%s'\n", a.positional[5]);
    if (opts[0].value && args_parse_int(opts[0].value, 1, 256, &cfg.threads))
        bad = fprintf(stderr, "server: bad --threads '%s' (1..256)\n", opts[0].value);
    if (opts[1].value && args_parse_size(opts[1].value, &cfg.memory))
        bad = fprintf(stderr, "server: bad --memory '%s'\n", opts[1].value);
    if (opts[2].value) {
        if (strcmp(opts[2].value, "pipelined") == 0)
            cfg.mode = INFER_MODE_PIPELINED;
        else if (strcmp(opts[2].value, "stop-and-start") == 0)
            cfg.mode = INFER_MODE_STOP_AND_START;
        else
            bad = fprintf(stderr, "server: --mode is pipelined or stop-and-start, not '%s'\n",
                          opts[2].value);
    }
    if (opts[3].value && (args_parse_size(opts[3].value, &cfg.max_request) || cfg.max_request < 4096))
        bad = fprintf(stderr, "server: bad --max-request '%s' (at least 4K)\n", opts[3].value);
    if (opts[4].value && args_parse_int(opts[4].value, 1, 1 << 20, &cfg.max_batch))
        bad = fprintf(stderr, "server: bad --max-batch '%s'\n", opts[4].value);
    if (opts[5].value && args_parse_int(opts[5].value, 1, 1 << 20, &cfg.max_queue))
        bad = fprintf(stderr, "server: bad --max-queue '%s'\n", opts[5].value);
    int stall = 0;
    if (opts[6].value) {
        if (args_parse_int(opts[6].value, 0, 86400, &stall))
            bad = fprintf(stderr, "server: bad --stall-timeout '%s'\n", opts[6].value);
        else
            cfg.stall_ms = stall * 1000;
    }
    if (opts[7].value && args_parse_int(opts[7].value, 1, 256, &cfg.prep_threads))
        bad = fprintf(stderr, "server: bad --prep-threads '%s' (1..256)\n", opts[7].value);
    if (opts[8].value && args_parse_size(opts[8].value, &cfg.reserve))
        bad = fprintf(stderr, "server: bad --reserve '%s'\n", opts[8].value);
    struct inbound_limits lim = {.io_timeout_ms = cfg.io_timeout_ms,
                                 .max_conns = cfg.max_conns,
                                 .max_partial = cfg.max_partial};
    char err[160];
    if (inbound_parse(&lim, opts[9].value, opts[10].value, opts[11].value, err, sizeof err))
        bad = fprintf(stderr, "server: %s\n", err);
    cfg.io_timeout_ms = lim.io_timeout_ms;
    cfg.max_conns = lim.max_conns;
    cfg.max_partial = lim.max_partial;
    if (opts[12].value && args_parse_int(opts[12].value, 0, 65535, &cfg.metrics_port))
        bad = fprintf(stderr, "server: bad --metrics-port '%s' (0..65535)\n", opts[12].value);
    if (opts[13].value && args_parse_int(opts[13].value, 0, CACHE_LIST_MAX, &cfg.warm_models))
        bad = fprintf(stderr, "server: bad --warm-models '%s' (0..%d)\n", opts[13].value, CACHE_LIST_MAX);
    if (cfg.max_partial < cfg.max_request) /* or such a request could never be served */
        bad = fprintf(stderr, "server: --max-partial must be at least --max-request\n");
    if (bad)
        return 2;
    int rc = server_run(&cfg);
    return rc ? 1 : 0;
}
