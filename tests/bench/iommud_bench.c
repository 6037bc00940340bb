/* SPDX-License-Identifier: MIT */
/*
 * iommud-bench: what the daemon costs, in one run, each figure next to a baseline that shows
 * the limit it works against:
 *   1. Map+Unmap latency through libiommuctl against a bare SOCK_SEQPACKET ping-pong of packets
 *      of the same sizes (with the Map's descriptor where it carries one), to an echo process;
 *   2. MapBatch throughput against kernel-helper called in process;
 *   3. aggregate throughput and per-client latency from 1 to 64 concurrent clients;
 *   4. the daemon's and the kernel's memory per mapping at a million mappings in one domain;
 *   5. pairs/s of one tenant and of two at once, on daemons of one and of two event-loop
 *      threads, with the daemon's CPU time per pair.
 * A benchmark prints; it never judges. The daemon it measures is one it starts on the emulated
 * backend (through the daemon tests' fixture), or a running one (--socket).
 */
#define _GNU_SOURCE /* sched_setaffinity, CPU_SET */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>
#include <iommud_envelope.h>
#include <iommud_wire.h>
#include <kh/kh.h>

#include "bench_clock.h"
#include "bench_median.h"
#include "bench_threads.h"
#include "daemon_fixture.h"

#define KiB		(1ull << 10)
#define MiB		(1ull << 20)
#define PAGE		(4 * KiB)
#define IOVA		(1ull << 30) /* inside every aperture, clear of the x86 MSI window */
#define BATCH		512	     /* MapBatch entries per request */
#define BATCH_LARGEST	1024	     /* the most a MapBatch takes (protocol.md) */
#define ROUNDS		4	     /* part 1 alternates daemon and baseline this many times */
#define MAX_CLIENTS	64
#define MANY_MAPPINGS	(1u << 20) /* part 4 */
#define MANY_FILE_PAGES 4096	   /* the memfd part 4's mappings take pages of in turn */
#define STRINGIFY_(x)	#x
#define STRINGIFY(x)	STRINGIFY_(x)

static struct {
	const char *socket; /* NULL: start our own daemon */
	const char *device; /* NULL: the first device the daemon allows us */
	unsigned iterations;
	unsigned clients_max;
	unsigned batch_rounds; /* part 2: rounds of batches_per_round batches each */
	unsigned batches_per_round;
	double level_seconds; /* part 3: how long each client count runs */
	bool quick;	      /* a run that only shows the benchmark works */
	const char *parts;    /* the parts to run, as digits */
} opt = {
	.parts = "12345",
	.iterations = 20000,
	.clients_max = MAX_CLIENTS,
	.batch_rounds = 512,
	.batches_per_round = 4,
	.level_seconds = 1.0,
};

static char device[KH_NAME_MAX];

static void fail(const char *what, const char *why)
{
	(void)fprintf(stderr, "iommud-bench: %s: %s\n", what, why);
	exit(1);
}

static void check_call(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0)
		fail(what, iommuctl_last_error(c));
}

static void check_kh(int rc, const char *what)
{
	if (rc < 0)
		fail(what, kh_last_error());
}

/* ---- where the processes run ---------------------------------------------------------- */

/* On a virtual machine a wakeup on another CPU can cost more than the work it wakes (an
 * interprocessor interrupt through the hypervisor), and the scheduler may or may not put the
 * client and the daemon on one CPU from run to run. So part 1 pins them, once on one CPU and
 * once on two, and says which; it can only where it started the daemon itself. */
struct placement {
	const char *name;
	int client_cpu, server_cpu; /* -1: wherever the scheduler likes */
};

static cpu_set_t start_cpus; /* the CPUs the benchmark may use, as it started */
static pid_t daemon_pid;     /* 0: not ours to pin */

static void pin(pid_t pid, int cpu)
{
	cpu_set_t set = start_cpus;

	if (cpu >= 0) {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
	}
	if (sched_setaffinity(pid, sizeof(set), &set) < 0)
		fail("setting CPU affinity", strerror(errno));
}

/* The CPU after cpu among those we may use, or -1. */
static int next_cpu(int cpu)
{
	for (int i = cpu + 1; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &start_cpus))
			return i;
	return -1;
}

/* Fills out with the placements part 1 measures; returns how many. */
static size_t placements(struct placement *out)
{
	int first = next_cpu(-1), second = next_cpu(first);

	if (!daemon_pid) {
		out[0] = (struct placement){"any", -1, -1};
		return 1;
	}
	out[0] = (struct placement){"1", first, first};
	if (second < 0)
		return 1;
	out[1] = (struct placement){"2", first, second};
	return 2;
}

/* Calls fn with each thread of the daemon (bench_threads.h), or fails saying why. */
static void each_daemon_thread(void (*fn)(pid_t tid, void *arg), void *arg)
{
	int rc = each_thread(daemon_pid, fn, arg);

	if (rc < 0)
		fail("listing the daemon's threads (/proc/PID/task)", strerror(-rc));
}

static void pin_thread(pid_t tid, void *cpu)
{
	pin(tid, *(const int *)cpu);
}

/* Pins this thread and the daemon (every thread of it) as where says; latency_case pins its
 * echo process alike. */
static void place(const struct placement *where)
{
	pin(0, where->client_cpu);
	if (daemon_pid)
		each_daemon_thread(pin_thread, (void *)&where->server_cpu);
}

/* ---- latency samples ------------------------------------------------------------------ */

struct samples {
	uint64_t *ns;
	size_t n, cap;
};

static void samples_add(struct samples *s, uint64_t ns)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 1024;
		s->ns = realloc(s->ns, s->cap * sizeof(*s->ns));
		if (!s->ns)
			fail("recording a sample", strerror(ENOMEM));
	}
	s->ns[s->n++] = ns;
}

static void samples_append(struct samples *to, const struct samples *from)
{
	for (size_t i = 0; i < from->n; i++)
		samples_add(to, from->ns[i]);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct summary {
	double median, p99;
};

static struct summary samples_summary(struct samples *s)
{
	qsort(s->ns, s->n, sizeof(*s->ns), cmp_u64);
	/* p99: the smallest sample that at least 99 % of them do not exceed. */
	return (struct summary){(double)s->ns[s->n / 2], (double)s->ns[(s->n * 99 + 99) / 100 - 1]};
}

static void samples_free(struct samples *s)
{
	free(s->ns);
	*s = (struct samples){0};
}

/* ---- the daemon's side ---------------------------------------------------------------- */

/* The time on a CPU of every thread of process pid (bench_threads.h), or fails saying why. */
static uint64_t cpu_ns_of(pid_t pid)
{
	uint64_t ns;
	int rc = process_cpu_ns(pid, &ns);

	if (rc < 0)
		fail("reading a process's CPU time (/proc/PID/task)", strerror(-rc));
	return ns;
}

/* The daemon's CPU time; 0 for a daemon we did not start. */
static uint64_t daemon_cpu_ns(void)
{
	return daemon_pid ? cpu_ns_of(daemon_pid) : 0;
}

/* A connection with a paging domain of its own. */
static struct iommuctl *client_open(uint32_t *dom)
{
	struct iommuctl *c;
	int rc = iommuctl_connect(opt.socket, &c);

	if (rc < 0)
		fail("connecting to the daemon", iommuctl_last_error(NULL));
	check_call(c, iommuctl_alloc_domain(c, device, IOMMUCTL_DOMAIN_PAGING, 0, dom),
		   "AllocDomain");
	return c;
}

static void client_close(struct iommuctl *c, uint32_t dom)
{
	check_call(c, iommuctl_free_domain(c, dom), "FreeDomain");
	iommuctl_close(c);
}

/* A memfd sealed so that the daemon may keep it (KeepFiles), whether or not it is kept. */
static int memfd(uint64_t size)
{
	int fd = iommuctl_memfd("iommud-bench", size);

	if (fd < 0)
		fail("creating a memfd", iommuctl_last_error(NULL));
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL) < 0)
		fail("sealing a memfd against further seals", strerror(errno));
	return fd;
}

/* The slot the connections of parts 1 and 2 keep their memfd in. */
#define KEPT_SLOT 0

/* Has the daemon keep mem in KEPT_SLOT for c's connection (KeepFiles), so that the requests
 * naming it there carry no descriptor and the daemon examines the file once, as a client that
 * maps its buffers per I/O does (libiommuctl: iommuctl_keep_fd). */
static void keep_file(struct iommuctl *c, int mem)
{
	Iommud__V1__KeepFilesRequest keep = IOMMUD__V1__KEEP_FILES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	uint32_t slot = KEPT_SLOT;

	keep.slots = &slot;
	keep.n_slots = 1;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_KEEP_FILES;
	req.keep_files = &keep;
	check_call(c, iommuctl_call(c, &req, &mem, 1, &resp, NULL, 0, NULL), "KeepFiles");
	iommuctl_response_free(resp);
}

/* The first device the daemon lets us take, unless --device named one. */
static void choose_device(void)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct iommuctl *c;

	if (opt.device) {
		(void)snprintf(device, sizeof(device), "%s", opt.device);
		return;
	}
	if (iommuctl_connect(opt.socket, &c) < 0)
		fail("connecting to the daemon", iommuctl_last_error(NULL));
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	check_call(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDevices");
	for (size_t i = 0; i < resp->list_devices->n_devices && !device[0]; i++)
		if (resp->list_devices->devices[i]->allowed)
			(void)snprintf(device, sizeof(device), "%s",
				       resp->list_devices->devices[i]->name);
	iommuctl_response_free(resp);
	iommuctl_close(c);
	if (!device[0])
		fail("choosing a device",
		     "the daemon allows this uid no device; give it one in its configuration");
}

/* The two requests of one Map+Unmap iteration, built once: libiommuctl sets their ids. The
 * Unmap asks the daemon to keep its map of the file (keep_map), as a client mapping a buffer
 * per I/O does, so the next Map of it costs the daemon no mmap. */
struct map_pair {
	Iommud__V1__MapEntry entry;
	Iommud__V1__MapRequest map;
	uint32_t kept_slot;
	size_t map_fds; /* 1: the Map carries the memfd; 0: it names it kept */
	Iommud__V1__UnmapRequest unmap;
	Iommud__V1__Request map_req, unmap_req;
};

/* Packet sizes of one iteration, in the order they travel. */
enum { MAP_REQUEST, MAP_REPLY, UNMAP_REQUEST, UNMAP_REPLY, PACKETS };

