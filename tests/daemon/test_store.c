// SPDX-License-Identifier: MIT
/* The service manager's descriptor store under a supervisor that keeps it as systemd does: the
 * state record is made on every kernel, and the room a request was admitted with is still there
 * when it ends. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grp.h>
#include <iommuctl.h>
#include <iommud_wire.h>
#include <state_record.h>

#include "check.h"
#include "harness.h"
#include "supervisor.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

#if defined(__x86_64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#define BATCH_UID 65534u /* the tenant of the lease whose batch runs over several turns */

static const char config[] =
	"probe-tier = off\n[access]\ndefault = none\n"
	"[uid 0]\naccess = write\ndevices = emu*\n"
	"[uid 65534]\naccess = write\ndevices = emu0\nmax-pinned = 64G\nmax-page-tables = 1G\n";

/* ---- the record's memfd on every kernel ------------------------------------------------- */

/* From now on, in this process and what it starts, memfd_create refuses with err every call
 * whose flags hold MFD_NOEXEC_SEAL (sealed) or lack it (!sealed): a kernel older than the flag,
 * or one of Linux 6.3 to 6.6 under vm.memfd_noexec = 2, which the host may not be. */
static void refuse_memfds(bool sealed, int err)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HOST_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		/* The flags' low word, where both architectures keep MFD_NOEXEC_SEAL. */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MFD_NOEXEC_SEAL, sealed ? 0 : 1,
			 sealed ? 1 : 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};

	CHECK_OK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	CHECK_OK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog));
}

/* The daemon starts with a record in the store, and neither of its memfds was refused. */
static void check_record_made(void)
{
	struct supervisor sv;

	supervisor_start(&sv, config, "emu0");
	CHECK_EQ(supervisor_stored(&sv, STATE_RECORD_PREFIX), 1);
	CHECK(!supervisor_log_has(&sv, "cannot create a state record"));
	CHECK(!supervisor_log_has(&sv, "cannot make a memfd"));
	supervisor_stop(&sv);
}

/* Linux 6.3 to 6.6 under vm.memfd_noexec = 2 refuse a memfd not sealed against execution. */
TEST(record_made_where_noexec_memfds_are_enforced)
{
	refuse_memfds(false, EACCES);
	check_record_made();
}

/* Kernels before 6.3 know no MFD_NOEXEC_SEAL. */
TEST(record_made_where_noexec_seal_is_unknown)
{
	refuse_memfds(true, EINVAL);
	check_record_made();
}

/* ---- a batch's room in the store, kept across its slices ---------------------------------- */

#define PAGE	      4096u
#define BATCH_ENTRIES 32
#define BATCH_BYTES   (1ull << 30) /* of a sparse memfd, at 4 KiB leaves: many turns of work */
#define BATCH_IOVA    ((4ull << 30) + PAGE) /* off every large page boundary */
#define BATCH_FILES   2

static void call_ok(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

static struct iommuctl *connect_lease(const struct supervisor *sv, const char *lease)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(sv->f.socket_path, &c));
	call_ok(c, iommuctl_hello(c, "store", lease, NULL), "hello");
	return c;
}

/* A MapBatch of n entries, each length bytes from file entry % n_files at iova + i * step. */
static void batch_request(Iommud__V1__Request *req, Iommud__V1__MapBatchRequest *batch,
			  Iommud__V1__MapEntry *entries, Iommud__V1__MapEntry **list, size_t n,
			  size_t n_files, uint32_t domain, uint64_t iova, uint64_t length)
{
	for (size_t i = 0; i < n; i++) {
		iommud__v1__map_entry__init(&entries[i]);
		entries[i].domain_id = domain;
		entries[i].fd_index = (uint32_t)(i % n_files);
		entries[i].length = length;
		entries[i].prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
		entries[i].fixed_iova = true;
		entries[i].iova = iova + i * length;
		list[i] = &entries[i];
	}
	batch->n_entries = n;
	batch->entries = list;
	req->method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req->map_batch = batch;
}

