/* SPDX-License-Identifier: MIT */
/*
 * Ceilings on what tenants hold, seen through the socket: the daemon-wide ceilings derived from
 * the kernel's limits (and lowered by the configuration) refuse every tenant's Map or lease once
 * reached; leases and the emulated IOMMU's page tables are charged to their tenant's quota; and
 * GetStats shows a peer that is no observer its own tenant's figures only.
 */
#define _GNU_SOURCE /* F_ADD_SEALS */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"

#define PAGE	      4096ull
#define OTHER_UID     65534u /* a second writer, in a section of its own */
#define STRANGER_UID  65533u /* in no section */
#define BYSTANDER_UID 65532u /* in no section either: the stranger's label, "other" */

static struct daemon_fixture daemon_under_test;

static void succeeds(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

/* A refusal with the code, whose message names what to change. */
static void refused(struct iommuctl *c, int rc, Iommud__V1__Code code, const char *names)
{
	if (rc >= 0 || iommuctl_last_code(c) != code || !strstr(iommuctl_last_error(c), names)) {
		(void)fprintf(stderr, "expected %s naming '%s', got %d (%s: %s)\n",
			      iommuctl_code_name(code), names, rc,
			      iommuctl_code_name(iommuctl_last_code(c)), iommuctl_last_error(c));
		abort();
	}
}

/* A refusal that tells a tenant no figure of what other tenants hold: neither a count "in use"
 * nor the figure itself. */
static void tells_no_usage(struct iommuctl *c, const char *figure)
{
	const char *message = iommuctl_last_error(c);

	if (strstr(message, "in use") || strstr(message, figure)) {
		(void)fprintf(stderr, "the refusal tells what all tenants hold ('%s'): %s\n",
			      figure, message);
		abort();
	}
}

static struct iommuctl *connect_with(const char *lease, Iommud__V1__HelloReply **hello)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	succeeds(c, iommuctl_hello(c, "test_ceilings", lease, hello), "Hello");
	return c;
}

static Iommud__V1__HelloReply *hello_of(void)
{
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c = connect_with(NULL, &hello);

	iommuctl_close(c);
	CHECK(hello->ceilings != NULL);
	return hello;
}

static Iommud__V1__GetStatsReply *stats_of(struct iommuctl *c)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__GetStatsReply *reply;
	Iommud__V1__Response *resp;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	succeeds(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "GetStats");
	reply = resp->get_stats;
	resp->get_stats = NULL;
	resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
	iommuctl_response_free(resp);
	return reply;
}

static uint32_t paging_domain(struct iommuctl *c, const char *device)
{
	uint32_t dom;

	succeeds(c, iommuctl_alloc_domain(c, device, IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		 "AllocDomain");
	return dom;
}

static int map_page(struct iommuctl *c, uint32_t dom, int mem, uint64_t iova)
{
	return iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova);
}

/* ---- mappings: below vm.max_map_count ------------------------------------------------ */

static uint64_t max_map_count(void)
{
	unsigned long long value = 0;
	FILE *file = fopen("/proc/sys/vm/max_map_count", "r");

	CHECK(file != NULL);
	CHECK(fscanf(file, "%llu", &value) == 1);
	(void)fclose(file);
	return value;
}

static uint64_t daemon_maps(void)
{
	char path[64];
	uint64_t lines = 0;
	FILE *maps;
	int c;

	(void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)daemon_under_test.pid);
	CHECK((maps = fopen(path, "r")) != NULL);
	while ((c = fgetc(maps)) != EOF)
		lines += c == '\n';
	(void)fclose(maps);
	return lines;
}

/* Unconfigured, and configured above what the kernel allows: the ceiling leaves room for the
 * daemon's own maps below vm.max_map_count. */
TEST(maps_ceiling_derived_from_max_map_count)
{
	static const char *const configs[] = {"", "max-maps-total = 1T\n"};

	for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++) {
		Iommud__V1__HelloReply *hello;

		fixture_start(&daemon_under_test, configs[i], "emu0");
		hello = hello_of();
		CHECK(hello->ceilings->max_maps > 0);
		CHECK(hello->ceilings->max_maps + daemon_maps() < max_map_count());
		CHECK(hello->ceilings->max_leases > 0);
		iommud__v1__hello_reply__free_unpacked(hello, NULL);
		fixture_stop(&daemon_under_test);
	}
}

static int map_refused_at_ceiling(void *arg)
{
	struct iommuctl *c = connect_with(NULL, NULL);
	int mem = iommuctl_memfd("ceiling", PAGE);

	(void)arg;
	CHECK_OK(mem);
	refused(c, map_page(c, paging_domain(c, "emu1"), mem, 0),
		IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED, "max-maps-total");
	tells_no_usage(c, "holds 3");
	(void)close(mem);
	iommuctl_close(c);
	return 0;
}

#define CEILING_FILES 3

