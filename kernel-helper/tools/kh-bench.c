/* SPDX-License-Identifier: MIT */
/*
 * kh-bench: figures for the emulated backend. Map+unmap cost per granule through the public
 * API (kh_map/kh_unmap) next to the page-table layer alone (emu_pgtable_map/unmap), so the
 * core's share shows as a ratio; one 1 GiB range of 4 KiB pages; page-table memory per mapped
 * GiB. A benchmark prints; it never judges. Addresses are only numbers to the emulated page
 * table unless a device does DMA, so no memory is allocated for the mappings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kh/kh.h>
#include <kh/kh_emu.h>

#include "bench_median.h"
#include "emu_pgtable.h"
#include "tool-options.h"

#define KiB	  (1ull << 10)
#define MiB	  (1ull << 20)
#define GiB	  (1ull << 30)
#define FAKE_ADDR (1ull << 40) /* 1 GiB aligned, never touched */
#define IOVA	  (4 * GiB)
#define RUNS	  5

static double target_seconds = 0.3;

static double now(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "kh-bench: %s: %s\n", what, kh_last_error());
		exit(1);
	}
}

/* A context with one device attached to one paging domain, on a topology whose IOMMU offers
 * page_sizes. */
struct setup {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dom;
};

static void setup(struct setup *s, const char *page_sizes)
{
	char topology[128];
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t dev;

	(void)snprintf(topology, sizeof(topology),
		       "[iommu]\ndevices = d\n[device d]\npage-sizes = %s\n", page_sizes);
	check(kh_backend_open_emulated_text(topology, &s->be), "opening the emulated IOMMU");
	check(kh_ctx_create(s->be, &s->ctx), "creating a context");
	check(kh_device_bind(s->ctx, "d", &dev), "binding");
	check(kh_domain_alloc(s->ctx, dev, &paging, &s->dom), "allocating a domain");
	check(kh_attach(s->ctx, dev, s->dom), "attaching");
}

static void teardown(struct setup *s)
{
	kh_ctx_destroy(s->ctx);
	kh_backend_close(s->be);
}

struct job {
	struct setup *s;
	struct emu_pgtable *pt;
	uint64_t length, page_sizes;
};

static void api_pair(const struct job *j)
{
	struct kh_map_req req = {.iova = IOVA,
				 .length = j->length,
				 .addr = FAKE_ADDR,
				 .prot = KH_PROT_READ | KH_PROT_WRITE,
				 .flags = KH_MAP_FIXED_IOVA};

	check(kh_map(j->s->ctx, j->s->dom, &req), "kh_map");
	check(kh_unmap(j->s->ctx, j->s->dom, IOVA, j->length, NULL), "kh_unmap");
}

static void raw_pair(const struct job *j)
{
	check(emu_pgtable_map(j->pt, IOVA, FAKE_ADDR, j->length, EMU_PTE_R | EMU_PTE_W,
			      j->page_sizes),
	      "emu_pgtable_map");
	check(emu_pgtable_unmap(j->pt, IOVA, j->length, NULL), "emu_pgtable_unmap");
}

/* Median over RUNS of the ns per call, each run repeating until target_seconds passed. */
static double ns_per_pair(void (*pair)(const struct job *), const struct job *j)
{
	double runs[RUNS];

	pair(j); /* warm: tables allocated once, caches filled */
	for (int r = 0; r < RUNS; r++) {
		double start = now(), elapsed;
		uint64_t n = 0;

		do {
			for (int i = 0; i < 16; i++)
				pair(j);
			n += 16;
			elapsed = now() - start;
		} while (elapsed < target_seconds / RUNS);
		runs[r] = elapsed * 1e9 / (double)n;
	}
	return bench_median(runs, RUNS);
}

