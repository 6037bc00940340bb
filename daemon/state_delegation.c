// SPDX-License-Identifier: MIT
/* Delegations in the state record: each one recorded with the DelegateDevices call that made
 * it, the pidfd that follows its VMM kept in the store as
 * "lease<lease_id>.delegation<id>.pidfd", its end recorded as soon as it ends; at start, the
 * delegations of the record handed back with their pidfds for delegate.h to follow on. The
 * record's delegations are the daemon's, not a lease's: they are written after every lease in a
 * snapshot, with the last id given out. */
#define _GNU_SOURCE /* F_DUPFD_CLOEXEC */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "call.h"
#include "delegate.h"
#include "fdstore.h"
#include "log.h"
#include "state.h"
#include "state_internal.h"
#include "status.h"

#define DELEGATION_FD_NAME 64 /* "lease<u32>.delegation<u64>.pidfd" */

/* A delegation the record holds. Owns its strings and its copy of the VMM's pidfd. */
struct delegation_rec {
	LIST_ENTRY(delegation_rec) link;
	Iommud__State__V1__Delegation d;
	int pidfd; /* -1: the store handed none back */
	/* Its end could not be recorded: the record still holds it, so its pidfd stays in the
	 * store until a snapshot leaves it out. */
	bool ended;
};

static void pidfd_name(const Iommud__State__V1__Delegation *d, char name[DELEGATION_FD_NAME])
{
	(void)snprintf(name, DELEGATION_FD_NAME, "lease%u.delegation%" PRIu64 ".pidfd", d->lease_id,
		       d->delegation_id);
}

/* What the record says of a delegation, field by field: the strings are shared. */
static void copy_fields(Iommud__State__V1__Delegation *to,
			const Iommud__State__V1__Delegation *from)
{
	to->lease_id = from->lease_id;
	to->delegation_id = from->delegation_id;
	to->devices = from->devices;
	to->uid = from->uid;
	to->vmm_pid = from->vmm_pid;
	to->vmm_uid = from->vmm_uid;
	to->vmm_cgroup = from->vmm_cgroup;
	to->vmm_start_time = from->vmm_start_time;
	to->since_unix_seconds = from->since_unix_seconds;
}

static struct delegation_rec *delegation_rec_find(struct state *st, uint64_t id)
{
	struct delegation_rec *dr;

	LIST_FOREACH (dr, &st->delegations, link)
		if (dr->d.delegation_id == id)
			return dr;
	return NULL;
}

static void delegation_rec_free(struct delegation_rec *dr)
{
	LIST_REMOVE(dr, link);
	if (dr->pidfd >= 0)
		(void)close(dr->pidfd);
	free(dr->d.devices);
	free(dr->d.vmm_cgroup);
	free(dr);
}

/* The delegation forgotten, its pidfd taken out of the store too. */
static void delegation_rec_unstore(struct delegation_rec *dr)
{
	char name[DELEGATION_FD_NAME];

	if (dr->pidfd >= 0) {
		pidfd_name(&dr->d, name);
		fdstore_remove(name);
	}
	delegation_rec_free(dr);
}

/* The state's own copy of d, without a pidfd yet. */
static int delegation_rec_add(struct state *st, const Iommud__State__V1__Delegation *d,
			      struct delegation_rec **ret_dr)
{
	struct delegation_rec *dr = calloc(1, sizeof(*dr));

	if (!dr)
		return fail(-ENOMEM, "out of memory for the state record");
	iommud__state__v1__delegation__init(&dr->d);
	copy_fields(&dr->d, d);
	dr->d.devices = strdup(d->devices);
	dr->d.vmm_cgroup = strdup(d->vmm_cgroup);
	dr->pidfd = -1;
	LIST_INSERT_HEAD(&st->delegations, dr, link);
	if (!dr->d.devices || !dr->d.vmm_cgroup) {
		delegation_rec_free(dr);
		return fail(-ENOMEM, "out of memory for the state record");
	}
	if (d->delegation_id > st->last_delegation_id)
		st->last_delegation_id = d->delegation_id;
	*ret_dr = dr;
	return 0;
}

