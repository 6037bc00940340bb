// SPDX-License-Identifier: MIT
/* iommuctl delegate qmp's side of QMP against a scripted QEMU: the greeting and negotiation,
 * each fd passed with its getfd (the very files, SCM_RIGHTS beside the command), the iommufd
 * object and the vfio-pci devices naming them, events skipped, and QEMU's refusal reported in
 * its own words. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "qmp.h"

/* What the scripted QEMU expects, line by line, and answers. */
struct step {
	const char *expect; /* the command, exactly */
	const char *answer; /* lines to send back, each ending in a newline */
	bool fd;	    /* a descriptor comes with it */
};

struct fake_qemu {
	int listener;
	const struct step *steps;
	size_t n_steps;
	ino_t fd_inodes[8]; /* of the descriptors received, in order */
	size_t n_fds;
	size_t steps_done;
	char mismatch[512];
};

/* One line from the client with the descriptors that came with it. */
static int receive_line(struct fake_qemu *q, int sock, char *line, size_t size)
{
	size_t n = 0;

	for (;;) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int))];
		} control;
		struct iovec iov = {.iov_base = line + n, .iov_len = 1};
		struct msghdr msg = {.msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = control.buf,
				     .msg_controllen = sizeof(control.buf)};
		struct cmsghdr *cmsg;

		if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
			return -1;
		for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
			struct stat st;
			int fd;

			memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
			if (fstat(fd, &st) == 0 && q->n_fds < 8)
				q->fd_inodes[q->n_fds++] = st.st_ino;
			(void)close(fd);
		}
		if (line[n] == '\n' || ++n == size - 1)
			break;
	}
	line[n] = '\0';
	return 0;
}

static void *play_qemu(void *arg)
{
	static const char greeting[] = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
	struct fake_qemu *q = arg;
	int sock = accept(q->listener, NULL, NULL);
	char line[1024];

	if (sock < 0 || write(sock, greeting, strlen(greeting)) < 0)
		return NULL;
	for (; q->steps_done < q->n_steps; q->steps_done++) {
		const struct step *s = &q->steps[q->steps_done];
		size_t fds_before = q->n_fds;

		if (receive_line(q, sock, line, sizeof(line)) < 0)
			break;
		if (strcmp(line, s->expect) != 0 || (q->n_fds > fds_before) != s->fd) {
			(void)snprintf(q->mismatch, sizeof(q->mismatch), "step %zu: got %.400s",
				       q->steps_done, line);
			break;
		}
		if (write(sock, s->answer, strlen(s->answer)) < 0)
			break;
	}
	(void)close(sock);
	return NULL;
}

static const struct step hand_over_steps[] = {
	{"{\"execute\": \"qmp_capabilities\"}", "{\"return\": {}}\n", false},
	{"{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"vm1-fd0\"}}", "{\"return\": {}}\n",
	 true},
	{"{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"vm1-fd1\"}}",
	 "{\"event\": \"RTC_CHANGE\", \"data\": {}}\n{\"return\": {}}\n", true},
	{"{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"vm1-fd2\"}}", "{\"return\": {}}\n",
	 true},
	{"{\"execute\": \"object-add\", \"arguments\": {\"qom-type\": \"iommufd\", \"id\": "
	 "\"vm1-iommufd\", \"fd\": \"vm1-fd0\"}}",
	 "{\"return\": {}}\n", false},
	{"{\"execute\": \"device_add\", \"arguments\": {\"driver\": \"vfio-pci\", \"id\": "
	 "\"vm1-dev0\", \"iommufd\": \"vm1-iommufd\", \"fd\": \"vm1-fd1\", \"bus\": \"rp1\"}}",
	 "{\"return\": {}}\n", false},
	{"{\"execute\": \"device_add\", \"arguments\": {\"driver\": \"vfio-pci\", \"id\": "
	 "\"vm1-dev1\", \"iommufd\": \"vm1-iommufd\", \"fd\": \"vm1-fd2\", \"bus\": \"rp1\"}}",
	 "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Bus 'rp1' is full\"}}\n", false},
};

