/* SPDX-License-Identifier: MIT */
/*
 * The emulated IOMMU: devices and groups from a topology, domains backed by real page tables
 * (emu_pgtable), a small IOTLB per domain, and a DMA engine that moves real bytes through them.
 *
 * Ownership: the backend owns its groups (emu_backend.groups) and each device's emu_dev
 * (kh_bdev.priv); a domain owns its page table; nested domains are linked into their parent's
 * child list so the parent's invalidations reach their IOTLBs.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include <kh/kh_emu.h>
#include <kh/kh_ops.h>

#include "alloc.h"
#include "emu_pgtable.h"

#define MSI_WINDOW_START 0xfee00000ull
#define MSI_WINDOW_LAST	 0xfeefffffull
#define IOTLB_ENTRIES	 64
#define ALL_PAGE_SIZES	 (EMU_SZ_4K | EMU_SZ_2M | EMU_SZ_1G)

struct topology;

struct emu_group {
	uint32_t number;
	struct emu_domain *domain; /* what DMA from the group's devices goes through */
	unsigned attached;	   /* devices of the group attached to domain */
};

struct emu_dev {
	struct emu_group *group;
	bool attached; /* counted in group->attached */
};

struct emu_backend {
	struct emu_group **groups;
	size_t n_groups;
	struct kh_emu_fault faults[KH_EMU_FAULT_QUEUE_LEN];
	size_t fault_head, fault_count;
	uint64_t faults_lost;
	struct topology *probing; /* the parsed topology, only while probe_devices runs */
};

struct iotlb_entry {
	bool valid;
	uint64_t iova_page;
	uint64_t addr_page;
	uint64_t prot;
	uint64_t *pte; /* stage-2 leaf entry, where DMA writes set the dirty bit */
};

struct emu_domain {
	struct kh_domain dom;
	struct emu_pgtable pt; /* paging domains */
	bool dirty_enabled;
	uint64_t s1_root; /* nested domains: stage-1 root, an IOVA of the parent */
	struct emu_domain *children, *next_sibling;
	struct iotlb_entry iotlb[IOTLB_ENTRIES];
};

static struct emu_domain *to_emu(struct kh_domain *dom)
{
	return (struct emu_domain *)((char *)dom - offsetof(struct emu_domain, dom));
}

static struct emu_backend *emu_of(const struct kh_backend *be)
{
	return be->priv;
}

/* ---- topology ------------------------------------------------------------------------ */

struct topology_device {
	char name[KH_NAME_MAX];
	bool listed; /* named in [iommu] devices; a section alone does not make a device */
	uint32_t group;
	bool group_set;
	uint64_t page_sizes;
	unsigned aperture_bits;
	bool dirty, nesting, msi_window;
	unsigned pasid_bits;
	struct kh_iova_range *resv;
	size_t n_resv;
};

struct topology {
	struct topology_device *devs;
	size_t n;
	bool paging_only; /* [iommu] domain-types = paging */
	char error[256];
};

static bool parse_bool(const char *value, bool *out)
{
	if (!strcasecmp(value, "yes") || !strcasecmp(value, "true") || !strcmp(value, "1"))
		*out = true;
	else if (!strcasecmp(value, "no") || !strcasecmp(value, "false") || !strcmp(value, "0"))
		*out = false;
	else
		return false;
	return true;
}

static bool parse_u64(const char *value, uint64_t *out)
{
	char *end;

	if (!*value || *value == '-')
		return false;
	errno = 0;
	*out = strtoull(value, &end, 0);
	return errno == 0 && *end == '\0';
}

static bool parse_page_sizes(const char *value, uint64_t *out)
{
	*out = 0;
	while (*value) {
		char *end;
		unsigned long n;

		if (isspace((unsigned char)*value) || *value == ',') {
			value++;
			continue;
		}
		n = strtoul(value, &end, 10);
		if (n == 4 && toupper((unsigned char)*end) == 'K')
			*out |= EMU_SZ_4K;
		else if (n == 2 && toupper((unsigned char)*end) == 'M')
			*out |= EMU_SZ_2M;
		else if (n == 1 && toupper((unsigned char)*end) == 'G')
			*out |= EMU_SZ_1G;
		else
			return false;
		value = end + 1;
	}
	return (*out & EMU_SZ_4K) != 0;
}

static bool parse_range(const char *value, struct kh_iova_range *out)
{
	char first[32];
	const char *dash = strchr(value, '-');

	if (!dash || (size_t)(dash - value) >= sizeof(first))
		return false;
	memcpy(first, value, (size_t)(dash - value));
	first[dash - value] = '\0';
	return parse_u64(first, &out->start) && parse_u64(dash + 1, &out->last) &&
	       out->start <= out->last;
}

static struct topology_device *topology_device(struct topology *topo, const char *name)
{
	struct topology_device *grown;

