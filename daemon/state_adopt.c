// SPDX-License-Identifier: MIT
/* Adoption: the leases of the record the store handed back, rebuilt by replaying its
 * transactions through the same session calls the methods use, each object under the id it
 * had. Where the backend answers otherwise than the record says (a device gone, a file not the
 * one recorded), the backend wins: the entry is said and skipped, and the snapshot written
 * next records what is.
 *
 * Where the backend's kernel objects outlive the daemon (KH_CAP_ADOPT: iommufd), a lease's
 * context is not rebuilt but taken over: its kernel descriptors come back from the store, are
 * checked against the kernel with the ids the record keeps, and the replay then only fills
 * kernel-helper's books (kh.h, "taking a context over"), so the devices' DMA never stops. A
 * lease whose objects fail a check is rebuilt as before, which one log line says. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fdstore.h"
#include "log.h"
#include "state_internal.h"
#include "status.h"

typedef Iommud__State__V1__Entry Entry;

/* Every change names its lease first: lease_id is field 1 of each. */
static uint32_t entry_lease_id(const Entry *e)
{
	return e->lease ? e->lease->lease_id : 0;
}

/* ---- what each lease's kernel holds ----------------------------------------------------- */

/* The live devices and domains of one lease as the record leaves them, with their kernel ids;
 * names point into the record's transactions, which outlive the replay. */
struct kernel_plan {
	uint32_t lease_id;
	bool incomplete; /* an object without kernel ids, or out of memory: no taking over */
	bool released;	 /* the record ends the lease: nothing to take over */
	struct kh_adopt_device *devs;
	uint32_t *dev_ids;
	size_t n_devs;
	struct kh_adopt_domain *doms;
	size_t n_doms;
};

struct kernel_plans {
	struct kernel_plan *v;
	size_t n;
};

static struct kernel_plan *plan_find(const struct kernel_plans *p, uint32_t lease_id)
{
	for (size_t i = 0; p && i < p->n; i++)
		if (p->v[i].lease_id == lease_id)
			return &p->v[i];
	return NULL;
}

static struct kernel_plan *plan_for(struct kernel_plans *p, uint32_t lease_id)
{
	struct kernel_plan *plan = plan_find(p, lease_id), *grown;

	if (plan)
		return plan;
	if (!(grown = realloc(p->v, (p->n + 1) * sizeof(*grown))))
		return NULL;
	p->v = grown;
	p->v[p->n] = (struct kernel_plan){.lease_id = lease_id};
	return &p->v[p->n++];
}

static bool grow_by_one(void **v, size_t n, size_t size)
{
	void *grown = realloc(*v, (n + 1) * size);

	if (grown)
		*v = grown;
	return grown != NULL;
}

static void plan_bind(struct kernel_plan *plan, const Iommud__State__V1__Bind *b)
{
	if (b->n_kernel_ids != KH_KERNEL_IDS ||
	    !grow_by_one((void **)&plan->devs, plan->n_devs, sizeof(*plan->devs)) ||
	    !grow_by_one((void **)&plan->dev_ids, plan->n_devs, sizeof(*plan->dev_ids))) {
		plan->incomplete = true;
		return;
	}
	plan->devs[plan->n_devs] = (struct kh_adopt_device){.name = b->device, .fd = -1};
	memcpy(plan->devs[plan->n_devs].kernel_ids, b->kernel_ids, sizeof(plan->devs->kernel_ids));
	plan->dev_ids[plan->n_devs++] = b->dev_id;
}

static void plan_alloc(struct kernel_plan *plan, const Iommud__State__V1__AllocDomain *a)
{
	if (a->n_kernel_ids != KH_KERNEL_IDS ||
	    !grow_by_one((void **)&plan->doms, plan->n_doms, sizeof(*plan->doms))) {
		plan->incomplete = true;
		return;
	}
	plan->doms[plan->n_doms].id = a->domain_id;
	plan->doms[plan->n_doms].fd = -1;
	memcpy(plan->doms[plan->n_doms++].kernel_ids, a->kernel_ids,
	       sizeof(plan->doms->kernel_ids));
}

