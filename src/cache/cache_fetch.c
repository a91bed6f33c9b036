/* cache_fetch: resolver thread, storage links and fetch jobs; see
 * cache_fetch.h.
 *
 * Locking: one mutex (f->mu) guards every queue (resolver queue, link
 * queues, event queue) and the list of links; per-job progress is atomic so
 * link threads of different storages can finish slices of one batch without
 * it. The one thing easy to get wrong is the end of a job: the thread that
 * retires a job's last request pushes FINISHED after its own BATCH/FAILED
 * event, and every other thread pushed its events before decrementing the
 * count, so FINISHED is always the job's last event. */
#include "cache/cache_fetch.h"
#include "common/err.h"
#include "common/log.h"
#include "common/net.h"
#include "metadata/meta_client.h"
#include "storage/storage_client.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* One range of one storage value, received into dst. */
struct fetch_req {
    struct fetch_req *next;
    struct fetch_job *job;
    struct storage_link *link;
    uint32_t batch;
    uint32_t piece;             /* index within its slice: picks the connection */
    uint64_t offset;            /* within the storage value */
    uint64_t len;
    uint8_t *dst;
    int attempts;
    int stalls;                 /* attempts that ended in a progress timeout */
    char addr[64];
    uint16_t port;
    char key[LOCATION_NAME_MAX + 1];
};

struct fetch_job {
    struct fetcher *f;
    void *owner;                /* the event consumer's; threads never touch it */
    uint32_t nbatches;
    atomic_uint *remaining;     /* per batch: requests not yet landed */
    atomic_long outstanding;    /* requests not yet retired */
    atomic_int failed;          /* first error, 0 if none */
    atomic_int canceled;
    struct fetch_req *head, *tail; /* built by fetch_job_add, handed to links on submit */
    uint64_t nreqs;
};

/* A FIFO of requests. */
struct req_list {
    struct fetch_req *head, *tail;
    int n;
};