	for (size_t i = 0; i < topo->n; i++)
		if (!strcmp(topo->devs[i].name, name))
			return &topo->devs[i];
	grown = kh_realloc_array(topo->devs, topo->n + 1, sizeof(*grown));
	if (!grown)
		return NULL;
	topo->devs = grown;
	grown = &grown[topo->n++];
	*grown = (struct topology_device){
		.page_sizes = ALL_PAGE_SIZES,
		.aperture_bits = EMU_IOVA_BITS,
		.dirty = true,
		.nesting = true,
		.msi_window = true,
	};
	(void)snprintf(grown->name, sizeof(grown->name), "%s", name);
	return grown;
}

static int topology_fail(struct topology *topo, const char *section, const char *key,
			 const char *value, const char *expected)
{
	(void)snprintf(topo->error, sizeof(topo->error), "[%s] %s = %s: expected %s", section, key,
		       value, expected);
	return 0;
}

static int device_key(struct topology *topo, struct topology_device *dev, const char *section,
		      const char *key, const char *value)
{
	uint64_t n;

	if (!strcmp(key, "group")) {
		if (!parse_u64(value, &n) || n > UINT32_MAX)
			return topology_fail(topo, section, key, value, "a group number");
		dev->group = (uint32_t)n;
		dev->group_set = true;
	} else if (!strcmp(key, "page-sizes")) {
		if (!parse_page_sizes(value, &dev->page_sizes))
			return topology_fail(topo, section, key, value,
					     "sizes from 4K 2M 1G, 4K included");
	} else if (!strcmp(key, "aperture-bits")) {
		if (!parse_u64(value, &n) || n < 12 || n > EMU_IOVA_BITS)
			return topology_fail(topo, section, key, value, "a width from 12 to 48");
		dev->aperture_bits = (unsigned)n;
	} else if (!strcmp(key, "pasid-bits")) {
		if (!parse_u64(value, &n) || n > 20)
			return topology_fail(topo, section, key, value, "a width from 0 to 20");
		dev->pasid_bits = (unsigned)n;
	} else if (!strcmp(key, "dirty-tracking")) {
		if (!parse_bool(value, &dev->dirty))
			return topology_fail(topo, section, key, value, "yes or no");
	} else if (!strcmp(key, "nesting")) {
		if (!parse_bool(value, &dev->nesting))
			return topology_fail(topo, section, key, value, "yes or no");
	} else if (!strcmp(key, "msi-window")) {
		if (!parse_bool(value, &dev->msi_window))
			return topology_fail(topo, section, key, value, "yes or no");
	} else if (!strcmp(key, "reserved")) {
		struct kh_iova_range range, *grown;

		if (!parse_range(value, &range))
			return topology_fail(topo, section, key, value, "START-LAST, inclusive");
		grown = kh_realloc_array(dev->resv, dev->n_resv + 1, sizeof(*grown));
		if (!grown)
			return topology_fail(topo, section, key, value, "memory to record it");
		dev->resv = grown;
		grown[dev->n_resv++] = range;
	} else {
		return topology_fail(topo, section, key, value,
				     "one of group, page-sizes, aperture-bits, dirty-tracking, "
				     "nesting, pasid-bits, msi-window, reserved");
	}
	return 1;
}

static int list_devices(struct topology *topo, const char *value)
{
	char name[KH_NAME_MAX];

	while (*value) {
		size_t len = strcspn(value, " \t,");
		struct topology_device *dev;

		if (len == 0) {
			value++;
			continue;
		}
		if (len >= sizeof(name))
			return topology_fail(topo, "iommu", "devices", value,
					     "device names under 64 bytes");
		memcpy(name, value, len);
		name[len] = '\0';
		dev = topology_device(topo, name);
		if (!dev)
			return topology_fail(topo, "iommu", "devices", name, "memory to record it");
		if (dev->listed)
			return topology_fail(topo, "iommu", "devices", name,
					     "each device named once");
		dev->listed = true;
		value += len;
	}
	return 1;
}

static int topology_handler(void *user, const char *section, const char *key, const char *value)
{
	struct topology *topo = user;
	struct topology_device *dev;

	if (!strcmp(section, "iommu")) {
		if (!strcmp(key, "devices"))
			return list_devices(topo, value);
		if (strcmp(key, "domain-types"))
			return topology_fail(topo, section, key, value,
					     "the key devices or domain-types");
		if (!strcmp(value, "paging"))
			topo->paging_only = true;
		else if (strcmp(value, "all"))
			return topology_fail(topo, section, key, value, "all or paging");
		return 1;
	}
	if (strncmp(section, "device ", 7) || !section[7] || strlen(section + 7) >= KH_NAME_MAX)
		return topology_fail(topo, section, key, value,
				     "a section [iommu] or [device NAME] (NAME under 64 bytes)");
	dev = topology_device(topo, section + 7);
	if (!dev)
		return topology_fail(topo, section, key, value, "memory to record the device");
	return device_key(topo, dev, section, key, value);
}

