// SPDX-License-Identifier: MIT
/* iommud killed at a chosen point of its state record, for test_survival_edu: main() is the
 * daemon's own (daemon/main.c), and its record is appended to through this wrapper (linked
 * with --wrap=record_append). $IOMMUD_TEST_KILL_BEFORE_RECORD is the name of a state entry's
 * change (alloc_domain, map_run, ...): the daemon kills itself (SIGKILL) just before the first
 * transaction holding one commits, when the kernel has made the change and the record does not
 * hold it. Transactions naming a lease (the snapshot written at every start, a lease's first
 * call) are let through. */
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
	const char *change = getenv("IOMMUD_TEST_KILL_BEFORE_RECORD");

	if (change && holds_change(txn, change) && !holds_change(txn, "lease"))
		(void)raise(SIGKILL);
	return __real_record_append(rec, txn);
}
