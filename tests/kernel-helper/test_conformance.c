/* SPDX-License-Identifier: MIT */
/*
 * The IOAS and object rules every backend must follow, written against the public API only so
 * that the same checks hold the emulated backend and iommufd to one behaviour.
 *
 * Devices are taken from the backend's list: the first three ungrouped-or-not devices serve as
 * "a", "b" and "c"; checks that need two devices sharing a group look for such a pair and are
 * skipped (and say so) where the machine has none.
 *
 * Each case runs once per backend, the variants of the fixture: "emulated" everywhere,
 * "iommufd" where /dev/iommu is and "vfio_type1" where VFIO's container and an IOMMU are (the VM
 * tier), skipped elsewhere. Where a backend lacks something by nature (its capabilities say
 * so: vfio-type1 has no replace), the case checks that it refuses, and how.
 */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define __user
#include <linux/vfio.h>

#include <kh/kh.h>
#include <kh/kh_sanitizer.h>

#include "harness.h"
#include "kernel_maps_files.h"

#if KH_ASAN
/* The sanitizer runtime's count of the bytes allocated; GCC ships no header for it. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define MiB	  (1ull << 20)
#define PAGE	  4096ull
#define MSI_START 0xfee00000ull
#define MSI_LAST  0xfeefffffull

/* Two devices in one group, two more in groups of their own, as the VM tier's machines have
 * (there the pair may be absent). */
static const char default_topology[] = "[iommu]\n"
				       "devices = a b c d\n"
				       "[device a]\n"
				       "group = 1\n"
				       "[device b]\n"
				       "group = 2\n"
				       "[device c]\n"
				       "group = 3\n"
				       "[device d]\n"
				       "group = 3\n";

/* --topology: an emulated topology to use instead of the built-in one. */
static const char *topology_file;

HARNESS_OPTION(topology, "FILE", "emulated topology to use instead of the built-in one")
{
	topology_file = value;
}

FIXTURE(conformance)
{
	struct kh_backend *be;
	char names[3][KH_NAME_MAX];
	char pair[2][KH_NAME_MAX]; /* two devices of one group, or empty */
	uint64_t aperture_last;
	uint8_t *raw;	 /* the mapping, for munmap */
	uint8_t *memory; /* real memory, so a kernel backend can pin it */
};

FIXTURE_VARIANT(conformance)
{
	const char *backend; /* the registry's name */
};

FIXTURE_VARIANT_ADD(conformance, emulated){.backend = "emulated"};
FIXTURE_VARIANT_ADD(conformance, iommufd){.backend = "iommufd"};
FIXTURE_VARIANT_ADD(conformance, vfio_type1){.backend = "vfio-type1"};

static const size_t memory_size = 64 * MiB;

/* An address inside the test memory, 2 MiB aligned for offset 0. */
static uint64_t mem(const struct fixture_conformance *w, uint64_t offset)
{
	return (uint64_t)(uintptr_t)w->memory + offset;
}

#define CHECK_ERR(expr, err, phrase)                                                               \
	do {                                                                                       \
		int check_rc_ = (expr);                                                            \
		if (check_rc_ != (err)) {                                                          \
			(void)fprintf(stderr,                                                      \
				      "%s:%d: %s gave %d (%s), expected %s; message: %s\n",        \
				      __FILE__, __LINE__, #expr, check_rc_, strerror(-check_rc_),  \
				      #err, kh_last_error());                                      \
			abort();                                                                   \
		}                                                                                  \
		if (!strstr(kh_last_error(), (phrase))) {                                          \
			(void)fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__,    \
				      __LINE__, kh_last_error(), (phrase));                        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct setup {
	const struct fixture_conformance *w;
	struct kh_ctx *ctx;
	uint32_t dev[3];
	uint32_t dom;
};

/* A context with the three devices bound and a paging domain allocated for the first. */
static void setup(const struct fixture_conformance *w, struct setup *s)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};

	s->w = w;
	CHECK_OK(kh_ctx_create(w->be, &s->ctx));
	for (int i = 0; i < 3; i++)
		CHECK_OK(kh_device_bind(s->ctx, w->names[i], &s->dev[i]));
	CHECK_OK(kh_domain_alloc(s->ctx, s->dev[0], &paging, &s->dom));
}

static uint64_t map_fixed(struct setup *s, uint32_t dom, uint64_t iova, uint64_t len,
			  uint64_t offset, uint32_t prot)
{
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = mem(s->w, offset),
				 .prot = prot,
				 .flags = KH_MAP_FIXED_IOVA};

	CHECK_OK(kh_map(s->ctx, dom, &req));
	CHECK_EQ(req.iova, iova);
	return iova;
}

static int try_map(struct setup *s, uint64_t iova, uint64_t len, uint64_t addr, uint32_t prot)
{
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = addr,
				 .prot = prot,
				 .flags = KH_MAP_FIXED_IOVA};

	return kh_map(s->ctx, s->dom, &req);
}

/* The mappings as a flat list, to prove a failed call changed nothing. */
struct snapshot {
	struct kh_mapping m[64];
	int n;
};

static void snap(struct setup *s, uint32_t dom, struct snapshot *out)
{
	out->n = kh_mappings(s->ctx, dom, 0, out->m, 64);
	CHECK(out->n >= 0 && out->n < 64);
}

static void check_unchanged(struct setup *s, uint32_t dom, const struct snapshot *before)
{
	struct snapshot now;

	snap(s, dom, &now);
	CHECK_EQ(now.n, before->n);
	for (int i = 0; i < now.n; i++) {
		CHECK_EQ(now.m[i].iova, before->m[i].iova);
		CHECK_EQ(now.m[i].length, before->m[i].length);
		CHECK_EQ(now.m[i].addr, before->m[i].addr);
		CHECK_EQ(now.m[i].prot, before->m[i].prot);
	}
}

TEST_F(conformance, domain_types)
{
	struct setup s;
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_BLOCKED};
	enum kh_domain_type type;
	uint32_t blocked;
	int rc;

	setup(self, &s);
	CHECK_OK(kh_domain_type(s.ctx, s.dom, &type));
	CHECK_EQ(type, KH_DOMAIN_PAGING);
	rc = kh_domain_alloc(s.ctx, s.dev[0], &args, &blocked);
	if (rc == 0) {
		struct kh_map_req req = {
			.length = PAGE, .addr = mem(self, 0), .prot = KH_PROT_READ};

		CHECK_ERR(kh_map(s.ctx, blocked, &req), -EOPNOTSUPP, "does not support map");
		CHECK_ERR(kh_iova_ranges(s.ctx, blocked, NULL, 0), -EOPNOTSUPP, "blocked");
		CHECK_OK(kh_domain_free(s.ctx, blocked));
	} else {
		CHECK_ERR(rc, -EOPNOTSUPP, "blocked");
	}
	args = (struct kh_domain_alloc_args){.type = (enum kh_domain_type)42};
	CHECK_ERR(kh_domain_alloc(s.ctx, s.dev[0], &args, &blocked), -EINVAL,
		  "unknown domain type");
	args = (struct kh_domain_alloc_args){.type = KH_DOMAIN_PAGING, .flags = 1u << 30};
	CHECK_ERR(kh_domain_alloc(s.ctx, s.dev[0], &args, &blocked), -EINVAL,
		  "unknown domain flags");
	args = (struct kh_domain_alloc_args){
		.type = KH_DOMAIN_NESTED, .parent_id = s.dom, .data = &args, .data_len = 8};
	CHECK_ERR(kh_domain_alloc(s.ctx, s.dev[0], &args, &blocked), -EINVAL, "nest parent");
	CHECK_ERR(kh_domain_alloc(s.ctx, 999, &args, &blocked), -ENOENT, "no device 999");
	kh_ctx_destroy(s.ctx);
}

