// SPDX-License-Identifier: MIT
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <iommud_wire.h>

#include "daemon_lock.h"
#include "fdstore.h"
#include "flow.h"
#include "log.h"
#include "peer.h"
#include "reexec.h"
#include "status.h"

#define NS_PER_SECOND 1000000000ull
/* A turn of the loop handles requests for this long at most before it looks for new packets:
 * what a request arriving meanwhile may wait on top of the one being handled. */
#define TURN_NS 20000
/* A costly request is handled in slices of about this long, one per turn of its tenant. */
#define SLICE_NS TURN_NS
/* Between slices of a request, whether its client has gone is asked at most this often: a
 * system call per slice would cost a MapBatch more than its parsing, and a client gone is then
 * noticed at most this much work later, which the take-back undoes. */
#define PEER_CHECK_NS 1000000
/* The flow the listening socket is charged to: a uid no peer has. Taking connections is
 * work like a tenant's requests, so that a storm of connects gets one share of the loop. */
#define ACCEPT_UID ((uid_t)-1)
/* A client that sends its next request within QUICK_CLIENT_NS of its reply is waited for on
 * its socket, for at most SOCKET_WAIT_US, where its shard's thread has nothing else to watch
 * (shard_may_skip_poll): a receive that waits replaces a receive that finds nothing and a poll,
 * two system calls of each request. The kernel counts the wait in ticks of its clock, and the
 * first may end at once: the bound is 8 times the quick client's gap, so that on a kernel of
 * 1000 ticks a second a quick client's wait does not run out first (a wait in vain costs more
 * than the two calls), and on one of 250 seldom. */
#define QUICK_CLIENT_NS 250000
#define SOCKET_WAIT_US	2000
/* At the open-file limit, accepting pauses this long, or until a connection closes. */
#define ACCEPT_PAUSE_US 100000
/* Refused connections are logged once per interval, with the number left unlogged. */
#define REFUSAL_LOG_INTERVAL_S 10

struct conn {
	LIST_ENTRY(conn) link;	/* in its shard's inbox until the shard takes it, then its conns */
	struct flow_item item;	/* its place in its tenant's flow, in its shard's flows */
	struct flow_item count; /* its tenant's and uid's count, in the server's flows */
	struct server *srv;
	struct shard *shard;
	int fd;
	struct event *ev;
	struct client client;
	bool spoke;	     /* a packet came: the idle timeout applies, not the first request's */
	bool may_wait;	     /* a receive may wait on its socket (socket_may_wait) */
	bool quick;	     /* its last request came within QUICK_CLIENT_NS of the reply before */
	uint64_t replied_ns; /* when its last request was done */
	/* A reply the socket would not take yet; reading stops until it is sent. */
	uint8_t *pending;
	size_t pending_len;
	struct reply_fds pending_fds;
	unsigned pending_method; /* the pending reply's call, timed when it is sent */
	uint64_t pending_received_ns;
	/* A request handled in slices, with its tenant's flow held until it is done. */
	struct call *call;
	uint64_t call_received_ns;
	uint64_t peer_checked_ns; /* when the call's slices last asked whether its client went */
	bool peer_went;		  /* it has: the call's slices take its work back */
};

/* One event-loop thread and what it alone touches: its connections, their flows and their
 * timeouts. The inbox and load are the exceptions: the main thread hands connections over
 * through the inbox (under inbox_lock), and load is counted under the daemon lock. */
struct shard {
	struct server *srv;
	struct counters *counters; /* its calls', in the daemon's array */
	struct event_base *base;   /* its own, or the server's for the inline shard */
	pthread_t thread;
	bool threaded;
	bool running; /* its thread was started and is not joined yet */
	LIST_HEAD(, conn) conns;
	struct flows *flows;
	struct event *turn_ev; /* the next turn of requests */
	struct event *inbox_ev;
	pthread_mutex_t inbox_lock;
	LIST_HEAD(, conn) inbox;
	bool stopping; /* its loop is to end once it has taken the inbox */
	struct event *ping_ev;
	/* How a connection's socket is watched for packets: persistent and edge-triggered where
	 * the base's backend can (epoll), so that it stays watched (conn_arm). */
	short read_events;
	bool ping_unanswered; /* atomic: the main thread's last ping has not run in its loop yet */
	unsigned load;	      /* connections it serves or is handed */
	uint64_t throttled_seen; /* of flows_throttled, added to the daemon's count */
	uint8_t in[IOMMUD_MAX_MESSAGE];
	uint8_t out[IOMMUD_MAX_MESSAGE];
};

struct server {
	struct event_base *base;
	struct daemon *d;
	unsigned max_connections;
	int listen_fd;
	struct event *listen_ev;
	struct flow_item accept_item; /* joined while listening */
	struct event *resume_ev;      /* accepting again after the open-file limit */
	bool accept_paused;
	/* Given up at the open-file limit to take one connection and refuse it, so that its
	 * client hears why instead of waiting in the backlog. */
	int spare_fd;
	int (*identify)(int fd, struct peer *ret_peer);
	char *socket_path; /* set when the socket file is the daemon's: bound here or by an earlier
			      image */
	/* The accept item and every connection's count: under the daemon lock. */
	struct flows *flows;
	struct event *turn_ev; /* the next turn of accepting */
	struct shard **shards;
	unsigned n_shards;
	uint64_t refusal_log_ns; /* a refusal is logged from then on */
	uint64_t refusals_unlogged;
	uint8_t in[IOMMUD_MAX_MESSAGE];
	uint8_t out[IOMMUD_MAX_MESSAGE];
};

