/* SPDX-License-Identifier: MIT */
/*
 * The whole stack on a real kernel: iommud on a kernel backend (VM_BACKEND: "auto", its
 * default, which must take iommufd where /dev/iommu is and vfio-type1 on a kernel without it,
 * such as Debian 12's; or vfio-type1 in the test_daemon_edu_type1 build), a client that maps a
 * memfd through the RPC, drives an edu device it obtained with OpenDevice, and sees the device's
 * DMA land in the memfd; after Unmap the same DMA is blocked and the memfd keeps its bytes, as
 * after one Unmap over two mappings and the hole between them, which removes both.
 * Detached by the client's own VFIO call on that fd, the device is attached again by a
 * ReplaceDomain into the domain the daemon has it in (the kernel's answer wins, not the books).
 * Where the kernel maps files by descriptor (iommufd on Linux 6.13 and later), the daemon holds
 * no mapping of the memfd in its own address space; elsewhere it does. MapBatch takes the same
 * path as Map, and a writable map of a read-only descriptor is refused with the same message on
 * both. A file the connection keeps (KeepFiles) is mapped by its slot, the request carrying no
 * descriptor, on the same path as one sent with each Map.
 *
 * Runs in the VM tier only (exit 77, skipped, outside its guest or where no edu is bound to
 * vfio-pci).
 */
#define _GNU_SOURCE /* F_ADD_SEALS */
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The uAPI header marks user pointers for the kernel's checker. */
#define __user
#include <linux/vfio.h>

#include <iommuctl.h>

#include "check.h"
#include "daemon_edu.h"
#include "daemon_fixture.h"
#include "edu.h"

#ifndef VM_BACKEND
#define VM_BACKEND "auto"
#endif

#define PAGE	  4096u
#define SRC_IOVA  0x100000u /* edu masks DMA addresses to 28 bits: stay below 256 MiB */
#define DST_IOVA  0x101000u
#define ALT_IOVA  0x103000u /* the source again, mapped by MapBatch, a page apart from DST */
#define KEPT_IOVA 0x110000u /* a kept file's two pages, clear of the others */

/* What the steps share, in the order main takes them: each step leaves the daemon, the
 * session and the device as the next one expects them. */
struct edu_session {
	struct daemon_fixture daemon;
	struct iommuctl *c;
	char *name; /* the edu's, which the daemon offered */
	uint32_t dom;
	int memfd; /* two pages: the source, then the destination */
	uint8_t *mem;
	int vfio; /* the device's fd, which the daemon handed out */
	struct edu edu;
};

static bool offers_open_device(const Iommud__V1__HelloReply *hello)
{
	for (size_t i = 0; i < hello->n_capabilities; i++)
		if (strcmp(hello->capabilities[i], "open_device") == 0)
			return true;
	return false;
}

/* The daemon on VM_BACKEND, which Hello must name as want, and a session with it; false (with
 * the reason printed) where it offers no edu to test with. */
static bool start_session(struct edu_session *s, const char *want)
{
	Iommud__V1__HelloReply *hello;

	/* Root may take every device: the built-in rule, kept since the file names nobody. */
	fixture_start(&s->daemon, "", NULL);
	CHECK_OK(iommuctl_connect(s->daemon.socket_path, &s->c));
	check_call(s->c, iommuctl_hello(s->c, "test_daemon_edu", NULL, &hello), "Hello");
	(void)printf("backend %s: %s\n", VM_BACKEND, hello->backend_name);
	CHECK(strcmp(hello->backend_name, want) == 0);
	CHECK(!hello->nothing_remapped);
	/* The backend says it hands out VFIO devices (KH_CAP_OPEN_DEVICE); Hello offers it. */
	CHECK(offers_open_device(hello));
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	s->name = find_edu(s->c);
	if (!s->name) {
		(void)printf("SKIP: the daemon offers no edu device\n");
		iommuctl_close(s->c);
		fixture_stop(&s->daemon);
		return false;
	}
	(void)printf("using %s\n", s->name);
	return true;
}

/* The memfd's second page, writable, at DST_IOVA. */
static void map_destination(struct edu_session *s, const char *what)
{
	uint64_t iova = DST_IOVA;

	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, s->memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   what);
}

/* The edu attached to a paging domain, the memfd mapped through the daemon, and the device
 * opened through it. */
