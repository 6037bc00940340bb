// SPDX-License-Identifier: MIT
/* The loop's fair shares without a daemon: when a flow has the loop to itself, the question a
 * costly request's steps grow on (flows_alone). */
#include <stdint.h>

#include "flow.h"
#include "harness.h"

static const struct flow_rate unlimited = {0, 0};

/* A flow is alone only after a request of its own was the last served and while no other is
 * ready: another's readiness, or another's request served in between, ends it until the flow's
 * next request is charged. */
TEST(alone_until_another_is_ready_or_served)
{
	static const char key_a = 'a', key_b = 'b';
	struct flow_item a = {0}, b = {0};
	struct flows *fs;

	CHECK_OK(flows_create(&fs));
	CHECK_OK(flows_join(fs, &a, &key_a, 1, &unlimited));
	CHECK_OK(flows_join(fs, &b, &key_b, 2, &unlimited));
	flows_ready(fs, &a);
	CHECK(!flows_alone(fs, &a)); /* nothing served yet */
	flows_charge(fs, &a, 5000);
	CHECK(flows_alone(fs, &a));
	flows_ready(fs, &b);
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
	static const char key_a = 'a', key_c = 'c';
	struct flow_item a = {0}, c = {0};
	struct flows *fs;

	CHECK_OK(flows_create(&fs));
	CHECK_OK(flows_join(fs, &a, &key_a, 1, &unlimited));
	flows_ready(fs, &a);
	flows_charge(fs, &a, 5000);
	flows_leave(fs, &a);
	CHECK_OK(flows_join(fs, &c, &key_c, 1, &unlimited));
	flows_ready(fs, &c);
	CHECK(!flows_alone(fs, &c));
	flows_leave(fs, &c);
	flows_destroy(fs);
}
