// SPDX-License-Identifier: MIT
/* Named leases survive the daemon's death: under a supervisor that keeps the descriptor store
 * as systemd does, a daemon killed with SIGKILL is followed by one that holds every
 * acknowledged lease, domain, attachment and mapping as it was, charges the same quotas and
 * keeps no stray descriptor; a state record it cannot trust is refused with a message. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stddef.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>
#include <state_record.h>

#include "check.h"
#include "harness.h"
#include "supervisor.h"

static const char config[] = "probe-tier = off\n[access]\ndefault = none\n"
			     "[uid 0]\naccess = write\ndevices = emu*\nmax-domains = 8\n"
			     "max-mappings = 100000\nmax-pinned = 1G\nmax-leases = 4\n"
			     "[uid 65534]\naccess = write\n"
			     "[uid 65533]\naccess = read\nstats = all\n";
#define WRITER_UID   65534u /* may write, but is no observer */
#define OBSERVER_UID 65533u /* an observer that may only read */
#define DEVICES	     "emu0 emu1 emu2 emu3"
#define FILE_SIZE    (4u << 20)
#define PAGE	     4096u

/* ---- what a client sees of its session -------------------------------------------------- */

#define VIEW_MAX 4096

struct view {
	size_t n_domains;
	uint32_t domains[16];
	uint32_t attached[16]; /* the domain of each device emu0.. (0: none) */
	size_t n_maps;
	struct {
		uint32_t domain;
		uint64_t iova, length, offset;
		uint32_t prot;
	} maps[VIEW_MAX];
	uint64_t used_mappings, used_pinned, used_domains, used_tables, used_maps;
};

static Iommud__V1__Response *call(struct iommuctl *c, Iommud__V1__Request *req)
{
	Iommud__V1__Response *resp;

	supervisor_call_ok(c, iommuctl_call(c, req, NULL, 0, &resp, NULL, 0, NULL), "call");
	return resp;
}

static void view_mappings(struct iommuctl *c, uint32_t domain, struct view *v)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	bool more = true;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &list;
	list.domain_id = domain;
	while (more) {
		resp = call(c, &req);
		for (size_t i = 0; i < resp->list_mappings->n_mappings; i++) {
			const Iommud__V1__Mapping *m = resp->list_mappings->mappings[i];

			CHECK(v->n_maps < VIEW_MAX);
			v->maps[v->n_maps].domain = domain;
			v->maps[v->n_maps].iova = m->iova;
			v->maps[v->n_maps].length = m->length;
			v->maps[v->n_maps].offset = m->offset;
			v->maps[v->n_maps++].prot = m->prot;
		}
		more = resp->list_mappings->more;
		list.from = resp->list_mappings->next_from;
		iommuctl_response_free(resp);
	}
}

static void view_of(struct iommuctl *c, struct view *v)
{
	Iommud__V1__ListDomainsRequest list = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	Iommud__V1__Quota quota;

	memset(v, 0, sizeof(*v));
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS;
	req.list_domains = &list;
	resp = call(c, &req);
	for (size_t i = 0; i < resp->list_domains->n_domains; i++) {
		CHECK(v->n_domains < 16);
		const Iommud__V1__Domain *d = resp->list_domains->domains[i];

		v->domains[v->n_domains++] = d->domain_id;
		for (size_t j = 0; j < d->n_attached; j++) {
			CHECK(strncmp(d->attached[j], "emu", 3) == 0);
			v->attached[atoi(d->attached[j] + 3)] = d->domain_id;
		}
	}
	iommuctl_response_free(resp);
	for (size_t i = 0; i < v->n_domains; i++)
		view_mappings(c, v->domains[i], v);
	fixture_stats(c, &quota, NULL);
	v->used_mappings = quota.mappings;
	v->used_pinned = quota.pinned_bytes;
	v->used_domains = quota.domains;
	v->used_tables = quota.page_table_bytes;
	v->used_maps = quota.maps;
}

/* Quotas equal the sums of what is held. */
static void check_quotas(const struct view *v)
{
	uint64_t bytes = 0;

	for (size_t i = 0; i < v->n_maps; i++)
		bytes += v->maps[i].length;
	CHECK_EQ(v->used_mappings, v->n_maps);
	CHECK_EQ(v->used_pinned, bytes);
	CHECK_EQ(v->used_domains, v->n_domains);
}

/* Descriptors of the daemon whose target starts with prefix ("/memfd:iommud-state"). */
static size_t daemon_fds(const struct supervisor *sv, const char *prefix)
{
	char path[64], link[320], target[256];
	struct dirent *e;
	size_t n = 0;
	DIR *dir;

	(void)snprintf(path, sizeof(path), "/proc/%d/fd", (int)sv->f.pid);
	CHECK((dir = opendir(path)) != NULL);
	while ((e = readdir(dir))) {
		ssize_t len;

		(void)snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
		len = readlink(link, target, sizeof(target) - 1);
		if (len < 0)
			continue;
		target[len] = '\0';
		n += strncmp(target, prefix, strlen(prefix)) == 0;
	}
	(void)closedir(dir);
	return n;
}

/* Nothing leaked: one record, and each stored memory file held once by the daemon. */
static void check_descriptors(struct supervisor *sv, const char *file_prefix)
{
	char memfds[64];

	(void)snprintf(memfds, sizeof(memfds), "/memfd:%s", file_prefix);
	CHECK_EQ(supervisor_stored(sv, STATE_RECORD_PREFIX), 1);
	CHECK_EQ(daemon_fds(sv, "/memfd:iommud-state"), 1);
	CHECK_EQ(daemon_fds(sv, memfds), supervisor_stored(sv, "lease"));
}

/* ---- a kill keeps what was acknowledged ------------------------------------------------- */

static uint64_t map(struct iommuctl *c, uint32_t domain, int fd, uint64_t offset, uint64_t length,
		    uint32_t prot, bool fixed, uint64_t iova)
{
	supervisor_call_ok(c, iommuctl_map_fd(c, domain, fd, offset, length, prot, fixed, 0, &iova),
			   "map");
	return iova;
}

/* A lease with two domains (one attached), mappings of two files, a freed domain and an unmap
 * behind it, and a batch whose reply listed only the IOVAs the daemon picked (the record holds
 * every entry's all the same); returns the freed domain's id. */
