/* SPDX-License-Identifier: MIT */
/*
 * Long random sequences of kernel-helper calls on the emulated IOMMU, each checked against a
 * plain reference model: a sorted list of mappings per domain, the devices' reserved ranges,
 * allowed ranges, and which domain each device is attached to. Return codes must match the
 * model's prediction, the mapping lists and free ranges must match it, and emulated DMA must
 * move bytes exactly where the model says and fault everywhere else.
 *
 * Options: --seed N --ops N. The seed is printed first, and again on a failure, so any failure
 * can be replayed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <kh/kh.h>
#include <kh/kh_emu.h>

#include "harness.h"

#define PAGE	      4096ull
#define MiB	      (1ull << 20)
#define MEM_SIZE      (64 * MiB)
#define N_DOMAINS     3
#define N_DEVICES     4
#define MAX_MAPS      256
#define MSI_START     0xfee00000ull
#define MSI_LAST      0xfeefffffull
#define D1_RESV_START 0x4000000ull
#define D1_RESV_LAST  0x40fffffull

static const char topology[] = "[iommu]\n"
			       "devices = d0 d1 m0 m1\n"
			       "[device d0]\n"
			       "group = 1\n"
			       "[device d1]\n"
			       "group = 2\n"
			       "reserved = 0x4000000-0x40fffff\n"
			       "[device m0]\n"
			       "group = 3\n"
			       "[device m1]\n"
			       "group = 3\n";
static const char *const device_names[N_DEVICES] = {"d0", "d1", "m0", "m1"};
static const unsigned device_group[N_DEVICES] = {1, 2, 3, 3};

struct model_map {
	uint64_t iova, last, offset;
	uint32_t prot;
};

struct model_domain {
	uint32_t id;
	struct model_map maps[MAX_MAPS];
	size_t n;
	bool allowed_set;
	struct kh_iova_range allowed;
};

static struct {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dev_id[N_DEVICES];
	int attached[N_DEVICES]; /* domain index, or -1 */
	struct model_domain dom[N_DOMAINS];
	uint8_t *mem;
	uint64_t seed, op;
	const char *doing;
} m;

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64: one line of state, the same sequence everywhere for a seed. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t below(uint64_t n)
{
	return rnd() % n;
}

static void fail(const char *fmt, long long got, long long want)
{
	(void)fprintf(stderr,
		      "test_model: seed %llu, operation %llu (%s): ", (unsigned long long)m.seed,
		      (unsigned long long)m.op, m.doing);
	(void)fprintf(stderr, fmt, got, want);
	(void)fprintf(stderr,
		      "\n  kernel-helper said: %s\n  replay: test_model --seed %llu --ops %llu\n",
		      kh_last_error(), (unsigned long long)m.seed, (unsigned long long)m.op + 1);
	abort();
}

static void expect_rc(int got, int want)
{
	if (got != want)
		fail("returned %lld, the model expected %lld", got, want);
}

static bool overlap(uint64_t a, uint64_t a_last, uint64_t b, uint64_t b_last)
{
	return a <= b_last && b <= a_last;
}

/* ---- the model's rules ------------------------------------------------------------------ */

static int device_resv(int dev, struct kh_iova_range *out)
{
	out[0] = (struct kh_iova_range){MSI_START, MSI_LAST};
	if (dev == 1) {
		out[1] = (struct kh_iova_range){D1_RESV_START, D1_RESV_LAST};
		return 2;
	}
	return 1;
}

static bool reserved_in(int d, uint64_t start, uint64_t last)
{
	for (int dev = 0; dev < N_DEVICES; dev++) {
		struct kh_iova_range r[2];
		int n;

		if (m.attached[dev] != d)
			continue;
		n = device_resv(dev, r);
		for (int i = 0; i < n; i++)
			if (overlap(start, last, r[i].start, r[i].last))
				return true;
	}
	return false;
}

static int first_map_overlapping(const struct model_domain *md, uint64_t start, uint64_t last)
{
	for (size_t i = 0; i < md->n; i++)
		if (overlap(start, last, md->maps[i].iova, md->maps[i].last))
			return (int)i;
	return -1;
}

static void model_insert(struct model_domain *md, struct model_map map)
{
	size_t at = md->n++;

	while (at > 0 && md->maps[at - 1].iova > map.iova) {
		md->maps[at] = md->maps[at - 1];
		at--;
	}
	md->maps[at] = map;
}

