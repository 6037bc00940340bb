/* SPDX-License-Identifier: MIT */
/*
 * Unit test of the emulated IOMMU page table (kernel-helper/emu_pgtable.c): leaf size choice,
 * boundaries, overlap, splitting unmaps, table reclamation, dirty reads, and all-or-nothing
 * under failure injection. Mapped addresses are just numbers: the table never touches them.
 * Run under ASan so that a table leaked on any path fails the test.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kh/kh_testing.h>

#include "harness.h"
#include "emu_pgtable.h"

#define BASE	       0x7f0000000000ull /* 1 TiB aligned, so offsets keep their alignment */
#define TOP	       (1ull << EMU_IOVA_BITS)
#define ALL_SIZES      (EMU_SZ_4K | EMU_SZ_2M | EMU_SZ_1G)
#define RW	       (EMU_PTE_R | EMU_PTE_W)
#define SZ_512G	       (1ull << 39)
#define PTE_COUNT(pte) (((pte) >> 52) & 0x3ff)

static unsigned long lookups, injections; /* for the random case's summary */

static void pt_init(struct emu_pgtable *pt)
{
	CHECK_OK(emu_pgtable_init(pt));
	CHECK_EQ(pt->table_pages, 1);
}

/* Walks every table like the hardware would, checking the child counts and that no table but
 * the root is empty; returns the tables found. */
static size_t walk_tables(const uint64_t *table, int level, unsigned int *present)
{
	size_t pages = 1;
	unsigned int i;

	*present = 0;
	for (i = 0; i < 512; i++) {
		uint64_t pte = table[i];
		unsigned int below;

		if (!(pte & RW))
			continue;
		++*present;
		if (level == 1 || (pte & EMU_PTE_PS)) {
			CHECK(level <= 3);
			CHECK_EQ(PTE_COUNT(pte), 0);
			continue;
		}
		pages += walk_tables((uint64_t *)(uintptr_t)(pte & EMU_PTE_ADDR_MASK), level - 1,
				     &below);
		CHECK(below > 0);
		CHECK_EQ(PTE_COUNT(pte), below);
	}
	return pages;
}

static void check_tables(const struct emu_pgtable *pt)
{
	unsigned int present;

	CHECK_EQ(walk_tables(pt->root, EMU_PGTABLE_LEVELS, &present), pt->table_pages);
}

static int lookup(const struct emu_pgtable *pt, uint64_t iova, struct emu_translation *t)
{
	lookups++;
	return emu_pgtable_lookup(pt, iova, t);
}

static void check_unmapped(const struct emu_pgtable *pt, uint64_t iova, uint64_t length)
{
	struct emu_translation t;
	uint64_t off;

	for (off = 0; off < length; off += EMU_SZ_4K)
		CHECK_EQ(lookup(pt, iova + off, &t), -ENOENT);
}

/* Checks that [iova, ...) is mapped by leaves of the given sizes, in order, each page of each
 * translating to addr + offset through the same leaf entry, with prot and the A/D bits ad. */
static uint64_t check_leaves(const struct emu_pgtable *pt, uint64_t iova, uint64_t addr,
			     uint64_t prot, uint64_t ad, const uint64_t *sizes, size_t n)
{
	struct emu_translation t;
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t *pte = NULL;
		uint64_t off;

		for (off = 0; off < sizes[i]; off += EMU_SZ_4K) {
			CHECK_OK(lookup(pt, iova + off, &t));
			CHECK_EQ(t.addr, addr + off);
			CHECK_EQ(t.prot, prot);
			CHECK_EQ(t.leaf_size, sizes[i]);
			CHECK_EQ(*t.pte & (EMU_PTE_A | EMU_PTE_D), ad);
			if (!pte)
				pte = t.pte;
			CHECK(t.pte == pte);
		}
		iova += sizes[i];
		addr += sizes[i];
	}
	return iova;
}

/* Same, for count leaves of one size. */
static uint64_t check_run(const struct emu_pgtable *pt, uint64_t iova, uint64_t addr, uint64_t prot,
			  uint64_t ad, uint64_t size, size_t count)
{
	while (count--) {
		iova = check_leaves(pt, iova, addr, prot, ad, &size, 1);
		addr += size;
	}
	return iova;
}

static void unmap_all(struct emu_pgtable *pt)
{
	CHECK_OK(emu_pgtable_unmap(pt, 0, UINT64_MAX, NULL));
	CHECK_EQ(pt->table_pages, 1);
	check_tables(pt);
}

static void map_ok(struct emu_pgtable *pt, uint64_t iova, uint64_t addr, uint64_t length,
		   uint64_t prot, uint64_t sizes)
{
	CHECK_OK(emu_pgtable_map(pt, iova, addr, length, prot, sizes));
	check_tables(pt);
}

static uint64_t unmap_ok(struct emu_pgtable *pt, uint64_t iova, uint64_t length)
{
	uint64_t bytes = 0xdead;

	CHECK_OK(emu_pgtable_unmap(pt, iova, length, &bytes));
	check_tables(pt);
	return bytes;
}

/* Every translation (and leaf entry value) of a range, to prove a failed call changed nothing. */
struct snapshot {
	uint64_t iova, length;
	size_t table_pages;
	int *rc;
	struct emu_translation *t;
	uint64_t *pte;
};

static void snap_take(const struct emu_pgtable *pt, uint64_t iova, uint64_t length,
		      struct snapshot *s)
{
	size_t n = length / EMU_SZ_4K, i;

	s->iova = iova;
	s->length = length;
	s->table_pages = pt->table_pages;
	s->rc = calloc(n, sizeof(*s->rc));
	s->t = calloc(n, sizeof(*s->t));
	s->pte = calloc(n, sizeof(*s->pte));
	CHECK(s->rc && s->t && s->pte);
	for (i = 0; i < n; i++) {
		s->rc[i] = lookup(pt, iova + i * EMU_SZ_4K, &s->t[i]);
		if (!s->rc[i])
			s->pte[i] = *s->t[i].pte;
	}
}

static void snap_check(const struct emu_pgtable *pt, const struct snapshot *s)
{
	size_t n = s->length / EMU_SZ_4K, i;
	struct emu_translation t;

	CHECK_EQ(pt->table_pages, s->table_pages);
	for (i = 0; i < n; i++) {
		CHECK_EQ(lookup(pt, s->iova + i * EMU_SZ_4K, &t), s->rc[i]);
		if (s->rc[i])
			continue;
		CHECK_EQ(t.addr, s->t[i].addr);
		CHECK_EQ(t.prot, s->t[i].prot);
		CHECK_EQ(t.leaf_size, s->t[i].leaf_size);
		CHECK(t.pte == s->t[i].pte);
		CHECK_EQ(*t.pte, s->pte[i]);
	}
	check_tables(pt);
}

static void snap_free(struct snapshot *s)
{
	free(s->rc);
	free(s->t);
	free(s->pte);
}

/* The range a call may touch, widened by 2 MiB each side to catch writes past it. */
static void snap_around(const struct emu_pgtable *pt, uint64_t iova, uint64_t length,
			struct snapshot *s)
{
	uint64_t from = iova < EMU_SZ_2M ? 0 : iova - EMU_SZ_2M;
	uint64_t to = TOP - (iova + length) < EMU_SZ_2M ? TOP : iova + length + EMU_SZ_2M;

	snap_take(pt, from, to - from, s);
}

