/* SPDX-License-Identifier: MIT */
/*
 * The iommufd backend: the kernel's IOMMU through /dev/iommu and VFIO device cdevs. The only
 * file of iommud that issues iommufd and VFIO ioctls.
 *
 * Mapping of the contract onto iommufd:
 *   context        one open /dev/iommu
 *   bound device   an open /dev/vfio/devices/vfioN bound with VFIO_DEVICE_BIND_IOMMUFD
 *   paging domain  an IOAS; devices attach to it and the kernel picks the hardware domain.
 *                  With flags (dirty tracking, nest parent) also a HWPT allocated on the IOAS
 *                  for the device, which devices attach to, so the flags reach the hardware
 *   nested domain  a HWPT whose parent is a nest-parent HWPT, with vendor stage-1 data
 *   blocked domain no kernel object: the device detached is blocked
 *
 * Ownership: the backend owns each device's sysfs facts (iommufd_bdev, in kh_bdev.priv); a
 * bound device owns its VFIO fd (iommufd_binding, in kh_device.priv); a context owns its
 * /dev/iommu fd; a domain owns its kernel objects and destroys them in free.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define __user
#include <linux/iommufd.h>
#include <linux/vfio.h>

#include <kh/kh_ops.h>

#include "alloc.h"
#include "vfio_common.h"

/* Linux 6.13 added IOMMU_IOAS_MAP_FILE, which the 6.12 headers lack: its ABI, as the kernel's
 * uAPI defines it. Whether the running kernel has it is asked at run time. */
#ifndef IOMMU_IOAS_MAP_FILE
struct iommu_ioas_map_file {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__s32 fd;
	__aligned_u64 start;
	__aligned_u64 length;
	__aligned_u64 iova;
};
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, 0x8f)
#endif

#define DEV_IOMMU "/dev/iommu"

/* VT-d capability register: supported second-level large pages (SLLPS, bits 34-37). */
#define VTD_CAP_SLLPS_2M (1ull << 34)
#define VTD_CAP_SLLPS_1G (1ull << 35)

struct iommufd_bdev {
	char cdev[PATH_MAX]; /* /dev/vfio/devices/vfioN */
};

struct iommufd_binding {
	int fd;		/* the VFIO device cdev, bound to the context's iommufd */
	uint32_t devid; /* iommufd's id for the bound device */
};

struct iommufd_domain {
	struct kh_domain dom;
	uint32_t ioas_id; /* paging domains: the address space */
	uint32_t hwpt_id; /* paging and nested: the kernel's domain; 0 for blocked */
	int iommufd;
};

/* The ops of this kernel's paging domains. Owned by the backend (kh_backend.priv). */
struct iommufd_backend {
	struct kh_domain_ops paging;
};

static struct iommufd_domain *to_ifd(struct kh_domain *dom)
{
	return (struct iommufd_domain *)((char *)dom - offsetof(struct iommufd_domain, dom));
}

static int ctx_fd(const struct kh_ctx *ctx)
{
	return (int)(intptr_t)ctx->priv;
}

static struct iommufd_binding *binding(const struct kh_device *dev)
{
	return dev->priv;
}

static void destroy_object(int iommufd, uint32_t id)
{
	struct iommu_destroy cmd = {.size = sizeof(cmd), .id = id};

	/* Only fails for an id the kernel no longer knows, which leaves nothing to release. */
	(void)ioctl(iommufd, IOMMU_DESTROY, &cmd);
}

/* ---- discovery from sysfs ------------------------------------------------------------------ */

/* The VFIO cdev of a PCI device: its vfio-dev/vfioN entry names /dev/vfio/devices/vfioN. */
static bool find_cdev(const char *dir, char *cdev, size_t size)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	bool found = false;

	if (!kh_fits(snprintf(path, sizeof(path), "%s/vfio-dev", dir), sizeof(path)))
		return false;
	d = opendir(path);
	if (!d)
		return false;
	while (!found && (de = readdir(d)))
		if (!strncmp(de->d_name, "vfio", 4))
			found = kh_fits(snprintf(cdev, size, "/dev/vfio/devices/%s", de->d_name),
					size);
	(void)closedir(d);
	return found;
}

/* IOVA ranges the IOAS offers; the caller frees *out. */
static int ioas_ranges(int iommufd, uint32_t ioas_id, struct iommu_iova_range **out, uint32_t *n,
		       uint64_t *alignment)
{
	struct iommu_ioas_iova_ranges cmd = {.size = sizeof(cmd), .ioas_id = ioas_id};
	struct iommu_iova_range *ranges = NULL;
	int rc;

	/* The first call says how many there are; they can only change if devices attach. */
	if (ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &cmd) && errno != EMSGSIZE)
		return kh_fail(-errno, "IOMMU_IOAS_IOVA_RANGES of IOAS %u", ioas_id);
	ranges = kh_realloc_array(NULL, cmd.num_iovas ? cmd.num_iovas : 1, sizeof(*ranges));
	if (!ranges)
		return kh_fail(-ENOMEM, "cannot hold IOVA ranges");
	cmd.allowed_iovas = (uintptr_t)ranges;
	rc = kh_ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &cmd, "IOMMU_IOAS_IOVA_RANGES of IOAS %u",
		      ioas_id);
	if (rc < 0) {
		free(ranges);
		return rc;
	}
	*out = ranges;
	*n = cmd.num_iovas;
	*alignment = cmd.out_iova_alignment;
	return 0;
}

/* The model, features and large pages the kernel reports for the device's IOMMU. */
static void probe_hw_info(int iommufd, uint32_t devid, struct kh_hw_info *hw)
{
	struct iommu_hw_info_vtd vtd = {0};
	struct iommu_hw_info info = {.size = sizeof(info),
				     .dev_id = devid,
				     .data_len = sizeof(vtd),
				     .data_uptr = (uintptr_t)&vtd};

	if (ioctl(iommufd, IOMMU_GET_HW_INFO, &info))
		return;
	hw->hw_type = info.out_data_type;
	hw->dirty_tracking = info.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING;
	hw->pasid_bits = info.out_max_pasid_log2;
	if (info.out_data_type == IOMMU_HW_INFO_TYPE_INTEL_VTD) {
		hw->page_sizes |= (vtd.cap_reg & VTD_CAP_SLLPS_2M) ? 1ull << 21 : 0;
		hw->page_sizes |= (vtd.cap_reg & VTD_CAP_SLLPS_1G) ? 1ull << 30 : 0;
	}
}

