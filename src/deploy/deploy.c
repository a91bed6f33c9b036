/* deploy: deploy_file, the tool that puts kv.bin's models on the storage
 * tier.
 *
 * Phases, each finished before the next starts:
 *   1. check: parse both lists, open kv.bin, check every listed model
 *      (present, complete, all checksums), connect to the metadata storage
 *      and to every storage a model uses, read the models' old location
 *      records. Any failure here ends the run before anything is written.
 *   2. push: one thread per storage puts that storage's slices of every
 *      model under "<key>@<generation>" (beside any older generation, never
 *      over it). A failure stops all threads; the slices pushed so far are
 *      deleted best-effort and nothing is published.
 *   3. publish, model by model: "<model>-METADATA@<gen>", "<model>-SIZE",
 *      then "<model>-LOCATION". The location record is the commit point.
 *   4. clean up: delete the previous generation's slices and description.
 *
 * A LOCATION put that fails without an answer (the connection broke after
 * the request went out) has an unknown outcome: the record may be durable.
 * deploy_file then reconnects (for --retry-for seconds) and reads the record
 * back: if it names the new generation the model is published, otherwise it
 * is not; if the metadata storage stays unreachable, nothing of that model
 * is deleted (either generation may be the live one) and the user is told
 * to run `pipeps gc` once it is back.
 *
 * The one thing easy to get wrong: the generation must grow for every
 * model, even if the clock did not (two deploys in one millisecond, a clock
 * set back), or a redeploy would overwrite values a published record still
 * points to, and the clean-up would then delete the live copy. */
#include "deploy/deploy.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/net.h"
#include "deploy/deploy_plan.h"
#include "formats/kvbin.h"
#include "formats/location.h"
#include "metadata/meta_client.h"
#include "storage/storage_client.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ERRLEN 1024
#define PROGRESS_INTERVAL_MS 200

/* ------------------------------------------------------------ state */

struct model_job {
    const struct deploy_dist_entry *dist;
    const struct kvbin_model *km;
    const struct kvbin_record *meta_rec;
    struct location_record loc;     /* the new record, built before pushing */
    struct location_record old;     /* the published one, if have_old */
    int have_old;
    int publish_tried;              /* its SIZE may have been overwritten */
    int published;
    int unknown;                    /* LOCATION sent, outcome never learnt */
};

struct push {
    char storage_key[LOCATION_NAME_MAX + 1];
    const uint8_t *data;
    uint64_t len;
    int attempted;                  /* may be on the storage (for clean-up) */
};

struct deploy_run;

struct storage_worker {
    uint32_t index;                          /* in the storage list */
    const struct deploy_endpoint *ep;
    struct storage_client *client;
    struct push *pushes;
    size_t npushes, cap;
    uint64_t bytes;
    pthread_t thread;
    int rc;
    char err[ERRLEN];
    struct deploy_run *run;
};

