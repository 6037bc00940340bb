/* SPDX-License-Identifier: MIT */
/*
 * kh-iommufd-bench: what kernel-helper costs on top of the kernel. Map+unmap latency through
 * kh_map/kh_unmap on a real iommufd domain, against the same IOMMU_IOAS_MAP/UNMAP ioctls issued
 * directly on a second device, interleaved in one run so the ratio is fair (times in a TCG
 * guest are inflated; the ratio is what to read). Needs /dev/iommu and two devices bound to
 * vfio-pci; the VM tier runs it (tests/vm/README.md).
 *
 * It lives in kernel-helper because the baseline issues iommufd ioctls itself.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define __user
#include <linux/iommufd.h>
#include <linux/vfio.h>

#include <kh/kh.h>

#include "bench_clock.h"

#define MiB    (1ull << 20)
#define IOVA   0x40000000ull
#define ROUNDS 5 /* each size alternates helper and direct this many times */

static void fail(const char *what, const char *why)
{
	(void)fprintf(stderr, "kh-iommufd-bench: %s: %s\n", what, why);
	exit(1);
}

/* The baseline: a device of its own attached to an IOAS, as a program would do by hand. */
struct direct {
	int iommufd, devfd;
	uint32_t ioas;
};

static void direct_open(struct direct *d, const char *bdf)
{
	char dir[128], path[300] = "";
	struct vfio_device_bind_iommufd bind = {.argsz = sizeof(bind)};
	struct iommu_ioas_alloc ioas = {.size = sizeof(ioas)};
	struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof(attach)};
	struct dirent *de;
	DIR *list;

	(void)snprintf(dir, sizeof(dir), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	list = opendir(dir);
	if (!list)
		fail(dir, strerror(errno));
	while ((de = readdir(list)))
		if (!strncmp(de->d_name, "vfio", 4))
			(void)snprintf(path, sizeof(path), "/dev/vfio/devices/%s", de->d_name);
	closedir(list);
	d->iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	d->devfd = open(path, O_RDWR | O_CLOEXEC);
	if (d->iommufd < 0 || d->devfd < 0)
		fail("opening /dev/iommu and the baseline device", strerror(errno));
	bind.iommufd = d->iommufd;
	if (ioctl(d->devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind) ||
	    ioctl(d->iommufd, IOMMU_IOAS_ALLOC, &ioas))
		fail("binding the baseline device", strerror(errno));
	d->ioas = ioas.out_ioas_id;
	attach.pt_id = d->ioas;
	if (ioctl(d->devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach))
		fail("attaching the baseline device", strerror(errno));
}

static void direct_map_unmap(const struct direct *d, void *mem, uint64_t len)
{
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = d->ioas,
		.user_va = (uintptr_t)mem,
		.length = len,
		.iova = IOVA,
	};
	struct iommu_ioas_unmap unmap = {
		.size = sizeof(unmap), .ioas_id = d->ioas, .iova = IOVA, .length = len};

	if (ioctl(d->iommufd, IOMMU_IOAS_MAP, &map) || ioctl(d->iommufd, IOMMU_IOAS_UNMAP, &unmap))
		fail("direct map/unmap", strerror(errno));
}

struct helper {
	struct kh_ctx *ctx;
	uint32_t dom;
};

