/* meta_server: the metadata storage daemon; see meta_server.h.
 *
 * Flow of a write: the loop thread decodes a META_PUT/META_DELETE, applies it
 * to the index at once, appends its log record to `pending` and gives it the
 * next sequence number. The first write of a loop iteration activates the
 * flush event, which libevent queues behind the socket events already ready
 * in that iteration, so it runs once they are all served and hands every
 * pending record to the sync thread as one job (one write + one fdatasync).
 * (Not a lower priority: libevent skips lower priorities while higher ones
 * have work, so busy readers would starve the flush.) When the job comes
 * back, durable_seq advances and the held answers are sent.
 *
 * Answers are never sent before the state they reveal is durable: every
 * answer carries the sequence number it depends on (a PUT/DELETE its own, a
 * GET the write that set the value, a miss the latest delete, a LIST the
 * latest write) and waits in the connection's `held` queue until durable_seq
 * reaches it. Answers on one connection leave in request order, so
 * pipelined requests behind a write wait for it too (and see it: the index
 * was already updated). The one thing easy to get wrong: a reader on another
 * connection must not see a write that a crash could still undo; that is
 * what holding GET answers by the entry's sequence number prevents.
 *
 * Bad input: a header that cannot be trusted (bad magic, flags, version) or
 * a length over the type's limit is answered with an error, logged with the
 * peer's address, and that connection is closed once the answer is out. A
 * well-framed request with a bad payload gets an error answer and the
 * connection stays usable (the byte stream is still in step). Peer limits
 * (common/inbound.h): the read timeout is armed only while a frame is
 * partly here; a META_PUT value over PUT_STREAM_MIN goes into its own
 * buffer as it arrives, charged to --max-partial, so stalled half-sent
 * values neither pile up nor stay in the heap once dropped.
 *
 * Metrics (--metrics-port): the /metrics endpoint runs on this loop
 * (metrics_http_attach), so it reads the counters without a lock, from the
 * same fields STAT reports. */
#include "metadata/meta_server.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/inbound.h"
#include "common/log.h"
#include "common/net.h"
#include "http/metrics_http.h"
#include "http/prom.h"
#include "metadata/meta_client.h"
#include "metadata/meta_index.h"
#include "metadata/meta_log.h"
#include "metadata/meta_sync.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Pause reading a connection whose unsent answers pass HIGH; resume below LOW. */
#define CONN_OUT_HIGH (8u << 20)
#define CONN_OUT_LOW (1u << 20)
#define CONN_MAX_SINGLE_READ (256 * 1024)
/* Payload limits per request type, checked on the header before buffering. */
#define LIMIT_KEY_MSG (4u + META_MAX_KEY)
#define LIMIT_PUT ((uint64_t)4 + META_MAX_KEY + META_MAX_VALUE)
#define LIMIT_PING (64u << 10)
#define LIMIT_STAT 4096u
/* A META_PUT with a payload over this is received into its own buffer,
 * charged to the --max-partial budget, instead of the input buffer. */
#define PUT_STREAM_MIN (64u << 10)

struct held {
    struct held *next;
    uint64_t seq; /* send once durable_seq >= seq */
    struct evbuffer *buf;
};

struct conn {
    struct meta_server *srv;
    struct bufferevent *bev;
    char peer[64];
    struct held *held_head, *held_tail;
    size_t held_bytes;
    uint64_t discard;  /* payload bytes of a refused request still to skip */
    int closing;       /* no more requests; close once answers are out */
    int paused;        /* reading stopped for output backpressure */
    int timer_armed;   /* read timeout on: a frame is partly received */
    /* A large META_PUT being received (value != NULL): its header and key,
     * and value_got of value_len bytes so far (charged to srv->budget). */
    struct frame_header put_h;
    uint8_t put_key[META_MAX_KEY];
    uint32_t put_key_len;
    uint8_t *value;
    uint64_t value_len, value_got;
    int waiting;       /* on srv->waiting (has held answers) */
    struct conn *prev, *next;   /* srv->conns */
    struct conn *wprev, *wnext; /* srv->waiting */
};

struct meta_server {
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *flush_ev, *sync_ev, *sigterm_ev, *sigint_ev, *accept_retry_ev;
    struct meta_index index;
    struct meta_log log;
    struct meta_sync *sync;
    struct meta_sync_job job; /* the one job slot */
    int job_inflight;
    struct wbuf pending;      /* encoded records not yet handed to the sync thread */
    uint32_t pending_records;
    uint64_t last_seq;        /* last write accepted */
    uint64_t durable_seq;     /* last write fsync'd */
    uint64_t last_delete_seq; /* a miss depends on this */
    uint64_t log_bytes;       /* log file size + pending */
    uint64_t live_bytes;      /* record bytes of the live entries */
    uint64_t compact_min;
    double compact_ratio;
    uint64_t compact_floor;   /* after a failed compaction: wait for this size */
    int flush_scheduled;
    int stopping;
    struct inbound_limits lim;
    struct inbound_budget budget; /* bytes of PUT values being received */
    int failed;
    struct conn *conns, *waiting;
    struct metrics_http *metrics; /* --metrics-port; NULL when off */
    /* statistics */
    uint64_t n_get, n_put, n_delete, n_list, n_ping, n_stat, n_miss;
    uint64_t n_bad_frames, n_bad_requests, n_conn_total, n_conn_now, n_conn_refused;
    uint64_t n_stalled, n_busy;
    uint64_t n_fsync, fsync_ns_total, fsync_ns_max, batch_records_max, batch_records_total;
    uint64_t n_compactions, n_compaction_failures;
};

static void conn_free(struct conn *c);
static void conn_process(struct conn *c);
static void conn_after_output(struct conn *c);

/* ---- answers ---- */

static void waiting_add(struct meta_server *srv, struct conn *c)
{
    if (c->waiting)
        return;
    c->waiting = 1;
    c->wprev = NULL;
    c->wnext = srv->waiting;
    if (srv->waiting)
        srv->waiting->wprev = c;
    srv->waiting = c;
}

static void waiting_remove(struct meta_server *srv, struct conn *c)
{
    if (!c->waiting)
        return;
    c->waiting = 0;
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        srv->waiting = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
}

static size_t conn_pressure(struct conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev)) + c->held_bytes;
}