struct deploy_run {
    const char *storage_list_path;
    const char *dist_list_path;
    struct deploy_storage_list sl;
    struct deploy_dist_list dl;
    struct kvbin kv;
    struct meta_client *meta;
    struct model_job *jobs;
    uint32_t njobs;
    struct storage_worker *workers[DEPLOY_MAX_STORAGES]; /* by storage index; NULL if unused */
    uint64_t generation;
    uint64_t total_bytes;
    _Atomic uint64_t bytes_done;
    _Atomic int stop;               /* a worker failed: the others stop */
    _Atomic uint32_t running;
    int tty;
    int retry_for_s;                /* --retry-for: reconnecting to the metadata storage */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *human(uint64_t bytes, char *out, size_t outlen)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(out, outlen, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return out;
}

static void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "deploy_file: error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ------------------------------------------------------------ phase 1 */

static int load_lists(struct deploy_run *r)
{
    char err[ERRLEN], *text;
    size_t len;
    int rc = deploy_read_list_file(r->storage_list_path, &text, &len, err, sizeof err);
    if (!rc) {
        rc = deploy_parse_storage_list(text, len, r->storage_list_path, &r->sl, err, sizeof err);
        free(text);
    }
    if (rc) {
        errorf("%s", err);
        return rc;
    }
    rc = deploy_read_list_file(r->dist_list_path, &text, &len, err, sizeof err);
    if (!rc) {
        rc = deploy_parse_dist_list(text, len, r->dist_list_path, r->sl.nstorages, &r->dl, err, sizeof err);
        free(text);
    }
    if (rc)
        errorf("%s", err);
    return rc;
}

/* Every listed model is in kv.bin, complete, intact, and fits the limits of
 * the keys and records it will produce. */
static int check_models(struct deploy_run *r)
{
    char err[ERRLEN];
    r->jobs = pps_xcalloc(r->dl.nmodels ? r->dl.nmodels : 1, sizeof *r->jobs);
    r->njobs = r->dl.nmodels;
    for (uint32_t i = 0; i < r->njobs; i++) {
        struct model_job *j = &r->jobs[i];
        j->dist = &r->dl.models[i];
        const char *name = j->dist->model;
        j->km = kvbin_find_model(&r->kv, name);
        if (!j->km) {
            errorf("%s:%d: model %s is not in %s", r->dist_list_path, j->dist->line, name, r->kv.path);
            return PPS_ENOTFOUND;
        }
        if (strlen(name) > DEPLOY_MODEL_NAME_MAX) {
            errorf("%s:%d: model name %s is longer than %d bytes, too long for its storage keys",
                   r->dist_list_path, j->dist->line, name, DEPLOY_MODEL_NAME_MAX);
            return PPS_EINVAL;
        }
        if (j->km->nbatches > LOCATION_MAX_KEYS) {
            errorf("%s: model %s has %u batches, a location record holds at most %d", r->kv.path, name,
                   j->km->nbatches, LOCATION_MAX_KEYS);
            return PPS_ETOOBIG;
        }
        int rc = kvbin_check_model(&r->kv, j->km, 1, err, sizeof err);
        if (rc) {
            errorf("%s", err);
            return rc;
        }
        char key[KVBIN_NAME_MAX + 16];
        snprintf(key, sizeof key, "%s-METADATA", name);
        j->meta_rec = kvbin_find_record(j->km, key);
        PPS_ASSERT(j->meta_rec); /* kvbin_check_model saw it */
        if (j->meta_rec->len > META_MAX_VALUE) {
            errorf("%s: %s is %" PRIu64 " bytes, the metadata storage takes at most %u", r->kv.path, key,
                   j->meta_rec->len, META_MAX_VALUE);
            return PPS_ETOOBIG;
        }
        for (uint32_t b = 0; b < j->km->nrecords; b++)
            if (j->km->records[b].len > STORAGE_MAX_VALUE) {
                errorf("%s: %s is %" PRIu64 " bytes, a storage value is at most %llu", r->kv.path,
                       j->km->records[b].key, j->km->records[b].len, (unsigned long long)STORAGE_MAX_VALUE);
                return PPS_ETOOBIG;
            }
    }
    return 0;
}

static int connect_meta(struct deploy_run *r)
{
    int rc = meta_client_connect(&r->meta, r->sl.meta.addr, r->sl.meta.port);
    if (rc)
        errorf("metadata storage %s:%u (%s:%d) unreachable: %s", r->sl.meta.addr, r->sl.meta.port,
               r->storage_list_path, r->sl.meta.line, pps_strerror(rc));
    return rc;
}

/* The currently published records, and a generation newer than all. */
static int read_old_locations(struct deploy_run *r)
{
    uint64_t newest = 0;
    for (uint32_t i = 0; i < r->njobs; i++) {
        struct model_job *j = &r->jobs[i];
        char key[KVBIN_NAME_MAX + 16];
        location_key_name(j->dist->model, key, sizeof key);
        uint8_t *val;
        uint64_t len;
        int rc = meta_get(r->meta, key, &val, &len);
        if (rc == PPS_ENOTFOUND)
            continue;
        if (rc) {
            errorf("reading %s from the metadata storage %s:%u: %s", key, r->sl.meta.addr, r->sl.meta.port,
                   pps_strerror(rc));
            return rc;
        }
        rc = location_decode(val, len, &j->old);
        free(val);
        if (rc) {
            /* Still deployable: the new record replaces it; only the old
             * values cannot be found to delete. */
            fprintf(stderr, "deploy_file: warning: the published %s is unreadable (%s); its storage values "
                    "will not be cleaned up\n", key, pps_strerror(rc));
            continue;
        }
        j->have_old = 1;
        if (j->old.generation > newest)
            newest = j->old.generation;
    }
    r->generation = now_ms();
    if (r->generation <= newest)
        r->generation = newest + 1;
    return 0;
}

static struct storage_worker *worker_for(struct deploy_run *r, uint32_t index)
{
    if (!r->workers[index]) {
        struct storage_worker *w = pps_xcalloc(1, sizeof *w);
        w->index = index;
        w->ep = &r->sl.storages[index];
        w->run = r;
        r->workers[index] = w;
    }
    return r->workers[index];
}

static void add_push(struct storage_worker *w, const char *storage_key, const uint8_t *data, uint64_t len)
{
    if (w->npushes == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->pushes = pps_xrealloc(w->pushes, w->cap * sizeof *w->pushes);
    }
    struct push *p = &w->pushes[w->npushes++];
    memset(p, 0, sizeof *p);
    snprintf(p->storage_key, sizeof p->storage_key, "%s", storage_key);
    p->data = data;
    p->len = len;
    w->bytes += len;
}

/* The new location record of every model, and from it each storage's list
 * of slices to push. */
static void plan(struct deploy_run *r)
{
    for (uint32_t i = 0; i < r->njobs; i++) {
        struct model_job *j = &r->jobs[i];
        const char *name = j->dist->model;
        struct location_record *loc = &j->loc;
        snprintf(loc->model, sizeof loc->model, "%s", name);
        loc->generation = r->generation;
        loc->total_size = j->km->total_size;
        char meta_key[KVBIN_NAME_MAX + 16];
        snprintf(meta_key, sizeof meta_key, "%s-METADATA", name);
        deploy_generation_key(meta_key, r->generation, loc->metadata_key, sizeof loc->metadata_key);
        loc->nkeys = j->km->nbatches;
        loc->keys = pps_xcalloc(loc->nkeys ? loc->nkeys : 1, sizeof *loc->keys);
        for (uint32_t b = 0; b < loc->nkeys; b++) {
            struct location_key *k = &loc->keys[b];
            int kn = snprintf(k->key, sizeof k->key, "%s-BATCH-%u", name, b);
            PPS_ASSERT(kn > 0 && (size_t)kn < sizeof k->key); /* names are at most DEPLOY_MODEL_NAME_MAX */
            const struct kvbin_record *rec = kvbin_find_record(j->km, k->key);
            PPS_ASSERT(rec); /* kvbin_check_model saw every batch */
            k->size = rec->len;
            uint64_t ssize;
            k->nslices = deploy_slice_plan(rec->len, j->dist->nstorages, &ssize);
            k->slices = pps_xcalloc(k->nslices, sizeof *k->slices);
            for (uint32_t s = 0; s < k->nslices; s++) {
                struct location_slice *sl = &k->slices[s];
                struct storage_worker *w = worker_for(r, j->dist->storages[s]);
                sl->offset = (uint64_t)s * ssize;
                sl->size = rec->len - sl->offset < ssize ? rec->len - sl->offset : ssize;
                snprintf(sl->addr, sizeof sl->addr, "%s", w->ep->addr);
                sl->port = w->ep->port;
                deploy_generation_key(k->key, r->generation, sl->storage_key, sizeof sl->storage_key);
                add_push(w, sl->storage_key, rec->data + sl->offset, sl->size);
                r->total_bytes += sl->size;
            }
        }
    }
}

static int connect_storages(struct deploy_run *r)
{
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++) {
        struct storage_worker *w = r->workers[i];
        if (!w)
            continue;
        int rc = storage_client_connect(&w->client, w->ep->addr, w->ep->port);
        if (rc) {
            errorf("storage %u %s:%u (%s:%d) unreachable: %s", i, w->ep->addr, w->ep->port,
                   r->storage_list_path, w->ep->line, pps_strerror(rc));
            return rc;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ phase 2 */

static void *push_thread(void *arg)
{
    struct storage_worker *w = arg;
    struct deploy_run *r = w->run;
    for (size_t i = 0; i < w->npushes && !atomic_load(&r->stop); i++) {
        struct push *p = &w->pushes[i];
        p->attempted = 1;
        int rc = storage_put(w->client, p->storage_key, p->data, p->len);
        if (rc) {
            w->rc = rc;
            const char *why = storage_client_error(w->client);
            snprintf(w->err, sizeof w->err, "storage %u %s:%u: put %s (%" PRIu64 " bytes) failed: %s%s%s%s",
                     w->index, w->ep->addr, w->ep->port, p->storage_key, p->len, pps_strerror(rc),
                     *why ? " (" : "", why, *why ? ")" : "");
            atomic_store(&r->stop, 1);
            break;
        }
        atomic_fetch_add(&r->bytes_done, p->len);
    }
    atomic_fetch_sub(&r->running, 1);
    return NULL;
}

static void show_progress(struct deploy_run *r, double t0, int final)
{
    uint64_t done = atomic_load(&r->bytes_done);
    double el = mono_s() - t0;
    double rate = el > 0 ? (double)done / el : 0;
    char a[32], b[32], c[32], eta[32] = "--";
    if (rate > 0 && !final)
        snprintf(eta, sizeof eta, "%.0fs", (double)(r->total_bytes - done) / rate);
    if (final)
        snprintf(eta, sizeof eta, "done in %.1fs", el);
    fprintf(stderr, "\r\033[Kdeploy_file: pushed %s / %s  %s/s  %s%s", human(done, a, sizeof a),
            human(r->total_bytes, b, sizeof b), human((uint64_t)rate, c, sizeof c), final ? "" : "ETA ", eta);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

static int push_all(struct deploy_run *r)
{
    double t0 = mono_s();
    uint32_t nworkers = 0;
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++)
        if (r->workers[i])
            nworkers++;
    atomic_store(&r->running, nworkers);
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++) {
        struct storage_worker *w = r->workers[i];
        if (w && pthread_create(&w->thread, NULL, push_thread, w) != 0) {
            PPS_ASSERT(!"pthread_create failed");
        }
    }
    double last = t0;
    while (atomic_load(&r->running) > 0) {
        usleep(5000);
        if (r->tty && mono_s() - last >= PROGRESS_INTERVAL_MS / 1000.0) {
            show_progress(r, t0, 0);
            last = mono_s();
        }
    }
    int rc = 0;
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++) {
        struct storage_worker *w = r->workers[i];
        if (!w)
            continue;
        pthread_join(w->thread, NULL);
        if (w->rc && !rc) {
            rc = w->rc;
            if (r->tty)
                fputc('\n', stderr);
            errorf("%s", w->err);
        }
    }
    if (rc)
        return rc;
    double el = mono_s() - t0;
    if (r->tty) {
        show_progress(r, t0, 1);
    } else {
        char a[32], b[32];
        fprintf(stderr, "deploy_file: pushed %s to %u storage%s in %.2fs (%s/s)\n",
                human(r->total_bytes, a, sizeof a), nworkers, nworkers == 1 ? "" : "s", el,
                human(el > 0 ? (uint64_t)((double)r->total_bytes / el) : 0, b, sizeof b));
    }
    return 0;
}

/* ------------------------------------------------------------ clean-up */

/* Connections opened for deleting, by endpoint. */
struct conn_cache {
    struct {
        char addr[64];
        uint16_t port;
        struct storage_client *c;
        int rc;
    } e[DEPLOY_MAX_STORAGES * 2];
    int n;
};

static struct storage_client *cache_get(struct conn_cache *cc, const char *addr, uint16_t port, int *rc)
{
    for (int i = 0; i < cc->n; i++)
        if (cc->e[i].port == port && strcmp(cc->e[i].addr, addr) == 0) {
            *rc = cc->e[i].rc;
            return cc->e[i].c;
        }
    if (cc->n == (int)(sizeof cc->e / sizeof cc->e[0])) {
        *rc = PPS_ETOOBIG;
        return NULL;
    }
    int i = cc->n++;
    snprintf(cc->e[i].addr, sizeof cc->e[i].addr, "%s", addr);
    cc->e[i].port = port;
    cc->e[i].c = NULL;
    cc->e[i].rc = storage_client_connect(&cc->e[i].c, addr, port);
    *rc = cc->e[i].rc;
    return cc->e[i].c;
}

static void cache_close(struct conn_cache *cc)
{
    for (int i = 0; i < cc->n; i++)
        if (cc->e[i].c)
            storage_client_close(cc->e[i].c);
    cc->n = 0;
}

/* Delete one storage value; 0 if gone (also if it was never there). A
 * broken connection is reopened once. */
static int delete_value(struct conn_cache *cc, const char *addr, uint16_t port, const char *key)
{
    int rc;
    struct storage_client *c = cache_get(cc, addr, port, &rc);
    if (!c)
        return rc;
    rc = storage_delete(c, key);
    return rc == PPS_ENOTFOUND ? 0 : rc;
}

/* Best-effort removal of every slice of a record; returns how many could
 * not be deleted. */
static unsigned delete_record_values(struct conn_cache *cc, const struct location_record *rec)
{
    unsigned failed = 0;
    for (uint32_t k = 0; k < rec->nkeys; k++)
        for (uint32_t s = 0; s < rec->keys[k].nslices; s++) {
            const struct location_slice *sl = &rec->keys[k].slices[s];
            int rc = delete_value(cc, sl->addr, sl->port, sl->storage_key);
            if (rc) {
                failed++;
                log_debug("delete %s on %s:%u: %s", sl->storage_key, sl->addr, sl->port, pps_strerror(rc));
            }
        }
    return failed;
}

/* After a failed push: remove what this generation put anywhere. */
static void remove_pushed(struct deploy_run *r)
{
    struct conn_cache *cc = pps_xcalloc(1, sizeof *cc);
    unsigned failed = 0, removed = 0;
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++) {
        struct storage_worker *w = r->workers[i];
        if (!w)
            continue;
        for (size_t p = 0; p < w->npushes; p++) {
            if (!w->pushes[p].attempted)
                continue;
            if (delete_value(cc, w->ep->addr, w->ep->port, w->pushes[p].storage_key))
                failed++;
            else
                removed++;
        }
    }
    cache_close(cc);
    free(cc);
    fprintf(stderr, "deploy_file: removed %u pushed slice%s of generation %" PRIu64 "%s", removed,
            removed == 1 ? "" : "s", r->generation, failed ? "" : "\n");
    if (failed)
        fprintf(stderr, "; %u could not be removed (unreachable storage)\n", failed);
}

