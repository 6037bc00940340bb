/* SPDX-License-Identifier: MIT */
/*
 * The systemd VM tier's DMA client (systemd-guest.sh, the survival steps): a client of the
 * installed daemon that holds a lease, maps two pages of a memfd at fixed IOVAs into the domain
 * its edu is attached to, and keeps the edu copying a fresh pattern from the first page to the
 * second, checking every byte, until SIGTERM.
 *
 * A thread does the DMA, round after round, whether or not a daemon runs: the lease's kernel
 * objects outlive the daemon (the store keeps them and the next daemon takes them over,
 * docs/operations.md, "Surviving a restart"), so the edu's descriptor OpenDevice gave is kept
 * across the daemon's death and a round that ends while the daemon is away (its socket hung
 * up, the client not back on a new connection yet) is counted in the restart window. The main
 * thread waits for the hang-up, reconnects (re-opening the lease, which waits for the next
 * daemon), checks that ListMappings answers exactly as before, and maps its pages again
 * (answered as done: they are in place).
 *
 * A stop (systemctl stop or restart: SIGTERM) is not a death: the daemon tears the leases'
 * kernel objects down, blocking the device's DMA, and the next daemon rebuilds them, which it
 * cannot while a client holds the device bound to the old context. SIGUSR1 says the next
 * hang-up is such a stop: the DMA pauses, the edu's descriptor is closed at the hang-up, and a
 * new one is opened once the lease is back.
 *
 * It writes its counters to STATUS_FILE (replaced whole, so a reader never sees half of it):
 *   generation=G opened=O rounds=R landed=L window=W window_faults=WF faults_after=F let_go=X
 *   state=S
 * G counts the connections the loop ran on, O the edu's descriptors it opened, X is 1 from a
 * SIGUSR1 to the hang-up it is for; S is "running", "stopped" (SIGTERM: exit 0),
 * "lost" (the new daemon holds no such lease: exit 3), "changed" (the mappings differ: exit 4),
 * "stuck" (the edu never finished a round's DMA: exit 5, the round said on stderr).
 *
 * usage: systemd-dma-loop LEASE DEVICE STATUS_FILE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "check.h"
#include "edu.h"

#define PAGE 4096u
/* edu masks DMA addresses to 28 bits; well clear of what the daemon places by itself. */
#define SRC_IOVA      0x8000000u
#define DST_IOVA      0x8001000u
#define LIST_MAX      4096u
#define STATE_LOST    3
#define STATE_CHANGED 4
#define STATE_STUCK   5

struct loop {
	const char *lease, *device, *status_path;
	struct iommuctl *c;
	uint32_t domain;
	int memfd;
	uint8_t *mem; /* source page, then destination page */
	int vfio;     /* the edu's descriptor */
	struct edu edu;
	uint8_t listed[LIST_MAX]; /* ListMappings' reply, as packed, when the loop started */
	size_t listed_len;
	/* Shared with the DMA thread, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t changed;
	bool away;   /* the daemon hung up and the client is not back yet */
	bool paused; /* the DMA thread is to leave the edu alone ... */
	bool idle;   /* ... and does */
	unsigned long generation, opened, rounds, landed, window, window_faults, faults_after;
};

static volatile sig_atomic_t stop, stopping_next;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		stopping_next = 1;
	else
		stop = 1;
}

/* Called with l->lock held, or before the DMA thread runs. */
static void write_status(const struct loop *l, const char *state)
{
	char tmp[512];
	FILE *f;

	(void)snprintf(tmp, sizeof(tmp), "%s.tmp", l->status_path);
	CHECK((f = fopen(tmp, "w")) != NULL);
	(void)fprintf(
		f,
		"generation=%lu opened=%lu rounds=%lu landed=%lu window=%lu window_faults=%lu "
		"faults_after=%lu let_go=%d state=%s\n",
		l->generation, l->opened, l->rounds, l->landed, l->window, l->window_faults,
		l->faults_after, (int)stopping_next, state);
	CHECK(fclose(f) == 0);
	CHECK(rename(tmp, l->status_path) == 0);
}

static __attribute__((noreturn)) void give_up(struct loop *l, const char *state, int status)
{
	(void)fprintf(stderr, "systemd-dma-loop: %s: %s\n", state, iommuctl_last_error(l->c));
	write_status(l, state);
	exit(status);
}

