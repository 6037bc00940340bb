/* SPDX-License-Identifier: MIT */
/*
 * libiommuctl: the client side of docs/protocol.md, and the plain calls built on it. Packets
 * and their descriptors go through the wire module the daemon uses too (iommud_wire.h); here
 * are ids, ordering, and the messages a person reads.
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <iommud_envelope.h>
#include <iommud_wire.h>

#include "iommuctl.h"

#define ERROR_MAX 512

/* How long a dropped connection is tried again unless told otherwise, and the backoff's
 * first and longest pause between tries. */
#define RECONNECT_DEFAULT_MS 30000u
#define BACKOFF_FIRST_MS     20u
#define BACKOFF_MAX_MS	     1000u

/* A Hello or ReleaseLease sent and not yet answered: what it chooses once it succeeds. */
struct pending_session {
	uint64_t id; /* 0: none */
	bool release;
	char *lease; /* Hello's, owned; NULL for the anonymous session */
	char *client_name;
};

struct iommuctl {
	int fd; /* -1 while the connection is down */
	/* Ids are 1, 2, 3...: the id of the next response is then received + 1. */
	uint64_t sent;
	uint64_t received;
	/* The session a successful Hello chose, re-opened after a reconnect: lease NULL for the
	 * anonymous one (which cannot be), lease_released once ReleaseLease succeeded. Owned. */
	char *lease;
	char *client_name;
	bool lease_released;
	struct pending_session pending;
	unsigned reconnect_ms; /* 0: never reconnect */
	bool keep_maps;	       /* iommuctl_unmap(_all) ask the daemon to keep a file's map */
	/* The descriptors the daemon keeps for this connection (iommuctl_keep_fd), by slot: the
	 * caller's, named by slot instead of sent; kept again after a reconnect. */
	struct {
		bool used;
		int fd;
	} kept[IOMMUD_KEPT_FILES];
	bool batch_columns;   /* the daemon's last Hello offered map_batch_columns */
	bool batch_picked;    /* and map_batch_picked_iovas */
	int32_t failed_index; /* the last failed reply's Status.failed_index */
	bool reconnecting;    /* re-opening the lease: no reconnect within a reconnect */
	Iommud__V1__Code last_code;
	char error[ERROR_MAX];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	/* Exactly the limit: a longer packet arrives truncated, and wire_recv says so. */
	uint8_t rxbuf[IOMMUD_MAX_MESSAGE];
	/* Requests are packed here, so that sending one allocates nothing. */
	uint8_t txbuf[IOMMUD_MAX_MESSAGE];
};

/* Failures of calls that have no connection (connect, memfd), for iommuctl_last_error(NULL). */
static _Thread_local char unconnected_error[ERROR_MAX];

__attribute__((format(printf, 3, 4))) static int fail(struct iommuctl *c, int err, const char *fmt,
						      ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(c ? c->error : unconnected_error, ERROR_MAX, fmt, ap);
	va_end(ap);
	if (c)
		c->last_code = IOMMUD__V1__CODE__CODE_OK;
	return err;
}

const char *iommuctl_last_error(const struct iommuctl *c)
{
	return c ? c->error : unconnected_error;
}

Iommud__V1__Code iommuctl_last_code(const struct iommuctl *c)
{
	return c ? c->last_code : IOMMUD__V1__CODE__CODE_OK;
}

const char *iommuctl_code_name(Iommud__V1__Code code)
{
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value(&iommud__v1__code__descriptor, (int)code);
	static const char prefix[] = "CODE_";

	if (!v)
		return "UNKNOWN_CODE";
	/* The schema names them CODE_NOT_FOUND and so on; people know them as NOT_FOUND. */
	return strncmp(v->name, prefix, sizeof(prefix) - 1) ? v->name
							    : v->name + sizeof(prefix) - 1;
}

int iommuctl_status_errno(const Iommud__V1__Status *status)
{
	if (!status || status->code == IOMMUD__V1__CODE__CODE_OK)
		return 0;
	if (status->errno_value > 0)
		return -status->errno_value;
	return errno_for_code(status->code);
}

/* A socket connected to the daemon at path, or a negative errno with the message in c (NULL:
 * the thread's). */
static int open_socket(struct iommuctl *c, const char *path)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), err;

	if (fd < 0)
		return fail(c, -errno, "cannot create a Unix socket: %s", strerror(errno));
	strcpy(addr.sun_path, path);
	/* A connect interrupted on a Unix socket leaves it unconnected, so it can be retried. */
	while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		if (errno == EINTR)
			continue;
		err = -errno;
		(void)close(fd);
		if (err == -ENOENT || err == -ECONNREFUSED)
			return fail(c, err,
				    "cannot connect to iommud at %s: %s; is the daemon running "
				    "(systemctl status iommud)?",
				    path, strerror(-err));
		if (err == -EACCES)
			return fail(c, err,
				    "cannot connect to iommud at %s: %s; the socket's mode "
				    "(socket-mode in iommud.conf) does not let this user in",
				    path, strerror(-err));
		return fail(c, err, "cannot connect to iommud at %s: %s", path, strerror(-err));
	}
	return fd;
}

