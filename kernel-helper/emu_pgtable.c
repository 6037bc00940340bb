/* SPDX-License-Identifier: MIT */
#include "emu_pgtable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

#define PTES_PER_TABLE	512u
#define PTE_PRESENT	(EMU_PTE_R | EMU_PTE_W)
#define PTE_COUNT_SHIFT 52
#define PTE_COUNT_MASK	(0x3ffull << PTE_COUNT_SHIFT)
#define LEAF_FLAGS	(EMU_PTE_R | EMU_PTE_W | EMU_PTE_A | EMU_PTE_D)
#define IOVA_LIMIT	(1ull << EMU_IOVA_BITS)

static inline uint64_t level_size(int level)
{
	return 1ull << (12 + 9 * (level - 1));
}

static inline unsigned int pte_index(uint64_t iova, int level)
{
	return (iova >> (12 + 9 * (level - 1))) & (PTES_PER_TABLE - 1);
}

static inline bool pte_is_leaf(uint64_t pte, int level)
{
	return level == 1 || (pte & EMU_PTE_PS);
}

static inline uint64_t *pte_table(uint64_t pte)
{
	return (uint64_t *)(uintptr_t)(pte & EMU_PTE_ADDR_MASK);
}

static inline unsigned int pte_count(uint64_t pte)
{
	return (pte & PTE_COUNT_MASK) >> PTE_COUNT_SHIFT;
}

/* Non-leaf entries carry R and W: a VT-d walk ANDs permissions down the levels, so this leaves
 * them to the leaf alone, and "present" is the same test at every level. */
static inline uint64_t table_pte(uint64_t *table, unsigned int count)
{
	return (uint64_t)(uintptr_t)table | PTE_PRESENT | ((uint64_t)count << PTE_COUNT_SHIFT);
}

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* The exclusive end of [iova, iova+length) cut at 2^48, so that walks need not worry about
 * indexes wrapping or about callers passing "everything" as UINT64_MAX. */
static uint64_t range_end(uint64_t iova, uint64_t length)
{
	if (length > IOVA_LIMIT || iova > IOVA_LIMIT - length)
		return IOVA_LIMIT;
	return iova + length;
}

static uint64_t *table_alloc(struct emu_pgtable *pt)
{
	uint64_t *table = pt->spares;

	if (table) {
		if (kh_fail_point())
			return NULL;
		pt->spares = (uint64_t *)(uintptr_t)table[0];
		pt->n_spares--;
		memset(table, 0, EMU_SZ_4K);
	} else if (!(table = kh_page_zalloc())) {
		return NULL;
	}
	pt->table_pages++;
	return table;
}

static void table_free(struct emu_pgtable *pt, uint64_t *table)
{
	pt->table_pages--;
	if (pt->n_spares < EMU_PGTABLE_SPARES) {
		table[0] = (uint64_t)(uintptr_t)pt->spares;
		pt->spares = table;
		pt->n_spares++;
		return;
	}
	free(table);
}

/* Frees a table and everything below it, returning the bytes its leaves mapped. count bounds the
 * present entries, so the scan stops at the last one; a 4 KiB table is not scanned at all. */
static uint64_t free_subtree(struct emu_pgtable *pt, uint64_t *table, int level, unsigned int count)
{
	uint64_t size = level_size(level);
	uint64_t bytes = 0;
	unsigned int i;

	if (level == 1) {
		table_free(pt, table);
		return count * size;
	}
	for (i = 0; count && i < PTES_PER_TABLE; i++) {
		uint64_t pte = table[i];

		if (!(pte & PTE_PRESENT))
			continue;
		count--;
		if (pte & EMU_PTE_PS)
			bytes += size;
		else
			bytes += free_subtree(pt, pte_table(pte), level - 1, pte_count(pte));
	}
	table_free(pt, table);
	return bytes;
}

int emu_pgtable_init(struct emu_pgtable *pt)
{
	pt->table_pages = 0;
	pt->spares = NULL;
	pt->n_spares = 0;
	pt->root = table_alloc(pt);
	return pt->root ? 0 : -ENOMEM;
}

