/* lb_http: KServe v2 over HTTP, /metrics and the status page; see lb_http.h.
 *
 * An inference goes in two balancer steps: MODEL_INFO first (answered from
 * the metadata storage, kept once known) to learn the model's input and
 * output names, types and shapes, so a bad request is refused with 400
 * before any server sees it; then the INFER, built straight into one
 * buffer (tensors written in place after their headers) and handed to the
 * balancer without a copy. The answer is decoded once and written as JSON
 * (float32 with 9 significant digits, which round-trips) or, for outputs
 * asked for in binary, as raw bytes after the JSON header
 * (Inference-Header-Content-Length).
 *
 * The easy thing to get wrong: a client may hang up while its request is
 * still in the balancer. The connection's close callback forgets the
 * balancer request and marks the context dead, so no reply is ever sent on
 * a freed request. */
#include "lb/lb_http.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/net.h"
#include "http/metrics_http.h"
#include "lb/lb.h"
#include "server/server_proto.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lb_http {
    struct lb *lb;
    struct evhttp *http;
    struct hctx *pending;      /* requests waiting for the balancer */
    uint64_t max_body;
};

enum hstage { STAGE_META, STAGE_READY, STAGE_INFO, STAGE_INFER };

/* One HTTP request in the balancer. */
struct hctx {
    struct lb_http *h;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    struct lreq *lr;           /* the balancer request in progress, or NULL */
    int stage;
    int dead;                  /* the client went away */
    char model[256];
    struct infer_model_info mi;
    cJSON *body;               /* the parsed inference header */
    struct evbuffer *binary;   /* the binary tensor data after it */
    int want_binary;           /* request-wide binary_data_output */
    int nouts;                 /* outputs asked for (0: all) */
    int outs[INFER_MAX_TENSORS];
    int out_binary[INFER_MAX_TENSORS];
    char id[128];
    struct hctx *prev, *next;
};

static const char *dtype_name(uint8_t d) { return d == INFER_F32 ? "FP32" : d == INFER_I64 ? "INT64" : "?"; }

static int dtype_of(const char *name)
{
    if (strcmp(name, "FP32") == 0)
        return INFER_F32;
    if (strcmp(name, "INT64") == 0)
        return INFER_I64;
    return 0;
}

/* ---- replies ------------------------------------------------------------- */

static void json_escape(struct evbuffer *b, const char *s)
{
    evbuffer_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            evbuffer_add_printf(b, "\\%c", c);
        else if (c < 0x20)
            evbuffer_add_printf(b, "\\u%04x", c);
        else
            evbuffer_add(b, s, 1);
    }
    evbuffer_add(b, "\"", 1);
}

static void reply_json(struct evhttp_request *req, int code, struct evbuffer *b)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
}

static void reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "{\"error\":", 9);
    json_escape(b, msg);
    evbuffer_add(b, "}", 1);
    reply_json(req, code, b);
    evbuffer_free(b);
}

/* The HTTP status for a balancer or server error. */
static int http_code(int status)
{
    switch (status) {
    case PPS_ENOTFOUND:
        return 404;
    case PPS_ESHAPE:
    case PPS_ERANGE:
    case PPS_EINVAL:
    case PPS_EPROTO:
    case PPS_ETOOBIG:
    case PPS_EUNSUPPORTED:
        return 400;
    case PPS_ETIMEOUT:
        return 504;
    case PPS_EBUSY:
    case PPS_ECONNECT:
    case PPS_ECLOSED:
    case PPS_ECANCELED:
    case PPS_ENOSPACE:
    case PPS_EFETCH:
        return 503;
    default:
        return 500;
    }
}

/* ---- request contexts ---------------------------------------------------- */

static void detach(struct hctx *x);

static void ctx_free(struct hctx *x)
{
    struct lb_http *h = x->h;
    if (x->prev)
        x->prev->next = x->next;
    else if (h->pending == x)
        h->pending = x->next;
    if (x->next)
        x->next->prev = x->prev;
    detach(x);
    if (x->body)
        cJSON_Delete(x->body);
    if (x->binary)
        evbuffer_free(x->binary);
    free(x);
}

