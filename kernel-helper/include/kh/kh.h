/* SPDX-License-Identifier: MIT */
/*
 * kernel-helper: the only layer of iommud that talks to an IOMMU.
 *
 * What a caller (the daemon, a test, a tool) uses. The contract backends implement lives in
 * <kh/kh_ops.h>; a caller never needs it.
 *
 * Object model, after iommufd:
 *   backend  - one per process: the emulated IOMMU, the kernel's iommufd, or VFIO's type1
 *              containers. Owns the list of devices it found and their IOMMU groups. Callers
 *              open one by name through the registry and ask what it can do (capabilities),
 *              never which one it is.
 *   context  - an isolated universe of devices and domains (for iommufd, one /dev/iommu file).
 *              Objects are named by small integer ids that are only meaningful inside their
 *              context, so a tenant holding one context can never name another's objects.
 *   device   - a backend device bound into a context (kh_device_bind). A device is bound in
 *              at most one context at a time, and so is every device of its IOMMU group.
 *   domain   - allocated *from a device* with a fixed type; its ops are chosen then and never
 *              change. Paging domains carry an IO address space (IOAS): mappings, reserved and
 *              allowed IOVA ranges, following iommufd's IOAS rules so both backends agree.
 *
 * Errors: every function returning int gives 0 or a negative errno. After a failure,
 * kh_last_error() describes, for a person, what was wrong and what to do.
 *
 * Threads: a context must be used by one thread at a time. Different contexts of one backend
 * may be used from different threads only if the caller serialises calls on the backend.
 */
#ifndef KH_KH_H
#define KH_KH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct kh_backend;
struct kh_ctx;
struct kh_mapping;

/* The longest message kh_last_error() gives, its terminating NUL included: a caller that keeps
 * one while later calls fail sizes its copy by it. */
#define KH_ERROR_MAX 512
/* Message for the most recent failure of a kh_* call on this thread; never NULL. */
const char *kh_last_error(void);

/* ---- backends ------------------------------------------------------------------------- */

enum kh_backend_kind {
	KH_BACKEND_EMULATED,
	KH_BACKEND_IOMMUFD,
	KH_BACKEND_VFIO_TYPE1,
};

/*
 * The registry: every backend by name, and the choice "auto" makes. Names: "emulated",
 * "iommufd", "vfio-type1". kh_backend_registered(i) gives the i-th name, NULL past the last.
 *
 * "auto" takes iommufd where /dev/iommu exists; else vfio-type1 where the machine has an IOMMU
 * (/sys/class/iommu is not empty) and VFIO (/dev/vfio/vfio); else the emulated IOMMU, but only
 * on a machine with no IOMMU at all: a machine whose IOMMU cannot be reached is refused, since
 * the emulation would remap nothing. An explicit name the machine cannot serve is refused too.
 * Refusals say why and what to do. The /sys and /dev paths are looked up under
 * $IOMMUD_TEST_ROOT when it is set, which only tests do.
 */
const char *kh_backend_registered(size_t i);
/* The backend name (or "auto") stands for on this machine, in *ret_name (a registry string);
 * -ENODEV with a message saying why it cannot be used and what to do; -EINVAL for an unknown
 * name. */
int kh_backend_choose(const char *name, const char **ret_name);
/* Chooses as kh_backend_choose and opens the backend; topology is the emulated backend's
 * topology file (NULL: the default device). */
int kh_backend_open(const char *name, const char *topology, struct kh_backend **out);

/* Opens the emulated backend with the devices described by an INI topology file (see
 * docs/operations.md, "Emulated topology"); NULL gives one default device "emu0". */
int kh_backend_open_emulated(const char *topology_path, struct kh_backend **out);
/* Opens the emulated backend from a topology held in memory (same syntax as the file). */
int kh_backend_open_emulated_text(const char *topology_text, struct kh_backend **out);
/* Opens the kernel's iommufd: devices are the PCI devices bound to vfio-pci that have a VFIO
 * device cdev. Needs /dev/iommu (CONFIG_IOMMUFD, an IOMMU) and root. */
