/* SPDX-License-Identifier: MIT */
/*
 * The daemon through its socket, as clients see it: the methods, the session and lease
 * lifetimes, tenants kept apart, and every class of bad input (malformed packets, wrong fds,
 * other tenants' ids, overflowing ranges, exhausted quotas, missing permissions). After each
 * bad input the daemon must still serve, hold no extra descriptor, and finally stop cleanly
 * (under ASan, LeakSanitizer checks it freed everything).
 *
 * Other tenants are child processes with other uids, so the test needs root; without it the
 * cases that need them are skipped with a message.
 *
 * Each case gets a daemon of its own (the fixture), with another tenant's lease set up before
 * the case and checked after it, and the daemon's descriptors and memory checked back at what
 * they were.
 */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"

#define PAGE		   4096ull
#define WRITER_UID	   65534u /* may take emu1 only; small quotas */
#define READER_UID	   65533u /* read-only */
#define STRANGER_UID	   65532u /* in no section: the default, none */
#define BYSTANDER_UID	   65531u /* holds a lease through everything, must find it intact */
#define BYSTANDER_MAPPINGS 3

static const char config[] =
	"[access]\ndefault = none\n"
	"[uid 0]\naccess = write\ndevices = emu*\nmax-domains = 6\nmax-mappings = 8\n"
	"max-pinned = 256K\n"
	"[uid 65534]\naccess = write\ndevices = emu1\n"
	"[uid 65533]\naccess = read\nstats = all\n"
	"[uid 65531]\naccess = write\ndevices = emu2\n";

/* The daemon of the running case: each case runs in a process of its own. */
static struct daemon_fixture daemon_under_test;

FIXTURE(daemon)
{
	int baseline; /* the daemon's descriptors before the case */
};

/* The daemon learns of a closed connection when its event loop gets to it, which may be after
 * the next request of another connection; state that follows a close is awaited, for 5 s. */
#define EVENTUALLY(cond)                                                                           \
	do {                                                                                       \
		struct timespec eventually_pause_ = {0, 10 * 1000 * 1000};                         \
		int eventually_i_ = 0;                                                             \
		while (!(cond) && eventually_i_++ < 500)                                           \
			nanosleep(&eventually_pause_, NULL);                                       \
		CHECK(cond);                                                                       \
	} while (0)

#define EXPECT_CODE(c, expr, code_name)                                                            \
	do {                                                                                       \
		int expect_rc_ = (expr);                                                           \
		if (expect_rc_ >= 0 ||                                                             \
		    iommuctl_last_code(c) != IOMMUD__V1__CODE__CODE_##code_name) {                 \
			(void)fprintf(stderr, "%s:%d: %s gave %d (%s: %s), expected %s\n",         \
				      __FILE__, __LINE__, #expr, expect_rc_,                       \
				      iommuctl_code_name(iommuctl_last_code(c)),                   \
				      iommuctl_last_error(c), #code_name);                         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define CHECK_CALL(c, expr)                                                                        \
	do {                                                                                       \
		int check_rc_ = (expr);                                                            \
		if (check_rc_ < 0) {                                                               \
			(void)fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, \
				      iommuctl_last_error(c));                                     \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static struct iommuctl *connect_client(const char *lease)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	if (lease)
		CHECK_CALL(c, iommuctl_hello(c, "test", lease, NULL));
	return c;
}

static int memfd_of(uint64_t size)
{
	int fd = iommuctl_memfd("test", size);

	CHECK_OK(fd);
	return fd;
}

static Iommud__V1__Response *call(struct iommuctl *c, Iommud__V1__Request *req, const int *fds,
				  size_t n_fds)
{
	Iommud__V1__Response *resp;

	CHECK_OK(iommuctl_send(c, req, fds, n_fds, NULL));
	CHECK_OK(iommuctl_recv(c, &resp, NULL, 0, NULL));
	return resp;
}

static Iommud__V1__Quota quota_of(struct iommuctl *c)
{
	Iommud__V1__Quota quota;

	fixture_stats(c, &quota, NULL);
	return quota;
}

/* Calls a method whose request has no fields (ListDevices, ListDomains, ReleaseLease). */
static Iommud__V1__Response *call_bare(struct iommuctl *c, Iommud__V1__Request__MethodCase method)
{
	const ProtobufCFieldDescriptor *field =
		protobuf_c_message_descriptor_get_field(&iommud__v1__request__descriptor, method);
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	ProtobufCMessage empty;

	CHECK(field && field->descriptor);
	CHECK_EQ(((const ProtobufCMessageDescriptor *)field->descriptor)->sizeof_message,
		 sizeof(empty));
	protobuf_c_message_init(field->descriptor, &empty);
	req.method_case = method;
	/* Every member of the method union is a message pointer at the same place. */
	req.list_devices = (Iommud__V1__ListDevicesRequest *)&empty;
	return call(c, &req, NULL, 0);
}

static size_t domain_count(struct iommuctl *c)
{
	Iommud__V1__Response *resp = call_bare(c, IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS);
	size_t n;

	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	n = resp->list_domains->n_domains;
	iommuctl_response_free(resp);
	return n;
}

/* The IOVAs of a domain's mappings, and their prots where prots is not NULL, in IOVA order,
 * paging through ListMappings; how many there are. */
static size_t list_mappings_prots(struct iommuctl *c, uint32_t dom, uint64_t *iovas,
				  uint32_t *prots, size_t max)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	size_t n = 0;
	bool more = true;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &list;
	list.domain_id = dom;
	list.max = 2; /* small pages, so paging itself is tested */
	while (more) {
		Iommud__V1__Response *resp = call(c, &req, NULL, 0);

		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		CHECK(resp->list_mappings->n_mappings <= 2);
		for (size_t i = 0; i < resp->list_mappings->n_mappings; i++) {
			CHECK(n < max);
			if (prots)
				prots[n] = resp->list_mappings->mappings[i]->prot;
			iovas[n++] = resp->list_mappings->mappings[i]->iova;
		}
		more = resp->list_mappings->more;
		list.from = resp->list_mappings->next_from;
		iommuctl_response_free(resp);
	}
	return n;
}

static size_t list_mappings(struct iommuctl *c, uint32_t dom, uint64_t *iovas, size_t max)
{
	return list_mappings_prots(c, dom, iovas, NULL, max);
}

static bool has_capability(const Iommud__V1__HelloReply *hello, const char *name)
{
	for (size_t i = 0; i < hello->n_capabilities; i++)
		if (strcmp(hello->capabilities[i], name) == 0)
			return true;
	return false;
}

/* ---- the methods, as a client uses them ------------------------------------------------ */

TEST_F(daemon, basic_flow)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__HelloReply *hello;
	uint64_t iova, bytes, iovas[8];
	uint32_t dom;
	int mem = memfd_of(4 * PAGE);

	CHECK_CALL(c, iommuctl_hello(c, "test", NULL, &hello));
	CHECK_EQ(hello->protocol_version, 1);
	CHECK_EQ(hello->backend, IOMMUD__V1__BACKEND__BACKEND_EMULATED);
	CHECK_EQ(hello->uid, getuid());
	CHECK_EQ(hello->n_permissions, 2);
	CHECK_EQ(hello->max_message_bytes, IOMMUCTL_MAX_MESSAGE);
	/* The emulated backend has no VFIO devices to hand out: OpenDevice is not offered. */
	CHECK(has_capability(hello, "map_batch"));
	CHECK(has_capability(hello, "map_batch_columns"));
	CHECK(has_capability(hello, "map_batch_picked_iovas"));
	CHECK(!has_capability(hello, "open_device"));
	/* Nor does it remap anything, and says so. */
	CHECK(hello->nothing_remapped);
	CHECK(!has_capability(hello, "dma_remapping"));
	iommud__v1__hello_reply__free_unpacked(hello, NULL);

	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK_CALL(c,
		   iommuctl_map_fd(c, dom, mem, 0, 2 * PAGE, IOMMUCTL_PROT_READ, false, 0, &iova));
	CHECK_EQ(iova % PAGE, 0);
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 2 * PAGE, PAGE,
				      IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0,
				      &(uint64_t){0x100000}));
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 3 * PAGE, PAGE, IOMMUCTL_PROT_READ, true, 0,
				      &(uint64_t){0x200000}));
	CHECK_EQ(list_mappings(c, dom, iovas, 8), 3);
	CHECK(iovas[0] < iovas[1] && iovas[1] < iovas[2]);
	CHECK_EQ(quota_of(c).pinned_bytes, 4 * PAGE);
	CHECK_CALL(c, iommuctl_attach(c, "emu0", dom));
	CHECK_CALL(c, iommuctl_detach(c, "emu0"));
	/* Unmap takes whole mappings only; a range cutting one changes nothing. */
	EXPECT_CODE(c, iommuctl_unmap(c, dom, iova, PAGE, NULL), INVALID_ARGUMENT);
	CHECK_CALL(c, iommuctl_unmap(c, dom, iova, 2 * PAGE, &bytes));
	CHECK_EQ(bytes, 2 * PAGE);
	EXPECT_CODE(c, iommuctl_unmap(c, dom, iova, 2 * PAGE, NULL), NOT_FOUND);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, &bytes));
	CHECK_EQ(bytes, 2 * PAGE);
	CHECK_EQ(quota_of(c).pinned_bytes, 0);
	CHECK_CALL(c, iommuctl_free_domain(c, dom));
	EXPECT_CODE(c, iommuctl_free_domain(c, dom), NOT_FOUND);
	EXPECT_CODE(c, iommuctl_open_device(c, "emu0"), UNIMPLEMENTED);
	(void)close(mem);
	iommuctl_close(c);
}

