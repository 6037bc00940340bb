/* SPDX-License-Identifier: MIT */
/*
 * Rendering of a GetStats reply (metrics.h). Each family is written whole, its samples one
 * after another, because the format requires a family's lines to be contiguous; the HELP and
 * TYPE lines are written with a family's first sample, so a family the daemon has nothing for
 * (a field an older daemon does not fill) leaves no empty header behind.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <iommuctl.h>
#include <names.h>

#include "metrics.h"

#define NSEC_PER_SEC UINT64_C(1000000000)

/*
 * Bucket i of a daemon histogram holds the whole nanoseconds from 2^i to 2^(i+1) - 1 (bucket 0
 * holds 0 and 1). `le` is inclusive, so bucket i's is its largest value, 2^(i+1) - 1 ns: 2^(i+1)
 * would claim durations of exactly 2^(i+1) ns, which the next bucket counts. The daemon's last
 * bucket (index 36, from 2^36 ns, about 69 s) also holds everything longer and so has no upper
 * bound of its own: it, and any bucket a newer daemon keeps beyond it, counts only in +Inf.
 * Every histogram gets all 36 bounded buckets, empty or not, because Prometheus aggregates
 * histograms by `le` and a bucket that comes and goes breaks histogram_quantile.
 */
#define BOUNDED_BUCKETS IOMMUD_HISTOGRAM_OPEN_BUCKET

struct family {
	const char *name;
	const char *type;
	const char *help;
};

struct label {
	const char *name;
	const char *value;
};

struct writer {
	FILE *out;
	const struct family *headed; /* the family whose HELP and TYPE were written last */
};

void metrics_seconds(uint64_t ns, char buf[METRICS_SECONDS_MAX])
{
	int len = snprintf(buf, METRICS_SECONDS_MAX, "%" PRIu64 ".%09" PRIu64, ns / NSEC_PER_SEC,
			   ns % NSEC_PER_SEC);

	while (len > 0 && buf[len - 1] == '0')
		buf[--len] = '\0';
	if (len > 0 && buf[len - 1] == '.')
		buf[--len] = '\0';
}

/* A label value as the format quotes it: backslash, double quote and newline escaped. */
static void put_label_value(FILE *out, const char *value)
{
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"')
			(void)fprintf(out, "\\%c", *p);
		else if (*p == '\n')
			(void)fputs("\\n", out);
		else
			(void)fputc(*p, out);
	}
}

/* name{labels,le="le"} with le NULL for none; nothing in braces when there are no labels. */
static void put_series(FILE *out, const char *name, const char *suffix, const struct label *l,
		       size_t n, const char *le)
{
	(void)fprintf(out, "%s%s", name, suffix);
	if (n == 0 && !le)
		return;
	(void)fputc('{', out);
	for (size_t i = 0; i < n; i++) {
		(void)fprintf(out, "%s%s=\"", i ? "," : "", l[i].name);
		put_label_value(out, l[i].value);
		(void)fputc('"', out);
	}
	if (le)
		(void)fprintf(out, "%sle=\"%s\"", n ? "," : "", le);
	(void)fputc('}', out);
}

