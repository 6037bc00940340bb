/* SPDX-License-Identifier: MIT */
/*
 * The emulated IOMMU as a device sees it: DMA moves real bytes only through mappings that allow
 * it, faults are queued and move nothing, unmaps are seen at once, dirty bits follow writes, and
 * nested translation walks a stage-1 table kept in "guest" memory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <kh/kh.h>
#include <kh/kh_emu.h>
#include <kh/kh_testing.h>

#include "harness.h"

#define PAGE 4096ull
#define MiB  (1ull << 20)
#define GiB  (1ull << 30)

static const char topology[] = "[iommu]\n"
			       "devices = dev0 dev1 mate0 mate1\n"
			       "[device mate0]\n"
			       "group = 9\n"
			       "[device mate1]\n"
			       "group = 9\n";

FIXTURE(emu)
{
	struct kh_backend *be;
};

FIXTURE_SETUP(emu)
{
	CHECK_OK(kh_backend_open_emulated_text(topology, &self->be));
}

FIXTURE_TEARDOWN(emu)
{
	kh_backend_close(self->be);
}

/* Anonymous memory aligned to align; the reservation is never unmapped (tests are short). */
static uint8_t *aligned_memory(uint64_t size, uint64_t align)
{
	uint8_t *p = mmap(NULL, size + align, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	CHECK(p != MAP_FAILED);
	return (uint8_t *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
}

static uint64_t addr_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static struct kh_emu_fault last_fault(struct kh_backend *be)
{
	struct kh_emu_fault f[KH_EMU_FAULT_QUEUE_LEN];
	size_t n = kh_emu_faults(be, f, KH_EMU_FAULT_QUEUE_LEN);

	CHECK(n >= 1);
	return f[n - 1];
}

#define ANY_IOVA UINT64_MAX /* let the helper choose */

static uint64_t map(struct kh_ctx *ctx, uint32_t dom, uint64_t iova, const void *mem, uint64_t len,
		    uint32_t prot)
{
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = addr_of(mem),
				 .prot = prot,
				 .flags = iova == ANY_IOVA ? 0 : KH_MAP_FIXED_IOVA};

	CHECK_OK(kh_map(ctx, dom, &req));
	return req.iova;
}

struct attached {
	struct kh_ctx *ctx;
	uint32_t dev, dom;
};

static void attach_new(struct kh_backend *be, struct attached *f, const char *device,
		       uint32_t flags)
{
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_PAGING, .flags = flags};

	CHECK_OK(kh_ctx_create(be, &f->ctx));
	CHECK_OK(kh_device_bind(f->ctx, device, &f->dev));
	CHECK_OK(kh_domain_alloc(f->ctx, f->dev, &args, &f->dom));
	CHECK_OK(kh_attach(f->ctx, f->dev, f->dom));
}

