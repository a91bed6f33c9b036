/* bench_lb: measures the load balancer's own cost (bench/bench_lb.sh runs
 * it against a live loopback cluster; docs/benchmarks.md has the figures).
 *
 *   bench_lb latency ADDR:PORT MODEL [--requests N] [--batch B]
 *       one request at a time (closed loop) on one connection: p50/p99/mean
 *       in microseconds; run against a server and against the balancer in
 *       front of it, the difference is what the balancer adds.
 *   bench_lb ping ADDR:PORT [--requests N]
 *       the same with PING frames: the loopback round trip of a frame,
 *       the floor under both.
 *   bench_lb throughput ADDR:PORT MODEL [--conns C] [--inflight W] [--seconds T]
 *       W requests in flight spread over C connections (a thread each,
 *       pipelined): answers per second.
 *   bench_lb http ADDR:PORT MODEL [--requests N] [--binary]
 *       the latency mode over the balancer's HTTP API (KServe v2, keep-alive):
 *       tiny_mlp's input as JSON, or as binary tensor data.
 *   bench_lb fake-servers LB_ADDR:LB_SERVER_PORT N [--model M]
 *       N stand-in servers that register with the balancer and answer every
 *       INFER at once with a fixed 10-float output: with them the balancer,
 *       not the servers, is the bottleneck of `throughput`. Prints each
 *       one's port, runs until killed.
 * Nothing here asserts; figures only. */
#include "lib/bench_util.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "server/server_proto.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_to(const char *hostport, int *fd)
{
    char host[256];
    uint16_t port;
    if (net_parse_hostport(hostport, host, sizeof host, &port)) {
        fprintf(stderr, "bench_lb: bad address '%s'\n", hostport);
        return PPS_EINVAL;
    }
    int rc = net_connect(host, port, 5000, fd);
    if (rc)
        fprintf(stderr, "bench_lb: cannot connect to %s: %s\n", hostport, pps_strerror(rc));
    return rc;
}

/* An INFER payload for a float32 [batch, 64] input (tiny_mlp's shape). */
static void build_request(struct wbuf *wb, const char *model, int batch)
{
    static float x[64 * 256];
    for (int i = 0; i < 64 * batch; i++)
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    struct infer_request r = {.ninputs = 1};
    snprintf(r.model, sizeof r.model, "%s", model);
    r.inputs[0] = (struct infer_tensor){.dtype = INFER_F32, .ndims = 2, .dims = {batch, 64},
                                        .nbytes = (uint64_t)batch * 64 * 4, .data = x};
    infer_encode_request(wb, &r);
}

static int cmp_d(const void *a, const void *b) { return bench_cmp_double(a, b); }

static void report(const char *what, double *us, int n)
{
    qsort(us, (size_t)n, sizeof *us, cmp_d);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += us[i];
    printf("%s requests %d p50_us %.1f p99_us %.1f mean_us %.1f min_us %.1f\n", what, n, us[n / 2],
           us[(int)(n * 0.99)], sum / n, us[0]);
}

static int cmd_latency(int argc, char **argv, int ping)
{
    struct args_option opts[] = {{"requests", 1, NULL}, {"batch", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) || a.npositional != (ping ? 1 : 2)) {
        fprintf(stderr, "usage: bench_lb %s ADDR:PORT%s [--requests N] [--batch B]\n", ping ? "ping" : "latency",
                ping ? "" : " MODEL");
        return 2;
    }
    int n = 2000, batch = 1;
    if (opts[0].value && args_parse_int(opts[0].value, 10, 10000000, &n))
        return 2;
    if (opts[1].value && args_parse_int(opts[1].value, 1, 256, &batch))
        return 2;
    int fd;
    if (connect_to(a.positional[0], &fd))
        return 1;
    struct wbuf wb;
    wbuf_init(&wb);
    if (ping)
        wbuf_put(&wb, "0123456789abcdef", 16);
    else
        build_request(&wb, a.positional[1], batch);
    double *us = calloc((size_t)n, sizeof *us);
    int warm = n / 10 + 10;
    for (int i = -warm; i < n; i++) {
        double t0 = bench_now_s();
        uint8_t *resp = NULL;
        uint64_t len = 0;
        int rc = frame_call(fd, ping ? MSG_PING : MSG_INFER, wb.data, wb.len, &resp, &len, 1u << 30);
        double t1 = bench_now_s();
        free(resp);
        if (rc) {
            fprintf(stderr, "bench_lb: request failed: %s\n", pps_strerror(rc));
            return 1;
        }
        if (i >= 0)
            us[i] = (t1 - t0) * 1e6;
    }
    report(ping ? "ping" : "latency", us, n);
    free(us);
    wbuf_free(&wb);
    close(fd);
    return 0;
}