/* ------------------------------------------------------------ phase 3, 4 */

/* Reopen the metadata storage connection after a transport failure,
 * trying for --retry-for seconds (backing off from 100 ms to 2 s). */
static int meta_reconnect(struct deploy_run *r)
{
    if (r->meta) {
        meta_client_close(r->meta);
        r->meta = NULL;
    }
    double deadline = mono_s() + r->retry_for_s;
    useconds_t delay = 100000;
    for (;;) {
        int rc = meta_client_connect(&r->meta, r->sl.meta.addr, r->sl.meta.port);
        if (!rc)
            return 0;
        r->meta = NULL;
        double left = deadline - mono_s();
        if (left <= 0)
            return rc;
        usleep(left * 1e6 < delay ? (useconds_t)(left * 1e6) + 1 : delay);
        delay = delay * 2 > 2000000 ? 2000000 : delay * 2;
    }
}

enum location_outcome { LOC_PUBLISHED, LOC_NOT_PUBLISHED, LOC_UNKNOWN };

/* The LOCATION put of j failed: learn from the metadata storage whether the
 * record was written anyway. A failure with an answer from the storage is
 * read back on the same connection; a broken connection is closed and
 * reopened. The read-back can be trusted because the metadata storage
 * applies a request as soon as its event loop reads it (it never blocks on
 * the disk) and holds a GET until the write behind the answer is durable:
 * a put that reached it is seen, and one it never got cannot land later
 * (a frame cut short is discarded). */
