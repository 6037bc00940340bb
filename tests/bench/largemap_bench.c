// SPDX-License-Identifier: MIT
/*
 * iommud-largemap-bench: what the daemon adds to a large Map. A memfd of 256 MiB or 1 GiB,
 * mapped whole at a fixed IOVA and unmapped, through the daemon (libiommuctl's Map and Unmap,
 * the client's wall time from request to reply) and by this process itself through
 * kernel-helper on the same kind of device (the IOMMU_IOAS_MAP or VFIO_IOMMU_MAP_DMA the
 * daemon would issue, of memory this process maps; kh-iommufd-bench shows kernel-helper costs
 * the bare ioctl's time), alternating in one run, with the ratio of the medians side by side.
 * Where the domain can map a file by descriptor (IOMMU_IOAS_MAP_FILE, Linux 6.13 and later),
 * that in-process path is a row of its own, and the daemon's row (which maps by descriptor
 * there too) has its ratios against it as well: MAP_FILE and the address-space path side by
 * side. 4 KiB pages always, 2 MiB pages (MFD_HUGETLB)
 * where the kernel can reserve them. Figures only: nothing is asserted.
 *
 * Each side has a device of its own, in different IOMMU groups, so both stay attached for the
 * whole run. Ownership: main owns every descriptor and context, and the daemon it starts.
 */
#define _GNU_SOURCE /* memfd_create, MFD_HUGETLB */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>
#include <kh/kh.h>

#include "bench_clock.h"
#include "daemon_fixture.h"

#define MiB	     (1ull << 20)
#define HUGE_PAGE    (2 * MiB)
#define IOVA	     0x40000000ull
#define ROUNDS_MAX   64
#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"
/* The newcomer: a tenant of its own (an unnamed user, so a reader), asking again this long
 * after each answer, so that every request of its finds the large map alone again. */
#define NEWCOMER_UID	 65534
#define NEWCOMER_GAP_MS	 5
#define NEWCOMER_IDLE	 16
#define NEWCOMER_SAMPLES 1024

struct options {
	uint64_t sizes[8];
	size_t n_sizes;
	unsigned rounds;
	bool emulated;
	uint64_t part; /* bytes of the in-parts row's calls; 0: no such row */
	bool newcomer;
};

/* This process's side: its own context with one device attached to a paging domain. */
struct in_process {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dom;
	bool map_file; /* the domain maps files by descriptor */
};

/* The daemon's side: the daemon, a connection, a domain for the other device. */
struct through_daemon {
	struct daemon_fixture daemon;
	struct iommuctl *c;
	uint32_t dom;
};

/* One row: what each round took to map and to unmap. */
struct samples {
	uint64_t map[ROUNDS_MAX], unmap[ROUNDS_MAX];
};

