/* storage_server: the storage daemon's network side; see storage_server.h.
 *
 * One thread per connection, blocking I/O with a timeout (--io-timeout)
 * that only applies once a request has started: an idle persistent
 * connection may stay quiet forever, a peer that stalls in the middle of a
 * frame is dropped. The one thing easy to get wrong: after refusing a
 * request, the connection is only kept if the rest of that request's
 * payload was read (the stream must stay in frame); otherwise the error is
 * sent and the connection closed gently (shutdown, drain briefly) so the
 * peer still gets to read the error instead of a reset.
 *
 * Metrics (--metrics-port): /metrics runs on its own thread
 * (metrics_http_start) and reads the counters STAT reports: the atomics
 * here, the store's under its own locks, the connection count under mu. */
#include "storage/storage_server.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"
#include "http/metrics_http.h"
#include "http/prom.h"
#include "storage/storage_client.h"
#include "storage/store.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

/* PUT values pass through one buffer of this size per connection. */
#define PUT_CHUNK (1u << 20)
/* Default socket send buffer per connection (see start_conn). */
#define DEFAULT_SNDBUF (4 << 20)
/* A GET sends from the file's mapping this much per send() call. */
#define MAP_SEND_CHUNK (4u << 20)
/* sendfile is asked for at most this much per call. */
#define SEND_CHUNK (256u << 20)
/* Limits per message type, checked before anything is allocated. */
#define MAX_PUT_PAYLOAD (4ull + STORAGE_MAX_KEY + STORAGE_MAX_VALUE)
#define MAX_KEY_PAYLOAD (4ull + STORAGE_MAX_KEY + 16)
/* A refused payload up to this size is read and dropped so that the
 * connection stays usable; a bigger one closes the connection. */
#define DISCARD_LIMIT (64ull << 20)

struct server {
    struct store *store;
    int listen_fd;
    int io_timeout_ms;
    int max_conns;
    int sockbuf;
    int use_sendfile; /* GET with sendfile(2) instead of send() from a mapping */
    time_t started;

    pthread_mutex_t mu; /* guards conns, nconns, stopping */
    pthread_cond_t cv;  /* signalled when a connection ends */
    struct conn *conns;
    int nconns;
    int stopping;

    atomic_uint_fast64_t gets, bytes_sent, bytes_received, errors, conns_total;
};

struct conn {
    struct server *srv;
    int fd;
    char peer[64];
    struct conn *prev, *next;
    uint8_t *buf; /* PUT_CHUNK bytes, allocated on the first PUT */
};

/* ---- replies ---- */

static int send_reply(struct conn *c, uint16_t type, uint64_t rid, const void *p, size_t n)
{
    struct frame_header h = {.type = type, .flags = FRAME_FLAG_RESPONSE, .request_id = rid};
    return frame_send(c->fd, &h, p, n);
}

/* Send an error response; `quiet` errors (unknown key, bad range) are
 * ordinary answers and logged at debug level only. */
