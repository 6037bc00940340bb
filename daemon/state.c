// SPDX-License-Identifier: MIT
/* The state record's contents: what each lease is recorded with, the transaction an
 * acknowledged call adds, the snapshot that compaction writes. Rebuilding from a record is in
 * state_adopt.c. */
#define _GNU_SOURCE /* O_CLOEXEC with /proc reopen */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "call.h"
#include "fdstore.h"
#include "log.h"
#include "state_internal.h"
#include "status.h"

/* ---- the leases the record knows -------------------------------------------------------- */

static int grow(void **v, size_t *cap, size_t n, size_t size)
{
	size_t want = *cap ? 2 * *cap : 8;
	void *grown;

	if (n < *cap)
		return 0;
	grown = realloc(*v, want * size);
	if (!grown)
		return fail(-ENOMEM, "out of memory for the state record");
	*v = grown;
	*cap = want;
	return 0;
}

struct lease_rec *lease_find(struct state *st, const struct session *s)
{
	struct lease_rec *rec;

	LIST_FOREACH (rec, &st->leases, link)
		if (rec->s == s)
			return rec;
	return NULL;
}

struct lease_rec *lease_by_id(struct state *st, uint32_t id)
{
	struct lease_rec *rec;

	LIST_FOREACH (rec, &st->leases, link)
		if (rec->id == id)
			return rec;
	return NULL;
}

struct lease_rec *lease_add(struct state *st, struct session *s, uint32_t id)
{
	struct lease_rec *rec = calloc(1, sizeof(*rec));

	if (!rec)
		return NULL;
	rec->s = s;
	rec->id = id;
	if (id > st->last_lease_id)
		st->last_lease_id = id;
	LIST_INSERT_HEAD(&st->leases, rec, link);
	return rec;
}

void lease_file_name(const struct lease_rec *rec, uint32_t file_id, char name[LEASE_FILE_NAME])
{
	(void)snprintf(name, LEASE_FILE_NAME, "lease%u.file%u", rec->id, file_id);
}

/* Forgets file i of the lease, taking its descriptor out of the store. */
static void lease_drop_file(struct lease_rec *rec, size_t i)
{
	char name[LEASE_FILE_NAME];

	lease_file_name(rec, rec->files[i].id, name);
	fdstore_remove(name);
	(void)close(rec->files[i].fd);
	rec->files[i] = rec->files[--rec->n_files];
}

void lease_drop_unused_files(struct lease_rec *rec)
{
	for (size_t i = 0; i < rec->n_files;) {
		if (rec->files[i].used)
			i++;
		else
			lease_drop_file(rec, i);
	}
}

void lease_kernel_name(const struct lease_rec *rec, uint32_t dev_id, char name[LEASE_FILE_NAME])
{
	if (dev_id)
		(void)snprintf(name, LEASE_FILE_NAME, "lease%u.device%u", rec->id, dev_id);
	else
		(void)snprintf(name, LEASE_FILE_NAME, "lease%u.iommu", rec->id);
}

void lease_domain_kernel_name(const struct lease_rec *rec, uint32_t dom_id,
			      char name[LEASE_FILE_NAME])
{
	(void)snprintf(name, LEASE_FILE_NAME, "lease%u.domain%u", rec->id, dom_id);
}

static int stored_add(uint32_t **ids, size_t *cap, size_t *n, uint32_t id)
{
	int rc = grow((void **)ids, cap, *n, sizeof(**ids));

	if (rc == 0)
		(*ids)[(*n)++] = id;
	return rc;
}

bool ids_have(const uint32_t *ids, size_t n, uint32_t id)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

int lease_add_stored_dev(struct lease_rec *rec, uint32_t dev_id)
{
	return stored_add(&rec->stored_devs, &rec->cap_stored_devs, &rec->n_stored_devs, dev_id);
}

int lease_add_stored_dom(struct lease_rec *rec, uint32_t dom_id)
{
	return stored_add(&rec->stored_doms, &rec->cap_stored_doms, &rec->n_stored_doms, dom_id);
}

/* Whether the lease's i-th domain is a kernel object of its own whose descriptor is not in the
 * store yet. */
static bool dom_to_store(const struct lease_rec *rec, size_t i)
{
	uint32_t id = rec->domains[i].id;

	return !ids_have(rec->stored_doms, rec->n_stored_doms, id) &&
	       kh_domain_kernel_fd(session_ctx(rec->s), id) >= 0;
}

static int store_domain_fd(const struct lease_rec *rec, uint32_t dom_id)
{
	char name[LEASE_FILE_NAME];
	int fd = kh_domain_kernel_fd(session_ctx(rec->s), dom_id);

	lease_domain_kernel_name(rec, dom_id, name);
	return fd < 0 ? fd : fdstore_add(name, fd);
}

/* A freed domain's descriptor (an empty container) leaves the store once the record no longer
 * names the domain: sent before the commit, a kill in between would leave the record naming a
 * domain whose descriptor is gone, and the next start would rebuild the whole lease. One that
 * stays after a kill past the commit is a stray, which the next start takes out. */
void lease_unstore_freed(struct lease_rec *rec)
{
	char name[LEASE_FILE_NAME];

	for (size_t i = 0; i < rec->n_stored_doms;) {
		if (lease_domain_find(rec, rec->stored_doms[i])) {
			i++;
			continue;
		}
		lease_domain_kernel_name(rec, rec->stored_doms[i], name);
		fdstore_remove(name);
		rec->stored_doms[i] = rec->stored_doms[--rec->n_stored_doms];
	}
}

static bool lease_dev_stored(const struct lease_rec *rec, uint32_t dev_id)
{
	return ids_have(rec->stored_devs, rec->n_stored_devs, dev_id);
}

static int store_kernel_fd(const struct lease_rec *rec, uint32_t dev_id, int fd)
{
	char name[LEASE_FILE_NAME];

	lease_kernel_name(rec, dev_id, name);
	return fd < 0 ? fd : fdstore_add(name, fd);
}

