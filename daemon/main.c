// SPDX-License-Identifier: MIT
/*
 * iommud: owns IOMMU domains for other programs and serves them over a SOCK_SEQPACKET socket.
 * main() owns the configuration and the backend, serve() the registry of tenants and the
 * server; both release theirs in the reverse order on SIGTERM or SIGINT.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <kh/kh.h>
#include <names.h>

#include "ceilings.h"
#include "config.h"
#include "delegate.h"
#include "dispatch.h"
#include "fdstore.h"
#include "log.h"
#include "manager_job.h"
#include "probes/probes.h"
#include "reexec.h"
#include "server.h"
#include "session.h"
#include "state.h"
#include "status.h"

#define TEXT(x)		#x
#define NUMBER_TEXT(x)	TEXT(x)
#define OPEN_FILES_TEXT NUMBER_TEXT(IOMMUD_OPEN_FILES)

static const char usage[] =
	"Usage: iommud [OPTION]...\n"
	"\n"
	"Own IOMMU domains on behalf of other programs. Container and VM managers connect to\n"
	"the daemon's socket (with libiommuctl or the iommuctl command) to allocate DMA\n"
	"domains, attach VFIO devices and map their memory for device DMA. Each client\n"
	"identity (uid, cgroup for services and containers, and the configuration section\n"
	"that applies) gets its own isolated IOMMU context, with the access and quotas that\n"
	"section grants it. Identities are served side by side on the daemon's event-loop\n"
	"threads ([daemon] threads, one per CPU it may run on by default), each identity's\n"
	"connections all on one of them.\n"
	"\n"
	"Options (each overrides the configuration file):\n"
	"  -c, --config FILE      configuration file (default " IOMMUD_DEFAULT_CONFIG ";\n"
	"                         a missing default file means built-in defaults: root may\n"
	"                         do everything, everyone else may only read)\n"
	"  -s, --socket PATH      listening socket (default " IOMMUD_DEFAULT_SOCKET ");\n"
	"                         ignored under systemd socket activation\n"
	"  -b, --backend KIND     auto, iommufd, vfio-type1 or emulated (default auto:\n"
	"                         iommufd when /dev/iommu exists, else vfio-type1 when the\n"
	"                         machine has an IOMMU and VFIO, else the emulated IOMMU,\n"
	"                         only on a machine without an IOMMU)\n"
	"  -t, --topology FILE    devices of the emulated backend (docs/operations.md);\n"
	"                         default: one device, emu0\n"
	"  -l, --log-level LEVEL  err, warning, notice, info (default) or debug; debug logs\n"
	"                         every map and unmap\n"
	"      --probe-tier TIER  the highest tier the map path probes may attach at: fentry\n"
	"                         (default), kprobe, tracepoint or off; the daemon falls back\n"
	"                         below it by itself and logs what it could not attach\n"
	"      --check-config     read the configuration, print what it grants, and exit\n"
	"      --fdstore-max      print how many descriptors systemd's store may have to\n"
	"                         keep for the leases the configuration allows on this\n"
	"                         machine's backend, under the open-file limit the unit\n"
	"                         gives (LimitNOFILE=" OPEN_FILES_TEXT
	"), whatever the caller's, and\n"
	"                         exit: the least an override of FileDescriptorStoreMax=\n"
	"                         must keep (the unit's store is as large as that limit)\n"
	"  -h, --help             show this help and exit\n"
	"  -V, --version          show the version and exit\n"
	"\n"
	"Signals: SIGTERM and SIGINT stop the daemon; every mapping is removed from the\n"
	"IOMMU before the memory behind it is released. On iommufd and vfio-type1, a\n"
	"SIGTERM that systemd sends to restart the unit (systemctl restart; asked over the\n"
	"D-Bus system bus) is the exception: the named leases stay, with their devices'\n"
	"DMA, in systemd's descriptor store for the next daemon to take over. SIGUSR2\n"
	"re-executes the daemon in place (ExecReload=), keeping the leases. SIGHUP is\n"
	"logged and ignored: configuration changes take effect at the next start.\n"
	"\n"
	"Exit status: 0 after a clean stop, 1 when the daemon cannot start, a bad\n"
	"configuration file included (the message says why), 2 on a usage error: an unknown\n"
	"option, or a bad value given to one.\n"
	"\n"
	"See docs/operations.md for the configuration file, the systemd units and the logs,\n"
	"and docs/protocol.md for the protocol.\n";

/* The words are checked as the command line is read, so that a bad one is a usage error
 * (exit status 2) whatever the configuration file holds. */
