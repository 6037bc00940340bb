/* SPDX-License-Identifier: MIT */
/*
 * Many clients at once: 128 connections, each on its own thread, map and unmap in their own
 * domains of one shared session, some requests pipelined. Every reply must be the right one
 * (ids, IOVAs, byte counts, listings), and afterwards the daemon must hold nothing: no
 * mapping, no pinned byte, no extra descriptor, and it must stop cleanly (LeakSanitizer).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"

#define CLIENTS	  128
#define ROUNDS	  24
#define PIPELINED 8
#define PAGE	  4096ull

static struct daemon_fixture daemon_under_test;

struct worker {
	pthread_t thread;
	unsigned index;
	unsigned replies; /* checked replies, for the summary */
};

static void check_ok(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

static size_t mapping_count(struct iommuctl *c, uint32_t dom, uint64_t *first_iova)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	size_t n;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &list;
	list.domain_id = dom;
	check_ok(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListMappings");
	n = resp->list_mappings->n_mappings;
	if (n)
		*first_iova = resp->list_mappings->mappings[0]->iova;
	CHECK(!resp->list_mappings->more);
	iommuctl_response_free(resp);
	return n;
}

/* Maps PIPELINED ranges in one go, then reads the replies in order. */
static void pipelined_maps(struct iommuctl *c, struct worker *w, uint32_t dom, int mem,
			   uint64_t base)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	uint64_t ids[PIPELINED], bytes;

	entry.domain_id = dom;
	entry.length = PAGE;
	entry.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	entry.fixed_iova = true;
	map.entry = &entry;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	for (int i = 0; i < PIPELINED; i++) {
		entry.iova = base + (uint64_t)i * PAGE;
		entry.offset = (uint64_t)i * PAGE;
		check_ok(c, iommuctl_send(c, &req, &mem, 1, &ids[i]), "send Map");
	}
	for (int i = 0; i < PIPELINED; i++) {
		Iommud__V1__Response *resp;

		check_ok(c, iommuctl_recv(c, &resp, NULL, 0, NULL), "receive Map");
		CHECK_EQ(resp->id, ids[i]);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
		CHECK_EQ(resp->map->iova, base + (uint64_t)i * PAGE);
		iommuctl_response_free(resp);
		w->replies++;
	}
	check_ok(c, iommuctl_unmap(c, dom, base, PIPELINED * PAGE, &bytes), "Unmap");
	CHECK_EQ(bytes, PIPELINED * PAGE);
}

static void *work(void *arg)
{
	struct worker *w = arg;
	/* Each client its own IOVA window, so a reply with another's IOVA would show. */
	uint64_t window = (uint64_t)(w->index + 1) << 28, iova, bytes, first = 0;
	struct iommuctl *c;
	uint32_t dom;
	int mem = iommuctl_memfd("many", 16 * PAGE);

	CHECK(mem >= 0);
	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	check_ok(c, iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		 "AllocDomain");
	for (unsigned round = 0; round < ROUNDS; round++) {
		uint64_t length = PAGE * (1 + round % 4);

		iova = window + round * 16 * PAGE;
		check_ok(
			c,
			iommuctl_map_fd(c, dom, mem, 0, length, IOMMUCTL_PROT_READ, true, 0, &iova),
			"Map");
		CHECK_EQ(iova, window + round * 16 * PAGE);
		/* A second mapping at an IOVA of the daemon's choosing. */
		check_ok(c,
			 iommuctl_map_fd(c, dom, mem, PAGE, PAGE, IOMMUCTL_PROT_READ, false, 0,
					 &iova),
			 "Map");
		CHECK_EQ(mapping_count(c, dom, &first), 2);
		check_ok(c, iommuctl_unmap(c, dom, iova, PAGE, &bytes), "Unmap");
		CHECK_EQ(bytes, PAGE);
		check_ok(c, iommuctl_unmap(c, dom, window + round * 16 * PAGE, length, &bytes),
			 "Unmap");
		CHECK_EQ(bytes, length);
		CHECK_EQ(mapping_count(c, dom, &first), 0);
		w->replies += 6;
		if (round % 8 == 0)
			pipelined_maps(c, w, dom, mem, window + 0x100000);
	}
	check_ok(c, iommuctl_free_domain(c, dom), "FreeDomain");
	iommuctl_close(c);
	(void)close(mem);
	return NULL;
}

TEST(many_clients)
{
	static struct worker workers[CLIENTS];
	struct timespec start, end;
	unsigned replies = 0;
	int baseline;

	fixture_start(&daemon_under_test,
		      "[uid 0]\naccess = write\ndevices = *\nmax-domains = 1000\n"
		      "max-mappings = 100000\nmax-pinned = 16G\n",
		      "emu0");
	baseline = fixture_fd_count(&daemon_under_test);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (unsigned i = 0; i < CLIENTS; i++) {
		workers[i].index = i;
		CHECK_EQ(pthread_create(&workers[i].thread, NULL, work, &workers[i]), 0);
	}
	for (unsigned i = 0; i < CLIENTS; i++) {
		CHECK_EQ(pthread_join(workers[i].thread, NULL), 0);
		replies += workers[i].replies;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	/* Connections close asynchronously in the daemon; wait for the last ones. */
	for (int i = 0; i < 500 && fixture_fd_count(&daemon_under_test) != baseline; i++)
		usleep(10000);
	CHECK_EQ(fixture_fd_count(&daemon_under_test), baseline);
	CHECK_EQ(fixture_memfd_mappings(&daemon_under_test), 0);
	{
		Iommud__V1__Quota quota;
		uint32_t connections;
		struct iommuctl *c;

		CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
		fixture_stats(c, &quota, &connections);
		CHECK_EQ(quota.domains, 0);
		CHECK_EQ(quota.mappings, 0);
		CHECK_EQ(quota.pinned_bytes, 0);
		CHECK_EQ(connections, 1);
		iommuctl_close(c);
	}
	fixture_stop(&daemon_under_test);
	(void)printf(
		"test_daemon_many: %d clients, %u checked replies in %.2f s\n", CLIENTS, replies,
		(double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9);
}
