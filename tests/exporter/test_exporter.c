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
#include <names.h>

#include "daemon_fixture.h"
#include "harness.h"
#include "metrics.h"
#include "promtool_check.h"

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

/* Whether something listens on port, within 10 s. */
static bool listening(uint16_t port)
{
	for (int i = 0; i < 100; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in addr = {.sin_family = AF_INET,
					   .sin_port = htons(port),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		bool up = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;

		(void)close(fd);
		if (up)
			return true;
		pause_ms(100);
	}
	return false;
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

/* Waits, at most 10 s, for the exporter to be down to at most n sockets. */
static bool exporter_sockets_fall_to(const struct exporter *e, int n)
{
	for (int i = 0; i < 100; i++) {
		if (exporter_sockets(e) <= n)
			return true;
		pause_ms(100);
	}
	return false;
}

FIXTURE(exporter)
{
	struct daemon_fixture d;
	struct exporter e;
	bool daemon_stopped;
};

FIXTURE_SETUP(exporter)
{
	/* As deployed (systemd/iommud.conf.example): the exporter's section makes it an observer,
	 * which sees every tenant's figures, not only its own. */
	fixture_start(&self->d,
		      "[uid 0]\naccess = write\n[uid 65534]\naccess = read\nstats = all\n",
		      "emu0 emu1");
	exporter_start(&self->e, self->d.socket_path, true);
	CHECK(listening(self->e.port));
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
	char *text = scrape(self->e.port);

	check_with_promtool(text);
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
	CHECK(exporter_sockets_fall_to(&self->e, baseline));
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
	CHECK(exporter_sockets_fall_to(&self->e, baseline));
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

/* The process a scrape asks the daemon from; 0 until there is one (within 1 s). */
static pid_t scrape_child(const struct exporter *e)
{
	char path[64];
	int child = 0;

	(void)snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)e->pid, (int)e->pid);
	for (int i = 0; i < 100 && child == 0; i++) {
		FILE *f = fopen(path, "r");

		CHECK(f != NULL);
		if (fscanf(f, "%d", &child) != 1)
			child = 0;
		(void)fclose(f);
		if (child == 0)
			pause_ms(10);
	}
	return child;
}

/* Whether pid is gone (or a zombie), within 2 s. */
static bool process_ends(pid_t pid)
{
	char path[32], stat[256];

	(void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (int i = 0; i < 200; i++) {
		FILE *f = fopen(path, "r");
		const char *state;

		if (!f)
			return true;
		state = fgets(stat, sizeof(stat), f) ? strrchr(stat, ')') : NULL;
		(void)fclose(f);
		if (state && state[1] == ' ' && state[2] == 'Z')
			return true;
		pause_ms(10);
	}
	return false;
}

/* An exporter killed outright while it waits for a hung daemon takes the process asking the
 * daemon along, instead of leaving it blocked in the call. */
TEST_F(exporter, scrape_child_dies_with_the_exporter)
{
	static const char request[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
	int status, fd;
	bool child_ended;
	pid_t child;

	CHECK(kill(self->d.pid, SIGSTOP) == 0);
	fd = connect_port(self->e.port);
	CHECK(write(fd, request, sizeof(request) - 1) == (ssize_t)(sizeof(request) - 1));
	child = scrape_child(&self->e);
	CHECK(child > 0);
	CHECK(kill(self->e.pid, SIGKILL) == 0);
	CHECK(waitpid(self->e.pid, &status, 0) == self->e.pid);
	child_ended = process_ends(child);
	CHECK(kill(self->d.pid, SIGCONT) == 0); /* first, so that a failure leaves nothing hung */
	CHECK(child_ended);
	(void)close(fd);
	/* a new exporter, serving (so with its handlers), for the teardown to stop */
	exporter_start(&self->e, self->d.socket_path, true);
	CHECK_EQ(scrape_up(self->e.port, NULL), 1);
}

/* ---- a real Prometheus --------------------------------------------------------------------- */

struct prometheus {
	pid_t pid;
	uint16_t port;
	char dir[64];
};

static void prometheus_start(struct prometheus *p, uint16_t target)
{
	char path[128], listen[32], config[96], storage[96];
	FILE *yml;
	int fd = listen_loopback(&p->port), log;

	(void)close(fd); /* the port stays free for Prometheus, all on the loopback */
	(void)snprintf(p->dir, sizeof(p->dir), "/tmp/iommud-prometheus-XXXXXX");
	CHECK(mkdtemp(p->dir) != NULL);
	(void)snprintf(config, sizeof(config), "%s/prometheus.yml", p->dir);
	yml = fopen(config, "w");
	CHECK(yml != NULL);
	(void)fprintf(yml,
		      "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
		      "scrape_configs:\n  - job_name: iommud\n    static_configs:\n"
		      "      - targets: ['127.0.0.1:%u']\n",
		      (unsigned)target);
	CHECK(fclose(yml) == 0);
	(void)snprintf(listen, sizeof(listen), "127.0.0.1:%u", (unsigned)p->port);
	(void)snprintf(storage, sizeof(storage), "%s/data", p->dir);
	(void)snprintf(path, sizeof(path), "%s/log", p->dir);
	p->pid = fork();
	CHECK(p->pid >= 0);
	if (p->pid == 0) {
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		log = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (log < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
			_exit(127);
		execlp("prometheus", "prometheus", "--config.file", config, "--storage.tsdb.path",
		       storage, "--web.listen-address", listen, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 300 && listening(p->port); i++) {
		char *resp = get(p->port, "/-/ready");
		int status = status_of(resp);

		free(resp);
		if (status == 200)
			return;
		pause_ms(100);
	}
	(void)fprintf(stderr, "Prometheus did not get ready; its log is in %s\n", path);
	CHECK(false);
}

static void prometheus_stop(struct prometheus *p)
{
	char cmd[96];
	int status;

	CHECK(kill(p->pid, SIGTERM) == 0);
	CHECK(waitpid(p->pid, &status, 0) == p->pid);
	(void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
	CHECK(system(cmd) == 0);
}

/* The value of an instant query that must select exactly one series. */
static double query(const struct prometheus *p, const char *promql)
{
	char path[1024] = "/api/v1/query?query=", *resp;
	size_t n = strlen(path);
	const char *value;
	double v;

	for (const unsigned char *c = (const unsigned char *)promql; *c; c++) {
		CHECK(n + 4 < sizeof(path));
		if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		    (*c >= '0' && *c <= '9') || *c == '_' || *c == '.')
			path[n++] = (char)*c;
		else
			n += (size_t)snprintf(path + n, 4, "%%%02X", *c);
	}
	path[n] = '\0';
	resp = get(p->port, path);
	CHECK_EQ(status_of(resp), 200);
	value = strstr(resp, "\"value\":[");
	if (!value || strstr(value + 1, "\"value\":[")) {
		(void)fprintf(stderr, "%s: not one series: %s\n", promql, body_of(resp));
		CHECK(false);
	}
	value = strchr(value, ',');
	CHECK(value && value[1] == '"');
	v = strtod(value + 2, NULL);
	free(resp);
	return v;
}

static void expect(const struct prometheus *p, const char *promql, double want)
{
	double got = query(p, promql);

	if (fabs(got - want) > 1e-9 * fmax(1, fabs(want))) {
		(void)fprintf(stderr, "%s: Prometheus has %.17g, GetStats says %.17g\n", promql,
			      got, want);
		CHECK(false);
	}
}

/* The name of a value the daemon sent: the daemon and this test share the schema, so every
 * value has one. */
static const char *known_name(struct iommud_names *names, int value)
{
	const char *name = iommud_name(names, value);

	CHECK(name != NULL);
	return name;
}

static void expect_histogram(const struct prometheus *p, const char *name, const char *labels,
			     const Iommud__V1__Histogram *h)
{
	char promql[512], le[METRICS_SECONDS_MAX];
	uint64_t cumulative = 0, total = 0;

	for (size_t i = 0; i < h->n_buckets; i++)
		total += h->buckets[i];
	total = total > h->count ? total : h->count;
	for (unsigned i = 0; i < 36; i++) {
		cumulative += i < h->n_buckets ? h->buckets[i] : 0;
		metrics_seconds((UINT64_C(2) << i) - 1, le);
		(void)snprintf(promql, sizeof(promql), "%s_bucket{%s,le=\"%s\"}", name, labels, le);
		expect(p, promql, (double)cumulative);
	}
	(void)snprintf(promql, sizeof(promql), "%s_bucket{%s,le=\"+Inf\"}", name, labels);
	expect(p, promql, (double)total);
	(void)snprintf(promql, sizeof(promql), "%s_count{%s}", name, labels);
	expect(p, promql, (double)total);
	(void)snprintf(promql, sizeof(promql), "%s_sum{%s}", name, labels);
	expect(p, promql, (double)h->sum_ns / 1e9);
}

/* Every method but get_stats, which each scrape and this test's own call count. */
static void expect_methods(const struct prometheus *p, const Iommud__V1__GetStatsReply *s)
{
	char promql[256], labels[128];

	for (size_t i = 0; i < s->n_methods; i++) {
		const Iommud__V1__MethodStats *m = s->methods[i];

		if (strcmp(m->method, "get_stats") == 0)
			continue;
		(void)snprintf(labels, sizeof(labels), "method=\"%s\"", m->method);
		(void)snprintf(promql, sizeof(promql), "iommud_rpc_calls_total{%s}", labels);
		expect(p, promql, (double)m->calls);
		(void)snprintf(promql, sizeof(promql), "iommud_rpc_errors_total{%s}", labels);
		expect(p, promql, (double)m->errors);
		for (size_t j = 0; j < m->n_codes; j++) {
			(void)snprintf(promql, sizeof(promql),
				       "iommud_rpc_responses_total{%s,code=\"%s\"}", labels,
				       iommuctl_code_name(m->codes[j]->code));
			expect(p, promql, (double)m->codes[j]->calls);
		}
		if (m->latency && m->latency->n_buckets)
			expect_histogram(p, "iommud_rpc_duration_seconds", labels, m->latency);
	}
}

static void expect_map_path(const struct prometheus *p, const Iommud__V1__GetStatsReply *s)
{
	char promql[512], labels[256];

	for (size_t i = 0; i < s->n_map_latency; i++) {
		const Iommud__V1__MapLatency *m = s->map_latency[i];

		(void)snprintf(labels, sizeof(labels),
			       "op=\"%s\",layer=\"%s\",size_class=\"%s\",tenant=\"%s\"",
			       known_name(&iommud_map_op_names, m->op),
			       known_name(&iommud_map_layer_names, m->layer),
			       known_name(&iommud_size_class_names, m->size_class), m->tenant);
		(void)snprintf(promql, sizeof(promql), "iommud_map_operations_total{%s}", labels);
		expect(p, promql, m->latency ? (double)m->latency->count : 0);
		(void)snprintf(promql, sizeof(promql), "iommud_map_bytes_total{%s}", labels);
		expect(p, promql, (double)m->bytes);
		if (m->latency && m->latency->n_buckets)
			expect_histogram(p, "iommud_map_duration_seconds", labels, m->latency);
	}
}

/* Sessions are left out: the exporter's own connection has one while it scrapes. */
static void expect_tenants(const struct prometheus *p, const Iommud__V1__GetStatsReply *s)
{
	char promql[256];

	for (size_t i = 0; i < s->n_tenant_stats; i++) {
		const Iommud__V1__TenantStats *t = s->tenant_stats[i];
		const Iommud__V1__Quota *q = t->quota;
		const struct {
			const char *family;
			uint64_t value;
		} gauges[] = {
			{"members", t->tenants},
			{"leases", t->leases},
			{"domains", q ? q->domains : 0},
			{"domains_limit", q ? q->max_domains : 0},
			{"mappings", q ? q->mappings : 0},
			{"mappings_limit", q ? q->max_mappings : 0},
			{"pinned_bytes", q ? q->pinned_bytes : 0},
			{"pinned_bytes_limit", q ? q->max_pinned_bytes : 0},
			{"leases_limit", q ? q->max_leases : 0},
			{"page_table_bytes", q ? q->page_table_bytes : 0},
			{"page_table_bytes_limit", q ? q->max_page_table_bytes : 0},
			{"maps", q ? q->maps : 0},
			{"maps_limit", q ? q->max_maps : 0},
		};

		for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
			(void)snprintf(promql, sizeof(promql), "iommud_tenant_%s{tenant=\"%s\"}",
				       gauges[g].family, t->tenant);
			expect(p, promql, (double)gauges[g].value);
		}
	}
}

/* The daemon-wide ceilings (a limit of 0 is none and has no series), the refused connections by
 * reason and the readers' waits. */
static void expect_ceilings(const struct prometheus *p, const Iommud__V1__GetStatsReply *s)
{
	const Iommud__V1__Ceilings *ceil = s->ceilings;
	char promql[256];

	CHECK(ceil != NULL && ceil->max_maps > 0 && ceil->max_leases > 0);
	expect(p, "iommud_maps", (double)ceil->maps);
	expect(p, "iommud_maps_limit", (double)ceil->max_maps);
	expect(p, "iommud_leases_limit", (double)ceil->max_leases);
	expect(p, "iommud_pinned_bytes", (double)ceil->pinned_bytes);
	expect(p, "count(iommud_pinned_bytes_limit) or vector(0)", ceil->max_pinned_bytes ? 1 : 0);
	expect(p, "iommud_failed_releases_total", (double)ceil->failed_releases);
	expect(p, "iommud_rate_limited_total", (double)s->rate_limited);
	expect(p, "iommud_kept_maps", (double)s->kept_maps);
	expect(p, "iommud_kept_maps_taken_up_total", (double)s->kept_maps_taken_up);
	expect(p, "iommud_kept_maps_given_up_total", (double)s->kept_maps_given_up);
	for (size_t i = 0; i < s->n_refused_connections; i++) {
		(void)snprintf(promql, sizeof(promql),
			       "iommud_refused_connections_total{reason=\"%s\"}",
			       s->refused_connections[i]->reason);
		expect(p, promql, (double)s->refused_connections[i]->connections);
	}
}

static void expect_devices_and_probes(const struct prometheus *p,
				      const Iommud__V1__GetStatsReply *s)
{
	char promql[256];

	for (size_t i = 0; i < s->n_devices; i++) {
		double in_state = 0;

		for (size_t j = 0; j < s->n_devices; j++)
			in_state += strcmp(s->devices[j]->state, s->devices[i]->state) == 0;
		(void)snprintf(promql, sizeof(promql), "iommud_devices{state=\"%s\"}",
			       s->devices[i]->state);
		expect(p, promql, in_state);
		(void)snprintf(promql, sizeof(promql),
			       "iommud_device_dma_faults_total{device=\"%s\"}",
			       s->devices[i]->device);
		expect(p, promql, (double)s->devices[i]->dma_faults);
	}
	if (!s->probes)
		return;
	(void)snprintf(promql, sizeof(promql), "iommud_probe_tier{tier=\"%s\"}",
		       known_name(&iommud_probe_tier_names, s->probes->tier));
	expect(p, promql, 1);
	expect(p, "iommud_probes_detached", (double)s->probes->n_detached);
	expect(p, "iommud_probe_dropped_events_total", (double)s->probes->dropped_events);
	expect(p, "iommud_probe_in_process", s->probes->in_process);
	expect(p, "iommud_probe_attached", s->probes->attached);
}

/* Calls whose counts then stay put: lists, a refusal, a domain with a 2 MiB mapping, and a
 * packet the daemon rejects. */
static void make_activity(struct daemon_fixture *d, struct iommuctl *c)
{
	uint32_t domain;
	uint64_t iova;
	int memfd, raw;

	for (int i = 0; i < 3; i++) {
		Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
		Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
		Iommud__V1__Response *resp;

		req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
		req.list_devices = &list;
		CHECK_OK(iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL));
		iommuctl_response_free(resp);
	}
	CHECK(iommuctl_free_domain(c, 999) < 0);
	CHECK_OK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &domain));
	memfd = iommuctl_memfd("exporter-test", 2 << 20);
	CHECK(memfd >= 0);
	CHECK_OK(iommuctl_map_fd(c, domain, memfd, 0, 2 << 20,
				 IOMMUCTL_PROT_READ | IOMMUCTL_PROT_WRITE, false, 0, &iova));
	(void)close(memfd);
	raw = raw_connect(d);
	raw_send(raw, "\xff\xff\xff", 3, NULL, 0);
	(void)close(raw);
}

static Iommud__V1__GetStatsReply *get_stats(struct iommuctl *c, Iommud__V1__Response **ret_resp)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__GetStatsRequest stats = IOMMUD__V1__GET_STATS_REQUEST__INIT;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_STATS;
	req.get_stats = &stats;
	CHECK_OK(iommuctl_call(c, &req, NULL, 0, ret_resp, NULL, 0, NULL));
	CHECK((*ret_resp)->get_stats != NULL);
	return (*ret_resp)->get_stats;
}

