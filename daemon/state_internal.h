/* SPDX-License-Identifier: MIT */
/*
 * What state.c, state_adopt.c and state_snapshot.c share: the state and the leases it has
 * recorded. A lease_rec mirrors what the record says of a lease that the session does not keep
 * itself (the arguments each domain was allocated with, the devices recorded as bound, the
 * memory files kept in the store); everything else is read from the session when a snapshot
 * is written.
 *
 * Ownership: the state owns its lease_recs; a lease_rec owns its stored files' descriptors (the
 * store holds copies) and its domains' nested data; the session is the registry's, and its
 * end (the registry's lease_end call) frees the lease_rec.
 */
#ifndef IOMMUD_STATE_INTERNAL_H
#define IOMMUD_STATE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <state.pb-c.h>

struct call;

#include "session.h"
#include "state_record.h"

#define LEASE_FILE_NAME 40 /* "lease<u32>.file<u32>", "lease<u32>.device<u32>", ...domain */

struct lease_file {
	uint32_t id;
	dev_t dev;
	ino_t ino;
	bool writable;
	int fd;
	bool used;   /* by a mapping: the snapshot being written keeps it */
	bool stored; /* in the store; false after a refused FDSTORE, until a snapshot retries */
};

struct lease_domain {
	uint32_t id;
	char device[KH_NAME_MAX];
	struct kh_domain_alloc_args args; /* data points at data */
	void *data;
	bool dirty; /* tracking dirty pages */
};

struct lease_rec {
	LIST_ENTRY(lease_rec) link;
	struct session *s;
	uint32_t id;
	bool left_out;	 /* by the snapshot last written: it could not be */
	bool unrecorded; /* a change took effect unrecorded: a snapshot must be written first */
	bool released;	 /* its ReleaseLease was acknowledged; it ends with its last connection */
	struct lease_file *files;
	size_t n_files, cap_files;
	uint32_t last_file_id;
	struct lease_domain *domains;
	size_t n_domains, cap_domains;
	char (*devices)[KH_NAME_MAX];
	size_t n_devices, cap_devices;
	/* Where the backend's kernel objects can be taken over: whether the context's kernel
	 * descriptor is in the store, and the devices (by id) whose descriptors are. */
	bool kernel_stored;
	uint32_t *stored_devs;
	size_t n_stored_devs, cap_stored_devs;
	/* The domains (by id) whose own descriptors are (vfio-type1's containers). */
	uint32_t *stored_doms;
	size_t n_stored_doms, cap_stored_doms;
};

struct anon_rec;
struct entry_box;
struct kernel_plans;
struct delegation_rec;

struct state {
	struct registry *reg;
	struct record rec;
	bool adopt;	     /* the backend's kernel objects can be taken over (KH_CAP_ADOPT) */
	uint64_t compact_at; /* committed bytes past which the record is rewritten */
	size_t store_max;    /* descriptors the manager keeps for the daemon */
	size_t set_aside;    /* slots the calls in progress will store (call->store_room) */
	unsigned calls_kept; /* of leases, between slices: no snapshot meanwhile */
	bool snapshot_due;   /* a lease changed unacknowledged: rewrite the record at once */
	LIST_HEAD(, lease_rec) leases;
	uint32_t last_lease_id;
	struct kernel_plans
		*plans;		  /* state_adopt.c: what each lease's kernel holds, while it runs */
	struct entry_box **boxes; /* the transaction being built, reused */
	size_t n_boxes, cap_boxes;
	Iommud__State__V1__Entry **entries; /* the boxes' entries, as the transaction lists them */
	size_t cap_entries;
	LIST_HEAD(, delegation_rec) delegations; /* state_delegation.c */
	uint64_t last_delegation_id;
	/* state_anon.c: the anonymous sessions whose devices' descriptors are in the store. */
	LIST_HEAD(, anon_rec) anons;
	uint32_t last_anon_id;
};

struct lease_rec *lease_find(struct state *st, const struct session *s);
struct lease_rec *lease_by_id(struct state *st, uint32_t id);
struct lease_rec *lease_add(struct state *st, struct session *s, uint32_t id);
void lease_file_name(const struct lease_rec *rec, uint32_t file_id, char name[LEASE_FILE_NAME]);
/* The store's name for the lease's kernel context (dev_id 0) or a bound device's descriptor. */
void lease_kernel_name(const struct lease_rec *rec, uint32_t dev_id, char name[LEASE_FILE_NAME]);
int lease_add_stored_dev(struct lease_rec *rec, uint32_t dev_id);
/* The same for a domain that is a kernel object of its own ("lease<L>.domain<D>"). */
void lease_domain_kernel_name(const struct lease_rec *rec, uint32_t dom_id,
			      char name[LEASE_FILE_NAME]);
int lease_add_stored_dom(struct lease_rec *rec, uint32_t dom_id);
/* Whether id is among the n ids. */
bool ids_have(const uint32_t *ids, size_t n, uint32_t id);
/* Hands the store the lease's kernel descriptors it does not hold yet, so the next daemon can
 * take the objects over; nothing where the backend's cannot be. */
