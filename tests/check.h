/* SPDX-License-Identifier: MIT */
/*
 * Assertions for iommud's C tests. A failed check prints where and what, then aborts, so ctest
 * reports the test as failed and a core or sanitizer report shows the stack.
 */
#ifndef IOMMUD_TESTS_CHECK_H
#define IOMMUD_TESTS_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* Compares two integers and prints both on failure. */
#define CHECK_EQ(a, b)                                                                       \
	do {                                                                                 \
		long long check_a_ = (long long)(a), check_b_ = (long long)(b);              \
		if (check_a_ != check_b_) {                                                  \
			fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n",    \
				__FILE__, __LINE__, #a, #b, check_a_, check_b_);             \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* kernel-helper's description of its last failure, when the test links kernel-helper. */
const char *kh_last_error(void) __attribute__((weak));

static inline const char *check_detail(void)
{
	return kh_last_error ? kh_last_error() : "";
}

/* For calls returning 0 or a negative errno: prints the errno name on failure, and what
 * kernel-helper said. */
#define CHECK_OK(expr)                                                                       \
	do {                                                                                 \
		long long check_rc_ = (long long)(expr);                                     \
		if (check_rc_ < 0) {                                                         \
			fprintf(stderr, "%s:%d: %s failed: %s; %s\n", __FILE__, __LINE__,     \
				#expr, strerror((int)-check_rc_), check_detail());           \
			abort();                                                             \
		}                                                                            \
	} while (0)

#endif
