// SPDX-License-Identifier: MIT
/* The loop's fair shares without a daemon: when a flow has the loop to itself, the question a
 * costly request's steps grow on (flows_alone). */
#include <stdint.h>

#include "flow.h"
#include "harness.h"

static const char keys[] = "abc";

/* Joins item to the flow of keys[i] (uid i + 1, no rate limit) with a request waiting. */
static void join_ready(struct flows *fs, struct flow_item *item, size_t i)
{
	static const struct flow_rate unlimited = {0, 0};

	*item = (struct flow_item){0};
	CHECK_OK(flows_join(fs, item, &keys[i], (uid_t)i + 1, &unlimited));
	flows_ready(fs, item);
}

/* A flow is alone only after a request of its own was the last served and while no other is
 * ready: another's readiness, or another's request served in between, ends it until the flow's
 * next request is charged. */
TEST(alone_until_another_is_ready_or_served)
{
	struct flow_item a, b;
	struct flows *fs;

	CHECK_OK(flows_create(&fs));
	join_ready(fs, &a, 0);
	CHECK(!flows_alone(fs, &a)); /* nothing served yet */
	flows_charge(fs, &a, 5000);
	CHECK(flows_alone(fs, &a));
	join_ready(fs, &b, 1);
	CHECK(!flows_alone(fs, &a));
	CHECK(flows_next(fs, 0) == &b);
	flows_charge(fs, &b, 1000);
	flows_unready(fs, &b);
	CHECK(!flows_alone(fs, &a)); /* b was served after a's last slice */
	flows_charge(fs, &a, 5000);
	CHECK(flows_alone(fs, &a));
	flows_leave(fs, &b);
	flows_leave(fs, &a);
	flows_destroy(fs);
}

/* A flow freed after its request was the last served leaves no trace: a flow made later (in
 * the same memory, as like as not) is not taken for it. */
TEST(alone_forgets_a_freed_flow)
{
	struct flow_item a;
	struct flows *fs;

	CHECK_OK(flows_create(&fs));
	join_ready(fs, &a, 0);
	flows_charge(fs, &a, 5000);
	flows_leave(fs, &a);
	join_ready(fs, &a, 2);
	CHECK(!flows_alone(fs, &a));
	flows_leave(fs, &a);
	flows_destroy(fs);
}
