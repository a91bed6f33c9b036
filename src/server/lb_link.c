/* lb_link: registration thread; see lb_link.h.
 *
 * One thread does all I/O on the load-balancer connection: connect,
 * register, then poll the socket and a wake pipe, sending queued events and
 * answering what the load balancer sends. The easy thing to get wrong is the
 * wait between attempts: it must be interruptible (stop must not wait out a
 * 30 s backoff), so it is a poll on the wake pipe, not a sleep. */
#include "server/lb_link.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/net.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define CONNECT_TIMEOUT_MS 2000
#define REPLY_TIMEOUT_MS 10000

struct queued_event {
    struct lb_server_event ev;
    struct queued_event *next;
};

struct lb_link {
    char addr[64];
    uint16_t port;
    int backoff_max_ms;
    lb_register_fn fn;
    void *fn_arg;
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    int wake[2];
    int stopping;
    struct queued_event *qhead, *qtail;
    int nqueued;
    struct lb_link_stats stats;
};

static void wake(struct lb_link *l)
{
    char c = 1;
    ssize_t r = write(l->wake[1], &c, 1);
    (void)r;
}

static void drain_wake(struct lb_link *l)
{
    char buf[64];
    while (read(l->wake[0], buf, sizeof buf) > 0)
        ;
}

static int stopping(struct lb_link *l)
{
    pthread_mutex_lock(&l->lock);
    int s = l->stopping;
    pthread_mutex_unlock(&l->lock);
    return s;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Sleep ms, or less if woken for stop (queued events do not end it). */
static void nap(struct lb_link *l, int ms)
{
    struct pollfd p = {.fd = l->wake[0], .events = POLLIN};
    double end = now_ms() + ms;
    while (!stopping(l)) {
        double left = end - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left + 1) == 0)
            return;
        drain_wake(l);
    }
}

static void clear_queue(struct lb_link *l)
{
    pthread_mutex_lock(&l->lock);
    while (l->qhead) {
        struct queued_event *q = l->qhead;
        l->qhead = q->next;
        free(q);
    }
    l->qtail = NULL;
    l->nqueued = 0;
    pthread_mutex_unlock(&l->lock);
}

/* Register on a fresh connection: 0 when the load balancer accepted. */
static int do_register(struct lb_link *l, int fd)
{
    struct wbuf wb;
    wbuf_init(&wb);
    l->fn(&wb, l->fn_arg);
    net_set_timeout(fd, REPLY_TIMEOUT_MS);
    uint8_t *resp = NULL;
    uint64_t n = 0;
    int rc = frame_call(fd, MSG_LB_SERVER_REGISTER, wb.data, wb.len, &resp, &n, FRAME_MAX_CONTROL);
    wbuf_free(&wb);
    if (rc)
        log_warn("load balancer %s:%u: registration refused: %s%s%.*s", l->addr, l->port,
                 pps_strerror(rc), resp ? ": " : "", (int)(resp ? n : 0), resp ? (char *)resp : "");
    free(resp);
    net_set_timeout(fd, 0);
    return rc;
}

static int send_events(struct lb_link *l, int fd)
{
    for (;;) {
        pthread_mutex_lock(&l->lock);
        struct queued_event *q = l->qhead;
        if (q) {
            l->qhead = q->next;
            if (!l->qhead)
                l->qtail = NULL;
            l->nqueued--;
        }
        pthread_mutex_unlock(&l->lock);
        if (!q)
            return 0;
        struct wbuf wb;
        wbuf_init(&wb);
        lb_server_encode_event(&wb, &q->ev);
        struct frame_header h = {.type = MSG_LB_SERVER_EVENT, .request_id = 0};
        int rc = frame_send(fd, &h, wb.data, wb.len);
        wbuf_free(&wb);
        free(q);
        if (rc)
            return rc;
        pthread_mutex_lock(&l->lock);
        l->stats.events_sent++;
        pthread_mutex_unlock(&l->lock);
    }
}

/* One frame from the load balancer. */
static int handle_incoming(struct lb_link *l, int fd)
{
    struct frame_header h;
    int rc = frame_recv_header(fd, &h, FRAME_MAX_CONTROL);
    if (rc)
        return rc;
    if (h.flags & FRAME_FLAG_RESPONSE) /* an answer to nothing we wait for */
        return net_discard(fd, h.payload_len);
    if (h.type == MSG_PING) {
        uint8_t *p = malloc(h.payload_len ? h.payload_len : 1);
        if (!p)
            return PPS_ENOMEM;
        rc = net_read_full(fd, p, h.payload_len);
        if (!rc) {
            struct frame_header r = {.type = MSG_PING, .flags = FRAME_FLAG_RESPONSE,
                                     .request_id = h.request_id};
            rc = frame_send(fd, &r, p, h.payload_len);
        }
        free(p);
        return rc;
    }
    rc = net_discard(fd, h.payload_len);
    if (rc)
        return rc;
    log_warn("load balancer %s:%u sent message %s, which a server does not handle", l->addr,
             l->port, frame_type_name(h.type));
    return frame_send_error(fd, MSG_ERROR, h.request_id, PPS_EUNSUPPORTED,
                            "message type not handled by the server");
}

