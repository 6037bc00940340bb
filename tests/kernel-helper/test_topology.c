/* SPDX-License-Identifier: MIT */
/*
 * The emulated topology file: what a person writes becomes the devices they meant, and every
 * mistake is refused with the line and what was expected. Also the paging-only IOMMU model,
 * where the core allocates through the backend's default domain ops.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <kh/kh.h>

#include "harness.h"

static void check_refused(const char *text, const char *phrase)
{
	struct kh_backend *be = NULL;
	int rc = kh_backend_open_emulated_text(text, &be);

	if (rc != -EINVAL || !strstr(kh_last_error(), phrase)) {
		(void)fprintf(stderr, "topology:\n%s\ngave %d, message \"%s\", expected \"%s\"\n",
			      text, rc, kh_last_error(), phrase);
		abort();
	}
	CHECK(be == NULL);
}

TEST(mistakes)
{
	check_refused("[iommu]\ndevices = a\n[device a]\ngroup = x\n", "line 4");
	check_refused("[iommu]\ndevices = a\n[device a]\ngroup = x\n", "a group number");
	check_refused("[iommu]\ndevices = a\n[device a]\ncolour = red\n", "one of group");
	check_refused("[iommu]\ndevices = a\n[device a]\npage-sizes = 2M\n", "4K included");
	check_refused("[iommu]\ndevices = a\n[device a]\npage-sizes = 8K\n", "4K included");
	check_refused("[iommu]\ndevices = a\n[device a]\naperture-bits = 49\n", "12 to 48");
	check_refused("[iommu]\ndevices = a\n[device a]\nreserved = 5-1\n", "START-LAST");
	check_refused("[iommu]\ndevices = a\n[device a]\nreserved = 0x10\n", "START-LAST");
	check_refused("[iommu]\ndevices = a\n[device a]\ndirty-tracking = maybe\n", "yes or no");
	check_refused("[iommu]\ndevices = a a\n", "each device named once");
	check_refused("[iommu]\ndomain-types = some\n", "all or paging");
	check_refused("[iommu]\ndevices = a\n[device b]\ngroup = 1\n", "does not list");
	check_refused("[gpu]\nx = 1\n", "[device NAME]");
	check_refused("[iommu]\nthis line has no equals sign\n", "line 2");
}

TEST(devices_as_written)
{
	struct kh_backend *be;
	struct kh_device_info info;
	struct kh_iova_range resv[4];
	static const char text[] = "[iommu]\n"
				   "devices = nic0, nic1 gpu\n"
				   "[device nic1]\n"
				   "group = 7\n"
				   "page-sizes = 4K,2M\n"
				   "aperture-bits = 39\n"
				   "dirty-tracking = no\n"
				   "pasid-bits = 20\n"
				   "reserved = 0x1000-0x1fff\n"
				   "reserved = 0x8000-0x8fff ; comments are allowed\n"
				   "[device gpu]\n"
				   "msi-window = no\n";

	CHECK_OK(kh_backend_open_emulated_text(text, &be));
	CHECK_EQ(kh_device_count(be), 3);
	CHECK_OK(kh_device_info(be, 1, &info));
	CHECK(strcmp(info.name, "nic1") == 0);
	CHECK_EQ(info.group, 7);
	CHECK_EQ(info.hw.page_sizes, (1u << 12) | (1u << 21));
	CHECK_EQ(info.hw.aperture_last, (1ull << 39) - 1);
	CHECK(!info.hw.dirty_tracking);
	CHECK(info.hw.nesting);
	CHECK_EQ(info.hw.pasid_bits, 20);
	CHECK_EQ(kh_device_reserved_regions(be, 1, resv, 4), 3);
	CHECK_EQ(resv[0].start, 0x1000);
	CHECK_EQ(resv[1].last, 0x8fff);
	CHECK_EQ(resv[2].start, 0xfee00000);

	/* Devices without a group number get groups of their own, never one already named. */
	CHECK_OK(kh_device_info(be, 0, &info));
	CHECK(info.group != 7);
	uint32_t nic0_group = info.group;
	CHECK_OK(kh_device_info(be, 2, &info));
	CHECK(info.group != 7 && info.group != nic0_group);
	CHECK_EQ(kh_device_reserved_regions(be, 2, resv, 4), 0);
	CHECK_EQ(kh_device_info(be, 3, &info), -ENOENT);
	CHECK_EQ(kh_device_lookup(be, "nic0"), 0);
	CHECK_EQ(kh_device_lookup(be, "tape"), -ENOENT);
	CHECK(strcmp(kh_backend_name(be), "emulated") == 0);
	CHECK_EQ(kh_backend_kind(be), KH_BACKEND_EMULATED);
	kh_backend_close(be);
}

TEST(files)
{
	struct kh_backend *be;
	char path[] = "/tmp/kh-topology-XXXXXX";
	int fd = mkstemp(path);
	static const char text[] = "[iommu]\ndevices = disk\n";

	CHECK(fd >= 0);
	CHECK_EQ(write(fd, text, sizeof(text) - 1), (long long)sizeof(text) - 1);
	(void)close(fd);
	CHECK_OK(kh_backend_open_emulated(path, &be));
	CHECK_EQ(kh_device_lookup(be, "disk"), 0);
	kh_backend_close(be);
	(void)unlink(path);
	CHECK_EQ(kh_backend_open_emulated(path, &be), -ENOENT);
	CHECK(strstr(kh_last_error(), path));

	/* No topology: one default device. */
	CHECK_OK(kh_backend_open_emulated(NULL, &be));
	CHECK_EQ(kh_device_count(be), 1);
	CHECK_EQ(kh_device_lookup(be, "emu0"), 0);
	kh_backend_close(be);
}

TEST(paging_only_model)
{
	struct kh_backend *be;
	struct kh_ctx *ctx;
	struct kh_device_info info;
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_IDENTITY};
	struct kh_map_req req = {.length = 4096, .addr = 0x10000, .prot = KH_PROT_READ};
	enum kh_domain_type type;
	uint32_t dev, dom;

	CHECK_OK(kh_backend_open_emulated_text("[iommu]\ndevices = x\ndomain-types = paging\n",
					       &be));
	CHECK_OK(kh_device_info(be, 0, &info));
	CHECK(!info.hw.dirty_tracking && !info.hw.nesting);
	CHECK_OK(kh_ctx_create(be, &ctx));
	CHECK_OK(kh_device_bind(ctx, "x", &dev));
	CHECK_EQ(kh_domain_alloc(ctx, dev, &args, &dom), -EOPNOTSUPP);
	CHECK(strstr(kh_last_error(), "paging domains only"));
	args.type = KH_DOMAIN_PAGING;
	args.flags = KH_DOMAIN_F_DIRTY_TRACKING;
	CHECK_EQ(kh_domain_alloc(ctx, dev, &args, &dom), -EOPNOTSUPP);
	args.flags = 0;
	CHECK_OK(kh_domain_alloc(ctx, dev, &args, &dom));
	CHECK_OK(kh_domain_type(ctx, dom, &type));
	CHECK_EQ(type, KH_DOMAIN_PAGING);
	CHECK_OK(kh_attach(ctx, dev, dom));
	CHECK_OK(kh_map(ctx, dom, &req));
	CHECK_EQ(kh_set_dirty_tracking(ctx, dom, true), -EOPNOTSUPP);
	kh_ctx_destroy(ctx);
	kh_backend_close(be);
}
