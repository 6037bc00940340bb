/* SPDX-License-Identifier: MIT */
#include "ioas.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <bsd/sys/tree.h>

#include <kh/kh_ops.h>
#include <kh/kh_sanitizer.h>

#include "alloc.h"

/* A free slot is poisoned where AddressSanitizer runs, so that a record used after its mapping
 * left is reported as it would be were each record an allocation of its own. */
#if KH_ASAN
#include <sanitizer/asan_interface.h>
#define slot_poison(p, size)   ASAN_POISON_MEMORY_REGION(p, size)
#define slot_unpoison(p, size) ASAN_UNPOISON_MEMORY_REGION(p, size)
#else
#define slot_poison(p, size)   ((void)(p), (void)(size))
#define slot_unpoison(p, size) ((void)(p), (void)(size))
#endif

struct kh_area {
	RB_ENTRY(kh_area) node;
	uint64_t iova, last;
	uint64_t addr;
	/* prot and flags hold two bits and one (checked on entry): a byte each leaves room for
	 * slot and fd in the same 8 bytes, so that an area, one per mapping, takes 72 bytes. */
	uint8_t prot;
	uint8_t flags; /* KH_MAP_FILE */
	uint8_t slot;  /* where in its block (struct area_block) */
	int fd;	       /* KH_MAP_FILE made while taking over: the caller's descriptor, else -1 */
	void *owner;   /* the caller's, never dereferenced here */
};

_Static_assert(sizeof(struct kh_area) <= 72 || sizeof(void *) < 8,
	       "a kh_area outgrew 72 bytes: memory per mapping grows with it");

/* The records of one IOAS come from blocks of AREA_BLOCK_SLOTS: a mapping made and removed then
 * costs no malloc and free of its own (in a process with threads, as the daemon is, glibc locks
 * its arena for each), and a record its 72 bytes, not malloc's 80-byte chunk. A record finds
 * its block by its slot. A block is just under 4 KiB: the emulated IOMMU's page-table pages,
 * each aligned to 4 KiB, leave a gap of 4080 bytes after each, which such a block fills and a
 * larger one would leave empty (part 4 of iommud-bench: 88 bytes a mapping rather than 81). */
#define AREA_BLOCK_SLOTS 56
#define ALL_SLOTS_FREE	 (UINT64_MAX >> (64 - AREA_BLOCK_SLOTS))

struct area_block {
	LIST_ENTRY(area_block) link; /* in open_blocks while a slot is free and one is in use */
	uint64_t free_slots;	     /* bit i set: slots[i] is free */
	struct kh_area slots[AREA_BLOCK_SLOTS];
};

_Static_assert(AREA_BLOCK_SLOTS <= 64 && AREA_BLOCK_SLOTS - 1 <= UINT8_MAX,
	       "a block's free slots are one 64-bit mask, its slot numbers a byte");
_Static_assert(sizeof(struct area_block) <= 4072 || sizeof(void *) < 8,
	       "an area block outgrew the gap a 4 KiB-aligned page-table page leaves in the heap");

struct kh_resv {
	struct kh_iova_range range;
	const void *owner;
};

RB_HEAD(kh_area_tree, kh_area);

struct kh_ioas {
	struct kh_area_tree areas;
	size_t n_areas;
	/* The blocks with free slots and records in use, newest first; and one empty block kept
	 * for the next record, so that a page mapped and unmapped over and over does not
	 * allocate and free a block each time (any other empty block is freed at once). */
	LIST_HEAD(, area_block) open_blocks;
	struct area_block *spare_block;
	uint64_t aperture_start, aperture_last;
	uint64_t page_size;
	/* Where the last allocated IOVA ended: the next search starts there, so a stream of
	 * allocations does not rescan everything below. */
	uint64_t alloc_hint;
	struct kh_resv *resv; /* sorted by start */
	size_t n_resv;
	struct kh_iova_range *allowed; /* sorted, disjoint; none means the whole aperture */
	size_t n_allowed;
};

