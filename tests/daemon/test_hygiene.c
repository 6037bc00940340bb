/* SPDX-License-Identifier: MIT */
/*
 * What a reply and a log line can contain (docs/operations.md, "Security model"): replies
 * decode under strict proto3 decoders whatever a client sent (strings that are not UTF-8 are
 * refused, messages cut only between characters), errors say what was received, and a
 * client's text can neither forge a log line nor hide in one: on stderr it is escaped in the
 * line; in the journal it is kept exactly in a field of its own, and the message only names
 * that field.
 */
#define _GNU_SOURCE /* memfd_create, unshare */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <iommuctl.h>

#include "daemon_fixture.h"
#include "harness.h"
#include "strict_utf8.h"

static struct daemon_fixture daemon_under_test;

static const char config[] = "[uid 0]\naccess = write\ndevices = emu*\n";

static Iommud__V1__Response *get_device(int fd, const char *name)
{
	Iommud__V1__GetDeviceRequest get = IOMMUD__V1__GET_DEVICE_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;

	req.id = 7;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_GET_DEVICE;
	req.get_device = &get;
	get.name = (char *)name;
	raw_send_request(fd, &req, NULL, 0);
	return raw_recv(fd, NULL);
}

/* ---- replies -------------------------------------------------------------------------- */

/* The reply to a request refused for its string field, named in the message with what is
 * wrong with it; the message itself decodes. */
static void check_refused_string(Iommud__V1__Response *resp, uint64_t id, const char *field,
				 const char *wrong)
{
	if (!strict_utf8(resp->status->message))
		(void)fprintf(stderr, "a reply strict decoders refuse: '%s'\n",
			      resp->status->message);
	CHECK(strict_utf8(resp->status->message));
	CHECK_EQ(resp->id, id);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_INVALID_ARGUMENT);
	CHECK(strstr(resp->status->message, field) != NULL);
	CHECK(strstr(resp->status->message, wrong) != NULL);
	iommud__v1__response__free_unpacked(resp, NULL);
}

