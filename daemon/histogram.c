// SPDX-License-Identifier: MIT
#include "histogram.h"

#include <time.h>

#include <iommud_protocol.h>

/* What clients read as the open-ended bucket is the last one kept here. */
_Static_assert(IOMMUD_HIST_BUCKETS == IOMMUD_HISTOGRAM_OPEN_BUCKET + 1,
	       "the schema's histogram and the probes' buckets differ");

uint64_t monotonic_ns(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void histogram_add(struct iommud_hist *h, uint64_t ns)
{
	histogram_add_n(h, ns, 1);
}

void histogram_add_n(struct iommud_hist *h, uint64_t ns, uint64_t n)
{
	h->buckets[iommud_hist_bucket(ns)] += n;
	h->count += n;
	h->sum_ns += ns * n;
}

void histogram_add_shared(struct iommud_hist *h, uint64_t ns, uint64_t n)
{
	__atomic_fetch_add(&h->buckets[iommud_hist_bucket(ns)], n, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->count, n, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->sum_ns, ns * n, __ATOMIC_RELAXED);
}

size_t histogram_used_buckets(const struct iommud_hist *h)
{
	size_t n = IOMMUD_HIST_BUCKETS;

	while (n && !h->buckets[n - 1])
		n--;
	return n;
}
