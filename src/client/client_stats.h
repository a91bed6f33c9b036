/* client_stats: what a client reports of its latencies: mean, standard
 * deviation and nearest-rank percentiles. */
#ifndef PIPEPS_CLIENT_STATS_H
#define PIPEPS_CLIENT_STATS_H

struct client_summary {
    int n;
    double mean, stdev, min, p50, p90, p99, max;
};

/* Nearest-rank percentile (p in [0, 1]) of sorted[0..n-1]; 0 when n = 0. */
double client_percentile(const double *sorted, int n, double p);
/* Summary of v[0..n-1] (v is sorted in place). */
void client_summarize(double *v, int n, struct client_summary *out);

#endif
