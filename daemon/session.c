// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* F_GET_SEALS */
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/queue.h>
#include <sys/sdt.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "histogram.h"
#include "log.h"
#include "own_memfd.h"
#include "probes/probes.h"
#include "status.h"

#define LEASE_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"

/* A client file the session's mappings with this access use. Where the domain's kernel maps
 * files by descriptor (KH_CAP_MAP_FILE), that is all it is: the kernel holds the file for each
 * mapping, the daemon maps none of it, and one record serves every such mapping of the file.
 * Elsewhere it is the daemon's shared mmap of the file, for every mapping of the session inside
 * it with this access. Where the tenant's max-pinned allows it, the map is of the whole file: one
 * memory map for however many mappings, unmapped whole, so its release never needs the kernel to
 * split a map (which can fail at vm.max_map_count); maps of one file with different access, or made
 * after the file grew, are separate and never merge, their file offsets both starting at 0.
 * Beyond that, so that a tenant cannot take the daemon's address space with huge sparse files,
 * a map is of one mapping's range alone, as large as what that mapping pins. */
struct file_map {
	LIST_ENTRY(file_map) link;
	dev_t dev; /* the file, which the mmap or the kernel's mappings keep alive, so the pair
		    * names it throughout */
	ino_t ino;
	bool writable;
	bool by_fd;	 /* the kernel maps the file by descriptor: no mmap, base NULL */
	bool whole;	 /* of the whole file, charged to the tenant's whole_file_bytes */
	uint64_t start;	 /* the file offset at base */
	uint64_t length; /* whole: the file's size when mapped, rounded up to its pages */
	void *base;
	unsigned refs; /* the owner records holding it */
	LIST_HEAD(, map_owner) owners;
};

/* What the daemon keeps for its mappings, behind kernel-helper's owner cookie: one record for
 * all the mappings of a file map in a domain made in parts of one size, so that a mapping costs
 * the daemon no record, and mapping a page no allocation, of its own. kernel-helper's record
 * holds the IOVA, length, prot and the address of the memory in the file's map, which gives
 * the file offset. */
struct map_owner {
	LIST_ENTRY(map_owner) link; /* in its file map's owners */
	struct domain_rec *dom;	    /* charged for the mappings */
	struct file_map *file;	    /* a reference on it */
	uint64_t part;		    /* bytes of the parts they were made in (0: one call), to
				     * unmap in */
	uint64_t refs;		    /* its mappings, and a mapping being made */
};

struct domain_rec {
	LIST_ENTRY(domain_rec) link;
	uint32_t id;
	enum kh_domain_type type;
	char device[KH_NAME_MAX];
	uint32_t n_maps; /* the mappings kernel-helper holds for it, and their bytes */
	uint64_t bytes;
	uint64_t table_bytes; /* its page tables in the daemon, as last charged */
	uint64_t page_sizes;  /* the leaves its IOMMU supports (bit n: 2^n bytes) */
	bool maps_files;      /* its kernel takes files by descriptor (KH_CAP_MAP_FILE) */
};

struct bound_dev {
	LIST_ENTRY(bound_dev) link;
	char name[KH_NAME_MAX];
	uint32_t dev_id;
};

struct session {
	LIST_ENTRY(session) link;
	struct tenant *tenant;
	char lease[LEASE_NAME_MAX + 1];
	struct kh_ctx *ctx;
	unsigned refs;
	bool lease_released;
	LIST_HEAD(, domain_rec) domains;
	LIST_HEAD(, bound_dev) devices;
	LIST_HEAD(, file_map) files;
	/* A map whose last mapping an Unmap of that one mapping released, kept (NULL: none)
	 * for the session's next Map of the same range of the file with the same access, which
	 * then needs no mmap: a client that maps and unmaps one buffer per I/O pays the
	 * daemon's mmap and munmap of it once. Kept only where the Unmap asked for it
	 * (keep_map), counted against no quota or ceiling, and given up by the session's next
	 * request that changes anything unless that is a Map taking it up
	 * (session_give_up_spare), when a connection leaves the session, when the daemon's
	 * maps near their ceiling, and at the session's end. */
	struct file_map *spare;
	bool keeping_released; /* the unmap under way keeps what it releases as the spare */
	/* The mappings an unmap's kernel-helper call released, while it runs (gathering): taken
	 * off the registry's totals once it returns (releases_settle), not one by one. */
	struct {
		bool gathering;
		uint64_t bytes;
	} released;
};

struct tenant {
	LIST_ENTRY(tenant) link;
	struct registry *reg;
	uid_t uid;
	char *cgroup;			/* part of the identity; "" for interactive logins */
	uint64_t cgroup_id;		/* registered with the probes under it; 0: not registered */
	const struct access_rule *rule; /* part of the identity; NULL: no section matched */
	unsigned refs;			/* connections and sessions */
	struct usage used;
	uint64_t whole_file_bytes; /* its whole-file maps' address space, at most max-pinned */
	struct kept_maps kept;	   /* its sessions', under books_lock */
	LIST_HEAD(, session) sessions;
};

struct registry {
	struct kh_backend *be;
	const struct config *cfg;
	struct probes *probes; /* NULL: nothing to attribute */
	/* Told of each session's end, before its context goes; a NULL ended: no one to tell. */
	struct {
		void (*ended)(struct session *s, void *arg);
		void *arg;
	} end_watchers[SESSION_END_WATCHERS];
	LIST_HEAD(, tenant) tenants;
	unsigned n_tenants;
	unsigned n_sessions;
	bool maps_in_process; /* the backend's map path runs here, on the daemon's addresses */
	struct ceilings ceil;
	/* The books: what the map paths of several loop threads share (daemon_lock.h), under
	 * books_lock, which nests (a spare given up while the books are held). total's pinned
	 * bytes are read and changed alone, so map paths change them by atomic adds (total_add)
	 * instead: every entry of a batch charges them, and the mutex cost more than the
	 * entry's own bookkeeping. */
	pthread_mutex_t books;
	/* Over all tenants, against ceil: maps, leases and pinned_bytes only, the figures
	 * GetStats and the ceilings read; the tenants' own usage has the rest. */
	struct usage total;
	/* The sessions' spare maps (held: not in total.maps), under books_lock. */
	struct kept_maps kept;
	uint64_t failed_releases;
};

static void books_lock(struct registry *reg)
{
	(void)pthread_mutex_lock(&reg->books);
}

static void books_unlock(struct registry *reg)
{
	(void)pthread_mutex_unlock(&reg->books);
}

/* The device number of the kernel's internal tmpfs mount, where every memfd made without
 * MFD_HUGETLB lives, learned from a memfd of the daemon's own; shmem_dev_known false where that
 * failed. That mount lives as long as the kernel, so its number never comes to name another
 * file system: a file on it is tmpfs's without asking fstatfs on every Map. */
static dev_t shmem_dev;
static bool shmem_dev_known;

static void shmem_dev_learn(void)
{
	int fd = own_memfd("iommud-shmem-dev");
	struct stat st;

	if (fd < 0) {
		log_debug("cannot make a memfd to learn the internal tmpfs mount (%s): every Map "
			  "asks fstatfs what file system its file is on",
			  strerror(errno));
		return;
	}
	if (fstat(fd, &st) == 0) {
		shmem_dev = st.st_dev;
		shmem_dev_known = true;
	}
	(void)close(fd);
}

bool registry_pins_in_kernel(const struct kh_backend *be)
{
	return !(kh_backend_caps(be) & KH_CAP_MAP_IN_PROCESS);
}

struct registry *registry_create(struct kh_backend *be, const struct config *cfg)
{
	struct registry *reg = calloc(1, sizeof(*reg));

	if (!reg)
		return NULL;
	/* Here, before any request and any thread. */
	if (!shmem_dev_known)
		shmem_dev_learn();
	reg->be = be;
	reg->cfg = cfg;
	reg->books = (pthread_mutex_t)PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
	LIST_INIT(&reg->tenants);
	reg->maps_in_process = !registry_pins_in_kernel(be);
	ceilings_compute(cfg, !reg->maps_in_process, ceilings_open_files(), &reg->ceil);
	return reg;
}

void registry_set_probes(struct registry *reg, struct probes *probes)
{
	reg->probes = probes;
}

void registry_on_session_end(struct registry *reg, enum session_end_watcher who,
			     void (*ended)(struct session *s, void *arg), void *arg)
{
	reg->end_watchers[who].ended = ended;
	reg->end_watchers[who].arg = arg;
}

struct kh_backend *registry_backend(const struct registry *reg)
{
	return reg->be;
}

unsigned registry_tenant_count(const struct registry *reg)
{
	return reg->n_tenants;
}

unsigned registry_session_count(const struct registry *reg)
{
	return reg->n_sessions;
}

const struct ceilings *registry_ceilings(const struct registry *reg)
{
	return &reg->ceil;
}

struct usage registry_usage(const struct registry *reg)
{
	return reg->total;
}

uint64_t registry_failed_releases(const struct registry *reg)
{
	return reg->failed_releases;
}

struct kept_maps registry_kept_maps(struct registry *reg)
{
	struct kept_maps kept;

	books_lock(reg);
	kept = reg->kept;
	books_unlock(reg);
	return kept;
}

/* ---- mapping records ------------------------------------------------------------------ */

/* Adds delta (a decrease as its two's complement) to a total of the registry's that map
 * paths change without the books mutex. */
static void total_add(uint64_t *total, uint64_t delta)
{
	(void)__atomic_fetch_add(total, delta, __ATOMIC_RELAXED);
}

/* Counts count mappings (+1 made, -n released, 0: bytes only) of length bytes, added (sign +1)
 * or taken away (-1), in their domain and their tenant's quota. */
static void charge_mapping_here(struct session *s, struct domain_rec *dom, int64_t count,
				uint64_t length, int sign)
{
	struct usage *used = &s->tenant->used;

	dom->n_maps += (uint32_t)count;
	dom->bytes += (uint64_t)sign * length;
	used->mappings += (uint64_t)count;
	used->pinned_bytes += (uint64_t)sign * length;
}

/* The same, and in the daemon's ceilings. */
static void charge_mapping(struct session *s, struct domain_rec *dom, int64_t count,
			   uint64_t length, int sign)
{
	charge_mapping_here(s, dom, count, length, sign);
	total_add(&s->tenant->reg->total.pinned_bytes, (uint64_t)sign * length);
}

