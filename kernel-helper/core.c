/* SPDX-License-Identifier: MIT */
/*
 * The core: contexts and their object ids, the rules every backend shares (binding, groups,
 * attach/replace/detach, the IOAS), and the wrappers that turn NULL ops into -EOPNOTSUPP.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kh/kh_ops.h>

#include "alloc.h"
#include "ioas.h"

enum kh_obj_kind { KH_OBJ_DEVICE, KH_OBJ_DOMAIN };

struct kh_obj {
	uint32_t id;
	enum kh_obj_kind kind;
	void *ptr;
};

/* A context's objects. Ids are never reused, so a stale id cannot name a newer object. */
struct kh_objects {
	struct kh_obj *v;
	size_t n, cap;
	uint32_t last_id;
};

/* ---- backends -------------------------------------------------------------------------- */

int kh_backend_add_device(struct kh_backend *be, struct kh_bdev **out)
{
	struct kh_bdev *grown = kh_realloc_array(be->devices, be->n_devices + 1, sizeof(*grown));

	if (!grown)
		return kh_fail(-ENOMEM, "cannot record device %zu", be->n_devices);
	be->devices = grown;
	*out = memset(&grown[be->n_devices++], 0, sizeof(*grown));
	return 0;
}

static void backend_free(struct kh_backend *be)
{
	be->ops->release(be);
	for (size_t i = 0; i < be->n_devices; i++)
		free(be->devices[i].resv);
	free(be->devices);
	free(be);
}

int kh_backend_create(const struct kh_backend_ops *ops, void *priv, struct kh_backend **out)
{
	struct kh_backend *be = kh_zalloc(sizeof(*be));
	int rc;

	if (!be) {
		ops->release(&(struct kh_backend){.ops = ops, .priv = priv});
		return kh_fail(-ENOMEM, "cannot allocate the %s backend", ops->name);
	}
	be->ops = ops;
	be->priv = priv;
	be->caps = ops->caps;
	rc = ops->probe_devices(be);
	if (rc < 0) {
		backend_free(be);
		return rc;
	}
	*out = be;
	return 0;
}

void kh_backend_close(struct kh_backend *be)
{
	if (!be)
		return;
	if (be->n_ctx) {
		/* A context outliving its backend would use freed devices: a caller bug that must
		 * not pass silently. */
		(void)fprintf(stderr, "kh_backend_close: %u contexts are still open\n", be->n_ctx);
		abort();
	}
	backend_free(be);
}

enum kh_backend_kind kh_backend_kind(const struct kh_backend *be)
{
	return be->ops->kind;
}

const char *kh_backend_name(const struct kh_backend *be)
{
	return be->ops->name;
}

static const char *const cap_names[KH_CAP_COUNT] = {
	"map_in_process", "open_device",     "dma_remapping", "replace",
	"dirty_tracking", "nesting",	     "map_file",      "copy",
	"blocked_domain", "identity_domain", "delegate",      "adopt",
};

const char *kh_cap_name(unsigned bit)
{
	return bit < KH_CAP_COUNT ? cap_names[bit] : "unknown";
}

/* What a device's IOMMU takes away from the backend's capabilities. */
static uint32_t device_lacks(const struct kh_hw_info *hw)
{
	return (hw->dirty_tracking ? 0 : KH_CAP_DIRTY_TRACKING) |
	       (hw->nesting ? 0 : KH_CAP_NESTING);
}

uint32_t kh_backend_caps(const struct kh_backend *be)
{
	const uint32_t per_device = KH_CAP_DIRTY_TRACKING | KH_CAP_NESTING;
	uint32_t found = 0;

	for (size_t i = 0; i < be->n_devices; i++)
		found |= per_device & ~device_lacks(&be->devices[i].info.hw);
	return (be->caps & ~per_device) | (be->caps & found);
}

int kh_ctx_kernel_fd(const struct kh_ctx *ctx)
{
	return ctx->be->ops->ctx_kernel_fd ? ctx->be->ops->ctx_kernel_fd(ctx) : -EOPNOTSUPP;
}

size_t kh_device_count(const struct kh_backend *be)
{
	return be->n_devices;
}

/* The device at index, or NULL with the failure recorded. */
static const struct kh_bdev *bdev_at(const struct kh_backend *be, size_t index)
{
	if (index < be->n_devices)
		return &be->devices[index];
	(void)kh_fail(-ENOENT, "there is no device %zu; the backend has %zu", index, be->n_devices);
	return NULL;
}

uint32_t kh_device_caps(const struct kh_backend *be, size_t index)
{
	const struct kh_bdev *bdev = bdev_at(be, index);

	return bdev ? be->caps & ~device_lacks(&bdev->info.hw) : 0;
}

int kh_device_info(const struct kh_backend *be, size_t index, struct kh_device_info *out)
{
	const struct kh_bdev *bdev = bdev_at(be, index);

	if (!bdev)
		return -ENOENT;
	*out = bdev->info;
	return 0;
}

int kh_device_lookup(const struct kh_backend *be, const char *name)
{
	for (size_t i = 0; i < be->n_devices; i++)
		if (strcmp(be->devices[i].info.name, name) == 0)
			return (int)i;
	return kh_fail(-ENOENT, "no device is called \"%s\"; list the devices to see their names",
		       name);
}

int kh_device_reserved_regions(const struct kh_backend *be, size_t index, struct kh_iova_range *out,
			       size_t max)
{
	const struct kh_bdev *bdev = bdev_at(be, index);

	if (!bdev)
		return -ENOENT;
	for (size_t i = 0; i < bdev->n_resv && i < max; i++)
		out[i] = bdev->resv[i];
	return (int)bdev->n_resv;
}

/* ---- objects of a context --------------------------------------------------------------- */

/* Makes room for one more object, so that adding it after the backend acted cannot fail. */
static int objects_reserve(struct kh_objects *objs)
{
	struct kh_obj *grown;
	size_t cap;

	if (objs->n < objs->cap)
		return 0;
	if (objs->last_id == UINT32_MAX)
		return kh_fail(-ENOSPC, "this context has used up its object ids; open a new one");
	cap = objs->cap ? objs->cap * 2 : 8;
	grown = kh_realloc_array(objs->v, cap, sizeof(*grown));
	if (!grown)
		return kh_fail(-ENOMEM, "cannot grow the object table");
	objs->v = grown;
	objs->cap = cap;
	return 0;
}

static uint32_t objects_add(struct kh_objects *objs, enum kh_obj_kind kind, void *ptr)
{
	uint32_t id = ++objs->last_id;

	objs->v[objs->n++] = (struct kh_obj){id, kind, ptr};
	return id;
}

uint32_t kh_ctx_last_id(const struct kh_ctx *ctx)
{
	return ctx->objects->last_id;
}

int kh_ctx_skip_ids(struct kh_ctx *ctx, uint32_t last_id)
{
	if (last_id < ctx->objects->last_id)
		return kh_fail(-EINVAL, "ids up to %u were given out already; %u would reuse them",
			       ctx->objects->last_id, last_id);
	ctx->objects->last_id = last_id;
	return 0;
}

static void objects_remove(struct kh_objects *objs, uint32_t id)
{
	for (size_t i = 0; i < objs->n; i++) {
		if (objs->v[i].id == id) {
			memmove(&objs->v[i], &objs->v[i + 1],
				(objs->n - i - 1) * sizeof(objs->v[0]));
			objs->n--;
			return;
		}
	}
}

static void *objects_find(const struct kh_objects *objs, uint32_t id, enum kh_obj_kind kind)
{
	for (size_t i = 0; i < objs->n; i++)
		if (objs->v[i].id == id && objs->v[i].kind == kind)
			return objs->v[i].ptr;
	return NULL;
}

static int find_device(struct kh_ctx *ctx, uint32_t id, struct kh_device **out)
{
	struct kh_device *dev = objects_find(ctx->objects, id, KH_OBJ_DEVICE);

	if (!dev)
		return kh_fail(-ENOENT,
			       "there is no device %u in this context; bind the device first", id);
	*out = dev;
	return 0;
}

int kh_find_domain(struct kh_ctx *ctx, uint32_t id, struct kh_domain **out)
{
	struct kh_domain *dom = objects_find(ctx->objects, id, KH_OBJ_DOMAIN);

	if (!dom)
		return kh_fail(-ENOENT, "there is no domain %u in this context", id);
	*out = dom;
	return 0;
}

