// SPDX-License-Identifier: MIT
/*
 * systemd's watchdog (WatchdogSec= in iommud.service): the daemon, given WATCHDOG_USEC and a
 * NOTIFY_SOCKET as systemd gives them, reports READY=1 and then keeps pinging WATCHDOG=1 from its
 * event loop, and pings across a re-exec as well. The VM tier proves the other half under a real
 * systemd: a daemon whose loop stops (SIGSTOP) is killed and restarted.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "harness.h"

#define PINGS_WANTED 3
#define MESSAGE_MAX  4096

/* A datagram socket where the daemon's sd_notify messages arrive; its path in ret_path. */
static int notify_socket(char ret_path[static 108])
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	/* A guard against a daemon that never pings, not a measure of how soon it does. */
	struct timeval hang_guard = {.tv_sec = 30};
	char dir[] = "/tmp/iommud-notify-XXXXXX";
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0 && mkdtemp(dir) != NULL);
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/notify", dir);
	CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &hang_guard, sizeof(hang_guard)) == 0);
	(void)snprintf(ret_path, 108, "%s", addr.sun_path);
	return fd;
}

/* Whether the message (its lines "NAME=value") holds the line want. */
static bool has_line(const char *message, const char *want)
{
	size_t n = strlen(want);

	for (const char *p = message; p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, want, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
			return true;
	return false;
}

/* The next message into message (MESSAGE_MAX bytes), NUL-terminated; what stands in waiting_for
 * names, in the failure's message, what the test was waiting for. */
static void next_message(int fd, char *message, const char *waiting_for)
{
	ssize_t n = recv(fd, message, MESSAGE_MAX - 1, 0);

	if (n < 0) {
		(void)fprintf(stderr, "no %s within 30 s\n", waiting_for);
		abort();
	}
	message[n] = '\0';
}

static void remove_notify_socket(int fd, char path[static 108])
{
	char *slash = strrchr(path, '/');

	(void)close(fd);
	(void)unlink(path);
	*slash = '\0';
	(void)rmdir(path);
}

/* Starts the daemon as systemd would with WatchdogSec= of watchdog_usec; returns the socket its
 * notifications arrive on, bound at path. */
static int start_watched(struct daemon_fixture *daemon, char path[static 108],
			 const char *watchdog_usec)
{
	int fd = notify_socket(path);

	/* The fixture's daemon inherits these; no WATCHDOG_PID, so any pid may ping. */
	CHECK(setenv("NOTIFY_SOCKET", path, 1) == 0);
	CHECK(setenv("WATCHDOG_USEC", watchdog_usec, 1) == 0);
	fixture_start(daemon, "", "emu0");
	return fd;
}

TEST(pings_the_watchdog_after_ready)
{
	struct daemon_fixture daemon;
	char path[108], message[MESSAGE_MAX];
	bool ready = false;
	int fd = start_watched(&daemon, path, "200000"), pings = 0;

	while (pings < PINGS_WANTED) {
		next_message(fd, message, "WATCHDOG=1");
		ready |= has_line(message, "READY=1");
		if (has_line(message, "WATCHDOG=1")) {
			CHECK(ready); /* systemd counts pings only once the service is up */
			pings++;
		}
	}
	fixture_stop(&daemon);
	remove_notify_socket(fd, path);
}

/* systemd's watchdog clock runs on across a re-exec (SIGUSR2), while the new image loads its
 * probes and adopts its leases: the daemon pings as it goes and as it comes back ready, not
 * only from its loop's timer. The interval here is an hour, so the timer never pings during
 * the test and every ping seen is one of those. */
TEST(pings_around_a_reexec)
{
	struct daemon_fixture daemon;
	char path[108], message[MESSAGE_MAX];
	bool reloading = false;
	int fd = start_watched(&daemon, path, "3600000000"), pings_while_reloading = 0;

	do
		next_message(fd, message, "READY=1");
	while (!has_line(message, "READY=1"));
	CHECK(has_line(message, "WATCHDOG=1"));

	CHECK(kill(daemon.pid, SIGUSR2) == 0);
	for (;;) {
		next_message(fd, message, "READY=1 after the re-exec");
		reloading |= has_line(message, "RELOADING=1");
		if (has_line(message, "READY=1"))
			break;
		if (reloading && has_line(message, "WATCHDOG=1"))
			pings_while_reloading++;
	}
	CHECK(reloading);
	/* One as the old image goes, one after the new one loaded its probes, one with READY=1. */
	CHECK(pings_while_reloading >= 2);
	CHECK(has_line(message, "WATCHDOG=1"));
	fixture_stop(&daemon);
	remove_notify_socket(fd, path);
}
