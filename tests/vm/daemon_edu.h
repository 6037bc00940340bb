/* SPDX-License-Identifier: MIT */
/*
 * What the VM tests that drive iommud share: failing a call with the daemon's own message, and
 * finding the edu device the daemon offers.
 */
#ifndef IOMMUD_TESTS_VM_DAEMON_EDU_H
#define IOMMUD_TESTS_VM_DAEMON_EDU_H

struct iommuctl;

/* Aborts the test with the daemon's message when rc is negative. */
void check_call(struct iommuctl *c, int rc, const char *what);
/* The name of the first edu the daemon offers (the caller frees it), or NULL. */
char *find_edu(struct iommuctl *c);

#endif