static void head(struct writer *w, const struct family *f)
{
	if (w->headed == f)
		return;
	(void)fprintf(w->out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
	w->headed = f;
}

/* A sample whose value is not a count: "+Inf". */
static void sample_text(struct writer *w, const struct family *f, const struct label *l, size_t n,
			const char *value)
{
	head(w, f);
	put_series(w->out, f->name, "", l, n, NULL);
	(void)fprintf(w->out, " %s\n", value);
}

static void sample(struct writer *w, const struct family *f, const struct label *l, size_t n,
		   uint64_t value)
{
	char text[24];

	(void)snprintf(text, sizeof(text), "%" PRIu64, value);
	sample_text(w, f, l, n, text);
}

/* A histogram with its timing: the tracepoint probe tier counts without timing, which is left
 * to the *_total counters beside the histogram rather than drawn as every call being slow. */
static bool timed(const Iommud__V1__Histogram *h)
{
	return h && h->n_buckets > 0;
}

static void histogram(struct writer *w, const struct family *f, const struct label *l, size_t n,
		      const Iommud__V1__Histogram *h)
{
	char le[METRICS_SECONDS_MAX], sum[METRICS_SECONDS_MAX];
	uint64_t cumulative = 0, total = 0;

	for (size_t i = 0; i < h->n_buckets; i++)
		total += h->buckets[i];
	/* The daemon sums per-CPU counters without a lock; +Inf must not be below a bucket. */
	if (total < h->count)
		total = h->count;
	head(w, f);
	for (unsigned i = 0; i < BOUNDED_BUCKETS; i++) {
		if (i < h->n_buckets)
			cumulative += h->buckets[i];
		metrics_seconds((UINT64_C(2) << i) - 1, le);
		put_series(w->out, f->name, "_bucket", l, n, le);
		(void)fprintf(w->out, " %" PRIu64 "\n", cumulative);
	}
	put_series(w->out, f->name, "_bucket", l, n, "+Inf");
	(void)fprintf(w->out, " %" PRIu64 "\n", total);
	metrics_seconds(h->sum_ns, sum);
	put_series(w->out, f->name, "_sum", l, n, NULL);
	(void)fprintf(w->out, " %s\n", sum);
	put_series(w->out, f->name, "_count", l, n, NULL);
	(void)fprintf(w->out, " %" PRIu64 "\n", total);
}

#define LABEL_MAX 32

/* The label of an enum value: its name (names.h), or its number when this build's schema does
 * not know it (a newer daemon's), written into buf then. */
static const char *enum_label(struct iommud_names *names, int value, char buf[LABEL_MAX])
{
	const char *name = iommud_name(names, value);

	if (name)
		return name;
	(void)snprintf(buf, LABEL_MAX, "%d", value);
	return buf;
}

/* ---- the daemon as a whole -------------------------------------------------------------- */

static const struct family up = {"iommud_up", "gauge",
				 "1 when the daemon answered this scrape's GetStats, else 0."};
static const struct family build_info = {"iommud_build_info", "gauge",
					 "Always 1; the version label is the daemon's version."};

static uint64_t uptime(const Iommud__V1__GetStatsReply *s)
{
	return s->uptime_seconds;
}
static uint64_t connections(const Iommud__V1__GetStatsReply *s)
{
	return s->connections;
}
static uint64_t tenants(const Iommud__V1__GetStatsReply *s)
{
	return s->tenants;
}
static uint64_t sessions(const Iommud__V1__GetStatsReply *s)
{
	return s->sessions;
}
static uint64_t leases(const Iommud__V1__GetStatsReply *s)
{
	return s->leases;
}
static uint64_t rejected(const Iommud__V1__GetStatsReply *s)
{
	return s->rejected_packets;
}
static uint64_t nothing_remapped(const Iommud__V1__GetStatsReply *s)
{
	return s->nothing_remapped;
}
static uint64_t rate_limited(const Iommud__V1__GetStatsReply *s)
{
	return s->rate_limited;
}
static uint64_t kept_maps(const Iommud__V1__GetStatsReply *s)
{
	return s->kept_maps;
}
static uint64_t kept_maps_taken_up(const Iommud__V1__GetStatsReply *s)
{
	return s->kept_maps_taken_up;
}
static uint64_t kept_maps_given_up(const Iommud__V1__GetStatsReply *s)
{
	return s->kept_maps_given_up;
}

static const struct daemon_gauge {
	struct family family;
	uint64_t (*value)(const Iommud__V1__GetStatsReply *s);
} daemon_gauges[] = {
	{{"iommud_uptime_seconds", "gauge", "Seconds since the daemon started."}, uptime},
	{{"iommud_connections", "gauge", "Open client connections, this scrape's included."},
	 connections},
	{{"iommud_tenants", "gauge", "Tenants (uid or cgroup) with a session."}, tenants},
	{{"iommud_sessions", "gauge", "Sessions, anonymous and leased."}, sessions},
	{{"iommud_leases", "gauge", "Named sessions kept by a lease."}, leases},
	{{"iommud_rejected_packets_total", "counter",
	  "Packets refused as malformed, oversized or carrying the wrong descriptors."},
	 rejected},
	{{"iommud_nothing_remapped", "gauge",
	  "1 when the daemon runs the emulated IOMMU: no device's DMA is restricted by it."},
	 nothing_remapped},
	{{"iommud_rate_limited_total", "counter",
	  "Times a reader tenant had requests waiting and no reader-rate token, so they waited."},
	 rate_limited},
	{{"iommud_kept_maps", "gauge",
	  "Maps of client files sessions keep after an unmap with keep_map, for their next map."},
	 kept_maps},
	{{"iommud_kept_maps_taken_up_total", "counter",
	  "Kept maps a Map or MapBatch took up instead of mapping the file anew."},
	 kept_maps_taken_up},
	{{"iommud_kept_maps_given_up_total", "counter",
	  "Kept maps given up unused: another change came first, or the maps' ceiling neared."},
	 kept_maps_given_up},
};

static void render_daemon(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	struct label version = {"version", s->version};

	sample(w, &build_info, &version, 1, 1);
	for (size_t i = 0; i < sizeof(daemon_gauges) / sizeof(daemon_gauges[0]); i++)
		sample(w, &daemon_gauges[i].family, NULL, 0, daemon_gauges[i].value(s));
}

/* ---- daemon-wide ceilings and refused connections ------------------------------------------ */

/* An unsigned field of m by its schema name; the tables of ceilings and tenant gauges name only
 * such fields, which test_metrics renders, so a name the schema lost aborts there rather than
 * reading 0. */
static uint64_t unsigned_field(const ProtobufCMessage *m, const char *name)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
	const char *at;

	if (!f || (f->type != PROTOBUF_C_TYPE_UINT32 && f->type != PROTOBUF_C_TYPE_UINT64))
		abort();
	at = (const char *)m + f->offset;
	if (f->type == PROTOBUF_C_TYPE_UINT32)
		return *(const uint32_t *)(const void *)at;
	return *(const uint64_t *)(const void *)at;
}

