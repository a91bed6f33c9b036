/* server_proto: encoders and bounds-checked decoders; see server_proto.h.
 *
 * The timing block of an INFER response is length-prefixed: a decoder reads
 * the fields it knows and skips the rest, so fields can be appended later
 * without breaking older clients. Easy to get wrong: tensor padding is
 * relative to the payload's start, so the decoder must compute it from the
 * reader's position, not from the tensor header's size. */
#include "server/server_proto.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int infer_valid_model_name(const char *name) { return wire_name_valid(name, INFER_MODEL_NAME_MAX); }

size_t infer_dtype_size(uint8_t dtype)
{
    return dtype == INFER_F32 ? 4 : dtype == INFER_I64 ? 8 : 0;
}

const char *infer_dtype_name(uint8_t dtype)
{
    return dtype == INFER_F32 ? "float32" : dtype == INFER_I64 ? "int64" : "?";
}

int infer_tensor_bytes(uint8_t dtype, int ndims, const int64_t *dims, uint64_t max, uint64_t *out)
{
    size_t es = infer_dtype_size(dtype);
    if (!es || ndims < 1 || ndims > INFER_MAX_DIMS)
        return PPS_ESHAPE;
    uint64_t n = es;
    for (int i = 0; i < ndims; i++) {
        if (dims[i] < 1)
            return PPS_ESHAPE;
        if ((uint64_t)dims[i] > max / n)
            return PPS_ETOOBIG;
        n *= (uint64_t)dims[i];
    }
    *out = n;
    return 0;
}

/* ---- tensors ------------------------------------------------------------ */

static void put_tensor_head(struct wbuf *wb, const struct infer_tensor *t)
{
    wbuf_u8(wb, t->dtype);
    wbuf_u8(wb, (uint8_t)t->ndims);
    memset(wbuf_reserve(wb, 6), 0, 6);
    for (int i = 0; i < t->ndims; i++)
        wbuf_i64(wb, t->dims[i]);
    wbuf_u64(wb, t->nbytes);
    wbuf_pad(wb, INFER_TENSOR_ALIGN);
}

void infer_encode_tensor(struct wbuf *wb, const struct infer_tensor *t)
{
    put_tensor_head(wb, t);
    wbuf_put(wb, t->data, t->nbytes);
}

size_t infer_reserve_tensor(struct wbuf *wb, const struct infer_tensor *t)
{
    put_tensor_head(wb, t);
    size_t off = wb->len;
    wbuf_reserve(wb, t->nbytes);
    return off;
}

static int get_tensor(struct rbuf *rb, struct infer_tensor *t, char *err, size_t errlen)
{
    uint8_t dtype = 0, ndims = 0;
    rbuf_u8(rb, &dtype);
    rbuf_u8(rb, &ndims);
    const uint8_t *zero = rbuf_take(rb, 6);
    if (rb->err)
        return pps_fail(err, errlen, PPS_EPROTO, "truncated tensor header");
    for (int i = 0; i < 6; i++)
        if (zero[i])
            return pps_fail(err, errlen, PPS_EPROTO, "tensor header: reserved bytes not zero");
    if (!infer_dtype_size(dtype))
        return pps_fail(err, errlen, PPS_ESHAPE,
                        "tensor dtype %u unknown (1 float32, 2 int64)", dtype);
    if (ndims < 1 || ndims > INFER_MAX_DIMS)
        return pps_fail(err, errlen, PPS_ESHAPE,
                        "tensor has %u dims (1..%d)", ndims, INFER_MAX_DIMS);
    t->dtype = dtype;
    t->ndims = ndims;
    for (int i = 0; i < ndims; i++)
        rbuf_i64(rb, &t->dims[i]);
    rbuf_u64(rb, &t->nbytes);
    if (rb->err)
        return pps_fail(err, errlen, PPS_EPROTO, "truncated tensor header");
    uint64_t want;
    int rc = infer_tensor_bytes(dtype, ndims, t->dims, UINT64_MAX, &want);
    if (rc)
        return pps_fail(err, errlen, PPS_ESHAPE, "tensor dims must be >= 1 and not overflow");
    if (want != t->nbytes)
        return pps_fail(err, errlen, PPS_ESHAPE, "tensor has %llu bytes, its shape needs %llu",
                       (unsigned long long)t->nbytes, (unsigned long long)want);
    size_t rem = rb->pos & (INFER_TENSOR_ALIGN - 1);
    if (rem && !rbuf_take(rb, INFER_TENSOR_ALIGN - rem))
        return pps_fail(err, errlen, PPS_EPROTO, "truncated tensor padding");
    if (t->nbytes > rbuf_left(rb))
        return pps_fail(err, errlen, PPS_EPROTO,
                        "tensor data truncated (%llu bytes announced, %zu left)",
                        (unsigned long long)t->nbytes, rbuf_left(rb));
    t->data = rbuf_take(rb, t->nbytes);
    return 0;
}