/* Sets bits (A, D) in the leaf entry behind iova, as the emulated DMA engine would. */
static void pte_set(const struct emu_pgtable *pt, uint64_t iova, uint64_t bits)
{
	struct emu_translation t;

	CHECK_OK(lookup(pt, iova, &t));
	*t.pte |= bits;
}

FIXTURE(pgtable)
{
	struct emu_pgtable pt;
};

FIXTURE_SETUP(pgtable)
{
	pt_init(&self->pt);
}

/* Frees whatever the case left mapped, which LeakSanitizer holds to every table. */
FIXTURE_TEARDOWN(pgtable)
{
	emu_pgtable_destroy(&self->pt);
}

/* ---- leaf size choice ------------------------------------------------------------------ */

TEST_F(pgtable, page_sizes)
{
	/* 2M-aligned iova and addr with a 2M length: one 2M leaf, tables at levels 3 and 2. */
	map_ok(&self->pt, 0x40000000 + 0x200000, BASE + 0x200000, EMU_SZ_2M, RW, ALL_SIZES);
	check_run(&self->pt, 0x40200000, BASE + 0x200000, RW, 0, EMU_SZ_2M, 1);
	CHECK_EQ(self->pt.table_pages, 3);
	CHECK_EQ(unmap_ok(&self->pt, 0x40200000, EMU_SZ_2M), EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 1);

	/* addr only 4K aligned: 4K leaves. */
	map_ok(&self->pt, 0x40200000, BASE + 0x201000, EMU_SZ_2M, EMU_PTE_R, ALL_SIZES);
	check_run(&self->pt, 0x40200000, BASE + 0x201000, EMU_PTE_R, 0, EMU_SZ_4K, 512);
	CHECK_EQ(self->pt.table_pages, 4);
	unmap_all(&self->pt);

	/* iova only 4K aligned while addr is 2M aligned: 4K leaves too, in two 4K tables. */
	map_ok(&self->pt, 0x40201000, BASE + 0x200000, EMU_SZ_2M, EMU_PTE_W, ALL_SIZES);
	check_run(&self->pt, 0x40201000, BASE + 0x200000, EMU_PTE_W, 0, EMU_SZ_4K, 512);
	CHECK_EQ(self->pt.table_pages, 5);
	unmap_all(&self->pt);

	/* The length, not the alignment, forbids 2M. */
	map_ok(&self->pt, 0x40200000, BASE, EMU_SZ_2M - EMU_SZ_4K, RW, ALL_SIZES);
	check_run(&self->pt, 0x40200000, BASE, RW, 0, EMU_SZ_4K, 511);
	check_unmapped(&self->pt, 0x40200000 + EMU_SZ_2M - EMU_SZ_4K, EMU_SZ_4K);
	unmap_all(&self->pt);
}

TEST_F(pgtable, page_sizes_1g)
{
	uint64_t iova;

	/* 1G when aligned and allowed: a single leaf in the level-3 table. */
	map_ok(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_1G, EMU_SZ_1G, RW, ALL_SIZES);
	check_run(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_1G, RW, 0, EMU_SZ_1G, 1);
	CHECK_EQ(self->pt.table_pages, 2);
	unmap_all(&self->pt);

	/* 1G-aligned but 1G not in page_sizes: 2M leaves. */
	map_ok(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_1G, EMU_SZ_1G, RW, EMU_SZ_4K | EMU_SZ_2M);
	check_run(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_1G, RW, 0, EMU_SZ_2M, 512);
	CHECK_EQ(self->pt.table_pages, 3);
	unmap_all(&self->pt);

	/* iova 1G aligned, addr only 2M aligned: 2M leaves. */
	map_ok(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_2M, EMU_SZ_1G, RW, ALL_SIZES);
	check_run(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_2M, RW, 0, EMU_SZ_2M, 512);
	unmap_all(&self->pt);

	/* page_sizes without 2M never gives 2M leaves, even next to a 1G leaf. */
	map_ok(&self->pt, EMU_SZ_1G - EMU_SZ_2M, BASE + EMU_SZ_1G - EMU_SZ_2M,
	       EMU_SZ_1G + 2 * EMU_SZ_2M, RW, EMU_SZ_4K | EMU_SZ_1G);
	iova = check_run(&self->pt, EMU_SZ_1G - EMU_SZ_2M, BASE + EMU_SZ_1G - EMU_SZ_2M, RW, 0,
			 EMU_SZ_4K, 512);
	iova = check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_1G, 1);
	check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_4K, 512);
	unmap_all(&self->pt);
}

TEST_F(pgtable, page_sizes_mixed)
{
	const uint64_t mixed[] = {EMU_SZ_2M, EMU_SZ_1G, EMU_SZ_2M, EMU_SZ_4K};
	uint64_t iova;

	/* page_sizes 0 or 4K only: 4K always, as it is always included. */
	map_ok(&self->pt, EMU_SZ_1G, BASE, EMU_SZ_2M, RW, 0);
	check_run(&self->pt, EMU_SZ_1G, BASE, RW, 0, EMU_SZ_4K, 512);
	map_ok(&self->pt, 2 * EMU_SZ_1G, BASE, EMU_SZ_2M, RW, EMU_SZ_4K);
	check_run(&self->pt, 2 * EMU_SZ_1G, BASE, RW, 0, EMU_SZ_4K, 512);
	unmap_all(&self->pt);

	/* Greedy per chunk: 2M up to the 1G boundary, 1G, then 2M and 4K for the tail. */
	iova = 3 * EMU_SZ_1G - EMU_SZ_2M;
	map_ok(&self->pt, iova, BASE + iova, 2 * EMU_SZ_2M + EMU_SZ_1G + EMU_SZ_4K, RW, ALL_SIZES);
	check_leaves(&self->pt, iova, BASE + iova, RW, 0, mixed, 4);
	CHECK_EQ(self->pt.table_pages,
		 5); /* L3; L2 before and after the 1G leaf; L1 for the tail */
	unmap_all(&self->pt);

	/* 4K up to a 2M boundary, then 2M, then 4K. */
	iova = EMU_SZ_1G + EMU_SZ_2M - 2 * EMU_SZ_4K;
	map_ok(&self->pt, iova, BASE + iova, 2 * EMU_SZ_4K + EMU_SZ_2M + 3 * EMU_SZ_4K, RW,
	       ALL_SIZES);
	iova = check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_4K, 2);
	iova = check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_2M, 1);
	check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_4K, 3);
	unmap_all(&self->pt);

	/* Only the R/W bits of prot are kept; a prot with neither is refused. */
	map_ok(&self->pt, 0, BASE, EMU_SZ_4K, RW | EMU_PTE_PS | EMU_PTE_D, ALL_SIZES);
	check_run(&self->pt, 0, BASE, RW, 0, EMU_SZ_4K, 1);
	CHECK_EQ(emu_pgtable_map(&self->pt, EMU_SZ_2M, BASE, EMU_SZ_2M, EMU_PTE_A, ALL_SIZES),
		 -EINVAL);
	CHECK_EQ(self->pt.table_pages, 4);
	check_unmapped(&self->pt, EMU_SZ_2M, EMU_SZ_2M);
	unmap_all(&self->pt);
}

/* ---- boundaries of the address space and of tables --------------------------------------- */