static enum location_outcome confirm_location(struct deploy_run *r, struct model_job *j)
{
    char key[KVBIN_NAME_MAX + 16];
    location_key_name(j->dist->model, key, sizeof key);
    double deadline = mono_s() + r->retry_for_s;
    int rc = PPS_ECLOSED;
    for (int attempt = 0;; attempt++) {
        if (attempt > 0)
            usleep(200000);
        if (!r->meta || meta_client_broken(r->meta)) {
            if (meta_reconnect(r) != 0)
                return LOC_UNKNOWN; /* it tried for --retry-for seconds */
        }
        uint8_t *val = NULL;
        uint64_t len = 0;
        rc = meta_get(r->meta, key, &val, &len);
        if (rc == PPS_ENOTFOUND)
            return LOC_NOT_PUBLISHED;
        if (rc == 0) {
            struct location_record rec;
            int ours = location_decode(val, len, &rec) == 0;
            if (ours) {
                ours = rec.generation == r->generation && strcmp(rec.metadata_key, j->loc.metadata_key) == 0;
                location_free(&rec);
            }
            free(val);
            return ours ? LOC_PUBLISHED : LOC_NOT_PUBLISHED;
        }
        if (mono_s() > deadline)
            break;
    }
    log_debug("reading %s back: %s", key, pps_strerror(rc));
    return LOC_UNKNOWN;
}