TEST_F(conformance, map_rules)
{
	struct setup s;
	struct snapshot before;
	uint64_t base = 0x40000000;

	setup(self, &s);
	map_fixed(&s, s.dom, base, 16 * PAGE, 0, KH_PROT_READ | KH_PROT_WRITE);
	snap(&s, s.dom, &before);

	CHECK_ERR(try_map(&s, base + 15 * PAGE, 2 * PAGE, mem(self, MiB), KH_PROT_READ), -EEXIST,
		  "overlaps the mapping");
	CHECK_ERR(try_map(&s, base - PAGE, 2 * PAGE, mem(self, MiB), KH_PROT_READ), -EEXIST,
		  "overlaps the mapping");
	CHECK_ERR(try_map(&s, base + 0x800, PAGE, mem(self, MiB), KH_PROT_READ), -EINVAL,
		  "page size");
	CHECK_ERR(try_map(&s, 2 * base, 0x800, mem(self, MiB), KH_PROT_READ), -EINVAL, "page size");
	CHECK_ERR(try_map(&s, 2 * base, PAGE, mem(self, MiB) + 0x10, KH_PROT_READ), -EINVAL,
		  "page size");
	CHECK_ERR(try_map(&s, 2 * base, 0, mem(self, MiB), KH_PROT_READ), -EINVAL, "zero bytes");
	CHECK_ERR(try_map(&s, 2 * base, PAGE, mem(self, MiB), 0), -EINVAL, "permissions");
	CHECK_ERR(try_map(&s, UINT64_MAX - PAGE + 1, 2 * PAGE, mem(self, MiB), KH_PROT_READ),
		  -EOVERFLOW, "overflows");
	if (self->aperture_last != UINT64_MAX)
		CHECK_ERR(try_map(&s, self->aperture_last + 1, PAGE, mem(self, MiB), KH_PROT_READ),
			  -EINVAL, "aperture");
	check_unchanged(&s, s.dom, &before);

	/* The edges of the address space are ordinary addresses. */
	map_fixed(&s, s.dom, 0, PAGE, MiB, KH_PROT_READ);
	map_fixed(&s, s.dom, self->aperture_last + 1 - PAGE, PAGE, MiB, KH_PROT_READ);
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, before.m, 64), 3);
	kh_ctx_destroy(s.ctx);
}

TEST_F(conformance, unmap_rules)
{
	struct setup s;
	struct snapshot before;
	uint64_t base = 0x10000000, unmapped = 7;

	setup(self, &s);
	map_fixed(&s, s.dom, base, 4 * PAGE, 0, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 4 * PAGE, 2 * PAGE, 4 * PAGE, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 10 * PAGE, PAGE, 6 * PAGE, KH_PROT_WRITE);
	snap(&s, s.dom, &before);

	CHECK_ERR(kh_unmap(s.ctx, s.dom, base, 2 * PAGE, &unmapped), -EINVAL, "whole mappings");
	CHECK_EQ(unmapped, 0);
	CHECK_ERR(kh_unmap(s.ctx, s.dom, base + PAGE, 8 * PAGE, NULL), -EINVAL, "whole mappings");
	CHECK_ERR(kh_unmap(s.ctx, s.dom, base + 6 * PAGE, 4 * PAGE, NULL), -ENOENT, "nothing");
	CHECK_ERR(kh_unmap(s.ctx, s.dom, base, 0, NULL), -EINVAL, "zero bytes");
	CHECK_ERR(kh_unmap(s.ctx, s.dom, UINT64_MAX - PAGE + 1, 2 * PAGE, NULL), -EOVERFLOW,
		  "overflows");
	check_unchanged(&s, s.dom, &before);

	/* A span with holes removes every whole mapping inside it. */
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, 8 * PAGE, &unmapped));
	CHECK_EQ(unmapped, 6 * PAGE);
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, before.m, 64), 1);
	map_fixed(&s, s.dom, base, PAGE, 0, KH_PROT_READ);
	CHECK_OK(kh_unmap(s.ctx, s.dom, 0, UINT64_MAX, &unmapped));
	CHECK_EQ(unmapped, 2 * PAGE);
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, before.m, 64), 0);
	CHECK_ERR(kh_unmap(s.ctx, s.dom, 0, UINT64_MAX, NULL), -ENOENT, "nothing");
	kh_ctx_destroy(s.ctx);
}

/* An older kernel's VFIO type1, which lets only the process that made a mapping remove it, for
 * this binary (linked with --wrap=ioctl): with foreign_iova set where "another process" mapped,
 * VFIO_IOMMU_UNMAP_DMA of a range holding it removes what lies below it, stops there and answers
 * with the bytes it removed, as such a kernel's walk of the range's mappings in IOVA order does. */
static uint64_t foreign_iova = UINT64_MAX; /* none */
/* With map_errno set, a VFIO_IOMMU_MAP_DMA the kernel would make fails with it and changes
 * nothing, as one past the kernel's overlap check that cannot pin (RLIMIT_MEMLOCK) does. */
static int map_errno;

int __real_ioctl(int fd, unsigned long request, ...);

static int map_failing(int fd, const struct vfio_iommu_type1_dma_map *map)
{
	struct vfio_iommu_type1_dma_unmap undo = {
		.argsz = sizeof(undo), .iova = map->iova, .size = map->size};
	int rc = __real_ioctl(fd, VFIO_IOMMU_MAP_DMA, map);

	if (rc < 0)
		return rc;
	(void)__real_ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &undo);
	errno = map_errno;
	return -1;
}

int __wrap_ioctl(int fd, unsigned long request, ...);

int __wrap_ioctl(int fd, unsigned long request, ...)
{
	struct vfio_iommu_type1_dma_unmap *cmd;
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	cmd = arg;
	if (request == VFIO_IOMMU_MAP_DMA && map_errno)
		return map_failing(fd, arg);
	if (request != VFIO_IOMMU_UNMAP_DMA || foreign_iova == UINT64_MAX || cmd->flags ||
	    foreign_iova < cmd->iova || foreign_iova - cmd->iova >= cmd->size)
		return __real_ioctl(fd, request, arg);
	cmd->size = foreign_iova - cmd->iova;
	return cmd->size ? __real_ioctl(fd, request, arg) : 0;
}

/* A device attached to the domain, two pages mapped at base and one at base + 4 pages, which
 * "another process" made (foreign_iova). */
static void setup_foreign(const struct fixture_conformance *self, struct setup *s, uint64_t base)
{
	setup(self, s);
	CHECK_OK(kh_attach(s->ctx, s->dev[0], s->dom));
	map_fixed(s, s->dom, base, 2 * PAGE, 0, KH_PROT_READ);
	map_fixed(s, s->dom, base + 4 * PAGE, PAGE, 2 * PAGE, KH_PROT_READ);
	foreign_iova = base + 4 * PAGE;
}

/* Where the kernel keeps mappings the daemon's previous process made (above), an unmap fails
 * and says why; the mappings the kernel removed all the same leave the books, the rest stay, and
 * the books match the kernel (the range removed maps again, the whole unmaps once the kernel lets
 * it). A gap between mappings is no shortfall. */
TEST_F(conformance, unmap_kept_by_kernel)
{
	const char *why = "lets only the process that made a mapping remove it";
	uint64_t base = 0x10000000, unmapped = 7;
	struct snapshot before, now;
	struct setup s;

	if (strcmp(variant->backend, "vfio-type1") != 0)
		SKIP("the case stands in for an older kernel's VFIO type1");
	setup_foreign(self, &s, base);
	map_fixed(&s, s.dom, base + 8 * PAGE, PAGE, 3 * PAGE, KH_PROT_WRITE);
	snap(&s, s.dom, &before);

	CHECK_ERR(kh_unmap(s.ctx, s.dom, foreign_iova, PAGE, &unmapped), -EPERM, why);
	CHECK_EQ(unmapped, 0);
	check_unchanged(&s, s.dom, &before);

	CHECK_ERR(kh_unmap(s.ctx, s.dom, base, 16 * PAGE, &unmapped), -EPERM, why);
	CHECK_EQ(unmapped, 2 * PAGE);
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 2);
	CHECK_EQ(now.m[0].iova, base + 4 * PAGE);
	CHECK_EQ(now.m[1].iova, base + 8 * PAGE);
	map_fixed(&s, s.dom, base, 2 * PAGE, 0, KH_PROT_READ);

	foreign_iova = UINT64_MAX;
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, 16 * PAGE, &unmapped));
	CHECK_EQ(unmapped, 4 * PAGE);
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, now.m, 64), 0);
	kh_ctx_destroy(s.ctx);
}

/* The same short unmap where the one-page maps that ask what the kernel kept cannot pin: type1
 * checks for an overlap before it pins, so ENOMEM still says "nothing there", and the books
 * follow the kernel. A probe that fails before that check says nothing: the unmap says it could
 * not tell. */
TEST_F(conformance, unmap_kept_probe_cannot_pin)
{
	uint64_t base = 0x10000000, unmapped = 7;
	struct snapshot now;
	struct setup s;

	if (strcmp(variant->backend, "vfio-type1") != 0)
		SKIP("the case stands in for an older kernel's VFIO type1");
	setup_foreign(self, &s, base);
	map_errno = ENOMEM;

	CHECK_ERR(kh_unmap(s.ctx, s.dom, base, 16 * PAGE, &unmapped), -EPERM,
		  "lets only the process that made a mapping remove it");
	CHECK_EQ(unmapped, 2 * PAGE);
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 1);
	CHECK_EQ(now.m[0].iova, base + 4 * PAGE);

	map_errno = 0;
	map_fixed(&s, s.dom, base, 2 * PAGE, 0, KH_PROT_READ);
	map_errno = EFAULT;
	CHECK_ERR(kh_unmap(s.ctx, s.dom, base, 16 * PAGE, &unmapped), -EFAULT,
		  "asking which it kept failed");

	map_errno = 0;
	foreign_iova = UINT64_MAX;
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, 16 * PAGE, &unmapped));
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, now.m, 64), 0);
	kh_ctx_destroy(s.ctx);
}

