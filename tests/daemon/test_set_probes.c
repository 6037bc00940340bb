// SPDX-License-Identifier: MIT
/* SetProbes, the map path probes switched at run time (docs/protocol.md): only root and
 * observers allowed to write may switch them, and a daemon whose probes are off (no programs
 * loaded: probe-tier off here, as on any host that refuses BPF) refuses with what to do, while
 * GetStats says they are not attached. Switching loaded programs on a real kernel is the VM
 * tier's (tests/vm/test_probes_vm.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iommuctl.h>

#include "check.h"
#include "daemon_fixture.h"
#include "harness.h"

static const char config[] = "probe-tier = off\n[access]\ndefault = none\n"
			     "[uid 0]\naccess = write\ndevices = emu*\n"
			     "[uid 65534]\naccess = write\n"
			     "[uid 65533]\naccess = read\nstats = all\n"
			     "[uid 65532]\naccess = write\nstats = all\n";
#define WRITER_UID   65534u /* may write, but is no observer */
#define OBSERVER_UID 65533u /* an observer that may only read */
#define OPERATOR_UID 65532u /* an observer allowed to write: an operator, as root is */
#define DEVICES	     "emu0 emu1"

static struct iommuctl *connect_hello(const char *socket_path)
{
	struct iommuctl *c;

	CHECK_OK(iommuctl_connect(socket_path, &c));
	CHECK_OK(iommuctl_hello(c, "set-probes", NULL, NULL));
	return c;
}

/* 0 when both directions of the switch are refused with code, saying says. */
static int switch_answers(const char *socket_path, Iommud__V1__Code code, const char *says)
{
	struct iommuctl *c = connect_hello(socket_path);
	int refused = 0;

	for (int attached = 0; attached < 2; attached++)
		refused += iommuctl_set_probes(c, attached, NULL, NULL) < 0 &&
			   iommuctl_last_code(c) == code &&
			   strstr(iommuctl_last_error(c), says) != NULL;
	iommuctl_close(c);
	return refused == 2 ? 0 : 1;
}

/* As a writer that is no observer, or a read-only observer: refused for who it is. */
static int switch_refused(void *socket_path)
{
	return switch_answers(socket_path, IOMMUD__V1__CODE__CODE_PERMISSION_DENIED,
			      "switching the map path probes");
}

/* As an operator who is not root: past the permission check, to the tier's refusal. */
static int switch_admitted(void *socket_path)
{
	return switch_answers(socket_path, IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION, "tier off");
}

TEST(refused_to_non_operators)
{
	struct daemon_fixture f;

	fixture_start(&f, config, DEVICES);
	CHECK_EQ(run_as(WRITER_UID, switch_refused, f.socket_path), 0);
	CHECK_EQ(run_as(OBSERVER_UID, switch_refused, f.socket_path), 0);
	fixture_stop(&f);
}

TEST(admitted_to_an_observer_allowed_to_write)
{
	struct daemon_fixture f;

	fixture_start(&f, config, DEVICES);
	CHECK_EQ(run_as(OPERATOR_UID, switch_admitted, f.socket_path), 0);
	fixture_stop(&f);
}

/* The probes' state as GetStats reports it to c. */
static void probe_status(struct iommuctl *c, Iommud__V1__ProbeTier *ret_tier, bool *ret_attached)
{
	Iommud__V1__Response *resp = fixture_get_stats(c);

	CHECK(resp->get_stats->probes != NULL);
	*ret_tier = resp->get_stats->probes->tier;
	*ret_attached = resp->get_stats->probes->attached;
	iommuctl_response_free(resp);
}

TEST(refused_when_the_tier_is_off)
{
	struct daemon_fixture f;
	Iommud__V1__ProbeTier tier;
	bool attached = true;
	struct iommuctl *c;

	fixture_start(&f, config, DEVICES);
	c = connect_hello(f.socket_path);
	probe_status(c, &tier, &attached);
	CHECK_EQ(tier, IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF);
	CHECK(!attached);
	for (int on = 0; on < 2; on++) {
		CHECK_EQ(iommuctl_set_probes(c, on, NULL, NULL), -EBUSY);
		CHECK_EQ(iommuctl_last_code(c), IOMMUD__V1__CODE__CODE_FAILED_PRECONDITION);
		CHECK(strstr(iommuctl_last_error(c), "tier off") != NULL);
		CHECK(strstr(iommuctl_last_error(c), "probe-tier") != NULL);
	}
	/* Refused, it changed nothing, and the connection serves on. */
	probe_status(c, &tier, &attached);
	CHECK_EQ(tier, IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF);
	CHECK(!attached);
	iommuctl_close(c);
	fixture_stop(&f);
}
