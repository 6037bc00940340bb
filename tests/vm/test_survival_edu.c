/* SPDX-License-Identifier: MIT */
/*
 * Survival on a real kernel: iommud on a kernel backend (VM_BACKEND: "auto", iommufd in the VM
 * tier's guest where the kernel has it, or "vfio-type1") under the test supervisor, which keeps the
 * descriptor store as systemd does. A client makes a lease, a domain with the edu attached and a
 * memfd mapped into it, and sees the edu's DMA land; then the daemon is killed (SIGKILL) and
 * restarted, and re-executed (SIGUSR2). After each the client reconnects with its lease's name and
 * finds the same domain id, the edu still attached, ListDomains and ListMappings answered byte for
 * byte as before, and the edu's DMA landing in the memfd again.
 *
 * The backend's kernel objects are taken over (the "adopt" capability: iommufd's context, VFIO
 * type1's containers and groups), so the client holds the device's fd throughout, as a VM
 * manager does, and a child process keeps the edu copying memfd -> device -> memfd through the
 * lease's mappings, checking every byte of every round: rounds complete while no daemon runs
 * (between the kill and the restart) and after each restart and re-execution, so no DMA faults
 * at any point; the store holds the same open files (/dev/iommu or the domain's container, the
 * device's cdev or its group) before and after, on iommufd the client's fd is that same device
 * file, the daemon's log says it took the objects over, and the kernel logged no new IOMMU
 * fault. Then the new daemon removes a mapping the killed one made and makes it again. Where
 * the kernel maps files by descriptor (Linux 6.13 and later), neither the daemon nor its
 * successors map the memfd in their own address space, the kernel holding it for the mappings
 * throughout; elsewhere each does. The test runs on both backends (VM_BACKEND).
 *
 * Then, on iommufd, the daemon that kills itself before its record holds an AllocDomain
 * (iommud_kill_points, survival_kill_points.c) is killed inside one: the next daemon destroys
 * the domain the kernel made and the lease is as it was. Then a restart that no longer allows
 * the edu leaves its Bind and its domain out of the replay: the next daemon destroys that
 * domain, and the lease is made again with the edu allowed.
 *
 * On vfio-type1 the lease then gets a second domain, tracking dirty pages, with the memfd mapped
 * and no device attached: its container holds no group at the next kill -9, so the kernel keeps
 * no tracking for it. After the restart the edu is attached to it, its DMA lands, and ReadDirty
 * reports the page it wrote, as it would in a domain the new daemon made.
 *
 * On both, the lease is then released and the daemon killed before a snapshot drops the
 * release: the next one ends it as released with no take-over tried.
 *
 * Where the daemon delegates (iommufd), a lease is then made, released and the edu handed to a VMM
 * (a child process) with DelegateDevices: after a kill and a restart the next daemon lists the
 * delegation byte for byte as before and refuses the edu to another lease (handed to another
 * process), and once the VMM exits that lease takes it.
 *
 * Before the lease, where objects can be taken over, an anonymous session (which does not
 * survive) binds the edu, maps the memfd, and its client takes the device's fd and sees DMA
 * land, the memfd's pages pinned; after a kill -9 and a restart the fd the client still holds
 * must be blocked: the new daemon detached the device, emptied the session's context (the
 * kernel finds nothing left mapped in its IOAS, asked through a copy of the context's
 * descriptor the test took from the store), said so, and left nothing of it in the store; the
 * device stays busy for other sessions until the client closes that fd, then is free again. The
 * same again across a re-execution, which passes the device's descriptor on to the new image.
 *
 * Runs in the VM tier only (exit 77, skipped, outside its guest or where no edu is bound to
 * vfio-pci).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iommuctl.h>
#include <kh/kh.h>

#include "check.h"
#include "daemon_edu.h"
#include "edu.h"
#include "supervisor.h"

#ifndef VM_BACKEND
#define VM_BACKEND "auto"
#endif

#define PAGE	 4096u
#define SRC_IOVA 0x100000u /* edu masks DMA addresses to 28 bits: stay below 256 MiB */
#define DST_IOVA 0x101000u
#define LEASE	 "edu-survivor"

/* Root may take every device (the built-in rule), hold a lease and hand devices to a VMM. */
#define CONFIG_DEVICES(devices)                                                                    \
	"probe-tier = off\n[uid 0]\naccess = write\ndevices = " devices "\nmax-leases = 2\n"       \
	"delegate = yes\n"
static const char config[] = CONFIG_DEVICES("*");
/* The same with the edu no longer allowed (no such PCI address in the guest). */
static const char config_without_edu[] = CONFIG_DEVICES("0000:ff:1f.7");

struct survivor {
	struct supervisor sv;
	struct iommuctl *c;
	char *name; /* the edu's, which the daemon offered */
	uint32_t dom;
	uint8_t *mem; /* the memfd's two pages: the source, then the destination */
	int memfd;
	bool adopt;	     /* the daemon takes kernel objects over (capability "adopt") */
	bool delegate;	     /* it hands devices to VMMs (capability "delegate") */
	const char *backend; /* Hello's name of it */
};

