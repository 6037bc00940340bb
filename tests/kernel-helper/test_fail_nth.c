/* SPDX-License-Identifier: MIT */
/*
 * Every mutating call is all or nothing: for each one, fail its 1st, 2nd, ... injection point
 * (allocations and backend steps, <kh/kh_testing.h>) until it runs without reaching the armed
 * one. Each failure must return an errno with a message and leave everything a caller can
 * observe as it was; LeakSanitizer (the sanitizer build) catches what a failure leaks.
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

#define PAGE	    4096ull
#define MiB	    (1ull << 20)
#define GiB	    (1ull << 30)
#define MAX_DOMAINS 8

static const char topology[] = "[iommu]\n"
			       "devices = a b\n"
			       "[device b]\n"
			       "reserved = 0x7000000-0x7ffffff\n";

struct world {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dev_a, dev_b;
	uint32_t domains[MAX_DOMAINS];
	size_t n_domains;
	uint8_t *mem; /* 1 GiB aligned, 2 GiB reserved, touched only by DMA */
};

/* What a caller can observe of the world. */
struct snapshot {
	struct kh_mapping maps[MAX_DOMAINS][16];
	int n_maps[MAX_DOMAINS];
	struct kh_iova_range ranges[MAX_DOMAINS][8];
	int n_ranges[MAX_DOMAINS];
	uint64_t pgtable[MAX_DOMAINS];
	uint32_t attached_a, attached_b;
	int dma[MAX_DOMAINS][16]; /* device a reading the start of each mapping */
};

static void snap(struct world *w, struct snapshot *s)
{
	memset(s, 0, sizeof(*s));
	for (size_t d = 0; d < w->n_domains; d++) {
		enum kh_domain_type type;

		CHECK_OK(kh_domain_type(w->ctx, w->domains[d], &type));
		if (type != KH_DOMAIN_PAGING)
			continue;
		s->n_maps[d] = kh_mappings(w->ctx, w->domains[d], 0, s->maps[d], 16);
		s->n_ranges[d] = kh_iova_ranges(w->ctx, w->domains[d], s->ranges[d], 8);
		CHECK_OK(kh_domain_table_bytes(w->ctx, w->domains[d], &s->pgtable[d]));
		for (int m = 0; m < s->n_maps[d]; m++) {
			uint8_t byte;

			s->dma[d][m] = kh_emu_dma(w->be, "a", s->maps[d][m].iova, &byte, 1,
						  KH_EMU_DMA_FROM_MEMORY);
		}
	}
	/* Before a device is bound there is nothing to see; an unknown id says so. */
	if (kh_device_domain(w->ctx, w->dev_a, &s->attached_a) < 0)
		s->attached_a = UINT32_MAX;
	if (kh_device_domain(w->ctx, w->dev_b, &s->attached_b) < 0)
		s->attached_b = UINT32_MAX;
	while (kh_emu_faults(w->be, &(struct kh_emu_fault){0}, 1))
		;
}

static void check_same(const struct snapshot *a, const struct snapshot *b, const char *op,
		       unsigned long n)
{
	for (size_t d = 0; d < MAX_DOMAINS; d++) {
		CHECK_EQ(a->n_maps[d], b->n_maps[d]);
		for (int m = 0; m < a->n_maps[d]; m++) {
			CHECK_EQ(a->maps[d][m].iova, b->maps[d][m].iova);
			CHECK_EQ(a->maps[d][m].length, b->maps[d][m].length);
			CHECK_EQ(a->maps[d][m].addr, b->maps[d][m].addr);
			CHECK_EQ(a->maps[d][m].prot, b->maps[d][m].prot);
			CHECK_EQ(a->dma[d][m], b->dma[d][m]);
		}
		CHECK_EQ(a->n_ranges[d], b->n_ranges[d]);
		for (int r = 0; r < a->n_ranges[d] && r < 8; r++) {
			CHECK_EQ(a->ranges[d][r].start, b->ranges[d][r].start);
			CHECK_EQ(a->ranges[d][r].last, b->ranges[d][r].last);
		}
		if (a->pgtable[d] != b->pgtable[d])
			(void)fprintf(stderr,
				      "%s, point %lu: page tables grew from %llu to %llu bytes\n",
				      op, n, (unsigned long long)a->pgtable[d],
				      (unsigned long long)b->pgtable[d]);
		CHECK_EQ(a->pgtable[d], b->pgtable[d]);
	}
	CHECK_EQ(a->attached_a, b->attached_a);
	CHECK_EQ(a->attached_b, b->attached_b);
}

