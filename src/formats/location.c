/* location: encoder and bounds-checked decoder of "<model>-LOCATION". */
#include "formats/location.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void location_key_name(const char *model, char *out, unsigned long outlen)
{
    snprintf(out, outlen, "%s-LOCATION", model);
}

void location_encode(const struct location_record *rec, struct wbuf *out)
{
    wbuf_u32(out, LOCATION_MAGIC);
    wbuf_u16(out, LOCATION_VERSION);
    wbuf_u16(out, 0);
    wbuf_str(out, rec->model);
    wbuf_u64(out, rec->generation);
    wbuf_u64(out, rec->total_size);
    wbuf_str(out, rec->metadata_key);
    wbuf_u32(out, rec->nkeys);
    for (uint32_t i = 0; i < rec->nkeys; i++) {
        const struct location_key *k = &rec->keys[i];
        wbuf_str(out, k->key);
        wbuf_u64(out, k->size);
        wbuf_u32(out, k->nslices);
        for (uint32_t j = 0; j < k->nslices; j++) {
            const struct location_slice *s = &k->slices[j];
            wbuf_u64(out, s->offset);
            wbuf_u64(out, s->size);
            wbuf_str(out, s->addr);
            wbuf_u16(out, s->port);
            wbuf_str(out, s->storage_key);
        }
    }
}

void location_free(struct location_record *rec)
{
    if (rec->keys)
        for (uint32_t i = 0; i < rec->nkeys; i++)
            free(rec->keys[i].slices);
    free(rec->keys);
    memset(rec, 0, sizeof *rec);
}

static int decode_key(struct rbuf *rb, struct location_key *k)
{
    rbuf_str(rb, k->key, LOCATION_NAME_MAX);
    rbuf_u64(rb, &k->size);
    rbuf_u32(rb, &k->nslices);
    if (rb->err)
        return rb->err;
    if (k->nslices == 0 || k->nslices > LOCATION_MAX_SLICES)
        return PPS_ECORRUPT;
    k->slices = calloc(k->nslices, sizeof *k->slices);
    if (!k->slices)
        return PPS_ENOMEM;
    uint64_t expect = 0;
    for (uint32_t j = 0; j < k->nslices; j++) {
        struct location_slice *s = &k->slices[j];
        rbuf_u64(rb, &s->offset);
        rbuf_u64(rb, &s->size);
        rbuf_str(rb, s->addr, sizeof s->addr - 1);
        rbuf_u16(rb, &s->port);
        rbuf_str(rb, s->storage_key, LOCATION_NAME_MAX);
        if (rb->err)
            return rb->err;
        if (s->offset != expect || s->size > k->size - s->offset || s->port == 0)
            return PPS_ECORRUPT;
        expect += s->size;
    }
    return expect == k->size ? 0 : PPS_ECORRUPT;
}

int location_decode(const void *data, uint64_t len, struct location_record *rec)
{
    struct rbuf rb;
    uint32_t magic;
    uint16_t version, reserved;
    memset(rec, 0, sizeof *rec);
    rbuf_init(&rb, data, len);
    rbuf_u32(&rb, &magic);
    rbuf_u16(&rb, &version);
    rbuf_u16(&rb, &reserved);
    if (rb.err)
        return rb.err;
    if (magic != LOCATION_MAGIC)
        return PPS_ECORRUPT;
    if (version != LOCATION_VERSION)
        return PPS_EUNSUPPORTED;
    rbuf_str(&rb, rec->model, LOCATION_NAME_MAX);
    rbuf_u64(&rb, &rec->generation);
    rbuf_u64(&rb, &rec->total_size);
    rbuf_str(&rb, rec->metadata_key, LOCATION_NAME_MAX);
    rbuf_u32(&rb, &rec->nkeys);
    if (rb.err)
        return rb.err;
    /* each key takes at least 16 bytes on the wire: bound before calloc */
    if (rec->nkeys > LOCATION_MAX_KEYS || rec->nkeys > rbuf_left(&rb) / 16)
        return PPS_ECORRUPT;
    rec->keys = calloc(rec->nkeys ? rec->nkeys : 1, sizeof *rec->keys);
    if (!rec->keys)
        return PPS_ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < rec->nkeys && !rc; i++)
        rc = decode_key(&rb, &rec->keys[i]);
    if (!rc && rbuf_left(&rb))
        rc = PPS_ECORRUPT;
    if (rc)
        location_free(rec);
    return rc;
}

const struct location_key *location_find(const struct location_record *rec, const char *key)
{
    for (uint32_t i = 0; i < rec->nkeys; i++)
        if (strcmp(rec->keys[i].key, key) == 0)
            return &rec->keys[i];
    return NULL;
}