static void plan_free_domain(struct kernel_plan *plan, uint32_t domain_id)
{
	for (size_t i = 0; i < plan->n_doms; i++)
		if (plan->doms[i].id == domain_id) {
			plan->doms[i] = plan->doms[--plan->n_doms];
			return;
		}
}

static void plan_entry(struct kernel_plans *p, const Entry *e)
{
	struct kernel_plan *plan;

	if (e->change_case != IOMMUD__STATE__V1__ENTRY__CHANGE_BIND &&
	    e->change_case != IOMMUD__STATE__V1__ENTRY__CHANGE_ALLOC_DOMAIN &&
	    e->change_case != IOMMUD__STATE__V1__ENTRY__CHANGE_FREE_DOMAIN &&
	    e->change_case != IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE)
		return;
	if (!(plan = plan_for(p, entry_lease_id(e))))
		return; /* without memory, a lease with no plan is rebuilt */
	if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE)
		plan->released = true;
	else if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_BIND)
		plan_bind(plan, e->bind);
	else if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_ALLOC_DOMAIN)
		plan_alloc(plan, e->alloc_domain);
	else
		plan_free_domain(plan, e->free_domain->domain_id);
}

static void plans_free(struct kernel_plans *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->v[i].devs);
		free(p->v[i].dev_ids);
		free(p->v[i].doms);
	}
	free(p->v);
}

/* Takes the descriptor kept as name out of the store: the lease no longer needs it. A device
 * among them may be attached still, and held by a client too: fdstore_give_up blocks its DMA
 * before it lets go. */
static void drop_kept(int fd, const char *name)
{
	(void)fdstore_give_up(fd, name, (char[KH_NAME_MAX]){0});
}

/* The context's descriptor from the store, or a failure naming it; -EOPNOTSUPP where the
 * backend's contexts have none (their objects are in the devices' and domains'). */
static int claim_ctx_fd(const struct lease_rec *rec)
{
	char name[LEASE_FILE_NAME];
	int fd;

	if (kh_ctx_kernel_fd(session_ctx(rec->s)) == -EOPNOTSUPP)
		return -EOPNOTSUPP;
	lease_kernel_name(rec, 0, name);
	fd = fdstore_claim_name(name);
	return fd < 0 ? fail(-ENOENT, "the store holds no '%s'", name) : fd;
}

/* The plan's domains' own descriptors, where the store holds them (the backend says, when
 * checking, whether a domain needs one); the caller drops them either way it goes. */
static void claim_dom_fds(const struct lease_rec *rec, struct kernel_plan *plan)
{
	char name[LEASE_FILE_NAME];

	for (size_t i = 0; i < plan->n_doms; i++) {
		lease_domain_kernel_name(rec, plan->doms[i].id, name);
		plan->doms[i].fd = fdstore_claim_name(name);
		plan->doms[i].fd = plan->doms[i].fd < 0 ? -1 : plan->doms[i].fd;
	}
}

/* The descriptors the take-over got from the store are the lease's again. */
static void keep_stored(struct lease_rec *rec, const struct kernel_plan *plan)
{
	char name[LEASE_FILE_NAME];

	for (size_t i = 0; i < plan->n_devs; i++)
		if (lease_add_stored_dev(rec, plan->dev_ids[i]) < 0) {
			/* Out of memory to remember it: out of the store too, so that
			 * lease_store_kernel stores it again. */
			lease_kernel_name(rec, plan->dev_ids[i], name);
			fdstore_remove_kernel(name);
		}
	for (size_t i = 0; i < plan->n_doms; i++)
		if (plan->doms[i].fd >= 0 && lease_add_stored_dom(rec, plan->doms[i].id) < 0) {
			lease_domain_kernel_name(rec, plan->doms[i].id, name);
			fdstore_remove_kernel(name);
		}
}

