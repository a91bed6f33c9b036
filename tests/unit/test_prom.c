/* Unit tests for http/prom (the Prometheus text writer and histograms) and
 * http/metrics_http (the /metrics endpoint, on its own thread and attached
 * to a caller's event base), spoken to over a real loopback socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <event2/event.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/net.h"
#include "http/metrics_http.h"
#include "http/prom.h"

/* wbuf contents as a NUL-terminated string (the caller frees). */
static char *text_of(struct wbuf *wb)
{
    char *s = malloc(wb->len + 1);
    assert_non_null(s);
    memcpy(s, wb->data, wb->len);
    s[wb->len] = '\0';
    return s;
}

static void test_head_and_samples(void **state)
{
    (void)state;
    struct wbuf wb;
    wbuf_init(&wb);
    prom_head(&wb, "pipeps_x_total", PROM_COUNTER, "Things done.\nSecond line \\ here.");
    struct prom_label l[2] = {{"model", "a\"b\\c\nd"}, {"source", "cache"}};
    prom_u64(&wb, "pipeps_x_total", l, 2, 18446744073709551615ull);
    prom_u64(&wb, "pipeps_x_total", NULL, 0, 0);
    prom_metric_f64(&wb, PROM_GAUGE, "pipeps_ratio", "", 0.1);
    prom_f64(&wb, "pipeps_ratio", NULL, 0, 1.0 / 3.0);
    prom_f64(&wb, "pipeps_ratio", NULL, 0, INFINITY);
    prom_f64(&wb, "pipeps_ratio", NULL, 0, -INFINITY);
    prom_f64(&wb, "pipeps_ratio", NULL, 0, NAN);
    prom_f64(&wb, "pipeps_ratio", NULL, 0, 12345678);
    char *s = text_of(&wb);
    const char *want =
        "# HELP pipeps_x_total Things done.\\nSecond line \\\\ here.\n"
        "# TYPE pipeps_x_total counter\n"
        "pipeps_x_total{model=\"a\\\"b\\\\c\\nd\",source=\"cache\"} 18446744073709551615\n"
        "pipeps_x_total 0\n"
        "# HELP pipeps_ratio \n"
        "# TYPE pipeps_ratio gauge\n"
        "pipeps_ratio 0.1\n"
        "pipeps_ratio 0.3333333333333333\n"
        "pipeps_ratio +Inf\n"
        "pipeps_ratio -Inf\n"
        "pipeps_ratio NaN\n"
        "pipeps_ratio 12345678\n";
    assert_string_equal(s, want);
    /* the shortest text that reads back exactly */
    assert_true(strtod("0.3333333333333333", NULL) == 1.0 / 3.0);
    free(s);
    wbuf_free(&wb);
}

static void test_name_valid(void **state)
{
    (void)state;
    assert_true(prom_name_valid("pipeps_server_requests_total"));
    assert_true(prom_name_valid("a:b_c9"));
    assert_true(prom_name_valid("_x"));
    assert_false(prom_name_valid(""));
    assert_false(prom_name_valid("9abc"));
    assert_false(prom_name_valid("a-b"));
    assert_false(prom_name_valid("a b"));
    assert_false(prom_name_valid(NULL));
}

