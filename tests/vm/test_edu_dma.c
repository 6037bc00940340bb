/* SPDX-License-Identifier: MIT */
/*
 * Real DMA through a real IOMMU: qemu's edu device, bound to vfio-pci, copies bytes between
 * its buffer and memory that kernel-helper mapped through iommufd. Proves what the daemon
 * promises its users: data lands at a mapped IOVA, nothing lands after unmap or through a
 * read-only mapping, one context cannot reach another's memory, and DMA follows a replace.
 *
 * Runs in the VM tier only (exit 77, skipped, without /dev/iommu or two edu devices). The test
 * drives the device with pread/pwrite on the VFIO fd kernel-helper hands out; only
 * kernel-helper issues ioctls.
 */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <kh/kh.h>

#include "check.h"
#include "edu.h"

#define PAGE 4096u
#define XFER EDU_XFER

/* An edu bound into a context, with the VFIO fd kernel-helper handed out for it. */
struct edu_dev {
	struct edu regs;
	struct kh_ctx *ctx;
	uint32_t dev;
};

static void edu_open(struct edu_dev *e, struct kh_ctx *ctx, const char *name)
{
	int fd;

	e->ctx = ctx;
	CHECK_OK(kh_device_bind(ctx, name, &e->dev));
	fd = kh_device_open_fd(ctx, e->dev);
	CHECK_OK(fd);
	edu_init(&e->regs, fd);
}

static uint64_t map_at(struct kh_ctx *ctx, uint32_t dom, uint64_t iova, void *mem, uint32_t prot)
{
	struct kh_map_req req = { .iova = iova, .length = PAGE, .addr = (uint64_t)(uintptr_t)mem,
				  .prot = prot, .flags = KH_MAP_FIXED_IOVA };

	CHECK_OK(kh_map(ctx, dom, &req));
	return iova;
}

static uint32_t paging_domain(struct edu_dev *e)
{
	struct kh_domain_alloc_args paging = { .type = KH_DOMAIN_PAGING };
	uint32_t dom;

	CHECK_OK(kh_domain_alloc(e->ctx, e->dev, &paging, &dom));
	return dom;
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t value)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != value)
			return false;
	return true;
}

