/* lb_main: the `load_balancer` command line: the seed's nine positional
 * arguments (policy, then address and port for clients, servers, caches
 * and the metadata storage), options, then run the daemon (lb.h). */
#include "lb/lb_main.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"
#include "lb/lb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: load_balancer POLICY CLIENT_ADDR CLIENT_PORT SERVER_ADDR SERVER_PORT CACHE_ADDR CACHE_PORT\n"
            "                     META_ADDR META_PORT [options]\n"
            "  The cluster's front door: clients send INFER here; each request is placed on a\n"
            "  registered server, preferring machines whose cache holds the model, and caches are\n"
            "  told what to fetch and evict. Servers register on SERVER_ADDR:SERVER_PORT, caches\n"
            "  on CACHE_ADDR:CACHE_PORT; model sizes come from the metadata storage. A port 0\n"
            "  picks a free port (printed at start).\n"
            "  POLICY               %s\n"
            "      basic            the seed's order: cached+idle, idle, cached+<2, least loaded <cap;\n"
            "                       makes room in the chosen machine's cache (LRU, never a model\n"
            "                       with requests in flight) and sends CACHE_IN\n"
            "      fastest_start    least estimated completion (queue ahead + parameter load +\n"
            "                       compute), learned online from the servers' timings\n"
            "      round_robin, least_loaded   cache-blind baselines\n"
            "  --amplifier X        basic: room made for size x X (default 2)\n"
            "  --max-outstanding N  requests forwarded to one server at once (default 4)\n"
            "  --queue-timeout S    a request waiting longer gets PPS_ETIMEOUT (default 30)\n"
            "  --max-queue N        waiting requests before PPS_EBUSY (default 100000)\n"
            "  --max-request BYTES  largest INFER payload from a client (default 256M)\n"
            "  --max-response BYTES largest answer accepted from a server (default 4G)\n"
            "  --max-conns N        client connections (default 4096)\n"
            "  --io-timeout S       drop a peer stalled S seconds inside a frame (default 30)\n"
            "  --max-backlog BYTES  drop a client with more unread answers than this (default 4G)\n"
            "  --http-port PORT     serve the KServe v2 HTTP API, /metrics and the status page on\n"
            "                       CLIENT_ADDR:PORT (0: any free port, printed; default: off)\n"
            "  --http-max-body BYTES  largest HTTP request body, 413 above (default 256M)\n"
            "  --http-timeout S     HTTP read/write timeout per connection (default 30)\n"
            "  Log level: PIPEPS_LOG=debug|info|warn|error. SIGINT/SIGTERM: refuse new requests,\n"
            "  answer queued ones PPS_ECANCELED, wait up to 5 s for those in flight, exit.\n",
            lb_policy_list());
}

static int parse_double(const char *text, double min, double max, double *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= min && v <= max))
        return PPS_EINVAL;
    *out = v;
    return 0;
}

static int copy_addr(char *dst, size_t n, const char *src)
{
    return snprintf(dst, n, "%s", src) >= (int)n ? PPS_EINVAL : 0;
}

static int parse_port0(const char *text, uint16_t *port)
{
    if (strcmp(text, "0") == 0) {
        *port = 0;
        return 0;
    }
    return net_parse_port(text, port);
}

