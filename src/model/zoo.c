/* zoo: registry of the built-in models, model-name parsing and the
 * deterministic weight generator (see zoo.h, docs/models.md).
 *
 * Weights: each parameter gets its own stream, seeded by
 * XXH3-64(parameter name) with the model seed (XXH3-64 of the base name) as
 * the hash seed; element pair j takes the SplitMix64 output for counter
 * j + 1, giving two 24-bit uniforms. Being counter-based, a parameter (or a
 * batch) can be generated alone and in any order, and the result never
 * depends on batching or on how many threads produce it. Uniform rather
 * than Gaussian noise keeps it to a multiply-add per value: ResNet-152's
 * 60 M values take a fraction of a second. */
#include "model/zoo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/err.h"
#include "model/zoo_layers.h"

struct zoo_def {
    const char *name;
    int max_seq; /* 0: a CNN (no sequence length) */
    void (*build_cnn)(struct zoo_model *m);
    void (*build_text)(struct zoo_model *m, int seq);
};

static const struct zoo_def zoo_defs[] = {
    {"resnet152", 0, zoo_build_resnet152, NULL},
    {"inception_v3", 0, zoo_build_inception_v3, NULL},
    {"densenet201", 0, zoo_build_densenet201, NULL},
    {"bert_base", 512, NULL, zoo_build_bert_base},
    {"gpt2", 1024, NULL, zoo_build_gpt2},
    {"tiny_mlp", 0, zoo_build_tiny_mlp, NULL}, /* for overhead measurements, not a seed model */
};
#define ZOO_NDEFS ((int)(sizeof zoo_defs / sizeof zoo_defs[0]))

int zoo_count(void) { return ZOO_NDEFS; }

const char *zoo_name(int i) { return (i >= 0 && i < ZOO_NDEFS) ? zoo_defs[i].name : NULL; }

static const struct zoo_def *find_def(const char *base)
{
    for (int i = 0; i < ZOO_NDEFS; i++)
        if (strcmp(zoo_defs[i].name, base) == 0) return &zoo_defs[i];
    return NULL;
}

int zoo_is_transformer(const char *base)
{
    const struct zoo_def *d = find_def(base);
    return d && d->max_seq > 0;
}

void zoo_known_list(char *buf, size_t cap)
{
    if (!cap) return;
    buf[0] = '\0';
    size_t len = 0;
    for (int i = 0; i < ZOO_NDEFS; i++) {
        int n = snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", zoo_defs[i].name);
        if (n < 0 || (size_t)n >= cap - len) return;
        len += (size_t)n;
    }
}

int zoo_base_name(const char *model, char *out, size_t cap)
{
    size_t n = strlen(model);
    if (n == 0 || n > GRAPH_NAME_MAX) return PPS_EINVAL;
    const char *alter = strstr(model, "-alter-");
    size_t blen = alter ? (size_t)(alter - model) : n;
    if (alter && alter[7] == '\0') return PPS_EINVAL; /* "-alter-" with nothing after */
    if (blen + 1 > cap) return PPS_EINVAL;
    memcpy(out, model, blen);
    out[blen] = '\0';
    return find_def(out) ? 0 : PPS_ENOTFOUND;
}

int zoo_build(struct zoo_model *m, const char *model, const struct zoo_options *opt, char *err,
              size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (err && errlen) err[0] = '\0';
    int rc = zoo_base_name(model, m->base, sizeof m->base);
    if (rc) {
        char known[256];
        zoo_known_list(known, sizeof known);
        if (err && errlen)
            snprintf(err, errlen, "unknown model '%s' (known: %s, each optionally followed by -alter-<suffix>)",
                     model, known);
        return rc == PPS_EINVAL ? PPS_EINVAL : PPS_ENOTFOUND;
    }
    const struct zoo_def *d = find_def(m->base);
    int seq = opt ? opt->seq_len : 0;
    if (d->max_seq == 0 && seq != 0) {
        if (err && errlen) snprintf(err, errlen, "%s: a sequence length is only for transformers", model);
        return PPS_EINVAL;
    }
    if (d->max_seq > 0) {
        if (seq == 0) seq = ZOO_DEFAULT_SEQ;
        if (seq < 1 || seq > d->max_seq) {
            if (err && errlen)
                snprintf(err, errlen, "%s: sequence length %d out of range 1..%d", model, seq, d->max_seq);
            return PPS_EINVAL;
        }
    }
    m->seq_len = d->max_seq ? seq : 0;
    m->seed = XXH3_64bits(m->base, strlen(m->base));
    graph_init(&m->g, model);
    if (d->build_cnn)
        d->build_cnn(m);
    else
        d->build_text(m, seq);
    return 0;
}

