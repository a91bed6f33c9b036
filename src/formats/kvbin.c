/* kvbin: reader and writer of kv.bin (format in docs/formats.md).
 *
 * Layout: a 64-byte file header padded to 512 bytes, then per model a model
 * header, then its records; every header and every value starts on a 512-byte
 * boundary. Each header carries an XXH3-64 of itself (computed with the
 * checksum field zeroed), each record the XXH3-64 of its value.
 *
 * The reader walks the headers once at open and never trusts a length before
 * comparing it with what is left of the file, so a truncated or corrupt file
 * gives a message naming the structure and its offset instead of a fault.
 * Value checksums are checked on demand (kvbin_verify): they touch every byte.
 *
 * The writer streams: it writes placeholders for headers whose checksum or
 * count is not known yet and patches them with pwrite, then fsyncs and
 * renames "<path>.tmp" over path. Easy to get wrong: a mapped file that is
 * truncated under the reader raises SIGBUS, which is why kv.bin is only ever
 * replaced by rename. */
#include "formats/kvbin.h"
#include "common/buf.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define FILE_MAGIC "PPSKVBIN"
#define MODEL_MAGIC "KVMD"
#define RECORD_MAGIC "KVRC"
/* offsets inside the file header */
#define FH_VERSION 8
#define FH_RESERVED16 10
#define FH_NMODELS 12
#define FH_FILE_SIZE 16
#define FH_RESERVED 24
#define FH_CHECKSUM 56
/* offsets inside a model or record header */
#define EH_NAME_LEN 4
#define EH_RESERVED 6
#define EH_SIZE 8       /* model: total_size; record: value length */
#define EH_COUNTS 16    /* model: u32 nbatches, u32 nrecords; record: value checksum */
#define EH_CHECKSUM 24
#define EH_NAME 32

static uint64_t align_up(uint64_t x) { return (x + KVBIN_ALIGN - 1) & ~(uint64_t)(KVBIN_ALIGN - 1); }

int kvbin_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > KVBIN_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 0x21 || name[i] > 0x7e)
            return 0;
    return 1;
}

static int bytes_name_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return 0;
    return 1;
}

/* XXH3-64 of a header of n bytes with its 8-byte checksum field at csum_at
 * taken as zero. */
static uint64_t header_checksum(const uint8_t *hdr, size_t n, size_t csum_at)
{
    uint8_t copy[EH_NAME + KVBIN_NAME_MAX];
    PPS_ASSERT(n <= sizeof copy && csum_at + 8 <= n);
    memcpy(copy, hdr, n);
    memset(copy + csum_at, 0, 8);
    return XXH3_64bits(copy, n);
}

static int checksum_matches(uint64_t stored, uint64_t computed)
{
#ifdef KVBIN_FUZZ_NO_HEADER_CHECKSUM
    /* fuzz builds only: let mutated headers reach the deeper checks */
    (void)stored;
    (void)computed;
    return 1;
#else
    return stored == computed;
#endif
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- reader */

struct parser {
    const char *path;
    const uint8_t *p;
    uint64_t size;
    char *err;
    size_t errlen;
};

static int parse_file_header(struct parser *ps, uint32_t *nmodels, uint64_t *declared_size)
{
    const uint8_t *p = ps->p;
    /* a short file that starts like a kv.bin is truncated, anything else is
     * not a kv.bin at all */
    size_t magic_len = ps->size < 8 ? (size_t)ps->size : 8;
    if (memcmp(p, FILE_MAGIC, magic_len) != 0) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: offset 0: bad magic, not a kv.bin file", ps->path);
    }
    if (ps->size < KVBIN_FILE_HEADER_SIZE) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: file header at offset 0: file is %" PRIu64 " bytes, shorter than the %d-byte header",
               ps->path, ps->size, KVBIN_FILE_HEADER_SIZE);
    }
    uint16_t version = load_le16(p + FH_VERSION);
    if (version != KVBIN_VERSION) {
        return pps_fail(ps->err, ps->errlen, PPS_EUNSUPPORTED,
               "%s: file header at offset %d: unsupported kv.bin version %u (this build reads version %d)",
               ps->path, FH_VERSION, version, KVBIN_VERSION);
    }
    uint64_t stored = load_le64(p + FH_CHECKSUM);
    if (!checksum_matches(stored, header_checksum(p, KVBIN_FILE_HEADER_SIZE, FH_CHECKSUM))) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: file header at offset 0: header checksum mismatch", ps->path);
    }
    if (load_le16(p + FH_RESERVED16) != 0 || !all_zero(p + FH_RESERVED, FH_CHECKSUM - FH_RESERVED)) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: file header at offset 0: reserved bytes are not zero", ps->path);
    }
    *nmodels = load_le32(p + FH_NMODELS);
    *declared_size = load_le64(p + FH_FILE_SIZE);
    if (ps->size < KVBIN_ALIGN) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: file header at offset 0: file is %" PRIu64 " bytes, the header's padding needs %d",
               ps->path, ps->size, KVBIN_ALIGN);
    }
    return 0;
}

