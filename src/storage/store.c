/* store: data files, index, PUT/GET/DELETE and compaction; see store.h.
 *
 * Locks: `append` (mutex) guards the active file and every file's append
 * position, writer count and sealed flag; `lock` (rwlock) guards the index,
 * the file list, every file's live-byte count and the value counters. When
 * both are needed, `append` is taken first. File descriptors are read and
 * written without either lock: a record's bytes belong to one writer until
 * its header says PUT, and are immutable afterwards. */
#include "storage/store.h"
#include "common/err.h"
#include "common/log.h"
#include "storage/storage_client.h"
#include "storage/store_index.h"
#include "storage/store_record.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

/* Room kept free on the file system beyond a PUT's own record. */
#define STORE_SPACE_MARGIN (1ull << 20)
#define COPY_CHUNK (8u << 20)
/* Mapping lengths are rounded up to this. */
#define MAP_ROUND (2u << 20)
/* A PUT starts the writeback of its value every this many bytes. */
#define WRITEBACK_STEP (8u << 20)
/* The active file is sealed for compaction only with at least
 * min(file_size / 4, this) dead bytes. */
#define ACTIVE_MIN_DEAD (64ull << 20)

struct store_file {
    uint32_t id;
    int fd;
    atomic_int refs; /* the file list holds one; each reader, writer and compaction one */
    /* guarded by store.append */
    uint64_t size;   /* end of the last reserved record: where the next one goes */
    int writers;     /* reservations not yet committed or aborted */
    int sealed;      /* takes no new reservations */
    /* guarded by store.lock */
    uint64_t live;   /* bytes of winning PUT records and needed tombstones */
    /* guarded by store.compact_mu */
    int no_compact;  /* compaction failed on it; not retried */
    /* guarded by map_mu; a mapping, once made, stays until the file closes */
    pthread_mutex_t map_mu;
    uint8_t *map;    /* read-only shared mapping of [0, map_len), or NULL */
    uint64_t map_len;
    struct old_map *old_maps; /* outgrown mappings that readers may still use */
};

struct old_map {
    void *p;
    size_t len;
    struct old_map *next;
};

struct store {
    char *dir;
    int dir_fd;
    int lock_fd;
    uint64_t file_size;
    double ratio;

    pthread_rwlock_t lock;
    struct store_index index;
    struct store_file **files; /* sorted by id */
    size_t nfiles, files_cap;
    uint64_t nvalues, value_bytes, ntombs;

    pthread_mutex_t append;
    struct store_file *active; /* NULL: the next reservation starts a file */
    uint32_t next_id;

    atomic_uint_fast64_t next_seq;
    atomic_uint_fast64_t puts, put_aborts, deletes, compactions, bytes_copied, bytes_reclaimed;
    uint64_t recovered_records, recovery_dropped;

    pthread_mutex_t compact_mu; /* one compaction at a time */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cv;
    int wake, stop; /* guarded by wake_mu */
    pthread_t compactor;
    int has_compactor;
};

struct store_put {
    struct store *s;
    struct store_file *f;
    uint64_t off;       /* record start */
    uint64_t pos;       /* where the next value byte goes */
    uint64_t value_len;
    uint64_t written;
    uint64_t flushed;   /* value bytes whose writeback has been started */
    uint64_t rec_len;
    XXH3_state_t *hash;
    uint32_t key_len;
    char key[STORAGE_MAX_KEY + 1];
};

/* ---- small helpers ---- */

static void file_path(const struct store *s, uint32_t id, char *buf, size_t n)
{
    snprintf(buf, n, "%s/data-%08u.pps", s->dir, id);
}

static void file_name(uint32_t id, char *buf, size_t n) { snprintf(buf, n, "data-%08u.pps", id); }

static void file_ref(struct store_file *f) { atomic_fetch_add(&f->refs, 1); }

static struct store_file *file_new(uint32_t id, int fd)
{
    struct store_file *f = pps_xcalloc(1, sizeof *f);
    f->id = id;
    f->fd = fd;
    atomic_init(&f->refs, 1);
    pthread_mutex_init(&f->map_mu, NULL);
    return f;
}

static void file_unref(struct store_file *f)
{
    if (atomic_fetch_sub(&f->refs, 1) == 1) {
        if (f->map)
            munmap(f->map, (size_t)f->map_len);
        while (f->old_maps) {
            struct old_map *o = f->old_maps;
            f->old_maps = o->next;
            munmap(o->p, o->len);
            free(o);
        }
        pthread_mutex_destroy(&f->map_mu);
        close(f->fd);
        free(f);
    }
}

/* A read-only mapping of f covering at least [0, end), made on first use.
 * It is as long as a full data file (or the record that made it longer),
 * past the current end of the file: that is allowed, and the pages become
 * readable as records are appended; only committed records, which are
 * never cut off, are ever read through it. NULL if mmap fails (the caller
 * then uses the descriptor). */