static uint32_t build_lease(struct iommuctl *c, int a, int b)
{
	struct iommuctl_map_entry batch[3];
	uint32_t d1, d2, gone;

	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d1),
			   "alloc");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &d2),
			   "alloc");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu2", IOMMUCTL_DOMAIN_PAGING, 0, &gone),
			   "alloc");
	supervisor_call_ok(c, iommuctl_free_domain(c, gone), "free");
	supervisor_call_ok(c, iommuctl_attach(c, "emu0", d1), "attach");
	(void)map(c, d1, a, 0, 16 * PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 1u << 20);
	(void)map(c, d1, a, 64 * PAGE, 8 * PAGE, IOMMUCTL_PROT_READ, false, 0);
	(void)map(c, d1, b, 0, 32 * PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, false, 0);
	(void)map(c, d2, b, 128 * PAGE, 4 * PAGE, IOMMUCTL_PROT_WRITE, true, 1u << 30);
	supervisor_call_ok(c, iommuctl_unmap(c, d1, 1u << 20, 16 * PAGE, NULL), "unmap");
	(void)map(c, d1, a, 4 * PAGE, 4 * PAGE, IOMMUCTL_PROT_READ, true, 2u << 20);
	for (size_t i = 0; i < 3; i++)
		batch[i] = (struct iommuctl_map_entry){.domain_id = d2,
						       .fd = b,
						       .offset = (256 + 4 * i) * PAGE,
						       .length = (i + 1) * PAGE,
						       .prot = IOMMUCTL_PROT_READ,
						       .fixed_iova = i == 1,
						       .iova = 3u << 20};
	supervisor_call_ok(c, iommuctl_map_batch(c, batch, 3, NULL), "map batch");
	return gone;
}

TEST(lease_survives_kill)
{
	struct supervisor sv;
	struct view before, after;
	struct iommuctl *c, *anon;
	uint32_t gone, fresh;
	int a = iommuctl_memfd("survive-a", FILE_SIZE), b = iommuctl_memfd("survive-b", FILE_SIZE);

	CHECK_OK(a);
	CHECK_OK(b);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	gone = build_lease(c, a, b);
	view_of(c, &before);
	CHECK_EQ(before.n_maps, 7);
	/* A released lease and an anonymous session end with the daemon, as before. */
	anon = supervisor_connect_lease(&sv, NULL);
	supervisor_call_ok(anon,
			   iommuctl_alloc_domain(anon, "emu3", IOMMUCTL_DOMAIN_PAGING, 0, &fresh),
			   "alloc");
	iommuctl_close(anon);
	iommuctl_close(c);
	(void)close(a);
	(void)close(b);

	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "vm1");
	view_of(c, &after);
	CHECK(memcmp(&before, &after, sizeof(before)) == 0);
	check_quotas(&after);
	check_descriptors(&sv, "survive-");
	CHECK_EQ(supervisor_stored(&sv, "lease"), 2);
	/* Ids are never given again, the freed one's included. */
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu2", IOMMUCTL_DOMAIN_PAGING, 0, &fresh),
			   "alloc");
	CHECK(fresh > gone);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* ---- dirty bits lost at a rebuild read dirty once ---------------------------------------- */

#define DIRTY_IOVA  (1u << 20)
#define DIRTY_PAGES 48u

/* The pages of [DIRTY_IOVA + first * PAGE, +n pages) ReadDirty reports dirty. */
static unsigned dirty_pages(struct iommuctl *c, uint32_t domain, unsigned first, unsigned n,
			    bool no_clear)
{
	Iommud__V1__ReadDirtyRequest read = IOMMUD__V1__READ_DIRTY_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	unsigned dirty = 0;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_READ_DIRTY;
	req.read_dirty = &read;
	read.domain_id = domain;
	read.iova = DIRTY_IOVA + (uint64_t)first * PAGE;
	read.length = (uint64_t)n * PAGE;
	read.page_size = PAGE;
	read.no_clear = no_clear;
	resp = call(c, &req);
	for (size_t i = 0; i < resp->read_dirty->n_bitmap; i++)
		dirty += (unsigned)__builtin_popcountll(resp->read_dirty->bitmap[i]);
	iommuctl_response_free(resp);
	return dirty;
}

static void set_dirty_tracking(struct iommuctl *c, uint32_t domain, bool enable)
{
	Iommud__V1__SetDirtyTrackingRequest set = IOMMUD__V1__SET_DIRTY_TRACKING_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_SET_DIRTY_TRACKING;
	req.set_dirty_tracking = &set;
	set.domain_id = domain;
	set.enable = enable;
	iommuctl_response_free(call(c, &req));
}

/* The emulated domain is rebuilt from the record, so the bits its IOMMU gathered are gone: a
 * migration must see every mapped page dirty once, each range until a clearing read. */
TEST(rebuilt_dirty_tracking_reads_all_dirty_once)
{
	const unsigned half = DIRTY_PAGES / 2;
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t dom;
	int file = iommuctl_memfd("dirty-a", FILE_SIZE);

	CHECK_OK(file);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "migrating");
	supervisor_call_ok(c,
			   iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING,
						 IOMMUCTL_DOMAIN_DIRTY_TRACKING, &dom),
			   "alloc");
	/* Two mappings end to end and a hole after them, which is not mapped and reads clean. */
	(void)map(c, dom, file, 0, half * PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true,
		  DIRTY_IOVA);
	(void)map(c, dom, file, half * PAGE, (half - 4) * PAGE,
		  IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, DIRTY_IOVA + half * PAGE);
	set_dirty_tracking(c, dom, true);
	CHECK_EQ(dirty_pages(c, dom, 0, DIRTY_PAGES, false), 0);
	iommuctl_close(c);
	(void)close(file);

	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "migrating");
	CHECK_EQ(dirty_pages(c, dom, 0, DIRTY_PAGES, true), DIRTY_PAGES - 4);
	/* A clearing read of the first half clears that half only. */
	CHECK_EQ(dirty_pages(c, dom, 0, half, false), half);
	CHECK_EQ(dirty_pages(c, dom, 0, DIRTY_PAGES, false), half - 4);
	CHECK_EQ(dirty_pages(c, dom, 0, DIRTY_PAGES, false), 0);
	CHECK(supervisor_log_has(&sv, "every mapped page reads dirty once"));
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* Starts sv and makes lease with one domain and one page of a new memfd mapped. */
static struct iommuctl *small_lease(struct supervisor *sv, const char *lease, const char *file_name)
{
	struct iommuctl *c;
	uint32_t dom;
	int file = iommuctl_memfd(file_name, FILE_SIZE);

