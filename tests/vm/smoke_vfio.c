/* SPDX-License-Identifier: MIT */
/*
 * Smoke test of the VM tier: proves that run-vm.sh hands every test the guest it promises: the
 * edu devices bound to vfio-pci behind the IOMMU model it was asked for, each group's VFIO file
 * and the container (/dev/vfio/vfio) on every kernel, the modules it loaded live, and iommufd
 * with device cdevs where the kernel has it: always on a kernel with everything built in, and on
 * one that takes VFIO from modules (Debian 12's) only if iommufd is among them. It only looks at
 * the file system: talking to iommufd or VFIO through ioctls is kernel-helper's job alone.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SKIP	    77
#define PCI_DEVICES "/sys/bus/pci/devices"
#define VFIO_CDEVS  "/dev/vfio/devices"
#define VFIO_DIR    "/dev/vfio"
#define MIN_EDUS    2 /* run-vm.sh adds at least two, in groups of their own */

static int failures;

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)fputs("smoke_vfio: ", stderr);
	(void)vfprintf(stderr, fmt, ap);
	(void)fputc('\n', stderr);
	va_end(ap);
	failures++;
}

/* Reads a one-line sysfs attribute such as "0x1234\n" into buf, without the newline. */
static bool read_attr(const char *dev, const char *attr, char *buf, size_t size)
{
	char path[PATH_MAX];
	FILE *f;
	bool ok;

	(void)snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", dev, attr);
	f = fopen(path, "re");
	if (!f)
		return false;
	ok = fgets(buf, (int)size, f) != NULL;
	(void)fclose(f);
	if (ok)
		buf[strcspn(buf, "\n")] = '\0';
	return ok;
}

/* The last component of a sysfs link, such as the driver's name; "" if there is no link. */
static const char *link_name(const char *dev, const char *link, char *buf, size_t size)
{
	char path[PATH_MAX];
	ssize_t n;

	(void)snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", dev, link);
	n = readlink(path, buf, size - 1);
	if (n < 0)
		return "";
	buf[n] = '\0';
	return strrchr(buf, '/') ? strrchr(buf, '/') + 1 : buf;
}

/*
 * Each model names its sysfs IOMMU device its own way: dmarN, ivhdN, or the BDF of the
 * virtio-iommu, under whose virtioN device it sits. link is the whole link target, name its end.
 */
static bool iommu_matches(const char *model, const char *link, const char *name)
{
	if (strcmp(model, "intel") == 0)
		return strncmp(name, "dmar", 4) == 0;
	if (strcmp(model, "amd") == 0)
		return strncmp(name, "ivhd", 4) == 0;
	if (strcmp(model, "virtio") == 0)
		return strstr(link, "/virtio") != NULL;
	return false;
}

static bool check_char_device(const char *path, const char *missing_means)
{
	struct stat st;

	if (stat(path, &st) != 0) {
		fail("%s: %s (%s)", path, strerror(errno), missing_means);
		return false;
	}
	if (!S_ISCHR(st.st_mode)) {
		fail("%s is not a character device", path);
		return false;
	}
	return true;
}

/* Each module /init loaded (run-vm.sh --modules) is in the kernel and done initialising. */
static void check_modules(const char *modules)
{
	char list[1024], state[32], path[PATH_MAX];
	char *save = NULL;

	(void)snprintf(list, sizeof(list), "%s", modules);
	for (char *m = strtok_r(list, " ", &save); m; m = strtok_r(NULL, " ", &save)) {
		FILE *f;

		(void)snprintf(path, sizeof(path), "/sys/module/%s/initstate", m);
		f = fopen(path, "re");
		if (!f || !fgets(state, sizeof(state), f) || strcmp(state, "live\n") != 0)
			fail("module %s is not live: see /init's insmod line in console.log", m);
		if (f)
			(void)fclose(f);
	}
}

static void check_iommufd(void)
{
	int fd;

	if (!check_char_device("/dev/iommu", "is CONFIG_IOMMUFD set in the guest kernel?"))
		return;
	fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fail("cannot open /dev/iommu: %s", strerror(errno));
		return;
	}
	(void)close(fd);
}

/*
 * A kernel with everything built in must have iommufd (tests/vm/README.md, "Kernel"); one that
 * takes VFIO from modules has it only as a module among them, as distributions build it.
 */
static bool wants_iommufd(const char *modules)
{
	char padded[1024];

	if (!modules || !*modules)
		return true;
	(void)snprintf(padded, sizeof(padded), " %s ", modules);
	return strstr(padded, " iommufd ") != NULL;
}