static void list_push(struct req_list *q, struct fetch_req *r)
{
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

static void list_push_front_all(struct req_list *q, struct req_list *front)
{
    if (!front->head)
        return;
    front->tail->next = q->head;
    if (!q->tail)
        q->tail = front->tail;
    q->head = front->head;
    q->n += front->n;
    front->head = front->tail = NULL;
    front->n = 0;
}

static struct fetch_req *list_pop(struct req_list *q)
{
    struct fetch_req *r = q->head;
    if (r) {
        q->head = r->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        r->next = NULL;
    }
    return r;
}

struct link_conn {
    struct storage_link *link;
    pthread_t thread;
    int started;
    int fd;                     /* socket while connected, -1 otherwise (under f->mu) */
    struct req_list queue;      /* to send (under f->mu) */
    /* Sent on this connection, responses due in this order. Changed by its
     * thread under f->mu, so fetch_job_cancel can see which connections
     * hold a dead job's requests. */
    struct req_list inflight;
    int interrupted;            /* fetch_job_cancel shut the socket down (under f->mu) */
};

struct storage_link {
    struct storage_link *next;
    char addr[64];
    uint16_t port;
    pthread_cond_t cv;          /* work queued or stopping */
    int nconns;
    struct link_conn *conns;
    struct fetcher *f;
};

struct resolve_req {
    struct resolve_req *next;
    void *token;
    char model[LOCATION_NAME_MAX + 1];
};

struct event_node {
    struct event_node *next;
    struct fetch_event ev;
};

struct fetcher {
    struct fetch_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t stop_cv;     /* wakes sleepers (backoff, throttle) on stop */
    int stop;
    struct storage_link *links;
    /* resolver */
    pthread_t resolver;
    int resolver_started;
    pthread_cond_t resolve_cv;
    struct resolve_req *rhead, *rtail;
    /* events to the loop */
    int efd;
    struct event_node *ehead, *etail;
    /* throttle: a virtual clock of when the bytes granted so far may land */
    pthread_mutex_t throttle_mu;
    double throttle_clock;
    /* stats */
    atomic_ullong bytes_received;
    atomic_ullong requests;
    atomic_ullong reconnects;
    atomic_ullong storage_conns;
};

/* snprintf into a message buffer; truncation of a long key is fine there. */
__attribute__((format(printf, 3, 4))) static void set_msg(char *buf, size_t len,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sleep until the monotonic time `until`, or until stop. Returns 1 if
 * stopping. */
static int sleep_until(struct fetcher *f, double until)
{
    pthread_mutex_lock(&f->mu);
    while (!f->stop) {
        double now = mono_now();
        if (now >= until)
            break;
        /* the condvar uses CLOCK_MONOTONIC (see fetch_create) */
        struct timespec ts;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_nsec = 999999999L;
        pthread_cond_timedwait(&f->stop_cv, &f->mu, &ts);
    }
    int stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    return stop;
}

static void push_event(struct fetcher *f, const struct fetch_event *ev)
{
    struct event_node *n = pps_xmalloc(sizeof *n);
    n->next = NULL;
    n->ev = *ev;
    pthread_mutex_lock(&f->mu);
    if (f->etail)
        f->etail->next = n;
    else
        f->ehead = n;
    f->etail = n;
    pthread_mutex_unlock(&f->mu);
    uint64_t one = 1;
    ssize_t w = write(f->efd, &one, sizeof one);
    (void)w; /* the counter saturating is harmless: it stays readable */
}

int fetch_event_fd(const struct fetcher *f) { return f->efd; }

int fetch_next_event(struct fetcher *f, struct fetch_event *ev)
{
    uint64_t v;
    ssize_t r = read(f->efd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&f->mu);
    struct event_node *n = f->ehead;
    if (n) {
        f->ehead = n->next;
        if (!f->ehead)
            f->etail = NULL;
    }
    pthread_mutex_unlock(&f->mu);
    if (!n)
        return 0;
    *ev = n->ev;
    free(n);
    return 1;
}

void fetch_get_stats(struct fetcher *f, struct fetch_stats *st)
{
    st->bytes_received = atomic_load(&f->bytes_received);
    st->requests = atomic_load(&f->requests);
    st->reconnects = atomic_load(&f->reconnects);
    st->storage_conns = atomic_load(&f->storage_conns);
}

/* ---- resolver ---------------------------------------------------------- */

static int is_transport_error(int rc)
{
    return rc == PPS_ECLOSED || rc == PPS_EIO || rc == PPS_ETIMEOUT || rc == PPS_ECONNECT ||
           rc == PPS_EPROTO || rc == PPS_ETRUNCATED;
}

/* meta_get with one reconnect on a broken connection. */
static int meta_get_retry(struct fetcher *f, struct meta_client **mc, const char *key,
                          uint8_t **val, uint64_t *len)
{
    int rc = PPS_ECONNECT;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!*mc) {
            rc = meta_client_connect(mc, f->cfg.meta_addr, f->cfg.meta_port);
            if (rc) {
                *mc = NULL;
                continue;
            }
        }
        rc = meta_get(*mc, key, val, len);
        if (!is_transport_error(rc))
            return rc;
        meta_client_close(*mc);
        *mc = NULL;
    }
    return rc;
}

static void resolve_one(struct fetcher *f, struct meta_client **mc, const struct resolve_req *r)
{
    struct fetch_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = FETCH_EV_RESOLVED;
    ev.token = r->token;
    char key[LOCATION_NAME_MAX + 32];
    location_key_name(r->model, key, sizeof key);
    uint8_t *val = NULL;
    uint64_t len = 0;
    int rc = meta_get_retry(f, mc, key, &val, &len);
    if (rc == PPS_ENOTFOUND) {
        /* the daemon says which model ("model X: ..."): name it only once */
        set_msg(ev.message, sizeof ev.message, "not deployed (the metadata storage has no %s)",
                key);
        goto fail;
    }
    if (rc) {
        set_msg(ev.message, sizeof ev.message,
                 "cannot read %s from the metadata storage at %s:%u: %s", key, f->cfg.meta_addr,
                 f->cfg.meta_port, pps_strerror(rc));
        rc = PPS_EFETCH;
        goto fail;
    }
    rc = location_decode(val, len, &ev.loc);
    free(val);
    val = NULL;
    if (rc) {
        set_msg(ev.message, sizeof ev.message, "bad location record %s: %s", key,
                 pps_strerror(rc));
        goto fail;
    }
    if (strcmp(ev.loc.model, r->model) != 0) {
        rc = PPS_ECORRUPT;
        set_msg(ev.message, sizeof ev.message, "location record %s names model %s", key,
                 ev.loc.model);
        goto fail;
    }
    rc = meta_get_retry(f, mc, ev.loc.metadata_key, &ev.metadata, &ev.metadata_len);
    if (rc) {
        set_msg(ev.message, sizeof ev.message,
                 "cannot read its description %s: %s", ev.loc.metadata_key, pps_strerror(rc));
        rc = PPS_EFETCH;
        goto fail;
    }
    push_event(f, &ev);
    return;
fail:
    location_free(&ev.loc);
    free(ev.metadata);
    ev.metadata = NULL;
    ev.metadata_len = 0;
    ev.status = rc;
    push_event(f, &ev);
}