TEST_F(pgtable, boundaries)
{
	struct emu_translation t;
	uint64_t iova;

	/* iova 0, each leaf size. */
	map_ok(&self->pt, 0, BASE, EMU_SZ_4K, RW, ALL_SIZES);
	check_run(&self->pt, 0, BASE, RW, 0, EMU_SZ_4K, 1);
	CHECK_EQ(unmap_ok(&self->pt, 0, EMU_SZ_4K), EMU_SZ_4K);
	map_ok(&self->pt, 0, BASE, EMU_SZ_2M, RW, ALL_SIZES);
	check_run(&self->pt, 0, BASE, RW, 0, EMU_SZ_2M, 1);
	CHECK_EQ(unmap_ok(&self->pt, 0, EMU_SZ_2M), EMU_SZ_2M);
	map_ok(&self->pt, 0, BASE, EMU_SZ_1G, RW, ALL_SIZES);
	check_run(&self->pt, 0, BASE, RW, 0, EMU_SZ_1G, 1);
	CHECK_EQ(unmap_ok(&self->pt, 0, EMU_SZ_1G), EMU_SZ_1G);
	CHECK_EQ(self->pt.table_pages, 1);

	/* The last page below 2^48, and what lies past it. */
	map_ok(&self->pt, TOP - EMU_SZ_4K, BASE, EMU_SZ_4K, EMU_PTE_R, ALL_SIZES);
	check_run(&self->pt, TOP - EMU_SZ_4K, BASE, EMU_PTE_R, 0, EMU_SZ_4K, 1);
	CHECK_EQ(lookup(&self->pt, TOP, &t), -ENOENT);
	CHECK_EQ(lookup(&self->pt, TOP + TOP - EMU_SZ_4K, &t), -ENOENT);
	CHECK_EQ(lookup(&self->pt, UINT64_MAX & ~0xfffull, &t), -ENOENT);
	check_unmapped(&self->pt, TOP - EMU_SZ_2M, EMU_SZ_2M - EMU_SZ_4K);
	CHECK_EQ(unmap_ok(&self->pt, TOP - EMU_SZ_4K, EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);

	/* The last 1G and the last 2M, with a length running past the top to unmap them. */
	map_ok(&self->pt, TOP - EMU_SZ_1G, BASE, EMU_SZ_1G, RW, ALL_SIZES);
	check_run(&self->pt, TOP - EMU_SZ_1G, BASE, RW, 0, EMU_SZ_1G, 1);
	CHECK_EQ(unmap_ok(&self->pt, TOP - EMU_SZ_1G, UINT64_MAX), EMU_SZ_1G);
	map_ok(&self->pt, TOP - EMU_SZ_2M - EMU_SZ_4K, BASE + EMU_SZ_2M - EMU_SZ_4K,
	       EMU_SZ_2M + EMU_SZ_4K, RW, ALL_SIZES);
	iova = check_run(&self->pt, TOP - EMU_SZ_2M - EMU_SZ_4K, BASE + EMU_SZ_2M - EMU_SZ_4K, RW,
			 0, EMU_SZ_4K, 1);
	check_run(&self->pt, iova, BASE + EMU_SZ_2M, RW, 0, EMU_SZ_2M, 1);
	/* Unmapping from the top page on splits the 2M leaf and leaves its head. */
	CHECK_EQ(unmap_ok(&self->pt, TOP - EMU_SZ_4K, 2 * EMU_SZ_4K), EMU_SZ_4K);
	check_run(&self->pt, iova, BASE + EMU_SZ_2M, RW, 0, EMU_SZ_4K, 511);
	CHECK_EQ(unmap_ok(&self->pt, TOP, EMU_SZ_1G), 0);
	CHECK_EQ(unmap_ok(&self->pt, TOP - SZ_512G, SZ_512G), EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 1);
}

TEST_F(pgtable, boundaries_512g)
{
	uint64_t iova;

	/* A range across a 512G (root entry), 1G and 2M boundaries, in 4K pages. */
	iova = SZ_512G - EMU_SZ_2M - 3 * EMU_SZ_4K;
	map_ok(&self->pt, iova, BASE + EMU_SZ_4K, 2 * EMU_SZ_2M + 6 * EMU_SZ_4K, RW, ALL_SIZES);
	check_run(&self->pt, iova, BASE + EMU_SZ_4K, RW, 0, EMU_SZ_4K, 1030);
	CHECK_EQ(self->pt.table_pages, 1 + 2 + 2 + 4); /* two L3, two L2, four L1 */
	check_unmapped(&self->pt, iova - EMU_SZ_4K, EMU_SZ_4K);
	check_unmapped(&self->pt, iova + 1030 * EMU_SZ_4K, EMU_SZ_4K);
	CHECK_EQ(unmap_ok(&self->pt, iova, 2 * EMU_SZ_2M + 6 * EMU_SZ_4K), 1030 * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);

	/* The same with large leaves: 1G leaves on both sides of the 512G boundary. */
	iova = SZ_512G - EMU_SZ_1G - EMU_SZ_2M;
	map_ok(&self->pt, iova, BASE + iova, 2 * EMU_SZ_1G + 2 * EMU_SZ_2M, RW, ALL_SIZES);
	iova = check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_2M, 1);
	iova = check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_1G, 2);
	check_run(&self->pt, iova, BASE + iova, RW, 0, EMU_SZ_2M, 1);
	unmap_all(&self->pt);
}

/* ---- overlap ------------------------------------------------------------------------------ */

static void expect_eexist(struct emu_pgtable *pt, uint64_t iova, uint64_t addr, uint64_t length,
			  uint64_t sizes)
{
	struct snapshot s;

	snap_around(pt, iova, length, &s);
	CHECK_EQ(emu_pgtable_map(pt, iova, addr, length, RW, sizes), -EEXIST);
	snap_check(pt, &s);
	snap_free(&s);
}

TEST_F(pgtable, eexist)
{
	const uint64_t g = EMU_SZ_1G;

	/* A 4K page, a 2M leaf and a 1G leaf, with A/D bits that must survive a refused map. */
	map_ok(&self->pt, g + 5 * EMU_SZ_2M + 7 * EMU_SZ_4K, BASE, EMU_SZ_4K, EMU_PTE_R, ALL_SIZES);
	map_ok(&self->pt, g + 9 * EMU_SZ_2M, BASE + EMU_SZ_2M, EMU_SZ_2M, RW, ALL_SIZES);
	map_ok(&self->pt, 3 * g, BASE + g, g, EMU_PTE_W, ALL_SIZES);
	pte_set(&self->pt, 3 * g, EMU_PTE_A | EMU_PTE_D);

	/* On the 4K page: exactly, from before, to after, and where 2M or 1G would be used. */
	expect_eexist(&self->pt, g + 5 * EMU_SZ_2M + 7 * EMU_SZ_4K, BASE, EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 5 * EMU_SZ_2M, BASE, 8 * EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 5 * EMU_SZ_2M + 7 * EMU_SZ_4K, BASE, 3 * EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 4 * EMU_SZ_2M, BASE, 3 * EMU_SZ_2M, ALL_SIZES);
	expect_eexist(&self->pt, g, BASE, g, ALL_SIZES);
	expect_eexist(&self->pt, 0, BASE, 2 * g, ALL_SIZES);
	/* On the 2M leaf: its first page, last page, middle, and with 4K pages only. */
	expect_eexist(&self->pt, g + 8 * EMU_SZ_2M, BASE, EMU_SZ_2M + EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 10 * EMU_SZ_2M - EMU_SZ_4K, BASE, 2 * EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 9 * EMU_SZ_2M + 0x10000, BASE, EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, g + 7 * EMU_SZ_2M, BASE, 8 * EMU_SZ_2M, EMU_SZ_4K);
	/* On the 1G leaf: by a 1G, a 2M and a 4K map, and by a map that ends in it. */
	expect_eexist(&self->pt, 3 * g, BASE, g, ALL_SIZES);
	expect_eexist(&self->pt, 4 * g - EMU_SZ_2M, BASE, EMU_SZ_2M, ALL_SIZES);
	expect_eexist(&self->pt, 3 * g + 0x5000, BASE, EMU_SZ_4K, ALL_SIZES);
	expect_eexist(&self->pt, 2 * g - EMU_SZ_4K, BASE, g + 2 * EMU_SZ_4K, ALL_SIZES);
	/* A long map that creates tables before it meets the 1G leaf: they must go again. */
	expect_eexist(&self->pt, 2 * g + 3 * EMU_SZ_4K, BASE + 3 * EMU_SZ_4K, g, ALL_SIZES);
	/* One that meets the 4K page after filling much of its table and the ones before it. */
	expect_eexist(&self->pt, 0x1000, BASE + 0x1000, g + 5 * EMU_SZ_2M + 7 * EMU_SZ_4K,
		      ALL_SIZES);

	CHECK_EQ(unmap_ok(&self->pt, 0, TOP), EMU_SZ_4K + EMU_SZ_2M + g);
	CHECK_EQ(self->pt.table_pages, 1);
}

