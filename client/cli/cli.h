/* SPDX-License-Identifier: MIT */
/*
 * What iommuctl's commands share: the command entry each command file defines, the option
 * template the shared parser reads, the connection to iommud, and the value conversions.
 *
 * A command is one `const struct cmd_entry` of designated initializers in its cmd-*.c file;
 * iommuctl.c lists them in its table. Before a command runs, the parser has checked its
 * options against the template and counted its operands, so the command starts from
 * arguments of the right shape and only converts what the template cannot say (--prot,
 * --type, the operands of an exec).
 *
 * Ownership: the connection and the Hello reply (cli.hello) belong to this run;
 * cli_disconnect releases them once the command returned. cli_request owns the request it
 * builds, whose strings stay argv's. Every failure exits the process, so a command owns only
 * what it has not yet handed back (responses, fds) on its success path.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "iommuctl.h"

/* The documented exit statuses (iommuctl --help); 0 is success. */
enum exit_status {
	EXIT_REFUSED = 1,
	EXIT_USAGE = 2,
	EXIT_TRANSPORT = 3,
	EXIT_LOCAL = 4,
};

enum opt_kind {
	OPT_FLAG,   /* takes no value */
	OPT_STRING, /* a value, kept as given */
	OPT_SIZE,   /* a value in bytes: decimal or 0x hex with an optional K, M, G or T */
};

/* One option of a template; a template ends with an entry without a name. */
struct cmd_option {
	const char *name; /* the long option, without "--" */
	char short_name;  /* its one-letter form, or 0 for none */
	enum opt_kind kind;
	const char *value; /* the value's name in --help ("PATH"), for the kinds that take one */
	const char *help;  /* its description in --help; lines after the first are indented */
};

#define CMD_MAX_OPTIONS 14

/* What the parser found for one option of the template. */
struct opt_value {
	unsigned count;	 /* how often it was given */
	const char *str; /* the last value given */
	uint64_t size;	 /* OPT_SIZE: that value in bytes */
};

struct cmd_args {
	struct opt_value opt[CMD_MAX_OPTIONS]; /* indexed like the command's template */
	char **operands;		       /* as many as the entry's operands name */
};

/* Shows a reply, given with the request that asked for it. */
typedef void cli_show_fn(const void *msg, Iommud__V1__Response *reply);

struct cmd_entry {
	const char *name;     /* "map", or two words: "domain alloc" */
	const char *operands; /* their names, "DEVICE DOMAIN", which are counted; NULL: none */
	const char *usage;    /* the synopsis after the name, when more than the operands */
	const char *summary;  /* its line in iommuctl --help */
	const char *help;     /* the description in its --help */
	const struct cmd_option *options; /* the template; NULL for none but --help and --json */
	const char *examples;
	/* A command that is one request names its method, the request's fields its operands
	 * fill in order ("device domain_id": strings as given, uint32 fields as domain ids), what
	 * else checks or fills the request (or NULL), and how the reply is shown (NULL: the empty
	 * result of a change). Any other command has exec. */
	Iommud__V1__Request__MethodCase method;
	const char *fields;
	void (*request)(const struct cmd_entry *self, const struct cmd_args *args, void *msg);
	cli_show_fn *show;
	void (*exec)(const struct cmd_entry *self, const struct cmd_args *args);
};

/* What sessions mean, in iommuctl --help and in the help of commands that create objects. */
#define SESSION_NOTE                                                                               \
	"Sessions: what a command creates belongs to its session. Without --lease that is the\n"   \
	"anonymous session of your user and cgroup, which iommud releases (unmapping, detaching\n" \
	"and freeing everything in it) when its last connection closes: usually when this\n"       \
	"iommuctl exits. To keep objects, give every command the same --lease NAME; they stay\n"   \
	"until 'iommuctl --lease NAME lease release'.\n"

/* The command files' entries, listed in iommuctl.c's table. */
extern const struct cmd_entry cmd_hello_entry, cmd_devices_entry, cmd_device_entry,
	cmd_domains_entry, cmd_domain_alloc_entry, cmd_domain_free_entry, cmd_attach_entry,
	cmd_replace_entry, cmd_detach_entry, cmd_map_entry, cmd_unmap_entry, cmd_mappings_entry,
	cmd_ranges_entry, cmd_dirty_entry, cmd_stats_entry, cmd_lease_release_entry,
	cmd_daemon_reexec_entry, cmd_delegate_exec_entry, cmd_delegate_qmp_entry,
	cmd_delegations_entry, cmd_probes_attach_entry, cmd_probes_detach_entry,
	cmd_probes_status_entry;