static int group_domain(int dev)
{
	for (int other = 0; other < N_DEVICES; other++)
		if (other != dev && device_group[other] == device_group[dev] &&
		    m.attached[other] >= 0)
			return m.attached[other];
	return -1;
}

/* Can dev's reserved ranges go into domain d? */
static bool reserve_fits(int dev, int d)
{
	struct kh_iova_range r[2];
	int n = device_resv(dev, r);

	for (int i = 0; i < n; i++) {
		if (first_map_overlapping(&m.dom[d], r[i].start, r[i].last) >= 0)
			return false;
		if (m.dom[d].allowed_set &&
		    overlap(r[i].start, r[i].last, m.dom[d].allowed.start, m.dom[d].allowed.last))
			return false;
	}
	return true;
}

/* ---- operations ------------------------------------------------------------------------------ */

static uint64_t random_iova(void)
{
	/* Mostly a busy low window, sometimes around the MSI window and d1's reserved range. */
	switch (below(8)) {
	case 0:
		return MSI_START - 8 * PAGE + below(16) * PAGE;
	case 1:
		return D1_RESV_START - 8 * PAGE + below(16) * PAGE;
	default:
		return below(0x8000000 / PAGE) * PAGE;
	}
}

static uint64_t random_length(void)
{
	return below(4) == 0 ? 2 * MiB * (1 + below(2)) : PAGE * (1 + below(16));
}

static uint32_t random_prot(void)
{
	static const uint32_t prots[] = {KH_PROT_READ, KH_PROT_WRITE, KH_PROT_READ | KH_PROT_WRITE};

	return prots[below(3)];
}

static void op_map_fixed(int d)
{
	struct model_domain *md = &m.dom[d];
	uint64_t len = random_length(), iova = random_iova();
	uint64_t offset = len >= 2 * MiB ? below(MEM_SIZE / (2 * MiB) - 2) * 2 * MiB
					 : below(MEM_SIZE / PAGE - 16) * PAGE;
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = (uint64_t)(uintptr_t)m.mem + offset,
				 .prot = random_prot(),
				 .flags = KH_MAP_FIXED_IOVA};
	int want = 0;

	if (len >= 2 * MiB && below(2))
		req.iova = iova = iova & ~(2 * MiB - 1);
	m.doing = "map at a fixed IOVA";
	if (reserved_in(d, iova, iova + len - 1))
		want = -EINVAL;
	else if (first_map_overlapping(md, iova, iova + len - 1) >= 0)
		want = -EEXIST;
	else if (md->n == MAX_MAPS)
		return;
	expect_rc(kh_map(m.ctx, md->id, &req), want);
	if (want == 0)
		model_insert(md, (struct model_map){iova, iova + len - 1, offset, req.prot});
}

/* Whether the model has room for len bytes aligned to align: the core may pick another place,
 * but it must find one exactly when one exists. */
static bool gap_exists(int d, uint64_t len, uint64_t align)
{
	const struct model_domain *md = &m.dom[d];
	uint64_t start = md->allowed_set ? md->allowed.start : 0;
	uint64_t last = md->allowed_set ? md->allowed.last : (1ull << 48) - 1;
	uint64_t candidates[MAX_MAPS + 8];
	size_t n = 0;

	candidates[n++] = start;
	for (size_t i = 0; i < md->n; i++)
		candidates[n++] = md->maps[i].last + 1;
	candidates[n++] = MSI_LAST + 1;
	candidates[n++] = D1_RESV_LAST + 1;
	for (size_t i = 0; i < n; i++) {
		uint64_t at = (candidates[i] + align - 1) & ~(align - 1);

		if (at < start || at > last || last - at < len - 1)
			continue;
		if (!reserved_in(d, at, at + len - 1) &&
		    first_map_overlapping(md, at, at + len - 1) < 0)
			return true;
	}
	return false;
}

