// SPDX-License-Identifier: MIT
/*
 * iommud-probes-bench: what watching the map path costs, at two levels in one run. "session":
 * the daemon's own map+unmap path (session_map/session_unmap over kernel-helper, as the Map and
 * Unmap methods run it) in this process, with the probes attached and timing it and without, in
 * alternating blocks (the programs loaded once, attached and detached between blocks). "rpc":
 * what a tenant pays, a client's Map and Unmap round trips to a daemon this bench starts, in the
 * same blocks, that daemon's probes switched by its SetProbes RPC. Both on the backend the
 * daemon's `auto` picks (named in the first line). On a kernel backend (iommufd or VFIO type1:
 * the VM tier) "attached" means the BPF programs on the kernel's path; on the emulated backend
 * (any host) the daemon's in-process timing, plus whatever BPF tier the host allows (the rpc
 * level needs one: a daemon whose tier is off has nothing to switch). Then, where BPF programs
 * are attached, each program's runs and time per session-level pair as the kernel's BPF
 * statistics count them: where the cost goes. All of that under each setting of the daemon's
 * probe-driver-latency in turn (no: the IOMMU driver's calls counted at their tracepoints; yes:
 * timed from their entry too). Last, the two levels' ratios under both settings side by side.
 * Figures only: nothing is asserted.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iommuctl.h>
#include <kh/kh.h>
#include <names.h>

#include "bench_clock.h"
#include "bench_median.h"
#include "daemon_fixture.h"
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
	bool driver_latency; /* the setting measured: probe-driver-latency */
	/* The device the session attached and its backend, which the rpc level's daemon takes. */
	char device[KH_NAME_MAX];
	char backend[32];
};

/* The rpc level: a daemon of the bench's own and a client of it, one domain attached. */
struct rpc {
	struct daemon_fixture daemon;
	struct iommuctl *c;
	uint32_t dom;
	int memfd; /* borrowed from main */
};

/* The rpc level's daemon while it runs: a failure stops it, so that neither the process nor its
 * socket's folder outlives the bench. */
static struct daemon_fixture *running_daemon;