static const char *const type_names[] = {
	[KH_DOMAIN_BLOCKED] = "blocked",
	[KH_DOMAIN_IDENTITY] = "identity",
	[KH_DOMAIN_PAGING] = "paging",
	[KH_DOMAIN_NESTED] = "nested",
};

/* Taking a context over (the end of this file). */
static int adopt_bind(struct kh_ctx *ctx, struct kh_device *dev);
static int adopt_domain(struct kh_ctx *ctx, struct kh_device *dev,
			const struct kh_domain_alloc_args *args, struct kh_domain *parent,
			struct kh_domain **out);
static void adoption_free(struct kh_ctx *ctx);

/* The one place a NULL op becomes an error, with what the caller can do about it. */
static int unsupported(const struct kh_domain *dom, const char *what)
{
	static const char *const hints[] = {
		[KH_DOMAIN_BLOCKED] = "a blocked domain only blocks DMA; use a paging domain",
		[KH_DOMAIN_IDENTITY] = "an identity domain does not translate; use a paging domain",
		[KH_DOMAIN_PAGING] = "the IOMMU, the kernel or the backend lacks it, or the "
				     "domain was allocated without the flag that enables it",
		[KH_DOMAIN_NESTED] = "its stage-1 table belongs to its owner; act on the nest "
				     "parent instead",
	};

	return kh_fail(-EOPNOTSUPP, "domain %u (%s) does not support %s: %s", dom->id,
		       type_names[dom->type], what, hints[dom->type]);
}

/* ---- contexts --------------------------------------------------------------------------- */

int kh_ctx_create(struct kh_backend *be, struct kh_ctx **out)
{
	struct kh_ctx *ctx = kh_zalloc(sizeof(*ctx));
	int rc;

	if (!ctx)
		return kh_fail(-ENOMEM, "cannot allocate a context");
	ctx->be = be;
	ctx->objects = kh_zalloc(sizeof(*ctx->objects));
	if (!ctx->objects) {
		free(ctx);
		return kh_fail(-ENOMEM, "cannot allocate a context's object table");
	}
	rc = be->ops->ctx_open(ctx);
	if (rc < 0) {
		free(ctx->objects);
		free(ctx);
		return rc;
	}
	be->n_ctx++;
	*out = ctx;
	return 0;
}

/* The core's books once dev has left its domain. */
static void leave_domain(struct kh_device *dev)
{
	struct kh_domain *dom = dev->domain;

	if (dom->ioas)
		kh_ioas_unreserve(dom->ioas, dev);
	dom->users--;
	dev->domain = NULL;
}

/* Detaches dev if it is attached. A refusal of the backend leaves everything as it was. */
static int device_detach(struct kh_device *dev)
{
	struct kh_domain *dom = dev->domain;
	int rc;

	if (!dom)
		return 0;
	rc = dom->ops->detach_dev && !dev->ctx->adoption ? dom->ops->detach_dev(dom, dev) : 0;
	if (rc == 0)
		leave_domain(dev);
	return rc;
}

/* Detaches dev on the way out of its context: a refused detach is forgotten, and the domain's
 * free cuts the device off (kh_ops.h, detach_dev). */
static void device_forget(struct kh_device *dev)
{
	if (device_detach(dev) < 0)
		leave_domain(dev);
}

static void device_release(struct kh_ctx *ctx, struct kh_device *dev)
{
	device_forget(dev);
	if (ctx->be->ops->unbind)
		ctx->be->ops->unbind(ctx, dev);
	dev->bdev->bound_ctx = NULL;
	objects_remove(ctx->objects, dev->id);
	free(dev);
}

static void domain_release(struct kh_ctx *ctx, struct kh_domain *dom)
{
	struct kh_ioas *ioas = dom->ioas;

	if (dom->parent)
		dom->parent->users--;
	objects_remove(ctx->objects, dom->id);
	/* The backend's free takes the mappings out of the IOMMU; only then may their owners
	 * let the memory go. */
	free(dom->stale);
	dom->ops->free(dom);
	kh_ioas_destroy(ioas, ctx->release_owner, ctx->release_arg);
}

void kh_ctx_destroy(struct kh_ctx *ctx)
{
	struct kh_objects *objs;
	bool freed;

	if (!ctx)
		return;
	objs = ctx->objects;
	for (size_t i = 0; i < objs->n; i++)
		if (objs->v[i].kind == KH_OBJ_DEVICE)
			device_forget(objs->v[i].ptr);
	/* Nested domains hold their parents: free what nothing uses until nothing is left. */
	do {
		freed = false;
		for (size_t i = objs->n; i-- > 0;) {
			struct kh_domain *dom = objs->v[i].ptr;

			if (objs->v[i].kind == KH_OBJ_DOMAIN && dom->users == 0) {
				domain_release(ctx, dom);
				freed = true;
			}
		}
	} while (freed);
	while (objs->n)
		device_release(ctx, objs->v[objs->n - 1].ptr);
	adoption_free(ctx);
	ctx->be->ops->ctx_close(ctx);
	ctx->be->n_ctx--;
	free(objs->v);
	free(objs);
	free(ctx);
}

void kh_ctx_set_owner_release(struct kh_ctx *ctx, kh_owner_release_fn *release, void *arg)
{
	ctx->release_owner = release;
	ctx->release_arg = arg;
}

/* ---- devices ------------------------------------------------------------------------------ */

/* Whether ctx (NULL: a delegation) may take bdev: no device of its IOMMU group is bound in
 * another context or handed out, since the group is isolated as one. */
static int check_group_free(const struct kh_backend *be, const struct kh_bdev *bdev,
			    const struct kh_ctx *ctx)
{
	for (size_t i = 0; i < be->n_devices; i++) {
		const struct kh_bdev *mate = &be->devices[i];

		if (mate->info.group != bdev->info.group)
			continue;
		if (mate->delegated)
			return kh_fail(-EBUSY,
				       "device %s%s%s is handed to another process (a VM manager) "
				       "until that exits or its lease is released",
				       mate->info.name,
				       mate == bdev ? "" : " of the IOMMU group of ",
				       mate == bdev ? "" : bdev->info.name);
		if (mate->bound_ctx && mate->bound_ctx != ctx)
			return kh_fail(-EBUSY,
				       "device %s shares IOMMU group %u with %s, which another "
				       "context holds; a group belongs to one context at a time",
				       bdev->info.name, bdev->info.group, mate->info.name);
	}
	return 0;
}

int kh_device_bind(struct kh_ctx *ctx, const char *name, uint32_t *dev_id)
{
	struct kh_backend *be = ctx->be;
	struct kh_bdev *bdev;
	struct kh_device *dev;
	int index = kh_device_lookup(be, name);
	int rc;

	if (index < 0)
		return index;
	bdev = &be->devices[index];
	if (bdev->bound_ctx)
		return kh_fail(-EBUSY, "device %s is already bound in %s", name,
			       bdev->bound_ctx == ctx ? "this context" : "another context");
	rc = check_group_free(be, bdev, ctx);
	if (rc == 0)
		rc = objects_reserve(ctx->objects);
	if (rc < 0)
		return rc;
	dev = kh_zalloc(sizeof(*dev));
	if (!dev)
		return kh_fail(-ENOMEM, "cannot allocate device %s", name);
	dev->ctx = ctx;
	dev->bdev = bdev;
	rc = ctx->adoption ? adopt_bind(ctx, dev) : be->ops->bind(ctx, dev);
	if (rc < 0) {
		free(dev);
		return rc;
	}
	bdev->bound_ctx = ctx;
	dev->id = objects_add(ctx->objects, KH_OBJ_DEVICE, dev);
	*dev_id = dev->id;
	return 0;
}

int kh_device_unbind(struct kh_ctx *ctx, uint32_t dev_id)
{
	struct kh_device *dev;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc == 0)
		rc = device_detach(dev);
	if (rc == 0)
		device_release(ctx, dev);
	return rc;
}

/* Whether the requested devices may go out together: each exists, is named once and is free,
 * and no group mate is bound or out. All are checked before any is marked, so the functions of
 * one group (which a VMM needs together) are never refused for each other. */
