/* SPDX-License-Identifier: MIT */
/* The sysfs discovery and VFIO region code both VFIO backends share (vfio_common.h). */
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
#include <unistd.h>

#define __user
#include <linux/vfio.h>

#include "alloc.h"
#include "vfio_common.h"

#define SYSFS_PCI "/sys/bus/pci/devices"

bool kh_fits(int written, size_t size)
{
	return written >= 0 && (size_t)written < size;
}

bool kh_root_path(const char *path, char *buf, size_t size)
{
	const char *root = getenv(KH_ROOT_ENV);

	return kh_fits(snprintf(buf, size, "%s%s", root ? root : "", path), size);
}

int kh_ioctl(int fd, unsigned long request, void *arg, const char *fmt, ...)
{
	va_list ap;
	int err;

	if (kh_fail_point())
		err = EIO;
	else if (ioctl(fd, request, arg) == 0)
		return 0;
	else
		err = errno;
	va_start(ap, fmt);
	(void)kh_vfail(-err, fmt, ap);
	va_end(ap);
	return -err;
}

int kh_same_node(int fd, const char *path, const char *what)
{
	struct stat held, node;

	if (fstat(fd, &held) < 0 || stat(path, &node) < 0)
		return kh_fail(-errno, "cannot compare %s with %s", what, path);
	if (!S_ISCHR(held.st_mode) || held.st_rdev != node.st_rdev)
		return kh_fail(-ESTALE, "%s is not %s", what, path);
	return 0;
}

int kh_read_sysfs(const char *dir, const char *name, char *buf, size_t size)
{
	char path[PATH_MAX];
	ssize_t n;
	int fd;

	if (!kh_fits(snprintf(path, sizeof(path), "%s/%s", dir, name), sizeof(path)))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	(void)close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/* The last component of a symlink's target, e.g. the driver's or the group's name. */
static int link_name(const char *dir, const char *name, char *buf, size_t size)
{
	char path[PATH_MAX], target[PATH_MAX];
	const char *slash;
	ssize_t n;

	if (!kh_fits(snprintf(path, sizeof(path), "%s/%s", dir, name), sizeof(path)))
		return -ENAMETOOLONG;
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	slash = strrchr(target, '/');
	return kh_fits(snprintf(buf, size, "%s", slash ? slash + 1 : target), size) ? 0
										    : -ENAMETOOLONG;
}

static int read_reserved_regions(struct kh_bdev *bdev)
{
	char rel[64], path[PATH_MAX], line[256];
	FILE *f;
	int rc = 0;

	(void)snprintf(rel, sizeof(rel), "/sys/kernel/iommu_groups/%u/reserved_regions",
		       bdev->info.group);
	if (!kh_root_path(rel, path, sizeof(path)))
		return kh_fail(-ENAMETOOLONG, "the path of %s's reserved regions is too long",
			       bdev->info.name);
	f = fopen(path, "re");
	if (!f)
		return 0; /* an IOMMU that reserves nothing has no file */
	while (fgets(line, sizeof(line), f)) {
		struct kh_iova_range range, *grown;

		if (sscanf(line, "%" SCNx64 " %" SCNx64, &range.start, &range.last) != 2)
			continue;
		grown = kh_realloc_array(bdev->resv, bdev->n_resv + 1, sizeof(*grown));
		if (!grown) {
			rc = kh_fail(-ENOMEM, "cannot record reserved regions of %s",
				     bdev->info.name);
			break;
		}
		bdev->resv = grown;
		grown[bdev->n_resv++] = range;
	}
	(void)fclose(f);
	return rc;
}

static uint16_t read_id(const char *dir, const char *name)
{
	char buf[32];

	return kh_read_sysfs(dir, name, buf, sizeof(buf)) == 0 ? (uint16_t)strtoul(buf, NULL, 16)
							       : 0;
}

static int add_pci_device(struct kh_backend *be, const struct kh_vfio_scan_ops *ops,
			  const char *pci_dir, const char *bdf)
{
	char dir[PATH_MAX], group[32], driver[KH_NAME_MAX] = "";
	struct kh_bdev *bdev;
	void *priv = NULL;
	int rc;

	if (!kh_fits(snprintf(dir, sizeof(dir), "%s/%s", pci_dir, bdf), sizeof(dir)))
		return 0;
	(void)link_name(dir, "driver", driver, sizeof(driver));
	if (strcmp(driver, "vfio-pci"))
		return 0; /* only devices handed to VFIO can be used */
	if (link_name(dir, "iommu_group", group, sizeof(group)))
		return 0; /* no IOMMU in front of it: nothing to manage */
	rc = ops->accept(dir, (uint32_t)strtoul(group, NULL, 10), &priv);
	if (rc <= 0)
		return rc;
	rc = kh_backend_add_device(be, &bdev);
	if (rc < 0) {
		free(priv);
		return rc;
	}
	bdev->priv = priv;
	(void)snprintf(bdev->info.name, sizeof(bdev->info.name), "%.*s", KH_NAME_MAX - 1, bdf);
	(void)snprintf(bdev->info.driver, sizeof(bdev->info.driver), "%s", driver);
	bdev->info.group = (uint32_t)strtoul(group, NULL, 10);
	bdev->info.vendor = read_id(dir, "vendor");
	bdev->info.device = read_id(dir, "device");
	ops->probe_hw(bdev);
	return read_reserved_regions(bdev);
}

int kh_vfio_scan(struct kh_backend *be, const struct kh_vfio_scan_ops *ops)
{
	char pci_dir[PATH_MAX];
	struct dirent **entries;
	int n, rc = 0;

	if (!kh_root_path(SYSFS_PCI, pci_dir, sizeof(pci_dir)))
		return kh_fail(-ENAMETOOLONG, "the path of the PCI devices is too long");
	/* PCI addresses sort into bus order, which stays put across boots. */
	n = scandir(pci_dir, &entries, NULL, alphasort);
	if (n < 0)
		return kh_fail(-errno, "cannot list PCI devices in %s", pci_dir);
	for (int i = 0; i < n; i++) {
		if (rc == 0 && entries[i]->d_name[0] != '.')
			rc = add_pci_device(be, ops, pci_dir, entries[i]->d_name);
		free(entries[i]);
	}
	free(entries);
	return rc;
}

int kh_vfio_region_info(int vfio_fd, uint32_t index, struct kh_region *out, const char *name)
{
	struct vfio_region_info info = {.argsz = sizeof(info), .index = index};
	int rc = kh_ioctl(vfio_fd, VFIO_DEVICE_GET_REGION_INFO, &info,
			  "VFIO_DEVICE_GET_REGION_INFO of region %u of %s", index, name);

	if (rc < 0)
		return rc;
	out->offset = info.offset;
	out->size = info.size;
	out->flags = ((info.flags & VFIO_REGION_INFO_FLAG_READ) ? KH_REGION_READ : 0) |
		     ((info.flags & VFIO_REGION_INFO_FLAG_WRITE) ? KH_REGION_WRITE : 0) |
		     ((info.flags & VFIO_REGION_INFO_FLAG_MMAP) ? KH_REGION_MMAP : 0);
	return 0;
}

int kh_vfio_region(int vfio_fd, uint32_t index, struct kh_region *out)
{
	return kh_vfio_region_info(vfio_fd, index, out, "a VFIO device fd");
}
