/* SPDX-License-Identifier: MIT */
/*
 * The exporter's rendering on hand-made GetStats replies that set every field, so that each
 * family is proven before any daemon fills it: names, labels, escaping, cumulative buckets in
 * seconds, and the format's rules (HELP and TYPE once per family, a family's lines together),
 * which promtool checks too where it is installed.
 */
#define _GNU_SOURCE	 /* open_memstream */
#include <linux/types.h> /* for iommud_probes.h */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "iommud_probes.h"
#include "metrics.h"
#include "promtool_check.h"

/* ---- a reply with every field set -------------------------------------------------------- */

struct sample_reply {
	Iommud__V1__GetStatsReply reply;
	Iommud__V1__MethodStats map, hello, *methods[2];
	Iommud__V1__Histogram map_rpc, timed, untimed;
	Iommud__V1__CodeCount ok, not_found, *codes[2];
	Iommud__V1__MapLatency ioctl_2m, iommu_4k, unknown_size, *latency[3];
	Iommud__V1__Quota quota;
	Iommud__V1__TenantStats alice, *tenants[1];
	Iommud__V1__DeviceStats emu0, emu1, emu2, *devices[3];
	Iommud__V1__DmaFaults dmar0, emu1_faults, *faults[2];
	Iommud__V1__ProbeStatus probes;
	Iommud__V1__Ceilings ceilings;
	Iommud__V1__DescriptorStore store;
	Iommud__V1__RefusedConnections per_uid, idle, *refused[2];
	Iommud__V1__Delegation vm1, vm2, vm3, *delegations[3];
	char *detached[2], *vm1_devices[2], *vm2_devices[1], *vm3_devices[1];
	uint64_t rpc_buckets[4], map_buckets[41];
};

static void fill_methods(struct sample_reply *s)
{
	iommud__v1__method_stats__init(&s->map);
	iommud__v1__method_stats__init(&s->hello);
	iommud__v1__histogram__init(&s->map_rpc);
	iommud__v1__code_count__init(&s->ok);
	iommud__v1__code_count__init(&s->not_found);
	/* 1 call of 0-1 ns, 2 of 4-7 ns, 3 of 8-15 ns */
	s->rpc_buckets[0] = 1;
	s->rpc_buckets[2] = 2;
	s->rpc_buckets[3] = 3;
	s->map_rpc = (Iommud__V1__Histogram)IOMMUD__V1__HISTOGRAM__INIT;
	s->map_rpc.n_buckets = 4;
	s->map_rpc.buckets = s->rpc_buckets;
	s->map_rpc.count = 6;
	s->map_rpc.sum_ns = 1500000000;
	s->ok.code = IOMMUD__V1__CODE__CODE_OK;
	s->ok.calls = 4;
	s->not_found.code = IOMMUD__V1__CODE__CODE_NOT_FOUND;
	s->not_found.calls = 2;
	s->codes[0] = &s->ok;
	s->codes[1] = &s->not_found;
	s->map.method = "map";
	s->map.calls = 6;
	s->map.errors = 2;
	s->map.latency = &s->map_rpc;
	s->map.n_codes = 2;
	s->map.codes = s->codes;
	s->hello.method = "hello";
	s->hello.calls = 1;
	s->methods[0] = &s->map;
	s->methods[1] = &s->hello;
	s->reply.n_methods = 2;
	s->reply.methods = s->methods;
}

