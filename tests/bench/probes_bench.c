// SPDX-License-Identifier: MIT
/*
 * iommud-probes-bench: what watching the map path costs. The daemon's own map+unmap path
 * (session_map/session_unmap over kernel-helper, as the Map and Unmap methods run it), with the
 * probes attached and timing it and without, in alternating blocks of one run (the programs
 * loaded once, attached and detached between blocks), and the ratio of the medians printed
 * side by side, on the backend the daemon's `auto` picks (named in the first line). On a kernel
 * backend (iommufd or VFIO type1: the VM tier) "attached" means the BPF programs on the kernel's
 * path; on the emulated backend (any host) the daemon's in-process timing, plus whatever BPF
 * tier the host allows. Then, where BPF programs are attached, each program's runs and time per
 * pair as the kernel's BPF statistics count them: where the cost goes. Figures only: nothing is
 * asserted.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iommuctl.h>
#include <kh/kh.h>
#include <names.h>

#include "bench_clock.h"
#include "log.h"
#include "probes/probes.h"
#include "session.h"

#define MiB  (1ull << 20)
#define IOVA 0x100000ull

struct bench {
	struct config cfg;
	struct kh_backend *be;
	struct registry *reg;
	struct tenant *tenant;
	struct session *session;
	uint32_t dom;
	struct map_file file;
	struct probes *probes;
};

static void fail(const char *what, const char *why)
{
	(void)fprintf(stderr, "iommud-probes-bench: %s: %s\n", what, why);
	exit(1);
}

/* The probes as the daemon starts them for this backend, before any session, so that the
 * session's descriptor is registered for attribution as the daemon's are. */
static struct probes *attach(struct bench *b)
{
	struct probes_options opts = {
		.max_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_FENTRY,
		.in_process = kh_backend_caps(b->be) & KH_CAP_MAP_IN_PROCESS,
		.tenant_slots = registry_label_slots(b->reg),
	};
	const char *const *lines;
	struct probes *p;
	size_t n;

	if (probes_start(&opts, &p) < 0)
		fail("starting the probes", strerror(ENOMEM));
	n = probes_detached(p, &lines);
	for (size_t i = 0; i < n; i++)
		(void)printf("not attached: %s\n", lines[i]);
	registry_set_probes(b->reg, p);
	return p;
}

/* The backend the daemon would choose, the probes, a session of root's, and a domain on its
 * first device, attached. */
static void setup(struct bench *b, int memfd)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	char cgroup[] = "/";
	struct peer root = {.pid = getpid(), .cgroup = cgroup};
	struct kh_device_info dev;
	enum access granted;
	uint32_t dev_id;

	if (kh_backend_open("auto", NULL, &b->be) < 0 || kh_device_info(b->be, 0, &dev) < 0)
		fail("opening the backend", kh_last_error());
	if (config_defaults(&b->cfg) < 0 || !(b->reg = registry_create(b->be, &b->cfg)))
		fail("setting up", strerror(ENOMEM));
	b->probes = attach(b);
	if (tenant_get(b->reg, &root, &b->tenant, &granted) < 0 ||
	    session_join(b->tenant, NULL, &b->session) < 0 ||
	    session_alloc_domain(b->session, dev.name, &paging, &b->dom) < 0 ||
	    session_device(b->session, dev.name, false, &dev_id) < 0 ||
	    kh_attach(session_ctx(b->session), dev_id, b->dom) < 0 ||
	    session_check_file(memfd, &b->file) < 0)
		fail("setting up a session", kh_last_error());
	(void)printf("backend %s, device %s, probes at tier %s\n", kh_backend_name(b->be), dev.name,
		     iommud_name(&iommud_probe_tier_names, probes_tier(b->probes)));
}

/* The probes back in the registry first, as the daemon keeps them until its tenants are gone:
 * a tenant registered its cgroup with them and unregisters it when released, and the last
 * measured block may have left them out. */
static void teardown(struct bench *b)
{
	registry_set_probes(b->reg, b->probes);
	session_leave(b->session);
	tenant_put(b->tenant);
	registry_set_probes(b->reg, NULL);
	probes_stop(b->probes);
	registry_destroy(b->reg);
	config_free(&b->cfg);
	kh_backend_close(b->be);
}