/* Checks a model or record header at off (what = "model 1 of 2" or "record
 * 3 of model resnet152"): bounds, magic, name, reserved, checksum. Copies the
 * name into name. */
static int parse_entry_header(struct parser *ps, uint64_t off, const char *magic, const char *what,
                              char *name)
{
    if (off > ps->size || ps->size - off < EH_NAME) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
                        "%s: %s at offset %" PRIu64 ": header beyond end of file (size %" PRIu64 ")",
                        ps->path, what, off, ps->size);
    }
    const uint8_t *h = ps->p + off;
    if (memcmp(h, magic, 4) != 0) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: %s at offset %" PRIu64 ": bad header magic (expected \"%s\")",
                        ps->path, what, off, magic);
    }
    uint16_t name_len = load_le16(h + EH_NAME_LEN);
    if (name_len == 0 || name_len > KVBIN_NAME_MAX) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: %s at offset %" PRIu64 ": name length %u out of range 1..%d", ps->path,
                        what, off, name_len, KVBIN_NAME_MAX);
    }
    if (ps->size - off - EH_NAME < name_len) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: %s at offset %" PRIu64 ": name of %u bytes beyond end of file (size %" PRIu64 ")",
               ps->path, what, off, name_len, ps->size);
    }
    uint64_t stored = load_le64(h + EH_CHECKSUM);
    if (!checksum_matches(stored, header_checksum(h, EH_NAME + (size_t)name_len, EH_CHECKSUM))) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: %s at offset %" PRIu64 ": header checksum mismatch", ps->path, what,
                        off);
    }
    if (load_le16(h + EH_RESERVED) != 0) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: %s at offset %" PRIu64 ": reserved bytes are not zero", ps->path, what,
                        off);
    }
    if (!bytes_name_ok(h + EH_NAME, name_len)) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
               "%s: %s at offset %" PRIu64 ": name has bytes outside printable ASCII", ps->path, what, off);
    }
    memcpy(name, h + EH_NAME, name_len);
    name[name_len] = '\0';
    return 0;
}

static int parse_record(struct parser *ps, struct kvbin_model *m, uint32_t index, uint64_t *off)
{
    struct kvbin_record *r = &m->records[index];
    char what[KVBIN_NAME_MAX + 64];
    snprintf(what, sizeof what, "record %u of model %s", index, m->name);
    int rc = parse_entry_header(ps, *off, RECORD_MAGIC, what, r->key);
    if (rc)
        return rc;
    const uint8_t *h = ps->p + *off;
    r->header_offset = *off;
    r->len = load_le64(h + EH_SIZE);
    r->checksum = load_le64(h + EH_COUNTS);
    uint64_t voff = align_up(*off + EH_NAME + load_le16(h + EH_NAME_LEN));
    if (voff > ps->size || r->len > ps->size - voff) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: %s at offset %" PRIu64 ": length %" PRIu64 " beyond end of file (size %" PRIu64 ")",
               ps->path, what, *off, r->len, ps->size);
    }
    uint64_t next = voff + align_up(r->len);
    if (next > ps->size) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: %s at offset %" PRIu64 ": padding after the value (to offset %" PRIu64
               ") beyond end of file (size %" PRIu64 ")",
               ps->path, what, *off, next, ps->size);
    }
    for (uint32_t i = 0; i < index; i++)
        if (strcmp(m->records[i].key, r->key) == 0) {
            return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                            "%s: %s at offset %" PRIu64 ": duplicate key %s (also record %u)",
                            ps->path, what, *off, r->key, i);
        }
    r->file_offset = voff;
    r->data = ps->p + voff;
    *off = next;
    return 0;
}

