/* cache_main: `cache SERVER_ADDR SERVER_PORT META_ADDR META_PORT LB_ADDR
 * LB_PORT SHM_NAME SHM_SIZE SHM_BLOCK_SIZE [options]` (README, "Cache"):
 * parse and validate the arguments, then run the daemon. */
#include "cache/cache_main.h"
#include "cache/cache_daemon.h"
#include "common/args.h"
#include "common/err.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cache SERVER_ADDR SERVER_PORT META_ADDR META_PORT LB_ADDR LB_PORT\n"
            "             SHM_NAME SHM_SIZE SHM_BLOCK_SIZE [options]\n"
            "\n"
            "Per-machine parameter cache: a shared-memory pool /dev/shm/SHM_NAME of SHM_SIZE\n"
            "bytes in blocks of SHM_BLOCK_SIZE (a multiple of 4096; sizes take K/M/G), filled\n"
            "from the storages listed in the metadata storage, served to local servers on\n"
            "SERVER_ADDR:SERVER_PORT; registers with the load balancer at LB_ADDR:LB_PORT.\n"
            "\n"
            "options:\n"
            "  --fetch-threads N     connections (threads) per storage (default 1)\n"
            "  --depth N             requests in flight per storage connection (default 2)\n"
            "  --throttle RATE       limit the total fetch rate, bytes/s (K/M/G; default: none)\n"
            "  --retries N           resends after a broken storage connection (default 3)\n"
            "  --progress-timeout S  a storage that sends nothing for S seconds while a request\n"
            "                        is due has stalled: reconnect once, then fail the fetch\n"
            "                        (default 5; connecting has its own 10 s limit)\n"
            "  --lb-backoff-max MS   cap of the load-balancer reconnect backoff (default 5000)\n"
            "  --io-timeout S        drop a peer that stalls S seconds inside a request; idle\n"
            "                        connections are kept (default 120)\n"
            "  --max-conns N         server connections served at once; more are refused with\n"
            "                        PPS_EBUSY (default 1024)\n"
            "  --metrics-port PORT   serve Prometheus metrics on http://SERVER_ADDR:PORT/metrics\n"
            "                        (0 = any free port, printed; default: off)\n");
}

int cache_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"fetch-threads", 1, NULL}, {"depth", 1, NULL},          {"throttle", 1, NULL},
        {"retries", 1, NULL},       {"io-timeout", 1, NULL},     {"lb-backoff-max", 1, NULL},
        {"max-conns", 1, NULL},     {"progress-timeout", 1, NULL}, {"metrics-port", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &a, &help)) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    if (a.npositional != 9) {
        usage(stderr);
        return 2;
    }
    struct cache_config cfg = {.fetch_threads = 1,
                               .depth = 2,
                               .retries = 3,
                               .io_timeout_ms = INBOUND_DEFAULT_IO_TIMEOUT_S * 1000,
                               .progress_timeout_ms = CACHE_DEFAULT_PROGRESS_TIMEOUT_S * 1000,
                               .lb_backoff_max_ms = 5000,
                               .max_conns = INBOUND_DEFAULT_MAX_CONNS,
                               .metrics_port = -1};
    const char *const *p = a.positional;
    int bad = 0;
#define BAD(...) (fprintf(stderr, "cache: " __VA_ARGS__), fputc('\n', stderr), bad = 1)
    if (strlen(p[0]) >= sizeof cfg.server_addr || strlen(p[2]) >= sizeof cfg.meta_addr ||
        strlen(p[4]) >= sizeof cfg.lb_addr || strlen(p[6]) >= sizeof cfg.shm_name)
        BAD("an address or name is too long");
    snprintf(cfg.server_addr, sizeof cfg.server_addr, "%s", p[0]);
    snprintf(cfg.meta_addr, sizeof cfg.meta_addr, "%s", p[2]);
    snprintf(cfg.lb_addr, sizeof cfg.lb_addr, "%s", p[4]);
    snprintf(cfg.shm_name, sizeof cfg.shm_name, "%s", p[6]);
    if (net_parse_port(p[1], &cfg.server_port))
        BAD("bad SERVER_PORT '%s'", p[1]);
    if (net_parse_port(p[3], &cfg.meta_port))
        BAD("bad META_PORT '%s'", p[3]);
    if (net_parse_port(p[5], &cfg.lb_port))
        BAD("bad LB_PORT '%s'", p[5]);
    if (args_parse_size(p[7], &cfg.shm_size) || cfg.shm_size == 0)
        BAD("bad SHM_SIZE '%s'", p[7]);
    if (args_parse_size(p[8], &cfg.block_size) || cfg.block_size == 0 ||
        cfg.block_size % 4096 || cfg.block_size > (1ull << 30))
        BAD("bad SHM_BLOCK_SIZE '%s': must be a multiple of 4096, at most 1G", p[8]);
    if (!bad && cfg.shm_size < cfg.block_size)
        BAD("SHM_SIZE (%" PRIu64 ") is smaller than one block (%" PRIu64 ")", cfg.shm_size,
            cfg.block_size);
    if (opts[0].value && args_parse_int(opts[0].value, 1, 64, &cfg.fetch_threads))
        BAD("bad --fetch-threads '%s' (1..64)", opts[0].value);
    if (opts[1].value && args_parse_int(opts[1].value, 1, 64, &cfg.depth))
        BAD("bad --depth '%s' (1..64)", opts[1].value);
    if (opts[2].value && args_parse_size(opts[2].value, &cfg.throttle_bps))
        BAD("bad --throttle '%s'", opts[2].value);
    if (opts[3].value && args_parse_int(opts[3].value, 0, 100, &cfg.retries))
        BAD("bad --retries '%s' (0..100)", opts[3].value);
    if (opts[5].value && args_parse_int(opts[5].value, 100, 3600000, &cfg.lb_backoff_max_ms))
        BAD("bad --lb-backoff-max '%s' (100..3600000)", opts[5].value);
    struct inbound_limits lim = {.io_timeout_ms = cfg.io_timeout_ms, .max_conns = cfg.max_conns};
    char err[160];
    if (inbound_parse(&lim, opts[4].value, opts[6].value, NULL, err, sizeof err))
        BAD("%s", err);
    cfg.io_timeout_ms = lim.io_timeout_ms;
    cfg.max_conns = lim.max_conns;
    int progress_s;
    if (opts[7].value) {
        if (args_parse_int(opts[7].value, 1, 3600, &progress_s))
            BAD("bad --progress-timeout '%s' (seconds, 1..3600)", opts[7].value);
        else
            cfg.progress_timeout_ms = progress_s * 1000;
    }
    if (opts[8].value && args_parse_int(opts[8].value, 0, 65535, &cfg.metrics_port))
        BAD("bad --metrics-port '%s' (0..65535)", opts[8].value);
#undef BAD
    if (bad)
        return 2;
    if (cfg.shm_size % cfg.block_size) {
        uint64_t rounded = cfg.shm_size - cfg.shm_size % cfg.block_size;
        log_warn("SHM_SIZE %" PRIu64 " rounded down to %" PRIu64 " (whole blocks)", cfg.shm_size,
                 rounded);
        cfg.shm_size = rounded;
    }
    net_ignore_sigpipe();
    /* cache_daemon_run logs why it could not start, once */
    return cache_daemon_run(&cfg) ? 1 : 0;
}
