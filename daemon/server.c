// SPDX-License-Identifier: MIT
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <iommud_wire.h>

#include "log.h"
#include "peer.h"
#include "status.h"

/* Packets handled per wake-up of one connection before others get their turn. */
#define PACKETS_PER_WAKEUP 64

struct conn {
	LIST_ENTRY(conn) link;
	struct server *srv;
	int fd;
	struct event *ev;
	struct client client;
	/* A reply the socket would not take yet; reading stops until it is sent. */
	uint8_t *pending;
	size_t pending_len;
	int pending_fd;
	unsigned pending_method; /* the pending reply's call, timed when it is sent */
	uint64_t pending_received_ns;
};

struct server {
	struct event_base *base;
	struct daemon *d;
	unsigned max_connections;
	int listen_fd;
	struct event *listen_ev;
	char *socket_path; /* set when the server created the socket file */
	int (*identify)(int fd, struct peer *ret_peer);
	LIST_HEAD(, conn) conns;
	uint8_t in[IOMMUD_MAX_MESSAGE];
	uint8_t out[IOMMUD_MAX_MESSAGE];
};

int server_create(struct event_base *base, struct daemon *d, unsigned max_connections,
		  struct server **ret_srv)
{
	struct server *srv = calloc(1, sizeof(*srv));

	if (!srv)
		return -ENOMEM;
	srv->base = base;
	srv->d = d;
	srv->max_connections = max_connections;
	srv->listen_fd = -1;
	srv->identify = identify_peer;
	LIST_INIT(&srv->conns);
	*ret_srv = srv;
	return 0;
}

/* ---- connections ---------------------------------------------------------------------- */

static void conn_close(struct conn *c)
{
	LIST_REMOVE(c, link);
	c->srv->d->connections--;
	event_free(c->ev);
	(void)close(c->fd);
	if (c->pending_fd >= 0)
		(void)close(c->pending_fd);
	free(c->pending);
	log_debug("connection of uid %u closed", (unsigned)c->client.peer.uid);
	client_fini(&c->client);
	free(c);
}

/* Sends a reply without waiting; -EAGAIN when the socket is full (nothing sent). */
static int send_reply(int fd, const uint8_t *buf, size_t len, int reply_fd)
{
	return wire_send(fd, buf, len, &reply_fd, reply_fd >= 0 ? 1 : 0, WIRE_NONBLOCK);
}

static void conn_on_event(evutil_socket_t fd, short what, void *arg);

/* Waits for the socket to be writable (a reply pending) or readable (none). */
static int conn_rearm(struct conn *c)
{
	(void)event_del(c->ev);
	(void)event_assign(c->ev, c->srv->base, c->fd,
			   (c->pending ? EV_WRITE : EV_READ) | EV_PERSIST, conn_on_event, c);
	return event_add(c->ev, NULL);
}

/* Sends the reply to a call of method received at received_ns, or keeps it until the socket
 * takes it. Returns false when the connection was closed. */
static bool conn_reply(struct conn *c, size_t len, int reply_fd, unsigned method,
		       uint64_t received_ns)
{
	int rc = send_reply(c->fd, c->srv->out, len, reply_fd);

	if (rc == 0) {
		dispatch_reply_sent(c->srv->d, method, received_ns);
		if (reply_fd >= 0)
			(void)close(reply_fd);
		return true;
	}
	if (rc != -EAGAIN) {
		if (reply_fd >= 0)
			(void)close(reply_fd);
		log_debug("cannot reply to uid %u (%s); closing", (unsigned)c->client.peer.uid,
			  strerror(-rc));
		conn_close(c);
		return false;
	}
	c->pending = malloc(len);
	if (!c->pending) {
		if (reply_fd >= 0)
			(void)close(reply_fd);
		log_err("out of memory holding a reply for uid %u; closing its connection",
			(unsigned)c->client.peer.uid);
		conn_close(c);
		return false;
	}
	memcpy(c->pending, c->srv->out, len);
	c->pending_len = len;
	c->pending_fd = reply_fd;
	c->pending_method = method;
	c->pending_received_ns = received_ns;
	(void)conn_rearm(c);
	return true;
}