struct options {
	const char *config_path;
	bool config_given;
	const char *socket_path;
	const char *backend;
	const char *topology;
	const char *log_level;
	const char *probe_tier;
	/* What the three words above say, set where they were given. */
	Iommud__V1__Backend backend_value;
	int log_level_value;
	Iommud__V1__ProbeTier probe_tier_value;
	bool check_config;
	bool fdstore_max;
};

/* Where each option that takes a word keeps it. */
static const char **word_option(struct options *o, int opt)
{
	const char **const slots[] = {
		['c'] = &o->config_path, ['s'] = &o->socket_path, ['b'] = &o->backend,
		['t'] = &o->topology,	 ['l'] = &o->log_level,	  ['P'] = &o->probe_tier,
	};

	return opt >= 0 && (size_t)opt < sizeof(slots) / sizeof(slots[0]) ? slots[opt] : NULL;
}

/* The values of the options that take one of a set of words; says what each takes. */
static int check_words(struct options *o)
{
	char choices[64];
	int tier;

	if (o->backend && config_parse_backend(o->backend, &o->backend_value) < 0) {
		(void)fprintf(stderr, "iommud: --backend must be %s, not '%s'\n",
			      config_backend_choices(choices, sizeof(choices)), o->backend);
		return -EINVAL;
	}
	if (o->probe_tier && iommud_value(&iommud_probe_tier_names, o->probe_tier, &tier) < 0) {
		(void)fprintf(stderr, "iommud: --probe-tier must be %s, not '%s'\n",
			      iommud_names_list(&iommud_probe_tier_names, choices, sizeof(choices)),
			      o->probe_tier);
		return -EINVAL;
	}
	if (o->probe_tier)
		o->probe_tier_value = (Iommud__V1__ProbeTier)tier;
	if (o->log_level && (o->log_level_value = log_parse_level(o->log_level)) < 0) {
		(void)fprintf(stderr,
			      "iommud: --log-level must be err, warning, notice, info or debug, "
			      "not '%s'\n",
			      o->log_level);
		return -EINVAL;
	}
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"socket", required_argument, NULL, 's'},
		{"backend", required_argument, NULL, 'b'},
		{"topology", required_argument, NULL, 't'},
		{"log-level", required_argument, NULL, 'l'},
		{"probe-tier", required_argument, NULL, 'P'},
		{"check-config", no_argument, NULL, 'C'},
		{"fdstore-max", no_argument, NULL, 'F'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const char **word;
	int opt;

	*o = (struct options){.config_path = IOMMUD_DEFAULT_CONFIG};
	while ((opt = getopt_long(argc, argv, "c:s:b:t:l:hV", longopts, NULL)) != -1) {
		if ((word = word_option(o, opt))) {
			*word = optarg;
			o->config_given |= opt == 'c';
		} else if (opt == 'C') {
			o->check_config = true;
		} else if (opt == 'F') {
			o->fdstore_max = true;
		} else if (opt == 'h') {
			(void)fputs(usage, stdout);
			exit(0);
		} else if (opt == 'V') {
			(void)printf("iommud %s\n", IOMMUD_VERSION);
			exit(0);
		} else {
			(void)fprintf(stderr, "Try 'iommud --help'.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		(void)fprintf(stderr, "iommud: unexpected argument '%s'\nTry 'iommud --help'.\n",
			      argv[optind]);
		return -EINVAL;
	}
	if (o->check_config && o->fdstore_max) {
		(void)fprintf(stderr, "iommud: --check-config and --fdstore-max each print and "
				      "exit: give one of them\n");
		return -EINVAL;
	}
	if (check_words(o) < 0) {
		(void)fprintf(stderr, "Try 'iommud --help'.\n");
		return -EINVAL;
	}
	return 0;
}

/* The configuration file, then the command line over it. */
static int load_config(const struct options *o, struct config *cfg)
{
	char err[1024];
	int rc = config_defaults(cfg);

	if (rc < 0) {
		(void)fprintf(stderr, "iommud: out of memory\n");
		return rc;
	}
	if (o->config_given || access(o->config_path, F_OK) == 0) {
		rc = config_load(cfg, o->config_path, err, sizeof(err));
		if (rc < 0) {
			(void)fprintf(stderr, "iommud: %s\n", err);
			return rc;
		}
	}
	if (o->socket_path &&
	    (free(cfg->socket_path), !(cfg->socket_path = strdup(o->socket_path))))
		return -ENOMEM;
	if (o->topology && (free(cfg->topology), !(cfg->topology = strdup(o->topology))))
		return -ENOMEM;
	if (o->backend)
		cfg->backend = o->backend_value;
	if (o->probe_tier)
		cfg->probe_tier = o->probe_tier_value;
	if (o->log_level)
		cfg->log_level = o->log_level_value;
	return 0;
}

static void print_config(const struct config *cfg)
{
	(void)printf("socket %s (mode %04o), backend %s, topology %s, log level %d, "
		     "max-connections %u, probe-tier %s, probe-driver-latency %s, threads %u\n",
		     cfg->socket_path, (unsigned)cfg->socket_mode,
		     config_backend_name(cfg->backend), cfg->topology ? cfg->topology : "(default)",
		     cfg->log_level, cfg->max_connections,
		     iommud_name(&iommud_probe_tier_names, cfg->probe_tier),
		     cfg->probe_driver_latency ? "yes" : "no", config_threads(cfg));
	(void)printf("ceilings asked for (0: derived at start): max-maps-total %llu, "
		     "max-leases-total %llu, max-pinned-total %llu\n",
		     (unsigned long long)cfg->max_maps_total,
		     (unsigned long long)cfg->max_leases_total,
		     (unsigned long long)cfg->max_pinned_total);
	(void)printf("connections: max-connections-per-uid %u, max-connections-per-tenant %u, "
		     "reserved-connections %u, first-request-timeout %u s, idle-timeout %u s%s, "
		     "reader-rate %u/s%s, reader-burst %u\n",
		     cfg->max_connections_per_uid, cfg->max_connections_per_tenant,
		     cfg->reserved_connections, cfg->first_request_timeout, cfg->idle_timeout,
		     cfg->idle_timeout ? "" : " (never)", cfg->reader_rate,
		     cfg->reader_rate ? "" : " (unlimited)", cfg->reader_burst);
	(void)printf("peers matched by no section: %s\n", config_access_name(cfg->default_access));
	for (size_t i = 0; i < cfg->n_rules; i++) {
		const struct access_rule *r = &cfg->rules[i];

		(void)printf(
			"[%s] %s %u: access %s, max-domains %llu, max-mappings %llu, "
			"max-pinned %llu, max-leases %llu, max-page-tables %llu, max-maps %llu, "
			"devices:",
			r->section, r->is_group ? "gid" : "uid", r->id,
			config_access_name(r->access), (unsigned long long)r->max_domains,
			(unsigned long long)r->max_mappings,
			(unsigned long long)r->max_pinned_bytes, (unsigned long long)r->max_leases,
			(unsigned long long)r->max_page_table_bytes,
			(unsigned long long)r->max_maps);
		for (size_t d = 0; d < r->n_devices; d++)
			(void)printf(" %s", r->devices[d]);
		(void)printf("%s\n", r->n_devices ? "" : " (none)");
	}
}

/* The backend the configuration names, chosen and opened by kernel-helper's registry, which
 * refuses, saying why and what to do, a backend the machine cannot serve. */
static int open_backend(const struct config *cfg, struct kh_backend **ret_be)
{
	const char *name = config_backend_name(cfg->backend);
	struct kh_backend *be;
	int rc = kh_backend_open(name, cfg->topology, &be);

	if (rc < 0) {
		log_err("cannot open the %s backend: %s", name, kh_last_error());
		return rc;
	}
	log_notice("backend %s (asked for: %s) with %zu devices", kh_backend_name(be), name,
		   kh_device_count(be));
	if (!(kh_backend_caps(be) & KH_CAP_DMA_REMAPPING))
		log_warning("nothing is remapped: the %s backend only emulates an IOMMU inside the "
			    "daemon, and no device's DMA is restricted by it",
			    kh_backend_name(be));
	*ret_be = be;
	return 0;
}

/* The devices whose descriptors a lease may store: a lease binds a device only through a
 * section with write access, and each device is counted once however many sections name it,
 * since one context at a time binds it. */
static size_t bindable_devices(const struct config *cfg, const struct kh_backend *be)
{
	struct kh_device_info info;
	size_t n = 0;

	for (size_t i = 0; i < kh_device_count(be); i++) {
		if (kh_device_info(be, i, &info) < 0)
			continue;
		for (size_t r = 0; r < cfg->n_rules; r++) {
			if (cfg->rules[r].access == ACCESS_WRITE &&
			    config_device_allowed(&cfg->rules[r], info.name)) {
				n++;
				break;
			}
		}
	}
	return n;
}

/* How many descriptors the store may have to keep for what the configuration lets leases hold
 * on this backend, under the open-file limit open_files and the ceilings computed under it. */
static uint64_t store_slots_needed(const struct config *cfg, const struct kh_backend *be,
				   const struct ceilings *ceil, uint64_t open_files)
{
	uint32_t caps = kh_backend_caps(be);
	struct store_backend store = {
		.kernel_fds = caps & KH_CAP_ADOPT,
		.maps_by_fd = caps & KH_CAP_MAP_FILE,
		.delegates = caps & KH_CAP_DELEGATE,
		.n_devices = bindable_devices(cfg, be),
		.open_files = open_files,
	};

	/* Each device at most once, with the context of the session holding it. */
	store.anon_fds = store.kernel_fds ? 2 * (uint64_t)store.n_devices : 0;

	return ceilings_store_slots(cfg, ceil, &store);
}

/* --fdstore-max: under the open-file limit the unit gives the service, not under that of
 * whoever asks (a shell's 1024), as the daemon computes its ceilings at start. */
static int print_store_slots(const struct config *cfg, const struct kh_backend *be)
{
	struct ceilings ceil;

	ceilings_compute(cfg, registry_pins_in_kernel(be), IOMMUD_OPEN_FILES, &ceil);
	return printf("%" PRIu64 "\n", store_slots_needed(cfg, be, &ceil, IOMMUD_OPEN_FILES)) < 0;
}

/* Says once, at start, where the store the service manager keeps is smaller than what the
 * configuration lets leases hold may need, and how to size it. The unit's own store never is
 * (it is as large as the open-file limit): only an override is, and a daemon-reload alone
 * would close the descriptors past a smaller size under the running service. */
static void check_store_size(const struct daemon *d)
{
	uint64_t need =
		store_slots_needed(d->cfg, d->be, registry_ceilings(d->reg), ceilings_open_files());
	enum fdstore_source source;
	size_t have = fdstore_max(&source);

	if (need <= have)
		return;
	log_warning("the service manager's descriptor store keeps %zu descriptors (%s), and the "
		    "leases the configuration allows may need %" PRIu64 ": a Map past it is "
		    "refused, and lease kernel descriptors past it are not kept; in the drop-in "
		    "that lowers it (systemctl edit iommud) set 'FileDescriptorStoreMax=%" PRIu64
		    "' and 'Environment=IOMMUD_FDSTORE_MAX=%" PRIu64 "' (for systemd before 254) "
		    "under [Service], or remove both lines; then 'systemctl stop iommud', "
		    "'systemctl daemon-reload', 'systemctl start iommud' (a smaller store under a "
		    "running service closes the descriptors past it)",
		    have, fdstore_source_name(source), need, need, need);
}

/* The leases' state record, and whether the store that keeps it is large enough. */
static void open_state(struct daemon *d)
{
	if (state_open(d->reg, &d->state) < 0)
		log_err("named leases will not survive a restart: %s", failure_message());
	else if (d->state)
		check_store_size(d);
}

/* A reload would have to re-check every live tenant against new rules; until it does, the
 * signal systemd sends for "reload" must not end the daemon. */
static void on_hangup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	log_warning("SIGHUP: configuration reload is not supported; restart iommud to apply a "
		    "changed configuration (existing sessions end then)");
}