static int delegate_check(const struct kh_backend *be, const size_t *indexes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct kh_bdev *bdev;
		int rc;

		if (indexes[i] >= be->n_devices)
			return kh_fail(-ENOENT, "there is no device %zu", indexes[i]);
		bdev = &be->devices[indexes[i]];
		for (size_t j = 0; j < i; j++)
			if (indexes[j] == indexes[i])
				return kh_fail(-EINVAL, "device %s is named twice",
					       bdev->info.name);
		if (bdev->bound_ctx)
			return kh_fail(-EBUSY, "device %s is bound in a context", bdev->info.name);
		rc = check_group_free(be, bdev, NULL);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int kh_delegate_supported(const struct kh_backend *be)
{
	if (!(be->caps & KH_CAP_DELEGATE) || !be->ops->delegate_ctx_fd)
		return kh_fail(-EOPNOTSUPP,
			       "the %s backend cannot hand devices to another process: that needs "
			       "the kernel's iommufd (/dev/iommu, CONFIG_IOMMUFD) with VFIO device "
			       "cdevs (CONFIG_VFIO_DEVICE_CDEV), which this machine lacks",
			       be->ops->name);
	return 0;
}

int kh_delegate_resume(struct kh_backend *be, const size_t *indexes, size_t n)
{
	int rc = delegate_check(be, indexes, n);

	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		be->devices[indexes[i]].delegated = true;
	return 0;
}

int kh_delegate(struct kh_backend *be, const size_t *indexes, size_t n, int *ret_fds)
{
	int fds[1 + KH_DELEGATE_MAX];
	size_t opened = 0;
	int rc = kh_delegate_supported(be);

	if (rc < 0)
		return rc;
	if (n == 0 || n > KH_DELEGATE_MAX)
		return kh_fail(-EINVAL, "a delegation takes 1 to %d devices, not %zu",
			       KH_DELEGATE_MAX, n);
	rc = kh_delegate_resume(be, indexes, n);
	if (rc < 0)
		return rc;
	rc = be->ops->delegate_ctx_fd(be);
	while (rc >= 0) {
		fds[opened++] = rc;
		if (opened == n + 1)
			break;
		rc = be->ops->delegate_device_fd(&be->devices[indexes[opened - 1]]);
	}
	if (rc < 0) {
		while (opened)
			(void)close(fds[--opened]);
		kh_delegate_end(be, indexes, n);
		return rc;
	}
	memcpy(ret_fds, fds, (n + 1) * sizeof(int));
	return 0;
}

void kh_delegate_end(struct kh_backend *be, const size_t *indexes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (indexes[i] < be->n_devices)
			be->devices[indexes[i]].delegated = false;
}

/* A device of ctx, for a call the backend serves only if it has VFIO devices (has_op). */
static int find_vfio_device(struct kh_ctx *ctx, uint32_t dev_id, bool has_op, const char *what,
			    struct kh_device **out)
{
	struct kh_device *dev;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc < 0)
		return rc;
	if (!has_op)
		return kh_fail(-EOPNOTSUPP, "the %s backend has no VFIO device %s",
			       ctx->be->ops->name, what);
	*out = dev;
	return 0;
}

int kh_device_open_fd(struct kh_ctx *ctx, uint32_t dev_id)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_device *dev;
	int rc = find_vfio_device(ctx, dev_id, ops->device_fd, "fds", &dev);

	return rc < 0 ? rc : ops->device_fd(dev);
}

int kh_device_region(struct kh_ctx *ctx, uint32_t dev_id, uint32_t index, struct kh_region *out)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_device *dev;
	int rc = find_vfio_device(ctx, dev_id, ops->device_region, "regions", &dev);

	return rc < 0 ? rc : ops->device_region(dev, index, out);
}

/* ---- domains ------------------------------------------------------------------------------ */

/* The nest parent a nested domain names, checked to be one. */
static int find_nest_parent(struct kh_ctx *ctx, const struct kh_domain_alloc_args *args,
			    struct kh_domain **out)
{
	struct kh_domain *parent;
	int rc;

	if (!args->data || !args->data_len)
		return kh_fail(-EINVAL, "a nested domain needs its stage-1 description");
	rc = kh_find_domain(ctx, args->parent_id, &parent);
	if (rc < 0)
		return rc;
	if (!(parent->flags & KH_DOMAIN_F_NEST_PARENT))
		return kh_fail(-EINVAL,
			       "domain %u was not allocated as a nest parent; allocate the parent "
			       "with the nest-parent flag",
			       args->parent_id);
	*out = parent;
	return 0;
}

/* Checks the arguments; *parent is the nest parent of a nested domain, NULL for the others. */
static int check_alloc_args(struct kh_ctx *ctx, const struct kh_domain_alloc_args *args,
			    struct kh_domain **parent)
{
	const uint32_t known = KH_DOMAIN_F_DIRTY_TRACKING | KH_DOMAIN_F_NEST_PARENT;

	if ((unsigned)args->type > KH_DOMAIN_NESTED)
		return kh_fail(-EINVAL, "unknown domain type %d", (int)args->type);
	if (args->flags & ~known)
		return kh_fail(-EINVAL, "unknown domain flags 0x%x", args->flags & ~known);
	if (args->flags && args->type != KH_DOMAIN_PAGING)
		return kh_fail(-EINVAL, "flags apply to paging domains only, not %s",
			       type_names[args->type]);
	if (args->type == KH_DOMAIN_NESTED)
		return find_nest_parent(ctx, args, parent);
	if (args->parent_id || args->data)
		return kh_fail(-EINVAL, "only a nested domain takes a parent and stage-1 data");
	*parent = NULL;
	return 0;
}

int kh_domain_alloc(struct kh_ctx *ctx, uint32_t dev_id, const struct kh_domain_alloc_args *args,
		    uint32_t *domain_id)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_device *dev;
	struct kh_domain *parent, *dom;
	int rc;

	rc = find_device(ctx, dev_id, &dev);
	if (rc < 0)
		return rc;
	rc = check_alloc_args(ctx, args, &parent);
	if (rc < 0)
		return rc;
	rc = objects_reserve(ctx->objects);
	if (rc < 0)
		return rc;

	if (ctx->adoption) {
		rc = adopt_domain(ctx, dev, args, parent, &dom);
	} else if (ops->domain_alloc) {
		rc = ops->domain_alloc(dev, args, parent, &dom);
	} else if (args->type == KH_DOMAIN_PAGING) {
		rc = ops->alloc_paging(dev, args->flags, &dom);
		if (rc == 0) {
			dom->ops = ops->default_domain_ops;
			dom->type = KH_DOMAIN_PAGING;
		}
	} else {
		rc = kh_fail(-EOPNOTSUPP, "the %s backend provides paging domains only, not %s",
			     ops->name, type_names[args->type]);
	}
	if (rc < 0)
		return rc;

	dom->ctx = ctx;
	if (dom->ops->map) {
		rc = kh_ioas_create(dom->aperture_start, dom->aperture_last,
				    dom->page_sizes & -dom->page_sizes, &dom->ioas);
		if (rc < 0) {
			dom->ops->free(dom);
			return rc;
		}
	}
	dom->parent = parent;
	if (parent)
		parent->users++;
	dom->id = objects_add(ctx->objects, KH_OBJ_DOMAIN, dom);
	*domain_id = dom->id;
	return 0;
}

int kh_domain_free(struct kh_ctx *ctx, uint32_t domain_id)
{
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc < 0)
		return rc;
	if (dom->users)
		return kh_fail(-EBUSY,
			       "domain %u is in use by %u attached devices or nested domains; "
			       "detach or free them first",
			       domain_id, dom->users);
	domain_release(ctx, dom);
	return 0;
}

int kh_domain_type(struct kh_ctx *ctx, uint32_t domain_id, enum kh_domain_type *type)
{
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc == 0)
		*type = dom->type;
	return rc;
}

static uint64_t table_bytes(struct kh_domain *dom)
{
	return dom->ops->table_bytes ? dom->ops->table_bytes(dom) : 0;
}

int kh_domain_table_bytes(struct kh_ctx *ctx, uint32_t domain_id, uint64_t *ret_bytes)
{
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc == 0)
		*ret_bytes = table_bytes(dom);
	return rc;
}

int kh_domain_caps(struct kh_ctx *ctx, uint32_t domain_id, uint32_t *caps)
{
	const uint32_t of_backend =
		KH_CAP_MAP_IN_PROCESS | KH_CAP_OPEN_DEVICE | KH_CAP_DMA_REMAPPING;
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc < 0)
		return rc;
	*caps = (ctx->be->caps & of_backend) | (dom->ops->replace_dev ? KH_CAP_REPLACE : 0) |
		(dom->ops->map_file ? KH_CAP_MAP_FILE : 0) | (dom->ops->copy ? KH_CAP_COPY : 0) |
		(dom->dirty_ops ? KH_CAP_DIRTY_TRACKING : 0) |
		((dom->flags & KH_DOMAIN_F_NEST_PARENT) ? KH_CAP_NESTING : 0);
	return 0;
}