static const uint8_t *file_map(const struct store *s, struct store_file *f, uint64_t end)
{
    pthread_mutex_lock(&f->map_mu);
    if (!f->map || f->map_len < end) {
        uint64_t len = end > s->file_size ? end : s->file_size;
        len = (len + MAP_ROUND - 1) & ~(uint64_t)(MAP_ROUND - 1);
        void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, f->fd, 0);
        if (p == MAP_FAILED) {
            pthread_mutex_unlock(&f->map_mu);
            return NULL;
        }
        if (f->map) {
            struct old_map *o = pps_xmalloc(sizeof *o);
            *o = (struct old_map){f->map, (size_t)f->map_len, f->old_maps};
            f->old_maps = o;
        }
        f->map = p;
        f->map_len = len;
    }
    const uint8_t *base = f->map;
    pthread_mutex_unlock(&f->map_mu);
    return base;
}

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return pps_from_errno(errno);
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return pps_from_errno(errno);
        }
        if (r == 0)
            return PPS_ETRUNCATED;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int valid_key(const char *key, uint32_t key_len)
{
    return key_len >= 1 && key_len <= STORAGE_MAX_KEY && !memchr(key, '\0', key_len);
}

static uint64_t bytes_free(const struct store *s)
{
    struct statvfs v;
    if (fstatvfs(s->dir_fd, &v) < 0)
        return 0;
    return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

static void wake_compactor(struct store *s)
{
    if (!s->has_compactor)
        return;
    pthread_mutex_lock(&s->wake_mu);
    s->wake = 1;
    pthread_cond_signal(&s->wake_cv);
    pthread_mutex_unlock(&s->wake_mu);
}

/* The compactor is asked to stop (store_close). */
static int stopping(struct store *s)
{
    pthread_mutex_lock(&s->wake_mu);
    int stop = s->stop;
    pthread_mutex_unlock(&s->wake_mu);
    return stop;
}

/* ---- index accounting (store.lock held for writing) ---- */

static uint64_t winner_len(const struct store_entry *e)
{
    return store_record_size(e->key_len, e->live ? e->value_len : 0);
}

/* The entry's winning record stops winning. Returns 1 if there was one. */
static int supersede(struct store *s, struct store_entry *e)
{
    if (!e->file)
        return 0;
    e->file->live -= winner_len(e);
    if (e->live) {
        s->nvalues--;
        s->value_bytes -= e->value_len;
    } else {
        s->ntombs--;
    }
    e->file = NULL;
    e->live = 0;
    e->value_len = 0;
    return 1;
}

/* A deleted key with no PUT left on disk needs neither tombstone nor entry. */
static void drop_if_unneeded(struct store *s, struct store_entry *e)
{
    if (!e->live && e->nputs == 0) {
        supersede(s, e);
        store_index_remove(&s->index, e);
    }
}

/* A valid PUT record of key is on disk at (f, off). Returns 1 if bytes
 * became dead (an older winner, or this record itself). */
static int apply_put(struct store *s, const char *key, uint32_t key_len, struct store_file *f,
                     uint64_t off, uint64_t value_len, uint64_t seq)
{
    struct store_entry *e = store_index_get(&s->index, key, key_len);
    e->nputs++;
    if (seq <= e->seq)
        return 1;
    int dead = supersede(s, e);
    e->file = f;
    e->rec_off = off;
    e->value_len = value_len;
    e->live = 1;
    e->seq = seq;
    f->live += store_record_size(key_len, value_len);
    s->nvalues++;
    s->value_bytes += value_len;
    return dead;
}

static void apply_delete(struct store *s, const char *key, uint32_t key_len, struct store_file *f,
                         uint64_t off, uint64_t seq, int drop)
{
    struct store_entry *e = store_index_get(&s->index, key, key_len);
    if (seq > e->seq) {
        supersede(s, e);
        e->file = f;
        e->rec_off = off;
        e->value_len = 0;
        e->live = 0;
        e->seq = seq;
        f->live += store_record_size(key_len, 0);
        s->ntombs++;
    }
    if (drop)
        drop_if_unneeded(s, e);
}

/* ---- files ---- */

/* Create the next data file and make it active (store.append held). */
static int roll(struct store *s)
{
    char path[4096];
    uint32_t id = s->next_id;
    file_path(s, id, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = pps_from_errno(errno);
        log_error("cannot create %s: %s", path, strerror(errno));
        return rc;
    }
    fsync(s->dir_fd); /* the new name must survive a crash before its records do */
    struct store_file *f = file_new(id, fd);
    s->next_id++;
    if (s->active)
        s->active->sealed = 1;
    s->active = f;
    pthread_rwlock_wrlock(&s->lock);
    if (s->nfiles == s->files_cap) {
        s->files_cap = s->files_cap ? s->files_cap * 2 : 16;
        s->files = pps_xrealloc(s->files, s->files_cap * sizeof *s->files);
    }
    s->files[s->nfiles++] = f;
    pthread_rwlock_unlock(&s->lock);
    log_debug("started data file data-%08u.pps", id);
    return 0;
}

/* Reserve rec_len bytes at the end of the active file and write head
 * (header and key, head_len bytes) at their start. The caller gets a
 * reference and a writer count on *fout, released by finish_writer. */
static int reserve(struct store *s, uint64_t rec_len, const uint8_t *head, size_t head_len,
                   struct store_file **fout, uint64_t *off_out)
{
    pthread_mutex_lock(&s->append);
    struct store_file *f = s->active;
    if (!f || (f->size > 0 && f->size + rec_len > s->file_size)) {
        int rc = roll(s);
        if (rc) {
            pthread_mutex_unlock(&s->append);
            return rc;
        }
        f = s->active;
    }
    uint64_t off = f->size;
    /* Written under the mutex: any later record's fdatasync then also
     * makes this PENDING header durable, so a crash never leaves a region
     * the scanner cannot skip by its length. */
    int rc = pwrite_full(f->fd, head, head_len, off);
    if (rc) {
        pthread_mutex_unlock(&s->append);
        return rc;
    }
    f->size = off + rec_len;
    f->writers++;
    file_ref(f);
    pthread_mutex_unlock(&s->append);
    *fout = f;
    *off_out = off;
    return 0;
}

static void finish_writer(struct store *s, struct store_file *f)
{
    pthread_mutex_lock(&s->append);
    f->writers--;
    pthread_mutex_unlock(&s->append);
    file_unref(f);
}

/* Give back a reserved region that will never hold a record: cut it off if
 * it is the file's tail, else free its value blocks and leave the PENDING
 * header so that scans skip it. Releases the writer. */
static void release_region(struct store *s, struct store_file *f, uint64_t off, uint64_t rec_len,
                           uint64_t head_len)
{
    pthread_mutex_lock(&s->append);
    if (f->size == off + rec_len && ftruncate(f->fd, (off_t)off) == 0) {
        f->size = off;
    } else if (rec_len > head_len) {
        /* Best effort: a file system without hole punching keeps the bytes
         * until compaction. */
        (void)fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        (off_t)(off + head_len), (off_t)(rec_len - head_len));
    }
    f->writers--;
    pthread_mutex_unlock(&s->append);
    atomic_fetch_add(&s->bytes_reclaimed, rec_len);
    file_unref(f);
}