static void releases_gather(struct session *s)
{
	s->released.gathering = true;
}

static void releases_settle(struct session *s)
{
	s->released.gathering = false;
	if (!s->released.bytes)
		return;
	total_add(&s->tenant->reg->total.pinned_bytes, -s->released.bytes);
	s->released.bytes = 0;
}

/* Charges the tenant for the domain's page tables as they are now: after every change to its
 * mappings, and with 0 when the domain goes. Most maps of a page fill a table that was there
 * already: nothing to charge. */
static void charge_tables(struct session *s, struct domain_rec *dom, uint64_t bytes)
{
	if (bytes == dom->table_bytes)
		return;
	s->tenant->used.page_table_bytes += bytes - dom->table_bytes;
	dom->table_bytes = bytes;
}

static void recharge_tables(struct session *s, struct domain_rec *dom)
{
	uint64_t bytes = 0;

	/* The domain is the session's own, so kernel-helper knows it. */
	(void)kh_domain_table_bytes(s->ctx, dom->id, &bytes);
	charge_tables(s, dom, bytes);
}

/* Unmaps a client's memory from the daemon. A whole map needs no split, so this should not fail;
 * if it does, the memory must not stay reachable: it is made inaccessible, and either way said
 * and counted, since the address range then stays taken. */
static void release_memory(struct registry *reg, void *va, uint64_t length)
{
	int saved;

	if (munmap(va, length) == 0)
		return;
	saved = errno;
	books_lock(reg);
	reg->failed_releases++;
	books_unlock(reg);
	if (mprotect(va, length, PROT_NONE) == 0) {
		log_err("cannot unmap a client file's memory [%p, +0x%llx) in the daemon (%s); "
			"made it inaccessible instead; lower max-maps-total or raise "
			"vm.max_map_count",
			va, (unsigned long long)length, strerror(saved));
		return;
	}
	log_err("cannot unmap nor protect a client file's memory [%p, +0x%llx) in the daemon "
		"(%s): it stays mapped until the daemon restarts; lower max-maps-total or "
		"raise vm.max_map_count",
		va, (unsigned long long)length, strerror(saved));
}

/* Counts, under books_lock, a change to the session's spare map in its tenant's and the
 * registry's books: held by +1 or -1, and one more taken up or given up. */
static void count_kept(struct session *s, int held, unsigned taken_up, unsigned given_up)
{
	struct kept_maps *books[] = {&s->tenant->kept, &s->tenant->reg->kept};

	for (size_t i = 0; i < sizeof(books) / sizeof(books[0]); i++) {
		books[i]->held += (uint64_t)held;
		books[i]->taken_up += taken_up;
		books[i]->given_up += given_up;
	}
}

void session_give_up_spare(struct session *s)
{
	/* Only the session's own thread sets a spare: none seen is none there. */
	if (!__atomic_load_n(&s->spare, __ATOMIC_RELAXED))
		return;
	books_lock(s->tenant->reg);
	if (s->spare) {
		count_kept(s, -1, 0, 1);
		release_memory(s->tenant->reg, s->spare->base, s->spare->length);
		free(s->spare);
		__atomic_store_n(&s->spare, NULL, __ATOMIC_RELAXED);
	}
	books_unlock(s->tenant->reg);
}

/* Gives up every session's spare map, so that the maps the daemon holds stay within their
 * ceiling, which counts none of them. */
static void registry_drop_spares(struct registry *reg)
{
	struct tenant *t;
	struct session *s;

	/* The lists change only under the daemon lock, which map paths exclude. */
	books_lock(reg);
	LIST_FOREACH (t, &reg->tenants, link)
		LIST_FOREACH (s, &t->sessions, link)
			session_give_up_spare(s);
	books_unlock(reg);
}

static void file_map_put(struct session *s, struct file_map *fm)
{
	if (--fm->refs)
		return;
	LIST_REMOVE(fm, link);
	if (fm->whole)
		s->tenant->whole_file_bytes -= fm->length;
	if (fm->by_fd) {
		free(fm);
		return;
	}
	s->tenant->used.maps--;
	books_lock(s->tenant->reg);
	s->tenant->reg->total.maps--;
	books_unlock(s->tenant->reg);
	if (!s->keeping_released) {
		release_memory(s->tenant->reg, fm->base, fm->length);
		free(fm);
		return;
	}
	books_lock(s->tenant->reg);
	session_give_up_spare(s);
	__atomic_store_n(&s->spare, fm, __ATOMIC_RELAXED);
	count_kept(s, +1, 0, 0);
	books_unlock(s->tenant->reg);
}

/* The owner record for a mapping of fm's memory in dom made in parts of part bytes, with a
 * reference on it; takes over the caller's reference on fm, which it drops on failure. */
static int map_owner_get(struct session *s, struct file_map *fm, struct domain_rec *dom,
			 uint64_t part, struct map_owner **ret_mo)
{
	struct map_owner *mo;

	LIST_FOREACH (mo, &fm->owners, link)
		if (mo->dom == dom && mo->part == part) {
			/* The record holds the file map already. */
			file_map_put(s, fm);
			mo->refs++;
			*ret_mo = mo;
			return 0;
		}
	mo = calloc(1, sizeof(*mo));
	if (!mo) {
		file_map_put(s, fm);
		return fail(-ENOMEM, "out of memory");
	}
	*mo = (struct map_owner){.dom = dom, .file = fm, .part = part, .refs = 1};
	LIST_INSERT_HEAD(&fm->owners, mo, link);
	*ret_mo = mo;
	return 0;
}

/* Drops count references on mo. */
static void map_owner_put(struct session *s, struct map_owner *mo, uint64_t count)
{
	mo->refs -= count;
	if (mo->refs)
		return;
	LIST_REMOVE(mo, link);
	file_map_put(s, mo->file);
	free(mo);
}

/* Where the mapping's memory starts in the client's file: kernel-helper holds the offset itself
 * for a mapping by descriptor. */
static uint64_t mapping_offset(const struct kh_mapping *m)
{
	const struct file_map *fm = ((const struct map_owner *)m->owner)->file;

	if (m->flags & KH_MAP_FILE)
		return m->addr;
	return fm->start + (m->addr - (uint64_t)(uintptr_t)fm->base);
}

/* kernel-helper's owner release: count mappings of bytes in all have left the IOMMU, so their
 * memory may go. */
static void mapping_release(void *owner, uint64_t count, uint64_t bytes, void *arg)
{
	struct map_owner *mo = owner;
	struct session *s = arg;

	if (s->released.gathering) {
		s->released.bytes += bytes;
		/* The registry's total is the caller's to settle: nothing else of it changes. */
		charge_mapping_here(s, mo->dom, -(int64_t)count, bytes, -1);
	} else {
		charge_mapping(s, mo->dom, -(int64_t)count, bytes, -1);
	}
	map_owner_put(s, mo, count);
}

/* After kernel-helper has released every mapping of the domain (domain freed, context
 * destroyed). */
static void domain_rec_release(struct session *s, struct domain_rec *dom)
{
	charge_tables(s, dom, 0);
	LIST_REMOVE(dom, link);
	s->tenant->used.domains--;
	free(dom);
}

static struct domain_rec *domain_rec_find(struct session *s, uint32_t id)
{
	struct domain_rec *dom;

	LIST_FOREACH (dom, &s->domains, link)
		if (dom->id == id)
			return dom;
	return NULL;
}

static int domain_lookup(struct session *s, uint32_t id, struct domain_rec **ret_dom)
{
	struct domain_rec *dom = domain_rec_find(s, id);

	if (!dom)
		return fail(-ENOENT,
			    "no domain %u in this session; list the session's domains with "
			    "list_domains (iommuctl domains)",
			    id);
	*ret_dom = dom;
	return 0;
}

/* ---- tenants -------------------------------------------------------------------------- */

/* Maps and unmaps say what they did at debug level: the level is compared before the call, as
 * setting up log_about_at's arguments and its large frame only to return costs every page of a
 * batch more than its own quota checks. */
#define log_about(level, ...)                                                                      \
	do {                                                                                       \
		if ((level) <= log_get_level())                                                    \
			log_about_at((level), __VA_ARGS__);                                        \
	} while (0)

/* Interactive logins of one user are one tenant: each login has its own scope cgroup, and a
 * person expects their second terminal to see what the first one set up. */
static const char *tenant_cgroup(const struct peer *peer)
{
	/* "" is no other peer's: an unverified peer has no tenant, a verified one a path. */
	return strncmp(peer->cgroup, "/user.slice/", 12) == 0 ? "" : peer->cgroup;
}

/* A line about a tenant or one of its objects, with the journal fields that find it (log.h):
 * the tenant always, the lease when lease is not NULL, the domain and the device when given. */
static void __attribute__((format(printf, 6, 7), noinline))
log_about_at(int level, const struct tenant *t, const char *lease, const uint32_t *domain_id,
	     const char *device, const char *fmt, ...)
{
	char tenant[sizeof("4294967295:") + PATH_MAX], domain[sizeof("4294967295")];
	struct log_field fields[5];
	size_t n = 1;
	va_list ap;

	fields[0] = (struct log_field){"IOMMUD_TENANT", tenant};
	(void)snprintf(tenant, sizeof(tenant), "%u:%s", (unsigned)t->uid, t->cgroup);
	if (lease)
		fields[n++] = (struct log_field){"IOMMUD_LEASE", lease};
	if (domain_id) {
		(void)snprintf(domain, sizeof(domain), "%u", *domain_id);
		fields[n++] = (struct log_field){"IOMMUD_DOMAIN", domain};
	}
	if (device)
		fields[n++] = (struct log_field){"IOMMUD_DEVICE", device};
	fields[n] = (struct log_field){NULL, NULL};
	va_start(ap, fmt);
	log_structv(level, fields, fmt, ap);
	va_end(ap);
}

/* The cgroup v2 id of a tenant's cgroup (the inode number of its directory), for the probes to
 * count what the tenant's own processes do; false for interactive logins, which have none, and
 * where nothing attributes (no probes, or tier off). */
