/* inspect: `pipeps inspect KV_BIN [--verify]`, a listing of a kv.bin file:
 * its models (name, total padded size, batches) and every key with its size,
 * offset and checksum. --verify also checks that each model is complete and
 * every value matches its checksum (exit status 1 if not). */
#ifndef PIPEPS_INSPECT_H
#define PIPEPS_INSPECT_H

int inspect_main(int argc, char **argv);

#endif
