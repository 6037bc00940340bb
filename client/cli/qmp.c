// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* struct ucred, strcasestr */
#include "qmp.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define QMP_LINE_MAX 4096
/* How long QEMU may stay silent before an answer: a hotplug under emulation takes seconds. */
#define QMP_TIMEOUT_SECONDS 60

static int qmp_fail(char *err, size_t size, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int qmp_fail(char *err, size_t size, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(err, size, fmt, ap);
	va_end(ap);
	return rc;
}

bool qmp_name_ok(const char *s)
{
	return s && *s &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") ==
		       strlen(s);
}

/* One line from QEMU, without its newline. Read a byte at a time: QMP is a few short lines, and
 * nothing past the line may be taken from the socket. -ETIMEDOUT when QEMU is silent for the
 * socket's receive timeout (qmp_connect). */
static int read_line(int sock, char *line, size_t size)
{
	size_t n = 0;

	for (;;) {
		ssize_t got = read(sock, line + n, 1);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		if (got == 0)
			return -ECONNRESET;
		if (line[n] == '\n')
			break;
		if (++n == size - 1)
			return -EMSGSIZE;
	}
	line[n] = '\0';
	return 0;
}

/* Sends one command, with fd beside it unless it is -1. */
static int send_command(int sock, const char *command, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control = {0};
	struct iovec iov = {.iov_base = (void *)command, .iov_len = strlen(command)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};

	if (fd >= 0) {
		struct cmsghdr *cmsg;

		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	}
	while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

/* QEMU's description of an error, from the line that carries it to its closing quote, for a
 * terminal: JSON escapes taken as the character they escape, control characters dropped. */
static void error_desc(const char *line, char *out, size_t size)
{
	const char *p = strstr(line, "\"desc\": \"");
	size_t n = 0;

	for (p = p ? p + 9 : line; *p && *p != '"' && n + 1 < size; p++) {
		if (*p == '\\' && p[1])
			p++;
		if (!iscntrl((unsigned char)*p))
			out[n++] = *p;
	}
	out[n] = '\0';
}

/* QEMU's answer to the command just sent: events before it are skipped; an error gives QEMU's
 * description. */
static int await_return(int sock, const char *what, char *err, size_t size)
{
	char line[QMP_LINE_MAX], desc[512];

	for (;;) {
		int rc = read_line(sock, line, sizeof(line));

		if (rc == -ETIMEDOUT)
			return qmp_fail(
				err, size, rc,
				"QEMU did not answer %s within %d s: its monitor must be in "
				"the default mode (not pretty=on), and QEMU not stopped",
				what, QMP_TIMEOUT_SECONDS);
		if (rc < 0)
			return qmp_fail(err, size, rc, "QEMU's QMP socket failed during %s: %s",
					what, strerror(-rc));
		if (strncmp(line, "{\"return\"", 9) == 0)
			return 0;
		if (strncmp(line, "{\"error\"", 8) != 0)
			continue;
		error_desc(line, desc, sizeof(desc));
		return qmp_fail(err, size, -EPROTO, "QEMU refused %s: %s%s", what, desc,
				strcasestr(desc, "duplicate") ? "; give another --id" : "");
	}
}

static int execute(int sock, const char *command, int fd, const char *what, char *err, size_t size)
{
	int rc = send_command(sock, command, fd);

	if (rc < 0)
		return qmp_fail(err, size, rc, "cannot send %s to QEMU: %s", what, strerror(-rc));
	return await_return(sock, what, err, size);
}

int qmp_connect(const char *path, int *ret_sock, pid_t *ret_pid, char *err, size_t err_size)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct timeval timeout = {.tv_sec = QMP_TIMEOUT_SECONDS};
	struct ucred cred;
	socklen_t len = sizeof(cred);
	char line[QMP_LINE_MAX];
	int rc, sock;

	if (strlen(path) >= sizeof(addr.sun_path))
		return qmp_fail(err, err_size, -ENAMETOOLONG, "QMP socket path too long: %s", path);
	strcpy(addr.sun_path, path);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) < 0 ||
	    connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		rc = -errno;
		if (sock >= 0)
			(void)close(sock);
		return qmp_fail(err, err_size, rc, "cannot connect to QEMU's QMP socket %s: %s",
				path, strerror(-rc));
	}
	rc = read_line(sock, line, sizeof(line));
	if (rc == 0 && strncmp(line, "{\"QMP\"", 6) != 0)
		rc = qmp_fail(err, err_size, -EPROTO,
			      "%s does not greet as QMP does (a monitor with pretty=on is not "
			      "supported): %.200s",
			      path, line);
	else if (rc < 0)
		rc = qmp_fail(err, err_size, rc, "no QMP greeting on %s: %s", path, strerror(-rc));
	if (rc == 0)
		rc = execute(sock, "{\"execute\": \"qmp_capabilities\"}\n", -1, "qmp_capabilities",
			     err, err_size);
	if (rc < 0) {
		(void)close(sock);
		return rc;
	}
	*ret_sock = sock;
	*ret_pid = cred.pid;
	return 0;
}