/* Whether the IOMMU can be a nest parent: a HWPT allocated, never attached. */
static void probe_nesting(int iommufd, uint32_t devid, struct kh_hw_info *hw)
{
	struct iommu_ioas_alloc ioas = {.size = sizeof(ioas)};
	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt), .dev_id = devid, .flags = IOMMU_HWPT_ALLOC_NEST_PARENT};

	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas))
		return;
	hwpt.pt_id = ioas.out_ioas_id;
	hw->nesting = ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt) == 0;
}

/* The aperture: what an IOAS offers once the kernel attached the device to a domain of its own
 * choosing (some drivers only size a domain at its first attach). */
static void probe_aperture(int iommufd, int devfd, struct kh_hw_info *hw)
{
	struct iommu_ioas_alloc ioas = {.size = sizeof(ioas)};
	struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof(attach)};
	struct iommu_iova_range *ranges = NULL;
	uint64_t alignment = 0;
	uint32_t n = 0;

	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas))
		return;
	attach.pt_id = ioas.out_ioas_id;
	if (ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach))
		return;
	if (ioas_ranges(iommufd, ioas.out_ioas_id, &ranges, &n, &alignment) < 0)
		return;
	if (n) {
		hw->aperture_start = ranges[0].start;
		hw->aperture_last = ranges[n - 1].last;
	}
	if (alignment)
		hw->page_sizes = (hw->page_sizes & ~(alignment - 1)) | alignment;
	free(ranges);
}

/* What the device's IOMMU can do, asked of the kernel through a short-lived binding, whose
 * objects go with its file descriptors. */
static void iommufd_probe_hw(struct kh_bdev *bdev)
{
	const char *cdev = ((const struct iommufd_bdev *)bdev->priv)->cdev;
	struct kh_hw_info *hw = &bdev->info.hw;
	struct vfio_device_bind_iommufd bind = {.argsz = sizeof(bind)};
	int iommufd, devfd;

	/* Until the kernel says otherwise: 4 KiB pages and a 64-bit aperture. */
	hw->page_sizes = 4096;
	hw->aperture_last = UINT64_MAX;
	iommufd = open(DEV_IOMMU, O_RDWR | O_CLOEXEC);
	devfd = open(cdev, O_RDWR | O_CLOEXEC);
	bind.iommufd = iommufd;
	if (iommufd >= 0 && devfd >= 0 && ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0) {
		probe_hw_info(iommufd, bind.out_devid, hw);
		probe_nesting(iommufd, bind.out_devid, hw);
		probe_aperture(iommufd, devfd, hw);
	}
	if (devfd >= 0)
		(void)close(devfd);
	if (iommufd >= 0)
		(void)close(iommufd);
}

/* A device iommufd can bind has a VFIO device cdev. */
static int iommufd_accept(const char *sysdir, uint32_t group, void **ret_priv)
{
	struct iommufd_bdev *priv;
	char cdev[PATH_MAX];

	(void)group;
	if (!find_cdev(sysdir, cdev, sizeof(cdev)))
		return 0;
	priv = kh_zalloc(sizeof(*priv));
	if (!priv)
		return kh_fail(-ENOMEM, "cannot record the device at %s", sysdir);
	(void)snprintf(priv->cdev, sizeof(priv->cdev), "%s", cdev);
	*ret_priv = priv;
	return 1;
}

static int iommufd_probe_devices(struct kh_backend *be)
{
	static const struct kh_vfio_scan_ops scan = {
		.accept = iommufd_accept,
		.probe_hw = iommufd_probe_hw,
	};
	const struct iommufd_backend *kernel = be->priv;

	if (kernel->paging.map_file)
		be->caps |= KH_CAP_MAP_FILE;
	return kh_vfio_scan(be, &scan);
}

static void iommufd_release(struct kh_backend *be)
{
	for (size_t i = 0; i < be->n_devices; i++)
		free(be->devices[i].priv);
	free(be->priv);
}

/* ---- contexts and devices ---------------------------------------------------------------- */