/* ---- PUT ---- */

int store_put_begin(struct store *s, const char *key, uint32_t key_len, uint64_t value_len,
                    struct store_put **out)
{
    *out = NULL;
    if (!valid_key(key, key_len))
        return PPS_EINVAL;
    if (value_len > STORAGE_MAX_VALUE)
        return PPS_ETOOBIG;
    uint64_t rec_len = store_record_size(key_len, value_len);
    if (bytes_free(s) < rec_len + STORE_SPACE_MARGIN)
        return PPS_ENOSPACE;

    struct store_put *p = pps_xcalloc(1, sizeof *p);
    p->s = s;
    p->value_len = value_len;
    p->rec_len = rec_len;
    p->key_len = key_len;
    memcpy(p->key, key, key_len);
    p->hash = XXH3_createState();
    PPS_ASSERT(p->hash);
    XXH3_64bits_reset(p->hash);
    XXH3_64bits_update(p->hash, key, key_len);

    uint8_t head[STORE_RECORD_HEADER + STORAGE_MAX_KEY];
    struct store_record r = {.kind = STORE_RECORD_PENDING, .key_len = key_len, .value_len = value_len};
    store_record_encode(head, &r, key);
    memcpy(head + STORE_RECORD_HEADER, key, key_len);
    int rc = reserve(s, rec_len, head, STORE_RECORD_HEADER + key_len, &p->f, &p->off);
    if (rc) {
        XXH3_freeState(p->hash);
        free(p);
        return rc;
    }
    p->pos = p->off + STORE_RECORD_HEADER + key_len;
    *out = p;
    return 0;
}

int store_put_write(struct store_put *p, const void *data, uint64_t len)
{
    if (len > p->value_len - p->written)
        return PPS_EINVAL;
    XXH3_64bits_update(p->hash, data, (size_t)len);
    int rc = pwrite_full(p->f->fd, data, (size_t)len, p->pos);
    if (rc)
        return rc;
    p->pos += len;
    p->written += len;
    if (p->written - p->flushed >= WRITEBACK_STEP) {
        /* Start writing this stretch to disk now, while the rest is still
         * arriving, so that the fdatasync before the acknowledgement has
         * little left to do. */
        uint64_t start = p->pos - (p->written - p->flushed);
        (void)sync_file_range(p->f->fd, (off64_t)start, (off64_t)(p->written - p->flushed),
                              SYNC_FILE_RANGE_WRITE);
        p->flushed = p->written;
    }
    return 0;
}

static void put_free(struct store_put *p)
{
    XXH3_freeState(p->hash);
    free(p);
}

void store_put_abort(struct store_put *p)
{
    if (!p)
        return;
    struct store *s = p->s;
    release_region(s, p->f, p->off, p->rec_len, STORE_RECORD_HEADER + p->key_len);
    put_free(p);
    atomic_fetch_add(&s->put_aborts, 1); /* counted once its space is back */
}

