/* cache_client: blocking client of the cache's server protocol; see
 * cache_client.h.
 *
 * Frames of several subscriptions interleave on the one connection, and a
 * request/response call (UNPIN, STAT) may find subscription events before
 * its answer: those are queued in arrival order for next_event, so no event
 * is lost and per-subscription order is kept. The one thing easy to get
 * wrong is trusting offsets from the wire: every META and BATCH is checked
 * against the mapped pool before a pointer is formed. */
#include "cache/cache_client.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLIENT_IO_TIMEOUT_MS 10000

struct queued_event {
    struct queued_event *next;
    struct cache_event ev;
};

struct cache_client {
    int fd;
    uint64_t next_rid;
    const uint8_t *pool;
    uint64_t pool_size;
    uint64_t block_size;
    char shm_name[CACHE_SHM_NAME_MAX + 1];
    struct queued_event *qhead, *qtail;
};

int cache_client_fd(const struct cache_client *c) { return c->fd; }

const uint8_t *cache_client_pool(const struct cache_client *c, uint64_t *size)
{
    if (size)
        *size = c->pool_size;
    return c->pool;
}

uint64_t cache_client_block_size(const struct cache_client *c) { return c->block_size; }
const char *cache_client_shm_name(const struct cache_client *c) { return c->shm_name; }

static void queue_event(struct cache_client *c, const struct cache_event *ev)
{
    struct queued_event *q = pps_xmalloc(sizeof *q);
    q->next = NULL;
    q->ev = *ev;
    if (c->qtail)
        c->qtail->next = q;
    else
        c->qhead = q;
    c->qtail = q;
}

/* The first queued event of sub_id (any when sub_id = 0), removed. */
static int dequeue_event(struct cache_client *c, uint64_t sub_id, struct cache_event *ev)
{
    struct queued_event **pp = &c->qhead, *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next) {
        struct queued_event *q = *pp;
        if (sub_id && q->ev.sub_id != sub_id)
            continue;
        *pp = q->next;
        if (c->qtail == q)
            c->qtail = prev;
        *ev = q->ev;
        free(q);
        return 1;
    }
    return 0;
}

static void drop_events(struct cache_client *c, uint64_t sub_id)
{
    struct cache_event ev;
    while (dequeue_event(c, sub_id, &ev))
        ;
}