/* A MapBatch that failed with code at failed_index (its message saying says, unless NULL) left
 * nothing mapped in dom, nor charged. */
static void expect_batch_failed(struct iommuctl *c, Iommud__V1__Response *resp, uint32_t dom,
				Iommud__V1__Code code, int failed_index, const char *says)
{
	uint64_t iovas[8];

	CHECK_EQ(resp->status->code, code);
	CHECK_EQ(resp->status->failed_index, failed_index);
	CHECK(!says || strstr(resp->status->message, says));
	iommuctl_response_free(resp);
	CHECK_EQ(list_mappings(c, dom, iovas, 8), 0);
	CHECK_EQ(quota_of(c).mappings, 0);
}

/* MapBatch maps every entry or none. */
TEST_F(daemon, map_batch)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__MapEntry e[3], *entries[3] = {&e[0], &e[1], &e[2]};
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	int fds[2] = {memfd_of(4 * PAGE), memfd_of(PAGE)};
	uint64_t iovas[8];
	uint32_t dom;

	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	for (int i = 0; i < 3; i++) {
		iommud__v1__map_entry__init(&e[i]);
		e[i].domain_id = dom;
		e[i].length = PAGE;
		e[i].prot = IOMMUCTL_PROT_READ;
		e[i].fixed_iova = true;
		e[i].iova = 0x10000 * (uint64_t)(i + 1);
		e[i].offset = PAGE * (uint64_t)i;
	}
	e[1].fd_index = 1;
	e[1].offset = 0;
	e[2].iova = e[0].iova; /* overlaps the first: the batch must fail whole */
	batch.entries = entries;
	batch.n_entries = 3;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	expect_batch_failed(c, call(c, &req, fds, 2), dom, IOMMUD__V1__CODE__CODE_ALREADY_EXISTS, 2,
			    NULL);

	e[2].iova = 0x30000;
	resp = call(c, &req, fds, 2);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	CHECK_EQ(resp->map_batch->n_iovas, 3);
	CHECK_EQ(resp->map_batch->iovas[2], 0x30000);
	iommuctl_response_free(resp);
	CHECK_EQ(list_mappings(c, dom, iovas, 8), 3);

	/* A descriptor no entry uses is a client bug, reported rather than ignored. */
	batch.n_entries = 1;
	e[0].iova = 0x90000;
	resp = call(c, &req, fds, 2);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT);
	iommuctl_response_free(resp);
	/* An entry naming a descriptor the packet lacks. */
	e[0].fd_index = 5;
	resp = call(c, &req, fds, 2);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT);
	CHECK_EQ(resp->status->failed_index, 0);
	iommuctl_response_free(resp);
	(void)close(fds[0]);
	(void)close(fds[1]);
	iommuctl_close(c);
}

/* Sends a MapBatch in the compact form: the columns' values as they stand. */
static Iommud__V1__Response *map_columns(struct iommuctl *c, Iommud__V1__MapEntryColumns *columns,
					 const int *fds, size_t n_fds)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	batch.columns = columns;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	return call(c, &req, fds, n_fds);
}

/* The compact form of MapBatch: one value per entry, one for all, or none, per column; all or
 * nothing as the entries' form; a column of any other length, both forms at once, or an entry
 * naming a descriptor the request lacks are refused before anything is mapped. */
TEST_F(daemon, map_batch_columns)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__MapEntryColumns columns = IOMMUD__V1__MAP_ENTRY_COLUMNS__INIT;
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT, *entries[1] = {&entry};
	Iommud__V1__MapBatchRequest both = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	int fds[2] = {memfd_of(4 * PAGE), memfd_of(PAGE)};
	uint64_t offsets[3] = {0, 0, 2 * PAGE}, iovas[3] = {0x10000, 0x20000, 0x10000};
	uint64_t length = PAGE, listed[8], many[1025] = {0};
	uint32_t dom, fd_indexes[3] = {0, 1, 0}, prot = IOMMUCTL_PROT_READ;
	protobuf_c_boolean fixed = true;
	const Iommud__V1__Code invalid = IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT;

	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	columns.domain_ids = &dom;
	columns.n_domain_ids = 1;
	columns.lengths = &length;
	columns.n_lengths = 1;
	columns.prots = &prot;
	columns.n_prots = 1;
	columns.fixed_iovas = &fixed;
	columns.n_fixed_iovas = 1;
	columns.fd_indexes = fd_indexes;
	columns.offsets = offsets;
	columns.iovas = iovas;
	columns.n_fd_indexes = columns.n_offsets = columns.n_iovas = 3;
	/* The third overlaps the first: the batch fails whole. */
	expect_batch_failed(c, map_columns(c, &columns, fds, 2), dom,
			    IOMMUD__V1__CODE__CODE_ALREADY_EXISTS, 2, "map entry 2");

	iovas[2] = 0x30000;
	resp = map_columns(c, &columns, fds, 2);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	CHECK_EQ(resp->map_batch->n_iovas, 3);
	CHECK_EQ(resp->map_batch->iovas[1], 0x20000);
	CHECK_EQ(resp->map_batch->iovas[2], 0x30000);
	iommuctl_response_free(resp);
	CHECK_EQ(list_mappings(c, dom, listed, 8), 3);
	CHECK_EQ(quota_of(c).pinned_bytes, 3 * PAGE);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));

	/* Only the IOVA the daemon picked comes back where the client asks so: none when every
	 * entry's was fixed. */
	{
		Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
		protobuf_c_boolean mixed[3] = {true, false, true};

		batch.columns = &columns;
		batch.picked_iovas_only = true;
		req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
		req.map_batch = &batch;
		resp = call(c, &req, fds, 2);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		CHECK_EQ(resp->map_batch->n_iovas, 0);
		iommuctl_response_free(resp);
		CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));
		columns.fixed_iovas = mixed;
		columns.n_fixed_iovas = 3;
		resp = call(c, &req, fds, 2);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		CHECK_EQ(resp->map_batch->n_iovas, 1);
		CHECK_EQ(list_mappings(c, dom, listed, 8), 3);
		CHECK(resp->map_batch->iovas[0] != 0x10000 && resp->map_batch->iovas[0] != 0x30000);
		CHECK(listed[0] == resp->map_batch->iovas[0] ||
		      listed[1] == resp->map_batch->iovas[0] ||
		      listed[2] == resp->map_batch->iovas[0]);
		iommuctl_response_free(resp);
		CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));
		columns.fixed_iovas = &fixed;
		columns.n_fixed_iovas = 1;
	}

	/* Two IOVAs for three entries. */
	columns.n_iovas = 2;
	expect_batch_failed(c, map_columns(c, &columns, fds, 2), dom, invalid, -1, "columns.iovas");
	columns.n_iovas = 3;
	/* An entry naming a descriptor the request lacks, whichever form it comes in. */
	fd_indexes[1] = 5;
	expect_batch_failed(c, map_columns(c, &columns, fds, 2), dom, invalid, 1, "entry 1");
	fd_indexes[1] = 1;
	/* Both forms in one request. */
	entry.domain_id = dom;
	entry.length = PAGE;
	entry.prot = IOMMUCTL_PROT_READ;
	both.entries = entries;
	both.n_entries = 1;
	both.columns = &columns;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &both;
	expect_batch_failed(c, call(c, &req, fds, 2), dom, invalid, -1, "both entries and columns");
	/* The limit on entries counts the longest column. */
	columns.offsets = many;
	columns.n_offsets = 1025;
	columns.n_fd_indexes = columns.n_iovas = 1;
	expect_batch_failed(c, map_columns(c, &columns, fds, 1), dom, invalid, -1, "1025");
	(void)close(fds[0]);
	(void)close(fds[1]);
	iommuctl_close(c);
}