static void setup_device(struct edu_session *s)
{
	uint64_t iova;

	s->mem = attach_with_memfd(s->c, s->name, &s->dom, &s->memfd);
	iova = SRC_IOVA;
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, s->memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0,
				   &iova),
		   "Map source");
	map_destination(s, "Map destination");

	s->vfio = iommuctl_open_device(s->c, s->name);
	check_call(s->c, s->vfio, "OpenDevice");
	edu_init(&s->edu, s->vfio);
}

/* Memory -> device -> memory, both through the daemon's mappings of the memfd. */
static void check_dma_lands(struct edu_session *s)
{
	edu_dma(&s->edu, SRC_IOVA, EDU_XFER, false);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(memcmp(s->mem + PAGE, s->mem, EDU_XFER) == 0);
	(void)printf("ok: DMA through the daemon's mapping landed in the client's memfd\n");
}

/* A client detaches its device behind the daemon's back with a raw VFIO call on the fd
 * OpenDevice gave it: its DMA is blocked while the daemon's books still say attached. A
 * ReplaceDomain into that same domain must ask the kernel, whose answer wins: the device is
 * attached again, and a fresh pattern crosses it whole. Only iommufd's device fds take the
 * call; a vfio-type1 device stays in its group's container. */
static void check_replace_in_place_reattaches(struct edu_session *s, const char *backend)
{
	struct vfio_device_detach_iommufd_pt detach = {.argsz = sizeof(detach)};

	if (strcmp(backend, "iommufd") != 0) {
		(void)printf("skip: a %s device cannot be detached through its fd\n", backend);
		return;
	}
	CHECK(ioctl(s->vfio, VFIO_DEVICE_DETACH_IOMMUFD_PT, &detach) == 0);
	memset(s->mem + PAGE, 0x3c, PAGE);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(s->mem + PAGE, PAGE, 0x3c));
	(void)printf("ok: detached through its fd, the device's DMA is blocked\n");

	check_call(s->c, iommuctl_replace(s->c, s->name, s->dom), "ReplaceDomain into its domain");
	for (size_t i = 0; i < PAGE; i++)
		s->mem[i] = (uint8_t)(i * 7 + 3);
	check_dma_lands(s);
	CHECK(all_bytes(s->mem + PAGE + EDU_XFER, PAGE - EDU_XFER, 0x3c));
	(void)printf("ok: ReplaceDomain into the same domain attached the device again\n");
}

static void check_unmap_blocks(struct edu_session *s)
{
	uint64_t bytes;

	check_call(s->c, iommuctl_unmap(s->c, s->dom, DST_IOVA, PAGE, &bytes), "Unmap");
	CHECK_EQ(bytes, PAGE);
	memset(s->mem + PAGE, 0xee, PAGE);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(s->mem + PAGE, PAGE, 0xee));
	(void)printf("ok: after Unmap the same DMA is blocked\n");
}

/* One Unmap over DST and ALT, with the unmapped page between them: the kernel removes both in
 * one call and answers with fewer bytes than the span, which is success; the books drop both
 * (only the source is left) and DMA to either is blocked. */
static void check_unmap_across_hole(struct edu_session *s)
{
	Iommud__V1__Quota quota;
	uint64_t bytes = 0;

	check_call(s->c, iommuctl_unmap(s->c, s->dom, DST_IOVA, ALT_IOVA + PAGE - DST_IOVA, &bytes),
		   "Unmap over DST, a hole and ALT");
	CHECK_EQ(bytes, 2 * PAGE);
	fixture_stats(s->c, &quota, NULL);
	CHECK_EQ(quota.mappings, 1);
	memset(s->mem + PAGE, 0xd7, PAGE);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(s->mem + PAGE, PAGE, 0xd7));
	(void)printf("ok: one Unmap over two mappings and the hole between them removed both\n");
}

/* One MapBatch entry of the memfd's page at offset, at iova. */
static void batch_entry(Iommud__V1__MapEntry *e, uint32_t dom, uint64_t iova, uint64_t offset,
			uint32_t prot)
{
	iommud__v1__map_entry__init(e);
	e->domain_id = dom;
	e->iova = iova;
	e->fixed_iova = true;
	e->offset = offset;
	e->length = PAGE;
	e->prot = prot;
}

