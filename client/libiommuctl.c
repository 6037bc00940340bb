/* SPDX-License-Identifier: MIT */
/*
 * libiommuctl: the transport of docs/protocol.md on the client side, and the plain calls built
 * on it. Framing is one packed protobuf message per SOCK_SEQPACKET packet, with descriptors as
 * SCM_RIGHTS beside it.
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
	/* One byte more than the largest message, so an oversized one shows as such. */
	uint8_t rxbuf[IOMMUCTL_MAX_MESSAGE + 1];
};

/* Failures of calls that have no connection (connect, memfd), for iommuctl_last_error(NULL). */
static _Thread_local char unconnected_error[ERROR_MAX];

__attribute__((format(printf, 3, 4))) static int fail(struct iommuctl *c, int err, const char *fmt,
						      ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c ? c->error : unconnected_error, ERROR_MAX, fmt, ap);
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
	switch (status->code) {
	case IOMMUD__V1__CODE__CODE_NOT_FOUND:
		return -ENOENT;
	case IOMMUD__V1__CODE__CODE_ALREADY_EXISTS:
		return -EEXIST;
	case IOMMUD__V1__CODE__CODE_PERMISSION_DENIED:
		return -EPERM;
	case IOMMUD__V1__CODE__CODE_RESOURCE_EXHAUSTED:
		return -ENOSPC;
	case IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION:
		return -EBUSY;
	case IOMMUD__V1__CODE__CODE_OUT_OF_RANGE:
		return -ERANGE;
	case IOMMUD__V1__CODE__CODE_UNIMPLEMENTED:
		return -EOPNOTSUPP;
	case IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT:
		return -EINVAL;
	case IOMMUD__V1__CODE__CODE_UNAVAILABLE:
		return -ECONNREFUSED;
	default:
		return -EIO;
	}
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
		close(c->fd);
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
	snprintf(c->error, sizeof(c->error), "no error");
	*out = c;
	return 0;
}

void iommuctl_close(struct iommuctl *c)
{
	if (!c)
		return;
	close(c->fd);
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
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * IOMMUCTL_MAX_FDS)];
	} control;
	uint8_t *buf;
	size_t len;
	struct iovec iov;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n;

	if (nfds > IOMMUCTL_MAX_FDS)
		return fail(c, -EINVAL,
			    "a request carries at most %d file descriptors, not %zu; split it",
			    IOMMUCTL_MAX_FDS, nfds);
	req->id = c->sent + 1;
	len = iommud__v1__request__get_packed_size(req);
	if (len > IOMMUCTL_MAX_MESSAGE)
		return fail(c, -EMSGSIZE,
			    "the request is %zu bytes, more than the %d a message may have; split "
			    "it (fewer MapBatch entries, for instance)",
			    len, IOMMUCTL_MAX_MESSAGE);
	buf = malloc(len ? len : 1);
	if (!buf)
		return fail(c, -ENOMEM, "out of memory packing a request of %zu bytes", len);
	iommud__v1__request__pack(req, buf);
	iov = (struct iovec){.iov_base = buf, .iov_len = len};
	if (nfds) {
		struct cmsghdr *cmsg;

		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
	}
	/* MSG_NOSIGNAL: a daemon gone away is an error to report, not a SIGPIPE to die of. */
	do
		n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	free(buf);
	if (n < 0)
		return transport_error(c, -errno, "sending a request");
	c->sent++;
	if (id)
		*id = req->id;
	return 0;
}

static void close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