/* ---- INFER ---------------------------------------------------------------- */

void infer_encode_model(struct wbuf *wb, const char *model)
{
    wbuf_str(wb, model);
}

int infer_decode_model(const void *p, size_t n, char model[INFER_MODEL_NAME_MAX + 1])
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_str(&rb, model, INFER_MODEL_NAME_MAX);
    if (rbuf_finish(&rb))
        return PPS_EPROTO;
    return infer_valid_model_name(model) ? 0 : PPS_EINVAL;
}

void infer_encode_request(struct wbuf *wb, const struct infer_request *r)
{
    wbuf_str(wb, r->model);
    wbuf_u32(wb, r->flags);
    wbuf_u32(wb, (uint32_t)r->ninputs);
    for (int i = 0; i < r->ninputs; i++)
        infer_encode_tensor(wb, &r->inputs[i]);
}

int infer_decode_request(const void *p, size_t n, struct infer_request *r, char *err, size_t errlen)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    memset(r, 0, sizeof *r);
    if (rbuf_str(&rb, r->model, INFER_MODEL_NAME_MAX))
        return pps_fail(err, errlen, rb.err == PPS_ETOOBIG ? PPS_EINVAL : PPS_EPROTO,
                       "bad model name (at most %d bytes)", INFER_MODEL_NAME_MAX);
    if (!infer_valid_model_name(r->model))
        return pps_fail(err, errlen, PPS_EINVAL, "bad model name (1..%d printable bytes, no space)",
                       INFER_MODEL_NAME_MAX);
    uint32_t nt = 0;
    rbuf_u32(&rb, &r->flags);
    rbuf_u32(&rb, &nt);
    if (rb.err)
        return pps_fail(err, errlen, PPS_EPROTO, "truncated INFER request");
    if (r->flags)
        return pps_fail(err, errlen, PPS_EUNSUPPORTED, "unknown INFER flags 0x%x", r->flags);
    if (nt < 1 || nt > INFER_MAX_TENSORS)
        return pps_fail(err, errlen, PPS_ESHAPE, "%u input tensors (1..%d)", nt, INFER_MAX_TENSORS);
    r->ninputs = (int)nt;
    for (uint32_t i = 0; i < nt; i++) {
        int rc = get_tensor(&rb, &r->inputs[i], err, errlen);
        if (rc)
            return rc;
    }
    if (rbuf_left(&rb))
        return pps_fail(err, errlen, PPS_EPROTO, "%zu bytes after the last tensor", rbuf_left(&rb));
    return 0;
}

#define TIMING_FIELDS(X)                                                      \
    X(u64, queue_us) X(u64, wait_us) X(u64, compute_us) X(u64, total_us)     \
    X(u8, source) X(u8, mode) X(u32, nbatches) X(u32, batches_at_start)      \
    X(u64, meta_us) X(u64, exec_start_us) X(u64, first_batch_us)             \
    X(u64, last_batch_us) X(u64, load_us) X(u64, plan_us) X(u64, exec_end_us)

void infer_encode_response_head(struct wbuf *wb, const struct infer_timing *t, int noutputs)
{
    size_t len_at = wb->len;
    wbuf_u32(wb, 0);
#define PUT(kind, field) wbuf_##kind(wb, t->field);
    TIMING_FIELDS(PUT)
#undef PUT
    store_le32(wb->data + len_at, (uint32_t)(wb->len - len_at - 4));
    wbuf_u32(wb, (uint32_t)noutputs);
}

