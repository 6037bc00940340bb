/* SPDX-License-Identifier: MIT */
/* iommuctl delegate exec and delegations: devices handed to a VM manager, and the list of
 * them. */
#define _GNU_SOURCE /* setresuid, setresgid */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "fd-slots.h"
#include "output.h"
#include "qmp.h"

static const char delegate_exec_help[] =
	"Asks iommud for DEVICES (comma-separated) within the lease of --lease, which is\n"
	"required, and runs COMMAND with what it hands out: a fresh iommufd that charges pinned\n"
	"memory to each process's own RLIMIT_MEMLOCK, at descriptor 3, and each device's\n"
	"unbound VFIO cdev at 4, 5, ... in the order given. In COMMAND's words {iommufd} stands\n"
	"for 3 and {device0}, {device1}, ... for the devices' numbers, so a QEMU command line\n"
	"names them as -object iommufd,id=i0,fd={iommufd} -device "
	"vfio-pci,iommufd=i0,fd={device0}.\n"
	"\n"
	"Before exec it closes every other descriptor above 2 (COMMAND inherits only its\n"
	"slots), sets RLIMIT_MEMLOCK (--memlock), clears the supplementary groups, switches to\n"
	"--group and --user (as setpriv --clear-groups --regid --reuid) and sets no_new_privs.\n"
	"As root, --user is required (--user root to stay root); the group is the user's\n"
	"primary group in its passwd entry unless --group names one, and a uid with no passwd\n"
	"entry needs --group. Both are resolved before iommud is asked. The process that runs\n"
	"COMMAND keeps iommuctl's pid, which is the one iommud follows: the devices are free\n"
	"again when COMMAND exits or the lease is released.\n"
	"A QEMU needs --memlock of at least its guest RAM plus its ROMs (a few hundred KiB).\n";

static const struct cmd_option delegate_exec_options[] = {
	{"user", 'u', OPT_STRING, "USER", "run COMMAND as this user (name or uid)"},
	{"group", 'g', OPT_STRING, "GROUP", "and this group (name or gid)"},
	{"memlock", 'm', OPT_SIZE, "SIZE", "RLIMIT_MEMLOCK for COMMAND, soft and hard"},
	{NULL, 0, 0, NULL, NULL},
};
enum { OPT_USER, OPT_GROUP, OPT_MEMLOCK };

/* Splits a comma-separated list in place; returns how many names, at most max. */
static size_t split_devices(const struct cmd_entry *self, char *list, const char **names,
			    size_t max)
{
	size_t n = 0;

	for (char *name = strtok(list, ","); name; name = strtok(NULL, ",")) {
		if (n == max)
			usage_error(self->name, "at most %zu devices go to one VMM", max);
		names[n++] = name;
	}
	if (n == 0)
		usage_error(self->name, "name at least one device, as 'iommuctl devices' shows it");
	return n;
}

/* The ids --user and --group name; the user's primary group (from its passwd entry) when no
 * --group is given. A uid with no passwd entry has no primary group, and taking the number as
 * a gid would name whatever group has it (gid 42 is shadow on Debian), so it needs --group. */
static void resolve_ids(const struct cmd_entry *self, const struct cmd_args *args, uid_t *ret_uid,
			gid_t *ret_gid)
{
	const char *user = args->opt[OPT_USER].str, *group = args->opt[OPT_GROUP].str;
	const struct passwd *pw = getpwnam(user);
	const struct group *gr = group ? getgrnam(group) : NULL;
	uint64_t id;

	if (!pw && parse_u64(user, false, &id) && id < UINT32_MAX) {
		pw = getpwuid((uid_t)id);
		if (!pw && !group)
			usage_error(self->name,
				    "uid %s has no passwd entry, so no primary group: give the "
				    "group COMMAND runs as with --group",
				    user);
		*ret_uid = (uid_t)id;
	} else if (pw) {
		*ret_uid = pw->pw_uid;
	} else {
		usage_error(self->name, "no user '%s'", user);
	}
	if (pw)
		*ret_gid = pw->pw_gid;
	if (gr)
		*ret_gid = gr->gr_gid;
	else if (group && parse_u64(group, false, &id) && id < UINT32_MAX)
		*ret_gid = (gid_t)id;
	else if (group)
		usage_error(self->name, "no group '%s'", group);
}

/* setpriv's part: the limit first (raising it needs the privilege dropped after), then the
 * groups, the gid and the uid (resolved before iommud was asked), which leaves no
 * capabilities behind. */
static void drop_privileges(const struct cmd_args *args, uid_t uid, gid_t gid)
{
	if (args->opt[OPT_MEMLOCK].count) {
		struct rlimit lim = {args->opt[OPT_MEMLOCK].size, args->opt[OPT_MEMLOCK].size};

		if (setrlimit(RLIMIT_MEMLOCK, &lim) < 0)
			fail(EXIT_LOCAL, "cannot set RLIMIT_MEMLOCK: %s", strerror(errno));
	}
	if (args->opt[OPT_USER].count && (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
					  setresuid(uid, uid, uid) < 0))
		fail(EXIT_LOCAL, "cannot switch to uid %u gid %u: %s", (unsigned)uid, (unsigned)gid,
		     strerror(errno));
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail(EXIT_LOCAL, "cannot set no_new_privs: %s", strerror(errno));
}