static void on_accept_turn(evutil_socket_t fd, short what, void *arg);
static void on_shard_turn(evutil_socket_t fd, short what, void *arg);
static void on_resume_accept(evutil_socket_t fd, short what, void *arg);
static void on_inbox(evutil_socket_t fd, short what, void *arg);
static void on_ping(evutil_socket_t fd, short what, void *arg);
static void conn_close(struct conn *c);

/* Frees the three events that were made, in order. */
static void free_events(struct event **a, struct event **b, struct event **c)
{
	struct event **all[] = {a, b, c};

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (*all[i])
			event_free(*all[i]);
}

/* ---- shards ----------------------------------------------------------------------------- */

static void shard_free(struct shard *sh)
{
	struct conn *c;

	if (!sh)
		return;
	/* Connections handed over but not taken yet are taken, to be closed as the rest. */
	if (sh->inbox_ev)
		on_inbox(-1, 0, sh);
	while ((c = LIST_FIRST(&sh->conns)))
		conn_close(c);
	free_events(&sh->inbox_ev, &sh->ping_ev, &sh->turn_ev);
	if (sh->flows)
		flows_destroy(sh->flows);
	if (sh->threaded && sh->base)
		event_base_free(sh->base);
	(void)pthread_mutex_destroy(&sh->inbox_lock);
	free(sh);
}

/* A shard on its own base, for a thread of its own (threaded), or on the server's. */
static struct shard *shard_new(struct server *srv, bool threaded)
{
	struct shard *sh = calloc(1, sizeof(*sh));

	if (!sh)
		return NULL;
	sh->srv = srv;
	sh->threaded = threaded;
	(void)pthread_mutex_init(&sh->inbox_lock, NULL);
	LIST_INIT(&sh->conns);
	LIST_INIT(&sh->inbox);
	sh->base = threaded ? event_base_new() : srv->base;
	if (sh->base) {
		sh->read_events = event_base_get_features(sh->base) & EV_FEATURE_ET
					  ? EV_READ | EV_PERSIST | EV_ET
					  : EV_READ;
		sh->turn_ev = evtimer_new(sh->base, on_shard_turn, sh);
		sh->inbox_ev = event_new(sh->base, -1, 0, on_inbox, sh);
		sh->ping_ev = event_new(sh->base, -1, 0, on_ping, sh);
	}
	if (!sh->turn_ev || !sh->inbox_ev || !sh->ping_ev || flows_create(&sh->flows) < 0) {
		shard_free(sh);
		return NULL;
	}
	return sh;
}

static void free_shards(struct server *srv)
{
	for (unsigned i = 0; i < srv->n_shards; i++)
		shard_free(srv->shards[i]);
	free(srv->shards);
	srv->shards = NULL;
	srv->n_shards = 0;
	free(srv->d->counters);
	srv->d->counters = NULL;
	srv->d->n_counters = 0;
}

/* n shards, threaded or one on the server's own base, each with its counters. */
static int make_shards(struct server *srv, unsigned n, bool threaded)
{
	struct daemon *d = srv->d;

	free_shards(srv);
	if (!(srv->shards = calloc(n, sizeof(*srv->shards))) ||
	    !(d->counters = aligned_alloc(_Alignof(struct counters), n * sizeof(*d->counters))))
		return -ENOMEM;
	memset(d->counters, 0, n * sizeof(*d->counters));
	d->n_counters = n;
	for (; srv->n_shards < n; srv->n_shards++) {
		if (!(srv->shards[srv->n_shards] = shard_new(srv, threaded)))
			return -ENOMEM;
		srv->shards[srv->n_shards]->counters = &d->counters[srv->n_shards];
	}
	return 0;
}

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
	srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	srv->turn_ev = evtimer_new(base, on_accept_turn, srv);
	srv->resume_ev = evtimer_new(base, on_resume_accept, srv);
	if (srv->spare_fd < 0 || !srv->turn_ev || !srv->resume_ev ||
	    flows_create(&srv->flows) < 0 || make_shards(srv, 1, false) < 0) {
		server_destroy(srv);
		return -ENOMEM;
	}
	*ret_srv = srv;
	return 0;
}

