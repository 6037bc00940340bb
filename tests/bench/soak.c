/* SPDX-License-Identifier: MIT */
/*
 * iommud-soak: a well-behaved tenant's round trip while a hostile one does its worst. The
 * victim, a configured writer of its own uid, calls ListDevices one call at a time; its p50 and
 * p99 round trips are measured with the daemon idle and then under each attack, and printed
 * side by side with the ratio of the p99s:
 *   reads        an unlisted reader's connections (as many as its uid may open) each pipelining
 *                GetStats;
 *   connections  four unlisted uids opening connections and keeping them idle until refused,
 *                then connecting and closing in a loop, with the daemon's open-file limit
 *                lowered below what they ask for, so that it runs out of descriptors;
 *   map          a writer's connections each pipelining MapBatch requests of --map-mib MiB at
 *                4 KiB pages whose last entry fails, so every request maps and unmaps it all;
 *   all          the three at once;
 *   unmap        a writer's connection pipelining Map of --map-mib MiB at 4 KiB pages and
 *                UnmapAll in turn, so every other request removes a costly mapping.
 * What is measured is the daemon's sharing, not the kernel's: the connection flooders, which
 * spin, run at nice 19, so that on a machine of few CPUs they take less of the victim's CPU
 * time; the other attackers wait on their sockets and run at the victim's priority.
 * The daemon's CPU use during each attack is printed too: a daemon that spins shows 100%.
 * A benchmark prints; it never judges. A costly request is handled in slices of about one turn,
 * so the hostile requests' time in the daemon printed last is from receipt to reply, the
 * victim's turns included, not what a victim waits for; the emulated backend's own map and
 * unmap time per GiB, printed after them, is what the hostile tenant's mappings cost, however
 * many slices they took.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>
#include <iommud_wire.h>

#include "daemon_fixture.h"

#define VICTIM_UID  62001
#define MAPPER_UID  62002
#define READER_UID  62003
#define FLOODER_UID 62004 /* and the three after it */
#define FLOODERS    4

#define MAX_CONNECTIONS 1024
#define DAEMON_FILES	400 /* the daemon's open-file limit: below what the flooders ask */
#define READER_CONNS	300 /* more than its uid may open */
#define READER_DEPTH	4
#define FLOOD_HELD	300
#define MAPPER_CONNS	4
#define MAPPER_DEPTH	8
#define MAX_SAMPLES	(1u << 20)

static struct {
	double seconds;
	unsigned map_mib;
	const char *attack; /* NULL: each in turn */
} opt = {.seconds = 3.0, .map_mib = 64};

static struct daemon_fixture daemon_under_test;

static void die(const char *what, const char *why)
{
	(void)fprintf(stderr, "iommud-soak: %s: %s\n", what, why);
	_exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void become(uid_t uid)
{
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (setgroups(0, NULL) < 0 || setgid((gid_t)uid) < 0 || setuid(uid) < 0)
		die("setuid", strerror(errno));
}

static struct iommuctl *connect_or_die(void)
{
	struct iommuctl *c;

	if (iommuctl_connect(daemon_under_test.socket_path, &c) < 0)
		die("connect", strerror(errno));
	return c;
}

static int raw_socket(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", daemon_under_test.socket_path);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
		return fd;
	if (fd >= 0)
		(void)close(fd);
	return -1;
}

/* ---- the victim ----------------------------------------------------------------------- */

static int compare_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* A well-behaved tenant connects before any attack, as a running client would have. */
struct victim {
	pid_t pid;
	int go;	    /* a byte starts the measurement */
	int result; /* p50 and p99 (ns) */
};

/* Connects, says so, waits for the go, then calls ListDevices one after another for
 * opt.seconds and writes p50 and p99 (ns) to out. */
static void victim_run(int go, int out)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	uint64_t *samples = malloc(MAX_SAMPLES * sizeof(*samples)), result[2], end;
	Iommud__V1__Response *resp;
	struct iommuctl *c;
	size_t n = 0;
	char byte;

	become(VICTIM_UID);
	c = connect_or_die();
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	if (write(out, "c", 1) != 1 || read(go, &byte, 1) != 1)
		die("victim", "lost its parent");
	end = now_ns() + (uint64_t)(opt.seconds * 1e9);
	while (samples && n < MAX_SAMPLES && now_ns() < end) {
		uint64_t start = now_ns();

		if (iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL) < 0)
			die("ListDevices", iommuctl_last_error(c));
		samples[n++] = now_ns() - start;
		iommuctl_response_free(resp);
	}
	if (!n)
		die("victim", "no sample");
	qsort(samples, n, sizeof(*samples), compare_u64);
	result[0] = samples[n / 2];
	result[1] = samples[n * 99 / 100];
	if (write(out, result, sizeof(result)) != sizeof(result))
		die("victim", "cannot report");
	_exit(0);
}

