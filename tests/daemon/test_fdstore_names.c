// SPDX-License-Identifier: MIT
/* The store's names for an anonymous session's devices, which the next daemon reads back, and
 * giving up a stored descriptor that holds no device: closed, nothing to block. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fdstore.h"
#include "harness.h"

TEST(anon_name_reads_back)
{
	const uint32_t pairs[][2] = {{1, 1}, {7, 3}, {UINT32_MAX, UINT32_MAX}};
	char name[FDSTORE_ANON_NAME];
	uint32_t session, dev_id;

	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		fdstore_anon_name(pairs[i][0], pairs[i][1], name);
		CHECK(fdstore_anon_parse(name, &session, &dev_id));
		CHECK_EQ(session, pairs[i][0]);
		CHECK_EQ(dev_id, pairs[i][1]);
	}
	fdstore_anon_name(7, 3, name);
	CHECK(strcmp(name, "anon7.device3") == 0);
}

TEST(anon_parse_refuses_other_names)
{
	static const char *const others[] = {
		"lease7.device3",	  "anon7.iommu",    "anon7.device",    "anon7.device3x",
		"anon07.device3",	  "anon7.device03", "anon-1.device3",  "anon+7.device3",
		"anon4294967296.device1", "state.12",	    "anon7.device3.x", "",
	};
	uint32_t session = 5, dev_id = 5;

	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
		CHECK(!fdstore_anon_parse(others[i], &session, &dev_id));
	/* ret_ outputs are written only on success. */
	CHECK_EQ(session, 5);
	CHECK_EQ(dev_id, 5);
}

/* A descriptor that holds no device (a memory file, /dev/null: a character device other than a
 * VFIO one) is closed with nothing blocked, and the device name is left alone. */
TEST(give_up_without_device_closes_only)
{
	int fds[2] = {memfd_create("stray", MFD_CLOEXEC), open("/dev/null", O_RDWR | O_CLOEXEC)};
	char device[KH_NAME_MAX] = "untouched";

	for (size_t i = 0; i < 2; i++) {
		CHECK(fds[i] >= 0);
		CHECK_EQ(fdstore_give_up(fds[i], "anon1.device1", device), 0);
		CHECK(fcntl(fds[i], F_GETFD) < 0 && errno == EBADF);
	}
	CHECK(strcmp(device, "untouched") == 0);
}
