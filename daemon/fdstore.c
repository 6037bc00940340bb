// SPDX-License-Identifier: MIT
#include "fdstore.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "histogram.h"
#include "log.h"
#include "status.h"

/* The descriptors handed at start are the process's, read once from its environment. */
static struct handed {
	int fd; /* -1 once claimed */
	char *name;
} * handed;
static size_t n_handed;
/* Of those, the ones neither claimed nor dropped yet: still in the manager's store. */
static size_t n_unclaimed;
static bool read_env;

bool fdstore_available(void)
{
	const char *socket = getenv("NOTIFY_SOCKET");

	return socket && socket[0];
}

/* A count in decimal: strtoul alone would take a sign or blanks ("-1" as ULONG_MAX). */
static bool parse_count(const char *text, size_t *ret_n)
{
	char *end;
	unsigned long n;

	if (!text || text[0] < '0' || text[0] > '9')
		return false;
	errno = 0;
	n = strtoul(text, &end, 10);
	if (errno || *end || n > SIZE_MAX)
		return false;
	*ret_n = n;
	return true;
}

size_t fdstore_max(enum fdstore_source *ret_source)
{
	size_t n;

	if (parse_count(getenv("FDSTORE"), &n)) {
		*ret_source = FDSTORE_FROM_MANAGER;
		return n;
	}
	if (parse_count(getenv("IOMMUD_FDSTORE_MAX"), &n)) {
		*ret_source = FDSTORE_FROM_OVERRIDE;
		return n;
	}
	*ret_source = FDSTORE_FROM_UNIT;
	return FDSTORE_UNIT_MAX;
}

const char *fdstore_source_name(enum fdstore_source source)
{
	switch (source) {
	case FDSTORE_FROM_MANAGER:
		return "$FDSTORE";
	case FDSTORE_FROM_OVERRIDE:
		return "$IOMMUD_FDSTORE_MAX";
	case FDSTORE_FROM_UNIT:
		break;
	}
	return "assumed: systemd before 254 does not say, and no $IOMMUD_FDSTORE_MAX";
}

int fdstore_add(const char *name, int fd)
{
	char text[64 + 256];
	int rc;

	(void)snprintf(text, sizeof(text), "FDSTORE=1\nFDNAME=%s", name);
	rc = sd_pid_notify_with_fds(0, 0, text, &fd, 1);
	if (rc < 0)
		return fail(rc, "cannot hand %s to the service manager's descriptor store: %s",
			    name, strerror(-rc));
	if (rc == 0)
		return fail(-ENOTCONN, "no service manager to keep %s (NOTIFY_SOCKET is unset)",
			    name);
	return 0;
}

/* Kernel descriptors removed since the manager last confirmed it had read every message
 * before a barrier: until it reads them, its copies keep devices bound and pages pinned. */
static bool removals_unread;
/* Set by the first barrier the manager did not answer: one that does not answer the next
 * either would freeze the loop at every removal. */
static bool manager_silent;

/* Long enough for a manager under load. */
#define BARRIER_TIMEOUT_USEC (5 * 1000 * 1000ull)

/* How long a barrier may block the loop: a quarter of the watchdog interval at most, so a
 * timeout cannot make the next ping late. The tests set IOMMUD_TEST_BARRIER_USEC so that
 * nothing they check depends on how fast their supervisor gets to its socket. */
static uint64_t barrier_timeout(void)
{
	const char *test = getenv("IOMMUD_TEST_BARRIER_USEC");
	uint64_t usec = test ? strtoull(test, NULL, 10) : BARRIER_TIMEOUT_USEC, watchdog;

	if (sd_watchdog_enabled(0, &watchdog) > 0 && watchdog / 4 < usec)
		usec = watchdog / 4;
	return usec;
}

/* Whether the message went to a manager. */
static bool send_remove(const char *name)
{
	static bool warned;
	int rc = sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=%s", name);

	if (rc >= 0 || warned)
		return rc > 0;
	warned = true;
	log_warning("cannot ask the service manager to close its copy of '%s' (%s); later "
		    "failures are not logged: the next daemon closes what the manager still "
		    "holds as strays, so restart iommud if a released device stays busy (EBUSY)",
		    name, strerror(-rc));
	return false;
}

void fdstore_remove(const char *name)
{
	(void)send_remove(name);
}

void fdstore_remove_kernel(const char *name)
{
	if (!send_remove(name) || manager_silent)
		return;
	removals_unread = true;
}

/* sd_notify_barrier gives up on any signal (its ppoll is never restarted), and the daemon's
 * own SIGUSR2, SIGTERM and SIGHUP may come during the wait: each try sends a new barrier,
 * which the manager also answers only after the removals. */
