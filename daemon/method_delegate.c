// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* prlimit */
/* DelegateDevices and ListDelegations: devices handed to a VM manager, and the records that
 * follow them until the VMM exits or the lease ends (delegate.h). */
#include "delegate.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "call.h"
#include "daemon_lock.h"
#include "log.h"
#include "probes/probes.h"
#include "state.h"

struct delegation {
	LIST_ENTRY(delegation) link;
	struct delegations *all;
	uint64_t id;
	struct session *session;  /* the lease it was handed out in */
	uid_t uid;		  /* of the tenant that asked */
	struct peer vmm;	  /* pid, uid and cgroup of the VMM, read when it was handed out */
	uint64_t vmm_start;	  /* when the VMM started: with the pid, which process it is */
	int pidfd;		  /* the VMM's, readable once it has exited */
	struct probes *probes;	  /* count what the VMM maps to the tenant by its cgroup, */
	uint64_t lent_cgroup;	  /* lent while this lives (probes_lend_cgroup's token) */
	struct event *exit_watch; /* its callback's argument a struct exit_watch, freed with it */
	time_t since;
	size_t n;
	size_t indexes[KH_DELEGATE_MAX]; /* the backend's devices */
	char names[KH_DELEGATE_MAX * KH_NAME_MAX];
};

struct delegations {
	struct event_base *base;
	struct registry *reg;
	struct state *state; /* where each delegation is recorded; NULL: nowhere */
	LIST_HEAD(, delegation) list;
	uint64_t next_id;
};

/* What the end of a delegation leaves of its devices, as the log says it. */
#define DEVICES_FREE "are free again"
/* The lease ended first: the kernel keeps them bound to the VMM's iommufd while it lives. */
#define DEVICES_STILL_HELD "are no longer reserved; the VMM still holds them until it exits"
/* The daemon stops and the next one does not know the delegation, or a daemon cannot follow
 * on one the record holds. */
#define DEVICES_KEPT "are no longer followed; the VMM keeps them"
/* The daemon stops and the state record keeps the delegation. */
#define DEVICES_LEFT "are left to the next daemon, which follows them from the state record"

/* What the main thread's watch on a VMM's exit knows of its delegation: its id, since a loop
 * thread may end the delegation while the watch's callback waits for the daemon lock. */
struct exit_watch {
	struct delegations *all;
	uint64_t id;
};

static void vmm_exited(evutil_socket_t fd, short what, void *arg);

/* Starts watching the VMM's pidfd for its exit, on the main thread's loop. */
static int exit_watch_start(struct delegation *del)
{
	struct exit_watch *w = malloc(sizeof(*w));

	if (!w)
		return -ENOMEM;
	*w = (struct exit_watch){.all = del->all, .id = del->id};
	del->exit_watch = event_new(del->all->base, del->pidfd, EV_READ, vmm_exited, w);
	if (!del->exit_watch || event_add(del->exit_watch, NULL) < 0) {
		if (del->exit_watch)
			event_free(del->exit_watch);
		del->exit_watch = NULL;
		free(w);
		return -ENOMEM;
	}
	return 0;
}

static void exit_watch_finalized(struct event *ev, void *arg)
{
	(void)ev;
	free(arg);
}

/* Frees the watch without waiting for its callback: a loop thread does this under the daemon
 * lock, which the callback, running on the main thread, may be waiting for (event_free would
 * wait for it). Its memory goes once the callback is done. */
static void exit_watch_free(struct event *watch)
{
	(void)event_free_finalize(0, watch, exit_watch_finalized);
}

/* Frees the devices and says what became of them and why, in the log and to whoever watches
 * it; the record, if any, is left as it is. */
static void delegation_drop(struct delegation *del, const char *outcome, const char *why)
{
	kh_delegate_end(registry_backend(del->all->reg), del->indexes, del->n);
	log_struct(LOG_INFO, LOG_FIELDS({"IOMMUD_DEVICE", del->names}, {"IOMMUD_REASON", why}),
		   "devices {IOMMUD_DEVICE} handed to pid %d (delegation %" PRIu64
		   ") %s: {IOMMUD_REASON}",
		   (int)del->vmm.pid, del->id, outcome);
	probes_return_cgroup(del->probes, del->lent_cgroup);
	LIST_REMOVE(del, link);
	if (del->exit_watch)
		exit_watch_free(del->exit_watch);
	if (del->pidfd >= 0)
		(void)close(del->pidfd);
	peer_clear(&del->vmm);
	free(del);
}