/* ---- attachment -------------------------------------------------------------------------- */

/* The domain another device of dev's group is attached to in this context, or NULL. */
static struct kh_domain *group_domain(struct kh_ctx *ctx, const struct kh_device *dev)
{
	for (size_t i = 0; i < ctx->objects->n; i++) {
		const struct kh_device *mate = ctx->objects->v[i].ptr;

		if (ctx->objects->v[i].kind == KH_OBJ_DEVICE && mate != dev && mate->domain &&
		    mate->bdev->info.group == dev->bdev->info.group)
			return mate->domain;
	}
	return NULL;
}

/* What an attaching device takes from the domain's IOVA space, as the kernel's iommufd does:
 * its reserved regions, and everything outside its IOMMU's aperture. */
static int reserve_for(struct kh_domain *dom, struct kh_device *dev)
{
	const struct kh_bdev *bdev = dev->bdev;
	const struct kh_hw_info *hw = &bdev->info.hw;
	struct kh_iova_range *ranges;
	size_t n = bdev->n_resv;
	int rc;

	if (!dom->ioas)
		return 0;
	ranges = kh_realloc_array(NULL, n + 2, sizeof(*ranges));
	if (!ranges)
		return kh_fail(-ENOMEM, "cannot list %s's reserved ranges", bdev->info.name);
	if (n)
		memcpy(ranges, bdev->resv, n * sizeof(*ranges));
	if (hw->aperture_start > 0)
		ranges[n++] = (struct kh_iova_range){0, hw->aperture_start - 1};
	if (hw->aperture_last < UINT64_MAX)
		ranges[n++] = (struct kh_iova_range){hw->aperture_last + 1, UINT64_MAX};
	rc = kh_ioas_reserve(dom->ioas, ranges, n, dev);
	free(ranges);
	return rc;
}

/* The two objects an attach or a replace names. */
static int find_device_and_domain(struct kh_ctx *ctx, uint32_t dev_id, uint32_t domain_id,
				  struct kh_device **dev_out, struct kh_domain **dom_out)
{
	struct kh_device *dev;
	struct kh_domain *dom;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc == 0)
		rc = kh_find_domain(ctx, domain_id, &dom);
	if (rc < 0)
		return rc;
	*dev_out = dev;
	*dom_out = dom;
	return 0;
}

int kh_attach(struct kh_ctx *ctx, uint32_t dev_id, uint32_t domain_id)
{
	struct kh_device *dev;
	struct kh_domain *dom, *shared;
	int rc;

	rc = find_device_and_domain(ctx, dev_id, domain_id, &dev, &dom);
	if (rc < 0)
		return rc;
	if (dev->domain)
		return kh_fail(-EBUSY,
			       "device %u is already attached to domain %u; replace instead",
			       dev_id, dev->domain->id);
	shared = group_domain(ctx, dev);
	if (shared && shared != dom)
		return kh_fail(
			-EINVAL,
			"device %u's IOMMU group %u is attached to domain %u; all devices "
			"of a group share one domain, so attach to it or replace the group's",
			dev_id, dev->bdev->info.group, shared->id);
	if (!dom->ops->attach_dev)
		return unsupported(dom, "attaching devices");
	rc = reserve_for(dom, dev);
	if (rc < 0)
		return rc;
	rc = ctx->adoption ? 0 : dom->ops->attach_dev(dom, dev);
	if (rc < 0) {
		if (dom->ioas)
			kh_ioas_unreserve(dom->ioas, dev);
		return rc;
	}
	dev->domain = dom;
	dom->users++;
	return 0;
}

/* The devices that move with dev on a replace: its group's devices attached to old. */
static struct kh_device *group_mate_on(const struct kh_obj *obj, const struct kh_device *dev,
				       const struct kh_domain *old)
{
	struct kh_device *mate = obj->ptr;

	if (obj->kind != KH_OBJ_DEVICE || mate->domain != old ||
	    mate->bdev->info.group != dev->bdev->info.group)
		return NULL;
	return mate;
}

/* A replace into the device's own domain moves nothing in the books but asks the kernel again,
 * whose answer wins: a client holding the device's VFIO descriptor may have detached it (or
 * attached it elsewhere) behind the core's back. Where the kernel will not have the device in
 * its domain, it is left detached, and the books say so. */
static int replace_in_place(struct kh_device *dev)
{
	struct kh_domain *dom = dev->domain;
	char why[KH_ERROR_MAX];
	int rc;

	if (!dom->ops->replace_dev || dev->ctx->adoption)
		return 0;
	rc = dom->ops->replace_dev(dom, dev, dom);
	if (rc == 0)
		return 0;
	(void)snprintf(why, sizeof(why), "%s", kh_last_error());
	device_forget(dev);
	return kh_fail(rc,
		       "%s was not in domain %u, where this context had it (a client may have "
		       "detached it through its VFIO descriptor), and the kernel refused to attach "
		       "it again: %s; it is detached now, its DMA blocked: attach it to a domain",
		       dev->bdev->info.name, dom->id, why);
}

int kh_replace(struct kh_ctx *ctx, uint32_t dev_id, uint32_t domain_id)
{
	struct kh_objects *objs = ctx->objects;
	struct kh_device *dev, *mate;
	struct kh_domain *dom, *old;
	size_t i, reserved = 0;
	int rc;

	rc = find_device_and_domain(ctx, dev_id, domain_id, &dev, &dom);
	if (rc < 0)
		return rc;
	old = dev->domain;
	if (!old)
		return kh_fail(-EINVAL, "device %u is not attached; attach it instead", dev_id);
	if (old == dom)
		return replace_in_place(dev);
	if (!dom->ops->replace_dev)
		return unsupported(dom, "replacing a device's domain");

	/* The whole group moves: its reserved ranges go to the new domain first. */
	for (i = 0; i < objs->n && rc == 0; i++) {
		mate = group_mate_on(&objs->v[i], dev, old);
		if (mate) {
			rc = reserve_for(dom, mate);
			reserved = i + 1;
		}
	}
	if (rc == 0 && !ctx->adoption)
		rc = dom->ops->replace_dev(dom, dev, old);
	if (rc < 0) {
		for (i = 0; i < reserved && dom->ioas; i++) {
			mate = group_mate_on(&objs->v[i], dev, old);
			if (mate)
				kh_ioas_unreserve(dom->ioas, mate);
		}
		return rc;
	}
	for (i = 0; i < objs->n; i++) {
		mate = group_mate_on(&objs->v[i], dev, old);
		if (!mate)
			continue;
		if (old->ioas)
			kh_ioas_unreserve(old->ioas, mate);
		mate->domain = dom;
		old->users--;
		dom->users++;
	}
	return 0;
}

int kh_detach(struct kh_ctx *ctx, uint32_t dev_id)
{
	struct kh_device *dev;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc == 0 && !dev->domain)
		rc = kh_fail(-EINVAL, "device %u is not attached to a domain", dev_id);
	if (rc == 0)
		rc = device_detach(dev);
	return rc;
}

int kh_device_domain(struct kh_ctx *ctx, uint32_t dev_id, uint32_t *domain_id)
{
	struct kh_device *dev;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc == 0)
		*domain_id = dev->domain ? dev->domain->id : 0;
	return rc;
}

/* ---- the IO address space ------------------------------------------------------------------ */

/* What a call needs of a domain beyond being there. */
enum domain_need {
	NEED_IOAS,	   /* an address space: paging domains, the ones with map */
	NEED_IOVA_TO_PHYS, /* the iova_to_phys op */
	NEED_FLUSH,	   /* the flush_iotlb_all op */
	NEED_DIRTY,	   /* dirty ops */
};

static bool domain_has(const struct kh_domain *dom, enum domain_need need)
{
	switch (need) {
	case NEED_IOAS:
		return dom->ioas;
	case NEED_IOVA_TO_PHYS:
		return dom->ops->iova_to_phys;
	case NEED_FLUSH:
		return dom->ops->flush_iotlb_all;
	case NEED_DIRTY:
		return dom->dirty_ops;
	}
	return false;
}

/* The domain called domain_id if it has what the call needs; unsupported() says why not. */
static int find_domain_for(struct kh_ctx *ctx, uint32_t domain_id, enum domain_need need,
			   const char *what, struct kh_domain **out)
{
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc < 0)
		return rc;
	if (!domain_has(dom, need))
		return unsupported(dom, what);
	*out = dom;
	return 0;
}