/* What the client sees of its lease, as the daemon encodes it: ListDomains, then ListMappings
 * of the one domain (two mappings: one reply). */
struct answers {
	uint8_t bytes[4096];
	size_t len;
};

static void append_reply(struct iommuctl *c, Iommud__V1__Request *req, struct answers *a)
{
	Iommud__V1__Response *resp;
	size_t len;

	check_call(c, iommuctl_call(c, req, NULL, 0, &resp, NULL, 0, NULL), "List");
	/* The results are a oneof, a union: which one came is result_case's to say. */
	if (resp->result_case == IOMMUD__V1__RESPONSE__RESULT_LIST_DOMAINS) {
		len = iommud__v1__list_domains_reply__get_packed_size(resp->list_domains);
		CHECK(a->len + len <= sizeof(a->bytes));
		a->len +=
			iommud__v1__list_domains_reply__pack(resp->list_domains, a->bytes + a->len);
	} else {
		CHECK_EQ(resp->result_case, IOMMUD__V1__RESPONSE__RESULT_LIST_MAPPINGS);
		CHECK(!resp->list_mappings->more);
		CHECK_EQ(resp->list_mappings->n_mappings, 2);
		len = iommud__v1__list_mappings_reply__get_packed_size(resp->list_mappings);
		CHECK(a->len + len <= sizeof(a->bytes));
		a->len += iommud__v1__list_mappings_reply__pack(resp->list_mappings,
								a->bytes + a->len);
	}
	iommuctl_response_free(resp);
}

static void answers_of(struct survivor *s, struct answers *a)
{
	Iommud__V1__ListDomainsRequest domains = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;
	Iommud__V1__ListMappingsRequest mappings = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	a->len = 0;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS;
	req.list_domains = &domains;
	append_reply(s->c, &req, a);
	mappings.domain_id = s->dom;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS;
	req.list_mappings = &mappings;
	append_reply(s->c, &req, a);
}

/* The edu attached to the lease's domain, as ListDomains says. */
static void check_attached(struct survivor *s)
{
	Iommud__V1__ListDomainsRequest list = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS;
	req.list_domains = &list;
	check_call(s->c, iommuctl_call(s->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDomains");
	CHECK_EQ(resp->list_domains->n_domains, 1);
	CHECK_EQ(resp->list_domains->domains[0]->domain_id, s->dom);
	CHECK_EQ(resp->list_domains->domains[0]->n_attached, 1);
	CHECK(strcmp(resp->list_domains->domains[0]->attached[0], s->name) == 0);
	iommuctl_response_free(resp);
}

/* A connection in the lease's session, or with lease NULL in the anonymous one. */
static struct iommuctl *connect_as(struct survivor *s, const char *lease)
{
	Iommud__V1__HelloReply *hello;
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(s->sv.f.socket_path, &c));
	check_call(c, iommuctl_hello(c, "test_survival_edu", lease, &hello), "Hello");
	(void)printf("backend: %s\n", hello->backend_name);
	for (size_t i = 0; i < hello->n_capabilities; i++) {
		s->adopt |= strcmp(hello->capabilities[i], "adopt") == 0;
		s->delegate |= strcmp(hello->capabilities[i], "delegate") == 0;
	}
	iommud__v1__hello_reply__free_unpacked(hello, NULL);
	return c;
}

static void connect_lease(struct survivor *s)
{
	s->c = connect_as(s, LEASE);
}

/* The lease: a domain for the edu, the edu attached, the memfd's pages mapped at SRC_IOVA
 * (read) and DST_IOVA (read and write). */
static void make_lease(struct survivor *s)
{
	uint64_t iova = SRC_IOVA;

	s->mem = attach_with_memfd(s->c, s->name, &s->dom, &s->memfd);
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, s->memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0,
				   &iova),
		   "Map source");
	iova = DST_IOVA;
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, s->memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination");
}

/* Opens the edu through the lease (the caller closes the fd) and checks that memory -> device
 * -> memory lands byte for byte through the lease's mappings. */
static int check_dma_lands(struct survivor *s, const char *when)
{
	struct edu edu;
	int vfio = iommuctl_open_device(s->c, s->name);

	check_call(s->c, vfio, "OpenDevice");
	edu_init(&edu, vfio);
	memset(s->mem + PAGE, 0, PAGE);
	edu_dma(&edu, SRC_IOVA, EDU_XFER, false);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(memcmp(s->mem + PAGE, s->mem, EDU_XFER) == 0);
	(void)printf("ok: %s, the edu's DMA landed in the memfd byte for byte\n", when);
	return vfio;
}

/* The lease as it was: same domain, the edu attached, the same answers, DMA landing. */
static void check_lease_back(struct survivor *s, const struct answers *before, const char *when)
{
	struct answers after;

	connect_lease(s);
	check_attached(s);
	answers_of(s, &after);
	CHECK_EQ(after.len, before->len);
	CHECK(memcmp(after.bytes, before->bytes, before->len) == 0);
	(void)printf("ok: %s, domain %u with %s attached and its mappings are as they were\n", when,
		     s->dom, s->name);
	check_daemon_view(s->sv.f.pid, s->memfd, s->backend, when);
	(void)close(check_dma_lands(s, when));
}

