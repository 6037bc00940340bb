// SPDX-License-Identifier: MIT
#include "dispatch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "call.h"
#include "log.h"

/* ---- the method table ----------------------------------------------------------------- */

/* What the dispatcher checks and prepares before a method's handler runs. */
struct method {
	int (*handle)(struct call *call);
	enum access access; /* the least access a caller needs */
	bool mutates;	    /* changes state, so needs write access */
	unsigned min_fds;   /* descriptors the request must carry ... */
	unsigned max_fds;   /* ... and may carry */
	bool session;	    /* joins the anonymous session if Hello chose none */
	bool once;	    /* only first on a connection; a failed one may be retried */
};

/* An entry for the method numbered by the schema's Request oneof: its name is the field's. */
#define METHOD(number, handler, ...)                                                               \
	[IOMMUD__V1__REQUEST__METHOD_##number] = {.handle = handler, __VA_ARGS__}
#define READS  .access = ACCESS_READ
#define WRITES .access = ACCESS_WRITE, .mutates = true

static const struct method methods[IOMMUD_METHOD_SLOTS] = {
	/* No access needed, so a refused peer can see who the daemon thinks it is. */
	METHOD(HELLO, do_hello, .access = ACCESS_NONE, .once = true),
	METHOD(LIST_DEVICES, do_list_devices, READS),
	METHOD(GET_DEVICE, do_get_device, READS),
	METHOD(ALLOC_DOMAIN, do_alloc_domain, WRITES, .session = true),
	METHOD(FREE_DOMAIN, do_free_domain, WRITES, .session = true),
	METHOD(ATTACH_DEVICE, do_attach_device, WRITES, .session = true),
	METHOD(REPLACE_DOMAIN, do_replace_domain, WRITES, .session = true),
	METHOD(DETACH_DEVICE, do_detach_device, WRITES, .session = true),
	METHOD(MAP, do_map, WRITES, .session = true, .min_fds = 1, .max_fds = 1),
	/* Each entry names its descriptor; check_fd_use holds the entries to them. */
	METHOD(MAP_BATCH, do_map_batch, WRITES, .session = true, .max_fds = IOMMUD_MAX_FDS),
	METHOD(UNMAP, do_unmap, WRITES, .session = true),
	METHOD(UNMAP_ALL, do_unmap_all, WRITES, .session = true),
	METHOD(LIST_MAPPINGS, do_list_mappings, READS, .session = true),
	METHOD(GET_IOVA_RANGES, do_get_iova_ranges, READS, .session = true),
	METHOD(SET_DIRTY_TRACKING, do_set_dirty_tracking, WRITES, .session = true),
	/* Reading clears the bits unless asked not to, so it changes state. */
	METHOD(READ_DIRTY, do_read_dirty, WRITES, .session = true),
	/* A device fd lets its holder drive DMA, so it is a write. */
	METHOD(OPEN_DEVICE, do_open_device, WRITES, .session = true),
	METHOD(GET_STATS, do_get_stats, READS),
	METHOD(LIST_DOMAINS, do_list_domains, READS, .session = true),
	METHOD(RELEASE_LEASE, do_release_lease, WRITES, .session = true),
};

const char *method_name(Iommud__V1__Request__MethodCase method)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
		&iommud__v1__request__descriptor, (unsigned)method);

	return f && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ? f->name : "unknown";
}

/* The entry for a method number; one without a handler when the daemon does not know it. */
static const struct method *method_for(Iommud__V1__Request__MethodCase method)
{
	return (unsigned)method < IOMMUD_METHOD_SLOTS ? &methods[method] : &methods[0];
}