/* The descriptors of a lease that is rebuilt, out of the store. */
static void drop_plan_fds(const struct lease_rec *rec, struct kernel_plan *plan)
{
	char name[LEASE_FILE_NAME];

	for (size_t i = 0; i < plan->n_devs; i++) {
		lease_kernel_name(rec, plan->dev_ids[i], name);
		drop_kept(plan->devs[i].fd, name);
		plan->devs[i].fd = -1;
	}
	for (size_t i = 0; i < plan->n_doms; i++) {
		lease_domain_kernel_name(rec, plan->doms[i].id, name);
		drop_kept(plan->doms[i].fd, name);
		plan->doms[i].fd = -1;
	}
}

/* The plan's device descriptors from the store into plan->devs[].fd, all of them or a
 * failure naming the first missing; the caller drops those claimed either way it goes. */
static int claim_dev_fds(const struct lease_rec *rec, struct kernel_plan *plan)
{
	char name[LEASE_FILE_NAME];

	if (plan->incomplete)
		return fail(-ESTALE, "the record lacks the kernel's ids of some of its objects");
	for (size_t i = 0; i < plan->n_devs; i++) {
		lease_kernel_name(rec, plan->dev_ids[i], name);
		if ((plan->devs[i].fd = fdstore_claim_name(name)) < 0)
			return fail(-ENOENT, "the store holds no '%s'", name);
	}
	return 0;
}

/* Whether the store kept any of the lease's kernel objects: one recorded before any of its
 * descriptors was kept has nothing to take over, and its rebuild is no news. */
static bool plan_kept_any(const struct kernel_plan *plan, int ctx_fd)
{
	bool kept = ctx_fd >= 0 || plan->n_devs;

	for (size_t i = 0; i < plan->n_doms && !kept; i++)
		kept = plan->doms[i].fd >= 0;
	return kept;
}

/* The descriptors of a lease whose objects are not taken over, claimed or not, out of the
 * store, and closed by the manager before the daemon goes on. */
static void drop_lease_fds(const struct lease_rec *rec, struct kernel_plan *plan, int ctx_fd)
{
	char name[LEASE_FILE_NAME];

	if (ctx_fd != -EOPNOTSUPP) {
		lease_kernel_name(rec, 0, name);
		drop_kept(ctx_fd, name);
	}
	drop_plan_fds(rec, plan);
	/* The replay binds these devices again next: the manager's copies must be closed first,
	 * or the kernel refuses the bind (EBUSY) and the lease comes back without them. */
	fdstore_sync();
}

/* A lease whose release the record holds ends at its entry: what a kill between that commit
 * and the descriptors' removal left in the store is given up, its devices blocked first. */
static void give_up_released(const struct lease_rec *rec, struct kernel_plan *plan)
{
	char name[LEASE_FILE_NAME];
	int ctx_fd = claim_ctx_fd(rec);

	for (size_t i = 0; i < plan->n_devs; i++) {
		lease_kernel_name(rec, plan->dev_ids[i], name);
		plan->devs[i].fd = fdstore_claim_name(name);
	}
	claim_dom_fds(rec, plan);
	drop_lease_fds(rec, plan, ctx_fd);
}

/* The lease's kernel context taken over, or, where it cannot be, its descriptors dropped so
 * that the replay rebuilds it in the fresh context the session opened. */
static void take_over(struct state *st, struct lease_rec *rec)
{
	struct kernel_plan none = {0}, *plan = plan_find(st->plans, rec->id);
	int ctx_fd, rc;

	if (!st->adopt)
		return;
	plan = plan ? plan : &none;
	if (plan->released) {
		give_up_released(rec, plan);
		return;
	}
	ctx_fd = claim_ctx_fd(rec);
	rc = ctx_fd < 0 && ctx_fd != -EOPNOTSUPP ? ctx_fd : claim_dev_fds(rec, plan);
	claim_dom_fds(rec, plan);
	if (rc == 0 && (rc = kh_ctx_adopt(session_ctx(rec->s), ctx_fd < 0 ? -1 : ctx_fd, plan->devs,
					  plan->n_devs, plan->doms, plan->n_doms)) < 0)
		rc = fail_kh(rc, "checking its kernel objects");
	if (rc == 0) {
		rec->kernel_stored = ctx_fd >= 0;
		keep_stored(rec, plan);
		return;
	}
	if (plan_kept_any(plan, ctx_fd))
		log_struct(LOG_WARNING, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}': its kernel objects cannot be taken over (%s); "
			   "they are rebuilt from the state record, and its devices' DMA faults "
			   "until they are",
			   failure_message());
	drop_lease_fds(rec, plan, ctx_fd);
}