/* From here on the context answers its request: no close callback (a reply
 * may close the connection). */
static void detach(struct hctx *x)
{
    if (x->conn && !x->dead)
        evhttp_connection_set_closecb(x->conn, NULL, NULL);
    x->conn = NULL;
}

static void on_close(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    struct hctx *x = arg;
    x->dead = 1;
    if (x->lr) {
        lb_forget(x->h->lb, x->lr);
        x->lr = NULL;
    }
    ctx_free(x);
}

static struct hctx *ctx_new(struct lb_http *h, struct evhttp_request *req, const char *model, int stage)
{
    struct hctx *x = pps_xcalloc(1, sizeof *x);
    x->h = h;
    x->req = req;
    x->stage = stage;
    snprintf(x->model, sizeof x->model, "%s", model);
    x->conn = evhttp_request_get_connection(req);
    if (x->conn)
        evhttp_connection_set_closecb(x->conn, on_close, x);
    x->next = h->pending;
    if (h->pending)
        h->pending->prev = x;
    h->pending = x;
    return x;
}

static void on_answer(void *arg, int status, const char *why, struct evbuffer *payload);

/* Ask the balancer; the answer comes to on_answer (perhaps at once). */
static void ask(struct hctx *x, uint16_t type, struct evbuffer *payload)
{
    x->lr = NULL;
    struct lreq *r = lb_submit(x->h->lb, type, x->model, payload, on_answer, x);
    /* on_answer may have run (and freed x) already: then r is NULL */
    if (r)
        x->lr = r;
}

static void ask_model_info(struct hctx *x)
{
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_model(&wb, x->model);
    struct evbuffer *p = evbuffer_new();
    evbuffer_add(p, wb.data, wb.len);
    wbuf_free(&wb);
    ask(x, MSG_MODEL_INFO, p);
}

/* ---- model metadata ------------------------------------------------------ */

static void add_specs(struct evbuffer *b, const struct infer_io_spec *s, int n)
{
    for (int i = 0; i < n; i++) {
        evbuffer_add_printf(b, "%s{\"name\":", i ? "," : "");
        json_escape(b, s[i].name);
        evbuffer_add_printf(b, ",\"datatype\":\"%s\",\"shape\":[", dtype_name(s[i].dtype));
        for (int d = 0; d < s[i].ndims; d++)
            evbuffer_add_printf(b, "%s%" PRId64, d ? "," : "", s[i].dims[d]);
        evbuffer_add(b, "]}", 2);
    }
}

static void reply_metadata(struct hctx *x)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "{\"name\":", 8);
    json_escape(b, x->model);
    evbuffer_add_printf(b, ",\"versions\":[\"1\"],\"platform\":\"pipeps\",\"inputs\":[");
    add_specs(b, x->mi.inputs, x->mi.ninputs);
    evbuffer_add(b, "],\"outputs\":[", 13);
    add_specs(b, x->mi.outputs, x->mi.noutputs);
    evbuffer_add_printf(b, "],\"parameters\":{\"parameter_batches\":%u,\"parameter_bytes\":%" PRIu64 "}}",
                        x->mi.nbatches, x->mi.param_bytes);
    reply_json(x->req, 200, b);
    evbuffer_free(b);
}

/* ---- inference: request ---------------------------------------------------- */

static void free_payload(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    free((void *)data);
}

/* Copy the numbers of a (possibly nested) JSON array into dst as dtype;
 * *n counts them, never past max. */
static int flatten(const cJSON *a, uint8_t dtype, void *dst, uint64_t max, uint64_t *n, char *why, size_t wl)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (cJSON_IsArray(it)) {
            if (flatten(it, dtype, dst, max, n, why, wl))
                return -1;
            continue;
        }
        if (!cJSON_IsNumber(it) && !cJSON_IsBool(it)) {
            snprintf(why, wl, "data holds a value that is not a number");
            return -1;
        }
        if (*n >= max) {
            snprintf(why, wl, "data has more values than the shape says");
            return -1;
        }
        double v = cJSON_IsBool(it) ? (cJSON_IsTrue(it) ? 1 : 0) : it->valuedouble;
        if (dtype == INFER_F32) {
            ((float *)dst)[*n] = (float)v;
        } else {
            if (v != floor(v) || fabs(v) > 9007199254740992.0) {
                snprintf(why, wl, "INT64 data holds %g, not an integer", v);
                return -1;
            }
            ((int64_t *)dst)[*n] = (int64_t)v;
        }
        (*n)++;
    }
    return 0;
}

