// SPDX-License-Identifier: MIT
/* KeepFiles (docs/protocol.md): a connection keeps the descriptors of its memory files and its
 * Map and MapBatch requests name them by slot instead of sending them. What it may keep (files
 * whose seals and size cannot go below what the daemon examined), all or nothing, given up by
 * forget, by a slot kept again and with the connection, a file grown since it was kept, and
 * libiommuctl keeping them again after a reconnect. */
#define _GNU_SOURCE /* F_ADD_SEALS */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <iommuctl.h>
#include <iommud_protocol.h>

#include "check.h"
#include "daemon_fixture.h"
#include "harness.h"

#define PAGE	 4096ull
#define DEVICES	 "emu0"
#define CONFIG	 "[uid 0]\naccess = write\ndevices = emu*\n"
#define KEEPABLE (F_SEAL_SHRINK | F_SEAL_SEAL)

/* A memfd of pages pages, sealed so that it can be kept. */
static int keepable_memfd(const char *name, uint64_t pages)
{
	int fd = iommuctl_memfd(name, pages * PAGE);

	CHECK_OK(fd);
	CHECK_OK(fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL));
	return fd;
}

static struct iommuctl *connect_with_domain(const struct daemon_fixture *f, uint32_t *ret_dom)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(f->socket_path, &c));
	CHECK_OK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, ret_dom));
	return c;
}

/* Sends a KeepFiles carrying fds into slots and forgetting forget, and returns its reply. */
static Iommud__V1__Response *raw_keep(int sock, const int *fds, uint32_t *slots, size_t n,
				      uint32_t *forget, size_t n_forget)
{
	Iommud__V1__KeepFilesRequest keep = IOMMUD__V1__KEEP_FILES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	keep.slots = slots;
	keep.n_slots = n;
	keep.forget = forget;
	keep.n_forget = n_forget;
	req.id = 1;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_KEEP_FILES;
	req.keep_files = &keep;
	raw_send_request(sock, &req, fds, n);
	return raw_recv(sock, NULL);
}

/* Sends a Map of one page of the file the connection keeps in slot, carrying no descriptor. */
static Iommud__V1__Response *raw_map_kept(int sock, uint32_t dom, uint32_t slot, uint64_t iova)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	entry.domain_id = dom;
	entry.length = PAGE;
	entry.prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE;
	entry.fixed_iova = true;
	entry.iova = iova;
	map.entry = &entry;
	map.kept_files = &slot;
	map.n_kept_files = 1;
	req.id = 2;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	raw_send_request(sock, &req, NULL, 0);
	return raw_recv(sock, NULL);
}

static uint32_t raw_domain(int sock)
{
	Iommud__V1__AllocDomainRequest alloc = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	uint32_t dom;

	alloc.device = "emu0";
	alloc.type = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING;
	req.id = 3;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN;
	req.alloc_domain = &alloc;
	raw_send_request(sock, &req, NULL, 0);
	r = raw_recv(sock, NULL);
	CHECK_EQ(r->status->code, IOMMUD__V1__CODE__CODE_OK);
	dom = r->alloc_domain->domain_id;
	iommud__v1__response__free_unpacked(r, NULL);
	return dom;
}

/* A connection the daemon has accepted and answered: the files it opens to identify the peer
 * are closed again, so that counting the daemon's descriptors counts only what stays. */
static int raw_connect_answered(const struct daemon_fixture *f)
{
	int sock = raw_connect(f);
	Iommud__V1__Response *resp;

	raw_send_get_stats(sock);
	(void)raw_stats_reply(sock, &resp);
	iommud__v1__response__free_unpacked(resp, NULL);
	return sock;
}

/* Checks r failed with code and a message holding says, and frees it. */
static void refused(Iommud__V1__Response *r, Iommud__V1__Code code, const char *says)
{
	if (r->status->code != code || !strstr(r->status->message, says))
		(void)fprintf(stderr, "got code %d: %s\n", r->status->code, r->status->message);
	CHECK_EQ(r->status->code, code);
	CHECK(strstr(r->status->message, says) != NULL);
	iommud__v1__response__free_unpacked(r, NULL);
}

