/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr with syslog levels. Under systemd (JOURNAL_STREAM set) every line starts
 * with the "<N>" level prefix journald reads; on a terminal it starts with the level's name.
 * Nothing is logged per map or unmap at the default level (info): those are debug lines.
 */
#ifndef IOMMUD_LOG_H
#define IOMMUD_LOG_H

#include <syslog.h>

/* Lines above this level are dropped; LOG_INFO unless changed. */
void log_set_level(int level);
int log_get_level(void);
/* Parses "err", "warning", "notice", "info" or "debug"; -EINVAL for anything else. */
int log_parse_level(const char *name);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)	 log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)	 log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)	 log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)	 log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
