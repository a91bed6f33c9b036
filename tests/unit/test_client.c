/* Unit tests for the clients' pure parts: the request-list parser (every
 * refusal names file:line), the workload generator (reproducible per seed;
 * a seeded chi-square test that Zipf draws follow 1/rank^S, which must also
 * reject a wrong exponent; exponential intervals' mean and variance; loop
 * order, GROUP repetition, row count) and the latency summary (nearest-rank
 * percentiles, sample standard deviation, n = 0 and 1).
 *
 * The generator is checked through its text output, parsed back with
 * request_list_parse: what the clients will read is what is tested. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client_stats.h"
#include "client/request_list.h"
#include "client/workload.h"
#include "common/err.h"

/* ---- request_list_parse --------------------------------------------------- */

static int parse(const char *text, struct request_list *l, char *err, size_t errlen)
{
    return request_list_parse(text, strlen(text), "rl.txt", l, err, errlen);
}

static void test_parse_good_list(void **state)
{
    (void)state;
    const char *text = "# written by hand\n"
                       "\n"
                       "  model_name ,  batch_size,send_interval  \n"
                       "resnet152, 8, 0.100000\n"
                       "   \n"
                       "# a comment between rows\n"
                       "\tbert_base-alter-00000002 ,1,0\r\n"
                       "gpt2,   1048576,   86400\n"
                       "inception_v3, 2, 1e-3";
    struct request_list l;
    char err[256] = "";
    assert_int_equal(parse(text, &l, err, sizeof err), 0);
    assert_int_equal(l.n, 4);
    assert_string_equal(l.rows[0].model, "resnet152");
    assert_int_equal(l.rows[0].batch, 8);
    assert_true(l.rows[0].interval_s == 0.1);
    assert_string_equal(l.rows[1].model, "bert_base-alter-00000002");
    assert_int_equal(l.rows[1].batch, 1);
    assert_true(l.rows[1].interval_s == 0);
    assert_string_equal(l.rows[2].model, "gpt2");
    assert_int_equal(l.rows[2].batch, 1 << 20);
    assert_true(l.rows[2].interval_s == 86400);
    assert_string_equal(l.rows[3].model, "inception_v3");
    assert_true(l.rows[3].interval_s == 1e-3);
    request_list_free(&l);
    assert_null(l.rows);
    assert_int_equal(l.n, 0);
}

static void test_parse_many_rows(void **state)
{
    (void)state;
    /* Past the parser's first growth (64 rows) several times. */
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    len += (size_t)snprintf(text + len, cap - len, "model_name, batch_size, send_interval\n");
    for (int i = 0; i < 1000; i++)
        len += (size_t)snprintf(text + len, cap - len, "m%d, %d, %d.5\n", i, i % 7 + 1, i % 3);
    struct request_list l;
    char err[256];
    assert_int_equal(request_list_parse(text, len, "big.txt", &l, err, sizeof err), 0);
    assert_int_equal(l.n, 1000);
    for (int i = 0; i < 1000; i++) {
        char want[32];
        snprintf(want, sizeof want, "m%d", i);
        assert_string_equal(l.rows[i].model, want);
        assert_int_equal(l.rows[i].batch, i % 7 + 1);
        assert_true(l.rows[i].interval_s == i % 3 + 0.5);
    }
    request_list_free(&l);
    free(text);
}

/* text must be refused with PPS_EINVAL and a message containing want. */
static void expect_refused(const char *text, size_t len, const char *want)
{
    struct request_list l;
    char err[512] = "";
    int rc = request_list_parse(text, len, "rl.txt", &l, err, sizeof err);
    if (rc != PPS_EINVAL || !strstr(err, want))
        fail_msg("expected PPS_EINVAL with '%s', got %d '%s' for:\n%s", want, rc, err, text);
    /* Nothing is left to free after a refusal. */
    assert_null(l.rows);
    assert_int_equal(l.n, 0);
}

static void expect_refused_str(const char *text, const char *want) { expect_refused(text, strlen(text), want); }