int iommuctl_connect(const char *path, struct iommuctl **out)
{
	struct iommuctl *c;
	int fd;

	*out = NULL;
	if (!path)
		path = getenv("IOMMUD_SOCKET");
	if (!path || !*path)
		path = IOMMUCTL_DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(c->path))
		return fail(NULL, -ENAMETOOLONG,
			    "socket path '%s' is longer than the %zu bytes a Unix socket address "
			    "holds; use a shorter path",
			    path, sizeof(c->path) - 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return fail(NULL, -ENOMEM, "out of memory allocating a connection to iommud");
	fd = open_socket(NULL, path);
	if (fd < 0) {
		free(c);
		return fd;
	}
	c->fd = fd;
	strcpy(c->path, path);
	c->reconnect_ms = RECONNECT_DEFAULT_MS;
	(void)snprintf(c->error, sizeof(c->error), "no error");
	*out = c;
	return 0;
}

static void pending_clear(struct pending_session *p)
{
	free(p->lease);
	free(p->client_name);
	*p = (struct pending_session){0};
}

void iommuctl_close(struct iommuctl *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		(void)close(c->fd);
	pending_clear(&c->pending);
	free(c->lease);
	free(c->client_name);
	free(c);
}

void iommuctl_set_reconnect(struct iommuctl *c, unsigned timeout_ms)
{
	c->reconnect_ms = timeout_ms;
}

void iommuctl_set_keep_maps(struct iommuctl *c, bool keep)
{
	c->keep_maps = keep;
}

/* The slot the daemon keeps fd in for this connection, or -1. */
static int kept_slot(const struct iommuctl *c, int fd)
{
	for (int slot = 0; slot < IOMMUD_KEPT_FILES; slot++)
		if (c->kept[slot].used && c->kept[slot].fd == fd)
			return slot;
	return -1;
}

/* Has the daemon keep the n descriptors fds in slots, and forget the n_forget slots forget. */
static int send_kept(struct iommuctl *c, const int *fds, uint32_t *slots, size_t n,
		     uint32_t *forget, size_t n_forget)
{
	Iommud__V1__KeepFilesRequest keep = IOMMUD__V1__KEEP_FILES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	keep.slots = slots;
	keep.n_slots = n;
	keep.forget = forget;
	keep.n_forget = n_forget;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_KEEP_FILES;
	req.keep_files = &keep;
	err = iommuctl_call(c, &req, fds, n, &r, NULL, 0, NULL);
	if (err == 0)
		iommuctl_response_free(r);
	return err;
}

/* After a reconnect: the new connection keeps what the old one did. */
static int keep_again(struct iommuctl *c)
{
	int fds[IOMMUD_KEPT_FILES];
	uint32_t slots[IOMMUD_KEPT_FILES];
	size_t n = 0;

	for (uint32_t slot = 0; slot < IOMMUD_KEPT_FILES; slot++)
		if (c->kept[slot].used) {
			fds[n] = c->kept[slot].fd;
			slots[n++] = slot;
		}
	return n ? send_kept(c, fds, slots, n, NULL, 0) : 0;
}

int iommuctl_keep_fd(struct iommuctl *c, int fd)
{
	uint32_t slot = 0;
	int err;

	if (kept_slot(c, fd) >= 0)
		return 0;
	while (slot < IOMMUD_KEPT_FILES && c->kept[slot].used)
		slot++;
	if (slot == IOMMUD_KEPT_FILES)
		return fail(c, -ENOSPC,
			    "the daemon keeps %d files for this connection already; forget one "
			    "(iommuctl_forget_fd) before keeping another",
			    IOMMUD_KEPT_FILES);
	if ((err = send_kept(c, &fd, &slot, 1, NULL, 0)) < 0)
		return err;
	c->kept[slot].used = true;
	c->kept[slot].fd = fd;
	return 0;
}

int iommuctl_forget_fd(struct iommuctl *c, int fd)
{
	int slot = kept_slot(c, fd), err;
	uint32_t forget = (uint32_t)slot;

	if (slot < 0)
		return fail(c, -ENOENT,
			    "descriptor %d is not kept by the daemon for this connection", fd);
	if ((err = send_kept(c, NULL, NULL, 0, &forget, 1)) < 0)
		return err;
	c->kept[slot].used = false;
	return 0;
}

int iommuctl_fd(const struct iommuctl *c)
{
	return c->fd;
}

/* The connection dropped: what was sent and not answered never will be. */
static void drop_connection(struct iommuctl *c)
{
	if (c->fd >= 0)
		(void)close(c->fd);
	c->fd = -1;
	c->sent = c->received = 0;
	pending_clear(&c->pending);
}

static void pause_ms(unsigned ms)
{
	struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};

	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/* Connects again, trying with a growing pause until c->reconnect_ms have passed. */
static int connect_again(struct iommuctl *c)
{
	unsigned waited = 0, pause = BACKOFF_FIRST_MS;
	int fd;

	for (;;) {
		fd = open_socket(c, c->path);
		if (fd >= 0) {
			c->fd = fd;
			return 0;
		}
		if ((fd != -ENOENT && fd != -ECONNREFUSED) || waited >= c->reconnect_ms)
			break;
		pause = pause < c->reconnect_ms - waited ? pause : c->reconnect_ms - waited;
		pause_ms(pause);
		waited += pause;
		pause = pause * 2 < BACKOFF_MAX_MS ? pause * 2 : BACKOFF_MAX_MS;
	}
	if (fd != -ENOENT && fd != -ECONNREFUSED)
		return fd;
	return fail(c, -ETIMEDOUT,
		    "iommud at %s is not back after %u ms of trying to reconnect (systemctl "
		    "status iommud; journalctl -u iommud says why it stopped)",
		    c->path, c->reconnect_ms);
}

