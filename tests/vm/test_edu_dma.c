/* SPDX-License-Identifier: MIT */
/*
 * Real DMA through a real IOMMU: qemu's edu device, bound to vfio-pci, copies bytes between
 * its buffer and memory that kernel-helper mapped through a kernel backend (VM_BACKEND: "auto",
 * the daemon's default, which must take iommufd where /dev/iommu is and vfio-type1 on a kernel
 * without it, such as Debian 12's; or vfio-type1 in the test_edu_dma_type1 build, on every
 * kernel). Proves what the daemon promises its users:
 * data lands at a mapped IOVA, nothing lands after unmap or through a read-only mapping, one
 * context cannot reach another's memory, and DMA follows a replace. Where the backend cannot do
 * something (vfio-type1: replace, or detach while the device's fd is open), the test checks the
 * refusal and takes the way the backend offers instead.
 *
 * Runs in the VM tier only (exit 77, skipped, outside its guest or without two edu devices). The
 * test drives the device with pread/pwrite on the VFIO fd kernel-helper hands out; only
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

#ifndef VM_BACKEND
#define VM_BACKEND "auto"
#endif

/* An edu bound into a context, with the VFIO fd kernel-helper handed out for it. */
struct edu_dev {
	struct edu regs;
	struct kh_ctx *ctx;
	uint32_t dev;
};

/* The device's fd from kernel-helper, taken once the device is attached (vfio-type1 hands one
 * out only then). */
static void edu_open(struct edu_dev *e)
{
	int fd = kh_device_open_fd(e->ctx, e->dev);

	CHECK_OK(fd);
	edu_init(&e->regs, fd);
}

static uint64_t map_at(struct kh_ctx *ctx, uint32_t dom, uint64_t iova, void *mem, uint32_t prot)
{
	struct kh_map_req req = {.iova = iova,
				 .length = PAGE,
				 .addr = (uint64_t)(uintptr_t)mem,
				 .prot = prot,
				 .flags = KH_MAP_FIXED_IOVA};

	CHECK_OK(kh_map(ctx, dom, &req));
	return iova;
}

static uint32_t paging_domain(struct edu_dev *e)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t dom;

	CHECK_OK(kh_domain_alloc(e->ctx, e->dev, &paging, &dom));
	return dom;
}

/* The edu called name bound into ctx, attached to a fresh paging domain, and opened. */
static uint32_t edu_take(struct edu_dev *e, struct kh_ctx *ctx, const char *name)
{
	uint32_t dom;

	e->ctx = ctx;
	CHECK_OK(kh_device_bind(ctx, name, &e->dev));
	dom = paging_domain(e);
	CHECK_OK(kh_attach(ctx, e->dev, dom));
	edu_open(e);
	return dom;
}

/* What the steps share, in the order main takes them: each step leaves the devices, domains
 * and pages as the next one expects them. */
struct dma_test {
	struct kh_backend *be;
	char edu_names[2][KH_NAME_MAX];
	struct edu_dev a, b; /* a in context A, b in context B */
	uint32_t dom_a, dom_b, dom_c;
	uint8_t *mem; /* the pages below, all in one mapping */
	uint8_t *src, *dst, *ro, *other, *moved;
};

/* The backend, the one the kernel calls for, and two edu devices; false (with the reason
 * printed) where the test cannot run. */
static bool find_edus(struct dma_test *t)
{
	const char *want = vm_backend_expected(VM_BACKEND);
	size_t found = 0;

	if (!want) {
		(void)printf("SKIP: not in the VM tier's guest (tests/vm/README.md)\n");
		return false;
	}
	CHECK_OK(kh_backend_open(VM_BACKEND, NULL, &t->be));
	(void)printf("backend %s: %s\n", VM_BACKEND, kh_backend_name(t->be));
	CHECK(strcmp(kh_backend_name(t->be), want) == 0);
	for (size_t i = 0; i < kh_device_count(t->be) && found < 2; i++) {
		struct kh_device_info info;

		CHECK_OK(kh_device_info(t->be, i, &info));
		if (info.vendor == EDU_VENDOR && info.device == EDU_DEVICE)
			memcpy(t->edu_names[found++], info.name, KH_NAME_MAX);
	}
	if (found < 2) {
		(void)printf("SKIP: needs two edu devices bound to vfio-pci, found %zu\n", found);
		return false;
	}
	return true;
}

/* Context A: its edu attached to a paging domain with a source, a destination and a
 * read-only page mapped. */