static void answered(Iommud__V1__Response *r)
{
	if (r->status->code != IOMMUD__V1__CODE__CODE_OK)
		(void)fprintf(stderr, "refused: %s\n", r->status->message);
	CHECK_EQ(r->status->code, IOMMUD__V1__CODE__CODE_OK);
	iommud__v1__response__free_unpacked(r, NULL);
}

/* A kept file is mapped by slot with no descriptor sent; the daemon holds it until its slot is
 * forgotten, and a Map naming a slot that keeps nothing says what to do. */
TEST(kept_file_maps_by_slot)
{
	struct daemon_fixture f;
	uint32_t slot = 5, dom;
	int mem, sock, files;

	fixture_start(&f, CONFIG, DEVICES);
	mem = keepable_memfd("kept", 2);
	sock = raw_connect(&f);
	dom = raw_domain(sock);
	files = fixture_fd_count(&f);
	answered(raw_keep(sock, &mem, &slot, 1, NULL, 0));
	CHECK_EQ(fixture_fd_count(&f), files + 1);
	answered(raw_map_kept(sock, dom, slot, 0x10000));
	CHECK_EQ(fixture_memfd_mappings(&f), 1);
	refused(raw_map_kept(sock, dom, 4, 0x20000), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
		"slot 4, where this connection keeps no file");
	refused(raw_map_kept(sock, dom, IOMMUD_KEPT_FILES, 0x20000),
		IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "keep the file first (KeepFiles)");
	answered(raw_keep(sock, NULL, NULL, 0, &slot, 1));
	/* The mapping holds the daemon's map of the file, not the descriptor. */
	CHECK_EQ(fixture_fd_count(&f), files);
	CHECK_EQ(fixture_memfd_mappings(&f), 1);
	refused(raw_map_kept(sock, dom, slot, 0x20000), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
		"keeps no file");
	(void)close(sock);
	(void)close(mem);
	fixture_stop(&f);
}

/* Only files whose seals and size cannot go below what was examined, each slot named once,
 * one slot per descriptor; a refused request keeps nothing of what it carried. */
TEST(keeps_all_or_nothing)
{
	struct daemon_fixture f;
	uint32_t slots[2] = {0, 1}, same[2] = {3, 3}, far = IOMMUD_KEPT_FILES;
	int mem[2], sock, files;

	fixture_start(&f, CONFIG, DEVICES);
	mem[0] = keepable_memfd("keepable", 1);
	CHECK_OK(mem[1] = iommuctl_memfd("not sealed against sealing", PAGE));
	sock = raw_connect_answered(&f);
	files = fixture_fd_count(&f);
	refused(raw_keep(sock, mem, slots, 2, NULL, 0), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
		"descriptor 1: only a file sealed with F_SEAL_SHRINK and F_SEAL_SEAL can be kept");
	refused(raw_keep(sock, mem, same, 2, NULL, 0), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
		"names slot 3 again");
	refused(raw_keep(sock, mem, &far, 1, NULL, 0), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
		"slots are 0 to 7");
	refused(raw_keep(sock, mem, slots, 1, &slots[0], 1),
		IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT, "names slot 0 again");
	/* Two descriptors, one slot named. */
	{
		Iommud__V1__KeepFilesRequest keep = IOMMUD__V1__KEEP_FILES_REQUEST__INIT;
		Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

		keep.slots = slots;
		keep.n_slots = 1;
		req.method_case = IOMMUD__V1__REQUEST__METHOD_KEEP_FILES;
		req.keep_files = &keep;
		raw_send_request(sock, &req, mem, 2);
		refused(raw_recv(sock, NULL), IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT,
			"names 1 slots for the 2 descriptors");
	}
	CHECK_EQ(fixture_fd_count(&f), files);
	(void)close(sock);
	(void)close(mem[0]);
	(void)close(mem[1]);
	fixture_stop(&f);
}