/* Whether the lease's i-th device is bound and its descriptor not in the store yet. */
static bool dev_to_store(const struct lease_rec *rec, size_t i, uint32_t *ret_dev_id)
{
	uint32_t dev_id;

	if (session_device(rec->s, rec->devices[i], false, &dev_id) < 0 ||
	    lease_dev_stored(rec, dev_id))
		return false;
	*ret_dev_id = dev_id;
	return true;
}

/* Its record, the leases' memory files and kernel descriptors, the delegations' pidfds, the
 * anonymous sessions', and, while the daemon starts, what the store handed back that nobody
 * has claimed or dropped yet (a delegation's pidfd not yet followed on, a stray), so that no
 * descriptor stored meanwhile takes the slot kept for the record. */
size_t stored_count(const struct state *st)
{
	const struct lease_rec *rec;
	size_t n = 1 + delegation_fds_stored(st) + anon_stored_count(st) + fdstore_unclaimed();

	LIST_FOREACH (rec, &st->leases, link)
		n += rec->n_files + rec->kernel_stored + rec->n_stored_devs + rec->n_stored_doms;
	return n;
}

/* Room for need more descriptors beside those set aside for calls in progress, while one slot
 * stays free to rewrite the record: past the store's size the manager refuses in silence, and
 * the next compaction would lose the record. */
bool store_has_room(const struct state *st, size_t need)
{
	return stored_count(st) + st->set_aside + need + 1 <= st->store_max;
}

struct store_usage state_store_usage(const struct state *st)
{
	return (struct store_usage){
		.capacity = st->store_max, .stored = stored_count(st), .set_aside = st->set_aside};
}

/* Moves the call's room to n slots, never adding to what it had, so that no slot is counted
 * twice, for it and for the store. */
static void set_room(struct state *st, struct call *call, size_t n)
{
	st->set_aside = st->set_aside - call->store_room + n;
	call->store_room = n;
}

/* The kernel descriptors go into the store all of them or none: without the context's, the
 * devices' are of no use, and a device missing makes the next daemon rebuild the lease. */
static int reserve_kernel_room(const struct state *st, const struct lease_rec *rec, size_t need)
{
	if (store_has_room(st, need))
		return 0;
	log_struct(LOG_WARNING, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
		   "the service manager's descriptor store has no room for %zu more of lease "
		   "'{IOMMUD_LEASE}''s kernel descriptors (it takes %zu, one kept free to rewrite "
		   "the state record): after a restart its objects are rebuilt, not taken over; "
		   "raise FileDescriptorStoreMax= of iommud.service to keep them",
		   need, st->store_max);
	return -ENOSPC;
}

/* Whether the context's own descriptor is still to be stored: a backend whose contexts have
 * none (vfio-type1) keeps its kernel objects in the devices' and domains' descriptors. */
static bool ctx_to_store(const struct lease_rec *rec)
{
	return !rec->kernel_stored && kh_ctx_kernel_fd(session_ctx(rec->s)) != -EOPNOTSUPP;
}

static int store_domains(struct lease_rec *rec)
{
	int rc = 0;

	for (size_t i = 0; i < rec->n_domains && rc == 0; i++) {
		if (!dom_to_store(rec, i))
			continue;
		rc = store_domain_fd(rec, rec->domains[i].id);
		if (rc == 0)
			rc = lease_add_stored_dom(rec, rec->domains[i].id);
	}
	return rc;
}

void lease_store_kernel(const struct state *st, struct lease_rec *rec)
{
	struct kh_ctx *ctx = session_ctx(rec->s);
	size_t need = ctx_to_store(rec);
	uint32_t dev_id;
	int rc = 0;

	if (!st->adopt)
		return;
	for (size_t i = 0; i < rec->n_devices; i++)
		need += dev_to_store(rec, i, &dev_id);
	for (size_t i = 0; i < rec->n_domains; i++)
		need += dom_to_store(rec, i);
	if (reserve_kernel_room(st, rec, need) < 0)
		return;
	if (ctx_to_store(rec)) {
		rc = store_kernel_fd(rec, 0, kh_ctx_kernel_fd(ctx));
		rec->kernel_stored = rc == 0;
	}
	for (size_t i = 0; i < rec->n_devices && rc == 0; i++) {
		if (!dev_to_store(rec, i, &dev_id))
			continue;
		rc = store_kernel_fd(rec, dev_id, kh_device_kernel_fd(ctx, dev_id));
		if (rc == 0)
			rc = lease_add_stored_dev(rec, dev_id);
	}
	if (rc == 0)
		rc = store_domains(rec);
	if (rc < 0)
		log_struct(LOG_WARNING, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "the service manager's store refused lease '{IOMMUD_LEASE}''s kernel "
			   "descriptors (%s): after a restart its objects are rebuilt, not taken "
			   "over, and its devices' DMA faults until they are",
			   strerror(-rc));
}

/* Takes the lease's kernel descriptors out of the store. */
static void lease_unstore_kernel(struct lease_rec *rec)
{
	char name[LEASE_FILE_NAME];

	if (rec->kernel_stored) {
		lease_kernel_name(rec, 0, name);
		fdstore_remove_kernel(name);
	}
	for (size_t i = 0; i < rec->n_stored_devs; i++) {
		lease_kernel_name(rec, rec->stored_devs[i], name);
		fdstore_remove_kernel(name);
	}
	for (size_t i = 0; i < rec->n_stored_doms; i++) {
		lease_domain_kernel_name(rec, rec->stored_doms[i], name);
		fdstore_remove_kernel(name);
	}
	rec->kernel_stored = false;
	rec->n_stored_devs = 0;
	rec->n_stored_doms = 0;
}

