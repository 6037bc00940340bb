// SPDX-License-Identifier: MIT
/* The methods about the daemon and the connection itself: Hello, ReleaseLease and
 * DaemonReexec, and who may act on the daemon as a whole. */
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <names.h>

#include "call.h"
#include "log.h"

/* The daemon's own three, and one name for each capability of kernel-helper. */
#define CAPABILITIES_MAX (3 + KH_CAP_COUNT)

/* The capabilities in caps by kernel-helper's names, for Hello and GetDevice; the one the
 * daemon uses only for itself (where map latency is timed) is left out. */
size_t capability_names(uint32_t caps, char **names)
{
	size_t n = 0;

	caps &= ~KH_CAP_MAP_IN_PROCESS;
	for (unsigned bit = 0; bit < KH_CAP_COUNT; bit++)
		if (caps & (1u << bit))
			names[n++] = (char *)kh_cap_name(bit);
	return n;
}

/* Features a client would want to know before relying on them (docs/protocol.md). */
static void fill_capabilities(struct kh_backend *be, Iommud__V1__HelloReply *reply)
{
	reply->capabilities[0] = "map_batch";
	/* MapBatchRequest.columns: an older daemon ignores them and sees a batch of no entries. */
	reply->capabilities[1] = "map_batch_columns";
	/* MapBatchRequest.picked_iovas_only: an older daemon ignores it and replies with every
	 * entry's IOVA. */
	reply->capabilities[2] = "map_batch_picked_iovas";
	reply->n_capabilities = 3 + capability_names(kh_backend_caps(be), reply->capabilities + 3);
}

/* The schema's value for the backend, found by its name: a backend the schema has no value
 * for is reported as unspecified, with its name in backend_name. */
static Iommud__V1__Backend backend_of(const struct kh_backend *be)
{
	Iommud__V1__Backend backend = IOMMUD__V1__BACKEND__BACKEND_UNSPECIFIED;

	(void)config_backend_value(kh_backend_name(be), &backend);
	return backend;
}

/* The names of the access levels from read up to the caller's. */
static void fill_permissions(enum access access, Iommud__V1__HelloReply *reply)
{
	for (enum access level = ACCESS_READ; level <= access; level++)
		reply->permissions[reply->n_permissions++] = (char *)config_access_name(level);
}

static void fill_hello(const struct call *call, Iommud__V1__HelloReply *reply)
{
	const struct client *c = call->client;

	reply->protocol_version = IOMMUD_PROTOCOL_VERSION;
	reply->daemon_version = IOMMUD_VERSION;
	reply->backend = backend_of(call->d->be);
	reply->backend_name = (char *)kh_backend_name(call->d->be);
	fill_permissions(c->access, reply);
	reply->uid = c->peer.uid;
	reply->gid = c->peer.gid;
	reply->pid = (uint32_t)c->peer.pid;
	reply->cgroup = c->peer.cgroup;
	reply->section = tenant_rule(c->tenant) ? tenant_rule(c->tenant)->section : "";
	reply->lease = c->session ? (char *)session_lease(c->session) : "";
	reply->max_message_bytes = IOMMUD_MAX_MESSAGE;
	reply->max_fds_per_message = IOMMUD_MAX_FDS;
	fill_capabilities(call->d->be, reply);
	reply->nothing_remapped = !(kh_backend_caps(call->d->be) & KH_CAP_DMA_REMAPPING);
	fill_quota(reply->quota, tenant_rule(c->tenant), tenant_usage(c->tenant));
}

int do_hello(struct call *call)
{
	const Iommud__V1__HelloRequest *r = call->req->hello;
	struct client *c = call->client;
	Iommud__V1__HelloReply *reply;
	int rc;

	if (r->lease[0] && c->access < ACCESS_WRITE)
		return fail(-EPERM,
			    "a lease keeps IOMMU resources, so it needs write access, which "
			    "uid %u does not have",
			    (unsigned)c->peer.uid);
	if (r->existing_lease && (!c->tenant || !session_lease_held(c->tenant, r->lease)))
		return fail(-ENOENT,
			    "uid %u holds no lease '%s' to re-open: it was released, or this "
			    "daemon did not take it over at its start (its log says why); say "
			    "hello without existing_lease to start a new one",
			    (unsigned)c->peer.uid, r->lease);
	if (r->lease[0] || c->access >= ACCESS_WRITE) {
		rc = session_join(c->tenant, r->lease, &c->session);
		if (rc < 0)
			return rc;
	}
	reply = REPLY(call, hello_reply);
	if (!reply || !(reply->quota = call_alloc(call, sizeof(*reply->quota))) ||
	    !(reply->permissions = call_alloc(call, (ACCESS_WRITE + 1) * sizeof(char *))) ||
	    !(reply->capabilities = call_alloc(call, CAPABILITIES_MAX * sizeof(char *))))
		return nomem();
	if ((rc = fill_ceilings(call, &reply->ceilings, false)) < 0)
		return rc;
	fill_hello(call, reply);
	log_struct(LOG_DEBUG,
		   LOG_FIELDS({"IOMMUD_CLIENT_NAME", r->client_name}, {"IOMMUD_LEASE", r->lease}),
		   "uid %u says hello as '{IOMMUD_CLIENT_NAME}' (lease '{IOMMUD_LEASE}')",
		   (unsigned)c->peer.uid);
	return 0;
}

int do_release_lease(struct call *call)
{
	if (!REPLY(call, release_lease_reply))
		return nomem();
	return session_release_lease(call->client->session);
}

int need_operator(const struct call *call, const char *what)
{
	const struct client *c = call->client;

	if (c->peer.uid == 0 || (client_is_observer(c) && c->access >= ACCESS_WRITE))
		return 0;
	return fail(-EPERM,
		    "%s is for root and observers allowed to write (a configuration section "
		    "with stats = all and access = write)",
		    what);
}

int do_daemon_reexec(struct call *call)
{
	/* It stops every device's DMA until the leases are adopted: not for read-only roles. */
	int rc = need_operator(call, "re-executing the daemon");

	if (rc < 0)
		return rc;
	if (!call->d->state)
		return fail(-EOPNOTSUPP,
			    "this daemon keeps no state record (no service manager keeps its "
			    "descriptors), so re-executing it would end every lease; run it under "
			    "systemd with FileDescriptorStoreMax=");
	if (!REPLY(call, daemon_reexec_reply))
		return nomem();
	/* The loop takes the signal after this reply is sent, and re-executes as for SIGUSR2. */
	(void)kill(getpid(), SIGUSR2);
	return 0;
}
