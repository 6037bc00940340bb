/* SPDX-License-Identifier: MIT */
/*
 * kh-iommufd-bench: what kernel-helper costs on top of the kernel, and what each kernel
 * interface costs. Map+unmap latency through kh_map/kh_unmap on a real iommufd domain and on a
 * vfio-type1 domain (a VFIO container), against the same kernel calls issued directly
 * (IOMMU_IOAS_MAP/UNMAP, VFIO_IOMMU_MAP/UNMAP_DMA), each on a device of its own group,
 * interleaved in one run so the ratios are fair (times in a TCG guest are inflated; the ratios
 * are what to read). The iommufd ways need /dev/iommu, the type1 ways VFIO's container, each
 * two IOMMU groups bound to vfio-pci; the ways a machine lacks are left out (Debian 12's
 * kernel has only type1). The VM tier runs it (tests/vm/README.md).
 *
 * It lives in kernel-helper because the baselines issue iommufd and VFIO ioctls themselves.
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

/* The type1 baseline: a group of its own in a container, as a program would do by hand. */
struct direct_type1 {
	int container, group;
};

static void direct_type1_open(struct direct_type1 *d, uint32_t group)
{
	char path[64];

	(void)snprintf(path, sizeof(path), "/dev/vfio/%u", group);
	d->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	d->group = open(path, O_RDWR | O_CLOEXEC);
	if (d->container < 0 || d->group < 0)
		fail("opening /dev/vfio/vfio and the baseline's group", strerror(errno));
	if (ioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container) ||
	    ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		fail("setting up the type1 baseline's container", strerror(errno));
}

static void direct_type1_map_unmap(const void *arg, void *mem, uint64_t len)
{
	const struct direct_type1 *d = arg;
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)mem,
		.iova = IOVA,
		.size = len,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap), .iova = IOVA, .size = len};

	if (ioctl(d->container, VFIO_IOMMU_MAP_DMA, &map) ||
	    ioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &unmap))
		fail("direct type1 map/unmap", strerror(errno));
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

#define MAX_PATHS 4

/* A ratio column: path num's median (and p99 with p99) over path den's. */
struct ratio {
	const char *label;
	size_t num, den;
	bool p99;
};

struct run {
	struct path paths[MAX_PATHS];
	size_t n_paths;
	struct ratio ratios[MAX_PATHS];
	size_t n_ratios;
};

static void print_ratios(const struct run *r, const struct figures *f)
{
	for (size_t j = 0; j < r->n_ratios; j++) {
		const struct ratio *q = &r->ratios[j];

		(void)printf(" %8.3f", (double)f[q->num].median / (double)f[q->den].median);
		if (q->p99)
			(void)printf(" %8.3f", (double)f[q->num].p99 / (double)f[q->den].p99);
	}
	(void)printf("\n");
}

/* Times every path in alternating rounds, so drift in the guest hits all alike, and prints
 * each one's median, p99 and rate, then the run's ratios. */
static void measure(const char *label, uint64_t len, size_t iterations, const struct run *r,
		    void *mem)
{
	uint64_t *ns[MAX_PATHS];
	struct figures f[MAX_PATHS];
	size_t k = iterations * ROUNDS;

	for (size_t j = 0; j < r->n_paths; j++) {
		ns[j] = calloc(k, sizeof(uint64_t));
		if (!ns[j])
			fail("allocating samples", strerror(ENOMEM));
		r->paths[j].map_unmap(r->paths[j].arg, mem, len); /* warm */
	}
	for (size_t round = 0; round < ROUNDS; round++)
		for (size_t j = 0; j < r->n_paths; j++)
			for (size_t i = 0; i < iterations; i++) {
				uint64_t t0 = now_ns();

				r->paths[j].map_unmap(r->paths[j].arg, mem, len);
				ns[j][round * iterations + i] = now_ns() - t0;
			}
	(void)printf("%-7s %6zu", label, k);
	for (size_t j = 0; j < r->n_paths; j++) {
		f[j] = summarize(ns[j], k);
		(void)printf(" %11lu %11lu %9.0f", (unsigned long)f[j].median,
			     (unsigned long)f[j].p99, f[j].per_sec);
		free(ns[j]);
	}
	print_ratios(r, f);
}

