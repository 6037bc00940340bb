/* SPDX-License-Identifier: MIT */
/*
 * The one option parser of iommuctl: getopt_long, set up from an option template (cli.h), so
 * every command takes its options the same way (long and short forms, --opt=value, options
 * after the operands, "--") and says the same things about mistakes.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "output.h"

/* getopt_long's val for the long form of template entry i: above every short option's. */
#define LONG_VAL(i) (256 + (i))

/* What every command takes besides its template: --help, and --json where a person naturally
 * writes it (after the command: "iommuctl devices --json"). */
enum { IMPLICIT_HELP, IMPLICIT_JSON, N_IMPLICIT };
static const struct cmd_option implicit[N_IMPLICIT] = {
	[IMPLICIT_HELP] = {.name = "help", .short_name = 'h', .help = "show this text"},
	[IMPLICIT_JSON] = {.name = "json"}, /* described once, among the global options */
};

/* The template being walked, in getopt_long's terms. */
static struct {
	char **argv; /* the walk's arguments, to see when a new walk starts */
	const struct cmd_option *all[CMD_MAX_OPTIONS + N_IMPLICIT];
	struct option longopts[CMD_MAX_OPTIONS + N_IMPLICIT + 1];
	char shortopts[2 * (CMD_MAX_OPTIONS + N_IMPLICIT) + 3];
	int n; /* template entries, before the implicit ones */
} walk;

static int template_size(const struct cmd_option *opts)
{
	int n = 0;

	while (opts && opts[n].name)
		n++;
	return n;
}

/* Entry i of a template of n entries followed by the implicit ones. */
static const struct cmd_option *template_at(const struct cmd_option *opts, int n, int i)
{
	return i < n ? &opts[i] : &implicit[i - n];
}

static void walk_setup(const struct cmd_entry *cmd, const struct cmd_option *opts, char **argv)
{
	int total, len = 0;

	memset(&walk, 0, sizeof(walk));
	walk.argv = argv;
	walk.n = template_size(opts);
	/* A template longer than CMD_MAX_OPTIONS is a mistake in the command's table. */
	if (walk.n > CMD_MAX_OPTIONS)
		abort();
	total = walk.n + (cmd ? N_IMPLICIT : 0);
	/* "+": the global options stop at the command, whose options are its own. ":": the
	 * mistakes are reported here, not by getopt. */
	if (!cmd)
		walk.shortopts[len++] = '+';
	walk.shortopts[len++] = ':';
	for (int i = 0; i < total; i++) {
		const struct cmd_option *o = template_at(opts, walk.n, i);

		walk.all[i] = o;
		walk.longopts[i] = (struct option){
			o->name, o->kind == OPT_FLAG ? no_argument : required_argument, NULL,
			LONG_VAL(i)};
		if (o->short_name)
			walk.shortopts[len++] = o->short_name;
		if (o->short_name && o->kind != OPT_FLAG)
			walk.shortopts[len++] = ':';
	}
	/* GNU getopt starts a new walk, at argv[1], when optind is 0. */
	optind = 0;
	opterr = 0;
}

static int option_index(int ch)
{
	if (ch >= LONG_VAL(0))
		return ch - LONG_VAL(0);
	for (int i = 0; walk.longopts[i].name; i++)
		if (walk.all[i]->short_name == ch)
			return i;
	return -1;
}

__attribute__((noreturn)) static void bad_option(const struct cmd_entry *cmd, int ch, char **argv)
{
	const char *name = cmd ? cmd->name : NULL;

	if (ch == ':')
		usage_error(name, "option '%s' needs a value", argv[optind - 1]);
	if (optopt >= LONG_VAL(0))
		usage_error(name, "option '--%s' takes no value",
			    walk.longopts[optopt - LONG_VAL(0)].name);
	if (optopt && optopt != ':')
		usage_error(name, "unknown option '-%c'", optopt);
	usage_error(name, "unknown option '%s'", argv[optind - 1]);
}

int cmd_next_option(const struct cmd_entry *cmd, const struct cmd_option *opts, int argc,
		    char **argv, const char **ret_value)
{
	int ch, i;

	if (walk.argv != argv)
		walk_setup(cmd, opts, argv);
	for (;;) {
		ch = getopt_long(argc, argv, walk.shortopts, walk.longopts, NULL);
		if (ch == -1)
			return -1;
		i = option_index(ch);
		if (i < 0)
			bad_option(cmd, ch, argv);
		if (i < walk.n) {
			*ret_value = optarg;
			return i;
		}
		if (i - walk.n == IMPLICIT_HELP)
			cmd_show_help(cmd);
		output_use_json();
	}
}

int cmd_optind(void)
{
	return optind;
}

/* Checks that the operands are as many as cmd names; a last name ending in "..." takes any
 * number of words, at least one. */
static void check_operands(const struct cmd_entry *cmd, int got)
{
	const char *names = cmd->operands;
	size_t len = names ? strlen(names) : 0;
	int n = 0;

	for (const char *w = names; w && *w; w += strcspn(w, " "), w += *w == ' ')
		n++;
	if (len > 3 && strcmp(names + len - 3, "...") == 0 && got >= n)
		return;
	if (got != n)
		usage_error(cmd->name, "expects %s, not %d argument%s", n ? names : "no arguments",
			    got, got == 1 ? "" : "s");
}

void cmd_parse(const struct cmd_entry *cmd, int argc, char **argv, struct cmd_args *ret_args)
{
	struct cmd_args args = {};
	const char *value;
	int i;

	while ((i = cmd_next_option(cmd, cmd->options, argc, argv, &value)) != -1) {
		struct opt_value *v = &args.opt[i];

		v->count++;
		v->str = value;
		if (cmd->options[i].kind == OPT_SIZE && !parse_u64(value, true, &v->size))
			usage_error(cmd->name,
				    "--%s '%s' is not a size: give a number, in decimal or 0x hex, "
				    "with an optional K, M, G or T suffix",
				    cmd->options[i].name, value);
	}
	check_operands(cmd, argc - optind);
	args.operands = argv + optind;
	*ret_args = args;
}

/* "  -x, --name VALUE": an option's column in --help. */
static int option_label(char *buf, size_t size, const struct cmd_option *o)
{
	return snprintf(buf, size, "  %c%c%c --%s%s%s", o->short_name ? '-' : ' ',
			o->short_name ? o->short_name : ' ', o->short_name ? ',' : ' ', o->name,
			o->value ? " " : "", o->value ? o->value : "");
}

void cmd_print_options(const struct cmd_option *opts, bool command)
{
	int n = template_size(opts), total = n + (command ? N_IMPLICIT : 0), column = 0;
	char label[64];

	/* The descriptions start two spaces after the longest option shown. */
	for (int i = 0; i < total; i++) {
		const struct cmd_option *o = template_at(opts, n, i);
		int len = option_label(label, sizeof(label), o);

		if (o->help && len + 2 > column)
			column = len + 2;
	}
	for (int i = 0; i < total; i++) {
		const struct cmd_option *o = template_at(opts, n, i);

		if (!o->help)
			continue;
		option_label(label, sizeof(label), o);
		out_printf("%-*s", column, label);
		/* Lines after the first start in the description's column too. */
		for (const char *line = o->help; *line; line += *line == '\n') {
			int len = (int)strcspn(line, "\n");

			out_printf("%*s%.*s\n", line == o->help ? 0 : column, "", len, line);
			line += len;
		}
	}
}
