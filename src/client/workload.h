/* workload: the request-list generator (`workload`), the original
 * workload.py's positional arguments made reproducible.
 *
 *   workload MODEL_LIST OUT NUM_REQUESTS GROUP loop|zipf S RATE uniform|exponential
 *            [--seed N] [--batch B] [--copies K]
 *
 * Models come from a generate_file model list (header line, then
 * `model[, seq_len]`). ceil(NUM_REQUESTS / GROUP) draws are made, each
 * repeated GROUP times: `loop` takes the models round-robin, `zipf` draws
 * with weight 1/rank^S over the list order. Intervals are 1/RATE
 * (uniform) or exponential with mean 1/RATE (Poisson arrivals). One
 * SplitMix64 stream seeded by --seed (default 1) drives both, so a seed
 * gives the same file byte for byte. --copies K stands for K copies of
 * each listed model, M-alter-00000001 .. M-alter-<K>, the names
 * generate_file understands. */
#ifndef PIPEPS_WORKLOAD_H
#define PIPEPS_WORKLOAD_H

#include <stdint.h>
#include <stdio.h>

struct workload_spec {
    int nrequests;             /* asked for; rounded up to whole groups */
    int group;                 /* consecutive requests per draw (>= 1) */
    int zipf;                  /* 0: loop, 1: zipf */
    double s;                  /* Zipf exponent */
    double rate;               /* requests per second (> 0) */
    int exponential;           /* 0: constant intervals */
    uint64_t seed;
    int batch;                 /* batch_size written on every row */
};

/* Write the request list for models[0..nmodels-1] to out. */
int workload_write(FILE *out, const char *const *models, int nmodels, const struct workload_spec *spec);
/* The model names of a generate_file list, with --copies expanded; the
 * caller frees names[i] and names. err gets file:line on a bad line. */
int workload_read_models(const char *path, int copies, char ***names, int *n, char *err, size_t errlen);

int workload_main(int argc, char **argv);

#endif
