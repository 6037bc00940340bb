/* SPDX-License-Identifier: MIT */
/*
 * Descriptors a command is started with at fixed numbers, and the command line that names them:
 * what 'iommuctl delegate exec' does between receiving a VM manager's fds and exec'ing it,
 * apart so that a test can check the numbering without a daemon that delegates.
 *
 * Ownership: fd_slots_place takes the fds over (they end up at their slots, inherited across
 * exec); fd_slots_substitute's result and its strings are the caller's, argv's are borrowed.
 */
#pragma once
#include <stddef.h>

/* The number of the first slot: the ones after standard input, output and error. */
#define FD_SLOTS_FIRST 3

/* Moves fds[i] to FD_SLOTS_FIRST + i (open across exec) for i < n, whatever descriptors held
 * those numbers before (closed unless they are among fds), and closes every descriptor above
 * the slots: the command runs as another, unprivileged user and must not inherit what
 * iommuctl's (privileged) parent left open. 0 or a negative errno. */
int fd_slots_place(const int *fds, size_t n);

/* A copy of argv (argc words, NULL-terminated) with "{iommufd}" replaced by the number of slot 0
 * and "{deviceN}" by that of slot N + 1, wherever in a word they stand ("fd={device0}");
 * NULL when out of memory, or with *ret_bad set to the word naming a slot past n - 1 (or an
 * unknown placeholder). */
char **fd_slots_substitute(char *const *argv, size_t argc, size_t n, const char **ret_bad);