void zoo_free(struct zoo_model *m)
{
    graph_free(&m->g);
    free(m->init);
    free(m->init_names);
    memset(m, 0, sizeof *m);
}

static inline uint64_t splitmix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define GOLDEN_GAMMA 0x9e3779b97f4a7c15ull

static const struct zoo_init *init_of(const struct zoo_model *m, int32_t pid)
{
    const char *name = m->g.params[pid].name;
    if (pid < m->ninit && strcmp(m->init_names[pid], name) == 0) return &m->init[pid];
    for (int i = 0; i < m->ninit; i++)
        if (strcmp(m->init_names[i], name) == 0) return &m->init[i];
    PPS_ASSERT(!"parameter without a weight recipe");
    return NULL;
}

void zoo_fill_param(const struct zoo_model *m, int32_t pid, float *dst)
{
    PPS_ASSERT(pid >= 0 && pid < m->g.nparams);
    const struct graph_param *p = &m->g.params[pid];
    const struct zoo_init *in = init_of(m, pid);
    uint64_t n = graph_param_elems(p);
    switch (in->kind) {
    case ZOO_INIT_CONST:
        for (uint64_t i = 0; i < n; i++) dst[i] = in->a;
        return;
    case ZOO_INIT_CAUSAL: {
        PPS_ASSERT(p->ndims == 2 && p->dims[0] == p->dims[1]);
        int64_t s = p->dims[0];
        for (int64_t r = 0; r < s; r++)
            for (int64_t c = 0; c < s; c++) dst[r * s + c] = c <= r ? 0.0f : in->a;
        return;
    }
    case ZOO_INIT_MASK_TABLE:
        PPS_ASSERT(p->ndims == 2 && p->dims[0] == 2 && p->dims[1] == 1);
        dst[0] = in->a;
        dst[1] = 0.0f;
        return;
    case ZOO_INIT_UNIFORM:
    case ZOO_INIT_RANGE:
        break;
    }
    /* value = lo + span * u, u uniform in [0, 1) with 24 bits. */
    float lo, span;
    if (in->kind == ZOO_INIT_UNIFORM) {
        float half = in->b * sqrtf(3.0f); /* uniform on [-h, h) has std h / sqrt(3) */
        lo = in->a - half;
        span = 2.0f * half;
    } else {
        lo = in->a;
        span = in->b - in->a;
    }
    const float scale = span * (1.0f / 16777216.0f);
    uint64_t pseed = XXH3_64bits_withSeed(p->name, strlen(p->name), m->seed);
    uint64_t i = 0, j = 1;
    for (; i + 1 < n; i += 2, j++) {
        uint64_t r = splitmix64(pseed + j * GOLDEN_GAMMA);
        dst[i] = lo + scale * (float)(r >> 40);
        dst[i + 1] = lo + scale * (float)((r >> 16) & 0xffffff);
    }
    if (i < n) {
        uint64_t r = splitmix64(pseed + j * GOLDEN_GAMMA);
        dst[i] = lo + scale * (float)(r >> 40);
    }
}

void zoo_fill_batch(const struct zoo_model *m, int32_t b, void *dst)
{
    PPS_ASSERT(b >= 0 && b < m->g.nbatches);
    const struct graph_batch *bt = &m->g.batches[b];
    uint8_t *base = dst;
    for (int32_t k = bt->first_param; k < bt->first_param + bt->nparams; k++) {
        const struct graph_param *p = &m->g.params[k];
        /* Offsets are 512-aligned and dst is at least float-aligned. */
        zoo_fill_param(m, k, (float *)(void *)(base + p->offset));
        memset(base + p->offset + p->nbytes, 0, graph_param_padded(p) - p->nbytes);
    }
}