static bool tenant_cgroup_id(const struct tenant *t, uint64_t *ret_id)
{
	char path[sizeof("/sys/fs/cgroup") + PATH_MAX];
	struct stat st;

	if (!t->reg->probes ||
	    probes_tier(t->reg->probes) == IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF || !t->cgroup[0])
		return false;
	/* A path cut short could name another cgroup, whose work would count to this tenant. */
	if (snprintf(path, sizeof(path), "/sys/fs/cgroup%s", t->cgroup) >= (int)sizeof(path) ||
	    stat(path, &st) < 0)
		return false;
	*ret_id = st.st_ino;
	return true;
}

/* Registers the tenant's cgroup; kept in the tenant, since by the time the tenant goes the
 * cgroup may be gone and its id no longer found by path. */
static void tenant_register_cgroup(struct tenant *t)
{
	uint64_t cgroup_id;

	if (!tenant_cgroup_id(t, &cgroup_id))
		return;
	if (probes_register_cgroup(t->reg->probes, cgroup_id, tenant_label_slot(t)) < 0) {
		log_about(LOG_WARNING, t, NULL, NULL, NULL,
			  "cannot attribute cgroup {IOMMUD_TENANT} to its tenant in the probes");
		return;
	}
	t->cgroup_id = cgroup_id;
}

/* Two tenants (two uids) may share a cgroup: its entry goes with the last of them. */
static bool cgroup_shared(const struct tenant *t)
{
	const struct tenant *other;

	LIST_FOREACH (other, &t->reg->tenants, link)
		if (other != t && other->cgroup_id == t->cgroup_id)
			return true;
	return false;
}

static struct tenant *tenant_find(struct registry *reg, uid_t uid, const char *cgroup,
				  const struct access_rule *rule)
{
	struct tenant *t;

	LIST_FOREACH (t, &reg->tenants, link)
		if (t->uid == uid && t->rule == rule && strcmp(t->cgroup, cgroup) == 0)
			return t;
	return NULL;
}

/* The tenant of this identity, created on first sight, with a reference taken. */
static int tenant_hold(struct registry *reg, uid_t uid, const char *cgroup,
		       const struct access_rule *rule, struct tenant **out)
{
	struct tenant *t = tenant_find(reg, uid, cgroup, rule);

	if (t) {
		t->refs++;
		*out = t;
		return 0;
	}
	t = calloc(1, sizeof(*t));
	if (!t || !(t->cgroup = strdup(cgroup))) {
		free(t);
		return fail(-ENOMEM, "out of memory for a new tenant");
	}
	t->reg = reg;
	t->uid = uid;
	t->rule = rule;
	t->refs = 1;
	LIST_INIT(&t->sessions);
	LIST_INSERT_HEAD(&reg->tenants, t, link);
	reg->n_tenants++;
	tenant_register_cgroup(t);
	log_about(LOG_DEBUG, t, NULL, NULL, NULL, "new tenant {IOMMUD_TENANT} (%s)",
		  rule ? rule->section : "no section: default access");
	*out = t;
	return 0;
}

int tenant_get(struct registry *reg, const struct peer *peer, struct tenant **out,
	       enum access *access)
{
	const struct access_rule *rule =
		config_match(reg->cfg, peer->uid, peer->gid, peer->groups, peer->n_groups);
	int rc = tenant_hold(reg, peer->uid, tenant_cgroup(peer), rule, out);

	if (rc < 0)
		return rc;
	*access = rule ? rule->access : reg->cfg->default_access;
	return 0;
}

int tenant_adopt(struct registry *reg, uid_t uid, const char *cgroup, const char *section,
		 struct tenant **out)
{
	const struct access_rule *rule = NULL;

	for (size_t i = 0; section[0] && i < reg->cfg->n_rules && !rule; i++)
		if (strcmp(reg->cfg->rules[i].section, section) == 0)
			rule = &reg->cfg->rules[i];
	if (section[0] && !rule)
		return fail(-ENOENT,
			    "the configuration has no section '%s' any more; a lease of uid %u "
			    "made under it cannot be kept",
			    section, (unsigned)uid);
	return tenant_hold(reg, uid, cgroup, rule, out);
}

void tenant_identity(const struct tenant *t, uid_t *ret_uid, const char **ret_cgroup,
		     const char **ret_section)
{
	*ret_uid = t->uid;
	*ret_cgroup = t->cgroup;
	*ret_section = t->rule ? t->rule->section : "";
}

void tenant_put(struct tenant *t)
{
	if (--t->refs)
		return;
	if (t->cgroup_id && !cgroup_shared(t))
		probes_unregister_cgroup(t->reg->probes, t->cgroup_id);
	LIST_REMOVE(t, link);
	t->reg->n_tenants--;
	free(t->cgroup);
	free(t);
}

const struct access_rule *tenant_rule(const struct tenant *t)
{
	return t->rule;
}

struct usage tenant_usage(const struct tenant *t)
{
	return t->used;
}

struct kept_maps tenant_kept_maps(const struct tenant *t)
{
	struct kept_maps kept;

	books_lock(t->reg);
	kept = t->kept;
	books_unlock(t->reg);
	return kept;
}

unsigned tenant_sessions(const struct tenant *t)
{
	const struct session *s;
	unsigned n = 0;

	LIST_FOREACH (s, &t->sessions, link)
		n++;
	return n;
}

/* Each connection and each session holds a reference on its tenant. */
unsigned tenant_connections(const struct tenant *t)
{
	return t->refs - tenant_sessions(t);
}

/* The slot of "other": after the sections', or the last one when they fill the slots. */
static unsigned other_slot(const struct config *cfg)
{
	return cfg->n_rules + 1 < IOMMUD_TENANT_SLOTS ? (unsigned)cfg->n_rules + 1
						      : IOMMUD_TENANT_SLOTS - 1;
}

unsigned tenant_label_slot(const struct tenant *t)
{
	const struct config *cfg = t->reg->cfg;
	unsigned other = other_slot(cfg);
	size_t index;

	if (!t->rule)
		return other;
	index = (size_t)(t->rule - cfg->rules);
	return index + 1 < other ? (unsigned)index + 1 : other;
}

unsigned registry_label_slots(const struct registry *reg)
{
	return other_slot(reg->cfg) + 1;
}

const char *registry_label(const struct registry *reg, unsigned slot)
{
	unsigned other = other_slot(reg->cfg);

	if (slot == 0 || slot > other)
		return NULL;
	return slot == other ? "other" : reg->cfg->rules[slot - 1].section;
}

const struct access_rule *registry_label_rule(const struct registry *reg, unsigned slot)
{
	return slot == 0 || slot >= other_slot(reg->cfg) ? NULL : &reg->cfg->rules[slot - 1];
}

void registry_label_stats(const struct registry *reg, struct label_stats *stats)
{
	const struct tenant *t;
	const struct session *s;

	LIST_FOREACH (t, &reg->tenants, link) {
		struct label_stats *l = &stats[tenant_label_slot(t)];

		l->tenants++;
		l->used.domains += t->used.domains;
		l->used.mappings += t->used.mappings;
		l->used.pinned_bytes += t->used.pinned_bytes;
		l->used.leases += t->used.leases;
		l->used.page_table_bytes += t->used.page_table_bytes;
		LIST_FOREACH (s, &t->sessions, link) {
			l->sessions++;
			l->leases += s->lease[0] != '\0';
		}
	}
}

/* ---- sessions ------------------------------------------------------------------------- */

static void session_destroy(struct session *s)
{
	struct probes *probes = s->tenant->reg->probes;
	int kernel_fd = kh_ctx_kernel_fd(s->ctx);
	struct domain_rec *dom;
	struct bound_dev *dev;

	for (size_t i = 0; i < SESSION_END_WATCHERS; i++)
		if (s->tenant->reg->end_watchers[i].ended)
			s->tenant->reg->end_watchers[i].ended(s,
							      s->tenant->reg->end_watchers[i].arg);
	if (probes && kernel_fd >= 0)
		probes_unregister_fd(probes, kernel_fd);
	/* The context first: it releases every mapping's memory once the backend has unmapped it,
	 * charging the domain records, which must still be there. */
	kh_ctx_destroy(s->ctx);
	session_give_up_spare(s);
	while ((dom = LIST_FIRST(&s->domains)))
		domain_rec_release(s, dom);
	while ((dev = LIST_FIRST(&s->devices))) {
		LIST_REMOVE(dev, link);
		free(dev);
	}
	LIST_REMOVE(s, link);
	s->tenant->reg->n_sessions--;
	if (s->lease[0]) {
		s->tenant->used.leases--;
		s->tenant->reg->total.leases--;
	}
	log_about(LOG_INFO, s->tenant, s->lease, NULL, NULL,
		  s->lease[0] ? "released session '{IOMMUD_LEASE}' of uid %u"
			      : "released the anonymous session of uid %u",
		  (unsigned)s->tenant->uid);
	tenant_put(s->tenant);
	free(s);
}

/* The kernel's map path learns the session's descriptor once, so its ioctls count to t. */
static void attribute_session(struct kh_ctx *ctx, struct tenant *t, const char *lease)
{
	int kernel_fd = kh_ctx_kernel_fd(ctx);

	if (t->reg->probes && kernel_fd >= 0 &&
	    probes_register_fd(t->reg->probes, kernel_fd, tenant_label_slot(t)) < 0)
		log_about(LOG_WARNING, t, lease, NULL, NULL,
			  "cannot attribute a session of uid %u in the probes", (unsigned)t->uid);
}

/* A lease is kept with no connection open, so its tenant's quota and the daemon's ceiling bound
 * what leases hold (a context, its descriptors) however many times peers ask. */
static int check_lease_room(const struct tenant *t)
{
	const struct ceilings *ceil = &t->reg->ceil;

	if (!t->rule || t->used.leases >= t->rule->max_leases)
		return fail(-EDQUOT,
			    "uid %u holds %llu leases, its quota (max-leases in %s); release one "
			    "(ReleaseLease, iommuctl lease release) or use the anonymous session",
			    (unsigned)t->uid, (unsigned long long)t->used.leases,
			    t->rule ? t->rule->section : "a configuration section, which it lacks");
	if (t->reg->total.leases >= ceil->max_leases)
		return fail(
			-ENOSPC,
			"the daemon holds as many leases as its ceiling over all tenants allows "
			"(max-leases-total, below the open-file limit); try again once leases "
			"are released, or ask the administrator to raise LimitNOFILE");
	return 0;
}

bool session_lease_held(const struct tenant *t, const char *lease)
{
	const struct session *s;

	LIST_FOREACH (s, &t->sessions, link)
		if (lease[0] && strcmp(s->lease, lease) == 0)
			return true;
	return false;
}

