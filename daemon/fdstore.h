/* SPDX-License-Identifier: MIT */
/*
 * The service manager's file-descriptor store (sd_notify FDSTORE=1), which keeps descriptors
 * across the daemon's death and hands them back to the next process through LISTEN_FDS and
 * LISTEN_FDNAMES, and the descriptors handed back at start.
 *
 * Every descriptor the daemon stores has a name that says whose it is (docs/architecture.md,
 * "Survival"): "state.<generation>" for the state record, "lease<L>.file<F>" for a memory file
 * lease L's mappings use, "lease<L>.iommu" and "lease<L>.device<D>" for its kernel objects,
 * "anon<S>.device<D>" for a device whose fd an anonymous session handed out and
 * "anon<S>.iommu.ids<N>" for that session's kernel context (its IOAS ids are among 1 to N). The
 * socket the manager listens on for the daemon comes among the handed descriptors too, under its
 * unit's name.
 *
 * Ownership: the handed descriptors belong to this module until claimed; a claimed one belongs
 * to the claimer, and fdstore_drop_strays closes (and removes from the store) the others.
 * Storing a descriptor gives the manager a copy: the caller keeps its own.
 */
#ifndef IOMMUD_FDSTORE_H
#define IOMMUD_FDSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kh/kh.h>

/* Whether a service manager listens (NOTIFY_SOCKET): without one nothing can be kept. */
bool fdstore_available(void);
/* The FileDescriptorStoreMax= of the unit installed with the daemon: its LimitNOFILE= too, one
 * build setting (IOMMUD_OPEN_FILES) feeding both. The daemon keeps its own copy of every stored
 * descriptor, so it can never store more than its open-file limit: a store that large is never
 * what binds, whatever the quotas. */
#define FDSTORE_UNIT_MAX IOMMUD_OPEN_FILES
/* Where fdstore_max found the store's size. */
enum fdstore_source {
	FDSTORE_FROM_MANAGER,  /* $FDSTORE, which systemd 254 and later export */
	FDSTORE_FROM_OVERRIDE, /* $IOMMUD_FDSTORE_MAX, an administrator's drop-in for systemd
				* before 254, which exports nothing */
	FDSTORE_FROM_UNIT,     /* FDSTORE_UNIT_MAX, assumed */
};
/* How many descriptors the manager keeps for the daemon, from the first of the sources above
 * that holds a number (systemd 252 says nothing, and refuses a descriptor past its maximum
 * silently). */
size_t fdstore_max(enum fdstore_source *ret_source);
/* How a log line names source. */
const char *fdstore_source_name(enum fdstore_source source);
/* Hands the manager a copy of fd to keep under name (printable ASCII without ':', at most 255
 * characters); 0 or a negative errno. */
int fdstore_add(const char *name, int fd);
/* Tells the manager to close every descriptor it keeps under name, for a descriptor whose copy
 * holds nothing another session needs (a state record, a memory file: the pages are pinned by
 * the IOAS, not by the file): the manager reads it when it gets to it, and nobody waits. */
void fdstore_remove(const char *name);
/* The same for a kernel descriptor (an iommufd context, a device): until the manager reads the
 * message its copy keeps the device bound to a released lease's context (another session's
 * bind fails with EBUSY) and the pages pinned. So the removal is waited for (fdstore_sync)
 * before the daemon acts on anything else: by the holder of the daemon lock before it lets go
 * (daemon_lock.h), or by the next fdstore_sync the caller runs itself. */
void fdstore_remove_kernel(const char *name);
/* Waits until the manager has read every message sent before (BARRIER=1, which it answers by
 * closing the descriptor that comes with it once it has processed all earlier ones), when a
 * kernel descriptor's removal is among them; nothing otherwise, so that requests that remove
 * none never wait. A manager that does not answer one barrier in time (5 s, a quarter of the
 * watchdog interval at most) is not waited for again, and said so once. */
void fdstore_sync(void);

/* Reads LISTEN_FDS and LISTEN_FDNAMES, once; later calls see the same descriptors. How many
 * were handed, or a negative errno. */
int fdstore_handed(void);
/* How many of the descriptors handed at start nobody has claimed or dropped yet: each still
 * takes a slot of the manager's store. */
size_t fdstore_unclaimed(void);
/* The i-th handed descriptor's name; NULL once it is claimed or past the end. */
const char *fdstore_handed_name(size_t i);
/* Takes the i-th handed descriptor over. */
int fdstore_claim(size_t i);
/* Takes over the handed descriptor named name; -ENOENT when none is. */
int fdstore_claim_name(const char *name);
/* The listening SOCK_SEQPACKET Unix socket among the handed descriptors, taken over: its fd,
 * -ENOENT when no socket was handed, -EINVAL when several were or one of another kind. */
int fdstore_claim_listener(void);
/* Gives up a descriptor from the store (a handed one claimed, or one the daemon stored) that
 * may hold a device an earlier daemon left bound, and maybe attached, in its kernel context:
 * the device's DMA is blocked first (kh_device_fd_block), since a client may hold the same
 * file through an OpenDevice and closing the daemon's copy alone would leave its DMA live;
 * then fd (if not negative) is closed and the store's copy removed (fdstore_remove_kernel).
 * 1 with the device's name in ret_device when fd held one, now blocked; 0 when it held none;
 * a negative errno, said in the log, when the kernel would not block it (closed regardless). */
int fdstore_give_up(int fd, const char *name, char ret_device[KH_NAME_MAX]);
/* Closes every handed descriptor nobody claimed as fdstore_give_up does, saying so: what no
 * record names is a stray of an earlier daemon, an anonymous session's device among them.
 * Once all are blocked, each anonymous session's context is emptied (kh_ctx_fd_release), so
 * that the memory its mappings pinned is released too, and then closed and removed. */
void fdstore_drop_strays(void);

/* The store's name for device dev_id of anonymous session session (a number the daemon gives
 * each anonymous session that hands a device's fd out, never again while it runs). It says
 * all the next daemon needs: that the device must be blocked and given up, whose it was (for
 * the log), and no record of it has to be written or read. */
#define FDSTORE_ANON_NAME 48
void fdstore_anon_name(uint32_t session, uint32_t dev_id, char name[FDSTORE_ANON_NAME]);
/* Whether name is such a name, and the numbers in it. */
bool fdstore_anon_parse(const char *name, uint32_t *ret_session, uint32_t *ret_dev_id);
/* The store's name for the kernel context of anonymous session session, whose IOAS have kernel
 * ids among 1 to max_id: the next daemon empties every IOAS there, after the session's devices
 * are blocked. The name carries a bound rather than the ids, so it stays short whatever the
 * number of domains, and changes only when a domain's IOAS takes an id above it. */
void fdstore_anon_ctx_name(uint32_t session, uint32_t max_id, char name[FDSTORE_ANON_NAME]);
/* Whether name is such a name, and the numbers in it. */
bool fdstore_anon_ctx_parse(const char *name, uint32_t *ret_session, uint32_t *ret_max_id);

#endif
