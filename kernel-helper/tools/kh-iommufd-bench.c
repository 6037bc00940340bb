/* SPDX-License-Identifier: MIT */
/*
 * kh-iommufd-bench: what kernel-helper costs on top of the kernel, and what each kernel
 * interface costs. Map+unmap latency through kh_map/kh_unmap on a real iommufd domain and on a
 * vfio-type1 domain (a VFIO container), against the same IOMMU_IOAS_MAP/UNMAP ioctls issued
 * directly, each on a device of its own group, interleaved in one run so the ratios are fair
 * (times in a TCG guest are inflated; the ratios are what to read). Needs /dev/iommu, VFIO's
 * container and three devices in different groups bound to vfio-pci (without the container,
 * the type1 column is left out); the VM tier runs it (tests/vm/README.md).
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

static void direct_map_unmap(const void *arg, void *mem, uint64_t len)
{
	const struct direct *d = arg;
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
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dom;
};

static void helper_map_unmap(const void *arg, void *mem, uint64_t len)
{
	const struct helper *h = arg;
	struct kh_map_req req = {.iova = IOVA,
				 .length = len,
				 .addr = (uintptr_t)mem,
				 .prot = KH_PROT_READ | KH_PROT_WRITE,
				 .flags = KH_MAP_FIXED_IOVA};

	if (kh_map(h->ctx, h->dom, &req) || kh_unmap(h->ctx, h->dom, IOVA, len, NULL))
		fail("helper map/unmap", kh_last_error());
}

/* One way of mapping, timed against the others. */
struct path {
	const char *name;
	void (*map_unmap)(const void *arg, void *mem, uint64_t len);
	const void *arg;
};

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

#define MAX_PATHS 3 /* the baseline (direct) last */

/* Times n paths (the last the baseline) in alternating rounds, so drift in the guest hits all
 * alike, and prints each one's median, p99 and rate, then each helper's ratios to the baseline
 * and, with two helpers, the second's to the first. */
static void measure(const char *label, uint64_t len, size_t iterations, const struct path *p,
		    size_t n, void *mem)
{
	uint64_t *ns[MAX_PATHS];
	struct figures f[MAX_PATHS];
	size_t k = iterations * ROUNDS;

	for (size_t j = 0; j < n; j++) {
		ns[j] = calloc(k, sizeof(uint64_t));
		if (!ns[j])
			fail("allocating samples", strerror(ENOMEM));
		p[j].map_unmap(p[j].arg, mem, len); /* warm */
	}
	for (size_t round = 0; round < ROUNDS; round++)
		for (size_t j = 0; j < n; j++)
			for (size_t i = 0; i < iterations; i++) {
				uint64_t t0 = now_ns();

				p[j].map_unmap(p[j].arg, mem, len);
				ns[j][round * iterations + i] = now_ns() - t0;
			}
	(void)printf("%-7s %6zu", label, k);
	for (size_t j = 0; j < n; j++) {
		f[j] = summarize(ns[j], k);
		(void)printf(" %11lu %11lu %9.0f", (unsigned long)f[j].median,
			     (unsigned long)f[j].p99, f[j].per_sec);
		free(ns[j]);
	}
	for (size_t j = 0; j + 1 < n; j++)
		(void)printf(" %9.3f %11.3f", (double)f[j].median / (double)f[n - 1].median,
			     (double)f[j].p99 / (double)f[n - 1].p99);
	if (n == 3)
		(void)printf(" %7.3f", (double)f[1].median / (double)f[0].median);
	(void)printf("\n");
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"usage: kh-iommufd-bench [--help]\n"
		"\n"
		"Measures map+unmap through kernel-helper on iommufd and on vfio-type1 against\n"
		"the same iommufd ioctls issued directly, for 4 KiB, 2 MiB and 256 MiB mappings:\n"
		"median and 99th percentile latency (ns), throughput (map+unmap pairs per\n"
		"second), each helper's ratios to the direct ioctls and type1's to iommufd.\n"
		"Needs /dev/iommu, /dev/vfio/vfio and a device bound to vfio-pci in each of\n"
		"three IOMMU groups (without /dev/vfio/vfio, two and no type1 column); run it\n"
		"as root, e.g. in the VM tier:\n"
		"  tests/vm/run-vm.sh --iommu intel --results DIR "
		"build/kernel-helper/tools/kh-iommufd-bench\n"
		"\n"
		"Exit status: 0 after printing the figures, 1 if the machine cannot run it, 2 on\n"
		"a usage error.\n");
}