	CHECK_OK(file);
	supervisor_start(sv, config, DEVICES);
	c = supervisor_connect_lease(sv, lease);
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom),
			   "alloc");
	(void)map(c, dom, file, 0, PAGE, IOMMUCTL_PROT_READ, false, 0);
	(void)close(file);
	return c;
}

/* Sends a DaemonReexec request: 0, or a negative errno with the status in c. */
static int request_daemon_reexec(struct iommuctl *c)
{
	Iommud__V1__DaemonReexecRequest reexec = IOMMUD__V1__DAEMON_REEXEC_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	int rc;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_DAEMON_REEXEC;
	req.daemon_reexec = &reexec;
	rc = iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL);
	if (rc == 0)
		iommuctl_response_free(resp);
	return rc;
}

static void reexec_by_signal(struct supervisor *sv)
{
	CHECK(kill(sv->f.pid, SIGUSR2) == 0);
}

/* iommuctl daemon reexec's request, answered before the daemon goes. */
static void reexec_by_request(struct supervisor *sv)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(sv->f.socket_path, &c));
	supervisor_call_ok(c, request_daemon_reexec(c), "daemon reexec");
	iommuctl_close(c);
}

/* As a writer that is no observer, or a read-only observer: 0 when refused for that. */
static int request_reexec_refused(void *socket_path)
{
	struct iommuctl *c;
	int rc;

	if (iommuctl_connect(socket_path, &c) < 0)
		return 2;
	rc = request_daemon_reexec(c) < 0 &&
			     iommuctl_last_code(c) == IOMMUD__V1__CODE__CODE_PERMISSION_DENIED
		     ? 0
		     : 1;
	iommuctl_close(c);
	return rc;
}

/* The daemon executed again in the same process adopts the leases as after a crash. */
static void check_reexec(void (*reexec)(struct supervisor *sv))
{
	struct supervisor sv;
	struct view before, after;
	struct iommuctl *c;
	pid_t pid;
	int a = iommuctl_memfd("reexec-a", FILE_SIZE), b = iommuctl_memfd("reexec-b", FILE_SIZE);

	CHECK_OK(a);
	CHECK_OK(b);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	(void)build_lease(c, a, b);
	view_of(c, &before);
	iommuctl_close(c);
	(void)close(a);
	(void)close(b);
	pid = sv.f.pid;
	/* Only root and observers allowed to write may ask. */
	CHECK_EQ(run_as(WRITER_UID, request_reexec_refused, sv.f.socket_path), 0);
	CHECK_EQ(run_as(OBSERVER_UID, request_reexec_refused, sv.f.socket_path), 0);
	supervisor_unready(&sv);
	reexec(&sv);
	supervisor_wait_ready(&sv);
	CHECK_EQ(sv.f.pid, pid);
	CHECK(supervisor_log_has(&sv, "re-executing"));
	c = supervisor_connect_lease(&sv, "vm1");
	view_of(c, &after);
	CHECK(memcmp(&before, &after, sizeof(before)) == 0);
	check_quotas(&after);
	check_descriptors(&sv, "reexec-");
	iommuctl_close(c);
	supervisor_stop(&sv);
}

TEST(reexec_by_signal_keeps_leases)
{
	check_reexec(reexec_by_signal);
}

TEST(reexec_by_request_keeps_leases)
{
	check_reexec(reexec_by_request);
}

/* Without a service manager there is no record to carry the leases: the signal and the request
 * are refused, and the daemon serves on. */
TEST(reexec_needs_a_service_manager)
{
	struct daemon_fixture f;
	struct iommuctl *c;

	fixture_start(&f, config, DEVICES);
	CHECK(kill(f.pid, SIGUSR2) == 0);
	CHECK_OK(iommuctl_connect(f.socket_path, &c));
	supervisor_call_ok(c, iommuctl_hello(c, "survival", "vm1", NULL), "hello");
	CHECK(request_daemon_reexec(c) < 0);
	CHECK_EQ(iommuctl_last_code(c), IOMMUD__V1__CODE__CODE_UNIMPLEMENTED);
	CHECK(strstr(iommuctl_last_error(c), "keeps no state record") != NULL);
	iommuctl_close(c);
	fixture_stop(&f);
}

TEST(released_lease_ends_at_restart)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c = small_lease(&sv, "short", "released");
	{
		Iommud__V1__ReleaseLeaseRequest rel = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
		Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

		req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
		req.release_lease = &rel;
		iommuctl_response_free(call(c, &req));
	}
	/* Killed while the connection still holds the released lease. */
	supervisor_kill(&sv);
	iommuctl_close(c);
	supervisor_spawn(&sv);
	CHECK(supervisor_log_has(&sv, "was released before the restart"));
	CHECK_EQ(supervisor_stored(&sv, "lease"), 0);
	c = supervisor_connect_lease(&sv, "short");
	view_of(c, &v);
	CHECK_EQ(v.n_domains, 0);
	check_descriptors(&sv, "released");
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* ---- records that cannot be trusted ----------------------------------------------------- */

static struct record_header read_header(int fd)
{
	struct record_header h;

	CHECK(pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
	return h;
}

static void write_header(int fd, struct record_header *h, bool reseal)
{
	if (reseal)
		h->header_crc = record_crc32c(h, offsetof(struct record_header, header_crc));
	CHECK(pwrite(fd, h, sizeof(*h), 0) == (ssize_t)sizeof(*h));
}

static void flip_frame_byte(int fd)
{
	uint8_t byte;
	off_t at = (off_t)sizeof(struct record_header) + 8 + 2;

	CHECK(pread(fd, &byte, 1, at) == 1);
	byte ^= 0x5a;
	CHECK(pwrite(fd, &byte, 1, at) == 1);
}

static void cut_short(int fd)
{
	CHECK(ftruncate(fd, (off_t)sizeof(struct record_header) + 4) == 0);
}

static void older_format(int fd)
{
	struct record_header h = read_header(fd);

	h.version = STATE_RECORD_VERSION - 1;
	write_header(fd, &h, true);
}

static void damage_header(int fd)
{
	struct record_header h = read_header(fd);

	h.generation ^= 1;
	write_header(fd, &h, false);
}

static void not_a_record(int fd)
{
	CHECK(pwrite(fd, "garbage!", 8, 0) == 8);
}

/* Bytes past the committed length: a transaction whose commit the kill came before. */
static void torn_tail(int fd)
{
	struct record_header h = read_header(fd);

	CHECK(pwrite(fd, "\x20\0\0\0torn", 8, (off_t)(sizeof(h) + h.committed)) == 8);
}

static const struct damage {
	const char *what;
	void (*apply)(int fd);
	const char *said; /* in the log; NULL: the record is adopted */
} damages[] = {
	{"a frame's byte flipped", flip_frame_byte, "is damaged (checksum mismatch)"},
	{"cut short", cut_short, "it is truncated"},
	{"an older format", older_format, "it is of format version 0"},
	{"a damaged header", damage_header, "its header is damaged"},
	{"not a record", not_a_record, "it is not an iommud state record"},
	{"a torn tail", torn_tail, NULL},
};

static void check_damage(const struct damage *d)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c = small_lease(&sv, "vm1", "damaged");