static void test_parse_refusals_name_file_and_line(void **state)
{
    (void)state;
    const char *H = "model_name, batch_size, send_interval\n";
    char text[1024];

    /* A missing header: the first line is a request, which would be lost. */
    expect_refused_str("resnet152, 8, 0.100000\ngpt2, 1, 0\n", "rl.txt:1: the first line must be the header");
    expect_refused_str("# comment\n\nresnet152, 8, 0.1\n", "rl.txt:3: the first line must be the header");

    struct {
        const char *row, *want;
    } bad[] = {
        {"resnet152, 8", "rl.txt:3: expected 3 fields"},
        {"resnet152", "rl.txt:3: expected 3 fields"},
        {"resnet152, 8, 0.1, extra", "rl.txt:3: expected 3 fields"},
        {"resnet152, 8, 0.1,", "rl.txt:3: expected 3 fields"},
        {"resnet152, 0, 0.1", "rl.txt:3: bad batch_size '0'"},
        {"resnet152, -2, 0.1", "rl.txt:3: bad batch_size '-2'"},
        {"resnet152, 8x, 0.1", "rl.txt:3: bad batch_size '8x'"},
        {"resnet152, 2.5, 0.1", "rl.txt:3: bad batch_size '2.5'"},
        {"resnet152, , 0.1", "rl.txt:3: bad batch_size ''"},
        {"resnet152, 1048577, 0.1", "rl.txt:3: bad batch_size '1048577'"},
        {"resnet152, 99999999999999999999, 0.1", "rl.txt:3: bad batch_size"},
        {"resnet152, 8, -0.1", "rl.txt:3: bad send_interval '-0.1'"},
        {"resnet152, 8, soon", "rl.txt:3: bad send_interval 'soon'"},
        {"resnet152, 8, 0.1s", "rl.txt:3: bad send_interval '0.1s'"},
        {"resnet152, 8, ", "rl.txt:3: bad send_interval ''"},
        {"resnet152, 8, nan", "rl.txt:3: bad send_interval 'nan'"},
        {"resnet152, 8, inf", "rl.txt:3: bad send_interval 'inf'"},
        {"resnet152, 8, 86401", "rl.txt:3: bad send_interval '86401'"},
        {"res net152, 8, 0.1", "rl.txt:3: bad model name 'res net152'"},
        {", 8, 0.1", "rl.txt:3: bad model name ''"},
        {"r\xc3\xa9snet, 8, 0.1", "rl.txt:3: bad model name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%sresnet152, 1, 0\n%s\ngpt2, 1, 0\n", H, bad[i].row);
        expect_refused_str(text, bad[i].want);
    }

    /* A model name one byte too long; 255 bytes is fine. */
    char name[300];
    memset(name, 'm', 256);
    name[256] = '\0';
    snprintf(text, sizeof text, "%s%s, 1, 0\n", H, name);
    expect_refused_str(text, "rl.txt:2: bad model name");
    name[255] = '\0';
    snprintf(text, sizeof text, "%s%s, 1, 0\n", H, name);
    struct request_list l;
    char err[512];
    assert_int_equal(parse(text, &l, err, sizeof err), 0);
    assert_int_equal(strlen(l.rows[0].model), 255);
    request_list_free(&l);

    /* A NUL byte, in a row and in the header. */
    static const char nul_row[] = "model_name, batch_size, send_interval\nresnet\0" "152, 8, 0.1\n";
    expect_refused(nul_row, sizeof nul_row - 1, "rl.txt:2: NUL byte");
    static const char nul_header[] = "model_name\0, batch_size, send_interval\nresnet152, 8, 0.1\n";
    expect_refused(nul_header, sizeof nul_header - 1, "rl.txt:1: NUL byte");

    /* A line over the limit. */
    size_t n = 5000;
    char *longline = malloc(n + 64);
    assert_non_null(longline);
    int hl = snprintf(longline, n + 64, "%s", H);
    memset(longline + hl, 'x', n);
    longline[hl + (int)n] = '\0';
    expect_refused_str(longline, "rl.txt:2: line too long");
    free(longline);

    /* No rows. */
    expect_refused_str(H, "rl.txt: no requests after the header");
    expect_refused_str("model_name, batch_size, send_interval\n\n# only comments\n", "no requests after the header");
    expect_refused_str("", "rl.txt: empty (no header line)");
    expect_refused_str("\n  \n# nothing\n", "rl.txt: empty (no header line)");
}

