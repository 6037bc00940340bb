// SPDX-License-Identifier: MIT
#include "iommud_envelope.h"

#include <stdbool.h>
#include <stdlib.h>

/* The fields of a message taken quickly: an envelope has some 27; a message with more goes to
 * protobuf-c. */
#define QUICK_FIELDS_MAX 64
/* The fields an encoded envelope holds when taken quickly: the id, the status, one member. */
#define QUICK_SEEN_MAX 4
/* Wire types (the low three bits of a tag). */
#define WIRE_VARINT 0
#define WIRE_LENGTH 2

/* A field packed, unpacked and freed here: an unlabelled (proto3) uint64 or message, alone or
 * in a oneof, the only kinds the envelopes have. */
static inline bool quick_field(const ProtobufCFieldDescriptor *f)
{
	return f->label == PROTOBUF_C_LABEL_NONE &&
	       (f->type == PROTOBUF_C_TYPE_UINT64 || f->type == PROTOBUF_C_TYPE_MESSAGE);
}

static bool quick_message(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *desc = msg->descriptor;

	if (msg->n_unknown_fields || desc->n_fields > QUICK_FIELDS_MAX)
		return false;
	for (unsigned i = 0; i < desc->n_fields; i++)
		if (!quick_field(&desc->fields[i]))
			return false;
	return true;
}

static uint64_t *uint64_at(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	return (uint64_t *)((char *)msg + f->offset);
}

static ProtobufCMessage **message_at(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	return (ProtobufCMessage **)((char *)msg + f->offset);
}

static uint32_t *oneof_case_at(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	return (uint32_t *)((char *)msg + f->quantifier_offset);
}

/* Whether protobuf-c packs (and frees) the field: a oneof's member while it is the case (a
 * message member only when there), a uint64 when not 0, a message when there. */
static inline bool field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *oneof_case_at(msg, f) != f->id)
		return false;
	if (f->type == PROTOBUF_C_TYPE_MESSAGE)
		return *message_at(msg, f) != NULL;
	return (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || *uint64_at(msg, f) != 0;
}

static size_t varint_size(uint64_t value)
{
	size_t n = 1;

	while (value >= 0x80) {
		value >>= 7;
		n++;
	}
	return n;
}

static size_t put_varint(uint8_t *out, uint64_t value)
{
	size_t n = 0;

	while (value >= 0x80) {
		out[n++] = (uint8_t)(value | 0x80);
		value >>= 7;
	}
	out[n++] = (uint8_t)value;
	return n;
}

static uint64_t tag_of(const ProtobufCFieldDescriptor *f)
{
	return (uint64_t)f->id << 3 |
	       (f->type == PROTOBUF_C_TYPE_UINT64 ? WIRE_VARINT : WIRE_LENGTH);
}

size_t envelope_pack(const ProtobufCMessage *msg, uint8_t *out, size_t max)
{
	const ProtobufCMessageDescriptor *desc = msg->descriptor;
	/* The fields present, in the schema's order (protobuf-c's), and a message's size. */
	struct {
		const ProtobufCFieldDescriptor *field;
		size_t size;
	} present[QUICK_FIELDS_MAX];
	size_t n = 0, len = 0;

	if (msg->n_unknown_fields || desc->n_fields > QUICK_FIELDS_MAX)
		goto whole;
	/* Each nested message measured once, where protobuf-c measures it again to pack it. */
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];

		if (!quick_field(f))
			goto whole;
		if (!field_present(msg, f))
			continue;
		present[n].field = f;
		if (f->type == PROTOBUF_C_TYPE_UINT64) {
			len += varint_size(tag_of(f)) + varint_size(*uint64_at(msg, f));
		} else {
			present[n].size = protobuf_c_message_get_packed_size(*message_at(msg, f));
			len += varint_size(tag_of(f)) + varint_size(present[n].size) +
			       present[n].size;
		}
		n++;
	}
	if (len > max)
		return len;
	for (size_t i = 0; i < n; i++) {
		const ProtobufCFieldDescriptor *f = present[i].field;

		out += put_varint(out, tag_of(f));
		if (f->type == PROTOBUF_C_TYPE_UINT64) {
			out += put_varint(out, *uint64_at(msg, f));
		} else {
			out += put_varint(out, present[i].size);
			out += protobuf_c_message_pack(*message_at(msg, f), out);
		}
	}
	return len;
whole:
	len = protobuf_c_message_get_packed_size(msg);
	if (len <= max)
		(void)protobuf_c_message_pack(msg, out);
	return len;
}