static void *shard_loop(void *arg)
{
	struct shard *sh = arg;

	if (event_base_loop(sh->base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
		log_err("a loop thread's event loop failed");
	dispatch_fini();
	return NULL;
}

int server_start_threads(struct server *srv, unsigned n)
{
	sigset_t all, old;
	int rc = make_shards(srv, n, true);

	/* Signals are the main thread's (its loop watches them), so the threads block them all. */
	(void)sigfillset(&all);
	(void)pthread_sigmask(SIG_BLOCK, &all, &old);
	for (unsigned i = 0; rc == 0 && i < n; i++) {
		rc = -pthread_create(&srv->shards[i]->thread, NULL, shard_loop, srv->shards[i]);
		srv->shards[i]->running = rc == 0;
	}
	(void)pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0) {
		server_stop_threads(srv);
		free_shards(srv);
		return fail(rc, "cannot start %u event-loop threads: %s", n, strerror(-rc));
	}
	return 0;
}

/* Makes the shard take what its inbox holds, and stop its loop when asked to. */
static void shard_wake(struct shard *sh, struct conn *c, bool stop)
{
	(void)pthread_mutex_lock(&sh->inbox_lock);
	if (c)
		LIST_INSERT_HEAD(&sh->inbox, c, link);
	sh->stopping |= stop;
	(void)pthread_mutex_unlock(&sh->inbox_lock);
	event_active(sh->inbox_ev, EV_READ, 0);
}

void server_stop_threads(struct server *srv)
{
	for (unsigned i = 0; i < srv->n_shards; i++) {
		struct shard *sh = srv->shards[i];

		if (!sh->running)
			continue;
		shard_wake(sh, NULL, true);
		(void)pthread_join(sh->thread, NULL);
		sh->running = false;
	}
}

static void on_ping(evutil_socket_t fd, short what, void *arg)
{
	struct shard *sh = arg;

	(void)fd;
	(void)what;
	__atomic_store_n(&sh->ping_unanswered, false, __ATOMIC_RELAXED);
}

bool server_threads_turning(struct server *srv)
{
	bool turning = true;

	for (unsigned i = 0; i < srv->n_shards; i++) {
		struct shard *sh = srv->shards[i];

		turning &= !__atomic_exchange_n(&sh->ping_unanswered, true, __ATOMIC_RELAXED);
		event_active(sh->ping_ev, EV_READ, 0);
	}
	return turning;
}

unsigned server_threads(const struct server *srv)
{
	return srv->shards[0]->threaded ? srv->n_shards : 0;
}

const char *refusal_name(enum refusal why)
{
	static const char *const names[REFUSALS] = {
		[REFUSED_MAX_CONNECTIONS] = "max-connections",
		[REFUSED_RESERVED] = "reserved-connections",
		[REFUSED_PER_UID] = "max-connections-per-uid",
		[REFUSED_PER_TENANT] = "max-connections-per-tenant",
		[REFUSED_OPEN_FILES] = "open-file-limit",
		[REFUSED_UNIDENTIFIED] = "unidentified-peer",
		[CLOSED_FIRST_REQUEST_TIMEOUT] = "first-request-timeout",
		[CLOSED_IDLE_TIMEOUT] = "idle-timeout",
	};

	return names[why];
}

/* Says why connections go, one line per interval: a storm of them must not flood the log. */
static void log_refusal(struct server *srv, const char *message)
{
	uint64_t now = monotonic_ns();

	if (now < srv->refusal_log_ns) {
		srv->refusals_unlogged++;
		return;
	}
	if (srv->refusals_unlogged)
		log_warning("%s; %llu more connections refused or closed in the last %d s are not "
			    "logged (GetStats counts them by reason)",
			    message, (unsigned long long)srv->refusals_unlogged,
			    REFUSAL_LOG_INTERVAL_S);
	else
		log_warning("%s", message);
	srv->refusals_unlogged = 0;
	srv->refusal_log_ns = now + REFUSAL_LOG_INTERVAL_S * NS_PER_SECOND;
}

/* Sends a reply without waiting; -EAGAIN when the socket is full (nothing sent). */
static int send_reply(int fd, const uint8_t *buf, size_t len, const struct reply_fds *fds)
{
	return wire_send(fd, buf, len, fds ? fds->fds : NULL, fds ? fds->n : 0, WIRE_NONBLOCK);
}

/* Closes a connection without reading it, so that its client reads what was sent: a Unix
 * socket closed with packets still queued resets its peer, which then sees ECONNRESET before
 * them. Shutting reading first makes the client's later sends fail instead of queueing. */
static void close_unread(struct server *srv, int fd)
{
	struct wire_packet packet;

	(void)shutdown(fd, SHUT_RD);
	while (wire_recv(fd, srv->in, sizeof(srv->in), WIRE_NONBLOCK, &packet) == 0)
		wire_close_fds(packet.fds, packet.n_fds);
	(void)close(fd);
}

/* Refuses a connection it has not taken: counts it, tells its client why in a response of
 * id 0 (which a client takes as the answer to its first request), closes it and logs. */
static int refuse(struct server *srv, int fd, enum refusal why, int err, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static int refuse(struct server *srv, int fd, enum refusal why, int err, const char *fmt, ...)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;
	char message[512];
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	srv->d->refused[why]++;
	status.code = code_for_errno(err);
	status.errno_value = -err;
	status.failed_index = -1;
	status.message = message;
	resp.status = &status;
	(void)send_reply(fd, srv->out, iommud__v1__response__pack(&resp, srv->out), NULL);
	close_unread(srv, fd);
	log_refusal(srv, message);
	return err;
}

/* ---- connections ---------------------------------------------------------------------- */

static void accept_resume(struct server *srv);
static void accept_stop(struct server *srv);
static int refuse_out_of_descriptors(struct server *srv, int fd, int err);
static void accept_one(struct server *srv, uint64_t start_ns);

/* Under the daemon lock: what a handler handed out with the descriptors is taken back. */
static void conn_drop_pending(struct conn *c)
{
	reply_fds_close(&c->pending_fds);
	free(c->pending);
	c->pending = NULL;
}

/* In the shard's thread, or once it has stopped. */
static void conn_close(struct conn *c)
{
	struct server *srv = c->srv;
	unsigned uid = (unsigned)c->client.peer.uid;

	daemon_lock();
	LIST_REMOVE(c, link);
	srv->d->connections--;
	c->shard->load--;
	/* The daemon is stopping, or the connection failed: what remains is done at once. */
	if (c->call)
		(void)dispatch_abandon(c->call, UINT64_MAX);
	if (c->item.flow)
		flows_leave(c->shard->flows, &c->item);
	flows_leave(srv->flows, &c->count);
	conn_drop_pending(c);
	client_fini(&c->client);
	if (srv->accept_paused)
		accept_resume(srv);
	daemon_unlock();
	if (c->ev)
		event_free(c->ev);
	(void)close(c->fd);
	log_debug("connection of uid %u closed", uid);
	free(c);
}

static void conn_on_event(evutil_socket_t fd, short what, void *arg);
static bool shard_may_skip_poll(void *arg);

/* Waits for the socket to be writable (a reply pending) or readable (none), for as long as
 * the configured timeout lets a connection stay silent (0: forever), counted from now. Root is
 * held by no limit, so that the administrator's tools always keep their connection. Reading
 * is watched edge-triggered where the loop can (the shard's read_events): the socket stays in
 * the poll set between requests instead of leaving it at each packet and coming back once the
 * connection is drained, two epoll_ctl calls a request for a client that waits for its
 * replies on another CPU; re-adding it only restarts the timeout. */
static void conn_arm(struct conn *c)
{
	const struct config *cfg = c->srv->d->cfg;
	unsigned seconds = c->client.peer.uid == 0 ? 0
			   : c->spoke		   ? cfg->idle_timeout
						   : cfg->first_request_timeout;
	struct timeval timeout = {.tv_sec = seconds};
	short events = c->pending ? EV_WRITE : c->shard->read_events;

	if (event_get_events(c->ev) != events) {
		(void)event_del(c->ev);
		(void)event_assign(c->ev, c->shard->base, c->fd, events, conn_on_event, c);
	}
	if (!seconds)
		(void)event_remove_timer(c->ev);
	(void)event_add(c->ev, seconds ? &timeout : NULL);
}

/* After a send that gave rc: the call's latency counted and the descriptors' copies closed
 * once it went, the descriptors closed as unsent if it failed; a reply waiting (-EAGAIN) keeps
 * its descriptors. */
static void reply_done(struct conn *c, int rc, struct reply_fds *reply_fds, unsigned method,
		       uint64_t received_ns)
{
	if (rc == 0)
		dispatch_reply_sent(&c->client, method, received_ns);
	/* A map path's reply carries nothing to take back, and takes no daemon lock. */
	if (rc == -EAGAIN || (!reply_fds->n && !reply_fds->sent && !reply_fds->unsent))
		return;
	daemon_lock();
	if (rc == 0)
		reply_fds_sent(reply_fds);
	reply_fds_close(reply_fds);
	daemon_unlock();
}

/* Sends the reply to a call of method received at received_ns, or keeps it until the socket
 * takes it. A negative errno when the connection must close. */
static int conn_reply(struct conn *c, size_t len, struct reply_fds *reply_fds, unsigned method,
		      uint64_t received_ns)
{
	int rc = send_reply(c->fd, c->shard->out, len, reply_fds);

	reply_done(c, rc, reply_fds, method, received_ns);
	if (rc != -EAGAIN) {
		if (rc < 0)
			log_debug("cannot reply to uid %u (%s); closing",
				  (unsigned)c->client.peer.uid, strerror(-rc));
		return rc;
	}
	c->pending = malloc(len);
	if (!c->pending) {
		reply_done(c, -ENOMEM, reply_fds, method, received_ns);
		log_err("out of memory holding a reply for uid %u; closing its connection",
			(unsigned)c->client.peer.uid);
		return -ENOMEM;
	}
	memcpy(c->pending, c->shard->out, len);
	c->pending_len = len;
	c->pending_fds = *reply_fds;
	c->pending_method = method;
	c->pending_received_ns = received_ns;
	return 0;
}

/* Whether the client has closed its end: a socket that only stopped sending still hears its
 * reply, as when a request is handled at once. */
static bool peer_gone(int fd)
{
	struct pollfd pfd = {.fd = fd};

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR));
}

