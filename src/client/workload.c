/* workload: request-list generator; see workload.h.
 *
 * The one thing easy to get wrong: reproducibility. Every random number
 * comes from one SplitMix64 stream in a fixed order (all model draws
 * first, then all intervals), floats are printed with a fixed format, and
 * nothing reads the clock or the environment. */
#include "client/workload.h"
#include "common/args.h"
#include "common/buf.h"
#include "common/err.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double uniform(uint64_t *s) { return (double)(splitmix(s) >> 11) / (double)(1ull << 53); }

int workload_write(FILE *out, const char *const *models, int nmodels, const struct workload_spec *spec)
{
    if (nmodels < 1 || spec->group < 1 || spec->nrequests < 1 || !(spec->rate > 0) || spec->batch < 1)
        return PPS_EINVAL;
    int ndraws = (spec->nrequests + spec->group - 1) / spec->group;
    int n = ndraws * spec->group;
    uint64_t st = spec->seed;
    int *draw = malloc((size_t)ndraws * sizeof *draw);
    double *cum = malloc((size_t)nmodels * sizeof *cum);
    if (!draw || !cum) {
        free(draw);
        free(cum);
        return PPS_ENOMEM;
    }
    double total = 0;
    for (int i = 0; i < nmodels; i++) {
        total += 1.0 / pow((double)(i + 1), spec->s);
        cum[i] = total;
    }
    for (int d = 0; d < ndraws; d++) {
        if (!spec->zipf) {
            draw[d] = d % nmodels;
            continue;
        }
        double u = uniform(&st) * total;
        int lo = 0, hi = nmodels - 1; /* first i with cum[i] > u */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (cum[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        draw[d] = lo;
    }
    fprintf(out, "model_name, batch_size, send_interval\n");
    for (int i = 0; i < n; i++) {
        double iv = spec->exponential ? -log(1.0 - uniform(&st)) / spec->rate : 1.0 / spec->rate;
        fprintf(out, "%s, %d, %f\n", models[draw[i / spec->group]], spec->batch, iv);
    }
    free(draw);
    free(cum);
    return ferror(out) ? PPS_EIO : 0;
}

int workload_read_models(const char *path, int copies, char ***names, int *n, char *err, size_t errlen)
{
    *names = NULL;
    *n = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return pps_fail(err, errlen, PPS_EIO, "%s: %s", path, strerror(errno));
    char line[4096];
    int lineno = 0, header = 0, cap = 0, rc = 0;
    char **v = NULL;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        if (!header) {
            header = 1;
            continue;
        }
        size_t k = strcspn(p, ", \t\r\n");
        if (k == 0 || k > 200) {
            rc = pps_fail(err, errlen, PPS_EINVAL, "%s:%d: bad model name", path, lineno);
            break;
        }
        p[k] = '\0';
        if (!wire_name_valid(p, 255)) {
            rc = pps_fail(err, errlen, PPS_EINVAL, "%s:%d: bad model name '%s'", path, lineno, p);
            break;
        }
        int reps = copies > 0 ? copies : 1;
        for (int c = 1; c <= reps; c++) {
            if (*n == cap) {
                cap = cap ? cap * 2 : 64;
                char **nv = realloc(v, (size_t)cap * sizeof *nv);
                if (!nv)
                    abort();
                v = nv;
            }
            char name[300];
            if (copies > 0)
                snprintf(name, sizeof name, "%.200s-alter-%08d", p, c);
            else
                snprintf(name, sizeof name, "%.200s", p);
            v[(*n)++] = strdup(name);
        }
    }
    fclose(f);
    if (!rc && *n == 0)
        rc = pps_fail(err, errlen, PPS_EINVAL, "%s: no models after the header", path);
    if (rc) {
        for (int i = 0; i < *n; i++)
            free(v[i]);
        free(v);
        *n = 0;
        return rc;
    }
    *names = v;
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: workload MODEL_LIST OUT NUM_REQUESTS GROUP loop|zipf S RATE uniform|exponential\n"
            "                [--seed N] [--batch B] [--copies K]\n"
            "  Writes a request list (header 'model_name, batch_size, send_interval') for the clients.\n"
            "  MODEL_LIST    a generate_file model list (header line, then 'model[, seq_len]')\n"
            "  NUM_REQUESTS  requests wanted (rounded up to whole groups)\n"
            "  GROUP         consecutive requests per model draw\n"
            "  loop|zipf S   round-robin over the list, or Zipf with weight 1/rank^S (S ignored for loop)\n"
            "  RATE          requests per second\n"
            "  uniform|exponential   constant intervals 1/RATE, or exponential with mean 1/RATE\n"
            "  --seed N      random seed (default 1): the same seed writes the same file\n"
            "  --batch B     batch_size of every row (default 8, the original's)\n"
            "  --copies K    each listed model stands for K copies M-alter-00000001..K\n");
}

