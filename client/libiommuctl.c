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
#include <sys/un.h>
#include <unistd.h>

#include <iommud_wire.h>

#include "iommuctl.h"

#define ERROR_MAX 512

struct iommuctl {
	int fd;
	/* Ids are 1, 2, 3...: the id of the next response is then received + 1. */
	uint64_t sent;
	uint64_t received;
	Iommud__V1__Code last_code;
	char error[ERROR_MAX];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	/* Exactly the limit: a longer packet arrives truncated, and wire_recv says so. */
	uint8_t rxbuf[IOMMUD_MAX_MESSAGE];
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

int iommuctl_connect(const char *path, struct iommuctl **out)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct iommuctl *c;
	int err;

	*out = NULL;
	if (!path)
		path = getenv("IOMMUD_SOCKET");
	if (!path || !*path)
		path = IOMMUCTL_DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(addr.sun_path))
		return fail(NULL, -ENAMETOOLONG,
			    "socket path '%s' is longer than the %zu bytes a Unix socket address "
			    "holds; use a shorter path",
			    path, sizeof(addr.sun_path) - 1);
	strcpy(addr.sun_path, path);

	c = calloc(1, sizeof(*c));
	if (!c)
		return fail(NULL, -ENOMEM, "out of memory allocating a connection to iommud");
	strcpy(c->path, path);
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		err = -errno;
		free(c);
		return fail(NULL, err, "cannot create a Unix socket: %s", strerror(-err));
	}
	/* A connect interrupted on a Unix socket leaves it unconnected, so it can be retried. */
	while (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		if (errno == EINTR)
			continue;
		err = -errno;
		(void)close(c->fd);
		free(c);
		if (err == -ENOENT || err == -ECONNREFUSED)
			return fail(NULL, err,
				    "cannot connect to iommud at %s: %s; is the daemon running "
				    "(systemctl status iommud)?",
				    path, strerror(-err));
		if (err == -EACCES)
			return fail(NULL, err,
				    "cannot connect to iommud at %s: %s; the socket's mode "
				    "(socket-mode in iommud.conf) does not let this user in",
				    path, strerror(-err));
		return fail(NULL, err, "cannot connect to iommud at %s: %s", path, strerror(-err));
	}
	(void)snprintf(c->error, sizeof(c->error), "no error");
	*out = c;
	return 0;
}

void iommuctl_close(struct iommuctl *c)
{
	if (!c)
		return;
	(void)close(c->fd);
	free(c);
}

static int transport_error(struct iommuctl *c, int err, const char *doing)
{
	if (err == -EPIPE || err == -ECONNRESET)
		return fail(c, err,
			    "iommud at %s closed the connection while %s (it may have stopped or "
			    "restarted); reconnect",
			    c->path, doing);
	return fail(c, err, "%s failed on the connection to iommud at %s: %s", doing, c->path,
		    strerror(-err));
}

int iommuctl_send(struct iommuctl *c, Iommud__V1__Request *req, const int *fds, size_t nfds,
		  uint64_t *id)
{
	uint8_t *buf;
	size_t len;
	int err;

	if (nfds > IOMMUD_MAX_FDS)
		return fail(c, -EINVAL,
			    "a request carries at most %d file descriptors, not %zu; split it",
			    IOMMUD_MAX_FDS, nfds);
	req->id = c->sent + 1;
	len = iommud__v1__request__get_packed_size(req);
	if (len > IOMMUD_MAX_MESSAGE)
		return fail(c, -EMSGSIZE,
			    "the request is %zu bytes, more than the %d a message may have; split "
			    "it (fewer map_batch entries, for instance)",
			    len, IOMMUD_MAX_MESSAGE);
	buf = malloc(len ? len : 1);
	if (!buf)
		return fail(c, -ENOMEM, "out of memory packing a request of %zu bytes", len);
	(void)iommud__v1__request__pack(req, buf);
	err = wire_send(c->fd, buf, len, fds, nfds, WIRE_BLOCK);
	free(buf);
	if (err < 0)
		return transport_error(c, err, "sending a request");
	c->sent++;
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
	r = iommud__v1__response__unpack(NULL, packet->len, c->rxbuf);
	if (!r)
		return fail(c, -EPROTO,
			    "cannot decode a %zu-byte response from iommud at %s; the daemon and "
			    "this library do not agree on the protocol, update the older one",
			    packet->len, c->path);
	/* Id 0 answers a packet the daemon could not decode, still in its place in the order. */
	if (r->id != c->received && r->id != 0) {
		uint64_t id = r->id;

		iommud__v1__response__free_unpacked(r, NULL);
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
	if (err < 0)
		return transport_error(c, err, "waiting for a response");
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
	*resp = r;
	return 0;
}

void iommuctl_response_free(Iommud__V1__Response *resp)
{
	if (resp)
		iommud__v1__response__free_unpacked(resp, NULL);
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
		iommud__v1__response__free_unpacked(r, NULL);
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
	int err;

	entry.domain_id = domain_id;
	entry.fd_index = 0;
	entry.offset = offset;
	entry.length = length;
	entry.prot = prot;
	entry.fixed_iova = fixed;
	entry.iova = fixed ? *iova : 0;
	entry.alignment = alignment;
	map.entry = &entry;
	req = request_of(IOMMUD__V1__REQUEST__METHOD_MAP, &map.base);
	err = iommuctl_call(c, &req, &fd, 1, &r, NULL, 0, NULL);
	if (err)
		return err;
	*iova = r->map->iova;
	iommuctl_response_free(r);
	return 0;
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
	return call_unmapped(c, IOMMUD__V1__REQUEST__METHOD_UNMAP, &unmap.base, unmapped);
}

int iommuctl_unmap_all(struct iommuctl *c, uint32_t domain_id, uint64_t *unmapped)
{
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;

	unmap_all.domain_id = domain_id;
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