static int apply_lease(struct state *st, const Iommud__State__V1__Lease *l)
{
	struct lease_rec *rec;
	struct tenant *t;
	struct session *s;
	int rc;

	if (lease_by_id(st, l->lease_id))
		return fail(-EEXIST, "lease number %u is recorded twice", l->lease_id);
	rc = tenant_adopt(st->reg, l->uid, l->cgroup, l->section, &t);
	if (rc < 0)
		return rc;
	/* The session keeps the tenant; the replay's reference on the session goes at the end. */
	rc = session_join(t, l->name, &s);
	tenant_put(t);
	if (rc < 0)
		return rc;
	/* Two lease numbers on one session would each end it; the first one keeps it. */
	if (lease_find(st, s)) {
		session_leave(s);
		return fail(-EEXIST, "lease '%s' is recorded twice, as number %u too", l->name,
			    l->lease_id);
	}
	if (!(rec = lease_add(st, s, l->lease_id))) {
		session_leave(s);
		return fail(-ENOMEM, "out of memory for the state record");
	}
	take_over(st, rec);
	return 0;
}

/* Makes the next object of the lease's context take id. */
static int next_id(struct lease_rec *rec, uint32_t id)
{
	int rc = id ? kh_ctx_skip_ids(session_ctx(rec->s), id - 1) : -EINVAL;

	return rc < 0 ? fail(rc, "id %u cannot be given again: %s", id, kh_last_error()) : 0;
}

static int apply_bind(struct lease_rec *rec, const Iommud__State__V1__Bind *b)
{
	uint32_t dev_id;
	int rc = next_id(rec, b->dev_id);

	if (rc == 0)
		rc = session_device(rec->s, b->device, true, &dev_id);
	return rc < 0 ? rc : lease_add_device(rec, b->device);
}

static int apply_alloc(struct lease_rec *rec, const Iommud__State__V1__AllocDomain *a)
{
	struct kh_domain_alloc_args args = {
		.type = (enum kh_domain_type)a->type,
		.flags = a->flags,
		.parent_id = a->parent_id,
		.data_type = (enum kh_nest_data_type)a->data_type,
		.data = a->data.len ? a->data.data : NULL,
		.data_len = a->data.len,
	};
	uint32_t id;
	int rc = next_id(rec, a->domain_id);

	if (rc == 0)
		rc = session_alloc_domain(rec->s, a->device, &args, &id);
	return rc < 0 ? rc : lease_add_domain(rec, id, a->device, &args);
}

static int apply_free(struct lease_rec *rec, const Iommud__State__V1__FreeDomain *f)
{
	int rc = session_free_domain(rec->s, f->domain_id);

	if (rc == 0)
		lease_remove_domain(rec, f->domain_id);
	return rc;
}

static int apply_device_domain(struct lease_rec *rec, const Iommud__State__V1__DeviceDomain *d)
{
	struct kh_ctx *ctx = session_ctx(rec->s);
	uint32_t dev_id, now;
	int rc = session_device(rec->s, d->device, false, &dev_id);

	if (rc < 0)
		return rc;
	(void)session_device_state(rec->s, d->device, &now);
	if (now == d->domain_id)
		return 0;
	if (!d->domain_id)
		rc = kh_detach(ctx, dev_id);
	else
		rc = now ? kh_replace(ctx, dev_id, d->domain_id)
			 : kh_attach(ctx, dev_id, d->domain_id);
	return rc < 0 ? fail_kh(rc, "cannot put the device back in its domain") : 0;
}

