// SPDX-License-Identifier: MIT
/*
 * The wire module both ends share (proto/iommud_wire.h): packets and their descriptors over a
 * SOCK_SEQPACKET socketpair, what a receiver is told when a packet or its descriptors did not
 * fit, and the one table between errnos and status codes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iommud_wire.h>

#include "harness.h"

FIXTURE(pair)
{
	int sv[2];
};

FIXTURE_SETUP(pair)
{
	CHECK_OK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, self->sv));
}

FIXTURE_TEARDOWN(pair)
{
	(void)close(self->sv[0]);
	(void)close(self->sv[1]);
}

static bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* n descriptors of /dev/null, to send and count. */
static void open_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		CHECK(fds[i] >= 0);
	}
}

TEST_F(pair, packet_with_fd_round_trips)
{
	static const char text[] = "one packet";
	struct wire_packet packet;
	char buf[64];
	int fd;

	open_fds(&fd, 1);
	CHECK_OK(wire_send(self->sv[0], text, sizeof(text), &fd, 1, WIRE_BLOCK));
	CHECK_OK(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_BLOCK, &packet));
	CHECK_EQ(packet.len, sizeof(text));
	CHECK(memcmp(buf, text, sizeof(text)) == 0);
	CHECK(!packet.truncated && !packet.fds_truncated);
	CHECK_EQ(packet.n_fds, 1);
	CHECK(packet.fds[0] != fd && fd_is_open(packet.fds[0]));
	CHECK_EQ(fcntl(packet.fds[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	wire_close_fds(packet.fds, packet.n_fds);
	(void)close(fd);
}

/* The daemon's loop must never wait: an empty socket says -EAGAIN, a full one too. */
TEST_F(pair, nonblocking_says_eagain)
{
	struct wire_packet packet = {.len = 12345};
	char buf[4096] = {0};
	int rc;

	CHECK_EQ(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_NONBLOCK, &packet), -EAGAIN);
	CHECK_EQ(packet.len, 12345); /* untouched on failure */
	while ((rc = wire_send(self->sv[0], buf, sizeof(buf), NULL, 0, WIRE_NONBLOCK)) == 0)
		;
	CHECK_EQ(rc, -EAGAIN);
}

/* A packet longer than the buffer is still taken whole, so the next one starts clean. */
TEST_F(pair, long_packet_marked_truncated)
{
	char big[256], buf[16];
	struct wire_packet packet;

	memset(big, 'x', sizeof(big));
	CHECK_OK(wire_send(self->sv[0], big, sizeof(big), NULL, 0, WIRE_BLOCK));
	CHECK_OK(wire_send(self->sv[0], "next", 4, NULL, 0, WIRE_BLOCK));
	CHECK_OK(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_BLOCK, &packet));
	CHECK(packet.truncated);
	CHECK_OK(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_BLOCK, &packet));
	CHECK(!packet.truncated);
	CHECK_EQ(packet.len, 4);
	CHECK(memcmp(buf, "next", 4) == 0);
}

/* Over the protocol's limit, the receiver keeps IOMMUD_MAX_FDS, is told, and leaks none. */
TEST_F(pair, fds_over_the_limit_closed_and_reported)
{
	enum { SENT = IOMMUD_MAX_FDS + 3 };
	int fds[SENT], probe, first_free;
	struct wire_packet packet;
	char buf[8];

	open_fds(fds, SENT);
	CHECK_OK(wire_send(self->sv[0], "x", 1, fds, SENT, WIRE_BLOCK));
	for (size_t i = 0; i < SENT; i++)
		(void)close(fds[i]);
	CHECK_OK(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_BLOCK, &packet));
	CHECK(packet.fds_truncated);
	CHECK(packet.n_fds <= IOMMUD_MAX_FDS);
	wire_close_fds(packet.fds, packet.n_fds);
	/* Every descriptor the receiver got is closed again: the lowest free number is back. */
	open_fds(&probe, 1);
	first_free = probe;
	(void)close(probe);
	CHECK(first_free <= self->sv[1] + 1);
	CHECK_EQ(wire_send(self->sv[0], "x", 1, fds, WIRE_SEND_MAX_FDS + 1, WIRE_BLOCK), -EINVAL);
}

TEST_F(pair, end_of_connection)
{
	struct wire_packet packet;
	char buf[8];

	(void)close(self->sv[0]);
	self->sv[0] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0); /* for the teardown */
	CHECK_EQ(wire_recv(self->sv[1], buf, sizeof(buf), WIRE_BLOCK, &packet), -ECONNRESET);
	CHECK_EQ(wire_send(self->sv[1], "x", 1, NULL, 0, WIRE_BLOCK), -EPIPE);
}

/* Each code a daemon sends reads back, at the client, as an errno the daemon maps to it. */
TEST(codes_round_trip)
{
	const ProtobufCEnumDescriptor *desc = &iommud__v1__code__descriptor;

	CHECK_EQ(code_for_errno(0), IOMMUD__V1__CODE__CODE_OK);
	CHECK_EQ(errno_for_code(IOMMUD__V1__CODE__CODE_OK), 0);
	for (unsigned i = 0; i < desc->n_values; i++) {
		Iommud__V1__Code code = (Iommud__V1__Code)desc->values[i].value;
		int err = errno_for_code(code);

		CHECK(err <= 0);
		if (code != IOMMUD__V1__CODE__CODE_OK && err != -EIO)
			CHECK_EQ(code_for_errno(err), code);
	}
	CHECK_EQ(code_for_errno(-ENOENT), IOMMUD__V1__CODE__CODE_NOT_FOUND);
	CHECK_EQ(code_for_errno(-EDQUOT), IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED);
	CHECK_EQ(code_for_errno(-EOPNOTSUPP), IOMMUD__V1__CODE__CODE_UNIMPLEMENTED);
	/* An errno nobody listed is the daemon's own fault, never a guess. */
	CHECK_EQ(code_for_errno(-EXDEV), IOMMUD__V1__CODE__CODE_INTERNAL);
	CHECK_EQ(errno_for_code((Iommud__V1__Code)999), -EIO);
}
