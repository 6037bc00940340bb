// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* struct ucred */
#include "peer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "status.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; older kernels answer ENOPROTOOPT */
#endif

/* /proc/PID/cgroup holds one line per hierarchy, each path at most PATH_MAX: a file longer
 * than this is not one the daemon can trust to have read whole. */
#define CGROUP_FILE_MAX (1u << 20)

/* All of the peer's supplementary groups: SO_PEERGROUPS says how much room they need. */
static int read_groups(int fd, struct peer *peer)
{
	socklen_t len = 0;
	gid_t *groups;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, NULL, &len) < 0 && errno != ERANGE)
		return -errno;
	if (len == 0)
		return 0;
	groups = malloc(len);
	if (!groups)
		return -ENOMEM;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
		free(groups);
		return -errno;
	}
	peer->groups = groups;
	peer->n_groups = len / sizeof(gid_t);
	return 0;
}

/* The process that connected, held so its pid cannot be taken by another while it lives. */
static int peer_pidfd(int fd, pid_t pid)
{
	socklen_t len = sizeof(int);
	int pidfd;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0)
		return pidfd;
	if (errno != ENOPROTOOPT)
		return -errno;
	/* Before Linux 6.5 the pid is all there is: a pid reused between connect() and here is
	 * not detected (docs/operations.md, "Identity"). */
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	return pidfd < 0 ? -errno : pidfd;
}

static bool process_lives(int pidfd)
{
	/* Signal 0 checks without sending; EPERM still means the process is there. */
	return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0 || errno == EPERM;
}

/* The whole file, NUL-terminated, in *ret_text. */
static int read_file(const char *path, char **ret_text, size_t *ret_len)
{
	size_t len = 0, cap = 4096;
	char *text = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
	ssize_t n;

	if (fd < 0 || !text) {
		rc = fd < 0 ? -errno : -ENOMEM;
		goto out;
	}
	while ((n = read(fd, text + len, cap - 1 - len)) > 0) {
		char *grown;

		len += (size_t)n;
		if (len < cap - 1)
			continue;
		if (cap >= CGROUP_FILE_MAX || !(grown = realloc(text, 2 * cap))) {
			rc = cap >= CGROUP_FILE_MAX ? -EFBIG : -ENOMEM;
			goto out;
		}
		text = grown;
		cap *= 2;
	}
	if (n < 0)
		rc = -errno;
out:
	if (fd >= 0)
		(void)close(fd);
	if (rc < 0) {
		free(text);
		return rc;
	}
	text[len] = '\0';
	*ret_text = text;
	*ret_len = len;
	return 0;
}

/* The cgroup v2 path in /proc/PID/cgroup's text, allocated, in *ret_path. The kernel writes
 * paths unescaped, so a cgroup name may hold a newline and a forged "0::" line after it; the
 * kernel writes the v2 entry last, so it is taken only when it is the one "0::" line and ends
 * the file: -EINVAL when it is not. */
static int cgroup_v2_path(const char *text, size_t len, char **ret_path)
{
	const char *entry = NULL;
	char *path;

	for (const char *line = text; line < text + len; line = strchr(line, '\n') + 1) {
		if (strncmp(line, "0::", 3) == 0) {
			if (entry)
				return -EINVAL;
			entry = line + 3;
		}
		if (!strchr(line, '\n'))
			return -EINVAL; /* the kernel ends every line with a newline */
	}
	if (!entry || entry[0] != '/' || strchr(entry, '\n') != text + len - 1)
		return -EINVAL;
	path = strndup(entry, (size_t)(text + len - 1 - entry));
	if (!path)
		return -ENOMEM;
	*ret_path = path;
	return 0;
}

/* Reads the cgroup of the process held by pidfd, keeping it only if that process still lives
 * afterwards, so the pid named it throughout the read. */
static void read_cgroup(struct peer *peer, int pidfd)
{
	char path[64], *text;
	size_t len;
	int rc;

	(void)snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)peer->pid);
	rc = read_file(path, &text, &len);
	if (rc == 0) {
		rc = cgroup_v2_path(text, len, &peer->cgroup);
		free(text);
	}
	if (!process_lives(pidfd)) {
		peer->doubt = PEER_EXITED;
		free(peer->cgroup);
		peer->cgroup = NULL;
	} else if (rc < 0) {
		peer->doubt = rc == -EINVAL ? PEER_CGROUP_AMBIGUOUS : PEER_CGROUP_UNREADABLE;
		peer->doubt_errno = -rc;
	}
}

int identify_peer(int fd, struct peer *ret_peer)
{
	struct peer peer = {0};
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int pidfd, rc;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	peer.pid = cred.pid;
	peer.uid = cred.uid;
	peer.gid = cred.gid;
	rc = read_groups(fd, &peer);
	if (rc < 0)
		return rc;
	pidfd = peer.pid > 0 ? peer_pidfd(fd, peer.pid) : -ESRCH;
	if (peer.pid <= 0) {
		peer.doubt = PEER_NO_PID;
	} else if (pidfd < 0) {
		/* The kernels that have SO_PEERPIDFD refuse it (or give one for a process reaped
		 * already, found below) when the peer is gone; pidfd_open fails with ESRCH. */
		peer.doubt = pidfd == -ESRCH || pidfd == -EINVAL ? PEER_EXITED : PEER_NO_PIDFD;
		peer.doubt_errno = -pidfd;
	} else if (!process_lives(pidfd)) {
		peer.doubt = PEER_EXITED;
	} else {
		read_cgroup(&peer, pidfd);
	}
	if (pidfd >= 0)
		(void)close(pidfd);
	*ret_peer = peer;
	return 0;
}

void peer_clear(struct peer *peer)
{
	free(peer->groups);
	free(peer->cgroup);
	*peer = (struct peer){0};
}

int peer_refusal(const struct peer *p)
{
	static const char advice[] =
		"connect from the process that makes the calls, and keep it running until the "
		"daemon has answered its first request";

	switch (p->doubt) {
	case PEER_VERIFIED:
		break;
	case PEER_EXITED:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: the process "
			    "that connected (pid %d, uid %u) had exited before the daemon accepted "
			    "the connection, and its pid may name another process now; %s",
			    (int)p->pid, (unsigned)p->uid, advice);
	case PEER_NO_PID:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: the "
			    "connecting process (uid %u) has no pid in the daemon's pid namespace; "
			    "connect from a process the daemon can see",
			    (unsigned)p->uid);
	case PEER_NO_PIDFD:
		if (p->doubt_errno == ENOSYS)
			return fail(-EPERM,
				    "the daemon cannot verify who this connection belongs to: the "
				    "kernel has no pidfds, which iommud needs to read a peer's "
				    "cgroup safely; run Linux 5.3 or later (6.5 for SO_PEERPIDFD)");
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: it could not "
			    "hold the connecting process (pid %d) by a pidfd (%s); connect again "
			    "later, and tell the administrator if this persists",
			    (int)p->pid, strerror(p->doubt_errno));
	case PEER_CGROUP_UNREADABLE:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: the cgroup "
			    "of the connecting process (pid %d) cannot be read (%s); %s",
			    (int)p->pid, strerror(p->doubt_errno), advice);
	case PEER_CGROUP_AMBIGUOUS:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: "
			    "/proc/%d/cgroup has no single cgroup v2 entry (a cgroup name with a "
			    "newline in it, or no unified hierarchy); run the client in a cgroup "
			    "whose path has no newline",
			    (int)p->pid);
	}
	return fail(-EPERM, "the daemon cannot verify who this connection belongs to");
}
