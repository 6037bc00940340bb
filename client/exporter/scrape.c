/* SPDX-License-Identifier: MIT */
/*
 * The child writes one record to the pipe and exits: 'R' and the packed GetStatsReply, or 'E'
 * and the library's message saying why there is none. The parent reads it as it comes,
 * without blocking, and ends the child at the deadline.
 */
#define _GNU_SOURCE /* pipe2, close_range */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <iommuctl.h>

#include "scrape.h"

#define RECORD_REPLY 'R'
#define RECORD_ERROR 'E'
/* A reply is one protocol message; a longer record is not one the child wrote. */
#define RECORD_MAX (1 + IOMMUCTL_MAX_MESSAGE)

struct scrape {
	pid_t child;
	struct event *readable, *deadline;
	struct evbuffer *record;
	char socket_path[108];
	scrape_done_fn *done;
	void *arg;
};

static void write_record(int fd, char kind, const void *data, size_t len)
{
	const char *p = data;

	if (write(fd, &kind, 1) != 1)
		return;
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		len -= (size_t)n;
	}
}

/* The child's whole life: one connection, one GetStats, one record. */
static void ask_daemon(const char *socket_path, int fd)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__GetStatsRequest get_stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	Iommud__V1__Response *resp = NULL;
	struct iommuctl *c = NULL;
	const char *error;
	uint8_t *packed;
	size_t len;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &get_stats;
	if (iommuctl_connect(socket_path, &c) < 0) {
		error = iommuctl_last_error(NULL);
		write_record(fd, RECORD_ERROR, error, strlen(error));
		return;
	}
	if (iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL) < 0 || !resp->get_stats) {
		error = resp ? "the daemon's reply to GetStats had no statistics"
			     : iommuctl_last_error(c);
		write_record(fd, RECORD_ERROR, error, strlen(error));
	} else {
		len = iommud__v1__get_stats_reply__get_packed_size(resp->get_stats);
		packed = malloc(len ? len : 1);
		if (packed) {
			(void)iommud__v1__get_stats_reply__pack(resp->get_stats, packed);
			write_record(fd, RECORD_REPLY, packed, len);
		}
		free(packed);
	}
	iommuctl_response_free(resp);
	iommuctl_close(c);
}

/* Stops the child (it may have exited already: a child not yet reaped keeps its pid) and says
 * how it ended, for a scrape that got no record. */
static void reap(struct scrape *s, char *why, size_t size)
{
	int status = 0;

	(void)kill(s->child, SIGKILL);
	while (waitpid(s->child, &status, 0) < 0 && errno == EINTR)
		;
	s->child = -1;
	if (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL)
		(void)snprintf(why, size, "the process asking the daemon died of signal %d",
			       WTERMSIG(status));
	else
		(void)snprintf(why, size, "the process asking the daemon ended without an answer");
}

/* Ends the scrape with what the record holds (or error), then tells the caller. */
static void finish(struct scrape *s, const char *error)
{
	size_t len = evbuffer_get_length(s->record);
	const uint8_t *data = evbuffer_pullup(s->record, -1);
	Iommud__V1__GetStatsReply *reply = NULL;
	char why[256];

	(void)event_del(s->readable);
	(void)event_del(s->deadline);
	reap(s, why, sizeof(why));
	if (!error && len > 0 && data[0] == RECORD_REPLY) {
		reply = iommud__v1__get_stats_reply__unpack(NULL, len - 1, data + 1);
		if (!reply)
			error = "the daemon's GetStats reply does not decode; is the exporter "
				"older "
				"than the daemon's protocol?";
	} else if (!error && len > 0 && data[0] == RECORD_ERROR) {
		(void)snprintf(why, sizeof(why), "%.*s", (int)(len - 1), (const char *)data + 1);
		error = why;
	} else if (!error) {
		error = why;
	}
	s->done(reply, error, s->arg);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct scrape *s = arg;
	int n;

	(void)what;
	n = evbuffer_read(s->record, fd, RECORD_MAX + 1 - (int)evbuffer_get_length(s->record));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0)
		finish(s, "reading the answer from the process asking the daemon failed");
	else if (evbuffer_get_length(s->record) > RECORD_MAX)
		finish(s, "the answer of the process asking the daemon is longer than a message");
	else if (n == 0)
		finish(s, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct scrape *s = arg;
	char error[256];

	(void)fd;
	(void)what;
	(void)snprintf(error, sizeof(error),
		       "iommud at %s did not answer GetStats in time (--timeout); is it stopped "
		       "or overloaded?",
		       s->socket_path[0] ? s->socket_path : "the default socket");
	finish(s, error);
}

