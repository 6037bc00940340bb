/* SPDX-License-Identifier: MIT */
/*
 * What the method handlers share: the call being handled and the helpers that build its reply.
 * Internal to the dispatcher (dispatch.c) and the handlers (method_*.c).
 *
 * A handler runs only after the dispatcher has checked what the method table says of it
 * (access, descriptor count, only-once) and joined the session it needs, so it starts from
 * its request's own fields. It returns 0 or a negative errno recorded with fail().
 *
 * A handler whose work is costly (MapBatch) does it in slices: when the call's deadline has
 * passed with work left, it sets resume (and abandon) and returns CALL_MORE; the server then
 * keeps the call and, in its tenant's next turn, runs resume, which returns likewise, until one
 * returns 0 or a negative errno as a handler would. No other request of the tenant runs in the
 * meantime. Should the connection close first, abandon takes back what the call did (a removal
 * finishes instead), bounded by the deadline as resume is: CALL_MORE while there is more,
 * then 0 (a removal: finished) or a negative errno.
 *
 * Ownership: the call owns everything allocated with call_alloc (the reply and its parts),
 * which comes from the memory its request was decoded into and is released with it, after the
 * reply is packed (one chunk of it the dispatching thread keeps for the next request, until
 * dispatch_fini); the received descriptors stay the call's unless a handler takes one by
 * setting its slot to -1. A kept call owns its request too.
 */
#ifndef IOMMUD_CALL_H
#define IOMMUD_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <iommud.pb-c.h>

#include "dispatch.h"
#include "status.h"

/* A column of a compact batch as the call reads it, in place: one value per entry, or one
 * that every entry takes (a column of one value, or of none: then a zero). */
struct column_view {
	const void *values;
	size_t each; /* SIZE_MAX: values[i] is entry i's; 0: values[0] is every entry's */
};

/* A Map's or MapBatch's entries: MapEntry messages, or a compact batch's columns, which are
 * read where protobuf-c decoded them rather than copied into messages (a batch of 1024 would
 * take 80 KiB of them, and every pass over the entries would read that again). */
struct map_entries {
	Iommud__V1__MapEntry *const *messages; /* NULL for columns */
	size_t n;
	struct column_view domain_ids, fd_indexes, offsets, lengths, prots, fixed_iovas, iovas,
		alignments;
};

/* The fields of one entry, whichever form it came in. */
struct entry_fields {
	uint32_t domain_id, fd_index, prot;
	bool fixed_iova;
	uint64_t offset, length, iova, alignment;
};

static inline uint32_t column_u32(const struct column_view *c, size_t i)
{
	return ((const uint32_t *)c->values)[i & c->each];
}

static inline uint64_t column_u64(const struct column_view *c, size_t i)
{
	return ((const uint64_t *)c->values)[i & c->each];
}

/* Entry i of es (i < es->n; a message entry not NULL). Inlined, a caller reads only the
 * fields it uses. */
static inline struct entry_fields entry_at(const struct map_entries *es, size_t i)
{
	const Iommud__V1__MapEntry *m;

	if (!es->messages)
		return (struct entry_fields){
			.domain_id = column_u32(&es->domain_ids, i),
			.fd_index = column_u32(&es->fd_indexes, i),
			.prot = column_u32(&es->prots, i),
			.fixed_iova = ((const protobuf_c_boolean *)
					       es->fixed_iovas.values)[i & es->fixed_iovas.each],
			.offset = column_u64(&es->offsets, i),
			.length = column_u64(&es->lengths, i),
			.iova = column_u64(&es->iovas, i),
			.alignment = column_u64(&es->alignments, i),
		};
	m = es->messages[i];
	return (struct entry_fields){
		.domain_id = m->domain_id,
		.fd_index = m->fd_index,
		.prot = m->prot,
		.fixed_iova = m->fixed_iova,
		.offset = m->offset,
		.length = m->length,
		.iova = m->iova,
		.alignment = m->alignment,
	};
}