void lease_store_kernel(const struct state *st, struct lease_rec *rec);
int lease_add_file(struct lease_rec *rec, uint32_t id, dev_t dev, ino_t ino, bool writable, int fd);
/* Hands the file to the store unless it is there already. */
int lease_store_file(const struct lease_rec *rec, struct lease_file *lf);
struct lease_file *lease_file_find(struct lease_rec *rec, dev_t dev, ino_t ino, bool writable);
struct lease_file *lease_file_by_id(struct lease_rec *rec, uint32_t id);
void lease_drop_unused_files(struct lease_rec *rec);
int lease_add_domain(struct lease_rec *rec, uint32_t id, const char *device,
		     const struct kh_domain_alloc_args *args);
struct lease_domain *lease_domain_find(struct lease_rec *rec, uint32_t id);
void lease_remove_domain(struct lease_rec *rec, uint32_t id);
void lease_unstore_freed(struct lease_rec *rec);
int lease_add_device(struct lease_rec *rec, const char *name);

/* The transaction being built: an entry of this kind, its change initialised (the returned
 * pointer), NULL when out of memory; txn_commit appends and commits them as one. */
void *txn_add(struct state *st, Iommud__State__V1__Entry__ChangeCase change);
int txn_commit(struct state *st);
/* Entries of each kind, shared by the calls' transactions and the snapshot. */
int add_lease(struct state *st, struct lease_rec *rec);
int add_bind(struct state *st, struct lease_rec *rec, const char *device);
int add_alloc(struct state *st, struct lease_rec *rec, const struct lease_domain *d);
int add_device_domain(struct state *st, struct lease_rec *rec, const char *device);
int add_file(struct state *st, struct lease_rec *rec, const struct lease_file *lf);
int add_map(struct state *st, struct lease_rec *rec, uint32_t domain_id, uint32_t file_id,
	    const struct mapping_view *m);
int add_dirty(struct state *st, struct lease_rec *rec, uint32_t domain_id, bool enable);
int add_release(struct state *st, struct lease_rec *rec);

/* Delegations (state_delegation.c). The entry of the delegation DelegateDevices made, with
 * its VMM's pidfd put in the store; the snapshot's entries of every delegation; the
 * delegations of the record the store handed back, with their pidfds claimed, after the
 * leases are rebuilt; how many pidfds the store holds; each of them visited, as
 * state_each_fd; every delegation forgotten, nothing taken out of the store. */
int add_delegation(struct state *st, struct lease_rec *rec, const struct call *call);
int add_delegations(struct state *st);
/* The delegation of a DelegateDevices whose transaction could not be committed forgotten,
 * its pidfd taken out of the store: the call fails, so the delegation is taken back. */
void delegation_unrecorded(struct state *st, const struct call *call);
/* Refuses a DelegateDevices whose VMM's pidfd, and rec's kernel context if it is not stored
 * yet (rec NULL: a lease not recorded yet), the store has no room for (-ENOSPC). */
int check_delegation_room(const struct state *st, const struct lease_rec *rec);
/* The delegations whose end a snapshot now records by leaving them out, with their pidfds. */
void delegations_drop_ended(struct state *st);
void adopt_delegations(struct state *st, Iommud__State__V1__Transaction *const *txns, size_t n);
size_t delegation_fds_stored(const struct state *st);
int each_delegation_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		       void *arg);
void delegation_recs_free(struct state *st);

/* Rebuilds the leases of the record the store handed back, if any; a record it refuses is
 * said and dropped (state_adopt.c). */
void state_adopt(struct state *st);
/* Writes the leases as one snapshot into a record of the next generation, stores it, and
 * removes the old one and the files no mapping uses any more (state_snapshot.c). */
int state_compact(struct state *st);
/* Frees the state; unstore: its files are taken out of the store too. */
void state_free(struct state *st, bool unstore);
/* How many descriptors the state keeps in the store. */
size_t stored_count(const struct state *st);
/* Whether the store has room for need more descriptors, one slot kept free to rewrite the
 * record. */
bool store_has_room(const struct state *st, size_t need);
/* Passes a kernel descriptor the state keeps in the store to a state_each_fd visitor; one
 * whose object is gone (fd negative) is said and left out. */
int visit_kernel_fd(const char *name, int fd, int (*visit)(const char *name, int fd, void *arg),
		    void *arg);

/* state_anon.c: where the backend's objects outlive the daemon, an anonymous session's
 * device whose fd OpenDevice handed out is kept in the store until the session ends
 * (anon_end), so that the next daemon can block its DMA; 0 for any other call, or a negative
 * errno that refuses the OpenDevice when it cannot be kept. */
int anon_record_call(struct state *st, const struct call *call);
/* For a call of an anonymous session, before its handler: -ENOSPC, said, for an OpenDevice
 * whose descriptors the store has no room for; 0 otherwise. */
int anon_check_call(const struct state *st, const struct call *call);
void anon_end(struct state *st, const struct session *s);
size_t anon_stored_count(const struct state *st);
int anon_each_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		 void *arg);
/* unstore: their descriptors are taken out of the store too. */
void anon_free_all(struct state *st, bool unstore);

#endif
