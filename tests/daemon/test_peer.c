// SPDX-License-Identifier: MIT
/* How the daemon identifies a peer on kernels without SO_PEERPIDFD (before Linux 6.5), proven
 * on any kernel through identify_peer_by_pid: the process at the pid SO_PEERCRED gives is taken
 * for the one that connected only if it runs under the uid that connected and holds the other
 * end of the connection. A process that took a recycled pid has neither; a child that connected
 * and then closed its end, or changed its uid, stands in for one here. */
#define _GNU_SOURCE /* setresuid */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "peer.h"

#define NOBODY 65534

/* What the child does between connecting and telling the parent to accept. */
enum after_connect {
	KEEP_SOCKET,
	CLOSE_SOCKET,
	BECOME_NOBODY,
};

struct connection {
	pid_t child;
	int accepted;
	int release; /* the child waits until this closes */
};

/* The child: connects to the listener at addr, does what it is told, reports, then waits for
 * the parent to be done, so its pid stays its own throughout. */
static void run_child(const struct sockaddr_un *addr, enum after_connect then, int ready,
		      int release)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	char byte = 0;

	if (fd < 0 || connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0)
		_exit(1);
	if (then == CLOSE_SOCKET)
		(void)close(fd);
	if (then == BECOME_NOBODY && setresuid(NOBODY, NOBODY, NOBODY) < 0)
		_exit(2);
	if (write(ready, &byte, 1) != 1)
		_exit(3);
	(void)read(release, &byte, 1);
	_exit(0);
}

/* A connection from a child that did then, accepted once the child has done it. */
static struct connection connect_child(enum after_connect then)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int ready[2], release[2];
	struct connection c;
	char byte;

	CHECK(listener >= 0);
	/* An abstract address: nothing to clean up. */
	(void)snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "iommud-test-peer-%d",
		       (int)getpid());
	CHECK(bind(listener, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	CHECK(listen(listener, 1) == 0);
	CHECK(pipe2(ready, O_CLOEXEC) == 0 && pipe2(release, O_CLOEXEC) == 0);
	c.child = fork();
	CHECK(c.child >= 0);
	if (c.child == 0) {
		(void)close(release[1]);
		run_child(&addr, then, ready[1], release[0]);
	}
	(void)close(ready[1]);
	(void)close(release[0]);
	CHECK(read(ready[0], &byte, 1) == 1);
	c.accepted = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	CHECK(c.accepted >= 0);
	c.release = release[1];
	(void)close(ready[0]);
	(void)close(listener);
	return c;
}

/* Lets the child go, which must have done all it was told. */
static void finish(struct connection *c)
{
	int status;

	(void)close(c->release);
	(void)close(c->accepted);
	CHECK_EQ(waitpid(c->child, &status, 0), c->child);
	CHECK_EQ(status, 0); /* exited, with 0 */
}

static void check_by_pid(enum after_connect then, enum peer_doubt doubt, int doubt_errno)
{
	struct connection c = connect_child(then);
	struct peer peer;

	CHECK_OK(identify_peer_by_pid(c.accepted, &peer));
	CHECK_EQ(peer.pid, c.child);
	CHECK_EQ(peer.doubt, doubt);
	CHECK_EQ(peer.doubt_errno, doubt_errno);
	CHECK_EQ(peer.cgroup != NULL, doubt == PEER_VERIFIED);
	peer_clear(&peer);
	finish(&c);
}

/* The process that connected, still holding its end: verified, cgroup read. */
TEST(holder_of_the_connection_is_verified)
{
	check_by_pid(KEEP_SOCKET, PEER_VERIFIED, 0);
}

/* A live process at the pid that does not hold the connection, as a process that took the
 * pid of one that connected and exited would not. */
TEST(process_without_the_connection_is_unconfirmed)
{
	check_by_pid(CLOSE_SOCKET, PEER_UNCONFIRMED, ENOENT);
}

/* A process at the pid under another uid than the one that connected. */
TEST(process_of_another_uid_is_unconfirmed)
{
	if (geteuid() != 0)
		SKIP("not root: the child cannot change its uid");
	check_by_pid(BECOME_NOBODY, PEER_UNCONFIRMED, EPERM);
}

/* vmm_pid 0 follows the process that connected, by the connection, never by its pid: once it
 * has exited it is refused, though the connection is still open (here, in the test). */
TEST(process_that_connected_is_followed_until_it_exits)
{
	struct connection c = connect_child(KEEP_SOCKET);
	struct peer connected, vmm;
	int pidfd, status;

	CHECK_EQ(identify_peer(c.accepted, &connected), 0);
	CHECK_EQ(peer_follow_connected(c.accepted, &connected, &pidfd, &vmm), 0);
	CHECK_EQ(vmm.pid, c.child);
	CHECK_EQ(vmm.uid, getuid());
	(void)close(pidfd);
	peer_clear(&vmm);
	(void)close(c.release);
	CHECK_EQ(waitpid(c.child, &status, 0), c.child);
	CHECK_EQ(peer_follow_connected(c.accepted, &connected, &pidfd, &vmm), -ESRCH);
	(void)close(c.accepted);
	peer_clear(&connected);
}
