// SPDX-License-Identifier: MIT
#include "dispatch.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iommud_envelope.h>
#include <kh/kh_sanitizer.h>

#include "call.h"
#include "daemon_lock.h"
#include "flow.h"
#include "log.h"
#include "state.h"
#include "text.h"

/* ---- the method table ----------------------------------------------------------------- */

/* What the dispatcher checks and prepares before a method's handler runs. */
struct method {
	int (*handle)(struct call *call);
	enum access access; /* the least access a caller needs */
	bool mutates;	    /* changes state, so needs write access */
	unsigned max_fds;   /* descriptors the request may carry */
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
	METHOD(MAP, do_map, WRITES, .session = true, .max_fds = 1),
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
	/* Restarts nothing a tenant holds; who may ask is checked by the handler (observers). */
	METHOD(DAEMON_REEXEC, do_daemon_reexec, READS),
	/* Hands out device fds that drive DMA, like OpenDevice. */
	METHOD(DELEGATE_DEVICES, do_delegate_devices, WRITES, .session = true),
	METHOD(LIST_DELEGATIONS, do_list_delegations, READS),
	/* Changes no tenant's state; who may ask is checked by the handler, as for a reexec. */
	METHOD(SET_PROBES, do_set_probes, READS),
	/* Only for maps, which need write access. */
	METHOD(KEEP_FILES, do_keep_files, WRITES, .max_fds = IOMMUD_MAX_FDS),
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
	if (m->max_fds > IOMMUD_MAX_FDS) {
		log_err("method %s takes up to %u descriptors, which no packet can carry", f->name,
			m->max_fds);
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

/* protobuf-c allocates every nested message of a request on its own (each of a MapBatch's up to
 * 1024 entries) and frees each again: a request takes its memory from chunks of this many
 * bytes instead, all freed together with it, and so does its call's reply (call_alloc).
 * AddressSanitizer sees only whole allocations: parts cut from a shared chunk, or a chunk
 * reused at once, would hide a write past a part and a use after free. Sanitizer builds hence
 * give every part a chunk of its own, of exactly its size, and keep none for reuse. */
#define REQUEST_CHUNK_SHARED (!KH_ASAN)
#define REQUEST_CHUNK	     (REQUEST_CHUNK_SHARED ? 16384 : 0)
#define REQUEST_ROUND	     (REQUEST_CHUNK_SHARED ? alignof(max_align_t) : 1)

struct request_chunk {
	struct request_chunk *next;
	size_t used, size;
	alignas(max_align_t) unsigned char data[];
};

/* The chunks of the last requests freed, for the next: most requests then allocate nothing.
 * A MapBatch's entries need one chunk larger than the rest, and a chunk that large handed back
 * to malloc after each batch costs more than it saves: the next large malloc makes glibc
 * consolidate the small blocks the last UnmapAll freed. Up to REQUEST_SPARES chunks of up to
 * REQUEST_SPARE_MAX bytes each are kept, per thread, as a thread's requests come one at a time;
 * dispatch_fini frees them. */
#define REQUEST_SPARES	  4
#define REQUEST_SPARE_MAX (256u * 1024)
static _Thread_local struct request_chunk *spare_chunks[REQUEST_SPARES];

/* The smallest kept chunk of at least bytes, taken out of the spares; NULL if none is. */
static struct request_chunk *spare_take(size_t bytes)
{
	struct request_chunk **best = NULL;

	for (size_t i = 0; i < REQUEST_SPARES; i++)
		if (spare_chunks[i] && spare_chunks[i]->size >= bytes &&
		    (!best || spare_chunks[i]->size < (*best)->size))
			best = &spare_chunks[i];
	if (best) {
		struct request_chunk *chunk = *best;

		*best = NULL;
		return chunk;
	}
	return NULL;
}

/* Keeps chunk for a later request when there is room among the spares; false if not. */
static bool spare_keep(struct request_chunk *chunk)
{
	if (!REQUEST_CHUNK_SHARED || chunk->size > REQUEST_SPARE_MAX)
		return false;
	for (size_t i = 0; i < REQUEST_SPARES; i++)
		if (!spare_chunks[i]) {
			spare_chunks[i] = chunk;
			return true;
		}
	return false;
}

static void *request_alloc(void *memory, size_t size)
{
	struct request_chunk **head = memory, *chunk = *head;
	size_t need;

	/* Past this, rounding up or adding the header would wrap. */
	if (size > SIZE_MAX - sizeof(*chunk) - alignof(max_align_t))
		return NULL;
	need = (size + REQUEST_ROUND - 1) & ~(REQUEST_ROUND - 1);
	if (!chunk || need > chunk->size - chunk->used) {
		size_t bytes = need > REQUEST_CHUNK ? need : REQUEST_CHUNK;
		struct request_chunk *spare = REQUEST_CHUNK_SHARED ? spare_take(bytes) : NULL;

		if (spare) {
			chunk = spare;
			bytes = spare->size;
		} else if (!(chunk = malloc(sizeof(*chunk) + bytes))) {
			return NULL;
		}
		*chunk = (struct request_chunk){.next = *head, .size = bytes};
		*head = chunk;
	}
	chunk->used += need;
	return chunk->data + chunk->used - need;
}

/* What protobuf-c frees goes with the request's chunks. */
static void request_keep(void *memory, void *data)
{
	(void)memory;
	(void)data;
}

static void request_free(void *memory)
{
	for (struct request_chunk *chunk = memory, *next; chunk; chunk = next) {
		next = chunk->next;
		if (!spare_keep(chunk))
			free(chunk);
	}
}

void dispatch_fini(void)
{
	for (size_t i = 0; i < REQUEST_SPARES; i++) {
		free(spare_chunks[i]);
		spare_chunks[i] = NULL;
	}
}

bool call_out_of_time(const struct call *call)
{
	return call->deadline_ns != UINT64_MAX && monotonic_ns() >= call->deadline_ns;
}

void *call_alloc_filled(struct call *call, size_t size)
{
	return request_alloc(&call->req_memory, size ? size : 1);
}

void *call_alloc(struct call *call, size_t size)
{
	void *p = call_alloc_filled(call, size);

	if (p)
		memset(p, 0, size);
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

int call_send_fd(struct call *call, int fd)
{
	if (call->out.n == IOMMUD_MAX_FDS) {
		(void)close(fd);
		return fail(-EMSGSIZE, "the reply would carry more than %d file descriptors",
			    IOMMUD_MAX_FDS);
	}
	call->out.fds[call->out.n++] = fd;
	return 0;
}

void reply_fds_close(struct reply_fds *out)
{
	void (*unsent)(void *arg, uint64_t token) = out->unsent;

	for (size_t i = 0; i < out->n; i++)
		(void)close(out->fds[i]);
	out->n = 0;
	out->unsent = NULL;
	out->sent = NULL;
	if (unsent)
		unsent(out->unsent_arg, out->unsent_token);
}

void reply_fds_sent(struct reply_fds *out)
{
	void (*sent)(void *arg, uint64_t token) = out->sent;

	out->unsent = NULL;
	reply_fds_close(out);
	if (sent)
		sent(out->unsent_arg, out->unsent_token);
}

int nomem(void)
{
	return fail(-ENOMEM, "the daemon is out of memory");
}

static void call_end(struct call *call)
{
	/* Only a lease's call sets room aside, and a map path must not write the state's books. */
	if (call->store_room)
		state_call_end(call->d->state, call);
	reply_fds_close(&call->out);
	/* Those past the carried ones are the connection's, kept. */
	for (size_t i = 0; i < call->n_carried; i++)
		if (call->fds[i] >= 0)
			(void)close(call->fds[i]);
}

/* ---- clients and packets --------------------------------------------------------------- */

int client_init(struct daemon *d, struct client *c, const struct peer *peer)
{
	/* The first loop thread's counters until the server says which thread serves it. */
	*c = (struct client){.peer = *peer, .fd = -1, .counters = d->counters};
	/* An unverified peer stays connected, tenantless, to be told why it is refused. */
	if (peer->doubt != PEER_VERIFIED)
		return 0;
	return tenant_get(d->reg, &c->peer, &c->tenant, &c->access);
}

void client_give_up_kept_file(struct client *c, unsigned slot)
{
	if (!c->kept_files[slot].used)
		return;
	(void)close(c->kept_files[slot].file.fd);
	c->kept_files[slot].used = false;
}

void client_fini(struct client *c)
{
	for (unsigned slot = 0; slot < IOMMUD_KEPT_FILES; slot++)
		client_give_up_kept_file(c, slot);
	if (c->session)
		session_leave(c->session);
	if (c->tenant)
		tenant_put(c->tenant);
	peer_clear(&c->peer);
	*c = (struct client){0};
}

bool client_is_observer(const struct client *c)
{
	const struct access_rule *rule = c->tenant ? tenant_rule(c->tenant) : NULL;

	return c->peer.uid == 0 || (rule && rule->stats_all);
}

/* ---- what a request may hold ---------------------------------------------------------- */

static int not_a_request(void)
{
	return fail(-EINVAL, "the packet is not a valid iommud.v1.Request message; check the "
			     "client's framing (one message per packet, no length prefix)");
}

/* The request named no method of this daemon's schema (dispatch_self_check gives every one of
 * them an entry): says what it received instead. */
static int unknown_method(const Iommud__V1__Request *req)
{
	if (req->base.n_unknown_fields)
		return fail(-EOPNOTSUPP,
			    "this daemon does not know the method in field %u of the request; "
			    "it speaks protocol version %d (hello says its version and "
			    "docs/protocol.md its methods)",
			    (unsigned)req->base.unknown_fields[0].tag, IOMMUD_PROTOCOL_VERSION);
	return fail(-EOPNOTSUPP, "the request names no method: set one field of the method oneof "
				 "of iommud.v1.Request (docs/protocol.md)");
}

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret_value)
{
	uint64_t value = 0;

	for (unsigned shift = 0; *p < end && shift < 64; shift += 7) {
		uint8_t byte = *(*p)++;

		value |= (uint64_t)(byte & 0x7f) << shift;
		if (!(byte & 0x80)) {
			*ret_value = value;
			return 0;
		}
	}
	return not_a_request();
}

/* The fields from the request down to a string field: each names its field in the one above.
 * Spelled out ("map_batch.entries.name") only for an error, as a batch holds many messages. */
struct field_path {
	const struct field_path *up; /* NULL: the request itself */
	const char *name;
};

static void path_format(const struct field_path *path, char *buf, size_t size)
{
	char above[256] = "";

	if (path->up && path->up->up)
		path_format(path->up, above, sizeof(above));
	(void)snprintf(buf, size, "%s%s%s", above, above[0] ? "." : "", path->name);
}

/* A string field's bytes as they came: protobuf-c hands the handlers a C string, which would
 * end at an embedded NUL ("ab\0cd" read as "ab"), and does not check UTF-8. */
static int check_string(const struct field_path *field, const uint8_t *text, uint64_t len)
{
	const char *nul = memchr(text, '\0', len);
	size_t invalid = utf8_invalid_at((const char *)text, len);
	char path[256];

	if (!nul && invalid >= len)
		return 0;
	path_format(field, path, sizeof(path));
	if (nul)
		return fail(-EINVAL,
			    "%s holds a NUL character (byte %zu of %llu); strings in requests "
			    "are UTF-8 text without NUL",
			    path, (size_t)(nul - (const char *)text), (unsigned long long)len);
	if (invalid < len)
		return fail(-EINVAL,
			    "%s is not valid UTF-8 (byte %zu of %llu is 0x%02x); strings in "
			    "requests are UTF-8 text, as proto3 requires",
			    path, invalid, (unsigned long long)len, text[invalid]);
	return 0;
}

/* The bytes of the value of a field with this wire type that follow p (a varint is read
 * here, so 0), in *ret_len. */
static int value_length(const uint8_t **p, const uint8_t *end, unsigned wire_type,
			uint64_t *ret_len)
{
	uint64_t value;
	int rc;

	switch (wire_type) {
	case 0:
		rc = read_varint(p, end, &value);
		value = 0;
		break;
	case 1:
		rc = 0;
		value = 8;
		break;
	case 2:
		rc = read_varint(p, end, &value);
		break;
	case 5:
		rc = 0;
		value = 4;
		break;
	default: /* groups: not in proto3, and protobuf-c decodes none */
		return not_a_request();
	}
	if (rc < 0 || value > (uint64_t)(end - *p))
		return not_a_request();
	*ret_len = value;
	return 0;
}

/* The message types of the schema, each with whether a string field lies anywhere beneath it,
 * sorted by address: checking a request's strings and making a reply's safe both pass over what
 * holds none, which for a Map or an Unmap is all of it (walking their fields for strings cost
 * the daemon more than a third of its own work on a Map). Learnt once, from the two envelopes
 * down; a type not among them (none is) would be walked. */
#define MESSAGE_TYPES_MAX 256
static struct message_type {
	const ProtobufCMessageDescriptor *desc;
	bool strings;
} message_types[MESSAGE_TYPES_MAX];
static size_t n_message_types;
static pthread_once_t message_types_once = PTHREAD_ONCE_INIT;

/* Adds desc and every type beneath it, unsorted; whether a string lies beneath desc. A type
 * met again while its own fields are being learnt (a recursive type) counts as holding one
 * until they are. */
static bool message_type_learn(const ProtobufCMessageDescriptor *desc)
{
	bool strings = false;
	size_t at;

	for (at = 0; at < n_message_types; at++)
		if (message_types[at].desc == desc)
			return message_types[at].strings;
	if (n_message_types == MESSAGE_TYPES_MAX)
		return true;
	at = n_message_types++;
	message_types[at] = (struct message_type){desc, true};
	/* Every field, past the first string too, so that every type beneath is learnt. */
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];

		if (f->type == PROTOBUF_C_TYPE_MESSAGE)
			strings |= message_type_learn(f->descriptor);
		strings |= f->type == PROTOBUF_C_TYPE_STRING;
	}
	message_types[at].strings = strings;
	return strings;
}

