/* SPDX-License-Identifier: MIT */
/*
 * One GetStats from the daemon, asked in a child process with a deadline. libiommuctl's calls
 * block until the daemon answers; a daemon that is stopped or wedged would hold the exporter
 * with them. A child process is what can be stopped in the middle of such a call: at the
 * deadline it is killed, and the scrape says the daemon did not answer.
 *
 * Ownership: scrape_start gives the caller a struct scrape, which owns the child process and
 * the pipe from it until scrape_free (which kills and reaps a child still running). done is
 * called once, from the event loop, unless the scrape is freed first; it owns the reply.
 */
#ifndef IOMMUD_EXPORTER_SCRAPE_H
#define IOMMUD_EXPORTER_SCRAPE_H

#include <sys/time.h>

#include <event2/event.h>
#include <iommud.pb-c.h>

struct scrape;

/* reply: the daemon's answer (the callee frees it with
 * iommud__v1__get_stats_reply__free_unpacked), or NULL with error saying why there is none. */
typedef void scrape_done_fn(Iommud__V1__GetStatsReply *reply, const char *error, void *arg);

/* Asks the daemon at socket_path (NULL: libiommuctl's default) for its statistics. Returns 0,
 * or a negative errno when no child could be started. */
int scrape_start(struct event_base *base, const char *socket_path, const struct timeval *timeout,
		 scrape_done_fn *done, void *arg, struct scrape **ret_scrape);
void scrape_free(struct scrape *s);

#endif
