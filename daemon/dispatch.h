/* SPDX-License-Identifier: MIT */
/*
 * From one received packet to one response packet: size and fd checks, decoding, the method
 * table (what each method needs before its handler runs), and the mapping of a failure to the
 * RPC status. The handlers live by what they act on: method_daemon.c, method_devices.c,
 * method_domains.c and method_mappings.c. Nothing here touches a socket: the server (server.h)
 * does the I/O, so the fuzz harness and the server share this path.
 */
#ifndef IOMMUD_DISPATCH_H
#define IOMMUD_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <iommud_wire.h>

#include "daemon.h"

struct call;

/* Checks that every method of the schema has an entry in the method table and every entry a
 * method, and that the entries are consistent; logs what is wrong and returns -EINVAL if
 * anything is. */
int dispatch_self_check(void);

/* Whether every string field, at any depth, of the message of type desc encoded in data[0, len)
 * is UTF-8 without NUL, as proto3 decoders require: 0, or -EINVAL with the failure recorded
 * (fail()), naming the field ("hello.lease"). The dispatcher checks every request with it
 * before any handler runs; the fuzz harness checks every reply. */
int dispatch_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Why a packet could not be taken as received, found by the server before decoding. */
enum packet_defect {
	PACKET_OK,
	PACKET_TRUNCATED,     /* longer than IOMMUD_MAX_MESSAGE */
	PACKET_FDS_TRUNCATED, /* more descriptors than IOMMUD_MAX_FDS */
};

/* Descriptors to send with a reply, owned by whoever holds the struct. unsent, when set, is
 * called with unsent_arg and unsent_token if they are closed without having gone out (the call
 * failed after its handler, or the reply could not be sent), so that what a handler handed out
 * with them is taken back: the one place that knows they were not sent. sent, when set, is
 * called with the same once they went out, the call recorded. */
struct reply_fds {
	int fds[IOMMUD_MAX_FDS];
	size_t n;
	void (*unsent)(void *arg, uint64_t token);
	void (*sent)(void *arg, uint64_t token);
	void *unsent_arg;
	uint64_t unsent_token;
};
/* Closes them, as not sent (calling unsent), and leaves none. */
void reply_fds_close(struct reply_fds *out);
/* Closes the daemon's copies of descriptors that went out with their reply. */
void reply_fds_sent(struct reply_fds *out);

/* Handles one packet: fds (n_fds of them) are owned by the call and closed unless a handler
 * keeps them. Writes the response into out (IOMMUD_MAX_MESSAGE bytes) and returns its length;
 * *out_fds to the descriptors to send with it (owned by the caller from then on; none when it
 * failed);
 * *ret_method to the number of the method the call counted to (0: none, the packet was
 * rejected or named no method this daemon knows), whose latency dispatch_reply_sent records.
 * A costly call stops at deadline_ns (monotonic_ns; UINT64_MAX: never) with work left: then
 * nothing is written, 0 returned and *ret_kept set to the call, which the caller owns, runs on
 * with dispatch_resume and ends with its reply or with dispatch_abandon; else *ret_kept is
 * NULL. alone: as for dispatch_resume, from the call's first slice. */
size_t dispatch_packet(struct daemon *d, struct client *c, const uint8_t *packet, size_t len,
		       enum packet_defect defect, int *fds, size_t n_fds, uint64_t deadline_ns,
		       bool alone, uint8_t *out, struct reply_fds *out_fds, unsigned *ret_method,
		       struct call **ret_kept);
/* Runs a kept call on until deadline_ns, as dispatch_packet: *ret_kept is the call again while
 * it has work left, else NULL and the call is gone. alone: its tenant has had its loop thread
 * to itself (flows_alone); if the call is a map path and nobody has asked for the daemon lock
 * for as long, its steps may grow past the slice (session.h, MAP_STEP_ALONE_NS); once either
 * stops, they start again from one part. */
size_t dispatch_resume(struct call *call, uint64_t deadline_ns, bool alone, uint8_t *out,
		       struct reply_fds *out_fds, unsigned *ret_method, struct call **ret_kept);
/* Ends a kept call whose client has gone: what it did is taken back (or, for a removal,
 * finished) until deadline_ns, as its work would go on, in steps of one part (it runs under the
 * daemon lock, which every other thread then waits for). False while there is more, for another
 * call in a later turn; true once the call is gone. */
bool dispatch_abandon(struct call *call, uint64_t deadline_ns);
/* dispatch_packet and dispatch_resume take the daemon lock (daemon_lock.h) where a call needs
 * it; dispatch_abandon is called under it. */
/* Requests are decoded into chunks of memory that go with them, but the thread that dispatches
 * keeps its last freed chunk (16 KiB) for the next request; this frees the calling thread's,
 * at teardown, once it dispatches no more. */
void dispatch_fini(void);
/* The reply to a call of method (as dispatch_packet gave it) received at received_ns
 * (monotonic_ns) has been sent. */
void dispatch_reply_sent(struct client *c, unsigned method, uint64_t received_ns);

#endif