static int message_type_order(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct message_type *)a)->desc;
	uintptr_t y = (uintptr_t)((const struct message_type *)b)->desc;

	return (x > y) - (x < y);
}

static void message_types_learn(void)
{
	(void)message_type_learn(&iommud__v1__request__descriptor);
	(void)message_type_learn(&iommud__v1__response__descriptor);
	qsort(message_types, n_message_types, sizeof(message_types[0]), message_type_order);
}

static bool holds_strings(const ProtobufCMessageDescriptor *desc)
{
	struct message_type key = {.desc = desc};
	const struct message_type *found;

	(void)pthread_once(&message_types_once, message_types_learn);
	found = bsearch(&key, message_types, n_message_types, sizeof(message_types[0]),
			message_type_order);
	return !found || found->strings;
}

/* Every string field of the message of type desc encoded in [p, end), at any depth, on the
 * bytes received; path names the message for the error. One pass over the schema's
 * descriptors serves every method, present and future. */
static int check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
			 const uint8_t *end, const struct field_path *path)
{
	while (p < end) {
		const ProtobufCFieldDescriptor *f = NULL;
		uint64_t tag, len;
		int rc = read_varint(&p, end, &tag);

		if (rc == 0)
			rc = value_length(&p, end, (unsigned)(tag & 7), &len);
		if (rc < 0)
			return rc;
		if ((tag & 7) == 2)
			f = protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
		if (f && f->type == PROTOBUF_C_TYPE_STRING)
			rc = check_string(&(const struct field_path){path, f->name}, p, len);
		else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && holds_strings(f->descriptor))
			rc = check_strings(f->descriptor, p, p + len,
					   &(const struct field_path){path, f->name});
		if (rc < 0)
			return rc;
		p += len;
	}
	return 0;
}

