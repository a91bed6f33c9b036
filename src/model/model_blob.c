/* model_blob: METADATA blob encoder and hardened decoder (see
 * model_blob.h and docs/formats.md).
 *
 * Integers are LEB128 varints (signed ones zigzag-encoded) so that a
 * 900-parameter model takes tens of kilobytes, which matters when a
 * metadata storage holds thousands of "-alter-" copies. Strings are a u8
 * length and bytes. The one thing easy to get wrong: a count read from the
 * blob must be checked against the bytes left (each element takes at least
 * one byte) before it sizes an allocation, or a 20-byte blob could ask for
 * gigabytes. */
#include "model/model_blob.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/err.h"

#define HEADER_BYTES 8   /* magic u32, version u16, flags u16 */
#define TRAILER_BYTES 8  /* XXH3-64 of everything before */
/* Header flag: every input io is followed by uvar optional, svar fill. Set
 * only when some input is optional, so other models' blobs are unchanged. */
#define FLAG_OPTIONAL_INPUTS 1u
/* Header flag: the target string follows max_batch_size and every param is
 * followed by its layout (uvar ndims, 0 = plain; then dims, padded dims,
 * strides, uvar nblks, blocks, block dims). Set only for a prepared
 * ("native") model, so portable models' blobs are unchanged. */
#define FLAG_PREPARED 2u
#define FLAGS_KNOWN (FLAG_OPTIONAL_INPUTS | FLAG_PREPARED)
#define MAX_COUNT (1 << 24)

/* ---- encoding ------------------------------------------------------------ */

static void put_uvar(struct wbuf *wb, uint64_t v)
{
    uint8_t tmp[10];
    int n = 0;
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        tmp[n++] = byte | (v ? 0x80 : 0);
    } while (v);
    wbuf_put(wb, tmp, (size_t)n);
}

