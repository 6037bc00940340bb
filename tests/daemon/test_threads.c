/* SPDX-License-Identifier: MIT */
/*
 * The daemon on several event-loop threads ([daemon] threads): two tenants (two uids) mapping
 * and unmapping at once from threads of their own, each tenant's connections served by one
 * loop thread and the two tenants by different ones, every mapping and every call accounted
 * for afterwards; a thread that waited on its one client's socket taking the next connection
 * when that client goes quiet; a bad threads value refused at start; and a re-execution and a
 * stop with connections open on both threads.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"
#include "supervisor.h"

#define TENANT_A 61031
#define TENANT_B 61032
/* Each tenant's connections, each on a thread of its own, mapping and unmapping at once. */
#define WORKERS 2
#define ROUNDS	1500
/* Mappings each worker leaves, for ListMappings and the quota to account for. */
#define KEPT 8
#define PAGE 4096ull

#define CONFIG                                                                                     \
	"threads = 2\n"                                                                            \
	"[uid 0]\n"                                                                                \
	"access = write\n"                                                                         \
	"devices = *\n"                                                                            \
	"[uid 61031]\n"                                                                            \
	"access = write\n"                                                                         \
	"devices = emu0\n"                                                                         \
	"[uid 61032]\n"                                                                            \
	"access = write\n"                                                                         \
	"devices = emu1\n"

static Iommud__V1__Response *call_simple(struct iommuctl *c, Iommud__V1__Request *req)
{
	Iommud__V1__Response *resp = NULL;

	return iommuctl_call(c, req, NULL, 0, &resp, NULL, 0, NULL) < 0 ? NULL : resp;
}

/* The loop thread GetStats says serves c; -1 when the call failed. */
static int loop_thread_of(struct iommuctl *c)
{
	Iommud__V1__Response *resp = fixture_get_stats(c);
	int thread = resp->get_stats ? (int)resp->get_stats->loop_thread : -1;

	iommuctl_response_free(resp);
	return thread;
}

/* ListMappings' count in domain, or -1. */
static int mappings_in(struct iommuctl *c, uint32_t domain)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	int n;

	list.domain_id = domain;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &list;
	if (!(resp = call_simple(c, &req)))
		return -1;
	n = resp->list_mappings && !resp->list_mappings->more ? (int)resp->list_mappings->n_mappings
							      : -1;
	iommuctl_response_free(resp);
	return n;
}

struct worker {
	pthread_t thread;
	struct iommuctl *c;
	uint32_t domain;
	int file;
	uint64_t iova; /* of its own range */
	int failed;
};

/* Maps and unmaps one page ROUNDS times, then leaves KEPT pages mapped. */
static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t iova;

	for (unsigned i = 0; i < ROUNDS + KEPT && !w->failed; i++) {
		iova = w->iova + (i < ROUNDS ? 0 : (i - ROUNDS) * PAGE);
		w->failed = iommuctl_map_fd(w->c, w->domain, w->file, 0, PAGE,
					    IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0,
					    &iova) < 0;
		if (!w->failed && i < ROUNDS)
			w->failed = iommuctl_unmap(w->c, w->domain, iova, PAGE, NULL) < 0;
	}
	if (w->failed)
		(void)fprintf(stderr, "worker at 0x%llx: %s\n", (unsigned long long)w->iova,
			      iommuctl_last_error(w->c));
	return NULL;
}

struct tenant_run {
	const char *socket_path;
	const char *device;
	int ready[2], go[2]; /* pipes: the tenant is connected; all tenants may start */
};

/* Whether every connection of the tenant is served by one loop thread, written to the ready
 * pipe with it. */
static int same_thread(struct worker *w, int ready_fd)
{
	int thread = loop_thread_of(w[0].c);
	char byte = (char)thread;

	for (unsigned i = 1; i < WORKERS; i++)
		if (loop_thread_of(w[i].c) != thread)
			return 0;
	return write(ready_fd, &byte, 1) == 1;
}

/* The tenant's part, as its uid: WORKERS connections map at once in one domain; then each
 * mapping left must be listed and counted, and none once UnmapAll removed them. */