static void cmd_delegate_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	const char *names[IOMMUCTL_DELEGATE_MAX], *bad = NULL;
	int fds[1 + IOMMUCTL_DELEGATE_MAX];
	size_t n, argc = 0;
	char **command;
	uid_t uid = 0;
	gid_t gid = 0;
	int rc;

	if (!cli.lease)
		usage_error(self->name, "delegated devices live in a lease: give --lease NAME, and "
					"'iommuctl --lease NAME lease release' ends it");
	if (args->opt[OPT_GROUP].count && !args->opt[OPT_USER].count)
		usage_error(self->name, "--group goes with --user");
	if (!args->opt[OPT_USER].count && geteuid() == 0)
		usage_error(self->name,
			    "as root, say which user COMMAND runs as with --user (a VMM "
			    "needs no privilege; --user root to keep root)");
	if (args->opt[OPT_USER].count)
		resolve_ids(self, args, &uid, &gid);
	while (args->operands[1 + argc])
		argc++;
	n = split_devices(self, args->operands[0], names, IOMMUCTL_DELEGATE_MAX);
	/* Checked before asking, as the ids are, so a mistyped command line takes nothing. */
	command = fd_slots_substitute(args->operands + 1, argc, n + 1, &bad);
	if (!command && bad)
		usage_error(self->name,
			    "'%s' names a placeholder with no descriptor: there are "
			    "{iommufd} and {device0} to {device%zu}",
			    bad, n - 1);
	if (!command)
		fail(EXIT_LOCAL, "out of memory");
	(void)cli_check(iommuctl_delegate(cli_connection(), names, n, 0, fds, NULL));
	cli_disconnect();
	rc = fd_slots_place(fds, n + 1);
	if (rc < 0)
		fail(EXIT_LOCAL, "cannot move the descriptors into place: %s", strerror(-rc));
	drop_privileges(args, uid, gid);
	execvp(command[0], command);
	fail(EXIT_LOCAL, "cannot run %s: %s", command[0], strerror(errno));
}

static const char delegate_qmp_help[] =
	"Hands DEVICES (comma-separated) to a QEMU that is already running, through its QMP\n"
	"socket at QMP_SOCKET (-qmp unix:PATH,server=on,wait=off), as libvirt hotplugs: asks\n"
	"iommud for them within the lease of --lease, which is required, for the QEMU whose pid\n"
	"iommud then follows (--vmm-pid; by default the process that listens on the socket,\n"
	"which is QEMU only if QEMU created it: a launcher that created the monitor socket and\n"
	"passed it to QEMU must give --vmm-pid), passes each fd with getfd\n"
	"(PREFIX-fd0 the iommufd, PREFIX-fd1 ... the devices), adds the iommufd object\n"
	"(PREFIX-iommufd) and one vfio-pci device per device (PREFIX-dev0, ...), and closes its\n"
	"own copies. QEMU needs no privilege for it, only RLIMIT_MEMLOCK for its guest RAM.\n"
	"Prints the delegation's id. The monitor must be in its default mode (not pretty=on);\n"
	"iommuctl gives up on a QEMU silent for 60 s. If QEMU refuses a step, iommuctl closes\n"
	"the fds it passed (closefd), and the devices stay delegated until QEMU exits or the\n"
	"lease is released.\n";

static const struct cmd_option delegate_qmp_options[] = {
	{"id", 'i', OPT_STRING, "PREFIX", "prefix of the QMP ids (default: iommud)"},
	{"bus", 'b', OPT_STRING, "BUS", "device_add's bus: a PCIe root port's id"},
	{"cont", 'c', OPT_FLAG, NULL, "send cont afterwards (for a QEMU started with -S)"},
	{"vmm-pid", 'p', OPT_STRING, "PID", "QEMU's pid (default: the socket's listener)"},
	{NULL, 0, 0, NULL, NULL},
};
enum { OPT_ID, OPT_BUS, OPT_CONT, OPT_VMM_PID };

