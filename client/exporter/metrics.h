/* SPDX-License-Identifier: MIT */
/*
 * The daemon's GetStats reply as Prometheus reads it: the text exposition format, version
 * 0.0.4. Base units (seconds, bytes), counters named *_total, histograms cumulative with `le`
 * in seconds, HELP and TYPE for every family that has a sample. Labels come from the reply's
 * own bounded sets (methods, codes, tenant labels, devices), never from process ids.
 *
 * The family names and labels are an interface: docs/operations.md lists them, and dashboards
 * and alerts depend on them. Add families; do not rename them.
 */
#ifndef IOMMUD_EXPORTER_METRICS_H
#define IOMMUD_EXPORTER_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include <iommud.pb-c.h>

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Writes every family to out: stats NULL means the daemon did not answer, which is said as
 * iommud_up 0 alone. Returns 0, or -EIO when out failed. */
int metrics_render(const Iommud__V1__GetStatsReply *stats, FILE *out);

/* Writes ns nanoseconds as exact decimal seconds ("0.000000003", "68.719476735", "1") into buf
 * (room for METRICS_SECONDS_MAX bytes). */
#define METRICS_SECONDS_MAX 32
void metrics_seconds(uint64_t ns, char buf[METRICS_SECONDS_MAX]);

#endif