static void kill_and_restart(struct survivor *s)
{
	supervisor_kill(&s->sv);
	supervisor_spawn(&s->sv);
}

static void reexecute(struct survivor *s)
{
	pid_t pid = s->sv.f.pid;

	supervisor_unready(&s->sv);
	CHECK(kill(pid, SIGUSR2) == 0);
	supervisor_wait_ready(&s->sv);
	CHECK_EQ(s->sv.f.pid, pid);
}

/* ---- an anonymous session's device, held across a kill ---------------------------------- */

/* The session's kernel context, as the store keeps it (the first anonymous session a daemon
 * keeps there is its number 1), in a descriptor of the test's own that outlives the store's. */
static int anon_context(struct survivor *s)
{
	int fd = supervisor_stored_fd(&s->sv, "anon1.iommu.ids");

	CHECK(fd >= 0);
	fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	CHECK(fd >= 0);
	return fd;
}

/* What the context still maps and pins, in the kernel's words: emptying it through the test's
 * own descriptor unmaps nothing once the daemon released it, and the session's IOAS is still
 * there to be asked. iommufd gives each object of a context the lowest id free, and the
 * session made a handful, so they lie well below 64. */
static void check_context_released(int context)
{
	uint64_t bytes;
	uint32_t emptied;

	CHECK_OK(kh_ctx_fd_release(context, 64, &bytes, &emptied));
	CHECK(emptied >= 1);
	CHECK_EQ(bytes, 0);
	(void)close(context);
}

/* An anonymous session's client holds the edu's fd across a kill -9 and a restart, or a
 * re-execution (how): the new daemon blocks its DMA (docs/operations.md, "Surviving a
 * restart"). The edu's buffer still holds the pattern the landed round copied into it, so a
 * device -> memory copy through the held fd that leaves the destination zero was blocked. */
