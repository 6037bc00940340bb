// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* struct ucred */
#include "peer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/inet_diag.h> /* INET_DIAG_NOCOOKIE, which unix_diag shares */
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "status.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; older kernels answer ENOPROTOOPT */
#endif

/* /proc/PID/cgroup holds one line per hierarchy, each path at most PATH_MAX, and status is
 * shorter: a file longer than this is not one the daemon can trust to have read whole. */
#define PROC_FILE_MAX (1u << 20)

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

/* The process that connected, held so its pid cannot be taken by another while it lives;
 * *ret_by_pid says the pidfd was had from the pid, so it holds whatever process has that pid
 * now, which peer_confirm must show to be the one that connected. */
static int peer_pidfd(int fd, pid_t pid, bool use_peerpidfd, bool *ret_by_pid)
{
	socklen_t len = sizeof(int);
	int pidfd;

	if (use_peerpidfd) {
		if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) {
			*ret_by_pid = false;
			return pidfd;
		}
		if (errno != ENOPROTOOPT)
			return -errno;
	}
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		return -errno;
	*ret_by_pid = true;
	return pidfd;
}

bool process_lives(int pidfd)
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
		if (cap >= PROC_FILE_MAX || !(grown = realloc(text, 2 * cap))) {
			rc = cap >= PROC_FILE_MAX ? -EFBIG : -ENOMEM;
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
 * the file: -EINVAL when it is not. -ENOENT when there is no v2 entry at all. */
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
	if (!entry)
		return -ENOENT;
	if (entry[0] != '/' || strchr(entry, '\n') != text + len - 1)
		return -EINVAL;
	path = strndup(entry, (size_t)(text + len - 1 - entry));
	if (!path)
		return -ENOMEM;
	*ret_path = path;
	return 0;
}

/* UNIX_DIAG_PEER of a sock_diag answer about one Unix socket. */
static int unix_diag_peer(const struct nlmsghdr *nlh, unsigned *ret_ino)
{
	const struct unix_diag_msg *msg = NLMSG_DATA(nlh);
	const struct nlattr *attr = (const void *)(msg + 1);
	size_t left;

	if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*msg)))
		return -EPROTO;
	left = nlh->nlmsg_len - NLMSG_LENGTH(sizeof(*msg));
	while (left >= NLA_HDRLEN && attr->nla_len >= NLA_HDRLEN && attr->nla_len <= left) {
		if (attr->nla_type == UNIX_DIAG_PEER && attr->nla_len >= NLA_HDRLEN + 4) {
			memcpy(ret_ino, (const char *)attr + NLA_HDRLEN, sizeof(*ret_ino));
			return *ret_ino ? 0 : -ENOENT;
		}
		if ((size_t)NLA_ALIGN(attr->nla_len) >= left)
			break;
		left -= NLA_ALIGN(attr->nla_len);
		attr = (const void *)((const char *)attr + NLA_ALIGN(attr->nla_len));
	}
	return -ENOENT; /* no peer: its end is closed */
}

/* Whether the process of pid has "socket:[ino]" among its descriptors. */
static int holds_socket(pid_t pid, unsigned ino)
{
	char path[64], want[32], link[32];
	struct dirent *e;
	DIR *dir;
	int rc = -ENOENT;

	(void)snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	(void)snprintf(want, sizeof(want), "socket:[%u]", ino);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while (rc < 0 && (e = readdir(dir))) {
		ssize_t n = readlinkat(dirfd(dir), e->d_name, link, sizeof(link));

		if (n == (ssize_t)strlen(want) && memcmp(link, want, (size_t)n) == 0)
			rc = 0;
	}
	(void)closedir(dir);
	return rc;
}

/* The effective uid in /proc/PID/status ("Uid: real effective saved fs"). */
static int status_euid(pid_t pid, uid_t *ret_uid)
{
	char path[64], *text, *line;
	unsigned real, effective;
	size_t len;
	int rc;

	(void)snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	rc = read_file(path, &text, &len);
	if (rc < 0)
		return rc;
	line = strstr(text, "\nUid:");
	rc = line && sscanf(line, "\nUid: %u %u", &real, &effective) == 2 ? 0 : -EPROTO;
	free(text);
	if (rc == 0)
		*ret_uid = effective;
	return rc;
}

/* The inode of the socket at the other end of the connection fd, from the kernel's own record
 * (sock_diag's UNIX_DIAG_PEER); -ENOENT when that end is closed, -EPROTONOSUPPORT when the
 * kernel has no unix_diag (it answers ENOENT even about fd, which certainly exists). */