static void helper_map_unmap(const struct helper *h, void *mem, uint64_t len)
{
	struct kh_map_req req = {.iova = IOVA,
				 .length = len,
				 .addr = (uintptr_t)mem,
				 .prot = KH_PROT_READ | KH_PROT_WRITE,
				 .flags = KH_MAP_FIXED_IOVA};

	if (kh_map(h->ctx, h->dom, &req) || kh_unmap(h->ctx, h->dom, IOVA, len, NULL))
		fail("helper map/unmap", kh_last_error());
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct figures {
	uint64_t median, p99;
	double per_sec;
};

static struct figures summarize(uint64_t *ns, size_t n)
{
	uint64_t total = 0;

	for (size_t i = 0; i < n; i++)
		total += ns[i];
	qsort(ns, n, sizeof(*ns), cmp_u64);
	return (struct figures){ns[n / 2], ns[(n * 99) / 100], n * 1e9 / (double)total};
}

static void measure(const char *label, uint64_t len, size_t iterations, const struct helper *h,
		    const struct direct *d, void *mem)
{
	uint64_t *helper_ns = calloc(iterations * ROUNDS, sizeof(uint64_t));
	uint64_t *direct_ns = calloc(iterations * ROUNDS, sizeof(uint64_t));
	struct figures hf, df;
	size_t k = 0;

	if (!helper_ns || !direct_ns)
		fail("allocating samples", strerror(ENOMEM));
	/* Warm both paths, then alternate in rounds so drift in the guest hits both alike. */
	helper_map_unmap(h, mem, len);
	direct_map_unmap(d, mem, len);
	for (int round = 0; round < ROUNDS; round++) {
		for (size_t i = 0; i < iterations; i++) {
			uint64_t t0 = now_ns();

			helper_map_unmap(h, mem, len);
			helper_ns[k + i] = now_ns() - t0;
		}
		for (size_t i = 0; i < iterations; i++) {
			uint64_t t0 = now_ns();

			direct_map_unmap(d, mem, len);
			direct_ns[k + i] = now_ns() - t0;
		}
		k += iterations;
	}
	hf = summarize(helper_ns, k);
	df = summarize(direct_ns, k);
	(void)printf("%-10s %8zu %12lu %12lu %12lu %12lu %11.0f %11.0f %7.3f %7.3f\n", label, k,
		     (unsigned long)hf.median, (unsigned long)df.median, (unsigned long)hf.p99,
		     (unsigned long)df.p99, hf.per_sec, df.per_sec,
		     (double)hf.median / (double)df.median, (double)hf.p99 / (double)df.p99);
	free(helper_ns);
	free(direct_ns);
}

static void usage(FILE *out)
{
	(void)fprintf(
		out, "usage: kh-iommufd-bench [--help]\n"
		     "\n"
		     "Measures map+unmap through kernel-helper on iommufd against the same ioctls "
		     "issued\n"
		     "directly, for 4 KiB, 2 MiB and 256 MiB mappings: median and 99th percentile "
		     "latency\n"
		     "(ns), throughput (map+unmap pairs per second) and the helper/direct ratios.\n"
		     "Needs /dev/iommu and two PCI devices bound to vfio-pci (the first two the "
		     "backend\n"
		     "lists); run it as root, e.g. in the VM tier:\n"
		     "  tests/vm/run-vm.sh --iommu intel --results DIR "
		     "build/kernel-helper/tools/kh-iommufd-bench\n"
		     "\n"
		     "Exit status: 0 after printing the figures, 1 if the machine cannot run it, 2 "
		     "on a\n"
		     "usage error.\n");
}

int main(int argc, char **argv)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_device_info first, second;
	struct kh_backend *be;
	struct helper h;
	struct direct d;
	uint32_t dev;
	uint8_t *mem, *raw;
	const uint64_t big = 256 * MiB;

	if (argc == 2 && !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	if (argc != 1) {
		usage(stderr);
		return 2;
	}
	if (kh_backend_open_iommufd(&be))
		fail("opening iommufd", kh_last_error());
	if (kh_device_count(be) < 2 || kh_device_info(be, 0, &first) ||
	    kh_device_info(be, 1, &second))
		fail("finding devices", "needs two devices bound to vfio-pci");
	if (kh_ctx_create(be, &h.ctx) || kh_device_bind(h.ctx, first.name, &dev) ||
	    kh_domain_alloc(h.ctx, dev, &paging, &h.dom) || kh_attach(h.ctx, dev, h.dom))
		fail("setting up the helper's domain", kh_last_error());
	direct_open(&d, second.name);

	/* Touched memory, 2 MiB aligned, so pinning does not also fault pages in. */
	raw = mmap(NULL, big + 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		fail("allocating 256 MiB", strerror(errno));
	mem = (uint8_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	memset(mem, 1, big);

	(void)printf("helper on %s, direct ioctls on %s; map+unmap pairs, times in ns\n",
		     first.name, second.name);
	(void)printf("%-10s %8s %12s %12s %12s %12s %11s %11s %7s %7s\n", "size", "pairs",
		     "helper-med", "direct-med", "helper-p99", "direct-p99", "helper/s", "direct/s",
		     "med-x", "p99-x");
	measure("4KiB", 4096, 400, &h, &d, mem);
	measure("2MiB", 2 * MiB, 40, &h, &d, mem);
	measure("256MiB", big, 2, &h, &d, mem);

	(void)close(d.devfd);
	(void)close(d.iommufd);
	kh_ctx_destroy(h.ctx);
	kh_backend_close(be);
	return 0;
}
