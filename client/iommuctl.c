/* SPDX-License-Identifier: MIT */
/*
 * iommuctl: iommud from the command line, built on libiommuctl. One command per run, for
 * people (aligned tables) and scripts (--json: one JSON object on standard output).
 */
#define _GNU_SOURCE /* vasprintf, open_memstream */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "iommuctl.h"

enum exit_code {
	EXIT_REFUSED = 1,
	EXIT_USAGE = 2,
	EXIT_TRANSPORT = 3,
	EXIT_LOCAL = 4,
};

struct command {
	const char *name;    /* "map", or two words: "domain alloc" */
	const char *args;    /* the synopsis after the name */
	const char *summary; /* its line in iommuctl --help */
	const char *help;    /* description */
	const char *options; /* lines of "  -x, --option  what it does", but --help */
	const char *examples;
	void (*run)(const struct command *cmd, int argc, char **argv);
};

static struct {
	const char *socket;
	const char *lease;
	bool json;
	struct iommuctl *c;
	Iommud__V1__HelloReply *hello;
} g;

static const char exit_status_text[] =
	"Exit status:\n"
	"  0  success\n"
	"  1  iommud refused the request; standard error says why, as\n"
	"     \"iommuctl: CODE: the daemon's message\"\n"
	"  2  usage error: an unknown command or option, or a wrong argument\n"
	"  3  iommud cannot be reached, or the connection to it failed\n"
	"  4  a local failure, such as a file that cannot be opened\n";

/* ---- failures ------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3), noreturn)) static void usage_error(const struct command *cmd,
									const char *fmt, ...)
{
	const char *name = cmd ? cmd->name : "";
	const char *sep = cmd ? " " : "";
	va_list ap;

	fprintf(stderr, "iommuctl%s%s: ", sep, name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'iommuctl%s%s --help'.\n", sep, name);
	exit(EXIT_USAGE);
}

__attribute__((format(printf, 1, 2), noreturn)) static void local_error(const char *fmt, ...)
{
	va_list ap;

	fputs("iommuctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_LOCAL);
}

/* Passes a library call's result through, or reports its failure and exits. */
static int check(int err)
{
	Iommud__V1__Code code = iommuctl_last_code(g.c);

	if (err >= 0)
		return err;
	if (code != IOMMUD__V1__CODE__CODE_OK) {
		fprintf(stderr, "iommuctl: %s: %s\n", iommuctl_code_name(code),
			iommuctl_last_error(g.c));
		exit(EXIT_REFUSED);
	}
	fprintf(stderr, "iommuctl: %s\n", iommuctl_last_error(g.c));
	exit(EXIT_TRANSPORT);
}

/* ---- the daemon ----------------------------------------------------------------------- */

/* Every command says Hello first: it picks the session of --lease, and hello shows the reply. */
static void connect_daemon(void)
{
	if (iommuctl_connect(g.socket, &g.c) < 0) {
		fprintf(stderr, "iommuctl: %s\n", iommuctl_last_error(NULL));
		exit(EXIT_TRANSPORT);
	}
	check(iommuctl_hello(g.c, "iommuctl", g.lease, &g.hello));
}

/* Calls a method whose request message is msg. */
static Iommud__V1__Response *call(Iommud__V1__Request__MethodCase method, void *msg)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	req.method_case = method;
	/* Every member of the oneof is a message pointer in the same place; the case says which. */
	req.hello = msg;
	check(iommuctl_call(g.c, &req, NULL, 0, &resp, NULL, 0, NULL));
	return resp;
}

/* A reply that breaks the protocol: nothing sensible can follow it. */
__attribute__((noreturn)) static void broken_reply(Iommud__V1__Response *r, const char *what)
{
	iommuctl_response_free(r);
	fprintf(stderr, "iommuctl: iommud's reply %s; the daemon is broken\n", what);
	exit(EXIT_TRANSPORT);
}

/* ---- values --------------------------------------------------------------------------- */

/* A number in decimal or 0x hex, with an optional K, M, G or T (binary) suffix when sized. */
static bool parse_u64(const char *s, bool sized, uint64_t *out)
{
	static const char suffixes[] = "KMGT";
	bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
	unsigned long long v;
	const char *unit;
	char *end;

	/* strtoull would take a sign or leading blanks too. */
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, hex ? 16 : 10);
	if (errno || end == s)
		return false;
	if (sized && *end && (unit = strchr(suffixes, *end & ~0x20)) && !end[1]) {
		unsigned shift = 10 * (unsigned)(unit - suffixes + 1);

		if (v > UINT64_MAX >> shift)
			return false;
		v <<= shift;
		end++;
	}
	*out = v;
	return !*end;
}

static uint64_t arg_size(const struct command *cmd, const char *what, const char *s)
{
	uint64_t v;

	if (!parse_u64(s, true, &v))
		usage_error(cmd,
			    "%s '%s' is not a size: give a number, in decimal or 0x hex, with an "
			    "optional K, M, G or T suffix",
			    what, s);
	return v;
}

static uint32_t arg_domain(const struct command *cmd, const char *s)
{
	uint64_t v;

	if (!parse_u64(s, false, &v) || v > UINT32_MAX)
		usage_error(cmd, "'%s' is not a domain id; 'iommuctl domains' lists them", s);
	return (uint32_t)v;
}

/* Exact while that stays short, so what is shown can be given back (2M, 12K, 4097); else to
 * a tenth of the largest unit (255.9T). */
static const char *fmt_size(char buf[24], uint64_t v)
{
	static const char *const units[] = {"", "K", "M", "G", "T", "P", "E"};
	uint64_t m = v;
	int e = 0, t = 0;

	while (e < 6 && m && !(m & 1023)) {
		m >>= 10;
		e++;
	}
	while (t < 6 && v >> (10 * (t + 1)))
		t++;
	if (m < 10000)
		snprintf(buf, 24, "%" PRIu64 "%s", m, units[e]);
	else
		snprintf(buf, 24, "%.1f%s", (double)v / (double)(1ull << (10 * t)), units[t]);
	return buf;
}

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

static const char *fmt_prot(uint32_t prot)
{
	static const char *const names[] = {"--", "r-", "-w", "rw"};

	return names[prot & 3];
}

