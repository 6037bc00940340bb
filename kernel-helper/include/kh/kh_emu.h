/* SPDX-License-Identifier: MIT */
/*
 * The emulated backend's own controls: its DMA engine and fault queue, for tests, demos and
 * benchmarks on machines without an IOMMU.
 *
 * Topology (kh_backend_open_emulated): an INI file. [iommu] lists the devices; a section per
 * device may change its defaults:
 *
 *   [iommu]
 *   devices = edu0 edu1 nic0     ; the devices, in this order (default: one called emu0)
 *   domain-types = all           ; all, or paging for an IOMMU with paging domains only
 *                                ; (and then no dirty tracking or nesting)
 *
 *   [device edu0]
 *   group = 3                    ; IOMMU group number (default: a group of its own)
 *   page-sizes = 4K 2M 1G        ; leaf sizes the IOMMU supports (default: all three)
 *   aperture-bits = 48           ; IOVA width, 12..48 (default 48)
 *   dirty-tracking = yes         ; default yes
 *   nesting = yes                ; default yes
 *   pasid-bits = 20              ; default 0
 *   msi-window = yes             ; reserve 0xfee00000-0xfeefffff, as on x86 (default yes)
 *   reserved = 0x1000-0x1fff     ; more reserved ranges, inclusive; the key may repeat
 *
 * Emulated "physical" addresses are the process's virtual addresses, so DMA moves real bytes.
 */
#ifndef KH_KH_EMU_H
#define KH_KH_EMU_H

#include <kh/kh.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Stage-1 description of an emulated nested domain (KH_NEST_DATA_EMU_S1): the root of a
 * 4-level table in the emulated page-table format, addressed in the nest parent's IOVA space,
 * as a guest's table lives in guest-physical memory. */
struct kh_emu_s1 {
	uint64_t root_iova;
};

enum kh_emu_dma_dir {
	KH_EMU_DMA_FROM_MEMORY, /* the device reads memory */
	KH_EMU_DMA_TO_MEMORY,	/* the device writes memory */
};

enum kh_emu_fault_reason {
	KH_EMU_FAULT_BLOCKED,	    /* the device's group has no translating domain */
	KH_EMU_FAULT_NOT_PRESENT,   /* no mapping at the IOVA */
	KH_EMU_FAULT_READ_DENIED,   /* the mapping does not allow device reads */
	KH_EMU_FAULT_WRITE_DENIED,  /* the mapping does not allow device writes */
	KH_EMU_FAULT_STAGE1_BROKEN, /* a nested stage-1 table could not be walked */
};

struct kh_emu_fault {
	char device[KH_NAME_MAX];
	uint64_t iova;
	enum kh_emu_dma_dir dir;
	enum kh_emu_fault_reason reason;
};

/* The device `device` transfers len bytes between buf and IOVA iova, through the domain its
 * group is attached to. The whole range is translated before a byte moves: on a fault nothing
 * moves, the fault is queued and -EFAULT returned. Dirty bits are set on writes when the domain
 * tracks them. */
int kh_emu_dma(struct kh_backend *be, const char *device, uint64_t iova, void *buf, size_t len,
	       enum kh_emu_dma_dir dir);

/* The device leaves its domain without the core knowing, as a client holding the device's VFIO
 * descriptor can make it do on a real kernel (VFIO_DEVICE_DETACH_IOMMUFD_PT): its DMA is
 * blocked while the context's books still say it is attached. */
int kh_emu_detach_behind(struct kh_backend *be, const char *device);

/* Takes up to max queued faults, oldest first; returns how many. The queue keeps the newest
 * KH_EMU_FAULT_QUEUE_LEN faults; older ones are counted in kh_emu_faults_lost. */
#define KH_EMU_FAULT_QUEUE_LEN 256
size_t kh_emu_faults(struct kh_backend *be, struct kh_emu_fault *out, size_t max);
uint64_t kh_emu_faults_lost(const struct kh_backend *be);

#ifdef __cplusplus
}
#endif

#endif
