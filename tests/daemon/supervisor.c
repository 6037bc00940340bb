// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* mkdtemp, pipe2 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "check.h"

#define MAX_FDS_PER_MESSAGE 64
#define SOCKET_NAME	    "iommud.socket"

static int bound_socket(const char *path, int type)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
	CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	return fd;
}

/* As systemd: past the maximum it exports as $FDSTORE (set by the case for the daemons it
 * starts), a descriptor is closed, and the daemon is not told. */
static void store_add(struct supervisor *sv, const char *name, int fd)
{
	const char *max = getenv("FDSTORE");

	if (max && sv->n_store >= strtoul(max, NULL, 10)) {
		(void)close(fd);
		return;
	}
	if (sv->n_store == sv->cap_store) {
		sv->cap_store = sv->cap_store ? 2 * sv->cap_store : 16;
		sv->store = realloc(sv->store, sv->cap_store * sizeof(*sv->store));
		CHECK(sv->store != NULL);
	}
	sv->store[sv->n_store].fd = fd;
	(void)snprintf(sv->store[sv->n_store++].name, sizeof(sv->store->name), "%s", name);
}

static void store_remove(struct supervisor *sv, const char *name)
{
	for (size_t i = 0; i < sv->n_store;) {
		if (strcmp(sv->store[i].name, name) == 0) {
			(void)close(sv->store[i].fd);
			sv->store[i] = sv->store[--sv->n_store];
		} else {
			i++;
		}
	}
}

/* The value of key= among the message's lines, copied into value; false when absent. */
static bool field(const char *text, const char *key, char *value, size_t size)
{
	size_t len = strlen(key);

	for (const char *line = text; line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, key, len) == 0 && line[len] == '=') {
			(void)snprintf(value, size, "%.*s", (int)strcspn(line + len + 1, "\n"),
				       line + len + 1);
			return true;
		}
	return false;
}

struct held_message {
	char *text;
	int fds[MAX_FDS_PER_MESSAGE];
	size_t n_fds;
};

/* One notification: its text and descriptors, applied to the store. */
static void handle_message(struct supervisor *sv, const char *text, const int *fds, size_t n_fds)
{
	char value[256], name[256] = "stored";

	(void)field(text, "FDNAME", name, sizeof(name));
	if (field(text, "FDSTORE", value, sizeof(value)) && strcmp(value, "1") == 0)
		for (size_t i = 0; i < n_fds; i++)
			store_add(sv, name, fds[i]);
	else
		for (size_t i = 0; i < n_fds; i++)
			(void)close(fds[i]);
	if (field(text, "FDSTOREREMOVE", value, sizeof(value)) && strcmp(value, "1") == 0)
		store_remove(sv, name);
	if (field(text, "READY", value, sizeof(value)) && strcmp(value, "1") == 0)
		sv->ready = true;
}

static void apply_held(struct supervisor *sv)
{
	for (size_t i = 0; i < sv->n_held; i++) {
		handle_message(sv, sv->held[i].text, sv->held[i].fds, sv->held[i].n_fds);
		free(sv->held[i].text);
	}
	sv->n_held = 0;
	sv->holding = false;
}

static void hold_message(struct supervisor *sv, const char *text, const int *fds, size_t n_fds)
{
	struct held_message *m;

	if (sv->n_held == sv->cap_held) {
		sv->cap_held = sv->cap_held ? 2 * sv->cap_held : 16;
		sv->held = realloc(sv->held, sv->cap_held * sizeof(*sv->held));
		CHECK(sv->held != NULL);
	}
	m = &sv->held[sv->n_held++];
	CHECK((m->text = strdup(text)) != NULL);
	memcpy(m->fds, fds, n_fds * sizeof(*fds));
	m->n_fds = n_fds;
}

/* As systemd: BARRIER=1 comes alone with one descriptor, which is closed once every earlier
 * message is applied; the daemon waits for that close. */
static void answer_barrier(struct supervisor *sv, const char *text, const int *fds, size_t n_fds)
{
	CHECK(strcmp(text, "BARRIER=1") == 0 && n_fds == 1);
	apply_held(sv);
	(void)close(fds[0]);
	sv->barriers++;
}