/* A context of be with the device called name attached to a paging domain. */
static void helper_open(struct helper *h, struct kh_backend *be, const char *name)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t dev;

	h->be = be;
	if (kh_ctx_create(be, &h->ctx) || kh_device_bind(h->ctx, name, &dev) ||
	    kh_domain_alloc(h->ctx, dev, &paging, &h->dom) || kh_attach(h->ctx, dev, h->dom))
		fail("setting up a helper's domain", kh_last_error());
}

/* The first n devices of be in different IOMMU groups; false if there are fewer. */
static bool pick_devices(struct kh_backend *be, struct kh_device_info *out, size_t n)
{
	size_t found = 0;

	for (size_t i = 0; i < kh_device_count(be) && found < n; i++) {
		bool shared = false;

		if (kh_device_info(be, i, &out[found]))
			fail("listing devices", kh_last_error());
		for (size_t j = 0; j < found; j++)
			shared |= out[j].group == out[found].group;
		found += !shared;
	}
	return found == n;
}

static void print_header(const struct path *p, size_t n)
{
	(void)printf("%-7s %6s", "size", "pairs");
	for (size_t j = 0; j < n; j++)
		(void)printf(" %7s-med %7s-p99 %7s/s", p[j].name, p[j].name, p[j].name);
	/* Ratios: each helper's median and p99 over the direct ioctls', then type1's median over
	 * iommufd's. */
	for (size_t j = 0; j + 1 < n; j++)
		(void)printf(" %7.7s-x %7.7s-x99", p[j].name, p[j].name);
	if (n == 3)
		(void)printf(" %7s", "t1/ifd");
	(void)printf("\n");
}

int main(int argc, char **argv)
{
	struct kh_device_info devs[3];
	struct kh_backend *type1 = NULL, *iommufd;
	struct helper hi, ht = {0};
	struct path paths[MAX_PATHS];
	size_t n = 0;
	struct direct d;
	uint8_t *mem, *raw;
	const uint64_t big = 256 * MiB;
	const char *chosen;

	if (argc == 2 && !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	if (argc != 1) {
		usage(stderr);
		return 2;
	}
	/* type1 first: its probe opens each group, which a device open through iommufd keeps
	 * busy. */
	if (kh_backend_choose("vfio-type1", &chosen) == 0 && kh_backend_open_vfio_type1(&type1) < 0)
		fail("opening vfio-type1", kh_last_error());
	if (kh_backend_open_iommufd(&iommufd))
		fail("opening iommufd", kh_last_error());
	if (!pick_devices(iommufd, devs, type1 ? 3 : 2))
		fail("finding devices", "needs a device bound to vfio-pci in each of three groups "
					"(two without VFIO's container)");
	helper_open(&hi, iommufd, devs[0].name);
	paths[n++] = (struct path){"iommufd", helper_map_unmap, &hi};
	if (type1) {
		helper_open(&ht, type1, devs[2].name);
		paths[n++] = (struct path){"type1", helper_map_unmap, &ht};
	}
	direct_open(&d, devs[1].name);
	paths[n++] = (struct path){"direct", direct_map_unmap, &d};

	/* Touched memory, 2 MiB aligned, so pinning does not also fault pages in. */
	raw = mmap(NULL, big + 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		fail("allocating 256 MiB", strerror(errno));
	mem = (uint8_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	memset(mem, 1, big);

	(void)printf("helper on iommufd: %s; helper on vfio-type1: %s; direct iommufd ioctls: %s; "
		     "map+unmap pairs, times in ns; ratios to direct, and type1 to iommufd\n",
		     devs[0].name, type1 ? devs[2].name : "(no VFIO container)", devs[1].name);
	print_header(paths, n);
	measure("4KiB", 4096, 400, paths, n, mem);
	measure("2MiB", 2 * MiB, 40, paths, n, mem);
	measure("256MiB", big, 2, paths, n, mem);

	(void)close(d.devfd);
	(void)close(d.iommufd);
	kh_ctx_destroy(hi.ctx);
	kh_ctx_destroy(ht.ctx);
	kh_backend_close(iommufd);
	kh_backend_close(type1);
	return 0;
}
