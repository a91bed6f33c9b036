/* storage_client: blocking client of the storage daemon; see
 * storage_client.h.
 *
 * GET bytes are received with recv() straight into the caller's buffer
 * (for the cache: into shared memory), never through a staging buffer; PUT
 * values are handed to the kernel with one sendmsg of [header, key, value].
 * Split GETs are matched to their responses by a FIFO of request ids. The
 * thing easy to get wrong: any I/O error in the middle of a frame leaves
 * the byte stream out of step, so the client marks itself broken instead
 * of reading the next frame from the middle of the last one. */
#include "storage/storage_client.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STORAGE_CLIENT_SNDBUF (4 << 20)
/* Error messages longer than this are cut (the rest is read and dropped). */
#define ERRMSG_MAX 1024

struct pending_get {
    uint64_t request_id;
    uint64_t len; /* requested length, UINT64_MAX = to the end */
};

struct storage_client {
    int fd;
    int broken;          /* the stream is out of step: every call fails */
    uint64_t next_id;
    struct pending_get *q; /* ring of outstanding split GETs */
    size_t q_head, q_n, q_cap;
    char err[ERRMSG_MAX + 1];
};

static void set_err(struct storage_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_err(struct storage_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

/* An I/O error mid-frame: remember that the stream is lost. */
static int fail_io(struct storage_client *c, int rc, const char *what)
{
    c->broken = 1;
    set_err(c, "%s: %s", what, pps_strerror(rc));
    return rc;
}

int storage_client_connect(struct storage_client **out, const char *addr, uint16_t port)
{
    *out = NULL;
    int fd;
    int rc = net_connect(addr, port, 10000, &fd);
    if (rc)
        return rc;
    /* PUT values leave through the send buffer: make it large. The receive
     * buffer (GET values) stays autotuned, which grows further on Linux
     * (net.ipv4.tcp_rmem) than an explicit size may (net.core.rmem_max). */
    int bytes = STORAGE_CLIENT_SNDBUF;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    struct storage_client *c = pps_xcalloc(1, sizeof *c);
    c->fd = fd;
    c->next_id = 1;
    *out = c;
    return 0;
}

void storage_client_close(struct storage_client *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c->q);
    free(c);
}

int storage_client_fd(const struct storage_client *c) { return c->fd; }

const char *storage_client_error(const struct storage_client *c) { return c->err; }

static int check_key(struct storage_client *c, const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > STORAGE_MAX_KEY) {
        set_err(c, "key must be 1..%u bytes", STORAGE_MAX_KEY);
        return PPS_EINVAL;
    }
    return 0;
}

/* Read the header of the response to request rid. For an error response
 * the message is read into c->err and the status returned; otherwise the
 * payload is left in the socket. */
static int recv_response(struct storage_client *c, uint16_t type, uint64_t rid,
                         struct frame_header *h)
{
    int rc = frame_recv_header(c->fd, h, UINT64_MAX);
    if (rc)
        return fail_io(c, rc, "receiving a response header");
    if (!(h->flags & FRAME_FLAG_RESPONSE) || h->request_id != rid ||
        (h->type != type && h->type != MSG_ERROR))
        return fail_io(c, PPS_EPROTO, "unexpected response");
    if (h->status < 0) {
        size_t n = h->payload_len < ERRMSG_MAX ? (size_t)h->payload_len : ERRMSG_MAX;
        rc = net_read_full(c->fd, c->err, n);
        if (!rc)
            rc = net_discard(c->fd, h->payload_len - n);
        if (rc)
            return fail_io(c, rc, "receiving an error message");
        c->err[n] = '\0';
        return h->status;
    }
    if (h->status > 0)
        return fail_io(c, PPS_EPROTO, "response with a positive status");
    return 0;
}

