// SPDX-License-Identifier: MIT
/*
 * GetStats: the daemon's counters, the RPC and map path latency histograms, the probes' state,
 * tenant labels, devices and delegations, the descriptor store.
 *
 * What a caller sees: an observer (root, or a section with stats = all, as the metrics
 * exporter's) sees everything, every tenant label's figures and the daemon's. Anyone else sees
 * its own tenant's figures alone, in the same fields, and nothing of other tenants' activity:
 * not even a label's sums, since a label ("other", a group's section) spans many tenants. The
 * reply stays inside one packet: entries are added while they fit a budget below the message
 * limit, in the order of the schema's fields (but delegations, few and about running VMMs,
 * before the map latency), so the first to be left out (on a configuration of very many
 * labels) are the last map latency histograms.
 */
#include <string.h>
#include <time.h>

#include "call.h"
#include "delegate.h"
#include "log.h"
#include "probes/probes.h"
#include "server.h"
#include "state.h"

/* Room kept for the envelope (id, status) and the repeated fields' own tags and lengths. */
#define STATS_REPLY_BUDGET (IOMMUD_MAX_MESSAGE - 1024)
#define ENTRY_OVERHEAD	   8

struct stats_fill {
	struct call *call;
	Iommud__V1__GetStatsReply *reply;
	size_t room;		/* bytes the reply may still grow by */
	size_t left_out;	/* entries that did not fit */
	size_t map_latency_cap; /* room in reply->map_latency */
};

void fill_quota(Iommud__V1__Quota *q, const struct access_rule *rule, struct usage used)
{
	iommud__v1__quota__init(q);
	if (rule) {
		q->max_domains = rule->max_domains;
		q->max_mappings = rule->max_mappings;
		q->max_pinned_bytes = rule->max_pinned_bytes;
		q->max_leases = rule->max_leases;
		q->max_page_table_bytes = rule->max_page_table_bytes;
		q->max_maps = rule->max_maps;
	}
	q->domains = used.domains;
	q->mappings = used.mappings;
	q->pinned_bytes = used.pinned_bytes;
	q->leases = used.leases;
	q->page_table_bytes = used.page_table_bytes;
	q->maps = used.maps;
}

int fill_ceilings(struct call *call, Iommud__V1__Ceilings **ret_ceilings, bool with_usage)
{
	const struct registry *reg = call->d->reg;
	const struct ceilings *ceil = registry_ceilings(reg);
	Iommud__V1__Ceilings *out = call_alloc(call, sizeof(*out));
	struct usage total = registry_usage(reg);

	if (!out)
		return nomem();
	iommud__v1__ceilings__init(out);
	out->max_maps = ceil->max_maps;
	out->max_leases = ceil->max_leases;
	out->max_pinned_bytes = ceil->max_pinned_bytes;
	if (with_usage) {
		out->maps = total.maps;
		out->leases = total.leases;
		out->pinned_bytes = total.pinned_bytes;
		out->failed_releases = registry_failed_releases(reg);
	}
	*ret_ceilings = out;
	return 0;
}

/* Whether one more entry of the reply fits; counts it against the room if so. */
static bool fits(struct stats_fill *st, const ProtobufCMessage *entry)
{
	size_t size = protobuf_c_message_get_packed_size(entry) + ENTRY_OVERHEAD;

	if (size > st->room) {
		st->left_out++;
		return false;
	}
	st->room -= size;
	return true;
}

/* The reply's copy of a histogram, its empty buckets at the end left out; NULL when out of
 * memory. */
static Iommud__V1__Histogram *histogram_reply(struct call *call, const struct iommud_hist *h)
{
	Iommud__V1__Histogram *out = call_alloc(call, sizeof(*out));
	size_t n = histogram_used_buckets(h);
	uint64_t *buckets = call_alloc(call, n * sizeof(*buckets));

	if (!out || !buckets)
		return NULL;
	iommud__v1__histogram__init(out);
	out->buckets = buckets;
	memcpy(out->buckets, h->buckets, n * sizeof(*out->buckets));
	out->n_buckets = n;
	out->count = h->count;
	out->sum_ns = h->sum_ns;
	return out;
}

