// SPDX-License-Identifier: MIT
/*
 * Writes the seed corpus of fuzz_dispatch: one input per method, conversations that only get
 * somewhere in order (a domain, then mappings in it), and malformed packets, all in the
 * harness's chunk format (fuzz_dispatch.c). Seeds that reach deep into the daemon save the
 * fuzzer from discovering valid protobuf and the right domain ids by itself.
 *
 * Usage: make_corpus DIR (the committed seeds are tests/fuzz/corpus).
 *
 * In a fresh session kernel-helper numbers objects from 1 in creation order, and AllocDomain
 * binds its device first: the first domain for emu0 is 2, a second one 3.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iommud.pb-c.h>

/* A chunk's flags and, from bit 8, its route (fuzz_dispatch.c). */
#define SEALED_MEMFD   0x01u
#define UNSEALED_MEMFD 0x02u
#define PIPE	       0x03u
#define FDS(n)	       (((n)-1u) << 2)
#define OVERSIZE       0x40u
#define TOO_MANY_FDS   0x80u
#define CONN(n)	       ((unsigned)(n) << 8)
#define CONN1	       CONN(1)
#define RECONNECT      (0x04u << 8)
#define AS(identity)   ((unsigned)(identity) << 11) /* with RECONNECT: the harness's identities[] */

#define DOMAIN	2 /* the first domain of a session (see above) */
#define DOMAIN2 3
#define PAGE	4096u

struct seed {
	FILE *file;
	uint64_t next_id;
};

static void put_raw(struct seed *s, unsigned flags, const void *packet, size_t len)
{
	uint8_t header[4] = {(uint8_t)flags, (uint8_t)(flags >> 8), (uint8_t)len,
			     (uint8_t)(len >> 8)};

	if (fwrite(header, sizeof(header), 1, s->file) != 1 ||
	    (len && fwrite(packet, len, 1, s->file) != 1)) {
		perror("make_corpus: write");
		exit(1);
	}
}

static void put(struct seed *s, unsigned flags, Iommud__V1__Request *req)
{
	uint8_t packet[4096];

	req->id = ++s->next_id;
	if (iommud__v1__request__get_packed_size(req) > sizeof(packet)) {
		(void)fprintf(stderr, "make_corpus: a seed request is too large\n");
		exit(1);
	}
	put_raw(s, flags, packet, iommud__v1__request__pack(req, packet));
}

#define SEND(s, flags, field, method, msg)                                                         \
	do {                                                                                       \
		Iommud__V1__Request req_ = IOMMUD__V1__REQUEST__INIT;                              \
		req_.method_case = IOMMUD__V1__REQUEST__METHOD_##method;                           \
		req_.field = (msg);                                                                \
		put(s, flags, &req_);                                                              \
	} while (0)

/* ---- one request of each method ------------------------------------------------------- */

/* A request whose message holds one field and nothing else, a domain id (FreeDomain,
 * UnmapAll, GetIovaRanges) or a device name (DetachDevice, OpenDevice): built through the
 * schema, so that one function serves them all. value is the field as the message stores it. */
static void one_field(struct seed *s, unsigned flags, Iommud__V1__Request__MethodCase method,
		      ProtobufCType type, const void *value, size_t size)
{
	const ProtobufCFieldDescriptor *member =
		protobuf_c_message_descriptor_get_field(&iommud__v1__request__descriptor, method);
	const ProtobufCMessageDescriptor *desc = member ? member->descriptor : NULL;
	union {
		ProtobufCMessage base;
		uint64_t words[8];
	} msg;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	if (!desc || desc->n_fields != 1 || desc->fields[0].type != type ||
	    desc->sizeof_message > sizeof(msg)) {
		(void)fprintf(stderr, "make_corpus: method %d does not take that one field\n",
			      method);
		exit(1);
	}
	protobuf_c_message_init(desc, &msg);
	memcpy((char *)&msg + desc->fields[0].offset, value, size);
	req.method_case = method;
	/* Every member of the method union is a message pointer at the same place. */
	req.free_domain = (Iommud__V1__FreeDomainRequest *)&msg;
	put(s, flags, &req);
}

#define DOMAIN_ONLY(s, flags, method, domain)                                                      \
	one_field(s, flags, IOMMUD__V1__REQUEST__METHOD_##method, PROTOBUF_C_TYPE_UINT32,          \
		  &(uint32_t){domain}, sizeof(uint32_t))
