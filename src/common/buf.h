/* buf: little-endian encoding into a growable buffer (struct wbuf) and
 * bounds-checked decoding from untrusted bytes (struct rbuf).
 *
 * Every payload on the wire and every blob in a file is built with wbuf and
 * parsed with rbuf. A reader never reads past its end: a short or malformed
 * input makes the getters return PPS_ETRUNCATED and sets rb->err, so a parser
 * can run a sequence of gets and check rb->err once at the end. Strings are
 * encoded as u32 length + bytes (no terminator); getters return pointers into
 * the input (valid while the input is). */
#ifndef PIPEPS_BUF_H
#define PIPEPS_BUF_H

#include <stddef.h>
#include <stdint.h>

struct wbuf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

void wbuf_init(struct wbuf *wb);
void wbuf_free(struct wbuf *wb);
void wbuf_reset(struct wbuf *wb);
/* Reserve room for n more bytes and return where they go (aborts on OOM). */
uint8_t *wbuf_reserve(struct wbuf *wb, size_t n);
void wbuf_put(struct wbuf *wb, const void *src, size_t n);
void wbuf_u8(struct wbuf *wb, uint8_t v);
void wbuf_u16(struct wbuf *wb, uint16_t v);
void wbuf_u32(struct wbuf *wb, uint32_t v);
void wbuf_u64(struct wbuf *wb, uint64_t v);
void wbuf_i64(struct wbuf *wb, int64_t v);
void wbuf_f32(struct wbuf *wb, float v);
/* u32 length, then the bytes. */
void wbuf_str(struct wbuf *wb, const char *s);
void wbuf_bytes(struct wbuf *wb, const void *p, uint32_t n);
/* Zero bytes up to a multiple of align (a power of two) of wb->len. */
void wbuf_pad(struct wbuf *wb, size_t align);

struct rbuf {
    const uint8_t *data;
    size_t len;
    size_t pos;
    int err; /* first error seen, 0 if none */
};

void rbuf_init(struct rbuf *rb, const void *data, size_t len);
size_t rbuf_left(const struct rbuf *rb);
int rbuf_get(struct rbuf *rb, void *dst, size_t n);
/* Return a pointer to the next n bytes and skip them, or NULL on short input. */
const uint8_t *rbuf_take(struct rbuf *rb, size_t n);
int rbuf_u8(struct rbuf *rb, uint8_t *v);
int rbuf_u16(struct rbuf *rb, uint16_t *v);
int rbuf_u32(struct rbuf *rb, uint32_t *v);
int rbuf_u64(struct rbuf *rb, uint64_t *v);
int rbuf_i64(struct rbuf *rb, int64_t *v);
int rbuf_f32(struct rbuf *rb, float *v);
/* A string of at most max_len bytes, copied NUL-terminated into dst, which
 * has room for max_len + 1 bytes. Longer strings give PPS_ETOOBIG. */
int rbuf_str(struct rbuf *rb, char *dst, size_t max_len);
/* A u32-length byte run of at most max_len bytes, returned in place. */
int rbuf_bytes(struct rbuf *rb, const uint8_t **p, uint32_t *n, uint32_t max_len);
/* End of a payload: PPS_EPROTO if a read failed or bytes are left over (a
 * peer speaking another version fails loudly instead of half-parsing). */
int rbuf_finish(const struct rbuf *rb);

/* Whether name is 1..max_len bytes of printable ASCII without spaces: what a
 * name sent on the wire (a model name) may hold. */
int wire_name_valid(const char *name, size_t max_len);

/* A list of (model name, byte count), as the cache and the servers report
 * what they hold to the load balancer: u32 count, then per entry a string of
 * at most WIRE_NAME_MAX bytes and a u64. */
#define WIRE_NAME_MAX 255
struct wire_model_bytes {
    char model[WIRE_NAME_MAX + 1];
    uint64_t bytes;
};
void wbuf_model_list(struct wbuf *wb, const struct wire_model_bytes *m, uint32_t n);
/* The list, malloc'd into *out (NULL when empty; the caller frees). The
 * count is bounded by the bytes left before allocating. PPS_EPROTO or
 * PPS_ENOMEM on failure, *out then NULL. */
int rbuf_model_list(struct rbuf *rb, struct wire_model_bytes **out, uint32_t *n);

/* Plain little-endian loads/stores for fixed headers. */
static inline void store_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void store_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t load_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)load_le32(p) | ((uint64_t)load_le32(p + 4) << 32);
}

#endif