/* A method's figures over every loop thread's counters (daemon.h). */
static void method_sum(const struct daemon *d, unsigned number, struct method_stats *sum)
{
	*sum = (struct method_stats){0};
	for (unsigned i = 0; i < d->n_counters; i++) {
		const struct method_stats *s = &d->counters[i].methods[number];

		sum->calls += s->calls;
		sum->errors += s->errors;
		for (unsigned code = 0; code < IOMMUD_CODES; code++)
			sum->codes[code] += s->codes[code];
		for (unsigned b = 0; b < IOMMUD_HIST_BUCKETS; b++)
			sum->latency.buckets[b] += s->latency.buckets[b];
		sum->latency.count += s->latency.count;
		sum->latency.sum_ns += s->latency.sum_ns;
		sum->latency.bytes += s->latency.bytes;
	}
}

static Iommud__V1__MethodStats *method_reply(struct call *call, unsigned number)
{
	struct method_stats sum, *s = &sum;
	Iommud__V1__MethodStats *m = call_alloc(call, sizeof(*m));
	size_t n_codes = 0;

	if (!m)
		return NULL;
	method_sum(call->d, number, &sum);
	iommud__v1__method_stats__init(m);
	m->method = (char *)method_name((Iommud__V1__Request__MethodCase)number);
	m->calls = s->calls;
	m->errors = s->errors;
	if (s->latency.count && !(m->latency = histogram_reply(call, &s->latency)))
		return NULL;
	for (unsigned code = 0; code < IOMMUD_CODES; code++)
		n_codes += s->codes[code] != 0;
	if (!(m->codes = call_alloc(call, n_codes * sizeof(*m->codes))))
		return NULL;
	for (unsigned code = 0; code < IOMMUD_CODES; code++) {
		Iommud__V1__CodeCount *cc;

		if (!s->codes[code])
			continue;
		if (!(cc = call_alloc(call, sizeof(*cc))))
			return NULL;
		iommud__v1__code_count__init(cc);
		cc->code = (Iommud__V1__Code)code;
		cc->calls = s->codes[code];
		m->codes[m->n_codes++] = cc;
	}
	return m;
}

static int fill_methods(struct stats_fill *st)
{
	const ProtobufCMessageDescriptor *desc = &iommud__v1__request__descriptor;
	Iommud__V1__GetStatsReply *reply = st->reply;

	if (!(reply->methods = call_alloc(st->call, desc->n_fields * sizeof(*reply->methods))))
		return nomem();
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		Iommud__V1__MethodStats *m;

		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		if (!(m = method_reply(st->call, f->id)))
			return nomem();
		reply->methods[reply->n_methods++] = m;
	}
	return 0;
}

/* An observer's figures of the probes also count what the map path did: its lost events. */
static int fill_probes(struct stats_fill *st, bool observer)
{
	struct probes *p = st->call->d->probes;
	Iommud__V1__ProbeStatus *ps = call_alloc(st->call, sizeof(*ps));
	const char *const *detached;

	if (!ps)
		return nomem();
	iommud__v1__probe_status__init(ps);
	ps->tier = probes_tier(p);
	ps->n_detached = probes_detached(p, &detached);
	ps->detached = (char **)detached;
	ps->dropped_events = observer ? probes_dropped_events(p) : 0;
	ps->in_process = probes_in_process(p);
	ps->attached = probes_attached(p);
	ps->driver_latency = probes_driver_latency(p);
	st->reply->probes = ps;
	return 0;
}

static Iommud__V1__TenantStats *tenant_stats_reply(struct call *call, unsigned slot,
						   const struct label_stats *l)
{
	Iommud__V1__TenantStats *ts = call_alloc(call, sizeof(*ts));
	Iommud__V1__Quota *quota = call_alloc(call, sizeof(*quota));

	if (!ts || !quota)
		return NULL;
	iommud__v1__tenant_stats__init(ts);
	ts->quota = quota;
	ts->tenant = (char *)registry_label(call->d->reg, slot);
	ts->tenants = l->tenants;
	ts->sessions = l->sessions;
	ts->leases = l->leases;
	fill_quota(ts->quota, registry_label_rule(call->d->reg, slot), l->used);
	return ts;
}