/* A mapping made in pieces (KH_MAP_EXTEND) is shortened from its end. A kernel removes only
 * whole pieces of what it was given, so a cut inside the last piece moves down to where that
 * piece starts; a mapping made in one piece is cut where asked (the emulated backend) or left
 * as it is with a refusal that says to remove it whole. */
TEST_F(conformance, unmap_tail)
{
	struct setup s;
	struct snapshot now, before;
	uint64_t base = 0x10000000, cut = 0;
	struct kh_map_req rest = {.iova = base + 2 * PAGE,
				  .length = 2 * PAGE,
				  .addr = mem(self, 2 * PAGE),
				  .prot = KH_PROT_READ,
				  .flags = KH_MAP_FIXED_IOVA | KH_MAP_EXTEND};
	int rc;

	setup(self, &s);
	map_fixed(&s, s.dom, base, 2 * PAGE, 0, KH_PROT_READ);
	CHECK_OK(kh_map(s.ctx, s.dom, &rest));
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 1);
	CHECK_EQ(now.m[0].length, 4 * PAGE);

	CHECK_OK(kh_unmap_tail(s.ctx, s.dom, base + 3 * PAGE, PAGE, &cut));
	CHECK(cut == base + 3 * PAGE || cut == base + 2 * PAGE);
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 1);
	CHECK_EQ(now.m[0].iova, base);
	CHECK_EQ(now.m[0].length, cut - base);

	map_fixed(&s, s.dom, base + 16 * PAGE, 4 * PAGE, 0, KH_PROT_READ);
	snap(&s, s.dom, &before);
	rc = kh_unmap_tail(s.ctx, s.dom, base + 19 * PAGE, PAGE, &cut);
	if (rc == -ENOENT) {
		CHECK(strstr(kh_last_error(), "remove it whole") != NULL);
		check_unchanged(&s, s.dom, &before);
	} else {
		CHECK_OK(rc);
		CHECK_EQ(cut, base + 19 * PAGE);
	}
	CHECK_ERR(kh_unmap_tail(s.ctx, s.dom, base + 8 * PAGE, PAGE, &cut), -EINVAL,
		  "not the end of a longer mapping");
	CHECK_OK(kh_unmap(s.ctx, s.dom, 0, UINT64_MAX, NULL));
	kh_ctx_destroy(s.ctx);
}

/* kh_unmap_run's take for the tests: up to max mappings, each asked once, in IOVA order. */
struct take_upto {
	size_t max, asked;
	uint64_t last_iova;
};

static bool take_upto(const struct kh_mapping *m, size_t taken, void *arg)
{
	struct take_upto *t = arg;

	CHECK_EQ(taken, t->asked);
	CHECK(t->asked == 0 || m->iova > t->last_iova);
	t->last_iova = m->iova;
	t->asked++;
	return taken < t->max;
}

/* A run of whole mappings goes in one call, as far as take lets it and no further than last;
 * what it leaves stays as it was, and a mapping taken that ends past last fails it whole. */
TEST_F(conformance, unmap_run)
{
	struct setup s;
	struct snapshot before, now;
	struct take_upto upto = {.max = 2};
	uint64_t base = 0x10000000, unmapped = 7;
	size_t count = 9;
	bool more = false;

	setup(self, &s);
	map_fixed(&s, s.dom, base, PAGE, 0, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 2 * PAGE, 2 * PAGE, PAGE, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 8 * PAGE, PAGE, 3 * PAGE, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 9 * PAGE, PAGE, 4 * PAGE, KH_PROT_WRITE);
	map_fixed(&s, s.dom, base + 20 * PAGE, PAGE, 5 * PAGE, KH_PROT_READ);
	map_fixed(&s, s.dom, base + 30 * PAGE, 4 * PAGE, 6 * PAGE, KH_PROT_READ);
	snap(&s, s.dom, &before);

	/* Refused from the first: nothing goes, and something is left. */
	upto = (struct take_upto){.max = 0};
	CHECK_OK(kh_unmap_run(s.ctx, s.dom, base, UINT64_MAX, take_upto, &upto, &unmapped, &count,
			      &more));
	CHECK_EQ(count, 0);
	CHECK_EQ(unmapped, 0);
	CHECK(more);
	CHECK_EQ(upto.asked, 1);
	check_unchanged(&s, s.dom, &before);

	/* Two taken, the third asked and left. */
	upto = (struct take_upto){.max = 2};
	CHECK_OK(kh_unmap_run(s.ctx, s.dom, base, UINT64_MAX, take_upto, &upto, &unmapped, &count,
			      &more));
	CHECK_EQ(count, 2);
	CHECK_EQ(unmapped, 3 * PAGE);
	CHECK(more);
	CHECK_EQ(upto.asked, 3);
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 4);
	CHECK_EQ(now.m[0].iova, base + 8 * PAGE);

	/* A taken mapping that ends past last fails the run whole. */
	snap(&s, s.dom, &before);
	upto = (struct take_upto){.max = 8};
	CHECK_ERR(kh_unmap_run(s.ctx, s.dom, base + 20 * PAGE, base + 31 * PAGE, take_upto, &upto,
			       &unmapped, &count, &more),
		  -EINVAL, "whole mappings");
	check_unchanged(&s, s.dom, &before);

	/* No further than last: what starts past it is not asked about, nor left "in" the run. */
	upto = (struct take_upto){.max = 8};
	CHECK_OK(kh_unmap_run(s.ctx, s.dom, base + 3 * PAGE, base + 10 * PAGE - 1, take_upto, &upto,
			      &unmapped, &count, &more));
	CHECK_EQ(count, 2);
	CHECK_EQ(unmapped, 2 * PAGE);
	CHECK(!more);
	CHECK_EQ(upto.asked, 2);
	snap(&s, s.dom, &now);
	CHECK_EQ(now.n, 2);
	CHECK_EQ(now.m[0].iova, base + 20 * PAGE);

	/* Nothing from iova on: done, no error. */
	upto = (struct take_upto){.max = 8};
	CHECK_OK(kh_unmap_run(s.ctx, s.dom, base + 40 * PAGE, UINT64_MAX, take_upto, &upto,
			      &unmapped, &count, &more));
	CHECK_EQ(count, 0);
	CHECK(!more);
	CHECK_EQ(upto.asked, 0);

	/* All that is left, to the top of the address space. */
	CHECK_OK(kh_unmap_run(s.ctx, s.dom, 0, UINT64_MAX, take_upto, &upto, &unmapped, &count,
			      &more));
	CHECK_EQ(count, 2);
	CHECK_EQ(unmapped, 5 * PAGE);
	CHECK(!more);
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, now.m, 64), 0);
	kh_ctx_destroy(s.ctx);
}

static bool in_reserved(uint64_t iova, uint64_t len)
{
	return iova <= MSI_LAST && MSI_START <= iova + len - 1;
}

TEST_F(conformance, iova_allocation)
{
	struct setup s;
	struct kh_mapping m[64];
	uint64_t prev_end = 0;
	int n;

	setup(self, &s);
	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	for (int i = 0; i < 20; i++) {
		struct kh_map_req req = {.length = (uint64_t)(i % 4 + 1) * PAGE,
					 .addr = mem(self, (uint64_t)i * 4 * PAGE),
					 .prot = KH_PROT_READ,
					 .alignment = i % 5 == 0 ? MiB : 0};

		CHECK_OK(kh_map(s.ctx, s.dom, &req));
		CHECK(req.iova % PAGE == 0);
		if (req.alignment)
			CHECK(req.iova % MiB == 0);
		CHECK(!in_reserved(req.iova, req.length));
	}
	/* Allocated ranges never overlap: the list is sorted and disjoint. */
	n = kh_mappings(s.ctx, s.dom, 0, m, 64);
	CHECK_EQ(n, 20);
	for (int i = 0; i < n; i++) {
		CHECK(i == 0 || m[i].iova >= prev_end);
		prev_end = m[i].iova + m[i].length;
	}

	/* An allowed range just below the MSI window, too small for the next request. */
	struct kh_iova_range allow = {MSI_START - 4 * PAGE, MSI_START - 1};
	struct kh_map_req req = {.length = 8 * PAGE, .addr = mem(self, 0), .prot = KH_PROT_READ};

	CHECK_OK(kh_allow_iovas(s.ctx, s.dom, &allow, 1));
	CHECK_ERR(kh_map(s.ctx, s.dom, &req), -ENOSPC, "no free IOVA range");
	req.length = 4 * PAGE;
	CHECK_OK(kh_map(s.ctx, s.dom, &req));
	CHECK_EQ(req.iova, MSI_START - 4 * PAGE);
	allow = (struct kh_iova_range){MSI_START - PAGE, MSI_START};
	CHECK_ERR(kh_allow_iovas(s.ctx, s.dom, &allow, 1), -EADDRINUSE, "reserved");
	CHECK_OK(kh_allow_iovas(s.ctx, s.dom, NULL, 0));
	req.alignment = 3 * PAGE;
	CHECK_ERR(kh_map(s.ctx, s.dom, &req), -EINVAL, "power of two");
	kh_ctx_destroy(s.ctx);
}