static void map_pair_init(struct map_pair *p, uint32_t dom, uint64_t length, bool kept)
{
	*p = (struct map_pair){
		.entry = IOMMUD__V1__MAP_ENTRY__INIT,
		.map = IOMMUD__V1__MAP_REQUEST__INIT,
		.unmap = IOMMUD__V1__UNMAP_REQUEST__INIT,
		.map_req = IOMMUD__V1__REQUEST__INIT,
		.unmap_req = IOMMUD__V1__REQUEST__INIT,
	};
	p->entry.domain_id = dom;
	p->entry.length = length;
	p->entry.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	p->entry.fixed_iova = true;
	p->entry.iova = IOVA;
	p->map.entry = &p->entry;
	p->kept_slot = KEPT_SLOT;
	if (kept) {
		p->map.kept_files = &p->kept_slot;
		p->map.n_kept_files = 1;
	}
	p->map_fds = !kept;
	p->map_req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	p->map_req.map = &p->map;
	p->unmap.domain_id = dom;
	p->unmap.iova = IOVA;
	p->unmap.length = length;
	p->unmap.keep_map = true;
	p->unmap_req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP;
	p->unmap_req.unmap = &p->unmap;
}

/* One Map and one Unmap round trip; with sizes, also the sizes of the four packets. */
static void map_pair_run(struct iommuctl *c, struct map_pair *p, int mem, size_t *sizes)
{
	Iommud__V1__Response *map, *unmap;

	check_call(c, iommuctl_call(c, &p->map_req, &mem, p->map_fds, &map, NULL, 0, NULL), "Map");
	check_call(c, iommuctl_call(c, &p->unmap_req, NULL, 0, &unmap, NULL, 0, NULL), "Unmap");
	if (sizes) {
		sizes[MAP_REQUEST] = iommud__v1__request__get_packed_size(&p->map_req);
		sizes[MAP_REPLY] = iommud__v1__response__get_packed_size(map);
		sizes[UNMAP_REQUEST] = iommud__v1__request__get_packed_size(&p->unmap_req);
		sizes[UNMAP_REPLY] = iommud__v1__response__get_packed_size(unmap);
	}
	iommuctl_response_free(map);
	iommuctl_response_free(unmap);
}

/* A MapBatch of up to BATCH_LARGEST 4 KiB pages of one memfd at consecutive fixed IOVAs, in the
 * compact form (columns), as libiommuctl's clients send it: what is the same for every entry is
 * sent once, and the reply lists no IOVA, as every entry's is fixed (picked_iovas_only). */
struct batch {
	uint64_t offsets[BATCH_LARGEST], iovas[BATCH_LARGEST];
	uint32_t domain_id, prot;
	uint64_t length;
	protobuf_c_boolean fixed_iova;
	Iommud__V1__MapEntryColumns columns;
	Iommud__V1__MapBatchRequest map_batch;
	Iommud__V1__Request req;
	uint32_t kept_slot;
	size_t map_fds; /* as struct map_pair's */
};

static void batch_init(struct batch *b, uint32_t dom, size_t entries, bool kept)
{
	b->domain_id = dom;
	b->length = PAGE;
	b->prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	b->fixed_iova = true;
	b->columns = (Iommud__V1__MapEntryColumns)IOMMUD__V1__MAP_ENTRY_COLUMNS__INIT;
	b->columns.n_domain_ids = b->columns.n_lengths = b->columns.n_prots =
		b->columns.n_fixed_iovas = 1;
	b->columns.domain_ids = &b->domain_id;
	b->columns.lengths = &b->length;
	b->columns.prots = &b->prot;
	b->columns.fixed_iovas = &b->fixed_iova;
	b->columns.n_offsets = b->columns.n_iovas = entries;
	b->columns.offsets = b->offsets;
	b->columns.iovas = b->iovas;
	b->map_batch = (Iommud__V1__MapBatchRequest)IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	b->map_batch.columns = &b->columns;
	b->map_batch.picked_iovas_only = true;
	b->kept_slot = KEPT_SLOT;
	if (kept) {
		b->map_batch.kept_files = &b->kept_slot;
		b->map_batch.n_kept_files = 1;
	}
	b->map_fds = !kept;
	b->req = (Iommud__V1__Request)IOMMUD__V1__REQUEST__INIT;
	b->req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	b->req.map_batch = &b->map_batch;
}

/* Sets the batch's pages to IOVA + first * PAGE on: page n at IOVA + n * PAGE maps page
 * n * stride, modulo file_pages, of the file. */
static void batch_fill(struct batch *b, uint64_t first, uint64_t stride, uint64_t file_pages)
{
	for (size_t i = 0; i < b->columns.n_offsets; i++) {
		b->offsets[i] = (first + i) * stride % file_pages * PAGE;
		b->iovas[i] = IOVA + (first + i) * PAGE;
	}
}

/* Sends the batch's pages (batch_fill) of mem without waiting: batch_reply reads the reply. */
static void batch_send(struct iommuctl *c, struct batch *b, int mem, uint64_t first,
		       uint64_t stride, uint64_t file_pages)
{
	batch_fill(b, first, stride, file_pages);
	check_call(c, iommuctl_send(c, &b->req, &mem, b->map_fds, NULL), "sending a MapBatch");
}

/* Reads the reply to the oldest MapBatch batch_send sent, and fails with its message if the
 * daemon refused it. Returns the reply's size, as it came. */
static size_t batch_reply(struct iommuctl *c)
{
	Iommud__V1__Response *resp;
	size_t size;

	check_call(c, iommuctl_recv(c, &resp, NULL, 0, NULL), "receiving a MapBatch reply");
	if (iommuctl_status_errno(resp->status) < 0)
		fail("MapBatch", resp->status->message && *resp->status->message
					 ? resp->status->message
					 : iommuctl_code_name(resp->status->code));
	size = iommud__v1__response__get_packed_size(resp);
	iommuctl_response_free(resp);
	return size;
}

/* Maps the batch's pages (batch_fill) of mem and waits for the reply. */
static void batch_map(struct iommuctl *c, struct batch *b, int mem, uint64_t first, uint64_t stride,
		      uint64_t file_pages)
{
	batch_send(c, b, mem, first, stride, file_pages);
	(void)batch_reply(c);
}

/* ---- the baseline of part 1: an echo process on a socketpair -------------------------- */

/* Receives one packet as the daemon does, through the wire module into a buffer of the
 * protocol's limit, and closes its descriptors. Returns the bytes (0 at end of connection) and
 * the number of descriptors in *nfds. */
static size_t recv_packet(int sock, uint8_t *buf, size_t *nfds)
{
	struct wire_packet packet;
	int rc = wire_recv(sock, buf, IOMMUCTL_MAX_MESSAGE, WIRE_BLOCK, &packet);

	if (rc == -ECONNRESET)
		return 0;
	if (rc < 0)
		fail("receiving on the socketpair", strerror(-rc));
	wire_close_fds(packet.fds, packet.n_fds);
	*nfds = packet.n_fds;
	return packet.len;
}

/* Answers each packet with one of the size its first bytes say (ping_send): the echo need not
 * know which request each packet stands for. */
static void echo_serve(int sock)
{
	static uint8_t buf[IOMMUCTL_MAX_MESSAGE];
	uint32_t reply_size;
	size_t nfds;

	while (recv_packet(sock, buf, &nfds) >= sizeof(reply_size)) {
		memcpy(&reply_size, buf, sizeof(reply_size));
		raw_send(sock, buf, reply_size, NULL, 0);
	}
}

struct echo {
	int sock;
	pid_t pid;
};

/* A process, not a thread, so that the baseline switches address spaces as talking to the
 * daemon does. */
static void echo_start(struct echo *e)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		fail("socketpair", strerror(errno));
	e->pid = fork();
	if (e->pid < 0)
		fail("fork", strerror(errno));
	if (e->pid == 0) {
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
		(void)close(sv[0]);
		echo_serve(sv[1]);
		_exit(0);
	}
	(void)close(sv[1]);
	e->sock = sv[0];
}