/* Where copied memory comes from; NULL for a plain map. */
struct map_source {
	struct kh_domain *dom;
	uint64_t iova;
	uint64_t addr;	/* what the source maps at iova: an address or a file offset */
	uint32_t flags; /* the source's KH_MAP_FILE */
};

/* The kernel would pin pages past the end of a file, so a range beyond it is refused here. */
static int check_file_range(const struct kh_map_req *req)
{
	struct stat st;
	uint64_t end;

	if (fstat(req->fd, &st))
		return kh_fail(-errno, "cannot map from fd %d", req->fd);
	if (!S_ISREG(st.st_mode))
		return kh_fail(-EINVAL, "fd %d is not a file (a memfd, shmem or hugetlbfs file)",
			       req->fd);
	if (__builtin_add_overflow(req->addr, req->length, &end) || end > (uint64_t)st.st_size)
		return kh_fail(-EINVAL,
			       "offset 0x%" PRIx64 " + length 0x%" PRIx64 " runs past the end of "
			       "the file (%lld bytes); grow the file or map less",
			       req->addr, req->length, (long long)st.st_size);
	return 0;
}

/* What every mapping of a file needs before the kernel is asked to make it: a backend that maps
 * files (a copy of a file mapping may have brought KH_MAP_FILE into a domain without one), and
 * a range inside the file. */
static int check_file_map(const struct kh_domain *dom, const struct kh_map_req *req)
{
	if (!(req->flags & KH_MAP_FILE))
		return 0;
	if (!dom->ops->map_file)
		return unsupported(dom, "mapping files");
	return check_file_range(req);
}

/* A take-over remakes a lost file mapping from the descriptor its replayed request gave
 * (settle_mapping); outside one, that descriptor is closed right after the request. */
static void keep_fd_while_adopting(const struct kh_domain *dom, struct kh_area *area,
				   const struct kh_map_req *req)
{
	if (dom->ctx->adoption && (req->flags & KH_MAP_FILE))
		kh_ioas_keep_fd(area, req->fd);
}

static int backend_map(struct kh_domain *dom, const struct kh_map_req *req,
		       const struct map_source *src)
{
	/* Taking a context over: the kernel holds the mapping already (kh_ctx_adopt_end). */
	if (dom->ctx->adoption)
		return 0;
	if (src)
		return dom->ops->copy(dom, req->iova, src->dom, src->iova, req->length, req->prot,
				      req->addr);
	if (req->flags & KH_MAP_FILE)
		return dom->ops->map_file(dom, req->iova, req->fd, req->addr, req->length,
					  req->prot);
	return dom->ops->map(dom, req->iova, req->addr, req->length, req->prot);
}

/* One path for every way of creating a mapping: place it by the IOAS rules, have its record
 * ready, let the backend map it, then record it. req changes only on success. */
static int map_into(struct kh_domain *dom, struct kh_map_req *req, const struct map_source *src)
{
	struct kh_map_req placed = *req;
	struct kh_area *area;
	int rc;

	if (src) {
		placed.addr = src->addr;
		placed.flags = (placed.flags & ~KH_MAP_FILE) | src->flags;
	} else if ((rc = check_file_map(dom, &placed)) < 0) {
		return rc;
	}
	rc = kh_ioas_place(dom->ioas, &placed);
	if (rc < 0)
		return rc;
	area = kh_ioas_area_new(dom->ioas, &placed);
	if (!area)
		return -ENOMEM;
	rc = backend_map(dom, &placed, src);
	if (rc < 0) {
		kh_ioas_area_free(dom->ioas, area);
		return rc;
	}
	/* A copy has no descriptor of its own (req->fd is whatever the caller left there), so a
	 * take-over cannot remake it and fails with -ESTALE should the kernel have lost it. */
	if (!src)
		keep_fd_while_adopting(dom, area, &placed);
	kh_ioas_insert(dom->ioas, area);
	*req = placed;
	return 0;
}

/* Maps a part of a mapping made in parts, right after the part before it (KH_MAP_EXTEND). */
static int map_extension(struct kh_domain *dom, struct kh_map_req *req)
{
	struct kh_area *area;
	int rc;

	if (!(req->flags & KH_MAP_FIXED_IOVA))
		return kh_fail(-EINVAL, "KH_MAP_EXTEND needs KH_MAP_FIXED_IOVA");
	rc = check_file_map(dom, req);
	if (rc < 0)
		return rc;
	rc = kh_ioas_place(dom->ioas, req);
	if (rc < 0)
		return rc;
	area = kh_ioas_extendable(dom->ioas, req);
	if (!area)
		return kh_fail(-EINVAL,
			       "IOVA 0x%" PRIx64 " does not continue a mapping of the same owner, "
			       "prot and memory",
			       req->iova);
	rc = backend_map(dom, req, NULL);
	if (rc < 0)
		return rc;
	kh_ioas_extend(dom->ioas, area, req->length);
	/* The newest part's: a caller giving each part its own descriptor may have closed the
	 * first's already. */
	keep_fd_while_adopting(dom, area, req);
	return 0;
}

int kh_map(struct kh_ctx *ctx, uint32_t domain_id, struct kh_map_req *req)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "map", &dom);

	if (rc < 0)
		return rc;
	rc = req->flags & KH_MAP_EXTEND ? map_extension(dom, req) : map_into(dom, req, NULL);
	if (rc == 0)
		req->table_bytes = table_bytes(dom);
	return rc;
}

int kh_place(struct kh_ctx *ctx, uint32_t domain_id, struct kh_map_req *req)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "map", &dom);

	if (rc < 0)
		return rc;
	return kh_ioas_place(dom->ioas, req);
}

int kh_copy(struct kh_ctx *ctx, uint32_t dst_id, struct kh_map_req *req, uint32_t src_id,
	    uint64_t src_iova)
{
	struct map_source src = {.iova = src_iova};
	struct kh_domain *dst;
	int rc;

	rc = find_domain_for(ctx, dst_id, NEED_IOAS, "map", &dst);
	if (rc == 0)
		rc = find_domain_for(ctx, src_id, NEED_IOAS, "being copied from", &src.dom);
	if (rc < 0)
		return rc;
	if (!dst->ops->copy)
		return unsupported(dst, "copying mappings");
	rc = kh_ioas_source(src.dom->ioas, src_iova, req->length, &src.addr, &src.flags);
	if (rc < 0)
		return rc;
	return map_into(dst, req, &src);
}

/* Takes the range out of the IOMMU and makes that visible to devices; nothing while taking a
 * context over, whose kernel did it before. */
static int backend_unmap(struct kh_domain *dom, uint64_t iova, uint64_t length)
{
	int rc = dom->ctx->adoption ? 0 : dom->ops->unmap(dom, iova, length);

	if (rc == 0 && !dom->ctx->adoption && dom->ops->iotlb_sync)
		dom->ops->iotlb_sync(dom, iova, length);
	return rc;
}

/* After a failed unmap of [first, last]: the mappings the kernel removed all the same leave the
 * books too, which follow the kernel. Gives their bytes; the failure's message stays. */
static uint64_t forget_removed(struct kh_domain *dom, uint64_t first, uint64_t last, int rc)
{
	struct kh_ctx *ctx = dom->ctx;
	char why[KH_ERROR_MAX];
	struct kh_mapping m[32];
	uint64_t from = first, bytes = 0;
	int n;

	(void)snprintf(why, sizeof(why), "%s", kh_last_error());
	while ((n = kh_ioas_mappings(dom->ioas, from, m, 32)) > 0 && m[0].iova <= last) {
		for (int i = 0; i < n && m[i].iova <= last; i++) {
			if (dom->ops->holds(dom, &m[i]) != 0)
				continue;
			kh_ioas_remove(dom->ioas, m[i].iova, m[i].iova + m[i].length - 1,
				       ctx->release_owner, ctx->release_arg);
			bytes += m[i].length;
		}
		from = m[n - 1].iova + m[n - 1].length;
		if (from == 0) /* the last mapping ends at the top of the 64-bit space */
			break;
	}
	(void)kh_fail(rc, "%s", why);
	return bytes;
}

/* Takes [first, last], a span of whole mappings of *bytes the books found, out of the IOMMU and
 * then the books, in one call for the whole span, so a failure leaves every mapping in place,
 * save what the kernel removed all the same: then *bytes is theirs. */
