/* request_list: parse request_list.txt; see request_list.h. */
#include "client/request_list.h"
#include "common/buf.h"
#include "common/err.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES 4096

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Split a line at commas into at most max fields (trimmed). */
static int split(char *line, char **f, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        if (n == max)
            return max + 1;
        f[n++] = trim(p);
        if (!comma)
            return n;
        p = comma + 1;
    }
}

static int parse_row(char *line, struct request_row *r, char *why, size_t whylen)
{
    char *f[4];
    int n = split(line, f, 3);
    if (n != 3) {
        snprintf(why, whylen, "expected 3 fields (model_name, batch_size, send_interval), got %d", n > 3 ? 4 : n);
        return PPS_EINVAL;
    }
    if (!wire_name_valid(f[0], REQUEST_MODEL_MAX)) {
        snprintf(why, whylen, "bad model name '%.64s' (1..255 printable bytes, no spaces)", f[0]);
        return PPS_EINVAL;
    }
    snprintf(r->model, sizeof r->model, "%s", f[0]);
    char *end = NULL;
    errno = 0;
    long b = strtol(f[1], &end, 10);
    if (errno || end == f[1] || *end || b < 1 || b > (1 << 20)) {
        snprintf(why, whylen, "bad batch_size '%.32s' (an integer 1..1048576)", f[1]);
        return PPS_EINVAL;
    }
    r->batch = (int)b;
    errno = 0;
    double iv = strtod(f[2], &end);
    if (errno || end == f[2] || *end || !(iv >= 0) || iv > 86400) {
        snprintf(why, whylen, "bad send_interval '%.32s' (seconds, 0..86400)", f[2]);
        return PPS_EINVAL;
    }
    r->interval_s = iv;
    return 0;
}

int request_list_parse(const char *text, size_t len, const char *name, struct request_list *out, char *err,
                       size_t errlen)
{
    memset(out, 0, sizeof *out);
    int cap = 0, lineno = 0, header_seen = 0;
    size_t pos = 0;
    char line[LINE_MAX_BYTES + 1], why[256];
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        lineno++;
        if (n > LINE_MAX_BYTES || memchr(text + pos, '\0', n)) {
            request_list_free(out);
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: %s", name, lineno,
                            n > LINE_MAX_BYTES ? "line too long" : "NUL byte in the line");
        }
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos += n + (nl ? 1 : 0);
        char *l = trim(line);
        if (!*l || *l == '#')
            continue;
        if (!header_seen) {
            header_seen = 1;
            struct request_row probe;
            char copy[LINE_MAX_BYTES + 1];
            snprintf(copy, sizeof copy, "%s", l);
            if (parse_row(copy, &probe, why, sizeof why) == 0) {
                request_list_free(out);
                return pps_fail(err, errlen, PPS_EINVAL,
                                "%s:%d: the first line must be the header 'model_name, batch_size, "
                                "send_interval', not a request",
                                name, lineno);
            }
            continue;
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 64;
            struct request_row *r = realloc(out->rows, (size_t)cap * sizeof *r);
            if (!r) {
                request_list_free(out);
                return pps_fail(err, errlen, PPS_ENOMEM, "%s: out of memory", name);
            }
            out->rows = r;
        }
        if (parse_row(l, &out->rows[out->n], why, sizeof why)) {
            request_list_free(out);
            return pps_fail(err, errlen, PPS_EINVAL, "%s:%d: %s", name, lineno, why);
        }
        out->n++;
    }
    if (!header_seen)
        return pps_fail(err, errlen, PPS_EINVAL, "%s: empty (no header line)", name);
    if (out->n == 0) {
        request_list_free(out);
        return pps_fail(err, errlen, PPS_EINVAL, "%s: no requests after the header", name);
    }
    return 0;
}

int request_list_read(const char *path, struct request_list *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return pps_fail(err, errlen, PPS_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > (size_t)1 << 30) {
                free(buf);
                fclose(f);
                return pps_fail(err, errlen, PPS_ETOOBIG, "%s: over 1 GiB", path);
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return pps_fail(err, errlen, PPS_ENOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return pps_fail(err, errlen, PPS_EIO, "%s: read error", path);
    }
    int rc = request_list_parse(buf, len, path, out, err, errlen);
    free(buf);
    return rc;
}

void request_list_free(struct request_list *l)
{
    free(l->rows);
    l->rows = NULL;
    l->n = 0;
}
