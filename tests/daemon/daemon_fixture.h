/* SPDX-License-Identifier: MIT */
/*
 * Runs the real iommud binary for a test: a private directory with its socket, configuration
 * and emulated topology, the daemon started on the emulated backend and stopped with SIGTERM.
 * Stopping checks the exit status, so a daemon built with ASan that leaks (LeakSanitizer at
 * exit) or crashes fails the test. Also raw packet I/O, for inputs no real client would send.
 */
#ifndef IOMMUD_TESTS_DAEMON_FIXTURE_H
#define IOMMUD_TESTS_DAEMON_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <iommud.pb-c.h>

struct daemon_fixture {
	char dir[64];
	char socket_path[108]; /* what a Unix socket address holds */
	pid_t pid;
};

/* Starts the daemon with the given configuration text (its [daemon] section is added by the
 * fixture) on the emulated backend with these devices (a space-separated list), or with
 * devices NULL on the iommufd backend (or the one $IOMMUD_TEST_BACKEND names). The daemon
 * binary is $IOMMUD_DAEMON if set (the VM tier's guest sets it), else the one this build made.
 * It logs at $IOMMUD_TEST_LOG_LEVEL (default warning) to the test's standard error. */
void fixture_start(struct daemon_fixture *f, const char *config, const char *devices);
/* The same with a whole topology file's text (docs/operations.md, "Emulated topology"), or
 * with topology NULL on the iommufd backend. */
void fixture_start_topology(struct daemon_fixture *f, const char *config, const char *topology);
/* The case's directory, and in it the daemon's configuration (its topology on the emulated
 * backend, if given), written to config_path: for tests that start the daemon their own way. */
void fixture_write_config(struct daemon_fixture *f, const char *config, const char *topology,
			  char config_path[static 128]);
/* Waits until the daemon answers on its socket: its event loop runs, and start-up has opened
 * all it keeps. */
void fixture_wait_until_serving(struct daemon_fixture *f);
/* SIGTERM, then checks the daemon exited with status 0; removes the directory. */
void fixture_stop(struct daemon_fixture *f);
/* Open descriptors of the daemon process other than sockets, to prove a test case leaked
 * none of the files and pipes clients sent. */
int fixture_fd_count(const struct daemon_fixture *f);

/* Mappings of memfds in the daemon's address space: each client mapping holds one, until its
 * unmap. */
int fixture_memfd_mappings(const struct daemon_fixture *f);

/* A connected SOCK_SEQPACKET socket to the daemon, without any protocol. */
int raw_connect(const struct daemon_fixture *f);
/* Sends len bytes as one packet with n_fds descriptors. */
void raw_send(int fd, const void *buf, size_t len, const int *fds, size_t n_fds);
/* Packs and sends a request. */
void raw_send_request(int fd, const Iommud__V1__Request *req, const int *fds, size_t n_fds);
/* Receives one response (fails the test if none comes within 10 s or it does not decode);
 * descriptors that came with it are closed and counted in *n_fds (may be NULL). */
Iommud__V1__Response *raw_recv(int fd, size_t *n_fds);
/* Sends a GetStats; raw_stats_reply reads its reply, which *ret_resp holds, to be freed. */
void raw_send_get_stats(int fd);
Iommud__V1__GetStatsReply *raw_stats_reply(int fd, Iommud__V1__Response **ret_resp);

struct iommuctl;

/* The daemon's GetStats reply to c (the caller frees it with iommuctl_response_free); a
 * refusal fails the test. */
Iommud__V1__Response *fixture_get_stats(struct iommuctl *c);
/* The daemon's GetStats as the client sees it: its tenant's quota and usage, and the
 * daemon's count of open connections (either may be NULL). */
void fixture_stats(struct iommuctl *c, Iommud__V1__Quota *quota, uint32_t *connections);

/* Runs fn in a child process with the given uid (and gid), returning its exit status; for
 * tenants other than the test's own. */
int run_as(uid_t uid, int (*fn)(void *), void *arg);
/* The same with these supplementary groups. */
int run_as_groups(uid_t uid, const gid_t *groups, size_t n_groups, int (*fn)(void *), void *arg);

#endif