static void topology_free(struct topology *topo)
{
	for (size_t i = 0; i < topo->n; i++)
		free(topo->devs[i].resv);
	free(topo->devs);
}

/* ---- the backend's devices and groups ------------------------------------------------------ */

static struct emu_group *group_get(struct emu_backend *emu, uint32_t number)
{
	struct emu_group **grown, *group;

	for (size_t i = 0; i < emu->n_groups; i++)
		if (emu->groups[i]->number == number)
			return emu->groups[i];
	grown = kh_realloc_array(emu->groups, emu->n_groups + 1, sizeof(*grown));
	if (!grown)
		return NULL;
	emu->groups = grown;
	group = kh_zalloc(sizeof(*group));
	if (!group)
		return NULL;
	group->number = number;
	grown[emu->n_groups++] = group;
	return group;
}

static int add_device(struct kh_backend *be, const struct topology_device *t, uint32_t group)
{
	struct emu_backend *emu = emu_of(be);
	struct kh_bdev *bdev;
	struct emu_dev *edev;
	size_t n_resv = t->n_resv + (t->msi_window ? 1 : 0);
	int rc;

	edev = kh_zalloc(sizeof(*edev));
	if (!edev)
		return kh_fail(-ENOMEM, "cannot allocate emulated device %s", t->name);
	edev->group = group_get(emu, group);
	if (!edev->group) {
		free(edev);
		return kh_fail(-ENOMEM, "cannot allocate IOMMU group %u", group);
	}
	rc = kh_backend_add_device(be, &bdev);
	if (rc < 0) {
		free(edev);
		return rc;
	}
	bdev->priv = edev;
	if (n_resv) {
		bdev->resv = kh_realloc_array(NULL, n_resv, sizeof(*bdev->resv));
		if (!bdev->resv)
			return kh_fail(-ENOMEM, "cannot record %s's reserved ranges", t->name);
		if (t->n_resv)
			memcpy(bdev->resv, t->resv, t->n_resv * sizeof(*t->resv));
		if (t->msi_window)
			bdev->resv[t->n_resv] =
				(struct kh_iova_range){MSI_WINDOW_START, MSI_WINDOW_LAST};
		bdev->n_resv = n_resv;
	}
	(void)snprintf(bdev->info.name, sizeof(bdev->info.name), "%s", t->name);
	(void)snprintf(bdev->info.driver, sizeof(bdev->info.driver), "emulated");
	bdev->info.group = group;
	bdev->info.hw = (struct kh_hw_info){
		.page_sizes = t->page_sizes,
		.aperture_start = 0,
		.aperture_last = (1ull << t->aperture_bits) - 1,
		.dirty_tracking = t->dirty,
		.nesting = t->nesting,
		.pasid_bits = (uint8_t)t->pasid_bits,
	};
	return 0;
}

static int emu_probe_devices(struct kh_backend *be)
{
	struct topology *topo = emu_of(be)->probing;
	uint32_t next_free = 0;

	for (size_t i = 0; i < topo->n; i++)
		if (topo->devs[i].group_set && topo->devs[i].group >= next_free)
			next_free = topo->devs[i].group + 1;
	for (size_t i = 0; i < topo->n; i++) {
		struct topology_device *t = &topo->devs[i];
		int rc;

		if (topo->paging_only)
			t->dirty = t->nesting = false;
		rc = add_device(be, t, t->group_set ? t->group : next_free++);

		if (rc < 0)
			return rc;
	}
	return 0;
}

static void emu_release(struct kh_backend *be)
{
	struct emu_backend *emu = emu_of(be);

	for (size_t i = 0; i < be->n_devices; i++)
		free(be->devices[i].priv);
	if (!emu)
		return;
	for (size_t i = 0; i < emu->n_groups; i++)
		free(emu->groups[i]);
	free(emu->groups);
	free(emu);
}

/* Contexts and bindings need no state of their own here: the core keeps the books. */
static int emu_ctx_open(struct kh_ctx *ctx)
{
	(void)ctx;
	return kh_fail_point() ? kh_fail(-ENOMEM, "emulated context setup failed (injected)") : 0;
}

static void emu_ctx_close(struct kh_ctx *ctx)
{
	(void)ctx;
}

static int emu_bind(struct kh_ctx *ctx, struct kh_device *dev)
{
	(void)ctx;
	if (kh_fail_point())
		return kh_fail(-EIO, "binding %s failed (injected)", dev->bdev->info.name);
	return 0;
}

/* ---- the IOTLB --------------------------------------------------------------------------- */

static struct iotlb_entry *iotlb_slot(struct emu_domain *ed, uint64_t iova)
{
	return &ed->iotlb[(iova >> 12) % IOTLB_ENTRIES];
}

static void iotlb_flush_all(struct emu_domain *ed)
{
	for (size_t i = 0; i < IOTLB_ENTRIES; i++)
		ed->iotlb[i].valid = false;
	/* Nested domains cache translations through this domain's table. */
	for (struct emu_domain *child = ed->children; child; child = child->next_sibling)
		iotlb_flush_all(child);
}