static int area_cmp(const struct kh_area *a, const struct kh_area *b)
{
	return a->iova < b->iova ? -1 : a->iova > b->iova;
}

/* libbsd's tree.h marks the static functions it generates with __unused, which glibc leaves
 * undefined (Linux headers use the name for struct members); define it only for the expansion. */
#define __unused __attribute__((unused))
RB_GENERATE_STATIC(kh_area_tree, kh_area, node, area_cmp)
#undef __unused

static bool ranges_overlap(uint64_t a_start, uint64_t a_last, uint64_t b_start, uint64_t b_last)
{
	return a_start <= b_last && b_start <= a_last;
}

int kh_ioas_create(uint64_t aperture_start, uint64_t aperture_last, uint64_t page_size,
		   struct kh_ioas **out)
{
	struct kh_ioas *ioas = kh_zalloc(sizeof(*ioas));

	if (!ioas)
		return kh_fail(-ENOMEM, "cannot allocate an IO address space");
	RB_INIT(&ioas->areas);
	LIST_INIT(&ioas->open_blocks);
	ioas->aperture_start = aperture_start;
	ioas->aperture_last = aperture_last;
	ioas->page_size = page_size;
	ioas->alloc_hint = aperture_start;
	*out = ioas;
	return 0;
}

/* A free slot, from the newest open block, else the spare, else a new block; NULL when out of
 * memory. Its contents are the caller's to set. */
static struct kh_area *area_alloc(struct kh_ioas *ioas)
{
	struct area_block *block = LIST_FIRST(&ioas->open_blocks);
	unsigned slot;

	if (!block) {
		block = ioas->spare_block;
		ioas->spare_block = NULL;
		if (!block) {
			block = malloc(sizeof(*block));
			if (!block)
				return NULL;
			block->free_slots = ALL_SLOTS_FREE;
			slot_poison(block->slots, sizeof(block->slots));
		}
		LIST_INSERT_HEAD(&ioas->open_blocks, block, link);
	}
	slot = (unsigned)__builtin_ctzll(block->free_slots);
	block->free_slots &= block->free_slots - 1;
	if (!block->free_slots)
		LIST_REMOVE(block, link);
	slot_unpoison(&block->slots[slot], sizeof(block->slots[slot]));
	block->slots[slot].slot = (uint8_t)slot;
	return &block->slots[slot];
}

static void area_release(struct kh_ioas *ioas, struct kh_area *area)
{
	struct kh_area *first = area - area->slot;
	struct area_block *block =
		(struct area_block *)((char *)first - offsetof(struct area_block, slots));

	if (!block->free_slots)
		LIST_INSERT_HEAD(&ioas->open_blocks, block, link);
	block->free_slots |= 1ull << area->slot;
	slot_poison(area, sizeof(*area));
	if (block->free_slots != ALL_SLOTS_FREE)
		return;
	LIST_REMOVE(block, link);
	if (ioas->spare_block)
		free(block);
	else
		ioas->spare_block = block;
}

static struct kh_mapping area_mapping(const struct kh_area *area)
{
	return (struct kh_mapping){area->iova,	area->last - area->iova + 1,
				   area->addr,	area->prot,
				   area->flags, area->owner};
}

/* Mappings leaving one after another, whose owner is released once for all of them. */
struct release_run {
	kh_owner_release_fn *release;
	void *arg;
	void *owner; /* NULL: none pending */
	uint64_t count, bytes;
};

static void release_run_flush(struct release_run *run)
{
	if (run->owner)
		run->release(run->owner, run->count, run->bytes, run->arg);
	run->owner = NULL;
}

/* Takes the area out of the tree and frees it, its owner (if it has one and release is set)
 * added to the run, which is released first if it had another owner. */
