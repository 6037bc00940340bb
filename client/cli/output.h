/* SPDX-License-Identifier: MIT */
/*
 * Every byte iommuctl writes goes through here: results, help, and the messages of failures.
 *
 * Commands describe what they show once, as fields, lists and objects; the output takes the
 * form asked for. Text: "key  value" lines, and lists as aligned tables. JSON (--json): one
 * object, lists as arrays of objects, numbers as numbers, strings escaped (invalid UTF-8 as
 * U+FFFD). A result a script captures (a new domain's id, a mapping's IOVA) is a JSON field
 * and, in text, a bare line of its own (BARE).
 *
 * Ownership: a text table's cells belong to this module from list_begin to list_end, which
 * prints and frees them.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum field_kind {
	NUM,
	HEX,  /* an address: 0x... in text */
	SIZE, /* bytes: exact K/M/G in text */
	BOOL,
	STR,
	TEXT_ONLY = 16, /* flags: a field of one form only */
	JSON_ONLY = 32,
	BARE = 64, /* a result a script captures: in text, its value alone on a line */
};

void output_use_json(void);
bool output_is_json(void);

/* The whole output, or an object inside it (text shows its fields among the others). */
void obj_begin(const char *key);
void obj_end(void);

/* A list; header names the text table's columns, separated by spaces. A list without a
 * header is JSON's only. Lists inside a text table's rows are left out. */
void list_begin(const char *key, const char *header);
void list_end(void);

/* One field: v for the numeric kinds, s for STR; s also replaces the text of the others, and
 * an empty s shows as "-". In a JSON list, key is NULL. */
void field(const char *key, int kind, uint64_t v, const char *s);
/* A list of strings: a JSON array, or one text field with the items separated by commas. */
void field_strings(const char *key, char *const *items, size_t n);
/* An address range as an object: start, last, and in text its size. */
void field_range(uint64_t start, uint64_t last);

/* A latency histogram in the schema's shape (bucket 0: 0 and 1 ns; bucket i: [2^i, 2^(i+1))
 * ns; the last, 36, open-ended: everything from 2^36 ns up). JSON: an object of count, sum_ns
 * and the non-empty buckets with their bounds (low_ns, and high_ns but for the open-ended
 * one). Text, as bpftrace's hist() draws one: a title, "@name: 12 calls, mean 8.1us", then a
 * line per bucket from the first non-empty to the last, its range in ns ([4K, 8K), K = 1024;
 * [64G, +inf)), its count and a bar of @ scaled to the largest count; drawn wherever it is but
 * in a table's row. A histogram without buckets was counted but not timed (the tracepoint
 * probe tier, and the driver layer without probe-driver-latency): its title says so,
 * "@name: 3 calls (counted, not timed)". */
void field_histogram(const char *key, const char *name, const uint64_t *buckets, size_t n,
		     uint64_t count, uint64_t sum_ns);

/* The result of a change with nothing to show: {} in JSON, nothing in text. */
void out_empty(void);

/* Text the text form alone shows. */
__attribute__((format(printf, 1, 2))) void out_text(const char *fmt, ...);
/* Text both forms show: help, version. */
__attribute__((format(printf, 1, 2))) void out_printf(const char *fmt, ...);

/* Exact while that stays short, so what is shown can be given back (2M, 12K, 4097); else to
 * a tenth of the largest unit (255.9T). */
const char *fmt_size(char buf[24], uint64_t v);

/* Failures, on standard error, end the run with their exit status. A usage error names the
 * command (NULL: iommuctl itself) and points to its --help. */
__attribute__((format(printf, 2, 3), noreturn)) void usage_error(const char *command,
								 const char *fmt, ...);
__attribute__((format(printf, 2, 3), noreturn)) void fail(int status, const char *fmt, ...);
