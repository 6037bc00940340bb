/* SPDX-License-Identifier: MIT */
/* promtool, Prometheus's own checker, on exposition text: both exporter tests hold it to it. */
#ifndef IOMMUD_TESTS_PROMTOOL_CHECK_H
#define IOMMUD_TESTS_PROMTOOL_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "harness.h"

/* Fails the case unless `promtool check metrics` accepts text (its lint included); skips it
 * where promtool is not installed. */
static inline void check_with_promtool(const char *text)
{
	FILE *promtool;
	int status;

	if (system("command -v promtool >/dev/null") != 0)
		SKIP("promtool not found (Debian package prometheus; install-deps.sh installs it)");
	promtool = popen("promtool check metrics", "w");
	CHECK(promtool != NULL);
	CHECK(fputs(text, promtool) >= 0);
	status = pclose(promtool);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

#endif
