/* SPDX-License-Identifier: MIT */
/*
 * The daemon's socket side on libevent: the listening SOCK_SEQPACKET socket, one connection
 * per client, receiving packets with their descriptors, identifying the peer through the kernel,
 * and sending replies with back-pressure (a connection whose replies cannot be sent is not
 * read until they are).
 *
 * Fairness (docs/operations.md, "Fairness and connection limits"): a readable connection only
 * joins its tenant's flow (flow.h); turns of the loop then handle requests one at a time, each
 * from the tenant charged least so far, and end after a short time so that packets arriving
 * meanwhile are seen. Connections are capped daemon-wide, per uid and per tenant, with slots
 * kept for configured writers, and closed when silent for longer than the configured
 * timeouts; at the open-file limit accepting pauses instead of spinning. Root is held by none
 * of the caps.
 *
 * Threads (docs/architecture.md, "Threads"): the main thread's loop listens, accepts, identifies
 * the peer and admits it, under the daemon lock (daemon_lock.h); the connection is then handed
 * to the loop thread ("shard") serving its tenant, which is the one it had while it had
 * connections, else the least loaded one. Each shard has its own event_base, flows (fair
 * queuing among the tenants it serves), connections and timeouts, and only its thread touches
 * them; the caps' counts, the refusals and the accepting are the main thread's, under the
 * daemon lock, which a shard takes for a connection's end. Without server_start_threads one
 * shard runs on the server's own base (the fuzz harness).
 *
 * Ownership: the server owns the listening socket, its shards and their threads, and every
 * connection (socket, client state, pending reply). The daemon state it is given is borrowed.
 */
#ifndef IOMMUD_SERVER_H
#define IOMMUD_SERVER_H

#include <event2/event.h>
#include <stdbool.h>
#include <sys/types.h>

#include "dispatch.h"
#include "peer.h"

struct server;

int server_create(struct event_base *base, struct daemon *d, unsigned max_connections,
		  struct server **ret_srv);
/* Serves connections on n event-loop threads of their own (signals blocked in them), from
 * before the first connection on. */
int server_start_threads(struct server *srv, unsigned n);
/* Ends every loop thread and waits for it: connections stay open, unserved, until
 * server_destroy. */
void server_stop_threads(struct server *srv);
/* Whether every loop thread has turned since the last call: has run the wake-up the last call
 * sent it (the first call: true). Sends each the next. */
bool server_threads_turning(struct server *srv);
/* How many loop threads serve connections; 0: the server's own loop does. */
unsigned server_threads(const struct server *srv);
/* Listens on the socket systemd passed (socket activation) if there is one, else binds path,
 * creating its directory; a stale socket file is replaced, a live daemon's is not. */
int server_listen(struct server *srv, const char *path, mode_t mode);
/* The listening socket (the server keeps it), for a re-execution to pass on. */
int server_listen_fd(const struct server *srv);
/* Whether the listening socket's path is the daemon's own (bound here, removed at stop), not the
 * service manager's. */
bool server_bound_its_path(const struct server *srv);
/* Serves an already connected SOCK_SEQPACKET socket; the server owns it from then on (also on
 * failure). For tests and the fuzz harness. */
int server_adopt(struct server *srv, int fd);
/* How the server learns who a new connection's peer is: identify_peer (peer.h) unless the
 * fuzz harness, which has no processes of other users, gives identities of its own. */
void server_set_identify(struct server *srv, int (*identify)(int fd, struct peer *ret_peer));
/* The name GetStats and the log give a reason connections are refused or closed: the
 * configuration key behind it where there is one. */
const char *refusal_name(enum refusal why);
/* Closes every connection (releasing anonymous sessions) and the listening socket. The socket
 * file is removed if the server created it. */
void server_destroy(struct server *srv);

#endif
