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
 * The client's device fd keeps the session's kernel context alive too, with every page its
 * mappings pinned, charged to the dead daemon and to no quota. So the store keeps the context's
 * descriptor as well, named "anon<session>.iommu.ids<N>" (fdstore_anon_ctx_name), and the next
 * daemon, once the devices are blocked, empties every IOAS among the kernel ids 1 to N and
 * closes it. N bounds the IOAS ids of the session's domains (kh_kernel_ids) rather than listing
 * them: iommufd gives each object the lowest id free in its context, so the ids stay small and
 * N changes rarely, and IOMMU_IOAS_UNMAP of an id that is no IOAS is refused (ENOENT) with
 * nothing touched, so trying each id up to N is safe. When an AllocDomain takes an id above N,
 * the descriptor is stored again under the new bound, the old name removed first (the manager
 * keeps one copy of a file, whatever name comes second): a kill between the two leaves the
 * context unstored, so its pages stay pinned until the client closes its device, as they were
 * before the context was kept; its devices are blocked all the same.
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
	bool ctx_stored;
	uint32_t ioas_bound; /* the N of the context's name, while ctx_stored */
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

/* Room in the store for need more of an anonymous session's descriptors; what names the
 * call that needs them. */
static int anon_room(const struct state *st, size_t need, const char *what)
{
	if (store_has_room(st, need))
		return 0;
	return fail(-ENOSPC,
		    "%s needs %zu more descriptor(s) kept in the service manager's descriptor "
		    "store, so that a restart of the daemon can block the DMA of a device fd "
		    "handed out; the store holds %zu of the %zu it takes (one kept free to "
		    "rewrite the state record); end an anonymous session that opened a device "
		    "(close its connection) or release a lease; an administrator can raise "
		    "FileDescriptorStoreMax= of iommud.service",
		    what, need, stored_count(st), st->store_max);
}

/* The manager refusing a copy: fdstore_add says how; this says what it costs. */
static int store_copy(const char *name, int fd)
{
	char why[STATUS_MESSAGE_MAX + 1];
	int rc = fdstore_add(name, fd);

	if (rc == 0)
		return 0;
	(void)snprintf(why, sizeof(why), "%s", failure_message());
	return fail(rc,
		    "%s; without that copy a restart of the daemon could not block the DMA of "
		    "the device fd handed out, nor release what it pins; try again, and if it "
		    "keeps failing, an administrator should check the service manager's log",
		    why);
}