static void lease_free(struct lease_rec *rec, bool unstore)
{
	if (unstore)
		lease_unstore_kernel(rec);
	while (rec->n_files) {
		if (unstore)
			lease_drop_file(rec, 0);
		else
			(void)close(rec->files[--rec->n_files].fd);
	}
	for (size_t i = 0; i < rec->n_domains; i++)
		free(rec->domains[i].data);
	LIST_REMOVE(rec, link);
	free(rec->files);
	free(rec->domains);
	free(rec->devices);
	free(rec->stored_devs);
	free(rec->stored_doms);
	free(rec);
}

/* The registry's word that a session ended: a lease's (released, its last connection gone)
 * ends its record; an anonymous session's devices leave the store. */
static void lease_end(struct session *s, void *arg)
{
	struct lease_rec *rec = lease_find(arg, s);

	if (rec)
		lease_free(rec, true);
	else
		anon_end(arg, s);
}

int lease_add_file(struct lease_rec *rec, uint32_t id, dev_t dev, ino_t ino, bool writable, int fd)
{
	int rc = grow((void **)&rec->files, &rec->cap_files, rec->n_files, sizeof(*rec->files));

	if (rc < 0)
		return rc;
	rec->files[rec->n_files++] = (struct lease_file){
		.id = id, .dev = dev, .ino = ino, .writable = writable, .fd = fd};
	if (id > rec->last_file_id)
		rec->last_file_id = id;
	return 0;
}

int lease_store_file(const struct lease_rec *rec, struct lease_file *lf)
{
	char name[LEASE_FILE_NAME];
	int rc;

	if (lf->stored)
		return 0;
	lease_file_name(rec, lf->id, name);
	rc = fdstore_add(name, lf->fd);
	lf->stored = rc == 0;
	return rc;
}

struct lease_file *lease_file_find(struct lease_rec *rec, dev_t dev, ino_t ino, bool writable)
{
	for (size_t i = 0; i < rec->n_files; i++)
		if (rec->files[i].dev == dev && rec->files[i].ino == ino &&
		    rec->files[i].writable == writable)
			return &rec->files[i];
	return NULL;
}

struct lease_file *lease_file_by_id(struct lease_rec *rec, uint32_t id)
{
	for (size_t i = 0; i < rec->n_files; i++)
		if (rec->files[i].id == id)
			return &rec->files[i];
	return NULL;
}

int lease_add_domain(struct lease_rec *rec, uint32_t id, const char *device,
		     const struct kh_domain_alloc_args *args)
{
	struct lease_domain *d;
	int rc = grow((void **)&rec->domains, &rec->cap_domains, rec->n_domains,
		      sizeof(*rec->domains));

	if (rc < 0)
		return rc;
	d = &rec->domains[rec->n_domains];
	*d = (struct lease_domain){.id = id, .args = *args};
	if (args->data_len && !(d->data = malloc(args->data_len)))
		return fail(-ENOMEM, "out of memory for the state record");
	if (args->data_len)
		memcpy(d->data, args->data, args->data_len);
	d->args.data = d->data;
	(void)snprintf(d->device, sizeof(d->device), "%s", device);
	rec->n_domains++;
	return 0;
}

struct lease_domain *lease_domain_find(struct lease_rec *rec, uint32_t id)
{
	for (size_t i = 0; i < rec->n_domains; i++)
		if (rec->domains[i].id == id)
			return &rec->domains[i];
	return NULL;
}

void lease_remove_domain(struct lease_rec *rec, uint32_t id)
{
	struct lease_domain *d = lease_domain_find(rec, id);

	if (!d)
		return;
	free(d->data);
	*d = rec->domains[--rec->n_domains];
}

int lease_add_device(struct lease_rec *rec, const char *name)
{
	int rc = grow((void **)&rec->devices, &rec->cap_devices, rec->n_devices,
		      sizeof(*rec->devices));

	if (rc < 0)
		return rc;
	(void)snprintf(rec->devices[rec->n_devices++], KH_NAME_MAX, "%s", name);
	return 0;
}

static bool lease_has_device(const struct lease_rec *rec, const char *name)
{
	for (size_t i = 0; i < rec->n_devices; i++)
		if (strcmp(rec->devices[i], name) == 0)
			return true;
	return false;
}

/* ---- transactions ----------------------------------------------------------------------- */

/* One entry and the change it holds, in one allocation the state reuses call after call. */
struct entry_box {
	/* A run's arrays, kept by the box from call to call and grown as needed. */
	struct run_arrays {
		uint32_t *file_id, *prot;
		uint64_t *iova, *length, *offset;
		size_t cap;
	} run;
	uint32_t kernel_ids[KH_KERNEL_IDS];
	Iommud__State__V1__Entry entry;
	union {
		Iommud__State__V1__Lease lease;
		Iommud__State__V1__Delegation delegation;
		Iommud__State__V1__LastDelegationId last_delegation_id;
		Iommud__State__V1__Bind bind;
		Iommud__State__V1__AllocDomain alloc_domain;
		Iommud__State__V1__FreeDomain free_domain;
		Iommud__State__V1__DeviceDomain device_domain;
		Iommud__State__V1__File file;
		Iommud__State__V1__MapRun map_run;
		Iommud__State__V1__Unmap unmap;
		Iommud__State__V1__DirtyTracking dirty_tracking;
		Iommud__State__V1__ReleaseLease release_lease;
		Iommud__State__V1__LastId last_id;
	} change;
};

void *txn_add(struct state *st, Iommud__State__V1__Entry__ChangeCase change)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
		&iommud__state__v1__entry__descriptor, (unsigned)change);
	struct entry_box *box;

	if (st->n_boxes == st->cap_boxes) {
		if (grow((void **)&st->boxes, &st->cap_boxes, st->n_boxes, sizeof(*st->boxes)) < 0)
			return NULL;
		for (size_t i = st->n_boxes; i < st->cap_boxes; i++)
			st->boxes[i] = NULL;
	}
	if (grow((void **)&st->entries, &st->cap_entries, st->n_boxes, sizeof(*st->entries)) < 0)
		return NULL;
	if (!st->boxes[st->n_boxes] && !(st->boxes[st->n_boxes] = calloc(1, sizeof(*box))))
		return NULL;
	box = st->boxes[st->n_boxes];
	st->entries[st->n_boxes++] = &box->entry;
	iommud__state__v1__entry__init(&box->entry);
	protobuf_c_message_init(f->descriptor, &box->change);
	box->entry.change_case = change;
	/* Every member of the change union is a message pointer at the same place. */
	box->entry.lease = &box->change.lease;
	return &box->change;
}