/* iommuctl_map_batch in both forms: one MapEntry per entry before a Hello (the library knows
 * nothing of the daemon), the columns once Hello offered them. Entries share a file; the batch
 * is all or nothing and says which entry failed; picked IOVAs come back in the entries. */
static void library_batch(struct iommuctl *c, const int *fds)
{
	struct iommuctl_map_entry e[3];
	uint64_t listed[8];
	size_t failed = 99;
	uint32_t dom;

	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	for (size_t i = 0; i < 3; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = dom,
						   .fd = fds[i == 1],
						   .offset = i == 1 ? 0 : PAGE * i,
						   .length = PAGE,
						   .prot = IOMMUCTL_PROT_READ,
						   .fixed_iova = true,
						   .iova = 0x10000 * (i + 1)};
	e[2].iova = e[0].iova;
	CHECK(iommuctl_map_batch(c, e, 3, &failed) == -EEXIST);
	CHECK_EQ(failed, 2);
	CHECK_EQ(list_mappings(c, dom, listed, 8), 0);
	e[2].iova = 0x30000;
	CHECK_CALL(c, iommuctl_map_batch(c, e, 3, &failed));
	CHECK_EQ(list_mappings(c, dom, listed, 8), 3);
	CHECK_EQ(listed[1], 0x20000);
	CHECK_EQ(quota_of(c).pinned_bytes, 3 * PAGE);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));
	/* Picked addresses, every column the same but the offsets'. */
	for (size_t i = 0; i < 3; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = dom,
						   .fd = fds[0],
						   .offset = PAGE * i,
						   .length = PAGE,
						   .prot = IOMMUCTL_PROT_READ};
	CHECK_CALL(c, iommuctl_map_batch(c, e, 3, NULL));
	CHECK(e[0].iova && e[1].iova && e[2].iova && e[0].iova != e[1].iova &&
	      e[1].iova != e[2].iova && e[0].iova != e[2].iova);
	CHECK_EQ(list_mappings(c, dom, listed, 8), 3);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));
	/* Fixed and picked together: the fixed ones stay where they asked to go, the picked one
	 * gets its address from the reply, which after a Hello lists only that one. */
	e[0].fixed_iova = e[2].fixed_iova = true;
	e[0].iova = 0x10000;
	e[1].iova = 0;
	e[2].iova = 0x30000;
	CHECK_CALL(c, iommuctl_map_batch(c, e, 3, NULL));
	CHECK_EQ(e[0].iova, 0x10000);
	CHECK_EQ(e[2].iova, 0x30000);
	CHECK(e[1].iova && e[1].iova != 0x10000 && e[1].iova != 0x30000);
	CHECK_EQ(list_mappings(c, dom, listed, 8), 3);
	CHECK(listed[0] == e[1].iova || listed[1] == e[1].iova || listed[2] == e[1].iova);
	CHECK_CALL(c, iommuctl_free_domain(c, dom));
}

TEST_F(daemon, map_batch_library)
{
	struct iommuctl *c = connect_client(NULL);
	int fds[2] = {memfd_of(4 * PAGE), memfd_of(PAGE)};
	struct iommuctl_map_entry many[IOMMUD_MAX_FDS + 1];
	size_t failed = 99;
	uint32_t dom;

	library_batch(c, fds);
	iommuctl_close(c);
	c = connect_client(NULL);
	CHECK_CALL(c, iommuctl_hello(c, "test", NULL, NULL));
	library_batch(c, fds);
	/* More files than a request carries: refused by the library, which names the fix, and
	 * says no entry failed, whatever the batch before it said. */
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	many[0] = (struct iommuctl_map_entry){.domain_id = dom,
					      .fd = fds[0],
					      .length = PAGE,
					      .prot = IOMMUCTL_PROT_READ,
					      .fixed_iova = true,
					      .iova = 0x10000};
	many[1] = many[0];
	many[1].offset = PAGE; /* the same would be a retry, answered as done */
	CHECK(iommuctl_map_batch(c, many, 2, &failed) == -EEXIST);
	CHECK_EQ(failed, 1);
	for (size_t i = 0; i < IOMMUD_MAX_FDS + 1; i++)
		many[i] = (struct iommuctl_map_entry){.domain_id = 1,
						      .fd = memfd_of(PAGE),
						      .length = PAGE,
						      .prot = IOMMUCTL_PROT_READ};
	CHECK(iommuctl_map_batch(c, many, IOMMUD_MAX_FDS + 1, &failed) == -E2BIG);
	CHECK(strstr(iommuctl_last_error(c), "split the batch by file"));
	CHECK_EQ(failed, IOMMUD_MAX_FDS + 1);
	for (size_t i = 0; i < IOMMUD_MAX_FDS + 1; i++)
		(void)close(many[i].fd);
	(void)close(fds[0]);
	(void)close(fds[1]);
	iommuctl_close(c);
}

/* Several requests in flight on one connection come back in order, with their ids. */
TEST_F(daemon, pipelining)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__GetDeviceRequest get = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	uint64_t ids[16];

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_DEVICE;
	req.get_device = &get;
	for (int i = 0; i < 16; i++) {
		get.name = i % 2 ? "emu1" : "nonexistent";
		CHECK_OK(iommuctl_send(c, &req, NULL, 0, &ids[i]));
	}
	for (int i = 0; i < 16; i++) {
		Iommud__V1__Response *resp;

		CHECK_OK(iommuctl_recv(c, &resp, NULL, 0, NULL));
		CHECK_EQ(resp->id, ids[i]);
		if (i % 2) {
			CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
			CHECK(strcmp(resp->get_device->device->name, "emu1") == 0);
		} else {
			CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_NOT_FOUND);
		}
		iommuctl_response_free(resp);
	}
	iommuctl_close(c);
}

/* ---- lifetimes ------------------------------------------------------------------------- */

TEST_F(daemon, session_lifetime)
{
	struct iommuctl *c = connect_client(NULL), *watcher;
	uint32_t dom;
	uint64_t iova;
	int mem = memfd_of(PAGE);

	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0, &iova));
	iommuctl_close(c);
	/* The anonymous session ended with its last connection; the quota is free again. */
	watcher = connect_client(NULL);
	EVENTUALLY(quota_of(watcher).domains == 0);
	CHECK_EQ(domain_count(watcher), 0);
	CHECK_EQ(quota_of(watcher).mappings, 0);

	/* A lease outlives its connections... */
	c = connect_client("vm-1");
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0, &iova));
	iommuctl_close(c);
	CHECK_EQ(quota_of(watcher).mappings, 1);
	c = connect_client("vm-1");
	CHECK_EQ(domain_count(c), 1);
	/* ...and is not visible from the anonymous session. */
	CHECK_EQ(domain_count(watcher), 0);
	/* ...until released and left. */
	{
		Iommud__V1__Response *resp =
			call_bare(c, IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE);

		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		iommuctl_response_free(resp);
		/* The anonymous session has no lease to release. */
		resp = call_bare(watcher, IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION);
		iommuctl_response_free(resp);
	}
	iommuctl_close(c);
	EVENTUALLY(quota_of(watcher).mappings == 0);
	c = connect_client("vm-1");
	CHECK_EQ(domain_count(c), 0);
	iommuctl_close(c);

	/* Hello comes first or not at all; lease names are checked. */
	EXPECT_CODE(watcher, iommuctl_hello(watcher, "late", NULL, NULL), FAILED_PRECONDITION);
	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	EXPECT_CODE(c, iommuctl_hello(c, "bad", "no spaces allowed", NULL), INVALID_ARGUMENT);
	CHECK_CALL(c, iommuctl_hello(c, "retry", "ok-name", NULL));
	iommuctl_close(c);
	iommuctl_close(watcher);
	(void)close(mem);
}

