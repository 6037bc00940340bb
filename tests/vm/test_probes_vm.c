// SPDX-License-Identifier: MIT
/*
 * The map path probes on a real kernel: the probes module (in this process, as the daemon runs
 * it) attaches at the tier asked for (fentry, and forced, kprobe); then N maps and N unmaps
 * through the daemon's RPC count exactly N in each histogram of the IOMMU driver layer and of
 * the ioctl layer, the same N the kernel's own iommu:map and iommu:unmap tracepoints count in
 * tracefs for the daemon's process; the counts go to the tenant slot the cgroup was registered to;
 * detached, the programs count nothing, and attached again they count as before; the kernel's
 * count of the handler programs' runs agrees (probes_program_stats); the daemon's own probes,
 * switched through its SetProbes RPC, count nothing while detached and every map and unmap once
 * attached again; probe-driver-latency is honoured by both (off: no driver entry program
 * loaded, the driver layer counted without latency; on: timed); and an edu
 * DMA to an unmapped IOVA shows in the fault counter where the IOMMU model reports faults.
 * The driver_timed cases check the exact counts and the setting with it on.
 * The same on whichever backend the daemon's `auto` picks, as long as it remaps (iommufd's
 * IOMMU_IOAS_MAP/UNMAP or VFIO type1's VFIO_IOMMU_MAP_DMA/UNMAP_DMA are the ioctl layer).
 *
 * Runs in the VM tier only (exit 77, skipped, where the daemon says it remaps nothing or offers
 * no edu bound to vfio-pci).
 */
#include <linux/types.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_edu.h"
#include "daemon_fixture.h"
#include "edu.h"
#include "harness.h"
#include "probes/probes.h"

#define TIER(t)	  IOMMUD__V1__PROBE_TIER__PROBE_TIER_##t
#define PAGE	  4096u
#define N_OPS	  16u
#define IOVA0	  0x100000u /* edu masks DMA addresses to 28 bits: stay below 256 MiB */
#define TRACEFS	  "/sys/kernel/tracing"
#define BPF_STATS "/proc/sys/kernel/bpf_stats_enabled"
#define SLOT	  7u /* the tenant slot this test gives its cgroup */
#define HOLE_IOVA (IOVA0 + 2 * N_OPS * PAGE)

FIXTURE(probes_vm)
{
	struct probes *probes;
	struct daemon_fixture daemon;
	struct iommuctl *c;
	char *edu; /* the device's name, which the daemon offers */
	uint32_t dom;
	int memfd;
};

/* Each latency tier with probe-driver-latency at its default (no: the driver layer counted,
 * not timed), the probes' and the daemon's; driver_timed below runs the tests that tell the
 * settings apart with it on. */
FIXTURE_VARIANT(probes_vm)
{
	Iommud__V1__ProbeTier tier;
};

FIXTURE_VARIANT_ADD(probes_vm, fentry){.tier = TIER(FENTRY)};
FIXTURE_VARIANT_ADD(probes_vm, kprobe){.tier = TIER(KPROBE)};

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	CHECK(f != NULL);
	CHECK(fputs(text, f) >= 0);
	CHECK(fclose(f) == 0);
}

/* The kernel's own record of driver maps and unmaps: its tracepoints, into a cleared buffer. */
static void trace_start(void)
{
	if (access(TRACEFS "/events/iommu/map/enable", F_OK) != 0)
		CHECK_OK(mount("nodev", TRACEFS, "tracefs", 0, NULL));
	write_text(TRACEFS "/buffer_size_kb", "1024");
	write_text(TRACEFS "/events/iommu/map/enable", "1");
	write_text(TRACEFS "/events/iommu/unmap/enable", "1");
	write_text(TRACEFS "/trace", "");
}

/* The pid a trace line's task field ("comm-pid", before " [cpu]") names; -1 if none. */
static long trace_pid(const char *line)
{
	const char *cpu = strstr(line, " [");
	const char *dash = cpu;

	while (dash && dash > line && dash[-1] != '-')
		dash--;
	return dash && dash > line ? strtol(dash, NULL, 10) : -1;
}