/* Prometheus scrapes the exporter; once it has a scrape made after the activity, its query API
 * gives, for every series that stays put, what GetStats says. The exporter runs as this test
 * does, so that both see the same tenant labels. */
TEST(prometheus_sees_what_getstats_says)
{
	struct daemon_fixture d;
	struct exporter e;
	struct prometheus p;
	struct iommuctl *c;
	Iommud__V1__Response *resp;
	Iommud__V1__GetStatsReply *s;
	char promql[256];
	double after;

	if (!have("prometheus"))
		SKIP("prometheus not found (Debian package prometheus; install-deps.sh installs "
		     "it)");
	fixture_start(&d, "[uid 0]\naccess = write\ndevices = emu0 emu1\n", "emu0 emu1");
	CHECK_OK(iommuctl_connect(d.socket_path, &c));
	make_activity(&d, c);
	after = now();
	exporter_start(&e, d.socket_path, false);
	prometheus_start(&p, e.port);
	for (int i = 0; i < 300; i++) {
		if (query(&p, "max(timestamp(iommud_up)) or vector(0)") > after)
			break;
		pause_ms(100);
	}
	CHECK(query(&p, "timestamp(iommud_up)") > after);
	s = get_stats(c, &resp);
	expect(&p, "iommud_up", 1);
	(void)snprintf(promql, sizeof(promql), "iommud_build_info{version=\"%s\"}", s->version);
	expect(&p, promql, 1);
	expect(&p, "iommud_rejected_packets_total", (double)s->rejected_packets);
	CHECK(s->rejected_packets >= 1);
	expect_methods(&p, s);
	expect_map_path(&p, s);
	expect_tenants(&p, s);
	expect_ceilings(&p, s);
	expect_devices_and_probes(&p, s);
	iommuctl_response_free(resp);
	prometheus_stop(&p);
	exporter_stop(&e);
	iommuctl_close(c);
	fixture_stop(&d);
}