static int send_error(struct conn *c, uint16_t type, uint64_t rid, int status, int quiet,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int send_error(struct conn *c, uint16_t type, uint64_t rid, int status, int quiet,
                      const char *fmt, ...)
{
    char msg[1500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (quiet)
        log_debug("%s: %s: %s", c->peer, frame_type_name(type), msg);
    else
        log_warn("%s: %s: %s (%s)", c->peer, frame_type_name(type), msg, pps_errname(status));
    atomic_fetch_add(&c->srv->errors, 1);
    return frame_send_error(c->fd, type, rid, status, msg);
}

/* The peer can no longer be trusted to be in frame: stop writing, read
 * (and drop) what it is still sending for a moment so that it can read
 * our error before the close, then close. */
static void close_gently(struct conn *c)
{
    shutdown(c->fd, SHUT_WR);
    net_set_timeout(c->fd, 500);
    char sink[65536];
    uint64_t drained = 0;
    while (drained < DISCARD_LIMIT) {
        ssize_t r = recv(c->fd, sink, sizeof sink, 0);
        if (r <= 0)
            break;
        drained += (uint64_t)r;
    }
}

/* Refuse a request whose payload still has `rest` unread bytes. Returns
 * 0 if the connection can go on, non-zero if it must close. */
static int refuse(struct conn *c, const struct frame_header *h, uint64_t rest, int status,
                  int quiet, const char *msg)
{
    if (rest <= DISCARD_LIMIT) {
        int rc = net_discard(c->fd, rest);
        if (rc)
            return rc;
        return send_error(c, h->type, h->request_id, status, quiet, "%s", msg);
    }
    send_error(c, h->type, h->request_id, status, quiet, "%s", msg);
    close_gently(c);
    return PPS_ECLOSED;
}

/* ---- request handlers: return 0 to keep the connection ---- */

/* refuse() result for read_key: 1 = refused, connection goes on. */
static int refused(int rc) { return rc ? rc : 1; }

static int read_key(struct conn *c, const struct frame_header *h, char *key, uint32_t *key_len,
                    uint64_t *rest)
{
    uint8_t lenbuf[4];
    if (h->payload_len < 4)
        return refused(refuse(c, h, h->payload_len, PPS_EPROTO, 0, "payload too short for a key"));
    int rc = net_read_full(c->fd, lenbuf, 4);
    if (rc)
        return rc;
    uint32_t n = load_le32(lenbuf);
    *rest = h->payload_len - 4;
    if (n == 0 || n > STORAGE_MAX_KEY || n > *rest) {
        char msg[128];
        snprintf(msg, sizeof msg, "bad key length %u (1..%u, and inside the payload)", n,
                 STORAGE_MAX_KEY);
        return refused(
            refuse(c, h, *rest, n > STORAGE_MAX_KEY ? PPS_ETOOBIG : PPS_EPROTO, 0, msg));
    }
    rc = net_read_full(c->fd, key, n);
    if (rc)
        return rc;
    key[n] = '\0';
    *rest -= n;
    *key_len = n;
    if (memchr(key, '\0', n))
        return refused(refuse(c, h, *rest, PPS_EPROTO, 0, "key contains a NUL byte"));
    return 0;
}

/* read_key returns 1 when it refused the request but the connection goes on. */
#define READ_KEY_OR_RETURN(c, h, key, klen, rest)                                              \
    do {                                                                                       \
        int rk_ = read_key(c, h, key, klen, rest);                                             \
        if (rk_)                                                                               \
            return rk_ == 1 ? 0 : rk_;                                                         \
    } while (0)

static int handle_put(struct conn *c, const struct frame_header *h)
{
    struct server *srv = c->srv;
    char key[STORAGE_MAX_KEY + 1];
    uint32_t key_len = 0;
    uint64_t value_len = 0;
    READ_KEY_OR_RETURN(c, h, key, &key_len, &value_len);

    struct store_put *p = NULL;
    int rc = store_put_begin(srv->store, key, key_len, value_len, &p);
    if (rc) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot store %llu bytes for '%.100s': %s",
                 (unsigned long long)value_len, key, pps_strerror(rc));
        return refuse(c, h, value_len, rc, 0, msg);
    }
    if (!c->buf && !(c->buf = malloc(PUT_CHUNK))) {
        store_put_abort(p);
        return refuse(c, h, value_len, PPS_ENOMEM, 0, "out of memory for the receive buffer");
    }
    uint64_t left = value_len;
    int write_rc = 0;
    while (left) {
        size_t n = left < PUT_CHUNK ? (size_t)left : PUT_CHUNK;
        rc = net_read_full(c->fd, c->buf, n);
        if (rc) {
            /* Logged before the abort shows in STAT, so whoever sees the
             * counter also finds the log line. */
            log_warn("%s: STORE_PUT '%s': %s after %llu of %llu value bytes; nothing stored",
                     c->peer, key, rc == PPS_ETIMEOUT ? "peer stalled" : "peer disconnected",
                     (unsigned long long)(value_len - left), (unsigned long long)value_len);
            store_put_abort(p);
            return rc;
        }
        atomic_fetch_add(&srv->bytes_received, n);
        left -= n;
        rc = store_put_write(p, c->buf, n);
        if (rc) {
            write_rc = rc;
            break;
        }
    }
    if (write_rc) {
        store_put_abort(p);
        char msg[256];
        snprintf(msg, sizeof msg, "cannot write '%.100s': %s", key, pps_strerror(write_rc));
        return refuse(c, h, left, write_rc, 0, msg);
    }
    rc = store_put_commit(p);
    if (rc)
        return send_error(c, h->type, h->request_id, rc, 0, "cannot commit '%.100s': %s", key,
                          pps_strerror(rc));
    log_debug("%s: PUT %s (%llu bytes)", c->peer, key, (unsigned long long)value_len);
    return send_reply(c, h->type, h->request_id, NULL, 0);
}