static int iommufd_ctx_open(struct kh_ctx *ctx)
{
	int fd;

	if (kh_fail_point())
		return kh_fail(-EIO, "opening " DEV_IOMMU " failed (injected)");
	fd = open(DEV_IOMMU, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return kh_fail(-errno, "cannot open " DEV_IOMMU);
	ctx->priv = (void *)(intptr_t)fd;
	return 0;
}

static void iommufd_ctx_close(struct kh_ctx *ctx)
{
	(void)close(ctx_fd(ctx));
}

static int iommufd_bind(struct kh_ctx *ctx, struct kh_device *dev)
{
	const struct iommufd_bdev *priv = dev->bdev->priv;
	struct vfio_device_bind_iommufd bind = {.argsz = sizeof(bind), .iommufd = ctx_fd(ctx)};
	struct iommufd_binding *b = kh_zalloc(sizeof(*b));
	int rc;

	if (!b)
		return kh_fail(-ENOMEM, "cannot bind %s", dev->bdev->info.name);
	b->fd = open(priv->cdev, O_RDWR | O_CLOEXEC);
	if (b->fd < 0) {
		rc = kh_fail(-errno, "cannot open %s's VFIO device %s%s", dev->bdev->info.name,
			     priv->cdev, errno == EBUSY ? "; another program holds it" : "");
		free(b);
		return rc;
	}
	rc = kh_ioctl(b->fd, VFIO_DEVICE_BIND_IOMMUFD, &bind, "VFIO_DEVICE_BIND_IOMMUFD of %s",
		      dev->bdev->info.name);
	/* VFIO refuses a second open device file with EINVAL: the device is still open through
	 * an fd handed out earlier (kh_device_open_fd), which keeps its old binding alive. */
	if (rc == -EINVAL)
		rc = kh_fail(-EBUSY,
			     "%s is still open through a VFIO device fd handed out for an earlier "
			     "binding; it can be bound again once whoever holds that fd closes it",
			     dev->bdev->info.name);
	if (rc < 0) {
		(void)close(b->fd);
		free(b);
		return rc;
	}
	b->devid = bind.out_devid;
	dev->priv = b;
	return 0;
}

static void iommufd_unbind(struct kh_ctx *ctx, struct kh_device *dev)
{
	(void)ctx;
	/* Closing the cdev unbinds it from the iommufd. */
	(void)close(binding(dev)->fd);
	free(dev->priv);
	dev->priv = NULL;
}

static int iommufd_device_fd(struct kh_device *dev)
{
	int fd = fcntl(binding(dev)->fd, F_DUPFD_CLOEXEC, 0);

	if (fd < 0)
		return kh_fail(-errno, "cannot duplicate %s's VFIO fd", dev->bdev->info.name);
	return fd;
}

/* A context for a VM manager: the kernel charges what each process pins through it to that
 * process's RLIMIT_MEMLOCK, not to its uid's, so two VMMs of one uid do not share one limit.
 * The option can only be set while the context holds no object, so before anyone has it. */
static int iommufd_delegate_ctx_fd(struct kh_backend *be)
{
	struct iommu_option per_process = {.size = sizeof(per_process),
					   .option_id = IOMMU_OPTION_RLIMIT_MODE,
					   .op = IOMMU_OPTION_OP_SET,
					   .val64 = 1};
	int rc, fd = open(DEV_IOMMU, O_RDWR | O_CLOEXEC);

	(void)be;
	if (fd < 0)
		return kh_fail(-errno, "cannot open " DEV_IOMMU);
	rc = kh_ioctl(fd, IOMMU_OPTION, &per_process,
		      "IOMMU_OPTION RLIMIT_MODE=1 (per-process pinned-memory accounting)");
	if (rc < 0) {
		(void)close(fd);
		return rc;
	}
	return fd;
}

static int iommufd_delegate_device_fd(struct kh_bdev *bdev)
{
	const struct iommufd_bdev *priv = bdev->priv;
	int fd = open(priv->cdev, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return kh_fail(-errno, "cannot open %s's VFIO device %s", bdev->info.name,
			       priv->cdev);
	return fd;
}

static int iommufd_device_region(struct kh_device *dev, uint32_t index, struct kh_region *out)
{
	return kh_vfio_region_info(binding(dev)->fd, index, out, dev->bdev->info.name);
}

/* ---- domain ops ----------------------------------------------------------------------------- */

static int attach_pt(struct kh_domain *dom, struct kh_device *dev, const char *what)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct vfio_device_attach_iommufd_pt cmd = {.argsz = sizeof(cmd),
						    .pt_id = d->hwpt_id ? d->hwpt_id : d->ioas_id};

	return kh_ioctl(binding(dev)->fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &cmd,
			"VFIO_DEVICE_ATTACH_IOMMUFD_PT (%s) of %s to object %u", what,
			dev->bdev->info.name, cmd.pt_id);
}

static int iommufd_attach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	return attach_pt(dom, dev, "attach");
}

/* Attaching an attached device replaces its domain in one step (Linux 6.6 and later). */
static int iommufd_replace_dev(struct kh_domain *dom, struct kh_device *dev, struct kh_domain *old)
{
	int rc = attach_pt(dom, dev, "replace");

	(void)old;
	/* The core checked the mappings against the device's reserved ranges, so the kernel
	 * objects to the domain it made: some drivers (virtio-iommu before Linux 6.13) size a
	 * domain only at a first attach, not at a replace. */
	if (rc == -EADDRINUSE)
		(void)kh_fail(
			rc,
			"the kernel could not give %s a domain covering domain %u's mappings "
			"during "
			"a replace (its IOMMU driver sizes domains only at attach); detach and "
			"attach instead",
			dev->bdev->info.name, dom->id);
	return rc;
}

static int detach_pt(struct kh_device *dev)
{
	struct vfio_device_detach_iommufd_pt cmd = {.argsz = sizeof(cmd)};

	return kh_ioctl(binding(dev)->fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &cmd,
			"VFIO_DEVICE_DETACH_IOMMUFD_PT of %s", dev->bdev->info.name);
}

static int iommufd_detach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	(void)dom;
	/* The kernel refuses only a device that is not attached, which is then blocked anyway. */
	(void)detach_pt(dev);
	return 0;
}

/* The blocked domain: being detached is being blocked. Only an unattached device is attached,
 * and it is blocked already; leaving the blocked domain needs no kernel call either. */
static int blocked_attach_or_detach(struct kh_domain *dom, struct kh_device *dev)
{
	(void)dom;
	(void)dev;
	return 0;
}

static int blocked_replace_dev(struct kh_domain *dom, struct kh_device *dev, struct kh_domain *old)
{
	(void)dom;
	(void)old;
	return detach_pt(dev);
}

static uint32_t map_flags(uint32_t prot)
{
	return IOMMU_IOAS_MAP_FIXED_IOVA | ((prot & KH_PROT_READ) ? IOMMU_IOAS_MAP_READABLE : 0) |
	       ((prot & KH_PROT_WRITE) ? IOMMU_IOAS_MAP_WRITEABLE : 0);
}

static int iommufd_map(struct kh_domain *dom, uint64_t iova, uint64_t addr, uint64_t length,
		       uint32_t prot)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_ioas_map cmd = {
		.size = sizeof(cmd),
		.flags = map_flags(prot),
		.ioas_id = d->ioas_id,
		.user_va = addr,
		.length = length,
		.iova = iova,
	};

	return kh_ioctl(d->iommufd, IOMMU_IOAS_MAP, &cmd,
			"IOMMU_IOAS_MAP of 0x%" PRIx64 " bytes at IOVA 0x%" PRIx64 " in domain %u",
			length, iova, dom->id);
}