struct tp_worker {
    const char *addr;
    const struct wbuf *req;
    int inflight;
    double seconds;
    uint64_t done;
    int failed;
    pthread_t th;
};

static void *tp_run(void *arg)
{
    struct tp_worker *w = arg;
    int fd;
    if (connect_to(w->addr, &fd)) {
        w->failed = 1;
        return NULL;
    }
    uint64_t rid = 1;
    struct frame_header h = {.type = MSG_INFER};
    for (int i = 0; i < w->inflight; i++) {
        h.request_id = rid++;
        frame_send(fd, &h, w->req->data, w->req->len);
    }
    double end = bench_now_s() + w->seconds;
    while (bench_now_s() < end) {
        struct frame_header r;
        uint8_t *p = NULL;
        if (frame_recv(fd, &r, &p, 1u << 30) || r.status) {
            free(p);
            w->failed = 1;
            break;
        }
        free(p);
        w->done++;
        h.request_id = rid++;
        if (frame_send(fd, &h, w->req->data, w->req->len)) {
            w->failed = 1;
            break;
        }
    }
    close(fd);
    return NULL;
}

static int cmd_throughput(int argc, char **argv)
{
    struct args_option opts[] = {{"conns", 1, NULL}, {"inflight", 1, NULL}, {"seconds", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 3, &a, &help) || a.npositional != 2) {
        fprintf(stderr, "usage: bench_lb throughput ADDR:PORT MODEL [--conns C] [--inflight W] [--seconds T]\n");
        return 2;
    }
    int conns = 4, inflight = 64, seconds = 5;
    if ((opts[0].value && args_parse_int(opts[0].value, 1, 256, &conns)) ||
        (opts[1].value && args_parse_int(opts[1].value, 1, 65536, &inflight)) ||
        (opts[2].value && args_parse_int(opts[2].value, 1, 3600, &seconds)))
        return 2;
    struct wbuf req;
    wbuf_init(&req);
    build_request(&req, a.positional[1], 1);
    struct tp_worker *w = calloc((size_t)conns, sizeof *w);
    double t0 = bench_now_s();
    for (int i = 0; i < conns; i++) {
        w[i] = (struct tp_worker){.addr = a.positional[0], .req = &req, .seconds = seconds,
                                  .inflight = inflight / conns + (i < inflight % conns)};
        pthread_create(&w[i].th, NULL, tp_run, &w[i]);
    }
    uint64_t done = 0;
    int failed = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(w[i].th, NULL);
        done += w[i].done;
        failed |= w[i].failed;
    }
    double t = bench_now_s() - t0;
    printf("throughput conns %d inflight %d seconds %.2f answers %" PRIu64 " per_s %.0f%s\n", conns, inflight, t, done,
           (double)done / t, failed ? " (some requests failed)" : "");
    free(w);
    wbuf_free(&req);
    return failed;
}

/* ---- HTTP (KServe v2) ------------------------------------------------------ */