/* Lowered by the configuration: once all tenants' files together take the daemon's maps, every
 * tenant's Map of another file is refused, each within its own quota; more of a mapped file
 * still fits, and an unmap makes room again. */
TEST(maps_ceiling_over_all_tenants)
{
	Iommud__V1__GetStatsReply *stats;
	int mem[CEILING_FILES + 1];
	struct iommuctl *c;
	uint32_t dom;

	for (int i = 0; i <= CEILING_FILES; i++)
		CHECK_OK(mem[i] = iommuctl_memfd("ceiling", 2 * PAGE));
	fixture_start(&daemon_under_test,
		      "max-maps-total = 3\n[uid 0]\naccess = write\ndevices = emu*\n"
		      "[uid 65534]\naccess = write\ndevices = emu1\n",
		      "emu0 emu1");
	c = connect_with(NULL, NULL);
	dom = paging_domain(c, "emu0");
	for (uint64_t i = 0; i < CEILING_FILES; i++)
		succeeds(c, map_page(c, dom, mem[i], i * PAGE), "Map below the ceiling");
	refused(c, map_page(c, dom, mem[CEILING_FILES], 8 * PAGE),
		IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED, "max-maps-total");
	if (geteuid() == 0)
		CHECK_EQ(run_as(OTHER_UID, map_refused_at_ceiling, NULL), 0);
	succeeds(c, map_page(c, dom, mem[0], 16 * PAGE), "Map of a mapped file at the ceiling");
	stats = stats_of(c);
	CHECK_EQ(stats->ceilings->max_maps, CEILING_FILES);
	CHECK_EQ(stats->ceilings->maps, CEILING_FILES);
	CHECK_EQ(stats->ceilings->failed_releases, 0);
	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	succeeds(c, iommuctl_unmap(c, dom, PAGE, PAGE, NULL), "Unmap");
	succeeds(c, map_page(c, dom, mem[CEILING_FILES], 8 * PAGE), "Map after an unmap");
	iommuctl_close(c);
	for (int i = 0; i <= CEILING_FILES; i++)
		(void)close(mem[i]);
	fixture_stop(&daemon_under_test);
}

/* Mappings of one file share the session's one memory map of it (one more for another access),
 * which goes with the last of them: a mapping costs the daemon no map of its own. Files beyond
 * the tenant's max-pinned are mapped a range at a time, so that huge sparse files cannot take
 * the daemon's address space. */
TEST(mappings_of_one_file_share_one_map)
{
	struct iommuctl *c;
	uint32_t dom;
	int mem = iommuctl_memfd("shared", 8 * PAGE), big = iommuctl_memfd("big", 16 * PAGE);

	CHECK_OK(mem);
	CHECK_OK(big);
	fixture_start(&daemon_under_test,
		      "[uid 0]\naccess = write\ndevices = emu0\nmax-pinned = 64K\n", "emu0");
	c = connect_with(NULL, NULL);
	dom = paging_domain(c, "emu0");
	for (uint64_t i = 0; i < 8; i++)
		succeeds(c,
			 iommuctl_map_fd(c, dom, mem, i * PAGE, PAGE,
					 IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0,
					 &(uint64_t){i * PAGE}),
			 "Map");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	succeeds(c, map_page(c, dom, mem, 1ull << 30), "Map read-only");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 2);
	/* The two whole-file maps took the 64K: the big file's mappings are maps of their own. */
	succeeds(c, map_page(c, dom, big, 2ull << 30), "Map of a big file");
	succeeds(c,
		 iommuctl_map_fd(c, dom, big, 2 * PAGE, PAGE, IOMMUCTL_PROT_READ, true, 0,
				 &(uint64_t){3ull << 30}),
		 "Map of a big file");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 4);
	succeeds(c, iommuctl_unmap(c, dom, 0, 7 * PAGE, NULL), "Unmap");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 4);
	succeeds(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	iommuctl_close(c);
	(void)close(mem);
	(void)close(big);
	fixture_stop(&daemon_under_test);
}

/* Where the daemon maps the memfd of that name, and how many bytes: false where it does not. */
static bool daemon_map_of(const char *name, uint64_t *ret_start, uint64_t *ret_bytes)
{
	char path[64], needle[64], line[512];
	unsigned long long start = 0, end = 0;
	bool found = false;
	FILE *maps;

	(void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)daemon_under_test.pid);
	(void)snprintf(needle, sizeof(needle), "/memfd:%s ", name);
	maps = fopen(path, "re");
	CHECK(maps != NULL);
	while (!found && fgets(line, sizeof(line), maps))
		found = strstr(line, needle) && sscanf(line, "%llx-%llx", &start, &end) == 2;
	(void)fclose(maps);
	if (found) {
		*ret_start = start;
		*ret_bytes = end - start;
	}
	return found;
}