/* 0, or the failed put's error; *at_location says it was the LOCATION put
 * (the commit point, whose failure may hide a success). */
static int publish(struct deploy_run *r, struct model_job *j, int *at_location)
{
    *at_location = 0;
    const char *name = j->dist->model;
    char key[KVBIN_NAME_MAX + 16], size_text[24];
    int rc = meta_put(r->meta, j->loc.metadata_key, j->meta_rec->data, j->meta_rec->len);
    if (rc) {
        errorf("model %s: put %s on the metadata storage: %s", name, j->loc.metadata_key, pps_strerror(rc));
        return rc;
    }
    snprintf(key, sizeof key, "%s-SIZE", name);
    snprintf(size_text, sizeof size_text, "%" PRIu64, j->km->total_size);
    rc = meta_put(r->meta, key, size_text, strlen(size_text));
    if (rc) {
        errorf("model %s: put %s on the metadata storage: %s", name, key, pps_strerror(rc));
        return rc;
    }
    struct wbuf wb;
    wbuf_init(&wb);
    location_encode(&j->loc, &wb);
    location_key_name(name, key, sizeof key);
    if (wb.len > META_MAX_VALUE) {
        errorf("model %s: location record of %zu bytes is over the metadata storage's limit", name, wb.len);
        rc = PPS_ETOOBIG;
    } else {
        rc = meta_put(r->meta, key, wb.data, wb.len);
        *at_location = rc != 0; /* the caller reads it back before saying more */
    }
    wbuf_free(&wb);
    return rc;
}