/* Queue an answer that may be sent once write `seq` is durable. */
static void conn_answer(struct conn *c, uint16_t type, uint64_t request_id, int status,
                        const void *p1, size_t n1, const void *p2, size_t n2, uint64_t seq)
{
    struct meta_server *srv = c->srv;
    struct frame_header h = {.type = type,
                             .flags = FRAME_FLAG_RESPONSE,
                             .status = status,
                             .request_id = request_id,
                             .payload_len = (uint64_t)n1 + n2};
    uint8_t hdr[FRAME_HEADER_SIZE];
    frame_encode_header(hdr, &h);
    struct evbuffer *out;
    if (!c->held_head && seq <= srv->durable_seq) {
        out = bufferevent_get_output(c->bev);
    } else {
        struct held *t = c->held_tail;
        if (!t || t->seq < seq) {
            t = pps_xcalloc(1, sizeof *t);
            t->seq = seq;
            t->buf = evbuffer_new();
            PPS_ASSERT(t->buf);
            if (c->held_tail)
                c->held_tail->next = t;
            else
                c->held_head = t;
            c->held_tail = t;
        }
        out = t->buf;
        c->held_bytes += sizeof hdr + n1 + n2;
        waiting_add(srv, c);
    }
    if (evbuffer_add(out, hdr, sizeof hdr) || (n1 && evbuffer_add(out, p1, n1)) ||
        (n2 && evbuffer_add(out, p2, n2)))
        PPS_ASSERT(!"evbuffer_add failed (out of memory)");
}

static void printable_key(char *dst, size_t dstlen, const uint8_t *key, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 5 < dstlen; i++) {
        uint8_t ch = key[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            dst[j++] = (char)ch;
        else
            j += (size_t)snprintf(dst + j, dstlen - j, "\\x%02x", ch);
    }
    dst[j < dstlen ? j : dstlen - 1] = '\0';
}

/* Answer a failed request with a message, and log it with the peer. */
static void conn_fail(struct conn *c, uint16_t type, uint64_t request_id, int status,
                      enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void conn_fail(struct conn *c, uint16_t type, uint64_t request_id, int status,
                      enum log_level level, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_write(level, "peer %s: %s request %llu: %s (%s)", c->peer, frame_type_name(type),
              (unsigned long long)request_id, msg, pps_errname(status));
    conn_answer(c, type, request_id, status, msg, strlen(msg), NULL, 0, 0);
}

/* Stop reading; close once everything queued has been sent. */
static void conn_close_after_answers(struct conn *c)
{
    c->closing = 1;
    bufferevent_disable(c->bev, EV_READ);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    /* A peer that never reads its answers must not pin the connection. */
    struct timeval tv = {10, 0};
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    conn_after_output(c);
}

/* Called whenever output drained or held answers were released. */
static void conn_after_output(struct conn *c)
{
    if (c->closing) {
        if (!c->held_head && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_free(c);
        return;
    }
    if (c->paused && conn_pressure(c) <= CONN_OUT_LOW) {
        c->paused = 0;
        bufferevent_enable(c->bev, EV_READ);
        conn_process(c);
    }
}

static void release_held(struct meta_server *srv)
{
    struct conn *c = srv->waiting;
    while (c) {
        struct conn *next = c->wnext;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        while (c->held_head && c->held_head->seq <= srv->durable_seq) {
            struct held *h = c->held_head;
            c->held_bytes -= evbuffer_get_length(h->buf);
            evbuffer_add_buffer(out, h->buf);
            evbuffer_free(h->buf);
            c->held_head = h->next;
            free(h);
        }
        if (!c->held_head) {
            c->held_tail = NULL;
            waiting_remove(srv, c);
        }
        conn_after_output(c); /* may free c */
        c = next;
    }
}

/* ---- group commit ---- */

static int compaction_due(const struct meta_server *srv)
{
    uint64_t live = META_LOG_HEADER_SIZE + srv->live_bytes;
    return srv->log_bytes > srv->compact_min && srv->log_bytes > srv->compact_floor &&
           (double)srv->log_bytes > srv->compact_ratio * (double)live;
}

static int snapshot_entry(void *ctx, const struct meta_entry *e)
{
    meta_record_encode(ctx, META_REC_PUT, e->key, e->key_len, e->value, e->value_len);
    return 0;
}

/* Hand the pending records to the sync thread if it is idle. */
static void submit_pending(struct meta_server *srv)
{
    if (srv->job_inflight || srv->failed || srv->pending.len == 0)
        return;
    struct meta_sync_job *job = &srv->job;
    wbuf_reset(&job->records);
    wbuf_reset(&job->snapshot);
    struct wbuf t = job->records; /* swap: reuse the last job's buffer for pending */
    job->records = srv->pending;
    srv->pending = t;
    job->nrecords = srv->pending_records;
    srv->pending_records = 0;
    job->seq_end = srv->last_seq;
    job->kind = META_SYNC_APPEND;
    if (compaction_due(srv)) {
        /* The snapshot is the index, which already holds the pending writes. */
        job->kind = META_SYNC_REWRITE;
        meta_index_foreach(&srv->index, snapshot_entry, &job->snapshot);
        log_info("compacting the metadata log: %llu bytes, %llu live (%zu keys)",
                 (unsigned long long)srv->log_bytes, (unsigned long long)job->snapshot.len,
                 srv->index.count);
    }
    srv->job_inflight = 1;
    meta_sync_submit(srv->sync, job);
}

static void schedule_flush(struct meta_server *srv)
{
    if (!srv->flush_scheduled) {
        srv->flush_scheduled = 1;
        event_active(srv->flush_ev, 0, 0);
    }
}

/* Runs after the connection callbacks that were ready with it. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct meta_server *srv = arg;
    srv->flush_scheduled = 0;
    submit_pending(srv);
}

static void job_done(struct meta_server *srv, struct meta_sync_job *job)
{
    srv->job_inflight = 0;
    if (job->rc) {
        log_error("metadata log %s: write/fsync failed: %s; stopping without acknowledging "
                  "%llu write(s) (restart replays the log)",
                  srv->log.path, pps_strerror(job->rc),
                  (unsigned long long)(srv->last_seq - srv->durable_seq));
        srv->failed = job->rc;
        event_base_loopbreak(srv->base);
        return;
    }
    srv->durable_seq = job->seq_end;
    srv->n_fsync++;
    srv->fsync_ns_total += job->sync_ns;
    if (job->sync_ns > srv->fsync_ns_max)
        srv->fsync_ns_max = job->sync_ns;
    srv->batch_records_total += job->nrecords;
    if (job->nrecords > srv->batch_records_max)
        srv->batch_records_max = job->nrecords;
    if (job->kind == META_SYNC_REWRITE) {
        wbuf_free(&job->snapshot); /* as large as the live data: do not keep it */
        if (job->compacted) {
            srv->n_compactions++;
            log_info("compaction done: log is %llu bytes (%.1f ms)",
                     (unsigned long long)job->file_size, (double)job->sync_ns / 1e6);
        } else {
            srv->n_compaction_failures++;
            srv->compact_floor = 2 * (job->file_size + srv->pending.len);
        }
    }
    srv->log_bytes = job->file_size + srv->pending.len;
}

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct meta_server *srv = arg;
    struct meta_sync_job *job = meta_sync_collect(srv->sync);
    if (!job)
        return;
    job_done(srv, job);
    if (srv->failed)
        return;
    release_held(srv);
    submit_pending(srv); /* writes that arrived during the fsync */
    if (srv->stopping && !srv->job_inflight)
        event_base_loopbreak(srv->base);
}

/* ---- requests ---- */

