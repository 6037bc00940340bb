/* SPDX-License-Identifier: MIT */
/*
 * Hostile local users against the real daemon: one tenant pipelining on many connections must
 * not go before another tenant's request, connections are capped per uid and per tenant with
 * slots kept for configured writers (root always gets in), silent connections are closed,
 * readers are rate limited by waiting, and at the open-file limit the daemon neither spins nor
 * floods its log; a costly request (a map, an unmap, or taking back one whose client closed) is
 * handled in slices, so that another tenant's request is answered while it is in progress, and
 * stays all or nothing. Other uids are setuid children; other tenants of one uid are cgroups the
 * test creates in the cgroup v2 hierarchy and removes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>
#include <iommud_wire.h>

#include "daemon_fixture.h"
#include "harness.h"

/* Users no configuration names, and one the configuration makes a writer. */
#define WRITER_UID   61001
#define READER_UID_A 61002
#define READER_UID_B 61003

#define ROOT_WRITES "[uid 0]\naccess = write\n"
/* The cases that watch how root's requests interleave with another tenant's run the daemon on
 * one event-loop thread: fair queuing orders the tenants one loop serves, and on two threads
 * root's and the other tenant's requests run side by side instead, so there is no order between
 * them to watch (test_threads covers the threads). */
#define ONE_LOOP "threads = 1\n"
#define WRITER                                                                                     \
	"[uid 61001]\n"                                                                            \
	"access = write\n"

static Iommud__V1__Request *list_devices_request(uint64_t id)
{
	static Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	static Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.id = id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	return &req;
}

static Iommud__V1__GetStatsReply *get_stats(int fd, Iommud__V1__Response **ret_resp)
{
	raw_send_get_stats(fd);
	return raw_stats_reply(fd, ret_resp);
}

static uint64_t method_calls(const Iommud__V1__GetStatsReply *stats, const char *method)
{
	for (size_t i = 0; i < stats->n_methods; i++)
		if (strcmp(stats->methods[i]->method, method) == 0)
			return stats->methods[i]->calls;
	return 0;
}

static uint64_t refused(const Iommud__V1__GetStatsReply *stats, const char *reason)
{
	for (size_t i = 0; i < stats->n_refused_connections; i++)
		if (strcmp(stats->refused_connections[i]->reason, reason) == 0)
			return stats->refused_connections[i]->connections;
	return 0;
}

/* Root's view of the daemon's counters, through a connection of its own. */
static void root_stats(const struct daemon_fixture *f, uint64_t *list_devices, const char *reason,
		       uint64_t *refusals)
{
	Iommud__V1__Response *resp;
	int fd = raw_connect(f);
	Iommud__V1__GetStatsReply *stats = get_stats(fd, &resp);

	if (list_devices)
		*list_devices = method_calls(stats, "list_devices");
	if (reason)
		*refusals = refused(stats, reason);
	iommud__v1__response__free_unpacked(resp, NULL);
	(void)close(fd);
}

static void become(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setgid((gid_t)uid) < 0 || setuid(uid) < 0) {
		perror("setuid");
		_exit(99);
	}
}

/* Sends a ListDevices and says how the daemon took the connection: "ok", or the message of
 * the response of id 0 it refuses a connection with. A refused connection may be closed
 * before the request goes, so a failed send is no error: the refusal is still to be read. */
static void try_connection(int fd, char *outcome, size_t size)
{
	Iommud__V1__Request *req = list_devices_request(7);
	size_t len = iommud__v1__request__get_packed_size(req);
	uint8_t buf[64];
	Iommud__V1__Response *resp;

	iommud__v1__request__pack(req, buf);
	(void)wire_send(fd, buf, len, NULL, 0, WIRE_BLOCK);
	resp = raw_recv(fd, NULL);
	if (resp->id == 7 && resp->status->code == IOMMUD__V1__CODE__CODE_OK)
		(void)snprintf(outcome, size, "ok");
	else
		(void)snprintf(outcome, size, "%s (code %d)", resp->status->message,
			       (int)resp->status->code);
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* ---- cgroups -------------------------------------------------------------------------- */

/* A cgroup of the test's own under the cgroup v2 hierarchy; its path as the daemon sees it is
 * what follows the mount point. */
struct test_cgroup {
	char path[256];
};

static bool cgroup2_mount(char *buf, size_t size)
{
	char dev[64], dir[200], type[32];
	FILE *mounts = fopen("/proc/mounts", "re");
	bool found = false;

	CHECK(mounts != NULL);
	while (!found && fscanf(mounts, "%63s %199s %31s %*[^\n]", dev, dir, type) == 3)
		if (strcmp(type, "cgroup2") == 0) {
			(void)snprintf(buf, size, "%s", dir);
			found = true;
		}
	(void)fclose(mounts);
	return found;
}

static void cgroup_create(struct test_cgroup *cg, const char *name)
{
	char mount[200];

	if (!cgroup2_mount(mount, sizeof(mount)))
		SKIP("no cgroup v2 hierarchy is mounted");
	(void)snprintf(cg->path, sizeof(cg->path), "%s/iommud-fairness-%d-%s", mount, (int)getpid(),
		       name);
	if (mkdir(cg->path, 0755) < 0)
		SKIP("cannot create a cgroup at %s: %s", cg->path, strerror(errno));
}

/* Moves the calling process into the cgroup. */
static void cgroup_enter(const struct test_cgroup *cg)
{
	char procs[300];
	int fd;

	(void)snprintf(procs, sizeof(procs), "%s/cgroup.procs", cg->path);
	fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "0", 1) != 1) {
		perror(procs);
		_exit(98);
	}
	(void)close(fd);
}

/* Removes the cgroup once every process of it has gone. */
static void cgroup_remove(const struct test_cgroup *cg)
{
	CHECK_EQ(rmdir(cg->path), 0);
}

/* ---- processes holding connections ---------------------------------------------------- */

/* A process of another uid (and cgroup) that opens connections one after another, says how
 * each was taken, and keeps them open until it is stopped. */
struct holder {
	pid_t pid;
	int stop;      /* closing it stops the holder */
	FILE *outcome; /* one line per connection */
};

static void holder_run(const struct daemon_fixture *f, uid_t uid, const struct test_cgroup *cg,
		       unsigned n, int out, int stop)
{
	char outcome[600], byte;

	/* Earlier holders' pipes, inherited: holding them would keep those holders running. */
	for (int fd = 3; fd < 1024; fd++)
		if (fd != out && fd != stop)
			(void)close(fd);
	if (cg)
		cgroup_enter(cg);
	become(uid);
	for (unsigned i = 0; i < n; i++) {
		try_connection(raw_connect(f), outcome, sizeof(outcome));
		(void)dprintf(out, "%s\n", outcome);
	}
	(void)close(out);
	while (read(stop, &byte, 1) > 0)
		;
	_exit(0);
}

