// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* program_invocation_short_name */
#include "tool-options.h"

#include <errno.h>

int tool_options(int argc, char **argv, const char *shortopts, const struct option *longopts,
		 void (*usage)(FILE *out), void (*take)(int opt, const char *value, void *arg),
		 void *arg)
{
	int opt;

	while ((opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		if (opt == 'h') {
			usage(stdout);
			return 0;
		}
		if (opt == '?') {
			usage(stderr);
			return 2;
		}
		take(opt, optarg, arg);
	}
	if (optind != argc) {
		(void)fprintf(stderr, "%s: unexpected argument '%s'\n",
			      program_invocation_short_name, argv[optind]);
		usage(stderr);
		return 2;
	}
	return -1;
}
