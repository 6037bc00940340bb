// SPDX-License-Identifier: MIT
/* Descriptors a reply carries: when they are closed without having gone out, their unsent hook
 * runs once (a delegation is taken back there), and never once they were sent. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dispatch.h"
#include "harness.h"

struct unsent_seen {
	unsigned calls;
	uint64_t token;
};

static void count_unsent(void *arg, uint64_t token)
{
	struct unsent_seen *seen = arg;

	seen->calls++;
	seen->token = token;
}

static void fill(struct reply_fds *out, struct unsent_seen *seen)
{
	*out = (struct reply_fds){
		.n = 2, .unsent = count_unsent, .unsent_arg = seen, .unsent_token = 42};
	for (size_t i = 0; i < out->n; i++) {
		out->fds[i] = memfd_create("reply", MFD_CLOEXEC);
		CHECK(out->fds[i] >= 0);
	}
}

TEST(closed_unsent_runs_the_hook_once)
{
	struct unsent_seen seen = {0};
	struct reply_fds out;
	int fds[2];

	fill(&out, &seen);
	fds[0] = out.fds[0];
	fds[1] = out.fds[1];
	reply_fds_close(&out);
	CHECK_EQ(seen.calls, 1);
	CHECK_EQ(seen.token, 42);
	CHECK(fcntl(fds[0], F_GETFD) < 0 && fcntl(fds[1], F_GETFD) < 0);
	/* Closing again (a connection dropping what it already closed) runs nothing. */
	reply_fds_close(&out);
	CHECK_EQ(seen.calls, 1);
}

TEST(sent_runs_no_hook)
{
	struct unsent_seen seen = {0};
	struct reply_fds out;
	int fd;

	fill(&out, &seen);
	fd = out.fds[0];
	reply_fds_sent(&out);
	CHECK(fcntl(fd, F_GETFD) < 0);
	reply_fds_close(&out);
	CHECK_EQ(seen.calls, 0);
}

TEST(sent_runs_the_sent_hook_once)
{
	struct unsent_seen seen = {0};
	struct reply_fds out;

	fill(&out, &seen);
	out.sent = count_unsent;
	out.unsent = NULL;
	reply_fds_sent(&out);
	CHECK_EQ(seen.calls, 1);
	CHECK_EQ(seen.token, 42);
	/* Sent or closed again, its hook is gone. */
	reply_fds_sent(&out);
	reply_fds_close(&out);
	CHECK_EQ(seen.calls, 1);
}