/* ---- bad input ------------------------------------------------------------------------- */

static void expect_rejected(int fd, int code, const char *what)
{
	Iommud__V1__Response *resp = raw_recv(fd, NULL);

	if ((int)resp->status->code != code || resp->id != 0) {
		(void)fprintf(stderr, "%s: got code %d id %llu (%s), expected %d id 0\n", what,
			      (int)resp->status->code, (unsigned long long)resp->id,
			      resp->status->message, code);
		abort();
	}
	CHECK(strlen(resp->status->message) > 10);
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* The connection survives a bad packet: a good request still gets its answer. */
static void expect_still_serving(int fd)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	req.id = 77;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	raw_send_request(fd, &req, NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->id, 77);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	CHECK_EQ(resp->list_devices->n_devices, 3);
	iommud__v1__response__free_unpacked(resp, NULL);
}

TEST_F(daemon, malformed_packets)
{
	int fd = raw_connect(&daemon_under_test);
	static uint8_t big[IOMMUCTL_MAX_MESSAGE + 100];
	/* Request{id=5, field 99 (no such method) = empty message} */
	const uint8_t unknown_method[] = {0x08, 0x05, 0x9a, 0x06, 0x00};
	/* Request{id=6} and nothing else: no method at all. */
	const uint8_t no_method[] = {0x08, 0x06};
	/* Request{id=7, get_stats (27) = {field 50: varint 1}}: unknown fields are ignored. */
	const uint8_t unknown_field[] = {0x08, 0x07, 0xda, 0x01, 0x03, 0x90, 0x03, 0x01};
	/* Request{id=8, get_device (12) = {name: length 200 but 2 bytes follow}} */
	const uint8_t truncated[] = {0x08, 0x08, 0x62, 0x04, 0x0a, 0xc8, 0x01, 0x41};
	Iommud__V1__Response *resp;

	raw_send(fd, "\xff\xff\xff\xff garbage", 13, NULL, 0);
	expect_rejected(fd, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "garbage");
	raw_send(fd, truncated, sizeof(truncated), NULL, 0);
	expect_rejected(fd, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "truncated");
	memset(big, 0x42, sizeof(big));
	raw_send(fd, big, sizeof(big), NULL, 0);
	expect_rejected(fd, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "oversized");
	expect_still_serving(fd);

	raw_send(fd, unknown_method, sizeof(unknown_method), NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->id, 5);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED);
	iommud__v1__response__free_unpacked(resp, NULL);
	raw_send(fd, no_method, sizeof(no_method), NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->id, 6);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED);
	iommud__v1__response__free_unpacked(resp, NULL);
	raw_send(fd, unknown_field, sizeof(unknown_field), NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->id, 7);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	iommud__v1__response__free_unpacked(resp, NULL);
	expect_still_serving(fd);
	(void)close(fd);
}

static void send_map(int fd, uint32_t dom, uint64_t offset, uint64_t length, const int *fds,
		     size_t n_fds)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	entry.domain_id = dom;
	entry.offset = offset;
	entry.length = length;
	entry.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	map.entry = &entry;
	req.id = 9;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	raw_send_request(fd, &req, fds, n_fds);
}

static void expect_map_refused(int fd, uint32_t dom, uint64_t offset, uint64_t length,
			       const int *fds, size_t n_fds, int code, const char *what)
{
	Iommud__V1__Response *resp;

	send_map(fd, dom, offset, length, fds, n_fds);
	resp = raw_recv(fd, NULL);
	if ((int)resp->status->code != code) {
		(void)fprintf(stderr, "%s: got code %d (%s), expected %d\n", what,
			      (int)resp->status->code, resp->status->message, code);
		abort();
	}
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* A regular file on a disk file system: its pages are not shmem, so they must be refused. */
static int disk_file(void)
{
	char path[] = "./disk-file-XXXXXX";
	struct statfs fs;
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	(void)unlink(path);
	CHECK(ftruncate(fd, (off_t)PAGE) == 0);
	CHECK(fstatfs(fd, &fs) == 0);
	if (fs.f_type == 0x01021994 /* tmpfs */) {
		(void)close(fd);
		return -1;
	}
	return fd;
}

/* The raw connection is its own anonymous session of the same tenant: it allocates its own
 * domain. */
static uint32_t raw_alloc_domain(int fd)
{
	Iommud__V1__AllocDomainRequest alloc = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	uint32_t dom;

	alloc.type = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING;
	alloc.device = "emu0";
	req.method_case = IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN;
	req.alloc_domain = &alloc;
	raw_send_request(fd, &req, NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	dom = resp->alloc_domain->domain_id;
	iommud__v1__response__free_unpacked(resp, NULL);
	return dom;
}

/* Every kind of wrong memory for a Map (good is a sealed memfd of one page). */
static void expect_bad_maps_refused(int fd, uint32_t dom, int good)
{
	int pipe_fds[2], disk = disk_file();
	int unsealed = memfd_create("unsealed", MFD_CLOEXEC);

	CHECK(pipe(pipe_fds) == 0);
	CHECK(unsealed >= 0 && ftruncate(unsealed, (off_t)PAGE) == 0);
	expect_map_refused(fd, dom, 0, PAGE, NULL, 0, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
			   "Map without a descriptor");
	expect_map_refused(fd, dom, 0, PAGE, (int[]){good, good}, 2,
			   IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "Map with two descriptors");
	expect_map_refused(fd, dom, 0, PAGE, &pipe_fds[0], 1,
			   IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "Map of a pipe");
	expect_map_refused(fd, dom, 0, PAGE, &unsealed, 1, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
			   "Map of an unsealed memfd");
	expect_map_refused(fd, dom, 0, 2 * PAGE, &good, 1, IOMMUD__V1__CODE__CODE_OUT_OF_RANGE,
			   "Map past the end of the file");
	expect_map_refused(fd, dom, 100, PAGE, &good, 1, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
			   "Map at an unaligned offset");
	expect_map_refused(fd, dom, 0, 0, &good, 1, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
			   "Map of nothing");
	if (disk >= 0)
		expect_map_refused(fd, dom, 0, PAGE, &disk, 1,
				   IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "Map of a disk file");
	else
		(void)fprintf(stderr, "the build directory is on tmpfs: disk-file case skipped\n");
	(void)close(pipe_fds[0]);
	(void)close(pipe_fds[1]);
	(void)close(unsealed);
	if (disk >= 0)
		(void)close(disk);
}

TEST_F(daemon, wrong_descriptors)
{
	int fd = raw_connect(&daemon_under_test);
	int before, good = memfd_of(PAGE), many[40];
	uint32_t dom = raw_alloc_domain(fd);
	Iommud__V1__Response *resp;
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	before = fixture_fd_count(&daemon_under_test);
	expect_bad_maps_refused(fd, dom, good);

	/* Descriptors sent with a request that takes none are refused and closed. */
	req.id = 10;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	raw_send_request(fd, &req, &good, 1);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT);
	iommud__v1__response__free_unpacked(resp, NULL);
	/* More descriptors than a packet may carry. */
	for (int i = 0; i < 40; i++)
		many[i] = good;
	raw_send_request(fd, &req, many, 40);
	expect_rejected(fd, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "40 descriptors");
	expect_still_serving(fd);
	/* Nothing received was kept. */
	CHECK_EQ(fixture_fd_count(&daemon_under_test), before);

	/* A good map holds the memory by the daemon's mapping of it, not by a descriptor (a
	 * daemon of many mappings would run out of those); the session's end drops it. */
	{
		int mapped = fixture_memfd_mappings(&daemon_under_test);

		send_map(fd, dom, 0, PAGE, &good, 1);
		resp = raw_recv(fd, NULL);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		iommud__v1__response__free_unpacked(resp, NULL);
		CHECK_EQ(fixture_fd_count(&daemon_under_test), before);
		CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), mapped + 1);
	}
	(void)close(fd);
	(void)close(good);
}