static int session_ended(struct iommuctl *c)
{
	if (c->lease && c->lease_released)
		return fail(c, -ECONNRESET,
			    "the connection to iommud at %s dropped after lease '%s' was released, "
			    "so there is nothing to re-open; call iommuctl_reconnect for a new "
			    "connection",
			    c->path, c->lease);
	return fail(c, -ECONNRESET,
		    "the connection to iommud at %s dropped (the daemon stopped or restarted), "
		    "and with it the anonymous session: every domain, mapping and device it held "
		    "is gone; call iommuctl_reconnect to start afresh, or name a lease in hello "
		    "to keep state across restarts",
		    c->path);
}

/* How long a receive may wait on c's socket: ms, 0 for as long as it takes. */
static void receive_limit(struct iommuctl *c, unsigned ms)
{
	struct timeval limit = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

	(void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
}

/* Says hello again on the new connection, re-opening the lease, never creating one. A socket
 * the service manager holds accepts the connection before a daemon runs, so the answer too is
 * waited for within the limit. */
/* What of a Hello's answer the library itself goes by: a daemon restarted into another
 * version answers the re-opening Hello for itself. */
static void note_capabilities(struct iommuctl *c, const Iommud__V1__HelloReply *hello)
{
	c->batch_columns = c->batch_picked = false;
	for (size_t i = 0; hello && i < hello->n_capabilities; i++) {
		if (strcmp(hello->capabilities[i], "map_batch_columns") == 0)
			c->batch_columns = true;
		if (strcmp(hello->capabilities[i], "map_batch_picked_iovas") == 0)
			c->batch_picked = true;
	}
}

static int reopen_lease(struct iommuctl *c)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	char why[ERROR_MAX];
	Iommud__V1__Code code;
	int err;

	hello.client_version = IOMMUD_PROTOCOL_VERSION;
	hello.client_name = c->client_name ? c->client_name : "";
	hello.lease = c->lease;
	hello.existing_lease = true;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_HELLO;
	req.hello = &hello;
	c->reconnecting = true;
	receive_limit(c, c->reconnect_ms);
	err = iommuctl_call(c, &req, NULL, 0, &r, NULL, 0, NULL);
	c->reconnecting = false;
	if (err == 0) {
		receive_limit(c, 0);
		note_capabilities(c, r->hello);
		iommuctl_response_free(r);
		return keep_again(c);
	}
	if (c->fd >= 0)
		drop_connection(c);
	if (err == -EAGAIN)
		return fail(c, -ETIMEDOUT,
			    "iommud at %s took the connection but did not answer within %u ms: "
			    "the daemon is not back (systemctl status iommud; journalctl -u "
			    "iommud says why)",
			    c->path, c->reconnect_ms);
	(void)snprintf(why, sizeof(why), "%s", c->error);
	code = c->last_code;
	(void)fail(c, err, "cannot re-open lease '%s' after reconnecting to iommud at %s: %s",
		   c->lease, c->path, why);
	/* A refusal (NOT_FOUND: the daemon holds no such lease) keeps its code. */
	c->last_code = code;
	return err;
}

int iommuctl_reconnect(struct iommuctl *c)
{
	int err;

	if (c->fd >= 0)
		drop_connection(c);
	if (c->lease && c->lease_released) {
		free(c->lease);
		c->lease = NULL;
		c->lease_released = false;
	}
	if ((err = connect_again(c)) < 0)
		return err;
	return c->lease ? reopen_lease(c) : keep_again(c);
}

/* Whether a dropped connection is made again by itself: a lease to re-open, and leave to. */
static bool reopens_by_itself(const struct iommuctl *c)
{
	return c->lease && !c->lease_released && c->reconnect_ms && !c->reconnecting;
}

/* Before a request: a dropped connection is made again, with its lease, where it can be. */
static int ensure_connected(struct iommuctl *c)
{
	int err;

	if (c->fd >= 0)
		return 0;
	if (!c->lease || c->lease_released)
		return session_ended(c);
	if (!reopens_by_itself(c))
		return fail(
			c, -ENOTCONN,
			"the connection to iommud at %s dropped and reconnecting is turned off; "
			"call iommuctl_reconnect to re-open lease '%s'",
			c->path, c->lease);
	if ((err = connect_again(c)) < 0)
		return err;
	return reopen_lease(c);
}

static bool connection_dropped(int err)
{
	return err == -EPIPE || err == -ECONNRESET || err == -ENOTCONN;
}

static int transport_error(struct iommuctl *c, int err, const char *doing)
{
	if (connection_dropped(err))
		return fail(
			c, err,
			"iommud at %s closed the connection while %s (it stopped or "
			"restarted); whether the requests not answered took effect is unknown: "
			"on a lease, send them again (the next request reconnects; an identical "
			"Map or MapBatch is answered as done) or list what is there",
			c->path, doing);
	return fail(c, err, "%s failed on the connection to iommud at %s: %s", doing, c->path,
		    strerror(-err));
}

/* Notes a Hello or ReleaseLease sent as id, to follow its session once it succeeds. */
static int note_pending(struct iommuctl *c, const Iommud__V1__Request *req, uint64_t id)
{
	const Iommud__V1__HelloRequest *hello = req->hello;

	if (req->method_case == IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE) {
		pending_clear(&c->pending);
		c->pending = (struct pending_session){.id = id, .release = true};
	} else if (req->method_case == IOMMUD__V1__REQUEST__METHOD_HELLO && hello) {
		pending_clear(&c->pending);
		c->pending.id = id;
		if ((hello->lease && *hello->lease && !(c->pending.lease = strdup(hello->lease))) ||
		    !(c->pending.client_name =
			      strdup(hello->client_name ? hello->client_name : "")))
			return fail(c, -ENOMEM, "out of memory noting the session hello chose");
	}
	return 0;
}