static int unmap_span(struct kh_domain *dom, uint64_t first, uint64_t last, uint64_t *bytes)
{
	int rc = backend_unmap(dom, first, last - first + 1);

	if (rc < 0) {
		*bytes = dom->ops->holds ? forget_removed(dom, first, last, rc) : 0;
		return rc;
	}
	kh_ioas_remove(dom->ioas, first, last, dom->ctx->release_owner, dom->ctx->release_arg);
	return 0;
}

int kh_unmap(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
	     uint64_t *unmapped)
{
	struct kh_domain *dom;
	uint64_t first, last, bytes;
	int rc;

	if (unmapped)
		*unmapped = 0;
	rc = find_domain_for(ctx, domain_id, NEED_IOAS, "unmap", &dom);
	if (rc < 0)
		return rc;
	rc = kh_ioas_find_unmap(dom->ioas, iova, length, &first, &last, &bytes);
	if (rc < 0)
		return rc;
	rc = unmap_span(dom, first, last, &bytes);
	if (unmapped)
		*unmapped = bytes;
	return rc;
}

int kh_unmap_run(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t last,
		 kh_unmap_take_fn *take, void *arg, uint64_t *unmapped, size_t *ret_count,
		 bool *ret_more)
{
	struct kh_domain *dom;
	struct kh_ioas_run run;
	int rc;

	*unmapped = 0;
	rc = find_domain_for(ctx, domain_id, NEED_IOAS, "unmap", &dom);
	if (rc < 0)
		return rc;
	rc = kh_ioas_find_run(dom->ioas, iova, last, take, arg, &run);
	if (rc < 0)
		return rc;
	if (run.count && (rc = unmap_span(dom, run.first, run.last, &run.bytes)) < 0) {
		*unmapped = run.bytes;
		return rc;
	}
	*unmapped = run.bytes;
	*ret_count = run.count;
	*ret_more = run.more;
	return 0;
}

/* Removes [cut, last] of the tail of area, moving cut down to coarser boundaries while the
 * kernel refuses to split what it mapped in one piece: both kernels check a removal whole
 * before they change anything, and say so with -ENOENT (iommufd) or -EINVAL (vfio-type1). */
static int unmap_tail_piece(struct kh_domain *dom, const struct kh_area *area, uint64_t last,
			    uint64_t *cut)
{
	uint64_t align = *cut & -*cut, next;
	int rc;

	while ((rc = backend_unmap(dom, *cut, last - *cut + 1)) == -ENOENT || rc == -EINVAL) {
		do {
			align <<= 1;
			next = align ? last / align * align : 0;
		} while (align && next == *cut);
		if (next <= kh_ioas_area_iova(area))
			return kh_fail(-ENOENT,
				       "the mapping at IOVA 0x%" PRIx64
				       " is in one piece from 0x%" PRIx64
				       " to its end in the kernel: remove it whole",
				       kh_ioas_area_iova(area), *cut);
		*cut = next;
	}
	return rc;
}

int kh_unmap_tail(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t *ret_iova)
{
	struct kh_domain *dom;
	struct kh_area *area;
	uint64_t last, cut = iova;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "unmap", &dom);

	if (rc < 0)
		return rc;
	if (!length || __builtin_add_overflow(iova, length - 1, &last) ||
	    !(area = kh_ioas_tail_of(dom->ioas, iova, last)))
		return kh_fail(-EINVAL,
			       "0x%" PRIx64 " + 0x%" PRIx64 " is not the end of a longer mapping",
			       iova, length);
	rc = unmap_tail_piece(dom, area, last, &cut);
	if (rc < 0)
		return rc;
	kh_ioas_cut_tail(area, cut);
	*ret_iova = cut;
	return 0;
}

int kh_mappings(struct kh_ctx *ctx, uint32_t domain_id, uint64_t from, struct kh_mapping *out,
		size_t max)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "listing mappings", &dom);

	if (rc < 0)
		return rc;
	return kh_ioas_mappings(dom->ioas, from, out, max);
}

int kh_iova_ranges(struct kh_ctx *ctx, uint32_t domain_id, struct kh_iova_range *out, size_t max)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "IOVA ranges", &dom);

	if (rc < 0)
		return rc;
	return kh_ioas_ranges(dom->ioas, out, max);
}

int kh_allow_iovas(struct kh_ctx *ctx, uint32_t domain_id, const struct kh_iova_range *ranges,
		   size_t n)
{
	struct kh_iova_range *sorted;
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOAS, "allowed IOVA ranges", &dom);

	if (rc == 0)
		rc = kh_ioas_allow_check(dom->ioas, ranges, n, &sorted);
	if (rc < 0)
		return rc;
	/* The kernel keeps its own copy where it allocates IOVA itself. */
	if (dom->ops->set_allowed_iovas && !ctx->adoption)
		rc = dom->ops->set_allowed_iovas(dom, sorted, n);
	if (rc < 0) {
		free(sorted);
		return rc;
	}
	kh_ioas_allow_set(dom->ioas, sorted, n);
	return 0;
}

int kh_iova_to_phys(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t *phys)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_IOVA_TO_PHYS, "IOVA lookups", &dom);

	return rc < 0 ? rc : dom->ops->iova_to_phys(dom, iova, phys);
}

int kh_flush_iotlb(struct kh_ctx *ctx, uint32_t domain_id)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_FLUSH, "IOTLB flushes", &dom);

	return rc < 0 || ctx->adoption ? rc : dom->ops->flush_iotlb_all(dom);
}

/* ---- dirty tracking ----------------------------------------------------------------------- */

int kh_set_dirty_tracking(struct kh_ctx *ctx, uint32_t domain_id, bool enable)
{
	struct kh_domain *dom;
	int rc = find_domain_for(ctx, domain_id, NEED_DIRTY, "dirty tracking", &dom);

	/* Taking a context over, the kernel follows later: at the take-over's end
	 * (kh_ctx_adopt_end), or where the backend starts tracking as a domain gets its IOMMU. */
	if (rc == 0 && !ctx->adoption)
		rc = dom->dirty_ops->set_dirty_tracking(dom, enable);
	if (rc == 0)
		dom->dirty_tracking = enable;
	return rc;
}

/* Marks dirty every page of [iova, last] that a range whose bits were lost touches. */
static void read_stale(const struct kh_domain *dom, uint64_t iova, uint64_t last,
		       uint64_t page_size, uint64_t *bitmap)
{
	for (size_t i = 0; i < dom->n_stale; i++) {
		uint64_t from = dom->stale[i].start > iova ? dom->stale[i].start : iova;
		uint64_t to = dom->stale[i].last < last ? dom->stale[i].last : last;

		for (uint64_t bit = (from - iova) / page_size;
		     from <= to && bit <= (to - iova) / page_size; bit++)
			bitmap[bit / 64] |= 1ull << (bit % 64);
	}
}

/* Takes [iova, last] out of the ranges whose bits were lost, once a read cleared it. Without
 * memory the ranges stay as they are and read dirty once more, which loses nothing. */
static void forget_stale(struct kh_domain *dom, uint64_t iova, uint64_t last)
{
	/* The ranges are apart, so at most one holds [iova, last] strictly and splits in two. */
	struct kh_iova_range *left = malloc((dom->n_stale + 1) * sizeof(*left));
	size_t n = 0;

	if (!left)
		return;
	for (size_t i = 0; i < dom->n_stale; i++) {
		struct kh_iova_range r = dom->stale[i];

		if (r.start < iova)
			left[n++] =
				(struct kh_iova_range){r.start, r.last < iova ? r.last : iova - 1};
		if (r.last > last)
			left[n++] =
				(struct kh_iova_range){r.start > last ? r.start : last + 1, r.last};
	}
	free(dom->stale);
	dom->stale = left;
	dom->n_stale = n;
}

