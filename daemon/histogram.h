/* SPDX-License-Identifier: MIT */
/*
 * The daemon's own durations (RPC latency), kept in the map path's histogram shape
 * (probes/iommud_probes.h: log2 buckets of nanoseconds), so that every latency iommud reports
 * reads the same way. Nothing here allocates: the fast path takes one clock reading at each
 * end and one bucket increment.
 */
#ifndef IOMMUD_HISTOGRAM_H
#define IOMMUD_HISTOGRAM_H

#include <linux/types.h> /* for probes/iommud_probes.h */
#include <stddef.h>
#include <stdint.h>

#include "probes/iommud_probes.h"

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t monotonic_ns(void);

/* Counts one duration of ns nanoseconds; histogram_add_n counts n of them. */
void histogram_add(struct iommud_hist *h, uint64_t ns);
void histogram_add_n(struct iommud_hist *h, uint64_t ns, uint64_t n);
/* histogram_add_n where several threads may add to h at once. */
void histogram_add_shared(struct iommud_hist *h, uint64_t ns, uint64_t n);

/* How many buckets a reply carries: up to the last non-empty one (the schema leaves out the
 * empty ones at the end), 0 for a histogram without timing. */
size_t histogram_used_buckets(const struct iommud_hist *h);

#endif
