/* SPDX-License-Identifier: MIT */
/*
 * The vfio-type1 backend: the kernel's IOMMU through VFIO's legacy container and group
 * interface, for kernels built without iommufd (Debian 12's among them). The only file of
 * iommud that issues VFIO container, group and VFIO_IOMMU_* ioctls.
 *
 * It is the simplest driver the split-ops contract allows: one kind of domain, so alloc_paging
 * and default_domain_ops, and NULL where type1 cannot (replace, nesting, blocked and identity
 * domains, mapping files), which the core refuses with its "unsupported" message.
 *
 * Mapping of the contract onto type1:
 *   context        nothing of its own; it keeps the VFIO groups its devices were bound from
 *   bound device   its group's file (/dev/vfio/N), opened once per context for the whole group
 *   paging domain  a container (/dev/vfio/vfio). The kernel gives a container an IOMMU only
 *                  once a group is in it, so until the first group attaches the mappings live
 *                  only in the core's books; the first attach sets the IOMMU and maps them all,
 *                  and the kernel drops them with the IOMMU when the last group leaves
 *   attach/detach  VFIO_GROUP_SET_CONTAINER / VFIO_GROUP_UNSET_CONTAINER: groups are the unit
 *   device fd      VFIO_GROUP_GET_DEVICE_FD, only while the group is attached. While such an fd
 *                  is open the kernel keeps the group in its container, so a detach is refused;
 *                  a domain freed then unmaps everything first, so the device reaches nothing
 *
 * Taking over (KH_CAP_ADOPT): a group stays in its container while the group's file is open,
 * through the group fd or any device fd of it, and a container keeps its IOMMU, mappings and pins
 * while a group is in it, whoever holds which descriptor. So a binding's kernel descriptor is its
 * group's fd, a domain's is its container's, and the context has none of its own; a device's
 * kernel id is its IOMMU group's number, a container has none.
 *
 * Ownership: a context owns its open groups (type1_ctx, in kh_ctx.priv), each shared by the devices
 * bound from it (kh_device.priv points at it); a domain owns its container fd.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define __user
#include <linux/vfio.h>

#include <kh/kh_ops.h>

#include "alloc.h"
#include "ioas.h"
#include "vfio_common.h"

#define DEV_VFIO "/dev/vfio/vfio"

/* A VFIO group open in a context. */
struct type1_group {
	struct type1_group *next;
	uint32_t number;
	int fd;
	unsigned bound;		     /* devices of the context bound from it */
	unsigned attached;	     /* of those, attached to domain */
	struct type1_domain *domain; /* whose container the group is in, or NULL */
};

struct type1_ctx {
	struct type1_group *groups;
};

struct type1_domain {
	struct kh_domain dom;
	int container;
	unsigned groups; /* groups in the container; the IOMMU is set while there are any, and
			  * dirty tracking started on it whenever dom.dirty_tracking says so */
	bool unnamed;	 /* taken over with an IOMMU, counted as one group until one of the
			  * context's groups is found in it (the kernel names none) */
};

static struct type1_domain *to_t1(struct kh_domain *dom)
{
	return (struct type1_domain *)((char *)dom - offsetof(struct type1_domain, dom));
}

static struct type1_group *group_of(const struct kh_device *dev)
{
	return dev->priv;
}

/* /dev/vfio/N of the device's group, under the root tests may set. */
static bool group_path(uint32_t group, char *buf, size_t size)
{
	char rel[32];

	(void)snprintf(rel, sizeof(rel), "/dev/vfio/%u", group);
	return kh_root_path(rel, buf, size);
}

/* ---- what the IOMMU behind a group offers ------------------------------------------------ */

/* Copies size bytes at offset at of capability id in a VFIO_IOMMU_GET_INFO answer to dst;
 * false when it has no such capability or it is shorter. Copied, because the kernel may place a
 * capability at an offset its 64-bit fields are not aligned at (6.1 does). */
static bool copy_cap(const struct vfio_iommu_type1_info *info, uint16_t id, size_t at, void *dst,
		     size_t size)
{
	uint32_t off = (info->flags & VFIO_IOMMU_INFO_CAPS) ? info->cap_offset : 0;
	struct vfio_info_cap_header head;

	while (off && off + sizeof(head) <= info->argsz) {
		memcpy(&head, (const char *)info + off, sizeof(head));
		if (head.id == id) {
			if (off + at + size > info->argsz)
				return false;
			memcpy(dst, (const char *)info + off + at, size);
			return true;
		}
		off = head.next;
	}
	return false;
}

/* VFIO_IOMMU_GET_INFO with its capability chain; the caller frees *out. */
static int container_info(int container, struct vfio_iommu_type1_info **out)
{
	struct vfio_iommu_type1_info probe = {.argsz = sizeof(probe)}, *info;
	int rc = kh_ioctl(container, VFIO_IOMMU_GET_INFO, &probe, "VFIO_IOMMU_GET_INFO");

	if (rc < 0)
		return rc;
	/* The first call says how much room the capabilities need. */
	info = kh_zalloc(probe.argsz);
	if (!info)
		return kh_fail(-ENOMEM, "cannot hold the IOMMU's description");
	info->argsz = probe.argsz;
	rc = kh_ioctl(container, VFIO_IOMMU_GET_INFO, info, "VFIO_IOMMU_GET_INFO");
	if (rc < 0) {
		free(info);
		return rc;
	}
	*out = info;
	return 0;
}