static uint64_t map_unmap_ns(struct bench *b, uint64_t len)
{
	struct map_entry e = {.domain_id = b->dom,
			      .file = &b->file,
			      .length = len,
			      .prot = KH_PROT_READ | KH_PROT_WRITE,
			      .fixed_iova = true,
			      .iova = IOVA};
	uint64_t bytes, t0 = now_ns();
	uint32_t count;

	if (session_map(b->session, &e) < 0 ||
	    session_unmap(b->session, b->dom, IOVA, len, &bytes, &count) < 0)
		fail("map+unmap", "the session refused it");
	return now_ns() - t0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *ns, size_t n)
{
	qsort(ns, n, sizeof(*ns), cmp_u64);
	return ns[n / 2];
}

/* Untimed pairs at the start of each block: under TCG, the first runs through kernel text that
 * attaching or detaching just rewrote are translated anew. */
#define WARMUP 3

/* How long each switch is left to settle before its block: detaching hands the old trampoline to
 * an RCU-tasks grace period, whose kernel thread would otherwise run during the next block (on
 * the one host thread that runs all of a TCG guest's CPUs) and charge it to whichever side
 * follows. */
#define SETTLE_US 100000

/* Attached or not: the BPF programs on the kernel's functions and the in-process clock. */
static void set_attached(struct bench *b, bool on)
{
	if (probes_set_attached(b->probes, on) < 0)
		fail("attaching the probes again", "the kernel refused");
	registry_set_probes(b->reg, on ? b->probes : NULL);
	(void)usleep(SETTLE_US);
}

/* Blocks of not attached and attached, the order swapped every round, so that drift (a TCG
 * guest's on a busy host above all) and the first block's warmth hit both sides alike; both
 * sides do the same pairs, only the probes differ. */
static void measure(struct bench *b, const char *label, uint64_t len, size_t per_block,
		    unsigned rounds)
{
	size_t n = per_block * rounds;
	uint64_t *side[2] = {calloc(n, sizeof(uint64_t)), calloc(n, sizeof(uint64_t))};
	uint64_t med[2];

	if (!side[0] || !side[1])
		fail("allocating samples", strerror(ENOMEM));
	for (unsigned r = 0; r < rounds; r++)
		for (unsigned half = 0; half < 2; half++) {
			bool on = (r + half) % 2;

			set_attached(b, on);
			for (size_t i = 0; i < WARMUP; i++)
				(void)map_unmap_ns(b, len);
			for (size_t i = 0; i < per_block; i++)
				side[on][r * per_block + i] = map_unmap_ns(b, len);
		}
	for (unsigned on = 0; on < 2; on++)
		med[on] = median(side[on], n);
	(void)printf("%-6s %8zu %8u %12lu %12lu %8.3f\n", label, n, rounds, (unsigned long)med[0],
		     (unsigned long)med[1], (double)med[1] / (double)med[0]);
	free(side[0]);
	free(side[1]);
}

/* Where the kernel is told to count each BPF program's runs and time (bpf_stats_enabled). */
#define BPF_STATS_SYSCTL "/proc/sys/kernel/bpf_stats_enabled"
#define MAX_PROGRAMS	 32

struct program_stats {
	size_t n;
	struct {
		char name[64];
		uint64_t runs, ns;
	} prog[MAX_PROGRAMS];
};

static int keep_stats(const char *program, uint64_t runs, uint64_t ns, void *arg)
{
	struct program_stats *s = arg;

	if (s->n < MAX_PROGRAMS) {
		(void)snprintf(s->prog[s->n].name, sizeof(s->prog[s->n].name), "%s", program);
		s->prog[s->n].runs = runs;
		s->prog[s->n++].ns = ns;
	}
	return 0;
}

/* Writes value ("0" or "1") and gives what was there before in *ret_old. */
static bool set_bpf_stats(const char *value, char *ret_old)
{
	FILE *f = fopen(BPF_STATS_SYSCTL, "r+e");
	bool ok = f && fread(ret_old, 1, 1, f) == 1 && fseek(f, 0, SEEK_SET) == 0 &&
		  fputs(value, f) >= 0;

	return f && fclose(f) == 0 && ok;
}