int kh_backend_open_iommufd(struct kh_backend **out);
/* Opens VFIO's type1 IOMMU: devices are the PCI devices bound to vfio-pci, in their VFIO groups
 * (/dev/vfio/N); each paging domain is a container. Needs /dev/vfio/vfio (CONFIG_VFIO_CONTAINER,
 * CONFIG_VFIO_IOMMU_TYPE1), an IOMMU and root. */
int kh_backend_open_vfio_type1(struct kh_backend **out);
/* Releases the backend. Every context must have been destroyed first. */
void kh_backend_close(struct kh_backend *be);

enum kh_backend_kind kh_backend_kind(const struct kh_backend *be);
const char *kh_backend_name(const struct kh_backend *be);

/*
 * What a backend, a device or a domain can do, so that callers ask about behaviour rather than
 * about the backend's kind. kh_cap_name gives each bit's name, the one the protocol and the
 * documentation use.
 */
/* Map and unmap run in the calling process (an emulation): time them there, no kernel path is
 * involved. */
#define KH_CAP_MAP_IN_PROCESS (1u << 0)
/* Devices are VFIO devices whose fd a context can hand out (kh_device_open_fd). */
#define KH_CAP_OPEN_DEVICE (1u << 1)
/* A real IOMMU translates device DMA through the domains; without it nothing is remapped. */
#define KH_CAP_DMA_REMAPPING (1u << 2)
/* kh_replace moves an attached device to another domain in one step. */
#define KH_CAP_REPLACE (1u << 3)
/* Paging domains may track dirty pages (KH_DOMAIN_F_DIRTY_TRACKING). */
#define KH_CAP_DIRTY_TRACKING (1u << 4)
/* Nest parents and nested domains. */
#define KH_CAP_NESTING (1u << 5)
/* kh_map with KH_MAP_FILE. */
#define KH_CAP_MAP_FILE (1u << 6)
/* kh_copy. */
#define KH_CAP_COPY (1u << 7)
/* Blocked and identity domains can be allocated. */
#define KH_CAP_BLOCKED_DOMAIN  (1u << 8)
#define KH_CAP_IDENTITY_DOMAIN (1u << 9)
/* kh_delegate: devices can be handed to another process (a VM manager) with a kernel IOMMU
 * context of its own, which it drives itself. */
#define KH_CAP_DELEGATE (1u << 10)
/* A context's kernel objects outlive the process holding them as long as their descriptors do,
 * and a new process can take them over (kh_ctx_adopt): devices keep their DMA meanwhile. */
#define KH_CAP_ADOPT (1u << 11)
#define KH_CAP_COUNT 12
/* The name of capability bit (0 .. KH_CAP_COUNT-1): "open_device", "replace", ... */
const char *kh_cap_name(unsigned bit);
/* The backend's: the union over its devices. */
uint32_t kh_backend_caps(const struct kh_backend *be);
/* What binding the device at index gives: the backend's, less what its IOMMU lacks. */
uint32_t kh_device_caps(const struct kh_backend *be, size_t index);

#define KH_NAME_MAX 64

/* What the IOMMU in front of a device can do. */
struct kh_hw_info {
	uint64_t page_sizes;	 /* bitmap of supported leaf sizes (bit n = 2^n bytes) */
	uint64_t aperture_start; /* lowest IOVA the IOMMU translates */
	uint64_t aperture_last;	 /* highest IOVA the IOMMU translates (inclusive) */
	bool dirty_tracking;   /* paging domains may be allocated with KH_DOMAIN_F_DIRTY_TRACKING */
	bool nesting;	       /* nest parents and nested domains */
	uint8_t pasid_bits;    /* width of PASIDs the device may use; 0 = none */
	uint32_t hw_type;      /* backend-specific model id (iommufd: enum iommu_hw_info_type) */
	uint32_t max_mappings; /* mappings one domain may hold (vfio-type1); 0: no limit */
};

struct kh_iova_range {
	uint64_t start;
	uint64_t last; /* inclusive, so the top of the address space can be expressed */
};

struct kh_device_info {
	char name[KH_NAME_MAX];	 /* stable name: PCI address for iommufd, topology name for emu */
	uint32_t group;		 /* IOMMU group number */
	uint16_t vendor, device; /* PCI ids; 0 where the backend has none */
	char driver[KH_NAME_MAX];
	struct kh_hw_info hw;
};