/* The delegation is over: the record says so before the devices are free. */
static void delegation_end(struct delegation *del, const char *outcome, const char *why)
{
	state_end_delegation(del->all->state, del->id);
	delegation_drop(del, outcome, why);
}

static struct delegation *delegation_by_id(const struct delegations *dl, uint64_t id)
{
	struct delegation *del;

	LIST_FOREACH (del, &dl->list, link)
		if (del->id == id)
			return del;
	return NULL;
}

/* The reply carrying the delegation's fds went out, so the delegation is recorded: only now is
 * its id said, since a kill before the record commits gives the id out again. Found by id, as
 * reply_unsent. */
static void reply_sent(void *arg, uint64_t id)
{
	struct delegation *del = delegation_by_id(arg, id);

	if (!del)
		return;
	log_struct(LOG_INFO,
		   LOG_FIELDS({"IOMMUD_DEVICE", del->names},
			      {"IOMMUD_LEASE", session_lease(del->session)},
			      {"IOMMUD_CGROUP", del->vmm.cgroup}),
		   "uid %u handed devices {IOMMUD_DEVICE} to pid %d (cgroup {IOMMUD_CGROUP}) "
		   "in lease '{IOMMUD_LEASE}', delegation %" PRIu64,
		   (unsigned)del->uid, (int)del->vmm.pid, del->id);
}

/* The reply carrying the delegation's fds was not sent: the VMM never got them. Found by id,
 * since the VMM may have exited (ending it) while the reply waited for the socket. */
static void reply_unsent(void *arg, uint64_t id)
{
	struct delegation *del = delegation_by_id(arg, id);

	if (del)
		delegation_end(del, DEVICES_FREE, "the reply carrying its fds was not sent");
}

static void vmm_exited(evutil_socket_t fd, short what, void *arg)
{
	const struct exit_watch *w = arg;
	struct delegation *del;

	(void)fd;
	(void)what;
	/* The main thread's loop watches the VMMs; the sessions are the loop threads' too, and one
	 * may have ended the delegation meanwhile. */
	daemon_lock();
	del = delegation_by_id(w->all, w->id);
	if (del)
		delegation_end(del, DEVICES_FREE, "the VMM exited");
	daemon_unlock();
}

static void session_ended(struct session *s, void *arg)
{
	struct delegations *dl = arg;
	struct delegation *del, *next;

	for (del = LIST_FIRST(&dl->list); del; del = next) {
		next = LIST_NEXT(del, link);
		if (del->session == s)
			delegation_end(del, DEVICES_STILL_HELD, "its lease was released");
	}
}

struct delegations *delegations_create(struct event_base *base, struct registry *reg)
{
	struct delegations *dl = calloc(1, sizeof(*dl));

	if (!dl)
		return NULL;
	dl->base = base;
	dl->reg = reg;
	dl->next_id = 1;
	LIST_INIT(&dl->list);
	registry_on_session_end(reg, SESSION_END_DELEGATIONS, session_ended, dl);
	return dl;
}

void delegations_destroy(struct delegations *dl)
{
	if (!dl)
		return;
	while (!LIST_EMPTY(&dl->list))
		delegation_drop(LIST_FIRST(&dl->list), dl->state ? DEVICES_LEFT : DEVICES_KEPT,
				"the daemon is stopping");
	registry_on_session_end(dl->reg, SESSION_END_DELEGATIONS, NULL, NULL);
	free(dl);
}

/* ---- DelegateDevices ------------------------------------------------------------------- */

/* The backend's index of each requested device, checked as every method checks a device the
 * caller takes: named, existing, allowed by its section, free, and named once. */
