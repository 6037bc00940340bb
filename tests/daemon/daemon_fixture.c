// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* mkdtemp */
#include "daemon_fixture.h"

#include <dirent.h>
#include <grp.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>
#include <iommud_wire.h>

#include "check.h"

static void write_file(const char *path, const char *text)
{
	FILE *file = fopen(path, "w");

	CHECK(file != NULL);
	CHECK(fputs(text, file) >= 0);
	CHECK(fclose(file) == 0);
}

void fixture_start(struct daemon_fixture *f, const char *config, const char *devices)
{
	char topology[4096];

	if (!devices) {
		fixture_start_topology(f, config, NULL);
		return;
	}
	(void)snprintf(topology, sizeof(topology), "[iommu]\ndevices = %s\n", devices);
	fixture_start_topology(f, config, topology);
}

void fixture_write_config(struct daemon_fixture *f, const char *config, const char *topology,
			  char config_path[static 128])
{
	char topology_path[128], text[4096];

	(void)snprintf(f->dir, sizeof(f->dir), "/tmp/iommud-test-XXXXXX");
	CHECK(mkdtemp(f->dir) != NULL);
	/* Other uids (run_as) must reach the socket; access is decided by the daemon. */
	CHECK(chmod(f->dir, 0755) == 0);
	(void)snprintf(f->socket_path, sizeof(f->socket_path), "%s/iommud.sock", f->dir);
	(void)snprintf(config_path, 128, "%s/iommud.conf", f->dir);
	(void)snprintf(topology_path, sizeof(topology_path), "%s/topology.ini", f->dir);
	if (topology) {
		write_file(topology_path, topology);
		(void)snprintf(text, sizeof(text),
			       "[daemon]\nsocket = %s\nbackend = emulated\ntopology = %s\n"
			       "socket-mode = 0666\n%s",
			       f->socket_path, topology_path, config);
	} else {
		/* The VM tier's daemon tests name another kernel backend here. */
		const char *backend = getenv("IOMMUD_TEST_BACKEND");

		(void)snprintf(text, sizeof(text),
			       "[daemon]\nsocket = %s\nbackend = %s\nsocket-mode = 0666\n%s",
			       f->socket_path, backend ? backend : "iommufd", config);
	}
	write_file(config_path, text);
}

/* Waits until the daemon answers on its socket: its event loop runs, and start-up has opened
 * all it keeps. */
void fixture_wait_until_serving(struct daemon_fixture *f)
{
	struct timespec pause = {0, 10 * 1000 * 1000};

	for (int i = 0; i < 1000; i++) {
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		struct sockaddr_un addr = {.sun_family = AF_UNIX};
		int status;

		(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", f->socket_path);
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
			Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
			Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

			req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
			req.get_stats = &stats;
			raw_send_request(fd, &req, NULL, 0);
			iommud__v1__response__free_unpacked(raw_recv(fd, NULL), NULL);
			(void)close(fd);
			return;
		}
		(void)close(fd);
		CHECK(waitpid(f->pid, &status, WNOHANG) == 0); /* the daemon died at start */
		nanosleep(&pause, NULL);
	}
	(void)fprintf(stderr, "the daemon did not listen on %s within 10 s\n", f->socket_path);
	abort();
}