static void test_histogram(void **state)
{
    (void)state;
    struct prom_hist h;
    prom_hist_init(&h, NULL, 0);
    assert_int_equal(h.nbounds, PROM_LATENCY_NBOUNDS);
    assert_true(h.bounds[0] == 0.001 && h.bounds[h.nbounds - 1] == 10);
    prom_hist_observe(&h, 0.0005); /* le 0.001 */
    prom_hist_observe(&h, 0.001);  /* le 0.001: the bound itself is inside */
    prom_hist_observe(&h, 0.003);  /* le 0.005 */
    prom_hist_observe(&h, 2.0);    /* le 2.5 */
    prom_hist_observe(&h, 60.0);   /* only +Inf */
    prom_hist_observe(&h, -1.0);   /* counts as 0 */
    struct wbuf wb;
    wbuf_init(&wb);
    struct prom_label l = {"model", "m"};
    prom_head(&wb, "pipeps_lat_seconds", PROM_HISTOGRAM, "Latency.");
    prom_hist_write(&wb, "pipeps_lat_seconds", &l, 1, &h);
    char *s = text_of(&wb);
    const char *want =
        "# HELP pipeps_lat_seconds Latency.\n"
        "# TYPE pipeps_lat_seconds histogram\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.001\"} 3\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.0025\"} 3\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.005\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.01\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.025\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.05\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.1\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.25\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"0.5\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"1\"} 4\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"2.5\"} 5\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"5\"} 5\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"10\"} 5\n"
        "pipeps_lat_seconds_bucket{model=\"m\",le=\"+Inf\"} 6\n"
        "pipeps_lat_seconds_sum{model=\"m\"} 62.0045\n"
        "pipeps_lat_seconds_count{model=\"m\"} 6\n";
    assert_string_equal(s, want);
    free(s);

    /* custom bounds, no labels */
    static const double bounds[] = {1, 10};
    prom_hist_init(&h, bounds, 2);
    prom_hist_observe(&h, 10);
    wbuf_reset(&wb);
    prom_hist_write(&wb, "pipeps_n", NULL, 0, &h);
    s = text_of(&wb);
    assert_string_equal(s, "pipeps_n_bucket{le=\"1\"} 0\n"
                           "pipeps_n_bucket{le=\"10\"} 1\n"
                           "pipeps_n_bucket{le=\"+Inf\"} 1\n"
                           "pipeps_n_sum 10\n"
                           "pipeps_n_count 1\n");
    free(s);
    wbuf_free(&wb);
}

/* Many threads observing at once: nothing is lost. */
#define OBS_THREADS 4
#define OBS_EACH 20000

static void *observer(void *arg)
{
    struct prom_hist *h = arg;
    for (int i = 0; i < OBS_EACH; i++)
        prom_hist_observe(h, (i % 3) ? 0.002 : 3.0);
    return NULL;
}

static void test_histogram_threads(void **state)
{
    (void)state;
    struct prom_hist h;
    prom_hist_init(&h, NULL, 0);
    pthread_t t[OBS_THREADS];
    for (int i = 0; i < OBS_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, observer, &h), 0);
    for (int i = 0; i < OBS_THREADS; i++)
        pthread_join(t[i], NULL);
    uint64_t total = 0;
    for (int i = 0; i <= h.nbounds; i++)
        total += atomic_load(&h.counts[i]);
    assert_int_equal(total, OBS_THREADS * OBS_EACH);
    uint64_t big = OBS_THREADS * ((OBS_EACH + 2) / 3);
    assert_int_equal(atomic_load(&h.counts[11]), big); /* (2.5, 5] */
    assert_int_equal(atomic_load(&h.counts[1]), OBS_THREADS * OBS_EACH - big); /* (0.001, 0.0025] */
}

/* ---- the endpoint ---- */

static void render(struct wbuf *out, void *arg)
{
    int *calls = arg;
    (*calls)++;
    prom_metric_u64(out, PROM_COUNTER, "pipeps_test_scrapes_total", "Scrapes.", (uint64_t)*calls);
}

/* One HTTP/1.0 exchange; returns the status code, the whole answer in resp. */
static int http_get(uint16_t port, const char *request, char *resp, size_t cap)
{
    int fd;
    assert_int_equal(net_connect("127.0.0.1", port, 5000, &fd), 0);
    assert_int_equal(net_write_full(fd, request, strlen(request)), 0);
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, resp + got, cap - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    resp[got] = '\0';
    int code = 0;
    assert_int_equal(sscanf(resp, "HTTP/1.%*d %d", &code), 1);
    return code;
}