/* ---- splitting unmaps ---------------------------------------------------------------------- */

TEST_F(pgtable, split_2m)
{
	const uint64_t iova = 7 * EMU_SZ_1G + 3 * EMU_SZ_2M;
	const uint64_t addr = BASE + 11 * EMU_SZ_2M;
	const uint64_t ad = EMU_PTE_A | EMU_PTE_D;

	map_ok(&self->pt, iova, addr, EMU_SZ_2M, EMU_PTE_R, ALL_SIZES);
	pte_set(&self->pt, iova, ad);
	CHECK_EQ(self->pt.table_pages, 3);

	/* A hole of two pages in the middle: one 4K table, the rest keeps everything. */
	CHECK_EQ(unmap_ok(&self->pt, iova + 100 * EMU_SZ_4K, 2 * EMU_SZ_4K), 2 * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 4);
	check_run(&self->pt, iova, addr, EMU_PTE_R, ad, EMU_SZ_4K, 100);
	check_unmapped(&self->pt, iova + 100 * EMU_SZ_4K, 2 * EMU_SZ_4K);
	check_run(&self->pt, iova + 102 * EMU_SZ_4K, addr + 102 * EMU_SZ_4K, EMU_PTE_R, ad,
		  EMU_SZ_4K, 410);

	/* The head, across the hole (which counts nothing), then the tail piece by piece. */
	CHECK_EQ(unmap_ok(&self->pt, iova, 101 * EMU_SZ_4K), 100 * EMU_SZ_4K);
	CHECK_EQ(unmap_ok(&self->pt, iova + 101 * EMU_SZ_4K, 300 * EMU_SZ_4K), 299 * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 4);
	CHECK_EQ(unmap_ok(&self->pt, iova + 401 * EMU_SZ_4K, 110 * EMU_SZ_4K), 110 * EMU_SZ_4K);
	check_run(&self->pt, iova + 511 * EMU_SZ_4K, addr + 511 * EMU_SZ_4K, EMU_PTE_R, ad,
		  EMU_SZ_4K, 1);
	CHECK_EQ(unmap_ok(&self->pt, iova + 511 * EMU_SZ_4K, EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);

	/* A range that starts inside one 2M leaf and ends inside the next. */
	map_ok(&self->pt, iova, addr, 2 * EMU_SZ_2M, RW, ALL_SIZES);
	pte_set(&self->pt, iova + EMU_SZ_2M, EMU_PTE_A);
	CHECK_EQ(unmap_ok(&self->pt, iova + EMU_SZ_2M - EMU_SZ_4K, 2 * EMU_SZ_4K), 2 * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 5);
	check_run(&self->pt, iova, addr, RW, 0, EMU_SZ_4K, 511);
	check_run(&self->pt, iova + EMU_SZ_2M + EMU_SZ_4K, addr + EMU_SZ_2M + EMU_SZ_4K, RW,
		  EMU_PTE_A, EMU_SZ_4K, 511);
	unmap_all(&self->pt);
}

/* Where the 1G split cases map their leaves. */
#define SPLIT_IOVA (5 * EMU_SZ_1G)
#define SPLIT_ADDR (BASE + 2 * EMU_SZ_1G)

/* count 1G leaves at SPLIT_IOVA, the first with the A/D bits ad already set. */
static void map_1g_leaves(struct emu_pgtable *pt, uint64_t count, uint64_t prot, uint64_t ad)
{
	map_ok(pt, SPLIT_IOVA, SPLIT_ADDR, count * EMU_SZ_1G, prot, ALL_SIZES);
	if (ad)
		pte_set(pt, SPLIT_IOVA, ad);
}

TEST_F(pgtable, split_1g)
{
	const uint64_t iova = SPLIT_IOVA, addr = SPLIT_ADDR;
	uint64_t at;

	map_1g_leaves(&self->pt, 1, EMU_PTE_W, EMU_PTE_A);
	CHECK_EQ(self->pt.table_pages, 2);

	/* A 4K hole in the 4th 2M: 1G -> 2M, then that 2M -> 4K. */
	CHECK_EQ(unmap_ok(&self->pt, iova + 3 * EMU_SZ_2M + 5 * EMU_SZ_4K, EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 4);
	at = check_run(&self->pt, iova, addr, EMU_PTE_W, EMU_PTE_A, EMU_SZ_2M, 3);
	at = check_run(&self->pt, at, addr + (at - iova), EMU_PTE_W, EMU_PTE_A, EMU_SZ_4K, 5);
	check_unmapped(&self->pt, at, EMU_SZ_4K);
	at += EMU_SZ_4K;
	at = check_run(&self->pt, at, addr + (at - iova), EMU_PTE_W, EMU_PTE_A, EMU_SZ_4K, 506);
	check_run(&self->pt, at, addr + (at - iova), EMU_PTE_W, EMU_PTE_A, EMU_SZ_2M, 508);

	/* A 2M-aligned 2M hole is one leaf: no split, no table. */
	CHECK_EQ(unmap_ok(&self->pt, iova + 100 * EMU_SZ_2M, EMU_SZ_2M), EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 4);
	check_unmapped(&self->pt, iova + 100 * EMU_SZ_2M, EMU_SZ_2M);
	unmap_all(&self->pt);
}

TEST_F(pgtable, split_1g_dirty)
{
	const uint64_t iova = SPLIT_IOVA, addr = SPLIT_ADDR;
	uint64_t at;

	/* A 2M hole in a fresh 1G leaf, with D set: one split, and D on every piece. */
	map_1g_leaves(&self->pt, 1, RW, EMU_PTE_D);
	CHECK_EQ(unmap_ok(&self->pt, iova + 7 * EMU_SZ_2M, EMU_SZ_2M), EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 3);
	at = check_run(&self->pt, iova, addr, RW, EMU_PTE_D, EMU_SZ_2M, 7);
	check_unmapped(&self->pt, at, EMU_SZ_2M);
	check_run(&self->pt, at + EMU_SZ_2M, addr + 8 * EMU_SZ_2M, RW, EMU_PTE_D, EMU_SZ_2M, 504);
	unmap_all(&self->pt);

	/* Both ends inside one 2M piece of one 1G leaf. */
	map_1g_leaves(&self->pt, 1, RW, 0);
	CHECK_EQ(unmap_ok(&self->pt, iova + EMU_SZ_1G - EMU_SZ_2M + 0x3000, 0x2000), 0x2000);
	CHECK_EQ(self->pt.table_pages, 4);
	at = check_run(&self->pt, iova, addr, RW, 0, EMU_SZ_2M, 511);
	at = check_run(&self->pt, at, addr + (at - iova), RW, 0, EMU_SZ_4K, 3);
	check_unmapped(&self->pt, at, 0x2000);
	check_run(&self->pt, at + 0x2000, addr + (at + 0x2000 - iova), RW, 0, EMU_SZ_4K, 507);
	unmap_all(&self->pt);
}

TEST_F(pgtable, split_1g_across)
{
	const uint64_t iova = SPLIT_IOVA, addr = SPLIT_ADDR;
	uint64_t at;

	/* From inside one 1G leaf to inside the next, across 2M pieces. */
	map_1g_leaves(&self->pt, 2, RW, 0);
	CHECK_EQ(unmap_ok(&self->pt, iova + EMU_SZ_1G - EMU_SZ_2M - EMU_SZ_4K,
			  EMU_SZ_4K + 2 * EMU_SZ_2M + EMU_SZ_4K),
		 EMU_SZ_4K + 2 * EMU_SZ_2M + EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 6);
	at = check_run(&self->pt, iova, addr, RW, 0, EMU_SZ_2M, 510);
	at = check_run(&self->pt, at, addr + (at - iova), RW, 0, EMU_SZ_4K, 511);
	check_unmapped(&self->pt, at, EMU_SZ_4K + 2 * EMU_SZ_2M + EMU_SZ_4K);
	at += EMU_SZ_4K + 2 * EMU_SZ_2M + EMU_SZ_4K;
	at = check_run(&self->pt, at, addr + (at - iova), RW, 0, EMU_SZ_4K, 511);
	check_run(&self->pt, at, addr + (at - iova), RW, 0, EMU_SZ_2M, 510);
	unmap_all(&self->pt);

	/* An empty range inside a leaf splits nothing. */
	map_1g_leaves(&self->pt, 1, RW, 0);
	CHECK_EQ(unmap_ok(&self->pt, iova + 0x5000, 0), 0);
	CHECK_EQ(self->pt.table_pages, 2);
	check_run(&self->pt, iova, addr, RW, 0, EMU_SZ_1G, 1);
	unmap_all(&self->pt);
}

/* ---- table reclamation and unmapped byte counts -------------------------------------------- */

TEST_F(pgtable, reclaim)
{
	static const uint64_t spots[] = {
		0,
		0x1000,
		0x1ff000,
		0x200000,
		0x3ff000,
		EMU_SZ_1G - 0x1000,
		EMU_SZ_1G,
		SZ_512G - 0x1000,
		SZ_512G,
		3 * SZ_512G + 0x123000,
		TOP - 0x1000,
	};
	const size_t n = sizeof(spots) / sizeof(spots[0]);
	uint64_t i;

	/* Scattered pages, unmapped one by one, forwards then backwards. */
	for (i = 0; i < n; i++)
		map_ok(&self->pt, spots[i], BASE + i * EMU_SZ_4K, EMU_SZ_4K, RW, ALL_SIZES);
	for (i = 0; i < n; i++)
		CHECK_EQ(unmap_ok(&self->pt, spots[i], EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);
	for (i = 0; i < n; i++)
		map_ok(&self->pt, spots[i], BASE + i * EMU_SZ_4K, EMU_SZ_4K, RW, ALL_SIZES);
	for (i = n; i--;)
		CHECK_EQ(unmap_ok(&self->pt, spots[i], EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);

	/* The same, all at once, counting only what was mapped. */
	for (i = 0; i < n; i++)
		map_ok(&self->pt, spots[i], BASE + i * EMU_SZ_4K, EMU_SZ_4K, RW, ALL_SIZES);
	CHECK_EQ(unmap_ok(&self->pt, 0, TOP), n * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);
}

/* Tables freed as they empty are kept, a few, for the next: reused clean, whatever they held
 * when dropped whole, each reuse still a point where an allocation can fail. */
TEST_F(pgtable, spare_tables)
{
	const uint64_t tables_32m = 1 + 1 + 16; /* L3 and L2 above, 16 full L1 tables */

	/* A full 4 KiB table dropped whole, then reused for one page elsewhere in its range:
	 * none of its old entries shows through. */
	map_ok(&self->pt, 0x40000000, BASE, EMU_SZ_2M, RW, EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 4);
	CHECK_EQ(unmap_ok(&self->pt, 0x40000000, EMU_SZ_2M), EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 1);
	CHECK_EQ(self->pt.n_spares, 3);
	map_ok(&self->pt, 0x40000000 + 0x5000, BASE, EMU_SZ_4K, EMU_PTE_R, ALL_SIZES);
	CHECK_EQ(self->pt.n_spares, 0);
	check_run(&self->pt, 0x40005000, BASE, EMU_PTE_R, 0, EMU_SZ_4K, 1);
	check_unmapped(&self->pt, 0x40000000, 0x5000);
	check_unmapped(&self->pt, 0x40006000, EMU_SZ_2M - 0x6000);
	unmap_all(&self->pt);

	/* No more than EMU_PGTABLE_SPARES are kept; the rest go back to malloc. */
	map_ok(&self->pt, 0x80000000, BASE, 16 * EMU_SZ_2M, RW, EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1 + tables_32m);
	unmap_all(&self->pt);
	CHECK_EQ(self->pt.n_spares, EMU_PGTABLE_SPARES);

	/* A spare taken is an allocation: failing it fails the map, which changes nothing. */
	kh_fail_nth_arm(1);
	CHECK_EQ(emu_pgtable_map(&self->pt, 0x40000000, BASE, EMU_SZ_4K, RW, ALL_SIZES), -ENOMEM);
	CHECK(kh_fail_nth_disarm());
	CHECK_EQ(self->pt.table_pages, 1);
	CHECK_EQ(self->pt.n_spares, EMU_PGTABLE_SPARES);
	check_tables(&self->pt);
	check_unmapped(&self->pt, 0x40000000, EMU_SZ_4K);
}

TEST_F(pgtable, reclaim_ranges)
{
	uint64_t i, iova;

	/* A 1G range of 4K pages: 512 leaf tables, all freed by one unmap. */
	map_ok(&self->pt, EMU_SZ_1G, BASE + EMU_SZ_4K, EMU_SZ_1G, RW, ALL_SIZES);
	CHECK_EQ(self->pt.table_pages, 1 + 1 + 1 + 512);
	CHECK_EQ(unmap_ok(&self->pt, EMU_SZ_1G, EMU_SZ_1G), EMU_SZ_1G);
	CHECK_EQ(self->pt.table_pages, 1);

	/* Every other 2M mapped in 4K pages, unmapped by ranges that cut across them. */
	for (i = 0; i < 64; i += 2)
		map_ok(&self->pt, i * EMU_SZ_2M, BASE + 0x1000, EMU_SZ_2M, RW, ALL_SIZES);
	for (iova = 0x5000; iova < 64 * EMU_SZ_2M; iova += 3 * EMU_SZ_2M + 0x7000)
		unmap_ok(&self->pt, iova, 3 * EMU_SZ_2M + 0x7000);
	CHECK_EQ(unmap_ok(&self->pt, 0, 0x5000), 0x5000);
	CHECK_EQ(self->pt.table_pages, 1);

	/* Mixed leaves unmapped in 4K steps from the end: splits, then reclaims everything. */
	map_ok(&self->pt, EMU_SZ_1G - 2 * EMU_SZ_4K, BASE + EMU_SZ_1G - 2 * EMU_SZ_4K,
	       EMU_SZ_1G + EMU_SZ_2M + 4 * EMU_SZ_4K, RW, ALL_SIZES);
	for (iova = 2 * EMU_SZ_1G + EMU_SZ_2M + 2 * EMU_SZ_4K; iova > 2 * EMU_SZ_1G - 0x10000;)
		CHECK_EQ(unmap_ok(&self->pt, iova -= EMU_SZ_4K, EMU_SZ_4K), EMU_SZ_4K);
	CHECK_EQ(unmap_ok(&self->pt, 0, 2 * EMU_SZ_1G), EMU_SZ_1G - 0x10000 + 2 * EMU_SZ_4K);
	CHECK_EQ(self->pt.table_pages, 1);
}

TEST_F(pgtable, reclaim_holes)
{
	/* Holes count nothing; unmapping nothing is not an error. */
	map_ok(&self->pt, 0x10000, BASE, 0x3000, RW, ALL_SIZES);
	map_ok(&self->pt, 0x20000, BASE, 0x1000, RW, ALL_SIZES);
	map_ok(&self->pt, EMU_SZ_1G, BASE, EMU_SZ_2M, RW, ALL_SIZES);
	CHECK_EQ(unmap_ok(&self->pt, 0x11000, EMU_SZ_1G - 0x11000), 0x2000 + 0x1000);
	CHECK_EQ(unmap_ok(&self->pt, 0x11000, EMU_SZ_1G - 0x11000), 0);
	CHECK_EQ(unmap_ok(&self->pt, 0, EMU_SZ_1G + EMU_SZ_4K), 0x1000 + EMU_SZ_4K);
	CHECK_EQ(unmap_ok(&self->pt, 5 * SZ_512G, SZ_512G), 0);
	CHECK_OK(emu_pgtable_unmap(&self->pt, 0, TOP, NULL));
	CHECK_EQ(self->pt.table_pages, 1);

	/* destroy frees whatever is left. */
	map_ok(&self->pt, 0, BASE, 3 * EMU_SZ_1G + EMU_SZ_2M + EMU_SZ_4K, RW, ALL_SIZES);
	map_ok(&self->pt, TOP - EMU_SZ_1G - EMU_SZ_4K, BASE + EMU_SZ_4K, EMU_SZ_1G, RW, ALL_SIZES);
}

/* ---- dirty reads --------------------------------------------------------------------------- */

static uint64_t get_d(struct emu_pgtable *pt, uint64_t iova)
{
	struct emu_translation t;

	CHECK_OK(lookup(pt, iova, &t));
	return *t.pte & EMU_PTE_D;
}

static bool bit(const uint64_t *bitmap, uint64_t i)
{
	return bitmap[i / 64] >> (i % 64) & 1;
}

static unsigned long popcount(const uint64_t *bitmap, size_t words)
{
	unsigned long n = 0;

	while (words--)
		n += __builtin_popcountll(bitmap[words]);
	return n;
}

/* [1G, 2G) one 1G leaf; [2G, 2G+2M) one 2M leaf; then four 4K pages; none of them dirty. */
static void map_dirty_layout(struct emu_pgtable *pt)
{
	map_ok(pt, EMU_SZ_1G, BASE + EMU_SZ_1G, EMU_SZ_1G + EMU_SZ_2M + 4 * EMU_SZ_4K, RW,
	       ALL_SIZES);
}

TEST_F(pgtable, dirty)
{
	const uint64_t g = EMU_SZ_1G;
	uint64_t bitmap[1024];
	uint64_t i;

	map_dirty_layout(&self->pt);
	pte_set(&self->pt, g, EMU_PTE_D);
	pte_set(&self->pt, 2 * g + EMU_SZ_2M + EMU_SZ_4K, EMU_PTE_D);

	/* 2M pages: the 1G leaf sets 512 bits, the clean 2M leaf none, the 4K page its page. */
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, g, g + 2 * EMU_SZ_2M, EMU_SZ_2M, bitmap, false);
	CHECK_EQ(popcount(bitmap, 1024), 513);
	for (i = 0; i < 512; i++)
		CHECK(bit(bitmap, i));
	CHECK(!bit(bitmap, 512));
	CHECK(bit(bitmap, 513));
	CHECK_EQ(get_d(&self->pt, g), 0);
	CHECK_EQ(get_d(&self->pt, 2 * g + EMU_SZ_2M + EMU_SZ_4K), 0);
	/* Cleared: a second read finds nothing. */
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, g, g + 2 * EMU_SZ_2M, EMU_SZ_2M, bitmap, false);
	CHECK_EQ(popcount(bitmap, 1024), 0);

	/* no_clear: reported twice, D kept. 4K pages, a range starting inside the 2M leaf. */
	pte_set(&self->pt, 2 * g, EMU_PTE_D);
	pte_set(&self->pt, 2 * g + EMU_SZ_2M + 3 * EMU_SZ_4K, EMU_PTE_D);
	for (i = 0; i < 2; i++) {
		memset(bitmap, 0, sizeof(bitmap));
		emu_pgtable_read_dirty(&self->pt, 2 * g + 0x100000, 0x100000 + 4 * EMU_SZ_4K,
				       EMU_SZ_4K, bitmap, true);
		CHECK_EQ(popcount(bitmap, 1024), 256 + 1);
		CHECK(bit(bitmap, 0) && bit(bitmap, 255) && !bit(bitmap, 256));
		CHECK(bit(bitmap, 256 + 3));
		CHECK(get_d(&self->pt, 2 * g));
	}

	/* A range cutting the dirty 1G leaf: bits only inside the range, D cleared on the leaf.
	 * The bitmap is not cleared first. */
	pte_set(&self->pt, g, EMU_PTE_D);
	memset(bitmap, 0, sizeof(bitmap));
	bitmap[1023] = 1;
	emu_pgtable_read_dirty(&self->pt, 2 * g - 8 * EMU_SZ_4K, 8 * EMU_SZ_4K, EMU_SZ_4K, bitmap,
			       false);
	CHECK_EQ(bitmap[0], 0xff);
	CHECK_EQ(bitmap[1023], 1);
	CHECK_EQ(get_d(&self->pt, g), 0);
	/* A range cutting the 2M leaf (whose D is still set) reports and clears it. */
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, 2 * g + EMU_SZ_2M - EMU_SZ_4K, 5 * EMU_SZ_4K, EMU_SZ_4K,
			       bitmap, false);
	CHECK_EQ(bitmap[0], 0x1 | 0x10);
	CHECK_EQ(get_d(&self->pt, 2 * g), 0);
}

TEST_F(pgtable, dirty_page_sizes)
{
	const uint64_t g = EMU_SZ_1G;
	uint64_t bitmap[1024];

	map_dirty_layout(&self->pt);
	/* Page sizes bigger than leaves: one bit per 1G for the 4K page, a multi-word 4K read. */
	pte_set(&self->pt, 2 * g + EMU_SZ_2M, EMU_PTE_D);
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, 0, 4 * g, EMU_SZ_1G, bitmap, false);
	CHECK_EQ(bitmap[0], 1ull << 2);
	pte_set(&self->pt, g, EMU_PTE_D);
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, g + 0x3000, 1000 * EMU_SZ_4K, EMU_SZ_4K, bitmap, false);
	CHECK_EQ(popcount(bitmap, 1024), 1000);
	CHECK(bit(bitmap, 999) && !bit(bitmap, 1000));

	/* Leaves split by an unmap keep D, each piece reported and cleared on its own. */
	pte_set(&self->pt, g, EMU_PTE_D);
	CHECK_EQ(unmap_ok(&self->pt, g + EMU_SZ_2M, EMU_SZ_4K), EMU_SZ_4K);
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, g + EMU_SZ_2M, 8 * EMU_SZ_4K, EMU_SZ_4K, bitmap, false);
	CHECK_EQ(bitmap[0], 0xfe);
	CHECK_EQ(get_d(&self->pt, g), EMU_PTE_D);
	CHECK_EQ(get_d(&self->pt, g + EMU_SZ_2M + 8 * EMU_SZ_4K), EMU_PTE_D);
	CHECK_EQ(get_d(&self->pt, g + EMU_SZ_2M + 7 * EMU_SZ_4K), 0);

	/* Nothing mapped, nothing reported. */
	memset(bitmap, 0, sizeof(bitmap));
	emu_pgtable_read_dirty(&self->pt, 8 * g, 64 * EMU_SZ_2M, EMU_SZ_2M, bitmap, false);
	CHECK_EQ(popcount(bitmap, 1024), 0);

	unmap_all(&self->pt);
}

