/* SPDX-License-Identifier: MIT */
/*
 * libiommuctl: the C client of iommud.
 *
 * A connection speaks the iommud.v1 protocol (docs/protocol.md) over the daemon's
 * SOCK_SEQPACKET socket. Two layers:
 *
 *   - calls that take and give plain C values (iommuctl_map_fd, iommuctl_unmap, ...), for the
 *     common operations of an orchestration agent;
 *   - the message layer (iommuctl_call, iommuctl_send / iommuctl_recv) on the protobuf-c types
 *     of <iommud.pb-c.h>, for every method, and for pipelining: send several requests, then
 *     collect their responses, which come back in the order the requests were sent.
 *
 * Errors: every int-returning function gives 0 (or a count) on success and a negative errno on
 * failure. When the daemon refused a request, the errno is the one it reported (or one mapped
 * from its status code) and iommuctl_last_code() gives the canonical code (IOMMUD__V1__CODE__*);
 * iommuctl_last_error() gives the daemon's message, or this library's for local failures.
 *
 * Ownership: the connection owns its socket. File descriptors passed in are only borrowed
 * (the kernel duplicates them into the daemon); descriptors received are owned by the caller.
 * A response from iommuctl_call or iommuctl_recv is owned by the caller and released with
 * iommuctl_response_free.
 *
 * Threads: a connection must be used by one thread at a time; open one per thread.
 *
 * Daemon restarts: a connection drops when the daemon stops (a crash, systemctl restart, a
 * re-exec). A named lease outlives that; the anonymous session does not. On a connection whose
 * last successful Hello chose a lease (and no ReleaseLease followed), the next request
 * reconnects by itself, trying with a growing pause (20 ms doubling up to 1 s) for up to
 * iommuctl_set_reconnect's limit (30 s unless set), says Hello again with the same client name
 * and lease and existing_lease set (so a lease the new daemon does not hold is refused with
 * NOT_FOUND rather than made anew, empty), and then sends the request. When the limit passes
 * first, that request fails with -ETIMEDOUT and a message saying the daemon is not back. A
 * request whose reply the drop cut off fails with -ECONNRESET (or -EPIPE): whether it took
 * effect is unknown, and it is not sent again by itself; send it again (an identical fixed-IOVA
 * Map or MapBatch on a lease is answered as done, see docs/protocol.md, "Restarts"), or list
 * what is there. A request refused at sending never reached the daemon, so, with no other in
 * flight, it is sent again on the new connection. Responses still expected on the dropped
 * connection (pipelining) never come: iommuctl_recv fails for them. On the anonymous session
 * (or a released lease) every request after a drop fails with -ECONNRESET, saying its state
 * ended; iommuctl_reconnect then starts afresh.
 */
#ifndef IOMMUCTL_H
#define IOMMUCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <iommud.pb-c.h>
#include <iommud_protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where the daemon listens unless told otherwise; $IOMMUD_SOCKET overrides it. */
#define IOMMUCTL_DEFAULT_SOCKET "/run/iommud/iommud.sock"
/* The protocol version this library speaks. */
#define IOMMUCTL_PROTOCOL_VERSION IOMMUD_PROTOCOL_VERSION
/* Transport limits of protocol version 1 (docs/protocol.md, "Framing"). */
#define IOMMUCTL_MAX_MESSAGE IOMMUD_MAX_MESSAGE
#define IOMMUCTL_MAX_FDS     IOMMUD_MAX_FDS

struct iommuctl;

/* Connects to the daemon at path (NULL: $IOMMUD_SOCKET, else IOMMUCTL_DEFAULT_SOCKET). Does
 * not send Hello: a connection that calls nothing else first works in its anonymous session. */
int iommuctl_connect(const char *path, struct iommuctl **out);
/* Closes the connection; the daemon releases the anonymous session's objects when the
 * tenant's last connection to it closes. */
void iommuctl_close(struct iommuctl *c);

/* How long a dropped connection on a lease is tried again before a request fails: timeout_ms
 * (0: never; a request after a drop then fails with -ENOTCONN until iommuctl_reconnect). */
void iommuctl_set_reconnect(struct iommuctl *c, unsigned timeout_ms);
/* Drops the connection and makes it again now, within the same limit (a limit of 0: one try),
 * re-opening the lease Hello chose; for the anonymous session or a released lease, a new
 * connection in a new anonymous session. */
int iommuctl_reconnect(struct iommuctl *c);

/* The connection's socket, owned by c, for poll(2) in a program's own loop: readable when a
 * response came, POLLHUP once the daemon went (a holder of OpenDevice descriptors closes them
 * then, see docs/operations.md, "Surviving a restart"); -1 while the connection is down. */
int iommuctl_fd(const struct iommuctl *c);