static int find_devices(struct call *call, struct delegation *del)
{
	const Iommud__V1__DelegateDevicesRequest *r = call->req->delegate_devices;
	const struct access_rule *rule = tenant_rule(call->client->tenant);
	struct kh_backend *be = call->d->be;
	size_t used = 0;

	if (r->n_devices == 0 || r->n_devices > KH_DELEGATE_MAX)
		return fail(-EINVAL, "a delegation takes 1 to %d devices; the request names %zu",
			    KH_DELEGATE_MAX, r->n_devices);
	for (size_t i = 0; i < r->n_devices; i++) {
		const char *name = r->devices[i];
		int index, rc = need_device_name(name);

		if (rc < 0)
			return rc;
		if ((index = kh_device_lookup(be, name)) < 0)
			return fail(-ENOENT,
				    "no device '%s'; list_devices (iommuctl devices) "
				    "shows them",
				    name);
		if (!config_device_allowed(rule, name))
			return fail(-EPERM,
				    "uid %u may not take device '%s': its configuration section "
				    "(%s) does not list it in 'devices'",
				    (unsigned)call->client->peer.uid, name,
				    rule ? rule->section : "none");
		if (registry_device_state(call->d->reg, name) != DEVICE_FREE)
			return fail(-EBUSY,
				    "device '%s' is in use in a session; it can be handed "
				    "out once that session has let it go",
				    name);
		for (size_t j = 0; j < i; j++)
			if (del->indexes[j] == (size_t)index)
				return fail(-EINVAL, "the request names device '%s' twice", name);
		del->indexes[i] = (size_t)index;
		used += (size_t)snprintf(del->names + used, sizeof(del->names) - used, "%s%s",
					 i ? "," : "", name);
	}
	del->n = r->n_devices;
	return 0;
}

/* When the process pidfd holds started (field 22 of /proc/PID/stat, clock ticks after boot),
 * read by pid while it lived, so the pid named it throughout; -ESRCH once it has exited,
 * -EBADMSG if the file has none where the kernel puts it. */
static int process_start_time(pid_t pid, int pidfd, uint64_t *ret_start)
{
	char path[64], text[1024], *field;
	unsigned long long start;
	ssize_t n = -1;
	int fd;

	(void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0) {
		n = read(fd, text, sizeof(text) - 1);
		(void)close(fd);
	}
	if (n <= 0 || !process_lives(pidfd))
		return -ESRCH;
	text[n] = '\0';
	/* The command name (field 2) may hold spaces and parentheses: count from its end. */
	field = strrchr(text, ')');
	for (int i = 2; field && i < 22; i++)
		field = strchr(field + 1, ' ');
	if (!field || sscanf(field, " %llu", &start) != 1)
		return -EBADMSG;
	*ret_start = start;
	return 0;
}

/* peer_follow, or peer_follow_connected for the caller itself, and when the VMM started. */
static int follow_process(struct call *call, pid_t pid, struct delegation *del)
{
	const struct peer *caller = &call->client->peer;
	int rc = call->req->delegate_devices->vmm_pid
			 ? peer_follow(pid, &del->pidfd, &del->vmm)
			 : peer_follow_connected(call->client->fd, caller, &del->pidfd, &del->vmm);

	if (rc == 0 && (rc = process_start_time(del->vmm.pid, del->pidfd, &del->vmm_start)) < 0) {
		(void)close(del->pidfd);
		peer_clear(&del->vmm);
	}
	return rc;
}

/* Holds the VMM by a pidfd: the caller itself, or the process it names, of its own uid unless
 * the caller is root (which starts VMMs under other uids). */
static int follow_vmm(struct call *call, struct delegation *del)
{
	const struct peer *caller = &call->client->peer;
	pid_t pid = call->req->delegate_devices->vmm_pid
			    ? (pid_t)call->req->delegate_devices->vmm_pid
			    : caller->pid;
	int rc = follow_process(call, pid, del);

	if (rc == -ESRCH && !call->req->delegate_devices->vmm_pid)
		return fail(rc,
			    "the process that connected (pid %d) has exited, and vmm_pid 0 "
			    "follows that process; name the VMM by vmm_pid",
			    (int)pid);
	if (rc == -ESRCH)
		return fail(rc, "there is no process %d to hand the devices to", (int)pid);
	if (rc == -EINVAL)
		return fail(rc,
			    "process %d cannot be followed: name the VMM's process (its main "
			    "thread's id, as ps shows it), not one of its threads",
			    (int)pid);
	if (rc == -EBADMSG)
		return fail(rc,
			    "cannot read when process %d started: its /proc/%d/stat has no start "
			    "time where the kernel puts it; check that it is the VMM and try again",
			    (int)pid, (int)pid);
	if (rc < 0)
		return fail(rc,
			    "cannot read the uid and cgroup of process %d: %s; check that it "
			    "is the VMM and try again",
			    (int)pid, strerror(-rc));
	if (caller->uid != 0 && del->vmm.uid != caller->uid) {
		(void)close(del->pidfd);
		peer_clear(&del->vmm);
		return fail(-EPERM,
			    "process %d runs as uid %u, not as the caller (uid %u); only root "
			    "hands devices to another uid's VMM",
			    (int)pid, (unsigned)del->vmm.uid, (unsigned)caller->uid);
	}
	return 0;
}