int session_join(struct tenant *t, const char *lease, struct session **out)
{
	struct session *s;
	int rc;

	if (!lease)
		lease = "";
	if (strlen(lease) > LEASE_NAME_MAX || strspn(lease, LEASE_CHARS) != strlen(lease))
		return fail(-EINVAL,
			    "a lease name is 1 to %d characters of A-Z, a-z, 0-9, '.', "
			    "'_' and '-'",
			    LEASE_NAME_MAX);
	LIST_FOREACH (s, &t->sessions, link) {
		if (strcmp(s->lease, lease) == 0) {
			if (s->lease_released)
				return fail(-EBUSY,
					    "lease '%s' was released and ends when its last "
					    "connection closes; wait for that or choose "
					    "another name",
					    lease);
			s->refs++;
			*out = s;
			return 0;
		}
	}
	if (lease[0] && (rc = check_lease_room(t)) < 0)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s)
		return fail(-ENOMEM, "out of memory for a new session");
	rc = kh_ctx_create(t->reg->be, &s->ctx);
	if (rc < 0) {
		free(s);
		return fail_kh(rc, "cannot create the session's IOMMU context");
	}
	kh_ctx_set_owner_release(s->ctx, mapping_release, s);
	attribute_session(s->ctx, t, lease);
	(void)snprintf(s->lease, sizeof(s->lease), "%s", lease);
	s->tenant = t;
	s->refs = 1;
	LIST_INIT(&s->domains);
	LIST_INIT(&s->devices);
	LIST_INIT(&s->files);
	LIST_INSERT_HEAD(&t->sessions, s, link);
	t->refs++;
	t->reg->n_sessions++;
	if (lease[0]) {
		t->used.leases++;
		t->reg->total.leases++;
	}
	log_about(LOG_INFO, t, lease, NULL, NULL,
		  lease[0] ? "new session '{IOMMUD_LEASE}' for uid %u"
			   : "new anonymous session for uid %u",
		  (unsigned)t->uid);
	*out = s;
	return 0;
}

void session_leave(struct session *s)
{
	/* A session left, and all the more one kept with no connection, is no longer mapping and
	 * unmapping a buffer in turn: its spare would only hold the tenant's memory. */
	session_give_up_spare(s);
	if (--s->refs)
		return;
	if (s->lease[0] && !s->lease_released) {
		log_about(LOG_INFO, s->tenant, s->lease, NULL, NULL,
			  "lease '{IOMMUD_LEASE}' of uid %u kept with no connection",
			  (unsigned)s->tenant->uid);
		return;
	}
	session_destroy(s);
}

int session_release_lease(struct session *s)
{
	if (!s->lease[0])
		return fail(-ENOTCONN, "this connection is in its anonymous session, which has no "
				       "lease; name a lease in hello to hold one");
	s->lease_released = true;
	return 0;
}

const char *session_lease(const struct session *s)
{
	return s->lease;
}

struct tenant *session_tenant(const struct session *s)
{
	return s->tenant;
}

struct kh_ctx *session_ctx(const struct session *s)
{
	return s->ctx;
}

void registry_destroy(struct registry *reg)
{
	struct tenant *t;

	if (!reg)
		return;
	/* Leases hold their tenant; connections were closed by the server before this. */
	while ((t = LIST_FIRST(&reg->tenants))) {
		struct session *s = LIST_FIRST(&t->sessions);

		if (!s) {
			/* A tenant kept only by connection references the server failed to drop. */
			LIST_REMOVE(t, link);
			free(t);
			continue;
		}
		session_destroy(s);
	}
	free(reg);
}

/* ---- devices -------------------------------------------------------------------------- */

static struct bound_dev *bound_find(struct session *s, const char *name)
{
	struct bound_dev *dev;

	LIST_FOREACH (dev, &s->devices, link)
		if (strcmp(dev->name, name) == 0)
			return dev;
	return NULL;
}

int session_device(struct session *s, const char *name, bool bind, uint32_t *dev_id)
{
	struct bound_dev *dev = bound_find(s, name);
	int rc;

	if (dev) {
		*dev_id = dev->dev_id;
		return 0;
	}
	if (kh_device_lookup(s->tenant->reg->be, name) < 0)
		return fail(-ENOENT, "no device '%s'; list_devices (iommuctl devices) shows them",
			    name);
	if (!bind)
		return fail(-ENOENT,
			    "device '%s' is not in this session; allocate a domain for it "
			    "or attach it first",
			    name);
	if (!config_device_allowed(s->tenant->rule, name))
		return fail(-EPERM,
			    "uid %u may not take device '%s': its configuration section (%s) does "
			    "not list it in 'devices'",
			    (unsigned)s->tenant->uid, name,
			    s->tenant->rule ? s->tenant->rule->section : "none");
	dev = calloc(1, sizeof(*dev));
	if (!dev)
		return fail(-ENOMEM, "out of memory");
	rc = kh_device_bind(s->ctx, name, &dev->dev_id);
	if (rc < 0) {
		free(dev);
		if (rc == -EBUSY)
			return fail(rc,
				    "cannot take device '%s': %s; a device is free again once the "
				    "session holding it has ended and no one holds a VFIO fd of it",
				    name, kh_last_error());
		return fail_kh(rc, "cannot bind the device");
	}
	(void)snprintf(dev->name, sizeof(dev->name), "%s", name);
	LIST_INSERT_HEAD(&s->devices, dev, link);
	log_about(LOG_INFO, s->tenant, s->lease, NULL, name, "uid %u took device {IOMMUD_DEVICE}",
		  (unsigned)s->tenant->uid);
	*dev_id = dev->dev_id;
	return 0;
}

bool session_device_state(struct session *s, const char *name, uint32_t *domain_id)
{
	struct bound_dev *dev = bound_find(s, name);

	*domain_id = 0;
	if (!dev)
		return false;
	/* A device of the session's own list is bound in its context, so this cannot fail. */
	(void)kh_device_domain(s->ctx, dev->dev_id, domain_id);
	return true;
}

int session_bound_devices(struct session *s,
			  int (*visit)(const char *name, uint32_t domain_id, void *), void *arg)
{
	struct bound_dev *dev;
	int rc;

	LIST_FOREACH (dev, &s->devices, link) {
		uint32_t domain_id = 0;

		(void)kh_device_domain(s->ctx, dev->dev_id, &domain_id);
		rc = visit(dev->name, domain_id, arg);
		if (rc)
			return rc;
	}
	return 0;
}

enum device_state registry_device_state(const struct registry *reg, const char *name)
{
	struct tenant *t;
	struct session *s;
	uint32_t domain_id;

	/* The backend lets one context at a time bind a device, so the first found is the one. */
	LIST_FOREACH (t, &reg->tenants, link)
		LIST_FOREACH (s, &t->sessions, link)
			if (session_device_state(s, name, &domain_id))
				return domain_id ? DEVICE_ATTACHED : DEVICE_BOUND;
	return DEVICE_FREE;
}

/* ---- domains -------------------------------------------------------------------------- */

/* The leaves the device's IOMMU supports; the smallest alone should the backend not say, which
 * only makes its mappings' parts smaller. */
static uint64_t device_page_sizes(const struct kh_backend *be, const char *device)
{
	struct kh_device_info info;
	int index = kh_device_lookup(be, device);

	if (index < 0 || kh_device_info(be, (size_t)index, &info) < 0)
		return MAP_GRANULE;
	return info.hw.page_sizes;
}

int session_alloc_domain(struct session *s, const char *device,
			 const struct kh_domain_alloc_args *args, uint32_t *domain_id)
{
	const struct access_rule *rule = s->tenant->rule;
	struct domain_rec *dom;
	uint32_t dev_id, caps = 0;
	int rc;

	if (!rule || s->tenant->used.domains >= rule->max_domains)
		return fail(
			-EDQUOT,
			"uid %u has %llu domains, its quota (max-domains in %s); free one first",
			(unsigned)s->tenant->uid, (unsigned long long)s->tenant->used.domains,
			rule ? rule->section : "the configuration");
	rc = session_device(s, device, true, &dev_id);
	if (rc < 0)
		return rc;
	dom = calloc(1, sizeof(*dom));
	if (!dom)
		return fail(-ENOMEM, "out of memory");
	rc = kh_domain_alloc(s->ctx, dev_id, args, &dom->id);
	if (rc < 0) {
		free(dom);
		return fail_kh(rc, "cannot allocate the domain");
	}
	dom->type = args->type;
	dom->page_sizes = device_page_sizes(s->tenant->reg->be, device);
	/* The domain is the one just made, so kernel-helper knows it. */
	(void)kh_domain_caps(s->ctx, dom->id, &caps);
	dom->maps_files = caps & KH_CAP_MAP_FILE;
	(void)snprintf(dom->device, sizeof(dom->device), "%s", device);
	LIST_INSERT_HEAD(&s->domains, dom, link);
	s->tenant->used.domains++;
	recharge_tables(s, dom);
	*domain_id = dom->id;
	return 0;
}

int session_free_domain(struct session *s, uint32_t domain_id)
{
	struct domain_rec *dom;
	int rc = domain_lookup(s, domain_id, &dom);

	if (rc < 0)
		return rc;
	rc = kh_domain_free(s->ctx, domain_id);
	if (rc < 0)
		return fail_kh(rc, "cannot free the domain");
	domain_rec_release(s, dom);
	return 0;
}

int session_domains(struct session *s, int (*visit)(const struct domain_view *, void *), void *arg)
{
	uint32_t last = 0;

	/* Ids only grow, so walking by the next larger id gives id order without sorting. */
	for (;;) {
		struct domain_rec *dom, *next = NULL;
		struct domain_view view;
		int rc;

		LIST_FOREACH (dom, &s->domains, link)
			if (dom->id > last && (!next || dom->id < next->id))
				next = dom;
		if (!next)
			return 0;
		view = (struct domain_view){.id = next->id,
					    .type = next->type,
					    .mappings = next->n_maps,
					    .mapped_bytes = next->bytes};
		memcpy(view.device, next->device, sizeof(view.device));
		rc = visit(&view, arg);
		if (rc)
			return rc;
		last = next->id;
	}
}

/* ---- mappings ------------------------------------------------------------------------- */

