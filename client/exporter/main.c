/* SPDX-License-Identifier: MIT */
/*
 * iommud-exporter: serves the daemon's statistics to Prometheus. Unprivileged by design: it
 * reads the daemon through its RPC socket, like any client, so that the HTTP parser never
 * runs in the root daemon. This file is the command line and the listening socket, taken from
 * systemd (socket activation) or bound here.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <systemd/sd-daemon.h>

#include "server.h"

#define DEFAULT_LISTEN "127.0.0.1:9863"
#define EXIT_USAGE     2

static const char usage[] =
	"Usage: iommud-exporter [OPTION]...\n"
	"Serve iommud's statistics to Prometheus over HTTP.\n"
	"\n"
	"Each GET /metrics asks the daemon (GetStats, over its Unix socket) and answers in the\n"
	"Prometheus text format 0.0.4: RPC calls, errors and latency by method; map and unmap\n"
	"latency by layer, size class and tenant label; quotas and their use by tenant label;\n"
	"devices by state; delegated devices and their VMMs' pinned memory and memlock limits\n"
	"by tenant label; DMA faults; the probe tier. A daemon that is down, or that does not\n"
	"answer within --timeout, gives iommud_up 0. docs/operations.md lists every metric.\n"
	"\n"
	"The exporter needs no privilege: run it as its own user (iommud-exporter.service does,\n"
	"with DynamicUser=yes) in a group the daemon's configuration lets read the statistics.\n"
	"\n"
	"Options:\n"
	"  --listen ADDR:PORT       where to serve HTTP (default " DEFAULT_LISTEN "); an IPv6\n"
	"                           address in brackets, [::1]:9863. Leave it out under socket\n"
	"                           activation: a listening socket passed by systemd (one\n"
	"                           ListenStream=) is served instead.\n"
	"  --socket PATH            the daemon's socket (default $IOMMUD_SOCKET, else\n"
	"                           /run/iommud/iommud.sock)\n"
	"  --timeout SECONDS        how long a scrape waits for the daemon (default 3)\n"
	"  --request-timeout SECONDS\n"
	"                           how long a client has to send a request whole, and to take\n"
	"                           its reply (default 10; longer than --timeout)\n"
	"  --max-connections N      open HTTP connections at most (default 64); further ones\n"
	"                           wait in the kernel's backlog\n"
	"  -h, --help               show this help and exit\n"
	"  --version                show the version and exit\n"
	"\n"
	"Paths: GET or HEAD /metrics, and / (a pointer to /metrics); 404 for other paths, 405\n"
	"for other methods.\n"
	"\n"
	"Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot serve (the address is in use,\n"
	"systemd passed an unusable socket), 2 for a usage error.\n"
	"\n"
	"Example:\n"
	"  iommud-exporter --listen 127.0.0.1:9863 --socket /run/iommud/iommud.sock\n"
	"  curl -s http://127.0.0.1:9863/metrics | grep iommud_up\n";

struct options {
	const char *listen; /* NULL: the default, unless systemd passes a socket */
	struct server_options server;
};

/* Says what was wrong, as one line after the program's name, and where to read more. */
__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;

	(void)fputs("iommud-exporter: ", stderr);
	va_start(ap, fmt);
	(void)vfprintf(stderr, fmt, ap);
	va_end(ap);
	(void)fputs("\nTry 'iommud-exporter --help'.\n", stderr);
	return -EINVAL;
}

static int parse_seconds(const char *option, const char *value, struct timeval *ret_tv)
{
	char *end;
	double seconds;

	errno = 0;
	seconds = strtod(value, &end);
	if (errno || end == value || *end || !isfinite(seconds) || seconds < 0.01 || seconds > 3600)
		return usage_error("%s takes seconds from 0.01 to 3600, not '%s'", option, value);
	ret_tv->tv_sec = (time_t)seconds;
	ret_tv->tv_usec = (suseconds_t)((seconds - (double)ret_tv->tv_sec) * 1e6);
	return 0;
}

static int parse_connections(const char *value, unsigned *ret)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(value, &end, 10);
	if (errno || end == value || *end || n < 1 || n > 65536)
		return usage_error("--max-connections takes a number from 1 to 65536, not '%s'",
				   value);
	*ret = (unsigned)n;
	return 0;
}

