/* SPDX-License-Identifier: MIT */
/*
 * Tenants, sessions and what they own.
 *
 * A tenant is a verified peer identity (peer.h): a uid, for peers outside interactive logins
 * (services, containers) also their cgroup, so two containers of one uid are two tenants, and
 * the configuration rule that matches the peer (its uid's section or its groups'), which gives
 * the tenant its access, devices and quotas. The rule is part of the identity so that a
 * process of the same uid with other groups never works under another section's rule. The
 * quotas count over all the tenant's sessions.
 *
 * A session is one kernel-helper context, so its ids (domains, devices) mean nothing in any
 * other session. A tenant has an anonymous session, shared by its connections and released
 * when the last of them closes, and any number of named sessions (leases), kept with no
 * connection open until ReleaseLease and then released with their last connection.
 *
 * Ownership: the registry owns tenants and sessions; a session owns its kernel-helper context,
 * its domain records and its maps of client files, the spare among them. kernel-helper's record of
 * a mapping is the only one: the daemon's part of it (struct map_owner: the domain charged, the
 * parts it was made in) hangs off that record as its owner cookie, one cookie shared,
 * reference-counted, by every mapping of a file map in a domain made in parts of one size, so a
 * mapping costs the daemon neither a record nor an allocation of its own. The cookie holds a
 * reference on the session's record of the client's file (struct file_map, one per file and
 * access), which goes with its last mapping, except that the map an Unmap of a single mapping
 * releases stays where the Unmap asks for it (keep_map), owned by the session as its spare and
 * charged to nothing, for the session's next Map of the same range (session_unmap_start's
 * keep_view), until the session's next request that changes anything and does not take it up
 * (session_give_up_spare), a connection leaving the session, the daemon's maps nearing their
 * ceiling or the session's end. Where the
 * domain's kernel maps files by descriptor (KH_CAP_MAP_FILE: iommufd on Linux 6.13 and later), the
 * kernel holds the file for each mapping itself and the record is no more than the file's identity:
 * the daemon maps none of the tenant's memory, and kernel-helper keeps each mapping's file offset.
 * Elsewhere the record is the daemon's shared mmap of the file (of the whole file while the
 * tenant's max-pinned covers those; of the mapping's range alone beyond that), and a mapping's file
 * offset is where its address lies in that mmap. The mmap, like the kernel's mapping, holds a
 * reference on the file, so no descriptor is kept (a daemon of many mappings would otherwise run
 * out of them), and one mmap serves every mapping of the file, so mappings cost the daemon no
 * memory map each. kernel-helper hands the cookie back once the mapping has left the IOMMU (Unmap,
 * UnmapAll, FreeDomain, the session's end), and only then does the daemon drop the mapping's
 * reference, so the memory cannot go away under a live DMA mapping. An munmap that fails leaves the
 * memory inaccessible (PROT_NONE) instead, logged and counted.
 *
 * What tenants hold is charged twice: to the tenant against its section's quotas, and to the
 * registry against the daemon-wide ceilings (ceilings.h), checked before a mapping or lease is
 * made. The emulated IOMMU's page tables live in the daemon, so they are charged to the tenant
 * whose mappings made them (max-page-tables).
 */
#ifndef IOMMUD_SESSION_H
#define IOMMUD_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <kh/kh.h>

#include "ceilings.h"
#include "config.h"
#include "peer.h"

#define LEASE_NAME_MAX 64 /* characters, without the terminating NUL */

struct probes;
struct registry;
struct tenant;
struct session;

struct usage {
	uint64_t domains;
	uint64_t mappings;
	uint64_t pinned_bytes;
	uint64_t leases;
	uint64_t page_table_bytes;
	uint64_t maps; /* the daemon's memory maps of client files */
};

struct registry *registry_create(struct kh_backend *be, const struct config *cfg);
/* Whether the backend pins mapped memory in the kernel, which charges the daemon's
 * RLIMIT_MEMLOCK (the ceilings follow), rather than mapping it in the daemon's address space. */
bool registry_pins_in_kernel(const struct kh_backend *be);
/* The probes the registry tells whose each session and cgroup is, and that it times the
 * backend's in-process map path into; the caller keeps them and outlives the registry. */
void registry_set_probes(struct registry *reg, struct probes *probes);
/* The watchers of sessions' ends, one slot each. */
enum session_end_watcher {
	SESSION_END_STATE,	 /* the state record forgets a lease */
	SESSION_END_DELEGATIONS, /* what was delegated within a lease ends with it */
	SESSION_END_WATCHERS
};
/* Tells ended (in who's slot; NULL for none) about every session as it ends (its lease released
 * and its last connection gone, or the registry destroyed), before its context goes. The caller
 * keeps arg and outlives the registry, or clears its slot first. */