static int parse_model(struct parser *ps, struct kvbin *kv, uint32_t index, uint32_t nmodels, uint64_t *off)
{
    struct kvbin_model *m = &kv->models[index];
    char what[64];
    snprintf(what, sizeof what, "model %u of %u", index, nmodels);
    int rc = parse_entry_header(ps, *off, MODEL_MAGIC, what, m->name);
    if (rc)
        return rc;
    const uint8_t *h = ps->p + *off;
    m->header_offset = *off;
    m->total_size = load_le64(h + EH_SIZE);
    m->nbatches = load_le32(h + EH_COUNTS);
    uint32_t nrecords = load_le32(h + EH_COUNTS + 4);
    for (uint32_t i = 0; i < index; i++)
        if (strcmp(kv->models[i].name, m->name) == 0) {
            return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                            "%s: %s at offset %" PRIu64 ": duplicate model name %s", ps->path, what,
                            *off, m->name);
        }
    *off = align_up(*off + EH_NAME + load_le16(h + EH_NAME_LEN));
    /* Each record takes at least one 512-byte header block, so a count the
     * rest of the file cannot hold is caught before the allocation. */
    uint64_t room = *off <= ps->size ? (ps->size - *off) / KVBIN_ALIGN : 0;
    if (nrecords > room) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: %s (%s) at offset %" PRIu64 ": %u records cannot fit in the %" PRIu64
               " bytes left (size %" PRIu64 ", truncated?)",
               ps->path, what, m->name, m->header_offset, nrecords,
               *off <= ps->size ? ps->size - *off : 0, ps->size);
    }
    m->records = calloc(nrecords ? nrecords : 1, sizeof *m->records);
    if (!m->records)
        return PPS_ENOMEM;
    m->nrecords = nrecords;
    for (uint32_t j = 0; j < nrecords; j++) {
        rc = parse_record(ps, m, j, off);
        if (rc)
            return rc;
    }
    return 0;
}

static int parse(struct kvbin *kv, struct parser *ps)
{
    uint32_t nmodels = 0;
    uint64_t declared = 0;
    int rc = parse_file_header(ps, &nmodels, &declared);
    if (rc)
        return rc;
    uint64_t room = (ps->size - KVBIN_ALIGN) / KVBIN_ALIGN;
    if (nmodels > room) {
        return pps_fail(ps->err, ps->errlen, PPS_ETRUNCATED,
               "%s: file header at offset 0: %u models cannot fit in a file of %" PRIu64 " bytes (truncated?)",
               ps->path, nmodels, ps->size);
    }
    kv->models = calloc(nmodels ? nmodels : 1, sizeof *kv->models);
    if (!kv->models)
        return PPS_ENOMEM;
    uint64_t off = KVBIN_ALIGN;
    for (uint32_t i = 0; i < nmodels; i++) {
        kv->nmodels = i + 1; /* so kvbin_close frees what was parsed */
        rc = parse_model(ps, kv, i, nmodels, &off);
        if (rc)
            return rc;
    }
    if (off != ps->size) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
                        "%s: offset %" PRIu64 ": %" PRIu64 " unexpected bytes after the last model",
                        ps->path, off, ps->size - off);
    }
    if (declared != ps->size) {
        return pps_fail(ps->err, ps->errlen, PPS_ECORRUPT,
               "%s: file header at offset %d: says the file is %" PRIu64 " bytes, it is %" PRIu64,
               ps->path, FH_FILE_SIZE, declared, ps->size);
    }
    return 0;
}

int kvbin_open_buffer(struct kvbin *kv, const void *data, uint64_t len, const char *name,
                      char *err, size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    kv->path = pps_xstrdup(name);
    kv->map = (void *)data;
    kv->map_len = len;
    struct parser ps = {kv->path, data, len, err, errlen};
    int rc = parse(kv, &ps);
    if (rc == PPS_ENOMEM)
        pps_fail(err, errlen, 0, "%s: out of memory while indexing", kv->path);
    if (rc)
        kvbin_close(kv);
    return rc;
}