int dispatch_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
	return check_strings(desc, data, data + len, &(const struct field_path){NULL, ""});
}

/* How many a method needs is its handler's to check (a Map may name a kept file instead). */
static int check_fd_count(const struct call *call, const struct method *m)
{
	if (call->n_fds <= m->max_fds)
		return 0;
	if (!m->max_fds)
		return fail(-EINVAL,
			    "%s takes no file descriptors, but %zu came with it; send descriptors "
			    "only with the requests that name them",
			    method_name(call->req->method_case), call->n_fds);
	return fail(-EINVAL,
		    "%s takes at most %u file descriptors, but %zu came with it; send the ones "
		    "its request names as SCM_RIGHTS, and no others",
		    method_name(call->req->method_case), m->max_fds, call->n_fds);
}

/* The refusals that come before a method runs, in the order docs/protocol.md gives. A request
 * refused here does not count as a connection's first call. */
static int check_request(const struct call *call, const struct method *m)
{
	const struct client *c = call->client;
	const char *name = method_name(call->req->method_case);
	int rc;

	if (!c->tenant)
		return peer_refusal(&c->peer);
	rc = dispatch_check_strings(&iommud__v1__request__descriptor, call->packet,
				    call->packet_len);
	if (rc < 0)
		return rc;
	if (c->access == ACCESS_NONE && m->access > ACCESS_NONE)
		return fail(-EPERM,
			    "uid %u may not use iommud; an administrator can grant access "
			    "with a [user NAME] or [group NAME] section in the daemon's "
			    "configuration",
			    (unsigned)c->peer.uid);
	if (!m->handle)
		return unknown_method(call->req);
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
	if (rc == 0 && m->mutates)
		rc = state_check_call(call->d->state, call);
	if (rc == 0)
		rc = m->handle(call);
	if (rc == 0 || !m->once)
		c->called = true;
	return rc;
}