/*
 * In the child, before anything else: the signals the exporter handles (its event loop's, which
 * would only tell the parent's loop) or ignores act as by default again, then the mask is the
 * parent's; and the child dies with the exporter, even one killed outright, rather than outlive
 * it in a call to a wedged daemon. A parent that died before prctl took effect is no longer
 * the parent.
 */
static void detach_from_exporter(pid_t parent, const sigset_t *mask)
{
	static const int exporter_signals[] = {SIGTERM, SIGINT, SIGPIPE};

	for (size_t i = 0; i < sizeof(exporter_signals) / sizeof(exporter_signals[0]); i++)
		(void)signal(exporter_signals[i], SIG_DFL);
	(void)sigprocmask(SIG_SETMASK, mask, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(1);
}

/* In the child: the pipe becomes fd 3 and every other descriptor is closed, so that the
 * child holds none of the exporter's connections open while it waits. */
static void run_child(pid_t parent, const sigset_t *mask, const char *socket_path, int fd)
{
	detach_from_exporter(parent, mask);
	if (fd != 3 && dup2(fd, 3) < 0)
		_exit(1);
	(void)close_range(4, ~0u, 0);
	ask_daemon(socket_path, 3);
	_exit(0);
}

/* Forks the child that writes to fd. Signals wait, blocked, until the child has its own
 * handlers: one arriving in between would run the exporter's handler in the child. */
static pid_t spawn_child(const char *socket_path, int fd)
{
	pid_t parent = getpid(), child;
	sigset_t all, old;
	int err;

	(void)sigfillset(&all);
	(void)sigprocmask(SIG_SETMASK, &all, &old);
	child = fork();
	if (child == 0)
		run_child(parent, &old, socket_path, fd);
	err = errno;
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	errno = err;
	return child;
}

int scrape_start(struct event_base *base, const char *socket_path, const struct timeval *timeout,
		 scrape_done_fn *done, void *arg, struct scrape **ret_scrape)
{
	struct scrape *s = calloc(1, sizeof(*s));
	int fds[2], err;

	if (!s)
		return -ENOMEM;
	s->child = -1;
	s->done = done;
	s->arg = arg;
	(void)snprintf(s->socket_path, sizeof(s->socket_path), "%s",
		       socket_path ? socket_path : "");
	if (pipe2(fds, O_CLOEXEC) < 0) {
		err = -errno;
		free(s);
		return err;
	}
	s->child = spawn_child(socket_path, fds[1]);
	err = s->child < 0 ? -errno : 0;
	(void)close(fds[1]);
	s->record = evbuffer_new();
	s->readable = event_new(base, fds[0], EV_READ | EV_PERSIST, on_readable, s);
	s->deadline = evtimer_new(base, on_deadline, s);
	if (!err && (!s->record || !s->readable || !s->deadline ||
		     evutil_make_socket_nonblocking(fds[0]) < 0 ||
		     event_add(s->readable, NULL) < 0 || evtimer_add(s->deadline, timeout) < 0))
		err = -ENOMEM;
	if (err) {
		if (!s->readable) /* else scrape_free closes it */
			(void)close(fds[0]);
		scrape_free(s);
		return err;
	}
	*ret_scrape = s;
	return 0;
}

void scrape_free(struct scrape *s)
{
	char why[256];

	if (!s)
		return;
	if (s->child > 0)
		reap(s, why, sizeof(why));
	if (s->readable) {
		(void)close(event_get_fd(s->readable));
		event_free(s->readable);
	}
	if (s->deadline)
		event_free(s->deadline);
	if (s->record)
		evbuffer_free(s->record);
	free(s);
}
