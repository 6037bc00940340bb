// SPDX-License-Identifier: MIT
/* The methods about devices: listing and describing them, and moving them between domains. */
#include <errno.h>

#include "call.h"
#include "delegate.h"

int need_device_name(const char *name)
{
	if (!name || !*name)
		return fail(-EINVAL, "the request names no device; give its name as %s shows it",
			    method_name(IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES));
	return 0;
}

static void fill_hw(const struct kh_hw_info *info, Iommud__V1__HwInfo *hw)
{
	iommud__v1__hw_info__init(hw);
	hw->page_sizes = info->page_sizes;
	hw->aperture_start = info->aperture_start;
	hw->aperture_last = info->aperture_last;
	hw->dirty_tracking = info->dirty_tracking;
	hw->nesting = info->nesting;
	hw->pasid_bits = info->pasid_bits;
	hw->hw_type = info->hw_type;
	hw->max_mappings = info->max_mappings;
}

/* The device's reserved regions, as the reply carries them. */
static int fill_reserved(struct call *call, size_t index, Iommud__V1__Device *out)
{
	struct kh_iova_range *ranges;
	int n = kh_device_reserved_regions(call->d->be, index, NULL, 0);

	if (n < 0)
		return fail_kh(n, "cannot read the device's reserved regions");
	ranges = call_alloc(call, (size_t)n * sizeof(*ranges));
	if (!ranges)
		return nomem();
	n = kh_device_reserved_regions(call->d->be, index, ranges, (size_t)n);
	if (n < 0)
		return fail_kh(n, "cannot read the device's reserved regions");
	return call_iova_ranges(call, ranges, (size_t)n, &out->reserved, &out->n_reserved);
}

static int fill_device(struct call *call, size_t index, Iommud__V1__Device *out)
{
	struct client *c = call->client;
	struct kh_device_info info;
	Iommud__V1__HwInfo *hw;
	int rc = kh_device_info(call->d->be, index, &info);

	if (rc < 0)
		return fail_kh(rc, "cannot describe the device");
	iommud__v1__device__init(out);
	rc = fill_reserved(call, index, out);
	if (rc < 0)
		return rc;
	hw = call_alloc(call, sizeof(*hw));
	out->name = call_strdup(call, info.name);
	out->driver = call_strdup(call, info.driver);
	out->capabilities = call_alloc(call, KH_CAP_COUNT * sizeof(char *));
	if (!hw || !out->name || !out->driver || !out->capabilities)
		return nomem();
	out->n_capabilities =
		capability_names(kh_device_caps(call->d->be, index), out->capabilities);
	fill_hw(&info.hw, hw);
	out->hw = hw;
	out->group = info.group;
	out->vendor = info.vendor;
	out->device = info.device;
	out->state = (char *)device_state_name(device_state(call->d, info.name));
	out->allowed = c->access >= ACCESS_WRITE &&
		       config_device_allowed(tenant_rule(c->tenant), info.name);
	if (c->session)
		out->bound = session_device_state(c->session, info.name, &out->domain_id);
	return 0;
}

int do_list_devices(struct call *call)
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

int do_get_device(struct call *call)
{
	const char *name = call->req->get_device->name;
	Iommud__V1__GetDeviceReply *reply;
	int index, rc = need_device_name(name);

	if (rc < 0)
		return rc;
	index = kh_device_lookup(call->d->be, name);
	if (index < 0)
		return fail(-ENOENT, "no device '%s'; %s (iommuctl devices) shows them", name,
			    method_name(IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES));
	reply = REPLY(call, get_device_reply);
	if (!reply || !(reply->device = call_alloc(call, sizeof(*reply->device))))
		return nomem();
	return fill_device(call, (size_t)index, reply->device);
}

/* The session's id of a named device; bound on demand when bind is set. */
static int device_id(struct call *call, const char *name, bool bind, uint32_t *ret_dev_id)
{
	int rc = need_device_name(name);

	if (rc < 0)
		return rc;
	return session_device(call->client->session, name, bind, ret_dev_id);
}

int do_attach_device(struct call *call)
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
			uint32_t *ret_old_domain)
{
	struct kh_ctx *ctx;
	uint32_t dev_id, old_domain, now;
	int rc = device_id(call, device, false, &dev_id);

	if (rc < 0)
		return rc;
	ctx = session_ctx(call->client->session);
	rc = kh_device_domain(ctx, dev_id, &old_domain);
	if (rc < 0)
		return fail_kh(rc, "cannot find the device's domain");
	if (!old_domain)
		return fail(-EINVAL, "device '%s' is not attached to a domain%s", device,
			    replace ? "; attach it instead" : "");
	rc = replace ? kh_replace(ctx, dev_id, new_domain) : kh_detach(ctx, dev_id);
	if (rc < 0) {
		rc = fail_kh(rc, replace ? "cannot replace the domain" : "cannot detach");
		/* The kernel's answer wins: the record must follow the device it left detached. */
		call->left_detached = kh_device_domain(ctx, dev_id, &now) == 0 && !now;
		return rc;
	}
	*ret_old_domain = old_domain;
	return 0;
}

int do_replace_domain(struct call *call)
{
	const Iommud__V1__ReplaceDomainRequest *r = call->req->replace_domain;
	Iommud__V1__ReplaceDomainReply *reply = REPLY(call, replace_domain_reply);

	if (!reply)
		return nomem();
	return leave_domain(call, r->device, true, r->domain_id, &reply->old_domain_id);
}

int do_detach_device(struct call *call)
{
	Iommud__V1__DetachDeviceReply *reply = REPLY(call, detach_device_reply);

	if (!reply)
		return nomem();
	return leave_domain(call, call->req->detach_device->device, false, 0,
			    &reply->old_domain_id);
}

int do_open_device(struct call *call)
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
	return call_send_fd(call, fd);
}