/* Replies to a call dispatch_packet or dispatch_resume handled, or keeps the call with its
 * tenant's flow held when it has work left. */
static int conn_end_call(struct conn *c, size_t len, struct reply_fds *reply_fds, unsigned method,
			 uint64_t received_ns, struct call *kept)
{
	if (kept && !c->call)
		c->peer_checked_ns = received_ns;
	c->call = kept;
	c->call_received_ns = received_ns;
	flows_hold(c->shard->flows, &c->item, kept);
	return kept ? 0 : conn_reply(c, len, reply_fds, method, received_ns);
}

/* Receives one packet and answers it, or goes on with the request in progress; -EAGAIN when
 * none is waiting, another negative errno (-ECONNRESET at end of stream) when the connection
 * should close. A quick client's packet is waited for where nothing else needs the thread
 * meanwhile (SOCKET_WAIT_US at most): the request then starts, and *start_ns_io moves, when
 * it came, so that neither its tenant's charge nor its slice counts the wait. */
static int conn_read_one(struct conn *c, uint64_t *start_ns_io)
{
	struct shard *sh = c->shard;
	enum packet_defect defect = PACKET_OK;
	struct wire_packet packet;
	uint64_t start_ns = *start_ns_io, received_ns;
	struct call *kept;
	unsigned method;
	size_t out_len;
	struct reply_fds reply_fds;
	bool wait;
	int rc;

	if (c->call) {
		/* Its socket's events only make it ready, which it is: a client gone is found
		 * here (within PEER_CHECK_NS), and takes its call with it, in slices as the call's
		 * own work went, the connection closing after the last. */
		if (!c->peer_went && start_ns - c->peer_checked_ns >= PEER_CHECK_NS) {
			c->peer_checked_ns = start_ns;
			c->peer_went = peer_gone(c->fd);
		}
		if (c->peer_went) {
			bool done;

			daemon_lock();
			done = dispatch_abandon(c->call, start_ns + SLICE_NS);
			daemon_unlock();
			if (!done)
				return 0;
			c->call = NULL;
			flows_hold(sh->flows, &c->item, false);
			return -ECONNRESET;
		}
		out_len = dispatch_resume(c->call, start_ns + SLICE_NS,
					  flows_alone(sh->flows, &c->item, start_ns), sh->out,
					  &reply_fds, &method, &kept);
		return conn_end_call(c, out_len, &reply_fds, method, c->call_received_ns, kept);
	}
	wait = c->may_wait && c->quick && shard_may_skip_poll(sh);
	rc = wire_recv(c->fd, sh->in, sizeof(sh->in), wait ? WIRE_BLOCK : WIRE_NONBLOCK, &packet);
	if (rc < 0) {
		/* Waited for in vain, the client is no longer quick: its socket is polled. */
		c->quick &= !(wait && rc == -EAGAIN);
		return rc;
	}
	received_ns = monotonic_ns();
	c->quick = received_ns - c->replied_ns < QUICK_CLIENT_NS;
	if (wait)
		*start_ns_io = start_ns = received_ns;
	if (packet.truncated)
		defect = PACKET_TRUNCATED;
	else if (packet.fds_truncated)
		defect = PACKET_FDS_TRUNCATED;
	out_len = dispatch_packet(c->srv->d, &c->client, sh->in, packet.len, defect, packet.fds,
				  packet.n_fds, start_ns + SLICE_NS,
				  flows_alone(sh->flows, &c->item, start_ns), sh->out, &reply_fds,
				  &method, &kept);
	return conn_end_call(c, out_len, &reply_fds, method, received_ns, kept);
}