typedef int (*operation)(struct world *w);

/* Fails op at each of its injection points in turn, then lets it succeed; returns how many
 * points it has. */
static unsigned long sweep(struct world *w, const char *name, operation op)
{
	struct snapshot before, after;
	unsigned long n;

	for (n = 1;; n++) {
		int rc;
		bool tripped;

		snap(w, &before);
		kh_fail_nth_arm(n);
		rc = op(w);
		tripped = kh_fail_nth_disarm();
		if (!tripped) {
			CHECK_OK(rc);
			break;
		}
		if (rc >= 0) {
			(void)fprintf(stderr,
				      "%s: injection point %lu failed, but the call succeeded\n",
				      name, n);
			abort();
		}
		CHECK(kh_last_error()[0] != '\0');
		snap(w, &after);
		check_same(&before, &after, name, n);
	}
	(void)printf("%-28s %3lu injection points, each failure left no trace\n", name, n - 1);
	return n - 1;
}

static uint32_t domain_alloc(struct world *w, uint32_t dev, struct kh_domain_alloc_args *args,
			     int *rc)
{
	uint32_t id = 0;

	*rc = kh_domain_alloc(w->ctx, dev, args, &id);
	if (*rc == 0)
		w->domains[w->n_domains++] = id;
	return id;
}

static int alloc_tracked_parent(struct world *w)
{
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_PAGING,
					    .flags = KH_DOMAIN_F_DIRTY_TRACKING |
						     KH_DOMAIN_F_NEST_PARENT};
	int rc;

	domain_alloc(w, w->dev_a, &args, &rc);
	return rc;
}

static int alloc_plain(struct world *w)
{
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_PAGING};
	int rc;

	domain_alloc(w, w->dev_b, &args, &rc);
	return rc;
}

static int alloc_blocked(struct world *w)
{
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_BLOCKED};
	int rc;

	domain_alloc(w, w->dev_a, &args, &rc);
	return rc;
}

static int alloc_nested(struct world *w)
{
	struct kh_emu_s1 s1 = {.root_iova = 0};
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_NESTED,
					    .parent_id = w->domains[0],
					    .data_type = KH_NEST_DATA_EMU_S1,
					    .data = &s1,
					    .data_len = sizeof(s1)};
	int rc;

	domain_alloc(w, w->dev_a, &args, &rc);
	return rc;
}

static int bind_a(struct world *w)
{
	return kh_device_bind(w->ctx, "a", &w->dev_a);
}

static int bind_b(struct world *w)
{
	return kh_device_bind(w->ctx, "b", &w->dev_b);
}

static int attach_a(struct world *w)
{
	return kh_attach(w->ctx, w->dev_a, w->domains[0]);
}

static int attach_b(struct world *w)
{
	return kh_attach(w->ctx, w->dev_b, w->domains[1]);
}

static int map_fixed(struct world *w, uint32_t dom, uint64_t iova, uint64_t offset, uint64_t len)
{
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = (uint64_t)(uintptr_t)w->mem + offset,
				 .prot = KH_PROT_READ | KH_PROT_WRITE,
				 .flags = KH_MAP_FIXED_IOVA};

	return kh_map(w->ctx, dom, &req);
}

static int map_4k(struct world *w)
{
	return map_fixed(w, w->domains[0], 0x10000000, 0, PAGE);
}

static int map_2m_and_4k(struct world *w)
{
	return map_fixed(w, w->domains[0], 0x10200000, 2 * MiB, 2 * MiB + PAGE);
}

static int map_1g(struct world *w)
{
	return map_fixed(w, w->domains[0], 4 * GiB, 0, GiB);
}

static int map_allocated(struct world *w)
{
	struct kh_map_req req = {
		.length = 3 * PAGE, .addr = (uint64_t)(uintptr_t)w->mem, .prot = KH_PROT_READ};

	return kh_map(w->ctx, w->domains[1], &req);
}

static int copy_to_plain(struct world *w)
{
	struct kh_map_req req = {.iova = 0x20000000,
				 .length = PAGE,
				 .prot = KH_PROT_READ,
				 .flags = KH_MAP_FIXED_IOVA};

	return kh_copy(w->ctx, w->domains[1], &req, w->domains[0], 0x10200000);
}