static void area_forget(struct kh_ioas *ioas, struct kh_area *area, struct release_run *run)
{
	void *owner = area->owner;
	uint64_t bytes = area->last - area->iova + 1;

	RB_REMOVE(kh_area_tree, &ioas->areas, area);
	ioas->n_areas--;
	area_release(ioas, area);
	if (!owner || !run->release)
		return;
	if (owner != run->owner) {
		release_run_flush(run);
		*run = (struct release_run){run->release, run->arg, owner, 0, 0};
	}
	run->count++;
	run->bytes += bytes;
}

void kh_ioas_destroy(struct kh_ioas *ioas, kh_owner_release_fn *release, void *arg)
{
	struct kh_area *area, *next;

	if (!ioas)
		return;
	struct release_run run = {.release = release, .arg = arg};

	RB_FOREACH_SAFE (area, kh_area_tree, &ioas->areas, next)
		area_forget(ioas, area, &run);
	release_run_flush(&run);
	/* The last record released freed every block but this one. */
	free(ioas->spare_block);
	free(ioas->resv);
	free(ioas->allowed);
	free(ioas);
}

/* The first mapping that overlaps [start, last], in IOVA order, or NULL. */
static struct kh_area *first_overlap(const struct kh_ioas *ioas, uint64_t start, uint64_t last)
{
	struct kh_area key = {.iova = start};
	struct kh_area *next, *prev;

	next = RB_NFIND(kh_area_tree, (struct kh_area_tree *)&ioas->areas, &key);
	prev = next ? RB_PREV(kh_area_tree, &ioas->areas, next)
		    : RB_MAX(kh_area_tree, (struct kh_area_tree *)&ioas->areas);
	if (prev && prev->last >= start)
		return prev;
	if (next && next->iova <= last)
		return next;
	return NULL;
}

static const struct kh_resv *reserved_overlap(const struct kh_ioas *ioas, uint64_t start,
					      uint64_t last)
{
	for (size_t i = 0; i < ioas->n_resv; i++)
		if (ranges_overlap(start, last, ioas->resv[i].range.start,
				   ioas->resv[i].range.last))
			return &ioas->resv[i];
	return NULL;
}

/* The largest leaf of the IOMMU page tables at 4 KiB pages (x86, arm64). The kernel caps its own
 * IOVA alignment at a huge page (2 MiB); kernel-helper places IOVAs for the backends that use
 * 1 GiB leaves too, and the daemon aligns its view of large maps to 1 GiB for them. */
#define LARGEST_LEAF (1ull << 30)

static uint64_t lowest_bit(uint64_t v)
{
	return v & -v;
}

static uint64_t pow2_roundup(uint64_t v)
{
	return v <= 1 ? 1 : 1ull << (64 - __builtin_clzll(v - 1));
}

/* Lowest IOVA >= from inside [start, last] where length bytes aligned to align are free of
 * mappings and reserved ranges, or false. */
static bool find_gap(const struct kh_ioas *ioas, uint64_t start, uint64_t last, uint64_t from,
		     uint64_t length, uint64_t align, uint64_t *iova)
{
	uint64_t pos = from > start ? from : start;

	for (;;) {
		uint64_t end;
		const struct kh_resv *resv;
		const struct kh_area *area;

		if (pos > UINT64_MAX - (align - 1))
			return false;
		pos = (pos + align - 1) & ~(align - 1);
		if (pos > last || __builtin_add_overflow(pos, length - 1, &end) || end > last)
			return false;
		resv = reserved_overlap(ioas, pos, end);
		if (resv) {
			if (resv->range.last == UINT64_MAX)
				return false;
			pos = resv->range.last + 1;
			continue;
		}
		area = first_overlap(ioas, pos, end);
		if (area) {
			if (area->last == UINT64_MAX)
				return false;
			pos = area->last + 1;
			continue;
		}
		*iova = pos;
		return true;
	}
}