static int add_delegation_entry(struct state *st, const struct delegation_rec *dr)
{
	Iommud__State__V1__Delegation *d = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION);

	if (!d)
		return fail(-ENOMEM, "out of memory for the state record");
	copy_fields(d, &dr->d);
	return 0;
}

/* The VMM's pidfd, a copy of the delegation's, kept by the state and put in the store. */
static int store_pidfd(struct delegation_rec *dr, int pidfd)
{
	char name[DELEGATION_FD_NAME];

	dr->pidfd = fcntl(pidfd, F_DUPFD_CLOEXEC, 3);
	if (dr->pidfd < 0)
		return fail(-errno, "cannot keep a copy of the VMM's pidfd: %s", strerror(errno));
	pidfd_name(&dr->d, name);
	return fdstore_add(name, dr->pidfd);
}

int add_delegation(struct state *st, struct lease_rec *rec, const struct call *call)
{
	Iommud__State__V1__Delegation d = IOMMUD__STATE__V1__DELEGATION__INIT;
	struct delegation_rec *dr;
	int pidfd,
		rc = delegation_describe(call->d->delegations,
					 call->resp->delegate_devices->delegation_id, &d, &pidfd);

	d.lease_id = rec->id;
	if (rc == 0)
		rc = delegation_rec_add(st, &d, &dr);
	if (rc < 0)
		return rc;
	rc = store_pidfd(dr, pidfd);
	if (rc == 0)
		rc = add_delegation_entry(st, dr);
	/* Not recorded: the call fails, so the VMM never gets the devices and the delegation
	 * ends; delegation_unrecorded forgets it when the commit fails instead. */
	if (rc < 0)
		delegation_rec_unstore(dr);
	return rc;
}

void delegation_unrecorded(struct state *st, const struct call *call)
{
	struct delegation_rec *dr =
		delegation_rec_find(st, call->resp->delegate_devices->delegation_id);

	if (dr)
		delegation_rec_unstore(dr);
}

int check_delegation_room(const struct state *st, const struct lease_rec *rec)
{
	/* A lease's first recorded call stores its kernel context too, where it is taken over. */
	size_t need = 1 + (st->adopt && (!rec || !rec->kernel_stored));

	if (store_has_room(st, need))
		return 0;
	return fail(
		-ENOSPC,
		"the service manager's descriptor store has no room for the VMM's pidfd, "
		"which a delegation keeps there to survive a restart of the daemon (it holds "
		"%zu of the %zu it takes, %zu set aside for calls in progress, one kept free to "
		"rewrite the state record); end a delegation or release a lease first; an "
		"administrator can raise FileDescriptorStoreMax= of iommud.service",
		stored_count(st), st->store_max, st->set_aside);
}

int add_delegations(struct state *st)
{
	Iommud__State__V1__LastDelegationId *last;
	const struct delegation_rec *dr;
	int rc = 0;

	if (!st->last_delegation_id)
		return 0;
	last = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_LAST_DELEGATION_ID);
	if (!last)
		return fail(-ENOMEM, "out of memory for the state snapshot");
	last->last_id = st->last_delegation_id;
	LIST_FOREACH (dr, &st->delegations, link)
		if (rc == 0 && !dr->ended)
			rc = add_delegation_entry(st, dr);
	return rc;
}

void delegations_drop_ended(struct state *st)
{
	struct delegation_rec *dr, *next;

	for (dr = LIST_FIRST(&st->delegations); dr; dr = next) {
		next = LIST_NEXT(dr, link);
		if (dr->ended)
			delegation_rec_unstore(dr);
	}
}