static int send_all(int fd, const void *p, size_t n, int flags)
{
    const char *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL | flags);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? PPS_ETIMEOUT
                   : (errno == EPIPE || errno == ECONNRESET) ? PPS_ECLOSED
                                                             : pps_from_errno(errno);
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int handle_get(struct conn *c, const struct frame_header *h)
{
    struct server *srv = c->srv;
    uint8_t payload[MAX_KEY_PAYLOAD];
    int rc = net_read_full(c->fd, payload, (size_t)h->payload_len);
    if (rc)
        return rc;
    struct rbuf rb;
    char key[STORAGE_MAX_KEY + 1];
    uint64_t offset = 0, length = 0;
    rbuf_init(&rb, payload, (size_t)h->payload_len);
    rbuf_str(&rb, key, STORAGE_MAX_KEY);
    rbuf_u64(&rb, &offset);
    rbuf_u64(&rb, &length);
    if (rbuf_finish(&rb) || !key[0] || strlen(key) != load_le32(payload))
        return send_error(c, h->type, h->request_id, PPS_EPROTO, 0,
                          "malformed STORE_GET payload (want str key, u64 offset, u64 length)");
    struct store_read rd;
    rc = store_read_begin(srv->store, key, (uint32_t)strlen(key), offset, length, &rd);
    if (rc == PPS_ENOTFOUND)
        return send_error(c, h->type, h->request_id, rc, 1, "no value for key '%.200s'", key);
    if (rc == PPS_ERANGE) {
        if (length == UINT64_MAX)
            return send_error(c, h->type, h->request_id, rc, 1,
                              "offset %llu is past the end of '%.200s' (%llu bytes)",
                              (unsigned long long)offset, key, (unsigned long long)rd.value_len);
        return send_error(c, h->type, h->request_id, rc, 1,
                          "range [%llu, +%llu) is outside '%.200s' (%llu bytes)",
                          (unsigned long long)offset, (unsigned long long)length, key,
                          (unsigned long long)rd.value_len);
    }
    if (rc)
        return send_error(c, h->type, h->request_id, rc, 0, "GET '%.200s': %s", key,
                          pps_strerror(rc));

    uint8_t hdr[FRAME_HEADER_SIZE];
    struct frame_header rh = {.type = h->type, .flags = FRAME_FLAG_RESPONSE,
                              .request_id = h->request_id, .payload_len = rd.len};
    frame_encode_header(hdr, &rh);
    rc = send_all(c->fd, hdr, sizeof hdr, rd.len ? MSG_MORE : 0);
    off_t pos = (off_t)rd.off;
    uint64_t left = rd.len;
    const uint8_t *p = srv->use_sendfile ? NULL : rd.data;
    while (!rc && left && p) {
        /* From the file's mapping: the kernel copies the page-cache pages
         * into the socket, no user-space buffer in between. (The mapping
         * lives as long as the file, so its page tables are built by faults
         * once; prefaulting each range with MADV_POPULATE_READ measured
         * ~20% more CPU per byte.) */
        size_t n = left < MAP_SEND_CHUNK ? (size_t)left : MAP_SEND_CHUNK;
        rc = send_all(c->fd, p, n, 0);
        if (!rc) {
            p += n;
            left -= n;
            atomic_fetch_add(&srv->bytes_sent, n);
        }
    }
    while (!rc && left) {
        size_t n = left < SEND_CHUNK ? (size_t)left : SEND_CHUNK;
        ssize_t w = sendfile(c->fd, rd.fd, &pos, n);
        if (w > 0) {
            left -= (uint64_t)w;
            atomic_fetch_add(&srv->bytes_sent, (uint64_t)w);
        } else if (w == 0) {
            log_error("%s: GET '%s': data file ended early", c->peer, key);
            rc = PPS_EIO;
        } else if (errno != EINTR) {
            rc = (errno == EAGAIN || errno == EWOULDBLOCK) ? PPS_ETIMEOUT
                 : (errno == EPIPE || errno == ECONNRESET) ? PPS_ECLOSED
                                                           : pps_from_errno(errno);
        }
    }
    store_read_end(&rd);
    if (rc) {
        log_warn("%s: STORE_GET '%s': %s after %llu of %llu bytes", c->peer, key,
                 rc == PPS_ETIMEOUT ? "peer stopped reading" : pps_strerror(rc),
                 (unsigned long long)(rd.len - left), (unsigned long long)rd.len);
        return rc;
    }
    atomic_fetch_add(&srv->gets, 1);
    return 0;
}