/* Receives one packet; 0 when one was handled, -EAGAIN when none is waiting, another negative
 * errno (or -ECONNRESET at end of stream) when the connection should close. */
static int conn_read_one(struct conn *c)
{
	struct server *srv = c->srv;
	enum packet_defect defect = PACKET_OK;
	struct wire_packet packet;
	uint64_t received_ns;
	unsigned method;
	size_t out_len;
	int reply_fd, rc;

	rc = wire_recv(c->fd, srv->in, sizeof(srv->in), WIRE_NONBLOCK, &packet);
	if (rc < 0)
		return rc;
	received_ns = monotonic_ns();
	if (packet.truncated)
		defect = PACKET_TRUNCATED;
	else if (packet.fds_truncated)
		defect = PACKET_FDS_TRUNCATED;
	out_len = dispatch_packet(srv->d, &c->client, srv->in, packet.len, defect, packet.fds,
				  packet.n_fds, srv->out, &reply_fd, &method);
	return conn_reply(c, out_len, reply_fd, method, received_ns) ? 0 : -ECONNABORTED;
}

static void conn_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	int rc;

	(void)fd;
	if (what & EV_WRITE) {
		rc = send_reply(c->fd, c->pending, c->pending_len, c->pending_fd);
		if (rc == -EAGAIN)
			return;
		if (rc == 0)
			dispatch_reply_sent(c->srv->d, c->pending_method, c->pending_received_ns);
		if (c->pending_fd >= 0)
			(void)close(c->pending_fd);
		free(c->pending);
		c->pending = NULL;
		c->pending_fd = -1;
		if (rc < 0) {
			conn_close(c);
			return;
		}
		(void)conn_rearm(c);
		return;
	}
	for (int i = 0; i < PACKETS_PER_WAKEUP; i++) {
		rc = conn_read_one(c);
		if (rc == -ECONNABORTED)
			return; /* already closed */
		if (rc == -EAGAIN)
			return;
		if (rc < 0) {
			conn_close(c);
			return;
		}
		if (c->pending)
			return; /* wait until the client reads its replies */
	}
}

void server_set_identify(struct server *srv, int (*identify)(int fd, struct peer *ret_peer))
{
	srv->identify = identify;
}

static void log_connection(const struct peer *peer)
{
	const char *cgroup = peer->cgroup ? peer->cgroup : "";

	log_struct(LOG_DEBUG, LOG_FIELDS({"IOMMUD_CGROUP", cgroup}),
		   "connection of uid %u pid %d cgroup '%s'%s", (unsigned)peer->uid, (int)peer->pid,
		   cgroup, peer->cgroup ? "" : " (not verified: its requests are refused)");
}

int server_adopt(struct server *srv, int fd)
{
	struct peer peer;
	struct conn *c;
	int rc;

	if (srv->d->connections >= srv->max_connections) {
		log_warning("refusing a connection: %u are open, the limit (max-connections)",
			    srv->d->connections);
		(void)close(fd);
		return -EMFILE;
	}
	rc = srv->identify(fd, &peer);
	if (rc < 0) {
		log_warning("cannot identify a peer (%s); refusing it", strerror(-rc));
		(void)close(fd);
		return rc;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		peer_clear(&peer);
		(void)close(fd);
		return -ENOMEM;
	}
	c->srv = srv;
	c->fd = fd;
	c->pending_fd = -1;
	rc = client_init(srv->d, &c->client, &peer);
	if (rc == 0 && !(c->ev = event_new(srv->base, fd, EV_READ | EV_PERSIST, conn_on_event, c)))
		rc = -ENOMEM;
	if (rc == 0 && event_add(c->ev, NULL) < 0)
		rc = -ENOMEM;
	if (rc < 0) {
		log_warning("cannot take a connection of uid %u: %s", (unsigned)peer.uid,
			    failure_message());
		if (c->ev)
			event_free(c->ev);
		client_fini(&c->client);
		(void)close(fd);
		free(c);
		return rc;
	}
	LIST_INSERT_HEAD(&srv->conns, c, link);
	srv->d->connections++;
	log_connection(&c->client.peer);
	return 0;
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	for (int i = 0; i < PACKETS_PER_WAKEUP; i++) {
		int conn_fd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (conn_fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warning("accept: %s", strerror(errno));
			return;
		}
		(void)server_adopt(srv, conn_fd);
	}
}