/* Wait up to timeout_ms (< 0: for ever) for a frame, then read it whole. */
static int recv_frame(struct cache_client *c, struct frame_header *h, uint8_t **payload,
                      int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r;
    do {
        r = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return pps_from_errno(errno);
    if (r == 0)
        return PPS_ETIMEOUT;
    return frame_recv(c->fd, h, payload, CACHE_MAX_REQUEST);
}

static int check_range(const struct cache_client *c, uint64_t off, uint64_t len)
{
    return off <= c->pool_size && len <= c->pool_size - off ? 0 : PPS_EPROTO;
}

/* 1: *ev is a subscription event; 0: some other response; < 0: malformed. */
static int to_event(struct cache_client *c, const struct frame_header *h, const uint8_t *p,
                    struct cache_event *ev)
{
    if (!(h->flags & FRAME_FLAG_RESPONSE))
        return PPS_EPROTO;
    memset(ev, 0, sizeof *ev);
    ev->sub_id = h->request_id;
    int rc;
    switch (h->type) {
    case MSG_CACHE_META: {
        struct cache_meta_msg m;
        if ((rc = cache_proto_decode_meta(p, h->payload_len, &m)) != 0 ||
            (rc = check_range(c, m.offset, m.len)) != 0)
            return rc;
        ev->kind = CACHE_EV_META;
        memcpy(ev->model, m.model, sizeof ev->model);
        ev->generation = m.generation;
        ev->total_size = m.total_size;
        ev->nbatches = m.nbatches;
        ev->offset = m.offset;
        ev->len = m.len;
        ev->data = c->pool + m.offset;
        return 1;
    }
    case MSG_CACHE_BATCH: {
        struct cache_batch_msg m;
        if ((rc = cache_proto_decode_batch(p, h->payload_len, &m)) != 0 ||
            (rc = check_range(c, m.offset, m.len)) != 0)
            return rc;
        ev->kind = CACHE_EV_BATCH;
        ev->index = m.index;
        ev->offset = m.offset;
        ev->len = m.len;
        ev->data = c->pool + m.offset;
        return 1;
    }
    case MSG_CACHE_DONE: {
        struct cache_done_msg m;
        if ((rc = cache_proto_decode_done(p, h->payload_len, &m)) != 0)
            return rc;
        ev->kind = CACHE_EV_DONE;
        ev->nbatches = m.nbatches;
        ev->hit = m.hit;
        return 1;
    }
    case MSG_CACHE_SUBSCRIBE:
        if (h->status >= 0)
            return PPS_EPROTO;
        ev->kind = CACHE_EV_ERROR;
        ev->status = h->status;
        snprintf(ev->message, sizeof ev->message, "%.*s", (int)h->payload_len, (const char *)p);
        return 1;
    default:
        return 0;
    }
}

/* Send a request and wait for its response; subscription events that come
 * first are queued (or dropped, for drop_sub). */
static int call(struct cache_client *c, uint16_t type, const void *payload, size_t len,
                uint64_t drop_sub, uint8_t **resp, uint64_t *resp_len)
{
    struct frame_header h = {.type = type, .request_id = c->next_rid++};
    int rc = frame_send(c->fd, &h, payload, len);
    if (rc)
        return rc;
    for (;;) {
        struct frame_header r;
        uint8_t *body = NULL;
        rc = recv_frame(c, &r, &body, CLIENT_IO_TIMEOUT_MS);
        if (rc)
            return rc;
        if ((r.flags & FRAME_FLAG_RESPONSE) && r.request_id == h.request_id &&
            (r.type == type || r.type == MSG_ERROR)) {
            rc = r.status < 0 ? r.status : 0;
            if (resp) {
                *resp = body;
                *resp_len = r.payload_len;
            } else {
                free(body);
            }
            return rc;
        }
        struct cache_event ev;
        rc = to_event(c, &r, body, &ev);
        free(body);
        if (rc < 0)
            return rc;
        if (rc == 1 && ev.sub_id != drop_sub)
            queue_event(c, &ev);
    }
}

int cache_client_connect(struct cache_client **out, const char *addr, uint16_t port)
{
    struct cache_client *c = pps_xcalloc(1, sizeof *c);
    c->next_rid = 1;
    int rc = net_connect(addr, port, CLIENT_IO_TIMEOUT_MS, &c->fd);
    if (rc) {
        free(c);
        return rc;
    }
    net_set_timeout(c->fd, CLIENT_IO_TIMEOUT_MS);
    uint8_t *resp = NULL;
    uint64_t n = 0;
    struct cache_hello hello;
    rc = call(c, MSG_CACHE_HELLO, NULL, 0, 0, &resp, &n);
    if (!rc)
        rc = cache_proto_decode_hello(resp, n, &hello);
    free(resp);
    if (!rc && hello.version != CACHE_PROTO_VERSION)
        rc = PPS_EUNSUPPORTED;
    if (!rc && (hello.pool_size == 0 || hello.block_size == 0))
        rc = PPS_EPROTO;
    int shm = -1;
    if (!rc) {
        snprintf(c->shm_name, sizeof c->shm_name, "%s", hello.shm_name);
        c->pool_size = hello.pool_size;
        c->block_size = hello.block_size;
        shm = shm_open(c->shm_name, O_RDONLY | O_CLOEXEC, 0);
        if (shm < 0)
            rc = pps_from_errno(errno);
    }
    if (!rc) {
        struct stat st;
        if (fstat(shm, &st) < 0 || (uint64_t)st.st_size < c->pool_size)
            rc = PPS_EPROTO; /* not the segment the cache described */
    }
    if (!rc) {
        /* MAP_POPULATE: the cache pre-faulted the pages; map them all now
         * so reading a batch never takes a page fault */
        void *m = mmap(NULL, c->pool_size, PROT_READ, MAP_SHARED | MAP_POPULATE, shm, 0);
        if (m == MAP_FAILED)
            rc = pps_from_errno(errno);
        else
            c->pool = m;
    }
    if (shm >= 0)
        close(shm);
    if (rc) {
        cache_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void cache_client_close(struct cache_client *c)
{
    if (!c)
        return;
    drop_events(c, 0);
    if (c->pool)
        munmap((void *)c->pool, c->pool_size);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

int cache_client_subscribe(struct cache_client *c, const char *model, uint64_t *sub_id)
{
    if (!cache_proto_valid_model_name(model))
        return PPS_EINVAL;
    struct wbuf wb;
    wbuf_init(&wb);
    cache_proto_encode_model(&wb, model);
    struct frame_header h = {.type = MSG_CACHE_SUBSCRIBE, .request_id = c->next_rid++};
    int rc = frame_send(c->fd, &h, wb.data, wb.len);
    wbuf_free(&wb);
    if (!rc)
        *sub_id = h.request_id;
    return rc;
}

static int next_event_of(struct cache_client *c, uint64_t sub_id, struct cache_event *ev,
                         int timeout_ms)
{
    if (dequeue_event(c, sub_id, ev))
        return 0;
    for (;;) {
        struct frame_header h;
        uint8_t *body = NULL;
        int rc = recv_frame(c, &h, &body, timeout_ms);
        if (rc)
            return rc;
        rc = to_event(c, &h, body, ev);
        free(body);
        if (rc < 0)
            return rc;
        if (rc == 0)
            continue; /* a stray response (e.g. to a call that timed out) */
        if (!sub_id || ev->sub_id == sub_id)
            return 0;
        queue_event(c, ev);
    }
}

int cache_client_next_event(struct cache_client *c, struct cache_event *ev, int timeout_ms)
{
    return next_event_of(c, 0, ev, timeout_ms);
}

int cache_client_unpin(struct cache_client *c, uint64_t sub_id)
{
    uint8_t payload[8];
    store_le64(payload, sub_id);
    drop_events(c, sub_id);
    return call(c, MSG_CACHE_UNPIN, payload, sizeof payload, sub_id, NULL, NULL);
}

int cache_client_fetch(struct cache_client *c, const char *model, cache_event_fn cb, void *arg,
                       uint64_t *sub_id)
{
    uint64_t sub;
    int rc = cache_client_subscribe(c, model, &sub);
    if (rc)
        return rc;
    if (sub_id)
        *sub_id = sub;
    for (;;) {
        struct cache_event ev;
        rc = next_event_of(c, sub, &ev, -1);
        if (rc)
            return rc;
        int stop = cb ? cb(&ev, arg) : 0;
        if (ev.kind == CACHE_EV_ERROR)
            return ev.status;
        if (stop) {
            cache_client_unpin(c, sub);
            return stop;
        }
        if (ev.kind == CACHE_EV_DONE)
            return 0;
    }
}

int cache_client_list(struct cache_client *c, struct cache_meta_msg **out, uint32_t *n)
{
    uint8_t *resp = NULL;
    uint64_t len = 0;
    int rc = call(c, MSG_CACHE_LIST, NULL, 0, 0, &resp, &len);
    if (!rc) rc = cache_proto_decode_list(resp, (size_t)len, out, n);
    free(resp);
    return rc;
}

int cache_client_stat(struct cache_client *c, char **text)
{
    uint8_t *resp = NULL;
    uint64_t n = 0;
    int rc = call(c, MSG_STAT, NULL, 0, 0, &resp, &n);
    if (rc) {
        free(resp);
        return rc;
    }
    *text = (char *)resp; /* frame_recv NUL-terminates */
    return 0;
}