/* Says at debug why a call of a method the daemon knows failed. */
static void log_failure(const struct call *call, int rc)
{
	Iommud__V1__Request__MethodCase number = call->req->method_case;

	if (method_for(number)->handle && rc < 0)
		log_struct(LOG_DEBUG,
			   LOG_FIELDS({"IOMMUD_METHOD", method_name(number)},
				      {"IOMMUD_FAILURE", failure_message()}),
			   "%s from uid %u failed: {IOMMUD_FAILURE}", method_name(number),
			   (unsigned)call->client->peer.uid);
}

static int handle_request(struct call *call)
{
	const struct method *m = method_for(call->req->method_case);
	bool map = call->req->method_case == IOMMUD__V1__REQUEST__METHOD_MAP ||
		   call->req->method_case == IOMMUD__V1__REQUEST__METHOD_MAP_BATCH;
	int rc;

	/* Only a Map or MapBatch may take up the map an Unmap or UnmapAll kept: any other change
	 * gives it up first. */
	if (call->client->session && m->mutates && !map)
		session_give_up_spare(call->client->session);
	rc = check_request(call, m);
	if (rc == 0)
		rc = run_method(call, m);
	/* A Map has taken it up by now, or will not (a batch with its first entry, made in the
	 * call's first slice): nothing else is to take it. */
	if (call->client->session && map)
		session_give_up_spare(call->client->session);
	log_failure(call, rc);
	return rc;
}