static void read_info(const struct vfio_iommu_type1_info *info, struct kh_hw_info *hw)
{
	const size_t ranges_at = offsetof(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges);
	struct vfio_iommu_type1_info_cap_iova_range ranges;
	struct vfio_iommu_type1_info_dma_avail avail;
	struct vfio_iova_range first, last;

	if (info->flags & VFIO_IOMMU_INFO_PGSIZES)
		hw->page_sizes = info->iova_pgsizes;
	if (copy_cap(info, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 0, &ranges, sizeof(ranges)) &&
	    ranges.nr_iovas &&
	    copy_cap(info, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, ranges_at, &first,
		     sizeof(first)) &&
	    copy_cap(info, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
		     ranges_at + (ranges.nr_iovas - 1) * sizeof(last), &last, sizeof(last))) {
		hw->aperture_start = first.start;
		hw->aperture_last = last.end;
	}
	/* In a fresh container everything is available: that is the limit. */
	if (copy_cap(info, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 0, &avail, sizeof(avail)))
		hw->max_mappings = avail.avail;
	hw->dirty_tracking =
		copy_cap(info, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 0,
			 &(struct vfio_info_cap_header){0}, sizeof(struct vfio_info_cap_header));
}

/* Puts the group in the container and gives the container its IOMMU. */
static int set_container(int group, int container, const char *name)
{
	int rc = kh_ioctl(group, VFIO_GROUP_SET_CONTAINER, &container,
			  "VFIO_GROUP_SET_CONTAINER of %s's group", name);

	if (rc == 0 && ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
		rc = kh_fail(-EOPNOTSUPP,
			     "the kernel's VFIO has no type1v2 IOMMU for %s; it needs "
			     "CONFIG_VFIO_IOMMU_TYPE1 (modprobe vfio_iommu_type1)",
			     name);
	if (rc == 0)
		rc = kh_ioctl(container, VFIO_SET_IOMMU, (void *)(uintptr_t)VFIO_TYPE1v2_IOMMU,
			      "VFIO_SET_IOMMU (type1v2) for %s", name);
	/* type1 refuses an IOMMU that cannot isolate the device's interrupts. */
	if (rc == -EPERM)
		(void)kh_fail(
			rc,
			"VFIO type1 refuses %s: its IOMMU does not remap interrupts (dmesg "
			"says \"No interrupt remapping support\"); enable interrupt remapping "
			"in the firmware and on the kernel command line (intremap=on)",
			name);
	return rc;
}

/* The tag of a device whose group was open elsewhere when the backend probed it (kept in the
 * store for a take-over, most often), so its IOMMU could not be asked then: it is asked when the
 * take-over brings the group's file and the containers (type1_ctx_adopt). */
static char unprobed;

/* What the IOMMU of a container taken over offers, for a device whose group was open elsewhere
 * when the backend probed it: the container's IOMMU is the one its groups share. */
static void probe_container(struct kh_bdev *bdev, int container)
{
	struct vfio_iommu_type1_info *info;

	if (container_info(container, &info) < 0)
		return;
	read_info(info, &bdev->info.hw);
	free(info);
	bdev->priv = NULL;
}

/* What the IOMMU in front of the device offers, asked through a short-lived container with its
 * group (open as group) in it; the group leaves it again. A group in a container already (one
 * taken over) stays there untouched: taking it out could take its container's IOMMU away. */
static void probe_group(struct kh_bdev *bdev, int group)
{
	struct vfio_group_status status = {.argsz = sizeof(status)};
	char path[PATH_MAX];
	int container = -1;

	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0 ||
	    (status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET))
		return;
	if (kh_root_path(DEV_VFIO, path, sizeof(path)))
		container = open(path, O_RDWR | O_CLOEXEC);
	if (container >= 0 && set_container(group, container, bdev->info.name) == 0)
		probe_container(bdev, container);
	if (container >= 0) {
		(void)ioctl(group, VFIO_GROUP_UNSET_CONTAINER);
		(void)close(container);
	}
}

static void type1_probe_hw(struct kh_bdev *bdev)
{
	struct kh_hw_info *hw = &bdev->info.hw;
	char path[PATH_MAX];
	int group = -1;

	/* Until the kernel says otherwise: 4 KiB pages and a 64-bit aperture. */
	hw->page_sizes = 4096;
	hw->aperture_last = UINT64_MAX;
	bdev->priv = &unprobed;
	if (group_path(bdev->info.group, path, sizeof(path)))
		group = open(path, O_RDWR | O_CLOEXEC);
	if (group >= 0) {
		probe_group(bdev, group);
		(void)close(group);
	}
}

/* A device type1 can use has its group's file: VFIO took the whole group. */
static int type1_accept(const char *sysdir, uint32_t group, void **ret_priv)
{
	char path[PATH_MAX];

	(void)sysdir;
	*ret_priv = NULL;
	return group_path(group, path, sizeof(path)) && access(path, F_OK) == 0;
}

static int type1_probe_devices(struct kh_backend *be)
{
	static const struct kh_vfio_scan_ops scan = {
		.accept = type1_accept,
		.probe_hw = type1_probe_hw,
	};

	return kh_vfio_scan(be, &scan);
}

static void type1_release(struct kh_backend *be)
{
	(void)be; /* devices carry no state of the backend's */
}

/* ---- contexts and devices ---------------------------------------------------------------- */

static int type1_ctx_open(struct kh_ctx *ctx)
{
	ctx->priv = kh_zalloc(sizeof(struct type1_ctx));
	return ctx->priv ? 0 : kh_fail(-ENOMEM, "cannot allocate a context");
}

static void type1_ctx_close(struct kh_ctx *ctx)
{
	/* Unbinding every device closed every group. */
	free(ctx->priv);
}

