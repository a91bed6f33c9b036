/* npy: see npy.h.
 *
 * File layout: "\x93NUMPY", u8 major, u8 minor, header length (u16 for 1.x,
 * u32 for 2.x/3.x), then a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 224, 224), }
 * padded with spaces and a final '\n' so the data starts on a multiple of 64,
 * then the raw elements. The dict is parsed by a small tokenizer (not by
 * searching for substrings): a key inside a string value cannot fool it. */
#include "formats/npy.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_HEADER (1u << 20)

size_t npy_dtype_size(enum npy_dtype t)
{
    return t == NPY_F32 ? 4 : t == NPY_I64 ? 8 : 0;
}

const char *npy_dtype_descr(enum npy_dtype t)
{
    return t == NPY_F32 ? "<f4" : t == NPY_I64 ? "<i8" : "?";
}

/* ---- the header dict ---------------------------------------------------- */

struct lexer {
    const char *p, *end;
};

static void skip_ws(struct lexer *lx)
{
    while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
        lx->p++;
}

static int expect(struct lexer *lx, char c)
{
    skip_ws(lx);
    if (lx->p < lx->end && *lx->p == c) {
        lx->p++;
        return 1;
    }
    return 0;
}

/* A quoted string into out (room for cap bytes); 0 on failure. */
static int lex_string(struct lexer *lx, char *out, size_t cap)
{
    skip_ws(lx);
    if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"'))
        return 0;
    char q = *lx->p++;
    size_t n = 0;
    while (lx->p < lx->end && *lx->p != q) {
        if (n + 1 >= cap)
            return 0;
        out[n++] = *lx->p++;
    }
    if (lx->p >= lx->end)
        return 0;
    lx->p++;
    out[n] = 0;
    return 1;
}

static int lex_word(struct lexer *lx, const char *w)
{
    skip_ws(lx);
    size_t n = strlen(w);
    if ((size_t)(lx->end - lx->p) >= n && memcmp(lx->p, w, n) == 0) {
        lx->p += n;
        return 1;
    }
    return 0;
}

static int lex_int(struct lexer *lx, int64_t *v)
{
    skip_ws(lx);
    int64_t x = 0;
    int digits = 0;
    while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
        if (x > (INT64_MAX - 9) / 10)
            return 0;
        x = x * 10 + (*lx->p - '0');
        lx->p++;
        digits++;
    }
    if (lx->p < lx->end && *lx->p == 'L') /* Python 2 longs */
        lx->p++;
    *v = x;
    return digits > 0;
}

static int parse_shape(struct lexer *lx, struct npy_array *a)
{
    if (!expect(lx, '('))
        return 0;
    a->ndims = 0;
    for (;;) {
        if (expect(lx, ')'))
            return 1;
        int64_t v;
        if (a->ndims >= NPY_MAX_DIMS || !lex_int(lx, &v))
            return 0;
        a->dims[a->ndims++] = v;
        if (expect(lx, ','))
            continue;
        return expect(lx, ')');
    }
}