/* A string for a reply that strict decoders take and no reader can misread, at most max
 * bytes: s itself when it is UTF-8 without a backslash and fits, else a copy of the call's with
 * each stray byte as \xHH and each backslash as \\, cut where a character or an escape ends
 * ("" when out of memory). Cgroup paths and configuration words may be any bytes, and reach
 * replies in messages and fields. */
static char *reply_text(struct call *call, char *s, size_t max)
{
	size_t len = strlen(s), size;
	char *copy, measure[1];

	if (len <= max && utf8_valid(s, len) && !memchr(s, '\\', len))
		return s;
	size = text_escape(measure, sizeof(measure), s, len, false) + 1;
	if (size - 1 > max)
		size = max + 1;
	copy = call_alloc(call, size);
	if (!copy)
		return "";
	(void)text_escape(copy, size, s, len, false);
	return copy;
}

/* The members of a field of msg: one, or a repeated field's array. */
static void **field_members(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, size_t *n)
{
	char *base = (char *)msg;

	if (f->label == PROTOBUF_C_LABEL_REPEATED) {
		*n = *(size_t *)(base + f->quantifier_offset);
		return *(void ***)(base + f->offset);
	}
	/* A member of a oneof is there only while its case is the oneof's. */
	*n = !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
	     *(uint32_t *)(base + f->quantifier_offset) == f->id;
	return (void **)(base + f->offset);
}

/* Makes every string of the reply msg, at any depth, one that strict decoders take. */
static void reply_strings(struct call *call, ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *desc = msg->descriptor;

	if (!holds_strings(desc))
		return;
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		size_t n = 0;
		void **members;

		if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		members = field_members(msg, f, &n);
		for (size_t j = 0; j < n; j++) {
			if (!members[j])
				continue;
			if (f->type == PROTOBUF_C_TYPE_STRING)
				members[j] = reply_text(call, members[j], SIZE_MAX);
			else
				reply_strings(call, members[j]);
		}
	}
}

/* Packs the response to a call that gave rc; *ret_code is the status code sent, which is not
 * rc's when the reply did not fit. */