/* getfd of each fd under PREFIX-fdN; how many QEMU took in *passed. */
static int pass_fds(int sock, const int *fds, size_t n_fds, const char *prefix, size_t *passed,
		    char *err, size_t size)
{
	char command[256], what[64];

	for (size_t i = 0; i < n_fds; i++) {
		int rc;

		(void)snprintf(
			command, sizeof(command),
			"{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"%s-fd%zu\"}}\n",
			prefix, i);
		(void)snprintf(what, sizeof(what), "getfd of %s-fd%zu", prefix, i);
		rc = execute(sock, command, fds[i], what, err, size);
		if (rc < 0)
			return rc;
		*passed = i + 1;
	}
	return 0;
}

/* object-add of the iommufd named PREFIX-fd0, device_add of a vfio-pci for each device fd, and
 * cont if asked. */
static int add_objects(int sock, size_t n_fds, const struct qmp_names *names, char *err,
		       size_t err_size)
{
	const char *p = names->prefix;
	char command[512], bus[128] = "", what[64];
	int rc;

	(void)snprintf(command, sizeof(command),
		       "{\"execute\": \"object-add\", \"arguments\": {\"qom-type\": \"iommufd\", "
		       "\"id\": \"%s-iommufd\", \"fd\": \"%s-fd0\"}}\n",
		       p, p);
	rc = execute(sock, command, -1, "object-add of the iommufd", err, err_size);
	if (names->bus)
		(void)snprintf(bus, sizeof(bus), ", \"bus\": \"%s\"", names->bus);
	for (size_t i = 1; rc == 0 && i < n_fds; i++) {
		(void)snprintf(command, sizeof(command),
			       "{\"execute\": \"device_add\", \"arguments\": {\"driver\": "
			       "\"vfio-pci\", \"id\": \"%s-dev%zu\", \"iommufd\": \"%s-iommufd\", "
			       "\"fd\": \"%s-fd%zu\"%s}}\n",
			       p, i - 1, p, p, i, bus);
		(void)snprintf(what, sizeof(what), "device_add of %s-dev%zu", p, i - 1);
		rc = execute(sock, command, -1, what, err, err_size);
	}
	if (rc == 0 && names->cont)
		rc = execute(sock, "{\"execute\": \"cont\"}\n", -1, "cont", err, err_size);
	return rc;
}

/* closefd of the fds passed so far, after QEMU refused a step, so that QEMU keeps none of them;
 * QEMU's answers (an fd an object took is no longer there to close) change nothing. */
static void close_passed(int sock, const char *prefix, size_t passed)
{
	char command[256], ignored[256];

	for (size_t i = 0; i < passed; i++) {
		(void)snprintf(
			command, sizeof(command),
			"{\"execute\": \"closefd\", \"arguments\": {\"fdname\": \"%s-fd%zu\"}}\n",
			prefix, i);
		(void)execute(sock, command, -1, "closefd", ignored, sizeof(ignored));
	}
}

int qmp_hand_over(int sock, const int *fds, size_t n_fds, const struct qmp_names *names, char *err,
		  size_t err_size)
{
	const char *p = names->prefix;
	size_t passed = 0;
	int rc = pass_fds(sock, fds, n_fds, p, &passed, err, err_size);

	if (rc == 0)
		rc = add_objects(sock, n_fds, names, err, err_size);
	if (rc == -EPROTO)
		close_passed(sock, p, passed);
	return rc;
}