static void emu_iotlb_sync(struct kh_domain *dom, uint64_t iova, uint64_t length)
{
	struct emu_domain *ed = to_emu(dom);
	uint64_t last = iova + length - 1;

	for (size_t i = 0; i < IOTLB_ENTRIES; i++)
		if (ed->iotlb[i].iova_page >= (iova & ~0xfffull) && ed->iotlb[i].iova_page <= last)
			ed->iotlb[i].valid = false;
	for (struct emu_domain *child = ed->children; child; child = child->next_sibling)
		iotlb_flush_all(child);
}

static int emu_flush_iotlb_all(struct kh_domain *dom)
{
	iotlb_flush_all(to_emu(dom));
	return 0;
}

/* ---- domains ------------------------------------------------------------------------------ */

static bool device_fits(const struct kh_domain *dom, const struct kh_device *dev)
{
	const struct kh_hw_info *hw = &dev->bdev->info.hw;

	if (dom->type != KH_DOMAIN_PAGING)
		return true;
	return (dom->page_sizes & ~hw->page_sizes) == 0 &&
	       dom->aperture_last <= hw->aperture_last &&
	       (!(dom->flags & KH_DOMAIN_F_DIRTY_TRACKING) || hw->dirty_tracking) &&
	       (!(dom->flags & KH_DOMAIN_F_NEST_PARENT) || hw->nesting);
}

static int check_fits(const struct kh_domain *dom, const struct kh_device *dev)
{
	if (kh_fail_point())
		return kh_fail(-EIO, "attaching %s failed (injected)", dev->bdev->info.name);
	if (!device_fits(dom, dev))
		return kh_fail(-EINVAL,
			       "domain %u needs page sizes, aperture or features that %s's IOMMU "
			       "lacks; allocate a domain for this device",
			       dom->id, dev->bdev->info.name);
	return 0;
}

static struct emu_dev *emu_dev_of(const struct kh_device *dev)
{
	return dev->bdev->priv;
}

/* The device joins its group's users of dom, where DMA from the group now goes. */
static void emu_dev_join(struct emu_dev *ed, struct kh_domain *dom)
{
	if (!ed->attached)
		ed->group->attached++;
	ed->attached = true;
	ed->group->domain = to_emu(dom);
}

/* The group is blocked once its last attached device leaves. */
static void emu_dev_leave(struct emu_dev *ed)
{
	if (ed->attached && --ed->group->attached == 0)
		ed->group->domain = NULL;
	ed->attached = false;
}

static int emu_attach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	int rc = check_fits(dom, dev);

	if (rc == 0)
		emu_dev_join(emu_dev_of(dev), dom);
	return rc;
}

/* As the kernel's replace, this also attaches a device that left behind the core's back
 * (kh_emu_detach_behind), whatever old the books name. */
static int emu_replace_dev(struct kh_domain *dom, struct kh_device *dev, struct kh_domain *old)
{
	(void)old;
	return emu_attach_dev(dom, dev);
}

static int emu_detach_dev(struct kh_domain *dom, struct kh_device *dev)
{
	(void)dom;
	emu_dev_leave(emu_dev_of(dev));
	return 0;
}

int kh_emu_detach_behind(struct kh_backend *be, const char *device)
{
	int index;

	if (be->ops->kind != KH_BACKEND_EMULATED)
		return kh_fail(-EOPNOTSUPP,
			       "only the emulated backend detaches devices behind the core");
	index = kh_device_lookup(be, device);
	if (index < 0)
		return index;
	emu_dev_leave(be->devices[index].priv);
	return 0;
}

static uint64_t prot_to_pte(uint32_t prot)
{
	return ((prot & KH_PROT_READ) ? EMU_PTE_R : 0) | ((prot & KH_PROT_WRITE) ? EMU_PTE_W : 0);
}

static int emu_map(struct kh_domain *dom, uint64_t iova, uint64_t addr, uint64_t length,
		   uint32_t prot)
{
	int rc;

	if (kh_fail_point())
		return kh_fail(-EIO, "mapping failed (injected)");
	rc = emu_pgtable_map(&to_emu(dom)->pt, iova, addr, length, prot_to_pte(prot),
			     dom->page_sizes);
	if (rc < 0)
		return kh_fail(rc, "cannot map IOVA 0x%" PRIx64 " + 0x%" PRIx64 " in domain %u",
			       iova, length, dom->id);
	return 0;
}

/* The emulated IOMMU pins nothing, so sharing another mapping's memory is mapping it again. */
static int emu_copy(struct kh_domain *dom, uint64_t iova, struct kh_domain *src, uint64_t src_iova,
		    uint64_t length, uint32_t prot, uint64_t addr)
{
	(void)src;
	(void)src_iova;
	return emu_map(dom, iova, addr, length, prot);
}