/* Runs qmp_connect and qmp_hand_over of three memfds against steps; the fake's record in *q. */
static int run(struct fake_qemu *q, const struct step *steps, size_t n_steps, char *err,
	       size_t err_size, ino_t *inodes)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct qmp_names names = {.prefix = "vm1", .bus = "rp1"};
	int fds[3], sock, rc;
	pthread_t thread;
	pid_t pid = 0;

	/* ctest runs the cases side by side in one folder: a socket name of each process's own. */
	(void)snprintf(addr.sun_path, sizeof(addr.sun_path), "test_qmp.%d.sock", (int)getpid());
	(void)unlink(addr.sun_path);
	*q = (struct fake_qemu){.steps = steps, .n_steps = n_steps};
	q->listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(q->listener >= 0);
	CHECK_EQ(bind(q->listener, (struct sockaddr *)&addr, sizeof(addr)), 0);
	CHECK_EQ(listen(q->listener, 1), 0);
	CHECK_EQ(pthread_create(&thread, NULL, play_qemu, q), 0);
	for (int i = 0; i < 3; i++) {
		struct stat st;

		fds[i] = memfd_create("delegated", MFD_CLOEXEC);
		CHECK(fds[i] >= 0 && fstat(fds[i], &st) == 0);
		inodes[i] = st.st_ino;
	}
	rc = qmp_connect(addr.sun_path, &sock, &pid, err, err_size);
	CHECK_EQ(rc, 0);
	CHECK_EQ(pid, getpid());
	rc = qmp_hand_over(sock, fds, 3, &names, err, err_size);
	(void)close(sock);
	CHECK_EQ(pthread_join(thread, NULL), 0);
	for (int i = 0; i < 3; i++)
		(void)close(fds[i]);
	(void)close(q->listener);
	(void)unlink(addr.sun_path);
	return rc;
}

TEST(fds_and_objects_reach_qemu)
{
	struct fake_qemu q;
	ino_t inodes[3];
	char err[512] = "";
	/* The script with its last step answered with success. */
	struct step steps[7];

	memcpy(steps, hand_over_steps, sizeof(steps));
	steps[6].answer = "{\"return\": {}}\n";
	CHECK_EQ(run(&q, steps, 7, err, sizeof(err), inodes), 0);
	CHECK_EQ(q.mismatch[0], '\0');
	CHECK_EQ(q.steps_done, 7);
	CHECK_EQ(q.n_fds, 3);
	for (int i = 0; i < 3; i++)
		CHECK_EQ(q.fd_inodes[i], inodes[i]);
}

TEST(qemu_refusal_is_reported_in_its_words)
{
	struct fake_qemu q;
	ino_t inodes[3];
	char err[512] = "";

	CHECK_EQ(run(&q, hand_over_steps, 7, err, sizeof(err), inodes), -EPROTO);
	CHECK_EQ(q.mismatch[0], '\0');
	CHECK(strstr(err, "QEMU refused device_add of vm1-dev1: Bus 'rp1' is full") != NULL);
}

/* A refusal after the fds went over: QEMU's text up to its closing quote without the control
 * characters it carried (escape sequences for the terminal), the hint for a second hand-over
 * under the same ids, and closefd for every fd passed, so that QEMU keeps none. */
TEST(refusal_closes_the_passed_fds)
{
	struct fake_qemu q;
	ino_t inodes[3];
	char err[512] = "";
	struct step steps[8];

	memcpy(steps, hand_over_steps, 5 * sizeof(steps[0]));
	steps[4].answer = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"attempt to add "
			  "duplicate property 'vm1-iommufd' to object (type "
			  "'container')\x1b[2J\\\"x\"}}\n";
	for (int i = 0; i < 3; i++) {
		static char commands[3][128];

		(void)snprintf(
			commands[i], sizeof(commands[i]),
			"{\"execute\": \"closefd\", \"arguments\": {\"fdname\": \"vm1-fd%d\"}}", i);
		steps[5 + i] = (struct step){commands[i], "{\"return\": {}}\n", false};
	}
	CHECK_EQ(run(&q, steps, 8, err, sizeof(err), inodes), -EPROTO);
	CHECK_EQ(q.mismatch[0], '\0');
	CHECK_EQ(q.steps_done, 8);
	CHECK_EQ(strcmp(err, "QEMU refused object-add of the iommufd: attempt to add duplicate "
			     "property 'vm1-iommufd' to object (type 'container')[2J\"x; give "
			     "another --id"),
		 0);
}

TEST(names_that_need_quoting_are_refused)
{
	CHECK(qmp_name_ok("vm1-iommufd_0.a"));
	CHECK(!qmp_name_ok("vm\"1"));
	CHECK(!qmp_name_ok(""));
}