void fixture_start_topology(struct daemon_fixture *f, const char *config, const char *topology)
{
	char config_path[128];

	fixture_write_config(f, config, topology, config_path);
	f->pid = fork();
	CHECK(f->pid >= 0);
	if (f->pid == 0) {
		/* A test that dies must not leave its daemon holding ctest's output pipe. */
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		const char *bin = getenv("IOMMUD_DAEMON") ? getenv("IOMMUD_DAEMON") : IOMMUD_BIN;

		/* A test of what the daemon logs asks for more than warnings. */
		const char *level = getenv("IOMMUD_TEST_LOG_LEVEL") ?: "warning";

		execl(bin, "iommud", "--config", config_path, "--log-level", level, (char *)NULL);
		(void)fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	fixture_wait_until_serving(f);
}

void fixture_stop(struct daemon_fixture *f)
{
	char cmd[128];
	int status;

	CHECK(kill(f->pid, SIGTERM) == 0);
	CHECK(waitpid(f->pid, &status, 0) == f->pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		(void)fprintf(stderr,
			      "iommud ended with %s %d (a sanitizer report above says why)\n",
			      WIFEXITED(status) ? "exit status" : "signal",
			      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
		abort();
	}
	/* The daemon removes its socket on a clean stop. */
	CHECK(access(f->socket_path, F_OK) != 0);
	(void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	CHECK(system(cmd) == 0);
}

int fixture_fd_count(const struct daemon_fixture *f)
{
	char path[64], link[320], target[64];
	struct dirent *entry;
	int count = 0;
	DIR *dir;

	(void)snprintf(path, sizeof(path), "/proc/%d/fd", (int)f->pid);
	dir = opendir(path);
	CHECK(dir != NULL);
	while ((entry = readdir(dir))) {
		ssize_t n;

		if (entry->d_name[0] == '.')
			continue;
		(void)snprintf(link, sizeof(link), "%s/%s", path, entry->d_name);
		n = readlink(link, target, sizeof(target) - 1);
		/* Connections close when the daemon's loop gets to them, so sockets would make the
		 * count race with the test; what a leak keeps is the clients' memory and pipes. */
		if (n > 0 && !(n >= 7 && memcmp(target, "socket:", 7) == 0))
			count++;
	}
	closedir(dir);
	return count;
}

int fixture_memfd_mappings(const struct daemon_fixture *f)
{
	char path[64], line[512];
	int count = 0;
	FILE *maps;

	(void)snprintf(path, sizeof(path), "/proc/%d/maps", (int)f->pid);
	maps = fopen(path, "r");
	CHECK(maps != NULL);
	while (fgets(line, sizeof(line), maps))
		count += strstr(line, "/memfd:") != NULL;
	(void)fclose(maps);
	return count;
}

int raw_connect(const struct daemon_fixture *f)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", f->socket_path);
	CHECK(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	return fd;
}

void raw_send(int fd, const void *buf, size_t len, const int *fds, size_t n_fds)
{
	CHECK_EQ(wire_send(fd, buf, len, fds, n_fds, WIRE_BLOCK), 0);
}

void raw_send_request(int fd, const Iommud__V1__Request *req, const int *fds, size_t n_fds)
{
	size_t len = iommud__v1__request__get_packed_size(req);
	uint8_t *buf = malloc(len ? len : 1);

	CHECK(buf != NULL);
	iommud__v1__request__pack(req, buf);
	raw_send(fd, buf, len, fds, n_fds);
	free(buf);
}

Iommud__V1__Response *raw_recv(int fd, size_t *n_fds)
{
	static uint8_t buf[IOMMUD_MAX_MESSAGE];
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	struct wire_packet packet;
	Iommud__V1__Response *resp;

	CHECK_EQ(poll(&pfd, 1, 10000), 1);
	CHECK_EQ(wire_recv(fd, buf, sizeof(buf), WIRE_BLOCK, &packet), 0);
	CHECK(!packet.truncated && !packet.fds_truncated);
	wire_close_fds(packet.fds, packet.n_fds);
	if (n_fds)
		*n_fds = packet.n_fds;
	resp = iommud__v1__response__unpack(NULL, packet.len, buf);
	CHECK(resp != NULL);
	CHECK(resp->status != NULL);
	return resp;
}

void raw_send_get_stats(int fd)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	raw_send_request(fd, &req, NULL, 0);
}

Iommud__V1__GetStatsReply *raw_stats_reply(int fd, Iommud__V1__Response **ret_resp)
{
	Iommud__V1__Response *resp = raw_recv(fd, NULL);

	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_OK);
	*ret_resp = resp;
	return resp->get_stats;
}

Iommud__V1__Response *fixture_get_stats(struct iommuctl *c)
{
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	if (iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL) < 0) {
		(void)fprintf(stderr, "GetStats failed: %s\n", iommuctl_last_error(c));
		abort();
	}
	return resp;
}

void fixture_stats(struct iommuctl *c, Iommud__V1__Quota *quota, uint32_t *connections)
{
	Iommud__V1__Response *resp = fixture_get_stats(c);

	if (quota)
		*quota = *resp->get_stats->quota;
	if (connections)
		*connections = resp->get_stats->connections;
	iommuctl_response_free(resp);
}

int run_as(uid_t uid, int (*fn)(void *), void *arg)
{
	return run_as_groups(uid, NULL, 0, fn, arg);
}

int run_as_groups(uid_t uid, const gid_t *groups, size_t n_groups, int (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	int status;

	CHECK(pid >= 0);
	if (pid == 0) {
		if (setgroups(n_groups, groups) < 0 || setgid((gid_t)uid) < 0 || setuid(uid) < 0) {
			perror("setuid");
			_exit(99);
		}
		_exit(fn(arg));
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}
