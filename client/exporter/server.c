/* SPDX-License-Identifier: MIT */
/*
 * evhttp parses and answers; this file adds what evhttp 2.1 lacks: a cap on connections and a
 * deadline per exchange. Both need to know when a connection opens and closes, before any
 * request, which evhttp does not tell: each connection's bufferevent is made here
 * (evhttp_set_bevcb) and a reference to it kept, and evhttp has let it go once it took its
 * callbacks away (bufferevent_free does that first). A sweep, before each new connection and
 * every second, drops those references, which closes their sockets.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "metrics.h"
#include "scrape.h"
#include "server.h"

/* A scrape's request is a line and a few headers; browsers send a few KiB at most. */
#define MAX_HEADERS 8192
#define MAX_BODY    1024
/* Requests whose connection closed still wait for their answer (evhttp frees them when it is
 * sent); this many per connection are allowed before new scrapes are turned away. */
#define WAITING_PER_CONNECTION 4

struct conn {
	struct bufferevent *bev; /* one reference is the connection's */
	struct event *deadline;
	bool busy;    /* a request of it is being answered */
	bool closing; /* shut down, soon closed */
	struct conn *next;
};

struct server {
	struct event_base *base;
	struct evhttp *http;
	struct evconnlistener *listener;
	struct server_options opts;
	struct conn *conns; /* newest first */
	struct event *sweep;
	bool accepting;
	struct scrape *scrape;
	struct evhttp_request **waiting;
	size_t n_waiting, max_waiting;
	int daemon_up; /* -1 until the first scrape */
};

static const char index_html[] =
	"<!DOCTYPE html>\n<html><head><title>iommud exporter</title></head><body>\n"
	"<h1>iommud exporter</h1>\n<p>The IOMMU daemon's statistics for Prometheus are at "
	"<a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n";
static const char not_found[] = "Not found: the metrics are at /metrics.\n";
static const char read_only[] = "Only GET and HEAD are served.\n";

static void conn_free(struct conn *conn)
{
	(void)bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
	(void)bufferevent_decref(conn->bev);
	event_free(conn->deadline);
	free(conn);
}

/* Drops the connections evhttp closed; accepting resumes when there is room again. */
static void sweep(struct server *srv)
{
	bool closed = false;

	for (struct conn **p = &srv->conns; *p;) {
		struct conn *conn = *p;
		bufferevent_data_cb readcb, writecb;
		bufferevent_event_cb eventcb;
		void *arg;

		bufferevent_getcb(conn->bev, &readcb, &writecb, &eventcb, &arg);
		if (readcb || writecb || eventcb) {
			p = &conn->next;
			continue;
		}
		*p = conn->next;
		conn_free(conn);
		closed = true;
	}
	if (closed && !srv->accepting)
		srv->accepting = evconnlistener_enable(srv->listener) == 0;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	sweep(arg);
}

/* Shutting the socket down makes evhttp see the end of the connection and close it the way it
 * closes any other. */
static void conn_close(struct conn *conn)
{
	evutil_socket_t fd = bufferevent_getfd(conn->bev);

	if (fd >= 0)
		(void)shutdown(fd, SHUT_RDWR);
	conn->closing = true;
}

static void conn_expired(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_close(arg);
}

/* Called as a connection is accepted, before it is listed (evhttp has not given it its
 * callbacks yet). At the cap the oldest idle connection gives way, so that idle or trickling
 * peers cannot keep a scrape out; when every other connection is being answered, accepting
 * waits for one to close. */
static void make_room(struct server *srv)
{
	struct conn *oldest_idle = NULL;
	unsigned open = 0;

	sweep(srv);
	for (struct conn *conn = srv->conns; conn; conn = conn->next) {
		if (conn->closing)
			continue;
		open++;
		if (!conn->busy)
			oldest_idle = conn;
	}
	if (open < srv->opts.max_connections)
		return;
	if (oldest_idle)
		conn_close(oldest_idle);
	else if (srv->accepting)
		srv->accepting = evconnlistener_disable(srv->listener) != 0;
}

