// SPDX-License-Identifier: MIT
/* Delegations survive the daemon's death: under the supervisor that keeps the descriptor store
 * as systemd does, a daemon killed with SIGKILL (or re-executing) is followed by one that lists
 * the same delegations, reports their devices delegated and refuses them to other leases, and
 * ends each one when its VMM (a child of the test) exits, even when that happened while no
 * daemon ran. The daemon is iommud with delegation faked into the emulated backend
 * (stand_in_delegation.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>

#include "harness.h"
#include "supervisor.h"

static const char config[] = "probe-tier = off\n[access]\ndefault = none\n"
			     "[uid 0]\naccess = write\ndevices = emu*\nmax-leases = 4\n"
			     "delegate = yes\n";
#define DEVICES "emu0 emu1"

static void call_ok(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

static void start(struct supervisor *sv)
{
	CHECK_OK(setenv("IOMMUD_DAEMON", STAND_IN_BIN, 1));
	/* A delegation's end is said at info. */
	CHECK_OK(setenv("IOMMUD_TEST_LOG_LEVEL", "info", 1));
	supervisor_start(sv, config, DEVICES);
}

static struct iommuctl *connect_lease(struct supervisor *sv, const char *lease)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(sv->f.socket_path, &c));
	call_ok(c, iommuctl_hello(c, "delegation-survival", lease, NULL), "hello");
	return c;
}

/* A VMM that waits to be killed, gone with the test however the test ends, a failed check's
 * abort included: it waits for the end of a pipe that only the test holds open. */
static pid_t start_vmm(void)
{
	static int leash[2] = {-1, -1};
	pid_t pid;
	char byte;

	if (leash[0] < 0)
		CHECK_OK(pipe2(leash, O_CLOEXEC));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		(void)close(leash[1]);
		_exit(read(leash[0], &byte, 1) < 0);
	}
	return pid;
}

static void stop_vmm(pid_t vmm)
{
	CHECK_OK(kill(vmm, SIGKILL));
	CHECK(waitpid(vmm, NULL, 0) == vmm);
}

/* Delegates device to vmm in c's lease; the stand-in fds are not needed. */
static uint64_t delegate(struct iommuctl *c, const char *device, pid_t vmm)
{
	const char *const devices[] = {device};
	int fds[2];
	uint64_t id;

	call_ok(c, iommuctl_delegate(c, devices, 1, (uint32_t)vmm, fds, &id), "delegate");
	(void)close(fds[0]);
	(void)close(fds[1]);
	return id;
}

/* A DelegateDevices of device to vmm that is refused, its message holding why. */
static void expect_delegate_refused(struct iommuctl *c, const char *device, pid_t vmm,
				    const char *why)
{
	const char *const devices[] = {device};
	uint64_t id;
	int fds[2];

	CHECK(iommuctl_delegate(c, devices, 1, (uint32_t)vmm, fds, &id) < 0);
	CHECK(strstr(iommuctl_last_error(c), why) != NULL);
}

static Iommud__V1__Response *call(struct iommuctl *c, Iommud__V1__Request *req)
{
	Iommud__V1__Response *resp;

	call_ok(c, iommuctl_call(c, req, NULL, 0, &resp, NULL, 0, NULL), "call");
	CHECK_EQ(resp->status ? resp->status->code : 0, IOMMUD__V1__CODE__CODE_OK);
	return resp;
}

/* ListDelegations' reply as bytes, to compare whole; its length in *ret_len. */
static uint8_t *list_delegations(struct supervisor *sv, size_t *ret_len)
{
	Iommud__V1__ListDelegationsRequest list = IOMMUD__V1__LIST_DELEGATIONS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	struct iommuctl *c = connect_lease(sv, NULL);
	Iommud__V1__Response *r;
	uint8_t *packed;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DELEGATIONS;
	req.list_delegations = &list;
	r = call(c, &req);
	*ret_len = iommud__v1__list_delegations_reply__get_packed_size(r->list_delegations);
	packed = malloc(*ret_len + 1);
	CHECK(packed != NULL);
	(void)iommud__v1__list_delegations_reply__pack(r->list_delegations, packed);
	iommuctl_response_free(r);
	iommuctl_close(c);
	return packed;
}

static size_t delegations_listed(struct supervisor *sv)
{
	size_t len;

	free(list_delegations(sv, &len));
	return len;
}

static void expect_state(struct supervisor *sv, const char *device, const char *state)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	struct iommuctl *c = connect_lease(sv, NULL);
	Iommud__V1__Response *r;
	bool found = false;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	r = call(c, &req);
	for (size_t i = 0; i < r->list_devices->n_devices; i++)
		if (strcmp(r->list_devices->devices[i]->name, device) == 0) {
			CHECK(strcmp(r->list_devices->devices[i]->state, state) == 0);
			found = true;
		}
	CHECK(found);
	iommuctl_response_free(r);
	iommuctl_close(c);
}