static void setup_context_a(struct dma_test *t)
{
	struct kh_ctx *ctx_a;

	CHECK(t->mem != MAP_FAILED);
	memset(t->mem, 0, 8 * PAGE);
	CHECK_OK(kh_ctx_create(t->be, &ctx_a));
	t->dom_a = edu_take(&t->a, ctx_a, t->edu_names[0]);
	/* edu masks DMA addresses to 28 bits: every IOVA stays below 256 MiB. */
	map_at(ctx_a, t->dom_a, 0x100000, t->src, KH_PROT_READ);
	map_at(ctx_a, t->dom_a, 0x101000, t->dst, KH_PROT_READ | KH_PROT_WRITE);
	map_at(ctx_a, t->dom_a, 0x200000, t->ro, KH_PROT_READ);
}

/* Memory -> device -> memory: the bytes land at the mapped IOVA. */
static void check_mapped_dma(struct dma_test *t)
{
	for (unsigned i = 0; i < PAGE; i++)
		t->src[i] = (uint8_t)(i * 7 + 1);
	edu_dma(&t->a.regs, 0x100000, XFER, false);
	edu_dma(&t->a.regs, 0x101000, XFER, true);
	CHECK(memcmp(t->dst, t->src, XFER) == 0);
	(void)printf("ok: DMA landed at a mapped IOVA\n");
}

/* A read-only mapping: the device reads it but cannot write it. */
static void check_read_only(struct dma_test *t)
{
	edu_dma(&t->a.regs, 0x200000, XFER, true);
	CHECK(all_bytes(t->ro, PAGE, 0));
	(void)printf("ok: a read-only mapping blocked a device write\n");
}

/* After unmap the same transfer is blocked and memory keeps its bytes. */
static void check_unmap(struct dma_test *t)
{
	CHECK_OK(kh_unmap(t->a.ctx, t->dom_a, 0x101000, PAGE, NULL));
	memset(t->dst, 0xee, PAGE);
	edu_dma(&t->a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(t->dst, PAGE, 0xee));
	(void)printf("ok: DMA blocked after unmap\n");
}

/* Context B maps its own memory at an IOVA A never mapped: A's device cannot reach it. */
static void check_contexts_apart(struct dma_test *t)
{
	struct kh_ctx *ctx_b;

	CHECK_OK(kh_ctx_create(t->be, &ctx_b));
	t->dom_b = edu_take(&t->b, ctx_b, t->edu_names[1]);
	map_at(ctx_b, t->dom_b, 0x300000, t->other, KH_PROT_READ | KH_PROT_WRITE);
	map_at(ctx_b, t->dom_b, 0x301000, t->src, KH_PROT_READ);
	edu_dma(&t->a.regs, 0x300000, XFER, true);
	CHECK(all_bytes(t->other, PAGE, 0));
	/* B's own device reaches it, through B's domain. */
	edu_dma(&t->b.regs, 0x301000, XFER, false);
	edu_dma(&t->b.regs, 0x300000, XFER, true);
	CHECK(memcmp(t->other, t->src, XFER) == 0);
	(void)printf("ok: context B's memory is out of reach of context A's device\n");
}

/* Without replace (vfio-type1) the device moves by detach and attach, and its group leaves the
 * container only with no fd of it open: the detach says so first. */
static void move_without_replace(struct dma_test *t, uint32_t dom)
{
	int rc = kh_replace(t->a.ctx, t->a.dev, dom);

	CHECK_EQ(rc, -EOPNOTSUPP);
	CHECK(strstr(kh_last_error(), "does not support replacing") != NULL);
	CHECK_EQ(kh_detach(t->a.ctx, t->a.dev), -EBUSY);
	CHECK(strstr(kh_last_error(), "close that fd") != NULL);
	(void)printf("ok: refused as documented: %s\n", kh_last_error());
	(void)close(t->a.regs.fd);
	CHECK_OK(kh_detach(t->a.ctx, t->a.dev));
	CHECK_OK(kh_attach(t->a.ctx, t->a.dev, dom));
	edu_open(&t->a);
}