static bool alloc_iova(const struct kh_ioas *ioas, uint64_t length, uint64_t align, uint64_t *iova)
{
	struct kh_iova_range whole = {ioas->aperture_start, ioas->aperture_last};
	const struct kh_iova_range *spaces = ioas->n_allowed ? ioas->allowed : &whole;
	size_t n = ioas->n_allowed ? ioas->n_allowed : 1;

	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			uint64_t start = spaces[i].start > ioas->aperture_start
						 ? spaces[i].start
						 : ioas->aperture_start;
			uint64_t last = spaces[i].last < ioas->aperture_last ? spaces[i].last
									     : ioas->aperture_last;
			uint64_t from = pass == 0 ? ioas->alloc_hint : start;

			if (start > last || (pass == 0 && from > last))
				continue;
			if (find_gap(ioas, start, last, from, length, align, iova))
				return true;
		}
	}
	return false;
}

/* What a request must be wherever it goes. */
static int check_request(const struct kh_ioas *ioas, const struct kh_map_req *req)
{
	uint64_t mask = ioas->page_size - 1;
	uint64_t last;

	if (req->length == 0)
		return kh_fail(-EINVAL, "cannot map zero bytes");
	if ((req->length & mask) || (req->addr & mask))
		return kh_fail(-EINVAL,
			       "address 0x%" PRIx64 " and length 0x%" PRIx64
			       " must be multiples of the page size 0x%" PRIx64,
			       req->addr, req->length, ioas->page_size);
	if (!(req->prot & (KH_PROT_READ | KH_PROT_WRITE)) ||
	    (req->prot & ~(KH_PROT_READ | KH_PROT_WRITE)))
		return kh_fail(-EINVAL, "permissions 0x%x: give read, write or both", req->prot);
	if (req->flags & ~(KH_MAP_FIXED_IOVA | KH_MAP_FILE | KH_MAP_EXTEND))
		return kh_fail(-EINVAL, "unknown map flags 0x%x",
			       req->flags & ~(KH_MAP_FIXED_IOVA | KH_MAP_FILE | KH_MAP_EXTEND));
	if (__builtin_add_overflow(req->addr, req->length - 1, &last))
		return kh_fail(-EOVERFLOW, "address 0x%" PRIx64 " + length 0x%" PRIx64 " overflows",
			       req->addr, req->length);
	return 0;
}

/* Picks the IOVA of a request without KH_MAP_FIXED_IOVA. */
static int place_anywhere(const struct kh_ioas *ioas, struct kh_map_req *req)
{
	uint64_t align = req->alignment;

	if (align == 0) {
		/* As the kernel does: keep the alignment the memory has (its address, or its
		 * offset in the file), up to the mapping's size, so large leaves can be used; but
		 * no more than the largest leaf, past which alignment buys no larger page, only
		 * a slot harder to find (offset 0 is aligned to anything). */
		align = req->length < LARGEST_LEAF ? pow2_roundup(req->length) : LARGEST_LEAF;
		if (req->addr && lowest_bit(req->addr) < align)
			align = lowest_bit(req->addr);
	}
	if (align & (align - 1))
		return kh_fail(-EINVAL, "alignment 0x%" PRIx64 " is not a power of two", align);
	if (align < ioas->page_size)
		align = ioas->page_size;
	if (!alloc_iova(ioas, req->length, align, &req->iova))
		return kh_fail(-ENOSPC,
			       "no free IOVA range of 0x%" PRIx64 " bytes aligned to 0x%" PRIx64
			       "; unmap something or narrow the request",
			       req->length, align);
	return 0;
}

/* Refuses a fixed IOVA range because something already holds part of it. */
static int range_taken(int err, uint64_t iova, uint64_t last, const char *holder,
		       uint64_t holder_start, uint64_t holder_last, const char *advice)
{
	return kh_fail(err,
		       "IOVA range 0x%" PRIx64 "-0x%" PRIx64 " overlaps %s 0x%" PRIx64 "-0x%" PRIx64
		       "; %s",
		       iova, last, holder, holder_start, holder_last, advice);
}

