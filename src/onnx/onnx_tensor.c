/* onnx_tensor: TensorProto -> importer constant (see onnx_tensor.h). */
#include "onnx/onnx_tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

#define MAX_TENSOR_ELEMS (1ull << 40) /* as graph_validate */

static void mappings_add(struct onnx_mappings *maps, void *addr, size_t len)
{
    maps->v = pps_xrealloc(maps->v, (unsigned long)(maps->n + 1) * sizeof *maps->v);
    maps->v[maps->n].addr = addr;
    maps->v[maps->n].len = len;
    maps->n++;
}

void onnx_mappings_free(struct onnx_mappings *maps)
{
    for (int i = 0; i < maps->n; i++) munmap(maps->v[i].addr, maps->v[i].len);
    free(maps->v);
    maps->v = NULL;
    maps->n = 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s) return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* The bytes of an external tensor, mapped from its file inside base_dir. */
static int load_external(const Onnx__TensorProto *t, const char *tname, uint64_t want, const char *base_dir,
                         struct onnx_mappings *maps, const void **data, char *err, size_t errlen)
{
    const char *location = NULL;
    uint64_t offset = 0, length = want;
    int has_length = 0;
    for (size_t i = 0; i < t->n_external_data; i++) {
        const Onnx__StringStringEntryProto *e = t->external_data[i];
        if (!e->key) continue;
        if (strcmp(e->key, "location") == 0) location = e->value;
        else if (strcmp(e->key, "offset") == 0 && parse_u64(e->value, &offset))
            return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': bad external data offset '%s'", tname, e->value);
        else if (strcmp(e->key, "length") == 0) {
            if (parse_u64(e->value, &length))
                return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': bad external data length '%s'", tname, e->value);
            has_length = 1;
        }
    }
    if (!base_dir)
        return pps_fail(err, errlen, PPS_EUNSUPPORTED, "tensor '%s' has external data, but the model was given without a folder", tname);
    if (!location || !*location)
        return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': external data without a location", tname);
    if (location[0] == '/' || strstr(location, "..") || strlen(location) > 1024)
        return pps_fail(err, errlen, PPS_EINVAL,
                     "tensor '%s': external data location '%s' must be a relative path inside the model's folder",
                     tname, location);
    if (has_length && length != want)
        return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': external data length %llu, its dims need %llu bytes", tname,
                     (unsigned long long)length, (unsigned long long)want);
    char path[PATH_MAX], real_dir[PATH_MAX], real_file[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", base_dir, location) >= sizeof path)
        return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': external data path too long", tname);
    if (!realpath(base_dir, real_dir) || !realpath(path, real_file))
        return pps_fail(err, errlen, PPS_ENOTFOUND, "tensor '%s': external data file '%s': %s", tname, path, strerror(errno));
    size_t dl = strlen(real_dir);
    if (strncmp(real_file, real_dir, dl) != 0 || (real_file[dl] != '/' && strcmp(real_dir, "/") != 0))
        return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': external data file '%s' is outside the model's folder %s",
                     tname, location, real_dir);
    int fd = open(real_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pps_fail(err, errlen, PPS_EIO, "tensor '%s': cannot open %s: %s", tname, real_file, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': %s is not a regular file", tname, real_file);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (offset > size || want > size - offset) {
        close(fd);
        return pps_fail(err, errlen, PPS_ETRUNCATED, "tensor '%s': external data [%llu, +%llu) lies beyond the end of %s (%llu bytes)",
                     tname, (unsigned long long)offset, (unsigned long long)want, location,
                     (unsigned long long)size);
    }
    if (want == 0) {
        close(fd);
        *data = "";
        return 0;
    }
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t start = offset / page * page;
    size_t len = (size_t)(offset - start + want);
    void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, (off_t)start);
    close(fd);
    if (p == MAP_FAILED) return pps_fail(err, errlen, PPS_EIO, "tensor '%s': cannot map %s: %s", tname, location, strerror(errno));
    mappings_add(maps, p, len);
    *data = (const char *)p + (offset - start);
    return 0;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24);
    } else if (exp == 31) {
        f = man ? NAN : INFINITY;
    } else {
        f = ldexpf((float)(man | 1024), (int)exp - 25);
    }
    return sign ? -f : f;
}