static _Noreturn void fail(const char *what, const char *why)
{
	(void)fprintf(stderr, "iommud-largemap-bench: %s: %s\n", what, why);
	exit(1);
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"Usage: iommud-largemap-bench [OPTION]...\n"
		"\n"
		"Measures what the iommud daemon adds to mapping a large memfd for device DMA. "
		"For\n"
		"each size, a memfd of that size is mapped whole at a fixed IOVA, then unmapped:\n"
		"  daemon      through a daemon this program starts on the same kernel backend\n"
		"              (libiommuctl Map and Unmap; the client's time from request to "
		"reply)\n"
		"  in-process  by this program through kernel-helper, of memory it maps itself: "
		"the\n"
		"              ioctl the client would issue if it held the device itself\n"
		"  by file     the same by file descriptor (IOMMU_IOAS_MAP_FILE), where the "
		"kernel\n"
		"              has it (Linux 6.13 and later)\n"
		"with 4 KiB pages, and 2 MiB pages (MFD_HUGETLB) where the kernel can reserve them "
		"(the\n"
		"program raises vm.nr_hugepages for the run and puts it back). Rounds alternate "
		"the\n"
		"paths; it prints the median of each in ms, ms per GiB, GiB/s, and "
		"daemon/in-process\n"
		"(and daemon/by file where the kernel has it, as the daemon then maps by file).\n"
		"Each path uses a device of its own (two devices in different IOMMU groups are\n"
		"needed). Sizes the machine has no room for are skipped, saying so.\n"
		"\n"
		"Options:\n"
		"  -s, --sizes LIST   sizes in MiB, comma-separated (default 256,1024)\n"
		"  -r, --rounds N     rounds per size, at most %d (default 5)\n"
		"  -e, --emulated     both sides on the emulated backend (any host; shows the "
		"program\n"
		"                     works, its figures say nothing of a kernel)\n"
		"  -q, --quick        sizes 16 MiB, 2 rounds\n"
		"  -p, --parts KIB    one more row, in parts: the in-process map by address made "
		"in\n"
		"                     calls of KIB each (the daemon's parts are 256), and what "
		"one\n"
		"                     call costs the kernel beyond its pages, in us (4 KiB "
		"pages)\n"
		"  -n, --newcomer     one more daemon map of each size at 4 KiB pages while "
		"another\n"
		"                     tenant asks for GetStats every %d ms: its answers' times "
		"(median,\n"
		"                     largest) against the same with the daemon idle\n"
		"  -h, --help         show this text\n"
		"\n"
		"Run it where the kernel has an IOMMU, as root: in the VM tier, for example\n"
		"  tests/vm/run-vm.sh --kernel BZIMAGE --iommu intel --memory 4G --results DIR \\\n"
		"      --support build/daemon/iommud build/tests/bench/iommud-largemap-bench\n"
		"or, with guest time in instructions so that runs compare, and options passed,\n"
		"  tests/vm/run-largemap.sh BZIMAGE build/daemon/iommud \\\n"
		"      build/tests/bench/iommud-largemap-bench DIR --parts 256 --newcomer\n"
		"The daemon binary is $IOMMUD_DAEMON if set, else the one this build made.\n"
		"\n"
		"Exit status: 0 after printing, 1 if a step failed (the message says which), 2 on "
		"a\n"
		"usage error.\n",
		ROUNDS_MAX, NEWCOMER_GAP_MS);
}

static int parse_sizes(const char *list, struct options *o)
{
	char *copy = strdup(list), *save = NULL;

	o->n_sizes = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *end;
		unsigned long long mib = strtoull(tok, &end, 10);

		if (*end || !mib || mib > (1ull << 20) ||
		    o->n_sizes == sizeof(o->sizes) / sizeof(o->sizes[0])) {
			free(copy);
			return -EINVAL;
		}
		o->sizes[o->n_sizes++] = mib * MiB;
	}
	free(copy);
	return o->n_sizes ? 0 : -EINVAL;
}

static void parse(int argc, char **argv, struct options *o)
{
	static const struct option longs[] = {
		{"sizes", required_argument, NULL, 's'}, {"rounds", required_argument, NULL, 'r'},
		{"emulated", no_argument, NULL, 'e'},	 {"quick", no_argument, NULL, 'q'},
		{"parts", required_argument, NULL, 'p'}, {"newcomer", no_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},	 {0},
	};
	char *end;
	int opt;

	*o = (struct options){.sizes = {256 * MiB, 1024 * MiB}, .n_sizes = 2, .rounds = 5};
	while ((opt = getopt_long(argc, argv, "s:r:eqp:nh", longs, NULL)) != -1) {
		switch (opt) {
		case 's':
			if (parse_sizes(optarg, o) < 0) {
				(void)fprintf(stderr, "iommud-largemap-bench: --sizes wants MiB "
						      "counts like 256,1024, at most 8\n");
				exit(2);
			}
			break;
		case 'r':
			o->rounds = (unsigned)atoi(optarg);
			if (o->rounds < 1 || o->rounds > ROUNDS_MAX) {
				(void)fprintf(stderr,
					      "iommud-largemap-bench: --rounds wants 1 to %d\n",
					      ROUNDS_MAX);
				exit(2);
			}
			break;
		case 'e':
			o->emulated = true;
			break;
		case 'q':
			o->sizes[0] = 16 * MiB;
			o->n_sizes = 1;
			o->rounds = 2;
			break;
		case 'p':
			o->part = strtoull(optarg, &end, 10) * 1024;
			if (*end || !o->part || o->part % 4096) {
				(void)fprintf(stderr, "iommud-largemap-bench: --parts wants KiB, a "
						      "multiple of 4 like 256\n");
				exit(2);
			}
			break;
		case 'n':
			o->newcomer = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind != argc) {
		usage(stderr);
		exit(2);
	}
}

/* Two devices in different IOMMU groups, so that each side keeps one attached. */
static void pick_devices(struct kh_backend *be, struct kh_device_info out[2])
{
	size_t found = 0;

	for (size_t i = 0; i < kh_device_count(be) && found < 2; i++) {
		if (kh_device_info(be, i, &out[found]) < 0)
			fail("listing devices", kh_last_error());
		found += !found || out[0].group != out[found].group;
	}
	if (found < 2)
		fail("choosing devices",
		     "two devices in different IOMMU groups are needed, one for "
		     "each side; bind another to vfio-pci");
}

static const char emulated_topology[] = "[iommu]\ndevices = emu0 emu1\n";

static void open_in_process(struct in_process *p, bool emulated, struct kh_device_info dev[2])
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t dev_id, caps;
	int err = emulated ? kh_backend_open_emulated_text(emulated_topology, &p->be)
			   : kh_backend_open("auto", NULL, &p->be);

	if (err < 0)
		fail("opening the kernel's IOMMU backend",
		     emulated ? kh_last_error()
			      : "none here (run it in the VM tier, or pass --emulated for a dry "
				"run)");
	pick_devices(p->be, dev);
	if (kh_ctx_create(p->be, &p->ctx) < 0 || kh_device_bind(p->ctx, dev[0].name, &dev_id) < 0 ||
	    kh_domain_alloc(p->ctx, dev_id, &paging, &p->dom) < 0 ||
	    kh_attach(p->ctx, dev_id, p->dom) < 0 || kh_domain_caps(p->ctx, p->dom, &caps) < 0)
		fail("setting up this process's domain", kh_last_error());
	p->map_file = caps & KH_CAP_MAP_FILE;
}

