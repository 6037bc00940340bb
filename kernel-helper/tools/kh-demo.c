/* SPDX-License-Identifier: MIT */
/*
 * kh-demo: kernel-helper's contract walked through on the emulated IOMMU, step by step, with
 * every claim checked: what a person runs first to see what iommud's bottom layer does.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <kh/kh.h>
#include <kh/kh_emu.h>

#include "tool-options.h"

#define PAGE 4096u

static const char default_topology[] = "[iommu]\n"
				       "devices = nic0 gpu0\n"
				       "[device gpu0]\n"
				       "reserved = 0x100000-0x1fffff\n";

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"Usage: kh-demo [--topology FILE] [--help]\n"
		"\n"
		"Walks through kernel-helper, the layer of iommud that owns IOMMU domains, on the\n"
		"emulated IOMMU (no hardware or privileges needed), and checks each step:\n"
		"  - lists the devices, their IOMMU groups, page sizes, aperture, features and\n"
		"    reserved IOVA ranges;\n"
		"  - binds the first device into a new context, allocates a paging domain with\n"
		"    dirty tracking from it and attaches the device;\n"
		"  - maps one buffer read-write and one read-only at IOVAs the helper chooses, "
		"and\n"
		"    shows the mappings and the IOVA ranges still free;\n"
		"  - has the device write into the read-write buffer by DMA and shows the bytes "
		"that\n"
		"    landed, then shows a device write to the read-only buffer fault;\n"
		"  - reads the dirty bitmap, unmaps, and shows DMA to the old IOVA fault.\n"
		"\n"
		"Options:\n"
		"  -t, --topology FILE  emulated devices to use (INI; see "
		"kernel-helper/include/kh/\n"
		"                       kh_emu.h). Default: two devices, nic0 and gpu0.\n"
		"  -h, --help           show this text\n"
		"\n"
		"Exit status: 0 when every step behaved as shown, 1 when one did not (the step "
		"and\n"
		"kernel-helper's message are printed), 2 on a usage error.\n"
		"\n"
		"Example:\n"
		"  kh-demo --topology my-machine.ini\n");
}

/* A step that must succeed: on failure, say which and why, and stop. */
static void step(int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "kh-demo: %s failed: %s\n", what, kh_last_error());
		exit(1);
	}
}

static void expect(bool ok, const char *what)
{
	if (!ok) {
		(void)fprintf(stderr, "kh-demo: %s did not hold\n", what);
		exit(1);
	}
}

static void print_page_sizes(uint64_t sizes)
{
	static const struct {
		uint64_t size;
		const char *name;
	} names[] = {{1ull << 12, "4K"}, {1ull << 21, "2M"}, {1ull << 30, "1G"}};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (sizes & names[i].size)
			(void)printf(" %s", names[i].name);
}

static void list_devices(struct kh_backend *be)
{
	(void)printf("Devices on the %s backend:\n", kh_backend_name(be));
	for (size_t i = 0; i < kh_device_count(be); i++) {
		struct kh_device_info info;
		struct kh_iova_range resv[16];
		int n;

		step(kh_device_info(be, i, &info), "reading device info");
		(void)printf("  %-8s group %-3u pages", info.name, info.group);
		print_page_sizes(info.hw.page_sizes);
		(void)printf("  aperture 0x%" PRIx64 "-0x%" PRIx64 "%s%s\n", info.hw.aperture_start,
			     info.hw.aperture_last,
			     info.hw.dirty_tracking ? "  dirty-tracking" : "",
			     info.hw.nesting ? "  nesting" : "");
		n = kh_device_reserved_regions(be, i, resv, 16);
		step(n, "reading reserved regions");
		for (int r = 0; r < n && r < 16; r++)
			(void)printf("           reserved 0x%" PRIx64 "-0x%" PRIx64 "\n",
				     resv[r].start, resv[r].last);
	}
}

static void show_domain(struct kh_ctx *ctx, uint32_t dom)
{
	struct kh_mapping m[8];
	struct kh_iova_range r[8];
	int n = kh_mappings(ctx, dom, 0, m, 8);

	step(n, "listing mappings");
	(void)printf("Mappings of domain %u:\n", dom);
	for (int i = 0; i < n; i++)
		(void)printf("  IOVA 0x%-12" PRIx64 " %6" PRIu64 " KiB -> %p  %s%s\n", m[i].iova,
			     m[i].length / 1024, (void *)(uintptr_t)m[i].addr,
			     (m[i].prot & KH_PROT_READ) ? "r" : "-",
			     (m[i].prot & KH_PROT_WRITE) ? "w" : "-");
	n = kh_iova_ranges(ctx, dom, r, 8);
	step(n, "listing free IOVA ranges");
	(void)printf("IOVA ranges where mappings may go:\n");
	for (int i = 0; i < n && i < 8; i++)
		(void)printf("  0x%" PRIx64 "-0x%" PRIx64 "\n", r[i].start, r[i].last);
}