/* Parse "str key" occupying the whole payload. */
static int parse_key(struct conn *c, const struct frame_header *h, const uint8_t *p, size_t n,
                     const uint8_t **key, uint32_t *key_len, int allow_empty)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    int rc = rbuf_bytes(&rb, key, key_len, META_MAX_KEY);
    if (rc == PPS_ETOOBIG) {
        uint32_t claimed = n >= 4 ? load_le32(p) : 0;
        conn_fail(c, h->type, h->request_id, PPS_ETOOBIG, LOG_WARN,
                  "key of %u bytes is over the limit of %d", claimed, META_MAX_KEY);
        return rc;
    }
    if (rc) {
        conn_fail(c, h->type, h->request_id, PPS_EPROTO, LOG_WARN,
                  "malformed payload: key length %u beyond the %zu-byte payload",
                  n >= 4 ? load_le32(p) : 0, n);
        return PPS_EPROTO;
    }
    if (rbuf_left(&rb)) {
        conn_fail(c, h->type, h->request_id, PPS_EPROTO, LOG_WARN,
                  "malformed payload: %zu bytes after the key", rbuf_left(&rb));
        return PPS_EPROTO;
    }
    if ((!allow_empty && *key_len == 0) || memchr(*key, '\0', *key_len)) {
        conn_fail(c, h->type, h->request_id, PPS_EINVAL, LOG_WARN,
                  *key_len ? "key contains a NUL byte" : "empty key");
        return PPS_EINVAL;
    }
    return 0;
}

static void do_get(struct conn *c, const struct frame_header *h, const uint8_t *p, size_t n)
{
    struct meta_server *srv = c->srv;
    const uint8_t *key;
    uint32_t key_len;
    if (parse_key(c, h, p, n, &key, &key_len, 0))
        return;
    srv->n_get++;
    const struct meta_entry *e = meta_index_get(&srv->index, key, key_len);
    if (!e) {
        char pk[160];
        char msg[256];
        srv->n_miss++;
        printable_key(pk, sizeof pk, key, key_len);
        int m = snprintf(msg, sizeof msg, "no key '%s'", pk);
        conn_answer(c, h->type, h->request_id, PPS_ENOTFOUND, msg, (size_t)m, NULL, 0,
                    srv->last_delete_seq);
        return;
    }
    conn_answer(c, h->type, h->request_id, 0, e->value, e->value_len, NULL, 0, e->seq);
}

static void add_record(struct meta_server *srv, uint8_t type, const void *key, uint32_t key_len,
                       const void *value, uint32_t value_len)
{
    meta_record_encode(&srv->pending, type, key, key_len, value, value_len);
    srv->pending_records++;
    srv->log_bytes += meta_record_size(key_len, value_len);
    schedule_flush(srv);
}

/* Check a META_PUT's key and lengths. kbuf holds the payload's first
 * min(payload_len, 4 + META_MAX_KEY) bytes. 0, or an error already answered. */
static int put_check(struct conn *c, const struct frame_header *h, const uint8_t *kbuf,
                     uint32_t *key_len_out, uint64_t *value_len_out)
{
    uint64_t plen = h->payload_len;
    if (plen < 4) {
        conn_fail(c, h->type, h->request_id, PPS_EPROTO, LOG_WARN,
                  "malformed payload: %llu bytes, too short for a key length",
                  (unsigned long long)plen);
        return PPS_EPROTO;
    }
    uint32_t key_len = load_le32(kbuf);
    if (key_len > META_MAX_KEY) {
        conn_fail(c, h->type, h->request_id, PPS_ETOOBIG, LOG_WARN,
                  "key of %u bytes is over the limit of %d", key_len, META_MAX_KEY);
        return PPS_ETOOBIG;
    }
    if (4 + (uint64_t)key_len > plen) {
        conn_fail(c, h->type, h->request_id, PPS_EPROTO, LOG_WARN,
                  "malformed payload: key length %u beyond the %llu-byte payload", key_len,
                  (unsigned long long)plen);
        return PPS_EPROTO;
    }
    const uint8_t *key = kbuf + 4;
    if (key_len == 0 || memchr(key, '\0', key_len)) {
        conn_fail(c, h->type, h->request_id, PPS_EINVAL, LOG_WARN,
                  key_len ? "key contains a NUL byte" : "empty key");
        return PPS_EINVAL;
    }
    uint64_t value_len = plen - 4 - key_len;
    if (value_len > META_MAX_VALUE) {
        conn_fail(c, h->type, h->request_id, PPS_ETOOBIG, LOG_WARN,
                  "value of %llu bytes is over the limit of %u", (unsigned long long)value_len,
                  META_MAX_VALUE);
        return PPS_ETOOBIG;
    }
    *key_len_out = key_len;
    *value_len_out = value_len;
    return 0;
}

/* Apply a checked META_PUT; takes over value (malloc'd). */
static void put_commit(struct conn *c, const struct frame_header *h, const uint8_t *key,
                       uint32_t key_len, uint8_t *value, uint64_t value_len)
{
    struct meta_server *srv = c->srv;
    uint64_t seq = ++srv->last_seq;
    int64_t old_len;
    meta_index_put(&srv->index, key, key_len, value, (uint32_t)value_len, seq, &old_len);
    srv->live_bytes += meta_record_size(key_len, (uint32_t)value_len);
    if (old_len >= 0)
        srv->live_bytes -= meta_record_size(key_len, (uint32_t)old_len);
    add_record(srv, META_REC_PUT, key, key_len, value, (uint32_t)value_len);
    srv->n_put++;
    conn_answer(c, h->type, h->request_id, 0, NULL, 0, NULL, 0, seq);
}

/* META_PUT whose whole frame is in the input buffer: the value is taken
 * from it straight into its own allocation. */
static void do_put(struct conn *c, const struct frame_header *h, struct evbuffer *in)
{
    uint64_t plen = h->payload_len;
    uint8_t kbuf[4 + META_MAX_KEY];
    size_t head = plen < sizeof kbuf ? (size_t)plen : sizeof kbuf;
    if (evbuffer_copyout(in, kbuf, head) != (ev_ssize_t)head)
        PPS_ASSERT(!"input shorter than its complete frame");
    uint32_t key_len;
    uint64_t value_len;
    if (put_check(c, h, kbuf, &key_len, &value_len))
        return;
    uint8_t *value = malloc(value_len ? (size_t)value_len : 1);
    if (!value) {
        conn_fail(c, h->type, h->request_id, PPS_ENOMEM, LOG_ERROR,
                  "cannot allocate %llu bytes for the value", (unsigned long long)value_len);
        return;
    }
    evbuffer_drain(in, 4 + key_len);
    if (value_len && evbuffer_remove(in, value, (size_t)value_len) != (ev_ssize_t)value_len)
        PPS_ASSERT(!"input shorter than its complete frame");
    put_commit(c, h, kbuf + 4, key_len, value, value_len);
}

/* A large META_PUT: with its header and key in `in` (its first
 * 32 + 4 + META_MAX_KEY bytes), check it, charge its value to the budget
 * and start receiving the value into its own buffer. Returns 0 when
 * receiving, or an error already answered (the caller skips the payload). */