/* Without an alignment asked for, the IOVA keeps the memory's own alignment only up to the
 * largest leaf, for an address as for a file offset (0 at the start of a file, aligned to
 * anything): a map of 2 GiB and a page fits a 32-bit window by either. */
TEST(default_alignment_capped)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_iova_range allow = {PAGE, 0xffffffffull};
	struct kh_map_req req = {.length = (2ull << 30) + PAGE, .prot = KH_PROT_READ};
	struct kh_backend *be;
	struct kh_ctx *ctx;
	uint32_t dev, dom;

	CHECK_OK(kh_backend_open_emulated_text("[iommu]\ndevices = narrow\n"
					       "[device narrow]\naperture-bits = 32\n",
					       &be));
	CHECK_OK(kh_ctx_create(be, &ctx));
	CHECK_OK(kh_device_bind(ctx, "narrow", &dev));
	CHECK_OK(kh_domain_alloc(ctx, dev, &paging, &dom));
	CHECK_OK(kh_allow_iovas(ctx, dom, &allow, 1));
	req.addr = 1ull << 30;
	CHECK_OK(kh_place(ctx, dom, &req));
	CHECK_EQ(req.iova, 1ull << 30);
	req.addr = 0;
	req.flags = KH_MAP_FILE;
	CHECK_OK(kh_place(ctx, dom, &req));
	CHECK_EQ(req.iova, 1ull << 30);
	kh_ctx_destroy(ctx);
	kh_backend_close(be);
}

static bool ranges_contain(const struct kh_iova_range *r, int n, uint64_t iova)
{
	for (int i = 0; i < n; i++)
		if (r[i].start <= iova && iova <= r[i].last)
			return true;
	return false;
}

TEST_F(conformance, attach_narrows)
{
	struct setup s;
	struct kh_iova_range r[16];
	struct snapshot before;
	uint32_t other;
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	int n;

	setup(self, &s);
	n = kh_iova_ranges(s.ctx, s.dom, r, 16);
	CHECK(n >= 1);
	CHECK(ranges_contain(r, n, MSI_START));

	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	n = kh_iova_ranges(s.ctx, s.dom, r, 16);
	CHECK(n >= 2 && n <= 16);
	CHECK(!ranges_contain(r, n, MSI_START));
	CHECK(!ranges_contain(r, n, MSI_LAST));
	CHECK(ranges_contain(r, n, MSI_START - 1));
	CHECK(ranges_contain(r, n, MSI_LAST + 1));
	for (int i = 1; i < n; i++)
		CHECK(r[i].start > r[i - 1].last);
	CHECK_ERR(try_map(&s, MSI_START - PAGE, 2 * PAGE, mem(self, 0), KH_PROT_READ), -EINVAL,
		  "reserved");

	/* A mapping where an attaching device reserves IOVA blocks the attach. */
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &paging, &other));
	map_fixed(&s, other, MSI_START, PAGE, 0, KH_PROT_READ);
	snap(&s, other, &before);
	CHECK_ERR(kh_attach(s.ctx, s.dev[1], other), -EADDRINUSE, "unmap it before attaching");
	check_unchanged(&s, other, &before);
	uint32_t attached_to = 1;
	CHECK_OK(kh_device_domain(s.ctx, s.dev[1], &attached_to));
	CHECK_EQ(attached_to, 0);
	CHECK_OK(kh_unmap(s.ctx, other, MSI_START, PAGE, NULL));
	CHECK_OK(kh_attach(s.ctx, s.dev[1], other));

	/* Detaching gives the range back. */
	CHECK_OK(kh_detach(s.ctx, s.dev[0]));
	n = kh_iova_ranges(s.ctx, s.dom, r, 16);
	CHECK(ranges_contain(r, n, MSI_START));
	CHECK_ERR(kh_detach(s.ctx, s.dev[0]), -EINVAL, "not attached");
	kh_ctx_destroy(s.ctx);
}

/* Replaces dev's domain; false where the backend has no replace (vfio-type1), which must refuse
 * as the core says, or where the kernel's IOMMU driver cannot size a domain during a replace
 * (virtio-iommu before Linux 6.13), which the backend reports as -EADDRINUSE with a message
 * saying so. Everything else must succeed. */
static bool replace_or_known_limit(const struct fixture_conformance *w, struct kh_ctx *ctx,
				   uint32_t dev, uint32_t dom)
{
	int rc = kh_replace(ctx, dev, dom);

	if (!(kh_backend_caps(w->be) & KH_CAP_REPLACE)) {
		CHECK_ERR(rc, -EOPNOTSUPP, "does not support replacing");
		return false;
	}
	if (rc == -EADDRINUSE && kh_backend_kind(w->be) == KH_BACKEND_IOMMUFD &&
	    strstr(kh_last_error(), "sizes domains only at attach")) {
		(void)printf("SKIP replace into a fresh domain: %s\n", kh_last_error());
		return false;
	}
	CHECK_OK(rc);
	return true;
}

/* Moves dev to dom: by a replace where there is one, else by detaching and attaching. */
static void move_device(const struct fixture_conformance *w, struct kh_ctx *ctx, uint32_t dev,
			uint32_t dom)
{
	if (!replace_or_known_limit(w, ctx, dev, dom)) {
		CHECK_OK(kh_detach(ctx, dev));
		CHECK_OK(kh_attach(ctx, dev, dom));
	}
}

TEST_F(conformance, attach_rules)
{
	struct setup s;
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t second, id;

	setup(self, &s);
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &paging, &second));
	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	CHECK_ERR(kh_attach(s.ctx, s.dev[0], second), -EBUSY, "replace instead");
	CHECK_ERR(kh_domain_free(s.ctx, s.dom), -EBUSY, "detach");
	CHECK_ERR(kh_replace(s.ctx, s.dev[1], second), -EINVAL, "attach it instead");
	CHECK_ERR(kh_attach(s.ctx, 12345, s.dom), -ENOENT, "no device 12345");
	CHECK_ERR(kh_attach(s.ctx, s.dev[1], 12345), -ENOENT, "no domain 12345");

	/* Replace moves the device, and its mappings are those of the new domain. */
	map_fixed(&s, second, 0x200000, PAGE, 0, KH_PROT_READ);
	CHECK_OK(kh_replace(s.ctx, s.dev[0], s.dom));
	move_device(self, s.ctx, s.dev[0], second);
	CHECK_OK(kh_device_domain(s.ctx, s.dev[0], &id));
	CHECK_EQ(id, second);
	/* A domain allocated for one device serves another (here the third, a NIC in the VM). */
	CHECK_OK(kh_attach(s.ctx, s.dev[2], second));
	move_device(self, s.ctx, s.dev[2], s.dom);
	CHECK_OK(kh_device_domain(s.ctx, s.dev[2], &id));
	CHECK_EQ(id, s.dom);
	CHECK_OK(kh_detach(s.ctx, s.dev[2]));

	CHECK_OK(kh_domain_free(s.ctx, s.dom));
	CHECK_ERR(kh_domain_free(s.ctx, s.dom), -ENOENT, "no domain");

	/* Unbinding detaches, so the domain is free to go. */
	CHECK_OK(kh_device_unbind(s.ctx, s.dev[0]));
	CHECK_ERR(kh_device_unbind(s.ctx, s.dev[0]), -ENOENT, "no device");
	CHECK_OK(kh_domain_free(s.ctx, second));
	kh_ctx_destroy(s.ctx);
}

TEST_F(conformance, groups)
{
	struct kh_ctx *ctx, *other;
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t a, b, d1, d2, id, unused;

	if (!self->pair[0][0])
		SKIP("groups: no two devices share an IOMMU group here");
	CHECK_OK(kh_ctx_create(self->be, &ctx));
	CHECK_OK(kh_ctx_create(self->be, &other));
	CHECK_OK(kh_device_bind(ctx, self->pair[0], &a));
	CHECK_ERR(kh_device_bind(other, self->pair[1], &unused), -EBUSY, "shares IOMMU group");
	CHECK_OK(kh_device_bind(ctx, self->pair[1], &b));
	CHECK_OK(kh_domain_alloc(ctx, a, &paging, &d1));
	CHECK_OK(kh_domain_alloc(ctx, a, &paging, &d2));
	CHECK_OK(kh_attach(ctx, a, d1));
	CHECK_ERR(kh_attach(ctx, b, d2), -EINVAL, "share one domain");
	CHECK_OK(kh_attach(ctx, b, d1));
	/* The group moves as one; without replace it leaves and comes back device by device. */
	if (!replace_or_known_limit(self, ctx, a, d2)) {
		CHECK_OK(kh_detach(ctx, a));
		CHECK_ERR(kh_attach(ctx, a, d2), -EINVAL, "share one domain");
		CHECK_OK(kh_detach(ctx, b));
		CHECK_OK(kh_attach(ctx, a, d2));
		CHECK_OK(kh_attach(ctx, b, d2));
	}
	CHECK_OK(kh_device_domain(ctx, b, &id));
	CHECK_EQ(id, d2);
	CHECK_OK(kh_domain_free(ctx, d1));
	CHECK_OK(kh_detach(ctx, a));
	CHECK_ERR(kh_domain_free(ctx, d2), -EBUSY, "in use");
	CHECK_OK(kh_detach(ctx, b));
	CHECK_OK(kh_domain_free(ctx, d2));
	kh_ctx_destroy(ctx);
	kh_ctx_destroy(other);
}

