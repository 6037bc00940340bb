/* SPDX-License-Identifier: MIT */
/* iommuctl stats: the daemon's counters, and with --latency its latency histograms. */
#include <stdio.h>

#include <names.h>

#include "cli.h"
#include "output.h"

static const char stats_help[] =
	"Shows how long iommud has run, its version, connections, tenants, sessions and leases,\n"
	"the packets it rejected as malformed, the memory maps sessions keep after an unmap\n"
	"with keep_map (held now, taken up by a map, given up unused), your tenant's quota,\n"
	"the daemon's ceilings over all tenants, the service manager's descriptor store where\n"
	"the leases are kept across restarts (its size, the descriptors in it, and the slots\n"
	"set aside for maps in progress; absent when the daemon runs without one, so that no\n"
	"lease survives a restart), how its map path is watched (the probe tier,\n"
	"whether the probes are attached now, and what could not be attached), for each\n"
	"method how many calls it answered and how many of them failed, every tenant label,\n"
	"each device's state (free, bound, attached or delegated) and the delegations with\n"
	"their VMMs' pinned memory and memlock limits, read from the kernel now ('iommuctl\n"
	"delegations' shows the same).\n"
	"All of that is everyone's only for an observer (root, or 'stats = all' in your\n"
	"configuration section: observer: yes); anyone else sees the same counters about\n"
	"their own tenant alone (its own delegations among them), and no methods, devices,\n"
	"descriptor store or map latency.\n"
	"\n"
	"With --latency it also draws, as bpftrace's hist() does, each method's latency (from\n"
	"its request received to its reply sent) and the map path's latency by operation,\n"
	"layer, size class and tenant label: a line per power-of-two range of nanoseconds\n"
	"([4K, 8K) is 4096 to 8191 ns), its count and a bar scaled to the largest count.\n"
	"The last range, from 64G ns (about 69 s) up, has no upper bound. Where the probe tier\n"
	"counts without timing (tracepoint), a histogram is only its count of calls.\n"
	"With --json the histograms are data: count, sum_ns and the non-empty buckets with\n"
	"their bounds (the last without high_ns).\n";

static const struct cmd_option stats_options[] = {
	{"latency", 'l', OPT_FLAG, NULL, "also show the latency histograms"},
	{0},
};

enum { OPT_LATENCY };

static void show_histogram(const char *key, const char *name, const Iommud__V1__Histogram *h)
{
	field_histogram(key, name, h->buckets, h->n_buckets, h->count, h->sum_ns);
}

static void show_methods(const Iommud__V1__GetStatsReply *s, bool latency)
{
	list_begin("methods", "METHOD CALLS ERRORS");
	for (size_t i = 0; i < s->n_methods; i++) {
		const Iommud__V1__MethodStats *m = s->methods[i];

		obj_begin(NULL);
		field("method", STR, 0, m->method);
		field("calls", NUM, m->calls, NULL);
		field("errors", NUM, m->errors, NULL);
		list_begin("codes", NULL);
		for (size_t j = 0; j < m->n_codes; j++) {
			obj_begin(NULL);
			field("code", STR, 0, iommuctl_code_name(m->codes[j]->code));
			field("calls", NUM, m->codes[j]->calls, NULL);
			obj_end();
		}
		list_end();
		if (latency && m->latency)
			show_histogram("latency", "", m->latency);
		obj_end();
	}
	list_end();
}

/* Text draws the methods' histograms below their table; JSON has them in it. */
static void draw_method_latency(const Iommud__V1__GetStatsReply *s)
{
	char name[96];

	if (output_is_json())
		return;
	for (size_t i = 0; i < s->n_methods; i++) {
		const Iommud__V1__MethodStats *m = s->methods[i];

		if (!m->latency || !m->latency->count)
			continue;
		(void)snprintf(name, sizeof(name), "rpc[%s]", m->method);
		show_histogram(NULL, name, m->latency);
	}
}

static void show_map_latency(const Iommud__V1__GetStatsReply *s)
{
	char name[192], bytes[24];

	list_begin("map_latency", NULL);
	for (size_t i = 0; i < s->n_map_latency; i++) {
		const Iommud__V1__MapLatency *ml = s->map_latency[i];
		const char *op = iommud_name(&iommud_map_op_names, ml->op);
		const char *layer = iommud_name(&iommud_map_layer_names, ml->layer);
		const char *size = iommud_name(&iommud_size_class_names, ml->size_class);

		obj_begin(NULL);
		field("op", STR, 0, op ? op : "?");
		field("layer", STR, 0, layer ? layer : "?");
		field("size_class", STR, 0, size ? size : "?");
		field("tenant", STR, 0, ml->tenant);
		field("bytes", NUM, ml->bytes, NULL);
		(void)snprintf(name, sizeof(name), "map_latency[%s, %s, %s, %s] %s bytes",
			       op ? op : "?", layer ? layer : "?", size ? size : "?",
			       ml->tenant[0] ? ml->tenant : "-", fmt_size(bytes, ml->bytes));
		if (ml->latency)
			show_histogram("latency", name, ml->latency);
		obj_end();
	}
	list_end();
}

