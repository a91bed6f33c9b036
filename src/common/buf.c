/* buf: see buf.h. Integers are encoded byte by byte, so the code is correct
 * on any host; floats travel as their IEEE-754 bit pattern. */
#include "common/buf.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

void wbuf_init(struct wbuf *wb) { memset(wb, 0, sizeof *wb); }

void wbuf_free(struct wbuf *wb)
{
    free(wb->data);
    memset(wb, 0, sizeof *wb);
}

void wbuf_reset(struct wbuf *wb) { wb->len = 0; }

uint8_t *wbuf_reserve(struct wbuf *wb, size_t n)
{
    if (wb->cap - wb->len < n) {
        size_t cap = wb->cap ? wb->cap : 256;
        while (cap - wb->len < n)
            cap *= 2;
        wb->data = pps_xrealloc(wb->data, cap);
        wb->cap = cap;
    }
    uint8_t *p = wb->data + wb->len;
    wb->len += n;
    return p;
}

void wbuf_put(struct wbuf *wb, const void *src, size_t n)
{
    if (n)
        memcpy(wbuf_reserve(wb, n), src, n);
}

void wbuf_u8(struct wbuf *wb, uint8_t v) { *wbuf_reserve(wb, 1) = v; }
void wbuf_u16(struct wbuf *wb, uint16_t v) { store_le16(wbuf_reserve(wb, 2), v); }
void wbuf_u32(struct wbuf *wb, uint32_t v) { store_le32(wbuf_reserve(wb, 4), v); }
void wbuf_u64(struct wbuf *wb, uint64_t v) { store_le64(wbuf_reserve(wb, 8), v); }
void wbuf_i64(struct wbuf *wb, int64_t v) { wbuf_u64(wb, (uint64_t)v); }

void wbuf_f32(struct wbuf *wb, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    wbuf_u32(wb, bits);
}

void wbuf_bytes(struct wbuf *wb, const void *p, uint32_t n)
{
    wbuf_u32(wb, n);
    wbuf_put(wb, p, n);
}

void wbuf_str(struct wbuf *wb, const char *s)
{
    size_t n = strlen(s);
    PPS_ASSERT(n <= UINT32_MAX);
    wbuf_bytes(wb, s, (uint32_t)n);
}

void wbuf_pad(struct wbuf *wb, size_t align)
{
    size_t rem = wb->len & (align - 1);
    if (rem)
        memset(wbuf_reserve(wb, align - rem), 0, align - rem);
}

void rbuf_init(struct rbuf *rb, const void *data, size_t len)
{
    rb->data = data;
    rb->len = len;
    rb->pos = 0;
    rb->err = 0;
}

size_t rbuf_left(const struct rbuf *rb) { return rb->len - rb->pos; }

static int rbuf_fail(struct rbuf *rb, int err)
{
    if (!rb->err)
        rb->err = err;
    return err;
}

const uint8_t *rbuf_take(struct rbuf *rb, size_t n)
{
    if (rb->err || rbuf_left(rb) < n) {
        rbuf_fail(rb, PPS_ETRUNCATED);
        return NULL;
    }
    const uint8_t *p = rb->data + rb->pos;
    rb->pos += n;
    return p;
}

int rbuf_get(struct rbuf *rb, void *dst, size_t n)
{
    const uint8_t *p = rbuf_take(rb, n);
    if (!p)
        return rb->err;
    memcpy(dst, p, n);
    return 0;
}

int rbuf_u8(struct rbuf *rb, uint8_t *v)
{
    const uint8_t *p = rbuf_take(rb, 1);
    *v = p ? p[0] : 0;
    return p ? 0 : rb->err;
}

int rbuf_u16(struct rbuf *rb, uint16_t *v)
{
    const uint8_t *p = rbuf_take(rb, 2);
    *v = p ? load_le16(p) : 0;
    return p ? 0 : rb->err;
}

int rbuf_u32(struct rbuf *rb, uint32_t *v)
{
    const uint8_t *p = rbuf_take(rb, 4);
    *v = p ? load_le32(p) : 0;
    return p ? 0 : rb->err;
}

int rbuf_u64(struct rbuf *rb, uint64_t *v)
{
    const uint8_t *p = rbuf_take(rb, 8);
    *v = p ? load_le64(p) : 0;
    return p ? 0 : rb->err;
}

int rbuf_i64(struct rbuf *rb, int64_t *v)
{
    uint64_t u;
    int rc = rbuf_u64(rb, &u);
    *v = (int64_t)u;
    return rc;
}

int rbuf_f32(struct rbuf *rb, float *v)
{
    uint32_t bits;
    int rc = rbuf_u32(rb, &bits);
    memcpy(v, &bits, 4);
    return rc;
}

int rbuf_bytes(struct rbuf *rb, const uint8_t **p, uint32_t *n, uint32_t max_len)
{
    uint32_t len;
    *p = NULL;
    *n = 0;
    if (rbuf_u32(rb, &len))
        return rb->err;
    if (len > max_len)
        return rbuf_fail(rb, PPS_ETOOBIG);
    const uint8_t *q = rbuf_take(rb, len);
    if (!q)
        return rb->err;
    *p = q;
    *n = len;
    return 0;
}

int rbuf_str(struct rbuf *rb, char *dst, size_t max_len)
{
    const uint8_t *p;
    uint32_t n;
    dst[0] = '\0';
    if (rbuf_bytes(rb, &p, &n, max_len > UINT32_MAX ? UINT32_MAX : (uint32_t)max_len))
        return rb->err;
    if (memchr(p, '\0', n))
        return rbuf_fail(rb, PPS_EPROTO);
    memcpy(dst, p, n);
    dst[n] = '\0';
    return 0;
}

int rbuf_finish(const struct rbuf *rb) { return rb->err || rbuf_left(rb) ? PPS_EPROTO : 0; }

int wire_name_valid(const char *name, size_t max_len)
{
    size_t n = strlen(name);
    if (n == 0 || n > max_len)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f)
            return 0;
    return 1;
}

void wbuf_model_list(struct wbuf *wb, const struct wire_model_bytes *m, uint32_t n)
{
    wbuf_u32(wb, n);
    for (uint32_t i = 0; i < n; i++) {
        wbuf_str(wb, m[i].model);
        wbuf_u64(wb, m[i].bytes);
    }
}

int rbuf_model_list(struct rbuf *rb, struct wire_model_bytes **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    uint32_t count;
    if (rbuf_u32(rb, &count))
        return PPS_EPROTO;
    /* Each entry takes at least 4 + 1 + 8 bytes: bound before allocating. */
    if (count > rbuf_left(rb) / 13)
        return PPS_EPROTO;
    if (count == 0)
        return 0;
    struct wire_model_bytes *m = calloc(count, sizeof *m);
    if (!m)
        return PPS_ENOMEM;
    for (uint32_t i = 0; i < count; i++) {
        rbuf_str(rb, m[i].model, WIRE_NAME_MAX);
        rbuf_u64(rb, &m[i].bytes);
    }
    if (rb->err) {
        free(m);
        return PPS_EPROTO;
    }
    *out = m;
    *n = count;
    return 0;
}
