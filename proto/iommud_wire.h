/* SPDX-License-Identifier: MIT */
/*
 * The transport of docs/protocol.md (section 2) for both ends, as one small module: one packed
 * message per SOCK_SEQPACKET packet with its descriptors as SCM_RIGHTS beside it, and the one
 * table between negative errnos and iommud.v1.Code (section 3). The daemon's server and
 * libiommuctl both go through here, so framing, limits and codes are written once; what each
 * side does about a packet over a limit is its own business. Packing the messages is
 * iommud_envelope.h's.
 *
 * Ownership: descriptors sent are borrowed (the kernel duplicates them into the peer).
 * Descriptors received belong to the caller once wire_recv returns 0, close-on-exec; when it
 * fails, it has closed every one it got.
 *
 * Internal to the daemon and libiommuctl: hidden, so libiommuctl.so does not export it.
 */
#ifndef IOMMUD_WIRE_H
#define IOMMUD_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <iommud.pb-c.h>

#include "iommud_protocol.h"

#pragma GCC visibility push(hidden)

/* How a call waits for the socket: the daemon's event loop must never block on one client, a
 * client waits for its daemon. */
enum wire_wait {
	WIRE_BLOCK,
	WIRE_NONBLOCK, /* -EAGAIN instead of waiting */
};

/* The most descriptors wire_send takes: the kernel's limit for one message (SCM_MAX_FD). It is
 * above IOMMUD_MAX_FDS so that tests can send too many and watch the receiver refuse them. */
#define WIRE_SEND_MAX_FDS 253

/* One received packet. Over a limit, the packet is still received whole as a packet (the next
 * one starts clean); the flags say what was cut off. */
struct wire_packet {
	size_t len;	    /* bytes stored in the caller's buffer */
	bool truncated;	    /* the packet was longer than the buffer; the rest was dropped */
	bool fds_truncated; /* it carried more than IOMMUD_MAX_FDS descriptors; the rest closed */
	size_t n_fds;
	int fds[IOMMUD_MAX_FDS];
};

/* Sends len bytes as one packet with n_fds descriptors (at most WIRE_SEND_MAX_FDS), never
 * raising SIGPIPE and retrying on EINTR. Returns 0, or a negative errno: -EAGAIN with
 * WIRE_NONBLOCK when the socket is full (nothing was sent), -EPIPE when the peer is gone. */
int wire_send(int sock, const void *buf, size_t len, const int *fds, size_t n_fds,
	      enum wire_wait wait);

/* Receives one packet into buf (size bytes) and *ret_packet, retrying on EINTR. Returns 0, or
 * a negative errno: -EAGAIN with WIRE_NONBLOCK when none is waiting, -ECONNRESET at the end of
 * the connection (an empty packet reads as that end too, which is why the protocol forbids
 * them). */
int wire_recv(int sock, void *buf, size_t size, enum wire_wait wait,
	      struct wire_packet *ret_packet);

void wire_close_fds(const int *fds, size_t n);

/* The canonical code for a negative errno (0: CODE_OK, one not in the table: CODE_INTERNAL);
 * the daemon's status at the RPC boundary. */
Iommud__V1__Code code_for_errno(int rc);
/* The negative errno a client reports for a code when the status names none (0 for CODE_OK,
 * -EIO for a code not in the table). */
int errno_for_code(Iommud__V1__Code code);

#pragma GCC visibility pop

#endif