static uint64_t pgtable_bytes_for_gib(struct setup *s)
{
	struct kh_map_req req = {.iova = IOVA,
				 .length = GiB,
				 .addr = FAKE_ADDR,
				 .prot = KH_PROT_READ,
				 .flags = KH_MAP_FIXED_IOVA};
	uint64_t empty, full;

	check(kh_domain_table_bytes(s->ctx, s->dom, &empty), "measuring page tables");
	check(kh_map(s->ctx, s->dom, &req), "mapping 1 GiB");
	check(kh_domain_table_bytes(s->ctx, s->dom, &full), "measuring page tables");
	check(kh_unmap(s->ctx, s->dom, IOVA, GiB, NULL), "unmapping 1 GiB");
	return full - empty;
}

static void granule(const char *label, uint64_t length, const char *page_sizes, uint64_t mask)
{
	struct setup s;
	struct emu_pgtable pt;
	struct job j = {&s, &pt, length, mask};
	double api, raw;
	uint64_t bytes;

	setup(&s, page_sizes);
	check(emu_pgtable_init(&pt), "allocating a page table");
	api = ns_per_pair(api_pair, &j);
	raw = ns_per_pair(raw_pair, &j);
	bytes = pgtable_bytes_for_gib(&s);
	(void)printf("%-22s %12.0f %12.0f %9.2f %14.0f %14.1f\n", label, api, raw, api / raw,
		     1e9 / api, (double)bytes / KiB);
	emu_pgtable_destroy(&pt);
	teardown(&s);
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"Usage: kh-bench [--quick] [--help]\n"
		"\n"
		"Prints what mapping costs on kernel-helper's emulated IOMMU. For each case: the\n"
		"median time of one map+unmap pair through the public API (kh_map/kh_unmap) and\n"
		"through the page-table layer alone, their ratio (the core's share), map+unmap "
		"pairs\n"
		"per second through the API, and the page-table memory one mapped GiB takes with\n"
		"that granule. Cases: 4 KiB, 2 MiB and 1 GiB leaves, and one 1 GiB range built of\n"
		"4 KiB leaves (also given per page).\n"
		"\n"
		"Options:\n"
		"  --quick  a short run that only shows the benchmark works (figures are noisy)\n"
		"  --help   show this text\n"
		"\n"
		"Exit status: 0 after printing, 1 if a step failed, 2 on a usage error.\n");
}

static void take_option(int opt, const char *value, void *arg)
{
	(void)opt; /* only --quick gets here */
	(void)value;
	(void)arg;
	target_seconds = 0.005;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"quick", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'}, {0}};
	int status = tool_options(argc, argv, "qh", options, usage, take_option, NULL);

	if (status >= 0)
		return status;
	(void)printf("%-22s %12s %12s %9s %14s %14s\n", "case (map+unmap)", "api ns", "pgtable ns",
		     "api/pgt", "api pairs/s", "KiB per GiB");
	/* Each IOMMU offers no leaf larger than the granule, so a mapped GiB is made of it. */
	granule("4 KiB leaf", 4 * KiB, "4K", EMU_SZ_4K);
	granule("2 MiB leaf", 2 * MiB, "4K 2M", EMU_SZ_4K | EMU_SZ_2M);
	granule("1 GiB leaf", GiB, "4K 2M 1G", EMU_SZ_4K | EMU_SZ_2M | EMU_SZ_1G);
	granule("1 GiB of 4 KiB leaves", GiB, "4K", EMU_SZ_4K);

	/* The last case again, per 4 KiB page. */
	struct setup s;
	struct emu_pgtable pt;
	struct job j = {&s, &pt, GiB, EMU_SZ_4K};

	setup(&s, "4K");
	check(emu_pgtable_init(&pt), "allocating a page table");
	(void)printf("%-22s %12.2f %12.2f\n", "  per 4 KiB page",
		     ns_per_pair(api_pair, &j) / 262144, ns_per_pair(raw_pair, &j) / 262144);
	emu_pgtable_destroy(&pt);
	teardown(&s);
	return 0;
}
