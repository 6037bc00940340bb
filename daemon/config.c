// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* sched_getaffinity */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kh/kh.h>
#include <names.h>

#include "log.h"

/* Quotas of a section that does not set them: enough for a VM with a few devices. */
#define DEFAULT_MAX_DOMAINS  64
#define DEFAULT_MAX_MAPPINGS 65536
/* An eighth of the maps ceiling the kernel's default vm.max_map_count gives (about 57 k), so
 * that one tenant cannot take every map, and still room for mappings from 7 k files. */
#define DEFAULT_MAX_MAPS   7168
#define DEFAULT_MAX_PINNED (16ull << 30)
/* Leases are kept with no connection open: a few per tenant serve a VM manager's VMs. */
#define DEFAULT_MAX_LEASES 16
/* 64 MiB of page tables map 32 GiB densely at 4 KiB leaves (8 KiB per 4 MiB), so only sparse
 * IOVA layouts, which cost up to 16 KiB per 4 KiB mapping, reach it. */
#define DEFAULT_MAX_PAGE_TABLES (64ull << 20)

/* The quotas of a section that does not set them. */
#define DEFAULT_QUOTAS                                                                             \
	.max_domains = DEFAULT_MAX_DOMAINS, .max_mappings = DEFAULT_MAX_MAPPINGS,                  \
	.max_maps = DEFAULT_MAX_MAPS, .max_pinned_bytes = DEFAULT_MAX_PINNED,                      \
	.max_leases = DEFAULT_MAX_LEASES, .max_page_table_bytes = DEFAULT_MAX_PAGE_TABLES

#define DEFAULT_MAX_CONNECTIONS 4096

/* reserved-connections not given: a sixty-fourth of max-connections, as the built-in 64 of
 * 4096. */
#define RESERVED_CONNECTIONS_AUTO UINT32_MAX

int parse_size(const char *text, uint64_t *ret_size)
{
	static const char suffixes[] = "KMGT";
	unsigned long long value;
	const char *unit;
	char *end;

	if (!text || !*text || *text == '-' || isspace((unsigned char)*text))
		return -EINVAL;
	errno = 0;
	value = strtoull(text, &end, 0);
	if (errno == ERANGE)
		return -ERANGE;
	if (end == text)
		return -EINVAL;
	if (*end) {
		unit = strchr(suffixes, toupper((unsigned char)*end));
		if (!unit || end[1])
			return -EINVAL;
		for (int shift = (int)(unit - suffixes) + 1; shift > 0; shift--) {
			if (value > UINT64_MAX / 1024)
				return -ERANGE;
			value *= 1024;
		}
	}
	*ret_size = value;
	return 0;
}

int config_defaults(struct config *cfg)
{
	*cfg = (struct config){
		.socket_path = strdup(IOMMUD_DEFAULT_SOCKET),
		.socket_mode = 0666,
		.backend = IOMMUD__V1__BACKEND__BACKEND_UNSPECIFIED,
		.log_level = LOG_INFO,
		.max_connections = DEFAULT_MAX_CONNECTIONS,
		.max_connections_per_uid = 256,
		.max_connections_per_tenant = 128,
		.reserved_connections = DEFAULT_MAX_CONNECTIONS / 64,
		.first_request_timeout = 10,
		.reader_rate = 1000,
		.reader_burst = 200,
		.probe_tier = IOMMUD__V1__PROBE_TIER__PROBE_TIER_FENTRY,
		.default_access = ACCESS_READ,
		.rules = calloc(1, sizeof(struct access_rule)),
		.n_rules = 1,
	};
	if (!cfg->socket_path || !cfg->rules)
		goto nomem;
	cfg->rules[0] = (struct access_rule){
		.id = 0,
		.section = strdup("uid 0 (built in)"),
		.access = ACCESS_WRITE,
		.devices = calloc(1, sizeof(char *)),
		.n_devices = 1,
		DEFAULT_QUOTAS,
		.stats_all = true,
		.delegate = true,
	};
	if (!cfg->rules[0].section || !cfg->rules[0].devices)
		goto nomem;
	cfg->rules[0].devices[0] = strdup("*");
	if (!cfg->rules[0].devices[0])
		goto nomem;
	return 0;
nomem:
	config_free(cfg);
	return -ENOMEM;
}

