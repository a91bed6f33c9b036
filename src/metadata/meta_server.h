/* meta_server: the metadata storage daemon (`metadata_storage`).
 *
 * A libevent loop on one thread owns the index and every connection (Redis
 * style); a helper thread (meta_sync) writes and fsyncs the log. Requests on
 * one connection are answered in order; writes are acknowledged only after
 * the fdatasync that makes them durable, and all writes accepted in one loop
 * iteration share that fdatasync (group commit). See docs/protocol.md
 * (0x01xx) and docs/formats.md (the log). */
#ifndef PIPEPS_META_SERVER_H
#define PIPEPS_META_SERVER_H

#include <stdint.h>

#include "common/inbound.h"

#define META_DEFAULT_DIR "metadata-data"
#define META_DEFAULT_COMPACT_MIN (8u << 20)
#define META_DEFAULT_COMPACT_RATIO 2.0
#define META_DEFAULT_MAX_PARTIAL (256ull << 20)

struct meta_server_options {
    const char *addr;       /* NULL = loopback */
    uint16_t port;          /* 0 = any (the chosen port is printed) */
    const char *dir;        /* data directory */
    uint64_t compact_min;   /* never compact a log smaller than this */
    double compact_ratio;   /* compact when log > ratio x live records */
    int truncate_damaged;   /* see meta_log_open */
    struct inbound_limits lim; /* --io-timeout, --max-conns, --max-partial */
    int metrics_port;       /* --metrics-port: -1 = no /metrics endpoint, 0 = any port */
};

/* Open the log, replay it, serve until SIGTERM/SIGINT. Returns 0 after a
 * clean stop, an error code if start-up failed or the log could not be
 * written (the server stops rather than serve writes it cannot make
 * durable). */
int meta_server_run(const struct meta_server_options *opt);

/* `metadata_storage [ADDR] PORT [--dir DIR] [--compact-min SIZE] [--truncate-damaged]
 *  [--io-timeout S] [--max-conns N] [--max-partial SIZE] [--metrics-port PORT]` */
int metadata_storage_main(int argc, char **argv);

#endif
