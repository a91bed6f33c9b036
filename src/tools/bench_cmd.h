/* bench_cmd: `pipeps bench`, the experiments of the original work on local
 * clusters (bench/pipeps_bench.py does the work). */
#ifndef PIPEPS_TOOLS_BENCH_CMD_H
#define PIPEPS_TOOLS_BENCH_CMD_H

/* Replaces the process with the Python driver; returns only on failure. */
int bench_cmd_main(int argc, char **argv);

#endif
