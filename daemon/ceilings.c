// SPDX-License-Identifier: MIT
#include "ceilings.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"

/* The kernel's default vm.max_map_count, for a kernel that does not show it. */
#define DEFAULT_MAX_MAP_COUNT 65530
/* A leases' share of the open files: each lease may hold its context's descriptor and its
 * devices', and the rest stays for connections and the descriptors requests carry. */
#define LEASE_FD_SHARE 4
/* However many files the daemon may open: a lease holds a context and its memory too. */
#define LEASES_CAP	 4096
#define CAP_IPC_LOCK_BIT 14
/* The state record, and its next generation, stored before the old one is removed. */
#define RECORD_SLOTS 2

static uint64_t read_number(const char *path, uint64_t fallback)
{
	unsigned long long value;
	FILE *file = fopen(path, "re");
	int n;

	if (!file)
		return fallback;
	n = fscanf(file, "%llu", &value);
	(void)fclose(file);
	return n == 1 ? value : fallback;
}

static uint64_t maps_in_use(void)
{
	FILE *maps = fopen("/proc/self/maps", "re");
	uint64_t lines = 0;
	int c;

	if (!maps)
		return 0;
	while ((c = fgetc(maps)) != EOF)
		lines += c == '\n';
	(void)fclose(maps);
	return lines;
}

/* The maps of client files all tenants may have the daemon hold: vm.max_map_count less the maps
 * the daemon holds now and an eighth of the limit kept for its own later allocations (libraries'
 * and the allocator's maps) and the two transient maps of a file map's placement (one at a
 * time). */
static uint64_t maps_ceiling(void)
{
	uint64_t limit = read_number("/proc/sys/vm/max_map_count", DEFAULT_MAX_MAP_COUNT);
	uint64_t held = maps_in_use(), headroom = limit / 8;

	if (limit <= held + headroom) {
		log_warning("vm.max_map_count (%" PRIu64 ") leaves no room for file maps beside "
			    "the daemon's own %" PRIu64 " maps; raise it (sysctl vm.max_map_count)",
			    limit, held);
		return 1;
	}
	return limit - held - headroom;
}

uint64_t ceilings_open_files(void)
{
	struct rlimit files;

	if (getrlimit(RLIMIT_NOFILE, &files) < 0 || files.rlim_cur == RLIM_INFINITY)
		return UINT64_MAX;
	return files.rlim_cur;
}

static uint64_t leases_ceiling(uint64_t open_files)
{
	uint64_t share;

	if (open_files == UINT64_MAX)
		return LEASES_CAP;
	share = open_files / LEASE_FD_SHARE;
	return share < LEASES_CAP ? (share ? share : 1) : LEASES_CAP;
}

static bool has_ipc_lock(void)
{
	FILE *status = fopen("/proc/self/status", "re");
	unsigned long long effective = 0;
	char line[256];
	bool found = false;

	if (!status)
		return false;
	while (!found && fgets(line, sizeof(line), status))
		found = sscanf(line, "CapEff: %llx", &effective) == 1;
	(void)fclose(status);
	return effective & (1ull << CAP_IPC_LOCK_BIT);
}

/* A backend that pins in the kernel (iommufd, VFIO type1) has the kernel charge pinned pages to
 * the pinning process's RLIMIT_MEMLOCK unless it has CAP_IPC_LOCK; the emulated backend pins
 * nothing. */
static uint64_t pinned_ceiling(bool pins_in_kernel)
{
	struct rlimit locked;

	if (!pins_in_kernel || has_ipc_lock() || getrlimit(RLIMIT_MEMLOCK, &locked) < 0 ||
	    locked.rlim_cur == RLIM_INFINITY)
		return 0;
	return (uint64_t)locked.rlim_cur;
}

/* The configured value where it is lower than the derived one (or there is none), else the
 * derived one; says so when the configuration asked for more than the kernel allows. */
static uint64_t lowered(const char *key, uint64_t configured, uint64_t derived, const char *from)
{
	if (!configured)
		return derived;
	if (derived && configured > derived) {
		log_warning("%s = %" PRIu64 " is above what %s allows; using %" PRIu64, key,
			    configured, from, derived);
		return derived;
	}
	return configured;
}

static void warn_reaching(const char *section, const char *quota, uint64_t value,
			  const char *ceiling, uint64_t limit)
{
	if (limit && value >= limit)
		log_warning("[%s]: %s = %" PRIu64 " reaches %s (%" PRIu64 ") alone, so one tenant "
			    "of the section can deny every other tenant; lower it",
			    section, quota, value, ceiling, limit);
}

