/* SPDX-License-Identifier: MIT */
/* iommuctl lease release: the end of a named session. */
#include "cli.h"
#include "output.h"

static const char lease_release_help[] =
	"Releases the session named by the global --lease option: once its last connection\n"
	"closes (this one, when iommuctl exits, unless another program holds one), iommud\n"
	"unmaps, detaches and frees everything in it.\n";

/* The request has no fields: the lease is the session this connection joined. */
static void release_request(const struct cmd_entry *self, const struct cmd_args *args, void *msg)
{
	(void)args;
	(void)msg;
	if (!cli.lease)
		usage_error(self->name,
			    "name the lease to release with the global --lease NAME option, as in "
			    "'iommuctl --lease NAME lease release'");
}

const struct cmd_entry cmd_lease_release_entry = {
	.name = "lease release",
	.summary = "Ends a named session.",
	.help = lease_release_help,
	.examples = "  iommuctl --lease vm1 lease release\n",
	.method = IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE,
	.request = release_request,
};
