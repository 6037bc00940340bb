/* SPDX-License-Identifier: MIT */
/*
 * Delegations: devices handed to a VM manager (VMM) with a kernel IOMMU context of its own
 * (DelegateDevices, method_delegate.c), followed until the VMM exits or the lease they were
 * handed out in ends, whichever comes first; then the devices are free again and the log says
 * which happened.
 *
 * Where the state record is kept (state.h), each delegation is recorded before its reply goes,
 * its pidfd kept in the service manager's store, and it outlives the daemon: a daemon killed,
 * restarted or re-executed is followed by one that follows each VMM on from the record, or
 * ends the delegation at once if its VMM exited meanwhile (docs/architecture.md, "Survival").
 * Delegations are made within leases only, so none is lost with an anonymous session.
 *
 * Ownership: serve() owns the delegations; they own each record, its pidfd and its watch on the
 * event loop. The fds handed out are the VMM's: the daemon keeps none. The state keeps its own
 * copy of each pidfd.
 */
#ifndef IOMMUD_DELEGATE_H
#define IOMMUD_DELEGATE_H

#include <stdbool.h>
#include <stdint.h>

#include <iommud.pb-c.h>
#include <state.pb-c.h>

#include "session.h"

struct call;
struct daemon;
struct event_base;
struct probes;
struct registry;
struct state;
struct delegations;

/* Follows delegations on base; tells the registry to report sessions as they end. NULL when out
 * of memory. */
struct delegations *delegations_create(struct event_base *base, struct registry *reg);
/* Follows on the delegations the state record handed back (st NULL: none), once the leases are
 * rebuilt, and records from then on how each ends: each VMM's pidfd checked to hold the process
 * recorded, which still lives, and its devices reserved again; one that cannot be followed
 * ends at once, saying why. */
void delegations_adopt(struct delegations *dl, struct state *st, struct probes *probes);
/* Stops following every delegation (the daemon is stopping): the record keeps those it holds
 * for the next daemon, the others end. Stops following the registry. */
void delegations_destroy(struct delegations *dl);
/* What the state record keeps of delegation id (but its lease_id), pointing into it, and its
 * VMM's pidfd (the delegation's); -ENOENT when it is not followed. */
int delegation_describe(const struct delegations *dl, uint64_t id,
			Iommud__State__V1__Delegation *ret_d, int *ret_pidfd);

/* The id of the delegation that holds device; 0 when none does (dl NULL: none followed). */
uint64_t delegation_holding(const struct delegations *dl, const char *device);
/* Where a device is over every delegation and session: the one answer ListDevices, GetStats
 * and the metrics give. */
enum device_state device_state(const struct daemon *d, const char *device);
/* The state's name on the wire ("free", "bound", "attached", "delegated"). */
const char *device_state_name(enum device_state state);

/* Whether one more entry fits the reply being filled; NULL: every entry does. */
typedef bool delegation_fits_fn(const ProtobufCMessage *entry, void *arg);
/* The delegations the caller may see (an observer's all, anyone else's its own tenant's), with
 * the VMMs' pinned memory and memlock limits read now, in the call's memory. */
int delegations_reply(struct call *call, delegation_fits_fn *fits, void *fits_arg,
		      Iommud__V1__Delegation ***ret_list, size_t *ret_n);

#endif
