// SPDX-License-Identifier: MIT
#include "probes.h"

#include <errno.h>
#include <stdlib.h>

/* In-process histograms, indexed as the kernel side's keys are. */
#define IN_PROCESS_SLOTS (IOMMUD_OP_COUNT * IOMMUD_SIZE_COUNT * IOMMUD_TENANT_SLOTS)

struct probes {
	Iommud__V1__ProbeTier tier;
	bool in_process;
	const char *detached[1];
	size_t n_detached;
	struct iommud_hist *local; /* IN_PROCESS_SLOTS of them when in_process, else NULL */
};

int probes_start(const struct probes_options *opts, struct probes **ret_probes)
{
	struct probes *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->in_process = opts->in_process;
	if (p->in_process && !(p->local = calloc(IN_PROCESS_SLOTS, sizeof(*p->local)))) {
		free(p);
		return -ENOMEM;
	}
	p->tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF;
	p->detached[p->n_detached++] = "kernel map path: this build of iommud has no BPF programs";
	*ret_probes = p;
	return 0;
}

void probes_stop(struct probes *p)
{
	if (!p)
		return;
	free(p->local);
	free(p);
}

Iommud__V1__ProbeTier probes_tier(const struct probes *p)
{
	return p->tier;
}

bool probes_in_process(const struct probes *p)
{
	return p->in_process;
}

size_t probes_detached(const struct probes *p, const char *const **ret_lines)
{
	*ret_lines = p->detached;
	return p->n_detached;
}

uint64_t probes_dropped_events(const struct probes *p)
{
	(void)p;
	return 0;
}

static size_t local_index(enum iommud_map_op op, __u8 size_class, unsigned tenant)
{
	return ((size_t)tenant * IOMMUD_OP_COUNT + op) * IOMMUD_SIZE_COUNT + size_class;
}

void probes_record(struct probes *p, enum iommud_map_op op, uint64_t bytes, unsigned tenant,
		   uint64_t ns)
{
	struct iommud_hist *h;

	if (!p->local || op >= IOMMUD_OP_COUNT || tenant >= IOMMUD_TENANT_SLOTS)
		return;
	h = &p->local[local_index(op, iommud_size_class(bytes), tenant)];
	h->buckets[iommud_hist_bucket(ns)]++;
	h->count++;
	h->sum_ns += ns;
	h->bytes += bytes;
}

int probes_read(struct probes *p,
		int (*visit)(const struct iommud_hist_key *key, const struct iommud_hist *hist,
			     void *arg),
		void *arg)
{
	if (!p->local)
		return 0;
	for (unsigned tenant = 0; tenant < IOMMUD_TENANT_SLOTS; tenant++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			for (unsigned size = 0; size < IOMMUD_SIZE_COUNT; size++) {
				const struct iommud_hist *h =
					&p->local[local_index(op, size, tenant)];
				struct iommud_hist_key key = {.tenant = tenant,
							      .op = (__u8)op,
							      .layer = IOMMUD_LAYER_IN_PROCESS,
							      .size_class = (__u8)size};
				int rc;

				if (!h->count)
					continue;
				rc = visit(&key, h, arg);
				if (rc)
					return rc;
			}
	return 0;
}