/* The kernel's ids of the lease's object id, kept in the box of the change being built, where
 * the next daemon can take the objects over; none otherwise. */
static void add_kernel_ids(const struct state *st, struct lease_rec *rec, uint32_t id, void *change,
			   size_t *ret_n, uint32_t **ret_ids)
{
	struct entry_box *box =
		(struct entry_box *)((char *)change - offsetof(struct entry_box, change));

	if (!st->adopt || kh_kernel_ids(session_ctx(rec->s), id, box->kernel_ids) < 0)
		return;
	*ret_n = KH_KERNEL_IDS;
	*ret_ids = box->kernel_ids;
}

int txn_commit(struct state *st)
{
	Iommud__State__V1__Transaction txn = IOMMUD__STATE__V1__TRANSACTION__INIT;
	int rc;

	if (!st->n_boxes)
		return 0;
	txn.n_entries = st->n_boxes;
	txn.entries = st->entries;
	rc = record_append(&st->rec, &txn);
	st->n_boxes = 0;
	return rc;
}

/* ---- what each call changed ------------------------------------------------------------- */

int add_lease(struct state *st, struct lease_rec *rec)
{
	Iommud__State__V1__Lease *l = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_LEASE);
	const char *cgroup, *section;
	uid_t uid;

	if (!l)
		return fail(-ENOMEM, "out of memory for the state record");
	tenant_identity(session_tenant(rec->s), &uid, &cgroup, &section);
	l->lease_id = rec->id;
	l->name = (char *)session_lease(rec->s);
	l->uid = uid;
	l->cgroup = (char *)cgroup;
	l->section = (char *)section;
	return 0;
}

int add_bind(struct state *st, struct lease_rec *rec, const char *device)
{
	Iommud__State__V1__Bind *b = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_BIND);
	uint32_t dev_id;
	int rc = session_device(rec->s, device, false, &dev_id);

	if (rc < 0)
		return rc;
	if (!b)
		return fail(-ENOMEM, "out of memory for the state record");
	b->lease_id = rec->id;
	b->device = (char *)device;
	b->dev_id = dev_id;
	add_kernel_ids(st, rec, dev_id, b, &b->n_kernel_ids, &b->kernel_ids);
	return 0;
}

/* A bound device the record does not hold yet, with the id it was bound under. */
struct unrecorded_bind {
	const char *name;
	uint32_t dev_id;
};

struct bind_sync {
	struct lease_rec *rec;
	struct unrecorded_bind *binds;
	size_t n, cap;
	int rc;
};

static int collect_one(const char *name, uint32_t domain_id, void *arg)
{
	struct bind_sync *b = arg;
	struct unrecorded_bind *u;

	(void)domain_id;
	if (lease_has_device(b->rec, name))
		return 0;
	if ((b->rc = grow((void **)&b->binds, &b->cap, b->n, sizeof(*b->binds))) < 0)
		return b->rc;
	u = &b->binds[b->n];
	if ((b->rc = session_device(b->rec->s, name, false, &u->dev_id)) < 0)
		return b->rc;
	u->name = name;
	b->n++;
	return 0;
}

static int by_dev_id(const void *a, const void *b)
{
	const struct unrecorded_bind *x = a, *y = b;

	return x->dev_id < y->dev_id ? -1 : x->dev_id > y->dev_id;
}

/* Records the devices bound since the last call: a bind happens inside the calls that need
 * a device (AllocDomain, AttachDevice, OpenDevice) and is kept even where the call failed.
 * In the order of their ids, since the replay gives ids in increasing order only. */
static int sync_binds(struct state *st, struct lease_rec *rec)
{
	struct bind_sync b = {.rec = rec};

	(void)session_bound_devices(rec->s, collect_one, &b);
	if (b.rc == 0 && b.n)
		qsort(b.binds, b.n, sizeof(*b.binds), by_dev_id);
	for (size_t i = 0; i < b.n && b.rc == 0; i++)
		if ((b.rc = add_bind(st, rec, b.binds[i].name)) == 0)
			b.rc = lease_add_device(rec, b.binds[i].name);
	free(b.binds);
	/* Before the record names them: the next daemon takes over what both hold. */
	if (b.rc == 0 && b.n)
		lease_store_kernel(st, rec);
	return b.rc;
}

int add_alloc(struct state *st, struct lease_rec *rec, const struct lease_domain *d)
{
	Iommud__State__V1__AllocDomain *a =
		txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_ALLOC_DOMAIN);

	if (!a)
		return fail(-ENOMEM, "out of memory for the state record");
	a->lease_id = rec->id;
	a->device = (char *)d->device;
	a->domain_id = d->id;
	a->type = d->args.type;
	a->flags = d->args.flags;
	a->parent_id = d->args.parent_id;
	a->data_type = d->args.data_type;
	a->data = (ProtobufCBinaryData){d->args.data_len, d->data};
	add_kernel_ids(st, rec, d->id, a, &a->n_kernel_ids, &a->kernel_ids);
	return 0;
}

static int record_alloc(struct state *st, struct lease_rec *rec, const struct call *call)
{
	const Iommud__V1__AllocDomainRequest *r = call->req->alloc_domain;
	struct kh_domain_alloc_args args;
	int rc = sync_binds(st, rec);

	if (rc < 0 || (rc = domain_alloc_args(r, &args)) < 0 ||
	    (rc = lease_add_domain(rec, call->resp->alloc_domain->domain_id, r->device, &args)) < 0)
		return rc;
	/* Before the record names it, as a bind's. */
	lease_store_kernel(st, rec);
	return add_alloc(st, rec, &rec->domains[rec->n_domains - 1]);
}

