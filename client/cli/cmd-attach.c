/* SPDX-License-Identifier: MIT */
/* iommuctl attach, replace and detach: which domain a device's DMA goes through. */
#include "cli.h"
#include "output.h"

static const char attach_help[] =
	"Attaches DEVICE to domain DOMAIN, so its DMA goes through the domain's translation.\n"
	"DEVICE must not be attached already (use 'iommuctl replace' to move it). Its reserved\n"
	"ranges and what lies outside its aperture become unusable in the domain, so the attach\n"
	"fails if a mapping is there. The other devices of its IOMMU group follow it.\n";

static const char replace_help[] =
	"Moves DEVICE (and its IOMMU group) from the domain it is attached to into DOMAIN,\n"
	"without a window in which its DMA is blocked, and prints the old domain's id (with\n"
	"--json, {\"old_domain_id\": ID}).\n";

static const char detach_help[] =
	"Detaches DEVICE (and its IOMMU group) from its domain, which blocks its DMA, and prints\n"
	"the id of the domain it was attached to (with --json, {\"old_domain_id\": ID}).\n";

static void cmd_attach_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	uint32_t id = arg_domain(self, args->operands[1]);

	cli_check(iommuctl_attach(cli_connection(), args->operands[0], id));
	out_empty();
}

/* The domain the device left (ReplaceDomain and DetachDevice say the same): in text only when
 * there was one. */
static void show_old_domain(const void *msg, Iommud__V1__Response *r)
{
	uint32_t old = r->result_case == IOMMUD__V1__RESPONSE__RESULT_REPLACE_DOMAIN
			       ? r->replace_domain->old_domain_id
			       : r->detach_device->old_domain_id;

	(void)msg;
	obj_begin(NULL);
	field("old_domain_id", NUM | (old ? BARE : JSON_ONLY), old, NULL);
	obj_end();
}

const struct cmd_entry cmd_attach_entry = {
	.name = "attach",
	.operands = "DEVICE DOMAIN",
	.summary = "Attaches a detached device to a domain.",
	.help = attach_help,
	.examples = "  iommuctl --lease vm1 attach 0000:00:04.0 3\n",
	.exec = cmd_attach_exec,
};

const struct cmd_entry cmd_replace_entry = {
	.name = "replace",
	.operands = "DEVICE DOMAIN",
	.summary = "Moves an attached device to another domain.",
	.help = replace_help,
	.examples = "  iommuctl --lease vm1 replace 0000:00:04.0 4\n",
	.method = IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN,
	.fields = "device domain_id",
	.show = show_old_domain,
};

const struct cmd_entry cmd_detach_entry = {
	.name = "detach",
	.operands = "DEVICE",
	.summary = "Detaches a device from its domain.",
	.help = detach_help,
	.examples = "  iommuctl --lease vm1 detach 0000:00:04.0\n",
	.method = IOMMUD__V1__REQUEST__METHOD_DETACH_DEVICE,
	.fields = "device",
	.show = show_old_domain,
};
