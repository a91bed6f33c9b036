/* frame: the one framing used on every link of PipePS.
 *
 * A frame is a fixed 32-byte header followed by payload_len bytes:
 *
 *   off size field
 *    0   4   magic       "PPS1" (0x31535050 little-endian)
 *    4   1   version     FRAME_VERSION
 *    5   1   flags       bit 0: response
 *    6   2   type        message type (FRAME_TYPE_LIST)
 *    8   4   status      0, or a negative PPS_E* code in a response
 *   12   4   reserved    must be 0
 *   16   8   request_id  echoed in the response; chosen by the requester
 *   24   8   payload_len bytes that follow
 *
 * All integers are little-endian. The receiver bounds payload_len against a
 * per-message-type limit before allocating (frame_recv_header's max_payload),
 * so a hostile length never becomes a huge malloc. Bulk payloads (storage
 * values) are never copied through an intermediate buffer: callers read the
 * header, then receive the payload straight into its destination. The
 * message catalogue and payload encodings are documented in docs/protocol.md.
 */
#ifndef PIPEPS_FRAME_H
#define PIPEPS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_HEADER_SIZE 32
#define FRAME_MAGIC 0x31535050u
#define FRAME_VERSION 1
#define FRAME_FLAG_RESPONSE 0x01

/* Default bound for control-plane payloads. */
#define FRAME_MAX_CONTROL (16u << 20)

/* Message types. Ranges: 0x00xx any daemon, 0x01xx metadata storage,
 * 0x02xx storage, 0x03xx cache, 0x04xx server, 0x05xx load balancer. Values
 * are wire protocol: never renumber. */
#define FRAME_TYPE_LIST(X)                                                    \
    X(PING,          0x0001)                                                  \
    X(ERROR,         0x0002)                                                  \
    X(STAT,          0x0003)                                                  \
    X(META_GET,      0x0101)                                                  \
    X(META_PUT,      0x0102)                                                  \
    X(META_DELETE,   0x0103)                                                  \
    X(META_LIST,     0x0104)                                                  \
    X(STORE_PUT,     0x0201)                                                  \
    X(STORE_GET,     0x0202)                                                  \
    X(STORE_DELETE,  0x0203)                                                  \
    X(STORE_STAT,    0x0204)                                                  \
    X(STORE_LIST,    0x0205)                                                  \
    X(CACHE_HELLO,   0x0301)                                                  \
    X(CACHE_SUBSCRIBE, 0x0302)                                                \
    X(CACHE_META,    0x0303)                                                  \
    X(CACHE_BATCH,   0x0304)                                                  \
    X(CACHE_DONE,    0x0305)                                                  \
    X(CACHE_UNPIN,   0x0306)                                                  \
    X(CACHE_IN,      0x0307)                                                  \
    X(CACHE_OUT,     0x0308)                                                  \
    X(CACHE_LIST,    0x0309)                                                  \
    X(INFER,         0x0401)                                                  \
    X(MODEL_INFO,    0x0402)                                                  \
    X(LB_CACHE_REGISTER, 0x0501)                                              \
    X(LB_CACHE_EVENT, 0x0502)                                                 \
    X(LB_SERVER_REGISTER, 0x0503)                                             \
    X(LB_SERVER_EVENT, 0x0504)

enum frame_type {
#define FRAME_TYPE_ENUM(name, value) MSG_##name = (value),
    FRAME_TYPE_LIST(FRAME_TYPE_ENUM)
#undef FRAME_TYPE_ENUM
};

struct frame_header {
    uint16_t type;
    uint8_t flags;
    int32_t status;
    uint64_t request_id;
    uint64_t payload_len;
};

/* "META_GET", or "0x1234" for an unknown type (static storage per thread). */
const char *frame_type_name(uint16_t type);

void frame_encode_header(uint8_t out[FRAME_HEADER_SIZE], const struct frame_header *h);
/* Validate and decode. PPS_EPROTO on bad magic or reserved bits,
 * PPS_EUNSUPPORTED on another version, PPS_ETOOBIG if payload_len exceeds
 * max_payload (the header is still decoded, so the caller can answer). */
int frame_decode_header(const uint8_t in[FRAME_HEADER_SIZE], struct frame_header *h,
                        uint64_t max_payload);

/* Blocking I/O on a socket. frame_send writes header and payload with one
 * writev (h->payload_len is set from len). frame_send_parts sends the
 * payload as up to 4 pieces without joining them. */
int frame_send(int fd, struct frame_header *h, const void *payload, size_t len);
int frame_send_parts(int fd, struct frame_header *h, const void *const *parts,
                     const size_t *lens, int nparts);
/* Send a response with status < 0 and a human-readable message as payload. */
int frame_send_error(int fd, uint16_t type, uint64_t request_id, int status, const char *msg);
/* Read one header; the payload is left in the socket for the caller. */
int frame_recv_header(int fd, struct frame_header *h, uint64_t max_payload);
/* Read a whole frame; *payload is malloc'd (NUL-terminated for convenience,
 * not counted in payload_len); the caller frees. */
int frame_recv(int fd, struct frame_header *h, uint8_t **payload, uint64_t max_payload);

/* One request/response round trip on a blocking socket: sends `type` with a
 * fresh request id, waits for the matching response. A response with a
 * negative status returns that status; *resp (if non-NULL) then holds the
 * peer's error message. The caller frees *resp. */
int frame_call(int fd, uint16_t type, const void *payload, size_t len, uint8_t **resp,
               uint64_t *resp_len, uint64_t max_resp);

#endif