void emu_pgtable_destroy(struct emu_pgtable *pt)
{
	/* The root has no parent entry to count its children, hence the full bound. */
	(void)free_subtree(pt, pt->root, EMU_PGTABLE_LEVELS, PTES_PER_TABLE);
	pt->root = NULL;
	while (pt->spares) {
		uint64_t *next = (uint64_t *)(uintptr_t)pt->spares[0];

		free(pt->spares);
		pt->spares = next;
	}
	pt->n_spares = 0;
}

struct map_state {
	uint64_t iova; /* next IOVA to map; after a failure, where mapping stopped */
	uint64_t addr;
	uint64_t end;
	uint64_t prot;
	uint64_t sizes; /* leaf sizes allowed, 4 KiB included, nothing above 1 GiB */
};

static inline bool leaf_fits(const struct map_state *m, uint64_t size)
{
	return (m->sizes & size) && !((m->iova | m->addr) & (size - 1)) && m->end - m->iova >= size;
}

/* The hot loop of a large 4 KiB mapping, kept free of the per-level choices. */
static int map_ptes(uint64_t *table, struct map_state *m, uint64_t *ppte)
{
	unsigned int i = pte_index(m->iova, 1);
	uint64_t n = min_u64(PTES_PER_TABLE - i, (m->end - m->iova) / EMU_SZ_4K);
	uint64_t pte = m->addr | m->prot;
	uint64_t done;

	for (done = 0; done < n; done++, pte += EMU_SZ_4K) {
		if (table[i + done] & PTE_PRESENT)
			break;
		table[i + done] = pte;
	}
	m->iova += done * EMU_SZ_4K;
	m->addr += done * EMU_SZ_4K;
	*ppte += done << PTE_COUNT_SHIFT;
	return done == n ? 0 : -EEXIST;
}

/* Maps from m->iova on within this table's span. On failure what was mapped stays (the caller
 * clears [start, m->iova)), but a table this call created and left empty is freed here, since
 * that clearing would never visit it. */
static int map_table(struct emu_pgtable *pt, uint64_t *table, int level, struct map_state *m,
		     uint64_t *ppte)
{
	uint64_t size = level_size(level);
	unsigned int added = 0;
	unsigned int i;
	int ret = 0;

	if (level == 1)
		return map_ptes(table, m, ppte);

	for (i = pte_index(m->iova, level); i < PTES_PER_TABLE && m->iova < m->end; i++) {
		uint64_t *pte = &table[i];

		if (leaf_fits(m, size)) {
			if (*pte & PTE_PRESENT) {
				ret = -EEXIST;
				break;
			}
			*pte = m->addr | m->prot | EMU_PTE_PS;
			added++;
			m->iova += size;
			m->addr += size;
			continue;
		}
		if (!(*pte & PTE_PRESENT)) {
			uint64_t *child = table_alloc(pt);

			if (!child) {
				ret = -ENOMEM;
				break;
			}
			*pte = table_pte(child, 0);
			added++;
		} else if (*pte & EMU_PTE_PS) {
			ret = -EEXIST;
			break;
		}
		ret = map_table(pt, pte_table(*pte), level - 1, m, pte);
		if (ret) {
			/* Only a table made by this call can be empty: the others had entries. */
			if (!pte_count(*pte)) {
				table_free(pt, pte_table(*pte));
				*pte = 0;
				added--;
			}
			break;
		}
	}
	if (ppte)
		*ppte += (uint64_t)added << PTE_COUNT_SHIFT;
	return ret;
}

/* A walk over the present entries of one table that [iova, end) touches: at each, iova is where
 * the range enters the entry and next where the entry ends. */
struct pte_walk {
	uint64_t *table;
	uint64_t size; /* what one entry covers */
	uint64_t iova, next, end;
	unsigned int i;
	unsigned int left; /* present entries still to visit: a table's count bounds the walk */
};

static struct pte_walk pte_walk_start(uint64_t *table, int level, uint64_t iova, uint64_t end,
				      unsigned int count)
{
	return (struct pte_walk){.table = table,
				 .size = level_size(level),
				 .iova = iova,
				 .next = iova,
				 .end = end,
				 .i = pte_index(iova, level),
				 .left = count};
}