/* Whether a trace line's pid (a thread id) is one of the daemon's threads: it maps on its
 * event-loop threads, not its main one. */
static bool daemon_thread(pid_t daemon, long tid)
{
	char task[64];

	(void)snprintf(task, sizeof(task), "/proc/%d/task/%ld", (int)daemon, tid);
	return tid > 0 && access(task, F_OK) == 0;
}

/* The daemon's own driver maps and unmaps: what the probes count, which take only those inside
 * a map/unmap ioctl, and never another device's DMA mapping that the kernel traces too. */
static void trace_count(pid_t daemon, unsigned *maps, unsigned *unmaps)
{
	FILE *f = fopen(TRACEFS "/trace", "r");
	char line[512];

	CHECK(f != NULL);
	*maps = *unmaps = 0;
	while (fgets(line, sizeof(line), f)) {
		if (!daemon_thread(daemon, trace_pid(line)))
			continue;
		*maps += strstr(line, " map: IOMMU") != NULL;
		*unmaps += strstr(line, " unmap: IOMMU") != NULL;
	}
	(void)fclose(f);
	write_text(TRACEFS "/events/iommu/map/enable", "0");
	write_text(TRACEFS "/events/iommu/unmap/enable", "0");
}

/* The cgroup v2 id of this test (and so of the daemon it starts): the root's where no cgroup
 * hierarchy is set up, which is the initramfs's case. */
static uint64_t own_cgroup_id(void)
{
	struct stat st;

	(void)mkdir("/sys/fs/cgroup", 0755);
	if (access("/sys/fs/cgroup/cgroup.procs", F_OK) != 0)
		(void)mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL);
	return stat("/sys/fs/cgroup", &st) == 0 ? st.st_ino : 1;
}

struct totals {
	uint64_t count[IOMMUD_LAYER_COUNT][IOMMUD_OP_COUNT];
	uint64_t other_tenants; /* events counted to a slot other than SLOT */
};

static int add_up(const struct iommud_hist_key *key, const struct iommud_hist *hist, void *arg)
{
	struct totals *t = arg;

	if (key->layer < IOMMUD_LAYER_COUNT && key->op < IOMMUD_OP_COUNT)
		t->count[key->layer][key->op] += hist->count;
	if (key->tenant != SLOT)
		t->other_tenants += hist->count;
	return 0;
}

static struct totals totals_now(struct probes *p)
{
	struct totals t = {0};

	CHECK_OK(probes_read(p, add_up, &t));
	return t;
}