void show_probes(const Iommud__V1__ProbeStatus *p)
{
	const char *tier;

	if (!p)
		return;
	tier = iommud_name(&iommud_probe_tier_names, p->tier);
	obj_begin("probes");
	field("probe_tier", STR, 0, tier ? tier : "?");
	field("attached", BOOL, p->attached, NULL);
	field("in_process_timing", BOOL, p->in_process, NULL);
	field("driver_latency", BOOL, p->driver_latency, NULL);
	field("dropped_events", NUM, p->dropped_events, NULL);
	/* Each reason is a sentence: one line each in text, not a comma-joined run. */
	if (output_is_json())
		field_strings("not_attached", p->detached, p->n_detached);
	else
		for (size_t i = 0; i < p->n_detached; i++)
			field("not_attached", STR | TEXT_ONLY, 0, p->detached[i]);
	obj_end();
}

/* A tenant label: text shows its usage as columns, JSON as the quota object with the limits. */
static void show_tenant(const Iommud__V1__TenantStats *t)
{
	const Iommud__V1__Quota none = IOMMUD__V1__QUOTA__INIT;
	const Iommud__V1__Quota *q = t->quota ? t->quota : &none;

	obj_begin(NULL);
	field("tenant", STR, 0, t->tenant);
	field("tenants", NUM, t->tenants, NULL);
	field("sessions", NUM, t->sessions, NULL);
	field("leases", NUM, t->leases, NULL);
	field("domains", NUM | TEXT_ONLY, q->domains, NULL);
	field("mappings", NUM | TEXT_ONLY, q->mappings, NULL);
	field("pinned_bytes", SIZE | TEXT_ONLY, q->pinned_bytes, NULL);
	if (output_is_json())
		show_quota(t->quota);
	obj_end();
}

static void show_tenants(const Iommud__V1__GetStatsReply *s)
{
	list_begin("tenant_stats", "LABEL TENANTS SESSIONS LEASES DOMAINS MAPPINGS PINNED");
	for (size_t i = 0; i < s->n_tenant_stats; i++)
		show_tenant(s->tenant_stats[i]);
	list_end();
}

static void show_devices(const Iommud__V1__GetStatsReply *s)
{
	list_begin("devices", "DEVICE STATE DMA_FAULTS DELEGATION");
	for (size_t i = 0; i < s->n_devices; i++) {
		obj_begin(NULL);
		field("device", STR, 0, s->devices[i]->device);
		field("state", STR, 0, s->devices[i]->state);
		field("dma_faults", NUM, s->devices[i]->dma_faults, NULL);
		field("delegation_id", NUM, s->devices[i]->delegation_id,
		      s->devices[i]->delegation_id ? NULL : "");
		obj_end();
	}
	list_end();
}

/* Per IOMMU unit where the driver does not name the device (docs/operations.md). */
static void show_fault_sources(const Iommud__V1__GetStatsReply *s)
{
	list_begin("dma_faults", "SOURCE MANAGED_DEVICE FAULTS");
	for (size_t i = 0; i < s->n_dma_faults; i++) {
		obj_begin(NULL);
		field("source", STR, 0, s->dma_faults[i]->source);
		field("managed_device", BOOL, s->dma_faults[i]->managed_device, NULL);
		field("faults", NUM, s->dma_faults[i]->faults, NULL);
		obj_end();
	}
	list_end();
}

static void show_descriptor_store(const Iommud__V1__DescriptorStore *ds)
{
	if (!ds)
		return;
	obj_begin("descriptor_store");
	field("store_capacity", NUM, ds->capacity, NULL);
	field("store_in_use", NUM, ds->stored, NULL);
	field("store_set_aside", NUM, ds->set_aside, NULL);
	obj_end();
}

static void show_stats(const Iommud__V1__GetStatsReply *s, bool latency)
{
	obj_begin(NULL);
	field("version", STR, 0, s->version);
	field("uptime_seconds", NUM, s->uptime_seconds, NULL);
	field("connections", NUM, s->connections, NULL);
	field("tenants", NUM, s->tenants, NULL);
	field("sessions", NUM, s->sessions, NULL);
	field("leases", NUM, s->leases, NULL);
	field("rejected_packets", NUM, s->rejected_packets, NULL);
	field("kept_maps", NUM, s->kept_maps, NULL);
	field("kept_maps_taken_up", NUM, s->kept_maps_taken_up, NULL);
	field("kept_maps_given_up", NUM, s->kept_maps_given_up, NULL);
	field("observer", BOOL, s->observer, NULL);
	show_quota(s->quota);
	show_ceilings(s->ceilings, s->observer);
	show_descriptor_store(s->descriptor_store);
	show_probes(s->probes);
	show_methods(s, latency);
	show_tenants(s);
	show_devices(s);
	show_delegation_list(s->delegations, s->n_delegations);
	show_fault_sources(s);
	if (latency) {
		draw_method_latency(s);
		show_map_latency(s);
	}
	obj_end();
}

static void cmd_stats_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	Iommud__V1__GetStatsRequest msg = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Response *r;

	(void)self;
	r = cli_call(IOMMUD__V1__REQUEST__METHOD_GET_STATS, &msg);
	show_stats(r->get_stats, args->opt[OPT_LATENCY].count > 0);
	iommuctl_response_free(r);
}

const struct cmd_entry cmd_stats_entry = {
	.name = "stats",
	.summary = "Shows the daemon's counters and latency histograms.",
	.help = stats_help,
	.options = stats_options,
	.examples = "  iommuctl stats\n"
		    "  iommuctl stats --latency\n"
		    "  iommuctl --json stats --latency | jq '.methods[] | select(.method == "
		    "\"map\")'\n",
	.exec = cmd_stats_exec,
};