static int socket_peer_inode(int fd, unsigned *ret_ino)
{
	struct {
		struct nlmsghdr nlh;
		struct unix_diag_req req;
	} ask = {
		.nlh = {.nlmsg_len = sizeof(ask),
			.nlmsg_type = SOCK_DIAG_BY_FAMILY,
			.nlmsg_flags = NLM_F_REQUEST},
		.req = {.sdiag_family = AF_UNIX,
			.udiag_states = ~0u,
			.udiag_show = UDIAG_SHOW_PEER,
			.udiag_cookie = {INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE}},
	};
	union {
		struct nlmsghdr nlh;
		char bytes[1024];
	} answer;
	struct stat st;
	ssize_t n;
	int nl, rc = -ENOENT;

	if (fstat(fd, &st) < 0)
		return -errno;
	ask.req.udiag_ino = (unsigned)st.st_ino;
	nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (nl < 0)
		return -errno;
	if (send(nl, &ask, sizeof(ask), 0) < 0 || (n = recv(nl, &answer, sizeof(answer), 0)) < 0)
		rc = -errno;
	else if (!NLMSG_OK(&answer.nlh, (size_t)n))
		rc = -EPROTO;
	else if (answer.nlh.nlmsg_type != NLMSG_ERROR)
		rc = unix_diag_peer(&answer.nlh, ret_ino);
	else if ((rc = ((struct nlmsgerr *)NLMSG_DATA(&answer.nlh))->error ?: -EPROTO) == -ENOENT)
		rc = -EPROTONOSUPPORT;
	(void)close(nl);
	return rc;
}

/* Whether the process now at the peer's pid is the one that connected, as far as the kernel
 * shows: the uid SO_PEERCRED recorded, and the other end of this very connection among its
 * descriptors. A process that merely took the pid since holds neither, and one handed the
 * connection was chosen by the one that connected. Read by pid: the caller checks afterwards
 * that the process held by its pidfd still lives, so the pid named it throughout. 0 when both
 * hold, PEER_UID_ONLY when the kernel can show only the uid. */
#define PEER_UID_ONLY 1
static int peer_confirm(int fd, const struct peer *peer)
{
	unsigned ino;
	uid_t uid;
	int rc;

	rc = status_euid(peer->pid, &uid);
	if (rc < 0)
		return rc;
	if (uid != peer->uid)
		return -EPERM;
	rc = socket_peer_inode(fd, &ino);
	if (rc == -EPROTONOSUPPORT) {
		/* Without unix_diag (not built, or a module that cannot be loaded) only the uid can
		 * be confirmed; refusing every peer would leave such a machine without the daemon,
		 * and the pid's cgroup could be a recycled pid's. Said once, with the remedy. */
		static bool warned;

		if (!warned)
			log_warning(
				"peers are confirmed by uid only: this kernel has neither "
				"SO_PEERPIDFD (Linux 6.5) nor unix_diag, so their cgroups cannot "
				"be trusted and each uid's peers are one tenant (cgroup "
				"\"" CGROUP_UNCONFIRMED "\"); modprobe unix_diag, or run 6.5 or "
				"later");
		warned = true;
		return PEER_UID_ONLY;
	}
	return rc < 0 ? rc : holds_socket(peer->pid, ino);
}

/* The kernel lists no v2 entry for any process until cgroup2 is mounted somewhere (a minimal
 * initramfs, a cgroup v1 system). Then no peer has a v2 cgroup and all are told apart by uid and
 * section alone, with the cgroup "" of interactive logins: a fact of the machine, which the
 * daemon's own entry shows, not something a peer can choose. A peer without the entry that the
 * daemon has is ambiguous (-EINVAL). */