static void put_var(struct wbuf *wb, int64_t v)
{
    put_uvar(wb, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static void put_str8(struct wbuf *wb, const char *s)
{
    size_t n = strlen(s);
    PPS_ASSERT(n <= 255);
    wbuf_u8(wb, (uint8_t)n);
    wbuf_put(wb, s, n);
}

static void put_io(struct wbuf *wb, const struct graph_io *io, int with_value)
{
    put_str8(wb, io->name);
    put_uvar(wb, (uint64_t)io->dtype);
    put_uvar(wb, (uint64_t)io->ndims);
    for (int i = 0; i < io->ndims; i++) put_var(wb, io->dims[i]);
    if (with_value) put_var(wb, io->value);
}

static int any_layout(const struct graph *g)
{
    if (g->target[0]) return 1;
    for (int i = 0; i < g->nparams; i++)
        if (g->params[i].layout.ndims) return 1;
    return 0;
}

static void put_layout(struct wbuf *wb, const struct graph_layout *l)
{
    put_uvar(wb, (uint64_t)l->ndims);
    if (!l->ndims) return;
    for (int i = 0; i < l->ndims; i++) put_var(wb, l->dims[i]);
    for (int i = 0; i < l->ndims; i++) put_var(wb, l->padded_dims[i]);
    for (int i = 0; i < l->ndims; i++) put_var(wb, l->strides[i]);
    put_uvar(wb, (uint64_t)l->nblks);
    for (int b = 0; b < l->nblks; b++) put_var(wb, l->blks[b]);
    for (int b = 0; b < l->nblks; b++) put_var(wb, l->idxs[b]);
}

static int any_optional(const struct graph *g)
{
    for (int i = 0; i < g->ninputs; i++)
        if (g->inputs[i].optional) return 1;
    return 0;
}

int model_blob_encode(const struct graph *g, struct wbuf *out)
{
    if (graph_validate(g, NULL, 0) != 0) return PPS_EINVAL;
    size_t start = out->len;
    wbuf_u32(out, MODEL_BLOB_MAGIC);
    wbuf_u16(out, MODEL_BLOB_VERSION);
    unsigned flags = (any_optional(g) ? FLAG_OPTIONAL_INPUTS : 0) | (any_layout(g) ? FLAG_PREPARED : 0);
    wbuf_u16(out, (uint16_t)flags);
    put_str8(out, g->name);
    put_uvar(out, g->max_batch_size);
    if (flags & FLAG_PREPARED) put_str8(out, g->target);
    put_uvar(out, (uint64_t)g->ninputs);
    put_uvar(out, (uint64_t)g->noutputs);
    put_uvar(out, (uint64_t)g->nparams);
    put_uvar(out, (uint64_t)g->nbatches);
    put_uvar(out, (uint64_t)g->nnodes);
    for (int i = 0; i < g->ninputs; i++) {
        put_io(out, &g->inputs[i], 0);
        if (flags & FLAG_OPTIONAL_INPUTS) {
            put_uvar(out, (uint64_t)g->inputs[i].optional);
            put_var(out, g->inputs[i].fill);
        }
    }
    for (int i = 0; i < g->noutputs; i++) put_io(out, &g->outputs[i], 1);
    for (int i = 0; i < g->nparams; i++) {
        const struct graph_param *p = &g->params[i];
        put_str8(out, p->name);
        put_uvar(out, (uint64_t)p->ndims);
        for (int d = 0; d < p->ndims; d++) put_var(out, p->dims[d]);
        put_var(out, p->batch);
        put_uvar(out, p->offset);
        if (flags & FLAG_PREPARED) put_layout(out, &p->layout);
    }
    for (int i = 0; i < g->nbatches; i++) {
        put_uvar(out, g->batches[i].nbytes);
        put_uvar(out, (uint64_t)g->batches[i].first_param);
        put_uvar(out, (uint64_t)g->batches[i].nparams);
    }
    for (int i = 0; i < g->nnodes; i++) {
        const struct graph_node *n = &g->nodes[i];
        put_uvar(out, (uint64_t)n->op);
        put_str8(out, n->name);
        put_uvar(out, (uint64_t)n->ninputs);
        for (int k = 0; k < n->ninputs; k++) put_var(out, n->inputs[k]);
        put_uvar(out, (uint64_t)n->nparams);
        for (int k = 0; k < n->nparams; k++) put_var(out, n->params[k]);
        put_uvar(out, (uint64_t)n->nattrs);
        for (int k = 0; k < n->nattrs; k++) {
            const struct graph_attr *a = &n->attrs[k];
            put_str8(out, a->name);
            put_uvar(out, (uint64_t)a->kind);
            if (a->kind == GRAPH_ATTR_INT) {
                put_var(out, a->i);
            } else if (a->kind == GRAPH_ATTR_FLOAT) {
                wbuf_f32(out, a->f);
            } else {
                put_uvar(out, (uint64_t)a->nints);
                for (int j = 0; j < a->nints; j++) put_var(out, a->ints[j]);
            }
        }
        put_var(out, n->wait_batch);
    }
    wbuf_u64(out, XXH3_64bits(out->data + start, out->len - start));
    return 0;
}

/* ---- decoding ------------------------------------------------------------ */

struct reader {
    struct rbuf rb;
    int err;          /* first error: PPS_ETRUNCATED or PPS_ECORRUPT */
    char what[160];   /* what was being read when it failed */
};

static void bad(struct reader *r, int code, const char *fmt, ...)
{
    if (r->err) return;
    r->err = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->what, sizeof r->what, fmt, ap);
    va_end(ap);
}

static uint64_t get_uvar(struct reader *r, const char *what)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t byte;
        if (r->err) return 0;
        if (rbuf_u8(&r->rb, &byte) != 0) {
            bad(r, PPS_ETRUNCATED, "%s", what);
            return 0;
        }
        if (shift == 63 && (byte & 0x7e)) { /* more than 64 bits */
            bad(r, PPS_ECORRUPT, "%s: varint overflow", what);
            return 0;
        }
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return v;
    }
    bad(r, PPS_ECORRUPT, "%s: varint too long", what);
    return 0;
}

