// SPDX-License-Identifier: MIT
/* The methods about a domain's IO address space: mapping, unmapping, listing, dirty bits. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "call.h"
#include "histogram.h"
#include "log.h"

_Static_assert(IOMMUD__V1__PROT__PROT_READ == KH_PROT_READ, "Prot bits are kernel-helper's");
_Static_assert(IOMMUD__V1__PROT__PROT_WRITE == KH_PROT_WRITE, "Prot bits are kernel-helper's");

/* A ListMappings page unless the client asks for fewer; keeps replies far below the limit. */
#define MAPPINGS_PAGE 1024
/* ReadDirty bitmap words per call: 4096 words of 10 bytes at most stay within a packet. */
#define DIRTY_WORDS_MAX 4096
#define MAP_BATCH_MAX	1024
/* A failed batch's message, kept while it takes back its entries: as long as fail() keeps. */
#define UNDO_MESSAGE_MAX 1024

/* Appends the connection's kept descriptors the request names (kept_files) to those it
 * carries, with their files as examined when they were kept: entries name them by fd_index
 * past the carried ones. */
static int add_kept_files(struct call *call, const uint32_t *slots, size_t n)
{
	if (n > IOMMUD_MAX_FDS - call->n_carried)
		return fail(-EINVAL,
			    "the request names %zu kept files and carries %zu descriptors; it may "
			    "have %d together",
			    n, call->n_carried, IOMMUD_MAX_FDS);
	for (size_t i = 0; i < n; i++) {
		const struct kept_file *kf =
			slots[i] < IOMMUD_KEPT_FILES ? &call->client->kept_files[slots[i]] : NULL;

		if (!kf || !kf->used)
			return fail(-EBADF,
				    "kept_files[%zu] is slot %u, where this connection keeps no "
				    "file; keep the file first (KeepFiles), or send its descriptor "
				    "with the request",
				    i, slots[i]);
		call->fds[call->n_fds] = kf->file.fd;
		call->files[call->n_fds++] = kf->file;
	}
	return 0;
}

/* Every descriptor a request carries or names must be used by one of its entries (a stray one
 * is a client bug that would otherwise go unnoticed), and each carried one's file is checked
 * once here, however many entries map it; a kept one's again only where an entry reaches past
 * the size it had when kept (it can only have grown). */
static int check_fd_use(struct call *call, const uint32_t *kept_files, size_t n_kept_files)
{
	const struct map_entries *es = &call->entries;
	int first_user[IOMMUD_MAX_FDS];
	uint64_t reach[IOMMUD_MAX_FDS] = {0};
	int rc = add_kept_files(call, kept_files, n_kept_files);

	if (rc < 0)
		return rc;
	for (size_t i = 0; i < call->n_fds; i++)
		first_user[i] = -1;
	for (size_t i = 0; i < es->n; i++) {
		struct entry_fields e;
		uint64_t end;

		if (es->messages && !es->messages[i]) {
			call->failed_index = (int)i;
			return fail(-EINVAL, "map entry %zu is empty", i);
		}
		e = entry_at(es, i);
		if (e.fd_index >= call->n_fds) {
			call->failed_index = (int)i;
			return fail(
				-EBADF,
				"map entry %zu names descriptor %u, but the request carries %zu "
				"and names %zu kept files; send the memory's fd with the request "
				"(SCM_RIGHTS), or name the slot it is kept in (kept_files)",
				i, e.fd_index, call->n_carried, call->n_fds - call->n_carried);
		}
		if (first_user[e.fd_index] < 0)
			first_user[e.fd_index] = (int)i;
		if (__builtin_add_overflow(e.offset, e.length, &end))
			end = UINT64_MAX;
		if (end > reach[e.fd_index])
			reach[e.fd_index] = end;
	}
	for (size_t i = 0; i < call->n_fds; i++) {
		if (first_user[i] < 0)
			return fail(-EINVAL,
				    "descriptor %zu %s is not used by any map entry; send or name "
				    "only the files the entries map",
				    i,
				    i < call->n_carried ? "sent with the request" : "named kept");
		if (i >= call->n_carried && reach[i] <= call->files[i].size)
			continue;
		rc = session_check_file(call->fds[i], &call->files[i]);
		if (rc < 0) {
			call->failed_index = first_user[i];
			return rc;
		}
	}
	return 0;
}