/* Every connection is a descriptor and may keep IOMMUD_KEPT_FILES more (KeepFiles), and the
 * usual soft limit (1024) is below the default max-connections: take the hard limit, and say
 * so when even that is too low. */
static void raise_fd_limit(unsigned max_connections)
{
	rlim_t needed = (rlim_t)max_connections * (1 + IOMMUD_KEPT_FILES) + 64;
	struct rlimit limit;

	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return;
	limit.rlim_cur = limit.rlim_max;
	(void)setrlimit(RLIMIT_NOFILE, &limit);
	if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed)
		log_warning(
			"the open-file limit (%llu) is below max-connections (%u) times the "
			"%d descriptors a connection may hold (its socket and the files it "
			"keeps) plus the daemon's own files (%llu in all); raise LimitNOFILE or "
			"lower max-connections",
			(unsigned long long)limit.rlim_cur, max_connections, 1 + IOMMUD_KEPT_FILES,
			(unsigned long long)needed);
}

/* How the loop ended, when a signal ended it: a re-execution (SIGUSR2) or the stop half of the
 * service manager's restart (SIGTERM) leave the leases to the next daemon; any other stop tears
 * them down. */
struct loop_end {
	struct event_base *base;
	const struct daemon *d;
	bool reexec;
	bool restart;
};