TEST(non_utf8_strings_are_refused)
{
	int fd;

	fixture_start(&daemon_under_test, config, "emu0");
	fd = raw_connect(&daemon_under_test);
	check_refused_string(get_device(fd, "emu\xff\xfe"), 7, "get_device.name", "UTF-8");
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

/* Protobuf strings carry their length: "ab\0cd" is not "ab" (a lease of that name would be
 * joined as "ab"), and is refused. */
TEST(string_with_nul_is_refused)
{
	/* Request{id = 1, hello (10) = HelloRequest{lease (3) = "ab\0cd"}} */
	static const uint8_t packet[] = {0x08, 0x01, 0x52, 0x07, 0x1a, 0x05,
					 'a',  'b',  0x00, 'c',	 'd'};
	int fd;

	fixture_start(&daemon_under_test, config, "emu0");
	fd = raw_connect(&daemon_under_test);
	raw_send(fd, packet, sizeof(packet), NULL, 0);
	check_refused_string(raw_recv(fd, NULL), 1, "hello.lease", "NUL");
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

/* A device name of euro signs (3 bytes each) after 0 to 2 letters: the message that echoes it
 * is cut at its limit, which falls inside a character for at least one of them. */
TEST(long_messages_end_between_characters)
{
	char name[3 + 3 * 400 + 1];
	int fd;

	fixture_start(&daemon_under_test, config, "emu0");
	fd = raw_connect(&daemon_under_test);
	for (int letters = 0; letters < 3; letters++) {
		Iommud__V1__Response *resp;
		size_t len = 0;

		for (int i = 0; i < letters; i++)
			name[len++] = 'x';
		for (int i = 0; i < 400; i++, len += 3)
			memcpy(name + len, "\xe2\x82\xac", 3);
		name[len] = '\0';
		resp = get_device(fd, name);
		CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_NOT_FOUND);
		CHECK(strlen(resp->status->message) > 1000); /* cut, not refused */
		CHECK(strict_utf8(resp->status->message));
		iommud__v1__response__free_unpacked(resp, NULL);
	}
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

/* A device name of backslashes after a letter: the message that echoes it doubles each when
 * escaped, and stays within its bound, cut between escapes (an even run of backslashes at its
 * end; the letter makes the run of the message unescaped odd). */
TEST(escaped_messages_keep_their_bound)
{
	char name[1001], *message;
	Iommud__V1__Response *resp;
	size_t len, run = 0;
	int fd;

	name[0] = 'x';
	memset(name + 1, '\\', sizeof(name) - 2);
	name[sizeof(name) - 1] = '\0';
	fixture_start(&daemon_under_test, config, "emu0");
	fd = raw_connect(&daemon_under_test);
	resp = get_device(fd, name);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_NOT_FOUND);
	message = resp->status->message;
	len = strlen(message);
	CHECK(len > 1000 && len <= 1023);
	CHECK(strict_utf8(message));
	while (run < len && message[len - 1 - run] == '\\')
		run++;
	CHECK(run > 0 && run % 2 == 0);
	iommud__v1__response__free_unpacked(resp, NULL);
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

/* A method of a newer protocol: field 60 of Request, which this daemon's schema lacks. */
TEST(unknown_method_is_named)
{
	static const uint8_t packet[] = {0x08, 0x01, 0xe2, 0x03, 0x00};
	Iommud__V1__Response *resp;
	int fd;

	fixture_start(&daemon_under_test, config, "emu0");
	fd = raw_connect(&daemon_under_test);
	raw_send(fd, packet, sizeof(packet), NULL, 0);
	resp = raw_recv(fd, NULL);
	CHECK_EQ(resp->status->code, IOMMUD__V1__CODE__CODE_UNIMPLEMENTED);
	CHECK(strstr(resp->status->message, "field 60") != NULL);
	CHECK(strstr(resp->status->message, "method 0") == NULL);
	iommud__v1__response__free_unpacked(resp, NULL);
	(void)close(fd);
	fixture_stop(&daemon_under_test);
}

TEST(write_only_file_is_named)
{
	int memfd, write_only;
	char path[64];
	struct iommuctl *c;
	uint32_t dom;
	uint64_t iova;

	fixture_start(&daemon_under_test, config, "emu0");
	memfd = iommuctl_memfd("test", 4096);
	CHECK_OK(memfd);
	(void)snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	write_only = open(path, O_WRONLY | O_CLOEXEC);
	CHECK(write_only >= 0);
	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	CHECK_OK(iommuctl_alloc_domain(c, "emu0", IOMMUCTL_DOMAIN_PAGING, 0, &dom));
	CHECK(iommuctl_map_fd(c, dom, write_only, 0, 4096, IOMMUD__V1__PROT__PROT_READ, false, 0,
			      &iova) < 0);
	CHECK(strstr(iommuctl_last_error(c), "write-only") != NULL);
	CHECK(strstr(iommuctl_last_error(c), "opened read-only") == NULL);
	iommuctl_close(c);
	(void)close(write_only);
	(void)close(memfd);
	fixture_stop(&daemon_under_test);
}

/* ---- log lines ------------------------------------------------------------------------ */

static const char forger[] = "evil\niommud: err: forged by a client";

static void hello_as(const char *client_name)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(daemon_under_test.socket_path, &c));
	CHECK_OK(iommuctl_hello(c, client_name, NULL, NULL));
	iommuctl_close(c);
}

/* Starts the daemon logging at debug, its standard error into log_path. */
static void start_logging_daemon(const char *log_path)
{
	int saved = dup(STDERR_FILENO);
	int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	CHECK(saved >= 0 && log >= 0);
	CHECK(setenv("IOMMUD_TEST_LOG_LEVEL", "debug", 1) == 0);
	CHECK(dup2(log, STDERR_FILENO) == STDERR_FILENO);
	fixture_start(&daemon_under_test, config, "emu0");
	CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
	(void)close(saved);
	(void)close(log);
}