TEST_F(daemon, ranges_and_quotas)
{
	struct iommuctl *c = connect_client(NULL);
	uint32_t dom, extra[8];
	uint64_t iova = 0xfffffffffffff000ull, bytes;
	int mem = memfd_of(512 * 1024);
	int n;

	/* Earlier cases' sessions must be gone, or their domains count against the quota. */
	EVENTUALLY(quota_of(c).domains == 0);
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	/* iova + length past 2^64 */
	EXPECT_CODE(c,
		    iommuctl_map_fd(c, dom, mem, 0, 2 * PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		    OUT_OF_RANGE);
	EXPECT_CODE(c, iommuctl_unmap(c, dom, 0xfffffffffffff000ull, 0x2000, &bytes), OUT_OF_RANGE);
	/* Pinned bytes: 256K allowed. */
	EXPECT_CODE(
		c, iommuctl_map_fd(c, dom, mem, 0, 512 * 1024, IOMMUCTL_PROT_READ, false, 0, &iova),
		RESOURCE_EXHAUSTED);
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 0, 256 * 1024, IOMMUCTL_PROT_READ, false, 0,
				      &iova));
	EXPECT_CODE(c, iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0, &iova),
		    RESOURCE_EXHAUSTED);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, &bytes));
	/* Mappings: 8 allowed. */
	for (int i = 0; i < 8; i++)
		CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0,
					      &iova));
	EXPECT_CODE(c, iommuctl_map_fd(c, dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0, &iova),
		    RESOURCE_EXHAUSTED);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, &bytes));
	CHECK_EQ(bytes, 8 * PAGE);
	/* Domains: 6 allowed, one in use. */
	for (n = 0; n < 8; n++)
		if (iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &extra[n]) < 0)
			break;
	CHECK_EQ(n, 5);
	CHECK_EQ(iommuctl_last_code(c), IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED);
	while (n--)
		CHECK_CALL(c, iommuctl_free_domain(c, extra[n]));
	/* Devices the configuration does not name, and devices that do not exist. */
	EXPECT_CODE(c,
		    iommuctl_alloc_domain(c, "nonexistent", IOMMUCTL_DOMAIN_PAGING, 0, &extra[0]),
		    NOT_FOUND);
	EXPECT_CODE(c, iommuctl_attach(c, "emu0", 999), NOT_FOUND);
	CHECK_CALL(c, iommuctl_free_domain(c, dom));
	(void)close(mem);
	iommuctl_close(c);
}

/* ---- other tenants --------------------------------------------------------------------- */

struct other_tenant_args {
	uint32_t root_domain;
	int go[2];   /* root to child: root has done its part */
	int done[2]; /* child to root: the child holds emu1 */
};

static int as_writer(void *arg)
{
	struct other_tenant_args *a = arg;
	struct iommuctl *c = connect_client(NULL);
	uint32_t dom;
	char byte;

	/* Another tenant's ids name nothing here. */
	EXPECT_CODE(c, iommuctl_free_domain(c, a->root_domain), NOT_FOUND);
	EXPECT_CODE(c, iommuctl_unmap_all(c, a->root_domain, NULL), NOT_FOUND);
	CHECK_EQ(domain_count(c), 0);
	/* The configuration gives this tenant emu1 only. */
	EXPECT_CODE(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		    PERMISSION_DENIED);
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK_CALL(c, iommuctl_attach(c, "emu1", dom));
	/* Leases need write access, which this tenant has; its quota is its own. */
	CHECK_EQ(quota_of(c).domains, 1);
	CHECK(write(a->done[1], "x", 1) == 1);
	CHECK(read(a->go[0], &byte, 1) == 1);
	iommuctl_close(c);
	return 0;
}

static int as_reader(void *arg)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__HelloReply *hello;
	uint32_t dom;
	int mem = memfd_of(PAGE);

	(void)arg;
	CHECK_CALL(c, iommuctl_hello(c, "reader", NULL, &hello));
	CHECK_EQ(hello->n_permissions, 1);
	CHECK(strcmp(hello->permissions[0], "read") == 0);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	CHECK_EQ(domain_count(c), 0);
	EXPECT_CODE(c, iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		    PERMISSION_DENIED);
	EXPECT_CODE(
		c,
		iommuctl_map_fd(c, 1, mem, 0, PAGE, IOMMUCTL_PROT_READ, false, 0, &(uint64_t){0}),
		PERMISSION_DENIED);
	iommuctl_close(c);
	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	EXPECT_CODE(c, iommuctl_hello(c, "reader", "lease", NULL), PERMISSION_DENIED);
	iommuctl_close(c);
	(void)close(mem);
	return 0;
}

static int as_stranger(void *arg)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__HelloReply *hello;

	(void)arg;
	/* Hello still answers, so the stranger can see who the daemon thinks it is. */
	CHECK_CALL(c, iommuctl_hello(c, "stranger", NULL, &hello));
	CHECK_EQ(hello->n_permissions, 0);
	CHECK_EQ(hello->uid, STRANGER_UID);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	{
		Iommud__V1__Response *resp = call_bare(c, IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES);

		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED);
		iommuctl_response_free(resp);
	}
	iommuctl_close(c);
	return 0;
}

TEST_F(daemon, tenants)
{
	struct other_tenant_args args;
	struct iommuctl *c;
	pid_t child;
	char byte;
	int status;

	if (geteuid() != 0)
		SKIP("not root: other tenants need other uids");
	c = connect_client(NULL);
	CHECK_CALL(c,
		   iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &args.root_domain));
	CHECK(pipe(args.go) == 0 && pipe(args.done) == 0);
	child = fork();
	CHECK(child >= 0);
	if (child == 0)
		_exit(run_as(WRITER_UID, as_writer, &args));
	CHECK(read(args.done[0], &byte, 1) == 1);
	/* emu1 belongs to the other tenant's session while it lives. */
	EXPECT_CODE(c, iommuctl_attach(c, "emu1", args.root_domain), FAILED_PRECONDITION);
	CHECK(write(args.go[1], "x", 1) == 1);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* Its session ended with its connection, so emu1 is free. The root tenant may take it
	 * (devices = emu*), though its group differs from emu0's. */
	{
		uint32_t dom;

		EVENTUALLY(iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &dom) == 0);
		CHECK_CALL(c, iommuctl_attach(c, "emu1", dom));
	}
	CHECK_EQ(run_as(READER_UID, as_reader, NULL), 0);
	CHECK_EQ(run_as(STRANGER_UID, as_stranger, NULL), 0);
	iommuctl_close(c);
	for (int i = 0; i < 2; i++) {
		(void)close(args.go[i]);
		(void)close(args.done[i]);
	}
}

/* ---- statistics ----------------------------------------------------------------------- */

static Iommud__V1__GetStatsReply *stats_of(struct iommuctl *c)
{
	Iommud__V1__Response *resp = call_bare(c, IOMMUD__V1__REQUEST__METHOD_GET_STATS);
	Iommud__V1__GetStatsReply *stats;

	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	/* Detached from the response, so the caller frees the reply alone. */
	stats = resp->get_stats;
	resp->get_stats = NULL;
	resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
	iommuctl_response_free(resp);
	return stats;
}

static const Iommud__V1__MethodStats *method_of(const Iommud__V1__GetStatsReply *s,
						const char *name)
{
	for (size_t i = 0; i < s->n_methods; i++)
		if (strcmp(s->methods[i]->method, name) == 0)
			return s->methods[i];
	CHECK(!"method missing from GetStats");
	return NULL;
}

static uint64_t code_calls(const Iommud__V1__MethodStats *m, Iommud__V1__Code code)
{
	for (size_t i = 0; i < m->n_codes; i++)
		if (m->codes[i]->code == code)
			return m->codes[i]->calls;
	return 0;
}

static uint64_t latency_count(const Iommud__V1__MethodStats *m)
{
	uint64_t in_buckets = 0;

	if (!m->latency)
		return 0;
	for (size_t i = 0; i < m->latency->n_buckets; i++)
		in_buckets += m->latency->buckets[i];
	CHECK_EQ(in_buckets, m->latency->count);
	return m->latency->count;
}

static const Iommud__V1__TenantStats *label_of(const Iommud__V1__GetStatsReply *s,
					       const char *label)
{
	for (size_t i = 0; i < s->n_tenant_stats; i++)
		if (strcmp(s->tenant_stats[i]->tenant, label) == 0)
			return s->tenant_stats[i];
	return NULL;
}