static const char *domain_type_name(Iommud__V1__DomainType type)
{
	static const char *const names[] = {"unspecified", "blocked", "identity", "paging",
					    "nested"};

	return (unsigned)type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

/* ---- output --------------------------------------------------------------------------- */

/*
 * Commands describe what they show once, as fields, lists and objects; the output takes the
 * form asked for. Text: "key  value" lines, and lists as aligned tables. JSON: one object,
 * lists as arrays of objects, numbers as numbers.
 */
enum kind {
	NUM,
	HEX,  /* an address: 0x... in text */
	SIZE, /* bytes: exact K/M/G in text */
	BOOL,
	STR,
	TEXT_ONLY = 16, /* flags: a field of one form only */
	JSON_ONLY = 32,
};

struct table {
	size_t ncols, ncells;
	char **cells;
};

static struct {
	int depth;
	bool comma[8];
	struct table *table; /* the text table of the current list, if any */
	int skip;	     /* text: depth of lists nested in a table row, which are left out */
	bool fields;	     /* text: "key  value" lines were printed, so a table needs a gap */
} out;

/* Invalid UTF-8 (a cgroup name may hold any bytes) becomes U+FFFD, so the output stays JSON. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n = *s >= 0xf0 ? 4 : *s >= 0xe0 ? 3 : 2;
	unsigned char lo = 0x80, hi = 0xbf;

	if (*s < 0xc2 || *s > 0xf4)
		return 0;
	if (*s == 0xe0)
		lo = 0xa0;
	else if (*s == 0xed)
		hi = 0x9f;
	else if (*s == 0xf0)
		lo = 0x90;
	else if (*s == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

static void js_string(const char *str)
{
	static const char plain[] = "\"\\\b\f\n\r\t", escaped[] = "\"\\bfnrt";
	const unsigned char *s = (const unsigned char *)str;
	const char *special;
	size_t n;

	putchar('"');
	while (*s) {
		if ((special = strchr(plain, *s))) {
			printf("\\%c", escaped[special - plain]);
			s++;
		} else if (*s < 0x20) {
			printf("\\u%04x", *s++);
		} else if (*s < 0x80) {
			putchar(*s++);
		} else if ((n = utf8_len(s))) {
			fwrite(s, 1, n, stdout);
			s += n;
		} else {
			fputs("\\ufffd", stdout);
			s++;
		}
	}
	putchar('"');
}

static void js_key(const char *key)
{
	if (out.comma[out.depth])
		putchar(',');
	out.comma[out.depth] = true;
	if (key) {
		js_string(key);
		putchar(':');
	}
}

static void js_open(const char *key, char bracket)
{
	js_key(key);
	putchar(bracket);
	out.comma[++out.depth] = false;
}

static void js_close(char bracket)
{
	putchar(bracket);
	if (--out.depth == 0)
		putchar('\n');
}

__attribute__((format(printf, 2, 3))) static void cell(struct table *t, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	t->cells = realloc(t->cells, (t->ncells + 1) * sizeof(*t->cells));
	if (n < 0 || !t->cells)
		local_error("out of memory");
	t->cells[t->ncells++] = s;
}

/* Prints and frees the table: columns as wide as their widest cell, two spaces apart. */
static void table_print(struct table *t)
{
	size_t width[16] = {};

	for (size_t i = 0; i < t->ncells; i++) {
		size_t len = strlen(t->cells[i]);

		if (len > width[i % t->ncols])
			width[i % t->ncols] = len;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		bool last = i % t->ncols == t->ncols - 1;

		printf("%-*s%s", last ? 0 : (int)width[i % t->ncols], t->cells[i],
		       last ? "\n" : "  ");
		free(t->cells[i]);
	}
	free(t->cells);
	free(t);
}

/* The whole output, or an object inside it (text shows its fields among the others). */
static void obj_begin(const char *key)
{
	if (g.json)
		js_open(key, '{');
}

static void obj_end(void)
{
	if (g.json)
		js_close('}');
}

/* A list; header names the text table's columns, separated by spaces. */
static void list_begin(const char *key, const char *header)
{
	if (g.json) {
		js_open(key, '[');
	} else if (out.table || out.skip) {
		out.skip++;
	} else {
		if (out.fields)
			putchar('\n');
		out.table = calloc(1, sizeof(*out.table));
		if (!out.table)
			local_error("out of memory");
		for (const char *h = header; *h; h += strcspn(h, " "), h += *h == ' ') {
			cell(out.table, "%.*s", (int)strcspn(h, " "), h);
			out.table->ncols++;
		}
	}
}

static void list_end(void)
{
	if (g.json) {
		js_close(']');
	} else if (out.skip) {
		out.skip--;
	} else {
		table_print(out.table);
		out.table = NULL;
	}
}

/* One field: v for the numeric kinds, s for STR; s also replaces the text of the others. */
static void field(const char *key, int kind, uint64_t v, const char *s)
{
	char buf[24], label[32];

	if (g.json) {
		if (kind & TEXT_ONLY)
			return;
		js_key(key);
		if ((kind & 15) == STR)
			js_string(s);
		else if ((kind & 15) == BOOL)
			fputs(v ? "true" : "false", stdout);
		else
			printf("%" PRIu64, v);
		return;
	}
	if (kind & JSON_ONLY || out.skip)
		return;
	if (s && !*s) {
		s = "-";
	} else if (!s) {
		if ((kind & 15) == HEX)
			snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
		else if ((kind & 15) == SIZE)
			fmt_size(buf, v);
		else if ((kind & 15) == BOOL)
			strcpy(buf, v ? "yes" : "no");
		else
			snprintf(buf, sizeof(buf), "%" PRIu64, v);
		s = buf;
	}
	if (out.table) {
		cell(out.table, "%s", s);
		return;
	}
	snprintf(label, sizeof(label), "%s", key);
	for (char *u = label; (u = strchr(u, '_'));)
		*u = ' ';
	printf("%-20s %s\n", label, s);
	out.fields = true;
}

/* A list of strings: a JSON array, or one text field with the items separated by commas. */
static void field_strings(const char *key, char *const *items, size_t n)
{
	char *s = NULL;
	size_t len;
	FILE *f;

	if (g.json) {
		js_open(key, '[');
		for (size_t i = 0; i < n; i++) {
			js_key(NULL);
			js_string(items[i]);
		}
		js_close(']');
		return;
	}
	f = open_memstream(&s, &len);
	if (!f)
		local_error("out of memory");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%s", i ? "," : "", items[i]);
	if (fclose(f))
		local_error("out of memory");
	field(key, STR, 0, s);
	free(s);
}

/* ---- options -------------------------------------------------------------------------- */

static void show_help(const struct command *cmd);

/* The cases every option loop shares: a command's --help, --json where a person naturally
 * writes it (after the command: "iommuctl devices --json"), and mistakes. */
static void other_option(const struct command *cmd, int ch, char **argv)
{
	if (ch == 'h' && cmd)
		show_help(cmd);
	if (cmd && ch == '?' && !optopt && strcmp(argv[optind - 1], "--json") == 0) {
		g.json = true;
		return;
	}
	if (ch == ':')
		usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
	if (optopt && optopt != ':')
		usage_error(cmd, "unknown option '-%c'", optopt);
	usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

/* Checks that the arguments after the options are n, named names, and returns them. */
static char **positionals(const struct command *cmd, int argc, char **argv, int n,
			  const char *names)
{
	int got = argc - optind;

	if (got != n)
		usage_error(cmd, "expects %s, not %d argument%s", n ? names : "no arguments", got,
			    got == 1 ? "" : "s");
	return argv + optind;
}

static char **no_options(const struct command *cmd, int argc, char **argv, int n, const char *names)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {}};
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1)
		other_option(cmd, ch, argv);
	return positionals(cmd, argc, argv, n, names);
}