static int record_free(struct state *st, struct lease_rec *rec, uint32_t domain_id)
{
	Iommud__State__V1__FreeDomain *f =
		txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_FREE_DOMAIN);

	if (!f)
		return fail(-ENOMEM, "out of memory for the state record");
	f->lease_id = rec->id;
	f->domain_id = domain_id;
	lease_remove_domain(rec, domain_id);
	return 0;
}

/* Where the device is now, as the kernel answers: the record follows it. */
int add_device_domain(struct state *st, struct lease_rec *rec, const char *device)
{
	Iommud__State__V1__DeviceDomain *d;
	uint32_t domain_id;

	(void)session_device_state(rec->s, device, &domain_id);
	if (!(d = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_DEVICE_DOMAIN)))
		return fail(-ENOMEM, "out of memory for the state record");
	d->lease_id = rec->id;
	d->device = (char *)device;
	d->domain_id = domain_id;
	return 0;
}

static int record_device(struct state *st, struct lease_rec *rec, const char *device)
{
	int rc = sync_binds(st, rec);

	return rc < 0 ? rc : add_device_domain(st, rec, device);
}

int add_file(struct state *st, struct lease_rec *rec, const struct lease_file *lf)
{
	Iommud__State__V1__File *f = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_FILE);

	if (!f)
		return fail(-ENOMEM, "out of memory for the state record");
	f->lease_id = rec->id;
	f->file_id = lf->id;
	f->dev = lf->dev;
	f->ino = lf->ino;
	f->writable = lf->writable;
	return 0;
}

/* A descriptor of its own for the client's file, stored: a new open file description, since
 * a manager keeps one copy of a description however many times it is stored. Kept on both map
 * paths. Where the kernel maps files by descriptor it holds the file for the live mappings, but
 * only while the lease's /dev/iommu lives, and iommufd gives no file back out of a mapping:
 * a lease that cannot be taken over is rebuilt from these files, and a take-over makes again
 * from them a mapping the kernel no longer holds whole (an unmap in steps cut short by the
 * daemon's end). So the store holds as many files on either path. */
static int keep_file(struct state *st, struct lease_rec *rec, int fd, const struct map_file *mf,
		     struct lease_file **ret_file)
{
	char path[64];
	bool writable = mf->access_mode == O_RDWR;
	int own, rc;

	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	own = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (own < 0)
		return fail(-errno, "cannot reopen the memory file to keep it: %s",
			    strerror(errno));
	rc = lease_add_file(rec, rec->last_file_id + 1, mf->dev, mf->ino, writable, own);
	if (rc < 0) {
		(void)close(own);
		return rc;
	}
	*ret_file = &rec->files[rec->n_files - 1];
	/* Kept unstored on failure: the snapshot that must follow stores it again. */
	if ((rc = lease_store_file(rec, *ret_file)) < 0)
		return rc;
	return add_file(st, rec, *ret_file);
}

/* Points the run in box at the box's arrays. */
static void run_point(struct entry_box *box)
{
	Iommud__State__V1__MapRun *run = &box->change.map_run;

	run->file_id = box->run.file_id;
	run->prot = box->run.prot;
	run->iova = box->run.iova;
	run->length = box->run.length;
	run->offset = box->run.offset;
}

/* Grows *array to cap elements of size bytes; false when out of memory (it stays as it was). */
static bool grow_array(void *array, size_t cap, size_t size)
{
	void **p = array, *grown = realloc(*p, cap * size);

	if (grown)
		*p = grown;
	return grown != NULL;
}

/* Room for one more mapping in the run of box. */
static int run_reserve(struct entry_box *box)
{
	struct run_arrays *a = &box->run;
	size_t cap = a->cap ? 2 * a->cap : 64;

	if (box->change.map_run.n_iova < a->cap)
		return 0;
	if (!grow_array(&a->file_id, cap, sizeof(uint32_t)) ||
	    !grow_array(&a->prot, cap, sizeof(uint32_t)) ||
	    !grow_array(&a->iova, cap, sizeof(uint64_t)) ||
	    !grow_array(&a->length, cap, sizeof(uint64_t)) ||
	    !grow_array(&a->offset, cap, sizeof(uint64_t)))
		return fail(-ENOMEM, "out of memory for the state record");
	a->cap = cap;
	run_point(box);
	return 0;
}

/* The transaction's last entry when it is a run of this lease and domain; else a new run. */
static struct entry_box *run_for(struct state *st, uint32_t lease_id, uint32_t domain_id)
{
	struct entry_box *box = st->n_boxes ? st->boxes[st->n_boxes - 1] : NULL;
	Iommud__State__V1__MapRun *run;

	if (box && box->entry.change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_MAP_RUN &&
	    box->change.map_run.lease_id == lease_id && box->change.map_run.domain_id == domain_id)
		return box;
	if (!(run = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_MAP_RUN)))
		return NULL;
	box = st->boxes[st->n_boxes - 1];
	run->lease_id = lease_id;
	run->domain_id = domain_id;
	/* The box's arrays from earlier calls serve again. */
	run_point(box);
	return box;
}

int add_map(struct state *st, struct lease_rec *rec, uint32_t domain_id, uint32_t file_id,
	    const struct mapping_view *m)
{
	struct entry_box *box = run_for(st, rec->id, domain_id);
	Iommud__State__V1__MapRun *run;
	int rc = box ? run_reserve(box) : fail(-ENOMEM, "out of memory for the state record");

	if (rc < 0)
		return rc;
	run = &box->change.map_run;
	run->file_id[run->n_file_id++] = file_id;
	run->iova[run->n_iova++] = m->iova;
	run->length[run->n_length++] = m->length;
	run->offset[run->n_offset++] = m->offset;
	run->prot[run->n_prot++] = m->prot;
	return 0;
}

