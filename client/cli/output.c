/* SPDX-License-Identifier: MIT */
/* iommuctl's output: see output.h. */
#define _GNU_SOURCE /* vasprintf, open_memstream */
#include "output.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iommud_protocol.h>

#include "cli.h"

struct table {
	size_t ncols, ncells;
	char **cells;
};

static struct {
	bool json;
	int depth;
	bool comma[8];
	struct table *table; /* the text table of the current list, if any */
	int skip;	     /* text: depth of lists left out (in a table row, or JSON's only) */
	bool fields;	     /* text: "key  value" lines were printed, so a table needs a gap */
} out;

void output_use_json(void)
{
	out.json = true;
}

bool output_is_json(void)
{
	return out.json;
}

/* ---- failures ------------------------------------------------------------------------- */

void usage_error(const char *command, const char *fmt, ...)
{
	const char *name = command ? command : "";
	const char *sep = command ? " " : "";
	va_list ap;

	(void)fprintf(stderr, "iommuctl%s%s: ", sep, name);
	va_start(ap, fmt);
	(void)vfprintf(stderr, fmt, ap);
	va_end(ap);
	(void)fprintf(stderr, "\nTry 'iommuctl%s%s --help'.\n", sep, name);
	exit(EXIT_USAGE);
}

void fail(int status, const char *fmt, ...)
{
	va_list ap;

	(void)fputs("iommuctl: ", stderr);
	va_start(ap, fmt);
	(void)vfprintf(stderr, fmt, ap);
	va_end(ap);
	(void)fputc('\n', stderr);
	exit(status);
}

/* ---- plain text ----------------------------------------------------------------------- */

void out_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