static void *resolver_thread(void *arg)
{
    struct fetcher *f = arg;
    struct meta_client *mc = NULL;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        while (!f->stop && !f->rhead)
            pthread_cond_wait(&f->resolve_cv, &f->mu);
        if (f->stop) {
            pthread_mutex_unlock(&f->mu);
            break;
        }
        struct resolve_req *r = f->rhead;
        f->rhead = r->next;
        if (!f->rhead)
            f->rtail = NULL;
        pthread_mutex_unlock(&f->mu);
        resolve_one(f, &mc, r);
        free(r);
    }
    if (mc)
        meta_client_close(mc);
    return NULL;
}

void fetch_resolve(struct fetcher *f, const char *model, void *token)
{
    struct resolve_req *r = pps_xcalloc(1, sizeof *r);
    snprintf(r->model, sizeof r->model, "%s", model);
    r->token = token;
    pthread_mutex_lock(&f->mu);
    if (f->rtail)
        f->rtail->next = r;
    else
        f->rhead = r;
    f->rtail = r;
    pthread_cond_signal(&f->resolve_cv);
    pthread_mutex_unlock(&f->mu);
}

/* ---- jobs -------------------------------------------------------------- */

static int job_dead(const struct fetch_job *job)
{
    return atomic_load(&job->failed) != 0 || atomic_load(&job->canceled) != 0;
}

/* The request is over (landed: err = 0; or given up: err < 0, message set;
 * or skipped because the job is dead: err = 0, skipped = 1). */
static void retire(struct fetcher *f, struct fetch_req *r, int err, int skipped,
                   const char *message)
{
    struct fetch_job *job = r->job;
    struct fetch_event ev;
    if (err) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&job->failed, &expected, err) &&
            !atomic_load(&job->canceled)) {
            memset(&ev, 0, sizeof ev);
            ev.kind = FETCH_EV_FAILED;
            ev.job = job;
            ev.status = err;
            set_msg(ev.message, sizeof ev.message, "%s", message ? message : pps_strerror(err));
            push_event(f, &ev);
        }
    } else if (!skipped) {
        if (atomic_fetch_sub(&job->remaining[r->batch], 1) == 1 && !job_dead(job)) {
            memset(&ev, 0, sizeof ev);
            ev.kind = FETCH_EV_BATCH;
            ev.job = job;
            ev.batch = r->batch;
            push_event(f, &ev);
        }
    }
    free(r);
    if (atomic_fetch_sub(&job->outstanding, 1) == 1) {
        memset(&ev, 0, sizeof ev);
        ev.kind = FETCH_EV_FINISHED;
        ev.job = job;
        push_event(f, &ev);
    }
}

void fetch_job_set_owner(struct fetch_job *job, void *owner) { job->owner = owner; }
void *fetch_job_owner(const struct fetch_job *job) { return job->owner; }

struct fetch_job *fetch_job_new(struct fetcher *f, uint32_t nbatches)
{
    struct fetch_job *job = pps_xcalloc(1, sizeof *job);
    job->f = f;
    job->nbatches = nbatches;
    job->remaining = pps_xcalloc(nbatches ? nbatches : 1, sizeof *job->remaining);
    for (uint32_t i = 0; i < nbatches; i++)
        atomic_init(&job->remaining[i], 0);
    atomic_init(&job->outstanding, 0);
    atomic_init(&job->failed, 0);
    atomic_init(&job->canceled, 0);
    return job;
}

