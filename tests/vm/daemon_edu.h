/* SPDX-License-Identifier: MIT */
/*
 * What the VM tests that drive iommud share: failing a call with the daemon's own message, and
 * finding the edu device the daemon offers.
 */
#ifndef IOMMUD_TESTS_VM_DAEMON_EDU_H
#define IOMMUD_TESTS_VM_DAEMON_EDU_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct iommuctl;

/* Aborts the test with the daemon's message when rc is negative. */
void check_call(struct iommuctl *c, int rc, const char *what);
/* The name of the first edu the daemon offers (the caller frees it), or NULL. */
char *find_edu(struct iommuctl *c);
/* A paging domain for device, the device attached to it, and a memfd of two pages: the first
 * filled with a pattern (a DMA source), the second zero. Aborts the test on any failure. The
 * caller owns the memfd (*ret_memfd) and the shared mapping of its two pages returned. */
uint8_t *attach_with_memfd(struct iommuctl *c, const char *device, uint32_t *ret_dom,
			   int *ret_memfd);

/* Whether the daemon must map tenant memory by descriptor on backend (as Hello names it) in
 * this guest: iommufd on Linux 6.13 and later, which has IOMMU_IOAS_MAP_FILE. */
bool expect_map_by_fd(const char *backend);
/* Checks that the daemon (pid) holds a mapping of the memfd in its address space exactly where
 * it may not map by descriptor (/proc/PID/maps, by the memfd's inode); aborts otherwise. */
void check_daemon_view(pid_t daemon, int memfd, const char *backend, const char *when);

#endif