static int64_t get_var(struct reader *r, const char *what)
{
    uint64_t u = get_uvar(r, what);
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

/* A count in [lo, hi]. */
static int get_count(struct reader *r, const char *what, uint64_t lo, uint64_t hi)
{
    uint64_t v = get_uvar(r, what);
    if (!r->err && (v < lo || v > hi)) bad(r, PPS_ECORRUPT, "%s %llu out of range", what, (unsigned long long)v);
    return r->err ? 0 : (int)v;
}

static int32_t get_i32(struct reader *r, const char *what, int64_t lo, int64_t hi)
{
    int64_t v = get_var(r, what);
    if (!r->err && (v < lo || v > hi)) bad(r, PPS_ECORRUPT, "%s %lld out of range", what, (long long)v);
    return r->err ? 0 : (int32_t)v;
}

static void get_str8(struct reader *r, char *dst, size_t cap, const char *what)
{
    uint8_t n = 0;
    dst[0] = '\0';
    if (r->err) return;
    if (rbuf_u8(&r->rb, &n) != 0) {
        bad(r, PPS_ETRUNCATED, "%s", what);
        return;
    }
    if ((size_t)n + 1 > cap) {
        bad(r, PPS_ECORRUPT, "%s: %u bytes, limit %zu", what, n, cap - 1);
        return;
    }
    const uint8_t *p = rbuf_take(&r->rb, n);
    if (!p) {
        bad(r, PPS_ETRUNCATED, "%s", what);
        return;
    }
    if (memchr(p, '\0', n)) {
        bad(r, PPS_ECORRUPT, "%s contains NUL", what);
        return;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
}

static void get_dims(struct reader *r, int *ndims, int64_t *dims, int min_ndims, const char *what)
{
    *ndims = get_count(r, what, (uint64_t)min_ndims, GRAPH_MAX_DIMS);
    for (int i = 0; i < *ndims && !r->err; i++) dims[i] = get_var(r, what);
}

/* A param's layout; its byte size into *nbytes when the layout has one
 * (bounded here so it cannot overflow; graph_validate checks the rest). */
static void get_layout(struct reader *r, struct graph_layout *l, uint64_t *nbytes, int param)
{
    l->ndims = get_count(r, "layout rank", 0, GRAPH_MAX_DIMS);
    if (!l->ndims || r->err) return;
    for (int i = 0; i < l->ndims; i++) l->dims[i] = get_var(r, "layout dims");
    for (int i = 0; i < l->ndims; i++) l->padded_dims[i] = get_var(r, "layout padded dims");
    for (int i = 0; i < l->ndims; i++) l->strides[i] = get_var(r, "layout strides");
    l->nblks = get_count(r, "layout block count", 0, GRAPH_LAYOUT_MAX_BLKS);
    for (int b = 0; b < l->nblks; b++) l->blks[b] = get_var(r, "layout blocks");
    for (int b = 0; b < l->nblks; b++) l->idxs[b] = get_i32(r, "layout block dims", 0, GRAPH_MAX_DIMS - 1);
    if (r->err) return;
    uint64_t padded = 1;
    for (int i = 0; i < l->ndims; i++) {
        if (l->padded_dims[i] <= 0 || (uint64_t)l->padded_dims[i] > (1ull << 40) / padded) {
            bad(r, PPS_ECORRUPT, "param %d layout dims", param);
            return;
        }
        padded *= (uint64_t)l->padded_dims[i];
    }
    *nbytes = padded * sizeof(float);
}

static void get_io(struct reader *r, struct graph_io *io, int with_value, const char *what)
{
    get_str8(r, io->name, sizeof io->name, what);
    io->dtype = (enum graph_dtype)get_count(r, what, GRAPH_F32, GRAPH_I64);
    get_dims(r, &io->ndims, io->dims, 0, what);
    if (with_value) io->value = get_i32(r, what, 0, INT32_MAX);
}

static int finish(struct graph *g, struct reader *r, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "METADATA blob: %s at byte %zu: %s", r->what, r->rb.pos,
                 pps_strerror(r->err));
    graph_free(g);
    return r->err;
}

int model_blob_decode(struct graph *g, const void *data, size_t len, char *err, size_t errlen)
{
    struct reader r;
    memset(&r, 0, sizeof r);
    graph_init(g, "");
    if (err && errlen) err[0] = '\0';
    if (len < HEADER_BYTES + TRAILER_BYTES) {
        rbuf_init(&r.rb, data, len);
        bad(&r, PPS_ETRUNCATED, "header (%zu bytes)", len);
        return finish(g, &r, err, errlen);
    }
    const uint8_t *bytes = data;
    rbuf_init(&r.rb, bytes, len - TRAILER_BYTES);
    if (load_le32(bytes) != MODEL_BLOB_MAGIC) {
        bad(&r, PPS_ECORRUPT, "magic");
        return finish(g, &r, err, errlen);
    }
    if (load_le16(bytes + 4) != MODEL_BLOB_VERSION) {
        bad(&r, PPS_EUNSUPPORTED, "version %u (this build reads %d)", load_le16(bytes + 4),
            MODEL_BLOB_VERSION);
        return finish(g, &r, err, errlen);
    }
    /* Checksum before structure: a damaged blob is reported as damaged
     * rather than as whatever field the damage happens to hit. */
#ifndef MODEL_BLOB_FUZZ_NO_CHECKSUM /* the fuzz build lets mutations reach the parser */
    if (XXH3_64bits(bytes, len - TRAILER_BYTES) != load_le64(bytes + len - TRAILER_BYTES)) {
        r.rb.pos = len - TRAILER_BYTES;
        bad(&r, PPS_ECORRUPT, "checksum mismatch (truncated or damaged)");
        return finish(g, &r, err, errlen);
    }
#endif
    unsigned flags = load_le16(bytes + 6);
    if (flags & ~FLAGS_KNOWN) {
        bad(&r, PPS_ECORRUPT, "flags");
        return finish(g, &r, err, errlen);
    }
    r.rb.pos = HEADER_BYTES;

    get_str8(&r, g->name, sizeof g->name, "model name");
    g->max_batch_size = get_uvar(&r, "max_batch_size");
    if (flags & FLAG_PREPARED) get_str8(&r, g->target, sizeof g->target, "target");
    g->ninputs = get_count(&r, "input count", 1, 4);
    g->noutputs = get_count(&r, "output count", 1, 4);
    /* Each param, batch and node takes at least 3 bytes, so the counts
     * cannot exceed what is left; checked before allocating. */
    size_t left = rbuf_left(&r.rb);
    uint64_t cap = left < MAX_COUNT ? left : MAX_COUNT;
    g->nparams = get_count(&r, "param count", 0, cap);
    g->nbatches = get_count(&r, "batch count", 0, (uint64_t)g->nparams);
    g->nnodes = get_count(&r, "node count", 0, cap);
    if (r.err) return finish(g, &r, err, errlen);
    if ((uint64_t)g->nparams + (uint64_t)g->nbatches + (uint64_t)g->nnodes > left) {
        bad(&r, PPS_ECORRUPT, "counts (%d params, %d batches, %d nodes) exceed the %zu bytes left",
            g->nparams, g->nbatches, g->nnodes, left);
        return finish(g, &r, err, errlen);
    }
    if ((g->nparams && !(g->params = calloc((size_t)g->nparams, sizeof *g->params))) ||
        (g->nbatches && !(g->batches = calloc((size_t)g->nbatches, sizeof *g->batches))) ||
        (g->nnodes && !(g->nodes = calloc((size_t)g->nnodes, sizeof *g->nodes)))) {
        bad(&r, PPS_ENOMEM, "allocation");
        return finish(g, &r, err, errlen);
    }
    g->param_cap = g->nparams;
    g->node_cap = g->nnodes;

    for (int i = 0; i < g->ninputs && !r.err; i++) {
        get_io(&r, &g->inputs[i], 0, "input");
        g->inputs[i].value = i;
        if (flags & FLAG_OPTIONAL_INPUTS) {
            g->inputs[i].optional = (int)get_count(&r, "input optional flag", 0, 1);
            g->inputs[i].fill = get_var(&r, "input fill value");
        }
    }
    for (int i = 0; i < g->noutputs && !r.err; i++) get_io(&r, &g->outputs[i], 1, "output");
    for (int i = 0; i < g->nparams && !r.err; i++) {
        struct graph_param *p = &g->params[i];
        get_str8(&r, p->name, sizeof p->name, "param name");
        get_dims(&r, &p->ndims, p->dims, 0, "param dims");
        p->batch = get_i32(&r, "param batch", -1, INT32_MAX);
        p->offset = get_uvar(&r, "param offset");
        /* Dims are checked by graph_validate; compute nbytes only when it
         * cannot overflow (validate rejects the rest). */
        uint64_t elems = 1;
        int ok = 1;
        for (int d = 0; d < p->ndims; d++) {
            if (p->dims[d] <= 0 || (uint64_t)p->dims[d] > (1ull << 40)) ok = 0;
            else if (elems > (1ull << 40) / (uint64_t)p->dims[d]) ok = 0;
            else elems *= (uint64_t)p->dims[d];
        }
        if (!r.err && !ok) bad(&r, PPS_ECORRUPT, "param %d (%s) dims", i, p->name);
        p->nbytes = elems * sizeof(float);
        if ((flags & FLAG_PREPARED) && !r.err) get_layout(&r, &p->layout, &p->nbytes, i);
    }
    for (int i = 0; i < g->nbatches && !r.err; i++) {
        struct graph_batch *b = &g->batches[i];
        b->nbytes = get_uvar(&r, "batch size");
        b->first_param = get_count(&r, "batch first param", 0, INT32_MAX);
        b->nparams = get_count(&r, "batch param count", 0, INT32_MAX);
    }
    for (int i = 0; i < g->nnodes && !r.err; i++) {
        struct graph_node *n = &g->nodes[i];
        n->op = (enum graph_op)get_count(&r, "node op", 1, GRAPH_OP_COUNT - 1);
        get_str8(&r, n->name, sizeof n->name, "node name");
        n->ninputs = get_count(&r, "node input count", 0, GRAPH_MAX_INPUTS);
        for (int k = 0; k < n->ninputs && !r.err; k++)
            n->inputs[k] = get_i32(&r, "node input", 0, INT32_MAX);
        n->nparams = get_count(&r, "node param count", 0, GRAPH_MAX_PARAMS);
        for (int k = 0; k < n->nparams && !r.err; k++)
            n->params[k] = get_i32(&r, "node param", 0, INT32_MAX);
        n->nattrs = get_count(&r, "node attr count", 0, GRAPH_MAX_ATTRS);
        for (int k = 0; k < n->nattrs && !r.err; k++) {
            struct graph_attr *a = &n->attrs[k];
            get_str8(&r, a->name, sizeof a->name, "attr name");
            a->kind = (enum graph_attr_kind)get_count(&r, "attr kind", GRAPH_ATTR_INT, GRAPH_ATTR_INTS);
            if (r.err) break;
            if (a->kind == GRAPH_ATTR_INT) {
                a->i = get_var(&r, "attr int");
            } else if (a->kind == GRAPH_ATTR_FLOAT) {
                if (rbuf_f32(&r.rb, &a->f) != 0) bad(&r, PPS_ETRUNCATED, "attr float");
            } else {
                a->nints = get_count(&r, "attr int count", 0, GRAPH_MAX_ATTR_INTS);
                for (int j = 0; j < a->nints && !r.err; j++) a->ints[j] = get_var(&r, "attr ints");
            }
        }
        n->wait_batch = get_i32(&r, "node wait_batch", -1, INT32_MAX);
    }
    if (r.err) return finish(g, &r, err, errlen);
    if (rbuf_left(&r.rb) != 0) {
        bad(&r, PPS_ECORRUPT, "%zu trailing bytes", rbuf_left(&r.rb));
        return finish(g, &r, err, errlen);
    }
    char verr[200];
    if (graph_validate(g, verr, sizeof verr) != 0) {
        bad(&r, PPS_ECORRUPT, "invalid graph: %s", verr);
        return finish(g, &r, err, errlen);
    }
    return 0;
}