static void open_daemon(struct through_daemon *d, const char *backend, bool emulated,
			const char *device)
{
	char config[512];

	/* The daemon's ceilings and root's quotas, far above what the run maps. */
	(void)snprintf(config, sizeof(config),
		       "max-pinned-total = 1T\n[uid 0]\naccess = write\ndevices = *\n"
		       "max-domains = 16\nmax-mappings = 100000\nmax-pinned = 512G\n");
	if (!emulated && setenv("IOMMUD_TEST_BACKEND", backend, 1) < 0)
		fail("naming the daemon's backend", strerror(errno));
	if (emulated)
		fixture_start_topology(&d->daemon, config, emulated_topology);
	else
		fixture_start(&d->daemon, config, NULL);
	if (iommuctl_connect(d->daemon.socket_path, &d->c) < 0)
		fail("connecting to the daemon", strerror(errno));
	if (iommuctl_alloc_domain(d->c, device, IOMMUCTL_DOMAIN_PAGING, 0, &d->dom) < 0 ||
	    iommuctl_attach(d->c, device, d->dom) < 0)
		fail("setting up the daemon's domain", iommuctl_last_error(d->c));
}

/* A memfd of len bytes sealed against shrinking, its pages allocated, so neither side pays for
 * first touching them; -1 where huge pages are asked for and the kernel has too few. */
