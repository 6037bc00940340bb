/* SPDX-License-Identifier: MIT */
/*
 * Who the daemon takes a peer for (docs/operations.md, "Security model"): identity comes only
 * from what the kernel vouches for, never from what can be borrowed or read after the fact.
 * A connection whose process has gone is refused, not given someone's tenant; the rule that
 * matched a peer is part of its tenant, so other groups never inherit another section; and
 * nothing is cut, so identities differing only past some length (cgroup paths, group lists)
 * stay apart. Lease names with a NUL are test_hygiene's, with the other strings refused.
 *
 * Peers are child processes with other uids, groups and cgroups, so the cases need root; the
 * cgroups they make are removed at the end, also those a failed earlier run left.
 */
#define _GNU_SOURCE /* setgroups */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <mntent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"

#define PEER_UID 65530u /* in no [uid] section: its groups decide */

static struct daemon_fixture daemon_under_test;

static void need_root(void)
{
	if (geteuid() != 0)
		SKIP("not root: peers of other uids, groups and cgroups need it");
}

/* ---- peers ---------------------------------------------------------------------------- */

/* Who a child runs as: uid (gid the same) with these supplementary groups, in this cgroup
 * (a path under the cgroup v2 mount; NULL: the test's own). */
struct identity {
	uid_t uid;
	const gid_t *groups;
	size_t n_groups;
	const char *cgroup;
};

/* The cgroup v2 mount, or NULL where there is none. */
static const char *cgroup2_mount(void)
{
	static char mount_dir[256];
	FILE *mounts = setmntent("/proc/self/mounts", "r");
	struct mntent *m;

	if (!mounts)
		return NULL;
	while ((m = getmntent(mounts)))
		if (strcmp(m->mnt_type, "cgroup2") == 0) {
			(void)snprintf(mount_dir, sizeof(mount_dir), "%s", m->mnt_dir);
			(void)endmntent(mounts);
			return mount_dir;
		}
	(void)endmntent(mounts);
	return NULL;
}

/* Moves this process into cgroup (a path under the cgroup v2 mount). */
static void enter_cgroup(const char *cgroup)
{
	char *procs;
	FILE *file;

	CHECK(asprintf(&procs, "%s%s/cgroup.procs", cgroup2_mount(), cgroup) > 0);
	file = fopen(procs, "w");
	CHECK(file != NULL);
	CHECK(fprintf(file, "%d\n", (int)getpid()) > 0);
	CHECK(fclose(file) == 0);
	free(procs);
}

/* This process's cgroup v2 path. */
static const char *own_cgroup(void)
{
	static char cgroup[4096];
	char line[sizeof(cgroup) + 4];
	FILE *file = fopen("/proc/self/cgroup", "r");

	CHECK(file != NULL);
	while (fgets(line, sizeof(line), file))
		if (strncmp(line, "0::", 3) == 0)
			(void)snprintf(cgroup, sizeof(cgroup), "%.*s", (int)strcspn(line + 3, "\n"),
				       line + 3);
	(void)fclose(file);
	CHECK(cgroup[0] == '/');
	return cgroup;
}

/* Runs fn as who in a child; its exit status. The child starts in who's cgroup: this process
 * (the case's own) enters it for the fork, as only root may, and returns to its own. */
static int run_identity(const struct identity *who, int (*fn)(void *), void *arg)
{
	const char *home = own_cgroup();
	int rc;

	if (who->cgroup)
		enter_cgroup(who->cgroup);
	rc = run_as_groups(who->uid, who->groups, who->n_groups, fn, arg);
	if (who->cgroup)
		enter_cgroup(home);
	return rc;
}

/* Two groups of this system other than root's and the peer's own: sections name groups. */
static void two_groups(struct group *ret[2])
{
	static struct group found[2];
	static char names[2][64];
	struct group *g;
	int n = 0;

	setgrent();
	while (n < 2 && (g = getgrent()))
		if (g->gr_gid != 0 && g->gr_gid != PEER_UID && strlen(g->gr_name) < 64) {
			(void)snprintf(names[n], sizeof(names[n]), "%s", g->gr_name);
			found[n] = (struct group){.gr_name = names[n], .gr_gid = g->gr_gid};
			ret[n] = &found[n];
			n++;
		}
	endgrent();
	if (n < 2)
		SKIP("this system has fewer than two groups besides root's");
}

/* What a peer's Hello says, checked against expectations; run in the peer's process. */
struct hello_check {
	const char *lease;
	const char *section; /* the section the daemon must report (NULL: not checked) */
	uint64_t max_domains;
	uint64_t domains; /* the tenant must hold this many when it says hello */
	bool alloc;	  /* then allocate a domain in it on device */
	const char *device;
	const char *cgroup; /* the cgroup the daemon must report (NULL: not checked) */
};