/* ---- commands ------------------------------------------------------------------------- */

static void show_quota(const Iommud__V1__Quota *q)
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
	obj_end();
}

static void cmd_hello(const struct command *cmd, int argc, char **argv)
{
	const Iommud__V1__HelloReply *h;

	no_options(cmd, argc, argv, 0, NULL);
	connect_daemon();
	h = g.hello;
	obj_begin(NULL);
	field("daemon_version", STR, 0, h->daemon_version);
	field("protocol_version", NUM, h->protocol_version, NULL);
	field("backend", STR, 0, h->backend_name);
	field("uid", NUM, h->uid, NULL);
	field("gid", NUM, h->gid, NULL);
	field("pid", NUM, h->pid, NULL);
	field("cgroup", STR, 0, h->cgroup);
	field("lease", STR, 0, *h->lease || g.json ? h->lease : "- (the anonymous session)");
	field_strings("permissions", h->permissions, h->n_permissions);
	field_strings("capabilities", h->capabilities, h->n_capabilities);
	field("max_message_bytes", NUM, h->max_message_bytes, NULL);
	field("max_fds_per_message", NUM, h->max_fds_per_message, NULL);
	show_quota(h->quota);
	obj_end();
}

/* In the devices table only the fields that fit a line show; --json and 'device' show all. */
static void show_device(const Iommud__V1__Device *d, bool table)
{
	int detail = table ? JSON_ONLY : 0;
	char ids[16], sizes[160];

	snprintf(ids, sizeof(ids), "%04x:%04x", d->vendor, d->device);
	obj_begin(NULL);
	field("name", STR, 0, d->name);
	field("group", NUM, d->group, NULL);
	field("vendor:device", STR | TEXT_ONLY, 0, ids);
	field("vendor", NUM | JSON_ONLY, d->vendor, NULL);
	field("device", NUM | JSON_ONLY, d->device, NULL);
	field("driver", STR, 0, d->driver);
	if (d->hw) {
		field("page_sizes", NUM, d->hw->page_sizes,
		      fmt_page_sizes(sizes, d->hw->page_sizes));
		field("aperture_start", HEX | detail, d->hw->aperture_start, NULL);
		field("aperture_last", HEX | detail, d->hw->aperture_last, NULL);
		field("dirty_tracking", BOOL | detail, d->hw->dirty_tracking, NULL);
		field("nesting", BOOL | detail, d->hw->nesting, NULL);
		field("pasid_bits", NUM | detail, d->hw->pasid_bits, NULL);
		field("hw_type", NUM | detail, d->hw->hw_type, NULL);
	} else if (table) {
		field("page_sizes", NUM | TEXT_ONLY, 0, "");
	}
	field("allowed", BOOL, d->allowed, NULL);
	field("bound", BOOL | detail, d->bound, NULL);
	field("domain_id", NUM, d->domain_id, d->domain_id ? NULL : "");
	list_begin("reserved", "RESERVED-START LAST SIZE");
	for (size_t i = 0; i < d->n_reserved; i++) {
		const Iommud__V1__IovaRange *r = d->reserved[i];

		obj_begin(NULL);
		field("start", HEX, r->start, NULL);
		field("last", HEX, r->last, NULL);
		field("size", SIZE | TEXT_ONLY, r->last - r->start + 1, NULL);
		obj_end();
	}
	list_end();
	obj_end();
}

static void cmd_devices(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__ListDevicesRequest msg = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Response *r;

	no_options(cmd, argc, argv, 0, NULL);
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES, &msg);
	obj_begin(NULL);
	list_begin("devices", "NAME GROUP VENDOR:DEVICE DRIVER PAGE-SIZES ALLOWED DOMAIN");
	for (size_t i = 0; i < r->list_devices->n_devices; i++)
		show_device(r->list_devices->devices[i], true);
	list_end();
	obj_end();
	iommuctl_response_free(r);
}

static void cmd_device(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__GetDeviceRequest msg = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;
	Iommud__V1__Response *r;

	msg.name = no_options(cmd, argc, argv, 1, "DEVICE")[0];
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_GET_DEVICE, &msg);
	if (!r->get_device->device)
		broken_reply(r, "to GetDevice names no device");
	show_device(r->get_device->device, false);
	iommuctl_response_free(r);
}

static void cmd_domains(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__ListDomainsRequest msg = IOMMUD__V1__LIST_DOMAINS_REQUEST__INIT;
	const Iommud__V1__ListDomainsReply *l;
	Iommud__V1__Response *r;

	no_options(cmd, argc, argv, 0, NULL);
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_LIST_DOMAINS, &msg);
	l = r->list_domains;
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
	iommuctl_response_free(r);
}
/* Commands that change state print nothing but what the daemon hands back; with --json, an
 * object holding that (empty when there is nothing). */
static void print_empty(void)
{
	if (g.json)
		puts("{}");
}