static struct map_entry entry_of(struct call *call, size_t i)
{
	struct entry_fields f = entry_at(&call->entries, i);

	return (struct map_entry){
		.domain_id = f.domain_id,
		.file = &call->files[f.fd_index],
		.offset = f.offset,
		.length = f.length,
		.prot = f.prot,
		.fixed_iova = f.fixed_iova,
		.iova = f.iova,
		.alignment = f.alignment,
	};
}

/* A column of a compact batch and where the call reads it (struct map_entries). Its values
 * are of the width entry_at reads them with, as MapEntry's field is. */
struct column {
	const char *name;
	size_t count_at, values_at, view_at;
};

#define COLUMN(values)                                                                             \
	{                                                                                          \
#values, offsetof(Iommud__V1__MapEntryColumns, n_##values),                        \
			offsetof(Iommud__V1__MapEntryColumns, values),                             \
			offsetof(struct map_entries, values)                                       \
	}
#define COLUMN_OF(values, field, type)                                                             \
	_Static_assert(sizeof(*((Iommud__V1__MapEntryColumns *)0)->values) == sizeof(type) &&      \
			       sizeof(((Iommud__V1__MapEntry *)0)->field) == sizeof(type),         \
		       #values " holds MapEntry." #field " as entry_at reads it")

COLUMN_OF(domain_ids, domain_id, uint32_t);
COLUMN_OF(fd_indexes, fd_index, uint32_t);
COLUMN_OF(offsets, offset, uint64_t);
COLUMN_OF(lengths, length, uint64_t);
COLUMN_OF(prots, prot, uint32_t);
COLUMN_OF(fixed_iovas, fixed_iova, protobuf_c_boolean);
COLUMN_OF(iovas, iova, uint64_t);
COLUMN_OF(alignments, alignment, uint64_t);

static const struct column columns[] = {
	COLUMN(domain_ids), COLUMN(fd_indexes),	 COLUMN(offsets), COLUMN(lengths),
	COLUMN(prots),	    COLUMN(fixed_iovas), COLUMN(iovas),	  COLUMN(alignments),
};

/* Every entry's value of a column that has none. */
static const uint64_t column_zero;

static size_t column_count(const Iommud__V1__MapEntryColumns *c, const struct column *col)
{
	return *(const size_t *)((const char *)c + col->count_at);
}

/* The entries of a batch: its MapEntry messages, or its longest column's values. */
static size_t batch_entries(const Iommud__V1__MapBatchRequest *r)
{
	size_t n = r->n_entries;

	if (r->columns)
		for (size_t k = 0; k < sizeof(columns) / sizeof(columns[0]); k++)
			if (column_count(r->columns, &columns[k]) > n)
				n = column_count(r->columns, &columns[k]);
	return n;
}

static const void *column_values(const Iommud__V1__MapEntryColumns *c, const struct column *col)
{
	return *(const void *const *)((const char *)c + col->values_at);
}

/* The call's entries: a compact batch's n, read from its columns where they were decoded. */
static int entries_of_columns(struct call *call, const Iommud__V1__MapEntryColumns *c, size_t n)
{
	call->entries = (struct map_entries){.n = n};
	for (size_t k = 0; k < sizeof(columns) / sizeof(columns[0]); k++) {
		struct column_view *view =
			(struct column_view *)((char *)&call->entries + columns[k].view_at);
		size_t count = column_count(c, &columns[k]);

		if (count > 1 && count != n)
			return fail(-EINVAL,
				    "map_batch.columns.%s has %zu values, but the batch has %zu "
				    "entries (its longest column); give every column one value per "
				    "entry, one value for all of them, or none",
				    columns[k].name, count, n);
		*view = (struct column_view){
			.values = count ? column_values(c, &columns[k]) : &column_zero,
			.each = count > 1 ? SIZE_MAX : 0,
		};
	}
	return 0;
}

/* Sizes the steps of a map or an unmap to the slice (or, its tenant alone, to
 * MAP_STEP_ALONE_NS): the one that started at started (on monotonic_ns) has just ended, at the
 * time returned. */
static uint64_t size_steps(const struct call *call, uint64_t started, unsigned *parts_per_step)
{
	uint64_t budget = call->deadline_ns, ended = monotonic_ns();

	if (budget != UINT64_MAX)
		budget = call->alone ? MAP_STEP_ALONE_NS : budget > started ? budget - started : 0;
	steps_resize(parts_per_step, ended - started, budget);
	return ended;
}

/* When a slice's last look at the clock was (monotonic_ns; 0 before its first), and the bytes
 * mapped since without one. A step reads the clock to size the next and to stop at the slice's
 * end; a mapping made in one step has no next to size, so small entries read it only once they
 * add up to a step of parts' worth, which bounds how far a slice runs past its time as a step of
 * a large mapping does, without a clock read for every page of a batch. Where the daemon times
 * its backend's maps (session_times_maps), a batch's entries made in one call each are timed
 * the same way: together, from one look to the next, each recorded with an equal share of that
 * time, so that each still counts once, with its bytes, and no page costs two clock reads. */
struct slice_clock {
	uint64_t at, unclocked;
	bool together;	/* times a batch's one-call entries together */
	size_t untimed; /* such entries mapped since the last look */
};

/* Records the entries timed together since the clock's last look, the last of them entry
 * end - 1, with equal shares of the time from since to now: each run of one length at once. */
static void record_together(struct call *call, struct slice_clock *clock, size_t end,
			    uint64_t since, uint64_t now)
{
	uint64_t share = (now - since) / clock->untimed, length;
	size_t i = end - clock->untimed, run;

	for (; i < end; i += run) {
		length = entry_at(&call->entries, i).length;
		run = 1;
		while (i + run < end && entry_at(&call->entries, i + run).length == length)
			run++;
		session_record_maps(call->client->session, length, share, run);
	}
	clock->untimed = 0;
}

/* The clock's look at now, after a step that started at since and the entries before end: those
 * timed together since its last look are recorded. */
static void clock_looked(struct call *call, struct slice_clock *clock, size_t end, uint64_t since,
			 uint64_t now)
{
	if (clock->untimed)
		record_together(call, clock, end, since, now);
	clock->at = now;
	clock->unclocked = 0;
}

/* Looks at the clock for the entries timed together and not yet recorded, the last of them
 * entry end - 1, if there are any: before a mapping timed on its own, and where the batch ends
 * or fails. */
static void settle_together(struct call *call, struct slice_clock *clock, size_t end)
{
	if (clock->untimed)
		clock_looked(call, clock, end, clock->at, monotonic_ns());
}

/* Starts the mapping of entry call->done: timed with the ones before it where the clock times
 * them together and it is made in one call, else on its own. */
static int map_entry_start(struct call *call, struct slice_clock *clock)
{
	struct map_entry e = entry_of(call, call->done);
	int rc = session_map_start(call->client->session, &e, &call->part);

	if (rc < 0)
		return rc;
	call->part.timed_by_caller = clock->together && !call->part.part;
	if (!call->part.timed_by_caller)
		settle_together(call, clock, call->done);
	return 0;
}

/* Maps entry call->done step by step, starting it if it is not in progress, into
 * iovas[call->done]: 0 when done, CALL_MORE when the slice's time is up first, a negative
 * errno when it failed (what it mapped then being taken back in call->part.back). A mapping
 * too costly for one slice is made over several. */
static int map_entry_parts(struct call *call, uint64_t *iovas, struct slice_clock *clock)
{
	struct session *s = call->client->session;
	uint64_t started, mapped, ended;
	int rc;

	if (!call->part.mo && (rc = map_entry_start(call, clock)) < 0)
		return rc;
	do {
		if (clock->at && clock->at >= call->deadline_ns)
			return CALL_MORE;
		started = clock->at ? clock->at : monotonic_ns();
		mapped = call->part.mapped;
		rc = session_map_step(s, &call->part);
		clock->unclocked += call->part.mapped - mapped;
		clock->untimed += rc == 0 && call->part.timed_by_caller;
		if (rc == 0 && clock->at && !call->part.part &&
		    clock->unclocked < MAP_PART_PAGES * MAP_GRANULE)
			break;
		ended = size_steps(call, started, &call->part.parts_per_step);
		clock_looked(call, clock, call->done + (rc == 0), started, ended);
	} while (rc > 0);
	if (rc == 0)
		iovas[call->done] = call->part.req.iova;
	return rc;
}

/* Maps entry call->done, if it is like the last one (session_map_like), as map_entry_parts would
 * one made in one call: 0 when mapped, 1 when it is not like it (nothing done), a negative errno
 * when it failed. The clock has been read in this slice (clock->at), and the slice goes on. */
static int map_like_entry(struct call *call, struct slice_clock *clock)
{
	struct map_entry e = entry_of(call, call->done);
	int rc = session_map_like(call->client->session, &e, &call->part);

	if (rc)
		return rc;
	call->iovas[call->done] = call->part.req.iova;
	clock->unclocked += e.length;
	clock->untimed += clock->together;
	if (clock->unclocked >= MAP_PART_PAGES * MAP_GRANULE)
		clock_looked(call, clock, call->done + 1, clock->at, monotonic_ns());
	return 0;
}

/* What the call mapped could not all be taken back: that is the failure to reply with, as what
 * stays mapped is the client's to unmap. */
static void take_back_failed(struct call *call, const struct unmap_progress *u, int rc)
{
	log_err("uid %u: cannot take back what a map had mapped in [0x%llx, 0x%llx] of domain %u: "
		"%s",
		(unsigned)call->client->peer.uid, (unsigned long long)u->iova,
		(unsigned long long)u->last, u->domain_id, failure_message());
	(void)snprintf(call->undo_message, UNDO_MESSAGE_MAX,
		       "the map failed, and what it had mapped in [0x%llx, 0x%llx] cannot all be "
		       "taken back (%s); what stays mapped there is listed by list_mappings: "
		       "unmap it",
		       (unsigned long long)u->iova, (unsigned long long)u->last, failure_message());
	call->undo_rc = rc;
	call->left_mapped = true;
}

/* Starts taking back the last entry the batch mapped; false when none is left. A Map's done
 * stays 0, so only a batch's entries are read. */
static bool take_back_entry(struct call *call)
{
	struct entry_fields entry;
	int rc;

	if (!call->done)
		return false;
	call->done--;
	entry = entry_at(&call->entries, call->done);
	rc = session_unmap_start(call->client->session, entry.domain_id, call->iovas[call->done],
				 entry.length, false, &call->back);
	if (rc < 0)
		take_back_failed(call, &call->back, rc);
	return true;
}

/* Takes back what the call mapped: the entry whose map failed or was abandoned (its take back
 * started by the session), then the entries mapped before it, last first, in steps; all
 * of it only until the slice's time is up. Whether all is gone. */
static bool take_back_maps(struct call *call)
{
	struct unmap_progress *u;
	bool stepped = false;
	uint64_t started;
	int rc;

	for (;;) {
		u = call->part.back.steps_left ? &call->part.back : &call->back;
		if (!u->steps_left) {
			if (!take_back_entry(call))
				return true;
			continue;
		}
		if (stepped && call_out_of_time(call))
			return false;
		stepped = true;
		started = monotonic_ns();
		rc = session_unmap_step(call->client->session, u);
		(void)size_steps(call, started, &u->parts_per_step);
		if (rc < 0)
			take_back_failed(call, u, rc);
	}
}

/* Whether entry is already mapped exactly so: one mapping at its fixed IOVA, of its length,
 * prot, file (device and inode) and offset. */
static bool entry_in_place(struct call *call, struct entry_fields entry)
{
	const struct map_file *file = &call->files[entry.fd_index];
	struct mapping_view view;
	bool more;

	return entry.fixed_iova &&
	       session_mappings(call->client->session, entry.domain_id, entry.iova, &view, 1,
				&more) == 1 &&
	       view.iova == entry.iova && view.length == entry.length && view.prot == entry.prot &&
	       view.offset == entry.offset && view.dev == file->dev && view.ino == file->ino;
}

/* Whether a map may have failed only because what it asks for is there already: the overlap,
 * or the quotas and ceilings it counts against a second time. */
static bool refused_for_being_there(int rc)
{
	return rc == -EEXIST || rc == -EDQUOT || rc == -ENOSPC;
}

/* Room for a batch's reply, taken before anything is mapped so that the reply cannot fail
 * once all of it is: every entry's IOVA (call->iovas itself), or where the client asked, only
 * those the daemon picked (a client that maps at IOVAs of its own, as a guest's vIOMMU or DPDK
 * does, has no use for the rest, and a reply of 1024 IOVAs costs both sides far more than the
 * request's columns). The state record reads call->iovas. False when out of memory. */
static bool batch_reply_room(struct call *call)
{
	const Iommud__V1__MapBatchRequest *r = call->req->map_batch;
	Iommud__V1__MapBatchReply *reply = call->resp->map_batch;
	size_t picked = 0;

	if (!r->picked_iovas_only) {
		reply->iovas = call->iovas;
		return true;
	}
	for (size_t i = 0; i < call->entries.n; i++)
		picked += !entry_at(&call->entries, i).fixed_iova;
	return !picked || (reply->iovas = call_alloc_filled(call, picked * sizeof(uint64_t)));
}

/* The reply of a batch whose entries are all mapped, where call->iovas says. */
static void batch_reply_iovas(struct call *call)
{
	const Iommud__V1__MapBatchRequest *r = call->req->map_batch;
	Iommud__V1__MapBatchReply *reply = call->resp->map_batch;

	if (!r->picked_iovas_only) {
		reply->n_iovas = call->entries.n;
		return;
	}
	reply->n_iovas = 0;
	for (size_t i = 0; i < call->entries.n; i++)
		if (!entry_at(&call->entries, i).fixed_iova)
			reply->iovas[reply->n_iovas++] = call->iovas[i];
}

/* A Map or MapBatch on a lease that a client sends again, not knowing whether the first one
 * took effect before the connection dropped (a daemon restart), is answered as done when every
 * entry is in place exactly as asked, even where it counts against a quota the tenant has
 * reached: a batch is all or nothing, so it is a retry only if its first entry failed (nothing
 * of it was mapped by this call) and all of them are in place.
 * Anything else that overlaps stays refused. Whether the call is such a retry, its reply then
 * filled in. */
static bool answered_as_retry(struct call *call)
{
	bool batch = call->req->method_case == IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	const struct map_entries *es = &call->entries;

	if (!refused_for_being_there(call->undo_rc) || call->left_mapped ||
	    call->failed_index > 0 || !session_lease(call->client->session)[0])
		return false;
	for (size_t i = 0; i < es->n; i++)
		if (!entry_in_place(call, entry_at(es, i)))
			return false;
	for (size_t i = 0; i < es->n; i++)
		(batch ? call->iovas : &call->resp->map->iova)[i] = entry_at(es, i).iova;
	if (batch)
		batch_reply_iovas(call);
	call->failed_index = -1;
	/* The record holds the mappings already; a second copy would clash on replay. */
	call->changed_nothing = true;
	return true;
}

static int take_back_then_fail(struct call *call)
{
	if (!take_back_maps(call))
		return CALL_MORE;
	if (answered_as_retry(call))
		return 0;
	return fail(call->undo_rc, "%s", call->undo_message);
}

/* A map failed: what the call mapped goes, over as many slices as it takes, and then the
 * failure (its message kept meanwhile, as the other calls' failures replace it) is the reply.
 * A batch's message names the entry. */
static int map_failed(struct call *call, int rc, bool batch)
{
	if (batch) {
		(void)snprintf(call->undo_message, UNDO_MESSAGE_MAX, "map entry %zu: %s",
			       call->done, failure_message());
		call->failed_index = (int)call->done;
	} else {
		(void)snprintf(call->undo_message, UNDO_MESSAGE_MAX, "%s", failure_message());
	}
	call->undo_rc = rc;
	call->resume = take_back_then_fail;
	return take_back_then_fail(call);
}

static int map_single(struct call *call)
{
	struct slice_clock clock = {0};
	int rc = map_entry_parts(call, &call->resp->map->iova, &clock);

	return rc < 0 ? map_failed(call, rc, false) : rc;
}

/* A Map or MapBatch whose client has gone: the mapping in progress and (a batch's) entries
 * mapped go, in slices like the call's own work. */
static int abandon_maps(struct call *call)
{
	if (call->part.mo)
		session_map_abort(call->client->session, &call->part);
	return take_back_maps(call) ? 0 : CALL_MORE;
}

/* The message a failed map keeps while it takes back what it mapped. */
static int alloc_undo_message(struct call *call)
{
	call->undo_message = call_alloc(call, UNDO_MESSAGE_MAX);
	return call->undo_message ? 0 : nomem();
}

int do_map(struct call *call)
{
	Iommud__V1__MapEntry *entry = call->req->map->entry;
	int rc;

	if (!entry)
		return fail(-EINVAL, "%s needs an entry saying what to map",
			    method_name(call->req->method_case));
	call->entries = (struct map_entries){.messages = &call->req->map->entry, .n = 1};
	rc = check_fd_use(call, call->req->map->kept_files, call->req->map->n_kept_files);
	/* A Map has one entry: the status names no index. */
	call->failed_index = -1;
	if (rc < 0)
		return rc;
	if (!REPLY(call, map_reply) || alloc_undo_message(call) < 0)
		return nomem();
	call->resume = map_single;
	call->abandon = abandon_maps;
	return map_single(call);
}

/* A batch maps its entries in order and, should one fail, takes back those it mapped, last
 * first: all or nothing. Both go as far per slice as the slice's time allows (at least one
 * step), so that a batch of many or large entries does not hold the loop. */
static int map_batch_entries(struct call *call)
{
	struct slice_clock clock = {.together = session_times_maps(call->client->session)};
	size_t n = call->entries.n;
	int rc;

	/* Between slices the session's other calls may have unmapped the last entry's mapping. */
	call->part.like = NULL;
	for (; call->done < n; call->done++) {
		rc = 1;
		if (call->part.like && clock.at) {
			if (clock.at >= call->deadline_ns)
				return CALL_MORE;
			rc = map_like_entry(call, &clock);
		}
		if (rc > 0)
			rc = map_entry_parts(call, call->iovas, &clock);
		if (rc == CALL_MORE)
			return rc;
		if (rc < 0) {
			settle_together(call, &clock, call->done);
			return map_failed(call, rc, true);
		}
	}
	settle_together(call, &clock, n);
	batch_reply_iovas(call);
	return 0;
}

int do_map_batch(struct call *call)
{
	const Iommud__V1__MapBatchRequest *r = call->req->map_batch;
	size_t n = batch_entries(r);
	int rc;

	if (r->columns && r->n_entries)
		return fail(-EINVAL,
			    "%s has both entries and columns; send the batch in one "
			    "form (columns cost less)",
			    method_name(call->req->method_case));
	if (!n || n > MAP_BATCH_MAX)
		return fail(-EINVAL, "%s takes 1 to %d entries, not %zu; split the batch",
			    method_name(call->req->method_case), MAP_BATCH_MAX, n);
	if (r->columns) {
		if ((rc = entries_of_columns(call, r->columns, n)) < 0)
			return rc;
	} else {
		call->entries = (struct map_entries){.messages = r->entries, .n = n};
	}
	if ((rc = check_fd_use(call, r->kept_files, r->n_kept_files)) < 0)
		return rc;
	if (!REPLY(call, map_batch_reply) ||
	    !(call->iovas = call_alloc(call, n * sizeof(uint64_t))) || !batch_reply_room(call) ||
	    alloc_undo_message(call) < 0)
		return nomem();
	call->resume = map_batch_entries;
	call->abandon = abandon_maps;
	return map_batch_entries(call);
}

/* The reply of an Unmap or UnmapAll whose mappings are gone. */
static int unmap_reply(struct call *call)
{
	const struct unmap_progress *u = &call->back;

	if (call->req->method_case == IOMMUD__V1__REQUEST__METHOD_UNMAP) {
		call->resp->unmap->unmapped_bytes = u->bytes;
		call->resp->unmap->unmapped_count = u->count;
	} else {
		call->resp->unmap_all->unmapped_bytes = u->bytes;
		call->resp->unmap_all->unmapped_count = u->count;
	}
	return 0;
}

/* Unmap and UnmapAll take their mappings away in steps, as many per slice as its time allows
 * (each step as many parts as it leaves room for); the reply, once all are gone, says what went. */
static int unmap_steps(struct call *call)
{
	bool stepped = false;
	uint64_t started;
	int rc;

	do {
		if (stepped && call_out_of_time(call))
			return CALL_MORE;
		stepped = true;
		started = monotonic_ns();
		rc = session_unmap_step(call->client->session, &call->back);
		(void)size_steps(call, started, &call->back.parts_per_step);
		/* A step that left more took all it might: its time sizes the next removal's. */
		if (rc > 0 && call->alone)
			call->client->unmap_parts_alone = call->back.parts_per_step;
	} while (rc > 0);
	return rc < 0 ? rc : unmap_reply(call);
}

/* An Unmap whose client has gone still removes what it was asked to: half of a mapping would
 * surprise the tenant's other connections more than all of it gone. 0 once done, as if
 * acknowledged (the state record keeps it so); a negative errno if a step failed. */
static int abandon_unmap(struct call *call)
{
	/* Nor is its file's map kept for a Map that will not come. */
	call->back.keep_view = false;
	return unmap_steps(call);
}

/* Removes [iova, iova+length) of the domain (UINT64_MAX from 0: all), in steps where it is
 * costly; the reply says what went once all of it has. An Unmap of one mapping that asks for it
 * (keep_map: a client that maps and unmaps a buffer per I/O) keeps its file's map for the next
 * Map, an UnmapAll that asks the last file map it leaves unused (a client that maps a pool of
 * buffers again after each UnmapAll): session_unmap_start's keep_view. */
static int unmap_range(struct call *call, uint32_t domain_id, uint64_t iova, uint64_t length,
		       bool keep_view)
{
	int rc = session_unmap_start(call->client->session, domain_id, iova, length, keep_view,
				     &call->back);

	if (rc <= 0)
		return rc < 0 ? rc : unmap_reply(call);
	if (call->alone && call->client->unmap_parts_alone)
		call->back.parts_per_step = call->client->unmap_parts_alone;
	call->resume = unmap_steps;
	call->abandon = abandon_unmap;
	return unmap_steps(call);
}

int do_unmap(struct call *call)
{
	const Iommud__V1__UnmapRequest *r = call->req->unmap;

	if (!r->length)
		return fail(-EINVAL, "%s needs a length; %s removes everything",
			    method_name(call->req->method_case),
			    method_name(IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL));
	if (!REPLY(call, unmap_reply))
		return nomem();
	return unmap_range(call, r->domain_id, r->iova, r->length, r->keep_map);
}

int do_unmap_all(struct call *call)
{
	if (!REPLY(call, unmap_all_reply))
		return nomem();
	return unmap_range(call, call->req->unmap_all->domain_id, 0, UINT64_MAX,
			   call->req->unmap_all->keep_map);
}

int do_list_mappings(struct call *call)
{
	const Iommud__V1__ListMappingsRequest *r = call->req->list_mappings;
	size_t max = r->max && r->max < MAPPINGS_PAGE ? r->max : MAPPINGS_PAGE;
	Iommud__V1__ListMappingsReply *reply = REPLY(call, list_mappings_reply);
	struct mapping_view *views = call_alloc(call, max * sizeof(*views));
	bool more;
	int n;

	if (!reply || !views || !(reply->mappings = call_alloc(call, max * sizeof(void *))))
		return nomem();
	n = session_mappings(call->client->session, r->domain_id, r->from, views, max, &more);
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		Iommud__V1__Mapping *m = call_alloc(call, sizeof(*m));

		if (!m)
			return nomem();
		iommud__v1__mapping__init(m);
		m->iova = views[i].iova;
		m->length = views[i].length;
		m->offset = views[i].offset;
		m->prot = views[i].prot;
		reply->mappings[reply->n_mappings++] = m;
	}
	reply->more = more;
	if (more && n)
		reply->next_from = views[n - 1].iova + views[n - 1].length;
	return 0;
}