static int put_stream_begin(struct conn *c, const struct frame_header *h, struct evbuffer *in)
{
    struct meta_server *srv = c->srv;
    uint8_t raw[FRAME_HEADER_SIZE + 4 + META_MAX_KEY];
    if (evbuffer_copyout(in, raw, sizeof raw) != (ev_ssize_t)sizeof raw)
        PPS_ASSERT(!"caller waits for the key");
    const uint8_t *kbuf = raw + FRAME_HEADER_SIZE;
    uint32_t key_len;
    uint64_t value_len;
    int rc = put_check(c, h, kbuf, &key_len, &value_len);
    if (rc)
        return rc;
    if (inbound_budget_take(&srv->budget, value_len)) {
        srv->n_busy++;
        conn_fail(c, h->type, h->request_id, PPS_EBUSY, LOG_WARN,
                  "%llu bytes of values are being received already (--max-partial %llu); "
                  "try again later",
                  (unsigned long long)inbound_budget_used(&srv->budget),
                  (unsigned long long)srv->budget.limit);
        return PPS_EBUSY;
    }
    c->value = malloc(value_len ? (size_t)value_len : 1);
    if (!c->value) {
        inbound_budget_give(&srv->budget, value_len);
        conn_fail(c, h->type, h->request_id, PPS_ENOMEM, LOG_ERROR,
                  "cannot allocate %llu bytes for the value", (unsigned long long)value_len);
        return PPS_ENOMEM;
    }
    c->put_h = *h;
    memcpy(c->put_key, kbuf + 4, key_len);
    c->put_key_len = key_len;
    c->value_len = value_len;
    c->value_got = 0;
    evbuffer_drain(in, FRAME_HEADER_SIZE + 4 + key_len);
    return 0;
}

/* Move what arrived of the value being received; apply the PUT once it is
 * complete. Returns 1 while more is due. */
static int put_stream_feed(struct conn *c, struct evbuffer *in)
{
    size_t have = evbuffer_get_length(in);
    uint64_t want = c->value_len - c->value_got;
    size_t n = have < want ? have : (size_t)want;
    if (n && evbuffer_remove(in, c->value + c->value_got, n) != (ev_ssize_t)n)
        PPS_ASSERT(!"evbuffer_remove short");
    c->value_got += n;
    if (c->value_got < c->value_len)
        return 1;
    uint8_t *value = c->value;
    c->value = NULL;
    inbound_budget_give(&c->srv->budget, c->value_len);
    put_commit(c, &c->put_h, c->put_key, c->put_key_len, value, c->value_len);
    return 0;
}

/* Drop a value still being received (the connection ends). */
static void put_stream_drop(struct conn *c)
{
    if (!c->value)
        return;
    free(c->value);
    c->value = NULL;
    inbound_budget_give(&c->srv->budget, c->value_len);
    inbound_trim();
}

static void do_delete(struct conn *c, const struct frame_header *h, const uint8_t *p, size_t n)
{
    struct meta_server *srv = c->srv;
    const uint8_t *key;
    uint32_t key_len, old_len;
    if (parse_key(c, h, p, n, &key, &key_len, 0))
        return;
    srv->n_delete++;
    if (meta_index_delete(&srv->index, key, key_len, &old_len) != 0) {
        char pk[160];
        char msg[256];
        srv->n_miss++;
        printable_key(pk, sizeof pk, key, key_len);
        int m = snprintf(msg, sizeof msg, "no key '%s'", pk);
        conn_answer(c, h->type, h->request_id, PPS_ENOTFOUND, msg, (size_t)m, NULL, 0,
                    srv->last_delete_seq);
        return;
    }
    uint64_t seq = ++srv->last_seq;
    srv->last_delete_seq = seq;
    srv->live_bytes -= meta_record_size(key_len, old_len);
    add_record(srv, META_REC_DELETE, key, key_len, NULL, 0);
    conn_answer(c, h->type, h->request_id, 0, NULL, 0, NULL, 0, seq);
}

static void do_list(struct conn *c, const struct frame_header *h, const uint8_t *p, size_t n)
{
    struct meta_server *srv = c->srv;
    const uint8_t *prefix;
    uint32_t prefix_len;
    if (parse_key(c, h, p, n, &prefix, &prefix_len, 1))
        return;
    srv->n_list++;
    const struct meta_entry **arr;
    size_t count;
    if (meta_index_list(&srv->index, prefix, prefix_len, &arr, &count)) {
        conn_fail(c, h->type, h->request_id, PPS_ENOMEM, LOG_ERROR, "cannot list %zu keys",
                  srv->index.count);
        return;
    }
    uint64_t total = 4;
    for (size_t i = 0; i < count; i++)
        total += 4 + (uint64_t)arr[i]->key_len;
    if (total > META_MAX_VALUE) {
        conn_fail(c, h->type, h->request_id, PPS_ETOOBIG, LOG_WARN,
                  "listing of %zu keys would take %llu bytes, over the limit of %u; use a "
                  "longer prefix", count, (unsigned long long)total, META_MAX_VALUE);
        free(arr);
        return;
    }
    struct wbuf wb;
    wbuf_init(&wb);
    wbuf_u32(&wb, (uint32_t)count);
    for (size_t i = 0; i < count; i++)
        wbuf_bytes(&wb, arr[i]->key, arr[i]->key_len);
    free(arr);
    conn_answer(c, h->type, h->request_id, 0, wb.data, wb.len, NULL, 0, srv->last_seq);
    wbuf_free(&wb);
}

static void do_stat(struct conn *c, const struct frame_header *h)
{
    struct meta_server *srv = c->srv;
    char text[2048];
    uint64_t avg_us = srv->n_fsync ? srv->fsync_ns_total / srv->n_fsync / 1000 : 0;
    double avg_batch = srv->n_fsync ? (double)srv->batch_records_total / (double)srv->n_fsync : 0;
    srv->n_stat++;
    int m = snprintf(
        text, sizeof text,
        "keys %zu\nkey_bytes %llu\nvalue_bytes %llu\nlog_bytes %llu\nlive_log_bytes %llu\n"
        "gets %llu\nputs %llu\ndeletes %llu\nlists %llu\nmisses %llu\npings %llu\nstats %llu\n"
        "fsyncs %llu\nfsync_avg_us %llu\nfsync_max_us %llu\nbatch_avg %.2f\nbatch_max %llu\n"
        "compactions %llu\ncompaction_failures %llu\nconnections %llu\nconnections_total %llu\n"
        "bad_frames %llu\nbad_requests %llu\ndurable_seq %llu\nlast_seq %llu\n"
        "connections_refused %llu\nstalled_drops %llu\npartial_bytes %llu\npartial_refused %llu\n",
        srv->index.count, (unsigned long long)srv->index.key_bytes,
        (unsigned long long)srv->index.value_bytes, (unsigned long long)srv->log_bytes,
        (unsigned long long)(META_LOG_HEADER_SIZE + srv->live_bytes),
        (unsigned long long)srv->n_get, (unsigned long long)srv->n_put,
        (unsigned long long)srv->n_delete, (unsigned long long)srv->n_list,
        (unsigned long long)srv->n_miss, (unsigned long long)srv->n_ping,
        (unsigned long long)srv->n_stat, (unsigned long long)srv->n_fsync,
        (unsigned long long)avg_us, (unsigned long long)(srv->fsync_ns_max / 1000), avg_batch,
        (unsigned long long)srv->batch_records_max, (unsigned long long)srv->n_compactions,
        (unsigned long long)srv->n_compaction_failures, (unsigned long long)srv->n_conn_now,
        (unsigned long long)srv->n_conn_total, (unsigned long long)srv->n_bad_frames,
        (unsigned long long)srv->n_bad_requests, (unsigned long long)srv->durable_seq,
        (unsigned long long)srv->last_seq, (unsigned long long)srv->n_conn_refused,
        (unsigned long long)srv->n_stalled,
        (unsigned long long)inbound_budget_used(&srv->budget), (unsigned long long)srv->n_busy);
    conn_answer(c, h->type, h->request_id, 0, text, (size_t)m, NULL, 0, 0);
}