/* Checks that the IOVA a request fixed is free to take. */
static int check_fixed(const struct kh_ioas *ioas, const struct kh_map_req *req)
{
	const struct kh_resv *resv;
	const struct kh_area *area;
	uint64_t last;

	if (req->iova & (ioas->page_size - 1))
		return kh_fail(-EINVAL,
			       "IOVA 0x%" PRIx64 " is not a multiple of the page size 0x%" PRIx64,
			       req->iova, ioas->page_size);
	if (__builtin_add_overflow(req->iova, req->length - 1, &last))
		return kh_fail(-EOVERFLOW, "IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows",
			       req->iova, req->length);
	if (req->iova < ioas->aperture_start || last > ioas->aperture_last)
		return kh_fail(-EINVAL,
			       "IOVA range 0x%" PRIx64 "-0x%" PRIx64
			       " leaves the aperture 0x%" PRIx64 "-0x%" PRIx64,
			       req->iova, last, ioas->aperture_start, ioas->aperture_last);
	resv = reserved_overlap(ioas, req->iova, last);
	if (resv)
		return range_taken(-EINVAL, req->iova, last, "the reserved range",
				   resv->range.start, resv->range.last,
				   "list free ranges and map elsewhere");
	area = first_overlap(ioas, req->iova, last);
	if (area)
		return range_taken(-EEXIST, req->iova, last, "the mapping at", area->iova,
				   area->last, "unmap it first");
	return 0;
}

int kh_ioas_place(struct kh_ioas *ioas, struct kh_map_req *req)
{
	int rc = check_request(ioas, req);

	if (rc < 0)
		return rc;
	if (req->flags & KH_MAP_FIXED_IOVA)
		return check_fixed(ioas, req);
	return place_anywhere(ioas, req);
}

struct kh_area *kh_ioas_area_new(struct kh_ioas *ioas, const struct kh_map_req *placed)
{
	/* The record's injection point, though a block serves many records. */
	struct kh_area *area = kh_fail_point() ? NULL : area_alloc(ioas);

	if (!area) {
		(void)kh_fail(-ENOMEM, "cannot allocate a mapping record");
		return NULL;
	}
	area->iova = placed->iova;
	area->last = placed->iova + placed->length - 1;
	area->addr = placed->addr;
	area->prot = (uint8_t)placed->prot;
	area->flags = (uint8_t)(placed->flags & KH_MAP_FILE);
	area->fd = -1;
	area->owner = placed->owner;
	return area;
}

void kh_ioas_area_free(struct kh_ioas *ioas, struct kh_area *area)
{
	area_release(ioas, area);
}

int kh_ioas_source(const struct kh_ioas *ioas, uint64_t iova, uint64_t length, uint64_t *addr,
		   uint32_t *flags)
{
	const struct kh_area *area;
	uint64_t last;

	if (length == 0 || __builtin_add_overflow(iova, length - 1, &last))
		return kh_fail(-EINVAL,
			       "source IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " is not a range",
			       iova, length);
	area = first_overlap(ioas, iova, last);
	if (!area)
		return kh_fail(-ENOENT, "nothing is mapped at source IOVA 0x%" PRIx64, iova);
	if (area->iova > iova || area->last < last)
		return kh_fail(-EINVAL,
			       "source 0x%" PRIx64 "-0x%" PRIx64 " is not inside one mapping "
			       "(0x%" PRIx64 "-0x%" PRIx64 " is one); copy each mapping alone",
			       iova, last, area->iova, area->last);
	*addr = area->addr + (iova - area->iova);
	*flags = area->flags;
	return 0;
}

static void hint_after(struct kh_ioas *ioas, const struct kh_area *area)
{
	ioas->alloc_hint = area->last == UINT64_MAX ? ioas->aperture_start : area->last + 1;
}

