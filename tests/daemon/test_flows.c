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

/* A flow is alone once its requests alone were served for FLOWS_ALONE_AFTER_NS and while no
 * other is ready: another's readiness, or another's request served in between, ends it, and the
 * time starts again from the flow's next request. */
TEST(alone_until_another_is_ready_or_served)
{
	const uint64_t after = FLOWS_ALONE_AFTER_NS, t0 = 1000, t1 = t0 + after, t2 = t1 + 1;
	struct flow_item a, b;
	struct flows *fs;

	CHECK_OK(flows_create(&fs));
	join_ready(fs, &a, 0);
	CHECK(!flows_alone(fs, &a, t1)); /* nothing served yet */
	CHECK(flows_next(fs, t0) == &a);
	flows_charge(fs, &a, 5000);
	CHECK(!flows_alone(fs, &a, t1 - 1)); /* not for long enough */
	CHECK(flows_alone(fs, &a, t1));
	join_ready(fs, &b, 1);
	CHECK(!flows_alone(fs, &a, t1));
	CHECK(flows_next(fs, t1) == &b);
	flows_charge(fs, &b, 1000);
	flows_unready(fs, &b);
	CHECK(!flows_alone(fs, &a, t1 + 2 * after)); /* b was served after a's last slice */
	CHECK(flows_next(fs, t2) == &a);
	flows_charge(fs, &a, 5000);
	CHECK(!flows_alone(fs, &a, t2 + after - 1)); /* b's turn started a's time again */
	CHECK(flows_alone(fs, &a, t2 + after));
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
	CHECK(flows_next(fs, 0) == &a);
	flows_charge(fs, &a, 5000);
	flows_leave(fs, &a);
	join_ready(fs, &a, 2);
	CHECK(!flows_alone(fs, &a, FLOWS_ALONE_AFTER_NS));
	flows_leave(fs, &a);
	flows_destroy(fs);
}