/* A SIGTERM from systemd for a restart is answered as a kill would be, without the kill's
 * loss: the leases' kernel objects stay in the store, so that the next daemon takes them over
 * and their devices' DMA goes on (docs/operations.md, "Surviving a restart"). Only where the
 * next daemon can take them over (KH_CAP_ADOPT): elsewhere it rebuilds the leases either way,
 * and the stop's teardown is what ends a held device's DMA into the old mappings. And only on
 * systemd's own answer: a stop for good must tear them down, or devices held open by clients
 * would go on with DMA into memory no daemon accounts for. */
static void on_terminate(evutil_socket_t sig, short what, void *arg)
{
	struct loop_end *end = arg;

	(void)what;
	end->restart = end->d->state && (kh_backend_caps(end->d->be) & KH_CAP_ADOPT) &&
		       manager_restarting();
	log_notice("signal %d: %s", (int)sig,
		   end->restart ? "stopping for systemd's restart, leaving the leases to the next "
				  "daemon"
				: "stopping");
	(void)event_base_loopbreak(end->base);
}

static void on_interrupt(evutil_socket_t sig, short what, void *arg)
{
	struct loop_end *end = arg;

	(void)what;
	log_notice("signal %d: stopping", (int)sig);
	(void)event_base_loopbreak(end->base);
}

