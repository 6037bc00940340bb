// SPDX-License-Identifier: MIT
#include "daemon_edu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <iommuctl.h>

#include "check.h"
#include "edu.h"
#include "kernel_maps_files.h"

void check_call(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

char *find_edu(struct iommuctl *c)
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

uint8_t *attach_with_memfd(struct iommuctl *c, const char *device, uint32_t *ret_dom,
			   int *ret_memfd)
{
	const size_t page = 4096;
	uint32_t dom;
	uint8_t *mem;
	int memfd;

	check_call(c, iommuctl_alloc_domain(c, device, IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		   "AllocDomain");
	check_call(c, iommuctl_attach(c, device, dom), "AttachDevice");
	memfd = iommuctl_memfd("edu", 2 * page);
	CHECK_OK(memfd);
	mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	CHECK(mem != MAP_FAILED);
	for (size_t i = 0; i < page; i++)
		mem[i] = (uint8_t)(i * 13 + 5);
	memset(mem + page, 0, page);
	*ret_dom = dom;
	*ret_memfd = memfd;
	return mem;
}

bool expect_map_by_fd(const char *backend)
{
	return strcmp(backend, "iommufd") == 0 && kernel_maps_files();
}

/* The daemon's memory maps of the file with inode ino. */
static int maps_of_inode(pid_t pid, ino_t ino)
{
	char path[64], line[512];
	unsigned long long inode;
	int count = 0;
	FILE *maps;

	(void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	maps = fopen(path, "re");
	CHECK(maps != NULL);
	/* address perms offset dev inode path */
	while (fgets(line, sizeof(line), maps))
		count += sscanf(line, "%*s %*s %*s %*s %llu", &inode) == 1 && inode == ino &&
			 strstr(line, "/memfd:") != NULL;
	(void)fclose(maps);
	return count;
}

void check_daemon_view(pid_t daemon, int memfd, const char *backend, const char *when)
{
	bool by_fd = expect_map_by_fd(backend);
	struct stat st;
	int maps;

	CHECK(fstat(memfd, &st) == 0);
	maps = maps_of_inode(daemon, st.st_ino);
	(void)printf("%s: the daemon holds %d map(s) of the client's memfd (%s)\n", when, maps,
		     by_fd ? "must be none: the kernel maps it by descriptor"
			   : "the daemon maps it: no IOMMU_IOAS_MAP_FILE here");
	CHECK(by_fd ? maps == 0 : maps > 0);
}
