/* SPDX-License-Identifier: MIT */
/*
 * Allocation inside kernel-helper. Each call is an injection point (<kh/kh_testing.h>), so
 * tests can make any of them fail. The caller owns what is returned and frees it with free().
 */
#ifndef KH_ALLOC_H
#define KH_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

/* True when the armed injection point is this one: the caller must fail as the step would. */
bool kh_fail_point(void);

void *kh_zalloc(size_t size);
void *kh_realloc_array(void *ptr, size_t n, size_t size);
/* A zeroed, 4 KiB aligned 4 KiB page (an emulated page-table page). */
void *kh_page_zalloc(void);

#endif