static int iommufd_map_file(struct kh_domain *dom, uint64_t iova, int fd, uint64_t offset,
			    uint64_t length, uint32_t prot)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_ioas_map_file cmd = {
		.size = sizeof(cmd),
		.flags = map_flags(prot),
		.ioas_id = d->ioas_id,
		.fd = fd,
		.start = offset,
		.length = length,
		.iova = iova,
	};

	return kh_ioctl(d->iommufd, IOMMU_IOAS_MAP_FILE, &cmd,
			"IOMMU_IOAS_MAP_FILE of 0x%" PRIx64 " bytes at offset 0x%" PRIx64
			" of fd %d at IOVA 0x%" PRIx64 " in domain %u",
			length, offset, fd, iova, dom->id);
}

static int iommufd_copy(struct kh_domain *dom, uint64_t iova, struct kh_domain *src,
			uint64_t src_iova, uint64_t length, uint32_t prot, uint64_t addr)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_ioas_copy cmd = {
		.size = sizeof(cmd),
		.flags = map_flags(prot),
		.dst_ioas_id = d->ioas_id,
		.src_ioas_id = to_ifd(src)->ioas_id,
		.length = length,
		.dst_iova = iova,
		.src_iova = src_iova,
	};

	(void)addr;
	return kh_ioctl(d->iommufd, IOMMU_IOAS_COPY, &cmd,
			"IOMMU_IOAS_COPY of 0x%" PRIx64 " bytes from domain %u at 0x%" PRIx64
			" to domain %u at 0x%" PRIx64,
			length, src->id, src_iova, dom->id, iova);
}

static int iommufd_set_allowed_iovas(struct kh_domain *dom, const struct kh_iova_range *ranges,
				     size_t n)
{
	struct iommufd_domain *d = to_ifd(dom);
	/* struct kh_iova_range and struct iommu_iova_range are both {start, last} in u64. */
	struct iommu_ioas_allow_iovas cmd = {.size = sizeof(cmd),
					     .ioas_id = d->ioas_id,
					     .num_iovas = (uint32_t)n,
					     .allowed_iovas = (uintptr_t)ranges};

	_Static_assert(sizeof(struct kh_iova_range) == sizeof(struct iommu_iova_range),
		       "IOVA range layouts differ");
	return kh_ioctl(d->iommufd, IOMMU_IOAS_ALLOW_IOVAS, &cmd,
			"IOMMU_IOAS_ALLOW_IOVAS of %zu ranges in domain %u", n, dom->id);
}

static int iommufd_unmap(struct kh_domain *dom, uint64_t iova, uint64_t length)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_ioas_unmap cmd = {
		.size = sizeof(cmd), .ioas_id = d->ioas_id, .iova = iova, .length = length};

	return kh_ioctl(d->iommufd, IOMMU_IOAS_UNMAP, &cmd,
			"IOMMU_IOAS_UNMAP of 0x%" PRIx64 " bytes at IOVA 0x%" PRIx64
			" in domain %u",
			length, iova, dom->id);
}

static int iommufd_set_dirty_tracking(struct kh_domain *dom, bool enable)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_hwpt_set_dirty_tracking cmd = {
		.size = sizeof(cmd),
		.flags = enable ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0,
		.hwpt_id = d->hwpt_id,
	};

	return kh_ioctl(d->iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &cmd,
			"IOMMU_HWPT_SET_DIRTY_TRACKING (%s) of domain %u", enable ? "on" : "off",
			dom->id);
}

static int iommufd_read_dirty(struct kh_domain *dom, uint64_t iova, uint64_t length,
			      uint64_t page_size, uint64_t *bitmap, uint32_t flags)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_hwpt_get_dirty_bitmap cmd = {
		.size = sizeof(cmd),
		.hwpt_id = d->hwpt_id,
		.flags = (flags & KH_DIRTY_NO_CLEAR) ? IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0,
		.iova = iova,
		.length = length,
		.page_size = page_size,
		.data = (uintptr_t)bitmap,
	};

	return kh_ioctl(d->iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &cmd,
			"IOMMU_HWPT_GET_DIRTY_BITMAP of 0x%" PRIx64 " bytes at IOVA 0x%" PRIx64
			" in domain %u",
			length, iova, dom->id);
}

/* Set in a domain allocated with KH_DOMAIN_F_DIRTY_TRACKING. */
static const struct kh_dirty_ops iommufd_dirty_ops = {
	.set_dirty_tracking = iommufd_set_dirty_tracking,
	.read_and_clear_dirty = iommufd_read_dirty,
};

/* A nested domain's stage 1 changed: invalidate everything cached through it. */
static int iommufd_flush_nested(struct kh_domain *dom)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_hwpt_vtd_s1_invalidate all = {.addr = 0, .npages = UINT64_MAX};
	struct iommu_hwpt_invalidate cmd = {
		.size = sizeof(cmd),
		.hwpt_id = d->hwpt_id,
		.data_uptr = (uintptr_t)&all,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
		.entry_len = sizeof(all),
		.entry_num = 1,
	};

	return kh_ioctl(d->iommufd, IOMMU_HWPT_INVALIDATE, &cmd,
			"IOMMU_HWPT_INVALIDATE of nested domain %u", dom->id);
}

static void iommufd_free(struct kh_domain *dom)
{
	struct iommufd_domain *d = to_ifd(dom);

	/* The HWPT holds the IOAS, so it goes first. */
	if (d->hwpt_id)
		destroy_object(d->iommufd, d->hwpt_id);
	if (d->ioas_id)
		destroy_object(d->iommufd, d->ioas_id);
	free(d);
}

static const struct kh_domain_ops iommufd_blocked_ops = {
	.attach_dev = blocked_attach_or_detach,
	.replace_dev = blocked_replace_dev,
	.detach_dev = blocked_attach_or_detach,
	.free = iommufd_free,
};

/* Paging and nested domains are kernel objects a device attaches to. */
#define IOMMUFD_ATTACHABLE_OPS                                                                     \
	.attach_dev = iommufd_attach_dev, .replace_dev = iommufd_replace_dev,                      \
	.detach_dev = iommufd_detach_dev, .free = iommufd_free

/* A template: the backend copies it and adds what the running kernel offers. */
static const struct kh_domain_ops iommufd_paging_ops = {
	IOMMUFD_ATTACHABLE_OPS,
	.map = iommufd_map,
	.copy = iommufd_copy,
	.unmap = iommufd_unmap,
	.set_allowed_iovas = iommufd_set_allowed_iovas,
};

