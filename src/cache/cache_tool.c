/* cache_tool: see cache_tool.h. */
#include "cache/cache_tool.h"
#include "cache/cache_client.h"
#include "cache/cache_proto.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct get_state {
    const char *dump_dir;
    const char *model;
    double t0;
    int rc;
    int reported;   /* the failure is already printed (an ERROR event, a dump error) */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int write_file(const char *dir, const char *name, const uint8_t *data, uint64_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cache-get: cannot write %s: %s\n", path, strerror(errno));
        return PPS_EIO;
    }
    size_t w = len ? fwrite(data, 1, (size_t)len, f) : 0;
    int bad = fclose(f) != 0 || w != len;
    if (bad)
        fprintf(stderr, "cache-get: writing %s failed\n", path);
    return bad ? PPS_EIO : 0;
}

static int on_event(const struct cache_event *ev, void *arg)
{
    struct get_state *st = arg;
    double t = now_ms() - st->t0;
    char name[32];
    switch (ev->kind) {
    case CACHE_EV_META:
        printf("meta %.3f ms model %s generation %" PRIu64 " nbatches %u total_size %" PRIu64
               " offset %" PRIu64 " len %" PRIu64 "\n",
               t, ev->model, ev->generation, ev->nbatches, ev->total_size, ev->offset, ev->len);
        if (st->dump_dir)
            st->rc = write_file(st->dump_dir, "metadata", ev->data, ev->len);
        break;
    case CACHE_EV_BATCH:
        printf("batch %.3f ms index %u offset %" PRIu64 " len %" PRIu64 "\n", t, ev->index,
               ev->offset, ev->len);
        if (st->dump_dir) {
            snprintf(name, sizeof name, "batch-%u", ev->index);
            st->rc = write_file(st->dump_dir, name, ev->data, ev->len);
        }
        break;
    case CACHE_EV_DONE:
        printf("done %.3f ms nbatches %u hit %d\n", t, ev->nbatches, ev->hit);
        break;
    case CACHE_EV_ERROR:
        printf("error %.3f ms status %s message %s\n", t, pps_errname(ev->status), ev->message);
        if (ev->message[0]) /* the cache's message names the model */
            fprintf(stderr, "cache-get: %s (%s)\n", ev->message, pps_errname(ev->status));
        else
            fprintf(stderr, "cache-get: %s: %s\n", st->model, pps_strerror(ev->status));
        st->reported = 1;
        break;
    }
    fflush(stdout);
    if (st->rc)
        st->reported = 1;
    return st->rc;
}

int cache_get_main(int argc, char **argv)
{
    struct args_option opts[] = {{"dump", 1, NULL}, {"hold", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) || a.npositional != 2) {
        fprintf(help ? stdout : stderr,
                "usage: pipeps cache-get ADDR:PORT MODEL [--dump DIR] [--hold MS]\n"
                "  subscribe to MODEL at a cache, print its events (times since the request),\n"
                "  --dump: write DIR/metadata and DIR/batch-<i> from the shared pool,\n"
                "  --hold: keep the model pinned MS milliseconds before unpinning\n");
        return help ? 0 : 2;
    }
    char host[256];
    uint16_t port;
    int hold_ms = 0;
    if (net_parse_hostport(a.positional[0], host, sizeof host, &port)) {
        fprintf(stderr, "cache-get: bad address '%s'\n", a.positional[0]);
        return 2;
    }
    if (opts[1].value && args_parse_int(opts[1].value, 0, 86400000, &hold_ms)) {
        fprintf(stderr, "cache-get: bad --hold '%s'\n", opts[1].value);
        return 2;
    }
    struct get_state st = {.dump_dir = opts[0].value, .model = a.positional[1]};
    if (!cache_proto_valid_model_name(a.positional[1])) {
        /* the client library refuses to send it: say why, as the cache would */
        fprintf(stderr, "cache-get: bad model name '%s' (1..255 printable ASCII bytes, no spaces): %s\n",
                a.positional[1], pps_strerror(PPS_EINVAL));
        return 1;
    }
    if (st.dump_dir && mkdir(st.dump_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cache-get: cannot create %s: %s\n", st.dump_dir, strerror(errno));
        return 1;
    }
    struct cache_client *cc;
    double t_conn = now_ms();
    int rc = cache_client_connect(&cc, host, port);
    if (rc) {
        fprintf(stderr, "cache-get: cannot connect to the cache at %s:%u: %s\n", host, port,
                pps_strerror(rc));
        return 1;
    }
    uint64_t pool_size;
    cache_client_pool(cc, &pool_size);
    printf("pool %s size %" PRIu64 " block_size %" PRIu64 " connect_ms %.3f\n",
           cache_client_shm_name(cc), pool_size, cache_client_block_size(cc), now_ms() - t_conn);
    st.t0 = now_ms();
    uint64_t sub = 0;
    rc = cache_client_fetch(cc, a.positional[1], on_event, &st, &sub);
    if (rc && !st.reported)
        fprintf(stderr, "cache-get: %s: %s\n", a.positional[1], pps_strerror(rc));
    if (rc == 0) {
        if (hold_ms > 0)
            usleep((useconds_t)hold_ms * 1000);
        rc = cache_client_unpin(cc, sub);
        if (rc)
            fprintf(stderr, "cache-get: unpin: %s\n", pps_strerror(rc));
    }
    cache_client_close(cc);
    return rc ? 1 : 0;
}