/* One keep-alive connection's POST of body to path; 0 on a 200 answer. */
static int http_post(int fd, const char *path, const char *body, size_t len, size_t json_len, char *buf, size_t cap)
{
    char head[512];
    int n = json_len ? snprintf(head, sizeof head,
                                "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                                "Inference-Header-Content-Length: %zu\r\nContent-Length: %zu\r\n\r\n",
                                path, json_len, len)
                     : snprintf(head, sizeof head,
                                "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                                "Content-Length: %zu\r\n\r\n",
                                path, len);
    struct iovec iov[2] = {{head, (size_t)n}, {(void *)body, len}};
    if (net_writev_full(fd, iov, 2))
        return -1;
    /* headers, then Content-Length bytes */
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        ssize_t r = read(fd, buf + got, cap - 1 - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
        buf[got] = '\0';
        end = strstr(buf, "\r\n\r\n");
        if (!end && got >= cap - 1)
            return -1;
    }
    int status = atoi(buf + 9);
    const char *cl = strcasestr(buf, "Content-Length:");
    size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
    size_t have = got - (size_t)(end + 4 - buf);
    while (have < want) {
        char tmp[65536];
        ssize_t r = read(fd, tmp, want - have < sizeof tmp ? want - have : sizeof tmp);
        if (r <= 0)
            return -1;
        have += (size_t)r;
    }
    return status == 200 ? 0 : -1;
}

/* The tiny_mlp request as JSON, or as a JSON header plus binary data. */
static void http_body(struct wbuf *wb, int binary, size_t *json_len)
{
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    char head[512];
    if (binary) {
        int n = snprintf(head, sizeof head,
                         "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,64],\"datatype\":\"FP32\","
                         "\"parameters\":{\"binary_data_size\":256}}],\"parameters\":{\"binary_data_output\":true}}");
        wbuf_put(wb, head, (size_t)n);
        *json_len = (size_t)n;
        wbuf_put(wb, x, sizeof x);
        return;
    }
    int n = snprintf(head, sizeof head, "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,64],\"datatype\":\"FP32\",\"data\":[");
    wbuf_put(wb, head, (size_t)n);
    for (int i = 0; i < 64; i++) {
        n = snprintf(head, sizeof head, "%s%.9g", i ? "," : "", (double)x[i]);
        wbuf_put(wb, head, (size_t)n);
    }
    wbuf_put(wb, "]}]}", 4);
    *json_len = 0;
}

static int cmd_http(int argc, char **argv)
{
    struct args_option opts[] = {{"requests", 1, NULL}, {"binary", 0, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 2, &a, &help) || a.npositional != 2) {
        fprintf(stderr, "usage: bench_lb http ADDR:PORT MODEL [--requests N] [--binary]\n");
        return 2;
    }
    int n = 2000;
    if (opts[0].value && args_parse_int(opts[0].value, 10, 10000000, &n))
        return 2;
    int binary = opts[1].value != NULL;
    int fd;
    if (connect_to(a.positional[0], &fd))
        return 1;
    char path[512];
    snprintf(path, sizeof path, "/v2/models/%s/infer", a.positional[1]);
    struct wbuf body;
    wbuf_init(&body);
    size_t json_len = 0;
    http_body(&body, binary, &json_len);
    char *buf = malloc(1 << 20);
    double *us = calloc((size_t)n, sizeof *us);
    int warm = n / 10 + 10;
    for (int i = -warm; i < n; i++) {
        double t0 = bench_now_s();
        if (http_post(fd, path, (const char *)body.data, body.len, json_len, buf, 1 << 20)) {
            fprintf(stderr, "bench_lb: HTTP request failed: %.200s\n", buf);
            return 1;
        }
        if (i >= 0)
            us[i] = (bench_now_s() - t0) * 1e6;
    }
    report(binary ? "http_binary" : "http_json", us, n);
    free(us);
    free(buf);
    wbuf_free(&body);
    close(fd);
    return 0;
}

/* ---- stand-in servers --------------------------------------------------- */

struct fake {
    int listen_fd;
    uint16_t port;
    const char *lb;
    const char *model;
    struct wbuf answer;
};

