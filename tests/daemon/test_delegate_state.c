// SPDX-License-Identifier: MIT
/* What the daemon says of a delegated device and its VMM, through its request handlers in this
 * process: the emulated backend with delegation faked in (its fds memfds, as in kernel-helper's
 * test_delegate), and a child process as the VMM. While the delegation lasts the device is
 * "delegated" in ListDevices and GetStats, and the delegation carries the VMM's pid, tenant
 * label and memlock limit; when the VMM exits or the lease ends, the device is free again and
 * the delegation is gone. The real iommufd path runs in the nested VM proof (tests/vm/nested). */
#define _GNU_SOURCE /* memfd_create, prlimit */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <kh/kh.h>
#include <kh/kh_ops.h>

#include "daemon.h"
#include "delegate.h"
#include "dispatch.h"
#include "harness.h"
#include "probes/probes.h"
#include "stand_in_fds.h"

/* The VMM's memlock limit: one no default has, so the reply cannot have it by chance; below
 * the usual hard limit (8 MiB), as lowering needs no privilege. */
#define VMM_MEMLOCK ((1ull << 20) + 12288)

struct setup {
	struct config cfg;
	struct kh_backend_ops ops; /* the emulated backend's, with delegation */
	struct daemon d;
	struct event_base *base;
	struct client client;
	pid_t vmm;
};

/* One request through the dispatcher; the caller frees the response. Descriptors it carries
 * are closed as sent: the VMM got them. */
static Iommud__V1__Response *call(struct setup *t, Iommud__V1__Request *req)
{
	static uint8_t packet[IOMMUD_MAX_MESSAGE], out[IOMMUD_MAX_MESSAGE];
	struct reply_fds fds = {0};
	struct call *kept;
	unsigned method;
	size_t len = iommud__v1__request__pack(req, packet), n;

	n = dispatch_packet(&t->d, &t->client, packet, len, PACKET_OK, NULL, 0, UINT64_MAX, false,
			    out, &fds, &method, &kept);
	CHECK(n > 0 && kept == NULL);
	reply_fds_sent(&fds);
	return iommud__v1__response__unpack(NULL, n, out);
}

/* A connection of root's (this process, uid 0), which client_init takes over. */
static void join_as_root(struct setup *t)
{
	struct peer root = {.pid = getpid(), .cgroup = strdup("/")};

	CHECK(root.cgroup != NULL);
	CHECK_OK(client_init(&t->d, &t->client, &root));
}

static void setup(struct setup *t)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	struct rlimit memlock;
	Iommud__V1__Response *r;

	memset(t, 0, sizeof(*t));
	CHECK_OK(kh_backend_open_emulated_text("[iommu]\ndevices = emu0 emu1\n", &t->d.be));
	stand_in_delegation(t->d.be, &t->ops);
	CHECK_OK(config_defaults(&t->cfg));
	t->d.cfg = &t->cfg;
	CHECK((t->d.reg = registry_create(t->d.be, &t->cfg)) != NULL);
	CHECK_OK(probes_start(
		&(struct probes_options){.max_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF},
		&t->d.probes));
	CHECK((t->base = event_base_new()) != NULL);
	CHECK((t->d.delegations = delegations_create(t->base, t->d.reg)) != NULL);
	join_as_root(t);
	CHECK_OK(getrlimit(RLIMIT_MEMLOCK, &memlock));
	if (memlock.rlim_max < VMM_MEMLOCK)
		SKIP("RLIMIT_MEMLOCK's hard limit is below %llu bytes", VMM_MEMLOCK);
	memlock.rlim_cur = VMM_MEMLOCK;
	t->vmm = fork();
	CHECK(t->vmm >= 0);
	if (t->vmm == 0) {
		/* Gone with the test, and holding none of its output open. */
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
		(void)dup2(open("/dev/null", O_WRONLY | O_CLOEXEC), STDOUT_FILENO);
		(void)dup2(STDOUT_FILENO, STDERR_FILENO);
		pause();
		_exit(0);
	}
	CHECK_OK(prlimit(t->vmm, RLIMIT_MEMLOCK, &memlock, NULL));
	hello.client_version = 1;
	hello.lease = "vm1";
	req.method_case = IOMMUD__V1__REQUEST__METHOD_HELLO;
	req.hello = &hello;
	r = call(t, &req);
	CHECK_EQ(r->status ? r->status->code : 0, IOMMUD__V1__CODE__CODE_OK);
	iommud__v1__response__free_unpacked(r, NULL);
}

static void teardown(struct setup *t)
{
	if (t->vmm > 0) {
		(void)kill(t->vmm, SIGKILL);
		(void)waitpid(t->vmm, NULL, 0);
	}
	client_fini(&t->client);
	delegations_destroy(t->d.delegations);
	event_base_free(t->base);
	probes_stop(t->d.probes);
	registry_destroy(t->d.reg);
	config_free(&t->cfg);
	kh_backend_close(t->d.be);
}

static uint64_t delegate(struct setup *t, const char *device)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__DelegateDevicesRequest del = IOMMUD__V1__DELEGATE_DEVICES_REQUEST__INIT;
	char *devices[] = {(char *)device};
	Iommud__V1__Response *r;
	uint64_t id;

	del.devices = devices;
	del.n_devices = 1;
	del.vmm_pid = (uint32_t)t->vmm;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_DELEGATE_DEVICES;
	req.delegate_devices = &del;
	r = call(t, &req);
	if (r->status && r->status->code)
		(void)fprintf(stderr, "delegate: %s\n", r->status->message);
	CHECK(r->result_case == IOMMUD__V1__RESPONSE__RESULT_DELEGATE_DEVICES);
	id = r->delegate_devices->delegation_id;
	iommud__v1__response__free_unpacked(r, NULL);
	return id;
}