int store_put_commit(struct store_put *p)
{
    struct store *s = p->s;
    if (p->written != p->value_len) {
        store_put_abort(p);
        return PPS_EINVAL;
    }
    struct store_record r = {
        .kind = STORE_RECORD_PUT,
        .key_len = p->key_len,
        .value_len = p->value_len,
        .seq = atomic_fetch_add(&s->next_seq, 1),
        .data_hash = XXH3_64bits_digest(p->hash),
    };
    uint8_t head[STORE_RECORD_HEADER];
    store_record_encode(head, &r, p->key);
    int rc = pwrite_full(p->f->fd, head, sizeof head, p->off);
    if (!rc && fdatasync(p->f->fd) < 0)
        rc = pps_from_errno(errno);
    if (rc) {
        log_error("PUT %s: cannot write data-%08u.pps: %s", p->key, p->f->id, pps_strerror(rc));
        /* Back to PENDING, so that a later scan never trusts these bytes. */
        r.kind = STORE_RECORD_PENDING;
        store_record_encode(head, &r, p->key);
        (void)pwrite_full(p->f->fd, head, sizeof head, p->off);
        store_put_abort(p);
        return rc;
    }
    pthread_rwlock_wrlock(&s->lock);
    int dead = apply_put(s, p->key, p->key_len, p->f, p->off, p->value_len, r.seq);
    pthread_rwlock_unlock(&s->lock);
    atomic_fetch_add(&s->puts, 1);
    finish_writer(s, p->f);
    put_free(p);
    if (dead)
        wake_compactor(s);
    return 0;
}

int store_put_value(struct store *s, const char *key, uint32_t key_len, const void *value,
                    uint64_t value_len)
{
    struct store_put *p;
    int rc = store_put_begin(s, key, key_len, value_len, &p);
    if (rc)
        return rc;
    rc = store_put_write(p, value, value_len);
    if (rc) {
        store_put_abort(p);
        return rc;
    }
    return store_put_commit(p);
}

/* ---- GET ---- */

int store_read_begin(struct store *s, const char *key, uint32_t key_len, uint64_t offset,
                     uint64_t length, struct store_read *out)
{
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (!valid_key(key, key_len))
        return PPS_EINVAL;
    pthread_rwlock_rdlock(&s->lock);
    struct store_entry *e = store_index_find(&s->index, key, key_len);
    if (!e || !e->live) {
        pthread_rwlock_unlock(&s->lock);
        return PPS_ENOTFOUND;
    }
    uint64_t vlen = e->value_len;
    if (offset > vlen || (length != UINT64_MAX && length > vlen - offset)) {
        pthread_rwlock_unlock(&s->lock);
        out->value_len = vlen;
        return PPS_ERANGE;
    }
    out->file = e->file;
    file_ref(e->file);
    out->fd = e->file->fd;
    out->off = e->rec_off + STORE_RECORD_HEADER + key_len + offset;
    out->len = length == UINT64_MAX ? vlen - offset : length;
    out->value_len = vlen;
    pthread_rwlock_unlock(&s->lock);
    const uint8_t *base = file_map(s, out->file, out->off + out->len);
    out->data = base ? base + out->off : NULL;
    return 0;
}

void store_read_end(struct store_read *r)
{
    if (r->file)
        file_unref(r->file);
    r->file = NULL;
    r->fd = -1;
    r->data = NULL;
}

/* ---- DELETE ---- */

int store_delete(struct store *s, const char *key, uint32_t key_len)
{
    if (!valid_key(key, key_len))
        return PPS_EINVAL;
    pthread_rwlock_rdlock(&s->lock);
    struct store_entry *e = store_index_find(&s->index, key, key_len);
    int found = e && e->live;
    pthread_rwlock_unlock(&s->lock);
    if (!found)
        return PPS_ENOTFOUND;

    struct store_record r = {
        .kind = STORE_RECORD_DELETE,
        .key_len = key_len,
        .seq = atomic_fetch_add(&s->next_seq, 1),
        .data_hash = XXH3_64bits(key, key_len),
    };
    uint8_t rec[STORE_RECORD_HEADER + STORAGE_MAX_KEY];
    store_record_encode(rec, &r, key);
    memcpy(rec + STORE_RECORD_HEADER, key, key_len);
    uint64_t rec_len = store_record_size(key_len, 0);
    struct store_file *f;
    uint64_t off;
    int rc = reserve(s, rec_len, rec, (size_t)rec_len, &f, &off);
    if (rc)
        return rc;
    if (fdatasync(f->fd) < 0) {
        rc = pps_from_errno(errno);
        log_error("DELETE: cannot sync data-%08u.pps: %s", f->id, strerror(errno));
        finish_writer(s, f);
        return rc;
    }
    pthread_rwlock_wrlock(&s->lock);
    apply_delete(s, key, key_len, f, off, r.seq, 1);
    pthread_rwlock_unlock(&s->lock);
    atomic_fetch_add(&s->deletes, 1);
    finish_writer(s, f);
    wake_compactor(s);
    return 0;
}

/* ---- LIST ---- */

