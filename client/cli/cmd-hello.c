/* SPDX-License-Identifier: MIT */
/* iommuctl hello: who iommud takes you for and what you may do. */
#include "cli.h"
#include "output.h"

static const char hello_help[] =
	"Says Hello to iommud and shows its reply: the daemon's version and protocol, the\n"
	"backend (iommufd, vfio-type1 or emulated) and whether it remaps anything (the\n"
	"emulated one does not: no device's DMA is restricted), the identity it sees (uid,\n"
	"gid, pid, cgroup, and the configuration section that applies, which with uid and\n"
	"cgroup makes your tenant), the session (--lease), your permissions (read: list and\n"
	"query; write: everything), the capabilities of the daemon and its backend (map_batch,\n"
	"map_batch_columns, map_batch_picked_iovas, open_device, dma_remapping, replace,\n"
	"dirty_tracking, nesting, map_file, copy, blocked_domain, identity_domain), the\n"
	"message limits, your quota: domains, mappings, pinned bytes, leases and page-table\n"
	"bytes in use, each with its limit from the configuration, and the daemon's ceilings\n"
	"over all tenants (file maps, leases, pinned bytes; 0: none).\n";

void show_quota(const Iommud__V1__Quota *q)
{
	if (!q)
		return;
	obj_begin("quota");
	field("domains", NUM, q->domains, NULL);
	field("max_domains", NUM, q->max_domains, NULL);
	field("mappings", NUM, q->mappings, NULL);
	field("max_mappings", NUM, q->max_mappings, NULL);
	field("pinned_bytes", SIZE, q->pinned_bytes, NULL);
	field("max_pinned_bytes", SIZE, q->max_pinned_bytes, NULL);
	field("leases", NUM, q->leases, NULL);
	field("max_leases", NUM, q->max_leases, NULL);
	field("page_table_bytes", SIZE, q->page_table_bytes, NULL);
	field("max_page_table_bytes", SIZE, q->max_page_table_bytes, NULL);
	field("file_maps", NUM, q->maps, NULL);
	field("max_file_maps", NUM, q->max_maps, NULL);
	obj_end();
}

/* Named apart from the quota's fields, which text shows beside them. */
void show_ceilings(const Iommud__V1__Ceilings *c, bool with_usage)
{
	if (!c)
		return;
	obj_begin("ceilings");
	if (with_usage)
		field("total_file_maps", NUM, c->maps, NULL);
	field("ceiling_file_maps", NUM, c->max_maps, NULL);
	if (with_usage)
		field("total_leases", NUM, c->leases, NULL);
	field("ceiling_leases", NUM, c->max_leases, NULL);
	if (with_usage)
		field("total_pinned_bytes", SIZE, c->pinned_bytes, NULL);
	field("ceiling_pinned_bytes", SIZE, c->max_pinned_bytes, NULL);
	if (with_usage)
		field("failed_releases", NUM, c->failed_releases, NULL);
	obj_end();
}

static void cmd_hello_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	const Iommud__V1__HelloReply *h;
	bool anonymous;

	(void)self;
	(void)args;
	(void)cli_connection();
	h = cli.hello;
	anonymous = !*h->lease && !output_is_json();
	obj_begin(NULL);
	field("daemon_version", STR, 0, h->daemon_version);
	field("protocol_version", NUM, h->protocol_version, NULL);
	field("backend", STR, 0, h->backend_name);
	field("nothing_remapped", BOOL, h->nothing_remapped,
	      h->nothing_remapped ? "yes: the IOMMU is emulated, no device's DMA is restricted"
				  : NULL);
	field("uid", NUM, h->uid, NULL);
	field("gid", NUM, h->gid, NULL);
	field("pid", NUM, h->pid, NULL);
	field("cgroup", STR, 0, h->cgroup);
	field("section", STR, 0,
	      *h->section || output_is_json() ? h->section : "- (none: the default)");
	field("lease", STR, 0, anonymous ? "- (the anonymous session)" : h->lease);
	field_strings("permissions", h->permissions, h->n_permissions);
	field_strings("capabilities", h->capabilities, h->n_capabilities);
	field("max_message_bytes", NUM, h->max_message_bytes, NULL);
	field("max_fds_per_message", NUM, h->max_fds_per_message, NULL);
	show_quota(h->quota);
	show_ceilings(h->ceilings, false);
	obj_end();
}

const struct cmd_entry cmd_hello_entry = {
	.name = "hello",
	.summary = "Shows who iommud takes you for and what you may do.",
	.help = hello_help,
	.examples = "  iommuctl hello\n"
		    "  iommuctl --json hello | jq -r '.permissions[]'\n",
	.exec = cmd_hello_exec,
};