static int barrier(uint64_t timeout_usec)
{
	uint64_t deadline = monotonic_ns() / 1000 + timeout_usec, now;
	int rc;

	while ((rc = sd_notify_barrier(0, timeout_usec)) == -EINTR) {
		now = monotonic_ns() / 1000;
		if (now >= deadline)
			return -ETIMEDOUT;
		timeout_usec = deadline - now;
	}
	return rc;
}

void fdstore_sync(void)
{
	uint64_t timeout_usec;
	int rc;

	if (!removals_unread)
		return;
	removals_unread = false;
	timeout_usec = barrier_timeout();
	rc = barrier(timeout_usec);
	if (rc >= 0) {
		log_debug("the service manager has read every removal from its store");
		return;
	}
	if (rc != -ETIMEDOUT) {
		/* The daemon's own trouble (no descriptor for the barrier's pipe, no memory), not
		 * the manager's: the next removal waits again. */
		log_warning("cannot wait for the service manager to read the removals from its "
			    "store (%s): another session's OpenDevice of a device just released "
			    "may fail with EBUSY until it has",
			    strerror(-rc));
		return;
	}
	manager_silent = true;
	log_warning("the service manager did not answer BARRIER=1 within %llu ms (%s): the "
		    "daemon no longer waits for it to close the kernel descriptors of released "
		    "leases, so another session's OpenDevice of a device just released may fail "
		    "with EBUSY until it does; check that PID 1 is systemd 246 or later and is "
		    "responsive, then restart iommud to wait again",
		    (unsigned long long)(timeout_usec / 1000), strerror(-rc));
}

int fdstore_handed(void)
{
	char **names = NULL;
	int n;

	if (read_env)
		return (int)n_handed;
	n = sd_listen_fds_with_names(1, &names);
	if (n < 0)
		return fail(n, "cannot read the descriptors the service manager passed: %s",
			    strerror(-n));
	handed = n ? calloc((size_t)n, sizeof(*handed)) : NULL;
	if (n && !handed) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
		return fail(-ENOMEM, "out of memory for the descriptors passed at start");
	}
	for (int i = 0; i < n; i++) {
		handed[i] = (struct handed){.fd = SD_LISTEN_FDS_START + i, .name = names[i]};
		(void)fcntl(handed[i].fd, F_SETFD, FD_CLOEXEC);
	}
	free(names);
	n_handed = (size_t)n;
	n_unclaimed = n_handed;
	read_env = true;
	return n;
}

const char *fdstore_handed_name(size_t i)
{
	return i < n_handed && handed[i].fd >= 0 ? handed[i].name : NULL;
}

int fdstore_claim(size_t i)
{
	int fd = handed[i].fd;

	n_unclaimed -= fd >= 0;
	handed[i].fd = -1;
	return fd;
}

int fdstore_claim_name(const char *name)
{
	for (size_t i = 0; i < n_handed; i++)
		if (handed[i].fd >= 0 && strcmp(handed[i].name, name) == 0)
			return fdstore_claim(i);
	return -ENOENT;
}

int fdstore_claim_listener(void)
{
	size_t found = SIZE_MAX, n = 0;

	for (size_t i = 0; i < n_handed; i++) {
		if (handed[i].fd < 0 || sd_is_socket(handed[i].fd, AF_UNSPEC, 0, -1) <= 0)
			continue;
		if (sd_is_socket_unix(handed[i].fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0)
			return fail(-EINVAL,
				    "the socket the service manager passed ('%s') is not a "
				    "listening SOCK_SEQPACKET Unix socket; check "
				    "iommud.socket",
				    handed[i].name);
		found = i;
		n++;
	}
	if (n > 1)
		return fail(-EINVAL, "the service manager passed %zu sockets; iommud takes one", n);
	return n ? fdstore_claim(found) : -ENOENT;
}

int fdstore_give_up(int fd, const char *name, char ret_device[KH_NAME_MAX])
{
	int rc = fd < 0 ? 0 : kh_device_fd_block(fd, ret_device);

	if (rc < 0)
		log_warning("cannot block the DMA of a device that '%s' from the service manager's "
			    "store may hold before closing it (%s): the device may still be "
			    "attached, its DMA live into the earlier context's mappings, until the "
			    "client holding the same device file closes it; an administrator can "
			    "stop that client, or unbind the device from vfio-pci, which asks the "
			    "holder to let it go and waits until it does",
			    name, kh_last_error());
	if (fd >= 0)
		(void)close(fd);
	/* It may hold a device the daemon is about to bind. */
	fdstore_remove_kernel(name);
	return rc;
}

/* Says what was given up of a stray: an anonymous session's device, which only a daemon that
 * died (or re-executed) with the session leaves, or anything else no record names. */
static void say_dropped(const char *name, int blocked, const char *device)
{
	uint32_t session, dev_id;

	if (blocked > 0 && fdstore_anon_parse(name, &session, &dev_id))
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_DEVICE", device}),
			   "anonymous session %u's device {IOMMUD_DEVICE} was left attached by a "
			   "daemon that was killed or re-executed: detached, so its DMA is "
			   "blocked; the client holding it must close it and open the device "
			   "again",
			   session);
	else if (blocked > 0)
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_DEVICE", device}),
			   "closed descriptor '%s' from the store: no record names it; it held "
			   "device {IOMMUD_DEVICE}, detached first so that its DMA is blocked",
			   name);
	else
		log_notice("closed descriptor '%s' from the store: no record names it", name);
}

