/* SPDX-License-Identifier: MIT */
/*
 * What the whole daemon shares, and what one connection is to it: the state every method may
 * read (configuration, backend, registry, counters) and a client's identity, access and
 * session.
 *
 * Ownership: struct daemon owns nothing (main() owns the configuration and the backend,
 * serve() the registry and the probes, the server the counters). A struct client is owned by the
 * server's connection; it holds a reference on its tenant and on the session it joined, dropped by
 * client_fini, and the descriptors it keeps, which client_fini closes.
 */
#ifndef IOMMUD_DAEMON_H
#define IOMMUD_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <iommud_protocol.h>
#include <kh/kh.h>

#include "config.h"
#include "histogram.h"
#include "session.h"

#define IOMMUD_METHOD_SLOTS 64 /* method numbers (Request oneof field numbers) below this */
#define IOMMUD_CODES	    (IOMMUD__V1__CODE__CODE_UNAVAILABLE + 1) /* the schema's Code values */

struct state;

struct method_stats {
	uint64_t calls;
	uint64_t errors;
	uint64_t codes[IOMMUD_CODES]; /* calls by the status code of their reply */
	/* From the request's packet received to its reply sent; a call whose reply never left
	 * (the connection closed first) is counted above but not here. */
	struct iommud_hist latency;
};

/* What one loop thread counts of the calls it handles, GetStats summing every thread's: written
 * by its own thread only, under the daemon lock or a map path's (daemon_lock.h), so that a
 * reader holding the daemon lock sees no count move. */
struct counters {
	struct method_stats methods[IOMMUD_METHOD_SLOTS]; /* by method number */
	uint64_t rejected_packets;
} __attribute__((aligned(64)));

/* Why the server refused a connection, or closed one it had taken: GetStats counts each. */
enum refusal {
	REFUSED_MAX_CONNECTIONS,
	REFUSED_RESERVED,
	REFUSED_PER_UID,
	REFUSED_PER_TENANT,
	REFUSED_OPEN_FILES,
	REFUSED_UNIDENTIFIED,
	CLOSED_FIRST_REQUEST_TIMEOUT,
	CLOSED_IDLE_TIMEOUT,
	REFUSALS
};

struct daemon {
	const struct config *cfg;
	struct kh_backend *be;
	struct registry *reg;
	struct probes *probes;		 /* the map/unmap histograms; owned by serve() */
	struct delegations *delegations; /* owned by serve(); NULL where none are followed */
	struct state *state;		 /* the leases' state record (state.h); NULL: none kept */
	unsigned calls_kept;		 /* calls between slices (dispatch_resume); atomic */
	time_t started;
	/* Under the daemon lock from here on, but rate_limited, which the loop threads add to
	 * atomically. */
	unsigned connections;
	uint64_t refused[REFUSALS]; /* connections, by reason */
	uint64_t rate_limited;	    /* times a reader tenant's requests waited for reader-rate */
	size_t stats_left_out; /* entries the last GetStats left out: warned of when it changes */
	struct counters *counters; /* one per loop thread, the server's */
	unsigned n_counters;
};

struct client {
	struct peer peer;      /* owned */
	int fd;		       /* the connection's socket, borrowed; -1 without one */
	struct tenant *tenant; /* reference held while the connection lives; NULL: the peer is
				* not verified, and every request is refused */
	enum access access;
	struct session *session;   /* joined at Hello or at the first call needing one */
	bool called;		   /* a request was handled: Hello may no longer choose a lease */
	struct counters *counters; /* its loop thread's (borrowed) */
	/* Where its next Unmap or UnmapAll made alone starts its steps: the parts the last such
	 * step that took all it might had grown to (0: none yet). Sized to the time a step may
	 * take alone, the steps of each removal need not grow from one part again. */
	unsigned unmap_parts_alone;
	/* The descriptors it keeps for its maps (KeepFiles), by slot, examined when kept: each
	 * used slot's file.fd is the client's own, closed when the slot is given up and by
	 * client_fini. */
	struct kept_file {
		bool used;
		struct map_file file;
	} kept_files[IOMMUD_KEPT_FILES];
};

/* Sets up a client for a peer: finds its tenant if it is verified. Takes the peer over
 * (its groups and cgroup), whatever it returns; client_fini releases them. */
int client_init(struct daemon *d, struct client *c, const struct peer *peer);
/* Leaves the session, drops the tenant, closes the kept descriptors and releases the peer. */
void client_fini(struct client *c);
/* Closes the descriptor kept in slot (KeepFiles), if any. */
void client_give_up_kept_file(struct client *c, unsigned slot);
/* Root, or a peer whose section has stats = all: sees every tenant's figures and may
 * re-execute the daemon. */
bool client_is_observer(const struct client *c);

#endif