/* Another lease cannot take the device, and is told why. */
static void expect_refused(struct supervisor *sv, const char *device)
{
	struct iommuctl *c = connect_lease(sv, "other");
	uint32_t domain;

	CHECK_EQ(iommuctl_alloc_domain(c, device, IOMMUCTL_DOMAIN_PAGING, 0, &domain), -EBUSY);
	CHECK(strstr(iommuctl_last_error(c), "handed to another process") != NULL);
	iommuctl_close(c);
}

/* The VMM exits under a running daemon, which ends the delegation and takes its pidfd out
 * of the store (the removal is the last thing before the device is free). */
static void vmm_exits(struct supervisor *sv, pid_t vmm)
{
	unsigned long removals;

	/* Removals sent before (a record rewritten) are counted first. */
	supervisor_read_sent(sv);
	removals = supervisor_removals(sv);
	stop_vmm(vmm);
	supervisor_wait_removals(sv, removals);
	CHECK_EQ(delegations_listed(sv), 0);
	expect_state(sv, "emu0", "free");
	supervisor_read_sent(sv);
	CHECK_EQ(supervisor_stored(sv, "lease1.delegation"), 0);
}

/* A supervised daemon whose lease vm1 delegated emu0 to vmm as delegation 1; the lease's
 * connection, still open, in *ret_c if asked for. */
static void start_delegated(struct supervisor *sv, pid_t vmm, struct iommuctl **ret_c)
{
	struct iommuctl *c;

	start(sv);
	c = connect_lease(sv, "vm1");
	CHECK_EQ(delegate(c, "emu0", vmm), 1);
	if (ret_c)
		*ret_c = c;
	else
		iommuctl_close(c);
}

static void kill_and_restart(struct supervisor *sv)
{
	supervisor_kill(sv);
	supervisor_spawn(sv);
}

static void reexecute(struct supervisor *sv)
{
	supervisor_unready(sv);
	CHECK_OK(kill(sv->f.pid, SIGUSR2));
	supervisor_wait_ready(sv);
}

/* The daemon that follows restart lists the delegation byte for byte as before, calls its
 * device delegated and refuses it to another lease, and ends it when the VMM exits. */
static void check_followed_on(void (*restart)(struct supervisor *sv))
{
	struct supervisor sv;
	size_t before_len, after_len;
	uint8_t *before, *after;
	pid_t vmm = start_vmm();

	start_delegated(&sv, vmm, NULL);
	before = list_delegations(&sv, &before_len);
	CHECK(before_len > 0);
	restart(&sv);
	after = list_delegations(&sv, &after_len);
	CHECK(after_len == before_len && memcmp(before, after, before_len) == 0);
	free(before);
	free(after);
	expect_state(&sv, "emu0", "delegated");
	expect_state(&sv, "emu1", "free");
	expect_refused(&sv, "emu0");
	CHECK_EQ(supervisor_stored(&sv, "lease1.delegation1.pidfd"), 1);
	vmm_exits(&sv, vmm);
	CHECK(supervisor_log_has(&sv, "(delegation 1) are free again: the VMM exited"));
	supervisor_stop(&sv);
}

TEST(delegation_survives_kill)
{
	check_followed_on(kill_and_restart);
}

TEST(reexec_keeps_delegation)
{
	check_followed_on(reexecute);
}

TEST(vmm_exits_while_no_daemon_runs)
{
	struct supervisor sv;
	struct iommuctl *c;
	pid_t vmm = start_vmm();

	start_delegated(&sv, vmm, NULL);
	supervisor_kill(&sv);
	stop_vmm(vmm);
	supervisor_spawn(&sv);
	CHECK_EQ(delegations_listed(&sv), 0);
	expect_state(&sv, "emu0", "free");
	CHECK(supervisor_log_has(&sv, "(delegation 1) are free again: the VMM exited while no "
				      "daemon followed it"));
	supervisor_read_sent(&sv);
	CHECK_EQ(supervisor_stored(&sv, "lease1.delegation"), 0);

	/* Ids are never given again, though the record no longer holds the delegation: after
	 * the second restart, only its last id is left in the snapshot. */
	kill_and_restart(&sv);
	kill_and_restart(&sv);
	vmm = start_vmm();
	c = connect_lease(&sv, "vm1");
	CHECK_EQ(delegate(c, "emu0", vmm), 2);
	iommuctl_close(c);
	stop_vmm(vmm);
	supervisor_stop(&sv);
}

/* A lease released before the kill ends with the restart, and its delegation with it: the
 * VMM keeps the devices until it exits, and the log says so. */
