/* SPDX-License-Identifier: MIT */
/*
 * iommud-survival-bench: what keeping the leases' state record costs, side by side with a
 * daemon that keeps none, in one run:
 *   1. Map+Unmap of one page on a lease: a daemon without a service manager (no record) and
 *      one under the test supervisor (every change recorded before its reply), alternated;
 *   2. MapBatch of 512 pages and UnmapAll, the same way;
 *   3. restart time: kill -9 to READY=1 of the next daemon, with N mappings to rebuild
 *      (the median of a few kills each).
 * A benchmark prints; it never judges.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iommuctl.h>

#include "bench_clock.h"
#include "bench_median.h"
#include "bench_threads.h"
#include "supervisor.h"

#define PAGE   4096ull
#define IOVA   (1ull << 30)
#define BATCH  512
#define ROUNDS 20

static const char config[] = "probe-tier = off\n[uid 0]\naccess = write\ndevices = emu*\n"
			     "max-domains = 4\nmax-mappings = 1000000\nmax-pinned = 64T\n"
			     "max-maps = 16\n";

static void must(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "iommud-survival-bench: %s: %s\n", what,
			      c ? iommuctl_last_error(c) : strerror(-rc));
		exit(1);
	}
}

struct side {
	const char *name;
	struct iommuctl *c;
	uint32_t dom;
	pid_t pid; /* its daemon */
};

/* The daemon's CPU time so far in nanoseconds, all its threads' (bench_threads.h): its
 * event-loop threads serve the requests, not its main thread. */
static double daemon_cpu_ns(pid_t pid)
{
	uint64_t ns;
	int rc = process_cpu_ns(pid, &ns);

	if (rc < 0) {
		(void)fprintf(stderr, "iommud-survival-bench: cannot read /proc/%d/task: %s\n",
			      (int)pid, strerror(-rc));
		exit(1);
	}
	return (double)ns;
}

static void side_open(struct side *s, const char *name, const char *socket_path, pid_t pid)
{
	s->name = name;
	s->pid = pid;
	must(NULL, iommuctl_connect(socket_path, &s->c), "connect");
	must(s->c, iommuctl_hello(s->c, "bench", "bench", NULL), "hello");
	must(s->c, iommuctl_alloc_domain(s->c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &s->dom),
	     "alloc");
}

/* Nanoseconds per Map+Unmap pair over n pairs. */
static double map_unmap(struct side *s, int mem, unsigned n)
{
	uint64_t iova = IOVA, start = now_ns();

	for (unsigned i = 0; i < n; i++) {
		must(s->c,
		     iommuctl_map_fd(s->c, s->dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, true, 0,
				     &iova),
		     "map");
		must(s->c, iommuctl_unmap(s->c, s->dom, IOVA, PAGE, NULL), "unmap");
	}
	return (double)(now_ns() - start) / n;
}

/* Maps count pages from first, in batches: nanoseconds per batch. */
static double map_batches(struct side *s, int mem, uint64_t first, unsigned count)
{
	Iommud__V1__MapEntry entries[BATCH], *list[BATCH];
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	unsigned batches = 0;
	uint64_t start = now_ns();

	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	batch.entries = list;
	for (unsigned done = 0; done < count; done += (unsigned)batch.n_entries, batches++) {
		batch.n_entries = count - done < BATCH ? count - done : BATCH;
		for (size_t i = 0; i < batch.n_entries; i++) {
			iommud__v1__map_entry__init(&entries[i]);
			entries[i].domain_id = s->dom;
			entries[i].length = PAGE;
			entries[i].prot = IOMMUCTL_PROT_READ;
			entries[i].fixed_iova = true;
			entries[i].iova = first + (done + i) * 2 * PAGE;
			list[i] = &entries[i];
		}
		must(s->c, iommuctl_call(s->c, &req, &mem, 1, &resp, NULL, 0, NULL), "map batch");
		iommuctl_response_free(resp);
	}
	return (double)(now_ns() - start) / batches;
}

static double batch_unmap(struct side *s, int mem)
{
	double ns = map_batches(s, mem, IOVA, BATCH);

	must(s->c, iommuctl_unmap_all(s->c, s->dom, NULL), "unmap all");
	return ns;
}

/* One side's round of n operations: wall and daemon CPU time per operation. */
struct round {
	double wall, cpu;
};

static struct round timed_run(struct side *s, int mem, unsigned n,
			      double (*run)(struct side *, int, unsigned))
{
	double start = daemon_cpu_ns(s->pid), wall = run(s, mem, n);

	return (struct round){wall, (daemon_cpu_ns(s->pid) - start) / n};
}

/* Runs each side ROUNDS times, alternating, and prints the medians of the wall and the
 * daemons' CPU time per operation, each with the median of the rounds' ratios: the two sides
 * of a round run back to back, so their ratio moves less with the machine's load than the
 * figures do. Each side goes first every other round: with the same daemon on both sides,
 * the one always second used some 5% more CPU time. */