static void victim_start(struct victim *v)
{
	int go[2], result[2];
	char byte;

	if (pipe(go) < 0 || pipe(result) < 0 || (v->pid = fork()) < 0)
		die("fork", strerror(errno));
	if (v->pid == 0) {
		(void)close(go[1]);
		(void)close(result[0]);
		victim_run(go[0], result[1]);
	}
	(void)close(go[0]);
	(void)close(result[1]);
	v->go = go[1];
	v->result = result[0];
	if (read(v->result, &byte, 1) != 1)
		die("victim", "could not connect");
}

/* p50 and p99 of the victim's run, started now. */
static void victim_measure(struct victim *v, uint64_t result[2])
{
	if (write(v->go, "g", 1) != 1 ||
	    read(v->result, result, 2 * sizeof(uint64_t)) != 2 * sizeof(uint64_t))
		die("victim", "no result");
	(void)close(v->go);
	(void)close(v->result);
	(void)waitpid(v->pid, NULL, 0);
}

/* ---- the attacks ---------------------------------------------------------------------- */

/* A request an attacker sends, with its descriptors. */
struct pipelined {
	uint8_t *packet;
	size_t len;
	const int *fds;
	size_t n_fds;
};

static void pipelined_pack(struct pipelined *p, const Iommud__V1__Request *req, const int *fds,
			   size_t n_fds)
{
	p->len = iommud__v1__request__get_packed_size(req);
	p->packet = malloc(p->len);
	if (!p->packet)
		die("attack", "out of memory");
	iommud__v1__request__pack(req, p->packet);
	p->fds = fds;
	p->n_fds = n_fds;
}

/* Sends connection i's next request of the cycle; false when the daemon closed it. */
static bool send_next(struct pollfd *pfd, const struct pipelined *cycle, size_t n_cycle,
		      size_t *next)
{
	const struct pipelined *p = &cycle[*next % n_cycle];

	(*next)++;
	return wire_send(pfd->fd, p->packet, p->len, p->fds, p->n_fds, WIRE_BLOCK) >= 0;
}

/* Keeps depth requests in flight on each open connection, each sending the requests of cycle
 * in turn, dropping those the daemon closes. */
static void keep_pipelines_full(struct pollfd *pfds, size_t n, const struct pipelined *cycle,
				size_t n_cycle, unsigned depth)
{
	uint8_t *in = malloc(IOMMUD_MAX_MESSAGE);
	size_t *next = calloc(n, sizeof(*next));
	struct wire_packet packet;

	if (!in || !next)
		die("attack", "out of memory");
	for (size_t i = 0; i < n; i++)
		for (unsigned d = 0; pfds[i].fd >= 0 && d < depth; d++)
			if (!send_next(&pfds[i], cycle, n_cycle, &next[i]))
				pfds[i].fd = -1;
	for (;;) {
		if (poll(pfds, n, -1) < 0)
			continue;
		for (size_t i = 0; i < n; i++) {
			if (!pfds[i].revents)
				continue;
			if (wire_recv(pfds[i].fd, in, IOMMUD_MAX_MESSAGE, WIRE_NONBLOCK, &packet) <
				    0 ||
			    !send_next(&pfds[i], cycle, n_cycle, &next[i])) {
				(void)close(pfds[i].fd);
				pfds[i].fd = -1;
				continue;
			}
			wire_close_fds(packet.fds, packet.n_fds);
		}
	}
}