static void fail(const char *what, const char *why)
{
	(void)fprintf(stderr, "iommud-probes-bench: %s: %s\n", what, why);
	if (running_daemon)
		fixture_stop(running_daemon);
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
		.driver_latency = b->driver_latency,
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
	(void)snprintf(b->device, sizeof(b->device), "%s", dev.name);
	(void)snprintf(b->backend, sizeof(b->backend), "%s", kh_backend_name(b->be));
	(void)printf("backend %s, device %s, probes at tier %s%s\n", kh_backend_name(b->be),
		     dev.name, iommud_name(&iommud_probe_tier_names, probes_tier(b->probes)),
		     probes_driver_note(b->probes));
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

static uint64_t session_pair_ns(void *ctx, uint64_t len)
{
	struct bench *b = ctx;
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
static void session_set_attached(void *ctx, bool on)
{
	struct bench *b = ctx;

	if (probes_set_attached(b->probes, on) < 0)
		fail("attaching the probes again", "the kernel refused");
	registry_set_probes(b->reg, on ? b->probes : NULL);
	(void)usleep(SETTLE_US);
}

/* What the blocks compare at one level: a timed map+unmap pair, and the switch. */
struct level {
	const char *name;
	uint64_t (*pair_ns)(void *ctx, uint64_t len);
	void (*set_attached)(void *ctx, bool on);
	void *ctx;
};

/* The sizes measured, and how many pairs of each, the same at both levels so that their ratios
 * compare: the kernel's path, in a TCG guest above all, is a hundred times the emulation's.
 * Rounds cost the switches: attaching and detaching takes about 0.3 s under TCG, and the VM
 * tier gives the bench five minutes for both levels under both settings (about three, unloaded). */
struct size {
	const char *label;
	uint64_t len;
	size_t per_block[2]; /* on a kernel backend, in process (emulated) */
	unsigned rounds;
	size_t quick_per_block; /* --quick, in 2 rounds */
};

static const struct size sizes[] = {
	{"4KiB", 4096, {80, 800}, 12, 10},
	{"2MiB", 2 * MiB, {12, 250}, 8, 5},
};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

/* What one size gave at one level: the median of the rounds' ratios and their spread. */
struct ratios {
	double median, min, max;
};

/* Blocks of not attached and attached, the order swapped every round, so that drift (a TCG
 * guest's on a busy host above all) and the first block's warmth hit both sides alike; both
 * sides do the same pairs, only the probes differ. Each round gives its own ratio (its blocks'
 * medians): drift between rounds then moves the spread, not one side's pooled median. */
static struct ratios measure(const struct level *lv, const char *label, uint64_t len,
			     size_t per_block, unsigned rounds)
{
	uint64_t *block = calloc(per_block, sizeof(uint64_t)), med[2];
	double *ratio = calloc(rounds, sizeof(double));
	struct ratios out;

	if (!block || !ratio)
		fail("allocating samples", strerror(ENOMEM));
	for (unsigned r = 0; r < rounds; r++) {
		for (unsigned half = 0; half < 2; half++) {
			bool on = (r + half) % 2;

			lv->set_attached(lv->ctx, on);
			for (size_t i = 0; i < WARMUP; i++)
				(void)lv->pair_ns(lv->ctx, len);
			for (size_t i = 0; i < per_block; i++)
				block[i] = lv->pair_ns(lv->ctx, len);
			med[on] = median(block, per_block);
		}
		ratio[r] = (double)med[1] / (double)med[0];
	}
	out.median = bench_median(ratio, rounds);
	out.min = ratio[0];
	out.max = ratio[rounds - 1];
	(void)printf("%-8s %-6s %8zu %8u %8.3f %8.3f %8.3f\n", lv->name, label, per_block, rounds,
		     out.median, out.min, out.max);
	free(block);
	free(ratio);
	return out;
}

static void measure_sizes(const struct level *lv, bool in_process, bool quick,
			  struct ratios *ret_ratios)
{
	for (size_t i = 0; i < N_SIZES; i++) {
		size_t per_block =
			quick ? sizes[i].quick_per_block : sizes[i].per_block[in_process];

		ret_ratios[i] = measure(lv, sizes[i].label, sizes[i].len, per_block,
					quick ? 2 : sizes[i].rounds);
	}
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

	session_set_attached(b, true);
	if (!set_bpf_stats("1", was)) {
		(void)printf("%s: no per-program figures: cannot write %s\n", label,
			     BPF_STATS_SYSCTL);
		return;
	}
	for (size_t i = 0; i < WARMUP; i++)
		(void)session_pair_ns(b, len);
	(void)probes_program_stats(b->probes, keep_stats, &before);
	for (size_t i = 0; i < pairs; i++)
		(void)session_pair_ns(b, len);
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

/* ---- the rpc level ----------------------------------------------------------------------- */

static void rpc_check(struct rpc *r, int err, const char *what)
{
	if (err < 0)
		fail(what, iommuctl_last_error(r->c));
}

static uint64_t rpc_pair_ns(void *ctx, uint64_t len)
{
	struct rpc *r = ctx;
	uint64_t iova = IOVA, t0 = now_ns();

	rpc_check(r,
		  iommuctl_map_fd(r->c, r->dom, r->memfd, 0, len,
				  IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		  "Map");
	rpc_check(r, iommuctl_unmap(r->c, r->dom, IOVA, len, NULL), "Unmap");
	return now_ns() - t0;
}

/* The daemon's probes switched as an operator switches them, then left to settle. */
static void rpc_set_attached(void *ctx, bool on)
{
	struct rpc *r = ctx;

	rpc_check(r, iommuctl_set_probes(r->c, on, NULL, NULL), "SetProbes");
	(void)usleep(SETTLE_US);
}

/* A daemon on the session level's backend, and root's client of it with the session level's
 * device attached to a domain; false, with a line saying why, when the daemon's probes cannot
 * be switched because its tier is off, which only a session level without BPF programs
 * (session_bpf) expects: anything else is a failure. */
static bool rpc_start(struct rpc *r, const struct bench *b, bool in_process, bool session_bpf,
		      int memfd)
{
	char config[128];
	Iommud__V1__ProbeTier tier;

	(void)snprintf(config, sizeof(config),
		       "probe-driver-latency = %s\n[uid 0]\naccess = write\ndevices = *\n",
		       b->driver_latency ? "yes" : "no");
	if (in_process) {
		fixture_start(&r->daemon, config, b->device);
	} else {
		/* The fixture's kernel backend is the one this variable names. */
		if (setenv("IOMMUD_TEST_BACKEND", b->backend, 0) < 0)
			fail("naming the daemon's backend", strerror(errno));
		fixture_start(&r->daemon, config, NULL);
	}
	running_daemon = &r->daemon;
	r->memfd = memfd;
	if (iommuctl_connect(r->daemon.socket_path, &r->c) < 0)
		fail("connecting to the bench's daemon", iommuctl_last_error(r->c));
	rpc_check(r, iommuctl_hello(r->c, "iommud-probes-bench", NULL, NULL), "Hello");
	rpc_check(r, iommuctl_alloc_domain(r->c, b->device, IOMMUCTL_DOMAIN_PAGING, 0, &r->dom),
		  "AllocDomain");
	rpc_check(r, iommuctl_attach(r->c, b->device, r->dom), "AttachDevice");
	if (iommuctl_set_probes(r->c, true, &tier, NULL) < 0) {
		if (session_bpf ||
		    iommuctl_last_code(r->c) != IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION)
			fail("SetProbes", iommuctl_last_error(r->c));
		(void)printf("rpc: not measured: %s\n", iommuctl_last_error(r->c));
		return false;
	}
	(void)printf("rpc: a daemon's Map+Unmap round trips, its probes at tier %s, "
		     "probe-driver-latency %s\n",
		     iommud_name(&iommud_probe_tier_names, tier), b->driver_latency ? "yes" : "no");
	return true;
}

static void rpc_stop(struct rpc *r)
{
	iommuctl_close(r->c);
	fixture_stop(&r->daemon);
	running_daemon = NULL;
}

/* ---- the report ------------------------------------------------------------------------- */

static void print_header(void)
{
	(void)printf("%-8s %-6s %8s %8s %8s %8s %8s\n", "level", "size", "pairs", "rounds",
		     "median", "min", "max");
}

/* Where a level's rounds put the ratio on both sides of this, its median says nothing of it. */
#define GOAL 1.05

/* The two settings of probe-driver-latency the bench measures, in this order. */
#define N_SETTINGS 2

/* Both levels' median ratios under both settings side by side; NAN: not measured. */
static void print_ratios(struct ratios ratio[N_SETTINGS][2][N_SIZES])
{
	(void)printf("ratios, attached/not (median of the rounds' ratios; goal <= %.2f; "
		     "\"spread\": the rounds fall on both sides of it), by level and "
		     "probe-driver-latency\n%-6s %11s %11s %11s %11s\n",
		     GOAL, "size", "session/no", "session/yes", "rpc/no", "rpc/yes");
	for (size_t i = 0; i < N_SIZES; i++) {
		(void)printf("%-6s", sizes[i].label);
		for (unsigned column = 0; column < 2 * N_SETTINGS; column++) {
			const struct ratios *q =
				&ratio[column % N_SETTINGS][column / N_SETTINGS][i];

			if (isnan(q->median))
				(void)printf(" %11s", "-");
			else if (q->min <= GOAL && q->max > GOAL)
				(void)printf(" %11s", "spread");
			else
				(void)printf(" %11.3f", q->median);
		}
		(void)printf("\n");
	}
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"usage: iommud-probes-bench [--quick] [--help]\n"
		"\n"
		"Under each setting of the daemon's probe-driver-latency in turn (no: the IOMMU\n"
		"driver's calls counted at their tracepoints; yes: also timed from their entry),\n"
		"times map+unmap pairs (4 KiB and 2 MiB) with the map path probes attached and\n"
		"without, in blocks that alternate (the order swapped each round; the programs\n"
		"stay loaded, only attached or not), at two levels: \"session\", the daemon's\n"
		"map path inside this process, and \"rpc\", a client's Map and Unmap round trips\n"
		"to a daemon this bench starts ($IOMMUD_DAEMON, else the one built beside it),\n"
		"whose probes it switches with the SetProbes request, both in the same rounds of\n"
		"the same blocks. For each level and size it prints the pairs of each block, the\n"
		"rounds, and the median, least and greatest of the rounds' ratios (each round's\n"
		"attached block's median over its other block's; the goal is <= 1.05); where BPF\n"
		"programs are attached, each program's runs and time per session-level pair\n"
		"(kernel.bpf_stats_enabled on for that part only); last, both levels' median\n"
		"ratios under both settings side by side (\"spread\" where the rounds fall on "
		"both\n"
		"sides of 1.05).\n"
		"On the iommufd backend (when /dev/iommu exists) the probes are BPF programs in\n"
		"the kernel; on the emulated backend, the daemon's own timing, and the rpc level\n"
		"is measured only where the daemon's probe tier is not off\n"
		"(where the session level ran BPF programs, a SetProbes refusal is a failure).\n"
		"Wall-clock ratios in a TCG guest are indicative; only icount runs compare\n"
		"changes (docs/architecture.md).\n"
		"Run it as root to attach BPF; in the VM tier it runs on iommufd\n"
		"(tests/vm/README.md). --quick: a few samples, to show that it runs.\n");
}

/* Both levels under one setting of probe-driver-latency: the session level and where its cost
 * goes, then, once the session level has let the device go, the rpc level's daemon. */
static void measure_setting(bool driver_latency, int memfd, bool quick,
			    struct ratios ret_ratio[2][N_SIZES])
{
	struct bench b = {.driver_latency = driver_latency};
	struct rpc r = {0};
	const struct level session = {"session", session_pair_ns, session_set_attached, &b},
			   rpc = {"rpc", rpc_pair_ns, rpc_set_attached, &r};
	bool session_bpf, in_process;

	(void)printf("probe-driver-latency %s\n", driver_latency ? "yes" : "no");
	setup(&b, memfd);
	in_process = kh_backend_caps(b.be) & KH_CAP_MAP_IN_PROCESS;
	print_header();
	measure_sizes(&session, in_process, quick, ret_ratio[0]);
	session_bpf = probes_tier(b.probes) != IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF;
	if (session_bpf) {
		(void)printf("%-6s %-24s %10s %12s\n", "size", "program", "runs/pair", "ns/pair");
		breakdown(&b, "4KiB", 4096, quick ? 10 : 200);
		breakdown(&b, "2MiB", 2 * MiB, quick ? 5 : 24);
	}
	/* Before the daemon starts: its programs and the device are then its own. */
	teardown(&b);
	if (rpc_start(&r, &b, in_process, session_bpf, memfd)) {
		print_header();
		measure_sizes(&rpc, in_process, quick, ret_ratio[1]);
	}
	rpc_stop(&r);
}

int main(int argc, char **argv)
{
	bool quick = argc == 2 && strcmp(argv[1], "--quick") == 0;
	struct ratios ratio[N_SETTINGS][2][N_SIZES];
	int memfd;

	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (argc > 2 || (argc == 2 && !quick)) {
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < sizeof(ratio) / sizeof(ratio[0][0][0]); i++)
		(&ratio[0][0][0])[i] = (struct ratios){NAN, NAN, NAN};
	log_set_level(LOG_WARNING);
	memfd = iommuctl_memfd("probes-bench", 2 * MiB);
	if (memfd < 0)
		fail("creating a memfd", strerror(-memfd));
	for (unsigned setting = 0; setting < N_SETTINGS; setting++)
		measure_setting(setting == 1, memfd, quick, ratio[setting]);
	print_ratios(ratio);
	(void)close(memfd);
	return 0;
}