static int find_input(const struct infer_model_info *mi, const char *name)
{
    for (int i = 0; i < mi->ninputs; i++)
        if (strcmp(mi->inputs[i].name, name) == 0)
            return i;
    return -1;
}

static int find_output(const struct infer_model_info *mi, const char *name)
{
    for (int i = 0; i < mi->noutputs; i++)
        if (strcmp(mi->outputs[i].name, name) == 0)
            return i;
    return -1;
}

static int binary_flag(const cJSON *obj, const char *key)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "parameters");
    const cJSON *v = p ? cJSON_GetObjectItemCaseSensitive(p, key) : NULL;
    return v && cJSON_IsTrue(v);
}

/* Build the INFER payload from the parsed request; 0, or an HTTP code with
 * why (the request is bad). */
static int build_infer(struct hctx *x, struct evbuffer **out, char *why, size_t wl)
{
    const struct infer_model_info *mi = &x->mi;
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(x->body, "inputs");
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) < 1) {
        snprintf(why, wl, "'inputs' must be a non-empty array");
        return 400;
    }
    int n = cJSON_GetArraySize(inputs);
    if (n > mi->ninputs) {
        snprintf(why, wl, "model '%s' takes at most %d inputs, got %d", x->model, mi->ninputs, n);
        return 400;
    }
    const cJSON *byidx[INFER_MAX_TENSORS] = {0};
    const cJSON *in;
    cJSON_ArrayForEach(in, inputs)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
        int k = cJSON_IsString(name) ? find_input(mi, name->valuestring) : -1;
        if (k < 0) {
            char names[200] = "";
            size_t used = 0;
            for (int i = 0; i < mi->ninputs && used < sizeof names; i++)
                used += (size_t)snprintf(names + used, sizeof names - used, "%s%.48s", i ? ", " : "",
                                         mi->inputs[i].name);
            snprintf(why, wl, "unknown input '%.64s' (model '%.100s' takes %.200s)",
                     cJSON_IsString(name) ? name->valuestring : "?", x->model, names);
            return 400;
        }
        if (byidx[k]) {
            snprintf(why, wl, "input '%s' given twice", mi->inputs[k].name);
            return 400;
        }
        byidx[k] = in;
    }
    for (int k = 0; k < n; k++)
        if (!byidx[k]) {
            snprintf(why, wl, "input '%s' is missing (inputs after it are optional, it is not)", mi->inputs[k].name);
            return 400;
        }
    struct infer_tensor t[INFER_MAX_TENSORS];
    memset(t, 0, sizeof t);
    for (int k = 0; k < n; k++) {
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(byidx[k], "datatype");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(byidx[k], "shape");
        int dtype = cJSON_IsString(dt) ? dtype_of(dt->valuestring) : 0;
        if (dtype != mi->inputs[k].dtype) {
            snprintf(why, wl, "input '%s': datatype must be %s, got %.16s", mi->inputs[k].name,
                     dtype_name(mi->inputs[k].dtype), cJSON_IsString(dt) ? dt->valuestring : "none");
            return 400;
        }
        if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != mi->inputs[k].ndims) {
            snprintf(why, wl, "input '%s': shape must have %d dimensions", mi->inputs[k].name, mi->inputs[k].ndims);
            return 400;
        }
        t[k].dtype = (uint8_t)dtype;
        t[k].ndims = mi->inputs[k].ndims;
        int d = 0;
        const cJSON *dim;
        cJSON_ArrayForEach(dim, shape)
        {
            double v = cJSON_IsNumber(dim) ? dim->valuedouble : -1;
            int64_t want = mi->inputs[k].dims[d];
            if (v < 1 || v != floor(v) || v > 1e12 || (want > 0 && (int64_t)v != want)) {
                snprintf(why, wl, "input '%s': dimension %d is %g, the model wants %" PRId64, mi->inputs[k].name, d,
                         cJSON_IsNumber(dim) ? dim->valuedouble : -1.0, want);
                return 400;
            }
            t[k].dims[d++] = (int64_t)v;
        }
        if (k > 0 && t[k].dims[0] != t[0].dims[0]) {
            snprintf(why, wl, "input '%s': batch %" PRId64 " differs from the first input's %" PRId64,
                     mi->inputs[k].name, t[k].dims[0], t[0].dims[0]);
            return 400;
        }
        if (infer_tensor_bytes(t[k].dtype, t[k].ndims, t[k].dims, x->h->max_body, &t[k].nbytes)) {
            snprintf(why, wl, "input '%s': shape too large", mi->inputs[k].name);
            return 400;
        }
    }
    /* Encode: headers first, data written in place. */
    struct wbuf wb;
    wbuf_init(&wb);
    wbuf_str(&wb, x->model);
    wbuf_u32(&wb, 0);
    wbuf_u32(&wb, (uint32_t)n);
    size_t off[INFER_MAX_TENSORS];
    for (int k = 0; k < n; k++)
        off[k] = infer_reserve_tensor(&wb, &t[k]);
    for (int k = 0; k < n; k++) {
        uint8_t *dst = wb.data + off[k];
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(byidx[k], "parameters");
        const cJSON *bsz = params ? cJSON_GetObjectItemCaseSensitive(params, "binary_data_size") : NULL;
        if (bsz) {
            if (!cJSON_IsNumber(bsz) || bsz->valuedouble != (double)t[k].nbytes) {
                snprintf(why, wl, "input '%s': binary_data_size must be %" PRIu64 " for that shape and datatype",
                         mi->inputs[k].name, t[k].nbytes);
                wbuf_free(&wb);
                return 400;
            }
            if (!x->binary || evbuffer_get_length(x->binary) < t[k].nbytes) {
                snprintf(why, wl, "input '%s': the binary data is shorter than binary_data_size", mi->inputs[k].name);
                wbuf_free(&wb);
                return 400;
            }
            evbuffer_remove(x->binary, dst, t[k].nbytes);
            continue;
        }
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(byidx[k], "data");
        if (!cJSON_IsArray(data)) {
            snprintf(why, wl, "input '%s': 'data' must be an array (or use binary_data_size)", mi->inputs[k].name);
            wbuf_free(&wb);
            return 400;
        }
        uint64_t count = 0, want = t[k].nbytes / infer_dtype_size(t[k].dtype);
        char fw[200] = "";
        if (flatten(data, t[k].dtype, dst, want, &count, fw, sizeof fw) || count != want) {
            if (count != want && !fw[0])
                snprintf(fw, sizeof fw, "data has %" PRIu64 " values, the shape says %" PRIu64, count, want);
            snprintf(why, wl, "input '%s': %s", mi->inputs[k].name, fw);
            wbuf_free(&wb);
            return 400;
        }
    }
    if (x->binary && evbuffer_get_length(x->binary)) {
        snprintf(why, wl, "%zu bytes of binary data left over after the inputs", evbuffer_get_length(x->binary));
        wbuf_free(&wb);
        return 400;
    }
    /* The outputs asked for. */
    x->want_binary = binary_flag(x->body, "binary_data_output");
    const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(x->body, "outputs");
    if (outputs) {
        if (!cJSON_IsArray(outputs) || cJSON_GetArraySize(outputs) > INFER_MAX_TENSORS) {
            snprintf(why, wl, "'outputs' must be an array of at most %d", INFER_MAX_TENSORS);
            wbuf_free(&wb);
            return 400;
        }
        const cJSON *o;
        cJSON_ArrayForEach(o, outputs)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
            int k = cJSON_IsString(name) ? find_output(mi, name->valuestring) : -1;
            if (k < 0) {
                snprintf(why, wl, "unknown output '%.64s'", cJSON_IsString(name) ? name->valuestring : "?");
                wbuf_free(&wb);
                return 400;
            }
            x->out_binary[x->nouts] = binary_flag(o, "binary_data") || x->want_binary;
            x->outs[x->nouts++] = k;
        }
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(x->body, "id");
    if (cJSON_IsString(id))
        snprintf(x->id, sizeof x->id, "%s", id->valuestring);
    struct evbuffer *p = evbuffer_new();
    evbuffer_add_reference(p, wb.data, wb.len, free_payload, NULL); /* no copy: freed when sent */
    *out = p;
    return 0;
}

