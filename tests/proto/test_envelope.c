// SPDX-License-Identifier: MIT
/*
 * Packing, unpacking and freeing messages (proto/iommud_envelope.h) exactly as protobuf-c does:
 * the same bytes for every method's request and reply, the same message back from them, the
 * same verdict (and message) on damaged, duplicated and unknown input, and every allocation
 * given back through the allocator it came from, whichever side frees it.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <iommud.pb-c.h>
#include <iommud_envelope.h>
#include <iommud_protocol.h>

#include "harness.h"

#define SAMPLE_MAX 128
#define PACKED_MAX 512

/* A packed message of the samples: its type, bytes and length. */
struct sample {
	const ProtobufCMessageDescriptor *desc;
	uint8_t bytes[PACKED_MAX];
	size_t len;
};

static struct sample samples[SAMPLE_MAX];
static size_t n_samples;

/* Packs msg both ways, checks the bytes are the same, and keeps them as a sample. */
static void pack_both(const ProtobufCMessage *msg)
{
	uint8_t theirs[PACKED_MAX];
	struct sample *s = &samples[n_samples];
	size_t len = protobuf_c_message_get_packed_size(msg);

	CHECK(n_samples < SAMPLE_MAX);
	CHECK(len <= PACKED_MAX);
	CHECK_EQ(protobuf_c_message_pack(msg, theirs), len);
	memset(s->bytes, 0xa5, sizeof(s->bytes));
	CHECK_EQ(envelope_pack(msg, s->bytes, sizeof(s->bytes)), len);
	CHECK(memcmp(s->bytes, theirs, len) == 0);
	CHECK_EQ(s->bytes[len], 0xa5); /* not a byte further */
	s->desc = msg->descriptor;
	s->len = len;
	n_samples++;
}

/* Every member of the envelope's oneof, empty and then as given by fill (NULL: empty only),
 * under several ids; a Response with and without a status. */
static void envelope_samples(const ProtobufCMessageDescriptor *desc)
{
	static const uint64_t ids[] = {0, 1, 300, UINT64_MAX};
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;
	char *msg = calloc(1, desc->sizeof_message);

	CHECK(msg);
	status.code = IOMMUD__V1__CODE__CODE_NOT_FOUND;
	status.failed_index = -1;
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		const ProtobufCMessageDescriptor *member_desc = f->descriptor;
		ProtobufCMessage *member;

		if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
			continue;
		member = calloc(1, member_desc->sizeof_message);
		CHECK(member);
		member_desc->message_init(member);
		desc->message_init((ProtobufCMessage *)msg);
		*(uint32_t *)(msg + f->quantifier_offset) = f->id;
		*(ProtobufCMessage **)(msg + f->offset) = member;
		*(uint64_t *)(msg + desc->fields[0].offset) = ids[i % 4];
		pack_both((ProtobufCMessage *)msg);
		if (desc == &iommud__v1__response__descriptor) {
			((Iommud__V1__Response *)msg)->status = &status;
			pack_both((ProtobufCMessage *)msg);
		}
		free(member);
	}
	/* Nothing but an id, and nothing at all. */
	desc->message_init((ProtobufCMessage *)msg);
	*(uint64_t *)(msg + desc->fields[0].offset) = 77;
	pack_both((ProtobufCMessage *)msg);
	desc->message_init((ProtobufCMessage *)msg);
	pack_both((ProtobufCMessage *)msg);
	free(msg);
}

/* A Map of a filled entry, naming a kept file, and its reply: fields inside the member. */
static void map_samples(void)
{
	Iommud__V1__MapEntry entry = IOMMUD__V1__MAP_ENTRY__INIT;
	Iommud__V1__MapRequest map = IOMMUD__V1__MAP_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__MapReply reply = IOMMUD__V1__MAP_REPLY__INIT;
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	uint32_t slot = 3;

	entry.domain_id = 7;
	entry.fd_index = 1;
	entry.offset = 0x200000;
	entry.length = 0x1000;
	entry.prot = 3;
	entry.fixed_iova = true;
	entry.iova = 0xfee00000;
	map.entry = &entry;
	map.kept_files = &slot;
	map.n_kept_files = 1;
	req.id = 41;
	req.method_case = IOMMUD__V1__REQUEST__METHOD_MAP;
	req.map = &map;
	pack_both(&req.base);
	reply.iova = 0xfee00000;
	status.message = "";
	resp.id = 41;
	resp.status = &status;
	resp.result_case = IOMMUD__V1__RESPONSE__RESULT_MAP;
	resp.map = &reply;
	pack_both(&resp.base);
}