static int parse_header(const char *text, size_t len, struct npy_array *a, char *err,
                        size_t errlen)
{
    struct lexer lx = {text, text + len};
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
    char descr[16] = "";
    if (!expect(&lx, '{'))
        return pps_fail(err, errlen, PPS_ECORRUPT, "npy: header is not a dict");
    for (;;) {
        if (expect(&lx, '}'))
            break;
        char key[32];
        if (!lex_string(&lx, key, sizeof key) || !expect(&lx, ':'))
            return pps_fail(err, errlen, PPS_ECORRUPT, "npy: malformed header dict");
        if (strcmp(key, "descr") == 0) {
            if (!lex_string(&lx, descr, sizeof descr))
                return pps_fail(err, errlen, PPS_EUNSUPPORTED,
                                "npy: unsupported descr (structured dtype?)");
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (lex_word(&lx, "True"))
                fortran = 1;
            else if (!lex_word(&lx, "False"))
                return pps_fail(err, errlen, PPS_ECORRUPT, "npy: bad fortran_order");
            have_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (!parse_shape(&lx, a))
                return pps_fail(err, errlen, PPS_ECORRUPT, "npy: bad shape (at most %d dims)",
                            NPY_MAX_DIMS);
            have_shape = 1;
        } else {
            return pps_fail(err, errlen, PPS_ECORRUPT, "npy: unknown header key '%s'", key);
        }
        if (expect(&lx, ','))
            continue;
        if (!expect(&lx, '}'))
            return pps_fail(err, errlen, PPS_ECORRUPT, "npy: malformed header dict");
        break;
    }
    if (!have_descr || !have_order || !have_shape)
        return pps_fail(err, errlen, PPS_ECORRUPT,
                        "npy: header lacks descr, fortran_order or shape");
    if (fortran)
        return pps_fail(err, errlen, PPS_EUNSUPPORTED,
                        "npy: Fortran-order arrays are not supported");
    if (strcmp(descr, "<f4") == 0)
        a->dtype = NPY_F32;
    else if (strcmp(descr, "<i8") == 0)
        a->dtype = NPY_I64;
    else
        return pps_fail(err, errlen, PPS_EUNSUPPORTED,
                    "npy: dtype '%s' not supported (float32 '<f4' or int64 '<i8')", descr);
    uint64_t elems = 1;
    for (int i = 0; i < a->ndims; i++) {
        if (a->dims[i] < 0 || (a->dims[i] > 0 && elems > NPY_MAX_BYTES / (uint64_t)a->dims[i]))
            return pps_fail(err, errlen, PPS_ETOOBIG, "npy: shape too large");
        elems *= (uint64_t)a->dims[i];
    }
    if (elems > NPY_MAX_BYTES / npy_dtype_size(a->dtype))
        return pps_fail(err, errlen, PPS_ETOOBIG, "npy: data larger than %llu bytes",
                    (unsigned long long)NPY_MAX_BYTES);
    a->nbytes = elems * npy_dtype_size(a->dtype);
    return 0;
}

