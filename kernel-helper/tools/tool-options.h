/* SPDX-License-Identifier: MIT */
/*
 * Command-line options of kernel-helper's tools, parsed one way: --help prints the usage to
 * stdout and exits 0; an unknown option or a stray argument prints it to stderr and exits 2.
 */
#ifndef KH_TOOL_OPTIONS_H
#define KH_TOOL_OPTIONS_H

#include <getopt.h>
#include <stdio.h>

/* Parses argv with getopt_long; every option but 'h' goes to take(opt, optarg, arg). Returns
 * -1 when the tool should go on, otherwise the status it should exit with. */
int tool_options(int argc, char **argv, const char *shortopts, const struct option *longopts,
		 void (*usage)(FILE *out), void (*take)(int opt, const char *value, void *arg),
		 void *arg);

#endif