static void rule_free(struct access_rule *rule)
{
	for (size_t i = 0; i < rule->n_devices; i++)
		free(rule->devices[i]);
	free(rule->devices);
	free(rule->section);
}

void config_free(struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_rules; i++)
		rule_free(&cfg->rules[i]);
	free(cfg->rules);
	free(cfg->socket_path);
	free(cfg->topology);
	*cfg = (struct config){0};
}

struct load_state {
	struct config *cfg;
	bool replaced_builtin; /* the file's rules replace the built-in root rule */
	char *err;
	size_t err_len;
};

/* Reports a problem with the current line; inih then stops and gives the line number. */
static int bad(struct load_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct load_state *st, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(st->err, st->err_len, fmt, ap);
	va_end(ap);
	return 0;
}

const char *config_access_name(enum access access)
{
	return iommud_name(&iommud_access_names, (int)access);
}

/* Sets *ret_access from the value of the key, or says what the key takes. */
static int access_key(struct load_state *st, const char *key, const char *value,
		      enum access *ret_access)
{
	char choices[64];
	int level;

	if (iommud_value(&iommud_access_names, value, &level) < 0)
		return bad(st, "%s must be %s, not '%s'", key,
			   iommud_names_list(&iommud_access_names, choices, sizeof(choices)),
			   value);
	*ret_access = (enum access)level;
	return 1;
}

#define AUTO_BACKEND "auto"

/* kernel-helper's registry names the backends; the schema's value of one is its name with
 * dashes as underscores ("vfio-type1" is BACKEND_VFIO_TYPE1, "vfio_type1" in proto/names.h). */
int config_backend_value(const char *name, Iommud__V1__Backend *ret_backend)
{
	char schema_name[32];
	size_t i;
	int value;

	for (i = 0; name[i] && i + 1 < sizeof(schema_name); i++)
		schema_name[i] = name[i] == '-' ? '_' : name[i];
	schema_name[i] = '\0';
	if (name[i] || iommud_value(&iommud_backend_names, schema_name, &value) < 0)
		return -EINVAL;
	*ret_backend = (Iommud__V1__Backend)value;
	return 0;
}

int config_parse_backend(const char *name, Iommud__V1__Backend *ret_backend)
{
	Iommud__V1__Backend backend = IOMMUD__V1__BACKEND__BACKEND_UNSPECIFIED;
	size_t i = 0;

	if (strcmp(name, AUTO_BACKEND) != 0) {
		while (kh_backend_registered(i) && strcmp(name, kh_backend_registered(i)) != 0)
			i++;
		if (!kh_backend_registered(i) || config_backend_value(name, &backend) < 0)
			return -EINVAL;
	}
	*ret_backend = backend;
	return 0;
}

const char *config_backend_name(Iommud__V1__Backend backend)
{
	Iommud__V1__Backend value;

	for (size_t i = 0; kh_backend_registered(i); i++)
		if (config_backend_value(kh_backend_registered(i), &value) == 0 && value == backend)
			return kh_backend_registered(i);
	return AUTO_BACKEND;
}

const char *config_backend_choices(char *buf, size_t size)
{
	size_t used = (size_t)snprintf(buf, size, AUTO_BACKEND);

	for (size_t i = 0; kh_backend_registered(i) && used < size; i++)
		used += (size_t)snprintf(buf + used, size - used, ", %s", kh_backend_registered(i));
	return buf;
}

static int replace_string(char **slot, const char *value)
{
	char *copy = strdup(value);

	if (!copy)
		return -ENOMEM;
	free(*slot);
	*slot = copy;
	return 0;
}

/* Each [daemon] key: takes the value into st->cfg and returns 1, or 0 through bad(). */
static int key_socket(struct load_state *st, const char *value)
{
	if (value[0] != '/')
		return bad(st, "socket must be an absolute path, not '%s'", value);
	return replace_string(&st->cfg->socket_path, value) == 0 ? 1 : bad(st, "out of memory");
}