int kvbin_open(struct kvbin *kv, const char *path, char *err, size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return pps_fail(err, errlen, pps_from_errno(e), "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pps_fail(err, errlen, PPS_EINVAL, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            pps_fail(err, errlen, 0,
                     "%s: cannot map %" PRIu64 " bytes: %s", path, size, strerror(e));
            close(fd);
            return pps_from_errno(e);
        }
    }
    close(fd); /* the mapping keeps the file */
    static const uint8_t empty[1];
    int rc = kvbin_open_buffer(kv, map ? map : empty, size, path, err, errlen);
    if (rc) {
        if (map)
            munmap(map, size);
        return rc;
    }
    kv->owns_map = map != NULL;
    return 0;
}

void kvbin_close(struct kvbin *kv)
{
    if (kv->models)
        for (uint32_t i = 0; i < kv->nmodels; i++)
            free(kv->models[i].records);
    free(kv->models);
    if (kv->owns_map && kv->map)
        munmap(kv->map, kv->map_len);
    free(kv->path);
    memset(kv, 0, sizeof *kv);
}

int kvbin_verify(const struct kvbin_record *rec, char *err, size_t errlen)
{
    uint64_t computed = XXH3_64bits(rec->data, rec->len);
    if (computed != rec->checksum) {
        return pps_fail(err, errlen, PPS_ECORRUPT,
               "record %s at offset %" PRIu64 ": value checksum mismatch (stored %016" PRIx64
               ", computed %016" PRIx64 ")",
               rec->key, rec->header_offset, rec->checksum, computed);
    }
    return 0;
}

/* If key is "<model>-BATCH-<i>" with i in canonical decimal, *i and 1. */
static int batch_index(const char *model, const char *key, uint64_t *index)
{
    size_t n = strlen(model);
    if (strncmp(key, model, n) != 0 || strncmp(key + n, "-BATCH-", 7) != 0)
        return 0;
    const char *d = key + n + 7;
    if (!*d || (d[0] == '0' && d[1]) || strlen(d) > 10)
        return 0;
    uint64_t v = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return 0;
        v = v * 10 + (uint64_t)(*d - '0');
    }
    *index = v;
    return 1;
}

int kvbin_check_model(const struct kvbin *kv, const struct kvbin_model *m, int verify,
                      char *err, size_t errlen)
{
    char meta_key[KVBIN_NAME_MAX + 16];
    snprintf(meta_key, sizeof meta_key, "%s-METADATA", m->name);
    if ((uint64_t)m->nrecords != (uint64_t)m->nbatches + 1) {
        return pps_fail(err, errlen, PPS_ECORRUPT,
               "%s: model %s at offset %" PRIu64 ": has %u records, expected %" PRIu64
               " (%s and %u batches)",
               kv->path, m->name, m->header_offset, m->nrecords, (uint64_t)m->nbatches + 1, meta_key,
               m->nbatches);
    }
    uint64_t sum = 0;
    int have_meta = 0;
    for (uint32_t i = 0; i < m->nrecords; i++) {
        const struct kvbin_record *r = &m->records[i];
        uint64_t bi;
        if (strcmp(r->key, meta_key) == 0) {
            have_meta = 1;
        } else if (batch_index(m->name, r->key, &bi) && bi < m->nbatches) {
            if (r->len > UINT64_MAX - sum) {
                return pps_fail(err, errlen, PPS_ECORRUPT,
                                "%s: model %s: batch sizes overflow", kv->path, m->name);
            }
            sum += r->len;
        } else {
            return pps_fail(err, errlen, PPS_ECORRUPT,
                   "%s: record %u of model %s at offset %" PRIu64 ": unexpected key %s (expected %s or %s-BATCH-0..%" PRId64 ")",
                   kv->path, i, m->name, r->header_offset, r->key, meta_key, m->name,
                   (int64_t)m->nbatches - 1);
        }
    }
    /* keys are unique (checked at open) and the count is nbatches + 1, so
     * METADATA plus nbatches distinct in-range batch keys means all present */
    if (!have_meta) {
        return pps_fail(err, errlen, PPS_ECORRUPT,
                        "%s: model %s at offset %" PRIu64 ": no %s record", kv->path, m->name,
                        m->header_offset, meta_key);
    }
    if (sum != m->total_size) {
        return pps_fail(err, errlen, PPS_ECORRUPT,
               "%s: model %s at offset %" PRIu64 ": batches add up to %" PRIu64 " bytes, header says %" PRIu64,
               kv->path, m->name, m->header_offset, sum, m->total_size);
    }
    if (verify)
        for (uint32_t i = 0; i < m->nrecords; i++) {
            char msg[KVBIN_ERR_LEN];
            int rc = kvbin_verify(&m->records[i], msg, sizeof msg);
            if (rc) {
                return pps_fail(err, errlen, rc, "%s: model %s: %s", kv->path, m->name, msg);
            }
        }
    return 0;
}