static void fill_map_latency(struct sample_reply *s)
{
	iommud__v1__histogram__init(&s->timed);
	iommud__v1__histogram__init(&s->untimed);
	/* 1 of 0-1 ns, 1 in the daemon's open-ended last bucket, 2 beyond it (a newer daemon) */
	s->map_buckets[0] = 1;
	s->map_buckets[36] = 1;
	s->map_buckets[40] = 2;
	s->timed.n_buckets = 41;
	s->timed.buckets = s->map_buckets;
	s->timed.count = 3; /* one short of the buckets: read without a lock while counting */
	s->timed.sum_ns = 250;
	s->untimed.count = 7; /* the tracepoint tier: counts without timing */
	iommud__v1__map_latency__init(&s->ioctl_2m);
	s->ioctl_2m.op = IOMMUD__V1__MAP_OP__MAP_OP_MAP;
	s->ioctl_2m.layer = IOMMUD__V1__MAP_LAYER__MAP_LAYER_IOCTL;
	s->ioctl_2m.size_class = IOMMUD__V1__SIZE_CLASS__SIZE_CLASS_2M;
	s->ioctl_2m.tenant = "group \"kvm\"\\\n";
	s->ioctl_2m.latency = &s->timed;
	s->ioctl_2m.bytes = 8u << 20;
	iommud__v1__map_latency__init(&s->iommu_4k);
	s->iommu_4k.op = IOMMUD__V1__MAP_OP__MAP_OP_UNMAP;
	s->iommu_4k.layer = IOMMUD__V1__MAP_LAYER__MAP_LAYER_IOMMU;
	s->iommu_4k.size_class = IOMMUD__V1__SIZE_CLASS__SIZE_CLASS_4K;
	s->iommu_4k.tenant = "";
	s->iommu_4k.latency = &s->untimed;
	s->iommu_4k.bytes = 7 * 4096;
	iommud__v1__map_latency__init(&s->unknown_size);
	s->unknown_size.op = IOMMUD__V1__MAP_OP__MAP_OP_MAP;
	s->unknown_size.layer = IOMMUD__V1__MAP_LAYER__MAP_LAYER_IN_PROCESS;
	s->unknown_size.size_class = (Iommud__V1__SizeClass)99;
	s->unknown_size.tenant = "other";
	s->latency[0] = &s->ioctl_2m;
	s->latency[1] = &s->iommu_4k;
	s->latency[2] = &s->unknown_size;
	s->reply.n_map_latency = 3;
	s->reply.map_latency = s->latency;
}

static void fill_tenants_devices_probes(struct sample_reply *s)
{
	iommud__v1__quota__init(&s->quota);
	s->quota = (Iommud__V1__Quota){.base = s->quota.base,
				       .max_domains = 64,
				       .max_mappings = 65536,
				       .max_pinned_bytes = 16ull << 30,
				       .domains = 2,
				       .mappings = 5,
				       .pinned_bytes = 3 << 20,
				       .max_leases = 16,
				       .leases = 1,
				       .max_page_table_bytes = 64 << 20,
				       .page_table_bytes = 12288,
				       .max_maps = 1024,
				       .maps = 2};
	iommud__v1__tenant_stats__init(&s->alice);
	s->alice = (Iommud__V1__TenantStats){.base = s->alice.base,
					     .tenant = "user alice",
					     .tenants = 1,
					     .sessions = 3,
					     .leases = 1,
					     .quota = &s->quota};
	s->tenants[0] = &s->alice;
	s->reply.n_tenant_stats = 1;
	s->reply.tenant_stats = s->tenants;
	iommud__v1__device_stats__init(&s->emu0);
	iommud__v1__device_stats__init(&s->emu1);
	iommud__v1__device_stats__init(&s->emu2);
	s->emu0.device = "emu0";
	s->emu0.state = "free";
	s->emu1.device = "emu1";
	s->emu1.state = "attached";
	s->emu1.dma_faults = 3;
	s->emu2.device = "emu2";
	s->emu2.state = "quarantined";
	s->devices[0] = &s->emu0;
	s->devices[1] = &s->emu1;
	s->devices[2] = &s->emu2;
	s->reply.n_devices = 3;
	s->reply.devices = s->devices;
	iommud__v1__dma_faults__init(&s->dmar0);
	iommud__v1__dma_faults__init(&s->emu1_faults);
	s->dmar0.source = "dmar0";
	s->dmar0.faults = 7;
	s->emu1_faults.source = "emu1";
	s->emu1_faults.managed_device = true;
	s->emu1_faults.faults = 3;
	s->faults[0] = &s->dmar0;
	s->faults[1] = &s->emu1_faults;
	s->reply.n_dma_faults = 2;
	s->reply.dma_faults = s->faults;
	iommud__v1__probe_status__init(&s->probes);
	s->detached[0] = "fentry: the kernel refused trampolines";
	s->detached[1] = "iommu_fault: no such tracepoint";
	s->probes.tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_KPROBE;
	s->probes.n_detached = 2;
	s->probes.detached = s->detached;
	s->probes.dropped_events = 9;
	s->probes.in_process = true;
	s->probes.attached = true;
	s->reply.probes = &s->probes;
}