static void attack_reads(void)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	static struct pollfd pfds[READER_CONNS];
	struct pipelined read;

	become(READER_UID);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	pipelined_pack(&read, &req, NULL, 0);
	for (size_t i = 0; i < READER_CONNS; i++)
		pfds[i] = (struct pollfd){.fd = raw_socket(), .events = POLLIN};
	keep_pipelines_full(pfds, READER_CONNS, &read, 1, READER_DEPTH);
}

static void attack_connections(unsigned index)
{
	int held = 0;

	/* A spinning process: its CPU time is the kernel's to share, not the daemon's. */
	(void)setpriority(PRIO_PROCESS, 0, 19);
	become(FLOODER_UID + index);
	for (;;) {
		int fd = raw_socket();

		if (fd >= 0 && held < FLOOD_HELD)
			held++;
		else if (fd >= 0)
			(void)close(fd);
	}
}

/* The mapper's domain and memfd of --map-mib MiB, and an entry mapping all of it at an IOVA
 * off every large page boundary (so 4 KiB leaves). */
static void mapper_setup(Iommud__V1__MapEntry *entry, int *ret_mem)
{
	uint64_t bytes = (uint64_t)opt.map_mib << 20;
	struct iommuctl *c;
	uint32_t domain;
	int mem;

	become(MAPPER_UID);
	/* Kept open, so that the tenant's anonymous session (its domain) stays. */
	c = connect_or_die();
	if (iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain) < 0)
		die("AllocDomain", iommuctl_last_error(c));
	if ((mem = iommuctl_memfd("soak", bytes)) < 0)
		die("memfd", strerror(-mem));
	entry->domain_id = domain;
	entry->length = bytes;
	entry->prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	entry->fixed_iova = true;
	entry->iova = (1ull << 32) + 4096;
	*ret_mem = mem;
}

/* MapBatch of the whole memfd, then the same range again, which fails: all of it is unmapped
 * again. */
static void attack_map(void)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapEntry *entries[2] = {&entry, &entry};
	static struct pollfd pfds[MAPPER_CONNS];
	struct pipelined map;
	int mem;

	mapper_setup(&entry, &mem);
	batch.entries = entries;
	batch.n_entries = 2;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	pipelined_pack(&map, &req, &mem, 1);
	/* Connections of one tenant share its anonymous session, so its domain. */
	for (size_t i = 0; i < MAPPER_CONNS; i++)
		pfds[i] = (struct pollfd){.fd = raw_socket(), .events = POLLIN};
	keep_pipelines_full(pfds, MAPPER_CONNS, &map, 1, MAPPER_DEPTH);
}

/* Map of the whole memfd, then UnmapAll, again and again on one connection (the tenant's
 * requests run in order, so each UnmapAll removes the Map before it). */
static void attack_unmap(void)
{
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	struct pollfd pfd = {.events = POLLIN};
	struct pipelined cycle[2];
	int mem;

	mapper_setup(&entry, &mem);
	map.entry = &entry;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	pipelined_pack(&cycle[0], &req, &mem, 1);
	unmap_all.domain_id = entry.domain_id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL;
	req.unmap_all = &unmap_all;
	pipelined_pack(&cycle[1], &req, NULL, 0);
	pfd.fd = raw_socket();
	keep_pipelines_full(&pfd, 1, cycle, 2, MAPPER_DEPTH);
}

enum attack { ATTACK_READS, ATTACK_CONNECTIONS, ATTACK_MAP, ATTACK_ALL, ATTACK_UNMAP };

/* "all" is the first three at once; "unmap", after it, was added later and stays apart so
 * that the figures of the others compare with those measured before it. */
static const char *const attack_names[] = {"reads", "connections", "map", "all", "unmap"};

