/* cache_link: the link thread and connection reference counting; see
 * cache_link.h.
 *
 * Locking: l->lock guards the subscription list, the connection pointers
 * and reference counts, the unpin queue and the stats. The client itself
 * (cache_client) is touched only by the link thread, without the lock held,
 * so a slow cache never blocks another thread that subscribes or releases.
 * Callbacks run without the lock; while one runs, l->dispatching names its
 * subscription and cache_link_release waits for it to finish. */
#include "server/cache_link.h"
#include "common/deadline.h"
#include "common/err.h"
#include "common/log.h"

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
#define BACKOFF_MAX_MS 5000

struct link_conn {
    struct cache_client *cc;
    int refs;       /* the link while current, each subscription, each queued unpin */
    int dead;       /* broken: no more requests on it */
    uint64_t id;
};

enum sub_state { SUB_QUEUED, SUB_ACTIVE, SUB_ENDED };

struct cache_sub {
    char model[CACHE_MODEL_NAME_MAX + 1];
    cache_sub_fn fn;
    void *arg;
    enum sub_state state;
    int cache_error;          /* the cache ended it with an ERROR: no pin left there */
    uint64_t sub_id;
    struct link_conn *conn;   /* held reference once ACTIVE */
    double last_event;
    struct cache_sub *next;
};

struct unpin_cmd {
    struct link_conn *conn;   /* held reference */
    uint64_t sub_id;
    int *done;                /* set (and cond broadcast) once sent or dropped */
    struct unpin_cmd *next;
};

