// SPDX-License-Identifier: MIT
/*
 * Who the kernel's map path counts to, on a real kernel (the VM tier; exit 77, skipped, where the
 * backend maps in process or the probes do not reach the fentry tier):
 * - the daemon's own sessions count to their tenant by their descriptor also when the daemon
 *   runs in a pid namespace, whose pids are not the ones the BPF programs see;
 * - a cgroup lent to a delegation (a VMM mapping on its own iommufd) counts to the delegation's
 *   tenant while lent, the latest lending first, and to what it counted to before once
 *   returned.
 * The daemon's session path runs in this process (registry, session, kernel-helper), as
 * iommud-probes-bench runs it, on the first device of the backend the daemon's `auto` picks.
 */
#define _GNU_SOURCE /* unshare */
#include <errno.h>
#include <linux/types.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>
#include <kh/kh.h>

#include "harness.h"
#include "probes/probes.h"
#include "session.h"

#define PAGE	4096u
#define N_PAIRS 8u
#define IOVA	0x100000u

/* The daemon's map path in this process: a session of a tenant without a cgroup of its own, on
 * a domain of the backend's first device. */
struct rig {
	struct config cfg;
	struct kh_backend *be;
	struct registry *reg;
	struct probes *probes;
	struct tenant *tenant;
	struct session *session;
	uint32_t dom;
	int memfd;
	struct map_file file;
};

/* by_descriptor: the registry tells the probes about its sessions' descriptors, as the daemon's
 * does; else only cgroups attribute. */
static void rig_open(struct rig *r, bool by_descriptor)
{
	struct probes_options opts = {.max_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_FENTRY};
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	char no_cgroup[] = "";
	struct peer self = {.pid = getpid(), .cgroup = no_cgroup};
	struct kh_device_info dev;
	enum access granted;
	uint32_t dev_id;

	CHECK_OK(kh_backend_open("auto", NULL, &r->be));
	if (kh_backend_caps(r->be) & KH_CAP_MAP_IN_PROCESS)
		SKIP("the backend maps in this process: no kernel map path to count");
	CHECK_OK(kh_device_info(r->be, 0, &dev));
	CHECK_OK(config_defaults(&r->cfg));
	r->reg = registry_create(r->be, &r->cfg);
	CHECK(r->reg != NULL);
	CHECK_OK(probes_start(&opts, &r->probes));
	if (probes_tier(r->probes) != IOMMUD__V1__PROBE_TIER__PROBE_TIER_FENTRY)
		SKIP("the probes did not reach the fentry tier");
	if (by_descriptor)
		registry_set_probes(r->reg, r->probes);
	CHECK_OK(tenant_get(r->reg, &self, &r->tenant, &granted));
	CHECK_OK(session_join(r->tenant, NULL, &r->session));
	CHECK_OK(session_alloc_domain(r->session, dev.name, &paging, &r->dom));
	CHECK_OK(session_device(r->session, dev.name, false, &dev_id));
	CHECK_OK(kh_attach(session_ctx(r->session), dev_id, r->dom));
	r->memfd = iommuctl_memfd("probes-attr", PAGE);
	CHECK_OK(r->memfd);
	CHECK_OK(session_check_file(r->memfd, &r->file));
}

static void rig_close(struct rig *r)
{
	session_leave(r->session);
	tenant_put(r->tenant);
	registry_set_probes(r->reg, NULL);
	probes_stop(r->probes);
	registry_destroy(r->reg);
	config_free(&r->cfg);
	kh_backend_close(r->be);
	(void)close(r->memfd);
}

static void map_unmap(struct rig *r)
{
	struct map_entry e = {.domain_id = r->dom,
			      .file = &r->file,
			      .length = PAGE,
			      .prot = KH_PROT_READ | KH_PROT_WRITE,
			      .fixed_iova = true,
			      .iova = IOVA};
	uint64_t bytes;
	uint32_t count;

	for (unsigned i = 0; i < N_PAIRS; i++) {
		CHECK_OK(session_map(r->session, &e));
		CHECK_OK(session_unmap(r->session, r->dom, IOVA, PAGE, &bytes, &count));
	}
}

