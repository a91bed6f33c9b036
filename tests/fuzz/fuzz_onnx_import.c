/* libFuzzer target for the ONNX importer: every input is handed to
 * onnx_import_memory as the bytes of a ModelProto (no folder, so external
 * data is refused). A refusal must come with a message; an accepted model
 * must be a graph that validates, whose every parameter's bytes are there
 * to be read (ASan catches a parameter pointer that runs short), and it
 * must free cleanly. Built by tests/fuzz/build.sh (clang, ASan+UBSan, the
 * importer's libraries compiled with -fsanitize=fuzzer-no-link); seeds are
 * a few ONNX backend node-test models and small models with initializers.
 *
 * The easy thing to get wrong: the two option sets (allow_unsupported on
 * or off) take different paths through the importer, so the input's length
 * picks one; the same input always takes the same path, so crashes replay. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/graph.h"
#include "onnx/onnx_import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct onnx_import_options opt;
    onnx_import_options_default(&opt);
    opt.seq_len = 8;
    opt.allow_unsupported = (int)(size & 1);
    struct onnx_model *m = NULL;
    char err[1024];
    err[0] = '\0';
    int rc = onnx_import_memory(data, size, NULL, &opt, &m, err, sizeof err);
    if (rc != 0) {
        if (rc > 0 || err[0] == '\0' || memchr(err, '\0', sizeof err) == NULL) __builtin_trap();
        return 0;
    }
    const struct graph *g = onnx_model_graph(m);
    if (!g) __builtin_trap();
    /* With unsupported nodes imported the graph may hold ops the executor
     * lacks; it must still be a well-formed graph otherwise. */
    if (!opt.allow_unsupported || onnx_model_nunsupported(m) == 0) {
        char verr[256];
        if (graph_validate(g, verr, sizeof verr) != 0) __builtin_trap();
    }
    volatile uint8_t sink = 0;
    for (int32_t p = 0; p < g->nparams; p++) {
        const uint8_t *bytes = onnx_model_param(m, p);
        uint64_t n = g->params[p].nbytes;
        if (n && !bytes) __builtin_trap();
        if (n) sink ^= (uint8_t)(bytes[0] ^ bytes[n - 1]);
    }
    (void)sink;
    onnx_model_free(m);
    return 0;
}