/* Every label's figures, and the daemon's total of leases, from one walk of the tenants. */
static int fill_tenants(struct stats_fill *st)
{
	struct registry *reg = st->call->d->reg;
	unsigned slots = registry_label_slots(reg);
	struct label_stats *labels = call_alloc(st->call, slots * sizeof(*labels));
	Iommud__V1__GetStatsReply *reply = st->reply;

	if (!labels || !(reply->tenant_stats = call_alloc(st->call, slots * sizeof(void *))))
		return nomem();
	registry_label_stats(reg, labels);
	for (unsigned slot = 1; slot < slots; slot++) {
		Iommud__V1__TenantStats *ts;

		reply->leases += labels[slot].leases;
		if (!(ts = tenant_stats_reply(st->call, slot, &labels[slot])))
			return nomem();
		if (fits(st, &ts->base))
			reply->tenant_stats[reply->n_tenant_stats++] = ts;
	}
	return 0;
}

static int add_fault_source(const char *source, uint64_t count, void *arg)
{
	struct stats_fill *st = arg;
	Iommud__V1__GetStatsReply *reply = st->reply;
	Iommud__V1__DmaFaults *f;
	char *name;

	if (reply->n_dma_faults == IOMMUD_FAULT_SOURCES)
		return 0; /* the map grew while it was read: the rest at the next call */
	f = call_alloc(st->call, sizeof(*f));
	name = call_strdup(st->call, source);
	if (!f || !name)
		return nomem();
	iommud__v1__dma_faults__init(f);
	f->source = name;
	f->managed_device = kh_device_lookup(st->call->d->be, source) >= 0;
	f->faults = count;
	if (fits(st, &f->base))
		reply->dma_faults[reply->n_dma_faults++] = f;
	return 0;
}

/* Faults come first so that each device can take its own count from them. */
static int fill_faults(struct stats_fill *st)
{
	st->reply->dma_faults =
		call_alloc(st->call, IOMMUD_FAULT_SOURCES * sizeof(*st->reply->dma_faults));
	if (!st->reply->dma_faults)
		return nomem();
	return probes_read_faults(st->call->d->probes, add_fault_source, st);
}

static uint64_t device_faults(const Iommud__V1__GetStatsReply *reply, const char *device)
{
	for (size_t i = 0; i < reply->n_dma_faults; i++)
		if (reply->dma_faults[i]->managed_device &&
		    strcmp(reply->dma_faults[i]->source, device) == 0)
			return reply->dma_faults[i]->faults;
	return 0;
}

static int fill_devices(struct stats_fill *st)
{
	struct daemon *d = st->call->d;
	size_t n = kh_device_count(d->be);
	Iommud__V1__GetStatsReply *reply = st->reply;
	struct kh_device_info info;

	if (!(reply->devices = call_alloc(st->call, n * sizeof(*reply->devices))))
		return nomem();
	for (size_t i = 0; i < n; i++) {
		Iommud__V1__DeviceStats *ds = call_alloc(st->call, sizeof(*ds));
		char *name;

		if (kh_device_info(d->be, i, &info) < 0)
			continue;
		if (!ds || !(name = call_strdup(st->call, info.name)))
			return nomem();
		iommud__v1__device_stats__init(ds);
		ds->device = name;
		ds->state = (char *)device_state_name(device_state(d, info.name));
		ds->delegation_id = delegation_holding(d->delegations, info.name);
		ds->dma_faults = device_faults(reply, info.name);
		if (fits(st, &ds->base))
			reply->devices[reply->n_devices++] = ds;
	}
	return 0;
}

static bool delegation_fits(const ProtobufCMessage *entry, void *arg)
{
	return fits(arg, entry);
}

/* Within the reply's budget for everyone: a tenant's own delegations carry device names and
 * cgroup paths of up to PATH_MAX each, enough to pass one packet. */
static int fill_delegations(struct stats_fill *st)
{
	return delegations_reply(st->call, delegation_fits, st, &st->reply->delegations,
				 &st->reply->n_delegations);
}