#define DEVICE_ONLY(s, flags, method, device)                                                      \
	one_field(s, flags, IOMMUD__V1__REQUEST__METHOD_##method, PROTOBUF_C_TYPE_STRING,          \
		  &(const char *){device}, sizeof(const char *))

static void hello(struct seed *s, unsigned flags, const char *lease)
{
	Iommud__V1__HelloRequest m = IOMMUD__V1__HELLO_REQUEST__INIT;

	m.client_version = 1;
	m.client_name = "fuzz";
	m.lease = (char *)lease;
	SEND(s, flags, hello, HELLO, &m);
}

static void list_devices(struct seed *s, unsigned flags)
{
	Iommud__V1__ListDevicesRequest m = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;

	SEND(s, flags, list_devices, LIST_DEVICES, &m);
}

static void get_device(struct seed *s, unsigned flags, const char *name)
{
	Iommud__V1__GetDeviceRequest m = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;

	m.name = (char *)name;
	SEND(s, flags, get_device, GET_DEVICE, &m);
}

static void alloc_domain(struct seed *s, unsigned flags, const char *device,
			 Iommud__V1__DomainType type, bool dirty, bool nest_parent)
{
	Iommud__V1__AllocDomainRequest m = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;

	m.device = (char *)device;
	m.type = type;
	m.dirty_tracking = dirty;
	m.nest_parent = nest_parent;
	SEND(s, flags, alloc_domain, ALLOC_DOMAIN, &m);
}

static void alloc_paging(struct seed *s, unsigned flags, const char *device)
{
	alloc_domain(s, flags, device, IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, false, false);
}

/* A nested domain over parent, with the emulated backend's stage-1 description (struct
 * kh_emu_s1: the IOVA of the stage-1 root table in the parent). */
static void alloc_nested(struct seed *s, unsigned flags, const char *device, uint32_t parent,
			 uint64_t root_iova)
{
	Iommud__V1__AllocDomainRequest m = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;

	m.device = (char *)device;
	m.type = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED;
	m.parent_id = parent;
	m.nest_data_type = 1; /* KH_NEST_DATA_EMU_S1 */
	m.nest_data.data = (uint8_t *)&root_iova;
	m.nest_data.len = sizeof(root_iova);
	SEND(s, flags, alloc_domain, ALLOC_DOMAIN, &m);
}

static void attach(struct seed *s, unsigned flags, const char *device, uint32_t domain)
{
	Iommud__V1__AttachDeviceRequest m = IOMMUD__V1__ATTACH_DEVICE_REQUEST__INIT;

	m.device = (char *)device;
	m.domain_id = domain;
	SEND(s, flags, attach_device, ATTACH_DEVICE, &m);
}

static void replace(struct seed *s, unsigned flags, const char *device, uint32_t domain)
{
	Iommud__V1__ReplaceDomainRequest m = IOMMUD__V1__REPLACE_DOMAIN_REQUEST__INIT;

	m.device = (char *)device;
	m.domain_id = domain;
	SEND(s, flags, replace_domain, REPLACE_DOMAIN, &m);
}

static void map_entry_init(Iommud__V1__MapEntry *e, uint32_t domain, uint32_t fd_index,
			   uint64_t offset, uint64_t length)
{
	iommud__v1__map_entry__init(e);
	e->domain_id = domain;
	e->fd_index = fd_index;
	e->offset = offset;
	e->length = length;
	e->prot = IOMMUD__V1__PROT__PROT_READ | IOMMUD__V1__PROT__PROT_WRITE;
}

/* Maps [offset, +length) of the harness's memfd; at iova when it is not 0. */
static void map(struct seed *s, unsigned flags, uint32_t domain, uint64_t offset, uint64_t length,
		uint64_t iova)
{
	Iommud__V1__MapRequest m = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__MapEntry e;

	map_entry_init(&e, domain, 0, offset, length);
	e.fixed_iova = iova != 0;
	e.iova = iova;
	m.entry = &e;
	SEND(s, flags, map, MAP, &m);
}

/* Two pages from each of two descriptors (copies of the memfd). */
static void map_batch(struct seed *s, unsigned flags, uint32_t domain)
{
	Iommud__V1__MapBatchRequest m = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry e[2], *entries[2] = {&e[0], &e[1]};

	map_entry_init(&e[0], domain, 0, 0, 2 * PAGE);
	map_entry_init(&e[1], domain, 1, 4 * PAGE, 2 * PAGE);
	e[1].alignment = 16 * PAGE;
	m.n_entries = 2;
	m.entries = entries;
	SEND(s, flags, map_batch, MAP_BATCH, &m);
}