static int parse_option(int opt, struct options *o)
{
	switch (opt) {
	case 'l':
		o->listen = optarg;
		return 0;
	case 's':
		o->server.socket_path = optarg;
		return 0;
	case 't':
		return parse_seconds("--timeout", optarg, &o->server.timeout);
	case 'r':
		return parse_seconds("--request-timeout", optarg, &o->server.request_timeout);
	case 'c':
		return parse_connections(optarg, &o->server.max_connections);
	case 'h':
		(void)fputs(usage, stdout);
		exit(0);
	case 'V':
		(void)printf("iommud-exporter %s\n", IOMMUD_VERSION);
		exit(0);
	default:
		return usage_error("unknown option or missing value");
	}
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"socket", required_argument, NULL, 's'},
		{"timeout", required_argument, NULL, 't'},
		{"request-timeout", required_argument, NULL, 'r'},
		{"max-connections", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int opt;

	*o = (struct options){
		.server = {.timeout = {3, 0}, .request_timeout = {10, 0}, .max_connections = 64}};
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1)
		if (parse_option(opt, o) < 0)
			return -EINVAL;
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!evutil_timercmp(&o->server.timeout, &o->server.request_timeout, <))
		return usage_error("--request-timeout must be longer than --timeout: a scrape's "
				   "reply waits for the daemon");
	return 0;
}

/* The socket systemd passed, when there is one: *ret_fd -1 when there is none. */
static int passed_socket(int *ret_fd)
{
	int n = sd_listen_fds(1), fd = SD_LISTEN_FDS_START;

	if (n < 0) {
		(void)fprintf(stderr,
			      "iommud-exporter: cannot take the sockets systemd passed: %s\n",
			      strerror(-n));
		return n;
	}
	if (n > 1) {
		(void)fprintf(stderr,
			      "iommud-exporter: systemd passed %d sockets; give "
			      "iommud-exporter.socket one ListenStream=\n",
			      n);
		return -EBADF;
	}
	if (n == 1 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
		(void)fprintf(stderr, "iommud-exporter: the socket systemd passed is not a "
				      "listening stream socket; use ListenStream= in "
				      "iommud-exporter.socket\n");
		return -EBADF;
	}
	*ret_fd = n == 1 ? fd : -1;
	return 0;
}

static int open_listener(struct event_base *base, const char *listen,
			 struct evconnlistener **ret_listener)
{
	const unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
	struct sockaddr_storage addr;
	int len = sizeof(addr), fd, err = passed_socket(&fd);

	if (err < 0)
		return err;
	if (fd >= 0 && listen)
		return usage_error("--listen %s and a socket from systemd: use one of them",
				   listen);
	if (fd >= 0) {
		if (evutil_make_socket_nonblocking(fd) < 0 ||
		    !(*ret_listener = evconnlistener_new(base, NULL, NULL, flags, 0, fd)))
			return -ENOMEM;
		(void)fprintf(stderr, "iommud-exporter: serving /metrics on the socket systemd "
				      "passed\n");
		return 0;
	}
	if (!listen)
		listen = DEFAULT_LISTEN;
	if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&addr, &len) < 0)
		return usage_error(
			"--listen takes ADDR:PORT, such as 127.0.0.1:9863 or [::1]:9863, "
			"not '%s'",
			listen);
	*ret_listener = evconnlistener_new_bind(base, NULL, NULL, flags | LEV_OPT_REUSEABLE, -1,
						(struct sockaddr *)&addr, len);
	if (!*ret_listener) {
		err = -errno;
		(void)fprintf(stderr,
			      "iommud-exporter: cannot listen on %s: %s; choose another address "
			      "with --listen\n",
			      listen, strerror(-err));
		return err;
	}
	(void)fprintf(stderr, "iommud-exporter: serving http://%s/metrics\n", listen);
	return 0;
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)event_base_loopbreak(arg);
}

static int serve(const struct options *o)
{
	struct event_base *base = event_base_new();
	struct evconnlistener *listener = NULL;
	struct event *term = NULL, *intr = NULL;
	struct server *srv = NULL;
	int err = base ? open_listener(base, o->listen, &listener) : -ENOMEM;

	if (!err)
		err = server_new(base, listener, &o->server, &srv);
	if (!err) {
		term = evsignal_new(base, SIGTERM, on_stop_signal, base);
		intr = evsignal_new(base, SIGINT, on_stop_signal, base);
		if (!term || !intr || evsignal_add(term, NULL) < 0 ||
		    evsignal_add(intr, NULL) < 0 || event_base_dispatch(base) < 0)
			err = -ENOMEM;
	}
	if (err == -ENOMEM)
		(void)fputs("iommud-exporter: out of memory setting up the server\n", stderr);
	server_free(srv);
	if (term)
		event_free(term);
	if (intr)
		event_free(intr);
	if (base)
		event_base_free(base);
	return err;
}

int main(int argc, char **argv)
{
	struct options o;
	int err;

	if (parse_options(argc, argv, &o) < 0)
		return EXIT_USAGE;
	/* A peer that closes early must cost the write, not the process. */
	(void)signal(SIGPIPE, SIG_IGN);
	err = serve(&o);
	if (err == -EINVAL)
		return EXIT_USAGE;
	return err < 0 ? 1 : 0;
}
