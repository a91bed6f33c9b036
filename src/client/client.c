/* client: the three clients over one engine; see client.h.
 *
 * Closed loops (client_one, client_concurrent) run one thread per loop,
 * each with its own connection, taking the next row of the list from a
 * shared counter. The open loop (client) sends on one connection from a
 * sender thread while the main thread receives: request i leaves at
 * start + the sum of the intervals before it (absolute deadlines, so a late
 * send never shifts the ones after it, and a slow answer delays nothing),
 * answers are matched by request id in any order.
 *
 * The easy thing to get wrong: never hang. Every wait has a bound
 * (--timeout per request); a connection that fails ends the requests on
 * it with an error line, and the run always finishes with a summary. */
#include "client/client.h"
#include "client/client_stats.h"
#include "client/request_list.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/net.h"
#include "formats/npy.h"
#include "server/infer_client.h"
#include "server/server_proto.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_MAX_RESPONSE (UINT64_C(16) << 30)
#define PROGRESS_EVERY_S 2.0

enum { MODE_CLOSED, MODE_OPEN };

struct client_cfg {
    const char *prog;
    int mode;
    int loops;                 /* closed loops */
    const char *list_path;
    char host[256];
    uint16_t port;
    const char *input, *input_dir, *csv, *dump_dir;
    int quiet;
    double timeout_s;
    uint64_t seed;
};

/* The encoded INFER payload for one (model, batch), or why there is none. */
struct prepared {
    char model[REQUEST_MODEL_MAX + 1];
    int batch;                 /* the list's batch_size */
    int sent_batch;            /* the batch actually sent (an --input file's first dimension) */
    struct wbuf payload;
    int status;
    char err[256];
};

struct result {
    int done;
    int status;                /* 0 or PPS_E* */
    double sched_s, send_s, latency_ms;
    struct infer_timing t;
    int has_lb;
    struct infer_lb_block lb;
    char err[200];
};