static int run_tenant(void *arg)
{
	struct tenant_run *t = arg;
	struct worker w[WORKERS];
	Iommud__V1__Quota quota = IOMMUD__V1__QUOTA__INIT;
	uint32_t domain;
	int file = iommuctl_memfd("threads", PAGE * KEPT), ok = file >= 0;
	char byte;

	for (unsigned i = 0; i < WORKERS; i++) {
		w[i] = (struct worker){.file = file, .iova = (1ull << 32) * (i + 1)};
		ok &= iommuctl_connect(t->socket_path, &w[i].c) == 0;
	}
	ok = ok &&
	     iommuctl_alloc_domain(w[0].c, t->device, IOMMUCTL_DOMAIN_PAGING, 0, &domain) == 0;
	ok = ok && same_thread(w, t->ready[1]);
	ok = ok && read(t->go[0], &byte, 1) == 1;
	for (unsigned i = 0; ok && i < WORKERS; i++) {
		w[i].domain = domain;
		ok = pthread_create(&w[i].thread, NULL, work, &w[i]) == 0;
	}
	for (unsigned i = 0; ok && i < WORKERS; i++)
		ok = pthread_join(w[i].thread, NULL) == 0 && !w[i].failed;
	ok = ok && mappings_in(w[0].c, domain) == WORKERS * KEPT;
	fixture_stats(w[0].c, &quota, NULL);
	ok = ok && quota.mappings == WORKERS * KEPT;
	ok = ok && iommuctl_unmap_all(w[0].c, domain, NULL) == 0;
	fixture_stats(w[0].c, &quota, NULL);
	ok = ok && quota.mappings == 0 && quota.pinned_bytes == 0;
	for (unsigned i = 0; i < WORKERS; i++)
		iommuctl_close(w[i].c);
	return ok ? 0 : 1;
}

static pid_t start_tenant(uid_t uid, struct tenant_run *t)
{
	pid_t pid;

	CHECK_OK(pipe(t->ready));
	CHECK_OK(pipe(t->go));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(run_as(uid, run_tenant, t));
	return pid;
}

static unsigned long long calls_of(const Iommud__V1__GetStatsReply *s, const char *method)
{
	for (size_t i = 0; i < s->n_methods; i++)
		if (strcmp(s->methods[i]->method, method) == 0)
			return s->methods[i]->calls;
	return 0;
}

TEST(two_tenants_map_at_once)
{
	struct daemon_fixture f;
	struct tenant_run runs[2] = {{.device = "emu0"}, {.device = "emu1"}};
	const uid_t uids[2] = {TENANT_A, TENANT_B};
	Iommud__V1__Response *resp;
	struct iommuctl *root;
	pid_t pids[2];
	char thread[2];
	int status;

	fixture_start(&f, CONFIG, "emu0 emu1");
	for (int i = 0; i < 2; i++) {
		runs[i].socket_path = f.socket_path;
		pids[i] = start_tenant(uids[i], &runs[i]);
	}
	/* Both connected before either maps, so that they map at once. */
	for (int i = 0; i < 2; i++)
		CHECK(read(runs[i].ready[0], &thread[i], 1) == 1);
	/* The second tenant goes to the thread the first left idle. */
	CHECK(thread[0] != thread[1]);
	for (int i = 0; i < 2; i++)
		CHECK(write(runs[i].go[1], "g", 1) == 1);
	for (int i = 0; i < 2; i++) {
		CHECK(waitpid(pids[i], &status, 0) == pids[i]);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	CHECK_OK(iommuctl_connect(f.socket_path, &root));
	resp = fixture_get_stats(root);
	/* Every call of both threads counted once. */
	CHECK_EQ(calls_of(resp->get_stats, "map"), 2ull * WORKERS * (ROUNDS + KEPT));
	CHECK_EQ(calls_of(resp->get_stats, "unmap"), 2ull * WORKERS * ROUNDS);
	CHECK_EQ(calls_of(resp->get_stats, "unmap_all"), 2ull);
	CHECK_EQ(resp->get_stats->ceilings->pinned_bytes, 0);
	iommuctl_response_free(resp);
	iommuctl_close(root);
	CHECK_EQ(fixture_memfd_mappings(&f), 0);
	fixture_stop(&f);
}

/* A loop thread whose one client sends request after request waits for the next on that
 * client's socket, not in its poll (server.c, conn_read_one). When the client stops, the wait
 * must end by itself: a connection of the same tenant, handed to the same thread, is served
 * although the first client sends nothing more (its socket's receive bound; a wait without
 * one would hold the thread until the first client spoke again). */
TEST(quiet_client_leaves_its_thread_to_the_next)
{
	struct timeval give_up = {.tv_sec = 10};
	struct daemon_fixture f;
	struct iommuctl *busy, *next;
	int thread;

	fixture_start(&f, CONFIG, "emu0 emu1");
	CHECK_OK(iommuctl_connect(f.socket_path, &busy));
	thread = loop_thread_of(busy);
	CHECK(thread >= 0);
	for (int i = 0; i < 200; i++)
		CHECK_EQ(loop_thread_of(busy), thread);
	CHECK_OK(iommuctl_connect(f.socket_path, &next));
	/* A thread that never comes back fails the call, not the test run's timeout. */
	CHECK_OK(setsockopt(iommuctl_fd(next), SOL_SOCKET, SO_RCVTIMEO, &give_up, sizeof(give_up)));
	CHECK_EQ(loop_thread_of(next), thread);
	CHECK_EQ(loop_thread_of(busy), thread);
	iommuctl_close(next);
	iommuctl_close(busy);
	fixture_stop(&f);
}

/* --check-config refuses the value, saying what threads takes; exit status 1. */
static void check_refused(const char *value)
{
	struct daemon_fixture f = {0};
	char config_path[128], text[64], output[1024];
	FILE *p;
	size_t n;
	int status;

	(void)snprintf(text, sizeof(text), "threads = %s\n", value);
	fixture_write_config(&f, text, "[iommu]\ndevices = emu0\n", config_path);
	(void)snprintf(output, sizeof(output), "%s --check-config --config %s 2>&1", IOMMUD_BIN,
		       config_path);
	CHECK((p = popen(output, "r")) != NULL);
	n = fread(output, 1, sizeof(output) - 1, p);
	output[n] = '\0';
	status = pclose(p);
	(void)fprintf(stderr, "threads = %s: %s", value, output);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
	CHECK(strstr(output, "threads must be auto") != NULL);
	CHECK(strstr(output, value) != NULL);
	(void)snprintf(output, sizeof(output), "rm -rf %s", f.dir);
	CHECK_EQ(system(output), 0);
}

TEST(bad_threads_refused)
{
	check_refused("0");
	check_refused("65");
	check_refused("many");
	check_refused("-1");
}

/* A tenant of the test's supervisor's daemon: connected, with one mapping, as uid. */
struct holder {
	const char *socket_path;
	int ready[2], done[2];
};

static int hold_connection(void *arg)
{
	struct holder *h = arg;
	struct iommuctl *c;
	uint32_t domain;
	uint64_t iova = 1ull << 32;
	int file = iommuctl_memfd("held", PAGE), ok;
	char byte = 0;

	ok = file >= 0 && iommuctl_connect(h->socket_path, &c) == 0 &&
	     iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &domain) == 0 &&
	     iommuctl_map_fd(c, domain, file, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova) == 0;
	byte = (char)(ok ? loop_thread_of(c) : -1);
	ok = write(h->ready[1], &byte, 1) == 1 && ok;
	/* Until the daemon goes: the connection ends with it. */
	ok = read(h->done[0], &byte, 1) == 1 && ok;
	return ok ? 0 : 1;
}