static const struct kh_domain_ops iommufd_nested_ops = {
	IOMMUFD_ATTACHABLE_OPS,
	.flush_iotlb_all = iommufd_flush_nested,
};

/* ---- allocation --------------------------------------------------------------------------- */

/* A paging domain as the device's IOMMU makes it, before the kernel says more of its aperture:
 * devices attached to a bare IOAS get a domain suited to them, so that is its aperture (some
 * drivers, virtio-iommu on 6.12, only size a domain at its first attach, so one allocated ahead
 * would have no usable aperture). */
static void paging_defaults(struct kh_device *dev, uint32_t flags, struct iommufd_domain *d)
{
	const struct iommufd_backend *kernel = dev->ctx->be->priv;

	d->dom.page_sizes = dev->bdev->info.hw.page_sizes;
	d->dom.ops = &kernel->paging;
	d->dom.dirty_ops = (flags & KH_DOMAIN_F_DIRTY_TRACKING) ? &iommufd_dirty_ops : NULL;
	d->dom.aperture_start = dev->bdev->info.hw.aperture_start;
	d->dom.aperture_last = dev->bdev->info.hw.aperture_last;
}

/* A HWPT's geometry is reserved in its IOAS: what is left is the domain's aperture. */
static int hwpt_aperture(struct kh_device *dev, struct iommufd_domain *d)
{
	struct iommu_iova_range *ranges = NULL;
	uint64_t alignment = 0;
	uint32_t n = 0;
	int rc = ioas_ranges(d->iommufd, d->ioas_id, &ranges, &n, &alignment);

	if (rc < 0)
		return rc;
	if (n == 0) {
		free(ranges);
		return kh_fail(-ENOSPC, "the kernel gave the domain for %s no IOVA range",
			       dev->bdev->info.name);
	}
	d->dom.aperture_start = ranges[0].start;
	d->dom.aperture_last = ranges[n - 1].last;
	free(ranges);
	return 0;
}

static int alloc_paging(struct kh_device *dev, uint32_t flags, struct iommufd_domain *d)
{
	struct iommu_ioas_alloc ioas = {.size = sizeof(ioas)};
	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt),
		.flags = ((flags & KH_DOMAIN_F_DIRTY_TRACKING) ? IOMMU_HWPT_ALLOC_DIRTY_TRACKING
							       : 0) |
			 ((flags & KH_DOMAIN_F_NEST_PARENT) ? IOMMU_HWPT_ALLOC_NEST_PARENT : 0),
		.dev_id = binding(dev)->devid,
	};
	int rc;

	rc = kh_ioctl(d->iommufd, IOMMU_IOAS_ALLOC, &ioas, "IOMMU_IOAS_ALLOC for %s",
		      dev->bdev->info.name);
	if (rc < 0)
		return rc;
	d->ioas_id = ioas.out_ioas_id;
	paging_defaults(dev, flags, d);
	/* Without flags devices attach to the IOAS itself. */
	if (!flags)
		return 0;
	hwpt.pt_id = d->ioas_id;
	rc = kh_ioctl(d->iommufd, IOMMU_HWPT_ALLOC, &hwpt,
		      "IOMMU_HWPT_ALLOC (paging, flags 0x%x) for %s", hwpt.flags,
		      dev->bdev->info.name);
	if (rc == -EOPNOTSUPP)
		(void)kh_fail(
			rc, "%s's IOMMU cannot give a paging domain with%s%s", dev->bdev->info.name,
			(flags & KH_DOMAIN_F_DIRTY_TRACKING) ? " dirty tracking" : "",
			(flags & KH_DOMAIN_F_NEST_PARENT) ? " nesting (as a nest parent)" : "");
	if (rc < 0)
		return rc;
	d->hwpt_id = hwpt.out_hwpt_id;
	return hwpt_aperture(dev, d);
}

static int alloc_nested(struct kh_device *dev, const struct kh_domain_alloc_args *args,
			struct kh_domain *parent, struct iommufd_domain *d)
{
	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt),
		.dev_id = binding(dev)->devid,
		.pt_id = to_ifd(parent)->hwpt_id,
		.data_type = IOMMU_HWPT_DATA_VTD_S1,
		.data_len = (uint32_t)args->data_len,
		.data_uptr = (uintptr_t)args->data,
	};
	int rc;

	if (args->data_type != KH_NEST_DATA_VTD_S1 ||
	    args->data_len != sizeof(struct iommu_hwpt_vtd_s1))
		return kh_fail(-EOPNOTSUPP,
			       "iommufd nests only Intel VT-d stage-1 tables (struct "
			       "iommu_hwpt_vtd_s1, %zu bytes)",
			       sizeof(struct iommu_hwpt_vtd_s1));
	rc = kh_ioctl(d->iommufd, IOMMU_HWPT_ALLOC, &hwpt,
		      "IOMMU_HWPT_ALLOC (nested on domain %u) for %s", parent->id,
		      dev->bdev->info.name);
	if (rc < 0)
		return rc;
	d->hwpt_id = hwpt.out_hwpt_id;
	d->dom.ops = &iommufd_nested_ops;
	return 0;
}

static int domain_new(struct kh_device *dev, const struct kh_domain_alloc_args *args,
		      struct iommufd_domain **ret)
{
	struct iommufd_domain *d;

	if (args->type == KH_DOMAIN_IDENTITY)
		return kh_fail(-EOPNOTSUPP, "iommufd gives user space no identity domains");
	d = kh_zalloc(sizeof(*d));
	if (!d)
		return kh_fail(-ENOMEM, "cannot allocate a domain");
	d->iommufd = ctx_fd(dev->ctx);
	d->dom.type = args->type;
	d->dom.flags = args->flags;
	*ret = d;
	return 0;
}

static int iommufd_domain_alloc(struct kh_device *dev, const struct kh_domain_alloc_args *args,
				struct kh_domain *parent, struct kh_domain **out)
{
	struct iommufd_domain *d;

	int rc = domain_new(dev, args, &d);

