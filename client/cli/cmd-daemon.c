/* SPDX-License-Identifier: MIT */
/* iommuctl daemon reexec: the daemon executed again in place, its leases kept. */
#include "cli.h"

static const char daemon_reexec_help[] =
	"Has iommud execute its binary again in place (the new one, after an upgrade replaced\n"
	"the file), passing on its socket, its state record and the memory files its leases\n"
	"map: named leases keep their devices, domains and mappings, as across a crash; every\n"
	"connection drops. For root and observers allowed to write (a section with stats = all\n"
	"and access = write), and only where a service manager keeps the daemon's descriptor\n"
	"store (docs/operations.md, \"Surviving a restart\"). systemd's ExecReload= can send\n"
	"SIGUSR2 instead.\n";

const struct cmd_entry cmd_daemon_reexec_entry = {
	.name = "daemon reexec",
	.summary = "Re-executes iommud in place, keeping the leases.",
	.help = daemon_reexec_help,
	.examples = "  sudo iommuctl daemon reexec\n",
	.method = IOMMUD__V1__REQUEST__METHOD_DAEMON_REEXEC,
};