void registry_on_session_end(struct registry *reg, enum session_end_watcher who,
			     void (*ended)(struct session *s, void *arg), void *arg);
/* Releases every session (and what it maps) and tenant. */
void registry_destroy(struct registry *reg);
struct kh_backend *registry_backend(const struct registry *reg);
unsigned registry_tenant_count(const struct registry *reg);
unsigned registry_session_count(const struct registry *reg);
/* The daemon-wide ceilings, what all tenants hold against them, and how many releases failed
 * to unmap memory. */
const struct ceilings *registry_ceilings(const struct registry *reg);
struct usage registry_usage(const struct registry *reg);
uint64_t registry_failed_releases(const struct registry *reg);

/* The maps of client files sessions kept after an unmap that asked for it (keep_map): held now,
 * and how many a map took up, or were given up unused, since the daemon started. */
struct kept_maps {
	uint64_t held, taken_up, given_up;
};
/* Every tenant's, and one tenant's. */
struct kept_maps registry_kept_maps(struct registry *reg);
struct kept_maps tenant_kept_maps(const struct tenant *tenant);

/* The tenant for a verified peer, created on first sight; each call takes a reference that
 * tenant_put drops. The access the configuration grants it comes back in *access. */
int tenant_get(struct registry *reg, const struct peer *peer, struct tenant **out,
	       enum access *access);
void tenant_put(struct tenant *tenant);
/* The tenant of a lease the state record kept (daemon/state.h): found by the identity
 * tenant_identity gave, its rule by the configuration section's name ("": none). */
int tenant_adopt(struct registry *reg, uid_t uid, const char *cgroup, const char *section,
		 struct tenant **out);
void tenant_identity(const struct tenant *tenant, uid_t *ret_uid, const char **ret_cgroup,
		     const char **ret_section);
const struct access_rule *tenant_rule(const struct tenant *tenant);
struct usage tenant_usage(const struct tenant *tenant);
/* The tenant's open connections and sessions. */
unsigned tenant_connections(const struct tenant *tenant);
unsigned tenant_sessions(const struct tenant *tenant);

/* Statistics speak of tenants by label, so that their number stays that of the configuration's
 * sections whatever peers come: a tenant's label is its section's name ("user alice"), or
 * "other" where no section names it. A label's slot is the small number the map/unmap
 * histograms are keyed by (probes/iommud_probes.h): 1 + the section's index, then "other";
 * 0 is no tenant's. Sections beyond the slots there are count as "other". */
unsigned tenant_label_slot(const struct tenant *tenant);
/* How many slots the labels take, 0 included; each below it has a name. */
unsigned registry_label_slots(const struct registry *reg);
/* The label of slot (NULL for 0 or a slot past the labels). */
const char *registry_label(const struct registry *reg, unsigned slot);
/* The configuration section behind a label's slot; NULL for "other" and slot 0. */
const struct access_rule *registry_label_rule(const struct registry *reg, unsigned slot);

/* What the tenants under one label hold. */
struct label_stats {
	unsigned tenants;
	unsigned sessions;
	unsigned leases; /* named sessions */
	struct usage used;
};
/* Sums the tenants into stats[slot]: stats holds registry_label_slots of them, zeroed. */
void registry_label_stats(const struct registry *reg, struct label_stats *stats);

enum device_state {
	DEVICE_FREE,	  /* in no session */
	DEVICE_BOUND,	  /* bound into a session's context */
	DEVICE_ATTACHED,  /* and attached to a domain there */
	DEVICE_DELEGATED, /* handed to a VMM: delegate.h says, never registry_device_state */
};
/* Where a backend device is, over every session. */
enum device_state registry_device_state(const struct registry *reg, const char *name);

/* Joins a session of the tenant (lease NULL or "" for the anonymous one), creating it if
 * needed; each call takes a reference that session_leave drops. */
int session_join(struct tenant *tenant, const char *lease, struct session **out);
void session_leave(struct session *s);
/* Whether the tenant holds a named session of that name. */
bool session_lease_held(const struct tenant *tenant, const char *lease);
/* Marks a named session to be released when its last connection leaves. */
int session_release_lease(struct session *s);
const char *session_lease(const struct session *s);
struct tenant *session_tenant(const struct session *s);
struct kh_ctx *session_ctx(const struct session *s);

/* The session's id for a backend device, binding it into the session first when bind is set
 * (and the configuration lets the tenant take it). */
int session_device(struct session *s, const char *name, bool bind, uint32_t *dev_id);
/* Whether the device is bound in this session; and its domain there (0: none). */
bool session_device_state(struct session *s, const char *name, uint32_t *domain_id);

int session_alloc_domain(struct session *s, const char *device,
			 const struct kh_domain_alloc_args *args, uint32_t *domain_id);
