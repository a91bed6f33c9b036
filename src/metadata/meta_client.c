/* meta_client: blocking client of the metadata storage; see meta_client.h.
 *
 * One persistent connection, one request at a time. A PUT's value goes out
 * with the key in one writev, without being copied into a request buffer.
 * The one thing easy to get wrong: after a transport error (timeout, closed
 * socket, a response that does not match the request) the byte stream is out
 * of step, so the connection is marked broken and every later call fails
 * with PPS_ECLOSED instead of reading a stale answer. */
#include "metadata/meta_client.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/net.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define META_CLIENT_CONNECT_TIMEOUT_MS 5000
/* Long enough for a compaction of a large log; a dead server still errors. */
#define META_CLIENT_IO_TIMEOUT_MS 120000

struct meta_client {
    int fd;
    int broken;
    uint64_t next_id;
};

int meta_client_connect(struct meta_client **out, const char *addr, uint16_t port)
{
    int fd;
    int rc = net_connect(addr, port, META_CLIENT_CONNECT_TIMEOUT_MS, &fd);
    if (rc)
        return rc;
    net_set_timeout(fd, META_CLIENT_IO_TIMEOUT_MS);
    struct meta_client *c = pps_xcalloc(1, sizeof *c);
    c->fd = fd;
    c->next_id = 1;
    *out = c;
    return 0;
}

void meta_client_close(struct meta_client *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c);
}

int meta_client_broken(const struct meta_client *c) { return c->broken; }

/* Send type with payload (key string, then an optional raw tail) and read
 * the answer. A status < 0 is returned as is; the peer's message is logged at
 * debug level. On success *resp (if non-NULL) is the malloc'd payload. */
static int call(struct meta_client *c, uint16_t type, const char *key, const void *tail,
                uint64_t tail_len, uint8_t **resp, uint64_t *resp_len)
{
    if (resp)
        *resp = NULL;
    if (resp_len)
        *resp_len = 0;
    if (c->broken)
        return PPS_ECLOSED;
    size_t key_len = strlen(key);
    if (key_len > META_MAX_KEY)
        return PPS_ETOOBIG;
    if (tail_len > META_MAX_VALUE)
        return PPS_ETOOBIG;
    uint8_t head[4 + META_MAX_KEY];
    store_le32(head, (uint32_t)key_len);
    memcpy(head + 4, key, key_len);
    const void *parts[2] = {head, tail};
    size_t lens[2] = {4 + key_len, (size_t)tail_len};
    struct frame_header h = {.type = type, .request_id = c->next_id++};
    int rc = frame_send_parts(c->fd, &h, parts, lens, tail_len ? 2 : 1);
    struct frame_header r;
    uint8_t *body = NULL;
    if (!rc)
        rc = frame_recv(c->fd, &r, &body, (uint64_t)META_MAX_VALUE + 4096);
    if (rc) {
        c->broken = 1;
        return rc == PPS_ETOOBIG ? PPS_EPROTO : rc; /* an oversized answer is a broken peer */
    }
    if (!(r.flags & FRAME_FLAG_RESPONSE) || r.request_id != h.request_id ||
        (r.type != type && r.type != MSG_ERROR)) {
        c->broken = 1;
        free(body);
        return PPS_EPROTO;
    }
    if (r.status < 0) {
        log_debug("metadata storage: %s '%s': %s: %s", frame_type_name(type), key,
                  pps_errname(r.status), body);
        free(body);
        return r.status;
    }
    if (resp)
        *resp = body;
    else
        free(body);
    if (resp_len)
        *resp_len = r.payload_len;
    return 0;
}

int meta_get(struct meta_client *c, const char *key, uint8_t **value, uint64_t *len)
{
    return call(c, MSG_META_GET, key, NULL, 0, value, len);
}

int meta_put(struct meta_client *c, const char *key, const void *value, uint64_t len)
{
    return call(c, MSG_META_PUT, key, value, len, NULL, NULL);
}

int meta_delete(struct meta_client *c, const char *key)
{
    return call(c, MSG_META_DELETE, key, NULL, 0, NULL, NULL);
}

void meta_free_list(char **keys, uint32_t nkeys)
{
    if (!keys)
        return;
    for (uint32_t i = 0; i < nkeys; i++)
        free(keys[i]);
    free(keys);
}

int meta_list(struct meta_client *c, const char *prefix, char ***keys, uint32_t *nkeys)
{
    uint8_t *body;
    uint64_t len;
    *keys = NULL;
    *nkeys = 0;
    int rc = call(c, MSG_META_LIST, prefix, NULL, 0, &body, &len);
    if (rc)
        return rc;
    struct rbuf rb;
    uint32_t n;
    rbuf_init(&rb, body, (size_t)len);
    rbuf_u32(&rb, &n);
    /* Each key takes at least 4 bytes: bound n by the payload before allocating. */
    if (rb.err || n > rbuf_left(&rb) / 4) {
        free(body);
        return PPS_EPROTO;
    }
    char **arr = pps_xcalloc(n ? n : 1, sizeof *arr);
    uint32_t i;
    for (i = 0; i < n; i++) {
        const uint8_t *p;
        uint32_t klen;
        if (rbuf_bytes(&rb, &p, &klen, META_MAX_KEY))
            break;
        arr[i] = pps_xmalloc(klen + 1u);
        memcpy(arr[i], p, klen);
        arr[i][klen] = '\0';
    }
    free(body);
    if (i < n || rbuf_left(&rb)) {
        meta_free_list(arr, i);
        return PPS_EPROTO;
    }
    *keys = arr;
    *nkeys = n;
    return 0;
}
