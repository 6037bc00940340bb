/* SPDX-License-Identifier: MIT */
/* iommuctl map and unmap: memory in a domain's IOVA space, for device DMA. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "output.h"

static const char map_help[] =
	"Maps [offset, offset+length) of a file into paging domain DOMAIN and prints the IOVA\n"
	"devices use to reach it, in hex (with --json, {\"domain_id\", \"iova\", \"length\",\n"
	"\"prot\"}). The file's descriptor travels to iommud, which pins its pages: it must be a\n"
	"memfd sealed against shrinking, or a file on tmpfs or hugetlbfs. Offset, length and\n"
	"IOVA must be multiples of the page size. Sizes and addresses are decimal or 0x hex,\n"
	"with an optional K, M, G or T suffix.\n"
	"\n"
	"Sessions: the mapping belongs to the session. Without --lease that is the anonymous\n"
	"session, and the mapping vanishes when iommuctl exits (unless another program of your\n"
	"user and cgroup keeps the anonymous session open). With --lease NAME it stays in the\n"
	"named session, with its domain, until unmapped or the lease is released; iommud keeps\n"
	"the pages pinned meanwhile, so the file may be closed and, for a memfd, forgotten.\n";

static const char unmap_help[] =
	"Removes every mapping of DOMAIN that lies inside [IOVA, IOVA+N), or all of them with\n"
	"--all, and says how many and how many bytes (with --json, {\"unmapped_bytes\",\n"
	"\"unmapped_count\"}). A mapping the range cuts through is an error, and then nothing\n"
	"is removed.\n";

enum { MAP_FILE, MAP_MEMFD, MAP_OFFSET, MAP_LENGTH, MAP_IOVA, MAP_ALIGN, MAP_PROT };
static const struct cmd_option map_options[] = {
	[MAP_FILE] = {"file", 'f', OPT_STRING, "PATH",
		      "the memory: PATH, opened read-write (read-only with --prot r)"},
	[MAP_MEMFD] = {"memfd", 'm', OPT_SIZE, "SIZE",
		       "the memory: a new zero-filled memfd of SIZE bytes, sealed against\n"
		       "shrinking (no one else holds it: for tests, and to reserve IOVA\n"
		       "space)"},
	[MAP_OFFSET] = {"offset", 'o', OPT_SIZE, "N",
			"where in the file the range starts (default 0)"},
	[MAP_LENGTH] = {"length", 'l', OPT_SIZE, "N",
			"how much to map (default: from the offset to the file's end)"},
	[MAP_IOVA] = {"iova", 'i', OPT_SIZE, "IOVA",
		      "map at IOVA; without it iommud picks a free IOVA"},
	[MAP_ALIGN] = {"align", 'a', OPT_SIZE, "N",
		       "alignment of the IOVA iommud picks, a power of two (default: the\n"
		       "mapping's size, up to its largest page)"},
	[MAP_PROT] = {"prot", 'p', OPT_STRING, "PROT",
		      "what devices may do: r (read the memory), w (write it) or rw (the\n"
		      "default)"},
	{},
};

/* Opens the memory to map; *ret_size is the whole file's. */
static int open_memory(const struct cmd_args *args, uint32_t prot, uint64_t *ret_size)
{
	const char *file = args->opt[MAP_FILE].str;
	struct stat st;
	int fd;

	if (args->opt[MAP_MEMFD].count) {
		fd = iommuctl_memfd("iommuctl", args->opt[MAP_MEMFD].size);
		if (fd < 0)
			fail(EXIT_LOCAL, "%s", iommuctl_last_error(NULL));
		*ret_size = args->opt[MAP_MEMFD].size;
		return fd;
	}
	/* The daemon pins the pages with the access the fd allows, so ask for no more. */
	fd = open(file, (prot == IOMMUCTL_PROT_READ ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0)
		fail(EXIT_LOCAL, "cannot open %s %s: %s", file,
		     prot == IOMMUCTL_PROT_READ ? "for reading" : "for reading and writing",
		     strerror(errno));
	if (fstat(fd, &st) < 0)
		fail(EXIT_LOCAL, "cannot stat %s: %s", file, strerror(errno));
	*ret_size = (uint64_t)st.st_size;
	return fd;
}

/* The length to map: --length, or the file from the offset on. */
static uint64_t map_length(const struct cmd_entry *self, const struct cmd_args *args, uint64_t size)
{
	uint64_t offset = args->opt[MAP_OFFSET].size;

	if (args->opt[MAP_LENGTH].count)
		return args->opt[MAP_LENGTH].size;
	if (offset >= size)
		usage_error(self->name,
			    "--offset %" PRIu64 " leaves nothing of the %" PRIu64
			    "-byte file to map; give a smaller --offset or a --length",
			    offset, size);
	return size - offset;
}

static void cmd_map_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	uint32_t prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, domain;
	bool fixed = args->opt[MAP_IOVA].count;
	uint64_t iova = args->opt[MAP_IOVA].size, size, length;
	int fd;

	if (args->opt[MAP_PROT].count && !prot_from_name(args->opt[MAP_PROT].str, &prot))
		usage_error(self->name, "--prot '%s' is not r, w or rw", args->opt[MAP_PROT].str);
	domain = arg_domain(self, args->operands[0]);
	if (!args->opt[MAP_FILE].count == !args->opt[MAP_MEMFD].count)
		usage_error(self->name,
			    "give the memory to map: either --file PATH or --memfd SIZE");
	if (fixed && args->opt[MAP_ALIGN].size)
		usage_error(self->name,
			    "--align applies to an IOVA the daemon picks; drop it or --iova");
	fd = open_memory(args, prot, &size);
	length = map_length(self, args, size);
	cli_check(iommuctl_map_fd(cli_connection(), domain, fd, args->opt[MAP_OFFSET].size, length,
				  prot, fixed, args->opt[MAP_ALIGN].size, &iova));
	(void)close(fd);
	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, domain, NULL);
	field("iova", HEX | BARE, iova, NULL);
	field("length", NUM | JSON_ONLY, length, NULL);
	field("prot", STR | JSON_ONLY, 0, prot_name(prot));
	obj_end();
}

