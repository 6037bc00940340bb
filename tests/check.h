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

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			(void)fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,     \
				      #cond);                                                      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Whether an integer expression has a signed type, so a failed CHECK_EQ prints it as written:
 * a uint64_t above INT64_MAX is no negative number. */
#define check_signed_(x)                                                                           \
	_Generic((x), signed char : 1, short : 1, int : 1, long : 1, long long : 1, default : 0)

static inline void __attribute__((noreturn))
check_eq_failed(const char *file, int line, const char *a_text, const char *b_text,
		unsigned long long a, int a_signed, unsigned long long b, int b_signed)
{
	char a_buf[48], b_buf[48];

	if (a_signed)
		(void)snprintf(a_buf, sizeof(a_buf), "%lld", (long long)a);
	else
		(void)snprintf(a_buf, sizeof(a_buf), "%llu = 0x%llx", a, a);
	if (b_signed)
		(void)snprintf(b_buf, sizeof(b_buf), "%lld", (long long)b);
	else
		(void)snprintf(b_buf, sizeof(b_buf), "%llu = 0x%llx", b, b);
	(void)fprintf(stderr, "%s:%d: check failed: %s == %s (%s != %s)\n", file, line, a_text,
		      b_text, a_buf, b_buf);
	abort();
}

/* Compares two integers, as 64-bit patterns, and prints both on failure. */
#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		unsigned long long check_a_ = (unsigned long long)(a),                             \
				   check_b_ = (unsigned long long)(b);                             \
		if (check_a_ != check_b_)                                                          \
			check_eq_failed(__FILE__, __LINE__, #a, #b, check_a_, check_signed_(a),    \
					check_b_, check_signed_(b));                               \
	} while (0)

/* Compares two strings and prints both on failure. */
#define CHECK_STREQ(a, b)                                                                          \
	do {                                                                                       \
		const char *check_a_ = (a), *check_b_ = (b);                                       \
		if (strcmp(check_a_, check_b_) != 0) {                                             \
			(void)fprintf(stderr,                                                      \
				      "%s:%d: check failed: %s == %s (\"%s\" != \"%s\")\n",        \
				      __FILE__, __LINE__, #a, #b, check_a_, check_b_);             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* kernel-helper's description of its last failure, when the test links kernel-helper. */
const char *kh_last_error(void) __attribute__((weak));

static inline const char *check_detail(void)
{
	return kh_last_error ? kh_last_error() : "";
}

/* For calls returning 0 or a negative errno: prints the errno name on failure, and what
 * kernel-helper said. */
#define CHECK_OK(expr)                                                                             \
	do {                                                                                       \
		long long check_rc_ = (long long)(expr);                                           \
		if (check_rc_ < 0) {                                                               \
			(void)fprintf(stderr, "%s:%d: %s failed: %s; %s\n", __FILE__, __LINE__,    \
				      #expr, strerror((int)-check_rc_), check_detail());           \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#endif