/* How a slice is cut into requests. With several connections per storage
 * it is cut into one piece per connection, so the connections pull one
 * batch together (batch 0 lands at their joint rate) instead of taking
 * whole batches in turn. Throttled fetches are cut into small requests so
 * the rate limit shapes the stream rather than letting whole slices through
 * in bursts. */
static uint64_t chunk_size(const struct fetcher *f, uint64_t slice_size)
{
    uint64_t c = UINT64_MAX;
    int n = f->cfg.conns_per_storage;
    if (n > 1) {
        c = (slice_size + (uint64_t)n - 1) / (uint64_t)n;
        c = (c + 4095) / 4096 * 4096;
        if (c < (1u << 20))
            c = 1u << 20;
    }
    if (f->cfg.throttle_bps) {
        uint64_t t = f->cfg.throttle_bps / 50;
        if (t < (64u << 10))
            t = 64u << 10;
        if (t > (1u << 20))
            t = 1u << 20;
        if (t < c)
            c = t;
    }
    return c;
}

void fetch_job_add(struct fetch_job *job, uint32_t batch, const struct location_slice *slice,
                   uint8_t *dst)
{
    PPS_ASSERT(batch < job->nbatches);
    uint64_t chunk = chunk_size(job->f, slice->size);
    uint64_t done = 0;
    while (done < slice->size) {
        uint64_t n = slice->size - done < chunk ? slice->size - done : chunk;
        struct fetch_req *r = pps_xcalloc(1, sizeof *r);
        r->job = job;
        r->batch = batch;
        r->offset = done; /* within the slice's storage value (one value per slice) */
        r->len = n;
        r->piece = (uint32_t)(done / chunk);
        r->dst = dst + done;
        snprintf(r->addr, sizeof r->addr, "%s", slice->addr);
        r->port = slice->port;
        snprintf(r->key, sizeof r->key, "%s", slice->storage_key);
        if (job->tail)
            job->tail->next = r;
        else
            job->head = r;
        job->tail = r;
        job->nreqs++;
        atomic_fetch_add(&job->remaining[batch], 1);
        done += n;
    }
}

static void *link_thread(void *arg);

/* Under f->mu. */
static struct storage_link *get_link(struct fetcher *f, const char *addr, uint16_t port)
{
    for (struct storage_link *l = f->links; l; l = l->next)
        if (l->port == port && strcmp(l->addr, addr) == 0)
            return l;
    struct storage_link *l = pps_xcalloc(1, sizeof *l);
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    l->port = port;
    l->f = f;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    l->nconns = f->cfg.conns_per_storage;
    l->conns = pps_xcalloc((size_t)l->nconns, sizeof *l->conns);
    for (int i = 0; i < l->nconns; i++) {
        l->conns[i].link = l;
        l->conns[i].fd = -1;
        if (pthread_create(&l->conns[i].thread, NULL, link_thread, &l->conns[i]) == 0)
            l->conns[i].started = 1;
        else
            log_error("cannot start a fetch thread for storage %s:%u", addr, port);
    }
    l->next = f->links;
    f->links = l;
    return l;
}

void fetch_job_submit(struct fetch_job *job)
{
    struct fetcher *f = job->f;
    if (job->nreqs == 0) {
        struct fetch_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind = FETCH_EV_FINISHED;
        ev.job = job;
        push_event(f, &ev);
        return;
    }
    atomic_store(&job->outstanding, (long)job->nreqs);
    struct fetch_req *r = job->head;
    job->head = job->tail = NULL;
    pthread_mutex_lock(&f->mu);
    while (r) {
        struct fetch_req *next = r->next;
        struct storage_link *l = get_link(f, r->addr, r->port);
        /* piece j of every slice goes to connection j: the connections of a
         * storage pull each batch together, each with its own pipeline */
        struct link_conn *lc = &l->conns[r->piece % (uint32_t)l->nconns];
        r->link = l;
        list_push(&lc->queue, r);
        r = next;
    }
    for (struct storage_link *l = f->links; l; l = l->next)
        pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Move r's of `job` (every dead job's if job is NULL) from q to out. */