static const char *device_state(const Iommud__V1__GetStatsReply *s, const char *device)
{
	for (size_t i = 0; i < s->n_devices; i++)
		if (strcmp(s->devices[i]->device, device) == 0)
			return s->devices[i]->state;
	CHECK(!"device missing from GetStats");
	return NULL;
}

#define STATS_CALLS 5

TEST_F(daemon, stats_methods)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__GetStatsReply *before = stats_of(c), *after;
	const Iommud__V1__MethodStats *list, *list0, *free_domain, *free0;

	for (int i = 0; i < STATS_CALLS; i++)
		iommuctl_response_free(call_bare(c, IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES));
	EXPECT_CODE(c, iommuctl_free_domain(c, 999), NOT_FOUND);
	after = stats_of(c);
	list0 = method_of(before, "list_devices");
	list = method_of(after, "list_devices");
	CHECK_EQ(list->calls - list0->calls, STATS_CALLS);
	CHECK_EQ(latency_count(list) - latency_count(list0), STATS_CALLS);
	CHECK_EQ(code_calls(list, IOMMUD__V1__CODE__CODE_OK), list->calls);
	CHECK_EQ(list->errors, 0);
	free0 = method_of(before, "free_domain");
	free_domain = method_of(after, "free_domain");
	CHECK_EQ(free_domain->calls - free0->calls, 1);
	CHECK_EQ(free_domain->errors - free0->errors, 1);
	CHECK_EQ(code_calls(free_domain, IOMMUD__V1__CODE__CODE_NOT_FOUND) -
			 code_calls(free0, IOMMUD__V1__CODE__CODE_NOT_FOUND),
		 1);
	/* Every method, by its one name; the codes of each add up to its calls. */
	for (size_t i = 0; i < after->n_methods; i++) {
		const Iommud__V1__MethodStats *m = after->methods[i];
		uint64_t sum = 0;

		for (size_t j = 0; j < m->n_codes; j++)
			sum += m->codes[j]->calls;
		CHECK_EQ(sum, m->calls);
		CHECK(latency_count(m) <= m->calls);
	}
	/* GetStats counts itself once its reply has gone. */
	CHECK_EQ(method_of(after, "get_stats")->calls, method_of(before, "get_stats")->calls + 1);
	CHECK(strcmp(after->version, before->version) == 0 && after->version[0]);
	iommud__v1__get_stats_reply__free_unpacked(before, NULL);
	iommud__v1__get_stats_reply__free_unpacked(after, NULL);
	iommuctl_close(c);
}

static void check_probes(const Iommud__V1__GetStatsReply *s, const char *label)
{
	bool timed_here = false;

	CHECK(s->probes);
	CHECK(s->probes->tier != IOMMUD__V1__PROBE_TIER__PROBE_TIER_UNSPECIFIED);
	/* What is off says why. */
	if (s->probes->tier == IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF)
		CHECK(s->probes->n_detached > 0);
	for (size_t i = 0; i < s->n_map_latency; i++) {
		const Iommud__V1__MapLatency *ml = s->map_latency[i];

		CHECK(ml->latency && ml->latency->count > 0);
		timed_here |= ml->layer == IOMMUD__V1__MAP_LAYER__MAP_LAYER_IN_PROCESS &&
			      ml->op == IOMMUD__V1__MAP_OP__MAP_OP_MAP &&
			      strcmp(ml->tenant, label) == 0;
	}
	/* The emulated backend maps inside the daemon: timed there when the probes say so. */
	CHECK_EQ(timed_here, s->probes->in_process);
}

/* What the in-process map histograms of uid 0 counted: calls and bytes of 4 KiB (index 0) and of
 * other sizes below 2 MiB (1), and their time together; false where the daemon does not time its
 * backend. */
struct timed_maps {
	uint64_t calls[2], bytes[2], ns;
};

static bool in_process_maps(struct iommuctl *c, struct timed_maps *ret)
{
	Iommud__V1__GetStatsReply *s = stats_of(c);
	bool timed = s->probes->in_process;

	*ret = (struct timed_maps){{0}};
	for (size_t i = 0; i < s->n_map_latency; i++) {
		const Iommud__V1__MapLatency *ml = s->map_latency[i];
		bool small = ml->size_class == IOMMUD__V1__SIZE_CLASS__SIZE_CLASS_4K;

		if (ml->layer != IOMMUD__V1__MAP_LAYER__MAP_LAYER_IN_PROCESS ||
		    ml->op != IOMMUD__V1__MAP_OP__MAP_OP_MAP || strcmp(ml->tenant, "uid 0") != 0 ||
		    (!small && ml->size_class != IOMMUD__V1__SIZE_CLASS__SIZE_CLASS_OTHER))
			continue;
		ret->calls[!small] = ml->latency->count;
		ret->bytes[!small] = ml->bytes;
		ret->ns += ml->latency->sum_ns;
	}
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	return timed;
}

/* A batch's small entries are timed together, not one by one, yet each counts once in the
 * in-process histogram of its size, with its bytes: those of a batch that succeeds, and those a
 * failing batch mapped before its failure (and then took back). */
TEST_F(daemon, map_batch_timed_once_each)
{
	struct iommuctl *c = connect_client(NULL);
	struct iommuctl_map_entry e[8];
	struct timed_maps before, after;
	int mem = memfd_of(8 * PAGE);
	size_t failed;
	uint32_t dom;

	/* After Hello, the library sends the batch in columns. */
	CHECK_CALL(c, iommuctl_hello(c, "test", NULL, NULL));
	if (geteuid() != 0 || !in_process_maps(c, &before))
		SKIP("the daemon does not time its backend, or the label is not uid 0");
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	/* Every third entry is of two pages: 3 of them, 5 of one (the quota's 8 mappings). */
	for (size_t i = 0; i < 8; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = dom,
						   .fd = mem,
						   .offset = PAGE * (i % 7),
						   .length = i % 3 ? PAGE : 2 * PAGE,
						   .prot = IOMMUCTL_PROT_READ,
						   .fixed_iova = true,
						   .iova = 0x100000 + 0x10000 * i};
	CHECK_CALL(c, iommuctl_map_batch(c, e, 8, NULL));
	CHECK(in_process_maps(c, &after));
	CHECK_EQ(after.calls[0] - before.calls[0], 5);
	CHECK_EQ(after.bytes[0] - before.bytes[0], 5 * PAGE);
	CHECK_EQ(after.calls[1] - before.calls[1], 3);
	CHECK_EQ(after.bytes[1] - before.bytes[1], 6 * PAGE);
	CHECK(after.ns > before.ns);
	CHECK_CALL(c, iommuctl_unmap_all(c, dom, NULL));
	/* The sixth overlaps the first: five are mapped, counted, and taken back. */
	e[5].iova = e[0].iova;
	CHECK(iommuctl_map_batch(c, e, 8, &failed) == -EEXIST);
	CHECK_EQ(failed, 5);
	before = after;
	CHECK(in_process_maps(c, &after));
	CHECK_EQ(after.calls[0] - before.calls[0], 3);
	CHECK_EQ(after.calls[1] - before.calls[1], 2);
	CHECK_EQ(after.bytes[1] - before.bytes[1], 4 * PAGE);
	CHECK_CALL(c, iommuctl_free_domain(c, dom));
	(void)close(mem);
	iommuctl_close(c);
}

/* The mappings and bytes ListDomains counts for the domain. */
static void expect_domain_counts(struct iommuctl *c, uint32_t dom, uint32_t mappings,
				 uint64_t bytes)
{
	Iommud__V1__Response *resp = call_bare(c, IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS);
	bool found = false;

	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	for (size_t i = 0; i < resp->list_domains->n_domains; i++) {
		const Iommud__V1__Domain *d = resp->list_domains->domains[i];

		if (d->domain_id != dom)
			continue;
		found = true;
		CHECK_EQ(d->mappings, mappings);
		CHECK_EQ(d->mapped_bytes, bytes);
	}
	CHECK(found);
	iommuctl_response_free(resp);
}