static int key_socket_mode(struct load_state *st, const char *value)
{
	char *end;
	unsigned long mode = strtoul(value, &end, 8);

	if (!*value || *end || mode > 07777)
		return bad(st, "socket-mode must be an octal mode such as 0660, not '%s'", value);
	st->cfg->socket_mode = (mode_t)mode;
	return 1;
}

static int key_backend(struct load_state *st, const char *value)
{
	char choices[64];

	if (config_parse_backend(value, &st->cfg->backend) < 0)
		return bad(st, "backend must be %s, not '%s'",
			   config_backend_choices(choices, sizeof(choices)), value);
	return 1;
}

static int key_topology(struct load_state *st, const char *value)
{
	return replace_string(&st->cfg->topology, value) == 0 ? 1 : bad(st, "out of memory");
}

static int key_log_level(struct load_state *st, const char *value)
{
	int level = log_parse_level(value);

	if (level < 0)
		return bad(st, "log-level must be err, warning, notice, info or debug, not '%s'",
			   value);
	st->cfg->log_level = level;
	return 1;
}

static int key_probe_tier(struct load_state *st, const char *value)
{
	char choices[64];
	int tier;

	if (iommud_value(&iommud_probe_tier_names, value, &tier) < 0)
		return bad(st, "probe-tier must be %s, not '%s'",
			   iommud_names_list(&iommud_probe_tier_names, choices, sizeof(choices)),
			   value);
	st->cfg->probe_tier = (Iommud__V1__ProbeTier)tier;
	return 1;
}

static int key_probe_driver_latency(struct load_state *st, const char *value)
{
	if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0)
		return bad(st, "probe-driver-latency must be yes or no, not '%s'", value);
	st->cfg->probe_driver_latency = strcmp(value, "yes") == 0;
	return 1;
}

static int key_threads(struct load_state *st, const char *value)
{
	uint64_t number;

	if (strcmp(value, "auto") == 0) {
		st->cfg->threads = 0;
		return 1;
	}
	if (parse_size(value, &number) < 0 || number < 1 || number > CONFIG_MAX_THREADS)
		return bad(st,
			   "threads must be auto (one per CPU the daemon may run on) or a number "
			   "from 1 to %d, not '%s'",
			   CONFIG_MAX_THREADS, value);
	st->cfg->threads = (unsigned)number;
	return 1;
}

unsigned config_threads(const struct config *cfg)
{
	cpu_set_t cpus;
	int n;

	if (cfg->threads)
		return cfg->threads;
	if (sched_getaffinity(0, sizeof(cpus), &cpus) < 0 || (n = CPU_COUNT(&cpus)) < 1)
		return 1;
	return n < CONFIG_MAX_THREADS ? (unsigned)n : CONFIG_MAX_THREADS;
}

/* A daemon-wide ceiling: a positive number, with K, M, G or T where it counts bytes. */
static int ceiling_key(struct load_state *st, const char *key, const char *value, uint64_t *slot)
{
	if (parse_size(value, slot) < 0 || *slot == 0)
		return bad(st, "%s must be a positive number (K, M, G or T for sizes), not '%s'",
			   key, value);
	return 1;
}

static int key_max_maps_total(struct load_state *st, const char *value)
{
	return ceiling_key(st, "max-maps-total", value, &st->cfg->max_maps_total);
}

static int key_max_leases_total(struct load_state *st, const char *value)
{
	return ceiling_key(st, "max-leases-total", value, &st->cfg->max_leases_total);
}

static int key_max_pinned_total(struct load_state *st, const char *value)
{
	return ceiling_key(st, "max-pinned-total", value, &st->cfg->max_pinned_total);
}

static const struct {
	const char *name;
	int (*take)(struct load_state *st, const char *value);
} daemon_keys[] = {
	{"socket", key_socket},
	{"socket-mode", key_socket_mode},
	{"backend", key_backend},
	{"topology", key_topology},
	{"log-level", key_log_level},
	{"probe-tier", key_probe_tier},
	{"probe-driver-latency", key_probe_driver_latency},
	{"max-maps-total", key_max_maps_total},
	{"max-leases-total", key_max_leases_total},
	{"max-pinned-total", key_max_pinned_total},
	{"threads", key_threads},
};