/* The file's descriptor from the store, if it is the file the record names. */
static int apply_file(struct lease_rec *rec, const Iommud__State__V1__File *f)
{
	char name[LEASE_FILE_NAME];
	struct stat st;
	int fd, rc;

	lease_file_name(rec, f->file_id, name);
	fd = fdstore_claim_name(name);
	if (fd < 0)
		return fail(-ENOENT, "the store holds no '%s'", name);
	if (fstat(fd, &st) < 0 || st.st_dev != (dev_t)f->dev || st.st_ino != (ino_t)f->ino) {
		(void)close(fd);
		return fail(-ESTALE, "'%s' in the store is not the file the record names", name);
	}
	rc = lease_add_file(rec, f->file_id, (dev_t)f->dev, (ino_t)f->ino, f->writable, fd);
	if (rc < 0) {
		(void)close(fd);
		return rc;
	}
	rec->files[rec->n_files - 1].stored = true;
	return 0;
}

/* The mapping made again (or, taking over, entered in the books) from the stored file, whose
 * descriptor the lease_rec keeps open past the take-over's end: a kernel that maps files by
 * descriptor is given it, and the end makes from it a file mapping the kernel lost. */
static int apply_map(struct lease_rec *rec, uint32_t domain_id, uint32_t file_id,
		     const struct mapping_view *m)
{
	struct lease_file *lf = lease_file_by_id(rec, file_id);
	struct map_file mf;
	struct map_entry e = {.domain_id = domain_id,
			      .file = &mf,
			      .offset = m->offset,
			      .length = m->length,
			      .prot = m->prot,
			      .fixed_iova = true,
			      .iova = m->iova};
	int rc;

	if (!lf)
		return fail(-ENOENT, "its memory file %u was not kept", file_id);
	rc = session_check_file(lf->fd, &mf);
	return rc < 0 ? rc : session_map(rec->s, &e);
}

static void map_run_at(const Iommud__State__V1__MapRun *r, size_t i, struct mapping_view *ret)
{
	*ret = (struct mapping_view){.iova = r->iova[i],
				     .length = r->length[i],
				     .offset = r->offset[i],
				     .prot = r->prot[i]};
}

/* Takes back the first n mappings of a run whose batch cannot be rebuilt whole. */
static void undo_map_run(struct lease_rec *rec, const Iommud__State__V1__MapRun *r, size_t n)
{
	uint64_t bytes;
	uint32_t count;

	for (size_t i = 0; i < n; i++)
		(void)session_unmap(rec->s, r->domain_id, r->iova[i], r->length[i], &bytes, &count);
}

/* The mappings of the run that the backend takes. A run of a snapshot gathers unrelated
 * mappings, and one failing leaves the others be; a run of a later transaction is one
 * MapBatch, rebuilt whole or not at all. */
static int apply_map_run(struct lease_rec *rec, const Iommud__State__V1__MapRun *r, bool whole)
{
	size_t n = r->n_iova, failed = 0;
	char why[STATUS_MESSAGE_MAX + 1] = "";
	struct mapping_view m;
	uint64_t first_iova = 0;
	int rc, first = 0;

	if (r->n_file_id != n || r->n_length != n || r->n_offset != n || r->n_prot != n)
		return fail(-EBADMSG, "a run of mappings has lists of different lengths");
	for (size_t i = 0; i < n && !(whole && failed); i++) {
		map_run_at(r, i, &m);
		rc = apply_map(rec, r->domain_id, r->file_id[i], &m);
		if (rc < 0 && !failed++) {
			first = rc;
			first_iova = r->iova[i];
			(void)snprintf(why, sizeof(why), "%s", failure_message());
			if (whole)
				undo_map_run(rec, r, i);
		}
	}
	if (failed && whole)
		return fail(first,
			    "the batch of %zu mappings of domain %u, since the one at IOVA "
			    "0x%llx cannot be rebuilt: %s",
			    n, r->domain_id, (unsigned long long)first_iova, why);
	if (failed)
		return fail(first, "%zu of %zu mappings of domain %u, the first at IOVA 0x%llx: %s",
			    failed, n, r->domain_id, (unsigned long long)first_iova, why);
	return 0;
}