/* Opens the device's group for the context, checked to be usable as a whole. */
static int open_group(const struct kh_bdev *bdev, int *ret_fd)
{
	struct vfio_group_status status = {.argsz = sizeof(status)};
	char path[PATH_MAX];
	int fd, rc;

	if (!group_path(bdev->info.group, path, sizeof(path)))
		return kh_fail(-ENAMETOOLONG, "the path of %s's VFIO group is too long",
			       bdev->info.name);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && errno == EBUSY)
		return kh_fail(-EBUSY,
			       "%s's VFIO group %s is still open, through a VFIO device fd handed "
			       "out for an earlier binding or by another program; it can be bound "
			       "again once that is closed",
			       bdev->info.name, path);
	if (fd < 0)
		return kh_fail(-errno, "cannot open %s's VFIO group %s", bdev->info.name, path);
	rc = kh_ioctl(fd, VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS of %s", path);
	if (rc == 0 && !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		rc = kh_fail(-EPERM,
			     "IOMMU group %u of %s is not viable: bind every device of the group "
			     "to vfio-pci (or leave it without a driver)",
			     bdev->info.group, bdev->info.name);
	if (rc < 0) {
		(void)close(fd);
		return rc;
	}
	*ret_fd = fd;
	return 0;
}

static struct type1_group *find_group(const struct type1_ctx *c, uint32_t number)
{
	struct type1_group *g;

	for (g = c->groups; g && g->number != number; g = g->next)
		;
	return g;
}

/* The device's group, open as fd (the group's on success; the caller's to close otherwise),
 * joins the context. */
static int add_group(struct type1_ctx *c, struct kh_device *dev, int fd)
{
	struct type1_group *g = kh_zalloc(sizeof(*g));

	if (!g)
		return kh_fail(-ENOMEM, "cannot bind %s", dev->bdev->info.name);
	g->fd = fd;
	g->number = dev->bdev->info.group;
	g->next = c->groups;
	c->groups = g;
	g->bound = 1;
	dev->priv = g;
	return 0;
}

static int type1_bind(struct kh_ctx *ctx, struct kh_device *dev)
{
	struct type1_group *g = find_group(ctx->priv, dev->bdev->info.group);
	int fd, rc;

	if (g) {
		g->bound++;
		dev->priv = g;
		return 0;
	}
	rc = open_group(dev->bdev, &fd);
	if (rc == 0 && (rc = add_group(ctx->priv, dev, fd)) < 0)
		(void)close(fd);
	return rc;
}

static void type1_unbind(struct kh_ctx *ctx, struct kh_device *dev)
{
	struct type1_ctx *c = ctx->priv;
	struct type1_group *g = group_of(dev), **link;

	dev->priv = NULL;
	if (--g->bound)
		return;
	for (link = &c->groups; *link != g; link = &(*link)->next)
		;
	*link = g->next;
	/* The kernel releases the group once no device fd of it is open either. */
	(void)close(g->fd);
	free(g);
}

/* A new device fd, which the caller owns. The kernel gives one only to a group in a container
 * with an IOMMU: an attached one. */
static int open_device(struct kh_device *dev)
{
	struct type1_group *g = group_of(dev);
	int fd;

	if (!g->domain)
		return kh_fail(-EINVAL,
			       "vfio-type1 opens %s only while its group is attached to a paging "
			       "domain (a group outside a container has no IOMMU to protect it); "
			       "attach it first",
			       dev->bdev->info.name);
	if (kh_fail_point())
		return kh_fail(-EIO, "VFIO_GROUP_GET_DEVICE_FD of %s failed (injected)",
			       dev->bdev->info.name);
	fd = ioctl(g->fd, VFIO_GROUP_GET_DEVICE_FD, dev->bdev->info.name);
	if (fd < 0)
		return kh_fail(-errno, "VFIO_GROUP_GET_DEVICE_FD of %s", dev->bdev->info.name);
	return fd;
}

static int type1_device_region(struct kh_device *dev, uint32_t index, struct kh_region *out)
{
	int fd = open_device(dev), rc;

	if (fd < 0)
		return fd;
	rc = kh_vfio_region_info(fd, index, out, dev->bdev->info.name);
	(void)close(fd);
	return rc;
}

/* ---- domain ops ----------------------------------------------------------------------------- */

/* The kernel's map call: type1 pins the memory of this process at vaddr. */
static int dma_map(struct type1_domain *d, uint64_t iova, uint64_t vaddr, uint64_t length,
		   uint32_t prot)
{
	struct vfio_iommu_type1_dma_map cmd = {
		.argsz = sizeof(cmd),
		.flags = ((prot & KH_PROT_READ) ? VFIO_DMA_MAP_FLAG_READ : 0) |
			 ((prot & KH_PROT_WRITE) ? VFIO_DMA_MAP_FLAG_WRITE : 0),
		.vaddr = vaddr,
		.iova = iova,
		.size = length,
	};
	int rc = kh_ioctl(d->container, VFIO_IOMMU_MAP_DMA, &cmd,
			  "VFIO_IOMMU_MAP_DMA of 0x%" PRIx64 " bytes at IOVA 0x%" PRIx64
			  " in domain %u",
			  length, iova, d->dom.id);

	if (rc == -ENOSPC)
		(void)kh_fail(rc,
			      "domain %u holds as many mappings as VFIO's type1 allows a container "
			      "(vfio_iommu_type1 dma_entry_limit): unmap some, or raise the module "
			      "parameter",
			      d->dom.id);
	return rc;
}

/* One call for the whole span: type1v2 removes every mapping inside it, holes and all, and
 * answers with the bytes it removed (in *ret_bytes, where not NULL). */
static int dma_unmap(struct type1_domain *d, uint64_t iova, uint64_t length, uint32_t flags,
		     uint64_t *ret_bytes)
{
	struct vfio_iommu_type1_dma_unmap cmd = {
		.argsz = sizeof(cmd), .flags = flags, .iova = iova, .size = length};
	int rc = kh_ioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &cmd,
			  "VFIO_IOMMU_UNMAP_DMA of 0x%" PRIx64 " bytes at IOVA 0x%" PRIx64
			  " in domain %u",
			  length, iova, d->dom.id);

	if (rc == 0 && ret_bytes)
		*ret_bytes = cmd.size;
	return rc;
}