	if (rc < 0)
		return rc;
	switch (args->type) {
	case KH_DOMAIN_PAGING:
		rc = alloc_paging(dev, args->flags, d);
		break;
	case KH_DOMAIN_NESTED:
		rc = alloc_nested(dev, args, parent, d);
		break;
	default:
		d->dom.ops = &iommufd_blocked_ops;
		rc = 0;
		break;
	}
	if (rc < 0) {
		iommufd_free(&d->dom);
		return rc;
	}
	*out = &d->dom;
	return 0;
}

/* ---- taking a context over ------------------------------------------------------------------- */

static int iommufd_device_kernel_fd(struct kh_device *dev)
{
	return binding(dev)->fd;
}

/* A device: its iommufd device id. A domain: its IOAS and HWPT (0 where it has none). */
static void iommufd_kernel_ids(const struct kh_device *dev, struct kh_domain *dom,
			       uint32_t ret_ids[KH_KERNEL_IDS])
{
	ret_ids[0] = dev ? binding(dev)->devid : to_ifd(dom)->ioas_id;
	ret_ids[1] = dev ? 0 : to_ifd(dom)->hwpt_id;
}

/* The device's descriptor is its cdev, and its id names a device bound in iommufd. */
static int check_device(const struct kh_backend *be, int iommufd, const struct kh_adopt_device *d)
{
	const struct iommufd_bdev *priv = be->devices[kh_device_lookup(be, d->name)].priv;
	struct iommu_hw_info info = {.size = sizeof(info), .dev_id = d->kernel_ids[0]};
	int rc = kh_same_node(d->fd, priv->cdev, "the descriptor kept for the device");

	if (rc == 0 && ioctl(iommufd, IOMMU_GET_HW_INFO, &info))
		rc = kh_fail(errno == ENOENT ? -ESTALE : -errno,
			     "the kernel context holds no device %u (%s) as recorded",
			     d->kernel_ids[0], d->name);
	return rc;
}

/* A query of the HWPT that changes nothing: the kernel names one it lacks with ENOENT. A
 * paging HWPT is asked for the dirty bits of no range, a nested one to invalidate no page. */
static bool hwpt_exists(int iommufd, uint32_t hwpt_id, bool nested)
{
	struct iommu_hwpt_get_dirty_bitmap bitmap = {.size = sizeof(bitmap), .hwpt_id = hwpt_id};
	struct iommu_hwpt_vtd_s1_invalidate none = {0};
	struct iommu_hwpt_invalidate inv = {.size = sizeof(inv),
					    .hwpt_id = hwpt_id,
					    .data_uptr = (uintptr_t)&none,
					    .data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
					    .entry_len = sizeof(none),
					    .entry_num = 1};

	if (nested)
		return ioctl(iommufd, IOMMU_HWPT_INVALIDATE, &inv) == 0 || errno != ENOENT;
	return ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &bitmap) == 0 || errno != ENOENT;
}

static int check_domain(int iommufd, const struct kh_adopt_domain *d)
{
	struct iommu_ioas_iova_ranges ranges = {.size = sizeof(ranges),
						.ioas_id = d->kernel_ids[0]};
	uint32_t hwpt_id = d->kernel_ids[1];

	if (d->kernel_ids[0] && ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &ranges) &&
	    errno != EMSGSIZE)
		return kh_fail(errno == ENOENT ? -ESTALE : -errno,
			       "the kernel context holds no address space %u for domain %u",
			       d->kernel_ids[0], d->id);
	if (hwpt_id && !hwpt_exists(iommufd, hwpt_id, !d->kernel_ids[0]))
		return kh_fail(-ESTALE, "the kernel context holds no HWPT %u for domain %u",
			       hwpt_id, d->id);
	return 0;
}

static int iommufd_ctx_adopt(struct kh_ctx *ctx, int kernel_fd, const struct kh_adopt_device *devs,
			     size_t n_devs, const struct kh_adopt_domain *doms, size_t n_doms)
{
	int rc = kh_same_node(kernel_fd, DEV_IOMMU, "the descriptor kept for the context");

	for (size_t i = 0; i < n_devs && rc == 0; i++)
		rc = check_device(ctx->be, kernel_fd, &devs[i]);
	for (size_t i = 0; i < n_doms && rc == 0; i++)
		rc = check_domain(kernel_fd, &doms[i]);
	if (rc < 0)
		return rc;
	(void)close(ctx_fd(ctx));
	ctx->priv = (void *)(intptr_t)kernel_fd;
	return 0;
}

static int iommufd_adopt_bind(struct kh_ctx *ctx, struct kh_device *dev, int fd,
			      const uint32_t ids[KH_KERNEL_IDS])
{
	struct iommufd_binding *b = kh_zalloc(sizeof(*b));

	(void)ctx;
	if (!b)
		return kh_fail(-ENOMEM, "cannot take %s over", dev->bdev->info.name);
	b->fd = fd;
	b->devid = ids[0];
	dev->priv = b;
	return 0;
}

static int iommufd_adopt_domain(struct kh_device *dev, const struct kh_domain_alloc_args *args,
				struct kh_domain *parent, const uint32_t *ids, int fd,
				struct kh_domain **out)
{
	struct iommufd_domain *d;
	int rc = domain_new(dev, args, &d);

	(void)parent;
	(void)fd; /* the domain lives in the context's descriptor */
	if (rc < 0)
		return rc;
	d->ioas_id = ids ? ids[0] : 0;
	d->hwpt_id = ids ? ids[1] : 0;
	if (args->type == KH_DOMAIN_PAGING) {
		paging_defaults(dev, args->flags, d);
		rc = d->hwpt_id ? hwpt_aperture(dev, d) : 0;
	} else {
		d->dom.ops =
			args->type == KH_DOMAIN_NESTED ? &iommufd_nested_ops : &iommufd_blocked_ops;
	}
	if (rc < 0) {
		free(d);
		return rc;
	}
	*out = &d->dom;
	return 0;
}

/* Attaching a device to the domain it is attached to changes nothing (the kernel's replace
 * sees the same HWPT), and attaches one the kernel holds detached. */
static int iommufd_adopt_settle(struct kh_device *dev)
{
	if (dev->domain && dev->domain->type != KH_DOMAIN_BLOCKED)
		return attach_pt(dev->domain, dev, "taken over");
	(void)detach_pt(dev);
	return 0;
}

