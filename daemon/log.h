/* SPDX-License-Identifier: MIT */
/*
 * Logging with syslog levels. Under systemd (JOURNAL_STREAM set) each entry goes to the
 * journal natively, with its priority; elsewhere, or when the journal cannot be reached, one
 * line on stderr starting with the level's name (or journald's "<N>" prefix).
 *
 * Values a client chose or could influence (lease and device names, cgroup paths, client
 * names, failure messages that echo them) never go through the format: each is a field
 * (IOMMUD_LEASE=...) named in the format by a placeholder, "{IOMMUD_LEASE}". The journal keeps
 * the placeholder in MESSAGE= and the value, exactly, in its field, so no client byte is in a
 * message; on stderr the value, escaped, takes the placeholder's place.
 *
 * Whatever reaches a line is escaped: bytes that are not UTF-8, control characters (a newline)
 * and the backslash are written as \xHH and \\, so whatever a client sent, one entry is one
 * line.
 *
 * Every line about a tenant, a session or one of its objects carries the fields that find it
 * in the journal: IOMMUD_TENANT ("UID:CGROUP"), IOMMUD_LEASE ("" for an anonymous session),
 * IOMMUD_DOMAIN and IOMMUD_DEVICE (docs/operations.md, "Logs").
 *
 * Nothing is logged per map or unmap at the default level (info): those are debug lines.
 */
#ifndef IOMMUD_LOG_H
#define IOMMUD_LOG_H

#include <stdarg.h>
#include <syslog.h>

/* Lines above this level are dropped; LOG_INFO unless changed. */
void log_set_level(int level);
int log_get_level(void);
/* Parses "err", "warning", "notice", "info" or "debug"; -EINVAL for anything else. */
int log_parse_level(const char *name);

/* A journal field: name is IOMMUD_ and capitals, value the text as it is. */
struct log_field {
	const char *name;
	const char *value;
};
/* The fields of one entry, as an array ending with a NULL name. */
#define LOG_FIELDS(...) ((const struct log_field[]){__VA_ARGS__, {NULL, NULL}})

/* An entry with fields (NULL: none) beside its message; fmt names them by placeholder. */
void log_struct(int level, const struct log_field *fields, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void log_structv(int level, const struct log_field *fields, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

#define log_msg(level, ...) log_struct(level, NULL, __VA_ARGS__)
#define log_err(...)	    log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...)    log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)	    log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)	    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)	    log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
