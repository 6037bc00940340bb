/* SPDX-License-Identifier: MIT */
/*
 * The one rule the tests of mapping by descriptor share: which running kernels have
 * IOMMU_IOAS_MAP_FILE, so that an iommufd backend must offer it.
 */
#ifndef IOMMUD_TESTS_KERNEL_MAPS_FILES_H
#define IOMMUD_TESTS_KERNEL_MAPS_FILES_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/utsname.h>

/* Whether the running kernel's iommufd maps files by descriptor: Linux 6.13 and later. */
static inline bool kernel_maps_files(void)
{
	struct utsname u;
	unsigned major = 0, minor = 0;

	if (uname(&u) || sscanf(u.release, "%u.%u", &major, &minor) != 2)
		return false;
	return major > 6 || (major == 6 && minor >= 13);
}

#endif
