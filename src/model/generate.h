/* generate: the generate_file program. Reads the seed's model_list.txt,
 * builds every listed model from the zoo, cuts its parameters into batches
 * and writes kv.bin ("<model>-METADATA", then "<model>-BATCH-<i>").
 *
 * model_list.txt: a header line (ignored), then one model a line:
 *   model_name[, seq_len]
 *   name, file=PATH.onnx[, seq=N]
 * model_name is a zoo model, optionally with "-alter-<suffix>"; seq_len
 * (transformers only, default 128) is the sequence length the graph is
 * built for. A file= line imports an ONNX model (src/onnx/onnx_import.h):
 * PATH is relative to the list file's folder, seq=N fixes its symbolic
 * dimensions other than the batch. A later "name-alter-<suffix>" line is a
 * copy of an imported name with the same weights. Blank lines and lines
 * starting with '#' are skipped. */
#ifndef PIPEPS_GENERATE_H
#define PIPEPS_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "model/zoo.h"

struct generate_entry {
    char name[GRAPH_NAME_MAX + 1];
    struct zoo_options opt;
    char *file;        /* imported model: the .onnx path (resolved against the list's folder), else NULL */
    int64_t onnx_seq;  /* imported model: seq=N (0: none given) */
};

/* Parse a model list. *out (generate_free_list) gets *count entries.
 * Returns 0, PPS_EINVAL with a message naming the line in err, or PPS_EIO. */
int generate_read_list(const char *path, struct generate_entry **out, int *count, char *err,
                       size_t errlen);
void generate_free_list(struct generate_entry *list, int count);

/* How parameters are stored (see src/exec/prepack.h). */
enum generate_target {
    GENERATE_NATIVE = 1,   /* prepared for this machine's kernels, used in place */
    GENERATE_PORTABLE = 2, /* plain float32 tensors as the model defines them */
};
/* "native" / "portable" into *out; PPS_EINVAL otherwise. */
int generate_parse_target(const char *s, enum generate_target *out);

/* Build one model, batch it (and prepare it for target) and append it to w
 * (progress to stderr if progress). The writer is the kvbin writer of
 * src/formats/kvbin.h. cache: zeroed before the first call; keeps the last
 * prepared model for "-alter-" copies that follow it. */
struct kvbin_writer;
struct generate_cache;
int generate_model(struct kvbin_writer *w, const struct generate_entry *e,
                   uint64_t max_batch_size, enum generate_target target, struct generate_cache *cache,
                   int progress, char *err, size_t errlen);
/* The same for an imported ONNX model, written under e->name. Parameters
 * are copied from the model straight into each batch buffer. */
struct onnx_model;
int generate_onnx_model(struct kvbin_writer *w, const struct generate_entry *e,
                        const struct onnx_model *om, uint64_t max_batch_size, int progress, char *err,
                        size_t errlen);

/* generate_file MODEL_LIST KV_BIN [MAX_BATCH_SIZE] */
int generate_file_main(int argc, char **argv);

#endif