TEST_F(emu, data_lands_and_unmap_blocks)
{
	struct attached f;
	uint8_t *mem = aligned_memory(4 * PAGE, PAGE);
	char msg[] = "written by the device", back[sizeof(msg)];
	uint64_t iova;

	attach_new(self->be, &f, "dev0", 0);
	iova = map(f.ctx, f.dom, ANY_IOVA, mem, 4 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	/* Crossing a page boundary exercises per-page translation. */
	CHECK_OK(kh_emu_dma(self->be, "dev0", iova + PAGE - 5, msg, sizeof(msg),
			    KH_EMU_DMA_TO_MEMORY));
	CHECK(memcmp(mem + PAGE - 5, msg, sizeof(msg)) == 0);
	CHECK_OK(kh_emu_dma(self->be, "dev0", iova + PAGE - 5, back, sizeof(back),
			    KH_EMU_DMA_FROM_MEMORY));
	CHECK(memcmp(back, msg, sizeof(msg)) == 0);

	/* The IOTLB holds the translation now; the unmap must still self->be seen at once. */
	CHECK_OK(kh_unmap(f.ctx, f.dom, iova, 4 * PAGE, NULL));
	memset(mem, 0, 4 * PAGE);
	CHECK_EQ(kh_emu_dma(self->be, "dev0", iova + 8, msg, sizeof(msg), KH_EMU_DMA_TO_MEMORY),
		 -EFAULT);
	CHECK(strstr(kh_last_error(), "faulted"));
	struct kh_emu_fault fault = last_fault(self->be);
	CHECK_EQ(fault.reason, KH_EMU_FAULT_NOT_PRESENT);
	CHECK_EQ(fault.iova, iova + 8);
	CHECK_EQ(fault.dir, KH_EMU_DMA_TO_MEMORY);
	CHECK(strcmp(fault.device, "dev0") == 0);
	for (size_t i = 0; i < 4 * PAGE; i++)
		CHECK_EQ(mem[i], 0);
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, fault_moves_nothing)
{
	struct attached f;
	uint8_t *mem = aligned_memory(2 * PAGE, PAGE);
	uint8_t data[2 * PAGE];
	uint64_t iova;

	attach_new(self->be, &f, "dev0", 0);
	iova = map(f.ctx, f.dom, 0x100000, mem, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	memset(data, 0xab, sizeof(data));
	/* The first page is mapped, the second not: not even the first may self->be written. */
	CHECK_EQ(kh_emu_dma(self->be, "dev0", iova, data, sizeof(data), KH_EMU_DMA_TO_MEMORY),
		 -EFAULT);
	CHECK_EQ(last_fault(self->be).iova, iova + PAGE);
	for (size_t i = 0; i < PAGE; i++)
		CHECK_EQ(mem[i], 0);
	CHECK_EQ(kh_emu_dma(self->be, "dev0", UINT64_MAX, data, 2, KH_EMU_DMA_TO_MEMORY), -EINVAL);
	CHECK_EQ(kh_emu_dma(self->be, "nodev", iova, data, 2, KH_EMU_DMA_TO_MEMORY), -ENOENT);
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, permissions)
{
	struct attached f;
	uint8_t *mem = aligned_memory(2 * PAGE, PAGE);
	uint8_t byte = 0x5a;
	uint64_t ro, wo;

	attach_new(self->be, &f, "dev0", 0);
	mem[0] = 1;
	ro = map(f.ctx, f.dom, ANY_IOVA, mem, PAGE, KH_PROT_READ);
	wo = map(f.ctx, f.dom, ANY_IOVA, mem + PAGE, PAGE, KH_PROT_WRITE);
	CHECK_EQ(kh_emu_dma(self->be, "dev0", ro, &byte, 1, KH_EMU_DMA_TO_MEMORY), -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_WRITE_DENIED);
	CHECK_EQ(mem[0], 1);
	CHECK_OK(kh_emu_dma(self->be, "dev0", ro, &byte, 1, KH_EMU_DMA_FROM_MEMORY));
	CHECK_EQ(byte, 1);
	CHECK_EQ(kh_emu_dma(self->be, "dev0", wo, &byte, 1, KH_EMU_DMA_FROM_MEMORY), -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_READ_DENIED);
	CHECK_OK(kh_emu_dma(self->be, "dev0", wo, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(mem[PAGE], 1);
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, blocked_identity_and_replace)
{
	struct kh_ctx *ctx;
	struct kh_domain_alloc_args blocked = {.type = KH_DOMAIN_BLOCKED},
				    identity = {.type = KH_DOMAIN_IDENTITY},
				    paging = {.type = KH_DOMAIN_PAGING};
	uint8_t *mem = aligned_memory(PAGE, PAGE);
	uint32_t dev, b, id, p;
	uint64_t phys;
	uint8_t byte = 7;

	CHECK_OK(kh_ctx_create(self->be, &ctx));
	CHECK_OK(kh_device_bind(ctx, "dev1", &dev));
	/* Bound but not attached: blocked. */
	CHECK_EQ(kh_emu_dma(self->be, "dev1", 0x1000, &byte, 1, KH_EMU_DMA_TO_MEMORY), -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_BLOCKED);
	CHECK_OK(kh_domain_alloc(ctx, dev, &blocked, &b));
	CHECK_OK(kh_domain_alloc(ctx, dev, &identity, &id));
	CHECK_OK(kh_domain_alloc(ctx, dev, &paging, &p));
	CHECK_OK(kh_attach(ctx, dev, b));
	CHECK_EQ(kh_emu_dma(self->be, "dev1", addr_of(mem), &byte, 1, KH_EMU_DMA_TO_MEMORY),
		 -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_BLOCKED);

	/* Identity: the IOVA is the address. */
	CHECK_OK(kh_replace(ctx, dev, id));
	CHECK_OK(kh_emu_dma(self->be, "dev1", addr_of(mem) + 3, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(mem[3], 7);
	CHECK_OK(kh_iova_to_phys(ctx, id, addr_of(mem), &phys));
	CHECK_EQ(phys, addr_of(mem));

	/* DMA follows the domain the device was moved to. */
	map(ctx, p, 0x200000, mem, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_replace(ctx, dev, p));
	byte = 9;
	CHECK_OK(kh_emu_dma(self->be, "dev1", 0x200000 + 4, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(mem[4], 9);
	CHECK_OK(kh_iova_to_phys(ctx, p, 0x200000 + 4, &phys));
	CHECK_EQ(phys, addr_of(mem) + 4);
	CHECK_EQ(kh_iova_to_phys(ctx, p, 0x400000, &phys), -ENOENT);
	CHECK_EQ(kh_iova_to_phys(ctx, b, 0, &phys), -EOPNOTSUPP);
	CHECK_OK(kh_detach(ctx, dev));
	CHECK_EQ(kh_emu_dma(self->be, "dev1", 0x200000, &byte, 1, KH_EMU_DMA_TO_MEMORY), -EFAULT);
	kh_ctx_destroy(ctx);
}

TEST_F(emu, group_shares_translation)
{
	struct attached f;
	uint8_t *mem = aligned_memory(PAGE, PAGE);
	uint8_t byte = 0x33;

	/* mate1 shares mate0's group, so the IOMMU cannot tell their DMA apart. */
	attach_new(self->be, &f, "mate0", 0);
	map(f.ctx, f.dom, 0x300000, mem, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_emu_dma(self->be, "mate1", 0x300000, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(mem[0], 0x33);
	CHECK_EQ(kh_emu_dma(self->be, "dev1", 0x300000, &byte, 1, KH_EMU_DMA_TO_MEMORY), -EFAULT);
	kh_ctx_destroy(f.ctx);
}

/* Whether a one-byte DMA by device to iova lands (writing value), or faults blocked. */
static bool dma_lands(struct kh_backend *be, const char *device, uint64_t iova, uint8_t value)
{
	int rc = kh_emu_dma(be, device, iova, &value, 1, KH_EMU_DMA_TO_MEMORY);

	if (rc == 0)
		return true;
	CHECK_EQ(rc, -EFAULT);
	CHECK_EQ(last_fault(be).reason, KH_EMU_FAULT_BLOCKED);
	return false;
}

static uint32_t domain_of(struct kh_ctx *ctx, uint32_t dev)
{
	uint32_t dom;

	CHECK_OK(kh_device_domain(ctx, dev, &dom));
	return dom;
}

/* dev0 attached to a fresh domain mapping a page of memory (returned) at 0x300000, then
 * detached behind the core: its DMA blocked while the books still say attached. */
static uint8_t *detached_behind(struct kh_backend *be, struct attached *f)
{
	uint8_t *mem = aligned_memory(PAGE, PAGE);

	attach_new(be, f, "dev0", 0);
	map(f->ctx, f->dom, 0x300000, mem, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_emu_detach_behind(be, "dev0"));
	CHECK(!dma_lands(be, "dev0", 0x300000, 1));
	CHECK_EQ(domain_of(f->ctx, f->dev), f->dom);
	return mem;
}

/* A device detached behind the core (a client's own VFIO call on a real kernel) is blocked
 * while the books say attached; a replace into the same domain attaches it again, a detach
 * agrees with the kernel, and an attach of what the books hold attached points to the replace. */
TEST_F(emu, detached_behind_the_core)
{
	struct attached f;
	uint8_t *mem = detached_behind(self->be, &f);

	CHECK_EQ(kh_attach(f.ctx, f.dev, f.dom), -EBUSY);
	CHECK(strstr(kh_last_error(), "replace instead"));

	CHECK_OK(kh_replace(f.ctx, f.dev, f.dom));
	CHECK(dma_lands(self->be, "dev0", 0x300000, 2));
	CHECK_EQ(mem[0], 2);
	CHECK_EQ(domain_of(f.ctx, f.dev), f.dom);

	/* Detaching what the kernel detached already leaves both saying detached. */
	CHECK_OK(kh_emu_detach_behind(self->be, "dev0"));
	CHECK_OK(kh_detach(f.ctx, f.dev));
	CHECK_EQ(domain_of(f.ctx, f.dev), 0);
	CHECK_OK(kh_attach(f.ctx, f.dev, f.dom));
	CHECK(dma_lands(self->be, "dev0", 0x300000, 3));
	CHECK_OK(kh_detach(f.ctx, f.dev));
	CHECK(!dma_lands(self->be, "dev0", 0x300000, 4));
	CHECK_EQ(mem[0], 3);
	kh_ctx_destroy(f.ctx);
}

/* Where the kernel refuses to take the device back, the books follow it: detached, blocked,
 * and the error says so and what to do. */
TEST_F(emu, refused_reattach_leaves_device_detached)
{
	struct attached f;
	uint8_t *mem = detached_behind(self->be, &f);

	kh_fail_nth_arm(1);
	CHECK_EQ(kh_replace(f.ctx, f.dev, f.dom), -EIO);
	CHECK(strstr(kh_last_error(), "detached now"));
	(void)printf("refused: %s\n", kh_last_error());
	CHECK(kh_fail_nth_disarm());
	CHECK_EQ(domain_of(f.ctx, f.dev), 0);
	CHECK(!dma_lands(self->be, "dev0", 0x300000, 2));
	CHECK_OK(kh_attach(f.ctx, f.dev, f.dom));
	CHECK(dma_lands(self->be, "dev0", 0x300000, 2));
	CHECK_EQ(mem[0], 2);
	kh_ctx_destroy(f.ctx);
}

/* The group is translated while any of its devices is attached: one device left behind the
 * core and put back by a replace counts once, so its mate's detach keeps the group's domain. */
TEST_F(emu, reattached_mate_counts_once)
{
	struct attached f;
	uint8_t *mem = aligned_memory(PAGE, PAGE);
	uint32_t mate;

	attach_new(self->be, &f, "mate0", 0);
	CHECK_OK(kh_device_bind(f.ctx, "mate1", &mate));
	CHECK_OK(kh_attach(f.ctx, mate, f.dom));
	map(f.ctx, f.dom, 0x300000, mem, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_emu_detach_behind(self->be, "mate0"));
	CHECK_OK(kh_replace(f.ctx, f.dev, f.dom));
	CHECK_OK(kh_replace(f.ctx, f.dev, f.dom));
	CHECK_OK(kh_detach(f.ctx, mate));
	CHECK(dma_lands(self->be, "mate0", 0x300000, 5));
	CHECK_EQ(mem[0], 5);
	CHECK_OK(kh_detach(f.ctx, f.dev));
	CHECK(!dma_lands(self->be, "mate0", 0x300000, 6));
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, dirty_tracking)
{
	struct attached f;
	uint8_t *big = aligned_memory(2 * MiB, 2 * MiB);
	uint8_t *small = aligned_memory(4 * PAGE, PAGE);
	uint64_t bitmap[9], ones = 0;
	uint8_t byte = 1;

	attach_new(self->be, &f, "dev0", KH_DOMAIN_F_DIRTY_TRACKING);
	map(f.ctx, f.dom, 0x40000000, big, 2 * MiB, KH_PROT_READ | KH_PROT_WRITE);
	map(f.ctx, f.dom, 0x40200000, small, 4 * PAGE, KH_PROT_READ | KH_PROT_WRITE);

	/* Off: writes leave no trace. */
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x40200000, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x40000000, 2 * MiB + 4 * PAGE, PAGE, bitmap, 0));
	for (int i = 0; i < 9; i++)
		CHECK_EQ(bitmap[i], 0);

	CHECK_OK(kh_set_dirty_tracking(f.ctx, f.dom, true));
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x40200000 + 2 * PAGE, &byte, 1,
			    KH_EMU_DMA_TO_MEMORY));
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x40000000 + 7 * PAGE, &byte, 1,
			    KH_EMU_DMA_TO_MEMORY));
	/* Reads do not dirty. */
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x40200000 + 3 * PAGE, &byte, 1,
			    KH_EMU_DMA_FROM_MEMORY));

	/* 4 KiB granules over 2 MiB + 16 KiB: the 2 MiB leaf is dirty as a whole. */
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x40000000, 2 * MiB + 4 * PAGE, PAGE, bitmap,
			       KH_DIRTY_NO_CLEAR));
	for (int i = 0; i < 8; i++)
		CHECK_EQ(bitmap[i], ~0ull);
	CHECK_EQ(bitmap[8], 1ull << 2);
	uint64_t tail[9];
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x40000000, 2 * MiB + 4 * PAGE, PAGE, tail, 0));
	CHECK_EQ(tail[8], 1ull << 2);
	for (int i = 0; i < 8; i++)
		ones += (uint64_t)__builtin_popcountll(tail[i]);
	CHECK_EQ(ones, 512);
	/* Read and cleared: nothing is dirty any more. */
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x40000000, 2 * MiB + 4 * PAGE, PAGE, tail, 0));
	for (int i = 0; i < 9; i++)
		CHECK_EQ(tail[i], 0);
	/* Writing again after the clear is seen again, cached translation or not. */
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x40200000 + 2 * PAGE, &byte, 1,
			    KH_EMU_DMA_TO_MEMORY));
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x40200000, 4 * PAGE, PAGE, tail, 0));
	CHECK_EQ(tail[0], 1ull << 2);
	kh_ctx_destroy(f.ctx);
}