/* map_batch's entries as columns: what both entries share once, the rest one value each; with
 * mismatched, a third IOVA, so that the other columns of two fall short (the daemon refuses it). */
static void map_batch_columns(struct seed *s, unsigned flags, uint32_t domain, bool mismatched)
{
	Iommud__V1__MapBatchRequest m = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntryColumns c = IOMMUD__V1__MAP_ENTRY_COLUMNS__INIT;
	uint32_t fd_indexes[2] = {0, 1}, prot = 3;
	uint64_t offsets[2] = {0, 4 * PAGE}, iovas[3] = {0x400000, 0x500000, 0x600000},
		 length = 2 * PAGE;
	protobuf_c_boolean fixed = true;

	c.n_domain_ids = c.n_lengths = c.n_prots = c.n_fixed_iovas = 1;
	c.n_fd_indexes = c.n_offsets = 2;
	c.n_iovas = mismatched ? 3 : 2;
	c.domain_ids = &domain;
	c.fd_indexes = fd_indexes;
	c.offsets = offsets;
	c.lengths = &length;
	c.prots = &prot;
	c.fixed_iovas = &fixed;
	c.iovas = iovas;
	m.columns = &c;
	SEND(s, flags, map_batch, MAP_BATCH, &m);
}

static void unmap(struct seed *s, unsigned flags, uint32_t domain, uint64_t iova, uint64_t length)
{
	Iommud__V1__UnmapRequest m = IOMMUD__V1__UNMAP_REQUEST__INIT;

	m.domain_id = domain;
	m.iova = iova;
	m.length = length;
	SEND(s, flags, unmap, UNMAP, &m);
}

static void list_mappings(struct seed *s, unsigned flags, uint32_t domain, uint32_t max)
{
	Iommud__V1__ListMappingsRequest m = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;

	m.domain_id = domain;
	m.max = max;
	SEND(s, flags, list_mappings, LIST_MAPPINGS, &m);
}

static void set_dirty_tracking(struct seed *s, unsigned flags, uint32_t domain, bool enable)
{
	Iommud__V1__SetDirtyTrackingRequest m = IOMMUD__V1__SET_DIRTY_TRACKING_REQUEST__INIT;

	m.domain_id = domain;
	m.enable = enable;
	SEND(s, flags, set_dirty_tracking, SET_DIRTY_TRACKING, &m);
}

static void read_dirty(struct seed *s, unsigned flags, uint32_t domain, uint64_t iova,
		       uint64_t length)
{
	Iommud__V1__ReadDirtyRequest m = IOMMUD__V1__READ_DIRTY_REQUEST__INIT;

	m.domain_id = domain;
	m.iova = iova;
	m.length = length;
	m.page_size = PAGE;
	SEND(s, flags, read_dirty, READ_DIRTY, &m);
}

static void get_stats(struct seed *s, unsigned flags)
{
	Iommud__V1__GetStatsRequest m = IOMMUD__V1__GET_STATS_REQUEST__INIT;

	SEND(s, flags, get_stats, GET_STATS, &m);
}

static void list_domains(struct seed *s, unsigned flags)
{
	Iommud__V1__ListDomainsRequest m = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;

	SEND(s, flags, list_domains, LIST_DOMAINS, &m);
}

static void release_lease(struct seed *s, unsigned flags)
{
	Iommud__V1__ReleaseLeaseRequest m = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;

	SEND(s, flags, release_lease, RELEASE_LEASE, &m);
}

/* ---- the seeds ------------------------------------------------------------------------ */

static void seed_hello(struct seed *s)
{
	hello(s, 0, "");
	get_stats(s, 0);
}

static void seed_list_devices(struct seed *s)
{
	list_devices(s, 0);
	get_device(s, 0, "emu0");
	get_device(s, 0, "nosuch");
}

static void seed_alloc_domain(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	alloc_domain(s, 0, "emu1", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED, false, false);
	alloc_domain(s, 0, "emu1", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_IDENTITY, false, false);
	list_domains(s, 0);
}