/* The /metrics text (README, "Metrics"); runs on the loop thread. */
static void metrics_text(struct wbuf *out, void *arg)
{
    struct meta_server *srv = arg;
    static const char *const op_names[] = {"get", "put", "delete", "list", "ping", "stat"};
    const uint64_t ops[] = {srv->n_get, srv->n_put, srv->n_delete, srv->n_list, srv->n_ping, srv->n_stat};
    prom_head(out, "pipeps_metadata_operations_total", PROM_COUNTER,
              "Requests served, by operation (a PUT or DELETE counts once accepted).");
    for (int i = 0; i < 6; i++) {
        struct prom_label l = {"op", op_names[i]};
        prom_u64(out, "pipeps_metadata_operations_total", &l, 1, ops[i]);
    }
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_misses_total",
                    "GETs and DELETEs of absent keys.", srv->n_miss);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_fsyncs_total",
                    "fdatasync calls of the log (one per group commit).", srv->n_fsync);
    prom_metric_f64(out, PROM_COUNTER, "pipeps_metadata_fsync_seconds_total",
                    "Time spent in fdatasync of the log.", (double)srv->fsync_ns_total / 1e9);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_fsync_records_total",
                    "Log records made durable by those fsyncs.", srv->batch_records_total);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_keys", "Keys stored.", srv->index.count);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_key_bytes", "Bytes of the stored keys.",
                    srv->index.key_bytes);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_value_bytes", "Bytes of the stored values.",
                    srv->index.value_bytes);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_log_bytes",
                    "Size of the log, records not yet written included.", srv->log_bytes);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_live_log_bytes",
                    "Size the log would have after a compaction.",
                    META_LOG_HEADER_SIZE + srv->live_bytes);
    prom_head(out, "pipeps_metadata_compactions_total", PROM_COUNTER, "Log compactions, by result.");
    struct prom_label ok = {"result", "ok"}, failed = {"result", "failed"};
    prom_u64(out, "pipeps_metadata_compactions_total", &ok, 1, srv->n_compactions);
    prom_u64(out, "pipeps_metadata_compactions_total", &failed, 1, srv->n_compaction_failures);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_open_connections", "Client connections open.",
                    srv->n_conn_now);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_connections_total",
                    "Client connections accepted.", srv->n_conn_total);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_connections_refused_total",
                    "Connections refused over --max-conns.", srv->n_conn_refused);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_bad_frames_total",
                    "Malformed frame headers (the connection is closed).", srv->n_bad_frames);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_bad_requests_total",
                    "Well-framed requests with a bad payload.", srv->n_bad_requests);
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_stalled_drops_total",
                    "Peers dropped for stalling inside a request (--io-timeout).", srv->n_stalled);
    prom_metric_u64(out, PROM_GAUGE, "pipeps_metadata_partial_bytes",
                    "Bytes of large PUT values being received.", inbound_budget_used(&srv->budget));
    prom_metric_u64(out, PROM_COUNTER, "pipeps_metadata_partial_refused_total",
                    "PUTs refused over --max-partial.", srv->n_busy);
}

static uint64_t type_limit(uint16_t type)
{
    switch (type) {
    case MSG_META_GET:
    case MSG_META_DELETE:
    case MSG_META_LIST:
        return LIMIT_KEY_MSG;
    case MSG_META_PUT:
        return LIMIT_PUT;
    case MSG_PING:
        return LIMIT_PING;
    case MSG_STAT:
        return LIMIT_STAT;
    default:
        return FRAME_MAX_CONTROL;
    }
}

/* A complete frame's header has been removed from `in`; its payload follows. */
static void handle_request(struct conn *c, const struct frame_header *h, struct evbuffer *in)
{
    struct meta_server *srv = c->srv;
    size_t before = evbuffer_get_length(in);
    size_t n = (size_t)h->payload_len;
    if (h->flags & FRAME_FLAG_RESPONSE) {
        srv->n_bad_requests++;
        conn_fail(c, h->type, h->request_id, PPS_EPROTO, LOG_WARN,
                  "a response frame sent as a request");
    } else if (h->type == MSG_META_PUT) {
        do_put(c, h, in);
    } else {
        uint8_t small[LIMIT_KEY_MSG];
        uint8_t *p = n <= sizeof small ? small : malloc(n);
        if (!p) {
            conn_fail(c, h->type, h->request_id, PPS_ENOMEM, LOG_ERROR,
                      "cannot allocate %zu bytes", n);
        } else {
            if (n && evbuffer_remove(in, p, n) != (ev_ssize_t)n)
                PPS_ASSERT(!"input shorter than its complete frame");
            switch (h->type) {
            case MSG_META_GET: do_get(c, h, p, n); break;
            case MSG_META_DELETE: do_delete(c, h, p, n); break;
            case MSG_META_LIST: do_list(c, h, p, n); break;
            case MSG_PING:
                srv->n_ping++;
                conn_answer(c, h->type, h->request_id, 0, p, n, NULL, 0, 0);
                break;
            case MSG_STAT: do_stat(c, h); break;
            default:
                PPS_ASSERT(!"unreachable: unknown types are skipped earlier");
            }
            if (p != small)
                free(p);
        }
    }
    size_t used = before - evbuffer_get_length(in);
    if (used < n)
        evbuffer_drain(in, n - used);
}

static int known_type(uint16_t type)
{
    return type == MSG_META_GET || type == MSG_META_PUT || type == MSG_META_DELETE ||
           type == MSG_META_LIST || type == MSG_PING || type == MSG_STAT;
}