/* Header fields of an image: where the dict is and where data starts. */
static int parse_preamble(const uint8_t *b, size_t len, size_t *hstart, size_t *hlen, char *err,
                          size_t errlen)
{
    if (len < 10 || memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return pps_fail(err, errlen, PPS_ECORRUPT, "not a .npy file (bad magic)");
    uint8_t major = b[6];
    if (major == 1) {
        *hlen = (size_t)b[8] | ((size_t)b[9] << 8);
        *hstart = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12)
            return pps_fail(err, errlen, PPS_ETRUNCATED, "npy: truncated header");
        *hlen = (size_t)b[8] | ((size_t)b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
        *hstart = 12;
    } else {
        return pps_fail(err, errlen, PPS_EUNSUPPORTED,
                        "npy: format version %u not supported", major);
    }
    if (*hlen > NPY_MAX_HEADER)
        return pps_fail(err, errlen, PPS_ETOOBIG, "npy: header too long");
    if (*hlen > len - *hstart)
        return pps_fail(err, errlen, PPS_ETRUNCATED, "npy: truncated header");
    return 0;
}

int npy_parse(const void *buf, size_t len, struct npy_array *a, char *err, size_t errlen)
{
    const uint8_t *b = buf;
    memset(a, 0, sizeof *a);
    size_t hstart = 0, hlen = 0; /* set by parse_preamble; zeroed for -O2 -Wmaybe-uninitialized */
    int rc = parse_preamble(b, len, &hstart, &hlen, err, errlen);
    if (rc)
        return rc;
    rc = parse_header((const char *)b + hstart, hlen, a, err, errlen);
    if (rc)
        return rc;
    size_t data_off = hstart + hlen;
    if (len - data_off < a->nbytes)
        return pps_fail(err, errlen, PPS_ETRUNCATED, "npy: %zu data bytes, shape needs %" PRIu64,
                    len - data_off, a->nbytes);
    a->data = malloc(a->nbytes ? a->nbytes : 1);
    if (!a->data)
        return pps_fail(err, errlen, PPS_ENOMEM,
                        "npy: out of memory for %" PRIu64 " bytes", a->nbytes);
    memcpy(a->data, b + data_off, a->nbytes);
    return 0;
}

int npy_read_file(const char *path, struct npy_array *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pps_fail(err, errlen, PPS_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pps_fail(err, errlen, PPS_EIO, "%s: not a regular file", path);
    }
    /* Read the preamble and header first so the data size is known (and
     * bounded) before the data buffer is allocated. */
    uint8_t pre[12];
    size_t plen = st.st_size < 12 ? (size_t)st.st_size : 12;
    int rc = 0;
    char *hdr = NULL;
    if (pread(fd, pre, plen, 0) != (ssize_t)plen) {
        rc = pps_fail(err, errlen, PPS_EIO, "%s: read failed", path);
        goto out;
    }
    size_t hstart = 0, hlen = 0; /* set by parse_preamble; zeroed for -O2 -Wmaybe-uninitialized */
    if (plen < 10 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        rc = pps_fail(err, errlen, PPS_ECORRUPT, "%s: not a .npy file (bad magic)", path);
        goto out;
    }
    if ((rc = parse_preamble(pre, (size_t)st.st_size, &hstart, &hlen, err, errlen)))
        goto out;
    hdr = malloc(hlen + 1);
    if (!hdr) {
        rc = PPS_ENOMEM;
        goto out;
    }
    if (pread(fd, hdr, hlen, (off_t)hstart) != (ssize_t)hlen) {
        rc = pps_fail(err, errlen, PPS_EIO, "%s: read failed", path);
        goto out;
    }
    if ((rc = parse_header(hdr, hlen, a, err, errlen)))
        goto out;
    uint64_t data_off = hstart + hlen;
    if ((uint64_t)st.st_size - data_off < a->nbytes) {
        rc = pps_fail(err, errlen, PPS_ETRUNCATED,
                      "%s: %" PRIu64 " data bytes, shape needs %" PRIu64, path,
                      (uint64_t)st.st_size - data_off, a->nbytes);
        goto out;
    }
    a->data = malloc(a->nbytes ? a->nbytes : 1);
    if (!a->data) {
        rc = pps_fail(err, errlen, PPS_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (uint64_t done = 0; done < a->nbytes;) {
        ssize_t r = pread(fd, (char *)a->data + done, a->nbytes - done, (off_t)(data_off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = pps_fail(err, errlen, PPS_EIO, "%s: read failed", path);
            goto out;
        }
        done += (uint64_t)r;
    }
out:
    free(hdr);
    close(fd);
    if (rc)
        npy_free(a);
    return rc;
}

int npy_write_file(const char *path, enum npy_dtype dtype, int ndims, const int64_t *dims,
                   const void *data, uint64_t nbytes)
{
    if (npy_dtype_size(dtype) == 0 || ndims < 0 || ndims > NPY_MAX_DIMS)
        return PPS_EINVAL;
    uint64_t elems = 1;
    for (int i = 0; i < ndims; i++) {
        if (dims[i] < 0)
            return PPS_EINVAL;
        elems *= (uint64_t)dims[i];
    }
    if (elems * npy_dtype_size(dtype) != nbytes)
        return PPS_EINVAL;
    char shape[NPY_MAX_DIMS * 24 + 8];
    size_t n = 0;
    n += (size_t)snprintf(shape + n, sizeof shape - n, "(");
    for (int i = 0; i < ndims; i++)
        n += (size_t)snprintf(shape + n, sizeof shape - n, "%" PRId64 "%s", dims[i],
                              ndims == 1 ? "," : (i + 1 < ndims ? ", " : ""));
    snprintf(shape + n, sizeof shape - n, ")");
    char dict[512];
    int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                      npy_dtype_descr(dtype), shape);
    /* Pad so 10 + header length is a multiple of 64, the last byte '\n'. */
    size_t total = (size_t)(10 + dl + 1 + 63) / 64 * 64;
    size_t hlen = total - 10;
    uint8_t pre[10 + 512 + 64];
    memcpy(pre, NPY_MAGIC, NPY_MAGIC_LEN);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(hlen & 0xff);
    pre[9] = (uint8_t)(hlen >> 8);
    memcpy(pre + 10, dict, (size_t)dl);
    memset(pre + 10 + dl, ' ', hlen - (size_t)dl - 1);
    pre[total - 1] = '\n';

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return PPS_EINVAL;
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return pps_from_errno(errno);
    int ok = fwrite(pre, 1, total, f) == total && (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int rc = pps_from_errno(errno ? errno : EIO);
        unlink(tmp);
        return rc ? rc : PPS_EIO;
    }
    return 0;
}

void npy_free(struct npy_array *a)
{
    free(a->data);
    a->data = NULL;
}