/* ---- options.c: the shared option parser ------------------------------------------------ */

/*
 * Walks argv like getopt_long, from the template: returns the index in opts of the next
 * option, its value in *ret_value (NULL for a flag), or -1 at the end. With a command, --help
 * shows its help and --json sets JSON output wherever they are given, and options may follow
 * operands; without one (the global options), the walk stops at the first operand. Mistakes
 * are usage errors. The first call starts at argv[1]; cmd_optind says where the walk stopped.
 */
int cmd_next_option(const struct cmd_entry *cmd, const struct cmd_option *opts, int argc,
		    char **argv, const char **ret_value);
int cmd_optind(void);

/* Parses a command's arguments (argv[0] is its last word) into *ret_args. */
void cmd_parse(const struct cmd_entry *cmd, int argc, char **argv, struct cmd_args *ret_args);

/* The options section of --help, from the template (a command's: with its --help). */
void cmd_print_options(const struct cmd_option *opts, bool command);

/* Shows the command's --help and exits with 0. */
__attribute__((noreturn)) void cmd_show_help(const struct cmd_entry *cmd);

/* ---- values.c: arguments and the names of values ---------------------------------------- */

/* A number in decimal or 0x hex, with an optional K, M, G or T (binary) suffix when sized. */
bool parse_u64(const char *s, bool sized, uint64_t *ret);
/* s as a domain id, or a usage error of cmd. */
uint32_t arg_domain(const struct cmd_entry *cmd, const char *s);

/* The one table of domain-type names. */
const char *domain_type_name(Iommud__V1__DomainType type);
/* The types 'domain alloc --type' takes: false for any other name. */
bool domain_type_from_name(const char *name, enum iommuctl_domain_type *ret_type);

/* Mapping permissions: shown as "r-", "-w" or "rw"; given as r, w or rw. */
const char *prot_name(uint32_t prot);
bool prot_from_name(const char *name, uint32_t *ret_prot);

/* ---- connection.c: iommud --------------------------------------------------------------- */

extern struct cli {
	const char *socket;	       /* --socket, or NULL for the library's default */
	const char *lease;	       /* --lease, or NULL for the anonymous session */
	Iommud__V1__HelloReply *hello; /* iommud's Hello, once connected */
	bool reconnect_set;	       /* --reconnect-timeout, else the library's default */
	unsigned reconnect_ms;
} cli;

/* The connection, made (with Hello, which picks the session of --lease) on first use. */
struct iommuctl *cli_connection(void);
void cli_disconnect(void);
/* Passes a library call's result through, or reports its failure and exits. */
int cli_check(int err);
/* Calls a method whose request message is msg; the caller frees the response. */
Iommud__V1__Response *cli_call(Iommud__V1__Request__MethodCase method, void *msg);
/* Calls a method and shows its reply; a NULL show shows the empty result of a change. */
void cli_show(Iommud__V1__Request__MethodCase method, void *msg, cli_show_fn *show);
/* Runs a command that is one request (cmd->method). */
void cli_request(const struct cmd_entry *cmd, const struct cmd_args *args);
/* A reply that breaks the protocol: nothing sensible can follow it. */
__attribute__((noreturn)) void cli_broken_reply(Iommud__V1__Response *r, const char *what);

/* ---- shared views ----------------------------------------------------------------------- */

/* A tenant's quota, as hello and stats show it. */
void show_quota(const Iommud__V1__Quota *q);
/* The daemon's ceilings over all tenants; with_usage: and what all tenants hold against them. */
void show_ceilings(const Iommud__V1__Ceilings *c, bool with_usage);
/* The map path probes' state, as stats and probes status show it. */
void show_probes(const Iommud__V1__ProbeStatus *p);
/* Delegations as a list, as delegations and stats show them. */
void show_delegation_list(Iommud__V1__Delegation *const *list, size_t n);
