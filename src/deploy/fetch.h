/* fetch: `pipeps fetch META_ADDR:PORT MODEL [--out DIR]`, reads a deployed
 * model back the way a cache finds it: the "<model>-LOCATION" record from the
 * metadata storage, then every key's slices from the storages it names.
 * Prints one line per key (size and XXH3-64); with --out also writes each
 * value to DIR/<key> and the description to DIR/<model>-METADATA. A tool for
 * checking deployments (the storage demo and tests compare bytes with it),
 * not the cache's fetch path. */
#ifndef PIPEPS_FETCH_H
#define PIPEPS_FETCH_H

int fetch_main(int argc, char **argv);

#endif