	iommuctl_close(c);
	supervisor_kill(&sv);
	d->apply(supervisor_stored_fd(&sv, STATE_RECORD_PREFIX));
	/* Never a crash: the daemon comes up either way. */
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "vm1");
	view_of(c, &v);
	(void)fprintf(stderr, "%s: %zu domains, %zu mappings\n", d->what, v.n_domains, v.n_maps);
	if (d->said) {
		CHECK(supervisor_log_has(&sv, "is refused"));
		CHECK(supervisor_log_has(&sv, d->said));
		CHECK_EQ(v.n_domains, 0);
		CHECK_EQ(supervisor_stored(&sv, "lease"), 0);
	} else {
		CHECK_EQ(v.n_domains, 1);
		CHECK_EQ(v.n_maps, 1);
	}
	check_quotas(&v);
	check_descriptors(&sv, "damaged");
	iommuctl_close(c);
	supervisor_stop(&sv);
}

TEST(damaged_records_are_refused)
{
	for (size_t i = 0; i < sizeof(damages) / sizeof(damages[0]); i++)
		check_damage(&damages[i]);
}

/* ---- the checksum ------------------------------------------------------------------------ */

/* CRC-32C one bit at a time, as its definition reads. */
static uint32_t crc32c_by_bits(const uint8_t *p, size_t len)
{
	uint32_t crc = ~0u;

	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
	}
	return ~crc;
}

/* The record's checksum is CRC-32C on every length and alignment, so a record written by a
 * daemon that computes it one way is read by one that computes it another (an upgrade by
 * re-execution onto another CPU's path, a record handed over). */
static void check_crc32c(void)
{
	uint8_t bytes[80];

	CHECK_EQ(record_crc32c("123456789", 9), 0xe3069283u);
	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (uint8_t)(i * 37 + 11);
	for (size_t at = 0; at < 8; at++)
		for (size_t len = 0; len + at <= sizeof(bytes); len++)
			CHECK_EQ(record_crc32c(bytes + at, len), crc32c_by_bits(bytes + at, len));
}

TEST(record_checksum_is_crc32c)
{
	int status;
	pid_t pid = fork();

	CHECK(pid >= 0);
	/* The table, which a CPU without the crc32 instruction uses, in a process of its own
	 * since each chooses once. */
	if (pid == 0) {
		(void)setenv("IOMMUD_TEST_CRC32C_TABLE", "1", 1);
		check_crc32c();
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	check_crc32c();
}

/* ---- the sweep: kills at random points -------------------------------------------------- */

enum op_kind { OP_BATCH, OP_UNMAP, OP_ALLOC, OP_FREE };

#define BATCH_MAX 8

struct op {
	enum op_kind kind;
	size_t n;
	uint64_t iova[BATCH_MAX], length[BATCH_MAX], offset[BATCH_MAX];
	uint32_t file[BATCH_MAX];
	uint32_t domain; /* OP_FREE: the domain freed */
};

/* What the client knows is acknowledged: the mappings of its one mapped domain, and the
 * extra domains it allocated (last first). */
struct model {
	uint32_t dom;
	size_t n;
	uint64_t iova[VIEW_MAX], length[VIEW_MAX], offset[VIEW_MAX];
	size_t n_extra;
	uint32_t extra[8];
	uint64_t next_iova;
};

static void model_apply(struct model *m, const struct op *op, uint32_t allocated)
{
	switch (op->kind) {
	case OP_BATCH:
		for (size_t i = 0; i < op->n; i++, m->n++) {
			m->iova[m->n] = op->iova[i];
			m->length[m->n] = op->length[i];
			m->offset[m->n] = op->offset[i];
		}
		break;
	case OP_UNMAP:
		for (size_t i = 0; i < m->n; i++)
			if (m->iova[i] == op->iova[0]) {
				m->n--;
				m->iova[i] = m->iova[m->n];
				m->length[i] = m->length[m->n];
				m->offset[i] = m->offset[m->n];
				break;
			}
		break;
	case OP_ALLOC:
		m->extra[m->n_extra++] = allocated;
		break;
	case OP_FREE:
		m->n_extra--;
		break;
	}
}

static bool model_has(const struct model *m, uint64_t iova, uint64_t length, uint64_t offset)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->iova[i] == iova)
			return m->length[i] == length && m->offset[i] == offset;
	return false;
}

/* Whether what the daemon holds is the model: same mappings, same domains (an allocation
 * whose reply never came, 0 in the model, stands for any domain the model does not name). */
static bool model_matches(const struct model *m, const struct view *v)
{
	size_t known = 0;

	if (v->n_maps != m->n || v->n_domains != 1 + m->n_extra)
		return false;
	for (size_t i = 0; i < v->n_maps; i++)
		if (v->maps[i].domain != m->dom ||
		    !model_has(m, v->maps[i].iova, v->maps[i].length, v->maps[i].offset))
			return false;
	for (size_t i = 0; i < v->n_domains; i++)
		for (size_t j = 0; j < m->n_extra; j++)
			known += m->extra[j] && v->domains[i] == m->extra[j];
	for (size_t j = 0; j < m->n_extra; j++)
		known += !m->extra[j];
	return known == m->n_extra;
}

/* Learns the ids of allocations whose reply never came from what the daemon holds. */
static void model_learn_ids(struct model *m, const struct view *v)
{
	for (size_t j = 0; j < m->n_extra; j++) {
		for (size_t i = 0; i < v->n_domains && !m->extra[j]; i++) {
			bool named = v->domains[i] == m->dom;

			for (size_t k = 0; k < m->n_extra; k++)
				named |= v->domains[i] == m->extra[k];
			if (!named)
				m->extra[j] = v->domains[i];
		}
	}
}

