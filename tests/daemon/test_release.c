// SPDX-License-Identifier: MIT
/* The session layer in this process, on the emulated backend: what it does when the kernel will
 * not let it release a client's memory, the size of the parts a costly mapping is made in, and
 * how many of them a step takes.
 *
 * A munmap of a whole map does not fail on any kernel the tests run on, so this program is
 * linked with munmap and mprotect wrapped (-Wl,--wrap, tests/daemon/CMakeLists.txt): the
 * wrappers refuse the one address a case names and pass every other call through. */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <kh/kh.h>

#include "config.h"
#include "harness.h"
#include "peer.h"
#include "session.h"

#define MEMORY_BYTES (1u << 20)
#define IOVA	     (1ull << 32)

int __real_munmap(void *addr, size_t length);
int __real_mprotect(void *addr, size_t length, int prot);

/* The address whose munmap (and, with protect_refused, mprotect) the kernel "refuses". */
static void *refused;
static bool protect_refused;

int __wrap_munmap(void *addr, size_t length);
int __wrap_munmap(void *addr, size_t length)
{
	if (refused && addr == refused) {
		errno = ENOMEM;
		return -1;
	}
	return __real_munmap(addr, length);
}

int __wrap_mprotect(void *addr, size_t length, int prot);
int __wrap_mprotect(void *addr, size_t length, int prot)
{
	if (protect_refused && addr == refused) {
		errno = ENOMEM;
		return -1;
	}
	return __real_mprotect(addr, length, prot);
}

struct setup {
	struct kh_backend *be;
	struct config cfg;
	struct registry *reg;
	struct tenant *tenant;
	struct session *session;
	uint32_t domain;
	int memfd;
	struct map_file file;
};

/* An emulated IOMMU of 4 KiB leaves alone, whose mappings are made in parts of 256 KiB
 * wherever their memory lies. */
#define SMALL_LEAVES                                                                               \
	"[iommu]\n"                                                                                \
	"devices = emu0\n"                                                                         \
	"[device emu0]\n"                                                                          \
	"page-sizes = 4K\n"
#define SMALL_PART (MAP_PART_PAGES * 4096ull)

/* Root's session with a domain on the emulated device (of topology, NULL: the default), and a
 * sealed memfd to map. */
static void setup_topology(struct setup *t, const char *topology)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	char cgroup[] = "/";
	struct peer root = {.pid = getpid(), .cgroup = cgroup};
	enum access granted;

	CHECK_OK(topology ? kh_backend_open_emulated_text(topology, &t->be)
			  : kh_backend_open_emulated(NULL, &t->be));
	CHECK_OK(config_defaults(&t->cfg));
	CHECK((t->reg = registry_create(t->be, &t->cfg)) != NULL);
	CHECK_OK(tenant_get(t->reg, &root, &t->tenant, &granted));
	CHECK_OK(session_join(t->tenant, NULL, &t->session));
	CHECK_OK(session_alloc_domain(t->session, "emu0", &paging, &t->domain));
	t->memfd = memfd_create("release", MFD_ALLOW_SEALING);
	CHECK(t->memfd >= 0);
	CHECK_OK(ftruncate(t->memfd, MEMORY_BYTES));
	CHECK_OK(fcntl(t->memfd, F_ADD_SEALS, F_SEAL_SHRINK));
	CHECK_OK(session_check_file(t->memfd, &t->file));
}

static void setup(struct setup *t)
{
	setup_topology(t, NULL);
}

static void teardown(struct setup *t)
{
	session_leave(t->session);
	tenant_put(t->tenant);
	registry_destroy(t->reg);
	config_free(&t->cfg);
	kh_backend_close(t->be);
	(void)close(t->memfd);
}

/* Maps the whole memfd and returns where the daemon's map of it starts (the mapping is of the
 * file from its start, and one mapping's map is of the whole file). */
static void *map_memory(struct setup *t)
{
	struct map_entry e = {.domain_id = t->domain,
			      .file = &t->file,
			      .length = MEMORY_BYTES,
			      .prot = KH_PROT_READ | KH_PROT_WRITE,
			      .fixed_iova = true,
			      .iova = IOVA};
	struct kh_mapping m;

	CHECK_EQ(session_map(t->session, &e), 0);
	/* Made in parts (it is longer than one), it is one mapping, all of it. */
	CHECK_EQ(kh_mappings(session_ctx(t->session), t->domain, 0, &m, 1), 1);
	CHECK_EQ(m.length, MEMORY_BYTES);
	return (void *)(uintptr_t)m.addr;
}