static void *fake_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct wbuf answer;
    wbuf_init(&answer);
    struct infer_timing t = {.source = 0};
    infer_encode_response_head(&answer, &t, 1);
    float y[10] = {0};
    struct infer_tensor out = {.dtype = INFER_F32, .ndims = 2, .dims = {1, 10}, .nbytes = 40, .data = y};
    infer_encode_tensor(&answer, &out);
    for (;;) {
        struct frame_header h;
        uint8_t *p = NULL;
        if (frame_recv(fd, &h, &p, 1u << 30)) {
            free(p);
            break;
        }
        free(p);
        struct frame_header r = {.type = h.type, .flags = FRAME_FLAG_RESPONSE, .request_id = h.request_id};
        int rc = h.type == MSG_INFER ? frame_send(fd, &r, answer.data, answer.len) : frame_send(fd, &r, NULL, 0);
        if (rc)
            break;
    }
    close(fd);
    wbuf_free(&answer);
    return NULL;
}

static void *fake_accept(void *arg)
{
    struct fake *f = arg;
    for (;;) {
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        net_set_nodelay(fd);
        pthread_t th;
        pthread_create(&th, NULL, fake_conn, (void *)(intptr_t)fd);
        pthread_detach(th);
    }
    return NULL;
}

/* Register once and keep the link open (the balancer drops a server whose
 * registration connection closes). */
static void *fake_register(void *arg)
{
    struct fake *f = arg;
    int fd;
    while (connect_to(f->lb, &fd))
        sleep(1);
    struct lb_server_register reg = {.client_port = f->port, .cache_port = 1, .memory_capacity = 1u << 30};
    snprintf(reg.client_addr, sizeof reg.client_addr, "127.0.0.1");
    snprintf(reg.cache_addr, sizeof reg.cache_addr, "127.0.0.1");
    struct wbuf wb;
    wbuf_init(&wb);
    lb_server_encode_register(&wb, &reg);
    uint8_t *resp = NULL;
    uint64_t n = 0;
    int rc = frame_call(fd, MSG_LB_SERVER_REGISTER, wb.data, wb.len, &resp, &n, 1 << 20);
    free(resp);
    wbuf_free(&wb);
    if (rc)
        fprintf(stderr, "bench_lb: fake server %u: registration refused: %s\n", f->port, pps_strerror(rc));
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
    return NULL;
}

static int cmd_fake_servers(int argc, char **argv)
{
    struct args_option opts[] = {{"model", 1, NULL}};
    struct args a;
    int help = 0, n = 0;
    if (args_split(argc, argv, opts, 1, &a, &help) || a.npositional != 2 ||
        args_parse_int(a.positional[1], 1, 64, &n)) {
        fprintf(stderr, "usage: bench_lb fake-servers LB_ADDR:LB_SERVER_PORT N\n");
        return 2;
    }
    net_ignore_sigpipe();
    struct fake *f = calloc((size_t)n, sizeof *f);
    for (int i = 0; i < n; i++) {
        f[i].lb = a.positional[0];
        if (net_listen("127.0.0.1", 0, &f[i].listen_fd) || net_local_port(f[i].listen_fd, &f[i].port))
            return 1;
        pthread_t th;
        pthread_create(&th, NULL, fake_accept, &f[i]);
        pthread_create(&th, NULL, fake_register, &f[i]);
        printf("fake server 127.0.0.1:%u\n", f[i].port);
    }
    fflush(stdout);
    for (;;)
        pause();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_lb latency|ping|throughput|fake-servers ...\n");
        return 2;
    }
    if (strcmp(argv[1], "latency") == 0)
        return cmd_latency(argc - 1, argv + 1, 0);
    if (strcmp(argv[1], "ping") == 0)
        return cmd_latency(argc - 1, argv + 1, 1);
    if (strcmp(argv[1], "throughput") == 0)
        return cmd_throughput(argc - 1, argv + 1);
    if (strcmp(argv[1], "fake-servers") == 0)
        return cmd_fake_servers(argc - 1, argv + 1);
    if (strcmp(argv[1], "http") == 0)
        return cmd_http(argc - 1, argv + 1);
    fprintf(stderr, "bench_lb: unknown mode '%s'\n", argv[1]);
    return 2;
}