static void echo_stop(struct echo *e)
{
	int status;

	(void)close(e->sock); /* the echo process sees end of connection and exits */
	if (waitpid(e->pid, &status, 0) != e->pid || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("the echo process", "did not end cleanly");
}

/* Sends the echo a packet of request_size bytes with n_fds descriptors, to be answered with one
 * of reply_size (ping_recv). Every request of the protocol is longer than the size it carries. */
static void ping_send(const struct echo *e, size_t request_size, size_t reply_size, const int *fds,
		      size_t n_fds)
{
	static uint8_t out[IOMMUCTL_MAX_MESSAGE];
	uint32_t size = (uint32_t)reply_size;

	if (request_size < sizeof(size) || reply_size > IOMMUCTL_MAX_MESSAGE)
		fail("the echo process", "cannot stand in for packets of these sizes");
	memcpy(out, &size, sizeof(size));
	raw_send(e->sock, out, request_size, fds, n_fds);
}

static void ping_recv(const struct echo *e, size_t reply_size)
{
	static uint8_t in[IOMMUCTL_MAX_MESSAGE];
	size_t nfds;

	if (recv_packet(e->sock, in, &nfds) != reply_size)
		fail("the echo process", "answered with the wrong size");
}

/* What one Map+Unmap iteration is to the transport: two ping-pongs of the same sizes, the
 * first with the Map's descriptors (map_fds: the memfd, or none where it is kept). */
static void ping_pong_pair(const struct echo *e, const size_t *sizes, int mem, size_t map_fds)
{
	ping_send(e, sizes[MAP_REQUEST], sizes[MAP_REPLY], &mem, map_fds);
	ping_recv(e, sizes[MAP_REPLY]);
	ping_send(e, sizes[UNMAP_REQUEST], sizes[UNMAP_REPLY], NULL, 0);
	ping_recv(e, sizes[UNMAP_REPLY]);
}

/* ---- part 1 --------------------------------------------------------------------------- */

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void format_size(char *buf, size_t len, uint64_t bytes)
{
	if (bytes >= MiB)
		(void)snprintf(buf, len, "%llu MiB", (unsigned long long)(bytes / MiB));
	else
		(void)snprintf(buf, len, "%llu KiB", (unsigned long long)(bytes / KiB));
}

static void latency_case(struct iommuctl *c, uint32_t dom, uint64_t length, bool kept,
			 unsigned iterations, const struct placement *where)
{
	struct samples daemon = {0}, transport = {0};
	uint64_t daemon_cpu = 0, client_cpu = 0, echo_cpu = 0, echo_client_cpu = 0;
	struct summary d, t;
	struct map_pair pair;
	size_t sizes[PACKETS];
	struct echo echo;
	unsigned warm = iterations / 10 + 1, per_round = (iterations + ROUNDS - 1) / ROUNDS;
	char label[32], packets[4 * 21]; /* four sizes of up to 20 digits */
	int mem = memfd(length);

	map_pair_init(&pair, dom, length, kept);
	if (kept)
		keep_file(c, mem);
	for (unsigned i = 0; i < warm; i++)
		map_pair_run(c, &pair, mem, NULL);
	/* After the warm-up, so the ids are near the run's: an id's varint grows by a byte only
	 * at 2^14 and 2^21. */
	map_pair_run(c, &pair, mem, sizes);
	echo_start(&echo);
	pin(echo.pid, where->server_cpu);
	for (unsigned i = 0; i < warm; i++)
		ping_pong_pair(&echo, sizes, mem, pair.map_fds);
	/* Alternating, so that a drift of the machine shows in both columns alike. */
	for (unsigned r = 0; r < ROUNDS; r++) {
		uint64_t cpu_start = daemon_cpu_ns(), client_start = thread_cpu_ns();

		for (unsigned i = 0; i < per_round; i++) {
			uint64_t start = now_ns();

			map_pair_run(c, &pair, mem, NULL);
			samples_add(&daemon, now_ns() - start);
		}
		/* Inside the daemon's reads: reading its CPU time is not the client's work. */
		client_cpu += thread_cpu_ns() - client_start;
		daemon_cpu += daemon_cpu_ns() - cpu_start;
		cpu_start = cpu_ns_of(echo.pid);
		client_start = thread_cpu_ns();
		for (unsigned i = 0; i < per_round; i++) {
			uint64_t start = now_ns();

			ping_pong_pair(&echo, sizes, mem, pair.map_fds);
			samples_add(&transport, now_ns() - start);
		}
		echo_client_cpu += thread_cpu_ns() - client_start;
		echo_cpu += cpu_ns_of(echo.pid) - cpu_start;
	}
	echo_stop(&echo);
	(void)close(mem);
	d = samples_summary(&daemon);
	t = samples_summary(&transport);
	format_size(label, sizeof(label), length);
	(void)snprintf(packets, sizeof(packets), "%zu/%zu %zu/%zu", sizes[MAP_REQUEST],
		       sizes[MAP_REPLY], sizes[UNMAP_REQUEST], sizes[UNMAP_REPLY]);
	(void)printf("%-4s %-8s %-4s %7zu  %-13s %11.0f %11.0f %7.2f %11.0f %11.0f %7.2f %11.0f "
		     "%11.0f %11.0f %11.0f\n",
		     where->name, label, kept ? "kept" : "sent", daemon.n, packets, d.median,
		     t.median, d.median / t.median, d.p99, t.p99, d.p99 / t.p99,
		     (double)daemon_cpu / (double)daemon.n, (double)client_cpu / (double)daemon.n,
		     (double)echo_cpu / (double)transport.n,
		     (double)echo_client_cpu / (double)transport.n);
	samples_free(&daemon);
	samples_free(&transport);
}

static void part_latency(void)
{
	static const struct {
		uint64_t length;
		bool kept;
		unsigned divisor; /* fewer iterations where one takes long */
	} cases[] = {
		{4 * KiB, true, 1}, {4 * KiB, false, 1}, {2 * MiB, true, 1}, {256 * MiB, true, 5}};
	struct placement where[2];
	size_t n_where = placements(where);
	uint32_t dom;
	struct iommuctl *c = client_open(&dom);

	(void)printf(
		"\n1. Map+Unmap round trips (ns per iteration: Map, then Unmap of it)\n"
		"   daemon: through libiommuctl, each Unmap asking the daemon to keep its map of\n"
		"   the file for the next Map (keep_map), as a client mapping per I/O does;\n"
		"   fd: kept = the connection keeps the memfd (KeepFiles) and the Map names it,\n"
		"   as such a client does; sent = the Map carries it, examined each time;\n"
		"   ping-pong: the same packet sizes over a bare SOCK_SEQPACKET socketpair to\n"
		"   an echo process, with the Map's descriptor where it carries one;\n"
		"   daemon-cpu: the daemon's CPU time per iteration (0 for a daemon not ours);\n"
		"   client-cpu: the client's, in libiommuctl and the kernel for it;\n"
		"   echo-cpu, pp-client-cpu: the same two for the ping-pong;\n"
		"   cpus: 1 = client, daemon and echo pinned to one CPU, 2 = the client on one,\n"
		"   the daemon and echo on another, any = placed by the scheduler\n\n");
	(void)printf("%-4s %-8s %-4s %7s  %-13s %11s %11s %7s %11s %11s %7s %11s %11s %11s %11s\n",
		     "cpus", "size", "fd", "iters", "packets (B)", "daemon-med", "pingpong-med",
		     "ratio", "daemon-p99", "pingpong-p99", "ratio", "daemon-cpu", "client-cpu",
		     "echo-cpu", "pp-client-cpu");
	for (size_t w = 0; w < n_where; w++) {
		place(&where[w]);
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
			latency_case(c, dom, cases[i].length, cases[i].kept,
				     opt.iterations / cases[i].divisor
					     ? opt.iterations / cases[i].divisor
					     : 1,
				     &where[w]);
	}
	client_close(c, dom);
}

/* ---- part 2 --------------------------------------------------------------------------- */

struct throughput {
	uint64_t pages, map_ns, unmap_ns;
	/* The same rounds' packets exchanged with an echo process instead (0: not measured). */
	uint64_t bare_map_ns, bare_unmap_ns;
	uint64_t map_cpu_ns, unmap_cpu_ns;		 /* 0: the daemon's CPU time is not known */
	uint64_t daemon_map_cpu_ns, daemon_unmap_cpu_ns; /* the daemon's share of the above */
};

/* When a step of part 2 ended and the next began: on the clock, and in CPU time spent on the
 * work (this thread's and with the daemon's), which the machine's other load does not stretch.
 * Reading the daemon's CPU time costs this thread a file's open and read, which is neither
 * step's work: it falls between the two. */
struct stamp {
	uint64_t wall_end, wall_start, cpu_end, cpu_start, daemon_cpu;
};

/* This thread's CPU time, and with_daemon also the daemon's. */
static struct stamp stamp(bool with_daemon)
{
	struct stamp at = {.wall_end = now_ns(), .cpu_end = thread_cpu_ns()};

	at.daemon_cpu = with_daemon ? daemon_cpu_ns() : 0;
	at.cpu_start = thread_cpu_ns();
	at.wall_start = now_ns();
	at.cpu_end += at.daemon_cpu;
	at.cpu_start += at.daemon_cpu;
	return at;
}

/* Counts a round of pages that started at start, were mapped at mapped and unmapped at end. */
static void throughput_add(struct throughput *t, uint64_t pages, struct stamp start,
			   struct stamp mapped, struct stamp end)
{
	t->map_ns += mapped.wall_end - start.wall_start;
	t->unmap_ns += end.wall_end - mapped.wall_start;
	t->map_cpu_ns += mapped.cpu_end - start.cpu_start;
	t->unmap_cpu_ns += end.cpu_end - mapped.cpu_start;
	t->daemon_map_cpu_ns += mapped.daemon_cpu - start.daemon_cpu;
	t->daemon_unmap_cpu_ns += end.daemon_cpu - mapped.daemon_cpu;
	t->pages += pages;
}

/* The daemon's side of part 2: a connection with its domain, and the memfd its batches of
 * entries pages map. */
struct batch_daemon {
	struct batch *b;
	size_t entries;
	bool in_flight; /* all of a round's batches sent before the first reply is read */
	struct iommuctl *c;
	uint32_t dom;
	int mem;
	Iommud__V1__UnmapAllRequest unmap_all;
	Iommud__V1__Request unmap_req;
	/* The last round's packet sizes: MAP_* a MapBatch's, UNMAP_* the UnmapAll's. */
	size_t sizes[PACKETS];
	struct echo echo; /* answers them as the daemon did (batch_round_bare) */
};

/* The in-process side: kernel-helper's emulated backend with one domain, and the memfd mapped
 * here, as the daemon maps it. */
struct batch_direct {
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dom;
	int mem;
	uint8_t *va;
};

static uint64_t round_pages(void)
{
	return (uint64_t)opt.batches_per_round * BATCH;
}

static void batch_daemon_open(struct batch_daemon *d, size_t entries, bool in_flight,
			      const struct placement *where)
{
	d->b = malloc(sizeof(*d->b));
	if (!d->b)
		fail("allocating a batch", strerror(ENOMEM));
	d->c = client_open(&d->dom);
	/* The in-process side maps its memfd once for all rounds: the daemon keeps its map of the
	 * file from one round's UnmapAll to the next round's first MapBatch, as a client that maps
	 * the same pool of buffers again after each UnmapAll asks it to. */
	iommuctl_set_keep_maps(d->c, true);
	d->mem = memfd(round_pages() * PAGE);
	/* Kept, as the in-process side's memory is there without a descriptor per call. */
	keep_file(d->c, d->mem);
	d->entries = entries;
	d->in_flight = in_flight;
	batch_init(d->b, d->dom, entries, true);
	/* As iommuctl_unmap_all sends it with keep_maps on. */
	d->unmap_all = (Iommud__V1__UnmapAllRequest)IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	d->unmap_all.domain_id = d->dom;
	d->unmap_all.keep_map = true;
	d->unmap_req = (Iommud__V1__Request)IOMMUD__V1__REQUEST__INIT;
	d->unmap_req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL;
	d->unmap_req.unmap_all = &d->unmap_all;
	echo_start(&d->echo);
	pin(d->echo.pid, where->server_cpu);
}

static void batch_daemon_close(struct batch_daemon *d)
{
	echo_stop(&d->echo);
	(void)close(d->mem);
	client_close(d->c, d->dom);
	free(d->b);
}

static void batch_round_daemon(struct batch_daemon *d, struct throughput *t)
{
	struct stamp start = stamp(true), mapped;
	Iommud__V1__Response *unmapped;
	size_t waiting = 0;

	for (uint64_t first = 0; first < round_pages(); first += d->entries) {
		batch_send(d->c, d->b, d->mem, first, 1, round_pages());
		if (d->in_flight)
			waiting++;
		else
			d->sizes[MAP_REPLY] = batch_reply(d->c);
	}
	for (; waiting; waiting--)
		d->sizes[MAP_REPLY] = batch_reply(d->c);
	mapped = stamp(true);
	check_call(d->c, iommuctl_call(d->c, &d->unmap_req, NULL, 0, &unmapped, NULL, 0, NULL),
		   "UnmapAll");
	throughput_add(t, round_pages(), start, mapped, stamp(true));
	d->sizes[MAP_REQUEST] = iommud__v1__request__get_packed_size(&d->b->req);
	d->sizes[UNMAP_REQUEST] = iommud__v1__request__get_packed_size(&d->unmap_req);
	d->sizes[UNMAP_REPLY] = iommud__v1__response__get_packed_size(unmapped);
	iommuctl_response_free(unmapped);
}

/* The last daemon round's packets, sent and awaited as it did, to and from the echo process:
 * what the round trips alone cost, to tell the daemon's share of the round from theirs. */
static void batch_round_bare(struct batch_daemon *d, struct throughput *t)
{
	const size_t *size = d->sizes;
	uint64_t batches = round_pages() / d->entries, waiting = 0, start = now_ns(), mapped;

	for (uint64_t i = 0; i < batches; i++) {
		ping_send(&d->echo, size[MAP_REQUEST], size[MAP_REPLY], NULL, 0);
		if (d->in_flight)
			waiting++;
		else
			ping_recv(&d->echo, size[MAP_REPLY]);
	}
	for (; waiting; waiting--)
		ping_recv(&d->echo, size[MAP_REPLY]);
	mapped = now_ns();
	ping_send(&d->echo, size[UNMAP_REQUEST], size[UNMAP_REPLY], NULL, 0);
	ping_recv(&d->echo, size[UNMAP_REPLY]);
	t->bare_map_ns += mapped - start;
	t->bare_unmap_ns += now_ns() - mapped;
}

static void batch_direct_open(struct batch_direct *d)
{
	static const struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t dev;

	d->mem = memfd(round_pages() * PAGE);
	d->va = mmap(NULL, round_pages() * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d->mem, 0);
	if (d->va == MAP_FAILED)
		fail("mapping the memfd", strerror(errno));
	/* The topology the daemon runs on: one default device. */
	check_kh(kh_backend_open_emulated_text("[iommu]\ndevices = emu0\n", &d->be),
		 "opening the emulated IOMMU");
	check_kh(kh_ctx_create(d->be, &d->ctx), "creating a context");
	check_kh(kh_device_bind(d->ctx, "emu0", &dev), "binding emu0");
	check_kh(kh_domain_alloc(d->ctx, dev, &paging, &d->dom), "allocating a domain");
}

static void batch_direct_close(struct batch_direct *d)
{
	kh_ctx_destroy(d->ctx);
	kh_backend_close(d->be);
	(void)munmap(d->va, round_pages() * PAGE);
	(void)close(d->mem);
}

static void batch_round_direct(struct batch_direct *d, struct throughput *t)
{
	struct stamp start = stamp(false), mapped;

	for (uint64_t i = 0; i < round_pages(); i++) {
		struct kh_map_req req = {.iova = IOVA + i * PAGE,
					 .length = PAGE,
					 .addr = (uint64_t)(uintptr_t)(d->va + i * PAGE),
					 .prot = KH_PROT_READ | KH_PROT_WRITE,
					 .flags = KH_MAP_FIXED_IOVA};

		check_kh(kh_map(d->ctx, d->dom, &req), "kh_map");
	}
	mapped = stamp(false);
	check_kh(kh_unmap(d->ctx, d->dom, 0, UINT64_MAX, NULL), "kh_unmap");
	throughput_add(t, round_pages(), start, mapped, stamp(false));
}

static double pages_per_s(const struct throughput *t)
{
	return (double)t->pages * 1e9 / (double)(t->map_ns + t->unmap_ns);
}

static void throughput_row(const char *label, const struct throughput *t)
{
	(void)printf("%-28s %10llu %12.1f %12.1f %12.0f %12.1f %12.1f\n", label,
		     (unsigned long long)t->pages, (double)t->map_ns / (double)t->pages,
		     (double)t->unmap_ns / (double)t->pages, pages_per_s(t),
		     (double)t->map_cpu_ns / (double)t->pages,
		     (double)t->unmap_cpu_ns / (double)t->pages);
}

static double ratio(uint64_t a, uint64_t b)
{
	return (double)a / (double)b;
}

/* A daemon side's rows against the in-process one: its time ratios, then its event loop's own
 * CPU per page and that against the in-process CPU time. */
static void batch_ratios(const char *label, const struct throughput *daemon,
			 const struct throughput *direct)
{
	char row[64];

	/* All as time ratios, so each says how many times longer a page takes; both rounds map
	 * as many pages. */
	(void)snprintf(row, sizeof(row), "%s (time)", label);
	(void)printf("%-28s %10s %12.2f %12.2f %12.2f %12.2f %12.2f\n", row, "",
		     ratio(daemon->map_ns, direct->map_ns),
		     ratio(daemon->unmap_ns, direct->unmap_ns),
		     pages_per_s(direct) / pages_per_s(daemon),
		     ratio(daemon->map_cpu_ns, direct->map_cpu_ns),
		     ratio(daemon->unmap_cpu_ns, direct->unmap_cpu_ns));
	/* The CPU columns above add the client's encoding and decoding to the daemon's work. */
	(void)printf("%-28s %10s %12s %12s %12s %12.1f %12.1f\n", "  of which the daemon", "", "",
		     "", "", (double)daemon->daemon_map_cpu_ns / (double)daemon->pages,
		     (double)daemon->daemon_unmap_cpu_ns / (double)daemon->pages);
	if (daemon->daemon_map_cpu_ns) {
		(void)snprintf(row, sizeof(row), "%s (cpu)", label);
		(void)printf("%-28s %10s %12s %12s %12s %12.2f %12.2f\n", row, "", "", "", "",
			     ratio(daemon->daemon_map_cpu_ns, direct->map_cpu_ns),
			     ratio(daemon->daemon_unmap_cpu_ns, direct->unmap_cpu_ns));
	}
	/* The round trips' share of the wall time, and what is left of the ratios without it. */
	(void)printf("%-28s %10s %12.1f %12.1f\n", "  the packets alone", "",
		     (double)daemon->bare_map_ns / (double)daemon->pages,
		     (double)daemon->bare_unmap_ns / (double)daemon->pages);
	(void)printf("%-28s %10s %12.2f %12.2f\n", "  less them (time)", "",
		     ((double)daemon->map_ns - (double)daemon->bare_map_ns) /
			     (double)direct->map_ns,
		     ((double)daemon->unmap_ns - (double)daemon->bare_unmap_ns) /
			     (double)direct->unmap_ns);
}

/* Rounds of the daemon's side and the in-process one in turn, so that the machine's other load,
 * which comes and goes, weighs on both alike: one batch size against its own in-process
 * rounds, as the daemon's working set of one connection is then the same for every size. */
static void batch_compare(size_t entries, bool in_flight, const struct placement *where,
			  struct throughput *daemon, struct throughput *direct)
{
	struct throughput warm = {0};
	struct batch_daemon own;
	struct batch_direct here;

	batch_daemon_open(&own, entries, in_flight, where);
	batch_direct_open(&here);
	batch_round_daemon(&own, &warm);
	batch_round_direct(&here, &warm);
	for (unsigned r = 0; r < opt.batch_rounds; r++) {
		batch_round_daemon(&own, daemon);
		batch_round_direct(&here, direct);
	}
	/* Apart: a third process taking turns with the other two changes how the scheduler wakes
	 * the daemon (with requests in flight, its map rounds took a tenth longer). */
	batch_round_bare(&own, &warm);
	for (unsigned r = 0; r < opt.batch_rounds; r++)
		batch_round_bare(&own, daemon);
	batch_direct_close(&here);
	batch_daemon_close(&own);
}

/* Waits until the process exits: a thread of the benchmark's that does nothing. */
static void *idle_thread(void *arg)
{
	(void)arg;
	for (;;)
		(void)pause();
	return NULL;
}

/* From here on this process has a second thread, as the daemon has: glibc's malloc then locks
 * its arena on every allocation and free that its per-thread cache does not serve, which a
 * single-threaded process skips, and kernel-helper allocates a record per mapping. There is no
 * going back: glibc never counts a process single-threaded again. */
static void start_idle_thread(void)
{
	pthread_t idle;
	int rc = pthread_create(&idle, NULL, idle_thread, NULL);

	if (rc)
		fail("starting a second thread", strerror(rc));
	(void)pthread_detach(idle);
}

static void part_batch(void)
{
	struct throughput daemon = {0}, direct = {0}, largest = {0}, direct_largest = {0};
	struct throughput in_flight = {0}, direct_in_flight = {0};
	struct throughput threaded = {0}, direct_threaded = {0};
	struct placement where[2];
	char label[32];

	/* The CPU cost of the work, not wakeups across CPUs (see struct placement). */
	placements(where);
	place(&where[0]);
	(void)printf(
		"\n2. MapBatch throughput (4 KiB pages; a round maps %u pages of one memfd in\n"
		"   batches of %u, then of %u, at fixed IOVAs, then unmaps them all at once;\n"
		"   cpus: %s)\n\n",
		opt.batches_per_round * BATCH, BATCH, BATCH_LARGEST, where[0].name);
	(void)printf("%-28s %10s %12s %12s %12s %12s %12s\n", "path", "pages", "map ns/page",
		     "unmap ns/pg", "pages/s", "map cpu/pg", "unmap cpu/pg");
	batch_compare(BATCH, false, &where[0], &daemon, &direct);
	batch_compare(BATCH_LARGEST, false, &where[0], &largest, &direct_largest);
	batch_compare(BATCH, true, &where[0], &in_flight, &direct_in_flight);
	throughput_row("daemon MapBatch+UnmapAll", &daemon);
	throughput_row("kh_map+kh_unmap in process", &direct);
	batch_ratios("daemon/in-process", &daemon, &direct);
	(void)snprintf(label, sizeof(label), "%u-entry batches", BATCH_LARGEST);
	throughput_row(label, &largest);
	throughput_row("kh_map+kh_unmap in process", &direct_largest);
	(void)snprintf(label, sizeof(label), "%u-entry/in-process", BATCH_LARGEST);
	batch_ratios(label, &largest, &direct_largest);
	(void)snprintf(label, sizeof(label), "%u in flight of %u", opt.batches_per_round, BATCH);
	throughput_row(label, &in_flight);
	throughput_row("kh_map+kh_unmap in process", &direct_in_flight);
	batch_ratios("in flight/in-process", &in_flight, &direct_in_flight);
	/* Last: the in-process side stays threaded for the rest of the run (parts 3 to 5 do
	 * not call kernel-helper here). */
	start_idle_thread();
	batch_compare(BATCH, false, &where[0], &threaded, &direct_threaded);
	throughput_row("daemon MapBatch+UnmapAll", &threaded);
	throughput_row("kh in process, 2 threads", &direct_threaded);
	batch_ratios("daemon/threaded", &threaded, &direct_threaded);
}

/* ---- part 3 --------------------------------------------------------------------------- */

enum workload { MAP_UNMAP, MAP_BATCH };

struct client {
	pthread_t thread;
	struct iommuctl *conn;
	uint32_t dom;
	int mem;
	enum workload workload;
	pthread_barrier_t *start;
	struct samples latency;
	uint64_t pages, start_ns, end_ns;
};

static void *client_run(void *arg)
{
	struct client *cl = arg;
	struct map_pair pair;
	struct batch *b = NULL;
	uint64_t deadline;

	if (cl->workload == MAP_UNMAP) {
		map_pair_init(&pair, cl->dom, PAGE, false);
	} else {
		b = malloc(sizeof(*b));
		if (!b)
			fail("allocating a batch", strerror(ENOMEM));
		batch_init(b, cl->dom, BATCH, false);
	}
	pthread_barrier_wait(cl->start);
	cl->start_ns = now_ns();
	deadline = cl->start_ns + (uint64_t)(opt.level_seconds * 1e9);
	for (uint64_t t = cl->start_ns; t < deadline;) {
		uint64_t end;

		if (cl->workload == MAP_UNMAP) {
			map_pair_run(cl->conn, &pair, cl->mem, NULL);
			cl->pages++;
		} else {
			batch_map(cl->conn, b, cl->mem, 0, 1, BATCH);
			check_call(cl->conn, iommuctl_unmap_all(cl->conn, cl->dom, NULL),
				   "UnmapAll");
			cl->pages += BATCH;
		}
		end = now_ns();
		samples_add(&cl->latency, end - t);
		t = end;
	}
	cl->end_ns = now_ns();
	free(b);
	return NULL;
}

struct level_result {
	double per_s;	 /* pairs or pages per second over all clients */
	double fairness; /* the slowest client's share of the work over the mean share */
	struct summary latency;
};

/* Runs the workload on n clients at once; latency pools every client's samples. */
static struct level_result run_level(struct client *clients, unsigned n, enum workload workload)
{
	struct samples all = {0};
	pthread_barrier_t start;
	uint64_t first = UINT64_MAX, last = 0, pages = 0, least = UINT64_MAX;
	struct level_result res;

	pthread_barrier_init(&start, NULL, n);
	for (unsigned i = 0; i < n; i++) {
		clients[i].workload = workload;
		clients[i].start = &start;
		clients[i].pages = 0;
		if (pthread_create(&clients[i].thread, NULL, client_run, &clients[i]))
			fail("starting a client thread", strerror(errno));
	}
	for (unsigned i = 0; i < n; i++) {
		(void)pthread_join(clients[i].thread, NULL);
		first = clients[i].start_ns < first ? clients[i].start_ns : first;
		last = clients[i].end_ns > last ? clients[i].end_ns : last;
		pages += clients[i].pages;
		least = clients[i].pages < least ? clients[i].pages : least;
		samples_append(&all, &clients[i].latency);
		samples_free(&clients[i].latency);
	}
	pthread_barrier_destroy(&start);
	res.per_s = (double)pages * 1e9 / (double)(last - first);
	res.fairness = (double)least * n / (double)pages;
	res.latency = samples_summary(&all);
	samples_free(&all);
	return res;
}

static void part_scaling(void)
{
	static struct client clients[MAX_CLIENTS];
	static const struct placement anywhere = {"any", -1, -1};
	double base_pairs = 0, base_pages = 0;

	/* Clients and daemon share the CPUs as the scheduler sees fit, as in real use. */
	place(&anywhere);
	(void)printf(
		"\n3. Concurrent clients, each on its own thread, connection and domain, %.2f s\n"
		"   per count. Map+Unmap of 4 KiB: pairs/s over all clients and the latency of\n"
		"   one pair; MapBatch of %u x 4 KiB then UnmapAll: pages/s and one cycle's "
		"latency\n\n",
		opt.level_seconds, BATCH);
	(void)printf("%-7s %9s %5s %5s %9s %9s  %9s %5s %5s %10s %10s\n", "clients", "pairs/s",
		     "x1", "fair", "pair-med", "pair-p99", "pages/s", "x1", "fair", "batch-med",
		     "batch-p99");
	for (unsigned n = 1; n <= opt.clients_max; n *= 2) {
		struct level_result pairs, batches;

		for (unsigned i = 0; i < n; i++) {
			clients[i].conn = client_open(&clients[i].dom);
			clients[i].mem = memfd(BATCH * PAGE);
		}
		pairs = run_level(clients, n, MAP_UNMAP);
		batches = run_level(clients, n, MAP_BATCH);
		for (unsigned i = 0; i < n; i++) {
			(void)close(clients[i].mem);
			client_close(clients[i].conn, clients[i].dom);
		}
		if (n == 1) {
			base_pairs = pairs.per_s;
			base_pages = batches.per_s;
		}
		(void)printf(
			"%-7u %9.0f %5.2f %5.2f %9.0f %9.0f  %9.0f %5.2f %5.2f %10.0f %10.0f\n", n,
			pairs.per_s, pairs.per_s / base_pairs, pairs.fairness, pairs.latency.median,
			pairs.latency.p99, batches.per_s, batches.per_s / base_pages,
			batches.fairness, batches.latency.median, batches.latency.p99);
	}
	(void)printf(
		"(latencies in ns; fair: the least busy client's pairs or pages over the mean)\n");
}

/* ---- part 4 --------------------------------------------------------------------------- */

/* What the daemon's memory is, as the kernel counts it. */
struct daemon_memory {
	uint64_t rss_bytes;	  /* VmRSS */
	uint64_t cpu_table_bytes; /* VmPTE: its own page tables, kernel memory */
	uint64_t vmas;		  /* lines of /proc/PID/maps */
};

/* A vm_area_struct and its share of the maple tree, about (kernel memory each VMA costs). */
#define VMA_BYTES 256

static uint64_t status_kib(const char *status, const char *key)
{
	const char *at = strstr(status, key);

	if (!at)
		fail("reading the daemon's /proc status", key);
	return strtoull(at + strlen(key), NULL, 10);
}

static struct daemon_memory daemon_memory(void)
{
	char path[64], status[4096];
	struct daemon_memory m = {0};
	FILE *f;
	size_t n;
	int ch;

	(void)snprintf(path, sizeof(path), "/proc/%d/status", (int)daemon_pid);
	f = fopen(path, "re");
	if (!f)
		fail(path, strerror(errno));
	n = fread(status, 1, sizeof(status) - 1, f);
	status[n] = '\0';
	(void)fclose(f);
	m.rss_bytes = status_kib(status, "VmRSS:") * KiB;
	m.cpu_table_bytes = status_kib(status, "VmPTE:") * KiB;
	(void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)daemon_pid);
	f = fopen(path, "re");
	if (!f)
		fail(path, strerror(errno));
	while ((ch = getc(f)) != EOF)
		m.vmas += ch == '\n';
	(void)fclose(f);
	return m;
}