static size_t pack_response(struct call *call, int rc, uint8_t *out, Iommud__V1__Code *ret_code)
{
	Iommud__V1__Response *resp = call->resp;
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;
	size_t len;

	status.code = code_for_errno(rc);
	status.errno_value = -rc;
	status.failed_index = call->failed_index;
	if (rc) {
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
	}
	/* Its result is all of it that holds strings yet (the status comes below): a member of
	 * the union, each a message pointer at the same place. */
	if (resp->result_case != IOMMUD__V1__RESPONSE__RESULT__NOT_SET && resp->hello)
		reply_strings(call, &resp->hello->base);
	/* After the result's strings, so the message is escaped once; escaping lengthens it, and
	 * the cut after it keeps the bound protocol.md promises. */
	status.message = rc ? reply_text(call, (char *)failure_message(), STATUS_MESSAGE_MAX) : "";
	resp->status = &status;
	/* Replies are bounded by construction (pages, limits on bitmaps and batches); a reply
	 * that still does not fit is the daemon's bug and goes out as an error. */
	len = envelope_pack(&resp->base, out, IOMMUD_MAX_MESSAGE);
	if (len > IOMMUD_MAX_MESSAGE) {
		status.code = IOMMUD__V1__CODE__CODE_INTERNAL;
		status.errno_value = EMSGSIZE;
		status.message = "the reply would exceed the message size limit; ask for less";
		resp->result_case = IOMMUD__V1__RESPONSE__RESULT__NOT_SET;
		resp->hello = NULL;
		log_err("reply to request %llu (%s) is %zu bytes, over the %d limit",
			(unsigned long long)resp->id,
			call->req ? method_name(call->req->method_case) : "unknown", len,
			IOMMUD_MAX_MESSAGE);
		len = iommud__v1__response__pack(resp, out);
	}
	*ret_code = status.code;
	return len;
}

/* Counted by the status the reply carried, which is not the handler's when it did not fit. */
static void count_call(struct method_stats *stats, Iommud__V1__Code code)
{
	stats->calls++;
	stats->errors += code != IOMMUD__V1__CODE__CODE_OK;
	stats->codes[code]++;
}

/* The request in a packet the server marked as it received it, in memory *ret_memory holds
 * (NULL: none yet), which request_free frees also after a failure. */
static int decode_packet(const uint8_t *packet, size_t len, enum packet_defect defect,
			 Iommud__V1__Request **ret_req, void **ret_memory)
{
	ProtobufCAllocator allocator = {request_alloc, request_keep, ret_memory};
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
	req = (Iommud__V1__Request *)envelope_unpack(&iommud__v1__request__descriptor, &allocator,
						     len, packet);
	if (!req)
		return not_a_request();
	*ret_req = req;
	return 0;
}

/* A call kept between slices: it owns its response, its descriptors and its request, in whose
 * memory it lives, so that keeping a call allocates nothing more than its request did. */
struct kept_call {
	struct call call;
	Iommud__V1__Response resp;
	int fds[IOMMUD_MAX_FDS];
	bool of_lease; /* counted by the state: it holds compaction back */
};

/* The call moved off the dispatcher's stack to be resumed; NULL when out of memory. */
static struct call *keep_call(struct call *call)
{
	struct kept_call *k = request_alloc(&call->req_memory, sizeof(*k));

	if (!k)
		return NULL;
	k->call = *call;
	k->resp = *call->resp;
	k->call.resp = &k->resp;
	memcpy(k->fds, call->fds, call->n_fds * sizeof(int));
	k->call.fds = k->fds;
	/* The packet is the server's buffer, read again by the next request. */
	k->call.packet = NULL;
	k->call.packet_len = 0;
	k->of_lease = state_call_kept(call->d->state, &k->call);
	(void)__atomic_add_fetch(&call->d->calls_kept, 1, __ATOMIC_RELAXED);
	return &k->call;
}

static void free_call(struct call *call)
{
	void *memory = call->req_memory; /* the call's own with it */

	if (((struct kept_call *)((char *)call - offsetof(struct kept_call, call)))->of_lease)
		state_call_done(call->d->state);
	(void)__atomic_sub_fetch(&call->d->calls_kept, 1, __ATOMIC_RELAXED);
	call_end(call);
	request_free(memory);
}

/* Whether a call not acknowledged (failed, or its client gone) changed its session all the
 * same: an Unmap's steps done before a failure, or finished for a client gone, a map whose
 * take back failed, leaving mappings, or a replace the kernel refused, leaving the device
 * detached. */
static bool changed_unacknowledged(const struct call *call)
{
	switch (call->req->method_case) {
	case IOMMUD__V1__REQUEST__METHOD_UNMAP:
	case IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL:
		return call->back.bytes > 0;
	case IOMMUD__V1__REQUEST__METHOD_MAP:
	case IOMMUD__V1__REQUEST__METHOD_MAP_BATCH:
		return call->left_mapped;
	case IOMMUD__V1__REQUEST__METHOD_REPLACE_DOMAIN:
		return call->left_detached;
	default:
		return false;
	}
}

/* Packs the reply to a call that gave rc and counts it, or keeps the call when it has work
 * left (returning 0 with *ret_kept set); a kept call is freed once it ends. */
