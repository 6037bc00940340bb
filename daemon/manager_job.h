/* SPDX-License-Identifier: MIT */
/*
 * What the service manager means by the SIGTERM it sent: a stop for good, or the stop half of
 * a restart (`systemctl restart`, a package upgrade's `try-restart`), after which it starts the
 * daemon again with its descriptor store. systemd says so only over D-Bus, as the type of the
 * job queued on the daemon's unit.
 *
 * Ownership: nothing outlives a call; the bus connection is opened and closed inside it.
 */
#ifndef IOMMUD_MANAGER_JOB_H
#define IOMMUD_MANAGER_JOB_H

#include <stdbool.h>

/* True only when systemd answered that the unit whose main process this is has a restart job
 * queued. Every other case (no systemd, not a service's main process, no D-Bus system bus, no
 * answer within 2 s, connecting included, a stop job or none) is false; the ones an operator can
 * change are logged with what to do. */
bool manager_restarting(void);

#endif