/* Number of devices the backend found; they are indexed 0..n-1 in a stable order. */
size_t kh_device_count(const struct kh_backend *be);
int kh_device_info(const struct kh_backend *be, size_t index, struct kh_device_info *out);
/* Index of the device called name, or -ENOENT. */
int kh_device_lookup(const struct kh_backend *be, const char *name);
/* Reserved IOVA regions the device brings (e.g. the x86 MSI window). Copies up to max
 * entries into out and returns how many there are in total, or a negative errno. */
int kh_device_reserved_regions(const struct kh_backend *be, size_t index, struct kh_iova_range *out,
			       size_t max);

/* ---- contexts ------------------------------------------------------------------------- */

int kh_ctx_create(struct kh_backend *be, struct kh_ctx **out);
/* Detaches every device, frees every domain and unbinds every device of the context. */
void kh_ctx_destroy(struct kh_ctx *ctx);
/* The kernel descriptor the context's map and unmap ioctls go through (iommufd: its /dev/iommu
 * fd), for tracing to tell contexts apart; the context keeps it. -EOPNOTSUPP where the backend
 * has none. */
int kh_ctx_kernel_fd(const struct kh_ctx *ctx);
/* The last object id the context gave out; ids are never reused, so a daemon that rebuilds a
 * context from its record (docs/architecture.md, "Survival") carries this number over. */
uint32_t kh_ctx_last_id(const struct kh_ctx *ctx);
/* Makes the next object the context creates take id last_id + 1: for rebuilding objects under
 * the ids they had. -EINVAL when last_id is below an id already given out (ids only grow). */
int kh_ctx_skip_ids(struct kh_ctx *ctx, uint32_t last_id);

/* ---- taking a context over from an earlier process ------------------------------------ */

/*
 * The kernel keeps a context's objects (the IOMMU context, bound devices, domains, mappings and
 * attachments) while a descriptor of them is open, whoever holds it. A process that keeps the
 * descriptors elsewhere (a service manager's descriptor store) and records each object's kernel
 * ids (kh_kernel_ids) can die; the next one takes the objects over, and the devices' DMA goes on
 * through the same domains all the while. Backends that can say so with KH_CAP_ADOPT.
 *
 * The taking over: create a context, give it the descriptors and the ids of the live objects
 * with kh_ctx_adopt, which checks them against the kernel's answers; then make the same calls
 * that built the context (kh_device_bind, kh_domain_alloc, kh_attach, kh_map, kh_unmap, ...,
 * objects under their old ids with kh_ctx_skip_ids): while the context is adopting they only
 * fill kernel-helper's books, and issue nothing to the kernel. kh_ctx_adopt_end then gives
 * each domain's address space the books' allowed IOVA ranges, checks each mapping is in the
 * kernel (making it again where not), takes out of the kernel what the books do not hold, puts
 * each device where the books say, and switches dirty tracking on or off as the books say.
 */
#define KH_KERNEL_IDS 2 /* kernel ids of one object, in a backend's own order */

struct kh_adopt_device {
	const char *name;		    /* the backend device */
	int fd;				    /* its descriptor, as kh_device_kernel_fd gave it */
	uint32_t kernel_ids[KH_KERNEL_IDS]; /* as kh_kernel_ids gave them */
};

struct kh_adopt_domain {
	uint32_t id; /* the domain's id in the context */
	uint32_t kernel_ids[KH_KERNEL_IDS];
	int fd; /* its descriptor, as kh_domain_kernel_fd gave it; -1 where it has none */
};

/* The descriptor of a bound device that holds its kernel objects; the context keeps it.
 * -EOPNOTSUPP without KH_CAP_ADOPT. (The context's own is kh_ctx_kernel_fd.) */
int kh_device_kernel_fd(struct kh_ctx *ctx, uint32_t dev_id);
/* The descriptor of a domain that is a kernel object of its own (vfio-type1: its container),
 * which the context keeps; -ENOENT where the domain lives in the context's descriptor
 * (iommufd), -EOPNOTSUPP without KH_CAP_ADOPT. */