/* The permissions /proc/self/maps gives the map starting at addr ("rw-s"), into perms. */
static void map_permissions(const void *addr, char perms[5])
{
	char line[512], *end;
	FILE *maps = fopen("/proc/self/maps", "re");
	bool found = false;

	CHECK(maps != NULL);
	while (!found && fgets(line, sizeof(line), maps))
		found = strtoull(line, &end, 16) == (uintptr_t)addr &&
			sscanf(strchr(end, ' '), " %4s", perms) == 1;
	(void)fclose(maps);
	CHECK(found);
}

/* Unmaps the memory with the daemon's release refused, its log going to a file meanwhile;
 * returns what it logged. */
static char *unmap_refused(struct setup *t, void *addr, char *log, size_t size)
{
	char path[] = "/tmp/test_release.XXXXXX";
	int saved = dup(STDERR_FILENO), out = mkstemp(path);
	uint64_t bytes;
	uint32_t count;
	ssize_t n;

	CHECK(saved >= 0 && out >= 0);
	CHECK_OK(unlink(path));
	CHECK(dup2(out, STDERR_FILENO) == STDERR_FILENO);
	refused = addr;
	/* The mapping leaves the IOMMU whatever becomes of the daemon's map. */
	CHECK_OK(session_unmap(t->session, t->domain, IOVA, MEMORY_BYTES, &bytes, &count));
	refused = NULL;
	CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
	(void)close(saved);
	CHECK_EQ(count, 1);
	n = pread(out, log, size - 1, 0);
	CHECK(n >= 0);
	log[n] = '\0';
	(void)close(out);
	(void)fputs(log, stderr);
	return log;
}

/* Unmaps the memory with its release refused, and mprotect too when protect_refused: the failed
 * release is counted, the log says what became of the memory (logged), and the memory's map has
 * the permissions perms. */
static void refused_release(bool refuse_protect, const char *logged, const char *perms)
{
	struct setup t;
	char now[5], log[2048];
	void *addr;

	setup(&t);
	addr = map_memory(&t);
	CHECK_EQ(registry_failed_releases(t.reg), 0);
	protect_refused = refuse_protect;
	unmap_refused(&t, addr, log, sizeof(log));
	protect_refused = false;
	CHECK_EQ(registry_failed_releases(t.reg), 1);
	CHECK(strstr(log, logged) != NULL);
	map_permissions(addr, now);
	CHECK(strcmp(now, perms) == 0);
	/* The daemon no longer counts it among its maps: its memory is no tenant's. */
	CHECK_EQ(registry_usage(t.reg).maps, 0);
	CHECK_OK(__real_munmap(addr, MEMORY_BYTES));
	teardown(&t);
}

/* The memory stays mapped in the daemon but no longer reachable: made inaccessible, said in the
 * log, counted in the ceilings' failed releases. */
TEST(refused_unmap_protects)
{
	refused_release(false, "made it inaccessible instead", "---s");
}

/* Should even protecting it fail, the log says the memory stays mapped, and it is counted. */
TEST(refused_unmap_and_protect)
{
	refused_release(true, "stays mapped until the daemon restarts", "rw-s");
}

/* A part is 64 of the largest leaves a mapping can use: those its IOVA and address are both
 * aligned to, that the IOMMU has, and no larger than the memory's physically contiguous pages
 * (4 KiB memory the kernel pins stays in parts of 64 such pages whatever its alignment). */
TEST(part_sizes)
{
	const uint64_t k4 = 4096, m2 = 2ull << 20, g1 = 1ull << 30, all = k4 | m2 | g1;

	CHECK_EQ(map_part_bytes(4 * g1, g1, all, UINT64_MAX), MAP_PART_PAGES * g1);
	CHECK_EQ(map_part_bytes(4 * g1, g1, all, k4), MAP_PART_PAGES * k4);
	CHECK_EQ(map_part_bytes(4 * g1, g1, all, m2), MAP_PART_PAGES * m2);
	CHECK_EQ(map_part_bytes(4 * g1, g1, k4 | m2, UINT64_MAX), MAP_PART_PAGES * m2);
	CHECK_EQ(map_part_bytes(4 * g1, g1, k4, UINT64_MAX), MAP_PART_PAGES * k4);
	CHECK_EQ(map_part_bytes(4 * g1 + m2, g1, all, UINT64_MAX), MAP_PART_PAGES * m2);
	CHECK_EQ(map_part_bytes(4 * g1 + k4, g1, all, UINT64_MAX), MAP_PART_PAGES * k4);
}