/* Dirty bits lost (a rebuilt domain): each mapped page reads dirty until a clearing read of
 * its range, the device's own writes on top, and the gap between mappings stays clean. */
TEST_F(emu, dirty_bits_lost)
{
	struct attached f;
	uint8_t *mem = aligned_memory(10 * PAGE, PAGE);
	uint64_t bitmap[1];
	uint8_t byte = 1;

	attach_new(self->be, &f, "dev0", KH_DOMAIN_F_DIRTY_TRACKING);
	map(f.ctx, f.dom, 0x100000, mem, 4 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	map(f.ctx, f.dom, 0x104000, mem + 4 * PAGE, 4 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	map(f.ctx, f.dom, 0x110000, mem + 8 * PAGE, 2 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_set_dirty_tracking(f.ctx, f.dom, true));
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x110000 + PAGE, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_OK(kh_dirty_bits_lost(f.ctx, f.dom));

	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x100000, 32 * PAGE, PAGE, bitmap, KH_DIRTY_NO_CLEAR));
	CHECK_EQ(bitmap[0], 0x300ffull);
	/* A clearing read of pages 2..5 takes only them out. */
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x102000, 4 * PAGE, PAGE, bitmap, 0));
	CHECK_EQ(bitmap[0], 0xfull);
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x100000, 32 * PAGE, PAGE, bitmap, 0));
	CHECK_EQ(bitmap[0], 0x300c3ull);
	CHECK_OK(kh_emu_dma(self->be, "dev0", 0x110000, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x100000, 32 * PAGE, PAGE, bitmap, 0));
	CHECK_EQ(bitmap[0], 1ull << 16);
	CHECK_OK(kh_read_dirty(f.ctx, f.dom, 0x100000, 32 * PAGE, PAGE, bitmap, 0));
	CHECK_EQ(bitmap[0], 0);
	kh_ctx_destroy(f.ctx);
}