static void op_map_allocated(int d)
{
	struct model_domain *md = &m.dom[d];
	uint64_t len = random_length();
	uint64_t offset = below(MEM_SIZE / PAGE - 1024) * PAGE;
	uint64_t align = below(2) ? PAGE << below(11) : 0;
	struct kh_map_req req = {.length = len,
				 .addr = (uint64_t)(uintptr_t)m.mem + offset,
				 .prot = random_prot(),
				 .alignment = align};
	int rc;

	if (md->n == MAX_MAPS)
		return;
	if (!align) {
		/* The documented default: the memory's own alignment, up to the length's. */
		uint64_t addr_align = req.addr & -req.addr;

		for (align = PAGE; align < len && align < addr_align; align <<= 1)
			;
	}
	m.doing = "map at an IOVA the helper picks";
	rc = kh_map(m.ctx, md->id, &req);
	if (rc == -ENOSPC) {
		if (gap_exists(d, len, align))
			fail("found no space (%lld) where the model has some (%lld)", rc, 0);
		return;
	}
	expect_rc(rc, 0);
	if (req.iova % align)
		fail("IOVA 0x%llx is not aligned to 0x%llx", (long long)req.iova, (long long)align);
	if (reserved_in(d, req.iova, req.iova + len - 1) ||
	    first_map_overlapping(md, req.iova, req.iova + len - 1) >= 0)
		fail("picked IOVA 0x%llx, which is taken (length 0x%llx)", (long long)req.iova,
		     (long long)len);
	if (md->allowed_set &&
	    (req.iova < md->allowed.start || req.iova + len - 1 > md->allowed.last))
		fail("picked IOVA 0x%llx outside the allowed range starting 0x%llx",
		     (long long)req.iova, (long long)md->allowed.start);
	model_insert(md, (struct model_map){req.iova, req.iova + len - 1, offset, req.prot});
}

static void op_unmap(int d)
{
	struct model_domain *md = &m.dom[d];
	uint64_t iova, len, unmapped = 0, want_bytes = 0;
	size_t first = md->n, count = 0;
	int want = 0;

	if (md->n && below(4)) {
		/* From a mapping's start to a later mapping's end: whole mappings. */
		size_t a = below(md->n), b = a + below(md->n - a < 4 ? md->n - a : 4);

		iova = md->maps[a].iova;
		len = md->maps[b].last - iova + 1;
		if (below(3) == 0)
			len -= PAGE; /* cuts the last one */
		if (len == 0)
			len = PAGE;
	} else {
		iova = random_iova();
		len = random_length();
	}
	m.doing = "unmap";
	for (size_t i = 0; i < md->n; i++) {
		if (!overlap(iova, iova + len - 1, md->maps[i].iova, md->maps[i].last))
			continue;
		if (md->maps[i].iova < iova || md->maps[i].last > iova + len - 1)
			want = -EINVAL;
		if (first == md->n)
			first = i;
		count++;
		want_bytes += md->maps[i].last - md->maps[i].iova + 1;
	}
	if (count == 0)
		want = -ENOENT;
	expect_rc(kh_unmap(m.ctx, md->id, iova, len, &unmapped), want);
	if (want < 0)
		return;
	if (unmapped != want_bytes)
		fail("unmapped %lld bytes, the model expected %lld", (long long)unmapped,
		     (long long)want_bytes);
	memmove(&md->maps[first], &md->maps[first + count],
		(md->n - first - count) * sizeof(md->maps[0]));
	md->n -= count;
}

static void op_unmap_all(int d)
{
	struct model_domain *md = &m.dom[d];

	m.doing = "unmap everything";
	expect_rc(kh_unmap(m.ctx, md->id, 0, UINT64_MAX, NULL), md->n ? 0 : -ENOENT);
	md->n = 0;
}

static void op_attach(int dev, int d)
{
	int want = 0, shared = group_domain(dev);

	m.doing = "attach";
	if (m.attached[dev] >= 0)
		want = -EBUSY;
	else if (shared >= 0 && shared != d)
		want = -EINVAL;
	else if (!reserve_fits(dev, d))
		want = -EADDRINUSE;
	expect_rc(kh_attach(m.ctx, m.dev_id[dev], m.dom[d].id), want);
	if (want == 0)
		m.attached[dev] = d;
}

static void op_detach(int dev)
{
	m.doing = "detach";
	expect_rc(kh_detach(m.ctx, m.dev_id[dev]), m.attached[dev] >= 0 ? 0 : -EINVAL);
	m.attached[dev] = -1;
}

static void op_replace(int dev, int d)
{
	int old = m.attached[dev], want = 0;

	m.doing = "replace";
	if (old < 0) {
		want = -EINVAL;
	} else if (old != d) {
		for (int mate = 0; mate < N_DEVICES; mate++)
			if (device_group[mate] == device_group[dev] && m.attached[mate] == old &&
			    !reserve_fits(mate, d))
				want = -EADDRINUSE;
	}
	expect_rc(kh_replace(m.ctx, m.dev_id[dev], m.dom[d].id), want);
	if (want == 0 && old >= 0)
		for (int mate = 0; mate < N_DEVICES; mate++)
			if (device_group[mate] == device_group[dev] && m.attached[mate] == old)
				m.attached[mate] = d;
}

