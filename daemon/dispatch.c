// SPDX-License-Identifier: MIT
#include "dispatch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iommud.pb-c.h>

#include "log.h"
#include "status.h"

#ifndef IOMMUD_VERSION
#define IOMMUD_VERSION "unknown"
#endif

_Static_assert(IOMMUD__V1__PROT__PROT_READ == KH_PROT_READ, "Prot bits are kernel-helper's");
_Static_assert(IOMMUD__V1__PROT__PROT_WRITE == KH_PROT_WRITE, "Prot bits are kernel-helper's");

/* A ListMappings page unless the client asks for fewer; keeps replies far below the limit. */
#define MAPPINGS_PAGE 1024
/* ReadDirty bitmap words per call: 4096 words of 10 bytes at most stay within a packet. */
#define DIRTY_WORDS_MAX 4096
#define MAP_BATCH_MAX	1024

/* One request being handled. Everything allocated for the reply lives in the call's list and
 * is released once the reply is packed. */
struct call {
	struct daemon *d;
	struct client *client;
	const Iommud__V1__Request *req;
	Iommud__V1__Response *resp;
	int *fds; /* received; a handler that keeps one sets its slot to -1 */
	size_t n_fds;
	struct map_file files[IOMMUD_MAX_FDS]; /* the fds' files, checked by check_fd_use */
	int out_fd;			       /* to send with the reply */
	int failed_index;
	void **allocs;
	size_t n_allocs;
	size_t cap_allocs;
};

static void *call_alloc(struct call *call, size_t size)
{
	void *p;

	/* Replies of many parts (a page of mappings) make many allocations: grow by doubling. */
	if (call->n_allocs == call->cap_allocs) {
		size_t cap = call->cap_allocs ? 2 * call->cap_allocs : 16;
		void **grown = realloc(call->allocs, cap * sizeof(*grown));

		if (!grown)
			return NULL;
		call->allocs = grown;
		call->cap_allocs = cap;
	}
	p = calloc(1, size ? size : 1);
	if (p)
		call->allocs[call->n_allocs++] = p;
	return p;
}

static char *call_strdup(struct call *call, const char *text)
{
	char *copy = call_alloc(call, strlen(text) + 1);

	if (copy)
		strcpy(copy, text);
	return copy;
}

/* The reply message of the call's method, registered as the response's result. */
static void *call_reply(struct call *call, const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *reply = call_alloc(call, desc->sizeof_message);

	if (!reply)
		return NULL;
	protobuf_c_message_init(desc, reply);
	call->resp->result_case = (Iommud__V1__Response__ResultCase)call->req->method_case;
	/* Every member of the result union is a message pointer at the same place. */
	call->resp->hello = (Iommud__V1__HelloReply *)reply;
	return reply;
}

#define REPLY(call, name) call_reply(call, &iommud__v1__##name##__descriptor)

static int nomem(void)
{
	return fail(-ENOMEM, "the daemon is out of memory");
}

/* Joins the anonymous session if Hello did not choose one. */
static int need_session(struct call *call)
{
	struct client *c = call->client;

	return c->session ? 0 : session_join(c->tenant, NULL, &c->session);
}

/* Device names in requests must be non-empty; protobuf-c gives "" for an unset string. */
static int need_device_name(const char *name)
{
	if (!name || !*name)
		return fail(-EINVAL, "the request names no device; give its name as ListDevices "
				     "shows it");
	return 0;
}

/* ---- informational methods ------------------------------------------------------------- */

static void fill_quota(Iommud__V1__Quota *q, const struct tenant *t)
{
	const struct access_rule *rule = tenant_rule(t);
	struct usage used = tenant_usage(t);

	iommud__v1__quota__init(q);
	if (rule) {
		q->max_domains = rule->max_domains;
		q->max_mappings = rule->max_mappings;
		q->max_pinned_bytes = rule->max_pinned_bytes;
	}
	q->domains = used.domains;
	q->mappings = used.mappings;
	q->pinned_bytes = used.pinned_bytes;
}

static bool any_device_has(struct kh_backend *be, bool dirty)
{
	struct kh_device_info info;

	for (size_t i = 0; i < kh_device_count(be); i++)
		if (kh_device_info(be, i, &info) == 0 &&
		    (dirty ? info.hw.dirty_tracking : info.hw.nesting))
			return true;
	return false;
}

