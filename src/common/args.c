/* args: see args.h. */
#include "common/args.h"
#include "common/err.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int args_split(int argc, char **argv, struct args_option *options, int noptions,
               struct args *out, int *help_asked)
{
    out->npositional = 0;
    if (help_asked)
        *help_asked = 0;
    for (int j = 0; j < noptions; j++)
        options[j].value = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (help_asked)
                *help_asked = 1;
            return PPS_EINVAL;
        }
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
            int j;
            for (j = 0; j < noptions; j++)
                if (strlen(options[j].name) == nlen && strncmp(options[j].name, name, nlen) == 0)
                    break;
            if (j == noptions) {
                fprintf(stderr, "unknown option: %s\n", a);
                return PPS_EINVAL;
            }
            if (!options[j].takes_value) {
                options[j].value = "1";
            } else if (eq) {
                options[j].value = eq + 1;
            } else if (i + 1 < argc) {
                options[j].value = argv[++i];
            } else {
                fprintf(stderr, "option --%s needs a value\n", options[j].name);
                return PPS_EINVAL;
            }
            continue;
        }
        if (out->npositional >= ARGS_MAX) {
            fprintf(stderr, "too many arguments\n");
            return PPS_EINVAL;
        }
        out->positional[out->npositional++] = a;
    }
    return 0;
}

int args_parse_u64(const char *text, uint64_t *out)
{
    char *end;
    if (!text || !isdigit((unsigned char)text[0]))
        return PPS_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end)
        return PPS_EINVAL;
    *out = v;
    return 0;
}

int args_parse_size(const char *text, uint64_t *out)
{
    char *end;
    if (!text || !(isdigit((unsigned char)text[0]) || text[0] == '.'))
        return PPS_EINVAL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || v < 0)
        return PPS_EINVAL;
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': mult = 1024.0; break;
    case 'M': mult = 1024.0 * 1024; break;
    case 'G': mult = 1024.0 * 1024 * 1024; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; break;
    default: return PPS_EINVAL;
    }
    if (*end) {
        end++;
        if (toupper((unsigned char)*end) == 'I')
            end++;
        if (toupper((unsigned char)*end) == 'B')
            end++;
        if (*end)
            return PPS_EINVAL;
    }
    double bytes = v * mult;
    if (bytes > 1.8e19 || bytes != floor(bytes))
        return PPS_EINVAL;
    *out = (uint64_t)bytes;
    return 0;
}

int args_parse_int(const char *text, int min, int max, int *out)
{
    char *end;
    if (!text || !*text)
        return PPS_EINVAL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < min || v > max)
        return PPS_EINVAL;
    *out = (int)v;
    return 0;
}