/* Starts the other tenant's holder and checks it is served by another thread than other. */
static pid_t start_holder(struct holder *h, int other)
{
	pid_t pid = fork();
	char thread;

	CHECK(pid >= 0);
	if (pid == 0)
		_exit(run_as(TENANT_B, hold_connection, h));
	CHECK(read(h->ready[0], &thread, 1) == 1);
	CHECK(thread >= 0 && thread != other);
	return pid;
}

/* Re-executes the daemon, then stops it, each time with a connection open on each of its two
 * loop threads: the lease survives the re-execution, and the stop is clean (exit status 0,
 * which LeakSanitizer's findings would change). */
TEST(reexec_and_stop_with_both_threads_busy)
{
	struct supervisor sv;
	struct holder h;
	struct iommuctl *c;
	uint32_t domain;
	uint64_t iova = 1ull << 32;
	int file = iommuctl_memfd("lease", PAGE), status;
	pid_t pid, holder;

	CHECK_OK(file);
	supervisor_start(&sv, CONFIG, "emu0 emu1");
	c = supervisor_connect_lease(&sv, "vm1");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain),
			   "alloc");
	supervisor_call_ok(
		c, iommuctl_map_fd(c, domain, file, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		"map");
	h.socket_path = sv.f.socket_path;
	CHECK_OK(pipe(h.ready));
	CHECK_OK(pipe(h.done));
	holder = start_holder(&h, loop_thread_of(c));
	/* Logged after READY=1, before the first request is served. */
	CHECK(supervisor_log_has(&sv, "2 event-loop threads"));
	pid = sv.f.pid;
	supervisor_unready(&sv);
	CHECK_OK(kill(sv.f.pid, SIGUSR2));
	supervisor_wait_ready(&sv);
	CHECK_EQ(sv.f.pid, pid);
	iommuctl_close(c);
	c = supervisor_connect_lease(&sv, "vm1");
	CHECK_EQ(mappings_in(c, domain), 1);
	/* The holder's connection went with the old image: connect it again, then stop. */
	CHECK(write(h.done[1], "d", 1) == 1);
	CHECK(waitpid(holder, &status, 0) == holder && WIFEXITED(status));
	holder = start_holder(&h, loop_thread_of(c));
	supervisor_stop(&sv);
	CHECK(write(h.done[1], "d", 1) == 1);
	CHECK(waitpid(holder, &status, 0) == holder && WIFEXITED(status));
	iommuctl_close(c);
	(void)close(file);
}