static void seed_map(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map(s, SEALED_MEMFD, DOMAIN, 0, 4 * PAGE, 0);
	map(s, SEALED_MEMFD, DOMAIN, 4 * PAGE, PAGE, 0x100000);
	list_mappings(s, 0, DOMAIN, 0);
}

static void seed_map_batch(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map_batch(s, SEALED_MEMFD | FDS(2), DOMAIN);
	list_domains(s, 0);
}

static void seed_map_batch_columns(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map_batch_columns(s, SEALED_MEMFD | FDS(2), DOMAIN, false);
	map_batch_columns(s, SEALED_MEMFD | FDS(2), DOMAIN, true);
	list_mappings(s, 0, DOMAIN, 0);
}

static void seed_unmap(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map(s, SEALED_MEMFD, DOMAIN, 0, 2 * PAGE, 0x200000);
	unmap(s, 0, DOMAIN, 0x200000, 2 * PAGE);
	unmap(s, 0, DOMAIN, 0x200000, 2 * PAGE);
}

static void seed_unmap_all(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map(s, SEALED_MEMFD, DOMAIN, 0, PAGE, 0);
	map(s, SEALED_MEMFD, DOMAIN, PAGE, PAGE, 0);
	DOMAIN_ONLY(s, 0, UNMAP_ALL, DOMAIN);
}

static void seed_list_mappings(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	for (unsigned i = 0; i < 4; i++)
		map(s, SEALED_MEMFD, DOMAIN, i * PAGE, PAGE, 0x10000 + i * 0x10000);
	list_mappings(s, 0, DOMAIN, 2);
}

static void seed_get_iova_ranges(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	attach(s, 0, "emu0", DOMAIN);
	DOMAIN_ONLY(s, 0, GET_IOVA_RANGES, DOMAIN);
}

static void seed_set_dirty_tracking(struct seed *s)
{
	alloc_domain(s, 0, "emu0", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, true, false);
	set_dirty_tracking(s, 0, DOMAIN, true);
	set_dirty_tracking(s, 0, DOMAIN, false);
}

static void seed_read_dirty(struct seed *s)
{
	alloc_domain(s, 0, "emu0", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, true, false);
	map(s, SEALED_MEMFD, DOMAIN, 0, 8 * PAGE, 0x400000);
	set_dirty_tracking(s, 0, DOMAIN, true);
	read_dirty(s, 0, DOMAIN, 0x400000, 8 * PAGE);
}

static void seed_get_stats(struct seed *s)
{
	get_stats(s, 0);
}

static void seed_list_domains(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	alloc_paging(s, 0, "emu1");
	attach(s, 0, "emu0", DOMAIN);
	list_domains(s, 0);
	list_devices(s, 0);
}

static void seed_free_domain(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	DOMAIN_ONLY(s, 0, FREE_DOMAIN, DOMAIN);
	DOMAIN_ONLY(s, 0, FREE_DOMAIN, DOMAIN);
}

static void seed_attach(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	attach(s, 0, "emu0", DOMAIN);
	DOMAIN_ONLY(s, 0, FREE_DOMAIN, DOMAIN);
}

static void seed_replace(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	alloc_paging(s, 0, "emu0");
	attach(s, 0, "emu0", DOMAIN);
	replace(s, 0, "emu0", DOMAIN2);
}

static void seed_detach(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	attach(s, 0, "emu0", DOMAIN);
	DEVICE_ONLY(s, 0, DETACH_DEVICE, "emu0");
	DEVICE_ONLY(s, 0, DETACH_DEVICE, "emu0");
}

static void seed_open_device(struct seed *s)
{
	DEVICE_ONLY(s, 0, OPEN_DEVICE, "emu0");
}

static void seed_nested(struct seed *s)
{
	alloc_domain(s, 0, "emu0", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, false, true);
	map(s, SEALED_MEMFD, DOMAIN, 0, 4 * PAGE, 0x1000000);
	alloc_nested(s, 0, "emu0", DOMAIN, 0x1000000);
	attach(s, 0, "emu0", DOMAIN2);
	DOMAIN_ONLY(s, 0, FREE_DOMAIN, DOMAIN);
}

/* A lease outlives its connection: reconnect to it, then end it. */
static void seed_release_lease(struct seed *s)
{
	hello(s, 0, "vm-1");
	alloc_paging(s, 0, "emu0");
	map(s, SEALED_MEMFD, DOMAIN, 0, PAGE, 0);
	hello(s, RECONNECT, "vm-1");
	list_domains(s, 0);
	release_lease(s, 0);
}