/* Whole map/unmap ioctls counted, per tenant slot, and those not of 4 KiB (the length iommufd
 * copied in, as the ioctl layer reads it). */
struct ioctl_counts {
	uint64_t by_slot[IOMMUD_TENANT_SLOTS];
	uint64_t not_4k;
};

static int add_ioctls(const struct iommud_hist_key *key, const struct iommud_hist *hist, void *arg)
{
	struct ioctl_counts *c = arg;

	if (key->layer != IOMMUD_LAYER_IOCTL || key->tenant >= IOMMUD_TENANT_SLOTS)
		return 0;
	c->by_slot[key->tenant] += hist->count;
	c->not_4k += key->size_class == IOMMUD_SIZE_4K ? 0 : hist->count;
	return 0;
}

/* map_unmap from a child in the cgroup at path (under the v2 mount), as a VMM in a cgroup of its
 * own maps on a context of its own: not the daemon's process, so counted by its cgroup. */
static void map_unmap_in(struct rig *r, const char *path)
{
	int status;
	pid_t child = fork();

	CHECK(child >= 0);
	if (child == 0) {
		char procs[128];
		FILE *f;

		(void)snprintf(procs, sizeof(procs), "/sys/fs/cgroup%s/cgroup.procs", path);
		f = fopen(procs, "w");
		CHECK(f != NULL);
		CHECK(fprintf(f, "%d\n", (int)getpid()) > 0);
		CHECK_OK(fclose(f));
		map_unmap(r);
		_exit(0);
	}
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Maps and unmaps N_PAIRS times (in this process, or from a child in cgroup) and checks that
 * all their ioctls, and only they, counted to slot, as 4 KiB, and none was dropped; slot 0 (no
 * tenant's) may also go uncounted by a process that is not the daemon. */
static void check_counted_to(struct rig *r, unsigned slot, const char *cgroup)
{
	struct ioctl_counts before = {0}, after = {0};

	CHECK_OK(probes_read(r->probes, add_ioctls, &before));
	if (cgroup)
		map_unmap_in(r, cgroup);
	else
		map_unmap(r);
	CHECK_OK(probes_read(r->probes, add_ioctls, &after));
	for (unsigned s = 0; s < IOMMUD_TENANT_SLOTS; s++) {
		uint64_t counted = after.by_slot[s] - before.by_slot[s];

		if (counted)
			(void)printf("slot %u: %llu ioctls\n", s, (unsigned long long)counted);
		if (s == slot && !(slot == 0 && cgroup && counted == 0))
			CHECK_EQ(counted, 2 * N_PAIRS);
		else if (s != slot)
			CHECK_EQ(counted, 0);
	}
	CHECK_EQ(after.not_4k, before.not_4k);
	CHECK_EQ(probes_dropped_events(r->probes), 0u);
}

/* Runs body in a child that is the first process of a new pid namespace, and returns its exit
 * status (77: skipped). */
static int in_new_pid_namespace(void (*body)(void))
{
	int status = 0;
	pid_t outer = fork();

	CHECK(outer >= 0);
	if (outer == 0) {
		pid_t inner;

		if (unshare(CLONE_NEWPID) < 0)
			_exit(errno == EPERM || errno == EINVAL ? 77 : 1);
		inner = fork();
		if (inner == 0) {
			body();
			_exit(0);
		}
		if (inner < 0 || waitpid(inner, &status, 0) != inner || !WIFEXITED(status))
			_exit(1);
		_exit(WEXITSTATUS(status));
	}
	CHECK(waitpid(outer, &status, 0) == outer);
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void session_in_pid_namespace(void)
{
	struct rig r = {0};

	/* The namespace's first process: its getpid() is 1, never the pid the kernel's
	 * programs see. */
	CHECK_EQ(getpid(), 1);
	rig_open(&r, true);
	/* Closed before skipping: the skip exits this child, where LeakSanitizer would otherwise
	 * turn what the rig holds into a failure. */
	if (kh_ctx_kernel_fd(session_ctx(r.session)) < 0) {
		rig_close(&r);
		SKIP("the backend's sessions have no descriptor of their own to count by (VFIO "
		     "type1's containers are per domain)");
	}
	check_counted_to(&r, tenant_label_slot(r.tenant), NULL);
	rig_close(&r);
}

TEST(sessions_count_to_their_tenant_in_a_pid_namespace)
{
	int status = in_new_pid_namespace(session_in_pid_namespace);

	if (status == 77)
		SKIP("see the child's reason above");
	CHECK_EQ(status, 0);
}

/* A cgroup of its own for the VMM's maps, under the cgroup v2 mount (made here in the VM's
 * initramfs, which has none): its id. The lending refuses the root cgroup, which the initramfs
 * runs everything in. */
#define VMM_CGROUP "/iommud-attr-vmm"
static uint64_t vmm_cgroup(void)
{
	struct stat st;

	(void)mkdir("/sys/fs/cgroup", 0755);
	if (stat("/sys/fs/cgroup/cgroup.controllers", &st) < 0)
		CHECK_OK(mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL));
	CHECK(mkdir("/sys/fs/cgroup" VMM_CGROUP, 0755) == 0 || errno == EEXIST);
	CHECK_OK(stat("/sys/fs/cgroup" VMM_CGROUP, &st));
	return st.st_ino;
}

/* Slots of a tenant and of two delegations, as the daemon's labels would number them. */
enum { TENANT_SLOT = 3, FIRST_LENDING_SLOT = 5, SECOND_LENDING_SLOT = 6 };

TEST(lent_cgroup_counts_to_the_delegation_then_back)
{
	uint64_t cgroup, first, second, refused = 1;
	struct rig r = {0};

	rig_open(&r, false);
	cgroup = vmm_cgroup();
	check_counted_to(&r, 0, VMM_CGROUP);
	/* Everyone's cgroup is lent to no one. */
	CHECK_OK(probes_lend_cgroup(r.probes, "/", FIRST_LENDING_SLOT, &refused));
	CHECK_EQ(refused, 0);
	CHECK_OK(probes_lend_cgroup(r.probes, VMM_CGROUP, FIRST_LENDING_SLOT, &first));
	CHECK(first != 0);
	check_counted_to(&r, FIRST_LENDING_SLOT, VMM_CGROUP);
	CHECK_OK(probes_lend_cgroup(r.probes, VMM_CGROUP, SECOND_LENDING_SLOT, &second));
	check_counted_to(&r, SECOND_LENDING_SLOT, VMM_CGROUP);
	/* The first delegation ends while the second lives: the second keeps the cgroup. */
	probes_return_cgroup(r.probes, first);
	check_counted_to(&r, SECOND_LENDING_SLOT, VMM_CGROUP);
	probes_return_cgroup(r.probes, second);
	check_counted_to(&r, 0, VMM_CGROUP);
	/* A tenant's own cgroup counts to it, and is lent to no other tenant's delegation. */
	CHECK_OK(probes_register_cgroup(r.probes, cgroup, TENANT_SLOT));
	check_counted_to(&r, TENANT_SLOT, VMM_CGROUP);
	refused = 1;
	CHECK_OK(probes_lend_cgroup(r.probes, VMM_CGROUP, FIRST_LENDING_SLOT, &refused));
	CHECK_EQ(refused, 0);
	check_counted_to(&r, TENANT_SLOT, VMM_CGROUP);
	probes_unregister_cgroup(r.probes, cgroup);
	check_counted_to(&r, 0, VMM_CGROUP);
	rig_close(&r);
	(void)rmdir("/sys/fs/cgroup" VMM_CGROUP);
}