struct cache_link {
    char addr[64];
    uint16_t port;
    int stall_ms;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int wake[2];
    int stopping;
    struct link_conn *cur;
    uint64_t next_conn_id;
    struct cache_sub *subs;
    struct unpin_cmd *unpins;
    struct unpin_cmd *unpin_sending; /* popped from unpins, its call in progress */
    struct cache_sub *dispatching;
    int backoff_ms;
    double next_try;
    int down_logged;
    struct cache_link_stats stats;
    cache_list_fn list_fn;    /* cache_link_list_once, not yet answered */
    void *list_arg;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void wake(struct cache_link *l)
{
    char c = 1;
    ssize_t r = write(l->wake[1], &c, 1);
    (void)r; /* a full pipe already means "wake up" */
}

/* l->lock held. Closing unmaps: only once nothing can point into it. */
static void conn_unref(struct link_conn *c)
{
    PPS_ASSERT(c->refs > 0);
    if (--c->refs == 0) {
        cache_client_close(c->cc);
        free(c);
    }
}

/* Run s's callback for ev with the lock released; l->lock held on entry and
 * exit. The subscription cannot be freed meanwhile (release waits). */
static void dispatch(struct cache_link *l, struct cache_sub *s, const struct cache_event *ev)
{
    l->dispatching = s;
    pthread_mutex_unlock(&l->lock);
    s->fn(s, ev, s->arg);
    pthread_mutex_lock(&l->lock);
    l->dispatching = NULL;
    pthread_cond_broadcast(&l->cond);
}

/* End s with a locally made error. l->lock held. */
static void fail_sub(struct cache_link *l, struct cache_sub *s, int status, const char *msg)
{
    struct cache_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = CACHE_EV_ERROR;
    ev.sub_id = s->sub_id;
    ev.status = status;
    snprintf(ev.message, sizeof ev.message, "%s", msg);
    s->state = SUB_ENDED;
    l->stats.failures++;
    dispatch(l, s, &ev);
}

/* The first subscription in state st (on conn, if non-NULL), or NULL. */
static struct cache_sub *find_sub(struct cache_link *l, enum sub_state st, struct link_conn *conn)
{
    for (struct cache_sub *s = l->subs; s; s = s->next)
        if (s->state == st && (!conn || s->conn == conn))
            return s;
    return NULL;
}

/* The current connection broke: fail what was in flight on it, drop it. */
static void break_conn(struct cache_link *l, int rc)
{
    struct link_conn *c = l->cur;
    if (!c)
        return;
    log_warn("cache %s:%u: connection lost (%s); reconnecting", l->addr, l->port, pps_strerror(rc));
    c->dead = 1;
    l->cur = NULL;
    l->stats.connected = 0;
    l->stats.pool_size = 0;
    char msg[256];
    snprintf(msg, sizeof msg, "lost the connection to the cache at %s:%u (%s)", l->addr, l->port,
             pps_strerror(rc));
    struct cache_sub *s;
    while ((s = find_sub(l, SUB_ACTIVE, c)) != NULL)
        fail_sub(l, s, PPS_ECLOSED, msg);
    conn_unref(c);
    l->backoff_ms = BACKOFF_MIN_MS;
    l->next_try = now_s(); /* a restarting cache is usually back at once */
}

static void try_connect(struct cache_link *l)
{
    pthread_mutex_unlock(&l->lock);
    struct cache_client *cc = NULL;
    int rc = cache_client_connect(&cc, l->addr, l->port);
    pthread_mutex_lock(&l->lock);
    if (rc == 0) {
        struct link_conn *c = pps_xcalloc(1, sizeof *c);
        c->cc = cc;
        c->refs = 1;
        c->id = ++l->next_conn_id;
        l->cur = c;
        l->backoff_ms = BACKOFF_MIN_MS;
        l->down_logged = 0;
        l->stats.connected = 1;
        l->stats.connects++;
        l->stats.pool_size = 0;
        cache_client_pool(cc, &l->stats.pool_size);
        snprintf(l->stats.shm_name, sizeof l->stats.shm_name, "%s", cache_client_shm_name(cc));
        log_info("cache %s:%u: connected, pool %s (%llu bytes) mapped read-only", l->addr, l->port,
                 l->stats.shm_name, (unsigned long long)l->stats.pool_size);
        return;
    }
    if (!l->down_logged) {
        log_warn("cache %s:%u: cannot connect (%s); retrying in the background", l->addr, l->port,
                 pps_strerror(rc));
        l->down_logged = 1;
    }
    l->next_try = now_s() + l->backoff_ms / 1000.0;
    l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
    /* Requests waiting for a connection fail now rather than hang. */
    char msg[256];
    snprintf(msg, sizeof msg, "cannot reach the cache at %s:%u (%s)", l->addr, l->port,
             pps_strerror(rc));
    struct cache_sub *s;
    while ((s = find_sub(l, SUB_QUEUED, NULL)) != NULL)
        fail_sub(l, s, PPS_ECONNECT, msg);
}

/* The command is over (acknowledged, failed or dropped): tell its waiter. */
static void unpin_done(struct cache_link *l, struct unpin_cmd *u)
{
    if (u->done) {
        *u->done = 1;
        pthread_cond_broadcast(&l->cond);
    }
    conn_unref(u->conn);
    free(u);
}

/* Send queued subscriptions and unpins on the current connection. */
static void send_commands(struct cache_link *l)
{
    struct cache_sub *s;
    while (l->cur && (s = find_sub(l, SUB_QUEUED, NULL)) != NULL) {
        struct link_conn *c = l->cur;
        uint64_t id = 0;
        l->dispatching = s; /* release waits until the SUBSCRIBE is out */
        pthread_mutex_unlock(&l->lock);
        int rc = cache_client_subscribe(c->cc, s->model, &id);
        pthread_mutex_lock(&l->lock);
        l->dispatching = NULL;
        pthread_cond_broadcast(&l->cond);
        if (rc) {
            break_conn(l, rc); /* s is still QUEUED: the reconnect resends it */
            break;
        }
        s->state = SUB_ACTIVE;
        s->sub_id = id;
        s->conn = c;
        c->refs++;
        s->last_event = now_s();
        l->stats.subscriptions++;
    }
    while (l->unpins) {
        struct unpin_cmd *u = l->unpins;
        l->unpins = u->next;
        if (!u->conn->dead) {
            struct cache_client *cc = u->conn->cc;
            l->unpin_sending = u;
            pthread_mutex_unlock(&l->lock);
            int rc = cache_client_unpin(cc, u->sub_id);
            pthread_mutex_lock(&l->lock);
            l->unpin_sending = NULL;
            if (rc && rc != PPS_ENOTFOUND)
                log_warn("cache: unpin of subscription %llu failed: %s",
                         (unsigned long long)u->sub_id, pps_strerror(rc));
            if (rc && rc != PPS_ENOTFOUND && u->conn == l->cur && rc != PPS_EINVAL)
                break_conn(l, rc);
        }
        unpin_done(l, u);
    }
}

/* Deliver every event the client can give without waiting. */
static void drain_events(struct cache_link *l)
{
    while (l->cur) {
        struct link_conn *c = l->cur;
        struct cache_event ev;
        pthread_mutex_unlock(&l->lock);
        int rc = cache_client_next_event(c->cc, &ev, 0);
        pthread_mutex_lock(&l->lock);
        if (rc == PPS_ETIMEOUT)
            return;
        if (rc) {
            break_conn(l, rc);
            return;
        }
        struct cache_sub *s;
        for (s = l->subs; s; s = s->next)
            if (s->conn == c && s->sub_id == ev.sub_id && s->state == SUB_ACTIVE)
                break;
        if (!s)
            continue; /* a released subscription's late event */
        s->last_event = now_s();
        if (ev.kind == CACHE_EV_DONE)
            s->state = SUB_ENDED;
        if (ev.kind == CACHE_EV_ERROR) {
            s->state = SUB_ENDED;
            s->cache_error = 1;
            l->stats.failures++;
        }
        dispatch(l, s, &ev);
    }
}

static void check_stalls(struct cache_link *l)
{
    if (l->stall_ms <= 0)
        return;
    double t = now_s();
    for (;;) {
        struct cache_sub *s;
        for (s = l->subs; s; s = s->next)
            if (s->state == SUB_ACTIVE && (t - s->last_event) * 1000.0 > l->stall_ms)
                break;
        if (!s)
            return;
        char msg[400];
        snprintf(msg, sizeof msg, "no progress from the cache for %d ms fetching %s", l->stall_ms,
                 s->model);
        log_warn("cache: %s", msg);
        fail_sub(l, s, PPS_ETIMEOUT, msg);
    }
}

/* CACHE_LIST on the current connection, the blobs copied out of the pool
 * (they are not pinned: a blob evicted meanwhile fails its checksum when
 * decoded and is skipped there). Called with l->lock held. */
static void answer_list(struct cache_link *l)
{
    cache_list_fn fn = l->list_fn;
    void *arg = l->list_arg;
    struct cache_client *cc = l->cur->cc;
    l->list_fn = NULL;
    pthread_mutex_unlock(&l->lock);
    struct cache_meta_msg *v = NULL;
    uint32_t n = 0;
    int rc = cache_client_list(cc, &v, &n);
    if (rc) {
        log_warn("cache %s:%u: cannot list its models (%s): no kernels warmed ahead", l->addr, l->port,
                 pps_strerror(rc));
        n = 0;
    }
    uint64_t pool_size = 0;
    const uint8_t *pool = cache_client_pool(cc, &pool_size);
    struct cache_listed *out = pps_xcalloc(n ? n : 1, sizeof *out);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (v[i].offset > pool_size || v[i].len > pool_size - v[i].offset || v[i].len == 0 ||
            v[i].len > (64u << 20))
            continue;
        snprintf(out[k].model, sizeof out[k].model, "%s", v[i].model);
        out[k].meta = pps_xmalloc(v[i].len);
        memcpy(out[k].meta, pool + v[i].offset, v[i].len);
        out[k].meta_len = v[i].len;
        k++;
    }
    free(v);
    fn(out, k, arg);
    pthread_mutex_lock(&l->lock);
}

