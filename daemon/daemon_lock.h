/* SPDX-License-Identifier: MIT */
/*
 * The daemon lock: one mutex over everything the loop threads share but a tenant's own map
 * path (docs/architecture.md, "Threads"). Whoever holds it may touch the registry and every
 * tenant and session, the leases' state record and the descriptor store, the delegations, the
 * server's daemon-wide books (connections, caps, refusals) and the listening socket's flows.
 * It is taken around every method handler but the map path's (dispatch.c says which), around
 * a connection's arrival and end, and by the main thread's callbacks that act on the above.
 *
 * Lock order: the daemon lock first, then any lock a part takes for itself (a shard's inbox,
 * the ceilings' books); nothing taken under those takes the daemon lock. Nothing that holds
 * the daemon lock may delete or free another thread's event in a way that waits for its
 * callback (event_del, event_free): that callback may be waiting for the lock. Use
 * event_del_noblock or event_free_finalize, and let the callback find out, under the lock,
 * whether what it was for is still there.
 *
 * Ownership: the lock is static, for the life of the process.
 */
#ifndef IOMMUD_DAEMON_LOCK_H
#define IOMMUD_DAEMON_LOCK_H

#include <stdint.h>

/* Holders take turns in the order they asked (a fair lock): the main thread and every shard
 * get their turn between another's slices of a costly call. */
void daemon_lock(void);
/* Before it lets go, waits for the service manager to read the kernel descriptors removed
 * from its store under the lock (fdstore_sync), so that whoever takes the lock next finds the
 * devices of a released lease free, as the single loop did. */
void daemon_unlock(void);
/* How many times the daemon lock has been asked for since the start: a map path that sees it
 * change between its slices knows another thread waited for it meanwhile. */
uint64_t daemon_lock_asked(void);

/* What a map path holds instead (dispatch.c says which calls are one): map paths of several
 * tenants run at once, and none while the daemon lock is held or asked for, so that whoever
 * holds the daemon lock may read and change any tenant. What map paths share beside their own
 * tenant's objects is made safe for that on its own (the registry's books, the counters, the
 * probes' histograms, the log; docs/architecture.md, "Threads"). */
void map_path_lock(void);
void map_path_unlock(void);

#endif