/* A figure of a message GetStats carries (Ceilings, DescriptorStore) by its schema name; a
 * limit of 0 is none, and leaves its family out rather than claim a ceiling of nothing. */
struct message_figure {
	struct family family;
	const char *field;
	bool limit;
};

/* The figures of m, none when the daemon sent no such message. */
static void render_figures(struct writer *w, const ProtobufCMessage *m,
			   const struct message_figure *figures, size_t n)
{
	uint64_t value;

	for (size_t i = 0; m && i < n; i++) {
		value = unsigned_field(m, figures[i].field);
		if (value || !figures[i].limit)
			sample(w, &figures[i].family, NULL, 0, value);
	}
}

static const struct message_figure ceiling_figures[] = {
	{{"iommud_maps", "gauge",
	  "The daemon's memory maps of client files, one per file and access in a session."},
	 "maps",
	 false},
	{{"iommud_maps_limit", "gauge",
	  "The daemon-wide ceiling on its maps of client files (max-maps-total), below "
	  "vm.max_map_count."},
	 "max_maps",
	 true},
	{{"iommud_leases_limit", "gauge",
	  "The daemon-wide ceiling on named sessions (max-leases-total), below the open-file "
	  "limit."},
	 "max_leases",
	 true},
	{{"iommud_pinned_bytes", "gauge", "Bytes all tenants have mapped."}, "pinned_bytes", false},
	{{"iommud_pinned_bytes_limit", "gauge",
	  "The daemon-wide ceiling on mapped bytes: max-pinned-total, or RLIMIT_MEMLOCK where the "
	  "kernel charges the daemon's pins."},
	 "max_pinned_bytes",
	 true},
	{{"iommud_failed_releases_total", "counter",
	  "Client memory the daemon could not unmap when a mapping was released, made "
	  "inaccessible instead (the log says which)."},
	 "failed_releases",
	 false},
};

static const struct family refused_connections = {
	"iommud_refused_connections_total", "counter",
	"Connections refused at connect or closed for silence, by reason: the limit's or "
	"timeout's configuration key, open-file-limit or unidentified-peer."};

static void render_ceilings(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	render_figures(w, s->ceilings ? &s->ceilings->base : NULL, ceiling_figures,
		       sizeof(ceiling_figures) / sizeof(ceiling_figures[0]));
	for (size_t i = 0; i < s->n_refused_connections; i++) {
		struct label reason = {"reason", s->refused_connections[i]->reason};

		sample(w, &refused_connections, &reason, 1, s->refused_connections[i]->connections);
	}
}