TEST_F(conformance, contexts_isolated)
{
	struct setup s;
	struct kh_ctx *other;
	struct kh_map_req req = {.length = PAGE, .addr = mem(self, 0), .prot = KH_PROT_READ};
	uint32_t dev;

	setup(self, &s);
	CHECK_OK(kh_ctx_create(self->be, &other));
	CHECK_ERR(kh_device_bind(other, self->names[0], &dev), -EBUSY, "another context");
	CHECK_ERR(kh_device_bind(s.ctx, self->names[0], &dev), -EBUSY, "this context");
	/* Ids of one context name nothing in another. */
	CHECK_ERR(kh_map(other, s.dom, &req), -ENOENT, "no domain");
	CHECK_ERR(kh_attach(other, s.dev[0], s.dom), -ENOENT, "no device");
	CHECK_ERR(kh_device_bind(other, "no-such-device", &dev), -ENOENT, "no device is called");
	kh_ctx_destroy(s.ctx);
	/* Destroying a context releases its devices. */
	CHECK_OK(kh_device_bind(other, self->names[0], &dev));
	kh_ctx_destroy(other);
}

TEST_F(conformance, mappings_paging)
{
	struct setup s;
	struct kh_mapping page[7];
	uint64_t from = 0, expect = 0x100000;
	int total = 0, n;

	setup(self, &s);
	for (int i = 0; i < 50; i++)
		map_fixed(&s, s.dom, 0x100000 + (uint64_t)i * 2 * PAGE, PAGE, (uint64_t)i * PAGE,
			  KH_PROT_READ);
	while ((n = kh_mappings(s.ctx, s.dom, from, page, 7)) > 0) {
		for (int i = 0; i < n; i++) {
			CHECK_EQ(page[i].iova, expect);
			CHECK_EQ(page[i].addr, mem(self, (uint64_t)total * PAGE));
			expect += 2 * PAGE;
			total++;
		}
		from = page[n - 1].iova + page[n - 1].length;
	}
	CHECK_EQ(n, 0);
	CHECK_EQ(total, 50);
	kh_ctx_destroy(s.ctx);
}

/* The bytes the process has allocated (one thread: glibc's main arena), less the domain's page
 * tables: AddressSanitizer's count where its allocator takes glibc's place. */
static int64_t heap_less_tables(struct setup *s)
{
	uint64_t tables = 0;

	CHECK_OK(kh_domain_table_bytes(s->ctx, s->dom, &tables));
#if KH_ASAN
	return (int64_t)__sanitizer_get_current_allocated_bytes() - (int64_t)tables;
#else
	return (int64_t)mallinfo2().uordblks - (int64_t)tables;
#endif
}

/* kernel-helper keeps its mapping records in blocks of many: once the mappings are gone, so is
 * the memory of their records, whatever order they left in (here every other one first, which
 * empties no block until the rest go). */
TEST_F(conformance, records_given_back)
{
	const uint64_t base = 0x100000, pages = 1280, record_bytes = 72;
	int64_t before, mapped, after;
	struct setup s;
	uint64_t unmapped;

	setup(self, &s);
	/* The first mapping's page tables and first block stay for the next. */
	map_fixed(&s, s.dom, base, PAGE, 0, KH_PROT_READ);
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, PAGE, NULL));
	before = heap_less_tables(&s);
	for (uint64_t i = 0; i < pages; i++)
		map_fixed(&s, s.dom, base + i * PAGE, PAGE, i * PAGE, KH_PROT_READ);
	mapped = heap_less_tables(&s);
	/* The count sees most of the records: the emulated tables' pages are taken off at 4 KiB
	 * each, while glibc's blocks for them take more, and records' blocks fill the gaps. */
	CHECK(mapped - before >= (int64_t)(pages * record_bytes / 2));
	for (uint64_t i = 1; i < pages; i += 2)
		CHECK_OK(kh_unmap(s.ctx, s.dom, base + i * PAGE, PAGE, NULL));
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, pages * PAGE, &unmapped));
	CHECK_EQ(unmapped, pages / 2 * PAGE);
	after = heap_less_tables(&s);
	/* What may stay: one empty block, kept for the next mapping. */
	if (after - before > 16384) {
		(void)fprintf(stderr, "%lld bytes stay allocated after %llu mappings left\n",
			      (long long)(after - before), (unsigned long long)pages);
		CHECK(after - before <= 16384);
	}
	kh_ctx_destroy(s.ctx);
}

/* What the context's owner release was told, call by call. */
struct releases {
	struct {
		void *owner;
		uint64_t count, bytes;
	} call[8];
	int n;
};

static void record_release(void *owner, uint64_t count, uint64_t bytes, void *arg)
{
	struct releases *r = arg;

	CHECK(r->n < 8);
	r->call[r->n].owner = owner;
	r->call[r->n].count = count;
	r->call[r->n].bytes = bytes;
	r->n++;
}

static void map_owned(struct setup *s, uint64_t iova, uint64_t len, uint64_t offset, void *owner)
{
	struct kh_map_req req = {.iova = iova,
				 .length = len,
				 .addr = mem(s->w, offset),
				 .prot = KH_PROT_READ,
				 .flags = KH_MAP_FIXED_IOVA,
				 .owner = owner};

	CHECK_OK(kh_map(s->ctx, s->dom, &req));
}

static void check_release(const struct releases *r, int i, void *owner, uint64_t count,
			  uint64_t bytes)
{
	CHECK(i < r->n);
	CHECK(r->call[i].owner == owner);
	CHECK_EQ(r->call[i].count, count);
	CHECK_EQ(r->call[i].bytes, bytes);
}

/* Mappings that leave in one call are released once per run of one owner, in IOVA order, with
 * their count and bytes: a mapping without an owner is not reported and does not end a run. */
TEST_F(conformance, owner_release_runs)
{
	struct releases got = {0};
	uint64_t base = 0x10000000, unmapped;
	struct setup s;
	int a, b;

	setup(self, &s);
	kh_ctx_set_owner_release(s.ctx, record_release, &got);
	map_owned(&s, base, PAGE, 0, &a);
	map_owned(&s, base + PAGE, 2 * PAGE, PAGE, &a);
	map_owned(&s, base + 4 * PAGE, PAGE, 3 * PAGE, &b);
	map_owned(&s, base + 5 * PAGE, PAGE, 4 * PAGE, &a);
	map_owned(&s, base + 6 * PAGE, PAGE, 5 * PAGE, NULL);
	map_owned(&s, base + 7 * PAGE, 2 * PAGE, 6 * PAGE, &a);
	map_owned(&s, base + 16 * PAGE, PAGE, 8 * PAGE, &b);
	CHECK_OK(kh_unmap(s.ctx, s.dom, base, 9 * PAGE, &unmapped));
	CHECK_EQ(unmapped, 8 * PAGE);
	CHECK_EQ(got.n, 3);
	check_release(&got, 0, &a, 2, 3 * PAGE);
	check_release(&got, 1, &b, 1, PAGE);
	check_release(&got, 2, &a, 2, 3 * PAGE);

	/* The context going releases what is left the same way. */
	got.n = 0;
	map_owned(&s, base + 17 * PAGE, PAGE, 9 * PAGE, &b);
	kh_ctx_destroy(s.ctx);
	CHECK_EQ(got.n, 1);
	check_release(&got, 0, &b, 2, 2 * PAGE);
}