/* The [daemon] keys that take a plain number, and its range. */
static const struct {
	const char *name;
	size_t offset; /* of its unsigned in struct config */
	unsigned min, max;
	const char *unit; /* for messages: "a number of seconds" */
} number_keys[] = {
	{"max-connections", offsetof(struct config, max_connections), 1, 1000000, ""},
	{"max-connections-per-uid", offsetof(struct config, max_connections_per_uid), 1, 1000000,
	 ""},
	{"max-connections-per-tenant", offsetof(struct config, max_connections_per_tenant), 1,
	 1000000, ""},
	{"reserved-connections", offsetof(struct config, reserved_connections), 0, 999999, ""},
	{"first-request-timeout", offsetof(struct config, first_request_timeout), 0, 86400,
	 " of seconds"},
	{"idle-timeout", offsetof(struct config, idle_timeout), 0, 31536000, " of seconds"},
	{"reader-rate", offsetof(struct config, reader_rate), 0, 1000000, " of requests a second"},
	{"reader-burst", offsetof(struct config, reader_burst), 1, 1000000, " of requests"},
};

#define N_DAEMON_KEYS (sizeof(daemon_keys) / sizeof(daemon_keys[0]))
#define N_NUMBER_KEYS (sizeof(number_keys) / sizeof(number_keys[0]))

static int number_key(struct load_state *st, size_t i, const char *value)
{
	uint64_t number;

	if (parse_size(value, &number) < 0 || number < number_keys[i].min ||
	    number > number_keys[i].max)
		return bad(st, "%s must be a number%s from %u to %u, not '%s'", number_keys[i].name,
			   number_keys[i].unit, number_keys[i].min, number_keys[i].max, value);
	*(unsigned *)((char *)st->cfg + number_keys[i].offset) = (unsigned)number;
	return 1;
}

static int daemon_key(struct load_state *st, const char *name, const char *value)
{
	char known[512];
	size_t used = 0;

	for (size_t i = 0; i < N_DAEMON_KEYS; i++)
		if (strcmp(name, daemon_keys[i].name) == 0)
			return daemon_keys[i].take(st, value);
	for (size_t i = 0; i < N_NUMBER_KEYS; i++)
		if (strcmp(name, number_keys[i].name) == 0)
			return number_key(st, i, value);
	known[0] = '\0';
	for (size_t i = 0; i < N_DAEMON_KEYS + N_NUMBER_KEYS && used < sizeof(known); i++)
		used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
					 i < N_DAEMON_KEYS ? daemon_keys[i].name
							   : number_keys[i - N_DAEMON_KEYS].name);
	return bad(st, "unknown key '%s' in [daemon]; known: %s", name, known);
}

/* Splits a pattern list at spaces and commas. */
static int set_devices(struct access_rule *rule, const char *value)
{
	char *copy = strdup(value), *save = NULL;
	char **devices = NULL;
	size_t n = 0;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (char *word = strtok_r(copy, " \t,", &save); word;
	     word = strtok_r(NULL, " \t,", &save)) {
		char **grown = realloc(devices, (n + 1) * sizeof(*devices));

		if (!grown || !(grown[n] = strdup(word))) {
			devices = grown ? grown : devices;
			rc = -ENOMEM;
			break;
		}
		devices = grown;
		n++;
	}
	free(copy);
	for (size_t i = 0; i < rule->n_devices; i++)
		free(rule->devices[i]);
	free(rule->devices);
	rule->devices = devices;
	rule->n_devices = n;
	return rc;
}