static void list_take_job(struct req_list *q, const struct fetch_job *job, struct req_list *out)
{
    struct req_list keep = {0};
    struct fetch_req *r;
    while ((r = list_pop(q)) != NULL) {
        if (job ? r->job == job : job_dead(r->job))
            list_push(out, r);
        else
            list_push(&keep, r);
    }
    *q = keep;
}

static void retire_skipped(struct fetcher *f, struct req_list *q)
{
    struct fetch_req *r;
    while ((r = list_pop(q)) != NULL)
        retire(f, r, 0, 1, NULL);
}

/* Let go of the job at once, so its owner gets FINISHED (and may reuse the
 * memory) in milliseconds rather than after transfers or timeouts: its
 * queued requests are retired here, and a connection with one of its
 * requests in flight is shut down (its thread resends the other jobs'
 * requests on a new one, charging them nothing). */
void fetch_job_cancel(struct fetch_job *job)
{
    struct fetcher *f = job->f;
    struct req_list dead = {0};
    atomic_store(&job->canceled, 1);
    pthread_mutex_lock(&f->mu);
    for (struct storage_link *l = f->links; l; l = l->next)
        for (int i = 0; i < l->nconns; i++) {
            struct link_conn *lc = &l->conns[i];
            list_take_job(&lc->queue, job, &dead);
            for (struct fetch_req *r = lc->inflight.head; r; r = r->next)
                if (r->job == job) {
                    if (lc->fd >= 0 && !lc->interrupted) {
                        lc->interrupted = 1;
                        shutdown(lc->fd, SHUT_RDWR);
                    }
                    break;
                }
        }
    pthread_mutex_unlock(&f->mu);
    retire_skipped(f, &dead);
}

void fetch_job_free(struct fetch_job *job)
{
    if (!job)
        return;
    struct fetch_req *r = job->head;
    while (r) {
        struct fetch_req *next = r->next;
        free(r);
        r = next;
    }
    free(job->remaining);
    free(job);
}

/* ---- storage links ----------------------------------------------------- */

static void throttle_wait(struct fetcher *f, uint64_t bytes)
{
    if (!f->cfg.throttle_bps)
        return;
    pthread_mutex_lock(&f->throttle_mu);
    double now = mono_now();
    double start = f->throttle_clock > now ? f->throttle_clock : now;
    f->throttle_clock = start + (double)bytes / (double)f->cfg.throttle_bps;
    double until = f->throttle_clock;
    pthread_mutex_unlock(&f->throttle_mu);
    sleep_until(f, until);
}

static void conn_close(struct fetcher *f, struct link_conn *lc, struct storage_client **sc)
{
    pthread_mutex_lock(&f->mu);
    lc->fd = -1;
    pthread_mutex_unlock(&f->mu);
    if (*sc) {
        storage_client_close(*sc);
        *sc = NULL;
        atomic_fetch_sub(&f->storage_conns, 1);
    }
}

static int conn_open(struct fetcher *f, struct link_conn *lc, struct storage_client **sc)
{
    struct storage_link *l = lc->link;
    int rc = storage_client_connect(sc, l->addr, l->port);
    if (rc) {
        *sc = NULL;
        return rc;
    }
    int fd = storage_client_fd(*sc);
    if (f->cfg.progress_timeout_ms > 0)
        net_set_timeout(fd, f->cfg.progress_timeout_ms);
    atomic_fetch_add(&f->storage_conns, 1);
    pthread_mutex_lock(&f->mu);
    lc->fd = fd;
    int stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    if (stop) /* fetch_destroy may have missed this socket: give up now */
        return PPS_ECANCELED;
    return 0;
}

static void fail_message(char *buf, size_t len, const struct fetcher *f,
                         const struct fetch_req *r, int rc, const char *detail)
{
    char why[64];
    if (rc == PPS_ETIMEOUT) { /* the client's detail would only say "timed out" again */
        set_msg(why, sizeof why, "no progress for %.3g s", f->cfg.progress_timeout_ms / 1e3);
        detail = "";
    } else {
        set_msg(why, sizeof why, "%s", pps_strerror(rc));
    }
    set_msg(buf, len, "storage %s:%u, key %s [%llu, +%llu): %s%s%s (after %d attempts)",
            r->addr, r->port, r->key, (unsigned long long)r->offset,
            (unsigned long long)r->len, why, detail[0] ? ": " : "", detail, r->attempts);
}

