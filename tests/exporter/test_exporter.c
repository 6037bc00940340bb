/* SPDX-License-Identifier: MIT */
/*
 * The real iommud-exporter between the real daemon and its scrapers: promtool on its output,
 * a real Prometheus whose query API must give what GetStats says, and the HTTP side against
 * malformed, oversized, slow and many requests, and against a daemon that is down or hung.
 * Every process is started and stopped here; every address is on the loopback.
 */
#define _GNU_SOURCE /* mkdtemp, setgroups */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"
#include "metrics.h"

#define NOBODY	     65534
#define RESPONSE_MAX (1 << 20)

static double now(void)
{
	struct timespec ts;

	CHECK(clock_gettime(CLOCK_REALTIME, &ts) == 0);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static bool have(const char *program)
{
	char cmd[128];

	(void)snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null", program);
	return system(cmd) == 0;
}

/* A listening TCP socket on 127.0.0.1 at a port the kernel chose. */
static int listen_loopback(uint16_t *ret_port)
{
	struct sockaddr_in addr = {.sin_family = AF_INET,
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	CHECK(listen(fd, 256) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
	*ret_port = ntohs(addr.sin_port);
	return fd;
}

static int connect_port(uint16_t port)
{
	struct sockaddr_in addr = {.sin_family = AF_INET,
				   .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	CHECK(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

		CHECK(n > 0);
		data += n;
		len -= (size_t)n;
	}
}

/* Reads until the peer closes, at most timeout_ms; returns the bytes read (resp NUL-ended). */
static size_t read_until_close(int fd, char *resp, size_t size, int timeout_ms)
{
	size_t len = 0;
	double end = now() + timeout_ms / 1000.0;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = (int)((end - now()) * 1000);
		ssize_t n;

		if (left <= 0 || poll(&p, 1, left) <= 0)
			break;
		n = recv(fd, resp + len, size - 1 - len, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == size - 1)
			break;
	}
	resp[len] = '\0';
	return len;
}

/* One request on a connection of its own; the response (headers and body) in a malloc'd
 * string. */
static char *http(uint16_t port, const char *request)
{
	char *resp = malloc(RESPONSE_MAX);
	int fd = connect_port(port);

	CHECK(resp != NULL);
	send_all(fd, request, strlen(request));
	(void)read_until_close(fd, resp, RESPONSE_MAX, 15000);
	(void)close(fd);
	return resp;
}

static int status_of(const char *resp)
{
	int status = 0;

	return sscanf(resp, "HTTP/1.%*d %d", &status) == 1 ? status : 0;
}

static char *get(uint16_t port, const char *path)
{
	char request[256];

	(void)snprintf(request, sizeof(request),
		       "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
	return http(port, request);
}

static const char *body_of(const char *resp)
{
	const char *body = strstr(resp, "\r\n\r\n");

	CHECK(body != NULL);
	return body + 4;
}

/* The value of the sample "series value" in exposition text, or NAN. */
static double sample_value(const char *text, const char *series)
{
	size_t n = strlen(series);

	for (const char *p = text; (p = strstr(p, series)); p++)
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return NAN;
}

/* ---- the exporter ------------------------------------------------------------------------ */

struct exporter {
	pid_t pid;
	uint16_t port;
};

/* Starts the exporter as systemd would, on a listening socket passed as fd 3; as nobody when
 * unprivileged and the test may change uid. */
static void exporter_start(struct exporter *e, const char *socket_path, bool unprivileged)
{
	int fd = listen_loopback(&e->port);
	char pid[16];

	e->pid = fork();
	CHECK(e->pid >= 0);
	if (e->pid == 0) {
		if (dup2(fd, 3) < 0 || fcntl(3, F_SETFD, 0) < 0)
			_exit(127);
		(void)snprintf(pid, sizeof(pid), "%d", (int)getpid());
		if (setenv("LISTEN_FDS", "1", 1) < 0 || setenv("LISTEN_PID", pid, 1) < 0)
			_exit(127);
		if (unprivileged && geteuid() == 0 &&
		    (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0))
			_exit(127);
		/* after the uid change, which clears it: a test that dies takes the exporter along
		 */
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(EXPORTER_BIN, "iommud-exporter", "--socket", socket_path, "--timeout", "1",
		      "--request-timeout", "2", "--max-connections", "8", (char *)NULL);
		_exit(127);
	}
	(void)close(fd);
}

static void exporter_stop(struct exporter *e)
{
	int status;

	CHECK(kill(e->pid, SIGTERM) == 0);
	CHECK(waitpid(e->pid, &status, 0) == e->pid);
	/* 0: it stopped cleanly, and under ASan it leaked nothing */
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

/* /metrics, checked to be a 200 in the exposition format; its body in a malloc'd string. */
static char *scrape(uint16_t port)
{
	char *resp = get(port, "/metrics");

	CHECK_EQ(status_of(resp), 200);
	CHECK(strstr(resp, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
	memmove(resp, body_of(resp), strlen(body_of(resp)) + 1);
	return resp;
}

static double scrape_up(uint16_t port, double *ret_seconds)
{
	double start = now(), up;
	char *text = scrape(port);

	if (ret_seconds)
		*ret_seconds = now() - start;
	up = sample_value(text, "iommud_up");
	free(text);
	return up;
}

/* The exporter's HTTP connections: its sockets, less the listener and its connection to
 * the daemon when a scrape holds one. */
static int exporter_sockets(const struct exporter *e)
{
	char cmd[96];
	FILE *ls;
	int n = -1;

	(void)snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd | grep -c socket:", (int)e->pid);
	ls = popen(cmd, "r");
	CHECK(ls != NULL);
	CHECK(fscanf(ls, "%d", &n) == 1);
	(void)pclose(ls);
	return n;
}

FIXTURE(exporter)
{
	struct daemon_fixture d;
	struct exporter e;
	bool daemon_stopped;
};

FIXTURE_SETUP(exporter)
{
	fixture_start(&self->d, "[uid 0]\naccess = write\n[uid 65534]\naccess = read\n",
		      "emu0 emu1");
	exporter_start(&self->e, self->d.socket_path, true);
	/* the exporter is up once it answers */
	for (int i = 0; i < 100; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in addr = {.sin_family = AF_INET,
					   .sin_port = htons(self->e.port),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

		CHECK(fd >= 0);
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
			(void)close(fd);
			break;
		}
		(void)close(fd);
		pause_ms(50);
	}
}

FIXTURE_TEARDOWN(exporter)
{
	exporter_stop(&self->e);
	if (!self->daemon_stopped)
		fixture_stop(&self->d);
}

TEST_F(exporter, serves_metrics_paths_and_methods)
{
	char *resp, *text = scrape(self->e.port);

	CHECK_EQ(sample_value(text, "iommud_up"), 1);
	CHECK(strstr(text, "# TYPE iommud_rpc_calls_total counter\n"));
	CHECK(sample_value(text, "iommud_rpc_calls_total{method=\"get_stats\"}") >= 1);
	free(text);
	resp = get(self->e.port, "/");
	CHECK_EQ(status_of(resp), 200);
	CHECK(strstr(resp, "href=\"/metrics\""));
	free(resp);
	resp = get(self->e.port, "/nope");
	CHECK_EQ(status_of(resp), 404);
	free(resp);
	resp = http(self->e.port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
				  "Connection: close\r\n\r\n");
	CHECK_EQ(status_of(resp), 405);
	free(resp);
	resp = http(self->e.port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	CHECK_EQ(status_of(resp), 200);
	CHECK(strstr(resp, "\r\nContent-Length: "));
	CHECK(strcmp(body_of(resp), "") == 0);
	free(resp);
}

TEST_F(exporter, runs_unprivileged)
{
	char path[64], line[256];
	FILE *status;
	unsigned uid = 0;

	if (geteuid() != 0)
		SKIP("changing the exporter's uid needs root");
	/* once it answers, it runs as what it will stay */
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
	(void)snprintf(path, sizeof(path), "/proc/%d/status", (int)self->e.pid);
	status = fopen(path, "r");
	CHECK(status != NULL);
	while (fgets(line, sizeof(line), status))
		if (sscanf(line, "Uid: %u", &uid) == 1)
			break;
	(void)fclose(status);
	CHECK_EQ(uid, NOBODY);
}

TEST_F(exporter, promtool_accepts_live_output)
{
	char *text;
	FILE *promtool;
	int status;

	if (!have("promtool"))
		SKIP("promtool not found (Debian package prometheus; install-deps.sh installs it)");
	text = scrape(self->e.port);
	promtool = popen("promtool check metrics", "w");
	CHECK(promtool != NULL);
	CHECK(fputs(text, promtool) >= 0);
	status = pclose(promtool);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	free(text);
}

TEST_F(exporter, survives_malformed_requests)
{
	static const char *const bad[] = {
		"GARBAGE\r\n\r\n",
		"GET /metrics HTTP/9.9\r\n\r\n",
		"GET\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
		"GET /%zz HTTP/1.1\r\n\r\n",
		"\x01\x02\x03\xff\xfe\r\n\r\n",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *resp = http(self->e.port, bad[i]);
		int status = status_of(resp);

		/* refused, or the connection closed without an answer */
		CHECK(status == 0 || status >= 400);
		free(resp);
		CHECK_EQ(scrape_up(self->e.port, NULL), 1);
	}
}

TEST_F(exporter, survives_oversized_requests)
{
	size_t big = 256 * 1024;
	char *request = malloc(big + 128), *resp;
	int n;

	CHECK(request != NULL);
	/* a header far past the limit */
	n = snprintf(request, 128, "GET /metrics HTTP/1.1\r\nX-Big: ");
	memset(request + n, 'a', big);
	strcpy(request + n + big, "\r\n\r\n");
	resp = http(self->e.port, request);
	CHECK(status_of(resp) == 0 || status_of(resp) >= 400);
	free(resp);
	/* a body past the limit */
	resp = http(self->e.port, "GET /metrics HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n");
	CHECK(status_of(resp) == 0 || status_of(resp) >= 400);
	free(resp);
	free(request);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
}

/* A peer that sends its headers a line at a time, for ever, is closed at the request deadline
 * (2 s here), however often it sends. */
TEST_F(exporter, closes_slow_loris_in_time)
{
	int fd = connect_port(self->e.port);
	double start = now(), closed = 0;
	char line[32];

	send_all(fd, "GET /metrics HTTP/1.1\r\n", 23);
	for (int i = 0; i < 40 && !closed; i++) {
		pause_ms(200);
		(void)snprintf(line, sizeof(line), "X-%d: y\r\n", i);
		if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0)
			closed = now();
		if (i == 2)
			CHECK_EQ(scrape_up(self->e.port, NULL), 1);
	}
	CHECK(closed > 0);
	CHECK(closed - start < 2.0 + 1.5);
	(void)close(fd);
}

/* Far more connections than the cap (8), all idle: a scrape still gets in at once, and the
 * idle ones are closed. */
TEST_F(exporter, survives_many_connections)
{
	enum { MANY = 100 };
	int fds[MANY], baseline = exporter_sockets(&self->e);
	double seconds;

	for (int i = 0; i < MANY; i++)
		fds[i] = connect_port(self->e.port);
	CHECK_EQ(scrape_up(self->e.port, &seconds), 1);
	CHECK(seconds < 1.5);
	pause_ms(3000);
	CHECK(exporter_sockets(&self->e) <= baseline);
	for (int i = 0; i < MANY; i++)
		(void)close(fds[i]);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
}

/* A peer that asks and asks and never reads: the exporter serves others meanwhile, and drops
 * it once its reply is overdue. */
TEST_F(exporter, survives_slow_reader)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), small = 4096;
	struct sockaddr_in addr = {.sin_family = AF_INET,
				   .sin_port = htons(self->e.port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int baseline = exporter_sockets(&self->e);
	static const char request[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

	CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) == 0);
	CHECK(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
	for (int i = 0; i < 200; i++)
		if (send(fd, request, sizeof(request) - 1, MSG_NOSIGNAL) < 0)
			break;
	pause_ms(300);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
	pause_ms(3000);
	CHECK(exporter_sockets(&self->e) <= baseline);
	(void)close(fd);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
}

TEST_F(exporter, daemon_down_gives_up_0_quickly)
{
	double seconds;

	fixture_stop(&self->d);
	self->daemon_stopped = true;
	CHECK_EQ(scrape_up(self->e.port, &seconds), 0);
	CHECK(seconds < 0.5);
}

/* A daemon that is stopped accepts the connection and never answers: the scrape waits its
 * --timeout (1 s here), no longer, and the next scrape after it resumes sees it again. */
TEST_F(exporter, daemon_hung_gives_up_0_within_timeout)
{
	double seconds;

	CHECK(kill(self->d.pid, SIGSTOP) == 0);
	CHECK_EQ(scrape_up(self->e.port, &seconds), 0);
	CHECK(kill(self->d.pid, SIGCONT) == 0);
	CHECK(seconds >= 0.9 && seconds < 2.0);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
}
