/* meta_sync: one helper thread, one job slot; see meta_sync.h.
 * Easy to get wrong: a failed compaction must not lose the writes it stood
 * in for, so it falls back to appending them to the old log. */
#include "metadata/meta_sync.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct meta_sync {
    struct meta_log *log;
    int event_fd;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* guarded by mu */
    struct meta_sync_job *todo; /* submitted, not yet picked up */
    struct meta_sync_job *done; /* finished, not yet collected */
    int running;                /* a job is being worked on */
    int stop;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int append_and_sync(struct meta_log *log, const struct wbuf *records)
{
    int rc = 0;
    if (records->len)
        rc = meta_log_append(log, records->data, records->len);
    if (!rc)
        rc = meta_log_sync(log);
    return rc;
}

void meta_sync_run_job(struct meta_log *log, struct meta_sync_job *job)
{
    uint64_t t0 = now_ns();
    job->compacted = 0;
    job->rewrite_rc = 0;
    if (job->kind == META_SYNC_REWRITE) {
        int switched = 0;
        int rc = meta_log_rewrite(log, job->snapshot.data, job->snapshot.len, &switched);
        if (rc == 0) {
            job->compacted = 1;
            job->rc = 0;
        } else if (switched) {
            job->rc = rc; /* new file in place but the directory is not durable */
        } else {
            log_warn("metadata log: compaction failed (%s); appending to the old log instead",
                     pps_strerror(rc));
            job->rewrite_rc = rc;
            job->rc = append_and_sync(log, &job->records);
        }
    } else {
        job->rc = append_and_sync(log, &job->records);
    }
    job->file_size = log->size;
    job->sync_ns = now_ns() - t0;
}

static void *sync_thread(void *arg)
{
    struct meta_sync *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->todo && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->todo)
            break;
        struct meta_sync_job *job = s->todo;
        s->todo = NULL;
        s->running = 1;
        pthread_mutex_unlock(&s->mu);
        meta_sync_run_job(s->log, job);
        pthread_mutex_lock(&s->mu);
        s->running = 0;
        s->done = job;
        pthread_cond_broadcast(&s->cv);
        uint64_t one = 1;
        while (write(s->event_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int meta_sync_start(struct meta_sync **out, struct meta_log *log)
{
    struct meta_sync *s = pps_xcalloc(1, sizeof *s);
    s->log = log;
    s->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->event_fd < 0) {
        int rc = pps_from_errno(errno);
        free(s);
        return rc;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int err = pthread_create(&s->thread, NULL, sync_thread, s);
    if (err) {
        close(s->event_fd);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return pps_from_errno(err);
    }
    *out = s;
    return 0;
}

int meta_sync_event_fd(const struct meta_sync *s) { return s->event_fd; }

void meta_sync_submit(struct meta_sync *s, struct meta_sync_job *job)
{
    pthread_mutex_lock(&s->mu);
    PPS_ASSERT(!s->todo && !s->running && !s->done);
    s->todo = job;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

struct meta_sync_job *meta_sync_collect(struct meta_sync *s)
{
    uint64_t count;
    while (read(s->event_fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&s->mu);
    struct meta_sync_job *job = s->done;
    s->done = NULL;
    pthread_mutex_unlock(&s->mu);
    return job;
}

struct meta_sync_job *meta_sync_wait(struct meta_sync *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->todo || s->running)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return meta_sync_collect(s);
}

void meta_sync_stop(struct meta_sync *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    close(s->event_fd);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
