/* frame: header codec and blocking send/receive helpers; see frame.h. */
#include "common/frame.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/net.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

const char *frame_type_name(uint16_t type)
{
    switch (type) {
#define FRAME_TYPE_NAME(name, value) case value: return #name;
        FRAME_TYPE_LIST(FRAME_TYPE_NAME)
#undef FRAME_TYPE_NAME
    }
    static _Thread_local char unknown[16];
    snprintf(unknown, sizeof unknown, "0x%04x", type);
    return unknown;
}

void frame_encode_header(uint8_t out[FRAME_HEADER_SIZE], const struct frame_header *h)
{
    store_le32(out, FRAME_MAGIC);
    out[4] = FRAME_VERSION;
    out[5] = h->flags;
    store_le16(out + 6, h->type);
    store_le32(out + 8, (uint32_t)h->status);
    store_le32(out + 12, 0);
    store_le64(out + 16, h->request_id);
    store_le64(out + 24, h->payload_len);
}

int frame_decode_header(const uint8_t in[FRAME_HEADER_SIZE], struct frame_header *h,
                        uint64_t max_payload)
{
    memset(h, 0, sizeof *h);
    if (load_le32(in) != FRAME_MAGIC || load_le32(in + 12) != 0 || (in[5] & ~FRAME_FLAG_RESPONSE))
        return PPS_EPROTO;
    h->flags = in[5];
    h->type = load_le16(in + 6);
    h->status = (int32_t)load_le32(in + 8);
    h->request_id = load_le64(in + 16);
    h->payload_len = load_le64(in + 24);
    if (in[4] != FRAME_VERSION)
        return PPS_EUNSUPPORTED;
    if (h->payload_len > max_payload)
        return PPS_ETOOBIG;
    return 0;
}

int frame_send_parts(int fd, struct frame_header *h, const void *const *parts,
                     const size_t *lens, int nparts)
{
    PPS_ASSERT(nparts >= 0 && nparts <= 4);
    uint8_t hdr[FRAME_HEADER_SIZE];
    struct iovec iov[5];
    uint64_t total = 0;
    int n = 0;
    for (int i = 0; i < nparts; i++)
        total += lens[i];
    h->payload_len = total;
    frame_encode_header(hdr, h);
    iov[n].iov_base = hdr;
    iov[n++].iov_len = sizeof hdr;
    for (int i = 0; i < nparts; i++) {
        if (!lens[i])
            continue;
        iov[n].iov_base = (void *)parts[i];
        iov[n++].iov_len = lens[i];
    }
    return net_writev_full(fd, iov, n);
}

int frame_send(int fd, struct frame_header *h, const void *payload, size_t len)
{
    const void *parts[1] = {payload};
    size_t lens[1] = {len};
    return frame_send_parts(fd, h, parts, lens, 1);
}

int frame_send_error(int fd, uint16_t type, uint64_t request_id, int status, const char *msg)
{
    struct frame_header h = {
        .type = type, .flags = FRAME_FLAG_RESPONSE, .status = status, .request_id = request_id};
    return frame_send(fd, &h, msg, msg ? strlen(msg) : 0);
}

int frame_recv_header(int fd, struct frame_header *h, uint64_t max_payload)
{
    uint8_t hdr[FRAME_HEADER_SIZE];
    int rc = net_read_full(fd, hdr, sizeof hdr);
    if (rc)
        return rc;
    return frame_decode_header(hdr, h, max_payload);
}

int frame_recv(int fd, struct frame_header *h, uint8_t **payload, uint64_t max_payload)
{
    *payload = NULL;
    int rc = frame_recv_header(fd, h, max_payload);
    if (rc)
        return rc;
    uint8_t *p = malloc(h->payload_len + 1);
    if (!p)
        return PPS_ENOMEM;
    rc = net_read_full(fd, p, h->payload_len);
    if (rc) {
        free(p);
        return rc;
    }
    p[h->payload_len] = '\0';
    *payload = p;
    return 0;
}

static atomic_uint_fast64_t next_request_id = 1;

int frame_call(int fd, uint16_t type, const void *payload, size_t len, uint8_t **resp,
               uint64_t *resp_len, uint64_t max_resp)
{
    struct frame_header h = {.type = type, .request_id = atomic_fetch_add(&next_request_id, 1)};
    uint8_t *body = NULL;
    if (resp)
        *resp = NULL;
    if (resp_len)
        *resp_len = 0;
    int rc = frame_send(fd, &h, payload, len);
    if (rc)
        return rc;
    struct frame_header r;
    rc = frame_recv(fd, &r, &body, max_resp);
    if (rc)
        return rc;
    if (!(r.flags & FRAME_FLAG_RESPONSE) || r.request_id != h.request_id ||
        (r.type != type && r.type != MSG_ERROR)) {
        free(body);
        return PPS_EPROTO;
    }
    if (resp)
        *resp = body;
    else
        free(body);
    if (resp_len)
        *resp_len = r.payload_len;
    return r.status < 0 ? r.status : 0;
}