static uint64_t rnd(uint64_t n)
{
	return (uint64_t)random() % n;
}

/* Plans the next op on the model as it will be once the ops before it are done (planned). */
static void plan_op(struct model *planned, struct op *op)
{
	uint64_t r = rnd(10);
	size_t i;

	memset(op, 0, sizeof(*op));
	if (r < 2 && planned->n_extra < 3) {
		op->kind = OP_ALLOC;
	} else if (r < 3 && planned->n_extra && planned->extra[planned->n_extra - 1]) {
		op->kind = OP_FREE;
		op->domain = planned->extra[planned->n_extra - 1];
	} else if (r < 6 && planned->n) {
		op->kind = OP_UNMAP;
		op->n = 1;
		i = rnd(planned->n);
		op->iova[0] = planned->iova[i];
		op->length[0] = planned->length[i];
	} else {
		op->kind = OP_BATCH;
		op->n = 1 + rnd(BATCH_MAX);
		for (i = 0; i < op->n; i++) {
			op->length[i] = PAGE * (1 + rnd(256));
			op->offset[i] = PAGE * rnd(FILE_SIZE / PAGE - 256);
			op->file[i] = (uint32_t)rnd(2);
			op->iova[i] = planned->next_iova;
			planned->next_iova += op->length[i] + PAGE;
		}
	}
	/* An allocation's id is learnt from its reply: 0 stands for it until then. */
	model_apply(planned, op, 0);
}

static void send_op(struct iommuctl *c, const struct model *m, const struct op *op,
		    const int files[2])
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry entries[BATCH_MAX], *list[BATCH_MAX];
	Iommud__V1__UnmapRequest unmap = IOMMUD__V1__UNMAP_REQUEST__INIT;
	Iommud__V1__AllocDomainRequest alloc = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;
	Iommud__V1__FreeDomainRequest free_dom = IOMMUD__V1__FREE_DOMAIN_REQUEST__INIT;
	bool used[2] = {false, false};
	int sent[2];
	size_t n_sent = 0;
	uint64_t id;

	switch (op->kind) {
	case OP_BATCH:
		/* Every descriptor sent must be used: the files the entries use, in order. */
		for (size_t i = 0; i < op->n; i++)
			used[op->file[i]] = true;
		for (size_t f = 0; f < 2; f++)
			if (used[f])
				sent[n_sent++] = files[f];
		for (size_t i = 0; i < op->n; i++) {
			iommud__v1__map_entry__init(&entries[i]);
			entries[i].domain_id = m->dom;
			entries[i].fd_index = op->file[i] && used[0] ? 1 : 0;
			entries[i].offset = op->offset[i];
			entries[i].length = op->length[i];
			entries[i].prot = IOMMUCTL_PROT_READ;
			entries[i].fixed_iova = true;
			entries[i].iova = op->iova[i];
			list[i] = &entries[i];
		}
		batch.n_entries = op->n;
		batch.entries = list;
		req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
		req.map_batch = &batch;
		supervisor_call_ok(c, iommuctl_send(c, &req, sent, n_sent, &id), "send");
		return;
	case OP_UNMAP:
		unmap.domain_id = m->dom;
		unmap.iova = op->iova[0];
		unmap.length = op->length[0];
		req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP;
		req.unmap = &unmap;
		break;
	case OP_ALLOC:
		alloc.device = "emu1";
		alloc.type = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING;
		req.method_case = IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN;
		req.alloc_domain = &alloc;
		break;
	case OP_FREE:
		free_dom.domain_id = op->domain;
		req.method_case = IOMMUD__V1__REQUEST__METHOD_FREE_DOMAIN;
		req.free_domain = &free_dom;
		break;
	}
	supervisor_call_ok(c, iommuctl_send(c, &req, NULL, 0, &id), "send");
}

#define OPS_PER_ROUND 3

/* Where the kills landed, printed at the end: rounds by ops acknowledged, and ops found done
 * whose reply never came (killed between the record's commit and the reply). */
static unsigned rounds_acked[OPS_PER_ROUND + 1], done_unacknowledged;

/* The replies that came before the kill: how many ops were acknowledged, each one's
 * allocation id learnt. */
static size_t acknowledged(struct iommuctl *c, struct op *ops, uint32_t *alloc_ids)
{
	Iommud__V1__Response *resp;
	size_t n = 0;

	while (n < OPS_PER_ROUND && iommuctl_recv(c, &resp, NULL, 0, NULL) == 0) {
		if (resp->status && resp->status->code != IOMMUD__V1__CODE__CODE_OK)
			(void)fprintf(stderr, "op %zu refused: %s\n", n, resp->status->message);
		CHECK_EQ(resp->status ? resp->status->code : 0, IOMMUD__V1__CODE__CODE_OK);
		alloc_ids[n] = ops[n].kind == OP_ALLOC ? resp->alloc_domain->domain_id : 0;
		iommuctl_response_free(resp);
		n++;
	}
	return n;
}

/* The daemon's state is the model after some prefix of the round's ops, at least the
 * acknowledged ones: each op is all or nothing, and none is applied before an earlier one. */
/* Says what the daemon held against what the client knew, for a round no prefix explains. */
static void dump_mismatch(const struct model *m, const struct op *ops, size_t acked,
			  const struct view *v)
{
	(void)fprintf(stderr,
		      "after the kill the daemon holds %zu mappings and %zu domains, which no "
		      "prefix of the round (%zu acknowledged) explains\n",
		      v->n_maps, v->n_domains, acked);
	for (size_t i = 0; i < v->n_maps; i++)
		(void)fprintf(stderr, "  held: domain %u iova 0x%llx length 0x%llx offset 0x%llx\n",
			      v->maps[i].domain, (unsigned long long)v->maps[i].iova,
			      (unsigned long long)v->maps[i].length,
			      (unsigned long long)v->maps[i].offset);
	for (size_t i = 0; i < m->n; i++)
		(void)fprintf(stderr, "  known before the round: iova 0x%llx length 0x%llx\n",
			      (unsigned long long)m->iova[i], (unsigned long long)m->length[i]);
	for (size_t i = 0; i < OPS_PER_ROUND; i++)
		(void)fprintf(stderr, "  op %zu: kind %d, %zu entries\n", i, (int)ops[i].kind,
			      ops[i].n);
}