static size_t end_call(struct call *call, int rc, bool kept, uint8_t *out,
		       struct reply_fds *out_fds, unsigned *ret_method, struct call **ret_kept)
{
	struct call *k = NULL;
	Iommud__V1__Code code;
	size_t out_len;

	/* Out of memory to keep the call, it does the rest of its work at once. */
	if (rc == CALL_MORE && !kept && !(k = keep_call(call)))
		call->deadline_ns = UINT64_MAX;
	while (rc == CALL_MORE && call->deadline_ns == UINT64_MAX)
		rc = call->resume(call);
	*ret_kept = NULL;
	out_fds->n = 0;
	out_fds->unsent = NULL;
	out_fds->sent = NULL;
	*ret_method = call->req && method_for(call->req->method_case)->handle
			      ? (unsigned)call->req->method_case
			      : 0;
	if (rc == CALL_MORE) {
		*ret_kept = kept ? call : k;
		return 0;
	}
	/* Acknowledged only once recorded: the record is written before the reply. */
	if (rc == 0 && call->req && !call->changed_nothing)
		rc = state_record_call(call->d->state, call);
	else if (call->req && changed_unacknowledged(call))
		state_note_unacknowledged(call->d->state, call);
	out_len = pack_response(call, rc, out, &code);
	if (*ret_method && call->client->counters)
		count_call(&call->client->counters->methods[*ret_method], code);
	if (code == IOMMUD__V1__CODE__CODE_OK) {
		*out_fds = call->out;
		call->out.n = 0;
		call->out.unsent = NULL;
		call->out.sent = NULL;
	}
	if (kept)
		free_call(call);
	else
		call_end(call);
	return out_len;
}

/* Map, Unmap, MapBatch and UnmapAll in the anonymous session the connection has joined: they
 * touch that session, its tenant (which one loop thread serves) and what map paths may share
 * (daemon_lock.h), so they hold only a map path's lock. A lease's calls are recorded in the
 * state record, and a first call joins a session: those hold the daemon lock. */
static bool map_path(const struct client *c, const Iommud__V1__Request *req)
{
	if (!req || !c->session || session_lease(c->session)[0])
		return false;
	switch (req->method_case) {
	case IOMMUD__V1__REQUEST__METHOD_MAP:
	case IOMMUD__V1__REQUEST__METHOD_MAP_BATCH:
	case IOMMUD__V1__REQUEST__METHOD_UNMAP:
	case IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL:
		return true;
	default:
		return false;
	}
}

/* Takes the lock a call holds while it runs (map_path says which). */
static void call_lock(bool map)
{
	if (map)
		map_path_lock();
	else
		daemon_lock();
}

/* Lets it go: a call holding the daemon lock compacts the state record first when that is
 * due (a lease's call may have made it so). */
static void call_unlock(struct daemon *d, bool map)
{
	if (map) {
		map_path_unlock();
		return;
	}
	state_compact_if_due(d->state);
	daemon_unlock();
}

/* Another tenant had its turn after the call's steps grew alone: the next step is one part
 * again, so that the other's next request waits for no long one. */
static void steps_restart(struct call *call)
{
	unsigned *steps[] = {&call->part.parts_per_step, &call->part.back.parts_per_step,
			     &call->back.parts_per_step};

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (*steps[i] > 1)
			log_debug("uid %u: another tenant's turn: steps back to 1 part from %u",
				  (unsigned)call->client->peer.uid, *steps[i]);
		*steps[i] = 1;
	}
}

/* Whether a map path's tenant, alone on its loop thread, is alone in the daemon too: nobody on
 * any thread has asked for the daemon lock for FLOWS_ALONE_AFTER_NS, since whoever does waits
 * for the map paths' steps running. Each loop thread watches the lock's tickets at its map
 * paths' slices, so that a tenant alone for a while is alone from its next request's first
 * slice on, not only once a single request has run that long. A call holding the daemon lock
 * itself keeps every other thread waiting, so its steps never grow. */
static bool alone_in_daemon(bool map, bool alone_on_thread)
{
	static __thread uint64_t seen_asked = UINT64_MAX, quiet_since_ns;
	uint64_t asked, now;

	if (!map)
		return false;
	asked = daemon_lock_asked();
	/* Nothing to stamp and nothing to decide: no clock read on a shared thread's requests. */
	if (asked == seen_asked && !alone_on_thread)
		return false;
	now = monotonic_ns();
	if (asked != seen_asked) {
		seen_asked = asked;
		quiet_since_ns = now;
	}
	return alone_on_thread && now - quiet_since_ns >= FLOWS_ALONE_AFTER_NS;
}

