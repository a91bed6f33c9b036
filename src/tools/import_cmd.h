/* import_cmd: `pipeps import FILE.onnx [--seq N] [--json]`: what the ONNX
 * importer makes of a model (inputs, outputs, parameters, op types and
 * whether each is supported), before generate_file is asked to serve it. */
#ifndef PIPEPS_IMPORT_CMD_H
#define PIPEPS_IMPORT_CMD_H

/* Exit status: 0 servable, 1 unsupported nodes (each named), 2 error. */
int import_main(int argc, char **argv);

#endif