static void test_request_list_read(void **state)
{
    (void)state;
    char path[] = "/tmp/test_client_rl_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "model_name, batch_size, send_interval\nresnet152, 8, 0.100000\ngpt2, 1, 0.5\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    struct request_list l;
    char err[512];
    assert_int_equal(request_list_read(path, &l, err, sizeof err), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.rows[1].model, "gpt2");
    request_list_free(&l);
    unlink(path);
    assert_int_equal(request_list_read(path, &l, err, sizeof err), PPS_EIO);
    assert_non_null(strstr(err, path));
}

/* ---- workload_write ------------------------------------------------------- */

static const char *const MODELS20[] = {"m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09", "m10",
                                       "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20"};

/* The generator's output for spec (the caller frees *text). */
static size_t generate(const char *const *models, int n, const struct workload_spec *spec, char **text)
{
    size_t len = 0;
    FILE *f = open_memstream(text, &len);
    assert_non_null(f);
    assert_int_equal(workload_write(f, models, n, spec), 0);
    assert_int_equal(fclose(f), 0);
    return len;
}

static void generate_list(const char *const *models, int n, const struct workload_spec *spec,
                          struct request_list *l)
{
    char *text;
    size_t len = generate(models, n, spec, &text);
    char err[512];
    if (request_list_parse(text, len, "generated", l, err, sizeof err))
        fail_msg("the generator wrote a list the clients refuse: %s", err);
    free(text);
}

static int model_index(const char *const *models, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(models[i], name) == 0)
            return i;
    fail_msg("unknown model '%s' in the output", name);
    return -1;
}

static void test_same_seed_same_bytes(void **state)
{
    (void)state;
    struct workload_spec spec = {.nrequests = 500, .group = 3, .zipf = 1, .s = 0.9, .rate = 7,
                                 .exponential = 1, .seed = 42, .batch = 8};
    char *a, *b, *c;
    size_t la = generate(MODELS20, 20, &spec, &a);
    size_t lb = generate(MODELS20, 20, &spec, &b);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    /* And through a fixed buffer (fmemopen), the same bytes again. */
    char *fixed = calloc(1, la + 1);
    assert_non_null(fixed);
    FILE *f = fmemopen(fixed, la + 1, "w");
    assert_non_null(f);
    assert_int_equal(workload_write(f, MODELS20, 20, &spec), 0);
    assert_int_equal(fclose(f), 0);
    assert_memory_equal(fixed, a, la);
    free(fixed);
    /* Another seed: another file, for both the draws and the intervals. */
    spec.seed = 43;
    size_t lc = generate(MODELS20, 20, &spec, &c);
    assert_false(lc == la && memcmp(a, c, la) == 0);
    free(a);
    free(b);
    free(c);

    struct workload_spec u = {.nrequests = 100, .group = 1, .zipf = 1, .s = 1.2, .rate = 5, .batch = 1,
                              .seed = 1};
    size_t l1 = generate(MODELS20, 20, &u, &a);
    u.seed = 2;
    size_t l2 = generate(MODELS20, 20, &u, &b);
    assert_false(l1 == l2 && memcmp(a, b, l1) == 0);
    free(a);
    free(b);
}

static void test_header_and_batch(void **state)
{
    (void)state;
    const char *const models[] = {"resnet152"};
    struct workload_spec spec = {.nrequests = 2, .group = 1, .rate = 10, .batch = 8, .seed = 1};
    char *text;
    size_t len = generate(models, 1, &spec, &text);
    const char want[] = "model_name, batch_size, send_interval\n"
                        "resnet152, 8, 0.100000\n"
                        "resnet152, 8, 0.100000\n";
    assert_int_equal(len, sizeof want - 1);
    assert_memory_equal(text, want, len);
    free(text);
}

