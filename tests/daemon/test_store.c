// SPDX-License-Identifier: MIT
/* The service manager's descriptor store under a supervisor that keeps it as systemd does: the
 * state record is made on every kernel, and the room a request was admitted with is still there
 * when it ends. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grp.h>
#include <iommuctl.h>
#include <iommud_wire.h>
#include <state_record.h>

#include "check.h"
#include "harness.h"
#include "supervisor.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

#if defined(__x86_64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#define BATCH_UID 65534u /* the tenant of the lease whose batch runs over several turns */

static const char config[] = "probe-tier = off\n[access]\ndefault = none\n"
			     "[uid 0]\naccess = write\ndevices = emu*\n"
			     "[uid 65534]\naccess = write\ndevices = emu0\nmax-pinned = 64G\n";

/* ---- the record's memfd on every kernel ------------------------------------------------- */

/* From now on, in this process and what it starts, memfd_create refuses with err every call
 * whose flags hold MFD_NOEXEC_SEAL (sealed) or lack it (!sealed): a kernel older than the flag,
 * or one of Linux 6.3 to 6.6 under vm.memfd_noexec = 2, which the host may not be. */
static void refuse_memfds(bool sealed, int err)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HOST_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		/* The flags' low word, where both architectures keep MFD_NOEXEC_SEAL. */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MFD_NOEXEC_SEAL, sealed ? 0 : 1,
			 sealed ? 1 : 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};

	CHECK_OK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	CHECK_OK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog));
}

/* The daemon starts with a record in the store, and neither of its memfds was refused. */
static void check_record_made(void)
{
	struct supervisor sv;

	supervisor_start(&sv, config, "emu0");
	CHECK_EQ(supervisor_stored(&sv, STATE_RECORD_PREFIX), 1);
	CHECK(!supervisor_log_has(&sv, "cannot create a state record"));
	CHECK(!supervisor_log_has(&sv, "cannot make a memfd"));
	supervisor_stop(&sv);
}

/* Linux 6.3 to 6.6 under vm.memfd_noexec = 2 refuse a memfd not sealed against execution. */
TEST(record_made_where_noexec_memfds_are_enforced)
{
	refuse_memfds(false, EACCES);
	check_record_made();
}

/* Kernels before 6.3 know no MFD_NOEXEC_SEAL. */
TEST(record_made_where_noexec_seal_is_unknown)
{
	refuse_memfds(true, EINVAL);
	check_record_made();
}