static void make_samples(void)
{
	n_samples = 0;
	envelope_samples(&iommud__v1__request__descriptor);
	envelope_samples(&iommud__v1__response__descriptor);
	map_samples();
}

/* Unpacks data both ways: both refuse it, or both give a message that packs to the same bytes.
 * Each is freed by the other side's function, which must take it. */
static void unpack_both(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
	ProtobufCMessage *ours = envelope_unpack(desc, NULL, len, data);
	ProtobufCMessage *theirs = protobuf_c_message_unpack(desc, NULL, len, data);

	CHECK_EQ(ours == NULL, theirs == NULL);
	if (ours) {
		size_t n = protobuf_c_message_get_packed_size(theirs);
		uint8_t *a = malloc(n + 1), *b = malloc(n + 1);

		CHECK(a && b);
		CHECK_EQ(protobuf_c_message_get_packed_size(ours), n);
		CHECK_EQ(protobuf_c_message_pack(ours, a), n);
		CHECK_EQ(protobuf_c_message_pack(theirs, b), n);
		CHECK(memcmp(a, b, n) == 0);
		free(a);
		free(b);
	}
	if (ours) {
		protobuf_c_message_free_unpacked(ours, NULL);
		envelope_free(theirs, NULL);
	}
}

TEST(packs_as_protobuf_c)
{
	make_samples();
	/* A method each, twice for a Response, the map pair, and the two bare ones each. */
	CHECK(n_samples > 2 * 25);
}

TEST(unpacks_as_protobuf_c)
{
	make_samples();
	for (size_t i = 0; i < n_samples; i++) {
		unpack_both(&iommud__v1__request__descriptor, samples[i].bytes, samples[i].len);
		unpack_both(&iommud__v1__response__descriptor, samples[i].bytes, samples[i].len);
	}
}