struct call {
	struct daemon *d;
	struct client *client;
	const Iommud__V1__Request *req;
	void *req_memory;      /* where req was decoded, freed with it (dispatch.c) */
	const uint8_t *packet; /* req as received, for the checks that need its bytes */
	size_t packet_len;
	Iommud__V1__Response *resp;
	/* The first n_carried received, the call's: a handler that keeps one sets its slot to
	 * -1. After them, up to n_fds, the connection's kept ones the request names (kept_files),
	 * borrowed, their files as examined when kept. */
	int *fds;
	size_t n_fds, n_carried;
	struct map_file files[IOMMUD_MAX_FDS]; /* the fds' files, checked by the map handlers */
	struct reply_fds out;		       /* to send with the reply */
	int failed_index;
	uint64_t deadline_ns; /* monotonic_ns: a slice ends there, after at least one step */
	bool alone; /* its tenant has the loop to itself: steps grow to MAP_STEP_ALONE_NS */
	int (*resume)(struct call *call);
	int (*abandon)(struct call *call);
	struct map_entries entries; /* a Map's or MapBatch's */
	size_t done;		    /* the handler's place in its work */
	uint64_t *iovas;	    /* a batch's: where each entry went; its reply may list fewer */
	struct map_progress part;   /* of the mapping in progress */
	struct unmap_progress back; /* the removal in progress: asked for, or taking back */
	int undo_rc;		    /* the failure it is taking its work back for */
	char *undo_message;	    /* and its message, kept across slices */
	bool left_mapped;	    /* taking back failed: some of what it mapped stays */
	bool left_detached;	    /* a refused replace left the device detached (kh_replace) */
	bool changed_nothing;	    /* succeeded with nothing to record (a retried Map) */
	size_t store_room; /* descriptor store slots set aside for it until it ends (state.h) */
};

/* What a handler returns to be resumed later (see above). */
#define CALL_MORE 1

/* Whether the call's slice has used up its time. */
bool call_out_of_time(const struct call *call);

/* Zeroed memory that lives until the reply is packed; NULL when out of memory. */
void *call_alloc(struct call *call, size_t size);
/* The same, not cleared: for arrays the caller fills whole at once (a batch's entries). */
void *call_alloc_filled(struct call *call, size_t size);
char *call_strdup(struct call *call, const char *text);
/* The reply message of the call's method, registered as the response's result. */
void *call_reply(struct call *call, const ProtobufCMessageDescriptor *desc);
#define REPLY(call, name) call_reply(call, &iommud__v1__##name##__descriptor)

/* The reply's copy of n ranges, in *ret_ranges and *ret_n; -ENOMEM when out of memory. */
int call_iova_ranges(struct call *call, const struct kh_iova_range *ranges, size_t n,
		     Iommud__V1__IovaRange ***ret_ranges, size_t *ret_n);

/* Gives fd (the call's from then on) to be sent with the reply; -EMSGSIZE, fd closed, when the
 * reply holds as many as a packet carries. */
int call_send_fd(struct call *call, int fd);

/* Records that the daemon ran out of memory and returns -ENOMEM. */
int nomem(void);

/* The method's one spelling in logs, errors and statistics: its Request oneof field's name
 * ("list_devices"). */
const char *method_name(Iommud__V1__Request__MethodCase method);

/* Device names in requests must be non-empty; protobuf-c gives "" for an unset string. */
int need_device_name(const char *name);

/* method_daemon.c */
int do_hello(struct call *call);
/* The names (kernel-helper's) of the capabilities in caps that a client may rely on, written to
 * names (room for KH_CAP_COUNT); returns how many. */
size_t capability_names(uint32_t caps, char **names);
int do_release_lease(struct call *call);
int do_daemon_reexec(struct call *call);
/* 0 when the caller may act on the daemon as a whole (root, or an observer allowed to write:
 * DaemonReexec, SetProbes), else -EPERM with a message that what (a phrase: "re-executing the
 * daemon") is not for it. */
int need_operator(const struct call *call, const char *what);

/* method_probes.c */
int do_set_probes(struct call *call);

/* method_keep_files.c */
int do_keep_files(struct call *call);

/* method_delegate.c */
int do_delegate_devices(struct call *call);
int do_list_delegations(struct call *call);

/* method_stats.c */
int do_get_stats(struct call *call);
/* A quota as replies show it: the rule's limits (none without one) and the usage. */
void fill_quota(Iommud__V1__Quota *q, const struct access_rule *rule, struct usage used);
/* The daemon-wide ceilings, with what all tenants hold against them when with_usage. */
int fill_ceilings(struct call *call, Iommud__V1__Ceilings **ret_ceilings, bool with_usage);

/* method_devices.c */
int do_list_devices(struct call *call);
int do_get_device(struct call *call);
int do_attach_device(struct call *call);
int do_replace_domain(struct call *call);
int do_detach_device(struct call *call);
int do_open_device(struct call *call);

/* method_domains.c */
/* The kernel-helper arguments an AllocDomain request asks for (data points into r). */
int domain_alloc_args(const Iommud__V1__AllocDomainRequest *r,
		      struct kh_domain_alloc_args *ret_args);
int do_alloc_domain(struct call *call);
int do_free_domain(struct call *call);
int do_list_domains(struct call *call);
int do_set_dirty_tracking(struct call *call);

/* method_mappings.c */
int do_map(struct call *call);
int do_map_batch(struct call *call);
int do_unmap(struct call *call);
int do_unmap_all(struct call *call);
int do_list_mappings(struct call *call);
int do_get_iova_ranges(struct call *call);
int do_read_dirty(struct call *call);

#endif
