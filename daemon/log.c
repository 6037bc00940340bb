// SPDX-License-Identifier: MIT
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int max_level = LOG_INFO;

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",	  [LOG_CRIT] = "crit",
	[LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

void log_set_level(int level)
{
	max_level = level;
}

int log_get_level(void)
{
	return max_level;
}

int log_parse_level(const char *name)
{
	for (int level = LOG_ERR; level <= LOG_DEBUG; level++)
		if (strcmp(name, level_names[level]) == 0)
			return level;
	return -EINVAL;
}

void log_msg(int level, const char *fmt, ...)
{
	/* Decided once: the daemon's stderr does not change from journal to terminal. */
	static int to_journal = -1;
	char line[2048];
	va_list ap;

	if (level > max_level)
		return;
	if (to_journal < 0)
		to_journal = getenv("JOURNAL_STREAM") != NULL;
	va_start(ap, fmt);
	(void)vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* One write per line, so lines of concurrent writers (tests) never interleave. */
	if (to_journal)
		(void)fprintf(stderr, "<%d>%s\n", level, line);
	else
		(void)fprintf(stderr, "iommud: %s: %s\n", level_names[level], line);
}