static int emu_unmap(struct kh_domain *dom, uint64_t iova, uint64_t length)
{
	int rc;

	if (kh_fail_point())
		return kh_fail(-EIO, "unmapping failed (injected)");
	rc = emu_pgtable_unmap(&to_emu(dom)->pt, iova, length, NULL);
	if (rc < 0)
		return kh_fail(rc, "cannot unmap IOVA 0x%" PRIx64 " + 0x%" PRIx64 " in domain %u",
			       iova, length, dom->id);
	return 0;
}

static int emu_set_dirty_tracking(struct kh_domain *dom, bool enable)
{
	if (kh_fail_point())
		return kh_fail(-EIO, "switching dirty tracking failed (injected)");
	to_emu(dom)->dirty_enabled = enable;
	return 0;
}

static int emu_read_and_clear_dirty(struct kh_domain *dom, uint64_t iova, uint64_t length,
				    uint64_t page_size, uint64_t *bitmap, uint32_t flags)
{
	struct emu_domain *ed = to_emu(dom);
	bool no_clear = flags & KH_DIRTY_NO_CLEAR;

	emu_pgtable_read_dirty(&ed->pt, iova, length, page_size, bitmap, no_clear);
	/* A cached translation would let a write skip setting the bit again. */
	if (!no_clear)
		emu_iotlb_sync(dom, iova, length);
	return 0;
}

/* Set in a domain allocated with KH_DOMAIN_F_DIRTY_TRACKING. */
static const struct kh_dirty_ops emu_dirty_ops = {
	.set_dirty_tracking = emu_set_dirty_tracking,
	.read_and_clear_dirty = emu_read_and_clear_dirty,
};

static void unlink_child(struct emu_domain *ed)
{
	struct emu_domain **link;

	if (!ed->dom.parent)
		return;
	for (link = &to_emu(ed->dom.parent)->children; *link; link = &(*link)->next_sibling) {
		if (*link == ed) {
			*link = ed->next_sibling;
			return;
		}
	}
}

static void emu_free(struct kh_domain *dom)
{
	struct emu_domain *ed = to_emu(dom);

	unlink_child(ed);
	if (dom->type == KH_DOMAIN_PAGING)
		emu_pgtable_destroy(&ed->pt);
	free(ed);
}

/* ---- translation --------------------------------------------------------------------------- */

struct translation {
	uint64_t addr;
	uint64_t prot;
	uint64_t *pte; /* stage-2 leaf, NULL for identity */
};

static enum kh_emu_fault_reason denied(enum kh_emu_dma_dir dir)
{
	return dir == KH_EMU_DMA_TO_MEMORY ? KH_EMU_FAULT_WRITE_DENIED : KH_EMU_FAULT_READ_DENIED;
}

static uint64_t needed_prot(enum kh_emu_dma_dir dir)
{
	return dir == KH_EMU_DMA_TO_MEMORY ? EMU_PTE_W : EMU_PTE_R;
}

/* Stage 2: a paging domain's own table. */
static int walk_paging(struct emu_domain *ed, uint64_t iova, struct translation *out)
{
	struct emu_translation t;

	if (emu_pgtable_lookup(&ed->pt, iova, &t) < 0)
		return -KH_EMU_FAULT_NOT_PRESENT - 1;
	*out = (struct translation){t.addr, t.prot, t.pte};
	return 0;
}

/* Stage 1 of a nested domain: the owner's table, read through the parent's translation. */
static int walk_nested(struct emu_domain *ed, uint64_t iova, struct translation *out)
{
	struct emu_domain *parent = to_emu(ed->dom.parent);
	uint64_t table = ed->s1_root, prot = EMU_PTE_R | EMU_PTE_W;
	struct translation s2;

	for (int level = EMU_PGTABLE_LEVELS; level >= 1; level--) {
		unsigned shift = 12 + 9 * (unsigned)(level - 1);
		uint64_t entry_iova = table + ((iova >> shift) & 511) * 8;
		uint64_t entry;

		if (walk_paging(parent, entry_iova, &s2) < 0 || !(s2.prot & EMU_PTE_R))
			return -KH_EMU_FAULT_STAGE1_BROKEN - 1;
		memcpy(&entry, (const void *)(uintptr_t)s2.addr, sizeof(entry));
		if (!(entry & (EMU_PTE_R | EMU_PTE_W)))
			return -KH_EMU_FAULT_NOT_PRESENT - 1;
		prot &= entry & (EMU_PTE_R | EMU_PTE_W);
		if (level == 1 || ((entry & EMU_PTE_PS) && level <= 3)) {
			uint64_t ipa = (entry & EMU_PTE_ADDR_MASK & ~((1ull << shift) - 1)) |
				       (iova & ((1ull << shift) - 1));

			if (walk_paging(parent, ipa, &s2) < 0)
				return -KH_EMU_FAULT_NOT_PRESENT - 1;
			*out = (struct translation){s2.addr, prot & s2.prot, s2.pte};
			return 0;
		}
		table = entry & EMU_PTE_ADDR_MASK;
	}
	return -KH_EMU_FAULT_STAGE1_BROKEN - 1;
}

