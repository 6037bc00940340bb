/* SPDX-License-Identifier: MIT */
/*
 * The whole stack on a real kernel: iommud on the iommufd backend, a client that maps a memfd
 * through the RPC, drives an edu device it obtained with OpenDevice, and sees the device's DMA
 * land in the memfd; after Unmap the same DMA is blocked and the memfd keeps its bytes.
 *
 * Runs in the VM tier only (exit 77, skipped, without /dev/iommu or an edu bound to vfio-pci).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <iommuctl.h>

#include "check.h"
#include "daemon_fixture.h"
#include "edu.h"

#define PAGE	 4096u
#define SRC_IOVA 0x100000u /* edu masks DMA addresses to 28 bits: stay below 256 MiB */
#define DST_IOVA 0x101000u

static void check_call(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t value)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != value)
			return false;
	return true;
}

/* The name of the first edu the daemon offers, or NULL. */
static char *find_edu(struct iommuctl *c)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	char *name = NULL;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	check_call(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDevices");
	for (size_t i = 0; i < resp->list_devices->n_devices && !name; i++) {
		const Iommud__V1__Device *d = resp->list_devices->devices[i];

		if (d->vendor == EDU_VENDOR && d->device == EDU_DEVICE)
			name = strdup(d->name);
	}
	iommuctl_response_free(resp);
	return name;
}

int main(void)
{
	struct daemon_fixture daemon;
	struct iommuctl *c;
	Iommud__V1__HelloReply *hello;
	uint64_t iova, bytes;
	uint32_t dom;
	struct edu edu;
	uint8_t *mem;
	char *name;
	int memfd, vfio;

	if (access("/dev/iommu", F_OK) != 0) {
		printf("SKIP: no /dev/iommu: this test runs in the VM tier\n");
		return 77;
	}
	/* Root may take every device: the built-in rule, kept since the file names nobody. */
	fixture_start(&daemon, "", NULL);
	CHECK_OK(iommuctl_connect(daemon.socket_path, &c));
	check_call(c, iommuctl_hello(c, "test_daemon_edu", NULL, &hello), "Hello");
	CHECK_EQ(hello->backend, IOMMUD__V1__BACKEND__BACKEND_IOMMUFD);
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	name = find_edu(c);
	if (!name) {
		printf("SKIP: the daemon offers no edu device\n");
		iommuctl_close(c);
		fixture_stop(&daemon);
		return 77;
	}
	printf("using %s\n", name);

	check_call(c, iommuctl_alloc_domain(c, name, IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		   "AllocDomain");
	check_call(c, iommuctl_attach(c, name, dom), "AttachDevice");
	memfd = iommuctl_memfd("edu", 2 * PAGE);
	CHECK_OK(memfd);
	mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	CHECK(mem != MAP_FAILED);
	for (unsigned i = 0; i < PAGE; i++)
		mem[i] = (uint8_t)(i * 13 + 5);
	memset(mem + PAGE, 0, PAGE);
	iova = SRC_IOVA;
	check_call(c, iommuctl_map_fd(c, dom, memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		   "Map source");
	iova = DST_IOVA;
	check_call(c,
		   iommuctl_map_fd(c, dom, memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination");

	vfio = iommuctl_open_device(c, name);
	check_call(c, vfio, "OpenDevice");
	edu_init(&edu, vfio);

	/* Memory -> device -> memory, both through the daemon's mappings of the memfd. */
	edu_dma(&edu, SRC_IOVA, EDU_XFER, false);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(memcmp(mem + PAGE, mem, EDU_XFER) == 0);
	printf("ok: DMA through the daemon's mapping landed in the client's memfd\n");

	check_call(c, iommuctl_unmap(c, dom, DST_IOVA, PAGE, &bytes), "Unmap");
	CHECK_EQ(bytes, PAGE);
	memset(mem + PAGE, 0xee, PAGE);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(mem + PAGE, PAGE, 0xee));
	printf("ok: after Unmap the same DMA is blocked\n");

	/* The session ends with its connection while the client still holds the device's fd:
	 * the daemon detaches the device, so that fd cannot reach the memory any more. */
	iova = DST_IOVA;
	check_call(c,
		   iommuctl_map_fd(c, dom, memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination again");
	iommuctl_close(c);
	/* The daemon learns of the close in its own time: wait until another session sees the
	 * session gone (its quota back to nothing). */
	CHECK_OK(iommuctl_connect(daemon.socket_path, &c));
	for (int i = 0; i < 500; i++) {
		Iommud__V1__Quota quota;

		fixture_stats(c, &quota, NULL);
		if (!quota.mappings)
			break;
		usleep(10000);
	}
	memset(mem + PAGE, 0x5a, PAGE);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(mem + PAGE, PAGE, 0x5a));
	printf("ok: after its session ended, the device's fd no longer reaches the memory\n");

	/* While that fd is open, the device's old binding lives on in the kernel: another
	 * session cannot take the device, and is told why. */
	check_call(c, iommuctl_alloc_domain(c, name, IOMMUCTL_DOMAIN_PAGING, 0, &dom) == 0 ? -1 : 0,
		   "AllocDomain while the old fd is open (must fail)");
	CHECK_EQ(iommuctl_last_code(c), IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION);
	CHECK(strstr(iommuctl_last_error(c), "still open") != NULL);
	printf("ok: while the old fd is open, a new session is refused: %s\n",
	       iommuctl_last_error(c));
	/* Once the fd is closed too, the device is free for another session. */
	close(vfio);
	check_call(c, iommuctl_alloc_domain(c, name, IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		   "AllocDomain in a new session");
	check_call(c, iommuctl_attach(c, name, dom), "AttachDevice in a new session");
	printf("ok: a new session took the device\n");

	munmap(mem, 2 * PAGE);
	close(memfd);
	free(name);
	iommuctl_close(c);
	fixture_stop(&daemon);
	printf("daemon + edu DMA through iommufd: all checks passed\n");
	return 0;
}