/* ---- the listening socket ------------------------------------------------------------- */

static int make_parent_dir(const char *path)
{
	char copy[PATH_MAX];
	char *dir;

	(void)snprintf(copy, sizeof(copy), "%s", path);
	dir = dirname(copy);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return fail(-errno, "cannot create the socket's directory %s: %s", dir,
			    strerror(errno));
	return 0;
}

/* A socket file nobody listens on is left over from a crash; one that answers is another
 * daemon's and must not be taken from it. */
static int clear_stale_socket(const struct sockaddr_un *addr)
{
	struct stat st;
	int probe, rc;

	if (lstat(addr->sun_path, &st) < 0)
		return errno == ENOENT ? 0
				       : fail(-errno, "cannot examine %s: %s", addr->sun_path,
					      strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return fail(-EEXIST,
			    "%s exists and is not a socket; remove it or choose another "
			    "path (--socket)",
			    addr->sun_path);
	probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return fail(-errno, "socket: %s", strerror(errno));
	rc = connect(probe, (const struct sockaddr *)addr, sizeof(*addr));
	(void)close(probe);
	if (rc == 0)
		return fail(-EADDRINUSE,
			    "another iommud is already listening on %s; stop it or "
			    "choose another path (--socket)",
			    addr->sun_path);
	if (unlink(addr->sun_path) < 0 && errno != ENOENT)
		return fail(-errno, "cannot remove the stale socket %s: %s", addr->sun_path,
			    strerror(errno));
	return 0;
}

static int bind_socket(struct server *srv, const char *path, mode_t mode)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd, rc;

	if (strlen(path) >= sizeof(addr.sun_path))
		return fail(-ENAMETOOLONG, "socket path %s is longer than %zu bytes", path,
			    sizeof(addr.sun_path) - 1);
	memcpy(addr.sun_path, path, strlen(path) + 1);
	if ((rc = make_parent_dir(path)) < 0 || (rc = clear_stale_socket(&addr)) < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(-errno, "socket: %s", strerror(errno));
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		rc = fail(-errno, "cannot bind %s: %s", path, strerror(errno));
		(void)close(fd);
		return rc;
	}
	if (chmod(path, mode) < 0 || listen(fd, SOMAXCONN) < 0) {
		rc = fail(-errno, "cannot set up %s: %s", path, strerror(errno));
		(void)unlink(path);
		(void)close(fd);
		return rc;
	}
	srv->socket_path = strdup(path);
	srv->listen_fd = fd;
	return 0;
}

int server_listen(struct server *srv, const char *path, mode_t mode)
{
	int n = sd_listen_fds(1), rc;

	if (n > 1)
		return fail(-EINVAL, "systemd passed %d sockets; iommud takes one", n);
	if (n == 1) {
		if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, NULL, 0) <= 0)
			return fail(-EINVAL, "the socket systemd passed is not a listening "
					     "SOCK_SEQPACKET Unix socket; check iommud.socket");
		srv->listen_fd = SD_LISTEN_FDS_START;
		(void)fcntl(srv->listen_fd, F_SETFL, fcntl(srv->listen_fd, F_GETFL) | O_NONBLOCK);
		log_info("listening on the socket systemd passed");
	} else {
		rc = bind_socket(srv, path, mode);
		if (rc < 0)
			return rc;
		log_info("listening on %s", path);
	}
	srv->listen_ev = event_new(srv->base, srv->listen_fd, EV_READ | EV_PERSIST, on_accept, srv);
	if (!srv->listen_ev || event_add(srv->listen_ev, NULL) < 0)
		return fail(-ENOMEM, "cannot watch the listening socket");
	return 0;
}

void server_destroy(struct server *srv)
{
	struct conn *c;

	if (!srv)
		return;
	while ((c = LIST_FIRST(&srv->conns)))
		conn_close(c);
	if (srv->listen_ev)
		event_free(srv->listen_ev);
	if (srv->listen_fd >= 0)
		(void)close(srv->listen_fd);
	if (srv->socket_path) {
		(void)unlink(srv->socket_path);
		free(srv->socket_path);
	}
	free(srv);
}