/* ---- all or nothing under failure injection ------------------------------------------------ */

struct op {
	bool unmap;
	uint64_t iova, addr, length, sizes;
	uint64_t unmapped;
};

static int run_op(struct emu_pgtable *pt, struct op *op)
{
	if (op->unmap)
		return emu_pgtable_unmap(pt, op->iova, op->length, &op->unmapped);
	return emu_pgtable_map(pt, op->iova, op->addr, op->length, RW, op->sizes);
}

/* Fails the 1st, 2nd, ... injection point of op until it runs without reaching the armed one;
 * every failure must leave the range and table_pages as they were. Returns the points seen. */
static unsigned long sweep(struct emu_pgtable *pt, struct op *op, int final_rc)
{
	struct snapshot s;
	unsigned long n;

	snap_around(pt, op->iova, op->length, &s);
	for (n = 1;; n++) {
		int rc;

		kh_fail_nth_arm(n);
		rc = run_op(pt, op);
		if (!kh_fail_nth_disarm()) {
			CHECK_EQ(rc, final_rc);
			break;
		}
		injections++;
		CHECK_EQ(rc, -ENOMEM);
		if (op->unmap)
			CHECK_EQ(op->unmapped, 0);
		snap_check(pt, &s);
	}
	snap_free(&s);
	check_tables(pt);
	return n - 1;
}

