// SPDX-License-Identifier: MIT
/* The service manager's descriptor store under a supervisor that keeps it as systemd does: the
 * state record is made on every kernel, and the room a request was admitted with is still there
 * when it ends. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grp.h>
#include <iommuctl.h>
#include <iommud_wire.h>
#include <own_memfd.h>
#include <state_record.h>

#include "check.h"
#include "harness.h"
#include "supervisor.h"

#if defined(__x86_64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#define BATCH_UID 65534u /* the tenant of the lease whose batch runs over several turns */

/* One event-loop thread: the races below send root's requests so that the daemon answers them
 * between the batch's slices, which only fair queuing within one loop promises. On two threads
 * root and the batch run side by side: the batch could end before the test killed it (the
 * abandoned batch then never went down), or be taken back whole before root's GetStats. */
static const char config[] =
	"probe-tier = off\nthreads = 1\n[access]\ndefault = none\n"
	"[uid 0]\naccess = write\ndevices = emu*\n"
	"[uid 65534]\naccess = write\ndevices = emu0\nmax-pinned = 64G\nmax-page-tables = 1G\n";

/* ---- the record's memfd on every kernel ------------------------------------------------- */

/* From now on, in this process and what it starts, memfd_create refuses with EACCES every call
 * whose flags lack MFD_NOEXEC_SEAL, as Linux 6.3 to 6.6 do under vm.memfd_noexec = 2, which
 * the host may not be. */
static void refuse_unsealed_memfds(void)
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
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MFD_NOEXEC_SEAL, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)EACCES),
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

/* Linux 6.3 to 6.6 under vm.memfd_noexec = 2 refuse a memfd not sealed against execution.
 * (Where the kernel knows no such seal, the daemon makes its memfds unsealed as before.) */
TEST(record_made_where_noexec_memfds_are_enforced)
{
	refuse_unsealed_memfds();
	check_record_made();
}

/* ---- a batch's room in the store, kept across its slices ---------------------------------- */

#define PAGE	      4096u
#define BATCH_ENTRIES 32
#define BATCH_BYTES   (1ull << 30) /* of a sparse memfd, at 4 KiB leaves: many turns of work */
#define BATCH_IOVA    ((4ull << 30) + PAGE) /* off every large page boundary */
#define BATCH_FILES   2

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

/* What a GetStats reply says of the batch's progress and of its room in the store. */
struct race_seen {
	uint64_t pinned;    /* the bytes all tenants have mapped */
	uint64_t set_aside; /* store slots held for calls in progress */
};

/* The GetStats reply on fd. */
static struct race_seen stats_seen(int fd)
{
	Iommud__V1__Response *resp;
	const Iommud__V1__GetStatsReply *stats = raw_stats_reply(fd, &resp);
	struct race_seen seen;

	CHECK(stats->descriptor_store != NULL);
	seen = (struct race_seen){.pinned = stats->ceilings->pinned_bytes,
				  .set_aside = stats->descriptor_store->set_aside};
	iommud__v1__response__free_unpacked(resp, NULL);
	return seen;
}

static struct race_seen seen_now(int fd)
{
	raw_send_get_stats(fd);
	return stats_seen(fd);
}

static uint64_t pinned_now(int fd)
{
	return seen_now(fd).pinned;
}

/* The batch's tenant, in a child: lease "batch" with a domain, and on 'g' its MapBatch of
 * BATCH_ENTRIES entries from BATCH_FILES memory files new to the lease, the last one over the
 * first where fail_last (refused once all others are mapped); says 'c' when ready, then 'o'
 * when the batch was acknowledged, else 'f' and the message. */
static void batch_child(const struct supervisor *sv, int report, int go, bool fail_last)
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
	c = supervisor_connect_lease(sv, "batch");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain),
			   "alloc");
	for (size_t i = 0; i < BATCH_FILES; i++)
		CHECK_OK(files[i] = iommuctl_memfd("batch", BATCH_BYTES));
	batch_request(&req, &batch, entries, list, BATCH_ENTRIES, BATCH_FILES, domain, BATCH_IOVA,
		      BATCH_BYTES);
	if (fail_last)
		entries[BATCH_ENTRIES - 1].iova = entries[0].iova;
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

