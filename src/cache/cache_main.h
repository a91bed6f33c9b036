/* cache_main: the `cache` command's entry point (src/tools/commands.h). */
#ifndef PIPEPS_CACHE_MAIN_H
#define PIPEPS_CACHE_MAIN_H

int cache_main(int argc, char **argv);

#endif