/* ---- inference: answer ----------------------------------------------------- */

static void add_number_f32(struct evbuffer *b, float v)
{
    if (isfinite(v))
        evbuffer_add_printf(b, "%.9g", (double)v);
    else
        evbuffer_add(b, "null", 4);
}

static void reply_infer(struct hctx *x, struct evbuffer *payload)
{
    size_t len = evbuffer_get_length(payload);
    const uint8_t *p = evbuffer_pullup(payload, -1);
    struct infer_response resp;
    char why[200];
    if (infer_decode_response(p, len, &resp, why, sizeof why)) {
        reply_error(x->req, 500, "malformed answer from the server: %s", why);
        return;
    }
    int order[INFER_MAX_TENSORS], bin[INFER_MAX_TENSORS], n = 0;
    if (x->nouts) {
        for (int i = 0; i < x->nouts; i++) {
            order[n] = x->outs[i];
            bin[n++] = x->out_binary[i];
        }
    } else {
        for (int i = 0; i < resp.noutputs; i++) {
            order[n] = i;
            bin[n++] = x->want_binary;
        }
    }
    struct evbuffer *j = evbuffer_new();
    evbuffer_add(j, "{\"model_name\":", 14);
    json_escape(j, x->model);
    evbuffer_add(j, ",\"model_version\":\"1\"", 20);
    if (x->id[0]) {
        evbuffer_add(j, ",\"id\":", 6);
        json_escape(j, x->id);
    }
    evbuffer_add(j, ",\"outputs\":[", 12);
    int any_binary = 0;
    for (int i = 0; i < n; i++) {
        int k = order[i];
        if (k >= resp.noutputs)
            continue;
        const struct infer_tensor *o = &resp.outputs[k];
        evbuffer_add_printf(j, "%s{\"name\":", i ? "," : "");
        json_escape(j, k < x->mi.noutputs ? x->mi.outputs[k].name : "output");
        evbuffer_add_printf(j, ",\"datatype\":\"%s\",\"shape\":[", dtype_name(o->dtype));
        for (int d = 0; d < o->ndims; d++)
            evbuffer_add_printf(j, "%s%" PRId64, d ? "," : "", o->dims[d]);
        if (bin[i]) {
            evbuffer_add_printf(j, "],\"parameters\":{\"binary_data_size\":%" PRIu64 "}}", o->nbytes);
            any_binary = 1;
            continue;
        }
        evbuffer_add(j, "],\"data\":[", 10);
        uint64_t cnt = o->nbytes / infer_dtype_size(o->dtype);
        for (uint64_t e = 0; e < cnt; e++) {
            if (e)
                evbuffer_add(j, ",", 1);
            if (o->dtype == INFER_F32) {
                float v;
                memcpy(&v, (const uint8_t *)o->data + e * 4, 4);
                add_number_f32(j, v);
            } else {
                int64_t v;
                memcpy(&v, (const uint8_t *)o->data + e * 8, 8);
                evbuffer_add_printf(j, "%" PRId64, v);
            }
        }
        evbuffer_add(j, "]}", 2);
    }
    evbuffer_add(j, "]}", 2);
    struct evkeyvalq *hd = evhttp_request_get_output_headers(x->req);
    if (any_binary) {
        char hl[32];
        snprintf(hl, sizeof hl, "%zu", evbuffer_get_length(j));
        evhttp_add_header(hd, "Inference-Header-Content-Length", hl);
        evhttp_add_header(hd, "Content-Type", "application/octet-stream");
        for (int i = 0; i < n; i++)
            if (bin[i] && order[i] < resp.noutputs)
                evbuffer_add(j, resp.outputs[order[i]].data, resp.outputs[order[i]].nbytes);
    } else {
        evhttp_add_header(hd, "Content-Type", "application/json");
    }
    evhttp_send_reply(x->req, 200, "OK", j);
    evbuffer_free(j);
}