/* Writes a stage-1 entry into the guest memory that backs IPA ipa. */
static void s1_set(uint8_t *guest, uint64_t table_ipa, unsigned index, uint64_t value)
{
	memcpy(guest + table_ipa + index * 8, &value, sizeof(value));
}

/* A stage-1 walk from the root at IPA 0 through tables at 0x1000, 0x2000 and 0x3000 (indexes
 * 5, 6, 7 and 8: the nested case's s1_iova) to the data page at IPA 0x10000, each with bits. */
static void s1_walk(uint8_t *guest, uint64_t bits)
{
	s1_set(guest, 0x0000, 5, 0x1000 | bits);
	s1_set(guest, 0x1000, 6, 0x2000 | bits);
	s1_set(guest, 0x2000, 7, 0x3000 | bits);
	s1_set(guest, 0x3000, 8, 0x10000 | bits);
}

/* A nested domain over parent, with the stage 1 that s1 describes. */
static struct kh_domain_alloc_args nested_args(const struct kh_emu_s1 *s1, uint32_t parent)
{
	return (struct kh_domain_alloc_args){.type = KH_DOMAIN_NESTED,
					     .parent_id = parent,
					     .data_type = KH_NEST_DATA_EMU_S1,
					     .data = s1,
					     .data_len = sizeof(*s1)};
}

