/* SPDX-License-Identifier: MIT */
/*
 * Packing, unpacking and freeing the protocol's messages, both ends' one way to do it, quick for
 * the envelopes. protobuf-c walks every field of a message's schema for each of these, and an
 * envelope (Request, Response) has a oneof of some 25 messages of which one is set: walking
 * them all cost a 4 KiB Map more than decoding, checking and mapping it (about 2,500
 * instructions to pack one envelope and as many to unpack it, on each side of the socket).
 * Here a message whose fields are all unlabelled (proto3) uint64s and messages, as the
 * envelopes' are, is packed, unpacked and freed from the fields it holds: a oneof member is
 * found by its number, and protobuf-c handles the nested messages. The bytes and the
 * structures are protobuf-c's own: anything else (another shape of message, unknown fields,
 * a field given twice, a wire type the schema does not have) goes to protobuf-c whole, so
 * that what is accepted, refused and produced stays exactly its.
 *
 * Ownership: a message envelope_unpack returns is the caller's, freed with envelope_free (or
 * protobuf_c_message_free_unpacked) with the same allocator.
 *
 * Internal to the daemon and libiommuctl: hidden, so libiommuctl.so does not export it.
 */
#ifndef IOMMUD_ENVELOPE_H
#define IOMMUD_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#pragma GCC visibility push(hidden)

/* Packs msg into out if its encoded length is at most max; returns that length either way
 * (over max: out is untouched). It measures, then packs: protobuf-c's packing into a bounded
 * buffer would measure every nested message all the same, and call back for every field. */
size_t envelope_pack(const ProtobufCMessage *msg, uint8_t *out, size_t max);

/* The message of type desc encoded in data[0, len), as protobuf_c_message_unpack gives it
 * (allocator NULL: malloc); NULL where it would. */
ProtobufCMessage *envelope_unpack(const ProtobufCMessageDescriptor *desc,
				  ProtobufCAllocator *allocator, size_t len, const uint8_t *data);

/* Frees a message unpacked with allocator (NULL: malloc), as protobuf_c_message_free_unpacked
 * does; msg may be NULL. */
void envelope_free(ProtobufCMessage *msg, ProtobufCAllocator *allocator);

#pragma GCC visibility pop

#endif