/* MapBatch takes the same path as Map: the source again at ALT_IOVA and the destination back at
 * DST_IOVA, the daemon's view of the memfd as Map leaves it, and the DMA from one to the other
 * landing; both go again after, by one Unmap over them and the hole between. */
static void check_batch(struct edu_session *s, const char *backend)
{
	Iommud__V1__MapEntry e[2], *entries[2] = {&e[0], &e[1]};
	Iommud__V1__MapBatchRequest batch = IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	batch_entry(&e[0], s->dom, ALT_IOVA, 0, IOMMUCTL_PROT_READ);
	batch_entry(&e[1], s->dom, DST_IOVA, PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE);
	batch.entries = entries;
	batch.n_entries = 2;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	req.map_batch = &batch;
	check_call(s->c, iommuctl_call(s->c, &req, &s->memfd, 1, &resp, NULL, 0, NULL), "MapBatch");
	iommuctl_response_free(resp);
	check_daemon_view(s->daemon.pid, s->memfd, backend, "after MapBatch");
	memset(s->mem + PAGE, 0, PAGE);
	edu_dma(&s->edu, ALT_IOVA, EDU_XFER, false);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(memcmp(s->mem + PAGE, s->mem, EDU_XFER) == 0);
	(void)printf("ok: DMA through MapBatch's mappings landed in the client's memfd\n");
	check_unmap_across_hole(s);
}

/* A memfd the connection keeps is mapped by naming its slot: where the kernel maps files by
 * descriptor, what it gets is the descriptor the daemon kept, and the daemon holds no mapping
 * of the file; elsewhere the daemon maps it. The device's DMA from its first page to its second
 * lands, and is blocked once both are unmapped; the file is forgotten after. */
static void check_kept_file(struct edu_session *s, const char *backend)
{
	int mem = iommuctl_memfd("kept", 2 * PAGE);
	uint64_t iova, bytes = 0;
	uint8_t *va;

	CHECK_OK(mem);
	/* Only a file whose seals cannot change may be kept; iommuctl_memfd sealed its size. */
	CHECK(fcntl(mem, F_ADD_SEALS, F_SEAL_SEAL) == 0);
	va = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
	CHECK(va != MAP_FAILED);
	for (size_t i = 0; i < PAGE; i++)
		va[i] = (uint8_t)(i * 13 + 1);
	check_call(s->c, iommuctl_keep_fd(s->c, mem), "KeepFiles");
	iova = KEPT_IOVA;
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, mem, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		   "Map of the kept file's first page");
	iova = KEPT_IOVA + PAGE;
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, mem, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map of the kept file's second page");
	check_daemon_view(s->daemon.pid, mem, backend, "after Map of a kept file");
	edu_dma(&s->edu, KEPT_IOVA, EDU_XFER, false);
	edu_dma(&s->edu, KEPT_IOVA + PAGE, EDU_XFER, true);
	CHECK(memcmp(va + PAGE, va, EDU_XFER) == 0);
	(void)printf("ok: DMA through the mappings of a kept file landed in it\n");
	check_call(s->c, iommuctl_unmap(s->c, s->dom, KEPT_IOVA, 2 * PAGE, &bytes),
		   "Unmap of the kept file's pages");
	CHECK_EQ(bytes, 2 * PAGE);
	memset(va + PAGE, 0x6b, PAGE);
	edu_dma(&s->edu, KEPT_IOVA + PAGE, EDU_XFER, true);
	CHECK(all_bytes(va + PAGE, PAGE, 0x6b));
	check_call(s->c, iommuctl_forget_fd(s->c, mem), "KeepFiles forget");
	(void)printf("ok: after Unmap the DMA to the kept file is blocked\n");
	(void)munmap(va, 2 * PAGE);
	(void)close(mem);
}

/* A read-only descriptor of the memfd may not be mapped for the device to write, with the
 * same message whether the daemon maps the file itself or the kernel maps it by descriptor. */
static void check_read_only_refused(struct edu_session *s)
{
	char path[64];
	uint64_t iova = DST_IOVA;
	int ro, rc;

	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", s->memfd);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0);
	rc = iommuctl_map_fd(s->c, s->dom, ro, PAGE, PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE,
			     true, 0, &iova);
	(void)close(ro);
	CHECK(rc < 0);
	CHECK(strstr(iommuctl_last_error(s->c), "opened read-only") != NULL);
	(void)printf("ok: a writable Map of a read-only descriptor is refused: %s\n",
		     iommuctl_last_error(s->c));
}

