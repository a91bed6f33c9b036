/* npy: reading and writing NumPy .npy files (format versions 1.0, 2.0, 3.0).
 *
 * Model inputs and outputs travel between PipePS tools and users as .npy
 * files (`pipeps run`, `pipeps infer`). Only what models use is supported:
 * little-endian float32 ('<f4') and int64 ('<i8'), C order, up to
 * NPY_MAX_DIMS dimensions. The header is untrusted text: it is parsed with
 * bounds checks, its shape must agree exactly with the bytes that follow,
 * and an element count that would overflow is rejected before anything is
 * allocated. The dtype values equal enum graph_dtype's (model/graph.h), so a
 * caller can convert with a cast without this module depending on graph. */
#ifndef PIPEPS_NPY_H
#define PIPEPS_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8
/* Largest data size npy_read_file accepts (a bound, not a promise of memory). */
#define NPY_MAX_BYTES (8ull << 30)

enum npy_dtype { NPY_F32 = 1, NPY_I64 = 2 };

struct npy_array {
    enum npy_dtype dtype;
    int ndims;                    /* 0 = a scalar (one element) */
    int64_t dims[NPY_MAX_DIMS];
    uint64_t nbytes;              /* element count * element size */
    void *data;                   /* malloc'd by the readers; npy_free frees */
};

size_t npy_dtype_size(enum npy_dtype t);
const char *npy_dtype_descr(enum npy_dtype t); /* "<f4", "<i8" */

/* Parse a whole .npy image of len bytes; the data is copied into a[0].data.
 * PPS_ECORRUPT (bad magic/header), PPS_EUNSUPPORTED (other dtype, Fortran
 * order, version), PPS_ETRUNCATED (fewer data bytes than the shape says),
 * PPS_ENOMEM; a message in err (may be NULL). */
int npy_parse(const void *buf, size_t len, struct npy_array *a, char *err, size_t errlen);
/* Read a file (at most NPY_MAX_BYTES of data); PPS_EIO if it cannot be read. */
int npy_read_file(const char *path, struct npy_array *a, char *err, size_t errlen);
/* Write a version 1.0 file; nbytes must equal the shape's byte count
 * (PPS_EINVAL otherwise). Written to "<path>.tmp" and renamed. */
int npy_write_file(const char *path, enum npy_dtype dtype, int ndims, const int64_t *dims,
                   const void *data, uint64_t nbytes);
void npy_free(struct npy_array *a);

#endif