TEST_F(conformance, dirty_needs_flag)
{
	struct setup s;
	struct kh_device_info info;
	struct kh_domain_alloc_args dirty = {.type = KH_DOMAIN_PAGING,
					     .flags = KH_DOMAIN_F_DIRTY_TRACKING};
	uint64_t bitmap[1];
	uint32_t tracked;

	setup(self, &s);
	CHECK_ERR(kh_set_dirty_tracking(s.ctx, s.dom, true), -EOPNOTSUPP, "dirty tracking");
	CHECK_OK(kh_device_info(self->be, (size_t)kh_device_lookup(self->be, self->names[0]),
				&info));
	if (!info.hw.dirty_tracking) {
		CHECK_ERR(kh_domain_alloc(s.ctx, s.dev[0], &dirty, &tracked), -EOPNOTSUPP, "dirty");
	} else {
		CHECK_OK(kh_domain_alloc(s.ctx, s.dev[0], &dirty, &tracked));
		CHECK_OK(kh_set_dirty_tracking(s.ctx, tracked, true));
		CHECK_ERR(kh_read_dirty(s.ctx, tracked, 0x1000, 0x1000, 3 * PAGE, bitmap, 0),
			  -EINVAL, "power of two");
		CHECK_ERR(kh_read_dirty(s.ctx, tracked, 0x800, 0x1000, PAGE, bitmap, 0), -EINVAL,
			  "multiples");
	}
	kh_ctx_destroy(s.ctx);
}

TEST_F(conformance, copy)
{
	struct setup s;
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_map_req req = {.length = 2 * PAGE, .prot = KH_PROT_READ};
	struct kh_mapping m[4];
	uint32_t dst;

	setup(self, &s);
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &paging, &dst));
	map_fixed(&s, s.dom, 0x100000, 4 * PAGE, 8 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	map_fixed(&s, s.dom, 0x104000, PAGE, 0, KH_PROT_READ);

	/* Part of one mapping, to a fixed IOVA: the destination maps the same memory. */
	req.iova = 0x200000;
	req.flags = KH_MAP_FIXED_IOVA;
	CHECK_OK(kh_copy(s.ctx, dst, &req, s.dom, 0x101000));
	CHECK_EQ(req.addr, mem(self, 9 * PAGE));
	CHECK_EQ(kh_mappings(s.ctx, dst, 0, m, 4), 1);
	CHECK_EQ(m[0].iova, 0x200000);
	CHECK_EQ(m[0].addr, mem(self, 9 * PAGE));
	CHECK_EQ(m[0].length, 2 * PAGE);
	CHECK_EQ(m[0].flags, 0);

	/* The source is left as it was, and the copy outlives the source's unmap. */
	CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, m, 4), 2);
	CHECK_OK(kh_unmap(s.ctx, s.dom, 0x100000, 4 * PAGE, NULL));
	CHECK_EQ(kh_mappings(s.ctx, dst, 0, m, 4), 1);

	req.iova = 0x200000;
	CHECK_ERR(kh_copy(s.ctx, dst, &req, s.dom, 0x100000), -ENOENT, "nothing is mapped");
	map_fixed(&s, s.dom, 0x100000, 4 * PAGE, 8 * PAGE, KH_PROT_READ | KH_PROT_WRITE);
	req.length = 2 * PAGE;
	CHECK_ERR(kh_copy(s.ctx, dst, &req, s.dom, 0x103000), -EINVAL, "inside one mapping");
	CHECK_ERR(kh_copy(s.ctx, dst, &req, s.dom, 0x100000), -EEXIST, "overlaps");
	req.flags = 0;
	CHECK_OK(kh_copy(s.ctx, dst, &req, s.dom, 0x100000));
	CHECK(req.iova != 0x200000);
	CHECK_ERR(kh_copy(s.ctx, dst, &req, 999, 0x100000), -ENOENT, "no domain 999");
	kh_ctx_destroy(s.ctx);
}

/* Whether this backend must map files: iommufd, where the kernel has it. */
static bool expect_map_file(const struct kh_backend *be)
{
	return kh_backend_kind(be) == KH_BACKEND_IOMMUFD && kernel_maps_files();
}

/* A read-write map of [offset, offset+length) of the file fd at iova. */
static struct kh_map_req file_map_req(uint64_t iova, uint64_t offset, uint64_t length, int fd)
{
	return (struct kh_map_req){.iova = iova,
				   .length = length,
				   .addr = offset,
				   .prot = KH_PROT_READ | KH_PROT_WRITE,
				   .flags = KH_MAP_FIXED_IOVA | KH_MAP_FILE,
				   .fd = fd};
}

/* A file mapping made in parts (the daemon's large maps) is one mapping, whose parts the kernel
 * takes back one by one from its end; the mapping at 0x300000 of 2 pages at offset PAGE is
 * there before and after. */
static void map_file_in_parts(struct setup *s, int fd)
{
	struct kh_map_req part = file_map_req(0x302000, 3 * PAGE, PAGE, fd);
	struct kh_mapping m[2];
	uint64_t cut = 0;

	part.flags |= KH_MAP_EXTEND;

	CHECK_OK(kh_map(s->ctx, s->dom, &part));
	CHECK_EQ(kh_mappings(s->ctx, s->dom, 0, m, 2), 1);
	CHECK_EQ(m[0].length, 3 * PAGE);
	/* The next offset past the file's end is refused like a plain map's. */
	part.iova = 0x303000;
	part.addr = 4 * PAGE;
	CHECK_ERR(kh_map(s->ctx, s->dom, &part), -EINVAL, "runs past the end of the file");
	CHECK_OK(kh_unmap_tail(s->ctx, s->dom, 0x302000, PAGE, &cut));
	CHECK_EQ(cut, 0x302000);
	CHECK_EQ(kh_mappings(s->ctx, s->dom, 0, m, 2), 1);
	CHECK_EQ(m[0].length, 2 * PAGE);
}

TEST_F(conformance, map_file)
{
	struct setup s;
	struct kh_mapping m[2];
	int fd = memfd_create("conformance", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	struct kh_map_req req = file_map_req(0x300000, PAGE, 2 * PAGE, fd);
	int rc;

	CHECK(fd >= 0);
	CHECK_EQ(ftruncate(fd, 4 * PAGE), 0);
	setup(self, &s);
	rc = kh_map(s.ctx, s.dom, &req);
	if (!expect_map_file(self->be)) {
		CHECK_ERR(rc, -EOPNOTSUPP, "mapping files");
		(void)printf("map_file: not offered here, refused as it must be\n");
	} else {
		CHECK_OK(rc);
		CHECK_EQ(kh_mappings(s.ctx, s.dom, 0, m, 2), 1);
		CHECK_EQ(m[0].flags, KH_MAP_FILE);
		CHECK_EQ(m[0].addr, PAGE);
		/* Beyond the end of the file there is nothing to pin. */
		req.iova = 0x400000;
		req.addr = 3 * PAGE;
		CHECK_ERR(kh_map(s.ctx, s.dom, &req), -EINVAL, "past the end of the file");
		req.fd = -1;
		CHECK_ERR(kh_map(s.ctx, s.dom, &req), -EBADF, "fd -1");
		map_file_in_parts(&s, fd);
		CHECK_OK(kh_unmap(s.ctx, s.dom, 0x300000, 2 * PAGE, NULL));
	}
	kh_ctx_destroy(s.ctx);
	(void)close(fd);
}

/* Whether rc is what a capability promises: success with it; without it the core's refusal. */
static void check_promise(bool promised, int rc, const char *what)
{
	(void)printf("%s: %s, %s\n", what, promised ? "offered" : "not offered",
		     rc == 0 ? "done" : kh_last_error());
	if (promised)
		CHECK_OK(rc);
	else
		CHECK_EQ(rc, -EOPNOTSUPP);
}

/* What the capability query says is what the backend does, and every bit has its own name. */
TEST_F(conformance, capabilities_tell_the_truth)
{
	struct setup s;
	struct kh_domain_alloc_args args = {.type = KH_DOMAIN_BLOCKED};
	struct kh_map_req req = {.length = PAGE, .prot = KH_PROT_READ};
	uint32_t caps = kh_backend_caps(self->be), dom_caps, other;
	int fd, rc;

	for (unsigned i = 0; i < KH_CAP_COUNT; i++)
		for (unsigned j = 0; j < i; j++)
			CHECK(strcmp(kh_cap_name(i), kh_cap_name(j)) != 0);
	/* The emulation runs in the caller and remaps nothing; a kernel backend the opposite. */
	CHECK_EQ(!(caps & KH_CAP_MAP_IN_PROCESS), !!(caps & KH_CAP_DMA_REMAPPING));
	setup(self, &s);
	CHECK_OK(kh_domain_caps(s.ctx, s.dom, &dom_caps));
	CHECK_EQ(dom_caps & KH_CAP_REPLACE, caps & KH_CAP_REPLACE);
	CHECK_EQ(dom_caps & KH_CAP_COPY, caps & KH_CAP_COPY);
	CHECK_EQ(dom_caps & KH_CAP_MAP_FILE, caps & KH_CAP_MAP_FILE);
	CHECK_EQ(dom_caps & KH_CAP_DIRTY_TRACKING, 0); /* allocated without the flag */
	CHECK_ERR(kh_domain_caps(s.ctx, 999, &dom_caps), -ENOENT, "no domain 999");

	rc = kh_domain_alloc(s.ctx, s.dev[0], &args, &other);
	check_promise(caps & KH_CAP_BLOCKED_DOMAIN, rc, "blocked domains");
	if (rc == 0)
		CHECK_OK(kh_domain_free(s.ctx, other));
	args.type = KH_DOMAIN_IDENTITY;
	rc = kh_domain_alloc(s.ctx, s.dev[0], &args, &other);
	check_promise(caps & KH_CAP_IDENTITY_DOMAIN, rc, "identity domains");
	if (rc == 0)
		CHECK_OK(kh_domain_free(s.ctx, other));

	map_fixed(&s, s.dom, 0x100000, PAGE, 0, KH_PROT_READ);
	args = (struct kh_domain_alloc_args){.type = KH_DOMAIN_PAGING};
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &args, &other));
	check_promise(caps & KH_CAP_COPY, kh_copy(s.ctx, other, &req, s.dom, 0x100000), "copy");

	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	fd = kh_device_open_fd(s.ctx, s.dev[0]);
	check_promise(caps & KH_CAP_OPEN_DEVICE, fd < 0 ? fd : 0, "device fds");
	if (fd >= 0)
		(void)close(fd);
	if (caps & KH_CAP_REPLACE)
		(void)replace_or_known_limit(self, s.ctx, s.dev[0], other);
	else
		check_promise(false, kh_replace(s.ctx, s.dev[0], other), "replace");
	kh_ctx_destroy(s.ctx);
}