/* The emulated IOMMU page tables the daemon charges this uid for (its Hello's quota). */
static uint64_t charged_page_tables(void)
{
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c;
	uint64_t bytes;

	if (iommuctl_connect(opt.socket, &c) < 0)
		fail("connecting to the daemon", iommuctl_last_error(NULL));
	check_call(c, iommuctl_hello(c, "iommud-bench", NULL, &hello), "Hello");
	bytes = hello->quota ? hello->quota->page_table_bytes : 0;
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	iommuctl_close(c);
	return bytes;
}

static void memory_row(const char *what, uint64_t bytes, uint64_t mappings)
{
	(void)printf("   %-44s %14llu %10.1f\n", what, (unsigned long long)bytes,
		     (double)bytes / (double)mappings);
}

/* Maps many 4 KiB pages in one domain and says what each costs the daemon and the kernel. */
static void part_memory(void)
{
	uint64_t mappings = opt.quick ? 4 * BATCH : MANY_MAPPINGS, tables, total;
	struct daemon_memory before, after;
	struct batch *b = malloc(sizeof(*b));
	uint32_t dom;
	struct iommuctl *c;
	int mem = memfd(MANY_FILE_PAGES * PAGE);

	if (!b)
		fail("allocating a batch", strerror(ENOMEM));
	(void)printf(
		"\n4. Memory per mapping: %llu mappings of 4 KiB in one domain (MapBatch at\n"
		"   consecutive IOVAs of every other page of a %u-page memfd, so that no two\n"
		"   are contiguous in memory); the daemon's growth as the kernel counts it\n\n",
		(unsigned long long)mappings, MANY_FILE_PAGES);
	if (!daemon_pid) {
		(void)printf("   (only for a daemon iommud-bench started: skipped)\n");
		free(b);
		(void)close(mem);
		return;
	}
	c = client_open(&dom);
	batch_init(b, dom, BATCH, false);
	before = daemon_memory();
	for (uint64_t first = 0; first < mappings; first += BATCH)
		batch_map(c, b, mem, first, 2, MANY_FILE_PAGES);
	after = daemon_memory();
	tables = charged_page_tables();
	(void)printf("   %-44s %14s %10s\n", "", "bytes", "per mapping");
	memory_row("daemon RSS", after.rss_bytes - before.rss_bytes, mappings);
	memory_row(" of which emulated IOMMU page tables", tables, mappings);
	memory_row("its CPU page tables (VmPTE)", after.cpu_table_bytes - before.cpu_table_bytes,
		   mappings);
	memory_row("its VMAs (x " STRINGIFY(VMA_BYTES) " B, about)",
		   (after.vmas - before.vmas) * VMA_BYTES, mappings);
	total = after.rss_bytes - before.rss_bytes + after.cpu_table_bytes -
		before.cpu_table_bytes + (after.vmas - before.vmas) * VMA_BYTES;
	memory_row("total", total, mappings);
	(void)printf("   VMAs: %llu before, %llu after; emulated page tables: %.0f bytes per GiB "
		     "mapped\n",
		     (unsigned long long)before.vmas, (unsigned long long)after.vmas,
		     (double)tables * (double)(1ull << 30) / (double)(mappings * PAGE));
	check_call(c, iommuctl_unmap_all(c, dom, NULL), "UnmapAll");
	client_close(c, dom);
	(void)close(mem);
	free(b);
}

