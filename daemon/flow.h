/* SPDX-License-Identifier: MIT */
/*
 * The event loop's fair shares: a flow is one tenant's connections as the server schedules
 * them. Every request handled is charged to its flow by the time it took (with a floor, so
 * that the cheapest still count), and the next request to handle comes from the flow with work
 * waiting that has been charged least: start-time fair queuing, where a flow that becomes ready
 * again starts from the charge of the latest request served, so that idling banks neither
 * credit nor debt. Inside a flow its connections take turns. However many connections a tenant
 * opens and however costly its requests, a request of a tenant that had nothing waiting then
 * waits for at most the request (or slice of one) being handled when it arrived and one of
 * each other tenant with requests waiting; tenants that keep requests waiting share the loop's time
 * evenly.
 *
 * A request may take several turns (a costly call handled in slices): its item then holds its
 * flow, which serves that item alone until the request is done, so that the tenant's requests
 * keep their order; each slice is charged as a request, but a request spends one token.
 *
 * A flow may also be rate limited (the server limits readers): each request spends a token
 * from a bucket refilled at a steady rate, and a flow without one waits, its requests staying
 * unread in its sockets until a token comes.
 *
 * The flows also count connections per tenant and per uid, for the server's caps.
 *
 * Ownership: struct flows owns the flows and the per-uid counts; a flow lives while an item
 * (struct flow_item, embedded in the server's connection) is joined to it. Keys are borrowed
 * (the server's tenant references, held while its connections are open).
 */
#ifndef IOMMUD_FLOW_H
#define IOMMUD_FLOW_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

struct flow;
struct flow_count;
struct flows;

/* One connection as the flows see it; zeroed before flows_join. */
struct flow_item {
	TAILQ_ENTRY(flow_item) link; /* in its flow's ready items while ready */
	struct flow *flow;
	struct flow_count *uid;
	bool ready;
};

/* A token bucket; per_second 0 means no limit. */
struct flow_rate {
	unsigned per_second;
	unsigned burst;
};

int flows_create(struct flows **ret_flows);
/* Every item must have left. */
void flows_destroy(struct flows *fs);

/* Joins item to the flow of key, created on first sight with rate, and counts it for uid. */
int flows_join(struct flows *fs, struct flow_item *item, const void *key, uid_t uid,
	       const struct flow_rate *rate);
void flows_leave(struct flows *fs, struct flow_item *item);
/* A word kept with the joined item's flow while it lives, NULL when the flow is new: the server
 * keeps there the loop thread that serves the tenant. */
void **flows_owner(struct flow_item *item);
/* Items joined to key's flow; to uid. */
unsigned flows_key_items(const struct flows *fs, const void *key);
unsigned flows_uid_items(const struct flows *fs, uid_t uid);

/* The item has requests waiting (flows_ready) or has none or may not be read (flows_unready). */
void flows_ready(struct flows *fs, struct flow_item *item);
void flows_unready(struct flows *fs, struct flow_item *item);
/* The ready item to read one request from next, NULL when none may be read now. */
struct flow_item *flows_next(struct flows *fs, uint64_t now_ns);
/* When none may be read now although some are ready (all out of tokens): nanoseconds from
 * now_ns until one may; 0 when nothing is ready. */
uint64_t flows_wait_ns(struct flows *fs, uint64_t now_ns);
/* Charges item's flow one request that took cost_ns, and sends item to the back of its flow's
 * turn. */
void flows_charge(struct flows *fs, struct flow_item *item, uint64_t cost_ns);
/* The item's request goes on in its flow's next turns (hold) or is done (!hold). */
void flows_hold(struct flows *fs, struct flow_item *item, bool hold);
/* Whether item's flow has had the loop to itself for FLOWS_ALONE_AFTER_NS up to now_ns: none
 * other is ready, and every request served in that time was its own. A costly request may then
 * take larger steps; the question costs no system call, so it is asked before every slice. The
 * time it takes to count as alone keeps a tenant that comes back more often than that (a
 * client's steady round trips) waiting behind small steps only: only one that was away longer
 * may find a grown step in its way. */
#define FLOWS_ALONE_AFTER_NS 10000000ull
bool flows_alone(const struct flows *fs, const struct flow_item *item, uint64_t now_ns);
/* How many times a flow with requests waiting found its bucket empty. */
uint64_t flows_throttled(const struct flows *fs);

#endif