/* None when the daemon runs without a store. */
static const struct message_figure store_figures[] = {
	{{"iommud_descriptor_store_capacity", "gauge",
	  "Descriptors the service manager keeps for the daemon, where leases outlive a restart."},
	 "capacity",
	 false},
	{{"iommud_descriptor_store_stored", "gauge",
	  "Descriptors in the store now: the state record, the leases' memory files, kernel "
	  "descriptors and the VMMs' process descriptors."},
	 "stored",
	 false},
	{{"iommud_descriptor_store_set_aside", "gauge",
	  "Store slots held for calls in progress, such as a MapBatch's new memory files."},
	 "set_aside",
	 false},
};

static void render_descriptor_store(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	render_figures(w, s->descriptor_store ? &s->descriptor_store->base : NULL, store_figures,
		       sizeof(store_figures) / sizeof(store_figures[0]));
}

/* ---- RPC methods ------------------------------------------------------------------------- */

static const struct family rpc_calls = {"iommud_rpc_calls_total", "counter",
					"Requests answered, by method."};
static const struct family rpc_errors = {"iommud_rpc_errors_total", "counter",
					 "Requests answered with a status other than OK."};
static const struct family rpc_responses = {
	"iommud_rpc_responses_total", "counter",
	"Requests answered, by method and status code (codes never sent are left out)."};
static const struct family rpc_duration = {
	"iommud_rpc_duration_seconds", "histogram",
	"From a request's packet received to its reply sent, by method."};

static void render_methods(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	for (size_t i = 0; i < s->n_methods; i++) {
		struct label method = {"method", s->methods[i]->method};

		sample(w, &rpc_calls, &method, 1, s->methods[i]->calls);
	}
	for (size_t i = 0; i < s->n_methods; i++) {
		struct label method = {"method", s->methods[i]->method};

		sample(w, &rpc_errors, &method, 1, s->methods[i]->errors);
	}
	for (size_t i = 0; i < s->n_methods; i++) {
		const Iommud__V1__MethodStats *m = s->methods[i];

		for (size_t j = 0; j < m->n_codes; j++) {
			struct label l[2] = {{"method", m->method},
					     {"code", iommuctl_code_name(m->codes[j]->code)}};

			sample(w, &rpc_responses, l, 2, m->codes[j]->calls);
		}
	}
	for (size_t i = 0; i < s->n_methods; i++) {
		struct label method = {"method", s->methods[i]->method};

		if (timed(s->methods[i]->latency))
			histogram(w, &rpc_duration, &method, 1, s->methods[i]->latency);
	}
}

/* ---- the map path ------------------------------------------------------------------------ */

static const struct family map_operations = {
	"iommud_map_operations_total", "counter",
	"Maps and unmaps seen, by operation, layer, size class and tenant label."};
static const struct family map_bytes = {
	"iommud_map_bytes_total", "counter",
	"Bytes mapped or unmapped, by operation, layer, size class and tenant label."};
static const struct family map_duration = {
	"iommud_map_duration_seconds", "histogram",
	"Time of one map or unmap, by operation, layer (iommu: the kernel's iommu_map/unmap; "
	"ioctl: the whole iommufd ioctl; in_process: the emulated IOMMU in the daemon), size "
	"class and tenant label."};

struct map_labels {
	char op[LABEL_MAX], layer[LABEL_MAX], size[LABEL_MAX];
	struct label l[4];
};

static void map_labels(const Iommud__V1__MapLatency *m, struct map_labels *ml)
{
	ml->l[0] = (struct label){"op", enum_label(&iommud_map_op_names, m->op, ml->op)};
	ml->l[1] =
		(struct label){"layer", enum_label(&iommud_map_layer_names, m->layer, ml->layer)};
	ml->l[2] = (struct label){"size_class",
				  enum_label(&iommud_size_class_names, m->size_class, ml->size)};
	ml->l[3] = (struct label){"tenant", m->tenant};
}

static uint64_t map_count(const Iommud__V1__MapLatency *m)
{
	return m->latency ? m->latency->count : 0;
}

