// SPDX-License-Identifier: MIT
#include "flow.h"

#include <errno.h>
#include <stdlib.h>

#define NS_PER_SECOND 1000000000ull
/* The least a request is charged: below this, time measures the clock more than the work. */
#define MIN_COST_NS 1000
#define BUCKETS	    256 /* of each table; chains grow beyond, so this only sets the speed */

/* An entry of a table keyed by a number, counting the items joined to it; freed at zero. */
struct flow_count {
	LIST_ENTRY(flow_count) link;
	uintptr_t key;
	unsigned items;
};

LIST_HEAD(count_list, flow_count);

struct flow {
	struct flow_count count;       /* first: a flow is freed as its count */
	TAILQ_HEAD(, flow_item) items; /* the ready ones, in turn order */
	struct flow_item *holder;      /* the item whose request is in progress, served alone */
	TAILQ_ENTRY(flow) ready_link;
	bool ready;
	uint64_t vtime; /* the charge of every request served, in ns, on the flows' clock */
	struct flow_rate rate;
	uint64_t tokens_milli; /* thousandths of a token, so slow rates still refill smoothly */
	uint64_t refilled_ns;
	bool throttled; /* found without a token since its last request */
	void *owner;	/* the caller's, NULL until it sets it (flows_owner) */
};

struct flows {
	struct count_list flows[BUCKETS];
	struct count_list uids[BUCKETS];
	TAILQ_HEAD(, flow) ready;
	uint64_t vclock;	    /* the charge at which the latest request served started */
	const struct flow *charged; /* the flow of the latest request served; NULL once freed */
	uint64_t charged_since_ns;  /* when the run of charged's requests, none other between, began
				     */
	uint64_t throttled;
};

int flows_create(struct flows **ret_flows)
{
	struct flows *fs = calloc(1, sizeof(*fs));

	if (!fs)
		return -ENOMEM;
	TAILQ_INIT(&fs->ready);
	*ret_flows = fs;
	return 0;
}

void flows_destroy(struct flows *fs)
{
	free(fs);
}

static struct count_list *bucket(struct count_list *table, uintptr_t key)
{
	return &table[((uint64_t)key * 0x9e3779b97f4a7c15ull) >> 56];
}

static struct flow_count *count_find(const struct count_list *table, uintptr_t key)
{
	struct flow_count *c;

	LIST_FOREACH (c, bucket((struct count_list *)table, key), link)
		if (c->key == key)
			return c;
	return NULL;
}

/* The entry of key, a new one of size bytes (at least a flow_count) if there is none. */
static struct flow_count *count_get(struct count_list *table, uintptr_t key, size_t size)
{
	struct flow_count *c = count_find(table, key);

	if (c || !(c = calloc(1, size)))
		return c;
	c->key = key;
	LIST_INSERT_HEAD(bucket(table, key), c, link);
	return c;
}

static void count_drop(struct flow_count *c)
{
	if (c->items)
		return;
	LIST_REMOVE(c, link);
	free(c);
}

int flows_join(struct flows *fs, struct flow_item *item, const void *key, uid_t uid,
	       const struct flow_rate *rate)
{
	struct flow_count *u = count_get(fs->uids, uid, sizeof(*u));
	struct flow *f = u ? (struct flow *)count_get(fs->flows, (uintptr_t)key, sizeof(*f)) : NULL;

	if (!f) {
		if (u)
			count_drop(u);
		return -ENOMEM;
	}
	if (!f->count.items) {
		TAILQ_INIT(&f->items);
		f->rate = *rate;
		f->tokens_milli = (uint64_t)rate->burst * 1000;
		f->vtime = fs->vclock;
	}
	f->count.items++;
	u->items++;
	*item = (struct flow_item){.flow = f, .uid = u};
	return 0;
}

void **flows_owner(struct flow_item *item)
{
	return &item->flow->owner;
}

void flows_leave(struct flows *fs, struct flow_item *item)
{
	flows_hold(fs, item, false);
	flows_unready(fs, item);
	item->uid->items--;
	count_drop(item->uid);
	item->flow->count.items--;
	if (!item->flow->count.items && fs->charged == item->flow)
		fs->charged = NULL;
	count_drop(&item->flow->count);
	item->flow = NULL;
	item->uid = NULL;
}

unsigned flows_key_items(const struct flows *fs, const void *key)
{
	const struct flow_count *c = count_find(fs->flows, (uintptr_t)key);

	return c ? c->items : 0;
}

unsigned flows_uid_items(const struct flows *fs, uid_t uid)
{
	const struct flow_count *c = count_find(fs->uids, uid);

	return c ? c->items : 0;
}

