/* SPDX-License-Identifier: MIT */
/*
 * The split-ops contract between kernel-helper's core and its backends.
 *
 * Two tables, as in Linux since the "split ops" change:
 *   struct kh_backend_ops - device-oriented: enumerate and probe devices, report what their
 *                           IOMMU can do, bind them into contexts, and allocate a domain *from a
 *                           device*, so the backend returns the right kind of domain.
 *   struct kh_domain_ops  - chosen by domain_alloc and stored in the domain; never changed.
 * and, as Linux keeps struct iommu_dirty_ops beside the domain ops, a small third one:
 *   struct kh_dirty_ops   - set in the domain at allocation when it was allocated to track
 *                           dirty pages; NULL otherwise. So one domain-ops table serves each
 *                           kind of domain, with or without dirty tracking.
 *
 * A NULL op, or a NULL dirty_ops, means "not supported". The core's wrappers turn it into
 * -EOPNOTSUPP with a message; a backend never tests for its own NULL ops. A backend with a
 * single kind of paging domain leaves domain_alloc's choice to the core by setting
 * default_domain_ops.
 *
 * The core owns the IOAS rules (IOVA allocation, reserved and allowed ranges, overlap and
 * whole-mapping checks) for every backend: by the time an op runs, its arguments are valid for
 * the domain's address space. Ops return 0 or a negative errno and set kh_last_error() through
 * kh_fail() on failure; a failed mutating op leaves the backend as it was.
 */
#ifndef KH_KH_OPS_H
#define KH_KH_OPS_H

#include <stdarg.h>

#include <kh/kh.h>