/* The slice about to run: alone or not (dispatch_packet, dispatch_resume), until deadline_ns.
 * The log says when a loop thread's map paths start running alone, once until they stop. */
static void slice_start(struct call *call, uint64_t deadline_ns, bool alone)
{
	static __thread bool thread_alone;

	if (call->alone && !alone)
		steps_restart(call);
	if (alone && !thread_alone)
		log_debug("uid %u: alone for a while: its steps may grow past the slice",
			  (unsigned)call->client->peer.uid);
	thread_alone = alone;
	call->alone = alone;
	call->deadline_ns = deadline_ns;
}

size_t dispatch_packet(struct daemon *d, struct client *c, const uint8_t *packet, size_t len,
		       enum packet_defect defect, int *fds, size_t n_fds, uint64_t deadline_ns,
		       bool alone, uint8_t *out, struct reply_fds *out_fds, unsigned *ret_method,
		       struct call **ret_kept)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	struct call call = {.d = d,
			    .client = c,
			    .resp = &resp,
			    .fds = fds,
			    .n_fds = n_fds,
			    .n_carried = n_fds,
			    .failed_index = -1,
			    .deadline_ns = deadline_ns};
	Iommud__V1__Request *req = NULL;
	size_t out_len;
	int rc = decode_packet(packet, len, defect, &req, &call.req_memory);
	bool map = rc == 0 && map_path(c, req);

	call_lock(map);
	if (rc < 0) {
		if (c->counters)
			c->counters->rejected_packets++;
		log_struct(LOG_DEBUG, LOG_FIELDS({"IOMMUD_FAILURE", failure_message()}),
			   "rejected a packet: {IOMMUD_FAILURE}");
	} else {
		call.req = req;
		call.packet = packet;
		call.packet_len = len;
		resp.id = req->id;
		slice_start(&call, deadline_ns, alone_in_daemon(map, alone));
		rc = handle_request(&call);
	}
	out_len = end_call(&call, rc, false, out, out_fds, ret_method, ret_kept);
	call_unlock(d, map);
	/* A kept call took the request over. */
	if (!*ret_kept)
		request_free(call.req_memory);
	return out_len;
}

size_t dispatch_resume(struct call *call, uint64_t deadline_ns, bool alone, uint8_t *out,
		       struct reply_fds *out_fds, unsigned *ret_method, struct call **ret_kept)
{
	struct daemon *d = call->d;
	bool map = map_path(call->client, call->req);
	size_t out_len;
	int rc;

	call_lock(map);
	slice_start(call, deadline_ns, alone_in_daemon(map, alone));
	rc = call->resume(call);
	log_failure(call, rc);
	out_len = end_call(call, rc, true, out, out_fds, ret_method, ret_kept);
	call_unlock(d, map);
	return out_len;
}

bool dispatch_abandon(struct call *call, uint64_t deadline_ns)
{
	struct daemon *d = call->d;
	Iommud__V1__Request__MethodCase method = call->req->method_case;
	int rc;

	/* Under the daemon lock every other thread waits: its steps stay one part. */
	slice_start(call, deadline_ns, false);
	/* Nothing it maps will be stored: its room goes to others for the whole take-back. */
	state_call_end(d->state, call);
	rc = call->abandon(call);
	if (rc == CALL_MORE)
		return false;
	/* A removal finished for no one is recorded as done; what else changed is rewritten. */
	if (rc == 0 && (method == IOMMUD__V1__REQUEST__METHOD_UNMAP ||
			method == IOMMUD__V1__REQUEST__METHOD_UNMAP_ALL))
		(void)state_record_call(d->state, call);
	else if (changed_unacknowledged(call))
		state_note_unacknowledged(d->state, call);
	free_call(call);
	state_compact_if_due(d->state);
	return true;
}

void dispatch_reply_sent(struct client *c, unsigned method, uint64_t received_ns)
{
	uint64_t ns = monotonic_ns() - received_ns;

	if (!method || method >= IOMMUD_METHOD_SLOTS || !c->counters)
		return;
	/* A map path's lock keeps a GetStats from reading the histogram as it changes. */
	map_path_lock();
	histogram_add(&c->counters->methods[method].latency, ns);
	map_path_unlock();
}
