/* SPDX-License-Identifier: MIT */
/*
 * iommuctl: iommud from the command line, built on libiommuctl. One command per run, for
 * people (aligned tables) and scripts (--json: one JSON object on standard output).
 *
 * This file holds the table of commands, the global options, the help that spans commands,
 * and the exit statuses; each command lives in its cmd-*.c file (see cli.h).
 */
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "output.h"

static const struct cmd_entry *const commands[] = {
	&cmd_hello_entry,	  &cmd_devices_entry,	    &cmd_device_entry,
	&cmd_domains_entry,	  &cmd_domain_alloc_entry,  &cmd_domain_free_entry,
	&cmd_attach_entry,	  &cmd_replace_entry,	    &cmd_detach_entry,
	&cmd_map_entry,		  &cmd_unmap_entry,	    &cmd_mappings_entry,
	&cmd_ranges_entry,	  &cmd_dirty_entry,	    &cmd_stats_entry,
	&cmd_lease_release_entry, &cmd_daemon_reexec_entry, &cmd_delegate_exec_entry,
	&cmd_delegate_qmp_entry,  &cmd_delegations_entry,   &cmd_probes_attach_entry,
	&cmd_probes_detach_entry, &cmd_probes_status_entry,
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

enum { GLOBAL_SOCKET, GLOBAL_JSON, GLOBAL_LEASE, GLOBAL_RECONNECT, GLOBAL_HELP, GLOBAL_VERSION };
static const struct cmd_option global_options[] = {
	[GLOBAL_SOCKET] = {"socket", 's', OPT_STRING, "PATH",
			   "iommud's socket (default: $IOMMUD_SOCKET, else " IOMMUCTL_DEFAULT_SOCKET
			   ")"},
	[GLOBAL_JSON] = {"json", 'j', OPT_FLAG, NULL, "print one JSON object instead of text"},
	[GLOBAL_LEASE] = {"lease", 'l', OPT_STRING, "NAME",
			  "work in the named session NAME, which outlives iommuctl"},
	[GLOBAL_RECONNECT] = {"reconnect-timeout", 'r', OPT_STRING, "SECONDS",
			      "with --lease, how long to wait for an iommud that restarts "
			      "mid-command before giving up (default 30; 0: do not reconnect)"},
	[GLOBAL_HELP] = {"help", 'h', OPT_FLAG, NULL, "show this text"},
	[GLOBAL_VERSION] = {"version", 'V', OPT_FLAG, NULL, "show iommuctl's version"},
	{},
};

static const char exit_status_text[] =
	"Exit status:\n"
	"  0  success\n"
	"  1  iommud refused the request; standard error says why, as\n"
	"     \"iommuctl: CODE: the daemon's message\"\n"
	"  2  usage error: an unknown command or option, or a wrong argument\n"
	"  3  iommud cannot be reached, or the connection to it failed\n"
	"  4  a local failure, such as a file that cannot be opened\n";

void cmd_show_help(const struct cmd_entry *cmd)
{
	const char *usage = cmd->usage ? cmd->usage : cmd->operands;

	out_printf("Usage: iommuctl [GLOBAL OPTIONS] %s%s%s\n\n%s\n\n%s\nOptions:\n", cmd->name,
		   usage ? " " : "", usage ? usage : "", cmd->summary, cmd->help);
	cmd_print_options(cmd->options, true);
	out_printf("\nExamples:\n%s\n%s", cmd->examples, exit_status_text);
	exit(0);
}

static void usage(void)
{
	out_printf(
		"Usage: iommuctl [--socket PATH] [--json] [--lease NAME]\n"
		"                [--reconnect-timeout SECONDS] COMMAND [ARGS]\n"
		"       iommuctl COMMAND --help\n"
		"\n"
		"Asks iommud, the daemon that owns the machine's IOMMU domains, to list devices,\n"
		"allocate domains, attach devices and map memory for their DMA.\n"
		"\n"
		"Commands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		out_printf("  %-14s %s\n", commands[i]->name, commands[i]->summary);
	out_printf("\nGlobal options (before the command; --json may also follow it):\n");
	cmd_print_options(global_options, false);
	out_printf("\n" SESSION_NOTE "\n"
		   "%s\n"
		   "Examples:\n"
		   "  iommuctl devices\n"
		   "  D=$(iommuctl --lease vm1 domain alloc emu0)\n"
		   "  iommuctl --lease vm1 attach emu0 $D\n"
		   "  iommuctl --lease vm1 map $D --memfd 2M\n"
		   "  iommuctl --lease vm1 lease release\n",
		   exit_status_text);
}

/* Finds the command at argv[0] (two words for "domain alloc"); *words says how many it took. */
static const struct cmd_entry *find_command(int argc, char **argv, int *words)
{
	size_t len = strlen(argv[0]);
	bool group = false;

	for (size_t i = 0; i < NCOMMANDS; i++) {
		const char *name = commands[i]->name;

		if (strncmp(name, argv[0], len) || (name[len] && name[len] != ' '))
			continue;
		if (!name[len]) {
			*words = 1;
			return commands[i];
		}
		group = true;
		if (argc > 1 && !strcmp(name + len + 1, argv[1])) {
			*words = 2;
			return commands[i];
		}
	}
	if (group && argc == 1)
		usage_error(NULL, "'%s' needs a subcommand", argv[0]);
	if (group)
		usage_error(NULL, "unknown command '%s %s'", argv[0], argv[1]);
	usage_error(NULL, "unknown command '%s'", argv[0]);
}

/* Takes a global option; true when it (--help, --version) was the whole run. */
static bool global_option(int option, const char *value)
{
	uint64_t seconds;

	switch (option) {
	case GLOBAL_SOCKET:
		cli.socket = value;
		return false;
	case GLOBAL_JSON:
		output_use_json();
		return false;
	case GLOBAL_LEASE:
		if (!*value)
			usage_error(NULL,
				    "--lease needs a name; leave it out for the anonymous session");
		cli.lease = value;
		return false;
	case GLOBAL_RECONNECT:
		if (!parse_u64(value, false, &seconds) || seconds > UINT_MAX / 1000)
			usage_error(NULL,
				    "--reconnect-timeout takes whole seconds up to %u, not '%s'",
				    UINT_MAX / 1000, value);
		cli.reconnect_ms = (unsigned)seconds * 1000;
		cli.reconnect_set = true;
		return false;
	case GLOBAL_HELP:
		usage();
		return true;
	default: /* GLOBAL_VERSION */
		out_printf("iommuctl %s (protocol %d)\n", IOMMUCTL_VERSION,
			   IOMMUCTL_PROTOCOL_VERSION);
		return true;
	}
}

int main(int argc, char **argv)
{
	const struct cmd_entry *cmd;
	struct cmd_args args;
	const char *value;
	int option, words;

	while ((option = cmd_next_option(NULL, global_options, argc, argv, &value)) != -1)
		if (global_option(option, value))
			return 0;
	if (cmd_optind() == argc)
		usage_error(NULL, "no command given");
	argc -= cmd_optind();
	argv += cmd_optind();
	cmd = find_command(argc, argv, &words);
	cmd_parse(cmd, argc - words + 1, argv + words - 1, &args);
	if (cmd->exec)
		cmd->exec(cmd, &args);
	else
		cli_request(cmd, &args);
	cli_disconnect();
	return 0;
}