/* ---- part 5 --------------------------------------------------------------------------- */

/* Part 5's tenants: uids of their own, each given a device by its daemon's configuration. */
#define TENANT_UID   61051
#define TENANT_DEPTH 16 /* pairs each tenant keeps in flight on its connection */
#define TENANTS_TEXT                                                                               \
	"[uid 61051]\naccess = write\ndevices = emu0\n"                                            \
	"[uid 61052]\naccess = write\ndevices = emu1\n"

/* What a tenant's process reports. */
struct tenant_result {
	uint64_t pairs;
	uint64_t ns;	 /* from its first pair's start to its last one's end */
	uint64_t cpu_ns; /* the process's CPU time meanwhile */
};

/* A tenant's way of sending its pairs: on c, with a paging domain dom and a memfd mem of one
 * page, for a level's time; returns the pairs done and their time in *ret_ns. */
typedef uint64_t tenant_pairs_fn(struct iommuctl *c, uint32_t dom, int mem, uint64_t *ret_ns);

/* The TENANT_DEPTH pairs a tenant keeps in flight, each at an IOVA of its own, built once;
 * request 2i is pair i's Map, 2i + 1 its Unmap. */
static struct map_pair tenant_pairs[TENANT_DEPTH];

static Iommud__V1__Request *tenant_request(unsigned k)
{
	return k % 2 ? &tenant_pairs[k / 2].unmap_req : &tenant_pairs[k / 2].map_req;
}