static int dirty_pages(struct type1_domain *d, uint32_t flag)
{
	struct vfio_iommu_type1_dirty_bitmap cmd = {.argsz = sizeof(cmd), .flags = flag};

	return kh_ioctl(d->container, VFIO_IOMMU_DIRTY_PAGES, &cmd,
			"VFIO_IOMMU_DIRTY_PAGES (%s) of domain %u",
			flag == VFIO_IOMMU_DIRTY_PAGES_FLAG_START ? "start" : "stop", d->dom.id);
}

/* The container just got its IOMMU: give it every mapping the core's books hold. */
static int replay_mappings(struct type1_domain *d)
{
	struct kh_mapping m[32];
	uint64_t from = 0;
	int n, rc = 0;

	while (rc == 0 && (n = kh_ioas_mappings(d->dom.ioas, from, m, 32)) > 0) {
		for (int i = 0; i < n && rc == 0; i++)
			rc = dma_map(d, m[i].iova, m[i].addr, m[i].length, m[i].prot);
		from = m[n - 1].iova + m[n - 1].length;
		if (from == 0) /* the last mapping ends at the top of the 64-bit space */
			break;
	}
	if (rc == 0 && d->dom.dirty_tracking)
		rc = dirty_pages(d, VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
	return rc;
}

/* The group leaves the container; with the last one, the kernel drops the IOMMU and its
 * mappings. */
static int group_leave(struct type1_group *g, const char *name)
{
	int rc = kh_ioctl(g->fd, VFIO_GROUP_UNSET_CONTAINER, NULL,
			  "VFIO_GROUP_UNSET_CONTAINER of %s's group", name);

	if (rc == -EBUSY)
		return kh_fail(rc,
			       "IOMMU group %u of %s stays in its domain while a VFIO device fd of "
			       "it is open: close that fd, then detach",
			       g->number, name);
	if (rc < 0)
		return rc;
	g->domain->groups--;
	g->domain = NULL;
	return 0;
}

static int type1_attach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	struct type1_domain *d = to_t1(dom);
	struct type1_group *g = group_of(dev);
	const char *name = dev->bdev->info.name;
	int rc;

	/* The core keeps a group in one domain: a mate attached already brought it in. */
	if (g->domain) {
		g->attached++;
		return 0;
	}
	if (d->groups) {
		rc = kh_ioctl(g->fd, VFIO_GROUP_SET_CONTAINER, &d->container,
			      "VFIO_GROUP_SET_CONTAINER of %s's group", name);
		if (rc < 0)
			return rc;
	} else {
		rc = set_container(g->fd, d->container, name);
		if (rc == 0)
			rc = replay_mappings(d);
		if (rc < 0) {
			/* Leaving takes the IOMMU with whatever was mapped into it; a group that
			 * never got in has nothing to undo, and the first failure's message stays.
			 */
			(void)ioctl(g->fd, VFIO_GROUP_UNSET_CONTAINER);
			return rc;
		}
	}
	d->groups++;
	g->domain = d;
	g->attached = 1;
	return 0;
}

static int type1_detach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	struct type1_group *g = group_of(dev);
	int rc;

	(void)dom;
	if (g->attached > 1) {
		g->attached--;
		return 0;
	}
	rc = group_leave(g, dev->bdev->info.name);
	if (rc == 0)
		g->attached = 0;
	return rc;
}

static int type1_map(struct kh_domain *dom, uint64_t iova, uint64_t addr, uint64_t length,
		     uint32_t prot)
{
	struct type1_domain *d = to_t1(dom);

	/* Without a group there is no IOMMU yet: the first attach maps it. */
	return d->groups ? dma_map(d, iova, addr, length, prot) : 0;
}

/* type1 shares nothing between containers: the copy maps the source's memory again. */
static int type1_copy(struct kh_domain *dom, uint64_t iova, struct kh_domain *src,
		      uint64_t src_iova, uint64_t length, uint32_t prot, uint64_t addr)
{
	(void)src;
	(void)src_iova;
	return type1_map(dom, iova, addr, length, prot);
}

/* Whether the container maps something at the page at iova: type1 answers a map that overlaps
 * a mapping with EEXIST before it pins anything. A map that succeeds found nothing there, and
 * stays: the core takes the range out before it makes the mapping again, and says so if the
 * kernel refuses, where an undo here could only leave the page pinned unseen. */
static int page_held(struct type1_domain *d, uint64_t iova, uint64_t vaddr, uint32_t prot)
{
	int rc = dma_map(d, iova, vaddr, d->dom.page_sizes & -d->dom.page_sizes, prot);

	if (rc == -EEXIST)
		return 1;
	return rc < 0 ? rc : 0;
}

/* type1 answers a map whose range it found free and then could not make with ENOSPC (its
 * count of mappings spent) or ENOMEM (the memory to pin, RLIMIT_MEMLOCK): both come after its
 * overlap check, so they too say that nothing is mapped there. */
static bool found_free(int rc)
{
	return rc == -ENOSPC || rc == -ENOMEM;
}

/* Whether the kernel maps the page at iova, asked with a map of it from vaddr (which type1
 * answers EEXIST where something is mapped, before it pins anything); a probe that found
 * nothing is taken out again. Where that fails, the page stays mapped but "not held" was
 * proven: a later removal of the range takes it out with the rest. */