static bool is_memfd(int fd)
{
	char link[64], target[256];
	ssize_t n;

	(void)snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	return strncmp(target, "/memfd:", 7) == 0;
}

/* The file's inode flags say whether it is append-only: statx answers where the file system
 * reports the attribute (tmpfs, which has inode flags since Linux 6.0), the ioctl elsewhere. A
 * file system without inode flags (hugetlbfs) answers the ioctl with an error: none are set. */
static bool append_only(int fd, const struct statx *stx)
{
	int inode_flags = 0;

	if (stx->stx_attributes_mask & STATX_ATTR_APPEND)
		return stx->stx_attributes & STATX_ATTR_APPEND;
	if (ioctl(fd, FS_IOC_GETFLAGS, &inode_flags) < 0)
		return false;
	return inode_flags & FS_APPEND_FL;
}

static bool on_shmem_mount(const struct statx *stx)
{
	return shmem_dev_known && makedev(stx->stx_dev_major, stx->stx_dev_minor) == shmem_dev;
}

int session_check_file(int fd, struct map_file *out)
{
	struct statfs fs = {.f_type = TMPFS_MAGIC};
	struct statx stx;
	int seals, flags;

	/* Each answer but the file system's can change between requests (size, seals, inode
	 * flags) or belongs to this descriptor (its access mode), so every request asks again. */
	if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT, STATX_BASIC_STATS, &stx) < 0 ||
	    (!on_shmem_mount(&stx) && fstatfs(fd, &fs) < 0) || (flags = fcntl(fd, F_GETFL)) < 0)
		return fail(-EBADF, "the descriptor sent with the request cannot be examined (%s)",
			    strerror(errno));
	/* Every mapping lets the device read, whatever its prot. By address mmap refuses a
	 * write-only file; by descriptor IOMMU_IOAS_MAP_FILE does not check FMODE_READ, so the
	 * refusal is made here for both. */
	if ((flags & O_ACCMODE) == O_WRONLY)
		return fail(-EACCES, "the file was opened write-only, so the daemon cannot map it "
				     "for the device to read; open it read-write (or read-only "
				     "for PROT_READ mappings)");
	if (!S_ISREG(stx.stx_mode) || (fs.f_type != TMPFS_MAGIC && fs.f_type != HUGETLBFS_MAGIC))
		return fail(-EINVAL, "the descriptor sent with the request is not a memfd, tmpfs "
				     "or hugetlbfs file; create the memory with memfd_create "
				     "(iommuctl_memfd) and seal it with F_SEAL_SHRINK");
	/* Files that take no seals (tmpfs, hugetlbfs outside memfd) answer with an error. */
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		seals = 0;
	/* Only a memfd must be sealed, and a file sealed against shrinking passes whatever it
	 * is: the path that names a memfd is read only for a file without the seal, as it costs
	 * more than every other check together. */
	if (!(seals & F_SEAL_SHRINK) && is_memfd(fd))
		return fail(-EINVAL, "the memfd is not sealed against shrinking, so it could "
				     "shrink under a DMA mapping; create it with "
				     "MFD_ALLOW_SEALING and add F_SEAL_SHRINK "
				     "(fcntl F_ADD_SEALS)");
	*out = (struct map_file){
		.fd = fd,
		.dev = makedev(stx.stx_dev_major, stx.stx_dev_minor),
		.ino = stx.stx_ino,
		.size = stx.stx_size,
		.page_size = fs.f_type == HUGETLBFS_MAGIC ? (uint64_t)stx.stx_blksize : MAP_GRANULE,
		.access_mode = flags & O_ACCMODE,
		.seals = seals,
		.append_only = append_only(fd, &stx),
	};
	return 0;
}

static int check_range(const struct map_entry *e)
{
	const struct map_file *f = e->file;

	/* mmap would round a short length up to a huge page and munmap of the short length
	 * would then fail, leaving the page mapped in the daemon. */
	if (f->page_size != MAP_GRANULE && (e->offset % f->page_size || e->length % f->page_size))
		return fail(-EINVAL,
			    "on hugetlbfs, offset and length must be multiples of the huge page "
			    "size (%llu bytes)",
			    (unsigned long long)f->page_size);
	if (e->offset > f->size || e->length > f->size - e->offset)
		return fail(-ERANGE,
			    "range [0x%llx, +0x%llx) passes the end of the file (%llu bytes); grow "
			    "the file or map less",
			    (unsigned long long)e->offset, (unsigned long long)e->length,
			    (unsigned long long)f->size);
	return 0;
}

/* Maps [offset, offset+length) of the file shared, at an address aligned like the offset to the
 * largest page the range can hold: the emulated IOMMU's "physical" address is this address, so
 * only then can it use 2 MiB and 1 GiB leaves (the kernel's shmem huge pages align the same
 * way). */