/* A successful Hello or ReleaseLease changes what a reconnect re-opens. */
static void settle_pending(struct iommuctl *c, const Iommud__V1__Response *r)
{
	struct pending_session *p = &c->pending;

	if (!p->id || r->id != p->id)
		return;
	if (r->status && r->status->code != IOMMUD__V1__CODE__CODE_OK) {
		pending_clear(p);
		return;
	}
	if (p->release) {
		c->lease_released = true;
	} else {
		free(c->lease);
		free(c->client_name);
		c->lease = p->lease;
		c->client_name = p->client_name;
		c->lease_released = false;
		p->lease = p->client_name = NULL;
	}
	pending_clear(p);
}

/* Packs req as the next request on the connection and sends it. */
static int send_once(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds)
{
	size_t len;
	int err;

	req->id = c->sent + 1;
	len = envelope_pack(&req->base, c->txbuf, sizeof(c->txbuf));
	if (len > IOMMUD_MAX_MESSAGE)
		return fail(c, -EMSGSIZE,
			    "the request is %zu bytes, more than the %d a message may have; split "
			    "it (fewer map_batch entries, for instance)",
			    len, IOMMUD_MAX_MESSAGE);
	err = wire_send(c->fd, c->txbuf, len, fds, nfds, WIRE_BLOCK);
	return err < 0 ? transport_error(c, err, "sending a request") : 0;
}

int iommuctl_send(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds,
		  uint64_t *id)
{
	int err;

	if (nfds > IOMMUD_MAX_FDS)
		return fail(c, -EINVAL,
			    "a request carries at most %d file descriptors, not %zu; split it",
			    IOMMUD_MAX_FDS, nfds);
	if (!c->reconnecting && (err = ensure_connected(c)) < 0)
		return err;
	err = send_once(c, req, fds, nfds);
	/* Refused at sending, the request never reached the daemon: with no earlier one in flight,
	 * it goes again on a new connection (where the session can be re-opened). */
	if (connection_dropped(err) && c->sent == c->received && !c->reconnecting) {
		drop_connection(c);
		if ((err = ensure_connected(c)) == 0)
			err = send_once(c, req, fds, nfds);
	}
	if (connection_dropped(err))
		drop_connection(c);
	if (err < 0)
		return err;
	c->sent++;
	if ((err = note_pending(c, req, req->id)) < 0)
		return err;
	if (id)
		*id = req->id;
	return 0;
}

/* Decodes a received packet as the response next in order. */
static int decode_response(struct iommuctl *c, const struct wire_packet *packet,
			   Iommud__V1__Response **ret_resp)
{
	Iommud__V1__Response *r;

	if (packet->truncated || packet->fds_truncated)
		return fail(c, -EPROTO,
			    "a response from iommud at %s carried more than the %d %s protocol "
			    "version %d allows; the daemon and this library do not agree, update "
			    "the older one",
			    c->path, packet->fds_truncated ? IOMMUD_MAX_FDS : IOMMUD_MAX_MESSAGE,
			    packet->fds_truncated ? "file descriptors" : "bytes",
			    IOMMUD_PROTOCOL_VERSION);
	r = (Iommud__V1__Response *)envelope_unpack(&iommud__v1__response__descriptor, NULL,
						    packet->len, c->rxbuf);
	if (!r)
		return fail(c, -EPROTO,
			    "cannot decode a %zu-byte response from iommud at %s; the daemon and "
			    "this library do not agree on the protocol, update the older one",
			    packet->len, c->path);
	/* Id 0 answers a packet the daemon could not decode, still in its place in the order. */
	if (r->id != c->received && r->id != 0) {
		uint64_t id = r->id;

		iommuctl_response_free(r);
		return fail(c, -EPROTO,
			    "iommud answered request %llu when request %llu was next; responses "
			    "must come in order, so the daemon is broken",
			    (unsigned long long)id, (unsigned long long)c->received);
	}
	*ret_resp = r;
	return 0;
}

/* Gives the caller at most max_fds (none when fds is NULL) of a packet's descriptors, closes
 * the rest, and returns how many it gave. */
static size_t keep_fds(const struct wire_packet *packet, int *fds, size_t max_fds)
{
	size_t keep = 0;

	if (fds)
		keep = packet->n_fds < max_fds ? packet->n_fds : max_fds;
	if (keep)
		memcpy(fds, packet->fds, keep * sizeof(int));
	wire_close_fds(packet->fds + keep, packet->n_fds - keep);
	return keep;
}

int iommuctl_recv(struct iommuctl *c, Iommud__V1__Response **resp, int *fds, size_t max_fds,
		  size_t *nfds)
{
	struct wire_packet packet;
	Iommud__V1__Response *r = NULL; /* fail()'s result is opaque to the compiler */
	size_t kept;
	int err;

	*resp = NULL;
	if (nfds)
		*nfds = 0;
	if (c->received == c->sent)
		return fail(c, -EINVAL, "no request is waiting for a response; send one first");
	err = wire_recv(c->fd, c->rxbuf, sizeof(c->rxbuf), WIRE_BLOCK, &packet);
	if (err < 0) {
		if (connection_dropped(err))
			drop_connection(c);
		return transport_error(c, err, "waiting for a response");
	}
	/* A packet is a response even when it is damaged, so the ones after it still match. */
	c->received++;
	err = decode_response(c, &packet, &r);
	if (err < 0) {
		wire_close_fds(packet.fds, packet.n_fds);
		return err;
	}
	kept = keep_fds(&packet, fds, max_fds);
	if (nfds)
		*nfds = kept;
	c->last_code = r->status ? r->status->code : IOMMUD__V1__CODE__CODE_OK;
	settle_pending(c, r);
	*resp = r;
	return 0;
}