static int page_kept(struct type1_domain *d, uint64_t iova, uint64_t vaddr)
{
	int rc = page_held(d, iova, vaddr, KH_PROT_READ);

	if (found_free(rc))
		return 0;
	if (rc == 0)
		(void)dma_unmap(d, iova, d->dom.page_sizes & -d->dom.page_sizes, 0, NULL);
	return rc;
}

/* A mapping has one maker, so its first page tells whether the kernel kept it. */
static int type1_holds(struct kh_domain *dom, const struct kh_mapping *m)
{
	struct type1_domain *d = to_t1(dom);

	return d->groups ? page_kept(d, m->iova, m->addr) : 0;
}

/* The bytes of the books' mappings that start in [iova, last]; with probe, of those the kernel
 * still holds. */
static int booked_bytes(struct type1_domain *d, uint64_t iova, uint64_t last, bool probe,
			uint64_t *ret_bytes)
{
	struct kh_mapping m[32];
	uint64_t from = iova, bytes = 0;
	int n, rc = 0;

	while (rc >= 0 && (n = kh_ioas_mappings(d->dom.ioas, from, m, 32)) > 0 &&
	       m[0].iova <= last) {
		for (int i = 0; i < n && m[i].iova <= last && rc >= 0; i++) {
			rc = probe ? type1_holds(&d->dom, &m[i]) : 1;
			bytes += rc == 1 ? m[i].length : 0;
		}
		from = m[n - 1].iova + m[n - 1].length;
		if (from == 0) /* the last mapping ends at the top of the 64-bit space */
			break;
	}
	if (rc < 0)
		return rc;
	*ret_bytes = bytes;
	return 0;
}

/* A short unmap whose kept mappings could not be found (the probe failed as rc): the books
 * keep those the kernel may still hold (kh_unmap drops the rest). */
static int unknown_kept(const struct type1_domain *d, uint64_t iova, uint64_t last,
			uint64_t removed, uint64_t booked, int rc)
{
	char why[KH_ERROR_MAX];

	(void)snprintf(why, sizeof(why), "%s", kh_last_error());
	return kh_fail(rc,
		       "the kernel removed only 0x%" PRIx64 " of the 0x%" PRIx64
		       " bytes mapped in IOVA 0x%" PRIx64 "-0x%" PRIx64
		       " of domain %u, and asking which it kept failed: %s. The domain lists "
		       "the mappings it could not ask about as mapped (ListMappings); unmap "
		       "them again once the cause is gone",
		       removed, booked, iova, last, d->dom.id, why);
}

/* An unmap answered with fewer bytes than the books hold in the range: kernels whose type1 lets
 * only the process that made a mapping remove it (their VFIO_IOMMU_UNMAP_DMA compares the
 * mapping's task's memory with the caller's) stop at one the daemon's previous process made,
 * and say so only by the count. A gap between mappings is no shortfall, and neither is one
 * where the kernel kept nothing (a take-over's clearing of a mapping the kernel held only in
 * part). The range is whole mappings (kh_unmap) or the tail of one (kh_unmap_tail), whose
 * pieces one process made: a short answer there kept all of it. */
static int check_removed(struct type1_domain *d, uint64_t iova, uint64_t length, uint64_t removed)
{
	uint64_t last = iova + length - 1, booked = length, kept = 0;
	bool tail;
	int rc;

	/* The books hold no more than the range: an unmap of all of it needs no walk. */
	if (removed >= length)
		return 0;
	tail = kh_ioas_tail_of(d->dom.ioas, iova, last) != NULL;
	rc = tail ? 0 : booked_bytes(d, iova, last, false, &booked);

	if (rc == 0 && removed < booked) {
		if (tail)
			kept = booked - removed;
		else
			rc = booked_bytes(d, iova, last, true, &kept);
	}
	if (rc < 0 && removed < booked)
		return unknown_kept(d, iova, last, removed, booked, rc);
	if (rc < 0 || !kept)
		return rc;
	return kh_fail(-EPERM,
		       "the kernel kept 0x%" PRIx64 " of the 0x%" PRIx64
		       " bytes mapped in IOVA 0x%" PRIx64 "-0x%" PRIx64
		       " of domain %u: its VFIO type1 lets only the process that made a mapping "
		       "remove it, and the daemon's previous process (before a restart) made "
		       "those; what it removed is gone (ListMappings shows what is left). To "
		       "remove the rest, free the domain (detach its devices first), which "
		       "closes its container, or run a kernel that lets a new process remove "
		       "them (Debian 12's 6.1 and 6.12 do)",
		       kept, booked, iova, last, d->dom.id);
}

static int type1_unmap(struct kh_domain *dom, uint64_t iova, uint64_t length)
{
	struct type1_domain *d = to_t1(dom);
	uint64_t removed = 0;
	int rc;

	/* type1 finds the mappings in [iova, iova + length) by that end, which wraps to 0 for a
	 * range reaching the top of the 64-bit space: it then finds none, removes nothing and
	 * answers success. No mapping can be found in the top page either, so the range stops
	 * one page short of it. */
	if (length && iova + length == 0)
		length -= dom->page_sizes & -dom->page_sizes;
	if (!d->groups || !length)
		return 0;
	rc = dma_unmap(d, iova, length, 0, &removed);
	return rc < 0 ? rc : check_removed(d, iova, length, removed);
}

static void type1_free(struct kh_domain *dom)
{
	struct type1_domain *d = to_t1(dom);

	/* Only a group kept in by an open device fd can be left here (a context being
	 * destroyed): it must reach none of this memory any more. */
	if (d->groups)
		(void)dma_unmap(d, 0, 0, VFIO_DMA_UNMAP_FLAG_ALL, NULL);
	(void)close(d->container);
	free(d);
}