int kh_read_dirty(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t page_size, uint64_t *bitmap, uint32_t flags)
{
	struct kh_domain *dom;
	uint64_t last, min_page;
	int rc = find_domain_for(ctx, domain_id, NEED_DIRTY, "reading dirty bits", &dom);

	if (rc < 0)
		return rc;
	min_page = dom->page_sizes & -dom->page_sizes;
	if (page_size < min_page || (page_size & (page_size - 1)))
		return kh_fail(-EINVAL,
			       "dirty page size 0x%" PRIx64 " must be a power of two of at least "
			       "0x%" PRIx64,
			       page_size, min_page);
	if (length == 0 || (iova | length) & (page_size - 1))
		return kh_fail(-EINVAL,
			       "IOVA 0x%" PRIx64 " and length 0x%" PRIx64
			       " must be non-zero multiples of the dirty page size 0x%" PRIx64,
			       iova, length, page_size);
	if (__builtin_add_overflow(iova, length - 1, &last))
		return kh_fail(-EOVERFLOW, "IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows",
			       iova, length);
	if (flags & ~KH_DIRTY_NO_CLEAR)
		return kh_fail(-EINVAL, "unknown dirty flags 0x%x", flags & ~KH_DIRTY_NO_CLEAR);
	memset(bitmap, 0, ((length / page_size + 63) / 64) * sizeof(*bitmap));
	rc = dom->dirty_ops->read_and_clear_dirty(dom, iova, length, page_size, bitmap, flags);
	if (rc < 0 || !dom->n_stale)
		return rc;
	read_stale(dom, iova, last, page_size, bitmap);
	if (!(flags & KH_DIRTY_NO_CLEAR))
		forget_stale(dom, iova, last);
	return 0;
}

int kh_dirty_bits_lost(struct kh_ctx *ctx, uint32_t domain_id)
{
	struct kh_domain *dom;
	struct kh_mapping page[64];
	uint64_t next;
	int rc = find_domain_for(ctx, domain_id, NEED_DIRTY, "dirty tracking", &dom), n;
	size_t most;

	if (rc < 0)
		return rc;
	/* Mappings that touch end to end make one range, so there are never more than mappings. */
	most = kh_ioas_count(dom->ioas);
	free(dom->stale);
	dom->stale = NULL;
	dom->n_stale = 0;
	if (!most)
		return 0;
	if (!(dom->stale = malloc(most * sizeof(*dom->stale))))
		return kh_fail(-ENOMEM, "cannot note the ranges whose dirty bits were lost");
	next = dom->aperture_start;
	do {
		n = kh_ioas_mappings(dom->ioas, next, page, 64);
		for (int i = 0; i < n; i++) {
			next = page[i].iova + page[i].length;
			if (dom->n_stale && dom->stale[dom->n_stale - 1].last + 1 == page[i].iova)
				dom->stale[dom->n_stale - 1].last = next - 1;
			else
				dom->stale[dom->n_stale++] =
					(struct kh_iova_range){page[i].iova, next - 1};
		}
	} while (n == 64 && next);
	return 0;
}

/* ---- taking a context over ---------------------------------------------------------------- */

/* A device given to kh_ctx_adopt; fd is -1 once its binding took it. */
struct adopted_device {
	struct kh_bdev *bdev;
	int fd;
	uint32_t kernel_ids[KH_KERNEL_IDS];
};

struct kh_adoption {
	struct adopted_device *devs;
	size_t n_devs;
	struct kh_adopt_domain *doms;
	size_t n_doms;
};

static void adoption_free(struct kh_ctx *ctx)
{
	struct kh_adoption *a = ctx->adoption;

	if (!a)
		return;
	/* A device taken over and not bound since may be attached still, and a client may hold
	 * its file too: its DMA is blocked before the context lets go of it. */
	for (size_t i = 0; i < a->n_devs; i++) {
		if (a->devs[i].fd < 0)
			continue;
		(void)kh_device_fd_block(a->devs[i].fd, (char[KH_NAME_MAX]){0});
		(void)close(a->devs[i].fd);
	}
	for (size_t i = 0; i < a->n_doms; i++)
		if (a->doms[i].fd >= 0)
			(void)close(a->doms[i].fd);
	free(a->devs);
	free(a->doms);
	free(a);
	ctx->adoption = NULL;
}

static int no_adoption(const struct kh_backend *be)
{
	return kh_fail(-EOPNOTSUPP,
		       "the %s backend's kernel objects cannot be taken over by another process",
		       be->ops->name);
}

int kh_device_kernel_fd(struct kh_ctx *ctx, uint32_t dev_id)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_device *dev;
	int rc = find_device(ctx, dev_id, &dev);

	if (rc < 0)
		return rc;
	return ops->device_kernel_fd ? ops->device_kernel_fd(dev) : no_adoption(ctx->be);
}

int kh_domain_kernel_fd(struct kh_ctx *ctx, uint32_t domain_id)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_domain *dom;
	int rc = kh_find_domain(ctx, domain_id, &dom);

	if (rc < 0)
		return rc;
	if (!(ctx->be->caps & KH_CAP_ADOPT))
		return no_adoption(ctx->be);
	if (!ops->domain_kernel_fd)
		return kh_fail(-ENOENT,
			       "the %s backend's domains live in their context's descriptor",
			       ops->name);
	return ops->domain_kernel_fd(dom);
}

int kh_kernel_ids(struct kh_ctx *ctx, uint32_t id, uint32_t ret_ids[KH_KERNEL_IDS])
{
	struct kh_device *dev = objects_find(ctx->objects, id, KH_OBJ_DEVICE);
	struct kh_domain *dom = objects_find(ctx->objects, id, KH_OBJ_DOMAIN);

	if (!ctx->be->ops->kernel_ids)
		return no_adoption(ctx->be);
	if (!dev && !dom)
		return kh_fail(-ENOENT, "there is no device or domain %u in this context", id);
	ctx->be->ops->kernel_ids(dev, dom, ret_ids);
	return 0;
}

/* The adoption's copy of what the caller gave, its devices found among the backend's. */
static int adoption_new(struct kh_backend *be, const struct kh_adopt_device *devs, size_t n_devs,
			const struct kh_adopt_domain *doms, size_t n_doms, struct kh_adoption **ret)
{
	struct kh_adoption *a = kh_zalloc(sizeof(*a));
	int index;

	if (a) {
		a->devs = kh_realloc_array(NULL, n_devs ? n_devs : 1, sizeof(*a->devs));
		a->doms = kh_realloc_array(NULL, n_doms ? n_doms : 1, sizeof(*a->doms));
	}
	if (!a || !a->devs || !a->doms) {
		if (a) {
			free(a->devs);
			free(a->doms);
		}
		free(a);
		return kh_fail(-ENOMEM, "cannot hold the objects to take over");
	}
	for (; a->n_devs < n_devs; a->n_devs++) {
		index = kh_device_lookup(be, devs[a->n_devs].name);
		if (index < 0)
			break;
		a->devs[a->n_devs] = (struct adopted_device){.bdev = &be->devices[index], .fd = -1};
		memcpy(a->devs[a->n_devs].kernel_ids, devs[a->n_devs].kernel_ids,
		       sizeof(devs->kernel_ids));
	}
	if (a->n_devs < n_devs) {
		const char *name = devs[a->n_devs].name;

		free(a->devs);
		free(a->doms);
		free(a);
		return kh_fail(-ESTALE, "the kernel context binds %s, which %s no longer offers",
			       name, be->ops->name);
	}
	if (n_doms)
		memcpy(a->doms, doms, n_doms * sizeof(*doms));
	/* The caller keeps the descriptors until the backend accepted them all. */
	for (a->n_doms = 0; a->n_doms < n_doms; a->n_doms++)
		a->doms[a->n_doms].fd = -1;
	*ret = a;
	return 0;
}

int kh_ctx_adopt(struct kh_ctx *ctx, int kernel_fd, const struct kh_adopt_device *devs,
		 size_t n_devs, const struct kh_adopt_domain *doms, size_t n_doms)
{
	struct kh_adoption *a;
	int rc;

	if (!(ctx->be->caps & KH_CAP_ADOPT))
		return no_adoption(ctx->be);
	if (ctx->objects->n || ctx->adoption)
		return kh_fail(-EBUSY, "only a context holding nothing can take another over");
	rc = adoption_new(ctx->be, devs, n_devs, doms, n_doms, &a);
	if (rc < 0)
		return rc;
	rc = ctx->be->ops->ctx_adopt(ctx, kernel_fd, devs, n_devs, doms, n_doms);
	if (rc < 0) {
		adoption_free(&(struct kh_ctx){.adoption = a});
		return rc;
	}
	for (size_t i = 0; i < n_devs; i++)
		a->devs[i].fd = devs[i].fd;
	for (size_t i = 0; i < n_doms; i++)
		a->doms[i].fd = doms[i].fd;
	ctx->adoption = a;
	return 0;
}

bool kh_ctx_adopting(const struct kh_ctx *ctx)
{
	return ctx->adoption != NULL;
}

