/* SPDX-License-Identifier: MIT */
/* iommuctl dirty: dirty tracking, which records the pages devices wrote. */
#include <inttypes.h>

#include "cli.h"
#include "output.h"

static const char dirty_help[] =
	"Dirty tracking records which pages devices wrote, for live migration. It needs a domain\n"
	"allocated with 'domain alloc --dirty-tracking'. --read shows how many pages are dirty\n"
	"and the runs of dirty pages; with --json, also the bitmap (bit i%64 of word i/64 is\n"
	"page i of the range).\n";

enum {
	DIRTY_ENABLE,
	DIRTY_DISABLE,
	DIRTY_READ,
	DIRTY_IOVA,
	DIRTY_LENGTH,
	DIRTY_PAGE_SIZE,
	DIRTY_NO_CLEAR
};
static const struct cmd_option dirty_options[] = {
	[DIRTY_ENABLE] = {"enable", 'e', OPT_FLAG, NULL, "start recording writes"},
	[DIRTY_DISABLE] = {"disable", 'd', OPT_FLAG, NULL, "stop recording writes"},
	[DIRTY_READ] = {"read", 'r', OPT_FLAG, NULL,
			"show which pages of [IOVA, IOVA+N) devices wrote since the last\n"
			"read, and clear their bits"},
	[DIRTY_IOVA] = {"iova", 'i', OPT_SIZE, "IOVA", "with --read: start of the range"},
	[DIRTY_LENGTH] = {"length", 'l', OPT_SIZE, "N", "with --read: length of the range"},
	[DIRTY_PAGE_SIZE] = {"page-size", 0, OPT_SIZE, "N",
			     "with --read: granularity of the bitmap (default 4K)"},
	[DIRTY_NO_CLEAR] = {"no-clear", 0, OPT_FLAG, NULL, "with --read: leave the bits set"},
	{},
};

static bool dirty_bit(const Iommud__V1__ReadDirtyReply *d, uint64_t page)
{
	return d->bitmap[page / 64] >> (page % 64) & 1;
}

/* Runs of dirty pages among the first known, which say more to a person than the bitmap. */
static void show_dirty_runs(const Iommud__V1__ReadDirtyRequest *q,
			    const Iommud__V1__ReadDirtyReply *d, uint64_t known)
{
	list_begin("dirty", "DIRTY-START LAST SIZE");
	for (uint64_t p = 0, end; p < known; p = end + 1) {
		for (end = p; end + 1 < known && dirty_bit(d, end + 1) == dirty_bit(d, p);)
			end++;
		if (dirty_bit(d, p))
			field_range(q->iova + p * q->page_size,
				    q->iova + (end + 1) * q->page_size - 1);
	}
	list_end();
}

static void show_dirty(const void *msg, Iommud__V1__Response *r)
{
	const Iommud__V1__ReadDirtyRequest *q = msg;
	const Iommud__V1__ReadDirtyReply *d = r->read_dirty;
	uint64_t pages = q->length / q->page_size + !!(q->length % q->page_size), dirty = 0;
	/* Bits past the range, or words the daemon left out, say nothing. */
	uint64_t known = pages < d->n_bitmap * 64 ? pages : d->n_bitmap * 64;

	for (uint64_t p = 0; p < known; p++)
		dirty += dirty_bit(d, p);
	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, q->domain_id, NULL);
	field("iova", HEX, q->iova, NULL);
	field("length", SIZE, q->length, NULL);
	field("page_size", SIZE, q->page_size, NULL);
	field("pages", NUM, pages, NULL);
	field("dirty_pages", NUM, dirty, NULL);
	list_begin("bitmap", NULL);
	for (size_t i = 0; i < d->n_bitmap; i++)
		field(NULL, NUM, d->bitmap[i], NULL);
	list_end();
	if (dirty || output_is_json())
		show_dirty_runs(q, d, known);
	obj_end();
}

/* The request --read makes, once its options are checked. */
static void read_request(const struct cmd_entry *self, const struct cmd_args *args,
			 Iommud__V1__ReadDirtyRequest *read)
{
	if (!args->opt[DIRTY_IOVA].count || !args->opt[DIRTY_LENGTH].count)
		usage_error(self->name,
			    "--read needs --iova IOVA and --length N: the range to read");
	read->iova = args->opt[DIRTY_IOVA].size;
	read->length = args->opt[DIRTY_LENGTH].size;
	read->page_size = args->opt[DIRTY_PAGE_SIZE].count ? args->opt[DIRTY_PAGE_SIZE].size : 4096;
	read->no_clear = args->opt[DIRTY_NO_CLEAR].count;
	if (!read->page_size || read->page_size & (read->page_size - 1))
		usage_error(self->name, "--page-size %" PRIu64 " is not a power of two",
			    read->page_size);
}

static void cmd_dirty_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	Iommud__V1__SetDirtyTrackingRequest set = IOMMUD__V1__SET_DIRTY_TRACKING_REQUEST__INIT;
	Iommud__V1__ReadDirtyRequest read = IOMMUD__V1__READ_DIRTY_REQUEST__INIT;
	const struct opt_value *o = args->opt;

	read.domain_id = set.domain_id = arg_domain(self, args->operands[0]);
	if (o[DIRTY_ENABLE].count + o[DIRTY_DISABLE].count + o[DIRTY_READ].count != 1)
		usage_error(self->name, "give one of --enable, --disable and --read");
	if (o[DIRTY_READ].count)
		read_request(self, args, &read);
	else if (o[DIRTY_IOVA].count || o[DIRTY_LENGTH].count || o[DIRTY_PAGE_SIZE].count ||
		 o[DIRTY_NO_CLEAR].count)
		usage_error(self->name,
			    "--iova, --length, --page-size and --no-clear go with --read");
	set.enable = o[DIRTY_ENABLE].count;
	if (o[DIRTY_READ].count)
		cli_show(IOMMUD__V1__REQUEST__METHOD_READ_DIRTY, &read, show_dirty);
	else
		cli_show(IOMMUD__V1__REQUEST__METHOD_SET_DIRTY_TRACKING, &set, NULL);
}

const struct cmd_entry cmd_dirty_entry = {
	.name = "dirty",
	.operands = "DOMAIN",
	.usage = "DOMAIN --enable | --disable\n"
		 "           | --read --iova IOVA --length N [--page-size N] [--no-clear]",
	.summary = "Controls and reads dirty tracking.",
	.help = dirty_help,
	.options = dirty_options,
	.examples = "  iommuctl --lease vm1 dirty 3 --enable\n"
		    "  iommuctl --lease vm1 dirty 3 --read --iova 0x40000000 --length 1G\n",
	.exec = cmd_dirty_exec,
};