/* SIGUSR2 asks for a re-execution (reexec.h): the loop ends, and serve() executes the daemon
 * again. */
static void on_reexec(evutil_socket_t sig, short what, void *arg)
{
	struct loop_end *end = arg;

	(void)sig;
	(void)what;
	if (!end->d->state) {
		log_warning("SIGUSR2: re-executing needs a service manager that keeps the leases' "
			    "state record (NOTIFY_SOCKET, FileDescriptorStoreMax=); ignored");
		return;
	}
	log_notice("SIGUSR2: re-executing");
	end->reexec = true;
	(void)event_base_loopbreak(end->base);
}

/* SIGTERM and SIGINT stop the loop; SIGHUP is only logged; SIGUSR2 re-executes. */
#define N_SIGNALS 4

static int watch_signals(struct loop_end *end, struct event *ret_events[N_SIGNALS])
{
	struct event_base *base = end->base;
	struct event *events[N_SIGNALS] = {
		evsignal_new(base, SIGTERM, on_terminate, end),
		evsignal_new(base, SIGINT, on_interrupt, end),
		evsignal_new(base, SIGHUP, on_hangup, NULL),
		evsignal_new(base, SIGUSR2, on_reexec, end),
	};
	int rc = 0;

	for (size_t i = 0; i < N_SIGNALS; i++)
		if (!events[i] || event_add(events[i], NULL) < 0)
			rc = -ENOMEM;
	if (rc < 0) {
		log_err("cannot watch signals");
		for (size_t i = 0; i < N_SIGNALS; i++)
			if (events[i])
				event_free(events[i]);
		return rc;
	}
	memcpy(ret_events, events, sizeof(events));
	return 0;
}