const struct kvbin_model *kvbin_find_model(const struct kvbin *kv, const char *name)
{
    for (uint32_t i = 0; i < kv->nmodels; i++)
        if (strcmp(kv->models[i].name, name) == 0)
            return &kv->models[i];
    return NULL;
}

const struct kvbin_record *kvbin_find_record(const struct kvbin_model *m, const char *key)
{
    for (uint32_t i = 0; i < m->nrecords; i++)
        if (strcmp(m->records[i].key, key) == 0)
            return &m->records[i];
    return NULL;
}

/* ---------------------------------------------------------------- writer */

struct kvbin_writer {
    int fd;
    char *path;
    char *tmp_path;
    uint64_t off;             /* bytes written so far (end of file) */
    int err;                  /* first error, sticky */
    uint32_t nmodels;
    uint32_t records_left;    /* of the current model */
    /* the record being written, if any */
    int in_record;
    uint64_t rec_header_off;
    uint64_t rec_len;
    uint64_t rec_written;
    uint8_t rec_header[KVBIN_ALIGN];
    size_t rec_header_len;
    XXH3_state_t *hash;
};

static int write_all(struct kvbin_writer *w, const void *data, uint64_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t k = write(w->fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return w->err = pps_from_errno(errno);
        }
        p += k;
        n -= (uint64_t)k;
        w->off += (uint64_t)k;
    }
    return 0;
}