static void tenant_pairs_init(uint32_t dom)
{
	for (unsigned i = 0; i < TENANT_DEPTH; i++) {
		map_pair_init(&tenant_pairs[i], dom, PAGE, false);
		tenant_pairs[i].entry.iova = tenant_pairs[i].unmap.iova = IOVA + i * PAGE;
	}
}

/* A failed pipelined Map or Unmap stops the benchmark with the daemon's message. */
static void check_reply(const Iommud__V1__Response *resp)
{
	if (resp->status && resp->status->code != IOMMUD__V1__CODE__CODE_OK)
		fail("a pipelined Map or Unmap", resp->status->message);
}

/* Pairs through libiommuctl, TENANT_DEPTH of them sent before their replies are read, so that
 * the daemon always has the tenant's next request waiting: what a real client costs, encoding
 * and decoding each message and a system call for each. */
static uint64_t library_pairs(struct iommuctl *c, uint32_t dom, int mem, uint64_t *ret_ns)
{
	uint64_t start = now_ns(), deadline = start + (uint64_t)(opt.level_seconds * 1e9), n = 0;
	Iommud__V1__Response *resp;
	uint64_t id;

	tenant_pairs_init(dom);
	while (now_ns() < deadline) {
		for (unsigned k = 0; k < 2 * TENANT_DEPTH; k++)
			check_call(c,
				   iommuctl_send(c, tenant_request(k), k % 2 ? NULL : &mem,
						 k % 2 ? 0 : 1, &id),
				   k % 2 ? "Unmap" : "Map");
		for (unsigned k = 0; k < 2 * TENANT_DEPTH; k++) {
			check_call(c, iommuctl_recv(c, &resp, NULL, 0, NULL), "a reply");
			check_reply(resp);
			iommuctl_response_free(resp);
		}
		n += TENANT_DEPTH;
	}
	*ret_ns = now_ns() - start;
	return n;
}

/* The raw client's requests, packed once, and room for their replies: a Map request or reply
 * of 4 KiB is some tens of bytes, but a reply is read into a buffer of the protocol's limit,
 * as docs/protocol.md asks. */
#define RAW_REQUEST_MAX 256
/* Rounds the raw client keeps in flight: while it reads one round's replies, the daemon
 * already has the next round's requests, so it does not wait for the client between rounds. */
#define RAW_ROUNDS 2
static struct {
	uint8_t requests[2 * TENANT_DEPTH][RAW_REQUEST_MAX];
	uint8_t replies[RAW_ROUNDS][2 * TENANT_DEPTH][IOMMUCTL_MAX_MESSAGE];
	struct iovec request_iov[2 * TENANT_DEPTH], reply_iov[RAW_ROUNDS][2 * TENANT_DEPTH];
	struct mmsghdr sends[2 * TENANT_DEPTH], receives[RAW_ROUNDS][2 * TENANT_DEPTH];
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} rights[TENANT_DEPTH];			   /* each Map's descriptor */
	_Alignas(max_align_t) uint8_t arena[4096]; /* one reply's decoded message */
	size_t arena_used;
} raw;

/* Decoding a reply allocates from raw.arena, emptied before each: no malloc per reply. */
static void *arena_alloc(void *data, size_t size)
{
	size_t at = raw.arena_used;

	(void)data;
	size = (size + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
	if (size > sizeof(raw.arena) - at)
		return NULL;
	raw.arena_used += size;
	return raw.arena + at;
}

static void arena_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

/* Packs the pairs' requests into raw once, with ids 1 to 2 * TENANT_DEPTH: the daemon does
 * not require ids to be unique, and ids unique within one round let each reply be checked
 * against the request it answers. */
static void raw_init(uint32_t dom, const int *mem)
{
	tenant_pairs_init(dom);
	for (unsigned k = 0; k < 2 * TENANT_DEPTH; k++) {
		Iommud__V1__Request *req = tenant_request(k);
		struct msghdr *hdr = &raw.sends[k].msg_hdr;

		req->id = k + 1;
		raw.request_iov[k].iov_len =
			envelope_pack(&req->base, raw.requests[k], sizeof(raw.requests[k]));
		if (raw.request_iov[k].iov_len > sizeof(raw.requests[k]))
			fail("packing a Map or Unmap", "longer than the benchmark's buffer");
		raw.request_iov[k].iov_base = raw.requests[k];
		*hdr = (struct msghdr){.msg_iov = &raw.request_iov[k], .msg_iovlen = 1};
		if (k % 2 == 0) {
			struct cmsghdr *cmsg = &raw.rights[k / 2].align;

			hdr->msg_control = raw.rights[k / 2].buf;
			hdr->msg_controllen = sizeof(raw.rights[k / 2].buf);
			cmsg->cmsg_level = SOL_SOCKET;
			cmsg->cmsg_type = SCM_RIGHTS;
			cmsg->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cmsg), mem, sizeof(int));
		}
		for (unsigned r = 0; r < RAW_ROUNDS; r++) {
			raw.reply_iov[r][k] =
				(struct iovec){raw.replies[r][k], sizeof(raw.replies[r][k])};
			raw.receives[r][k].msg_hdr =
				(struct msghdr){.msg_iov = &raw.reply_iov[r][k], .msg_iovlen = 1};
		}
	}
}

