// SPDX-License-Identifier: MIT
/*
 * iommud: owns IOMMU domains for other programs and serves them over a SOCK_SEQPACKET socket.
 * main() owns the configuration, the backend, the registry of tenants and the server, and
 * releases them in the reverse order on SIGTERM or SIGINT.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <kh/kh.h>

#include "config.h"
#include "dispatch.h"
#include "log.h"
#include "server.h"
#include "session.h"
#include "status.h"

static const char usage[] =
	"Usage: iommud [OPTION]...\n"
	"\n"
	"Own IOMMU domains on behalf of other programs. Container and VM managers connect to\n"
	"the daemon's socket (with libiommuctl or the iommuctl command) to allocate DMA\n"
	"domains, attach VFIO devices and map their memory for device DMA. Each client\n"
	"identity (uid, and cgroup for services and containers) gets its own isolated IOMMU\n"
	"context, with the access and quotas the configuration file grants it.\n"
	"\n"
	"Options (each overrides the configuration file):\n"
	"  -c, --config FILE      configuration file (default " IOMMUD_DEFAULT_CONFIG ";\n"
	"                         a missing default file means built-in defaults: root may\n"
	"                         do everything, everyone else may only read)\n"
	"  -s, --socket PATH      listening socket (default " IOMMUD_DEFAULT_SOCKET ");\n"
	"                         ignored under systemd socket activation\n"
	"  -b, --backend KIND     auto, iommufd or emulated (default auto: iommufd when\n"
	"                         /dev/iommu exists, the emulated IOMMU otherwise)\n"
	"  -t, --topology FILE    devices of the emulated backend (docs/operations.md);\n"
	"                         default: one device, emu0\n"
	"  -l, --log-level LEVEL  err, warning, notice, info (default) or debug; debug logs\n"
	"                         every map and unmap\n"
	"      --check-config     read the configuration, print what it grants, and exit\n"
	"  -h, --help             show this help and exit\n"
	"  -V, --version          show the version and exit\n"
	"\n"
	"Signals: SIGTERM and SIGINT stop the daemon; every mapping is removed from the\n"
	"IOMMU before the memory behind it is released. SIGHUP is logged and ignored:\n"
	"configuration changes take effect at the next start.\n"
	"\n"
	"Exit status: 0 after a clean stop, 1 when the daemon cannot start (the message says\n"
	"why), 2 on a usage error.\n"
	"\n"
	"See docs/operations.md for the configuration file, the systemd units and the logs,\n"
	"and docs/protocol.md for the protocol.\n";

struct options {
	const char *config_path;
	bool config_given;
	const char *socket_path;
	const char *backend;
	const char *topology;
	const char *log_level;
	bool check_config;
};

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"socket", required_argument, NULL, 's'},
		{"backend", required_argument, NULL, 'b'},
		{"topology", required_argument, NULL, 't'},
		{"log-level", required_argument, NULL, 'l'},
		{"check-config", no_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int opt;

	*o = (struct options){.config_path = IOMMUD_DEFAULT_CONFIG};
	while ((opt = getopt_long(argc, argv, "c:s:b:t:l:hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			o->config_path = optarg;
			o->config_given = true;
			break;
		case 's':
			o->socket_path = optarg;
			break;
		case 'b':
			o->backend = optarg;
			break;
		case 't':
			o->topology = optarg;
			break;
		case 'l':
			o->log_level = optarg;
			break;
		case 'C':
			o->check_config = true;
			break;
		case 'h':
			fputs(usage, stdout);
			exit(0);
		case 'V':
			printf("iommud %s\n", IOMMUD_VERSION);
			exit(0);
		default:
			fprintf(stderr, "Try 'iommud --help'.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "iommud: unexpected argument '%s'\nTry 'iommud --help'.\n",
			argv[optind]);
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
		fprintf(stderr, "iommud: out of memory\n");
		return rc;
	}
	if (o->config_given || access(o->config_path, F_OK) == 0) {
		rc = config_load(cfg, o->config_path, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "iommud: %s\n", err);
			return rc;
		}
	}
	if (o->socket_path &&
	    (free(cfg->socket_path), !(cfg->socket_path = strdup(o->socket_path))))
		return -ENOMEM;
	if (o->topology && (free(cfg->topology), !(cfg->topology = strdup(o->topology))))
		return -ENOMEM;
	if (o->backend) {
		if (strcmp(o->backend, "auto") && strcmp(o->backend, "iommufd") &&
		    strcmp(o->backend, "emulated")) {
			fprintf(stderr,
				"iommud: --backend must be auto, iommufd or emulated, not "
				"'%s'\n",
				o->backend);
			return -EINVAL;
		}
		free(cfg->backend);
		if (!(cfg->backend = strdup(o->backend)))
			return -ENOMEM;
	}
	if (o->log_level) {
		rc = log_parse_level(o->log_level);
		if (rc < 0) {
			fprintf(stderr,
				"iommud: --log-level must be err, warning, notice, info or "
				"debug, not '%s'\n",
				o->log_level);
			return rc;
		}
		cfg->log_level = rc;
	}
	return 0;
}

static const char *access_name(enum access a)
{
	return a == ACCESS_WRITE ? "write" : a == ACCESS_READ ? "read" : "none";
}

static void print_config(const struct config *cfg)
{
	printf("socket %s (mode %04o), backend %s, topology %s, log level %d, "
	       "max-connections %u\n",
	       cfg->socket_path, (unsigned)cfg->socket_mode, cfg->backend,
	       cfg->topology ? cfg->topology : "(default)", cfg->log_level, cfg->max_connections);
	printf("peers matched by no section: %s\n", access_name(cfg->default_access));
	for (size_t i = 0; i < cfg->n_rules; i++) {
		const struct access_rule *r = &cfg->rules[i];

		printf("[%s] %s %u: access %s, max-domains %llu, max-mappings %llu, "
		       "max-pinned %llu, devices:",
		       r->section, r->is_group ? "gid" : "uid", r->id, access_name(r->access),
		       (unsigned long long)r->max_domains, (unsigned long long)r->max_mappings,
		       (unsigned long long)r->max_pinned_bytes);
		for (size_t d = 0; d < r->n_devices; d++)
			printf(" %s", r->devices[d]);
		printf("%s\n", r->n_devices ? "" : " (none)");
	}
}

static int open_backend(const struct config *cfg, struct kh_backend **be)
{
	bool iommufd = strcmp(cfg->backend, "iommufd") == 0 ||
		       (strcmp(cfg->backend, "auto") == 0 && access("/dev/iommu", F_OK) == 0);
	int rc =
		iommufd ? kh_backend_open_iommufd(be) : kh_backend_open_emulated(cfg->topology, be);

	if (rc < 0) {
		log_err("cannot open the %s backend: %s", iommufd ? "iommufd" : "emulated",
			kh_last_error());
		return rc;
	}
	log_notice("backend %s with %zu devices%s", kh_backend_name(*be), kh_device_count(*be),
		   iommufd ? ""
			   : " (no kernel IOMMU is used: mappings only exist in the "
			     "emulation)");
	return 0;
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

/* Every connection is a descriptor, and the usual soft limit (1024) is below the default
 * max-connections: take the hard limit, and say so when even that is too low. */