void iommuctl_response_free(Iommud__V1__Response *resp)
{
	envelope_free(resp ? &resp->base : NULL, NULL);
}

int iommuctl_call(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds,
		  Iommud__V1__Response **resp, int *fds_out, size_t max_fds, size_t *nfds_out)
{
	Iommud__V1__Response *r;
	size_t n = 0;
	int err;

	*resp = NULL;
	if (nfds_out)
		*nfds_out = 0;
	err = iommuctl_send(c, req, fds, nfds, NULL);
	if (err)
		return err;
	err = iommuctl_recv(c, &r, fds_out, max_fds, &n);
	if (err)
		return err;
	err = iommuctl_status_errno(r->status);
	c->failed_index = err && r->status ? r->status->failed_index : -1;
	if (err) {
		const char *msg = r->status->message;

		(void)snprintf(c->error, sizeof(c->error), "%s",
			       msg && *msg ? msg : iommuctl_code_name(r->status->code));
	} else if ((int)r->result_case != (int)req->method_case) {
		/* Both oneofs number their fields by method, so they must match. */
		err = fail(c, -EPROTO,
			   "iommud answered method %d with result %d; the daemon and this library "
			   "do not agree on the protocol, update the older one",
			   (int)req->method_case, (int)r->result_case);
	}
	if (err) {
		if (fds_out)
			wire_close_fds(fds_out, n);
		iommuctl_response_free(r);
		return err;
	}
	if (nfds_out)
		*nfds_out = n;
	*resp = r;
	return 0;
}

/* ---- plain calls ---------------------------------------------------------------------- */

/* A request carrying msg, the message of the given method. The oneof member is found through
 * the schema's descriptor (the method is its field number), as protobuf-c sets fields itself,
 * so every plain call builds its envelope here. */
static Iommud__V1__Request request_of(Iommud__V1__Request__MethodCase method, ProtobufCMessage *msg)
{
	const ProtobufCFieldDescriptor *field = protobuf_c_message_descriptor_get_field(
		&iommud__v1__request__descriptor, (unsigned)method);
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.method_case = method;
	memcpy((char *)&req + field->offset, &msg, sizeof(msg));
	return req;
}

/* Calls a method that takes and gives no descriptors; *resp as with iommuctl_call. */
static int call_method(struct iommuctl *c, Iommud__V1__Request__MethodCase method,
		       ProtobufCMessage *msg, Iommud__V1__Response **resp)
{
	Iommud__V1__Request req = request_of(method, msg);

	return iommuctl_call(c, &req, NULL, 0, resp, NULL, 0, NULL);
}

/* Calls a method whose reply says nothing but whether it succeeded. */
static int call_simple(struct iommuctl *c, Iommud__V1__Request__MethodCase method,
		       ProtobufCMessage *msg)
{
	Iommud__V1__Response *r;
	int err = call_method(c, method, msg, &r);

	iommuctl_response_free(r);
	return err;
}

int iommuctl_hello(struct iommuctl *c, const char *client_name, const char *lease,
		   Iommud__V1__HelloReply **reply)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	if (reply)
		*reply = NULL;
	hello.client_version = IOMMUD_PROTOCOL_VERSION;
	hello.client_name = (char *)(client_name ? client_name : "");
	hello.lease = (char *)(lease ? lease : "");
	err = call_method(c, IOMMUD__V1__REQUEST__METHOD_HELLO, &hello.base, &r);
	if (err)
		return err;
	note_capabilities(c, r->hello);
	if (reply) {
		/* protobuf-c allocates sub-messages on their own, so the reply can be handed out
		 * and the envelope freed around it. */
		*reply = r->hello;
		r->hello = NULL;
		r->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
	}
	iommuctl_response_free(r);
	return 0;
}

int iommuctl_alloc_domain(struct iommuctl *c, const char *device, enum iommuctl_domain_type type,
			  uint32_t flags, uint32_t *domain_id)
{
	Iommud__V1__AllocDomainRequest alloc = IOMMUD__V1__ALLOC_DOMAIN_REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	alloc.type = (Iommud__V1__DomainType)type;
	alloc.device = (char *)device;
	alloc.dirty_tracking = !!(flags & IOMMUCTL_DOMAIN_DIRTY_TRACKING);
	alloc.nest_parent = !!(flags & IOMMUCTL_DOMAIN_NEST_PARENT);
	err = call_method(c, IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN, &alloc.base, &r);
	if (err)
		return err;
	*domain_id = r->alloc_domain->domain_id;
	iommuctl_response_free(r);
	return 0;
}

int iommuctl_free_domain(struct iommuctl *c, uint32_t domain_id)
{
	Iommud__V1__FreeDomainRequest free_domain = IOMMUD__V1__FREE_DOMAIN_REQUEST__INIT;

	free_domain.domain_id = domain_id;
	return call_simple(c, IOMMUD__V1__REQUEST__METHOD_FREE_DOMAIN, &free_domain.base);
}