int load_balancer_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"amplifier", 1, NULL},    {"max-outstanding", 1, NULL}, {"queue-timeout", 1, NULL},
        {"max-queue", 1, NULL},    {"max-request", 1, NULL},     {"max-response", 1, NULL},
        {"max-conns", 1, NULL},    {"io-timeout", 1, NULL},     {"http-port", 1, NULL},
        {"http-max-body", 1, NULL}, {"http-timeout", 1, NULL},   {"max-backlog", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &a, &help)) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    if (a.npositional != 9) {
        fprintf(stderr, "load_balancer: expected 9 arguments, got %d\n", a.npositional);
        usage(stderr);
        return 2;
    }
    struct lb_config cfg;
    lb_config_default(&cfg);
    int bad = 0;
    if (lb_policy_parse(a.positional[0], &cfg.policy))
        bad = fprintf(stderr, "load_balancer: unknown policy '%s' (known: %s)\n", a.positional[0], lb_policy_list());
    char *addrs[4] = {cfg.client_addr, cfg.server_addr, cfg.cache_addr, cfg.meta_addr};
    uint16_t *ports[4] = {&cfg.client_port, &cfg.server_port, &cfg.cache_port, &cfg.meta_port};
    static const char *const what[4] = {"CLIENT", "SERVER", "CACHE", "META"};
    for (int i = 0; i < 4; i++) {
        if (copy_addr(addrs[i], sizeof cfg.client_addr, a.positional[1 + 2 * i]))
            bad = fprintf(stderr, "load_balancer: %s_ADDR too long\n", what[i]);
        int rc = i == 3 ? net_parse_port(a.positional[2 + 2 * i], ports[i])
                        : parse_port0(a.positional[2 + 2 * i], ports[i]);
        if (rc)
            bad = fprintf(stderr, "load_balancer: bad %s_PORT '%s'\n", what[i], a.positional[2 + 2 * i]);
    }
    if (opts[0].value && parse_double(opts[0].value, 1.0, 100.0, &cfg.amplifier))
        bad = fprintf(stderr, "load_balancer: bad --amplifier '%s' (1..100)\n", opts[0].value);
    if (opts[1].value && args_parse_int(opts[1].value, 1, 1 << 16, &cfg.max_outstanding))
        bad = fprintf(stderr, "load_balancer: bad --max-outstanding '%s'\n", opts[1].value);
    if (opts[2].value && parse_double(opts[2].value, 0.01, 86400, &cfg.queue_timeout_s))
        bad = fprintf(stderr, "load_balancer: bad --queue-timeout '%s' (seconds)\n", opts[2].value);
    if (opts[3].value && args_parse_int(opts[3].value, 1, 1 << 24, &cfg.max_queue))
        bad = fprintf(stderr, "load_balancer: bad --max-queue '%s'\n", opts[3].value);
    if (opts[4].value && (args_parse_size(opts[4].value, &cfg.max_request) || cfg.max_request < 4096))
        bad = fprintf(stderr, "load_balancer: bad --max-request '%s' (at least 4K)\n", opts[4].value);
    if (opts[5].value && (args_parse_size(opts[5].value, &cfg.max_response) || cfg.max_response < 4096))
        bad = fprintf(stderr, "load_balancer: bad --max-response '%s' (at least 4K)\n", opts[5].value);
    if (opts[6].value && args_parse_int(opts[6].value, 1, 1 << 20, &cfg.max_conns))
        bad = fprintf(stderr, "load_balancer: bad --max-conns '%s'\n", opts[6].value);
    if (opts[7].value && parse_double(opts[7].value, 0.01, 86400, &cfg.io_timeout_s))
        bad = fprintf(stderr, "load_balancer: bad --io-timeout '%s' (seconds)\n", opts[7].value);
    if (opts[8].value) {
        cfg.http_port_set = 1;
        if (parse_port0(opts[8].value, &cfg.http_port))
            bad = fprintf(stderr, "load_balancer: bad --http-port '%s'\n", opts[8].value);
    }
    if (opts[9].value && (args_parse_size(opts[9].value, &cfg.http_max_body) || cfg.http_max_body < 4096))
        bad = fprintf(stderr, "load_balancer: bad --http-max-body '%s' (at least 4K)\n", opts[9].value);
    if (opts[10].value && parse_double(opts[10].value, 1, 86400, &cfg.http_timeout_s))
        bad = fprintf(stderr, "load_balancer: bad --http-timeout '%s' (seconds)\n", opts[10].value);
    if (opts[11].value && (args_parse_size(opts[11].value, &cfg.max_backlog) || cfg.max_backlog < (1u << 20)))
        bad = fprintf(stderr, "load_balancer: bad --max-backlog '%s' (at least 1M)\n", opts[11].value);
    if (bad)
        return 2;
    return lb_run(&cfg) ? 1 : 0;
}
