/* SPDX-License-Identifier: MIT */
/*
 * Daemon-wide ceilings: what all tenants together may hold, kept below every kernel limit the
 * daemon depends on, so that one tenant's quota, or many tenants' together, can never run the
 * daemon into a kernel limit where every tenant's calls, or the release of memory, would fail.
 *
 *   file maps    the daemon's memory maps of client files (one per file and access in a
 *                session, shared by the file's mappings; one per mapping beyond the tenant's
 *                max-pinned): below vm.max_map_count, less the maps the daemon holds at start
 *                and headroom for its own allocations and the transient maps of placing one
 *   leases       each may hold descriptors (its IOMMU context, its devices'): below the
 *                open-file limit
 *   pinned bytes where the kernel charges the daemon's pins to its RLIMIT_MEMLOCK (a backend
 *                that pins in the kernel, no CAP_IPC_LOCK, a finite limit): that limit
 *
 * Computed once at start from the live limits; the configuration may lower each, never raise
 * it past what the kernel allows. docs/operations.md ("Ceilings") lists them.
 */
#ifndef IOMMUD_CEILINGS_H
#define IOMMUD_CEILINGS_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct ceilings {
	uint64_t max_maps;
	uint64_t max_leases;
	uint64_t max_pinned_bytes;   /* 0: no daemon-wide limit applies */
	const char *max_pinned_from; /* what set it, for messages: the configuration or the limit */
};

/* The ceilings for this process now, had it the open-file limit open_files (UINT64_MAX: none;
 * ceilings_open_files for its own); pins_in_kernel: the backend pins memory in the kernel,
 * which charges the daemon. Logs each ceiling with what it was derived from, and warns of each
 * section whose quota alone reaches a ceiling (one tenant of it could deny all others). */
void ceilings_compute(const struct config *cfg, bool pins_in_kernel, uint64_t open_files,
		      struct ceilings *ret);
/* The process's open-file limit (soft), UINT64_MAX where there is none: the open_files the
 * running daemon computes its ceilings under. */
uint64_t ceilings_open_files(void);

/* What the backend puts in the service manager's descriptor store beside the leases' memory
 * files, as kernel-helper answers, and the limit every stored descriptor counts against. */
struct store_backend {
	bool kernel_fds;  /* KH_CAP_ADOPT: each lease's context, domains and bound devices */
	bool maps_by_fd;  /* KH_CAP_MAP_FILE: a file the kernel maps costs the daemon no map */
	bool delegates;	  /* KH_CAP_DELEGATE: a live delegation's VMM pidfd (a device or more) */
	size_t n_devices; /* those a section with write access lets its tenants bind */
	/* Descriptors anonymous sessions keep in the store while a device's fd is out
	 * (state_anon.c): the device's and the session's context's, apart from the leases' (a
	 * device bound by a lease is not by a session too). */
	uint64_t anon_fds;
	/* The daemon's open-file limit (UINT64_MAX: none): the daemon holds a descriptor of its
	 * own for each one stored. */
	uint64_t open_files;
};

/* How many descriptors the store may have to hold at most for what the configuration and the
 * ceilings let leases hold on this backend (FileDescriptorStoreMax=, docs/operations.md,
 * "Sizing the descriptor store"). */
uint64_t ceilings_store_slots(const struct config *cfg, const struct ceilings *ceil,
			      const struct store_backend *be);

#endif