int kh_domain_kernel_fd(struct kh_ctx *ctx, uint32_t domain_id);
/* The kernel's ids of the device or domain called id, for kh_ctx_adopt. */
int kh_kernel_ids(struct kh_ctx *ctx, uint32_t id, uint32_t ret_ids[KH_KERNEL_IDS]);
/* Starts taking over, into ctx (created and still empty), the kernel context kernel_fd (-1 for
 * a backend whose contexts have none: kh_ctx_kernel_fd fails), its devices and the domains
 * that live in it (with their own descriptors, where they have them). Each descriptor and id
 * is checked against the kernel; all or nothing: on success the context owns every descriptor
 * given, on failure (-ESTALE, or what the kernel answered, with a message naming what did not
 * match) the caller still does and ctx is as it was. */
int kh_ctx_adopt(struct kh_ctx *ctx, int kernel_fd, const struct kh_adopt_device *devs,
		 size_t n_devs, const struct kh_adopt_domain *doms, size_t n_doms);
/* Whether ctx is between kh_ctx_adopt and kh_ctx_adopt_end. */
bool kh_ctx_adopting(const struct kh_ctx *ctx);
/* Ends the taking over (see above). *remade, set whether or not it fails: mappings the kernel
 * did not hold and that were made again. Devices given to kh_ctx_adopt and not bound since are
 * closed. A negative errno when a device could not be put back in its domain; the rest is done
 * regardless. */
int kh_ctx_adopt_end(struct kh_ctx *ctx, size_t *remade);
/* After kh_ctx_adopt_end: destroys the kernel objects of the context taken over that its books
 * do not hold (a domain made by a process killed before it recorded it, or one the replay did
 * not make again), devices excepted (their descriptors' owner unbinds them); *ret_destroyed
 * says how many. 0 with none destroyed where the backend's objects are not in one context. */
int kh_ctx_destroy_unheld(struct kh_ctx *ctx, size_t *ret_destroyed);

/* ---- devices in a context ------------------------------------------------------------- */

/* Binds backend device `name` into ctx; gives its object id. -EBUSY if it, or a device of its
 * group, is bound in another context. A bound device is blocked from DMA until attached. */
int kh_device_bind(struct kh_ctx *ctx, const char *name, uint32_t *dev_id);
/* Detaches the device if attached and releases it from ctx. */
int kh_device_unbind(struct kh_ctx *ctx, uint32_t dev_id);

/* A VFIO fd for the bound device, so its user (a VM manager) can drive it: config space and
 * BARs through pread/pwrite at region offsets, interrupts, reset. The caller owns the fd (a
 * duplicate); the device stays bound and its DMA stays governed by the context's domains.
 * -EOPNOTSUPP on backends without VFIO devices (no KH_CAP_OPEN_DEVICE). */
int kh_device_open_fd(struct kh_ctx *ctx, uint32_t dev_id);

struct kh_region {
	uint64_t offset; /* where the region starts in the VFIO fd */
	uint64_t size;	 /* 0: the device has no such region */
	uint32_t flags;	 /* KH_REGION_* */
};
#define KH_REGION_READ	(1u << 0)
#define KH_REGION_WRITE (1u << 1)
#define KH_REGION_MMAP	(1u << 2)

/* Region `index` of the device in VFIO numbering (for PCI: BARs 0-5, 7 config space). */
int kh_device_region(struct kh_ctx *ctx, uint32_t dev_id, uint32_t index, struct kh_region *out);
/* The same for a VFIO device fd held without a context, such as one iommud's OpenDevice handed
 * out, so its holder finds the regions without issuing VFIO ioctls itself. */
int kh_vfio_region(int vfio_fd, uint32_t index, struct kh_region *out);
/* Blocks the DMA of the device whose VFIO cdev fd is, a descriptor held without a context (one
 * an earlier process left in a descriptor store): detaches it from whatever it is attached to
 * in the kernel context it is bound to, which leaves it blocked for every holder of the same
 * file (a client's OpenDevice), since the binding is the file's. Before giving up such a
 * descriptor, so that closing it never leaves a device attached with its DMA live. 1 with the
 * device's name in ret_name once its DMA is blocked, 0 when there is nothing to block (fd is
 * no VFIO device cdev, or one never bound), a negative errno when the kernel refused or
 * when what fd is cannot be told (the device may then stay attached). */