/* Pearson's statistic of counts[0..k-1] (total n) against 1/rank^s. */
static double chi_square(const int *counts, int k, int n, double s)
{
    double h = 0;
    for (int i = 0; i < k; i++)
        h += pow(i + 1, -s);
    double x2 = 0;
    for (int i = 0; i < k; i++) {
        double e = n * pow(i + 1, -s) / h;
        x2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x2;
}

static void test_zipf_follows_the_exponent(void **state)
{
    (void)state;
    enum { K = 20, N = 20000 };
    /* 19 degrees of freedom: P(X2 > 70) is about 1e-7, so the fixed seed
     * below is no accident; a wrong exponent lands far above it. */
    const double critical = 70;
    struct workload_spec spec = {.nrequests = N, .group = 1, .zipf = 1, .s = 0.9, .rate = 100,
                                 .seed = 20240601, .batch = 1};
    struct request_list l;
    generate_list(MODELS20, K, &spec, &l);
    assert_int_equal(l.n, N);
    int counts[K] = {0};
    for (int i = 0; i < l.n; i++)
        counts[model_index(MODELS20, K, l.rows[i].model)]++;
    request_list_free(&l);
    double x2 = chi_square(counts, K, N, 0.9);
    if (x2 > critical)
        fail_msg("Zipf(0.9) draws: chi-square %.1f > %.0f", x2, critical);
    /* The test has power: the same counts reject neighbouring exponents
     * and the uniform distribution. */
    const double wrong[] = {0.0, 0.7, 0.8, 1.0, 1.1};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        double w = chi_square(counts, K, N, wrong[i]);
        if (w <= critical)
            fail_msg("Zipf(0.9) draws pass as Zipf(%.1f): chi-square %.1f", wrong[i], w);
    }
    /* Every seed gives a plausible sample, not just this one: a few more,
     * at a bound each would miss with probability about 1e-7. */
    for (uint64_t seed = 1; seed <= 5; seed++) {
        spec.seed = seed;
        generate_list(MODELS20, K, &spec, &l);
        memset(counts, 0, sizeof counts);
        for (int i = 0; i < l.n; i++)
            counts[model_index(MODELS20, K, l.rows[i].model)]++;
        request_list_free(&l);
        x2 = chi_square(counts, K, N, 0.9);
        if (x2 > critical)
            fail_msg("seed %llu: chi-square %.1f > %.0f", (unsigned long long)seed, x2, critical);
    }
}

static void test_zipf_exponent_zero_is_uniform(void **state)
{
    (void)state;
    enum { K = 20, N = 20000 };
    struct workload_spec spec = {.nrequests = N, .group = 1, .zipf = 1, .s = 0, .rate = 100, .seed = 9,
                                 .batch = 1};
    struct request_list l;
    generate_list(MODELS20, K, &spec, &l);
    int counts[K] = {0};
    for (int i = 0; i < l.n; i++)
        counts[model_index(MODELS20, K, l.rows[i].model)]++;
    request_list_free(&l);
    assert_true(chi_square(counts, K, N, 0) <= 70);
    assert_true(chi_square(counts, K, N, 0.3) > 70);
}