/* The batch's lease against root's lease "other", in a store of four: the record, two files,
 * and the slot kept to rewrite the record. */
struct store_race {
	struct supervisor sv;
	struct iommuctl *root;
	uint32_t domain; /* root's */
	int files[2];	 /* root's, new to its lease */
	int observer;	 /* root's raw connection, for GetStats */
	int report[2], go[2];
	pid_t batch;
	int root_rc; /* root's Map while the daemon was stopped */
};

/* Starts the daemon and the batch. */
static void race_start(struct store_race *r, bool fail_last)
{
	char byte;

	CHECK(setenv("FDSTORE", "4", 1) == 0);
	supervisor_start(&r->sv, config, "emu0 emu1");
	r->root = supervisor_connect_lease(&r->sv, "other");
	supervisor_call_ok(
		r->root,
		iommuctl_alloc_domain(r->root, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &r->domain),
		"alloc");
	for (size_t i = 0; i < 2; i++)
		CHECK_OK(r->files[i] = iommuctl_memfd("other", 16 * PAGE));
	r->observer = raw_connect(&r->sv.f);
	CHECK(pipe2(r->report, O_CLOEXEC) == 0 && pipe2(r->go, O_CLOEXEC) == 0);
	CHECK((r->batch = fork()) >= 0);
	if (r->batch == 0)
		batch_child(&r->sv, r->report[1], r->go[0], fail_last);
	CHECK(read(r->report[0], &byte, 1) == 1 && byte == 'c');
	CHECK(write(r->go[1], "g", 1) == 1);
}

/* Returns once the batch has mapped more than least bytes; every GetStats is answered between
 * its slices, so progress shows before its end. */
static void race_wait_progress(struct store_race *r, uint64_t least)
{
	while (pinned_now(r->observer) <= least)
		CHECK(poll(&(struct pollfd){.fd = r->report[0], .events = POLLIN}, 1, 0) == 0);
}

/* The batch's reply, as batch_child reports it ('o' or 'f' and the message). */
static void race_batch_said(struct store_race *r, char *said, size_t size)
{
	int status;

	CHECK(read(r->report[0], said, size) > 0);
	CHECK(waitpid(r->batch, &status, 0) == r->batch && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
}

/* Ends it all; the root connection and the observer may be closed already (NULL, -1). */
static void race_stop(struct store_race *r)
{
	if (r->observer >= 0)
		(void)close(r->observer);
	if (r->root)
		iommuctl_close(r->root);
	supervisor_stop(&r->sv);
	unsetenv("FDSTORE");
	for (size_t i = 0; i < 2; i++) {
		(void)close(r->files[i]);
		(void)close(r->report[i]);
		(void)close(r->go[i]);
	}
}

/* Root's lease maps two files new to it in one MapBatch of a page each. */
static void *map_two_new_files(void *arg)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry entries[2], *list[2];
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct store_race *r = arg;

	batch_request(&req, &batch, entries, list, 2, 2, r->domain, 1ull << 32, PAGE);
	r->root_rc = iommuctl_call(r->root, &req, r->files, 2, &resp, NULL, 0, NULL);
	if (r->root_rc >= 0)
		iommuctl_response_free(resp);
	return NULL;
}

/* Root's Map and the observer's GetStats, both sent while the daemon is stopped, so that the
 * daemon, resumed, answers them between the slices of the work it was doing; returns the
 * bytes the GetStats saw mapped then. */
