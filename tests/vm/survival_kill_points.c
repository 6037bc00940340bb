// SPDX-License-Identifier: MIT
/* iommud killed at a chosen point of its state record, for test_survival_edu: main() is the
 * daemon's own (daemon/main.c), and its record is appended to through this wrapper (linked
 * with --wrap=record_append). $IOMMUD_TEST_KILL_AT_RECORD is "before:CHANGE" or "after:CHANGE",
 * CHANGE the name of a state entry's change (alloc_domain, release_lease, ...): the daemon
 * kills itself (SIGKILL) just before the first transaction holding one commits, when the
 * kernel has made the change and the record does not hold it, or just after, when the record
 * holds it and nothing that follows the commit was done. Transactions naming a lease (the
 * snapshot written at every start, a lease's first call) are let through. */
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "state_record.h"

int __real_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn);
int __wrap_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn);

static bool holds_change(const Iommud__State__V1__Transaction *txn, const char *change)
{
	const ProtobufCFieldDescriptor *f;

	for (size_t i = 0; i < txn->n_entries; i++) {
		f = protobuf_c_message_descriptor_get_field(&iommud__state__v1__entry__descriptor,
							    (unsigned)txn->entries[i]->change_case);
		if (f && strcmp(f->name, change) == 0)
			return true;
	}
	return false;
}

int __wrap_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn)
{
	const char *point = getenv("IOMMUD_TEST_KILL_AT_RECORD");
	bool before = point && strncmp(point, "before:", 7) == 0;
	bool after = point && strncmp(point, "after:", 6) == 0;
	bool here = (before || after) && holds_change(txn, strchr(point, ':') + 1) &&
		    !holds_change(txn, "lease");
	int rc;

	if (here && before)
		(void)raise(SIGKILL);
	rc = __real_record_append(rec, txn);
	if (here && after && rc == 0)
		(void)raise(SIGKILL);
	return rc;
}
