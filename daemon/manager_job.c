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

#include "log.h"
#include "manager_job.h"

#define SYSTEMD_SERVICE	  "org.freedesktop.systemd1"
#define SYSTEMD_PATH	  "/org/freedesktop/systemd1"
#define MANAGER_INTERFACE SYSTEMD_SERVICE ".Manager"
#define UNIT_INTERFACE	  SYSTEMD_SERVICE ".Unit"
#define SERVICE_INTERFACE SYSTEMD_SERVICE ".Service"
#define JOB_INTERFACE	  SYSTEMD_SERVICE ".Job"

/* Long enough for a busy PID 1, short against TimeoutStopSec=. */
#define ASK_TIMEOUT_USEC (2 * 1000 * 1000)

/* The object path of the service unit whose main process this is, or -ESRCH when the daemon is
 * not one (run by hand, under another manager's scope); other errors are the bus's. */
static int own_service(sd_bus *bus, sd_bus_error *error, char **ret_path)
{
	sd_bus_message *reply = NULL;
	const char *path;
	uint32_t main_pid = 0;
	char *copy;
	int rc;

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
	rc = sd_bus_get_property_trivial(bus, SYSTEMD_SERVICE, copy, SERVICE_INTERFACE, "MainPID",
					 error, 'u', &main_pid);
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
static int queued_job_type(sd_bus *bus, const char *unit_path, sd_bus_error *error, char **ret_type)
{
	sd_bus_message *reply = NULL;
	const char *job_path;
	uint32_t job_id;
	char *type = NULL;
	int rc;

	rc = sd_bus_get_property(bus, SYSTEMD_SERVICE, unit_path, UNIT_INTERFACE, "Job", error,
				 &reply, "(uo)");
	if (rc < 0)
		return rc;
	rc = sd_bus_message_read(reply, "(uo)", &job_id, &job_path);
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
	sd_bus *bus = NULL;
	char *unit_path = NULL;
	int rc;

	rc = sd_bus_open_system(&bus);
	if (rc >= 0)
		rc = sd_bus_set_method_call_timeout(bus, ASK_TIMEOUT_USEC);
	if (rc >= 0)
		rc = own_service(bus, error, &unit_path);
	if (rc >= 0)
		rc = queued_job_type(bus, unit_path, error, ret_type);
	free(unit_path);
	sd_bus_flush_close_unref(bus);
	return rc;
}

bool manager_restarting(void)
{
	sd_bus_error error = SD_BUS_ERROR_NULL;
	char *type = NULL;
	bool restarting;
	int rc;

	/* Without systemd as PID 1 no one restarts the daemon with its store but by killing it. */
	if (sd_booted() <= 0)
		return false;
	rc = ask_job_type(&error, &type);
	if (rc == -ESRCH) {
		log_info("stopping: not the main process of a systemd service, so this is no "
			 "restart");
		return false;
	}
	if (rc < 0) {
		log_warning(
			"cannot ask systemd whether this stop is a restart (D-Bus system bus: %s); "
			"taking it for a stop for good, which tears the leases' kernel objects "
			"down. Run a D-Bus system bus (package dbus) so that `systemctl restart` "
			"keeps the leases' device DMA going, as a crash does",
			error.message ? error.message : strerror(-rc));
		sd_bus_error_free(&error);
		return false;
	}
	restarting = type && (strcmp(type, "restart") == 0 || strcmp(type, "try-restart") == 0);
	log_info("stopping: systemd's job on the unit is %s", type ? type : "none (a signal)");
	free(type);
	return restarting;
}
