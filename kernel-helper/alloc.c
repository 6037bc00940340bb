/* SPDX-License-Identifier: MIT */
#include "alloc.h"

#include <stdlib.h>
#include <string.h>

#include <kh/kh_testing.h>

static _Thread_local unsigned long fail_countdown; /* 0: not armed */
static _Thread_local bool fail_tripped;

void kh_fail_nth_arm(unsigned long n)
{
	fail_countdown = n;
	fail_tripped = false;
}

bool kh_fail_nth_disarm(void)
{
	bool tripped = fail_tripped;

	fail_countdown = 0;
	fail_tripped = false;
	return tripped;
}

bool kh_fail_point(void)
{
	if (fail_countdown == 0 || --fail_countdown != 0)
		return false;
	fail_tripped = true;
	return true;
}

void *kh_zalloc(size_t size)
{
	if (kh_fail_point())
		return NULL;
	return calloc(1, size);
}

void *kh_realloc_array(void *ptr, size_t n, size_t size)
{
	if (kh_fail_point())
		return NULL;
	return reallocarray(ptr, n, size);
}

void *kh_page_zalloc(void)
{
	void *page;

	if (kh_fail_point())
		return NULL;
	page = aligned_alloc(4096, 4096);
	if (page)
		memset(page, 0, 4096);
	return page;
}