/* A lease the input leaves behind: the harness has to end it. */
static void seed_kept_lease(struct seed *s)
{
	hello(s, 0, "kept");
	alloc_paging(s, 0, "emu1");
}

/* Two sessions of one tenant wanting one device. */
static void seed_two_sessions(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	hello(s, CONN1, "other");
	alloc_paging(s, CONN1, "emu0");
	alloc_paging(s, CONN1, "emu1");
	release_lease(s, CONN1);
	list_devices(s, CONN1);
}

/* The anonymous session is shared by the connections of a tenant and lives while one does. */
static void seed_shared_session(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map(s, SEALED_MEMFD, DOMAIN, 0, PAGE, 0);
	list_mappings(s, CONN1, DOMAIN, 0);
	list_domains(s, RECONNECT);
	DOMAIN_ONLY(s, CONN1, UNMAP_ALL, DOMAIN);
}

/* A released lease still in use cannot be joined; one not released can, from another
 * connection. */
static void seed_lease_busy(struct seed *s)
{
	hello(s, 0, "vm-2");
	hello(s, CONN1, "vm-2");
	list_domains(s, CONN1);
	release_lease(s, 0);
	hello(s, CONN1 | RECONNECT, "vm-2");
}

/* More domains than the first allocation of the ListDomains reply holds. */
static void seed_many_domains(struct seed *s)
{
	for (unsigned i = 0; i < 10; i++)
		alloc_paging(s, 0, i % 2 ? "emu1" : "emu0");
	attach(s, 0, "emu1", 5);
	list_domains(s, 0);
}

/* A ReadDirty bitmap over the per-call limit, and one at it. */
static void seed_read_dirty_limits(struct seed *s)
{
	alloc_domain(s, 0, "emu0", IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, true, false);
	set_dirty_tracking(s, 0, DOMAIN, true);
	read_dirty(s, 0, DOMAIN, 0, 4096ull * 64 * PAGE + PAGE);
	read_dirty(s, 0, DOMAIN, 0, 4096ull * 64 * PAGE);
}

static void seed_alloc_map_unmap_free(struct seed *s)
{
	hello(s, 0, "");
	alloc_paging(s, 0, "emu0");
	attach(s, 0, "emu0", DOMAIN);
	map(s, SEALED_MEMFD, DOMAIN, 0, 16 * PAGE, 0);
	map_batch(s, SEALED_MEMFD | FDS(2), DOMAIN);
	list_mappings(s, 0, DOMAIN, 0);
	DOMAIN_ONLY(s, 0, UNMAP_ALL, DOMAIN);
	DEVICE_ONLY(s, 0, DETACH_DEVICE, "emu0");
	DOMAIN_ONLY(s, 0, FREE_DOMAIN, DOMAIN);
	list_domains(s, 0);
}

/* ---- malformed and refused packets ---------------------------------------------------- */

static void seed_garbage(struct seed *s)
{
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x12};
	/* Request.id, then field 13 (alloc_domain) claiming 100 bytes that are not there. */
	static const uint8_t short_field[] = {0x08, 0x01, 0x6a, 0x64, 0x10};
	/* Field 63, a method this daemon does not know, as an empty message. */
	static const uint8_t unknown_method[] = {0x08, 0x02, 0xfa, 0x03, 0x00};

	put_raw(s, 0, junk, sizeof(junk));
	put_raw(s, 0, short_field, sizeof(short_field));
	put_raw(s, 0, unknown_method, sizeof(unknown_method));
	list_devices(s, 0);
}

static void seed_oversize(struct seed *s)
{
	list_devices(s, OVERSIZE);
	get_stats(s, PIPE | TOO_MANY_FDS);
	get_stats(s, 0);
}

/* Descriptors a Map may not take, or the wrong number of them. */
static void seed_bad_fds(struct seed *s)
{
	alloc_paging(s, 0, "emu0");
	map(s, UNSEALED_MEMFD, DOMAIN, 0, PAGE, 0);
	map(s, PIPE, DOMAIN, 0, PAGE, 0);
	map(s, 0, DOMAIN, 0, PAGE, 0);
	map(s, SEALED_MEMFD | FDS(2), DOMAIN, 0, PAGE, 0);
	map(s, SEALED_MEMFD, DOMAIN, 60 * 1024, 2 * PAGE, 0);
	list_devices(s, SEALED_MEMFD);
}