/* The bytes all tenants have mapped, as root's GetStats on its own connection fd says. */
static uint64_t pinned_now(int fd)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	uint64_t pinned;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	raw_send_request(fd, &req, NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	pinned = resp->get_stats->ceilings->pinned_bytes;
	iommud__v1__response__free_unpacked(resp, NULL);
	return pinned;
}

/* The batch's tenant, in a child: lease "batch" with a domain, and on 'g' its MapBatch of
 * BATCH_ENTRIES entries from BATCH_FILES memory files new to the lease; says 'c' when ready,
 * then 'o' when the batch was acknowledged, else 'f' and the message. */
static void batch_child(const struct supervisor *sv, int report, int go)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry entries[BATCH_ENTRIES], *list[BATCH_ENTRIES];
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct iommuctl *c;
	int files[BATCH_FILES];
	uint32_t domain;
	char byte, said[1024];

	if (setgroups(0, NULL) < 0 || setgid((gid_t)BATCH_UID) < 0 || setuid(BATCH_UID) < 0)
		_exit(99);
	c = connect_lease(sv, "batch");
	call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain), "alloc");
	for (size_t i = 0; i < BATCH_FILES; i++)
		CHECK_OK(files[i] = iommuctl_memfd("batch", BATCH_BYTES));
	batch_request(&req, &batch, entries, list, BATCH_ENTRIES, BATCH_FILES, domain, BATCH_IOVA,
		      BATCH_BYTES);
	CHECK(write(report, "c", 1) == 1);
	CHECK(read(go, &byte, 1) == 1 && byte == 'g');
	if (iommuctl_call(c, &req, files, BATCH_FILES, &resp, NULL, 0, NULL) < 0) {
		(void)snprintf(said, sizeof(said), "f%s", iommuctl_last_error(c));
	} else {
		(void)snprintf(said, sizeof(said), "o");
		iommuctl_response_free(resp);
	}
	CHECK(write(report, said, strlen(said) + 1) == (ssize_t)strlen(said) + 1);
	iommuctl_close(c);
	_exit(0);
}

/* Root's lease maps two files new to it in one MapBatch of a page each. */
static int map_two_new_files(struct iommuctl *c, uint32_t domain, const int files[2])
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry entries[2], *list[2];
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	int rc;

	batch_request(&req, &batch, entries, list, 2, 2, domain, 1ull << 32, PAGE);
	rc = iommuctl_call(c, &req, files, 2, &resp, NULL, 0, NULL);
	if (rc >= 0)
		iommuctl_response_free(resp);
	return rc;
}

/* A store of four: the record, the batch's two files, and the slot kept to rewrite the record.
 * The batch is let in with the store's room for its files; root's lease, mapping two new files
 * while the batch is between slices, must not take that room (on a daemon that checked the
 * room only when the batch began, it did, and the manager refused the batch's last file in
 * silence at its end: the record named a file the store did not hold). */
