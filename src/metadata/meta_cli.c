/* meta_cli: see meta_cli.h. Values go to stdout as raw bytes (no newline
 * added), so `get` can be piped into a file; keys of `list` one per line. */
#include "metadata/meta_cli.h"
#include "common/args.h"
#include "common/err.h"
#include "common/net.h"
#include "metadata/meta_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pipeps meta [ADDR:]PORT get KEY           print the value (raw bytes)\n"
            "       pipeps meta [ADDR:]PORT put KEY VALUE\n"
            "       pipeps meta [ADDR:]PORT put KEY --file F  value from file F (- = stdin)\n"
            "       pipeps meta [ADDR:]PORT delete KEY\n"
            "       pipeps meta [ADDR:]PORT list [PREFIX]     keys, sorted, one a line\n"
            "Exit status: 0 ok, 1 failure (not found included), 2 usage.\n");
}

/* Read all of f (bounded by META_MAX_VALUE); *data is malloc'd. */
static int read_all(FILE *f, uint8_t **data, uint64_t *len)
{
    size_t cap = 4096, n = 0;
    uint8_t *p = malloc(cap);
    if (!p)
        return PPS_ENOMEM;
    for (;;) {
        if (n == cap) {
            if (cap > META_MAX_VALUE) {
                free(p);
                return PPS_ETOOBIG;
            }
            uint8_t *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                return PPS_ENOMEM;
            }
            p = q;
            cap *= 2;
        }
        size_t r = fread(p + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        free(p);
        return PPS_EIO;
    }
    *data = p;
    *len = n;
    return 0;
}

/* Is this a command line run() understands? */
static int well_formed(int np, const char **pos, const char *file)
{
    const char *cmd = pos[1];
    return (strcmp(cmd, "get") == 0 && np == 3 && !file) ||
           (strcmp(cmd, "put") == 0 && ((np == 4 && !file) || (np == 3 && file))) ||
           (strcmp(cmd, "delete") == 0 && np == 3 && !file) ||
           (strcmp(cmd, "list") == 0 && (np == 2 || np == 3) && !file);
}

static int run(struct meta_client *c, int np, const char **pos, const char *file)
{
    const char *cmd = pos[1];
    int rc;
    if (strcmp(cmd, "get") == 0 && np == 3) {
        uint8_t *v;
        uint64_t n;
        if ((rc = meta_get(c, pos[2], &v, &n)))
            return rc;
        fwrite(v, 1, (size_t)n, stdout);
        free(v);
        return 0;
    }
    if (strcmp(cmd, "put") == 0 && ((np == 4 && !file) || (np == 3 && file))) {
        if (!file)
            return meta_put(c, pos[2], pos[3], strlen(pos[3]));
        FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
        if (!f) {
            fprintf(stderr, "meta: cannot open %s\n", file);
            return PPS_EIO;
        }
        uint8_t *v;
        uint64_t n;
        rc = read_all(f, &v, &n);
        if (f != stdin)
            fclose(f);
        if (rc)
            return rc;
        rc = meta_put(c, pos[2], v, n);
        free(v);
        return rc;
    }
    if (strcmp(cmd, "delete") == 0 && np == 3)
        return meta_delete(c, pos[2]);
    if (strcmp(cmd, "list") == 0 && (np == 2 || np == 3)) {
        char **keys;
        uint32_t n;
        if ((rc = meta_list(c, np == 3 ? pos[2] : "", &keys, &n)))
            return rc;
        for (uint32_t i = 0; i < n; i++)
            printf("%s\n", keys[i]);
        meta_free_list(keys, n);
        return 0;
    }
    return PPS_EINVAL;
}

int meta_cli_main(int argc, char **argv)
{
    struct args_option options[] = {{"file", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, options, 1, &a, &help) || a.npositional < 2 ||
        !well_formed(a.npositional, a.positional, options[0].value)) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    char host[256];
    uint16_t port;
    if (net_parse_hostport(a.positional[0], host, sizeof host, &port)) {
        fprintf(stderr, "meta: bad address '%s' (want [ADDR:]PORT)\n", a.positional[0]);
        return 2;
    }
    struct meta_client *c;
    int rc = meta_client_connect(&c, host, port);
    if (rc) {
        fprintf(stderr, "meta: cannot connect to %s:%u: %s\n", host, port, pps_strerror(rc));
        return 1;
    }
    rc = run(c, a.npositional, a.positional, options[0].value);
    meta_client_close(c);
    if (rc) {
        fprintf(stderr, "meta %s: %s (%s)\n", a.positional[1], pps_strerror(rc), pps_errname(rc));
        return 1;
    }
    fflush(stdout);
    return 0;
}