TEST(client_text_cannot_forge_a_log_line)
{
	char log_path[] = "/tmp/iommud-hygiene-log-XXXXXX", line[4096];
	bool escaped = false;
	FILE *log;
	int fd = mkstemp(log_path);

	CHECK(fd >= 0);
	(void)close(fd);
	start_logging_daemon(log_path);
	hello_as(forger);
	fixture_stop(&daemon_under_test);
	log = fopen(log_path, "r");
	CHECK(log != NULL);
	while (fgets(line, sizeof(line), log)) {
		CHECK(strncmp(line, "iommud: err: forged", 19) != 0);
		escaped = escaped || strstr(line, "evil\\x0aiommud: err: forged") != NULL;
	}
	(void)fclose(log);
	(void)unlink(log_path);
	CHECK(escaped);
}

/* ---- journal fields ------------------------------------------------------------------- */

/* A stand-in for journald's native socket, read by a thread so the daemon never waits on it;
 * found says whether an entry had the field and message expected, leaked whether any message
 * held the client's text. */
struct journal {
	int fd;
	_Atomic bool stop;
	bool found, leaked;
};

/* The value of field name in a native-protocol datagram (NAME=value lines, or NAME, a 64-bit
 * little-endian size and the bytes, for values with newlines); NULL if absent. */
static char *journal_value(const char *entry, size_t len, const char *name)
{
	size_t name_len = strlen(name);
	const char *p = entry, *end = entry + len;

	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		uint64_t size;

		if (!eol)
			return NULL;
		if ((size_t)(eol - p) > name_len && memcmp(p, name, name_len) == 0 &&
		    p[name_len] == '=')
			return strndup(p + name_len + 1, (size_t)(eol - p) - name_len - 1);
		if (memchr(p, '=', (size_t)(eol - p))) {
			p = eol + 1;
			continue;
		}
		CHECK((size_t)(end - eol) > 8);
		memcpy(&size, eol + 1, 8);
		if ((size_t)(eol - p) == name_len && memcmp(p, name, name_len) == 0)
			return strndup(eol + 9, size);
		p = eol + 9 + size + 1;
	}
	return NULL;
}

static void *read_journal(void *arg)
{
	struct journal *j = arg;
	static char entry[65536];

	while (!j->stop) {
		struct pollfd pfd = {.fd = j->fd, .events = POLLIN};
		ssize_t n;
		char *name, *message;

		if (poll(&pfd, 1, 100) != 1 || (n = recv(j->fd, entry, sizeof(entry), 0)) <= 0)
			continue;
		name = journal_value(entry, (size_t)n, "IOMMUD_CLIENT_NAME");
		message = journal_value(entry, (size_t)n, "MESSAGE");
		if (name && message && strcmp(name, forger) == 0 &&
		    strstr(message, "'{IOMMUD_CLIENT_NAME}'"))
			j->found = true;
		if (message && (strstr(message, "evil") || strstr(message, "forged")))
			j->leaked = true;
		free(name);
		free(message);
	}
	return NULL;
}

/* journald's socket path, in a mount namespace of the case's own so the host's is untouched. */
static int fake_journald(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd;

	if (unshare(CLONE_NEWNS) < 0)
		SKIP("cannot make a mount namespace: %s", strerror(errno));
	CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0);
	CHECK(mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0);
	CHECK(mkdir("/run/systemd", 0755) == 0 && mkdir("/run/systemd/journal", 0755) == 0);
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "/run/systemd/journal/socket");
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	return fd;
}

TEST(client_text_is_a_journal_field)
{
	struct journal j = {.fd = -1};
	pthread_t reader;

	if (geteuid() != 0)
		SKIP("not root: the stand-in journald needs a mount namespace");
	j.fd = fake_journald();
	CHECK(pthread_create(&reader, NULL, read_journal, &j) == 0);
	CHECK(setenv("JOURNAL_STREAM", "0:0", 1) == 0);
	CHECK(setenv("IOMMUD_TEST_LOG_LEVEL", "debug", 1) == 0);
	fixture_start(&daemon_under_test, config, "emu0");
	hello_as(forger);
	fixture_stop(&daemon_under_test);
	j.stop = true;
	CHECK(pthread_join(reader, NULL) == 0);
	(void)close(j.fd);
	CHECK(j.found);
	CHECK(!j.leaked);
}
