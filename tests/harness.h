/* SPDX-License-Identifier: MIT */
/*
 * A test harness in the spirit of the kernel's selftest harness: a test binary is a set of
 * cases, each registered by the macro that defines it, so one binary can list its cases, run
 * one by name, or run them all with each in a child process of its own.
 *
 *	TEST(name) { ... }                      a case on its own
 *	FIXTURE(fix) { members };               state that cases of fix share the shape of
 *	FIXTURE_SETUP(fix) { ... }              fills self before each case of fix
 *	FIXTURE_TEARDOWN(fix) { ... }           releases it after each case its setup finished
 *	                                        for, unless a failed check aborted the case
 *	FIXTURE_VARIANT(fix) { members };       what differs between the variants of fix
 *	FIXTURE_VARIANT_ADD(fix, var) { ... };  one variant: each case of fix runs once per variant
 *	TEST_F(fix, name) { ... }               a case of fix; self and variant are in scope
 *	HARNESS_OPTION(name, "VALUE", help) { ... }  an option --name VALUE of this binary, read
 *	                                        (as value) before any case runs
 *
 * A case is called "name", or "var.name" when its fixture has variants; the ctest test of a
 * case is "BINARY.CASE" (tests/harness.cmake). A check that fails aborts the case (check.h);
 * SKIP() ends it with exit status 77, which ctest reports as skipped. harness.c holds main:
 * BINARY --help says how to run it.
 */
#ifndef IOMMUD_TESTS_HARNESS_H
#define IOMMUD_TESTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

/* What the macros register; read by harness.c only. */
struct harness_variant {
	const char *name;
	const void *data;
	int line; /* variants run in the order they are written */
	struct harness_variant *next;
};

struct harness_fixture {
	struct harness_variant *variants; /* NULL: the fixture has none */
	void (*setup)(void *self, const void *variant);
	void (*teardown)(void *self, const void *variant);
};

struct harness_case {
	const char *name;
	struct harness_fixture *fixture; /* NULL for TEST */
	size_t self_size;
	void (*run)(void *self, const void *variant);
	int line; /* cases run in the order they are written */
	struct harness_case *next;
};

struct harness_option {
	const char *name;
	const char *value_name;
	const char *help;
	void (*set)(const char *value);
	struct harness_option *next;
};

void harness_register_case(struct harness_case *c);
void harness_register_variant(struct harness_fixture *f, struct harness_variant *v);
void harness_register_option(struct harness_option *o);

/* Ends the running case as skipped: prints why, runs the fixture's teardown, exits 77. */
void harness_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
#define SKIP(...) harness_skip(__VA_ARGS__)

/* A number given to option, or exit 2 with a message saying what was wrong. */
uint64_t harness_parse_u64(const char *option, const char *value);

#define HARNESS_UNUSED_	     __attribute__((unused))
#define HARNESS_CONSTRUCTOR_ __attribute__((constructor))

#define TEST(test)                                                                                 \
	static void case_##test(void);                                                             \
	static void harness_run_##test(void *self HARNESS_UNUSED_,                                 \
				       const void *variant HARNESS_UNUSED_)                        \
	{                                                                                          \
		case_##test();                                                                     \
	}                                                                                          \
	static struct harness_case harness_case_##test = {                                         \
		.name = #test, .run = harness_run_##test, .line = __LINE__};                       \
	static HARNESS_CONSTRUCTOR_ void harness_add_##test(void)                                  \
	{                                                                                          \
		harness_register_case(&harness_case_##test);                                       \
	}                                                                                          \
	static void case_##test(void)

#define FIXTURE(fix)                                                                               \
	struct fixture_##fix;                                                                      \
	struct variant_##fix;                                                                      \
	static void fixture_##fix##_setup(struct fixture_##fix *self,                              \
					  const struct variant_##fix *variant);                    \
	static void fixture_##fix##_teardown(struct fixture_##fix *self,                           \
					     const struct variant_##fix *variant);                 \
	static void harness_setup_##fix(void *self, const void *variant)                           \
	{                                                                                          \
		fixture_##fix##_setup(self, variant);                                              \
	}                                                                                          \
	static void harness_teardown_##fix(void *self, const void *variant)                        \
	{                                                                                          \
		fixture_##fix##_teardown(self, variant);                                           \
	}                                                                                          \
	static struct harness_fixture harness_fixture_##fix = {                                    \
		.setup = harness_setup_##fix, .teardown = harness_teardown_##fix};                 \
	struct fixture_##fix

#define FIXTURE_SETUP(fix)                                                                         \
	static void fixture_##fix##_setup(struct fixture_##fix *self HARNESS_UNUSED_,              \
					  const struct variant_##fix *variant HARNESS_UNUSED_)

#define FIXTURE_TEARDOWN(fix)                                                                      \
	static void fixture_##fix##_teardown(struct fixture_##fix *self HARNESS_UNUSED_,           \
					     const struct variant_##fix *variant HARNESS_UNUSED_)

#define FIXTURE_VARIANT(fix) struct variant_##fix

#define FIXTURE_VARIANT_ADD(fix, var)                                                              \
	static const struct variant_##fix variant_##fix##_##var;                                   \
	static struct harness_variant harness_variant_##fix##_##var = {                            \
		.name = #var, .data = &variant_##fix##_##var, .line = __LINE__};                   \
	static HARNESS_CONSTRUCTOR_ void harness_add_##fix##_##var(void)                           \
	{                                                                                          \
		harness_register_variant(&harness_fixture_##fix, &harness_variant_##fix##_##var);  \
	}                                                                                          \
	static const struct variant_##fix variant_##fix##_##var =

#define TEST_F(fix, test)                                                                          \
	static void case_##fix##_##test(struct fixture_##fix *self,                                \
					const struct variant_##fix *variant);                      \
	static void harness_run_##fix##_##test(void *self, const void *variant)                    \
	{                                                                                          \
		case_##fix##_##test(self, variant);                                                \
	}                                                                                          \
	static struct harness_case harness_case_##fix##_##test = {                                 \
		.name = #test,                                                                     \
		.fixture = &harness_fixture_##fix,                                                 \
		.self_size = sizeof(struct fixture_##fix),                                         \
		.run = harness_run_##fix##_##test,                                                 \
		.line = __LINE__,                                                                  \
	};                                                                                         \
	static HARNESS_CONSTRUCTOR_ void harness_add_##fix##_##test(void)                          \
	{                                                                                          \
		harness_register_case(&harness_case_##fix##_##test);                               \
	}                                                                                          \
	static void case_##fix##_##test(struct fixture_##fix *self HARNESS_UNUSED_,                \
					const struct variant_##fix *variant HARNESS_UNUSED_)

#define HARNESS_OPTION(oname, value_text, help_text)                                               \
	static void harness_set_##oname(const char *value);                                        \
	static struct harness_option harness_option_##oname = {.name = #oname,                     \
							       .value_name = value_text,           \
							       .help = help_text,                  \
							       .set = harness_set_##oname};        \
	static HARNESS_CONSTRUCTOR_ void harness_add_option_##oname(void)                          \
	{                                                                                          \
		harness_register_option(&harness_option_##oname);                                  \
	}                                                                                          \
	static void harness_set_##oname(const char *value HARNESS_UNUSED_)

#endif
