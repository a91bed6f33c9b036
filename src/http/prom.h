/* prom: the Prometheus text exposition format (version 0.0.4), written into
 * a struct wbuf, and a fixed-bucket histogram that many threads may update.
 *
 * A daemon's /metrics body is a sequence of families: prom_head writes a
 * family's "# HELP" and "# TYPE" lines, then prom_u64 / prom_f64 /
 * prom_hist_write write its samples, one per label set. Conventions the
 * callers follow (README, "Metrics"): every name starts with "pipeps_",
 * counters end in "_total" (the TYPE line carries the same name), units are
 * base units in the name ("_seconds", "_bytes").
 *
 * The easy thing to get wrong: label values come from peers (model names)
 * and must be escaped (backslash, double quote, newline), while names and
 * label names come from the code and are only checked (an invalid one is a
 * bug and aborts). Histogram buckets are stored per bucket and written
 * cumulatively, so a scrape that races with observations still reads a
 * monotone series whose +Inf bucket equals _count. */
#ifndef PIPEPS_PROM_H
#define PIPEPS_PROM_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/buf.h"

enum prom_type { PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM };

struct prom_label {
    const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not "le" (histograms add it) */
    const char *value; /* any bytes up to the NUL; escaped on output */
};

/* "# HELP name help\n# TYPE name type\n" (help escaped). */
void prom_head(struct wbuf *out, const char *name, enum prom_type type, const char *help);
/* One sample: name{labels} value. nlabels may be 0 (labels then unused). */
void prom_u64(struct wbuf *out, const char *name, const struct prom_label *labels, int nlabels,
              uint64_t value);
/* Doubles print in the shortest form that reads back exactly; NaN and
 * infinities as "NaN", "+Inf", "-Inf". */
void prom_f64(struct wbuf *out, const char *name, const struct prom_label *labels, int nlabels,
              double value);
/* A family with a single unlabelled sample: head + value. */
void prom_metric_u64(struct wbuf *out, enum prom_type type, const char *name, const char *help,
                     uint64_t value);
void prom_metric_f64(struct wbuf *out, enum prom_type type, const char *name, const char *help,
                     double value);

/* Whether name is a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*). */
int prom_name_valid(const char *name);

/* ---- histograms ---- */

#define PROM_HIST_MAX_BOUNDS 32
/* Request latencies: 1 ms to 10 s, 1-2.5-5 steps (13 bounds, then +Inf). */
#define PROM_LATENCY_NBOUNDS 13
extern const double prom_latency_bounds[PROM_LATENCY_NBOUNDS];

struct prom_hist {
    const double *bounds; /* nbounds increasing upper bounds; +Inf is implied */
    int nbounds;
    /* counts[i]: observations in (bounds[i-1], bounds[i]]; counts[nbounds]:
     * above the largest bound. Not cumulative: prom_hist_write sums. */
    atomic_uint_fast64_t counts[PROM_HIST_MAX_BOUNDS + 1];
    atomic_uint_fast64_t sum_nano; /* sum of the observed values x 1e9 */
};

/* bounds NULL: prom_latency_bounds. bounds must outlive h (a static table). */
void prom_hist_init(struct prom_hist *h, const double *bounds, int nbounds);
/* Record one value (seconds, for latency histograms). Lock-free and safe
 * from any thread; a negative or NaN value counts as 0. The sum is kept in
 * units of 1e-9 and wraps after 1.8e10 (570 years of latency). */
void prom_hist_observe(struct prom_hist *h, double value);
/* The samples name_bucket{labels,le="..."} (cumulative, ending with +Inf),
 * name_sum{labels} and name_count{labels}; the family's head (type
 * PROM_HISTOGRAM) is the caller's. */
void prom_hist_write(struct wbuf *out, const char *name, const struct prom_label *labels,
                     int nlabels, const struct prom_hist *h);

#endif