void infer_encode_lb_block(uint8_t out[INFER_LB_BLOCK_SIZE], const struct infer_lb_block *b)
{
    memset(out, 0, INFER_LB_BLOCK_SIZE);
    store_le32(out, INFER_LB_MAGIC);
    out[4] = b->attempts;
    out[5] = b->rule;
    out[6] = b->placed;
    store_le64(out + 8, b->lb_queue_us);
    store_le64(out + 16, b->lb_total_us);
    store_le32(out + 24, b->server_id);
    store_le32(out + 28, b->machine_id);
    size_t n = strnlen(b->server, sizeof b->server - 1);
    memcpy(out + 32, b->server, n);
}

/* The balancer's block is the timing block's last 64 bytes, told apart from
 * a server's own fields by its magic. */
static void decode_lb_block(const uint8_t *t, uint32_t tlen, struct infer_response *r)
{
    if (tlen < INFER_LB_BLOCK_SIZE)
        return;
    const uint8_t *b = t + tlen - INFER_LB_BLOCK_SIZE;
    if (load_le32(b) != INFER_LB_MAGIC)
        return;
    r->has_lb = 1;
    r->lb.attempts = b[4];
    r->lb.rule = b[5];
    r->lb.placed = b[6];
    r->lb.lb_queue_us = load_le64(b + 8);
    r->lb.lb_total_us = load_le64(b + 16);
    r->lb.server_id = load_le32(b + 24);
    r->lb.machine_id = load_le32(b + 28);
    memcpy(r->lb.server, b + 32, sizeof r->lb.server - 1);
    r->lb.server[sizeof r->lb.server - 1] = '\0';
}

int infer_decode_response(const void *p, size_t n, struct infer_response *r, char *err, size_t errlen)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    memset(r, 0, sizeof *r);
    uint32_t tlen = 0;
    rbuf_u32(&rb, &tlen);
    if (rb.err || tlen > rbuf_left(&rb))
        return pps_fail(err, errlen, PPS_EPROTO, "truncated timing block");
    struct rbuf tb;
    decode_lb_block(rb.data + rb.pos, tlen, r);
    rbuf_init(&tb, rb.data + rb.pos, r->has_lb ? tlen - INFER_LB_BLOCK_SIZE : tlen);
    rbuf_take(&rb, tlen);
#define GET(kind, field) if (rbuf_left(&tb)) rbuf_##kind(&tb, &r->timing.field);
    TIMING_FIELDS(GET)
#undef GET
    if (tb.err)
        return pps_fail(err, errlen, PPS_EPROTO, "malformed timing block");
    uint32_t nt = 0;
    if (rbuf_u32(&rb, &nt) || nt > INFER_MAX_TENSORS)
        return pps_fail(err, errlen, PPS_EPROTO, "bad output count");
    r->noutputs = (int)nt;
    for (uint32_t i = 0; i < nt; i++) {
        int rc = get_tensor(&rb, &r->outputs[i], err, errlen);
        if (rc)
            return rc;
    }
    if (rbuf_left(&rb))
        return pps_fail(err, errlen, PPS_EPROTO, "bytes after the last output");
    return 0;
}

/* ---- MODEL_INFO --------------------------------------------------------- */

static void put_spec(struct wbuf *wb, const struct infer_io_spec *s)
{
    wbuf_str(wb, s->name);
    wbuf_u8(wb, s->dtype);
    wbuf_u8(wb, (uint8_t)s->ndims);
    for (int i = 0; i < s->ndims; i++)
        wbuf_i64(wb, s->dims[i]);
}

static int get_spec(struct rbuf *rb, struct infer_io_spec *s)
{
    uint8_t nd = 0;
    rbuf_str(rb, s->name, sizeof s->name - 1);
    rbuf_u8(rb, &s->dtype);
    rbuf_u8(rb, &nd);
    if (rb->err || nd > INFER_MAX_DIMS)
        return PPS_EPROTO;
    s->ndims = nd;
    for (int i = 0; i < nd; i++)
        rbuf_i64(rb, &s->dims[i]);
    return rb->err ? PPS_EPROTO : 0;
}