static void cmd_domain_alloc(const struct command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{"type", required_argument, NULL, 't'},
		{"dirty-tracking", no_argument, NULL, 'd'},
		{"nest-parent", no_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	enum iommuctl_domain_type type = IOMMUCTL_DOMAIN_PAGING;
	uint32_t flags = 0, id;
	const char *device;
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":ht:", opts, NULL)) != -1) {
		if (ch == 't' && !strcmp(optarg, "paging"))
			type = IOMMUCTL_DOMAIN_PAGING;
		else if (ch == 't' && !strcmp(optarg, "blocked"))
			type = IOMMUCTL_DOMAIN_BLOCKED;
		else if (ch == 't' && !strcmp(optarg, "identity"))
			type = IOMMUCTL_DOMAIN_IDENTITY;
		else if (ch == 't')
			usage_error(cmd,
				    "unknown domain type '%s'; give paging, blocked or identity",
				    optarg);
		else if (ch == 'd')
			flags |= IOMMUCTL_DOMAIN_DIRTY_TRACKING;
		else if (ch == 'n')
			flags |= IOMMUCTL_DOMAIN_NEST_PARENT;
		else
			other_option(cmd, ch, argv);
	}
	device = positionals(cmd, argc, argv, 1, "DEVICE")[0];
	connect_daemon();
	check(iommuctl_alloc_domain(g.c, device, type, flags, &id));
	if (g.json)
		printf("{\"domain_id\":%u}\n", id);
	else
		printf("%u\n", id);
}

static void cmd_domain_free(const struct command *cmd, int argc, char **argv)
{
	uint32_t id = arg_domain(cmd, no_options(cmd, argc, argv, 1, "ID")[0]);

	connect_daemon();
	check(iommuctl_free_domain(g.c, id));
	print_empty();
}

static void cmd_attach(const struct command *cmd, int argc, char **argv)
{
	char **args = no_options(cmd, argc, argv, 2, "DEVICE DOMAIN");
	uint32_t id = arg_domain(cmd, args[1]);

	connect_daemon();
	check(iommuctl_attach(g.c, args[0], id));
	print_empty();
}

static void print_old_domain(uint32_t old)
{
	if (g.json)
		printf("{\"old_domain_id\":%u}\n", old);
	else if (old)
		printf("%u\n", old);
}

static void cmd_replace(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__ReplaceDomainRequest msg = IOMMUD__V1__REPLACE_DOMAIN_REQUEST__INIT;
	char **args = no_options(cmd, argc, argv, 2, "DEVICE DOMAIN");
	Iommud__V1__Response *r;

	msg.device = args[0];
	msg.domain_id = arg_domain(cmd, args[1]);
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN, &msg);
	print_old_domain(r->replace_domain->old_domain_id);
	iommuctl_response_free(r);
}

static void cmd_detach(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__DetachDeviceRequest msg = IOMMUD__V1__DETACH_DEVICE_REQUEST__INIT;
	Iommud__V1__Response *r;

	msg.device = no_options(cmd, argc, argv, 1, "DEVICE")[0];
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_DETACH_DEVICE, &msg);
	print_old_domain(r->detach_device->old_domain_id);
	iommuctl_response_free(r);
}

static void cmd_map(const struct command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{"file", required_argument, NULL, 'f'},
		{"memfd", required_argument, NULL, 'm'},
		{"offset", required_argument, NULL, 'o'},
		{"length", required_argument, NULL, 'l'},
		{"iova", required_argument, NULL, 'i'},
		{"align", required_argument, NULL, 'a'},
		{"prot", required_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	const char *file = NULL;
	uint64_t memfd_size = 0, offset = 0, length = 0, iova = 0, align = 0, size;
	bool memfd = false, have_length = false, fixed = false;
	uint32_t prot = IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, domain;
	struct stat st;
	int ch, fd;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":hf:m:o:l:i:a:p:", opts, NULL)) != -1) {
		if (ch == 'f') {
			file = optarg;
		} else if (ch == 'm') {
			memfd = true;
			memfd_size = arg_size(cmd, "--memfd", optarg);
		} else if (ch == 'o') {
			offset = arg_size(cmd, "--offset", optarg);
		} else if (ch == 'l') {
			have_length = true;
			length = arg_size(cmd, "--length", optarg);
		} else if (ch == 'i') {
			fixed = true;
			iova = arg_size(cmd, "--iova", optarg);
		} else if (ch == 'a') {
			align = arg_size(cmd, "--align", optarg);
		} else if (ch == 'p') {
			prot = (strchr(optarg, 'r') ? IOMMUCTL_PROT_READ : 0) |
			       (strchr(optarg, 'w') ? IOMMUCTL_PROT_WRITE : 0);
			if (!prot || optarg[strspn(optarg, "rw")] || strlen(optarg) > 2)
				usage_error(cmd, "--prot '%s' is not r, w or rw", optarg);
		} else {
			other_option(cmd, ch, argv);
		}
	}
	domain = arg_domain(cmd, positionals(cmd, argc, argv, 1, "DOMAIN")[0]);
	if (!file == !memfd)
		usage_error(cmd, "give the memory to map: either --file PATH or --memfd SIZE");
	if (fixed && align)
		usage_error(cmd, "--align applies to an IOVA the daemon picks; drop it or --iova");

	if (memfd) {
		fd = iommuctl_memfd("iommuctl", memfd_size);
		if (fd < 0)
			local_error("%s", iommuctl_last_error(NULL));
		size = memfd_size;
	} else {
		/* The daemon pins the pages with the access the fd allows, so ask for no more. */
		fd = open(file, (prot == IOMMUCTL_PROT_READ ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (fd < 0)
			local_error("cannot open %s %s: %s", file,
				    prot == IOMMUCTL_PROT_READ ? "for reading"
							       : "for reading and writing",
				    strerror(errno));
		if (fstat(fd, &st) < 0)
			local_error("cannot stat %s: %s", file, strerror(errno));
		size = (uint64_t)st.st_size;
	}
	if (!have_length) {
		if (offset >= size)
			usage_error(cmd,
				    "--offset %" PRIu64 " leaves nothing of the %" PRIu64
				    "-byte file to map; give a smaller --offset or a --length",
				    offset, size);
		length = size - offset;
	}

	connect_daemon();
	check(iommuctl_map_fd(g.c, domain, fd, offset, length, prot, fixed, align, &iova));
	close(fd);
	if (g.json)
		printf("{\"domain_id\":%u,\"iova\":%" PRIu64 ",\"length\":%" PRIu64
		       ",\"prot\":\"%s\"}\n",
		       domain, iova, length, fmt_prot(prot));
	else
		printf("0x%" PRIx64 "\n", iova);
}

static void cmd_unmap(const struct command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{"iova", required_argument, NULL, 'i'},
		{"length", required_argument, NULL, 'l'},
		{"all", no_argument, NULL, 'A'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	Iommud__V1__UnmapRequest unmap = IOMMUD__V1__UNMAP_REQUEST__INIT;
	Iommud__V1__UnmapAllRequest unmap_all = IOMMUD__V1__UNMAP_ALL_REQUEST__INIT;
	bool all = false, have_iova = false, have_length = false;
	Iommud__V1__Response *r;
	uint64_t bytes;
	uint32_t count;
	char size[24];
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":hi:l:", opts, NULL)) != -1) {
		if (ch == 'i') {
			have_iova = true;
			unmap.iova = arg_size(cmd, "--iova", optarg);
		} else if (ch == 'l') {
			have_length = true;
			unmap.length = arg_size(cmd, "--length", optarg);
		} else if (ch == 'A') {
			all = true;
		} else {
			other_option(cmd, ch, argv);
		}
	}
	unmap.domain_id = arg_domain(cmd, positionals(cmd, argc, argv, 1, "DOMAIN")[0]);
	unmap_all.domain_id = unmap.domain_id;
	if (all ? have_iova || have_length : !have_iova || !have_length)
		usage_error(cmd, "give either --iova IOVA --length N, or --all");

	connect_daemon();
	if (all) {
		r = call(IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL, &unmap_all);
		bytes = r->unmap_all->unmapped_bytes;
		count = r->unmap_all->unmapped_count;
	} else {
		r = call(IOMMUD__V1__REQUEST__METHOD_UNMAP, &unmap);
		bytes = r->unmap->unmapped_bytes;
		count = r->unmap->unmapped_count;
	}
	iommuctl_response_free(r);
	if (g.json)
		printf("{\"unmapped_bytes\":%" PRIu64 ",\"unmapped_count\":%u}\n", bytes, count);
	else
		printf("unmapped %u mapping%s (%s)\n", count, count == 1 ? "" : "s",
		       fmt_size(size, bytes));
}