static int handle_delete(struct conn *c, const struct frame_header *h)
{
    char key[STORAGE_MAX_KEY + 1];
    uint32_t key_len = 0;
    uint64_t rest = 0;
    READ_KEY_OR_RETURN(c, h, key, &key_len, &rest);
    if (rest)
        return refuse(c, h, rest, PPS_EPROTO, 0, "trailing bytes after the key");
    int rc = store_delete(c->srv->store, key, key_len);
    if (rc == PPS_ENOTFOUND)
        return send_error(c, h->type, h->request_id, rc, 1, "no value for key '%.200s'", key);
    if (rc)
        return send_error(c, h->type, h->request_id, rc, 0, "cannot delete '%.200s': %s", key,
                          pps_strerror(rc));
    return send_reply(c, h->type, h->request_id, NULL, 0);
}

static void stat_line(struct wbuf *wb, const char *name, uint64_t v)
{
    char line[96];
    int n = snprintf(line, sizeof line, "%s %llu\n", name, (unsigned long long)v);
    wbuf_put(wb, line, (size_t)n);
}

static int handle_stat(struct conn *c, const struct frame_header *h)
{
    struct server *srv = c->srv;
    int rc = net_discard(c->fd, h->payload_len);
    if (rc)
        return rc;
    struct store_stats st;
    store_get_stats(srv->store, &st);
    int nconns;
    pthread_mutex_lock(&srv->mu);
    nconns = srv->nconns;
    pthread_mutex_unlock(&srv->mu);
    struct wbuf wb;
    wbuf_init(&wb);
    stat_line(&wb, "values", st.values);
    stat_line(&wb, "bytes_stored", st.bytes_stored);
    stat_line(&wb, "bytes_live", st.bytes_live);
    stat_line(&wb, "bytes_on_disk", st.bytes_on_disk);
    stat_line(&wb, "bytes_free", st.bytes_free);
    stat_line(&wb, "files", st.files);
    stat_line(&wb, "tombstones", st.tombstones);
    stat_line(&wb, "gets", atomic_load(&srv->gets));
    stat_line(&wb, "puts", st.puts);
    stat_line(&wb, "deletes", st.deletes);
    stat_line(&wb, "put_aborts", st.put_aborts);
    stat_line(&wb, "bytes_sent", atomic_load(&srv->bytes_sent));
    stat_line(&wb, "bytes_received", atomic_load(&srv->bytes_received));
    stat_line(&wb, "errors", atomic_load(&srv->errors));
    stat_line(&wb, "connections", (uint64_t)nconns);
    stat_line(&wb, "connections_total", atomic_load(&srv->conns_total));
    stat_line(&wb, "compactions", st.compactions);
    stat_line(&wb, "bytes_copied", st.bytes_copied);
    stat_line(&wb, "bytes_reclaimed", st.bytes_reclaimed);
    stat_line(&wb, "recovered_records", st.recovered_records);
    stat_line(&wb, "recovery_dropped", st.recovery_dropped);
    stat_line(&wb, "uptime_s", (uint64_t)(time(NULL) - srv->started));
    rc = send_reply(c, h->type, h->request_id, wb.data, wb.len);
    wbuf_free(&wb);
    return rc;
}