/* A varint of at most max_bytes at *p, before end: false where there is none, or a longer
 * one, which protobuf-c is left to judge (it takes tags of up to 5 bytes, lengths as 32 bits,
 * values of up to 10 bytes). */
static bool take_varint(const uint8_t **p, const uint8_t *end, size_t max_bytes, uint64_t *ret)
{
	uint64_t value = 0;

	for (size_t i = 0; i < max_bytes && *p + i < end; i++) {
		value |= (uint64_t)((*p)[i] & 0x7f) << (7 * i);
		if (!((*p)[i] & 0x80)) {
			*p += i + 1;
			*ret = value;
			return true;
		}
	}
	return false;
}

/* A field found in the encoded message: its value, or its bytes. */
struct seen_field {
	const ProtobufCFieldDescriptor *field;
	uint64_t value;
	const uint8_t *data;
};

/* The fields of the encoded message [p, end) of type desc into seen (*n of them), each once,
 * with a wire type and encoding taken here; false for anything else. */
static bool scan_quick(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
		       struct seen_field *seen, size_t *n)
{
	*n = 0;
	if (desc->n_fields > QUICK_FIELDS_MAX)
		return false;
	while (p < end) {
		const ProtobufCFieldDescriptor *f;
		uint64_t tag, value;

		/* Field numbers of up to 2047 in tags of at most two bytes. */
		if (!take_varint(&p, end, 2, &tag) || *n == QUICK_SEEN_MAX)
			return false;
		f = protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
		if (!f || !quick_field(f) || (tag & 7) != (tag_of(f) & 7))
			return false;
		/* Given twice, or two members of one oneof: protobuf-c merges, or keeps the last.
		 */
		for (size_t i = 0; i < *n; i++)
			if (seen[i].field == f ||
			    ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
			     (seen[i].field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
			     seen[i].field->quantifier_offset == f->quantifier_offset))
				return false;
		/* A length of up to 4 bytes (256 MiB), far past any packet. */
		if (!take_varint(&p, end, f->type == PROTOBUF_C_TYPE_UINT64 ? 10 : 4, &value))
			return false;
		seen[*n] = (struct seen_field){.field = f, .value = value, .data = p};
		if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
			if (value > (uint64_t)(end - p))
				return false;
			p += value;
		}
		++*n;
	}
	return true;
}

static void *allocate(ProtobufCAllocator *allocator, size_t size)
{
	return allocator ? allocator->alloc(allocator->allocator_data, size) : malloc(size);
}

static void release(ProtobufCAllocator *allocator, void *p)
{
	if (allocator)
		allocator->free(allocator->allocator_data, p);
	else
		free(p);
}

ProtobufCMessage *envelope_unpack(const ProtobufCMessageDescriptor *desc,
				  ProtobufCAllocator *allocator, size_t len, const uint8_t *data)
{
	struct seen_field seen[QUICK_SEEN_MAX];
	ProtobufCMessage *msg;
	size_t n;

	if (!scan_quick(desc, data, data + len, seen, &n))
		return protobuf_c_message_unpack(desc, allocator, len, data);
	msg = allocate(allocator, desc->sizeof_message);
	if (!msg)
		return NULL;
	desc->message_init(msg);
	for (size_t i = 0; i < n; i++) {
		const ProtobufCFieldDescriptor *f = seen[i].field;

		if (f->type == PROTOBUF_C_TYPE_UINT64) {
			*uint64_at(msg, f) = seen[i].value;
			continue;
		}
		*message_at(msg, f) = protobuf_c_message_unpack(f->descriptor, allocator,
								seen[i].value, seen[i].data);
		if (!*message_at(msg, f)) {
			envelope_free(msg, allocator);
			return NULL;
		}
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
			*oneof_case_at(msg, f) = f->id;
	}
	return msg;
}

void envelope_free(ProtobufCMessage *msg, ProtobufCAllocator *allocator)
{
	const ProtobufCMessageDescriptor *desc;

	if (!msg)
		return;
	if (!quick_message(msg)) {
		protobuf_c_message_free_unpacked(msg, allocator);
		return;
	}
	desc = msg->descriptor;
	for (unsigned i = 0; i < desc->n_fields; i++)
		if (desc->fields[i].type == PROTOBUF_C_TYPE_MESSAGE &&
		    field_present(msg, &desc->fields[i]))
			protobuf_c_message_free_unpacked(*message_at(msg, &desc->fields[i]),
							 allocator);
	release(allocator, msg);
}
