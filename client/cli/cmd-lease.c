/* SPDX-License-Identifier: MIT */
/* iommuctl lease release: the end of a named session. */
#include "cli.h"
#include "output.h"

static void cmd_lease_release_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	Iommud__V1__ReleaseLeaseRequest msg = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;

	(void)args;
	if (!cli.lease)
		usage_error(self->name,
			    "name the lease to release with the global --lease NAME option, as in "
			    "'iommuctl --lease NAME lease release'");
	cli_show(IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE, &msg, NULL);
}

static const char lease_release_help[] =
	"Releases the session named by the global --lease option: once its last connection\n"
	"closes (this one, when iommuctl exits, unless another program holds one), iommud\n"
	"unmaps, detaches and frees everything in it.\n";

const struct cmd_entry cmd_lease_release_entry = {
	.name = "lease release",
	.summary = "Ends a named session.",
	.help = lease_release_help,
	.examples = "  iommuctl --lease vm1 lease release\n",
	.exec = cmd_lease_release_exec,
};