TEST_F(pgtable, fail_map)
{
	const uint64_t g = EMU_SZ_1G;
	struct op op = {.sizes = ALL_SIZES};

	/* Into an empty table: one 4K page needs three tables. */
	op.iova = 5 * g + 0x7000;
	op.addr = BASE;
	op.length = EMU_SZ_4K;
	CHECK_EQ(sweep(&self->pt, &op, 0), 3);
	check_run(&self->pt, op.iova, BASE, RW, 0, EMU_SZ_4K, 1);
	unmap_all(&self->pt);

	/* Across a 512G boundary with every leaf size: 2M, 4K tails, a 1G leaf on each side. */
	op.iova = SZ_512G - g - EMU_SZ_2M - 3 * EMU_SZ_4K;
	op.addr = BASE + op.iova;
	op.length = 2 * g + 2 * EMU_SZ_2M + 6 * EMU_SZ_4K;
	CHECK_EQ(sweep(&self->pt, &op, 0), 2 * 3); /* L3, L2 and L1 on each side */
	CHECK_EQ(self->pt.table_pages, 7);
	check_run(&self->pt, SZ_512G - EMU_SZ_1G, BASE + SZ_512G - EMU_SZ_1G, RW, 0, EMU_SZ_1G, 2);
	CHECK_EQ(unmap_ok(&self->pt, 0, TOP), op.length);

	/* 4K pages into tables partly there: only the missing ones are allocated. */
	map_ok(&self->pt, 2 * g + 0x5000, BASE, EMU_SZ_4K, RW, ALL_SIZES);
	map_ok(&self->pt, 2 * g + 9 * EMU_SZ_2M, BASE, EMU_SZ_4K, RW, ALL_SIZES);
	op.iova = 2 * g;
	op.addr = BASE + 0x1000;
	op.length = 4 * 0x1000;
	CHECK_EQ(sweep(&self->pt, &op, 0), 0);
	op.iova = 2 * g + 9 * EMU_SZ_2M + 0x20000;
	op.length = 12 * EMU_SZ_2M;
	CHECK_EQ(sweep(&self->pt, &op, 0), 12);

	/* A map that allocates tables and then meets a mapping: -EEXIST, and every failure point
	 * before it still leaves nothing behind. L2 and one L1 below 1G, L2 for [1G, 2G). */
	op.iova = g - 3 * EMU_SZ_2M - 0x1000;
	op.addr = BASE + op.iova;
	op.length = g + 8 * EMU_SZ_2M;
	op.sizes = EMU_SZ_4K | EMU_SZ_2M;
	CHECK_EQ(sweep(&self->pt, &op, -EEXIST), 3);
	CHECK_EQ(unmap_ok(&self->pt, 0, TOP), 2 * EMU_SZ_4K + 4 * 0x1000 + 12 * EMU_SZ_2M);
	CHECK_EQ(self->pt.table_pages, 1);

	/* 64M of 4K pages across a 1G boundary, with a failure point per leaf table. */
	op.iova = 3 * g - 32 * EMU_SZ_2M;
	op.addr = BASE + 0x1000;
	op.length = 64 * EMU_SZ_2M;
	op.sizes = ALL_SIZES;
	CHECK_EQ(sweep(&self->pt, &op, 0), 1 + 2 + 64);
	unmap_all(&self->pt);
}

