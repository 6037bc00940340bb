// SPDX-License-Identifier: MIT
/* Compaction: the leases written as one snapshot transaction into a record of the next
 * generation, which replaces the old one in the store. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fdstore.h"
#include "log.h"
#include "state_internal.h"
#include "status.h"

/* A record is rewritten once its transactions pass twice the last snapshot, and never below
 * this, so that compaction costs O(1) per change, amortised. */
#define COMPACT_MIN   (256u << 10)
#define MAPPINGS_PAGE 1024

/* A device or domain of the lease, to be rebuilt in the order of their ids. */
struct object {
	uint32_t id;
	const char *device; /* a device; NULL for a domain */
	const struct lease_domain *domain;
};

static int by_id(const void *a, const void *b)
{
	const struct object *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

static int snapshot_objects(struct state *st, struct lease_rec *rec)
{
	struct object *objs = calloc(rec->n_devices + rec->n_domains + 1, sizeof(*objs));
	size_t n = 0;
	int rc = 0;

	if (!objs)
		return fail(-ENOMEM, "out of memory for the state snapshot");
	for (size_t i = 0; i < rec->n_devices; i++)
		if (session_device(rec->s, rec->devices[i], false, &objs[n].id) == 0)
			objs[n++].device = rec->devices[i];
	for (size_t i = 0; i < rec->n_domains; i++)
		objs[n++] = (struct object){.id = rec->domains[i].id, .domain = &rec->domains[i]};
	qsort(objs, n, sizeof(*objs), by_id);
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = objs[i].device ? add_bind(st, rec, objs[i].device)
				    : add_alloc(st, rec, objs[i].domain);
	free(objs);
	return rc;
}

static int snapshot_devices(struct state *st, struct lease_rec *rec)
{
	Iommud__State__V1__LastId *last = txn_add(st, IOMMUD__STATE__V1__ENTRY__CHANGE_LAST_ID);
	uint32_t domain_id;
	int rc = 0;

	if (!last)
		return fail(-ENOMEM, "out of memory for the state snapshot");
	last->lease_id = rec->id;
	last->last_id = kh_ctx_last_id(session_ctx(rec->s));
	for (size_t i = 0; i < rec->n_devices && rc == 0; i++)
		if (session_device_state(rec->s, rec->devices[i], &domain_id) && domain_id)
			rc = add_device_domain(st, rec, rec->devices[i]);
	for (size_t i = 0; i < rec->n_domains && rc == 0; i++)
		if (rec->domains[i].dirty)
			rc = add_dirty(st, rec, rec->domains[i].id, true);
	return rc;
}

/* The stored file a mapping's memory comes from: one opened for writing serves any mapping. */
static struct lease_file *mapping_file(struct lease_rec *rec, const struct mapping_view *m)
{
	struct lease_file *lf = lease_file_find(rec, m->dev, m->ino, true);

	if (!lf && !(m->prot & KH_PROT_WRITE))
		lf = lease_file_find(rec, m->dev, m->ino, false);
	return lf;
}

static int snapshot_mapping(struct state *st, struct lease_rec *rec, uint32_t domain_id,
			    const struct mapping_view *m)
{
	struct lease_file *lf = mapping_file(rec, m);
	int rc = 0;

	if (!lf) {
		log_warning("lease '%s': the mapping at IOVA 0x%llx of domain %u has no stored "
			    "file; it will not survive a restart",
			    session_lease(rec->s), (unsigned long long)m->iova, domain_id);
		return 0;
	}
	if (!lf->used && (rc = lease_store_file(rec, lf)) == 0)
		rc = add_file(st, rec, lf);
	lf->used = true;
	return rc < 0 ? rc : add_map(st, rec, domain_id, lf->id, m);
}

static int snapshot_maps(struct state *st, struct lease_rec *rec, uint32_t domain_id,
			 struct mapping_view *page)
{
	uint64_t from = 0;
	bool more = true;
	int n, rc = 0;

	while (more && rc == 0) {
		n = session_mappings(rec->s, domain_id, from, page, MAPPINGS_PAGE, &more);
		if (n < 0)
			return n;
		for (int i = 0; i < n && rc == 0; i++)
			rc = snapshot_mapping(st, rec, domain_id, &page[i]);
		if (n)
			from = page[n - 1].iova + page[n - 1].length;
	}
	return rc;
}

static int snapshot_lease(struct state *st, struct lease_rec *rec, struct mapping_view *page)
{
	int rc = add_lease(st, rec);

	for (size_t i = 0; i < rec->n_files; i++)
		rec->files[i].used = false;
	/* Its content would end with it at the replay: the release alone is what stays true. */
	if (rc == 0 && rec->released)
		return add_release(st, rec);
	if (rc == 0)
		rc = snapshot_objects(st, rec);
	if (rc == 0)
		rc = snapshot_devices(st, rec);
	for (size_t i = 0; i < rec->n_domains && rc == 0; i++)
		rc = snapshot_maps(st, rec, rec->domains[i].id, page);
	return rc;
}

/* One lease that cannot be written does not keep the others from the snapshot: it is left out
 * (its stored files kept, since it lives on) and said, and its next change tries again. */
static void snapshot_or_leave_out(struct state *st, struct lease_rec *rec,
				  struct mapping_view *page)
{
	size_t mark = st->n_boxes;

	rec->left_out = snapshot_lease(st, rec, page) < 0;
	if (!rec->left_out)
		return;
	st->n_boxes = mark;
	for (size_t i = 0; i < rec->n_files; i++)
		rec->files[i].used = true;
	log_struct(LOG_ERR,
		   LOG_FIELDS({"IOMMUD_LEASE", session_lease(rec->s)},
			      {"IOMMUD_FAILURE", failure_message()}),
		   "lease '{IOMMUD_LEASE}' is left out of the state snapshot, so it would not "
		   "survive a restart; its changes wait until it can be written: "
		   "{IOMMUD_FAILURE}");
}

static uint64_t compact_threshold(uint64_t snapshot)
{
	const char *test = getenv("IOMMUD_TEST_COMPACT_BYTES");
	uint64_t least = test ? strtoull(test, NULL, 10) : COMPACT_MIN;

	return 2 * snapshot > least ? 2 * snapshot : least;
}

/* The new record, filled and stored; the old one stays until then. */
static int write_snapshot(struct state *st)
{
	struct mapping_view *page = calloc(MAPPINGS_PAGE, sizeof(*page));
	struct lease_rec *rec;
	int rc = page ? 0 : fail(-ENOMEM, "out of memory for the state snapshot");

	st->n_boxes = 0;
	LIST_FOREACH (rec, &st->leases, link)
		if (rc == 0)
			snapshot_or_leave_out(st, rec, page);
	free(page);
	if (rc == 0)
		rc = add_delegations(st);
	if (rc == 0)
		rc = txn_commit(st);
	st->n_boxes = 0;
	if (rc == 0)
		rc = fdstore_add(st->rec.name, st->rec.fd);
	return rc;
}

int state_compact(struct state *st)
{
	struct record old = st->rec;
	struct lease_rec *rec;
	int rc = record_create(old.generation + 1, &st->rec);

	if (rc == 0 && (rc = write_snapshot(st)) < 0)
		record_close(&st->rec);
	if (rc < 0) {
		log_err("cannot write the state snapshot, so changes are recorded in the old one "
			"longer: %s",
			failure_message());
		st->rec = old;
		/* An adopted record is not mapped: without a new one nothing can be recorded. */
		if (st->rec.base)
			st->compact_at = compact_threshold(record_committed(&st->rec));
		return rc;
	}
	if (old.fd >= 0)
		fdstore_remove(old.name);
	record_close(&old);
	delegations_drop_ended(st);
	LIST_FOREACH (rec, &st->leases, link) {
		lease_drop_unused_files(rec);
		lease_unstore_freed(rec);
		rec->unrecorded = rec->left_out;
	}
	st->compact_at = compact_threshold(record_committed(&st->rec));
	return 0;
}