static void seed_out_of_order_hello(struct seed *s)
{
	list_devices(s, 0);
	hello(s, 0, "late");
	hello(s, CONN1, "bad name!");
	hello(s, CONN1, "ok");
	hello(s, CONN1, "again");
}

/* ---- identities ------------------------------------------------------------------------ */

/* One uid and cgroup under two sections, a lease of one looked for by the other; cgroups that
 * differ only past 600 bytes; a peer that is gone; a cgroup that is not UTF-8. */
static void seed_identities(struct seed *s)
{
	hello(s, CONN(1) | RECONNECT | AS(1), "shared");
	alloc_paging(s, CONN(1), "emu1");
	hello(s, CONN(2) | RECONNECT | AS(2), "shared");
	list_domains(s, CONN(2));
	hello(s, CONN(1) | RECONNECT | AS(4), "deep");
	alloc_paging(s, CONN(1), "emu1");
	hello(s, CONN(2) | RECONNECT | AS(5), "deep");
	list_domains(s, CONN(2));
	hello(s, CONN(3) | RECONNECT | AS(7), "home");
	list_domains(s, CONN(3));
	hello(s, CONN(3) | RECONNECT | AS(6), NULL);
	get_stats(s, CONN(3));
	get_stats(s, 0);
}

/* Strings a proto3 decoder refuses, and one that a C string would cut. */
static void seed_bad_strings(struct seed *s)
{
	/* Request{id = 1, hello (10) = HelloRequest{lease (3) = "ab\0cd"}} */
	static const uint8_t nul_lease[] = {0x08, 0x01, 0x52, 0x07, 0x1a, 0x05,
					    'a',  'b',	0x00, 'c',  'd'};

	put_raw(s, 0, nul_lease, sizeof(nul_lease));
	get_device(s, 0, "emu\xff");
	get_device(s, CONN(1) | RECONNECT | AS(3), "\xe2\x82");
}

static const struct {
	const char *name;
	void (*write)(struct seed *s);
} seeds[] = {
	{"hello", seed_hello},
	{"list_devices", seed_list_devices},
	{"alloc_domain", seed_alloc_domain},
	{"map", seed_map},
	{"map_batch", seed_map_batch},
	{"map_batch_columns", seed_map_batch_columns},
	{"unmap", seed_unmap},
	{"unmap_all", seed_unmap_all},
	{"list_mappings", seed_list_mappings},
	{"get_iova_ranges", seed_get_iova_ranges},
	{"set_dirty_tracking", seed_set_dirty_tracking},
	{"read_dirty", seed_read_dirty},
	{"get_stats", seed_get_stats},
	{"list_domains", seed_list_domains},
	{"free_domain", seed_free_domain},
	{"attach", seed_attach},
	{"replace", seed_replace},
	{"detach", seed_detach},
	{"open_device", seed_open_device},
	{"nested", seed_nested},
	{"release_lease", seed_release_lease},
	{"kept_lease", seed_kept_lease},
	{"two_sessions", seed_two_sessions},
	{"shared_session", seed_shared_session},
	{"lease_busy", seed_lease_busy},
	{"many_domains", seed_many_domains},
	{"read_dirty_limits", seed_read_dirty_limits},
	{"alloc_map_unmap_free", seed_alloc_map_unmap_free},
	{"malformed_garbage", seed_garbage},
	{"malformed_oversize", seed_oversize},
	{"malformed_bad_fds", seed_bad_fds},
	{"malformed_hello_order", seed_out_of_order_hello},
	{"identities", seed_identities},
	{"malformed_strings", seed_bad_strings},
};

int main(int argc, char **argv)
{
	char path[4096];

	if (argc != 2) {
		(void)fprintf(stderr, "Usage: make_corpus DIR\n");
		return 2;
	}
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
		struct seed s = {0};

		(void)snprintf(path, sizeof(path), "%s/%s", argv[1], seeds[i].name);
		s.file = fopen(path, "wb");
		if (!s.file) {
			(void)fprintf(stderr, "make_corpus: %s: %s\n", path, strerror(errno));
			return 1;
		}
		seeds[i].write(&s);
		if (fclose(s.file) != 0) {
			(void)fprintf(stderr, "make_corpus: %s: %s\n", path, strerror(errno));
			return 1;
		}
	}
	return 0;
}
