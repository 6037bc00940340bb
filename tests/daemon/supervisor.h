/* SPDX-License-Identifier: MIT */
/*
 * A small service manager for survival tests, speaking what systemd 252 speaks to a
 * Type=notify service with a file-descriptor store: it listens on the daemon's socket itself
 * (socket activation) and on $NOTIFY_SOCKET, keeps what FDSTORE=1 hands it under each FDNAME,
 * closes what FDSTOREREMOVE=1 names, and passes the socket and every kept descriptor to each
 * daemon it starts through LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID. A thread reads the
 * notifications as they come, as the manager would, and answers BARRIER=1 as systemd does: by
 * closing the descriptor that came with it once every message before it is applied.
 *
 * Ownership: the supervisor owns its sockets, the store's descriptors and its thread; the
 * daemon's log goes to a file in the case's directory.
 */
#ifndef IOMMUD_TESTS_SUPERVISOR_H
#define IOMMUD_TESTS_SUPERVISOR_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "daemon_fixture.h"

struct stored_fd {
	char name[256];
	int fd;
};

struct held_message;

struct supervisor {
	struct daemon_fixture f; /* the directory, the socket's path and the daemon's pid */
	char config_path[128];
	char log_path[128];
	int listen_fd;
	int notify_fd;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t changed;
	bool ready; /* the running daemon said READY=1 */
	bool stopping;
	struct stored_fd *store;
	size_t n_store, cap_store;
	/* While held, messages wait here unapplied, in order, until a BARRIER=1 comes or the
	 * case lets go: a manager slow to read them. */
	bool holding;
	struct held_message *held;
	size_t n_held, cap_held;
	unsigned long removals; /* FDSTOREREMOVE=1 messages received, applied or held */
	unsigned long barriers; /* BARRIER=1 messages answered */
};

/* Writes the configuration (as fixture_start: its [daemon] section added, on the emulated
 * backend with these devices, or with devices NULL on a kernel backend), sets up the sockets
 * and starts the first daemon ($IOMMUD_DAEMON if set, as in the VM tier's guest). */
void supervisor_start(struct supervisor *sv, const char *config, const char *devices);
/* Starts a daemon with the socket and the store. */
void supervisor_launch(struct supervisor *sv);
/* The same, and waits for its READY=1. */
void supervisor_spawn(struct supervisor *sv);
/* Forgets the running daemon's READY=1, before asking it to re-execute ... */
void supervisor_unready(struct supervisor *sv);
/* ... and waits for the next one. */
void supervisor_wait_ready(struct supervisor *sv);
/* kill -9, and every notification it sent before it died read and applied, held or not, as
 * systemd reads them before the death (its notifications come before SIGCHLD). */
void supervisor_kill(struct supervisor *sv);
/* SIGTERM, checks the exit status as fixture_stop does, closes the store, removes the
 * directory. */
void supervisor_stop(struct supervisor *sv);
/* Reads (and applies, unless held) every notification the daemon has sent so far: what it
 * sent before answering a request is read once the answer came. */
void supervisor_read_sent(struct supervisor *sv);
/* Holds the messages that come from now on unapplied, as a manager busy elsewhere would, until
 * a BARRIER=1 (which applies them, then is answered) or supervisor_let_go. */
void supervisor_hold(struct supervisor *sv);
/* Applies the held messages and reads the next ones as they come again. */
void supervisor_let_go(struct supervisor *sv);
/* FDSTOREREMOVE=1 messages received so far, applied or held, and BARRIER=1 answered. */
unsigned long supervisor_removals(struct supervisor *sv);
unsigned long supervisor_barriers(struct supervisor *sv);
/* Waits until more than since FDSTOREREMOVE=1 messages were received. */
void supervisor_wait_removals(struct supervisor *sv, unsigned long since);
/* Keeps fd in the store under name, as an earlier daemon would have; the supervisor owns fd
 * from then on. */
void supervisor_store(struct supervisor *sv, const char *name, int fd);
/* Descriptors in the store whose name starts with prefix. */
size_t supervisor_stored(struct supervisor *sv, const char *prefix);
/* The first stored descriptor whose name starts with prefix (the supervisor keeps it); -1
 * when none does. */
int supervisor_stored_fd(struct supervisor *sv, const char *prefix);
/* Whether the daemons' log holds text. */
bool supervisor_log_has(const struct supervisor *sv, const char *text);
/* How many lines of the daemons' log hold text: the log spans every daemon the supervisor ran,
 * so a count taken before a restart tells what the next daemon logged. */
size_t supervisor_log_count(const struct supervisor *sv, const char *text);

struct iommuctl;
/* Aborts, saying what failed and the daemon's message, where rc is a failure of c's. */
void supervisor_call_ok(struct iommuctl *c, int rc, const char *what);
/* A client, named after the test program, on lease (NULL: an anonymous session) of the running
 * daemon; the caller owns it (iommuctl_close). */
struct iommuctl *supervisor_connect_lease(const struct supervisor *sv, const char *lease);

#endif
