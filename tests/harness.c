/* SPDX-License-Identifier: MIT */
/*
 * The runner behind harness.h: main for every test binary built with the harness. It expands
 * each case into one instance per variant of its fixture, selects instances by name, and runs
 * them: one selected instance in this process (so a debugger sees it as it is), several each
 * in a child of its own, so a failed or crashing case does not hide the ones after it.
 */
#define _GNU_SOURCE /* asprintf */
#include <errno.h>
#include <fnmatch.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SKIP_STATUS 77 /* the automake and ctest convention */

static struct harness_case *cases;
static struct harness_option *options;

/* One case under one variant of its fixture: what is listed, selected and run. */
struct instance {
	const struct harness_case *c;
	const struct harness_variant *variant; /* NULL: the fixture has no variants */
	char *name;
	bool selected;
};

static struct instance *instances;
static size_t n_instances;

/* Where SKIP() returns to while a case runs. */
static jmp_buf skip_return;
static bool case_running;

void harness_register_case(struct harness_case *c)
{
	c->next = cases;
	cases = c;
}

void harness_register_variant(struct harness_fixture *f, struct harness_variant *v)
{
	v->next = f->variants;
	f->variants = v;
}

void harness_register_option(struct harness_option *o)
{
	o->next = options;
	options = o;
}

void harness_skip(const char *fmt, ...)
{
	va_list ap;

	(void)printf("SKIP: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	(void)printf("\n");
	(void)fflush(stdout);
	if (case_running)
		longjmp(skip_return, 1);
	exit(SKIP_STATUS);
}

uint64_t harness_parse_u64(const char *option, const char *value)
{
	char *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(value, &end, 0);
	if (errno || end == value || *end || value[0] == '-') {
		(void)fprintf(stderr, "--%s wants a whole number (decimal or 0x hex), not '%s'\n",
			      option, value);
		exit(2);
	}
	return n;
}

static void add_instance(const struct harness_case *c, const struct harness_variant *v)
{
	struct instance *in = &instances[n_instances++];

	in->c = c;
	in->variant = v;
	CHECK(v ? asprintf(&in->name, "%s.%s", v->name, c->name) >= 0
		: (in->name = strdup(c->name)) != NULL);
}

/* Variants first (all cases of one variant together), then the order of the source. */
static int instance_order(const void *a, const void *b)
{
	const struct instance *x = a, *y = b;
	int vx = x->variant ? x->variant->line : 0, vy = y->variant ? y->variant->line : 0;

	if (vx != vy)
		return vx < vy ? -1 : 1;
	return x->c->line < y->c->line ? -1 : x->c->line > y->c->line;
}

static void expand_instances(void)
{
	size_t max = 0;

	for (const struct harness_case *c = cases; c; c = c->next) {
		size_t n = 0;

		for (const struct harness_variant *v = c->fixture ? c->fixture->variants : NULL; v;
		     v = v->next)
			n++;
		max += n ? n : 1;
	}
	instances = calloc(max ? max : 1, sizeof(*instances));
	CHECK(instances);
	for (const struct harness_case *c = cases; c; c = c->next) {
		const struct harness_variant *v = c->fixture ? c->fixture->variants : NULL;

		if (!v)
			add_instance(c, NULL);
		for (; v; v = v->next)
			add_instance(c, v);
	}
	qsort(instances, n_instances, sizeof(*instances), instance_order);
	for (size_t i = 1; i < n_instances; i++)
		if (!strcmp(instances[i - 1].name, instances[i].name)) {
			(void)fprintf(stderr, "two cases are called %s: rename one\n",
				      instances[i].name);
			exit(2);
		}
}

static void free_instances(void)
{
	for (size_t i = 0; i < n_instances; i++)
		free(instances[i].name);
	free(instances);
}

static void usage(const char *argv0, int status)
{
	FILE *out = status ? stderr : stdout;

	(void)fprintf(
		out,
		"usage: %s [OPTION]... [CASE]...\n"
		"Runs the named cases (shell patterns: 'iommufd.*'), or every case. Several cases\n"
		"run each in a child process; the exit status is 1 if any failed, 77 if all were\n"
		"skipped, else 0.\n"
		"  --list       print the names of the cases and exit\n"
		"  --case CASE  run CASE (the same as naming it after the options)\n",
		argv0);
	for (const struct harness_option *o = options; o; o = o->next)
		(void)fprintf(out, "  --%s %s  %s\n", o->name, o->value_name, o->help);
	exit(status);
}

static bool select_cases(const char *pattern)
{
	bool any = false;

	for (size_t i = 0; i < n_instances; i++)
		if (!fnmatch(pattern, instances[i].name, 0)) {
			instances[i].selected = true;
			any = true;
		}
	if (!any)
		(void)fprintf(stderr, "no case matches '%s'; --list shows them\n", pattern);
	return any;
}

static const struct harness_option *find_option(const char *arg, const char **value)
{
	for (const struct harness_option *o = options; o; o = o->next) {
		size_t len = strlen(o->name);

		if (strncmp(arg, o->name, len))
			continue;
		if (arg[len] == '=') {
			*value = arg + len + 1;
			return o;
		}
		if (!arg[len]) {
			*value = NULL;
			return o;
		}
	}
	return NULL;
}

/* Reads the command line: options, and the cases it names; returns whether any was named. */
static bool parse_args(int argc, char **argv)
{
	bool named = false, ok = true;

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *value = NULL;
		const struct harness_option *o;

		if (!strcmp(arg, "--help") || !strcmp(arg, "-h"))
			usage(argv[0], 0);
		if (!strcmp(arg, "--list")) {
			for (size_t k = 0; k < n_instances; k++)
				(void)printf("%s\n", instances[k].name);
			free_instances();
			exit(0);
		}
		if (!strcmp(arg, "--case")) {
			if (++i == argc)
				usage(argv[0], 2);
			ok &= select_cases(argv[i]);
			named = true;
		} else if (!strncmp(arg, "--", 2) && (o = find_option(arg + 2, &value))) {
			if (!value && ++i == argc)
				usage(argv[0], 2);
			o->set(value ? value : argv[i]);
		} else if (arg[0] == '-') {
			(void)fprintf(stderr, "unknown option %s\n", arg);
			usage(argv[0], 2);
		} else {
			ok &= select_cases(arg);
			named = true;
		}
	}
	if (!ok)
		exit(2);
	return named;
}