static uint64_t root_maps_between_slices(struct store_race *r)
{
	pthread_t mapper;
	int status, queued = 0;

	CHECK_EQ(kill(r->sv.f.pid, SIGSTOP), 0);
	CHECK(waitpid(r->sv.f.pid, &status, WUNTRACED) == r->sv.f.pid && WIFSTOPPED(status));
	CHECK_EQ(pthread_create(&mapper, NULL, map_two_new_files, r), 0);
	/* Sent once the daemon's end holds it: a unix socket counts it against the sender. */
	while (queued == 0) {
		CHECK_OK(ioctl(iommuctl_fd(r->root), SIOCOUTQ, &queued));
		if (queued == 0)
			(void)usleep(1000);
	}
	raw_send_get_stats(r->observer);
	CHECK_EQ(kill(r->sv.f.pid, SIGCONT), 0);
	CHECK_EQ(pthread_join(mapper, NULL), 0);
	return stats_seen(r->observer).pinned;
}

/* The batch is let in with the store's room for its files; root's lease, mapping two new files
 * while the batch is between slices, must not take that room (on a daemon that checked the
 * room only when the batch began, it did, and the manager refused the batch's last file in
 * silence at its end: the record named a file the store did not hold). */
TEST(batch_keeps_its_room_between_slices)
{
	struct store_race r;
	char said[1024];

	race_start(&r, false);
	race_wait_progress(&r, 0);
	CHECK_EQ(seen_now(r.observer).set_aside, BATCH_FILES);
	CHECK(root_maps_between_slices(&r) < BATCH_ENTRIES * BATCH_BYTES);
	CHECK(r.root_rc < 0);
	CHECK(strstr(iommuctl_last_error(r.root), "descriptor store") != NULL);
	race_batch_said(&r, said, sizeof(said));
	if (said[0] != 'o')
		(void)fprintf(stderr, "the batch failed: %s\n", said + 1);
	CHECK_EQ(said[0], 'o');
	supervisor_read_sent(&r.sv);
	CHECK_EQ(supervisor_stored(&r.sv, "lease"), BATCH_FILES);
	iommuctl_close(r.root);
	r.root = NULL;
	(void)close(r.observer);
	/* What the record names, the store holds: the next daemon rebuilds the whole batch. */
	supervisor_kill(&r.sv);
	supervisor_spawn(&r.sv);
	r.observer = raw_connect(&r.sv.f);
	CHECK_EQ(pinned_now(r.observer), BATCH_ENTRIES * BATCH_BYTES);
	race_stop(&r);
}

/* A batch refused at its last entry gives its room back: root's two new files fit after it. */
TEST(failed_batch_gives_its_room_back)
{
	struct store_race r;
	char said[1024];

	race_start(&r, true);
	race_batch_said(&r, said, sizeof(said));
	CHECK_EQ(said[0], 'f');
	(void)map_two_new_files(&r);
	if (r.root_rc < 0)
		(void)fprintf(stderr, "root's map failed: %s\n", iommuctl_last_error(r.root));
	CHECK_OK(r.root_rc);
	race_stop(&r);
}

/* The calling thread (and the threads it starts) runs before any ordinary task, or again as
 * one: what the test must see of the daemon lasts a few milliseconds, about as long as a task
 * woken on a busy machine may wait for a CPU. Children start as ordinary tasks. */
static void observe_promptly(bool promptly)
{
	struct sched_param param = {.sched_priority = promptly ? 1 : 0};

	if (sched_setscheduler(0, promptly ? SCHED_FIFO | SCHED_RESET_ON_FORK : SCHED_OTHER,
			       &param) < 0)
		(void)fprintf(stderr,
			      "cannot %s real-time priority (%s): on a busy machine the test may "
			      "look too late\n",
			      promptly ? "take" : "drop", strerror(errno));
}

/* A batch whose client is gone is taken back over many slices, storing nothing: its room in
 * the store is given back as the take-back begins, so that a GetStats answered between the
 * take-back's slices (what is mapped has gone down, not to nothing) shows none set aside, and
 * root's two new files fit. Taking a large mapping back drops whole page tables and takes a
 * few milliseconds, so the test watches at real-time priority; should it still look only once
 * all of it is gone, that attempt proves nothing and is made again, a few times at most. */