struct run {
    struct client_cfg cfg;
    struct request_list list;
    struct prepared *prep;
    int nprep;
    int *prep_of;              /* row -> prepared index */
    struct result *res;
    double t0;
    atomic_int next;
    pthread_mutex_t out_lock;
    int ndone, nerr;
    double last_progress;
    int progress;
    char direct[300];          /* "host:port" connected to: where requests ran without a balancer */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *source_name(uint8_t s)
{
    return s == INFER_SRC_RESIDENT ? "resident" : s == INFER_SRC_CACHE ? "cache" : "storage";
}

/* ---- inputs --------------------------------------------------------------- */

/* Every connection gets --timeout on its reads and writes: a peer that
 * accepts and then says nothing (or half a frame) must not hang a client. */
static int connect_peer(const struct client_cfg *cfg, int *fd)
{
    int rc = net_connect(cfg->host, cfg->port, 5000, fd);
    if (rc)
        return rc;
    net_set_bufsize(*fd, 4 << 20);
    net_set_timeout(*fd, cfg->timeout_s < 2e6 ? (int)(cfg->timeout_s * 1000) : 2000000000);
    return 0;
}

static int prepare_inputs(struct run *r)
{
    r->prep_of = calloc((size_t)r->list.n, sizeof *r->prep_of);
    r->prep = calloc((size_t)r->list.n, sizeof *r->prep);
    if (!r->prep_of || !r->prep)
        return PPS_ENOMEM;
    int fd = -1, rc;
    if ((rc = connect_peer(&r->cfg, &fd))) {
        fprintf(stderr, "%s: cannot connect to %s:%u: %s\n", r->cfg.prog, r->cfg.host, r->cfg.port, pps_strerror(rc));
        return rc;
    }
    for (int i = 0; i < r->list.n; i++) {
        const struct request_row *row = &r->list.rows[i];
        int k = 0;
        while (k < r->nprep && !(r->prep[k].batch == row->batch && strcmp(r->prep[k].model, row->model) == 0))
            k++;
        r->prep_of[i] = k;
        if (k < r->nprep)
            continue;
        struct prepared *p = &r->prep[r->nprep++];
        snprintf(p->model, sizeof p->model, "%s", row->model);
        p->batch = row->batch;
        wbuf_init(&p->payload);
        char path[4096];
        const char *npy = r->cfg.input;
        if (!npy && r->cfg.input_dir) {
            snprintf(path, sizeof path, "%s/%s.npy", r->cfg.input_dir, row->model);
            if (access(path, R_OK) == 0)
                npy = path;
        }
        struct infer_request req;
        void *owned = NULL;
        p->status = infer_build_request(fd, row->model, row->batch, r->cfg.seed, npy, &req, &owned, p->err,
                                        sizeof p->err);
        if (p->status == PPS_ECLOSED || p->status == PPS_EIO || p->status == PPS_ETIMEOUT) {
            /* the connection broke: a fresh one for the next model */
            close(fd);
            if (connect_peer(&r->cfg, &fd))
                fd = -1;
        }
        p->sent_batch = row->batch;
        if (!p->status) {
            infer_encode_request(&p->payload, &req);
            p->sent_batch = (int)req.inputs[0].dims[0];
        }
        free(owned);
        if (fd < 0) {
            fprintf(stderr, "%s: lost the connection to %s:%u while preparing inputs\n", r->cfg.prog, r->cfg.host,
                    r->cfg.port);
            return PPS_ECLOSED;
        }
    }
    close(fd);
    return 0;
}

/* ---- recording ------------------------------------------------------------ */

/* The batch request i really carries. */
#define BATCH(r, i) ((r)->prep[(r)->prep_of[i]].sent_batch)

static void dump_output(struct run *r, int i, const struct infer_response *resp)
{
    if (!r->cfg.dump_dir || resp->noutputs < 1)
        return;
    const struct infer_tensor *o = &resp->outputs[0];
    char path[4096];
    snprintf(path, sizeof path, "%s/%d-%s.npy", r->cfg.dump_dir, i + 1, r->list.rows[i].model);
    int rc = npy_write_file(path, (enum npy_dtype)o->dtype, o->ndims, o->dims, o->data, o->nbytes);
    if (rc)
        fprintf(stderr, "%s: cannot write %s: %s\n", r->cfg.prog, path, pps_strerror(rc));
}

/* Record request i's answer (payload of a response frame with status). */
static void record(struct run *r, int i, int status, const uint8_t *payload, uint64_t len, double t_answer)
{
    struct result *res = &r->res[i];
    res->latency_ms = (t_answer - r->t0 - res->send_s) * 1e3;
    res->status = status;
    if (status == 0) {
        struct infer_response resp;
        char why[160];
        int rc = infer_decode_response(payload, len, &resp, why, sizeof why);
        if (rc) {
            res->status = rc;
            snprintf(res->err, sizeof res->err, "malformed answer: %s", why);
        } else {
            res->t = resp.timing;
            res->has_lb = resp.has_lb;
            res->lb = resp.lb;
            dump_output(r, i, &resp);
        }
    } else {
        int n = (int)(len < sizeof res->err - 1 ? len : sizeof res->err - 1);
        snprintf(res->err, sizeof res->err, "%.*s", n, payload ? (const char *)payload : "");
    }
    pthread_mutex_lock(&r->out_lock);
    res->done = 1;
    r->ndone++;
    const struct request_row *row = &r->list.rows[i];
    if (res->status) {
        r->nerr++;
        if (!r->cfg.quiet)
            printf("%d %s batch %d ERROR %s: %s\n", i + 1, row->model, BATCH(r, i), pps_errname(res->status),
                   res->err);
    } else if (!r->cfg.quiet) {
        printf("%d %s batch %d %.3f ms server %s source %s (queue %.3f + %.3f ms, wait %.3f ms, compute %.3f ms)\n",
               i + 1, row->model, BATCH(r, i), res->latency_ms, res->has_lb ? res->lb.server : r->direct,
               source_name(res->t.source), res->has_lb ? res->lb.lb_queue_us / 1e3 : 0.0, res->t.queue_us / 1e3,
               res->t.wait_us / 1e3, res->t.compute_us / 1e3);
    }
    if (r->progress) {
        double t = now_s();
        if (t - r->last_progress >= PROGRESS_EVERY_S || r->ndone == r->list.n) {
            r->last_progress = t;
            fprintf(stderr, "\r%s: %d/%d answered, %d errors, %.0f s%s", r->cfg.prog, r->ndone, r->list.n, r->nerr,
                    t - r->t0, r->ndone == r->list.n ? "\n" : "");
        }
    }
    pthread_mutex_unlock(&r->out_lock);
}

static void fail_request(struct run *r, int i, int status, const char *msg)
{
    r->res[i].send_s = r->res[i].send_s ? r->res[i].send_s : now_s() - r->t0;
    record(r, i, status, (const uint8_t *)msg, strlen(msg), now_s());
}

/* ---- closed loops --------------------------------------------------------- */

static void *closed_loop(void *arg)
{
    struct run *r = arg;
    int fd = -1;
    for (;;) {
        int i = atomic_fetch_add(&r->next, 1);
        if (i >= r->list.n)
            break;
        struct prepared *p = &r->prep[r->prep_of[i]];
        if (p->status) {
            fail_request(r, i, p->status, p->err);
            continue;
        }
        if (fd < 0) {
            int rc = connect_peer(&r->cfg, &fd);
            if (rc) {
                fd = -1;
                fail_request(r, i, rc, "cannot connect");
                continue;
            }
        }
        struct frame_header h = {.type = MSG_INFER, .request_id = (uint64_t)i + 1};
        r->res[i].send_s = now_s() - r->t0;
        r->res[i].sched_s = r->res[i].send_s;
        int rc = frame_send(fd, &h, p->payload.data, p->payload.len);
        struct frame_header a;
        uint8_t *payload = NULL;
        if (!rc)
            rc = frame_recv(fd, &a, &payload, CLIENT_MAX_RESPONSE);
        if (!rc && a.request_id != h.request_id)
            rc = PPS_EPROTO;
        if (rc) {
            free(payload);
            close(fd);
            fd = -1;
            fail_request(r, i, rc, rc == PPS_ETIMEOUT ? "no answer within --timeout" : "the connection failed");
            continue;
        }
        record(r, i, a.status, payload, a.payload_len, now_s());
        free(payload);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* ---- open loop ------------------------------------------------------------ */

struct sender {
    struct run *r;
    int fd;
    atomic_int sent;           /* rows handed to the socket (or failed) */
    atomic_int stop;
};

/* Sleep until t_abs (CLOCK_MONOTONIC seconds) or until *stop is set,
 * whichever is first: in slices of at most 50 ms, the last one absolute, so
 * a receiver that gives up never waits for a send scheduled far ahead. */
static void sleep_until(double t_abs, atomic_int *stop)
{
    for (;;) {
        double t = now_s();
        if (t >= t_abs || atomic_load(stop))
            return;
        double until = t_abs - t > 0.05 ? t + 0.05 : t_abs;
        struct timespec ts;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

static void *open_sender(void *arg)
{
    struct sender *s = arg;
    struct run *r = s->r;
    double sched = 0;
    for (int i = 0; i < r->list.n; i++) {
        r->res[i].sched_s = sched;
        sched += r->list.rows[i].interval_s;
        sleep_until(r->t0 + r->res[i].sched_s, &s->stop);
        if (atomic_load(&s->stop)) {
            fail_request(r, i, PPS_ECLOSED, "not sent: the connection failed or timed out");
            atomic_fetch_add(&s->sent, 1);
            continue;
        }
        struct prepared *p = &r->prep[r->prep_of[i]];
        if (p->status) {
            fail_request(r, i, p->status, p->err);
            atomic_fetch_add(&s->sent, 1);
            continue;
        }
        struct frame_header h = {.type = MSG_INFER, .request_id = (uint64_t)i + 1};
        r->res[i].send_s = now_s() - r->t0;
        if (frame_send(s->fd, &h, p->payload.data, p->payload.len)) {
            atomic_store(&s->stop, 1);
            fail_request(r, i, PPS_ECLOSED, "send failed: the connection broke");
        }
        atomic_fetch_add(&s->sent, 1);
    }
    return NULL;
}

static int open_loop(struct run *r)
{
    struct sender s = {.r = r, .fd = -1};
    int rc = connect_peer(&r->cfg, &s.fd);
    if (rc) {
        fprintf(stderr, "%s: cannot connect to %s:%u: %s\n", r->cfg.prog, r->cfg.host, r->cfg.port, pps_strerror(rc));
        return rc;
    }
    pthread_t th;
    r->t0 = now_s();
    pthread_create(&th, NULL, open_sender, &s);
    double last_answer = now_s();
    for (;;) {
        pthread_mutex_lock(&r->out_lock);
        int all = r->ndone >= r->list.n;
        pthread_mutex_unlock(&r->out_lock);
        if (all)
            break;
        struct pollfd pfd = {.fd = s.fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 200);
        if (pr == 0) {
            /* Nothing to read: give up only if requests are out and no
             * answer came for --timeout. */
            int sent = atomic_load(&s.sent);
            pthread_mutex_lock(&r->out_lock);
            int outstanding = sent - r->ndone;
            pthread_mutex_unlock(&r->out_lock);
            if (outstanding > 0 && now_s() - last_answer > r->cfg.timeout_s)
                break;
            if (outstanding <= 0)
                last_answer = now_s();
            continue;
        }
        struct frame_header a;
        uint8_t *payload = NULL;
        rc = pr < 0 ? PPS_EIO : frame_recv(s.fd, &a, &payload, CLIENT_MAX_RESPONSE);
        if (rc) {
            free(payload);
            break;
        }
        last_answer = now_s();
        int i = (int)a.request_id - 1;
        if (i < 0 || i >= r->list.n || r->res[i].done || r->res[i].send_s == 0) {
            fprintf(stderr, "%s: answer with unknown request id %" PRIu64 " ignored\n", r->cfg.prog, a.request_id);
            free(payload);
            continue;
        }
        record(r, i, a.status, payload, a.payload_len, last_answer);
        free(payload);
    }
    /* Whatever is still open failed: stop sending, wait for the sender. */
    atomic_store(&s.stop, 1);
    shutdown(s.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    for (int i = 0; i < r->list.n; i++)
        if (!r->res[i].done)
            fail_request(r, i, rc ? PPS_ECLOSED : PPS_ETIMEOUT,
                         rc ? "the connection broke before the answer" : "no answer within --timeout");
    close(s.fd);
    return 0;
}

/* ---- summary and CSV ------------------------------------------------------ */

static int write_csv(struct run *r)
{
    FILE *f = fopen(r->cfg.csv, "w");
    if (!f) {
        fprintf(stderr, "%s: cannot write %s: %s\n", r->cfg.prog, r->cfg.csv, strerror(errno));
        return PPS_EIO;
    }
    fprintf(f, "id,send_s,sched_s,model,batch,status,latency_ms,server,lb_queue_ms,server_queue_ms,wait_ms,"
               "compute_ms,server_total_ms,source,attempts\n");
    for (int i = 0; i < r->list.n; i++) {
        const struct result *x = &r->res[i];
        const struct request_row *row = &r->list.rows[i];
        if (x->status)
            fprintf(f, "%d,%.6f,%.6f,%s,%d,%s,%.3f,,,,,,,,\n", i + 1, x->send_s, x->sched_s, row->model, BATCH(r, i),
                    pps_errname(x->status), x->latency_ms);
        else
            fprintf(f, "%d,%.6f,%.6f,%s,%d,0,%.3f,%s,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%d\n", i + 1, x->send_s, x->sched_s,
                    row->model, BATCH(r, i), x->latency_ms, x->has_lb ? x->lb.server : r->direct, x->lb.lb_queue_us / 1e3,
                    x->t.queue_us / 1e3, x->t.wait_us / 1e3, x->t.compute_us / 1e3, x->t.total_us / 1e3,
                    source_name(x->t.source), x->has_lb ? x->lb.attempts : 1);
    }
    int bad = ferror(f);
    if (fclose(f) || bad)
        return PPS_EIO;
    return 0;
}

static void print_summary(struct run *r, double duration)
{
    int n = r->list.n, ok = 0, timeouts = 0;
    double *lat = calloc((size_t)n + 1, sizeof *lat);
    double *src[3];
    int nsrc[3] = {0};
    for (int k = 0; k < 3; k++)
        src[k] = calloc((size_t)n + 1, sizeof *src[k]);
    double late_sum = 0, late_max = 0;
    for (int i = 0; i < n; i++) {
        const struct result *x = &r->res[i];
        if (x->status == PPS_ETIMEOUT)
            timeouts++;
        if (x->status)
            continue;
        lat[ok++] = x->latency_ms;
        int k = x->t.source < 3 ? x->t.source : 2;
        src[k][nsrc[k]++] = x->latency_ms;
        double late = (x->send_s - x->sched_s) * 1e3;
        late_sum += late;
        if (late > late_max)
            late_max = late;
    }
    struct client_summary s;
    client_summarize(lat, ok, &s);
    printf("summary: %d requests, %d ok, %d errors, %d timeouts in %.2f s: %.2f req/s\n", n, ok, n - ok, timeouts,
           duration, duration > 0 ? ok / duration : 0.0);
    printf("latency ms: mean %.3f (stdev %.3f) p50 %.3f p90 %.3f p99 %.3f max %.3f\n", s.mean, s.stdev, s.p50, s.p90,
           s.p99, s.max);
    printf("by source:");
    static const char *const names[3] = {"resident", "cache", "storage"};
    for (int k = 0; k < 3; k++) {
        struct client_summary ks;
        client_summarize(src[k], nsrc[k], &ks);
        printf(" %s %d (p50 %.3f ms)%s", names[k], nsrc[k], ks.p50, k < 2 ? "," : "\n");
    }
    if (r->cfg.mode == MODE_OPEN && ok)
        printf("send lateness ms: mean %.3f max %.3f\n", late_sum / ok, late_max);
    for (int k = 0; k < 3; k++)
        free(src[k]);
    free(lat);
}

/* ---- command lines -------------------------------------------------------- */

static void usage(FILE *out, const char *prog)
{
    if (strcmp(prog, "client_concurrent") == 0)
        fprintf(out, "usage: client_concurrent N REQUEST_LIST LB_ADDR LB_PORT [options]\n"
                     "  N closed loops (N requests in flight) sharing the request list.\n");
    else if (strcmp(prog, "client") == 0)
        fprintf(out, "usage: client REQUEST_LIST LB_ADDR LB_PORT [options]\n"
                     "  Open loop: request i is sent at start + the sum of the intervals before it,\n"
                     "  whatever the answers do; reports how late the sends were.\n");
    else
        fprintf(out, "usage: client_one REQUEST_LIST LB_ADDR LB_PORT [options]\n"
                     "  Closed loop: one request at a time, in list order (intervals ignored).\n");
    fprintf(out, "  REQUEST_LIST     'model_name, batch_size, send_interval' rows (see `workload`)\n"
                 "  --input X.npy    send this input for every request (batch = its first dimension)\n"
                 "  --input-dir DIR  send DIR/<model>.npy where it exists\n"
                 "                   (otherwise: generated from the model's input spec, deterministic)\n"
                 "  --seed S         seed of generated inputs (default 1)\n"
                 "  --csv FILE       one row per request (times, latency, server, breakdown, source)\n"
                 "  --dump-dir DIR   write each answer's first output as DIR/<id>-<model>.npy\n"
                 "  --quiet          print only the summary\n"
                 "  --timeout S      give up on an answer after S seconds (default 120)\n"
                 "  Exit status 0 only if every request succeeded.\n");
}

static int client_run(int argc, char **argv, const char *prog, int mode, int takes_n)
{
    struct args_option opts[] = {
        {"input", 1, NULL}, {"input-dir", 1, NULL}, {"seed", 1, NULL}, {"csv", 1, NULL},
        {"dump-dir", 1, NULL}, {"quiet", 0, NULL}, {"timeout", 1, NULL},
    };
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 7, &a, &help) || a.npositional != 3 + takes_n) {
        usage(help ? stdout : stderr, prog);
        return help ? 0 : 2;
    }
    struct run r;
    memset(&r, 0, sizeof r);
    struct client_cfg *cfg = &r.cfg;
    cfg->prog = prog;
    cfg->mode = mode;
    cfg->loops = 1;
    cfg->timeout_s = 120;
    cfg->seed = 1;
    const char *const *pos = a.positional;
    if (takes_n && args_parse_int(pos[0], 1, 4096, &cfg->loops)) {
        fprintf(stderr, "%s: bad N '%s' (1..4096)\n", prog, pos[0]);
        return 2;
    }
    pos += takes_n;
    cfg->list_path = pos[0];
    if (snprintf(cfg->host, sizeof cfg->host, "%s", pos[1]) >= (int)sizeof cfg->host ||
        net_parse_port(pos[2], &cfg->port)) {
        fprintf(stderr, "%s: bad address '%s' port '%s'\n", prog, pos[1], pos[2]);
        return 2;
    }
    snprintf(r.direct, sizeof r.direct, "%s:%u", cfg->host, cfg->port);
    cfg->input = opts[0].value;
    cfg->input_dir = opts[1].value;
    cfg->csv = opts[3].value;
    cfg->dump_dir = opts[4].value;
    cfg->quiet = opts[5].value != NULL;
    if (opts[2].value && args_parse_u64(opts[2].value, &cfg->seed)) {
        fprintf(stderr, "%s: bad --seed '%s'\n", prog, opts[2].value);
        return 2;
    }
    if (opts[6].value) {
        char *end;
        cfg->timeout_s = strtod(opts[6].value, &end);
        if (end == opts[6].value || *end || !(cfg->timeout_s > 0)) {
            fprintf(stderr, "%s: bad --timeout '%s'\n", prog, opts[6].value);
            return 2;
        }
    }
    if (cfg->dump_dir && mkdir(cfg->dump_dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create %s: %s\n", prog, cfg->dump_dir, strerror(errno));
        return 1;
    }
    char err[512];
    if (request_list_read(cfg->list_path, &r.list, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 1;
    }
    net_ignore_sigpipe();
    int status = 1;
    pthread_mutex_init(&r.out_lock, NULL);
    r.res = calloc((size_t)r.list.n, sizeof *r.res);
    if (!r.res || prepare_inputs(&r))
        goto out;
    r.progress = !cfg->quiet && isatty(2);
    if (mode == MODE_OPEN) {
        open_loop(&r);
    } else {
        int n = cfg->loops < r.list.n ? cfg->loops : r.list.n;
        pthread_t *th = calloc((size_t)n, sizeof *th);
        r.t0 = now_s();
        for (int i = 0; i < n; i++)
            pthread_create(&th[i], NULL, closed_loop, &r);
        for (int i = 0; i < n; i++)
            pthread_join(th[i], NULL);
        free(th);
    }
    double duration = now_s() - r.t0;
    fflush(stdout);
    print_summary(&r, duration);
    if (cfg->csv && write_csv(&r))
        goto out;
    status = r.nerr ? 1 : 0;
out:
    for (int i = 0; i < r.nprep; i++)
        wbuf_free(&r.prep[i].payload);
    free(r.prep);
    free(r.prep_of);
    free(r.res);
    request_list_free(&r.list);
    pthread_mutex_destroy(&r.out_lock);
    return status;
}

int client_one_main(int argc, char **argv) { return client_run(argc, argv, "client_one", MODE_CLOSED, 0); }

int client_main(int argc, char **argv) { return client_run(argc, argv, "client", MODE_OPEN, 0); }

int client_concurrent_main(int argc, char **argv)
{
    return client_run(argc, argv, "client_concurrent", MODE_CLOSED, 1);
}
