/* SPDX-License-Identifier: MIT */
/*
 * The state record: what the named leases hold, kept in the service manager's descriptor store
 * (fdstore.h) so that a daemon killed at any instant is followed by one that rebuilds every
 * lease as its last acknowledged request left it (docs/architecture.md, "Survival").
 *
 * The record is a memfd: a header, then frames each holding one transaction of
 * proto/state.proto, appended through a shared mapping of the memfd. A transaction counts once
 * the header's committed length covers it, which is the last store before the reply is sent:
 * a kill before it leaves the change unacknowledged and unrecorded, a kill after it leaves it
 * acknowledged and recorded. The memory files the mappings need are stored beside it.
 * At start, and whenever the appended transactions outgrow the last snapshot, the record is
 * rewritten as one snapshot transaction in a new memfd of the next generation, stored before
 * the old one is removed, so the store always holds one complete record.
 *
 * Ownership: the state owns its record's memfd and mapping, and its copy of each stored file's
 * descriptor; the sessions stay the registry's.
 */
#ifndef IOMMUD_STATE_H
#define IOMMUD_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

struct call;
struct registry;
struct state;

/* Where a service manager keeps descriptors: rebuilds the leases of the record it handed
 * back, if any (one it refuses is said, dropped, and the daemon starts with none), then stores
 * a fresh record; *ret_state stays NULL without a manager, and nothing is recorded. Claims its
 * descriptors among those handed at start and drops the rest, so the listening socket must be
 * claimed before. A negative errno only when no record could be stored. */
int state_open(struct registry *reg, struct state **ret_state);
/* Records what an acknowledged call on a lease changed, before its reply goes; nothing for
 * anonymous sessions or a NULL state. A negative errno when the record could not be written,
 * with a message saying the change is in effect but would not survive a restart; the lease
 * is then marked, and state_check_call holds its next change until a snapshot is written. */
int state_record_call(struct state *st, struct call *call);
/* Before a call that changes a lease: 0, or -EBUSY while an earlier change of the lease is
 * in effect unrecorded and no snapshot could be written, or while a compaction long overdue
 * waits for the lease calls between slices to end (so that it never waits for ever); -ENOSPC
 * when a Map would need more memory files than the service manager's store takes. A Map let
 * through has the slots its files need set aside in call->store_room, which no other call
 * takes until state_call_end (or the call's recording, which stores the files) gives them
 * back: a MapBatch in slices finds its room at its end, whatever other leases mapped between
 * its slices. */
int state_check_call(struct state *st, struct call *call);
/* A call kept between slices: counted when its session is a lease, since what such a call has
 * mapped so far is not acknowledged and a snapshot would record it; true when counted, and
 * then state_call_done follows when it ends. Calls of anonymous sessions hold nothing back.
 * The room set aside for it shrinks to what its files need (call is the kept copy). */
bool state_call_kept(struct state *st, struct call *call);
void state_call_done(struct state *st);
/* Gives back the room set aside for the call however it ended; nothing for a NULL state. A
 * call that failed leaving mappings (call->left_mapped) needs none of it after: its files
 * never become the lease's (only a recorded call adds them), so no snapshot stores them, and
 * it says that those mappings would not survive a restart. */
void state_call_end(struct state *st, struct call *call);
/* The service manager's store as the state counts it (GetStats' DescriptorStore): the
 * descriptors it keeps for the daemon, those in it now, and the slots set aside for calls in
 * progress. */
struct store_usage {
	size_t capacity, stored, set_aside;
};
struct store_usage state_store_usage(const struct state *st);
/* A lease call that changed the lease without being acknowledged, so without a transaction:
 * an Unmap the kernel refused part way, or finished for a client gone, a map whose take back
 * failed. The record is rewritten from what is at the next state_compact_if_due, and the lease
 * changes no more before it is. */
void state_note_unacknowledged(struct state *st, const struct call *call);
/* Rewrites the record as one snapshot once its transactions have outgrown the last one (or a
 * change went unacknowledged), and no lease's call is between slices. */
void state_compact_if_due(struct state *st);
/* Calls visit with each descriptor the state keeps in the store and its name there (the
 * record, the leases' memory files and kernel descriptors, the delegations' pidfds), for a
 * re-execution to pass them on; stops at the first negative return. */
int state_each_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		  void *arg);

/* ---- delegations (delegate.h), which only named leases make ---------------------------- */

struct session;
struct Iommud__State__V1__Delegation;
/* Calls visit with each delegation the record handed back at start (state_open), the session
 * of its lease (NULL: the lease did not come back, or has ended) and the VMM's pidfd from the
 * store (-1: the store held none; the state keeps it, visit takes a copy), so that the
 * delegations follow their VMMs on. Nothing for a NULL state. */
void state_each_delegation(struct state *st,
			   void (*visit)(const struct Iommud__State__V1__Delegation *d,
					 struct session *lease, int pidfd, void *arg),
			   void *arg);
/* The last delegation id the record holds (0: none), so that none is given twice. */
uint64_t state_last_delegation_id(const struct state *st);
/* The delegation ended: the record says so at once, and its pidfd leaves the store. Nothing
 * for a NULL state or a delegation the record does not hold. */
void state_end_delegation(struct state *st, uint64_t id);

/* Lets go of the record without touching the store, so a manager that keeps the store across
 * the daemon's stop hands it to the next one; before the registry is destroyed. */
void state_close(struct state *st);

#endif