TEST(batch_keeps_its_room_between_slices)
{
	struct supervisor sv;
	struct iommuctl *root;
	int report[2], go[2], files[2], observer, status;
	uint32_t domain;
	char said[1024];
	pid_t pid;

	CHECK(setenv("FDSTORE", "4", 1) == 0);
	supervisor_start(&sv, config, "emu0 emu1");
	root = connect_lease(&sv, "other");
	call_ok(root, iommuctl_alloc_domain(root, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &domain),
		"alloc");
	for (size_t i = 0; i < 2; i++)
		CHECK_OK(files[i] = iommuctl_memfd("other", 16 * PAGE));
	observer = raw_connect(&sv.f);
	CHECK(pipe2(report, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0);
	CHECK((pid = fork()) >= 0);
	if (pid == 0)
		batch_child(&sv, report[1], go[0]);
	CHECK(read(report[0], said, 1) == 1 && said[0] == 'c');
	CHECK(write(go[1], "g", 1) == 1);
	/* Root maps once the batch is under way, as soon as it has mapped anything. */
	while (pinned_now(observer) == 0)
		CHECK(poll(&(struct pollfd){.fd = report[0], .events = POLLIN}, 1, 0) == 0);
	CHECK(map_two_new_files(root, domain, files) < 0);
	CHECK(strstr(iommuctl_last_error(root), "descriptor store") != NULL);
	/* Answered between the batch's slices: a batch only adds until it ends. */
	CHECK(pinned_now(observer) < BATCH_ENTRIES * BATCH_BYTES);
	CHECK(read(report[0], said, sizeof(said)) > 0);
	if (said[0] != 'o')
		(void)fprintf(stderr, "the batch failed: %s\n", said + 1);
	CHECK_EQ(said[0], 'o');
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	supervisor_read_sent(&sv);
	CHECK_EQ(supervisor_stored(&sv, "lease"), BATCH_FILES);
	(void)close(observer);
	iommuctl_close(root);
	/* What the record names, the store holds: the next daemon rebuilds the whole batch. */
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	observer = raw_connect(&sv.f);
	CHECK_EQ(pinned_now(observer), BATCH_ENTRIES * BATCH_BYTES);
	(void)close(observer);
	supervisor_stop(&sv);
	unsetenv("FDSTORE");
	for (size_t i = 0; i < 2; i++)
		(void)close(files[i]);
	for (size_t i = 0; i < 2; i++) {
		(void)close(report[i]);
		(void)close(go[i]);
	}
}

/* ---- the store's size against what the configuration may need --------------------------- */

/* Two leases in all, of ten mappings each: the record and its next generation, and ten files
 * per lease. */
#define SMALL_LEASES   2
#define SMALL_MAPPINGS 10
#define TEXT(x)	       #x
#define NUMBER(x)      TEXT(x)
static const char small_config[] = "probe-tier = off\nmax-leases-total = " NUMBER(
	SMALL_LEASES) "\n[access]\ndefault = none\n[uid 0]\naccess = write\ndevices = emu*\n"
		      "max-mappings = " NUMBER(SMALL_MAPPINGS) "\n";

/* Whether a daemon told by variable that its store takes store descriptors says that is too
 * few, with the numbers and what to do. */
static bool says_too_small(const char *variable, unsigned store)
{
	struct supervisor sv;
	char text[128];
	bool said;

	(void)snprintf(text, sizeof(text), "%u", store);
	CHECK(setenv(variable, text, 1) == 0);
	supervisor_start(&sv, small_config, "emu0");
	said = supervisor_log_has(&sv, "may need");
	(void)snprintf(text, sizeof(text),
		       "descriptor store keeps %u descriptors, and the leases the configuration "
		       "allows may need %u",
		       store, 2 + SMALL_LEASES * SMALL_MAPPINGS);
	CHECK(!said || supervisor_log_has(&sv, text));
	CHECK(!said || supervisor_log_has(&sv, "systemctl daemon-reload") ||
	      supervisor_log_has(&sv, "Environment=IOMMUD_FDSTORE_MAX="));
	supervisor_stop(&sv);
	unsetenv(variable);
	return said;
}

/* One descriptor short is said at start; enough is not. As systemd 254 and later say the size
 * ($FDSTORE), and as the generator's drop-in says it for systemd before 254. */
TEST(start_says_store_too_small)
{
	CHECK(says_too_small("FDSTORE", 1 + SMALL_LEASES * SMALL_MAPPINGS));
	CHECK(!says_too_small("FDSTORE", 2 + SMALL_LEASES * SMALL_MAPPINGS));
	CHECK(says_too_small("IOMMUD_FDSTORE_MAX", 1 + SMALL_LEASES * SMALL_MAPPINGS));
	CHECK(!says_too_small("IOMMUD_FDSTORE_MAX", 2 + SMALL_LEASES * SMALL_MAPPINGS));
}