static void op_allow(int d)
{
	struct model_domain *md = &m.dom[d];
	struct kh_iova_range range;
	int want = 0;

	m.doing = "allow IOVAs";
	if (below(3) == 0) {
		expect_rc(kh_allow_iovas(m.ctx, md->id, NULL, 0), 0);
		md->allowed_set = false;
		return;
	}
	range.start = random_iova();
	range.last = range.start + (PAGE << below(16)) - 1;
	if (reserved_in(d, range.start, range.last))
		want = -EADDRINUSE;
	expect_rc(kh_allow_iovas(m.ctx, md->id, &range, 1), want);
	if (want == 0) {
		md->allowed_set = true;
		md->allowed = range;
	}
}

/* The model's translation of one IOVA for a device, or false for a fault. */
static bool translate(int dev, uint64_t iova, bool write, uint64_t *offset)
{
	int d = m.attached[dev] >= 0 ? m.attached[dev] : group_domain(dev);
	int i;

	if (d < 0)
		return false;
	i = first_map_overlapping(&m.dom[d], iova, iova);
	if (i < 0 || !(m.dom[d].maps[i].prot & (write ? KH_PROT_WRITE : KH_PROT_READ)))
		return false;
	*offset = m.dom[d].maps[i].offset + (iova - m.dom[d].maps[i].iova);
	return true;
}

static void op_dma(int dev)
{
	int d = m.attached[dev] >= 0 ? m.attached[dev] : group_domain(dev);
	bool write = below(2);
	uint64_t len = 1 + below(PAGE + 64), iova, offset;
	uint8_t buf[PAGE + 64];
	/* A fault moves nothing: the byte the first page would have touched must survive. */
	bool first_page_mapped = false;
	uint8_t first_byte_before = 0;
	bool ok = true;
	int rc;

	if (d >= 0 && m.dom[d].n && below(4)) {
		const struct model_map *map = &m.dom[d].maps[below(m.dom[d].n)];

		iova = map->iova + below(map->last - map->iova + 1);
	} else {
		iova = random_iova() + below(PAGE);
	}
	m.doing = write ? "DMA write" : "DMA read";
	for (uint64_t at = iova; at < iova + len; at = (at & ~(PAGE - 1)) + PAGE)
		ok &= translate(dev, at, write, &offset);
	for (uint64_t i = 0; i < len; i++)
		buf[i] = (uint8_t)rnd();
	if (!ok && translate(dev, iova, write, &offset)) {
		first_page_mapped = true;
		first_byte_before = m.mem[offset];
	}
	rc = kh_emu_dma(m.be, device_names[dev], iova, buf, len,
			write ? KH_EMU_DMA_TO_MEMORY : KH_EMU_DMA_FROM_MEMORY);
	expect_rc(rc, ok ? 0 : -EFAULT);
	if (!ok) {
		struct kh_emu_fault f;

		if (kh_emu_faults(m.be, &f, 1) != 1)
			fail("faulted with %lld faults queued, expected %lld", 0, 1);
		if (first_page_mapped && m.mem[offset] != first_byte_before)
			fail("a faulting DMA changed memory (%lld, %lld)", 0, 0);
		return;
	}
	/* Two IOVA pages of one write may map overlapping memory; then the second page's bytes
	 * win and a byte-by-byte check would blame the helper for the test's aliasing. */
	if (write && (iova & ~(PAGE - 1)) != ((iova + len - 1) & ~(PAGE - 1))) {
		uint64_t first, second;

		translate(dev, iova & ~(PAGE - 1), write, &first);
		translate(dev, (iova + len - 1) & ~(PAGE - 1), write, &second);
		if ((first > second ? first - second : second - first) < PAGE)
			return;
	}
	for (uint64_t i = 0; i < len; i++) {
		translate(dev, iova + i, write, &offset);
		if (m.mem[offset] != buf[i])
			fail("byte %lld of the DMA differs from memory at offset %lld",
			     (long long)i, (long long)offset);
	}
}

static void op_lookup(int d)
{
	const struct model_domain *md = &m.dom[d];
	const struct model_map *map;
	uint64_t iova, phys;

	if (!md->n)
		return;
	map = &md->maps[below(md->n)];
	iova = map->iova + below(map->last - map->iova + 1);
	m.doing = "IOVA lookup";
	expect_rc(kh_iova_to_phys(m.ctx, md->id, iova, &phys), 0);
	if (phys != (uint64_t)(uintptr_t)m.mem + map->offset + (iova - map->iova))
		fail("IOVA lookup gave %llx, the model %llx", (long long)phys,
		     (long long)((uintptr_t)m.mem + map->offset + (iova - map->iova)));
}

