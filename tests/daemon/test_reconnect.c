// SPDX-License-Identifier: MIT
/* What a client sees of a daemon restart: libiommuctl reconnects a handle on a lease by itself
 * and re-opens the lease, refuses to hand an anonymous handle a new empty session, gives up
 * with a message when the daemon is not back, and a Map sent again because its reply was lost
 * is answered as done when the mapping is in place exactly as asked, while any other mapping
 * over it stays refused. Runs under the supervisor that keeps the descriptor store. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "check.h"
#include "harness.h"
#include "supervisor.h"

static const char config[] = "probe-tier = off\n[access]\ndefault = none\n"
			     "[uid 0]\naccess = write\ndevices = emu*\nmax-domains = 8\n"
			     "max-mappings = 1000\nmax-pinned = 1G\nmax-leases = 4\n";
#define DEVICES	  "emu0 emu1"
#define FILE_SIZE (1u << 20)
#define PAGE	  4096u
#define IOVA	  (1ull << 32)

/* Calls method with its request message msg (every member of the oneof is a message pointer
 * in the same place) and the descriptor fd (-1: none). */
static int call_msg(struct iommuctl *c, Iommud__V1__Request__MethodCase method, void *msg, int fd,
		    Iommud__V1__Response **ret_resp)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.method_case = method;
	req.hello = msg;
	return iommuctl_call(c, &req, fd < 0 ? NULL : &fd, fd < 0 ? 0 : 1, ret_resp, NULL, 0, NULL);
}

static uint32_t new_domain(struct iommuctl *c)
{
	uint32_t d;

	supervisor_call_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d),
			   "alloc");
	return d;
}

/* The domain's mappings as (iova, length, offset, prot) rows, at most max. */
static size_t list_mappings(struct iommuctl *c, uint32_t domain, uint64_t (*rows)[4], size_t max)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Response *resp;
	size_t n;

	list.domain_id = domain;
	supervisor_call_ok(c,
			   call_msg(c, IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS, &list, -1, &resp),
			   "list mappings");
	n = resp->list_mappings->n_mappings;
	CHECK(n <= max && !resp->list_mappings->more);
	for (size_t i = 0; i < n; i++) {
		const Iommud__V1__Mapping *m = resp->list_mappings->mappings[i];

		rows[i][0] = m->iova;
		rows[i][1] = m->length;
		rows[i][2] = m->offset;
		rows[i][3] = m->prot;
	}
	iommuctl_response_free(resp);
	return n;
}

static int map_at(struct iommuctl *c, uint32_t domain, int fd, uint64_t offset, uint64_t length,
		  uint32_t prot, uint64_t iova)
{
	uint64_t at = iova;
	int rc = iommuctl_map_fd(c, domain, fd, offset, length, prot, true, 0, &at);

	if (rc == 0)
		CHECK_EQ(at, iova);
	return rc;
}

/* ---- reconnecting ------------------------------------------------------------------------ */

TEST(lease_reopened_after_kill)
{
	struct supervisor sv;
	uint64_t rows[4][4];
	struct iommuctl *c;
	uint32_t d;
	int file = iommuctl_memfd("reconnect-a", FILE_SIZE);

	CHECK_OK(file);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	d = new_domain(c);
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), "map");
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	/* The same handle, with no call of its own to reconnect. */
	CHECK_EQ(list_mappings(c, d, rows, 4), 1);
	CHECK_EQ(rows[0][0], IOVA);
	supervisor_call_ok(c, map_at(c, d, file, PAGE, PAGE, IOMMUCTL_PROT_READ, IOVA + PAGE),
			   "map after");
	CHECK_EQ(list_mappings(c, d, rows, 4), 2);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}

TEST(anonymous_session_not_reopened)
{
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t d;

	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, NULL);
	(void)new_domain(c);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	/* Its domain is gone: the handle says so instead of working in a new, empty session. */
	CHECK_EQ(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &d), -ECONNRESET);
	CHECK(strstr(iommuctl_last_error(c), "anonymous session") != NULL);
	CHECK_EQ(iommuctl_free_domain(c, 1), -ECONNRESET);
	/* Asked for, a new connection starts afresh. */
	supervisor_call_ok(c, iommuctl_reconnect(c), "reconnect");
	(void)new_domain(c);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