/* Checks reply k of round r: the answer to request k, and a success. */
static void raw_check_reply(unsigned r, unsigned k)
{
	static ProtobufCAllocator arena = {arena_alloc, arena_free, NULL};
	const struct mmsghdr *got = &raw.receives[r][k];
	Iommud__V1__Response *resp;

	if (got->msg_len == 0)
		fail("a pipelined Map or Unmap", "the daemon closed the connection");
	if (got->msg_hdr.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		fail("a pipelined Map or Unmap", "its reply was cut short or carried descriptors");
	raw.arena_used = 0;
	resp = iommud__v1__response__unpack(&arena, got->msg_len, raw.replies[r][k]);
	if (!resp)
		fail("a pipelined Map or Unmap", "its reply is not a Response");
	check_reply(resp);
	if (resp->id != k + 1)
		fail("a pipelined Map or Unmap", "a reply answers another request");
}

/* Sends a round's requests: one sendmmsg, more only if the socket's buffer fills. */
static void raw_send_round(int sock)
{
	unsigned done;
	int n;

	for (done = 0; done < 2 * TENANT_DEPTH; done += (unsigned)n)
		if ((n = sendmmsg(sock, raw.sends + done, 2 * TENANT_DEPTH - done, MSG_NOSIGNAL)) <
		    0) {
			if (errno != EINTR)
				fail("sending pipelined requests", strerror(errno));
			n = 0;
		}
}

/* Receives and checks round r's replies, with recvmmsg. */
static void raw_receive_round(int sock, unsigned r)
{
	unsigned done;
	int n;

	for (done = 0; done < 2 * TENANT_DEPTH; done += (unsigned)n) {
		if ((n = recvmmsg(sock, raw.receives[r] + done, 2 * TENANT_DEPTH - done,
				  MSG_CMSG_CLOEXEC, NULL)) < 0) {
			if (errno != EINTR)
				fail("receiving pipelined replies", strerror(errno));
			n = 0;
		}
		for (int i = 0; i < n; i++)
			raw_check_reply(r, done + (unsigned)i);
	}
}

/* The same pairs as library_pairs, the same bytes to the daemon, from a client that costs
 * little: its requests packed once, sent and received a round at a time with a system call or
 * a few each way (a level's time, on c's socket). What it still costs is mostly the kernel's
 * work for each packet, which no client over the socket avoids. */
static uint64_t raw_pairs(struct iommuctl *c, uint32_t dom, int mem, uint64_t *ret_ns)
{
	uint64_t start = now_ns(), deadline = start + (uint64_t)(opt.level_seconds * 1e9), n = 0;
	unsigned in_flight, r = 0;
	int sock = iommuctl_fd(c);

	raw_init(dom, &mem);
	for (in_flight = 0; in_flight < RAW_ROUNDS; in_flight++)
		raw_send_round(sock);
	while (in_flight) {
		raw_receive_round(sock, r);
		n += TENANT_DEPTH;
		r = (r + 1) % RAW_ROUNDS;
		if (now_ns() < deadline)
			raw_send_round(sock);
		else
			in_flight--;
	}
	*ret_ns = now_ns() - start;
	return n;
}

/* A tenant's process, as its own uid: once go says so, it maps and unmaps with pairs for a
 * level's time, then reports to ready. */
static void tenant_process(uid_t uid, const char *dev, tenant_pairs_fn *pairs, int ready, int go)
{
	struct tenant_result r;
	struct iommuctl *c;
	uint32_t dom;
	int mem;
	char byte;

	if (setgroups(0, NULL) < 0 || setgid((gid_t)uid) < 0 || setuid(uid) < 0)
		fail("becoming a tenant's uid", strerror(errno));
	(void)snprintf(device, sizeof(device), "%s", dev);
	c = client_open(&dom);
	mem = memfd(PAGE);
	if (write(ready, "r", 1) != 1 || read(go, &byte, 1) != 1)
		fail("starting a tenant", "the benchmark went away");
	r.cpu_ns = cpu_ns_of(getpid());
	r.pairs = pairs(c, dom, mem, &r.ns);
	r.cpu_ns = cpu_ns_of(getpid()) - r.cpu_ns;
	if (write(ready, &r, sizeof(r)) != sizeof(r))
		fail("reporting a tenant's figures", strerror(errno));
	_exit(0);
}

/* What n tenants mapping at once got: pairs/s of them all, and the CPU time per pair of the
 * daemon and of the tenants' own processes. */
struct tenants_figures {
	double per_s, daemon_ns, client_ns;
};

/* The daemon's threads and their time on a CPU so far. */
#define THREADS_SEEN_MAX 64
struct thread_times {
	size_t n;
	struct {
		pid_t tid;
		uint64_t ns;
	} at[THREADS_SEEN_MAX];
};

static void note_thread_time(pid_t tid, void *times)
{
	struct thread_times *t = times;

	if (t->n < THREADS_SEEN_MAX) {
		t->at[t->n].tid = tid;
		t->at[t->n++].ns = thread_cpu_ns_of(tid);
	}
}

/* The daemon's thread that ran longest since before, its main thread (which only accepts)
 * left out: the event-loop thread that served what a tenant did meanwhile. 0 if none ran. */
static pid_t busiest_loop_thread(const struct thread_times *before)
{
	struct thread_times now = {0};
	uint64_t most = 0;
	pid_t busiest = 0;

	each_daemon_thread(note_thread_time, &now);
	for (size_t i = 0; i < now.n; i++) {
		uint64_t ran = now.at[i].ns;

		if (now.at[i].tid == daemon_pid)
			continue;
		/* A thread gone between the two looks reads 0 now: it ran nothing worth pairing. */
		for (size_t j = 0; j < before->n; j++)
			if (before->at[j].tid == now.at[i].tid)
				ran = ran > before->at[j].ns ? ran - before->at[j].ns : 0;
		if (ran > most) {
			most = ran;
			busiest = now.at[i].tid;
		}
	}
	return busiest;
}

/* Puts tenant process pid, which has just set up its connection, and the loop thread that
 * served it since before on CPU cpu: a tenant's client beside its own loop thread, each pair
 * on a CPU of its own. */
static pid_t pair_on_cpu(pid_t pid, const struct thread_times *before, int cpu)
{
	pid_t loop_thread = busiest_loop_thread(before);

	if (!loop_thread)
		fail("pairing a tenant with its loop thread",
		     "no event-loop thread of the daemon ran for its Hello");
	pin(loop_thread, cpu);
	pin(pid, cpu);
	return loop_thread;
}

/* n tenants mapping at once with run_pairs on the daemon at opt.socket; paired, each tenant's
 * process and the loop thread serving it on a CPU of their own (there are at least n). */
static struct tenants_figures tenants_at_once(unsigned n, tenant_pairs_fn *run_pairs, bool paired)
{
	struct thread_times before;
	pid_t loop_threads[2];
	int tenant_cpu = -1;
	struct tenants_figures fig = {0};
	static const char *const devices[] = {"emu0", "emu1"};
	int ready[2][2], go[2];
	struct tenant_result r;
	uint64_t cpu, pairs = 0, client_ns = 0;
	pid_t pids[2];
	int status;
	char byte;

	if (pipe(go) < 0)
		fail("making a pipe", strerror(errno));
	for (unsigned t = 0; t < n; t++) {
		before = (struct thread_times){0};
		if (paired)
			each_daemon_thread(note_thread_time, &before);
		if (pipe(ready[t]) < 0 || (pids[t] = fork()) < 0)
			fail("starting a tenant", strerror(errno));
		if (pids[t] == 0)
			tenant_process(TENANT_UID + t, devices[t], run_pairs, ready[t][1], go[0]);
		/* Only the tenant writes: its end of the pipe is an end of file if it fails. */
		(void)close(ready[t][1]);
		if (read(ready[t][0], &byte, 1) != 1)
			fail("starting a tenant", "it failed before mapping");
		if (!paired)
			continue;
		tenant_cpu = next_cpu(tenant_cpu);
		loop_threads[t] = pair_on_cpu(pids[t], &before, tenant_cpu);
		if (t && loop_threads[t] == loop_threads[0])
			fail("pairing tenants with loop threads",
			     "the daemon serves both tenants on one loop thread");
	}
	cpu = daemon_cpu_ns();
	if (write(go[1], "gg", n) != (ssize_t)n)
		fail("starting the tenants", strerror(errno));
	for (unsigned t = 0; t < n; t++) {
		if (read(ready[t][0], &r, sizeof(r)) != sizeof(r) ||
		    waitpid(pids[t], &status, 0) != pids[t] || !WIFEXITED(status) ||
		    WEXITSTATUS(status))
			fail("a tenant", "it failed while mapping (its message is above)");
		pairs += r.pairs;
		client_ns += r.cpu_ns;
		fig.per_s += (double)r.pairs * 1e9 / (double)r.ns;
		(void)close(ready[t][0]);
	}
	fig.daemon_ns = (double)(daemon_cpu_ns() - cpu) / (double)pairs;
	fig.client_ns = (double)client_ns / (double)pairs;
	(void)close(go[0]);
	(void)close(go[1]);
	return fig;
}

/* Part 5's two clients: the raw one, which leaves the daemon the bottleneck, first. */
static const struct {
	const char *name;
	tenant_pairs_fn *pairs;
} tenant_clients[] = {{"raw", raw_pairs}, {"iommuctl", library_pairs}};

/* Times part 5 measures 1, then 2 tenants on one daemon, alternately: where the scheduler
 * puts one tenant's client beside or away from its loop thread moves its pairs/s by half
 * between levels on a virtual machine, so a row gives the median of each figure and the range
 * of the ratio. */
#define TENANT_REPEATS 3

/* One row of part 5: 1, then 2 tenants with the client's pairs, TENANT_REPEATS times, on a
 * daemon of our own with the given event-loop threads; paired, as tenants_at_once says. */
static void tenants_row(size_t client, unsigned threads, bool paired)
{
	enum {
		ONE_PER_S,
		TWO_PER_S,
		RATIO,
		ONE_DAEMON,
		TWO_DAEMON,
		ONE_CLIENT,
		TWO_CLIENT,
		FIGURES
	};
	double figures[FIGURES][TENANT_REPEATS], median[FIGURES];
	struct daemon_fixture own;
	struct tenants_figures one, two;
	char config[256];

	(void)snprintf(config, sizeof(config), "threads = %u\n" TENANTS_TEXT, threads);
	fixture_start(&own, config, "emu0 emu1");
	opt.socket = own.socket_path;
	daemon_pid = own.pid;
	for (unsigned r = 0; r < TENANT_REPEATS; r++) {
		one = tenants_at_once(1, tenant_clients[client].pairs, paired);
		two = tenants_at_once(2, tenant_clients[client].pairs, paired);
		figures[ONE_PER_S][r] = one.per_s;
		figures[TWO_PER_S][r] = two.per_s;
		figures[RATIO][r] = two.per_s / one.per_s;
		figures[ONE_DAEMON][r] = one.daemon_ns;
		figures[TWO_DAEMON][r] = two.daemon_ns;
		figures[ONE_CLIENT][r] = one.client_ns;
		figures[TWO_CLIENT][r] = two.client_ns;
	}
	fixture_stop(&own);
	for (unsigned f = 0; f < FIGURES; f++)
		median[f] = bench_median(figures[f], TENANT_REPEATS);
	(void)printf("%-8s %7u %-6s %9.0f %9.0f %5.2f %4.2f-%4.2f %9.0f %9.0f %9.0f %9.0f\n",
		     tenant_clients[client].name, threads, paired ? "paired" : "any",
		     median[ONE_PER_S], median[TWO_PER_S], median[RATIO], figures[RATIO][0],
		     figures[RATIO][TENANT_REPEATS - 1], median[ONE_DAEMON], median[TWO_DAEMON],
		     median[ONE_CLIENT], median[TWO_CLIENT]);
}

static void part_tenants(void)
{
	static const struct placement anywhere = {"any", -1, -1};
	const char *socket = opt.socket;
	pid_t pid = daemon_pid;

	(void)printf(
		"\n5. Tenants on the daemon's event-loop threads: 1, then 2 tenants mapping at\n"
		"   once, each its own uid keeping %u Map+Unmap pairs of 4 KiB in flight for\n"
		"   %.2f s, on a daemon of its own run with threads = 1, then threads = 2;\n"
		"   each row the medians of %u runs of 1 then 2 tenants\n\n",
		TENANT_DEPTH, opt.level_seconds, TENANT_REPEATS);
	if (geteuid() != 0) {
		(void)printf("   (left out: the tenants' processes take uids of their own, which "
			     "needs root)\n");
		return;
	}
	place(&anywhere);
	(void)printf("%-8s %7s %-6s %9s %9s %5s %9s %9s %9s %9s %9s\n", "client", "threads", "cpus",
		     "1 pairs/s", "2 pairs/s", "2/1", "2/1 range", "1 daemon", "2 daemon",
		     "1 client", "2 client");
	for (size_t client = 0; client < sizeof(tenant_clients) / sizeof(tenant_clients[0]);
	     client++) {
		for (unsigned threads = 1; threads <= 2; threads++)
			tenants_row(client, threads, false);
		if (next_cpu(next_cpu(-1)) >= 0)
			tenants_row(client, 2, true);
	}
	(void)printf(
		"(raw: requests packed once, sent and received a round at a time with sendmmsg\n"
		"and recvmmsg; iommuctl: through libiommuctl, what a real client costs.\n"
		"daemon, client: CPU ns per Map+Unmap pair of the daemon, all its threads, and\n"
		"of the tenants' processes. cpus any: where the scheduler likes; one tenant's\n"
		"client then often runs beside its loop thread on the other CPU, and 2 tenants\n"
		"on 2 threads can get at most 2 x daemon / (daemon + client) of 1 tenant.\n"
		"paired: each tenant's client pinned with the loop thread serving it to a CPU\n"
		"of their own, so that 1 tenant has one CPU and 2 have two: what the daemon\n"
		"adds when its tenants' work grows with the cores)\n");
	opt.socket = socket;
	daemon_pid = pid;
}

/* ---- main ----------------------------------------------------------------------------- */

/* What the run prints: the first half of --help. */
static void usage_figures(FILE *out)
{
	(void)fprintf(
		out,
		"Usage: iommud-bench [OPTION]...\n"
		"\n"
		"Measures what the iommud daemon costs and prints, in one run, each figure next\n"
		"to a baseline, with their ratio. Unless --socket is given, it starts its own\n"
		"daemon on the emulated backend (one device, emu0) in a private directory under\n"
		"/tmp, configured to give the calling uid write access, every device and large\n"
		"quotas, and stops it at the end. Use a Release build: sanitizers distort it.\n"
		"\n"
		"Figures:\n"
		"  1. Map+Unmap latency for mappings of 4 KiB, 2 MiB and 256 MiB (a memfd of\n"
		"     that size, at a fixed IOVA). One iteration is a Map, then an Unmap of it,\n"
		"     through libiommuctl: two round trips. The Unmap sets keep_map, as a\n"
		"     client that maps a buffer per I/O would, so the daemon keeps its map of\n"
		"     the file for the next Map (part 3's pairs too). fd kept: the connection\n"
		"     keeps the memfd (KeepFiles) and each Map names it, so the daemon examines\n"
		"     the file once; fd sent (4 KiB only): each Map carries the descriptor and\n"
		"     the daemon examines the file each time, as a client that keeps nothing.\n"
		"     The baseline is the transport\n"
		"     alone: two ping-pongs over a SOCK_SEQPACKET socketpair with an echo\n"
		"     process, the packets exactly as long as the encoded Map request and\n"
		"     reply and Unmap request and reply (shown in bytes), the Map request\n"
		"     carrying a descriptor where the real one does. Median and 99th\n"
		"     percentile in ns, and daemon/ping-pong: what decoding, checking and\n"
		"     mapping add to the round trips. daemon-cpu: the CPU time the daemon's\n"
		"     event loop spent per iteration (its schedstat), which the machine's other\n"
		"     load does not stretch; 0 for a daemon iommud-bench did not start.\n"
		"     client-cpu: the same of the client (this thread, in libiommuctl and\n"
		"     in the kernel for it), so that a change of the daemon that moves work\n"
		"     to its client shows. echo-cpu and pp-client-cpu: the same two for the\n"
		"     ping-pong (the echo process, this thread), so that daemon-cpu minus\n"
		"     echo-cpu is what the daemon adds on its side of the socket, and\n"
		"     client-cpu minus pp-client-cpu what libiommuctl adds on the other.\n"
		"  2. MapBatch throughput: %u 4 KiB pages of one memfd mapped in MapBatch\n"
		"     requests of %u entries at fixed IOVAs, then removed with one UnmapAll,\n"
		"     against the same pages mapped one by one with kh_map and removed with\n"
		"     one kh_unmap inside this process on kernel-helper's emulated backend,\n"
		"     the two taking turns round by round. The UnmapAll asks the daemon to\n"
		"     keep its map of the memfd for the next round (keep_map), and the\n"
		"     connection keeps the memfd (KeepFiles) so that batches name it instead of\n"
		"     carrying it, as the process keeps its own map and descriptor; the batches,\n"
		"     all at fixed IOVAs, ask for no IOVA back (picked_iovas_only).\n"
		"     Map and unmap ns per page, pages/s of the whole cycle, and the time\n"
		"     ratios daemon/in-process. Per page the daemon does more: it decodes\n"
		"     the entry, checks it against the tenant's quotas and keeps a record of\n"
		"     it. The CPU columns add the client's encoding and decoding to the\n"
		"     daemon's work; \"of which the daemon\" is the daemon's CPU time alone,\n"
		"     and the line after that against the in-process CPU time (only for a\n"
		"     daemon iommud-bench started). \"the packets alone\": ns per page of\n"
		"     the same rounds' packets, of the same sizes, sent and awaited as the\n"
		"     client did, to and from an echo process instead of the daemon (in rounds\n"
		"     of their own, after the others); \"less them (time)\": the time ratios\n"
		"     with that taken off the daemon's side: what the daemon's work adds to\n"
		"     the round trips the transport costs alone. Then the same again, in turn\n"
		"     with in-process rounds of its own, with MapBatch requests of %u\n"
		"     entries, the most one takes: what the daemon's work costs once the round\n"
		"     trips per page are halved. Then requests of %u entries again, the\n"
		"     round's %u sent before the first reply is read (the protocol lets a\n"
		"     client keep requests in flight), so that the daemon finds the next\n"
		"     request waiting instead of sleeping until the client sends it. Last,\n"
		"     requests of %u entries again, against in-process rounds while this\n"
		"     process has a second (idle) thread, as the daemon has threads: glibc's\n"
		"     malloc then locks its arena for every allocation and free its\n"
		"     per-thread cache does not serve (kernel-helper allocates a record per\n"
		"     mapping), which it skips in a single-threaded process.\n"
		"  3. Scaling: 1, 2, 4, ... up to --clients-max clients at once, each a thread\n"
		"     with its own connection and domain, each count for a fixed time. For\n"
		"     Map+Unmap of 4 KiB: pairs per second over all clients, the same relative\n"
		"     to one client (x1), and the median and 99th percentile latency of one\n"
		"     pair as clients saw it (every pair of every client); for MapBatch of %u\n"
		"     pages then UnmapAll: pages per second and the latency of one such cycle.\n"
		"     fair is the least served client's share of the work over the mean share\n"
		"     (1: all alike). The clients are one tenant, whose requests one event-loop\n"
		"     thread of the daemon executes one at a time, so throughput cannot grow past\n"
		"     one core's worth; latency grows with the clients (part 5: two tenants).\n"
		"  4. Memory: %u (--quick: %u) 4 KiB mappings in one domain, made with\n"
		"     MapBatch, none contiguous in memory with the next; what the daemon's\n"
		"     RSS, its own page tables and its VMAs (counted at %d bytes each) grew by,\n"
		"     per mapping, and the emulated IOMMU's page tables among them, also per\n"
		"     GiB mapped. Only for a daemon iommud-bench started.\n"
		"  5. Tenants: on daemons of its own run with [daemon] threads = 1, then 2,\n"
		"     one tenant, then two at once, each a process of its own uid (61051,\n"
		"     61052: needs root) sending Map+Unmap pairs of 4 KiB, %u at a time, on\n"
		"     its connection, with two clients in turn: raw packs its requests once,\n"
		"     sends each round with one sendmmsg (the Map's descriptor beside each\n"
		"     Map) and reads the replies with recvmmsg, keeping two rounds in flight,\n"
		"     so that the daemon, not the client, limits it; iommuctl goes through\n"
		"     libiommuctl, one round at a time: what a real client costs. Both check\n"
		"     every reply's status and stop at the first failure with the daemon's\n"
		"     message. Each row is the median of %u runs of one tenant then two, on\n"
		"     one daemon: pairs/s of all tenants, the ratio 2 tenants/1 (and its\n"
		"     range), and the CPU time (schedstat) per pair of the daemon (all its\n"
		"     threads) and of the tenants' processes, which the machine's noise does\n"
		"     not stretch. The rows with threads = 2 come twice: with every process\n"
		"     where the scheduler likes (cpus any), then paired: each tenant's\n"
		"     process and the loop thread that served its Hello (the one whose CPU\n"
		"     time grew) pinned to a CPU of their own, so that one tenant has one CPU\n"
		"     and two have two; left out with fewer than 2 CPUs.\n"
		"\n",
		opt.batches_per_round * BATCH, BATCH, BATCH_LARGEST, BATCH, opt.batches_per_round,
		BATCH, BATCH, MANY_MAPPINGS, 4 * BATCH, VMA_BYTES, TENANT_DEPTH, TENANT_REPEATS);
}

static void usage(FILE *out)
{
	usage_figures(out);
	(void)fprintf(
		out,
		"Options:\n"
		"  -s, --socket PATH    measure the daemon listening at PATH instead of starting\n"
		"                       one; this uid needs write access to a paging device,\n"
		"                       quotas for %d domains, 256 MiB and %u mappings; part 2\n"
		"                       still compares with the emulated backend\n"
		"  -d, --daemon PATH    the iommud binary to start (default: $IOMMUD_DAEMON if\n"
		"                       set, else the one this build made:\n"
		"                       %s)\n"
		"  -D, --device NAME    the device to allocate domains for (default: the first\n"
		"                       the daemon allows)\n"
		"  -n, --iterations N   Map+Unmap iterations per size in part 1 (default 20000;\n"
		"                       256 MiB does N/5), after a tenth as many to warm up\n"
		"  -c, --clients-max N  the largest client count in part 3, at most %d\n"
		"                       (default %d)\n"
		"  -q, --quick          a short run that shows the benchmark works; its figures\n"
		"                       are noise\n"
		"  -p, --parts DIGITS   run only the figures named, e.g. 24 (default 12345)\n"
		"  -h, --help           show this text\n"
		"\n"
		"Environment:\n"
		"  IOMMUD_DAEMON        the iommud binary to start, unless --daemon is given\n"
		"\n"
		"Exit status: 0 after printing, 1 if a step failed (the message says which), 2 on\n"
		"a usage error.\n",
		MAX_CLIENTS, MAX_CLIENTS * BATCH, IOMMUD_BIN, MAX_CLIENTS, MAX_CLIENTS);
}

static unsigned parse_count(const char *arg, unsigned max)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(arg, &end, 10);
	if (errno || end == arg || *end || n == 0 || n > max) {
		(void)fprintf(stderr, "iommud-bench: '%s' is not a count from 1 to %u\n", arg, max);
		exit(2);
	}
	return (unsigned)n;
}