static void check_round(struct model *m, const struct op *ops, size_t acked,
			const uint32_t *alloc_ids, const struct view *v)
{
	struct model *trial = malloc(sizeof(*trial));
	size_t p;

	CHECK(trial != NULL);
	for (p = acked; p <= OPS_PER_ROUND; p++) {
		*trial = *m;
		for (size_t i = 0; i < p; i++)
			model_apply(trial, &ops[i], i < acked ? alloc_ids[i] : 0);
		if (model_matches(trial, v))
			break;
	}
	if (p > OPS_PER_ROUND)
		dump_mismatch(m, ops, acked, v);
	CHECK(p <= OPS_PER_ROUND);
	rounds_acked[acked]++;
	done_unacknowledged += (unsigned)(p - acked);
	model_learn_ids(trial, v);
	*m = *trial;
	free(trial);
}

static void kill_round(struct supervisor *sv, struct model *m, const int files[2])
{
	struct op ops[OPS_PER_ROUND];
	struct model planned = *m;
	uint32_t alloc_ids[OPS_PER_ROUND];
	struct iommuctl *c = supervisor_connect_lease(sv, "sweep");
	struct timespec pause = {0, (long)rnd(150) * 1000};
	struct view *v = malloc(sizeof(*v));
	size_t acked;

	CHECK(v != NULL);
	for (size_t i = 0; i < OPS_PER_ROUND; i++) {
		plan_op(&planned, &ops[i]);
		send_op(c, m, &ops[i], files);
	}
	m->next_iova = planned.next_iova;
	/* A third of the kills come at once, while the daemon takes the round in. */
	if (rnd(3))
		nanosleep(&pause, NULL);
	supervisor_kill(sv);
	acked = acknowledged(c, ops, alloc_ids);
	iommuctl_close(c);
	/* Now and then the next daemon dies too, while it adopts. */
	if (rnd(8) == 0) {
		supervisor_launch(sv);
		pause.tv_nsec = (long)rnd(5000) * 1000;
		nanosleep(&pause, NULL);
		supervisor_kill(sv);
	}
	supervisor_spawn(sv);
	c = supervisor_connect_lease(sv, "sweep");
	view_of(c, v);
	iommuctl_close(c);
	check_round(m, ops, acked, alloc_ids, v);
	check_quotas(v);
	check_descriptors(sv, "sweep-");
	free(v);
}

TEST(kill_sweep)
{
	const char *kills_env = getenv("IOMMUD_TEST_KILLS");
	unsigned seed = (unsigned)time(NULL),
		 kills = kills_env ? (unsigned)atoi(kills_env) : SWEEP_KILLS;
	int files[2] = {iommuctl_memfd("sweep-0", FILE_SIZE), iommuctl_memfd("sweep-1", FILE_SIZE)};
	struct model *m = calloc(1, sizeof(*m));
	struct supervisor sv;
	struct iommuctl *c;

	CHECK(m != NULL);
	CHECK_OK(files[0]);
	CHECK_OK(files[1]);
	if (getenv("IOMMUD_TEST_SEED"))
		seed = (unsigned)atoi(getenv("IOMMUD_TEST_SEED"));
	(void)fprintf(stderr, "kill sweep: %u kills, IOMMUD_TEST_SEED=%u\n", kills, seed);
	srandom(seed);
	/* Snapshots every few changes, so kills land in compaction too. */
	CHECK(setenv("IOMMUD_TEST_COMPACT_BYTES", "4096", 1) == 0);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "sweep");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &m->dom),
			   "alloc");
	supervisor_call_ok(c, iommuctl_attach(c, "emu0", m->dom), "attach");
	iommuctl_close(c);
	m->next_iova = 1ull << 32;
	for (unsigned k = 0; k < kills; k++) {
		/* Bounded: past a few hundred mappings, start again from none. */
		if (m->n > 512) {
			c = supervisor_connect_lease(&sv, "sweep");
			supervisor_call_ok(c, iommuctl_unmap_all(c, m->dom, NULL), "unmap all");
			iommuctl_close(c);
			m->n = 0;
		}
		kill_round(&sv, m, files);
	}
	(void)fprintf(stderr,
		      "rounds by ops acknowledged before the kill: 0: %u, 1: %u, 2: %u, 3: %u; "
		      "ops done but not acknowledged: %u\n",
		      rounds_acked[0], rounds_acked[1], rounds_acked[2], rounds_acked[3],
		      done_unacknowledged);
	supervisor_stop(&sv);
	free(m);
}
/* ---- review reproductions ---------------------------------------------------------------- */

static void release_lease(struct iommuctl *c)
{
	Iommud__V1__ReleaseLeaseRequest rel = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &rel;
	iommuctl_response_free(call(c, &req));
}

/* R1: a compaction while a released lease still has a connection writes it as live. */
TEST(review_released_lease_compacted)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c;

	CHECK(setenv("IOMMUD_TEST_COMPACT_BYTES", "1", 1) == 0);
	c = small_lease(&sv, "short", "released");
	release_lease(c);
	/* any acknowledged call compacts now (threshold 1 byte) */
	{
		struct iommuctl *o = supervisor_connect_lease(&sv, "other");
		uint32_t d;
		supervisor_call_ok(o,
				   iommuctl_alloc_domain(o, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &d),
				   "alloc");
		iommuctl_close(o);
	}
	supervisor_kill(&sv);
	iommuctl_close(c);
	supervisor_spawn(&sv);
	CHECK(supervisor_log_has(&sv, "was released before the restart"));
	c = supervisor_connect_lease(&sv, "short");
	view_of(c, &v);
	(void)fprintf(stderr, "R1: released lease has %zu domains after restart\n", v.n_domains);
	CHECK_EQ(v.n_domains, 0);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* R3: two binds synced by one call are recorded newest first; the older one is refused. */
TEST(review_binds_synced_out_of_order)
{
	struct supervisor sv;
	struct view before, after;
	struct iommuctl *c;
	uint32_t d;

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "binds");
	/* binds emu1, then fails: no such domain; nothing recorded */
	CHECK(iommuctl_attach(c, "emu1", 999) < 0);
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	supervisor_call_ok(c, iommuctl_attach(c, "emu1", d), "attach");
	view_of(c, &before);
	iommuctl_close(c);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "binds");
	view_of(c, &after);
	(void)fprintf(stderr, "R3: emu1 attached to %u before, %u after\n", before.attached[1],
		      after.attached[1]);
	CHECK_EQ(after.attached[1], before.attached[1]);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