static void holder_start(struct holder *h, const struct daemon_fixture *f, uid_t uid,
			 const struct test_cgroup *cg, unsigned n)
{
	int out[2], stop[2];

	CHECK(pipe2(out, O_CLOEXEC) == 0 && pipe2(stop, O_CLOEXEC) == 0);
	h->pid = fork();
	CHECK(h->pid >= 0);
	if (h->pid == 0) {
		(void)close(out[0]);
		(void)close(stop[1]);
		holder_run(f, uid, cg, n, out[1], stop[0]);
	}
	(void)close(out[1]);
	(void)close(stop[0]);
	h->stop = stop[1];
	h->outcome = fdopen(out[0], "r");
	CHECK(h->outcome != NULL);
}

/* Reads the outcome of the holder's next connection: whether it was taken, and when not,
 * that the refusal names the limit's key. */
static void holder_expect(struct holder *h, const char *refusal_key)
{
	char line[600];

	CHECK(fgets(line, sizeof(line), h->outcome) != NULL);
	line[strcspn(line, "\n")] = '\0';
	if (!refusal_key) {
		if (strcmp(line, "ok") != 0)
			(void)fprintf(stderr, "expected a connection, got: %s\n", line);
		CHECK(strcmp(line, "ok") == 0);
		return;
	}
	(void)fprintf(stderr, "refused as expected: %s\n", line);
	CHECK(strstr(line, refusal_key) != NULL);
	CHECK(strstr(line, "code 8") != NULL); /* RESOURCE_EXHAUSTED */
}