static int apply_unmap(struct lease_rec *rec, const Iommud__State__V1__Unmap *u)
{
	uint64_t bytes;
	uint32_t count;

	return session_unmap(rec->s, u->domain_id, u->iova, u->length, &bytes, &count);
}

static int apply_dirty(struct lease_rec *rec, const Iommud__State__V1__DirtyTracking *d)
{
	struct lease_domain *dom = lease_domain_find(rec, d->domain_id);
	int rc = kh_set_dirty_tracking(session_ctx(rec->s), d->domain_id, d->enable);

	if (rc < 0)
		return fail_kh(rc, "cannot set dirty tracking");
	if (dom)
		dom->dirty = d->enable;
	return 0;
}

static int apply_last_id(struct lease_rec *rec, const Iommud__State__V1__LastId *l)
{
	int rc = kh_ctx_skip_ids(session_ctx(rec->s), l->last_id);

	return rc < 0 ? fail_kh(rc, "cannot carry the id counter over") : 0;
}

static int apply_change(struct lease_rec *rec, const Entry *e, bool whole)
{
	switch (e->change_case) {
	case IOMMUD__STATE__V1__ENTRY__CHANGE_BIND:
		return apply_bind(rec, e->bind);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_ALLOC_DOMAIN:
		return apply_alloc(rec, e->alloc_domain);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_FREE_DOMAIN:
		return apply_free(rec, e->free_domain);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DEVICE_DOMAIN:
		return apply_device_domain(rec, e->device_domain);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_FILE:
		return apply_file(rec, e->file);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_MAP_RUN:
		return apply_map_run(rec, e->map_run, whole);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_UNMAP:
		return apply_unmap(rec, e->unmap);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DIRTY_TRACKING:
		return apply_dirty(rec, e->dirty_tracking);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_LAST_ID:
		return apply_last_id(rec, e->last_id);
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION:
	case IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION_END:
	case IOMMUD__STATE__V1__ENTRY__CHANGE_LAST_DELEGATION_ID:
		return 0; /* adopt_delegations' */
	default:
		return fail(-EINVAL, "the entry holds no change this daemon knows");
	}
}

/* A release acknowledged before the restart ends the lease at its entry, so that a later
 * lease made under the same name is a session of its own. Ending it frees rec. */
static void end_released(struct lease_rec *rec)
{
	struct session *s = rec->s;

	log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_LEASE", session_lease(s)}),
		   "lease '{IOMMUD_LEASE}' was released before the restart; it ends now");
	(void)session_release_lease(s);
	session_leave(s);
}

/* The leases whose release the record holds, which number few: their content is not rebuilt,
 * since their files left the store at the release. NULL with *n 0 when there are none. */
static uint32_t *released_leases(Iommud__State__V1__Transaction *const *txns, size_t n,
				 size_t *ret_n)
{
	uint32_t *ids = NULL, *grown;
	size_t count = 0;

	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < txns[i]->n_entries; j++) {
			if (txns[i]->entries[j]->change_case !=
			    IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE)
				continue;
			/* Without memory the content is rebuilt and ends with the lease. */
			if (!(grown = realloc(ids, (count + 1) * sizeof(*ids))))
				break;
			ids = grown;
			ids[count++] = entry_lease_id(txns[i]->entries[j]);
		}
	*ret_n = count;
	return ids;
}

static bool is_released(const uint32_t *ids, size_t n, const Entry *e)
{
	if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_LEASE ||
	    e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ids[i] == entry_lease_id(e))
			return true;
	return false;
}