/* Whether the IOAS maps the range as recorded: copying it into a scratch IOAS, which pins
 * nothing, succeeds only over mappings covering it whole that allow what prot asks. Only the
 * kernel's answers that the range is not so mapped (ENOENT: not covered whole; EPERM, EINVAL:
 * another protection) say so; any other failure leaves the question open, and the mapping in
 * place rather than torn down under live DMA. */
static int iommufd_adopt_mapped(struct kh_domain *dom, const struct kh_mapping *m)
{
	struct iommufd_domain *d = to_ifd(dom);
	struct iommu_ioas_alloc scratch = {.size = sizeof(scratch)};
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = map_flags(m->prot),
		.src_ioas_id = d->ioas_id,
		.length = m->length,
		.dst_iova = m->iova,
		.src_iova = m->iova,
	};
	int rc = kh_ioctl(d->iommufd, IOMMU_IOAS_ALLOC, &scratch,
			  "IOMMU_IOAS_ALLOC (to check the mappings of domain %u)", dom->id);

	if (rc < 0)
		return rc;
	copy.dst_ioas_id = scratch.out_ioas_id;
	rc = kh_ioctl(d->iommufd, IOMMU_IOAS_COPY, &copy,
		      "IOMMU_IOAS_COPY (to check the mapping at IOVA 0x%" PRIx64 " of domain %u)",
		      m->iova, dom->id);
	destroy_object(d->iommufd, scratch.out_ioas_id);
	if (rc == -ENOENT || rc == -EPERM || rc == -EINVAL)
		return 0;
	return rc < 0 ? rc : 1;
}

/* Dirty tracking as the books say. Switching it on clears the dirty bits of every mapping
 * (iopt_set_dirty_tracking), so where the books say on it is switched on only if the kernel
 * does not track: a read of one mapped page's bit that clears nothing answers, as VT-d and
 * AMD-Vi refuse a bitmap read (EINVAL) of a domain that does not track. With nothing mapped
 * there is neither a bit to lose nor a page to ask about. */
static int iommufd_adopt_dirty(struct kh_domain *dom, bool on, const struct kh_mapping *mapped)
{
	uint64_t page = dom->page_sizes & -dom->page_sizes, bit = 0;
	int rc;

	if (on && mapped &&
	    iommufd_read_dirty(dom, mapped->iova, page, page, &bit, KH_DIRTY_NO_CLEAR) == 0)
		return 0;
	rc = iommufd_set_dirty_tracking(dom, on);
	return rc < 0 ? rc : on && mapped;
}

/* How far past the ids it accounts for the sweep looks: objects made and destroyed again since
 * (a scratch IOAS of a check, a domain an acknowledged call freed) held ids too. */
#define UNHELD_SLACK 16

static bool held_id(const uint32_t *held, size_t n_held, uint32_t id)
{
	for (size_t i = 0; i < n_held; i++)
		if (held[i] == id)
			return true;
	return false;
}

/* -ENOENT where the context has no object id; 1 where the sweep leaves it: a device (its VFIO
 * descriptor's owner unbinds it) or an object in use (an HWPT a device is attached to, an IOAS
 * an HWPT is on: the kernel refuses with EBUSY); 0 once destroyed. */
static int destroy_unheld_one(int iommufd, uint32_t id)
{
	struct iommu_hw_info info = {.size = sizeof(info), .dev_id = id};
	struct iommu_destroy destroy = {.size = sizeof(destroy), .id = id};

	if (ioctl(iommufd, IOMMU_GET_HW_INFO, &info) == 0 || errno != ENOENT)
		return 1;
	if (ioctl(iommufd, IOMMU_DESTROY, &destroy) == 0)
		return 0;
	if (errno == ENOENT || errno == EBUSY)
		return errno == ENOENT ? -ENOENT : 1;
	return kh_fail(-errno, "IOMMU_DESTROY of kernel object %u, which no domain holds", id);
}

/* iommufd gives a new object the lowest id free in its context, from 1 (xa_alloc): one made
 * while k objects lived got an id of at most k + 1. Those were the held ones, the unheld ones
 * with lower ids (found before the scan reaches it) and ones destroyed since, so no unheld
 * object lies past the bound. Passes repeat while one destroys something: an IOAS is free to
 * go once the HWPT on it went. */
static int iommufd_destroy_unheld(struct kh_ctx *ctx, const uint32_t *held, size_t n_held,
				  size_t *ret_destroyed)
{
	size_t destroyed = 0, found, pass;
	uint64_t top = 0;
	int rc;

	for (size_t i = 0; i < n_held; i++)
		top = held[i] > top ? held[i] : top;
	do {
		found = pass = 0;
		for (uint64_t id = 1;
		     id <= (top > n_held + found ? top : n_held + found) + UNHELD_SLACK; id++) {
			if (held_id(held, n_held, (uint32_t)id))
				continue;
			rc = destroy_unheld_one(ctx_fd(ctx), (uint32_t)id);
			if (rc == -ENOENT)
				continue;
			if (rc < 0)
				return rc;
			found++;
			pass += rc == 0;
		}
		destroyed += pass;
	} while (pass);
	*ret_destroyed = destroyed;
	return 0;
}

/* ---- a device descriptor held without a context ------------------------------------------ */

/* Cuts path at its last '/', giving what followed; NULL when it has none. */
static char *cut_last(char *path)
{
	char *slash = strrchr(path, '/');

	if (!slash)
		return NULL;
	*slash = '\0';
	return slash + 1;
}

/* The PCI device whose VFIO cdev fd is, in ret_name: sysfs links the cdev's number to
 * <device>/vfio-dev/vfioN. 1 for a VFIO cdev, 0 for anything else, a negative errno when it
 * cannot tell: the descriptor may then hold a device still attached, which the caller says. */
