// SPDX-License-Identifier: MIT
/* What ceilings_store_slots counts for a backend the host may not have: kernel descriptors
 * stored (iommufd takes leases over) and files mapped by descriptor (Linux 6.13 and later),
 * without a daemon. */
#include <stdint.h>

#include "ceilings.h"
#include "harness.h"

#define LEASES	 8
#define DEVICES	 3
#define MAPPINGS 100
#define MAPS	 40
#define DOMAINS	 2

/* One section that may hold leases and map, one that may only read. */
static struct access_rule rules[] = {
	{.section = "uid 0",
	 .access = ACCESS_WRITE,
	 .max_mappings = MAPPINGS,
	 .max_maps = MAPS,
	 .max_domains = DOMAINS,
	 .max_leases = 4},
	{.section = "uid 1", .access = ACCESS_READ, .max_leases = 4},
};
static const struct config cfg = {.rules = rules, .n_rules = 2};
static const struct ceilings limits = {.max_maps = 1000000, .max_leases = LEASES};

/* Each lease's context, each of its domains and each device, one descriptor a device however
 * many leases; where devices are delegated, one VMM's pidfd a device at most. */
TEST(kernel_descriptors_per_lease_and_device)
{
	struct store_backend kernel = {
		.kernel_fds = true, .n_devices = DEVICES, .open_files = UINT64_MAX};
	struct store_backend none = kernel;

	none.kernel_fds = false;
	CHECK_EQ(ceilings_store_slots(&cfg, &limits, &none), 2 + 2 * LEASES * MAPS);
	CHECK_EQ(ceilings_store_slots(&cfg, &limits, &kernel),
		 2 + LEASES + DEVICES + LEASES * DOMAINS + 2 * LEASES * MAPS);
	kernel.delegates = true;
	CHECK_EQ(ceilings_store_slots(&cfg, &limits, &kernel),
		 2 + LEASES + 2 * DEVICES + LEASES * DOMAINS + 2 * LEASES * MAPS);
}

/* A file the kernel maps costs no daemon map: max-maps and its ceiling bound nothing. */
TEST(files_mapped_by_descriptor)
{
	struct store_backend by_fd = {.maps_by_fd = true, .open_files = UINT64_MAX};
	struct ceilings few_maps = limits;

	few_maps.max_maps = 10;
	CHECK_EQ(ceilings_store_slots(&cfg, &few_maps, &by_fd), 2 + 2 * LEASES * MAPPINGS);
	by_fd.maps_by_fd = false;
	CHECK_EQ(ceilings_store_slots(&cfg, &few_maps, &by_fd), 2 + 2 * 10);
}

/* A read-only section's leases store their contexts, no files; sums past 64 bits stop at the
 * open-file limit. */
TEST(readers_and_limits)
{
	struct store_backend kernel = {
		.kernel_fds = true, .maps_by_fd = true, .open_files = UINT64_MAX};
	struct access_rule reader = rules[1], huge = rules[0];
	struct config readers = {.rules = &reader, .n_rules = 1};
	struct config many = {.rules = &huge, .n_rules = 1};
	struct ceilings all = {.max_leases = UINT64_MAX};

	CHECK_EQ(ceilings_store_slots(&readers, &limits, &kernel), 2 + LEASES);
	huge.max_mappings = UINT64_MAX;
	CHECK_EQ(ceilings_store_slots(&many, &all, &kernel), UINT64_MAX);
	kernel.open_files = 524288;
	CHECK_EQ(ceilings_store_slots(&many, &all, &kernel), 524288);
}

/* Anonymous sessions' descriptors count apart from the leases': where no lease is allowed. */
TEST(anonymous_sessions_apart_from_leases)
{
	struct store_backend anon = {
		.kernel_fds = true, .n_devices = DEVICES, .anon_fds = 5, .open_files = UINT64_MAX};
	struct access_rule no_leases = rules[0];
	struct config none = {.rules = &no_leases, .n_rules = 1};

	no_leases.max_leases = 0;
	CHECK_EQ(ceilings_store_slots(&none, &limits, &anon), 2 + 5);
}
