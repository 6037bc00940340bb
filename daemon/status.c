// SPDX-License-Identifier: MIT
#include "status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include <kh/kh.h>

static char message[1024];

int fail(int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	return rc;
}

const char *failure_message(void)
{
	return message;
}

int fail_kh(int rc, const char *doing)
{
	return fail(rc, "%s: %s", doing, kh_last_error());
}

Iommud__V1__Code code_for_errno(int rc)
{
	switch (-rc) {
	case 0:
		return IOMMUD__V1__CODE__CODE_OK;
	case EINVAL:
	case EBADF:
	case EMSGSIZE:
	case ENOTSOCK:
	case EFAULT:
		return IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT;
	case ENOENT:
	case ENODEV:
	case ESRCH:
		return IOMMUD__V1__CODE__CODE_NOT_FOUND;
	case EEXIST:
		return IOMMUD__V1__CODE__CODE_ALREADY_EXISTS;
	case EPERM:
	case EACCES:
		return IOMMUD__V1__CODE__CODE_PERMISSION_DENIED;
	case ENOSPC:
	case ENOMEM:
	case EDQUOT:
	case EMFILE:
	case ENFILE:
		return IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED;
	case EBUSY:
	case EADDRINUSE:
	case EALREADY:
	case ENOTCONN:
		return IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION;
	case ERANGE:
	case EOVERFLOW:
		return IOMMUD__V1__CODE__CODE_OUT_OF_RANGE;
	case EOPNOTSUPP:
	case ENOSYS:
	case ENOTTY:
		return IOMMUD__V1__CODE__CODE_UNIMPLEMENTED;
	case ESHUTDOWN:
		return IOMMUD__V1__CODE__CODE_UNAVAILABLE;
	default:
		return IOMMUD__V1__CODE__CODE_INTERNAL;
	}
}
