// SPDX-License-Identifier: MIT
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

#include <kh/kh.h>

#include "text.h"

/* Each thread's own: the loop threads fail calls at once. */
static _Thread_local char message[STATUS_MESSAGE_MAX + 1];

void fail_record(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	/* vsnprintf cuts at a byte count: a message cut inside a character would not decode. */
	if (n >= (int)sizeof(message))
		message[utf8_cut(message, (size_t)n, sizeof(message) - 1)] = '\0';
}

const char *failure_message(void)
{
	return message;
}

int fail_kh(int rc, const char *doing)
{
	return fail(rc, "%s: %s", doing, kh_last_error());
}