static void compare(const char *what, struct side *plain, struct side *kept, int mem, unsigned n,
		    double (*run)(struct side *, int, unsigned))
{
	double wall[2][ROUNDS], cpu[2][ROUNDS], wall_ratio[ROUNDS], cpu_ratio[ROUNDS];
	struct round a, b;

	(void)run(plain, mem, n / 10 + 1);
	(void)run(kept, mem, n / 10 + 1);
	for (int r = 0; r < ROUNDS; r++) {
		if (r % 2)
			b = timed_run(kept, mem, n, run);
		a = timed_run(plain, mem, n, run);
		if (r % 2 == 0)
			b = timed_run(kept, mem, n, run);
		wall[0][r] = a.wall;
		wall[1][r] = b.wall;
		cpu[0][r] = a.cpu;
		cpu[1][r] = b.cpu;
		wall_ratio[r] = b.wall / a.wall;
		cpu_ratio[r] = b.cpu / a.cpu;
	}
	printf("%-24s wall %10.0f ns %10.0f ns %6.3f   daemon CPU %9.0f ns %9.0f ns %6.3f\n", what,
	       bench_median(wall[0], ROUNDS), bench_median(wall[1], ROUNDS),
	       bench_median(wall_ratio, ROUNDS), bench_median(cpu[0], ROUNDS),
	       bench_median(cpu[1], ROUNDS), bench_median(cpu_ratio, ROUNDS));
}

static double batch_rounds(struct side *s, int mem, unsigned n)
{
	double total = 0;

	for (unsigned i = 0; i < n; i++)
		total += batch_unmap(s, mem);
	return total / n;
}

/* One kill -9 and the next daemon's READY=1, with the lease's mappings as they are: ms. */
static double restart_ms(struct supervisor *sv, struct side *kept)
{
	uint64_t start;

	iommuctl_close(kept->c);
	start = now_ns();
	supervisor_kill(sv);
	supervisor_spawn(sv);
	start = now_ns() - start;
	must(NULL, iommuctl_connect(sv->f.socket_path, &kept->c), "connect");
	must(kept->c, iommuctl_hello(kept->c, "bench", "bench", NULL), "hello");
	return (double)start / 1e6;
}

#define RESTARTS 3

static void restart_times(struct supervisor *sv, struct side *kept, int mem, bool quick)
{
	static const unsigned counts[] = {1000, 10000, 100000};

	printf("\nrestart, kill -9 to READY=1 of the next daemon (emulated backend), %d kills "
	       "each:\n",
	       RESTARTS);
	for (size_t i = 0; i < (quick ? 1 : sizeof(counts) / sizeof(counts[0])); i++) {
		double ms[RESTARTS], median_ms;

		must(kept->c, iommuctl_unmap_all(kept->c, kept->dom, NULL), "unmap all");
		(void)map_batches(kept, mem, IOVA, counts[i]);
		for (int r = 0; r < RESTARTS; r++)
			ms[r] = restart_ms(sv, kept);
		/* Sorted first: the least and the most are then its ends. */
		median_ms = bench_median(ms, RESTARTS);
		printf("  %7u mappings: median %8.1f ms  (least %.1f, most %.1f)\n", counts[i],
		       median_ms, ms[0], ms[RESTARTS - 1]);
	}
}

static void usage(FILE *to)
{
	(void)fprintf(
		to,
		"Usage: iommud-survival-bench [--quick]\n"
		"\n"
		"Prints what keeping the leases' state record costs, side by side with a daemon\n"
		"that keeps none, in one run: the wall and daemon CPU time (all its threads) of a\n"
		"Map+Unmap of one page and of a MapBatch of 512 pages with an UnmapAll, on a\n"
		"lease, and their ratios; how often the recorded daemon waited for its service\n"
		"manager; and the time from kill -9 to READY=1 of the next daemon with 1000, "
		"10000\n"
		"and 100000 mappings to rebuild (the median of 3 kills each). Both daemons run on\n"
		"the emulated backend, the recorded one under the tests' stand-in service "
		"manager;\n"
		"IOMMUD_DAEMON names the daemon to run (default: this build's). Run as root.\n"
		"\n"
		"  --quick  200 pairs, 2 batches and the restarts with 1000 mappings only, to see\n"
		"           that it runs: its figures are noise\n"
		"  --help   this text\n");
}

int main(int argc, char **argv)
{
	bool quick = argc == 2 && strcmp(argv[1], "--quick") == 0;
	unsigned pairs = quick ? 200 : 8000, batches = quick ? 2 : 120;
	struct daemon_fixture plain_daemon;
	struct supervisor sv;
	struct side plain, kept;
	int mem;

	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (argc > 1 && !quick) {
		(void)fprintf(stderr,
			      "iommud-survival-bench: unknown arguments, starting with '%s'\n",
			      argv[1]);
		usage(stderr);
		return 2;
	}
	mem = iommuctl_memfd("bench", PAGE);
	must(NULL, mem, "memfd");
	fixture_start(&plain_daemon, config, "emu0");
	supervisor_start(&sv, config, "emu0");
	side_open(&plain, "no record", plain_daemon.socket_path, plain_daemon.pid);
	side_open(&kept, "record", sv.f.socket_path, sv.f.pid);
	printf("each pair: without a state record, with one, the ratio\n");
	compare("Map+Unmap 4 KiB", &plain, &kept, mem, pairs, map_unmap);
	compare("MapBatch 512 + UnmapAll", &plain, &kept, mem, batches, batch_rounds);
	/* Waiting for the manager to read removals (BARRIER=1) is for kernel descriptors
	 * only, which the emulated backend does not store: a record rewrite must not wait. */
	supervisor_read_sent(&sv);
	printf("the recorded daemon waited for the manager %lu times (BARRIER=1) over those "
	       "requests\n",
	       supervisor_barriers(&sv));
	restart_times(&sv, &kept, mem, quick);
	iommuctl_close(plain.c);
	iommuctl_close(kept.c);
	fixture_stop(&plain_daemon);
	supervisor_stop(&sv);
	return 0;
}