static int vfio_cdev_device(int fd, char ret_name[KH_NAME_MAX])
{
	char link[64], path[PATH_MAX], real[PATH_MAX], name[KH_NAME_MAX];
	const char *cdev, *dir, *device;
	struct stat st;

	if (fstat(fd, &st) < 0)
		return kh_fail(-errno,
			       "cannot tell whether the descriptor is a VFIO device (fstat)");
	if (!S_ISCHR(st.st_mode))
		return 0;
	(void)snprintf(link, sizeof(link), "/sys/dev/char/%u:%u", major(st.st_rdev),
		       minor(st.st_rdev));
	if (!kh_root_path(link, path, sizeof(path)))
		return kh_fail(-ENAMETOOLONG, "the path of %s is too long", link);
	/* Every VFIO cdev is a driver model device, which sysfs lists: a character device it
	 * does not know is none. */
	if (!realpath(path, real)) {
		if (errno == ENOENT)
			return 0;
		return kh_fail(-errno, "cannot resolve %s to tell whether it is a VFIO device",
			       path);
	}
	cdev = cut_last(real);
	dir = cdev ? cut_last(real) : NULL;
	device = dir ? cut_last(real) : NULL;
	if (!device || strncmp(cdev, "vfio", 4) != 0 || strcmp(dir, "vfio-dev") != 0)
		return 0;
	if (!kh_fits(snprintf(name, sizeof(name), "%s", device), sizeof(name)))
		return kh_fail(-ENAMETOOLONG, "VFIO device %s's name is too long", device);
	memcpy(ret_name, name, KH_NAME_MAX);
	return 1;
}

int kh_device_fd_block(int fd, char ret_name[KH_NAME_MAX])
{
	struct vfio_device_detach_iommufd_pt cmd = {.argsz = sizeof(cmd)};
	char name[KH_NAME_MAX];
	int rc = vfio_cdev_device(fd, name);

	if (rc <= 0)
		return rc;
	rc = kh_ioctl(fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &cmd,
		      "VFIO_DEVICE_DETACH_IOMMUFD_PT of %s (a descriptor held without a context)",
		      name);
	/* EINVAL: the file was never bound to a context (the kernel refuses every ioctl but the
	 * bind on such a file), so no DMA goes through it: nothing to block, and nothing blocked
	 * to report. A bound device not attached answers 0. */
	if (rc == -EINVAL)
		return 0;
	if (rc < 0)
		return rc;
	memcpy(ret_name, name, KH_NAME_MAX);
	return 1;
}

/* IOMMU_IOAS_UNMAP of iova 0 and length U64_MAX empties an IOAS whole (an empty one answers
 * 0); on an id that is no IOAS (another object's, or none) the kernel looks the IOAS up first
 * and refuses with ENOENT, touching nothing, so every id up to max_id can be tried. */
int kh_ctx_fd_release(int kernel_fd, uint32_t max_id, uint64_t *ret_bytes, uint32_t *ret_ioas)
{
	uint64_t bytes = 0;
	uint32_t emptied = 0;

	for (uint64_t id = 1; id <= max_id; id++) {
		struct iommu_ioas_unmap cmd = {
			.size = sizeof(cmd), .ioas_id = (uint32_t)id, .length = UINT64_MAX};

		if (ioctl(kernel_fd, IOMMU_IOAS_UNMAP, &cmd) == 0) {
			bytes += cmd.length;
			emptied++;
		} else if (errno != ENOENT) {
			return kh_fail(-errno,
				       "IOMMU_IOAS_UNMAP of the whole of IOAS %" PRIu64
				       " of a context held without a process's books",
				       id);
		}
	}
	*ret_bytes = bytes;
	*ret_ioas = emptied;
	return 0;
}

static const struct kh_backend_ops iommufd_ops = {
	.kind = KH_BACKEND_IOMMUFD,
	.name = "iommufd",
	.caps = KH_CAP_OPEN_DEVICE | KH_CAP_DMA_REMAPPING | KH_CAP_REPLACE | KH_CAP_DIRTY_TRACKING |
		KH_CAP_NESTING | KH_CAP_COPY | KH_CAP_BLOCKED_DOMAIN | KH_CAP_DELEGATE |
		KH_CAP_ADOPT,
	.probe_devices = iommufd_probe_devices,
	.release = iommufd_release,
	.ctx_open = iommufd_ctx_open,
	.ctx_close = iommufd_ctx_close,
	.ctx_kernel_fd = ctx_fd,
	.bind = iommufd_bind,
	.unbind = iommufd_unbind,
	.device_fd = iommufd_device_fd,
	.device_region = iommufd_device_region,
	.delegate_ctx_fd = iommufd_delegate_ctx_fd,
	.delegate_device_fd = iommufd_delegate_device_fd,
	.domain_alloc = iommufd_domain_alloc,
	.device_kernel_fd = iommufd_device_kernel_fd,
	.kernel_ids = iommufd_kernel_ids,
	.ctx_adopt = iommufd_ctx_adopt,
	.adopt_bind = iommufd_adopt_bind,
	.adopt_domain = iommufd_adopt_domain,
	.adopt_settle = iommufd_adopt_settle,
	.adopt_mapped = iommufd_adopt_mapped,
	.adopt_dirty = iommufd_adopt_dirty,
	.destroy_unheld = iommufd_destroy_unheld,
};

/* A kernel that knows an ioctl looks at its arguments (here: no IOAS 0, ENOENT); one that does
 * not answers ENOTTY. */
static bool kernel_has(int iommufd, unsigned long request, void *arg)
{
	return ioctl(iommufd, request, arg) == 0 || errno != ENOTTY;
}

int kh_backend_open_iommufd(struct kh_backend **out)
{
	struct iommu_ioas_map_file map_file = {.size = sizeof(map_file), .fd = -1};
	struct iommufd_backend *kernel;
	int fd = open(DEV_IOMMU, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return kh_fail(-errno,
			       "cannot open " DEV_IOMMU "; the kernel needs CONFIG_IOMMUFD and an "
			       "IOMMU, and iommud needs to run as root");
	kernel = kh_zalloc(sizeof(*kernel));
	if (!kernel) {
		(void)close(fd);
		return kh_fail(-ENOMEM, "cannot allocate the iommufd backend");
	}
	kernel->paging = iommufd_paging_ops;
	if (kernel_has(fd, IOMMU_IOAS_MAP_FILE, &map_file))
		kernel->paging.map_file = iommufd_map_file;
	(void)close(fd);
	return kh_backend_create(&iommufd_ops, kernel, out);
}