static int cgroup_of_machine_without_v2(char **ret_path)
{
	char *text, *path;
	size_t len;
	int rc = read_file("/proc/self/cgroup", &text, &len);

	if (rc < 0)
		return rc;
	rc = cgroup_v2_path(text, len, &path);
	free(text);
	if (rc != -ENOENT) {
		if (rc == 0)
			free(path);
		return -EINVAL;
	}
	return (*ret_path = strdup("")) ? 0 : -ENOMEM;
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
		if (rc == -ENOENT)
			rc = cgroup_of_machine_without_v2(&peer->cgroup);
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

/* What identify_peer does, with SO_PEERPIDFD or as on kernels without it. */
static int identify(int fd, bool use_peerpidfd, struct peer *ret_peer)
{
	struct peer peer = {0};
	struct ucred cred;
	socklen_t len = sizeof(cred);
	bool by_pid = false;
	int pidfd, rc;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	peer.pid = cred.pid;
	peer.uid = cred.uid;
	peer.gid = cred.gid;
	rc = read_groups(fd, &peer);
	if (rc < 0)
		return rc;
	pidfd = peer.pid > 0 ? peer_pidfd(fd, peer.pid, use_peerpidfd, &by_pid) : -ESRCH;
	if (peer.pid <= 0) {
		peer.doubt = PEER_NO_PID;
	} else if (pidfd < 0) {
		/* The kernels that have SO_PEERPIDFD refuse it (or give one for a process reaped
		 * already, found below) when the peer is gone; pidfd_open fails with ESRCH. */
		peer.doubt = pidfd == -ESRCH || pidfd == -EINVAL ? PEER_EXITED : PEER_NO_PIDFD;
		peer.doubt_errno = -pidfd;
	} else if (by_pid && (rc = peer_confirm(fd, &peer)) < 0) {
		peer.doubt = process_lives(pidfd) ? PEER_UNCONFIRMED : PEER_EXITED;
		peer.doubt_errno = -rc;
	} else if (!process_lives(pidfd)) {
		peer.doubt = PEER_EXITED;
	} else if (by_pid && rc == PEER_UID_ONLY) {
		/* The pid's cgroup is vouched for by nothing: a key no cgroup path can be. */
		if (!(peer.cgroup = strdup(CGROUP_UNCONFIRMED))) {
			peer.doubt = PEER_CGROUP_UNREADABLE;
			peer.doubt_errno = ENOMEM;
		}
	} else {
		read_cgroup(&peer, pidfd);
	}
	if (pidfd >= 0)
		(void)close(pidfd);
	*ret_peer = peer;
	return 0;
}

/* peer_follow of the process pidfd holds, at pid; takes pidfd over. */
static int follow_pidfd(pid_t pid, int pidfd, int *ret_pidfd, struct peer *ret_peer)
{
	struct peer peer = {.pid = pid};
	int rc = status_euid(pid, &peer.uid);

	if (rc == 0)
		read_cgroup(&peer, pidfd);
	if (rc == 0 && peer.doubt != PEER_VERIFIED)
		rc = peer.doubt == PEER_EXITED ? -ESRCH : -(peer.doubt_errno ?: EIO);
	if (rc < 0) {
		(void)close(pidfd);
		peer_clear(&peer);
		return rc == -ENOENT ? -ESRCH : rc;
	}
	*ret_pidfd = pidfd;
	*ret_peer = peer;
	return 0;
}

int peer_follow(pid_t pid, int *ret_pidfd, struct peer *ret_peer)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);

	if (pidfd < 0)
		return -errno;
	return follow_pidfd(pid, pidfd, ret_pidfd, ret_peer);
}

int peer_follow_connected(int fd, const struct peer *connected, int *ret_pidfd,
			  struct peer *ret_peer)
{
	bool by_pid = false;
	int pidfd = peer_pidfd(fd, connected->pid, true, &by_pid);

	if (pidfd < 0)
		return pidfd == -EINVAL ? -ESRCH : pidfd;
	/* Held by pid alone, it is followed only if it is shown to be the process that
	 * connected, as at the accept; else the one that connected is gone. */
	if (by_pid && peer_confirm(fd, connected) < 0) {
		(void)close(pidfd);
		return -ESRCH;
	}
	return follow_pidfd(connected->pid, pidfd, ret_pidfd, ret_peer);
}

int identify_peer(int fd, struct peer *ret_peer)
{
	return identify(fd, true, ret_peer);
}

int identify_peer_by_pid(int fd, struct peer *ret_peer)
{
	return identify(fd, false, ret_peer);
}

void peer_clear(struct peer *peer)
{
	free(peer->groups);
	free(peer->cgroup);
	*peer = (struct peer){0};
}

/* The refusal of a peer held by its pid alone whom peer_confirm could not show to be the
 * process that connected. */
static int unconfirmed_refusal(const struct peer *p, const char *advice)
{
	char why[128];

	if (p->doubt_errno == EPERM)
		(void)snprintf(why, sizeof(why),
			       "runs under another uid than the one that connected (%u)",
			       (unsigned)p->uid);
	else if (p->doubt_errno == ENOENT)
		(void)snprintf(why, sizeof(why), "does not hold this connection");
	else
		(void)snprintf(why, sizeof(why), "could not be checked (%s)",
			       strerror(p->doubt_errno));
	return fail(-EPERM,
		    "the daemon cannot verify who this connection belongs to: the kernel has no "
		    "SO_PEERPIDFD (Linux 6.5), so the daemon finds the connecting process by its "
		    "pid, and the process now at pid %d %s; it may not be the one that connected. "
		    "%s",
		    (int)p->pid, why, advice);
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
	case PEER_UNCONFIRMED:
		return unconfirmed_refusal(p, advice);
	case PEER_CGROUP_UNREADABLE:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: the cgroup "
			    "of the connecting process (pid %d) cannot be read (%s); %s",
			    (int)p->pid, strerror(p->doubt_errno), advice);
	case PEER_CGROUP_AMBIGUOUS:
		return fail(-EPERM,
			    "the daemon cannot verify who this connection belongs to: "
			    "/proc/%d/cgroup has no single cgroup v2 entry ending it (a cgroup "
			    "name with a newline in it, or none where the daemon's has one); run "
			    "the client in a cgroup whose path has no newline",
			    (int)p->pid);
	}
	return fail(-EPERM, "the daemon cannot verify who this connection belongs to");
}
