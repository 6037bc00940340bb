/* SPDX-License-Identifier: MIT */
/*
 * The clock of iommud's benchmarks (kh-iommufd-bench here, iommud-bench in tests/bench/), so
 * that their figures are taken the same way.
 */
#ifndef IOMMUD_BENCH_CLOCK_H
#define IOMMUD_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds: differences of two calls are durations. */
static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
