/* infer_client: see infer_client.h.
 *
 * Without --input the client asks the server for the model's input spec
 * (MODEL_INFO) and generates a deterministic first input: float32 uniform
 * in [-1, 1), int64 (token ids) uniform in [0, 1000), from a SplitMix64
 * stream seeded by --seed and the input index; later inputs (optional ones,
 * such as bert_base's attention mask) are left out. One connection
 * carries every repetition, so --repeat measures the server, not TCP
 * set-up. */
#include "server/infer_client.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "formats/npy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

int infer_call(int fd, const struct infer_request *req, uint8_t **payload, struct infer_response *resp,
               char *err, size_t errlen)
{
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_request(&wb, req);
    uint8_t *p = NULL;
    uint64_t n = 0;
    int rc = frame_call(fd, MSG_INFER, wb.data, wb.len, &p, &n, UINT64_C(16) << 30);
    wbuf_free(&wb);
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "%s%s%.*s", pps_strerror(rc), p ? ": " : "", (int)(p ? n : 0),
                     p ? (const char *)p : "");
        free(p);
        return rc;
    }
    rc = infer_decode_response(p, n, resp, err, errlen);
    if (rc) {
        free(p);
        return rc;
    }
    *payload = p;
    return 0;
}

int infer_model_info(int fd, const char *model, struct infer_model_info *mi, char *err, size_t errlen)
{
    struct wbuf wb;
    wbuf_init(&wb);
    infer_encode_model(&wb, model);
    uint8_t *p = NULL;
    uint64_t n = 0;
    int rc = frame_call(fd, MSG_MODEL_INFO, wb.data, wb.len, &p, &n, INFER_MAX_CONTROL);
    wbuf_free(&wb);
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "%s%s%.*s", pps_strerror(rc), p ? ": " : "", (int)(p ? n : 0),
                     p ? (const char *)p : "");
    } else {
        rc = infer_decode_model_info(p, n, mi);
        if (rc && err && errlen)
            snprintf(err, errlen, "malformed MODEL_INFO response");
    }
    free(p);
    return rc;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void generate(const struct infer_tensor *t, uint64_t seed, int idx, void *buf)
{
    uint64_t s = seed * 1000003ull + (uint64_t)idx;
    uint64_t n = t->nbytes / infer_dtype_size(t->dtype);
    if (t->dtype == INFER_F32) {
        float *f = buf;
        for (uint64_t i = 0; i < n; i++)
            f[i] = (float)((double)(splitmix(&s) >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
    } else {
        int64_t *v = buf;
        for (uint64_t i = 0; i < n; i++)
            v[i] = (int64_t)(splitmix(&s) % 1000);
    }
}

int infer_build_request(int fd, const char *model, int batch, uint64_t seed, const char *npy_path,
                        struct infer_request *req, void **owned, char *err, size_t errlen)
{
    memset(req, 0, sizeof *req);
    *owned = NULL;
    snprintf(req->model, sizeof req->model, "%s", model);
    struct infer_tensor *t = &req->inputs[0];
    req->ninputs = 1;
    if (npy_path) {
        struct npy_array in;
        char why[512];
        int rc = npy_read_file(npy_path, &in, why, sizeof why);
        if (rc)
            return pps_fail(err, errlen, rc, "%s", why);
        if (in.ndims < 1) {
            npy_free(&in);
            return pps_fail(err, errlen, PPS_ESHAPE, "%s: the input needs a batch dimension", npy_path);
        }
        t->dtype = (uint8_t)in.dtype;
        t->ndims = in.ndims;
        memcpy(t->dims, in.dims, sizeof t->dims);
        t->nbytes = in.nbytes;
        t->data = in.data;
        *owned = in.data; /* npy_free would only free this */
        return 0;
    }
    struct infer_model_info mi;
    char why[512];
    int rc = infer_model_info(fd, model, &mi, why, sizeof why);
    if (rc)
        return pps_fail(err, errlen, rc, "%s", why);
    if (mi.ninputs < 1)
        return pps_fail(err, errlen, PPS_EPROTO, "%s: the model has no inputs", model);
    /* Only the first input is generated: a model's later inputs are
     * optional ones (bert_base's attention_mask, token_type_ids) that the
     * server fills with their defaults when left out. */
    t->dtype = mi.inputs[0].dtype;
    t->ndims = mi.inputs[0].ndims;
    for (int d = 0; d < t->ndims; d++)
        t->dims[d] = d == 0 ? batch : mi.inputs[0].dims[d];
    if (infer_tensor_bytes(t->dtype, t->ndims, t->dims, UINT64_C(1) << 34, &t->nbytes))
        return pps_fail(err, errlen, PPS_ESHAPE, "%s: unusable input spec", model);
    void *gen = malloc(t->nbytes ? t->nbytes : 1);
    if (!gen)
        return pps_fail(err, errlen, PPS_ENOMEM, "out of memory for %s's input", model);
    generate(t, seed, 0, gen);
    t->data = gen;
    *owned = gen;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps infer ADDR:PORT MODEL [--batch N] [--input x.npy] [--output y.npy]\n"
            "                    [--repeat R] [--seed S] [--quiet]\n"
            "  Sends MODEL an input and prints the server's timing breakdown per request.\n"
            "  --batch N      batch size of the generated input (default 1)\n"
            "  --input x.npy  the input tensor (float32 or int64); default: generated from the\n"
            "                 model's input spec (MODEL_INFO), deterministic in --seed\n"
            "  --output y.npy write the (last) response's first output\n"
            "  --repeat R     send R requests, one after the other (default 1)\n"
            "  --seed S       seed of the generated input (default 1)\n"
            "  --quiet        print only the summary line\n");
}

static const char *source_name(uint8_t s)
{
    return s == INFER_SRC_RESIDENT ? "resident" : s == INFER_SRC_CACHE ? "cache" : "storage";
}

int infer_main(int argc, char **argv)
{
    enum { O_BATCH, O_INPUT, O_OUTPUT, O_REPEAT, O_SEED, O_QUIET, O_N };
    struct args_option opts[O_N] = {
        {"batch", 1, NULL}, {"input", 1, NULL}, {"output", 1, NULL},
        {"repeat", 1, NULL}, {"seed", 1, NULL}, {"quiet", 0, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, O_N, &a, &help) || a.npositional != 2) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    int batch = 1, repeat = 1, seed = 1;
    if ((opts[O_BATCH].value && args_parse_int(opts[O_BATCH].value, 1, 1 << 20, &batch)) ||
        (opts[O_REPEAT].value && args_parse_int(opts[O_REPEAT].value, 1, 1 << 24, &repeat)) ||
        (opts[O_SEED].value && args_parse_int(opts[O_SEED].value, 0, 1 << 30, &seed))) {
        fprintf(stderr, "infer: bad --batch, --repeat or --seed\n");
        return 2;
    }
    char host[64];
    uint16_t port;
    if (net_parse_hostport(a.positional[0], host, sizeof host, &port)) {
        fprintf(stderr, "infer: bad address '%s' (HOST:PORT)\n", a.positional[0]);
        return 2;
    }
    const char *model = a.positional[1];
    if (!infer_valid_model_name(model)) {
        fprintf(stderr, "infer: bad model name '%s'\n", model);
        return 2;
    }
    int fd = -1;
    int rc = net_connect(host, port, 5000, &fd);
    if (rc) {
        fprintf(stderr, "infer: cannot connect to %s:%u: %s\n", host, port, pps_strerror(rc));
        return 1;
    }
    net_set_bufsize(fd, 4 << 20);

    struct infer_request req;
    void *owned = NULL;
    char err[1024];
    int status = 1;
    if ((rc = infer_build_request(fd, model, batch, (uint64_t)seed, opts[O_INPUT].value, &req, &owned, err,
                                  sizeof err))) {
        fprintf(stderr, "infer: %s\n", err);
        goto out;
    }

    double *lat = calloc((size_t)repeat, sizeof *lat);
    double *srv_total = calloc((size_t)repeat, sizeof *srv_total);
    uint8_t *last = NULL;
    struct infer_response resp;
    int done = 0;
    for (int i = 0; i < repeat; i++) {
        uint8_t *p = NULL;
        double t0 = now_ms();
        rc = infer_call(fd, &req, &p, &resp, err, sizeof err);
        double t1 = now_ms();
        if (rc) {
            fprintf(stderr, "infer: request %d: %s\n", i + 1, err);
            break;
        }
        free(last);
        last = p;
        lat[done] = t1 - t0;
        srv_total[done++] = resp.timing.total_us / 1e3;
        const struct infer_timing *t = &resp.timing;
        if (!opts[O_QUIET].value)
            printf("request %d: %.3f ms at the client; server: total %.3f ms = queue %.3f + wait %.3f "
                   "+ compute %.3f (+ load %.3f); from %s, %s; %u batches (%u there at start), "
                   "last batch at %.3f ms, exec %.3f..%.3f ms\n",
                   i + 1, t1 - t0, t->total_us / 1e3, t->queue_us / 1e3, t->wait_us / 1e3,
                   t->compute_us / 1e3, t->load_us / 1e3, source_name(t->source),
                   t->mode == INFER_MODE_STOP_AND_START ? "stop-and-start" : "pipelined",
                   t->nbatches, t->batches_at_start, t->last_batch_us / 1e3,
                   t->exec_start_us / 1e3, t->exec_end_us / 1e3);
    }
    if (done > 0) {
        qsort(lat, (size_t)done, sizeof *lat, cmp_double);
        qsort(srv_total, (size_t)done, sizeof *srv_total, cmp_double);
        const struct infer_tensor *o = &resp.outputs[0];
        char shape[128] = "";
        size_t n = 0;
        for (int d = 0; d < o->ndims && n < sizeof shape; d++)
            n += (size_t)snprintf(shape + n, sizeof shape - n, d ? "x%" PRId64 : "%" PRId64, o->dims[d]);
        printf("%s: %d request(s), client latency min %.3f / median %.3f ms, server total min %.3f / "
               "median %.3f ms; output %s %s\n",
               model, done, lat[0], lat[done / 2], srv_total[0], srv_total[done / 2],
               infer_dtype_name(o->dtype), shape);
        if (opts[O_OUTPUT].value && resp.noutputs > 0) {
            rc = npy_write_file(opts[O_OUTPUT].value, (enum npy_dtype)o->dtype, o->ndims, o->dims,
                                o->data, o->nbytes);
            if (rc)
                fprintf(stderr, "infer: cannot write %s: %s\n", opts[O_OUTPUT].value, pps_strerror(rc));
        }
        if (done == repeat && rc == 0)
            status = 0;
    }
    free(last);
    free(lat);
    free(srv_total);
out:
    free(owned);
    close(fd);
    return status;
}