int store_list(struct store *s, const char *prefix, uint32_t prefix_len, store_list_fn fn, void *ctx)
{
    int rc = 0;
    size_t pos = 0;
    struct store_entry *e = NULL;
    pthread_rwlock_rdlock(&s->lock);
    while (!rc && (e = store_index_next(&s->index, &pos, e)) != NULL)
        if (e->live && e->key_len >= prefix_len && (prefix_len == 0 || memcmp(e->key, prefix, prefix_len) == 0))
            rc = fn(ctx, e->key, e->key_len, e->value_len);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* ---- compaction ---- */

struct crec {
    uint64_t off, len, value_len;
    uint8_t kind;
    uint32_t key_len;
    char *key;
};

struct crec_list {
    struct crec *v;
    size_t n, cap;
};

static int collect_cb(void *ctx, const struct store_scan_event *ev)
{
    struct crec_list *l = ctx;
    if (!ev->rec)
        return 0;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = pps_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (struct crec){.off = ev->off, .len = ev->len, .value_len = ev->rec->value_len,
                                 .kind = ev->rec->kind, .key_len = ev->rec->key_len,
                                 .key = pps_xstrdup(ev->key)};
    return 0;
}

static void crec_free(struct crec_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].key);
    free(l->v);
}

static int copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len)
{
    while (len) {
        size_t n = len < (1u << 30) ? (size_t)len : (1u << 30);
        loff_t a = (loff_t)in_off, b = (loff_t)out_off;
        ssize_t w = copy_file_range(in, &a, out, &b, n, 0);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* unsupported here, or nothing copied: fall back */
        in_off += (uint64_t)w;
        out_off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    if (!len)
        return 0;
    char *buf = pps_xmalloc(COPY_CHUNK);
    int rc = 0;
    while (len && !rc) {
        size_t n = len < COPY_CHUNK ? (size_t)len : COPY_CHUNK;
        rc = pread_full(in, buf, n, in_off);
        if (!rc)
            rc = pwrite_full(out, buf, n, out_off);
        in_off += n;
        out_off += n;
        len -= n;
    }
    free(buf);
    return rc;
}

/* Copy record c of f to the end of the active file, durably. */
static int copy_record(struct store *s, struct store_file *f, const struct crec *c,
                       struct store_file **nf, uint64_t *noff)
{
    uint8_t head[STORE_RECORD_HEADER + STORAGE_MAX_KEY];
    size_t head_len = STORE_RECORD_HEADER + c->key_len;
    int rc = pread_full(f->fd, head, head_len, c->off);
    if (rc)
        return rc;
    if (c->kind == STORE_RECORD_DELETE) {
        rc = reserve(s, c->len, head, head_len, nf, noff);
    } else {
        /* The copy is PENDING until its value is all there. */
        uint8_t pending[STORE_RECORD_HEADER + STORAGE_MAX_KEY];
        struct store_record r;
        rc = store_record_decode(head, &r);
        if (rc)
            return rc;
        r.kind = STORE_RECORD_PENDING;
        store_record_encode(pending, &r, c->key);
        memcpy(pending + STORE_RECORD_HEADER, c->key, c->key_len);
        rc = reserve(s, c->len, pending, head_len, nf, noff);
        if (rc)
            return rc;
        rc = copy_range(f->fd, c->off + head_len, (*nf)->fd, *noff + head_len, c->value_len);
        if (!rc)
            rc = pwrite_full((*nf)->fd, head, STORE_RECORD_HEADER, *noff);
    }
    if (!rc && fdatasync((*nf)->fd) < 0)
        rc = pps_from_errno(errno);
    if (rc && *nf) {
        release_region(s, *nf, *noff, c->len, head_len);
        *nf = NULL;
    }
    return rc;
}

/* Move the live records of sealed file f elsewhere, carry forward the
 * tombstones still needed, then delete f. */
static int compact_file(struct store *s, struct store_file *f)
{
    char name[32];
    file_name(f->id, name, sizeof name);
    struct crec_list l = {0};
    struct store_scan_result res;
    int rc = store_scan_file(f->fd, collect_cb, &l, &res);
    if (rc) {
        log_error("compaction: cannot read %s: %s", name, pps_strerror(rc));
        crec_free(&l);
        return rc;
    }
    uint64_t moved = 0;

    /* 1. Move live values. Stopping here (shutdown) leaves f in place and
     *    everything consistent: moved records simply exist twice. */
    for (size_t i = 0; i < l.n; i++) {
        struct crec *c = &l.v[i];
        if (c->kind != STORE_RECORD_PUT)
            continue;
        if (stopping(s)) {
            crec_free(&l);
            return PPS_ECANCELED;
        }
        pthread_rwlock_rdlock(&s->lock);
        struct store_entry *e = store_index_find(&s->index, c->key, c->key_len);
        int here = e && e->live && e->file == f && e->rec_off == c->off;
        pthread_rwlock_unlock(&s->lock);
        if (!here)
            continue;
        struct store_file *nf = NULL;
        uint64_t noff = 0;
        rc = copy_record(s, f, c, &nf, &noff);
        if (rc) {
            log_error("compaction of %s: cannot copy %s: %s", name, c->key, pps_strerror(rc));
            crec_free(&l);
            return rc;
        }
        pthread_rwlock_wrlock(&s->lock);
        e = store_index_find(&s->index, c->key, c->key_len);
        PPS_ASSERT(e); /* f's own record keeps nputs > 0 */
        e->nputs++;
        if (e->live && e->file == f && e->rec_off == c->off) {
            f->live -= c->len;
            nf->live += c->len;
            e->file = nf;
            e->rec_off = noff;
        }
        pthread_rwlock_unlock(&s->lock);
        finish_writer(s, nf);
        moved += c->len;
    }

    /* 2. Everything still live in f must now be a tombstone we know of;
     *    otherwise the scan missed a record (damaged since start-up) and f
     *    cannot go. */
    pthread_rwlock_wrlock(&s->lock);
    uint64_t tomb_bytes = 0;
    for (size_t i = 0; i < l.n; i++) {
        struct crec *c = &l.v[i];
        if (c->kind != STORE_RECORD_DELETE)
            continue;
        struct store_entry *e = store_index_find(&s->index, c->key, c->key_len);
        if (e && !e->live && e->file == f && e->rec_off == c->off)
            tomb_bytes += c->len;
    }
    if (f->live != tomb_bytes) {
        pthread_rwlock_unlock(&s->lock);
        log_error("compaction: %s holds live data its scan did not find; leaving it", name);
        crec_free(&l);
        return PPS_ECORRUPT;
    }
    /* 3. f's PUT records leave the disk with f: a deleted key left with no
     *    PUT on disk needs its tombstone no more. */
    for (size_t i = 0; i < l.n; i++) {
        struct crec *c = &l.v[i];
        if (c->kind != STORE_RECORD_PUT)
            continue;
        struct store_entry *e = store_index_find(&s->index, c->key, c->key_len);
        if (!e || e->nputs == 0) {
            log_warn("compaction of %s: %s at offset %llu was not counted", name, c->key,
                     (unsigned long long)c->off);
            continue;
        }
        e->nputs--;
        drop_if_unneeded(s, e);
    }
    pthread_rwlock_unlock(&s->lock);

    /* 4. Carry forward the tombstones still needed. */
    for (size_t i = 0; i < l.n; i++) {
        struct crec *c = &l.v[i];
        if (c->kind != STORE_RECORD_DELETE)
            continue;
        pthread_rwlock_rdlock(&s->lock);
        struct store_entry *e = store_index_find(&s->index, c->key, c->key_len);
        int needed = e && !e->live && e->file == f && e->rec_off == c->off;
        pthread_rwlock_unlock(&s->lock);
        if (!needed)
            continue;
        struct store_file *nf = NULL;
        uint64_t noff = 0;
        rc = copy_record(s, f, c, &nf, &noff);
        if (rc) {
            /* f stays; the index is consistent with the files on disk. */
            log_error("compaction of %s: cannot copy tombstone of %s: %s", name, c->key,
                      pps_strerror(rc));
            crec_free(&l);
            return rc;
        }
        pthread_rwlock_wrlock(&s->lock);
        e = store_index_find(&s->index, c->key, c->key_len);
        if (e && !e->live && e->file == f && e->rec_off == c->off) {
            f->live -= c->len;
            nf->live += c->len;
            e->file = nf;
            e->rec_off = noff;
        }
        pthread_rwlock_unlock(&s->lock);
        finish_writer(s, nf);
        moved += c->len;
    }
    crec_free(&l);

    /* 5. Remove f. Readers holding a reference keep reading the open file. */
    pthread_rwlock_wrlock(&s->lock);
    if (f->live != 0) {
        pthread_rwlock_unlock(&s->lock);
        log_error("compaction: %s still has %llu live bytes; leaving it", name,
                  (unsigned long long)f->live);
        return PPS_EINTERNAL;
    }
    size_t j = 0;
    for (size_t i = 0; i < s->nfiles; i++)
        if (s->files[i] != f)
            s->files[j++] = s->files[i];
    PPS_ASSERT(j + 1 == s->nfiles);
    s->nfiles = j;
    pthread_rwlock_unlock(&s->lock);
    uint64_t size;
    pthread_mutex_lock(&s->append);
    size = f->size;
    pthread_mutex_unlock(&s->append);
    if (unlinkat(s->dir_fd, name, 0) < 0)
        log_error("compaction: cannot remove %s: %s", name, strerror(errno));
    fsync(s->dir_fd);
    atomic_fetch_add(&s->compactions, 1);
    atomic_fetch_add(&s->bytes_copied, moved);
    atomic_fetch_add(&s->bytes_reclaimed, size > moved ? size - moved : 0);
    log_info("compaction: removed %s (%llu bytes, %llu bytes of live records moved)", name,
             (unsigned long long)size, (unsigned long long)moved);
    file_unref(f); /* the list's reference */
    return 0;
}

/* The sealed file with the lowest live fraction under the ratio, with a
 * reference, or NULL. Seals the active file first if it qualifies, so that
 * deleting everything written recently also frees its space; but only once
 * enough of it is dead, or every few small overwrites would start a file. */
static struct store_file *pick_victim(struct store *s)
{
    struct store_file *best = NULL;
    double best_frac = 2.0;
    pthread_mutex_lock(&s->append);
    pthread_rwlock_rdlock(&s->lock);
    struct store_file *a = s->active;
    uint64_t min_dead = s->file_size / 4 < ACTIVE_MIN_DEAD ? s->file_size / 4 : ACTIVE_MIN_DEAD;
    if (a && a->writers == 0 && a->size > 0 && !a->no_compact &&
        a->size - a->live >= min_dead && (double)a->live < s->ratio * (double)a->size) {
        a->sealed = 1;
        s->active = NULL;
    }
    for (size_t i = 0; i < s->nfiles; i++) {
        struct store_file *f = s->files[i];
        if (!f->sealed || f->writers || f->no_compact)
            continue;
        double frac = f->size ? (double)f->live / (double)f->size : 0.0;
        if (frac < s->ratio && frac < best_frac) {
            best = f;
            best_frac = frac;
        }
    }
    if (best)
        file_ref(best);
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_unlock(&s->append);
    return best;
}

int store_compact(struct store *s)
{
    int first = 0;
    pthread_mutex_lock(&s->compact_mu);
    while (!stopping(s)) {
        struct store_file *f = pick_victim(s);
        if (!f)
            break;
        int rc = compact_file(s, f);
        if (rc && rc != PPS_ECANCELED) {
            f->no_compact = 1;
            if (!first)
                first = rc;
        }
        file_unref(f);
    }
    pthread_mutex_unlock(&s->compact_mu);
    return first;
}

static void *compactor_main(void *arg)
{
    struct store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->wake_mu);
        while (!s->wake && !s->stop)
            pthread_cond_wait(&s->wake_cv, &s->wake_mu);
        int stop = s->stop;
        s->wake = 0;
        pthread_mutex_unlock(&s->wake_mu);
        if (stop)
            break;
        store_compact(s);
    }
    return NULL;
}