/* Whether the caller's section lets it hand devices to a VMM: raw VFIO device fds, whose pins
 * escape the tenant's quotas (only the VMM's RLIMIT_MEMLOCK bounds them), so only on request. */
static int check_may_delegate(const struct call *call)
{
	const struct access_rule *rule = tenant_rule(call->client->tenant);

	if (rule && rule->delegate)
		return 0;
	if (!rule)
		return fail(-EPERM,
			    "uid %u may not delegate devices: no configuration section names it; "
			    "delegation needs a [user], [uid] or [group] section with "
			    "'delegate = yes'",
			    (unsigned)call->client->peer.uid);
	return fail(-EPERM,
		    "uid %u may not delegate devices: its configuration section (%s) does not say "
		    "'delegate = yes'",
		    (unsigned)call->client->peer.uid, rule->section);
}

/* The record's checks, in the order a caller can fix them: whether it may delegate at all,
 * then what the kernel lacks. */
static int prepare(struct call *call, struct delegation *del)
{
	struct session *s = call->client->session;
	int rc = check_may_delegate(call);

	if (rc < 0)
		return rc;
	if ((rc = kh_delegate_supported(call->d->be)) < 0)
		return fail_kh(rc, "cannot delegate devices");
	if (!call->d->delegations)
		return fail(-EOPNOTSUPP, "this daemon does not follow delegations");
	if (!session_lease(s)[0])
		return fail(-ENOTCONN,
			    "devices are delegated within a lease, which gets them back when it "
			    "is released; name one in hello (iommuctl --lease NAME)");
	rc = find_devices(call, del);
	return rc < 0 ? rc : follow_vmm(call, del);
}

/* Opens the fds and starts following the VMM; the reply then carries the fds. */
static int hand_out(struct call *call, struct delegation *del)
{
	struct delegations *dl = call->d->delegations;
	int fds[1 + KH_DELEGATE_MAX];
	int rc = kh_delegate(call->d->be, del->indexes, del->n, fds);

	if (rc < 0)
		return fail_kh(rc, "cannot open the devices for the VMM");
	/* The id it has once handed out (the next, taken on success): its exit watch finds it by
	 * that. */
	del->all = dl;
	del->id = dl->next_id;
	if (exit_watch_start(del) < 0) {
		wire_close_fds(fds, del->n + 1);
		kh_delegate_end(call->d->be, del->indexes, del->n);
		return nomem();
	}
	_Static_assert(1 + KH_DELEGATE_MAX <= IOMMUD_MAX_FDS, "a reply carries every delegated fd");
	for (size_t i = 0; i <= del->n; i++)
		(void)call_send_fd(call, fds[i]);
	return 0;
}

int do_delegate_devices(struct call *call)
{
	Iommud__V1__DelegateDevicesReply *reply = REPLY(call, delegate_devices_reply);
	struct delegation *del = calloc(1, sizeof(*del));
	int rc;

	if (!reply || !del) {
		free(del);
		return nomem();
	}
	rc = prepare(call, del);
	if (rc == 0 && (rc = hand_out(call, del)) < 0) {
		(void)close(del->pidfd);
		peer_clear(&del->vmm);
	}
	if (rc < 0) {
		free(del);
		return rc;
	}
	del->all->next_id++;
	del->session = call->client->session;
	del->uid = call->client->peer.uid;
	del->since = time(NULL);
	LIST_INSERT_HEAD(&del->all->list, del, link);
	del->probes = call->d->probes;
	(void)probes_lend_cgroup(del->probes, del->vmm.cgroup,
				 tenant_label_slot(call->client->tenant), &del->lent_cgroup);
	reply->delegation_id = del->id;
	call->out.unsent = reply_unsent;
	call->out.sent = reply_sent;
	call->out.unsent_arg = del->all;
	call->out.unsent_token = del->id;
	return 0;
}