/* The /metrics text (README, "Metrics"); runs on the metrics thread. */
static void metrics_text(struct wbuf *out, void *arg)
{
    struct server *srv = arg;
    struct store_stats st;
    store_get_stats(srv->store, &st);
    pthread_mutex_lock(&srv->mu);
    int nconns = srv->nconns;
    pthread_mutex_unlock(&srv->mu);
    prom_head(out, "pipeps_storage_requests_total", PROM_COUNTER,
              "GETs served, PUTs and DELETEs committed (durable).");
    struct prom_label get = {"kind", "get"}, put = {"kind", "put"}, del = {"kind", "delete"};
    prom_u64(out, "pipeps_storage_requests_total", &get, 1, atomic_load(&srv->gets));
    prom_u64(out, "pipeps_storage_requests_total", &put, 1, st.puts);
    prom_u64(out, "pipeps_storage_requests_total", &del, 1, st.deletes);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_put_aborts_total",
                    "PUTs dropped before their commit (peer gone, error).", st.put_aborts);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_errors_total",
                    "Requests answered with an error.", atomic_load(&srv->errors));
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_sent_bytes_total",
                    "Value bytes sent by GETs.", atomic_load(&srv->bytes_sent));
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_received_bytes_total",
                    "Value bytes received by PUTs.", atomic_load(&srv->bytes_received));
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_values", "Keys with a live value.", st.values);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_stored_bytes", "Bytes of the live values.",
                    st.bytes_stored);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_live_bytes",
                    "Bytes of live records in the data files (headers and keys included).",
                    st.bytes_live);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_disk_bytes", "Size of the data files.",
                    st.bytes_on_disk);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_free_bytes",
                    "Free space of the data directory's file system.", st.bytes_free);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_files", "Data files.", st.files);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_compactions_total",
                    "Data files compacted or removed.", st.compactions);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_compaction_copied_bytes_total",
                    "Bytes copied by compaction.", st.bytes_copied);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_reclaimed_bytes_total",
                    "Bytes reclaimed by compaction and aborted PUTs.", st.bytes_reclaimed);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_storage_open_connections", "Client connections open.",
                    (uint64_t)nconns);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_storage_connections_total",
                    "Client connections accepted.", atomic_load(&srv->conns_total));
}

/* STORE_LIST: every live key under a prefix with its value size, for
 * maintenance tools (pipeps gc finds deploy generations nothing references). */
struct list_answer {
    struct wbuf wb;
    uint32_t n;
};

static int list_one(void *ctx, const char *key, uint32_t key_len, uint64_t value_len)
{
    struct list_answer *a = ctx;
    if (a->wb.len + 12 + key_len > STORAGE_LIST_MAX_ANSWER)
        return PPS_ETOOBIG;
    wbuf_u32(&a->wb, key_len);
    wbuf_put(&a->wb, key, key_len);
    wbuf_u64(&a->wb, value_len);
    a->n++;
    return 0;
}

static int handle_list(struct conn *c, const struct frame_header *h)
{
    char prefix[STORAGE_MAX_KEY + 1];
    uint8_t lenbuf[4];
    if (h->payload_len < 4)
        return refuse(c, h, h->payload_len, PPS_EPROTO, 0, "payload too short for a prefix");
    int rc = net_read_full(c->fd, lenbuf, 4);
    if (rc)
        return rc;
    uint32_t n = load_le32(lenbuf);
    if (n != h->payload_len - 4)
        return refuse(c, h, h->payload_len - 4, PPS_EPROTO, 0, "prefix length does not match the payload");
    rc = net_read_full(c->fd, prefix, n); /* n <= STORAGE_MAX_KEY: payload_limit */
    if (rc)
        return rc;
    prefix[n] = '\0';
    if (memchr(prefix, '\0', n))
        return send_error(c, h->type, h->request_id, PPS_EPROTO, 0, "prefix contains a NUL byte");
    struct list_answer a = {.n = 0};
    wbuf_init(&a.wb);
    wbuf_u32(&a.wb, 0); /* the count, set below */
    rc = store_list(c->srv->store, prefix, n, list_one, &a);
    if (rc) {
        wbuf_free(&a.wb);
        return send_error(c, h->type, h->request_id, rc, 0,
                          "the list of keys under '%.200s' is over %u bytes; use a longer prefix", prefix,
                          (unsigned)STORAGE_LIST_MAX_ANSWER);
    }
    store_le32(a.wb.data, a.n);
    rc = send_reply(c, h->type, h->request_id, a.wb.data, a.wb.len);
    wbuf_free(&a.wb);
    return rc;
}

static int handle_ping(struct conn *c, const struct frame_header *h)
{
    uint8_t *p = malloc(h->payload_len ? (size_t)h->payload_len : 1);
    if (!p)
        return refuse(c, h, h->payload_len, PPS_ENOMEM, 0, "out of memory");
    int rc = net_read_full(c->fd, p, (size_t)h->payload_len);
    if (!rc)
        rc = send_reply(c, h->type, h->request_id, p, (size_t)h->payload_len);
    free(p);
    return rc;
}

static uint64_t payload_limit(uint16_t type)
{
    switch (type) {
    case MSG_STORE_PUT: return MAX_PUT_PAYLOAD;
    case MSG_STORE_GET: return MAX_KEY_PAYLOAD;
    case MSG_STORE_DELETE: return 4 + STORAGE_MAX_KEY;
    case MSG_STORE_STAT: case MSG_STAT: return 4096;
    case MSG_STORE_LIST: return 4 + STORAGE_MAX_KEY;
    case MSG_PING: return FRAME_MAX_CONTROL;
    default: return 0;
    }
}