static void test_exponential_intervals(void **state)
{
    (void)state;
    enum { N = 20000 };
    const double rate = 4;
    const char *const models[] = {"a", "b", "c"};
    struct workload_spec spec = {.nrequests = N, .group = 1, .zipf = 0, .rate = rate, .exponential = 1,
                                 .seed = 77, .batch = 1};
    struct request_list l;
    generate_list(models, 3, &spec, &l);
    assert_int_equal(l.n, N);
    double sum = 0, ss = 0, mn = 1e9;
    for (int i = 0; i < N; i++) {
        sum += l.rows[i].interval_s;
        if (l.rows[i].interval_s < mn)
            mn = l.rows[i].interval_s;
    }
    double mean = sum / N;
    for (int i = 0; i < N; i++)
        ss += (l.rows[i].interval_s - mean) * (l.rows[i].interval_s - mean);
    double var = ss / (N - 1);
    request_list_free(&l);
    /* Standard errors: 0.7% of the mean, 2% of the variance; the bounds
     * are several times wider. */
    if (fabs(mean - 1 / rate) > 0.05 / rate || fabs(var - 1 / (rate * rate)) > 0.15 / (rate * rate))
        fail_msg("exponential(%g): mean %.5f (want %.5f), variance %.5f (want %.5f)", rate, mean, 1 / rate, var,
                 1 / (rate * rate));
    assert_true(mn >= 0);
    /* Memoryless: about e^-1 of the intervals exceed the mean. */
    int over = 0;
    generate_list(models, 3, &spec, &l);
    for (int i = 0; i < N; i++)
        over += l.rows[i].interval_s > 1 / rate;
    request_list_free(&l);
    assert_true(fabs((double)over / N - exp(-1)) < 0.02);
}

static void test_uniform_intervals_are_exactly_one_over_rate(void **state)
{
    (void)state;
    const char *const models[] = {"a", "b"};
    const double rates[] = {1, 3, 4, 7.5, 1000};
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        struct workload_spec spec = {.nrequests = 50, .group = 2, .zipf = 1, .s = 1, .rate = rates[r],
                                     .seed = 5, .batch = 3};
        char *text;
        size_t len = generate(models, 2, &spec, &text);
        char want[64];
        snprintf(want, sizeof want, ", 3, %f\n", 1 / rates[r]);
        int rows = 0;
        for (char *line = strchr(text, '\n') + 1; line < text + len; line = strchr(line, '\n') + 1) {
            char *nl = strchr(line, '\n');
            assert_non_null(nl);
            size_t wl = strlen(want);
            if ((size_t)(nl + 1 - line) < wl || memcmp(nl + 1 - wl, want, wl) != 0)
                fail_msg("rate %g: row '%.*s' does not end in '%s'", rates[r], (int)(nl - line), line, want);
            rows++;
        }
        assert_int_equal(rows, 50);
        free(text);
    }
}

static void test_loop_order_group_and_row_count(void **state)
{
    (void)state;
    const char *const models[] = {"a", "b", "c"};
    /* 7 requests in groups of 2: 4 draws, 8 rows. */
    struct workload_spec spec = {.nrequests = 7, .group = 2, .zipf = 0, .rate = 1, .seed = 1, .batch = 1};
    struct request_list l;
    generate_list(models, 3, &spec, &l);
    const char *want[] = {"a", "a", "b", "b", "c", "c", "a", "a"};
    assert_int_equal(l.n, 8);
    for (int i = 0; i < 8; i++)
        assert_string_equal(l.rows[i].model, want[i]);
    request_list_free(&l);

    /* Loop ignores the seed and S. */
    char *x, *y;
    size_t lx = generate(models, 3, &spec, &x);
    spec.seed = 99;
    spec.s = 3;
    size_t ly = generate(models, 3, &spec, &y);
    assert_int_equal(lx, ly);
    assert_memory_equal(x, y, lx);
    free(x);
    free(y);

    /* Row count ceil(N/G)*G, for a spread of N and G. */
    for (int n = 1; n <= 30; n++)
        for (int g = 1; g <= 7; g++) {
            spec = (struct workload_spec){.nrequests = n, .group = g, .zipf = n % 2, .s = 0.9, .rate = 2,
                                          .exponential = g % 2, .seed = (uint64_t)n, .batch = 1};
            generate_list(models, 3, &spec, &l);
            assert_int_equal(l.n, (n + g - 1) / g * g);
            /* GROUP consecutive rows share a model. */
            for (int i = 0; i < l.n; i++)
                assert_string_equal(l.rows[i].model, l.rows[i - i % g].model);
            if (!spec.zipf)
                for (int i = 0; i < l.n; i++)
                    assert_string_equal(l.rows[i].model, models[(i / g) % 3]);
            request_list_free(&l);
        }
}