void state_end_delegation(struct state *st, uint64_t id)
{
	struct delegation_rec *dr = st ? delegation_rec_find(st, id) : NULL;
	Iommud__State__V1__DelegationEnd end = IOMMUD__STATE__V1__DELEGATION_END__INIT;
	Iommud__State__V1__Entry entry = IOMMUD__STATE__V1__ENTRY__INIT, *entries[] = {&entry};
	Iommud__State__V1__Transaction txn = IOMMUD__STATE__V1__TRANSACTION__INIT;

	if (!dr || dr->ended)
		return;
	end.lease_id = dr->d.lease_id;
	end.delegation_id = id;
	entry.change_case = IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION_END;
	entry.delegation_end = &end;
	txn.n_entries = 1;
	txn.entries = entries;
	/* A transaction of its own, whatever call is building one: an end comes from the VMM's
	 * exit or a lease's, between calls. */
	if (record_append(&st->rec, &txn) == 0) {
		delegation_rec_unstore(dr);
		return;
	}
	/* The record still holds the delegation: with its pidfd kept, the next daemon still
	 * sees why it ended. The snapshot that leaves it out also takes the pidfd out. */
	log_warning("the end of delegation %" PRIu64 " could not be recorded (%s); the state "
		    "record is rewritten without it",
		    id, failure_message());
	dr->ended = true;
	st->snapshot_due = true;
	/* Between calls nothing else would write the snapshot soon; within a transaction
	 * being built, the call's end does. */
	if (!st->n_boxes)
		state_compact_if_due(st);
}

uint64_t state_last_delegation_id(const struct state *st)
{
	return st ? st->last_delegation_id : 0;
}

static void adopt_entry(struct state *st, const Iommud__State__V1__Entry *e)
{
	struct delegation_rec *dr;

	switch (e->change_case) {
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION:
		if (delegation_rec_find(st, e->delegation->delegation_id))
			log_err("state record: delegation %" PRIu64 " is recorded twice; the "
				"first is kept",
				e->delegation->delegation_id);
		else if (delegation_rec_add(st, e->delegation, &dr) < 0)
			log_err("state record: cannot rebuild delegation %" PRIu64 ": %s",
				e->delegation->delegation_id, failure_message());
		return;
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION_END:
		if ((dr = delegation_rec_find(st, e->delegation_end->delegation_id)))
			delegation_rec_free(dr);
		return;
	case IOMMUD__STATE__V1__ENTRY__CHANGE_LAST_DELEGATION_ID:
		if (e->last_delegation_id->last_id > st->last_delegation_id)
			st->last_delegation_id = e->last_delegation_id->last_id;
		return;
	default:
		return;
	}
}

void adopt_delegations(struct state *st, Iommud__State__V1__Transaction *const *txns, size_t n)
{
	char name[DELEGATION_FD_NAME];
	struct delegation_rec *dr;

	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < txns[i]->n_entries; j++)
			adopt_entry(st, txns[i]->entries[j]);
	/* Claimed here, before the strays are dropped; delegate.h checks them. */
	LIST_FOREACH (dr, &st->delegations, link) {
		pidfd_name(&dr->d, name);
		dr->pidfd = fdstore_claim_name(name);
		if (dr->pidfd < 0)
			dr->pidfd = -1;
	}
}

void state_each_delegation(struct state *st,
			   void (*visit)(const Iommud__State__V1__Delegation *d,
					 struct session *lease, int pidfd, void *arg),
			   void *arg)
{
	struct delegation_rec *dr, *next;
	struct lease_rec *rec;

	if (!st)
		return;
	/* visit may end the delegation it is given, and only that one. */
	for (dr = LIST_FIRST(&st->delegations); dr; dr = next) {
		next = LIST_NEXT(dr, link);
		if (dr->ended)
			continue;
		rec = lease_by_id(st, dr->d.lease_id);
		visit(&dr->d, rec ? rec->s : NULL, dr->pidfd, arg);
	}
}

size_t delegation_fds_stored(const struct state *st)
{
	const struct delegation_rec *dr;
	size_t n = 0;

	LIST_FOREACH (dr, &st->delegations, link)
		n += dr->pidfd >= 0;
	return n;
}

int each_delegation_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		       void *arg)
{
	char name[DELEGATION_FD_NAME];
	const struct delegation_rec *dr;
	int rc = 0;

	LIST_FOREACH (dr, &st->delegations, link) {
		if (dr->pidfd < 0)
			continue;
		pidfd_name(&dr->d, name);
		if ((rc = visit(name, dr->pidfd, arg)) < 0)
			return rc;
	}
	return rc;
}

void delegation_recs_free(struct state *st)
{
	while (!LIST_EMPTY(&st->delegations))
		delegation_rec_free(LIST_FIRST(&st->delegations));
}