static void receive_message(struct supervisor *sv, const char *text, const int *fds, size_t n_fds)
{
	char value[8];

	if (field(text, "FDSTOREREMOVE", value, sizeof(value)) && strcmp(value, "1") == 0)
		sv->removals++;
	if (field(text, "BARRIER", value, sizeof(value)) && strcmp(value, "1") == 0)
		answer_barrier(sv, text, fds, n_fds);
	else if (sv->holding)
		hold_message(sv, text, fds, n_fds);
	else
		handle_message(sv, text, fds, n_fds);
}

/* Reads one waiting notification; false when none waits. */
static bool read_message(struct supervisor *sv)
{
	char text[4096], control[CMSG_SPACE(MAX_FDS_PER_MESSAGE * sizeof(int))];
	struct iovec iov = {text, sizeof(text) - 1};
	struct msghdr msg = {.msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = control,
			     .msg_controllen = sizeof(control)};
	int fds[MAX_FDS_PER_MESSAGE];
	size_t n_fds = 0;
	ssize_t n;

	/* Received and applied in one hold of the lock, so messages apply in the order sent. */
	(void)pthread_mutex_lock(&sv->lock);
	n = recvmsg(sv->notify_fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0) {
		(void)pthread_mutex_unlock(&sv->lock);
		CHECK(errno == EAGAIN || errno == EINTR);
		return false;
	}
	text[n] = '\0';
	/* More descriptors than fit would be dropped in silence, hiding a daemon's mistake. */
	CHECK(!(msg.msg_flags & MSG_CTRUNC));
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			n_fds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds, CMSG_DATA(c), n_fds * sizeof(int));
		}
	receive_message(sv, text, fds, n_fds);
	(void)pthread_cond_broadcast(&sv->changed);
	(void)pthread_mutex_unlock(&sv->lock);
	return true;
}

static void *notify_loop(void *arg)
{
	struct supervisor *sv = arg;
	struct pollfd p = {.fd = sv->notify_fd, .events = POLLIN};

	for (;;) {
		(void)pthread_mutex_lock(&sv->lock);
		bool stop = sv->stopping;
		(void)pthread_mutex_unlock(&sv->lock);
		if (stop)
			return NULL;
		if (poll(&p, 1, 20) > 0)
			while (read_message(sv))
				;
	}
}

void supervisor_start(struct supervisor *sv, const char *config, const char *devices)
{
	char topology[1024], notify_path[128];

	*sv = (struct supervisor){.listen_fd = -1, .notify_fd = -1};
	(void)snprintf(topology, sizeof(topology), "[iommu]\ndevices = %s\n", devices);
	fixture_write_config(&sv->f, config, devices ? topology : NULL, sv->config_path);
	(void)snprintf(sv->log_path, sizeof(sv->log_path), "%s/iommud.log", sv->f.dir);
	(void)snprintf(notify_path, sizeof(notify_path), "%s/notify", sv->f.dir);
	sv->listen_fd = bound_socket(sv->f.socket_path, SOCK_SEQPACKET);
	CHECK(chmod(sv->f.socket_path, 0666) == 0);
	CHECK(listen(sv->listen_fd, SOMAXCONN) == 0);
	sv->notify_fd = bound_socket(notify_path, SOCK_DGRAM);
	(void)pthread_mutex_init(&sv->lock, NULL);
	(void)pthread_cond_init(&sv->changed, NULL);
	CHECK(pthread_create(&sv->thread, NULL, notify_loop, sv) == 0);
	supervisor_spawn(sv);
}