static int hello_and_check(void *arg)
{
	const struct hello_check *want = arg;
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c;
	uint32_t dom;
	int rc = 0;

	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	if (iommuctl_hello(c, "test_identity", want->lease, &hello) < 0) {
		(void)fprintf(stderr, "hello: %s\n", iommuctl_last_error(c));
		return 1;
	}
	if (hello->quota->domains != want->domains) {
		(void)fprintf(stderr, "the tenant holds %llu domains, not %llu\n",
			      (unsigned long long)hello->quota->domains,
			      (unsigned long long)want->domains);
		rc = 2;
	} else if (hello->quota->max_domains != want->max_domains ||
		   (want->cgroup && strcmp(hello->cgroup, want->cgroup) != 0) ||
		   (want->section && strcmp(hello->section, want->section) != 0)) {
		(void)fprintf(stderr, "hello: section '%s', max_domains %llu, cgroup '%s'\n",
			      hello->section, (unsigned long long)hello->quota->max_domains,
			      hello->cgroup);
		rc = 3;
	} else if (want->alloc &&
		   iommuctl_alloc_domain(c, want->device, IOMMUCTL_DOMAIN_PAGING, 0, &dom) < 0) {
		(void)fprintf(stderr, "alloc_domain: %s\n", iommuctl_last_error(c));
		rc = 4;
	}
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	iommuctl_close(c);
	return rc;
}

/* ---- a peer that is gone ---------------------------------------------------------------- */

static Iommud__V1__Request hello_request(Iommud__V1__HelloRequest *hello)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.id = 1;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_HELLO;
	req.hello = hello;
	return req;
}

/* The borrowing: a child connects a socket the parent holds and exits before the
 * daemon accepts; the parent then speaks on the connection. The daemon is stopped meanwhile,
 * so it accepts only after the child is reaped, every time. */
TEST(exited_peer_is_refused)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__Request req = hello_request(&hello);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	Iommud__V1__Response *resp;
	int fd, status;
	pid_t child;

	fixture_start(&daemon_under_test, "[uid 0]\naccess = write\n", "emu0");
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", daemon_under_test.socket_path);
	CHECK(kill(daemon_under_test.pid, SIGSTOP) == 0);
	child = fork();
	CHECK(child >= 0);
	if (child == 0)
		_exit(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 ? 0 : 1);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(kill(daemon_under_test.pid, SIGCONT) == 0);

	hello.lease = "home";
	raw_send_request(fd, &req, NULL, 0);
	resp = raw_recv(fd, NULL);
	if (resp->status->code != IOMMUD__V1__CODE__CODE_PERMISSION_DENIED)
		(void)fprintf(stderr, "hello from a gone peer: code %d, cgroup '%s'\n",
			      (int)resp->status->code, resp->hello ? resp->hello->cgroup : "");
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED);
	/* It says why, and what to do. */
	CHECK(strstr(resp->status->message, "exited") != NULL);
	CHECK(strstr(resp->status->message, "connect from") != NULL);
	iommud__v1__response__free_unpacked(resp, NULL);
	/* Every request, not only the first: the connection has no tenant. */
	raw_send_request(fd, &req, NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED);
	iommud__v1__response__free_unpacked(resp, NULL);
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

/* ---- the rule is part of identity ------------------------------------------------------- */

/* One uid and cgroup, two groups with sections of their own: a lease made under one section
 * is not the other's, and each peer gets its own section's quotas. */
TEST(rule_is_part_of_identity)
{
	struct group *groups[2];
	struct hello_check first = {
		.lease = "shared", .max_domains = 2, .alloc = true, .device = "emu1"};
	struct hello_check second = {.lease = "shared", .max_domains = 3, .domains = 0};
	char config[512], section[2][80];

	need_root();
	two_groups(groups);
	for (int i = 0; i < 2; i++)
		(void)snprintf(section[i], sizeof(section[i]), "group %s", groups[i]->gr_name);
	(void)snprintf(config, sizeof(config),
		       "[access]\ndefault = none\n"
		       "[%s]\naccess = write\ndevices = emu1\nmax-domains = 2\n"
		       "[%s]\naccess = write\ndevices = emu2\nmax-domains = 3\n",
		       section[0], section[1]);
	fixture_start(&daemon_under_test, config, "emu0 emu1 emu2");
	second.section = section[1];
	{
		struct identity a = {.uid = PEER_UID, .groups = &groups[0]->gr_gid, .n_groups = 1};
		struct identity b = {.uid = PEER_UID, .groups = &groups[1]->gr_gid, .n_groups = 1};

		CHECK_EQ(run_identity(&a, hello_and_check, &first), 0);
		CHECK_EQ(run_identity(&b, hello_and_check, &second), 0);
		/* And the first still finds its own. */
		first.alloc = false;
		first.domains = 1;
		first.section = section[0];
		CHECK_EQ(run_identity(&a, hello_and_check, &first), 0);
	}
	fixture_stop(&daemon_under_test);
}

/* ---- nothing is cut --------------------------------------------------------------------- */