int iommuctl_recv(struct iommuctl *c, Iommud__V1__Response **resp, int *fds, size_t max_fds,
		  size_t *nfds)
{
	union {
		struct cmsghdr align;
		/* Room for more than the limit, so a daemon that sends too many is caught. */
		char buf[CMSG_SPACE(sizeof(int) * (IOMMUCTL_MAX_FDS + 1))];
	} control;
	struct iovec iov = {.iov_base = c->rxbuf, .iov_len = sizeof(c->rxbuf)};
	struct msghdr msg = {.msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf)};
	int got[IOMMUCTL_MAX_FDS + 1];
	size_t ngot = 0;
	uint64_t expected = c->received + 1;
	Iommud__V1__Response *r;
	ssize_t n;

	*resp = NULL;
	if (nfds)
		*nfds = 0;
	if (c->received == c->sent)
		return fail(c, -EINVAL, "no request is waiting for a response; send one first");
	do
		n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return transport_error(c, -errno, "receiving a response");
	for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		size_t k;

		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (k > IOMMUCTL_MAX_FDS + 1 - ngot)
			k = IOMMUCTL_MAX_FDS + 1 - ngot;
		memcpy(got + ngot, CMSG_DATA(cmsg), k * sizeof(int));
		ngot += k;
	}
	if (n == 0) {
		close_fds(got, ngot);
		return transport_error(c, -ECONNRESET, "waiting for a response");
	}
	/* A packet is a response even when it is damaged, so the ones after it still match. */
	c->received++;
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC) || n > IOMMUCTL_MAX_MESSAGE ||
	    ngot > IOMMUCTL_MAX_FDS) {
		bool fds_over = msg.msg_flags & MSG_CTRUNC || ngot > IOMMUCTL_MAX_FDS;

		close_fds(got, ngot);
		return fail(c, -EPROTO,
			    "a response from iommud at %s carried more than the %d %s protocol "
			    "version %d allows; the daemon and this library do not agree, update "
			    "the older one",
			    c->path, fds_over ? IOMMUCTL_MAX_FDS : IOMMUCTL_MAX_MESSAGE,
			    fds_over ? "file descriptors" : "bytes", IOMMUCTL_PROTOCOL_VERSION);
	}
	r = iommud__v1__response__unpack(NULL, (size_t)n, c->rxbuf);
	if (!r) {
		close_fds(got, ngot);
		return fail(c, -EPROTO,
			    "cannot decode a %zd-byte response from iommud at %s; the daemon and "
			    "this library do not agree on the protocol, update the older one",
			    n, c->path);
	}
	/* Id 0 answers a packet the daemon could not decode, still in its place in the order. */
	if (r->id != expected && r->id != 0) {
		uint64_t id = r->id;

		iommud__v1__response__free_unpacked(r, NULL);
		close_fds(got, ngot);
		return fail(c, -EPROTO,
			    "iommud answered request %llu when request %llu was next; responses "
			    "must come in order, so the daemon is broken",
			    (unsigned long long)id, (unsigned long long)expected);
	}
	if (fds && ngot) {
		size_t keep = ngot < max_fds ? ngot : max_fds;

		memcpy(fds, got, keep * sizeof(int));
		close_fds(got + keep, ngot - keep);
		if (nfds)
			*nfds = keep;
	} else {
		close_fds(got, ngot);
	}
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

		snprintf(c->error, sizeof(c->error), "%s",
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
			close_fds(fds_out, n);
		iommud__v1__response__free_unpacked(r, NULL);
		return err;
	}
	if (nfds_out)
		*nfds_out = n;
	*resp = r;
	return 0;
}

/* ---- plain calls ---------------------------------------------------------------------- */

/* Sends a request whose method is set, and keeps only whether it succeeded. */
static int call_simple(struct iommuctl *c, Iommud__V1__Request *req)
{
	Iommud__V1__Response *r;
	int err = iommuctl_call(c, req, NULL, 0, &r, NULL, 0, NULL);

	iommuctl_response_free(r);
	return err;
}

int iommuctl_hello(struct iommuctl *c, const char *client_name, const char *lease,
		   Iommud__V1__HelloReply **reply)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	if (reply)
		*reply = NULL;
	hello.client_version = IOMMUCTL_PROTOCOL_VERSION;
	hello.client_name = (char *)(client_name ? client_name : "");
	hello.lease = (char *)(lease ? lease : "");
	req.method_case = IOMMUD__V1__REQUEST__METHOD_HELLO;
	req.hello = &hello;
	err = iommuctl_call(c, &req, NULL, 0, &r, NULL, 0, NULL);
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
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	int err;

	alloc.type = (Iommud__V1__DomainType)type;
	alloc.device = (char *)device;
	alloc.dirty_tracking = !!(flags & IOMMUCTL_DOMAIN_DIRTY_TRACKING);
	alloc.nest_parent = !!(flags & IOMMUCTL_DOMAIN_NEST_PARENT);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_ALLOC_DOMAIN;
	req.alloc_domain = &alloc;
	err = iommuctl_call(c, &req, NULL, 0, &r, NULL, 0, NULL);
	if (err)
		return err;
	*domain_id = r->alloc_domain->domain_id;
	iommuctl_response_free(r);
	return 0;
}

