/* SPDX-License-Identifier: MIT */
/* iommuctl stats: the daemon's counters. */
#include "cli.h"
#include "output.h"

static const char stats_help[] =
	"Shows how long iommud has run, its connections, tenants and sessions, the packets it\n"
	"rejected as malformed, your tenant's quota, and for each method how many calls it\n"
	"answered and how many of them failed.\n";

static void show_methods(const Iommud__V1__GetStatsReply *s)
{
	list_begin("methods", "METHOD CALLS ERRORS");
	for (size_t i = 0; i < s->n_methods; i++) {
		obj_begin(NULL);
		field("method", STR, 0, s->methods[i]->method);
		field("calls", NUM, s->methods[i]->calls, NULL);
		field("errors", NUM, s->methods[i]->errors, NULL);
		obj_end();
	}
	list_end();
}

static void show_stats(const void *msg, Iommud__V1__Response *r)
{
	const Iommud__V1__GetStatsReply *s = r->get_stats;

	(void)msg;
	obj_begin(NULL);
	field("uptime_seconds", NUM, s->uptime_seconds, NULL);
	field("connections", NUM, s->connections, NULL);
	field("tenants", NUM, s->tenants, NULL);
	field("sessions", NUM, s->sessions, NULL);
	field("rejected_packets", NUM, s->rejected_packets, NULL);
	show_quota(s->quota);
	show_methods(s);
	obj_end();
}

const struct cmd_entry cmd_stats_entry = {
	.name = "stats",
	.summary = "Shows the daemon's counters.",
	.help = stats_help,
	.examples = "  iommuctl stats\n",
	.method = IOMMUD__V1__REQUEST__METHOD_GET_STATS,
	.show = show_stats,
};