/* In the child: the socket, then the store, at 3, 4, ...; the environment that says so. */
static void pass_fds(const struct supervisor *sv)
{
	size_t n = 1 + sv->n_store, len = strlen(SOCKET_NAME) + 1;
	char count[16], pid[16], *names;
	int *high = calloc(n, sizeof(int));

	for (size_t i = 0; i < sv->n_store; i++)
		len += strlen(sv->store[i].name) + 1;
	names = malloc(len);
	if (!high || !names)
		_exit(126);
	strcpy(names, SOCKET_NAME);
	/* Out of the way first, above the targets 3 .. n + 2, so no dup2 overwrites one not yet
	 * moved; not at a fixed height, which a limit of 1024 descriptors (the VM tier's guest)
	 * refuses. */
	high[0] = fcntl(sv->listen_fd, F_DUPFD_CLOEXEC, (int)(3 + n));
	for (size_t i = 0; i < sv->n_store; i++) {
		high[i + 1] = fcntl(sv->store[i].fd, F_DUPFD_CLOEXEC, (int)(3 + n));
		strcat(strcat(names, ":"), sv->store[i].name);
	}
	for (size_t i = 0; i < n; i++)
		if (high[i] < 0 || dup2(high[i], 3 + (int)i) < 0)
			_exit(126);
	(void)snprintf(count, sizeof(count), "%zu", n);
	(void)snprintf(pid, sizeof(pid), "%d", (int)getpid());
	(void)setenv("LISTEN_FDS", count, 1);
	(void)setenv("LISTEN_PID", pid, 1);
	(void)setenv("LISTEN_FDNAMES", names, 1);
}

void supervisor_launch(struct supervisor *sv)
{
	char notify_path[128];

	(void)snprintf(notify_path, sizeof(notify_path), "%s/notify", sv->f.dir);
	(void)pthread_mutex_lock(&sv->lock);
	sv->ready = false;
	sv->f.pid = fork();
	CHECK(sv->f.pid >= 0);
	if (sv->f.pid == 0) {
		const char *level = getenv("IOMMUD_TEST_LOG_LEVEL") ?: "notice";
		int log = open(sv->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);

		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (log < 0 || dup2(log, STDERR_FILENO) < 0)
			_exit(126);
		pass_fds(sv);
		(void)setenv("NOTIFY_SOCKET", notify_path, 1);
		execl(getenv("IOMMUD_DAEMON") ?: IOMMUD_BIN, "iommud", "--config", sv->config_path,
		      "--log-level", level, (char *)NULL);
		_exit(127);
	}
	(void)pthread_mutex_unlock(&sv->lock);
}

static bool is_ready(const struct supervisor *sv, unsigned long since)
{
	(void)since;
	return sv->ready;
}

static bool removed_since(const struct supervisor *sv, unsigned long since)
{
	return sv->removals > since;
}

/* Waits until done(sv, since) holds, checking the daemon is still alive to make it hold, so
 * that its death is said (while what) rather than left to ctest's timeout; called with the
 * lock held. */
static void wait_until(struct supervisor *sv,
		       bool (*done)(const struct supervisor *, unsigned long), unsigned long since,
		       const char *what)
{
	int status;

	while (!done(sv, since)) {
		struct timespec until;

		if (waitpid(sv->f.pid, &status, WNOHANG) != 0) {
			(void)fprintf(stderr, "the daemon died %s (wait status %#x): %s\n", what,
				      status, sv->log_path);
			abort();
		}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 20 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		(void)pthread_cond_timedwait(&sv->changed, &sv->lock, &until);
	}
}

/* Waits for READY=1 from the running daemon; called with the lock held. */
static void wait_ready(struct supervisor *sv)
{
	wait_until(sv, is_ready, 0, "at start");
}

void supervisor_spawn(struct supervisor *sv)
{
	supervisor_launch(sv);
	supervisor_wait_ready(sv);
}

static void set_locked(struct supervisor *sv, bool *flag, bool value)
{
	(void)pthread_mutex_lock(&sv->lock);
	*flag = value;
	(void)pthread_mutex_unlock(&sv->lock);
}

static unsigned long read_locked(struct supervisor *sv, const unsigned long *counter)
{
	unsigned long n;

	(void)pthread_mutex_lock(&sv->lock);
	n = *counter;
	(void)pthread_mutex_unlock(&sv->lock);
	return n;
}

void supervisor_unready(struct supervisor *sv)
{
	set_locked(sv, &sv->ready, false);
}

void supervisor_wait_ready(struct supervisor *sv)
{
	(void)pthread_mutex_lock(&sv->lock);
	wait_ready(sv);
	(void)pthread_mutex_unlock(&sv->lock);
}