/* Message of the most recent failure on c; never NULL. With c NULL, the message of the calling
 * thread's most recent failure of a call that has no connection: iommuctl_connect and
 * iommuctl_memfd. */
const char *iommuctl_last_error(const struct iommuctl *c);
/* Canonical status code of the most recent daemon reply on c (IOMMUD__V1__CODE__CODE_OK after
 * a success or a local failure, and for c NULL). */
Iommud__V1__Code iommuctl_last_code(const struct iommuctl *c);
/* Short name of a canonical code, such as "NOT_FOUND". */
const char *iommuctl_code_name(Iommud__V1__Code code);

/* ---- message layer -------------------------------------------------------------------- */

/* Sends req with nfds descriptors (at most IOMMUCTL_MAX_FDS); req->id is set by the library
 * and returned in *id. The request is not kept: it may be freed or reused at once. */
int iommuctl_send(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds,
		  uint64_t *id);
/* Receives the next response. Descriptors that came with it are stored in fds (room for
 * max_fds; any beyond are closed) and their number in *nfds (both may be NULL/0 when none is
 * expected: received ones are then closed). Returns 0 even when the daemon refused the request:
 * the status is in the response. */
int iommuctl_recv(struct iommuctl *c, Iommud__V1__Response **resp, int *fds, size_t max_fds,
		  size_t *nfds);
/* Sends req and waits for its response. Returns a negative errno, with iommuctl_last_error()
 * set from the daemon's status, when the daemon refused it; *resp is then NULL. */
int iommuctl_call(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds,
		  Iommud__V1__Response **resp, int *fds_out, size_t max_fds, size_t *nfds_out);
void iommuctl_response_free(Iommud__V1__Response *resp);
/* The negative errno a refused response stands for: its errno_value, or one chosen for its
 * code. 0 for CODE_OK. */
int iommuctl_status_errno(const Iommud__V1__Status *status);

/* ---- plain calls ---------------------------------------------------------------------- */

/* Says hello and chooses the session: lease NULL or "" for the anonymous one. reply (may be
 * NULL) receives the daemon's HelloReply; free it with iommud__v1__hello_reply__free_unpacked. */
int iommuctl_hello(struct iommuctl *c, const char *client_name, const char *lease,
		   Iommud__V1__HelloReply **reply);

enum iommuctl_domain_type {
	IOMMUCTL_DOMAIN_BLOCKED = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED,
	IOMMUCTL_DOMAIN_IDENTITY = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_IDENTITY,
	IOMMUCTL_DOMAIN_PAGING = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING,
	IOMMUCTL_DOMAIN_NESTED = IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED,
};
#define IOMMUCTL_DOMAIN_DIRTY_TRACKING (1u << 0)
#define IOMMUCTL_DOMAIN_NEST_PARENT    (1u << 1)

/* Allocates a domain for device (bound into the session on first use). */
int iommuctl_alloc_domain(struct iommuctl *c, const char *device, enum iommuctl_domain_type type,
			  uint32_t flags, uint32_t *domain_id);
int iommuctl_free_domain(struct iommuctl *c, uint32_t domain_id);
int iommuctl_attach(struct iommuctl *c, const char *device, uint32_t domain_id);
int iommuctl_replace(struct iommuctl *c, const char *device, uint32_t domain_id);
int iommuctl_detach(struct iommuctl *c, const char *device);

#define IOMMUCTL_PROT_READ  IOMMUD__V1__PROT__PROT_READ
#define IOMMUCTL_PROT_WRITE IOMMUD__V1__PROT__PROT_WRITE

/* Maps [offset, offset+length) of the file fd (a memfd sealed with F_SEAL_SHRINK, or a tmpfs
 * or hugetlbfs file) into the domain. With fixed, at *iova; otherwise the daemon picks it
 * (aligned to alignment, 0 for the default) and stores it in *iova. */
int iommuctl_map_fd(struct iommuctl *c, uint32_t domain_id, int fd, uint64_t offset,
		    uint64_t length, uint32_t prot, bool fixed, uint64_t alignment, uint64_t *iova);
/* One mapping of a batch: as iommuctl_map_fd's arguments; iova is also where it went. */
struct iommuctl_map_entry {
	uint32_t domain_id;
	int fd; /* entries may share a file; a batch names at most IOMMUD_MAX_FDS different ones */
	uint64_t offset;
	uint64_t length;
	uint32_t prot;
	bool fixed_iova; /* map at iova; otherwise the daemon picks it and stores it there */
	uint64_t alignment;
	uint64_t iova;
};
/* Maps n entries (1 to 1024) in one MapBatch request, all or nothing: on success each entry's
 * iova says where it went; on failure nothing of the batch stays mapped, and *ret_failed (may
 * be NULL) is the index of the entry that failed, or n when the failure was not one entry's.
 * Sent in the compact form (MapBatchRequest.columns) where the daemon's Hello offered
 * map_batch_columns, else as one MapEntry per entry; asking for the picked IOVAs alone
 * (picked_iovas_only) where it offered map_batch_picked_iovas, the entries at fixed IOVAs
 * keeping theirs. */