static int type1_set_dirty_tracking(struct kh_domain *dom, bool enable)
{
	struct type1_domain *d = to_t1(dom);

	/* Without a group there is no IOMMU yet: the first attach starts it (replay_mappings). */
	if (!d->groups)
		return 0;
	return dirty_pages(d, enable ? VFIO_IOMMU_DIRTY_PAGES_FLAG_START
				     : VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP);
}

static int type1_read_dirty(struct kh_domain *dom, uint64_t iova, uint64_t length,
			    uint64_t page_size, uint64_t *bitmap, uint32_t flags)
{
	struct type1_domain *d = to_t1(dom);
	const struct vfio_iommu_type1_dirty_bitmap_get get = {
		.iova = iova,
		.size = length,
		.bitmap = {.pgsize = page_size,
			   .size = (length / page_size + 63) / 64 * sizeof(uint64_t),
			   .data = (void *)bitmap},
	};
	/* The header ends in a flexible array that holds the request: built in 8-byte words, the
	 * layout the kernel reads, without a struct that C only allows as a compiler extension. */
	uint64_t cmd[(sizeof(struct vfio_iommu_type1_dirty_bitmap) + sizeof(get) + 7) / 8] = {0};
	struct vfio_iommu_type1_dirty_bitmap *head = (struct vfio_iommu_type1_dirty_bitmap *)cmd;

	head->argsz = sizeof(*head) + sizeof(get);
	head->flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	memcpy(head->data, &get, sizeof(get));

	if (flags & KH_DIRTY_NO_CLEAR)
		return kh_fail(-EOPNOTSUPP,
			       "vfio-type1 clears the dirty bits it reports: read without "
			       "KH_DIRTY_NO_CLEAR");
	if (page_size != (dom->page_sizes & -dom->page_sizes))
		return kh_fail(-EINVAL,
			       "vfio-type1 reports dirty pages at the IOMMU's smallest page size "
			       "(0x%" PRIx64 ") only",
			       dom->page_sizes & -dom->page_sizes);
	/* No group has been in the container since the bits were last read: nothing wrote. */
	if (!d->groups)
		return 0;
	return kh_ioctl(d->container, VFIO_IOMMU_DIRTY_PAGES, cmd,
			"VFIO_IOMMU_DIRTY_PAGES (bitmap of 0x%" PRIx64 " bytes at IOVA "
			"0x%" PRIx64 ") of domain %u",
			length, iova, dom->id);
}

static const struct kh_dirty_ops type1_dirty_ops = {
	.set_dirty_tracking = type1_set_dirty_tracking,
	.read_and_clear_dirty = type1_read_dirty,
};

static const struct kh_domain_ops type1_paging_ops = {
	.attach_dev = type1_attach_dev,
	.detach_dev = type1_detach_dev,
	.map = type1_map,
	.copy = type1_copy,
	.unmap = type1_unmap,
	.holds = type1_holds,
	.free = type1_free,
};

static int check_flags(const struct kh_device *dev, uint32_t flags)
{
	if (flags & KH_DOMAIN_F_NEST_PARENT)
		return kh_fail(
			-EOPNOTSUPP,
			"vfio-type1 has no nesting: a nest parent needs the iommufd backend");
	if ((flags & KH_DOMAIN_F_DIRTY_TRACKING) && !dev->bdev->info.hw.dirty_tracking)
		return kh_fail(-EOPNOTSUPP,
			       "the kernel's VFIO type1 offers %s no dirty tracking (no migration "
			       "capability)",
			       dev->bdev->info.name);
	return 0;
}

/* A paging domain around the container fd (the domain's on success; the caller's to close
 * otherwise), with flags the caller checked or the kernel granted. */
static int domain_new(struct kh_device *dev, uint32_t flags, int container,
		      struct type1_domain **ret)
{
	const struct kh_hw_info *hw = &dev->bdev->info.hw;
	struct type1_domain *d = kh_zalloc(sizeof(*d));

	if (!d)
		return kh_fail(-ENOMEM, "cannot allocate a domain");
	d->container = container;
	d->dom.flags = flags;
	d->dom.dirty_ops = (flags & KH_DOMAIN_F_DIRTY_TRACKING) ? &type1_dirty_ops : NULL;
	d->dom.page_sizes = hw->page_sizes;
	d->dom.aperture_start = hw->aperture_start;
	d->dom.aperture_last = hw->aperture_last;
	*ret = d;
	return 0;
}

static int open_container(const struct kh_device *dev)
{
	char path[PATH_MAX];
	int fd = -1;

	if (kh_fail_point())
		errno = EIO;
	else if (!kh_root_path(DEV_VFIO, path, sizeof(path)))
		errno = ENAMETOOLONG;
	else
		fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return kh_fail(-errno, "cannot open a VFIO container (" DEV_VFIO ") for %s",
			       dev->bdev->info.name);
	return fd;
}

static int type1_alloc_paging(struct kh_device *dev, uint32_t flags, struct kh_domain **out)
{
	struct type1_domain *d;
	int container, rc = check_flags(dev, flags);

	if (rc < 0)
		return rc;
	container = open_container(dev);
	if (container < 0)
		return container;
	rc = domain_new(dev, flags, container, &d);
	if (rc < 0) {
		(void)close(container);
		return rc;
	}
	*out = &d->dom;
	return 0;
}

/* ---- taking a context over ------------------------------------------------------------------ */

static int type1_device_kernel_fd(struct kh_device *dev)
{
	return group_of(dev)->fd;
}

static int type1_domain_kernel_fd(struct kh_domain *dom)
{
	return to_t1(dom)->container;
}