static size_t start_attack(enum attack which, pid_t *pids)
{
	size_t n = 0;

	for (unsigned kind = ATTACK_READS; kind <= ATTACK_UNMAP; kind++) {
		unsigned copies = kind == ATTACK_CONNECTIONS ? FLOODERS : 1;

		if (kind == ATTACK_ALL ||
		    (which != kind && (which != ATTACK_ALL || kind > ATTACK_MAP)))
			continue;
		for (unsigned i = 0; i < copies; i++) {
			pid_t pid = fork();

			if (pid < 0)
				die("fork", strerror(errno));
			if (pid == 0) {
				if (kind == ATTACK_READS)
					attack_reads();
				else if (kind == ATTACK_CONNECTIONS)
					attack_connections(i);
				else if (kind == ATTACK_MAP)
					attack_map();
				else
					attack_unmap();
				_exit(0);
			}
			pids[n++] = pid;
		}
	}
	return n;
}

static void stop_attack(const pid_t *pids, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		(void)kill(pids[i], SIGKILL);
		(void)waitpid(pids[i], NULL, 0);
	}
}

/* ---- the daemon's side ---------------------------------------------------------------- */

/* The daemon's CPU time so far, in clock ticks (user and system). */
static uint64_t daemon_cpu_ticks(void)
{
	char path[64];
	unsigned long long user = 0, sys = 0;
	FILE *stat;

	(void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)daemon_under_test.pid);
	stat = fopen(path, "re");
	if (!stat ||
	    fscanf(stat, "%*d (%*[^)]) %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &user, &sys) != 2)
		die("reading the daemon's CPU time", path);
	(void)fclose(stat);
	return user + sys;
}

/* The emulated backend's own map and unmap time in the daemon, per GiB: what the hostile
 * tenant's mappings cost it, whatever the slices they were made or taken back in. */
static void print_in_process(const Iommud__V1__GetStatsReply *s)
{
	uint64_t ns[2] = {0}, bytes[2] = {0};

	for (size_t i = 0; i < s->n_map_latency; i++) {
		const Iommud__V1__MapLatency *l = s->map_latency[i];
		unsigned unmap = l->op == IOMMUD__V1__MAP_OP__MAP_OP_UNMAP;

		if (l->layer != IOMMUD__V1__MAP_LAYER__MAP_LAYER_IN_PROCESS || !l->latency)
			continue;
		ns[unmap] += l->latency->sum_ns;
		bytes[unmap] += l->bytes;
	}
	for (unsigned unmap = 0; unmap < 2; unmap++)
		if (bytes[unmap])
			(void)printf("in-process %s: %.2f ms per GiB over %.1f GiB\n",
				     unmap ? "unmap" : "map",
				     (double)ns[unmap] / 1e6 / ((double)bytes[unmap] / (1 << 30)),
				     (double)bytes[unmap] / (1 << 30));
}

static void print_daemon_counters(void)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	Iommud__V1__GetStatsReply *s;
	struct iommuctl *c = connect_or_die();

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	if (iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL) < 0)
		die("GetStats", iommuctl_last_error(c));
	s = resp->get_stats;
	(void)printf("\nrefused or closed connections:");
	for (size_t i = 0; i < s->n_refused_connections; i++)
		(void)printf(" %s %llu", s->refused_connections[i]->reason,
			     (unsigned long long)s->refused_connections[i]->connections);
	(void)printf("\ntimes the reader waited for a token (reader-rate): %llu\n",
		     (unsigned long long)s->rate_limited);
	/* From receipt to reply: a costly request's slices and the others' turns between. */
	for (size_t i = 0; i < s->n_methods; i++) {
		const Iommud__V1__MethodStats *m = s->methods[i];

		if (m->latency && m->latency->count &&
		    (strcmp(m->method, "map_batch") == 0 || strcmp(m->method, "get_stats") == 0 ||
		     strcmp(m->method, "map") == 0 || strcmp(m->method, "unmap_all") == 0))
			(void)printf(
				"hostile %s in the daemon: %.0f us on average over %llu calls%s\n",
				m->method, (double)m->latency->sum_ns / m->latency->count / 1e3,
				(unsigned long long)m->latency->count,
				strcmp(m->method, "map_batch") == 0   ? " (each maps and unmaps "
									"--map-mib)"
				: strcmp(m->method, "unmap_all") == 0 ? " (each unmaps --map-mib)"
				: strcmp(m->method, "map") == 0	      ? " (each maps --map-mib)"
								      : "");
	}
	print_in_process(s);
	iommuctl_response_free(resp);
	iommuctl_close(c);
}

