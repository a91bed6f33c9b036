/* zoo: the built-in models (resnet152, inception_v3, densenet201, bert_base,
 * gpt2) built as graphs in C, with deterministic pseudo-random weights.
 *
 * A model name is a base name optionally followed by "-alter-<suffix>"
 * ("resnet152-alter-00000001"): copies have the base's architecture and
 * exactly its weights, as in the seed, so a model list can name thousands
 * of models cheaply. Weights are a pure function of (base name, parameter
 * name, element index): any parameter can be produced on its own, in any
 * order, without building the others first. Architectures, operator lists,
 * parameter names and the weight recipe are documented in docs/models.md. */
#ifndef PIPEPS_ZOO_H
#define PIPEPS_ZOO_H

#include <stddef.h>
#include <stdint.h>

#include "model/graph.h"

#define ZOO_DEFAULT_SEQ 128 /* tokens per sequence for the transformers */

struct zoo_options {
    int seq_len; /* transformers: sequence length S (1..max positions); 0 = ZOO_DEFAULT_SEQ.
                    Must be 0 for the CNNs. */
};

/* How one parameter's values are generated (see docs/models.md). */
enum zoo_init_kind {
    ZOO_INIT_UNIFORM = 1, /* mean a, standard deviation b, uniform distribution */
    ZOO_INIT_RANGE = 2,   /* uniform in [a, b) */
    ZOO_INIT_CONST = 3,   /* every element a */
    ZOO_INIT_CAUSAL = 4,  /* [S, S] additive mask: 0 where col <= row, a elsewhere */
    ZOO_INIT_MASK_TABLE = 5, /* [2, 1] additive attention-mask table: row 0 (mask 0) a, row 1 0 */
};

struct zoo_init {
    enum zoo_init_kind kind;
    float a, b;
};

struct zoo_model {
    struct graph g;          /* g.name is the full model name as requested */
    char base[GRAPH_NAME_MAX + 1]; /* name without the -alter- suffix */
    uint64_t seed;           /* XXH3-64 of base */
    int seq_len;             /* transformers: S; CNNs: 0 */
    /* One per parameter, in creation order; init_names lets the lookup
     * survive batching's renumbering. */
    int ninit;
    struct zoo_init *init;
    char (*init_names)[GRAPH_NAME_MAX + 1];
};

/* Registry. */
int zoo_count(void);
const char *zoo_name(int i);          /* base names, i in [0, zoo_count()) */
int zoo_is_transformer(const char *base);
/* "resnet152, inception_v3, ..." into buf (for error messages). */
void zoo_known_list(char *buf, size_t cap);
/* Copy the base name (the part before "-alter-") of model into out.
 * Returns 0 if it names a known model, PPS_ENOTFOUND otherwise, PPS_EINVAL
 * if the name is empty or too long. */
int zoo_base_name(const char *model, char *out, size_t cap);

/* Build model (unbatched graph: call batching_apply next). opt may be NULL.
 * Returns 0, PPS_ENOTFOUND for an unknown name (err lists the known ones),
 * PPS_EINVAL for a bad option. The caller frees with zoo_free. */
int zoo_build(struct zoo_model *m, const char *model, const struct zoo_options *opt, char *err,
              size_t errlen);
void zoo_free(struct zoo_model *m);

/* Write param pid's values (g.params[pid].nbytes bytes of float32) to dst. */
void zoo_fill_param(const struct zoo_model *m, int32_t pid, float *dst);
/* Write batch b's bytes (g.batches[b].nbytes, padding zeroed) to dst. The
 * graph must be batched. */
void zoo_fill_batch(const struct zoo_model *m, int32_t b, void *dst);

#endif
