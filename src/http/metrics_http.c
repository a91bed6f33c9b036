/* metrics_http: see metrics_http.h.
 *
 * One struct evhttp per endpoint, with a callback for "/metrics" and a
 * generic one answering 404. Scrapes are small and rare, so the limits are
 * tight: 8 KiB of headers, 4 KiB of body, 10 s to send a request or read an
 * answer. The started flavour owns its event base and a thread that runs
 * it; metrics_http_stop wakes that loop through an eventfd (the base is
 * never touched from another thread, so libevent needs no locking), joins
 * the thread, then frees everything. The easy thing to get wrong: the
 * thread must not take the daemon's signals (SIGTERM goes to the thread
 * that waits for it), so it starts with every signal blocked. */
#include "http/metrics_http.h"
#include "common/err.h"
#include "common/log.h"
#include "common/net.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_HEADERS_SIZE 8192
#define MAX_BODY_SIZE 4096
#define TIMEOUT_S 10

struct metrics_http {
    struct event_base *base;
    int own_base;          /* started: base and thread are ours */
    struct evhttp *http;
    metrics_render_fn render;
    void *arg;
    pthread_t thread;
    int thread_started;
    int stop_fd;           /* eventfd that ends the thread's loop */
    struct event *stop_ev;
};

int metrics_http_listen(const char *addr, uint16_t port, int *fd_out, uint16_t *bound_port,
                        char *err, size_t errlen)
{
    char why[200];
    int fd;
    int rc = net_listen_msg(addr, port, &fd, why, sizeof why);
    if (rc)
        return pps_fail(err, errlen, rc, "metrics: %s", why);
    uint16_t p = port;
    if ((rc = net_local_port(fd, &p)) != 0) {
        close(fd);
        return pps_fail(err, errlen, rc, "metrics: cannot read the bound port: %s",
                        pps_strerror(rc));
    }
    *fd_out = fd;
    if (bound_port)
        *bound_port = p;
    return 0;
}

/* A short plain-text answer (the body is left out if it cannot be built). */
static void send_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *body = evbuffer_new();
    if (body)
        evbuffer_add(body, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    evhttp_send_reply(req, code, reason, body);
    if (body)
        evbuffer_free(body);
}

static void free_text(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

void metrics_http_respond(struct evhttp_request *req, metrics_render_fn render, void *arg)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        /* evhttp_send_error would drop the Allow header */
        evhttp_add_header(headers, "Allow", "GET, HEAD");
        send_text(req, 405, "Method Not Allowed", "only GET and HEAD here\n");
        return;
    }
    struct wbuf text;
    wbuf_init(&text);
    render(&text, arg);
    /* The rendered bytes go out by reference: the evbuffer frees them. */
    struct evbuffer *body = evbuffer_new();
    if (!body || (text.len && evbuffer_add_reference(body, text.data, text.len, free_text, NULL))) {
        wbuf_free(&text);
        if (body)
            evbuffer_free(body);
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    if (!text.len)
        wbuf_free(&text);
    evhttp_add_header(headers, "Content-Type", METRICS_HTTP_CONTENT_TYPE);
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_send_reply(req, 200, "OK", body);
    evbuffer_free(body);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
    struct metrics_http *m = arg;
    metrics_http_respond(req, m->render, m->arg);
}

static void not_found_cb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    send_text(req, 404, "Not Found", "not found: this endpoint serves /metrics only\n");
}

/* The evhttp on m->base, serving fd (closed on failure). */
static int setup_http(struct metrics_http *m, int fd)
{
    m->http = evhttp_new(m->base);
    if (!m->http) {
        close(fd);
        return PPS_ENOMEM;
    }
    evhttp_set_max_headers_size(m->http, MAX_HEADERS_SIZE);
    evhttp_set_max_body_size(m->http, MAX_BODY_SIZE);
    evhttp_set_timeout(m->http, TIMEOUT_S);
    if (evhttp_set_cb(m->http, "/metrics", metrics_cb, m) != 0) {
        close(fd);
        return PPS_ENOMEM;
    }
    evhttp_set_gencb(m->http, not_found_cb, m);
    if (evutil_make_socket_nonblocking(fd) != 0 || !evhttp_accept_socket_with_handle(m->http, fd)) {
        close(fd);
        return PPS_ENOMEM;
    }
    return 0; /* fd belongs to the evhttp now */
}

static void endpoint_free(struct metrics_http *m)
{
    if (m->http)
        evhttp_free(m->http); /* closes the listener and open connections */
    if (m->stop_ev)
        event_free(m->stop_ev);
    if (m->stop_fd >= 0)
        close(m->stop_fd);
    if (m->own_base && m->base)
        event_base_free(m->base);
    free(m);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct metrics_http *m = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
    event_base_loopbreak(m->base);
}

static void *thread_main(void *arg)
{
    struct metrics_http *m = arg;
    event_base_dispatch(m->base);
    return NULL;
}

int metrics_http_start(struct metrics_http **out, int fd, metrics_render_fn render, void *arg)
{
    *out = NULL;
    struct metrics_http *m = pps_xcalloc(1, sizeof *m);
    m->render = render;
    m->arg = arg;
    m->own_base = 1;
    m->stop_fd = -1;
    m->base = event_base_new();
    if (!m->base) {
        close(fd);
        endpoint_free(m);
        return PPS_ENOMEM;
    }
    int rc = setup_http(m, fd);
    if (rc) {
        endpoint_free(m);
        return rc;
    }
    m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->stop_fd < 0) {
        endpoint_free(m);
        return PPS_ENOMEM;
    }
    m->stop_ev = event_new(m->base, m->stop_fd, EV_READ, stop_cb, m);
    if (!m->stop_ev || event_add(m->stop_ev, NULL) != 0) {
        endpoint_free(m);
        return PPS_ENOMEM;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&m->thread, NULL, thread_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        log_error("metrics: cannot start a thread: %s", strerror(err));
        endpoint_free(m);
        return PPS_ENOMEM;
    }
    m->thread_started = 1;
    *out = m;
    return 0;
}

int metrics_http_attach(struct metrics_http **out, struct event_base *base, int fd,
                        metrics_render_fn render, void *arg)
{
    *out = NULL;
    struct metrics_http *m = pps_xcalloc(1, sizeof *m);
    m->render = render;
    m->arg = arg;
    m->base = base;
    m->stop_fd = -1;
    int rc = setup_http(m, fd);
    if (rc) {
        endpoint_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void metrics_http_stop(struct metrics_http *m)
{
    if (!m)
        return;
    if (m->thread_started) {
        uint64_t one = 1;
        ssize_t r = write(m->stop_fd, &one, sizeof one);
        PPS_ASSERT(r == (ssize_t)sizeof one);
        pthread_join(m->thread, NULL);
    }
    endpoint_free(m);
}