static int do_hello(struct call *call)
{
	const Iommud__V1__HelloRequest *r = call->req->hello;
	struct client *c = call->client;
	Iommud__V1__HelloReply *reply;
	const char *caps[5];
	size_t n_caps = 0;
	int rc;

	if (c->called)
		return fail(-EALREADY,
			    "Hello must be the first call on a connection, and only one; "
			    "open a new connection to choose another session");
	if (r->lease[0] && c->access < ACCESS_WRITE)
		return fail(-EPERM,
			    "a lease keeps IOMMU resources, so it needs write access, which "
			    "uid %u does not have",
			    (unsigned)c->peer.uid);
	if (r->lease[0] || c->access >= ACCESS_WRITE) {
		rc = session_join(c->tenant, r->lease, &c->session);
		if (rc < 0)
			return rc;
	}
	reply = REPLY(call, hello_reply);
	if (!reply || !(reply->quota = call_alloc(call, sizeof(*reply->quota))) ||
	    !(reply->permissions = call_alloc(call, 2 * sizeof(char *))) ||
	    !(reply->capabilities = call_alloc(call, sizeof(caps))))
		return nomem();
	reply->protocol_version = IOMMUD_PROTOCOL_VERSION;
	reply->daemon_version = IOMMUD_VERSION;
	reply->backend = kh_backend_kind(call->d->be) == KH_BACKEND_IOMMUFD
				 ? IOMMUD__V1__BACKEND__BACKEND_IOMMUFD
				 : IOMMUD__V1__BACKEND__BACKEND_EMULATED;
	reply->backend_name = (char *)kh_backend_name(call->d->be);
	if (c->access >= ACCESS_READ)
		reply->permissions[reply->n_permissions++] = "read";
	if (c->access >= ACCESS_WRITE)
		reply->permissions[reply->n_permissions++] = "write";
	reply->uid = c->peer.uid;
	reply->gid = c->peer.gid;
	reply->pid = (uint32_t)c->peer.pid;
	reply->cgroup = c->peer.cgroup;
	reply->lease = c->session ? (char *)session_lease(c->session) : "";
	reply->max_message_bytes = IOMMUD_MAX_MESSAGE;
	reply->max_fds_per_message = IOMMUD_MAX_FDS;
	caps[n_caps++] = "map_batch";
	if (kh_backend_kind(call->d->be) == KH_BACKEND_IOMMUFD)
		caps[n_caps++] = "open_device";
	if (any_device_has(call->d->be, true))
		caps[n_caps++] = "dirty_tracking";
	if (any_device_has(call->d->be, false))
		caps[n_caps++] = "nesting";
	memcpy(reply->capabilities, caps, n_caps * sizeof(caps[0]));
	reply->n_capabilities = n_caps;
	fill_quota(reply->quota, c->tenant);
	if (r->client_name[0])
		log_debug("uid %u says hello as '%s'", (unsigned)c->peer.uid, r->client_name);
	return 0;
}

static int fill_device(struct call *call, size_t index, Iommud__V1__Device *out)
{
	struct kh_iova_range *ranges;
	struct kh_device_info info;
	Iommud__V1__HwInfo *hw;
	int n, rc = kh_device_info(call->d->be, index, &info);

	if (rc < 0)
		return fail_kh(rc, "cannot describe the device");
	n = kh_device_reserved_regions(call->d->be, index, NULL, 0);
	if (n < 0)
		return fail_kh(n, "cannot read the device's reserved regions");
	ranges = call_alloc(call, (size_t)n * sizeof(*ranges));
	if (!ranges)
		return nomem();
	n = kh_device_reserved_regions(call->d->be, index, ranges, (size_t)n);
	if (n < 0)
		return fail_kh(n, "cannot read the device's reserved regions");
	iommud__v1__device__init(out);
	hw = call_alloc(call, sizeof(*hw));
	out->name = call_strdup(call, info.name);
	out->driver = call_strdup(call, info.driver);
	out->reserved = call_alloc(call, (size_t)n * sizeof(*out->reserved));
	if (!hw || !out->name || !out->driver || !out->reserved)
		return nomem();
	for (int i = 0; i < n; i++) {
		Iommud__V1__IovaRange *r = call_alloc(call, sizeof(*r));

		if (!r)
			return nomem();
		iommud__v1__iova_range__init(r);
		r->start = ranges[i].start;
		r->last = ranges[i].last;
		out->reserved[out->n_reserved++] = r;
	}
	iommud__v1__hw_info__init(hw);
	hw->page_sizes = info.hw.page_sizes;
	hw->aperture_start = info.hw.aperture_start;
	hw->aperture_last = info.hw.aperture_last;
	hw->dirty_tracking = info.hw.dirty_tracking;
	hw->nesting = info.hw.nesting;
	hw->pasid_bits = info.hw.pasid_bits;
	hw->hw_type = info.hw.hw_type;
	out->hw = hw;
	out->group = info.group;
	out->vendor = info.vendor;
	out->device = info.device;
	out->allowed = call->client->access >= ACCESS_WRITE &&
		       config_device_allowed(tenant_rule(call->client->tenant), info.name);
	if (call->client->session)
		out->bound =
			session_device_state(call->client->session, info.name, &out->domain_id);
	return 0;
}