static int record_maps(struct state *st, struct lease_rec *rec, const struct call *call,
		       const uint64_t *iovas)
{
	for (size_t i = 0; i < call->entries.n; i++) {
		struct entry_fields e = entry_at(&call->entries, i);
		const struct map_file *mf = &call->files[e.fd_index];
		struct lease_file *lf =
			lease_file_find(rec, mf->dev, mf->ino, mf->access_mode == O_RDWR);
		int rc = 0;

		if (!lf)
			rc = keep_file(st, rec, call->fds[e.fd_index], mf, &lf);
		if (rc == 0)
			rc = add_map(st, rec, e.domain_id, lf->id,
				     &(struct mapping_view){.iova = iovas[i],
							    .length = e.length,
							    .offset = e.offset,
							    .prot = e.prot});
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int record_unmap(struct state *st, struct lease_rec *rec, uint32_t domain_id, uint64_t iova,
			uint64_t length)
{
	Iommud__State__V1__Unmap *u = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_UNMAP);

	if (!u)
		return fail(-ENOMEM, "out of memory for the state record");
	u->lease_id = rec->id;
	u->domain_id = domain_id;
	u->iova = iova;
	u->length = length;
	return 0;
}

int add_dirty(struct state *st, struct lease_rec *rec, uint32_t domain_id, bool enable)
{
	Iommud__State__V1__DirtyTracking *d =
		txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_DIRTY_TRACKING);
	struct lease_domain *dom = lease_domain_find(rec, domain_id);

	if (!d)
		return fail(-ENOMEM, "out of memory for the state record");
	if (dom)
		dom->dirty = enable;
	d->lease_id = rec->id;
	d->domain_id = domain_id;
	d->enable = enable;
	return 0;
}

int add_release(struct state *st, struct lease_rec *rec)
{
	Iommud__State__V1__ReleaseLease *r =
		txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE);

	if (!r)
		return fail(-ENOMEM, "out of memory for the state record");
	r->lease_id = rec->id;
	/* The lease lives on till its last connection goes; a snapshot until then says so. */
	rec->released = true;
	return 0;
}

static int record_method(struct state *st, struct lease_rec *rec, const struct call *call)
{
	const Iommud__V1__Request *q = call->req;
	const Iommud__V1__Response *p = call->resp;

	switch (q->method_case) {
	case IOMMUD__V1__REQUEST__METHOD_DELEGATE_DEVICES:
		return add_delegation(st, rec, call);
	case IOMMUD__V1__REQUEST__METHOD_MAP:
		return record_maps(st, rec, call, &p->map->iova);
	case IOMMUD__V1__REQUEST__METHOD_MAP_BATCH:
		return record_maps(st, rec, call, call->iovas);
	case IOMMUD__V1__REQUEST__METHOD_UNMAP:
		return record_unmap(st, rec, q->unmap->domain_id, q->unmap->iova, q->unmap->length);
	case IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL:
		return record_unmap(st, rec, q->unmap_all->domain_id, 0, UINT64_MAX);
	case IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN:
		return record_alloc(st, rec, call);
	case IOMMUD__V1__REQUEST__METHOD_FREE_DOMAIN:
		return record_free(st, rec, q->free_domain->domain_id);
	case IOMMUD__V1__REQUEST__METHOD_ATTACH_DEVICE:
		return record_device(st, rec, q->attach_device->device);
	case IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN:
		return record_device(st, rec, q->replace_domain->device);
	case IOMMUD__V1__REQUEST__METHOD_DETACH_DEVICE:
		return record_device(st, rec, q->detach_device->device);
	case IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE:
		return sync_binds(st, rec);
	case IOMMUD__V1__REQUEST__METHOD_SET_DIRTY_TRACKING:
		return add_dirty(st, rec, q->set_dirty_tracking->domain_id,
				 q->set_dirty_tracking->enable);
	case IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE:
		return add_release(st, rec);
	default: /* changes nothing a lease keeps */
		return 0;
	}
}

/* The lease of the call's session, if it is a named one the state records. */
static struct session *recorded_session(const struct state *st, const struct call *call)
{
	struct session *s = call->client ? call->client->session : NULL;

	return st && s && session_lease(s)[0] ? s : NULL;
}

/* The change is in the session and the kernel already, and the lease_rec mirrors it: the
 * next snapshot writes it, and until one is written the lease changes nothing more. */
static int unrecorded(struct lease_rec *rec, int rc)
{
	char why[STATUS_MESSAGE_MAX + 1];

	rec->unrecorded = true;
	(void)snprintf(why, sizeof(why), "%s", failure_message());
	return fail(rc,
		    "the change took effect, but it could not be recorded (%s), so it would not "
		    "survive a restart of the daemon; further changes of lease '%s' are refused "
		    "until the state record is rewritten, which is tried again at each call",
		    why, session_lease(rec->s));
}

/* A DelegateDevices unrecorded is taken back, since its reply goes without the VMM's fds;
 * only a new lease's entry, if the transaction held one, leaves a change in effect. */
static int delegation_unrecorded_fail(struct state *st, struct lease_rec *rec,
				      const struct call *call, bool new_lease, int rc)
{
	char why[STATUS_MESSAGE_MAX + 1];

	delegation_unrecorded(st, call);
	if (new_lease)
		rec->unrecorded = true;
	(void)snprintf(why, sizeof(why), "%s", failure_message());
	return fail(rc,
		    "the delegation could not be recorded (%s), so it was taken back; try again",
		    why);
}

