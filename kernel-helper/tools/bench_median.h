/* SPDX-License-Identifier: MIT */
/*
 * The median of iommud's benchmarks (kh-bench here, iommud-bench, iommud-probes-bench and
 * iommud-survival-bench in tests/bench/), so that each reports its repeated runs alike.
 */
#ifndef IOMMUD_BENCH_MEDIAN_H
#define IOMMUD_BENCH_MEDIAN_H

#include <stddef.h>
#include <stdlib.h>

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Sorts v's n (at least 1) figures, so that v[0] and v[n - 1] are the least and the most, and
 * returns their median: the mean of the middle two where n is even. */
static inline double bench_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), bench_cmp_double);
	return (v[(n - 1) / 2] + v[n / 2]) / 2;
}

#endif