/* systemd's watchdog clock keeps running across a re-exec, and the new image loads the probes
 * and adopts the leases before its loop turns: so a re-exec pings as the old image goes, after
 * the probes, and with READY=1, not only from the loop. Without that, the last loop ping plus a
 * slow start (in a TCG guest, seconds of BPF loading) plus the timer's first half interval could
 * add up to the whole interval, and systemd would abort a daemon that was fine. A first start
 * pings only from READY=1 on: an earlier ping would arm the watchdog during the start. */
static void ping_watchdog_now(void)
{
	(void)sd_notify(0, "WATCHDOG=1");
}

/* systemd restarts a daemon whose loop stops turning (WatchdogSec=): the loop itself pings, at
 * half the interval systemd asked for, so a ping is late only when the loop is; and only when
 * every loop thread has turned since the last one, so a ping is late when one of them is. */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	if (server_threads_turning(arg))
		ping_watchdog_now();
}

/* The ping timer when systemd's watchdog is on for this process, else *ret_ev stays NULL. */
static int start_watchdog(struct event_base *base, struct server *srv, struct event **ret_ev)
{
	uint64_t usec;
	struct timeval half;
	struct event *ev;

	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	half = (struct timeval){.tv_sec = (time_t)(usec / 2 / 1000000),
				.tv_usec = (suseconds_t)(usec / 2 % 1000000)};
	ev = event_new(base, -1, EV_PERSIST, on_watchdog, srv);
	if (!ev || event_add(ev, &half) < 0) {
		if (ev)
			event_free(ev);
		log_err("cannot start the watchdog timer");
		return -ENOMEM;
	}
	log_info("pinging systemd's watchdog every %llu ms", (unsigned long long)(usec / 2000));
	*ret_ev = ev;
	return 0;
}

/* Watching the map path is never a reason not to serve: what cannot attach is said, once. */
static int start_probes(struct daemon *d)
{
	struct probes_options opts = {
		.max_tier = d->cfg->probe_tier,
		.driver_latency = d->cfg->probe_driver_latency,
		.in_process = kh_backend_caps(d->be) & KH_CAP_MAP_IN_PROCESS,
		.tenant_slots = registry_label_slots(d->reg),
	};
	const char *const *detached;
	size_t n;

	if (probes_start(&opts, &d->probes) < 0) {
		log_err("out of memory at start");
		return -ENOMEM;
	}
	n = probes_detached(d->probes, &detached);
	for (size_t i = 0; i < n; i++)
		log_notice("probe not attached: %s", detached[i]);
	log_notice("map path probes: tier %s%s%s",
		   iommud_name(&iommud_probe_tier_names, probes_tier(d->probes)),
		   probes_in_process(d->probes) ? ", in-process timing" : "",
		   probes_driver_note(d->probes));
	return 0;
}

/* Only returns on failure, when the process can serve no more: the service manager restarts
 * the daemon, which adopts the leases from the store as after a crash. */
static void reexec_now(struct daemon *d, struct server *srv)
{
	/* The loop's break may have come before the wait for its last removals. */
	fdstore_sync();
	(void)sd_notify(0, "RELOADING=1\nWATCHDOG=1");
	(void)reexec(d->state, server_listen_fd(srv), server_bound_its_path(srv));
	log_err("%s; exiting, for the service manager to start the daemon again",
		failure_message());
	_exit(EXIT_FAILURE);
}

/* The stop half of systemd's restart: connections (anonymous sessions with them) end as at any
 * stop, and delegations are no longer followed (the record keeps them); the leases are left as
 * a kill leaves them, their kernel descriptors and record in the store, which systemd keeps
 * across a restart, for the next daemon to take over. Nothing of theirs is torn down or freed:
 * the process ends here, as a re-execution's image does. */
static void leave_for_restart(struct daemon *d, struct server *srv)
{
	server_destroy(srv);
	delegations_destroy(d->delegations);
	fdstore_sync();
	(void)sd_notify(0, "STOPPING=1");
	log_notice("stopped; the leases wait in systemd's descriptor store for the next daemon");
	_exit(EXIT_SUCCESS);
}