static int check_entry(const ProtobufCFieldDescriptor *f)
{
	const ProtobufCFieldDescriptor *reply =
		protobuf_c_message_descriptor_get_field(&iommud__v1__response__descriptor, f->id);
	const struct method *m = method_for((Iommud__V1__Request__MethodCase)f->id);
	int rc = 0;

	if (!m->handle) {
		log_err("method %s (%u) of the schema has no entry in the method table", f->name,
			f->id);
		return -EINVAL;
	}
	if (m->mutates && m->access != ACCESS_WRITE) {
		log_err("method %s mutates but needs only read access", f->name);
		rc = -EINVAL;
	}
	if (m->min_fds > m->max_fds || m->max_fds > IOMMUD_MAX_FDS) {
		log_err("method %s takes %u to %u descriptors, which no packet can carry", f->name,
			m->min_fds, m->max_fds);
		rc = -EINVAL;
	}
	if (!reply || !(reply->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) {
		log_err("method %s (%u) has no reply field of the same number", f->name, f->id);
		rc = -EINVAL;
	}
	return rc;
}

int dispatch_self_check(void)
{
	const ProtobufCMessageDescriptor *req = &iommud__v1__request__descriptor;
	unsigned schema_methods = 0, table_methods = 0;
	int rc = 0;

	for (unsigned i = 0; i < req->n_fields; i++) {
		if (!(req->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		schema_methods++;
		if (check_entry(&req->fields[i]) < 0)
			rc = -EINVAL;
	}
	for (unsigned i = 0; i < IOMMUD_METHOD_SLOTS; i++)
		table_methods += methods[i].handle != NULL;
	if (table_methods != schema_methods) {
		log_err("%u entries in the method table for %u methods of the schema",
			table_methods, schema_methods);
		rc = -EINVAL;
	}
	return rc;
}

/* ---- the call and its reply ------------------------------------------------------------ */

void *call_alloc(struct call *call, size_t size)
{
	void *p;

	/* Replies of many parts (a page of mappings) make many allocations: grow by doubling. */
	if (call->n_allocs == call->cap_allocs) {
		size_t cap = call->cap_allocs ? 2 * call->cap_allocs : 16;
		void **grown = realloc(call->allocs, cap * sizeof(*grown));

		if (!grown)
			return NULL;
		call->allocs = grown;
		call->cap_allocs = cap;
	}
	p = calloc(1, size ? size : 1);
	if (p)
		call->allocs[call->n_allocs++] = p;
	return p;
}

char *call_strdup(struct call *call, const char *text)
{
	char *copy = call_alloc(call, strlen(text) + 1);

	if (copy)
		strcpy(copy, text);
	return copy;
}

void *call_reply(struct call *call, const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *reply = call_alloc(call, desc->sizeof_message);

	if (!reply)
		return NULL;
	protobuf_c_message_init(desc, reply);
	call->resp->result_case = (Iommud__V1__Response__ResultCase)call->req->method_case;
	/* Every member of the result union is a message pointer at the same place. */
	call->resp->hello = (Iommud__V1__HelloReply *)reply;
	return reply;
}

int call_iova_ranges(struct call *call, const struct kh_iova_range *ranges, size_t n,
		     Iommud__V1__IovaRange ***ret_ranges, size_t *ret_n)
{
	Iommud__V1__IovaRange **out = call_alloc(call, n * sizeof(*out));

	if (!out)
		return nomem();
	for (size_t i = 0; i < n; i++) {
		if (!(out[i] = call_alloc(call, sizeof(*out[i]))))
			return nomem();
		iommud__v1__iova_range__init(out[i]);
		out[i]->start = ranges[i].start;
		out[i]->last = ranges[i].last;
	}
	*ret_ranges = out;
	*ret_n = n;
	return 0;
}

int nomem(void)
{
	return fail(-ENOMEM, "the daemon is out of memory");
}

static void call_end(struct call *call)
{
	if (call->out_fd >= 0)
		(void)close(call->out_fd);
	for (size_t i = 0; i < call->n_fds; i++)
		if (call->fds[i] >= 0)
			(void)close(call->fds[i]);
	for (size_t i = 0; i < call->n_allocs; i++)
		free(call->allocs[i]);
	free(call->allocs);
}

/* ---- clients and packets --------------------------------------------------------------- */

int client_init(struct daemon *d, struct client *c, const struct peer *peer)
{
	*c = (struct client){.peer = *peer};
	return tenant_get(d->reg, peer, &c->tenant, &c->access);
}

void client_fini(struct client *c)
{
	if (c->session)
		session_leave(c->session);
	if (c->tenant)
		tenant_put(c->tenant);
	*c = (struct client){0};
}

static int check_fd_count(const struct call *call, const struct method *m)
{
	if (call->n_fds >= m->min_fds && call->n_fds <= m->max_fds)
		return 0;
	if (m->min_fds == m->max_fds)
		return fail(-EINVAL,
			    "%s takes exactly %u file descriptors, but %zu came with it; send "
			    "the ones its request names as SCM_RIGHTS, and no others",
			    method_name(call->req->method_case), m->max_fds, call->n_fds);
	return fail(-EINVAL,
		    "%s takes %u to %u file descriptors, but %zu came with it; send the ones "
		    "its request names as SCM_RIGHTS, and no others",
		    method_name(call->req->method_case), m->min_fds, m->max_fds, call->n_fds);
}

/* The refusals that come before a method runs, in the order docs/protocol.md gives. A request
 * refused here does not count as a connection's first call. */
static int check_request(const struct call *call, const struct method *m)
{
	const struct client *c = call->client;
	const char *name = method_name(call->req->method_case);

	if (c->access == ACCESS_NONE && m->access > ACCESS_NONE)
		return fail(-EPERM,
			    "uid %u may not use iommud; an administrator can grant access "
			    "with a [user NAME] or [group NAME] section in the daemon's "
			    "configuration",
			    (unsigned)c->peer.uid);
	if (!m->handle)
		return fail(-EOPNOTSUPP,
			    "this daemon does not know method %d; it speaks protocol "
			    "version %d (hello says its version)",
			    (int)call->req->method_case, IOMMUD_PROTOCOL_VERSION);
	if (c->access < m->access)
		return fail(-EPERM,
			    "%s changes state, which uid %u may not do (read-only access); "
			    "an administrator can grant access = write in the daemon's "
			    "configuration",
			    name, (unsigned)c->peer.uid);
	if (check_fd_count(call, m) < 0)
		return -EINVAL;
	if (m->once && c->called)
		return fail(-EALREADY,
			    "%s must be the first call on a connection, and only one; open a "
			    "new connection to choose another session",
			    name);
	return 0;
}

/* Runs the method on a checked request; a failed once-only call leaves the connection as it
 * was, any other call fixes its session. */
static int run_method(struct call *call, const struct method *m)
{
	struct client *c = call->client;
	int rc = 0;

	if (m->session && !c->session)
		rc = session_join(c->tenant, NULL, &c->session);
	if (rc == 0)
		rc = m->handle(call);
	if (rc == 0 || !m->once)
		c->called = true;
	return rc;
}

static int handle_request(struct call *call)
{
	Iommud__V1__Request__MethodCase number = call->req->method_case;
	const struct method *m = method_for(number);
	int rc = check_request(call, m);

	if (rc == 0)
		rc = run_method(call, m);
	if (m->handle && rc < 0)
		log_debug("%s from uid %u failed: %s", method_name(number),
			  (unsigned)call->client->peer.uid, failure_message());
	return rc;
}

/* Packs the response to a call that gave rc; *ret_code is the status code sent, which is not
 * rc's when the reply did not fit. */
static size_t pack_response(Iommud__V1__Response *resp, int rc, int failed_index, uint8_t *out,
			    Iommud__V1__Code *ret_code)
{
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;

	status.code = code_for_errno(rc);
	status.errno_value = -rc;
	status.failed_index = failed_index;
	status.message = rc ? (char *)failure_message() : "";
	resp->status = &status;
	if (rc) {
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
	}
	/* Replies are bounded by construction (pages, limits on bitmaps and batches); a reply
	 * that still does not fit is the daemon's bug and goes out as an error. */
	if (iommud__v1__response__get_packed_size(resp) > IOMMUD_MAX_MESSAGE) {
		status.code = IOMMUD__V1__CODE__CODE_INTERNAL;
		status.errno_value = EMSGSIZE;
		status.message = "the reply would exceed the message size limit; ask for less";
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
		log_err("reply to request %llu too large for a packet",
			(unsigned long long)resp->id);
	}
	*ret_code = status.code;
	return iommud__v1__response__pack(resp, out);
}

/* Counted by the status the reply carried, which is not the handler's when it did not fit. */
static void count_call(struct method_stats *stats, Iommud__V1__Code code)
{
	stats->calls++;
	stats->errors += code != IOMMUD__V1__CODE__CODE_OK;
	stats->codes[code]++;
}

/* The request in a packet the server marked as it received it. */
static int decode_packet(const uint8_t *packet, size_t len, enum packet_defect defect,
			 Iommud__V1__Request **ret_req)
{
	Iommud__V1__Request *req;

	if (defect == PACKET_TRUNCATED)
		return fail(-EMSGSIZE,
			    "the packet exceeds the %d-byte message limit and was dropped; "
			    "split the request (map_batch) or ask for less",
			    IOMMUD_MAX_MESSAGE);
	if (defect == PACKET_FDS_TRUNCATED)
		return fail(-EINVAL,
			    "the packet carried more than %d file descriptors and was dropped",
			    IOMMUD_MAX_FDS);
	req = iommud__v1__request__unpack(NULL, len, packet);
	if (!req)
		return fail(-EINVAL, "the packet is not a valid iommud.v1.Request message; check "
				     "the client's framing (one message per packet, no length "
				     "prefix)");
	*ret_req = req;
	return 0;
}

size_t dispatch_packet(struct daemon *d, struct client *c, const uint8_t *packet, size_t len,
		       enum packet_defect defect, int *fds, size_t n_fds, uint8_t *out, int *out_fd,
		       unsigned *ret_method)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	struct call call = {.d = d,
			    .client = c,
			    .resp = &resp,
			    .fds = fds,
			    .n_fds = n_fds,
			    .out_fd = -1,
			    .failed_index = -1};
	Iommud__V1__Request *req = NULL;
	Iommud__V1__Code code;
	size_t out_len;
	int rc = decode_packet(packet, len, defect, &req);

	*out_fd = -1;
	*ret_method = 0;
	if (rc < 0) {
		d->rejected_packets++;
		log_debug("rejected a packet: %s", failure_message());
	} else {
		call.req = req;
		resp.id = req->id;
		rc = handle_request(&call);
		if (method_for(req->method_case)->handle)
			*ret_method = (unsigned)req->method_case;
	}
	out_len = pack_response(&resp, rc, call.failed_index, out, &code);
	if (*ret_method)
		count_call(&d->methods[*ret_method], code);
	if (code == IOMMUD__V1__CODE__CODE_OK) {
		*out_fd = call.out_fd;
		call.out_fd = -1;
	}
	call_end(&call);
	if (req)
		iommud__v1__request__free_unpacked(req, NULL);
	return out_len;
}

void dispatch_reply_sent(struct daemon *d, unsigned method, uint64_t received_ns)
{
	if (method && method < IOMMUD_METHOD_SLOTS)
		histogram_add(&d->methods[method].latency, monotonic_ns() - received_ns);
}
