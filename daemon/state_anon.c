// SPDX-License-Identifier: MIT
/*
 * Anonymous sessions in the service manager's store. They are not in the state record and do
 * not survive the daemon (docs/architecture.md, "Survival"), but where the kernel keeps a
 * context's objects as long as a descriptor of them is open (KH_CAP_ADOPT: iommufd), a client
 * holding a device's fd from OpenDevice keeps that device attached, its DMA live into every
 * mapping of the session, after the daemon is killed. So while an anonymous session has handed
 * a device's fd out, the store keeps the device's kernel descriptor too, named
 * "anon<session>.device<dev_id>" (fdstore_anon_name), and the next daemon, finding it among the
 * strays, blocks the device's DMA before it closes it (fdstore_drop_strays).
 *
 * No record is written for them: the name says all the next daemon needs (what to do with the
 * descriptor is the same for every one, and the device's name comes from the kernel, through
 * the descriptor), so no anonymous call ever waits for a record, Map least of all. The session
 * numbers are this daemon's own: the next one gives up every "anon" descriptor before it takes
 * a request, so a number used again cannot be mistaken.
 *
 * Ownership: the state owns its anon_recs; the descriptors stay the session's context's (the
 * store holds copies), and the sessions the registry's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "fdstore.h"
#include "log.h"
#include "state_internal.h"
#include "status.h"

/* An anonymous session that handed a device's fd out, and the devices whose descriptors the
 * store keeps for it. */
struct anon_rec {
	LIST_ENTRY(anon_rec) link;
	struct session *s;
	uint32_t id;
	uint32_t *devs;
	size_t n_devs;
};

static struct anon_rec *anon_find(const struct state *st, const struct session *s)
{
	struct anon_rec *a;

	LIST_FOREACH (a, &st->anons, link)
		if (a->s == s)
			return a;
	return NULL;
}

static struct anon_rec *anon_add(struct state *st, struct session *s)
{
	struct anon_rec *a = calloc(1, sizeof(*a));

	if (!a)
		return NULL;
	a->s = s;
	a->id = ++st->last_anon_id;
	LIST_INSERT_HEAD(&st->anons, a, link);
	return a;
}

/* Hands the store the descriptor of the session's device dev_id. */
static int anon_store(struct state *st, struct anon_rec *a, uint32_t dev_id, const char *device)
{
	char name[FDSTORE_ANON_NAME];
	int fd = kh_device_kernel_fd(session_ctx(a->s), dev_id), rc;
	uint32_t *grown;

	if (fd < 0)
		return fail_kh(fd, "cannot find the device's kernel descriptor");
	if (!store_has_room(st, 1))
		return fail(-ENOSPC,
			    "the service manager's descriptor store is full (it takes %zu)",
			    st->store_max);
	if (!(grown = realloc(a->devs, (a->n_devs + 1) * sizeof(*grown))))
		return fail(-ENOMEM, "out of memory");
	a->devs = grown;
	fdstore_anon_name(a->id, dev_id, name);
	rc = fdstore_add(name, fd);
	if (rc < 0)
		return rc;
	a->devs[a->n_devs++] = dev_id;
	log_struct(LOG_INFO, LOG_FIELDS({"IOMMUD_DEVICE", device}),
		   "device {IOMMUD_DEVICE}'s fd is out in anonymous session %u: its kernel "
		   "descriptor is kept in the service manager's store as '%s', so that after a "
		   "kill the next daemon blocks the device's DMA",
		   a->id, name);
	return 0;
}

/* Without the store's copy, a kill would leave the device attached with its DMA live under
 * the client's fd, out of any daemon's reach: no fd is handed out then. */
static int refuse(int rc, const char *device)
{
	char why[STATUS_MESSAGE_MAX + 1];

	(void)snprintf(why, sizeof(why), "%s", failure_message());
	return fail(rc,
		    "device %s's descriptor could not be kept in the service manager's store "
		    "(%s), and without it a restart of the daemon could not block the DMA of a "
		    "fd handed out, so OpenDevice is refused; try again once other sessions "
		    "have ended, and an administrator can raise FileDescriptorStoreMax= of "
		    "iommud.service",
		    device, why);
}

int anon_record_call(struct state *st, const struct call *call)
{
	const char *device;
	struct session *s;
	struct anon_rec *a;
	uint32_t dev_id;
	int rc;

	if (!st || call->req->method_case != IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE ||
	    !st->adopt || !call->client || !(s = call->client->session))
		return 0;
	device = call->req->open_device->device;
	rc = session_device(s, device, false, &dev_id);
	if (rc < 0)
		return rc;
	a = anon_find(st, s);
	if (a && ids_have(a->devs, a->n_devs, dev_id))
		return 0;
	if (!a && !(a = anon_add(st, s)))
		rc = fail(-ENOMEM, "out of memory");
	else
		rc = anon_store(st, a, dev_id, device);
	return rc < 0 ? refuse(rc, device) : 0;
}

size_t anon_stored_count(const struct state *st)
{
	const struct anon_rec *a;
	size_t n = 0;

	LIST_FOREACH (a, &st->anons, link)
		n += a->n_devs;
	return n;
}

int anon_each_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		 void *arg)
{
	char name[FDSTORE_ANON_NAME];
	const struct anon_rec *a;
	int rc = 0;

	LIST_FOREACH (a, &st->anons, link)
		for (size_t i = 0; i < a->n_devs && rc == 0; i++) {
			fdstore_anon_name(a->id, a->devs[i], name);
			rc = visit_kernel_fd(name,
					     kh_device_kernel_fd(session_ctx(a->s), a->devs[i]),
					     visit, arg);
		}
	return rc;
}

/* unstore: the store's copies go too, since the session's end detaches its devices itself,
 * and a copy left would keep each bound (another session's OpenDevice: EBUSY). */
static void anon_free(struct anon_rec *a, bool unstore)
{
	char name[FDSTORE_ANON_NAME];

	for (size_t i = 0; i < a->n_devs && unstore; i++) {
		fdstore_anon_name(a->id, a->devs[i], name);
		fdstore_remove_kernel(name);
	}
	LIST_REMOVE(a, link);
	free(a->devs);
	free(a);
}

void anon_end(struct state *st, const struct session *s)
{
	struct anon_rec *a = anon_find(st, s);

	if (a)
		anon_free(a, true);
}

void anon_free_all(struct state *st, bool unstore)
{
	struct anon_rec *a;

	while ((a = LIST_FIRST(&st->anons)))
		anon_free(a, unstore);
}
