// SPDX-License-Identifier: MIT
/* iommud with delegation faked into the emulated backend, so that the survival of delegations
 * is proven on every host: main() is the daemon's own (daemon/main.c), and its backend is
 * opened through this wrapper (linked with --wrap=kh_backend_open), whose delegated fds are
 * memfds standing in for an iommufd and VFIO cdevs (stand_in_fds.h), as in
 * test_delegate_state. The daemon only passes those fds on; everything it records and follows
 * is what it does on iommufd.
 * With $IOMMUD_TEST_REFUSE_DELEGATION_RECORD set, its state record (through the wrapper of
 * record_append, --wrap=record_append) refuses every transaction that records a delegation, or
 * with "end" a delegation's end, as a record that cannot grow would. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <kh/kh.h>

#include "stand_in_fds.h"
#include "state_record.h"
#include "status.h"

int __real_kh_backend_open(const char *name, const char *topology, struct kh_backend **out);
int __wrap_kh_backend_open(const char *name, const char *topology, struct kh_backend **out);
int __real_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn);
int __wrap_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn);

static struct kh_backend_ops with_delegation;

int __wrap_kh_backend_open(const char *name, const char *topology, struct kh_backend **out)
{
	int rc = __real_kh_backend_open(name, topology, out);

	if (rc < 0)
		return rc;
	stand_in_delegation(*out, &with_delegation);
	return 0;
}

int __wrap_record_append(struct record *rec, const Iommud__State__V1__Transaction *txn)
{
	const char *refuse = getenv("IOMMUD_TEST_REFUSE_DELEGATION_RECORD");
	Iommud__State__V1__Entry__ChangeCase refused =
		refuse && strcmp(refuse, "end") == 0
			? IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION_END
			: IOMMUD__STATE__V1__ENTRY__CHANGE_DELEGATION;

	for (size_t i = 0; refuse && i < txn->n_entries; i++)
		if (txn->entries[i]->change_case == refused)
			return fail(-ENOSPC, "the stand-in's record takes no delegation");
	return __real_record_append(rec, txn);
}