/* Translates one 4 KiB page of DMA; a negative return is -(fault reason) - 1. */
static int translate(struct emu_domain *ed, uint64_t iova, enum kh_emu_dma_dir dir,
		     struct translation *out)
{
	struct iotlb_entry *slot;
	int rc;

	if (!ed || ed->dom.type == KH_DOMAIN_BLOCKED)
		return -KH_EMU_FAULT_BLOCKED - 1;
	if (ed->dom.type == KH_DOMAIN_IDENTITY) {
		*out = (struct translation){iova, EMU_PTE_R | EMU_PTE_W, NULL};
		return 0;
	}
	slot = iotlb_slot(ed, iova);
	if (slot->valid && slot->iova_page == (iova & ~0xfffull)) {
		*out = (struct translation){slot->addr_page | (iova & 0xfff), slot->prot,
					    slot->pte};
	} else {
		rc = ed->dom.type == KH_DOMAIN_NESTED ? walk_nested(ed, iova, out)
						      : walk_paging(ed, iova, out);
		if (rc < 0)
			return rc;
		*slot = (struct iotlb_entry){true, iova & ~0xfffull, out->addr & ~0xfffull,
					     out->prot, out->pte};
	}
	if (!(out->prot & needed_prot(dir)))
		return -(int)denied(dir) - 1;
	return 0;
}

static struct emu_domain *dirty_tracker(struct emu_domain *ed)
{
	return ed->dom.type == KH_DOMAIN_NESTED ? to_emu(ed->dom.parent) : ed;
}

static void record_fault(struct kh_backend *be, const char *device, uint64_t iova,
			 enum kh_emu_dma_dir dir, enum kh_emu_fault_reason reason)
{
	struct emu_backend *emu = emu_of(be);
	size_t at = (emu->fault_head + emu->fault_count) % KH_EMU_FAULT_QUEUE_LEN;
	struct kh_emu_fault *f = &emu->faults[at];

	if (emu->fault_count == KH_EMU_FAULT_QUEUE_LEN) {
		emu->fault_head = (emu->fault_head + 1) % KH_EMU_FAULT_QUEUE_LEN;
		emu->faults_lost++;
	} else {
		emu->fault_count++;
	}
	(void)snprintf(f->device, sizeof(f->device), "%s", device);
	f->iova = iova;
	f->dir = dir;
	f->reason = reason;
}

int kh_emu_dma(struct kh_backend *be, const char *device, uint64_t iova, void *buf, size_t len,
	       enum kh_emu_dma_dir dir)
{
	struct emu_domain *ed;
	struct translation t;
	uint64_t last;
	int index, rc;

	if (be->ops->kind != KH_BACKEND_EMULATED)
		return kh_fail(-EOPNOTSUPP, "DMA can only be emulated on the emulated backend");
	index = kh_device_lookup(be, device);
	if (index < 0)
		return index;
	if (len == 0 || __builtin_add_overflow(iova, (uint64_t)len - 1, &last))
		return kh_fail(-EINVAL, "DMA of %zu bytes at IOVA 0x%" PRIx64 " is not a range",
			       len, iova);
	ed = ((struct emu_dev *)be->devices[index].priv)->group->domain;

	/* Translate everything first: a fault must leave memory untouched. */
	for (uint64_t page = iova & ~0xfffull;; page += 0x1000) {
		uint64_t at = page < iova ? iova : page;

		rc = translate(ed, at, dir, &t);
		if (rc < 0) {
			record_fault(be, device, at, dir, (enum kh_emu_fault_reason)(-rc - 1));
			return kh_fail(-EFAULT, "DMA by %s at IOVA 0x%" PRIx64 " faulted", device,
				       at);
		}
		if (page >= (last & ~0xfffull))
			break;
	}
	for (uint64_t done = 0; done < len;) {
		uint64_t at = iova + done;
		size_t chunk = 0x1000 - (at & 0xfff);

		if (chunk > len - done)
			chunk = len - done;
		/* Cannot fault: the first pass translated every page. */
		(void)translate(ed, at, dir, &t);
		if (dir == KH_EMU_DMA_TO_MEMORY) {
			memcpy((void *)(uintptr_t)t.addr, (char *)buf + done, chunk);
			if (t.pte && dirty_tracker(ed)->dirty_enabled)
				*t.pte |= EMU_PTE_A | EMU_PTE_D;
		} else {
			memcpy((char *)buf + done, (const void *)(uintptr_t)t.addr, chunk);
			if (t.pte)
				*t.pte |= EMU_PTE_A;
		}
		done += chunk;
	}
	return 0;
}