static void fill_ceilings_refusals(struct sample_reply *s)
{
	iommud__v1__ceilings__init(&s->ceilings);
	s->ceilings = (Iommud__V1__Ceilings){.base = s->ceilings.base,
					     .max_maps = 58982,
					     .maps = 7,
					     .max_leases = 4096,
					     .leases = 1,
					     .max_pinned_bytes = 1ull << 40,
					     .pinned_bytes = 5 << 20,
					     .failed_releases = 2};
	s->reply.ceilings = &s->ceilings;
	iommud__v1__refused_connections__init(&s->per_uid);
	iommud__v1__refused_connections__init(&s->idle);
	s->per_uid = (Iommud__V1__RefusedConnections){
		.base = s->per_uid.base, .reason = "max-connections-per-uid", .connections = 11};
	s->idle = (Iommud__V1__RefusedConnections){
		.base = s->idle.base, .reason = "idle-timeout", .connections = 4};
	s->refused[0] = &s->per_uid;
	s->refused[1] = &s->idle;
	s->reply.n_refused_connections = 2;
	s->reply.refused_connections = s->refused;
	s->reply.rate_limited = 13;
	s->reply.kept_maps = 3;
	s->reply.kept_maps_taken_up = 1021;
	s->reply.kept_maps_given_up = 17;
	iommud__v1__descriptor_store__init(&s->store);
	s->store.capacity = 524288;
	s->store.stored = 37;
	s->store.set_aside = 2;
	s->reply.descriptor_store = &s->store;
}

/* Two VMMs of one label (one of them holding two devices), one unlimited VMM of another. */
static void fill_delegations(struct sample_reply *s)
{
	Iommud__V1__Delegation *d[] = {&s->vm1, &s->vm2, &s->vm3};

	for (size_t i = 0; i < 3; i++)
		iommud__v1__delegation__init(d[i]);
	s->vm1_devices[0] = "0000:00:03.0";
	s->vm1_devices[1] = "0000:00:03.1";
	s->vm2_devices[0] = "0000:00:04.0";
	s->vm3_devices[0] = "0000:00:05.0";
	s->vm1 = (Iommud__V1__Delegation){.base = s->vm1.base,
					  .delegation_id = 1,
					  .devices = s->vm1_devices,
					  .n_devices = 2,
					  .vmm_pid = 4242,
					  .tenant = "user alice",
					  .pinned_bytes = 128 << 20,
					  .pinned_bytes_limit = 200 << 20};
	s->vm2 = (Iommud__V1__Delegation){.base = s->vm2.base,
					  .delegation_id = 2,
					  .devices = s->vm2_devices,
					  .n_devices = 1,
					  .vmm_pid = 4343,
					  .tenant = "user alice",
					  .pinned_bytes = 1 << 30,
					  .pinned_bytes_limit = 2ull << 30};
	s->vm3 = (Iommud__V1__Delegation){.base = s->vm3.base,
					  .delegation_id = 3,
					  .devices = s->vm3_devices,
					  .n_devices = 1,
					  .vmm_pid = 4444,
					  .tenant = "group kvm",
					  .pinned_bytes = 64 << 20,
					  .pinned_bytes_limit = UINT64_MAX};
	for (size_t i = 0; i < 3; i++)
		s->delegations[i] = d[i];
	s->reply.n_delegations = 3;
	s->reply.delegations = s->delegations;
}

static void fill(struct sample_reply *s)
{
	memset(s, 0, sizeof(*s));
	iommud__v1__get_stats_reply__init(&s->reply);
	s->reply.uptime_seconds = 42;
	s->reply.connections = 3;
	s->reply.tenants = 2;
	s->reply.sessions = 4;
	s->reply.leases = 1;
	s->reply.rejected_packets = 5;
	s->reply.version = "1.2.3";
	fill_methods(s);
	fill_map_latency(s);
	fill_tenants_devices_probes(s);
	fill_ceilings_refusals(s);
	fill_delegations(s);
}

/* The text metrics_render writes; the caller frees it. */
static char *render(const Iommud__V1__GetStatsReply *reply)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	CHECK(out != NULL);
	CHECK_OK(metrics_render(reply, out));
	CHECK(fclose(out) == 0);
	return text;
}

static bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)); p++)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	return false;
}

#define CHECK_LINE(text, line)                                                                     \
	do {                                                                                       \
		if (!has_line(text, line)) {                                                       \
			(void)fprintf(stderr, "no line '%s' in:\n%s", line, text);                 \
			CHECK(has_line(text, line));                                               \
		}                                                                                  \
	} while (0)

