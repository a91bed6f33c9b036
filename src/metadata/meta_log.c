/* meta_log: record codec, replay with torn-tail repair, append, fdatasync and
 * atomic rewrite of the metadata log; see meta_log.h for the format.
 *
 * Replay maps the file read-only and walks it record by record; every length
 * is checked against the limits and the bytes left before anything is read
 * through it. When a record does not decode, the rest of the file is scanned
 * for a record magic that starts a valid record: none means a torn tail (the
 * normal result of a crash during a write), some means damage in the middle,
 * where silently truncating would throw away acknowledged writes. */
#include "metadata/meta_log.h"
#include "common/err.h"
#include "common/log.h"
#include "metadata/meta_client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

void meta_record_encode(struct wbuf *wb, uint8_t type, const void *key, uint32_t key_len,
                        const void *value, uint32_t value_len)
{
    size_t start = wb->len;
    uint8_t *h = wbuf_reserve(wb, META_REC_HEADER_SIZE);
    store_le32(h, META_REC_MAGIC);
    h[4] = type;
    h[5] = h[6] = h[7] = 0;
    store_le32(h + 8, key_len);
    store_le32(h + 12, value_len);
    wbuf_put(wb, key, key_len);
    wbuf_put(wb, value, value_len);
    uint64_t sum = XXH3_64bits(wb->data + start, wb->len - start);
    wbuf_u64(wb, sum);
}

int meta_record_decode(const uint8_t *data, size_t len, struct meta_record *rec, size_t *rec_len)
{
    if (len < META_REC_HEADER_SIZE)
        return PPS_ETRUNCATED;
    uint8_t type = data[4];
    uint32_t key_len = load_le32(data + 8), value_len = load_le32(data + 12);
    if (load_le32(data) != META_REC_MAGIC || data[5] || data[6] || data[7])
        return PPS_ECORRUPT;
    if ((type != META_REC_PUT && type != META_REC_DELETE) || key_len == 0 ||
        key_len > META_MAX_KEY || value_len > META_MAX_VALUE ||
        (type == META_REC_DELETE && value_len))
        return PPS_ECORRUPT;
    uint64_t total = meta_record_size(key_len, value_len);
    if (len < total)
        return PPS_ETRUNCATED;
    size_t body = (size_t)total - 8;
    if (XXH3_64bits(data, body) != load_le64(data + body))
        return PPS_ECORRUPT;
    rec->type = type;
    rec->key = data + META_REC_HEADER_SIZE;
    rec->key_len = key_len;
    rec->value = data + META_REC_HEADER_SIZE + key_len;
    rec->value_len = value_len;
    *rec_len = (size_t)total;
    return 0;
}

/* ---- files and directories ---- */

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = pps_xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return PPS_ETOOBIG;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return pps_from_errno(errno);
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return pps_from_errno(errno);
    return 0;
}

static int write_all_at(int fd, const void *data, size_t len, uint64_t off)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return pps_from_errno(errno);
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static void encode_file_header(uint8_t out[META_LOG_HEADER_SIZE])
{
    memcpy(out, META_LOG_MAGIC, 8);
    store_le32(out + 8, META_LOG_VERSION);
    store_le32(out + 12, 0);
}

/* Write header + data into DIR/meta.log.compact, fsync it; returns the open
 * fd in *fd_out. The caller renames. */