int kh_device_fd_block(int fd, char ret_name[KH_NAME_MAX]);
/* Releases what a kernel context held without a context of this process (an earlier one's
 * /dev/iommu descriptor, left in a descriptor store) still pins: empties every IOAS among the
 * kernel ids 1 to max_id, the rest left alone. For after its devices' DMA is blocked
 * (kh_device_fd_block), since their domains lose every mapping. The bytes unmapped and the
 * IOAS emptied in ret_bytes and ret_ioas, or a negative errno when the kernel refused (kernel_fd
 * is no IOMMU context, or an IOAS would not be emptied). */
int kh_ctx_fd_release(int kernel_fd, uint32_t max_id, uint64_t *ret_bytes, uint32_t *ret_ioas);

/* ---- devices handed to another process ------------------------------------------------ */

/*
 * Delegation: a VM manager maps its guest's memory itself, so it needs a kernel IOMMU context of
 * its own and device fds it binds there, which only a privileged process can open. kh_delegate
 * opens them for it: fds[0] a fresh iommufd whose pinned memory counts against the RLIMIT_MEMLOCK
 * of each process that pins through it (IOMMU_OPTION_RLIMIT_MODE = 1, set before any object
 * exists), fds[1 + i] a fresh VFIO cdev fd, not bound to anything, of the device at indexes[i].
 * The caller owns the n + 1 fds (close-on-exec) and hands them over. The devices are out from
 * then on: kh_device_bind refuses them, and every device of their IOMMU groups, until
 * kh_delegate_end says their holder is gone. -EBUSY when one is bound in a context or out
 * already; -EOPNOTSUPP without KH_CAP_DELEGATE, saying what the kernel lacks. All or nothing.
 */
#define KH_DELEGATE_MAX 16 /* devices in one delegation */
/* 0 when the backend can delegate (KH_CAP_DELEGATE); else -EOPNOTSUPP saying what it lacks. */
int kh_delegate_supported(const struct kh_backend *be);
int kh_delegate(struct kh_backend *be, const size_t *indexes, size_t n, int *ret_fds);
/* The devices an earlier process handed out with kh_delegate are out again, checked as
 * kh_delegate checks them, without opening anything: for a new daemon that follows on a
 * delegation the VMM still holds. All or nothing. */
int kh_delegate_resume(struct kh_backend *be, const size_t *indexes, size_t n);
/* The devices kh_delegate handed out are free again. */
void kh_delegate_end(struct kh_backend *be, const size_t *indexes, size_t n);

/* ---- domains -------------------------------------------------------------------------- */

enum kh_domain_type {
	KH_DOMAIN_BLOCKED,  /* all DMA faults */
	KH_DOMAIN_IDENTITY, /* IOVA == physical address */
	KH_DOMAIN_PAGING,   /* translated through page tables the helper manages */
	KH_DOMAIN_NESTED,   /* stage 1 owned by the caller, stage 2 a nest-parent paging domain */
};

#define KH_DOMAIN_F_DIRTY_TRACKING (1u << 0) /* paging: dirty tracking may be switched on */
#define KH_DOMAIN_F_NEST_PARENT	   (1u << 1) /* paging: may be the stage 2 of nested domains */

/* Stage-1 description for a nested domain. data_type says how to read data. */
enum kh_nest_data_type {
	KH_NEST_DATA_EMU_S1 = 1,    /* struct kh_emu_s1 (emulated backend) */
	KH_NEST_DATA_VTD_S1 = 0x100 /* struct iommu_hwpt_vtd_s1 (iommufd, Intel VT-d) */
};

struct kh_domain_alloc_args {
	enum kh_domain_type type;
	uint32_t flags;	    /* KH_DOMAIN_F_* */
	uint32_t parent_id; /* nested: the nest-parent domain; 0 otherwise */
	enum kh_nest_data_type data_type;
	const void *data; /* nested: the stage-1 description; NULL otherwise */
	size_t data_len;
};