static size_t count(const char *text, const char *needle)
{
	size_t n = 0;

	for (const char *p = text; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* ---- cases --------------------------------------------------------------------------------- */

TEST(seconds_are_exact_decimals)
{
	char buf[METRICS_SECONDS_MAX];

	metrics_seconds(0, buf);
	CHECK(strcmp(buf, "0") == 0);
	metrics_seconds(2, buf);
	CHECK(strcmp(buf, "0.000000002") == 0);
	metrics_seconds(1000000000, buf);
	CHECK(strcmp(buf, "1") == 0);
	metrics_seconds(1500000000, buf);
	CHECK(strcmp(buf, "1.5") == 0);
	metrics_seconds(UINT64_C(1) << 36, buf);
	CHECK(strcmp(buf, "68.719476736") == 0);
	metrics_seconds(UINT64_MAX, buf);
	CHECK(strcmp(buf, "18446744073.709551615") == 0);
}

TEST(daemon_down_is_up_0_alone)
{
	char *text = render(NULL);

	CHECK(strcmp(text, "# HELP iommud_up 1 when the daemon answered this scrape's GetStats, "
			   "else 0.\n# TYPE iommud_up gauge\niommud_up 0\n") == 0);
	free(text);
}

TEST(daemon_gauges_and_build_info)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_up 1");
	CHECK_LINE(text, "iommud_build_info{version=\"1.2.3\"} 1");
	CHECK_LINE(text, "iommud_uptime_seconds 42");
	CHECK_LINE(text, "iommud_connections 3");
	CHECK_LINE(text, "iommud_tenants 2");
	CHECK_LINE(text, "iommud_sessions 4");
	CHECK_LINE(text, "iommud_leases 1");
	CHECK_LINE(text, "iommud_rejected_packets_total 5");
	CHECK_LINE(text, "iommud_nothing_remapped 0");
	free(text);
	/* A daemon on the emulated IOMMU says so, for an alert to catch. */
	s.reply.nothing_remapped = true;
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_nothing_remapped 1");
	free(text);
}

TEST(rpc_calls_errors_codes_and_cumulative_latency)
{
	static const char *const buckets[] = {"le=\"0.000000001\"} 1",	"le=\"0.000000003\"} 1",
					      "le=\"0.000000007\"} 3",	"le=\"0.000000015\"} 6",
					      "le=\"68.719476735\"} 6", "le=\"+Inf\"} 6"};
	struct sample_reply s;
	char *text, line[128];

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "# TYPE iommud_rpc_calls_total counter");
	CHECK_LINE(text, "iommud_rpc_calls_total{method=\"map\"} 6");
	CHECK_LINE(text, "iommud_rpc_calls_total{method=\"hello\"} 1");
	CHECK_LINE(text, "iommud_rpc_errors_total{method=\"map\"} 2");
	CHECK_LINE(text, "iommud_rpc_errors_total{method=\"hello\"} 0");
	CHECK_LINE(text, "iommud_rpc_responses_total{method=\"map\",code=\"OK\"} 4");
	CHECK_LINE(text, "iommud_rpc_responses_total{method=\"map\",code=\"NOT_FOUND\"} 2");
	CHECK_LINE(text, "# TYPE iommud_rpc_duration_seconds histogram");
	for (size_t i = 0; i < sizeof(buckets) / sizeof(buckets[0]); i++) {
		(void)snprintf(line, sizeof(line),
			       "iommud_rpc_duration_seconds_bucket{method=\"map\",%s", buckets[i]);
		CHECK_LINE(text, line);
	}
	CHECK_LINE(text, "iommud_rpc_duration_seconds_sum{method=\"map\"} 1.5");
	CHECK_LINE(text, "iommud_rpc_duration_seconds_count{method=\"map\"} 6");
	/* every bound, 1 ns to 2^36 - 1 ns, and +Inf; hello has no timing and so no histogram */
	CHECK_EQ(count(text, "iommud_rpc_duration_seconds_bucket{"), 37);
	CHECK_EQ(count(text, "method=\"hello\",le="), 0);
	free(text);
}

/* Bounds read back from the text and put to the daemon's own bucketing: each is the largest
 * duration its bucket holds, one nanosecond more falls in the next bucket, and the open-ended
 * last bucket has no bound but +Inf. */
