/* cache_proto: encoders and bounds-checked decoders; see cache_proto.h.
 * Every decoder insists the payload is consumed exactly, so a peer that
 * speaks another version fails loudly instead of half-parsing. */
#include "cache/cache_proto.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

int cache_proto_valid_model_name(const char *name) { return wire_name_valid(name, CACHE_MODEL_NAME_MAX); }

void cache_proto_encode_hello(struct wbuf *wb, const struct cache_hello *m)
{
    wbuf_u32(wb, m->version);
    wbuf_str(wb, m->shm_name);
    wbuf_u64(wb, m->pool_size);
    wbuf_u64(wb, m->block_size);
}

int cache_proto_decode_hello(const void *p, size_t n, struct cache_hello *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_u32(&rb, &m->version);
    rbuf_str(&rb, m->shm_name, CACHE_SHM_NAME_MAX);
    rbuf_u64(&rb, &m->pool_size);
    rbuf_u64(&rb, &m->block_size);
    return rbuf_finish(&rb);
}

void cache_proto_encode_model(struct wbuf *wb, const char *model) { wbuf_str(wb, model); }

int cache_proto_decode_model(const void *p, size_t n, char model[CACHE_MODEL_NAME_MAX + 1])
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_str(&rb, model, CACHE_MODEL_NAME_MAX);
    int rc = rbuf_finish(&rb);
    if (rc)
        return rc;
    return cache_proto_valid_model_name(model) ? 0 : PPS_EINVAL;
}

void cache_proto_encode_meta(struct wbuf *wb, const struct cache_meta_msg *m)
{
    wbuf_str(wb, m->model);
    wbuf_u64(wb, m->generation);
    wbuf_u64(wb, m->total_size);
    wbuf_u32(wb, m->nbatches);
    wbuf_u64(wb, m->offset);
    wbuf_u64(wb, m->len);
}

int cache_proto_decode_meta(const void *p, size_t n, struct cache_meta_msg *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_str(&rb, m->model, CACHE_MODEL_NAME_MAX);
    rbuf_u64(&rb, &m->generation);
    rbuf_u64(&rb, &m->total_size);
    rbuf_u32(&rb, &m->nbatches);
    rbuf_u64(&rb, &m->offset);
    rbuf_u64(&rb, &m->len);
    return rbuf_finish(&rb);
}

void cache_proto_encode_list(struct wbuf *wb, const struct cache_meta_msg *v, uint32_t n)
{
    wbuf_u32(wb, n);
    for (uint32_t i = 0; i < n; i++) cache_proto_encode_meta(wb, &v[i]);
}

int cache_proto_decode_list(const void *p, size_t n, struct cache_meta_msg **out, uint32_t *count)
{
    *out = NULL;
    *count = 0;
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    uint32_t k = 0;
    rbuf_u32(&rb, &k);
    /* each entry takes at least 2 + 8 + 8 + 4 + 8 + 8 bytes */
    if (rb.err || k > CACHE_LIST_MAX || (uint64_t)k * 38 > n) return PPS_EPROTO;
    struct cache_meta_msg *v = calloc(k ? k : 1, sizeof *v);
    if (!v) return PPS_ENOMEM;
    for (uint32_t i = 0; i < k; i++) {
        rbuf_str(&rb, v[i].model, CACHE_MODEL_NAME_MAX);
        rbuf_u64(&rb, &v[i].generation);
        rbuf_u64(&rb, &v[i].total_size);
        rbuf_u32(&rb, &v[i].nbatches);
        rbuf_u64(&rb, &v[i].offset);
        rbuf_u64(&rb, &v[i].len);
    }
    int rc = rbuf_finish(&rb);
    for (uint32_t i = 0; i < k && !rc; i++)
        if (!cache_proto_valid_model_name(v[i].model)) rc = PPS_EPROTO;
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *count = k;
    return 0;
}

void cache_proto_encode_batch(struct wbuf *wb, const struct cache_batch_msg *m)
{
    wbuf_u32(wb, m->index);
    wbuf_u64(wb, m->offset);
    wbuf_u64(wb, m->len);
}

int cache_proto_decode_batch(const void *p, size_t n, struct cache_batch_msg *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_u32(&rb, &m->index);
    rbuf_u64(&rb, &m->offset);
    rbuf_u64(&rb, &m->len);
    return rbuf_finish(&rb);
}

void cache_proto_encode_done(struct wbuf *wb, const struct cache_done_msg *m)
{
    wbuf_u32(wb, m->nbatches);
    wbuf_u8(wb, m->hit);
}

int cache_proto_decode_done(const void *p, size_t n, struct cache_done_msg *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_u32(&rb, &m->nbatches);
    rbuf_u8(&rb, &m->hit);
    return rbuf_finish(&rb);
}

void cache_proto_encode_u64(struct wbuf *wb, uint64_t v) { wbuf_u64(wb, v); }

int cache_proto_decode_u64(const void *p, size_t n, uint64_t *v)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_u64(&rb, v);
    return rbuf_finish(&rb);
}

void cache_proto_encode_register(struct wbuf *wb, const struct cache_register_msg *m)
{
    wbuf_str(wb, m->server_addr);
    wbuf_u16(wb, m->server_port);
    wbuf_str(wb, m->shm_name);
    wbuf_u64(wb, m->capacity);
    wbuf_u64(wb, m->block_size);
    wbuf_u64(wb, m->used);
    wbuf_model_list(wb, m->models, m->nmodels);
}

int cache_proto_decode_register(const void *p, size_t n, struct cache_register_msg *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    m->models = NULL;
    rbuf_str(&rb, m->server_addr, CACHE_ADDR_MAX);
    rbuf_u16(&rb, &m->server_port);
    rbuf_str(&rb, m->shm_name, CACHE_SHM_NAME_MAX);
    rbuf_u64(&rb, &m->capacity);
    rbuf_u64(&rb, &m->block_size);
    rbuf_u64(&rb, &m->used);
    if (rb.err)
        return PPS_EPROTO;
    int rc = rbuf_model_list(&rb, &m->models, &m->nmodels);
    if (rc)
        return rc;
    rc = rbuf_finish(&rb);
    if (rc) {
        free(m->models);
        m->models = NULL;
    }
    return rc;
}

void cache_proto_encode_event(struct wbuf *wb, const struct cache_lb_event *m)
{
    wbuf_u8(wb, m->kind);
    wbuf_str(wb, m->model);
    wbuf_u64(wb, m->size);
    wbuf_u64(wb, m->used);
    wbuf_u64(wb, m->capacity);
}

int cache_proto_decode_event(const void *p, size_t n, struct cache_lb_event *m)
{
    struct rbuf rb;
    rbuf_init(&rb, p, n);
    rbuf_u8(&rb, &m->kind);
    rbuf_str(&rb, m->model, CACHE_MODEL_NAME_MAX);
    rbuf_u64(&rb, &m->size);
    rbuf_u64(&rb, &m->used);
    rbuf_u64(&rb, &m->capacity);
    return rbuf_finish(&rb);
}
