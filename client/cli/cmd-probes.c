/* SPDX-License-Identifier: MIT */
/* iommuctl probes attach|detach|status: the daemon's map path probes switched at run time. */
#include <names.h>

#include "cli.h"
#include "output.h"

#define PROBES_NOTE                                                                                \
	"The probes are the BPF programs iommud loads at start to time the kernel's map path\n"    \
	"at the tier the kernel allowed (fentry, kprobe or tracepoint); on the emulated\n"         \
	"backend, the daemon's own timing of its map path is switched with them (at tier off\n"    \
	"it runs and cannot be switched). Detached, they stay loaded and their histograms keep\n"  \
	"what they counted, but count nothing more and cost the kernel's functions nothing\n"      \
	"(the emulated backend still reads the clock around each call); attached again, they\n"    \
	"count on. A restart, or 'iommuctl daemon reexec', attaches them.\n"                       \
	"Switching is for root and observers allowed to write (a configuration section with\n"     \
	"stats = all and access = write); the daemon logs each switch, and a request for the\n"    \
	"state they are in as such. Refused (FAILED_PRECONDITION) when the tier is off: no\n"      \
	"programs were loaded, and the daemon's start log says why (docs/operations.md, \"Map\n"   \
	"path probes\").\n"

static const char probes_attach_help[] =
	"Puts iommud's map path probes back on the kernel's functions after 'iommuctl probes\n"
	"detach', and shows the tier and whether they are attached. When the kernel refuses\n"
	"some program, the probes stay not attached (attached: no; the others count on), the\n"
	"program is listed under not_attached in 'iommuctl probes status', the exit status is\n"
	"1, and running 'iommuctl probes attach' again retries it.\n"
	"\n" PROBES_NOTE;

static const char probes_detach_help[] =
	"Takes iommud's map path probes off the kernel's functions, for an operator who\n"
	"suspects their cost or a kernel problem with them, without restarting the daemon,\n"
	"and shows the tier and whether they are attached.\n"
	"\n" PROBES_NOTE;

static const char probes_status_help[] =
	"Shows how iommud's map path is watched: the probe tier, whether the probes are\n"
	"attached now, whether the map path is timed inside the daemon, whether the IOMMU\n"
	"driver's calls are timed or only counted (driver_latency, the daemon's\n"
	"probe-driver-latency), the events the probes lost (observers only) and each program\n"
	"that could not be attached, with why ('iommuctl stats' shows the same among the\n"
	"daemon's other counters). Anyone with read access may ask.\n";

static void show_switched(Iommud__V1__ProbeTier tier, bool attached)
{
	const char *name = iommud_name(&iommud_probe_tier_names, tier);

	/* As 'probes status' and 'stats' show them, so scripts read .probes.attached alike. */
	obj_begin(NULL);
	obj_begin("probes");
	field("probe_tier", STR, 0, name ? name : "?");
	field("attached", BOOL, attached, NULL);
	obj_end();
	obj_end();
}

static void set_probes(bool attached)
{
	Iommud__V1__ProbeTier tier;
	bool now;

	cli_check(iommuctl_set_probes(cli_connection(), attached, &tier, &now));
	show_switched(tier, now);
	if (attached && !now)
		fail(EXIT_REFUSED,
		     "the kernel refused to attach some of the probes again: they stay detached "
		     "('iommuctl probes status' lists them under not_attached); 'iommuctl probes "
		     "attach' retries them");
}

static void cmd_probes_attach_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	(void)self;
	(void)args;
	set_probes(true);
}

static void cmd_probes_detach_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	(void)self;
	(void)args;
	set_probes(false);
}

static void show_probe_status(const void *msg, Iommud__V1__Response *reply)
{
	(void)msg;
	obj_begin(NULL);
	show_probes(reply->get_stats->probes);
	obj_end();
}

const struct cmd_entry cmd_probes_attach_entry = {
	.name = "probes attach",
	.summary = "Attaches iommud's map path probes again.",
	.help = probes_attach_help,
	.examples = "  sudo iommuctl probes attach\n",
	.exec = cmd_probes_attach_exec,
};

const struct cmd_entry cmd_probes_detach_entry = {
	.name = "probes detach",
	.summary = "Detaches iommud's map path probes, keeping them loaded.",
	.help = probes_detach_help,
	.examples = "  sudo iommuctl probes detach\n"
		    "  sudo iommuctl --json probes detach\n",
	.exec = cmd_probes_detach_exec,
};

const struct cmd_entry cmd_probes_status_entry = {
	.name = "probes status",
	.summary = "Shows the probe tier and whether the probes are attached.",
	.help = probes_status_help,
	.examples = "  iommuctl probes status\n"
		    "  iommuctl --json probes status | jq .probes.attached\n",
	.method = IOMMUD__V1__REQUEST__METHOD_GET_STATS,
	.show = show_probe_status,
};