/* ---- the balancer's answers ------------------------------------------------ */

static void on_answer(void *arg, int status, const char *why, struct evbuffer *payload)
{
    struct hctx *x = arg;
    x->lr = NULL;
    if (x->dead) {
        ctx_free(x);
        return;
    }
    int more = status == 0 && x->stage == STAGE_INFO; /* the INFER follows */
    if (!more)
        detach(x);
    char text[600] = "";
    if (status) {
        if (why)
            snprintf(text, sizeof text, "%s", why);
        else if (payload) {
            size_t n = evbuffer_get_length(payload);
            n = n < sizeof text - 1 ? n : sizeof text - 1;
            evbuffer_copyout(payload, text, n);
            text[n] = '\0';
        }
        if (x->stage == STAGE_READY) {
            evhttp_send_reply(x->req, status == PPS_ENOTFOUND ? 404 : 503, "Not Ready", NULL);
        } else {
            reply_error(x->req, http_code(status), "%s", text[0] ? text : pps_strerror(status));
        }
        ctx_free(x);
        return;
    }
    if (x->stage == STAGE_INFER) {
        reply_infer(x, payload);
        ctx_free(x);
        return;
    }
    /* MODEL_INFO */
    size_t n = evbuffer_get_length(payload);
    if (infer_decode_model_info(evbuffer_pullup(payload, -1), n, &x->mi)) {
        reply_error(x->req, 500, "malformed model description");
        ctx_free(x);
        return;
    }
    if (x->stage == STAGE_META) {
        reply_metadata(x);
        ctx_free(x);
        return;
    }
    if (x->stage == STAGE_READY) {
        int ready = lb_ready_servers(x->h->lb) > 0;
        evhttp_send_reply(x->req, ready ? 200 : 503, ready ? "OK" : "Not Ready", NULL);
        ctx_free(x);
        return;
    }
    /* STAGE_INFO: now the inference itself */
    struct evbuffer *p = NULL;
    char bad[600];
    int code = build_infer(x, &p, bad, sizeof bad);
    if (code) {
        detach(x);
        reply_error(x->req, code, "%s", bad);
        ctx_free(x);
        return;
    }
    cJSON_Delete(x->body);
    x->body = NULL;
    x->stage = STAGE_INFER;
    ask(x, MSG_INFER, p);
}