static void cmd_mappings(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__ListMappingsRequest msg = IOMMUD__V1__LIST_MAPPINGS_REQUEST__INIT;
	const Iommud__V1__ListMappingsReply *l;
	Iommud__V1__Response *r;
	bool more;

	msg.domain_id = arg_domain(cmd, no_options(cmd, argc, argv, 1, "DOMAIN")[0]);
	connect_daemon();
	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, msg.domain_id, NULL);
	list_begin("mappings", "IOVA LAST LENGTH PROT OFFSET");
	do {
		r = call(IOMMUD__V1__REQUEST__METHOD_LIST_MAPPINGS, &msg);
		l = r->list_mappings;
		for (size_t i = 0; i < l->n_mappings; i++) {
			const Iommud__V1__Mapping *m = l->mappings[i];

			obj_begin(NULL);
			field("iova", HEX, m->iova, NULL);
			field("last", HEX | TEXT_ONLY, m->iova + m->length - 1, NULL);
			field("length", SIZE, m->length, NULL);
			field("prot", STR, 0, fmt_prot(m->prot));
			field("offset", HEX, m->offset, NULL);
			obj_end();
		}
		more = l->more;
		/* A page that does not move forward would have this loop ask for ever. */
		if (more && l->next_from <= msg.from)
			broken_reply(r, "to ListMappings does not move forward");
		msg.from = l->next_from;
		iommuctl_response_free(r);
	} while (more);
	list_end();
	obj_end();
}

static void show_range(uint64_t start, uint64_t last)
{
	/* The whole 64-bit space is one byte more than a uint64_t counts. */
	bool all = start == 0 && last == UINT64_MAX;

	obj_begin(NULL);
	field("start", HEX, start, NULL);
	field("last", HEX, last, NULL);
	field("size", SIZE | TEXT_ONLY, last - start + 1, all ? "16E" : NULL);
	obj_end();
}

static void cmd_ranges(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__GetIovaRangesRequest msg = IOMMUD__V1__GET_IOVA_RANGES_REQUEST__INIT;
	const Iommud__V1__GetIovaRangesReply *l;
	Iommud__V1__Response *r;

	msg.domain_id = arg_domain(cmd, no_options(cmd, argc, argv, 1, "DOMAIN")[0]);
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_GET_IOVA_RANGES, &msg);
	l = r->get_iova_ranges;
	obj_begin(NULL);
	field("domain_id", NUM | JSON_ONLY, msg.domain_id, NULL);
	list_begin("ranges", "START LAST SIZE");
	for (size_t i = 0; i < l->n_ranges; i++)
		show_range(l->ranges[i]->start, l->ranges[i]->last);
	list_end();
	obj_end();
	iommuctl_response_free(r);
}

static bool dirty_bit(const Iommud__V1__ReadDirtyReply *d, uint64_t page)
{
	return d->bitmap[page / 64] >> (page % 64) & 1;
}

static void show_dirty(const Iommud__V1__ReadDirtyRequest *q, const Iommud__V1__ReadDirtyReply *d)
{
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
	if (g.json) {
		js_open("bitmap", '[');
		for (size_t i = 0; i < d->n_bitmap; i++) {
			js_key(NULL);
			printf("%" PRIu64, d->bitmap[i]);
		}
		js_close(']');
	}
	/* Runs of dirty pages, which say more to a person than the bitmap does. */
	if (dirty || g.json) {
		list_begin("dirty", "DIRTY-START LAST SIZE");
		for (uint64_t p = 0, end; p < known; p = end + 1) {
			for (end = p; end + 1 < known && dirty_bit(d, end + 1) == dirty_bit(d, p);)
				end++;
			if (dirty_bit(d, p))
				show_range(q->iova + p * q->page_size,
					   q->iova + (end + 1) * q->page_size - 1);
		}
		list_end();
	}
	obj_end();
}