TEST_F(emu, nested)
{
	struct attached f;
	struct kh_emu_s1 s1 = {.root_iova = 0};
	struct kh_domain_alloc_args nested;
	struct kh_map_req req = {.length = PAGE, .addr = 0, .prot = KH_PROT_READ};
	/* Guest memory: tables at IPA 0x0-0x3fff, data pages at 0x10000 and 0x11000. */
	uint8_t *guest = aligned_memory(0x20000, PAGE);
	const uint64_t rw = 3, s1_iova = (5ull << 39) | (6ull << 30) | (7ull << 21) | (8ull << 12);
	uint8_t byte = 0x77;
	uint32_t child, dev1;
	uint64_t phys;

	attach_new(self->be, &f, "dev0", KH_DOMAIN_F_NEST_PARENT);
	CHECK_OK(kh_detach(f.ctx, f.dev));
	map(f.ctx, f.dom, 0, guest, 0x20000, KH_PROT_READ | KH_PROT_WRITE);
	s1_walk(guest, rw);

	nested = nested_args(&s1, f.dom);
	CHECK_OK(kh_domain_alloc(f.ctx, f.dev, &nested, &child));
	CHECK_OK(kh_attach(f.ctx, f.dev, child));
	CHECK_OK(kh_emu_dma(self->be, "dev0", s1_iova + 9, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(guest[0x10000 + 9], 0x77);
	CHECK_OK(kh_iova_to_phys(f.ctx, child, s1_iova, &phys));
	CHECK_EQ(phys, addr_of(guest) + 0x10000);

	/* The owner repoints its stage 1: the IOTLB keeps the old page until it is flushed. */
	s1_set(guest, 0x3000, 8, 0x11000 | rw);
	CHECK_OK(kh_emu_dma(self->be, "dev0", s1_iova + 10, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(guest[0x10000 + 10], 0x77);
	CHECK_OK(kh_flush_iotlb(f.ctx, child));
	CHECK_OK(kh_emu_dma(self->be, "dev0", s1_iova + 11, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(guest[0x11000 + 11], 0x77);

	/* Stage-1 read-only denies writes; an empty stage-1 entry faults. */
	s1_set(guest, 0x3000, 8, 0x11000 | 1);
	CHECK_OK(kh_flush_iotlb(f.ctx, child));
	CHECK_EQ(kh_emu_dma(self->be, "dev0", s1_iova, &byte, 1, KH_EMU_DMA_TO_MEMORY), -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_WRITE_DENIED);
	CHECK_EQ(kh_emu_dma(self->be, "dev0", s1_iova + PAGE, &byte, 1, KH_EMU_DMA_TO_MEMORY),
		 -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_NOT_PRESENT);

	/* Unmapping the stage-1 tables from the parent breaks the walk, even for cached
	 * translations: the parent's invalidation reaches its children. */
	CHECK_OK(kh_emu_dma(self->be, "dev0", s1_iova, &byte, 1, KH_EMU_DMA_FROM_MEMORY));
	CHECK_OK(kh_unmap(f.ctx, f.dom, 0, 0x20000, NULL));
	CHECK_EQ(kh_emu_dma(self->be, "dev0", s1_iova, &byte, 1, KH_EMU_DMA_FROM_MEMORY), -EFAULT);
	CHECK_EQ(last_fault(self->be).reason, KH_EMU_FAULT_STAGE1_BROKEN);

	/* The stage 1 is the owner's: no map; the parent stays while a child uses it. */
	CHECK_EQ(kh_map(f.ctx, child, &req), -EOPNOTSUPP);
	CHECK(strstr(kh_last_error(), "nest parent"));
	CHECK_EQ(kh_domain_free(f.ctx, f.dom), -EBUSY);
	CHECK_OK(kh_device_bind(f.ctx, "dev1", &dev1));
	kh_ctx_destroy(f.ctx);
}

/* A stage 1 the owner describes wrongly is refused: a root not page aligned, a short struct. */
TEST_F(emu, nested_bad_stage1)
{
	struct attached f;
	struct kh_emu_s1 s1 = {.root_iova = 0x800};
	struct kh_domain_alloc_args nested;
	uint32_t child;

	attach_new(self->be, &f, "dev0", KH_DOMAIN_F_NEST_PARENT);
	nested = nested_args(&s1, f.dom);
	CHECK_EQ(kh_domain_alloc(f.ctx, f.dev, &nested, &child), -EINVAL);
	nested.data_len = 4;
	CHECK_EQ(kh_domain_alloc(f.ctx, f.dev, &nested, &child), -EINVAL);
	CHECK(strstr(kh_last_error(), "struct kh_emu_s1"));
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, huge_leaf)
{
	struct kh_backend *huge;
	struct kh_ctx *ctx;
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint8_t *mem = aligned_memory(GiB, GiB);
	uint64_t phys, bytes;
	uint32_t dev, dom;
	uint8_t byte = 0x42;

	CHECK_OK(kh_backend_open_emulated_text("[iommu]\ndevices = big\n", &huge));
	CHECK_OK(kh_ctx_create(huge, &ctx));
	CHECK_OK(kh_device_bind(ctx, "big", &dev));
	CHECK_OK(kh_domain_alloc(ctx, dev, &paging, &dom));
	CHECK_OK(kh_attach(ctx, dev, dom));
	map(ctx, dom, 4 * GiB, mem, GiB, KH_PROT_READ | KH_PROT_WRITE);
	/* One leaf for the whole GiB: root, one level-3 table. */
	CHECK_OK(kh_domain_table_bytes(ctx, dom, &bytes));
	CHECK_EQ(bytes, 2 * PAGE);
	CHECK_OK(kh_iova_to_phys(ctx, dom, 4 * GiB + 0x12345678, &phys));
	CHECK_EQ(phys, addr_of(mem) + 0x12345678);
	CHECK_OK(kh_emu_dma(huge, "big", 4 * GiB + 0x3ffff000, &byte, 1, KH_EMU_DMA_TO_MEMORY));
	CHECK_EQ(mem[0x3ffff000], 0x42);
	CHECK_OK(kh_unmap(ctx, dom, 4 * GiB, GiB, NULL));
	CHECK_OK(kh_domain_table_bytes(ctx, dom, &bytes));
	CHECK_EQ(bytes, PAGE);
	kh_ctx_destroy(ctx);
	kh_backend_close(huge);
}

/* What the tables of each domain cost its caller, through the backend-neutral call: sparse 4 KiB
 * mappings cost three tables each; domains without tables cost nothing. kh_map says what the
 * call would after it, for a part that continues a mapping (KH_MAP_EXTEND) too. */
TEST_F(emu, table_bytes_for_charging)
{
	struct kh_domain_alloc_args blocked = {.type = KH_DOMAIN_BLOCKED};
	uint8_t *mem = aligned_memory(2 * PAGE, PAGE);
	/* The last page below a 2 MiB boundary: the part after it needs a leaf table of its own. */
	struct kh_map_req req = {.iova = (1ull << 39) + (2ull << 20) - PAGE,
				 .length = PAGE,
				 .addr = addr_of(mem),
				 .prot = KH_PROT_READ,
				 .flags = KH_MAP_FIXED_IOVA};
	struct attached f;
	uint64_t bytes;
	uint32_t b;

	attach_new(self->be, &f, "dev0", 0);
	CHECK_OK(kh_domain_table_bytes(f.ctx, f.dom, &bytes));
	CHECK_EQ(bytes, PAGE); /* the root */
	map(f.ctx, f.dom, 0, mem, PAGE, KH_PROT_READ);
	CHECK_OK(kh_map(f.ctx, f.dom, &req));
	CHECK_EQ(req.table_bytes, (1 + 2 * 3) * PAGE);
	CHECK_OK(kh_domain_table_bytes(f.ctx, f.dom, &bytes));
	CHECK_EQ(bytes, (1 + 2 * 3) * PAGE);
	req.iova += PAGE;
	req.addr += PAGE;
	req.flags |= KH_MAP_EXTEND;
	req.table_bytes = 0;
	CHECK_OK(kh_map(f.ctx, f.dom, &req));
	CHECK_EQ(req.table_bytes, (1 + 2 * 3 + 1) * PAGE);
	CHECK_OK(kh_unmap(f.ctx, f.dom, 1ull << 39, 4ull << 20, NULL));
	CHECK_OK(kh_domain_table_bytes(f.ctx, f.dom, &bytes));
	CHECK_EQ(bytes, (1 + 3) * PAGE);
	CHECK_OK(kh_domain_alloc(f.ctx, f.dev, &blocked, &b));
	CHECK_OK(kh_domain_table_bytes(f.ctx, b, &bytes));
	CHECK_EQ(bytes, 0);
	CHECK_EQ(kh_domain_table_bytes(f.ctx, 999, &bytes), -ENOENT);
	kh_ctx_destroy(f.ctx);
}

TEST_F(emu, fault_queue_bounded)
{
	struct kh_emu_fault f[KH_EMU_FAULT_QUEUE_LEN];
	uint64_t lost = kh_emu_faults_lost(self->be);
	uint8_t byte;

	while (kh_emu_faults(self->be, f, KH_EMU_FAULT_QUEUE_LEN))
		;
	for (unsigned i = 0; i < KH_EMU_FAULT_QUEUE_LEN + 44; i++)
		CHECK_EQ(kh_emu_dma(self->be, "dev1", (uint64_t)i * PAGE, &byte, 1,
				    KH_EMU_DMA_FROM_MEMORY),
			 -EFAULT);
	CHECK_EQ(kh_emu_faults_lost(self->be) - lost, 44);
	CHECK_EQ(kh_emu_faults(self->be, f, KH_EMU_FAULT_QUEUE_LEN), KH_EMU_FAULT_QUEUE_LEN);
	/* The newest faults are kept, oldest first. */
	CHECK_EQ(f[0].iova, 44 * PAGE);
	CHECK_EQ(f[KH_EMU_FAULT_QUEUE_LEN - 1].iova, (KH_EMU_FAULT_QUEUE_LEN + 43) * PAGE);
	CHECK_EQ(kh_emu_faults(self->be, f, 1), 0);
}
