// SPDX-License-Identifier: MIT
/* SetProbes: the map path probes of a running daemon taken off the kernel's functions and put
 * back, for an operator who suspects their cost or a kernel problem with them, without a
 * restart. */
#include <errno.h>

#include <names.h>

#include "call.h"
#include "daemon.h"
#include "log.h"
#include "probes/probes.h"

/* The audit trail of a switch: each one that happened, each refusal by name, and a request for
 * the state the probes are already in as what it is. */
static void log_switch(const struct call *call, bool attached, bool changed, int rc)
{
	struct probes *p = call->d->probes;
	const char *tier = iommud_name(&iommud_probe_tier_names, probes_tier(p));
	const char *state = attached ? "attached" : "detached";
	unsigned uid = (unsigned)call->client->peer.uid;
	const char *const *lines;
	size_t n;

	if (!changed) {
		log_info("map path probes already %s at tier %s, as uid %u asked", state, tier,
			 uid);
		return;
	}
	if (rc == 0) {
		log_notice("map path probes %s at tier %s by uid %u", state, tier, uid);
		return;
	}
	n = probes_detached(p, &lines);
	for (size_t i = 0; i < n; i++)
		log_warning("probe not attached: %s", lines[i]);
	log_warning("map path probes at tier %s: uid %u asked to attach them, some would not "
		    "attach again (the lines above); they stay detached until an attach succeeds",
		    tier, uid);
}

int do_set_probes(struct call *call)
{
	bool attached = call->req->set_probes->attached;
	struct probes *p = call->d->probes;
	Iommud__V1__SetProbesReply *reply;
	int rc = need_operator(call, "switching the map path probes");
	bool changed;

	if (rc < 0)
		return rc;
	if (probes_tier(p) == IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF)
		return fail(-EBUSY,
			    "the map path probes are off (tier off): there are no programs to "
			    "%s; the daemon's start log ('probe not attached: ...', or "
			    "'iommuctl stats') says why, and a restart with probe-tier fentry, "
			    "kprobe or tracepoint on a kernel that allows BPF loads them",
			    attached ? "attach" : "detach");
	if (!(reply = REPLY(call, set_probes_reply)))
		return nomem();
	/* Asked for the state they are all in, the kernel's text is left alone; a partial
	 * attach is not that state, so asking again retries it. */
	changed = attached ? !probes_attached(p) : !probes_switched_off(p);
	rc = changed ? probes_set_attached(p, attached) : 0;
	log_switch(call, attached, changed, rc);
	/* A refusal is the kernel's, not the request's: the reply says what state remains. */
	reply->tier = probes_tier(p);
	reply->attached = probes_attached(p);
	return 0;
}