int iommuctl_attach(struct iommuctl *c, const char *device, uint32_t domain_id)
{
	Iommud__V1__AttachDeviceRequest attach = IOMMUD__V1__ATTACH_DEVICE_REQUEST__INIT;

	attach.device = (char *)device;
	attach.domain_id = domain_id;
	return call_simple(c, IOMMUD__V1__REQUEST__METHOD_ATTACH_DEVICE, &attach.base);
}

int iommuctl_replace(struct iommuctl *c, const char *device, uint32_t domain_id)
{
	Iommud__V1__ReplaceDomainRequest replace = IOMMUD__V1__REPLACE_DOMAIN_REQUEST__INIT;

	replace.device = (char *)device;
	replace.domain_id = domain_id;
	return call_simple(c, IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN, &replace.base);
}

int iommuctl_detach(struct iommuctl *c, const char *device)
{
	Iommud__V1__DetachDeviceRequest detach = IOMMUD__V1__DETACH_DEVICE_REQUEST__INIT;

	detach.device = (char *)device;
	return call_simple(c, IOMMUD__V1__REQUEST__METHOD_DETACH_DEVICE, &detach.base);
}

int iommuctl_map_fd(struct iommuctl *c, uint32_t domain_id, int fd, uint64_t offset,
		    uint64_t length, uint32_t prot, bool fixed, uint64_t alignment, uint64_t *iova)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req;
	Iommud__V1__Response *r;
	uint32_t kept_file;
	int err, slot;

	entry.domain_id = domain_id;
	entry.fd_index = 0;
	entry.offset = offset;
	entry.length = length;
	entry.prot = prot;
	entry.fixed_iova = fixed;
	entry.iova = fixed ? *iova : 0;
	entry.alignment = alignment;
	map.entry = &entry;
	if ((slot = kept_slot(c, fd)) >= 0) {
		kept_file = (uint32_t)slot;
		map.kept_files = &kept_file;
		map.n_kept_files = 1;
	}
	req = request_of(IOMMUD__V1__REQUEST__METHOD_MAP, &map.base);
	err = iommuctl_call(c, &req, &fd, slot >= 0 ? 0 : 1, &r, NULL, 0, NULL);
	if (err)
		return err;
	*iova = r->map->iova;
	iommuctl_response_free(r);
	return 0;
}

/* ---- MapBatch ------------------------------------------------------------------------- */

/* A batch's request in either form, built in one allocation sized for n entries. */
struct batch {
	Iommud__V1__MapBatchRequest req;
	Iommud__V1__MapEntryColumns columns;
	int fds[IOMMUD_MAX_FDS];
	size_t nfds;
	uint32_t kept_files[IOMMUD_KEPT_FILES]; /* slots named, after the fds carried */
	size_t n_kept_files;
	uint32_t *domain_ids, *fd_indexes, *prots;
	uint64_t *offsets, *lengths, *iovas, *alignments;
	protobuf_c_boolean *fixed_iovas;
	Iommud__V1__MapEntry *entries, **entry_ptrs;
};

/* Marks a batch's fd_index as one of its kept files' until iommuctl_map_batch places it. */
#define BATCH_KEPT_INDEX 0x80000000u

/* The index of fd among the batch's descriptors, added on first sight; a kept one's among its
 * kept files, marked with BATCH_KEPT_INDEX. */
static int batch_fd_index(struct iommuctl *c, struct batch *b, int fd, uint32_t *ret_index)
{
	int slot = kept_slot(c, fd);
	size_t i = 0;

	if (slot >= 0) {
		while (i < b->n_kept_files && b->kept_files[i] != (uint32_t)slot)
			i++;
		if (i == b->n_kept_files)
			b->kept_files[b->n_kept_files++] = (uint32_t)slot;
		*ret_index = (uint32_t)i | BATCH_KEPT_INDEX;
		return 0;
	}
	while (i < b->nfds && b->fds[i] != fd)
		i++;
	if (i == b->nfds) {
		if (b->nfds == IOMMUD_MAX_FDS)
			return fail(
				c, -E2BIG,
				"a batch's entries name more than %d different files; a request "
				"carries at most that many: split the batch by file",
				IOMMUD_MAX_FDS);
		b->fds[b->nfds++] = fd;
	}
	*ret_index = (uint32_t)i;
	return 0;
}

/* A column keeps one value when every entry has it: what is the same for all costs nothing per
 * entry on the wire (protocol.md, "MapBatch"). */
#define COLUMN_SET(cols, name, values, n)                                                          \
	do {                                                                                       \
		size_t k_ = 1;                                                                     \
		while (k_ < (n) && (values)[k_] == (values)[0])                                    \
			k_++;                                                                      \
		(cols)->n_##name = k_ == (n) ? 1 : (n);                                            \
		(cols)->name = (values);                                                           \
	} while (0)

static void batch_columns(struct batch *b, const struct iommuctl_map_entry *e, size_t n)
{
	Iommud__V1__MapEntryColumns *cols = &b->columns;

	for (size_t i = 0; i < n; i++) {
		b->domain_ids[i] = e[i].domain_id;
		b->offsets[i] = e[i].offset;
		b->lengths[i] = e[i].length;
		b->prots[i] = e[i].prot;
		b->fixed_iovas[i] = e[i].fixed_iova;
		b->iovas[i] = e[i].fixed_iova ? e[i].iova : 0;
		b->alignments[i] = e[i].alignment;
	}
	*cols = (Iommud__V1__MapEntryColumns)IOMMUD__V1__MAP_ENTRY_COLUMNS__INIT;
	COLUMN_SET(cols, domain_ids, b->domain_ids, n);
	COLUMN_SET(cols, fd_indexes, b->fd_indexes, n);
	COLUMN_SET(cols, offsets, b->offsets, n);
	COLUMN_SET(cols, lengths, b->lengths, n);
	COLUMN_SET(cols, prots, b->prots, n);
	COLUMN_SET(cols, fixed_iovas, b->fixed_iovas, n);
	COLUMN_SET(cols, iovas, b->iovas, n);
	COLUMN_SET(cols, alignments, b->alignments, n);
	b->req.columns = cols;
}