/* Handles one request (or slice of one) of a ready connection and charges its tenant the time
 * it took; a connection with nothing more to read, or a reply its client has not taken, leaves
 * the ready ones and waits on its socket. Returns when it was done (monotonic_ns): the clock
 * read that ends the charge is the turn's next, one read a request fewer. */
static uint64_t conn_serve(struct conn *c, uint64_t start_ns)
{
	struct flows *flows = c->shard->flows;
	int rc = conn_read_one(c, &start_ns);
	uint64_t ended_ns = monotonic_ns();

	if (rc != -EAGAIN)
		flows_charge(flows, &c->item, ended_ns - start_ns);
	if (rc < 0 && rc != -EAGAIN) {
		/* Closing may free a whole session: the turn goes on from after it. */
		conn_close(c);
		return monotonic_ns();
	}
	c->spoke |= rc == 0;
	if (rc == 0)
		c->replied_ns = ended_ns;
	if (rc == -EAGAIN || c->pending) {
		flows_unready(flows, &c->item);
		conn_arm(c);
	}
	return ended_ns;
}

/* Runs a turn after the loop has polled again, at once or after delay_ns. */
static void schedule_turn(struct event *turn_ev, uint64_t delay_ns)
{
	struct timeval delay = {
		.tv_sec = (time_t)(delay_ns / NS_PER_SECOND),
		.tv_usec = (suseconds_t)(delay_ns % NS_PER_SECOND / 1000),
	};

	(void)evtimer_add(turn_ev, &delay);
}

/* Runs a turn once the callbacks of the events the loop just polled have run: made active, the
 * turn joins the end of the queue they are in, so every connection that poll found ready is in
 * its choice, and it costs no second poll, as a timer would. */
static void turn_after_events(struct event *turn_ev)
{
	event_active(turn_ev, EV_TIMEOUT, 0);
}

/* Serves ready items of flows, each from the flow charged least so far, until the turn's time
 * is up; then the loop looks for packets again (the next turn is a timer, which libevent runs
 * only after polling), so that a request arriving meanwhile is in the next choice. Unless
 * may_skip_poll (NULL: never) says a poll could find nothing else to serve: then the turn
 * goes on for as long again. serve returns when it was done (monotonic_ns). */
static void run_turn(struct flows *flows, struct event *turn_ev,
		     uint64_t (*serve)(void *arg, struct flow_item *item, uint64_t now_ns),
		     bool (*may_skip_poll)(void *arg), void *arg)
{
	uint64_t start = monotonic_ns(), now = start, wait;
	struct flow_item *item;

	for (;;) {
		if (now - start >= TURN_NS) {
			if (!may_skip_poll || !may_skip_poll(arg)) {
				schedule_turn(turn_ev, 0);
				return;
			}
			start = now;
		}
		if (!(item = flows_next(flows, now)))
			break;
		now = serve(arg, item, now);
	}
	if ((wait = flows_wait_ns(flows, now)))
		schedule_turn(turn_ev, wait);
}

static uint64_t serve_conn(void *arg, struct flow_item *item, uint64_t now_ns)
{
	(void)arg;
	return conn_serve((struct conn *)((char *)item - offsetof(struct conn, item)), now_ns);
}

/* Whether polling could find a shard's loop thread nothing to do but the connection it serves:
 * it has no other (whose packets only a poll would show), no other thread has made one of its
 * events active (a connection handed over, a ping, the stop: counted by libevent as they come,
 * without a poll) and it runs no one else's events (the inline shard, on the main thread's
 * loop, does: signals, the listening socket). Then the turn goes on with the one connection: on
 * a CPU it shares with its client, the client's next request is there when the send of the
 * reply returns, and a poll would be a system call per request that finds nothing. */
static bool shard_may_skip_poll(void *arg)
{
	struct shard *sh = arg;
	struct conn *first = LIST_FIRST(&sh->conns);

	return sh->threaded && first && !LIST_NEXT(first, link) &&
	       !event_base_get_num_events(sh->base, EVENT_BASE_COUNT_ACTIVE);
}