int storage_put(struct storage_client *c, const char *key, const void *value, uint64_t len)
{
    c->err[0] = '\0';
    if (c->broken)
        return PPS_ECLOSED;
    int rc = check_key(c, key);
    if (rc)
        return rc;
    if (len > STORAGE_MAX_VALUE) {
        set_err(c, "value of %llu bytes is over the limit", (unsigned long long)len);
        return PPS_ETOOBIG;
    }
    size_t klen = strlen(key);
    uint8_t prefix[4 + STORAGE_MAX_KEY];
    store_le32(prefix, (uint32_t)klen);
    memcpy(prefix + 4, key, klen);
    struct frame_header h = {.type = MSG_STORE_PUT, .request_id = c->next_id++};
    const void *parts[2] = {prefix, value};
    size_t lens[2] = {4 + klen, (size_t)len};
    rc = frame_send_parts(c->fd, &h, parts, lens, 2);
    if (rc) {
        /* The storage may have refused the value and closed: its reason
         * is then waiting in our receive buffer. */
        c->broken = 1;
        struct frame_header r;
        net_set_timeout(c->fd, 1000);
        int why = recv_response(c, MSG_STORE_PUT, h.request_id, &r);
        if (why < 0 && c->err[0] && why != PPS_ECLOSED && why != PPS_ETIMEOUT)
            return why;
        set_err(c, "sending the value: %s", pps_strerror(rc));
        return rc;
    }
    struct frame_header r;
    rc = recv_response(c, MSG_STORE_PUT, h.request_id, &r);
    if (rc)
        return rc;
    if (r.payload_len && (rc = net_discard(c->fd, r.payload_len)) != 0)
        return fail_io(c, rc, "receiving the PUT response");
    return 0;
}