static void batch_entries(struct batch *b, const struct iommuctl_map_entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		b->entries[i] = (Iommud__V1__MapEntry)IOMMUD__V1__MAP_ENTRY__INIT;
		b->entries[i].domain_id = e[i].domain_id;
		b->entries[i].fd_index = b->fd_indexes[i];
		b->entries[i].offset = e[i].offset;
		b->entries[i].length = e[i].length;
		b->entries[i].prot = e[i].prot;
		b->entries[i].fixed_iova = e[i].fixed_iova;
		b->entries[i].iova = e[i].fixed_iova ? e[i].iova : 0;
		b->entries[i].alignment = e[i].alignment;
		b->entry_ptrs[i] = &b->entries[i];
	}
	b->req.n_entries = n;
	b->req.entries = b->entry_ptrs;
}

static struct batch *batch_new(size_t n)
{
	size_t words = 8 * n, size = sizeof(struct batch) + words * sizeof(uint64_t) +
				     n * (sizeof(Iommud__V1__MapEntry) + sizeof(void *));
	struct batch *b = calloc(1, size);
	uint64_t *w;

	if (!b)
		return NULL;
	w = (uint64_t *)(b + 1);
	b->offsets = w;
	b->lengths = w + n;
	b->iovas = w + 2 * n;
	b->alignments = w + 3 * n;
	b->domain_ids = (uint32_t *)(w + 4 * n);
	b->fd_indexes = (uint32_t *)(w + 5 * n);
	b->prots = (uint32_t *)(w + 6 * n);
	b->fixed_iovas = (protobuf_c_boolean *)(w + 7 * n);
	b->entries = (Iommud__V1__MapEntry *)(w + words);
	b->entry_ptrs = (Iommud__V1__MapEntry **)(b->entries + n);
	b->req = (Iommud__V1__MapBatchRequest)IOMMUD__V1__MAP_BATCH_REQUEST__INIT;
	return b;
}

/* Stores where the daemon mapped each entry: every entry's IOVA from the reply, or with
 * picked_only, the reply's IOVAs of the entries it picked one for, in order. */
static int batch_iovas(struct iommuctl *c, struct iommuctl_map_entry *entries, size_t n,
		       bool picked_only, const Iommud__V1__MapBatchReply *reply)
{
	size_t expected = n, next = 0;

	if (picked_only) {
		expected = 0;
		for (size_t i = 0; i < n; i++)
			expected += !entries[i].fixed_iova;
	}
	if (reply->n_iovas != expected)
		return fail(c, -EPROTO,
			    "iommud answered a batch of %zu entries with %zu addresses, not %zu", n,
			    reply->n_iovas, expected);
	for (size_t i = 0; i < n; i++)
		if (!picked_only || !entries[i].fixed_iova)
			entries[i].iova = reply->iovas[next++];
	return 0;
}

int iommuctl_map_batch(struct iommuctl *c, struct iommuctl_map_entry *entries, size_t n,
		       size_t *ret_failed)
{
	Iommud__V1__Request req;
	Iommud__V1__Response *r = NULL;
	struct batch *b;
	int err = 0;

	c->failed_index = -1; /* an earlier call's, until this batch's reply says */
	if (!n)
		return fail(c, -EINVAL, "a batch needs at least one entry");
	if (!(b = batch_new(n)))
		return fail(c, -ENOMEM, "no memory for a batch of %zu entries", n);
	for (size_t i = 0; i < n && !err; i++)
		err = batch_fd_index(c, b, entries[i].fd, &b->fd_indexes[i]);
	if (!err && b->nfds + b->n_kept_files > IOMMUD_MAX_FDS)
		err = fail(c, -E2BIG,
			   "a batch's entries name %zu files sent and %zu kept; a request names at "
			   "most %d: split the batch by file",
			   b->nfds, b->n_kept_files, IOMMUD_MAX_FDS);
	/* Kept files come after the descriptors the request carries. */
	for (size_t i = 0; i < n && !err; i++)
		if (b->fd_indexes[i] & BATCH_KEPT_INDEX)
			b->fd_indexes[i] =
				(uint32_t)b->nfds + (b->fd_indexes[i] & ~BATCH_KEPT_INDEX);
	b->req.kept_files = b->kept_files;
	b->req.n_kept_files = b->n_kept_files;
	/* The entries at fixed IOVAs went where they asked; only the others' are news. */
	b->req.picked_iovas_only = c->batch_picked;
	if (!err) {
		if (c->batch_columns)
			batch_columns(b, entries, n);
		else
			batch_entries(b, entries, n);
		req = request_of(IOMMUD__V1__REQUEST__METHOD_MAP_BATCH, &b->req.base);
		err = iommuctl_call(c, &req, b->fds, b->nfds, &r, NULL, 0, NULL);
	}
	if (err == 0)
		err = batch_iovas(c, entries, n, b->req.picked_iovas_only, r->map_batch);
	if (ret_failed)
		*ret_failed = err && c->failed_index >= 0 && (size_t)c->failed_index < n
				      ? (size_t)c->failed_index
				      : n;
	/* NULL where the call failed; a reply of the wrong size goes too. */
	iommuctl_response_free(r);
	free(b);
	return err;
}