void out_text(const char *fmt, ...)
{
	va_list ap;

	if (out.json)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

const char *fmt_size(char buf[24], uint64_t v)
{
	static const char *const units[] = {"", "K", "M", "G", "T", "P", "E"};
	uint64_t m = v;
	int e = 0, t = 0;

	while (e < 6 && m && !(m & 1023)) {
		m >>= 10;
		e++;
	}
	while (t < 6 && v >> (10 * (t + 1)))
		t++;
	if (m < 10000)
		(void)snprintf(buf, 24, "%" PRIu64 "%s", m, units[e]);
	else
		(void)snprintf(buf, 24, "%.1f%s", (double)v / (double)(1ull << (10 * t)), units[t]);
	return buf;
}

/* ---- JSON ----------------------------------------------------------------------------- */

/* Invalid UTF-8 (a cgroup name may hold any bytes) becomes U+FFFD, so the output stays JSON. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n = *s >= 0xf0 ? 4 : *s >= 0xe0 ? 3 : 2;
	unsigned char lo = 0x80, hi = 0xbf;

	if (*s < 0xc2 || *s > 0xf4)
		return 0;
	if (*s == 0xe0)
		lo = 0xa0;
	else if (*s == 0xed)
		hi = 0x9f;
	else if (*s == 0xf0)
		lo = 0x90;
	else if (*s == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

static void js_string(const char *str)
{
	static const char plain[] = "\"\\\b\f\n\r\t", escaped[] = "\"\\bfnrt";
	const unsigned char *s = (const unsigned char *)str;
	const char *special;
	size_t n;

	(void)putchar('"');
	while (*s) {
		if ((special = strchr(plain, *s))) {
			(void)printf("\\%c", escaped[special - plain]);
			s++;
		} else if (*s < 0x20) {
			(void)printf("\\u%04x", *s++);
		} else if (*s < 0x80) {
			(void)putchar(*s++);
		} else if ((n = utf8_len(s))) {
			fwrite(s, 1, n, stdout);
			s += n;
		} else {
			(void)fputs("\\ufffd", stdout);
			s++;
		}
	}
	(void)putchar('"');
}

static void js_key(const char *key)
{
	if (out.comma[out.depth])
		(void)putchar(',');
	out.comma[out.depth] = true;
	if (key) {
		js_string(key);
		(void)putchar(':');
	}
}

static void js_open(const char *key, char bracket)
{
	js_key(key);
	(void)putchar(bracket);
	out.comma[++out.depth] = false;
}

static void js_close(char bracket)
{
	(void)putchar(bracket);
	if (--out.depth == 0)
		(void)putchar('\n');
}

static void js_value(int kind, uint64_t v, const char *s)
{
	if ((kind & 15) == STR)
		js_string(s);
	else if ((kind & 15) == BOOL)
		(void)fputs(v ? "true" : "false", stdout);
	else
		(void)printf("%" PRIu64, v);
}

/* ---- text tables ---------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static void cell(struct table *t, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	t->cells = realloc(t->cells, (t->ncells + 1) * sizeof(*t->cells));
	if (n < 0 || !t->cells)
		fail(EXIT_LOCAL, "out of memory");
	t->cells[t->ncells++] = s;
}

static struct table *table_new(const char *header)
{
	struct table *t = calloc(1, sizeof(*t));

	if (!t)
		fail(EXIT_LOCAL, "out of memory");
	for (const char *h = header; *h; h += strcspn(h, " "), h += *h == ' ') {
		cell(t, "%.*s", (int)strcspn(h, " "), h);
		t->ncols++;
	}
	return t;
}

/* Prints and frees the table: columns as wide as their widest cell, two spaces apart. */
static void table_print(struct table *t)
{
	size_t width[16] = {};

	for (size_t i = 0; i < t->ncells; i++) {
		size_t len = strlen(t->cells[i]);

		if (len > width[i % t->ncols])
			width[i % t->ncols] = len;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		bool last = i % t->ncols == t->ncols - 1;

		(void)printf("%-*s%s", last ? 0 : (int)width[i % t->ncols], t->cells[i],
			     last ? "\n" : "  ");
		free(t->cells[i]);
	}
	free(t->cells);
	free(t);
}

/* ---- the structure -------------------------------------------------------------------- */

void obj_begin(const char *key)
{
	if (out.json)
		js_open(key, '{');
}

void obj_end(void)
{
	if (out.json)
		js_close('}');
}

void out_empty(void)
{
	obj_begin(NULL);
	obj_end();
}

void list_begin(const char *key, const char *header)
{
	if (out.json) {
		js_open(key, '[');
	} else if (out.table || out.skip || !header) {
		out.skip++;
	} else {
		if (out.fields)
			(void)putchar('\n');
		out.table = table_new(header);
	}
}

void list_end(void)
{
	if (out.json) {
		js_close(']');
	} else if (out.skip) {
		out.skip--;
	} else {
		table_print(out.table);
		out.table = NULL;
	}
}

/* The text of a field of a numeric kind. */
static const char *text_value(char buf[24], int kind, uint64_t v)
{
	if ((kind & 15) == HEX)
		(void)snprintf(buf, 24, "0x%" PRIx64, v);
	else if ((kind & 15) == SIZE)
		fmt_size(buf, v);
	else if ((kind & 15) == BOOL)
		return v ? "yes" : "no";
	else
		(void)snprintf(buf, 24, "%" PRIu64, v);
	return buf;
}

void field(const char *key, int kind, uint64_t v, const char *s)
{
	char buf[24], label[32];

	if (out.json) {
		if (kind & TEXT_ONLY)
			return;
		js_key(key);
		js_value(kind, v, s);
		return;
	}
	if (kind & JSON_ONLY || out.skip)
		return;
	if (s && !*s)
		s = "-";
	else if (!s)
		s = text_value(buf, kind, v);
	if (kind & BARE) {
		(void)printf("%s\n", s);
		return;
	}
	if (out.table) {
		cell(out.table, "%s", s);
		return;
	}
	(void)snprintf(label, sizeof(label), "%s", key ? key : "");
	for (char *u = label; (u = strchr(u, '_'));)
		*u = ' ';
	(void)printf("%-20s %s\n", label, s);
	out.fields = true;
}

void field_strings(const char *key, char *const *items, size_t n)
{
	char *s = NULL;
	size_t len;
	FILE *f;

	if (out.json) {
		js_open(key, '[');
		for (size_t i = 0; i < n; i++)
			field(NULL, STR, 0, items[i]);
		js_close(']');
		return;
	}
	f = open_memstream(&s, &len);
	if (!f)
		fail(EXIT_LOCAL, "out of memory");
	for (size_t i = 0; i < n; i++)
		(void)fprintf(f, "%s%s", i ? "," : "", items[i]);
	if (fclose(f))
		fail(EXIT_LOCAL, "out of memory");
	field(key, STR, 0, s);
	free(s);
}

void field_range(uint64_t start, uint64_t last)
{
	/* The whole 64-bit space is one byte more than a uint64_t counts. */
	bool all = start == 0 && last == UINT64_MAX;

	obj_begin(NULL);
	field("start", HEX, start, NULL);
	field("last", HEX, last, NULL);
	field("size", SIZE | TEXT_ONLY, last - start + 1, all ? "16E" : NULL);
	obj_end();
}

/* ---- histograms ----------------------------------------------------------------------- */

#define HIST_BAR 52 /* bpftrace's width */

/* A power of two in ns, as bpftrace writes one: 512, 4K, 2M, 1G. */
static const char *fmt_pow2(char buf[24], unsigned shift)
{
	static const char units[] = " KMGT";
	unsigned unit = shift / 10 < 4 ? shift / 10 : 4;

	(void)snprintf(buf, 24, "%llu%.*s", 1ull << (shift - 10 * unit), unit ? 1 : 0,
		       &units[unit]);
	return buf;
}

/* The schema's last bucket: it holds everything from 2^36 ns (about 69 s) up. */
#define HIST_OPEN_BUCKET IOMMUD_HISTOGRAM_OPEN_BUCKET

/* Bucket i's count, the open-ended one holding any a newer daemon keeps beyond it. */
static uint64_t hist_bucket(const uint64_t *buckets, size_t n, size_t i)
{
	uint64_t count = buckets[i];

	for (size_t j = i + 1; i == HIST_OPEN_BUCKET && j < n; j++)
		count += buckets[j];
	return count;
}

static void hist_json(const char *key, const uint64_t *buckets, size_t n, uint64_t count,
		      uint64_t sum_ns)
{
	obj_begin(key);
	field("count", NUM, count, NULL);
	field("sum_ns", NUM, sum_ns, NULL);
	list_begin("buckets", NULL);
	for (size_t i = 0; i < n; i++) {
		uint64_t in_bucket = hist_bucket(buckets, n, i);

		if (!in_bucket)
			continue;
		obj_begin(NULL);
		field("low_ns", NUM, i ? 1ull << i : 0, NULL);
		if (i < HIST_OPEN_BUCKET)
			field("high_ns", NUM, 2ull << i, NULL);
		field("count", NUM, in_bucket, NULL);
		obj_end();
	}
	list_end();
	obj_end();
}

/* "@name: 12 calls, mean 8.1us", or without buckets, counted but not timed. */
static void hist_title(const char *name, size_t n, uint64_t count, uint64_t sum_ns)
{
	static const char *const units[] = {"ns", "us", "ms", "s"};
	double mean = count ? (double)sum_ns / (double)count : 0;
	unsigned unit = 0;

	(void)printf("%s@%s: %" PRIu64 " call%s", out.fields ? "\n" : "", name, count,
		     count == 1 ? "" : "s");
	if (!n) {
		(void)printf(" (counted, not timed)\n");
		return;
	}
	while (unit < 3 && mean >= 1000) {
		mean /= 1000;
		unit++;
	}
	(void)printf(", mean %.1f%s\n", mean, units[unit]);
}

void field_histogram(const char *key, const char *name, const uint64_t *buckets, size_t n,
		     uint64_t count, uint64_t sum_ns)
{
	size_t first = 0, last;
	uint64_t most = 0;

	n = n < HIST_OPEN_BUCKET + 1 ? n : HIST_OPEN_BUCKET + 1;
	if (out.json) {
		hist_json(key, buckets, n, count, sum_ns);
		return;
	}
	if (out.table)
		return;
	last = n;
	while (first < n && !hist_bucket(buckets, n, first))
		first++;
	while (last > first && !hist_bucket(buckets, n, last - 1))
		last--;
	for (size_t i = first; i < last; i++)
		most = hist_bucket(buckets, n, i) > most ? hist_bucket(buckets, n, i) : most;
	hist_title(name, n, count, sum_ns);
	for (size_t i = first; i < last; i++) {
		char low[24], high[24], range[56];
		uint64_t in_bucket = hist_bucket(buckets, n, i);
		int bar = (int)((double)in_bucket * HIST_BAR / (double)most);

		(void)snprintf(range, sizeof(range), "[%s, %s)",
			       i ? fmt_pow2(low, (unsigned)i) : "0",
			       i < HIST_OPEN_BUCKET ? fmt_pow2(high, (unsigned)i + 1) : "+inf");
		(void)printf("%-20s %8" PRIu64 " |%.*s%*s|\n", range, in_bucket, bar,
			     "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@", HIST_BAR - bar,
			     "");
	}
	out.fields = true;
}