static int do_list_devices(struct call *call)
{
	size_t n = kh_device_count(call->d->be);
	Iommud__V1__ListDevicesReply *reply = REPLY(call, list_devices_reply);
	int rc;

	if (!reply || !(reply->devices = call_alloc(call, n * sizeof(*reply->devices))))
		return nomem();
	for (size_t i = 0; i < n; i++) {
		Iommud__V1__Device *dev = call_alloc(call, sizeof(*dev));

		if (!dev)
			return nomem();
		rc = fill_device(call, i, dev);
		if (rc < 0)
			return rc;
		reply->devices[reply->n_devices++] = dev;
	}
	return 0;
}

static int do_get_device(struct call *call)
{
	const char *name = call->req->get_device->name;
	Iommud__V1__GetDeviceReply *reply;
	int index, rc = need_device_name(name);

	if (rc < 0)
		return rc;
	index = kh_device_lookup(call->d->be, name);
	if (index < 0)
		return fail(-ENOENT, "no device '%s'; ListDevices (iommuctl devices) shows them",
			    name);
	reply = REPLY(call, get_device_reply);
	if (!reply || !(reply->device = call_alloc(call, sizeof(*reply->device))))
		return nomem();
	return fill_device(call, (size_t)index, reply->device);
}

static int do_get_stats(struct call *call)
{
	struct daemon *d = call->d;
	Iommud__V1__GetStatsReply *reply = REPLY(call, get_stats_reply);
	const ProtobufCMessageDescriptor *desc = &iommud__v1__request__descriptor;

	if (!reply || !(reply->quota = call_alloc(call, sizeof(*reply->quota))) ||
	    !(reply->methods = call_alloc(call, desc->n_fields * sizeof(*reply->methods))))
		return nomem();
	reply->uptime_seconds = (uint64_t)(time(NULL) - d->started);
	reply->connections = d->connections;
	reply->tenants = registry_tenant_count(d->reg);
	reply->sessions = registry_session_count(d->reg);
	reply->rejected_packets = d->rejected_packets;
	fill_quota(reply->quota, call->client->tenant);
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		Iommud__V1__MethodStats *m;

		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		m = call_alloc(call, sizeof(*m));
		if (!m)
			return nomem();
		iommud__v1__method_stats__init(m);
		m->method = (char *)f->name;
		m->calls = d->methods[f->id].calls;
		m->errors = d->methods[f->id].errors;
		reply->methods[reply->n_methods++] = m;
	}
	return 0;
}

/* ---- domains and devices --------------------------------------------------------------- */

static int do_alloc_domain(struct call *call)
{
	const Iommud__V1__AllocDomainRequest *r = call->req->alloc_domain;
	struct kh_domain_alloc_args args = {
		.flags = (r->dirty_tracking ? KH_DOMAIN_F_DIRTY_TRACKING : 0) |
			 (r->nest_parent ? KH_DOMAIN_F_NEST_PARENT : 0),
		.parent_id = r->parent_id,
		.data_type = (enum kh_nest_data_type)r->nest_data_type,
		.data = r->nest_data.len ? r->nest_data.data : NULL,
		.data_len = r->nest_data.len,
	};
	Iommud__V1__AllocDomainReply *reply;
	int rc = need_device_name(r->device);

	switch (r->type) {
	case IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED:
		args.type = KH_DOMAIN_BLOCKED;
		break;
	case IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_IDENTITY:
		args.type = KH_DOMAIN_IDENTITY;
		break;
	case IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING:
		args.type = KH_DOMAIN_PAGING;
		break;
	case IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED:
		args.type = KH_DOMAIN_NESTED;
		break;
	default:
		return fail(-EINVAL,
			    "domain type %d is not one of BLOCKED, IDENTITY, PAGING, NESTED",
			    (int)r->type);
	}
	if (rc < 0 || (rc = need_session(call)) < 0)
		return rc;
	reply = REPLY(call, alloc_domain_reply);
	if (!reply)
		return nomem();
	return session_alloc_domain(call->client->session, r->device, &args, &reply->domain_id);
}

static int do_free_domain(struct call *call)
{
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!REPLY(call, free_domain_reply))
		return nomem();
	return session_free_domain(call->client->session, call->req->free_domain->domain_id);
}

/* The session's id of a named device; bound on demand when bind is set. */
static int device_id(struct call *call, const char *name, bool bind, uint32_t *dev_id)
{
	int rc = need_device_name(name);

	if (rc < 0 || (rc = need_session(call)) < 0)
		return rc;
	return session_device(call->client->session, name, bind, dev_id);
}