TEST(released_lease_not_reopened)
{
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct supervisor sv;
	struct iommuctl *c;

	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "gone");
	(void)new_domain(c);
	supervisor_call_ok(
		c, call_msg(c, IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE, &release, -1, &resp),
		"release");
	iommuctl_response_free(resp);
	supervisor_kill(&sv);
	supervisor_spawn(&sv);
	CHECK_EQ(iommuctl_free_domain(c, 1), -ECONNRESET);
	CHECK(strstr(iommuctl_last_error(c), "was released") != NULL);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* A lease the new daemon does not hold is not made anew behind the client's back. */
TEST(lease_not_held_is_refused)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct supervisor sv;
	struct iommuctl *c;

	supervisor_start(&sv, config, DEVICES);
	CHECK_OK(iommuctl_connect(sv.f.socket_path, &c));
	hello.client_version = IOMMUCTL_PROTOCOL_VERSION;
	hello.lease = "never-made";
	hello.existing_lease = true;
	CHECK_EQ(call_msg(c, IOMMUD__V1__REQUEST__METHOD_HELLO, &hello, -1, &resp), -ENOENT);
	CHECK_EQ(iommuctl_last_code(c), IOMMUD__V1__CODE__CODE_NOT_FOUND);
	CHECK(strstr(iommuctl_last_error(c), "never-made") != NULL);
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* Starts sv with a handle on a lease holding domain *ret_domain, whose reconnects are given
 * reconnect_ms, and kills the daemon. */
static struct iommuctl *killed_under(struct supervisor *sv, unsigned reconnect_ms,
				     uint32_t *ret_domain)
{
	struct iommuctl *c;

	supervisor_start(sv, config, DEVICES);
	c = supervisor_connect_lease(sv, "vm1");
	*ret_domain = new_domain(c);
	iommuctl_set_reconnect(c, reconnect_ms);
	supervisor_kill(sv);
	return c;
}

