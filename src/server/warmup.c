/* warmup: see warmup.h.
 *
 * The easy thing to get wrong: the blobs come from unpinned pool memory, so
 * one may be torn (evicted and overwritten while copied); model_blob_decode
 * checks its checksum and such a model is just skipped. */
#include "server/warmup.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "model/model_blob.h"

struct warmup {
    struct exec_options opt;
    int max_models;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stopping;
    int offered;              /* the list arrived (v may be empty) */
    struct cache_listed *v;   /* guarded by lock until taken */
    uint32_t n;
    int done;                 /* models warmed; guarded by lock */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int warm_one(struct warmup *w, const struct cache_listed *e)
{
    struct graph g;
    char err[256] = "";
    int rc = model_blob_decode(&g, e->meta, (size_t)e->meta_len, err, sizeof err);
    if (rc) {
        log_info("warm-up: %s skipped: its METADATA changed while read (%s)", e->model, err);
        return rc;
    }
    struct exec_model *em = NULL;
    rc = exec_model_create(&em, &g, &w->opt, err, sizeof err);
    graph_free(&g);
    if (!rc) rc = exec_model_warm(em, 1, err, sizeof err);
    exec_model_destroy(em);
    if (rc) log_warn("warm-up: %s: %s", e->model, err);
    return rc;
}

static void *warm_thread(void *arg)
{
    struct warmup *w = arg;
    /* Below the worker: a request that arrives meanwhile comes first. */
    setpriority(PRIO_PROCESS, 0, 10);
    pthread_mutex_lock(&w->lock);
    while (!w->offered && !w->stopping) pthread_cond_wait(&w->cond, &w->lock);
    struct cache_listed *v = w->v;
    uint32_t n = w->n;
    w->v = NULL;
    pthread_mutex_unlock(&w->lock);
    double t0 = now_ms();
    int warmed = 0;
    for (uint32_t i = 0; i < n && warmed < w->max_models; i++) {
        pthread_mutex_lock(&w->lock);
        int stop = w->stopping;
        pthread_mutex_unlock(&w->lock);
        if (stop) break;
        if (warm_one(w, &v[i]) == 0) {
            warmed++;
            pthread_mutex_lock(&w->lock);
            w->done = warmed;
            pthread_mutex_unlock(&w->lock);
        }
    }
    if (n)
        log_info("warm-up: kernels of %d of the cache's %u models built in %.1f ms", warmed, n,
                 now_ms() - t0);
    for (uint32_t i = 0; i < n; i++) free(v[i].meta);
    free(v);
    return NULL;
}

int warmup_start(struct warmup **out, const struct exec_options *opt, int max_models)
{
    struct warmup *w = pps_xcalloc(1, sizeof *w);
    w->opt = *opt;
    w->max_models = max_models;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (pthread_create(&w->thread, NULL, warm_thread, w) != 0) {
        free(w);
        return PPS_ENOMEM;
    }
    *out = w;
    return 0;
}

void warmup_offer(struct cache_listed *v, uint32_t n, void *arg)
{
    struct warmup *w = arg;
    pthread_mutex_lock(&w->lock);
    if (w->offered || w->stopping) {
        pthread_mutex_unlock(&w->lock);
        for (uint32_t i = 0; i < n; i++) free(v[i].meta);
        free(v);
        return;
    }
    w->v = v;
    w->n = n;
    w->offered = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int warmup_done(struct warmup *w)
{
    pthread_mutex_lock(&w->lock);
    int d = w->done;
    pthread_mutex_unlock(&w->lock);
    return d;
}

void warmup_stop(struct warmup *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    for (uint32_t i = 0; w->v && i < w->n; i++) free(w->v[i].meta);
    free(w->v);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
}
