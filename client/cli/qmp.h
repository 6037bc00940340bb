/* SPDX-License-Identifier: MIT */
/*
 * Delegated fds into a running QEMU over its QMP socket, libvirt's way: each fd passed with
 * getfd (SCM_RIGHTS beside the command), then object-add of the iommufd and device_add of one
 * vfio-pci per device naming them; what 'iommuctl delegate qmp' does once iommud has handed the
 * fds over. Apart from the command so that a test can play QEMU's side.
 *
 * Failures are negative errnos with a message for a person in the caller's err buffer (QEMU's
 * own "desc" when QEMU refused).
 *
 * Ownership: the socket is the caller's; the fds are borrowed (QEMU receives duplicates, so
 * the caller closes its copies afterwards).
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct qmp_names {
	const char *prefix; /* of the ids: PREFIX-fdN, PREFIX-iommufd, PREFIX-devN */
	const char *bus;    /* device_add's bus (a PCIe root port), or NULL for QEMU's choice */
	bool cont;	    /* and then cont: start a guest paused with -S */
};

/* Connects to QEMU's QMP socket at path, reads its greeting and leaves negotiation mode
 * (qmp_capabilities); the socket in *ret_sock (close-on-exec), and in *ret_pid the pid of the
 * process that listens on it (SO_PEERCRED), which is QEMU's only when QEMU created the socket. */
int qmp_connect(const char *path, int *ret_sock, pid_t *ret_pid, char *err, size_t err_size);
/* Hands fds[0] (the iommufd) and fds[1..n_fds-1] (the devices' cdevs) to QEMU on sock. */
int qmp_hand_over(int sock, const int *fds, size_t n_fds, const struct qmp_names *names, char *err,
		  size_t err_size);
/* Whether s is usable as a QOM id or bus name without quoting: letters, digits, '-', '_', '.'. */
bool qmp_name_ok(const char *s);