/* A copy of the kernel descriptor fd kept elsewhere, fd itself pointed at null; -1 for none
 * (fd < 0: the object has no descriptor of its own). */
static int keep_descriptor(int fd, int null)
{
	int kept;

	if (fd < 0)
		return -1;
	CHECK((kept = fcntl(fd, F_DUPFD_CLOEXEC, 0)) >= 0);
	CHECK(dup3(null, fd, O_CLOEXEC) == fd);
	return kept;
}

/* What a process's death leaves of a context: its kernel objects, held by the copies of its
 * descriptors kept elsewhere (dups here, the descriptor store in iommud), and nothing of its
 * books. The context's own descriptors (the context's, where it has one, the devices' and the
 * domains' in doms, where they have their own) are pointed at /dev/null first, so that
 * destroying its books reaches no kernel object. pick_devices took the three devices from three
 * IOMMU groups, so no two share a descriptor (a vfio-type1 group's file) that this would point
 * at /dev/null before its second copy. */
static void die_keeping(struct setup *s, int *ret_ctx_fd, struct kh_adopt_device *devs,
			struct kh_adopt_domain *doms, size_t n_doms)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), fd = kh_ctx_kernel_fd(s->ctx);

	CHECK(null >= 0 && (fd >= 0 || fd == -EOPNOTSUPP));
	*ret_ctx_fd = keep_descriptor(fd, null);
	for (int i = 0; i < 3; i++) {
		fd = kh_device_kernel_fd(s->ctx, s->dev[i]);
		CHECK(fd >= 0);
		devs[i].fd = keep_descriptor(fd, null);
	}
	for (size_t i = 0; i < n_doms; i++) {
		fd = kh_domain_kernel_fd(s->ctx, doms[i].id);
		CHECK(fd >= 0 || fd == -ENOENT);
		doms[i].fd = keep_descriptor(fd, null);
	}
	(void)close(null);
	kh_ctx_destroy(s->ctx);
}

/* A take-over that the kernel refuses: a domain's kernel ids (where it lives in the context's
 * descriptor) or its own descriptor (where it has one) not what the dead context had. */
static void check_stale_domain(struct setup *s, int ctx_fd, struct kh_adopt_device *devs,
			       struct kh_adopt_domain *doms)
{
	int own = doms[0].fd;

	if (own < 0) {
		doms[0].kernel_ids[0] += 1000;
		CHECK_ERR(kh_ctx_adopt(s->ctx, ctx_fd, devs, 3, doms, 1), -ESTALE,
			  "no address space");
		doms[0].kernel_ids[0] -= 1000;
	} else {
		doms[0].fd = devs[0].fd;
		CHECK_ERR(kh_ctx_adopt(s->ctx, ctx_fd, devs, 3, doms, 1), -ESTALE, "is not");
		doms[0].fd = own;
	}
	CHECK(!kh_ctx_adopting(s->ctx));
}

/* Where the domain maps files by descriptor: a file mapping of fd at 0x500000 (map: made
 * through kh_map, as the books of the process taking over are filled; else what it was made
 * with). */
static bool file_mapping(struct setup *s, int fd, bool map)
{
	struct kh_map_req req = file_map_req(0x500000, PAGE, 2 * PAGE, fd);
	uint32_t caps;

	CHECK_OK(kh_domain_caps(s->ctx, s->dom, &caps));
	if (!(caps & KH_CAP_MAP_FILE))
		return false;
	if (map)
		CHECK_OK(kh_map(s->ctx, s->dom, &req));
	return true;
}

/* The kernel ids of the devices and of the domains in doms, as a process records them for whoever
 * takes its context over. */
static void note_kernel_ids(const struct fixture_conformance *self, struct setup *s,
			    struct kh_adopt_device *devs, struct kh_adopt_domain *doms,
			    size_t n_doms)
{
	for (int i = 0; i < 3; i++) {
		devs[i].name = self->names[i];
		CHECK_OK(kh_kernel_ids(s->ctx, s->dev[i], devs[i].kernel_ids));
	}
	for (size_t i = 0; i < n_doms; i++)
		CHECK_OK(kh_kernel_ids(s->ctx, doms[i].id, doms[i].kernel_ids));
}

/* The new context given what the dead one left, its devices bound again under the same ids. */
static void adopt_and_bind(const struct fixture_conformance *self, struct setup *s, int ctx_fd,
			   struct kh_adopt_device *devs, const struct kh_adopt_domain *doms,
			   size_t n_doms)
{
	uint32_t id;

	CHECK_OK(kh_ctx_adopt(s->ctx, ctx_fd, devs, 3, doms, n_doms));
	CHECK(kh_ctx_adopting(s->ctx));
	for (int i = 0; i < 3; i++) {
		CHECK_OK(kh_device_bind(s->ctx, self->names[i], &id));
		CHECK_EQ(id, s->dev[i]);
	}
}

/* The context dies keeping its objects, and a new one takes them over: its devices bound again
 * and its two domains (doms) allocated again under the same ids, the second for the device at
 * index second. */
static void take_over_two(const struct fixture_conformance *self, struct setup *s,
			  struct kh_adopt_device *devs, struct kh_adopt_domain *doms, int second)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	uint32_t id;
	int ctx_fd;

	die_keeping(s, &ctx_fd, devs, doms, 2);
	CHECK_OK(kh_ctx_create(self->be, &s->ctx));
	adopt_and_bind(self, s, ctx_fd, devs, doms, 2);
	CHECK_OK(kh_domain_alloc(s->ctx, s->dev[0], &paging, &id));
	CHECK_EQ(id, doms[0].id);
	CHECK_OK(kh_domain_alloc(s->ctx, s->dev[second], &paging, &id));
	CHECK_EQ(id, doms[1].id);
}

/* The context the take-over starts from, with its kernel ids noted in devs and doms[0], and
 * then changed where the books of the new process will not hold as the kernel does: one mapping
 * made and never recorded, one taken away and its removal never recorded, and a file mapping
 * lost (where the domain maps files: the return). */
static size_t before_death(const struct fixture_conformance *self, struct setup *s, int memfd,
			   struct kh_adopt_device *devs, struct kh_adopt_domain *doms,
			   uint32_t *ret_ghost)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	size_t files;

	setup(self, s);
	CHECK_OK(kh_attach(s->ctx, s->dev[0], s->dom));
	map_fixed(s, s->dom, 0x100000, PAGE, 0, KH_PROT_READ);
	map_fixed(s, s->dom, 0x200000, 2 * PAGE, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	CHECK_OK(kh_domain_alloc(s->ctx, s->dev[1], &paging, ret_ghost));
	CHECK_OK(kh_domain_free(s->ctx, *ret_ghost));
	doms[0].id = s->dom;
	note_kernel_ids(self, s, devs, doms, 1);
	map_fixed(s, s->dom, 0x400000, PAGE, 4 * PAGE, KH_PROT_READ);
	CHECK_OK(kh_unmap(s->ctx, s->dom, 0x200000, 2 * PAGE, NULL));
	files = file_mapping(s, memfd, true);
	if (files)
		CHECK_OK(kh_unmap(s->ctx, s->dom, 0x500000, 2 * PAGE, NULL));
	return files;
}

/* A context taken over by a "new process": kernel-helper's books rebuilt by the same calls,
 * issuing nothing, then made to match the kernel: a mapping the books hold and the kernel lost
 * is made again (from its file, where the domain maps by descriptor), one the kernel holds and
 * the books do not is taken out, and checks against the kernel refuse ids it does not hold. */
