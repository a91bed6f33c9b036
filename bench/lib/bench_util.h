/* bench_util: what every benchmark program needs around its measurement:
 * a monotonic clock, min/median of repetitions, and removal of its scratch
 * directory. Benchmarks report figures; nothing here asserts. */
#ifndef PIPEPS_BENCH_UTIL_H
#define PIPEPS_BENCH_UTIL_H

/* CLOCK_MONOTONIC in seconds. */
double bench_now_s(void);
/* qsort comparator for doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);
/* Median and minimum of v[0..n-1] (n >= 1); v is left unchanged. */
double bench_median(const double *v, int n);
double bench_minimum(const double *v, int n);
/* Remove dir and everything below it (best effort). */
void bench_rm_rf(const char *dir);

#endif
