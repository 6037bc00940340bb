/* SPDX-License-Identifier: MIT */
/*
 * Who is at the other end of a connection, as the kernel vouches for it when the daemon
 * accepts the connection: the uid, gid and supplementary groups the process had when it
 * connected (SO_PEERCRED, SO_PEERGROUPS), and its cgroup v2 path, read from
 * /proc/PID/cgroup. Reading /proc by pid is only safe while the pid still names the process
 * that connected, so the daemon holds that process by a pidfd (SO_PEERPIDFD, Linux 6.5) and
 * keeps what it read only if the process still lives after the read: a pid cannot be reused
 * while its process lives. Older kernels have only the pid: pidfd_open holds whatever process
 * has it now, taken for the one that connected only if it runs under the uid that connected
 * and holds the other end of this very connection (sock_diag names that socket). A peer whose
 * process is gone, or whose cgroup cannot be read whole and unambiguously, is not verified: the
 * daemon keeps the connection to tell it why, refusing every request (peer_refusal), and gives it
 * no tenant.
 *
 * Nothing is cut: the groups and the cgroup path are allocated to their full size, so two
 * peers differing only past some length are never taken for one.
 *
 * Ownership: a struct peer owns its groups and cgroup; peer_clear releases them. Copying the
 * struct moves them (client_init takes a peer over).
 */
#ifndef IOMMUD_PEER_H
#define IOMMUD_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Why a peer's identity could not be verified. */
enum peer_doubt {
	PEER_VERIFIED,
	PEER_EXITED,		/* the process that connected was gone before it was read */
	PEER_NO_PID,		/* SO_PEERCRED gave no pid (another pid namespace) */
	PEER_NO_PIDFD,		/* no pidfd for it: no kernel support, or out of descriptors */
	PEER_UNCONFIRMED,	/* held by pid alone (no SO_PEERPIDFD), and not shown to be the
				 * process that connected: another uid, or not holding the socket */
	PEER_CGROUP_UNREADABLE, /* /proc/PID/cgroup could not be read */
	PEER_CGROUP_AMBIGUOUS,	/* no single cgroup v2 entry, or a path with a newline */
};

/* The cgroup of peers whose process only the uid confirms (kernels before 6.5 without unix_diag):
 * no cgroup path is this, so such peers share a tenant with nobody else's cgroup. */
#define CGROUP_UNCONFIRMED "(unconfirmed)"

struct peer {
	pid_t pid;
	uid_t uid;
	gid_t gid;
	gid_t *groups; /* supplementary groups, all of them */
	size_t n_groups;
	char *cgroup; /* the cgroup v2 path; NULL unless verified */
	enum peer_doubt doubt;
	int doubt_errno; /* the errno behind the doubt, where there was one */
};

/* Identifies the peer of a connected socket. A negative errno only when the socket has no
 * peer credentials at all; an unverified peer is 0 with ret_peer->doubt set. */
int identify_peer(int fd, struct peer *ret_peer);
/* identify_peer as on a kernel without SO_PEERPIDFD, whatever this one has: for tests, so the
 * path kernels before 6.5 take is proven on any host. The daemon never calls it. */
int identify_peer_by_pid(int fd, struct peer *ret_peer);
void peer_clear(struct peer *peer);

/* Holds the process at pid by a pidfd, to follow a process a peer names (the VM manager it
 * started) until it exits: its uid (effective) and cgroup in ret_peer, read while it lived, so
 * the pid named it throughout. -ESRCH when no process has the pid or it exited meanwhile; another
 * negative errno when its uid or cgroup cannot be read. The caller owns *ret_pidfd and, as
 * always, ret_peer's strings. */
int peer_follow(pid_t pid, int *ret_pidfd, struct peer *ret_peer);
/* peer_follow of the process that connected on fd (connected: its identify_peer result), held
 * by the connection itself (SO_PEERPIDFD), or by its pid confirmed as identify_peer confirms
 * it, never by whatever process has its pid now: -ESRCH once it has exited, though another
 * process (a child it forked, one it passed the socket to) holds the connection. */
int peer_follow_connected(int fd, const struct peer *connected, int *ret_pidfd,
			  struct peer *ret_peer);

/* Whether the process pidfd holds has not exited. */
bool process_lives(int pidfd);

/* Records (fail()) why an unverified peer's requests are refused and what to do; returns the
 * errno to answer with. */
int peer_refusal(const struct peer *peer);

#endif