int workload_main(int argc, char **argv)
{
    struct args_option opts[] = {{"seed", 1, NULL}, {"batch", 1, NULL}, {"copies", 1, NULL}};
    struct args a;
    int help = 0;
    if (args_split(argc, argv, opts, 3, &a, &help) || a.npositional != 8) {
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    struct workload_spec spec = {.seed = 1, .batch = 8};
    int copies = 0, bad = 0;
    char *end;
    if (args_parse_int(a.positional[2], 1, 100000000, &spec.nrequests))
        bad = fprintf(stderr, "workload: bad NUM_REQUESTS '%s'\n", a.positional[2]);
    if (args_parse_int(a.positional[3], 1, 100000000, &spec.group))
        bad = fprintf(stderr, "workload: bad GROUP '%s'\n", a.positional[3]);
    if (strcmp(a.positional[4], "loop") == 0)
        spec.zipf = 0;
    else if (strcmp(a.positional[4], "zipf") == 0)
        spec.zipf = 1;
    else
        bad = fprintf(stderr, "workload: the distribution is 'loop' or 'zipf', not '%s'\n", a.positional[4]);
    spec.s = strtod(a.positional[5], &end);
    if (end == a.positional[5] || *end || !(spec.s >= 0) || spec.s > 100)
        bad = fprintf(stderr, "workload: bad Zipf exponent S '%s' (0..100)\n", a.positional[5]);
    spec.rate = strtod(a.positional[6], &end);
    if (end == a.positional[6] || *end || !(spec.rate > 0) || spec.rate > 1e9)
        bad = fprintf(stderr, "workload: bad RATE '%s' (requests per second > 0)\n", a.positional[6]);
    if (strcmp(a.positional[7], "uniform") == 0)
        spec.exponential = 0;
    else if (strcmp(a.positional[7], "exponential") == 0)
        spec.exponential = 1;
    else
        bad = fprintf(stderr, "workload: intervals are 'uniform' or 'exponential', not '%s'\n", a.positional[7]);
    uint64_t seed;
    if (opts[0].value) {
        if (args_parse_u64(opts[0].value, &seed))
            bad = fprintf(stderr, "workload: bad --seed '%s'\n", opts[0].value);
        else
            spec.seed = seed;
    }
    if (opts[1].value && args_parse_int(opts[1].value, 1, 1 << 20, &spec.batch))
        bad = fprintf(stderr, "workload: bad --batch '%s'\n", opts[1].value);
    if (opts[2].value && args_parse_int(opts[2].value, 1, 10000000, &copies))
        bad = fprintf(stderr, "workload: bad --copies '%s'\n", opts[2].value);
    if (bad)
        return 2;
    char **names;
    int n;
    char err[512];
    if (workload_read_models(a.positional[0], copies, &names, &n, err, sizeof err)) {
        fprintf(stderr, "workload: %s\n", err);
        return 1;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", a.positional[1]);
    FILE *out = fopen(tmp, "w");
    int rc = out ? workload_write(out, (const char *const *)names, n, &spec) : PPS_EIO;
    if (out && fclose(out))
        rc = PPS_EIO;
    if (!rc && rename(tmp, a.positional[1]))
        rc = PPS_EIO;
    if (rc) {
        fprintf(stderr, "workload: writing %s: %s\n", a.positional[1], out ? pps_strerror(rc) : strerror(errno));
        remove(tmp);
    } else {
        int nrows = (spec.nrequests + spec.group - 1) / spec.group * spec.group;
        fprintf(stderr, "workload: %d requests over %d models (%s%s, %s intervals, %.3g req/s, seed %" PRIu64
                        ") -> %s\n",
                nrows, n, spec.zipf ? "zipf " : "loop", spec.zipf ? a.positional[5] : "",
                spec.exponential ? "exponential" : "uniform", spec.rate, spec.seed, a.positional[1]);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc ? 1 : 0;
}