void cache_link_list_once(struct cache_link *l, cache_list_fn fn, void *arg)
{
    pthread_mutex_lock(&l->lock);
    l->list_fn = fn;
    l->list_arg = arg;
    pthread_mutex_unlock(&l->lock);
    char b = 1;
    if (write(l->wake[1], &b, 1) < 0) {
        /* the pipe is full: the thread wakes anyway */
    }
}

static void *link_thread(void *arg)
{
    struct cache_link *l = arg;
    pthread_mutex_lock(&l->lock);
    while (!l->stopping) {
        if (!l->cur && (find_sub(l, SUB_QUEUED, NULL) || now_s() >= l->next_try))
            try_connect(l);
        if (l->cur && l->list_fn)
            answer_list(l);
        send_commands(l);
        drain_events(l);
        check_stalls(l);
        if (l->stopping)
            break;
        /* Nothing queued in the client now: sleep until the socket or the
         * wake pipe has something, or a retry/stall check is due. */
        int timeout = 1000;
        if (!l->cur) {
            double dt = l->next_try - now_s();
            timeout = dt <= 0 ? 0 : (int)(dt * 1000) + 1;
        }
        struct pollfd p[2] = {{.fd = l->wake[0], .events = POLLIN},
                              {.fd = l->cur ? cache_client_fd(l->cur->cc) : -1, .events = POLLIN}};
        int queued = find_sub(l, SUB_QUEUED, NULL) != NULL || l->unpins != NULL;
        pthread_mutex_unlock(&l->lock);
        if (!queued)
            poll(p, 2, timeout);
        char buf[64];
        while (read(l->wake[0], buf, sizeof buf) > 0)
            ;
        pthread_mutex_lock(&l->lock);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

int cache_link_start(struct cache_link **out, const char *addr, uint16_t port, int stall_ms)
{
    struct cache_link *l = pps_xcalloc(1, sizeof *l);
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    l->port = port;
    l->stall_ms = stall_ms;
    l->backoff_ms = BACKOFF_MIN_MS;
    if (pipe2(l->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(l);
        return pps_from_errno(errno);
    }
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    if (pthread_create(&l->thread, NULL, link_thread, l) != 0) {
        close(l->wake[0]);
        close(l->wake[1]);
        free(l);
        return PPS_ENOMEM;
    }
    *out = l;
    return 0;
}

void cache_link_stop(struct cache_link *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    l->stopping = 1;
    pthread_mutex_unlock(&l->lock);
    wake(l);
    pthread_join(l->thread, NULL);
    PPS_ASSERT(l->subs == NULL);
    while (l->unpins) {
        struct unpin_cmd *u = l->unpins;
        l->unpins = u->next;
        unpin_done(l, u);
    }
    if (l->cur)
        conn_unref(l->cur);
    close(l->wake[0]);
    close(l->wake[1]);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
    free(l);
}

struct cache_sub *cache_link_subscribe(struct cache_link *l, const char *model, cache_sub_fn fn,
                                       void *arg)
{
    struct cache_sub *s = pps_xcalloc(1, sizeof *s);
    snprintf(s->model, sizeof s->model, "%s", model);
    s->fn = fn;
    s->arg = arg;
    s->state = SUB_QUEUED;
    pthread_mutex_lock(&l->lock);
    s->next = l->subs;
    l->subs = s;
    pthread_mutex_unlock(&l->lock);
    wake(l);
    return s;
}

void cache_link_release(struct cache_link *l, struct cache_sub *s) { cache_link_release_wait(l, s, 0); }

void cache_link_release_wait(struct cache_link *l, struct cache_sub *s, int timeout_ms)
{
    if (!s)
        return;
    int done = 0;
    pthread_mutex_lock(&l->lock);
    while (l->dispatching == s)
        pthread_cond_wait(&l->cond, &l->lock);
    struct cache_sub **pp = &l->subs;
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    int queued = 0;
    if (s->conn) {
        if (!s->conn->dead && !s->cache_error) {
            struct unpin_cmd *u = pps_xcalloc(1, sizeof *u);
            u->conn = s->conn; /* the reference moves to the command */
            u->sub_id = s->sub_id;
            u->done = timeout_ms > 0 ? &done : NULL;
            u->next = l->unpins;
            l->unpins = u;
            queued = 1;
        } else {
            conn_unref(s->conn);
        }
    }
    pthread_mutex_unlock(&l->lock);
    free(s);
    if (!queued)
        return;
    wake(l);
    if (timeout_ms <= 0)
        return;
    struct timespec until = deadline_after_ms(timeout_ms);
    pthread_mutex_lock(&l->lock);
    while (!done) {
        if (pthread_cond_timedwait(&l->cond, &l->lock, &until) == ETIMEDOUT) {
            /* The command still points at done: detach it before returning. */
            for (struct unpin_cmd *u = l->unpins; u; u = u->next)
                if (u->done == &done)
                    u->done = NULL;
            if (l->unpin_sending && l->unpin_sending->done == &done)
                l->unpin_sending->done = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&l->lock);
}

void cache_link_get_stats(struct cache_link *l, struct cache_link_stats *st)
{
    pthread_mutex_lock(&l->lock);
    *st = l->stats;
    pthread_mutex_unlock(&l->lock);
}