void kh_ioas_insert(struct kh_ioas *ioas, struct kh_area *area)
{
	RB_INSERT(kh_area_tree, &ioas->areas, area);
	ioas->n_areas++;
	hint_after(ioas, area);
}

struct kh_area *kh_ioas_extendable(const struct kh_ioas *ioas, const struct kh_map_req *req)
{
	struct kh_area *area = req->iova ? first_overlap(ioas, req->iova - 1, req->iova - 1) : NULL;

	if (!area || area->last != req->iova - 1 || area->owner != req->owner ||
	    area->prot != req->prot || area->flags != (req->flags & KH_MAP_FILE) ||
	    area->addr + (area->last - area->iova + 1) != req->addr)
		return NULL;
	return area;
}

void kh_ioas_extend(struct kh_ioas *ioas, struct kh_area *area, uint64_t length)
{
	area->last += length;
	hint_after(ioas, area);
}

struct kh_area *kh_ioas_tail_of(const struct kh_ioas *ioas, uint64_t iova, uint64_t last)
{
	struct kh_area *area = first_overlap(ioas, iova, iova);

	return area && area->iova < iova && area->last == last ? area : NULL;
}

void kh_ioas_cut_tail(struct kh_area *area, uint64_t iova)
{
	area->last = iova - 1;
}

void kh_ioas_keep_fd(struct kh_area *area, int fd)
{
	area->fd = fd;
}

void kh_ioas_forget_fds(struct kh_ioas *ioas)
{
	struct kh_area *area;

	RB_FOREACH (area, kh_area_tree, &ioas->areas)
		area->fd = -1;
}

int kh_ioas_file_fd(const struct kh_ioas *ioas, uint64_t iova)
{
	const struct kh_area *area = first_overlap(ioas, iova, iova);

	return area && area->iova == iova ? area->fd : -1;
}

uint64_t kh_ioas_area_iova(const struct kh_area *area)
{
	return area->iova;
}

int kh_ioas_find_unmap(struct kh_ioas *ioas, uint64_t iova, uint64_t length, uint64_t *first,
		       uint64_t *last, uint64_t *bytes)
{
	uint64_t end, span_start, span_bytes = 0;
	struct kh_area *area, *stop;

	if (length == 0)
		return kh_fail(-EINVAL, "cannot unmap zero bytes");
	if (iova == 0 && length == UINT64_MAX)
		end = UINT64_MAX;
	else if (__builtin_add_overflow(iova, length - 1, &end))
		return kh_fail(-EOVERFLOW, "IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows",
			       iova, length);

	area = first_overlap(ioas, iova, end);
	if (!area)
		return kh_fail(-ENOENT, "nothing is mapped in 0x%" PRIx64 "-0x%" PRIx64, iova, end);
	if (area->iova < iova)
		return kh_fail(-EINVAL,
			       "the mapping 0x%" PRIx64 "-0x%" PRIx64 " starts before 0x%" PRIx64
			       "; unmap whole mappings only",
			       area->iova, area->last, iova);
	span_start = area->iova;
	for (stop = area; area && area->iova <= end;
	     area = RB_NEXT(kh_area_tree, &ioas->areas, area)) {
		if (area->last > end)
			return kh_fail(-EINVAL,
				       "the mapping 0x%" PRIx64 "-0x%" PRIx64
				       " ends after 0x%" PRIx64 "; unmap whole mappings only",
				       area->iova, area->last, end);
		span_bytes += area->last - area->iova + 1;
		stop = area;
	}
	*first = span_start;
	*last = stop->last;
	*bytes = span_bytes;
	return 0;
}