/* ---- ListDelegations, and the delegations in GetStats and the device states -------------- */

uint64_t delegation_holding(const struct delegations *dl, const char *device)
{
	const struct delegation *del;
	int index;

	if (!dl || (index = kh_device_lookup(registry_backend(dl->reg), device)) < 0)
		return 0;
	LIST_FOREACH (del, &dl->list, link)
		for (size_t i = 0; i < del->n; i++)
			if (del->indexes[i] == (size_t)index)
				return del->id;
	return 0;
}

enum device_state device_state(const struct daemon *d, const char *device)
{
	return delegation_holding(d->delegations, device) ? DEVICE_DELEGATED
							  : registry_device_state(d->reg, device);
}

static const char *const device_state_names[] = {
	[DEVICE_FREE] = "free",
	[DEVICE_BOUND] = "bound",
	[DEVICE_ATTACHED] = "attached",
	[DEVICE_DELEGATED] = "delegated",
};

const char *device_state_name(enum device_state state)
{
	return device_state_names[state];
}

/* The VMM's pinned memory as the kernel counts it (VmPin: iommufd adds what an IOAS pins to the
 * pinning process's mm) and its RLIMIT_MEMLOCK, which bounds that under per-process accounting;
 * both 0 when either cannot be read (the VMM is exiting). */
static void vmm_memory(pid_t pid, uint64_t *pinned, uint64_t *limit)
{
	char path[64], line[256];
	unsigned long long kib = 0;
	struct rlimit memlock;
	FILE *f;

	*pinned = *limit = 0;
	(void)snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %llu kB", &kib) == 1)
			break;
	(void)fclose(f);
	if (prlimit(pid, RLIMIT_MEMLOCK, NULL, &memlock) < 0)
		return;
	*pinned = (uint64_t)kib * 1024;
	*limit = memlock.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)memlock.rlim_cur;
}

static int fill_delegation(struct call *call, const struct delegation *del,
			   Iommud__V1__Delegation **ret_out)
{
	Iommud__V1__Delegation *out = call_alloc(call, sizeof(*out));
	char *names = call_strdup(call, del->names);
	struct tenant *t = session_tenant(del->session);

	if (!out || !names)
		return nomem();
	iommud__v1__delegation__init(out);
	if (!(out->devices = call_alloc(call, del->n * sizeof(char *))))
		return nomem();
	for (char *name = strtok(names, ","); name; name = strtok(NULL, ","))
		out->devices[out->n_devices++] = name;
	out->delegation_id = del->id;
	out->vmm_pid = (uint32_t)del->vmm.pid;
	out->uid = del->uid;
	out->cgroup = del->vmm.cgroup;
	out->lease = (char *)session_lease(del->session);
	out->tenant = (char *)registry_label(call->d->reg, tenant_label_slot(t));
	out->since_unix_seconds = (uint64_t)del->since;
	vmm_memory(del->vmm.pid, &out->pinned_bytes, &out->pinned_bytes_limit);
	/* Read by pid: only if the VMM still lives did the pid name it throughout. */
	if (!process_lives(del->pidfd))
		out->pinned_bytes = out->pinned_bytes_limit = 0;
	*ret_out = out;
	return 0;
}

int delegations_reply(struct call *call, delegation_fits_fn *fits, void *fits_arg,
		      Iommud__V1__Delegation ***ret_list, size_t *ret_n)
{
	const struct client *c = call->client;
	bool observer = client_is_observer(c);
	Iommud__V1__Delegation **list;
	struct delegation *del;
	size_t n = 0;
	int rc;

	if (!call->d->delegations) {
		*ret_list = NULL;
		*ret_n = 0;
		return 0;
	}
	LIST_FOREACH (del, &call->d->delegations->list, link)
		n++;
	if (!(list = call_alloc(call, n * sizeof(*list))))
		return nomem();
	n = 0;
	LIST_FOREACH (del, &call->d->delegations->list, link) {
		if (!observer && session_tenant(del->session) != c->tenant)
			continue;
		if ((rc = fill_delegation(call, del, &list[n])) < 0)
			return rc;
		if (!fits || fits(&list[n]->base, fits_arg))
			n++;
	}
	*ret_list = list;
	*ret_n = n;
	return 0;
}