static void parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"seconds", required_argument, NULL, 's'},
		{"map-mib", required_argument, NULL, 'm'},
		{"attack", required_argument, NULL, 'a'},
		{"quick", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int o;

	while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (o == 's')
			opt.seconds = atof(optarg);
		else if (o == 'm')
			opt.map_mib = (unsigned)atoi(optarg);
		else if (o == 'a')
			opt.attack = optarg;
		else if (o == 'q')
			opt = (typeof(opt)){.seconds = 0.3, .map_mib = 4};
		else {
			(void)printf("Usage: iommud-soak [--seconds S (3)] [--map-mib N (64)] "
				     "[--attack reads|connections|map|all|unmap] [--quick]\nRun as "
				     "root: it "
				     "starts its own daemon and setuid children.\n");
			exit(o == 'h' ? 0 : 2);
		}
	}
	if (opt.seconds <= 0 || !opt.map_mib)
		die("options", "--seconds and --map-mib must be positive");
}

int main(int argc, char **argv)
{
	char config[512];
	struct rlimit files = {DAEMON_FILES, DAEMON_FILES};
	pid_t pids[FLOODERS + 3];
	uint64_t idle[2], under[2], ticks;
	struct victim victim;

	parse_options(argc, argv);
	(void)signal(SIGPIPE, SIG_IGN);
	(void)snprintf(config, sizeof(config),
		       "max-connections = %d\n[uid 0]\naccess = write\n[uid %d]\naccess = "
		       "write\n[uid %d]\naccess = write\ndevices = *\n",
		       MAX_CONNECTIONS, VICTIM_UID, MAPPER_UID);
	fixture_start(&daemon_under_test, config, "emu0");
	if (prlimit(daemon_under_test.pid, RLIMIT_NOFILE, &files, NULL) < 0)
		die("prlimit", strerror(errno));
	(void)printf("%-12s %12s %12s %12s %12s %10s %10s\n", "attack", "idle p50 us",
		     "idle p99 us", "under p50 us", "under p99 us", "p99 ratio", "daemon cpu");
	for (enum attack a = ATTACK_READS; a <= ATTACK_UNMAP; a++) {
		struct timespec warm = {0, 300 * 1000 * 1000};
		size_t n;

		if (opt.attack && strcmp(opt.attack, attack_names[a]) != 0)
			continue;
		/* Idle right before each attack, so that the machine's own drift (other load)
		 * weighs on both sides alike. */
		victim_start(&victim);
		victim_measure(&victim, idle);
		victim_start(&victim);
		n = start_attack(a, pids);
		nanosleep(&warm, NULL);
		ticks = daemon_cpu_ticks();
		victim_measure(&victim, under);
		ticks = daemon_cpu_ticks() - ticks;
		stop_attack(pids, n);
		(void)printf("%-12s %12.1f %12.1f %12.1f %12.1f %10.2f %9.0f%%\n", attack_names[a],
			     idle[0] / 1e3, idle[1] / 1e3, under[0] / 1e3, under[1] / 1e3,
			     (double)under[1] / (double)idle[1],
			     100.0 * (double)ticks / (double)sysconf(_SC_CLK_TCK) / opt.seconds);
		(void)fflush(stdout);
		/* The daemon lets the killed attackers' connections go before the next. */
		nanosleep(&warm, NULL);
	}
	print_daemon_counters();
	fixture_stop(&daemon_under_test);
	return 0;
}
