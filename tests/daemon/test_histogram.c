// SPDX-License-Identifier: MIT
/* The histogram arithmetic every latency iommud reports shares: which bucket a duration falls
 * in (the bounds the schema's Histogram states), and what a reply carries of the buckets. */
#include <linux/types.h>
#include <stdint.h>

#include "harness.h"
#include "histogram.h"

/* Bucket 0 holds 0 and 1; bucket i >= 1 holds [2^i, 2^(i+1)). */
TEST(bucket_bounds)
{
	CHECK_EQ(iommud_hist_bucket(0), 0);
	CHECK_EQ(iommud_hist_bucket(1), 0);
	CHECK_EQ(iommud_hist_bucket(2), 1);
	CHECK_EQ(iommud_hist_bucket(3), 1);
	for (unsigned i = 2; i < IOMMUD_HIST_BUCKETS; i++) {
		CHECK_EQ(iommud_hist_bucket(1ull << i), i);
		CHECK_EQ(iommud_hist_bucket((1ull << i) - 1), i - 1);
		CHECK_EQ(iommud_hist_bucket((1ull << i) + 1), i);
	}
}

/* Everything past the last bucket's start stays in it. */
TEST(bucket_overflow)
{
	CHECK_EQ(iommud_hist_bucket(1ull << (IOMMUD_HIST_BUCKETS - 1)), IOMMUD_HIST_BUCKETS - 1);
	CHECK_EQ(iommud_hist_bucket(1ull << 50), IOMMUD_HIST_BUCKETS - 1);
	CHECK_EQ(iommud_hist_bucket(UINT64_MAX), IOMMUD_HIST_BUCKETS - 1);
}

TEST(add_counts_and_sums)
{
	struct iommud_hist h = {0};

	histogram_add(&h, 1000);
	histogram_add(&h, 1023);
	histogram_add(&h, 1024);
	CHECK_EQ(h.count, 3);
	CHECK_EQ(h.sum_ns, 3047);
	CHECK_EQ(h.buckets[9], 2);
	CHECK_EQ(h.buckets[10], 1);
	CHECK_EQ(h.bytes, 0);
}

/* A reply leaves out the empty buckets at the end, and only those. */
TEST(used_buckets)
{
	struct iommud_hist h = {0};

	CHECK_EQ(histogram_used_buckets(&h), 0);
	histogram_add(&h, 5);
	CHECK_EQ(histogram_used_buckets(&h), 3);
	histogram_add(&h, 0);
	CHECK_EQ(histogram_used_buckets(&h), 3);
	histogram_add(&h, UINT64_MAX);
	CHECK_EQ(histogram_used_buckets(&h), IOMMUD_HIST_BUCKETS);
}

/* The clock moves forward. */
TEST(monotonic)
{
	uint64_t a = monotonic_ns(), b = monotonic_ns();

	CHECK(a > 0 && b >= a);
}