/* Replace: the same IOVA now leads to the new domain's memory. */
static void check_replace(struct dma_test *t)
{
	struct kh_ctx *ctx_a = t->a.ctx;
	int rc;

	t->dom_c = paging_domain(&t->a);
	map_at(ctx_a, t->dom_c, 0x101000, t->moved, KH_PROT_READ | KH_PROT_WRITE);
	if (!(kh_backend_caps(t->be) & KH_CAP_REPLACE)) {
		move_without_replace(t, t->dom_c);
	} else if ((rc = kh_replace(ctx_a, t->a.dev, t->dom_c)) == -EADDRINUSE &&
		   strstr(kh_last_error(), "sizes domains only at attach")) {
		/* The kernel's limit, not ours: the move still has to take DMA with it. */
		(void)printf("note: %s\n", kh_last_error());
		CHECK_OK(kh_detach(ctx_a, t->a.dev));
		CHECK_OK(kh_attach(ctx_a, t->a.dev, t->dom_c));
	} else {
		CHECK_OK(rc);
	}
	memset(t->dst, 0, PAGE);
	map_at(ctx_a, t->dom_a, 0x101000, t->dst, KH_PROT_WRITE);
	edu_dma(&t->a.regs, 0x101000, XFER, true);
	CHECK(memcmp(t->moved, t->src, XFER) == 0);
	CHECK(all_bytes(t->dst, PAGE, 0));
	(void)printf("ok: DMA followed the device to its new domain\n");
}

/* A copy shares the source's memory: the device reads A's page through domain C. */
static void check_copy(struct dma_test *t)
{
	struct kh_map_req copy = {
		.iova = 0x500000, .length = PAGE, .prot = KH_PROT_READ, .flags = KH_MAP_FIXED_IOVA};

	CHECK_OK(kh_copy(t->a.ctx, t->dom_c, &copy, t->dom_a, 0x100000));
	memset(t->moved, 0, PAGE);
	memset(t->src, 0x3c, XFER);
	edu_dma(&t->a.regs, 0x500000, XFER, false);
	edu_dma(&t->a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(t->moved, XFER, 0x3c));
	(void)printf("ok: DMA through a copied mapping reached the source's memory\n");
}

/* Memory given as a file: the bytes land in the file, with no mapping of it here. */
static void check_file_mapping(struct dma_test *t)
{
	int memfd = memfd_create("edu", MFD_CLOEXEC);
	uint8_t back[XFER];
	int rc;

	CHECK(memfd >= 0);
	CHECK_EQ(ftruncate(memfd, PAGE), 0);
	rc = kh_map(t->a.ctx, t->dom_c,
		    &(struct kh_map_req){.iova = 0x600000,
					 .length = PAGE,
					 .prot = KH_PROT_WRITE,
					 .fd = memfd,
					 .flags = KH_MAP_FIXED_IOVA | KH_MAP_FILE});
	if (rc == -EOPNOTSUPP) {
		(void)printf("note: this kernel cannot map files: %s\n", kh_last_error());
	} else {
		CHECK_OK(rc);
		edu_dma(&t->a.regs, 0x600000, XFER, true);
		CHECK_EQ(pread(memfd, back, XFER, 0), XFER);
		CHECK(all_bytes(back, XFER, 0x3c));
		(void)printf("ok: DMA landed in a file mapped by fd\n");
	}
	(void)close(memfd);
}

/* Detached, the device is blocked. Where the kernel keeps an open device in its domain
 * (vfio-type1) the detach is refused, and the end of the context cuts the device off. */
static void check_detached(struct dma_test *t)
{
	int rc = kh_detach(t->a.ctx, t->a.dev);

	if (rc == -EBUSY && strstr(kh_last_error(), "close that fd")) {
		kh_ctx_destroy(t->a.ctx);
		t->a.ctx = NULL;
	} else {
		CHECK_OK(rc);
	}
	memset(t->moved, 0, PAGE);
	edu_dma(&t->a.regs, 0x101000, XFER, true);
	CHECK(all_bytes(t->moved, PAGE, 0));
	(void)printf("ok: a %s device is blocked\n", t->a.ctx ? "detached" : "released");
}

int main(void)
{
	struct dma_test t = {0};

	t.mem = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	t.src = t.mem;
	t.dst = t.mem + PAGE;
	t.ro = t.mem + 2 * PAGE;
	t.other = t.mem + 3 * PAGE;
	t.moved = t.mem + 4 * PAGE;
	if (!find_edus(&t))
		return 77;
	setup_context_a(&t);
	check_mapped_dma(&t);
	check_read_only(&t);
	check_unmap(&t);
	check_contexts_apart(&t);
	check_replace(&t);
	check_copy(&t);
	check_file_mapping(&t);
	check_detached(&t);

	(void)close(t.a.regs.fd);
	(void)close(t.b.regs.fd);
	kh_ctx_destroy(t.a.ctx);
	kh_ctx_destroy(t.b.ctx);
	(void)printf("edu DMA through %s: all checks passed\n", kh_backend_name(t.be));
	kh_backend_close(t.be);
	return 0;
}
