/* deploy_plan: parsers of storage_list.txt and model_distribution_list.txt,
 * and the slicing rule.
 *
 * Both are comma-separated text with a header line. Parsing is strict
 * (unknown shapes are errors, never guesses) because a mistake here puts a
 * model on the wrong storage or leaves it out, which nobody notices until a
 * cache cannot find it. */
#include "deploy/deploy_plan.h"
#include "common/err.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_FIELDS (DEPLOY_MAX_STORAGES + 2)

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* A line split into trimmed comma-separated fields, as NUL-terminated
 * strings in buf. */
struct line {
    char buf[4096];
    int nfields;
    char *fields[MAX_FIELDS];
};

/* Walks text line by line. Returns 1 with the next non-blank, non-comment
 * line in *start, *n and its 1-based number in *lineno, 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, int *lineno, const char **start, size_t *n)
{
    while (*pos < len) {
        const char *s = text + *pos;
        const char *nl = memchr(s, '\n', len - *pos);
        size_t l = nl ? (size_t)(nl - s) : len - *pos;
        *pos += l + (nl ? 1 : 0);
        (*lineno)++;
        while (l > 0 && is_space(s[l - 1]))
            l--;
        while (l > 0 && is_space(*s)) {
            s++;
            l--;
        }
        if (l == 0 || *s == '#')
            continue;
        *start = s;
        *n = l;
        return 1;
    }
    return 0;
}

/* 0, or PPS_EINVAL with a message if the line is too long or a field is
 * empty. */
static int split(const char *s, size_t n, struct line *ln, const char *name, int lineno, char *err, size_t errlen)
{
    if (n >= sizeof ln->buf) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: line longer than %zu bytes", name, lineno, sizeof ln->buf - 1);
    }
    memcpy(ln->buf, s, n);
    ln->buf[n] = '\0';
    ln->nfields = 0;
    char *p = ln->buf;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        char *f = p;
        while (is_space(*f))
            f++;
        char *e = f + strlen(f);
        while (e > f && is_space(e[-1]))
            *--e = '\0';
        if (ln->nfields == MAX_FIELDS) {
            return pps_fail(err, errlen, PPS_EINVAL,
                            "%s:%d: more than %d fields", name, lineno, MAX_FIELDS);
        }
        ln->fields[ln->nfields++] = f;
        if (!comma)
            break;
        p = comma + 1;
    }
    for (int i = 0; i < ln->nfields; i++)
        if (!*ln->fields[i]) {
            return pps_fail(err, errlen, PPS_EINVAL,
                            "%s:%d: field %d is empty", name, lineno, i + 1);
        }
    return 0;
}

/* Decimal without sign or leading junk, at most max. */
static int parse_uint(const char *s, uint32_t max, uint32_t *out)
{
    if (!*s || strlen(s) > 10)
        return PPS_EINVAL;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return PPS_EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return PPS_ERANGE;
    *out = (uint32_t)v;
    return 0;
}

static int has_nul(const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    const char *z = memchr(text, '\0', len);
    if (!z)
        return 0;
    int lineno = 1;
    for (const char *p = text; p < z; p++)
        lineno += *p == '\n';
    pps_fail(err, errlen, 0, "%s:%d: NUL byte in a text file", name, lineno);
    return 1;
}

/* One "address, port" line into ep. */
static int parse_endpoint(const struct line *ln, const char *name, int lineno, struct deploy_endpoint *ep,
                          char *err, size_t errlen)
{
    if (ln->nfields != 2) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: expected \"address, port\", found %d field%s", name, lineno,
                        ln->nfields, ln->nfields == 1 ? "" : "s");
    }
    const char *addr = ln->fields[0];
    if (strlen(addr) >= sizeof ep->addr || strpbrk(addr, " \t")) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: bad address \"%s\" (at most %zu bytes, no spaces)", name, lineno,
                        addr, sizeof ep->addr - 1);
    }
    uint32_t port;
    if (parse_uint(ln->fields[1], 65535, &port) != 0 || port == 0) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: bad port \"%s\" (expected 1..65535)", name, lineno, ln->fields[1]);
    }
    snprintf(ep->addr, sizeof ep->addr, "%s", addr);
    ep->port = (uint16_t)port;
    ep->line = lineno;
    return 0;
}