/* xorshift: the same damage on every run. */
static uint64_t next_random(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

/* Damaged bytes, cut packets, fields given twice (protobuf-c merges them, or keeps a oneof's
 * last), unknown fields and trailing garbage: the same verdict and the same message. */
TEST(damage_judged_as_protobuf_c)
{
	uint64_t state = 0x9e3779b97f4a7c15ull;
	uint8_t buf[2 * PACKED_MAX + 16];

	make_samples();
	for (size_t i = 0; i < n_samples; i++) {
		const struct sample *s = &samples[i];
		const ProtobufCMessageDescriptor *desc = s->desc;

		/* Every cut. */
		for (size_t len = 0; len < s->len; len++)
			unpack_both(desc, s->bytes, len);
		/* Twice over: every field again, the oneof's member included. */
		memcpy(buf, s->bytes, s->len);
		memcpy(buf + s->len, s->bytes, s->len);
		unpack_both(desc, buf, 2 * s->len);
		/* Then another sample's fields after these: another member of the oneof. */
		memcpy(buf + s->len, samples[(i + 1) % n_samples].bytes,
		       samples[(i + 1) % n_samples].len);
		unpack_both(desc, buf, s->len + samples[(i + 1) % n_samples].len);
		/* An unknown field (number 9, a varint), and one with a long tag (number 2047). */
		memcpy(buf, s->bytes, s->len);
		buf[s->len] = 9 << 3;
		buf[s->len + 1] = 5;
		unpack_both(desc, buf, s->len + 2);
		buf[s->len] = 0xf8;
		buf[s->len + 1] = 0xff;
		buf[s->len + 2] = 0x01;
		buf[s->len + 3] = 1;
		unpack_both(desc, buf, s->len + 4);
		/* Random bytes changed. */
		for (int round = 0; round < 200 && s->len; round++) {
			uint64_t r = next_random(&state);
			size_t changes = 1 + r % 3;

			memcpy(buf, s->bytes, s->len);
			for (size_t k = 0; k < changes; k++) {
				r = next_random(&state);
				buf[r % s->len] = (uint8_t)(r >> 32);
			}
			unpack_both(desc, buf, s->len);
		}
	}
}

/* An allocator that counts what is out, so that a message freed leaves nothing behind. */
static long outstanding;

static void *counted_alloc(void *data, size_t size)
{
	(void)data;
	outstanding++;
	return malloc(size);
}

static void counted_free(void *data, void *p)
{
	(void)data;
	outstanding -= p != NULL;
	free(p);
}

TEST(frees_through_its_allocator)
{
	ProtobufCAllocator counted = {counted_alloc, counted_free, NULL};

	make_samples();
	for (size_t i = 0; i < n_samples; i++) {
		ProtobufCMessage *msg = envelope_unpack(samples[i].desc, &counted, samples[i].len,
							samples[i].bytes);

		CHECK(msg);
		CHECK(outstanding > 0);
		envelope_free(msg, &counted);
		CHECK_EQ(outstanding, 0);
	}
	envelope_free(NULL, &counted);
}

/* A status whose encoding is exactly size bytes: a code, which alone would fit anywhere, and a
 * message making up the rest; in an envelope (resp not NULL) with an id, the envelope's
 * encoding is. Returns the message, to free. */
static char *status_of_size(Iommud__V1__Status *status, Iommud__V1__Response *resp, size_t size)
{
	ProtobufCMessage *msg = resp ? &resp->base : &status->base;
	char *text = malloc(size + 1);
	size_t len = size;

	CHECK(text);
	memset(text, 'x', size);
	text[len] = '\0';
	status->code = IOMMUD__V1__CODE__CODE_INTERNAL;
	status->message = text;
	if (resp) {
		resp->id = 5;
		resp->status = status;
	}
	while (protobuf_c_message_get_packed_size(msg) > size) {
		CHECK(len > 0);
		text[--len] = '\0';
	}
	CHECK_EQ(protobuf_c_message_get_packed_size(msg), size);
	return text;
}

#define UNWRITTEN 0xa5

/* Packs a message of size bytes, a Response (in_envelope) or a Status alone, which protobuf-c
 * packs whole, into a buffer of IOMMUD_MAX_MESSAGE bytes and a guard byte; returns what
 * envelope_pack returned, with the buffer in out and, where it fits, protobuf-c's bytes in
 * expected. */
static size_t pack_of_size(size_t size, bool in_envelope, uint8_t *out, uint8_t *expected)
{
	Iommud__V1__Response resp = IOMMUD__V1__RESPONSE__INIT;
	Iommud__V1__Status status = IOMMUD__V1__STATUS__INIT;
	char *text = status_of_size(&status, in_envelope ? &resp : NULL, size);
	ProtobufCMessage *msg = in_envelope ? &resp.base : &status.base;
	size_t len;

	memset(out, UNWRITTEN, IOMMUD_MAX_MESSAGE + 1);
	if (size <= IOMMUD_MAX_MESSAGE)
		CHECK_EQ(protobuf_c_message_pack(msg, expected), size);
	len = envelope_pack(msg, out, IOMMUD_MAX_MESSAGE);
	free(text);
	return len;
}

/* Exactly the limit fits: packed as protobuf-c packs it, and not a byte further. */
TEST(pack_at_the_limit)
{
	static uint8_t out[IOMMUD_MAX_MESSAGE + 1], expected[IOMMUD_MAX_MESSAGE];

	for (int in_envelope = 0; in_envelope < 2; in_envelope++) {
		CHECK_EQ(pack_of_size(IOMMUD_MAX_MESSAGE, in_envelope, out, expected),
			 IOMMUD_MAX_MESSAGE);
		CHECK(memcmp(out, expected, IOMMUD_MAX_MESSAGE) == 0);
		CHECK_EQ(out[IOMMUD_MAX_MESSAGE], UNWRITTEN);
	}
}

/* A byte over, the length says so and nothing is written, not even the first field. */
TEST(pack_one_byte_over_the_limit)
{
	static uint8_t out[IOMMUD_MAX_MESSAGE + 1], expected[IOMMUD_MAX_MESSAGE];

	for (int in_envelope = 0; in_envelope < 2; in_envelope++) {
		CHECK_EQ(pack_of_size(IOMMUD_MAX_MESSAGE + 1, in_envelope, out, expected),
			 IOMMUD_MAX_MESSAGE + 1);
		for (size_t i = 0; i <= IOMMUD_MAX_MESSAGE; i++)
			CHECK_EQ(out[i], UNWRITTEN);
	}
}