int iommuctl_map_batch(struct iommuctl *c, struct iommuctl_map_entry *entries, size_t n,
		       size_t *ret_failed);
/* Removes every mapping inside [iova, iova+length); unmapped (may be NULL) gets the bytes. Once
 * it returns, the memory is the caller's again, unless iommuctl_set_keep_maps is on. */
int iommuctl_unmap(struct iommuctl *c, uint32_t domain_id, uint64_t iova, uint64_t length,
		   uint64_t *unmapped);
/* Removes every mapping of the domain; unmapped (may be NULL) gets the bytes. Once it returns,
 * the memory is the caller's again, unless iommuctl_set_keep_maps is on. */
int iommuctl_unmap_all(struct iommuctl *c, uint32_t domain_id, uint64_t *unmapped);
/* For a caller that maps and unmaps a buffer per I/O, or a pool of buffers again after each
 * iommuctl_unmap_all (off unless set): with keep, each iommuctl_unmap of one mapping asks the
 * daemon to keep its memory map of the file for the session's next Map of exactly that range
 * (UnmapRequest.keep_map), and each iommuctl_unmap_all the map of the last file it leaves
 * unmapped for the next Map or MapBatch (UnmapAllRequest.keep_map), which then costs the
 * daemon no mmap. Until that Map, or any other request of the session that changes something,
 * the daemon still maps the file: sealing it F_SEAL_WRITE fails with EBUSY, and its memory is
 * not freed when closed. */
void iommuctl_set_keep_maps(struct iommuctl *c, bool keep);
/* Has the daemon keep fd (KeepFiles) for this connection, at most IOMMUD_KEPT_FILES (8) at
 * once: iommuctl_map_fd and iommuctl_map_batch then name it instead of sending it, and the
 * daemon examines the file once, when it keeps it, instead of with every request (a memfd
 * mapped and unmapped per I/O costs the daemon four system calls fewer per Map). The file
 * must be a memfd sealed with F_SEAL_SHRINK and F_SEAL_SEAL (fcntl F_ADD_SEALS), so that its
 * seals and size stay as examined. fd must stay open, naming the same file, until
 * iommuctl_forget_fd; the daemon holds the file (and its memory) until then, or until the
 * connection closes. After a reconnect the new connection keeps the same descriptors. */
int iommuctl_keep_fd(struct iommuctl *c, int fd);
/* Has the daemon give up a descriptor iommuctl_keep_fd kept; -ENOENT if it is not kept. */
int iommuctl_forget_fd(struct iommuctl *c, int fd);
/* A VFIO fd for the device, bound to the session's context; the caller owns it. Returns the
 * fd or a negative errno. */
int iommuctl_open_device(struct iommuctl *c, const char *device);

/* Hands devices (n of them, at most IOMMUCTL_DELEGATE_MAX) to a VM manager, within the lease
 * chosen in hello: ret_fds (room for n + 1) receives a fresh iommufd set to per-process
 * pinned-memory accounting, then each device's unbound VFIO cdev fd in the order of devices; the
 * caller owns them (close-on-exec). vmm_pid is the VMM followed until it exits, 0 for the calling
 * process (one that execs the VMM). ret_id (may be NULL) gets the delegation's id. */
#define IOMMUCTL_DELEGATE_MAX 16
int iommuctl_delegate(struct iommuctl *c, const char *const *devices, size_t n, uint32_t vmm_pid,
		      int *ret_fds, uint64_t *ret_id);

/* Takes the daemon's map path probes off the kernel's functions (attached false) or puts them
 * back (SetProbes; root and observers allowed to write). ret_tier and ret_attached (either
 * may be NULL) get the tier and whether the probes are attached now: false after an
 * attach the kernel refused for some program (GetStats' probes.detached says which; asking
 * again retries). -EBUSY (CODE_FAILED_PRECONDITION) when the daemon's probe tier is off. */
int iommuctl_set_probes(struct iommuctl *c, bool attached, Iommud__V1__ProbeTier *ret_tier,
			bool *ret_attached);

/* Creates a memfd of size bytes, sealed against shrinking, ready for iommuctl_map_fd. Returns
 * the fd (the caller owns it) or a negative errno. */
int iommuctl_memfd(const char *name, uint64_t size);

#ifdef __cplusplus
}
#endif

#endif
