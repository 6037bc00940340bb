/* SPDX-License-Identifier: MIT */
/*
 * The daemon's socket side on libevent: the listening SOCK_SEQPACKET socket, one connection
 * per client, receiving packets with their descriptors, identifying the peer through the kernel,
 * and sending replies with back-pressure (a connection whose replies cannot be sent is not
 * read until they are).
 *
 * Ownership: the server owns the listening socket and every connection (socket, client state,
 * pending reply). The daemon state it is given is borrowed.
 */
#ifndef IOMMUD_SERVER_H
#define IOMMUD_SERVER_H

#include <event2/event.h>
#include <sys/types.h>

#include "dispatch.h"
#include "peer.h"

struct server;

int server_create(struct event_base *base, struct daemon *d, unsigned max_connections,
		  struct server **ret_srv);
/* Listens on the socket systemd passed (socket activation) if there is one, else binds path,
 * creating its directory; a stale socket file is replaced, a live daemon's is not. */
int server_listen(struct server *srv, const char *path, mode_t mode);
/* Serves an already connected SOCK_SEQPACKET socket; the server owns it from then on (also on
 * failure). For tests and the fuzz harness. */
int server_adopt(struct server *srv, int fd);
/* How the server learns who a new connection's peer is: identify_peer (peer.h) unless the
 * fuzz harness, which has no processes of other users, gives identities of its own. */
void server_set_identify(struct server *srv, int (*identify)(int fd, struct peer *ret_peer));
/* Closes every connection (releasing anonymous sessions) and the listening socket. The socket
 * file is removed if the server created it. */
void server_destroy(struct server *srv);

#endif