int session_free_domain(struct session *s, uint32_t domain_id);

/* A file a client sent to be mapped, checked once per request however many entries use it. */
struct map_file {
	int fd; /* borrowed from the request */
	dev_t dev;
	ino_t ino;
	uint64_t size;
	uint64_t page_size; /* hugetlbfs: its huge page; offsets and lengths must be multiples */
	/* What this descriptor lets the device do, checked for every writable mapping even where
	 * a map made from an earlier request's descriptor is reused. */
	int access_mode;  /* O_RDONLY or O_RDWR */
	int seals;	  /* F_SEAL_*; 0 for a file that takes none */
	bool append_only; /* FS_APPEND_FL (chattr +a) */
};

/* Checks that the memory behind fd may be mapped: a memfd sealed against shrinking, or a
 * tmpfs or hugetlbfs file, so it cannot go away under a DMA mapping. */
int session_check_file(int fd, struct map_file *out);

struct map_entry {
	uint32_t domain_id;
	const struct map_file *file; /* checked with session_check_file */
	uint64_t offset;
	uint64_t length;
	uint32_t prot; /* KH_PROT_* */
	bool fixed_iova;
	uint64_t iova; /* in with fixed_iova, out always */
	uint64_t alignment;
};

/* Checks the range against the file, charges the quota, maps. */
int session_map(struct session *s, struct map_entry *entry);

/* The granule of Map offsets and lengths: the smallest IOMMU page the backends support. */
#define MAP_GRANULE 4096ull
/* A mapping is made in parts of at most this many pages, so that a costly one can be made over
 * several turns of the daemon's loop, and taken back the same way; the parts are one mapping
 * (kernel-helper's KH_MAP_EXTEND, kh_unmap_tail), and the result is the same as one call would
 * make it. A page is the largest leaf the mapping can use: one its IOVA and address are both
 * aligned to, that the domain's IOMMU supports and, where the kernel pins the memory, no larger
 * than the file's pages (so 4 KiB memory is made in parts of 256 KiB, whatever its IOVA). */
#define MAP_PART_PAGES 64
/* The bytes of a part of a mapping at iova of the memory at addr, in a domain whose IOMMU has
 * the leaves page_sizes (bit n: 2^n bytes), of memory physically contiguous over contiguous
 * bytes (UINT64_MAX: as far as its address says). */
uint64_t map_part_bytes(uint64_t iova, uint64_t addr, uint64_t page_sizes, uint64_t contiguous);
/* A step may take several parts at once, a power of two of them (its IOVAs then aligned to
 * their bytes, so that whole page tables go or come at once): one call over many parts costs
 * far less than as many calls of a part. The caller sizes its steps to its time with
 * steps_resize; they start at one part. */
#define MAP_PARTS_PER_STEP_MAX (1u << 16)
/* *parts_per_step for the next step, from the one just taken: took_ns of the budget_ns left
 * of the slice when it started (UINT64_MAX: unbounded). Twice as many parts while a step takes
 * under a quarter of its budget, half as many once one overruns it. */
void steps_resize(unsigned *parts_per_step, uint64_t took_ns, uint64_t budget_ns);
/* The budget of a step while its tenant has the loop to itself (a slice after which no other
 * tenant was served or waiting), in place of what is left of the slice: its steps then double
 * while one takes under 0.5 ms, so that a step, one kernel call that nothing interrupts, takes
 * about 1 ms at most. That is the longest a tenant whose request arrives meanwhile waits; once
 * one has been served, the steps start again at one part, sized to the slice. Each call has a
 * fixed cost (on Linux 6.12 about 9 us of the kernel's and 3 us of the loop's, against 160 us
 * for a part of 4 KiB pages, under TCG): steps of one part added 7.7 % to a large map. */
#define MAP_STEP_ALONE_NS 2000000ull

/* session_unmap in steps, each taking away parts_per_step parts of a mapping (its tail) or
 * whole mappings of at most as many parts' pages together; between steps every mapping is as
 * ListMappings shows it (a mapping being taken back is shorter) and charged as such. */
struct unmap_progress {
	uint32_t domain_id;
	uint64_t iova; /* the range: mappings wholly inside go; last inclusive */
	uint64_t last;
	bool steps_left;
	uint32_t maps_before; /* the domain's mappings at the start */
	uint64_t bytes;	      /* taken away so far */
	uint32_t count;	      /* set when done: the mappings gone */
	uint64_t unmap_ns;    /* the in-process backend's time so far; 0 when not timed */
	bool keep_view;	      /* a file map it leaves unused may stay as the session's spare */
	unsigned parts_per_step;
	unsigned steps; /* taken so far; 1 for a removal done in one call */
};
/* start checks the range as one call would: where it would fail, or there is nothing to do in
 * steps, it does that one call and returns 0 (done: p->bytes and p->count) or its error; else
 * 1, and each step returns 1 while there is more, 0 when done, or a negative errno (what the
 * earlier steps took away stays taken away). keep_view (an Unmap or UnmapAll with keep_map):
 * the session keeps a file map the removal leaves unused for its next Map or MapBatch of the
 * same file (its spare) instead of unmapping it from the daemon; for a range, only where it
 * holds one mapping; for the whole domain, the last such map (a session has one spare). */
