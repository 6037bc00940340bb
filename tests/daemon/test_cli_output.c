/* SPDX-License-Identifier: MIT */
/*
 * iommuctl's output module drawing latency histograms, without a daemon: the shapes no daemon
 * in a test produces (a call past 69 s, counts from the tracepoint tier without timing).
 */
#define _GNU_SOURCE /* memfd_create */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "output.h"

/* What fn wrote to standard output, in buf. */
static void capture(void (*fn)(void), char *buf, size_t size)
{
	int saved = dup(STDOUT_FILENO), fd = memfd_create("stdout", 0);
	ssize_t n;

	CHECK(saved >= 0 && fd >= 0);
	(void)fflush(stdout);
	CHECK(dup2(fd, STDOUT_FILENO) == STDOUT_FILENO);
	fn();
	(void)fflush(stdout);
	CHECK(dup2(saved, STDOUT_FILENO) == STDOUT_FILENO);
	n = pread(fd, buf, size - 1, 0);
	CHECK(n >= 0);
	buf[n] = '\0';
	(void)close(fd);
	(void)close(saved);
}

/* One call in bucket 3 and two in the last, open-ended one (from 2^36 ns up). */
static void draw_open_ended(void)
{
	uint64_t buckets[37] = {[3] = 1, [36] = 2};

	obj_begin(NULL);
	field_histogram("latency", "rpc[map]", buckets, 37, 3, 3ull << 36);
	obj_end();
}

static void draw_untimed(void)
{
	obj_begin(NULL);
	field_histogram("latency", "map_latency[map]", NULL, 0, 3, 0);
	obj_end();
}

TEST(open_ended_bucket_text)
{
	char out[4096];

	capture(draw_open_ended, out, sizeof(out));
	CHECK(strstr(out, "@rpc[map]: 3 calls, mean ") != NULL);
	CHECK(strstr(out, "[8, 16)") != NULL);
	CHECK(strstr(out, "[64G, +inf)") != NULL);
	CHECK(strstr(out, "128G") == NULL);
}

TEST(open_ended_bucket_json)
{
	char out[4096];

	output_use_json();
	capture(draw_open_ended, out, sizeof(out));
	CHECK(strstr(out, "{\"low_ns\":8,\"high_ns\":16,\"count\":1}") != NULL);
	CHECK(strstr(out, "{\"low_ns\":68719476736,\"count\":2}") != NULL);
}

TEST(untimed_text)
{
	char out[4096];

	capture(draw_untimed, out, sizeof(out));
	CHECK(strcmp(out, "@map_latency[map]: 3 calls (counted, not timed)\n") == 0);
}

TEST(untimed_json)
{
	char out[4096];

	output_use_json();
	capture(draw_untimed, out, sizeof(out));
	CHECK(strcmp(out, "{\"latency\":{\"count\":3,\"sum_ns\":0,\"buckets\":[]}}\n") == 0);
}
