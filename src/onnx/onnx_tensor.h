/* onnx_tensor: reading an ONNX TensorProto (initializer, Constant value)
 * into a constant of the importer (onnx_fold.h): from raw_data, the typed
 * fields or an external-data file.
 *
 * float32 and int64 data is used where it lies (in the unpacked proto or
 * the mapped external file); float16, bfloat16 and double become float32,
 * the integer and bool types int64. Dims are bounded (rank 8, each and
 * their product at most 2^40) and the data present must match them
 * exactly before anything is converted.
 * The easy thing to get wrong: external data. Its location must be a
 * relative path that stays inside the model's folder after resolving
 * symlinks, and offset + length must lie within the file; the region is
 * mapped (64-bit offsets, so a tensor over 2 GiB works). */
#ifndef PIPEPS_ONNX_TENSOR_H
#define PIPEPS_ONNX_TENSOR_H

#include <stddef.h>

#include "onnx.pb-c.h"
#include "onnx/onnx_fold.h"

/* External-data regions mapped for the tensors, unmapped together. */
struct onnx_mappings {
    struct {
        void *addr;
        size_t len;
    } *v;
    int n;
};
void onnx_mappings_free(struct onnx_mappings *maps);

/* t (named tname in messages) into *out, allocated in pool. base_dir: the
 * model's folder for external data (NULL: external data refused). Returns
 * 0 or a PPS_E* code with a message naming the tensor. */
int onnx_tensor_load(const Onnx__TensorProto *t, const char *tname, const char *base_dir,
                     struct onnx_const_pool *pool, struct onnx_mappings *maps, struct onnx_const **out,
                     char *err, size_t errlen);

#endif