static void cmd_delegate_qmp(const struct cmd_entry *self, const struct cmd_args *args)
{
	struct qmp_names names = {.prefix =
					  args->opt[OPT_ID].str ? args->opt[OPT_ID].str : "iommud",
				  .bus = args->opt[OPT_BUS].str,
				  .cont = args->opt[OPT_CONT].count > 0};
	const char *devices[IOMMUCTL_DELEGATE_MAX];
	int fds[1 + IOMMUCTL_DELEGATE_MAX], sock, rc;
	char err[512];
	uint64_t id;
	pid_t pid;
	size_t n;

	if (!cli.lease)
		usage_error(self->name, "delegated devices live in a lease: give --lease NAME");
	if (!qmp_name_ok(names.prefix) || (names.bus && !qmp_name_ok(names.bus)))
		usage_error(self->name, "--id and --bus take letters, digits, '-', '_' and '.'");
	if (args->opt[OPT_VMM_PID].str &&
	    (!parse_u64(args->opt[OPT_VMM_PID].str, false, &id) || id == 0 || id > INT32_MAX))
		usage_error(self->name, "--vmm-pid takes QEMU's process id, not '%s'",
			    args->opt[OPT_VMM_PID].str);
	n = split_devices(self, args->operands[1], devices, IOMMUCTL_DELEGATE_MAX);
	if (qmp_connect(args->operands[0], &sock, &pid, err, sizeof(err)) < 0)
		fail(EXIT_LOCAL, "%s", err);
	if (args->opt[OPT_VMM_PID].str)
		pid = (pid_t)id;
	(void)cli_check(iommuctl_delegate(cli_connection(), devices, n, (uint32_t)pid, fds, &id));
	rc = qmp_hand_over(sock, fds, n + 1, &names, err, sizeof(err));
	for (size_t i = 0; i <= n; i++)
		(void)close(fds[i]);
	(void)close(sock);
	if (rc < 0)
		fail(EXIT_LOCAL,
		     "%s; delegation %" PRIu64 " stays until QEMU exits or the lease is released",
		     err, id);
	obj_begin(NULL);
	field("delegation_id", NUM | BARE, id, NULL);
	obj_end();
}

void show_delegation_list(Iommud__V1__Delegation *const *list, size_t n)
{
	list_begin("delegations", "ID DEVICES TENANT PID UID LEASE SINCE PINNED LIMIT CGROUP");
	for (size_t i = 0; i < n; i++) {
		const Iommud__V1__Delegation *d = list[i];

		obj_begin(NULL);
		field("delegation_id", NUM, d->delegation_id, NULL);
		field_strings("devices", d->devices, d->n_devices);
		field("tenant", STR, 0, d->tenant);
		field("vmm_pid", NUM, d->vmm_pid, NULL);
		field("uid", NUM, d->uid, NULL);
		field("lease", STR, 0, d->lease);
		field("since_unix_seconds", NUM, d->since_unix_seconds, NULL);
		field("pinned_bytes", SIZE, d->pinned_bytes, NULL);
		field("pinned_bytes_limit", SIZE, d->pinned_bytes_limit,
		      d->pinned_bytes_limit == UINT64_MAX ? "unlimited" : NULL);
		field("cgroup", STR, 0, d->cgroup);
		obj_end();
	}
	list_end();
}

static void show_delegations(const void *msg, Iommud__V1__Response *r)
{
	(void)msg;
	obj_begin(NULL);
	show_delegation_list(r->list_delegations->delegations, r->list_delegations->n_delegations);
	obj_end();
}

const struct cmd_entry cmd_delegate_exec_entry = {
	.name = "delegate exec",
	.operands = "DEVICES COMMAND...",
	.summary = "Runs a VM manager with delegated devices' fds.",
	.help = delegate_exec_help,
	.options = delegate_exec_options,
	.examples =
		"  iommuctl --lease vm1 delegate exec --user qemu --memlock 2200M 0000:00:03.0 \\\n"
		"      -- qemu-system-x86_64 -m 2G -object iommufd,id=i0,fd={iommufd} \\\n"
		"      -device vfio-pci,iommufd=i0,fd={device0} ...\n",
	.exec = cmd_delegate_exec,
};

const struct cmd_entry cmd_delegate_qmp_entry = {
	.name = "delegate qmp",
	.operands = "QMP_SOCKET DEVICES",
	.summary = "Hands delegated devices to a running QEMU over QMP.",
	.help = delegate_qmp_help,
	.options = delegate_qmp_options,
	.examples = "  iommuctl --lease vm1 delegate qmp --bus rp1 --cont /run/vm1/qmp.sock "
		    "0000:00:03.0\n",
	.exec = cmd_delegate_qmp,
};

const struct cmd_entry cmd_delegations_entry = {
	.name = "delegations",
	.summary = "Lists devices handed to VM managers.",
	.help = "Lists the delegations iommud follows: the devices handed out, the VMM's pid,\n"
		"the tenant label and uid that asked, the lease, since when (seconds since the\n"
		"epoch), the VMM's pinned memory (its VmPin, read from the kernel now) and its\n"
		"RLIMIT_MEMLOCK (LIMIT), which alone bounds it (the tenant's quotas do not), and\n"
		"its cgroup. Root and stats = all sections see everyone's, others their own.\n",
	.examples = "  iommuctl delegations\n",
	.method = IOMMUD__V1__REQUEST__METHOD_LIST_DELEGATIONS,
	.show = show_delegations,
};