static void check_anonymous_blocked(struct survivor *s, void (*restart)(struct survivor *s),
				    const char *how)
{
	struct iommuctl *c = connect_as(s, NULL), *other;
	char released[64];
	const char *const said[] = {"was left attached by a daemon that was killed",
				    "detached, so its DMA is blocked", released};
	enum { N_SAID = sizeof(said) / sizeof(said[0]) };
	size_t said_before[N_SAID];
	uint64_t iova = SRC_IOVA;
	uint32_t dom;
	struct edu edu;
	uint8_t *mem;
	int memfd, held, context;

	mem = attach_with_memfd(c, s->name, &dom, &memfd);
	check_call(c, iommuctl_map_fd(c, dom, memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		   "Map source");
	iova = DST_IOVA;
	check_call(c,
		   iommuctl_map_fd(c, dom, memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination");
	held = iommuctl_open_device(c, s->name);
	check_call(c, held, "OpenDevice");
	edu_init(&edu, held);
	edu_dma(&edu, SRC_IOVA, EDU_XFER, false);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(memcmp(mem + PAGE, mem, EDU_XFER) == 0);
	supervisor_read_sent(&s->sv);
	/* The device's descriptor and the context's. */
	CHECK_EQ(supervisor_stored(&s->sv, "anon"), 2);
	context = anon_context(s);
	(void)printf("ok: an anonymous session's DMA landed, its device and context kept in the "
		     "store\n");

	/* The log holds the earlier rounds' lines too: only the restarted daemon's count. */
	(void)snprintf(released, sizeof(released), "released %" PRIu32 " bytes", 2 * PAGE);
	for (size_t i = 0; i < N_SAID; i++)
		said_before[i] = supervisor_log_count(&s->sv, said[i]);
	restart(s);
	for (size_t i = 0; i < N_SAID; i++)
		CHECK_EQ(supervisor_log_count(&s->sv, said[i]), said_before[i] + 1);
	CHECK_EQ(supervisor_stored(&s->sv, "anon"), 0);
	check_context_released(context);
	(void)printf("ok: after %s, the session's context maps and pins nothing\n", how);
	memset(mem + PAGE, 0, PAGE);
	edu_dma(&edu, DST_IOVA, EDU_XFER, true);
	CHECK(all_bytes(mem + PAGE, EDU_XFER, 0));
	(void)printf("ok: after %s, the held fd's DMA is blocked\n", how);

	other = connect_as(s, NULL);
	CHECK(iommuctl_alloc_domain(other, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &dom) == -EBUSY);
	CHECK(strstr(iommuctl_last_error(other), "through a VFIO device fd"));
	(void)close(held);
	check_call(other, iommuctl_alloc_domain(other, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &dom),
		   "AllocDomain once the held fd is closed");
	(void)printf("ok: the device is busy while the client holds its fd, free once closed\n");
	iommuctl_close(c);
	iommuctl_close(other);
	/* What follows starts from a daemon that has bound nothing. */
	kill_and_restart(s);
	(void)munmap(mem, 2 * PAGE);
	(void)close(memfd);
}

/* ---- the kernel objects taken over ------------------------------------------------------- */

/* A child process keeping the edu busy through the held fd: each round writes a fresh pattern
 * into the source page, clears the destination, copies memfd -> device -> memfd and checks
 * every byte, then reports the round on a pipe; it stops at the first round that does not land
 * (exit 1) or when the pipe's reader is gone or SIGTERM comes (exit 0 after a whole round). */
struct dma_loop {
	pid_t pid;
	int rounds; /* read end: a byte per round landed */
};

static volatile sig_atomic_t loop_stop;

static void on_term(int sig)
{
	(void)sig;
	loop_stop = 1;
}

static void loop_run(uint8_t *mem, int vfio, int out)
{
	struct edu edu;
	uint8_t round = 0;

	(void)signal(SIGTERM, on_term);
	edu_init(&edu, vfio);
	while (!loop_stop) {
		memset(mem, ++round | 1, EDU_XFER);
		memset(mem + PAGE, 0, EDU_XFER);
		edu_dma(&edu, SRC_IOVA, EDU_XFER, false);
		edu_dma(&edu, DST_IOVA, EDU_XFER, true);
		if (!all_bytes(mem + PAGE, EDU_XFER, round | 1)) {
			/* Not stdio: another thread may have held its lock at the fork. */
			(void)dprintf(STDOUT_FILENO, "DMA round %u did not land: a fault\n", round);
			_exit(1);
		}
		if (write(out, &round, 1) != 1)
			_exit(0);
	}
	_exit(0);
}

static void loop_start(struct survivor *s, int vfio, struct dma_loop *l)
{
	int p[2];

	CHECK(pipe2(p, O_CLOEXEC) == 0);
	l->pid = fork();
	CHECK(l->pid >= 0);
	if (l->pid == 0) {
		(void)close(p[0]);
		loop_run(s->mem, vfio, p[1]);
	}
	(void)close(p[1]);
	l->rounds = p[0];
}

/* Waits until n more rounds have landed. */
static void loop_await(struct dma_loop *l, int n)
{
	uint8_t round;

	for (int i = 0; i < n; i++)
		CHECK(read(l->rounds, &round, 1) == 1);
}

static void loop_end(struct dma_loop *l)
{
	int status;

	CHECK(kill(l->pid, SIGTERM) == 0);
	/* The loop may block on a full pipe: drain it till the child has gone. */
	while (waitpid(l->pid, &status, WNOHANG) == 0) {
		uint8_t buf[256];

		(void)!read(l->rounds, buf, sizeof(buf));
	}
	(void)close(l->rounds);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* IOMMU faults the kernel has logged so far: lines saying "fault" (VT-d: "DMAR: [DMA Write
 * NO_PASID] Request device [...] fault addr"; AMD-Vi: "IO_PAGE_FAULT"; virtio-iommu: "fault"). */
static size_t kernel_faults(void)
{
	static char buf[1 << 20];
	int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, sizeof(buf) - 1);
	size_t count = 0;

	CHECK(n >= 0);
	buf[n] = '\0';
	for (const char *p = buf; (p = strcasestr(p, "fault")); p++)
		count++;
	return count;
}

/* Whether a and b are one open file: its status flags are shared, so O_NONBLOCK set through a
 * shows through b (kcmp needs CONFIG_KCMP, which the VM tier's kernels may lack). Neither
 * /dev/iommu nor a VFIO device file reads the flag for the ioctls and pread/pwrite used here. */
static bool same_file(int a, int b)
{
	int flags_a = fcntl(a, F_GETFL), same;

	CHECK(flags_a >= 0 && fcntl(a, F_SETFL, flags_a ^ O_NONBLOCK) == 0);
	same = (fcntl(b, F_GETFL) & O_NONBLOCK) == ((flags_a ^ O_NONBLOCK) & O_NONBLOCK);
	CHECK(fcntl(a, F_SETFL, flags_a) == 0);
	return same;
}

/* The store's kernel descriptors of the lease, copies to compare after a restart: what holds
 * the domain (iommufd: the context's /dev/iommu; vfio-type1: the domain's container) and the
 * device (iommufd: its VFIO cdev, the very file the client holds; vfio-type1: its group's
 * file, which the client's device fd holds open too). */
struct kernel_files {
	int domain, device;
};

static const char *domain_file_name(const struct survivor *s)
{
	return strcmp(s->backend, "iommufd") == 0 ? "lease1.iommu" : "lease1.domain";
}

static void kernel_files_of(struct survivor *s, struct kernel_files *k)
{
	int domain = supervisor_stored_fd(&s->sv, domain_file_name(s));
	int device = supervisor_stored_fd(&s->sv, "lease1.device");

	CHECK(domain >= 0 && device >= 0);
	k->domain = fcntl(domain, F_DUPFD_CLOEXEC, 0);
	k->device = fcntl(device, F_DUPFD_CLOEXEC, 0);
	CHECK(k->domain >= 0 && k->device >= 0);
}

static void check_same_kernel_files(struct survivor *s, const struct kernel_files *before, int held,
				    const char *when)
{
	struct kernel_files now;

	kernel_files_of(s, &now);
	CHECK(same_file(now.domain, before->domain));
	CHECK(same_file(now.device, before->device));
	if (strcmp(s->backend, "iommufd") == 0)
		CHECK(same_file(held, now.device));
	(void)close(now.domain);
	(void)close(now.device);
	(void)printf("ok: %s, the store holds the same %s and device files%s\n", when,
		     domain_file_name(s),
		     strcmp(s->backend, "iommufd") == 0
			     ? ", and the client's device fd is that same file"
			     : "");
}

/* A mapping the killed daemon made is removed and made again by its successor: the kernel
 * lets the new process take it out (vfio-type1 on some kernels let only the process that
 * mapped remove), and the edu's DMA lands through the new one. */
static void check_remap(struct survivor *s, const char *when)
{
	uint64_t iova = DST_IOVA, unmapped = 0;

	check_call(s->c, iommuctl_unmap(s->c, s->dom, DST_IOVA, PAGE, &unmapped), "Unmap");
	CHECK_EQ(unmapped, PAGE);
	check_call(s->c,
		   iommuctl_map_fd(s->c, s->dom, s->memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination again");
	(void)printf("ok: %s, a mapping the killed daemon made was removed and made again\n", when);
}

/* A kill -9 with the edu copying all the while: rounds land while no daemon runs, and after
 * the new one took the lease's objects over; then a re-execution the same way. */
static void check_taken_over(struct survivor *s, const struct answers *before)
{
	int held = check_dma_lands(s, "before any restart, the device's fd held from now on");
	size_t faults = kernel_faults();
	struct kernel_files files;
	struct dma_loop loop;

	kernel_files_of(s, &files);
	iommuctl_close(s->c);
	loop_start(s, held, &loop);
	loop_await(&loop, 3);
	supervisor_kill(&s->sv);
	loop_await(&loop, 3);
	(void)printf("ok: with no daemon running, the edu's DMA rounds land\n");
	supervisor_spawn(&s->sv);
	loop_await(&loop, 3);
	CHECK(supervisor_log_has(&s->sv, "its kernel objects taken over"));
	CHECK(!supervisor_log_has(&s->sv, "cannot be taken over"));
	check_same_kernel_files(s, &files, held, "after kill -9 and a restart");

	supervisor_unready(&s->sv);
	CHECK(kill(s->sv.f.pid, SIGUSR2) == 0);
	loop_await(&loop, 3);
	supervisor_wait_ready(&s->sv);
	loop_await(&loop, 3);
	loop_end(&loop);
	CHECK_EQ(kernel_faults(), faults);
	(void)printf("ok: the edu's DMA landed round after round across kill -9, the restart "
		     "and a re-execution, and the kernel logged no IOMMU fault\n");
	check_same_kernel_files(s, &files, held, "after a re-execution (SIGUSR2)");
	check_lease_back(s, before, "after kill -9, a restart and a re-execution");
	check_remap(s, "after kill -9 and a restart");
	iommuctl_close(s->c);
	check_lease_back(s, before, "after the mapping was made again");
	(void)close(files.domain);
	(void)close(files.device);
	(void)close(held);
}

/* ---- changes a kill cut short ------------------------------------------------------------ */

/* The next daemons started are iommud_kill_points (survival_kill_points.c), from beside the
 * daemon under test, killing themselves before the record holds change; with change NULL,
 * that daemon again. */
static void kill_before_record(const char *change)
{
	static char daemon[PATH_MAX], killed[PATH_MAX];
	char *slash;

	if (!daemon[0]) {
		(void)snprintf(daemon, sizeof(daemon), "%s", getenv("IOMMUD_DAEMON") ?: IOMMUD_BIN);
		(void)snprintf(killed, sizeof(killed), "%s", daemon);
		slash = strrchr(killed, '/');
		CHECK(slash &&
		      (size_t)(slash - killed) + sizeof("/iommud_kill_points") <= sizeof(killed));
		(void)strcpy(slash, "/iommud_kill_points");
	}
	CHECK_OK(setenv("IOMMUD_DAEMON", change ? killed : daemon, 1));
	CHECK_OK(change ? setenv("IOMMUD_TEST_KILL_BEFORE_RECORD", change, 1)
			: unsetenv("IOMMUD_TEST_KILL_BEFORE_RECORD"));
}

/* An AllocDomain killed after the kernel made the domain and before the record held it: the
 * next daemon destroys what the record does not hold, and the lease is as it was. */
static void check_unrecorded_domain(struct survivor *s, const struct answers *before)
{
	const char *destroyed = "kernel object(s) its record does not hold";
	size_t said = supervisor_log_count(&s->sv, destroyed);
	uint32_t dom;

	kill_before_record("alloc_domain");
	kill_and_restart(s);
	CHECK(iommuctl_alloc_domain(s->c, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &dom) < 0);
	kill_before_record(NULL);
	kill_and_restart(s);
	CHECK_EQ(supervisor_log_count(&s->sv, destroyed), said + 1);
	CHECK(!supervisor_log_has(&s->sv, "cannot destroy the kernel objects"));
	CHECK(!supervisor_log_has(&s->sv, "not all could be made as recorded"));
	(void)printf("ok: the domain an AllocDomain killed before its record made was destroyed "
		     "by the next daemon\n");
	iommuctl_close(s->c);
	check_lease_back(s, before, "after an AllocDomain cut short by a kill");
}

/* The configuration file the supervisor's daemons read, its text `from` (written after the
 * [daemon] section) replaced by `to`, for the next daemon started. */
static void swap_config(struct survivor *s, const char *from, const char *to)
{
	char text[4096], *tail;
	size_t n;
	FILE *f = fopen(s->sv.config_path, "r+");

	CHECK(f != NULL);
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	tail = strstr(text, from);
	CHECK(tail && strlen(tail) == strlen(from));
	CHECK_OK(ftruncate(fileno(f), tail - text));
	CHECK_OK(fseek(f, tail - text, SEEK_SET));
	CHECK(fputs(to, f) >= 0);
	CHECK_OK(fclose(f));
}

/* A restart that no longer allows the edu: the replay leaves out its Bind, and with it the
 * domain made for it, attached to the edu until the take-over's end blocks it, and, where that
 * fails, until the manager closes the store's copy of the edu. The next daemon must destroy the
 * domain, or it lives on, its mappings pinned, charged to no one. The lease is made again
 * afterwards. */
static void check_left_out_device(struct survivor *s)
{
	const char *destroyed = "kernel object(s) its record does not hold";
	size_t said = supervisor_log_count(&s->sv, destroyed);

	iommuctl_close(s->c);
	supervisor_kill(&s->sv);
	swap_config(s, config, config_without_edu);
	supervisor_spawn(&s->sv);
	CHECK_EQ(supervisor_log_count(&s->sv, destroyed), said + 1);
	CHECK(!supervisor_log_has(&s->sv, "cannot destroy the kernel objects"));
	(void)printf("ok: the domain of a device the replay left out was destroyed by the next "
		     "daemon\n");
	swap_config(s, config_without_edu, config);
	kill_and_restart(s);
	connect_lease(s);
	(void)munmap(s->mem, 2 * PAGE);
	(void)close(s->memfd);
	make_lease(s);
}

/* A lease released and ended (its last connection gone, its descriptors out of the store), then
 * the daemon killed before a snapshot left the release out of the record: the next daemon ends
 * the lease as released at its entry, without trying to take over objects the end destroyed
 * (and warning that they cannot be). */
static void check_released_then_killed(struct survivor *s)
{
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp = NULL;
	size_t warned = supervisor_log_count(&s->sv, "cannot be taken over");
	size_t ended = supervisor_log_count(&s->sv, "was released before the restart");
	unsigned long removals;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &release;
	check_call(s->c, iommuctl_call(s->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ReleaseLease");
	iommuctl_response_free(resp);
	removals = supervisor_removals(&s->sv);
	iommuctl_close(s->c);
	supervisor_wait_removals(&s->sv, removals);
	kill_and_restart(s);
	CHECK_EQ(supervisor_log_count(&s->sv, "was released before the restart"), ended + 1);
	CHECK_EQ(supervisor_log_count(&s->sv, "cannot be taken over"), warned);
	CHECK_EQ(supervisor_stored(&s->sv, "lease"), 0);
	(void)printf("ok: a lease released before a kill ended at the next start as released, "
		     "with no take-over tried\n");
}

/* ---- dirty tracking in a domain that holds no device at the kill ------------------------- */

/* SetDirtyTracking's answer: 0, or the negative errno it failed with. */
static int set_dirty_tracking(struct survivor *s, uint32_t dom, bool enable)
{
	Iommud__V1__SetDirtyTrackingRequest set = IOMMUD__V1__SET_DIRTY_TRACKING_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp = NULL;
	int rc;

	set.domain_id = dom;
	set.enable = enable;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_SET_DIRTY_TRACKING;
	req.set_dirty_tracking = &set;
	rc = iommuctl_call(s->c, &req, NULL, 0, &resp, NULL, 0, NULL);
	if (rc == 0)
		iommuctl_response_free(resp);
	return rc;
}

/* Whether ReadDirty reports the page at iova of dom written. */
static bool page_dirty(struct survivor *s, uint32_t dom, uint64_t iova)
{
	Iommud__V1__ReadDirtyRequest read = IOMMUD__V1__READ_DIRTY_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	bool dirty;

	read.domain_id = dom;
	read.iova = iova;
	read.length = PAGE;
	read.page_size = PAGE;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_READ_DIRTY;
	req.read_dirty = &read;
	check_call(s->c, iommuctl_call(s->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ReadDirty");
	dirty = resp->read_dirty->n_bitmap == 1 && (resp->read_dirty->bitmap[0] & 1);
	iommuctl_response_free(resp);
	return dirty;
}

/* A SetDirtyTracking off killed after the kernel stopped tracking in dom (the edu in it) and
 * before the record held it: the next daemon starts tracking again, as the record says, or
 * every ReadDirty fails (the kernel tracks nothing). */
static void check_dirty_off_unrecorded(struct survivor *s, uint32_t dom)
{
	kill_before_record("dirty_tracking");
	kill_and_restart(s);
	connect_lease(s);
	CHECK(set_dirty_tracking(s, dom, false) < 0);
	iommuctl_close(s->c);
	kill_before_record(NULL);
	kill_and_restart(s);
	connect_lease(s);
	(void)close(check_dma_lands(s, "after a SetDirtyTracking off cut short by a kill"));
	CHECK(page_dirty(s, dom, DST_IOVA));
	(void)printf("ok: domain %u tracks dirty pages again after a SetDirtyTracking off the "
		     "kill cut short before its record\n",
		     dom);
	iommuctl_close(s->c);
}

/* On vfio-type1 a container without a group has no IOMMU, so nothing of its dirty tracking is
 * in the kernel across a kill: the new daemon must start it when the edu is attached, as it does
 * for a domain it made, or ReadDirty fails (the kernel tracks nothing). The edu stays attached
 * there, the lease's first domain empty, for a SetDirtyTracking off cut short. */
static void check_dirty_after_restart(struct survivor *s)
{
	uint64_t iova = SRC_IOVA;
	uint32_t dom, later;

	connect_lease(s);
	/* The daemon runs after restarts, which found the edu's group held in the store: it asks
	 * the IOMMU what it offers through what the take-over brought. */
	check_call(s->c,
		   iommuctl_alloc_domain(s->c, s->name, IOMMUCTL_DOMAIN_PAGING,
					 IOMMUCTL_DOMAIN_DIRTY_TRACKING, &dom),
		   "AllocDomain (dirty tracking)");
	check_call(s->c, set_dirty_tracking(s, dom, true), "SetDirtyTracking");
	check_call(
		s->c,
		iommuctl_map_fd(s->c, dom, s->memfd, 0, PAGE, IOMMUCTL_PROT_READ, true, 0, &iova),
		"Map source");
	iova = DST_IOVA;
	check_call(s->c,
		   iommuctl_map_fd(s->c, dom, s->memfd, PAGE, PAGE,
				   IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, true, 0, &iova),
		   "Map destination");
	/* The edu waits on a domain recorded after the dirty one (a migration's set-up): at the
	 * restart its group is in that later container, so no earlier container and not its group
	 * alone can tell the replay, as it makes the dirty domain, what the IOMMU offers. */
	check_call(s->c, iommuctl_alloc_domain(s->c, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &later),
		   "AllocDomain (the edu's until the migration)");
	/* type1 has no replace: the edu moves by a detach and an attach. */
	check_call(s->c, iommuctl_detach(s->c, s->name), "DetachDevice");
	check_call(s->c, iommuctl_attach(s->c, s->name, later), "AttachDevice (later domain)");
	iommuctl_close(s->c);
	kill_and_restart(s);
	connect_lease(s);
	check_call(s->c, iommuctl_detach(s->c, s->name), "DetachDevice (later domain)");
	check_call(s->c, iommuctl_attach(s->c, s->name, dom), "AttachDevice");
	(void)close(check_dma_lands(s, "in the dirty tracking domain after kill -9 and a restart"));
	/* type1 without a page-pinning driver reports every pinned page dirty: this says that
	 * tracking runs, not which page the edu wrote. */
	CHECK(page_dirty(s, dom, DST_IOVA));
	check_call(s->c, iommuctl_free_domain(s->c, later), "FreeDomain (the edu's former)");
	(void)printf(
		"ok: domain %u, tracking dirty pages, made before the domain the edu was in at "
		"the kill, survives the restart and tracks once the edu moves to it\n",
		dom);
	iommuctl_close(s->c);
	check_dirty_off_unrecorded(s, dom);
}

/* ---- a delegation across a kill ----------------------------------------------------------- */

/* The delegations as ListDelegations encodes them. */
static void delegations_of(struct survivor *s, struct answers *a)
{
	Iommud__V1__ListDelegationsRequest list = IOMMUD__V1__LIST_DELEGATIONS_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(s->sv.f.socket_path, &c));
	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DELEGATIONS;
	req.list_delegations = &list;
	check_call(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDelegations");
	a->len = iommud__v1__list_delegations_reply__get_packed_size(resp->list_delegations);
	CHECK(a->len <= sizeof(a->bytes));
	(void)iommud__v1__list_delegations_reply__pack(resp->list_delegations, a->bytes);
	iommuctl_response_free(resp);
	iommuctl_close(c);
}

/* A lease of its own, tries to take the edu: 0, or the errno it was refused with. */
static int take_edu(struct survivor *s, const char *lease)
{
	struct iommuctl *c;
	uint32_t dom;
	int rc;

	CHECK_OK(iommuctl_connect(s->sv.f.socket_path, &c));
	check_call(c, iommuctl_hello(c, "test_survival_edu", lease, NULL), "Hello");
	rc = iommuctl_alloc_domain(c, s->name, IOMMUCTL_DOMAIN_PAGING, 0, &dom);
	if (rc < 0)
		CHECK(strstr(iommuctl_last_error(c), "handed to another process") != NULL);
	iommuctl_close(c);
	return rc;
}

/* Once the lease lets the edu go, a VM's lease hands it to a VMM (a child here) on the
 * kernel's iommufd: after a kill and a restart the next daemon lists the delegation as before,
 * refuses the edu to another lease as handed to another process, and frees it when the VMM
 * exits, for that lease to take. */
static void check_delegation(struct survivor *s)
{
	Iommud__V1__ReleaseLeaseRequest release = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	const char *const devices[] = {s->name};
	struct answers before, after;
	Iommud__V1__Response *resp;
	unsigned long removals;
	uint64_t id;
	int fds[2];
	pid_t vmm;

	connect_lease(s);
	req.method_case = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE;
	req.release_lease = &release;
	check_call(s->c, iommuctl_call(s->c, &req, NULL, 0, &resp, NULL, 0, NULL), "ReleaseLease");
	iommuctl_response_free(resp);
	iommuctl_close(s->c);
	vmm = fork();
	CHECK(vmm >= 0);
	if (vmm == 0) {
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	CHECK_OK(iommuctl_connect(s->sv.f.socket_path, &s->c));
	check_call(s->c, iommuctl_hello(s->c, "test_survival_edu", "vm", NULL), "Hello");
	check_call(s->c, iommuctl_delegate(s->c, devices, 1, (uint32_t)vmm, fds, &id),
		   "DelegateDevices");
	(void)close(fds[0]);
	(void)close(fds[1]);
	iommuctl_close(s->c);
	delegations_of(s, &before);

	kill_and_restart(s);
	delegations_of(s, &after);
	CHECK(after.len == before.len && memcmp(after.bytes, before.bytes, before.len) == 0);
	CHECK_EQ(take_edu(s, "other"), -EBUSY);
	(void)printf("ok: after kill -9 and a restart, delegation %llu of %s is listed as before "
		     "and the edu refused to another lease\n",
		     (unsigned long long)id, s->name);
	supervisor_read_sent(&s->sv);
	removals = supervisor_removals(&s->sv);
	CHECK_OK(kill(vmm, SIGKILL));
	CHECK(waitpid(vmm, NULL, 0) == vmm);
	supervisor_wait_removals(&s->sv, removals);
	CHECK_OK(take_edu(s, "other"));
	(void)printf("ok: the VMM's exit ended the delegation, and another lease took the edu\n");
}

/* The daemons' log, for a failed check (which aborts): the supervisor keeps it in a file. */
static const char *daemon_log;

static void print_daemon_log(int sig)
{
	char buf[4096];
	ssize_t n;
	int fd = open(daemon_log, O_RDONLY | O_CLOEXEC);

	(void)sig;
	(void)!write(STDOUT_FILENO, "---- the daemons' log ----\n", 27);
	while (fd >= 0 && (n = read(fd, buf, sizeof(buf))) > 0)
		(void)!write(STDOUT_FILENO, buf, (size_t)n);
	signal(SIGABRT, SIG_DFL);
}

int main(void)
{
	const char *want = vm_backend_expected(VM_BACKEND);
	struct answers before;
	struct survivor s = {0};

	if (!want) {
		(void)printf("SKIP: not in the VM tier's guest (tests/vm/README.md)\n");
		return 77;
	}
	CHECK_OK(setenv("IOMMUD_TEST_BACKEND", VM_BACKEND, 1));
	(void)setvbuf(stdout, NULL, _IOLBF, 0);
	daemon_log = s.sv.log_path; /* filled in by supervisor_start */
	(void)signal(SIGABRT, print_daemon_log);
	s.backend = want;
	supervisor_start(&s.sv, config, NULL);
	s.c = connect_as(&s, NULL);
	s.name = find_edu(s.c);
	iommuctl_close(s.c);
	if (!s.name) {
		(void)printf("SKIP: the daemon offers no edu device\n");
		supervisor_stop(&s.sv);
		return 77;
	}
	(void)printf("using %s\n", s.name);
	/* Only VFIO's cdevs can be blocked behind a client's back (vfio-type1's groups stay in
	 * their containers while a device of them is open). */
	if (s.adopt && strcmp(want, "iommufd") == 0) {
		check_anonymous_blocked(&s, kill_and_restart, "kill -9 and a restart");
		check_anonymous_blocked(&s, reexecute, "a re-execution (SIGUSR2)");
	}
	connect_lease(&s);
	make_lease(&s);
	check_daemon_view(s.sv.f.pid, s.memfd, want, "after Map");
	answers_of(&s, &before);
	/* The kernel keeps what the stored descriptors hold, iommufd's contexts as VFIO type1's
	 * containers and groups: there the objects must be taken over, not rebuilt. */
	CHECK(s.adopt);
	check_taken_over(&s, &before);
	/* vfio-type1's domains are containers of their own, which the store keeps: one no record
	 * names is a stray. */
	if (strcmp(want, "iommufd") == 0) {
		check_unrecorded_domain(&s, &before);
		check_left_out_device(&s);
	}
	if (strcmp(want, "vfio-type1") == 0) {
		iommuctl_close(s.c);
		check_dirty_after_restart(&s);
		connect_lease(&s);
	}
	check_released_then_killed(&s);
	if (s.delegate)
		check_delegation(&s);
	(void)munmap(s.mem, 2 * PAGE);
	(void)close(s.memfd);
	free(s.name);
	supervisor_stop(&s.sv);
	(void)printf("survival of a lease with edu DMA on %s: all checks passed\n", want);
	return 0;
}