/* ---- connection thread ---- */

/* Serve one request; non-zero ends the connection. */
static int serve_one(struct conn *c)
{
    uint8_t raw[FRAME_HEADER_SIZE];
    size_t got = 0;
    int rc = inbound_recv_header(c->fd, raw, &got);
    if (rc) {
        if (rc == PPS_ECLOSED && got == 0)
            log_debug("%s: closed the connection", c->peer);
        else
            log_warn("%s: %s after %zu bytes of a frame header", c->peer,
                     rc == PPS_ETIMEOUT ? "stalled" : "disconnected", got);
        return rc;
    }
    struct frame_header h;
    rc = frame_decode_header(raw, &h, UINT64_MAX);
    if (rc == PPS_EPROTO) {
        send_error(c, MSG_ERROR, 0, rc, 0, "malformed frame header (bad magic, flags or reserved field)");
        close_gently(c);
        return rc;
    }
    if (rc == PPS_EUNSUPPORTED) {
        send_error(c, MSG_ERROR, h.request_id, rc, 0, "unsupported protocol version %u (want %u)",
                   raw[4], FRAME_VERSION);
        close_gently(c);
        return rc;
    }
    if (h.flags & FRAME_FLAG_RESPONSE) {
        send_error(c, MSG_ERROR, h.request_id, PPS_EPROTO, 0, "got a response, expected a request");
        close_gently(c);
        return PPS_EPROTO;
    }
    uint64_t limit = payload_limit(h.type);
    if (limit == 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "unknown message type 0x%04x", h.type);
        struct frame_header eh = h;
        eh.type = MSG_ERROR;
        return refuse(c, &eh, h.payload_len, PPS_EUNSUPPORTED, 0, msg);
    }
    if (h.payload_len > limit) {
        send_error(c, h.type, h.request_id, PPS_ETOOBIG, 0,
                   "payload of %llu bytes is over the %s limit of %llu",
                   (unsigned long long)h.payload_len, frame_type_name(h.type),
                   (unsigned long long)limit);
        close_gently(c);
        return PPS_ETOOBIG;
    }
    switch (h.type) {
    case MSG_STORE_PUT: return handle_put(c, &h);
    case MSG_STORE_GET: return handle_get(c, &h);
    case MSG_STORE_DELETE: return handle_delete(c, &h);
    case MSG_STORE_STAT: case MSG_STAT: return handle_stat(c, &h);
    case MSG_STORE_LIST: return handle_list(c, &h);
    case MSG_PING: return handle_ping(c, &h);
    }
    return PPS_EINTERNAL;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct server *srv = c->srv;
    while (serve_one(c) == 0) {
    }
    close(c->fd);
    free(c->buf);
    pthread_mutex_lock(&srv->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    free(c);
    return NULL;
}

static void start_conn(struct server *srv, int fd, const struct sockaddr_in *sa)
{
    struct conn *c = pps_xcalloc(1, sizeof *c);
    c->srv = srv;
    c->fd = fd;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(sa->sin_port));
    net_set_nodelay(fd);
    if (srv->sockbuf) {
        net_set_bufsize(fd, srv->sockbuf);
    } else {
        /* GET responses leave through the send buffer: make it large (the
         * kernel caps it at net.core.wmem_max, then doubles it). The
         * receive side stays autotuned, which on Linux grows further
         * (net.ipv4.tcp_rmem) than an explicit size may. */
        int bytes = DEFAULT_SNDBUF;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    }
    net_set_timeout(fd, srv->io_timeout_ms);
    atomic_fetch_add(&srv->conns_total, 1);

    pthread_mutex_lock(&srv->mu);
    if (srv->nconns >= srv->max_conns) {
        pthread_mutex_unlock(&srv->mu);
        log_warn("%s: refused: %d connections already (--max-conns)", c->peer, srv->max_conns);
        inbound_refuse(fd, srv->max_conns);
        free(c);
        return;
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    pthread_mutex_unlock(&srv->mu);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int err = pthread_create(&t, &attr, conn_main, c);
    pthread_attr_destroy(&attr);
    if (err) {
        log_error("%s: cannot start a thread: %s", c->peer, strerror(err));
        frame_send_error(fd, MSG_ERROR, 0, PPS_ENOMEM, "cannot start a connection thread");
        pthread_mutex_lock(&srv->mu);
        srv->conns = c->next;
        if (c->next)
            c->next->prev = NULL;
        srv->nconns--;
        pthread_mutex_unlock(&srv->mu);
        close(fd);
        free(c);
    }
}