/* The next present entry, or NULL when the range, the table or its entries are used up. */
static uint64_t *pte_walk_next(struct pte_walk *w)
{
	while (w->i < PTES_PER_TABLE && w->next < w->end && w->left) {
		uint64_t *pte = &w->table[w->i++];

		w->iova = w->next;
		w->next = (w->iova | (w->size - 1)) + 1;
		if (*pte & PTE_PRESENT) {
			w->left--;
			return pte;
		}
	}
	return NULL;
}

/* Removes every leaf in [iova, end), which must not cut a leaf, and frees the tables that
 * empties. Returns the bytes removed. */
static uint64_t clear_range(struct emu_pgtable *pt, uint64_t *table, int level, uint64_t iova,
			    uint64_t end, uint64_t *ppte)
{
	struct pte_walk w =
		pte_walk_start(table, level, iova, end, ppte ? pte_count(*ppte) : PTES_PER_TABLE);
	unsigned int removed = 0;
	uint64_t bytes = 0;
	uint64_t *pte;

	while ((pte = pte_walk_next(&w))) {
		if (pte_is_leaf(*pte, level)) {
			bytes += w.size;
		} else if (!(w.iova & (w.size - 1)) && w.next <= end) {
			bytes += free_subtree(pt, pte_table(*pte), level - 1, pte_count(*pte));
		} else {
			bytes += clear_range(pt, pte_table(*pte), level - 1, w.iova,
					     min_u64(w.next, end), pte);
			if (pte_count(*pte))
				continue;
			table_free(pt, pte_table(*pte));
		}
		*pte = 0;
		removed++;
	}
	if (ppte)
		*ppte -= (uint64_t)removed << PTE_COUNT_SHIFT;
	return bytes;
}

int emu_pgtable_map(struct emu_pgtable *pt, uint64_t iova, uint64_t addr, uint64_t length,
		    uint64_t prot, uint64_t page_sizes)
{
	struct map_state m = {
		.iova = iova,
		.addr = addr,
		.end = iova + length,
		.prot = prot & PTE_PRESENT,
		.sizes = (page_sizes & (EMU_SZ_2M | EMU_SZ_1G)) | EMU_SZ_4K,
	};
	int ret;

	/* A leaf without R or W would read as absent yet be counted in its table. */
	if (!m.prot)
		return -EINVAL;
	ret = map_table(pt, pt->root, EMU_PGTABLE_LEVELS, &m, NULL);
	if (ret)
		(void)clear_range(pt, pt->root, EMU_PGTABLE_LEVELS, iova, m.iova, NULL);
	return ret;
}

/* At most two splits per boundary (1 GiB -> 2 MiB -> 4 KiB), two boundaries. */
struct split_log {
	unsigned int n;
	struct {
		uint64_t *pte;
		uint64_t leaf;
	} undo[2 * (EMU_PGTABLE_LEVELS - 2)];
};

static uint64_t *split_leaf(struct emu_pgtable *pt, uint64_t leaf, int level)
{
	uint64_t child_size = level_size(level - 1);
	uint64_t pte = (leaf & (EMU_PTE_ADDR_MASK | LEAF_FLAGS)) | (level > 2 ? EMU_PTE_PS : 0);
	uint64_t *table = table_alloc(pt);
	unsigned int i;

	if (!table)
		return NULL;
	for (i = 0; i < PTES_PER_TABLE; i++, pte += child_size)
		table[i] = pte;
	return table;
}

/* Splits the leaves containing x until one starts at x, so that x no longer cuts a leaf. */
static int split_at(struct emu_pgtable *pt, uint64_t x, struct split_log *log)
{
	uint64_t *table = pt->root;
	int level;

	for (level = EMU_PGTABLE_LEVELS; level > 1; level--) {
		uint64_t *pte = &table[pte_index(x, level)];

		if (!(*pte & PTE_PRESENT))
			return 0;
		if (*pte & EMU_PTE_PS) {
			uint64_t *child;

			if (!(x & (level_size(level) - 1)))
				return 0;
			child = split_leaf(pt, *pte, level);
			if (!child)
				return -ENOMEM;
			log->undo[log->n].pte = pte;
			log->undo[log->n].leaf = *pte;
			log->n++;
			*pte = table_pte(child, PTES_PER_TABLE);
		}
		table = pte_table(*pte);
	}
	return 0;
}