/* Hands the store the descriptor of the session's device dev_id. */
static int anon_store(struct state *st, struct anon_rec *a, uint32_t dev_id, const char *device)
{
	char name[FDSTORE_ANON_NAME];
	int fd = kh_device_kernel_fd(session_ctx(a->s), dev_id), rc;
	uint32_t *grown;

	if (fd < 0)
		return fail_kh(fd, "cannot find the device's kernel descriptor");
	if ((rc = anon_room(st, 1, "OpenDevice")) < 0)
		return rc;
	if (!(grown = realloc(a->devs, (a->n_devs + 1) * sizeof(*grown))))
		return fail(-ENOMEM, "out of memory");
	a->devs = grown;
	fdstore_anon_name(a->id, dev_id, name);
	rc = store_copy(name, fd);
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

static int raise_bound(const struct domain_view *view, void *arg)
{
	struct anon_rec *a = arg;
	uint32_t ids[KH_KERNEL_IDS];
	int rc = kh_kernel_ids(session_ctx(a->s), view->id, ids);

	if (rc < 0)
		return fail_kh(rc, "cannot find a domain's kernel ids");
	/* The first of a domain's kernel ids is its IOAS (none, 0, for a nested one). */
	if (ids[0] > a->ioas_bound)
		a->ioas_bound = ids[0];
	return 0;
}

/* Keeps the session's context in the store under a bound that covers the IOAS of each of its
 * domains; stores it again when the bound has to grow. */
static int anon_store_ctx(struct state *st, struct anon_rec *a)
{
	char name[FDSTORE_ANON_NAME];
	int fd = kh_ctx_kernel_fd(session_ctx(a->s)), rc;
	uint32_t stored = a->ioas_bound;

	if (fd < 0)
		return fail_kh(fd, "cannot find the session's kernel context descriptor");
	rc = session_domains(a->s, raise_bound, a);
	if (rc < 0)
		a->ioas_bound = stored;
	if (rc < 0 || (a->ctx_stored && a->ioas_bound == stored))
		return rc;
	if (!a->ctx_stored && (rc = anon_room(st, 1, "keeping the session's kernel context")) < 0)
		return rc;
	if (a->ctx_stored) {
		fdstore_anon_ctx_name(a->id, stored, name);
		fdstore_remove(name);
		a->ctx_stored = false;
	}
	fdstore_anon_ctx_name(a->id, a->ioas_bound, name);
	rc = store_copy(name, fd);
	a->ctx_stored = rc == 0;
	return rc;
}

/* The domain is the session's already: a failure leaves it, said, with only its pages left
 * pinned after a kill until the client closes its device (the next AllocDomain tries again). */
static int anon_domain_allocated(struct state *st, struct anon_rec *a)
{
	if (anon_store_ctx(st, a) < 0)
		log_warning("anonymous session %u: cannot keep its kernel context in the service "
			    "manager's store under a bound that covers its new domain (%s): after "
			    "a kill of the daemon the memory that domain pins stays pinned until "
			    "the client holding the session's device closes it",
			    a->id, failure_message());
	return 0;
}

/* Whether the store keeps what s hands out: only where objects can be taken over and the
 * session's context has a descriptor of its own to empty. vfio-type1's objects are its
 * containers and groups, and the kernel takes no group out of a container while a device of
 * it is open, so no daemon could block a held device there: nothing is kept, as the docs say. */
static bool anon_kept(const struct state *st, struct session *s)
{
	return st && st->adopt && s && kh_ctx_kernel_fd(session_ctx(s)) != -EOPNOTSUPP;
}

/* Room for what an OpenDevice keeps in the store, judged before the handler binds the
 * device: refused after, the call would leave it bound in the session (other sessions' EBUSY)
 * although it failed. The context's descriptor goes with the session's first device. */
int anon_check_call(const struct state *st, const struct call *call)
{
	struct session *s = call->client ? call->client->session : NULL;
	const struct anon_rec *a;
	uint32_t dev_id;

	if (call->req->method_case != IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE || !anon_kept(st, s))
		return 0;
	a = anon_find(st, s);
	if (a && session_device(s, call->req->open_device->device, false, &dev_id) == 0 &&
	    ids_have(a->devs, a->n_devs, dev_id))
		return 0;
	return anon_room(st, 1 + !(a && a->ctx_stored), "OpenDevice");
}

int anon_record_call(struct state *st, const struct call *call)
{
	Iommud__V1__Request__MethodCase method = call->req->method_case;
	const char *device;
	struct session *s;
	struct anon_rec *a;
	uint32_t dev_id;
	int rc;

	s = call->client ? call->client->session : NULL;
	if (!anon_kept(st, s))
		return 0;
	a = anon_find(st, s);
	if (method == IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN && a)
		return anon_domain_allocated(st, a);
	if (method != IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE)
		return 0;
	device = call->req->open_device->device;
	rc = session_device(s, device, false, &dev_id);
	if (rc < 0)
		return rc;
	if (a && ids_have(a->devs, a->n_devs, dev_id))
		return 0;
	/* Without the store's copies a kill would leave the device attached with its DMA live
	 * under the client's fd, out of any daemon's reach: no fd is handed out then. */
	if (!a && !(a = anon_add(st, s)))
		return fail(-ENOMEM, "out of memory");
	rc = anon_store_ctx(st, a);
	return rc < 0 ? rc : anon_store(st, a, dev_id, device);
}

size_t anon_stored_count(const struct state *st)
{
	const struct anon_rec *a;
	size_t n = 0;

	LIST_FOREACH (a, &st->anons, link)
		n += a->n_devs + a->ctx_stored;
	return n;
}

int anon_each_fd(const struct state *st, int (*visit)(const char *name, int fd, void *arg),
		 void *arg)
{
	char name[FDSTORE_ANON_NAME];
	const struct anon_rec *a;
	int rc = 0;

	LIST_FOREACH (a, &st->anons, link) {
		for (size_t i = 0; i < a->n_devs && rc == 0; i++) {
			fdstore_anon_name(a->id, a->devs[i], name);
			rc = visit_kernel_fd(name,
					     kh_device_kernel_fd(session_ctx(a->s), a->devs[i]),
					     visit, arg);
		}
		fdstore_anon_ctx_name(a->id, a->ioas_bound, name);
		if (rc == 0 && a->ctx_stored)
			rc = visit_kernel_fd(name, kh_ctx_kernel_fd(session_ctx(a->s)), visit, arg);
	}
	return rc;
}

/* unstore: the store's copies go too, since a copy left would keep each device bound
 * (another session's OpenDevice: EBUSY). Each device is detached before its copy goes: the
 * session's end would detach it only later (kh_ctx_destroy), and a kill in between would leave
 * it attached under the client's fd with no copy for the next daemon to block. A device not
 * attached (EINVAL) has nothing to block; a refused detach is tried again by the context's
 * end, which is all that is left to do. */
static void anon_free(struct anon_rec *a, bool unstore)
{
	char name[FDSTORE_ANON_NAME];

	for (size_t i = 0; i < a->n_devs && unstore; i++) {
		(void)kh_detach(session_ctx(a->s), a->devs[i]);
		fdstore_anon_name(a->id, a->devs[i], name);
		fdstore_remove_kernel(name);
	}
	fdstore_anon_ctx_name(a->id, a->ioas_bound, name);
	if (a->ctx_stored && unstore)
		fdstore_remove_kernel(name);
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
