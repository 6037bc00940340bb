// SPDX-License-Identifier: MIT
/*
 * The probes module: where a duration and a length fall in the histograms (the same inline
 * functions the BPF programs run), the daemon's own histograms of the emulated map path, and
 * the loader's promise never to fail for want of a kernel feature.
 */
#include <linux/types.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "probes/probes.h"

#define TIER(t) IOMMUD__V1__PROBE_TIER__PROBE_TIER_##t

/* floor(log2(v)) the slow way, capped as the histogram is. */
static unsigned reference_bucket(uint64_t v)
{
	unsigned b = 0;

	while (v >= 2) {
		v >>= 1;
		b++;
	}
	return b < IOMMUD_HIST_BUCKETS ? b : IOMMUD_HIST_BUCKETS - 1;
}

TEST(bucket_edges)
{
	CHECK_EQ(iommud_hist_bucket(0), 0u);
	CHECK_EQ(iommud_hist_bucket(1), 0u);
	for (unsigned i = 1; i < 64; i++) {
		uint64_t low = 1ull << i;
		unsigned expected = i < IOMMUD_HIST_BUCKETS ? i : IOMMUD_HIST_BUCKETS - 1;

		CHECK_EQ(iommud_hist_bucket(low), expected);
		CHECK_EQ(iommud_hist_bucket(low - 1), reference_bucket(low - 1));
		CHECK_EQ(iommud_hist_bucket(low + 1), reference_bucket(low + 1));
	}
	CHECK_EQ(iommud_hist_bucket(UINT64_MAX), (unsigned)IOMMUD_HIST_BUCKETS - 1);
}

TEST(bucket_matches_reference)
{
	uint64_t v = 0x9e3779b97f4a7c15ull;

	for (unsigned i = 0; i < 100000; i++) {
		/* xorshift, then a random width so that every bucket is hit */
		v ^= v << 13;
		v ^= v >> 7;
		v ^= v << 17;
		CHECK_EQ(iommud_hist_bucket(v >> (v % 64)), reference_bucket(v >> (v % 64)));
	}
}

TEST(size_classes)
{
	CHECK_EQ(iommud_size_class(4096), IOMMUD_SIZE_4K);
	CHECK_EQ(iommud_size_class(2ull << 20), IOMMUD_SIZE_2M);
	CHECK_EQ(iommud_size_class(1ull << 30), IOMMUD_SIZE_1G);
	CHECK_EQ(iommud_size_class(8192), IOMMUD_SIZE_OTHER);
	CHECK_EQ(iommud_size_class(0), IOMMUD_SIZE_OTHER);
	CHECK_EQ(iommud_size_class(UINT64_MAX), IOMMUD_SIZE_OTHER);
}

/* Every histogram the kernel side keeps has an index of its own, each tenant slot's in a block
 * of IOMMUD_HISTS_PER_TENANT after the slot before it, so that an array of n slots' worth holds
 * exactly the slots below n. */