int iommuctl_free_domain(struct iommuctl *c, uint32_t domain_id)
{
	Iommud__V1__FreeDomainRequest free_domain = IOMMUD__V1__FREE_DOMAIN_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	free_domain.domain_id = domain_id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_FREE_DOMAIN;
	req.free_domain = &free_domain;
	return call_simple(c, &req);
}

int iommuctl_attach(struct iommuctl *c, const char *device, uint32_t domain_id)
{
	Iommud__V1__AttachDeviceRequest attach = IOMMUD__V1__ATTACH_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	attach.device = (char *)device;
	attach.domain_id = domain_id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_ATTACH_DEVICE;
	req.attach_device = &attach;
	return call_simple(c, &req);
}

int iommuctl_replace(struct iommuctl *c, const char *device, uint32_t domain_id)
{
	Iommud__V1__ReplaceDomainRequest replace = IOMMUD__V1__REPLACE_DOMAIN_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	replace.device = (char *)device;
	replace.domain_id = domain_id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN;
	req.replace_domain = &replace;
	return call_simple(c, &req);
}

int iommuctl_detach(struct iommuctl *c, const char *device)
{
	Iommud__V1__DetachDeviceRequest detach = IOMMUD__V1__DETACH_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	detach.device = (char *)device;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_DETACH_DEVICE;
	req.detach_device = &detach;
	return call_simple(c, &req);
}

int iommuctl_map_fd(struct iommuctl *c, uint32_t domain_id, int fd, uint64_t offset,
		    uint64_t length, uint32_t prot, bool fixed, uint64_t alignment, uint64_t *iova)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
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
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	err = iommuctl_call(c, &req, &fd, 1, &r, NULL, 0, NULL);
	if (err)
		return err;
	*iova = r->map->iova;
	iommuctl_response_free(r);
	return 0;
}

/* Unmap and UnmapAll: send, then report the bytes their replies count. */
static int call_unmapped(struct iommuctl *c, Iommud__V1__Request *req, uint64_t *unmapped)
{
	Iommud__V1__Response *r;
	int err = iommuctl_call(c, req, NULL, 0, &r, NULL, 0, NULL);

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
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	unmap.domain_id = domain_id;
	unmap.iova = iova;
	unmap.length = length;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP;
	req.unmap = &unmap;
	return call_unmapped(c, &req, unmapped);
}

int iommuctl_unmap_all(struct iommuctl *c, uint32_t domain_id, uint64_t *unmapped)
{
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	unmap_all.domain_id = domain_id;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL;
	req.unmap_all = &unmap_all;
	return call_unmapped(c, &req, unmapped);
}

int iommuctl_open_device(struct iommuctl *c, const char *device)
{
	Iommud__V1__OpenDeviceRequest open_device = IOMMUD__V1__OPEN_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *r;
	size_t n;
	int fd, err;

	open_device.device = (char *)device;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE;
	req.open_device = &open_device;
	err = iommuctl_call(c, &req, NULL, 0, &r, &fd, 1, &n);
	if (err)
		return err;
	iommuctl_response_free(r);
	if (n != 1)
		return fail(c, -EPROTO,
			    "iommud's OpenDevice reply for %s carried no file descriptor; the "
			    "daemon is broken",
			    device);
	return fd;
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
		close(fd);
		return fail(NULL, err, "cannot size a memfd to %llu bytes: %s",
			    (unsigned long long)size, strerror(-err));
	}
	/* The daemon maps the file's pages; a shrink would pull them from under the device. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		err = -errno;
		close(fd);
		return fail(NULL, err, "cannot seal a memfd against shrinking: %s", strerror(-err));
	}
	return fd;
}