static int do_attach_device(struct call *call)
{
	const Iommud__V1__AttachDeviceRequest *r = call->req->attach_device;
	uint32_t dev_id;
	int rc = device_id(call, r->device, true, &dev_id);

	if (rc < 0)
		return rc;
	if (!REPLY(call, attach_device_reply))
		return nomem();
	rc = kh_attach(session_ctx(call->client->session), dev_id, r->domain_id);
	return rc < 0 ? fail_kh(rc, "cannot attach") : 0;
}

/* ReplaceDomain and DetachDevice both move an attached device off its domain and report it. */
static int leave_domain(struct call *call, const char *device, bool replace, uint32_t new_domain,
			uint32_t *old_domain)
{
	struct kh_ctx *ctx;
	uint32_t dev_id;
	int rc = device_id(call, device, false, &dev_id);

	if (rc < 0)
		return rc;
	ctx = session_ctx(call->client->session);
	kh_device_domain(ctx, dev_id, old_domain);
	if (!*old_domain)
		return fail(-EINVAL, "device '%s' is not attached to a domain%s", device,
			    replace ? "; attach it instead" : "");
	rc = replace ? kh_replace(ctx, dev_id, new_domain) : kh_detach(ctx, dev_id);
	return rc < 0 ? fail_kh(rc, replace ? "cannot replace the domain" : "cannot detach") : 0;
}

static int do_replace_domain(struct call *call)
{
	const Iommud__V1__ReplaceDomainRequest *r = call->req->replace_domain;
	Iommud__V1__ReplaceDomainReply *reply = REPLY(call, replace_domain_reply);

	if (!reply)
		return nomem();
	return leave_domain(call, r->device, true, r->domain_id, &reply->old_domain_id);
}

static int do_detach_device(struct call *call)
{
	Iommud__V1__DetachDeviceReply *reply = REPLY(call, detach_device_reply);

	if (!reply)
		return nomem();
	return leave_domain(call, call->req->detach_device->device, false, 0,
			    &reply->old_domain_id);
}

static int do_open_device(struct call *call)
{
	uint32_t dev_id;
	int fd, rc = device_id(call, call->req->open_device->device, true, &dev_id);

	if (rc < 0)
		return rc;
	if (!REPLY(call, open_device_reply))
		return nomem();
	fd = kh_device_open_fd(session_ctx(call->client->session), dev_id);
	if (fd < 0)
		return fail_kh(fd, "cannot open the device");
	call->out_fd = fd;
	return 0;
}

struct domains_walk {
	struct call *call;
	Iommud__V1__ListDomainsReply *reply;
	size_t cap;
};

static int add_domain(const struct domain_view *v, void *arg)
{
	struct domains_walk *w = arg;
	Iommud__V1__Domain *dom = call_alloc(w->call, sizeof(*dom));
	Iommud__V1__Domain **grown;

	if (!dom)
		return nomem();
	iommud__v1__domain__init(dom);
	if (!(dom->device = call_strdup(w->call, v->device)))
		return nomem();
	if (w->reply->n_domains == w->cap) {
		w->cap = w->cap ? 2 * w->cap : 8;
		grown = call_alloc(w->call, w->cap * sizeof(*grown));
		if (!grown)
			return nomem();
		if (w->reply->n_domains)
			memcpy(grown, w->reply->domains, w->reply->n_domains * sizeof(*grown));
		w->reply->domains = grown;
	}
	dom->domain_id = v->id;
	dom->type = (Iommud__V1__DomainType)(v->type + 1);
	dom->mappings = v->mappings;
	dom->mapped_bytes = v->mapped_bytes;
	w->reply->domains[w->reply->n_domains++] = dom;
	return 0;
}

static int add_attached(const char *name, uint32_t domain_id, void *arg)
{
	struct domains_walk *w = arg;

	for (size_t i = 0; i < w->reply->n_domains; i++) {
		Iommud__V1__Domain *dom = w->reply->domains[i];
		char **grown;

		if (dom->domain_id != domain_id)
			continue;
		grown = call_alloc(w->call, (dom->n_attached + 1) * sizeof(*grown));
		if (!grown || !(grown[dom->n_attached] = call_strdup(w->call, name)))
			return nomem();
		if (dom->n_attached)
			memcpy(grown, dom->attached, dom->n_attached * sizeof(*grown));
		dom->attached = grown;
		dom->n_attached++;
	}
	return 0;
}

_Static_assert(IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED == KH_DOMAIN_BLOCKED + 1 &&
		       IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED == KH_DOMAIN_NESTED + 1,
	       "DomainType is kernel-helper's type plus one");