int session_unmap_start(struct session *s, uint32_t domain_id, uint64_t iova, uint64_t length,
			bool keep_view, struct unmap_progress *p);
/* Gives up the session's spare, if it holds one: unmaps it from the daemon, so the client may
 * seal or free the file as after any Unmap. The spare serves only the request that follows the
 * Unmap keeping it, and only a Map of its range, so the dispatcher gives it up before every
 * other request that changes anything and after every Map. */
void session_give_up_spare(struct session *s);
int session_unmap_step(struct session *s, struct unmap_progress *p);

struct map_progress {
	struct map_owner *mo; /* NULL once done or taken back */
	/* The owner of the mapping made last with this record, where made in one call, for
	 * session_map_like. That mapping's reference holds it: whoever keeps the record across
	 * anything else the session does (which may unmap it) sets this NULL first. */
	struct map_owner *like;
	uint32_t domain_id;
	struct kh_map_req req; /* the whole mapping; its iova is placed once the first part is */
	uint64_t part;	       /* bytes of a part, 0 when made in one call; its unmap uses it too */
	uint64_t mapped;       /* bytes from req.iova */
	uint64_t map_ns;       /* the in-process backend's time so far; 0 when not timed */
	struct unmap_progress back; /* what the steps mapped, being taken back after a failure */
	unsigned parts_per_step;
	/* Set by the caller after start: it times this map together with others and records it
	 * (session_record_maps), so the steps read no clock for it. */
	bool timed_by_caller;
};
/* session_map in steps: start checks the entry, places it and charges it whole; each step maps
 * parts_per_step parts, returning 1 while there is more, 0 when done (the IOVA in p->req.iova), or
 * a negative errno, with what was mapped then being taken back in p->back (session_unmap_step while
 * p->back.steps_left). abort does the same for a mapping started and not done: it returns the
 * charge of what was not mapped and starts taking back what was. */
int session_map_start(struct session *s, struct map_entry *entry, struct map_progress *p);
int session_map_step(struct session *s, struct map_progress *p);
void session_map_abort(struct session *s, struct map_progress *p);
/* session_map_start and the one session_map_step of a mapping made in one call, for an entry of
 * the domain and file of the last one p made (p->like), with the same access: checked, charged
 * and mapped as those two would, neither looked up. Nothing is timed: the caller times such
 * maps together (session_times_maps). 0 when mapped (the IOVA in p->req.iova), 1 when e is not
 * such an entry (nothing done: start it), or a negative errno as session_map_step's. */
int session_map_like(struct session *s, const struct map_entry *e, struct map_progress *p);
/* Whether the daemon times the backend's map path itself (the probes' in-process timing):
 * then a caller may time several maps made one after another together, and record each
 * (session_record_maps) with its share of their time, so that each still counts once. */
bool session_times_maps(const struct session *s);
/* Records count maps of bytes each that took ns each. */
void session_record_maps(struct session *s, uint64_t bytes, uint64_t ns, uint64_t count);
/* Removes the mappings wholly inside [iova, iova+length) (UINT64_MAX length from iova 0: all),
 * releasing their memory references once the backend has unmapped them: all the steps at once. */
int session_unmap(struct session *s, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t *bytes, uint32_t *count);

struct mapping_view {
	uint64_t iova;
	uint64_t length;
	uint64_t offset;
	uint32_t prot;
	dev_t dev; /* the client's file */
	ino_t ino;
};
/* Copies up to max mappings with iova >= from in IOVA order; returns how many, and sets *more
 * when there are further ones. */
int session_mappings(struct session *s, uint32_t domain_id, uint64_t from, struct mapping_view *out,
		     size_t max, bool *more);

struct domain_view {
	uint32_t id;
	enum kh_domain_type type;
	char device[KH_NAME_MAX];
	uint32_t mappings;
	uint64_t mapped_bytes;
};
/* Visits the session's domains in id order; stops early when visit returns non-zero. */
int session_domains(struct session *s, int (*visit)(const struct domain_view *, void *), void *arg);
/* Visits the devices bound in the session with the domain each is attached to. */
int session_bound_devices(struct session *s,
			  int (*visit)(const char *name, uint32_t domain_id, void *), void *arg);

#endif