int do_get_iova_ranges(struct call *call)
{
	uint32_t domain_id = call->req->get_iova_ranges->domain_id;
	struct kh_ctx *ctx = session_ctx(call->client->session);
	Iommud__V1__GetIovaRangesReply *reply;
	struct kh_iova_range *ranges;
	int n = kh_iova_ranges(ctx, domain_id, NULL, 0);

	if (n < 0)
		return fail_kh(n, "cannot read the IOVA ranges");
	reply = REPLY(call, get_iova_ranges_reply);
	ranges = call_alloc(call, (size_t)n * sizeof(*ranges));
	if (!reply || !ranges)
		return nomem();
	n = kh_iova_ranges(ctx, domain_id, ranges, (size_t)n);
	if (n < 0)
		return fail_kh(n, "cannot read the IOVA ranges");
	return call_iova_ranges(call, ranges, (size_t)n, &reply->ranges, &reply->n_ranges);
}

int do_read_dirty(struct call *call)
{
	const Iommud__V1__ReadDirtyRequest *r = call->req->read_dirty;
	Iommud__V1__ReadDirtyReply *reply;
	uint64_t pages, words;
	int rc;

	if (r->page_size < 4096 || (r->page_size & (r->page_size - 1)) || !r->length ||
	    r->length % r->page_size)
		return fail(-EINVAL, "page_size must be a power of two of at least 4096 and length "
				     "a non-zero multiple of it");
	pages = r->length / r->page_size;
	words = (pages + 63) / 64;
	if (words > DIRTY_WORDS_MAX)
		return fail(-ERANGE,
			    "%s covers at most %d pages per call, not %llu; read the range "
			    "in parts",
			    method_name(call->req->method_case), DIRTY_WORDS_MAX * 64,
			    (unsigned long long)pages);
	reply = REPLY(call, read_dirty_reply);
	if (!reply || !(reply->bitmap = call_alloc(call, words * sizeof(uint64_t))))
		return nomem();
	rc = kh_read_dirty(session_ctx(call->client->session), r->domain_id, r->iova, r->length,
			   r->page_size, reply->bitmap, r->no_clear ? KH_DIRTY_NO_CLEAR : 0);
	if (rc < 0)
		return fail_kh(rc, "cannot read the dirty bits");
	reply->n_bitmap = words;
	return 0;
}