static void on_shard_turn(evutil_socket_t fd, short what, void *arg)
{
	struct shard *sh = arg;
	uint64_t throttled;

	(void)fd;
	(void)what;
	run_turn(sh->flows, sh->turn_ev, serve_conn, shard_may_skip_poll, sh);
	throttled = flows_throttled(sh->flows);
	__atomic_fetch_add(&sh->srv->d->rate_limited, throttled - sh->throttled_seen,
			   __ATOMIC_RELAXED);
	sh->throttled_seen = throttled;
}

static void conn_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct server *srv = c->srv;
	int rc;

	(void)fd;
	if (what & EV_READ) {
		flows_ready(c->shard->flows, &c->item);
		turn_after_events(c->shard->turn_ev);
		return;
	}
	/* A socket watched edge-triggered stays watched while its requests wait their turn
	 * (ready): it is not silent then. */
	if ((what & EV_TIMEOUT) && c->item.ready)
		return;
	if (what & EV_TIMEOUT) {
		enum refusal why = c->spoke ? CLOSED_IDLE_TIMEOUT : CLOSED_FIRST_REQUEST_TIMEOUT;
		char message[128];

		(void)snprintf(message, sizeof(message),
			       "closing a connection of uid %u: silent for longer than %s",
			       (unsigned)c->client.peer.uid, refusal_name(why));
		daemon_lock();
		srv->d->refused[why]++;
		log_refusal(srv, message);
		daemon_unlock();
		conn_close(c);
		return;
	}
	rc = send_reply(c->fd, c->pending, c->pending_len, &c->pending_fds);
	reply_done(c, rc, &c->pending_fds, c->pending_method, c->pending_received_ns);
	if (rc != -EAGAIN) {
		free(c->pending);
		c->pending = NULL;
	}
	if (rc < 0 && rc != -EAGAIN)
		conn_close(c);
	else
		conn_arm(c);
}

/* Whether the peer may take one of the slots reserve-connections keeps: it is a writer the
 * configuration names. */
static bool may_use_reserve(const struct config *cfg, const struct peer *peer)
{
	const struct access_rule *rule =
		config_match(cfg, peer->uid, peer->gid, peer->groups, peer->n_groups);

	return rule && rule->access == ACCESS_WRITE;
}

/* Refuses a peer over a connection limit; 0 when it may connect. Root is held by none. */
static int admit(struct server *srv, int fd, const struct peer *peer)
{
	const struct config *cfg = srv->d->cfg;
	unsigned open = srv->d->connections, of_uid = flows_uid_items(srv->flows, peer->uid);

	if (peer->uid == 0)
		return 0;
	if (open >= srv->max_connections)
		return refuse(srv, fd, REFUSED_MAX_CONNECTIONS, -EMFILE,
			      "refusing a connection of uid %u: %u connections are open, the "
			      "limit (max-connections); retry later",
			      (unsigned)peer->uid, open);
	if (open >= srv->max_connections - cfg->reserved_connections && !may_use_reserve(cfg, peer))
		return refuse(srv, fd, REFUSED_RESERVED, -EMFILE,
			      "refusing a connection of uid %u: the last %u of %u connections are "
			      "kept for writers the configuration names (reserved-connections); "
			      "retry later",
			      (unsigned)peer->uid, cfg->reserved_connections, srv->max_connections);
	if (of_uid >= cfg->max_connections_per_uid)
		return refuse(srv, fd, REFUSED_PER_UID, -EMFILE,
			      "refusing a connection of uid %u: it has %u open, the limit "
			      "(max-connections-per-uid); close some",
			      (unsigned)peer->uid, of_uid);
	return 0;
}

/* The key of the connection's flows: its tenant. A peer that could not be verified has no
 * tenant: it is a flow of its own, so that one user's such connections count against nobody
 * else's. */
static const void *conn_flow_key(struct conn *c)
{
	return c->client.tenant ? (const void *)c->client.tenant : (const void *)c;
}

/* The shard serving the connection's tenant: the one it has while it has connections, else
 * the one serving the fewest connections. */
static struct shard *conn_shard(struct server *srv, struct conn *c)
{
	void **owner = flows_owner(&c->count);
	struct shard *least = srv->shards[0];

	if (*owner)
		return *owner;
	for (unsigned i = 1; i < srv->n_shards; i++)
		if (srv->shards[i]->load < least->load)
			least = srv->shards[i];
	*owner = least;
	return least;
}

/* Lets a receive without MSG_DONTWAIT wait on the socket, for SOCKET_WAIT_US at most; every
 * other call on it says MSG_DONTWAIT. Without the bound the socket is left as it was. */
static bool socket_may_wait(int fd)
{
	struct timeval bound = {.tv_usec = SOCKET_WAIT_US};
	int flags = fcntl(fd, F_GETFL);

	return flags >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof(bound)) == 0 &&
	       fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0;
}

/* The connection for a peer that was admitted, counted to its tenant and given its shard; the
 * tenant's own limit is checked once the tenant is known. Takes the peer over; on failure fd
 * is closed (or refused) and the peer cleared. Under the daemon lock. */