static Iommud__V1__MapLatency *map_latency_reply(struct call *call,
						 const struct iommud_hist_key *key,
						 const struct iommud_hist *hist)
{
	Iommud__V1__MapLatency *ml = call_alloc(call, sizeof(*ml));
	const char *label = key->tenant ? registry_label(call->d->reg, key->tenant) : "";

	if (!ml)
		return NULL;
	iommud__v1__map_latency__init(ml);
	/* The probes' enums are the schema's less its "unspecified" zero. */
	ml->op = (Iommud__V1__MapOp)(key->op + 1);
	ml->layer = (Iommud__V1__MapLayer)(key->layer + 1);
	ml->size_class = (Iommud__V1__SizeClass)(key->size_class + 1);
	ml->tenant = (char *)(label ? label : "other");
	ml->bytes = hist->bytes;
	if (!(ml->latency = histogram_reply(call, hist)))
		return NULL;
	return ml;
}

/* Makes room for one more map latency entry: the list doubles in the call's memory (the old
 * copy stays there until the reply is sent), so one walk of the histograms fills it. */
static int grow_map_latency(struct stats_fill *st)
{
	Iommud__V1__GetStatsReply *reply = st->reply;
	Iommud__V1__MapLatency **list;
	size_t cap;

	if (reply->n_map_latency < st->map_latency_cap)
		return 0;
	cap = st->map_latency_cap ? 2 * st->map_latency_cap : 32;
	if (!(list = call_alloc(st->call, cap * sizeof(*list))))
		return nomem();
	if (reply->n_map_latency)
		memcpy(list, reply->map_latency, reply->n_map_latency * sizeof(*list));
	reply->map_latency = list;
	st->map_latency_cap = cap;
	return 0;
}

static int add_map_latency(const struct iommud_hist_key *key, const struct iommud_hist *hist,
			   void *arg)
{
	struct stats_fill *st = arg;
	Iommud__V1__MapLatency *ml;
	int rc;

	if (!(ml = map_latency_reply(st->call, key, hist)))
		return nomem();
	if (!fits(st, &ml->base))
		return 0;
	if ((rc = grow_map_latency(st)) < 0)
		return rc;
	st->reply->map_latency[st->reply->n_map_latency++] = ml;
	return 0;
}

static int fill_map_latency(struct stats_fill *st)
{
	return probes_read(st->call->d->probes, add_map_latency, st);
}

/* Connections refused or closed by the server, by reason; reasons never seen left out. */
static int fill_refused(struct call *call, Iommud__V1__GetStatsReply *reply)
{
	const struct daemon *d = call->d;

	if (!(reply->refused_connections = call_alloc(call, REFUSALS * sizeof(void *))))
		return nomem();
	for (unsigned why = 0; why < REFUSALS; why++) {
		Iommud__V1__RefusedConnections *r;

		if (!d->refused[why])
			continue;
		if (!(r = call_alloc(call, sizeof(*r))))
			return nomem();
		iommud__v1__refused_connections__init(r);
		r->reason = (char *)refusal_name((enum refusal)why);
		r->connections = d->refused[why];
		reply->refused_connections[reply->n_refused_connections++] = r;
	}
	reply->rate_limited = __atomic_load_n(&d->rate_limited, __ATOMIC_RELAXED);
	return 0;
}

static void fill_kept_maps(Iommud__V1__GetStatsReply *reply, struct kept_maps kept)
{
	reply->kept_maps = kept.held;
	reply->kept_maps_taken_up = kept.taken_up;
	reply->kept_maps_given_up = kept.given_up;
}

static void fill_counters(struct call *call, Iommud__V1__GetStatsReply *reply)
{
	struct daemon *d = call->d;
	const struct tenant *own = call->client->tenant;

	reply->uptime_seconds = (uint64_t)(time(NULL) - d->started);
	reply->version = IOMMUD_VERSION;
	reply->nothing_remapped = !(kh_backend_caps(d->be) & KH_CAP_DMA_REMAPPING);
	if (call->client->counters)
		reply->loop_thread = (uint32_t)(call->client->counters - d->counters);
	fill_quota(reply->quota, tenant_rule(own), tenant_usage(own));
	if (!reply->observer) {
		reply->connections = tenant_connections(own);
		reply->tenants = 1;
		reply->sessions = tenant_sessions(own);
		reply->leases = (uint32_t)tenant_usage(own).leases;
		fill_kept_maps(reply, tenant_kept_maps(own));
		return;
	}
	fill_kept_maps(reply, registry_kept_maps(d->reg));
	reply->connections = d->connections;
	reply->tenants = registry_tenant_count(d->reg);
	reply->sessions = registry_session_count(d->reg);
	for (unsigned i = 0; i < d->n_counters; i++)
		reply->rejected_packets += d->counters[i].rejected_packets;
}

