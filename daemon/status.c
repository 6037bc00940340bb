// SPDX-License-Identifier: MIT
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

#include <kh/kh.h>

static char message[1024];

void fail_record(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
}

const char *failure_message(void)
{
	return message;
}

int fail_kh(int rc, const char *doing)
{
	return fail(rc, "%s: %s", doing, kh_last_error());
}