int kh_ioas_find_run(const struct kh_ioas *ioas, uint64_t iova, uint64_t last,
		     kh_unmap_take_fn *take, void *arg, struct kh_ioas_run *run)
{
	struct kh_area_tree *areas = (struct kh_area_tree *)&ioas->areas;
	struct kh_area key = {.iova = iova};
	struct kh_area *area = RB_NFIND(kh_area_tree, areas, &key);
	struct kh_mapping mapping;

	*run = (struct kh_ioas_run){0};
	for (; area && area->iova <= last; area = RB_NEXT(kh_area_tree, areas, area)) {
		mapping = area_mapping(area);
		if (!take(&mapping, run->count, arg)) {
			run->more = true;
			break;
		}
		if (area->last > last)
			return kh_fail(-EINVAL,
				       "the mapping 0x%" PRIx64 "-0x%" PRIx64
				       " ends after 0x%" PRIx64 "; unmap whole mappings only",
				       area->iova, area->last, last);
		if (!run->count)
			run->first = area->iova;
		run->last = area->last;
		run->bytes += area->last - area->iova + 1;
		run->count++;
	}
	return 0;
}

void kh_ioas_remove(struct kh_ioas *ioas, uint64_t first, uint64_t last,
		    kh_owner_release_fn *release, void *arg)
{
	struct kh_area key = {.iova = first};
	struct kh_area *area = RB_NFIND(kh_area_tree, &ioas->areas, &key);
	struct release_run run = {.release = release, .arg = arg};

	while (area && area->last <= last) {
		struct kh_area *next = RB_NEXT(kh_area_tree, &ioas->areas, area);

		area_forget(ioas, area, &run);
		area = next;
	}
	release_run_flush(&run);
}

int kh_ioas_mappings(const struct kh_ioas *ioas, uint64_t from, struct kh_mapping *out, size_t max)
{
	struct kh_area key = {.iova = from};
	struct kh_area *area = RB_NFIND(kh_area_tree, (struct kh_area_tree *)&ioas->areas, &key);
	size_t n = 0;

	for (; area && n < max; area = RB_NEXT(kh_area_tree, &ioas->areas, area), n++)
		out[n] = area_mapping(area);
	return (int)n;
}

size_t kh_ioas_count(const struct kh_ioas *ioas)
{
	return ioas->n_areas;
}

static bool allowed_overlap(const struct kh_ioas *ioas, uint64_t start, uint64_t last)
{
	for (size_t i = 0; i < ioas->n_allowed; i++)
		if (ranges_overlap(start, last, ioas->allowed[i].start, ioas->allowed[i].last))
			return true;
	return false;
}

int kh_ioas_reserve(struct kh_ioas *ioas, const struct kh_iova_range *ranges, size_t n,
		    const void *owner)
{
	struct kh_resv *grown;

	for (size_t i = 0; i < n; i++) {
		const struct kh_area *area = first_overlap(ioas, ranges[i].start, ranges[i].last);

		if (area)
			return kh_fail(-EADDRINUSE,
				       "the device reserves 0x%" PRIx64 "-0x%" PRIx64
				       ", where 0x%" PRIx64 "-0x%" PRIx64
				       " is mapped; unmap it before attaching",
				       ranges[i].start, ranges[i].last, area->iova, area->last);
		if (allowed_overlap(ioas, ranges[i].start, ranges[i].last))
			return kh_fail(-EADDRINUSE,
				       "the device reserves 0x%" PRIx64 "-0x%" PRIx64
				       ", which the allowed IOVA ranges include; change them first",
				       ranges[i].start, ranges[i].last);
	}
	if (n == 0)
		return 0;
	grown = kh_realloc_array(ioas->resv, ioas->n_resv + n, sizeof(*grown));
	if (!grown)
		return kh_fail(-ENOMEM, "cannot record reserved IOVA ranges");
	ioas->resv = grown;
	for (size_t i = 0; i < n; i++) {
		size_t at = ioas->n_resv++;

		while (at > 0 && grown[at - 1].range.start > ranges[i].start) {
			grown[at] = grown[at - 1];
			at--;
		}
		grown[at] = (struct kh_resv){ranges[i], owner};
	}
	return 0;
}