static void check_endpoint(uint16_t port, int *calls)
{
    char resp[8192];
    int before = *calls;
    assert_int_equal(http_get(port, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof resp), 200);
    assert_non_null(strstr(resp, "Content-Type: " METRICS_HTTP_CONTENT_TYPE "\r\n"));
    char want[128];
    snprintf(want, sizeof want, "\r\n\r\n# HELP pipeps_test_scrapes_total Scrapes.\n");
    assert_non_null(strstr(resp, want));
    snprintf(want, sizeof want, "\npipeps_test_scrapes_total %d\n", before + 1);
    assert_non_null(strstr(resp, want));
    assert_int_equal(*calls, before + 1);
    /* a query string still reaches /metrics */
    assert_int_equal(http_get(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n", resp, sizeof resp), 200);
    assert_int_equal(http_get(port, "GET / HTTP/1.0\r\n\r\n", resp, sizeof resp), 404);
    assert_int_equal(http_get(port, "GET /metricsx HTTP/1.0\r\n\r\n", resp, sizeof resp), 404);
    assert_int_equal(http_get(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", resp,
                              sizeof resp),
                     405);
    assert_non_null(strstr(resp, "Allow: GET, HEAD"));
    assert_int_equal(*calls, before + 2);
}

static void test_endpoint_thread(void **state)
{
    (void)state;
    int calls = 0;
    int fd;
    uint16_t port = 0;
    char err[256];
    assert_int_equal(metrics_http_listen(NULL, 0, &fd, &port, err, sizeof err), 0);
    assert_true(port != 0);
    struct metrics_http *m;
    assert_int_equal(metrics_http_start(&m, fd, render, &calls), 0);
    check_endpoint(port, &calls);
    metrics_http_stop(m);
    /* the port is closed with it */
    int c;
    assert_int_not_equal(net_connect("127.0.0.1", port, 1000, &c), 0);
    metrics_http_stop(NULL);
}

static void test_listen_in_use(void **state)
{
    (void)state;
    int fd, fd2;
    uint16_t port = 0;
    char err[256];
    assert_int_equal(metrics_http_listen("127.0.0.1", 0, &fd, &port, err, sizeof err), 0);
    assert_int_equal(metrics_http_listen("127.0.0.1", port, &fd2, NULL, err, sizeof err), PPS_EBUSY);
    assert_non_null(strstr(err, "metrics: cannot listen on 127.0.0.1:"));
    close(fd);
}

/* Attached: the loop runs on a thread of the test, which checks from here
 * and then ends the loop; the endpoint is stopped after the loop returned. */
struct loop_ctx {
    struct event_base *base;
    struct event *quit;
};

static void quit_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void *loop_main(void *arg)
{
    struct loop_ctx *x = arg;
    event_base_dispatch(x->base);
    return NULL;
}

static void test_endpoint_attached(void **state)
{
    (void)state;
    int calls = 0;
    int fd;
    uint16_t port = 0;
    char err[256];
    assert_int_equal(metrics_http_listen(NULL, 0, &fd, &port, err, sizeof err), 0);
    struct loop_ctx x;
    x.base = event_base_new();
    assert_non_null(x.base);
    struct metrics_http *m;
    assert_int_equal(metrics_http_attach(&m, x.base, fd, render, &calls), 0);
    /* a timer that ends the loop after the checks (the base is not locked:
     * only the loop thread touches it while it runs) */
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    x.quit = event_new(x.base, pipefd[0], EV_READ, quit_cb, x.base);
    event_add(x.quit, NULL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, loop_main, &x), 0);
    check_endpoint(port, &calls);
    assert_int_equal(write(pipefd[1], "q", 1), 1);
    pthread_join(t, NULL);
    metrics_http_stop(m);
    event_free(x.quit);
    event_base_free(x.base);
    close(pipefd[0]);
    close(pipefd[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_and_samples),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_histogram_threads),
        cmocka_unit_test(test_endpoint_thread),
        cmocka_unit_test(test_listen_in_use),
        cmocka_unit_test(test_endpoint_attached),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