/* evhttp's bufferevent callback: a connection was accepted. NULL lets evhttp make its own
 * bufferevent, which serves the connection without a deadline: only when memory ran out. */
static struct bufferevent *new_connection(struct event_base *base, void *arg)
{
	struct server *srv = arg;
	struct conn *conn = calloc(1, sizeof(*conn));

	if (!conn)
		return NULL;
	conn->deadline = evtimer_new(base, conn_expired, conn);
	conn->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!conn->deadline || !conn->bev ||
	    evtimer_add(conn->deadline, &srv->opts.request_timeout) < 0) {
		if (conn->bev)
			bufferevent_free(conn->bev);
		if (conn->deadline)
			event_free(conn->deadline);
		free(conn);
		return NULL;
	}
	bufferevent_incref(conn->bev);
	make_room(srv);
	conn->next = srv->conns;
	srv->conns = conn;
	return conn->bev;
}

/* A request arrived (busy) or its reply was sent: the connection of req gets a fresh deadline
 * for the reply, or for its next request. */
static void rearm(struct server *srv, struct evhttp_request *req, bool busy)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;

	for (struct conn *conn = srv->conns; bev && conn; conn = conn->next) {
		if (conn->bev == bev) {
			conn->busy = busy;
			(void)evtimer_add(conn->deadline, &srv->opts.request_timeout);
		}
	}
}

static void reply_sent(struct evhttp_request *req, void *arg)
{
	rearm(arg, req, false);
}

static void send_text(struct evhttp_request *req, int code, const char *reason, const char *type,
		      const char *text, size_t len)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	/* A reply to HEAD says what GET's would, without its body, which evhttp 2.1 would send. */
	bool head_request = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
	char length[24];

	/* The headers describe this body, so they wait for it: the error page sent instead when
	 * it cannot be built has a length and type of its own. */
	if (!body || evbuffer_add(body, text, head_request ? 0 : len) < 0) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
	} else {
		(void)snprintf(length, sizeof(length), "%zu", len);
		(void)evhttp_add_header(headers, "Content-Type", type);
		(void)evhttp_add_header(headers, "Content-Length", length);
		(void)evhttp_add_header(headers, "Cache-Control", "no-store");
		evhttp_send_reply(req, code, reason, body);
	}
	if (body)
		evbuffer_free(body);
}

/* Says, once per change, whether the daemon answers: a daemon that is down for an hour is one
 * line in the journal, not one per scrape. */
static void note_daemon(struct server *srv, const char *error)
{
	int up = error == NULL;

	if (up == srv->daemon_up)
		return;
	if (!up)
		(void)fprintf(stderr, "iommud-exporter: %s; serving iommud_up 0 until it answers\n",
			      error);
	else if (srv->daemon_up == 0)
		(void)fprintf(stderr, "iommud-exporter: the daemon answers again\n");
	srv->daemon_up = up;
}

static void scrape_done(Iommud__V1__GetStatsReply *reply, const char *error, void *arg)
{
	struct server *srv = arg;
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	int err = out ? metrics_render(reply, out) : -ENOMEM;

	if (out && fclose(out) != 0)
		err = -ENOMEM;
	scrape_free(srv->scrape);
	srv->scrape = NULL;
	note_daemon(srv, error);
	while (srv->n_waiting > 0) {
		struct evhttp_request *req = srv->waiting[--srv->n_waiting];

		if (err)
			evhttp_send_error(req, HTTP_INTERNAL,
					  "out of memory rendering the metrics");
		else
			send_text(req, HTTP_OK, "OK", METRICS_CONTENT_TYPE, text, len);
	}
	free(text);
	if (reply)
		iommud__v1__get_stats_reply__free_unpacked(reply, NULL);
}