/* ListDevices and GetStats both give device state, and GetStats names delegation_id (0: none)
 * as holding it. */
static void expect_state(struct setup *t, const char *device, const char *state,
			 uint64_t delegation_id)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Response *r;
	unsigned seen = 0;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	r = call(t, &req);
	CHECK(r->result_case == IOMMUD__V1__RESPONSE__RESULT_LIST_DEVICES);
	for (size_t i = 0; i < r->list_devices->n_devices; i++)
		if (strcmp(r->list_devices->devices[i]->name, device) == 0) {
			CHECK(strcmp(r->list_devices->devices[i]->state, state) == 0);
			seen++;
		}
	iommud__v1__response__free_unpacked(r, NULL);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	r = call(t, &req);
	CHECK(r->result_case == IOMMUD__V1__RESPONSE__RESULT_GET_STATS);
	for (size_t i = 0; i < r->get_stats->n_devices; i++)
		if (strcmp(r->get_stats->devices[i]->device, device) == 0) {
			CHECK(strcmp(r->get_stats->devices[i]->state, state) == 0);
			CHECK_EQ(r->get_stats->devices[i]->delegation_id, delegation_id);
			seen++;
		}
	iommud__v1__response__free_unpacked(r, NULL);
	CHECK_EQ(seen, 2);
}

/* GetStats' delegations: none, or the one with id, which must name the VMM. */
static void expect_delegation(struct setup *t, uint64_t id)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	const Iommud__V1__Delegation *d;
	Iommud__V1__Response *r;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	r = call(t, &req);
	CHECK(r->result_case == IOMMUD__V1__RESPONSE__RESULT_GET_STATS);
	CHECK_EQ(r->get_stats->n_delegations, id ? 1 : 0);
	if (id) {
		d = r->get_stats->delegations[0];
		CHECK_EQ(d->delegation_id, id);
		CHECK_EQ(d->vmm_pid, (uint32_t)t->vmm);
		CHECK(strcmp(d->tenant, "uid 0 (built in)") == 0);
		CHECK(d->n_devices == 1 && strcmp(d->devices[0], "emu0") == 0);
		CHECK_EQ(d->pinned_bytes_limit, VMM_MEMLOCK);
		CHECK_EQ(d->pinned_bytes, 0); /* the child pins nothing */
	}
	iommud__v1__response__free_unpacked(r, NULL);
}

TEST(delegated_until_the_vmm_exits)
{
	struct setup t;
	uint64_t id;

	setup(&t);
	expect_state(&t, "emu0", "free", 0);
	id = delegate(&t, "emu0");
	CHECK(id != 0);
	expect_state(&t, "emu0", "delegated", id);
	expect_state(&t, "emu1", "free", 0);
	expect_delegation(&t, id);
	CHECK_OK(kill(t.vmm, SIGKILL));
	CHECK(waitpid(t.vmm, NULL, 0) == t.vmm);
	t.vmm = 0;
	/* The pidfd is readable now: the loop ends the delegation. */
	CHECK_OK(event_base_loop(t.base, EVLOOP_ONCE));
	expect_state(&t, "emu0", "free", 0);
	expect_delegation(&t, 0);
	teardown(&t);
}

TEST(delegated_until_the_lease_ends)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	struct setup t;
	uint64_t id;

	setup(&t);
	id = delegate(&t, "emu0");
	expect_state(&t, "emu0", "delegated", id);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &release;
	iommud__v1__response__free_unpacked(call(&t, &req), NULL);
	/* The lease ends with its last connection. */
	client_fini(&t.client);
	join_as_root(&t);
	expect_state(&t, "emu0", "free", 0);
	expect_delegation(&t, 0);
	teardown(&t);
}

/* The VMM here is a child of this process, which stands in for the daemon: its cgroup is the
 * daemon's own (or the root, where the test runs there), shared with processes that are not
 * the VMM. Lending it would count their work to the delegating tenant, so it is refused with
 * one line saying why, and the delegation itself goes ahead. */
TEST(a_cgroup_shared_with_the_daemon_is_not_lent)
{
	char log[4096] = {0};
	struct setup t;
	int saved, captured;
	uint64_t id;

	/* The log line on stderr, where it can be read back, not in the journal. */
	CHECK_OK(unsetenv("JOURNAL_STREAM"));
	setup(&t);
	CHECK((captured = memfd_create("delegate log", MFD_CLOEXEC)) >= 0);
	CHECK((saved = dup(STDERR_FILENO)) >= 0);
	(void)fflush(stderr);
	CHECK(dup2(captured, STDERR_FILENO) == STDERR_FILENO);
	id = delegate(&t, "emu0");
	(void)fflush(stderr);
	CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
	CHECK(pread(captured, log, sizeof(log) - 1, 0) >= 0);
	CHECK_OK(close(saved));
	CHECK_OK(close(captured));
	CHECK(id != 0);
	expect_state(&t, "emu0", "delegated", id);
	CHECK(strstr(log, "maps count to no tenant") != NULL);
	CHECK(strstr(log, "run the VMM in a cgroup of its own") != NULL);
	teardown(&t);
}