/* Runs one instance here; returns 0, or SKIP_STATUS. A failed check does not return. */
static int run_instance(const struct instance *in)
{
	struct harness_fixture *f = in->c->fixture;
	const void *variant = in->variant ? in->variant->data : NULL;
	void *self = calloc(1, in->c->self_size ? in->c->self_size : 1);
	volatile bool set_up = false;
	volatile int status = 0;

	CHECK(self);
	case_running = true;
	if (!setjmp(skip_return)) {
		if (f)
			f->setup(self, variant);
		set_up = true;
		in->c->run(self, variant);
	} else {
		status = SKIP_STATUS;
	}
	case_running = false;
	if (f && set_up)
		f->teardown(self, variant);
	free(self);
	return status;
}

/* Runs one instance in a child; returns its exit status, or -1 if it did not exit. */
static int run_in_child(const struct instance *in)
{
	int wstatus;
	pid_t pid;

	(void)fflush(NULL);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int status = run_instance(in);

		free_instances();
		exit(status);
	}
	CHECK_EQ(waitpid(pid, &wstatus, 0), pid);
	if (WIFEXITED(wstatus))
		return WEXITSTATUS(wstatus);
	(void)printf("# %s: killed by signal %d (%s)\n", in->name, WTERMSIG(wstatus),
		     strsignal(WTERMSIG(wstatus)));
	return -1;
}

static int run_selected(bool alone)
{
	unsigned passed = 0, skipped = 0, failed = 0, number = 0;

	for (size_t i = 0; i < n_instances; i++) {
		const struct instance *in = &instances[i];
		int status;

		if (!in->selected)
			continue;
		(void)printf("# %s\n", in->name);
		status = alone ? run_instance(in) : run_in_child(in);
		number++;
		if (status == 0) {
			passed++;
			(void)printf("ok %u %s\n", number, in->name);
		} else if (status == SKIP_STATUS) {
			skipped++;
			(void)printf("ok %u %s # SKIP\n", number, in->name);
		} else {
			failed++;
			(void)printf("not ok %u %s\n", number, in->name);
		}
	}
	(void)printf("# %u passed, %u skipped, %u failed\n", passed, skipped, failed);
	if (failed)
		return 1;
	return passed == 0 && skipped ? SKIP_STATUS : 0;
}

int main(int argc, char **argv)
{
	size_t selected = 0;
	int status;

	/* Output of a case and of the runner stay in order when stdout is a pipe (ctest). */
	(void)setvbuf(stdout, NULL, _IOLBF, 0);
	expand_instances();
	if (!parse_args(argc, argv))
		for (size_t i = 0; i < n_instances; i++)
			instances[i].selected = true;
	for (size_t i = 0; i < n_instances; i++)
		selected += instances[i].selected;
	status = run_selected(selected == 1);
	free_instances();
	return status;
}