static int do_list_domains(struct call *call)
{
	struct domains_walk w = {.call = call, .reply = REPLY(call, list_domains_reply)};
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!w.reply)
		return nomem();
	rc = session_domains(call->client->session, add_domain, &w);
	if (rc < 0)
		return rc;
	return session_bound_devices(call->client->session, add_attached, &w);
}

static int do_release_lease(struct call *call)
{
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!REPLY(call, release_lease_reply))
		return nomem();
	return session_release_lease(call->client->session);
}

/* ---- the IO address space ------------------------------------------------------------- */

/* Every descriptor a request carries must be used by one of its entries (a stray one is a
 * client bug that would otherwise go unnoticed), and each one's file is checked once here,
 * however many entries map it. */
static int check_fd_use(struct call *call, Iommud__V1__MapEntry *const *entries, size_t n)
{
	int first_user[IOMMUD_MAX_FDS];
	int rc;

	for (size_t i = 0; i < call->n_fds; i++)
		first_user[i] = -1;
	for (size_t i = 0; i < n; i++) {
		if (!entries[i]) {
			call->failed_index = (int)i;
			return fail(-EINVAL, "map entry %zu is empty", i);
		}
		if (entries[i]->fd_index >= call->n_fds) {
			call->failed_index = (int)i;
			return fail(
				-EBADF,
				"map entry %zu names descriptor %u, but the request carries %zu; "
				"send the memory's fd with the request (SCM_RIGHTS)",
				i, entries[i]->fd_index, call->n_fds);
		}
		if (first_user[entries[i]->fd_index] < 0)
			first_user[entries[i]->fd_index] = (int)i;
	}
	for (size_t i = 0; i < call->n_fds; i++) {
		if (first_user[i] < 0)
			return fail(-EINVAL,
				    "descriptor %zu sent with the request is not used by any "
				    "map entry; send only the fds the entries name",
				    i);
		rc = session_check_file(call->fds[i], &call->files[i]);
		if (rc < 0) {
			call->failed_index = first_user[i];
			return rc;
		}
	}
	return 0;
}

static int map_one(struct call *call, const Iommud__V1__MapEntry *r, uint64_t *iova)
{
	struct map_entry e = {
		.domain_id = r->domain_id,
		.file = &call->files[r->fd_index],
		.offset = r->offset,
		.length = r->length,
		.prot = r->prot,
		.fixed_iova = r->fixed_iova,
		.iova = r->iova,
		.alignment = r->alignment,
	};
	int rc = session_map(call->client->session, &e);

	*iova = e.iova;
	return rc;
}

static int do_map(struct call *call)
{
	Iommud__V1__MapEntry *entry = call->req->map->entry;
	Iommud__V1__MapReply *reply;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!entry)
		return fail(-EINVAL, "Map needs an entry saying what to map");
	rc = check_fd_use(call, &entry, 1);
	/* A Map has one entry: the status names no index. */
	call->failed_index = -1;
	if (rc < 0)
		return rc;
	reply = REPLY(call, map_reply);
	if (!reply)
		return nomem();
	return map_one(call, entry, &reply->iova);
}

static int do_map_batch(struct call *call)
{
	const Iommud__V1__MapBatchRequest *r = call->req->map_batch;
	Iommud__V1__MapBatchReply *reply;
	size_t done;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!r->n_entries || r->n_entries > MAP_BATCH_MAX)
		return fail(-EINVAL, "MapBatch takes 1 to %d entries, not %zu; split the batch",
			    MAP_BATCH_MAX, r->n_entries);
	if ((rc = check_fd_use(call, r->entries, r->n_entries)) < 0)
		return rc;
	reply = REPLY(call, map_batch_reply);
	if (!reply || !(reply->iovas = call_alloc(call, r->n_entries * sizeof(uint64_t))))
		return nomem();
	for (done = 0; done < r->n_entries; done++) {
		rc = map_one(call, r->entries[done], &reply->iovas[done]);
		if (rc < 0)
			break;
	}
	if (rc == 0) {
		reply->n_iovas = r->n_entries;
		return 0;
	}
	/* All or nothing: take back what this batch mapped, keeping the failure's message. */
	{
		char message[1024];
		uint64_t bytes;
		uint32_t count;

		snprintf(message, sizeof(message), "map entry %zu: %s", done, failure_message());
		call->failed_index = (int)done;
		while (done--)
			session_unmap(call->client->session, r->entries[done]->domain_id,
				      reply->iovas[done], r->entries[done]->length, &bytes, &count);
		fail(rc, "%s", message);
	}
	return rc;
}

