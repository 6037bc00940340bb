/* SPDX-License-Identifier: MIT */
/*
 * The backend registry's choice, shown fake machines: a directory standing for / (set in
 * IOMMUD_TEST_ROOT) with only the files the choice looks at. "auto" must never take the
 * emulated IOMMU on a machine that reports an IOMMU, and each refusal must say why and what to
 * do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kh/kh.h>

#include "harness.h"

/* What a fake machine has. */
enum {
	HAS_IOMMU = 1 << 0,   /* /sys/class/iommu/dmar0 */
	HAS_IOMMUFD = 1 << 1, /* /dev/iommu */
	HAS_VFIO = 1 << 2,    /* /dev/vfio/vfio */
	ALL_SHAPES = 1 << 3,
};

static void make(const char *root, const char *rel, bool dir)
{
	char path[512];

	(void)snprintf(path, sizeof(path), "%s%s", root, rel);
	if (dir) {
		CHECK_EQ(mkdir(path, 0755), 0);
	} else {
		int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);

		CHECK(fd >= 0);
		(void)close(fd);
	}
}

/* A fake machine of that shape under a fresh directory, made the root kernel-helper sees. The
 * case runs in a child of its own, which removes nothing: the directory goes at exit. */
static void fake_machine(unsigned shape, char root[64])
{
	(void)snprintf(root, 64, "/tmp/kh-registry-XXXXXX");
	CHECK(mkdtemp(root) != NULL);
	make(root, "/sys", true);
	make(root, "/sys/class", true);
	make(root, "/sys/class/iommu", true);
	make(root, "/dev", true);
	make(root, "/dev/vfio", true);
	if (shape & HAS_IOMMU)
		make(root, "/sys/class/iommu/dmar0", true);
	if (shape & HAS_IOMMUFD)
		make(root, "/dev/iommu", false);
	if (shape & HAS_VFIO)
		make(root, "/dev/vfio/vfio", false);
	CHECK_EQ(setenv("IOMMUD_TEST_ROOT", root, 1), 0);
}

static void remove_machine(const char *root)
{
	char cmd[128];

	(void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	CHECK_EQ(system(cmd), 0);
	CHECK_EQ(unsetenv("IOMMUD_TEST_ROOT"), 0);
}

/* What name gives on a machine of shape: the backend's name, or "refused: MESSAGE". */
static const char *choice(unsigned shape, const char *name, char *buf, size_t size)
{
	char root[64];
	const char *chosen;

	fake_machine(shape, root);
	if (kh_backend_choose(name, &chosen) == 0)
		(void)snprintf(buf, size, "%s", chosen);
	else
		(void)snprintf(buf, size, "refused: %s", kh_last_error());
	remove_machine(root);
	return buf;
}

static void check_has(const char *text, const char *phrase)
{
	if (!strstr(text, phrase)) {
		(void)fprintf(stderr, "\"%s\" lacks \"%s\"\n", text, phrase);
		abort();
	}
}

TEST(auto_never_emulates_a_machine_with_an_iommu)
{
	char buf[600];

	for (unsigned shape = 0; shape < ALL_SHAPES; shape++) {
		const char *got = choice(shape, "auto", buf, sizeof(buf));

		(void)printf("shape 0x%x: auto gives %s\n", shape, got);
		if (shape & HAS_IOMMU)
			CHECK(strcmp(got, "emulated") != 0);
	}
}

TEST(auto_prefers_iommufd_then_type1_then_emulation)
{
	char buf[600];

	CHECK(strcmp(choice(HAS_IOMMU | HAS_IOMMUFD | HAS_VFIO, "auto", buf, sizeof(buf)),
		     "iommufd") == 0);
	CHECK(strcmp(choice(HAS_IOMMU | HAS_VFIO, "auto", buf, sizeof(buf)), "vfio-type1") == 0);
	CHECK(strcmp(choice(0, "auto", buf, sizeof(buf)), "emulated") == 0);
	/* A machine without an IOMMU has no VFIO devices to offer either. */
	CHECK(strcmp(choice(HAS_VFIO, "auto", buf, sizeof(buf)), "emulated") == 0);
}

TEST(auto_refuses_an_iommu_it_cannot_reach)
{
	char buf[600];

	choice(HAS_IOMMU, "auto", buf, sizeof(buf));
	check_has(buf, "refused: ");
	check_has(buf, "modprobe vfio-pci");
	check_has(buf, "remap nothing");
	check_has(buf, "backend = emulated");
}

TEST(explicit_backends_say_why_they_cannot_work)
{
	char buf[600];

	check_has(choice(HAS_IOMMU | HAS_VFIO, "iommufd", buf, sizeof(buf)), "CONFIG_IOMMUFD");
	check_has(buf, "use the vfio-type1 backend");
	check_has(choice(0, "iommufd", buf, sizeof(buf)), "intel_iommu=on");
	check_has(choice(HAS_VFIO, "vfio-type1", buf, sizeof(buf)),
		  "refused: vfio-type1 cannot work here: the machine reports no IOMMU");
	check_has(buf, "enable VT-d or AMD-Vi in the firmware");
	check_has(choice(HAS_IOMMU, "vfio-type1", buf, sizeof(buf)), "modprobe vfio-pci");
	check_has(buf, "drivers_probe");
	check_has(choice(HAS_IOMMU | HAS_IOMMUFD, "nonsense", buf, sizeof(buf)),
		  "no backend called \"nonsense\"; the backends are auto, iommufd, vfio-type1, "
		  "emulated");
	/* What a machine does serve is taken as asked, the emulation included. */
	CHECK(strcmp(choice(HAS_IOMMU | HAS_IOMMUFD, "iommufd", buf, sizeof(buf)), "iommufd") == 0);
	CHECK(strcmp(choice(HAS_IOMMU | HAS_VFIO, "vfio-type1", buf, sizeof(buf)), "vfio-type1") ==
	      0);
	CHECK(strcmp(choice(HAS_IOMMU, "emulated", buf, sizeof(buf)), "emulated") == 0);
}

TEST(registry_names_every_backend_once)
{
	const char *expected[] = {"iommufd", "vfio-type1", "emulated"};
	size_t i;

	for (i = 0; kh_backend_registered(i); i++) {
		CHECK(i < 3);
		CHECK(strcmp(kh_backend_registered(i), expected[i]) == 0);
	}
	CHECK_EQ(i, 3);
}
