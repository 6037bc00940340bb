/* SPDX-License-Identifier: MIT */
/*
 * kh_delegate through a fake backend whose fds are memfds, since the real one needs /dev/iommu:
 * the functions of one IOMMU group go out together, a mate held by another delegation or bound
 * in a context refuses the rest of its group, and a refusal leaves every device as it was.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <kh/kh.h>
#include <kh/kh_ops.h>

#include "harness.h"

enum { GPU, GPU_AUDIO, NIC, N_DEVICES };

struct fake {
	struct kh_backend_ops ops;
	struct kh_bdev devices[N_DEVICES];
	struct kh_backend be;
};

static int fake_ctx_fd(struct kh_backend *be)
{
	(void)be;
	return memfd_create("fake-iommufd", MFD_CLOEXEC);
}

static int fake_device_fd(struct kh_bdev *bdev)
{
	(void)bdev;
	return memfd_create("fake-vfio-device", MFD_CLOEXEC);
}

/* Two functions of group 7 (a GPU and its HDMI audio) and a NIC alone in group 9. */
static void fake_init(struct fake *fake)
{
	static const struct {
		const char *name;
		uint32_t group;
	} layout[N_DEVICES] = {{"0000:01:00.0", 7}, {"0000:01:00.1", 7}, {"0000:02:00.0", 9}};

	memset(fake, 0, sizeof(*fake));
	fake->ops.name = "fake";
	fake->ops.delegate_ctx_fd = fake_ctx_fd;
	fake->ops.delegate_device_fd = fake_device_fd;
	for (size_t i = 0; i < N_DEVICES; i++) {
		(void)snprintf(fake->devices[i].info.name, sizeof(fake->devices[i].info.name), "%s",
			       layout[i].name);
		fake->devices[i].info.group = layout[i].group;
	}
	fake->be.ops = &fake->ops;
	fake->be.devices = fake->devices;
	fake->be.n_devices = N_DEVICES;
	fake->be.caps = KH_CAP_DELEGATE;
}

static void close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		CHECK(close(fds[i]) == 0);
}

TEST(group_goes_out_together)
{
	struct fake fake;
	const size_t both[] = {GPU, GPU_AUDIO};
	int fds[3];

	fake_init(&fake);
	CHECK(kh_delegate(&fake.be, both, 2, fds) == 0);
	CHECK(fake.devices[GPU].delegated && fake.devices[GPU_AUDIO].delegated);
	CHECK(!fake.devices[NIC].delegated);
	for (size_t i = 0; i < 3; i++)
		CHECK(fcntl(fds[i], F_GETFD) == FD_CLOEXEC);
	close_fds(fds, 3);
	kh_delegate_end(&fake.be, both, 2);
	CHECK(!fake.devices[GPU].delegated && !fake.devices[GPU_AUDIO].delegated);
}

TEST(mate_out_refuses_the_group)
{
	struct fake fake;
	const size_t gpu[] = {GPU}, audio_and_nic[] = {NIC, GPU_AUDIO};
	int fds[3];

	fake_init(&fake);
	CHECK(kh_delegate(&fake.be, gpu, 1, fds) == 0);
	CHECK(kh_delegate(&fake.be, audio_and_nic, 2, fds + 2) == -EBUSY);
	CHECK(strstr(kh_last_error(), "0000:01:00.0 of the IOMMU group of 0000:01:00.1"));
	CHECK(!fake.devices[NIC].delegated && !fake.devices[GPU_AUDIO].delegated);
	close_fds(fds, 2);
	kh_delegate_end(&fake.be, gpu, 1);
}

TEST(mate_bound_refuses_the_group)
{
	struct fake fake;
	const size_t audio[] = {GPU_AUDIO};
	int fds[2];

	fake_init(&fake);
	fake.devices[GPU].bound_ctx = (struct kh_ctx *)&fake; /* only compared, never followed */
	CHECK(kh_delegate(&fake.be, audio, 1, fds) == -EBUSY);
	CHECK(strstr(kh_last_error(), "shares IOMMU group 7"));
	CHECK(!fake.devices[GPU_AUDIO].delegated);
}

TEST(named_twice_or_missing)
{
	struct fake fake;
	const size_t twice[] = {NIC, NIC}, missing[] = {NIC, N_DEVICES};
	int fds[3];

	fake_init(&fake);
	CHECK(kh_delegate(&fake.be, twice, 2, fds) == -EINVAL);
	CHECK(kh_delegate(&fake.be, missing, 2, fds) == -ENOENT);
	CHECK(!fake.devices[NIC].delegated);
}