static void holder_stop(struct holder *h)
{
	int status;

	(void)close(h->stop);
	(void)fclose(h->outcome);
	CHECK(waitpid(h->pid, &status, 0) == h->pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- item: one tenant's pipeline does not go before another tenant's request ----------- */

#define HOSTILE_CONNS 8
#define HOSTILE_DEPTH 25

/* The hostile tenant: connects (each connection answered once, so the daemon holds them all),
 * then on the signal pipelines its requests on every connection at once. */
static void hostile_run(const struct daemon_fixture *f, int ready, int go)
{
	int fds[HOSTILE_CONNS];
	char byte;

	become(WRITER_UID);
	for (int i = 0; i < HOSTILE_CONNS; i++) {
		fds[i] = raw_connect(f);
		raw_send_request(fds[i], list_devices_request(1), NULL, 0);
		iommud__v1__response__free_unpacked(raw_recv(fds[i], NULL), NULL);
	}
	CHECK(write(ready, "c", 1) == 1);
	CHECK(read(go, &byte, 1) == 1);
	for (int d = 0; d < HOSTILE_DEPTH; d++)
		for (int i = 0; i < HOSTILE_CONNS; i++)
			raw_send_request(fds[i], list_devices_request(2 + (uint64_t)d), NULL, 0);
	CHECK(write(ready, "s", 1) == 1);
	while (read(go, &byte, 1) > 0)
		;
	_exit(0);
}

/* The daemon is stopped while the hostile tenant queues HOSTILE_CONNS * HOSTILE_DEPTH
 * requests and then root one: when it runs again, all are waiting, the hostile tenant's
 * first. Served per packet and per connection, every hostile request went first; served by
 * tenants in turns, root's comes after at most the one hostile request of the first turn. */
TEST(tenant_turns)
{
	struct daemon_fixture f;
	Iommud__V1__Response *resp;
	uint64_t before, hostile_first;
	int ready[2], go[2], root_fd, status;
	pid_t hostile;
	char byte;

	fixture_start(&f, ONE_LOOP ROOT_WRITES WRITER, "emu0");
	root_fd = raw_connect(&f);
	before = method_calls(get_stats(root_fd, &resp), "list_devices");
	iommud__v1__response__free_unpacked(resp, NULL);
	CHECK(pipe2(ready, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0);
	hostile = fork();
	CHECK(hostile >= 0);
	if (hostile == 0) {
		(void)close(go[1]);
		hostile_run(&f, ready[1], go[0]);
	}
	CHECK(read(ready[0], &byte, 1) == 1 && byte == 'c');
	before += HOSTILE_CONNS; /* the connecting calls */
	CHECK_EQ(kill(f.pid, SIGSTOP), 0);
	CHECK(waitpid(f.pid, &status, WUNTRACED) == f.pid && WIFSTOPPED(status));
	CHECK(write(go[1], "g", 1) == 1);
	CHECK(read(ready[0], &byte, 1) == 1 && byte == 's');
	raw_send_get_stats(root_fd);
	CHECK_EQ(kill(f.pid, SIGCONT), 0);
	hostile_first = method_calls(raw_stats_reply(root_fd, &resp), "list_devices") - before;
	(void)fprintf(stderr, "hostile requests handled before root's: %llu of %d\n",
		      (unsigned long long)hostile_first, HOSTILE_CONNS * HOSTILE_DEPTH);
	CHECK(hostile_first <= 1);
	iommud__v1__response__free_unpacked(resp, NULL);
	(void)close(go[1]);
	CHECK(waitpid(hostile, &status, 0) == hostile && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
	(void)close(go[0]);
	(void)close(ready[0]);
	(void)close(ready[1]);
	(void)close(root_fd);
	fixture_stop(&f);
}

/* ---- a costly request in slices --------------------------------------------------------- */

#define COSTLY_BYTES   (1ull << 30) /* of a sparse memfd, at 4 KiB leaves: 262144 of them */
#define COSTLY_IOVA    ((4ull << 30) + 4096) /* off every large page boundary */
#define COSTLY_ENTRIES 16		     /* all within a tenant's default max-pinned, 16 GiB */
#define MAPPER                                                                                     \
	"[uid 61001]\n"                                                                            \
	"access = write\n"                                                                         \
	"devices = emu0\n"
/* An IOMMU of 4 KiB leaves alone: a mapping at a 1 GiB IOVA of memory at a 1 GiB address is
 * still made of 4 KiB leaves, so of parts of 64 of them. */
#define SMALL_LEAVES                                                                               \
	"[iommu]\n"                                                                                \
	"devices = emu0\n"                                                                         \
	"[device emu0]\n"                                                                          \
	"page-sizes = 4K\n"

enum costly_kind {
	COSTLY_FAILING, /* a batch of one range twice: the second fails, the first is taken back */
	COSTLY_CLOSED,	/* a batch at COSTLY_ENTRIES IOVAs whose connection closes mid-way */
	COSTLY_UNMAP,	/* those mapped first, then one request removes them all */
	COSTLY_LARGE,	/* one entry as long as all of them, of a memfd as long */
};

struct costly {
	enum costly_kind kind;
	uint64_t iova;	/* of the first entry */
	bool unmap_all; /* COSTLY_UNMAP: UnmapAll, else Unmap of the entries' range */
	pid_t pid;
	int ready[2], go[2];
};

static void costly_batch(struct costly *h, uint32_t domain, Iommud__V1__MapEntry *spread,
			 Iommud__V1__MapEntry **entries, Iommud__V1__MapBatchRequest *batch,
			 Iommud__V1__Request *req)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;

	entry.domain_id = domain;
	entry.length = COSTLY_BYTES;
	entry.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	entry.fixed_iova = true;
	entry.iova = h->iova;
	/* Failing: the same range twice. Else at as many IOVAs as make it long enough to be
	 * caught in progress. */
	if (h->kind == COSTLY_LARGE)
		entry.length *= COSTLY_ENTRIES;
	for (size_t i = 0; i < COSTLY_ENTRIES; i++) {
		spread[i] = entry;
		spread[i].iova += h->kind == COSTLY_FAILING ? 0 : i * COSTLY_BYTES;
		entries[i] = &spread[i];
	}
	batch->entries = entries;
	batch->n_entries = h->kind == COSTLY_FAILING ? 2
			   : h->kind == COSTLY_LARGE ? 1
						     : COSTLY_ENTRIES;
	req->id = 7;
	req->method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req->map_batch = batch;
}

/* The request removing every entry costly_batch mapped. */
static void costly_unmap(const struct costly *h, uint32_t domain, Iommud__V1__UnmapRequest *unmap,
			 Iommud__V1__UnmapAllRequest *unmap_all, Iommud__V1__Request *req)
{
	req->id = 8;
	if (h->unmap_all) {
		unmap_all->domain_id = domain;
		req->method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL;
		req->unmap_all = unmap_all;
		return;
	}
	unmap->domain_id = domain;
	unmap->iova = h->iova;
	unmap->length = COSTLY_ENTRIES * COSTLY_BYTES;
	req->method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP;
	req->unmap = unmap;
}

/* The reply to the costly request, said on the pipe: 'r', then its code, failed index, and
 * message, or for a removal the bytes and mappings removed. */
static void costly_report(const struct costly *h, int fd, int ready)
{
	Iommud__V1__Response *resp = raw_recv(fd, NULL);
	char report[1100];
	int n;

	if (h->kind == COSTLY_UNMAP && resp->status->code == IOMMUD__V1__CODE__CODE_OK)
		n = snprintf(report, sizeof(report), "r%d %llu %u", (int)resp->status->code,
			     h->unmap_all ? (unsigned long long)resp->unmap_all->unmapped_bytes
					  : (unsigned long long)resp->unmap->unmapped_bytes,
			     h->unmap_all ? resp->unmap_all->unmapped_count
					  : resp->unmap->unmapped_count);
	else
		n = snprintf(report, sizeof(report), "r%d %d %s", (int)resp->status->code,
			     resp->status->failed_index, resp->status->message);
	CHECK(write(ready, report, (size_t)n + 1) == n + 1);
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* The batch's connection closes on 'c' while the daemon is stopped; says so ('x'), and then what
 * the tenant's other connection's GetStats says it has mapped. */
static void costly_close(struct iommuctl *c, int fd, int ready, int go)
{
	Iommud__V1__Quota quota = IOMMUD__V1__QUOTA__INIT;
	char byte, report[32];
	int n;

	CHECK(read(go, &byte, 1) == 1 && byte == 'c');
	/* The daemon is stopped: a reply not here yet is one it has not sent. */
	CHECK(poll(&(struct pollfd){.fd = fd, .events = POLLIN}, 1, 0) == 0);
	(void)close(fd);
	CHECK(write(ready, "x", 1) == 1);
	/* The tenant's next request runs only once the batch is done or gone. */
	fixture_stats(c, &quota, NULL);
	n = snprintf(report, sizeof(report), "%llu", (unsigned long long)quota.pinned_bytes);
	CHECK(write(ready, report, (size_t)n + 1) == n + 1);
}

/* The hostile tenant: a domain on one connection, kept open so its session stays, and the
 * costly request on another, sent on 'g' (a removal's entries are mapped before). Exits when
 * the pipe closes. */
static void costly_run(const struct daemon_fixture *f, struct costly *h, int ready, int go)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__UnmapRequest unmap = IOMMUD__V1__UNMAP_REQUEST__INIT;
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT, removal = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__MapEntry spread[COSTLY_ENTRIES], *entries[COSTLY_ENTRIES];
	Iommud__V1__Response *resp;
	struct iommuctl *c;
	char byte;
	int mem, fd;
	uint32_t domain;

	become(WRITER_UID);
	CHECK(iommuctl_connect(f->socket_path, &c) == 0);
	CHECK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain) == 0);
	CHECK((mem = iommuctl_memfd("costly", h->kind == COSTLY_LARGE
						      ? COSTLY_ENTRIES * COSTLY_BYTES
						      : COSTLY_BYTES)) >= 0);
	fd = raw_connect(f);
	costly_batch(h, domain, spread, entries, &batch, &req);
	if (h->kind == COSTLY_UNMAP) {
		raw_send_request(fd, &req, &mem, 1);
		resp = raw_recv(fd, NULL);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		iommud__v1__response__free_unpacked(resp, NULL);
		costly_unmap(h, domain, &unmap, &unmap_all, &removal);
	}
	CHECK(write(ready, "c", 1) == 1);
	CHECK(read(go, &byte, 1) == 1 && byte == 'g');
	if (h->kind == COSTLY_UNMAP)
		raw_send_request(fd, &removal, NULL, 0);
	else
		raw_send_request(fd, &req, &mem, 1);
	CHECK(write(ready, "s", 1) == 1);
	if (h->kind == COSTLY_CLOSED)
		costly_close(c, fd, ready, go);
	else
		costly_report(h, fd, ready);
	while (read(go, &byte, 1) > 0)
		;
	iommuctl_close(c);
	_exit(0);
}

/* Starts the hostile tenant and has it queue its request while the daemon is stopped; root's
 * GetStats is queued after it (unless root_fd is -1), so that both wait when the daemon runs
 * again. */
static void costly_start(struct costly *h, const struct daemon_fixture *f, int root_fd)
{
	int status;
	char byte;

	CHECK(pipe2(h->ready, O_CLOEXEC) == 0 && pipe2(h->go, O_CLOEXEC) == 0);
	h->pid = fork();
	CHECK(h->pid >= 0);
	if (h->pid == 0) {
		(void)close(h->go[1]);
		costly_run(f, h, h->ready[1], h->go[0]);
	}
	CHECK(read(h->ready[0], &byte, 1) == 1 && byte == 'c');
	CHECK_EQ(kill(f->pid, SIGSTOP), 0);
	CHECK(waitpid(f->pid, &status, WUNTRACED) == f->pid && WIFSTOPPED(status));
	CHECK(write(h->go[1], "g", 1) == 1);
	CHECK(read(h->ready[0], &byte, 1) == 1 && byte == 's');
	if (root_fd >= 0)
		raw_send_get_stats(root_fd);
	CHECK_EQ(kill(f->pid, SIGCONT), 0);
}

static void costly_stop(struct costly *h)
{
	int status;

	(void)close(h->go[1]);
	CHECK(waitpid(h->pid, &status, 0) == h->pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
	(void)close(h->go[0]);
	(void)close(h->ready[0]);
	(void)close(h->ready[1]);
}

/* The memory all tenants have mapped, as root's GetStats (already sent) says. */
static uint64_t pinned_now(int root_fd)
{
	Iommud__V1__Response *resp;
	uint64_t pinned = raw_stats_reply(root_fd, &resp)->ceilings->pinned_bytes;

	iommud__v1__response__free_unpacked(resp, NULL);
	return pinned;
}

/* Root asks for GetStats again and again until one shows what seen() looks for, or the hostile
 * tenant says something first (its reply came, or its last report): whether root saw it. Root
 * asks at real-time priority, so that it asks again as soon as it is answered, whatever else
 * the machine runs: a costly request, however large the steps its slices allow, then does at
 * most a few slices' work between two of root's requests, and is seen in progress. */
static bool root_sees(int root_fd, const struct costly *h, bool (*seen)(uint64_t pinned))
{
	struct pollfd reply = {.fd = h->ready[0], .events = POLLIN};
	struct sched_param realtime = {.sched_priority = 1}, normal = {.sched_priority = 0};
	bool found;

	CHECK_OK(sched_setscheduler(0, SCHED_FIFO, &realtime));
	for (;;) {
		found = seen(pinned_now(root_fd));
		if (found || poll(&reply, 1, 0) == 1)
			break;
		raw_send_get_stats(root_fd);
	}
	CHECK_OK(sched_setscheduler(0, SCHED_OTHER, &normal));
	return found;
}

/* The hostile batch's memory is mapped, or being mapped: root was answered while the batch was
 * in progress. Served one request at a time, root's request comes before or after the whole
 * batch, which maps nothing in the end, so never sees it in progress. */
static bool batch_in_progress(uint64_t pinned)
{
	return pinned > 0;
}

/* What root saw when batch_well_on held: a batch only adds until it is taken back. */
static uint64_t well_on_pinned;

/* Three quarters of the entries are mapped. Taking a whole mapping back frees its page tables
 * a table at a time, far faster than it was mapped: three entries went in about seven slices,
 * while root's GetStats is charged as much as those seven together, so root's turn came only
 * after all of it. Twelve or more take several of root's turns. */
static bool batch_well_on(uint64_t pinned)
{
	well_on_pinned = pinned;
	return pinned >= COSTLY_ENTRIES * 3 / 4 * COSTLY_BYTES;
}

/* Read while the batch's mappings were being taken back: a figure between whole mappings (one
 * given back part by part), or some but not all of what root had seen mapped gone (steps that
 * take whole mappings). A take back in one go shows neither, only all of it or nothing. */
static bool taking_back(uint64_t pinned)
{
	return pinned % COSTLY_BYTES != 0 || (pinned > 0 && pinned < well_on_pinned);
}

/* A batch of a 1 GiB entry at 4 KiB leaves whose last entry fails: root's request, queued
 * behind it, is answered while the batch is in progress, and the batch keeps its all-or-nothing
 * reply: the failure of its last entry, nothing left mapped. */
TEST(costly_request_in_slices)
{
	struct daemon_fixture f;
	struct costly h = {.kind = COSTLY_FAILING, .iova = COSTLY_IOVA};
	char report[1100], expected[256];
	int root_fd, code, index, n;

	fixture_start(&f, ONE_LOOP ROOT_WRITES MAPPER, "emu0");
	root_fd = raw_connect(&f);
	costly_start(&h, &f, root_fd);
	CHECK(root_sees(root_fd, &h, batch_in_progress));
	n = (int)read(h.ready[0], report, sizeof(report) - 1);
	CHECK(n > 1 && report[0] == 'r');
	report[n] = '\0';
	CHECK(sscanf(report + 1, "%d %d", &code, &index) == 2);
	CHECK_EQ(code, IOMMUD__V1__CODE__CODE_ALREADY_EXISTS);
	CHECK_EQ(index, 1);
	/* The whole range is checked, as one call would: the message names all of it. */
	(void)snprintf(expected, sizeof(expected),
		       "map entry 1: cannot map: IOVA range 0x%llx-0x%llx overlaps the mapping at "
		       "0x%llx-0x%llx",
		       COSTLY_IOVA, COSTLY_IOVA + COSTLY_BYTES - 1, COSTLY_IOVA,
		       COSTLY_IOVA + COSTLY_BYTES - 1);
	(void)fprintf(stderr, "batch reply (code, failed index, message): %s\n", report + 1);
	CHECK(strstr(report, expected) != NULL);
	raw_send_get_stats(root_fd);
	CHECK_EQ(pinned_now(root_fd), 0);
	CHECK_EQ(fixture_memfd_mappings(&f), 0);
	costly_stop(&h);
	(void)close(root_fd);
	fixture_stop(&f);
}

/* A connection closed while its batch is in progress: what the batch mapped is taken back over
 * several turns, root being answered meanwhile, while the tenant's session (its other
 * connection) stays, and the daemon keeps no descriptor of it. */
TEST(costly_request_closed)
{
	struct daemon_fixture f;
	struct costly h = {.kind = COSTLY_CLOSED, .iova = COSTLY_IOVA};
	int root_fd, files, status, n;
	char byte, report[32];

	fixture_start(&f, ONE_LOOP ROOT_WRITES MAPPER, "emu0");
	root_fd = raw_connect(&f);
	/* Counted once root is answered: the daemon identifies a new peer with a pidfd and files
	 * of /proc, open only until the connection is accepted. */
	raw_send_get_stats(root_fd);
	CHECK_EQ(pinned_now(root_fd), 0);
	files = fixture_fd_count(&f);
	costly_start(&h, &f, root_fd);
	CHECK(root_sees(root_fd, &h, batch_well_on));
	/* Stopped, the daemon cannot finish the batch before the connection is gone. */
	CHECK_EQ(kill(f.pid, SIGSTOP), 0);
	CHECK(waitpid(f.pid, &status, WUNTRACED) == f.pid && WIFSTOPPED(status));
	CHECK(write(h.go[1], "c", 1) == 1);
	CHECK(read(h.ready[0], &byte, 1) == 1 && byte == 'x');
	raw_send_get_stats(root_fd);
	CHECK_EQ(kill(f.pid, SIGCONT), 0);
	CHECK(root_sees(root_fd, &h, taking_back));
	n = (int)read(h.ready[0], report, sizeof(report) - 1);
	CHECK(n > 0);
	report[n > 0 ? n : 0] = '\0';
	CHECK_EQ(strtoull(report, NULL, 10), 0);
	raw_send_get_stats(root_fd);
	CHECK_EQ(pinned_now(root_fd), 0);
	CHECK_EQ(fixture_memfd_mappings(&f), 0);
	CHECK_EQ(fixture_fd_count(&f), files);
	costly_stop(&h);
	(void)close(root_fd);
	fixture_stop(&f);
}

/* The hostile tenant removes its COSTLY_ENTRIES mappings in one request: root, queued behind
 * it, sees them being taken away, and the reply says all of them went. */
static void costly_removal(struct costly *h, const char *topology)
{
	struct daemon_fixture f;
	unsigned long long bytes;
	unsigned count;
	char report[1100];
	int root_fd, code, n;

	fixture_start_topology(&f, ONE_LOOP ROOT_WRITES MAPPER, topology);
	root_fd = raw_connect(&f);
	costly_start(h, &f, root_fd);
	CHECK(root_sees(root_fd, h, taking_back));
	n = (int)read(h->ready[0], report, sizeof(report) - 1);
	CHECK(n > 1 && report[0] == 'r');
	report[n] = '\0';
	(void)fprintf(stderr, "removal reply (code, bytes, mappings): %s\n", report + 1);
	CHECK(sscanf(report + 1, "%d %llu %u", &code, &bytes, &count) == 3);
	CHECK_EQ(code, IOMMUD__V1__CODE__CODE_OK);
	CHECK_EQ(bytes, COSTLY_ENTRIES * COSTLY_BYTES);
	CHECK_EQ(count, COSTLY_ENTRIES);
	raw_send_get_stats(root_fd);
	CHECK_EQ(pinned_now(root_fd), 0);
	CHECK_EQ(fixture_memfd_mappings(&f), 0);
	costly_stop(h);
	(void)close(root_fd);
	fixture_stop(&f);
}

/* UnmapAll of 16 GiB at 4 KiB leaves runs over several turns. */
TEST(costly_unmap_all_in_slices)
{
	struct costly h = {.kind = COSTLY_UNMAP, .iova = COSTLY_IOVA, .unmap_all = true};

	costly_removal(&h, "[iommu]\ndevices = emu0\n");
}

/* Unmap too, of mappings whose IOVA and memory are 1 GiB aligned on an IOMMU of 4 KiB leaves:
 * their parts are 64 of the leaves the IOMMU has, not of those the alignment would allow. */
TEST(costly_unmap_small_leaves)
{
	struct costly h = {.kind = COSTLY_UNMAP, .iova = 4ull << 30};

	costly_removal(&h, SMALL_LEAVES);
}

/* ---- item: connection caps, the writers' reserve, root ---------------------------------- */

#define CAPS                                                                                       \
	"max-connections = 12\n"                                                                   \
	"reserved-connections = 4\n"                                                               \
	"max-connections-per-uid = 5\n"                                                            \
	"max-connections-per-tenant = 3\n" ROOT_WRITES WRITER

/* Readers take what the caps let them: three per tenant, five per uid over two cgroups, and
 * together no more than the slots outside the reserve; the configured writer then takes the
 * reserve up to max-connections, and root still gets in beyond it. */
TEST(connection_caps)
{
	struct test_cgroup a, b;
	struct holder a1, a2, b1, b2, w1, w2;
	struct daemon_fixture f;
	uint64_t counts[4];
	const char *reasons[] = {"max-connections-per-tenant", "max-connections-per-uid",
				 "reserved-connections", "max-connections"};

	cgroup_create(&a, "a");
	cgroup_create(&b, "b");
	fixture_start(&f, CAPS, "emu0");
	holder_start(&a1, &f, READER_UID_A, &a, 4);
	for (int i = 0; i < 3; i++)
		holder_expect(&a1, NULL);
	holder_expect(&a1, "max-connections-per-tenant");
	holder_start(&a2, &f, READER_UID_A, &b, 3);
	holder_expect(&a2, NULL);
	holder_expect(&a2, NULL);
	holder_expect(&a2, "max-connections-per-uid");
	/* 5 open: three more readers fill the 8 slots outside the reserve. */
	holder_start(&b1, &f, READER_UID_B, &a, 3);
	for (int i = 0; i < 3; i++)
		holder_expect(&b1, NULL);
	holder_start(&b2, &f, READER_UID_B, &b, 1);
	holder_expect(&b2, "reserved-connections");
	holder_start(&w1, &f, WRITER_UID, &a, 3);
	for (int i = 0; i < 3; i++)
		holder_expect(&w1, NULL);
	holder_start(&w2, &f, WRITER_UID, &b, 2);
	holder_expect(&w2, NULL);
	holder_expect(&w2, "max-connections");
	/* Root connects with every slot taken. */
	for (size_t i = 0; i < 4; i++)
		root_stats(&f, NULL, reasons[i], &counts[i]);
	for (size_t i = 0; i < 4; i++)
		CHECK_EQ(counts[i], 1);
	holder_stop(&a1);
	holder_stop(&a2);
	holder_stop(&b1);
	holder_stop(&b2);
	holder_stop(&w1);
	holder_stop(&w2);
	fixture_stop(&f);
	cgroup_remove(&a);
	cgroup_remove(&b);
}

/* ---- item: silent connections ---------------------------------------------------------- */

/* Waits (at most 10 s, a bound only against a hang) for the daemon to close the connection. */
static bool closed_by_daemon(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	char byte;

	return poll(&pfd, 1, 10000) == 1 && recv(fd, &byte, 1, MSG_DONTWAIT) == 0;
}

/* A connection made while the test's effective uid is uid: the daemon takes the connecting
 * credentials, so it is that uid's, held by a process it can verify. */
static int connect_as(const struct daemon_fixture *f, uid_t uid)
{
	int fd;

	CHECK_EQ(setegid((gid_t)uid), 0);
	CHECK_EQ(seteuid(uid), 0);
	fd = raw_connect(f);
	CHECK_EQ(seteuid(0), 0);
	CHECK_EQ(setegid(0), 0);
	return fd;
}

/* Whether the daemon has left the connection open: nothing to read, no hang-up. */
static bool still_open(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	return poll(&pfd, 1, 0) == 0;
}

static void speak(int fd)
{
	Iommud__V1__Response *resp;

	raw_send_request(fd, list_devices_request(1), NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* A connection that never sends and one that stops sending are both closed, each counted
 * under its timeout; root's are not, since no limit holds root. */
TEST(silent_connections_closed)
{
	struct daemon_fixture f;
	uint64_t first, idle;
	int silent, stopped, root_silent, root_stopped;

	fixture_start(&f, "first-request-timeout = 1\nidle-timeout = 2\n[access]\ndefault = read\n",
		      "emu0");
	silent = connect_as(&f, 65534);
	stopped = connect_as(&f, 65534);
	root_silent = raw_connect(&f);
	root_stopped = raw_connect(&f);
	speak(stopped);
	speak(root_stopped);
	CHECK(closed_by_daemon(silent));
	CHECK(closed_by_daemon(stopped));
	CHECK(still_open(root_silent));
	CHECK(still_open(root_stopped));
	root_stats(&f, NULL, "first-request-timeout", &first);
	root_stats(&f, NULL, "idle-timeout", &idle);
	/* root_stats' own connections speak at once, so they are not among these. */
	CHECK_EQ(first, 1);
	CHECK_EQ(idle, 1);
	(void)close(silent);
	(void)close(stopped);
	(void)close(root_silent);
	(void)close(root_stopped);
	fixture_stop(&f);
}

/* first-request-timeout = 0 is no limit for the first request, whatever idle-timeout is. */
TEST(first_request_timeout_zero_is_none)
{
	struct daemon_fixture f;
	int silent, stopped;

	fixture_start(&f, "first-request-timeout = 0\nidle-timeout = 1\n[access]\ndefault = read\n",
		      "emu0");
	silent = connect_as(&f, 65534);
	stopped = connect_as(&f, 65534);
	speak(stopped);
	/* The idle one's close is later than any first-request timer that would have run. */
	CHECK(closed_by_daemon(stopped));
	CHECK(still_open(silent));
	(void)close(silent);
	(void)close(stopped);
	fixture_stop(&f);
}

/* ---- item: readers' rate ---------------------------------------------------------------- */

#define READER_BURST	 5
#define READER_PIPELINED 30

static int pipeline_reads(void *arg)
{
	const struct daemon_fixture *f = arg;
	int fd = raw_connect(f);

	for (int i = 0; i < READER_PIPELINED; i++)
		raw_send_request(fd, list_devices_request(1 + (uint64_t)i), NULL, 0);
	/* Tell root the requests are queued: it asks for the daemon's count now. */
	CHECK(write(3, "q", 1) == 1);
	for (int i = 0; i < READER_PIPELINED; i++) {
		Iommud__V1__Response *resp = raw_recv(fd, NULL);

		/* They waited; none was refused. */
		CHECK_EQ(resp->id, 1 + (uint64_t)i);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		iommud__v1__response__free_unpacked(resp, NULL);
	}
	(void)close(fd);
	return 0;
}

/* A reader pipelining past its burst is served at its rate while root's request goes at once:
 * when root asks, the reader has had its burst and what the rate gave since, not all its
 * requests; and every one of them is answered in the end. */
TEST(readers_rate_limited)
{
	struct daemon_fixture f;
	uint64_t before, during, throttled;
	int queued[2], status;
	pid_t reader;
	char byte;

	fixture_start(&f, "reader-rate = 5\nreader-burst = 5\n", "emu0");
	root_stats(&f, &before, NULL, NULL);
	/* Stopped, the daemon finds the reader's requests and root's all queued when it goes on,
	 * so what it handles first depends on its turns, not on the machine's speed. */
	CHECK_EQ(kill(f.pid, SIGSTOP), 0);
	CHECK(pipe(queued) == 0);
	reader = fork();
	CHECK(reader >= 0);
	if (reader == 0) {
		CHECK(dup2(queued[1], 3) == 3);
		become(READER_UID_A);
		_exit(pipeline_reads(&f));
	}
	(void)close(queued[1]);
	CHECK(read(queued[0], &byte, 1) == 1);
	{
		Iommud__V1__Response *resp;
		int fd = raw_connect(&f);

		raw_send_get_stats(fd);
		CHECK_EQ(kill(f.pid, SIGCONT), 0);
		during = method_calls(raw_stats_reply(fd, &resp), "list_devices");
		iommud__v1__response__free_unpacked(resp, NULL);
		(void)close(fd);
	}
	(void)fprintf(stderr, "reader requests handled when root asked: %llu of %d\n",
		      (unsigned long long)(during - before), READER_PIPELINED);
	/* The burst, and a token for each 200 ms the machine might stall the daemon. */
	CHECK(during - before <= READER_BURST + 2);
	CHECK(waitpid(reader, &status, 0) == reader && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
	root_stats(&f, &during, NULL, NULL);
	CHECK_EQ(during - before, READER_PIPELINED);
	{
		Iommud__V1__Response *resp;
		int fd = raw_connect(&f);

		throttled = get_stats(fd, &resp)->rate_limited;
		iommud__v1__response__free_unpacked(resp, NULL);
		(void)close(fd);
	}
	CHECK(throttled >= 1);
	(void)close(queued[0]);
	fixture_stop(&f);
}

/* ---- item: the open-file limit ---------------------------------------------------------- */

static int daemon_open_files(const struct daemon_fixture *f)
{
	char path[64], cmd[128];
	FILE *ls;
	int n = 0;

	(void)snprintf(path, sizeof(path), "/proc/%d/fd", (int)f->pid);
	(void)snprintf(cmd, sizeof(cmd), "ls %s | wc -l", path);
	ls = popen(cmd, "r");
	CHECK(ls != NULL);
	CHECK(fscanf(ls, "%d", &n) == 1);
	CHECK(pclose(ls) == 0);
	return n;
}

static int count_lines(const char *path, const char *needle)
{
	char line[1024];
	FILE *file = fopen(path, "re");
	int n = 0;

	CHECK(file != NULL);
	while (fgets(line, sizeof(line), file))
		n += strstr(line, needle) != NULL;
	(void)fclose(file);
	return n;
}

/* Starts the daemon with config and its log (stderr) in a file of the test's. */
static void start_logging(struct daemon_fixture *f, const char *log_path, const char *config)
{
	int saved = dup(2), log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	CHECK(saved >= 0 && log >= 0);
	CHECK(dup2(log, 2) == 2);
	fixture_start(f, config, "emu0");
	CHECK(dup2(saved, 2) == 2);
	(void)close(saved);
	(void)close(log);
}

#define LIMIT_CONNS 64
#define QUEUED	    8

/* With its descriptors used up, the daemon refuses queued connections with a message, at a
 * pace, and says so in its log once rather than once per failed accept; as soon as a
 * connection closes it takes new ones again. */
TEST(open_file_limit)
{
	struct daemon_fixture f;
	struct rlimit low, saved;
	char log_path[] = "/tmp/iommud-fairness-log-XXXXXX", outcome[600];
	int conns[LIMIT_CONNS], queued[QUEUED], n = 0, fd;
	struct timespec settle = {0, 500 * 1000 * 1000};
	uint64_t refusals;

	CHECK((fd = mkstemp(log_path)) >= 0);
	(void)close(fd);
	start_logging(&f, log_path, "");
	CHECK_EQ(prlimit(f.pid, RLIMIT_NOFILE, NULL, &saved), 0);
	low = (struct rlimit){(rlim_t)daemon_open_files(&f) + 6, saved.rlim_max};
	CHECK_EQ(prlimit(f.pid, RLIMIT_NOFILE, &low, NULL), 0);
	do {
		CHECK(n < LIMIT_CONNS);
		conns[n] = raw_connect(&f);
		try_connection(conns[n++], outcome, sizeof(outcome));
	} while (!strstr(outcome, "out of descriptors"));
	(void)fprintf(stderr, "refused after %d connections: %s\n", n - 1, outcome);
	/* Connections queued at the limit: the old loop spun on them, logging each turn. */
	for (int i = 0; i < QUEUED; i++)
		queued[i] = raw_connect(&f);
	nanosleep(&settle, NULL);
	for (int i = 0; i < QUEUED; i++) {
		try_connection(queued[i], outcome, sizeof(outcome));
		CHECK(strstr(outcome, "out of descriptors") != NULL);
		(void)close(queued[i]);
	}
	(void)fprintf(stderr, "log lines about descriptors: %d\n",
		      count_lines(log_path, "descriptors"));
	CHECK(count_lines(log_path, "descriptors") <= 2);
	CHECK_EQ(count_lines(log_path, "accept"), 0);
	/* Connections closing make room: the next one is served (with room for the files that
	 * identifying its peer opens). */
	CHECK(n > 3);
	for (int i = 0; i < 3; i++)
		(void)close(conns[i]);
	nanosleep(&settle, NULL);
	fd = raw_connect(&f);
	try_connection(fd, outcome, sizeof(outcome));
	CHECK(strcmp(outcome, "ok") == 0);
	(void)close(fd);
	for (int i = 3; i < n; i++)
		(void)close(conns[i]);
	CHECK_EQ(prlimit(f.pid, RLIMIT_NOFILE, &saved, NULL), 0);
	root_stats(&f, NULL, "open-file-limit", &refusals);
	CHECK(refusals >= QUEUED + 1);
	fixture_stop(&f);
	CHECK_EQ(unlink(log_path), 0);
}

/* ---- item: a large map's steps, grown alone, one part again for a newcomer --------------- */

/* The daemon's resident memory, in bytes. */
static uint64_t daemon_resident(const struct daemon_fixture *f)
{
	char path[64];
	unsigned long long size, resident = 0;
	FILE *statm;

	(void)snprintf(path, sizeof(path), "/proc/%d/statm", (int)f->pid);
	statm = fopen(path, "re");
	CHECK(statm != NULL);
	CHECK(fscanf(statm, "%llu %llu", &size, &resident) == 2);
	(void)fclose(statm);
	return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* The page tables of every tenant, as root's GetStats (already sent) says: the emulated IOMMU's
 * grow with each step of a map. */
static uint64_t tables_now(int root_fd)
{
	Iommud__V1__Response *resp;
	Iommud__V1__GetStatsReply *stats = raw_stats_reply(root_fd, &resp);
	uint64_t bytes = 0;

	for (size_t i = 0; i < stats->n_tenant_stats; i++)
		bytes += stats->tenant_stats[i]->quota->page_table_bytes;
	iommud__v1__response__free_unpacked(resp, NULL);
	return bytes;
}

/* Whether the daemon's log has a line with text in it yet. */
static bool log_says(const char *log_path, const char *text)
{
	FILE *log = fopen(log_path, "re");
	char line[512];
	bool found = false;

	CHECK(log != NULL);
	while (!found && fgets(line, sizeof(line), log))
		found = strstr(line, text) != NULL;
	(void)fclose(log);
	return found;
}

/* The largest step the log says a call had grown to when another tenant's turn came, 0 when
 * it says none did. */
static unsigned grown_steps(const char *log_path)
{
	static const char needle[] = "steps back to 1 part from ";
	FILE *log = fopen(log_path, "re");
	char line[1024], *at;
	unsigned most = 0, parts;

	CHECK(log != NULL);
	while (fgets(line, sizeof(line), log))
		if ((at = strstr(line, needle)) && sscanf(at + strlen(needle), "%u", &parts) == 1 &&
		    parts > most)
			most = parts;
	(void)fclose(log);
	return most;
}

/* One Map of 16 GiB at 4 KiB leaves with no other tenant asking: its steps grow past the slice,
 * each one kernel call. Root, asking once the daemon's log says they may and a sixteenth more
 * of the page tables is made (the daemon's memory says so, without a request), is answered
 * while the map is in progress, and the map's
 * steps start again at one part for it: the old steps never grew, and steps that never shrank
 * would leave no such line. threads: the daemon's loop threads, as a configuration line. */
static void large_map_steps_shrink(const char *threads)
{
	struct daemon_fixture f;
	struct costly h = {.kind = COSTLY_LARGE, .iova = COSTLY_IOVA};
	struct pollfd reply = {.events = POLLIN};
	struct timespec pause = {0, 1000 * 1000};
	char log_path[] = "/tmp/iommud-fairness-log-XXXXXX", report[1100];
	uint64_t seen, made;
	int root_fd, log, n;

	CHECK((log = mkstemp(log_path)) >= 0);
	(void)close(log);
	CHECK_OK(setenv("IOMMUD_TEST_LOG_LEVEL", "debug", 1));
	start_logging(&f, log_path, threads);
	CHECK_OK(unsetenv("IOMMUD_TEST_LOG_LEVEL"));
	root_fd = raw_connect(&f);
	costly_start(&h, &f, -1);
	reply.fd = h.ready[0];
	/* Root asks once the daemon says the map's steps may grow, and they have had a few steps
	 * to do it in: how soon depends on the machine's load, not on what the map has made. */
	while (!log_says(log_path, "its steps may grow past the slice") && poll(&reply, 1, 0) == 0)
		nanosleep(&pause, NULL);
	seen = daemon_resident(&f);
	while (daemon_resident(&f) < seen + COSTLY_ENTRIES * COSTLY_BYTES / 512 / 16 &&
	       poll(&reply, 1, 0) == 0)
		nanosleep(&pause, NULL);
	raw_send_get_stats(root_fd);
	seen = tables_now(root_fd);
	n = (int)read(h.ready[0], report, sizeof(report) - 1);
	CHECK(n > 1 && report[0] == 'r');
	report[n] = '\0';
	CHECK(strncmp(report, "r0 ", 3) == 0);
	raw_send_get_stats(root_fd);
	made = tables_now(root_fd);
	(void)fprintf(stderr, "page tables when root was answered: %llu of %llu bytes\n",
		      (unsigned long long)seen, (unsigned long long)made);
	CHECK(seen > 0 && seen < made);
	(void)fprintf(stderr, "steps had grown to %u parts\n", grown_steps(log_path));
	CHECK(grown_steps(log_path) > 1);
	costly_stop(&h);
	(void)close(root_fd);
	fixture_stop(&f);
	(void)unlink(log_path);
}

/* Root and the mapper on one loop thread: root's turn among the map's slices. */
TEST(large_map_steps_shrink_for_newcomer)
{
	large_map_steps_shrink(ONE_LOOP ROOT_WRITES MAPPER);
}

/* On two, root is served by the other thread, but its request waits for the daemon lock, and
 * so for the map's step: the map sees that it was asked for. */
TEST(large_map_steps_shrink_for_newcomer_on_another_thread)
{
	large_map_steps_shrink("threads = 2\n" ROOT_WRITES MAPPER);
}

/* ---- item: a lone tenant's removals start from the steps its last one grew to ----------- */

#define LONE_MAPPINGS 16
#define LONE_BYTES    (4ull << 20)	    /* 1024 pages of 4 KiB each, so 16 parts */
#define LONE_IOVA     ((4ull << 30) + 4096) /* off every large page boundary: 4 KiB leaves */

/* The steps the log's last removal in domain took; 0 when it names none. */
static unsigned last_removal_steps(const char *log_path, uint32_t domain)
{
	static const char needle[] = " mappings in domain ";
	FILE *log = fopen(log_path, "re");
	char line[1024], *at;
	unsigned in_domain, steps, last = 0;

	CHECK(log != NULL);
	while (fgets(line, sizeof(line), log))
		if ((at = strstr(line, needle)) &&
		    sscanf(at + strlen(needle), "%u in %u steps", &in_domain, &steps) == 2 &&
		    in_domain == domain)
			last = steps;
	(void)fclose(log);
	return last;
}

/* Maps LONE_MAPPINGS of mem, waits twice the time after which a tenant that nobody else
 * interrupts counts as alone (FLOWS_ALONE_AFTER_NS), removes them all with one UnmapAll and
 * returns the steps the daemon's log says that took. */
static unsigned lone_removal(struct iommuctl *c, uint32_t domain, int mem, const char *log_path)
{
	struct iommuctl_map_entry entries[LONE_MAPPINGS];
	struct timespec alone = {0, 20 * 1000 * 1000};
	uint64_t unmapped;

	for (unsigned i = 0; i < LONE_MAPPINGS; i++)
		entries[i] = (struct iommuctl_map_entry){
			.domain_id = domain,
			.fd = mem,
			.offset = i * LONE_BYTES,
			.length = LONE_BYTES,
			.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE,
			.fixed_iova = true,
			.iova = LONE_IOVA + i * LONE_BYTES,
		};
	CHECK(iommuctl_map_batch(c, entries, LONE_MAPPINGS, NULL) == 0);
	(void)nanosleep(&alone, NULL);
	CHECK(iommuctl_unmap_all(c, domain, &unmapped) == 0);
	CHECK_EQ(unmapped, LONE_MAPPINGS * LONE_BYTES);
	return last_removal_steps(log_path, domain);
}

/* A tenant alone in the daemon removes its mappings in steps that grow from one part; its next
 * removal alone starts from what they had grown to, not from one part again, so it takes fewer
 * steps for as many mappings. */
TEST(lone_removals_start_from_grown_steps)
{
	struct daemon_fixture f;
	char log_path[] = "/tmp/iommud-fairness-log-XXXXXX";
	unsigned first, second;
	struct iommuctl *c;
	uint32_t domain;
	int log, mem;

	CHECK((log = mkstemp(log_path)) >= 0);
	(void)close(log);
	CHECK_OK(setenv("IOMMUD_TEST_LOG_LEVEL", "debug", 1));
	start_logging(&f, log_path, ONE_LOOP ROOT_WRITES "devices = emu0\n");
	CHECK_OK(unsetenv("IOMMUD_TEST_LOG_LEVEL"));
	CHECK(iommuctl_connect(f.socket_path, &c) == 0);
	CHECK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain) == 0);
	CHECK((mem = iommuctl_memfd("lone", LONE_MAPPINGS * LONE_BYTES)) >= 0);
	first = lone_removal(c, domain, mem, log_path);
	second = lone_removal(c, domain, mem, log_path);
	(void)fprintf(stderr, "steps of the first removal: %u, of the second: %u\n", first, second);
	CHECK(first > 1);
	CHECK(second >= 1 && second < first);
	(void)close(mem);
	iommuctl_close(c);
	fixture_stop(&f);
	(void)unlink(log_path);
}