TEST(each_bound_is_the_largest_duration_of_its_bucket)
{
	static const char prefix[] = "iommud_rpc_duration_seconds_bucket{method=\"map\",le=\"";
	struct sample_reply s;
	unsigned bucket = 0;
	char *text;

	fill(&s);
	text = render(&s.reply);
	for (const char *p = text; (p = strstr(p, prefix)); p++) {
		const char *le = p + sizeof(prefix) - 1;
		char *decimals;
		__u64 ns;

		if (strncmp(le, "+Inf\"", 5) == 0)
			break;
		/* whole seconds, then nine decimals: every bound is exact to the nanosecond */
		ns = strtoull(le, &decimals, 10) * 1000000000ull;
		CHECK(decimals[0] == '.' && strspn(decimals + 1, "0123456789") == 9 &&
		      decimals[10] == '"');
		ns += strtoull(decimals + 1, NULL, 10);
		CHECK_EQ(iommud_hist_bucket(ns), bucket);
		CHECK_EQ(iommud_hist_bucket(ns + 1), bucket + 1);
		bucket++;
	}
	CHECK_EQ(bucket, IOMMUD_HIST_BUCKETS - 1);
	free(text);
}

TEST(map_path_by_op_layer_size_and_tenant)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_map_operations_total{op=\"map\",layer=\"ioctl\",size_class=\"2m\","
			 "tenant=\"group \\\"kvm\\\"\\\\\\n\"} 3");
	CHECK_LINE(text, "iommud_map_bytes_total{op=\"map\",layer=\"ioctl\",size_class=\"2m\","
			 "tenant=\"group \\\"kvm\\\"\\\\\\n\"} 8388608");
	/* the open-ended last bucket and those beyond count only in +Inf, which is never below
	 * the buckets' total */
	CHECK_LINE(text,
		   "iommud_map_duration_seconds_bucket{op=\"map\",layer=\"ioctl\","
		   "size_class=\"2m\",tenant=\"group \\\"kvm\\\"\\\\\\n\",le=\"68.719476735\"} 1");
	CHECK_LINE(text, "iommud_map_duration_seconds_bucket{op=\"map\",layer=\"ioctl\","
			 "size_class=\"2m\",tenant=\"group \\\"kvm\\\"\\\\\\n\",le=\"+Inf\"} 4");
	CHECK_LINE(text, "iommud_map_duration_seconds_count{op=\"map\",layer=\"ioctl\","
			 "size_class=\"2m\",tenant=\"group \\\"kvm\\\"\\\\\\n\"} 4");
	CHECK_LINE(text, "iommud_map_duration_seconds_sum{op=\"map\",layer=\"ioctl\","
			 "size_class=\"2m\",tenant=\"group \\\"kvm\\\"\\\\\\n\"} 0.00000025");
	/* counts without timing: counters, no histogram */
	CHECK_LINE(text,
		   "iommud_map_operations_total{op=\"unmap\",layer=\"iommu\",size_class=\"4k\","
		   "tenant=\"\"} 7");
	CHECK_LINE(text, "iommud_map_bytes_total{op=\"unmap\",layer=\"iommu\",size_class=\"4k\","
			 "tenant=\"\"} 28672");
	CHECK_EQ(count(text, "iommud_map_duration_seconds_count{op=\"unmap\""), 0);
	/* a size class this build does not know keeps its number */
	CHECK_LINE(text, "iommud_map_operations_total{op=\"map\",layer=\"in_process\","
			 "size_class=\"99\",tenant=\"other\"} 0");
	free(text);
}

TEST(tenant_usage_and_limits)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_tenant_members{tenant=\"user alice\"} 1");
	CHECK_LINE(text, "iommud_tenant_sessions{tenant=\"user alice\"} 3");
	CHECK_LINE(text, "iommud_tenant_leases{tenant=\"user alice\"} 1");
	CHECK_LINE(text, "iommud_tenant_domains{tenant=\"user alice\"} 2");
	CHECK_LINE(text, "iommud_tenant_domains_limit{tenant=\"user alice\"} 64");
	CHECK_LINE(text, "iommud_tenant_mappings{tenant=\"user alice\"} 5");
	CHECK_LINE(text, "iommud_tenant_mappings_limit{tenant=\"user alice\"} 65536");
	CHECK_LINE(text, "iommud_tenant_pinned_bytes{tenant=\"user alice\"} 3145728");
	CHECK_LINE(text, "iommud_tenant_pinned_bytes_limit{tenant=\"user alice\"} 17179869184");
	CHECK_LINE(text, "iommud_tenant_leases_limit{tenant=\"user alice\"} 16");
	CHECK_LINE(text, "iommud_tenant_page_table_bytes{tenant=\"user alice\"} 12288");
	CHECK_LINE(text, "iommud_tenant_page_table_bytes_limit{tenant=\"user alice\"} 67108864");
	CHECK_LINE(text, "iommud_tenant_maps{tenant=\"user alice\"} 2");
	CHECK_LINE(text, "iommud_tenant_maps_limit{tenant=\"user alice\"} 1024");
	free(text);
}