static uint64_t map(struct kh_ctx *ctx, uint32_t dom, void *mem, uint32_t prot)
{
	struct kh_map_req req = {.length = PAGE, .addr = (uintptr_t)mem, .prot = prot};

	step(kh_map(ctx, dom, &req), "mapping a buffer");
	return req.iova;
}

static void expect_fault(struct kh_backend *be, const char *device, uint64_t iova, void *buf,
			 const char *what)
{
	static const char *const reasons[] = {
		[KH_EMU_FAULT_BLOCKED] = "blocked",
		[KH_EMU_FAULT_NOT_PRESENT] = "not present",
		[KH_EMU_FAULT_READ_DENIED] = "read denied",
		[KH_EMU_FAULT_WRITE_DENIED] = "write denied",
		[KH_EMU_FAULT_STAGE1_BROKEN] = "stage 1 broken",
	};
	struct kh_emu_fault fault;

	expect(kh_emu_dma(be, device, iova, buf, 8, KH_EMU_DMA_TO_MEMORY) == -EFAULT, what);
	expect(kh_emu_faults(be, &fault, 1) == 1, "a fault was queued");
	(void)printf("  fault: %s wrote IOVA 0x%" PRIx64 ": %s\n", fault.device, fault.iova,
		     reasons[fault.reason]);
}

static void take_option(int opt, const char *value, void *arg)
{
	(void)opt; /* only --topology gets here */
	*(const char **)arg = value;
}

/* The first device of a fresh context, attached to a paging domain allocated from it, with
 * dirty tracking when its IOMMU has it. */
struct demo {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	struct kh_device_info first;
	uint32_t dev, dom;
	bool dirty;
};

static void demo_setup(struct demo *d, const char *topology)
{
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_PAGING};

	step(topology ? kh_backend_open_emulated(topology, &d->be)
		      : kh_backend_open_emulated_text(default_topology, &d->be),
	     "opening the emulated IOMMU");
	list_devices(d->be);
	step(kh_device_info(d->be, 0, &d->first), "reading the first device");
	d->dirty = d->first.hw.dirty_tracking;
	if (d->dirty)
		args.flags = KH_DOMAIN_F_DIRTY_TRACKING;

	step(kh_ctx_create(d->be, &d->ctx), "creating a context");
	step(kh_device_bind(d->ctx, d->first.name, &d->dev), "binding the device");
	step(kh_domain_alloc(d->ctx, d->dev, &args, &d->dom), "allocating a paging domain");
	step(kh_attach(d->ctx, d->dev, d->dom), "attaching the device");
	(void)printf("\nBound %s as device %u, attached to paging domain %u%s.\n\n", d->first.name,
		     d->dev, d->dom, d->dirty ? " (dirty tracking)" : "");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"topology", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'}, {0}};
	const char *topology = NULL;
	struct demo d;
	char message[] = "hello, DMA";
	uint64_t rw_iova, ro_iova, dirty[1];
	uint8_t *mem;
	int status = tool_options(argc, argv, "t:h", options, usage, take_option, &topology);

	if (status >= 0)
		return status;
	demo_setup(&d, topology);

	mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	expect(mem != MAP_FAILED, "allocating two pages");
	rw_iova = map(d.ctx, d.dom, mem, KH_PROT_READ | KH_PROT_WRITE);
	ro_iova = map(d.ctx, d.dom, mem + PAGE, KH_PROT_READ);
	show_domain(d.ctx, d.dom);

	if (d.dirty)
		step(kh_set_dirty_tracking(d.ctx, d.dom, true), "switching dirty tracking on");
	(void)printf("\nDMA:\n");
	step(kh_emu_dma(d.be, d.first.name, rw_iova + 16, message, sizeof(message),
			KH_EMU_DMA_TO_MEMORY),
	     "DMA into the read-write mapping");
	expect(memcmp(mem + 16, message, sizeof(message)) == 0, "the DMA'd bytes landed");
	(void)printf("  %s wrote \"%s\" at IOVA 0x%" PRIx64 "; memory at %p now reads \"%s\"\n",
		     d.first.name, message, rw_iova + 16, (void *)(mem + 16), (char *)mem + 16);
	expect_fault(d.be, d.first.name, ro_iova, message, "a DMA write to the read-only mapping");
	expect(mem[PAGE] == 0, "the read-only page is untouched");

	if (d.dirty) {
		step(kh_read_dirty(d.ctx, d.dom, rw_iova, PAGE, PAGE, dirty, 0),
		     "reading dirty bits");
		expect(dirty[0] == 1, "the written page is dirty");
		(void)printf("  dirty bitmap of the read-write page: %" PRIu64
			     " (written since cleared)\n",
			     dirty[0]);
	}

	step(kh_unmap(d.ctx, d.dom, rw_iova, PAGE, NULL), "unmapping");
	(void)printf("\nUnmapped IOVA 0x%" PRIx64 ":\n", rw_iova);
	expect_fault(d.be, d.first.name, rw_iova, message, "a DMA write after unmap");

	kh_ctx_destroy(d.ctx);
	kh_backend_close(d.be);
	(void)munmap(mem, 2 * PAGE);
	(void)printf("\nEvery step behaved as shown.\n");
	return 0;
}