/* The difference in each kernel layer's counts from before to after. */
static void layer_deltas(const struct totals *before, const struct totals *after,
			 uint64_t delta[IOMMUD_LAYER_COUNT][IOMMUD_OP_COUNT])
{
	for (unsigned layer = 0; layer < IOMMUD_LAYER_COUNT; layer++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			delta[layer][op] = after->count[layer][op] - before->count[layer][op];
}

/* The daemon and this process's probes at tier, both with probe-driver-latency as asked, a
 * domain with the daemon's edu attached, and the memory to map. */
static void start(struct fixture_probes_vm *self, Iommud__V1__ProbeTier tier, bool driver_latency)
{
	struct probes_options opts = {.max_tier = tier, .driver_latency = driver_latency};
	Iommud__V1__HelloReply *hello;
	const char *const *lines;
	uint64_t cgroup;
	bool remaps;
	size_t n;

	cgroup = own_cgroup_id(); /* mounts cgroup2, which the daemon's Hello reads */
	/* The daemon's own choice, as it makes it where nothing names one. */
	CHECK_OK(setenv("IOMMUD_TEST_BACKEND", "auto", 1));
	fixture_start(&self->daemon, driver_latency ? "probe-driver-latency = yes\n" : "", NULL);
	CHECK_OK(iommuctl_connect(self->daemon.socket_path, &self->c));
	check_call(self->c, iommuctl_hello(self->c, "test_probes_vm", NULL, &hello), "Hello");
	remaps = !hello->nothing_remapped;
	(void)printf("backend %s\n", hello->backend_name);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	if (!remaps)
		SKIP("the daemon's backend remaps nothing: this test runs in the VM tier");
	CHECK_OK(probes_start(&opts, &self->probes));
	n = probes_detached(self->probes, &lines);
	for (size_t i = 0; i < n; i++)
		(void)printf("not attached: %s\n", lines[i]);
	CHECK_EQ(probes_tier(self->probes), tier);
	CHECK_EQ(probes_driver_latency(self->probes), driver_latency);
	CHECK_OK(probes_register_cgroup(self->probes, cgroup, SLOT));
	self->edu = find_edu(self->c);
	if (!self->edu)
		SKIP("the daemon offers no edu device");
	check_call(self->c,
		   iommuctl_alloc_domain(self->c, self->edu, IOMMUCTL_DOMAIN_PAGING, 0, &self->dom),
		   "AllocDomain");
	check_call(self->c, iommuctl_attach(self->c, self->edu, self->dom), "AttachDevice");
	self->memfd = iommuctl_memfd("probes", N_OPS * PAGE);
	CHECK_OK(self->memfd);
}

static void stop(struct fixture_probes_vm *self)
{
	(void)close(self->memfd);
	free(self->edu);
	iommuctl_close(self->c);
	fixture_stop(&self->daemon);
	probes_stop(self->probes);
}

FIXTURE_SETUP(probes_vm)
{
	start(self, variant->tier, false);
}

FIXTURE_TEARDOWN(probes_vm)
{
	stop(self);
}

static void map_and_unmap(struct fixture_probes_vm *self)
{
	uint64_t iova, bytes;

	for (unsigned i = 0; i < N_OPS; i++) {
		iova = IOVA0 + 2 * i * PAGE; /* apart, so that no two merge in the page table */
		check_call(self->c,
			   iommuctl_map_fd(self->c, self->dom, self->memfd, i * PAGE, PAGE,
					   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0,
					   &iova),
			   "Map");
	}
	for (unsigned i = 0; i < N_OPS; i++) {
		check_call(self->c,
			   iommuctl_unmap(self->c, self->dom, IOVA0 + 2 * i * PAGE, PAGE, &bytes),
			   "Unmap");
		CHECK_EQ(bytes, PAGE);
	}
}

/* The driver and the ioctl layer count exactly the maps and unmaps made, as tracefs does. */
static void check_counts_match_the_kernel(struct fixture_probes_vm *self)
{
	struct totals before = totals_now(self->probes), after;
	uint64_t delta[IOMMUD_LAYER_COUNT][IOMMUD_OP_COUNT];
	unsigned trace_maps, trace_unmaps;

	trace_start();
	map_and_unmap(self);
	trace_count(self->daemon.pid, &trace_maps, &trace_unmaps);
	after = totals_now(self->probes);
	layer_deltas(&before, &after, delta);
	for (unsigned layer = IOMMUD_LAYER_IOMMU; layer <= IOMMUD_LAYER_IOCTL; layer++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			(void)printf("layer %u op %u: %llu\n", layer, op,
				     (unsigned long long)delta[layer][op]);
	(void)printf("tracefs: %u iommu:map, %u iommu:unmap\n", trace_maps, trace_unmaps);
	CHECK_EQ(trace_maps, N_OPS);
	CHECK_EQ(trace_unmaps, N_OPS);
	CHECK_EQ(delta[IOMMUD_LAYER_IOMMU][IOMMUD_OP_MAP], trace_maps);
	CHECK_EQ(delta[IOMMUD_LAYER_IOMMU][IOMMUD_OP_UNMAP], trace_unmaps);
	CHECK_EQ(delta[IOMMUD_LAYER_IOCTL][IOMMUD_OP_MAP], N_OPS);
	CHECK_EQ(delta[IOMMUD_LAYER_IOCTL][IOMMUD_OP_UNMAP], N_OPS);
	/* the daemon runs in the cgroup registered to SLOT: all of it counts there */
	CHECK_EQ(after.other_tenants, 0u);
	CHECK_EQ(probes_dropped_events(self->probes), 0u);
}

/* The driver layer's programs loaded: its entries (map, unmap and unmap_fast at fentry or
 * kprobe), the tracepoint programs that end their timing, and those that only count. */
struct driver_programs {
	unsigned entries, ends, counts;
};

static bool named(const char *program, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(program, names[i]) == 0)
			return true;
	return false;
}

static int add_driver_program(const char *program, uint64_t runs, uint64_t ns, void *arg)
{
	static const char *const entries[] = {"map_fentry", "unmap_fentry", "unmap_fast_fentry",
					      "map_kprobe", "unmap_kprobe", "unmap_fast_kprobe"};
	static const char *const ends[] = {"map_end", "unmap_end"};
	static const char *const counts[] = {"map_count", "unmap_count"};
	struct driver_programs *d = arg;

	(void)runs;
	(void)ns;
	d->entries += named(program, entries, sizeof(entries) / sizeof(entries[0]));
	d->ends += named(program, ends, sizeof(ends) / sizeof(ends[0]));
	d->counts += named(program, counts, sizeof(counts) / sizeof(counts[0]));
	return 0;
}

/* The driver layer's histograms summed: calls, calls in a latency bucket, time. */
struct driver_hists {
	uint64_t count, bucketed, sum_ns;
};

static int add_driver_hist(const struct iommud_hist_key *key, const struct iommud_hist *hist,
			   void *arg)
{
	struct driver_hists *d = arg;

	if (key->layer != IOMMUD_LAYER_IOMMU)
		return 0;
	d->count += hist->count;
	d->sum_ns += hist->sum_ns;
	for (unsigned b = 0; b < IOMMUD_HIST_BUCKETS; b++)
		d->bucketed += hist->buckets[b];
	return 0;
}

/* The daemon's setting as GetStats reports it, and whether its driver layer histograms have
 * latency buckets (-1: it has none). */
static int daemon_driver_buckets(struct iommuctl *c, bool *ret_driver_latency)
{
	Iommud__V1__Response *resp = fixture_get_stats(c);
	int bucketed = -1;

	for (size_t i = 0; i < resp->get_stats->n_map_latency; i++) {
		const Iommud__V1__MapLatency *ml = resp->get_stats->map_latency[i];

		if ((unsigned)ml->layer - 1 == IOMMUD_LAYER_IOMMU && ml->latency && bucketed != 1)
			bucketed = ml->latency->n_buckets > 0;
	}
	*ret_driver_latency = resp->get_stats->probes->driver_latency;
	iommuctl_response_free(resp);
	return bucketed;
}

/* probe-driver-latency honoured, after the maps and unmaps of check_counts_match_the_kernel:
 * off, no driver entry program is loaded (so none attached) and the tracepoints count every
 * call with no latency; on, the entries and the tracepoints that end their timing, and every
 * call in a latency bucket. The same of the daemon's own probes, as GetStats reports them. */
static void check_driver_latency(struct fixture_probes_vm *self, bool driver_latency)
{
	struct driver_programs progs = {0};
	struct driver_hists hists = {0};
	bool daemon_setting;
	int daemon_bucketed;

	CHECK_OK(probes_program_stats(self->probes, add_driver_program, &progs));
	CHECK_OK(probes_read(self->probes, add_driver_hist, &hists));
	daemon_bucketed = daemon_driver_buckets(self->c, &daemon_setting);
	(void)printf("driver programs: %u entries, %u ends, %u counting; %llu calls, %llu "
		     "bucketed, %llu ns; the daemon's: setting %d, bucketed %d\n",
		     progs.entries, progs.ends, progs.counts, (unsigned long long)hists.count,
		     (unsigned long long)hists.bucketed, (unsigned long long)hists.sum_ns,
		     daemon_setting, daemon_bucketed);
	CHECK(probes_attached(self->probes));
	CHECK(hists.count >= 2 * N_OPS);
	CHECK_EQ(daemon_setting, driver_latency);
	if (driver_latency) {
		CHECK(progs.entries >= 2);
		CHECK_EQ(progs.ends, 2u);
		CHECK_EQ(progs.counts, 0u);
		CHECK_EQ(hists.bucketed, hists.count);
		CHECK(hists.sum_ns > 0);
		CHECK_EQ(daemon_bucketed, 1);
	} else {
		CHECK_EQ(progs.entries, 0u);
		CHECK_EQ(progs.ends, 0u);
		CHECK_EQ(progs.counts, 2u);
		CHECK_EQ(hists.bucketed, 0u);
		CHECK_EQ(hists.sum_ns, 0u);
		CHECK_EQ(daemon_bucketed, 0);
	}
}

/* And the driver layer is counted, not timed, as probe-driver-latency's default says (in the
 * same case: each case's daemon and programs take seconds to start under TCG). */
TEST_F(probes_vm, counts_match_the_kernel)
{
	check_counts_match_the_kernel(self);
	check_driver_latency(self, false);
}

/* Each kernel layer counted expected maps and expected unmaps between before and after. */
static void check_counted(const struct totals *before, const struct totals *after,
			  uint64_t expected)
{
	uint64_t delta[IOMMUD_LAYER_COUNT][IOMMUD_OP_COUNT];

	layer_deltas(before, after, delta);
	for (unsigned layer = IOMMUD_LAYER_IOMMU; layer <= IOMMUD_LAYER_IOCTL; layer++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			CHECK_EQ(delta[layer][op], expected);
}

/* Detached, the programs count nothing; attached again, they count every map and unmap as
 * before, into the histograms they kept (what iommud-probes-bench relies on). */
TEST_F(probes_vm, detach_and_attach_again)
{
	struct totals before = totals_now(self->probes), detached, attached;

	CHECK_OK(probes_set_attached(self->probes, false));
	map_and_unmap(self);
	detached = totals_now(self->probes);
	check_counted(&before, &detached, 0);
	CHECK_OK(probes_set_attached(self->probes, true));
	map_and_unmap(self);
	attached = totals_now(self->probes);
	check_counted(&detached, &attached, N_OPS);
	CHECK_EQ(probes_dropped_events(self->probes), 0u);
}

/* The daemon's own kernel map path counts, as GetStats gives them to an observer (the test
 * runs as root); the schema's layers and ops are the probes' less the unspecified zero. */
static struct totals daemon_totals(struct iommuctl *c, bool *ret_attached)
{
	Iommud__V1__Response *resp = fixture_get_stats(c);
	struct totals t = {0};

	for (size_t i = 0; i < resp->get_stats->n_map_latency; i++) {
		const Iommud__V1__MapLatency *ml = resp->get_stats->map_latency[i];
		unsigned layer = (unsigned)ml->layer - 1, op = (unsigned)ml->op - 1;

		if (layer < IOMMUD_LAYER_COUNT && op < IOMMUD_OP_COUNT && ml->latency)
			t.count[layer][op] += ml->latency->count;
	}
	*ret_attached = resp->get_stats->probes->attached;
	iommuctl_response_free(resp);
	return t;
}

/* SetProbes on the daemon, checked: its reply and GetStats say what was asked. */
static struct totals set_daemon_probes(struct iommuctl *c, bool attached)
{
	Iommud__V1__ProbeTier tier;
	bool now, reported;
	struct totals t;

	check_call(c, iommuctl_set_probes(c, attached, &tier, &now), "SetProbes");
	CHECK(tier != TIER(OFF));
	CHECK_EQ(now, attached);
	t = daemon_totals(c, &reported);
	CHECK_EQ(reported, attached);
	return t;
}

/* The operator's switch, through the RPC: the daemon's own histograms stop counting while its
 * probes are detached and count every map and unmap again once attached (a switch that changed
 * nothing would count N_OPS in the first half). */
TEST_F(probes_vm, switched_through_the_rpc)
{
	struct totals before = set_daemon_probes(self->c, false), after;
	bool reported;

	map_and_unmap(self);
	after = daemon_totals(self->c, &reported);
	check_counted(&before, &after, 0);
	before = set_daemon_probes(self->c, true);
	map_and_unmap(self);
	after = daemon_totals(self->c, &reported);
	check_counted(&before, &after, N_OPS);
}

/* Runs of the iommufd handlers' programs (ioas_*), and how many of them are loaded. */
struct handler_runs {
	uint64_t runs;
	unsigned programs;
};

static int add_handler_runs(const char *program, uint64_t runs, uint64_t ns, void *arg)
{
	struct handler_runs *r = arg;

	(void)ns;
	if (strncmp(program, "ioas_", 5) == 0) {
		r->runs += runs;
		r->programs++;
	}
	return 0;
}

/* The kernel's own count of each program's runs, which iommud-probes-bench breaks the probes'
 * cost down by, as probes_program_stats reads it: each map and unmap ioctl ran its iommufd
 * handler's entry and exit program once, nothing else ran them. */
TEST_F(probes_vm, program_runs_counted)
{
	struct handler_runs before = {0}, after = {0};

	write_text(BPF_STATS, "1");
	CHECK_OK(probes_program_stats(self->probes, add_handler_runs, &before));
	map_and_unmap(self);
	CHECK_OK(probes_program_stats(self->probes, add_handler_runs, &after));
	write_text(BPF_STATS, "0");
	if (!after.programs)
		SKIP("no iommufd handler programs at this tier on this backend");
	CHECK_EQ(after.runs - before.runs, 4 * N_OPS);
}

/* probe-driver-latency = yes, at each latency tier: the same exact counts, and timed. One case
 * each: the other cases do not depend on the setting. */
FIXTURE(driver_timed)
{
	struct fixture_probes_vm vm;
};

FIXTURE_VARIANT(driver_timed)
{
	Iommud__V1__ProbeTier tier;
};

FIXTURE_VARIANT_ADD(driver_timed, fentry){.tier = TIER(FENTRY)};
FIXTURE_VARIANT_ADD(driver_timed, kprobe){.tier = TIER(KPROBE)};

FIXTURE_SETUP(driver_timed)
{
	start(&self->vm, variant->tier, true);
}

FIXTURE_TEARDOWN(driver_timed)
{
	stop(&self->vm);
}

TEST_F(driver_timed, counts_match_the_kernel)
{
	check_counts_match_the_kernel(&self->vm);
	check_driver_latency(&self->vm, true);
}

static int add_faults(const char *device, uint64_t count, void *arg)
{
	(void)printf("faults of %s: %llu\n", device, (unsigned long long)count);
	*(uint64_t *)arg += count;
	return 0;
}

static uint64_t faults_now(struct probes *p)
{
	uint64_t n = 0;

	CHECK_OK(probes_read_faults(p, add_faults, &n));
	return n;
}

/* Whether a fault counter for this model's driver attached; AMD-Vi reports through
 * report_iommu_fault, which qemu 7.2's model never reaches (it logs nothing either). */
static bool model_reports_faults(struct probes *p)
{
	const char *model = getenv("IOMMUD_VM_IOMMU");
	const char *what = model && strcmp(model, "intel") == 0	   ? "VT-d faults"
			   : model && strcmp(model, "virtio") == 0 ? "virtio-iommu faults"
								   : NULL;
	const char *const *lines;
	size_t n = probes_detached(p, &lines);

	if (!what)
		return false;
	for (size_t i = 0; i < n; i++)
		if (strncmp(lines[i], what, strlen(what)) == 0)
			return false;
	return true;
}

TEST_F(probes_vm, unmapped_dma_faults)
{
	uint64_t before = faults_now(self->probes), after = before;
	struct edu edu;
	int vfio = iommuctl_open_device(self->c, self->edu);

	check_call(self->c, vfio, "OpenDevice");
	edu_init(&edu, vfio);
	edu_dma(&edu, HOLE_IOVA, EDU_XFER, true);
	/* The fault interrupt may come after the device says done. */
	for (int i = 0; i < 100 && after == before; i++) {
		usleep(20000);
		after = faults_now(self->probes);
	}
	(void)printf("%llu faults counted\n", (unsigned long long)(after - before));
	if (model_reports_faults(self->probes))
		CHECK(after > before);
	else
		(void)printf("note: this IOMMU model reports no faults the probes can count\n");
	(void)close(vfio);
}