/* Steps grow twice as large while one takes under a quarter of what was left of the slice when
 * it started, shrink by half once one overruns it, stay between one part and the most, and grow
 * without a deadline. */
TEST(steps_resize)
{
	unsigned parts = 1;

	steps_resize(&parts, 10, 100);
	CHECK_EQ(parts, 2);
	steps_resize(&parts, 50, 100);
	CHECK_EQ(parts, 2);
	steps_resize(&parts, 101, 100);
	CHECK_EQ(parts, 1);
	steps_resize(&parts, 200, 100);
	CHECK_EQ(parts, 1);
	steps_resize(&parts, 1000000000, UINT64_MAX);
	CHECK_EQ(parts, 2);
	parts = MAP_PARTS_PER_STEP_MAX;
	steps_resize(&parts, 0, 100);
	CHECK_EQ(parts, MAP_PARTS_PER_STEP_MAX);
}

/* The length of the domain's one mapping. */
static uint64_t mapped_length(struct setup *t)
{
	struct kh_mapping m;

	CHECK_EQ(kh_mappings(session_ctx(t->session), t->domain, 0, &m, 1), 1);
	return m.length;
}

/* The step that takes the last mappings of an unmap's range ends the unmap, with its count:
 * no step more that only finds the range empty. Of 65 mappings of a page, a step of one part
 * takes 64 and has more to do, the next takes the last and is done. */
TEST(unmap_step_that_drains_its_range_ends_it)
{
	struct map_entry e = {.length = 4096, .prot = KH_PROT_READ, .fixed_iova = true};
	struct unmap_progress u;
	struct setup t;

	setup(&t);
	e.domain_id = t.domain;
	e.file = &t.file;
	for (uint64_t i = 0; i <= MAP_PART_PAGES; i++) {
		e.iova = IOVA + i * 4096;
		e.offset = i * 4096;
		CHECK_OK(session_map(t.session, &e));
	}
	CHECK_EQ(session_unmap_start(t.session, t.domain, IOVA, (MAP_PART_PAGES + 1) * 4096ull,
				     false, &u),
		 1);
	CHECK_EQ(session_unmap_step(t.session, &u), 1);
	CHECK(u.steps_left);
	CHECK_EQ(session_unmap_step(t.session, &u), 0);
	CHECK(!u.steps_left);
	CHECK_EQ(u.count, MAP_PART_PAGES + 1);
	CHECK_EQ(u.bytes, (MAP_PART_PAGES + 1) * 4096ull);
	teardown(&t);
}

/* A step of two parts maps, then unmaps, up to the next IOVA aligned to two parts' bytes: a
 * mapping of four parts starting half-way into a pair of them takes three steps each way, and
 * is one mapping, all there, throughout. */
TEST(steps_of_many_parts)
{
	const uint64_t iova = IOVA + SMALL_PART;
	struct map_entry e = {.domain_id = 0,
			      .file = NULL,
			      .length = MEMORY_BYTES,
			      .prot = KH_PROT_READ | KH_PROT_WRITE,
			      .fixed_iova = true,
			      .iova = iova};
	const uint64_t mapped[] = {SMALL_PART, 3 * SMALL_PART, 4 * SMALL_PART};
	struct unmap_progress u;
	struct map_progress p;
	struct setup t;

	setup_topology(&t, SMALL_LEAVES);
	e.domain_id = t.domain;
	e.file = &t.file;
	CHECK_OK(session_map_start(t.session, &e, &p));
	CHECK_EQ(p.part, SMALL_PART);
	p.parts_per_step = 2;
	for (size_t i = 0; i < sizeof(mapped) / sizeof(mapped[0]); i++) {
		CHECK_EQ(session_map_step(t.session, &p),
			 i + 1 < sizeof(mapped) / sizeof(mapped[0]));
		CHECK_EQ(p.mapped, mapped[i]);
		CHECK_EQ(mapped_length(&t), mapped[i]);
	}
	CHECK_EQ(session_unmap_start(t.session, t.domain, 0, UINT64_MAX, false, &u), 1);
	u.parts_per_step = 2;
	CHECK_EQ(session_unmap_step(t.session, &u), 1);
	CHECK_EQ(mapped_length(&t), 3 * SMALL_PART);
	CHECK_EQ(session_unmap_step(t.session, &u), 1);
	CHECK_EQ(mapped_length(&t), SMALL_PART);
	CHECK_EQ(session_unmap_step(t.session, &u), 0);
	CHECK_EQ(u.bytes, MEMORY_BYTES);
	CHECK_EQ(u.count, 1);
	CHECK_EQ(registry_usage(t.reg).maps, 0);
	teardown(&t);
}