size_t kh_emu_faults(struct kh_backend *be, struct kh_emu_fault *out, size_t max)
{
	struct emu_backend *emu = emu_of(be);
	size_t n = 0;

	if (be->ops->kind != KH_BACKEND_EMULATED)
		return 0;
	for (; n < max && emu->fault_count; n++, emu->fault_count--) {
		out[n] = emu->faults[emu->fault_head];
		emu->fault_head = (emu->fault_head + 1) % KH_EMU_FAULT_QUEUE_LEN;
	}
	return n;
}

uint64_t kh_emu_faults_lost(const struct kh_backend *be)
{
	return be->ops->kind == KH_BACKEND_EMULATED ? emu_of(be)->faults_lost : 0;
}

static int emu_iova_to_phys(struct kh_domain *dom, uint64_t iova, uint64_t *phys)
{
	struct translation t;
	int rc = translate(to_emu(dom), iova, KH_EMU_DMA_FROM_MEMORY, &t);

	/* Only presence matters for a lookup; a write-only mapping still translates. */
	if (rc < 0 && rc != -(int)KH_EMU_FAULT_READ_DENIED - 1)
		return kh_fail(-ENOENT, "nothing is mapped at IOVA 0x%" PRIx64 " in domain %u",
			       iova, dom->id);
	*phys = t.addr;
	return 0;
}

static uint64_t emu_table_bytes(struct kh_domain *dom)
{
	return to_emu(dom)->pt.table_pages * EMU_SZ_4K;
}

/* ---- ops tables: chosen per domain at allocation ------------------------------------------ */

/* Every emulated domain takes devices through their group and frees itself alike. */
#define EMU_DOMAIN_COMMON_OPS                                                                      \
	.attach_dev = emu_attach_dev, .replace_dev = emu_replace_dev,                              \
	.detach_dev = emu_detach_dev, .free = emu_free

static const struct kh_domain_ops emu_blocked_ops = {EMU_DOMAIN_COMMON_OPS};

static const struct kh_domain_ops emu_identity_ops = {
	EMU_DOMAIN_COMMON_OPS,
	.iova_to_phys = emu_iova_to_phys,
};

static const struct kh_domain_ops emu_paging_ops = {
	EMU_DOMAIN_COMMON_OPS,
	.map = emu_map,
	.copy = emu_copy,
	.unmap = emu_unmap,
	.iova_to_phys = emu_iova_to_phys,
	.iotlb_sync = emu_iotlb_sync,
	.flush_iotlb_all = emu_flush_iotlb_all,
	.table_bytes = emu_table_bytes,
};

static const struct kh_domain_ops emu_nested_ops = {
	EMU_DOMAIN_COMMON_OPS,
	.iova_to_phys = emu_iova_to_phys,
	.flush_iotlb_all = emu_flush_iotlb_all,
};

static int emu_alloc_paging(struct kh_device *dev, uint32_t flags, struct kh_domain **out)
{
	const struct kh_hw_info *hw = &dev->bdev->info.hw;
	struct emu_domain *ed;
	int rc;

	if ((flags & KH_DOMAIN_F_DIRTY_TRACKING) && !hw->dirty_tracking)
		return kh_fail(-EOPNOTSUPP, "%s's IOMMU cannot track dirty pages",
			       dev->bdev->info.name);
	if ((flags & KH_DOMAIN_F_NEST_PARENT) && !hw->nesting)
		return kh_fail(-EOPNOTSUPP, "%s's IOMMU cannot nest translations",
			       dev->bdev->info.name);
	ed = kh_zalloc(sizeof(*ed));
	if (!ed)
		return kh_fail(-ENOMEM, "cannot allocate a domain");
	rc = emu_pgtable_init(&ed->pt);
	if (rc < 0) {
		free(ed);
		return kh_fail(rc, "cannot allocate a page table");
	}
	ed->dom.ops = &emu_paging_ops;
	ed->dom.dirty_ops = (flags & KH_DOMAIN_F_DIRTY_TRACKING) ? &emu_dirty_ops : NULL;
	ed->dom.type = KH_DOMAIN_PAGING;
	ed->dom.flags = flags;
	ed->dom.page_sizes = hw->page_sizes;
	ed->dom.aperture_start = hw->aperture_start;
	ed->dom.aperture_last = hw->aperture_last;
	*out = &ed->dom;
	return 0;
}

static int emu_domain_alloc(struct kh_device *dev, const struct kh_domain_alloc_args *args,
			    struct kh_domain *parent, struct kh_domain **out)
{
	static const struct kh_domain_ops *const fixed_ops[] = {
		[KH_DOMAIN_BLOCKED] = &emu_blocked_ops,
		[KH_DOMAIN_IDENTITY] = &emu_identity_ops,
	};
	struct emu_domain *ed;