static int allow(struct world *w)
{
	struct kh_iova_range ranges[] = {{0x30000000, 0x3fffffff}, {0x1000, 0xfffff}};

	return kh_allow_iovas(w->ctx, w->domains[0], ranges, 2);
}

static int dirty_on(struct world *w)
{
	return kh_set_dirty_tracking(w->ctx, w->domains[0], true);
}

static int replace_a(struct world *w)
{
	return kh_replace(w->ctx, w->dev_a, w->domains[1]);
}

static int unmap_span(struct world *w)
{
	return kh_unmap(w->ctx, w->domains[0], 0x10000000, 0x800000, NULL);
}

static int unmap_all(struct world *w)
{
	return kh_unmap(w->ctx, w->domains[0], 0, UINT64_MAX, NULL);
}

static int detach_a(struct world *w)
{
	return kh_detach(w->ctx, w->dev_a);
}

static int free_nested(struct world *w)
{
	int rc = kh_domain_free(w->ctx, w->domains[3]);

	if (rc == 0)
		w->domains[3] = w->domains[--w->n_domains];
	return rc;
}

/* Backends and contexts exist before any state can be observed: the check there is that a
 * failure returns an error, gives nothing back and leaks nothing. */
TEST(backend_open)
{
	unsigned long n, points = 0;

	for (n = 1;; n++) {
		struct kh_backend *be = NULL;
		int rc;

		kh_fail_nth_arm(n);
		rc = kh_backend_open_emulated_text(topology, &be);
		if (!kh_fail_nth_disarm()) {
			CHECK_OK(rc);
			kh_backend_close(be);
			break;
		}
		CHECK(rc < 0 && be == NULL);
		points++;
	}
	(void)printf("%-28s %3lu injection points, each failure left no trace\n", "backend open",
		     points);
	CHECK(points > 0);
}

TEST(context_create)
{
	unsigned long n, points = 0;

	for (n = 1;; n++) {
		struct kh_backend *be;
		struct kh_ctx *ctx = NULL;
		int rc;

		CHECK_OK(kh_backend_open_emulated_text(topology, &be));
		kh_fail_nth_arm(n);
		rc = kh_ctx_create(be, &ctx);
		if (!kh_fail_nth_disarm()) {
			CHECK_OK(rc);
			kh_ctx_destroy(ctx);
			kh_backend_close(be);
			break;
		}
		CHECK(rc < 0 && ctx == NULL);
		/* Closing would abort if the failed create had left a context counted. */
		kh_backend_close(be);
		points++;
	}
	(void)printf("%-28s %3lu injection points, each failure left no trace\n", "context create",
		     points);
	CHECK(points > 0);
}

/* Each step builds on the ones before: the world grows from nothing to every kind of object
 * and mapping, and shrinks again. */
static const struct {
	const char *name;
	operation op;
} steps[] = {
	{"bind device a", bind_a},
	{"bind device b", bind_b},
	{"alloc paging (dirty, nest)", alloc_tracked_parent},
	{"alloc paging", alloc_plain},
	{"alloc blocked", alloc_blocked},
	{"alloc nested", alloc_nested},
	{"attach", attach_a},
	{"attach second device", attach_b},
	{"map 4K leaf", map_4k},
	{"map 2M + 4K leaves", map_2m_and_4k},
	{"map 1G leaf", map_1g},
	{"map at allocated IOVA", map_allocated},
	{"copy", copy_to_plain},
	{"allow IOVAs", allow},
	{"dirty tracking on", dirty_on},
	{"replace", replace_a},
	{"unmap span of mappings", unmap_span},
	{"unmap all", unmap_all},
	{"detach", detach_a},
	{"free nested domain", free_nested},
};

TEST(mutations)
{
	struct world w = {0};
	uint8_t *raw = mmap(NULL, 3 * GiB, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	unsigned long total = 0;

	CHECK(raw != MAP_FAILED);
	w.mem = (uint8_t *)(((uintptr_t)raw + GiB - 1) & ~(uintptr_t)(GiB - 1));
	CHECK_OK(kh_backend_open_emulated_text(topology, &w.be));
	CHECK_OK(kh_ctx_create(w.be, &w.ctx));
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		total += sweep(&w, steps[i].name, steps[i].op);
	kh_ctx_destroy(w.ctx);
	kh_backend_close(w.be);
	(void)munmap(raw, 3 * GiB);
	(void)printf("fail-nth: %lu injection points over %zu operations, all clean\n", total,
		     sizeof(steps) / sizeof(steps[0]));
}