/* A model that was not published: take back what this run wrote for it. */
static void unpublish(struct deploy_run *r, struct model_job *j, struct conn_cache *cc)
{
    char key[KVBIN_NAME_MAX + 16];
    if (j->publish_tried)
        meta_delete(r->meta, j->loc.metadata_key);
    snprintf(key, sizeof key, "%s-SIZE", j->dist->model);
    if (!j->publish_tried) {
        /* nothing of it was written */
    } else if (j->have_old) {
        char size_text[24];
        snprintf(size_text, sizeof size_text, "%" PRIu64, j->old.total_size);
        meta_put(r->meta, key, size_text, strlen(size_text));
    } else {
        meta_delete(r->meta, key);
    }
    unsigned failed = delete_record_values(cc, &j->loc);
    if (failed)
        fprintf(stderr, "deploy_file: warning: %u slice%s of unpublished %s generation %" PRIu64
                " could not be removed\n", failed, failed == 1 ? "" : "s", j->dist->model, r->generation);
}

static void remove_old(struct deploy_run *r, struct model_job *j, struct conn_cache *cc)
{
    if (!j->have_old)
        return;
    unsigned failed = delete_record_values(cc, &j->old);
    if (r->meta && meta_client_broken(r->meta))
        meta_reconnect(r);
    int rc = r->meta ? meta_delete(r->meta, j->old.metadata_key) : PPS_ECONNECT;
    if (rc && rc != PPS_ENOTFOUND)
        failed++;
    if (failed)
        fprintf(stderr, "deploy_file: warning: %s: %u value%s of the previous generation %" PRIu64
                " could not be deleted (`pipeps gc %s` will)\n", j->dist->model, failed, failed == 1 ? "" : "s",
                j->old.generation, r->storage_list_path);
}

