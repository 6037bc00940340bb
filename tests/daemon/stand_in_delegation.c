// SPDX-License-Identifier: MIT
/* iommud with delegation faked into the emulated backend, so that the survival of delegations
 * is proven on every host: main() is the daemon's own (daemon/main.c), and its backend is
 * opened through this wrapper (linked with --wrap=kh_backend_open), whose delegated fds are
 * memfds standing in for an iommufd and VFIO cdevs, as in test_delegate_state. The daemon
 * only passes those fds on; everything it records and follows is what it does on iommufd. */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <sys/mman.h>

#include <kh/kh.h>
#include <kh/kh_ops.h>

int __real_kh_backend_open(const char *name, const char *topology, struct kh_backend **out);
int __wrap_kh_backend_open(const char *name, const char *topology, struct kh_backend **out);

static struct kh_backend_ops with_delegation;

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

int __wrap_kh_backend_open(const char *name, const char *topology, struct kh_backend **out)
{
	int rc = __real_kh_backend_open(name, topology, out);

	if (rc < 0)
		return rc;
	with_delegation = *(*out)->ops;
	with_delegation.delegate_ctx_fd = stand_in_ctx_fd;
	with_delegation.delegate_device_fd = stand_in_device_fd;
	(*out)->ops = &with_delegation;
	(*out)->caps |= KH_CAP_DELEGATE;
	return 0;
}
