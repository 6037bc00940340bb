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

int do_set_probes(struct call *call)
{
	bool attached = call->req->set_probes->attached;
	struct probes *p = call->d->probes;
	const char *tier = iommud_name(&iommud_probe_tier_names, probes_tier(p));
	Iommud__V1__SetProbesReply *reply;
	int rc = need_operator(call, "switching the map path probes");

	if (rc < 0)
		return rc;
	if (probes_tier(p) == IOMMUD__V1__PROBE_TIER__PROBE_TIER_OFF)
		return fail(-ENOTCONN,
			    "the map path probes are off (tier off): there are no programs to "
			    "%s; the daemon's start log ('probe not attached: ...', or "
			    "'iommuctl stats') says why, and a restart with probe-tier fentry, "
			    "kprobe or tracepoint on a kernel that allows BPF loads them",
			    attached ? "attach" : "detach");
	if (!(reply = REPLY(call, set_probes_reply)))
		return nomem();
	/* Asked for the state they are in, the kernel's text is left alone. */
	if (attached != probes_attached(p))
		rc = probes_set_attached(p, attached);
	log_notice("map path probes %s at tier %s by uid %u%s", attached ? "attached" : "detached",
		   tier, (unsigned)call->client->peer.uid,
		   rc < 0 ? ", some would not attach again (see 'iommuctl stats')" : "");
	if (rc < 0)
		return fail(-EIO,
			    "the kernel refused to attach some of the map path probes again; "
			    "'iommuctl stats' lists them under 'not attached', the others are "
			    "attached; detach and attach again to retry");
	reply->tier = probes_tier(p);
	reply->attached = probes_attached(p);
	return 0;
}
