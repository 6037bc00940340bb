/* SPDX-License-Identifier: MIT */
/*
 * The exporter's HTTP side, on libevent's evhttp: GET or HEAD /metrics asks the daemon
 * (scrape.h) and answers with metrics.h's text; / answers with a pointer to /metrics; any
 * other path is 404 and any other method 405. Scrapes that arrive while the daemon is being
 * asked wait for that answer instead of asking again.
 *
 * Limits, because anyone who reaches the port may connect: a request's headers and body have
 * a size limit; each request must arrive whole within request_timeout of the connection's
 * opening or of the previous reply, and each reply must be written within request_timeout of
 * its request, however slowly the peer trickles bytes; at max_connections open connections a
 * new one closes the oldest that is not being answered, and when all are, the listener stops
 * accepting (the kernel's backlog holds the rest) until one closes.
 *
 * Ownership: server_new takes the listener (bound and listening) and gives the caller a struct
 * server, released with server_free, which owns the listener, the connections and any scrape.
 */
#ifndef IOMMUD_EXPORTER_SERVER_H
#define IOMMUD_EXPORTER_SERVER_H

#include <sys/time.h>

#include <event2/event.h>
#include <event2/listener.h>

struct server_options {
	const char *socket_path; /* the daemon's; NULL for libiommuctl's default */
	struct timeval timeout;	 /* for the daemon's answer */
	struct timeval request_timeout;
	unsigned max_connections;
};

struct server;

/* Returns 0, or -ENOMEM; the listener is freed either way. */
int server_new(struct event_base *base, struct evconnlistener *listener,
	       const struct server_options *opts, struct server **ret_server);
void server_free(struct server *srv);

#endif