static void call_ok(struct loop *l, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "systemd-dma-loop: %s failed: %s\n", what,
			      iommuctl_last_error(l->c));
		exit(1);
	}
}

/* ListMappings of the domain, packed as the daemon answered it (one page: a few mappings). */
static size_t list_packed(struct loop *l, uint8_t *out)
{
	Iommud__V1__ListMappingsRequest list = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	size_t len;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &list;
	list.domain_id = l->domain;
	call_ok(l, iommuctl_call(l->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListMappings");
	resp->id = 0;
	len = iommud__v1__response__get_packed_size(resp);
	CHECK(len <= LIST_MAX && !resp->list_mappings->more);
	(void)iommud__v1__response__pack(resp, out);
	iommuctl_response_free(resp);
	return len;
}

/* The domain the device is attached to in the lease, allocated and attached if none is. */
static uint32_t device_domain(struct loop *l)
{
	Iommud__V1__ListDomainsRequest list = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	uint32_t domain = 0;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS;
	req.list_domains = &list;
	call_ok(l, iommuctl_call(l->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDomains");
	for (size_t i = 0; i < resp->list_domains->n_domains; i++)
		for (size_t j = 0; j < resp->list_domains->domains[i]->n_attached; j++)
			if (!strcmp(resp->list_domains->domains[i]->attached[j], l->device))
				domain = resp->list_domains->domains[i]->domain_id;
	iommuctl_response_free(resp);
	if (domain)
		return domain;
	call_ok(l, iommuctl_alloc_domain(l->c, l->device, IOMMUCTL_DOMAIN_PAGING, 0, &domain),
		"AllocDomain");
	call_ok(l, iommuctl_attach(l->c, l->device, domain), "AttachDevice");
	return domain;
}

/* Maps the two pages where they belong: done at once when they are in place already. */
static void map_pages(struct loop *l)
{
	uint64_t iova = SRC_IOVA;

	call_ok(l,
		iommuctl_map_fd(l->c, l->domain, l->memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0,
				&iova),
		"Map (source)");
	iova = DST_IOVA;
	call_ok(l,
		iommuctl_map_fd(l->c, l->domain, l->memfd, PAGE, PAGE,
				IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		"Map (destination)");
}

static void open_edu(struct loop *l)
{
	l->vfio = iommuctl_open_device(l->c, l->device);
	call_ok(l, l->vfio, "OpenDevice");
	edu_init(&l->edu, l->vfio);
	l->opened++;
}

/* Asks the DMA thread to leave the edu alone (paused) or go on, and waits until it does. */
static void pause_dma(struct loop *l, bool paused)
{
	(void)pthread_mutex_lock(&l->lock);
	l->paused = paused;
	(void)pthread_cond_broadcast(&l->changed);
	while (paused && !l->idle)
		(void)pthread_cond_wait(&l->changed, &l->lock);
	(void)pthread_mutex_unlock(&l->lock);
}

static void set_away(struct loop *l, bool away)
{
	(void)pthread_mutex_lock(&l->lock);
	l->away = away;
	if (!away)
		l->generation++;
	write_status(l, "running");
	(void)pthread_mutex_unlock(&l->lock);
}

/* The daemon went: the lease is re-opened (waiting for the next daemon) and must hold what it
 * held; the edu's descriptor is let go first only for a stop. */
static void come_back(struct loop *l)
{
	bool let_go = stopping_next;
	uint8_t now[LIST_MAX];
	size_t len;
	int rc;

	set_away(l, true);
	if (let_go) {
		stopping_next = 0;
		pause_dma(l, true);
		(void)close(l->vfio);
	}
	while ((rc = iommuctl_reconnect(l->c)) < 0) {
		if (rc == -ENOENT) {
			pause_dma(l, true);
			give_up(l, "lost", STATE_LOST);
		}
		if (stop) /* main writes "stopped" */
			return;
		(void)fprintf(stderr, "systemd-dma-loop: %s; trying again\n",
			      iommuctl_last_error(l->c));
	}
	len = list_packed(l, now);
	if (len != l->listed_len || memcmp(now, l->listed, len)) {
		pause_dma(l, true);
		give_up(l, "changed", STATE_CHANGED);
	}
	map_pages(l);
	if (let_go) {
		open_edu(l);
		pause_dma(l, false);
	}
	set_away(l, false);
}

/* One copy of a fresh pattern, memory -> device -> memory: whether every byte landed. A device
 * that never finishes is a failure of its own, said with its round, not a fault. */
static bool round_trip(struct loop *l, unsigned long round)
{
	uint8_t pattern = (uint8_t)(round % 251 + 1);

	memset(l->mem, pattern, EDU_XFER);
	memset(l->mem + PAGE, 0, EDU_XFER);
	if (!edu_dma_try(&l->edu, SRC_IOVA, EDU_XFER, false) ||
	    !edu_dma_try(&l->edu, DST_IOVA, EDU_XFER, true)) {
		(void)pthread_mutex_lock(&l->lock);
		(void)fprintf(stderr,
			      "systemd-dma-loop: round %lu: the edu did not finish its DMA\n",
			      round);
		write_status(l, "stuck");
		exit(STATE_STUCK);
	}
	return all_bytes(l->mem + PAGE, EDU_XFER, pattern);
}

static bool daemon_gone(const struct loop *l, int timeout_ms)
{
	struct pollfd p = {.fd = iommuctl_fd(l->c), .events = POLLIN};

	return poll(&p, 1, timeout_ms) == 1 && (p.revents & (POLLHUP | POLLIN | POLLERR));
}

/* Rounds until SIGTERM. A round is in the window when the daemon is away as it ends, which the
 * thread sees itself too (the hang-up already there): a stop blocks the DMA right after
 * closing the connections, maybe before the main thread woke up to it. */
static void *dma_thread(void *arg)
{
	struct loop *l = arg;
	unsigned long round = 0;

	while (!stop) {
		bool landed;

		(void)pthread_mutex_lock(&l->lock);
		while (l->paused && !stop) {
			l->idle = true;
			(void)pthread_cond_broadcast(&l->changed);
			(void)pthread_cond_wait(&l->changed, &l->lock);
		}
		l->idle = false;
		(void)pthread_mutex_unlock(&l->lock);
		landed = round_trip(l, round++);
		(void)pthread_mutex_lock(&l->lock);
		l->rounds++;
		l->landed += landed;
		if (l->away || daemon_gone(l, 0)) {
			l->window++;
			l->window_faults += !landed;
		} else {
			l->faults_after += !landed;
		}
		(void)pthread_mutex_unlock(&l->lock);
	}
	return NULL;
}

static void start(struct loop *l)
{
	l->memfd = iommuctl_memfd("systemd-dma-loop", 2 * PAGE);
	CHECK_OK(l->memfd);
	l->mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, l->memfd, 0);
	CHECK(l->mem != MAP_FAILED);
	if (iommuctl_connect(NULL, &l->c) < 0) {
		(void)fprintf(stderr, "systemd-dma-loop: %s\n", iommuctl_last_error(NULL));
		exit(1);
	}
	call_ok(l, iommuctl_hello(l->c, "systemd-dma-loop", l->lease, NULL), "Hello");
	l->domain = device_domain(l);
	map_pages(l);
	l->listed_len = list_packed(l, l->listed);
	open_edu(l);
	l->generation = 1;
}

int main(int argc, char **argv)
{
	struct loop l = {
		.vfio = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER};
	pthread_t dma;

	if (argc != 4) {
		(void)fprintf(stderr, "usage: systemd-dma-loop LEASE DEVICE STATUS_FILE\n");
		return 2;
	}
	l.lease = argv[1];
	l.device = argv[2];
	l.status_path = argv[3];
	(void)signal(SIGTERM, on_signal);
	(void)signal(SIGUSR1, on_signal);
	start(&l);
	CHECK(pthread_create(&dma, NULL, dma_thread, &l) == 0);
	while (!stop) {
		/* The connection is the main thread's while the daemon is away. */
		if (daemon_gone(&l, 100))
			come_back(&l);
		(void)pthread_mutex_lock(&l.lock);
		write_status(&l, "running");
		(void)pthread_mutex_unlock(&l.lock);
	}
	/* The thread ends after its round, or wakes from a pause to see stop. */
	(void)pthread_mutex_lock(&l.lock);
	(void)pthread_cond_broadcast(&l.changed);
	(void)pthread_mutex_unlock(&l.lock);
	CHECK(pthread_join(dma, NULL) == 0);
	write_status(&l, "stopped");
	iommuctl_close(l.c);
	return 0;
}