int do_list_delegations(struct call *call)
{
	Iommud__V1__ListDelegationsReply *reply = REPLY(call, list_delegations_reply);

	if (!reply)
		return nomem();
	return delegations_reply(call, NULL, NULL, &reply->delegations, &reply->n_delegations);
}

int delegation_describe(const struct delegations *dl, uint64_t id,
			Iommud__State__V1__Delegation *ret_d, int *ret_pidfd)
{
	const struct delegation *del = delegation_by_id(dl, id);

	if (!del)
		return fail(-ENOENT, "delegation %" PRIu64 " ended before it could be recorded",
			    id);
	ret_d->delegation_id = del->id;
	ret_d->devices = (char *)del->names;
	ret_d->uid = del->uid;
	ret_d->vmm_pid = (uint32_t)del->vmm.pid;
	ret_d->vmm_uid = del->vmm.uid;
	ret_d->vmm_cgroup = del->vmm.cgroup;
	ret_d->vmm_start_time = del->vmm_start;
	ret_d->since_unix_seconds = (uint64_t)del->since;
	*ret_pidfd = del->pidfd;
	return 0;
}

/* ---- following on after a restart ------------------------------------------------------- */

/* The pid the kernel says pidfd holds (the "Pid:" of its fdinfo): -1 once the process is
 * reaped; -EBADF when fd is no pidfd. */