TEST_F(pgtable, fail_unmap)
{
	const uint64_t g = EMU_SZ_1G;
	struct op op = {.unmap = true};
	uint64_t at;

	/* Each end inside a different 1G leaf and not 2M aligned: four splits. */
	map_ok(&self->pt, g, BASE + g, 2 * g, RW, ALL_SIZES);
	pte_set(&self->pt, g, EMU_PTE_A);
	pte_set(&self->pt, 2 * g, EMU_PTE_A | EMU_PTE_D);
	op.iova = g + 5 * EMU_SZ_2M + 0x3000;
	op.length = 2 * g - op.iova + 7 * EMU_SZ_2M + 0x9000;
	CHECK_EQ(sweep(&self->pt, &op, 0), 4);
	CHECK_EQ(op.unmapped, op.length);
	at = check_run(&self->pt, g, BASE + g, RW, EMU_PTE_A, EMU_SZ_2M, 5);
	at = check_run(&self->pt, at, BASE + at, RW, EMU_PTE_A, EMU_SZ_4K, 3);
	check_unmapped(&self->pt, at, op.length);
	at += op.length;
	at = check_run(&self->pt, at, BASE + at, RW, EMU_PTE_A | EMU_PTE_D, EMU_SZ_4K, 512 - 9);
	check_run(&self->pt, at, BASE + at, RW, EMU_PTE_A | EMU_PTE_D, EMU_SZ_2M, 512 - 8);
	unmap_all(&self->pt);

	/* Both ends in one 2M piece of one 1G leaf: two splits, the second end finds 4K leaves. */
	map_ok(&self->pt, g, BASE, g, RW, ALL_SIZES);
	op.iova = g + 0x3000;
	op.length = 0x4000;
	CHECK_EQ(sweep(&self->pt, &op, 0), 2);
	CHECK_EQ(op.unmapped, 0x4000);
	CHECK_EQ(self->pt.table_pages, 4);
	/* Both ends in different 2M pieces of one 1G leaf: three splits. */
	op.iova = g + 3 * EMU_SZ_2M + 0x3000;
	op.length = 4 * EMU_SZ_2M;
	CHECK_EQ(sweep(&self->pt, &op, 0), 2);
	CHECK_EQ(op.unmapped, 4 * EMU_SZ_2M);
	unmap_all(&self->pt);
	map_ok(&self->pt, g, BASE, g, RW, ALL_SIZES);
	CHECK_EQ(sweep(&self->pt, &op, 0), 3);
	unmap_all(&self->pt);

	/* 2M leaves, a range over a hole: what was mapped, and no split where nothing is. */
	map_ok(&self->pt, 0, BASE, 4 * EMU_SZ_2M, RW, ALL_SIZES);
	CHECK_EQ(unmap_ok(&self->pt, EMU_SZ_2M, EMU_SZ_2M), EMU_SZ_2M);
	op.iova = EMU_SZ_2M - 0x1000;
	op.length = EMU_SZ_2M + 0x2000;
	CHECK_EQ(sweep(&self->pt, &op, 0), 2);
	CHECK_EQ(op.unmapped, 0x2000);
	op.iova = 0x1000;
	op.length = EMU_SZ_2M + 0x1000;
	CHECK_EQ(sweep(&self->pt, &op, 0), 0);
	CHECK_EQ(op.unmapped, EMU_SZ_2M - 0x2000);
	unmap_all(&self->pt);
}

