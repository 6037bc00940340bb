// SPDX-License-Identifier: MIT
/* The methods about domains: allocating, freeing and listing them, and their dirty tracking. */
#include <errno.h>
#include <string.h>

#include <names.h>

#include "call.h"

/* The one place kernel-helper's domain types and the schema's meet: DomainType is
 * kernel-helper's type plus one, 0 being unspecified. */
_Static_assert(IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED == KH_DOMAIN_BLOCKED + 1 &&
		       IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_IDENTITY == KH_DOMAIN_IDENTITY + 1 &&
		       IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING == KH_DOMAIN_PAGING + 1 &&
		       IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED == KH_DOMAIN_NESTED + 1,
	       "DomainType is kernel-helper's type plus one");

static int to_kh_domain_type(Iommud__V1__DomainType type, enum kh_domain_type *ret_type)
{
	char choices[64];

	if (type < IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED ||
	    type > IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED)
		return fail(-EINVAL, "domain type %d is not one of %s", (int)type,
			    iommud_names_list(&iommud_domain_type_names, choices, sizeof(choices)));
	*ret_type = (enum kh_domain_type)(type - 1);
	return 0;
}

static Iommud__V1__DomainType to_proto_domain_type(enum kh_domain_type type)
{
	return (Iommud__V1__DomainType)(type + 1);
}

int domain_alloc_args(const Iommud__V1__AllocDomainRequest *r,
		      struct kh_domain_alloc_args *ret_args)
{
	struct kh_domain_alloc_args args = {
		.flags = (r->dirty_tracking ? KH_DOMAIN_F_DIRTY_TRACKING : 0) |
			 (r->nest_parent ? KH_DOMAIN_F_NEST_PARENT : 0),
		.parent_id = r->parent_id,
		.data_type = (enum kh_nest_data_type)r->nest_data_type,
		.data = r->nest_data.len ? r->nest_data.data : NULL,
		.data_len = r->nest_data.len,
	};
	int rc = to_kh_domain_type(r->type, &args.type);

	if (rc < 0)
		return rc;
	*ret_args = args;
	return 0;
}

int do_alloc_domain(struct call *call)
{
	const Iommud__V1__AllocDomainRequest *r = call->req->alloc_domain;
	struct kh_domain_alloc_args args;
	Iommud__V1__AllocDomainReply *reply;
	int rc = domain_alloc_args(r, &args);

	if (rc < 0 || (rc = need_device_name(r->device)) < 0)
		return rc;
	reply = REPLY(call, alloc_domain_reply);
	if (!reply)
		return nomem();
	return session_alloc_domain(call->client->session, r->device, &args, &reply->domain_id);
}

int do_free_domain(struct call *call)
{
	if (!REPLY(call, free_domain_reply))
		return nomem();
	return session_free_domain(call->client->session, call->req->free_domain->domain_id);
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
	dom->type = to_proto_domain_type(v->type);
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

int do_list_domains(struct call *call)
{
	struct domains_walk w = {.call = call, .reply = REPLY(call, list_domains_reply)};
	int rc;

	if (!w.reply)
		return nomem();
	rc = session_domains(call->client->session, add_domain, &w);
	if (rc < 0)
		return rc;
	return session_bound_devices(call->client->session, add_attached, &w);
}

int do_set_dirty_tracking(struct call *call)
{
	const Iommud__V1__SetDirtyTrackingRequest *r = call->req->set_dirty_tracking;
	int rc;

	if (!REPLY(call, set_dirty_tracking_reply))
		return nomem();
	rc = kh_set_dirty_tracking(session_ctx(call->client->session), r->domain_id, r->enable);
	return rc < 0 ? fail_kh(rc, "cannot switch dirty tracking") : 0;
}
