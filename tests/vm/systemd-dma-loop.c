/* SPDX-License-Identifier: MIT */
/*
 * The systemd VM tier's DMA client (systemd-guest.sh, the survival steps): a client of the
 * installed daemon that holds a lease, maps two pages of a memfd at fixed IOVAs into the domain
 * its edu is attached to, and keeps the edu copying a fresh pattern from the first page to the
 * second, checking every byte, until SIGTERM.
 *
 * When the daemon goes (its socket hangs up) the client closes the edu's descriptor at once, as
 * the kernel objects are rebuilt by the next daemon rather than taken over (docs/operations.md,
 * "Surviving a restart"): the round after which it saw the hang-up ran in the restart window,
 * on what the old daemon left, and is counted apart with whether it landed. Then it reconnects,
 * re-opens the lease, checks that ListMappings answers exactly as before the restart, maps its
 * pages again (answered as done: they are in place), opens the edu again and goes on; every byte of
 * a DMA issued after that must land.
 *
 * It writes its counters to STATUS_FILE (replaced whole, so a reader never sees half of it):
 *   generation=G rounds=R landed=L window=W window_faults=WF faults_after=F state=S
 * G counts the connections the loop ran on; S is "running", "lost" (the new daemon holds no
 * such lease: exit 3), "changed" (the mappings differ: exit 4).
 *
 * usage: systemd-dma-loop LEASE DEVICE STATUS_FILE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
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

struct loop {
	const char *lease, *device, *status_path;
	struct iommuctl *c;
	uint32_t domain;
	int memfd;
	uint8_t *mem; /* source page, then destination page */
	int vfio;     /* the edu's descriptor; -1 while the daemon is away */
	struct edu edu;
	uint8_t listed[LIST_MAX]; /* ListMappings' reply, as packed, when the loop started */
	size_t listed_len;
	unsigned long generation, rounds, landed, window, window_faults, faults_after;
};

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void write_status(const struct loop *l, const char *state)
{
	char tmp[512];
	FILE *f;

	(void)snprintf(tmp, sizeof(tmp), "%s.tmp", l->status_path);
	CHECK((f = fopen(tmp, "w")) != NULL);
	(void)fprintf(f,
		      "generation=%lu rounds=%lu landed=%lu window=%lu window_faults=%lu "
		      "faults_after=%lu state=%s\n",
		      l->generation, l->rounds, l->landed, l->window, l->window_faults,
		      l->faults_after, state);
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
	l->generation++;
}

/* The daemon went: the edu's descriptor goes before the next daemon rebinds the device, then
 * the lease is re-opened (waiting for the daemon) and must hold what it held. */
static void come_back(struct loop *l)
{
	uint8_t now[LIST_MAX];
	size_t len;
	int rc;

	(void)close(l->vfio);
	l->vfio = -1;
	while ((rc = iommuctl_reconnect(l->c)) < 0) {
		if (rc == -ENOENT)
			give_up(l, "lost", STATE_LOST);
		if (stop)
			exit(0);
		(void)fprintf(stderr, "systemd-dma-loop: %s; trying again\n",
			      iommuctl_last_error(l->c));
	}
	len = list_packed(l, now);
	if (len != l->listed_len || memcmp(now, l->listed, len))
		give_up(l, "changed", STATE_CHANGED);
	map_pages(l);
	open_edu(l);
}

/* One copy of a fresh pattern, memory -> device -> memory: whether every byte landed. */
static bool round_trip(struct loop *l)
{
	uint8_t pattern = (uint8_t)(l->rounds % 251 + 1);

	memset(l->mem, pattern, EDU_XFER);
	memset(l->mem + PAGE, 0, EDU_XFER);
	edu_dma(&l->edu, SRC_IOVA, EDU_XFER, false);
	edu_dma(&l->edu, DST_IOVA, EDU_XFER, true);
	l->rounds++;
	return all_bytes(l->mem + PAGE, EDU_XFER, pattern);
}

static bool daemon_gone(const struct loop *l)
{
	struct pollfd p = {.fd = iommuctl_fd(l->c), .events = POLLIN};

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLIN | POLLERR));
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
}

int main(int argc, char **argv)
{
	struct loop l = {.vfio = -1};

	if (argc != 4) {
		(void)fprintf(stderr, "usage: systemd-dma-loop LEASE DEVICE STATUS_FILE\n");
		return 2;
	}
	l.lease = argv[1];
	l.device = argv[2];
	l.status_path = argv[3];
	(void)signal(SIGTERM, on_term);
	start(&l);
	while (!stop) {
		bool landed = round_trip(&l);

		l.landed += landed;
		/* Hung up by now: the round ran in the restart window, at least in part, on the
		 * kernel objects the old daemon left behind. The edu's descriptor goes at once. */
		if (daemon_gone(&l)) {
			l.window++;
			l.window_faults += !landed;
			write_status(&l, "running");
			come_back(&l);
		} else {
			l.faults_after += !landed;
		}
		if (l.rounds % 16 == 0)
			write_status(&l, "running");
	}
	write_status(&l, "stopped");
	iommuctl_close(l.c);
	return 0;
}