/* ---- routing ------------------------------------------------------------------ */

static const char status_page[] =
#include "lb/lb_status_page.inc"
    ;

static void start_infer(struct lb_http *h, struct evhttp_request *req, const char *model)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t total = evbuffer_get_length(in);
    const char *hl = evhttp_find_header(evhttp_request_get_input_headers(req), "Inference-Header-Content-Length");
    size_t jlen = total;
    if (hl) {
        char *end;
        unsigned long long v = strtoull(hl, &end, 10);
        if (end == hl || *end || v > total) {
            reply_error(req, 400, "Inference-Header-Content-Length %.32s is not a length within the body", hl);
            return;
        }
        jlen = (size_t)v;
    }
    char *json = pps_xmalloc(jlen + 1);
    evbuffer_remove(in, json, jlen);
    json[jlen] = '\0';
    cJSON *body = cJSON_ParseWithLength(json, jlen);
    free(json);
    if (!body || !cJSON_IsObject(body)) {
        if (body)
            cJSON_Delete(body);
        reply_error(req, 400, "the request body is not a JSON object");
        return;
    }
    struct hctx *x = ctx_new(h, req, model, STAGE_INFO);
    x->body = body;
    if (evbuffer_get_length(in)) {
        x->binary = evbuffer_new();
        evbuffer_add_buffer(x->binary, in);
    }
    ask_model_info(x);
}