/* The full picture: every mapping, paged through in small pieces, and the free ranges. */
static void compare_all(void)
{
	m.doing = "comparing everything";
	for (int d = 0; d < N_DOMAINS; d++) {
		struct model_domain *md = &m.dom[d];
		struct kh_mapping page[5];
		struct kh_iova_range ranges[16];
		uint64_t from = 0;
		size_t seen = 0;
		int n;

		while ((n = kh_mappings(m.ctx, md->id, from, page, 5)) > 0) {
			for (int i = 0; i < n; i++, seen++) {
				const struct model_map *want = &md->maps[seen];

				if (seen >= md->n || page[i].iova != want->iova ||
				    page[i].length != want->last - want->iova + 1 ||
				    page[i].addr != (uint64_t)(uintptr_t)m.mem + want->offset ||
				    page[i].prot != want->prot)
					fail("mapping %lld differs (IOVA 0x%llx)", (long long)seen,
					     (long long)page[i].iova);
			}
			from = page[n - 1].iova + page[n - 1].length;
		}
		expect_rc(n, 0);
		if (seen != md->n)
			fail("listed %lld mappings, the model has %lld", (long long)seen,
			     (long long)md->n);
		n = kh_iova_ranges(m.ctx, md->id, ranges, 16);
		for (int i = 0; i < n && i < 16; i++) {
			if (reserved_in(d, ranges[i].start, ranges[i].last))
				fail("free range %lld starting 0x%llx holds reserved IOVA", i,
				     (long long)ranges[i].start);
			if (i > 0 && ranges[i].start <= ranges[i - 1].last + 1)
				fail("free ranges %lld and the one before touch (0x%llx)", i,
				     (long long)ranges[i].start);
		}
	}
}

static uint64_t ops = 100000;
static bool seeded;

HARNESS_OPTION(seed, "N", "replay the operations of seed N (default: the time)")
{
	m.seed = harness_parse_u64("seed", value);
	seeded = true;
}

HARNESS_OPTION(ops, "N", "how many random operations (default 100000)")
{
	ops = harness_parse_u64("ops", value);
}

static void random_operation(void)
{
	int d = (int)below(N_DOMAINS), dev = (int)below(N_DEVICES);
	uint64_t pick = below(100);

	if (pick < 22)
		op_map_fixed(d);
	else if (pick < 34)
		op_map_allocated(d);
	else if (pick < 52)
		op_unmap(d);
	else if (pick < 53)
		op_unmap_all(d);
	else if (pick < 59)
		op_attach(dev, d);
	else if (pick < 63)
		op_detach(dev);
	else if (pick < 67)
		op_replace(dev, d);
	else if (pick < 70)
		op_allow(d);
	else if (pick < 90)
		op_dma(dev);
	else
		op_lookup(d);
}

TEST(random_operations)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint8_t *raw;

	if (!seeded)
		m.seed = (uint64_t)time(NULL);
	rng_state = m.seed;
	(void)printf("test_model: seed %llu, %llu operations\n", (unsigned long long)m.seed,
		     (unsigned long long)ops);

	raw = mmap(NULL, MEM_SIZE + 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	CHECK(raw != MAP_FAILED);
	m.mem = (uint8_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	CHECK_OK(kh_backend_open_emulated_text(topology, &m.be));
	CHECK_OK(kh_ctx_create(m.be, &m.ctx));
	for (int dev = 0; dev < N_DEVICES; dev++) {
		CHECK_OK(kh_device_bind(m.ctx, device_names[dev], &m.dev_id[dev]));
		m.attached[dev] = -1;
	}
	for (int d = 0; d < N_DOMAINS; d++)
		CHECK_OK(kh_domain_alloc(m.ctx, m.dev_id[0], &paging, &m.dom[d].id));

	for (m.op = 0; m.op < ops; m.op++) {
		random_operation();
		if (m.op % 500 == 0)
			compare_all();
	}
	compare_all();
	kh_ctx_destroy(m.ctx);
	kh_backend_close(m.be);
	(void)munmap(raw, MEM_SIZE + 2 * MiB);
	(void)printf("test_model: %llu operations matched the model (seed %llu)\n",
		     (unsigned long long)ops, (unsigned long long)m.seed);
}