int deploy_parse_storage_list(const char *text, size_t len, const char *name,
                              struct deploy_storage_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (has_nul(text, len, name, err, errlen))
        return PPS_EINVAL;
    size_t pos = 0;
    int lineno = 0, ndata = 0, rc;
    const char *s;
    size_t n;
    struct line *ln = pps_xmalloc(sizeof *ln);
    while (next_line(text, len, &pos, &lineno, &s, &n)) {
        char scratch[8];
        struct deploy_endpoint ep;
        rc = split(s, n, ln, name, lineno, err, errlen);
        if (ndata == 0 && lineno == 1) {
            /* the header: anything but a valid data line */
            if (rc == 0 && parse_endpoint(ln, name, lineno, &ep, scratch, sizeof scratch) == 0) {
                pps_fail(err, errlen, 0,
                       "%s:1: the first line is a header (e.g. \"address, port\") but this one is data; "
                       "add a header line above it",
                       name);
                rc = PPS_EINVAL;
                goto out;
            }
            continue;
        }
        if (rc)
            goto out;
        rc = parse_endpoint(ln, name, lineno, &ep, err, errlen);
        if (rc)
            goto out;
        if (ndata == 0) {
            out->meta = ep;
        } else {
            if (out->nstorages == DEPLOY_MAX_STORAGES) {
                rc = pps_fail(err, errlen, PPS_EINVAL,
                              "%s:%d: more than %d storages", name, lineno, DEPLOY_MAX_STORAGES);
                goto out;
            }
            if (strcmp(out->meta.addr, ep.addr) == 0 && out->meta.port == ep.port) {
                /* one daemon cannot be both: the storage PUTs would reach the
                 * metadata storage and fail on its smaller value limit */
                rc = pps_fail(err, errlen, PPS_EINVAL,
                              "%s:%d: %s:%u is the metadata storage (line %d); a storage must be "
                              "a storage daemon at another address or port",
                              name, lineno, ep.addr, ep.port, out->meta.line);
                goto out;
            }
            for (uint32_t i = 0; i < out->nstorages; i++)
                if (strcmp(out->storages[i].addr, ep.addr) == 0 && out->storages[i].port == ep.port) {
                    rc = pps_fail(err, errlen, PPS_EINVAL,
                                  "%s:%d: storage %s:%u is already listed at line %d", name, lineno,
                                  ep.addr, ep.port, out->storages[i].line);
                    goto out;
                }
            out->storages[out->nstorages++] = ep;
        }
        ndata++;
    }
    if (lineno == 0) {
        rc = pps_fail(err, errlen, PPS_EINVAL,
                      "%s: empty file (expected a header line, then the metadata storage's \"address, port\")",
                      name);
    } else if (ndata == 0) {
        rc = pps_fail(err, errlen, PPS_EINVAL,
                      "%s:%d: no metadata storage listed (the first line after the header)", name,
                      lineno);
    } else {
        rc = 0;
    }
out:
    free(ln);
    return rc;
}

void deploy_dist_list_free(struct deploy_dist_list *dl)
{
    free(dl->models);
    memset(dl, 0, sizeof *dl);
}

static int parse_dist_entry(const struct line *ln, const char *name, int lineno, uint32_t nstorages,
                            struct deploy_dist_entry *e, char *err, size_t errlen)
{
    if (ln->nfields < 2) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: expected \"model, storage[, storage ...]\"", name, lineno);
    }
    if (!kvbin_name_ok(ln->fields[0])) {
        return pps_fail(err, errlen, PPS_EINVAL,
                        "%s:%d: bad model name \"%s\" (1..%d printable ASCII bytes, no spaces)",
                        name, lineno, ln->fields[0], KVBIN_NAME_MAX);
    }
    memset(e, 0, sizeof *e);
    snprintf(e->model, sizeof e->model, "%s", ln->fields[0]);
    e->line = lineno;
    for (int i = 1; i < ln->nfields; i++) {
        uint32_t idx;
        int rc = parse_uint(ln->fields[i], UINT32_MAX, &idx);
        if (rc) {
            return pps_fail(err, errlen, PPS_EINVAL,
                            "%s:%d: storage index \"%s\" is not a non-negative integer", name,
                            lineno, ln->fields[i]);
        }
        if (idx >= nstorages && nstorages == 0)
            return pps_fail(err, errlen, PPS_ERANGE,
                            "%s:%d: storage index %u out of range: the storage list has no storages", name,
                            lineno, idx);
        if (idx >= nstorages)
            return pps_fail(err, errlen, PPS_ERANGE,
                            "%s:%d: storage index %u out of range: the storage list has %u storage%s (0..%u)",
                            name, lineno, idx, nstorages, nstorages == 1 ? "" : "s", nstorages - 1);
        for (uint32_t j = 0; j < e->nstorages; j++)
            if (e->storages[j] == idx) {
                return pps_fail(err, errlen, PPS_EINVAL,
                                "%s:%d: storage index %u listed twice for model %s", name, lineno,
                                idx, e->model);
            }
        e->storages[e->nstorages++] = idx; /* split() bounds the field count */
    }
    return 0;
}