static void render_map_path(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	struct map_labels ml;

	for (size_t i = 0; i < s->n_map_latency; i++) {
		map_labels(s->map_latency[i], &ml);
		sample(w, &map_operations, ml.l, 4, map_count(s->map_latency[i]));
	}
	for (size_t i = 0; i < s->n_map_latency; i++) {
		map_labels(s->map_latency[i], &ml);
		sample(w, &map_bytes, ml.l, 4, s->map_latency[i]->bytes);
	}
	for (size_t i = 0; i < s->n_map_latency; i++) {
		if (!timed(s->map_latency[i]->latency))
			continue;
		map_labels(s->map_latency[i], &ml);
		histogram(w, &map_duration, ml.l, 4, s->map_latency[i]->latency);
	}
}

/* ---- tenant labels ----------------------------------------------------------------------- */

/* A gauge per label, read from the schema field it names: in TenantStats, or in its Quota. */
static const struct tenant_gauge {
	struct family family;
	bool in_quota;
	const char *field;
} tenant_gauges[] = {
	{{"iommud_tenant_members", "gauge", "Tenants (uid or cgroup) under the tenant label."},
	 false,
	 "tenants"},
	{{"iommud_tenant_sessions", "gauge", "Sessions of the label's tenants."},
	 false,
	 "sessions"},
	{{"iommud_tenant_leases", "gauge", "Leased sessions of the label's tenants."},
	 false,
	 "leases"},
	{{"iommud_tenant_domains", "gauge", "Domains the label's tenants hold."}, true, "domains"},
	{{"iommud_tenant_domains_limit", "gauge", "The label's max-domains quota."},
	 true,
	 "max_domains"},
	{{"iommud_tenant_mappings", "gauge", "Mappings the label's tenants hold."},
	 true,
	 "mappings"},
	{{"iommud_tenant_mappings_limit", "gauge", "The label's max-mappings quota."},
	 true,
	 "max_mappings"},
	{{"iommud_tenant_pinned_bytes", "gauge", "Bytes the label's tenants have mapped."},
	 true,
	 "pinned_bytes"},
	{{"iommud_tenant_pinned_bytes_limit", "gauge", "The label's max-pinned quota, in bytes."},
	 true,
	 "max_pinned_bytes"},
	{{"iommud_tenant_leases_limit", "gauge", "The label's max-leases quota."},
	 true,
	 "max_leases"},
	{{"iommud_tenant_page_table_bytes", "gauge",
	  "Daemon memory the label's tenants' IOMMU page tables take (the emulated IOMMU's)."},
	 true,
	 "page_table_bytes"},
	{{"iommud_tenant_page_table_bytes_limit", "gauge",
	  "The label's max-page-tables quota, in "
	  "bytes."},
	 true,
	 "max_page_table_bytes"},
	{{"iommud_tenant_maps", "gauge", "The daemon's memory maps of the label's tenants' files."},
	 true,
	 "maps"},
	{{"iommud_tenant_maps_limit", "gauge", "The label's max-maps quota."}, true, "max_maps"},
};

static void render_tenants(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	static const Iommud__V1__Quota no_quota = IOMMUD__V1__QUOTA__INIT;

	for (size_t g = 0; g < sizeof(tenant_gauges) / sizeof(tenant_gauges[0]); g++) {
		const struct tenant_gauge *gauge = &tenant_gauges[g];

		for (size_t i = 0; i < s->n_tenant_stats; i++) {
			const Iommud__V1__TenantStats *t = s->tenant_stats[i];
			const Iommud__V1__Quota *q = t->quota ? t->quota : &no_quota;
			struct label tenant = {"tenant", t->tenant};

			sample(w, &gauge->family, &tenant, 1,
			       unsigned_field(gauge->in_quota ? &q->base : &t->base, gauge->field));
		}
	}
}

/* ---- devices ----------------------------------------------------------------------------- */

static const struct family devices = {"iommud_devices", "gauge", "Devices, by state."};
static const struct family dma_faults = {
	"iommud_device_dma_faults_total", "counter",
	"DMA faults the IOMMU reported for the device (iommud_probe_tier says whether it can)."};

