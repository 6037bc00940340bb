/* SPDX-License-Identifier: MIT */
/*
 * Delegation faked into the emulated backend for tests on every host: the delegated fds are
 * memfds standing in for an iommufd and VFIO cdevs, which the daemon only passes on.
 */
#ifndef IOMMUD_TESTS_STAND_IN_FDS_H
#define IOMMUD_TESTS_STAND_IN_FDS_H

#include <kh/kh.h>
#include <kh/kh_ops.h>

/* be's operations copied into ops with the stand-in delegation, and be switched to them and
 * given KH_CAP_DELEGATE; ops is the caller's and must outlive be. Aborts unless be is the
 * emulated backend, so that no real kernel backend is ever faked. */
void stand_in_delegation(struct kh_backend *be, struct kh_backend_ops *ops);

#endif