static int write_new_file(struct meta_log *log, const void *data, size_t len, int *fd_out,
                          char **tmp_out)
{
    char *tmp = path_join(log->dir, META_LOG_TMP_FILE);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = pps_from_errno(errno);
        log_error("metadata log: cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    uint8_t hdr[META_LOG_HEADER_SIZE];
    encode_file_header(hdr);
    int rc = write_all_at(fd, hdr, sizeof hdr, 0);
    if (!rc && len)
        rc = write_all_at(fd, data, len, sizeof hdr);
    if (!rc && fsync(fd) < 0)
        rc = pps_from_errno(errno);
    if (rc) {
        log_error("metadata log: writing %s failed: %s", tmp, pps_strerror(rc));
        close(fd);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    *fd_out = fd;
    *tmp_out = tmp;
    return 0;
}

static int switch_to(struct meta_log *log, int fd, char *tmp, uint64_t size, int *switched)
{
    int rc = 0;
    if (rename(tmp, log->path) < 0) {
        rc = pps_from_errno(errno);
        log_error("metadata log: rename %s -> %s failed: %s", tmp, log->path, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    if (log->fd >= 0)
        close(log->fd);
    log->fd = fd;
    log->size = size;
    if (switched)
        *switched = 1;
    if (fsync(log->dir_fd) < 0) {
        rc = pps_from_errno(errno);
        log_error("metadata log: fsync of directory %s failed: %s", log->dir, strerror(errno));
    }
    return rc;
}

int meta_log_rewrite(struct meta_log *log, const void *data, size_t len, int *switched)
{
    int fd = -1;
    char *tmp = NULL;
    *switched = 0;
    int rc = write_new_file(log, data, len, &fd, &tmp);
    if (rc)
        return rc;
    return switch_to(log, fd, tmp, META_LOG_HEADER_SIZE + (uint64_t)len, switched);
}

int meta_log_append(struct meta_log *log, const void *data, size_t len)
{
    int rc = write_all_at(log->fd, data, len, log->size);
    if (rc) {
        /* Cut a partial write off so a later append does not land behind it. */
        if (ftruncate(log->fd, (off_t)log->size) < 0)
            log_error("metadata log: cannot cut partial write at %llu: %s",
                      (unsigned long long)log->size, strerror(errno));
        return rc;
    }
    log->size += len;
    return 0;
}

int meta_log_sync(struct meta_log *log)
{
    while (fdatasync(log->fd) < 0) {
        if (errno != EINTR)
            return pps_from_errno(errno);
    }
    return 0;
}

/* ---- open and replay ---- */

/* Offset of the first valid record at or after `from`, or len if none. */
static size_t next_valid_record(const uint8_t *data, size_t len, size_t from)
{
    static const uint8_t magic[4] = {'M', 'R', 'E', 'C'};
    size_t pos = from;
    while (pos + META_REC_HEADER_SIZE <= len) {
        const uint8_t *hit = memmem(data + pos, len - pos, magic, sizeof magic);
        if (!hit)
            break;
        pos = (size_t)(hit - data);
        struct meta_record rec;
        size_t n;
        if (meta_record_decode(data + pos, len - pos, &rec, &n) == 0)
            return pos;
        pos++;
    }
    return len;
}

static int save_damaged(struct meta_log *log, const uint8_t *bytes, size_t len, uint64_t offset)
{
    char name[64];
    snprintf(name, sizeof name, "%s.damaged-%llu", META_LOG_FILE, (unsigned long long)offset);
    char *path = path_join(log->dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? pps_from_errno(errno) : write_all_at(fd, bytes, len, 0);
    if (!rc && fsync(fd) < 0)
        rc = pps_from_errno(errno);
    if (fd >= 0)
        close(fd);
    if (rc)
        log_error("metadata log: cannot save damaged bytes to %s: %s", path, pps_strerror(rc));
    else
        log_warn("metadata log: saved %zu damaged bytes to %s", len, path);
    free(path);
    return rc;
}

static int replay(struct meta_log *log, int truncate_damaged, meta_replay_fn fn, void *ctx,
                  struct meta_replay_stats *st)
{
    struct stat sb;
    if (fstat(log->fd, &sb) < 0)
        return pps_from_errno(errno);
    size_t size = (size_t)sb.st_size;
    uint8_t want[META_LOG_HEADER_SIZE];
    encode_file_header(want);
    if (size < META_LOG_HEADER_SIZE) {
        log_error("metadata log %s: %zu bytes, shorter than its %d-byte header: not a metadata log",
                  log->path, size, META_LOG_HEADER_SIZE);
        return PPS_ECORRUPT;
    }
    const uint8_t *data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, log->fd, 0);
    if (data == MAP_FAILED)
        return pps_from_errno(errno);
    int rc = 0;
    if (memcmp(data, want, 8) != 0) {
        log_error("metadata log %s: bad magic at offset 0: not a metadata log", log->path);
        rc = PPS_ECORRUPT;
        goto out;
    }
    if (memcmp(data, want, META_LOG_HEADER_SIZE) != 0) {
        log_error("metadata log %s: unsupported version %u", log->path, load_le32(data + 8));
        rc = PPS_EUNSUPPORTED;
        goto out;
    }
    size_t pos = META_LOG_HEADER_SIZE;
    while (pos < size) {
        struct meta_record rec;
        size_t n;
        int drc = meta_record_decode(data + pos, size - pos, &rec, &n);
        if (drc == 0) {
            rc = fn(ctx, &rec);
            if (rc)
                goto out;
            st->records++;
            if (rec.type == META_REC_PUT)
                st->puts++;
            else
                st->deletes++;
            pos += n;
            continue;
        }
        st->damage_offset = pos;
        size_t next = next_valid_record(data, size, pos + 1);
        if (next == size) {
            st->torn_tail = 1;
            log_warn("metadata log %s: torn tail at offset %zu (%s): dropping %zu bytes", log->path,
                     pos, drc == PPS_ETRUNCATED ? "record cut short" : "bad record",
                     size - pos);
        } else {
            st->damaged = 1;
            log_error("metadata log %s: damaged record at offset %zu (%s), but a valid record "
                      "follows at offset %zu: the log is damaged in the middle, not torn at the tail",
                      log->path, pos, pps_strerror(drc), next);
            if (!truncate_damaged) {
                log_error("refusing to start: that would drop acknowledged writes after offset %zu. "
                          "Start with --truncate-damaged to keep only the records before it "
                          "(the rest is saved to a side file)", pos);
                rc = PPS_ECORRUPT;
                goto out;
            }
            rc = save_damaged(log, data + pos, size - pos, pos);
            if (rc)
                goto out;
        }
        st->dropped_bytes = size - pos;
        break;
    }
    log->size = pos;
out:
    munmap((void *)data, size);
    if (rc == 0 && log->size < size) {
        if (ftruncate(log->fd, (off_t)log->size) < 0 || fsync(log->fd) < 0) {
            rc = pps_from_errno(errno);
            log_error("metadata log %s: cannot truncate to %llu: %s", log->path,
                      (unsigned long long)log->size, strerror(errno));
        }
    }
    return rc;
}

static void sync_parent_dir(const char *dir)
{
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/..", dir);
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        if (fsync(fd) < 0)
            log_warn("fsync of %s failed: %s", parent, strerror(errno));
        close(fd);
    }
}

static int lock_dir(struct meta_log *log)
{
    char *path = path_join(log->dir, META_LOG_LOCK_FILE);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int rc = 0;
    if (fd < 0) {
        rc = pps_from_errno(errno);
        log_error("cannot open %s: %s", path, strerror(errno));
    } else if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? PPS_EBUSY : pps_from_errno(errno);
        log_error("cannot lock %s: %s (is another metadata_storage using %s?)", path,
                  strerror(errno), log->dir);
        close(fd);
        fd = -1;
    }
    free(path);
    log->lock_fd = fd;
    return rc;
}

int meta_log_open(struct meta_log *log, const char *dir, int truncate_damaged, meta_replay_fn fn,
                  void *ctx, struct meta_replay_stats *stats)
{
    memset(log, 0, sizeof *log);
    memset(stats, 0, sizeof *stats);
    log->fd = log->dir_fd = log->lock_fd = -1;
    log->dir = pps_xstrdup(dir);
    log->path = path_join(dir, META_LOG_FILE);
    int rc = mkdir_p(dir);
    if (rc) {
        log_error("cannot create directory %s: %s", dir, pps_strerror(rc));
        goto fail;
    }
    log->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dir_fd < 0) {
        rc = pps_from_errno(errno);
        log_error("cannot open directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    if ((rc = lock_dir(log)))
        goto fail;
    char *tmp = path_join(dir, META_LOG_TMP_FILE);
    if (unlink(tmp) == 0)
        log_warn("removed %s left by an interrupted compaction", tmp);
    free(tmp);

    log->fd = open(log->path, O_RDWR | O_CLOEXEC);
    if (log->fd < 0 && errno == ENOENT) {
        /* A new log appears atomically: header written and fsync'd under a
         * temporary name, then renamed, so a crash never leaves a half file. */
        int switched;
        stats->created = 1;
        rc = meta_log_rewrite(log, NULL, 0, &switched);
        if (rc)
            goto fail;
        sync_parent_dir(dir); /* the data directory itself may be new */
        return 0;
    }
    if (log->fd < 0) {
        rc = pps_from_errno(errno);
        log_error("cannot open %s: %s", log->path, strerror(errno));
        goto fail;
    }
    rc = replay(log, truncate_damaged, fn, ctx, stats);
    if (rc)
        goto fail;
    return 0;
fail:
    meta_log_close(log);
    return rc;
}

void meta_log_close(struct meta_log *log)
{
    if (log->fd >= 0)
        close(log->fd);
    if (log->dir_fd >= 0)
        close(log->dir_fd);
    if (log->lock_fd >= 0)
        close(log->lock_fd);
    free(log->dir);
    free(log->path);
    memset(log, 0, sizeof *log);
    log->fd = log->dir_fd = log->lock_fd = -1;
}
