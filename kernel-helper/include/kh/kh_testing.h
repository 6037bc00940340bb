/* SPDX-License-Identifier: MIT */
/*
 * Failure injection, for tests that prove every mutating call is all-or-nothing.
 *
 * Every allocation kernel-helper makes and every mutating backend step passes an injection
 * point. Arming with n makes the n-th point reached afterwards (1-based) fail as if the
 * allocation or the kernel had refused. The counter is per thread.
 */
#ifndef KH_KH_TESTING_H
#define KH_KH_TESTING_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

void kh_fail_nth_arm(unsigned long n);
/* Stops injecting; returns true if the armed point was reached (so the call failed by it). */
bool kh_fail_nth_disarm(void);

#ifdef __cplusplus
}
#endif

#endif