/* Where the probes' cost goes: each program's runs and the time inside it per pair, as the
 * kernel counts them with its BPF statistics on (after the timed blocks: counting costs time
 * of its own). What the pair's on-off difference has beyond the programs' own time is the
 * trampolines' and tracepoints' entry and exit around them. */
static void breakdown(struct bench *b, const char *label, uint64_t len, size_t pairs)
{
	struct program_stats before = {0}, after = {0};
	char was[2] = "0", ignored;
	uint64_t total = 0;

	set_attached(b, true);
	if (!set_bpf_stats("1", was)) {
		(void)printf("%s: no per-program figures: cannot write %s\n", label,
			     BPF_STATS_SYSCTL);
		return;
	}
	for (size_t i = 0; i < WARMUP; i++)
		(void)map_unmap_ns(b, len);
	(void)probes_program_stats(b->probes, keep_stats, &before);
	for (size_t i = 0; i < pairs; i++)
		(void)map_unmap_ns(b, len);
	(void)probes_program_stats(b->probes, keep_stats, &after);
	(void)set_bpf_stats(was, &ignored);
	for (size_t i = 0; i < after.n && i < before.n; i++) {
		uint64_t runs = after.prog[i].runs - before.prog[i].runs,
			 ns = after.prog[i].ns - before.prog[i].ns;

		if (!runs)
			continue;
		(void)printf("%-6s %-24s %10.2f %12.1f\n", label, after.prog[i].name,
			     (double)runs / (double)pairs, (double)ns / (double)pairs);
		total += ns;
	}
	(void)printf("%-6s %-24s %10s %12.1f\n", label, "all programs", "",
		     (double)total / (double)pairs);
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"usage: iommud-probes-bench [--quick] [--help]\n"
		"\n"
		"Times the daemon's map+unmap path (4 KiB and 2 MiB) with the map path probes\n"
		"attached and without, in blocks that alternate (the order swapped each\n"
		"round; the programs stay loaded, only attached or not), and prints the\n"
		"number of pairs timed on each side, the rounds, the median of each side and\n"
		"their ratio (attached/not; the goal is <= 1.05); then, where BPF programs\n"
		"are attached, each program's runs and time per pair (kernel.bpf_stats_enabled\n"
		"on for that part only). On the iommufd backend\n"
		"(when /dev/iommu exists) the probes are BPF programs in the kernel; on the\n"
		"emulated backend, the daemon's own timing. Run it as root to attach BPF;\n"
		"in the VM tier it runs on iommufd (tests/vm/README.md). --quick: a few\n"
		"samples, to show that it runs.\n");
}

int main(int argc, char **argv)
{
	bool quick = argc == 2 && strcmp(argv[1], "--quick") == 0;
	struct bench b = {0};
	bool in_process;
	int memfd;

	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (argc > 2 || (argc == 2 && !quick)) {
		usage(stderr);
		return 2;
	}
	log_set_level(LOG_WARNING);
	memfd = iommuctl_memfd("probes-bench", 2 * MiB);
	if (memfd < 0)
		fail("creating a memfd", strerror(-memfd));
	setup(&b, memfd);
	(void)printf("%-6s %8s %8s %12s %12s %8s\n", "size", "pairs", "rounds", "off-med-ns",
		     "on-med-ns", "on/off");
	/* The kernel's path, in a TCG guest above all, is a hundred times the emulation's. */
	in_process = kh_backend_caps(b.be) & KH_CAP_MAP_IN_PROCESS;
	/* Rounds cost the switches: attaching and detaching takes about 0.3 s under TCG, and the
	 * VM tier gives the bench a minute. */
	measure(&b, "4KiB", 4096, quick ? 10 : in_process ? 800 : 80, quick ? 2 : 12);
	measure(&b, "2MiB", 2 * MiB, quick ? 5 : in_process ? 250 : 12, quick ? 2 : 8);
	if (probes_tier(b.probes) != IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF) {
		(void)printf("%-6s %-24s %10s %12s\n", "size", "program", "runs/pair", "ns/pair");
		breakdown(&b, "4KiB", 4096, quick ? 10 : 200);
		breakdown(&b, "2MiB", 2 * MiB, quick ? 5 : 24);
	}
	teardown(&b);
	(void)close(memfd);
	return 0;
}
