/* SPDX-License-Identifier: MIT */
/*
 * What both VFIO backends (iommufd and vfio-type1) share: the machine's paths (with the root
 * tests may move), finding PCI devices handed to vfio-pci in sysfs with their IOMMU group and
 * reserved regions, the layout of a VFIO device's regions, and issuing one ioctl with its
 * failure described. The only VFIO ioctl this part issues itself is
 * VFIO_DEVICE_GET_REGION_INFO; iommufd_backend.c and vfio_type1_backend.c issue the rest.
 *
 * Ownership: kh_vfio_scan adds devices to the backend (the core owns the array); the priv each
 * accept gives is the backend's, freed by its release.
 */
#ifndef KH_VFIO_COMMON_H
#define KH_VFIO_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include <kh/kh_ops.h>

/* Tests point kernel-helper at a fake machine with this variable: every /sys and /dev path is
 * looked up under it (docs/operations.md, "Choosing a backend"). Never set in production. */
#define KH_ROOT_ENV "IOMMUD_TEST_ROOT"

/* path ("/dev/iommu") under the root tests may set, in buf; false if it does not fit. */
bool kh_root_path(const char *path, char *buf, size_t size);

/* snprintf's result checked to fit: a path too long for its buffer is refused, not cut. */
bool kh_fits(int written, size_t size);

/* Executes one ioctl its caller chose (any IOMMU or VFIO request: the caller's file is the one
 * that issues it, docs/coding-style.md); on failure records what the kernel said and what was
 * being done, and gives the negative errno. Each call is an injection point, so tests can make
 * any step fail. */
int kh_ioctl(int fd, unsigned long request, void *arg, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* 0 when fd is the character device at path; -ESTALE (what says whose fd it is) when it is
 * another file. How a take-over checks a descriptor kept for it. */
int kh_same_node(int fd, const char *path, const char *what);

/* A file of a sysfs directory, its first line without the newline. */
int kh_read_sysfs(const char *dir, const char *name, char *buf, size_t size);

/* How a backend takes part in kh_vfio_scan. */
struct kh_vfio_scan_ops {
	/* Whether a device bound to vfio-pci (sysdir: its sysfs directory; group: its IOMMU
	 * group) suits the backend:
	 * 1 with the backend's state for it in *ret_priv, 0 to pass it over, or an error. */
	int (*accept)(const char *sysdir, uint32_t group, void **ret_priv);
	/* Fill bdev->info.hw; the device is recorded and its priv set. */
	void (*probe_hw)(struct kh_bdev *bdev);
};

/* Adds every PCI device that is bound to vfio-pci, sits behind an IOMMU (has an IOMMU group)
 * and that the backend accepts, in bus order, with its ids, group and reserved regions. */
int kh_vfio_scan(struct kh_backend *be, const struct kh_vfio_scan_ops *ops);

/* The layout of region index of an open VFIO device; name says whose it is in messages. */
int kh_vfio_region_info(int vfio_fd, uint32_t index, struct kh_region *out, const char *name);

#endif