static int pwrite_all(struct kvbin_writer *w, const void *data, size_t n, uint64_t off)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t k = pwrite(w->fd, p, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return w->err = pps_from_errno(errno);
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

static int write_padding(struct kvbin_writer *w)
{
    static const uint8_t zeros[KVBIN_ALIGN];
    uint64_t pad = align_up(w->off) - w->off;
    return pad ? write_all(w, zeros, pad) : 0;
}

/* Fill a model/record header (name at EH_NAME); the checksum is added by
 * seal_header once every field is final. Returns its length. */
static size_t build_entry_header(uint8_t *h, const char *magic, const char *name, uint64_t size,
                                 uint64_t counts)
{
    size_t n = strlen(name);
    memset(h, 0, KVBIN_ALIGN);
    memcpy(h, magic, 4);
    store_le16(h + EH_NAME_LEN, (uint16_t)n);
    store_le64(h + EH_SIZE, size);
    store_le64(h + EH_COUNTS, counts);
    memcpy(h + EH_NAME, name, n);
    return EH_NAME + n;
}

static void seal_header(uint8_t *h, size_t n, size_t csum_at)
{
    store_le64(h + csum_at, 0);
    store_le64(h + csum_at, header_checksum(h, n, csum_at));
}

int kvbin_writer_open(struct kvbin_writer **out, const char *path)
{
    struct kvbin_writer *w = pps_xcalloc(1, sizeof *w);
    w->path = pps_xstrdup(path);
    size_t n = strlen(path) + 5;
    w->tmp_path = pps_xmalloc(n);
    snprintf(w->tmp_path, n, "%s.tmp", path);
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int rc = pps_from_errno(errno);
        free(w->tmp_path);
        free(w->path);
        free(w);
        return rc;
    }
    w->hash = XXH3_createState();
    PPS_ASSERT(w->hash);
    /* the file header is written at close, when the counts are known */
    static const uint8_t zeros[KVBIN_ALIGN];
    int rc = write_all(w, zeros, KVBIN_ALIGN);
    if (rc) {
        kvbin_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

int kvbin_writer_model(struct kvbin_writer *w, const char *name, uint64_t total_size,
                       uint32_t nbatches, uint32_t nrecords)
{
    if (w->err)
        return w->err;
    if (w->in_record || w->records_left || !kvbin_name_ok(name) || w->nmodels == UINT32_MAX)
        return PPS_EINVAL;
    uint8_t h[KVBIN_ALIGN];
    size_t n = build_entry_header(h, MODEL_MAGIC, name, total_size,
                                  (uint64_t)nbatches | ((uint64_t)nrecords << 32));
    seal_header(h, n, EH_CHECKSUM);
    int rc = write_all(w, h, KVBIN_ALIGN);
    if (rc)
        return rc;
    w->nmodels++;
    w->records_left = nrecords;
    return 0;
}

int kvbin_writer_record_begin(struct kvbin_writer *w, const char *key, uint64_t len)
{
    if (w->err)
        return w->err;
    if (w->in_record || w->records_left == 0 || !kvbin_name_ok(key))
        return PPS_EINVAL;
    w->rec_header_off = w->off;
    w->rec_header_len = build_entry_header(w->rec_header, RECORD_MAGIC, key, len, 0);
    w->rec_len = len;
    w->rec_written = 0;
    XXH3_64bits_reset(w->hash);
    /* placeholder; the value checksum is patched in by record_end */
    int rc = write_all(w, w->rec_header, KVBIN_ALIGN);
    if (rc)
        return rc;
    w->in_record = 1;
    return 0;
}

int kvbin_writer_record_write(struct kvbin_writer *w, const void *data, uint64_t n)
{
    if (w->err)
        return w->err;
    if (!w->in_record || n > w->rec_len - w->rec_written)
        return PPS_EINVAL;
    XXH3_64bits_update(w->hash, data, (size_t)n);
    int rc = write_all(w, data, n);
    if (rc)
        return rc;
    w->rec_written += n;
    return 0;
}

int kvbin_writer_record_end(struct kvbin_writer *w)
{
    if (w->err)
        return w->err;
    if (!w->in_record || w->rec_written != w->rec_len)
        return PPS_EINVAL;
    int rc = write_padding(w);
    if (rc)
        return rc;
    store_le64(w->rec_header + EH_COUNTS, XXH3_64bits_digest(w->hash));
    seal_header(w->rec_header, w->rec_header_len, EH_CHECKSUM);
    rc = pwrite_all(w, w->rec_header, w->rec_header_len, w->rec_header_off);
    if (rc)
        return rc;
    w->in_record = 0;
    w->records_left--;
    return 0;
}

int kvbin_writer_record(struct kvbin_writer *w, const char *key, const void *data, uint64_t len)
{
    int rc = kvbin_writer_record_begin(w, key, len);
    if (!rc)
        rc = kvbin_writer_record_write(w, data, len);
    if (!rc)
        rc = kvbin_writer_record_end(w);
    return rc;
}

static void writer_free(struct kvbin_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    XXH3_freeState(w->hash);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

void kvbin_writer_abort(struct kvbin_writer *w)
{
    if (!w)
        return;
    unlink(w->tmp_path);
    writer_free(w);
}

static int fsync_parent_dir(const char *path)
{
    char *copy = pps_xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return pps_from_errno(errno);
    int rc = fsync(fd) == 0 ? 0 : pps_from_errno(errno);
    close(fd);
    return rc;
}

int kvbin_writer_close(struct kvbin_writer *w)
{
    int rc = w->err;
    if (!rc && (w->in_record || w->records_left))
        rc = PPS_EINVAL; /* a model is missing records: never publish it */
    if (!rc) {
        uint8_t h[KVBIN_FILE_HEADER_SIZE] = {0};
        memcpy(h, FILE_MAGIC, 8);
        store_le16(h + FH_VERSION, KVBIN_VERSION);
        store_le32(h + FH_NMODELS, w->nmodels);
        store_le64(h + FH_FILE_SIZE, w->off);
        seal_header(h, sizeof h, FH_CHECKSUM);
        rc = pwrite_all(w, h, sizeof h, 0);
    }
    if (!rc && fsync(w->fd) != 0)
        rc = pps_from_errno(errno);
    if (!rc) {
        int fd = w->fd;
        w->fd = -1;
        if (close(fd) != 0)
            rc = pps_from_errno(errno);
    }
    if (!rc && rename(w->tmp_path, w->path) != 0)
        rc = pps_from_errno(errno);
    if (!rc)
        rc = fsync_parent_dir(w->path);
    if (rc) {
        kvbin_writer_abort(w);
        return rc;
    }
    writer_free(w);
    return 0;
}