int state_record_call(struct state *st, struct call *call)
{
	struct session *s = recorded_session(st, call);
	struct lease_rec *rec;
	bool new_lease = false;
	int rc = 0;

	if (!s)
		return anon_record_call(st, call);
	/* The files it was set aside for are stored below, before anything else runs. */
	set_room(st, call, 0);
	st->n_boxes = 0;
	rec = lease_find(st, s);
	if (!rec) {
		if (!(rec = lease_add(st, s, st->last_lease_id + 1)))
			return fail(-ENOMEM, "out of memory for the state record");
		new_lease = true;
		rc = add_lease(st, rec);
		lease_store_kernel(st, rec);
	}
	if (rc == 0)
		rc = record_method(st, rec, call);
	if (rc == 0)
		rc = txn_commit(st);
	st->n_boxes = 0;
	if (rc < 0 && call->req->method_case == IOMMUD__V1__REQUEST__METHOD_DELEGATE_DEVICES)
		return delegation_unrecorded_fail(st, rec, call, new_lease, rc);
	if (rc < 0)
		return unrecorded(rec, rc);
	lease_unstore_freed(rec);
	return 0;
}

/* A snapshot before the lease changes more, since its last change is in effect unrecorded. */
static int catch_up(struct state *st, struct lease_rec *rec)
{
	char why[STATUS_MESSAGE_MAX + 1] = "calls are between slices";

	if (!st->calls_kept) {
		if (state_compact(st) == 0 && !rec->unrecorded)
			return 0;
		(void)snprintf(why, sizeof(why), "%s", failure_message());
	}
	return fail(-EBUSY,
		    "an earlier change of lease '%s' took effect without being recorded, and "
		    "the state record could not be rewritten yet (%s); try again later, and see "
		    "the daemon's log if this persists",
		    session_lease(rec->s), why);
}

/* How many distinct memory files of the call the lease (NULL: not recorded yet) keeps not. */
static size_t new_files(struct lease_rec *rec, const struct call *call)
{
	struct map_file seen[IOMMUD_MAX_FDS];
	size_t n = 0, j;

	for (size_t i = 0; i < call->n_fds; i++) {
		struct map_file *mf = &seen[n];

		/* A file the map handler refuses needs no room; it says why. */
		if (session_check_file(call->fds[i], mf) < 0 ||
		    (rec && lease_file_find(rec, mf->dev, mf->ino, mf->access_mode == O_RDWR)))
			continue;
		for (j = 0; j < n; j++)
			if (seen[j].dev == mf->dev && seen[j].ino == mf->ino &&
			    seen[j].access_mode == mf->access_mode)
				break;
		n += j == n;
	}
	return n;
}

/* Room in the store for the memory files a Map would keep, one slot left for the record's
 * rewriting: past it, the manager would refuse in silence, and the next compaction would
 * lose the record. The room is set aside for the call until it ends. */
static int check_store_room(struct state *st, struct lease_rec *rec, struct call *call)
{
	size_t need;

	/* The call's descriptors bound the files it can add: with room for all of them, none
	 * needs examining here (the map handler examines each once), which keeps the costly
	 * check off every Map; a call kept between slices has its room cut to its files then. */
	need = call->n_fds;
	if (!store_has_room(st, need)) {
		need = new_files(rec, call);
		/* Files no mapping uses any more leave the store only with a snapshot. */
		if (need && !store_has_room(st, need) &&
		    (st->calls_kept || state_compact(st) < 0 || !store_has_room(st, need)))
			return fail(-ENOSPC,
				    "mapping needs %zu more memory file(s) kept in the service "
				    "manager's descriptor store, which holds %zu of the %zu it "
				    "takes, %zu more set aside for maps in progress and one kept "
				    "free to rewrite the state record; map from memory files the "
				    "lease maps already, or unmap others first; an administrator "
				    "can raise FileDescriptorStoreMax= of iommud.service",
				    need, stored_count(st), st->store_max, st->set_aside);
	}
	set_room(st, call, need);
	return 0;
}

/* A compaction held back by lease calls between slices so long that the record has grown
 * twice past its due size: no new lease change starts until they end and it is written. */
static int check_overdue(const struct state *st)
{
	if (!st->calls_kept || record_committed(&st->rec) / 2 <= st->compact_at)
		return 0;
	return fail(-EBUSY, "the state record is being rewritten once the calls in progress end; "
			    "try again shortly");
}

int state_check_call(struct state *st, struct call *call)
{
	struct session *s = recorded_session(st, call);
	struct lease_rec *rec = s ? lease_find(st, s) : NULL;
	Iommud__V1__Request__MethodCase method = call->req->method_case;
	int rc;

	if (!s)
		return anon_check_call(st, call);
	/* A release needs no catching up: replay skips what a released lease held. */
	if ((rc = check_overdue(st)) < 0 ||
	    (rec && rec->unrecorded && method != IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE &&
	     (rc = catch_up(st, rec)) < 0))
		return rc;
	if (method == IOMMUD__V1__REQUEST__METHOD_MAP ||
	    method == IOMMUD__V1__REQUEST__METHOD_MAP_BATCH)
		return check_store_room(st, rec, call);
	if (method == IOMMUD__V1__REQUEST__METHOD_DELEGATE_DEVICES)
		return check_delegation_room(st, rec);
	return 0;
}

bool state_call_kept(struct state *st, struct call *call)
{
	struct session *s = recorded_session(st, call);

	if (!s)
		return false;
	st->calls_kept++;
	/* Other leases' calls run before it ends: they get what it will not store. */
	if (call->store_room)
		set_room(st, call, new_files(lease_find(st, s), call));
	return true;
}

void state_call_done(struct state *st)
{
	st->calls_kept--;
}

void state_call_end(struct state *st, struct call *call)
{
	if (st)
		set_room(st, call, 0);
}

void state_note_unacknowledged(struct state *st, const struct call *call)
{
	struct session *s = recorded_session(st, call);
	struct lease_rec *rec = s ? lease_find(st, s) : NULL;

	if (!rec)
		return;
	rec->unrecorded = true;
	st->snapshot_due = true;
}

void state_compact_if_due(struct state *st)
{
	if (!st || st->calls_kept ||
	    (!st->snapshot_due && record_committed(&st->rec) <= st->compact_at))
		return;
	if (state_compact(st) == 0)
		st->snapshot_due = false;
}

