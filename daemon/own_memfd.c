// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* memfd_create */
#include "own_memfd.h"

#include <errno.h>
#include <sys/mman.h>

int own_memfd(const char *name)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_NOEXEC_SEAL);

	if (fd >= 0 || errno != EINVAL)
		return fd;
	return memfd_create(name, MFD_CLOEXEC);
}