void infer_encode_model_info(struct wbuf *wb, const struct infer_model_info *mi)
{
    wbuf_u32(wb, (uint32_t)mi->ninputs);
    for (int i = 0; i < mi->ninputs; i++)
        put_spec(wb, &mi->inputs[i]);
    wbuf_u32(wb, (uint32_t)mi->noutputs);
    for (int i = 0; i < mi->noutputs; i++)
        put_spec(wb, &mi->outputs[i]);
    wbuf_u32(wb, mi->nbatches);
    wbuf_u64(wb, mi->param_bytes);
    wbuf_u8(wb, mi->resident);
}

int infer_decode_model_info(const void *p, size_t n, struct infer_model_info *mi)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    memset(mi, 0, sizeof *mi);
    uint32_t k = 0;
    if (rbuf_u32(&rb, &k) || k > INFER_MAX_TENSORS)
        return PPS_EPROTO;
    mi->ninputs = (int)k;
    for (uint32_t i = 0; i < k; i++)
        if (get_spec(&rb, &mi->inputs[i]))
            return PPS_EPROTO;
    if (rbuf_u32(&rb, &k) || k > INFER_MAX_TENSORS)
        return PPS_EPROTO;
    mi->noutputs = (int)k;
    for (uint32_t i = 0; i < k; i++)
        if (get_spec(&rb, &mi->outputs[i]))
            return PPS_EPROTO;
    rbuf_u32(&rb, &mi->nbatches);
    rbuf_u64(&rb, &mi->param_bytes);
    rbuf_u8(&rb, &mi->resident);
    return rbuf_finish(&rb);
}

/* ---- load balancer -------------------------------------------------------- */

void lb_server_encode_register(struct wbuf *wb, const struct lb_server_register *m)
{
    wbuf_str(wb, m->client_addr);
    wbuf_u16(wb, m->client_port);
    wbuf_str(wb, m->cache_addr);
    wbuf_u16(wb, m->cache_port);
    wbuf_u64(wb, m->memory_capacity);
    wbuf_u64(wb, m->memory_used);
    wbuf_u32(wb, m->threads);
    wbuf_u8(wb, m->mode);
    wbuf_model_list(wb, m->models, m->nmodels);
}

int lb_server_decode_register(const void *p, size_t n, struct lb_server_register *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    memset(m, 0, sizeof *m);
    rbuf_str(&rb, m->client_addr, INFER_ADDR_MAX);
    rbuf_u16(&rb, &m->client_port);
    rbuf_str(&rb, m->cache_addr, INFER_ADDR_MAX);
    rbuf_u16(&rb, &m->cache_port);
    rbuf_u64(&rb, &m->memory_capacity);
    rbuf_u64(&rb, &m->memory_used);
    rbuf_u32(&rb, &m->threads);
    rbuf_u8(&rb, &m->mode);
    if (rb.err)
        return PPS_EPROTO;
    int rc = rbuf_model_list(&rb, &m->models, &m->nmodels);
    if (rc)
        return rc;
    if (rbuf_finish(&rb)) {
        free(m->models);
        m->models = NULL;
        return PPS_EPROTO;
    }
    return 0;
}

void lb_server_encode_event(struct wbuf *wb, const struct lb_server_event *m)
{
    wbuf_u8(wb, m->kind);
    wbuf_str(wb, m->model);
    wbuf_u64(wb, m->bytes);
    wbuf_u64(wb, m->used);
    wbuf_u64(wb, m->capacity);
}

int lb_server_decode_event(const void *p, size_t n, struct lb_server_event *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    memset(m, 0, sizeof *m);
    rbuf_u8(&rb, &m->kind);
    rbuf_str(&rb, m->model, INFER_MODEL_NAME_MAX);
    rbuf_u64(&rb, &m->bytes);
    rbuf_u64(&rb, &m->used);
    rbuf_u64(&rb, &m->capacity);
    if (rbuf_finish(&rb) || (m->kind != LB_SERVER_EVENT_RESIDENT && m->kind != LB_SERVER_EVENT_EVICTED))
        return PPS_EPROTO;
    return 0;
}
