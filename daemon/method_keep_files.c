// SPDX-License-Identifier: MIT
/* KeepFiles: a connection keeps the descriptors of its memory files, so that its Map and
 * MapBatch requests name them by slot instead of sending them, and the daemon examines each file
 * once instead of with every request (session_check_file: four system calls). */
#define _GNU_SOURCE /* F_SEAL_SEAL */
#include <errno.h>
#include <fcntl.h>

#include "call.h"
#include "daemon.h"

/* Seals a kept file needs: with them, neither its seals nor (below what was examined) its
 * size can change, so what session_check_file found stays true but for a size that grew. */
#define KEEP_SEALS (F_SEAL_SHRINK | F_SEAL_SEAL)

static int check_slot(uint32_t slot, bool named[IOMMUD_KEPT_FILES], const char *field, size_t i)
{
	if (slot >= IOMMUD_KEPT_FILES)
		return fail(-EINVAL, "keep_files.%s[%zu] is slot %u; slots are 0 to %d", field, i,
			    slot, IOMMUD_KEPT_FILES - 1);
	if (named[slot])
		return fail(-EINVAL,
			    "keep_files.%s[%zu] names slot %u again; name each slot once, in "
			    "slots or in forget",
			    field, i, slot);
	named[slot] = true;
	return 0;
}

int do_keep_files(struct call *call)
{
	const Iommud__V1__KeepFilesRequest *r = call->req->keep_files;
	struct map_file files[IOMMUD_MAX_FDS];
	bool named[IOMMUD_KEPT_FILES] = {false};
	int rc;

	if (r->n_slots != call->n_carried)
		return fail(-EINVAL,
			    "keep_files.slots names %zu slots for the %zu descriptors the request "
			    "carries; name one slot for each descriptor, in the order sent",
			    r->n_slots, call->n_carried);
	for (size_t i = 0; i < r->n_slots; i++)
		if ((rc = check_slot(r->slots[i], named, "slots", i)) < 0)
			return rc;
	for (size_t i = 0; i < r->n_forget; i++)
		if ((rc = check_slot(r->forget[i], named, "forget", i)) < 0)
			return rc;
	/* Every file examined before any slot changes: all or nothing. */
	for (size_t i = 0; i < call->n_carried; i++) {
		call->failed_index = (int)i;
		if ((rc = session_check_file(call->fds[i], &files[i])) < 0)
			return rc;
		if ((files[i].seals & KEEP_SEALS) != KEEP_SEALS)
			return fail(
				-EINVAL,
				"descriptor %zu: only a file sealed with F_SEAL_SHRINK and "
				"F_SEAL_SEAL can be kept, as its seals and size must stay as the "
				"daemon examined them; add both (fcntl F_ADD_SEALS), or send the "
				"descriptor with each Map instead",
				i);
	}
	call->failed_index = -1;
	for (size_t i = 0; i < r->n_forget; i++)
		client_give_up_kept_file(call->client, r->forget[i]);
	for (size_t i = 0; i < call->n_carried; i++) {
		struct kept_file *kf = &call->client->kept_files[r->slots[i]];

		client_give_up_kept_file(call->client, r->slots[i]);
		*kf = (struct kept_file){.used = true, .file = files[i]};
		/* Taken from the call: the connection owns it now. */
		call->fds[i] = -1;
	}
	/* Kept by the connection alone: nothing of it outlives the connection or is recorded. */
	call->changed_nothing = true;
	return call_reply(call, &iommud__v1__keep_files_reply__descriptor) ? 0 : nomem();
}