static void test_zipf_groups_repeat_one_draw(void **state)
{
    (void)state;
    enum { G = 5, N = 4000 };
    struct workload_spec spec = {.nrequests = N, .group = G, .zipf = 1, .s = 0.9, .rate = 50, .exponential = 1,
                                 .seed = 3, .batch = 2};
    struct request_list l;
    generate_list(MODELS20, 20, &spec, &l);
    assert_int_equal(l.n, N);
    int changes = 0;
    for (int i = 1; i < l.n; i++) {
        int same = strcmp(l.rows[i].model, l.rows[i - 1].model) == 0;
        if (i % G)
            assert_true(same);
        else
            changes += !same;
        assert_int_equal(l.rows[i].batch, 2);
    }
    /* The draws are not all the same model. */
    assert_true(changes > N / G / 2);
    request_list_free(&l);
}

static void test_workload_refuses_bad_specs(void **state)
{
    (void)state;
    const char *const models[] = {"a"};
    FILE *f = fopen("/dev/null", "w");
    assert_non_null(f);
    struct workload_spec good = {.nrequests = 1, .group = 1, .rate = 1, .batch = 1, .seed = 1};
    assert_int_equal(workload_write(f, models, 1, &good), 0);
    assert_int_equal(workload_write(f, models, 0, &good), PPS_EINVAL);
    struct workload_spec s = good;
    s.rate = 0;
    assert_int_equal(workload_write(f, models, 1, &s), PPS_EINVAL);
    s = good;
    s.rate = NAN;
    assert_int_equal(workload_write(f, models, 1, &s), PPS_EINVAL);
    s = good;
    s.group = 0;
    assert_int_equal(workload_write(f, models, 1, &s), PPS_EINVAL);
    s = good;
    s.nrequests = 0;
    assert_int_equal(workload_write(f, models, 1, &s), PPS_EINVAL);
    s = good;
    s.batch = 0;
    assert_int_equal(workload_write(f, models, 1, &s), PPS_EINVAL);
    fclose(f);
}