static int rule_key(struct load_state *st, struct access_rule *rule, const char *name,
		    const char *value)
{
	uint64_t *quota = NULL;

	if (strcmp(name, "access") == 0)
		return access_key(st, name, value, &rule->access);
	if (strcmp(name, "devices") == 0)
		return set_devices(rule, value) == 0 ? 1 : bad(st, "out of memory");
	if (strcmp(name, "stats") == 0) {
		if (strcmp(value, "own") != 0 && strcmp(value, "all") != 0)
			return bad(st, "stats must be own or all, not '%s'", value);
		rule->stats_all = strcmp(value, "all") == 0;
		return 1;
	}
	if (strcmp(name, "delegate") == 0) {
		if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0)
			return bad(st, "delegate must be yes or no, not '%s'", value);
		rule->delegate = strcmp(value, "yes") == 0;
		return 1;
	}
	if (strcmp(name, "max-domains") == 0)
		quota = &rule->max_domains;
	else if (strcmp(name, "max-mappings") == 0)
		quota = &rule->max_mappings;
	else if (strcmp(name, "max-maps") == 0)
		quota = &rule->max_maps;
	else if (strcmp(name, "max-pinned") == 0)
		quota = &rule->max_pinned_bytes;
	else if (strcmp(name, "max-leases") == 0)
		quota = &rule->max_leases;
	else if (strcmp(name, "max-page-tables") == 0)
		quota = &rule->max_page_table_bytes;
	if (!quota)
		return bad(
			st,
			"unknown key '%s' in [%s]; known: access, delegate, devices, max-domains, "
			"max-leases, max-mappings, max-maps, max-page-tables, max-pinned, "
			"stats",
			name, rule->section);
	if (parse_size(value, quota) < 0)
		return bad(st, "%s must be a number (with K, M, G or T for sizes), not '%s'", name,
			   value);
	return 1;
}

static int unknown_section(struct load_state *st, const char *section)
{
	return bad(st,
		   "unknown section [%s]; known: [daemon], [access], [user NAME], [uid N], "
		   "[group NAME]",
		   section);
}

/* Whom "user NAME", "uid N" or "group NAME" names: sets the rule's id and is_group, or says
 * what is wrong and returns 0. */
static int section_identity(struct load_state *st, const char *section, struct access_rule *rule)
{
	const char *arg = strchr(section, ' ');
	uint64_t number;

	if (!arg || !arg[1])
		return unknown_section(st, section);
	arg++;
	if (strncmp(section, "user ", 5) == 0) {
		const struct passwd *pw = getpwnam(arg);

		if (!pw)
			return bad(st, "no user '%s' on this system (section [%s])", arg, section);
		rule->id = pw->pw_uid;
	} else if (strncmp(section, "uid ", 4) == 0) {
		if (parse_size(arg, &number) < 0 || number > UINT32_MAX ||
		    !isdigit((unsigned char)*arg))
			return bad(st, "[uid N] needs a numeric uid, not '%s'", arg);
		rule->id = (uint32_t)number;
	} else if (strncmp(section, "group ", 6) == 0) {
		const struct group *gr = getgrnam(arg);

		if (!gr)
			return bad(st, "no group '%s' on this system (section [%s])", arg, section);
		rule->is_group = true;
		rule->id = gr->gr_gid;
	} else {
		return unknown_section(st, section);
	}
	return 1;
}

/* Resolves "user NAME", "uid N" or "group NAME" into a new rule. */
static struct access_rule *rule_for_section(struct load_state *st, const char *section)
{
	struct config *cfg = st->cfg;
	struct access_rule rule = {
		.access = ACCESS_WRITE,
		DEFAULT_QUOTAS,
	};
	struct access_rule *grown;

	if (!section_identity(st, section, &rule))
		return NULL;
	if (!st->replaced_builtin) {
		for (size_t i = 0; i < cfg->n_rules; i++)
			rule_free(&cfg->rules[i]);
		cfg->n_rules = 0;
		st->replaced_builtin = true;
	}
	for (size_t i = 0; i < cfg->n_rules; i++) {
		if (cfg->rules[i].is_group == rule.is_group && cfg->rules[i].id == rule.id) {
			(void)bad(st, "[%s] names the same %s as [%s]", section,
				  rule.is_group ? "group" : "user", cfg->rules[i].section);
			return NULL;
		}
	}
	grown = realloc(cfg->rules, (cfg->n_rules + 1) * sizeof(*grown));
	if (!grown || !(rule.section = strdup(section))) {
		if (grown)
			cfg->rules = grown;
		(void)bad(st, "out of memory");
		return NULL;
	}
	cfg->rules = grown;
	cfg->rules[cfg->n_rules] = rule;
	return &cfg->rules[cfg->n_rules++];
}

