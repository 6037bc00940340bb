// SPDX-License-Identifier: MIT
/*
 * manager_restarting (manager_job.h): asks systemd, over the D-Bus system bus, for the job queued
 * on the unit whose main process the daemon is. A restart job stays a restart while its stop
 * half runs (systemd turns it into a start only once the unit is down), which is when the
 * daemon asks. The private bus (/run/systemd/private) would need root; the daemon runs as its
 * own user, for whom systemd's bus policy allows these reads.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "histogram.h"
#include "log.h"
#include "manager_job.h"

#define SYSTEMD_SERVICE	  "org.freedesktop.systemd1"
#define SYSTEMD_PATH	  "/org/freedesktop/systemd1"
#define MANAGER_INTERFACE SYSTEMD_SERVICE ".Manager"
#define UNIT_INTERFACE	  SYSTEMD_SERVICE ".Unit"
#define SERVICE_INTERFACE SYSTEMD_SERVICE ".Service"
#define JOB_INTERFACE	  SYSTEMD_SERVICE ".Job"

/* The whole exchange, connection included: long enough for a busy PID 1, short against
 * TimeoutStopSec=, past which systemd would kill the daemon before its stop tore anything
 * down. */
#define ASK_TIMEOUT_USEC (2 * 1000 * 1000)

/* sd-bus counts in microseconds. */
static uint64_t now_usec(void)
{
	return monotonic_ns() / 1000;
}

/* Gives the next call what is left of the deadline: sd-bus times each call on its own. */
static int time_left(sd_bus *bus, uint64_t deadline)
{
	uint64_t now = now_usec();

	if (now >= deadline)
		return -ETIMEDOUT;
	return sd_bus_set_method_call_timeout(bus, deadline - now);
}

/* Brings the connection up (its authentication) by the deadline. sd_bus_call would wait for it
 * too, but only as long as the bus's own authentication timeout, 90 s: a bus daemon that
 * accepts and never answers would hold the stop that long. */
static int bus_ready_by(sd_bus *bus, uint64_t deadline)
{
	int rc;

	while ((rc = sd_bus_is_ready(bus)) == 0) {
		uint64_t now = now_usec();

		if (now >= deadline)
			return -ETIMEDOUT;
		rc = sd_bus_process(bus, NULL);
		if (rc == 0)
			rc = sd_bus_wait(bus, deadline - now);
		if (rc < 0)
			return rc;
	}
	return rc < 0 ? rc : 0;
}

/* The object path of the service unit whose main process this is, or -ESRCH when the daemon is
 * not one (run by hand, under another manager's scope); other errors are the bus's. */
static int own_service(sd_bus *bus, uint64_t deadline, sd_bus_error *error, char **ret_path)
{
	sd_bus_message *reply = NULL;
	const char *path;
	uint32_t main_pid = 0;
	char *copy;
	int rc;

	rc = time_left(bus, deadline);
	if (rc >= 0)
		rc = sd_bus_call_method(bus, SYSTEMD_SERVICE, SYSTEMD_PATH, MANAGER_INTERFACE,
					"GetUnitByPID", error, &reply, "u", (uint32_t)getpid());
	if (rc < 0)
		return rc;
	rc = sd_bus_message_read(reply, "o", &path);
	copy = rc < 0 ? NULL : strdup(path);
	sd_bus_message_unref(reply);
	if (rc < 0)
		return rc;
	if (!copy)
		return -ENOMEM;
	/* A scope or a slice has no MainPID: systemd does not stop or restart the daemon there. */
	rc = time_left(bus, deadline);
	if (rc >= 0)
		rc = sd_bus_get_property_trivial(bus, SYSTEMD_SERVICE, copy, SERVICE_INTERFACE,
						 "MainPID", error, 'u', &main_pid);
	if (rc < 0 && (sd_bus_error_has_name(error, SD_BUS_ERROR_UNKNOWN_INTERFACE) ||
		       sd_bus_error_has_name(error, SD_BUS_ERROR_UNKNOWN_PROPERTY))) {
		sd_bus_error_free(error);
		rc = -ESRCH;
	} else if (rc >= 0 && main_pid != (uint32_t)getpid()) {
		rc = -ESRCH;
	}
	if (rc < 0) {
		free(copy);
		return rc;
	}
	*ret_path = copy;
	return 0;
}

/* The type of the job queued on the unit at unit_path ("restart", "stop", ...), or NULL in
 * *ret_type when none is. */
static int queued_job_type(sd_bus *bus, uint64_t deadline, const char *unit_path,
			   sd_bus_error *error, char **ret_type)
{
	sd_bus_message *reply = NULL;
	const char *job_path;
	uint32_t job_id;
	char *type = NULL;
	int rc;

	rc = time_left(bus, deadline);
	if (rc >= 0)
		rc = sd_bus_get_property(bus, SYSTEMD_SERVICE, unit_path, UNIT_INTERFACE, "Job",
					 error, &reply, "(uo)");
	if (rc < 0)
		return rc;
	rc = sd_bus_message_read(reply, "(uo)", &job_id, &job_path);
	if (rc >= 0 && job_id != 0)
		rc = time_left(bus, deadline);
	if (rc >= 0 && job_id != 0)
		rc = sd_bus_get_property_string(bus, SYSTEMD_SERVICE, job_path, JOB_INTERFACE,
						"JobType", error, &type);
	sd_bus_message_unref(reply);
	if (rc < 0)
		return rc;
	*ret_type = type;
	return 0;
}

static int ask_job_type(sd_bus_error *error, char **ret_type)
{
	uint64_t deadline = now_usec() + ASK_TIMEOUT_USEC;
	sd_bus *bus = NULL;
	char *unit_path = NULL;
	int rc;

	rc = sd_bus_open_system(&bus);
	if (rc >= 0)
		rc = bus_ready_by(bus, deadline);
	if (rc >= 0)
		rc = own_service(bus, deadline, error, &unit_path);
	if (rc >= 0)
		rc = queued_job_type(bus, deadline, unit_path, error, ret_type);
	free(unit_path);
	/* No flush: it would wait as long as the bus lets it for a connection never up. */
	sd_bus_close_unref(bus);
	return rc;
}

bool manager_restarting(void)
{
	sd_bus_error error = SD_BUS_ERROR_NULL;
	char *type = NULL;
	bool restarting = false;
	int rc;

	/* Without systemd as PID 1 no one restarts the daemon with its store but by killing it. */
	if (sd_booted() <= 0)
		return false;
	rc = ask_job_type(&error, &type);
	if (rc == -ESRCH) {
		log_info("stopping: not the main process of a systemd service, so this is no "
			 "restart");
	} else if (rc < 0) {
		log_warning(
			"cannot ask systemd whether this stop is a restart (D-Bus system bus: %s); "
			"taking it for a stop for good, which tears the leases' kernel objects "
			"down. Run a D-Bus system bus (package dbus) so that `systemctl restart` "
			"keeps the leases' device DMA going, as a crash does",
			sd_bus_error_is_set(&error) ? error.message : strerror(-rc));
	} else {
		/* systemd makes a try-restart of a running unit a restart job before it runs. */
		restarting = type && strcmp(type, "restart") == 0;
		log_info("stopping: systemd's job on the unit is %s",
			 type ? type : "none (a signal)");
	}
	sd_bus_error_free(&error);
	free(type);
	return restarting;
}