/* Allocates a domain suited to device dev_id; the device is not attached by this. */
int kh_domain_alloc(struct kh_ctx *ctx, uint32_t dev_id, const struct kh_domain_alloc_args *args,
		    uint32_t *domain_id);
/* -EBUSY while devices are attached or nested domains use it as their parent. */
int kh_domain_free(struct kh_ctx *ctx, uint32_t domain_id);
int kh_domain_type(struct kh_ctx *ctx, uint32_t domain_id, enum kh_domain_type *type);
/* Bytes of the calling process's memory the domain's page tables take (the emulated IOMMU keeps
 * them there, up to 16 KiB for a 4 KiB mapping at a sparse IOVA), so that a caller can charge
 * them to whoever made the mappings; 0 where the kernel keeps the tables or there are none. */
int kh_domain_table_bytes(struct kh_ctx *ctx, uint32_t domain_id, uint64_t *ret_bytes);
/* What the domain can do, as KH_CAP_* bits: REPLACE (into it), MAP_FILE, COPY (into it),
 * DIRTY_TRACKING (it tracks), NESTING (it is a nest parent). */
int kh_domain_caps(struct kh_ctx *ctx, uint32_t domain_id, uint32_t *caps);

int kh_attach(struct kh_ctx *ctx, uint32_t dev_id, uint32_t domain_id);
/* Moves the device (and the rest of its group) to another domain without a window in which
 * DMA is blocked. Into the domain the device is in, it moves nothing but asks the kernel to
 * have the device there, attaching it again where a client detached it through its VFIO
 * descriptor; should the kernel refuse, the device is left detached, as the error says. */
int kh_replace(struct kh_ctx *ctx, uint32_t dev_id, uint32_t domain_id);
int kh_detach(struct kh_ctx *ctx, uint32_t dev_id);
/* Domain the device is attached to, or 0. */
int kh_device_domain(struct kh_ctx *ctx, uint32_t dev_id, uint32_t *domain_id);

/* ---- the IO address space of a paging domain ------------------------------------------ */

/*
 * Owners: a caller may keep its own data for a mapping (the memory it mapped, what it charged
 * for it) behind a cookie it gives in kh_map_req.owner, so that kernel-helper's record is the
 * only record of the mapping, as the kernel's IOAS area holds its pages reference.
 * kernel-helper never reads, frees or copies what the cookie points to: it keeps the pointer in
 * the record, gives it back in kh_mappings, and once the mapping has left the IOMMU (the page
 * tables changed and the IOTLB was synced: by kh_unmap, kh_domain_free or kh_ctx_destroy) calls
 * release with it, exactly once for each mapping, so the owner can free what it keeps. Mappings
 * that leave in one call, one after another in IOVA order with the same cookie (a batch of
 * pages of one file, say), are released in one call with their count and their bytes together:
 * a callback per page would cost an UnmapAll of small mappings a good part of its time. A
 * mapping is never split (kh_unmap takes whole mappings only), so the bytes are always those
 * of whole mappings as they were made. A failed kh_map or kh_copy keeps no cookie: the caller
 * still owns its data. release must not call kernel-helper on the context; mappings made with a
 * NULL owner are not reported.
 */
typedef void kh_owner_release_fn(void *owner, uint64_t count, uint64_t bytes, void *arg);
/* Sets the context's release callback, with arg passed to every call. Set it before mapping:
 * mappings that leave while none is set are not reported. */
void kh_ctx_set_owner_release(struct kh_ctx *ctx, kh_owner_release_fn *release, void *arg);

#define KH_PROT_READ  (1u << 0) /* the device may read the memory */
#define KH_PROT_WRITE (1u << 1) /* the device may write the memory */

#define KH_MAP_FIXED_IOVA (1u << 0) /* map exactly at req.iova; otherwise the helper picks */
/* The memory is [addr, addr+length) of the file fd (a memfd, shmem or hugetlbfs file), pinned by
 * the kernel without a mapping in this process. iommufd on Linux 6.13 and later only. While a
 * context is taken over, the caller keeps fd open until kh_ctx_adopt_end, which makes the
 * mapping again from it where the kernel no longer holds it whole. */
