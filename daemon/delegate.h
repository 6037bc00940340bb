/* SPDX-License-Identifier: MIT */
/*
 * Delegations: devices handed to a VM manager (VMM) with a kernel IOMMU context of its own
 * (DelegateDevices, method_delegate.c), followed until the VMM exits or the lease they were
 * handed out in ends, whichever comes first; then the devices are free again and the log says
 * which happened.
 *
 * Ownership: serve() owns the delegations; they own each record, its pidfd and its watch on the
 * event loop. The fds handed out are the VMM's: the daemon keeps none.
 */
#ifndef IOMMUD_DELEGATE_H
#define IOMMUD_DELEGATE_H

struct event_base;
struct registry;
struct delegations;

/* Follows delegations on base; tells the registry to report sessions as they end. NULL when out
 * of memory. */
struct delegations *delegations_create(struct event_base *base, struct registry *reg);
/* Ends every delegation (the daemon is stopping) and stops following the registry. */
void delegations_destroy(struct delegations *dl);

#endif