static void cmd_dirty(const struct command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{"enable", no_argument, NULL, 'e'},
		{"disable", no_argument, NULL, 'd'},
		{"read", no_argument, NULL, 'r'},
		{"iova", required_argument, NULL, 'i'},
		{"length", required_argument, NULL, 'l'},
		{"page-size", required_argument, NULL, 'P'},
		{"no-clear", no_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	Iommud__V1__SetDirtyTrackingRequest set = IOMMUD__V1__SET_DIRTY_TRACKING_REQUEST__INIT;
	Iommud__V1__ReadDirtyRequest read = IOMMUD__V1__READ_DIRTY_REQUEST__INIT;
	bool have_iova = false, have_length = false, read_options = false;
	Iommud__V1__Response *r;
	int ch, action = 0, actions = 0;

	read.page_size = 4096;
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":hedri:l:", opts, NULL)) != -1) {
		if (ch == 'e' || ch == 'd' || ch == 'r') {
			action = ch;
			actions++;
		} else if (ch == 'i') {
			have_iova = true;
			read.iova = arg_size(cmd, "--iova", optarg);
		} else if (ch == 'l') {
			have_length = true;
			read.length = arg_size(cmd, "--length", optarg);
		} else if (ch == 'P') {
			read_options = true;
			read.page_size = arg_size(cmd, "--page-size", optarg);
		} else if (ch == 'n') {
			read_options = true;
			read.no_clear = true;
		} else {
			other_option(cmd, ch, argv);
		}
	}
	read.domain_id = arg_domain(cmd, positionals(cmd, argc, argv, 1, "DOMAIN")[0]);
	set.domain_id = read.domain_id;
	if (actions != 1)
		usage_error(cmd, "give one of --enable, --disable and --read");
	if (action == 'r' && (!have_iova || !have_length))
		usage_error(cmd, "--read needs --iova IOVA and --length N: the range to read");
	if (action != 'r' && (have_iova || have_length || read_options))
		usage_error(cmd, "--iova, --length, --page-size and --no-clear go with --read");
	if (action == 'r' && (!read.page_size || read.page_size & (read.page_size - 1)))
		usage_error(cmd, "--page-size %" PRIu64 " is not a power of two", read.page_size);

	connect_daemon();
	if (action != 'r') {
		set.enable = action == 'e';
		iommuctl_response_free(call(IOMMUD__V1__REQUEST__METHOD_SET_DIRTY_TRACKING, &set));
		print_empty();
		return;
	}
	r = call(IOMMUD__V1__REQUEST__METHOD_READ_DIRTY, &read);
	show_dirty(&read, r->read_dirty);
	iommuctl_response_free(r);
}

static void cmd_stats(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__GetStatsRequest msg = IOMMUD__V1__GET_STATS_REQUEST__INIT;
	const Iommud__V1__GetStatsReply *s;
	Iommud__V1__Response *r;

	no_options(cmd, argc, argv, 0, NULL);
	connect_daemon();
	r = call(IOMMUD__V1__REQUEST__METHOD_GET_STATS, &msg);
	s = r->get_stats;
	obj_begin(NULL);
	field("uptime_seconds", NUM, s->uptime_seconds, NULL);
	field("connections", NUM, s->connections, NULL);
	field("tenants", NUM, s->tenants, NULL);
	field("sessions", NUM, s->sessions, NULL);
	field("rejected_packets", NUM, s->rejected_packets, NULL);
	show_quota(s->quota);
	list_begin("methods", "METHOD CALLS ERRORS");
	for (size_t i = 0; i < s->n_methods; i++) {
		obj_begin(NULL);
		field("method", STR, 0, s->methods[i]->method);
		field("calls", NUM, s->methods[i]->calls, NULL);
		field("errors", NUM, s->methods[i]->errors, NULL);
		obj_end();
	}
	list_end();
	obj_end();
	iommuctl_response_free(r);
}

static void cmd_lease_release(const struct command *cmd, int argc, char **argv)
{
	Iommud__V1__ReleaseLeaseRequest msg = IOMMUD__V1__RELEASE_LEASE_REQUEST__INIT;

	no_options(cmd, argc, argv, 0, NULL);
	if (!g.lease)
		usage_error(cmd, "name the lease to release with the global --lease NAME option, "
				 "as in 'iommuctl --lease NAME lease release'");
	connect_daemon();
	iommuctl_response_free(call(IOMMUD__V1__REQUEST__METHOD_RELEASE_LEASE, &msg));
	print_empty();
}

/* ---- the command table ---------------------------------------------------------------- */

#define SESSION_NOTE                                                                               \
	"Sessions: what a command creates belongs to its session. Without --lease that is the\n"   \
	"anonymous session of your user and cgroup, which iommud releases (unmapping, detaching\n" \
	"and freeing everything in it) when its last connection closes: usually when this\n"       \
	"iommuctl exits. To keep objects, give every command the same --lease NAME; they stay\n"   \
	"until 'iommuctl --lease NAME lease release'.\n"