#define KH_MAP_FILE (1u << 1)
/* With KH_MAP_FIXED_IOVA: the range continues the mapping that ends right below req.iova, made
 * with the same owner, prot and flags, its memory right after that one's, and becomes part of
 * it, so that a mapping too costly to make in one call is made in parts and still is one mapping
 * (kh_mappings shows one, kh_unmap takes it whole, release sees it once). Place the whole with
 * kh_place first. -EINVAL without such a mapping. With KH_MAP_FILE, "right after" is in the
 * file: addr continues the offsets, and the caller gives the same file (which only it knows). */
#define KH_MAP_EXTEND (1u << 2)

struct kh_map_req {
	uint64_t iova;	      /* in with KH_MAP_FIXED_IOVA; out on success */
	uint64_t length;      /* bytes, a multiple of the smallest page size */
	uint64_t addr;	      /* virtual address of the memory, or offset in fd; page aligned */
	uint32_t prot;	      /* KH_PROT_* (at least one) */
	uint32_t flags;	      /* KH_MAP_* */
	uint64_t alignment;   /* allocated IOVA: power of two >= page size, 0 for the default */
	int32_t fd;	      /* with KH_MAP_FILE: open for the call; while taking over, until
			       * kh_ctx_adopt_end. The caller keeps it; ignored by kh_copy */
	void *owner;	      /* the caller's cookie for the mapping, or NULL; see "Owners" */
	uint64_t table_bytes; /* out on kh_map's success: kh_domain_table_bytes after it, which
			       * a caller charging the tables would ask next */
};

/* Maps [addr, addr+length) at an IOVA. -EEXIST if it overlaps a mapping; -EINVAL if it touches a
 * reserved range or lies outside the aperture; -ENOSPC if no free IOVA range fits. */
int kh_map(struct kh_ctx *ctx, uint32_t domain_id, struct kh_map_req *req);
/* Where kh_map would map req, by the same rules and with the same failures: fills req->iova
 * when the helper picks it; maps nothing. */
int kh_place(struct kh_ctx *ctx, uint32_t domain_id, struct kh_map_req *req);
/* Removes every mapping inside [iova, iova+length); all of them must lie wholly inside (-EINVAL
 * otherwise, nothing removed); -ENOENT if there is none. iova 0 and length UINT64_MAX remove
 * everything. unmapped (may be NULL) gives the bytes removed. A failure removes nothing, except
 * where the kernel removed some mappings all the same (-EPERM from vfio-type1 on a kernel that
 * lets only the process that made a mapping remove it): those leave the books too, released as
 * usual, and unmapped gives their bytes. */
int kh_unmap(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
	     uint64_t *unmapped);

/* Takes the end of the mapping that starts below iova and ends at iova+length-1 off, from iova,
 * the mapping staying, shorter: the inverse of KH_MAP_EXTEND, so that a mapping too costly to
 * remove in one call is removed in parts (the last with kh_unmap, which releases its owner).
 * A kernel removes only whole pieces of what it was given to map (one per KH_MAP_EXTEND call,
 * or one for the whole mapping, as vfio-type1 has after a replay): where iova falls inside one,
 * the cut moves down to the first of ever coarser power-of-two boundaries below the end that
 * the kernel takes. *ret_iova gets where the cut was made. -EINVAL without such a mapping;
 * -ENOENT when the kernel takes no cut above the mapping's own IOVA (kh_unmap removes it). */
int kh_unmap_tail(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t *ret_iova);

/* Which mappings kh_unmap_run takes: asked of each in IOVA order, with how many it took before
 * it; false leaves that one and every one after it. It must not call kernel-helper. */
typedef bool kh_unmap_take_fn(const struct kh_mapping *mapping, size_t taken, void *arg);
/* Removes a run of whole mappings: from the first that starts at or above iova, in IOVA order,
 * as far as take lets it and no further than those that start at or below last, as kh_unmap
 * removes a span (one backend call, owners released, a failure leaving every mapping in place
 * save what the kernel removed all the same, its bytes in *unmapped). The walk that asks take is
 * the one that finds the span, so a caller removing many mappings in bounded steps lists none
 * first. A mapping taken must end at or below last (-EINVAL, nothing removed: whole mappings
 * only); one that starts below iova is left alone. *ret_count gets how many went (0 where take
 * refused the first, or none starts in [iova, last]), *ret_more whether one that starts there
 * is left. */