/* Entries of a batch, each differing from the one before it in its domain, its access or its
 * file alone: each mapping keeps its own prot and is counted in its own domain, a file has one
 * map per access, and every mapping, map and byte is given back by the unmaps; a quota reached
 * by the last of a row of like entries fails the batch whole, as does the same file's
 * read-only descriptor after a row of writable ones. An entry like the one before it takes over
 * what the daemon found for that one (session_map_like): these are where it must not. */
TEST_F(daemon, map_batch_entries_keep_their_own_domain_and_access)
{
	static const uint32_t r = IOMMUCTL_PROT_READ, rw = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	struct iommuctl *c = connect_client(NULL);
	struct iommuctl_map_entry e[9];
	int mem = memfd_of(4 * PAGE), other = memfd_of(PAGE), read_only;
	char path[64];
	uint32_t doms[2], prots[8];
	uint64_t iovas[8];
	size_t failed;
	/* Domain, access and offset of each entry, each differing from the one before it in one
	 * of them only: the second in its access, the third in its domain, the fourth in its
	 * domain again; the fifth is like the fourth. */
	const struct {
		int dom;
		uint32_t prot;
		uint64_t offset;
	} plan[5] = {{0, r, 0}, {0, rw, PAGE}, {1, rw, 2 * PAGE}, {0, rw, 3 * PAGE}, {0, rw, 0}};

	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", mem);
	read_only = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(read_only >= 0);
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &doms[0]));
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &doms[1]));
	for (size_t i = 0; i < 5; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = doms[plan[i].dom],
						   .fd = mem,
						   .offset = plan[i].offset,
						   .length = PAGE,
						   .prot = plan[i].prot,
						   .fixed_iova = true,
						   .iova = 0x100000 + 0x10000 * i};
	CHECK_CALL(c, iommuctl_map_batch(c, e, 5, NULL));
	CHECK_EQ(quota_of(c).mappings, 5);
	CHECK_EQ(quota_of(c).pinned_bytes, 5 * PAGE);
	CHECK_EQ(quota_of(c).maps, 2);
	expect_domain_counts(c, doms[0], 4, 4 * PAGE);
	expect_domain_counts(c, doms[1], 1, PAGE);
	CHECK_EQ(list_mappings_prots(c, doms[0], iovas, prots, 8), 4);
	CHECK_EQ(prots[0], r);
	CHECK_EQ(prots[1], rw);
	CHECK_EQ(prots[2], rw);
	CHECK_EQ(prots[3], rw);
	CHECK_EQ(list_mappings_prots(c, doms[1], iovas, prots, 8), 1);
	CHECK_EQ(prots[0], rw);

	CHECK_CALL(c, iommuctl_unmap_all(c, doms[1], NULL));
	CHECK_EQ(quota_of(c).mappings, 4);
	expect_domain_counts(c, doms[0], 4, 4 * PAGE);
	expect_domain_counts(c, doms[1], 0, 0);
	/* The read-only map goes with its one mapping, the writable one stays for the three. */
	CHECK_CALL(c, iommuctl_unmap(c, doms[0], e[0].iova, PAGE, NULL));
	CHECK_EQ(quota_of(c).maps, 1);
	CHECK_CALL(c, iommuctl_unmap_all(c, doms[0], NULL));
	CHECK_EQ(quota_of(c).mappings, 0);
	CHECK_EQ(quota_of(c).pinned_bytes, 0);
	CHECK_EQ(quota_of(c).maps, 0);
	expect_domain_counts(c, doms[0], 0, 0);

	/* Two files, each mapped from its own map. */
	e[1] = e[0];
	e[1].fd = other;
	e[1].iova += 0x10000;
	CHECK_CALL(c, iommuctl_map_batch(c, e, 2, NULL));
	CHECK_EQ(quota_of(c).maps, 2);
	CHECK_CALL(c, iommuctl_unmap_all(c, doms[0], NULL));
	CHECK_EQ(quota_of(c).maps, 0);

	/* Nine entries in a row of one descriptor and domain: the ninth is past the quota of 8
	 * mappings, and the eight before it are taken back. */
	for (size_t i = 0; i < 9; i++)
		e[i] = (struct iommuctl_map_entry){.domain_id = doms[0],
						   .fd = mem,
						   .offset = PAGE * (i % 4),
						   .length = PAGE,
						   .prot = r,
						   .fixed_iova = true,
						   .iova = 0x100000 + 0x10000 * i};
	CHECK(iommuctl_map_batch(c, e, 9, &failed) == -EDQUOT);
	CHECK_EQ(failed, 8);
	CHECK_EQ(quota_of(c).mappings, 0);
	CHECK_EQ(quota_of(c).pinned_bytes, 0);
	CHECK_EQ(quota_of(c).maps, 0);
	expect_domain_counts(c, doms[0], 0, 0);
	CHECK_CALL(c, iommuctl_map_batch(c, e, 8, NULL));
	CHECK_EQ(quota_of(c).mappings, 8);
	expect_domain_counts(c, doms[0], 8, 8 * PAGE);
	CHECK_CALL(c, iommuctl_unmap_all(c, doms[0], NULL));

	/* The same file through a read-only descriptor, after a row of writable entries: its own
	 * descriptor refuses the write, and the row is taken back. */
	for (size_t i = 0; i < 4; i++)
		e[i].prot = rw;
	e[3].fd = read_only;
	CHECK(iommuctl_map_batch(c, e, 4, &failed) == -EACCES);
	CHECK_EQ(failed, 3);
	CHECK_EQ(quota_of(c).mappings, 0);
	CHECK_EQ(quota_of(c).maps, 0);
	expect_domain_counts(c, doms[0], 0, 0);
	CHECK_CALL(c, iommuctl_free_domain(c, doms[0]));
	CHECK_CALL(c, iommuctl_free_domain(c, doms[1]));
	CHECK_EQ(quota_of(c).mappings, 0);
	CHECK_EQ(quota_of(c).maps, 0);
	(void)close(mem);
	(void)close(other);
	(void)close(read_only);
	iommuctl_close(c);
}

TEST_F(daemon, stats_tenants_and_devices)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__GetStatsReply *s = stats_of(c);
	const Iommud__V1__TenantStats *own;
	uint32_t dom;
	int mem = memfd_of(2 * PAGE);

	CHECK(strcmp(device_state(s, "emu0"), "free") == 0);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	CHECK_CALL(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	s = stats_of(c);
	CHECK(strcmp(device_state(s, "emu0"), "bound") == 0);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	CHECK_CALL(c, iommuctl_attach(c, "emu0", dom));
	CHECK_CALL(c, iommuctl_map_fd(c, dom, mem, 0, 2 * PAGE, IOMMUCTL_PROT_READ, false, 0,
				      &(uint64_t){0}));
	s = stats_of(c);
	CHECK(strcmp(device_state(s, "emu0"), "attached") == 0);
	CHECK(strcmp(device_state(s, "emu1"), "free") == 0);
	CHECK_EQ(s->n_devices, 3);
	CHECK(own = label_of(s, "uid 0"));
	CHECK_EQ(own->tenants, 1);
	CHECK_EQ(own->sessions, 1);
	CHECK_EQ(own->quota->domains, 1);
	CHECK_EQ(own->quota->mappings, 1);
	CHECK_EQ(own->quota->pinned_bytes, 2 * PAGE);
	CHECK_EQ(own->quota->max_domains, 6);
	CHECK_EQ(own->quota->max_pinned_bytes, 256 * 1024);
	check_probes(s, "uid 0");
	if (geteuid() == 0) {
		/* Root sees every label: the bystander's lease among them. */
		CHECK(strcmp(device_state(s, "emu2"), "attached") == 0);
		CHECK(label_of(s, "uid 65531") && label_of(s, "uid 65531")->leases == 1);
		CHECK_EQ(label_of(s, "uid 65531")->quota->mappings, BYSTANDER_MAPPINGS);
		CHECK(s->leases >= 1);
	}
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	(void)close(mem);
	iommuctl_close(c);
}

/* Without stats = all, a tenant sees its own label alone. */
static int stats_own_only(void *arg)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__GetStatsReply *s = stats_of(c);

	(void)arg;
	CHECK_EQ(s->n_tenant_stats, 1);
	CHECK(label_of(s, "uid 65534"));
	for (size_t i = 0; i < s->n_map_latency; i++)
		CHECK(!s->map_latency[i]->tenant[0] ||
		      strcmp(s->map_latency[i]->tenant, "uid 65534") == 0);
	/* No daemon-wide activity for one who is no observer: its own tenant's figures only. */
	CHECK(!s->observer);
	CHECK_EQ(s->n_devices, 0);
	CHECK(s->probes);
	CHECK_EQ(s->n_methods, 0);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	iommuctl_close(c);
	return 0;
}