#define R2_CONFIG                                                                                  \
	"probe-tier = off\n[access]\ndefault = none\n"                                             \
	"[uid 0]\naccess = write\ndevices = emu*\n"

/* R2: an Unmap whose client left is finished but never recorded: a later acknowledged Map at
 * the same IOVA is lost at the restart, and the unmapped one comes back. */
TEST(review_abandoned_unmap_unrecorded)
{
	Iommud__V1__UnmapAllRequest ua = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	struct supervisor sv;
	struct view v;
	struct iommuctl *c, *c2;
	uint32_t d;
	int big = iommuctl_memfd("r2-big", 2ull << 30),
	    small = iommuctl_memfd("r2-small", FILE_SIZE);
	uint64_t iova = (4ull << 30) + 4096;

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	CHECK_OK(big);
	CHECK_OK(small);
	supervisor_start(&sv, R2_CONFIG, DEVICES);
	c = supervisor_connect_lease(&sv, "r2");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	(void)map(c, d, big, 0, 1ull << 30, IOMMUCTL_PROT_READ, true, iova);
	(void)map(c, d, big, 1ull << 30, 1ull << 30, IOMMUCTL_PROT_READ, true, iova + (1ull << 30));
	c2 = supervisor_connect_lease(&sv, "r2");
	ua.domain_id = d;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL;
	req.unmap_all = &ua;
	req.id = 5;
	{
		uint64_t sid;
		CHECK_OK(iommuctl_send(c, &req, NULL, 0, &sid));
	}
	iommuctl_close(c);
	/* runs once the abandoned UnmapAll is done (the tenant's flow is held till then) */
	memset(&v, 0, sizeof(v));
	for (int i = 0; i < 1000; i++) {
		memset(&v, 0, sizeof(v));
		view_mappings(c2, d, &v);
		if (!v.n_maps)
			break;
		usleep(10000);
	}
	(void)fprintf(stderr, "R2: %zu mappings left after the abandoned UnmapAll\n", v.n_maps);
	CHECK_EQ(v.n_maps, 0);
	(void)map(c2, d, small, 0, PAGE, IOMMUCTL_PROT_READ, true, iova);
	iommuctl_close(c2);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "r2");
	memset(&v, 0, sizeof(v));
	view_mappings(c, d, &v);
	(void)fprintf(stderr, "R2: after restart %zu mappings; first at 0x%llx length 0x%llx\n",
		      v.n_maps, v.n_maps ? (unsigned long long)v.maps[0].iova : 0ull,
		      v.n_maps ? (unsigned long long)v.maps[0].length : 0ull);
	CHECK_EQ(v.n_maps, 1);
	CHECK_EQ(v.maps[0].length, PAGE);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(big);
	(void)close(small);
}

/* R4: a lease released and made again under the same name before a compaction: the replay
 * joins both records to one session. */
TEST(review_lease_name_reused)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c = small_lease(&sv, "vm1", "reused-a");
	uint32_t d;
	int file = iommuctl_memfd("reused-b", FILE_SIZE);

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	release_lease(c);
	iommuctl_close(c);
	c = supervisor_connect_lease(&sv, "vm1");
	for (int i = 0; i < 100; i++) {
		view_of(c, &v);
		if (!v.n_domains)
			break;
		iommuctl_close(c);
		usleep(10000);
		c = supervisor_connect_lease(&sv, "vm1");
	}
	CHECK_EQ(v.n_domains, 0);
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu1", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	(void)map(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, false, 0);
	iommuctl_close(c);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "vm1");
	view_of(c, &v);
	(void)fprintf(stderr, "R4: lease vm1 has %zu domains, %zu mappings after restart\n",
		      v.n_domains, v.n_maps);
	/* the released lease's content is not rebuilt: its files left the store at the release */
	CHECK(!supervisor_log_has(&sv, "the store holds no"));
	CHECK_EQ(v.n_domains, 1);
	CHECK_EQ(v.n_maps, 1);
	/* a compaction reads every lease_rec's session */
	{
		struct iommuctl *o = supervisor_connect_lease(&sv, "other");
		uint32_t d2;

		CHECK(setenv("IOMMUD_TEST_COMPACT_BYTES", "1", 1) == 0);
		supervisor_call_ok(o,
				   iommuctl_alloc_domain(o, "emu2", IOMMUCTL_DOMAIN_PAGING, 0, &d2),
				   "alloc");
		iommuctl_close(o);
	}
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}

/* Makes the daemon's notifications fail (the manager's socket is not where it was) or work
 * again, as a manager that refuses what it is handed would. */
static void notify_socket_away(struct supervisor *sv, bool away)
{
	char here[160], there[170];

	(void)snprintf(here, sizeof(here), "%s/notify", sv->f.dir);
	(void)snprintf(there, sizeof(there), "%s.away", here);
	CHECK(rename(away ? here : there, away ? there : here) == 0);
}

/* A Map whose memory file the store refused: the reply says the mapping is in effect yet
 * unrecorded, the lease's next change waits for a snapshot, and once one is written the
 * mapping survives a kill. */
TEST(unrecorded_change_is_said_and_caught_up)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c;
	uint32_t d;
	uint64_t iova = 1ull << 32;
	int first = iommuctl_memfd("unrec-a", FILE_SIZE),
	    second = iommuctl_memfd("unrec-b", FILE_SIZE);

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	CHECK_OK(first);
	CHECK_OK(second);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "unrec");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	notify_socket_away(&sv, true);
	CHECK(iommuctl_map_fd(c, d, first, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova) < 0);
	CHECK(strstr(iommuctl_last_error(c), "the change took effect") != NULL);
	iova += PAGE;
	CHECK(iommuctl_map_fd(c, d, second, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova) < 0);
	CHECK(strstr(iommuctl_last_error(c), "could not be rewritten yet") != NULL);
	notify_socket_away(&sv, false);
	(void)map(c, d, second, 0, PAGE, IOMMUCTL_PROT_READ, true, iova);
	iommuctl_close(c);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "unrec");
	memset(&v, 0, sizeof(v));
	view_mappings(c, d, &v);
	CHECK_EQ(v.n_maps, 2);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(first);
	(void)close(second);
}

