/* model_cli: `pipeps model`, a look at a built-in model's graph: inputs,
 * outputs, op counts, batches, optionally every node, and its METADATA blob
 * written to a file (fuzzing seeds, debugging an executor). */
#ifndef PIPEPS_MODEL_CLI_H
#define PIPEPS_MODEL_CLI_H

/* pipeps model MODEL [--seq S] [--max-batch-size B] [--nodes] [--blob FILE] */
int model_cli_main(int argc, char **argv);

#endif