static void raise_fd_limit(unsigned max_connections)
{
	struct rlimit limit;

	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return;
	limit.rlim_cur = limit.rlim_max;
	setrlimit(RLIMIT_NOFILE, &limit);
	if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (rlim_t)max_connections + 64)
		log_warning("the open-file limit (%llu) is below max-connections (%u) plus the "
			    "daemon's own files; raise LimitNOFILE or lower max-connections",
			    (unsigned long long)limit.rlim_cur, max_connections);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	log_notice("signal %d: stopping", (int)sig);
	event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
	struct daemon d = {.started = time(NULL)};
	struct event *ev_term = NULL, *ev_int = NULL, *ev_hup = NULL;
	struct event_base *base = NULL;
	struct server *srv = NULL;
	struct kh_backend *be = NULL;
	struct options opts;
	struct config cfg;
	int status = 1;

	if (parse_options(argc, argv, &opts) < 0)
		return 2;
	if (load_config(&opts, &cfg) < 0) {
		config_free(&cfg);
		return 1;
	}
	if (opts.check_config) {
		print_config(&cfg);
		config_free(&cfg);
		return 0;
	}
	log_set_level(cfg.log_level);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cfg.max_connections);
	if (dispatch_self_check() < 0) {
		log_err("the method table does not match the schema; this build is broken");
		goto out;
	}
	if (open_backend(&cfg, &be) < 0)
		goto out;
	d.cfg = &cfg;
	d.be = be;
	d.reg = registry_create(be, &cfg);
	base = event_base_new();
	if (!d.reg || !base || server_create(base, &d, cfg.max_connections, &srv) < 0) {
		log_err("out of memory at start");
		goto out;
	}
	if (server_listen(srv, cfg.socket_path, cfg.socket_mode) < 0) {
		log_err("%s", failure_message());
		goto out;
	}
	ev_term = evsignal_new(base, SIGTERM, on_signal, base);
	ev_int = evsignal_new(base, SIGINT, on_signal, base);
	ev_hup = evsignal_new(base, SIGHUP, on_hangup, NULL);
	if (!ev_term || !ev_int || !ev_hup || event_add(ev_term, NULL) < 0 ||
	    event_add(ev_int, NULL) < 0 || event_add(ev_hup, NULL) < 0) {
		log_err("cannot watch signals");
		goto out;
	}
	sd_notifyf(0, "READY=1\nSTATUS=serving on the %s backend", kh_backend_name(be));
	log_notice("ready (iommud %s, protocol %d)", IOMMUD_VERSION, IOMMUD_PROTOCOL_VERSION);
	if (event_base_dispatch(base) < 0)
		log_err("the event loop failed");
	else
		status = 0;
	sd_notify(0, "STOPPING=1");
out:
	/* Connections first (anonymous sessions), then leases, then the backend they used. */
	server_destroy(srv);
	registry_destroy(d.reg);
	if (ev_term)
		event_free(ev_term);
	if (ev_int)
		event_free(ev_int);
	if (ev_hup)
		event_free(ev_hup);
	if (base)
		event_base_free(base);
	if (be)
		kh_backend_close(be);
	config_free(&cfg);
	return status;
}