/* The store takes few descriptors ($FDSTORE): a Map that needs one more memory file than fit,
 * a slot kept free for the record's rewriting, is refused before mapping, and what was
 * acknowledged still survives a kill. */
TEST(store_capacity_is_kept)
{
	struct supervisor sv;
	struct view v;
	struct iommuctl *c;
	uint32_t d;
	int files[3];

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	/* the record, one memory file, and the slot a rewritten record needs */
	CHECK(setenv("FDSTORE", "3", 1) == 0);
	for (int i = 0; i < 3; i++)
		CHECK_OK(files[i] = iommuctl_memfd("capacity", FILE_SIZE));
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "capacity");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	(void)map(c, d, files[0], 0, PAGE, IOMMUCTL_PROT_READ, true, 1ull << 32);
	(void)map(c, d, files[0], PAGE, PAGE, IOMMUCTL_PROT_READ, true, (1ull << 32) + PAGE);
	{
		uint64_t iova = (1ull << 32) + 2 * PAGE;

		CHECK(iommuctl_map_fd(c, d, files[1], 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova) <
		      0);
		CHECK(strstr(iommuctl_last_error(c), "descriptor store") != NULL);
	}
	memset(&v, 0, sizeof(v));
	view_mappings(c, d, &v);
	CHECK_EQ(v.n_maps, 2);
	iommuctl_close(c);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "capacity");
	memset(&v, 0, sizeof(v));
	view_mappings(c, d, &v);
	CHECK_EQ(v.n_maps, 2);
	/* As the refusal advises: once the first file's mappings are gone, the other fits. */
	supervisor_call_ok(c, iommuctl_unmap_all(c, d, NULL), "unmap_all");
	(void)map(c, d, files[1], 0, PAGE, IOMMUCTL_PROT_READ, true, 1ull << 32);
	iommuctl_close(c);
	supervisor_stop(&sv);
	unsetenv("FDSTORE");
	for (int i = 0; i < 3; i++)
		(void)close(files[i]);
}

/* FDSTORE=0: the manager keeps nothing, so no record is kept, and the daemon says so. */
TEST(empty_store_keeps_no_record)
{
	struct supervisor sv;

	CHECK(setenv("FDSTORE", "0", 1) == 0);
	supervisor_start(&sv, config, DEVICES);
	CHECK(supervisor_log_has(&sv, "no record is kept"));
	CHECK_EQ(supervisor_stored(&sv, "state."), 0);
	supervisor_stop(&sv);
	unsetenv("FDSTORE");
}

/* The supervisor's configuration with its text from changed to to, for the next daemon. */
static void replace_in_config(const struct supervisor *sv, const char *from, const char *to)
{
	char text[4096], *at;
	size_t n;
	FILE *conf = fopen(sv->config_path, "r");

	CHECK(conf != NULL);
	n = fread(text, 1, sizeof(text) - 1, conf);
	(void)fclose(conf);
	text[n] = '\0';
	CHECK((at = strstr(text, from)) != NULL);
	CHECK((conf = fopen(sv->config_path, "w")) != NULL);
	(void)fprintf(conf, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
	CHECK(fclose(conf) == 0);
}

/* A MapBatch that the restarted daemon cannot rebuild whole (its configuration now allows
 * fewer mappings) is rebuilt not at all; a Map acknowledged before it stays. */
TEST(batch_replayed_whole_or_not_at_all)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntry entries[2], *list[2] = {&entries[0], &entries[1]};
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct supervisor sv;
	struct view v;
	struct iommuctl *c;
	uint32_t d;
	int file = iommuctl_memfd("batch-whole", FILE_SIZE);

	unsetenv("IOMMUD_TEST_COMPACT_BYTES");
	CHECK_OK(file);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "batch");
	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	(void)map(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, true, 1ull << 32);
	for (size_t i = 0; i < 2; i++) {
		iommud__v1__map_entry__init(&entries[i]);
		entries[i].domain_id = d;
		entries[i].offset = (i + 1) * PAGE;
		entries[i].length = PAGE;
		entries[i].prot = IOMMUCTL_PROT_READ;
		entries[i].fixed_iova = true;
		entries[i].iova = (1ull << 32) + (i + 1) * PAGE;
	}
	batch.n_entries = 2;
	batch.entries = list;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	supervisor_call_ok(c, iommuctl_call(c, &req, &file, 1, &resp, NULL, 0, NULL), "map batch");
	iommuctl_response_free(resp);
	iommuctl_close(c);
	supervisor_kill(&sv);
	replace_in_config(&sv, "max-mappings = 100000", "max-mappings = 2");
	supervisor_spawn(&sv);
	c = supervisor_connect_lease(&sv, "batch");
	memset(&v, 0, sizeof(v));
	view_mappings(c, d, &v);
	CHECK_EQ(v.n_maps, 1);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}

/* ---- a kernel descriptor's removal is read by the manager before the daemon goes on ------- */

/* A kernel descriptor leaves the store before the daemon answers anything: a manager that
 * reads its messages late (held here) has closed its copy by then, or on iommufd the device
 * bound to the context it holds could not be bound by the first session. The strays an earlier
 * daemon left are removed as kernel descriptors. The barrier's timeout is set longer than any
 * test runs, so that the check does not depend on how soon the supervisor's thread reads it. */
TEST(kernel_removal_read_before_first_answer)
{
	struct supervisor sv;
	struct iommuctl *c;
	int stray = iommuctl_memfd("stray", PAGE);
	unsigned long removals;

	CHECK_OK(stray);
	CHECK(setenv("IOMMUD_TEST_BARRIER_USEC", "3600000000", 1) == 0);
	supervisor_start(&sv, config, DEVICES);
	supervisor_kill(&sv);
	supervisor_store(&sv, "lease99.iommu", stray);
	removals = supervisor_removals(&sv);
	supervisor_hold(&sv);
	supervisor_launch(&sv);
	/* The check waits for a Hello's answer, not for READY=1, which the supervisor would hold
	 * too were the daemon not to wait; waiting for a removal first makes a death at start
	 * said rather than hung. */
	supervisor_wait_removals(&sv, removals);
	c = supervisor_connect_lease(&sv, "first");
	CHECK(!supervisor_log_has(&sv, "did not answer BARRIER=1"));
	CHECK_EQ(supervisor_stored(&sv, "lease99"), 0);
	supervisor_let_go(&sv);
	supervisor_wait_ready(&sv);
	iommuctl_close(c);
	supervisor_stop(&sv);
}
