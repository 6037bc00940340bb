/* SPDX-License-Identifier: MIT */
/* iommuctl domains, domain alloc and domain free: the domains of a session. */
#include "cli.h"
#include "output.h"

static const char domains_help[] =
	"Lists the domains of the session (see --lease), as a table: ID, TYPE (paging, blocked,\n"
	"identity, nested), the DEVICE it was allocated for, how many MAPPINGS it has and how\n"
	"many bytes they cover (MAPPED), and the devices ATTACHED to it.\n";

static const char domain_alloc_help[] =
	"Allocates a domain of the kind DEVICE's IOMMU provides, binding DEVICE into the\n"
	"session if it is not yet, and prints the new domain's id (with --json,\n"
	"{\"domain_id\": ID}). The domain is not attached: use 'iommuctl attach'.\n"
	"\n" SESSION_NOTE;

static const char domain_free_help[] =
	"Frees domain ID of the session, with its mappings. Devices must be detached from it\n"
	"first, and nested domains built on it freed.\n";

static void show_domains(const void *msg, Iommud__V1__Response *r)
{
	const Iommud__V1__ListDomainsReply *l = r->list_domains;

	(void)msg;
	obj_begin(NULL);
	list_begin("domains", "ID TYPE DEVICE MAPPINGS MAPPED ATTACHED");
	for (size_t i = 0; i < l->n_domains; i++) {
		const Iommud__V1__Domain *d = l->domains[i];

		obj_begin(NULL);
		field("domain_id", NUM, d->domain_id, NULL);
		field("type", STR, 0, domain_type_name(d->type));
		field("device", STR, 0, d->device);
		field("mappings", NUM, d->mappings, NULL);
		field("mapped_bytes", SIZE, d->mapped_bytes, NULL);
		field_strings("attached", d->attached, d->n_attached);
		obj_end();
	}
	list_end();
	obj_end();
}

enum { ALLOC_TYPE, ALLOC_DIRTY_TRACKING, ALLOC_NEST_PARENT };
static const struct cmd_option alloc_options[] = {
	[ALLOC_TYPE] = {"type", 't', OPT_STRING, "TYPE",
			"paging (the default): IOVAs translated by page tables iommud\n"
			"fills; blocked: every DMA faults; identity: IOVA = physical\n"
			"address (not on the iommufd backend)"},
	[ALLOC_DIRTY_TRACKING] = {"dirty-tracking", 0, OPT_FLAG, NULL,
				  "a paging domain that can record which pages devices wrote\n"
				  "(see 'iommuctl dirty')"},
	[ALLOC_NEST_PARENT] = {"nest-parent", 0, OPT_FLAG, NULL,
			       "a paging domain that can be the stage 2 of nested domains"},
	{},
};

static void cmd_domain_alloc_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	enum iommuctl_domain_type type = IOMMUCTL_DOMAIN_PAGING;
	const char *name = args->opt[ALLOC_TYPE].str;
	uint32_t flags = 0, id;

	if (name && !domain_type_from_name(name, &type))
		usage_error(self->name,
			    "'%s' is not a domain type 'domain alloc' makes; give paging, "
			    "blocked or identity",
			    name);
	if (args->opt[ALLOC_DIRTY_TRACKING].count)
		flags |= IOMMUCTL_DOMAIN_DIRTY_TRACKING;
	if (args->opt[ALLOC_NEST_PARENT].count)
		flags |= IOMMUCTL_DOMAIN_NEST_PARENT;
	cli_check(iommuctl_alloc_domain(cli_connection(), args->operands[0], type, flags, &id));
	obj_begin(NULL);
	field("domain_id", NUM | BARE, id, NULL);
	obj_end();
}

static void cmd_domain_free_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	uint32_t id = arg_domain(self, args->operands[0]);

	cli_check(iommuctl_free_domain(cli_connection(), id));
	out_empty();
}

const struct cmd_entry cmd_domains_entry = {
	.name = "domains",
	.summary = "Lists the domains of your session.",
	.help = domains_help,
	.examples = "  iommuctl --lease vm1 domains\n",
	.method = IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS,
	.show = show_domains,
};

const struct cmd_entry cmd_domain_alloc_entry = {
	.name = "domain alloc",
	.operands = "DEVICE",
	.usage = "DEVICE [--type paging|blocked|identity]\n"
		 "           [--dirty-tracking] [--nest-parent]",
	.summary = "Allocates a domain for a device.",
	.help = domain_alloc_help,
	.options = alloc_options,
	.examples = "  D=$(iommuctl --lease vm1 domain alloc 0000:00:04.0 --dirty-tracking)\n"
		    "  iommuctl --lease vm1 domain alloc emu0 --type blocked\n",
	.exec = cmd_domain_alloc_exec,
};

const struct cmd_entry cmd_domain_free_entry = {
	.name = "domain free",
	.operands = "ID",
	.summary = "Frees a domain.",
	.help = domain_free_help,
	.examples = "  iommuctl --lease vm1 domain free 3\n",
	.exec = cmd_domain_free_exec,
};