int deploy_parse_dist_list(const char *text, size_t len, const char *name, uint32_t nstorages,
                           struct deploy_dist_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (has_nul(text, len, name, err, errlen))
        return PPS_EINVAL;
    size_t pos = 0, cap = 0;
    int lineno = 0, rc = 0;
    const char *s;
    size_t n;
    struct line *ln = pps_xmalloc(sizeof *ln);
    while (next_line(text, len, &pos, &lineno, &s, &n)) {
        struct deploy_dist_entry e;
        rc = split(s, n, ln, name, lineno, err, errlen);
        if (lineno == 1) {
            char scratch[8];
            /* a header that parses as a line of data (any in-range indices) */
            if (rc == 0 && parse_dist_entry(ln, name, lineno, UINT32_MAX, &e, scratch, sizeof scratch) == 0) {
                pps_fail(err, errlen, 0,
                       "%s:1: the first line is a header (e.g. \"model, storages\") but this one is data; "
                       "add a header line above it",
                       name);
                rc = PPS_EINVAL;
                goto out;
            }
            rc = 0;
            continue;
        }
        if (rc)
            goto out;
        rc = parse_dist_entry(ln, name, lineno, nstorages, &e, err, errlen);
        if (rc)
            goto out;
        for (uint32_t i = 0; i < out->nmodels; i++)
            if (strcmp(out->models[i].model, e.model) == 0) {
                rc = pps_fail(err, errlen, PPS_EINVAL,
                              "%s:%d: model %s is already listed at line %d", name, lineno, e.model,
                              out->models[i].line);
                goto out;
            }
        if (out->nmodels == cap) {
            cap = cap ? cap * 2 : 16;
            out->models = pps_xrealloc(out->models, cap * sizeof *out->models);
        }
        out->models[out->nmodels++] = e;
    }
    if (lineno == 0) {
        rc = pps_fail(err, errlen, PPS_EINVAL,
                      "%s: empty file (expected a header line, then \"model, storage[, ...]\" lines)",
                      name);
    }
out:
    free(ln);
    if (rc)
        deploy_dist_list_free(out);
    return rc;
}

int deploy_read_list_file(const char *path, char **text, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return pps_fail(err, errlen, pps_from_errno(e), "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return pps_fail(err, errlen, PPS_EINVAL, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > DEPLOY_LIST_MAX_BYTES) {
        fclose(f);
        return pps_fail(err, errlen, PPS_ETOOBIG,
                        "%s: %lld bytes, more than the %u a list may have", path,
                        (long long)st.st_size, DEPLOY_LIST_MAX_BYTES);
    }
    size_t n = (size_t)st.st_size;
    char *buf = pps_xmalloc(n + 1);
    size_t got = fread(buf, 1, n, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || got != n) {
        free(buf);
        return pps_fail(err, errlen, PPS_EIO, "%s: read error", path);
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

uint32_t deploy_slice_plan(uint64_t len, uint32_t nstorages, uint64_t *slice_size)
{
    PPS_ASSERT(nstorages > 0);
    if (len == 0) {
        *slice_size = 0;
        return 1;
    }
    uint64_t s = len / nstorages + (len % nstorages != 0);
    s = (s + KVBIN_ALIGN - 1) / KVBIN_ALIGN * KVBIN_ALIGN;
    *slice_size = s;
    return (uint32_t)(len / s + (len % s != 0));
}

void deploy_generation_key(const char *key, uint64_t generation, char *out, unsigned long outlen)
{
    snprintf(out, outlen, "%s@%" PRIu64, key, generation);
}