TEST(histogram_indexes)
{
	static bool used[IOMMUD_TENANT_SLOTS * IOMMUD_HISTS_PER_TENANT];

	for (unsigned tenant = 0; tenant < IOMMUD_TENANT_SLOTS; tenant++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			for (unsigned layer = 0; layer < IOMMUD_KERNEL_LAYERS; layer++)
				for (unsigned size = 0; size < IOMMUD_SIZE_COUNT; size++) {
					__u32 i = iommud_hist_index(tenant, op, layer, size);

					CHECK(i / IOMMUD_HISTS_PER_TENANT == tenant);
					CHECK(!used[i]);
					used[i] = true;
				}
}

struct seen {
	unsigned n;
	struct iommud_hist_key key;
	struct iommud_hist hist;
};

static int remember(const struct iommud_hist_key *key, const struct iommud_hist *hist, void *arg)
{
	struct seen *seen = arg;

	if (key->layer != IOMMUD_LAYER_IN_PROCESS)
		return 0;
	seen->n++;
	seen->key = *key;
	seen->hist = *hist;
	return 0;
}

TEST(in_process_histograms)
{
	struct probes_options opts = {.max_tier = TIER(OFF), .in_process = true};
	struct seen seen = {0};
	struct probes *p;

	CHECK_OK(probes_start(&opts, &p));
	CHECK(probes_in_process(p));
	probes_record(p, IOMMUD_OP_UNMAP, 2ull << 20, 3, 1000);
	/* Several timed together count each, with their bytes. */
	probes_record_n(p, IOMMUD_OP_UNMAP, 2ull << 20, 3, 1023, 2);
	probes_record(p, IOMMUD_OP_UNMAP, 2ull << 20, 3, 1024);
	/* slots past the kernel side's are refused, not written out of bounds */
	probes_record(p, IOMMUD_OP_MAP, 4096, IOMMUD_TENANT_SLOTS, 1);
	CHECK_OK(probes_read(p, remember, &seen));
	CHECK_EQ(seen.n, 1u);
	CHECK_EQ(seen.key.tenant, 3u);
	CHECK_EQ(seen.key.op, IOMMUD_OP_UNMAP);
	CHECK_EQ(seen.key.size_class, IOMMUD_SIZE_2M);
	CHECK_EQ(seen.hist.count, 4u);
	CHECK_EQ(seen.hist.sum_ns, 4070u);
	CHECK_EQ(seen.hist.bytes, 4 * (2ull << 20));
	CHECK_EQ(seen.hist.buckets[9], 3u);
	CHECK_EQ(seen.hist.buckets[10], 1u);
	probes_stop(p);
}

TEST(off_by_configuration)
{
	struct probes_options opts = {.max_tier = TIER(OFF)};
	const char *const *lines;
	struct seen seen = {0};
	struct probes *p;

	CHECK_OK(probes_start(&opts, &p));
	CHECK_EQ(probes_tier(p), TIER(OFF));
	CHECK_EQ(probes_detached(p, &lines), 1u);
	CHECK(strstr(lines[0], "off by configuration"));
	/* nothing is kept, and registering is harmless */
	probes_record(p, IOMMUD_OP_MAP, 4096, 1, 100);
	CHECK_OK(probes_read(p, remember, &seen));
	CHECK_EQ(seen.n, 0u);
	CHECK_OK(probes_register_fd(p, 3, 1));
	probes_unregister_fd(p, 3);
	CHECK_EQ(probes_dropped_events(p), 0u);
	probes_stop(p);
}

/* Whatever this kernel allows (this host: kprobes and tracepoints, not fentry; unprivileged:
 * nothing), starting succeeds, and every tier above the one reached has its reason. */
TEST(falls_back_and_says_why)
{
	struct probes_options opts = {.max_tier = TIER(FENTRY)};
	const char *const *lines;
	struct probes *p;
	size_t n;

	CHECK_OK(probes_start(&opts, &p));
	n = probes_detached(p, &lines);
	(void)printf("tier %d\n", (int)probes_tier(p));
	for (size_t i = 0; i < n; i++)
		(void)printf("not attached: %s\n", lines[i]);
	CHECK(probes_tier(p) >= TIER(OFF) && probes_tier(p) <= TIER(FENTRY));
	if (probes_tier(p) < TIER(FENTRY))
		CHECK(n > 0);
	if (probes_tier(p) > TIER(OFF)) {
		CHECK_OK(probes_register_fd(p, 3, 1));
		probes_unregister_fd(p, 3);
		CHECK_OK(probes_register_cgroup(p, 1, 1));
		probes_unregister_cgroup(p, 1);
	}
	probes_stop(p);
}

/* Whether /proc/kallsyms lists a symbol of that name; -1 when it cannot be read. */
static int kallsyms_has(const char *name)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	char line[512], symbol[256];
	int found = 0;

	if (!f)
		return -1;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "%*s %*s %255s", symbol) == 1 && strcmp(symbol, name) == 0;
	(void)fclose(f);
	return found;
}

/* A kernel whose kallsyms leaves out the per-CPU variable the preempt count is read through
 * (this host's: CONFIG_KALLSYMS_ALL off) refuses every program naming it; the loader then
 * takes the object built without it, which loads, and says what is lost. */
TEST(plain_object_where_per_cpu_variables_have_no_address)
{
	struct probes_options opts = {.max_tier = TIER(FENTRY)};
	const char *const *lines;
	bool said = false;
	struct probes *p;
	size_t n;

	if (geteuid() != 0)
		SKIP("loading BPF programs needs root");
	if (kallsyms_has("__preempt_count") != 0 || kallsyms_has("pcpu_hot") != 0 ||
	    kallsyms_has("iommu_map") != 1)
		SKIP("this kernel's kallsyms lists its per-CPU variables (or cannot be read)");
	CHECK_OK(probes_start(&opts, &p));
	n = probes_detached(p, &lines);
	for (size_t i = 0; i < n; i++)
		said |= strstr(lines[i], "CONFIG_KALLSYMS_ALL") != NULL;
	CHECK(said);
	CHECK(probes_tier(p) > TIER(OFF));
	probes_stop(p);
}