static const struct family fault_sources = {
	"iommud_dma_faults_total", "counter",
	"DMA faults the probes counted, by what the IOMMU's fault path names: the faulting device, "
	"or the IOMMU unit (dmar0, virtio0) where the driver only logs the device."};

/* The states GetStats documents: each is always given, 0 when no device is in it, so that a
 * state's series does not vanish; a state a newer daemon adds is counted after them. */
static const char *const known_states[] = {"free", "bound", "attached", "delegated"};
#define KNOWN_STATES (sizeof(known_states) / sizeof(known_states[0]))

static bool state_seen_before(const Iommud__V1__GetStatsReply *s, size_t i)
{
	for (size_t k = 0; k < KNOWN_STATES; k++)
		if (strcmp(s->devices[i]->state, known_states[k]) == 0)
			return true;
	for (size_t j = 0; j < i; j++)
		if (strcmp(s->devices[i]->state, s->devices[j]->state) == 0)
			return true;
	return false;
}

static uint64_t devices_in(const Iommud__V1__GetStatsReply *s, const char *state)
{
	uint64_t n = 0;

	for (size_t i = 0; i < s->n_devices; i++)
		n += strcmp(s->devices[i]->state, state) == 0;
	return n;
}

static void render_devices(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	if (s->n_devices == 0)
		return;
	for (size_t k = 0; k < KNOWN_STATES; k++) {
		struct label state = {"state", known_states[k]};

		sample(w, &devices, &state, 1, devices_in(s, known_states[k]));
	}
	for (size_t i = 0; i < s->n_devices; i++) {
		struct label state = {"state", s->devices[i]->state};

		if (!state_seen_before(s, i))
			sample(w, &devices, &state, 1, devices_in(s, s->devices[i]->state));
	}
	for (size_t i = 0; i < s->n_devices; i++) {
		struct label device = {"device", s->devices[i]->device};

		sample(w, &dma_faults, &device, 1, s->devices[i]->dma_faults);
	}
}

static void render_fault_sources(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	for (size_t i = 0; i < s->n_dma_faults; i++) {
		struct label source = {"source", s->dma_faults[i]->source};

		sample(w, &fault_sources, &source, 1, s->dma_faults[i]->faults);
	}
}

/* ---- delegations ------------------------------------------------------------------------- */

/*
 * What VMMs hold of delegated devices, summed per tenant label (never per pid: a VMM's pid is
 * not a bounded label). The pinned figures are the VMMs' own, read from the kernel at the
 * scrape; their memlock limits, not the label's quotas, bound them. A label with no delegation
 * has no series: they go when its last VMM does.
 */
static const struct family delegations_family = {
	"iommud_delegations", "gauge",
	"Delegations (VMMs holding delegated devices) of the label."};
static const struct family delegated_devices = {"iommud_delegated_devices", "gauge",
						"Devices the label's tenants handed to VMMs."};
static const struct family delegated_pinned = {
	"iommud_delegated_pinned_bytes", "gauge",
	"Memory the label's VMMs have pinned (their VmPin), read from the kernel at the scrape."};
static const struct family delegated_pinned_limit = {
	"iommud_delegated_pinned_bytes_limit", "gauge",
	"The label's VMMs' RLIMIT_MEMLOCK summed, the only bound on their pins (+Inf: unlimited)."};

static bool tenant_seen_before(const Iommud__V1__GetStatsReply *s, size_t i)
{
	for (size_t j = 0; j < i; j++)
		if (strcmp(s->delegations[i]->tenant, s->delegations[j]->tenant) == 0)
			return true;
	return false;
}

struct delegated {
	uint64_t delegations, devices, pinned, limit;
	bool unlimited;
};

/* Adds x to *sum, or says the sum no longer fits: two finite limits of 2^63 must not wrap to a
 * figure below what the VMMs have pinned. */
static bool add_saturating(uint64_t *sum, uint64_t x)
{
	if (*sum > UINT64_MAX - x)
		return false;
	*sum += x;
	return true;
}

static struct delegated delegated_of(const Iommud__V1__GetStatsReply *s, const char *tenant)
{
	struct delegated sum = {0};

