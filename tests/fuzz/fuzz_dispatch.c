// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the daemon's request path: packets go through real SOCK_SEQPACKET
 * socket pairs, with real SCM_RIGHTS descriptors, into the server on the real libevent loop,
 * so receiving, size and fd checks, decoding, dispatch, the handlers, sessions and replying
 * are all exercised as the daemon runs them.
 *
 * Input: a sequence of chunks, each
 *
 *	flags (1 byte) | route (1 byte) | length (2 bytes, little-endian) | length bytes of packet
 *
 * (a last chunk whose length passes the end takes what is left; an incomplete header ends the
 * input). Each chunk is sent as one packet, so one input is a conversation: AllocDomain, then
 * Map with the id it gave, then Unmap... The flags say how:
 *
 *	bits 0-1  descriptors to attach: 0 none, 1 a memfd sealed with F_SEAL_SHRINK,
 *	          2 the same memfd without the seal, 3 the read end of a pipe
 *	bits 2-3  how many of them, minus one (1 to 4, for MapBatch's fd_index)
 *	bits 4-5  unused
 *	bit 6     pad the packet to one byte over the message limit (IOMMUD_MAX_MESSAGE)
 *	bit 7     attach one descriptor over the limit (IOMMUD_MAX_FDS + 1)
 *
 * and the route says where it goes:
 *
 *	bits 0-1  the connection to use, of four; each starts as root's, so sessions shared by
 *	          connections and leases held by one of them meet
 *	bit 2     reconnect it first: close it, let the daemon see the end, open a new one ...
 *	bits 3-5  ... as this identity (identities[] below: uids, groups that match different
 *	          sections, cgroups that differ only past 512 bytes or are not UTF-8, a peer
 *	          whose process is gone)
 *
 * A chunk with an empty packet (and bit 6 clear) only reconnects, if asked: the protocol forbids
 * empty packets, as the daemon reads one as the end of the connection.
 *
 * The invariants checked (abort() if broken, which libFuzzer reports as a crash):
 * - every packet gets exactly one reply, the connection stays open, and the reply decodes as an
 *   iommud.v1.Response within the message limit;
 * - a request that decodes gets its id back, and a result of its method exactly when the status
 *   is OK; one that does not decode (or was rejected for its size or descriptors) gets id 0 and
 *   a status other than OK;
 * - only a successful OpenDevice reply carries a descriptor;
 * - every string of every reply is UTF-8 (strict decoders take it), whatever the request
 *   held, and a request with a string that is not (or holds a NUL) is refused as such;
 * - an unverified peer's every request is refused, and it never has a tenant;
 * - after an input, once its connections are closed and the leases it created are released
 *   (by the protocol: Hello with the lease, ReleaseLease, close), the daemon holds no
 *   connection, session or tenant, and this process no more descriptors than before.
 * The last one makes every input start from the same daemon state, so a crash reproduces from
 * its input alone; only the method counters of GetStats carry over.
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <iommud.pb-c.h>
#include <iommud_wire.h>
#include <kh/kh.h>

#include "config.h"
#include "dispatch.h"
#include "log.h"
#include "probes/probes.h"
#include "server.h"
#include "status.h"
#include "session.h"
#include "strict_utf8.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHUNK_HEADER	    4
#define FLAG_FD_KIND	    0x03u
#define FLAG_FD_COUNT_SHIFT 2
#define FLAG_FD_COUNT	    0x0cu
#define FLAG_OVERSIZE	    0x40u
#define FLAG_TOO_MANY_FDS   0x80u
#define ROUTE_CONN	    0x03u
#define ROUTE_RECONNECT	    0x04u
#define ROUTE_AS_SHIFT	    3
#define ROUTE_AS	    0x38u
#define CONNS		    4

/* Sections for the identities below: one per uid, two groups of one uid with different
 * devices and quotas, and a section name that is not UTF-8 (configurations are bytes), which
 * replies and statistics must still carry as text. */
static char *devices_all[] = {"*"}, *devices_emu0[] = {"emu0"}, *devices_emu1[] = {"emu1"};
#define GROUP_WRITER(gid, name, allowed, domains)                                                  \
	{                                                                                          \
		.is_group = true, .id = gid, .section = name, .access = ACCESS_WRITE,              \
		.devices = allowed, .n_devices = 1, .max_domains = domains, .max_mappings = 16,    \
		.max_pinned_bytes = 1 << 20, .max_leases = 2, .max_page_table_bytes = 1 << 20      \
	}
static struct access_rule rules[] = {
	{.id = 0,
	 .section = "uid 0",
	 .access = ACCESS_WRITE,
	 .devices = devices_all,
	 .n_devices = 1,
	 .max_domains = 64,
	 .max_mappings = 4096,
	 .max_pinned_bytes = 1ull << 30,
	 .max_leases = 16,
	 .max_page_table_bytes = 1ull << 26,
	 .stats_all = true},
	GROUP_WRITER(1001, "group one", devices_emu1, 2),
	GROUP_WRITER(1002, "group tw\xf0", devices_emu0, 3),
	{.id = 2000, .section = "uid 2000", .access = ACCESS_READ},
};

#define LONG_CGROUP                                                                                \
	"/system.slice/deep.service/"                                                              \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"/"

/* Who a connection is, as the server would have identified it. */
struct identity {
	uid_t uid;
	gid_t group; /* supplementary; 0: none */
	const char *cgroup;
	bool gone; /* the process exited before it was identified */
};

static const struct identity identities[8] = {
	{.uid = 0, .cgroup = "/"},
	{.uid = 1000, .group = 1001, .cgroup = "/system.slice/a.service"},
	/* The same uid and cgroup under another section: another tenant. */
	{.uid = 1000, .group = 1002, .cgroup = "/system.slice/a.service"},
	{.uid = 1000, .group = 1001, .cgroup = "/user.slice/user-1000.slice/session-1.scope"},
	/* Two cgroups that differ only past 600 bytes. */
	{.uid = 1000, .group = 1001, .cgroup = LONG_CGROUP "x"},
	{.uid = 1000, .group = 1001, .cgroup = LONG_CGROUP "y"},
	/* A cgroup name that is not UTF-8 (cgroup names are bytes), under the read-only uid. */
	{.uid = 2000, .cgroup = "/system.slice/\xff\xfe.service"},
	{.uid = 1000, .group = 1001, .gone = true},
};

enum fd_kind { FD_NONE, FD_SEALED_MEMFD, FD_UNSEALED_MEMFD, FD_PIPE };

#define MEMFD_SIZE (64 * 1024)
/* The loop runs until the reply is there; two turns are enough (one reads the packet into its
 * tenant's queue, the next handles it), so this bound only turns a lost reply into a report,
 * not a hang. */
#define LOOP_TURNS 16

static struct {
	struct config cfg;
	struct daemon d;
	struct event_base *base;
	struct server *srv;
	/* Packets are built here: the largest is one byte over the limit. */
	uint8_t packet[IOMMUD_MAX_MESSAGE + 1];
	/* Exactly the limit: a longer reply arrives truncated, which wire_recv reports. */
	uint8_t reply[IOMMUD_MAX_MESSAGE];
	const struct identity *connecting; /* who the next connection is */
} g;

/* A lease the daemon confirmed, with the identity that holds it. One released during the input
 * ends with its last connection, so cleanup must not name it: that would start a new lease,
 * which the tenant's quota may refuse. */
struct lease {
	char *name;
	unsigned who;
	bool released;
};

/* What one input has opened; released at its end. */
struct input {
	int conn[CONNS];     /* the client ends; -1 when closed */
	unsigned who[CONNS]; /* each one's identity */
	int fds[4];	     /* indexed by enum fd_kind (FD_PIPE: the read end); -1 until used */
	int pipe_write;
	struct lease *leases;
	size_t n_leases;
	/* Each connection's lease: 1 + its index in leases; 0 for the anonymous session. */
	size_t conn_lease[CONNS];
	uint64_t next_id; /* for the harness's own requests at cleanup */
};

static void violated(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void violated(const char *fmt, ...)
{
	va_list ap;

	(void)fprintf(stderr, "fuzz_dispatch: invariant violated: ");
	va_start(ap, fmt);
	(void)vfprintf(stderr, fmt, ap);
	va_end(ap);
	(void)fputc('\n', stderr);
	abort();
}

static void turn_loop(void)
{
	if (event_base_loop(g.base, EVLOOP_NONBLOCK) < 0)
		violated("the event loop failed");
}

static size_t count_open_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	size_t n = 0;

	if (!dir)
		violated("cannot list /proc/self/fd: %s", strerror(errno));
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

/* The server's identification of a new peer: the identity open_conn asked for. */
static int identify_as(int fd, struct peer *ret_peer)
{
	const struct identity *who = g.connecting;
	struct peer peer = {.pid = getpid(), .uid = who->uid, .gid = who->uid};

	(void)fd;
	if (who->gone)
		peer.doubt = PEER_EXITED;
	else if (!(peer.cgroup = strdup(who->cgroup)))
		return -ENOMEM;
	if (who->group) {
		peer.groups = malloc(sizeof(gid_t));
		if (!peer.groups) {
			peer_clear(&peer);
			return -ENOMEM;
		}
		peer.groups[0] = who->group;
		peer.n_groups = 1;
	}
	*ret_peer = peer;
	return 0;
}

static int open_conn(unsigned who)
{
	int sv[2];
	unsigned tenants = registry_tenant_count(g.d.reg);

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		violated("socketpair: %s", strerror(errno));
	g.connecting = &identities[who];
	if (server_adopt(g.srv, sv[1]) < 0)
		violated("the server refused a connection");
	if (identities[who].gone && registry_tenant_count(g.d.reg) != tenants)
		violated("a peer that is gone was given a tenant");
	return sv[0];
}

/* Closes a client end and waits until the daemon has closed its side. */
static void close_conn(int *fd)
{
	unsigned before = g.d.connections;

	(void)close(*fd);
	*fd = -1;
	for (int i = 0; i < LOOP_TURNS && g.d.connections == before; i++)
		turn_loop();
	if (g.d.connections != before - 1)
		violated("the daemon kept a connection its client closed");
}

/* The descriptor of a kind (not FD_NONE) for this input, created on first use. */
static int input_fd(struct input *in, enum fd_kind kind)
{
	int pipe_fds[2];

	if (in->fds[kind] >= 0)
		return in->fds[kind];
	if (kind == FD_PIPE) {
		if (pipe2(pipe_fds, O_CLOEXEC) < 0)
			violated("pipe2: %s", strerror(errno));
		in->fds[kind] = pipe_fds[0];
		in->pipe_write = pipe_fds[1];
		return in->fds[kind];
	}
	in->fds[kind] = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (in->fds[kind] < 0 || ftruncate(in->fds[kind], MEMFD_SIZE) < 0 ||
	    (kind == FD_SEALED_MEMFD && fcntl(in->fds[kind], F_ADD_SEALS, F_SEAL_SHRINK) < 0))
		violated("cannot make a memfd: %s", strerror(errno));
	return in->fds[kind];
}

static void send_packet(int conn, const uint8_t *packet, size_t len, int fd, size_t n_fds)
{
	int fds[IOMMUD_MAX_FDS + 1];
	int rc;

	/* The same descriptor several times: the daemon receives distinct ones. */
	for (size_t i = 0; i < n_fds; i++)
		fds[i] = fd;
	rc = wire_send(conn, packet, len, fds, n_fds, WIRE_NONBLOCK);
	if (rc < 0)
		violated("cannot send a %zu-byte packet: %s", len, strerror(-rc));
}

/* Runs the loop until the daemon's reply to the packet just sent is there and receives it;
 * returns its length. Descriptors it carries are closed; *n_fds says how many there were. */
static size_t receive_reply(int conn, size_t *n_fds)
{
	struct wire_packet packet;
	int rc = -EAGAIN;

	for (int i = 0; i < LOOP_TURNS && rc == -EAGAIN; i++) {
		turn_loop();
		rc = wire_recv(conn, g.reply, sizeof(g.reply), WIRE_NONBLOCK, &packet);
	}
	if (rc == -EAGAIN)
		violated("no reply to a packet");
	if (rc == -ECONNRESET)
		violated("the daemon closed the connection instead of replying");
	if (rc < 0)
		violated("recvmsg: %s", strerror(-rc));
	if (packet.truncated || packet.fds_truncated)
		violated("a reply over the message limit or with too many descriptors");
	wire_close_fds(packet.fds, packet.n_fds);
	*n_fds = packet.n_fds;
	if (recv(conn, g.packet, 1, MSG_DONTWAIT | MSG_PEEK) >= 0 || errno != EAGAIN)
		violated("more than one reply to a packet, or the connection closed after it");
	return packet.len;
}

/* The lease's 1 + index in in->leases. A name Hello confirms again after its release is a new
 * lease: the daemon refuses to join a released one while it lasts. */
static size_t remember_lease(struct input *in, const char *lease, unsigned who)
{
	struct lease *grown;

	for (size_t i = 0; i < in->n_leases; i++)
		if (strcmp(in->leases[i].name, lease) == 0 && in->leases[i].who == who) {
			in->leases[i].released = false;
			return i + 1;
		}
	grown = realloc(in->leases, (in->n_leases + 1) * sizeof(*grown));
	if (!grown)
		violated("out of memory");
	in->leases = grown;
	grown[in->n_leases] = (struct lease){.name = strdup(lease), .who = who};
	if (!grown[in->n_leases].name)
		violated("out of memory");
	return ++in->n_leases;
}

/* The first string of the decoded msg, at any depth, that strict decoders refuse, judged by the
 * test tree's checker; NULL if there is none. */
static const char *first_non_utf8(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *type = msg->descriptor;
	const char *const at = (const char *)msg;

	for (unsigned i = 0; i < type->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &type->fields[i];
		bool text = f->type == PROTOBUF_C_TYPE_STRING;
		void *const *items = (void *const *)(at + f->offset);
		size_t count = 1;

		if (!text && f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			count = *(const size_t *)(at + f->quantifier_offset);
			items = *(void *const *const *)items;
		} else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			count = *(const uint32_t *)(at + f->quantifier_offset) == f->id;
		}
		while (count-- > 0) {
			const void *item = items[count];

			if (!item)
				continue;
			if (!text) {
				const char *bad = first_non_utf8(item);

				if (bad)
					return bad;
			} else if (!strict_utf8(item)) {
				return item;
			}
		}
	}
	return NULL;
}

/* The code the refusals before any handler give req from who (decoded from packet, len bytes);
 * CODE_OK when they let it through. A string that is not UTF-8 is judged by the test tree's
 * checker, so a mistake in the daemon's cannot pass on both sides; a NUL, which a decoded C
 * string no longer shows, only the daemon's walk of the bytes finds. */
static Iommud__V1__Code code_before_handler(const struct identity *who,
					    const Iommud__V1__Request *req, const uint8_t *packet,
					    size_t len)
{
	if (who->gone)
		return IOMMUD__V1__CODE__CODE_PERMISSION_DENIED;
	if (first_non_utf8(&req->base) ||
	    dispatch_check_strings(&iommud__v1__request__descriptor, packet, len) < 0)
		return IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT;
	return IOMMUD__V1__CODE__CODE_OK;
}

/* Checks the reply against the request it answers (NULL: the packet should have been refused
 * before decoding or did not decode), sent as who, and returns it decoded. */
static Iommud__V1__Response *check_reply(const Iommud__V1__Request *req, const struct identity *who,
					 size_t len, size_t n_reply_fds)
{
	Iommud__V1__Response *resp = iommud__v1__response__unpack(NULL, len, g.reply);
	bool ok;

	if (!resp)
		violated("a reply that does not decode as iommud.v1.Response");
	if (first_non_utf8(&resp->base))
		violated("a reply strict decoders refuse: '%s'", first_non_utf8(&resp->base));
	if (!resp->status)
		violated("a reply without a status");
	if (strlen(resp->status->message) > STATUS_MESSAGE_MAX)
		violated("a status message of %zu bytes", strlen(resp->status->message));
	ok = resp->status->code == IOMMUD__V1__CODE__CODE_OK;
	if (!req) {
		if (ok || resp->id != 0)
			violated("a refused or undecodable packet answered with code %d, id %llu",
				 (int)resp->status->code, (unsigned long long)resp->id);
	} else if (resp->id != req->id) {
		violated("request %llu answered as %llu", (unsigned long long)req->id,
			 (unsigned long long)resp->id);
	}
	if (ok && (resp->status->errno_value != 0 || resp->status->failed_index != -1))
		violated("an OK status with errno %d, failed_index %d",
			 (int)resp->status->errno_value, (int)resp->status->failed_index);
	if (ok ? (int)resp->result_case != (int)req->method_case
	       : resp->result_case != IOMMUD__V1__RESPONSE__RESULT__NOT_SET)
		violated("status %d with result %d for method %d", (int)resp->status->code,
			 (int)resp->result_case, req ? (int)req->method_case : -1);
	if (n_reply_fds != (ok && req->method_case == IOMMUD__V1__REQUEST__METHOD_OPEN_DEVICE))
		violated("%zu descriptors with the reply to method %d", n_reply_fds,
			 req ? (int)req->method_case : -1);
	if (ok && who->gone)
		violated("a request of a peer that is gone succeeded");
	return resp;
}

/* Sends one chunk's packet on connection i and checks the reply. */
static void exchange(struct input *in, unsigned flags, unsigned i, const uint8_t *payload,
		     size_t len)
{
	enum fd_kind kind = flags & FLAG_FD_KIND;
	size_t n_fds = kind == FD_NONE ? 0 : ((flags & FLAG_FD_COUNT) >> FLAG_FD_COUNT_SHIFT) + 1;
	const struct identity *who = &identities[in->who[i]];
	Iommud__V1__Code settled;
	int conn = in->conn[i];
	Iommud__V1__Request *req = NULL;
	Iommud__V1__Response *resp;
	size_t reply_len, n_reply_fds;

	if (flags & FLAG_TOO_MANY_FDS) {
		n_fds = IOMMUD_MAX_FDS + 1;
		if (kind == FD_NONE)
			kind = FD_PIPE;
	}
	memcpy(g.packet, payload, len);
	if (flags & FLAG_OVERSIZE) {
		memset(g.packet + len, 0, sizeof(g.packet) - len);
		len = sizeof(g.packet);
	}
	/* Over a limit, the packet is refused before decoding; otherwise the daemon decodes
	 * exactly these bytes with the same library. */
	if (!(flags & (FLAG_OVERSIZE | FLAG_TOO_MANY_FDS)))
		req = iommud__v1__request__unpack(NULL, len, g.packet);
	send_packet(conn, g.packet, len, n_fds ? input_fd(in, kind) : -1, n_fds);
	reply_len = receive_reply(conn, &n_reply_fds);
	resp = check_reply(req, who, reply_len, n_reply_fds);
	settled = req ? code_before_handler(who, req, g.packet, len) : IOMMUD__V1__CODE__CODE_OK;
	if (settled != IOMMUD__V1__CODE__CODE_OK && resp->status->code != settled)
		violated("code %d for a request the checks before any handler refuse with %d",
			 (int)resp->status->code, (int)settled);
	if (resp->result_case == IOMMUD__V1__RESPONSE__RESULT_HELLO)
		in->conn_lease[i] = resp->hello->lease[0]
					    ? remember_lease(in, resp->hello->lease, in->who[i])
					    : 0;
	if (resp->result_case == IOMMUD__V1__RESPONSE__RESULT_RELEASE_LEASE && in->conn_lease[i])
		in->leases[in->conn_lease[i] - 1].released = true;
	iommud__v1__response__free_unpacked(resp, NULL);
	if (req)
		iommud__v1__request__free_unpacked(req, NULL);
}

/* Sends a request of the harness's own as who, which must succeed. */
static void call_ok(struct input *in, int conn, const struct identity *who,
		    Iommud__V1__Request *req)
{
	Iommud__V1__Response *resp;
	size_t len, n_reply_fds;

	req->id = ++in->next_id;
	len = iommud__v1__request__pack(req, g.packet);
	send_packet(conn, g.packet, len, -1, 0);
	len = receive_reply(conn, &n_reply_fds);
	resp = check_reply(req, who, len, n_reply_fds);
	if (resp->status->code != IOMMUD__V1__CODE__CODE_OK)
		violated("cleanup request %d failed: %s", (int)req->method_case,
			 resp->status->message);
	iommud__v1__response__free_unpacked(resp, NULL);
}

/* A lease outlives its connections by design; ending it the way a client does leaves the
 * daemon empty again if its release path is right. */
static void release_lease(struct input *in, const struct lease *lease)
{
	Iommud__V1__HelloRequest hello = IOMMUD__V1__HELLO_REQUEST__INIT;
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	const struct identity *who = &identities[lease->who];
	int conn = open_conn(lease->who);

	hello.lease = lease->name;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_HELLO;
	req.hello = &hello;
	call_ok(in, conn, who, &req);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &release;
	call_ok(in, conn, who, &req);
	close_conn(&conn);
}

static void finish_input(struct input *in)
{
	for (size_t i = 0; i < CONNS; i++)
		close_conn(&in->conn[i]);
	for (size_t i = 0; i < in->n_leases; i++) {
		if (!in->leases[i].released)
			release_lease(in, &in->leases[i]);
		free(in->leases[i].name);
	}
	free(in->leases);
	for (size_t i = 0; i < sizeof(in->fds) / sizeof(in->fds[0]); i++)
		if (in->fds[i] >= 0)
			(void)close(in->fds[i]);
	if (in->pipe_write >= 0)
		(void)close(in->pipe_write);
	if (g.d.connections || registry_session_count(g.d.reg) || registry_tenant_count(g.d.reg))
		violated("after the input: %u connections, %u sessions, %u tenants",
			 g.d.connections, registry_session_count(g.d.reg),
			 registry_tenant_count(g.d.reg));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* GetStats reads the probes: the emulated backend's, timed in process, with no BPF. */
	struct probes_options probes = {.max_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF,
					.in_process = true};
	struct kh_backend *be;

	(void)argc;
	(void)argv;
	log_set_level(LOG_ERR);
	if (dispatch_self_check() < 0)
		violated("the method table does not match the schema");
	/* Everyone else may read: every identity reaches the handlers. */
	/* No connection caps or reader rate: every input's requests are answered at once. */
	g.cfg = (struct config){.max_connections = 4096,
				.max_connections_per_uid = 4096,
				.max_connections_per_tenant = 4096,
				.probe_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF,
				.default_access = ACCESS_READ,
				.rules = rules,
				.n_rules = sizeof(rules) / sizeof(rules[0])};
	if (kh_backend_open_emulated_text("[iommu]\ndevices = emu0 emu1\n", &be) < 0)
		violated("cannot set up the daemon: %s", kh_last_error());
	g.d.cfg = &g.cfg;
	g.d.be = be;
	g.d.started = time(NULL);
	if (probes_start(&probes, &g.d.probes) < 0)
		violated("out of memory starting the probes");
	g.d.reg = registry_create(be, &g.cfg);
	g.base = event_base_new();
	if (!g.d.reg || !g.base || server_create(g.base, &g.d, g.cfg.max_connections, &g.srv) < 0)
		violated("out of memory setting up the daemon");
	server_set_identify(g.srv, identify_as);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = {.fds = {-1, -1, -1, -1}, .pipe_write = -1};
	size_t fds_before = count_open_fds();

	for (unsigned i = 0; i < CONNS; i++)
		in.conn[i] = open_conn(0);
	while (size >= CHUNK_HEADER) {
		unsigned flags = data[0], route = data[1], i = route & ROUTE_CONN;
		size_t len = (size_t)data[2] | (size_t)data[3] << 8;

		data += CHUNK_HEADER;
		size -= CHUNK_HEADER;
		if (len > size)
			len = size;
		if (route & ROUTE_RECONNECT) {
			close_conn(&in.conn[i]);
			in.conn_lease[i] = 0;
			in.who[i] = (route & ROUTE_AS) >> ROUTE_AS_SHIFT;
			in.conn[i] = open_conn(in.who[i]);
		}
		if (len || (flags & FLAG_OVERSIZE))
			exchange(&in, flags, i, data, len);
		data += len;
		size -= len;
	}
	finish_input(&in);
	if (count_open_fds() != fds_before)
		violated("%zu descriptors open before the input, %zu after", fds_before,
			 count_open_fds());
	return 0;
}
