/* SPDX-License-Identifier: MIT */
/* iommuctl mappings and ranges: what a domain's IOVA space holds, and where mappings may go. */
#include "cli.h"
#include "output.h"

static const char mappings_help[] =
	"Lists every mapping of DOMAIN in IOVA order (asking iommud page by page): its IOVA,\n"
	"LAST address, LENGTH, PROT (r: devices read it, w: devices write it) and the OFFSET\n"
	"in its file.\n";

static const char ranges_help[] =
	"Lists the IOVA ranges of DOMAIN that mappings may use: the aperture of the attached\n"
	"devices' IOMMUs, less their reserved ranges. Existing mappings are not subtracted.\n";

/* Shows one page of ListMappings and returns where the next starts, or 0 after the last. */
static uint64_t show_mappings_page(Iommud__V1__ListMappingsRequest *msg)
{
	Iommud__V1__Response *r = cli_call(IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS, msg);
	const Iommud__V1__ListMappingsReply *l = r->list_mappings;
	uint64_t next = l->next_from;

	for (size_t i = 0; i < l->n_mappings; i++) {
		const Iommud__V1__Mapping *m = l->mappings[i];

		obj_begin(NULL);
		field("iova", HEX, m->iova, NULL);
		field("last", HEX | TEXT_ONLY, m->iova + m->length - 1, NULL);
		field("length", SIZE, m->length, NULL);
		field("prot", STR, 0, prot_name(m->prot));
		field("offset", HEX, m->offset, NULL);
		obj_end();
	}
	/* A page that does not move forward would have the caller ask for ever. */
	if (l->more && next <= msg->from)
		cli_broken_reply(r, "to list_mappings does not move forward");
	if (!l->more)
		next = 0;
	iommuctl_response_free(r);
	return next;
}

static void cmd_mappings_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	Iommud__V1__ListMappingsRequest msg = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;

	msg.domain_id = arg_domain(self, args->operands[0]);
	/* Connected before the output starts, so a failure leaves no half object behind. */
	(void)cli_connection();
	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, msg.domain_id, NULL);
	list_begin("mappings", "IOVA LAST LENGTH PROT OFFSET");
	do
		msg.from = show_mappings_page(&msg);
	while (msg.from);
	list_end();
	obj_end();
}

static void show_ranges(const void *msg, Iommud__V1__Response *r)
{
	const Iommud__V1__GetIovaRangesRequest *q = msg;
	const Iommud__V1__GetIovaRangesReply *l = r->get_iova_ranges;

	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, q->domain_id, NULL);
	list_begin("ranges", "START LAST SIZE");
	for (size_t i = 0; i < l->n_ranges; i++)
		field_range(l->ranges[i]->start, l->ranges[i]->last);
	list_end();
	obj_end();
}

const struct cmd_entry cmd_mappings_entry = {
	.name = "mappings",
	.operands = "DOMAIN",
	.summary = "Lists the mappings of a domain.",
	.help = mappings_help,
	.examples = "  iommuctl --lease vm1 mappings 3\n"
		    "  iommuctl --lease vm1 --json mappings 3 | jq '.mappings | length'\n",
	.exec = cmd_mappings_exec,
};

const struct cmd_entry cmd_ranges_entry = {
	.name = "ranges",
	.operands = "DOMAIN",
	.summary = "Lists the IOVA ranges where mappings may go.",
	.help = ranges_help,
	.examples = "  iommuctl --lease vm1 ranges 3\n",
	.method = IOMMUD__V1__REQUEST__METHOD_GET_IOVA_RANGES,
	.fields = "domain_id",
	.show = show_ranges,
};
