/* SPDX-License-Identifier: MIT */
/*
 * The memfds the daemon makes for itself (the state record, the probe of the kernel's internal
 * tmpfs mount), made so that every kernel it runs on takes them: sealed against execution,
 * which Linux 6.3 to 6.6 demand under vm.memfd_noexec = 2 (a memfd without MFD_NOEXEC_SEAL is
 * refused with EACCES there, and later kernels log each one made without it), else, on a
 * kernel older than the flag (EINVAL), as those make one.
 *
 * Ownership: the caller owns the descriptor returned.
 */
#ifndef IOMMUD_OWN_MEMFD_H
#define IOMMUD_OWN_MEMFD_H

#include <sys/mman.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U /* Linux 6.3's; the C library may not know it yet */
#endif

/* A new close-on-exec memfd called name, or -1 with errno set as memfd_create sets it. */
int own_memfd(const char *name);

#endif