static void serve_metrics(struct server *srv, struct evhttp_request *req)
{
	char error[160];
	int err;

	if (srv->n_waiting == srv->max_waiting) {
		static const char busy[] = "Too many scrapes are waiting for the daemon; retry.\n";

		send_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", busy,
			  sizeof(busy) - 1);
		return;
	}
	srv->waiting[srv->n_waiting++] = req;
	if (srv->scrape)
		return;
	err = scrape_start(srv->base, srv->opts.socket_path, &srv->opts.timeout, scrape_done, srv,
			   &srv->scrape);
	if (err < 0) {
		(void)snprintf(error, sizeof(error),
			       "cannot start the process that asks the daemon: %s", strerror(-err));
		scrape_done(NULL, error, srv);
	}
}

static void handle_request(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	rearm(srv, req, true);
	evhttp_request_set_on_complete_cb(req, reply_sent, srv);
	if (!(evhttp_request_get_command(req) & (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD))) {
		(void)evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
					"GET, HEAD");
		send_text(req, 405, "Method Not Allowed", "text/plain; charset=utf-8", read_only,
			  sizeof(read_only) - 1);
	} else if (!path || !*path || strcmp(path, "/") == 0)
		send_text(req, HTTP_OK, "OK", "text/html; charset=utf-8", index_html,
			  sizeof(index_html) - 1);
	else if (strcmp(path, "/metrics") == 0)
		serve_metrics(srv, req);
	else
		send_text(req, HTTP_NOTFOUND, "Not Found", "text/plain; charset=utf-8", not_found,
			  sizeof(not_found) - 1);
}

int server_new(struct event_base *base, struct evconnlistener *listener,
	       const struct server_options *opts, struct server **ret_server)
{
	struct server *srv = calloc(1, sizeof(*srv));

	if (srv) {
		srv->base = base;
		srv->opts = *opts;
		srv->listener = listener;
		srv->daemon_up = -1;
		srv->accepting = true;
		srv->max_waiting = (size_t)opts->max_connections * WAITING_PER_CONNECTION;
		srv->waiting = calloc(srv->max_waiting, sizeof(*srv->waiting));
		srv->http = evhttp_new(base);
		srv->sweep = event_new(base, -1, EV_PERSIST, on_sweep, srv);
	}
	if (!srv || !srv->waiting || !srv->http || !srv->sweep ||
	    event_add(srv->sweep, &(struct timeval){1, 0}) < 0 ||
	    !evhttp_bind_listener(srv->http, listener)) {
		evconnlistener_free(listener);
		if (srv)
			srv->listener = NULL;
		server_free(srv);
		return -ENOMEM;
	}
	evhttp_set_bevcb(srv->http, new_connection, srv);
	evhttp_set_gencb(srv->http, handle_request, srv);
	/* every method evhttp knows reaches handle_request, which answers 405, not evhttp's 501 */
	evhttp_set_allowed_methods(srv->http, 0xffff);
	evhttp_set_max_headers_size(srv->http, MAX_HEADERS);
	evhttp_set_max_body_size(srv->http, MAX_BODY);
	/* Inactivity on a connection; the deadline above bounds the whole exchange. */
	evhttp_set_timeout_tv(srv->http, &opts->request_timeout);
	*ret_server = srv;
	return 0;
}

void server_free(struct server *srv)
{
	if (!srv)
		return;
	scrape_free(srv->scrape);
	while (srv->n_waiting > 0)
		evhttp_send_error(srv->waiting[--srv->n_waiting], 503, "the exporter is stopping");
	if (srv->http)
		evhttp_free(srv->http);
	/* evhttp let every connection go; the last references are these */
	while (srv->conns) {
		struct conn *conn = srv->conns;

		srv->conns = conn->next;
		conn_free(conn);
	}
	if (srv->sweep)
		event_free(srv->sweep);
	free(srv->waiting);
	free(srv);
}