/* More supplementary groups than a fixed buffer holds: the one with a section comes last. */
TEST(every_group_counts)
{
	struct group *groups[2];
	struct hello_check want = {.max_domains = 5};
	gid_t many[100];
	char config[256], section[80];

	need_root();
	two_groups(groups);
	(void)snprintf(section, sizeof(section), "group %s", groups[1]->gr_name);
	(void)snprintf(config, sizeof(config),
		       "[access]\ndefault = none\n[%s]\naccess = write\nmax-domains = 5\n",
		       section);
	fixture_start(&daemon_under_test, config, "emu0");
	/* Gids no section names, then the one a section does. */
	for (size_t i = 0; i < 99; i++)
		many[i] = (gid_t)(200000 + i);
	many[99] = groups[1]->gr_gid;
	want.section = section;
	{
		struct identity who = {.uid = PEER_UID, .groups = many, .n_groups = 100};

		CHECK_EQ(run_identity(&who, hello_and_check, &want), 0);
	}
	fixture_stop(&daemon_under_test);
}

/* Removes a test cgroup tree, deepest first (rmdir of a cgroup needs it empty). */
static void remove_cgroups(const char *base)
{
	char *cmd;

	CHECK(asprintf(&cmd, "test -d '%s%s' && find '%s%s' -depth -type d -exec rmdir {} + ; true",
		       cgroup2_mount(), base, cgroup2_mount(), base) > 0);
	CHECK(system(cmd) == 0);
	free(cmd);
}

/* The base of a case's cgroups, "/iommud-test-NAME", with what a failed run left removed. */
static const char *cgroup_base(const char *name)
{
	static char base[64];

	need_root();
	if (!cgroup2_mount())
		SKIP("no cgroup v2 hierarchy mounted");
	(void)snprintf(base, sizeof(base), "/iommud-test-%s", name);
	remove_cgroups(base);
	return base;
}

/* Makes the cgroup path (under the v2 mount) and its parents; names may hold any byte. */
static void make_cgroup(const char *path)
{
	char *dir;

	CHECK(asprintf(&dir, "%s%s", cgroup2_mount(), path) > 0);
	for (char *slash = dir + strlen(cgroup2_mount()) + 1;; slash++) {
		slash = strchr(slash, '/');
		if (slash)
			*slash = '\0';
		CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST);
		if (!slash)
			break;
		*slash = '/';
	}
	free(dir);
}

static const char root_config[] = "[uid 0]\naccess = write\ndevices = emu*\nmax-domains = 64\n";

/* Two cgroups whose paths agree in their first 600 bytes are two tenants. */
TEST(long_cgroup_paths_stay_apart)
{
	const char *base = cgroup_base("long");
	char deep[2][1024], long_a[201], long_b[201];
	struct hello_check want[2] = {
		{.lease = "deep",
		 .section = "uid 0",
		 .max_domains = 64,
		 .alloc = true,
		 .device = "emu0"},
		{.lease = "deep", .section = "uid 0", .max_domains = 64},
	};

	memset(long_a, 'a', 200);
	memset(long_b, 'b', 200);
	long_a[200] = long_b[200] = '\0';
	for (int i = 0; i < 2; i++) {
		(void)snprintf(deep[i], sizeof(deep[i]), "%s/%s/%s/%s/%s", base, long_a, long_b,
			       long_a, i ? "two" : "one");
		make_cgroup(deep[i]);
		want[i].cgroup = deep[i];
	}
	CHECK(strlen(deep[0]) > 600);
	fixture_start(&daemon_under_test, root_config, "emu0");
	{
		struct identity one = {.uid = 0, .cgroup = deep[0]};
		struct identity two = {.uid = 0, .cgroup = deep[1]};

		CHECK_EQ(run_identity(&one, hello_and_check, &want[0]), 0);
		CHECK_EQ(run_identity(&two, hello_and_check, &want[1]), 0);
	}
	fixture_stop(&daemon_under_test);
	remove_cgroups(base);
}

/* Cgroup names are bytes: one that is not UTF-8 keeps its tenant and shows as text, each
 * stray byte as \xHH; a backslash shows as \\, so a name that merely looks like an escape
 * reads apart from the byte it looks like. */
TEST(cgroup_bytes_show_as_text)
{
	static const char *const names[][2] = {{"\xff\xfe", "\\xff\\xfe"}, {"\\xff", "\\\\xff"}};
	const char *base = cgroup_base("bytes");
	char cgroup[2][128], shown[2][128];

	for (int i = 0; i < 2; i++) {
		(void)snprintf(cgroup[i], sizeof(cgroup[i]), "%s/%s", base, names[i][0]);
		(void)snprintf(shown[i], sizeof(shown[i]), "%s/%s", base, names[i][1]);
		make_cgroup(cgroup[i]);
	}
	fixture_start(&daemon_under_test, root_config, "emu0");
	for (int i = 0; i < 2; i++) {
		struct hello_check want = {
			.section = "uid 0", .max_domains = 64, .cgroup = shown[i]};
		struct identity who = {.uid = 0, .cgroup = cgroup[i]};

		CHECK_EQ(run_identity(&who, hello_and_check, &want), 0);
	}
	fixture_stop(&daemon_under_test);
	remove_cgroups(base);
}