TEST(ceilings_store_refusals_and_rate_limits)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_maps 7");
	CHECK_LINE(text, "iommud_maps_limit 58982");
	CHECK_LINE(text, "iommud_leases_limit 4096");
	CHECK_LINE(text, "iommud_pinned_bytes 5242880");
	CHECK_LINE(text, "iommud_pinned_bytes_limit 1099511627776");
	CHECK_LINE(text, "# TYPE iommud_failed_releases_total counter");
	CHECK_LINE(text, "iommud_failed_releases_total 2");
	CHECK_LINE(text, "# TYPE iommud_refused_connections_total counter");
	CHECK_LINE(text, "iommud_refused_connections_total{reason=\"max-connections-per-uid\"} 11");
	CHECK_LINE(text, "iommud_refused_connections_total{reason=\"idle-timeout\"} 4");
	CHECK_LINE(text, "# TYPE iommud_rate_limited_total counter");
	CHECK_LINE(text, "iommud_rate_limited_total 13");
	CHECK_LINE(text, "# TYPE iommud_kept_maps gauge");
	CHECK_LINE(text, "iommud_kept_maps 3");
	CHECK_LINE(text, "# TYPE iommud_kept_maps_taken_up_total counter");
	CHECK_LINE(text, "iommud_kept_maps_taken_up_total 1021");
	CHECK_LINE(text, "# TYPE iommud_kept_maps_given_up_total counter");
	CHECK_LINE(text, "iommud_kept_maps_given_up_total 17");
	CHECK_LINE(text, "# TYPE iommud_descriptor_store_capacity gauge");
	CHECK_LINE(text, "iommud_descriptor_store_capacity 524288");
	CHECK_LINE(text, "iommud_descriptor_store_stored 37");
	CHECK_LINE(text, "iommud_descriptor_store_set_aside 2");
	free(text);
	/* A ceiling of 0 is none: no limit is claimed, while usage stays. */
	s.ceilings.max_pinned_bytes = 0;
	text = render(&s.reply);
	CHECK_EQ(count(text, "iommud_pinned_bytes_limit"), 0);
	CHECK_LINE(text, "iommud_pinned_bytes 5242880");
	free(text);
	/* A daemon without ceilings (an older one) leaves their families out, and one without a
	 * descriptor store (no service manager keeps one) its store's. */
	s.reply.ceilings = NULL;
	s.reply.descriptor_store = NULL;
	text = render(&s.reply);
	CHECK_EQ(count(text, "iommud_maps"), 0);
	CHECK_EQ(count(text, "iommud_failed_releases_total"), 0);
	CHECK_EQ(count(text, "iommud_descriptor_store"), 0);
	free(text);
}

TEST(devices_by_state_and_faults)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_devices{state=\"free\"} 1");
	CHECK_LINE(text, "iommud_devices{state=\"bound\"} 0");
	CHECK_LINE(text, "iommud_devices{state=\"attached\"} 1");
	CHECK_LINE(text, "iommud_devices{state=\"quarantined\"} 1");
	CHECK_LINE(text, "iommud_devices{state=\"delegated\"} 0");
	CHECK_LINE(text, "iommud_device_dma_faults_total{device=\"emu0\"} 0");
	CHECK_LINE(text, "iommud_device_dma_faults_total{device=\"emu1\"} 3");
	CHECK_LINE(text, "iommud_dma_faults_total{source=\"dmar0\"} 7");
	CHECK_LINE(text, "iommud_dma_faults_total{source=\"emu1\"} 3");
	free(text);
}

