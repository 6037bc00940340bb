// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* close_range */
#include "fd-slots.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Far above the slots, so the moves through it never land on one still to be read. */
#define FD_SLOTS_SCRATCH 100

int fd_slots_place(const int *fds, size_t n)
{
	int high[FD_SLOTS_SCRATCH];
	size_t i;

	if (n > FD_SLOTS_SCRATCH - FD_SLOTS_FIRST)
		return -EMFILE;
	/* Out of the way first: a slot may hold another of the fds. */
	for (i = 0; i < n; i++) {
		high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, FD_SLOTS_SCRATCH);
		if (high[i] < 0)
			break;
	}
	if (i < n) {
		int err = -errno;

		while (i)
			(void)close(high[--i]);
		return err;
	}
	for (i = 0; i < n; i++)
		(void)close(fds[i]);
	for (i = 0; i < n; i++) {
		/* dup2 leaves the new descriptor open across exec. */
		if (dup2(high[i], FD_SLOTS_FIRST + (int)i) < 0)
			return -errno;
		(void)close(high[i]);
	}
	if (close_range(FD_SLOTS_FIRST + (unsigned)n, ~0U, 0) < 0)
		return -errno;
	return 0;
}

/* The slot a placeholder at p names, and its length in *ret_len; -1 when p starts none. */
static long placeholder_slot(const char *p, size_t *ret_len)
{
	char *end;
	unsigned long device;

	if (strncmp(p, "{iommufd}", 9) == 0) {
		*ret_len = 9;
		return 0;
	}
	if (strncmp(p, "{device", 7) != 0 || p[7] < '0' || p[7] > '9')
		return -1;
	device = strtoul(p + 7, &end, 10);
	if (*end != '}' || device > 999)
		return -1;
	*ret_len = (size_t)(end + 1 - p);
	return (long)device + 1;
}

/* word with its placeholders replaced; NULL with *ret_bad when one names no slot. */
static char *substitute_word(const char *word, size_t n, bool *ret_bad)
{
	/* A placeholder is longer than the number it stands for. */
	size_t size = strlen(word) + 1, used = 0, len = 0;
	char *out = malloc(size);

	for (const char *p = word; out && *p;) {
		long slot = *p == '{' ? placeholder_slot(p, &len) : -1;
		bool named = strncmp(p, "{iommufd", 8) == 0 || strncmp(p, "{device", 7) == 0;

		if (named && (slot < 0 || (size_t)slot >= n)) {
			*ret_bad = true;
			free(out);
			return NULL;
		}
		if (slot >= 0) {
			used += (size_t)snprintf(out + used, size - used, "%ld",
						 FD_SLOTS_FIRST + slot);
			p += len;
		} else {
			out[used++] = *p++;
		}
	}
	if (out)
		out[used] = '\0';
	return out;
}

char **fd_slots_substitute(char *const *argv, size_t argc, size_t n, const char **ret_bad)
{
	char **out = calloc(argc + 1, sizeof(*out));
	bool bad = false;

	for (size_t i = 0; out && i < argc; i++) {
		out[i] = substitute_word(argv[i], n, &bad);
		if (!out[i]) {
			if (bad)
				*ret_bad = argv[i];
			while (i)
				free(out[--i]);
			free(out);
			return NULL;
		}
	}
	return out;
}
