/* SPDX-License-Identifier: MIT */
/*
 * Re-executing the daemon in place, for upgrades without the service manager's help: the
 * binary at the path the daemon was started from (a new one, after a package upgrade) is
 * executed in the same process with the listening socket, the state record and the leases'
 * memory files kept open and named in LISTEN_FDS and LISTEN_FDNAMES, so the new daemon adopts
 * them exactly as it would after a crash (state.h).
 *
 * Ownership: nothing; reexec_remember keeps the path and the argument vector it is given
 * (main's, which outlive the process).
 */
#ifndef IOMMUD_REEXEC_H
#define IOMMUD_REEXEC_H

#include <stdbool.h>

struct state;

/* The name the listening socket is passed under when the daemon bound its path itself (no
 * socket unit): the next image then owns the path too, and removes it when it stops. A socket
 * from the service manager keeps the unit's name, and its path stays the unit's. */
#define REEXEC_BOUND_LISTENER_NAME "iommud.socket.bound"

/* Remembers the binary's path and the arguments, at start, and whether this image was started
 * by a re-execution (reexec_arrived). */
void reexec_remember(char **argv);
/* Whether this process image came from reexec, not from a start. */
bool reexec_arrived(void);
/* Executes the daemon again with listen_fd (bound_here: its path bound by this daemon, not
 * passed by the service manager) and what the state keeps; returns only on failure, a negative
 * errno, after which the process can no longer serve (its descriptors moved). */
int reexec(const struct state *st, int listen_fd, bool bound_here);

#endif
