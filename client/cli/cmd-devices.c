/* SPDX-License-Identifier: MIT */
/* iommuctl devices and device: the devices iommud manages. */
#include <stdio.h>

#include "cli.h"
#include "output.h"

static const char devices_help[] =
	"Lists every device of the backend, as a table:\n"
	"  NAME           PCI address (iommufd) or name in the topology (emulated)\n"
	"  GROUP          IOMMU group; the devices of a group share one domain\n"
	"  VENDOR:DEVICE  PCI ids, in hex\n"
	"  DRIVER         the kernel driver bound to it\n"
	"  PAGE-SIZES     the page sizes its IOMMU maps\n"
	"  ALLOWED        whether the configuration lets you take it\n"
	"  STATE          free, bound (in a session's context), attached (to a domain) or\n"
	"                 delegated (handed to a VMM: 'iommuctl delegations' says to whom)\n"
	"  DOMAIN         the domain it is attached to in your session, or -\n"
	"With --json, every device with all the fields 'iommuctl device' shows.\n";

static const char device_help[] =
	"Shows DEVICE: its group, PCI ids and driver, what its IOMMU can do (page sizes,\n"
	"aperture, dirty tracking, nesting, PASID bits), whether you may take it, whether it is\n"
	"bound in your session and the domain it is attached to there, its state over every\n"
	"session and delegation (free, bound, attached or delegated), and its reserved IOVA\n"
	"ranges: addresses no mapping may use once it is attached (the MSI window among them).\n";

static const char *fmt_page_sizes(char buf[160], uint64_t sizes)
{
	size_t len = 0;
	char one[24];

	buf[0] = 0;
	for (unsigned bit = 0; bit < 64; bit++)
		if (sizes & (1ull << bit))
			len += (size_t)snprintf(buf + len, 160 - len, "%s%s", len ? "," : "",
						fmt_size(one, 1ull << bit));
	return len ? buf : "-";
}

static void show_hw(const Iommud__V1__Device *d, bool table)
{
	int detail = table ? JSON_ONLY : 0;
	char sizes[160];

	if (!d->hw) {
		if (table)
			field("page_sizes", NUM | TEXT_ONLY, 0, "");
		return;
	}
	field("page_sizes", NUM, d->hw->page_sizes, fmt_page_sizes(sizes, d->hw->page_sizes));
	field("aperture_start", HEX | detail, d->hw->aperture_start, NULL);
	field("aperture_last", HEX | detail, d->hw->aperture_last, NULL);
	field("dirty_tracking", BOOL | detail, d->hw->dirty_tracking, NULL);
	field("nesting", BOOL | detail, d->hw->nesting, NULL);
	field("pasid_bits", NUM | detail, d->hw->pasid_bits, NULL);
	field("hw_type", NUM | detail, d->hw->hw_type, NULL);
	field("max_mappings", NUM | detail, d->hw->max_mappings,
	      d->hw->max_mappings ? NULL : "no limit");
}

/* In the devices table only the fields that fit a line show; --json and 'device' show all. */
static void show_device(const Iommud__V1__Device *d, bool table)
{
	int detail = table ? JSON_ONLY : 0;
	char ids[16];

	(void)snprintf(ids, sizeof(ids), "%04x:%04x", d->vendor, d->device);
	obj_begin(NULL);
	field("name", STR, 0, d->name);
	field("group", NUM, d->group, NULL);
	field("vendor:device", STR | TEXT_ONLY, 0, ids);
	field("vendor", NUM | JSON_ONLY, d->vendor, NULL);
	field("device", NUM | JSON_ONLY, d->device, NULL);
	field("driver", STR, 0, d->driver);
	show_hw(d, table);
	field("allowed", BOOL, d->allowed, NULL);
	field("state", STR, 0, d->state);
	field("bound", BOOL | detail, d->bound, NULL);
	field("domain_id", NUM, d->domain_id, d->domain_id ? NULL : "");
	/* A list does not fit a table's line. */
	if (!table || output_is_json())
		field_strings("capabilities", d->capabilities, d->n_capabilities);
	list_begin("reserved", "RESERVED-START LAST SIZE");
	for (size_t i = 0; i < d->n_reserved; i++)
		field_range(d->reserved[i]->start, d->reserved[i]->last);
	list_end();
	obj_end();
}

static void show_devices(const void *msg, Iommud__V1__Response *r)
{
	(void)msg;
	obj_begin(NULL);
	list_begin("devices", "NAME GROUP VENDOR:DEVICE DRIVER PAGE-SIZES ALLOWED STATE DOMAIN");
	for (size_t i = 0; i < r->list_devices->n_devices; i++)
		show_device(r->list_devices->devices[i], true);
	list_end();
	obj_end();
}

static void show_one_device(const void *msg, Iommud__V1__Response *r)
{
	(void)msg;
	if (!r->get_device->device)
		cli_broken_reply(r, "to get_device names no device");
	show_device(r->get_device->device, false);
}

const struct cmd_entry cmd_devices_entry = {
	.name = "devices",
	.summary = "Lists the devices iommud manages.",
	.help = devices_help,
	.examples = "  iommuctl devices\n"
		    "  iommuctl --json devices | jq -r '.devices[] | select(.allowed) | .name'\n",
	.method = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES,
	.show = show_devices,
};

const struct cmd_entry cmd_device_entry = {
	.name = "device",
	.operands = "DEVICE",
	.summary = "Shows one device in detail, with its reserved IOVA ranges.",
	.help = device_help,
	.examples = "  iommuctl device 0000:00:04.0\n",
	.method = IOMMUD__V1__REQUEST__METHOD_GET_DEVICE,
	.fields = "name",
	.show = show_one_device,
};