/* An append-only file is refused a Map through a read-write descriptor on either path, as mmap
 * refuses it by address: by descriptor, IOMMU_IOAS_MAP_FILE would let the device overwrite the
 * file's contents. */
static void check_append_only_refused(struct edu_session *s)
{
	int mem = iommuctl_memfd("append", PAGE), attr = FS_APPEND_FL, rc;
	uint64_t iova = DST_IOVA;

	CHECK_OK(mem);
	CHECK(ioctl(mem, FS_IOC_SETFLAGS, &attr) == 0);
	rc = iommuctl_map_fd(s->c, s->dom, mem, 0, PAGE, IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE,
			     true, 0, &iova);
	CHECK(rc < 0);
	CHECK(strstr(iommuctl_last_error(s->c), "append-only") != NULL);
	(void)printf("ok: a Map of an append-only file through a read-write descriptor is "
		     "refused: %s\n",
		     iommuctl_last_error(s->c));
	attr = 0;
	CHECK(ioctl(mem, FS_IOC_SETFLAGS, &attr) == 0);
	(void)close(mem);
}

/* The session ends with its connection while the client still holds the device's fd: the
 * daemon detaches the device, so that fd cannot reach the memory any more. Leaves a new
 * session in s->c. */
static void check_session_end_detaches(struct edu_session *s)
{
	map_destination(s, "Map destination again");
	iommuctl_close(s->c);
	/* The daemon learns of the close in its own time: wait until another session sees the
	 * session gone (its quota back to nothing). */
	CHECK_OK(iommuctl_connect(s->daemon.socket_path, &s->c));
	for (int i = 0; i < 500; i++) {
		Iommud__V1__Quota quota;

		fixture_stats(s->c, &quota, NULL);
		if (!quota.mappings)
			break;
		usleep(10000);
	}
	memset(s->mem + PAGE, 0x5a, PAGE);
	edu_dma(&s->edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(s->mem + PAGE, PAGE, 0x5a));
	(void)printf("ok: after its session ended, the device's fd no longer reaches the memory\n");
}

/* While the old fd is open, the device's old binding lives on in the kernel: another session
 * cannot take the device, and is told why. Once the fd is closed too, the device is free. */
static void check_old_fd_holds_device(struct edu_session *s)
{
	int rc = iommuctl_alloc_domain(s->c, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &s->dom);

	check_call(s->c, rc == 0 ? -1 : 0, "AllocDomain while the old fd is open (must fail)");
	CHECK_EQ(iommuctl_last_code(s->c), IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION);
	CHECK(strstr(iommuctl_last_error(s->c), "still open") != NULL);
	(void)printf("ok: while the old fd is open, a new session is refused: %s\n",
		     iommuctl_last_error(s->c));
	(void)close(s->vfio);
	check_call(s->c, iommuctl_alloc_domain(s->c, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &s->dom),
		   "AllocDomain in a new session");
	check_call(s->c, iommuctl_attach(s->c, s->name, s->dom), "AttachDevice in a new session");
	(void)printf("ok: a new session took the device\n");
}

int main(void)
{
	const char *want = vm_backend_expected(VM_BACKEND);
	struct edu_session s;

	if (!want) {
		(void)printf("SKIP: not in the VM tier's guest (tests/vm/README.md)\n");
		return 77;
	}
	/* The fixture starts the daemon on the backend this names. */
	CHECK_OK(setenv("IOMMUD_TEST_BACKEND", VM_BACKEND, 1));
	if (!start_session(&s, want))
		return 77;
	setup_device(&s);
	check_daemon_view(s.daemon.pid, s.memfd, want, "after Map");
	check_dma_lands(&s);
	check_replace_in_place_reattaches(&s, want);
	check_unmap_blocks(&s);
	check_batch(&s, want);
	check_kept_file(&s, want);
	check_read_only_refused(&s);
	check_append_only_refused(&s);
	check_session_end_detaches(&s);
	check_old_fd_holds_device(&s);

	(void)munmap(s.mem, 2 * PAGE);
	(void)close(s.memfd);
	free(s.name);
	iommuctl_close(s.c);
	fixture_stop(&s.daemon);
	(void)printf("daemon + edu DMA through %s: all checks passed\n", want);
	return 0;
}