/* The ceilings bound all tenants together: a section's quota must leave others a share. */
static void warn_quotas_reaching(const struct config *cfg, const struct ceilings *ceil)
{
	for (size_t i = 0; i < cfg->n_rules; i++) {
		const struct access_rule *rule = &cfg->rules[i];

		warn_reaching(rule->section, "max-maps", rule->max_maps, "max-maps-total",
			      ceil->max_maps);
		warn_reaching(rule->section, "max-leases", rule->max_leases, "max-leases-total",
			      ceil->max_leases);
		warn_reaching(rule->section, "max-pinned", rule->max_pinned_bytes,
			      "max-pinned-total", ceil->max_pinned_bytes);
	}
}

void ceilings_compute(const struct config *cfg, bool pins_in_kernel, uint64_t open_files,
		      struct ceilings *ret)
{
	*ret = (struct ceilings){
		.max_maps = lowered("max-maps-total", cfg->max_maps_total, maps_ceiling(),
				    "vm.max_map_count"),
		.max_leases = lowered("max-leases-total", cfg->max_leases_total,
				      leases_ceiling(open_files), "the open-file limit"),
		.max_pinned_bytes = lowered("max-pinned-total", cfg->max_pinned_total,
					    pinned_ceiling(pins_in_kernel), "RLIMIT_MEMLOCK"),
	};
	/* Which one the lower was, so that a refusal names what to raise. */
	ret->max_pinned_from =
		cfg->max_pinned_total && ret->max_pinned_bytes == cfg->max_pinned_total
			? "max-pinned-total in the configuration"
			: "the daemon's RLIMIT_MEMLOCK (LimitMEMLOCK)";
	log_info("ceilings over all tenants: %" PRIu64 " file maps, %" PRIu64 " leases, "
		 "pinned bytes %" PRIu64 " (0: no limit)",
		 ret->max_maps, ret->max_leases, ret->max_pinned_bytes);
	warn_quotas_reaching(cfg, ret);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* a + b, or UINT64_MAX where that does not fit; likewise a * b. */
static uint64_t sum_capped(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t product_capped(uint64_t a, uint64_t b)
{
	return b && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

/* What one lease may hold at most that the store keeps a descriptor of, the largest any
 * section that may hold leases grants (0 when none may): the memory files its mappings use
 * (each backs at least one of them, and its tenant's mappings are bounded by max-mappings;
 * where the daemon maps files itself, each also holds one of the tenant's max-maps), and its
 * domains (a backend may keep a kernel descriptor per domain: vfio-type1's containers). */
struct lease_most {
	uint64_t files;
	uint64_t domains;
};

static struct lease_most lease_most(const struct config *cfg, bool maps_by_fd)
{
	struct lease_most most = {0, 0};

	for (size_t i = 0; i < cfg->n_rules; i++) {
		const struct access_rule *rule = &cfg->rules[i];
		uint64_t files = maps_by_fd ? rule->max_mappings
					    : min_u64(rule->max_mappings, rule->max_maps);

		if (rule->access != ACCESS_WRITE || !rule->max_leases)
			continue;
		most.files = files > most.files ? files : most.files;
		most.domains = rule->max_domains > most.domains ? rule->max_domains : most.domains;
	}
	return most;
}

/* Whether any section lets its tenants hold a lease: a lease's first recorded call stores its
 * context whatever it may do after. */
static bool leases_allowed(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_rules; i++)
		if (cfg->rules[i].access > ACCESS_NONE && cfg->rules[i].max_leases)
			return true;
	return false;
}

uint64_t ceilings_store_slots(const struct config *cfg, const struct ceilings *ceil,
			      const struct store_backend *be)
{
	uint64_t leases = leases_allowed(cfg) ? ceil->max_leases : 0, files, kernel = 0, slots;
	struct lease_most most = lease_most(cfg, be->maps_by_fd);

	files = product_capped(leases, most.files);
	if (!be->maps_by_fd)
		files = min_u64(files, ceil->max_maps);
	/* As many again for files no mapping uses any more: those leave the store with the next
	 * snapshot, which waits while another lease's batch is between slices. Headroom, not a
	 * bound: a lease unmapping and mapping new files faster than snapshots come could pass
	 * it, and is then refused (a Map needing room) until one is written. */
	files = product_capped(files, 2);
	/* A device is bound by one context at a time, so all leases together store at most one
	 * descriptor per device. Each lease's context and each of its domains may hold one more
	 * (iommufd keeps the context's, vfio-type1 each domain's): both counted, an upper bound
	 * for either. */
	if (be->kernel_fds && leases)
		kernel = sum_capped(sum_capped(leases, be->n_devices),
				    product_capped(leases, most.domains));
	/* A delegation holds one device at least, and is always a lease's. */
	if (be->delegates && leases)
		kernel = sum_capped(kernel, be->n_devices);
	slots = sum_capped(sum_capped(RECORD_SLOTS, kernel), sum_capped(files, be->anon_fds));
	return min_u64(slots, be->open_files);
}