TEST(released_lease_ends_its_delegation_at_restart)
{
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	struct supervisor sv;
	struct iommuctl *c;
	pid_t vmm = start_vmm();

	start_delegated(&sv, vmm, &c);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &release;
	iommuctl_response_free(call(c, &req));
	/* The connection keeps the released lease, and the delegation, until the kill. */
	supervisor_kill(&sv);
	iommuctl_close(c);
	supervisor_spawn(&sv);
	CHECK_EQ(delegations_listed(&sv), 0);
	CHECK(supervisor_log_has(&sv, "(delegation 1) are no longer reserved; the VMM still holds "
				      "them until it exits: its lease ended before the restart"));
	expect_state(&sv, "emu0", "free");
	supervisor_read_sent(&sv);
	CHECK_EQ(supervisor_stored(&sv, "lease1.delegation"), 0);
	stop_vmm(vmm);
	supervisor_stop(&sv);
}

/* A DelegateDevices the record cannot take fails, and says the delegation was taken back:
 * the device is free, no delegation listed, and no pidfd left in the store. */
TEST(unrecorded_delegation_is_taken_back)
{
	struct supervisor sv;
	struct iommuctl *c;
	pid_t vmm = start_vmm();

	CHECK_OK(setenv("IOMMUD_TEST_REFUSE_DELEGATION_RECORD", "1", 1));
	start(&sv);
	c = connect_lease(&sv, "vm1");
	expect_delegate_refused(c, "emu0", vmm, "could not be recorded");
	CHECK(strstr(iommuctl_last_error(c), "taken back") != NULL);
	iommuctl_close(c);
	CHECK_EQ(delegations_listed(&sv), 0);
	expect_state(&sv, "emu0", "free");
	supervisor_read_sent(&sv);
	CHECK_EQ(supervisor_stored(&sv, "lease1.delegation"), 0);
	supervisor_stop(&sv);
	unsetenv("IOMMUD_TEST_REFUSE_DELEGATION_RECORD");
	stop_vmm(vmm);
}

/* The store takes the record, one pidfd and the slot a rewritten record needs ($FDSTORE): a
 * second delegation is refused before anything is handed out, and the first survives a kill
 * with its record. */
TEST(full_store_refuses_delegation)
{
	struct supervisor sv;
	struct iommuctl *c;
	pid_t vmm = start_vmm();

	CHECK_OK(setenv("FDSTORE", "3", 1));
	start_delegated(&sv, vmm, &c);
	expect_delegate_refused(c, "emu1", vmm, "no room for the VMM's pidfd");
	iommuctl_close(c);
	expect_state(&sv, "emu1", "free");
	kill_and_restart(&sv);
	expect_state(&sv, "emu0", "delegated");
	CHECK_EQ(supervisor_stored(&sv, "lease1.delegation1.pidfd"), 1);
	vmm_exits(&sv, vmm);
	supervisor_stop(&sv);
	unsetenv("FDSTORE");
}

/* A delegation's end the record cannot take: the snapshot written at once leaves the
 * delegation out, and only then is its pidfd taken out of the store, so a daemon killed right
 * after, with no call between to write a snapshot, finds nothing to end. */
TEST(unrecorded_end_is_recorded_by_a_snapshot)
{
	struct supervisor sv;
	unsigned long removals;
	pid_t vmm = start_vmm();

	CHECK_OK(setenv("IOMMUD_TEST_REFUSE_DELEGATION_RECORD", "end", 1));
	start_delegated(&sv, vmm, NULL);
	supervisor_read_sent(&sv);
	removals = supervisor_removals(&sv);
	stop_vmm(vmm);
	supervisor_wait_removals(&sv, removals);
	kill_and_restart(&sv);
	CHECK_EQ(delegations_listed(&sv), 0);
	expect_state(&sv, "emu0", "free");
	CHECK(!supervisor_log_has(&sv, "no longer followed"));
	supervisor_stop(&sv);
	unsetenv("IOMMUD_TEST_REFUSE_DELEGATION_RECORD");
}

/* A VMM that exited while no daemon ran, but that its parent has not reaped yet, exited all
 * the same: its devices are free, and the log says when it exited. */
TEST(unreaped_vmm_exited_while_no_daemon_runs)
{
	struct supervisor sv;
	siginfo_t info;
	pid_t vmm = start_vmm();

	start_delegated(&sv, vmm, NULL);
	supervisor_kill(&sv);
	CHECK_OK(kill(vmm, SIGKILL));
	CHECK_OK(waitid(P_PID, (id_t)vmm, &info, WEXITED | WNOWAIT));
	supervisor_spawn(&sv);
	CHECK_EQ(delegations_listed(&sv), 0);
	expect_state(&sv, "emu0", "free");
	CHECK(supervisor_log_has(&sv, "(delegation 1) are free again: the VMM exited while no "
				      "daemon followed it"));
	CHECK(waitpid(vmm, NULL, 0) == vmm);
	supervisor_stop(&sv);
}