TEST(reconnect_turned_off)
{
	struct supervisor sv;
	uint32_t d;
	struct iommuctl *c = killed_under(&sv, 0, &d);

	supervisor_spawn(&sv);
	CHECK_EQ(iommuctl_free_domain(c, d), -ENOTCONN);
	CHECK(strstr(iommuctl_last_error(c), "turned off") != NULL);
	supervisor_call_ok(c, iommuctl_reconnect(c), "reconnect");
	supervisor_call_ok(c, iommuctl_free_domain(c, d), "free the lease's domain");
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* The socket stays with the service manager, so a daemon not back shows as no answer. */
TEST(gives_up_when_daemon_not_back)
{
	struct supervisor sv;
	uint32_t d;
	struct iommuctl *c = killed_under(&sv, 300, &d);

	CHECK_EQ(iommuctl_free_domain(c, d), -ETIMEDOUT);
	CHECK(strstr(iommuctl_last_error(c), "not back") != NULL);
	/* The connection that got no answer is dropped; once the daemon is back, the next request
	 * reconnects (the queued Hello is answered on a connection nobody reads any more). */
	supervisor_spawn(&sv);
	supervisor_call_ok(c, iommuctl_free_domain(c, d), "free after the daemon is back");
	iommuctl_close(c);
	supervisor_stop(&sv);
}

/* ---- a Map sent again ------------------------------------------------------------------- */

/* Pages at offsets of fd, each at IOVA + its offset: as MapEntry messages, or as columns. */
static int map_batch(struct iommuctl *c, uint32_t domain, int fd, const uint64_t *offsets, size_t n,
		     bool as_columns, uint64_t *ret_iovas)
{
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__MapEntryColumns columns = IOMMUD__V1__MAP_ENTRY_COLUMNS__INIT;
	Iommud__V1__MapEntry entries[4], *list[4];
	uint64_t copies[4], iovas[4], length = PAGE;
	uint32_t prot = IOMMUCTL_PROT_READ;
	protobuf_c_boolean fixed = true;
	Iommud__V1__Response *resp;
	int rc;

	CHECK(n <= 4);
	for (size_t i = 0; i < n; i++) {
		iommud__v1__map_entry__init(&entries[i]);
		entries[i].domain_id = domain;
		entries[i].offset = offsets[i];
		entries[i].length = PAGE;
		entries[i].prot = IOMMUCTL_PROT_READ;
		entries[i].fixed_iova = true;
		entries[i].iova = IOVA + offsets[i];
		list[i] = &entries[i];
		copies[i] = offsets[i];
		iovas[i] = entries[i].iova;
	}
	columns.n_domain_ids = columns.n_lengths = columns.n_prots = columns.n_fixed_iovas = 1;
	columns.domain_ids = &domain;
	columns.lengths = &length;
	columns.prots = &prot;
	columns.fixed_iovas = &fixed;
	columns.n_offsets = columns.n_iovas = n;
	columns.offsets = copies;
	columns.iovas = iovas;
	if (as_columns) {
		batch.columns = &columns;
	} else {
		batch.n_entries = n;
		batch.entries = list;
	}
	rc = call_msg(c, IOMMUD__V1__REQUEST__METHOD_MAP_BATCH, &batch, fd, &resp);
	if (rc < 0)
		return rc;
	CHECK_EQ(resp->map_batch->n_iovas, n);
	for (size_t i = 0; i < n; i++)
		ret_iovas[i] = resp->map_batch->iovas[i];
	iommuctl_response_free(resp);
	return 0;
}

/* The daemon killed and started again rebuilds the lease's n mappings of d exactly as they were
 * (before, as list_mappings read them). */
static void expect_rebuilt(struct supervisor *sv, struct iommuctl *c, uint32_t d,
			   uint64_t (*before)[4], size_t n)
{
	uint64_t rows[8][4];

	supervisor_kill(sv);
	supervisor_spawn(sv);
	CHECK_EQ(list_mappings(c, d, rows, 8), n);
	CHECK(memcmp(rows, before, n * sizeof(rows[0])) == 0);
	CHECK(!supervisor_log_has(sv, "cannot rebuild"));
}

TEST(identical_map_answered_as_done)
{
	uint64_t rows[8][4], before[8][4], iovas[4];
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t d;
	size_t n;
	int file = iommuctl_memfd("retry-a", FILE_SIZE),
	    other = iommuctl_memfd("retry-b", FILE_SIZE);

	CHECK_OK(file);
	CHECK_OK(other);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	d = new_domain(c);
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), "map");
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA),
			   "the same map again");
	/* Anything else at that IOVA is still refused. */
	CHECK_EQ(map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, IOVA),
		 -EEXIST);
	CHECK_EQ(map_at(c, d, file, PAGE, PAGE, IOMMUCTL_PROT_READ, IOVA), -EEXIST);
	CHECK_EQ(map_at(c, d, file, 0, 2 * PAGE, IOMMUCTL_PROT_READ, IOVA), -EEXIST);
	CHECK_EQ(map_at(c, d, other, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), -EEXIST);
	CHECK_EQ(list_mappings(c, d, rows, 8), 1);

	/* A batch is done when all of it is in place, refused whole when part of it is not. */
	supervisor_call_ok(
		c, map_batch(c, d, file, (const uint64_t[]){PAGE, 2 * PAGE}, 2, false, iovas),
		"batch");
	supervisor_call_ok(
		c, map_batch(c, d, file, (const uint64_t[]){PAGE, 2 * PAGE}, 2, false, iovas),
		"the same batch again");
	CHECK_EQ(iovas[0], IOVA + PAGE);
	CHECK_EQ(iovas[1], IOVA + 2 * PAGE);
	CHECK_EQ(map_batch(c, d, file, (const uint64_t[]){PAGE, 3 * PAGE}, 2, false, iovas),
		 -EEXIST);
	CHECK_EQ(map_batch(c, d, file, (const uint64_t[]){3 * PAGE, PAGE}, 2, false, iovas),
		 -EEXIST);
	n = list_mappings(c, d, before, 8);
	CHECK_EQ(n, 3);

	/* What was answered as done was not recorded twice: the next daemon rebuilds it cleanly. */
	expect_rebuilt(&sv, c, d, before, n);
	/* A batch in columns is recorded as its entries, and is the same batch when sent again. */
	supervisor_call_ok(
		c, map_batch(c, d, file, (const uint64_t[]){4 * PAGE, 5 * PAGE}, 2, true, iovas),
		"batch in columns");
	supervisor_call_ok(
		c, map_batch(c, d, file, (const uint64_t[]){4 * PAGE, 5 * PAGE}, 2, true, iovas),
		"the same batch in columns again");
	CHECK_EQ(iovas[1], IOVA + 5 * PAGE);
	n = list_mappings(c, d, before, 8);
	CHECK_EQ(n, 5);
	expect_rebuilt(&sv, c, d, before, n);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
	(void)close(other);
}

/* At its quota, a tenant's Map sent again is still answered as done, not refused for the quota
 * it would take a second time. */
