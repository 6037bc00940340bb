// SPDX-License-Identifier: MIT
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#define SD_JOURNAL_SUPPRESS_LOCATION /* the fields say where; CODE_LINE= would be noise */
#include <systemd/sd-journal.h>

#include "text.h"

#define LINE_MAX_BYTES 2048
#define FIELDS_MAX     8 /* per entry, beside the priority, identifier and message */

/* Read by every loop thread: atomic, as is to_journal below. */
static int max_level = LOG_INFO;

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",	  [LOG_CRIT] = "crit",
	[LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

void log_set_level(int level)
{
	__atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int log_get_level(void)
{
	return __atomic_load_n(&max_level, __ATOMIC_RELAXED);
}

int log_parse_level(const char *name)
{
	for (int level = LOG_ERR; level <= LOG_DEBUG; level++)
		if (strcmp(name, level_names[level]) == 0)
			return level;
	return -EINVAL;
}

/* "NAME=value" for the journal, allocated; NULL when out of memory. */
static char *journal_field(const char *name, const char *value)
{
	size_t name_len = strlen(name), value_len = strlen(value);
	char *text = malloc(name_len + 1 + value_len + 1);

	if (text) {
		memcpy(text, name, name_len);
		text[name_len] = '=';
		memcpy(text + name_len + 1, value, value_len + 1);
	}
	return text;
}

/* The entry in the journal, fields as given; -errno when it could not be sent. */
static int send_journal(int level, const struct log_field *fields, const char *message)
{
	const char priority[] = {(char)('0' + level), '\0'};
	struct iovec iov[FIELDS_MAX + 3];
	char *texts[FIELDS_MAX + 3];
	size_t n = 0;
	int rc = 0;

	texts[n++] = journal_field("PRIORITY", priority);
	texts[n++] = journal_field("SYSLOG_IDENTIFIER", "iommud");
	texts[n++] = journal_field("MESSAGE", message);
	for (size_t i = 0; fields && fields[i].name && n < FIELDS_MAX + 3; i++)
		texts[n++] = journal_field(fields[i].name, fields[i].value);
	for (size_t i = 0; i < n; i++) {
		if (!texts[i])
			rc = -ENOMEM;
		else
			iov[i] = (struct iovec){.iov_base = texts[i], .iov_len = strlen(texts[i])};
	}
	if (rc == 0)
		rc = sd_journal_sendv(iov, (int)n);
	for (size_t i = 0; i < n; i++)
		free(texts[i]);
	return rc;
}

/* The field whose placeholder ("{NAME}") starts at s, its length in *ret_len; NULL if none. */
static const struct log_field *placeholder_at(const char *s, const struct log_field *fields,
					      size_t *ret_len)
{
	for (size_t i = 0; s[0] == '{' && fields && fields[i].name; i++) {
		size_t n = strlen(fields[i].name);

		if (strncmp(s + 1, fields[i].name, n) == 0 && s[n + 1] == '}') {
			*ret_len = n + 2;
			return &fields[i];
		}
	}
	return NULL;
}

/* line with each placeholder replaced by its field's value, allocated; NULL when out of
 * memory. */
static char *fill_placeholders(const char *line, const struct log_field *fields)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	for (const char *p = line; *p;) {
		size_t n;
		const struct log_field *field = placeholder_at(p, fields, &n);

		if (field) {
			(void)fputs(field->value, f);
			p += n;
		} else {
			(void)fputc(*p++, f);
		}
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

/* The entry as one line on stderr, the fields' values in place of their placeholders. */
static void write_stderr(int level, bool to_journal, const struct log_field *fields,
			 const char *line)
{
	char *filled = fields ? fill_placeholders(line, fields) : NULL;
	const char *text = filled ? filled : line;
	char escaped[4 * LINE_MAX_BYTES];
	size_t len = utf8_cut(text, strlen(text), LINE_MAX_BYTES - 1);

	(void)text_escape(escaped, sizeof(escaped), text, len, true);
	free(filled);
	/* One write per line, so lines of concurrent writers (tests) never interleave. */
	if (to_journal)
		(void)fprintf(stderr, "<%d>%s\n", level, escaped);
	else
		(void)fprintf(stderr, "iommud: %s: %s\n", level_names[level], escaped);
}

void log_struct(int level, const struct log_field *fields, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_structv(level, fields, fmt, ap);
	va_end(ap);
}

void log_structv(int level, const struct log_field *fields, const char *fmt, va_list ap)
{
	/* Decided once: the daemon's stderr does not change from journal to terminal. */
	static int journal_known = -1;
	char line[LINE_MAX_BYTES], escaped[4 * LINE_MAX_BYTES];
	int n, to_journal = __atomic_load_n(&journal_known, __ATOMIC_RELAXED);

	if (level > log_get_level())
		return;
	if (to_journal < 0) {
		to_journal = getenv("JOURNAL_STREAM") != NULL;
		__atomic_store_n(&journal_known, to_journal, __ATOMIC_RELAXED);
	}
	n = vsnprintf(line, sizeof(line), fmt, ap);
	if (n < 0)
		return;
	line[utf8_cut(line, (size_t)n, sizeof(line) - 1)] = '\0';
	if (to_journal) {
		(void)text_escape(escaped, sizeof(escaped), line, strlen(line), true);
		if (send_journal(level, fields, escaped) == 0)
			return;
	}
	write_stderr(level, to_journal, fields, line);
}