void kh_ioas_unreserve(struct kh_ioas *ioas, const void *owner)
{
	size_t kept = 0;

	for (size_t i = 0; i < ioas->n_resv; i++)
		if (ioas->resv[i].owner != owner)
			ioas->resv[kept++] = ioas->resv[i];
	ioas->n_resv = kept;
}

int kh_ioas_ranges(const struct kh_ioas *ioas, struct kh_iova_range *out, size_t max)
{
	struct kh_iova_range whole = {ioas->aperture_start, ioas->aperture_last};
	const struct kh_iova_range *spaces = ioas->n_allowed ? ioas->allowed : &whole;
	size_t n_spaces = ioas->n_allowed ? ioas->n_allowed : 1;
	size_t n = 0;

	for (size_t s = 0; s < n_spaces; s++) {
		uint64_t pos = spaces[s].start > whole.start ? spaces[s].start : whole.start;
		uint64_t last = spaces[s].last < whole.last ? spaces[s].last : whole.last;
		bool more = pos <= last;

		/* Reserved ranges are sorted by start, so the gaps come out in order. */
		for (size_t r = 0; r < ioas->n_resv && more; r++) {
			const struct kh_iova_range *resv = &ioas->resv[r].range;

			if (resv->last < pos || resv->start > last)
				continue;
			if (resv->start > pos) {
				if (n < max)
					out[n] = (struct kh_iova_range){pos, resv->start - 1};
				n++;
			}
			if (resv->last >= last)
				more = false;
			else if (resv->last + 1 > pos)
				pos = resv->last + 1;
		}
		if (more) {
			if (n < max)
				out[n] = (struct kh_iova_range){pos, last};
			n++;
		}
	}
	return (int)n;
}

static int range_cmp(const void *a, const void *b)
{
	const struct kh_iova_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

int kh_ioas_allow_check(const struct kh_ioas *ioas, const struct kh_iova_range *ranges, size_t n,
			struct kh_iova_range **sorted)
{
	struct kh_iova_range *copy = NULL;

	for (size_t i = 0; i < n; i++) {
		const struct kh_resv *resv;

		if (ranges[i].start > ranges[i].last)
			return kh_fail(-EINVAL,
				       "allowed range 0x%" PRIx64 "-0x%" PRIx64 " is empty",
				       ranges[i].start, ranges[i].last);
		resv = reserved_overlap(ioas, ranges[i].start, ranges[i].last);
		if (resv)
			return kh_fail(-EADDRINUSE,
				       "allowed range 0x%" PRIx64 "-0x%" PRIx64
				       " includes the reserved range 0x%" PRIx64 "-0x%" PRIx64,
				       ranges[i].start, ranges[i].last, resv->range.start,
				       resv->range.last);
	}
	if (n) {
		copy = kh_realloc_array(NULL, n, sizeof(*copy));
		if (!copy)
			return kh_fail(-ENOMEM, "cannot record allowed IOVA ranges");
		memcpy(copy, ranges, n * sizeof(*copy));
		qsort(copy, n, sizeof(*copy), range_cmp);
		for (size_t i = 1; i < n; i++) {
			if (copy[i].start <= copy[i - 1].last) {
				int err = kh_fail(-EINVAL,
						  "allowed ranges 0x%" PRIx64 "-0x%" PRIx64
						  " and 0x%" PRIx64 "-0x%" PRIx64 " overlap",
						  copy[i - 1].start, copy[i - 1].last,
						  copy[i].start, copy[i].last);
				free(copy);
				return err;
			}
		}
	}
	*sorted = copy;
	return 0;
}

void kh_ioas_allow_set(struct kh_ioas *ioas, struct kh_iova_range *sorted, size_t n)
{
	free(ioas->allowed);
	ioas->allowed = sorted;
	ioas->n_allowed = n;
}

const struct kh_iova_range *kh_ioas_allowed(const struct kh_ioas *ioas, size_t *ret_n)
{
	*ret_n = ioas->n_allowed;
	return ioas->allowed;
}