static void test_read_models_and_copies(void **state)
{
    (void)state;
    char path[] = "/tmp/test_client_ml_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "model_name\n\n# a comment\nresnet152\nbert_base, 16\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    char **names, err[512];
    int n;
    assert_int_equal(workload_read_models(path, 0, &names, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "resnet152");
    assert_string_equal(names[1], "bert_base");
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    assert_int_equal(workload_read_models(path, 3, &names, &n, err, sizeof err), 0);
    const char *want[] = {"resnet152-alter-00000001", "resnet152-alter-00000002", "resnet152-alter-00000003",
                          "bert_base-alter-00000001", "bert_base-alter-00000002", "bert_base-alter-00000003"};
    assert_int_equal(n, 6);
    for (int i = 0; i < n; i++) {
        assert_string_equal(names[i], want[i]);
        free(names[i]);
    }
    free(names);

    /* Only a header: refused. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("model_name\n", f);
    fclose(f);
    assert_int_equal(workload_read_models(path, 0, &names, &n, err, sizeof err), PPS_EINVAL);
    assert_non_null(strstr(err, "no models"));
    /* A bad name: file:line. */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("model_name\nresnet152\n,16\n", f);
    fclose(f);
    assert_int_equal(workload_read_models(path, 0, &names, &n, err, sizeof err), PPS_EINVAL);
    char where[128];
    snprintf(where, sizeof where, "%s:3:", path);
    assert_non_null(strstr(err, where));
    unlink(path);
}

/* ---- client_stats --------------------------------------------------------- */

static void test_percentile_nearest_rank(void **state)
{
    (void)state;
    double v[100];
    for (int i = 0; i < 100; i++)
        v[i] = i + 1;
    assert_true(client_percentile(v, 100, 0.50) == 50);
    assert_true(client_percentile(v, 100, 0.90) == 90);
    assert_true(client_percentile(v, 100, 0.99) == 99);
    assert_true(client_percentile(v, 100, 1.0) == 100);
    assert_true(client_percentile(v, 100, 0.0) == 1);
    /* Ten values: p50 is the 5th, p90 the 9th, p99 the 10th. */
    assert_true(client_percentile(v, 10, 0.50) == 5);
    assert_true(client_percentile(v, 10, 0.90) == 9);
    assert_true(client_percentile(v, 10, 0.99) == 10);
    /* rank ceil(p n) for every n up to 1000 (no off-by-one from rounding) */
    double *w = malloc(1000 * sizeof *w);
    assert_non_null(w);
    for (int i = 0; i < 1000; i++)
        w[i] = i + 1;
    for (int n = 1; n <= 1000; n++) {
        assert_true(client_percentile(w, n, 0.50) == (50 * n + 99) / 100);
        assert_true(client_percentile(w, n, 0.90) == (90 * n + 99) / 100);
        assert_true(client_percentile(w, n, 0.99) == (99 * n + 99) / 100);
    }
    free(w);
    assert_true(client_percentile(v, 0, 0.5) == 0);
    assert_true(client_percentile(v, 1, 0.99) == 1);
}

static void test_summarize(void **state)
{
    (void)state;
    double v[] = {9, 2, 5, 4, 12, 7, 8, 11, 9, 3, 4, 10};
    int n = (int)(sizeof v / sizeof v[0]);
    struct client_summary s;
    client_summarize(v, n, &s);
    assert_int_equal(s.n, n);
    for (int i = 1; i < n; i++)
        assert_true(v[i - 1] <= v[i]); /* sorted in place */
    assert_true(s.min == 2 && s.max == 12);
    assert_true(fabs(s.mean - 7) < 1e-12);
    /* squared deviations sum to 122, over n - 1 = 11 */
    assert_true(fabs(s.stdev - sqrt(122.0 / 11)) < 1e-12);
    assert_true(s.p50 == 7);  /* rank 6 of 2 3 4 4 5 7 8 9 9 10 11 12 */
    assert_true(s.p90 == 11); /* rank ceil(10.8) = 11 */
    assert_true(s.p99 == 12);

    double one = 3.5;
    client_summarize(&one, 1, &s);
    assert_int_equal(s.n, 1);
    assert_true(s.mean == 3.5 && s.stdev == 0 && s.min == 3.5 && s.max == 3.5);
    assert_true(s.p50 == 3.5 && s.p90 == 3.5 && s.p99 == 3.5);

    memset(&s, 0x55, sizeof s);
    client_summarize(NULL, 0, &s);
    assert_int_equal(s.n, 0);
    assert_true(s.mean == 0 && s.stdev == 0 && s.min == 0 && s.max == 0);
    assert_true(s.p50 == 0 && s.p90 == 0 && s.p99 == 0);

    double same[] = {4, 4, 4, 4};
    client_summarize(same, 4, &s);
    assert_true(s.stdev == 0 && s.mean == 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good_list),
        cmocka_unit_test(test_parse_many_rows),
        cmocka_unit_test(test_parse_refusals_name_file_and_line),
        cmocka_unit_test(test_request_list_read),
        cmocka_unit_test(test_same_seed_same_bytes),
        cmocka_unit_test(test_header_and_batch),
        cmocka_unit_test(test_zipf_follows_the_exponent),
        cmocka_unit_test(test_zipf_exponent_zero_is_uniform),
        cmocka_unit_test(test_exponential_intervals),
        cmocka_unit_test(test_uniform_intervals_are_exactly_one_over_rate),
        cmocka_unit_test(test_loop_order_group_and_row_count),
        cmocka_unit_test(test_zipf_groups_repeat_one_draw),
        cmocka_unit_test(test_workload_refuses_bad_specs),
        cmocka_unit_test(test_read_models_and_copies),
        cmocka_unit_test(test_percentile_nearest_rank),
        cmocka_unit_test(test_summarize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
