/* gc: `pipeps gc STORAGE_LIST [--min-age AGE] [--dry-run]`, deletes the
 * deploy generations nothing references.
 *
 * deploy_file writes every slice as "<model>-BATCH-<i>@<generation>" and
 * the description as "<model>-METADATA@<generation>"; "<model>-LOCATION"
 * names the one live generation of a model. A deploy_file run that crashed,
 * or lost the metadata storage while publishing, leaves other generations
 * behind. gc lists every storage of STORAGE_LIST (STORE_LIST) and the
 * metadata storage (META_LIST), then reads each model's LOCATION and deletes
 * the values of generations it does not name, if they are older than
 * --min-age (default 1 h): younger ones may belong to a deploy that is still
 * pushing. A model whose LOCATION cannot be read or decoded is left alone.
 * Keys of any other shape are never touched. */
#ifndef PIPEPS_GC_H
#define PIPEPS_GC_H

int gc_main(int argc, char **argv);

#endif
