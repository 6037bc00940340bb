// SPDX-License-Identifier: MIT
#include "iommud_wire.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room for the control message of one packet with n descriptors, aligned for its header. */
#define CONTROL_BUFFER(n)                                                                          \
	union {                                                                                    \
		struct cmsghdr align;                                                              \
		char buf[CMSG_SPACE(sizeof(int) * (n))];                                           \
	}

int wire_send(int sock, const void *buf, size_t len, const int *fds, size_t n_fds,
	      enum wire_wait wait)
{
	CONTROL_BUFFER(WIRE_SEND_MAX_FDS) control;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	/* A peer gone away is an error to report, not a SIGPIPE to die of. */
	int flags = MSG_NOSIGNAL | (wait == WIRE_NONBLOCK ? MSG_DONTWAIT : 0);

	if (n_fds > WIRE_SEND_MAX_FDS)
		return -EINVAL;
	if (n_fds) {
		struct cmsghdr *cmsg;

		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
		memset(control.buf, 0, msg.msg_controllen);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * n_fds);
	}
	/* A SOCK_SEQPACKET packet goes whole or not at all, so there is no partial send. */
	while (sendmsg(sock, &msg, flags) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

void wire_close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		(void)close(fds[i]);
}

/* Takes the descriptors of every SCM_RIGHTS message into packet, closing those over the
 * limit; returns false if any was. */
static bool take_fds(struct msghdr *msg, struct wire_packet *packet)
{
	bool all = true;

	for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg); cmsg; cmsg = CMSG_NXTHDR(msg, cmsg)) {
		size_t count;

		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < count; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
			if (packet->n_fds < IOMMUD_MAX_FDS) {
				packet->fds[packet->n_fds++] = fd;
			} else {
				(void)close(fd);
				all = false;
			}
		}
	}
	return all;
}

int wire_recv(int sock, void *buf, size_t size, enum wire_wait wait, struct wire_packet *ret_packet)
{
	/* Exactly the limit: a packet with more descriptors shows as MSG_CTRUNC, the kernel
	 * closing what did not fit. */
	CONTROL_BUFFER(IOMMUD_MAX_FDS) control;
	struct iovec iov = {.iov_base = buf, .iov_len = size};
	struct msghdr msg = {.msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf)};
	int flags = MSG_CMSG_CLOEXEC | (wait == WIRE_NONBLOCK ? MSG_DONTWAIT : 0);
	struct wire_packet packet = {0};
	ssize_t n;

	do
		n = recvmsg(sock, &msg, flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	packet.fds_truncated = !take_fds(&msg, &packet) || (msg.msg_flags & MSG_CTRUNC);
	if (n == 0) {
		wire_close_fds(packet.fds, packet.n_fds);
		return -ECONNRESET;
	}
	packet.len = (size_t)n;
	packet.truncated = msg.msg_flags & MSG_TRUNC;
	*ret_packet = packet;
	return 0;
}

/* Between the two sides' errors: the first errno of each code is the one a client reports
 * for a status that names none. */
static const struct {
	int err;
	Iommud__V1__Code code;
} codes[] = {
	{EINVAL, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT},
	{EBADF, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT},
	{EMSGSIZE, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT},
	{ENOTSOCK, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT},
	{EFAULT, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT},
	{ENOENT, IOMMUD__V1__CODE__CODE_NOT_FOUND},
	{ENODEV, IOMMUD__V1__CODE__CODE_NOT_FOUND},
	{ESRCH, IOMMUD__V1__CODE__CODE_NOT_FOUND},
	{EEXIST, IOMMUD__V1__CODE__CODE_ALREADY_EXISTS},
	{EPERM, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED},
	{EACCES, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED},
	{ENOSPC, IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED},
	{ENOMEM, IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED},
	{EDQUOT, IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED},
	{EMFILE, IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED},
	{ENFILE, IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED},
	{EBUSY, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION},
	{EADDRINUSE, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION},
	{EALREADY, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION},
	{ENOTCONN, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION},
	{ERANGE, IOMMUD__V1__CODE__CODE_OUT_OF_RANGE},
	{EOVERFLOW, IOMMUD__V1__CODE__CODE_OUT_OF_RANGE},
	{EOPNOTSUPP, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED},
	{ENOSYS, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED},
	{ENOTTY, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED},
	/* A client that finds no daemon says so with ECONNREFUSED; the daemon going down is
	 * ESHUTDOWN inside it. */
	{ECONNREFUSED, IOMMUD__V1__CODE__CODE_UNAVAILABLE},
	{ESHUTDOWN, IOMMUD__V1__CODE__CODE_UNAVAILABLE},
	{EIO, IOMMUD__V1__CODE__CODE_INTERNAL},
};

Iommud__V1__Code code_for_errno(int rc)
{
	if (rc == 0)
		return IOMMUD__V1__CODE__CODE_OK;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].err == -rc)
			return codes[i].code;
	return IOMMUD__V1__CODE__CODE_INTERNAL;
}

int errno_for_code(Iommud__V1__Code code)
{
	if (code == IOMMUD__V1__CODE__CODE_OK)
		return 0;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].code == code)
			return -codes[i].err;
	return -EIO;
}
