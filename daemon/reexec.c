// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* F_DUPFD_CLOEXEC */
#include "reexec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "state.h"
#include "status.h"

/* The listening socket's name among the passed descriptors when the service manager passed it,
 * as a socket unit would give it. */
#define LISTENER_NAME "iommud.socket"

/* Set in the environment of the image reexec executes; read and cleared at its start, so that
 * no child of the daemon inherits it. */
#define ARRIVED_VARIABLE "IOMMUD_REEXECUTED"

static char binary[PATH_MAX];
static char **arguments;
static bool arrived;

void reexec_remember(char **argv)
{
	ssize_t n = readlink("/proc/self/exe", binary, sizeof(binary) - 1);

	binary[n > 0 ? n : 0] = '\0';
	arguments = argv;
	arrived = getenv(ARRIVED_VARIABLE) != NULL;
	(void)unsetenv(ARRIVED_VARIABLE);
}

bool reexec_arrived(void)
{
	return arrived;
}

struct passed {
	int *fds;
	char *names; /* "a:b:c" */
	size_t n, cap, names_len;
};

static int pass(const char *name, int fd, void *arg)
{
	struct passed *p = arg;
	size_t len = strlen(name);
	char *names = realloc(p->names, p->names_len + len + 2);
	int *fds = p->n == p->cap
			   ? realloc(p->fds, (p->cap = p->cap ? 2 * p->cap : 16) * sizeof(int))
			   : p->fds;

	if (names)
		p->names = names;
	if (fds)
		p->fds = fds;
	if (!names || !fds)
		return fail(-ENOMEM, "out of memory listing the descriptors to keep");
	(void)snprintf(p->names + p->names_len, len + 2, "%s%s", p->n ? ":" : "", name);
	p->names_len += len + (p->n ? 1 : 0);
	p->fds[p->n++] = fd;
	return 0;
}

/* Moves each descriptor above every target, so that no dup2 overwrites one not yet moved:
 * high[i] is p->fds[i]'s copy; on failure the copies made are closed. */
static int lift(const struct passed *p, int *high)
{
	for (size_t i = 0; i < p->n; i++) {
		high[i] = fcntl(p->fds[i], F_DUPFD_CLOEXEC, (int)(3 + p->n));
		if (high[i] < 0) {
			int err = errno, failed = p->fds[i];

			while (i--)
				(void)close(high[i]);
			return fail(-err, "cannot move descriptor %d: %s", failed, strerror(err));
		}
	}
	return 0;
}

/* Moves the descriptors to 3, 4, ... (the only ones left open across execve) and says so in
 * the environment. */
static int place(const struct passed *p)
{
	char count[24], pid[24];
	int *high = calloc(p->n, sizeof(int)), rc;

	if (!high)
		return fail(-ENOMEM, "out of memory placing the descriptors to keep");
	if ((rc = lift(p, high)) < 0) {
		free(high);
		return rc;
	}
	for (size_t i = 0; i < p->n && rc == 0; i++)
		if (dup2(high[i], 3 + (int)i) < 0)
			rc = fail(-errno, "cannot move descriptor %d: %s", p->fds[i],
				  strerror(errno));
	/* The copies at 3, 4, ... are what execve keeps (dup2 clears close-on-exec there). */
	for (size_t i = 0; i < p->n; i++)
		(void)close(high[i]);
	free(high);
	if (rc < 0)
		return rc;
	(void)snprintf(count, sizeof(count), "%zu", p->n);
	(void)snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (setenv("LISTEN_FDS", count, 1) < 0 || setenv("LISTEN_PID", pid, 1) < 0 ||
	    setenv("LISTEN_FDNAMES", p->names, 1) < 0 || setenv(ARRIVED_VARIABLE, "1", 1) < 0)
		return fail(-ENOMEM, "out of memory for the environment");
	return 0;
}

int reexec(const struct state *st, int listen_fd, bool bound_here)
{
	struct passed p = {0};
	int rc;

	if (!binary[0])
		return fail(-ENOENT, "the daemon's own binary could not be found at start");
	rc = pass(bound_here ? REEXEC_BOUND_LISTENER_NAME : LISTENER_NAME, listen_fd, &p);
	if (rc == 0)
		rc = state_each_fd(st, pass, &p);
	if (rc == 0)
		rc = place(&p);
	if (rc == 0) {
		log_notice("re-executing %s with %zu descriptors kept", binary, p.n);
		(void)execv(binary, arguments);
		rc = fail(-errno, "cannot execute %s: %s", binary, strerror(errno));
	}
	free(p.fds);
	free(p.names);
	return rc;
}