/* A slot kept again gives up what it held; the connection's end gives up them all. */
TEST(connection_end_gives_kept_files_up)
{
	struct daemon_fixture f;
	uint32_t slots[2] = {0, 7};
	int mem[2], sock, files;

	fixture_start(&f, CONFIG, DEVICES);
	mem[0] = keepable_memfd("first", 1);
	mem[1] = keepable_memfd("second", 1);
	sock = raw_connect_answered(&f);
	files = fixture_fd_count(&f);
	answered(raw_keep(sock, mem, slots, 2, NULL, 0));
	CHECK_EQ(fixture_fd_count(&f), files + 2);
	answered(raw_keep(sock, &mem[1], slots, 1, NULL, 0));
	CHECK_EQ(fixture_fd_count(&f), files + 2);
	(void)close(sock);
	/* The daemon gives them up once its loop has seen the end of the connection. */
	for (int tries = 0; fixture_fd_count(&f) != files && tries < 100; tries++)
		(void)usleep(10000);
	CHECK_EQ(fixture_fd_count(&f), files);
	(void)close(mem[0]);
	(void)close(mem[1]);
	fixture_stop(&f);
}

/* A kept file that grew is examined again where an entry reaches past its size when kept; one
 * that did not grow that far is refused as any file is. */
TEST(kept_file_that_grew)
{
	struct daemon_fixture f;
	struct iommuctl *c;
	uint64_t iova = 0x40000;
	uint32_t dom;
	int mem;

	fixture_start(&f, CONFIG, DEVICES);
	mem = keepable_memfd("growing", 1);
	c = connect_with_domain(&f, &dom);
	CHECK_OK(iommuctl_keep_fd(c, mem));
	CHECK(iommuctl_map_fd(c, dom, mem, PAGE, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova) < 0);
	CHECK(strstr(iommuctl_last_error(c), "0x1000") != NULL);
	CHECK_OK(ftruncate(mem, 2 * PAGE));
	CHECK_OK(iommuctl_map_fd(c, dom, mem, PAGE, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova));
	iommuctl_close(c);
	(void)close(mem);
	fixture_stop(&f);
}

/* libiommuctl names kept files in batches after the ones it sends, and keeps them again on a
 * new connection: without that, the Map after the reconnect would name a slot that keeps
 * nothing. */
TEST(library_batches_and_reconnects_with_kept_files)
{
	struct daemon_fixture f;
	struct iommuctl_map_entry entries[4];
	struct iommuctl *c;
	uint64_t iova = 0x80000;
	uint32_t dom;
	int kept, sent, files;

	fixture_start(&f, CONFIG, DEVICES);
	kept = keepable_memfd("kept", 2);
	CHECK_OK(sent = iommuctl_memfd("sent", 2 * PAGE));
	c = connect_with_domain(&f, &dom);
	files = fixture_fd_count(&f);
	CHECK_OK(iommuctl_keep_fd(c, kept));
	CHECK_OK(iommuctl_keep_fd(c, kept));
	CHECK_EQ(fixture_fd_count(&f), files + 1);
	for (int i = 0; i < 4; i++)
		entries[i] = (struct iommuctl_map_entry){.domain_id = dom,
							 .fd = i % 2 ? kept : sent,
							 .offset = (uint64_t)(i / 2) * PAGE,
							 .length = PAGE,
							 .prot = IOMMUCTL_PROT_READ,
							 .fixed_iova = true,
							 .iova = (uint64_t)i * PAGE};
	CHECK_OK(iommuctl_map_batch(c, entries, 4, NULL));
	CHECK_OK(iommuctl_unmap_all(c, dom, NULL));
	CHECK_OK(iommuctl_reconnect(c));
	CHECK_OK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK_OK(iommuctl_map_fd(c, dom, kept, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova));
	CHECK_OK(iommuctl_forget_fd(c, kept));
	CHECK_EQ(iommuctl_forget_fd(c, kept), -ENOENT);
	CHECK_EQ(fixture_fd_count(&f), files);
	iommuctl_close(c);
	(void)close(kept);
	(void)close(sent);
	fixture_stop(&f);
}