/* ---- open / close ---- */

struct rebuild_ctx {
    struct store *s;
    struct store_file *f;
    const char *name;
};

static int rebuild_cb(void *ctx, const struct store_scan_event *ev)
{
    struct rebuild_ctx *c = ctx;
    if (!ev->rec) {
        log_warn("%s: skipped %llu bytes at offset %llu: %s", c->name,
                 (unsigned long long)ev->len, (unsigned long long)ev->off, ev->why);
        c->s->recovery_dropped += ev->len;
        return 0;
    }
    if (ev->rec->kind == STORE_RECORD_PUT)
        apply_put(c->s, ev->key, ev->rec->key_len, c->f, ev->off, ev->rec->value_len,
                  ev->rec->seq);
    else
        apply_delete(c->s, ev->key, ev->rec->key_len, c->f, ev->off, ev->rec->seq, 0);
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Ids of the data files in the directory, sorted. */
static int list_files(struct store *s, uint32_t **ids_out, size_t *n_out)
{
    int fd = dup(s->dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return pps_from_errno(errno);
    }
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned id;
        char tail[8];
        if (strlen(de->d_name) != 17 || sscanf(de->d_name, "data-%8u%4s", &id, tail) != 2 ||
            strcmp(tail, ".pps") != 0 || id == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ids = pps_xrealloc(ids, cap * sizeof *ids);
        }
        ids[n++] = id;
    }
    closedir(d);
    if (n)
        qsort(ids, n, sizeof *ids, cmp_u32);
    *ids_out = ids;
    *n_out = n;
    return 0;
}