/* Answer and log a frame that cannot be trusted, then close. */
static void conn_bad_frame(struct conn *c, const struct frame_header *h, int rc)
{
    c->srv->n_bad_frames++;
    uint16_t type = rc == PPS_ETOOBIG ? h->type : MSG_ERROR;
    if (rc == PPS_ETOOBIG)
        conn_fail(c, type, h->request_id, rc, LOG_WARN,
                  "payload of %llu bytes is over the limit of %llu for %s; closing",
                  (unsigned long long)h->payload_len,
                  (unsigned long long)type_limit(h->type), frame_type_name(h->type));
    else if (rc == PPS_EUNSUPPORTED)
        conn_fail(c, type, h->request_id, rc, LOG_WARN,
                  "unsupported protocol version (this daemon speaks %d); closing", FRAME_VERSION);
    else
        conn_fail(c, type, 0, rc, LOG_WARN,
                  "malformed frame header (bad magic, reserved field or flags); closing");
    conn_close_after_answers(c);
}

/* Decode and serve every complete request in the input buffer. */
static void conn_process(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    /* Wake on any input unless the loop below waits for a whole frame. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    while (!c->closing && !c->srv->stopping) {
        if (c->discard) {
            size_t have = evbuffer_get_length(in);
            size_t k = have < c->discard ? have : (size_t)c->discard;
            evbuffer_drain(in, k);
            c->discard -= k;
            if (c->discard)
                break;
        }
        if (c->value) {
            if (put_stream_feed(c, in))
                break;
            continue;
        }
        if (conn_pressure(c) > CONN_OUT_HIGH) {
            c->paused = 1;
            bufferevent_disable(c->bev, EV_READ);
            break;
        }
        size_t have = evbuffer_get_length(in);
        if (have < FRAME_HEADER_SIZE)
            break;
        uint8_t raw[FRAME_HEADER_SIZE];
        evbuffer_copyout(in, raw, sizeof raw);
        struct frame_header h;
        int rc = frame_decode_header(raw, &h, UINT64_MAX);
        if (rc == 0 && h.payload_len > type_limit(h.type))
            rc = PPS_ETOOBIG;
        if (rc) {
            evbuffer_drain(in, have);
            conn_bad_frame(c, &h, rc);
            break;
        }
        if (!known_type(h.type) && !(h.flags & FRAME_FLAG_RESPONSE)) {
            /* The stream is still in step: skip the payload without buffering it. */
            c->srv->n_bad_requests++;
            evbuffer_drain(in, FRAME_HEADER_SIZE);
            c->discard = h.payload_len;
            conn_fail(c, MSG_ERROR, h.request_id, PPS_EUNSUPPORTED, LOG_WARN,
                      "unknown message type %s", frame_type_name(h.type));
            continue;
        }
        uint64_t need = FRAME_HEADER_SIZE + h.payload_len;
        if (h.type == MSG_META_PUT && !(h.flags & FRAME_FLAG_RESPONSE) &&
            h.payload_len > PUT_STREAM_MIN && have < need) {
            /* A large value goes to its own buffer as it arrives, charged
             * to the budget: half-sent PUTs cannot pile up input buffers. */
            if (have < FRAME_HEADER_SIZE + 4 + META_MAX_KEY) {
                bufferevent_setwatermark(c->bev, EV_READ, FRAME_HEADER_SIZE + 4 + META_MAX_KEY, 0);
                break;
            }
            if (put_stream_begin(c, &h, in)) {
                evbuffer_drain(in, FRAME_HEADER_SIZE);
                c->discard = h.payload_len;
            }
            continue;
        }
        if (have < need) {
            /* Wake up only when the whole frame is here. */
            bufferevent_setwatermark(c->bev, EV_READ, (size_t)need, 0);
            break;
        }
        evbuffer_drain(in, FRAME_HEADER_SIZE);
        handle_request(c, &h, in);
    }
    /* Between frames a peer may be silent forever; inside one, --io-timeout. */
    if (!c->closing)
        inbound_ev_arm(c->bev, c->value || c->discard || evbuffer_get_length(in) > 0,
                       c->srv->lim.io_timeout_ms, &c->timer_armed);
}

/* ---- connections ---- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_after_output(arg);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    size_t left = evbuffer_get_length(bufferevent_get_input(bev));
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
        c->srv->n_bad_frames++;
        c->srv->n_stalled++;
        if (c->value)
            log_warn("peer %s: stalled %d s after %llu of %llu value bytes of a META_PUT; "
                     "dropped", c->peer, c->srv->lim.io_timeout_ms / 1000,
                     (unsigned long long)c->value_got, (unsigned long long)c->value_len);
        else
            log_warn("peer %s: stalled %d s in the middle of a frame (%zu bytes buffered); "
                     "dropped", c->peer, c->srv->lim.io_timeout_ms / 1000, left);
        conn_free(c);
        return;
    }
    if (c->value && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) && !c->closing) {
        c->srv->n_bad_frames++;
        log_warn("peer %s: disconnected after %llu of %llu value bytes of a META_PUT; dropped",
                 c->peer, (unsigned long long)c->value_got, (unsigned long long)c->value_len);
        conn_free(c);
        return;
    }
    if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) && left && !c->closing) {
        /* An EOF or a reset (a peer that closes with unread answers) alike. */
        uint8_t raw[FRAME_HEADER_SIZE];
        struct frame_header h = {0};
        c->srv->n_bad_frames++;
        if (left >= FRAME_HEADER_SIZE) {
            evbuffer_copyout(bufferevent_get_input(bev), raw, sizeof raw);
            frame_decode_header(raw, &h, UINT64_MAX);
            log_warn("peer %s: disconnected mid-frame: %zu of %llu bytes of a %s request; "
                     "dropped", c->peer, left, (unsigned long long)(FRAME_HEADER_SIZE + h.payload_len),
                     frame_type_name(h.type));
        } else {
            log_warn("peer %s: disconnected mid-frame: %zu of %d header bytes; dropped", c->peer,
                     left, FRAME_HEADER_SIZE);
        }
    } else if (what & BEV_EVENT_ERROR) {
        log_info("peer %s: connection error: %s", c->peer,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    } else if (what & BEV_EVENT_TIMEOUT) {
        log_warn("peer %s: not reading its answers; closing", c->peer);
    } else {
        log_debug("peer %s: disconnected", c->peer);
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->closing &&
        (c->held_head || evbuffer_get_length(bufferevent_get_output(bev)))) {
        /* Half-closed: deliver the answers still owed, then close. */
        evbuffer_drain(bufferevent_get_input(bev), left);
        conn_close_after_answers(c);
        return;
    }
    conn_free(c);
}