static const struct command commands[] = {
	{"hello", "", "Shows who iommud takes you for and what you may do.",
	 "Says Hello to iommud and shows its reply: the daemon's version and protocol, the\n"
	 "backend (iommufd or emulated), the identity it sees (uid, gid, pid, cgroup), the\n"
	 "session (--lease), your permissions (read: list and query; write: everything), the\n"
	 "daemon's capabilities (map_file, dirty_tracking, nesting, open_device, map_batch), the\n"
	 "message limits, and your quota: domains, mappings and pinned bytes in use, each with\n"
	 "its limit from the configuration.\n",
	 "",
	 "  iommuctl hello\n"
	 "  iommuctl --json hello | jq -r '.permissions[]'\n",
	 cmd_hello},
	{"devices", "", "Lists the devices iommud manages.",
	 "Lists every device of the backend, as a table:\n"
	 "  NAME           PCI address (iommufd) or name in the topology (emulated)\n"
	 "  GROUP          IOMMU group; the devices of a group share one domain\n"
	 "  VENDOR:DEVICE  PCI ids, in hex\n"
	 "  DRIVER         the kernel driver bound to it\n"
	 "  PAGE-SIZES     the page sizes its IOMMU maps\n"
	 "  ALLOWED        whether the configuration lets you take it\n"
	 "  DOMAIN         the domain it is attached to in your session, or -\n"
	 "With --json, every device with all the fields 'iommuctl device' shows.\n",
	 "",
	 "  iommuctl devices\n"
	 "  iommuctl --json devices | jq -r '.devices[] | select(.allowed) | .name'\n",
	 cmd_devices},
	{"device", "DEVICE", "Shows one device in detail, with its reserved IOVA ranges.",
	 "Shows DEVICE: its group, PCI ids and driver, what its IOMMU can do (page sizes,\n"
	 "aperture, dirty tracking, nesting, PASID bits), whether you may take it, whether it is\n"
	 "bound in your session and the domain it is attached to there, and its reserved IOVA\n"
	 "ranges: addresses no mapping may use once it is attached (the MSI window among them).\n",
	 "", "  iommuctl device 0000:00:04.0\n", cmd_device},
	{"domains", "", "Lists the domains of your session.",
	 "Lists the domains of the session (see --lease), as a table: ID, TYPE (paging, blocked,\n"
	 "identity, nested), the DEVICE it was allocated for, how many MAPPINGS it has and how\n"
	 "many bytes they cover (MAPPED), and the devices ATTACHED to it.\n",
	 "", "  iommuctl --lease vm1 domains\n", cmd_domains},
	{"domain alloc",
	 "DEVICE [--type paging|blocked|identity]\n"
	 "           [--dirty-tracking] [--nest-parent]",
	 "Allocates a domain for a device.",
	 "Allocates a domain of the kind DEVICE's IOMMU provides, binding DEVICE into the\n"
	 "session if it is not yet, and prints the new domain's id (with --json,\n"
	 "{\"domain_id\": ID}). The domain is not attached: use 'iommuctl attach'.\n"
	 "\n" SESSION_NOTE,
	 "  -t, --type TYPE       paging (the default): IOVAs translated by page tables iommud\n"
	 "                        fills; blocked: every DMA faults; identity: IOVA = physical\n"
	 "                        address (not on the iommufd backend)\n"
	 "      --dirty-tracking  a paging domain that can record which pages devices wrote\n"
	 "                        (see 'iommuctl dirty')\n"
	 "      --nest-parent     a paging domain that can be the stage 2 of nested domains\n",
	 "  D=$(iommuctl --lease vm1 domain alloc 0000:00:04.0 --dirty-tracking)\n"
	 "  iommuctl --lease vm1 domain alloc emu0 --type blocked\n",
	 cmd_domain_alloc},
	{"domain free", "ID", "Frees a domain.",
	 "Frees domain ID of the session, with its mappings. Devices must be detached from it\n"
	 "first, and nested domains built on it freed.\n",
	 "", "  iommuctl --lease vm1 domain free 3\n", cmd_domain_free},
	{"attach", "DEVICE DOMAIN", "Attaches a detached device to a domain.",
	 "Attaches DEVICE to domain DOMAIN, so its DMA goes through the domain's translation.\n"
	 "DEVICE must not be attached already (use 'iommuctl replace' to move it). Its reserved\n"
	 "ranges and what lies outside its aperture become unusable in the domain, so the attach\n"
	 "fails if a mapping is there. The other devices of its IOMMU group follow it.\n",
	 "", "  iommuctl --lease vm1 attach 0000:00:04.0 3\n", cmd_attach},
	{"replace", "DEVICE DOMAIN", "Moves an attached device to another domain.",
	 "Moves DEVICE (and its IOMMU group) from the domain it is attached to into DOMAIN,\n"
	 "without a window in which its DMA is blocked, and prints the old domain's id (with\n"
	 "--json, {\"old_domain_id\": ID}).\n",
	 "", "  iommuctl --lease vm1 replace 0000:00:04.0 4\n", cmd_replace},
	{"detach", "DEVICE", "Detaches a device from its domain.",
	 "Detaches DEVICE (and its IOMMU group) from its domain, which blocks its DMA, and prints\n"
	 "the id of the domain it was attached to (with --json, {\"old_domain_id\": ID}).\n",
	 "", "  iommuctl --lease vm1 detach 0000:00:04.0\n", cmd_detach},
	{"map",
	 "DOMAIN (--file PATH [--offset N] | --memfd SIZE)\n"
	 "           [--length N] [--iova IOVA] [--align N] [--prot r|w|rw]",
	 "Maps memory of a file into a domain for device DMA.",
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
	 "the pages pinned meanwhile, so the file may be closed and, for a memfd, forgotten.\n",
	 "  -f, --file PATH   the memory: PATH, opened read-write (read-only with --prot r)\n"
	 "  -m, --memfd SIZE  the memory: a new zero-filled memfd of SIZE bytes, sealed against\n"
	 "                    shrinking (no one else holds it: for tests, and to reserve IOVA\n"
	 "                    space)\n"
	 "  -o, --offset N    where in the file the range starts (default 0)\n"
	 "  -l, --length N    how much to map (default: from the offset to the file's end)\n"
	 "  -i, --iova IOVA   map at IOVA; without it iommud picks a free IOVA\n"
	 "  -a, --align N     alignment of the IOVA iommud picks, a power of two (default: the\n"
	 "                    mapping's size, up to its largest page)\n"
	 "  -p, --prot PROT   what devices may do: r (read the memory), w (write it) or rw (the\n"
	 "                    default)\n",
	 "  iommuctl --lease vm1 map 3 --memfd 2M\n"
	 "  iommuctl --lease vm1 map 3 --file /dev/shm/guest-ram --offset 1G --length 512M \\\n"
	 "      --iova 0x40000000\n"
	 "  iommuctl --lease vm1 map 3 --file /dev/hugepages/buf --prot r --align 1G\n",
	 cmd_map},
	{"unmap", "DOMAIN (--iova IOVA --length N | --all)", "Removes mappings from a domain.",
	 "Removes every mapping of DOMAIN that lies inside [IOVA, IOVA+N), or all of them with\n"
	 "--all, and says how many and how many bytes (with --json, {\"unmapped_bytes\",\n"
	 "\"unmapped_count\"}). A mapping the range cuts through is an error, and then nothing\n"
	 "is removed.\n",
	 "  -i, --iova IOVA  start of the range\n"
	 "  -l, --length N   length of the range (sizes as in 'iommuctl map')\n"
	 "      --all        every mapping of the domain\n",
	 "  iommuctl --lease vm1 unmap 3 --iova 0x40000000 --length 512M\n"
	 "  iommuctl --lease vm1 unmap 3 --all\n",
	 cmd_unmap},
	{"mappings", "DOMAIN", "Lists the mappings of a domain.",
	 "Lists every mapping of DOMAIN in IOVA order (asking iommud page by page): its IOVA,\n"
	 "LAST address, LENGTH, PROT (r: devices read it, w: devices write it) and the OFFSET\n"
	 "in its file.\n",
	 "",
	 "  iommuctl --lease vm1 mappings 3\n"
	 "  iommuctl --lease vm1 --json mappings 3 | jq '.mappings | length'\n",
	 cmd_mappings},
	{"ranges", "DOMAIN", "Lists the IOVA ranges where mappings may go.",
	 "Lists the IOVA ranges of DOMAIN that mappings may use: the aperture of the attached\n"
	 "devices' IOMMUs, less their reserved ranges. Existing mappings are not subtracted.\n",
	 "", "  iommuctl --lease vm1 ranges 3\n", cmd_ranges},
	{"dirty",
	 "DOMAIN --enable | --disable\n"
	 "           | --read --iova IOVA --length N [--page-size N] [--no-clear]",
	 "Controls and reads dirty tracking.",
	 "Dirty tracking records which pages devices wrote, for live migration. It needs a domain\n"
	 "allocated with 'domain alloc --dirty-tracking'. --read shows how many pages are dirty\n"
	 "and the runs of dirty pages; with --json, also the bitmap (bit i%64 of word i/64 is\n"
	 "page i of the range).\n",
	 "  -e, --enable        start recording writes\n"
	 "  -d, --disable       stop recording writes\n"
	 "  -r, --read          show which pages of [IOVA, IOVA+N) devices wrote since the last\n"
	 "                      read, and clear their bits\n"
	 "  -i, --iova IOVA     with --read: start of the range\n"
	 "  -l, --length N      with --read: length of the range\n"
	 "      --page-size N   with --read: granularity of the bitmap (default 4K)\n"
	 "      --no-clear      with --read: leave the bits set\n",
	 "  iommuctl --lease vm1 dirty 3 --enable\n"
	 "  iommuctl --lease vm1 dirty 3 --read --iova 0x40000000 --length 1G\n",
	 cmd_dirty},
	{"stats", "", "Shows the daemon's counters.",
	 "Shows how long iommud has run, its connections, tenants and sessions, the packets it\n"
	 "rejected as malformed, your tenant's quota, and for each method how many calls it\n"
	 "answered and how many of them failed.\n",
	 "", "  iommuctl stats\n", cmd_stats},
	{"lease release", "", "Ends a named session.",
	 "Releases the session named by the global --lease option: once its last connection\n"
	 "closes (this one, when iommuctl exits, unless another program holds one), iommud\n"
	 "unmaps, detaches and frees everything in it.\n",
	 "", "  iommuctl --lease vm1 lease release\n", cmd_lease_release},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void show_help(const struct command *cmd)
{
	const char *o = cmd->options;
	/* --help goes in the column the command's other options are described in. */
	int column = *o ? (int)(strstr(o + 2, "  ") - o + strspn(strstr(o + 2, "  "), " ")) : 14;

	printf("Usage: iommuctl [GLOBAL OPTIONS] %s%s%s\n\n%s\n\n%s\nOptions:\n%s%-*sshow this "
	       "text\n\nExamples:\n%s\n%s",
	       cmd->name, *cmd->args ? " " : "", cmd->args, cmd->summary, cmd->help, o, column,
	       "  -h, --help", cmd->examples, exit_status_text);
	exit(0);
}

static void usage(void)
{
	printf("Usage: iommuctl [--socket PATH] [--json] [--lease NAME] COMMAND [ARGS]\n"
	       "       iommuctl COMMAND --help\n"
	       "\n"
	       "Asks iommud, the daemon that owns the machine's IOMMU domains, to list devices,\n"
	       "allocate domains, attach devices and map memory for their DMA.\n"
	       "\n"
	       "Commands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		printf("  %-14s %s\n", commands[i].name, commands[i].summary);
	printf("\n"
	       "Global options (before the command; --json may also follow it):\n"
	       "  -s, --socket PATH  iommud's socket (default: $IOMMUD_SOCKET, else %s)\n"
	       "  -j, --json         print one JSON object instead of text\n"
	       "  -l, --lease NAME   work in the named session NAME, which outlives iommuctl\n"
	       "  -h, --help         show this text\n"
	       "  -V, --version      show iommuctl's version\n"
	       "\n" SESSION_NOTE "\n"
	       "%s\n"
	       "Examples:\n"
	       "  iommuctl devices\n"
	       "  D=$(iommuctl --lease vm1 domain alloc emu0)\n"
	       "  iommuctl --lease vm1 attach emu0 $D\n"
	       "  iommuctl --lease vm1 map $D --memfd 2M\n"
	       "  iommuctl --lease vm1 lease release\n",
	       IOMMUCTL_DEFAULT_SOCKET, exit_status_text);
}

/* Finds the command at argv[0] (two words for "domain alloc"); *words says how many it took. */
static const struct command *find_command(int argc, char **argv, int *words)
{
	size_t len = strlen(argv[0]);
	bool group = false;

	for (size_t i = 0; i < NCOMMANDS; i++) {
		const char *name = commands[i].name;

		if (strncmp(name, argv[0], len) || (name[len] && name[len] != ' '))
			continue;
		if (!name[len]) {
			*words = 1;
			return &commands[i];
		}
		group = true;
		if (argc > 1 && !strcmp(name + len + 1, argv[1])) {
			*words = 2;
			return &commands[i];
		}
	}
	if (group && argc == 1)
		usage_error(NULL, "'%s' needs a subcommand", argv[0]);
	if (group)
		usage_error(NULL, "unknown command '%s %s'", argv[0], argv[1]);
	usage_error(NULL, "unknown command '%s'", argv[0]);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"socket", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
		{"lease", required_argument, NULL, 'l'},  {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},	  {},
	};
	const struct command *cmd;
	int ch, words;

	opterr = 0;
	/* "+": stop at the command, whose options are its own. */
	while ((ch = getopt_long(argc, argv, "+:s:jl:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			g.socket = optarg;
			break;
		case 'j':
			g.json = true;
			break;
		case 'l':
			if (!*optarg)
				usage_error(NULL, "--lease needs a name; leave it out for the "
						  "anonymous session");
			g.lease = optarg;
			break;
		case 'h':
			usage();
			return 0;
		case 'V':
			printf("iommuctl %s (protocol %d)\n", IOMMUCTL_VERSION,
			       IOMMUCTL_PROTOCOL_VERSION);
			return 0;
		default:
			other_option(NULL, ch, argv);
		}
	}
	if (optind == argc)
		usage_error(NULL, "no command given");
	cmd = find_command(argc - optind, argv + optind, &words);
	argv += optind + words - 1;
	argc -= optind + words - 1;
	cmd->run(cmd, argc, argv);
	if (g.hello)
		iommud__v1__hello_reply__free_unpacked(g.hello, NULL);
	iommuctl_close(g.c);
	return 0;
}