void supervisor_kill(struct supervisor *sv)
{
	int status;

	CHECK(kill(sv->f.pid, SIGKILL) == 0);
	CHECK(waitpid(sv->f.pid, &status, 0) == sv->f.pid);
	/* What it sent before it died waits in the socket: the manager reads that too. */
	supervisor_read_sent(sv);
	supervisor_let_go(sv);
}

void supervisor_read_sent(struct supervisor *sv)
{
	while (read_message(sv))
		;
}

void supervisor_hold(struct supervisor *sv)
{
	set_locked(sv, &sv->holding, true);
}

unsigned long supervisor_removals(struct supervisor *sv)
{
	return read_locked(sv, &sv->removals);
}

unsigned long supervisor_barriers(struct supervisor *sv)
{
	return read_locked(sv, &sv->barriers);
}

void supervisor_store(struct supervisor *sv, const char *name, int fd)
{
	(void)pthread_mutex_lock(&sv->lock);
	store_add(sv, name, fd);
	(void)pthread_mutex_unlock(&sv->lock);
}

void supervisor_let_go(struct supervisor *sv)
{
	(void)pthread_mutex_lock(&sv->lock);
	apply_held(sv);
	(void)pthread_cond_broadcast(&sv->changed);
	(void)pthread_mutex_unlock(&sv->lock);
}

void supervisor_wait_removals(struct supervisor *sv, unsigned long since)
{
	(void)pthread_mutex_lock(&sv->lock);
	wait_until(sv, removed_since, since, "before it removed from the store");
	(void)pthread_mutex_unlock(&sv->lock);
}

void supervisor_stop(struct supervisor *sv)
{
	(void)pthread_mutex_lock(&sv->lock);
	sv->stopping = true;
	(void)pthread_mutex_unlock(&sv->lock);
	CHECK(pthread_join(sv->thread, NULL) == 0);
	apply_held(sv);
	free(sv->held);
	(void)close(sv->listen_fd);
	sv->listen_fd = -1;
	/* fixture_stop checks the exit status and that the socket is gone; the daemon does not
	 * remove a socket it was passed, so the path goes here. */
	CHECK(unlink(sv->f.socket_path) == 0);
	(void)close(sv->notify_fd);
	for (size_t i = 0; i < sv->n_store; i++)
		(void)close(sv->store[i].fd);
	free(sv->store);
	(void)pthread_mutex_destroy(&sv->lock);
	(void)pthread_cond_destroy(&sv->changed);
	fixture_stop(&sv->f);
}

size_t supervisor_stored(struct supervisor *sv, const char *prefix)
{
	size_t n = 0;

	(void)pthread_mutex_lock(&sv->lock);
	for (size_t i = 0; i < sv->n_store; i++)
		n += strncmp(sv->store[i].name, prefix, strlen(prefix)) == 0;
	(void)pthread_mutex_unlock(&sv->lock);
	return n;
}

int supervisor_stored_fd(struct supervisor *sv, const char *prefix)
{
	int fd = -1;

	(void)pthread_mutex_lock(&sv->lock);
	for (size_t i = 0; i < sv->n_store && fd < 0; i++)
		if (strncmp(sv->store[i].name, prefix, strlen(prefix)) == 0)
			fd = sv->store[i].fd;
	(void)pthread_mutex_unlock(&sv->lock);
	return fd;
}

size_t supervisor_log_count(const struct supervisor *sv, const char *text)
{
	char line[4096];
	size_t n = 0;
	FILE *log = fopen(sv->log_path, "r");

	CHECK(log != NULL);
	while (fgets(line, sizeof(line), log))
		n += strstr(line, text) != NULL;
	(void)fclose(log);
	return n;
}

bool supervisor_log_has(const struct supervisor *sv, const char *text)
{
	return supervisor_log_count(sv, text) > 0;
}

void supervisor_call_ok(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

struct iommuctl *supervisor_connect_lease(const struct supervisor *sv, const char *lease)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(sv->f.socket_path, &c));
	supervisor_call_ok(c, iommuctl_hello(c, program_invocation_short_name, lease, NULL),
			   "hello");
	return c;
}