TEST_F(conformance, take_over)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_adopt_device devs[3];
	struct kh_adopt_domain doms[1];
	uint32_t id, ghost;
	struct setup s;
	size_t remade, files;
	int ctx_fd, memfd = memfd_create("take_over", MFD_CLOEXEC);

	CHECK(memfd >= 0 && ftruncate(memfd, 4 * PAGE) == 0);
	if (!(kh_backend_caps(self->be) & KH_CAP_ADOPT)) {
		CHECK_OK(kh_ctx_create(self->be, &s.ctx));
		CHECK_ERR(kh_ctx_adopt(s.ctx, -1, NULL, 0, NULL, 0), -EOPNOTSUPP,
			  "cannot be taken over");
		kh_ctx_destroy(s.ctx);
		(void)close(memfd);
		return;
	}
	files = before_death(self, &s, memfd, devs, doms, &ghost);
	die_keeping(&s, &ctx_fd, devs, doms, 1);

	CHECK_OK(kh_ctx_create(self->be, &s.ctx));
	check_stale_domain(&s, ctx_fd, devs, doms);
	adopt_and_bind(self, &s, ctx_fd, devs, doms, 1);
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[0], &paging, &id));
	CHECK_EQ(id, s.dom);
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &paging, &id));
	CHECK_EQ(id, ghost);
	CHECK_OK(kh_domain_free(s.ctx, ghost));
	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	map_fixed(&s, s.dom, 0x100000, PAGE, 0, KH_PROT_READ);
	map_fixed(&s, s.dom, 0x200000, 2 * PAGE, PAGE, KH_PROT_READ | KH_PROT_WRITE);
	(void)file_mapping(&s, memfd, files);
	CHECK_OK(kh_ctx_adopt_end(s.ctx, &remade));
	CHECK(!kh_ctx_adopting(s.ctx));
	CHECK_EQ(remade, 1 + files);
	(void)printf("take_over: %zu mapping(s) made again, %zu of them by file\n", remade, files);
	if (files)
		CHECK_OK(kh_unmap(s.ctx, s.dom, 0x500000, 2 * PAGE, NULL));
	/* The kernel now holds what the books do: 0x400000 is free (it would refuse the map
	 * otherwise), 0x200000 mapped again (it would refuse the unmap of nothing). */
	map_fixed(&s, s.dom, 0x400000, PAGE, 4 * PAGE, KH_PROT_READ);
	CHECK_OK(kh_unmap(s.ctx, s.dom, 0x200000, 2 * PAGE, NULL));
	kh_ctx_destroy(s.ctx);
	(void)close(memfd);
}

/* A copy of a file mapping has no descriptor of its own: one the kernel lost is not made again
 * at the end of a take-over (from whatever the request's fd held: 0 in a zeroed request) but
 * refused as lost. */
TEST_F(conformance, take_over_lost_copy_of_file)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_map_req copy = {.iova = 0x600000,
				  .length = 2 * PAGE,
				  .prot = KH_PROT_READ,
				  .flags = KH_MAP_FIXED_IOVA};
	struct kh_adopt_device devs[3];
	struct kh_adopt_domain doms[2];
	struct setup s;
	size_t remade;
	int memfd = memfd_create("take_over", MFD_CLOEXEC);

	CHECK(memfd >= 0 && ftruncate(memfd, 4 * PAGE) == 0);
	setup(self, &s);
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[1], &paging, &doms[1].id));
	if (!(kh_backend_caps(self->be) & KH_CAP_ADOPT) || !file_mapping(&s, memfd, true) ||
	    kh_copy(s.ctx, doms[1].id, &copy, s.dom, 0x500000) < 0) {
		(void)printf("take_over_lost_copy_of_file: no take-over, file maps or copies\n");
		kh_ctx_destroy(s.ctx);
		(void)close(memfd);
		return;
	}
	doms[0].id = s.dom;
	note_kernel_ids(self, &s, devs, doms, 2);
	CHECK_OK(kh_unmap(s.ctx, doms[1].id, 0x600000, 2 * PAGE, NULL));
	take_over_two(self, &s, devs, doms, 1);
	(void)file_mapping(&s, memfd, true);
	copy.iova = 0x600000;
	CHECK_OK(kh_copy(s.ctx, doms[1].id, &copy, s.dom, 0x500000));
	CHECK_ERR(kh_ctx_adopt_end(s.ctx, &remade), -ESTALE,
		  "cannot be made again without its file");
	kh_ctx_destroy(s.ctx);
	(void)close(memfd);
}

/* A kill between a move's kernel calls and its record: the kernel has the device in the second
 * domain, the books in the first. The take-over puts it where the books say, which takes the
 * second domain's IOMMU away in a backend whose domain is the device group's container; that
 * domain then maps into its books alone, as one that never had a device, and takes the device
 * (and its mappings) when it is attached there. */
TEST_F(conformance, take_over_move_cut_short)
{
	struct kh_domain_alloc_args paging = {.type = KH_DOMAIN_PAGING};
	struct kh_adopt_device devs[3];
	struct kh_adopt_domain doms[2];
	struct setup s;
	size_t remade;

	setup(self, &s);
	if (!(kh_backend_caps(self->be) & KH_CAP_ADOPT)) {
		(void)printf("take_over_move_cut_short: no take-over\n");
		kh_ctx_destroy(s.ctx);
		return;
	}
	CHECK_OK(kh_domain_alloc(s.ctx, s.dev[0], &paging, &doms[1].id));
	doms[0].id = s.dom;
	note_kernel_ids(self, &s, devs, doms, 2);
	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	CHECK_OK(kh_detach(s.ctx, s.dev[0]));
	CHECK_OK(kh_attach(s.ctx, s.dev[0], doms[1].id));
	take_over_two(self, &s, devs, doms, 0);
	CHECK_OK(kh_attach(s.ctx, s.dev[0], s.dom));
	CHECK_OK(kh_ctx_adopt_end(s.ctx, &remade));
	map_fixed(&s, doms[1].id, 0x100000, PAGE, 0, KH_PROT_READ);
	CHECK_OK(kh_detach(s.ctx, s.dev[0]));
	CHECK_OK(kh_attach(s.ctx, s.dev[0], doms[1].id));
	map_fixed(&s, doms[1].id, 0x200000, PAGE, PAGE, KH_PROT_READ);
	kh_ctx_destroy(s.ctx);
}

static void pick_devices(struct fixture_conformance *w)
{
	size_t n = kh_device_count(w->be);
	struct kh_device_info info[64];

	CHECK(n >= 3);
	if (n > 64)
		n = 64;
	for (size_t i = 0; i < n; i++)
		CHECK_OK(kh_device_info(w->be, i, &info[i]));
	/* a, b and c come from three different groups, so binding one never blocks another. */
	for (size_t i = 0, found = 0; i < n && found < 3; i++) {
		bool taken = false;

		for (size_t j = 0; j < found; j++)
			taken |= kh_device_lookup(w->be, w->names[j]) >= 0 &&
				 info[kh_device_lookup(w->be, w->names[j])].group == info[i].group;
		if (!taken)
			memcpy(w->names[found++], info[i].name, KH_NAME_MAX);
	}
	CHECK(w->names[2][0]);
	for (size_t i = 0; i < n && !w->pair[0][0]; i++)
		for (size_t j = i + 1; j < n; j++)
			if (info[i].group == info[j].group) {
				memcpy(w->pair[0], info[i].name, KH_NAME_MAX);
				memcpy(w->pair[1], info[j].name, KH_NAME_MAX);
				break;
			}
	w->aperture_last = info[kh_device_lookup(w->be, w->names[0])].hw.aperture_last;
}

static void open_backend(struct fixture_conformance *w, const char *backend)
{
	const char *chosen;

	if (strcmp(backend, "emulated") == 0) {
		if (topology_file)
			CHECK_OK(kh_backend_open_emulated(topology_file, &w->be));
		else
			CHECK_OK(kh_backend_open_emulated_text(default_topology, &w->be));
		return;
	}
	if (kh_backend_choose(backend, &chosen) < 0)
		SKIP("%s; the VM tier runs this variant (tests/vm/README.md)", kh_last_error());
	CHECK_OK(kh_backend_open(backend, NULL, &w->be));
	if (kh_device_count(w->be) < 3) {
		size_t n = kh_device_count(w->be);

		kh_backend_close(w->be);
		SKIP("the rules need three devices bound to vfio-pci, and here are %zu", n);
	}
}

FIXTURE_SETUP(conformance)
{
	open_backend(self, variant->backend);
	self->raw = mmap(NULL, memory_size + 2 * MiB, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(self->raw != MAP_FAILED);
	self->memory =
		(uint8_t *)(((uintptr_t)self->raw + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	pick_devices(self);
	(void)printf("conformance on the %s backend\n", kh_backend_name(self->be));
}

FIXTURE_TEARDOWN(conformance)
{
	CHECK_EQ(munmap(self->raw, memory_size + 2 * MiB), 0);
	kh_backend_close(self->be);
}