	for (size_t i = 0; i < s->n_delegations; i++) {
		const Iommud__V1__Delegation *d = s->delegations[i];

		if (strcmp(d->tenant, tenant) != 0)
			continue;
		sum.delegations++;
		sum.devices += d->n_devices;
		if (!add_saturating(&sum.pinned, d->pinned_bytes))
			sum.pinned = UINT64_MAX;
		sum.unlimited |= d->pinned_bytes_limit == UINT64_MAX ||
				 !add_saturating(&sum.limit, d->pinned_bytes_limit);
	}
	return sum;
}

static void render_delegations(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	const struct family *families[] = {&delegations_family, &delegated_devices,
					   &delegated_pinned, &delegated_pinned_limit};

	for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++)
		for (size_t i = 0; i < s->n_delegations; i++) {
			struct label tenant = {"tenant", s->delegations[i]->tenant};
			struct delegated sum = delegated_of(s, tenant.value);
			const uint64_t values[] = {sum.delegations, sum.devices, sum.pinned,
						   sum.limit};

			if (tenant_seen_before(s, i))
				continue;
			if (families[f] == &delegated_pinned_limit && sum.unlimited)
				sample_text(w, families[f], &tenant, 1, "+Inf");
			else
				sample(w, families[f], &tenant, 1, values[f]);
		}
}

/* ---- probes ------------------------------------------------------------------------------ */

static const struct family probe_tier = {
	"iommud_probe_tier", "gauge",
	"1 for the tier the daemon's map path probes attached at (fentry, kprobe, tracepoint or "
	"off), 0 for the others."};
static const struct family probe_in_process = {
	"iommud_probe_in_process", "gauge",
	"1 when the backend's map path runs in the daemon and is timed there."};
static const struct family probe_attached = {
	"iommud_probe_attached", "gauge",
	"1 while the tier's probes are on the kernel's functions; 0 at tier off or after "
	"'iommuctl probes detach'."};
static const struct family probe_driver_latency = {
	"iommud_probe_driver_latency", "gauge",
	"1 when the IOMMU driver layer's calls are timed (probe-driver-latency yes, at the fentry "
	"or kprobe tier); 0 when they are only counted, with no duration histogram."};
static const struct family probes_detached = {
	"iommud_probes_detached", "gauge",
	"Probe programs not attached (the daemon's log and iommuctl stats say why)."};
static const struct family probe_dropped = {"iommud_probe_dropped_events_total", "counter",
					    "Probe events lost before they were counted."};

static void render_probes(struct writer *w, const Iommud__V1__GetStatsReply *s)
{
	const ProtobufCEnumDescriptor *d = &iommud__v1__probe_tier__descriptor;
	const Iommud__V1__ProbeStatus *p = s->probes;
	char name[LABEL_MAX];

	if (!p)
		return;
	for (unsigned i = 0; i < d->n_values; i++) {
		struct label tier = {
			"tier", enum_label(&iommud_probe_tier_names, d->values[i].value, name)};

		if (d->values[i].value != IOMMUD__V1__PROBE_TIER__PROBE_TIER_UNSPECIFIED)
			sample(w, &probe_tier, &tier, 1, d->values[i].value == (int)p->tier);
	}
	sample(w, &probe_attached, NULL, 0, p->attached);
	sample(w, &probe_in_process, NULL, 0, p->in_process);
	sample(w, &probe_driver_latency, NULL, 0, p->driver_latency);
	sample(w, &probes_detached, NULL, 0, p->n_detached);
	sample(w, &probe_dropped, NULL, 0, p->dropped_events);
}

int metrics_render(const Iommud__V1__GetStatsReply *stats, FILE *out)
{
	struct writer w = {.out = out};

	sample(&w, &up, NULL, 0, stats != NULL);
	if (stats) {
		render_daemon(&w, stats);
		render_ceilings(&w, stats);
		render_descriptor_store(&w, stats);
		render_methods(&w, stats);
		render_map_path(&w, stats);
		render_tenants(&w, stats);
		render_devices(&w, stats);
		render_delegations(&w, stats);
		render_fault_sources(&w, stats);
		render_probes(&w, stats);
	}
	return fflush(out) == 0 && !ferror(out) ? 0 : -EIO;
}
