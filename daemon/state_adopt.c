// SPDX-License-Identifier: MIT
/* Adoption: the leases of the record the store handed back, rebuilt by replaying its
 * transactions through the same session calls the methods use, each object under the id it
 * had. Where the backend answers otherwise than the record says (a device gone, a file not the
 * one recorded), the backend wins: the entry is said and skipped, and the snapshot written
 * next records what is. */
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

static int apply_lease(struct state *st, const Iommud__State__V1__Lease *l)
{
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
	if (!lease_add(st, s, l->lease_id)) {
		session_leave(s);
		return fail(-ENOMEM, "out of memory for the state record");
	}
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
	default:
		return fail(-EINVAL, "the entry holds no change this daemon knows");
	}
}

/* Every change names its lease first: lease_id is field 1 of each. */
static uint32_t entry_lease_id(const Entry *e)
{
	return e->lease ? e->lease->lease_id : 0;
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

/* The replay's references go; the leases live on in the registry. */
static void finish_leases(struct state *st)
{
	struct lease_rec *rec;

	LIST_FOREACH (rec, &st->leases, link) {
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)}),
			   "lease '{IOMMUD_LEASE}' adopted from the state record");
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
	/* The first transaction is the snapshot the record was created with. */
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < txns[i]->n_entries; j++)
			if (!is_released(released, n_released, txns[i]->entries[j]))
				apply_entry(st, txns[i]->entries[j], i > 0);
	free(released);
	record_free_transactions(txns, n);
	finish_leases(st);
}