TEST(abandoned_batch_gives_its_room_back_at_once)
{
	for (int attempt = 1;; attempt++) {
		struct store_race r;
		struct race_seen now;
		uint64_t most = 0;

		race_start(&r, false);
		/* Far enough in that taking it back takes many slices. */
		race_wait_progress(&r, BATCH_ENTRIES * BATCH_BYTES / 4 * 3);
		CHECK_EQ(seen_now(r.observer).set_aside, BATCH_FILES);
		observe_promptly(true);
		CHECK_EQ(kill(r.batch, SIGKILL), 0);
		/* Taken back once what is mapped goes down; all of it gone, too late to look. */
		while ((now = seen_now(r.observer)).pinned >= most && now.pinned > 0)
			most = now.pinned;
		observe_promptly(false);
		CHECK(waitpid(r.batch, NULL, 0) == r.batch);
		if (now.pinned > 0) {
			CHECK_EQ(now.set_aside, 0);
			(void)map_two_new_files(&r);
			if (r.root_rc < 0)
				(void)fprintf(stderr, "root's map failed: %s\n",
					      iommuctl_last_error(r.root));
			CHECK_OK(r.root_rc);
			race_stop(&r);
			return;
		}
		(void)fprintf(stderr,
			      "attempt %d: the batch was all taken back before the test looked\n",
			      attempt);
		race_stop(&r);
		CHECK(attempt < 5);
	}
}

/* ---- the store's size against what the configuration may need --------------------------- */

/* Two leases in all, of ten mappings each: the record and its next generation, and ten files
 * per lease twice (headroom for files no mapping uses until the next snapshot). */
#define SMALL_LEASES   2
#define SMALL_MAPPINGS 10
#define SMALL_NEED     (2 + 2 * SMALL_LEASES * SMALL_MAPPINGS)
#define TEXT(x)	       #x
#define NUMBER(x)      TEXT(x)
static const char small_config[] = "probe-tier = off\nmax-leases-total = " NUMBER(
	SMALL_LEASES) "\n[access]\ndefault = none\n[uid 0]\naccess = write\ndevices = emu*\n"
		      "max-mappings = " NUMBER(SMALL_MAPPINGS) "\n";

/* Whether a daemon told by variable that its store takes store descriptors says that is too
 * few, with the numbers, where the size came from, and what to do: the drop-in's two lines,
 * and a stop before the daemon-reload. */
static bool says_too_small(const char *variable, unsigned store)
{
	struct supervisor sv;
	char text[160];
	bool said;

	(void)snprintf(text, sizeof(text), "%u", store);
	CHECK(setenv(variable, text, 1) == 0);
	supervisor_start(&sv, small_config, "emu0");
	said = supervisor_log_has(&sv, "may need");
	(void)snprintf(text, sizeof(text),
		       "descriptor store keeps %u descriptors ($%s), and the leases the "
		       "configuration allows may need %u",
		       store, variable, SMALL_NEED);
	CHECK(!said || supervisor_log_has(&sv, text));
	(void)snprintf(text, sizeof(text),
		       "'FileDescriptorStoreMax=%u' and 'Environment=IOMMUD_FDSTORE_MAX=%u'",
		       SMALL_NEED, SMALL_NEED);
	CHECK(!said || supervisor_log_has(&sv, text));
	CHECK(!said ||
	      supervisor_log_has(&sv, "'systemctl stop iommud', 'systemctl daemon-reload'"));
	supervisor_stop(&sv);
	unsetenv(variable);
	return said;
}

/* One descriptor short is said at start; enough is not. As systemd 254 and later say the size
 * ($FDSTORE), and as an administrator's override says it for systemd before 254. */
TEST(start_says_store_too_small)
{
	CHECK(says_too_small("FDSTORE", SMALL_NEED - 1));
	CHECK(!says_too_small("FDSTORE", SMALL_NEED));
	CHECK(says_too_small("IOMMUD_FDSTORE_MAX", SMALL_NEED - 1));
	CHECK(!says_too_small("IOMMUD_FDSTORE_MAX", SMALL_NEED));
}
