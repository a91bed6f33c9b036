/* args: parsing of command-line values shared by every program.
 *
 * Programs keep the seed's positional arguments and take options as
 * "--name value" anywhere on the line; args_split separates the two so each
 * main stays short. Sizes accept K/M/G/T suffixes (powers of 1024). */
#ifndef PIPEPS_ARGS_H
#define PIPEPS_ARGS_H

#include <stdint.h>

#define ARGS_MAX 64

struct args_option {
    const char *name;  /* without the leading "--" */
    int takes_value;   /* 1: "--name value", 0: a flag */
    const char *value; /* set by args_split: the value, or "1" for a flag; NULL if absent */
};

struct args {
    int npositional;
    const char *positional[ARGS_MAX];
};

/* Split argv[1..argc-1] into positionals and the given options. An unknown
 * option or a missing value prints a message naming it and returns
 * PPS_EINVAL. "--help"/"-h" returns PPS_EINVAL with *help_asked = 1. */
int args_split(int argc, char **argv, struct args_option *options, int noptions,
               struct args *out, int *help_asked);

int args_parse_u64(const char *text, uint64_t *out);
/* "1024", "64K", "32M", "1.5G": bytes. */
int args_parse_size(const char *text, uint64_t *out);
int args_parse_int(const char *text, int min, int max, int *out);

#endif