static void route(struct evhttp_request *req, void *arg)
{
    struct lb_http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    char *path = raw ? evhttp_uridecode(raw, 0, NULL) : NULL;
    if (!path) {
        reply_error(req, 400, "bad request path");
        return;
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    char model[256];
    const char *rest = NULL;
    if (strncmp(path, "/v2/models/", 11) == 0) {
        const char *m = path + 11;
        size_t k = strcspn(m, "/");
        if (k == 0 || k > 255) {
            reply_error(req, 400, "bad model name in the path");
            free(path);
            return;
        }
        memcpy(model, m, k);
        model[k] = '\0';
        rest = m + k;
        /* "/versions/<v>" is accepted and ignored: one version per name */
        if (strncmp(rest, "/versions/", 10) == 0) {
            rest += 10;
            rest += strcspn(rest, "/");
        }
        if (!wire_name_valid(model, 255)) {
            reply_error(req, 400, "bad model name '%.64s'", model);
            free(path);
            return;
        }
    }
    if (strcmp(path, "/v2/health/live") == 0 && get) {
        evhttp_send_reply(req, 200, "OK", NULL);
    } else if (strcmp(path, "/v2/health/ready") == 0 && get) {
        int n = lb_ready_servers(h->lb);
        if (n > 0)
            evhttp_send_reply(req, 200, "OK", NULL);
        else
            reply_error(req, 503, "no server registered");
    } else if ((strcmp(path, "/v2") == 0 || strcmp(path, "/v2/") == 0) && get) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "{\"name\":\"pipeps\",\"version\":\"1.0\",\"extensions\":[\"binary_tensor_data\"]}");
        reply_json(req, 200, b);
        evbuffer_free(b);
    } else if (rest && *rest == '\0' && get) {
        ask_model_info(ctx_new(h, req, model, STAGE_META));
    } else if (rest && strcmp(rest, "/ready") == 0 && get) {
        ask_model_info(ctx_new(h, req, model, STAGE_READY));
    } else if (rest && strcmp(rest, "/infer") == 0) {
        if (cmd != EVHTTP_REQ_POST)
            reply_error(req, 405, "use POST for /infer");
        else
            start_infer(h, req, model);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics_http_respond(req, lb_render_metrics, h->lb);
    } else if (strcmp(path, "/status.json") == 0 && get) {
        struct wbuf wb;
        wbuf_init(&wb);
        lb_render_status(h->lb, &wb);
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, wb.data, wb.len);
        wbuf_free(&wb);
        reply_json(req, 200, b);
        evbuffer_free(b);
    } else if (strcmp(path, "/") == 0 && get) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, status_page, sizeof status_page - 1);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/html; charset=utf-8");
        evhttp_send_reply(req, 200, "OK", b);
        evbuffer_free(b);
    } else {
        reply_error(req, 404, "no such endpoint: %.200s", path);
    }
    free(path);
}

int lb_http_start(struct lb_http **out, struct lb *lb, struct event_base *base, const char *addr, uint16_t port,
                  uint64_t max_body, double timeout_s, uint16_t *bound)
{
    *out = NULL;
    int fd;
    int rc = net_listen(addr, port, &fd);
    if (rc) {
        log_error("HTTP: cannot listen on %s:%u: %s", addr, port, rc == PPS_EBUSY ? "address already in use"
                                                                                  : pps_strerror(rc));
        return rc;
    }
    net_local_port(fd, bound);
    evutil_make_socket_nonblocking(fd);
    struct lb_http *h = pps_xcalloc(1, sizeof *h);
    h->lb = lb;
    h->max_body = max_body;
    h->http = evhttp_new(base);
    if (!h->http || evhttp_accept_socket(h->http, fd)) {
        if (h->http)
            evhttp_free(h->http);
        evutil_closesocket(fd);
        free(h);
        return PPS_EIO;
    }
    evhttp_set_max_body_size(h->http, (ev_ssize_t)max_body);
    evhttp_set_max_headers_size(h->http, 64 << 10);
    evhttp_set_timeout(h->http, (int)(timeout_s < 1 ? 1 : timeout_s));
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_gencb(h->http, route, h);
    *out = h;
    return 0;
}

void lb_http_stop(struct lb_http *h)
{
    if (!h)
        return;
    while (h->pending) {
        struct hctx *x = h->pending;
        if (x->lr) {
            lb_forget(h->lb, x->lr);
            x->lr = NULL;
        }
        ctx_free(x);
    }
    evhttp_free(h->http);
    free(h);
}
