/* SPDX-License-Identifier: MIT */
/*
 * What the VM tests that drive iommud share: failing a call with the daemon's own message, and
 * finding the edu device the daemon offers.
 */
#ifndef IOMMUD_TESTS_VM_DAEMON_EDU_H
#define IOMMUD_TESTS_VM_DAEMON_EDU_H

#include <stdint.h>

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

#endif