static int make_memory(uint64_t len, bool huge)
{
	int fd = memfd_create("largemap",
			      MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
	void *va;

	if (fd < 0)
		fail("creating a memfd", strerror(errno));
	if (ftruncate(fd, (off_t)len) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		fail("sizing and sealing the memfd", strerror(errno));
	va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (va == MAP_FAILED) {
		if (!huge)
			fail("populating the memfd", strerror(errno));
		(void)close(fd);
		return -1;
	}
	/* MAP_POPULATE does not say whether it got every page; a touch of each does. */
	for (uint64_t off = 0; off < len; off += huge ? HUGE_PAGE : 4096)
		((volatile char *)va)[off] = 1;
	(void)munmap(va, len);
	return fd;
}

/* Maps len bytes of the memfd by this process (in calls of part bytes, each extending the one
 * mapping; 0: one call) and unmaps them in one call. */
static void in_process_round(struct in_process *p, int fd, uint64_t len, bool by_file,
			     uint64_t part, struct samples *s, unsigned round)
{
	struct kh_map_req req = {
		.iova = IOVA,
		.length = part ? part : len,
		.prot = KH_PROT_READ | KH_PROT_WRITE,
		.flags = KH_MAP_FIXED_IOVA | (by_file ? KH_MAP_FILE : 0),
		.fd = fd,
	};
	void *va = NULL;
	uint64_t t0, t1, t2;

	if (!by_file) {
		va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (va == MAP_FAILED)
			fail("mapping the memfd", strerror(errno));
		req.addr = (uint64_t)(uintptr_t)va;
	}
	t0 = now_ns();
	for (uint64_t done = 0; done < len; done += req.length) {
		req.iova = IOVA + done;
		req.addr = (by_file ? 0 : (uint64_t)(uintptr_t)va) + done;
		if (req.length > len - done)
			req.length = len - done;
		if (kh_map(p->ctx, p->dom, &req) < 0)
			fail("kh_map", kh_last_error());
		req.flags |= KH_MAP_EXTEND;
	}
	t1 = now_ns();
	if (kh_unmap(p->ctx, p->dom, IOVA, len, NULL) < 0)
		fail("kh_unmap", kh_last_error());
	t2 = now_ns();
	if (va)
		(void)munmap(va, len);
	s->map[round] = t1 - t0;
	s->unmap[round] = t2 - t1;
}

/* A Map and an Unmap through the daemon; between them, a byte to mapped unless it is -1. */
static void daemon_round(struct through_daemon *d, int fd, uint64_t len, struct samples *s,
			 unsigned round, int mapped)
{
	uint64_t iova = IOVA, t0, t1, t2;

	t0 = now_ns();
	if (iommuctl_map_fd(d->c, d->dom, fd, 0, len, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE,
			    true, 0, &iova) < 0)
		fail("Map through the daemon", iommuctl_last_error(d->c));
	t1 = now_ns();
	if (mapped >= 0 && write(mapped, "m", 1) != 1)
		fail("saying the map is done", strerror(errno));
	if (iommuctl_unmap(d->c, d->dom, IOVA, len, NULL) < 0)
		fail("Unmap through the daemon", iommuctl_last_error(d->c));
	t2 = now_ns();
	s->map[round] = t1 - t0;
	s->unmap[round] = t2 - t1;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static double median_ms(uint64_t *ns, unsigned n)
{
	qsort(ns, n, sizeof(*ns), cmp_u64);
	return (n % 2 ? (double)ns[n / 2] : ((double)ns[n / 2 - 1] + (double)ns[n / 2]) / 2) / 1e6;
}

/* A row: its medians, and its ratios against base (the in-process path by address) and, where
 * given, against by_file (the in-process path by descriptor, the one the daemon takes where the
 * kernel has it). */
static void print_row(const char *size, const char *pages, const char *path, struct samples *s,
		      unsigned rounds, uint64_t len, const double *base, const double *by_file)
{
	double gib = (double)len / (double)(1ull << 30);
	double map = median_ms(s->map, rounds), unmap = median_ms(s->unmap, rounds);

	(void)printf("%-8s %-6s %-11s %9.2f %9.2f %8.2f %9.2f", size, pages, path, map, unmap,
		     gib / (map / 1e3), map / gib);
	if (base)
		(void)printf(" %8.3f %8.3f", map / base[0], unmap / base[1]);
	if (by_file)
		(void)printf(" %8.3f %8.3f", map / by_file[0], unmap / by_file[1]);
	(void)printf("\n");
}

/* The in-parts row, and what each call costs beyond the one call's time for the same pages:
 * the kernel's fixed cost per IOMMU_IOAS_MAP (its area and pages records, the IOTLB flush). */
static void print_parts(const char *size, const char *pages, struct samples *s,
			const struct options *o, uint64_t len, const double *base)
{
	uint64_t calls = (len + o->part - 1) / o->part;
	char path[32];

	(void)snprintf(path, sizeof(path), "%llu KiB", (unsigned long long)(o->part / 1024));
	print_row(size, pages, path, s, o->rounds, len, base, NULL);
	(void)printf("%-8s %-6s %-11s %9.2f us more per call, %llu calls\n", size, pages, path,
		     (median_ms(s->map, o->rounds) - base[0]) * 1e3 / (double)(calls - 1),
		     (unsigned long long)calls);
}

/* One GetStats of the newcomer's, timed. */
static uint64_t newcomer_ask(struct iommuctl *c)
{
	Iommud__V1__GetStatsRequest get = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	uint64_t t0 = now_ns();

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &get;
	if (iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL) < 0)
		fail("GetStats of the newcomer", iommuctl_last_error(c));
	iommuctl_response_free(resp);
	return now_ns() - t0;
}

/* The newcomer's process: its answers' times with the daemon idle (then it says 'i' on
 * result), and from the first byte on go until the second, while the map runs; writes the
 * count, the idle and busy medians and the largest to result. */
static _Noreturn void newcomer_run(const char *socket_path, int go, int result)
{
	static uint64_t idle[NEWCOMER_IDLE], busy[NEWCOMER_SAMPLES];
	struct pollfd stop = {.fd = go, .events = POLLIN};
	struct iommuctl *c;
	double idle_us, busy_us;
	unsigned n = 0;
	char byte;

	if (setgid(NEWCOMER_UID) < 0 || setuid(NEWCOMER_UID) < 0 ||
	    iommuctl_connect(socket_path, &c) < 0)
		fail("connecting as the newcomer", strerror(errno));
	for (unsigned i = 0; i < NEWCOMER_IDLE; i++)
		idle[i] = newcomer_ask(c);
	if (write(result, "i", 1) != 1 || read(go, &byte, 1) != 1)
		_exit(1);
	while (n < NEWCOMER_SAMPLES && poll(&stop, 1, NEWCOMER_GAP_MS) == 0)
		busy[n++] = newcomer_ask(c);
	idle_us = median_ms(idle, NEWCOMER_IDLE) * 1e3;
	if (n) {
		busy_us = median_ms(busy, n) * 1e3; /* sorted: the largest is last */
		(void)dprintf(result, "%u %.1f %.1f %.1f\n", n, idle_us, busy_us,
			      (double)busy[n - 1] / 1e3);
	} else {
		(void)dprintf(result, "0 %.1f (the map ended before the first)\n", idle_us);
	}
	iommuctl_close(c);
	_exit(0);
}

/* A daemon map of the memfd while the newcomer asks: its time and the newcomer's answers,
 * as a line in out. */
static void newcomer_round(struct through_daemon *d, int fd, uint64_t len, char *out, size_t size)
{
	int go[2], result[2], status;
	struct samples s;
	char byte, line[128] = "";
	ssize_t got;
	pid_t pid;

	if (pipe(go) < 0 || pipe(result) < 0 || (pid = fork()) < 0)
		fail("starting the newcomer", strerror(errno));
	if (pid == 0)
		newcomer_run(d->daemon.socket_path, go[0], result[1]);
	(void)close(result[1]);
	if (read(result[0], &byte, 1) != 1 || write(go[1], "g", 1) != 1)
		fail("starting the newcomer", "it stopped");
	daemon_round(d, fd, len, &s, 0, go[1]);
	got = read(result[0], line, sizeof(line) - 1);
	line[got > 0 ? got : 0] = '\0';
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("the newcomer", "it failed");
	(void)close(go[0]);
	(void)close(go[1]);
	(void)close(result[0]);
	(void)snprintf(out, size, "map %.2f ms; answers, idle median, median, largest (us): %s",
		       (double)s.map[0] / 1e6, line);
}

/* Reserves huge pages for len bytes for the run; false where the kernel cannot. */
static bool reserve_huge(uint64_t len, long *ret_old)
{
	FILE *f = fopen(NR_HUGEPAGES, "r+");
	long old = 0, got = 0, want;

	if (!f)
		return false;
	if (fscanf(f, "%ld", &old) != 1)
		old = 0;
	want = old + (long)(len / HUGE_PAGE);
	rewind(f);
	(void)fprintf(f, "%ld\n", want);
	(void)fflush(f);
	rewind(f);
	if (fscanf(f, "%ld", &got) != 1)
		got = 0;
	(void)fclose(f);
	*ret_old = old;
	return got >= want;
}

static void release_huge(long old)
{
	FILE *f = fopen(NR_HUGEPAGES, "w");

	if (f) {
		(void)fprintf(f, "%ld\n", old);
		(void)fclose(f);
	}
}

/* Free memory now, in bytes (MemAvailable). */
static uint64_t available_bytes(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	unsigned long long kib = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	if (f)
		(void)fclose(f);
	return kib * 1024;
}

static void size_name(uint64_t len, char *out, size_t size)
{
	if (len % (1ull << 30) == 0)
		(void)snprintf(out, size, "%llu GiB", (unsigned long long)(len >> 30));
	else
		(void)snprintf(out, size, "%llu MiB", (unsigned long long)(len / MiB));
}

/* Every path, rounds times alternating, on one memfd; the rows with their ratios. */
static void measure(struct in_process *p, struct through_daemon *d, const struct options *o,
		    uint64_t len, bool huge)
{
	struct samples in = {0}, file = {0}, daemon = {0}, parts = {0};
	char newcomer[256] = "";
	const char *pages = huge ? "2 MiB" : "4 KiB";
	long old_huge = 0;
	char size[32];
	double base[2], by_file[2];
	int fd;

	size_name(len, size, sizeof(size));
	if (available_bytes() < len + len / 4 + 64 * MiB) {
		(void)printf(
			"%-8s %-6s skipped: %llu MiB available, too little to map it (boot with "
			"more memory)\n",
			size, pages, (unsigned long long)(available_bytes() / MiB));
		return;
	}
	if (huge && !reserve_huge(len, &old_huge)) {
		(void)printf("%-8s %-6s skipped: the kernel could not reserve the huge pages\n",
			     size, pages);
		release_huge(old_huge);
		return;
	}
	fd = make_memory(len, huge);
	if (fd < 0) {
		(void)printf(
			"%-8s %-6s skipped: the huge pages reserved could not back the memfd\n",
			size, pages);
		release_huge(old_huge);
		return;
	}
	for (unsigned r = 0; r < o->rounds; r++) {
		daemon_round(d, fd, len, &daemon, r, -1);
		in_process_round(p, fd, len, false, 0, &in, r);
		if (p->map_file)
			in_process_round(p, fd, len, true, 0, &file, r);
		if (o->part && !huge)
			in_process_round(p, fd, len, false, o->part, &parts, r);
	}
	if (o->newcomer && !huge)
		newcomer_round(d, fd, len, newcomer, sizeof(newcomer));
	(void)close(fd);
	if (huge)
		release_huge(old_huge);
	print_row(size, pages, "in-process", &in, o->rounds, len, NULL, NULL);
	base[0] = median_ms(in.map, o->rounds);
	base[1] = median_ms(in.unmap, o->rounds);
	if (p->map_file) {
		print_row(size, pages, "by file", &file, o->rounds, len, base, NULL);
		by_file[0] = median_ms(file.map, o->rounds);
		by_file[1] = median_ms(file.unmap, o->rounds);
	}
	print_row(size, pages, "daemon", &daemon, o->rounds, len, base,
		  p->map_file ? by_file : NULL);
	if (o->part && !huge && len > o->part)
		print_parts(size, pages, &parts, o, len, base);
	if (*newcomer)
		(void)printf("%-8s %-6s %-11s %s", size, pages, "newcomer", newcomer);
}

int main(int argc, char **argv)
{
	struct kh_device_info dev[2];
	struct in_process p = {0};
	struct through_daemon d = {0};
	struct options o;

	parse(argc, argv, &o);
	open_in_process(&p, o.emulated, dev);
	open_daemon(&d, kh_backend_name(p.be), o.emulated, dev[1].name);
	(void)printf(
		"iommud-largemap-bench: backend %s; in-process on %s, daemon on %s; %u rounds, "
		"medians; ratios are against in-process (by address)%s\n\n",
		kh_backend_name(p.be), dev[0].name, dev[1].name, o.rounds,
		p.map_file ? ", then against by file, which the daemon maps by here" : "");
	(void)printf("%-8s %-6s %-11s %9s %9s %8s %9s %8s %8s", "size", "pages", "path", "map ms",
		     "unmap ms", "GiB/s", "ms/GiB", "map x", "unmap x");
	(void)printf(p.map_file ? " %8s %8s\n" : "\n", "map xf", "unmap xf");
	for (size_t i = 0; i < o.n_sizes; i++)
		for (int huge = 0; huge <= 1; huge++)
			measure(&p, &d, &o, o.sizes[i], huge);
	iommuctl_close(d.c);
	fixture_stop(&d.daemon);
	kh_ctx_destroy(p.ctx);
	kh_backend_close(p.be);
	return 0;
}
