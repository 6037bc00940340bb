/* SPDX-License-Identifier: MIT */
/*
 * The IO address space of a paging domain: which IOVA ranges are mapped, reserved or allowed,
 * with iommufd's IOAS rules, so the emulated and the iommufd backends answer alike. It only
 * keeps the books; the core calls the domain's ops to change page tables.
 *
 * Ownership: a kh_ioas is owned by its domain (kh_domain.ioas) and owns its areas and ranges.
 * An area keeps its owner cookie (kh_map_req.owner) and owns nothing of it: forgetting an area
 * hands the cookie to the release callback its caller passes (see "Owners" in kh.h).
 */
#ifndef KH_IOAS_H
#define KH_IOAS_H

#include <kh/kh.h>

struct kh_ioas;
struct kh_area;

int kh_ioas_create(uint64_t aperture_start, uint64_t aperture_last, uint64_t page_size,
		   struct kh_ioas **out);
/* After the domain's page tables are gone: forgets every mapping, releasing its owner. */
void kh_ioas_destroy(struct kh_ioas *ioas, kh_owner_release_fn *release, void *arg);

/* Checks req against the rules and fills req->iova when the helper picks it. Changes nothing. */
int kh_ioas_place(struct kh_ioas *ioas, struct kh_map_req *req);
/* Allocates the record for a mapping before the page tables change, so recording it after they
 * did cannot fail. */
struct kh_area *kh_ioas_area_new(struct kh_ioas *ioas, const struct kh_map_req *placed);
void kh_ioas_insert(struct kh_ioas *ioas, struct kh_area *area);
/* Frees a record kh_ioas_area_new gave that was never inserted. */
void kh_ioas_area_free(struct kh_ioas *ioas, struct kh_area *area);
/* The mapping a KH_MAP_EXTEND request continues, or NULL; and, once the page tables map the
 * request's range, that range added to it. */
struct kh_area *kh_ioas_extendable(const struct kh_ioas *ioas, const struct kh_map_req *req);
void kh_ioas_extend(struct kh_ioas *ioas, struct kh_area *area, uint64_t length);
/* The mapping kh_unmap_tail may shorten by [iova, last], or NULL; and its end moved below iova,
 * once the page tables no longer map the range. */
struct kh_area *kh_ioas_tail_of(const struct kh_ioas *ioas, uint64_t iova, uint64_t last);
void kh_ioas_cut_tail(struct kh_area *area, uint64_t iova);
/* Where the mapping starts. */
uint64_t kh_ioas_area_iova(const struct kh_area *area);
/* The descriptor a file mapping made while taking a context over was given (the last part's,
 * for one made in parts), to be made again from at kh_ctx_adopt_end: the caller keeps it open
 * only until then, so the records forget them there. A copy, or a mapping made otherwise, keeps
 * none: -1, which kh_ioas_file_fd also gives where no file mapping starts at iova. */
void kh_ioas_keep_fd(struct kh_area *area, int fd);
void kh_ioas_forget_fds(struct kh_ioas *ioas);
int kh_ioas_file_fd(const struct kh_ioas *ioas, uint64_t iova);

/* The memory behind [iova, iova+length) when one mapping holds all of it: its address (or file
 * offset) in *addr, its KH_MAP_* flags in *flags. */
int kh_ioas_source(const struct kh_ioas *ioas, uint64_t iova, uint64_t length, uint64_t *addr,
		   uint32_t *flags);

/* The span [*first, *last] of the mappings inside [iova, iova+length), checked to lie wholly
 * inside; *bytes is what they map. Changes nothing. */
int kh_ioas_find_unmap(struct kh_ioas *ioas, uint64_t iova, uint64_t length, uint64_t *first,
		       uint64_t *last, uint64_t *bytes);
/* The run kh_unmap_run removes (see there), found without changing anything: its span
 * [first, last] (count 0: none), the bytes it maps, and whether a mapping that starts in
 * [iova, last] stays after it. */
struct kh_ioas_run {
	uint64_t first, last, bytes;
	size_t count;
	bool more;
};
int kh_ioas_find_run(const struct kh_ioas *ioas, uint64_t iova, uint64_t last,
		     kh_unmap_take_fn *take, void *arg, struct kh_ioas_run *run);
/* Forgets the mappings of a span found by kh_ioas_find_unmap or kh_ioas_find_run, once the page
 * tables no longer map it, releasing their owners. */
void kh_ioas_remove(struct kh_ioas *ioas, uint64_t first, uint64_t last,
		    kh_owner_release_fn *release, void *arg);

int kh_ioas_mappings(const struct kh_ioas *ioas, uint64_t from, struct kh_mapping *out, size_t max);
size_t kh_ioas_count(const struct kh_ioas *ioas);

/* Adds the reserved ranges a device brings, tagged with owner. -EADDRINUSE if one overlaps a
 * mapping or an allowed range; all or nothing. */
int kh_ioas_reserve(struct kh_ioas *ioas, const struct kh_iova_range *ranges, size_t n,
		    const void *owner);
void kh_ioas_unreserve(struct kh_ioas *ioas, const void *owner);

int kh_ioas_ranges(const struct kh_ioas *ioas, struct kh_iova_range *out, size_t max);
/* Checks allowed ranges and gives them sorted in *sorted (NULL for none), for the caller to
 * pass to kh_ioas_allow_set, which takes ownership, or to free. Changes nothing. */
int kh_ioas_allow_check(const struct kh_ioas *ioas, const struct kh_iova_range *ranges, size_t n,
			struct kh_iova_range **sorted);
void kh_ioas_allow_set(struct kh_ioas *ioas, struct kh_iova_range *sorted, size_t n);
/* The allowed ranges as kh_ioas_allow_set left them, sorted; NULL with *ret_n 0 for none. */
const struct kh_iova_range *kh_ioas_allowed(const struct kh_ioas *ioas, size_t *ret_n);

#endif