TEST(identical_map_at_quota_answered_as_done)
{
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t d;
	int file = iommuctl_memfd("retry-quota", FILE_SIZE);

	CHECK_OK(file);
	supervisor_start(&sv,
			 "probe-tier = off\n[access]\ndefault = none\n[uid 0]\naccess = write\n"
			 "devices = emu*\nmax-domains = 1\nmax-mappings = 1\nmax-pinned = 1G\n"
			 "max-leases = 1\n",
			 DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	d = new_domain(c);
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), "map");
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA),
			   "the same map again");
	CHECK_EQ(map_at(c, d, file, PAGE, PAGE, IOMMUCTL_PROT_READ, IOVA + PAGE), -EDQUOT);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}

TEST(identical_map_in_anonymous_session_refused)
{
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t d;
	int file = iommuctl_memfd("retry-anon", FILE_SIZE);

	CHECK_OK(file);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, NULL);
	d = new_domain(c);
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), "map");
	/* Its state ends with its connections, so no retry across a restart can reach it. */
	CHECK_EQ(map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, IOVA), -EEXIST);
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}

static uint64_t rnd(uint64_t n)
{
	return (uint64_t)random() % n;
}

/* Kills the daemon with a Map sent: after its reply was read (reply_first), or at a random
 * point between the request and the reply, which then came or not, the mapping made or not. The
 * Map sent again on the same handle always ends with the one mapping asked for. Whether the
 * mapping had been made is learnt from the listing in between, and counted in *made. */
static void map_killed_and_retried(struct supervisor *sv, struct iommuctl *c, uint32_t d, int file,
				   uint64_t iova, bool reply_first, unsigned *made)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	/* Half of the kills come at once, before the daemon has read the request as a rule. */
	struct timespec pause = {0, rnd(2) ? (long)rnd(100) * 1000 : 0};
	Iommud__V1__Response *resp;
	uint64_t rows[2][4];

	entry.domain_id = d;
	entry.length = PAGE;
	entry.prot = IOMMUCTL_PROT_READ;
	entry.fixed_iova = true;
	entry.iova = iova;
	map.entry = &entry;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	supervisor_call_ok(c, iommuctl_send(c, &req, &file, 1, NULL), "send map");
	if (reply_first) {
		supervisor_call_ok(c, iommuctl_recv(c, &resp, NULL, 0, NULL), "map reply");
		iommuctl_response_free(resp);
	} else if (pause.tv_nsec) {
		nanosleep(&pause, NULL);
	}
	supervisor_kill(sv);
	/* The reply was sent before the kill, or the connection dropped without one. */
	if (!reply_first && iommuctl_recv(c, &resp, NULL, 0, NULL) == 0)
		iommuctl_response_free(resp);
	supervisor_spawn(sv);
	/* The next request reconnects. */
	*made += list_mappings(c, d, rows, 2) == 1;
	supervisor_call_ok(c, map_at(c, d, file, 0, PAGE, IOMMUCTL_PROT_READ, iova),
			   "the map sent again");
	CHECK_EQ(list_mappings(c, d, rows, 2), 1);
	CHECK_EQ(rows[0][0], iova);
	supervisor_call_ok(c, iommuctl_unmap_all(c, d, NULL), "unmap all");
}

TEST(map_retried_after_kill)
{
	const char *seed_env = getenv("IOMMUD_TEST_SEED");
	unsigned seed = seed_env ? (unsigned)atoi(seed_env) : (unsigned)time(NULL);
	unsigned made = 0, rounds = 40;
	struct supervisor sv;
	struct iommuctl *c;
	uint32_t d;
	int file = iommuctl_memfd("retry-kill", FILE_SIZE);

	CHECK_OK(file);
	srandom(seed);
	supervisor_start(&sv, config, DEVICES);
	c = supervisor_connect_lease(&sv, "vm1");
	d = new_domain(c);
	/* Once where the Map certainly took effect before the kill. */
	map_killed_and_retried(&sv, c, d, file, IOVA, true, &made);
	CHECK_EQ(made, 1);
	made = 0;
	for (unsigned i = 0; i < rounds; i++)
		map_killed_and_retried(&sv, c, d, file, IOVA + (i + 1) * PAGE, false, &made);
	(void)fprintf(stderr,
		      "map retried after kill: %u rounds, made before the kill in %u, not in %u "
		      "(IOMMUD_TEST_SEED=%u)\n",
		      rounds, made, rounds - made, seed);
	CHECK(!supervisor_log_has(&sv, "cannot rebuild"));
	iommuctl_close(c);
	supervisor_stop(&sv);
	(void)close(file);
}