static void conn_free(struct conn *c)
{
    struct meta_server *srv = c->srv;
    put_stream_drop(c);
    waiting_remove(srv, c);
    while (c->held_head) {
        struct held *h = c->held_head;
        c->held_head = h->next;
        evbuffer_free(h->buf);
        free(h);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    bufferevent_free(c->bev);
    srv->n_conn_now--;
    free(c);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lev;
    (void)salen;
    struct meta_server *srv = arg;
    if (srv->n_conn_now >= (uint64_t)srv->lim.max_conns) {
        char ip[INET_ADDRSTRLEN] = "?";
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
        log_warn("peer %s: refused: %d connections already (--max-conns)", ip, srv->lim.max_conns);
        srv->n_conn_refused++;
        inbound_refuse(fd, srv->lim.max_conns);
        return;
    }
    struct bufferevent *bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        log_error("cannot set up a connection: out of memory");
        close(fd);
        return;
    }
    struct conn *c = pps_xcalloc(1, sizeof *c);
    c->srv = srv;
    c->bev = bev;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(in->sin_port));
    } else {
        snprintf(c->peer, sizeof c->peer, "fd %d", (int)fd);
    }
    net_set_nodelay(fd);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conn_now++;
    srv->n_conn_total++;
    bufferevent_set_max_single_read(bev, CONN_MAX_SINGLE_READ);
    bufferevent_setwatermark(bev, EV_WRITE, CONN_OUT_LOW, 0);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    log_debug("peer %s: connected", c->peer);
}

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    struct meta_server *srv = arg;
    int err = errno;
    log_error("accept failed: %s", strerror(err));
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        /* The pending connection stays in the backlog and the listener would
         * fire again at once: pause accepting for a moment instead of spinning. */
        struct timeval tv = {0, 200 * 1000};
        evconnlistener_disable(lev);
        event_add(srv->accept_retry_ev, &tv);
    }
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct meta_server *srv = arg;
    if (!srv->stopping)
        evconnlistener_enable(srv->listener);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct meta_server *srv = arg;
    log_info("signal %d: stopping after the pending writes are durable", (int)sig);
    srv->stopping = 1;
    if (srv->listener)
        evconnlistener_disable(srv->listener);
    submit_pending(srv);
    if (!srv->job_inflight)
        event_base_loopbreak(srv->base);
}

/* ---- start-up ---- */

static int replay_record(void *ctx, const struct meta_record *rec)
{
    struct meta_server *srv = ctx;
    if (rec->type == META_REC_PUT) {
        uint8_t *v = malloc(rec->value_len ? rec->value_len : 1);
        if (!v)
            return PPS_ENOMEM;
        memcpy(v, rec->value, rec->value_len);
        int64_t old;
        meta_index_put(&srv->index, rec->key, rec->key_len, v, rec->value_len, 0, &old);
        srv->live_bytes += meta_record_size(rec->key_len, rec->value_len);
        if (old >= 0)
            srv->live_bytes -= meta_record_size(rec->key_len, (uint32_t)old);
    } else {
        uint32_t old;
        if (meta_index_delete(&srv->index, rec->key, rec->key_len, &old) == 0)
            srv->live_bytes -= meta_record_size(rec->key_len, old);
    }
    return 0;
}

static void server_free(struct meta_server *srv)
{
    metrics_http_stop(srv->metrics); /* the loop has returned: see metrics_http.h */
    srv->metrics = NULL;
    while (srv->conns)
        conn_free(srv->conns);
    if (srv->listener)
        evconnlistener_free(srv->listener);
    if (srv->sync) {
        if (srv->job_inflight) {
            struct meta_sync_job *job = meta_sync_wait(srv->sync);
            if (job)
                job_done(srv, job);
        }
        meta_sync_stop(srv->sync);
    }
    if (!srv->failed && srv->pending.len) {
        /* Writes accepted but not yet synced: make them durable before exit. */
        struct meta_sync_job *job = &srv->job;
        wbuf_free(&job->records);
        job->records = srv->pending;
        wbuf_init(&srv->pending);
        job->kind = META_SYNC_APPEND;
        meta_sync_run_job(&srv->log, job);
        if (job->rc)
            log_error("final log write failed: %s", pps_strerror(job->rc));
    }
    wbuf_free(&srv->pending);
    wbuf_free(&srv->job.records);
    wbuf_free(&srv->job.snapshot);
    if (srv->flush_ev)
        event_free(srv->flush_ev);
    if (srv->sync_ev)
        event_free(srv->sync_ev);
    if (srv->sigterm_ev)
        event_free(srv->sigterm_ev);
    if (srv->sigint_ev)
        event_free(srv->sigint_ev);
    if (srv->accept_retry_ev)
        event_free(srv->accept_retry_ev);
    if (srv->base)
        event_base_free(srv->base);
    meta_log_close(&srv->log);
    meta_index_free(&srv->index);
}

