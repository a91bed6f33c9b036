/* deploy_plan: where deploy_file puts which bytes: strict parsers of the
 * seed's deployment lists, and the slicing rule.
 *
 * storage_list.txt:            model_distribution_list.txt:
 *   address, port                model, storages
 *   127.0.0.1, 7777  <- metadata  alpha, 0
 *   127.0.0.1, 7778  <- storage 0 beta, 0, 1
 *   127.0.0.1, 7779  <- storage 1
 *
 * The first line of each file is a header and is not interpreted, except
 * that a first line which parses as data is refused (a forgotten header
 * would otherwise silently drop the metadata storage or a model). Blank lines
 * and lines starting with '#' are skipped. Every error names file:line. */
#ifndef PIPEPS_DEPLOY_PLAN_H
#define PIPEPS_DEPLOY_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "formats/kvbin.h"
#include "formats/location.h"

#define DEPLOY_MAX_STORAGES LOCATION_MAX_SLICES
#define DEPLOY_LIST_MAX_BYTES (64u << 20)

struct deploy_endpoint {
    char addr[64];
    uint16_t port;
    int line;                   /* where it was listed */
};

struct deploy_storage_list {
    struct deploy_endpoint meta;         /* the first data line */
    uint32_t nstorages;                  /* the lines after it */
    struct deploy_endpoint storages[DEPLOY_MAX_STORAGES];
};

struct deploy_dist_entry {
    char model[KVBIN_NAME_MAX + 1];
    int line;
    uint32_t nstorages;
    uint32_t storages[DEPLOY_MAX_STORAGES]; /* indices into storage_list.storages */
};

struct deploy_dist_list {
    uint32_t nmodels;
    struct deploy_dist_entry *models;    /* owned; deploy_dist_list_free */
};

/* Parse text (len bytes; name is used in messages). */
int deploy_parse_storage_list(const char *text, size_t len, const char *name,
                              struct deploy_storage_list *out, char *err, size_t errlen);
/* Indices are checked against nstorages (the storage list's count). */
int deploy_parse_dist_list(const char *text, size_t len, const char *name, uint32_t nstorages,
                           struct deploy_dist_list *out, char *err, size_t errlen);
void deploy_dist_list_free(struct deploy_dist_list *dl);

/* Read a whole list file (at most DEPLOY_LIST_MAX_BYTES) into a malloc'd,
 * NUL-terminated buffer; the caller frees. */
int deploy_read_list_file(const char *path, char **text, size_t *len, char *err, size_t errlen);

/* The slicing rule (docs/formats.md): a value of len bytes over nstorages
 * storages is cut into slices of *slice_size bytes (a multiple of 512), the
 * last one possibly shorter; returns how many slices are non-empty (1 for an
 * empty value: one empty slice). */
uint32_t deploy_slice_plan(uint64_t len, uint32_t nstorages, uint64_t *slice_size);

/* "<key>@<generation>" into out (room for outlen bytes). */
void deploy_generation_key(const char *key, uint64_t generation, char *out, unsigned long outlen);

#endif