/* After a failed transfer (rc) on lc: the requests in flight go back to
 * the front of the queue; the oldest live request is charged an attempt
 * unless fetch_job_cancel interrupted the connection, and fails when it has
 * no attempts left, after an error status from the storage, or after a
 * second stall (a storage that stops on a fresh connection too is frozen,
 * and more waiting would only hold the fetch). Returns 1 when the failure
 * counts (back off before reconnecting). */
static int requeue_after_failure(struct fetcher *f, struct link_conn *lc, int rc,
                                 const char *detail)
{
    struct storage_link *l = lc->link;
    struct req_list dead = {0}, failed = {0};
    char msg[384];
    pthread_mutex_lock(&f->mu);
    int interrupted = lc->interrupted;
    lc->interrupted = 0;
    struct req_list back = lc->inflight;
    memset(&lc->inflight, 0, sizeof lc->inflight);
    list_push_front_all(&lc->queue, &back);
    list_take_job(&lc->queue, NULL, &dead);
    struct fetch_req *head = lc->queue.head;
    int counts = !interrupted && rc != PPS_ECANCELED && head;
    int attempts = 0, stalls = 0; /* copied: once unlocked, a cancel may retire head */
    if (counts) {
        attempts = ++head->attempts;
        head->stalls += rc == PPS_ETIMEOUT;
        stalls = head->stalls;
        if (!is_transport_error(rc) || attempts > f->cfg.retries || stalls > 1)
            list_push(&failed, list_pop(&lc->queue));
    }
    pthread_mutex_unlock(&f->mu);
    retire_skipped(f, &dead);
    if (failed.head) {
        fail_message(msg, sizeof msg, f, failed.head, rc, detail);
        log_warn("fetch failed: %s", msg);
        retire(f, failed.head, PPS_EFETCH, 0, msg);
    } else if (counts) {
        log_warn("storage %s:%u: %s; reconnecting (attempt %d of %d)", l->addr, l->port,
                 rc == PPS_ETIMEOUT ? "no progress (--progress-timeout)" : pps_strerror(rc),
                 attempts + 1, stalls ? 2 : f->cfg.retries + 1);
    }
    return counts;
}

static void *link_thread(void *arg)
{
    struct link_conn *lc = arg;
    struct storage_link *l = lc->link;
    struct fetcher *f = l->f;
    struct storage_client *sc = NULL;
    int failures = 0; /* consecutive broken connections */

    for (;;) {
        pthread_mutex_lock(&f->mu);
        while (!f->stop && !lc->inflight.n && !lc->queue.n)
            pthread_cond_wait(&l->cv, &f->mu);
        if (f->stop) {
            pthread_mutex_unlock(&f->mu);
            break;
        }
        pthread_mutex_unlock(&f->mu);

        /* No request is in flight while connecting, so a cancelled job
         * never waits for a connect. */
        int rc = sc ? 0 : conn_open(f, lc, &sc);

        /* send what fits in the pipeline */
        struct req_list dead = {0};
        pthread_mutex_lock(&f->mu);
        while (!rc && lc->inflight.n < f->cfg.depth && lc->queue.n) {
            struct fetch_req *r = list_pop(&lc->queue);
            if (job_dead(r->job)) {
                list_push(&dead, r);
                continue;
            }
            list_push(&lc->inflight, r);
            pthread_mutex_unlock(&f->mu);
            rc = storage_get_send(sc, r->key, r->offset, r->len);
            pthread_mutex_lock(&f->mu);
        }
        struct fetch_req *head = lc->inflight.head;
        pthread_mutex_unlock(&f->mu);
        retire_skipped(f, &dead);

        if (!rc && head) {
            if (job_dead(head->job)) {
                /* its bytes must not land: drop the connection instead */
                rc = PPS_ECANCELED;
            } else {
                /* receive the oldest response straight into the pool */
                throttle_wait(f, head->len);
                uint64_t got = 0;
                rc = storage_get_recv(sc, head->dst, head->len, &got);
                if (!rc && got != head->len)
                    rc = PPS_ETRUNCATED;
                if (!rc) {
                    pthread_mutex_lock(&f->mu);
                    list_pop(&lc->inflight);
                    pthread_mutex_unlock(&f->mu);
                    atomic_fetch_add(&f->bytes_received, got);
                    atomic_fetch_add(&f->requests, 1);
                    failures = 0;
                    retire(f, head, 0, 0, NULL);
                    continue;
                }
            }
        }
        if (!rc)
            continue;
        /* Something failed: the stream is out of step, so reconnect and
         * resend everything unanswered. */
        if (f->stop)
            break;
        char detail[160] = "";
        if (sc)
            set_msg(detail, sizeof detail, "%s", storage_client_error(sc));
        conn_close(f, lc, &sc);
        atomic_fetch_add(&f->reconnects, 1);
        if (!requeue_after_failure(f, lc, rc, detail))
            continue;
        failures++;
        double backoff = 0.05 * (double)(1u << (failures < 5 ? failures - 1 : 4));
        if (sleep_until(f, mono_now() + backoff))
            break;
    }
    /* stopping: drop what this thread still holds (jobs never finish now) */
    conn_close(f, lc, &sc);
    pthread_mutex_lock(&f->mu);
    struct req_list mine = lc->inflight;
    memset(&lc->inflight, 0, sizeof lc->inflight);
    pthread_mutex_unlock(&f->mu);
    struct fetch_req *r;
    while ((r = list_pop(&mine)) != NULL)
        free(r);
    return NULL;
}