/* ---- random operations against a model ------------------------------------------------------- */

#define WIN_IOVA  (SZ_512G - 2 * EMU_SZ_1G) /* 4 GiB across a root entry boundary */
#define WIN_PAGES (4 * EMU_SZ_1G / EMU_SZ_4K)

static uint64_t rng_state;

static uint64_t rnd(uint64_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state % n;
}

struct model {
	uint64_t *addr; /* per page of the window, 0 when unmapped */
};

static void model_check(const struct emu_pgtable *pt, const struct model *m, uint64_t first,
			uint64_t n)
{
	struct emu_translation t;
	uint64_t p;

	for (p = first; p < first + n && p < WIN_PAGES; p++) {
		int rc = lookup(pt, WIN_IOVA + p * EMU_SZ_4K, &t);

		if (!m->addr[p]) {
			CHECK_EQ(rc, -ENOENT);
			continue;
		}
		CHECK_OK(rc);
		CHECK_EQ(t.addr, m->addr[p]);
		CHECK_EQ(t.prot, RW);
		/* A leaf never covers more than what the model maps contiguously. */
		CHECK_EQ((t.addr - (WIN_IOVA + p * EMU_SZ_4K)) & (t.leaf_size - 1), 0);
	}
}

/* A length and an offset that make every leaf size likely. */
static uint64_t rnd_span(void)
{
	static const uint64_t unit[] = {EMU_SZ_4K, EMU_SZ_4K, EMU_SZ_2M, EMU_SZ_2M, EMU_SZ_1G};
	uint64_t u = unit[rnd(5)];

	return u * (1 + rnd(u == EMU_SZ_1G ? 2 : 5)) + (rnd(3) ? 0 : rnd(8) * EMU_SZ_4K);
}

static uint64_t seed = 0x9e3779b97f4a7c15ull;

HARNESS_OPTION(seed, "N", "seed of the random case (default 0x9e3779b97f4a7c15)")
{
	seed = harness_parse_u64("seed", value);
}

/* One random map or unmap in the window, sometimes with a failure injected, checked against
 * the model around it. */
static void random_step(struct emu_pgtable *pt, struct model *m)
{
	bool map = rnd(5) < 3;
	uint64_t len = rnd_span();
	/* Unmaps start off leaf boundaries more often, to split. */
	uint64_t first = (rnd(WIN_PAGES) & ~(rnd(2) ? 0x1ffull : 0x3ffffull)) +
			 (rnd(3) ? 0 : rnd(map ? 16 : 1024));
	uint64_t n = len / EMU_SZ_4K, p, mapped = 0, got = 0, addr;
	unsigned long fail = rnd(map ? 4 : 2) ? 0 : 1 + rnd(map ? 6 : 3);
	struct snapshot s;
	bool tripped;
	int rc;

	if (first >= WIN_PAGES)
		first = WIN_PAGES - 1;
	if (first + n > WIN_PAGES)
		n = WIN_PAGES - first;
	/* Mostly as aligned as the IOVA, so that large leaves are used. */
	addr = BASE + first * EMU_SZ_4K + (rnd(4) ? 0 : rnd(4) * EMU_SZ_4K);
	for (p = first; p < first + n; p++)
		mapped += m->addr[p] != 0;
	if (fail)
		snap_take(pt, WIN_IOVA + first * EMU_SZ_4K, n * EMU_SZ_4K, &s);
	kh_fail_nth_arm(fail);
	if (map) {
		rc = emu_pgtable_map(pt, WIN_IOVA + first * EMU_SZ_4K, addr, n * EMU_SZ_4K, RW,
				     rnd(4) ? ALL_SIZES : EMU_SZ_4K | EMU_SZ_1G);
		tripped = kh_fail_nth_disarm();
		if (!tripped)
			CHECK_EQ(rc, mapped ? -EEXIST : 0);
		for (p = first; !rc && p < first + n; p++)
			m->addr[p] = addr + (p - first) * EMU_SZ_4K;
	} else {
		rc = emu_pgtable_unmap(pt, WIN_IOVA + first * EMU_SZ_4K, n * EMU_SZ_4K, &got);
		tripped = kh_fail_nth_disarm();
		CHECK_EQ(got, tripped ? 0 : mapped * EMU_SZ_4K);
		for (p = first; !rc && p < first + n; p++)
			m->addr[p] = 0;
	}
	if (tripped) {
		injections++;
		CHECK_EQ(rc, -ENOMEM);
		snap_check(pt, &s);
	}
	if (fail)
		snap_free(&s);
	check_tables(pt);
	model_check(pt, m, first >= 512 ? first - 512 : 0, n + 1024);
}

TEST_F(pgtable, random)
{
	struct model m;
	unsigned int step;

	(void)printf("test_pgtable: random operations, seed %#" PRIx64 "\n", seed);
	rng_state = seed;
	m.addr = calloc(WIN_PAGES, sizeof(*m.addr));
	CHECK(m.addr);
	for (step = 0; step < 400; step++) {
		random_step(&self->pt, &m);
		if (step % 100 == 99)
			model_check(&self->pt, &m, 0, WIN_PAGES);
	}
	model_check(&self->pt, &m, 0, WIN_PAGES);
	unmap_all(&self->pt);
	free(m.addr);
	(void)printf("test_pgtable: random operations matched the model: %lu lookups, %lu injected "
		     "failures (seed %#" PRIx64 ")\n",
		     lookups, injections, seed);
}