static int do_unmap(struct call *call)
{
	const Iommud__V1__UnmapRequest *r = call->req->unmap;
	Iommud__V1__UnmapReply *reply;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!r->length)
		return fail(-EINVAL, "Unmap needs a length; UnmapAll removes everything");
	reply = REPLY(call, unmap_reply);
	if (!reply)
		return nomem();
	return session_unmap(call->client->session, r->domain_id, r->iova, r->length,
			     &reply->unmapped_bytes, &reply->unmapped_count);
}

static int do_unmap_all(struct call *call)
{
	Iommud__V1__UnmapAllReply *reply;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	reply = REPLY(call, unmap_all_reply);
	if (!reply)
		return nomem();
	return session_unmap(call->client->session, call->req->unmap_all->domain_id, 0, UINT64_MAX,
			     &reply->unmapped_bytes, &reply->unmapped_count);
}

static int do_list_mappings(struct call *call)
{
	const Iommud__V1__ListMappingsRequest *r = call->req->list_mappings;
	size_t max = r->max && r->max < MAPPINGS_PAGE ? r->max : MAPPINGS_PAGE;
	Iommud__V1__ListMappingsReply *reply;
	struct mapping_view *views;
	bool more;
	int n, rc = need_session(call);

	if (rc < 0)
		return rc;
	reply = REPLY(call, list_mappings_reply);
	views = call_alloc(call, max * sizeof(*views));
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

static int do_get_iova_ranges(struct call *call)
{
	uint32_t domain_id = call->req->get_iova_ranges->domain_id;
	Iommud__V1__GetIovaRangesReply *reply;
	struct kh_iova_range *ranges;
	int n, rc = need_session(call);

	if (rc < 0)
		return rc;
	n = kh_iova_ranges(session_ctx(call->client->session), domain_id, NULL, 0);
	if (n < 0)
		return fail_kh(n, "cannot read the IOVA ranges");
	reply = REPLY(call, get_iova_ranges_reply);
	ranges = call_alloc(call, (size_t)n * sizeof(*ranges));
	if (!reply || !ranges || !(reply->ranges = call_alloc(call, (size_t)n * sizeof(void *))))
		return nomem();
	n = kh_iova_ranges(session_ctx(call->client->session), domain_id, ranges, (size_t)n);
	if (n < 0)
		return fail_kh(n, "cannot read the IOVA ranges");
	for (int i = 0; i < n; i++) {
		Iommud__V1__IovaRange *out = call_alloc(call, sizeof(*out));

		if (!out)
			return nomem();
		iommud__v1__iova_range__init(out);
		out->start = ranges[i].start;
		out->last = ranges[i].last;
		reply->ranges[reply->n_ranges++] = out;
	}
	return 0;
}

static int do_set_dirty_tracking(struct call *call)
{
	const Iommud__V1__SetDirtyTrackingRequest *r = call->req->set_dirty_tracking;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (!REPLY(call, set_dirty_tracking_reply))
		return nomem();
	rc = kh_set_dirty_tracking(session_ctx(call->client->session), r->domain_id, r->enable);
	return rc < 0 ? fail_kh(rc, "cannot switch dirty tracking") : 0;
}

static int do_read_dirty(struct call *call)
{
	const Iommud__V1__ReadDirtyRequest *r = call->req->read_dirty;
	Iommud__V1__ReadDirtyReply *reply;
	uint64_t pages, words;
	int rc = need_session(call);

	if (rc < 0)
		return rc;
	if (r->page_size < 4096 || (r->page_size & (r->page_size - 1)) || !r->length ||
	    r->length % r->page_size)
		return fail(-EINVAL, "page_size must be a power of two of at least 4096 and length "
				     "a non-zero multiple of it");
	pages = r->length / r->page_size;
	words = (pages + 63) / 64;
	if (words > DIRTY_WORDS_MAX)
		return fail(-ERANGE,
			    "ReadDirty covers at most %d pages per call, not %llu; read "
			    "the range in parts",
			    DIRTY_WORDS_MAX * 64, (unsigned long long)pages);
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

/* ---- the method table ----------------------------------------------------------------- */

struct method {
	const char *name;
	bool mutates;
	enum access needs;
	unsigned max_fds;
	int (*handle)(struct call *call);
};

#define METHOD(number, method_name, mutating, access, fds, handler)                                \
	[IOMMUD__V1__REQUEST__METHOD_##number] = {method_name, mutating, access, fds, handler}

static const struct method methods[IOMMUD_METHOD_SLOTS] = {
	METHOD(HELLO, "Hello", false, ACCESS_NONE, 0, do_hello),
	METHOD(LIST_DEVICES, "ListDevices", false, ACCESS_READ, 0, do_list_devices),
	METHOD(GET_DEVICE, "GetDevice", false, ACCESS_READ, 0, do_get_device),
	METHOD(ALLOC_DOMAIN, "AllocDomain", true, ACCESS_WRITE, 0, do_alloc_domain),
	METHOD(FREE_DOMAIN, "FreeDomain", true, ACCESS_WRITE, 0, do_free_domain),
	METHOD(ATTACH_DEVICE, "AttachDevice", true, ACCESS_WRITE, 0, do_attach_device),
	METHOD(REPLACE_DOMAIN, "ReplaceDomain", true, ACCESS_WRITE, 0, do_replace_domain),
	METHOD(DETACH_DEVICE, "DetachDevice", true, ACCESS_WRITE, 0, do_detach_device),
	METHOD(MAP, "Map", true, ACCESS_WRITE, 1, do_map),
	METHOD(MAP_BATCH, "MapBatch", true, ACCESS_WRITE, IOMMUD_MAX_FDS, do_map_batch),
	METHOD(UNMAP, "Unmap", true, ACCESS_WRITE, 0, do_unmap),
	METHOD(UNMAP_ALL, "UnmapAll", true, ACCESS_WRITE, 0, do_unmap_all),
	METHOD(LIST_MAPPINGS, "ListMappings", false, ACCESS_READ, 0, do_list_mappings),
	METHOD(GET_IOVA_RANGES, "GetIovaRanges", false, ACCESS_READ, 0, do_get_iova_ranges),
	METHOD(SET_DIRTY_TRACKING, "SetDirtyTracking", true, ACCESS_WRITE, 0,
	       do_set_dirty_tracking),
	/* Reading clears the bits unless asked not to, so it changes state. */
	METHOD(READ_DIRTY, "ReadDirty", true, ACCESS_WRITE, 0, do_read_dirty),
	/* A device fd lets its holder drive DMA, so it is a write. */
	METHOD(OPEN_DEVICE, "OpenDevice", true, ACCESS_WRITE, 0, do_open_device),
	METHOD(GET_STATS, "GetStats", false, ACCESS_READ, 0, do_get_stats),
	METHOD(LIST_DOMAINS, "ListDomains", false, ACCESS_READ, 0, do_list_domains),
	METHOD(RELEASE_LEASE, "ReleaseLease", true, ACCESS_WRITE, 0, do_release_lease),
};

int dispatch_self_check(void)
{
	const ProtobufCMessageDescriptor *req = &iommud__v1__request__descriptor;
	const ProtobufCMessageDescriptor *resp = &iommud__v1__response__descriptor;
	unsigned schema_methods = 0, table_methods = 0;
	int rc = 0;

	for (unsigned i = 0; i < req->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &req->fields[i];
		const ProtobufCFieldDescriptor *reply;

		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		schema_methods++;
		reply = protobuf_c_message_descriptor_get_field(resp, f->id);
		if (f->id >= IOMMUD_METHOD_SLOTS || !methods[f->id].handle) {
			log_err("method %s (%u) of the schema has no handler", f->name, f->id);
			rc = -EINVAL;
		} else if (methods[f->id].mutates && methods[f->id].needs != ACCESS_WRITE) {
			log_err("method %s mutates but needs only read access", f->name);
			rc = -EINVAL;
		}
		if (!reply || !(reply->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) {
			log_err("method %s (%u) has no reply field of the same number", f->name,
				f->id);
			rc = -EINVAL;
		}
	}
	for (unsigned i = 0; i < IOMMUD_METHOD_SLOTS; i++)
		table_methods += methods[i].handle != NULL;
	if (table_methods != schema_methods) {
		log_err("%u handlers for %u methods of the schema", table_methods, schema_methods);
		rc = -EINVAL;
	}
	return rc;
}

/* ---- clients and packets --------------------------------------------------------------- */

int client_init(struct daemon *d, struct client *c, const struct peer *peer)
{
	*c = (struct client){.peer = *peer};
	return tenant_get(d->reg, peer, &c->tenant, &c->access);
}

void client_fini(struct client *c)
{
	if (c->session)
		session_leave(c->session);
	if (c->tenant)
		tenant_put(c->tenant);
	*c = (struct client){0};
}

static int check_request(struct call *call, const struct method *m)
{
	struct client *c = call->client;

	/* Hello needs no access, so a refused peer can see who the daemon thinks it is. */
	if (c->access == ACCESS_NONE && m->needs > ACCESS_NONE)
		return fail(-EPERM,
			    "uid %u may not use iommud; an administrator can grant access "
			    "with a [user NAME] or [group NAME] section in the daemon's "
			    "configuration",
			    (unsigned)c->peer.uid);
	if (!m->handle)
		return fail(-EOPNOTSUPP,
			    "this daemon does not know method %d; it speaks protocol "
			    "version %d (Hello says its version)",
			    (int)call->req->method_case, IOMMUD_PROTOCOL_VERSION);
	if (c->access < m->needs)
		return fail(-EPERM,
			    "%s changes state, which uid %u may not do (read-only access); "
			    "an administrator can grant access = write in the daemon's "
			    "configuration",
			    m->name, (unsigned)c->peer.uid);
	if (call->n_fds > m->max_fds)
		return fail(-EINVAL, "%s takes %s%u file descriptors, but %zu came with it",
			    m->name, m->max_fds ? "at most " : "", m->max_fds, call->n_fds);
	if (call->req->method_case == IOMMUD__V1__REQUEST__METHOD_MAP && call->n_fds != 1)
		return fail(-EINVAL,
			    "Map takes exactly one file descriptor (the memory), but %zu "
			    "came with it; send the fd as SCM_RIGHTS",
			    call->n_fds);
	return 0;
}

static size_t pack_response(Iommud__V1__Response *resp, int rc, int failed_index, uint8_t *out)
{
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;

	status.code = code_for_errno(rc);
	status.errno_value = -rc;
	status.failed_index = failed_index;
	status.message = rc ? (char *)failure_message() : "";
	resp->status = &status;
	if (rc) {
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
	}
	/* Replies are bounded by construction (pages, limits on bitmaps and batches); a reply
	 * that still does not fit is the daemon's bug and goes out as an error. */
	if (iommud__v1__response__get_packed_size(resp) > IOMMUD_MAX_MESSAGE) {
		status.code = IOMMUD__V1__CODE__CODE_INTERNAL;
		status.errno_value = EMSGSIZE;
		status.message = "the reply would exceed the message size limit; ask for less";
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
		log_err("reply to request %llu too large for a packet",
			(unsigned long long)resp->id);
	}
	return iommud__v1__response__pack(resp, out);
}

static size_t reject_packet(struct daemon *d, int rc, uint8_t *out)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;

	d->rejected_packets++;
	log_debug("rejected a packet: %s", failure_message());
	return pack_response(&resp, rc, -1, out);
}

size_t dispatch_packet(struct daemon *d, struct client *c, const uint8_t *packet, size_t len,
		       enum packet_defect defect, int *fds, size_t n_fds, uint8_t *out, int *out_fd)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	struct call call = {.d = d,
			    .client = c,
			    .resp = &resp,
			    .fds = fds,
			    .n_fds = n_fds,
			    .out_fd = -1,
			    .failed_index = -1};
	Iommud__V1__Request *req = NULL;
	const struct method *m;
	size_t out_len;
	int rc;

	*out_fd = -1;
	if (defect == PACKET_TRUNCATED)
		rc = fail(-EMSGSIZE,
			  "the packet exceeds the %d-byte message limit and was dropped; "
			  "split the request (MapBatch) or ask for less",
			  IOMMUD_MAX_MESSAGE);
	else if (defect == PACKET_FDS_TRUNCATED)
		rc = fail(-EINVAL,
			  "the packet carried more than %d file descriptors and was dropped",
			  IOMMUD_MAX_FDS);
	else if (!(req = iommud__v1__request__unpack(NULL, len, packet)))
		rc = fail(-EINVAL, "the packet is not a valid iommud.v1.Request message; check the "
				   "client's framing (one message per packet, no length prefix)");
	else
		rc = 0;
	if (rc < 0) {
		out_len = reject_packet(d, rc, out);
		goto done;
	}
	call.req = req;
	resp.id = req->id;
	m = (unsigned)req->method_case < IOMMUD_METHOD_SLOTS ? &methods[req->method_case]
							     : &methods[0];
	rc = check_request(&call, m);
	if (rc == 0) {
		rc = m->handle(&call);
		/* A failed Hello may be retried; anything else fixes the session. */
		if (rc == 0 || req->method_case != IOMMUD__V1__REQUEST__METHOD_HELLO)
			c->called = true;
	}
	if (m->handle) {
		d->methods[req->method_case].calls++;
		d->methods[req->method_case].errors += rc < 0;
	}
	if (rc < 0 && m->handle)
		log_debug("%s from uid %u failed: %s", m->name, (unsigned)c->peer.uid,
			  failure_message());
	out_len = pack_response(&resp, rc, call.failed_index, out);
	if (rc == 0) {
		*out_fd = call.out_fd;
		call.out_fd = -1;
	}
done:
	if (call.out_fd >= 0)
		close(call.out_fd);
	for (size_t i = 0; i < n_fds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	for (size_t i = 0; i < call.n_allocs; i++)
		free(call.allocs[i]);
	free(call.allocs);
	if (req)
		iommud__v1__request__free_unpacked(req, NULL);
	return out_len;
}