int storage_get_send(struct storage_client *c, const char *key, uint64_t offset, uint64_t len)
{
    c->err[0] = '\0';
    if (c->broken)
        return PPS_ECLOSED;
    int rc = check_key(c, key);
    if (rc)
        return rc;
    size_t klen = strlen(key);
    uint8_t payload[4 + STORAGE_MAX_KEY + 16];
    store_le32(payload, (uint32_t)klen);
    memcpy(payload + 4, key, klen);
    store_le64(payload + 4 + klen, offset);
    store_le64(payload + 12 + klen, len);
    struct frame_header h = {.type = MSG_STORE_GET, .request_id = c->next_id++};
    rc = frame_send(c->fd, &h, payload, 20 + klen);
    if (rc)
        return fail_io(c, rc, "sending a GET");
    if (c->q_n == c->q_cap) {
        size_t cap = c->q_cap ? c->q_cap * 2 : 8;
        struct pending_get *q = pps_xmalloc(cap * sizeof *q);
        for (size_t i = 0; i < c->q_n; i++)
            q[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = q;
        c->q_head = 0;
        c->q_cap = cap;
    }
    c->q[(c->q_head + c->q_n) % c->q_cap] = (struct pending_get){h.request_id, len};
    c->q_n++;
    return 0;
}

int storage_get_recv(struct storage_client *c, void *dst, uint64_t dst_cap, uint64_t *got)
{
    c->err[0] = '\0';
    *got = 0;
    if (c->broken)
        return PPS_ECLOSED;
    if (c->q_n == 0) {
        set_err(c, "no GET outstanding");
        return PPS_EINVAL;
    }
    struct pending_get pg = c->q[c->q_head];
    c->q_head = (c->q_head + 1) % c->q_cap;
    c->q_n--;
    struct frame_header h;
    int rc = recv_response(c, MSG_STORE_GET, pg.request_id, &h);
    if (rc)
        return rc;
    if (pg.len != UINT64_MAX && h.payload_len != pg.len)
        return fail_io(c, PPS_EPROTO, "GET response of the wrong length");
    if (h.payload_len > dst_cap) {
        rc = net_discard(c->fd, h.payload_len);
        if (rc)
            return fail_io(c, rc, "dropping a GET response");
        set_err(c, "value range of %llu bytes does not fit the %llu-byte buffer",
                (unsigned long long)h.payload_len, (unsigned long long)dst_cap);
        return PPS_ETOOBIG;
    }
    rc = net_read_full(c->fd, dst, (size_t)h.payload_len);
    if (rc)
        return fail_io(c, rc, "receiving a value");
    *got = h.payload_len;
    return 0;
}

int storage_get(struct storage_client *c, const char *key, uint64_t offset, uint64_t len,
                void *dst, uint64_t dst_cap, uint64_t *got)
{
    *got = 0;
    if (len != UINT64_MAX && len > dst_cap) {
        set_err(c, "a %llu-byte buffer cannot hold %llu bytes", (unsigned long long)dst_cap,
                (unsigned long long)len);
        return PPS_EINVAL;
    }
    if (c->q_n) {
        set_err(c, "split GETs are outstanding");
        return PPS_EBUSY;
    }
    int rc = storage_get_send(c, key, offset, len);
    if (rc)
        return rc;
    return storage_get_recv(c, dst, dst_cap, got);
}

/* A control request with a small response (DELETE, STAT). */
static int control_call(struct storage_client *c, uint16_t type, const void *payload, size_t n,
                        char **resp, size_t *resp_len)
{
    c->err[0] = '\0';
    if (c->broken)
        return PPS_ECLOSED;
    if (c->q_n) {
        set_err(c, "split GETs are outstanding");
        return PPS_EBUSY;
    }
    struct frame_header h = {.type = type, .request_id = c->next_id++};
    int rc = frame_send(c->fd, &h, payload, n);
    if (rc)
        return fail_io(c, rc, "sending a request");
    struct frame_header r;
    rc = recv_response(c, type, h.request_id, &r);
    if (rc)
        return rc;
    if (r.payload_len > FRAME_MAX_CONTROL)
        return fail_io(c, PPS_ETOOBIG, "response over the control limit");
    char *text = malloc((size_t)r.payload_len + 1);
    if (!text)
        return fail_io(c, PPS_ENOMEM, "response buffer");
    rc = net_read_full(c->fd, text, (size_t)r.payload_len);
    if (rc) {
        free(text);
        return fail_io(c, rc, "receiving a response");
    }
    text[r.payload_len] = '\0';
    if (resp_len)
        *resp_len = (size_t)r.payload_len;
    if (resp)
        *resp = text;
    else
        free(text);
    return 0;
}

int storage_delete(struct storage_client *c, const char *key)
{
    c->err[0] = '\0';
    int rc = check_key(c, key);
    if (rc)
        return rc;
    size_t klen = strlen(key);
    uint8_t payload[4 + STORAGE_MAX_KEY];
    store_le32(payload, (uint32_t)klen);
    memcpy(payload + 4, key, klen);
    return control_call(c, MSG_STORE_DELETE, payload, 4 + klen, NULL, NULL);
}

int storage_stat(struct storage_client *c, char **text)
{
    *text = NULL;
    return control_call(c, MSG_STORE_STAT, NULL, 0, text, NULL);
}

void storage_list_free(struct storage_list_entry *v, uint32_t n)
{
    if (!v)
        return;
    for (uint32_t i = 0; i < n; i++)
        free(v[i].key);
    free(v);
}

int storage_list(struct storage_client *c, const char *prefix, struct storage_list_entry **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    size_t plen = strlen(prefix);
    if (plen > STORAGE_MAX_KEY) {
        set_err(c, "prefix of %zu bytes is over the key limit", plen);
        return PPS_ETOOBIG;
    }
    uint8_t payload[4 + STORAGE_MAX_KEY];
    store_le32(payload, (uint32_t)plen);
    memcpy(payload + 4, prefix, plen);
    char *resp = NULL;
    size_t len = 0;
    int rc = control_call(c, MSG_STORE_LIST, payload, 4 + plen, &resp, &len);
    if (rc)
        return rc;
    struct rbuf rb;
    uint32_t count;
    rbuf_init(&rb, resp, len);
    rbuf_u32(&rb, &count);
    /* each entry takes at least 13 bytes: bound the count before allocating */
    if (rb.err || count > rbuf_left(&rb) / 13) {
        free(resp);
        set_err(c, "malformed STORE_LIST answer");
        return PPS_EPROTO;
    }
    struct storage_list_entry *v = pps_xcalloc(count ? count : 1, sizeof *v);
    uint32_t i;
    for (i = 0; i < count; i++) {
        const uint8_t *k;
        uint32_t klen;
        if (rbuf_bytes(&rb, &k, &klen, STORAGE_MAX_KEY) || klen == 0 || memchr(k, '\0', klen))
            break;
        uint64_t size;
        if (rbuf_u64(&rb, &size))
            break;
        v[i].key = pps_xmalloc(klen + 1u);
        memcpy(v[i].key, k, klen);
        v[i].key[klen] = '\0';
        v[i].size = size;
    }
    free(resp);
    if (i < count || rbuf_left(&rb)) {
        storage_list_free(v, i);
        set_err(c, "malformed STORE_LIST answer");
        return PPS_EPROTO;
    }
    *out = v;
    *n = count;
    return 0;
}
