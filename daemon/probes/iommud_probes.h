/* SPDX-License-Identifier: MIT */
/*
 * What the map/unmap histograms count, shared by the BPF programs (iommud.bpf.c) and the daemon
 * (probes.c): the key of one histogram, its buckets, and how a duration and a length fall into
 * them. It includes nothing, so that both a BPF object (types from vmlinux.h) and the daemon
 * (types from <linux/types.h>) can take it.
 *
 * The enums follow the schema's MapOp, MapLayer and SizeClass, less one: value + 1 is the
 * schema's, whose 0 is "unspecified".
 */
#ifndef IOMMUD_PROBES_SHARED_H
#define IOMMUD_PROBES_SHARED_H

/* Buckets of a latency histogram: bucket 0 holds 0 and 1 ns, bucket i [2^i, 2^(i+1)) ns; the
 * last also holds everything longer (2^36 ns is about 69 s). */
#define IOMMUD_HIST_BUCKETS 37

/* Tenant labels the kernel side can tell apart; 0 is "no tenant's". */
#define IOMMUD_TENANT_SLOTS 256

enum iommud_map_op {
	IOMMUD_OP_MAP,
	IOMMUD_OP_UNMAP,
	IOMMUD_OP_COUNT,
};

enum iommud_map_layer {
	IOMMUD_LAYER_IOMMU,	 /* iommu_map / iommu_unmap in the kernel */
	IOMMUD_LAYER_IOCTL,	 /* the whole IOMMU_IOAS_MAP / MAP_FILE / UNMAP ioctl */
	IOMMUD_LAYER_IN_PROCESS, /* the backend's map path inside the daemon */
	IOMMUD_LAYER_COUNT,
};

enum iommud_size_class {
	IOMMUD_SIZE_4K,
	IOMMUD_SIZE_2M,
	IOMMUD_SIZE_1G,
	IOMMUD_SIZE_OTHER,
	IOMMUD_SIZE_COUNT,
};

/* The kernel side's layers (IOMMU and IOCTL) and its histograms per tenant slot. */
#define IOMMUD_KERNEL_LAYERS	2
#define IOMMUD_HISTS_PER_TENANT (IOMMUD_OP_COUNT * IOMMUD_KERNEL_LAYERS * IOMMUD_SIZE_COUNT)

/* Where the kernel side keeps a histogram: an index into a per-CPU array, which a program finds
 * without hashing, and as many tenant slots as the daemon has labels (probes_options). */
static inline __u32 iommud_hist_index(__u32 tenant, __u32 op, __u32 layer, __u32 size_class)
{
	return ((tenant * IOMMUD_OP_COUNT + op) * IOMMUD_KERNEL_LAYERS + layer) *
		       IOMMUD_SIZE_COUNT +
	       size_class;
}

struct iommud_hist_key {
	__u32 tenant; /* slot, 0: no tenant's */
	__u8 op;      /* enum iommud_map_op */
	__u8 layer;   /* enum iommud_map_layer */
	__u8 size_class;
	__u8 pad;
};

struct iommud_hist {
	__u64 buckets[IOMMUD_HIST_BUCKETS]; /* all zero where only counts are known */
	__u64 count;
	__u64 sum_ns;
	__u64 bytes;
};

/* floor(log2(v)) for v >= 2, 0 below, capped at the last bucket; written with shifts only,
 * which the BPF verifier takes without loops. */
static inline __u32 iommud_hist_bucket(__u64 v)
{
	__u32 b = 0, shift;

	shift = (v > 0xFFFFFFFFull) << 5;
	v >>= shift;
	b |= shift;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	b |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	b |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	b |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	b |= shift;
	b |= (__u32)(v >> 1);
	return b < IOMMUD_HIST_BUCKETS ? b : IOMMUD_HIST_BUCKETS - 1;
}

/* Who registers what for attribution: the daemon's own iommufd descriptors (tgid, fd) and its
 * tenants' cgroups (cgroup v2 id), each to a tenant slot. */
struct iommud_fd_key {
	__u32 tgid;
	__s32 fd;
};

/* The map/unmap commands whose ioctl handler program attached (iommud_attribution.handled):
 * the system call hook leaves those to it, so that nothing counts twice, and measures the rest. */
#define IOMMUD_HANDLES_IOAS_MAP	     (1u << 0)
#define IOMMUD_HANDLES_IOAS_MAP_FILE (1u << 1)
#define IOMMUD_HANDLES_IOAS_UNMAP    (1u << 2)
#define IOMMUD_HANDLES_TYPE1	     (1u << 3) /* VFIO_IOMMU_MAP_DMA and UNMAP_DMA */

/* The daemon's process, the handlers attached, and the generation of its attribution entries
 * (probes.c bumps it). */
struct iommud_attribution {
	__u32 tgid;
	__u32 handled;
	__u64 gen;
};

/* A fault counter's name: the faulting device's where the driver reports it (AMD-Vi, ARM SMMU:
 * report_iommu_fault), else the IOMMU unit's that raised it ("dmar0", "virtio0"), where the
 * driver only logs the device (VT-d, virtio-iommu). */
#define IOMMUD_DEVICE_NAME 32

/* Fault sources (devices or IOMMU units) the kernel side tells apart. */
#define IOMMUD_FAULT_SOURCES 1024

struct iommud_fault_key {
	char device[IOMMUD_DEVICE_NAME];
};

static inline __u8 iommud_size_class(__u64 bytes)
{
	if (bytes == 4096)
		return IOMMUD_SIZE_4K;
	if (bytes == 2ull << 20)
		return IOMMUD_SIZE_2M;
	if (bytes == 1ull << 30)
		return IOMMUD_SIZE_1G;
	return IOMMUD_SIZE_OTHER;
}

#endif
