/* deploy: `deploy_file STORAGE_LIST DISTRIBUTION_LIST KV_BIN`.
 *
 * Pushes every model of the distribution list from kv.bin to its storages
 * (each batch cut into equal slices, one per storage, pushed in parallel),
 * then publishes it in the metadata storage: "<model>-METADATA@<gen>",
 * "<model>-SIZE" and, last, "<model>-LOCATION" (formats/location.h). The
 * location record is the commit point: a reader that finds it finds a whole
 * model. After publishing, the previous generation's values are deleted. */
#ifndef PIPEPS_DEPLOY_H
#define PIPEPS_DEPLOY_H

#include <stdint.h>

/* Longest model name deploy_file accepts: "<model>-BATCH-<i>@<generation>"
 * must fit a location record's 255-byte storage key. */
#define DEPLOY_MODEL_NAME_MAX 200

int deploy_file_main(int argc, char **argv);

#endif