/* Every edu and the e1000e should have a cdev. */
static void check_vfio_cdevs(int edus)
{
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;
	int count = 0;
	DIR *dir;

	dir = opendir(VFIO_CDEVS);
	if (!dir) {
		fail(VFIO_CDEVS ": %s (is CONFIG_VFIO_DEVICE_CDEV set?)", strerror(errno));
		return;
	}
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, "vfio", 4) != 0)
			continue;
		(void)snprintf(path, sizeof(path), VFIO_CDEVS "/%s", de->d_name);
		if (stat(path, &st) == 0 && S_ISCHR(st.st_mode))
			count++;
	}
	closedir(dir);
	(void)printf("smoke_vfio: %d vfio device cdevs\n", count);
	if (count < edus + 1)
		fail("%d vfio device cdevs in " VFIO_CDEVS
		     ", want at least %d (%d edu, one e1000e)",
		     count, edus + 1, edus);
}

/* Returns how many edu devices there are. */
static int check_edus(const char *model)
{
	char vendor[16], device[16], driver_buf[PATH_MAX], iommu_buf[PATH_MAX];
	char group_buf[PATH_MAX], group_file[PATH_MAX];
	const char *driver, *iommu, *group;
	struct dirent *de;
	int count = 0;
	DIR *dir;

	dir = opendir(PCI_DEVICES);
	if (!dir) {
		fail(PCI_DEVICES ": %s", strerror(errno));
		return 0;
	}
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.' ||
		    !read_attr(de->d_name, "vendor", vendor, sizeof(vendor)) ||
		    !read_attr(de->d_name, "device", device, sizeof(device)))
			continue;
		if (strcmp(vendor, "0x1234") != 0 || strcmp(device, "0x11e8") != 0)
			continue;
		count++;
		driver = link_name(de->d_name, "driver", driver_buf, sizeof(driver_buf));
		iommu = link_name(de->d_name, "iommu", iommu_buf, sizeof(iommu_buf));
		(void)printf("smoke_vfio: edu %s driver %s iommu %s\n", de->d_name,
			     *driver ? driver : "(none)", *iommu ? iommu : "(none)");
		if (strcmp(driver, "vfio-pci") != 0)
			fail("edu %s is bound to %s, not vfio-pci", de->d_name,
			     *driver ? driver : "no driver");
		if (!iommu_matches(model, iommu_buf, iommu))
			fail("edu %s is behind IOMMU '%s', not a %s one", de->d_name, iommu, model);
		group = link_name(de->d_name, "iommu_group", group_buf, sizeof(group_buf));
		(void)snprintf(group_file, sizeof(group_file), VFIO_DIR "/%s", group);
		if (!*group)
			fail("edu %s has no IOMMU group", de->d_name);
		else
			(void)check_char_device(group_file, "the edu's VFIO group file");
	}
	closedir(dir);
	if (count < MIN_EDUS)
		fail("found %d edu devices (1234:11e8), want at least %d", count, MIN_EDUS);
	return count;
}

int main(void)
{
	const char *model = getenv("IOMMUD_VM_IOMMU");
	const char *modules = getenv("IOMMUD_VM_MODULES");
	bool iommufd = wants_iommufd(modules);
	int edus;

	/* Outside run-vm.sh's guest none of this holds, and the host is not to be judged. */
	if (!model) {
		(void)printf("smoke_vfio: IOMMUD_VM_IOMMU is unset: not in the VM tier's guest, "
			     "skipping\n");
		return SKIP;
	}
	check_modules(modules ? modules : "");
	(void)check_char_device(VFIO_DIR "/vfio", "is CONFIG_VFIO_CONTAINER set?");
	/* Built in or loaded, type1 shows its parameters there: the container's only IOMMU. */
	if (access("/sys/module/vfio_iommu_type1", F_OK) != 0)
		fail("no /sys/module/vfio_iommu_type1: is CONFIG_VFIO_IOMMU_TYPE1 set?");
	edus = check_edus(model);
	if (iommufd) {
		check_iommufd();
		check_vfio_cdevs(edus);
	} else if (access("/dev/iommu", F_OK) == 0) {
		fail("/dev/iommu exists, but iommufd is not among the modules /init loaded (%s)",
		     modules);
	}
	if (failures)
		return EXIT_FAILURE;
	(void)printf("smoke_vfio: %s guest is as run-vm.sh promises (%s)\n", model,
		     iommufd ? "iommufd, device cdevs, VFIO groups"
			     : "VFIO container and groups, no iommufd");
	return EXIT_SUCCESS;
}