static void split_undo(struct emu_pgtable *pt, struct split_log *log)
{
	while (log->n--) {
		table_free(pt, pte_table(*log->undo[log->n].pte));
		*log->undo[log->n].pte = log->undo[log->n].leaf;
	}
}

int emu_pgtable_unmap(struct emu_pgtable *pt, uint64_t iova, uint64_t length, uint64_t *unmapped)
{
	uint64_t end = range_end(iova, length);
	struct split_log log = {.n = 0};
	uint64_t bytes;
	int ret;

	if (unmapped)
		*unmapped = 0;
	/* Also keeps an empty range from splitting the leaf around it. */
	if (iova >= end)
		return 0;
	/* Both boundaries are split before anything is removed, and undone together, so a failed
	 * allocation leaves even table_pages as it was. */
	ret = split_at(pt, iova, &log);
	if (!ret && end < IOVA_LIMIT)
		ret = split_at(pt, end, &log);
	if (ret) {
		split_undo(pt, &log);
		return ret;
	}
	bytes = clear_range(pt, pt->root, EMU_PGTABLE_LEVELS, iova, end, NULL);
	if (unmapped)
		*unmapped = bytes;
	return 0;
}

int emu_pgtable_lookup(const struct emu_pgtable *pt, uint64_t iova, struct emu_translation *out)
{
	uint64_t *table = pt->root;
	int level;

	if (iova >= IOVA_LIMIT)
		return -ENOENT;
	for (level = EMU_PGTABLE_LEVELS;; level--) {
		uint64_t *pte = &table[pte_index(iova, level)];

		if (!(*pte & PTE_PRESENT))
			return -ENOENT;
		if (pte_is_leaf(*pte, level)) {
			uint64_t size = level_size(level);

			out->addr = (*pte & EMU_PTE_ADDR_MASK) + (iova & (size - 1));
			out->prot = *pte & PTE_PRESENT;
			out->leaf_size = size;
			out->pte = pte;
			return 0;
		}
		table = pte_table(*pte);
	}
}

struct dirty_state {
	uint64_t base; /* the IOVA of bit 0 */
	uint64_t end;
	unsigned int shift;
	uint64_t *bitmap;
	bool no_clear;
};

/* Word at a time: one dirty 1 GiB leaf read at 4 KiB granularity is 262144 bits. */
static void dirty_mark(const struct dirty_state *d, uint64_t from, uint64_t to)
{
	uint64_t first = (from - d->base) >> d->shift;
	uint64_t last = (to - 1 - d->base) >> d->shift;
	uint64_t head = ~0ull << (first % 64);
	uint64_t tail = ~0ull >> (63 - last % 64);
	uint64_t w = first / 64;

	if (w == last / 64) {
		d->bitmap[w] |= head & tail;
		return;
	}
	d->bitmap[w++] |= head;
	for (; w < last / 64; w++)
		d->bitmap[w] = ~0ull;
	d->bitmap[w] |= tail;
}

static void dirty_range(uint64_t *table, int level, uint64_t iova, unsigned int count,
			const struct dirty_state *d)
{
	struct pte_walk w = pte_walk_start(table, level, iova, d->end, count);
	uint64_t *pte;

	while ((pte = pte_walk_next(&w))) {
		if (!pte_is_leaf(*pte, level)) {
			dirty_range(pte_table(*pte), level - 1, w.iova, pte_count(*pte), d);
		} else if (*pte & EMU_PTE_D) {
			dirty_mark(d, w.iova, min_u64(w.next, d->end));
			if (!d->no_clear)
				*pte &= ~EMU_PTE_D;
		}
	}
}

void emu_pgtable_read_dirty(struct emu_pgtable *pt, uint64_t iova, uint64_t length,
			    uint64_t page_size, uint64_t *bitmap, bool no_clear)
{
	struct dirty_state d = {
		.base = iova,
		.end = range_end(iova, length),
		.shift = __builtin_ctzll(page_size),
		.bitmap = bitmap,
		.no_clear = no_clear,
	};

	dirty_range(pt->root, EMU_PGTABLE_LEVELS, iova, PTES_PER_TABLE, &d);
}
