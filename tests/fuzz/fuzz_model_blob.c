/* libFuzzer target for the METADATA blob decoder: every input is decoded;
 * whatever is accepted must validate and re-encode to a blob that decodes to
 * the same encoding. Built by tests/fuzz/build.sh (clang, ASan+UBSan) with
 * MODEL_BLOB_FUZZ_NO_CHECKSUM so mutations get past the checksum; seeds are
 * the five zoo models' blobs (model_blob_seeds.c). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"
#include "model/graph.h"
#include "model/model_blob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct graph g;
    char err[256];
    if (model_blob_decode(&g, data, size, err, sizeof err) != 0) return 0;
    if (graph_validate(&g, NULL, 0) != 0) __builtin_trap();
    struct wbuf a, b;
    wbuf_init(&a);
    wbuf_init(&b);
    if (model_blob_encode(&g, &a) != 0) __builtin_trap();
    graph_free(&g);
    if (model_blob_decode(&g, a.data, a.len, err, sizeof err) != 0) __builtin_trap();
    if (model_blob_encode(&g, &b) != 0) __builtin_trap();
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) __builtin_trap();
    graph_free(&g);
    wbuf_free(&a);
    wbuf_free(&b);
    return 0;
}