/* Unmap and UnmapAll: call, then report the bytes their replies count. */
static int call_unmapped(struct iommuctl *c, Iommud__V1__Request__MethodCase method,
			 ProtobufCMessage *msg, uint64_t *unmapped)
{
	Iommud__V1__Response *r;
	int err = call_method(c, method, msg, &r);

	if (err)
		return err;
	if (unmapped)
		*unmapped = r->result_case == IOMMUD__V1__RESPONSE__RESULT_UNMAP
				    ? r->unmap->unmapped_bytes
				    : r->unmap_all->unmapped_bytes;
	iommuctl_response_free(r);
	return 0;
}

int iommuctl_unmap(struct iommuctl *c, uint32_t domain_id, uint64_t iova, uint64_t length,
		   uint64_t *unmapped)
{
	Iommud__V1__UnmapRequest unmap = IOMMUD__V1__UNMAP_REQUEST__INIT;

	unmap.domain_id = domain_id;
	unmap.iova = iova;
	unmap.length = length;
	unmap.keep_map = c->keep_maps;
	return call_unmapped(c, IOMMUD__V1__REQUEST__METHOD_UNMAP, &unmap.base, unmapped);
}

int iommuctl_unmap_all(struct iommuctl *c, uint32_t domain_id, uint64_t *unmapped)
{
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;

	unmap_all.domain_id = domain_id;
	unmap_all.keep_map = c->keep_maps;
	return call_unmapped(c, IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL, &unmap_all.base, unmapped);
}

int iommuctl_open_device(struct iommuctl *c, const char *device)
{
	Iommud__V1__OpenDeviceRequest open_device = IOMMUD__V1__OPEN_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req;
	Iommud__V1__Response *r;
	size_t n;
	int fd, err;

	open_device.device = (char *)device;
	req = request_of(IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE, &open_device.base);
	err = iommuctl_call(c, &req, NULL, 0, &r, &fd, 1, &n);
	if (err)
		return err;
	iommuctl_response_free(r);
	if (n != 1)
		return fail(c, -EPROTO,
			    "iommud's open_device reply for %s carried no file descriptor; the "
			    "daemon is broken",
			    device);
	return fd;
}

int iommuctl_delegate(struct iommuctl *c, const char *const *devices, size_t n, uint32_t vmm_pid,
		      int *ret_fds, uint64_t *ret_id)
{
	Iommud__V1__DelegateDevicesRequest delegate = IOMMUD__V1__DELEGATE_DEVICES_REQUEST__INIT;
	int fds[1 + IOMMUCTL_DELEGATE_MAX];
	Iommud__V1__Request req;
	Iommud__V1__Response *r;
	size_t got;
	int err;

	if (n == 0 || n > IOMMUCTL_DELEGATE_MAX)
		return fail(c, -EINVAL, "a delegation takes 1 to %d devices, not %zu",
			    IOMMUCTL_DELEGATE_MAX, n);
	delegate.devices = (char **)devices;
	delegate.n_devices = n;
	delegate.vmm_pid = vmm_pid;
	req = request_of(IOMMUD__V1__REQUEST__METHOD_DELEGATE_DEVICES, &delegate.base);
	err = iommuctl_call(c, &req, NULL, 0, &r, fds, n + 1, &got);
	if (err)
		return err;
	if (got != n + 1) {
		for (size_t i = 0; i < got; i++)
			(void)close(fds[i]);
		iommuctl_response_free(r);
		return fail(c, -EPROTO,
			    "iommud's delegate_devices reply carried %zu file descriptors for %zu "
			    "devices and their iommufd; the daemon is broken",
			    got, n);
	}
	if (ret_id)
		*ret_id = r->delegate_devices->delegation_id;
	iommuctl_response_free(r);
	memcpy(ret_fds, fds, (n + 1) * sizeof(int));
	return 0;
}

int iommuctl_set_probes(struct iommuctl *c, bool attached, Iommud__V1__ProbeTier *ret_tier,
			bool *ret_attached)
{
	Iommud__V1__SetProbesRequest set = IOMMUD__V1__SET_PROBES_REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	set.attached = attached;
	err = call_method(c, IOMMUD__V1__REQUEST__METHOD_SET_PROBES, &set.base, &r);
	if (err)
		return err;
	if (ret_tier)
		*ret_tier = r->set_probes->tier;
	if (ret_attached)
		*ret_attached = r->set_probes->attached;
	iommuctl_response_free(r);
	return 0;
}

int iommuctl_memfd(const char *name, uint64_t size)
{
	int fd, err;

	if (size > (uint64_t)INT64_MAX)
		return fail(NULL, -EFBIG, "a memfd of %llu bytes is larger than a file can be",
			    (unsigned long long)size);
	fd = memfd_create(name ? name : "iommuctl", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return fail(NULL, -errno, "cannot create a memfd: %s", strerror(errno));
	if (ftruncate(fd, (off_t)size) < 0) {
		err = -errno;
		(void)close(fd);
		return fail(NULL, err, "cannot size a memfd to %llu bytes: %s",
			    (unsigned long long)size, strerror(-err));
	}
	/* The daemon maps the file's pages; a shrink would pull them from under the device. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		err = -errno;
		(void)close(fd);
		return fail(NULL, err, "cannot seal a memfd against shrinking: %s", strerror(-err));
	}
	return fd;
}