/* An anonymous session's context: what it still pins (the session's mappings, charged to the
 * dead daemon and to no quota) is released, then its descriptor given up. */
static void release_anon_ctx(int fd, const char *name, uint32_t session, uint32_t max_id)
{
	uint64_t bytes;
	uint32_t emptied;
	int rc = kh_ctx_fd_release(fd, max_id, &bytes, &emptied);

	if (rc < 0)
		log_warning("cannot release the memory the context of anonymous session %u ('%s' "
			    "in the service manager's store) pins (%s): it stays pinned, outside "
			    "any quota, until the client holding the session's device closes it",
			    session, name, kh_last_error());
	else
		log_notice("anonymous session %u was left by a daemon that was killed or "
			   "re-executed: released %" PRIu64 " bytes mapped and pinned in %" PRIu32
			   " address spaces of its kernel context, and closed '%s'",
			   session, bytes, emptied, name);
	(void)close(fd);
	fdstore_remove_kernel(name);
}

/* Two passes: every device is blocked (the first) before an anonymous session's context is
 * emptied (the second), so that no DMA runs into a domain while its mappings go. */
static void drop_stray(struct handed *h, bool contexts)
{
	char device[KH_NAME_MAX];
	uint32_t session, max_id;
	bool is_ctx = fdstore_anon_ctx_parse(h->name, &session, &max_id);
	int blocked;

	if (h->fd < 0 || is_ctx != contexts)
		return;
	if (is_ctx) {
		release_anon_ctx(h->fd, h->name, session, max_id);
	} else {
		blocked = fdstore_give_up(h->fd, h->name, device);
		say_dropped(h->name, blocked, device);
	}
	h->fd = -1;
	n_unclaimed--;
}

void fdstore_drop_strays(void)
{
	for (size_t i = 0; i < n_handed; i++)
		drop_stray(&handed[i], false);
	for (size_t i = 0; i < n_handed; i++) {
		drop_stray(&handed[i], true);
		free(handed[i].name);
	}
	free(handed);
	handed = NULL;
	n_handed = 0;
	n_unclaimed = 0;
}

size_t fdstore_unclaimed(void)
{
	return n_unclaimed;
}

/* "anon<session><kind><number>": one shape for every name an anonymous session's descriptor
 * has, so that one parser reads them all back. */
static void anon_format(uint32_t session, const char *kind, uint32_t number,
			char name[FDSTORE_ANON_NAME])
{
	(void)snprintf(name, FDSTORE_ANON_NAME, "anon%u%s%u", session, kind, number);
}

static bool anon_parse(const char *name, const char *kind, uint32_t *ret_session,
		       uint32_t *ret_number)
{
	char format[32], again[FDSTORE_ANON_NAME];
	unsigned session, number;
	int end = 0;

	(void)snprintf(format, sizeof(format), "anon%%u%s%%u%%n", kind);
	if (sscanf(name, format, &session, &number, &end) != 2 || name[end])
		return false;
	/* Only the name anon_format gives: no sign, no leading zero, no overflow. */
	anon_format(session, kind, number, again);
	if (strcmp(again, name) != 0)
		return false;
	*ret_session = session;
	*ret_number = number;
	return true;
}

void fdstore_anon_name(uint32_t session, uint32_t dev_id, char name[FDSTORE_ANON_NAME])
{
	anon_format(session, ".device", dev_id, name);
}

bool fdstore_anon_parse(const char *name, uint32_t *ret_session, uint32_t *ret_dev_id)
{
	return anon_parse(name, ".device", ret_session, ret_dev_id);
}

void fdstore_anon_ctx_name(uint32_t session, uint32_t max_id, char name[FDSTORE_ANON_NAME])
{
	anon_format(session, ".iommu.ids", max_id, name);
}

bool fdstore_anon_ctx_parse(const char *name, uint32_t *ret_session, uint32_t *ret_max_id)
{
	return anon_parse(name, ".iommu.ids", ret_session, ret_max_id);
}