static int on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
	struct load_state *st = user;
	struct config *cfg = st->cfg;
	struct access_rule *rule = NULL;

	if (strcmp(section, "daemon") == 0)
		return daemon_key(st, name, value);
	if (strcmp(section, "access") == 0) {
		if (strcmp(name, "default") != 0)
			return bad(st, "unknown key '%s' in [access]; known: default", name);
		return access_key(st, name, value, &cfg->default_access);
	}
	for (size_t i = 0; i < cfg->n_rules; i++)
		if (strcmp(cfg->rules[i].section, section) == 0)
			rule = &cfg->rules[i];
	/* libinih reports sections only through their keys, so a rule is born at its first key. */
	if (!rule && !(rule = rule_for_section(st, section)))
		return 0;
	return rule_key(st, rule, name, value);
}

/* What no single key can settle: limits that depend on each other. */
static int resolve_limits(struct config *cfg, const char *path, char *err, size_t err_len)
{
	if (cfg->reserved_connections == RESERVED_CONNECTIONS_AUTO)
		cfg->reserved_connections = cfg->max_connections / 64;
	if (cfg->reserved_connections < cfg->max_connections)
		return 0;
	(void)snprintf(err, err_len,
		       "%s: reserved-connections (%u) must be below max-connections (%u), or "
		       "nobody but configured writers could connect",
		       path, cfg->reserved_connections, cfg->max_connections);
	return -EINVAL;
}

int config_load(struct config *cfg, const char *path, char *err, size_t err_len)
{
	struct load_state st = {.cfg = cfg, .err = err, .err_len = err_len};
	FILE *file = fopen(path, "re");
	int line, saved;

	if (!file) {
		saved = errno;
		(void)snprintf(err, err_len, "cannot open %s: %s", path, strerror(saved));
		return -saved;
	}
	err[0] = '\0';
	/* Follows the file's max-connections unless the file sets it. */
	cfg->reserved_connections = RESERVED_CONNECTIONS_AUTO;
	/* The first problem is the one to report; later ones are often its echoes. */
	ini_stop_on_first_error = true;
	line = ini_parse_file(file, on_ini_entry, &st);
	(void)fclose(file);
	if (line == 0)
		return resolve_limits(cfg, path, err, err_len);
	if (line < 0) {
		(void)snprintf(err, err_len, "cannot read %s", path);
		return -EIO;
	}
	/* Prefix the handler's reason (or inih's syntax complaint) with where it is. */
	{
		char reason[512];

		(void)snprintf(reason, sizeof(reason), "%s", err[0] ? err : "syntax error");
		(void)snprintf(err, err_len, "%s:%d: %s", path, line, reason);
	}
	return -EINVAL;
}

const struct access_rule *config_match(const struct config *cfg, uid_t uid, gid_t gid,
				       const gid_t *groups, size_t n_groups)
{
	for (size_t i = 0; i < cfg->n_rules; i++)
		if (!cfg->rules[i].is_group && cfg->rules[i].id == uid)
			return &cfg->rules[i];
	for (size_t i = 0; i < cfg->n_rules; i++) {
		if (!cfg->rules[i].is_group)
			continue;
		if (cfg->rules[i].id == gid)
			return &cfg->rules[i];
		for (size_t g = 0; g < n_groups; g++)
			if (cfg->rules[i].id == groups[g])
				return &cfg->rules[i];
	}
	return NULL;
}

bool config_device_allowed(const struct access_rule *rule, const char *name)
{
	for (size_t i = 0; rule && i < rule->n_devices; i++)
		if (fnmatch(rule->devices[i], name, 0) == 0)
			return true;
	return false;
}
