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

struct state;

/* Remembers the binary's path and the arguments, at start. */
void reexec_remember(char **argv);
/* Executes the daemon again with listen_fd and what the state keeps; returns only on failure,
 * a negative errno, after which the process can no longer serve (its descriptors moved). */
int reexec(const struct state *st, int listen_fd);

#endif