int kh_unmap_run(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t last,
		 kh_unmap_take_fn *take, void *arg, uint64_t *unmapped, size_t *ret_count,
		 bool *ret_more);

/* Maps, in domain dst_id, the memory that [src_iova, src_iova+req->length) of domain src_id
 * maps, like IOMMU_IOAS_COPY: the pages are shared, not pinned again. The source range must lie
 * inside one mapping (-ENOENT where nothing is mapped, -EINVAL across mappings). req gives the
 * destination: iova (with KH_MAP_FIXED_IOVA), length, prot, alignment; addr and the
 * KH_MAP_FILE flag come out as the source's; req->owner is the new mapping's own. iommufd holds
 * the shared pages for the copy; the emulated IOMMU uses the memory by address, so its owner
 * must keep it while a copy maps it. req->fd is not read: a copy of a file mapping made while
 * taking over is not made again at kh_ctx_adopt_end (-ESTALE where the kernel lost it). */
int kh_copy(struct kh_ctx *ctx, uint32_t dst_id, struct kh_map_req *req, uint32_t src_id,
	    uint64_t src_iova);

struct kh_mapping {
	uint64_t iova;
	uint64_t length;
	uint64_t addr; /* virtual address, or offset in the file with KH_MAP_FILE */
	uint32_t prot;
	uint32_t flags; /* KH_MAP_FILE for memory mapped from a file */
	void *owner;	/* the cookie the mapping was made with */
};

/* Copies up to max mappings whose IOVA is >= from, in IOVA order; returns how many were
 * copied. Page through with from = last.iova + last.length. */
int kh_mappings(struct kh_ctx *ctx, uint32_t domain_id, uint64_t from, struct kh_mapping *out,
		size_t max);

/* IOVA ranges where mappings may go: aperture minus reserved ranges of attached devices, within
 * the allowed ranges if set. Copies up to max and returns the total count. */
int kh_iova_ranges(struct kh_ctx *ctx, uint32_t domain_id, struct kh_iova_range *out, size_t max);
/* Restricts IOVA allocation to these ranges (n == 0 lifts the restriction), like
 * IOMMU_IOAS_ALLOW_IOVAS. -EADDRINUSE if one covers a reserved range or leaves out a mapping. */
int kh_allow_iovas(struct kh_ctx *ctx, uint32_t domain_id, const struct kh_iova_range *ranges,
		   size_t n);

/* Physical (for the emulated backend: process virtual) address behind iova. */
int kh_iova_to_phys(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t *phys);
/* Invalidates the IOTLB for the whole domain, e.g. after changing a nested stage-1 table. */
int kh_flush_iotlb(struct kh_ctx *ctx, uint32_t domain_id);

/* ---- dirty tracking ------------------------------------------------------------------- */

int kh_set_dirty_tracking(struct kh_ctx *ctx, uint32_t domain_id, bool enable);

#define KH_DIRTY_NO_CLEAR (1u << 0) /* read the dirty bits without clearing them */

/* Sets bit i of bitmap when [iova + i*page_size, +page_size) was written by a device since the
 * last clear, or lies in a range kh_dirty_bits_lost marked that no clearing read covered yet.
 * bitmap holds ceil(length / page_size / 64) words and is cleared first. */
int kh_read_dirty(struct kh_ctx *ctx, uint32_t domain_id, uint64_t iova, uint64_t length,
		  uint64_t page_size, uint64_t *bitmap, uint32_t flags);
/* The dirty bits gathered before were lost (the domain was rebuilt, not taken over): every page
 * mapped now reads dirty until a clearing kh_read_dirty covers it, as VFIO type1 reports its
 * pinned pages, so that a migration misses no page written before. */
int kh_dirty_bits_lost(struct kh_ctx *ctx, uint32_t domain_id);

#ifdef __cplusplus
}
#endif

#endif
