/* SPDX-License-Identifier: MIT */
/*
 * Failures inside the daemon are negative errnos plus a message for a person. The message of
 * the latest failure lives here, one per thread (each event-loop thread handles one request at
 * a time). The reply to a request turns the errno (code_for_errno, the table both ends share)
 * and that message into the RPC Status once, at the boundary.
 */
#ifndef IOMMUD_STATUS_H
#define IOMMUD_STATUS_H

#include <iommud_wire.h> /* code_for_errno */

/* The longest status message a reply carries, in bytes (docs/protocol.md). */
#define STATUS_MESSAGE_MAX 1023

/* Records the message and gives rc, so callers write `return fail(-EINVAL, "...")`. A macro
 * around fail_record, so the compiler sees the value given: a caller's "rc < 0" after it then
 * proves that an output written only on success is not read unset. */
#define fail(rc, ...)                                                                              \
	({                                                                                         \
		const int fail_rc_ __attribute__((unused)) = (rc);                                 \
		fail_record(__VA_ARGS__);                                                          \
		fail_rc_;                                                                          \
	})
void fail_record(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The latest failure's message. */
const char *failure_message(void);
/* Records kernel-helper's message for its failure rc, with what the daemon was doing. */
int fail_kh(int rc, const char *doing);

#endif