static int conn_new(struct server *srv, int fd, struct peer *peer, struct conn **ret_conn)
{
	const struct config *cfg = srv->d->cfg;
	struct conn *c = calloc(1, sizeof(*c));
	unsigned of_tenant;
	int rc = c ? client_init(srv->d, &c->client, peer) : -ENOMEM;

	if (rc < 0) {
		log_warning("cannot take a connection of uid %u: %s", (unsigned)peer->uid,
			    c ? failure_message() : "out of memory");
		if (c)
			client_fini(&c->client);
		else
			peer_clear(peer);
		free(c);
		(void)close(fd);
		return rc;
	}
	c->srv = srv;
	c->fd = fd;
	c->client.fd = fd;
	of_tenant = flows_key_items(srv->flows, conn_flow_key(c));
	if (peer->uid != 0 && of_tenant >= cfg->max_connections_per_tenant)
		rc = refuse(srv, fd, REFUSED_PER_TENANT, -EMFILE,
			    "refusing a connection of uid %u: its tenant has %u open, the limit "
			    "(max-connections-per-tenant); close some",
			    (unsigned)peer->uid, of_tenant);
	else if (flows_join(srv->flows, &c->count, conn_flow_key(c), peer->uid,
			    &(struct flow_rate){0}) < 0) {
		log_warning("cannot take a connection of uid %u: out of memory",
			    (unsigned)peer->uid);
		(void)close(fd);
		rc = -ENOMEM;
	}
	if (rc < 0) {
		client_fini(&c->client);
		free(c);
		return rc;
	}
	c->may_wait = socket_may_wait(fd);
	c->shard = conn_shard(srv, c);
	c->shard->load++;
	c->client.counters = c->shard->counters;
	*ret_conn = c;
	return 0;
}

/* In the shard's thread: the connection joins the shard's flows and waits for its packets. */
static void shard_take(struct shard *sh, struct conn *c)
{
	const struct config *cfg = sh->srv->d->cfg;
	struct flow_rate rate = {0};

	LIST_INSERT_HEAD(&sh->conns, c, link);
	/* Readers are rate limited, writers only shared with fairly. */
	if (c->client.peer.uid != 0 && c->client.access < ACCESS_WRITE)
		rate = (struct flow_rate){cfg->reader_rate, cfg->reader_burst};
	if (!(c->ev = event_new(sh->base, c->fd, sh->read_events, conn_on_event, c)) ||
	    flows_join(sh->flows, &c->item, conn_flow_key(c), c->client.peer.uid, &rate) < 0) {
		log_warning("cannot take a connection of uid %u: out of memory",
			    (unsigned)c->client.peer.uid);
		conn_close(c);
		return;
	}
	conn_arm(c);
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
	struct shard *sh = arg;
	struct conn *c;
	bool stopping;

	(void)fd;
	(void)what;
	for (;;) {
		(void)pthread_mutex_lock(&sh->inbox_lock);
		if ((c = LIST_FIRST(&sh->inbox)))
			LIST_REMOVE(c, link);
		stopping = sh->stopping;
		(void)pthread_mutex_unlock(&sh->inbox_lock);
		if (!c)
			break;
		shard_take(sh, c);
	}
	if (stopping)
		(void)event_base_loopbreak(sh->base);
}

void server_set_identify(struct server *srv, int (*identify)(int fd, struct peer *ret_peer))
{
	srv->identify = identify;
}

static void log_connection(const struct peer *peer)
{
	const char *cgroup = peer->cgroup ? peer->cgroup : "";

	log_struct(LOG_DEBUG, LOG_FIELDS({"IOMMUD_CGROUP", cgroup}),
		   "connection of uid %u pid %d cgroup '{IOMMUD_CGROUP}'%s", (unsigned)peer->uid,
		   (int)peer->pid, peer->cgroup ? "" : " (not verified: its requests are refused)");
}

/* Identifies, admits and hands over a connection, under the daemon lock. */
static int adopt(struct server *srv, int fd)
{
	struct peer peer;
	struct conn *c;
	int rc;

	rc = srv->identify(fd, &peer);
	if (rc < 0)
		return refuse(srv, fd, REFUSED_UNIDENTIFIED, -EPERM,
			      "refusing a connection: cannot identify its peer (%s)",
			      strerror(-rc));
	/* Identifying takes descriptors (a pidfd, /proc's file): lacking them says nothing about
	 * who the peer is, only that the daemon is full, as when accept itself fails. */
	if (peer.doubt != PEER_VERIFIED &&
	    (peer.doubt_errno == EMFILE || peer.doubt_errno == ENFILE)) {
		rc = peer.doubt_errno;
		peer_clear(&peer);
		accept_stop(srv);
		return refuse_out_of_descriptors(srv, fd, rc);
	}
	if ((rc = admit(srv, fd, &peer)) < 0) {
		peer_clear(&peer);
		return rc;
	}
	if ((rc = conn_new(srv, fd, &peer, &c)) < 0)
		return rc;
	srv->d->connections++;
	log_connection(&c->client.peer);
	shard_wake(c->shard, c, false);
	return 0;
}

int server_adopt(struct server *srv, int fd)
{
	int rc;

	daemon_lock();
	rc = adopt(srv, fd);
	daemon_unlock();
	return rc;
}

/* ---- accepting ------------------------------------------------------------------------ */

static void accept_resume(struct server *srv)
{
	srv->accept_paused = false;
	/* A loop thread calls this under the daemon lock, while the main thread's timer may be
	 * running and waiting for that lock: event_del would wait for the timer, which waits for
	 * the lock. Not waiting is safe, as the timer resumes only what is still paused. */
	(void)event_del_noblock(srv->resume_ev);
	(void)event_add(srv->listen_ev, NULL);
}

static void on_resume_accept(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	daemon_lock();
	if (srv->accept_paused)
		accept_resume(srv);
	daemon_unlock();
}