void flows_ready(struct flows *fs, struct flow_item *item)
{
	struct flow *f = item->flow;

	if (item->ready)
		return;
	item->ready = true;
	TAILQ_INSERT_TAIL(&f->items, item, link);
	if (f->ready)
		return;
	f->ready = true;
	/* Credit would let a tenant idle and then burst; a debt would make a tenant that has
	 * just had one costly request wait behind another that then bursts. */
	f->vtime = fs->vclock;
	TAILQ_INSERT_TAIL(&fs->ready, f, ready_link);
}

void flows_unready(struct flows *fs, struct flow_item *item)
{
	struct flow *f = item->flow;

	if (!item->ready)
		return;
	item->ready = false;
	TAILQ_REMOVE(&f->items, item, link);
	if (!TAILQ_EMPTY(&f->items))
		return;
	f->ready = false;
	TAILQ_REMOVE(&fs->ready, f, ready_link);
}

/* Refills the flow's bucket; 0 when it holds a token, else the ns until it will. */
static uint64_t refill(struct flows *fs, struct flow *f, uint64_t now_ns)
{
	uint64_t full = (uint64_t)f->rate.burst * 1000, gained, elapsed_us;

	if (!f->rate.per_second)
		return 0;
	/* Past the time an empty bucket takes to fill, waiting longer gains nothing; capping it
	 * keeps the product (at most about 10^12) from overflowing however long the flow was idle.
	 */
	elapsed_us = (now_ns - f->refilled_ns) / 1000;
	if (elapsed_us > full * 1000 / f->rate.per_second + 1)
		elapsed_us = full * 1000 / f->rate.per_second + 1;
	gained = elapsed_us * f->rate.per_second / 1000;
	if (gained) {
		f->tokens_milli = f->tokens_milli + gained < full ? f->tokens_milli + gained : full;
		f->refilled_ns = now_ns;
	}
	if (f->tokens_milli >= 1000)
		return 0;
	if (!f->throttled) {
		f->throttled = true;
		fs->throttled++;
	}
	return ((1000 - f->tokens_milli) * (NS_PER_SECOND / 1000) + f->rate.per_second - 1) /
	       f->rate.per_second;
}

/* The least charged ready flow that may be read now, or NULL and in *ret_wait_ns the time
 * until one may (0 when none is ready). */
static struct flow *least_charged(struct flows *fs, uint64_t now_ns, uint64_t *ret_wait_ns)
{
	struct flow *best = NULL, *f;
	uint64_t wait = UINT64_MAX, w;

	TAILQ_FOREACH (f, &fs->ready, ready_link) {
		/* A request in progress has had its token. */
		if (!f->holder && (w = refill(fs, f, now_ns))) {
			wait = w < wait ? w : wait;
			continue;
		}
		if (!best || f->vtime < best->vtime)
			best = f;
	}
	*ret_wait_ns = best || wait == UINT64_MAX ? 0 : wait;
	return best;
}

struct flow_item *flows_next(struct flows *fs, uint64_t now_ns)
{
	uint64_t wait;
	struct flow *f = least_charged(fs, now_ns, &wait);

	if (!f)
		return NULL;
	if (f != fs->charged)
		fs->charged_since_ns = now_ns;
	return f->holder ? f->holder : TAILQ_FIRST(&f->items);
}

uint64_t flows_wait_ns(struct flows *fs, uint64_t now_ns)
{
	uint64_t wait;

	return least_charged(fs, now_ns, &wait) ? 0 : wait;
}

void flows_charge(struct flows *fs, struct flow_item *item, uint64_t cost_ns)
{
	struct flow *f = item->flow;

	if (f->vtime > fs->vclock)
		fs->vclock = f->vtime;
	f->vtime += cost_ns > MIN_COST_NS ? cost_ns : MIN_COST_NS;
	if (f->rate.per_second && !f->holder && f->tokens_milli >= 1000)
		f->tokens_milli -= 1000;
	f->throttled = false;
	fs->charged = f;
	if (item->ready && TAILQ_NEXT(item, link)) {
		TAILQ_REMOVE(&f->items, item, link);
		TAILQ_INSERT_TAIL(&f->items, item, link);
	}
}

void flows_hold(struct flows *fs, struct flow_item *item, bool hold)
{
	(void)fs;
	if (hold)
		item->flow->holder = item;
	else if (item->flow->holder == item)
		item->flow->holder = NULL;
}

bool flows_alone(const struct flows *fs, const struct flow_item *item, uint64_t now_ns)
{
	const struct flow *first = TAILQ_FIRST(&fs->ready);

	return fs->charged == item->flow && now_ns - fs->charged_since_ns >= FLOWS_ALONE_AFTER_NS &&
	       (!first || (first == item->flow && !TAILQ_NEXT(first, ready_link)));
}

uint64_t flows_throttled(const struct flows *fs)
{
	return fs->throttled;
}