enum { UNMAP_IOVA, UNMAP_LENGTH, UNMAP_ALL };
static const struct cmd_option unmap_options[] = {
	[UNMAP_IOVA] = {"iova", 'i', OPT_SIZE, "IOVA", "start of the range"},
	[UNMAP_LENGTH] = {"length", 'l', OPT_SIZE, "N",
			  "length of the range (sizes as in 'iommuctl map')"},
	[UNMAP_ALL] = {"all", 0, OPT_FLAG, NULL, "every mapping of the domain"},
	{},
};

/* What Unmap or UnmapAll removed. */
static void show_unmapped(const void *msg, Iommud__V1__Response *r)
{
	bool all = r->result_case == IOMMUD__V1__RESPONSE__RESULT_UNMAP_ALL;
	uint64_t bytes = all ? r->unmap_all->unmapped_bytes : r->unmap->unmapped_bytes;
	uint32_t count = all ? r->unmap_all->unmapped_count : r->unmap->unmapped_count;
	char size[24];

	(void)msg;
	obj_begin(NULL);
	field("unmapped_bytes", NUM | JSON_ONLY, bytes, NULL);
	field("unmapped_count", NUM | JSON_ONLY, count, NULL);
	out_text("unmapped %u mapping%s (%s)\n", count, count == 1 ? "" : "s",
		 fmt_size(size, bytes));
	obj_end();
}

static void cmd_unmap_exec(const struct cmd_entry *self, const struct cmd_args *args)
{
	Iommud__V1__UnmapRequest unmap = IOMMUD__V1__UNMAP_REQUEST__INIT;
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	bool all = args->opt[UNMAP_ALL].count;
	bool range = args->opt[UNMAP_IOVA].count && args->opt[UNMAP_LENGTH].count;
	bool part = args->opt[UNMAP_IOVA].count || args->opt[UNMAP_LENGTH].count;

	unmap.domain_id = unmap_all.domain_id = arg_domain(self, args->operands[0]);
	unmap.iova = args->opt[UNMAP_IOVA].size;
	unmap.length = args->opt[UNMAP_LENGTH].size;
	if (all ? part : !range)
		usage_error(self->name, "give either --iova IOVA --length N, or --all");
	if (all)
		cli_show(IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL, &unmap_all, show_unmapped);
	else
		cli_show(IOMMUD__V1__REQUEST__METHOD_UNMAP, &unmap, show_unmapped);
}

const struct cmd_entry cmd_map_entry = {
	.name = "map",
	.operands = "DOMAIN",
	.usage = "DOMAIN (--file PATH [--offset N] | --memfd SIZE)\n"
		 "           [--length N] [--iova IOVA] [--align N] [--prot r|w|rw]",
	.summary = "Maps memory of a file into a domain for device DMA.",
	.help = map_help,
	.options = map_options,
	.examples = "  iommuctl --lease vm1 map 3 --memfd 2M\n"
		    "  iommuctl --lease vm1 map 3 --file /dev/shm/guest-ram --offset 1G --length "
		    "512M \\\n"
		    "      --iova 0x40000000\n"
		    "  iommuctl --lease vm1 map 3 --file /dev/hugepages/buf --prot r --align 1G\n",
	.exec = cmd_map_exec,
};

const struct cmd_entry cmd_unmap_entry = {
	.name = "unmap",
	.operands = "DOMAIN",
	.usage = "DOMAIN (--iova IOVA --length N | --all)",
	.summary = "Removes mappings from a domain.",
	.help = unmap_help,
	.options = unmap_options,
	.examples = "  iommuctl --lease vm1 unmap 3 --iova 0x40000000 --length 512M\n"
		    "  iommuctl --lease vm1 unmap 3 --all\n",
	.exec = cmd_unmap_exec,
};
