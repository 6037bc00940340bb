/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include <kh/kh_ops.h>

/* Per thread, like errno: a failing call and the caller reading its message share a thread. */
static _Thread_local char last_error[KH_ERROR_MAX] = "no error";

const char *kh_last_error(void)
{
	return last_error;
}

int kh_vfail(int err, const char *fmt, va_list ap)
{
	int n = vsnprintf(last_error, sizeof(last_error), fmt, ap);

	if (n >= 0 && (size_t)n < sizeof(last_error) - 32)
		(void)snprintf(last_error + n, sizeof(last_error) - (size_t)n, " (%s)",
			       strerror(-err));
	return err;
}

void kh_fail_record(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)kh_vfail(err, fmt, ap);
	va_end(ap);
}
