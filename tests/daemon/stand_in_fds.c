// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* memfd_create */
#include "stand_in_fds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static int stand_in_fd(const char *what)
{
	int fd = memfd_create(what, MFD_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

static int stand_in_ctx_fd(struct kh_backend *be __attribute__((unused)))
{
	return stand_in_fd("stand-in iommufd");
}

static int stand_in_device_fd(struct kh_bdev *bdev __attribute__((unused)))
{
	return stand_in_fd("stand-in vfio device");
}

void stand_in_delegation(struct kh_backend *be, struct kh_backend_ops *ops)
{
	if (strcmp(kh_backend_name(be), "emulated") != 0) {
		(void)fprintf(stderr,
			      "the stand-in delegation fakes only the emulated backend, "
			      "not %s\n",
			      kh_backend_name(be));
		abort();
	}
	*ops = *be->ops;
	ops->delegate_ctx_fd = stand_in_ctx_fd;
	ops->delegate_device_fd = stand_in_device_fd;
	be->ops = ops;
	be->caps |= KH_CAP_DELEGATE;
}
