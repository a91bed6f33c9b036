/* client_stats: latency summaries; see client_stats.h. */
#include "client/client_stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double client_percentile(const double *sorted, int n, double p)
{
    if (n <= 0)
        return 0;
    int k = (int)ceil(p * n) - 1; /* nearest rank */
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return sorted[k];
}

void client_summarize(double *v, int n, struct client_summary *out)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    if (n <= 0)
        return;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    out->mean = sum / n;
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (v[i] - out->mean) * (v[i] - out->mean);
    out->stdev = n > 1 ? sqrt(ss / (n - 1)) : 0;
    out->min = v[0];
    out->max = v[n - 1];
    out->p50 = client_percentile(v, n, 0.50);
    out->p90 = client_percentile(v, n, 0.90);
    out->p99 = client_percentile(v, n, 0.99);
}