/* Accept until SIGINT/SIGTERM, then end every connection and wait for
 * their threads. */
static void serve(struct server *srv, int sig_fd)
{
    struct pollfd pfd[2] = {{.fd = srv->listen_fd, .events = POLLIN}, {.fd = sig_fd, .events = POLLIN}};
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            log_error("poll: %s", strerror(errno));
            break;
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            if (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
                log_info("signal %u: shutting down", si.ssi_signo);
            break;
        }
        if (pfd[0].revents) {
            struct sockaddr_in sa;
            socklen_t len = sizeof sa;
            int fd = accept4(srv->listen_fd, (struct sockaddr *)&sa, &len, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
                    log_warn("accept: %s", strerror(errno));
                    usleep(10000); /* e.g. out of file descriptors: do not spin */
                }
                continue;
            }
            start_conn(srv, fd, &sa);
        }
    }
    close(srv->listen_fd);
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    for (struct conn *c = srv->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    while (srv->nconns > 0)
        pthread_cond_wait(&srv->cv, &srv->mu);
    pthread_mutex_unlock(&srv->mu);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: storage PORT [--dir DIR] [--addr ADDR] [--file-size SIZE]\n"
            "               [--compact-ratio R] [--io-timeout SECONDS] [--max-conns N]\n"
            "               [--sockbuf SIZE] [--send-path mmap|sendfile] [--metrics-port P]\n"
            "  PORT              TCP port to listen on\n"
            "  --dir DIR         data directory (default ./storage-data-PORT)\n"
            "  --addr ADDR       address to bind (default 127.0.0.1)\n"
            "  --file-size SIZE  start a new data file past this size (default 1G)\n"
            "  --compact-ratio R compact a data file whose live fraction is below R (default 0.5)\n"
            "  --io-timeout S    drop a peer that stalls S seconds inside a request; idle\n"
            "                    connections are kept (default 120)\n"
            "  --max-conns N     connections served at once; more are refused with\n"
            "                    PPS_EBUSY (default 1024)\n"
            "  --sockbuf SIZE    socket send and receive buffer per connection (default: 4M send\n"
            "                    buffer, autotuned receive buffer)\n"
            "  --send-path P     how GETs send: mmap (send from a mapping of the data file,\n"
            "                    default) or sendfile\n"
            "  --metrics-port P  serve Prometheus metrics on http://ADDR:P/metrics (0 = any\n"
            "                    free port, printed; default: off)\n");
}