/* Reads the command line into opt; exits on --help and on a usage error. */
static void parse_options(int argc, char **argv)
{
	static const struct option options[] = {{"socket", required_argument, NULL, 's'},
						{"daemon", required_argument, NULL, 'd'},
						{"device", required_argument, NULL, 'D'},
						{"iterations", required_argument, NULL, 'n'},
						{"clients-max", required_argument, NULL, 'c'},
						{"quick", no_argument, NULL, 'q'},
						{"parts", required_argument, NULL, 'p'},
						{"help", no_argument, NULL, 'h'},
						{0}};
	bool iterations_given = false;
	int o;

	while ((o = getopt_long(argc, argv, "s:d:D:n:c:qp:h", options, NULL)) != -1) {
		switch (o) {
		case 's':
			opt.socket = optarg;
			break;
		case 'd':
			/* The fixture starts what $IOMMUD_DAEMON names. */
			(void)setenv("IOMMUD_DAEMON", optarg, 1);
			break;
		case 'D':
			opt.device = optarg;
			break;
		case 'n':
			opt.iterations = parse_count(optarg, 100000000);
			iterations_given = true;
			break;
		case 'c':
			opt.clients_max = parse_count(optarg, MAX_CLIENTS);
			break;
		case 'q':
			opt.quick = true;
			break;
		case 'p':
			opt.parts = optarg;
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
	if (opt.quick) {
		if (!iterations_given)
			opt.iterations = 100;
		opt.batch_rounds = 1;
		opt.batches_per_round = 2;
		opt.level_seconds = 0.02;
	}
}

/* Starts a daemon of our own, on the emulated backend, that gives this uid what the parts use. */
static void start_own_daemon(struct daemon_fixture *own)
{
	/* The fixture would only abort; say what is wrong instead. */
	const char *bin = getenv("IOMMUD_DAEMON") ? getenv("IOMMUD_DAEMON") : IOMMUD_BIN;
	char config[256];

	if (access(bin, X_OK) < 0)
		fail(bin, "cannot run it; build iommud, or name it with --daemon");
	(void)snprintf(config, sizeof(config),
		       "[uid %u]\naccess = write\ndevices = *\nmax-domains = 1000\n"
		       "max-mappings = 2000000\nmax-pinned = 64G\n",
		       (unsigned)getuid());
	fixture_start(own, config, "emu0");
	opt.socket = own->socket_path;
	daemon_pid = own->pid;
}

int main(int argc, char **argv)
{
	struct daemon_fixture own;
	bool own_daemon = false;

	parse_options(argc, argv);
	/* Progress shows part by part, also when the output goes to a file. */
	(void)setvbuf(stdout, NULL, _IOLBF, 0);
	if (sched_getaffinity(0, sizeof(start_cpus), &start_cpus) < 0)
		fail("reading CPU affinity", strerror(errno));
	if (!opt.socket) {
		start_own_daemon(&own);
		own_daemon = true;
	}
	choose_device();
	(void)printf("iommud-bench: daemon at %s (%s), device %s, %ld CPUs online%s\n", opt.socket,
		     own_daemon ? "started by iommud-bench, emulated backend" : "already running",
		     device, sysconf(_SC_NPROCESSORS_ONLN),
		     opt.quick ? ", quick run: figures are noise" : "");
	if (strchr(opt.parts, '1'))
		part_latency();
	if (strchr(opt.parts, '2'))
		part_batch();
	if (strchr(opt.parts, '3'))
		part_scaling();
	if (strchr(opt.parts, '4'))
		part_memory();
	if (strchr(opt.parts, '5'))
		part_tenants();
	if (own_daemon)
		fixture_stop(&own);
	return 0;
}
