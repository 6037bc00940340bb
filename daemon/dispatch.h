/* SPDX-License-Identifier: MIT */
/*
 * From one received packet to one response packet: size and fd checks, decoding, the method
 * table (which method mutates, what access it needs, how many fds it takes), the handlers, and
 * the mapping of a failure to the RPC status. Nothing here touches a socket: the server
 * (server.h) does the I/O, so the fuzz harness and the server share this path.
 */
#ifndef IOMMUD_DISPATCH_H
#define IOMMUD_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <iommud_wire.h>
#include <kh/kh.h>

#include "config.h"
#include "session.h"

#define IOMMUD_METHOD_SLOTS 64 /* method numbers (Request oneof field numbers) below this */

struct method_stats {
	uint64_t calls;
	uint64_t errors;
};

/* What the whole daemon shares. Owns nothing: main() owns the config, backend and registry. */
struct daemon {
	const struct config *cfg;
	struct kh_backend *be;
	struct registry *reg;
	time_t started;
	unsigned connections;
	uint64_t rejected_packets;
	struct method_stats methods[IOMMUD_METHOD_SLOTS];
};

/* One connection's identity and place. Owned by the server's connection. */
struct client {
	struct peer peer;
	struct tenant *tenant; /* reference held while the connection lives */
	enum access access;
	struct session *session; /* joined at Hello or at the first call needing one */
	bool called;		 /* a request was handled: Hello may no longer choose a lease */
};

/* Checks that every method of the schema has a handler and every handler a method; logs what
 * is missing and returns -EINVAL if anything is. */
int dispatch_self_check(void);

/* Sets up a client for a peer: finds its tenant. */
int client_init(struct daemon *d, struct client *c, const struct peer *peer);
/* Leaves the session and drops the tenant. */
void client_fini(struct client *c);

/* Why a packet could not be taken as received, found by the server before decoding. */
enum packet_defect {
	PACKET_OK,
	PACKET_TRUNCATED,     /* longer than IOMMUD_MAX_MESSAGE */
	PACKET_FDS_TRUNCATED, /* more descriptors than IOMMUD_MAX_FDS */
};

/* Handles one packet: fds (n_fds of them) are owned by the call and closed unless a handler
 * keeps them. Writes the response into out (IOMMUD_MAX_MESSAGE bytes) and returns its length;
 * *out_fd is set to a descriptor to send with it (owned by the caller from then on) or -1. */
size_t dispatch_packet(struct daemon *d, struct client *c, const uint8_t *packet, size_t len,
		       enum packet_defect defect, int *fds, size_t n_fds, uint8_t *out,
		       int *out_fd);

#endif