static void usage(FILE *out)
{
	(void)fprintf(
		out,
		"usage: kh-iommufd-bench [--help]\n"
		"\n"
		"Measures map+unmap of 4 KiB, 2 MiB and 256 MiB mappings four ways, each on a\n"
		"device of its own IOMMU group: through kernel-helper on iommufd (ifd) and on\n"
		"vfio-type1 (t1), and with the same kernel calls issued directly (difd: "
		"IOMMU_IOAS_*,\n"
		"dt1: VFIO_IOMMU_*_DMA). Per way: median and 99th percentile latency (ns) and\n"
		"map+unmap pairs per second; then ratios: each helper's median and p99 over its\n"
		"direct calls' (ifd/difd, t1/dt1), and type1's median over iommufd's, through the\n"
		"helper (t1/ifd) and direct (dt1/difd). The iommufd ways need /dev/iommu, the\n"
		"type1 ways /dev/vfio/vfio, each two IOMMU groups bound to vfio-pci; the ways the\n"
		"machine lacks are left out. Run it as root, e.g. in the VM tier:\n"
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

/* Up to n devices of be in different IOMMU groups; how many there are. */
static size_t pick_devices(struct kh_backend *be, struct kh_device_info *out, size_t n)
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
	return found;
}

static void print_header(const struct run *r)
{
	(void)printf("%-7s %6s", "size", "pairs");
	for (size_t j = 0; j < r->n_paths; j++)
		(void)printf(" %7s-med %7s-p99 %7s/s", r->paths[j].name, r->paths[j].name,
			     r->paths[j].name);
	for (size_t j = 0; j < r->n_ratios; j++) {
		(void)printf(" %8s", r->ratios[j].label);
		if (r->ratios[j].p99)
			(void)printf(" %8s", "p99");
	}
	(void)printf("\n");
}

static size_t add_path(struct run *r, const char *name,
		       void (*map_unmap)(const void *, void *, uint64_t), const void *arg)
{
	r->paths[r->n_paths] = (struct path){name, map_unmap, arg};
	return r->n_paths++;
}

static void add_ratio(struct run *r, const char *label, size_t num, size_t den, bool p99)
{
	r->ratios[r->n_ratios++] = (struct ratio){label, num, den, p99};
}

#define NONE SIZE_MAX /* a way this machine cannot measure */

/* The ways this machine offers, each on a device of its own group: the iommufd pair where
 * there is /dev/iommu, the type1 pair where there is VFIO's container. */
static void add_paths(struct run *r, struct helper *hi, struct direct *d, struct helper *ht,
		      struct direct_type1 *dt, struct kh_backend *iommufd, struct kh_backend *type1)
{
	struct kh_device_info devs[4];
	size_t n = pick_devices(iommufd ? iommufd : type1, devs, iommufd && type1 ? 4 : 2),
	       next = 0;
	size_t ifd = NONE, difd = NONE, t1 = NONE, dt1 = NONE;

	if (iommufd && n >= 2) {
		helper_open(hi, iommufd, devs[0].name);
		ifd = add_path(r, "ifd", helper_map_unmap, hi);
		direct_open(d, devs[1].name);
		difd = add_path(r, "difd", direct_map_unmap, d);
		add_ratio(r, "ifd/difd", ifd, difd, true);
		next = 2;
	}
	if (type1 && n >= next + 2) {
		helper_open(ht, type1, devs[next].name);
		t1 = add_path(r, "t1", helper_map_unmap, ht);
		direct_type1_open(dt, devs[next + 1].group);
		dt1 = add_path(r, "dt1", direct_type1_map_unmap, dt);
		add_ratio(r, "t1/dt1", t1, dt1, true);
	}
	if (t1 != NONE && ifd != NONE) {
		add_ratio(r, "t1/ifd", t1, ifd, false);
		add_ratio(r, "dt1/difd", dt1, difd, false);
	}
	if (r->n_paths < 2)
		fail("finding devices", "needs devices bound to vfio-pci in two IOMMU groups per "
					"backend measured");
	(void)printf("ifd: helper on iommufd, %s; difd: iommufd ioctls, %s; t1: helper on "
		     "vfio-type1, %s; dt1: type1 ioctls, %s. map+unmap pairs, times in ns\n",
		     ifd != NONE ? devs[0].name : "-", difd != NONE ? devs[1].name : "-",
		     t1 != NONE ? devs[next].name : "-", dt1 != NONE ? devs[next + 1].name : "-");
}

int main(int argc, char **argv)
{
	struct kh_backend *type1 = NULL, *iommufd = NULL;
	struct helper hi = {0}, ht = {0};
	struct direct d = {-1, -1, 0};
	struct direct_type1 dt = {-1, -1};
	struct run r = {0};
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
	if (kh_backend_choose("iommufd", &chosen) == 0 && kh_backend_open_iommufd(&iommufd) < 0)
		fail("opening iommufd", kh_last_error());
	if (!iommufd && !type1)
		fail("choosing a backend", "neither /dev/iommu nor VFIO's container is here");
	add_paths(&r, &hi, &d, &ht, &dt, iommufd, type1);

	/* Touched memory, 2 MiB aligned, so pinning does not also fault pages in. */
	raw = mmap(NULL, big + 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		fail("allocating 256 MiB", strerror(errno));
	mem = (uint8_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	memset(mem, 1, big);

	print_header(&r);
	measure("4KiB", 4096, 400, &r, mem);
	measure("2MiB", 2 * MiB, 40, &r, mem);
	measure("256MiB", big, 2, &r, mem);

	const int fds[] = {d.devfd, d.iommufd, dt.group, dt.container};

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			(void)close(fds[i]);
	kh_ctx_destroy(hi.ctx);
	kh_ctx_destroy(ht.ctx);
	kh_backend_close(iommufd);
	kh_backend_close(type1);
	return 0;
}