#ifdef __cplusplus
extern "C" {
#endif

struct kh_adoption;
struct kh_domain;
struct kh_domain_ops;
struct kh_dirty_ops;

/* A device as the backend found it. Owned by the backend, which frees it at release. */
struct kh_bdev {
	struct kh_device_info info;
	struct kh_iova_range *resv; /* reserved regions, owned by the device */
	size_t n_resv;
	struct kh_ctx *bound_ctx; /* the context it is bound in, or NULL; kept by the core */
	bool delegated;		  /* handed to another process (kh_delegate); kept by the core */
	void *priv;		  /* the backend's own state */
};

/* A device bound in a context: what domain ops receive. Owned by the core. */
struct kh_device {
	uint32_t id;
	struct kh_ctx *ctx;
	struct kh_bdev *bdev;
	struct kh_domain *domain; /* attached domain, or NULL (blocked) */
	void *priv;		  /* the backend's per-binding state (iommufd: the VFIO fd) */
};

/* Allocated by the backend's domain_alloc (embedded in its own struct, found again with
 * container_of); the core fills the fields marked "core" and calls ops->free to release it. */
struct kh_domain {
	const struct kh_domain_ops *ops;      /* backend: set at allocation, never changed */
	const struct kh_dirty_ops *dirty_ops; /* backend: as ops; NULL when it tracks nothing */
	enum kh_domain_type type;	      /* backend: never changes */
	uint32_t flags;			      /* backend: KH_DOMAIN_F_* it granted */
	uint64_t page_sizes;		      /* backend: leaf sizes the domain's page table uses */
	uint64_t aperture_start, aperture_last; /* backend */
	struct kh_domain *parent;		/* core: nest parent of a nested domain */
	uint32_t id;				/* core */
	struct kh_ctx *ctx;			/* core */
	unsigned users;				/* core: attached devices + nested children */
	struct kh_ioas *ioas;			/* core: the address space of a paging domain */
	struct kh_iova_range *stale; /* core: owned; IOVA ranges whose dirty bits were lost */
	size_t n_stale;
	bool dirty_tracking; /* core: switched on, by the caller or by the record a take-over
			      * replays (where the kernel is not asked) */
};

struct kh_domain_ops {
	/* Attach a device that has no domain. */
	int (*attach_dev)(struct kh_domain *dom, struct kh_device *dev);
	/* Move a device from old (never NULL) to dom with no blocked window. old is dom when the
	 * core asks that the device be in dom whatever the kernel did behind its back (a client
	 * detached it through its VFIO descriptor): then attach it there if it is not. */
	int (*replace_dev)(struct kh_domain *dom, struct kh_device *dev, struct kh_domain *old);
	/* Leave the device blocked. May refuse only where the kernel keeps the device in the
	 * domain (vfio-type1 while a device fd of its group is open): kh_detach and
	 * kh_device_unbind then fail and change nothing. Destroying a context goes on regardless,
	 * so free must then leave the device reaching none of the domain's memory. */
	int (*detach_dev)(struct kh_domain *dom, struct kh_device *dev);

	/* Map [addr, addr+length) at iova; the range is free, aligned and inside the aperture. All
	 * or nothing. */
	int (*map)(struct kh_domain *dom, uint64_t iova, uint64_t addr, uint64_t length,
		   uint32_t prot);
	/* As map, for [offset, offset+length) of the file fd. */
	int (*map_file)(struct kh_domain *dom, uint64_t iova, int fd, uint64_t offset,
			uint64_t length, uint32_t prot);
	/* Map at iova of dom what [src_iova, +length) of src maps; src belongs to the same context
	 * and backend, and the core found the range inside one of src's mappings, whose memory
	 * starts at addr (an address, or an offset in a file for a file mapping). */
	int (*copy)(struct kh_domain *dom, uint64_t iova, struct kh_domain *src, uint64_t src_iova,
		    uint64_t length, uint32_t prot, uint64_t addr);
	/* Unmap exactly a range the core mapped before (one or more whole mappings). */
	int (*unmap)(struct kh_domain *dom, uint64_t iova, uint64_t length);
	/* After unmap failed: 1 where the kernel still maps m, 0 where it removed m all the same
	 * (vfio-type1 on kernels that let only a mapping's maker remove it), a negative errno
	 * where it cannot say. NULL where a failed unmap removes nothing. */
	int (*holds)(struct kh_domain *dom, const struct kh_mapping *m);
	/* Pass allowed IOVA ranges (sorted, checked by the core) to where they are enforced. */
	int (*set_allowed_iovas)(struct kh_domain *dom, const struct kh_iova_range *ranges,
				 size_t n);
	int (*iova_to_phys)(struct kh_domain *dom, uint64_t iova, uint64_t *phys);
	/* Make an unmap of [iova, iova+length) visible to devices. */
	void (*iotlb_sync)(struct kh_domain *dom, uint64_t iova, uint64_t length);
	int (*flush_iotlb_all)(struct kh_domain *dom);
	/* Bytes of this process's memory the domain's page tables take; NULL where the tables are
	 * the kernel's or there are none. */
	uint64_t (*table_bytes)(struct kh_domain *dom);

	void (*free)(struct kh_domain *dom);
};

/* Dirty tracking of a paging domain allocated with KH_DOMAIN_F_DIRTY_TRACKING. Both ops are
 * set: a domain either tracks dirty pages or it does not. */
struct kh_dirty_ops {
	int (*set_dirty_tracking)(struct kh_domain *dom, bool enable);
	/* bitmap is zeroed by the core; the op ORs in bits for dirty pages. */
	int (*read_and_clear_dirty)(struct kh_domain *dom, uint64_t iova, uint64_t length,
				    uint64_t page_size, uint64_t *bitmap, uint32_t flags);
};

struct kh_backend_ops {
	enum kh_backend_kind kind;
	const char *name;
	uint32_t caps; /* KH_CAP_* the backend always has; probe_devices may add to kh_backend.caps
			*/

	/* Fill be->devices. Called once, by the backend's open function through the core. */
	int (*probe_devices)(struct kh_backend *be);
	/* Free the backend's private state and every kh_bdev's priv. */
	void (*release)(struct kh_backend *be);

	int (*ctx_open)(struct kh_ctx *ctx);
	void (*ctx_close)(struct kh_ctx *ctx);
	/* NULL when the context has no kernel descriptor (kh_ctx_kernel_fd). */
	int (*ctx_kernel_fd)(const struct kh_ctx *ctx);

	int (*bind)(struct kh_ctx *ctx, struct kh_device *dev);
	void (*unbind)(struct kh_ctx *ctx, struct kh_device *dev);

	/* A duplicate of the device's VFIO fd, and the layout of its regions; a backend that has
	 * them says so with KH_CAP_OPEN_DEVICE. */
	int (*device_fd)(struct kh_device *dev);
	int (*device_region)(struct kh_device *dev, uint32_t index, struct kh_region *out);

	/* kh_delegate's fds, close-on-exec: a fresh kernel IOMMU context charging each process
	 * its own pins, and a fresh unbound fd of a device; a backend that has them says so with
	 * KH_CAP_DELEGATE. */
	int (*delegate_ctx_fd)(struct kh_backend *be);
	int (*delegate_device_fd)(struct kh_bdev *bdev);

	/* Taking a context over (kh.h, "taking a context over"); a backend that has all of these
	 * says so with KH_CAP_ADOPT. kernel_fd, device_kernel_fd and domain_kernel_fd: the
	 * descriptors holding the kernel objects, kept by the context, the binding and the domain
	 * (NULL where the domains live in the context's). kernel_ids: of a device (dom NULL)
	 * or a domain. ctx_adopt: check kernel_fd and every device and domain given against the
	 * kernel, then make kernel_fd the context's (closing its own); on failure change nothing.
	 * adopt_bind: the binding of dev from fd (now the binding's) and its ids, without asking
	 * the kernel. adopt_domain: as domain_alloc, from the kernel ids of a live domain and its
	 * descriptor fd (-1 where it has none; the domain's on success), or from none (ids NULL)
	 * for one the replay will free again, which then holds no kernel object.
	 * adopt_settle: put dev where the books say (dev->domain, or blocked when NULL).
	 * adopt_recount: optional, for each domain once every device settled: make what the
	 * backend counts of dom match the kernel, failing where the kernel cannot say.
	 * adopt_mapped: 1 when the kernel maps m in dom as it is recorded, 0 when it says it does
	 * not (what asking left in m's range the core takes out before making m again), a
	 * negative errno when it could not be asked (the mapping is then left alone).
	 * adopt_dirty: optional, for each domain tracking dirty pages once every device settled:
	 * make the kernel's tracking on or off as the books say; mapped is the domain's first
	 * mapping (NULL for none); 1 when it had to switch tracking on over mappings (the bits
	 * of what was written before are lost), else 0.
	 * destroy_unheld: optional, after a take-over: destroy the objects of the context's
	 * kernel descriptor that are neither devices nor among the held kernel ids, giving how
	 * many were destroyed. */
	int (*device_kernel_fd)(struct kh_device *dev);
	int (*domain_kernel_fd)(struct kh_domain *dom);
	void (*kernel_ids)(const struct kh_device *dev, struct kh_domain *dom,
			   uint32_t ret_ids[KH_KERNEL_IDS]);
	int (*ctx_adopt)(struct kh_ctx *ctx, int kernel_fd, const struct kh_adopt_device *devs,
			 size_t n_devs, const struct kh_adopt_domain *doms, size_t n_doms);
	int (*adopt_bind)(struct kh_ctx *ctx, struct kh_device *dev, int fd,
			  const uint32_t ids[KH_KERNEL_IDS]);
	int (*adopt_domain)(struct kh_device *dev, const struct kh_domain_alloc_args *args,
			    struct kh_domain *parent, const uint32_t *ids, int fd,
			    struct kh_domain **out);
	int (*adopt_settle)(struct kh_device *dev);
	int (*adopt_recount)(struct kh_domain *dom);
	int (*adopt_mapped)(struct kh_domain *dom, const struct kh_mapping *m);
	int (*adopt_dirty)(struct kh_domain *dom, bool on, const struct kh_mapping *mapped);
	int (*destroy_unheld)(struct kh_ctx *ctx, const uint32_t *held, size_t n_held,
			      size_t *ret_destroyed);

	/* Allocate a domain of args->type for dev; parent is resolved by the core. Returning
	 * -EOPNOTSUPP (through kh_fail) refuses a type the backend cannot provide. NULL: the core
	 * allocates paging domains with default_domain_ops through alloc_paging. */
	int (*domain_alloc)(struct kh_device *dev, const struct kh_domain_alloc_args *args,
			    struct kh_domain *parent, struct kh_domain **out);
	/* Used when domain_alloc is NULL: allocate a plain paging domain. */
	int (*alloc_paging)(struct kh_device *dev, uint32_t flags, struct kh_domain **out);
	const struct kh_domain_ops *default_domain_ops;
};

/* The core's view of a backend; backends fill devices in probe_devices. */
struct kh_backend {
	const struct kh_backend_ops *ops;
	struct kh_bdev *devices; /* array owned by the core, entries' priv by the backend */
	size_t n_devices;
	uint32_t caps;	/* KH_CAP_*: ops->caps, and what probe_devices found the kernel offers */
	unsigned n_ctx; /* live contexts; close refuses while any remain */
	void *priv;
};

struct kh_ctx {
	struct kh_backend *be;
	void *priv; /* the backend's per-context state */
	struct kh_objects *objects;
	kh_owner_release_fn *release_owner; /* core: kh_ctx_set_owner_release */
	void *release_arg;
	struct kh_adoption *adoption; /* core: between kh_ctx_adopt and kh_ctx_adopt_end */
};

/* Record a failure for kh_last_error() and give err (a negative errno). A macro around
 * kh_fail_record, so the compiler sees the value given: a caller's "rc < 0" after it then proves
 * that an out-parameter, written only on success, is not read unset. */
#define kh_fail(err, ...)                                                                          \
	({                                                                                         \
		const int kh_fail_err_ = (err);                                                    \
		kh_fail_record(kh_fail_err_, __VA_ARGS__);                                         \
		kh_fail_err_;                                                                      \
	})
void kh_fail_record(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int kh_vfail(int err, const char *fmt, va_list ap);

/* Creates the backend object and probes its devices; on failure ops->release(priv) has run. */
int kh_backend_create(const struct kh_backend_ops *ops, void *priv, struct kh_backend **out);

/* The domain called id in ctx, for a backend's own extensions; -ENOENT with a message. */
int kh_find_domain(struct kh_ctx *ctx, uint32_t id, struct kh_domain **out);

/* Grow be->devices by one zeroed entry; gives it in *out. */
int kh_backend_add_device(struct kh_backend *be, struct kh_bdev **out);

#ifdef __cplusplus
}
#endif

#endif