/* The exit status of the exporter run with args (a shell word list), its output in out. */
static int run_exporter(const char *args, char *out, size_t size)
{
	char cmd[512];
	FILE *p;
	size_t len;
	int status;

	(void)snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", EXPORTER_BIN, args);
	p = popen(cmd, "r");
	CHECK(p != NULL);
	len = fread(out, 1, size - 1, p);
	out[len] = '\0';
	status = pclose(p);
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* --help documents what it does; each mistake is exit status 2 (1 when it cannot serve) with a
 * line saying what was wrong. */
TEST(options_and_errors)
{
	char out[8192], args[64];
	uint16_t port;
	int busy = listen_loopback(&port);

	CHECK_EQ(run_exporter("--help", out, sizeof(out)), 0);
	CHECK(strstr(out, "--listen ADDR:PORT") && strstr(out, "127.0.0.1:9863") &&
	      strstr(out, "iommud_up 0"));
	CHECK_EQ(run_exporter("--listen nonsense", out, sizeof(out)), 2);
	CHECK(strstr(out, "--listen takes ADDR:PORT"));
	CHECK_EQ(run_exporter("--timeout 5 --request-timeout 2", out, sizeof(out)), 2);
	CHECK(strstr(out, "--request-timeout must be longer than --timeout"));
	CHECK_EQ(run_exporter("--timeout soon", out, sizeof(out)), 2);
	/* one sentence on one line, then the pointer to --help */
	CHECK(strcmp(out, "iommud-exporter: --timeout takes seconds from 0.01 to 3600, not "
			  "'soon'\nTry 'iommud-exporter --help'.\n") == 0);
	CHECK_EQ(run_exporter("--max-connections 0", out, sizeof(out)), 2);
	CHECK_EQ(run_exporter("stray", out, sizeof(out)), 2);
	(void)snprintf(args, sizeof(args), "--listen 127.0.0.1:%u", (unsigned)port);
	CHECK_EQ(run_exporter(args, out, sizeof(out)), 1);
	CHECK(strstr(out, "cannot listen on 127.0.0.1:") && strstr(out, "in use"));
	(void)close(busy);
}

/* Without systemd's socket, --listen is where it serves. */
TEST(serves_on_listen_address)
{
	struct daemon_fixture d;
	struct exporter e = {0};
	char listen[32];
	int fd = listen_loopback(&e.port);

	(void)close(fd); /* a port free on the loopback, for the exporter to bind */
	fixture_start(&d, "[uid 0]\naccess = read\n", "emu0");
	(void)snprintf(listen, sizeof(listen), "127.0.0.1:%u", (unsigned)e.port);
	e.pid = fork();
	CHECK(e.pid >= 0);
	if (e.pid == 0) {
		(void)prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(EXPORTER_BIN, "iommud-exporter", "--listen", listen, "--socket",
		      d.socket_path, (char *)NULL);
		_exit(127);
	}
	CHECK(listening(e.port));
	CHECK_EQ(scrape_up(e.port, NULL), 1);
	exporter_stop(&e);
	fixture_stop(&d);
}