/* whole: the entry is of a transaction written by one call, not of a snapshot. */
static void apply_entry(struct state *st, const Entry *e, bool whole)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
		&iommud__state__v1__entry__descriptor, (unsigned)e->change_case);
	struct lease_rec *rec = NULL;
	int rc;

	if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_LEASE)
		rc = apply_lease(st, e->lease);
	else if (!(rec = lease_by_id(st, entry_lease_id(e))))
		return; /* its lease could not be rebuilt (which was said) or has ended */
	else if (e->change_case == IOMMUD__STATE__V1__ENTRY__CHANGE_RELEASE_LEASE) {
		end_released(rec);
		return;
	} else
		rc = apply_change(rec, e, whole);
	if (rc < 0)
		log_err("state record: lease %s: cannot rebuild its %s: %s; left out",
			rec ? session_lease(rec->s) : e->lease->name, f ? f->name : "entry",
			failure_message());
}

/* Kernel objects of the context the record does not hold, charged to no one otherwise: a
 * domain made by a call the daemon's end cut short before its record, or one the replay left
 * out. It waits until the manager has closed its copies of the devices the replay left out
 * (unstore_unbound): until then each stays bound, and attached where the take-over's end could
 * not block it, and the domain it is attached to, with the address space under it, answers
 * EBUSY and would outlive the sweep. */
static void destroy_unheld(struct lease_rec *rec)
{
	size_t destroyed = 0;
	int rc;

	fdstore_sync();
	rc = kh_ctx_destroy_unheld(session_ctx(rec->s), &destroyed);

	if (rc < 0)
		log_struct(LOG_ERR, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}': cannot destroy the kernel objects its record "
			   "does not hold (%s); they live on, charged to no one, until the lease "
			   "ends",
			   kh_last_error());
	else if (destroyed)
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}': destroyed %zu kernel object(s) its record does "
			   "not hold (made by a change the daemon's end cut short before it was "
			   "recorded, or left out of the replay)",
			   destroyed);
}

/* The kernel's mappings and attachments made to match what the replay left in the books;
 * whether the lease's kernel objects were taken over. */
static bool end_take_over(struct lease_rec *rec)
{
	struct kh_ctx *ctx = session_ctx(rec->s);
	size_t remade = 0;
	int rc;

	if (!kh_ctx_adopting(ctx))
		return false;
	rc = kh_ctx_adopt_end(ctx, &remade);
	if (rc < 0)
		log_struct(
			LOG_ERR, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			"lease '{IOMMUD_LEASE}': its kernel objects were taken over, but not all "
			"could be made as recorded: %s",
			kh_last_error());
	if (remade)
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}': %zu mapping(s) the kernel no longer held (a "
			   "change cut short by the daemon's end) were made again",
			   remade);
	return true;
}

/* Of the objects (ids) whose descriptors the store holds, keeps those the context still has a
 * descriptor of (fd_of) and takes the others' out of the store; how many are kept. */
static size_t unstore_gone(const struct lease_rec *rec, uint32_t *ids, size_t n,
			   int (*fd_of)(struct kh_ctx *ctx, uint32_t id),
			   void (*name_of)(const struct lease_rec *rec, uint32_t id,
					   char name[LEASE_FILE_NAME]))
{
	char name[LEASE_FILE_NAME];
	size_t kept = 0;

	for (size_t i = 0; i < n; i++) {
		if (fd_of(session_ctx(rec->s), ids[i]) >= 0) {
			ids[kept++] = ids[i];
			continue;
		}
		name_of(rec, ids[i], name);
		fdstore_remove_kernel(name);
	}
	return kept;
}

/* Devices taken over whose Bind the replay left out (no longer allowed, or held by another
 * lease), and domains it did not make again, were closed by the take-over's end: out of the
 * store too, or its copy would keep them (a device bound) and a re-exec would be handed no
 * descriptor for them. */
static void unstore_unbound(struct lease_rec *rec)
{
	rec->n_stored_devs = unstore_gone(rec, rec->stored_devs, rec->n_stored_devs,
					  kh_device_kernel_fd, lease_kernel_name);
	rec->n_stored_doms = unstore_gone(rec, rec->stored_doms, rec->n_stored_doms,
					  kh_domain_kernel_fd, lease_domain_kernel_name);
}