int main(void)
{
	struct kh_backend *be;
	struct kh_ctx *ctx_a, *ctx_b;
	struct edu_dev a, b;
	char edu_names[2][KH_NAME_MAX];
	size_t found = 0;
	uint8_t *mem = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	uint8_t *src = mem, *dst = mem + PAGE, *ro = mem + 2 * PAGE, *other = mem + 3 * PAGE,
		*moved = mem + 4 * PAGE;
	uint32_t dom_a, dom_b, dom_c;
	int rc;

	if (kh_backend_open_iommufd(&be) < 0) {
		printf("SKIP: %s\n", kh_last_error());
		return 77;
	}
	for (size_t i = 0; i < kh_device_count(be) && found < 2; i++) {
		struct kh_device_info info;

		CHECK_OK(kh_device_info(be, i, &info));
		if (info.vendor == EDU_VENDOR && info.device == EDU_DEVICE)
			memcpy(edu_names[found++], info.name, KH_NAME_MAX);
	}
	if (found < 2) {
		printf("SKIP: needs two edu devices bound to vfio-pci, found %zu\n", found);
		return 77;
	}
	CHECK(mem != MAP_FAILED);
	memset(mem, 0, 8 * PAGE);

	CHECK_OK(kh_ctx_create(be, &ctx_a));
	edu_open(&a, ctx_a, edu_names[0]);
	dom_a = paging_domain(&a);
	CHECK_OK(kh_attach(ctx_a, a.dev, dom_a));
	/* edu masks DMA addresses to 28 bits: every IOVA stays below 256 MiB. */
	map_at(ctx_a, dom_a, 0x100000, src, KH_PROT_READ);
	map_at(ctx_a, dom_a, 0x101000, dst, KH_PROT_READ | KH_PROT_WRITE);
	map_at(ctx_a, dom_a, 0x200000, ro, KH_PROT_READ);

	/* Memory -> device -> memory: the bytes land at the mapped IOVA. */
	for (unsigned i = 0; i < PAGE; i++)
		src[i] = (uint8_t)(i * 7 + 1);
	edu_dma(&a.regs, 0x100000, XFER, false);
	edu_dma(&a.regs, 0x101000, XFER, true);
	CHECK(memcmp(dst, src, XFER) == 0);
	printf("ok: DMA landed at a mapped IOVA\n");

	/* A read-only mapping: the device reads it but cannot write it. */
	edu_dma(&a.regs, 0x200000, XFER, true);
	CHECK(all_bytes(ro, PAGE, 0));
	printf("ok: a read-only mapping blocked a device write\n");

	/* After unmap the same transfer is blocked and memory keeps its bytes. */
	CHECK_OK(kh_unmap(ctx_a, dom_a, 0x101000, PAGE, NULL));
	memset(dst, 0xee, PAGE);
	edu_dma(&a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(dst, PAGE, 0xee));
	printf("ok: DMA blocked after unmap\n");

	/* Context B maps its own memory at an IOVA A never mapped: A's device cannot reach it. */
	CHECK_OK(kh_ctx_create(be, &ctx_b));
	edu_open(&b, ctx_b, edu_names[1]);
	dom_b = paging_domain(&b);
	CHECK_OK(kh_attach(ctx_b, b.dev, dom_b));
	map_at(ctx_b, dom_b, 0x300000, other, KH_PROT_READ | KH_PROT_WRITE);
	map_at(ctx_b, dom_b, 0x301000, src, KH_PROT_READ);
	edu_dma(&a.regs, 0x300000, XFER, true);
	CHECK(all_bytes(other, PAGE, 0));
	/* B's own device reaches it, through B's domain. */
	edu_dma(&b.regs, 0x301000, XFER, false);
	edu_dma(&b.regs, 0x300000, XFER, true);
	CHECK(memcmp(other, src, XFER) == 0);
	printf("ok: context B's memory is out of reach of context A's device\n");

	/* Replace: the same IOVA now leads to the new domain's memory. */
	dom_c = paging_domain(&a);
	map_at(ctx_a, dom_c, 0x101000, moved, KH_PROT_READ | KH_PROT_WRITE);
	rc = kh_replace(ctx_a, a.dev, dom_c);
	if (rc == -EADDRINUSE && strstr(kh_last_error(), "sizes domains only at attach")) {
		/* The kernel's limit, not ours: the move still has to take DMA with it. */
		printf("note: %s\n", kh_last_error());
		CHECK_OK(kh_detach(ctx_a, a.dev));
		CHECK_OK(kh_attach(ctx_a, a.dev, dom_c));
	} else {
		CHECK_OK(rc);
	}
	memset(dst, 0, PAGE);
	CHECK_OK(kh_map(ctx_a, dom_a, &(struct kh_map_req){ .iova = 0x101000, .length = PAGE,
							      .addr = (uint64_t)(uintptr_t)dst,
							      .prot = KH_PROT_WRITE,
							      .flags = KH_MAP_FIXED_IOVA }));
	edu_dma(&a.regs, 0x101000, XFER, true);
	CHECK(memcmp(moved, src, XFER) == 0);
	CHECK(all_bytes(dst, PAGE, 0));
	printf("ok: DMA followed the device to its new domain\n");

	/* A copy shares the source's memory: the device reads A's page through domain C. */
	struct kh_map_req copy = { .iova = 0x500000, .length = PAGE, .prot = KH_PROT_READ,
				   .flags = KH_MAP_FIXED_IOVA };
	CHECK_OK(kh_copy(ctx_a, dom_c, &copy, dom_a, 0x100000));
	memset(moved, 0, PAGE);
	memset(src, 0x3c, XFER);
	edu_dma(&a.regs, 0x500000, XFER, false);
	edu_dma(&a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(moved, XFER, 0x3c));
	printf("ok: DMA through a copied mapping reached the source's memory\n");

	/* Memory given as a file: the bytes land in the file, with no mapping of it here. */
	int memfd = memfd_create("edu", MFD_CLOEXEC);
	uint8_t back[XFER];
	CHECK(memfd >= 0);
	CHECK_EQ(ftruncate(memfd, PAGE), 0);
	rc = kh_map(ctx_a, dom_c, &(struct kh_map_req){ .iova = 0x600000, .length = PAGE,
						       .prot = KH_PROT_WRITE, .fd = memfd,
						       .flags = KH_MAP_FIXED_IOVA | KH_MAP_FILE });
	if (rc == -EOPNOTSUPP) {
		printf("note: this kernel cannot map files: %s\n", kh_last_error());
	} else {
		CHECK_OK(rc);
		edu_dma(&a.regs, 0x600000, XFER, true);
		CHECK_EQ(pread(memfd, back, XFER, 0), XFER);
		CHECK(all_bytes(back, XFER, 0x3c));
		printf("ok: DMA landed in a file mapped by fd\n");
	}
	close(memfd);

	/* Detached, the device is blocked. */
	CHECK_OK(kh_detach(ctx_a, a.dev));
	memset(moved, 0, PAGE);
	edu_dma(&a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(moved, PAGE, 0));
	printf("ok: a detached device is blocked\n");

	close(a.regs.fd);
	close(b.regs.fd);
	kh_ctx_destroy(ctx_a);
	kh_ctx_destroy(ctx_b);
	kh_backend_close(be);
	printf("edu DMA through iommufd: all checks passed\n");
	return 0;
}