static int recover(struct store *s)
{
    uint32_t *ids = NULL;
    size_t n = 0;
    int rc = list_files(s, &ids, &n);
    if (rc)
        return rc;
    uint64_t max_seq = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char name[32];
        file_name(ids[i], name, sizeof name);
        int fd = openat(s->dir_fd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = pps_from_errno(errno);
            log_error("cannot open %s/%s: %s", s->dir, name, strerror(errno));
            break;
        }
        struct store_file *f = file_new(ids[i], fd);
        if (s->nfiles == s->files_cap) {
            s->files_cap = s->files_cap ? s->files_cap * 2 : 16;
            s->files = pps_xrealloc(s->files, s->files_cap * sizeof *s->files);
        }
        s->files[s->nfiles++] = f;
        struct rebuild_ctx ctx = {.s = s, .f = f, .name = name};
        struct store_scan_result res;
        rc = store_scan_file(fd, rebuild_cb, &ctx, &res);
        if (rc) {
            log_error("cannot read %s/%s: %s", s->dir, name, pps_strerror(rc));
            break;
        }
        s->recovered_records += res.nrecords;
        if (res.max_seq > max_seq)
            max_seq = res.max_seq;
        if (res.end < res.file_size) {
            /* Nothing after the last valid record was ever acknowledged. */
            uint64_t cut = res.file_size - res.end;
            if (res.tail_why)
                log_warn("%s: torn tail at offset %llu (%s): dropping %llu bytes", name,
                         (unsigned long long)res.tail, res.tail_why,
                         (unsigned long long)(res.file_size - res.tail));
            if (ftruncate(fd, (off_t)res.end) < 0 || fsync(fd) < 0) {
                rc = pps_from_errno(errno);
                log_error("cannot truncate %s: %s", name, strerror(errno));
                break;
            }
            s->recovery_dropped += res.file_size - res.tail;
            log_info("%s: truncated to %llu bytes (%llu dropped)", name,
                     (unsigned long long)res.end, (unsigned long long)cut);
        }
        f->size = res.end;
        f->sealed = 1;
        s->next_id = ids[i] + 1;
    }
    free(ids);
    if (rc)
        return rc;
    if (s->nfiles) {
        s->active = s->files[s->nfiles - 1];
        s->active->sealed = 0;
    }
    atomic_store(&s->next_seq, max_seq + 1);
    /* Tombstones whose key has no PUT left on disk are dead. */
    size_t pos = 0;
    struct store_entry *e = store_index_next(&s->index, &pos, NULL);
    while (e) {
        struct store_entry *next = store_index_next(&s->index, &pos, e);
        drop_if_unneeded(s, e);
        e = next;
    }
    return 0;
}