static int adopt_bind(struct kh_ctx *ctx, struct kh_device *dev)
{
	struct kh_adoption *a = ctx->adoption;
	int rc;

	for (size_t i = 0; i < a->n_devs; i++) {
		if (a->devs[i].bdev != dev->bdev || a->devs[i].fd < 0)
			continue;
		rc = ctx->be->ops->adopt_bind(ctx, dev, a->devs[i].fd, a->devs[i].kernel_ids);
		if (rc == 0)
			a->devs[i].fd = -1;
		return rc;
	}
	return kh_fail(-ESTALE, "the kernel context taken over holds no binding of %s",
		       dev->bdev->info.name);
}

/* The domain about to take the next id: one the kernel holds, or one the replay frees again
 * (not among the live ones given), which then holds no kernel object. */
static int adopt_domain(struct kh_ctx *ctx, struct kh_device *dev,
			const struct kh_domain_alloc_args *args, struct kh_domain *parent,
			struct kh_domain **out)
{
	struct kh_adoption *a = ctx->adoption;
	uint32_t id = ctx->objects->last_id + 1;
	struct kh_adopt_domain *live = NULL;
	int rc;

	for (size_t i = 0; i < a->n_doms && !live; i++)
		if (a->doms[i].id == id)
			live = &a->doms[i];
	rc = ctx->be->ops->adopt_domain(dev, args, parent, live ? live->kernel_ids : NULL,
					live ? live->fd : -1, out);
	if (rc == 0 && live)
		live->fd = -1;
	return rc;
}

/* Takes out of the kernel what [first, last] of dom holds though no mapping is recorded there
 * (a change made and never acknowledged); nothing is there most often, which the kernel may
 * answer with ENOENT. */
static int clear_unrecorded(struct kh_domain *dom, uint64_t first, uint64_t last)
{
	uint64_t length = last - first + 1;
	int rc;

	if (first > last || first < dom->aperture_start || last > dom->aperture_last)
		return 0;
	rc = backend_unmap(dom, first, length ? length : UINT64_MAX);
	return rc == -ENOENT ? 0 : rc;
}

/* Checks one recorded mapping in the kernel; one the kernel lacks, or holds only in part, is
 * made again from the memory the caller mapped, or the file it gave (kh.h, KH_MAP_FILE). */
static int settle_mapping(struct kh_domain *dom, const struct kh_mapping *m, size_t *remade)
{
	struct kh_map_req req = {.iova = m->iova,
				 .length = m->length,
				 .addr = m->addr,
				 .prot = m->prot,
				 .flags = m->flags & KH_MAP_FILE,
				 .fd = kh_ioas_file_fd(dom->ioas, m->iova)};
	int rc = dom->ctx->be->ops->adopt_mapped(dom, m);

	if (rc != 0)
		return rc < 0 ? rc : 0;
	if ((req.flags & KH_MAP_FILE) && req.fd < 0)
		return kh_fail(-ESTALE,
			       "the kernel lost the file mapping at IOVA 0x%" PRIx64
			       " of domain %u, which cannot be made again without its file",
			       m->iova, dom->id);
	rc = check_file_map(dom, &req);
	if (rc < 0)
		return rc;
	/* What asking left there, or what the kernel kept of a mapping cut short: a failure
	 * leaves memory pinned that no book holds, which the caller must not take as settled. */
	rc = clear_unrecorded(dom, m->iova, m->iova + m->length - 1);
	if (rc == 0)
		rc = backend_map(dom, &req, NULL);
	if (rc == 0)
		(*remade)++;
	return rc;
}

/* The first failure of several steps that all run, its message kept: the kernel's expected
 * refusals of later steps (nothing to take out) would overwrite kh_last_error(). */
struct first_failure {
	int rc;
	char why[KH_ERROR_MAX];
};

static void note_failure(struct first_failure *f, int rc)
{
	if (rc >= 0 || f->rc < 0)
		return;
	f->rc = rc;
	(void)snprintf(f->why, sizeof(f->why), "%s", kh_last_error());
}

/* The kernel's mappings of a paging domain made to match the books. */
static void settle_domain(struct kh_domain *dom, size_t *remade, struct first_failure *failed)
{
	struct kh_mapping page[64];
	uint64_t next = dom->aperture_start;
	int n;

	do {
		n = kh_mappings(dom->ctx, dom->id, next, page, 64);
		note_failure(failed, n);
		for (int i = 0; i < n; i++) {
			if (page[i].iova > next)
				(void)clear_unrecorded(dom, next, page[i].iova - 1);
			note_failure(failed, settle_mapping(dom, &page[i], remade));
			next = page[i].iova + page[i].length;
		}
	} while (n == 64 && next);
	/* next wraps to 0 past a mapping ending at the top, where nothing is left to clear. */
	if (next && n >= 0)
		(void)clear_unrecorded(dom, next, dom->aperture_last);
}

/* The books' allowed IOVA ranges made the kernel's, replacing any that a change never recorded
 * set; before the devices settle, since ranges the kernel must keep can refuse an attach. */
static int settle_allowed(struct kh_domain *dom)
{
	size_t n;
	const struct kh_iova_range *ranges = kh_ioas_allowed(dom->ioas, &n);

	return dom->ops->set_allowed_iovas ? dom->ops->set_allowed_iovas(dom, ranges, n) : 0;
}

/* The kernel's dirty tracking switched as the books say; where it had to be switched on over
 * mappings, what was written meanwhile went untracked: those ranges read dirty once. */
static int settle_dirty(struct kh_domain *dom)
{
	struct kh_mapping first;
	bool mapped;
	int rc;

	if (!dom->dirty_ops || !dom->ioas || !dom->ctx->be->ops->adopt_dirty)
		return 0;
	mapped = kh_ioas_mappings(dom->ioas, dom->aperture_start, &first, 1) == 1;
	rc = dom->ctx->be->ops->adopt_dirty(dom, dom->dirty_tracking, mapped ? &first : NULL);
	return rc == 1 ? kh_dirty_bits_lost(dom->ctx, dom->id) : rc;
}

int kh_ctx_adopt_end(struct kh_ctx *ctx, size_t *remade)
{
	struct kh_objects *objs = ctx->objects;
	struct first_failure failed = {0};

	*remade = 0;
	if (!ctx->adoption)
		return kh_fail(-EINVAL, "the context is not taking another over");
	adoption_free(ctx);
	for (size_t i = 0; i < objs->n; i++) {
		struct kh_domain *dom = objs->v[i].ptr;

		if (objs->v[i].kind == KH_OBJ_DOMAIN && dom->ioas) {
			note_failure(&failed, settle_allowed(dom));
			settle_domain(dom, remade, &failed);
			kh_ioas_forget_fds(dom->ioas);
		}
	}
	for (size_t i = 0; i < objs->n; i++)
		if (objs->v[i].kind == KH_OBJ_DEVICE)
			note_failure(&failed, ctx->be->ops->adopt_settle(objs->v[i].ptr));
	for (size_t i = 0; i < objs->n; i++) {
		if (objs->v[i].kind != KH_OBJ_DOMAIN)
			continue;
		if (ctx->be->ops->adopt_recount)
			note_failure(&failed, ctx->be->ops->adopt_recount(objs->v[i].ptr));
		note_failure(&failed, settle_dirty(objs->v[i].ptr));
	}
	return failed.rc < 0 ? kh_fail(failed.rc, "%s", failed.why) : 0;
}

int kh_ctx_destroy_unheld(struct kh_ctx *ctx, size_t *ret_destroyed)
{
	const struct kh_backend_ops *ops = ctx->be->ops;
	struct kh_objects *objs = ctx->objects;
	uint32_t ids[KH_KERNEL_IDS], *held;
	size_t n_held = 0;
	int rc;

	if (ctx->adoption)
		return kh_fail(-EBUSY, "the context is still taking another over");
	if (!ops->destroy_unheld || !ops->kernel_ids) {
		*ret_destroyed = 0;
		return 0;
	}
	held = kh_realloc_array(NULL, objs->n ? objs->n * KH_KERNEL_IDS : 1, sizeof(*held));
	if (!held)
		return kh_fail(-ENOMEM, "cannot list the kernel objects the context holds");
	for (size_t i = 0; i < objs->n; i++) {
		bool device = objs->v[i].kind == KH_OBJ_DEVICE;

		ops->kernel_ids(device ? objs->v[i].ptr : NULL, device ? NULL : objs->v[i].ptr,
				ids);
		for (size_t k = 0; k < KH_KERNEL_IDS; k++)
			if (ids[k])
				held[n_held++] = ids[k];
	}
	rc = ops->destroy_unheld(ctx, held, n_held, ret_destroyed);
	free(held);
	return rc;
}
