/* SPDX-License-Identifier: MIT */
/*
 * The daemon's configuration: an INI file (docs/operations.md, "Configuration") read with
 * libinih, plus the command line, which overrides it.
 *
 * Ownership: struct config owns every string and array in it; config_free releases them.
 */
#ifndef IOMMUD_CONFIG_H
#define IOMMUD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <iommud.pb-c.h>

#define IOMMUD_DEFAULT_CONFIG "/etc/iommud/iommud.conf"
#define IOMMUD_DEFAULT_SOCKET "/run/iommud/iommud.sock"

/* The schema's Access levels (proto/iommud.proto), whose names the configuration uses. */
enum access {
	ACCESS_NONE = IOMMUD__V1__ACCESS__ACCESS_NONE, /* Hello only: every other call is refused */
	ACCESS_READ = IOMMUD__V1__ACCESS__ACCESS_READ, /* list and query calls only */
	ACCESS_WRITE = IOMMUD__V1__ACCESS__ACCESS_WRITE, /* everything */
};

/* What a [user NAME], [uid N] or [group NAME] section grants. */
struct access_rule {
	bool is_group;
	uint32_t id;   /* uid or gid, resolved when the file is read */
	char *section; /* as written, for messages */
	enum access access;
	char **devices; /* fnmatch patterns of device names the peer may take */
	size_t n_devices;
	uint64_t max_domains;
	uint64_t max_mappings;
	/* The daemon's memory maps of client files the tenant may hold: its share of
	 * max-maps-total, so that no one tenant takes every map. */
	uint64_t max_maps;
	uint64_t max_pinned_bytes;
	uint64_t max_leases;
	uint64_t max_page_table_bytes; /* the emulated IOMMU's tables, kept in the daemon */
	/* stats = all: an observer; GetStats shows everyone's figures, not only the peer's own. */
	bool stats_all;
	/* delegate = yes: the peers may have devices handed to a VMM (DelegateDevices), raw VFIO
	 * device fds whose pins count only against the VMM's RLIMIT_MEMLOCK, so never by default.
	 */
	bool delegate;
};

struct config {
	char *socket_path;
	mode_t socket_mode;
	/* BACKEND_UNSPECIFIED is "auto": kernel-helper's registry chooses (kh_backend_open) */
	Iommud__V1__Backend backend;
	char *topology; /* emulated backend topology file; NULL: one default device */
	int log_level;
	unsigned max_connections;
	unsigned threads; /* event-loop threads serving connections; 0: auto (config_threads) */
	/* Fairness and connection limits (docs/operations.md, "Fairness and connection limits");
	 * root is held by none of them. */
	unsigned max_connections_per_uid;
	unsigned max_connections_per_tenant;
	unsigned reserved_connections;	/* of max_connections, for configured writers only */
	unsigned first_request_timeout; /* seconds a new connection may stay silent; 0: forever */
	unsigned idle_timeout;		/* seconds between requests; 0: forever */
	unsigned reader_rate;		/* requests a second of a tenant below write; 0: no limit */
	unsigned reader_burst;
	Iommud__V1__ProbeTier probe_tier; /* the highest tier the map path probes may use */
	/* Whether the fentry and kprobe tiers time the IOMMU driver's calls (an entry program on
	 * each, once per contiguous run of pages a map pins), or only count them at its
	 * tracepoints: off by default, as timing them costs a 2 MiB map on the descriptor path
	 * about a tenth (docs/architecture.md, "Probes' cost"). */
	bool probe_driver_latency;
	/* Daemon-wide ceilings the configuration asks for; 0: the one derived from the kernel's
	 * limits at start (daemon/ceilings.h), which a configured value may only lower. */
	uint64_t max_maps_total;
	uint64_t max_leases_total;
	uint64_t max_pinned_total;
	enum access default_access;
	struct access_rule *rules;
	size_t n_rules;
};

/* Fills cfg with the built-in defaults: root may do everything, everyone else may read. */
int config_defaults(struct config *cfg);
/* Reads the INI file at path over the defaults. On failure returns a negative errno and puts,
 * in err, which line is wrong and why. */
int config_load(struct config *cfg, const char *path, char *err, size_t err_len);
void config_free(struct config *cfg);

/* The rule that applies to a peer: its uid's section, else the first group section (in file
 * order) naming its primary or a supplementary group; NULL if none does. */
const struct access_rule *config_match(const struct config *cfg, uid_t uid, gid_t gid,
				       const gid_t *groups, size_t n_groups);
/* Whether a rule lets its peer take the device called name. */
bool config_device_allowed(const struct access_rule *rule, const char *name);

/* The access level's name, as the configuration and HelloReply.permissions spell it. */
const char *config_access_name(enum access access);

/* Parses "auto" or a name of kernel-helper's backend registry; -EINVAL for anything else. */
int config_parse_backend(const char *name, Iommud__V1__Backend *ret_backend);
/* The registry's name of the backend, "auto" for BACKEND_UNSPECIFIED. */
const char *config_backend_name(Iommud__V1__Backend backend);
/* The schema's value of a registry name. */
int config_backend_value(const char *name, Iommud__V1__Backend *ret_backend);
/* What config_parse_backend accepts, for messages: "auto, iommufd, vfio-type1, emulated". */
const char *config_backend_choices(char *buf, size_t size);
/* The event-loop threads the daemon runs: the configured number, or for auto the CPUs the
 * daemon may run on (sched_getaffinity), at most CONFIG_MAX_THREADS. */
#define CONFIG_MAX_THREADS 64
unsigned config_threads(const struct config *cfg);

/* Parses a byte count with an optional K, M, G or T suffix (powers of 1024); decimal or 0x hex.
 * -EINVAL if malformed, -ERANGE if it does not fit 64 bits. */
int parse_size(const char *text, uint64_t *ret_size);

#endif