/* A kernel object the books name but the context no longer holds is left out, not passed
 * on as a descriptor nobody could move: a re-exec carries on without it. */
int visit_kernel_fd(const char *name, int fd, int (*visit)(const char *name, int fd, void *arg),
		    void *arg)
{
	if (fd >= 0)
		return visit(name, fd, arg);
	log_warning("'%s' is kept as stored, but its kernel object is gone (%s); left out", name,
		    strerror(-fd));
	return 0;
}

static int each_kernel_fd(const struct lease_rec *rec,
			  int (*visit)(const char *name, int fd, void *arg), void *arg)
{
	struct kh_ctx *ctx = session_ctx(rec->s);
	char name[LEASE_FILE_NAME];
	int rc = 0;

	if (rec->kernel_stored) {
		lease_kernel_name(rec, 0, name);
		rc = visit_kernel_fd(name, kh_ctx_kernel_fd(ctx), visit, arg);
	}
	for (size_t i = 0; i < rec->n_stored_devs && rc == 0; i++) {
		lease_kernel_name(rec, rec->stored_devs[i], name);
		rc = visit_kernel_fd(name, kh_device_kernel_fd(ctx, rec->stored_devs[i]), visit,
				     arg);
	}
	for (size_t i = 0; i < rec->n_stored_doms && rc == 0; i++) {
		lease_domain_kernel_name(rec, rec->stored_doms[i], name);
		rc = visit_kernel_fd(name, kh_domain_kernel_fd(ctx, rec->stored_doms[i]), visit,
				     arg);
	}
	return rc;
}

int state_each_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		  void *arg)
{
	char name[LEASE_FILE_NAME];
	const struct lease_rec *rec;
	int rc = visit(st->rec.name, st->rec.fd, arg);

	LIST_FOREACH (rec, &st->leases, link) {
		for (size_t i = 0; i < rec->n_files && rc == 0; i++) {
			lease_file_name(rec, rec->files[i].id, name);
			rc = visit(name, rec->files[i].fd, arg);
		}
		rc = rc < 0 ? rc : each_kernel_fd(rec, visit, arg);
	}
	rc = rc < 0 ? rc : each_delegation_fd(st, visit, arg);
	return rc < 0 ? rc : anon_each_fd(st, visit, arg);
}

/* ---- opening and closing ---------------------------------------------------------------- */

void state_free(struct state *st, bool unstore)
{
	struct lease_rec *rec;

	while ((rec = LIST_FIRST(&st->leases)))
		lease_free(rec, unstore);
	delegation_recs_free(st);
	anon_free_all(st, unstore);
	for (size_t i = 0; i < st->cap_boxes; i++) {
		struct entry_box *box = st->boxes[i];

		if (!box)
			continue;
		free(box->run.file_id);
		free(box->run.prot);
		free(box->run.iova);
		free(box->run.length);
		free(box->run.offset);
		free(box);
	}
	free(st->boxes);
	free(st->entries);
	record_close(&st->rec);
	free(st);
}

void state_close(struct state *st)
{
	struct lease_rec *rec;

	if (!st)
		return;
	registry_on_session_end(st->reg, SESSION_END_STATE, NULL, NULL);
	/* A stop, unlike a kill or a re-execution, tears the leases' kernel objects down with the
	 * registry next. Their descriptors leave the store first (the manager reads these messages
	 * before it sees the daemon exit), so that the next daemon rebuilds the leases from the
	 * record instead of finding their objects gone and their devices still held open by the
	 * store's copies. The record and the memory files stay. */
	LIST_FOREACH (rec, &st->leases, link)
		lease_unstore_kernel(rec);
	/* Anonymous sessions need nothing here: only connections hold them, so each ended in
	 * server_destroy, and its end detached its devices before their copies left the store
	 * (anon_end). Unstoring here could only come before a detach. */
	state_free(st, false);
}

/* How many descriptors the store takes, said once; 0 when too few to keep a record: two
 * records overlap while one is rewritten. */
static size_t store_size(void)
{
	enum fdstore_source source;
	size_t max = fdstore_max(&source);

	if (source == FDSTORE_FROM_UNIT)
		log_notice("the service manager does not say how many descriptors it keeps "
			   "($FDSTORE, systemd 254 and later); the daemon assumes the unit's "
			   "FileDescriptorStoreMax=%d (an override of it on systemd before 254 "
			   "also sets Environment=IOMMUD_FDSTORE_MAX=)",
			   FDSTORE_UNIT_MAX);
	else if (max < 2)
		log_warning("the service manager keeps %zu descriptors for the daemon (%s; "
			    "FileDescriptorStoreMax= of its unit), and a state record needs 2: "
			    "no record is kept, and named leases will not survive a restart",
			    max, fdstore_source_name(source));
	return max < 2 ? 0 : max;
}

int state_open(struct registry *reg, struct state **ret_state)
{
	struct state *st;
	size_t store_max;
	int rc;

	*ret_state = NULL;
	if (!fdstore_available() || !(store_max = store_size())) {
		fdstore_drop_strays();
		fdstore_sync();
		return 0;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		return fail(-ENOMEM, "out of memory for the state record");
	st->reg = reg;
	st->adopt = kh_backend_caps(registry_backend(reg)) & KH_CAP_ADOPT;
	st->store_max = store_max;
	st->rec.fd = -1;
	LIST_INIT(&st->leases);
	LIST_INIT(&st->anons);
	registry_on_session_end(reg, SESSION_END_STATE, lease_end, st);
	state_adopt(st);
	rc = state_compact(st);
	fdstore_drop_strays();
	/* One wait for every kernel descriptor adoption and the strays let go: the first
	 * session may bind their devices. */
	fdstore_sync();
	if (rc < 0) {
		registry_on_session_end(reg, SESSION_END_STATE, NULL, NULL);
		state_free(st, false);
		return rc;
	}
	*ret_state = st;
	return 0;
}