static void *lb_thread(void *arg)
{
    struct lb_link *l = arg;
    int backoff = BACKOFF_MIN_MS;
    int down_logged = 0;
    while (!stopping(l)) {
        pthread_mutex_lock(&l->lock);
        l->stats.attempts++;
        pthread_mutex_unlock(&l->lock);
        int fd = -1;
        int rc = net_connect(l->addr, l->port, CONNECT_TIMEOUT_MS, &fd);
        if (!rc) {
            clear_queue(l); /* the registration carries the state */
            rc = do_register(l, fd);
        }
        if (rc) {
            if (fd >= 0)
                close(fd);
            if (!down_logged)
                log_info("load balancer %s:%u not reachable (%s); retrying with backoff", l->addr,
                         l->port, pps_strerror(rc));
            down_logged = 1;
            nap(l, backoff);
            backoff = backoff * 2 > l->backoff_max_ms ? l->backoff_max_ms : backoff * 2;
            continue;
        }
        log_info("registered with the load balancer at %s:%u", l->addr, l->port);
        down_logged = 0;
        backoff = BACKOFF_MIN_MS;
        pthread_mutex_lock(&l->lock);
        l->stats.registered = 1;
        l->stats.registrations++;
        pthread_mutex_unlock(&l->lock);
        while (!stopping(l)) {
            if ((rc = send_events(l, fd)) != 0)
                break;
            struct pollfd p[2] = {{.fd = l->wake[0], .events = POLLIN},
                                  {.fd = fd, .events = POLLIN}};
            if (poll(p, 2, -1) < 0 && errno != EINTR) {
                rc = pps_from_errno(errno);
                break;
            }
            if (p[0].revents)
                drain_wake(l);
            if (p[1].revents && (rc = handle_incoming(l, fd)) != 0)
                break;
        }
        close(fd);
        pthread_mutex_lock(&l->lock);
        l->stats.registered = 0;
        pthread_mutex_unlock(&l->lock);
        if (!stopping(l)) {
            log_warn("load balancer %s:%u: connection lost (%s); re-registering", l->addr, l->port,
                     pps_strerror(rc));
            nap(l, BACKOFF_MIN_MS);
        }
    }
    return NULL;
}

int lb_link_start(struct lb_link **out, const char *addr, uint16_t port, int backoff_max_ms,
                  lb_register_fn fn, void *arg)
{
    struct lb_link *l = pps_xcalloc(1, sizeof *l);
    snprintf(l->addr, sizeof l->addr, "%s", addr ? addr : "");
    l->port = port;
    l->backoff_max_ms = backoff_max_ms > BACKOFF_MIN_MS ? backoff_max_ms : BACKOFF_MIN_MS;
    l->fn = fn;
    l->fn_arg = arg;
    pthread_mutex_init(&l->lock, NULL);
    if (pipe2(l->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(l);
        return pps_from_errno(errno);
    }
    if (l->addr[0] && port) {
        if (pthread_create(&l->thread, NULL, lb_thread, l) != 0) {
            close(l->wake[0]);
            close(l->wake[1]);
            free(l);
            return PPS_ENOMEM;
        }
        l->running = 1;
    }
    *out = l;
    return 0;
}

void lb_link_stop(struct lb_link *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    l->stopping = 1;
    pthread_mutex_unlock(&l->lock);
    wake(l);
    if (l->running)
        pthread_join(l->thread, NULL);
    clear_queue(l);
    close(l->wake[0]);
    close(l->wake[1]);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

void lb_link_event(struct lb_link *l, const struct lb_server_event *ev)
{
    if (!l || !l->running)
        return;
    pthread_mutex_lock(&l->lock);
    if (l->stats.registered && l->nqueued < 4096) {
        struct queued_event *q = pps_xcalloc(1, sizeof *q);
        q->ev = *ev;
        if (l->qtail)
            l->qtail->next = q;
        else
            l->qhead = q;
        l->qtail = q;
        l->nqueued++;
    }
    pthread_mutex_unlock(&l->lock);
    wake(l);
}

void lb_link_get_stats(struct lb_link *l, struct lb_link_stats *st)
{
    pthread_mutex_lock(&l->lock);
    *st = l->stats;
    pthread_mutex_unlock(&l->lock);
}