static int pidfd_pid(int pidfd, pid_t *ret_pid)
{
	char path[64], line[128];
	int pid, rc = -EBADF;
	FILE *f;

	(void)snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	if (!(f = fopen(path, "re")))
		return -errno;
	while (rc < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			rc = 0;
	(void)fclose(f);
	if (rc == 0)
		*ret_pid = (pid_t)pid;
	return rc;
}

/* Why a recorded delegation cannot be followed on (why NULL: it can), and what that leaves
 * its devices. */
struct verdict {
	const char *why;
	const char *outcome;
};

/* Whether the process pidfd holds has exited: its pidfd turns readable then, reaped or not. */
static bool process_exited(int pidfd)
{
	struct pollfd p = {.fd = pidfd, .events = POLLIN};

	return poll(&p, 1, 0) > 0;
}

/* The pidfd must hold the process recorded (its pid and start time), and that must not have
 * exited. */
static struct verdict check_vmm(const struct delegation *del)
{
	static const char another[] =
		"the pidfd in the store holds another process than the VMM recorded; stop the "
		"recorded VMM to free them";
	uint64_t start;
	pid_t pid = 0;
	int rc;

	if (del->pidfd < 0)
		return (struct verdict){"the service manager's store did not hand back its VMM's "
					"pidfd; stop the VMM to free them",
					DEVICES_KEPT};
	if (pidfd_pid(del->pidfd, &pid) < 0)
		return (struct verdict){"what the store holds as its VMM's pidfd is no pidfd; stop "
					"the VMM to free them",
					DEVICES_KEPT};
	if (process_exited(del->pidfd))
		return (struct verdict){"the VMM exited while no daemon followed it", DEVICES_FREE};
	if (pid != del->vmm.pid)
		return (struct verdict){another, DEVICES_KEPT};
	rc = process_start_time(pid, del->pidfd, &start);
	/* Exited between the two checks. */
	if (rc == -ESRCH)
		return (struct verdict){"the VMM exited while no daemon followed it", DEVICES_FREE};
	if (rc < 0 || start != del->vmm_start)
		return (struct verdict){another, DEVICES_KEPT};
	return (struct verdict){NULL, NULL};
}

/* The backend's index of each device the record names, reserved again; del->n stays 0 unless
 * all are, so its end frees only what it reserved. */
static const char *reserve_devices(struct delegation *del)
{
	struct kh_backend *be = registry_backend(del->all->reg);
	char names[sizeof(del->names)];
	size_t indexes[KH_DELEGATE_MAX], n = 0;
	int index;

	(void)snprintf(names, sizeof(names), "%s", del->names);
	for (char *name = strtok(names, ","); name; name = strtok(NULL, ",")) {
		if (n == KH_DELEGATE_MAX || (index = kh_device_lookup(be, name)) < 0)
			return "the record names devices this machine does not have";
		indexes[n++] = (size_t)index;
	}
	if (!n)
		return "the record names no devices";
	if (kh_delegate_resume(be, indexes, n) < 0)
		return kh_last_error();
	memcpy(del->indexes, indexes, n * sizeof(*indexes));
	del->n = n;
	return NULL;
}

/* The delegation as the record says it, in the list, following the VMM by a copy of the
 * stored pidfd; its strings copied from the record's. */
static int restore(struct delegations *dl, const Iommud__State__V1__Delegation *d,
		   struct session *lease, int pidfd, struct delegation *del)
{
	del->all = dl;
	del->id = d->delegation_id;
	del->session = lease;
	del->uid = d->uid;
	del->vmm.pid = (pid_t)d->vmm_pid;
	del->vmm.uid = d->vmm_uid;
	del->vmm.cgroup = strdup(d->vmm_cgroup);
	del->vmm_start = d->vmm_start_time;
	del->since = (time_t)d->since_unix_seconds;
	del->pidfd = pidfd < 0 ? -1 : fcntl(pidfd, F_DUPFD_CLOEXEC, 3);
	(void)snprintf(del->names, sizeof(del->names), "%s", d->devices);
	LIST_INSERT_HEAD(&dl->list, del, link);
	return del->vmm.cgroup && (pidfd < 0 || del->pidfd >= 0) ? 0 : -ENOMEM;
}

/* Why the restored delegation cannot go on; why NULL once it is followed on. */
static struct verdict follow_on(struct delegation *del)
{
	struct verdict v = check_vmm(del);

	if (v.why)
		return v;
	if (!del->session)
		return (struct verdict){"its lease ended before the restart", DEVICES_STILL_HELD};
	if ((v.why = reserve_devices(del)))
		return (struct verdict){v.why, DEVICES_KEPT};
	if (exit_watch_start(del) < 0)
		return (struct verdict){"out of memory to follow it", DEVICES_KEPT};
	(void)probes_lend_cgroup(del->probes, del->vmm.cgroup,
				 tenant_label_slot(session_tenant(del->session)),
				 &del->lent_cgroup);
	return v;
}

struct adoption {
	struct delegations *dl;
	struct probes *probes;
};

static void follow_recorded(const Iommud__State__V1__Delegation *d, struct session *lease,
			    int pidfd, void *arg)
{
	struct adoption *a = arg;
	struct delegation *del = calloc(1, sizeof(*del));
	struct verdict v = {"out of memory or descriptors to follow it", DEVICES_KEPT};

	if (!del) {
		log_err("delegation %" PRIu64 " of devices %s cannot be followed on: out of memory",
			d->delegation_id, d->devices);
		state_end_delegation(a->dl->state, d->delegation_id);
		return;
	}
	del->probes = a->probes;
	if (restore(a->dl, d, lease, pidfd, del) == 0)
		v = follow_on(del);
	if (v.why) {
		delegation_end(del, v.outcome, v.why);
		return;
	}
	log_struct(LOG_INFO,
		   LOG_FIELDS({"IOMMUD_DEVICE", del->names},
			      {"IOMMUD_LEASE", session_lease(del->session)}),
		   "devices {IOMMUD_DEVICE} handed to pid %d in lease '{IOMMUD_LEASE}' "
		   "(delegation %" PRIu64 ") are followed on from the state record",
		   (int)del->vmm.pid, del->id);
}

void delegations_adopt(struct delegations *dl, struct state *st, struct probes *probes)
{
	struct adoption a = {.dl = dl, .probes = probes};
	uint64_t last = state_last_delegation_id(st);

	dl->state = st;
	if (last >= dl->next_id)
		dl->next_id = last + 1;
	state_each_delegation(st, follow_recorded, &a);
}
