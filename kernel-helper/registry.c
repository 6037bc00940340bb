/* SPDX-License-Identifier: MIT */
/*
 * The backend registry: every backend by name, and which one "auto" takes on this machine
 * (kh.h, "The registry"). Choosing looks only at the machine's /sys and /dev, under the root
 * tests may set (vfio_common.h), so a test can show it any machine.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <kh/kh_ops.h>

#include "vfio_common.h"

/* What the machine offers a backend. */
struct machine {
	bool iommufd; /* /dev/iommu */
	bool iommu;   /* an IOMMU driver registered a unit in /sys/class/iommu */
	bool vfio;    /* VFIO's container, /dev/vfio/vfio */
};

/* Each entry checks that the machine can serve it, or says why not and what to do. */
struct backend_entry {
	const char *name;
	int (*check)(const struct machine *m);
	int (*open)(const char *topology, struct kh_backend **out);
};

#define ENABLE_IOMMU                                                                               \
	"the machine reports no IOMMU (/sys/class/iommu is empty): enable VT-d or AMD-Vi in the "  \
	"firmware and boot with intel_iommu=on or amd_iommu=on"

static int check_iommufd(const struct machine *m)
{
	if (m->iommufd)
		return 0;
	if (!m->iommu)
		return kh_fail(-ENODEV, "iommufd cannot work here: " ENABLE_IOMMU);
	return kh_fail(-ENODEV,
		       "iommufd cannot work here: there is no /dev/iommu, so the kernel lacks "
		       "CONFIG_IOMMUFD (or modprobe iommufd); use the vfio-type1 backend, which "
		       "needs only VFIO");
}

static int check_vfio_type1(const struct machine *m)
{
	if (!m->iommu)
		return kh_fail(-ENODEV, "vfio-type1 cannot work here: " ENABLE_IOMMU);
	if (!m->vfio)
		return kh_fail(-ENODEV,
			       "vfio-type1 cannot work here: there is no /dev/vfio/vfio; load VFIO "
			       "(modprobe vfio-pci) and bind the devices to it (echo vfio-pci > "
			       "/sys/bus/pci/devices/BDF/driver_override; echo BDF > "
			       "/sys/bus/pci/drivers_probe)");
	return 0;
}

static int check_emulated(const struct machine *m)
{
	(void)m;
	return 0;
}

static int open_iommufd(const char *topology, struct kh_backend **out)
{
	(void)topology;
	return kh_backend_open_iommufd(out);
}

static int open_vfio_type1(const char *topology, struct kh_backend **out)
{
	(void)topology;
	return kh_backend_open_vfio_type1(out);
}

/* In the order "auto" prefers them. */
static const struct backend_entry registry[] = {
	{"iommufd", check_iommufd, open_iommufd},
	{"vfio-type1", check_vfio_type1, open_vfio_type1},
	{"emulated", check_emulated, kh_backend_open_emulated},
};
#define N_BACKENDS (sizeof(registry) / sizeof(registry[0]))

const char *kh_backend_registered(size_t i)
{
	return i < N_BACKENDS ? registry[i].name : NULL;
}

static bool exists(const char *path)
{
	char buf[PATH_MAX];

	return kh_root_path(path, buf, sizeof(buf)) && access(buf, F_OK) == 0;
}

static bool dir_has_entries(const char *path)
{
	char buf[PATH_MAX];
	struct dirent *de;
	bool found = false;
	DIR *d;

	if (!kh_root_path(path, buf, sizeof(buf)) || !(d = opendir(buf)))
		return false;
	while (!found && (de = readdir(d)))
		found = de->d_name[0] != '.';
	(void)closedir(d);
	return found;
}

static void look_at_machine(struct machine *m)
{
	m->iommufd = exists("/dev/iommu");
	m->iommu = dir_has_entries("/sys/class/iommu");
	m->vfio = exists("/dev/vfio/vfio");
}

/* "auto": the first kernel backend the machine serves; the emulation only without an IOMMU. */
static int choose_auto(const struct machine *m, const struct backend_entry **ret)
{
	if (m->iommufd)
		*ret = &registry[0];
	else if (m->iommu && m->vfio)
		*ret = &registry[1];
	else if (!m->iommu)
		*ret = &registry[2];
	else
		return kh_fail(
			-ENODEV,
			"the machine has an IOMMU but neither /dev/iommu nor /dev/vfio/vfio; "
			"load VFIO (modprobe vfio-pci) and bind the devices to vfio-pci. The "
			"emulated IOMMU is not chosen for you here: it would remap nothing "
			"(set backend = emulated to run it anyway)");
	return 0;
}

static int choose(const char *name, const struct backend_entry **ret)
{
	struct machine m;
	char known[64];
	size_t used = 0;
	int rc;

	look_at_machine(&m);
	if (strcmp(name, "auto") == 0)
		return choose_auto(&m, ret);
	for (size_t i = 0; i < N_BACKENDS; i++) {
		if (strcmp(name, registry[i].name) == 0) {
			rc = registry[i].check(&m);
			if (rc == 0)
				*ret = &registry[i];
			return rc;
		}
		used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
					 registry[i].name);
	}
	return kh_fail(-EINVAL, "there is no backend called \"%s\"; the backends are auto, %s",
		       name, known);
}

int kh_backend_choose(const char *name, const char **ret_name)
{
	const struct backend_entry *entry;
	int rc = choose(name, &entry);

	if (rc == 0)
		*ret_name = entry->name;
	return rc;
}

int kh_backend_open(const char *name, const char *topology, struct kh_backend **out)
{
	const struct backend_entry *entry;
	int rc = choose(name, &entry);

	return rc < 0 ? rc : entry->open(topology, out);
}
