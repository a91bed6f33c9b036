/* meta_cli: `pipeps meta HOST:PORT get|put|delete|list ...`, a command-line
 * client of the metadata storage built on meta_client (for scripts,
 * operators and the black-box tests of the client library). */
#ifndef PIPEPS_META_CLI_H
#define PIPEPS_META_CLI_H

int meta_cli_main(int argc, char **argv);

#endif