	if (args->type == KH_DOMAIN_PAGING)
		return emu_alloc_paging(dev, args->flags, out);
	if (args->type == KH_DOMAIN_NESTED) {
		const struct kh_emu_s1 *s1 = args->data;

		if (args->data_type != KH_NEST_DATA_EMU_S1 || args->data_len != sizeof(*s1))
			return kh_fail(-EINVAL,
				       "the emulated IOMMU takes a struct kh_emu_s1 (type %d, %zu "
				       "bytes) as stage-1 data",
				       KH_NEST_DATA_EMU_S1, sizeof(*s1));
		if (s1->root_iova & 0xfff)
			return kh_fail(-EINVAL, "stage-1 root 0x%" PRIx64 " is not page aligned",
				       s1->root_iova);
		if (!dev->bdev->info.hw.nesting)
			return kh_fail(-EOPNOTSUPP, "%s's IOMMU cannot nest translations",
				       dev->bdev->info.name);
	}
	ed = kh_zalloc(sizeof(*ed));
	if (!ed)
		return kh_fail(-ENOMEM, "cannot allocate a domain");
	ed->dom.type = args->type;
	if (args->type == KH_DOMAIN_NESTED) {
		struct emu_domain *pe = to_emu(parent);

		ed->dom.ops = &emu_nested_ops;
		ed->s1_root = ((const struct kh_emu_s1 *)args->data)->root_iova;
		ed->next_sibling = pe->children;
		pe->children = ed;
	} else {
		ed->dom.ops = fixed_ops[args->type];
	}
	*out = &ed->dom;
	return 0;
}

/* What both shapes of the emulated IOMMU share: the topology's devices, no per-context state. */
#define EMU_BACKEND_COMMON_OPS                                                                     \
	.kind = KH_BACKEND_EMULATED, .name = "emulated", .probe_devices = emu_probe_devices,       \
	.release = emu_release, .ctx_open = emu_ctx_open, .ctx_close = emu_ctx_close,              \
	.bind = emu_bind

/* Nothing is remapped (no KH_CAP_DMA_REMAPPING): the devices are the emulation's own. */
#define EMU_CAPS (KH_CAP_MAP_IN_PROCESS | KH_CAP_REPLACE | KH_CAP_COPY)

static const struct kh_backend_ops emu_ops = {
	EMU_BACKEND_COMMON_OPS,
	.caps = EMU_CAPS | KH_CAP_DIRTY_TRACKING | KH_CAP_NESTING | KH_CAP_BLOCKED_DOMAIN |
		KH_CAP_IDENTITY_DOMAIN,
	.domain_alloc = emu_domain_alloc,
};

/* An IOMMU with one kind of domain and no dirty tracking or nesting: the core allocates through
 * alloc_paging and gives every domain the default ops, as most simple IOMMU drivers do. */
static const struct kh_backend_ops emu_paging_only_ops = {
	EMU_BACKEND_COMMON_OPS,
	.caps = EMU_CAPS,
	.alloc_paging = emu_alloc_paging,
	.default_domain_ops = &emu_paging_ops,
};

static int open_topology(struct topology *topo, const char *origin, int line,
			 struct kh_backend **out)
{
	struct emu_backend *emu;
	int rc;

	if (line != 0) {
		rc = kh_fail(-EINVAL, "%s line %d: %s", origin, line,
			     topo->error[0] ? topo->error
					    : "not a section, key = value or comment");
		goto out;
	}
	for (size_t i = 0; i < topo->n; i++) {
		if (!topo->devs[i].listed) {
			rc = kh_fail(
				-EINVAL,
				"%s: [device %s] configures a device that [iommu] devices does "
				"not list; add it there",
				origin, topo->devs[i].name);
			goto out;
		}
	}
	if (topo->n == 0) {
		if (!topology_device(topo, "emu0")) {
			rc = kh_fail(-ENOMEM, "cannot record the default device");
			goto out;
		}
		topo->devs[0].listed = true;
	}
	emu = kh_zalloc(sizeof(*emu));
	if (!emu) {
		rc = kh_fail(-ENOMEM, "cannot allocate the emulated backend");
		goto out;
	}
	emu->probing = topo;
	rc = kh_backend_create(topo->paging_only ? &emu_paging_only_ops : &emu_ops, emu, out);
	if (rc == 0)
		emu->probing = NULL;
out:
	topology_free(topo);
	return rc;
}

int kh_backend_open_emulated(const char *topology_path, struct kh_backend **out)
{
	struct topology topo = {0};
	int line = 0;

	if (topology_path) {
		line = ini_parse(topology_path, topology_handler, &topo);
		if (line < 0) {
			topology_free(&topo);
			return kh_fail(-ENOENT, "cannot read the topology file %s", topology_path);
		}
	}
	return open_topology(&topo, topology_path ? topology_path : "default topology", line, out);
}

int kh_backend_open_emulated_text(const char *topology_text, struct kh_backend **out)
{
	struct topology topo = {0};
	int line = ini_parse_string(topology_text, topology_handler, &topo);

	return open_topology(&topo, "topology", line, out);
}