int storage_main(int argc, char **argv)
{
    struct args_option opts[] = {
        {"dir", 1, NULL},       {"addr", 1, NULL},      {"file-size", 1, NULL},
        {"compact-ratio", 1, NULL}, {"io-timeout", 1, NULL}, {"max-conns", 1, NULL},
        {"sockbuf", 1, NULL},   {"send-path", 1, NULL}, {"metrics-port", 1, NULL},
    };
    enum { O_DIR, O_ADDR, O_FILE_SIZE, O_RATIO, O_TIMEOUT, O_MAXCONN, O_SOCKBUF, O_SEND_PATH,
           O_METRICS };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &a, &help) ||
        a.npositional != 1) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    uint16_t port;
    if (net_parse_port(a.positional[0], &port)) {
        fprintf(stderr, "storage: bad port '%s'\n", a.positional[0]);
        return 2;
    }
    struct store_options so = {.background_compaction = 1};
    char dir[4096];
    if (opts[O_DIR].value)
        snprintf(dir, sizeof dir, "%s", opts[O_DIR].value);
    else
        snprintf(dir, sizeof dir, "./storage-data-%u", port);
    so.dir = dir;
    struct inbound_limits lim;
    char err[160];
    inbound_limits_default(&lim);
    if (inbound_parse(&lim, opts[O_TIMEOUT].value, opts[O_MAXCONN].value, NULL, err,
                      sizeof err)) {
        fprintf(stderr, "storage: %s\n", err);
        return 2;
    }
    uint64_t sockbuf = 0;
    if ((opts[O_FILE_SIZE].value && (args_parse_size(opts[O_FILE_SIZE].value, &so.file_size) ||
                                     so.file_size < 4096)) ||
        (opts[O_SOCKBUF].value &&
         (args_parse_size(opts[O_SOCKBUF].value, &sockbuf) || sockbuf > (1u << 30)))) {
        fprintf(stderr, "storage: bad option value\n");
        usage(stderr);
        return 2;
    }
    int use_sendfile = 0;
    if (opts[O_SEND_PATH].value) {
        if (strcmp(opts[O_SEND_PATH].value, "sendfile") == 0) {
            use_sendfile = 1;
        } else if (strcmp(opts[O_SEND_PATH].value, "mmap") != 0) {
            fprintf(stderr, "storage: --send-path wants mmap or sendfile\n");
            return 2;
        }
    }
    int metrics_port = -1;
    if (opts[O_METRICS].value && args_parse_int(opts[O_METRICS].value, 0, 65535, &metrics_port)) {
        fprintf(stderr, "storage: bad --metrics-port '%s'\n", opts[O_METRICS].value);
        return 2;
    }
    if (opts[O_RATIO].value) {
        char *end;
        so.compact_ratio = strtod(opts[O_RATIO].value, &end);
        if (*end || !(so.compact_ratio > 0 && so.compact_ratio <= 1)) {
            fprintf(stderr, "storage: --compact-ratio wants a number in (0, 1]\n");
            return 2;
        }
    }

    net_ignore_sigpipe();
    /* Block the stop signals in every thread; the main thread takes them
     * from a signalfd. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    int sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sig_fd < 0) {
        log_error("signalfd: %s", strerror(errno));
        return 1;
    }

    /* Bind first: a port in use must not leave a new data directory behind. */
    const char *addr = opts[O_ADDR].value ? opts[O_ADDR].value : NET_DEFAULT_ADDR;
    int listen_fd;
    int rc = net_listen_msg(addr, port, &listen_fd, err, sizeof err);
    if (rc) {
        log_error("%s", err);
        close(sig_fd);
        return 1;
    }
    int metrics_fd = -1;
    uint16_t mport = 0;
    if (metrics_port >= 0 && metrics_http_listen(addr, (uint16_t)metrics_port, &metrics_fd, &mport,
                                                 err, sizeof err) != 0) {
        log_error("%s", err);
        close(listen_fd);
        close(sig_fd);
        return 1;
    }
    printf("storage: data directory %s\n", dir);
    fflush(stdout);
    log_info("data directory %s", dir);
    struct store *store;
    rc = store_open(&so, &store);
    if (rc) {
        log_error("cannot open the store in %s: %s", dir, pps_strerror(rc));
        close(listen_fd);
        if (metrics_fd >= 0)
            close(metrics_fd);
        close(sig_fd);
        return 1;
    }
    struct store_stats st;
    store_get_stats(store, &st);
    log_info("recovered %llu values (%llu bytes) from %llu data files",
             (unsigned long long)st.values, (unsigned long long)st.bytes_stored,
             (unsigned long long)st.files);

    struct server srv = {.store = store, .listen_fd = listen_fd,
                         .io_timeout_ms = lim.io_timeout_ms,
                         .max_conns = lim.max_conns, .sockbuf = (int)sockbuf,
                         .use_sendfile = use_sendfile,
                         .started = time(NULL)};
    pthread_mutex_init(&srv.mu, NULL);
    pthread_cond_init(&srv.cv, NULL);
    struct metrics_http *metrics = NULL;
    if (metrics_fd >= 0) {
        if ((rc = metrics_http_start(&metrics, metrics_fd, metrics_text, &srv)) != 0) {
            log_error("cannot serve metrics: %s", pps_strerror(rc));
            close(listen_fd);
            store_close(store);
            close(sig_fd);
            pthread_mutex_destroy(&srv.mu);
            pthread_cond_destroy(&srv.cv);
            return 1;
        }
        printf("storage: metrics on http://%s:%u/metrics\n", addr, mport);
        fflush(stdout);
        log_info("metrics on http://%s:%u/metrics", addr, mport);
    }
    log_info("listening on %s:%u (GETs sent with %s)", addr, port,
             use_sendfile ? "sendfile" : "send from a mapping");
    serve(&srv, sig_fd);
    metrics_http_stop(metrics); /* before the store it reads goes */
    store_close(store);
    close(sig_fd);
    pthread_mutex_destroy(&srv.mu);
    pthread_cond_destroy(&srv.cv);
    log_info("stopped");
    return 0;
}
