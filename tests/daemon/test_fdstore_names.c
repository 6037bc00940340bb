// SPDX-License-Identifier: MIT
/* The store's names for an anonymous session's devices and context, which the next daemon reads
 * back, and giving up a stored descriptor that holds no device or context: closed, nothing to
 * block, nothing released. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fdstore.h"
#include "harness.h"

/* A kind of anonymous session's name: how it is written and read back, and how the other kind
 * is read, which must not take it. */
struct kind {
	void (*name)(uint32_t session, uint32_t number, char name[FDSTORE_ANON_NAME]);
	bool (*parse)(const char *name, uint32_t *ret_session, uint32_t *ret_number);
	bool (*other_parse)(const char *name, uint32_t *ret_session, uint32_t *ret_number);
};

static const struct kind device_kind = {fdstore_anon_name, fdstore_anon_parse,
					fdstore_anon_ctx_parse};
static const struct kind ctx_kind = {fdstore_anon_ctx_name, fdstore_anon_ctx_parse,
				     fdstore_anon_parse};

/* Also that session 7's name with number 3 is written as seven_three says. */
static void check_reads_back(const struct kind *k, const char *seven_three)
{
	const uint32_t pairs[][2] = {{1, 0}, {1, 1}, {7, 3}, {UINT32_MAX, UINT32_MAX}};
	char name[FDSTORE_ANON_NAME];
	uint32_t session, number;

	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		k->name(pairs[i][0], pairs[i][1], name);
		CHECK(k->parse(name, &session, &number));
		CHECK_EQ(session, pairs[i][0]);
		CHECK_EQ(number, pairs[i][1]);
		CHECK(!k->other_parse(name, &session, &number));
	}
	k->name(7, 3, name);
	CHECK(strcmp(name, seven_three) == 0);
}

static void check_refuses(const struct kind *k, const char *const *others, size_t n)
{
	uint32_t session = 5, number = 5;

	for (size_t i = 0; i < n; i++)
		CHECK(!k->parse(others[i], &session, &number));
	/* ret_ outputs are written only on success. */
	CHECK_EQ(session, 5);
	CHECK_EQ(number, 5);
}

TEST(anon_name_reads_back)
{
	check_reads_back(&device_kind, "anon7.device3");
}

TEST(anon_parse_refuses_other_names)
{
	static const char *const others[] = {
		"lease7.device3",	  "anon7.iommu",    "anon7.device",    "anon7.device3x",
		"anon07.device3",	  "anon7.device03", "anon-1.device3",  "anon+7.device3",
		"anon4294967296.device1", "state.12",	    "anon7.device3.x", "",
	};

	check_refuses(&device_kind, others, sizeof(others) / sizeof(others[0]));
}

TEST(anon_ctx_name_reads_back)
{
	check_reads_back(&ctx_kind, "anon7.iommu.ids3");
}

TEST(anon_ctx_parse_refuses_other_names)
{
	static const char *const others[] = {
		"anon7.iommu",
		"anon7.iommu.ids",
		"anon7.iommu.ids07",
		"anon07.iommu.ids7",
		"anon7.iommu.ids-1",
		"anon7.iommu.ids+1",
		"anon7.iommu.ids7x",
		"lease7.iommu",
		"anon7.iommu.ioas7",
		"anon7.device3",
		"",
		"anon7.iommu.ids4294967296",
	};

	check_refuses(&ctx_kind, others, sizeof(others) / sizeof(others[0]));
}

/* What is no IOMMU context is refused, not taken for an empty one, and the outputs are left
 * alone; a bound of 0 tries no id. */
TEST(ctx_release_refuses_what_is_no_context)
{
	int fd = memfd_create("not-iommu", MFD_CLOEXEC);
	uint64_t bytes = 5;
	uint32_t emptied = 5;

	CHECK(fd >= 0);
	CHECK(kh_ctx_fd_release(fd, 3, &bytes, &emptied) < 0);
	CHECK_EQ(bytes, 5);
	CHECK_EQ(emptied, 5);
	CHECK_EQ(kh_ctx_fd_release(fd, 0, &bytes, &emptied), 0);
	CHECK_EQ(bytes, 0);
	CHECK_EQ(emptied, 0);
	(void)close(fd);
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

/* A fake sysfs under IOMMUD_TEST_ROOT in which /dev/null's character device links to target:
 * what the daemon reads of a stray device descriptor is then what the test makes it. */
struct fake_sysfs {
	char root[64], link[128];
};

static const char *const fake_dirs[] = {"/sys", "/sys/dev", "/sys/dev/char"};
enum { N_FAKE_DIRS = sizeof(fake_dirs) / sizeof(fake_dirs[0]) };

static const char *fake_path(const struct fake_sysfs *f, size_t i, char path[96])
{
	(void)snprintf(path, 96, "%s%s", f->root, fake_dirs[i]);
	return path;
}

static void fake_sysfs_make(struct fake_sysfs *f, const char *target)
{
	char path[96];
	struct stat null;

	CHECK(stat("/dev/null", &null) == 0);
	(void)snprintf(f->root, sizeof(f->root), "/tmp/iommud-sysfs-XXXXXX");
	CHECK(mkdtemp(f->root) != NULL);
	for (size_t i = 0; i < N_FAKE_DIRS; i++)
		CHECK(mkdir(fake_path(f, i, path), 0700) == 0);
	(void)snprintf(f->link, sizeof(f->link), "%s/sys/dev/char/%u:%u", f->root,
		       major(null.st_rdev), minor(null.st_rdev));
	CHECK(symlink(target, f->link) == 0);
	CHECK(setenv("IOMMUD_TEST_ROOT", f->root, 1) == 0);
}

static void fake_sysfs_remove(const struct fake_sysfs *f)
{
	char path[96];

	CHECK(unsetenv("IOMMUD_TEST_ROOT") == 0);
	CHECK(unlink(f->link) == 0);
	for (size_t i = N_FAKE_DIRS; i-- > 0;)
		CHECK(rmdir(fake_path(f, i, path)) == 0);
	CHECK(rmdir(f->root) == 0);
}

/* A character device whose sysfs entry cannot be read (here a link to itself, which loops)
 * may be a VFIO one still attached: that is an error, said, not "nothing to block", and the
 * descriptor is closed all the same. */
TEST(give_up_of_an_unidentified_device_is_an_error)
{
	struct fake_sysfs f;
	char device[KH_NAME_MAX] = "untouched", itself[32];
	struct stat null;
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	CHECK(fd >= 0 && fstat(fd, &null) == 0);
	(void)snprintf(itself, sizeof(itself), "%u:%u", major(null.st_rdev), minor(null.st_rdev));
	fake_sysfs_make(&f, itself);
	CHECK_EQ(fdstore_give_up(fd, "anon1.device1", device), -ELOOP);
	CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF);
	CHECK(strcmp(device, "untouched") == 0);
	fake_sysfs_remove(&f);
}