int store_open(const struct store_options *opt, struct store **out)
{
    *out = NULL;
    if (!opt->dir || !*opt->dir)
        return PPS_EINVAL;
    if (mkdir(opt->dir, 0755) < 0 && errno != EEXIST) {
        log_error("cannot create %s: %s", opt->dir, strerror(errno));
        return pps_from_errno(errno);
    }
    struct store *s = pps_xcalloc(1, sizeof *s);
    s->dir = pps_xstrdup(opt->dir);
    s->file_size = opt->file_size ? opt->file_size : STORE_DEFAULT_FILE_SIZE;
    s->ratio = opt->compact_ratio > 0 ? opt->compact_ratio : STORE_DEFAULT_COMPACT_RATIO;
    s->next_id = 1;
    s->lock_fd = -1;
    /* Readers hold the lock for a lookup only; a committing PUT must not
     * wait behind a stream of them. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&s->append, NULL);
    pthread_mutex_init(&s->compact_mu, NULL);
    pthread_mutex_init(&s->wake_mu, NULL);
    pthread_cond_init(&s->wake_cv, NULL);
    store_index_init(&s->index);
    int rc = 0;
    s->dir_fd = open(opt->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0) {
        rc = pps_from_errno(errno);
        log_error("cannot open %s: %s", opt->dir, strerror(errno));
        goto fail;
    }
    s->lock_fd = openat(s->dir_fd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? PPS_EBUSY : pps_from_errno(errno);
        log_error("cannot lock %s/LOCK: %s", opt->dir,
                  errno == EWOULDBLOCK ? "another storage uses this directory" : strerror(errno));
        goto fail;
    }
    rc = recover(s);
    if (rc)
        goto fail;
    if (opt->background_compaction) {
        if (pthread_create(&s->compactor, NULL, compactor_main, s) != 0) {
            rc = PPS_ENOMEM;
            goto fail;
        }
        s->has_compactor = 1;
        wake_compactor(s);
    }
    *out = s;
    return 0;
fail:
    store_close(s);
    return rc;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    if (s->has_compactor) {
        pthread_mutex_lock(&s->wake_mu);
        s->stop = 1;
        pthread_cond_signal(&s->wake_cv);
        pthread_mutex_unlock(&s->wake_mu);
        pthread_join(s->compactor, NULL);
    }
    for (size_t i = 0; i < s->nfiles; i++)
        file_unref(s->files[i]);
    free(s->files);
    store_index_free(&s->index);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->append);
    pthread_mutex_destroy(&s->compact_mu);
    pthread_mutex_destroy(&s->wake_mu);
    pthread_cond_destroy(&s->wake_cv);
    free(s->dir);
    free(s);
}

const char *store_dir(const struct store *s) { return s->dir; }

void store_get_stats(struct store *s, struct store_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->append);
    pthread_rwlock_rdlock(&s->lock);
    out->values = s->nvalues;
    out->bytes_stored = s->value_bytes;
    out->tombstones = s->ntombs;
    out->files = s->nfiles;
    for (size_t i = 0; i < s->nfiles; i++) {
        out->bytes_on_disk += s->files[i]->size;
        out->bytes_live += s->files[i]->live;
    }
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_unlock(&s->append);
    out->bytes_free = bytes_free(s);
    out->puts = atomic_load(&s->puts);
    out->put_aborts = atomic_load(&s->put_aborts);
    out->deletes = atomic_load(&s->deletes);
    out->compactions = atomic_load(&s->compactions);
    out->bytes_copied = atomic_load(&s->bytes_copied);
    out->bytes_reclaimed = atomic_load(&s->bytes_reclaimed);
    out->recovered_records = s->recovered_records;
    out->recovery_dropped = s->recovery_dropped;
}