static void *map_placed(int fd, uint64_t offset, uint64_t length, int prot)
{
	uint64_t align = length >= (1ull << 30)	  ? 1ull << 30
			 : length >= (2ull << 20) ? 2ull << 20
						  : MAP_GRANULE;
	uint64_t span = length + 2 * align, phase = offset & (align - 1);
	uintptr_t base, target;
	void *reserved, *va;

	if (align == MAP_GRANULE)
		return mmap(NULL, length, prot, MAP_SHARED, fd, (off_t)offset);
	reserved = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (reserved == MAP_FAILED)
		return MAP_FAILED;
	base = (uintptr_t)reserved;
	target = ((base + align - 1) & ~(uintptr_t)(align - 1)) + phase;
	va = mmap((void *)target, length, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
	/* Give back the reservation around the map: each piece a whole map of its own now. Should
	 * that fail, the whole span goes (whole maps only: no split) and so does the call. */
	if (va == MAP_FAILED || (target > base && munmap(reserved, target - base) < 0) ||
	    munmap((void *)(target + length), base + span - (target + length)) < 0) {
		int saved = errno;

		(void)munmap(reserved, span);
		errno = saved;
		return MAP_FAILED;
	}
	return va;
}

/* Why mmap refused a map of the file, said as what the client should change. */
static int map_refused(int rc)
{
	if (rc == -EACCES)
		return fail(rc, "the file was opened read-only, so the device may not write it; "
				"open it read-write or map it with PROT_READ only");
	if (rc == -EPERM)
		return fail(rc, "the file is sealed against writing (F_SEAL_WRITE or "
				"F_SEAL_FUTURE_WRITE), so the device may not write it; map it with "
				"PROT_READ only");
	return fail(rc, "cannot map the memory in the daemon: %s", strerror(-rc));
}

/* The refusals mmap would give a map from this request's descriptor, made here for both paths:
 * a map made from another descriptor of the same file is shared only with a request whose own
 * descriptor would have been allowed to make it, and IOMMU_IOAS_MAP_FILE checks none of them.
 * mmap refuses any shared map of an append-only file through a descriptor open for writing,
 * with the EACCES it gives a read-only descriptor mapped for writing. */
static int check_access(const struct map_file *f, bool writable)
{
	if (f->append_only && f->access_mode == O_RDWR)
		return fail(-EACCES,
			    "the file is append-only (chattr +a), so a descriptor open "
			    "for writing may not map it, even for reading; send a read-only "
			    "descriptor and map it with PROT_READ only");
	if (!writable)
		return 0;
	if (f->access_mode != O_RDWR)
		return map_refused(-EACCES);
	if (f->seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
		return map_refused(-EPERM);
	return 0;
}

/* Whether fm is a record for the entry's file with this access: by descriptor, or a map that
 * holds the entry's range. */
static bool file_map_fits(const struct file_map *fm, const struct map_entry *e, bool writable,
			  bool by_fd)
{
	return fm->dev == e->file->dev && fm->ino == e->file->ino && fm->writable == writable &&
	       fm->by_fd == by_fd &&
	       (by_fd ||
		(fm->start <= e->offset && e->offset + e->length <= fm->start + fm->length));
}

/* A record of the session's that fits the entry (file_map_fits). */
static struct file_map *file_map_find(struct session *s, const struct map_entry *e, bool writable,
				      bool by_fd)
{
	struct file_map *fm;

	LIST_FOREACH (fm, &s->files, link)
		if (file_map_fits(fm, e, writable, by_fd))
			return fm;
	return NULL;
}

/* The spare map, taken out of the spare's place, when it is the map plan describes (of the same
 * range of the same file, with the same access); else NULL, the spare given up. */
static struct file_map *spare_take(struct session *s, const struct file_map *plan)
{
	struct file_map *fm;

	books_lock(s->tenant->reg);
	fm = s->spare;
	if (!fm || fm->dev != plan->dev || fm->ino != plan->ino || fm->writable != plan->writable ||
	    fm->whole != plan->whole || fm->start != plan->start || fm->length != plan->length) {
		session_give_up_spare(s);
		books_unlock(s->tenant->reg);
		return NULL;
	}
	__atomic_store_n(&s->spare, NULL, __ATOMIC_RELAXED);
	count_kept(s, -1, 1, 0);
	books_unlock(s->tenant->reg);
	fm->refs = 1;
	/* Says at debug level whether a client's keep_map saves the daemon its mmaps. */
	log_about(LOG_DEBUG, s->tenant, s->lease, NULL, NULL,
		  "uid %u took up the map its session kept of a file (0x%llx bytes): no mmap",
		  (unsigned)s->tenant->uid, (unsigned long long)fm->length);
	return fm;
}

/* A new record with the daemon's mmap of the file's range that plan describes. */
static int file_map_mmap(struct session *s, int fd, const struct file_map *plan,
			 struct file_map **ret_fm)
{
	struct registry *reg = s->tenant->reg;
	struct file_map *fm;
	int rc;

	/* The spares count against no ceiling, but each is a memory map all the same. */
	books_lock(reg);
	if (reg->total.maps + reg->kept.held >= reg->ceil.max_maps)
		registry_drop_spares(reg);
	books_unlock(reg);
	fm = calloc(1, sizeof(*fm));
	if (!fm)
		return fail(-ENOMEM, "out of memory");
	*fm = *plan;
	LIST_INIT(&fm->owners);
	fm->base =
		map_placed(fd, fm->start, fm->length, PROT_READ | (fm->writable ? PROT_WRITE : 0));
	if (fm->base == MAP_FAILED) {
		/* mmap sets errno when it fails; the compiler cannot know, and a caller would read
		 * *ret_fm after a 0. */
		rc = errno > 0 ? -errno : -EIO;
		free(fm);
		return map_refused(rc);
	}
	*ret_fm = fm;
	return 0;
}

/* A new map for the entry: of the whole file while the tenant's whole-file maps stay within its
 * max-pinned, else of the entry's range alone. The session's spare serves if it is that map:
 * its size is the file's as this request found it, so a file that shrank or grew since gets a
 * new one. */
static int file_map_new(struct session *s, const struct map_entry *e, bool writable,
			struct file_map **ret_fm)
{
	const struct map_file *f = e->file;
	uint64_t whole = (f->size + f->page_size - 1) / f->page_size * f->page_size;
	struct tenant *t = s->tenant;
	struct file_map plan = {.dev = f->dev, .ino = f->ino, .writable = writable, .refs = 1};
	struct file_map *fm;
	bool full;
	int rc;

	if (t->used.maps >= t->rule->max_maps)
		return fail(
			-EDQUOT,
			"uid %u holds %llu memory maps of client files in the daemon, its quota "
			"(max-maps in %s); unmap some, or map from fewer files (a file's "
			"mappings share one map)",
			(unsigned)t->uid, (unsigned long long)t->used.maps, t->rule->section);
	/* Read alone, as the pinned ceiling is: map paths of other threads may each go one map
	 * past it (docs/architecture.md, "Threads"). */
	books_lock(t->reg);
	full = t->reg->total.maps >= t->reg->ceil.max_maps;
	books_unlock(t->reg);
	if (full)
		return fail(
			-ENOSPC,
			"the daemon holds as many memory maps of client files as its ceiling "
			"over all tenants allows (max-maps-total, below vm.max_map_count); "
			"unmap some, map from fewer files (a file's mappings share one map), or "
			"ask the administrator to raise vm.max_map_count");
	plan.whole = whole <= t->rule->max_pinned_bytes - t->whole_file_bytes;
	plan.start = plan.whole ? 0 : e->offset;
	plan.length = plan.whole ? whole : e->length;
	fm = spare_take(s, &plan);
	if (!fm && (rc = file_map_mmap(s, f->fd, &plan, &fm)) < 0)
		return rc;
	if (fm->whole)
		t->whole_file_bytes += fm->length;
	t->used.maps++;
	books_lock(t->reg);
	t->reg->total.maps++;
	books_unlock(t->reg);
	LIST_INSERT_HEAD(&s->files, fm, link);
	*ret_fm = fm;
	return 0;
}

/* The record of a file the kernel maps by descriptor: it costs the daemon no memory map, so it
 * counts against neither max-maps nor its ceiling. */
static int file_record_new(struct session *s, const struct map_entry *e, bool writable,
			   struct file_map **ret_fm)
{
	struct file_map *fm = calloc(1, sizeof(*fm));

	if (!fm)
		return fail(-ENOMEM, "out of memory");
	*fm = (struct file_map){.dev = e->file->dev,
				.ino = e->file->ino,
				.writable = writable,
				.by_fd = true,
				.refs = 1};
	LIST_INIT(&fm->owners);
	LIST_INSERT_HEAD(&s->files, fm, link);
	*ret_fm = fm;
	return 0;
}

/* A reference on a record of the session's for the entry's file with the access it needs (by_fd:
 * for the kernel to map by descriptor; else a map that holds the entry's range), made if there
 * is none. The file is checked the same either way (check_access). */
static int file_map_get(struct session *s, const struct map_entry *e, bool by_fd,
			struct file_map **ret_fm)
{
	bool writable = e->prot & KH_PROT_WRITE;
	struct file_map *fm;
	int rc = check_access(e->file, writable);

	if (rc < 0)
		return rc;
	fm = file_map_find(s, e, writable, by_fd);
	if (!fm)
		return by_fd ? file_record_new(s, e, writable, ret_fm)
			     : file_map_new(s, e, writable, ret_fm);
	fm->refs++;
	*ret_fm = fm;
	return 0;
}

static int page_tables_exhausted(const struct tenant *t)
{
	return fail(-EDQUOT,
		    "uid %u's IOMMU page tables take 0x%llx bytes of the daemon's memory, its "
		    "quota (max-page-tables, 0x%llx); unmap first, or map at fewer, denser IOVAs "
		    "(sparse IOVAs cost up to 16 KiB of tables per 4 KiB mapping)",
		    (unsigned)t->uid, (unsigned long long)t->used.page_table_bytes,
		    (unsigned long long)t->rule->max_page_table_bytes);
}

/* The daemon-wide ceiling on pinned memory, which no tenant's quota may take the daemon past
 * (that on file maps is checked where one is made). */
static int check_ceilings(struct registry *reg, uint64_t length)
{
	uint64_t pinned = __atomic_load_n(&reg->total.pinned_bytes, __ATOMIC_RELAXED);
	uint64_t max = reg->ceil.max_pinned_bytes;

	/* The total may be past the ceiling already: other threads' maps between their checks
	 * and charges (adopted leases are checked against it one by one). */
	if (max && (pinned >= max || length > max - pinned))
		return fail(
			-ENOSPC,
			"mapping 0x%llx bytes would pin more than the daemon's ceiling over all "
			"tenants (max-pinned-total, 0x%llx, set by %s); unmap memory, or ask the "
			"administrator to raise %s",
			(unsigned long long)length, (unsigned long long)reg->ceil.max_pinned_bytes,
			reg->ceil.max_pinned_from, reg->ceil.max_pinned_from);
	return 0;
}

/* The checks of an entry in a domain of the session's. */
static int check_entry_in(struct session *s, const struct map_entry *e)
{
	const struct access_rule *rule = s->tenant->rule;
	const struct usage *used = &s->tenant->used;
	int rc;

	if (!e->length || e->length % MAP_GRANULE || e->offset % MAP_GRANULE)
		return fail(-EINVAL,
			    "offset (0x%llx) and length (0x%llx) must be multiples of "
			    "%llu and the length not 0",
			    (unsigned long long)e->offset, (unsigned long long)e->length,
			    MAP_GRANULE);
	if (!e->prot || e->prot & ~(KH_PROT_READ | KH_PROT_WRITE))
		return fail(-EINVAL, "prot must be PROT_READ, PROT_WRITE or both, not %u", e->prot);
	if (e->fixed_iova && e->iova + e->length - 1 < e->iova)
		return fail(-EOVERFLOW,
			    "iova 0x%llx + length 0x%llx passes the end of the 64-bit "
			    "address space",
			    (unsigned long long)e->iova, (unsigned long long)e->length);
	if (!rule || used->mappings >= rule->max_mappings)
		return fail(-EDQUOT,
			    "uid %u has %llu mappings, its quota (max-mappings); unmap some "
			    "first",
			    (unsigned)s->tenant->uid, (unsigned long long)used->mappings);
	if (used->page_table_bytes >= rule->max_page_table_bytes)
		return page_tables_exhausted(s->tenant);
	if (e->length > rule->max_pinned_bytes - used->pinned_bytes)
		return fail(
			-EDQUOT,
			"mapping 0x%llx bytes would pin more than uid %u's quota of 0x%llx bytes "
			"(max-pinned; 0x%llx in use); unmap memory first",
			(unsigned long long)e->length, (unsigned)s->tenant->uid,
			(unsigned long long)rule->max_pinned_bytes,
			(unsigned long long)used->pinned_bytes);
	/* The tenant's own limits first: only a request that fits them learns of the ceiling. */
	rc = check_range(e);
	if (rc < 0)
		return rc;
	return check_ceilings(s->tenant->reg, e->length);
}

bool session_times_maps(const struct session *s)
{
	return s->tenant->reg->probes && probes_in_process(s->tenant->reg->probes);
}

void session_record_maps(struct session *s, uint64_t bytes, uint64_t ns, uint64_t count)
{
	probes_record_n(s->tenant->reg->probes, IOMMUD_OP_MAP, bytes, tenant_label_slot(s->tenant),
			ns, count);
}

/* The clock the daemon times its own map path with (when the backend's runs in this process);
 * 0 when it does not time it. */
static uint64_t in_process_clock(const struct session *s)
{
	return session_times_maps(s) ? monotonic_ns() : 0;
}

/* Adds the time since start (from in_process_clock) to *total_ns. */
static void in_process_add(uint64_t start, uint64_t *total_ns)
{
	if (start)
		*total_ns += monotonic_ns() - start;
}

/* The leaves are as large as they can be so that parts end at IOVAs a leaf ends at, and the
 * page tables come out as one call would make them. */
uint64_t map_part_bytes(uint64_t iova, uint64_t addr, uint64_t page_sizes, uint64_t contiguous)
{
	static const uint64_t large_leaves[] = {1ull << 30, 2ull << 20};
	uint64_t skew = iova - addr;

	for (size_t i = 0; i < sizeof(large_leaves) / sizeof(large_leaves[0]); i++)
		if (!(skew & (large_leaves[i] - 1)) && (page_sizes & large_leaves[i]) &&
		    large_leaves[i] <= contiguous)
			return MAP_PART_PAGES * large_leaves[i];
	return MAP_PART_PAGES * MAP_GRANULE;
}

void steps_resize(unsigned *parts_per_step, uint64_t took_ns, uint64_t budget_ns)
{
	if (budget_ns == UINT64_MAX || took_ns < budget_ns / 4) {
		if (*parts_per_step < MAP_PARTS_PER_STEP_MAX)
			*parts_per_step *= 2;
	} else if (took_ns > budget_ns && *parts_per_step > 1) {
		*parts_per_step /= 2;
	}
}

/* Memory the backend maps in this process is as contiguous as its address says; memory the
 * kernel pins is contiguous within its file's pages only. */
static uint64_t part_bytes(const struct session *s, const struct domain_rec *dom,
			   const struct kh_map_req *req, uint64_t page_size)
{
	return map_part_bytes(req->iova, req->addr, dom->page_sizes,
			      s->tenant->reg->maps_in_process ? UINT64_MAX : page_size);
}

/* Sets p's request for e's memory in fm. Built where it stays, and only once e is checked: e was
 * stored field by field just before, and a record built from it at once, then copied whole,
 * read those fields back in wider loads than they were stored with, which stall until the
 * stores land (every entry of a batch paid that, twice). */
static void map_req_init(struct kh_map_req *req, const struct map_entry *e,
			 const struct file_map *fm)
{
	*req = (struct kh_map_req){
		.iova = e->iova,
		.length = e->length,
		.prot = e->prot,
		.flags = e->fixed_iova ? KH_MAP_FIXED_IOVA : 0,
		.alignment = e->alignment,
	};
	if (fm->by_fd) {
		/* The kernel takes the file by descriptor (the request's, or the store's during
		 * adoption, open for the whole map): nothing of it is mapped in the daemon. */
		req->flags |= KH_MAP_FILE;
		req->fd = e->file->fd;
		req->addr = e->offset;
	} else {
		/* The backend takes memory by address; the pages stay shared with the file. */
		req->addr = (uint64_t)(uintptr_t)fm->base + (e->offset - fm->start);
	}
}

/* Starts p on e's mapping, whose owner is mo (a reference for it taken), and charges it whole
 * from the start, as checked, so that no other tenant's mapping takes what the daemon-wide
 * ceilings leave for the rest. */
static void map_begin(struct session *s, const struct map_entry *e, struct map_owner *mo,
		      struct map_progress *p)
{
	p->req.owner = mo;
	/* Field by field: clearing the whole record, its take back's with it, costs a batch of
	 * pages more than the rest of this; the take back is read only once it has steps left. */
	p->mo = mo;
	p->domain_id = e->domain_id;
	p->part = mo->part;
	p->mapped = 0;
	p->map_ns = 0;
	p->back.steps_left = false;
	p->parts_per_step = 1;
	p->timed_by_caller = false;
	charge_mapping(s, mo->dom, +1, e->length, +1);
	/* USDT probes (iommud:map_entry/map_exit): a no-op until a tracer attaches. */
	DTRACE_PROBE4(iommud, map_entry, s->tenant->uid, e->domain_id, p->req.iova, e->length);
}

int session_map_start(struct session *s, struct map_entry *e, struct map_progress *p)
{
	bool in_parts = e->length > MAP_PART_PAGES * MAP_GRANULE;
	struct kh_map_req *req = &p->req;
	struct map_owner *mo;
	struct domain_rec *dom;
	struct file_map *fm;
	int rc;

	if ((rc = domain_lookup(s, e->domain_id, &dom)) < 0 || (rc = check_entry_in(s, e)) < 0 ||
	    (rc = file_map_get(s, e, dom->maps_files, &fm)) < 0)
		return rc;
	map_req_init(req, e, fm);
	/* Made in parts, the mapping is placed and checked whole first, as one call would. */
	if (in_parts && (rc = kh_place(s->ctx, e->domain_id, req)) < 0) {
		file_map_put(s, fm);
		return fail_kh(rc, "cannot map");
	}
	rc = map_owner_get(s, fm, dom, in_parts ? part_bytes(s, dom, req, e->file->page_size) : 0,
			   &mo);
	if (rc < 0)
		return rc;
	map_begin(s, e, mo, p);
	return 0;
}

void session_map_abort(struct session *s, struct map_progress *p)
{
	struct map_owner *mo = p->mo;
	struct domain_rec *dom = mo->dom;

	/* What was not mapped is given back now; what was is one mapping, taken back in steps
	 * like any other, and its release gives back the rest and frees the owner. */
	charge_mapping(s, dom, p->mapped ? 0 : -1, p->req.length - p->mapped, -1);
	p->mo = NULL;
	p->like = NULL;
	p->back = (struct unmap_progress){0};
	if (!p->mapped) {
		map_owner_put(s, mo, 1);
		return;
	}
	if (session_unmap_start(s, p->domain_id, p->req.iova, p->mapped, false, &p->back) < 0)
		log_about(LOG_ERR, s->tenant, s->lease, &p->domain_id, NULL,
			  "uid %u: cannot take back [0x%llx, +0x%llx) of a map that failed in "
			  "domain %u: %s",
			  (unsigned)s->tenant->uid, (unsigned long long)p->req.iova,
			  (unsigned long long)p->mapped, p->domain_id, failure_message());
}

/* Maps the next step's parts of the mapping: 0 when done, 1 with more to map. */
static int map_part(struct session *s, struct map_progress *p)
{
	struct kh_map_req part = p->req;
	uint64_t at = p->req.iova + p->mapped, start;
	int rc;

	if (p->part) {
		uint64_t step = p->part * p->parts_per_step;

		part.iova = at;
		part.addr += p->mapped;
		part.length = step - at % step;
		if (part.length > p->req.length - p->mapped)
			part.length = p->req.length - p->mapped;
		part.flags |= KH_MAP_FIXED_IOVA | (p->mapped ? KH_MAP_EXTEND : 0);
	}
	start = p->timed_by_caller ? 0 : in_process_clock(s);
	rc = kh_map(s->ctx, p->domain_id, &part);
	in_process_add(start, &p->map_ns);
	if (rc < 0)
		return fail_kh(rc, "cannot map");
	charge_tables(s, p->mo->dom, part.table_bytes);
	if (!p->mapped)
		p->req.iova = part.iova;
	p->mapped += part.length;
	return p->mapped < p->req.length;
}

/* What follows a step that gave rc (map_part's, or a negative errno): a failed mapping is taken
 * back; one done is said so, and its owner kept for the next (p->like) where made in one call.
 * Returns rc, or a failure the tables' quota found. */
static int map_step_end(struct session *s, struct map_progress *p, int rc)
{
	/* Only the map shows what its tables cost: take it back (its memory with it). */
	if (rc >= 0 && s->tenant->used.page_table_bytes > s->tenant->rule->max_page_table_bytes)
		rc = page_tables_exhausted(s->tenant);
	if (rc < 0) {
		DTRACE_PROBE4(iommud, map_exit, s->tenant->uid, p->domain_id, p->req.iova, rc);
		/* The failure's message stays the one to reply with. */
		session_map_abort(s, p);
		return rc;
	}
	if (rc)
		return 1;
	if (p->map_ns)
		session_record_maps(s, p->req.length, p->map_ns, 1);
	DTRACE_PROBE4(iommud, map_exit, s->tenant->uid, p->domain_id, p->req.iova, 0);
	p->like = p->part ? NULL : p->mo;
	p->mo = NULL;
	log_about(LOG_DEBUG, s->tenant, s->lease, &p->domain_id, NULL,
		  "uid %u mapped [0x%llx, +0x%llx) in domain %u", (unsigned)s->tenant->uid,
		  (unsigned long long)p->req.iova, (unsigned long long)p->req.length, p->domain_id);
	return 0;
}

int session_map_step(struct session *s, struct map_progress *p)
{
	return map_step_end(s, p, map_part(s, p));
}

/* The owner of the mapping p made last, where e's is of its domain and file and made in one
 * call as that one was: then it is e's owner too. */
static struct map_owner *like_last(const struct map_progress *p, const struct map_entry *e)
{
	struct map_owner *mo = p->like;

	if (!mo || e->length > MAP_PART_PAGES * MAP_GRANULE || mo->dom->id != e->domain_id ||
	    !file_map_fits(mo->file, e, e->prot & KH_PROT_WRITE, mo->dom->maps_files))
		return NULL;
	return mo;
}

int session_map_like(struct session *s, const struct map_entry *e, struct map_progress *p)
{
	struct map_owner *mo = like_last(p, e);
	int rc;

	if (!mo)
		return 1;
	/* session_map_start's checks, in its order, less the lookups whose answers mo holds. */
	if ((rc = check_entry_in(s, e)) < 0 ||
	    (rc = check_access(e->file, e->prot & KH_PROT_WRITE)) < 0)
		return rc;
	map_req_init(&p->req, e, mo->file);
	mo->refs++;
	map_begin(s, e, mo, p);
	/* map_part's one call, on the request itself, which no later part needs as it was. */
	rc = kh_map(s->ctx, e->domain_id, &p->req);
	if (rc < 0) {
		rc = fail_kh(rc, "cannot map");
	} else {
		charge_tables(s, mo->dom, p->req.table_bytes);
		p->mapped = p->req.length;
	}
	return map_step_end(s, p, rc);
}

int session_map(struct session *s, struct map_entry *e)
{
	struct map_progress p = {.like = NULL};
	int rc = session_map_start(s, e, &p);

	if (rc < 0)
		return rc;
	p.parts_per_step = MAP_PARTS_PER_STEP_MAX;
	do
		rc = session_map_step(s, &p);
	while (rc > 0);
	if (rc == 0)
		e->iova = p.req.iova;
	while (rc < 0 && p.back.steps_left && session_unmap_step(s, &p.back) > 0)
		;
	return rc;
}

/* ---- unmapping in steps ------------------------------------------------------------------ */

/* Whether the mappings in p's range can be taken away in steps: something starts inside it and
 * nothing reaches into it from outside, the checks kh_unmap makes before it removes anything.
 * kernel-helper finds the mapping around an IOVA only when removing, so the ends are asked as
 * removals that cannot succeed: of the gap below the first mapping inside (which only a mapping
 * from below can overlap) and of the byte after the range (mapped only if a mapping covers it,
 * which reaches into the range unless it starts there). Each fails, removing nothing, at the
 * cost of kernel-helper's error message; the end needs no asking where the only mapping that
 * starts inside ends inside too (a mapping from below reaching past the end would overlap it),
 * the common unmap of one mapping. */
static bool unmappable_in_steps(struct session *s, const struct unmap_progress *p)
{
	struct kh_mapping m[2];
	int n = kh_mappings(s->ctx, p->domain_id, p->iova, m, 2);

	if (n < 1 || m[0].iova > p->last)
		return false;
	/* From IOVA 0 (UnmapAll), nothing can start below. */
	if (m[0].iova > p->iova && p->iova &&
	    kh_unmap(s->ctx, p->domain_id, p->iova, m[0].iova - p->iova, NULL) != -ENOENT)
		return false;
	if ((n == 1 || m[1].iova > p->last) && m[0].iova + m[0].length - 1 <= p->last)
		return true;
	return p->last == UINT64_MAX ||
	       kh_unmap(s->ctx, p->domain_id, p->last + 1, 1, NULL) == -ENOENT ||
	       (kh_mappings(s->ctx, p->domain_id, p->last + 1, m, 1) == 1 &&
		m[0].iova == p->last + 1);
}

/* Accounts for a removal of bytes by kernel-helper that began at start (in_process_clock) and
 * returned rc. kernel-helper releases each removed mapping (mapping_release) as it forgets it,
 * so the in-process unmap time includes the daemon's munmap of each range, as the kernel's
 * iommufd unmap includes unpinning; the map time leaves the mmap out (it is the client's
 * memory, reached before the backend runs). */
static int unmap_counted(struct session *s, struct domain_rec *dom, struct unmap_progress *p,
			 uint64_t start, uint64_t bytes, int rc)
{
	in_process_add(start, &p->unmap_ns);
	recharge_tables(s, dom);
	p->bytes += bytes;
	return rc < 0 ? fail_kh(rc, "cannot unmap") : 0;
}

/* Removes [iova, iova+length), whole mappings, in one kernel-helper call. */
static int unmap_whole(struct session *s, struct domain_rec *dom, struct unmap_progress *p,
		       uint64_t iova, uint64_t length)
{
	uint64_t bytes = 0, start = in_process_clock(s);
	int rc;

	releases_gather(s);
	rc = kh_unmap(s->ctx, p->domain_id, iova, length, &bytes);
	releases_settle(s);
	return unmap_counted(s, dom, p, start, bytes, rc);
}

/* Where the last step of m starts: a mapping made in parts is taken back from its end, parts
 * parts at a time (from an IOVA aligned to their bytes); m's own IOVA once it is no more. */
static uint64_t last_step(const struct kh_mapping *m, unsigned parts)
{
	uint64_t step = ((const struct map_owner *)m->owner)->part * parts;
	uint64_t tail = step ? (m->iova + m->length - 1) / step * step : m->iova;

	return tail > m->iova ? tail : m->iova;
}

/* Takes the last step's parts off m, a mapping longer than them. */
static int unmap_tail(struct session *s, struct domain_rec *dom, struct unmap_progress *p,
		      const struct kh_mapping *m)
{
	uint64_t end = m->iova + m->length, tail = last_step(m, p->parts_per_step);
	uint64_t start = in_process_clock(s);
	int rc;

	rc = kh_unmap_tail(s->ctx, p->domain_id, tail, end - tail, &tail);
	in_process_add(start, &p->unmap_ns);
	/* The kernel holds it as one piece (made whole, or before a restart): it goes whole. */
	if (rc == -ENOENT)
		return unmap_whole(s, dom, p, m->iova, m->length);
	if (rc < 0)
		return fail_kh(rc, "cannot unmap");
	charge_mapping(s, dom, 0, end - tail, -1);
	recharge_tables(s, dom);
	p->bytes += end - tail;
	return 0;
}

/* The leaves of a mapping that is no longer than a step, as the step's measure of work. */
static uint64_t leaves_of(const struct kh_mapping *m)
{
	uint64_t part = ((const struct map_owner *)m->owner)->part;

	return m->length / (part ? part / MAP_PART_PAGES : MAP_GRANULE);
}

/* The steps are done (rc 0) or failed: the unmap's figures and probes. */
static int unmap_end(struct session *s, struct domain_rec *dom, struct unmap_progress *p, int rc)
{
	p->steps_left = false;
	p->count = p->maps_before - dom->n_maps;
	DTRACE_PROBE4(iommud, unmap_exit, s->tenant->uid, p->domain_id, p->bytes, rc);
	if (rc < 0)
		return rc;
	if (p->unmap_ns)
		probes_record(s->tenant->reg->probes, IOMMUD_OP_UNMAP, p->bytes,
			      tenant_label_slot(s->tenant), p->unmap_ns);
	log_about(LOG_DEBUG, s->tenant, s->lease, &p->domain_id, NULL,
		  "uid %u unmapped %u mappings in domain %u in %u steps", (unsigned)s->tenant->uid,
		  p->count, p->domain_id, p->steps);
	return 0;
}

int session_unmap_start(struct session *s, uint32_t domain_id, uint64_t iova, uint64_t length,
			bool keep_view, struct unmap_progress *p)
{
	bool all = iova == 0 && length == UINT64_MAX;
	struct domain_rec *dom;
	int rc = domain_lookup(s, domain_id, &dom);

	if (rc < 0)
		return rc;
	*p = (struct unmap_progress){.domain_id = domain_id,
				     .iova = iova,
				     .last = all ? UINT64_MAX : iova + length - 1,
				     .maps_before = dom->n_maps,
				     .keep_view = keep_view,
				     .parts_per_step = 1};
	/* Nothing to remove is no error for UnmapAll, whatever the domain's type. */
	if (all && !dom->n_maps)
		return 0;
	DTRACE_PROBE4(iommud, unmap_entry, s->tenant->uid, domain_id, iova, length);
	if ((all || (length && p->last >= iova)) && unmappable_in_steps(s, p)) {
		p->steps_left = true;
		return 1;
	}
	/* The call fails, as the steps would have, or removes whatever it may at once. */
	p->steps = 1;
	return unmap_end(s, dom, p, unmap_whole(s, dom, p, iova, length));
}

/* Whether the removal is UnmapAll's, of every mapping of the domain. */
static bool removes_all(const struct unmap_progress *p)
{
	return p->iova == 0 && p->last == UINT64_MAX;
}

/* A step's run of whole mappings (kh_unmap_run's take): from the first left in the range, those
 * no longer than a step, as many as make a step's leaves; a mapping longer than a step, first,
 * is taken from its tail instead. */
struct step_run {
	const struct unmap_progress *p;
	struct session *s;
	bool first_of_unmap; /* no mapping of the range has gone yet */
	uint64_t leaves;
	bool tail_first; /* the first is longer than a step: first_mapping */
	struct kh_mapping first_mapping;
};

static bool take_in_step(const struct kh_mapping *m, size_t taken, void *arg)
{
	struct step_run *run = arg;
	uint64_t budget = (uint64_t)MAP_PART_PAGES * run->p->parts_per_step;

	/* Where asked, an Unmap's one mapping keeps its file map: the first of the range, the
	 * last too unless another turns up here. An UnmapAll keeps every map it leaves unused,
	 * each in turn, so the last stays. */
	run->s->keeping_released =
		run->p->keep_view && (removes_all(run->p) || (!taken && run->first_of_unmap));
	if (last_step(m, run->p->parts_per_step) > m->iova) {
		run->tail_first = !taken;
		run->first_mapping = *m;
		return false;
	}
	if (taken && run->leaves + leaves_of(m) > budget)
		return false;
	run->leaves += leaves_of(m);
	return true;
}

/* Removes the step's run, in one walk of kernel-helper's records: how many went, and in *more
 * whether any mapping of the range is left after them. */
static int unmap_run(struct session *s, struct domain_rec *dom, struct unmap_progress *p,
		     struct step_run *run, size_t *count, bool *more)
{
	uint64_t bytes, start = in_process_clock(s);
	int rc;

	releases_gather(s);
	rc = kh_unmap_run(s->ctx, p->domain_id, p->iova, p->last, take_in_step, run, &bytes, count,
			  more);
	releases_settle(s);
	s->keeping_released = false;
	return unmap_counted(s, dom, p, start, bytes, rc);
}

int session_unmap_step(struct session *s, struct unmap_progress *p)
{
	struct domain_rec *dom;
	struct step_run run = {.p = p, .s = s};
	size_t count = 0;
	bool more = false;
	int rc = domain_lookup(s, p->domain_id, &dom);

	/* The tenant's requests wait for this one, so its domain stays; checked all the same. */
	if (rc < 0) {
		p->steps_left = false;
		return rc;
	}
	p->steps++;
	/* A step with room for every page the domain still maps, each as a leaf of its own at
	 * most, takes them all in one call, as kh_unmap would: asking take_in_step about each
	 * mapping would only say yes to each. */
	if (removes_all(p) && dom->n_maps &&
	    dom->bytes / MAP_GRANULE <= (uint64_t)MAP_PART_PAGES * p->parts_per_step) {
		s->keeping_released = p->keep_view;
		rc = unmap_whole(s, dom, p, 0, UINT64_MAX);
		s->keeping_released = false;
		return unmap_end(s, dom, p, rc);
	}
	/* What went before is gone, so the range's first mapping left is the next to take. */
	run.first_of_unmap = dom->n_maps == p->maps_before;
	rc = unmap_run(s, dom, p, &run, &count, &more);
	if (rc == 0 && run.tail_first)
		rc = unmap_tail(s, dom, p, &run.first_mapping);
	/* A range this step emptied is done now: a step more would only find that out, at the
	 * cost of a walk of the IOAS and its clock reads (an Unmap of one small mapping, a
	 * client's per-I/O unmap, is one step). */
	if (rc < 0 || (!run.tail_first && (!count || !more)))
		return unmap_end(s, dom, p, rc);
	return 1;
}

int session_unmap(struct session *s, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t *bytes, uint32_t *count)
{
	struct unmap_progress p;
	int rc = session_unmap_start(s, domain_id, iova, length, false, &p);

	p.parts_per_step = MAP_PARTS_PER_STEP_MAX;
	while (rc > 0)
		rc = session_unmap_step(s, &p);
	if (rc < 0)
		return rc;
	*bytes = p.bytes;
	*count = p.count;
	return 0;
}

int session_mappings(struct session *s, uint32_t domain_id, uint64_t from, struct mapping_view *out,
		     size_t max, bool *more)
{
	struct kh_mapping *page;
	struct domain_rec *dom;
	int n, rc = domain_lookup(s, domain_id, &dom);

	if (rc < 0)
		return rc;
	/* Also answers for domains without an address space, which kernel-helper refuses. */
	if (!dom->n_maps) {
		*more = false;
		return 0;
	}
	/* One more than asked for says whether there are more. */
	page = calloc(max + 1, sizeof(*page));
	if (!page)
		return fail(-ENOMEM, "out of memory");
	n = kh_mappings(s->ctx, domain_id, from, page, max + 1);
	if (n < 0) {
		free(page);
		return fail_kh(n, "cannot list the mappings");
	}
	*more = (size_t)n > max;
	if (*more)
		n = (int)max;
	/* A mapping that starts below from but reaches into it is the previous page's last. */
	for (int i = 0; i < n; i++)
		out[i] = (struct mapping_view){
			.iova = page[i].iova,
			.length = page[i].length,
			.offset = mapping_offset(&page[i]),
			.prot = page[i].prot,
			.dev = ((const struct map_owner *)page[i].owner)->file->dev,
			.ino = ((const struct map_owner *)page[i].owner)->file->ino,
		};
	free(page);
	return n;
}