int meta_server_run(const struct meta_server_options *opt)
{
    struct meta_server srv_storage;
    struct meta_server *srv = &srv_storage;
    memset(srv, 0, sizeof *srv);
    srv->log.fd = srv->log.dir_fd = srv->log.lock_fd = -1;
    srv->compact_min = opt->compact_min;
    srv->compact_ratio = opt->compact_ratio > 1.0 ? opt->compact_ratio : META_DEFAULT_COMPACT_RATIO;
    srv->lim = opt->lim;
    inbound_budget_init(&srv->budget, opt->lim.max_partial);
    wbuf_init(&srv->pending);
    meta_index_init(&srv->index);

    /* Bind before opening the log: a port in use must not leave a new data
     * directory behind. Connections wait in the backlog during the replay. */
    char err[200];
    int lfd;
    int rc = net_listen_msg(opt->addr, opt->port, &lfd, err, sizeof err);
    if (rc) {
        log_error("%s", err);
        meta_index_free(&srv->index);
        wbuf_free(&srv->pending);
        return rc;
    }
    int mfd = -1;
    uint16_t metrics_port = 0;
    if (opt->metrics_port >= 0 &&
        (rc = metrics_http_listen(opt->addr, (uint16_t)opt->metrics_port, &mfd, &metrics_port, err,
                                  sizeof err)) != 0) {
        log_error("%s", err);
        close(lfd);
        meta_index_free(&srv->index);
        wbuf_free(&srv->pending);
        return rc;
    }
    struct meta_replay_stats st;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = meta_log_open(&srv->log, opt->dir, opt->truncate_damaged, replay_record, srv, &st);
    if (rc) {
        log_error("cannot open the metadata log in %s: %s", opt->dir, pps_strerror(rc));
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        meta_index_free(&srv->index);
        wbuf_free(&srv->pending);
        return rc;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    srv->log_bytes = srv->log.size;
    char resolved[PATH_MAX];
    if (!realpath(opt->dir, resolved))
        snprintf(resolved, sizeof resolved, "%s", opt->dir);
    log_info("replayed %llu records (%llu puts, %llu deletes) in %.1f ms: %zu keys, log %llu bytes%s",
             (unsigned long long)st.records, (unsigned long long)st.puts,
             (unsigned long long)st.deletes,
             (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
             srv->index.count, (unsigned long long)srv->log.size,
             st.dropped_bytes ? " (a damaged tail was dropped)" : "");

    struct event_config *cfg = event_config_new();
    srv->base = cfg ? event_base_new_with_config(cfg) : NULL;
    if (cfg)
        event_config_free(cfg);
    if (!srv->base) {
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        rc = PPS_ENOMEM;
        goto out;
    }
    uint16_t port = opt->port;
    net_local_port(lfd, &port);
    evutil_make_socket_nonblocking(lfd);
    srv->listener = evconnlistener_new(srv->base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE, -1, lfd);
    if (!srv->listener) {
        close(lfd);
        if (mfd >= 0)
            close(mfd);
        rc = PPS_ENOMEM;
        goto out;
    }
    if (mfd >= 0 && (rc = metrics_http_attach(&srv->metrics, srv->base, mfd, metrics_text, srv)) != 0) {
        log_error("cannot serve metrics: %s", pps_strerror(rc));
        goto out;
    }
    evconnlistener_set_error_cb(srv->listener, accept_error_cb);
    rc = meta_sync_start(&srv->sync, &srv->log);
    if (rc)
        goto out;
    srv->flush_ev = event_new(srv->base, -1, 0, flush_cb, srv);
    srv->sync_ev = event_new(srv->base, meta_sync_event_fd(srv->sync), EV_READ | EV_PERSIST,
                             sync_cb, srv);
    srv->sigterm_ev = evsignal_new(srv->base, SIGTERM, signal_cb, srv);
    srv->sigint_ev = evsignal_new(srv->base, SIGINT, signal_cb, srv);
    srv->accept_retry_ev = evtimer_new(srv->base, accept_retry_cb, srv);
    if (!srv->flush_ev || !srv->sync_ev || !srv->sigterm_ev || !srv->sigint_ev ||
        !srv->accept_retry_ev) {
        rc = PPS_ENOMEM;
        goto out;
    }
    event_add(srv->sync_ev, NULL);
    event_add(srv->sigterm_ev, NULL);
    event_add(srv->sigint_ev, NULL);

    printf("metadata_storage listening on %s:%u, data directory %s (%zu keys)\n",
           opt->addr && *opt->addr ? opt->addr : NET_DEFAULT_ADDR, port, resolved,
           srv->index.count);
    if (srv->metrics) {
        printf("metadata_storage metrics on http://%s:%u/metrics\n",
               opt->addr && *opt->addr ? opt->addr : NET_DEFAULT_ADDR, metrics_port);
        log_info("metrics on http://%s:%u/metrics",
                 opt->addr && *opt->addr ? opt->addr : NET_DEFAULT_ADDR, metrics_port);
    }
    fflush(stdout);
    log_info("listening on %s:%u, data directory %s", opt->addr && *opt->addr ? opt->addr : NET_DEFAULT_ADDR,
             port, resolved);

    event_base_dispatch(srv->base);
    rc = srv->failed;
out:
    server_free(srv);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: metadata_storage [ADDR] PORT [--dir DIR] [--compact-min SIZE]\n"
            "                        [--compact-ratio R] [--truncate-damaged]\n"
            "                        [--io-timeout S] [--max-conns N] [--max-partial SIZE]\n"
            "                        [--metrics-port PORT]\n"
            "  ADDR                address to bind (default %s)\n"
            "  PORT                TCP port (0 = any free port, printed at start)\n"
            "  --dir DIR           data directory (default ./%s)\n"
            "  --compact-min SIZE  never compact a log smaller than SIZE (default 8M)\n"
            "  --compact-ratio R   compact when the log is over R x the live data (default 2)\n"
            "  --truncate-damaged  start even if the log is damaged in the middle, keeping\n"
            "                      the records before the damage (the rest is saved aside)\n"
            "  --io-timeout S      drop a peer that stalls S seconds inside a request; idle\n"
            "                      connections are kept (default %d)\n"
            "  --max-conns N       connections served at once; more are refused with\n"
            "                      PPS_EBUSY (default %d)\n"
            "  --max-partial SIZE  bytes of large PUT values being received at once; a PUT\n"
            "                      beyond it is refused with PPS_EBUSY (default 256M, at\n"
            "                      least 64M)\n"
            "  --metrics-port PORT serve Prometheus metrics on http://ADDR:PORT/metrics\n"
            "                      (0 = any free port, printed; default: off)\n",
            NET_DEFAULT_ADDR, META_DEFAULT_DIR, INBOUND_DEFAULT_IO_TIMEOUT_S,
            INBOUND_DEFAULT_MAX_CONNS);
}

int metadata_storage_main(int argc, char **argv)
{
    struct args_option options[] = {
        {"dir", 1, NULL},
        {"compact-min", 1, NULL},
        {"compact-ratio", 1, NULL},
        {"truncate-damaged", 0, NULL},
        {"io-timeout", 1, NULL},
        {"max-conns", 1, NULL},
        {"max-partial", 1, NULL},
        {"metrics-port", 1, NULL},
    };
    struct args args;
    int help = 0;
    if (args_split(argc, argv, options, (int)(sizeof options / sizeof options[0]), &args, &help)) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    struct meta_server_options opt = {
        .dir = options[0].value ? options[0].value : META_DEFAULT_DIR,
        .compact_min = META_DEFAULT_COMPACT_MIN,
        .compact_ratio = META_DEFAULT_COMPACT_RATIO,
        .truncate_damaged = options[3].value != NULL,
        .metrics_port = -1,
    };
    const char *port_text;
    if (args.npositional == 1) {
        port_text = args.positional[0];
    } else if (args.npositional == 2) {
        opt.addr = args.positional[0];
        port_text = args.positional[1];
    } else {
        usage(stderr);
        return 2;
    }
    int port;
    if (args_parse_int(port_text, 0, 65535, &port)) {
        fprintf(stderr, "metadata_storage: bad port '%s'\n", port_text);
        return 2;
    }
    opt.port = (uint16_t)port;
    if (options[7].value && args_parse_int(options[7].value, 0, 65535, &opt.metrics_port)) {
        fprintf(stderr, "metadata_storage: bad --metrics-port '%s'\n", options[7].value);
        return 2;
    }
    inbound_limits_default(&opt.lim);
    opt.lim.max_partial = META_DEFAULT_MAX_PARTIAL;
    char err[160];
    if (inbound_parse(&opt.lim, options[4].value, options[5].value, options[6].value, err,
                      sizeof err)) {
        fprintf(stderr, "metadata_storage: %s\n", err);
        return 2;
    }
    if (opt.lim.max_partial < META_MAX_VALUE) { /* or a large value could never be stored */
        fprintf(stderr, "metadata_storage: --max-partial must be at least 64M, the largest value\n");
        return 2;
    }
    if (options[1].value && args_parse_size(options[1].value, &opt.compact_min)) {
        fprintf(stderr, "metadata_storage: bad size '%s' for --compact-min\n", options[1].value);
        return 2;
    }
    if (options[2].value) {
        char *end;
        opt.compact_ratio = strtod(options[2].value, &end);
        if (*end || !(opt.compact_ratio > 1.0)) {
            fprintf(stderr, "metadata_storage: --compact-ratio must be a number over 1\n");
            return 2;
        }
    }
    net_ignore_sigpipe();
    int rc = meta_server_run(&opt);
    return rc ? 1 : 0;
}