static uint64_t maps_held(struct iommuctl *c)
{
	Iommud__V1__GetStatsReply *stats = stats_of(c);
	uint64_t maps = stats->quota->maps;

	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	return maps;
}

/* The daemon started with config on topology, and root connected with a paging domain on emu0
 * in *ret_dom. */
static struct iommuctl *start_with_domain(const char *config, const char *topology,
					  uint32_t *ret_dom)
{
	struct iommuctl *c;

	fixture_start(&daemon_under_test, config, topology);
	c = connect_with(NULL, NULL);
	*ret_dom = paging_domain(c, "emu0");
	return c;
}

#define ONE_DEVICE "[uid 0]\naccess = write\ndevices = emu0\n"

/* Without keep_map an Unmap lets go of its file as it always did: once it has replied, the
 * daemon maps none of the file, so the client may seal it against writing (which a shared map
 * of the file that may write, as the daemon's of an O_RDWR descriptor, refuses with EBUSY). */
TEST(unmap_lets_go_of_the_file_unless_asked_to_keep)
{
	int mem = iommuctl_memfd("sealed", PAGE);
	uint64_t at, bytes;
	struct iommuctl *c;
	uint32_t dom;

	CHECK_OK(mem);
	c = start_with_domain(ONE_DEVICE, "emu0", &dom);
	succeeds(c, map_page(c, dom, mem, 0), "Map");
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	CHECK(!daemon_map_of("sealed", &at, &bytes));
	CHECK_EQ(fcntl(mem, F_ADD_SEALS, F_SEAL_WRITE), 0);
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* The daemon started with one device, and root connected, asking its Unmaps to keep their
 * file's map, with a paging domain on emu0 in *ret_dom, once the two memfds were made. */
static struct iommuctl *start_keeping_maps(int kept, int other, uint32_t *ret_dom)
{
	struct iommuctl *c;

	CHECK_OK(kept);
	CHECK_OK(other);
	c = start_with_domain(ONE_DEVICE, "emu0", ret_dom);
	iommuctl_set_keep_maps(c, true);
	return c;
}

/* An Unmap of one mapping that asks for it (keep_map) keeps its file's map, counted against
 * nothing, for the session's next Map of the file, which takes it up again instead of mapping
 * the file anew; a file that grew since gets a map of its new size, and an Unmap of several
 * mappings, a map of another file and a connection leaving the session give the kept map up. */
TEST(unmapped_file_map_kept_for_the_next_map)
{
	int kept = iommuctl_memfd("kept", PAGE), other = iommuctl_memfd("other", PAGE);
	uint64_t at, again, bytes;
	struct iommuctl *c;
	uint32_t dom;

	c = start_keeping_maps(kept, other, &dom);
	succeeds(c, map_page(c, dom, kept, 0), "Map");
	CHECK(daemon_map_of("kept", &at, &bytes));
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	CHECK(daemon_map_of("kept", &again, &bytes) && again == at);
	CHECK_EQ(maps_held(c), 0);
	succeeds(c, map_page(c, dom, kept, 0), "Map again");
	CHECK(daemon_map_of("kept", &again, &bytes) && again == at);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	CHECK_EQ(maps_held(c), 1);
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	CHECK_EQ(ftruncate(kept, (off_t)(2 * PAGE)), 0);
	succeeds(c, map_page(c, dom, kept, 0), "Map of the grown file");
	CHECK(daemon_map_of("kept", &again, &bytes) && bytes == 2 * PAGE);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	succeeds(c, map_page(c, dom, kept, PAGE), "Map beside it");
	succeeds(c, iommuctl_unmap(c, dom, 0, 2 * PAGE, NULL), "Unmap of both");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	succeeds(c, map_page(c, dom, kept, 0), "Map");
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	succeeds(c, map_page(c, dom, other, 0), "Map of another file");
	CHECK(!daemon_map_of("kept", &again, &bytes));
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	/* The kept map holds the file, closed here or not. */
	(void)close(kept);
	(void)close(other);
	/* The daemon learns of the close when its loop gets to it. */
	iommuctl_close(connect_with(NULL, NULL));
	for (int i = 0; i < 500 && fixture_memfd_mappings(&daemon_under_test); i++)
		(void)usleep(10000);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	iommuctl_close(c);
	fixture_stop(&daemon_under_test);
}

/* Maps the pages of mem (n of them) in one MapBatch, page i at IOVA i * PAGE. */
static int map_batch_of_pages(struct iommuctl *c, uint32_t dom, int mem, size_t n)
{
	struct iommuctl_map_entry entries[4];

	CHECK(n <= sizeof(entries) / sizeof(entries[0]));
	for (size_t i = 0; i < n; i++)
		entries[i] = (struct iommuctl_map_entry){.domain_id = dom,
							 .fd = mem,
							 .offset = i * PAGE,
							 .length = PAGE,
							 .prot = IOMMUCTL_PROT_READ,
							 .fixed_iova = true,
							 .iova = i * PAGE};
	return iommuctl_map_batch(c, entries, n, NULL);
}

/* What GetStats says of the kept maps (kept_maps, kept_maps_taken_up, kept_maps_given_up), as
 * "held taken given": the address of a map alone cannot tell a map taken up from a new one, as
 * a new one often lands where the old one was. */
static const char *kept_maps(struct iommuctl *c)
{
	static char text[64];
	Iommud__V1__GetStatsReply *stats = stats_of(c);

	(void)snprintf(text, sizeof(text), "%llu %llu %llu", (unsigned long long)stats->kept_maps,
		       (unsigned long long)stats->kept_maps_taken_up,
		       (unsigned long long)stats->kept_maps_given_up);
	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	return text;
}

/* An UnmapAll that asks for it (keep_map) keeps the map of the last file it leaves unmapped,
 * counted against nothing, and the session's next MapBatch of that file takes it up instead of
 * mapping the file anew, as the next Map would; the file it left unmapped first goes at once,
 * and an UnmapAll that does not ask keeps nothing. */
TEST(unmap_all_keeps_a_file_map_for_the_next_batch)
{
	int kept = iommuctl_memfd("kept", 4 * PAGE), other = iommuctl_memfd("other", PAGE);
	uint64_t at, again, bytes, iova = 0x100000;
	struct iommuctl *c;
	uint32_t dom;

	c = start_keeping_maps(kept, other, &dom);
	succeeds(c, iommuctl_map_fd(c, dom, other, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		 "Map of the other file, above the batch");
	succeeds(c, map_batch_of_pages(c, dom, kept, 4), "MapBatch");
	CHECK(daemon_map_of("kept", &at, &bytes) && bytes == 4 * PAGE);
	CHECK_EQ(maps_held(c), 2);
	succeeds(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll keeping a map");
	/* The batch's mappings come first in IOVA order, so the other file is left last. */
	CHECK(!daemon_map_of("kept", &again, &bytes));
	CHECK(daemon_map_of("other", &again, &bytes));
	CHECK_EQ(maps_held(c), 0);
	/* The first file's map was kept, then given up for the second's. */
	CHECK_STREQ(kept_maps(c), "1 0 1");
	succeeds(c, iommuctl_map_fd(c, dom, other, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		 "Map of the other file again, taking its map up");
	CHECK_STREQ(kept_maps(c), "0 1 1");
	succeeds(c, iommuctl_unmap(c, dom, iova, PAGE, NULL), "Unmap");
	succeeds(c, map_batch_of_pages(c, dom, kept, 4), "MapBatch of another file");
	CHECK_STREQ(kept_maps(c), "0 1 2");
	succeeds(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll keeping the batch's map");
	CHECK_STREQ(kept_maps(c), "1 1 2");
	CHECK(daemon_map_of("kept", &at, &bytes));
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	succeeds(c, map_batch_of_pages(c, dom, kept, 4), "MapBatch taking it up");
	CHECK_STREQ(kept_maps(c), "0 2 2");
	CHECK(daemon_map_of("kept", &again, &bytes) && again == at);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	CHECK_EQ(maps_held(c), 1);
	iommuctl_set_keep_maps(c, false);
	succeeds(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll keeping nothing");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	CHECK_STREQ(kept_maps(c), "0 2 2");
	iommuctl_close(c);
	(void)close(kept);
	(void)close(other);
	fixture_stop(&daemon_under_test);
}

/* Keeps kept's map: maps it at IOVA 0 and unmaps it with keep_map. */
static void keep_map_of(struct iommuctl *c, uint32_t dom, int kept)
{
	uint64_t at, bytes;

	succeeds(c, map_page(c, dom, kept, 0), "Map");
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap keeping the map");
	CHECK(daemon_map_of("kept", &at, &bytes));
}

/* A kept map serves only the session's next request that changes anything, and only a Map of
 * its range: a Map served by another map the session holds, a Map that fails before it maps
 * anything, UnmapAll and FreeDomain each give it up, so that the client can have its memory
 * back without closing the connection. */
TEST(kept_map_given_up_by_any_other_change)
{
	int kept = iommuctl_memfd("kept", PAGE), other = iommuctl_memfd("other", 2 * PAGE);
	uint64_t at, bytes, iova = 0x100000;
	struct iommuctl *c;
	uint32_t dom;

	c = start_keeping_maps(kept, other, &dom);
	succeeds(c, iommuctl_map_fd(c, dom, other, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		 "Map of the other file");
	keep_map_of(c, dom, kept);
	iova = 0x200000;
	succeeds(c, iommuctl_map_fd(c, dom, other, PAGE, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		 "Map from the other file's map");
	CHECK(!daemon_map_of("kept", &at, &bytes));
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	CHECK_STREQ(kept_maps(c), "0 0 1");
	(void)close(other);
	keep_map_of(c, dom, kept);
	CHECK_STREQ(kept_maps(c), "1 0 1");
	CHECK(map_page(c, dom + 1, kept, 0) < 0);
	CHECK(!daemon_map_of("kept", &at, &bytes));
	CHECK_STREQ(kept_maps(c), "0 0 2");
	keep_map_of(c, dom, kept);
	succeeds(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll");
	CHECK(!daemon_map_of("kept", &at, &bytes));
	keep_map_of(c, dom, kept);
	succeeds(c, iommuctl_free_domain(c, dom), "FreeDomain");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	iommuctl_close(c);
	(void)close(kept);
	fixture_stop(&daemon_under_test);
}

/* The kept maps count against no ceiling, so that a map nearing max-maps-total gives up every
 * session's kept map first: the daemon's maps of client files stay within the ceiling. */
TEST(kept_maps_given_up_at_the_maps_ceiling)
{
	static const char *const names[] = {"kept", "first", "second"};
	enum { KEPT, FIRST, SECOND, FILES };
	struct iommuctl *c, *lease;
	uint64_t at, bytes;
	uint32_t dom, lease_dom;
	int mem[FILES];

	for (int i = 0; i < FILES; i++)
		CHECK_OK(mem[i] = iommuctl_memfd(names[i], PAGE));
	c = start_with_domain("max-maps-total = 2\n[uid 0]\naccess = write\ndevices = emu*\n",
			      "emu0 emu1", &dom);
	iommuctl_set_keep_maps(c, true);
	succeeds(c, map_page(c, dom, mem[KEPT], 0), "Map");
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	CHECK(daemon_map_of("kept", &at, &bytes));
	/* Another session of the tenant: the kept map is not its own to give up for a new one. */
	lease = connect_with("ceiling", NULL);
	lease_dom = paging_domain(lease, "emu1");
	succeeds(lease, map_page(lease, lease_dom, mem[FIRST], 0), "Map below the ceiling");
	CHECK(daemon_map_of("kept", &at, &bytes));
	succeeds(lease, map_page(lease, lease_dom, mem[SECOND], PAGE), "Map at the ceiling");
	CHECK(!daemon_map_of("kept", &at, &bytes));
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 2);
	iommuctl_close(lease);
	iommuctl_close(c);
	for (int i = 0; i < FILES; i++)
		(void)close(mem[i]);
	fixture_stop(&daemon_under_test);
}

/* A tenant's share of the daemon's maps (max-maps): the one past it is refused with the
 * quota's name, before the ceiling over all tenants, and an unmap gives one back. */
TEST(maps_quota_per_tenant)
{
	Iommud__V1__HelloReply *hello;
	int mem[3];
	struct iommuctl *c, *again;
	uint32_t dom;

	for (int i = 0; i < 3; i++)
		CHECK_OK(mem[i] = iommuctl_memfd("share", PAGE));
	fixture_start(&daemon_under_test,
		      "max-maps-total = 2\n[uid 0]\naccess = write\ndevices = emu0\nmax-maps = 2\n",
		      "emu0");
	c = connect_with(NULL, &hello);
	CHECK_EQ(hello->quota->max_maps, 2);
	CHECK_EQ(hello->quota->maps, 0);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	dom = paging_domain(c, "emu0");
	succeeds(c, map_page(c, dom, mem[0], 0), "Map within the quota");
	succeeds(c, map_page(c, dom, mem[1], PAGE), "Map within the quota");
	/* The tenant's own count shows beside its limit. */
	again = connect_with(NULL, &hello);
	CHECK_EQ(hello->quota->maps, 2);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	iommuctl_close(again);
	refused(c, map_page(c, dom, mem[2], 2 * PAGE), IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED,
		"max-maps in uid 0");
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	succeeds(c, map_page(c, dom, mem[2], 2 * PAGE), "Map after an unmap");
	iommuctl_close(c);
	for (int i = 0; i < 3; i++)
		(void)close(mem[i]);
	fixture_stop(&daemon_under_test);
}

static int map_writable(struct iommuctl *c, uint32_t dom, int fd, uint64_t iova)
{
	return iommuctl_map_fd(c, dom, fd, 0, PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true,
			       0, &iova);
}

/* The session's writable map of a file, made from a read-write descriptor, is shared only with
 * requests whose own descriptor mmap would let write: not a read-only one of the same file,
 * nor the same one once sealed against writing. */
TEST(writable_map_reused_only_for_a_writable_fd)
{
	int mem = iommuctl_memfd("reuse", PAGE), read_only;
	char path[64];
	struct iommuctl *c;
	uint32_t dom;

	CHECK_OK(mem);
	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", mem);
	CHECK((read_only = open(path, O_RDONLY | O_CLOEXEC)) >= 0);
	fixture_start(&daemon_under_test, "[uid 0]\naccess = write\ndevices = emu0\n", "emu0");
	c = connect_with(NULL, NULL);
	dom = paging_domain(c, "emu0");
	succeeds(c, map_writable(c, dom, mem, 0), "Map writable");
	refused(c, map_writable(c, dom, read_only, PAGE), IOMMUD__V1__CODE__CODE_PERMISSION_DENIED,
		"opened read-only");
	succeeds(c, map_page(c, dom, read_only, 2 * PAGE), "Map read-only of a read-only fd");
	CHECK(fcntl(mem, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0);
	refused(c, map_writable(c, dom, mem, 3 * PAGE), IOMMUD__V1__CODE__CODE_PERMISSION_DENIED,
		"sealed against writing");
	succeeds(c, map_page(c, dom, mem, 3 * PAGE), "Map read-only of a sealed memfd");
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 2);
	iommuctl_close(c);
	(void)close(read_only);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* An append-only file (chattr +a, which tmpfs takes from Linux 6.0 on) is refused, as mmap
 * refuses it, any map through a descriptor open for writing, by the check the by-descriptor path
 * shares (the kernel's IOMMU_IOAS_MAP_FILE makes none); through a read-only one it maps for
 * reading. */
TEST(append_only_file_refused_for_writing)
{
	int mem = iommuctl_memfd("append", 2 * PAGE), attr = FS_APPEND_FL, read_only;
	char path[64];
	struct iommuctl *c;
	uint32_t dom;

	CHECK_OK(mem);
	if (ioctl(mem, FS_IOC_SETFLAGS, &attr) < 0)
		SKIP("this kernel's tmpfs cannot make a file append-only (%s)", strerror(errno));
	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", mem);
	CHECK((read_only = open(path, O_RDONLY | O_CLOEXEC)) >= 0);
	fixture_start(&daemon_under_test, "[uid 0]\naccess = write\ndevices = emu0\n", "emu0");
	c = connect_with(NULL, NULL);
	dom = paging_domain(c, "emu0");
	refused(c, map_writable(c, dom, mem, 0), IOMMUD__V1__CODE__CODE_PERMISSION_DENIED,
		"append-only");
	refused(c, map_page(c, dom, mem, PAGE), IOMMUD__V1__CODE__CODE_PERMISSION_DENIED,
		"append-only");
	succeeds(c, map_page(c, dom, read_only, PAGE), "Map read-only through a read-only fd");
	iommuctl_close(c);
	attr = 0;
	CHECK(ioctl(mem, FS_IOC_SETFLAGS, &attr) == 0);
	(void)close(read_only);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* ---- pinned bytes: the tenant's quota, then the ceiling over all ------------------------ */

#define PINNED_CEILING (1ull << 30)

/* A writer that is no observer, while root pins one page: refused by its own quota and the
 * file's end before it learns of the ceiling, and by the ceiling without what others pin. */
static int pinned_refusals(void *arg)
{
	struct iommuctl *c = connect_with(NULL, NULL);
	uint32_t dom = paging_domain(c, "emu1");
	int mem = iommuctl_memfd("small", PAGE), big = iommuctl_memfd("big", PINNED_CEILING);

	(void)arg;
	CHECK_OK(mem);
	CHECK_OK(big);
	refused(c,
		iommuctl_map_fd(c, dom, mem, 0, 1ull << 40, IOMMUCTL_PROT_READ, true, 0,
				&(uint64_t){0}),
		IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED, "max-pinned;");
	refused(c,
		iommuctl_map_fd(c, dom, mem, 0, 2 * PAGE, IOMMUCTL_PROT_READ, true, 0,
				&(uint64_t){0}),
		IOMMUD__V1__CODE__CODE_OUT_OF_RANGE, "passes the end of the file");
	refused(c,
		iommuctl_map_fd(c, dom, big, 0, PINNED_CEILING, IOMMUCTL_PROT_READ, true, 0,
				&(uint64_t){0}),
		IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED,
		"max-pinned-total, 0x40000000, set by max-pinned-total in the configuration");
	tells_no_usage(c, "0x1000");
	(void)close(mem);
	(void)close(big);
	iommuctl_close(c);
	return 0;
}

TEST(pinned_ceiling_after_the_tenant_s_own_limits)
{
	int mem = iommuctl_memfd("root", PAGE);
	struct iommuctl *c;

	if (geteuid() != 0)
		SKIP("not root: other tenants need other uids");
	CHECK_OK(mem);
	fixture_start(&daemon_under_test,
		      "max-pinned-total = 1G\n[uid 0]\naccess = write\ndevices = emu*\n"
		      "[uid 65534]\naccess = write\ndevices = emu1\nmax-pinned = 2G\n",
		      "emu0 emu1");
	c = connect_with(NULL, NULL);
	succeeds(c, map_page(c, paging_domain(c, "emu0"), mem, 0), "Map");
	CHECK_EQ(run_as(OTHER_UID, pinned_refusals, NULL), 0);
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* ---- leases: per tenant and over all, below the open-file limit ------------------------ */

/* The daemon started under a lower open-file limit derives a lower lease ceiling from it. */
TEST(leases_ceiling_derived_from_open_files)
{
	struct rlimit files = {.rlim_cur = 256, .rlim_max = 256};
	Iommud__V1__HelloReply *hello;
	uint64_t high;

	fixture_start(&daemon_under_test, "", "emu0");
	hello = hello_of();
	high = hello->ceilings->max_leases;
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	fixture_stop(&daemon_under_test);
	/* This case's own process: the daemon inherits it, nothing else sees it. */
	CHECK(setrlimit(RLIMIT_NOFILE, &files) == 0);
	fixture_start(&daemon_under_test, "", "emu0");
	hello = hello_of();
	CHECK(hello->ceilings->max_leases > 0);
	CHECK(hello->ceilings->max_leases < 256);
	CHECK(hello->ceilings->max_leases <= high);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	fixture_stop(&daemon_under_test);
}

static void hold_lease(const char *name)
{
	iommuctl_close(connect_with(name, NULL));
}

static int lease_refused(void *names)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	refused(c, iommuctl_hello(c, "test_ceilings", "one-more", NULL),
		IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED, names);
	tells_no_usage(c, "holds 3"); /* all tenants' leases at the ceiling */
	iommuctl_close(c);
	return 0;
}

static int other_reaches_ceiling(void *arg)
{
	(void)arg;
	hold_lease("theirs");
	return lease_refused("max-leases-total");
}

/* A lease outlives its connections, so each tenant has a quota of them (none without a
 * section, even where the default access is write) and the daemon a ceiling over all. */
TEST(leases_quota_and_ceiling)
{
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c;

	fixture_start(&daemon_under_test,
		      "max-leases-total = 3\n[access]\ndefault = write\n"
		      "[uid 0]\naccess = write\nmax-leases = 2\n[uid 65534]\naccess = write\n",
		      "emu0");
	hold_lease("first");
	c = connect_with("second", &hello);
	CHECK_EQ(hello->quota->max_leases, 2);
	CHECK_EQ(hello->quota->leases, 2);
	CHECK_EQ(hello->ceilings->max_leases, 3);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	CHECK_EQ(lease_refused("max-leases in uid 0"), 0);
	if (geteuid() == 0) {
		CHECK_EQ(run_as(STRANGER_UID, lease_refused, "max-leases"), 0);
		CHECK_EQ(run_as(OTHER_UID, other_reaches_ceiling, NULL), 0);
	}
	iommuctl_close(c);
	fixture_stop(&daemon_under_test);
}

/* ---- page tables: the emulated IOMMU's, in the daemon's memory -------------------------- */

/* A 4 KiB mapping at a sparse IOVA costs three tables: the quota refuses the one that would
 * pass it, taking the mapping back, and an unmap gives the tables back. */
TEST(page_tables_charged_to_the_tenant)
{
	Iommud__V1__GetStatsReply *stats;
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c;
	uint32_t dom;
	int mem = iommuctl_memfd("tables", PAGE);

	CHECK_OK(mem);
	fixture_start(&daemon_under_test,
		      "[uid 0]\naccess = write\ndevices = emu0\nmax-page-tables = 16K\n", "emu0");
	c = connect_with(NULL, &hello);
	CHECK_EQ(hello->quota->max_page_table_bytes, 16 * 1024);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	dom = paging_domain(c, "emu0");
	succeeds(c, map_page(c, dom, mem, 0), "Map within the quota");
	refused(c, map_page(c, dom, mem, 1ull << 39), IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED,
		"max-page-tables");
	stats = stats_of(c);
	CHECK_EQ(stats->quota->page_table_bytes, 4 * PAGE); /* root and the first map's three */
	CHECK_EQ(stats->quota->mappings, 1);
	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 1);
	succeeds(c, iommuctl_unmap(c, dom, 0, PAGE, NULL), "Unmap");
	stats = stats_of(c);
	CHECK_EQ(stats->quota->page_table_bytes, PAGE);
	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	succeeds(c, map_page(c, dom, mem, 1ull << 39), "Map after the unmap");
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* A batch of entries of one file, the last at a sparse IOVA whose tables take the tenant past
 * its quota once mapped (the two before it stay within it): the batch fails at that entry
 * whole, and every table it took is given back. */
TEST(batch_past_page_tables)
{
	struct iommuctl_map_entry e[3];
	Iommud__V1__GetStatsReply *stats;
	struct iommuctl *c;
	size_t failed;
	uint32_t dom;
	int mem = iommuctl_memfd("tables", PAGE);

	CHECK_OK(mem);
	c = start_with_domain(ONE_DEVICE "max-page-tables = 20K\n", "emu0", &dom);
	for (size_t i = 0; i < 3; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = dom,
						   .fd = mem,
						   .length = PAGE,
						   .prot = IOMMUCTL_PROT_READ,
						   .fixed_iova = true,
						   .iova = PAGE * i};
	e[2].iova = 1ull << 39;
	refused(c, iommuctl_map_batch(c, e, 3, &failed), IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED,
		"max-page-tables");
	CHECK_EQ(failed, 2);
	stats = stats_of(c);
	CHECK_EQ(stats->quota->mappings, 0);
	CHECK_EQ(stats->quota->page_table_bytes, PAGE);
	iommud__v1__get_stats_reply__free_unpacked(stats, NULL);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	succeeds(c, iommuctl_map_batch(c, e, 2, NULL), "MapBatch within the quota");
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}

/* ---- GetStats: one's own figures unless an observer ------------------------------------ */

/* A bystander in the stranger's label holds a connection while the stranger looks. */
static int bystander(void *arg)
{
	int *pipes = arg;
	struct iommuctl *c = connect_with(NULL, NULL);
	char byte = 0;

	CHECK(write(pipes[1], &byte, 1) == 1);
	CHECK(read(pipes[2], &byte, 1) == 1);
	iommuctl_close(c);
	return 0;
}

static int stranger_sees_own(void *arg)
{
	struct iommuctl *c = connect_with(NULL, NULL);
	int second = raw_connect(&daemon_under_test);
	Iommud__V1__GetStatsReply *s;

	(void)arg;
	/* Past max-connections-per-uid: counted among everyone's refusals once answered. */
	iommud__v1__response__free_unpacked(raw_recv(second, NULL), NULL);
	(void)close(second);
	s = stats_of(c);
	CHECK(!s->observer);
	CHECK_EQ(s->connections, 1);
	CHECK_EQ(s->tenants, 1);
	CHECK_EQ(s->n_methods, 0);
	CHECK_EQ(s->n_devices, 0);
	CHECK_EQ(s->n_dma_faults, 0);
	CHECK_EQ(s->n_map_latency, 0);
	CHECK_EQ(s->rejected_packets, 0);
	CHECK_EQ(s->n_tenant_stats, 1);
	CHECK(strcmp(s->tenant_stats[0]->tenant, "other") == 0);
	CHECK_EQ(s->tenant_stats[0]->tenants, 1);
	CHECK_EQ(s->n_refused_connections, 0);
	CHECK_EQ(s->rate_limited, 0);
	/* The limits, not what everyone holds against them. */
	CHECK(s->ceilings->max_maps > 0);
	CHECK_EQ(s->ceilings->maps, 0);
	CHECK_EQ(s->ceilings->leases, 0);
	CHECK_EQ(s->ceilings->pinned_bytes, 0);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	iommuctl_close(c);
	return 0;
}

static void start_bystander(int *pipes, pid_t *ret_pid)
{
	char byte;
	pid_t pid;

	CHECK(pipe(pipes) == 0 && pipe(pipes + 2) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* Only the test holds these ends: its end, even by a failed check, ends ours. */
		(void)close(pipes[0]);
		(void)close(pipes[3]);
		_exit(run_as(BYSTANDER_UID, bystander, pipes));
	}
	CHECK(read(pipes[0], &byte, 1) == 1);
	*ret_pid = pid;
}

TEST(stats_scoped_to_own_tenant)
{
	Iommud__V1__GetStatsReply *s;
	struct iommuctl *c;
	int pipes[4], status, mem = iommuctl_memfd("stats", PAGE);
	pid_t pid;

	if (geteuid() != 0)
		SKIP("not root: other tenants need other uids");
	CHECK_OK(mem);
	fixture_start(&daemon_under_test,
		      "max-connections-per-uid = 1\n[access]\ndefault = read\n[uid 0]\n"
		      "access = write\ndevices = emu0\n",
		      "emu0");
	c = connect_with("observed", NULL);
	succeeds(c, map_page(c, paging_domain(c, "emu0"), mem, 0), "Map");
	start_bystander(pipes, &pid);
	CHECK_EQ(run_as(STRANGER_UID, stranger_sees_own, NULL), 0);
	/* Root is an observer: everyone's figures. */
	s = stats_of(c);
	CHECK(s->observer);
	CHECK(s->n_methods > 0 && s->n_devices == 1);
	CHECK_EQ(s->ceilings->maps, 1);
	CHECK_EQ(s->ceilings->leases, 1);
	CHECK_EQ(s->ceilings->pinned_bytes, PAGE);
	CHECK(s->n_refused_connections > 0);
	CHECK(s->connections >= 2);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	CHECK(write(pipes[3], "x", 1) == 1);
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (int i = 0; i < 4; i++)
		(void)close(pipes[i]);
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&daemon_under_test);
}