/* A rebuilt domain tracking dirty pages lost the bits its IOMMU gathered before the restart,
 * which a migration not yet past them would miss: they read dirty once instead. */
static void dirty_bits_lost(struct lease_rec *rec)
{
	char domain[sizeof("4294967295")];
	int rc;

	for (size_t i = 0; i < rec->n_domains; i++) {
		if (!rec->domains[i].dirty)
			continue;
		(void)snprintf(domain, sizeof(domain), "%u", rec->domains[i].id);
		rc = kh_dirty_bits_lost(session_ctx(rec->s), rec->domains[i].id);
		log_struct(rc < 0 ? LOG_ERR : LOG_NOTICE,
			   LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)},
				      {"IOMMUD_DOMAIN", domain}),
			   "lease '{IOMMUD_LEASE}': domain {IOMMUD_DOMAIN}: dirty tracking was on: "
			   "%s",
			   rc < 0 ? kh_last_error()
				  : "every mapped page reads dirty once, since the bits gathered "
				    "before the restart are lost");
	}
}

/* The replay's references go; the leases live on in the registry. */
static void finish_leases(struct state *st)
{
	struct lease_rec *rec;
	bool taken_over;

	LIST_FOREACH (rec, &st->leases, link) {
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}' adopted from the state record%s",
			   kh_ctx_adopting(session_ctx(rec->s)) ? ", its kernel objects taken over"
								: "");
		if (!kh_ctx_adopting(session_ctx(rec->s)))
			dirty_bits_lost(rec);
		taken_over = end_take_over(rec);
		unstore_unbound(rec);
		if (taken_over)
			destroy_unheld(rec);
		lease_store_kernel(st, rec);
		session_leave(rec->s);
	}
}

/* The newest record among the handed descriptors; older ones are dropped. */
static int claim_record(struct state *st)
{
	int n = fdstore_handed(), fd = -1;
	const char *name;
	uint64_t gen;

	for (int i = 0; i < n; i++) {
		name = fdstore_handed_name((size_t)i);
		if (!name || strncmp(name, STATE_RECORD_PREFIX, strlen(STATE_RECORD_PREFIX)) != 0)
			continue;
		gen = strtoull(name + strlen(STATE_RECORD_PREFIX), NULL, 10);
		if (fd >= 0 && gen <= st->rec.generation) {
			fdstore_remove(name);
			(void)close(fdstore_claim((size_t)i));
			continue;
		}
		if (fd >= 0) {
			fdstore_remove(st->rec.name);
			(void)close(fd);
		}
		fd = fdstore_claim((size_t)i);
		st->rec.generation = gen;
		(void)snprintf(st->rec.name, sizeof(st->rec.name), "%s", name);
	}
	return fd;
}

void state_adopt(struct state *st)
{
	Iommud__State__V1__Transaction **txns;
	struct kernel_plans plans = {0};
	size_t n, n_released;
	uint32_t *released;
	int rc;

	st->rec.fd = claim_record(st);
	if (st->rec.fd < 0)
		return;
	rc = record_read(st->rec.fd, &st->rec.generation, &txns, &n);
	if (rc < 0) {
		log_err("the state record '%s' the service manager handed back is refused: %s. "
			"The daemon starts with no leases, and the memory files the record named "
			"are released (docs/operations.md, \"A refused state record\")",
			st->rec.name, failure_message());
		return;
	}
	released = released_leases(txns, n, &n_released);
	for (size_t i = 0; i < n && st->adopt; i++)
		for (size_t j = 0; j < txns[i]->n_entries; j++)
			plan_entry(&plans, txns[i]->entries[j]);
	st->plans = &plans;
	/* The first transaction is the snapshot the record was created with. */
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < txns[i]->n_entries; j++)
			if (!is_released(released, n_released, txns[i]->entries[j]))
				apply_entry(st, txns[i]->entries[j], i > 0);
	free(released);
	finish_leases(st);
	adopt_delegations(st, txns, n);
	st->plans = NULL;
	plans_free(&plans);
	record_free_transactions(txns, n);
}