/* With stats = all (and only read access), every label. */
static int stats_all_labels(void *arg)
{
	struct iommuctl *c = connect_client(NULL);
	Iommud__V1__GetStatsReply *s = stats_of(c);

	(void)arg;
	CHECK(label_of(s, "uid 65533"));
	CHECK(label_of(s, "uid 65531") && label_of(s, "uid 65531")->leases == 1);
	CHECK_EQ(label_of(s, "uid 65531")->quota->pinned_bytes, BYSTANDER_MAPPINGS * PAGE);
	CHECK(label_of(s, "other"));
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	iommuctl_close(c);
	return 0;
}

TEST_F(daemon, stats_visibility)
{
	if (geteuid() != 0)
		SKIP("not root: other tenants need other uids");
	CHECK_EQ(run_as(WRITER_UID, stats_own_only, NULL), 0);
	CHECK_EQ(run_as(READER_UID, stats_all_labels, NULL), 0);
}

/* A device with more reserved ranges than one packet carries: its GetDevice reply goes out as
 * INTERNAL, and is counted so. */
#define RESERVED_RANGES 4096

TEST(stats_count_the_code_sent)
{
	size_t size = 64 + RESERVED_RANGES * sizeof("reserved = 0x700000000000-0x700000000fff\n");
	size_t used;
	char *topology = malloc(size);
	Iommud__V1__GetDeviceRequest get = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__GetStatsReply *s;
	const Iommud__V1__MethodStats *m;
	Iommud__V1__Response *resp;
	struct iommuctl *c;

	CHECK(topology);
	used = (size_t)snprintf(topology, size, "[iommu]\ndevices = emu0\n[device emu0]\n");
	for (unsigned i = 0; i < RESERVED_RANGES; i++)
		used += (size_t)snprintf(topology + used, size - used,
					 "reserved = 0x7000%08x-0x7000%08x\n", i << 16,
					 (i << 16) + 0xfff);
	fixture_start_topology(&daemon_under_test, config, topology);
	free(topology);
	c = connect_client(NULL);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_DEVICE;
	req.get_device = &get;
	get.name = "emu0";
	resp = call(c, &req, NULL, 0);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_INTERNAL);
	CHECK_EQ(resp->status->errno_value, EMSGSIZE);
	iommuctl_response_free(resp);
	s = stats_of(c);
	m = method_of(s, "get_device");
	CHECK_EQ(m->calls, 1);
	CHECK_EQ(m->errors, 1);
	CHECK_EQ(code_calls(m, IOMMUD__V1__CODE__CODE_INTERNAL), 1);
	CHECK_EQ(code_calls(m, IOMMUD__V1__CODE__CODE_OK), 0);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	iommuctl_close(c);
	fixture_stop(&daemon_under_test);
}

/* Makes req, a GetDevice, exactly size bytes long by the length of the device name in name
 * (room for size bytes). Its id is set as a fresh connection's first ids are: below 128, one
 * byte like 1. */
static void get_device_of_size(Iommud__V1__Request *req, char *name, size_t size)
{
	size_t len = size - 1;

	memset(name, 'x', len);
	name[len] = '\0';
	req->id = 1;
	while (iommud__v1__request__get_packed_size(req) > size) {
		CHECK(len > 0);
		name[--len] = '\0';
	}
	CHECK_EQ(iommud__v1__request__get_packed_size(req), size);
}

/* A request of exactly IOMMUD_MAX_MESSAGE bytes reaches the daemon; one a byte longer is refused
 * by the library, saying how long it is and what to do, and never sent. */
TEST_F(daemon, request_size_limit)
{
	Iommud__V1__GetDeviceRequest get = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	struct iommuctl *c = connect_client(NULL);
	char *name = malloc(IOMMUD_MAX_MESSAGE + 1);
	Iommud__V1__GetStatsReply *s;
	Iommud__V1__Response *resp;
	char expected[64];

	CHECK(name);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_DEVICE;
	req.get_device = &get;
	get.name = name;
	get_device_of_size(&req, name, IOMMUD_MAX_MESSAGE);
	resp = call(c, &req, NULL, 0);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_NOT_FOUND);
	iommuctl_response_free(resp);
	get_device_of_size(&req, name, IOMMUD_MAX_MESSAGE + 1);
	CHECK_EQ(iommuctl_send(c, &req, NULL, 0, NULL), -EMSGSIZE);
	(void)snprintf(expected, sizeof(expected), "the request is %d bytes",
		       IOMMUD_MAX_MESSAGE + 1);
	CHECK(strstr(iommuctl_last_error(c), expected));
	CHECK(strstr(iommuctl_last_error(c), "split it"));
	free(name);
	s = stats_of(c);
	CHECK_EQ(method_of(s, "get_device")->calls, 1);
	iommud__v1__get_stats_reply__free_unpacked(s, NULL);
	iommuctl_close(c);
}

/* ---- a bystander --------------------------------------------------------------------- */

/* Another tenant's lease, set up before each case and checked after it: nothing the case did,
 * bad input included, may reach it. */
static int bystander(void *arg)
{
	bool verify = arg != NULL;
	struct iommuctl *c = connect_client("bystander");
	uint64_t iovas[8];
	uint32_t dom = 0;
	int mem;

	if (!verify) {
		mem = memfd_of(BYSTANDER_MAPPINGS * PAGE);
		CHECK_CALL(c, iommuctl_alloc_domain(c, "emu2", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
		CHECK_CALL(c, iommuctl_attach(c, "emu2", dom));
		for (unsigned i = 0; i < BYSTANDER_MAPPINGS; i++)
			CHECK_CALL(c,
				   iommuctl_map_fd(c, dom, mem, i * PAGE, PAGE, IOMMUCTL_PROT_READ,
						   true, 0, &(uint64_t){0x7000000 + i * 0x10000}));
		(void)close(mem);
		iommuctl_close(c);
		return 0;
	}
	CHECK_EQ(domain_count(c), 1);
	CHECK_EQ(quota_of(c).mappings, BYSTANDER_MAPPINGS);
	CHECK_EQ(quota_of(c).pinned_bytes, BYSTANDER_MAPPINGS * PAGE);
	{
		Iommud__V1__Response *resp = call_bare(c, IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS);

		CHECK_EQ(resp->list_domains->domains[0]->n_attached, 1);
		CHECK(strcmp(resp->list_domains->domains[0]->attached[0], "emu2") == 0);
		dom = resp->list_domains->domains[0]->domain_id;
		iommuctl_response_free(resp);
	}
	CHECK_EQ(list_mappings(c, dom, iovas, 8), BYSTANDER_MAPPINGS);
	for (unsigned i = 0; i < BYSTANDER_MAPPINGS; i++)
		CHECK_EQ(iovas[i], 0x7000000 + i * 0x10000);
	{
		Iommud__V1__Response *resp =
			call_bare(c, IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE);

		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		iommuctl_response_free(resp);
	}
	iommuctl_close(c);
	return 0;
}

FIXTURE_SETUP(daemon)
{
	fixture_start(&daemon_under_test, config, "emu0 emu1 emu2");
	self->baseline = fixture_fd_count(&daemon_under_test);
	if (geteuid() == 0)
		CHECK_EQ(run_as(BYSTANDER_UID, bystander, NULL), 0);
}

FIXTURE_TEARDOWN(daemon)
{
	if (geteuid() == 0)
		CHECK_EQ(run_as(BYSTANDER_UID, bystander, "verify"), 0);
	/* Every connection is closed: the daemon holds what it held at the start. */
	{
		struct iommuctl *c = connect_client(NULL);

		EVENTUALLY(quota_of(c).pinned_bytes == 0 && quota_of(c).domains == 0);
		iommuctl_close(c);
	}
	EVENTUALLY(fixture_fd_count(&daemon_under_test) == self->baseline);
	EVENTUALLY(fixture_memfd_mappings(&daemon_under_test) == 0);
	fixture_stop(&daemon_under_test);
}
