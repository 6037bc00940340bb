/* SPDX-License-Identifier: MIT */
/*
 * The map/unmap histograms and what fills them: BPF programs on the kernel's map path (the
 * IOMMU driver's iommu_map/iommu_unmap and the whole iommufd ioctl), attached at the best tier
 * the running kernel allows, and, where the backend's map path runs inside the daemon (the
 * emulated IOMMU), the daemon's own clock around each call. Each histogram is keyed by
 * operation, layer, size class and tenant slot (iommud_probes.h).
 *
 * Starting never fails for want of a kernel feature: what cannot attach is turned off and said
 * (probes_detached), and the tier says what is left. Only this module calls bpf().
 *
 * Ownership: probes_start gives the caller a struct probes, released with probes_stop, which
 * owns the BPF objects, their maps and links, the buffer per-CPU reads reuse, the in-process
 * histograms, and the list of cgroups registered for attribution.
 */
#ifndef IOMMUD_PROBES_H
#define IOMMUD_PROBES_H

#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <iommud.pb-c.h>

#include "iommud_probes.h"

struct probes;

struct probes_options {
	/* The highest tier to try: PROBE_TIER_FENTRY normally; lower to force a tier (tests,
	 * or an operator avoiding trampolines); PROBE_TIER_OFF attaches nothing. */
	Iommud__V1__ProbeTier max_tier;
	/* Time the IOMMU driver's calls at the fentry and kprobe tiers (an entry program on
	 * iommu_map/iommu_unmap, ended at their tracepoints); false: only their tracepoints,
	 * counting each call and its size to the ioctl's tenant, with no latency. */
	bool driver_latency;
	/* The backend's map path runs in this process (kh_backend_caps), so time it here. */
	bool in_process;
	/* Tenant slots the daemon labels (tenant_label_slots): the kernel side's histograms are
	 * an array of this many slots' worth per CPU. 0: IOMMUD_TENANT_SLOTS. */
	unsigned tenant_slots;
};

/* Returns 0 with *ret_probes set, or -ENOMEM; a kernel that refuses BPF gives tier OFF. */
int probes_start(const struct probes_options *opts, struct probes **ret_probes);
void probes_stop(struct probes *p);

/* Takes the programs the tier attached off the kernel's functions (false), or puts all of them
 * back (true; again after a partial failure, which is how that is retried), keeping them
 * loaded and the histograms as they are: what iommud-probes-bench compares and SetProbes asks
 * for. While off, probes_record records nothing either (at tier OFF too, where there are no
 * programs to switch). 0, or -EAGAIN when some program would not attach again: then
 * probes_attached is false and probes_detached says which, until the next switch. */
int probes_set_attached(struct probes *p, bool attached);

Iommud__V1__ProbeTier probes_tier(const struct probes *p);
/* Whether every program the tier attached at start is on the kernel's functions: false at tier
 * OFF, after probes_set_attached(false), and after a re-attach some program refused. It says
 * nothing of the in-process timing, which runs at tier OFF too. */
bool probes_attached(const struct probes *p);
/* Whether probes_set_attached(false) was the last switch. */
bool probes_switched_off(const struct probes *p);
bool probes_in_process(const struct probes *p);
/* Whether the driver layer's histograms are timed: driver_latency asked for and the tier is
 * fentry or kprobe (the tracepoint tier only counts). */
bool probes_driver_latency(const struct probes *p);
/* What a start line says of the IOMMU driver layer where the tier could time it (fentry,
 * kprobe): ", driver layer timed (probe-driver-latency yes)" or counted; "" elsewhere. */
const char *probes_driver_note(const struct probes *p);
/* Each program that is not attached, and why: n lines, valid until probes_stop. */
size_t probes_detached(const struct probes *p, const char *const **ret_lines);
uint64_t probes_dropped_events(struct probes *p);

/* One map or unmap of the backend inside the daemon, of bytes, for a tenant slot, that took ns:
 * a map from kh_map's call to its return (the daemon's mmap of the client's memory before it
 * is not counted), or its share of the time of several timed together (a batch's small
 * entries), an unmap likewise around kh_unmap, which includes releasing each removed range (the
 * daemon's munmap). Does nothing unless probes_in_process. */
void probes_record(struct probes *p, enum iommud_map_op op, uint64_t bytes, unsigned tenant,
		   uint64_t ns);
/* count such maps or unmaps of bytes each, each of which took ns. */
void probes_record_n(struct probes *p, enum iommud_map_op op, uint64_t bytes, unsigned tenant,
		     uint64_t ns, uint64_t count);

/* Attribution of the kernel's map path to tenant slots: the daemon's own iommufd descriptor of
 * a session (registered once per session), and a tenant's cgroup (v2 id, the directory's inode
 * number), so that its processes' own iommufd ioctls count to it. 0 or a negative errno; at
 * tier OFF they do nothing. */
int probes_register_fd(struct probes *p, int fd, unsigned slot);
void probes_unregister_fd(struct probes *p, int fd);
int probes_register_cgroup(struct probes *p, uint64_t cgroup_id, unsigned slot);
void probes_unregister_cgroup(struct probes *p, uint64_t cgroup_id);

/* A delegated VMM's cgroup (its cgroup v2 path, as /proc/PID/cgroup gives it) lent to the
 * tenant slot it was delegated for while the delegation lives, so that what the VMM maps on its
 * own iommufd counts to that tenant: at every tier, as its process is in no session (the
 * ioctl and driver layers at the fentry and kprobe tiers, the iommu:map/unmap counts at the
 * tracepoint tier). A lending comes before the cgroup's tenant registration, the latest
 * first; returning it leaves what is left. Only a cgroup that can be the VMM's own is lent:
 * not the root, one outside the daemon's cgroup namespace, the daemon's own or one another
 * tenant slot registered (logged once, at any tier: the VMM's work then counts to no tenant).
 * 0 with *ret_token (0: nothing lent, as without probes, at tier OFF, for a VMM whose cgroup
 * is not known or is refused), or a negative errno (logged); probes_return_cgroup takes the
 * token back and ignores 0. */
int probes_lend_cgroup(struct probes *p, const char *cgroup, unsigned slot, uint64_t *ret_token);
void probes_return_cgroup(struct probes *p, uint64_t token);

/* Calls visit for each histogram with a count, summed over CPUs; stops at and returns the first
 * non-zero return of visit. */
int probes_read(struct probes *p,
		int (*visit)(const struct iommud_hist_key *key, const struct iommud_hist *hist,
			     void *arg),
		void *arg);

/* Calls visit for each loaded map path or fault program with its runs and the time spent in it
 * so far, as the kernel counts them (only while kernel.bpf_stats_enabled is 1): what
 * iommud-probes-bench breaks the probes' cost down by. Stops at and returns the first non-zero
 * return of visit. */
int probes_program_stats(struct probes *p,
			 int (*visit)(const char *program, uint64_t runs, uint64_t ns, void *arg),
			 void *arg);

/* Calls visit for each device with DMA faults, with their count so far: the faulting device
 * where the driver reports it, else the IOMMU unit that raised them (iommud_probes.h); stops at
 * and returns the first non-zero return of visit. */
int probes_read_faults(struct probes *p,
		       int (*visit)(const char *device, uint64_t count, void *arg), void *arg);

#endif