/* ---- lifecycle --------------------------------------------------------- */

int fetch_create(struct fetcher **out, const struct fetch_config *cfg)
{
    if (cfg->conns_per_storage < 1 || cfg->depth < 1 || cfg->retries < 0)
        return PPS_EINVAL;
    struct fetcher *f = pps_xcalloc(1, sizeof *f);
    f->cfg = *cfg;
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->throttle_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->stop_cv, &ca);
    pthread_cond_init(&f->resolve_cv, &ca);
    pthread_condattr_destroy(&ca);
    f->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->efd < 0) {
        int rc = pps_from_errno(errno);
        free(f);
        return rc;
    }
    if (pthread_create(&f->resolver, NULL, resolver_thread, f) != 0) {
        close(f->efd);
        free(f);
        return PPS_ENOMEM;
    }
    f->resolver_started = 1;
    *out = f;
    return 0;
}

void fetch_destroy(struct fetcher *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->stop_cv);
    pthread_cond_broadcast(&f->resolve_cv);
    for (struct storage_link *l = f->links; l; l = l->next) {
        pthread_cond_broadcast(&l->cv);
        /* interrupt transfers in progress; the threads see stop next */
        for (int i = 0; i < l->nconns; i++)
            if (l->conns[i].fd >= 0)
                shutdown(l->conns[i].fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&f->mu);
    for (struct storage_link *l = f->links; l; l = l->next)
        for (int i = 0; i < l->nconns; i++)
            if (l->conns[i].started)
                pthread_join(l->conns[i].thread, NULL);
    if (f->resolver_started)
        pthread_join(f->resolver, NULL);
    while (f->links) {
        struct storage_link *l = f->links;
        f->links = l->next;
        for (int i = 0; i < l->nconns; i++) {
            struct fetch_req *r;
            while ((r = list_pop(&l->conns[i].queue)) != NULL)
                free(r);
        }
        pthread_cond_destroy(&l->cv);
        free(l->conns);
        free(l);
    }
    while (f->rhead) {
        struct resolve_req *r = f->rhead;
        f->rhead = r->next;
        free(r);
    }
    struct fetch_event ev;
    while (fetch_next_event(f, &ev))
        if (ev.kind == FETCH_EV_RESOLVED) {
            location_free(&ev.loc);
            free(ev.metadata);
        }
    close(f->efd);
    pthread_cond_destroy(&f->stop_cv);
    pthread_cond_destroy(&f->resolve_cv);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->throttle_mu);
    free(f);
}