TEST(delegations_by_tenant_label_never_by_pid)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	s.emu0.state = "delegated";
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_devices{state=\"delegated\"} 1");
	CHECK_LINE(text, "iommud_delegations{tenant=\"user alice\"} 2");
	CHECK_LINE(text, "iommud_delegations{tenant=\"group kvm\"} 1");
	CHECK_LINE(text, "iommud_delegated_devices{tenant=\"user alice\"} 3");
	CHECK_LINE(text, "iommud_delegated_devices{tenant=\"group kvm\"} 1");
	CHECK_LINE(text, "iommud_delegated_pinned_bytes{tenant=\"user alice\"} 1207959552");
	CHECK_LINE(text, "iommud_delegated_pinned_bytes{tenant=\"group kvm\"} 67108864");
	CHECK_LINE(text, "iommud_delegated_pinned_bytes_limit{tenant=\"user alice\"} 2357198848");
	CHECK_LINE(text, "iommud_delegated_pinned_bytes_limit{tenant=\"group kvm\"} +Inf");
	CHECK_EQ(count(text, "4242"), 0);
	CHECK_EQ(count(text, "pid"), 0);
	free(text);

	/* The last VMM gone, its label's series go with it. */
	s.reply.n_delegations = 0;
	text = render(&s.reply);
	CHECK_EQ(count(text, "iommud_delegat"), 0);
	free(text);
}

/* Two finite limits whose sum passes 2^64 are no bound a gauge can show: +Inf, not the wrapped
 * remainder below what is pinned. */
TEST(delegated_limits_past_uint64_are_unlimited)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	s.vm1.pinned_bytes_limit = 1ull << 63;
	s.vm2.pinned_bytes_limit = 1ull << 63;
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_delegated_pinned_bytes_limit{tenant=\"user alice\"} +Inf");
	CHECK_LINE(text, "iommud_delegated_pinned_bytes{tenant=\"user alice\"} 1207959552");
	free(text);
}

TEST(probe_tier_detached_and_dropped)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	CHECK_LINE(text, "iommud_probe_tier{tier=\"kprobe\"} 1");
	CHECK_LINE(text, "iommud_probe_tier{tier=\"fentry\"} 0");
	CHECK_LINE(text, "iommud_probe_tier{tier=\"tracepoint\"} 0");
	CHECK_LINE(text, "iommud_probe_tier{tier=\"off\"} 0");
	CHECK_EQ(count(text, "tier=\"unspecified\""), 0);
	CHECK_LINE(text, "iommud_probe_in_process 1");
	CHECK_LINE(text, "iommud_probe_attached 1");
	CHECK_LINE(text, "iommud_probes_detached 2");
	CHECK_LINE(text, "iommud_probe_dropped_events_total 9");
	free(text);
}

/* The family a sample line belongs to: its name less a histogram's suffix when that family
 * is the histogram just declared. */
static void family_of(const char *line, const char *typed, char *family, size_t size)
{
	static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
	size_t n = strcspn(line, "{ ");

	(void)snprintf(family, size, "%.*s", (int)n, line);
	for (size_t i = 0; i < 3; i++) {
		size_t s = strlen(suffixes[i]);

		if (n > s && strcmp(family + n - s, suffixes[i]) == 0 &&
		    strncmp(family, typed, n - s) == 0 && typed[n - s] == '\0')
			family[n - s] = '\0';
	}
}

TEST(every_family_typed_once_and_contiguous)
{
	struct sample_reply s;
	char *text, *save = NULL, typed[128] = "", family[128], seen[4096] = " ";
	unsigned families = 0;

	fill(&s);
	text = render(&s.reply);
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char name[130];

		if (strncmp(line, "# HELP ", 7) == 0)
			continue;
		if (sscanf(line, "# TYPE %127s", typed) == 1) {
			(void)snprintf(name, sizeof(name), " %s ", typed);
			CHECK(strstr(seen, name) == NULL); /* once */
			CHECK(strlen(seen) + strlen(typed) + 2 < sizeof(seen));
			strcat(strcat(seen, typed), " ");
			families++;
			continue;
		}
		family_of(line, typed, family, sizeof(family));
		if (strcmp(family, typed) != 0)
			(void)fprintf(stderr, "sample '%s' outside its family (%s)\n", line, typed);
		CHECK(strcmp(family, typed) == 0);
	}
	CHECK_EQ(families, 57);
	free(text);
}

TEST(promtool_accepts_every_family)
{
	struct sample_reply s;
	char *text;

	fill(&s);
	text = render(&s.reply);
	check_with_promtool(text);
	free(text);
}
