/* run_cmd: `pipeps run KV_BIN MODEL [options]`, the executor on its own:
 * loads a model from kv.bin, feeds its parameter batches to the executor
 * (all at once, or from a thread that simulates their arrival), runs it and
 * reports load time, first-inference and warm latency. See README.md,
 * "pipeps run", for the options and the generated default input. */
#ifndef PIPEPS_RUN_CMD_H
#define PIPEPS_RUN_CMD_H

int run_main(int argc, char **argv);

#endif
