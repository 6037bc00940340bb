// SPDX-License-Identifier: MIT
/* The descriptor numbers iommuctl delegate exec starts a VM manager with, and the command line
 * that names them: each fd lands at its slot whatever held the slot before (one of the fds
 * itself, or something else), open across exec, nothing else above them stays open, and the
 * placeholders say those numbers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd-slots.h"
#include "harness.h"

static ino_t inode_of(int fd)
{
	struct stat st;

	CHECK_EQ(fstat(fd, &st), 0);
	return st.st_ino;
}

/* Three files whose fds sit exactly where the others must go, in the reverse order. */
TEST(fds_land_at_their_slots)
{
	int fds[3], high[3];
	ino_t want[3];

	for (int i = 0; i < 3; i++) {
		int fd = memfd_create("slot", MFD_CLOEXEC);

		CHECK(fd >= 0);
		/* Above the slots, so placing one below closes none of them. */
		high[i] = fcntl(fd, F_DUPFD_CLOEXEC, 50);
		CHECK(high[i] >= 0);
		(void)close(fd);
		want[i] = inode_of(high[i]);
	}
	for (int i = 0; i < 3; i++) {
		fds[i] = FD_SLOTS_FIRST + 2 - i;
		(void)close(fds[i]);
		CHECK_EQ(dup3(high[i], fds[i], O_CLOEXEC), fds[i]);
		(void)close(high[i]);
	}
	CHECK_EQ(fd_slots_place(fds, 3), 0);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(inode_of(FD_SLOTS_FIRST + i), want[i]);
		CHECK_EQ(fcntl(FD_SLOTS_FIRST + i, F_GETFD) & FD_CLOEXEC, 0);
		(void)close(FD_SLOTS_FIRST + i);
	}
}

/* A descriptor iommuctl inherited without close-on-exec (a manager's socket or log) does not
 * reach the VMM. */
TEST(inherited_descriptors_are_closed)
{
	int fd = memfd_create("delegated", MFD_CLOEXEC), inherited = memfd_create("inherited", 0);
	int high = fcntl(inherited, F_DUPFD, 60);

	CHECK(fd >= 0 && inherited >= 0 && high >= 0);
	CHECK_EQ(fd_slots_place(&fd, 1), 0);
	CHECK(fcntl(FD_SLOTS_FIRST, F_GETFD) >= 0);
	for (int closed = FD_SLOTS_FIRST + 1; closed <= high; closed++)
		CHECK(fcntl(closed, F_GETFD) < 0 && errno == EBADF);
	(void)close(FD_SLOTS_FIRST);
}

TEST(placeholders_name_the_slots)
{
	char *argv[] = {"qemu",
			"-object",
			"iommufd,id=i0,fd={iommufd}",
			"-device",
			"vfio-pci,iommufd=i0,fd={device0}",
			"fd={device1}",
			"{other}"};
	const char *bad = NULL;
	char **out = fd_slots_substitute(argv, 7, 3, &bad);

	CHECK(out != NULL);
	CHECK(strcmp(out[2], "iommufd,id=i0,fd=3") == 0);
	CHECK(strcmp(out[4], "vfio-pci,iommufd=i0,fd=4") == 0);
	CHECK(strcmp(out[5], "fd=5") == 0);
	CHECK(strcmp(out[6], "{other}") == 0);
	CHECK(out[7] == NULL);
	for (int i = 0; out[i]; i++)
		free(out[i]);
	free(out);
}

TEST(placeholder_past_the_fds_is_refused)
{
	char *argv[] = {"qemu", "fd={device1}"};
	const char *bad = NULL;

	CHECK(fd_slots_substitute(argv, 2, 2, &bad) == NULL);
	CHECK(bad == argv[1]);
}