/* The loop's own events, then the loop: last, once all else that added events to it is gone. */
static void free_loop(struct event_base *base, struct event **signals, struct event *watchdog)
{
	for (size_t i = 0; i < N_SIGNALS; i++)
		if (signals[i])
			event_free(signals[i]);
	if (watchdog)
		event_free(watchdog);
	if (base)
		event_base_free(base);
}

/* The named leases and the delegations the store kept from the daemon before, taken over. */
static void adopt_survivors(struct daemon *d)
{
	open_state(d);
	delegations_adopt(d->delegations, d->state, d->probes);
}

/* Serves until a signal stops the daemon; returns the exit status. */
static int serve(struct daemon *d, struct config *cfg)
{
	struct event *signals[N_SIGNALS] = {NULL}, *watchdog = NULL;
	struct event_base *base = event_base_new();
	struct loop_end end = {.base = base, .d = d};
	struct server *srv = NULL;
	int status = 1;

	/* The registry first: it says how many tenant labels the probes' histograms need. */
	d->reg = registry_create(d->be, cfg);
	if (d->reg && start_probes(d) < 0)
		goto out;
	if (reexec_arrived())
		ping_watchdog_now();
	if (d->reg)
		registry_set_probes(d->reg, d->probes);
	if (!d->reg || !base || !(d->delegations = delegations_create(base, d->reg)) ||
	    server_create(base, d, cfg->max_connections, &srv) < 0) {
		log_err("out of memory at start");
		goto out;
	}
	if (server_listen(srv, cfg->socket_path, cfg->socket_mode) < 0) {
		log_err("%s", failure_message());
		goto out;
	}
	adopt_survivors(d);
	if (server_start_threads(srv, config_threads(cfg)) < 0) {
		log_err("%s", failure_message());
		goto out;
	}
	if (watch_signals(&end, signals) < 0 || start_watchdog(base, srv, &watchdog) < 0)
		goto out;
	(void)sd_notifyf(0, "READY=1\nWATCHDOG=1\nSTATUS=serving on the %s backend",
			 kh_backend_name(d->be));
	log_notice("ready (iommud %s, protocol %d, %u event-loop threads)", IOMMUD_VERSION,
		   IOMMUD_PROTOCOL_VERSION, server_threads(srv));
	if (event_base_dispatch(base) < 0)
		log_err("the event loop failed");
	else
		status = 0;
	/* No handler runs past here: what follows acts on the daemon alone. */
	server_stop_threads(srv);
	if (end.reexec)
		reexec_now(d, srv);
	if (end.restart)
		leave_for_restart(d, srv);
	(void)sd_notify(0, "STOPPING=1");
out:
	/* Connections first (anonymous sessions), then leases; main closes the backend. */
	server_destroy(srv);
	delegations_destroy(d->delegations);
	/* The store keeps the leases for the next daemon, if the service manager keeps it. */
	state_close(d->state);
	fdstore_sync();
	registry_destroy(d->reg);
	probes_stop(d->probes);
	free_loop(base, signals, watchdog);
	return status;
}

int main(int argc, char **argv)
{
	struct daemon d = {.started = time(NULL)};
	struct kh_backend *be = NULL;
	struct options opts;
	struct config cfg;
	int status = 1;

	if (parse_options(argc, argv, &opts) < 0)
		return 2;
	/* The loop threads wake each other's loops (event_active): libevent must lock its bases. */
	if (evthread_use_pthreads() < 0) {
		(void)fprintf(stderr, "iommud: cannot set up libevent for threads\n");
		return 1;
	}
	reexec_remember(argv);
	if (load_config(&opts, &cfg) < 0) {
		config_free(&cfg);
		return 1;
	}
	if (opts.check_config) {
		print_config(&cfg);
		config_free(&cfg);
		return 0;
	}
	/* The number alone on stdout: only what stops it from being printed is said. */
	log_set_level(opts.fdstore_max ? LOG_ERR : cfg.log_level);
	(void)signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cfg.max_connections);
	if (dispatch_self_check() < 0) {
		log_err("the method table does not match the schema; this build is broken");
	} else if (open_backend(&cfg, &be) == 0) {
		d.cfg = &cfg;
		d.be = be;
		status = opts.fdstore_max ? print_store_slots(&cfg, be) : serve(&d, &cfg);
		kh_backend_close(be);
	}
	config_free(&cfg);
	return status;
}