static void print_published(const struct deploy_run *r, const struct model_job *j)
{
    char a[32], list[DEPLOY_MAX_STORAGES * 8] = "";
    size_t n = 0;
    for (uint32_t s = 0; s < j->dist->nstorages; s++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%u", s ? "," : "", j->dist->storages[s]);
    printf("%s: generation %" PRIu64 ", %u batches, %s (%" PRIu64 " bytes) on storage%s %s\n", j->dist->model,
           r->generation, j->km->nbatches, human(j->km->total_size, a, sizeof a), j->km->total_size,
           j->dist->nstorages == 1 ? "" : "s", list);
    fflush(stdout);
}

/* The metadata storage could not tell whether j's LOCATION was written:
 * keep both generations, say how to settle it. */
static void report_unknown(const struct deploy_run *r, const struct model_job *j)
{
    char gens[64] = "";
    if (j->have_old)
        snprintf(gens, sizeof gens, " and the previous generation %" PRIu64, j->old.generation);
    fprintf(stderr,
            "deploy_file: model %s: OUTCOME UNKNOWN: the metadata storage %s:%u did not acknowledge %s-LOCATION "
            "and could not be reached for %d s to read it back; it may name the new generation %" PRIu64
            " or not. Nothing of %s was deleted (generation %" PRIu64 "%s are kept). Once the metadata storage "
            "is back, `pipeps fetch %s:%u %s` shows the published generation and `pipeps gc %s` deletes "
            "the other.\n",
            j->dist->model, r->sl.meta.addr, r->sl.meta.port, j->dist->model, r->retry_for_s, r->generation,
            j->dist->model, r->generation, gens, r->sl.meta.addr, r->sl.meta.port, j->dist->model,
            r->storage_list_path);
}

static int publish_all(struct deploy_run *r)
{
    struct conn_cache *cc = pps_xcalloc(1, sizeof *cc);
    int rc = 0, meta_lost = 0;
    for (uint32_t i = 0; i < r->njobs && !rc; i++) {
        struct model_job *j = &r->jobs[i];
        int at_location;
        j->publish_tried = 1;
        rc = publish(r, j, &at_location);
        if (rc && at_location) {
            switch (confirm_location(r, j)) {
            case LOC_PUBLISHED:
                fprintf(stderr, "deploy_file: model %s: put %s-LOCATION: %s; read back, it names generation %"
                        PRIu64 ": %s-LOCATION was written all the same\n", j->dist->model, j->dist->model,
                        pps_strerror(rc), r->generation, j->dist->model);
                rc = 0;
                break;
            case LOC_NOT_PUBLISHED:
                errorf("model %s: put %s-LOCATION on the metadata storage: %s", j->dist->model, j->dist->model,
                       pps_strerror(rc));
                break;
            case LOC_UNKNOWN:
                errorf("model %s: put %s-LOCATION on the metadata storage: %s", j->dist->model, j->dist->model,
                       pps_strerror(rc));
                j->unknown = 1;
                meta_lost = 1;
                break;
            }
        }
        if (!rc) {
            j->published = 1;
            print_published(r, j);
        }
    }
    uint32_t npublished = 0;
    for (uint32_t k = 0; k < r->njobs; k++)
        npublished += (uint32_t)r->jobs[k].published;
    if (rc && !meta_lost && (!r->meta || meta_client_broken(r->meta)) && meta_reconnect(r) != 0)
        meta_lost = 1; /* the clean-up below needs the metadata storage */
    if (rc) {
        for (uint32_t k = 0; k < r->njobs; k++) {
            struct model_job *j = &r->jobs[k];
            if (j->published)
                continue;
            if (j->unknown)
                report_unknown(r, j);
            else if (!meta_lost || !j->publish_tried)
                unpublish(r, j, cc); /* nothing of it can be referenced */
            else
                fprintf(stderr, "deploy_file: model %s: the metadata storage is unreachable; its unpublished "
                        "generation %" PRIu64 " is left for `pipeps gc %s`\n", j->dist->model, r->generation,
                        r->storage_list_path);
        }
        fprintf(stderr, "deploy_file: %u of %u models published; the others keep their previous deployment%s\n",
                npublished, r->njobs, meta_lost ? " (unless noted OUTCOME UNKNOWN above)" : "");
    }
    for (uint32_t k = 0; k < r->njobs; k++)
        if (r->jobs[k].published)
            remove_old(r, &r->jobs[k], cc);
    cache_close(cc);
    free(cc);
    return rc;
}

/* ------------------------------------------------------------ main */

static void run_free(struct deploy_run *r)
{
    for (uint32_t i = 0; i < DEPLOY_MAX_STORAGES; i++) {
        struct storage_worker *w = r->workers[i];
        if (!w)
            continue;
        if (w->client)
            storage_client_close(w->client);
        free(w->pushes);
        free(w);
    }
    if (r->jobs)
        for (uint32_t i = 0; i < r->njobs; i++) {
            location_free(&r->jobs[i].loc);
            if (r->jobs[i].have_old)
                location_free(&r->jobs[i].old);
        }
    free(r->jobs);
    if (r->meta)
        meta_client_close(r->meta);
    kvbin_close(&r->kv);
    deploy_dist_list_free(&r->dl);
}

#define DEFAULT_RETRY_FOR_S 10

static void usage(FILE *out)
{
    fprintf(out,
            "usage: deploy_file STORAGE_LIST DISTRIBUTION_LIST KV_BIN [--retry-for S]\n"
            "\n"
            "Push the models of DISTRIBUTION_LIST from KV_BIN to their storages and publish\n"
            "them in the metadata storage (the first entry of STORAGE_LIST).\n"
            "  STORAGE_LIST       header line, then \"address, port\" lines: the metadata\n"
            "                     storage, then storages 0, 1, ...\n"
            "  DISTRIBUTION_LIST  header line, then \"model, i[, j ...]\" lines: the storages\n"
            "                     (0-based) that hold each model's slices\n"
            "  --retry-for S      when the metadata storage does not acknowledge a location\n"
            "                     record, keep reconnecting S seconds (default %d) to read it\n"
            "                     back and learn whether the model was published\n"
            "Exit status 0 when every listed model is published, 1 otherwise.\n"
            "`pipeps gc STORAGE_LIST` deletes generations left behind by a failed run.\n",
            DEFAULT_RETRY_FOR_S);
}

static int deploy(struct deploy_run *r, const char *kv_path)
{
    char err[ERRLEN];
    int rc = load_lists(r);
    if (rc)
        return rc;
    rc = kvbin_open(&r->kv, kv_path, err, sizeof err);
    if (rc) {
        errorf("%s", err);
        return rc;
    }
    if (r->dl.nmodels == 0) {
        fprintf(stderr, "deploy_file: %s lists no models; nothing to do\n", r->dist_list_path);
        return 0;
    }
    if ((rc = check_models(r)) || (rc = connect_meta(r)) || (rc = read_old_locations(r)))
        return rc;
    plan(r);
    if ((rc = connect_storages(r)))
        return rc;
    rc = push_all(r);
    if (rc) {
        remove_pushed(r);
        fprintf(stderr, "deploy_file: nothing published\n");
        return rc;
    }
    return publish_all(r);
}

int deploy_file_main(int argc, char **argv)
{
    struct args_option opts[] = {{"retry-for", 1, NULL}};
    struct args a;
    int help = 0, retry_for = DEFAULT_RETRY_FOR_S;
    if (args_split(argc, argv, opts, 1, &a, &help) != 0 || a.npositional != 3) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    if (opts[0].value && args_parse_int(opts[0].value, 0, 86400, &retry_for) != 0) {
        fprintf(stderr, "deploy_file: bad --retry-for '%s' (seconds, 0..86400)\n", opts[0].value);
        return 2;
    }
    net_ignore_sigpipe();
    struct deploy_run *r = pps_xcalloc(1, sizeof *r);
    r->retry_for_s = retry_for;
    r->storage_list_path = a.positional[0];
    r->dist_list_path = a.positional[1];
    r->tty = isatty(STDERR_FILENO);
    int rc = deploy(r, a.positional[2]);
    run_free(r);
    free(r);
    return rc ? 1 : 0;
}
