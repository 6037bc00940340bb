/* SPDX-License-Identifier: MIT */
/*
 * The emulated IOMMU's page tables: x86-64 style, 4 levels of 512 64-bit entries, 48-bit IOVA,
 * leaves of 4 KiB (level 1), 2 MiB (level 2) and 1 GiB (level 3).
 *
 * Real tables in memory, walked the way hardware walks them, so that the emulated DMA engine,
 * dirty tracking and the benchmarks exercise real structures. "Physical" addresses are the
 * process's virtual addresses: an entry holds the address of the next table or of the mapped
 * memory.
 *
 * Entry format, after VT-d second-level entries:
 *   bit 0 R, bit 1 W           - permissions (a present entry has R or W)
 *   bit 7 PS                   - leaf at level 2 or 3
 *   bit 8 A, bit 9 D           - accessed / dirty, set by emulated DMA
 *   bits 12..51                - address
 *   bits 52..61 (non-leaf)     - number of present entries in the child table, so an empty
 *                                table is freed without scanning it
 *
 * Ownership: the pgtable owns every table page below root, and root itself, and its spare
 * pages. Pages come from kh_page_zalloc, or from the spares, each table allocation a
 * failure-injection point either way.
 */
#ifndef KH_EMU_PGTABLE_H
#define KH_EMU_PGTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EMU_PTE_R	  (1ull << 0)
#define EMU_PTE_W	  (1ull << 1)
#define EMU_PTE_PS	  (1ull << 7)
#define EMU_PTE_A	  (1ull << 8)
#define EMU_PTE_D	  (1ull << 9)
#define EMU_PTE_ADDR_MASK 0x000ffffffffff000ull

#define EMU_PGTABLE_LEVELS 4
#define EMU_IOVA_BITS	   48
#define EMU_SZ_4K	   (1ull << 12)
#define EMU_SZ_2M	   (1ull << 21)
#define EMU_SZ_1G	   (1ull << 30)

/* Table pages freed when they emptied are kept, up to this many, for the next tables: an unmap
 * followed by a map at the same place (a buffer mapped per I/O; a pool mapped again after each
 * unmap of all) would otherwise free and allocate the same few tables each time, and an aligned
 * page from malloc first consolidates every small chunk freed since (a mapping's record each):
 * in the daemon, 70 instructions a page of a 2048-page batch. Enough for the tables above and
 * beside one 8 MiB range; 32 KiB a domain at most. */
#define EMU_PGTABLE_SPARES 8

struct emu_pgtable {
	uint64_t *root;
	size_t table_pages; /* pages in the tables, root included: the page tables' memory / 4096 */
	uint64_t *spares;   /* freed table pages, linked through their first entry */
	unsigned n_spares;
};

int emu_pgtable_init(struct emu_pgtable *pt);
void emu_pgtable_destroy(struct emu_pgtable *pt);

/* Maps [iova, iova+length) to [addr, addr+length) with EMU_PTE_R/W in prot, using the largest
 * leaves in page_sizes (a bitmap of EMU_SZ_* values, 4 KiB always included) that the alignment
 * of iova and addr and the remaining length allow. iova, addr and length are 4 KiB aligned,
 * length > 0, iova + length <= 2^48 (the caller checks). All or nothing: -EEXIST if any page in
 * the range is mapped, -ENOMEM if a table cannot be allocated; either way nothing changes. */
int emu_pgtable_map(struct emu_pgtable *pt, uint64_t iova, uint64_t addr, uint64_t length,
		    uint64_t prot, uint64_t page_sizes);

/* Unmaps every leaf inside [iova, iova+length). A large leaf only partly inside is first split
 * into smaller leaves (keeping its A/D bits), so exactly the range goes away. Tables left empty
 * are freed. *unmapped (may be NULL) gives the bytes that were mapped in the range: 0 after a
 * failure, which removes nothing. -ENOMEM if a split could not allocate; the translation is then
 * unchanged (a split alone never changes it).
 */
int emu_pgtable_unmap(struct emu_pgtable *pt, uint64_t iova, uint64_t length, uint64_t *unmapped);

/* Translation of one IOVA. -ENOENT if unmapped. */
struct emu_translation {
	uint64_t addr;	    /* address iova translates to */
	uint64_t prot;	    /* EMU_PTE_R / EMU_PTE_W */
	uint64_t leaf_size; /* EMU_SZ_* of the leaf that maps it */
	uint64_t *pte;	    /* the leaf entry, for the DMA engine's A/D updates */
};
int emu_pgtable_lookup(const struct emu_pgtable *pt, uint64_t iova, struct emu_translation *out);

/* Sets bit i of bitmap (not cleared first) for each page_size page of [iova, iova+length) that
 * overlaps a leaf with D set; clears D on those leaves unless no_clear. page_size is a power of
 * two >= 4 KiB; iova and length are multiples of it. */
void emu_pgtable_read_dirty(struct emu_pgtable *pt, uint64_t iova, uint64_t length,
			    uint64_t page_size, uint64_t *bitmap, bool no_clear);

#endif