static void type1_kernel_ids(const struct kh_device *dev, struct kh_domain *dom,
			     uint32_t ret_ids[KH_KERNEL_IDS])
{
	(void)dom;
	ret_ids[0] = dev ? group_of(dev)->number : 0;
	ret_ids[1] = 0;
}

/* The descriptor kept for a device is its group's file, and the group is still usable. */
static int check_group(const struct kh_backend *be, const struct kh_adopt_device *d)
{
	uint32_t group = be->devices[kh_device_lookup(be, d->name)].info.group;
	struct vfio_group_status status = {.argsz = sizeof(status)};
	char path[PATH_MAX], what[KH_NAME_MAX + 48];
	int rc;

	if (d->kernel_ids[0] != group)
		return kh_fail(-ESTALE, "%s is in IOMMU group %u now, not %u as recorded", d->name,
			       group, d->kernel_ids[0]);
	if (!group_path(group, path, sizeof(path)))
		return kh_fail(-ENAMETOOLONG, "the path of %s's VFIO group is too long", d->name);
	(void)snprintf(what, sizeof(what), "the descriptor kept for %s's group", d->name);
	rc = kh_same_node(d->fd, path, what);
	if (rc == 0)
		rc = kh_ioctl(d->fd, VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS of %s",
			      path);
	if (rc == 0 && !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		rc = kh_fail(-ESTALE, "IOMMU group %u of %s is no longer viable", group, d->name);
	return rc;
}

/* The descriptor kept for a domain is a container offering the type1v2 IOMMU. */
static int check_container(const struct kh_adopt_domain *d)
{
	char path[PATH_MAX], what[64];
	int rc;

	if (d->fd < 0)
		return kh_fail(-ESTALE, "no container was kept for domain %u", d->id);
	if (!kh_root_path(DEV_VFIO, path, sizeof(path)))
		return kh_fail(-ENAMETOOLONG, "the path of " DEV_VFIO " is too long");
	(void)snprintf(what, sizeof(what), "the descriptor kept for domain %u", d->id);
	rc = kh_same_node(d->fd, path, what);
	if (rc == 0 && ioctl(d->fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
		rc = kh_fail(-ESTALE, "the container kept for domain %u offers no type1v2 IOMMU",
			     d->id);
	return rc;
}

/* What the IOMMU offers a device whose group was open elsewhere at the backend's probe, asked
 * before the replay makes any domain with it: through its group (group) where that is in no
 * container, else through any container taken over that has an IOMMU, as every group of the
 * lease shares the type1 IOMMU driver. The group's own container may come late in the record,
 * or be none of them. */
static void probe_adopted(struct kh_bdev *bdev, int group, const struct kh_adopt_domain *doms,
			  size_t n_doms)
{
	struct vfio_iommu_type1_info info = {.argsz = sizeof(info)};

	if (bdev->priv == &unprobed)
		probe_group(bdev, group);
	for (size_t i = 0; i < n_doms && bdev->priv == &unprobed; i++)
		if (ioctl(doms[i].fd, VFIO_IOMMU_GET_INFO, &info) == 0)
			probe_container(bdev, doms[i].fd);
}

static int type1_ctx_adopt(struct kh_ctx *ctx, int kernel_fd, const struct kh_adopt_device *devs,
			   size_t n_devs, const struct kh_adopt_domain *doms, size_t n_doms)
{
	int rc = kernel_fd < 0 ? 0
			       : kh_fail(-ESTALE, "a vfio-type1 context has no descriptor of its "
						  "own to take over");

	for (size_t i = 0; i < n_devs && rc == 0; i++)
		rc = check_group(ctx->be, &devs[i]);
	for (size_t i = 0; i < n_doms && rc == 0; i++)
		rc = check_container(&doms[i]);
	for (size_t i = 0; i < n_devs && rc == 0; i++)
		probe_adopted(&ctx->be->devices[kh_device_lookup(ctx->be, devs[i].name)],
			      devs[i].fd, doms, n_doms);
	return rc;
}

/* A mate bound already brought the group's file in: fd is that same file, since the kernel
 * lets a group be opened only once, and every copy the store kept comes from that open. */
static int type1_adopt_bind(struct kh_ctx *ctx, struct kh_device *dev, int fd,
			    const uint32_t ids[KH_KERNEL_IDS])
{
	struct type1_group *g = find_group(ctx->priv, dev->bdev->info.group);

	(void)ids;
	if (!g)
		return add_group(ctx->priv, dev, fd);
	(void)close(fd);
	g->bound++;
	dev->priv = g;
	return 0;
}

/* A live domain keeps its container; whether the container still has its IOMMU (a group in
 * it) is what VFIO_IOMMU_GET_INFO answers. Its flags the kernel granted when it was made, so
 * they are not checked again. One the replay frees again gets a fresh, empty one. */
static int type1_adopt_domain(struct kh_device *dev, const struct kh_domain_alloc_args *args,
			      struct kh_domain *parent, const uint32_t *ids, int fd,
			      struct kh_domain **out)
{
	struct vfio_iommu_type1_info info = {.argsz = sizeof(info)};
	struct type1_domain *d;
	struct kh_domain *dom;
	int rc;

	(void)parent;
	if (args->type != KH_DOMAIN_PAGING)
		return kh_fail(-EOPNOTSUPP, "vfio-type1 provides paging domains only");
	if (ids) {
		bool iommu = ioctl(fd, VFIO_IOMMU_GET_INFO, &info) == 0;

		rc = domain_new(dev, args->flags, fd, &d);
		if (rc < 0)
			return rc;
		d->unnamed = iommu;
		d->groups = d->unnamed;
		dom = &d->dom;
	} else if ((rc = type1_alloc_paging(dev, args->flags, &dom)) < 0) {
		return rc;
	}
	dom->ops = &type1_paging_ops;
	dom->type = KH_DOMAIN_PAGING;
	*out = dom;
	return 0;
}

/* The device's group put where the books say. The kernel says whether a group is in a
 * container, not in which: one that is, and whose domain has an IOMMU, is taken to be there. */
static int type1_adopt_settle(struct kh_device *dev)
{
	struct type1_domain *want = dev->domain ? to_t1(dev->domain) : NULL;
	struct vfio_group_status status = {.argsz = sizeof(status)};
	struct type1_group *g = group_of(dev);
	bool in;
	int rc;

	if (g->domain) { /* a mate settled the group */
		g->attached += want == g->domain;
		return 0;
	}
	rc = kh_ioctl(g->fd, VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS of group %u",
		      g->number);
	if (rc < 0)
		return rc;
	in = status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET;
	if (in && want && want->groups) {
		want->groups += !want->unnamed;
		want->unnamed = false;
		g->domain = want;
		g->attached = 1;
		return 0;
	}
	if (in && (rc = kh_ioctl(g->fd, VFIO_GROUP_UNSET_CONTAINER, NULL,
				 "VFIO_GROUP_UNSET_CONTAINER of %s's group, out of a container "
				 "it is not recorded in",
				 dev->bdev->info.name)) < 0)
		return rc;
	return want ? type1_attach_dev(&want->dom, dev) : 0;
}

/* After every group settled: a container taken over with an IOMMU was counted as holding one
 * group, which no settled group claimed. The kernel decides. Without an IOMMU now (a settle
 * moved its group out, to where the record has it) it holds none, and the first attach sets
 * the IOMMU and maps the books; with one, a group of the lease is in it though recorded in
 * another domain, which the kernel does not name. */
static int type1_adopt_recount(struct kh_domain *dom)
{
	struct vfio_iommu_type1_info info = {.argsz = sizeof(info)};
	struct type1_domain *d = to_t1(dom);

	if (!d->unnamed)
		return 0;
	d->unnamed = false;
	if (ioctl(d->container, VFIO_IOMMU_GET_INFO, &info) < 0) {
		d->groups = 0;
		return 0;
	}
	return kh_fail(-ESTALE,
		       "domain %u's container holds a group of the lease that is recorded in "
		       "another domain (a change cut short by the daemon's end), and the kernel "
		       "does not say which: detach the lease's devices and attach each again to "
		       "the domain it belongs in",
		       dom->id);
}

/* type1 has no way to list or read a mapping back: what it can say is whether something is
 * mapped at the first and the last page of the range, which finds a mapping lost or cut short
 * at its end (the only way a change leaves one), not one with another protection or memory.
 * A container without an IOMMU maps nothing yet: the first attach maps what the books hold. */
static int type1_adopt_mapped(struct kh_domain *dom, const struct kh_mapping *m)
{
	struct type1_domain *d = to_t1(dom);
	uint64_t last = m->length - (dom->page_sizes & -dom->page_sizes);
	int rc;

	if (!d->groups)
		return 1;
	rc = page_held(d, m->iova, m->addr, m->prot);
	if (rc == 1 && last)
		rc = page_held(d, m->iova + last, m->addr + last, m->prot);
	return rc;
}

/* START and STOP are no-ops where the kernel tracks as asked already, and a START over mappings
 * reports every pinned page dirty at the next read, so no bit is lost. A container without an
 * IOMMU starts tracking at its first attach (replay_mappings). */
static int type1_adopt_dirty(struct kh_domain *dom, bool on, const struct kh_mapping *mapped)
{
	(void)mapped;
	return type1_set_dirty_tracking(dom, on);
}

static const struct kh_backend_ops type1_ops = {
	.kind = KH_BACKEND_VFIO_TYPE1,
	.name = "vfio-type1",
	.caps = KH_CAP_OPEN_DEVICE | KH_CAP_DMA_REMAPPING | KH_CAP_DIRTY_TRACKING | KH_CAP_COPY |
		KH_CAP_ADOPT,
	.probe_devices = type1_probe_devices,
	.release = type1_release,
	.ctx_open = type1_ctx_open,
	.ctx_close = type1_ctx_close,
	.bind = type1_bind,
	.unbind = type1_unbind,
	.device_fd = open_device,
	.device_region = type1_device_region,
	.device_kernel_fd = type1_device_kernel_fd,
	.domain_kernel_fd = type1_domain_kernel_fd,
	.kernel_ids = type1_kernel_ids,
	.ctx_adopt = type1_ctx_adopt,
	.adopt_bind = type1_adopt_bind,
	.adopt_domain = type1_adopt_domain,
	.adopt_settle = type1_adopt_settle,
	.adopt_recount = type1_adopt_recount,
	.adopt_mapped = type1_adopt_mapped,
	.adopt_dirty = type1_adopt_dirty,
	.alloc_paging = type1_alloc_paging,
	.default_domain_ops = &type1_paging_ops,
};

int kh_backend_open_vfio_type1(struct kh_backend **out)
{
	char path[PATH_MAX];
	int fd = -1;

	if (kh_root_path(DEV_VFIO, path, sizeof(path)))
		fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return kh_fail(-errno,
			       "cannot open " DEV_VFIO "; load VFIO (modprobe vfio-pci), and run "
			       "iommud as root");
	if (ioctl(fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
	    ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1) {
		(void)close(fd);
		return kh_fail(-ENODEV, "the kernel's VFIO offers no type1v2 IOMMU; it needs "
					"CONFIG_VFIO_IOMMU_TYPE1 (modprobe vfio_iommu_type1)");
	}
	(void)close(fd);
	return kh_backend_create(&type1_ops, NULL, out);
}