/* A caller who is no observer: its own tenant under its label, as one. */
static int fill_own_tenant(struct stats_fill *st)
{
	const struct tenant *own = st->call->client->tenant;
	const struct label_stats figures = {
		.tenants = 1,
		.sessions = tenant_sessions(own),
		.leases = (unsigned)tenant_usage(own).leases,
		.used = tenant_usage(own),
	};
	Iommud__V1__TenantStats *ts =
		tenant_stats_reply(st->call, tenant_label_slot(own), &figures);

	if (!ts || !(st->reply->tenant_stats = call_alloc(st->call, sizeof(void *))))
		return nomem();
	st->reply->tenant_stats[st->reply->n_tenant_stats++] = ts;
	return 0;
}

/* Absent without a store: no lease then survives a restart, which GetStats does not hide
 * behind a store of size 0. */
static int fill_descriptor_store(struct stats_fill *st)
{
	const struct state *state = st->call->d->state;
	Iommud__V1__DescriptorStore *ds;
	struct store_usage usage;

	if (!state)
		return 0;
	if (!(ds = call_alloc(st->call, sizeof(*ds))))
		return nomem();
	iommud__v1__descriptor_store__init(ds);
	usage = state_store_usage(state);
	ds->capacity = usage.capacity;
	ds->stored = usage.stored;
	ds->set_aside = usage.set_aside;
	st->reply->descriptor_store = ds;
	return 0;
}

/* Every tenant label, device, fault source, delegation and map latency histogram while they fit;
 * said once per change when some do not, not at every scrape. */
static int fill_everyone(struct stats_fill *st)
{
	struct daemon *d = st->call->d;
	uid_t uid = st->call->client->peer.uid;
	int rc;

	if ((rc = fill_tenants(st)) < 0 || (rc = fill_faults(st)) < 0 ||
	    (rc = fill_devices(st)) < 0 || (rc = fill_delegations(st)) < 0 ||
	    (rc = fill_map_latency(st)) < 0)
		return rc;
	if (st->left_out != d->stats_left_out && st->left_out)
		log_warning("stats for uid %u: %zu entries left out to keep the reply inside one "
			    "packet; give fewer configuration sections stats = all",
			    (unsigned)uid, st->left_out);
	else if (st->left_out != d->stats_left_out)
		log_notice("stats for uid %u: every entry fits in the reply again", (unsigned)uid);
	d->stats_left_out = st->left_out;
	return 0;
}

/* What the lists filled from here on may add: the budget less the reply so far. */
static void reserve_room(struct stats_fill *st)
{
	size_t size = iommud__v1__get_stats_reply__get_packed_size(st->reply);

	st->room = size < STATS_REPLY_BUDGET ? STATS_REPLY_BUDGET - size : 0;
}

int do_get_stats(struct call *call)
{
	const struct client *c = call->client;
	struct stats_fill st = {.call = call, .reply = REPLY(call, get_stats_reply)};
	int rc;

	if (!st.reply || !(st.reply->quota = call_alloc(call, sizeof(*st.reply->quota))))
		return nomem();
	st.reply->observer = client_is_observer(c);
	fill_counters(call, st.reply);
	if ((rc = fill_ceilings(call, &st.reply->ceilings, st.reply->observer)) < 0 ||
	    (rc = fill_probes(&st, st.reply->observer)) < 0)
		return rc;
	if (!st.reply->observer) {
		if ((rc = fill_own_tenant(&st)) < 0)
			return rc;
		reserve_room(&st);
		return fill_delegations(&st);
	}
	if ((rc = fill_methods(&st)) < 0 || (rc = fill_refused(call, st.reply)) < 0 ||
	    (rc = fill_descriptor_store(&st)) < 0)
		return rc;
	reserve_room(&st);
	return fill_everyone(&st);
}