int onnx_tensor_load(const Onnx__TensorProto *t, const char *tname, const char *base_dir,
                     struct onnx_const_pool *pool, struct onnx_mappings *maps, struct onnx_const **out, char *err,
                     size_t errlen)
{
    if (t->n_dims > GRAPH_MAX_DIMS)
        return pps_fail(err, errlen, PPS_EUNSUPPORTED, "tensor '%s' has rank %zu (at most %d)", tname, t->n_dims, GRAPH_MAX_DIMS);
    int64_t dims[GRAPH_MAX_DIMS];
    uint64_t n = 1;
    for (size_t i = 0; i < t->n_dims; i++) {
        dims[i] = t->dims[i];
        if (dims[i] < 0 || (uint64_t)dims[i] > MAX_TENSOR_ELEMS)
            return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s' has dimension %lld", tname, (long long)dims[i]);
        n *= (uint64_t)dims[i];
        if (n > MAX_TENSOR_ELEMS)
            return pps_fail(err, errlen, PPS_ETOOBIG, "tensor '%s' has over 2^40 elements", tname);
    }
    int nd = (int)t->n_dims;
    int dt = t->has_data_type ? t->data_type : 0;
    size_t esize;
    switch (dt) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32: esize = 4; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: esize = 8; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16: case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT16: case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: esize = 2; break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: esize = 1; break;
    default:
        return pps_fail(err, errlen, PPS_EUNSUPPORTED,
                     "tensor '%s' has data type %d (float, float16, bfloat16, double and integer/bool types are read)",
                     tname, dt);
    }
    const void *raw = NULL;
    if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        int rc = load_external(t, tname, n * esize, base_dir, maps, &raw, err, errlen);
        if (rc) return rc;
    } else if (t->has_raw_data) {
        if ((uint64_t)t->raw_data.len != n * esize)
            return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s': raw_data has %zu bytes, its dims need %llu", tname,
                         t->raw_data.len, (unsigned long long)(n * esize));
        raw = n ? t->raw_data.data : (const void *)"";
    }
    /* Typed fields: the count must match exactly. */
    size_t have = 0;
    const void *typed = NULL;
    if (!raw) {
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: have = t->n_float_data; typed = t->float_data; break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: have = t->n_double_data; typed = t->double_data; break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: have = t->n_int64_data; typed = t->int64_data; break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32:
            have = t->n_uint64_data; typed = t->uint64_data; break;
        default: have = t->n_int32_data; typed = t->int32_data; break;
        }
        if (have != n)
            return pps_fail(err, errlen, PPS_EINVAL, "tensor '%s' holds %zu values, its dims need %llu", tname, have,
                         (unsigned long long)n);
    }
    /* No conversion needed: view the data where it lies. */
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
        *out = onnx_const_view(pool, ONNX_CONST_F32, nd, dims, raw ? raw : typed);
        return 0;
    }
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) {
        *out = onnx_const_view(pool, ONNX_CONST_I64, nd, dims, raw ? raw : typed);
        return 0;
    }
    int to_float = dt == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE || dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ||
                   dt == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16;
    struct onnx_const *c = onnx_const_new(pool, to_float ? ONNX_CONST_F32 : ONNX_CONST_I64, 0, NULL, NULL, 0);
    /* allocate directly: the element count was bounded by the data present */
    free(c->owned);
    c->ndims = nd;
    for (int i = 0; i < nd; i++) c->dims[i] = dims[i];
    c->n = n;
    c->owned = pps_xcalloc(n ? n : 1, 8);
    c->data = c->owned;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *rb = raw ? (const unsigned char *)raw + i * esize : NULL;
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: {
            double d;
            if (rb) memcpy(&d, rb, 8);
            else d = ((const double *)typed)[i];
            onnx_const_set(c, i, d);
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16: case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: {
            uint16_t h;
            if (rb) memcpy(&h, rb, 2);
            else h = (uint16_t)((const int32_t *)typed)[i];
            float f;
            if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16) {
                f = half_to_float(h);
            } else {
                uint32_t bits = (uint32_t)h << 16;
                memcpy(&f, &bits, 4);
            }
            onnx_const_set(c, i, f);
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32: {
            uint64_t u = 0;
            if (rb) memcpy(&u, rb, esize);
            else u = ((const uint64_t *)typed)[i];
            onnx_const_seti(c, i, (int64_t)u);
            break;
        }
        default: {
            int64_t v;
            if (rb) {
                switch (dt) {
                case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: { int32_t x; memcpy(&x, rb, 4); v = x; break; }
                case ONNX__TENSOR_PROTO__DATA_TYPE__INT16: { int16_t x; memcpy(&x, rb, 2); v = x; break; }
                case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: { uint16_t x; memcpy(&x, rb, 2); v = x; break; }
                case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: v = (int8_t)rb[0]; break;
                case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: v = rb[0] != 0; break;
                default: v = rb[0]; break;
                }
            } else {
                v = ((const int32_t *)typed)[i];
            }
            onnx_const_seti(c, i, v);
        }
        }
    }
    *out = c;
    return 0;
}