/* Stops watching the listening socket for a while, or until a connection closes. */
static void accept_stop(struct server *srv)
{
	struct timeval pause = {.tv_usec = ACCEPT_PAUSE_US};

	if (!srv->listen_ev) /* serving adopted connections only */
		return;
	flows_unready(srv->flows, &srv->accept_item);
	srv->accept_paused = true;
	(void)event_del(srv->listen_ev);
	(void)event_add(srv->resume_ev, &pause);
}

static int refuse_out_of_descriptors(struct server *srv, int fd, int err)
{
	return refuse(srv, fd, REFUSED_OPEN_FILES, -EMFILE,
		      "refusing a connection: the daemon is out of descriptors (%s, %u "
		      "connections open); raise LimitNOFILE, or lower max-connections-per-uid "
		      "to keep one user from taking them",
		      strerror(err), srv->d->connections);
}

/* Out of descriptors (or memory), accept fails with the connection still queued, and the
 * listening socket stays readable: watching it would spin. Refuse the queued connection with
 * the spare descriptor's room, then stop watching. */
static void accept_pause(struct server *srv, int err)
{
	int fd;

	if (srv->spare_fd >= 0) {
		(void)close(srv->spare_fd);
		fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			(void)refuse_out_of_descriptors(srv, fd, err);
		srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	} else {
		log_refusal(srv,
			    "out of descriptors, and of the spare one to refuse connections with");
	}
	accept_stop(srv);
}

/* The listening socket is readable: connections wait to be taken in a turn. */
static void on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	(void)event_del(srv->listen_ev);
	daemon_lock();
	flows_ready(srv->flows, &srv->accept_item);
	daemon_unlock();
	turn_after_events(srv->turn_ev);
}

/* Takes one connection in a turn; with none left, waits on the listening socket again. */
static void accept_one(struct server *srv, uint64_t start_ns)
{
	int conn_fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), err;

	if (conn_fd >= 0) {
		(void)adopt(srv, conn_fd);
		flows_charge(srv->flows, &srv->accept_item, monotonic_ns() - start_ns);
		return;
	}
	err = errno;
	flows_unready(srv->flows, &srv->accept_item);
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		accept_pause(srv, err);
		return;
	}
	if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
		log_warning("accept: %s", strerror(err));
	(void)event_add(srv->listen_ev, NULL);
}

static uint64_t serve_accept(void *arg, struct flow_item *item, uint64_t now_ns)
{
	(void)item;
	accept_one(arg, now_ns);
	return monotonic_ns();
}

/* The main thread's turns: the only ready item of the server's flows is the listening
 * socket's, the connections' items there only count them. */
static void on_accept_turn(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	daemon_lock();
	run_turn(srv->flows, srv->turn_ev, serve_accept, NULL, srv);
	daemon_unlock();
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

/* The socket an earlier image of this process bound (reexec.h): its path is this daemon's to
 * remove at stop, read from the socket itself in case the configuration changed since. */
static int claim_bound_listener(struct server *srv)
{
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	int fd = fdstore_claim_name(REEXEC_BOUND_LISTENER_NAME);

	if (fd < 0)
		return fd;
	memset(&addr, 0, sizeof(addr));
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0 || addr.sun_family != AF_UNIX ||
	    !addr.sun_path[0] ||
	    !(srv->socket_path = strndup(addr.sun_path, sizeof(addr.sun_path)))) {
		(void)close(fd);
		return fail(-EINVAL, "the socket kept across the re-exec has no path");
	}
	log_info("listening on %s, kept across the re-exec", srv->socket_path);
	return fd;
}

int server_listen(struct server *srv, const char *path, mode_t mode)
{
	int rc = fdstore_handed();

	if (rc >= 0 && (rc = claim_bound_listener(srv)) == -ENOENT) {
		rc = fdstore_claim_listener();
		if (rc >= 0)
			log_info("listening on the socket systemd passed");
	}
	if (rc >= 0) {
		srv->listen_fd = rc;
		(void)fcntl(srv->listen_fd, F_SETFL, fcntl(srv->listen_fd, F_GETFL) | O_NONBLOCK);
	} else if (rc == -ENOENT) {
		rc = bind_socket(srv, path, mode);
		if (rc < 0)
			return rc;
		log_info("listening on %s", path);
	} else {
		return rc;
	}
	srv->listen_ev = event_new(srv->base, srv->listen_fd, EV_READ, on_accept, srv);
	if (!srv->listen_ev || event_add(srv->listen_ev, NULL) < 0 ||
	    flows_join(srv->flows, &srv->accept_item, srv, ACCEPT_UID, &(struct flow_rate){0}) < 0)
		return fail(-ENOMEM, "cannot watch the listening socket");
	return 0;
}

int server_listen_fd(const struct server *srv)
{
	return srv->listen_fd;
}

bool server_bound_its_path(const struct server *srv)
{
	return srv->socket_path != NULL;
}

void server_destroy(struct server *srv)
{
	if (!srv)
		return;
	server_stop_threads(srv);
	free_shards(srv);
	if (srv->accept_item.flow)
		flows_leave(srv->flows, &srv->accept_item);
	free_events(&srv->listen_ev, &srv->resume_ev, &srv->turn_ev);
	if (srv->flows)
		flows_destroy(srv->flows);
	if (srv->spare_fd >= 0)
		(void)close(srv->spare_fd);
	if (srv->listen_fd >= 0)
		(void)close(srv->listen_fd);
	if (srv->socket_path) {
		(void)unlink(srv->socket_path);
		free(srv->socket_path);
	}
	free(srv);
	dispatch_fini();
}
