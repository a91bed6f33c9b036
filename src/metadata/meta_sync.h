/* meta_sync: the helper thread that writes and fsyncs the metadata log, so
 * the event loop never blocks on the disk (Redis's bio.c, for one job kind).
 *
 * The loop hands over one job at a time: the records of every PUT/DELETE it
 * accepted since the last hand-over (group commit: one write + one fdatasync
 * for all of them), or a compaction (a snapshot of the live set that
 * replaces the log; it stands in for the pending records too, since the
 * snapshot already holds them). While a job runs, new writes gather in the
 * loop for the next one. When the job ends the thread makes event_fd
 * readable; the loop then collects the job and answers the writes it made
 * durable.
 *
 * Ownership: from meta_sync_submit until meta_sync_collect/wait returns it,
 * the job and the log belong to the thread; the loop touches neither. */
#ifndef PIPEPS_META_SYNC_H
#define PIPEPS_META_SYNC_H

#include <stdint.h>

#include "common/buf.h"
#include "metadata/meta_log.h"

enum meta_sync_kind { META_SYNC_APPEND = 1, META_SYNC_REWRITE = 2 };

struct meta_sync_job {
    /* set by the submitter */
    int kind;
    struct wbuf records;  /* records to append (REWRITE: appended only if the rewrite fails) */
    struct wbuf snapshot; /* REWRITE: every live record */
    uint64_t seq_end;     /* last write sequence number this job makes durable */
    uint32_t nrecords;    /* records in `records` (statistics) */
    /* set by the thread */
    int rc;               /* 0, or the error that made the writes NOT durable */
    int compacted;        /* REWRITE: 1 if the log was replaced */
    int rewrite_rc;       /* REWRITE: why the rewrite failed (then records were appended) */
    uint64_t file_size;   /* log size after the job */
    uint64_t sync_ns;     /* time spent writing + syncing */
};

struct meta_sync;

/* Start the thread over an open log. */
int meta_sync_start(struct meta_sync **out, struct meta_log *log);
/* Readable (eventfd) when a job has finished. */
int meta_sync_event_fd(const struct meta_sync *s);
/* Hand a job to the thread; only one at a time (asserted). */
void meta_sync_submit(struct meta_sync *s, struct meta_sync_job *job);
/* The finished job (consumes the event fd's count), or NULL if none yet. */
struct meta_sync_job *meta_sync_collect(struct meta_sync *s);
/* Block until the submitted job finishes; NULL if none was submitted. */
struct meta_sync_job *meta_sync_wait(struct meta_sync *s);
/* Wait for a running job (its result is dropped), stop and join. */
void meta_sync_stop(struct meta_sync *s);

/* Run a job synchronously on the calling thread (also used by the thread). */
void meta_sync_run_job(struct meta_log *log, struct meta_sync_job *job);

#endif
